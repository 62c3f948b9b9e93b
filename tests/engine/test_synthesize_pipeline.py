"""pipelines/synthesize.yaml end to end at tiny scale: nested runs, outputs of every step, the FID gate."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_synthesize_pipeline_tiny(tmp_path: Path, tracking_uri: str) -> None:
    import mlflow

    from udl_med.pipeline import run_pipeline
    from udl_med.evaluation.synthesis import QualityGateError, fid_gate_step

    work = tmp_path / "work"
    overrides = [
        f"workdir={work}",
        f"tracking.uri={tracking_uri}",
        "steps.phantoms.with.n=9",
        "steps.phantoms.with.shape=[32, 32, 16]",
        "steps.heldout.with.n=6",
        "steps.heldout.with.shape=[32, 32, 16]",
        f"steps.train.with.config={ROOT / 'configs' / 'lapgan-tiny.yaml'}",
        f"steps.train.with.set=['data.source=${{steps.slices.manifest}}', 'output_dir=${{workdir}}/runs/train', 'train.steps=20', 'train.batch_size=8', 'data.eval_split=null', 'tracking.uri={tracking_uri}']",
        "steps.synthesize.with.n_per_class=4",
        "steps.fid.with.max_fid=1.0e9",
        "steps.fid.with.bootstrap=10",
        "steps.utility.with.seeds=[0]",
        "steps.utility.with.steps=5",
        "steps.utility.with.channels=[4, 8]",
    ]
    result = run_pipeline(ROOT / "pipelines" / "synthesize.yaml", overrides)
    assert result["synthesize.n"] == 12
    assert result["fid.fid"] >= 0 and result["fid.passed"] is True
    assert 0 <= result["memorization.rate"] <= 1
    for arm in ("real", "real_plus_synthetic", "synthetic"):
        assert 0 <= result[f"utility.{arm}/balanced_accuracy"] <= 1
    assert (work / "synthetic" / "samples.png").is_file() and (work / "memorization" / "memorization.png").is_file()
    mlflow.set_tracking_uri(tracking_uri)
    children = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{result['run_id']}'")
    assert {"synthesize", "fid", "memorization", "utility"} <= set(children["tags.mlflow.runName"])
    with pytest.raises(QualityGateError, match="above the gate max_fid=1e-06"):
        fid_gate_step(str(work / "heldout_slices" / "manifest.csv"), str(work / "synthetic" / "manifest.csv"), max_fid=1e-6, bootstrap=0)
