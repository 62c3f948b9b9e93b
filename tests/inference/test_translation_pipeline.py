"""pipelines/translate-ct-mr.yaml end to end at tiny scale: nested MLflow runs, metrics, PNGs, bundle, sCT."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from udl_med.data.io import read_image
from udl_med.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_translate_pipeline(tmp_path: Path, tracking_uri: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # outputs relative to the working directory; the config is a shipped name
    result = run_pipeline(
        ROOT / "pipelines" / "translate-ct-mr.yaml",
        overrides=[
            f"workdir={tmp_path}",
            f"tracking.uri={tracking_uri}",
            "steps.phantoms.with.n=6",
            "steps.phantoms.with.shape=[32,32,12]",
            "steps.train.with.config=cyclegan-tiny",  # a shipped config, by name
            "steps.evaluate.with.max_subjects=1",
        ],
    )
    assert result["evaluate.n_subjects"] == 1 and result["evaluate.mr2ct_mae_hu"] > 0
    sct, mr = read_image(tmp_path / "synthetic-ct.nii.gz"), read_image(result["evaluate.held_out_mr"])
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(sct.meta[key], mr.meta[key], atol=1e-4)
    assert sct.meta["modality"] == "CT" and (tmp_path / "bundle" / "configs" / "inference.json").is_file()
    client = mlflow.tracking.MlflowClient(tracking_uri)
    children = client.search_runs(
        [client.get_run(result["run_id"]).info.experiment_id], f"tags.mlflow.parentRunId = '{result['run_id']}'"
    )
    by_name = {r.info.run_name: r for r in children}
    assert {"phantoms", "evaluate", "export", "translate"} <= set(by_name)
    evaluate = by_name["evaluate"]
    assert "mr2ct_mae_hu" in evaluate.data.metrics and "baseline_mr2ct_mae_hu" in evaluate.data.metrics
    artifacts = {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    assert {"translation_ct2mr.png", "translation_mr2ct.png"} <= artifacts
