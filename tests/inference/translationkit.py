"""Tiny trained translation models for the inference, export and metrics tests.

Each model is trained once per test process (the engine, in-process, seconds on CPU)
and cached under the session's base temp folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TINY_CYCLEGAN = dict(channels=8, num_res_blocks=2, disc_channels=8, disc_layers=2, pool_size=16, lr=2e-3)
TINY_CYCLEGAN_3D = dict(channels=4, num_downsample=1, num_res_blocks=1, disc_channels=4, disc_layers=1, pool_size=4, lr=2e-3)
LAYOUTS: dict[str, dict[str, Any]] = {
    "2d": {"layout": "2d", "size": [32, 32]},
    "2.5d": {"layout": "2.5d", "size": [32, 32], "context": 1},
    "3d": {"layout": "3d", "size": [16, 16, 16]},
}


def tiny_model(
    factory: pytest.TempPathFactory,
    manifest: Path,
    tracking_uri: str,
    layout: str = "2d",
    steps: int = 40,
    method: str = "cyclegan",
    model: dict[str, Any] | None = None,
    log_model: bool = False,
) -> dict[str, Any]:
    """Train (or reuse) a tiny translator on the session phantoms; return ``train``'s report."""
    from udl_med.engine.train import train

    name = f"{method}-{layout}-{steps}-{int(log_model)}"
    folder = factory.getbasetemp() / "translation-models" / name
    report_file = folder / "report.json"
    if report_file.exists():
        import json

        return json.loads(report_file.read_text())
    if model is None:
        model = TINY_CYCLEGAN_3D if layout == "3d" else TINY_CYCLEGAN
    config = {
        "method": method,
        "seed": 0,
        "data": {"source": str(manifest), "pairing": "unpaired" if method == "cyclegan" else "paired", **LAYOUTS[layout]},
        "model": model,
        "train": {"steps": steps, "batch_size": 4, "lr_schedule": "linear_decay", "log_every": 10, "eval_every": steps, "eval_items": 4, "checkpoint_every": steps},
        "tracking": {"uri": tracking_uri, "experiment": "tests-translation", "run_name": name, "log_model": log_model},
        "output_dir": str(folder / "run"),
    }
    report = train(config)
    import json

    folder.mkdir(parents=True, exist_ok=True)
    report_file.write_text(json.dumps(report, default=str))
    return report
