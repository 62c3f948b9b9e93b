"""Two-stage GAN: sampling shapes in 2D and 3D, stage II leaves stage I unchanged, stage I from a model file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.methods.multiscale_testkit import HandOpt, batch
from udl_med.errors import ConfigError
from udl_med.methods.base import DataSpec
from udl_med.methods.two_stage_gan import TwoStageGAN, TwoStageGANConfig

TINY = dict(latent_dim=8, stage1_channels=(8,), stage2_channels=8, stage2_blocks=1, disc2_channels=(4,), embed_dim=4)


def _method(spatial_dims: int, size: int = 16, **kw) -> TwoStageGAN:
    torch.manual_seed(0)
    spec = DataSpec(spatial_dims=spatial_dims, in_channels=1, image_size=(size,) * spatial_dims, num_classes=3)
    return TwoStageGAN(TwoStageGANConfig(**{**TINY, "stage1_steps": 2, **kw}), spec)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("augmentation", [True, False])
def test_sampling_shapes(spatial_dims: int, augmentation: bool) -> None:
    method = _method(spatial_dims, conditioning_augmentation=augmentation).eval()
    s1, s2 = method.sample_stages(3, torch.Generator().manual_seed(0), label=1)
    assert s1.shape == (3, 1, *([4] * spatial_dims)) and s2.shape == (3, 1, *([16] * spatial_dims))
    x = method.sample(4, torch.Generator().manual_seed(5))
    assert x.shape == (4, 1, *([16] * spatial_dims)) and x.abs().max() <= 1
    assert torch.equal(x, method.sample(4, torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="label must be in"):
        method.sample(1, label=7)


def _stage1_state(method: TwoStageGAN) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in method.state_dict().items() if k.split(".")[0] in ("g1", "ca1", "d1")}


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_stage_two_leaves_stage_one_unchanged(spatial_dims: int) -> None:
    method = _method(spatial_dims, size=8, stage1_steps=1).train()
    opt = HandOpt(method.configure_optimizers())
    data = batch(spatial_dims, 8)
    out = method.train_step(data, opt)  # step 0: stage I
    assert set(out) == {"loss_g1", "loss_d1", "kl1"} and opt.stepped == ["d1", "g1"]
    stage1 = _stage1_state(method)
    stage2 = {k: v.clone() for k, v in method.state_dict().items() if k.startswith(("g2.", "d2."))}
    for step in (1, 2, 3):
        opt.global_step = step
        method.train()  # the engine puts the whole method in train mode
        out = method.train_step(data, opt)
    assert set(out) == {"loss_g2", "loss_d2", "kl2"} and opt.stepped[2:] == ["d2", "g2"] * 3
    after = method.state_dict()
    assert all(torch.equal(after[k], v) for k, v in stage1.items())  # weights AND batch-norm statistics
    assert any(not torch.equal(after[k], v) for k, v in stage2.items())  # stage II learned


def test_stage_one_loaded_from_a_model_folder(tmp_path: Path) -> None:
    from udl_med.engine.config import validate_config
    from udl_med.engine.model_io import apply_init_from, save_model

    trained = _method(2).eval()
    config = validate_config({"method": "two_stage_gan", "data": {"source": "x.csv", "labeled": True}, "model": {**TINY, "stage1_steps": 2}}).to_dict()
    save_model(tmp_path / "stage1", trained, config, trained.state_dict(), step=2)
    torch.manual_seed(123)
    spec = DataSpec(spatial_dims=2, in_channels=1, image_size=(16, 16), num_classes=3)
    fresh = TwoStageGAN(TwoStageGANConfig(**TINY, stage1_model=str(tmp_path / "stage1")), spec)
    assert not torch.equal(fresh.g1.project.weight, trained.g1.project.weight)
    for key, what in fresh.init_from():  # what the engine does before the first step
        apply_init_from(fresh, what, key)
    for name in ("g1", "ca1"):
        for (k, a), b in zip(getattr(fresh, name).state_dict().items(), getattr(trained, name).state_dict().values()):
            assert torch.equal(a, b), k
    assert not fresh.in_stage1(0)  # straight to stage II


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="stage1_steps"):
        _method(2, stage1_steps=0)
    with pytest.raises(ConfigError, match="stage1_steps"):
        _method(2, stage1_steps=3, stage1_model="runs/x/model")
    with pytest.raises(ConfigError, match="data.size"):
        _method(2, size=18)
