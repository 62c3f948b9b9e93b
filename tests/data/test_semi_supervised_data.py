"""Partly labeled data: empty labels are unlabeled, labels_per_class keeps whole subjects, bad labels are refused."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from udl_med import keys
from udl_med.data.config import DataConfig
from udl_med.data.datasets import build_dataset
from udl_med.data.memory import TensorItems
from udl_med.data.semi_supervised import SemiSupervisedItems
from udl_med.errors import InputError


def _rows(phantom_dir: Path) -> list[dict[str, str]]:
    with open(phantom_dir / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["image"] = str((phantom_dir / row["image"]).resolve())
    return rows


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "label", "modality", "subject", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cfg(source: Path, **kw) -> DataConfig:
    base = dict(source=str(source), size=(16, 16), modality="CT", semi_supervised=True, split="train", eval_split="val", crop="center")
    return DataConfig(**{**base, **kw})


def _subject_of(path: str) -> str:
    return Path(path).parent.name


def test_labels_per_class_keeps_whole_subjects(phantom_dir: Path) -> None:
    train = build_dataset(_cfg(phantom_dir / "manifest.csv", labels_per_class=1), "train")
    assert isinstance(train, SemiSupervisedItems) and train.num_classes == 3
    labeled_subjects = {_subject_of(str(r.path)) for r in train.labeled.records}
    unlabeled_subjects = {_subject_of(str(r.path)) for r in train.unlabeled.records}
    assert len(labeled_subjects) == 3  # one subject per class
    assert {int(r.label) for r in train.labeled.records} == {0, 1, 2}
    assert not labeled_subjects & unlabeled_subjects  # no subject is both
    train_subjects = {row["subject"] for row in _rows(phantom_dir) if row["split"] == "train"}
    assert labeled_subjects | unlabeled_subjects == train_subjects
    # every item: an unlabeled slice and a labeled one, with its subject's label
    train.set_random_state(5)
    for i in range(0, len(train), 7):
        item = train[i]
        assert set(item) == {keys.UNLABELED_IMAGE, keys.IMAGE, keys.LABEL}
        assert item[keys.IMAGE].shape == item[keys.UNLABELED_IMAGE].shape == (1, 16, 16)
        assert int(item[keys.LABEL]) in (0, 1, 2)
    # the labeled draw is a function of (seed, index): resumable
    train.set_random_state(5)
    first = [train.labeled_index(i) for i in range(len(train))]
    train.set_random_state(5)
    assert [train.labeled_index(i) for i in range(len(train))] == first
    assert len(set(first)) > 1
    # evaluation: the labeled items of the evaluation split
    val = build_dataset(_cfg(phantom_dir / "manifest.csv", labels_per_class=1), "val")
    assert not isinstance(val, SemiSupervisedItems) and len(val) > 0
    assert all(keys.LABEL in val[i] for i in range(len(val)))


def test_labels_seed_and_count_choose_subjects(phantom_dir: Path) -> None:
    choices = set()
    for seed in range(6):
        train = build_dataset(_cfg(phantom_dir / "manifest.csv", labels_per_class=1, labels_seed=seed), "train")
        choices.add(frozenset(_subject_of(str(r.path)) for r in train.labeled.records))
    assert len(choices) > 1  # the seed changes which subjects keep their labels
    same = [build_dataset(_cfg(phantom_dir / "manifest.csv", labels_per_class=1, labels_seed=3), "train") for _ in range(2)]
    assert [str(r.path) for r in same[0].labeled.records] == [str(r.path) for r in same[1].labeled.records]


def test_empty_labels_are_unlabeled(phantom_dir: Path, tmp_path: Path) -> None:
    rows = _rows(phantom_dir)
    hidden = {row["subject"] for row in rows if row["split"] == "train"}
    keep = {}
    for row in rows:  # keep the label of the first training subject of each class
        if row["split"] == "train":
            keep.setdefault(row["label"], row["subject"])
    for row in rows:
        if row["subject"] in hidden and row["subject"] not in keep.values():
            row["label"] = ""
    train = build_dataset(_cfg(_write(tmp_path / "m.csv", rows)), "train")
    assert {_subject_of(str(r.path)) for r in train.labeled.records} == set(keep.values())
    assert train.num_classes == 3


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda rows: rows[2].update(label="abc"), "line 4"),  # not an integer: the reader names the row
        (lambda rows: rows[2].update(label="-1"), "line 4"),
        (lambda rows: rows[3].update(label="2" if rows[2]["label"] != "2" else "0"), "line 5"),  # CT and MR of one subject disagree
        (lambda rows: [r.update(label="2") for r in rows if r["label"] == "1"], "class 1 has no labeled row"),
        (lambda rows: [r.update(label="") for r in rows], "every row is unlabeled"),
    ],
)
def test_bad_labels_are_refused(phantom_dir: Path, tmp_path: Path, edit, message: str) -> None:
    rows = _rows(phantom_dir)
    edit(rows)
    manifest = _write(tmp_path / "bad.csv", rows)
    with pytest.raises(InputError) as err:
        build_dataset(_cfg(manifest), "train")
    assert str(manifest) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_class_without_labeled_training_subject_is_refused(phantom_dir: Path, tmp_path: Path) -> None:
    rows = _rows(phantom_dir)
    for row in rows:  # class 2 keeps labels only outside the training split
        if row["label"] == "2" and row["split"] == "train":
            row["label"] = ""
    manifest = _write(tmp_path / "m.csv", rows)
    if not any(r["label"] == "2" for r in rows):
        pytest.fail("the fixture needs a class-2 subject outside the training split")
    with pytest.raises(InputError, match="class 2 has no labeled image in split 'train'"):
        build_dataset(_cfg(manifest), "train")


def test_memory_items_draw_labeled_partners_by_batch() -> None:
    lab = TensorItems(torch.arange(6, dtype=torch.float32)[:, None].repeat(1, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
    unl = TensorItems(torch.randn(40, 3))
    items = SemiSupervisedItems(lab, unl, 3)
    batch = items.batch(list(range(8)))
    assert batch[keys.UNLABELED_IMAGE].shape == (8, 3) and batch[keys.IMAGE].shape == (8, 3)
    # each labeled image is row j of the labeled set, with its own label
    rows = batch[keys.IMAGE][:, 0].long()
    assert torch.equal(batch[keys.LABEL], lab.labels[rows])
    assert torch.equal(items.batch(list(range(8)))[keys.IMAGE], batch[keys.IMAGE])  # a function of the indices
    assert not torch.equal(items.batch(list(range(8, 16)))[keys.IMAGE], batch[keys.IMAGE])
    assert np.isclose(len(items), 40)
