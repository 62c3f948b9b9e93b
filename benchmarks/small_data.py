"""Small data: conditional DCGAN and LAPGAN with and without augmentation of what D sees (issue 22, GAN arms).

The data are the liver-centred 32 x 32 CT crops of the synthesis benchmark
(:mod:`small_data_common`: soft-tissue window -200..300 HU, 3 lesion classes) of 6, 12
or 24 training phantoms (class-balanced, nested), judged against the crops of 24
held-out phantoms. Per generator (``cdcgan``: ``gan`` conditional DCGAN; ``lapgan``:
conditional LAPGAN, 2 levels), arm and seed a generator trains with the engine
(``train()``, in memory, no MLflow, one thread), draws as many crops as there are
held-out crops (classes in turn), and is scored:

- ``fid_random`` / ``kid_random``: FID/KID with the seeded random extractor;
  ``fid_encoder``: FID with the encoder of an autoencoder udl-med trains on the same
  training crops (the run's own data, ``udl-med export --format encoder``);
  ``fid_random_large`` / ``fid_encoder_large``: the same FIDs of a second draw ten times
  as large (the draw's own noise is as large as the arms' difference at 122 crops);
- ``precision`` / ``recall`` (k = 3) and ``density`` / ``coverage`` (k = 5) on the
  random extractor's features (Kynkäänniemi et al. 2019, Naeem et al. 2020),
  :func:`udl_med.metrics.prdc.prdc` (the rows on file were computed with the authors'
  ``prdc`` package before it landed; the two agree);
- ``memorization_rate``: :func:`udl_med.metrics.memorization.memorization_tensors`;
  ``memorization_rate_large``: the same on the ten-times draw (at 122 crops one flagged
  crop is 0.8% and two are 1.6%, so the 1% goal is read on the 1,220);
- at 12 subjects, ``utility``: the same MONAI classifier trained on real crops and on
  real + synthetic crops (:func:`udl_med.evaluation.utility.utility_tensors`), balanced
  accuracy on the held-out crops; ``<generator>/<arm>/large_draw``: the same with the
  draw ten times as large as the synthetic crops; ``balanced_accuracy_synthetic_only``:
  the classifier trained on the synthetic crops alone (train on synthetic, test on real:
  how much of the classes the crops carry, whatever they add to the real ones). The
  classifier augments with flips (``--classifier-augment flip``, the rows on file); with
  ``--classifier-augment flip translation scaling rotation`` it also shifts, scales and
  rotates, the stronger peer (session 20: real only 0.85 against 0.50 at 12 subjects);
  ``--synthetic-share S`` draws that share of every real + synthetic batch from the
  synthetic crops (default: pooled); ``--headroom`` adds the classifier on 24 real subjects
  and on the 12 plus the crops of the generator trained on all 24 (:data:`HEADROOM_SUBJECTS`).

Arms (``model:`` keys added to the generator's): ``plain``; ``diffaugment``
(translation, cutout, intensity); ``ada`` (the safe pipeline, target 0.6); ``ada_ema``
(ADA, sampled from G's EMA, ``train.ema_decay`` 0.99: chosen on tuning seeds 100-102,
better than ``ada`` there in FID at 6 subjects and utility at 12); ``ada_ema_mode_seeking``
(the same plus MSGAN's mode-seeking term, ``model.mode_seeking`` 0.5: chosen on tuning seeds
100-105 in session 22, FID 0.56x plain at 6 subjects against ADA + EMA's 0.78x, at lower
precision); ``plain_ema`` beside them on request; with
``--tune`` also ``ada_r1`` (ADA + R1, gamma 1, every 16 steps), ``diffaugment_sn``
(DiffAugment + spectral norm of D), ``ada_ema_small_d`` (D half as wide) and the leak
probes (:data:`ARM_LEAK`: G learns transformed copies of the crops, what issue 22
refuses, to measure what leaking would buy; never a recommended setting). Settings are
chosen on the tuning seeds (``--tune``, seeds 100+) and reported on fresh seeds (0, 1,
2): mean, standard deviation and the worst seed. The step-time cost of augmentation is measured side by
side in one process on one batch: 3 repeats of 30 interleaved blocks of 10 steps per arm,
a block's share against the plain step of the same block, on the thread's CPU time (and
wall time beside it), :func:`step_cost`.

Rows: ``benchmark, case, metric, ours, peer_name, peer, ratio, goal, meets_goal`` plus
``ours_std``, ``worst`` and ``per_seed``. Goals (issue 22): at 6 subjects the best
augmented GAN's FID at most 0.6x the plain GAN's with higher recall; memorisation at
most 1%; augmentation at most 15% of step time; the utility gain at 12 subjects larger
than the seed spread.

    .venv/bin/python benchmarks/small_data.py [--subjects 6 12] [--generators cdcgan lapgan] [--arms plain diffaugment ada] [--seeds 3] [--steps 1500] [--out rows.jsonl] [--grids DIR]
    .venv/bin/python benchmarks/small_data.py --tune            # the tuning seeds (100+): every arm, 6 subjects
    .venv/bin/python benchmarks/small_data.py --full            # 6, 12 and 24 subjects, both generators, 1500 steps
    .venv/bin/python benchmarks/small_data.py --cost-only --generators cdcgan lapgan   # augmentation's share of a step only
    .venv/bin/python benchmarks/small_data.py --floor-study     # the FIDs real crops score: the population, other draws of 6 subjects
    .venv/bin/python benchmarks/small_data.py --cost-only --generators cdcgan --arms plain ada --ada-p 0.25   # ... at another fixed p
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from small_data_common import SUBJECT_COUNTS, small_data_split  # noqa: E402
from synthesis import utility_classifier  # noqa: E402  (the one classifier of every benchmark's utility arm)

from udl_med import keys  # noqa: E402

BENCH = "small_data"

GENERATORS: dict[str, dict[str, Any]] = {
    "cdcgan": {"method": "gan", "model": {"architecture": "dcgan", "latent_dim": 64, "g_channels": [64, 32, 16], "d_channels": [16, 32, 64], "conditional": True}},
    "lapgan": {
        "method": "lapgan",
        "model": {"levels": 2, "latent_dim": 64, "coarse_channels": [64, 32], "fine_channels": 16, "fine_blocks": 1, "disc_channels": [16, 32, 64], "conditional": True},
    },
}
ARMS: dict[str, dict[str, Any]] = {
    "plain": {},
    "diffaugment": {"d_augment": "diffaugment"},
    "ada": {"d_augment": "ada"},
    "ada_t05": {"d_augment": "ada", "ada_target": 0.5},  # stronger: p rises until r_t falls to 0.5 (tuning seeds only unless it wins there)
    "ada_r1": {"d_augment": "ada", "r1_weight": 1.0},
    "diffaugment_sn": {"d_augment": "diffaugment", "spectral_norm": True},
    "plain_ema": {},
    "ada_ema": {"d_augment": "ada"},
    "ada_t05_ema": {"d_augment": "ada", "ada_target": 0.5},  # tuning seeds only
    "ada_r1_ema": {"d_augment": "ada", "r1_weight": 1.0},  # tuning seeds only
    "ada_ema_small_d": {"d_augment": "ada", "d_channels": [8, 16, 32]},  # tuning seeds only: half D's width (less to memorise with)
    "ada_ema_projection": {"d_augment": "ada", "d_conditioning": "projection"},  # tuning seeds only: D sees the class by projection (session 21: FID worse, utility within noise)
    "ada_ema_auxiliary": {"d_augment": "ada", "d_conditioning": "auxiliary"},  # tuning seeds only: AC-GAN, D's class head and G's class loss (session 22)
    "ada_ema_auxiliary_real": {"d_augment": "ada", "d_conditioning": "auxiliary", "aux_class_fakes": False},  # tuning seeds only: the class head learns real crops only
    "ada_ema_wide_g": {"d_augment": "ada", "g_channels": [128, 64, 32]},  # tuning seeds only: G twice as wide (more capacity for the lesion)
    "ada_ema_mode_seeking": {"d_augment": "ada", "mode_seeking": 0.5},  # ADA + EMA + MSGAN's term (the authors' lambda 1): chosen on tuning seeds 100-105 (session 22)
    "ada_ema_mode_seeking_1": {"d_augment": "ada", "mode_seeking": 1.0},  # tuning seeds only: twice the term
    "ada_ema_mode_seeking_025": {"d_augment": "ada", "mode_seeking": 0.25},  # tuning seeds only: half the term (precision against spread)
    "plain_leak": {},  # tuning seeds only: G learns transformed crops (ARM_LEAK)
    "ada_ema_leak": {"d_augment": "ada"},  # tuning seeds only: the same with ADA + EMA
    "ada_ema_leak_p06": {"d_augment": "ada"},  # tuning seeds only: more leaked
    "ada_ema_leak_geometry": {"d_augment": "ada"},  # tuning seeds only: geometry leaked, intensities (calibrated HU) not
}
_LEAKED = ("translation", "scaling", "rotation", "intensity")
ARM_LEAK: dict[str, tuple[int, float, tuple[str, ...]]] = {
    "plain_leak": (8, 0.3, _LEAKED), "ada_ema_leak": (8, 0.3, _LEAKED), "ada_ema_leak_p06": (8, 0.6, _LEAKED), "ada_ema_leak_geometry": (8, 0.5, _LEAKED[:3]),
}
"""``(copies, p, transforms)``: the probe of whether anything reaches past the training subjects' floor.

The training crops and ``copies - 1`` transformed copies of them (ADA's ``transforms``,
each at probability ``p``, drawn once) are what G learns from:
the augmentation of the real items only that issue 22 refuses (``data.augment``), tried
on the tuning seeds to measure what leaking would buy, never a recommended setting.
"""
EMA_DECAY = 0.99  # half-life about 70 steps (1,100 images): ADA's EMA ramp-up rule (half-life 0.05 x images seen, 24k images in 1500 steps at batch 16); 0.999 keeps 22% of the first step's weights after 1500 steps
ARM_TRAIN: dict[str, dict[str, Any]] = {arm: {"ema_decay": EMA_DECAY} for arm in ARMS if "ema" in arm.split("_")}  # ``train:`` keys of an arm: an ``_ema`` arm samples from G's EMA
DEFAULT_ARMS = ("plain", "diffaugment", "ada", "ada_ema", "ada_ema_mode_seeking")
TUNING_SEEDS = 100  # tuning seeds are 100, 101, ...: never reported
CLASSES = 3


def _features(extractor: Any, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([extractor(images[i : i + 64]) for i in range(0, len(images), 64)]).double().numpy()


def prdc_metrics(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """Precision and recall (k = 3), density and coverage (k = 5) of fake features against real ones."""
    from udl_med.metrics.prdc import prdc  # the rows on file came from the prdc package; both give the same values (checked)

    values = prdc(real, fake, k_pr=3, k_dc=5)
    return {"precision": float(values.precision), "recall": float(values.recall), "density": float(values.density), "coverage": float(values.coverage)}


def encoder_extractor(train: Any, workdir: Path, steps: int) -> Any:
    """FID's second extractor: the encoder of an autoencoder trained (seed 0) on the training crops, exported and loaded as ``encoder:DIR``."""
    from udl_med.data.memory import TensorItems
    from udl_med.engine.train import train as fit
    from udl_med.inference.export import export_model
    from udl_med.metrics.extractors import build_extractor

    folder = workdir / "encoder"
    if not (folder / "encoder.json").exists():
        config = {
            "method": "autoencoder", "seed": 0, "data": {"kind": "memory"},
            "model": {"architecture": "conv", "latent_dim": 32, "channels": [8, 16, 32], "strides": [2, 2, 2], "num_res_units": 0, "loss": "l2", "lr": 0.003},
            "train": {"steps": steps, "batch_size": 16, "eval_every": steps, "checkpoint_every": steps, "threads": 1, "device": "cpu"},
            "tracking": {"enabled": False}, "output_dir": str(workdir / "ae"),
        }
        report = fit(config, datasets=(TensorItems(train.images), TensorItems(train.images[:16])))
        export_model(report["model_dir"], str(folder), fmt="encoder")
    return build_extractor(f"encoder:{folder}", 2)


def train_generator(generator: str, arm: str, train: Any, held: Any, steps: int, seed: int, out: Path, reuse: bool = False) -> tuple[Any, float, dict[str, Any]]:
    """Train one generator of ``arm`` on ``train``; return the method (loaded from its model folder), the training seconds and the engine's report.

    ``reuse``: load the model a previous run of the same arm, seed and subject count left
    in ``out`` (its ``report.json``) instead of training (to score it again).
    """
    from udl_med.data.memory import TensorItems
    from udl_med.engine.model_io import load_model
    from udl_med.engine.train import train as fit

    spec = GENERATORS[generator]
    config = {
        "method": spec["method"], "seed": seed, "data": {"kind": "memory"}, "model": {**spec["model"], **ARMS[arm]},
        "train": {"steps": steps, "batch_size": 16, "log_every": 100, "eval_every": steps, "checkpoint_every": steps, "threads": 1, "device": "cpu", **ARM_TRAIN.get(arm, {})},
        "tracking": {"enabled": False}, "output_dir": str(out),
    }
    saved = out / "report.json"
    if reuse and saved.exists():
        report = json.loads(saved.read_text())
        return load_model(report["model_dir"]).method, float(report["train_seconds"]), report
    if arm in ARM_LEAK:
        train = leaked(train, *ARM_LEAK[arm], seed=seed)
    if out.exists():  # a fresh run every time: the benchmark's work folder is scratch
        shutil.rmtree(out)
    start = time.perf_counter()
    report = fit(config, datasets=(TensorItems(train.images, train.labels, CLASSES), TensorItems(held.images, held.labels, CLASSES)))
    seconds = time.perf_counter() - start
    saved.write_text(json.dumps({**{k: v for k, v in report.items() if isinstance(v, (str, int, float))}, "train_seconds": seconds}))
    return load_model(report["model_dir"]).method, seconds, report


def leaked(train: Any, copies: int, p: float, transforms: tuple[str, ...], seed: int) -> Any:
    """``train`` and ``copies - 1`` copies through ADA's ``transforms`` at a fixed ``p`` (:data:`ARM_LEAK`)."""
    from udl_med.evaluation.utility import LabeledItems
    from udl_med.nets.ada import AdaptiveAugment

    augment = AdaptiveAugment(transforms, p=p, target=None)
    with torch.random.fork_rng():
        torch.manual_seed(7000 + seed)
        with torch.no_grad():
            images = torch.cat([train.images] + [augment(train.images).clamp(-1.0, 1.0) for _ in range(copies - 1)])
    return LabeledItems(images, np.tile(train.labels, copies), np.tile(train.subjects, copies))


def draw(method: Any, n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` crops, classes in turn (as many per class as the held-out set has, rounded), and their labels."""
    g = torch.Generator().manual_seed(1000 + seed)
    per = [n // CLASSES + (c < n % CLASSES) for c in range(CLASSES)]
    with torch.no_grad():
        fake = torch.cat([method.sample(m, g, label=c) for c, m in enumerate(per)])
    return fake, np.repeat(np.arange(CLASSES), per)


def both_draws(method: Any, n: int, seed: int) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """``(suffix, crops, labels)`` of the scored draw (``n``, as many as the held-out crops) and of the ten-times draw (``/large_draw``, its own noise, not a superset)."""
    return [("", *draw(method, n, seed)), ("/large_draw", *draw(method, LARGE_DRAW * n, 5000 + seed))]


def _synthetic_subjects(n: int) -> np.ndarray:
    """A subject id per synthetic crop, none shared with a real subject (the utility check refuses held-out ids in training)."""
    return np.asarray([f"syn{i}" for i in range(n)])


HEADROOM_SUBJECTS = 24
"""``--headroom``: the 12 training subjects and 12 more (nested), the real data a perfect generator of new subjects would stand in for.

At 12 subjects the classifier trains on their crops (``real_24_subjects``), and on the 12
subjects' crops plus those of the same generator trained on all 24
(``<generator>/<arm>/trained_on_24_subjects``): whether the generator's crops carry what
new subjects add, when it has seen them.
"""
SUBSETS = 5  # random subsets of the generated crops, of the training set's size, for the FID beside the floor
LARGE_DRAW = 10  # ``fid_<extractor>_large``: FID of this many times the held-out count of generated crops (a draw of 122 moves FID by up to 0.16 for one generator)


def score(fake: torch.Tensor, train: Any, held: Any, extractors: dict[str, Any], seed: int, large: torch.Tensor | None = None) -> dict[str, float]:
    """FID/KID (random, encoder), PRDC (random features), memorisation rate (of both draws).

    ``fid_<extractor>_train_n``: the mean FID of ``SUBSETS`` random subsets of the
    generated crops as large as the training set, the like-for-like partner of the floor
    (:func:`floor_fids`): FID's bias grows as the sample shrinks, so 33 training crops
    score worse than 122 generated ones of the same distribution would.

    ``fid_<extractor>_large`` (when ``large``, another draw of ``LARGE_DRAW`` times as many
    crops, is given): the same FID with the generated side's sampling noise and
    small-sample bias cut down. Five draws of 122 crops from one generator spread by 0.03
    to 0.16 (standard deviation), as much as the arms differ, so one draw of 122 cannot say
    which of two generators is better on one seed; the held-out side stays the 122 crops.
    """
    from udl_med.metrics.compare import compare_tensors
    from udl_med.metrics.memorization import memorization_tensors

    out: dict[str, float] = {}
    n_train = len(train.images)
    for name, extractor in extractors.items():
        result = compare_tensors(held.images, fake, extractor, bootstrap=0, seed=seed)
        out[f"fid_{name}"] = float(result["fid"])
        if name == "random":
            out["kid_random"] = float(result["kid"])
        g = torch.Generator().manual_seed(2000 + seed)
        picks = [torch.randperm(len(fake), generator=g)[:n_train] for _ in range(SUBSETS)]
        out[f"fid_{name}_train_n"] = statistics.fmean(float(compare_tensors(held.images, fake[i], extractor, bootstrap=0, seed=seed)["fid"]) for i in picks)
        if large is not None:
            out[f"fid_{name}_large"] = float(compare_tensors(held.images, large, extractor, bootstrap=0, seed=seed)["fid"])
    out.update(prdc_metrics(_features(extractors["random"], held.images), _features(extractors["random"], fake)))
    # the near-copy check, calibrated per held-out subject (24 subjects: the smallest rate they can state, with a warning, if below the default)
    out["memorization_rate"] = float(memorization_tensors(fake, train.images, held.images, held.subjects, too_few="warn")["rate"])
    if large is not None:
        out["memorization_rate_large"] = float(memorization_tensors(large, train.images, held.images, held.subjects, too_few="warn")["rate"])
    return out


class _Opt:
    """The engine's optimisation object, reduced to what a training step uses."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers, self.global_step = optimizers, 0

    def step(self, name: str, loss: torch.Tensor, retain_graph: bool = False) -> None:
        self.optimizers[name].zero_grad(set_to_none=True)
        loss.backward(retain_graph=retain_graph)
        self.optimizers[name].step()

    def autocast(self) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def optimizer(self, name: str) -> torch.optim.Optimizer:
        return self.optimizers[name]


def floor_fids(train: Any, held: Any, extractors: dict[str, Any]) -> dict[str, float]:
    """FID of the real training crops themselves against the held-out crops, per extractor: the floor a generator of the training set reaches."""
    from udl_med.metrics.compare import compare_tensors

    return {f"fid_{name}": float(compare_tensors(held.images, train.images, extractor, bootstrap=0, seed=0)["fid"]) for name, extractor in extractors.items()}


def floor_study(workdir: Path, draws: int = 20, subsets: int = 10) -> list[dict[str, Any]]:
    """What FID (random extractor, against the held-out crops) real crops score: how far below the plain GAN a generator can go.

    - ``population/<m>_crops``: the crops of the training phantoms *outside* the benchmark's
      6, drawn down to ``m`` (``subsets`` random subsets): what a generator of the whole
      population would score at ``m`` samples, and how much FID's small-sample bias adds
      from the 6 subjects' 33 crops to more;
    - ``6_subject_draws``: the floor of ``draws`` other class-balanced draws of 6 training
      phantoms (seeded), beside the benchmark's own draw: how typical its floor is.
    """
    from small_data_common import subject_classes

    from udl_med.metrics.compare import compare_tensors
    from udl_med.metrics.extractors import build_extractor

    train_all, held = small_data_split(workdir / "crops", max(SUBJECT_COUNTS))
    extractor = build_extractor("random", 2)

    def fid(images: torch.Tensor) -> float:
        return float(compare_tensors(held.images, images, extractor, bootstrap=0, seed=0)["fid"])

    six, _ = small_data_split(workdir / "crops", 6)
    others = train_all.subset(~np.isin(train_all.subjects, np.unique(six.subjects)))
    out = [_row("6_subjects/real_training_crops", "fid_random", fid(six.images), 0.0, "", None, None, "(the floor)", None, crops=len(six.labels))]
    g = torch.Generator().manual_seed(0)
    for m in sorted({len(six.labels), 60, len(others.labels)}):
        values = [fid(others.images[torch.randperm(len(others.labels), generator=g)[:m]]) for _ in range(subsets if m < len(others.labels) else 1)]
        mean, sd = _stats(values)
        out.append(_row(f"population/{m}_crops", "fid_random", mean, sd, "", None, None, "(reported)", None, subjects=len(np.unique(others.subjects)), per_subset=values))
    classes, rng, floors = subject_classes(train_all), np.random.default_rng(5), []
    for _ in range(draws):
        pick = [s for c in sorted(set(classes.values())) for s in rng.choice(sorted(s for s, k in classes.items() if k == c), 2, replace=False)]
        floors.append(fid(train_all.subset(np.isin(train_all.subjects, pick)).images))
    mean, sd = _stats(floors)
    out.append(_row("6_subject_draws/real_training_crops", "fid_random", mean, sd, "", None, None, "(reported)", None, worst=max(floors), best=min(floors), per_draw=floors))
    return out


def step_cost(generator: str, arms: list[str], repeats: int = 3, blocks: int = 30, steps: int = 10, ada_p: float = 0.5) -> dict[str, dict[str, list[float]]]:
    """The share of a training step that each arm's augmentation adds, measured side by side in this process.

    Per repeat every arm is built afresh (seed = repeat) on one batch of 16 crops (the
    benchmark's batch; D sees 32 items a step), warmed up, then timed in ``blocks``
    interleaved blocks of ``steps`` steps (the arms' order rotates from block to block),
    on two clocks: wall time and this thread's CPU time (``time.thread_time``, blind to
    the time the thread waits for a core on a loaded machine). A block's share is
    ``arm / plain - 1`` within that block, so load drift between blocks cancels; a
    repeat's share is the median over its blocks. ADA runs at a fixed ``ada_p``.

    Returns:
        ``{arm: {"cpu": [share per repeat], "wall": [...], "plain_cpu_seconds": [...], "plain_wall_seconds": [...]}}``.
    """
    from udl_med.methods.base import DataSpec, get_method

    spec = GENERATORS[generator]
    data = DataSpec(spatial_dims=2, in_channels=1, image_size=(32, 32), num_classes=CLASSES)
    out: dict[str, dict[str, list[float]]] = {arm: {"cpu": [], "wall": [], "plain_cpu_seconds": [], "plain_wall_seconds": []} for arm in arms}
    for repeat in range(repeats):
        g = torch.Generator().manual_seed(repeat)
        batch = {"image": torch.rand(16, 1, 32, 32, generator=g) * 2 - 1, "label": torch.arange(16) % CLASSES}
        runs = {}
        for arm in arms:
            torch.manual_seed(repeat)
            cls = get_method(spec["method"])
            fixed = {"ada_p": ada_p, "ada_target": None} if ARMS[arm].get("d_augment") == "ada" else {}
            method = cls(cls.Config(**spec["model"], **{**ARMS[arm], **fixed}), data)
            opt = _Opt(method.configure_optimizers())
            for _ in range(3):
                method.train_step(batch, opt)
            runs[arm] = (method, opt)
        shares: dict[str, dict[str, list[float]]] = {arm: {"cpu": [], "wall": []} for arm in arms}
        plain_cpu, plain_wall = [], []
        for block in range(blocks):
            order = arms[block % len(arms) :] + arms[: block % len(arms)]
            seconds: dict[str, tuple[float, float]] = {}
            for arm in order:
                method, opt = runs[arm]
                wall, cpu = time.perf_counter(), time.thread_time()
                for i in range(steps):
                    opt.global_step = block * steps + i + 1
                    method.train_step(batch, opt)
                seconds[arm] = ((time.thread_time() - cpu) / steps, (time.perf_counter() - wall) / steps)
            plain_cpu.append(seconds["plain"][0])
            plain_wall.append(seconds["plain"][1])
            for arm in arms:
                shares[arm]["cpu"].append(seconds[arm][0] / seconds["plain"][0] - 1)
                shares[arm]["wall"].append(seconds[arm][1] / seconds["plain"][1] - 1)
        for arm in arms:
            out[arm]["cpu"].append(statistics.median(shares[arm]["cpu"]))
            out[arm]["wall"].append(statistics.median(shares[arm]["wall"]))
            out[arm]["plain_cpu_seconds"].append(statistics.median(plain_cpu))
            out[arm]["plain_wall_seconds"].append(statistics.median(plain_wall))
        logging.info("step cost %s, repeat %d: %s", generator, repeat, {arm: (round(out[arm]["cpu"][-1], 3), round(out[arm]["wall"][-1], 3)) for arm in arms})
    return out


def cost_rows(generators: list[str], arms: list[str], repeats: int = 3, blocks: int = 30, steps: int = 10, ada_p: float = 0.5) -> list[dict[str, Any]]:
    """``step_time/<generator>/<arm>`` rows: augmentation's share of a step (thread CPU time; wall time beside), mean over repeats, worst repeat; goal <= 15%.

    ADA runs at the fixed ``ada_p`` (0.5: the case name says ``ada``; another p, such as
    the one the runs ended with, is named in the case, ``ada@p=0.21``).
    """
    out = []
    arms = ["plain"] + [arm for arm in arms if arm != "plain"]
    for generator in generators:
        cost = step_cost(generator, arms, repeats, blocks, steps, ada_p)
        for arm in arms[1:]:
            is_ada = ARMS[arm].get("d_augment") == "ada"
            label = f"{arm}@p={ada_p:.2f}" if is_ada and ada_p != 0.5 else arm
            cpu, cpu_sd = _stats(cost[arm]["cpu"])
            wall, wall_sd = _stats(cost[arm]["wall"])
            out.append(_row(
                f"step_time/{generator}/{label}", "augmentation_share_of_step", cpu, cpu_sd, "plain_step_seconds", statistics.fmean(cost[arm]["plain_cpu_seconds"]), None,
                "<= 15%", max(cost[arm]["cpu"]) <= 0.15, clock="thread cpu time", worst=max(cost[arm]["cpu"]), per_repeat=cost[arm]["cpu"],
                wall_share=wall, wall_share_std=wall_sd, wall_worst=max(cost[arm]["wall"]), wall_per_repeat=cost[arm]["wall"],
                plain_wall_seconds=statistics.fmean(cost[arm]["plain_wall_seconds"]), ada_p=ada_p if is_ada else None,
                method=f"{repeats} repeats x {blocks} interleaved blocks x {steps} steps per arm, batch 16 (D sees 32 items)",
            ))
    return out


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _row(case: str, metric: str, ours: float, ours_std: float, peer_name: str, peer: float | None, ratio: float | None, goal: str, meets: bool | None, **extra: Any) -> dict[str, Any]:
    return {"benchmark": BENCH, "case": case, "metric": metric, "ours": ours, "ours_std": ours_std, "peer_name": peer_name, "peer": peer, "ratio": ratio, "goal": goal, "meets_goal": meets, **extra}


LOWER_IS_BETTER = ("fid_random", "fid_encoder", "fid_random_large", "fid_encoder_large", "fid_random_train_n", "fid_encoder_train_n", "kid_random", "memorization_rate", "memorization_rate_large", "train_seconds", "fid_random_above_floor", "fid_encoder_above_floor")


FIDS = ("fid_random", "fid_encoder", "fid_random_large", "fid_encoder_large")


def rows(per: dict[tuple[int, str, str], dict[str, list[float]]], seeds: list[int], setting: dict[str, Any], floors: dict[int, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Mean, spread and worst seed of every metric; the goals against the plain arm of the same generator and subject count.

    ``floors[n][fid]`` is the FID of the real training crops themselves against the
    held-out ones on that extractor (what a generator that reproduced its training set
    would score): each FID row also gets ``fid_over_plain`` (arm / plain), and an
    ``<fid>_above_floor`` row: ``FID - floor`` with the generated crops drawn down to the
    training set's size (``<fid>_train_n``, like for like: FID's small-sample bias),
    and its arm / plain ratio, so that the room the extractor leaves is explicit.
    """
    out = []
    floors = floors or {}
    for (n, generator, arm), metrics in sorted(per.items()):
        case = f"{n}_subjects/{generator}/{arm}"
        plain = per.get((n, generator, "plain"))
        for metric, values in metrics.items():
            mean, sd = _stats(values)
            worst = max(values) if metric in LOWER_IS_BETTER else min(values)
            goal, meets, peer, ratio, peer_name, extra = "(reported)", None, None, None, "", {}
            if plain is not None and arm != "plain" and metric in plain:
                peer_name, peer = "plain", statistics.fmean(plain[metric])
                ratio = (peer / mean if mean else None) if metric in LOWER_IS_BETTER else (mean / peer if peer else None)
                if metric in FIDS:
                    extra["fid_over_plain"] = mean / peer if peer else None
                if metric in FIDS and n == 6:
                    goal, meets = "<= 0.6x plain", mean <= 0.6 * peer
                if metric == "recall" and n == 6:
                    goal, meets = "> plain", mean > peer
            if metric in ("memorization_rate", "memorization_rate_large"):
                goal, meets = "<= 1%", mean <= 0.01
            out.append(_row(case, metric, mean, sd, peer_name, peer, ratio, goal, meets, worst=worst, per_seed=values, seeds=seeds, **extra, **setting))
            floor = floors.get(n, {}).get(metric)
            if metric in FIDS and floor is not None and f"{metric}_train_n" in metrics:
                excess = [v - floor for v in metrics[f"{metric}_train_n"]]
                e_mean, e_sd = _stats(excess)
                e_goal, e_meets, e_peer, e_ratio, e_name, e_extra = "(reported)", None, None, None, "", {}
                if plain is not None and arm != "plain":
                    e_name, e_peer = "plain", statistics.fmean(plain[f"{metric}_train_n"]) - floor
                    e_ratio = e_peer / e_mean if e_mean > 0 else None
                    e_extra["fid_over_plain"] = e_mean / e_peer if e_peer > 0 else None
                    if n == 6 and e_peer > 0 and e_mean > 0:
                        e_goal, e_meets = "<= 0.6x plain (FID - floor)", e_mean <= 0.6 * e_peer
                    elif n == 6:  # a GAN scores below the training crops themselves: this extractor's "floor" is none
                        e_goal = "(no floor: a GAN scores below the training crops on this extractor)"
                out.append(_row(case, f"{metric}_above_floor", e_mean, e_sd, e_name, e_peer, e_ratio, e_goal, e_meets, floor=floor, worst=max(excess), per_seed=excess, seeds=seeds, **e_extra, **setting))
    for n, values in sorted(floors.items()):
        for metric, floor in values.items():
            out.append(_row(f"{n}_subjects/real_training_crops", metric, floor, 0.0, "", None, None, "(the floor: the training crops themselves against the held-out ones)", None, **setting))
    return out


def utility_rows(
    util: dict[str, list[float]], seeds: list[int], setting: dict[str, Any], synthetic_only: dict[str, list[float]] | None = None, headroom: list[float] | None = None
) -> list[dict[str, Any]]:
    """Real + synthetic against real only at 12 subjects, per generator and arm; the goal: a gain larger than the seed spread.

    ``synthetic_only``: per generator and arm, the classifier trained on the synthetic crops alone (reported beside real only).
    ``headroom``: the classifier trained on the crops of :data:`HEADROOM_SUBJECTS` real training subjects (reported beside real only).
    """
    out = []
    real, real_sd = _stats(util["real"])
    out.append(_row("12_subjects/utility/real_only", "balanced_accuracy", real, real_sd, "chance", 1 / CLASSES, None, "(reported)", None, per_seed=util["real"], seeds=seeds, **setting))
    if headroom:
        mean, sd = _stats(headroom)
        gains = [v - r for v, r in zip(headroom, util["real"])]
        gain, gain_sd = _stats(gains)
        out.append(_row(f"12_subjects/utility/real_{HEADROOM_SUBJECTS}_subjects", "balanced_accuracy", mean, sd, "real_only", real, mean / real if real else None,
                        "(reported: what new real subjects add, the most a generator could)", None, gain=gain, gain_std=gain_sd, worst_gain=min(gains),
                        per_seed_gain=gains, worst=min(headroom), per_seed=headroom, seeds=seeds, **setting))
    for name, values in (synthetic_only or {}).items():
        mean, sd = _stats(values)
        out.append(_row(f"12_subjects/utility/{name}", "balanced_accuracy_synthetic_only", mean, sd, "real_only", real, mean / real if real else None, "(reported)", None,
                        worst=min(values), per_seed=values, seeds=seeds, **setting))
    for name, values in util.items():
        if name == "real":
            continue
        mean, sd = _stats(values)
        gains = [v - r for v, r in zip(values, util["real"])]
        gain, gain_sd = _stats(gains)
        spread = max(sd, real_sd)
        out.append(
            _row(f"12_subjects/utility/{name}", "balanced_accuracy_real_plus_synthetic", mean, sd, "real_only", real, mean / real if real else None,
                 "gain > seed spread", gain > spread, gain=gain, gain_std=gain_sd, worst_gain=min(gains), per_seed_gain=gains, worst=min(values), per_seed=values, seeds=seeds, **setting)
        )
    return out


def run(subjects: list[int], generators: list[str], arms: list[str], seeds: list[int], steps: int, workdir: Path, grids: Path | None, utility: bool, classifier_steps: int, cost: bool = True, reuse: bool = False,
        classifier_augment: tuple[str, ...] = ("flip",), synthetic_share: float | None = None, headroom: bool = False) -> list[dict[str, Any]]:
    from udl_med.data.preview import save_grid
    from udl_med.evaluation.utility import LabeledItems, utility_tensors
    from udl_med.metrics.extractors import build_extractor

    per: dict[tuple[int, str, str], dict[str, list[float]]] = {}
    util: dict[str, list[float]] = {}
    synthetic_only: dict[str, list[float]] = {}
    more_subjects: list[float] = []
    floors: dict[int, dict[str, float]] = {}
    budget = utility_classifier(classifier_steps, classifier_augment, synthetic_share)
    setting = {"steps": steps, "batch_size": 16, "crop": "32x32 liver-centred, -200..300 HU", "held_out_subjects": 24}
    if tuple(classifier_augment) != ("flip",):
        setting["classifier_augment"] = list(classifier_augment)
    if synthetic_share is not None:
        setting["synthetic_share"] = synthetic_share
    t0 = time.perf_counter()
    for n in subjects:
        train, held = small_data_split(workdir / "crops", n)
        extractors = {"random": build_extractor("random", 2), "encoder": encoder_extractor(train, workdir / f"ae-{n}", steps=300)}
        floors[n] = floor_fids(train, held, extractors)
        logging.info("%d subjects: %d training crops, %d held-out, floor %s (%.0f s)", n, len(train.labels), len(held.labels), floors[n], time.perf_counter() - t0)
        more = small_data_split(workdir / "crops", HEADROOM_SUBJECTS)[0] if headroom and utility and n == 12 else None
        for seed in seeds:
            for generator in generators:
                for arm in arms:
                    method, seconds, report = train_generator(generator, arm, train, held, steps, seed, workdir / f"runs/{n}-{generator}-{arm}-{seed}", reuse)
                    draws = both_draws(method, len(held.labels), seed)
                    (_, fake, labels), (_, large, _) = draws
                    metrics = score(fake, train, held, extractors, seed, large)
                    metrics["train_seconds"] = seconds
                    if f"train/{keys.ADA_P}" in report:  # ADA's p over the last log window: how much augmentation D ended with
                        metrics["ada_p_final"] = float(report[f"train/{keys.ADA_P}"])
                    for key, value in metrics.items():
                        per.setdefault((n, generator, arm), {}).setdefault(key, []).append(value)
                    if grids is not None and seed == seeds[0]:
                        picks = torch.cat([fake[labels == c][:8] for c in range(CLASSES)])
                        save_grid(picks, grids / f"{n}subj_{generator}_{arm}_seed{seed}.png", nrow=8)
                        if arm == arms[0]:
                            real_picks = torch.cat([train.images[torch.as_tensor(train.labels == c)][:8] for c in range(CLASSES)])
                            save_grid(real_picks, grids / f"{n}subj_real.png", nrow=8)
                    if utility and n == 12:  # the draw scored above, then the ten-times draw (what a user drawing freely would add)
                        for suffix, images, classes in draws:
                            synthetic = LabeledItems(images, classes, _synthetic_subjects(len(classes)))
                            first = not suffix and len(util.get("real", [])) <= seeds.index(seed)  # the real arm: once per seed
                            result = utility_tensors(train, synthetic, held, seeds=(seed,), per_class_subjects=None, budget=budget,
                                                     arms=(("real",) if first else ()) + ("real_plus_synthetic", "synthetic"))
                            if first:
                                util.setdefault("real", []).append(result["real/balanced_accuracy"])
                            if first and more is not None:
                                more_subjects.append(utility_tensors(more, synthetic, held, seeds=(seed,), per_class_subjects=None, budget=budget, arms=("real",))["real/balanced_accuracy"])
                            util.setdefault(f"{generator}/{arm}{suffix}", []).append(result["real_plus_synthetic/balanced_accuracy"])
                            synthetic_only.setdefault(f"{generator}/{arm}{suffix}", []).append(result["synthetic/balanced_accuracy"])
                        if more is not None:  # the same generator trained on the new subjects too: do its crops carry what they add?
                            wider, _, _ = train_generator(generator, arm, more, held, steps, seed, workdir / f"runs/{HEADROOM_SUBJECTS}-{generator}-{arm}-{seed}", reuse)
                            images, classes = draw(wider, len(held.labels), seed)
                            result = utility_tensors(train, LabeledItems(images, classes, _synthetic_subjects(len(classes))), held, seeds=(seed,), per_class_subjects=None, budget=budget,
                                                     arms=("real_plus_synthetic", "synthetic"))
                            util.setdefault(f"{generator}/{arm}/trained_on_{HEADROOM_SUBJECTS}_subjects", []).append(result["real_plus_synthetic/balanced_accuracy"])
                            synthetic_only.setdefault(f"{generator}/{arm}/trained_on_{HEADROOM_SUBJECTS}_subjects", []).append(result["synthetic/balanced_accuracy"])
                    logging.info("%d subjects, seed %d, %s/%s: %s (%.0f s)", n, seed, generator, arm, {k: round(v, 4) for k, v in metrics.items()}, time.perf_counter() - t0)
    out = rows(per, seeds, setting, floors)
    if util:
        out += utility_rows(util, seeds, setting, synthetic_only, more_subjects)
    if cost:
        out += cost_rows(generators, [arm for arm in arms if arm not in ARM_TRAIN])  # an EMA arm's step is its base arm's (the engine averages after the step)
        for generator in generators:  # and ADA at the p its runs ended with (p starts at 0 and rises only while D overfits)
            final = [v for (n, g, arm), metrics in per.items() if g == generator and arm == "ada" for v in metrics.get("ada_p_final", [])]
            if final:
                out += cost_rows([generator], ["plain", "ada"], ada_p=round(statistics.fmean(final), 2))
    out.append(_row("total", "wall_seconds", time.perf_counter() - t0, 0.0, "", None, None, "default run < 1800 s on 2 cores", None))
    return out


def emit(rows: list[dict[str, Any]], out: Path | None) -> None:
    """Print ``rows`` as JSON lines, and write them to ``out`` too when given."""
    lines = [json.dumps(row) for row in rows]
    print("\n".join(lines))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--generators", nargs="+", default=["cdcgan"], choices=sorted(GENERATORS))
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=sorted(ARMS))
    parser.add_argument("--seeds", type=int, default=3, help="fresh seeds 0 .. N-1 (reported)")
    parser.add_argument("--seed-list", type=int, nargs="+", default=None, help="these seeds instead (one process per seed, then --reuse to score them together)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--classifier-steps", type=int, default=300)
    parser.add_argument("--classifier-augment", nargs="+", default=["flip"], choices=keys.CLASSIFIER_AUGMENTS,
                        help="the utility classifier's augmentation in every arm (flip translation scaling rotation: the peer of an augmented classifier)")
    parser.add_argument("--synthetic-share", type=float, default=None, help="the share of every real + synthetic batch drawn from the synthetic crops (default: pooled, the rows on file)")
    parser.add_argument("--headroom", action="store_true", help=f"at 12 subjects also the classifier trained on {HEADROOM_SUBJECTS} real subjects (what new subjects add), and on the 12 plus the crops of each generator trained on all {HEADROOM_SUBJECTS}")
    parser.add_argument("--no-utility", action="store_true")
    parser.add_argument("--tune", action="store_true", help="tuning seeds (100+), every arm, 6 subjects: choose settings here, never report these")
    parser.add_argument("--full", action="store_true", help="6, 12 and 24 subjects, both generators, 1500 steps")
    parser.add_argument("--reuse", action="store_true", help="score the models a previous run left in --workdir again instead of training them")
    parser.add_argument("--no-cost", action="store_true", help="leave out the step-time rows (about 2 minutes per arm and generator)")
    parser.add_argument("--cost-only", action="store_true", help="only the step-time rows (augmentation's share of a step), for --generators and --arms")
    parser.add_argument("--floor-study", action="store_true", help="only the real crops' FIDs: other subjects of the population at several sizes, other draws of 6 subjects (floor_study)")
    parser.add_argument("--ada-p", type=float, default=0.5, help="ADA's fixed p in the --cost-only rows (0.5; or the p the runs end with, named in the case)")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out/small_data_work"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--grids", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    subjects, generators, arms, steps = args.subjects, args.generators, args.arms, args.steps
    if args.tune:
        seeds, subjects = [TUNING_SEEDS + i for i in range(args.seeds)], [6]
        arms = list(ARMS) if args.arms == list(DEFAULT_ARMS) else arms  # every arm unless --arms names some
    if args.seed_list:
        seeds = list(args.seed_list)
    if args.full:
        subjects, generators, steps = list(SUBJECT_COUNTS), sorted(GENERATORS), 1500
    if args.floor_study:
        out = floor_study(args.workdir)
    elif args.cost_only:
        out = cost_rows(generators, arms, ada_p=args.ada_p)
    else:
        out = run(subjects, generators, arms, seeds, steps, args.workdir, args.grids, not args.no_utility and not args.tune, args.classifier_steps, cost=not args.no_cost and not args.tune, reuse=args.reuse,
                  classifier_augment=tuple(args.classifier_augment), synthetic_share=args.synthetic_share, headroom=args.headroom)
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
