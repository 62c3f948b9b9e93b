"""`udl-med sample` on a toy GAN (2D points): a CSV, the scatter with the modes marked, the mode coverage in --json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from udl_med.cli import main
from udl_med.shipped import shipped_files

TINY = """method: gan
data: {kind: points, points: {mixture: ring, n_train: 256, n_eval: 64}}
model: {architecture: mlp, latent_dim: 4, g_hidden: [8], d_hidden: [8], loss: non-saturating}
train: {steps: 3, batch_size: 16, log_every: 1000, eval_every: 1000, eval_items: 16, checkpoint_every: 1000}
tracking: {enabled: false}
"""
POINTS_CONFIGS = sorted(n for n in shipped_files("configs") if n.startswith(("gan-ring-", "gan-grid-")))


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_points_are_written_as_csv_with_the_scatter_and_mode_coverage(tmp_path: Path, capsys) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY + f"output_dir: {tmp_path / 'run'}\n")
    assert main(["train", str(config)]) == 0
    capsys.readouterr()
    out = tmp_path / "s"
    assert main(["sample", str(tmp_path / "run" / "model"), "--n", "100", "--out", str(out), "--seed", "4", "--json"]) == 0
    result = _last_json(capsys.readouterr().out)
    assert result["kind"] == "points" and result["n"] == 100 and result["seed"] == 4
    rows = list(csv.DictReader((out / "points.csv").open()))
    assert len(rows) == 100 and list(rows[0]) == ["x", "y", "nearest_mode"]
    assert all(0 <= int(r["nearest_mode"]) < 8 for r in rows) and len({(r["x"], r["y"]) for r in rows}) > 90
    coverage = result["mode_coverage"]
    assert coverage["n_modes"] == 8 and 0 <= coverage["modes_covered"] <= 8 and 0.0 <= coverage["high_quality_fraction"] <= 1.0
    assert coverage["mixture"] == "ring"
    assert (out / "samples.png").stat().st_size > 1000
    record = json.loads((out / "sample.json").read_text())
    assert record["kind"] == "points" and sorted(record["files"]) == ["points.csv", "samples.png"] and record["mode_coverage"] == coverage
    assert not list(out.glob("*.nii.gz")) and not (out / "manifest.csv").exists()
    again = tmp_path / "again"
    assert main(["sample", str(tmp_path / "run" / "model"), "--n", "100", "--out", str(again), "--seed", "4"]) == 0
    assert (again / "points.csv").read_text() == (out / "points.csv").read_text()  # the seed repeats the draw


@pytest.mark.slow
@pytest.mark.parametrize("name", POINTS_CONFIGS)
def test_every_shipped_points_config_trains_and_samples(name: str, tmp_path: Path, capsys) -> None:
    """All 18 gan-ring-*/gan-grid-* configs: 3 steps, then sample (before: ValueError from write_image, exit 1)."""
    run = tmp_path / "run"
    sets = ["train.steps=3", "train.batch_size=32", "train.eval_every=1000", "train.checkpoint_every=1000", "tracking.enabled=false", f"output_dir={run}"]
    assert main(["train", name, *[a for s in sets for a in ("--set", s)]]) == 0
    capsys.readouterr()
    assert main(["sample", str(run / "model"), "--n", "50", "--out", str(tmp_path / "s"), "--json"]) == 0
    result = _last_json(capsys.readouterr().out)
    assert result["kind"] == "points" and result["mode_coverage"]["n_modes"] in (8, 25)
    assert len((tmp_path / "s" / "points.csv").read_text().splitlines()) == 51
