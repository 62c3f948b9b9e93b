"""DICOM series in and out, with pydicom.

Reading: the slices of a folder (or the frames of an enhanced multi-frame file) are
ordered by their position projected on the slice normal, ``n = row x column`` of
``ImageOrientationPatient``, never by file name; ``RescaleSlope``/``RescaleIntercept``
are applied per slice, so CT comes out in Hounsfield units. A folder must hold exactly
one series with one orientation, one matrix size and evenly spaced slices; anything
else is an :class:`~udl_med.errors.InputError` naming the file and the problem.

Writing: a classic single-frame series (CT or MR Image Storage), one file per slice,
marked ``DERIVED``, with a new series UID and new instance UIDs; patient and study
come from the tags of the DICOM input when there is one. Values are stored as int16
through ``RescaleSlope``/``RescaleIntercept``. The folder is written under a temporary
name and renamed, so a failure never leaves a half-written series.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

from udl_med.data.geometry import Geometry
from udl_med.errors import InputError
from udl_med.io_utils import atomic_folder

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
# Patient- and study-level tags a derived series keeps from its source.
STUDY_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
    "FrameOfReferenceUID",
)
SOURCE_TAGS = STUDY_TAGS + ("Modality", "SeriesInstanceUID", "SeriesDescription", "SeriesNumber")
_POSITION_TOL_MM = 1e-3
_SPACING_RTOL = 0.01  # slice gaps may differ from the median by 1% (rounded positions)


def is_dicom_file(path: Path) -> bool:
    """True for a file with a DICOM suffix or the ``DICM`` magic after the preamble."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def series_files(folder: Path) -> list[Path]:
    """The files of a DICOM folder (hidden files and ``DICOMDIR`` left out), by name."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    )


@dataclass
class _Slice:
    """One 2D plane of a series: a single-frame file or one frame of a multi-frame file."""

    source: str  # file (and frame) named in error messages
    position: np.ndarray  # ImagePositionPatient (3,)
    orientation: np.ndarray  # ImageOrientationPatient (6,)
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)
    slope: float
    intercept: float
    pixels: Callable[[], np.ndarray]  # (rows, columns) stored values
    shape: tuple[int, int]  # (rows, columns)


@dataclass
class DicomVolume:
    """A DICOM series read into an array (X, Y, Z) in physical units."""

    array: np.ndarray  # (X, Y, Z) float32, X along the row direction (columns index)
    geometry: Geometry
    modality: str | None
    tags: dict[str, str]  # SOURCE_TAGS present in the first file


def _dcmread(path: Path, stop_before_pixels: bool = False):
    import pydicom  # lazy: pydicom is only needed for DICOM
    from pydicom.errors import InvalidDicomError  # lazy: pydicom is only needed for DICOM

    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise InputError(path, "not a DICOM file (no DICM header)") from None
    except Exception as err:  # truncated or corrupt headers raise many types
        raise InputError(path, f"unreadable DICOM file (truncated or corrupt: {type(err).__name__})") from None


def _pixels(ds: Any, path: Path) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as err:
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise InputError(path, f"unreadable DICOM pixel data (truncated or unsupported: {reason})") from None
    return np.asarray(arr)


def _floats(value: Any, n: int, path: Path | str, name: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(path, f"{name} is not numeric: {value!r}") from None
    if arr.shape != (n,):
        raise InputError(path, f"{name} must have {n} values, got {len(arr)}")
    return arr


def _find(ds: Any, frame: int | None, group: str, attr: str) -> Any:
    """An attribute from a frame's functional group, the shared group, or the top level."""
    if frame is not None:
        for seq_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            seq = ds.get(seq_name)
            if not seq:
                continue
            item = seq[frame] if seq_name.startswith("PerFrame") else seq[0]
            sub = item.get(group)
            if sub and attr in sub[0]:
                return sub[0].get(attr)
    return ds.get(attr)


def _slices_of(ds: Any, path: Path) -> list[_Slice]:
    """The planes of one file: one, or every frame of an enhanced multi-frame file."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(path, f"colour DICOM (SamplesPerPixel={ds.SamplesPerPixel}) is not supported")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise InputError(path, "DICOM file has no pixel data")
    shape = (int(ds.Rows), int(ds.Columns))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    cache: dict[str, np.ndarray] = {}

    def all_pixels() -> np.ndarray:
        if "a" not in cache:
            arr = _pixels(ds, path)
            cache["a"] = arr.reshape((frames,) + shape)
        return cache["a"]

    out = []
    for i in range(frames):
        frame = i if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds else None
        where = f"{path} (frame {i + 1})" if frames > 1 else str(path)
        pos = _find(ds, frame, "PlanePositionSequence", "ImagePositionPatient")
        ori = _find(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
        if frames > 1 and (pos is None or ori is None):
            raise InputError(path, f"multi-frame DICOM without per-frame positions (frame {i + 1})")
        spacing = _find(ds, frame, "PixelMeasuresSequence", "PixelSpacing")
        slope = _find(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _find(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
        out.append(
            _Slice(
                source=where,
                position=_floats(pos, 3, where, "ImagePositionPatient") if pos is not None else None,
                orientation=_floats(ori, 6, where, "ImageOrientationPatient") if ori is not None else None,
                pixel_spacing=tuple(_floats(spacing, 2, where, "PixelSpacing")) if spacing is not None else (1.0, 1.0),
                slope=float(slope) if slope not in (None, "") else 1.0,
                intercept=float(intercept) if intercept not in (None, "") else 0.0,
                pixels=(lambda i=i: all_pixels()[i]),
                shape=shape,
            )
        )
    return out


def _modality(ds: Any) -> str | None:
    value = str(ds.get("Modality", "")).upper()
    return value if value in ("CT", "MR") else None


def _tags(ds: Any) -> dict[str, str]:
    return {name: str(ds.get(name)) for name in SOURCE_TAGS if ds.get(name) not in (None, "")}


def read_dicom(path: str | Path) -> DicomVolume:
    """Read a DICOM series folder, an enhanced multi-frame file or a single 2D file.

    A single plane becomes a volume with one slice, keeping its 3D position.

    Raises:
        InputError: unreadable files, mixed series, inconsistent or unevenly spaced slices.
    """
    path = Path(path)
    if path.is_dir():
        files = series_files(path)
        if not files:
            raise InputError(path, "empty folder: no DICOM files")
        datasets = [(f, _dcmread(f)) for f in files]
        uids = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in datasets})
        if len(uids) > 1:
            raise InputError(path, f"folder mixes {len(uids)} DICOM series ({', '.join(u[-12:] for u in uids)}); put one series per folder")
        multi = [f for f, ds in datasets if int(ds.get("NumberOfFrames", 1) or 1) > 1]
        if multi and len(datasets) > 1:
            raise InputError(multi[0], "a multi-frame DICOM file must be alone in its folder")
        where: Path = path
    else:
        datasets = [(path, _dcmread(path))]
        where = path
    slices = [s for f, ds in datasets for s in _slices_of(ds, f)]
    first = datasets[0][1]
    array, geometry = _stack(slices, where, first)
    return DicomVolume(array=array, geometry=geometry, modality=_modality(first), tags=_tags(first))


def _stack(slices: list[_Slice], where: Path, first: Any) -> tuple[np.ndarray, Geometry]:
    """Order the planes along the slice normal, check them, stack them into (X, Y, Z)."""
    ref = slices[0]
    if ref.orientation is None or ref.position is None:
        if len(slices) > 1:
            missing = next(s for s in slices if s.orientation is None or s.position is None)
            raise InputError(missing.source, "DICOM slice without ImagePositionPatient/ImageOrientationPatient")
        orientation = np.array([1.0, 0, 0, 0, 1.0, 0])
        position = np.zeros(3)
    else:
        orientation, position = ref.orientation, ref.position
    for s in slices[1:]:
        if s.shape != ref.shape:
            raise InputError(s.source, f"slice size {s.shape} differs from {ref.shape} of {ref.source}")
        if not np.allclose(s.orientation, orientation, atol=1e-4):
            raise InputError(s.source, f"slice orientation {s.orientation.tolist()} differs from {orientation.tolist()}")
        if not np.allclose(s.pixel_spacing, ref.pixel_spacing, atol=1e-4):
            raise InputError(s.source, f"pixel spacing {s.pixel_spacing} differs from {ref.pixel_spacing}")
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3 or abs(float(row @ col)) > 1e-3:
        raise InputError(ref.source, f"ImageOrientationPatient is not orthonormal: {orientation.tolist()}")
    if len(slices) > 1:
        slices = sorted(slices, key=lambda s: float(s.position @ normal))
        positions = np.array([float(s.position @ normal) for s in slices])
        gaps = np.diff(positions)
        dup = int(np.argmin(gaps))
        if gaps[dup] < _POSITION_TOL_MM:
            raise InputError(where, f"two slices at the same position {positions[dup]:.3f} mm ({slices[dup].source}, {slices[dup + 1].source})")
        step = float(np.median(gaps))
        bad = np.nonzero(np.abs(gaps - step) > max(_SPACING_RTOL * step, _POSITION_TOL_MM))[0]
        if bad.size:
            i = int(bad[0])
            ratio = gaps[i] / step
            if abs(ratio - round(ratio)) < 0.1 and round(ratio) >= 2:
                problem = f"missing slice(s): a gap of {gaps[i]:.3f} mm between positions {positions[i]:.3f} and {positions[i + 1]:.3f} mm where slices are {step:.3f} mm apart"
            else:
                problem = f"unevenly spaced slices: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm"
            raise InputError(where, problem)
        offsets = np.array([s.position - slices[0].position for s in slices])
        sideways = offsets - np.outer(offsets @ normal, normal)
        if np.abs(sideways).max() > 0.01 + 1e-3 * abs(positions[-1] - positions[0]):
            raise InputError(where, "slices are not stacked along the slice normal (gantry tilt or sheared series)")
        dz = step
        position = slices[0].position
    else:
        dz = first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0
        dz = float(dz) if float(dz) > 0 else 1.0
    planes = []
    for s in slices:
        stored = s.pixels().astype(np.float64)
        planes.append((stored * s.slope + s.intercept).T)  # (rows, cols) -> (X=cols, Y=rows)
    array = np.stack(planes, axis=-1).astype(np.float32)
    direction = np.stack([row, col, normal], axis=1)
    spacing = (ref.pixel_spacing[1], ref.pixel_spacing[0], dz)  # PixelSpacing is (row, column) spacing
    return array, Geometry.create(spacing, position, direction)


# --- writing -------------------------------------------------------------------------


def _ds_str(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds  # lazy: pydicom is only needed for DICOM

    return format_number_as_ds(float(value))


def _rescale(array: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) that store ``array`` as int16 with the finest precision."""
    lo, hi = float(array.min()), float(array.max())
    integral = bool(np.all(np.round(array) == array))
    if integral and hi - lo <= 65535:
        intercept = 0.0 if (lo >= -32768 and hi <= 32767) else float(np.floor(lo)) + 32768.0
        return 1.0, intercept
    slope = (hi - lo) / 65000.0 if hi > lo else 1.0
    slope = float(_ds_str(slope))
    intercept = float(_ds_str((hi + lo) / 2.0))
    return slope, intercept


def write_dicom_series(
    array: np.ndarray,
    folder: str | Path,
    geometry: Geometry,
    modality: str | None,
    tags: Mapping[str, str] | None = None,
    series_description: str = "udl-med derived",
    uid_entropy: Sequence[Any] | None = None,
) -> Path:
    """Write a volume (X, Y, Z) in physical units as a DICOM series, atomically.

    Args:
        array: (X, Y, Z) values (HU for CT).
        folder: the series folder; an existing folder is replaced only when it holds
            nothing but ``.dcm`` files (an earlier series).
        geometry: the grid (LPS); a left-handed direction is written as the same
            physical grid traversed from the other end (DICOM stacks along row x column).
        modality: ``CT``, ``MR`` or None (secondary capture, ``OT``).
        tags: patient and study tags of the source (``STUDY_TAGS``); a new patient and
            study are made up when absent.
        uid_entropy: values that make the generated UIDs (and dates) deterministic (phantoms).

    Returns:
        The folder.
    """
    import pydicom  # lazy: pydicom is only needed for DICOM
    from pydicom.dataset import FileMetaDataset  # lazy: pydicom is only needed for DICOM
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid  # lazy: pydicom is only needed for DICOM

    folder = Path(folder)
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or geometry.ndim not in (2, 3):
        raise ValueError(f"a DICOM series needs a (X, Y, Z) volume, got shape {array.shape}")
    if geometry.ndim == 2:  # a 2D image: put it in the z=0 plane
        d2 = geometry.direction_matrix
        direction = np.eye(3)
        direction[:2, :2] = d2
        geometry = Geometry.create(geometry.spacing + (1.0,), geometry.origin + (0.0,), direction)
    if not np.all(np.isfinite(array)):
        raise ValueError("cannot write NaN or Inf voxels to DICOM")
    direction = geometry.direction_matrix
    origin = np.asarray(geometry.origin)
    if np.linalg.det(direction) < 0:  # DICOM's slice normal is row x column: walk k backwards
        log.warning("%s: left-handed direction; writing the same grid with the slice order reversed", folder)
        origin = origin + (array.shape[2] - 1) * geometry.spacing[2] * direction[:, 2]
        direction = direction.copy()
        direction[:, 2] *= -1
        array = array[:, :, ::-1]
    entropy = list(uid_entropy) if uid_entropy is not None else [uuid.uuid4().hex]

    def uid(*parts: Any) -> str:
        return generate_uid(entropy_srcs=[str(e) for e in entropy] + [str(p) for p in parts])

    tags = dict(tags or {})
    study = {name: tags[name] for name in STUDY_TAGS if name in tags}
    study.setdefault("PatientName", "Anonymous")
    study.setdefault("PatientID", "udl-med")
    study.setdefault("StudyInstanceUID", uid("study"))
    study.setdefault("FrameOfReferenceUID", uid("frame-of-reference"))
    now = datetime.now()
    study.setdefault("StudyDate", now.strftime("%Y%m%d"))
    study.setdefault("StudyTime", now.strftime("%H%M%S"))
    # deterministic output (phantoms) is stamped with the study's date, not the clock
    stamp_date, stamp_time = (study["StudyDate"], study["StudyTime"]) if uid_entropy is not None else (now.strftime("%Y%m%d"), now.strftime("%H%M%S"))
    series_uid = uid("series")
    sop_class = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}.get(modality or "", SECONDARY_CAPTURE_STORAGE)
    slope, intercept = _rescale(array)
    stored = np.clip(np.round((array - intercept) / slope), -32768, 32767).astype("<i2")
    row, col = direction[:, 0], direction[:, 1]
    series_number = str(int(tags.get("SeriesNumber", "0") or 0) + 1000) if str(tags.get("SeriesNumber", "")).isdigit() else "1000"

    def write_slices(tmp: Path) -> None:
        for k in range(array.shape[2]):
            sop_uid = uid("instance", k)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = pydicom.Dataset()
            ds.file_meta = meta
            for name, value in study.items():
                setattr(ds, name, value)
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = sop_uid
            ds.Modality = modality or "OT"
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = series_number
            ds.SeriesDescription = series_description[:64]
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.DerivationDescription = "udl-med"
            ds.Manufacturer = "udl-med"
            ds.SeriesDate = ds.ContentDate = stamp_date
            ds.SeriesTime = ds.ContentTime = stamp_time
            ds.InstanceNumber = str(k + 1)
            position = origin + k * geometry.spacing[2] * direction[:, 2]
            ds.ImagePositionPatient = [_ds_str(v) for v in position]
            ds.ImageOrientationPatient = [_ds_str(v) for v in np.concatenate([row, col])]
            ds.SliceLocation = _ds_str(float(position @ np.cross(row, col)))
            ds.PixelSpacing = [_ds_str(geometry.spacing[1]), _ds_str(geometry.spacing[0])]
            ds.SliceThickness = _ds_str(geometry.spacing[2])
            ds.SpacingBetweenSlices = _ds_str(geometry.spacing[2])
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = array.shape[1], array.shape[0]
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.RescaleSlope = _ds_str(slope)
            ds.RescaleIntercept = _ds_str(intercept)
            ds.RescaleType = "HU" if modality == "CT" else "US"
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (X, Y) -> rows (Y) x columns (X)
            ds.save_as(tmp / f"IM{k + 1:05d}.dcm", enforce_file_format=True)

    atomic_folder(folder, write_slices, replace=_check_replaceable)
    return folder


def _check_replaceable(folder: Path) -> None:
    """An existing output folder may be replaced only when it holds nothing but ``.dcm`` files."""
    if not folder.is_dir():
        raise InputError(folder, "exists and is not a folder; cannot write a DICOM series there")
    others = [p for p in folder.iterdir() if p.suffix.lower() != ".dcm" or not p.is_file()]
    if others:
        raise InputError(folder, f"folder exists and holds other files ({others[0].name}); not overwriting")
