"""ADA through the engine: p in the logs and checkpoints, bit-exact resume, and no leak into G's samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from udl_med import keys
from udl_med.data.memory import TensorItems
from udl_med.engine.config import validate_config
from udl_med.engine.model_io import load_model
from udl_med.engine.train import Trainer, train
from udl_med.nets.ada import AdaptiveAugment


def _items(n: int, seed: int) -> TensorItems:
    g = torch.Generator().manual_seed(seed)
    return TensorItems(torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.arange(n) % 2)


def _config(out: Path, uri: str, steps: int) -> dict[str, Any]:
    return {
        "method": "gan",
        "seed": 3,
        "data": {"kind": "memory"},
        "model": {
            "latent_dim": 4, "g_channels": [8, 4], "d_channels": [4, 8], "conditional": True,
            "d_augment": "ada", "ada_p": 0.2, "ada_interval": 1, "ada_kimg": 0.05, "r1_weight": 1.0, "r1_every": 2,
        },
        "train": {"steps": steps, "batch_size": 4, "eval_every": 3, "checkpoint_every": 3, "log_every": 1},
        "tracking": {"uri": uri, "experiment": "d-augment", "log_model": False},
        "output_dir": str(out),
    }


def _run(config: dict[str, Any], resume: bool = False) -> Trainer:
    trainer = Trainer(validate_config(config), resume=resume, datasets=(_items(24, 0), _items(8, 1)))
    trainer.run()
    return trainer


def test_resume_with_ada_is_bit_exact_and_p_is_logged(tmp_path: Path, tracking_uri: str) -> None:
    whole = _run(_config(tmp_path / "whole", tracking_uri, 6))
    config = _config(tmp_path / "parts", tracking_uri, 3)
    _run(config)
    config["train"]["steps"] = 6
    resumed = _run(config, resume=True)
    p = whole.method.adversary.augment.p
    assert float(p) != 0.2  # p moved: the controller ran
    for name, value in whole.method.state_dict().items():
        torch.testing.assert_close(value, resumed.method.state_dict()[name], rtol=0, atol=0, msg=name)
    assert "adversary.augment.p" in whole.method.state_dict()
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("d-augment").experiment_id], order_by=["start_time ASC"])[0]
    history = client.get_metric_history(run.info.run_id, f"train/{keys.ADA_P}")
    assert len(history) == 6 and history[-1].value == pytest.approx(float(p), abs=1e-6)


def _pattern() -> torch.Tensor:
    x = torch.full((1, 8, 8), -0.8)
    x[:, 1:4, 1:5] = 0.8  # a bright box near a corner: shifts, rotations, cut-outs and intensity changes all show
    return x


def _far_share(out: Path, items: TensorItems, model: dict[str, Any]) -> float:
    """Share of 256 samples of a GAN trained on ``items`` farther than 0.25 (mean absolute) from the pattern."""
    config = {
        "method": "gan", "seed": 0, "data": {"kind": "memory"},
        "model": {"architecture": "mlp", "latent_dim": 8, "g_hidden": [64, 64], "d_hidden": [64, 64], **model},
        "train": {"steps": 800, "batch_size": 32, "eval_every": 800, "checkpoint_every": 800, "log_every": 100, "device": "cpu", "threads": 1},
        "tracking": {"enabled": False}, "output_dir": str(out),
    }
    report = train(config, datasets=(items, TensorItems(items.images[:32])))
    samples = load_model(report["model_dir"]).method.sample(256, torch.Generator().manual_seed(0))
    return float((samples - _pattern()).abs().flatten(1).mean(1).gt(0.25).float().mean())


def test_ada_at_p_03_does_not_leak_its_transforms_into_the_samples(tmp_path: Path) -> None:
    """One image, 512 times: with ADA at p = 0.3 on what D sees G draws the image; with the same transforms on the real items only (the leak), G draws them."""
    clean = TensorItems(_pattern().expand(512, 1, 8, 8).clone())
    torch.manual_seed(1)
    augmented = AdaptiveAugment(p=0.3)(clean.images.clone())  # what data.augment would feed D: real items only
    assert float((augmented - _pattern()).abs().flatten(1).mean(1).gt(0.25).float().mean()) > 0.3
    with_ada = _far_share(tmp_path / "ada", clean, {"d_augment": "ada", "ada_target": None, "ada_p": 0.3})
    leaked = _far_share(tmp_path / "leak", TensorItems(augmented), {})
    assert with_ada < 0.05 and leaked > 0.2, (with_ada, leaked)


@pytest.mark.parametrize(("decay", "warned"), [(0.999, True), (0.05, False)])
def test_an_ema_too_slow_for_the_run_is_warned_naming_the_key(tmp_path: Path, tracking_uri: str, caplog: pytest.LogCaptureFixture, decay: float, warned: bool) -> None:
    config = _config(tmp_path / "ema", tracking_uri, 3)
    config["train"]["ema_decay"] = decay
    with caplog.at_level("WARNING", logger="udl_med.engine.train"):
        Trainer(validate_config(config), datasets=(_items(24, 0), _items(8, 1))).run()
    messages = [r.getMessage() for r in caplog.records if "train.ema_decay" in r.getMessage()]
    assert bool(messages) == warned
    if warned:
        assert "still 100% of the averaged model" in messages[0]  # 0.999 ** 2
        assert "0.2236 or less keeps them under 5%" in messages[0]  # 0.05 ** (1 / 2)
