"""Train/val/test by subject when a manifest or folder has no ``split`` column.

Training on a folder of scans, or a manifest without ``split``, used to train and
evaluate on the same images (with a warning). Now the subjects are shuffled with
``data.split_seed`` (default 0, so every run on the same data gets the same split, and
runs of different seeds are judged on the same held-out subjects) and cut into
``data.split_fractions`` (train, val, test; default 0.8, 0.1, 0.1). All images of one
subject land in one split: slices of a patient in training never score the evaluation.
Without a ``subject`` column each image is its own subject (a folder of DICOM series: one
series each), which is said once in the log. The assignment is logged (the subject
counts per split, and the held-out subjects), and a manifest's own ``split`` column,
when any row has one, is always used as it is.

With one subject there is nothing to hold out: every split is that subject, with a
warning, as before.

The steps that judge a model on one split (``evaluate_translation``, ``probe``,
``select``, ``lesion_slices``, ``utility``) read their images through
:func:`records_of_split`, the same assignment with the training run's fractions and seed
(from the model where it has them), so they score exactly the subjects training held out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from udl_med.data.manifest import DEFAULT_SPLIT_FRACTIONS, DEFAULT_SPLIT_SEED, SPLITS, ImageRecord, list_images
from udl_med.data.semi_supervised import subject_of

log = logging.getLogger(__name__)

_logged: set[tuple] = set()

__all__ = ["DEFAULT_SPLIT_FRACTIONS", "DEFAULT_SPLIT_SEED", "split_counts", "assign_subject_splits", "records_of_split", "subjects_of"]


def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Subjects per split (train, val, test) for ``n`` subjects.

    Each split with a positive fraction gets at least one subject as long as training
    keeps at least one; rounding goes to training.

    >>> split_counts(8, (0.8, 0.1, 0.1)), split_counts(2, (0.8, 0.1, 0.1)), split_counts(20, (0.7, 0.15, 0.15))
    ((6, 1, 1), (1, 1, 0), (14, 3, 3))
    """
    total = sum(fractions)
    _, f_val, f_test = (f / total for f in fractions)
    n_val = max(1, round(f_val * n)) if f_val > 0 and n >= 2 else 0
    n_test = max(1, round(f_test * n)) if f_test > 0 and n - n_val >= 2 else 0
    return n - n_val - n_test, n_val, n_test


def assign_subject_splits(records: list[ImageRecord], fractions: Sequence[float], seed: int, source: str = "") -> list[ImageRecord]:
    """``records`` with a ``split`` by subject, when none of them has one; unchanged otherwise.

    Args:
        records: the images of a manifest, folder or volume.
        fractions: train, val, test fractions of the subjects (``data.split_fractions``).
        seed: the shuffle's seed (``data.split_seed``).
        source: the data source, for the log.
    """
    if not records or any(r.split for r in records):
        return records
    subjects = sorted({subject_of(r) for r in records})
    key = (source, len(records), tuple(fractions), seed)
    first = key not in _logged
    _logged.add(key)
    if len(subjects) < 2:
        if first:
            log.warning("%s has no split column and one subject: it is used for every split (training and evaluation see the same images)", source)
        return records
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    n_train, n_val, _ = split_counts(len(subjects), fractions)
    which = {s: SPLITS[0] if i < n_train else SPLITS[1] if i < n_train + n_val else SPLITS[2] for i, s in enumerate(order)}
    if first:
        if not any(r.subject for r in records):
            log.info("%s has no subject column: each image is its own subject", source)
        held = {name: sorted(s for s in subjects if which[s] == name) for name in SPLITS[1:]}
        log.info(
            "%s has no split column: %d subjects split by subject (data.split_seed %d, fractions %s): train %d, val %d, test %d; val: %s; test: %s",
            source, len(subjects), seed, "/".join(f"{f:g}" for f in fractions), n_train, len(held["val"]), len(held["test"]),
            _names(held["val"]), _names(held["test"]),
        )  # fmt: skip
    return [replace(r, split=which[subject_of(r)]) for r in records]


def _names(subjects: list[str], most: int = 10) -> str:
    shown = ", ".join(subjects[:most])
    return (shown + f", ... ({len(subjects)} in all)" if len(subjects) > most else shown) or "none"


def records_of_split(
    source: str | Path,
    split: str | None,
    fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = DEFAULT_SPLIT_SEED,
) -> list[ImageRecord]:
    """The images of ``source`` in ``split`` (None: every image), split as training splits them.

    A source without a ``split`` column is split by subject with ``fractions`` and
    ``seed`` (pass the training run's ``data.split_fractions`` and ``data.split_seed``), so
    an evaluation of ``test`` sees exactly the subjects training held out. With one
    subject, every split is that subject (as in training). ``split=None`` returns the
    images as they are listed, unsplit.

    Raises:
        InputError: what :func:`~udl_med.data.manifest.list_images` raises.
    """
    records = list_images(source)
    if split is None:
        return records
    records = assign_subject_splits(records, fractions, seed, str(source))
    if not any(r.split for r in records):
        return records
    return [r for r in records if r.split == split]


def subjects_of(records: list[ImageRecord]) -> list[str]:
    """The sorted subjects of ``records`` (an image without a subject is its own)."""
    return sorted({subject_of(r) for r in records})
