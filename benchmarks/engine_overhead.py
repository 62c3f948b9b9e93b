"""Engine overhead: training steps per second of udl-med's loop against a bare PyTorch loop.

Both train the same autoencoder network on the same 2D phantom slice dataset with the
same optimizer and batch size, in one process. Each side is timed at two run lengths
and the marginal cost per step is (t_long - t_short) / (n_long - n_short), so set-up
(dataset caching, MLflow store, process start) is left out and what remains is what the
engine adds to every step: the resumable data order, loss bookkeeping, progress bar,
throttled MLflow metrics and schedulers. Goal: at least 0.95x the bare loop.

Reproducibility on a shared machine: the two sides are measured in pairs, one pair per
round, for ``--rounds`` rounds (at least 5). Inside a round the four runs go A-short,
B-short, B-long, A-long (ABBA: a load that drifts during the round hits both sides
alike), and which side is A alternates from round to round. Each round gives one ratio; the row reports the median ratio and
its spread (min, max and the interquartile range of the per-round ratios), so a load
spike hits one round, not the result.

    .venv/bin/python benchmarks/engine_overhead.py [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

BATCH, SHORT, LONG, ROUNDS = 16, 30, 150, 7
DEFAULT_THREADS = THREADS = 1  # set by --threads; one thread each: on a shared 2-core machine more threads only contend


def engine_time(manifest: Path, work: Path, steps: int, tag: str) -> float:
    from udl_med.engine.train import train

    config = {
        "method": "autoencoder",
        "seed": 0,
        "data": {"source": str(manifest), "layout": "2d", "size": [32, 32], "modality": "CT", "eval_split": None},
        "model": {"latent_dim": 16, "channels": [16, 32], "strides": [2, 2], "num_res_units": 0},
        "train": {"steps": steps, "batch_size": BATCH, "log_every": 10, "checkpoint_every": 10_000, "threads": THREADS},
        "tracking": {"uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "bench", "log_model": False},
        "output_dir": str(work / f"run-{tag}-{steps}"),
    }
    start = time.perf_counter()
    train(config)
    return time.perf_counter() - start


def bare_time(manifest: Path, steps: int) -> float:
    from udl_med.data.config import DataConfig
    from udl_med.data.datasets import build_dataset, data_spec
    from udl_med.methods.base import get_method

    start = time.perf_counter()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    cfg = DataConfig(source=str(manifest), layout="2d", size=(32, 32), modality="CT", eval_split=None)
    dataset = build_dataset(cfg, cfg.split)
    method_cls = get_method("autoencoder")
    net = method_cls(method_cls.Config(latent_dim=16, channels=(16, 32), strides=(2, 2), num_res_units=0), data_spec(cfg, dataset)).net
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)
    done = 0
    while done < steps:
        for batch in loader:
            x = batch["image"].as_tensor() if hasattr(batch["image"], "as_tensor") else batch["image"]
            loss = F.mse_loss(net(x), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return time.perf_counter() - start


def quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def main() -> int:
    import logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="alternating pairs (at least 5)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch CPU threads, the same for both sides")
    args = parser.parse_args()
    global THREADS
    THREADS = args.threads
    torch.set_num_threads(THREADS)
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")
    logging.disable(logging.WARNING)
    from udl_med.data.phantoms import write_phantoms

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_phantoms(work / "phantoms", n=12, shape=(40, 40, 16), seed=0, fmt="nifti")
        manifest = work / "phantoms" / "manifest.csv"
        engine_time(manifest, work, SHORT, "warm")  # first imports and MLflow store creation out of the rounds
        bare_time(manifest, SHORT)
        ours, peer, ratios = [], [], []
        for r in range(args.rounds):
            # ABBA inside a round (cancels a linear drift in load), the first side alternating across rounds
            a, b = ("ours", "peer") if r % 2 == 0 else ("peer", "ours")
            times: dict[tuple[str, int], float] = {}
            for side, steps in ((a, SHORT), (b, SHORT), (b, LONG), (a, LONG)):
                times[side, steps] = engine_time(manifest, work, steps, f"{r}-{steps}") if side == "ours" else bare_time(manifest, steps)
            o = (LONG - SHORT) / (times["ours", LONG] - times["ours", SHORT])
            p = (LONG - SHORT) / (times["peer", LONG] - times["peer", SHORT])
            ours.append(o)
            peer.append(p)
            ratios.append(o / p)
            print(json.dumps({"round": r, "ours": round(o, 2), "peer": round(p, 2), "ratio": round(o / p, 3)}), file=sys.stderr)
    ratio = statistics.median(ratios)
    q1, q3 = quartiles(ratios)
    row = {
        "benchmark": "engine_overhead",
        "case": f"autoencoder 2d 32x32, batch {BATCH}, CPU threads {torch.get_num_threads()}, {args.rounds} alternating pairs",
        "metric": "steps_per_second (median of rounds)",
        "ours": round(statistics.median(ours), 2),
        "peer_name": "bare PyTorch loop (DataLoader + AdamW)",
        "peer": round(statistics.median(peer), 2),
        "ratio": round(ratio, 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "ratio_iqr": [round(q1, 3), round(q3, 3)],
        "rounds": [round(x, 3) for x in ratios],
        "goal": ">= 0.95 (median)",
        "meets_goal": ratio >= 0.95,
    }
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
