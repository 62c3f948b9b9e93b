"""pix2pix: learns paired translation in both directions, 2D and 3D."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from translation_testkit import build, fit, held_out, mean_of

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.methods.base import DataSpec, get_method

TINY = dict(channels=(8, 16, 32), strides=(2, 2), disc_channels=8, disc_layers=2, lr=2e-3)


def l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().mean().item()


def test_defaults_and_validation() -> None:
    cls = get_method("pix2pix")
    cfg = cls.Config()
    assert (cfg.gan_mode, cfg.lambda_l1, cfg.direction) == ("vanilla", 100.0, "both")
    with pytest.raises(ValidationError):
        cls.Config(direction="ct2pet")
    spec = DataSpec(spatial_dims=2, in_channels=1, image_size=(32, 32))
    with pytest.raises(ConfigError, match="model.strides"):
        cls(cls.Config(channels=(4, 8, 16), strides=(2,)), spec)


def test_learns_paired_translation_2d() -> None:
    val = held_out(2)
    ct, mr = val[keys.CT], val[keys.MR]
    run = fit("pix2pix", 2, steps=80, paired=True, **TINY)
    method, history = run.method, run.history
    after = method.evaluate(val)
    for d in ("ct2mr", "mr2ct"):
        assert mean_of(history, f"loss_l1_{d}", first=False) < 0.5 * mean_of(history, f"loss_l1_{d}", first=True)
    # better than returning the input, and better than predicting the target's mean image
    assert after["l1_ct2mr"] < 0.8 * l1(ct, mr) and after["l1_ct2mr"] < l1(mr.mean(0, keepdim=True).expand_as(mr), mr)
    assert after["l1_mr2ct"] < 0.8 * l1(mr, ct) and after["l1_mr2ct"] < l1(ct.mean(0, keepdim=True).expand_as(ct), ct)
    assert after["l1_mr2ct"] == pytest.approx(l1(method.translate(mr, "mr2ct"), ct), rel=1e-5)
    assert method.preview(val)["mr2ct"].shape == (16, 1, 96, 32)


def test_single_direction_and_3d_step() -> None:
    config = {**TINY, "disc_layers": 1, "direction": "mr2ct"}
    before = {k: v.clone() for k, v in build("pix2pix", 3, **config).state_dict().items()}  # the run's initial weights
    run = fit("pix2pix", 3, steps=2, paired=True, batch_size=2, **config)
    method, history = run.method, run.history
    assert set(method.generators) == {"mr2ct"}
    assert set(history[0]) >= {"loss_g", "loss_d", "loss_l1_mr2ct"}
    assert any(not torch.equal(v, before[k]) for k, v in method.state_dict().items() if k.startswith("generators"))
    assert any(not torch.equal(v, before[k]) for k, v in method.state_dict().items() if k.startswith("discriminators"))
    x = held_out(3, n=2)[keys.MR]
    assert method.translate(x, "mr2ct").shape == x.shape
    with pytest.raises(ValueError, match="valid: mr2ct"):
        method.translate(x, "ct2mr")


def test_wgan_gp_step() -> None:
    history = fit("pix2pix", 2, steps=3, paired=True, **{**TINY, "gan_mode": "wgan-gp"}).history
    assert len(history) == 3
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
