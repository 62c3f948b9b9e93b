"""The diffusion peer: udl-med's conditional GANs against a class-conditional DDPM on the same small data.

What a 2026 user would otherwise pick for synthetic scans is a diffusion model. This
benchmark trains MONAI's own one (``monai.networks.nets.DiffusionModelUNet``, epsilon
prediction with ``monai.networks.schedulers.DDPMScheduler``, sampled with
``DDIMScheduler``; Ho et al. 2020, Song et al. 2021) next to udl-med's conditional DCGAN
and LAPGAN, on the SAME items, the SAME training subjects and the SAME wall time, and
judges all of them the same way. The diffusion model is benchmark-only: udl_med does not
import it (MONAI's attention blocks need the optional ``einops``; ``pip install einops``).

- **Items**: liver-centred 32 x 32 CT crops in the soft-tissue window -200..300 HU of the
  synthesis benchmark's utility case (:func:`synthesis.liver_crops`: every slice through
  the liver, lesion subjects only where the lesion is; 24 training phantoms of seed 0, 8
  per class, and 24 held-out phantoms of seed 1, subjects ``heldout-*``).
- **Training subjects**: 6, 12 and 24 of the training phantoms, the same number per class
  (2, 4, 8), nested (the 6 are among the 12, the 12 among the 24) and drawn once
  (``small_data_common.training_subjects``, imported), so every seed, every
  generator and the GAN arms of ``benchmarks/small_data.py`` see the same subjects.
- **Budget**: per (subjects, seed) the conditional DCGAN trains ``--gan-steps`` (1500, the
  synthesis benchmark's length) at batch 16 and its time is measured; the diffusion
  model then trains at batch 16 for exactly that long (``--budget-s`` fixes it instead,
  ``--budget-multiplier`` scales it). Everything runs on one thread, and times are this
  process's CPU time (``time.process_time``), which on one thread is the wall time of an
  idle machine: on the shared machine other jobs would otherwise shift the budget between
  the two sides. LAPGAN (``--gans``) trains the same steps; its own time is reported.
- **Diffusion settings** (chosen on tuning seed 100 at 12 subjects, never reported; see
  :data:`DIFFUSION`): UNet channels (16, 32, 32), one residual block per level, no
  attention in the down/up path (the mid block has MONAI's one attention layer), class
  embeddings for the 3 lesion classes, 1000 linear-beta training steps, Adam 1e-3, an EMA of
  the weights (decay 0.99) for sampling; DDIM with ``--ddim-steps`` (50) steps, eta 0.

Per generator, subjects and seed: ``--per-class`` samples per class (120; 360) against the
held-out crops:

- ``fid_random``: FID with udl-med's seeded random extractor;
- ``precision``/``recall`` (k = 3, Kynkäänniemi et al. 2019) and ``density``/``coverage``
  (k = 5, Naeem et al. 2020) on the same features (``prdc``, the authors' package);
- ``memorization``: :func:`udl_med.metrics.memorization.memorization_tensors` against the
  generator's own training crops, the near-copy check calibrated per held-out subject (24
  subjects: it states 1/25, with a warning), the flagged fraction; the rows on file before
  session 14 came from the earlier check (random-extractor features, held-out 1% quantile);
- ``utility`` (at ``--utility-subjects``, default 12): the synthesis benchmark's arm, the
  same MONAI classifier trained on the real training crops vs real + synthetic, scored on
  the held-out crops (balanced accuracy);
- ``samples_per_s``: samples per CPU second of each generator measured side by side in this
  process on the same thread (GAN: one forward pass per sample; DDIM: ``ddim_steps``
  UNet evaluations).

Rows (DESIGN.md): ``benchmark, case, metric, ours, peer_name, peer, ratio, goal,
meets_goal`` with ``ours_std``, ``peer_std``, ``per_seed`` and ``worst``. ``ours`` is the
best udl-med GAN (lower mean FID) and the peer the diffusion model; ``ratio`` is higher-
is-better for us. Goals (issue 22): GAN FID within 1.2x of the diffusion model's or better
(``ratio = diffusion / GAN >= 1/1.2``) and GAN throughput at least 50x the diffusion
model's.

    PYTHONPATH=/path/with/einops .venv/bin/python benchmarks/diffusion_peer.py [--subjects 6 12 24] [--seeds 3] [--first-seed 0]
        [--gans cdcgan lapgan] [--gan-set model.d_augment=ada] [--budget-s S] [--budget-multiplier 1] [--out rows.jsonl] [--grids DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from udl_med import keys

sys.path.insert(0, str(Path(__file__).resolve().parent))
from small_data_common import training_subjects  # noqa: E402  (issue 22's one rule for the nested, class-balanced subjects)
from synthesis import UTILITY_GENERATORS, liver_crops, utility_classifier  # noqa: E402  (the synthesis benchmark's crops and generators)

BENCH = "diffusion_peer"
NUM_CLASSES = 3
BATCH = 16


@dataclass(frozen=True)
class DiffusionSettings:
    """The diffusion peer's settings (chosen on tuning seed 100, 12 subjects)."""

    channels: tuple[int, ...] = (16, 32, 32)
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    train_timesteps: int = 1000
    schedule: str = "linear_beta"
    lr: float = 1e-3
    ema_decay: float = 0.99
    ddim_steps: int = 50


DIFFUSION = DiffusionSettings()


# --- data -----------------------------------------------------------------------------------


def subject_subset(items: Any, n_subjects: int) -> Any:
    """The items of the :func:`training_subjects` ``n_subjects``."""
    return items.subset(np.isin(items.subjects, training_subjects(items, n_subjects)))


# --- the diffusion model --------------------------------------------------------------------


def build_unet(settings: DiffusionSettings) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    levels = len(settings.channels)
    return DiffusionModelUNet(
        spatial_dims=2, in_channels=1, out_channels=1, channels=settings.channels, attention_levels=(False,) * levels,
        num_res_blocks=settings.num_res_blocks, norm_num_groups=settings.norm_num_groups, num_head_channels=settings.channels[-1],
        num_class_embeds=NUM_CLASSES,
    )


def train_diffusion(images: Tensor, labels: np.ndarray, seconds: float, seed: int, settings: DiffusionSettings = DIFFUSION) -> tuple[nn.Module, int, float]:
    """Train the class-conditional DDPM (epsilon loss) for ``seconds`` of wall time; return its EMA copy, steps, wall."""
    from monai.networks.schedulers import DDPMScheduler

    torch.manual_seed(seed)
    net = build_unet(settings)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    scheduler = DDPMScheduler(num_train_timesteps=settings.train_timesteps, schedule=settings.schedule)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    g = torch.Generator().manual_seed(seed)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    steps, start = 0, time.process_time()
    net.train()
    while time.process_time() - start < seconds:
        idx = torch.randint(len(images), (BATCH,), generator=g)
        x0, y = images[idx], y_all[idx]  # (B, 1, 32, 32) in [-1, 1], (B,)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, settings.train_timesteps, (BATCH,), generator=g)
        xt = scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)
        loss = nn.functional.mse_loss(net(xt, t, class_labels=y), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        decay = min(settings.ema_decay, (1 + steps) / (10 + steps))  # warm-up: early weights do not dominate
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
    return ema, steps, time.process_time() - start


@torch.no_grad()
def ddim_sample(net: nn.Module, counts: list[int], seed: int, settings: DiffusionSettings = DIFFUSION, chunk: int = 128) -> Tensor:
    """DDIM (eta 0) samples, ``counts[c]`` of class ``c``, in [-1, 1]: ``(sum(counts), 1, 32, 32)``."""
    from monai.networks.schedulers import DDIMScheduler

    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
    out = []
    for y in labels.split(chunk):
        scheduler = DDIMScheduler(num_train_timesteps=settings.train_timesteps, schedule=settings.schedule, clip_sample=True)
        scheduler.set_timesteps(settings.ddim_steps)
        x = torch.randn((len(y), 1, 32, 32), generator=g)
        for t in scheduler.timesteps:
            eps = net(x, torch.full((len(y),), int(t), dtype=torch.long), class_labels=y)
            x, _ = scheduler.step(eps, int(t), x)
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


# --- the GANs --------------------------------------------------------------------------------


def train_gan(name: str, real: Any, held: Any, steps: int, seed: int, out: Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Any, float]:
    """Train a udl-med conditional GAN of the synthesis benchmark's utility case; return its method and wall time.

    ``overrides``: ``key.path=value`` settings on top of its config (``--gan-set
    model.d_augment=ada``: the small-data benchmark's best arm).
    """
    from udl_med.data.memory import TensorItems
    from udl_med.engine.config import apply_overrides
    from udl_med.engine.model_io import load_model
    from udl_med.engine.train import train

    spec = UTILITY_GENERATORS[name]
    config = {
        "method": spec["method"], "seed": seed, "data": {"kind": "memory"}, "model": dict(spec["model"]),
        "train": {"steps": steps, "batch_size": BATCH, "log_every": 100, "eval_every": steps, "checkpoint_every": steps, "threads": 1, "device": "cpu"},
        "tracking": {"enabled": False}, "output_dir": str(out),
    }
    config = apply_overrides(config, overrides, "--gan-set")
    start = time.process_time()
    report = train(config, datasets=(TensorItems(real.images, real.labels), TensorItems(held.images, held.labels)))
    wall = time.process_time() - start
    return load_model(report["model_dir"]).method, wall


@torch.no_grad()
def gan_sample(method: Any, counts: list[int], seed: int) -> Tensor:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.cat([method.sample(n, g, label=c) for c, n in enumerate(counts)])


def timed(fn: Any, min_seconds: float = 1.0) -> tuple[Any, float]:
    """Run ``fn`` until ``min_seconds`` of CPU time have passed (at least once); its first result and the mean CPU time per call."""
    calls, start = 0, time.process_time()
    result = None
    while True:
        value = fn()
        result = value if result is None else result
        calls += 1
        if time.process_time() - start >= min_seconds:
            return result, (time.process_time() - start) / calls


# --- judging ------------------------------------------------------------------------------------


def prdc_scores(real_features: np.ndarray, fake_features: np.ndarray) -> dict[str, float]:
    """Precision/recall at k = 3, density/coverage at k = 5 (the research note's settings), with the ``prdc`` package."""
    import contextlib
    import io

    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints its counts; stdout carries only the JSON rows
        pr = compute_prdc(real_features, fake_features, nearest_k=3)
        dc = compute_prdc(real_features, fake_features, nearest_k=5)
    return {"precision": float(pr["precision"]), "recall": float(pr["recall"]), "density": float(dc["density"]), "coverage": float(dc["coverage"])}


def judge(fake: Tensor, counts: list[int], real: Any, held: Any, extractor: Any, held_features: np.ndarray, seed: int, utility: dict[str, Any] | None) -> dict[str, float]:
    from udl_med.evaluation.utility import LabeledItems, utility_tensors
    from udl_med.metrics.compare import compare_tensors
    from udl_med.metrics.memorization import memorization_tensors

    out = {"fid_random": compare_tensors(held.images, fake, extractor, bootstrap=0, seed=seed)["fid"]}
    fake_features = torch.cat([extractor(b) for b in fake.split(64)]).double().numpy()
    out.update(prdc_scores(held_features, fake_features))
    # the near-copy check, calibrated per held-out subject (24: the smallest rate they can state, with a warning)
    out["memorization"] = memorization_tensors(fake, real.images, held.images, held.subjects, too_few="warn")["rate"]
    if utility is not None:
        labels = np.repeat(np.arange(len(counts)), counts)
        synthetic = LabeledItems(fake, labels, np.asarray([f"syn{i}" for i in range(len(labels))]))
        arms = ("real_plus_synthetic", "synthetic") if "real" in utility else ("real", "real_plus_synthetic", "synthetic")
        result = utility_tensors(real, synthetic, held, seeds=(seed,), per_class_subjects=None, budget=utility["budget"], arms=arms)
        utility.setdefault("real", result.get("real/balanced_accuracy"))
        out["utility_real"] = utility["real"]
        out["utility_real_plus_synthetic"] = result["real_plus_synthetic/balanced_accuracy"]
        out["utility_synthetic"] = result["synthetic/balanced_accuracy"]
    return out


# --- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path, grids: Path | None) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Per subject count, generator and metric: the per-seed values."""
    from udl_med.data.preview import save_grid
    from udl_med.metrics.extractors import build_extractor

    t0 = time.perf_counter()
    train_all, held = liver_crops(workdir)
    extractor = build_extractor("random", 2)
    held_features = torch.cat([extractor(b) for b in held.images.split(64)]).double().numpy()
    counts = [args.per_class] * NUM_CLASSES
    settings = DiffusionSettings(ddim_steps=args.ddim_steps)
    classifier = utility_classifier(args.classifier_steps, args.classifier_augment)
    per: dict[str, dict[str, dict[str, list[float]]]] = {}
    logging.info("crops: %d training (24 subjects), %d held-out (%.0f s)", len(train_all.labels), len(held.labels), time.perf_counter() - t0)
    for n_subjects in args.subjects:
        real = subject_subset(train_all, n_subjects)
        cell = per.setdefault(str(n_subjects), {})
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            start = time.perf_counter()
            utility = {"budget": classifier} if n_subjects in args.utility_subjects else None

            def record(name: str, values: dict[str, float]) -> None:
                for k, v in values.items():
                    cell.setdefault(name, {}).setdefault(k, []).append(float(v))

            budget = args.budget_s
            for name in args.gans:
                method, wall = train_gan(name, real, held, args.gan_steps, seed, workdir / f"{name}-{n_subjects}-{seed}", args.gan_set)
                if name == "cdcgan" and args.budget_s is None:
                    budget = wall * args.budget_multiplier
                fake, per_call = timed(lambda m=method: gan_sample(m, counts, seed))
                if grids is not None and seed == args.first_seed:
                    save_grid(torch.cat([fake[c * args.per_class : c * args.per_class + 8] for c in range(NUM_CLASSES)]), grids / f"{name}_{n_subjects}subjects.png", nrow=8)
                record(name, {"train_wall_s": wall, "samples_per_s": len(fake) / per_call, **judge(fake, counts, real, held, extractor, held_features, seed, utility)})
            if budget is None:
                raise SystemExit("--budget-s is needed when cdcgan is not among --gans (its wall time is the default budget)")
            net, steps, wall = train_diffusion(real.images, real.labels, budget, seed, settings)
            begin = time.process_time()
            fake = ddim_sample(net, counts, 1000 + seed, settings)
            sample_s = time.process_time() - begin
            if grids is not None and seed == args.first_seed:
                save_grid(torch.cat([fake[c * args.per_class : c * args.per_class + 8] for c in range(NUM_CLASSES)]), grids / f"diffusion_{n_subjects}subjects.png", nrow=8)
            record("diffusion", {"train_wall_s": wall, "train_steps": steps, "samples_per_s": len(fake) / sample_s, **judge(fake, counts, real, held, extractor, held_features, seed, utility)})
            logging.info(
                "%d subjects, seed %d (%.0f s): %s", n_subjects, seed, time.perf_counter() - start,
                {g: {k: round(v[-1], 4) for k, v in m.items()} for g, m in cell.items()},
            )
            if args.raw:  # every finished cell at once: a long run stopped early still has its rows (--rows-from)
                with open(args.raw, "a") as f:
                    f.write(json.dumps({"subjects": n_subjects, "seed": seed, "values": {g: {k: v[-1] for k, v in m.items()} for g, m in cell.items()}}) + "\n")
    logging.info("total %.0f s", time.perf_counter() - t0)
    return per


def read_raw(path: Path) -> tuple[dict[str, dict[str, dict[str, list[float]]]], list[int]]:
    """The per-seed values of a ``--raw`` file, as :func:`run` returns them, and the seeds."""
    per: dict[str, dict[str, dict[str, list[float]]]] = {}
    seeds: set[int] = set()
    for line in path.read_text().splitlines():
        cell = json.loads(line)
        seeds.add(cell["seed"])
        for g, values in cell["values"].items():
            for k, v in values.items():
                per.setdefault(str(cell["subjects"]), {}).setdefault(g, {}).setdefault(k, []).append(v)
    return per, sorted(seeds)


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _row(case: str, metric: str, ours: float, ours_std: float, peer_name: str, peer: float | None, peer_std: float | None, ratio: float | None, goal: str, meets: bool | None, **extra: Any) -> dict[str, Any]:
    return {
        "benchmark": BENCH, "case": case, "metric": metric, "ours": ours, "ours_std": ours_std, "peer_name": peer_name, "peer": peer,
        "peer_std": peer_std, "ratio": ratio, "goal": goal, "meets_goal": meets, **extra,
    }


HIGHER_IS_BETTER = {"precision": True, "recall": True, "density": True, "coverage": True, "fid_random": False, "memorization": False, "utility_real_plus_synthetic": True, "utility_synthetic": True}


def rows(per: dict[str, dict[str, dict[str, list[float]]]], seeds: list[int], setting: dict[str, Any]) -> list[dict[str, Any]]:
    """Per subject count: every generator's metrics against the diffusion model's, the FID and throughput goals."""
    out = []
    for n_subjects, cell in per.items():
        diff = cell["diffusion"]
        gans = [g for g in cell if g != "diffusion"]
        best = min(gans, key=lambda g: _stats(cell[g]["fid_random"])[0])
        case = f"liver_crops_32/{n_subjects}_subjects"
        common = {"seeds": seeds, "diffusion_train_steps": diff["train_steps"], "diffusion_train_wall_s": diff["train_wall_s"], **setting}
        for g in gans:
            for metric, higher in HIGHER_IS_BETTER.items():
                if metric not in cell[g]:
                    continue
                m, sd = _stats(cell[g][metric])
                p, psd = _stats(diff[metric])
                worst = min(cell[g][metric]) if higher else max(cell[g][metric])
                if metric == "fid_random":
                    ratio, goal = (p / m if m else None), ("GAN FID <= 1.2x diffusion's (ratio >= 0.833)" if g == best else "(reported)")
                    meets = (m <= 1.2 * p) if g == best else None
                elif metric == "memorization":
                    ratio, goal, meets = None, "<= 1% (both)", (m <= 0.01 and p <= 0.01)
                else:
                    ratio, goal, meets = ((m / p) if higher and p else None), "(reported)", None
                extra = {"per_seed": cell[g][metric], "worst": worst, "peer_per_seed": diff[metric], "peer_worst": min(diff[metric]) if higher else max(diff[metric])}
                if metric == "utility_real_plus_synthetic":
                    r, rsd = _stats(cell[g]["utility_real"])
                    extra.update(real_only=r, real_only_std=rsd, real_only_per_seed=cell[g]["utility_real"],
                                 gain_per_seed=[a - b for a, b in zip(cell[g][metric], cell[g]["utility_real"])],
                                 peer_gain_per_seed=[a - b for a, b in zip(diff[metric], cell[g]["utility_real"])])
                out.append(_row(f"{case}/{g}", metric, m, sd, "diffusion_ddim", p, psd, ratio, goal, meets, **extra, **(common if metric == "fid_random" else {})))
            gs, gsd = _stats(cell[g]["samples_per_s"])
            ds, dsd = _stats(diff["samples_per_s"])
            out.append(_row(f"{case}/{g}", "samples_per_s", gs, gsd, "diffusion_ddim", ds, dsd, gs / ds, ">= 50x the diffusion model's throughput", gs / ds >= 50,
                            per_seed=cell[g]["samples_per_s"], worst=min(cell[g]["samples_per_s"]), peer_per_seed=diff["samples_per_s"]))
            tw, twsd = _stats(cell[g]["train_wall_s"])
            out.append(_row(f"{case}/{g}", "train_wall_s", tw, twsd, "diffusion_ddim", _stats(diff["train_wall_s"])[0], None, None, "(budget: the diffusion model trains as long as cdcgan)", None, per_seed=cell[g]["train_wall_s"]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[6, 12, 24], choices=[6, 9, 12, 15, 18, 21, 24], help="training subjects (a multiple of 3)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first..first+seeds-1 (100 is the tuning seed: never reported)")
    parser.add_argument("--gans", nargs="+", default=["cdcgan", "lapgan"], choices=sorted(UTILITY_GENERATORS))
    parser.add_argument("--gan-steps", type=int, default=1500, help="GAN training steps (the synthesis benchmark's utility case)")
    parser.add_argument("--gan-set", nargs="+", default=[], metavar="KEY=VALUE", help="settings on every GAN's config, e.g. model.d_augment=ada (the small-data benchmark's best arm)")
    parser.add_argument("--budget-s", type=float, default=None, help="diffusion training seconds (default: the measured cdcgan wall time of the same cell)")
    parser.add_argument("--budget-multiplier", type=float, default=1.0, help="give the diffusion model this many times the cdcgan's wall time (a longer-budget check)")
    parser.add_argument("--ddim-steps", type=int, default=DIFFUSION.ddim_steps)
    parser.add_argument("--per-class", type=int, default=120, help="samples per class and generator")
    parser.add_argument("--classifier-steps", type=int, default=200)
    parser.add_argument("--classifier-augment", nargs="+", default=["flip"], choices=keys.CLASSIFIER_AUGMENTS,
                        help="the utility classifier's augmentation in every arm (flip: the rows on file; flip translation scaling rotation: the stronger peer)")
    parser.add_argument("--utility-subjects", type=int, nargs="*", default=[12], help="subject counts with the utility arm")
    parser.add_argument("--out", default=None, help="also write the rows to this JSON-lines file")
    parser.add_argument("--grids", default=None, help="sample grids (first seed) per generator and subject count")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--raw", default=None, help="append every finished (subjects, seed) cell's values to this JSON-lines file")
    parser.add_argument("--rows-from", default=None, help="print the rows of a --raw file (complete cells only) and exit")
    args = parser.parse_args(argv)
    setting = {"gan_steps": args.gan_steps, "gan_set": args.gan_set, "budget_s": args.budget_s, "budget_multiplier": args.budget_multiplier, "ddim_steps": args.ddim_steps, "per_class": args.per_class}
    if tuple(args.classifier_augment) != ("flip",):
        setting["classifier_augment"] = list(args.classifier_augment)
    if args.rows_from:
        per, seeds = read_raw(Path(args.rows_from))
        print("\n".join(json.dumps(r) for r in rows(per, seeds, setting)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for noisy in ("udl_med.engine", "udl_med.data", "udl_med.evaluation.utility", "udl_med.inference", "udl_med.metrics"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        import einops  # noqa: F401  (MONAI's attention blocks need it)
    except ImportError:
        print("benchmarks/diffusion_peer.py: MONAI's DiffusionModelUNet needs the optional package einops: pip install einops", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    grids = Path(args.grids) if args.grids else None
    if grids is not None:
        grids.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        per = run(args, Path(tmp), grids)
    lines = [json.dumps(r) for r in rows(per, list(range(args.first_seed, args.first_seed + args.seeds)), setting)]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
