"""torchrun beyond one machine: ``--nnodes 2`` with a c10d rendezvous, both "nodes" on localhost.

Each node is its own torchrun agent (as on two hosts, or two SLURM tasks); they meet at
the rendezvous endpoint and form one group of two ranks. The run must be the same run as
two processes on one node: one MLflow run, rank 0's model file, and weights identical to
``--standalone --nproc-per-node 2`` (same seed, deterministic CPU).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from tests.engine.test_train import ae_config
from tests.engine.torchrun_output import failure_report
from udl_med import keys

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(model_dir / keys.MODEL_FILE, weights_only=True)
    flat: dict[str, torch.Tensor] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, torch.Tensor):
            flat[prefix] = node
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}")

    walk(state, "")
    return flat


@pytest.mark.slow
def test_two_nodes_with_a_c10d_rendezvous_train_as_two_local_processes(phantom_manifest: Path, tmp_path: Path, tracking_uri: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    train = ["-m", "udl_med.cli", "train"]

    def config(name: str) -> Path:
        cfg = ae_config(phantom_manifest, tmp_path / name, tracking_uri, steps=4, batch_size=4, eval_every=4, checkpoint_every=4)
        cfg["tracking"]["experiment"] = f"engine-{name}"
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    port = _free_port()
    multi = config("multinode")
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "udl-med-test", "--max-restarts", "0",
             *train, str(multi)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [(node.wait(timeout=400), node.communicate()[1]) for node in nodes]
    assert [code for code, _ in results] == [0, 0], "\n\n=== next node ===\n".join(failure_report(err) for _, err in results)

    single = config("onenode")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *train, str(single)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, failure_report(proc.stderr)

    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("engine-multinode").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # rank 0 alone logs, whichever node it is on
    assert runs[0].data.metrics["train/loss"] > 0
    a, b = _weights(tmp_path / "multinode" / "model"), _weights(tmp_path / "onenode" / "model")
    assert a.keys() == b.keys() and len(a) > 4
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def _workers(agent_pid: int) -> dict[int, int]:
    """rank -> pid of the workers a torchrun agent started (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != agent_pid:
            continue
        rank = next((v.split(b"=", 1)[1] for v in env if v.startswith(b"RANK=")), None)
        if rank is not None:
            found[int(rank)] = int(entry.name)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc")
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint(phantom_manifest: Path, tmp_path: Path, tracking_uri: str) -> None:
    """SIGTERM reaching rank 1 alone (SLURM signals tasks, not always all at once): both ranks stop, rank 0 checkpoints."""
    import signal
    import time

    from udl_med.engine.checkpoint import load_checkpoint

    cfg = ae_config(phantom_manifest, tmp_path / "run", tracking_uri, steps=100000, batch_size=4, eval_every=100000, checkpoint_every=100000, log_every=1)
    cfg["tracking"]["experiment"] = "engine-ddp-signal"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "udl_med.cli", "train", str(path)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        client = mlflow.MlflowClient(tracking_uri)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # training has begun: rank 0 has logged a few steps
            experiment = client.get_experiment_by_name("engine-ddp-signal")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= 3:
                break
            assert agent.poll() is None, failure_report(agent.communicate()[1])
            time.sleep(0.5)
        workers = _workers(agent.pid)
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGTERM)
        _, err = agent.communicate(timeout=120)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert "stopped by SIGTERM at step" in err and "stopped by a signal to another rank at step" in err, failure_report(err)
    steps = {int(line.split("at step ")[1].split(";")[0]) for line in err.splitlines() if "stopped by" in line and "at step " in line}
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert len(steps) == 1 and state["step"] == steps.pop() >= 3  # the same step on both ranks, and the checkpoint's
