"""GAN training speed: DCGAN steps per second through udl-med's engine against MONAI's ``GanTrainer``.

Both sides train the same DCGAN (the ``gan`` method's ``DCGANGenerator`` and
``DCGANDiscriminator``, taken from the method built from the same config and seed) on
the same 2D phantom slice dataset (``write_phantoms`` into a temporary folder, CT, 32 x 32
crops of axial slices), with the same batch, the same optimizers (Adam 2e-4, betas
(0.5, 0.999), as the method configures them) and the same non-saturating loss
(:class:`udl_med.losses.gan.GANLoss`), one D step and one G step per iteration, in one
process. The peer is :class:`monai.engines.GanTrainer` (pytorch-ignite, the ``bench``
extra) with ``decollate=False`` and loss functions that are correct for it: it calls
``d_loss(fakes, reals)`` with the generator's output not detached, so the D loss detaches
the fakes itself. Its data loader is a plain shuffled ``DataLoader`` over the same
dataset, its batches converted from MetaTensor to plain tensors.

Each side is timed at two run lengths and the marginal cost per step,
``(t_long - t_short) / (n_long - n_short)``, is kept, so set-up (dataset caching, the
MLflow store, building the networks) is left out. The sides alternate for ``--rounds``
rounds; the row gives the median ratio of steps per second (ours / peer) with its spread.
Peak resident memory of a whole job (dataset, networks, ``--memory-steps`` steps) above
the level after imports is measured in a fresh ``spawn`` process per side, sampled every
5 ms (a process never returns freed memory, so each side gets its own).

    .venv/bin/python benchmarks/gan_speed.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from translation_speed import PeakRSS  # noqa: E402  (the project's peak-RSS sampler)

BATCH, SHORT, LONG = 16, 20, 80
SIZE = [32, 32]
MODEL = {"architecture": "dcgan", "loss": "non-saturating", "latent_dim": 64, "g_channels": [64, 32], "d_channels": [32, 64]}


def base_config(manifest: Path, work: Path, steps: int, tag: str) -> dict[str, Any]:
    return {
        "method": "gan",
        "seed": 0,
        "data": {"source": str(manifest), "layout": "2d", "size": SIZE, "modality": "CT", "eval_split": None},
        "model": dict(MODEL),
        "train": {"steps": steps, "batch_size": BATCH, "log_every": 10, "checkpoint_every": 100_000, "threads": torch.get_num_threads()},
        "tracking": {"uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "bench", "log_model": False},
        "output_dir": str(work / f"run-{tag}-{steps}-{time.monotonic_ns()}"),
    }


def ours(manifest: Path, work: Path, steps: int, tag: str) -> float:
    from udl_med.engine.train import train

    start = time.perf_counter()
    train(base_config(manifest, work, steps, tag))
    return time.perf_counter() - start


def peer(manifest: Path, work: Path, steps: int) -> float:
    """MONAI GanTrainer on the method's networks, optimizers and loss; the same dataset."""
    from monai.engines import GanTrainer
    from torch.utils.data import DataLoader

    from udl_med.data.datasets import build_dataset, data_spec
    from udl_med.engine.config import validate_config

    start = time.perf_counter()
    cfg = validate_config(base_config(manifest, work, steps, "peer"))
    torch.manual_seed(cfg.seed)
    dataset = build_dataset(cfg.data, cfg.data.split)
    from udl_med.methods.base import get_method

    method = get_method("gan")(cfg.model, data_spec(cfg.data, dataset))
    g, d, gan_loss = method.generator, method.discriminator, method.adversary.objective
    opts = method.configure_optimizers()

    def d_loss(fakes: torch.Tensor, reals: torch.Tensor) -> torch.Tensor:
        return gan_loss.discriminator_loss(d(reals), d(fakes.detach()))

    def g_loss(fakes: torch.Tensor) -> torch.Tensor:
        return gan_loss.generator_loss(d(fakes))

    def prepare(batch: dict[str, Any], device: torch.device, non_blocking: bool = False, **kwargs: Any) -> torch.Tensor:
        x = batch["image"]
        return (x.as_tensor() if hasattr(x, "as_tensor") else x).to(device)

    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)
    trainer = GanTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        g_network=g,
        g_optimizer=opts["g"],
        g_loss_function=g_loss,
        d_network=d,
        d_optimizer=opts["d"],
        d_loss_function=d_loss,
        epoch_length=steps,
        latent_shape=cfg.model.latent_dim,
        d_prepare_batch=prepare,
        decollate=False,
    )
    if steps > len(loader):  # GanTrainer's epoch_length cannot exceed one pass over the loader
        trainer.data_loader = DataLoader(torch.utils.data.ConcatDataset([dataset] * (steps // len(loader) + 1)), batch_size=BATCH, shuffle=True, drop_last=True)
    trainer.run()
    return time.perf_counter() - start


def child_peak_mb(side: str, manifest: Path, work: Path, steps: int) -> float:
    """One whole job of ``side`` in this (fresh) process: peak RSS above the level after imports."""
    import importlib

    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    modules = ("mlflow", "mlflow.store.tracking.sqlalchemy_store", "sqlalchemy", "alembic", "monai.engines", "ignite.engine")
    # both sides' libraries (MLflow's SQL store too) loaded first: measure the job's data, not code pages
    for module in modules + ("udl_med.engine.train", "udl_med.methods.gan", "udl_med.data.datasets", "SimpleITK", "nibabel"):
        importlib.import_module(module)
    with PeakRSS() as mem:
        ours(manifest, work, steps, "mem") if side == "ours" else peer(manifest, work, steps)
    return mem.mb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--short", type=int, default=SHORT, help="steps of the short run of each pair")
    parser.add_argument("--long", type=int, default=LONG, help="steps of the long run of each pair")
    parser.add_argument("--memory-steps", type=int, default=LONG)
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory row")
    args = parser.parse_args(argv)
    short, long = args.short, args.long
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    import os

    os.environ["TQDM_DISABLE"] = "1"
    from udl_med.data.phantoms import write_phantoms

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_phantoms(work / "phantoms", n=12, shape=(40, 40, 16), seed=0, fmt="nifti")
        manifest = work / "phantoms" / "manifest.csv"
        ours(manifest, work, 2, "warm")  # create the MLflow store and warm the caches once
        peer(manifest, work, 2)
        sps: dict[str, list[float]] = {"ours": [], "peer": []}
        ratios = []
        for r in range(0 if args.memory_only else args.rounds):  # alternate so drifting machine load hits both sides
            o = (long - short) / (ours(manifest, work, long, f"l{r}") - ours(manifest, work, short, f"s{r}"))
            p = (long - short) / (peer(manifest, work, long) - peer(manifest, work, short))
            sps["ours"].append(o)
            sps["peer"].append(p)
            ratios.append(o / p)
        memory = {}
        spawn = multiprocessing.get_context("spawn")
        for side in ("ours", "peer"):
            with spawn.Pool(1) as pool:
                memory[side] = pool.apply(child_peak_mb, (side, manifest, work, args.memory_steps))
    ratio = statistics.median(ratios) if ratios else None
    case = (
        f"DCGAN 2d {SIZE[0]}x{SIZE[1]} phantom CT slices, batch {BATCH}, z {MODEL['latent_dim']}, "
        f"G {MODEL['g_channels']} D {MODEL['d_channels']}, non-saturating, CPU threads {torch.get_num_threads()}"
    )
    peer_name = "MONAI GanTrainer (pytorch-ignite), same networks, optimizers, loss and dataset"
    rows = []
    if ratios:
        rows.append({
            "benchmark": "gan_speed",
            "case": case,
            "metric": "steps_per_second",
            "ours": round(statistics.median(sps["ours"]), 2),
            "peer_name": peer_name,
            "peer": round(statistics.median(sps["peer"]), 2),
            "ratio": round(ratio, 3),
            "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3),
            "ratio_per_round": [round(x, 3) for x in ratios],
            "goal": ">= 1.0",
            "meets_goal": ratio >= 1.0,
        })
    rows.append(
        {
            "benchmark": "gan_speed",
            "case": f"{case}, whole job of {args.memory_steps} steps in a fresh process",
            "metric": "peak_rss_mb",
            "ours": round(memory["ours"], 1),
            "peer_name": peer_name,
            "peer": round(memory["peer"], 1),
            "ratio": round(memory["peer"] / max(memory["ours"], 1e-6), 3),
            "goal": None,
            "meets_goal": None,
        }
    )
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
