"""What the K+1 GAN, CycleGAN and pix2pix do, observed where the mutation samples of issue 26 found it unchecked.

Each test fails under a mutant of ``methods_k1_translation`` (``pyproject.toml``) that the
package's other tests let pass; the README (Mutation testing) lists them.
"""

from __future__ import annotations

import pytest
import torch

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.methods.base import DataSpec, get_method
from udl_med.methods.semi_supervised_gan import SemiSupervisedGAN, SemiSupervisedGANConfig
from tests.methods.multiscale_testkit import HandOpt

IMAGES = DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8), num_classes=3)
VECTORS = DataSpec(spatial_dims=0, in_channels=6, image_size=(), num_classes=3)
PAIRS = DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8))
SMALL_CYCLEGAN = {"channels": 4, "num_downsample": 1, "num_res_blocks": 1, "disc_channels": 4, "disc_layers": 1, "pool_size": 0}
SMALL_PIX2PIX = {"channels": (4, 8), "strides": (2,), "disc_channels": 4, "disc_layers": 1}
SMALL_K1 = {"d_channels": (4, 8), "g_channels": (8, 4), "d_hidden": (8,), "g_hidden": (8,), "latent_dim": 4}


def test_k1_refusals_name_their_keys() -> None:
    """One labeled class, and a conv D on vectors, are refused naming the key to fix."""
    with pytest.raises(ConfigError) as err:
        SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1), DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8), num_classes=1))
    assert err.value.key == "data.semi_supervised" and "at least 2 labeled classes" in err.value.problem
    with pytest.raises(ConfigError) as err:
        SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, discriminator="conv"), VECTORS)
    assert err.value.key == "model.discriminator"


@pytest.mark.parametrize(("d_norm", "module"), [("batch", torch.nn.modules.batchnorm._BatchNorm), ("instance", torch.nn.modules.instancenorm._InstanceNorm)])
def test_k1_d_norm_reaches_the_discriminator(d_norm: str, module: type) -> None:
    """``d_norm`` puts its normalisation in the conv D (the default ``none`` has none)."""
    plain = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1), IMAGES).discriminator
    normed = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, d_norm=d_norm), IMAGES).discriminator
    assert not any(isinstance(m, module) for m in plain.modules())
    assert any(isinstance(m, module) for m in normed.modules())


def test_k1_adams_take_the_configured_rates_and_betas() -> None:
    """D's Adam takes ``lr``, G's ``g_lr`` (``lr`` when unset), both with ``beta1``."""
    method = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, lr=0.02, g_lr=0.005, beta1=0.3), IMAGES)
    opts = method.configure_optimizers()
    assert opts["discriminator"].defaults["lr"] == 0.02 and opts["generator"].defaults["lr"] == 0.005
    assert opts["discriminator"].defaults["betas"] == (0.3, 0.999) == opts["generator"].defaults["betas"]
    unset = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, lr=0.02), IMAGES).configure_optimizers()
    assert unset["generator"].defaults["lr"] == 0.02


def _pair_batch(n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {keys.CT: torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, keys.MR: torch.rand(n, 1, 8, 8, generator=g) * 2 - 1}


@pytest.mark.parametrize(("name", "model"), [("cyclegan", SMALL_CYCLEGAN), ("pix2pix", SMALL_PIX2PIX)])
def test_every_discriminator_loss_carries_r1_at_a_due_step(name: str, model: dict) -> None:
    """The training step passes its step to each D's loss: at a step where lazy R1 is due, every D's loss has it, and at others none."""
    cls = get_method(name)
    method = cls(cls.Config(**model, r1_weight=4.0, r1_every=2), PAIRS)
    seen = []
    loss = method.adversary.discriminator_loss
    method.adversary.discriminator_loss = lambda *a, **k: (lambda parts: (seen.append(parts.r1), parts)[1])(loss(*a, **k))
    opt = HandOpt(method.configure_optimizers())
    for step, due in ((4, True), (5, False)):
        seen.clear()
        opt.global_step = step
        method.train_step(_pair_batch(), opt)
        assert len(seen) == 2 and all((r1 is not None) == due for r1 in seen), (step, seen)


@pytest.mark.parametrize(("name", "model"), [("cyclegan", SMALL_CYCLEGAN), ("pix2pix", SMALL_PIX2PIX)])
def test_a_patchgan_too_deep_for_the_images_is_refused_in_the_configs_words(name: str, model: dict) -> None:
    """``<config>: model.disc_layers: does not fit data.size: ...``, as the CLI prints it (the method is built from the config)."""
    cls = get_method(name)
    with pytest.raises(ConfigError) as err:
        cls(cls.Config(**{**model, "disc_layers": 4}), DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8)))
    assert (err.value.source, err.value.key) == ("<config>", "model.disc_layers")
    assert str(err.value).startswith("<config>: model.disc_layers: does not fit data.size: ")
