"""Synthesis on phantoms: FID/KID, memorisation and downstream utility of five generators.

The synthesis job (``pipelines/synthesize.yaml``) in one process, over several seeds,
every generator with the same number of training steps and batch size, trained with the
engine (``train()``, no MLflow) on the same real data:

- **2D**: 64 x 64 CT slices that show their lesion class (:func:`udl_med.evaluation.utility.lesion_slices`,
  soft-tissue window -250..250 HU) of 24 training phantoms (seed 0); held-out real: the
  slices of 24 other phantoms (seed 1). Generators: ``vae`` (configs/vae2d-phantom.yaml's
  net), ``gan`` DCGAN (unconditional), ``gan`` conditional DCGAN, ``lapgan`` (3 levels),
  ``two_stage_gan`` (stage I 16 x 16, half the steps each stage).
- **3D**: 32^3 CT volumes of 16 training phantoms (seed 0) against 16 held-out ones
  (seed 1): conditional DCGAN and LAPGAN (2 levels).

Per generator and seed: ``n_samples`` samples (classes in turn for conditional models)
against all held-out real items:

- ``fid_random`` / ``kid_random``: FID/KID with the seeded random extractor;
  ``fid_encoder``: FID with the encoder of an autoencoder pretrained by udl-med on the
  training slices (``udl-med export --format encoder``), 2D only;
- ``memorization``: :func:`udl_med.metrics.memorization.memorization_tensors` (near-copy
  distance, threshold calibrated per held-out subject at 1%, or at the smallest rate the
  held-out subjects can state), the fraction flagged;
- ``utility``: :func:`udl_med.evaluation.utility.utility_tensors` for the conditional 2D
  generators: the same MONAI classifier trained on the real training slices (all of
  them: the few labeled scans the generator also saw), on real + synthetic, and on
  synthetic alone, each scored on the held-out slices (balanced accuracy).

The **utility case** (:func:`utility_case`, ``--only-utility`` runs it alone, ~6 minutes
on one thread): in a whole 64 x 64 slice the lesion is a few pixels and neither a short-
trained generator nor the small classifier learns it, so the downstream question is asked
where the lesion is visible: liver-centred 32 x 32 crops in the soft-tissue window
-200..300 HU (:func:`liver_crops`, the K+1 benchmark's items). A conditional LAPGAN (2
levels) and a conditional DCGAN train on the crops of the 24 training phantoms (a
generator per seed), draw ``--utility-per-class`` crops per class, and the three arms
train the same classifier with the same budget, scored on the crops of 24 held-out
phantoms; rows give mean +- std and the per-seed values and gains.

Rows (one JSON object per line): ``benchmark, case, metric, ours, peer_name, peer,
ratio, goal, meets_goal`` plus spreads. ``ratio`` is "higher is better for us": for FID
``peer / ours``. Goals (issue 15): the best GAN's FID at most 0.5x the VAE's; LAPGAN or
two-stage better than the single-scale DCGAN at full resolution; memorisation at most 1%
per generator; real+synthetic above real-only by more than the seed spread.

    .venv/bin/python benchmarks/synthesis.py [--seeds 3] [--steps 300] [--steps3d 100] [--out rows.jsonl] [--grids DIR]
    .venv/bin/python benchmarks/synthesis.py --only-utility [--utility-steps 1500] [--utility-per-class 120] [--utility-first-seed 0]
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
from typing import Any

import torch

from udl_med import keys

ROOT = Path(__file__).resolve().parent.parent
WINDOW = (-250.0, 250.0)
BENCH = "synthesis"

# -- generator configs (model sections; data and train are filled in per run) ---------------

GENERATORS_2D: dict[str, dict[str, Any]] = {
    "vae": {"method": "vae", "labeled": False, "model": {"latent_dim": 32, "channels": [16, 32, 64], "strides": [2, 2, 2], "num_res_units": 0, "loss": "l2", "beta": 1.0, "lr": 0.002}},
    "dcgan": {"method": "gan", "labeled": False, "model": {"architecture": "dcgan", "latent_dim": 64, "g_channels": [64, 32, 16], "d_channels": [16, 32, 64]}},
    "cdcgan": {"method": "gan", "labeled": True, "model": {"architecture": "dcgan", "latent_dim": 64, "g_channels": [64, 32, 16], "d_channels": [16, 32, 64], "conditional": True}},
    "lapgan": {
        "method": "lapgan",
        "labeled": True,
        "model": {"levels": 3, "latent_dim": 64, "coarse_channels": [64, 32], "fine_channels": 16, "fine_blocks": 1, "disc_channels": [16, 32, 64]},
    },
    "two_stage": {
        "method": "two_stage_gan",
        "labeled": True,
        "model": {"latent_dim": 64, "stage1_channels": [64, 32], "stage2_channels": 16, "stage2_blocks": 1, "disc2_channels": [16, 32, 64], "embed_dim": 16},
    },
}
# the utility case: conditional generators on liver-centred 32 x 32 crops (see utility_case)
UTILITY_GENERATORS: dict[str, dict[str, Any]] = {
    "lapgan": {"method": "lapgan", "model": {"levels": 2, "latent_dim": 64, "coarse_channels": [64, 32], "fine_channels": 16, "fine_blocks": 1, "disc_channels": [16, 32, 64]}},
    "cdcgan": {"method": "gan", "model": {"architecture": "dcgan", "latent_dim": 64, "g_channels": [64, 32, 16], "d_channels": [16, 32, 64], "conditional": True}},
    # not in the default run: at 1500 steps (750 a stage) its crops show no lesion (README)
    "two_stage": {"method": "two_stage_gan", "model": GENERATORS_2D["two_stage"]["model"]},
}
UTILITY_DEFAULT = ("lapgan", "cdcgan")

CROP_WINDOW = (-200.0, 300.0)  # the K+1 benchmark's soft-tissue window: liver 60 HU, lesions ~0 and ~180 HU
CROP_SIZE = [32, 32]

GENERATORS_3D: dict[str, dict[str, Any]] = {
    "cdcgan3d": {"method": "gan", "labeled": True, "model": {"architecture": "dcgan", "latent_dim": 64, "g_channels": [64, 32, 16], "d_channels": [16, 32, 64], "conditional": True}},
    "lapgan3d": {
        "method": "lapgan",
        "labeled": True,
        "model": {"levels": 2, "latent_dim": 64, "coarse_channels": [64, 32], "fine_channels": 8, "fine_blocks": 1, "disc_channels": [8, 16, 32]},
    },
}


def utility_classifier(steps: int, augment: tuple[str, ...] = ("flip",), synthetic_share: float | None = None) -> Any:
    """The classifier every benchmark's utility arm trains, real or synthetic: MONAI ``Classifier`` (8, 16, 32), batch 32, lr 2e-3 (:class:`ClassifierBudget`)."""
    from udl_med.evaluation.utility import ClassifierBudget  # lazy: keeps the benchmark's --help fast

    return ClassifierBudget((8, 16, 32), steps=steps, batch_size=32, lr=2e-3, augment=tuple(augment), synthetic_share=synthetic_share)


def _config(spec: dict[str, Any], source: str, size: list[int], steps: int, batch: int, seed: int, out: Path) -> dict[str, Any]:
    model = dict(spec["model"])
    if spec["method"] == "two_stage_gan":
        model["stage1_steps"] = steps // 2
    layout = "3d" if len(size) == 3 else "2d"
    return {
        "method": spec["method"],
        "seed": seed,
        "data": {
            "source": source, "layout": layout, "size": size, "labeled": spec["labeled"], "modality": "CT", "ct_window": list(WINDOW),
            "crop": "center", "foreground_fraction": 0.0, "split": None, "eval_split": None,
        },
        "model": model,
        "train": {"steps": steps, "batch_size": batch, "log_every": 50, "eval_every": steps, "checkpoint_every": steps, "threads": 1},
        "tracking": {"enabled": False},
        "output_dir": str(out),
    }


def _samples(model_dir: str, n: int, seed: int) -> torch.Tensor:
    from udl_med.engine.model_io import load_model

    method = load_model(model_dir).method
    k = method.num_sample_classes()
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        if not k:
            return method.sample(n, g)
        per = [n // k + (c < n % k) for c in range(k)]
        return torch.cat([method.sample(m, g, label=c) for c, m in enumerate(per)]), per


def _volumes(manifest: str) -> tuple[torch.Tensor, list[int], list[str]]:
    """Normalised CT volumes (N, 1, X, Y, Z), labels and subjects of a phantom manifest."""
    from udl_med.data.io import list_images, read_image
    from udl_med.data.normalize import normalize

    images, labels, subjects = [], [], []
    for r in list_images(manifest):
        if r.modality != "CT":
            continue
        x, _ = normalize(read_image(r.path).as_tensor(), "CT", ct_window=WINDOW)
        images.append(x.float())
        labels.append(int(r.label))
        subjects.append(r.subject)
    return torch.stack(images), labels, subjects


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run(
    seeds: int, steps: int, steps3d: int, n_samples: int, workdir: Path, grids: Path | None, skip3d: bool, only: set[str] | None = None
) -> list[dict[str, Any]]:
    import numpy as np

    from udl_med.data.phantoms import write_phantoms
    from udl_med.data.preview import save_grid
    from udl_med.engine.train import train
    from udl_med.evaluation.utility import LabeledItems, labeled_items, lesion_slices, utility_tensors
    from udl_med.inference.export import export_model
    from udl_med.metrics.compare import compare_tensors
    from udl_med.metrics.extractors import build_extractor
    from udl_med.metrics.memorization import memorization_tensors

    t0 = time.perf_counter()
    train_ph = write_phantoms(workdir / "train", n=24, shape=(64, 64, 16), seed=0)
    held_ph = write_phantoms(workdir / "heldout", n=24, shape=(64, 64, 16), seed=1)
    train_sl = lesion_slices(train_ph["manifest"], workdir / "train_slices", window=WINDOW)
    held_sl = lesion_slices(held_ph["manifest"], workdir / "heldout_slices", window=WINDOW, subject_prefix="heldout-")
    real_train, real_held = labeled_items(train_sl["manifest"], WINDOW), labeled_items(held_sl["manifest"], WINDOW)
    logging.info("data: %d training slices, %d held-out slices (%.0f s)", len(real_train.labels), len(real_held.labels), time.perf_counter() - t0)

    # the pretrained encoder extractor: an autoencoder on the training slices, exported
    ae = {
        "method": "autoencoder", "seed": 0,
        "data": {"source": train_sl["manifest"], "layout": "2d", "size": [64, 64], "ct_window": list(WINDOW), "crop": "center", "foreground_fraction": 0.0, "split": None, "eval_split": None},
        "model": {"architecture": "conv", "latent_dim": 32, "channels": [8, 16, 32], "strides": [2, 2, 2], "num_res_units": 0, "loss": "l2", "lr": 0.003},
        "train": {"steps": 400, "batch_size": 16, "eval_every": 400, "checkpoint_every": 400, "threads": 1},
        "tracking": {"enabled": False}, "output_dir": str(workdir / "ae"),
    }
    export_model(train(ae)["model_dir"], str(workdir / "encoder"), fmt="encoder")
    extractors = {"random": build_extractor("random", 2), "encoder": build_extractor(f"encoder:{workdir / 'encoder'}", 2)}
    real_fid = {"random": real_held.images, "encoder": real_held.images}

    per: dict[str, dict[str, list[float]]] = {}
    budget = utility_classifier(200)
    wall: dict[str, float] = {}

    def record(name: str, metric: str, value: float) -> None:
        per.setdefault(name, {}).setdefault(metric, []).append(float(value))

    for seed in range(seeds):
        real_only = None
        for name, spec in ((n, g) for n, g in GENERATORS_2D.items() if only is None or n in only):
            start = time.perf_counter()
            report = train(_config(spec, train_sl["manifest"], [64, 64], steps, 16, seed, workdir / f"{name}-{seed}"))
            wall[name] = wall.get(name, 0.0) + time.perf_counter() - start
            drawn = _samples(report["model_dir"], n_samples, seed)
            fake, counts = drawn if isinstance(drawn, tuple) else (drawn, None)
            if grids is not None and seed == 0:
                save_grid(fake[:: max(1, len(fake) // 24)][:24], grids / f"synthesis_{name}.png", nrow=8)
            for ex_name, ex in extractors.items():
                fid = compare_tensors(real_fid[ex_name], fake, ex, bootstrap=0, seed=seed)
                record(name, f"fid_{ex_name}", fid["fid"])
                record(name, f"kid_{ex_name}", fid["kid"])
            mem = memorization_tensors(fake, real_train.images, real_held.images, real_held.subjects.tolist(), too_few="warn")
            record(name, "memorization", mem["rate"])
            record(name, "memorization_stated_rate", mem["stated_rate"])
            if counts is not None:
                labels = np.repeat(np.arange(len(counts)), counts)
                synthetic = LabeledItems(fake, labels, np.asarray([f"syn{i}" for i in range(len(labels))]))
                arms = ("real_plus_synthetic", "synthetic") if real_only is not None else ("real", "real_plus_synthetic", "synthetic")
                util = utility_tensors(real_train, synthetic, real_held, seeds=(seed,), per_class_subjects=None, budget=budget, arms=arms)
                if real_only is None:
                    real_only = util["real/balanced_accuracy"]
                    record("real", "balanced_accuracy", real_only)
                record(name, "utility_real_plus_synthetic", util["real_plus_synthetic/balanced_accuracy"])
                record(name, "utility_synthetic", util["synthetic/balanced_accuracy"])
            logging.info("seed %d %s: %s (%.0f s)", seed, name, {k: round(v[-1], 4) for k, v in per[name].items()}, time.perf_counter() - start)
    if not skip3d:
        train3 = write_phantoms(workdir / "train3d", n=16, shape=(32, 32, 32), seed=0)
        held3 = write_phantoms(workdir / "heldout3d", n=16, shape=(32, 32, 32), seed=1)
        vol_train, _, _ = _volumes(train3["manifest"])
        vol_held, _, _ = _volumes(held3["manifest"])
        random3 = build_extractor("random", 3)
        for seed in range(seeds):
            for name, spec in GENERATORS_3D.items():
                start = time.perf_counter()
                report = train(_config(spec, train3["manifest"], [32, 32, 32], steps3d, 8, seed, workdir / f"{name}-{seed}"))
                wall[name] = wall.get(name, 0.0) + time.perf_counter() - start
                fake, _ = _samples(report["model_dir"], 48, seed)
                if grids is not None and seed == 0:
                    save_grid(fake[:16], grids / f"synthesis_{name}.png", nrow=8)
                fid = compare_tensors(vol_held, fake, random3, bootstrap=0, seed=seed)
                record(name, "fid_random", fid["fid"])
                record(name, "kid_random", fid["kid"])
                record(name, "memorization", memorization_tensors(fake, vol_train, vol_held, too_few="warn")["rate"])
                logging.info("seed %d %s: %s (%.0f s)", seed, name, {k: round(v[-1], 4) for k, v in per[name].items()}, time.perf_counter() - start)
    logging.info("total %.0f s; training wall per generator: %s", time.perf_counter() - t0, {k: round(v) for k, v in wall.items()})
    return rows(per, seeds, steps, steps3d)


def liver_crops(workdir: Path, n: int = 24) -> tuple[Any, Any]:
    """Liver-centred 32 x 32 CT crops (soft-tissue window) of ``n`` training and ``n`` held-out phantoms.

    :func:`udl_med.evaluation.probe_items.probe_items` with ``roi: liver``, as the K+1
    benchmark uses: every slice through the liver, cropped around it, except slices of
    lesion subjects that the lesion does not reach, so an item shows the class it is
    labeled with; held-out subject ids get the prefix ``heldout-``.
    """
    import numpy as np

    from udl_med.evaluation.probe_items import phantom_ct_probe_items
    from udl_med.evaluation.utility import LabeledItems

    spec = {"layout": "2d", "size": CROP_SIZE, "slice_axis": 2, "ct_window": list(CROP_WINDOW)}
    out = []
    for name, seed, prefix in (("train", 0, ""), ("heldout", 1, "heldout-")):
        items = phantom_ct_probe_items(workdir / f"crops-{name}", n, seed, spec)
        out.append(LabeledItems(items.items.float(), items.labels, np.char.add(prefix, items.subjects.astype(str))))
    return out[0], out[1]


def utility_case(
    seeds: int,
    steps: int,
    per_class: int,
    classifier_steps: int,
    workdir: Path,
    grids: Path | None,
    generators: list[str] | None = None,
    n_phantoms: int = 24,
    first_seed: int = 0,
    classifier_augment: tuple[str, ...] = ("flip",),
) -> list[dict[str, Any]]:
    """Downstream utility where the lesion is visible: liver-centred 32 x 32 crops, a generator per seed.

    Per seed, every conditional generator (the same steps and batch 16) trains on the
    crops of the 24 training phantoms (all their labels: the few labeled real scans),
    draws ``per_class`` crops per class, and :func:`utility_tensors` trains the same MONAI
    classifier (one budget: ``classifier_steps`` steps, batch 32, lr 2e-3, class-balanced
    batches, ``classifier_augment``: flips, the rows on file; or also shifts, scalings
    and rotations, the stronger peer) on real, real + synthetic and synthetic crops, each scored on the
    crops of the 24 held-out phantoms. The real arm depends only on the seed, so it is
    trained once per seed and shared by the generators; as a fairness check it is also
    trained with 3x the classifier steps (reported: real only is not held back by the
    budget). Also per generator: FID (random extractor) against the held-out crops and
    the memorisation rate, so a gain cannot come from copies of training crops unnoticed.
    Seeds are ``first_seed .. first_seed + seeds - 1`` (generator, classifier and draws).
    """
    import numpy as np

    from udl_med.data.memory import TensorItems
    from udl_med.data.preview import save_grid
    from udl_med.engine.model_io import load_model
    from udl_med.engine.train import train
    from udl_med.evaluation.utility import LabeledItems, utility_tensors
    from udl_med.metrics.compare import compare_tensors
    from udl_med.metrics.extractors import build_extractor
    from udl_med.metrics.memorization import memorization_tensors

    t0 = time.perf_counter()
    real, held = liver_crops(workdir, n_phantoms)
    names = generators or list(UTILITY_DEFAULT)
    budget = utility_classifier(classifier_steps, classifier_augment)
    longer = utility_classifier(3 * classifier_steps, classifier_augment)
    extractor = build_extractor("random", 2)
    per: dict[str, dict[str, list[float]]] = {}
    logging.info("utility crops: %d training, %d held-out (%.0f s)", len(real.labels), len(held.labels), time.perf_counter() - t0)
    for i, seed in enumerate(range(first_seed, first_seed + seeds)):
        for name in names:
            spec = UTILITY_GENERATORS[name]
            start = time.perf_counter()
            model = dict(spec["model"], **({"stage1_steps": steps // 2} if spec["method"] == "two_stage_gan" else {}))
            config = {
                "method": spec["method"], "seed": seed, "data": {"kind": "memory"}, "model": model,
                "train": {"steps": steps, "batch_size": 16, "log_every": 100, "eval_every": steps, "checkpoint_every": steps, "threads": 1, "device": "cpu"},
                "tracking": {"enabled": False}, "output_dir": str(workdir / f"utility-{name}-{seed}"),
            }
            report = train(config, datasets=(TensorItems(real.images, real.labels), TensorItems(held.images, held.labels)))
            method = load_model(report["model_dir"]).method
            g = torch.Generator().manual_seed(1000 + seed)
            with torch.no_grad():
                fake = torch.cat([method.sample(per_class, g, label=c) for c in range(3)])
            if grids is not None and i == 0:
                save_grid(torch.cat([fake[c * per_class : c * per_class + 8] for c in range(3)]), grids / f"utility_{name}_crops.png", nrow=8)
            labels = np.repeat(np.arange(3), per_class)
            synthetic = LabeledItems(fake, labels, np.asarray([f"syn{i}" for i in range(len(labels))]))
            first = name == names[0]  # the real arm depends on the seed alone: trained with the first generator
            arms = ("real", "real_plus_synthetic", "synthetic") if first else ("real_plus_synthetic", "synthetic")
            util = utility_tensors(real, synthetic, held, seeds=(seed,), per_class_subjects=None, budget=budget, arms=arms)
            if first:
                per.setdefault("real", {}).setdefault("balanced_accuracy", []).append(util["real/balanced_accuracy"])
                per["real"].setdefault("accuracy", []).append(util["real/accuracy"])
                long_run = utility_tensors(real, synthetic, held, seeds=(seed,), per_class_subjects=None, budget=longer, arms=("real",))
                per["real"].setdefault("balanced_accuracy_3x_steps", []).append(long_run["real/balanced_accuracy"])
            rec = per.setdefault(name, {})
            for arm in ("real_plus_synthetic", "synthetic"):
                rec.setdefault(arm, []).append(util[f"{arm}/balanced_accuracy"])
                rec.setdefault(f"{arm}_accuracy", []).append(util[f"{arm}/accuracy"])
            rec.setdefault("fid_random", []).append(compare_tensors(held.images, fake, extractor, bootstrap=0, seed=seed)["fid"])
            rec.setdefault("memorization", []).append(memorization_tensors(fake, real.images, held.images, held.subjects.tolist(), too_few="warn")["rate"])
            logging.info(
                "utility seed %d %s: real %.3f, %s (%.0f s)", seed, name, per["real"]["balanced_accuracy"][i], {k: round(v[-1], 4) for k, v in rec.items()}, time.perf_counter() - start
            )
    logging.info("utility case total %.0f s", time.perf_counter() - t0)
    rows = utility_rows(per, seeds, steps, per_class, classifier_steps, first_seed)
    if tuple(classifier_augment) != ("flip",):
        rows = [{**row, "classifier_augment": list(classifier_augment)} for row in rows]
    return rows


def utility_rows(
    per: dict[str, dict[str, list[float]]], seeds: int, steps: int, per_class: int, classifier_steps: int, first_seed: int = 0
) -> list[dict[str, Any]]:
    """Rows of :func:`utility_case`: per generator and arm, mean +- std and the per-seed values."""
    out = []
    r, rsd = _stats(per["real"]["balanced_accuracy"])
    setting = {"seeds": list(range(first_seed, first_seed + seeds)), "generator_steps": steps, "synthetic_per_class": per_class, "classifier_steps": classifier_steps}
    out.append(_row("2d_liver_crops/utility/real_only", "balanced_accuracy_real", r, rsd, "chance", 1 / 3, None, None, "(reported)", None, per_seed=per["real"]["balanced_accuracy"], **setting))
    if "balanced_accuracy_3x_steps" in per["real"]:
        lm, lsd = _stats(per["real"]["balanced_accuracy_3x_steps"])
        out.append(
            _row("2d_liver_crops/utility/real_only_3x_classifier_steps", "balanced_accuracy_real", lm, lsd, "real_only", r, rsd, lm / r if r else None,
                 "(fairness check: a longer budget does not lift real only)", None, per_seed=per["real"]["balanced_accuracy_3x_steps"])
        )
    for g in (g for g in per if g != "real"):
        for arm in ("real_plus_synthetic", "synthetic"):
            m, sd = _stats(per[g][arm])
            if arm == "real_plus_synthetic":
                goal, meets = "real_plus_synthetic > real by more than the seed spread", m - r > max(sd, rsd)
                gains = [a - b for a, b in zip(per[g][arm], per["real"]["balanced_accuracy"])]
            else:
                goal, meets, gains = "(train on synthetic, test on real)", None, None
            out.append(
                _row(f"2d_liver_crops/utility/{g}", f"balanced_accuracy_{arm}", m, sd, "real_only", r, rsd, m / r if r else None, goal, meets,
                     per_seed=per[g][arm], per_seed_real=per["real"]["balanced_accuracy"], per_seed_gain=gains, **setting)
            )
        fm, fsd = _stats(per[g]["fid_random"])
        out.append(_row(f"2d_liver_crops/{g}", "fid_random", fm, fsd, "", None, None, None, "(reported)", None, per_seed=per[g]["fid_random"]))
        mm, msd = _stats(per[g]["memorization"])
        out.append(_row(f"2d_liver_crops/{g}", "memorization_rate", mm, msd, "goal_max", 0.01, None, None, "<= 1%", mm <= 0.01))
    return out


def planted_copies(workdir: Path, seed: int = 0) -> list[dict[str, Any]]:
    """Does the memorisation check catch copies on real data? New real slices plus planted copies.

    The "synthetic" set is the slices of 12 phantoms neither in training nor held out (new
    real images: a perfect generator) plus 10 exact, 10 left-right flipped and 10 noisy
    (std 0.02) copies of training slices; rows: recall of each kind and the flagged
    fraction of the new real slices (its goal: about the stated 2%).
    """
    from udl_med.data.phantoms import write_phantoms
    from udl_med.evaluation.utility import labeled_items, lesion_slices
    from udl_med.metrics.memorization import memorization_tensors

    items, subjects = {}, {}
    for name, n, s in (("train", 24, 0), ("heldout", 24, 1), ("new", 12, 2)):
        ph = write_phantoms(workdir / f"planted-{name}", n=n, shape=(64, 64, 16), seed=s)
        labeled = labeled_items(lesion_slices(ph["manifest"], workdir / f"planted-{name}-slices", window=WINDOW)["manifest"], WINDOW)
        items[name], subjects[name] = labeled.images, labeled.subjects.tolist()
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(items["train"]), generator=g)[:30]
    copies = items["train"][pick]
    kinds = {"exact": copies[:10], "flipped": copies[10:20].flip(-1), "noisy": (copies[20:] + 0.02 * torch.randn(copies[20:].shape, generator=g)).clamp(-1, 1)}
    synthetic = torch.cat([items["new"], *kinds.values()])
    result = memorization_tensors(synthetic, items["train"], items["heldout"], subjects["heldout"], too_few="warn")
    flagged = set(result["flagged_index"])
    n_new = len(items["new"])
    out = []
    start = n_new
    for kind, x in kinds.items():
        recall = sum(i in flagged for i in range(start, start + len(x))) / len(x)
        out.append(_row(f"2d/planted_{kind}_copies", "recall", recall, 0.0, "goal", 1.0, None, recall, "every planted copy flagged", recall == 1.0))
        start += len(x)
    false_alarm = sum(i in flagged for i in range(n_new)) / n_new
    out.append(
        _row("2d/new_real_slices", "flagged_rate", false_alarm, 0.0, "stated_rate", result["stated_rate"], None, None, "<= stated rate (2 spaces x 1%) + sampling error", false_alarm <= 2 * result["stated_rate"], n_new=n_new, holdout_rate=result["holdout_rate"])
    )
    return out


def _row(case: str, metric: str, ours: float, ours_std: float, peer_name: str, peer: float | None, peer_std: float | None, ratio: float | None, goal: str, meets: bool | None, **extra: Any) -> dict[str, Any]:
    return {
        "benchmark": BENCH, "case": case, "metric": metric, "ours": ours, "ours_std": ours_std, "peer_name": peer_name, "peer": peer,
        "peer_std": peer_std, "ratio": ratio, "goal": goal, "meets_goal": meets, **extra,
    }


def rows(per: dict[str, dict[str, list[float]]], seeds: int, steps: int, steps3d: int) -> list[dict[str, Any]]:
    out = []
    gans2d = ["dcgan", "cdcgan", "lapgan", "two_stage"]
    full2d = all(g in per for g in ["vae", *gans2d])  # the FID comparisons need every 2D generator
    for ex in (("random", "encoder") if full2d else ()):
        metric = f"fid_{ex}"
        vae, vae_sd = _stats(per["vae"][metric])
        for g in gans2d:
            m, sd = _stats(per[g][metric])
            out.append(_row(f"2d/{g}", metric, m, sd, "vae", vae, vae_sd, vae / m if m else None, "best GAN FID <= 0.5x VAE", None, seeds=seeds, steps=steps))
        best = min(gans2d, key=lambda g: _stats(per[g][metric])[0])
        bm, bsd = _stats(per[best][metric])
        out.append(_row(f"2d/best_gan={best}", metric, bm, bsd, "vae", vae, vae_sd, vae / bm if bm else None, "<= 0.5x VAE", bm <= 0.5 * vae, seeds=seeds))
        dc, dc_sd = _stats(per["dcgan"][metric])
        for g in ("lapgan", "two_stage"):
            m, sd = _stats(per[g][metric])
            out.append(_row(f"2d/{g}_vs_dcgan", metric, m, sd, "dcgan", dc, dc_sd, dc / m if m else None, "multi-scale FID < single-scale DCGAN", None))
        multi = min(_stats(per["lapgan"][metric])[0], _stats(per["two_stage"][metric])[0])
        out.append(_row("2d/multiscale_vs_dcgan", metric, multi, 0.0, "dcgan", dc, dc_sd, dc / multi if multi else None, "LAPGAN or two-stage < DCGAN", multi < dc))
    for g in ["vae", *gans2d, "cdcgan3d", "lapgan3d"]:
        if g not in per:
            continue
        m, sd = _stats(per[g]["kid_random"])
        out.append(_row(f"{'3d' if g.endswith('3d') else '2d'}/{g}", "kid_random", m, sd, "", None, None, None, "(reported)", None))
    if "lapgan3d" in per:
        l3, l3sd = _stats(per["lapgan3d"]["fid_random"])
        c3, c3sd = _stats(per["cdcgan3d"]["fid_random"])
        out.append(_row("3d/lapgan3d_vs_cdcgan3d", "fid_random", l3, l3sd, "cdcgan3d", c3, c3sd, c3 / l3 if l3 else None, "LAPGAN < conditional DCGAN (3D)", l3 < c3, steps=steps3d))
    for g, metrics in per.items():
        if "memorization" in metrics:
            m, sd = _stats(metrics["memorization"])
            stated = _stats(metrics["memorization_stated_rate"])[0] if "memorization_stated_rate" in metrics else None
            out.append(_row(f"{'3d' if g.endswith('3d') else '2d'}/{g}", "memorization_rate", m, sd, "goal_max", 0.01, None, (0.01 / m) if m else None, "<= 1%", m <= 0.01, stated_false_alarm_rate=stated))
    if "real" in per:
        r, rsd = _stats(per["real"]["balanced_accuracy"])
        for g in (g for g in ("cdcgan", "lapgan", "two_stage") if g in per):
            for arm in ("real_plus_synthetic", "synthetic"):
                m, sd = _stats(per[g][f"utility_{arm}"])
                goal = "real_plus_synthetic > real by more than the seed spread" if arm == "real_plus_synthetic" else "(train on synthetic, test on real)"
                meets = (m - r > max(sd, rsd)) if arm == "real_plus_synthetic" else None
                out.append(_row(f"2d/utility/{g}", f"balanced_accuracy_{arm}", m, sd, "real_only", r, rsd, m / r if r else None, goal, meets))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="training steps of every 2D generator")
    parser.add_argument("--steps3d", type=int, default=100)
    parser.add_argument("--samples", type=int, default=120, help="samples per 2D generator and seed")
    parser.add_argument("--skip3d", action="store_true")
    parser.add_argument("--out", default=None, help="also write the rows to this JSON-lines file")
    parser.add_argument("--grids", default=None, help="write one sample grid per generator here (seed 0)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--only-planted", action="store_true", help="only the planted-copies check of the memorisation rule")
    parser.add_argument("--generators", nargs="+", default=None, choices=sorted(GENERATORS_2D), help="only these 2D generators (FID comparison rows need all)")
    parser.add_argument("--only-utility", action="store_true", help="only the utility case on liver-centred crops (minutes: see the module docstring)")
    parser.add_argument("--utility-steps", type=int, default=1500, help="training steps of every utility-case generator")
    parser.add_argument("--utility-per-class", type=int, default=120, help="synthetic crops per class in the utility case")
    parser.add_argument("--utility-classifier-steps", type=int, default=200, help="classifier steps of every utility arm")
    parser.add_argument("--utility-generators", nargs="+", default=None, choices=sorted(UTILITY_GENERATORS), help=f"default: {' '.join(UTILITY_DEFAULT)}")
    parser.add_argument("--utility-first-seed", type=int, default=0, help="utility seeds start here (a confirmation run on new seeds)")
    parser.add_argument("--utility-classifier-augment", nargs="+", default=["flip"], choices=keys.CLASSIFIER_AUGMENTS,
                        help="the utility classifier's augmentation in every arm (flip: the rows on file; flip translation scaling rotation: the stronger peer)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for noisy in ("udl_med.engine", "udl_med.data", "udl_med.evaluation.utility", "udl_med.inference", "udl_med.metrics"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    grids = Path(args.grids) if args.grids else None
    if grids is not None:
        grids.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:

        def utility() -> list[dict[str, Any]]:
            return utility_case(args.seeds, args.utility_steps, args.utility_per_class, args.utility_classifier_steps, Path(tmp), grids, args.utility_generators, first_seed=args.utility_first_seed,
                                classifier_augment=tuple(args.utility_classifier_augment))

        if args.only_utility:
            result = utility()
        elif args.only_planted:
            result = planted_copies(Path(tmp))
        else:
            result = run(args.seeds, args.steps, args.steps3d, args.samples, Path(tmp), grids, args.skip3d, set(args.generators) if args.generators else None)
            result += utility() + planted_copies(Path(tmp))
    lines = [json.dumps(r) for r in result]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
