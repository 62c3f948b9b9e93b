"""What the methods sample of issue 26 (seed 3) found unobserved: conditional variants and one-class data.

- A conditional InfoGAN and a conditional unrolled GAN train: D always sees the labels
  (Q's width is probed with them; the unrolled G loss scores the fakes with them).
- A conditional VBN GAN's model file loads strictly into a fresh method and samples as
  the trained one does (the placeholder reference labels are class indices).
- The two-stage GAN takes one-class data, and without conditioning augmentation its
  generators get the one-hot condition: no KL term (logged as 0) and no CA parameters.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tests.methods.multiscale_testkit import HandOpt, batch
from tests.methods.test_gan import Driver, spec
from udl_med.methods.base import DataSpec
from udl_med.methods.gan import GAN, GANConfig
from udl_med.methods.two_stage_gan import TwoStageGAN, TwoStageGANConfig

TINY_DCGAN = {"architecture": "dcgan", "latent_dim": 8, "g_channels": [16, 8], "d_channels": [8, 16]}
TINY_MLP = {"architecture": "mlp", "latent_dim": 4, "g_hidden": [8], "d_hidden": [8]}
TWO = dict(latent_dim=8, stage1_channels=(8,), stage2_channels=8, stage2_blocks=1, disc2_channels=(4,), embed_dim=4)


def _gan(model: dict[str, Any], data: DataSpec, seed: int = 0) -> GAN:
    torch.manual_seed(seed)
    return GAN(GANConfig(**model), data)


def test_conditional_infogan_and_conditional_unrolled_gan_train() -> None:
    data = spec(2, num_classes=3)
    for extra in ({"info_codes": {"categorical": 2, "continuous": 1}}, {"unrolled": {"steps": 2}}):
        method = _gan({**TINY_DCGAN, "conditional": True, **extra}, data)
        before = [p.detach().clone() for p in method.generator.parameters()]
        out = Driver(method, data)()
        assert all(torch.isfinite(torch.tensor(v)) for v in out.values()), extra
        assert any(not torch.equal(b, p) for b, p in zip(before, method.generator.parameters())), extra


def test_a_conditional_vbn_gans_model_file_loads_strictly_and_samples_alike() -> None:
    data = spec(0, num_classes=3)
    model = {**TINY_MLP, "conditional": True, "g_norm": "virtual_batch", "d_norm": "virtual_batch", "vbn_reference": 4}
    trained = _gan(model, data, seed=0)
    Driver(trained, data)()
    fresh = _gan(model, data, seed=1)  # placeholder references, as when a model file is loaded
    fresh.load_state_dict(trained.state_dict(), strict=True)
    for method in (trained, fresh):
        method.eval()
    a = trained.sample(5, torch.Generator().manual_seed(3), label=1)
    b = fresh.sample(5, torch.Generator().manual_seed(3), label=1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_two_stage_gan_takes_one_class_data() -> None:
    torch.manual_seed(0)
    method = TwoStageGAN(TwoStageGANConfig(**{**TWO, "stage1_steps": 1}), DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8), num_classes=1))
    out = method.train().train_step(batch(2, 8, num_classes=1), HandOpt(method.configure_optimizers()))
    assert torch.isfinite(out["loss_g1"]) and method.num_sample_classes() == 1
    assert method.eval().sample(2, torch.Generator().manual_seed(0), label=0).shape == (2, 1, 8, 8)


def test_without_conditioning_augmentation_there_is_no_kl_and_no_ca() -> None:
    torch.manual_seed(0)
    method = TwoStageGAN(TwoStageGANConfig(**{**TWO, "stage1_steps": 1, "conditioning_augmentation": False}), DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8), num_classes=3))
    assert sum(p.numel() for p in method.ca1.parameters()) == 0 and sum(p.numel() for p in method.ca2.parameters()) == 0
    out = method.train().train_step(batch(2, 8), HandOpt(method.configure_optimizers()))  # step 0: stage I
    assert float(out["kl1"]) == 0.0


def test_a_trained_lapgan_samples_reproducibly_from_its_generator() -> None:
    from udl_med.methods.lapgan import LAPGAN, LAPGANConfig

    torch.manual_seed(0)
    method = LAPGAN(LAPGANConfig(levels=2, latent_dim=8, coarse_channels=(8,), fine_channels=4, fine_blocks=1, disc_channels=(4,)), DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8), num_classes=3))
    opt = HandOpt(method.configure_optimizers())
    for _ in range(2):
        method.train().train_step(batch(2, 8), opt)  # G_0's output layer leaves zero: its noise now shows
    method.eval()
    torch.manual_seed(1)
    a = method.sample(3, torch.Generator().manual_seed(5), label=1)
    torch.manual_seed(2)  # another global RNG state: the generator alone draws z and every level's noise
    b = method.sample(3, torch.Generator().manual_seed(5), label=1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_point_gan_output_is_not_squashed_and_decode_latent_matches_sample() -> None:
    points = _gan({**TINY_MLP}, spec(0))
    last = [m for m in points.generator.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(3.0)
    torch.testing.assert_close(points.sample(4, torch.Generator().manual_seed(0)), torch.full((4, 2), 3.0))  # points live in R^2, not [-1, 1]
    images = _gan({**TINY_MLP}, spec(2))  # an MLP on flattened images: G's output is squashed into [-1, 1]
    last = [m for m in images.generator.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(3.0)
    raw = images.generator(images.prior.draw(2), None)  # what D sees in training (sample() clamps anyway)
    torch.testing.assert_close(raw, torch.full_like(raw, math.tanh(3.0)))
    conditional = _gan({**TINY_DCGAN, "conditional": True}, spec(2, num_classes=3)).eval()
    z = conditional.draw_latent(4, torch.Generator().manual_seed(7))
    labels = torch.full((4,), 2, dtype=torch.long)
    expected = conditional.sample(4, torch.Generator().manual_seed(7), label=2)
    torch.testing.assert_close(conditional.decode_latent(z.double(), labels), expected)  # any float dtype, the label used
    assert not torch.allclose(conditional.decode_latent(z, torch.zeros(4, dtype=torch.long)), expected)
