"""How torchrun ranks leave after a clean run: none before all arrive, then highest rank first.

gloo resets a pair when it closes it; a rank that is closing its own pairs when a
peer's reset arrives, or whose last message is lost to it, can abort (SIGABRT).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.engine.torchrun_output import failure_report

ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import json, os, sys, time
import torch, torch.distributed as dist
from udl_med.engine.distributed import leave_distributed

dist.init_process_group("gloo")
rank = dist.get_rank()
time.sleep(0.3 * (dist.get_world_size() - rank))  # the lowest rank arrives last
t = torch.ones(4)
dist.all_reduce(t)
arrived = time.monotonic()
real_destroy = dist.destroy_process_group
times = {}

def timed_destroy(*args, **kwargs):
    times["closing"] = time.monotonic()
    real_destroy(*args, **kwargs)
    times["closed"] = time.monotonic()

dist.destroy_process_group = timed_destroy
leave_distributed(True)
assert not dist.is_initialized()
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump({"arrived": arrived, "sum": t.tolist(), **times}, f)
"""


def test_ranks_leave_after_all_arrive_and_highest_first(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3", str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, failure_report(proc.stderr)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    assert all(r["sum"] == [3.0] * 4 for r in ranks)
    last_arrival = max(r["arrived"] for r in ranks)
    assert all(r["closing"] >= last_arrival for r in ranks)  # nobody closes while a rank is still in a collective
    assert ranks[1]["closing"] >= ranks[2]["closed"] and ranks[0]["closing"] >= ranks[1]["closed"]  # highest rank first
