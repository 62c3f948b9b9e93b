"""Parallel runs on a fresh default store: created and migrated once under a file lock; store errors are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from udl_med.cli import main
from udl_med.engine.store import sqlite_path

ROOT = Path(__file__).resolve().parents[2]
TINY = """method: gan
data: {kind: points, points: {mixture: ring, n_train: 256, n_eval: 64}}
model: {architecture: mlp, latent_dim: 4, g_hidden: [8], d_hidden: [8], loss: non-saturating}
train: {steps: 2, batch_size: 16, log_every: 1000, eval_every: 1000, eval_items: 16, checkpoint_every: 1000}
tracking: {log_model: false}
"""


@pytest.mark.slow
def test_parallel_runs_on_a_fresh_default_store_all_succeed(tmp_path: Path) -> None:
    """Three ``udl-med train`` started together where no mlflow.db exists yet (before: 3 of 4 exited 1 in Alembic)."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "udl_med.cli", "train", "tiny.yaml", "--set", f"tracking.run_name=r{i}"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for i in range(3)
    ]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
    assert [code for code, _ in results] == [0] * 3, [err[-2000:] for _, err in results]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.info.run_name for r in runs) == ["r0", "r1", "r2"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_store_that_cannot_be_opened_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY + f"output_dir: {tmp_path / 'run'}\n")
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not an SQLite database" * 100)
    assert main(["train", str(config), "--set", f"tracking.uri=sqlite:///{broken}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"udl-med train: error: MLflow store sqlite:///{broken}: ") and "not a database" in line, line
    (tmp_path / "afile").write_text("x")
    assert main(["train", str(config), "--set", f"tracking.uri=sqlite:///{tmp_path / 'afile' / 'mlflow.db'}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "afile is a file, not a folder" in line, line


def test_sqlite_paths() -> None:
    assert sqlite_path("sqlite:///mlflow.db") == Path("mlflow.db")
    assert sqlite_path("sqlite:////tmp/s/mlflow.db") == Path("/tmp/s/mlflow.db")
    assert sqlite_path("sqlite:///:memory:") is None and sqlite_path("http://host:5000") is None


def test_an_existing_store_in_a_read_only_folder_is_opened_without_the_lock(tmp_path: Path, monkeypatch) -> None:
    """Models are read from shared stores mounted read-only: no lock file can be written there, none is needed."""
    from udl_med.engine import store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store.prepare_store(uri)
    store._prepared.discard(uri)

    def read_only(path: Path) -> None:
        raise store.UserError(f"{path.parent}: read-only file system")

    monkeypatch.setattr(store, "check_writable", read_only)
    (tmp_path / "mlflow.db.lock").unlink(missing_ok=True)
    store.prepare_store(uri)  # no error
    assert not (tmp_path / "mlflow.db.lock").exists()
    missing = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"
    with pytest.raises(store.StoreError, match="read-only file system"):
        store.prepare_store(missing)
