"""MLflow older than 3: the model folder is logged instead of the pyfunc model, with one warning per process."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pytest

from udl_med.engine import tracking


def test_older_mlflow_falls_back_with_one_warning(tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr(tracking.mlflow, "__version__", "2.16.2")
    monkeypatch.setattr(tracking, "_warned", set())
    calls = []
    monkeypatch.setattr(mlflow.pyfunc, "log_model", lambda *a, **k: calls.append(k))  # must not be tried
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "udl_med_model.pt").write_bytes(b"weights")
    run_ids = []
    with caplog.at_level(logging.WARNING, logger="udl_med.engine.tracking"):
        for name in ("first", "second"):
            tracker = tracking.Tracker(tracking_uri, "fallback-tests", name)
            tracker.log_model(folder)
            tracker.end()
            run_ids.append(tracker.run_id)
    assert calls == []
    warnings = [r for r in caplog.records if "MLflow 2.16.2" in r.getMessage()]
    assert len(warnings) == 1 and "needs MLflow >= 3" in warnings[0].getMessage()
    client = mlflow.MlflowClient(tracking_uri)
    for run_id in run_ids:  # both runs still have runs:/<id>/model for every udl-med command
        assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/udl_med_model.pt"]


def test_the_installed_mlflow_is_new_enough_for_the_pyfunc_model() -> None:
    assert tracking.mlflow_major() >= tracking.PYFUNC_MLFLOW_MAJOR
