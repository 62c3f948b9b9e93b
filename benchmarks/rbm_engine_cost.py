"""What routing ``fit_rbm`` through the engine would cost: time per step on scikit-learn's digits.

Three ways to train the same Bernoulli RBM (persistent CD-1, one chain per batch row,
no momentum or weight cost, the batch-mean gradient step ``lr``) on the 1200-row
training split of the 8x8 digits scaled to [0, 1], one thread:

- ``fit_rbm``: the closed-form loop of :func:`udl_med.methods.rbm.fit_rbm`;
- ``engine``: the ``rbm`` method trained by the engine on the rows in memory
  (``data.kind: memory``, no MLflow), per step from the ``on_step`` clock;
- ``sklearn``: ``sklearn.neural_network.BernoulliRBM``.

Prints one JSON line per case with microseconds per step and ``sklearn / engine``, the
ratio ``rbm_vs_sklearn`` would report if ``fit_rbm`` were an engine run. The results
are in :func:`udl_med.methods.rbm.fit_rbm`'s docstring.

    .venv/bin/python benchmarks/rbm_engine_cost.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import BernoulliRBM as SklearnRBM
from threadpoolctl import threadpool_limits

from udl_med.data.memory import TensorItems
from udl_med.engine.config import validate_config
from udl_med.engine.train import Trainer
from udl_med.methods.rbm import fit_rbm
from udl_med.nets.rbm import BernoulliRBM

# (n_hidden, learning rate, batch size, epochs)
CASES = [(100, 0.06, 10, 4), (256, 0.05, 50, 10), (256, 0.1, 100, 20)]


def engine_seconds(data: torch.Tensor, n_hidden: int, lr: float, batch: int, steps: int, seed: int) -> float:
    """Seconds for ``steps`` engine steps, from the first step's end to the last's (set-up excluded)."""
    model = {
        "n_hidden": n_hidden, "visible": "bernoulli", "persistent": True, "n_chains": batch, "cd_k": 1, "lr": lr,
        "initial_momentum": 0.0, "momentum": 0.0, "weight_decay": 0.0, "init_std": 0.01,
    }
    stamps: list[float] = []
    with tempfile.TemporaryDirectory(prefix="udl-med-rbm-cost-") as folder:
        config = validate_config(
            {
                "method": "rbm",
                "seed": seed,
                "data": {"kind": "memory"},
                "model": model,
                "train": {"steps": steps, "batch_size": batch, "log_every": steps, "eval_every": steps, "checkpoint_every": steps, "threads": 1},
                "tracking": {"enabled": False, "log_model": False},
                "output_dir": folder,
            }
        )
        Trainer(config, datasets=(TensorItems(data * 2 - 1), None), on_step=lambda step, losses: stamps.append(time.perf_counter())).run()
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1) * steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    train_x, _, _, _ = train_test_split((x / 16.0).astype(np.float32), y, train_size=1200, stratify=y, random_state=0)
    data = torch.from_numpy(train_x)
    with threadpool_limits(1):
        for n_hidden, lr, batch, epochs in CASES:
            steps = epochs * len(data) // batch
            times: dict[str, list[float]] = {"fit_rbm": [], "engine": [], "sklearn": []}
            for seed in range(args.repeats):
                torch.manual_seed(seed)
                rbm = BernoulliRBM(data.shape[1], n_hidden, init_std=0.01)
                start = time.perf_counter()
                fit_rbm(rbm, data, epochs=epochs, batch_size=batch, lr=lr, k=1, persistent=True, shuffle=False)
                times["fit_rbm"].append(time.perf_counter() - start)
                peer = SklearnRBM(n_components=n_hidden, learning_rate=lr, batch_size=batch, n_iter=epochs, random_state=seed)
                start = time.perf_counter()
                peer.fit(train_x)
                times["sklearn"].append(time.perf_counter() - start)
                times["engine"].append(engine_seconds(data, n_hidden, lr, batch, steps, seed))
            median = {k: statistics.median(v) for k, v in times.items()}
            row = {"case": f"h{n_hidden} lr{lr} b{batch}", "steps": steps}
            row.update({f"{k}_us_per_step": round(v / steps * 1e6, 1) for k, v in median.items()})
            row["sklearn_over_fit_rbm"] = round(median["sklearn"] / median["fit_rbm"], 2)
            row["sklearn_over_engine"] = round(median["sklearn"] / median["engine"], 2)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
