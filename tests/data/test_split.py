"""Sources without a split column are split by subject, seeded and logged (not trained and evaluated on the same images)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from udl_med.data.config import DataConfig
from udl_med.data.datasets import build_dataset, source_records
from udl_med.data.manifest import ImageRecord
from udl_med.data.split import assign_subject_splits, split_counts


def _without_split(phantom_manifest: Path, tmp_path: Path, subject: bool = True) -> Path:
    """The phantoms' manifest with the split column (and, optionally, the subject column) dropped."""
    rows = list(csv.DictReader(phantom_manifest.open()))
    drop = {"split"} | (set() if subject else {"subject"})
    out = tmp_path / "manifest.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, [c for c in rows[0] if c not in drop])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (str(phantom_manifest.parent / v) if k == "image" else v) for k, v in row.items() if k not in drop})
    return out


def test_split_counts() -> None:
    assert split_counts(8, (0.8, 0.1, 0.1)) == (6, 1, 1)
    assert split_counts(20, (0.7, 0.15, 0.15)) == (14, 3, 3)
    assert split_counts(2, (0.8, 0.1, 0.1)) == (1, 1, 0)
    assert split_counts(1, (0.8, 0.1, 0.1)) == (1, 0, 0)
    assert split_counts(10, (1.0, 0.0, 0.0)) == (10, 0, 0)
    assert split_counts(10, (4, 1, 0)) == (8, 2, 0)


def test_subjects_never_straddle_splits_and_the_seed_decides(tmp_path: Path) -> None:
    records = [ImageRecord(tmp_path / f"s{i}_{m}.nii.gz", modality=m, subject=f"s{i}") for i in range(20) for m in ("CT", "MR")]
    split = assign_subject_splits(records, (0.7, 0.15, 0.15), seed=0)
    by_subject: dict[str, set[str]] = {}
    for r in split:
        by_subject.setdefault(r.subject, set()).add(r.split)
    assert all(len(s) == 1 for s in by_subject.values())
    counts = {name: sum(1 for s in by_subject.values() if s == {name}) for name in ("train", "val", "test")}
    assert counts == {"train": 14, "val": 3, "test": 3}
    assert [r.split for r in assign_subject_splits(records, (0.7, 0.15, 0.15), seed=0)] == [r.split for r in split]
    assert [r.split for r in assign_subject_splits(records, (0.7, 0.15, 0.15), seed=1)] != [r.split for r in split]
    given = [ImageRecord(r.path, subject=r.subject, split="train") for r in records]
    assert assign_subject_splits(given, (0.7, 0.15, 0.15), seed=0) == given  # a split column is used as it is


def test_a_manifest_without_split_trains_and_evaluates_on_different_subjects(phantom_manifest: Path, tmp_path: Path, caplog) -> None:
    source = _without_split(phantom_manifest, tmp_path)
    cfg = DataConfig(source=str(source), size=(16, 16), modality="CT", cache=False, split_seed=3)
    with caplog.at_level(logging.INFO, logger="udl_med.data.split"):
        train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    train_subjects = {v.record.subject for v in train.volumes}
    val_subjects = {v.record.subject for v in val.volumes}
    assert len(train_subjects) == 6 and len(val_subjects) == 1 and not train_subjects & val_subjects
    assert "no split column: 8 subjects split by subject (data.split_seed 3" in caplog.text
    assert f"val: {next(iter(val_subjects))};" in caplog.text
    test = {r.subject for r in source_records(cfg) if r.split == "test"}
    assert len(test) == 1 and not test & (train_subjects | val_subjects)


def test_without_a_subject_column_each_image_is_its_own_subject(phantom_manifest: Path, tmp_path: Path, caplog) -> None:
    source = _without_split(phantom_manifest, tmp_path, subject=False)
    cfg = DataConfig(source=str(source), size=(16, 16), cache=False, split_seed=11)
    with caplog.at_level(logging.INFO, logger="udl_med.data.split"):
        records = source_records(cfg)
    assert [sum(r.split == s for r in records) for s in ("train", "val", "test")] == [12, 2, 2]
    assert "no subject column: each image is its own subject" in caplog.text


def test_one_subject_is_used_for_every_split_with_a_warning(phantom_manifest: Path, tmp_path: Path, caplog) -> None:
    one = phantom_manifest.parent / "sub-000" / "ct.nii.gz"
    cfg = DataConfig(source=str(one), size=(16, 16), cache=False)
    with caplog.at_level(logging.WARNING):
        assert len(build_dataset(cfg, "val")) == len(build_dataset(cfg, "train")) > 0
    assert "one subject: it is used for every split" in caplog.text


def test_bad_fractions_are_refused() -> None:
    with pytest.raises(ValueError, match="split_fractions"):
        DataConfig(source="x", split_fractions=(0.0, 0.5, 0.5))
