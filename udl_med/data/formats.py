"""Image file formats: which suffixes udl-med reads and writes, and what an output path asks for."""

from __future__ import annotations

import os
from pathlib import Path

from udl_med.errors import InputError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
MODALITY_NOTE = "udl-med modality="  # kept in NIfTI `descrip` and MetaImage/NRRD fields

__all__ = ["VOLUME_SUFFIXES", "MODALITY_NOTE", "image_kind", "volume_suffix"]


def volume_suffix(path: Path) -> str:
    """The format suffix of ``path`` (``.nii.gz`` counts as one), lower case."""
    name = path.name.lower()
    for s in VOLUME_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def image_kind(path: str | Path) -> str:
    """What an output path asks for: ``nifti``, ``mha``, ``nrrd`` or ``dicom`` (a folder).

    Raises:
        InputError: a suffix that is no image format (``.png``, ``.csv`` ...).
    """
    p = Path(path)
    s = volume_suffix(p)
    if s in (".nii.gz", ".nii"):
        return "nifti"
    if s in (".mha", ".mhd"):
        return "mha"
    if s in (".nrrd", ".nhdr"):
        return "nrrd"
    if s == "" or p.is_dir() or str(path).endswith(os.sep):
        return "dicom"
    raise InputError(path, f"unknown output format {s!r}: use .nii.gz, .nii, .mha, .nrrd, or a folder name for a DICOM series")

