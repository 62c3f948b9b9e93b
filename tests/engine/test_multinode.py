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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
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
    assert [code for code, _ in results] == [0, 0], [err[-3000:] for _, err in results]

    single = config("onenode")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *train, str(single)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("engine-multinode").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # rank 0 alone logs, whichever node it is on
    assert runs[0].data.metrics["train/loss"] > 0
    a, b = _weights(tmp_path / "multinode" / "model"), _weights(tmp_path / "onenode" / "model")
    assert a.keys() == b.keys() and len(a) > 4
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
