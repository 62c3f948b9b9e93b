"""The small-data benchmarks' shared data: liver-centred crops and the nested training-subject subsets.

Both halves of issue 22's comparison read their items from here, so the GAN arms
(``benchmarks/small_data.py``) and the diffusion peer (``benchmarks/diffusion_peer.py``)
train on the same crops of the same subjects and are judged on the same held-out ones:

- the items are the synthesis benchmark's liver-centred 32 x 32 CT crops in the
  soft-tissue window -200..300 HU (:func:`benchmarks.synthesis.liver_crops`): every slice
  through the liver of 24 training phantoms (seed 0) and of 24 held-out phantoms
  (seed 1, subject ids prefixed ``heldout-``); a lesion subject's slices that the
  lesion does not reach are left out, so an item shows its class (3 classes);
- :func:`training_subjects` picks ``n`` of the 24 training phantoms, class-balanced
  (``n / 3`` per lesion class), nested (the 6 are among the 12, the 12 among the 24),
  drawn once from ``SUBJECT_SEED`` and never from a run's seed, so every arm and every
  seed sees the same subjects.

    from small_data_common import small_data_split
    train, held = small_data_split(workdir, n_subjects=6)   # LabeledItems, LabeledItems
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

SUBJECT_COUNTS = (6, 12, 24)  # training subjects per arm (issue 22)
SUBJECT_SEED = 22  # the one draw of the nested subsets
N_PHANTOMS = 24  # training phantoms written (and held-out phantoms)

_CACHE: dict[str, tuple[Any, Any]] = {}


def all_crops(workdir: str | Path) -> tuple[Any, Any]:
    """``(train, held)`` :class:`~udl_med.evaluation.utility.LabeledItems` of all 24 + 24 phantoms (written once per ``workdir``)."""
    key = str(Path(workdir).resolve())
    if key not in _CACHE:
        from synthesis import liver_crops

        _CACHE[key] = liver_crops(Path(workdir), N_PHANTOMS)
    return _CACHE[key]


def subject_classes(items: Any) -> dict[str, int]:
    """Each subject's class: the largest label among its items (every item of a subject carries the subject's class)."""
    out: dict[str, int] = {}
    for subject, label in zip(items.subjects.tolist(), items.labels.tolist()):
        out[subject] = max(out.get(subject, 0), int(label))
    return out


def training_subjects(items: Any, n: int) -> list[str]:
    """``n`` training subjects, ``n // classes`` per class, nested in ``n`` (a fixed permutation per class, ``SUBJECT_SEED``).

    Raises:
        ValueError: ``n`` not a multiple of the number of classes, or more than a class holds.
    """
    classes = subject_classes(items)
    labels = sorted(set(classes.values()))
    if n % len(labels):
        raise ValueError(f"n={n} must be a multiple of the {len(labels)} classes (class-balanced subsets)")
    rng = np.random.default_rng(SUBJECT_SEED)
    chosen: list[str] = []
    for label in labels:
        pool = sorted(s for s, c in classes.items() if c == label)
        if n // len(labels) > len(pool):
            raise ValueError(f"n={n} needs {n // len(labels)} subjects of class {label}; there are {len(pool)}")
        order = [pool[i] for i in rng.permutation(len(pool))]
        chosen += order[: n // len(labels)]
    return sorted(chosen)


def small_data_split(workdir: str | Path, n_subjects: int) -> tuple[Any, Any]:
    """``(train, held)``: the crops of ``n_subjects`` training phantoms (:func:`training_subjects`) and of all 24 held-out ones."""
    train, held = all_crops(workdir)
    keep = np.isin(train.subjects, training_subjects(train, n_subjects))
    return train.subset(keep), held


__all__ = ["SUBJECT_COUNTS", "SUBJECT_SEED", "all_crops", "small_data_split", "subject_classes", "training_subjects"]
