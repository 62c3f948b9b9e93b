"""A NIfTI from elsewhere says no modality: ``data.modality`` says what it is (before: "no CT images in split")."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from udl_med import keys
from udl_med.data.config import DataConfig
from udl_med.data.datasets import build_dataset


def test_images_that_say_no_modality_take_the_configs(phantom_dir: Path, tmp_path: Path, caplog) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for sub in ("sub-000", "sub-001"):
        img = nib.load(phantom_dir / sub / "ct.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), plain / f"{sub}.nii.gz")  # a fresh header: no modality
    ours = tmp_path / "ours"
    ours.mkdir()
    for sub in ("sub-000", "sub-001"):
        (ours / f"{sub}.nii.gz").write_bytes((phantom_dir / sub / "ct.nii.gz").read_bytes())  # udl-med's files say CT
    cfg = {"size": (16, 16), "crop": "center", "modality": "CT", "cache": False}
    with caplog.at_level("INFO"):
        a = build_dataset(DataConfig(source=str(plain), **cfg), None)
    b = build_dataset(DataConfig(source=str(ours), **cfg), None)
    assert len(a) == len(b) > 0 and "are taken as CT (data.modality)" in caplog.text
    for i in (0, len(a) // 2):
        assert a[i][keys.MODALITY] == "CT"
        torch.testing.assert_close(a[i][keys.IMAGE], b[i][keys.IMAGE])  # the CT window, not MR percentiles
    mr = build_dataset(DataConfig(source=str(phantom_dir / "sub-000" / "mr.nii.gz"), size=(16, 16), modality="MR", cache=False), None)
    assert len(mr) > 0  # a file that says MR stays MR
