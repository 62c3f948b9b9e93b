"""CycleGAN: losses fall, cycles reconstruct, translations beat doing nothing, 2D and 3D."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from translation_testkit import build, fit, held_out, mean_of

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.methods.base import Capability, DataSpec, get_method

TINY = dict(channels=8, num_res_blocks=2, disc_channels=8, disc_layers=2, pool_size=8, lr=2e-3)
TINY_3D = dict(channels=4, num_res_blocks=1, num_downsample=1, disc_channels=4, disc_layers=1, pool_size=4, lr=2e-3)


def l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().mean().item()


def test_registered_with_paper_defaults() -> None:
    cls = get_method("cyclegan")
    cfg = cls.Config()
    assert (cfg.gan_mode, cfg.lambda_cycle, cfg.lambda_identity, cfg.pool_size) == ("lsgan", 10.0, 0.5, 50)
    assert (cfg.lr, cfg.beta1, cfg.norm, cfg.num_res_blocks) == (2e-4, 0.5, "instance", 9)
    assert Capability.TRANSLATE in cls.capabilities and cls.batch_keys == (keys.CT, keys.MR)
    with pytest.raises(ValidationError, match="lsgan"):
        cls.Config(gan_mode="relativistic")
    with pytest.raises(ValidationError):
        cls.Config(lambda_cyc=5)  # unknown key
    with pytest.raises(ConfigError, match="model.disc_layers"):
        cls(cls.Config(), DataSpec(spatial_dims=3, in_channels=1, image_size=(16, 16, 16)))


def test_learns_unpaired_translation_2d() -> None:
    val = held_out(2)
    ct, mr = val[keys.CT], val[keys.MR]
    with torch.no_grad():
        before = build("cyclegan", 2, **TINY).evaluate(val)  # the run's initial weights
    run = fit("cyclegan", 2, steps=60, paired=False, **TINY)
    method, history = run.method, run.history
    after = method.evaluate(val)
    # generator and cycle losses fall
    assert mean_of(history, "loss_g", first=False) < 0.6 * mean_of(history, "loss_g", first=True)
    assert mean_of(history, "loss_cycle", first=False) < 0.5 * mean_of(history, "loss_cycle", first=True)
    # the held-out cycles reconstruct far better than at the start, and better than the mean image
    for m in ("ct", "mr"):
        assert after[f"cycle_l1_{m}"] < 0.5 * before[f"cycle_l1_{m}"]
    assert after["cycle_l1_ct"] < l1(ct, ct.mean(0, keepdim=True))
    with torch.no_grad():
        fake_mr, fake_ct = method.translate(ct, "ct2mr"), method.translate(mr, "mr2ct")
    # trained on unpaired data, the translations beat identity (returning the input) on paired truth
    assert l1(fake_mr, mr) < l1(ct, mr)
    assert l1(fake_ct, ct) < l1(mr, ct)
    previews = method.preview(val)
    assert previews["ct2mr"].shape == (16, 1, 3 * 32, 32)
    assert previews["mr2ct"].min() >= -1 and previews["mr2ct"].max() <= 1
    with pytest.raises(ValueError, match="ct2mr, mr2ct"):
        method.translate(ct, "pet2ct")


@pytest.mark.parametrize("gan_mode", ["vanilla", "wgan-gp"])
def test_other_gan_modes_step(gan_mode: str) -> None:
    history = fit("cyclegan", 2, steps=3, paired=False, **{**TINY, "gan_mode": gan_mode}).history
    assert len(history) == 3
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)


def test_one_step_3d_updates_every_network() -> None:
    before = {k: v.clone() for k, v in build("cyclegan", 3, **TINY_3D).state_dict().items() if k.endswith("weight")}
    run = fit("cyclegan", 3, steps=2, paired=False, batch_size=2, **TINY_3D)
    method, history = run.method, run.history
    assert set(history[0]) >= {"loss_g", "loss_cycle", "loss_identity", "loss_d"}
    changed = {k.split(".")[0] for k, v in method.state_dict().items() if k in before and not torch.equal(v, before[k])}
    assert changed == {"g_ct2mr", "g_mr2ct", "d_ct", "d_mr"}
    val = held_out(3, n=2)
    out = method.translate(val[keys.CT], "ct2mr")
    assert out.shape == val[keys.CT].shape
    assert len(method.pool_ct) == 4  # the history is full after 2 steps of 2


def test_state_dict_restores_pool_and_weights() -> None:
    method = fit("cyclegan", 2, steps=3, paired=False, **TINY).method
    state = method.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    clone = build("cyclegan", 2, seed=5, **TINY)
    clone.load_state_dict(state, strict=True)
    assert len(clone.pool_mr) == len(method.pool_mr) == 8
    x = held_out(2, n=2)[keys.MR]
    torch.testing.assert_close(clone.translate(x, "mr2ct"), method.translate(x, "mr2ct"))


def test_engine_resume_is_exact_with_the_image_pool(phantom_manifest, tracking_uri, tmp_path) -> None:
    """Stopping after 3 steps and resuming gives the same weights and pool as 6 steps straight."""
    from udl_med.engine.train import train

    def config(steps: int, out: str) -> dict:
        return {
            "method": "cyclegan",
            "seed": 0,
            "data": {"source": str(phantom_manifest), "layout": "2d", "size": [32, 32], "pairing": "unpaired", "eval_split": None},
            "model": {**TINY, "pool_size": 3},
            "train": {"steps": steps, "batch_size": 2, "checkpoint_every": 3, "log_every": 1},
            "tracking": {"uri": tracking_uri, "experiment": "tests-cyclegan-resume", "log_model": False},
            "output_dir": str(tmp_path / out),
        }

    straight = train(config(6, "straight"))
    train(config(3, "resumed"))
    resumed = train(config(6, "resumed"), resume=True)
    # the checkpoint holds everything (the model file only the generators)
    a = torch.load(Path(straight["run_dir"]) / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(Path(resumed["run_dir"]) / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and a["pool_ct._extra_state"].shape[0] == 3
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
