"""The utility goal at 12 subjects read per seed as the mean over several classifier runs (issue 22, session 25).

One classifier run is noisy: on the same 60 crops, real-only balanced accuracy moves by
0.02-0.03 from one classifier seed to the next, so the gain of one run over another has a
spread of about 0.04, as large as the gains a generator could bring. Read on one run per
seed, neither a perfect mask-conditioned renderer nor 12 more real subjects gain in every
seed (session 24). Here each seed's value is the mean over ``--runs`` classifier runs
(:func:`classifier_seeds`; one run is the other benchmarks' reading), for four training
sets scored on the same held-out crops:

- ``real``: the 12 training subjects' crops (the peer);
- ``cdcgan/<arm>/large_draw``: those plus the crops of the benchmark's conditional DCGAN
  (:func:`small_data.train_generator`, :func:`small_data.draw`), trained on the 12, per
  ``--arms`` (ADA + EMA, and with mode seeking: the arm ``configs/cdcgan2d-liver-crops.yaml``
  ships);
- ``mask_conditioned_ceiling/<n>_crops``: those plus the crops a perfect label-map-to-CT
  renderer gives for new lesion placements (:mod:`mask_conditioned_ceiling`);
- ``real_24_subjects``: the crops of 24 real subjects, the 12 and 12 more (what new
  patients add).

The classifier is the small-data benchmark's augmenting one (flips, shifts, scalings,
rotations). Rows as :func:`small_data.utility_rows` writes them (the goal: a gain larger
than the seed spread), each with ``per_seed_runs``, every run's value; ``--merge`` turns
the rows of runs over other seeds into the rows of all their seeds.

    .venv/bin/python benchmarks/small_data_utility_runs.py --seed-list 0 1 2 3 4 --runs 5 --out a.jsonl
    .venv/bin/python benchmarks/small_data_utility_runs.py --merge a.jsonl b.jsonl --out all.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mask_conditioned_ceiling import CLASSIFIER_AUGMENT, SUBJECTS, rendered_crops, training_crops_and_maps  # noqa: E402
from small_data import HEADROOM_SUBJECTS, _synthetic_subjects, draw, emit, train_generator, utility_rows  # noqa: E402
from small_data_common import small_data_split  # noqa: E402
from synthesis import utility_classifier  # noqa: E402

RUN_STRIDE = 1000  # classifier seeds of one seed: seed, seed + 1000, ... (fresh seeds stay below 1000)


def classifier_seeds(seed: int, runs: int) -> tuple[int, ...]:
    """The classifier seeds averaged for ``seed``: ``seed`` itself first, so that one run is the single-run reading."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    return tuple(seed + RUN_STRIDE * j for j in range(runs))


def run(seeds: list[int], runs: int, classifier_steps: int, arms: list[str], gan_crops: int, rendered: int, workdir: Path, steps: int = 1500, reuse: bool = False) -> list[dict[str, Any]]:
    """:func:`small_data.utility_rows` of the four training sets, each seed's value the mean over ``runs`` classifier runs."""
    from udl_med.evaluation.utility import LabeledItems, utility_tensors

    real, maps, held = training_crops_and_maps(workdir / "crops")
    more = small_data_split(workdir / "crops", HEADROOM_SUBJECTS)[0]
    budget = utility_classifier(classifier_steps, CLASSIFIER_AUGMENT)
    ceiling_name = f"mask_conditioned_ceiling/{rendered}_crops"
    per_run: dict[str, list[list[float]]] = {}
    for seed in seeds:
        runs_of = classifier_seeds(seed, runs)

        def scored(items: Any, synthetic: Any, arm: str) -> list[dict[str, float]]:
            return utility_tensors(items, synthetic, held, seeds=runs_of, per_class_subjects=None, budget=budget, arms=(arm,))[f"{arm}/per_seed"]

        ceiling = rendered_crops(real, maps, rendered, seed)  # also the synthetic items of the real-only arms: utility_tensors checks their size
        found = {"real": scored(real, ceiling, "real"), ceiling_name: scored(real, ceiling, "real_plus_synthetic"), "headroom": scored(more, ceiling, "real")}
        for arm in arms:
            method, _, _ = train_generator("cdcgan", arm, real, held, steps, seed, workdir / f"runs/{SUBJECTS}-cdcgan-{arm}-{seed}", reuse)
            images, classes = draw(method, gan_crops, seed)
            found[f"cdcgan/{arm}/large_draw"] = scored(real, LabeledItems(images, classes, _synthetic_subjects(len(classes))), "real_plus_synthetic")
        for name, results in found.items():
            per_run.setdefault(name, []).append([r["balanced_accuracy"] for r in results])
        logging.info("seed %d: %s", seed, {name: [round(v, 4) for v in values[-1]] for name, values in per_run.items()})
    setting = {"classifier_runs": runs, "classifier_steps": classifier_steps, "classifier_augment": list(CLASSIFIER_AUGMENT), "gan_crops": gan_crops, "rendered_crops": rendered}
    return rows_of(per_run, seeds, setting)


SETTING_KEYS = ("classifier_runs", "classifier_steps", "classifier_augment", "gan_crops", "rendered_crops")
_REAL, _HEADROOM = "12_subjects/utility/real_only", f"12_subjects/utility/real_{HEADROOM_SUBJECTS}_subjects"


def rows_of(per_run: dict[str, list[list[float]]], seeds: list[int], setting: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`small_data.utility_rows` of every seed's mean over its runs (``per_run``: per training set, per seed, every run's balanced accuracy), each row with its ``per_seed_runs``."""
    means = {name: [sum(values) / len(values) for values in by_seed] for name, by_seed in per_run.items()}
    util = {name: values for name, values in means.items() if name != "headroom"}
    out = utility_rows(util, seeds, setting, headroom=means.get("headroom"))
    return [{**row, "per_seed_runs": per_run[_name(row["case"])]} for row in out]


def _name(case: str) -> str:
    return {_REAL: "real", _HEADROOM: "headroom"}.get(case, case.removeprefix("12_subjects/utility/"))


def merged(paths: list[Path]) -> list[dict[str, Any]]:
    """The rows of several runs of this script (other seeds, the same setting) as the rows of one run over all their seeds.

    Raises:
        ValueError: the files differ in setting or in training sets.
    """
    per_run: dict[str, list[list[float]]] = {}
    seeds: list[int] = []
    settings = []
    for path in paths:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        settings.append({key: rows[0][key] for key in SETTING_KEYS})
        if settings[-1] != settings[0] or (per_run and {_name(r["case"]) for r in rows} != set(per_run)):
            raise ValueError(f"{path}: another setting or other training sets than {paths[0]}")
        seeds += rows[0]["seeds"]
        for row in rows:
            per_run.setdefault(_name(row["case"]), []).extend(row["per_seed_runs"])
    return rows_of(per_run, seeds, settings[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed-list", type=int, nargs="+", default=[0, 1, 2], help="seeds (generator, rendering, first classifier run); tuning seeds are 100+")
    parser.add_argument("--runs", type=int, default=5, help="classifier runs per seed (1: the single-run reading of the other benchmarks)")
    parser.add_argument("--classifier-steps", type=int, default=1800)
    parser.add_argument("--arms", nargs="+", default=["ada_ema", "ada_ema_mode_seeking"], help="the small-data benchmark's arms of the conditional DCGAN")
    parser.add_argument("--gan-crops", type=int, default=1220, help="GAN crops drawn per seed (the benchmark's ten-times draw)")
    parser.add_argument("--rendered-crops", type=int, default=600)
    parser.add_argument("--reuse", action="store_true", help="load the generators a previous run left in --workdir")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out/small_data_work"))
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="only merge these rows files (other seeds, one setting) into the rows of all their seeds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    if args.merge:
        rows = merged(args.merge)
    else:
        rows = run(args.seed_list, args.runs, args.classifier_steps, args.arms, args.gan_crops, args.rendered_crops, args.workdir, reuse=args.reuse)
    emit([{**row, "benchmark": "small_data_utility_runs"} for row in rows], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
