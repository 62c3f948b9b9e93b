"""Steps that judge one split of a source without a split column judge the subjects training held out.

Training splits such a source by subject (``data.split_fractions``, ``data.split_seed``;
tests/data/test_split.py) and logs the held-out subjects. Here a model is trained with a
non-default seed and fractions, and every step that filters by split
(``evaluate_translation``, ``probe``, ``select``, ``lesion_slices``, ``utility``'s items)
must pick exactly the subjects the training log names for that split, and none of the
training subjects.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest

import udl_med
from udl_med.data.config import DataConfig
from udl_med.data.datasets import source_records
from udl_med.data.manifest import select_images
from udl_med.data.split import records_of_split
from udl_med.evaluation.probe import probe_step
from udl_med.evaluation.translation import evaluate_translation_step
from udl_med.evaluation.utility import labeled_items, lesion_slices

ROOT = Path(__file__).resolve().parents[2]
FAST = ["train.steps=2", "train.batch_size=4", "train.eval_every=100", "train.checkpoint_every=100", "train.eval_items=4", "train.threads=1", "tracking.enabled=false"]
SUBJECTS = {f"sub-{i:03d}" for i in range(8)}


def _without_split(phantom_manifest: Path, out: Path) -> Path:
    """The phantoms' manifest without its split column (absolute image paths)."""
    rows = list(csv.DictReader(phantom_manifest.open()))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, [c for c in rows[0] if c != "split"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (str(phantom_manifest.parent / v) if k == "image" else v) for k, v in row.items() if k != "split"})
    return out


def _train_and_read_split(config: str, source: Path, out: Path, overrides: list[str], caplog: pytest.LogCaptureFixture) -> tuple[dict, dict[str, set[str]]]:
    """Train ``config`` on ``source``; return its report and the split its log announced."""
    with caplog.at_level(logging.INFO, logger="udl_med.data.split"):
        report = udl_med.train(ROOT / "configs" / f"{config}.yaml", overrides=[f"data.source={source}", f"output_dir={out}", *FAST, *overrides])
    line = next(r.getMessage() for r in caplog.records if "has no split column" in r.getMessage() and str(source) in r.getMessage())
    found = re.search(r"val: (.*); test: (.*)$", line)
    assert found, line
    held = {name: set() if text == "none" else set(text.split(", ")) for name, text in zip(("val", "test"), found.groups())}
    split = {"train": SUBJECTS - held["val"] - held["test"], **held}
    assert all(split.values()) or not split["val"], split
    return report, split


def test_evaluate_translation_scores_the_subjects_training_held_out(phantom_manifest: Path, tmp_path: Path, caplog) -> None:
    source = _without_split(phantom_manifest, tmp_path / "data" / "manifest.csv")
    # non-default seed and fractions: only the model knows them (8 subjects: 4 train, 2 val, 2 test)
    report, split = _train_and_read_split("pix2pix-tiny", source, tmp_path / "run", ["data.split_seed=5", "data.split_fractions=[0.5,0.25,0.25]"], caplog)
    assert [len(split[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    result = evaluate_translation_step(report["model_dir"], str(source), split="test")
    assert set(result["subjects"]) == split["test"] and result["n_subjects"] == 2
    assert not set(result["subjects"]) & split["train"]
    assert set(evaluate_translation_step(report["model_dir"], str(source), split="val")["subjects"]) == split["val"]
    # the default split (seed 0, 0.8/0.1/0.1) would have scored other subjects: the model's split is what decides
    default_test = {r.subject for r in records_of_split(source, "test")}
    assert default_test != split["test"]


def test_probe_uses_the_encoders_training_split(phantom_manifest: Path, tmp_path: Path, caplog) -> None:
    source = _without_split(phantom_manifest, tmp_path / "data" / "manifest.csv")
    # 2 train, 0 val, 6 test subjects: enough held-out subjects and classes for a probe
    overrides = ["data.split_seed=7", "data.split_fractions=[0.25,0.0,0.75]", "data.eval_split=null"]
    report, split = _train_and_read_split("ae2d-phantom", source, tmp_path / "run", overrides, caplog)
    assert [len(split[s]) for s in ("train", "val", "test")] == [2, 0, 6]
    encoder = udl_med.export(report["model_dir"], tmp_path / "encoder", fmt="encoder")["out"]
    assert json.loads((Path(encoder) / "encoder.json").read_text())["training_split"] == {"fractions": [0.25, 0.0, 0.75], "seed": 7}
    with caplog.at_level(logging.INFO, logger="udl_med.evaluation.probe"):
        result = probe_step(encoder, str(source), split="test", quick=True, folds=2, finetune_steps=2, batch_size=8)
    assert set(result["subjects"]) == split["test"] and not set(result["subjects"]) & split["train"]
    assert f"probed 6 subject(s) of split test: {', '.join(sorted(split['test']))}" in caplog.text


def test_steps_without_a_model_take_trainings_seed_and_fractions(phantom_manifest: Path, tmp_path: Path) -> None:
    source = _without_split(phantom_manifest, tmp_path / "data" / "manifest.csv")
    fractions, seed = (0.5, 0.25, 0.25), 5
    trained = source_records(DataConfig(source=str(source), size=(16, 16), split_fractions=fractions, split_seed=seed))  # what training uses
    expected = {name: {r.subject for r in trained if r.split == name} for name in ("train", "val", "test")}
    assert [len(expected[s]) for s in ("train", "val", "test")] == [4, 2, 2]

    selected = select_images(source, tmp_path / "test.csv", modality="CT", split="test", split_fractions=fractions, split_seed=seed)
    assert set(selected["subjects"]) == expected["test"] and selected["n"] == 2
    assert {row["split"] for row in csv.DictReader((tmp_path / "test.csv").open())} == {"test"}

    slices = lesion_slices(source, tmp_path / "slices", split="test", split_fractions=fractions, split_seed=seed)
    assert set(slices["subjects"]) == expected["test"]
    items = labeled_items(source, split="val", split_fractions=fractions, split_seed=seed)
    assert set(items.subjects.tolist()) == expected["val"]
    # without a split every image is used, unsplit, as before
    assert len(records_of_split(source, None)) == 16 and all(r.split is None for r in records_of_split(source, None))
