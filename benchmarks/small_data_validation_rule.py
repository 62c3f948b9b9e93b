"""Can a user decide on validation subjects whether to add synthetic crops? (issue 22, a diagnostic of the utility arm)

The small-data benchmark's utility arm (``benchmarks/small_data.py``, 12 subjects) shows
whether real + synthetic crops beat real ones on the 24 held-out subjects. A user with one
generator must decide before testing, so here the held-out subjects are split in two
class-balanced halves of 12, each half the other's validation set (two splits per seed),
and two rules decide on validation whether to add the crops:

- ``plus``: add when real + synthetic beats real only on validation;
- ``alone``: add when the crops alone (train on synthetic) match real only on validation.

Rows per generator, arm and draw (122 crops, and ``/large_draw``: 1,220): the test-half gain
over real only of ``always`` adding and of each rule, mean, worst and the number of losing
splits. The classifiers are the benchmark's (same budget and seeds), trained once and scored
on both halves; on the whole held-out set they reproduce the benchmark's utility rows. It
reads the models a ``small_data.py`` run left in its ``--workdir`` (``runs/12-<generator>-<arm>-<seed>``)::

    .venv/bin/python benchmarks/small_data_validation_rule.py            # after the default small_data.py run: its work folder, seeds 0-2
    .venv/bin/python benchmarks/small_data_validation_rule.py --workdir W1 W2 --seed-list 0 1 2 ... --arms plain diffaugment ada_ema
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from small_data import BENCH, CLASSES, _synthetic_subjects, both_draws  # noqa: E402
from synthesis import utility_classifier  # noqa: E402
from small_data_common import small_data_split, subject_classes  # noqa: E402

RULES = ("always", "plus", "alone")
SPLIT_SEED = 7  # the one class-balanced split of the held-out subjects into halves


def halves(held: Any, seed: int = SPLIT_SEED) -> tuple[Any, Any]:
    """The held-out items in two class-balanced halves by subject."""
    classes = subject_classes(held)
    rng = np.random.default_rng(seed)
    first: list[str] = []
    for label in sorted(set(classes.values())):
        subjects = sorted(s for s, c in classes.items() if c == label)
        rng.shuffle(subjects)
        first += subjects[: len(subjects) // 2]
    keep = np.isin(held.subjects, first)
    return held.subset(keep), held.subset(~keep)


def decide(rule: str, val: dict[str, float]) -> bool:
    """Whether ``rule`` adds the crops, from the validation half's balanced accuracies."""
    if rule == "always":
        return True
    if rule == "plus":
        return val["plus"] > val["real"]
    return val["alone"] >= val["real"]


def split_gains(scores: list[dict[str, tuple[float, float]]]) -> dict[str, list[float]]:
    """Per rule, the test-half gain over real only of every split (each half the other's validation); 0 where the rule keeps real only."""
    out: dict[str, list[float]] = {rule: [] for rule in RULES}
    for s in scores:
        for v, t in ((0, 1), (1, 0)):
            val = {k: pair[v] for k, pair in s.items()}
            gain = s["plus"][t] - s["real"][t]
            for rule in RULES:
                out[rule].append(gain if decide(rule, val) else 0.0)
    return out


def rule_rows(name: str, gains: dict[str, list[float]], seeds: list[int]) -> list[dict[str, Any]]:
    always = statistics.fmean(gains["always"])
    return [
        {"benchmark": f"{BENCH}_validation_rule", "case": f"12_subjects/utility/{name}/{rule}", "metric": "test_half_gain", "ours": statistics.fmean(values),
         "peer_name": "always", "peer": always, "ratio": None, "goal": "(reported)", "meets_goal": None, "worst": min(values),
         "losing_splits": int(sum(v < 0 for v in values)), "splits": len(values), "added": int(sum(v != 0 for v in values)), "seeds": seeds}
        for rule, values in gains.items()
    ]


def run(workdirs: list[Path], seeds: list[int], generator: str, arms: list[str], classifier_steps: int = 300, classifier_augment: tuple[str, ...] = ("flip",)) -> list[dict[str, Any]]:
    from udl_med.engine.model_io import load_model
    from udl_med.evaluation.utility import LabeledItems, _concat, score, train_classifier

    budget = utility_classifier(classifier_steps, classifier_augment)
    train, held = small_data_split(workdirs[0] / "crops", 12)
    parts = halves(held)
    scores: dict[str, list[dict[str, tuple[float, float]]]] = {}

    def on_halves(model: Any) -> tuple[float, ...]:
        return tuple(score(model, part)["balanced_accuracy"] for part in parts)

    for seed in seeds:
        found = [w for w in workdirs if (w / f"runs/12-{generator}-{arms[0]}-{seed}/report.json").exists()]
        if not found:
            raise SystemExit(f"no 12-subject {generator}/{arms[0]} run of seed {seed} in {', '.join(map(str, workdirs))}: run benchmarks/small_data.py (--subjects 12) there first")
        real = on_halves(train_classifier(train, CLASSES, budget, seed))
        for arm in arms:
            report = json.loads((found[0] / f"runs/12-{generator}-{arm}-{seed}/report.json").read_text())
            method = load_model(report["model_dir"]).method
            for suffix, images, labels in both_draws(method, len(held.labels), seed):
                synthetic = LabeledItems(images, labels, _synthetic_subjects(len(labels)))
                plus = on_halves(train_classifier(_concat(train, synthetic), CLASSES, budget, seed))
                alone = on_halves(train_classifier(synthetic, CLASSES, budget, seed))
                scores.setdefault(f"{generator}/{arm}{suffix}", []).append({"real": real, "plus": plus, "alone": alone})
        print(f"seed {seed} scored", file=sys.stderr, flush=True)
    return [row for name, s in scores.items() for row in rule_rows(name, split_gains(s), seeds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, nargs="+", default=[Path("benchmarks/out/small_data_work")], help="small_data.py work folders holding the 12-subject runs (default: its default run's)")
    parser.add_argument("--seed-list", type=int, nargs="+", default=[0, 1, 2], help="default: the default run's seeds")
    parser.add_argument("--generator", default="cdcgan")
    parser.add_argument("--arms", nargs="+", default=["plain", "diffaugment", "ada_ema"])
    parser.add_argument("--classifier-steps", type=int, default=300, help="as small_data.py's (its rows at 300 by default)")
    parser.add_argument("--classifier-augment", nargs="+", default=["flip"], choices=["flip", "translation", "scaling", "rotation"], help="as small_data.py's")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = run(args.workdir, args.seed_list, args.generator, args.arms, args.classifier_steps, tuple(args.classifier_augment))
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
