"""K+1 on digits: how much of its error is the labeled draw and how much the training run; what an ensemble of runs buys.

Issue 23's tuning study behind ``model.ensemble`` (README "Semi-supervised"). For each
labeled draw (``--draws``, tuning seeds only: 105-114 reproduce the reported seeds' hard
draws), the benchmark's digits K+1 (one pair, ``ensemble: 1``) and the same D on the labels
alone are trained from ``--restarts`` initialisations: the draw's own seed, then 1, 2, ...
Rows: for K+1 and the labels-only arm, the test error of one run (the draw's own seed, as
the sweep trains it) and of the mean softmax of the first 3 and of all runs, mean / std /
worst over the draws; ``peer`` is LabelSpreading on the same labels. Per-run lines go to
``--runs`` (JSONL).

    .venv/bin/python benchmarks/semi_supervised_restarts.py --draws 105 106 107 108 109 110 111 112 113 114 --restarts 5 \\
        --runs benchmarks/out/semi_supervised_restarts_runs.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import semi_supervised as sweep  # noqa: E402  (the sweep's data, draws, settings and training)


def _probabilities(arm: str, per_class: int, draw: int, seed: int, workdir: Path, digits: tuple) -> np.ndarray:
    """Test-set class probabilities of one run (EMA weights at the end), labels drawn by ``draw``, initialised by ``seed``."""
    from udl_med.data.memory import TensorItems
    from udl_med.data.semi_supervised import SemiSupervisedItems
    from udl_med.engine.model_io import load_model

    x_train, x_test, y_train, y_test = digits
    labeled = sweep._choose(y_train, np.arange(len(y_train)), per_class, draw)
    train_set = SemiSupervisedItems(TensorItems(x_train[labeled], y_train[labeled]), TensorItems(x_train), 10)
    model = {**sweep.DIGITS_MODEL, "ensemble": 1, **sweep.ARMS[arm]}
    name = f"{arm}-{draw}-{seed}"
    sweep._train_error(model, train_set, TensorItems(x_test, y_test), sweep.DIGITS_STEPS, seed, workdir, name, 100)
    return load_model(workdir / name).method.classify(torch.from_numpy(x_test)).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, nargs="+", default=list(range(105, 115)), help="labeled draws (tuning seeds)")
    parser.add_argument("--restarts", type=int, default=3, help="initialisations per draw (at least 3)")
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--runs", type=Path, help="append one JSON line per training run here")
    args = parser.parse_args(argv)
    if args.restarts < 3:
        parser.error("--restarts must be at least 3")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(1)
    digits = sweep._digits_data()
    y_test = digits[3]
    spreading = [sweep._digits_job("label_spreading", args.per_class, draw, 0, {}, "") for draw in args.draws]
    with tempfile.TemporaryDirectory(prefix="udl-med-restarts-") as tmp:
        for arm in ("kplus1", "supervised_only"):
            by_members: dict[int, list[float]] = {1: [], 3: [], args.restarts: []}
            for draw in args.draws:
                seeds = [draw, *range(1, args.restarts)]
                probs = [_probabilities(arm, args.per_class, draw, seed, Path(tmp), digits) for seed in seeds]
                for seed, p in zip(seeds, probs):
                    error = float((p.argmax(1) != y_test).mean())
                    logging.getLogger("benchmark").warning("%s draw %d seed %d: %.4f", arm, draw, seed, error)
                    if args.runs:
                        with args.runs.open("a") as f:
                            f.write(json.dumps({"arm": arm, "labels_per_class": args.per_class, "draw": draw, "seed": seed, "test_error": round(error, 4)}) + "\n")
                for m in by_members:
                    by_members[m].append(float((sum(probs[:m]).argmax(1) != y_test).mean()))
            peer = sweep._stats(spreading)["mean"]
            for members, errors in by_members.items():
                ours = sweep._stats(errors)
                row = {
                    "benchmark": "semi_supervised_restarts",
                    "case": f"digits_{arm}_{args.per_class}_per_class_mean_of_{members}_runs",
                    "metric": "test error over labeled draws",
                    "ours": ours["mean"],
                    "ours_std": ours["std"],
                    "ours_worst": ours["worst"],
                    "peer_name": "sklearn LabelSpreading (knn, 7 neighbours), same labels",
                    "peer": peer,
                    "ratio": round(peer / max(ours["mean"], 1e-9), 3),
                    "draws": args.draws,
                    "per_draw_ours": [round(e, 4) for e in errors],
                    "per_draw_peer": [round(e, 4) for e in spreading],
                }
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
