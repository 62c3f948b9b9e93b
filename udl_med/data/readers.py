"""Reading scans: one entry point, geometry kept.

:func:`read_image` turns a NIfTI/MetaImage/NRRD file, a DICOM series folder or a
DICOM file into a MONAI ``MetaTensor`` of shape ``(1, X, Y, Z)`` (2D images
``(1, X, Y)``), float32 in physical units (CT in HU). Its meta holds MONAI's RAS
``affine`` plus ``spacing``, ``origin`` and ``direction`` the way SimpleITK reports them
(LPS; ``direction`` flat, row-major), ``modality`` (``"CT"``, ``"MR"`` or None) and
``filename_or_obj``. Every problem with the input (empty, truncated or mislabelled
files, NaN/Inf voxels, several frames, broken series) is an
:class:`~udl_med.errors.InputError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from udl_med import keys
from udl_med.data.dicom import DICOM_SUFFIXES, is_dicom_file, read_dicom, series_files
from udl_med.data.formats import MODALITY_NOTE, VOLUME_SUFFIXES, volume_suffix
from udl_med.data.geometry import Geometry
from udl_med.errors import InputError

__all__ = ["read_image"]


def read_image(path: str | Path) -> MetaTensor:
    """Read one image into a ``(1, *spatial)`` float32 MetaTensor in physical units.

    Args:
        path: a ``.nii``/``.nii.gz``/``.mha``/``.mhd``/``.nrrd``/``.nhdr`` file, a DICOM
            series folder, an enhanced multi-frame DICOM file or a single DICOM file
            (a single plane becomes a volume with one slice).

    Raises:
        InputError: the path is missing, empty, truncated, not the format its name
            says, holds NaN/Inf voxels, several frames, or a broken DICOM series.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_dir():
        files = series_files(path)
        if any(volume_suffix(f) in VOLUME_SUFFIXES for f in files) or (path / "manifest.csv").exists():
            raise InputError(path, "is a folder of volumes, not one image; name one volume or a DICOM series folder")
        if not files:
            raise InputError(path, "empty folder: no image files")
        return _read_dicom(path)
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    suffix = volume_suffix(path)
    if suffix in VOLUME_SUFFIXES:
        return _read_itk(path)
    if suffix in DICOM_SUFFIXES or suffix == "" or is_dicom_file(path):
        return _read_dicom(path)
    if suffix == ".csv":
        raise InputError(path, "is a manifest, not one image")
    raise InputError(path, f"unsupported file type {suffix!r}: expected {', '.join(VOLUME_SUFFIXES + DICOM_SUFFIXES)} or a DICOM folder")


def _finish(array: np.ndarray, geometry: Geometry, modality: str | None, path: Path, fmt: str, extra: dict[str, Any] | None = None) -> MetaTensor:
    """Check the voxels and wrap them as a channel-first MetaTensor with full geometry."""
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise InputError(path, f"{bad} NaN or Inf voxel(s)")
    if array.size == 0:
        raise InputError(path, f"image has no voxels (shape {array.shape})")
    affine = geometry.ras_affine()
    meta: dict[str, Any] = {
        **geometry.as_meta(),
        "modality": modality,
        "filename_or_obj": str(path),
        "format": fmt,
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(array.shape),
        "space": "RAS",
        "original_channel_dim": "no_channel",
    }
    if extra:
        meta.update(extra)
    data = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)[None])
    return MetaTensor(data, affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta)


def _read_dicom(path: Path) -> MetaTensor:
    vol = read_dicom(path)
    return _finish(vol.array, vol.geometry, vol.modality, path, "dicom", {"dicom": dict(vol.tags)})


def _read_nifti_voxels(path: Path, size: list[int]) -> np.ndarray:
    """NIfTI voxels (X, Y[, Z]) through nibabel, scaled by ``scl_slope``/``scl_inter``.

    ITK's NIfTI reader accepts truncated data and turns NaN and Inf into 0, so the
    voxels are read here (and checked by the caller); the geometry still comes from ITK.
    """
    import nibabel as nib  # lazy: nibabel is only needed for NIfTI

    try:
        img = nib.load(str(path), mmap=False)
        header = img.header
        expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape(), dtype=np.int64)) * int(header["bitpix"]) // 8
        if volume_suffix(path) == ".nii" and path.stat().st_size < expected:
            raise InputError(path, f"truncated NIfTI: {path.stat().st_size} bytes, the header needs {expected}")
        array = np.asanyarray(img.dataobj)
    except InputError:
        raise
    except Exception:
        raise InputError(path, "truncated or corrupt NIfTI data") from None
    array = array.reshape(array.shape[: len(size)] if array.ndim > len(size) and all(n == 1 for n in array.shape[len(size) :]) else array.shape)
    if list(array.shape) != list(size):
        raise InputError(path, f"NIfTI data shape {list(array.shape)} does not match its header {size}")
    return array


def _modality_from_fields(fields: dict[str, str]) -> str | None:
    for key in ("descrip", "ITK_FileNotes", "udl_med_modality"):
        value = fields.get(key, "")
        if MODALITY_NOTE in value:
            candidate = value.split(MODALITY_NOTE, 1)[1][:2].upper()
            if candidate in keys.MODALITIES:
                return candidate
    value = fields.get("Modality", "")
    return {"MET_MOD_CT": "CT", "MET_MOD_MR": "MR"}.get(value)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C++ code that prints to file descriptor 2 (ITK's MetaIO does on short reads)."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded interpreter)
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _read_itk(path: Path) -> MetaTensor:
    import SimpleITK as sitk  # lazy: SimpleITK is slow to import; only this reader/writer needs it

    fmt = {".nii.gz": "nifti", ".nii": "nifti", ".mha": "mha", ".mhd": "mha", ".nrrd": "nrrd", ".nhdr": "nrrd"}[volume_suffix(path)]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(path, f"not a readable {fmt.upper()} file (unrecognised or corrupt header)") from None
    size = list(reader.GetSize())
    dim = reader.GetDimension()
    if reader.GetNumberOfComponents() != 1:
        raise InputError(path, f"{reader.GetNumberOfComponents()} components per voxel (vector or colour image); udl-med reads scalar images")
    if dim == 4:
        if size[3] != 1:
            raise InputError(path, f"4D volume with {size[3]} frames; udl-med reads one 3D frame (split it first)")
    elif dim not in (2, 3):
        raise InputError(path, f"{dim}D image; udl-med reads 2D and 3D images")
    fields = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    spacing, origin, direction = reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()
    if dim == 4:  # a single frame: keep the spatial part of the geometry
        d4 = np.asarray(direction).reshape(4, 4)
        spacing, origin, direction = spacing[:3], origin[:3], d4[:3, :3].ravel()
        size = size[:3]
    if fmt == "nifti":
        array = _read_nifti_voxels(path, size)
    else:
        try:
            with _quiet_stderr():
                image = reader.Execute()
        except RuntimeError:
            raise InputError(path, f"truncated or corrupt {fmt.upper()} data") from None
        array = np.transpose(sitk.GetArrayFromImage(image)).reshape(size)  # ITK's (Z, Y, X) -> (X, Y, Z)
    array = array.astype(np.float32, copy=False)
    geometry = Geometry.create(spacing, origin, direction)
    return _finish(array, geometry, _modality_from_fields(fields), path, fmt)

