"""Pretrained encoders against random init: linear probe and 10%-label fine-tuning on held-out phantoms.

The pretraining job (``pipelines/pretrain-encoder.yaml``) in one process, over several
seeds. Per seed: train the convolutional autoencoder of ``configs/ae2d-phantom.yaml``
with the engine (``train()``, MLflow in a temporary store) on 48 unlabeled phantoms
(64 x 64 x 16, 32 x 32 crops of axial slices, CT and MR), export its encoder
(``monai.networks.nets.Regressor``), and score it with :func:`udl_med.evaluation.probe.probe_step`
on 150 held-out phantoms (another seed of anatomies) against the same architecture from
random initialisation:

- ``linear_probe``: logistic regression on frozen features of liver-centred slices,
  5-fold cross-validation grouped by subject;
- ``finetune_10pct``: LP-FT of encoder + linear head on the labels of 10% of the
  subjects (15, balanced by class), scored on the other 90%.

The seed changes the autoencoder's initialisation and batch order, the random-init
encoder, the folds and the fine-tuning subjects. ``ours``/``peer`` are mean accuracies
over seeds, ``ratio = ours / peer``; the goal is a gap (mean of the per-seed differences)
larger than the seed spread (the larger standard deviation of the two arms).

    .venv/bin/python benchmarks/pretrain_probe.py [--seeds 3] [--steps 1000]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CASES = {"linear_probe": "linear_probe", "finetune_10pct": "finetune"}


def run(seeds: int, steps: int, n_pretrain: int, n_heldout: int, workdir: Path) -> list[dict]:
    from udl_med.data.phantoms import write_phantoms
    from udl_med.engine.config import load_config
    from udl_med.engine.train import train
    from udl_med.inference.export import export_model
    from udl_med.evaluation.probe import probe_step

    pre = write_phantoms(workdir / "pretrain", n=n_pretrain, shape=(64, 64, 16), seed=0)
    held = write_phantoms(workdir / "heldout", n=n_heldout, shape=(64, 64, 16), seed=1)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    results = []
    for seed in range(seeds):
        start = time.perf_counter()
        config = load_config(
            ROOT / "configs" / "ae2d-phantom.yaml",
            [
                f"seed={seed}",
                f"data.source={pre['manifest']}",
                f"train.steps={steps}",
                f"output_dir={workdir / f'run{seed}'}",
                f"tracking.uri={uri}",
                "tracking.experiment=benchmark-pretrain-probe",
                "tracking.log_model=false",
            ],
        )
        report = train(config)
        encoder = export_model(report["model_dir"], workdir / f"encoder{seed}", fmt="encoder")["out"]
        result = probe_step(encoder, held["manifest"], seed=seed, label_fraction=0.1)
        result["seconds"] = time.perf_counter() - start
        logging.getLogger("benchmark").info("seed %d: %s", seed, {k: v for k, v in result.items() if "/" in k})
        results.append(result)
    rows = []
    for case, prefix in CASES.items():
        ours = [r[f"{prefix}/pretrained"] for r in results]
        peer = [r[f"{prefix}/random"] for r in results]
        gap = statistics.mean(o - p for o, p in zip(ours, peer))
        spread = max(statistics.pstdev(ours), statistics.pstdev(peer))
        rows.append(
            {
                "benchmark": "pretrain_probe",
                "case": case,
                "metric": "accuracy (lesion class, held-out phantoms)",
                "ours": round(statistics.mean(ours), 4),
                "peer_name": "random init (same MONAI Regressor)",
                "peer": round(statistics.mean(peer), 4),
                "ratio": round(statistics.mean(ours) / statistics.mean(peer), 4),
                "goal": "pretrained above random init by more than the seed spread",
                "meets_goal": bool(gap > spread and all(o > p for o, p in zip(ours, peer))),
                "gap": round(gap, 4),
                "seed_spread": round(spread, 4),
                "seeds": seeds,
                "chance": round(statistics.mean(r["chance"] for r in results), 4),
                "per_seed_ours": [round(v, 4) for v in ours],
                "per_seed_peer": [round(v, 4) for v in peer],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000, help="autoencoder training steps per seed")
    parser.add_argument("--pretrain", type=int, default=48, help="unlabeled pretraining subjects")
    parser.add_argument("--heldout", type=int, default=150, help="labeled held-out subjects")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on shared cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="udl-med-pretrain-probe-") as tmp:
        rows = run(args.seeds, args.steps, args.pretrain, args.heldout, Path(tmp))
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
