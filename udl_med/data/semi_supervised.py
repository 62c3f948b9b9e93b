"""Partly labeled data: a labeled item beside every unlabeled item, for semi-supervised training.

**Manifest convention.** A row whose ``label`` is empty is unlabeled; a labeled row
holds an integer class ``0..K-1`` (K = the largest label + 1 over the whole manifest,
every split). ``data.semi_supervised: true`` turns a run's data into
:class:`SemiSupervisedItems`; ``data.labels_per_class: n`` further keeps the labels of
only ``n`` subjects per class of the training split (chosen by ``data.labels_seed``), and
hides the labels of the others. Subjects (the manifest's ``subject``; an image without
one is its own subject) are labeled or unlabeled as a whole, so no subject has both
labeled and unlabeled slices. Refused, with the file and the row: a label that is not a
non-negative integer (the manifest reader), a subject whose images carry different
labels; with the file: a class in ``0..K-1`` without a labeled item in the training
split, no unlabeled item.

**Items.** Training item ``i`` is the ``i``-th unlabeled item (key
``unlabeled_image``) plus one labeled item (``image``, ``label``) drawn with item
``i``'s own random generator (like the MR partner of unpaired data), so an epoch visits
every unlabeled item once, labeled items are drawn with replacement, and the engine's
seeded data order makes every batch, and so resume, exact. Evaluation items are the
labeled items of the evaluation split. In-memory arrays (``data.kind: memory``, the
digits benchmark) use the same class over two :class:`udl_med.data.memory.TensorItems`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Dataset

from udl_med import keys
from udl_med.errors import ConfigError, InputError

if TYPE_CHECKING:
    from udl_med.data.config import DataConfig
    from udl_med.data.io import ImageRecord

log = logging.getLogger(__name__)

__all__ = ["SemiSupervisedItems", "choose_labeled_subjects", "check_labels", "semi_supervised_records", "subject_of"]


class SemiSupervisedItems(Dataset):
    """Item ``i``: unlabeled item ``i`` as ``unlabeled_image`` plus a labeled ``image`` and ``label`` drawn at random.

    Args:
        labeled: a dataset of dict items with ``image`` and ``label``.
        unlabeled: a dataset of dict items with ``image``.
        num_classes: K.

    Both datasets may be udl-med scan datasets (re-seeded through
    :meth:`set_random_state`) or in-memory ones with a ``batch(indices)`` method, in
    which case this dataset has one too: the labeled draw of a batch is then seeded by
    the batch's unlabeled indices, themselves a function of (seed, step).
    """

    def __init__(self, labeled: Dataset, unlabeled: Dataset, num_classes: int) -> None:
        if len(labeled) == 0 or len(unlabeled) == 0:  # type: ignore[arg-type]
            raise ValueError("semi-supervised data needs at least one labeled and one unlabeled item")
        self.labeled = labeled
        self.unlabeled = unlabeled
        self.num_classes = int(num_classes)
        self._seed = 0
        for name in ("spatial_dims", "in_channels", "image_size"):
            if hasattr(unlabeled, name):
                setattr(self, name, getattr(unlabeled, name))
        if hasattr(labeled, "batch") and hasattr(unlabeled, "batch"):
            self.batch = self._batch  # the engine's one-indexing-per-batch path

    def __len__(self) -> int:
        return len(self.unlabeled)  # type: ignore[arg-type]

    def set_random_state(self, seed: int | None = None, state: Any = None) -> SemiSupervisedItems:
        self._seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**32))
        for ds in (self.labeled, self.unlabeled):
            if hasattr(ds, "set_random_state"):
                ds.set_random_state(self._seed)
        return self

    def labeled_index(self, i: int) -> int:
        """The labeled partner of item ``i`` under the current random state."""
        return int(np.random.default_rng([self._seed, int(i)]).integers(len(self.labeled)))  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        unl = self.unlabeled[i]
        lab = self.labeled[self.labeled_index(i)]
        return {keys.UNLABELED_IMAGE: unl[keys.IMAGE], keys.IMAGE: lab[keys.IMAGE], keys.LABEL: lab[keys.LABEL]}

    def _batch(self, indices: list[int]) -> dict[str, Any]:
        rng = np.random.default_rng([self._seed, len(indices), *(int(i) for i in indices)])
        partners = rng.integers(len(self.labeled), size=len(indices)).tolist()  # type: ignore[arg-type]
        unl = self.unlabeled.batch(indices)  # type: ignore[attr-defined]
        lab = self.labeled.batch(partners)  # type: ignore[attr-defined]
        return {keys.UNLABELED_IMAGE: unl[keys.IMAGE], keys.IMAGE: lab[keys.IMAGE], keys.LABEL: lab[keys.LABEL]}


# --- labels of scans -----------------------------------------------------------------


def manifest_file(source: str | Path) -> Path:
    """The CSV file a source's rows come from (for messages)."""
    path = Path(source)
    return path / "manifest.csv" if path.is_dir() and (path / "manifest.csv").is_file() else path


def subject_of(record: ImageRecord) -> str:
    """A record's subject: the manifest's ``subject``, or its own path when it has none."""
    return record.subject or str(record.path)


def check_labels(records: list[ImageRecord], source: str | Path) -> int:
    """Validate the labels of a whole manifest; return K (the largest label + 1).

    Raises:
        InputError: no labeled row; a subject whose rows carry different labels (the
            row named); a class in ``0..K-1`` without any labeled row.
    """
    where = manifest_file(source)
    labels = [r.label for r in records if r.label is not None]
    if not labels:
        raise InputError(where, "semi-supervised data needs labeled rows (integers 0..K-1 in column 'label'); every row is unlabeled")
    k = max(labels) + 1
    seen: dict[str, tuple[int, int]] = {}
    for row, r in enumerate(records, start=2):
        if r.label is None:
            continue
        first = seen.setdefault(subject_of(r), (r.label, row))
        if first[0] != r.label:
            raise InputError(where, f"line {row}: label {r.label} of subject {subject_of(r)!r} differs from its label {first[0]} on line {first[1]}")
    missing = sorted(set(range(k)) - set(labels))
    if missing:
        raise InputError(where, f"class {missing[0]} has no labeled row: labels must be the integers 0..{k - 1} with every class labeled at least once")
    return k


def choose_labeled_subjects(records: list[ImageRecord], labels_per_class: int | None, seed: int) -> set[str]:
    """Subjects whose labels are kept: ``labels_per_class`` per class drawn by ``seed`` (None: all labeled subjects).

    Subjects are sorted by id before the draw, so the choice depends only on the
    manifest and the seed.
    """
    by_class: dict[int, set[str]] = defaultdict(set)
    for r in records:
        if r.label is not None:
            by_class[int(r.label)].add(subject_of(r))
    if labels_per_class is None:
        return set().union(*by_class.values()) if by_class else set()
    rng = np.random.default_rng([int(seed), 7])
    chosen: set[str] = set()
    for cls in sorted(by_class):
        members = sorted(by_class[cls])
        take = min(labels_per_class, len(members))
        chosen.update(members[j] for j in sorted(rng.choice(len(members), size=take, replace=False).tolist()))
    return chosen


def semi_supervised_records(cfg: DataConfig, all_records: list[ImageRecord], split: str | None) -> tuple[list[ImageRecord], list[ImageRecord], int]:
    """Which images of ``split`` a semi-supervised run reads, which of them keep their label, and K.

    For the training split (``split == cfg.split``) the records are every image of the
    split and the labeled ones those of the subjects :func:`choose_labeled_subjects`
    keeps; for an evaluation split both are its labeled images. The scan datasets are
    built from them by :func:`udl_med.data.datasets.build_dataset`.

    Raises:
        InputError: bad labels (see :func:`check_labels`), no image in ``split``, a class
            without a labeled training subject, no unlabeled training image, no labeled
            evaluation image.
        ConfigError: ``pairing`` other than ``none``.
    """
    if cfg.pairing != "none":
        raise ConfigError(cfg.source, "data.pairing", "semi-supervised data has one image per item: set pairing: none")
    where = manifest_file(cfg.source)
    k = check_labels(all_records, cfg.source)
    records = [r for r in all_records if split is None or not any(x.split for x in all_records) or r.split == split]
    if cfg.modality is not None:
        records = [r for r in records if r.modality in (None, cfg.modality)]
    if not records:
        raise InputError(where, f"no images in split {split!r}")
    if split == cfg.split:
        keep = choose_labeled_subjects(records, cfg.labels_per_class, cfg.labels_seed)
        labeled_records = [r for r in records if r.label is not None and subject_of(r) in keep]
        missing = sorted(set(range(k)) - {int(r.label) for r in labeled_records})
        if missing:
            raise InputError(where, f"class {missing[0]} has no labeled image in split {split!r}; every class needs one")
        if not len(labeled_records) < len(records):
            raise InputError(where, f"every image of split {split!r} is labeled: semi-supervised training needs unlabeled images (empty 'label', or data.labels_per_class)")
        return records, labeled_records, k
    labeled_records = [r for r in records if r.label is not None]
    if not labeled_records:
        raise InputError(where, f"no labeled images in evaluation split {split!r}")
    return labeled_records, labeled_records, k

