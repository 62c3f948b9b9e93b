"""DICOM series: a round trip keeps geometry and values; slices are ordered by position; broken series are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from udl_med.data.dicom import _rescale, read_dicom, write_dicom_series
from udl_med.data.geometry import Geometry
from udl_med.errors import InputError


def _oblique(spacing=(0.7, 0.9, 2.5), origin=(-12.5, 30.0, 101.25), angle=0.3) -> Geometry:
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array([[1.0, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    return Geometry.create(spacing, origin, rotation)


def _ct(shape=(6, 5, 4)) -> np.ndarray:
    return np.random.default_rng(0).integers(-1024, 3000, size=shape).astype(np.float32)


def _assert_same_geometry(a: Geometry, b: Geometry) -> None:
    assert np.allclose(a.spacing, b.spacing, atol=1e-4)
    assert np.allclose(a.origin, b.origin, atol=1e-4)
    assert np.allclose(a.direction, b.direction, atol=1e-5)


def test_round_trip_keeps_hu_values_geometry_modality_and_study(tmp_path: Path) -> None:
    array, geometry = _ct(), _oblique()
    folder = write_dicom_series(array, tmp_path / "ct", geometry, "CT", tags={"PatientID": "p-7", "StudyInstanceUID": "1.2.3.4"})
    assert len(list(folder.glob("*.dcm"))) == array.shape[2]
    volume = read_dicom(folder)
    assert volume.array.shape == array.shape and np.array_equal(volume.array, array)  # integral HU: exact
    _assert_same_geometry(volume.geometry, geometry)
    assert volume.modality == "CT" and volume.tags["PatientID"] == "p-7" and volume.tags["StudyInstanceUID"] == "1.2.3.4"
    first = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0])
    assert first.Rows == array.shape[1] and first.Columns == array.shape[0]  # (X, Y) -> rows are Y
    assert "DERIVED" in first.ImageType and first.SeriesInstanceUID != "1.2.3.4"


def test_fractional_values_come_back_within_the_stored_precision(tmp_path: Path) -> None:
    array = np.random.default_rng(1).normal(0, 1, size=(4, 4, 3)).astype(np.float32)
    slope, _ = _rescale(array.astype(np.float64))
    volume = read_dicom(write_dicom_series(array, tmp_path / "mr", Geometry.identity(3), "MR"))
    assert np.abs(volume.array - array).max() <= slope / 2 + 1e-6
    assert volume.modality == "MR"


def test_slices_are_ordered_by_position_not_by_file_name(tmp_path: Path) -> None:
    array, geometry = _ct(), _oblique()
    folder = write_dicom_series(array, tmp_path / "ct", geometry, "CT")
    files = sorted(folder.glob("*.dcm"))
    for i, path in enumerate(files):  # reverse the names: IM00001 now holds the last slice
        path.rename(folder / f"tmp{i}.dcm")
    for i in range(len(files)):
        (folder / f"tmp{i}.dcm").rename(folder / f"IM{len(files) - i:05d}.dcm")
    volume = read_dicom(folder)
    assert np.array_equal(volume.array, array)
    _assert_same_geometry(volume.geometry, geometry)


def test_a_left_handed_grid_comes_back_as_the_same_physical_grid(tmp_path: Path) -> None:
    array = _ct()
    direction = np.diag([1.0, 1.0, -1.0])
    geometry = Geometry.create((1.0, 1.5, 3.0), (5.0, -5.0, 20.0), direction)
    volume = read_dicom(write_dicom_series(array, tmp_path / "lh", geometry, "CT"))
    assert np.array_equal(volume.array, array[:, :, ::-1])  # the other end first
    last = np.asarray(geometry.origin) + (array.shape[2] - 1) * 3.0 * direction[:, 2]
    _assert_same_geometry(volume.geometry, Geometry.create((1.0, 1.5, 3.0), last, np.eye(3)))


def test_a_missing_slice_and_a_mixed_folder_are_refused(tmp_path: Path) -> None:
    folder = write_dicom_series(_ct((4, 4, 5)), tmp_path / "ct", Geometry.identity(3), "CT")
    (folder / "IM00003.dcm").unlink()
    with pytest.raises(InputError, match="missing slice"):
        read_dicom(folder)
    other = write_dicom_series(_ct((4, 4, 2)), tmp_path / "other", Geometry.identity(3), "CT")
    (other / "IM00001.dcm").rename(folder / "X.dcm")
    with pytest.raises(InputError, match="mixes 2 DICOM series"):
        read_dicom(folder)


def test_uid_entropy_makes_the_series_deterministic_and_other_files_are_not_overwritten(tmp_path: Path) -> None:
    array = _ct((3, 3, 2))
    a = write_dicom_series(array, tmp_path / "a", Geometry.identity(3), "CT", uid_entropy=["seed", 0])
    b = write_dicom_series(array, tmp_path / "b", Geometry.identity(3), "CT", uid_entropy=["seed", 0])
    ua, ub = (pydicom.dcmread(f / "IM00001.dcm") for f in (a, b))
    assert ua.SeriesInstanceUID == ub.SeriesInstanceUID and ua.SOPInstanceUID == ub.SOPInstanceUID
    (a / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds other files"):
        write_dicom_series(array, a, Geometry.identity(3), "CT")
    assert (a / "notes.txt").read_text() == "mine"
