"""The training loop end to end: learning, MLflow contents, exact resume after SIGKILL, NaN stop, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
import yaml
from pydantic import Field

from tests.engine.torchrun_output import failure_report
from udl_med import keys
from udl_med.engine.model_io import load_model
from udl_med.engine.train import train
from udl_med.errors import ConfigError, RunError
from udl_med.methods.base import DataSpec, Method, MethodConfig, register


def ae_config(manifest: Path, out: Path, uri: str, **train: Any) -> dict[str, Any]:
    return {
        "method": "autoencoder",
        "seed": 3,
        "data": {"source": str(manifest), "layout": "2d", "size": [32, 32], "modality": "CT"},
        "model": {"latent_dim": 8, "channels": [8, 16], "strides": [2, 2], "num_res_units": 0, "lr": 3e-3},
        "train": {"steps": 60, "batch_size": 8, "log_every": 5, "eval_every": 30, "checkpoint_every": 30, "eval_items": 16, **train},
        "tracking": {"uri": uri, "experiment": "engine-tests", "log_model": False},
        "output_dir": str(out),
    }


def test_training_learns_and_is_tracked(phantom_manifest: Path, tmp_path: Path, tracking_uri: str) -> None:
    config = ae_config(phantom_manifest, tmp_path / "run", tracking_uri, steps=80, eval_every=40, checkpoint_every=40)
    config["tracking"]["log_model"] = True
    report = train(config)
    assert report["steps"] == 80

    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(report["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == "80" and run.data.params["model.latent_dim"] == "8"
    history = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(history) == 16 and history[-1] < 0.5 * history[0]  # logged every 5 steps, and the loss fell
    held_out = [m.value for m in client.get_metric_history(run.info.run_id, "eval/recon_mse")]
    assert len(held_out) == 2 and held_out[1] < held_out[0]  # evaluated at steps 40 and 80, and improving
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "previews")}
    assert any(p.endswith(".png") for p in artifacts)
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}

    mlflow.set_tracking_uri(tracking_uri)
    loaded = load_model(f"runs:/{report['run_id']}/model")
    assert loaded.method.name == "autoencoder" and not loaded.method.training
    local = load_model(report["model_dir"])
    x = torch.zeros(2, 1, 32, 32)
    assert torch.equal(loaded.method.encode(x), local.method.encode(x))
    # The model file never needs unpickling code.
    content = torch.load(Path(report["model_dir"]) / keys.MODEL_FILE, weights_only=True)
    assert content["method"] == "autoencoder"


def _final_state(model_dir: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(model_dir) / keys.MODEL_FILE, weights_only=True)["state_dict"]


def _write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _udl_med(*args: str) -> subprocess.Popen:
    """``udl-med ARGS`` in a subprocess with one thread, as in-process tests run (same float results)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "udl_med.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def kill_and_resume(path: Path, checkpoint: Path, steps: int) -> dict[str, Any]:
    """``udl-med train PATH``, SIGKILLed as soon as ``checkpoint`` exists, then ``--resume``d to the end; its JSON report."""
    proc = _udl_med("train", str(path))
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    step = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < step < steps
    resumed = _udl_med("train", str(path), "--resume", "--json")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_resume_after_sigkill_is_bit_identical(phantom_manifest: Path, tmp_path: Path, tracking_uri: str) -> None:
    steps = 200
    reference = train(ae_config(phantom_manifest, tmp_path / "reference", tracking_uri, steps=steps, checkpoint_every=4))

    config = ae_config(phantom_manifest, tmp_path / "killed", tracking_uri, steps=steps, checkpoint_every=4)
    path = _write_config(tmp_path, config)
    report = kill_and_resume(path, tmp_path / "killed" / "checkpoints" / "last.pt", steps)
    assert report["steps"] == steps
    ours, theirs = _final_state(report["model_dir"]), _final_state(reference["model_dir"])
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_ctrl_c_writes_a_checkpoint_and_resume_finishes(phantom_manifest: Path, tmp_path: Path, tracking_uri: str) -> None:
    config = ae_config(phantom_manifest, tmp_path / "run", tracking_uri, steps=400, checkpoint_every=1000, eval_every=1000)
    path = _write_config(tmp_path, config)
    proc = _udl_med("train", str(path))
    run_info = tmp_path / "run" / "run.json"
    deadline = time.time() + 120
    while not run_info.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
    last = err.strip().splitlines()[-1]
    assert "stopped by SIGINT" in last and "--resume" in last
    step = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 0 < step < 400
    done = train(config, overrides=["train.steps=" + str(step + 5)], resume=True)
    assert done["steps"] == step + 5


def test_a_second_run_in_the_same_folder_needs_resume(phantom_manifest: Path, tmp_path: Path, tracking_uri: str) -> None:
    config = ae_config(phantom_manifest, tmp_path / "run", tracking_uri, steps=4, eval_every=100)
    train(config)
    with pytest.raises(ConfigError, match="--resume"):
        train(config)


class ExplodingConfig(MethodConfig):
    explode_at: int = Field(3, ge=1)


@register("test-exploding")
class ExplodingMethod(Method):
    """A one-parameter method whose loss turns NaN at a given step."""

    Config = ExplodingConfig
    batch_keys = (keys.IMAGE,)

    def __init__(self, config: ExplodingConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls = 0

    def configure_optimizers(self):
        return {"only": torch.optim.SGD(self.parameters(), lr=0.01)}

    def train_step(self, batch, opt):
        self.calls += 1
        loss = (self.scale * batch[keys.IMAGE]).pow(2).mean()
        if self.calls >= self.config.explode_at:
            loss = loss * float("nan")
        opt.step("only", loss)
        return {"loss": loss.detach()}


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(phantom_manifest: Path, tmp_path: Path, tracking_uri: str) -> None:
    config = ae_config(phantom_manifest, tmp_path / "run", tracking_uri, steps=20, checkpoint_every=2)
    config.update(method="test-exploding", model={"explode_at": 6})
    with pytest.raises(RunError, match=r"loss loss is nan at step 6.*last good checkpoint"):
        train(config)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4 and torch.isfinite(state["model"]["scale"])
    runs = mlflow.MlflowClient(tracking_uri).search_runs(
        [mlflow.MlflowClient(tracking_uri).get_experiment_by_name("engine-tests").experiment_id],
        filter_string="params.method = 'test-exploding'",
    )
    assert runs and runs[0].info.status == "FAILED"


def test_cli_train_json_and_bad_config_exit_code(phantom_manifest: Path, tmp_path: Path, tracking_uri: str) -> None:
    path = _write_config(tmp_path, ae_config(phantom_manifest, tmp_path / "run", tracking_uri, steps=3))
    proc = _udl_med("train", str(path), "--json", "--set", "train.eval_every=100")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert {"run_id", "model_dir", "train/loss"} <= report.keys()

    proc = _udl_med("train", str(path), "--set", "train.stepz=3")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "train.stepz" in lines[0]


def test_torchrun_two_processes(phantom_manifest: Path, tmp_path: Path, tracking_uri: str) -> None:
    config = ae_config(phantom_manifest, tmp_path / "ddp", tracking_uri, steps=6, batch_size=4, eval_every=6)
    config["tracking"]["experiment"] = "engine-ddp"
    path = _write_config(tmp_path, config)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "udl_med.cli", "train", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, failure_report(proc.stderr)
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("engine-ddp")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # rank 0 alone logs
    assert (tmp_path / "ddp" / "model" / keys.MODEL_FILE).exists()
