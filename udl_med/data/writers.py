"""Writing scans: NIfTI, MetaImage, NRRD or a DICOM series, with a reference's geometry, atomically.

The format follows the path (:func:`udl_med.data.formats.image_kind`); files go through
:func:`udl_med.io_utils.atomic_write`, DICOM series through
:func:`udl_med.io_utils.atomic_folder` (in :mod:`udl_med.data.dicom`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from udl_med import keys
from udl_med.data.dicom import write_dicom_series
from udl_med.data.formats import MODALITY_NOTE, image_kind, volume_suffix
from udl_med.data.geometry import Geometry
from udl_med.errors import InputError
from udl_med.io_utils import atomic_write

__all__ = ["write_image"]


def _geometry_of(image: Any) -> Geometry | None:
    meta = getattr(image, "meta", None)
    if meta is None:
        return None
    keyed = Geometry.from_meta(meta) if all(k in meta for k in ("spacing", "origin", "direction")) else None
    if isinstance(image, MetaTensor):
        from_affine = Geometry.from_ras_affine(image.affine.detach().cpu().numpy())
        if keyed is None or not keyed.close_to(from_affine) and not np.allclose(image.affine.numpy(), np.eye(image.affine.shape[0])):
            return from_affine  # MONAI transforms keep the affine up to date, not our keys
    return keyed if keyed is not None else Geometry.from_meta(meta)


def write_image(image: Any, path: str | Path, reference: Any = None, modality: str | None = None) -> Path:
    """Write a ``(1, *spatial)`` image; the format follows ``path``.

    Args:
        image: tensor or array ``(1, X, Y[, Z])`` in physical units (MetaTensor or not).
        path: a ``.nii.gz``/``.nii``/``.mha``/``.nrrd`` file, or a folder name for a DICOM
            series (see :func:`udl_med.data.dicom.write_dicom_series`).
        reference: an image as :func:`read_image` returns it; its geometry and DICOM
            patient/study are used. Without it, the image's own meta (or identity
            geometry) is used.
        modality: the output's modality (``CT``/``MR``), e.g. ``MR`` for an MR translated
            from a CT reference; default: the image's meta, else the reference's.

    Returns:
        The written path. Nothing is left behind if writing fails.

    Raises:
        ValueError: the image is not single-channel, its shape differs from the
            reference's, or it holds NaN/Inf.
        InputError: the path has an unknown suffix, or names a folder that holds other files.
    """
    path = Path(path)
    kind = image_kind(path)
    data = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if data.ndim not in (3, 4) or data.shape[0] != 1:
        raise ValueError(f"write_image needs a channel-first (1, X, Y[, Z]) image, got shape {tuple(data.shape)}")
    array = data[0]
    source = reference if reference is not None else image
    geometry = _geometry_of(source) or Geometry.identity(array.ndim)
    if geometry.ndim != array.ndim:
        raise ValueError(f"image has {array.ndim} spatial dims but its geometry has {geometry.ndim}")
    ref_shape = getattr(reference, "shape", None)
    if reference is not None and ref_shape is not None and tuple(ref_shape[1:]) != tuple(array.shape):
        raise ValueError(f"image shape {tuple(array.shape)} differs from the reference's {tuple(ref_shape[1:])}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32, copy=False)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{path}: refusing to write NaN or Inf voxels")
    meta = dict(getattr(source, "meta", {}) or {})
    modality = modality or (getattr(image, "meta", {}) or {}).get("modality") or meta.get("modality")
    if modality is not None and modality not in keys.MODALITIES:
        raise ValueError(f"modality must be one of {keys.MODALITIES} or None, got {modality!r}")
    if kind == "dicom":
        tags = meta.get("dicom") if isinstance(meta.get("dicom"), dict) else None
        return write_dicom_series(array, path, geometry, modality, tags=tags)
    _write_itk(array, path, geometry, modality)
    return path


def _write_itk(array: np.ndarray, path: Path, geometry: Geometry, modality: str | None) -> None:
    import SimpleITK as sitk  # lazy: SimpleITK is slow to import; only this reader/writer needs it

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array)))  # (X, Y, Z) -> ITK's (Z, Y, X)
    img.SetSpacing(geometry.spacing)
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    if modality:
        img.SetMetaData("descrip", f"{MODALITY_NOTE}{modality}")
        img.SetMetaData("ITK_FileNotes", f"{MODALITY_NOTE}{modality}")
    suffix = volume_suffix(path)
    if suffix in (".mhd", ".nhdr"):
        raise InputError(path, "header-plus-raw formats (.mhd, .nhdr) cannot be written atomically; use .mha or .nrrd")
    atomic_write(path, lambda tmp: sitk.WriteImage(img, str(tmp), useCompression=suffix in (".nii.gz", ".mha", ".nrrd")))
