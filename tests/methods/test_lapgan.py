"""LAPGAN: sampling shapes and classes in 2D and 3D, level schedules, training touches the right levels."""

from __future__ import annotations

import pytest
import torch

from tests.methods.multiscale_testkit import HandOpt, batch
from udl_med.errors import ConfigError
from udl_med.methods.base import DataSpec
from udl_med.methods.lapgan import LAPGAN, LAPGANConfig

TINY = dict(latent_dim=8, coarse_channels=(8,), fine_channels=4, fine_blocks=1, disc_channels=(4,))


def _method(spatial_dims: int, size: int = 16, levels: int = 3, num_classes: int = 3, **kw) -> LAPGAN:
    torch.manual_seed(0)
    spec = DataSpec(spatial_dims=spatial_dims, in_channels=1, image_size=(size,) * spatial_dims, num_classes=num_classes)
    return LAPGAN(LAPGANConfig(levels=levels, **{**TINY, **kw}), spec)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sampling_shapes_coarse_to_fine(spatial_dims: int) -> None:
    method = _method(spatial_dims).eval()
    levels = method.sample_levels(3, torch.Generator().manual_seed(0), label=2)
    assert [tuple(x.shape) for x in levels] == [(3, 1, *([s] * spatial_dims)) for s in (4, 8, 16)]
    x = method.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, *([16] * spatial_dims)) and x.min() >= -1 and x.max() <= 1
    again = method.sample(5, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)  # one generator draws everything: reproducible
    assert method.num_sample_classes() == 3
    with pytest.raises(ValueError, match="label must be in"):
        method.sample(2, label=3)


def test_finer_levels_add_the_generated_difference_to_the_upsampled_coarse_image() -> None:
    from udl_med.nets.pyramid import upsample

    method = _method(2, size=8, levels=2)
    coarse, fine = method.eval().sample_levels(2, torch.Generator().manual_seed(0), label=0)
    assert torch.allclose(fine, upsample(coarse, "linear"))  # an untrained G_0 (zero output layer) adds nothing
    opt = HandOpt(method.configure_optimizers())
    for _ in range(2):
        method.train().train_step(batch(2, 8), opt)
    coarse, fine = method.eval().sample_levels(2, torch.Generator().manual_seed(0), label=0)
    assert (fine - upsample(coarse, "linear")).abs().max() > 1e-4  # a trained G_0 adds detail


def test_unconditional_lapgan_needs_no_labels() -> None:
    method = _method(2, num_classes=0, conditional=False).eval()
    assert method.sample(2).shape == (2, 1, 16, 16) and method.num_sample_classes() == 0
    with pytest.raises(ValueError, match="unconditional"):
        method.sample(2, label=0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_joint_training_updates_every_level(spatial_dims: int) -> None:
    method = _method(spatial_dims, size=8, levels=2)
    opt = HandOpt(method.configure_optimizers())
    before = {k: v.clone() for k, v in method.state_dict().items()}
    out = method.train_step(batch(spatial_dims, 8), opt)
    assert set(out) == {"loss_g0", "loss_d0", "loss_g1", "loss_d1"} and all(torch.isfinite(v) for v in out.values())
    assert opt.stepped == ["d0", "g0", "d1", "g1"]
    for prefix in ("coarse_generator", "coarse_discriminator", "generators.0", "discriminators.0"):
        assert any(not torch.equal(before[k], v) for k, v in method.state_dict().items() if k.startswith(prefix)), prefix


def test_schedules() -> None:
    alternate = _method(2, schedule="alternate")
    assert [alternate.levels_at(t) for t in range(4)] == [[2], [1], [0], [2]]
    sequential = _method(2, schedule="sequential", level_steps=2)
    assert [sequential.levels_at(t) for t in range(7)] == [[2], [2], [1], [1], [0], [0], [0, 1, 2]]
    method = _method(2, size=8, levels=2, schedule="alternate")
    opt = HandOpt(method.configure_optimizers())
    opt.global_step = 1
    method.train_step(batch(2, 8), opt)
    assert opt.stepped == ["d0", "g0"]  # only the finest level at step 1


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="model.levels"):
        _method(2, size=12, levels=4)
    with pytest.raises(ConfigError, match="data.labeled"):
        _method(2, num_classes=0)
    with pytest.raises(ConfigError, match="level_steps"):
        _method(2, schedule="sequential")
