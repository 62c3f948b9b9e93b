"""MLflow over HTTP, nested pipeline runs, and no DICOM identifiers in what is logged."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from udl_med.pipeline import load_pipeline, run_pipeline
from udl_med.engine.train import train
from udl_med.errors import ConfigError

from .test_train import ae_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start within 180 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_run_over_http_reaches_the_server(mlflow_server: str, phantom_manifest: Path, tmp_path: Path) -> None:
    report = train(ae_config(phantom_manifest, tmp_path / "run", mlflow_server, steps=6, eval_every=6))
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(report["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == "autoencoder"
    assert "train/loss" in run.data.metrics
    assert any(a.path.startswith("model") for a in client.list_artifacts(run.info.run_id))


def test_pipeline_runs_steps_as_nested_runs(phantom_manifest: Path, tmp_path: Path, tracking_uri: str) -> None:
    config_path = tmp_path / "ae.yaml"
    config_path.write_text(yaml.safe_dump(ae_config(phantom_manifest, tmp_path / "unused", tracking_uri, steps=4, eval_every=4)))
    pipeline = {
        "name": "tiny",
        "workdir": str(tmp_path / "work"),
        "tracking": {"uri": tracking_uri, "experiment": "pipeline-tests"},
        "steps": [
            {"name": "phantoms", "run": "phantoms", "with": {"out": "${workdir}/phantoms", "n": 4, "shape": [32, 32, 8], "seed": 1}},
            {
                "name": "train",
                "run": "train",
                "with": {"config": str(config_path), "set": ["data.source=${workdir}/phantoms/manifest.csv", "output_dir=${workdir}/ae"]},
            },
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    result = run_pipeline(path, overrides=["steps.phantoms.with.n=6"])
    client = mlflow.MlflowClient(tracking_uri)
    children = client.search_runs(
        [client.get_experiment_by_name("pipeline-tests").experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result['run_id']}'"
    )
    assert {r.info.run_name for r in children} >= {"phantoms", "ae-phantoms"}  # the config's name and the data's (the step's phantoms)
    phantoms_run = next(r for r in children if r.info.run_name == "phantoms")
    assert phantoms_run.data.params["n"] == "6"  # the override reached the step
    assert Path(result["train.model_dir"]).is_dir()  # the train step used the phantoms step's output


def test_pipeline_errors_name_the_step(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "steps": [{"name": "a", "run": "nonsense"}]}))
    with pytest.raises(ConfigError, match="steps.a.run"):
        load_pipeline(path)
    path.write_text(yaml.safe_dump({"name": "x", "steps": [{"name": "a", "run": "train", "wiht": {}}]}))
    with pytest.raises(ConfigError, match="steps.a.wiht: unknown key"):
        load_pipeline(path)


def test_no_dicom_identifiers_reach_mlflow(tmp_path: Path, tracking_uri: str) -> None:
    import pydicom

    from udl_med.data.phantoms import write_phantoms

    out = tmp_path / "dicom-phantoms"
    write_phantoms(out, n=4, shape=(32, 32, 8), seed=2, fmt="dicom")
    secret_name, secret_id = "Doe^Jane", "PID-0042-SECRET"
    for dcm in out.rglob("*.dcm"):
        ds = pydicom.dcmread(dcm)
        ds.PatientName, ds.PatientID = secret_name, secret_id
        ds.save_as(dcm)
    config = ae_config(out / "manifest.csv", tmp_path / "run", tracking_uri, steps=4, eval_every=4)
    config["data"]["split"] = None
    config["data"]["eval_split"] = None
    report = train(config)
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(report["run_id"])
    logged = " ".join([*map(str, run.data.params.values()), *map(str, run.data.tags.values()), *run.data.metrics.keys()])
    config_text = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="config.yaml", tracking_uri=tracking_uri)).read_text()
    for secret in (secret_name, "Doe", secret_id):
        assert secret not in logged and secret not in config_text
