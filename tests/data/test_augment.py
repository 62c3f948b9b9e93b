"""data.augment: MONAI dictionary transforms on training items, validated on load, seeded, resumable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.engine.test_train import _final_state, _write_config, ae_config, kill_and_resume
from udl_med.cli import main
from udl_med.data.config import DataConfig
from udl_med.data.datasets import build_dataset
from udl_med.engine.config import load_config
from udl_med.engine.train import train
from udl_med.errors import ConfigError

FLIP = {"RandFlipd": {"prob": 1.0, "spatial_axis": 0}}
NOISE = {"RandGaussianNoised": {"prob": 1.0, "std": 0.1}}


def data(manifest: Path, *augment, **extra) -> DataConfig:
    return DataConfig(source=str(manifest), layout="2d", size=(16, 16), modality="CT", augment=augment, **extra)


@pytest.mark.parametrize(
    ("entry", "key", "words"),
    [
        ("RandFlipdd", "data.augment.1", ["unknown MONAI dictionary transform 'RandFlipdd'", "RandFlipd"]),
        ({"RandFlipd": {"probb": 0.5}}, "data.augment.1", ["RandFlipd", "unknown argument 'probb'", "prob"]),
        ({"RandFlip": {"prob": 0.5}}, "data.augment.1", ["'RandFlip'", "RandFlipd"]),
        ({"RandGaussianNoised": {"prob": 0.5, "keys": ["image"]}}, "data.augment.1", ["keys is set by udl-med"]),
    ],
)
def test_a_typo_is_refused_naming_the_file_and_the_key(tmp_path: Path, phantom_manifest: Path, entry, key: str, words: list[str], capsys) -> None:
    config = ae_config(phantom_manifest, tmp_path / "run", "sqlite:///unused.db")
    config["data"]["augment"] = [NOISE, entry]
    path = _write_config(tmp_path, config)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}: ")
    assert all(w in message for w in words), message
    assert main(["train", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and key in lines[0]


def test_training_items_only_after_the_crop(phantom_manifest: Path) -> None:
    flipped, plain = build_dataset(data(phantom_manifest, FLIP), "train"), build_dataset(data(phantom_manifest), "train")
    flipped.set_random_state(5)
    plain.set_random_state(5)
    for i in (0, 3, 7):
        x, ref = flipped[i]["image"], plain[i]["image"]
        assert type(x) is torch.Tensor and x.dtype == torch.float32 and x.shape == (1, 16, 16)
        assert torch.equal(x, ref.flip(1))  # the same crop, then the flip
        assert not torch.equal(x, ref)
    held_out, held_out_plain = build_dataset(data(phantom_manifest, FLIP), "val"), build_dataset(data(phantom_manifest), "val")
    assert held_out.augment is None
    assert torch.equal(held_out[0]["image"], held_out_plain[0]["image"])


def test_draws_follow_the_item_seed(phantom_manifest: Path) -> None:
    noisy, plain = build_dataset(data(phantom_manifest, NOISE), "train"), build_dataset(data(phantom_manifest), "train")

    def noise(seed: int, i: int) -> torch.Tensor:
        return noisy.set_random_state(seed)[i]["image"] - plain.set_random_state(seed)[i]["image"]

    first = noise(1, 2)
    assert 0.0 < float(first.std()) <= 0.1  # MONAI draws the noise's std in [0, 0.1], on top of the same crop
    assert torch.equal(first, noise(1, 2))  # same seed and item: the same draw
    assert not torch.equal(first, noise(1, 3)[: first.shape[0]])  # another item of the epoch
    assert not torch.equal(first, noise(2, 2))  # another seed


def test_paired_images_share_each_draw(phantom_manifest: Path) -> None:
    cfg = DataConfig(source=str(phantom_manifest), size=(16, 16), pairing="paired", augment=({"RandFlipd": {"prob": 0.5, "spatial_axis": 1}},))
    plain_cfg = cfg.model_copy(update={"augment": ()})
    aug, plain = build_dataset(cfg, "train"), build_dataset(plain_cfg, "train")
    outcomes = set()
    for seed in range(8):
        a, p = aug.set_random_state(seed)[0], plain.set_random_state(seed)[0]
        ct_flipped = torch.equal(a["ct"], p["ct"].flip(2)) and not torch.equal(a["ct"], p["ct"])
        mr_flipped = torch.equal(a["mr"], p["mr"].flip(2)) and not torch.equal(a["mr"], p["mr"])
        assert ct_flipped == mr_flipped
        outcomes.add(ct_flipped)
    assert outcomes == {True, False}  # prob 0.5 does both


def test_an_augmented_run_resumes_bit_identically_after_sigkill(phantom_manifest: Path, tmp_path: Path, tracking_uri: str) -> None:
    augment = [
        {"RandFlipd": {"prob": 0.5, "spatial_axis": 0}},
        {"RandGaussianNoised": {"prob": 0.5, "std": 0.05}},
        {"RandAdjustContrastd": {"prob": 0.5, "gamma": [0.8, 1.25]}},
    ]
    steps = 120

    def config(name: str) -> dict:
        c = ae_config(phantom_manifest, tmp_path / name, tracking_uri, steps=steps, checkpoint_every=4)
        c["data"]["augment"] = augment
        return c

    reference = train(config("reference"))
    assert reference["steps"] == steps
    path = _write_config(tmp_path, config("killed"))
    report = kill_and_resume(path, tmp_path / "killed" / "checkpoints" / "last.pt", steps)
    ours, theirs = _final_state(report["model_dir"]), _final_state(reference["model_dir"])
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    saved = yaml.safe_load(path.read_text())
    assert saved["data"]["augment"] == augment
