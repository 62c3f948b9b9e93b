"""Reading and writing scans: one entry point each, geometry kept.

:func:`read_image` turns a NIfTI/MetaImage/NRRD file, a DICOM series folder or a
DICOM file into a MONAI ``MetaTensor`` of shape ``(1, X, Y, Z)`` (2D images
``(1, X, Y)``), float32 in physical units (CT in HU). Its meta holds MONAI's RAS
``affine`` plus ``spacing``, ``origin`` and ``direction`` the way SimpleITK reports them
(LPS; ``direction`` flat, row-major), ``modality`` (``"CT"``, ``"MR"`` or None) and
``filename_or_obj``. Every problem with the input (empty, truncated or mislabelled
files, NaN/Inf voxels, several frames, broken series) is an
:class:`~udl_med.errors.InputError` naming the file.

:func:`write_image` writes NIfTI, MetaImage, NRRD or a DICOM series (the format
follows the path) with the geometry of a reference image, atomically.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from udl_med import keys
from udl_med.data.dicom import DICOM_SUFFIXES, is_dicom_file, read_dicom, series_files, write_dicom_series
from udl_med.data.geometry import Geometry
from udl_med.errors import InputError

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
SPLITS = ("train", "val", "test")
MODALITY_NOTE = "udl-med modality="  # kept in NIfTI `descrip` and MetaImage/NRRD fields

__all__ = [
    "ImageRecord",
    "read_image",
    "write_image",
    "list_images",
    "describe",
    "convert",
    "image_kind",
]


@dataclass(frozen=True)
class ImageRecord:
    """One image of a collection: the manifest's columns (shared/DESIGN.md)."""

    path: Path
    label: int | None = None
    modality: str | None = None
    subject: str | None = None
    split: str | None = None


def _suffix(path: Path) -> str:
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
    s = _suffix(p)
    if s in (".nii.gz", ".nii"):
        return "nifti"
    if s in (".mha", ".mhd"):
        return "mha"
    if s in (".nrrd", ".nhdr"):
        return "nrrd"
    if s == "" or p.is_dir() or str(path).endswith(os.sep):
        return "dicom"
    raise InputError(path, f"unknown output format {s!r}: use .nii.gz, .nii, .mha, .nrrd, or a folder name for a DICOM series")


# --- reading -------------------------------------------------------------------------


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
        if any(_suffix(f) in VOLUME_SUFFIXES for f in files) or (path / "manifest.csv").exists():
            raise InputError(path, "is a folder of volumes, not one image; name one volume or a DICOM series folder")
        if not files:
            raise InputError(path, "empty folder: no image files")
        return _read_dicom(path)
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    suffix = _suffix(path)
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
    import nibabel as nib

    try:
        img = nib.load(str(path), mmap=False)
        header = img.header
        expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape(), dtype=np.int64)) * int(header["bitpix"]) // 8
        if _suffix(path) == ".nii" and path.stat().st_size < expected:
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
    import SimpleITK as sitk

    fmt = {".nii.gz": "nifti", ".nii": "nifti", ".mha": "mha", ".mhd": "mha", ".nrrd": "nrrd", ".nhdr": "nrrd"}[_suffix(path)]
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


# --- writing -------------------------------------------------------------------------


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
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array)))  # (X, Y, Z) -> ITK's (Z, Y, X)
    img.SetSpacing(geometry.spacing)
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    if modality:
        img.SetMetaData("descrip", f"{MODALITY_NOTE}{modality}")
        img.SetMetaData("ITK_FileNotes", f"{MODALITY_NOTE}{modality}")
    suffix = _suffix(path)
    if suffix in (".mhd", ".nhdr"):
        raise InputError(path, "header-plus-raw formats (.mhd, .nhdr) cannot be written atomically; use .mha or .nrrd")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name[: -len(suffix)]}.tmp-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        sitk.WriteImage(img, str(tmp), useCompression=suffix in (".nii.gz", ".mha", ".nrrd"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- collections ---------------------------------------------------------------------


def _parse_manifest(path: Path) -> list[ImageRecord]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(path, "manifest is not UTF-8 text") from None
    rows = list(csv.DictReader(text.splitlines()))
    if not text.strip():
        raise InputError(path, "empty manifest")
    header = next(csv.reader(text.splitlines()))
    if "image" not in header:
        raise InputError(path, f"manifest has no 'image' column (columns: {', '.join(header)})")
    unknown = [c for c in header if c not in keys.MANIFEST_COLUMNS]
    if unknown:
        raise InputError(path, f"unknown manifest column(s) {', '.join(unknown)}; valid: {', '.join(keys.MANIFEST_COLUMNS)}")
    if not rows:
        raise InputError(path, "manifest has no rows")
    records = []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"line {i}"
        image = (row.get("image") or "").strip()
        if not image:
            raise InputError(path, f"{where}: empty 'image'")
        img_path = (path.parent / image) if not Path(image).is_absolute() else Path(image)
        if not img_path.exists():
            raise InputError(path, f"{where}: image {image!r} does not exist")
        label_text = (row.get("label") or "").strip()
        label = None
        if label_text:
            try:
                label = int(label_text)
            except ValueError:
                raise InputError(path, f"{where}: label {label_text!r} is not a non-negative integer") from None
            if label < 0:
                raise InputError(path, f"{where}: label {label_text!r} is not a non-negative integer")
        modality = (row.get("modality") or "").strip().upper() or None
        if modality is not None and modality not in keys.MODALITIES:
            raise InputError(path, f"{where}: unknown modality {row.get('modality')!r}; valid: {', '.join(keys.MODALITIES)}")
        split = (row.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            raise InputError(path, f"{where}: unknown split {row.get('split')!r}; valid: {', '.join(SPLITS)}")
        subject = (row.get("subject") or "").strip() or None
        records.append(ImageRecord(img_path, label, modality, subject, split))
    return records


def list_images(path: str | Path) -> list[ImageRecord]:
    """The images of a volume, DICOM folder, folder of volumes or manifest CSV.

    A folder holding ``manifest.csv`` is read through it; other folders list their
    volume files (by name) and their sub-folders of DICOM files. Files are not read.

    Raises:
        InputError: a missing path, a manifest with a missing file or an unknown value,
            or a folder without images.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return _parse_manifest(path)
        return [ImageRecord(path)]
    if (path / "manifest.csv").is_file():
        return _parse_manifest(path / "manifest.csv")
    files = series_files(path)
    volumes = [f for f in files if _suffix(f) in VOLUME_SUFFIXES]
    if volumes:
        records = [ImageRecord(f) for f in volumes]
        for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if any(is_dicom_file(f) for f in series_files(sub)):
                records.append(ImageRecord(sub))
        return records
    if files:  # a DICOM series folder
        return [ImageRecord(path)]
    subs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    records = [ImageRecord(sub) for sub in subs if any(is_dicom_file(f) for f in series_files(sub))]
    if not records:
        raise InputError(path, "no images found (expected volumes, DICOM files or a manifest.csv)")
    return records


# --- info and convert ----------------------------------------------------------------


def _summary(image: MetaTensor) -> dict[str, Any]:
    arr = image.as_tensor()
    return {
        "path": str(image.meta["filename_or_obj"]),
        "format": image.meta.get("format"),
        "shape": list(arr.shape[1:]),
        "spacing": [round(v, 6) for v in image.meta["spacing"]],
        "origin": [round(v, 6) for v in image.meta["origin"]],
        "direction": [round(v, 6) for v in image.meta["direction"]],
        "modality": image.meta.get("modality"),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "mean": float(arr.double().mean()),
    }


def describe(path: str | Path) -> dict[str, Any]:
    """Validate an input and describe it (``udl-med info``).

    One image: shape, spacing, origin, direction, modality and intensity range. A
    folder or manifest: every image is read (and so validated), and the counts by
    modality, split and label are reported with one summary per image.

    Raises:
        InputError: the first problem found, naming the file.
    """
    path = Path(path)
    records = list_images(path)
    single = len(records) == 1 and records[0].path == path
    if single:
        return _summary(read_image(path))
    images = []
    for rec in records:
        summary = _summary(read_image(rec.path))
        if rec.modality and summary["modality"] and rec.modality != summary["modality"]:
            raise InputError(rec.path, f"manifest says modality {rec.modality} but the file says {summary['modality']}")
        summary.update({k: v for k, v in asdict(rec).items() if k != "path" and v is not None})
        if rec.modality:
            summary["modality"] = rec.modality
        images.append(summary)

    def count(key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in images:
            if s.get(key) is not None:
                out[str(s[key])] = out.get(str(s[key]), 0) + 1
        return dict(sorted(out.items()))

    return {
        "path": str(path),
        "n_images": len(images),
        "modalities": count("modality"),
        "splits": count("split"),
        "labels": count("label"),
        "subjects": len({s["subject"] for s in images if s.get("subject")}),
        "min": min(s["min"] for s in images),
        "max": max(s["max"] for s in images),
        "images": images,
    }


def convert(input: str | Path, output: str | Path) -> dict[str, Any]:
    """Convert one image to NIfTI, MHA, NRRD or a DICOM series, geometry kept (``udl-med convert``).

    The input is fully read and validated before anything is written.

    Raises:
        InputError: a bad input, a collection instead of one image, or an unknown output format.
    """
    input, output = Path(input), Path(output)
    kind = image_kind(output)
    if input.is_file() and input.suffix.lower() == ".csv":
        raise InputError(input, "convert takes one image, not a manifest")
    image = read_image(input)
    written = write_image(image, output, reference=image)
    return {
        "input": str(input),
        "output": str(written),
        "format": kind,
        "shape": list(image.shape[1:]),
        "spacing": [round(v, 6) for v in image.meta["spacing"]],
        "modality": image.meta.get("modality"),
    }
