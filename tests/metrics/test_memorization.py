"""Memorisation check: planted near-copies are flagged at a calibrated rate; new images are not; images of another kind are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from udl_med.errors import UserError
from udl_med.metrics.memorization import memorization_tensors


def _images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Smooth random 'anatomies' ``(n, 1, size, size)`` in [-1, 1]: blurred noise inside a disc, flat background."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    kernel = torch.ones(1, 1, 5, 5) / 25
    x = F.conv2d(F.conv2d(x, kernel, padding=2), kernel, padding=2)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, size)] * 2, indexing="ij"))
    body = (grid.pow(2).sum(0) < 0.7).float()
    return (body * (0.2 + 0.3 * x / x.std()) - (1 - body)).clamp(-1, 1)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.full_like(x, -1.0)
    out[..., max(0, dy) : x.shape[-2] + min(0, dy), max(0, dx) : x.shape[-1] + min(0, dx)] = x[
        ..., max(0, -dy) : x.shape[-2] - max(0, dy), max(0, -dx) : x.shape[-1] - max(0, dx)
    ]
    return out


def test_planted_near_copies_are_flagged_and_new_images_are_not() -> None:
    train, holdout, new = _images(40, 0), _images(60, 1), _images(30, 2)
    g = torch.Generator().manual_seed(3)
    planted = torch.cat([
        train[:3],  # exact
        train[3:6].flip(-1),  # flipped
        _shift(train[6:9], 3, -2),  # shifted
        (train[9:12] + 0.02 * torch.randn(train[9:12].shape, generator=g)),  # noisy
        1.1 * train[12:15] + 0.05,  # intensity affine
    ])
    result = memorization_tensors(torch.cat([new, planted]), train, holdout, rate=0.05)
    flagged = set(result["flagged_index"])
    assert set(range(30, 45)) <= flagged  # every planted copy
    # new images: about the stated rate, 3/61 (Binomial(30, 3/61) exceeds 4 with probability 0.015)
    assert len(flagged - set(range(30, 45))) <= 4
    n, k = 60, int((60 + 1) * 0.05)
    assert result["stated_rate"] == pytest.approx(k / (n + 1)) and result["n_calibration_subjects"] == n
    low, high = result["stated_rate_interval"]
    assert 0 < low < result["stated_rate"] < high < 0.2
    assert result["rate"] == pytest.approx(len(flagged) / 45) and result["warning"] is None
    nearest = result["nearest"]
    assert nearest.index[30:33].tolist() == [0, 1, 2] and nearest.distance[30:33].max() < 1e-9
    assert nearest.alignments[33].flips == (1,)


def test_per_subject_calibration_and_too_few_subjects() -> None:
    train, holdout, synthetic = _images(20, 0), _images(30, 1), _images(5, 2)
    # 30 images of 10 subjects: 10 scores, and 1% needs 99 subjects
    subjects = [i // 3 for i in range(30)]
    with pytest.raises(UserError, match="99 are needed"):
        memorization_tensors(synthetic, train, holdout, subjects, rate=0.01)
    warned = memorization_tensors(synthetic, train, holdout, subjects, rate=0.01, too_few="warn")
    assert warned["n_calibration_subjects"] == 10 and warned["stated_rate"] == pytest.approx(1 / 11)
    assert "99 are needed" in warned["warning"]
    # one score per subject: the threshold is the smallest subject score, not the smallest image distance
    from udl_med.metrics.nearcopy import near_copy_distance

    d = near_copy_distance(holdout, train).distance.numpy()
    per_subject = np.array([d[i : i + 3].min() for i in range(0, 30, 3)])
    assert warned["threshold"] == pytest.approx(per_subject.min())


def _write_set(folder: Path, images: torch.Tensor, prefix: str, spacing: float = 1.0, modality: str = "CT", synthetic: bool = False) -> None:
    from monai.data import MetaTensor

    from udl_med.data.geometry import Geometry
    from udl_med.data.io import write_image
    from udl_med.inference.synthesize import write_synthetic_manifest

    rows = []
    geometry = Geometry.create((spacing, spacing, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    for i, x in enumerate(images):
        hu = (x[0].unsqueeze(-1) + 1) / 2 * 2000 - 1000  # a one-slice CT volume, default window
        name = f"{prefix}_{i:03d}.nii.gz"
        write_image(MetaTensor(hu[None], meta={**geometry.as_meta(), "modality": modality}), folder / name)
        rows.append({"image": name, "label": 0, "modality": modality, "subject": f"{prefix}{i}", "synthetic": int(synthetic)})
    write_synthetic_manifest(folder / "manifest.csv", rows)


def _sets(tmp_path: Path, synthetic: torch.Tensor) -> list[str]:
    _write_set(tmp_path / "train", _images(40, 0), "train")
    _write_set(tmp_path / "holdout", _images(40, 1), "held")
    _write_set(tmp_path / "synth", synthetic, "syn", synthetic=True)
    return [str(tmp_path / "synth"), str(tmp_path / "train"), "--holdout", str(tmp_path / "holdout")]


def test_memorization_command_flags_copies_names_their_alignment_and_drops_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from udl_med.cli import main
    from udl_med.data.io import list_images

    train = _images(40, 0)
    synthetic = torch.cat([_images(12, 2), train[:2], _shift(train[2:3], -2, 3).flip(-2)])
    args = _sets(tmp_path, synthetic)
    code = main(["memorization", *args, "--rate", "0.05", "--drop", "--figure", str(tmp_path / "fig"), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    flagged = {Path(f["image"]).name: f for f in result["flagged"]}
    assert {"syn_012.nii.gz", "syn_013.nii.gz", "syn_014.nii.gz"} <= set(flagged)
    moved = flagged["syn_014.nii.gz"]
    assert Path(moved["nearest_train"]).name == "train_002.nii.gz" and moved["distance"] < 0.01
    assert moved["alignment"]["flips"] == [0] and "flip" in moved["alignment"]["text"]
    assert result["stated_rate"] == pytest.approx(2 / 41) and result["n_calibration_subjects"] == 40
    assert len(result["stated_rate_interval"]) == 2 and result["requested_rate"] == 0.05
    kept = {r.path.name for r in list_images(tmp_path / "synth" / "manifest.csv")}
    assert not kept & {"syn_012.nii.gz", "syn_013.nii.gz", "syn_014.nii.gz"} and len(kept) >= 10
    assert (tmp_path / "fig" / "memorization.png").is_file()


def test_images_of_another_size_spacing_or_modality_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from udl_med.cli import main

    args = _sets(tmp_path, _images(6, 2))
    import csv
    import shutil

    from udl_med.inference.synthesize import write_synthetic_manifest

    _write_set(tmp_path / "small", _images(1, 5, size=24), "odd")  # a 24x24 slice among 32x32 ones
    shutil.copy(tmp_path / "small" / "odd_000.nii.gz", tmp_path / "synth" / "odd_000.nii.gz")
    with (tmp_path / "synth" / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    write_synthetic_manifest(tmp_path / "synth" / "manifest.csv", rows + [{**rows[0], "image": "odd_000.nii.gz", "subject": "odd0"}])
    code = main(["memorization", *args, "--rate", "0.05", "--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "odd_000.nii.gz" in err and "size 24x24 differs" in err and "--resample" in err
    assert main(["memorization", *args, "--rate", "0.05", "--resample", "--json"]) == 0
    capsys.readouterr()

    _write_set(tmp_path / "coarse", _images(6, 2), "coarse", spacing=2.0)
    code = main(["memorization", str(tmp_path / "coarse"), *args[1:], "--rate", "0.05"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "coarse_000.nii.gz" in err and "spacing" in err

    _write_set(tmp_path / "mr", _images(6, 2), "mr", modality="MR")
    code = main(["memorization", str(tmp_path / "mr"), *args[1:], "--rate", "0.05", "--resample"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "mr_000.nii.gz" in err and "modality MR differs" in err

    code = main(["memorization", args[0], args[1], "--holdout", args[1], "--rate", "0.05"])
    assert code == 2 and "also a training subject" in capsys.readouterr().err

    code = main(["memorization", *args, "--resample", "--too-few", "refuse"])  # 40 subjects cannot state 1%
    assert code == 2 and "99 are needed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"synthetic": torch.zeros(2, 4, 4)}, "synthetic images must be a non-empty (N, 1, *spatial) batch, got (2, 4, 4)"),
        ({"train": torch.zeros(0, 1, 4, 4)}, "train images must be a non-empty (N, 1, *spatial) batch, got (0, 1, 4, 4)"),
        ({"holdout": torch.zeros(2, 2, 4, 4)}, "holdout images must be a non-empty (N, 1, *spatial) batch, got (2, 2, 4, 4)"),
        ({"holdout": torch.zeros(2, 1, 4, 5)}, "image sizes differ: synthetic (4, 4), train (4, 4), holdout (4, 5)"),
        ({"too_few": "ignore"}, "too_few must be 'refuse' or 'warn', got 'ignore'"),
    ],
)
def test_memorization_tensors_refuses_bad_batches_with_one_message(change: dict, message: str) -> None:
    args = {"synthetic": torch.zeros(2, 1, 4, 4), "train": torch.zeros(3, 1, 4, 4), "holdout": torch.zeros(2, 1, 4, 4), **change}
    with pytest.raises(UserError) as caught:
        memorization_tensors(**args)
    assert str(caught.value) == message
