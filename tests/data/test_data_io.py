"""Readers and writers: every format round-trips voxels and geometry; DICOM series order and rescale."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from udl_med.data.geometry import Geometry
from udl_med.data.io import ImageRecord, list_images, read_image, write_image
from udl_med.errors import InputError

from datakit import dicom_testdata, make_series

TOL = 1e-4  # mm


def _rotation(a: float, b: float) -> np.ndarray:
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _image(spatial_dims: int, seed: int = 0) -> MetaTensor:
    rng = np.random.default_rng(seed)
    shape = (7, 6, 5)[:spatial_dims]
    arr = rng.uniform(-1000, 1500, size=shape).astype(np.float32)
    direction = _rotation(0.4, 0.3) if spatial_dims == 3 else np.array([[0.6, -0.8], [0.8, 0.6]])
    geom = Geometry.create([0.7, 0.9, 2.5][:spatial_dims], [-101.5, 33.25, 7.0][:spatial_dims], direction)
    return MetaTensor(torch.from_numpy(arr)[None], affine=torch.as_tensor(geom.ras_affine()), meta={**geom.as_meta(), "modality": "CT"})


def _same_geometry(a: MetaTensor, b: MetaTensor) -> None:
    assert a.shape == b.shape
    assert Geometry.from_meta(a.meta).close_to(Geometry.from_meta(b.meta), TOL)
    np.testing.assert_allclose(a.affine.numpy(), b.affine.numpy(), atol=TOL)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_volume_round_trip(tmp_path: Path, suffix: str, spatial_dims: int) -> None:
    image = _image(spatial_dims)
    path = write_image(image, tmp_path / f"a{suffix}")
    back = read_image(path)
    assert back.shape == image.shape and back.dtype == torch.float32
    torch.testing.assert_close(back.as_tensor(), image.as_tensor(), rtol=0, atol=0)
    assert Geometry.from_meta(back.meta).close_to(Geometry.from_meta(image.meta), TOL)
    assert back.meta["modality"] == "CT"  # kept in the header's description
    again = read_image(write_image(back, tmp_path / f"b{suffix}", reference=back))
    _same_geometry(back, again)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_affine_matches_monai_reader(tmp_path: Path) -> None:
    """Our RAS affine is the one MONAI's own NIfTI reader reports."""
    from monai.transforms import LoadImage

    path = write_image(_image(3), tmp_path / "a.nii.gz")
    ours = read_image(path)
    theirs = LoadImage(image_only=True)(str(path))
    np.testing.assert_allclose(ours.affine.numpy(), theirs.affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(ours[0].numpy(), theirs.numpy(), atol=0)


def test_dicom_series_ordered_by_position_not_name(tmp_path: Path) -> None:
    src = dicom_testdata("CT_small.dcm")
    folder, slices, origin = make_series(tmp_path / "ct", n=5, step=2.5)
    image = read_image(folder)
    assert image.shape == (1, 128, 128, 5)
    slope, intercept = float(src.RescaleSlope), float(src.RescaleIntercept)
    for k, stored in enumerate(slices):  # slice k (by position) is in place k, in HU, X along columns
        np.testing.assert_array_equal(image[0, :, :, k].numpy(), (stored * slope + intercept).T.astype(np.float32))
    assert image.meta["modality"] == "CT"
    assert float(image.min()) < -800  # HU, not stored values
    np.testing.assert_allclose(image.meta["spacing"], [0.661468, 0.661468, 2.5], atol=TOL)
    np.testing.assert_allclose(image.meta["origin"], origin, atol=TOL)
    np.testing.assert_allclose(image.meta["direction"], np.eye(3).ravel(), atol=TOL)


def test_dicom_series_round_trips_in_its_study(tmp_path: Path) -> None:
    import pydicom

    src = dicom_testdata("CT_small.dcm")
    folder, _, _ = make_series(tmp_path / "ct", n=4)
    image = read_image(folder)
    out = write_image(image, tmp_path / "derived", reference=image)
    back = read_image(out)
    torch.testing.assert_close(back.as_tensor(), image.as_tensor(), rtol=0, atol=0)  # integral HU: slope 1
    _same_geometry(image, back)
    files = sorted(out.iterdir())
    headers = [pydicom.dcmread(f) for f in files]
    source_uids = {pydicom.dcmread(f).SOPInstanceUID for f in folder.iterdir()}
    assert {h.StudyInstanceUID for h in headers} == {src.StudyInstanceUID}
    assert {h.PatientID for h in headers} == {src.PatientID}
    assert {h.FrameOfReferenceUID for h in headers} == {src.FrameOfReferenceUID}
    assert len({h.SeriesInstanceUID for h in headers}) == 1 and headers[0].SeriesInstanceUID != src.SeriesInstanceUID
    assert len({h.SOPInstanceUID for h in headers}) == len(files) and not source_uids & {h.SOPInstanceUID for h in headers}
    assert all("DERIVED" in h.ImageType for h in headers)
    assert all(h.Modality == "CT" and h.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" for h in headers)
    assert all("RescaleSlope" in h and "RescaleIntercept" in h for h in headers)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
def test_dicom_to_volume_and_back(tmp_path: Path, suffix: str) -> None:
    folder, _, _ = make_series(tmp_path / "mr", name="MR_small.dcm", n=3, step=4.0)
    image = read_image(folder)
    assert image.meta["modality"] == "MR"
    volume = read_image(write_image(image, tmp_path / f"mr{suffix}", reference=image))
    torch.testing.assert_close(volume.as_tensor(), image.as_tensor(), rtol=0, atol=0)
    _same_geometry(image, volume)
    series = read_image(write_image(volume, tmp_path / "mr_dicom", reference=volume))
    torch.testing.assert_close(series.as_tensor(), image.as_tensor(), rtol=0, atol=0)
    _same_geometry(image, series)


def test_oblique_series_geometry(tmp_path: Path) -> None:
    d = _rotation(0.5, 0.25)
    folder, _, origin = make_series(tmp_path / "obl", n=4, step=3.0, orientation=list(d[:, 0]) + list(d[:, 1]))
    image = read_image(folder)
    np.testing.assert_allclose(np.reshape(image.meta["direction"], (3, 3)), d, atol=1e-5)
    np.testing.assert_allclose(image.meta["origin"], origin, atol=TOL)
    assert image.meta["spacing"][2] == pytest.approx(3.0, abs=TOL)
    back = read_image(write_image(image, tmp_path / "obl_out", reference=image))
    _same_geometry(image, back)


def test_float_volume_to_dicom_within_stored_precision(tmp_path: Path) -> None:
    """Non-integral HU (a translated CT) are stored through a fine rescale slope."""
    import pydicom

    image = _image(3, seed=4)
    out = write_image(image, tmp_path / "ct_series")
    back = read_image(out)
    slope = float(pydicom.dcmread(next(out.iterdir())).RescaleSlope)
    assert 0 < slope < 0.05
    assert float((back - image).abs().max()) <= slope / 2 + 1e-3
    _same_geometry(image, back)


def test_single_dicom_file_is_a_one_slice_volume(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    src = dicom_testdata("CT_small.dcm")
    image = read_image(get_testdata_file("CT_small.dcm"))
    assert image.shape == (1, 128, 128, 1)
    np.testing.assert_array_equal(image[0, :, :, 0].numpy(), (src.pixel_array * 1.0 - 1024.0).T)
    np.testing.assert_allclose(image.meta["origin"], [float(v) for v in src.ImagePositionPatient], atol=TOL)
    back = read_image(write_image(image, tmp_path / "one.nii.gz", reference=image))
    torch.testing.assert_close(back.as_tensor(), image.as_tensor(), rtol=0, atol=0)


def test_enhanced_multiframe_dicom(tmp_path: Path) -> None:
    """Frames of an enhanced CT come out ordered by their per-frame positions, rescaled per frame."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    src = dicom_testdata("CT_small.dcm")
    ds = copy.deepcopy(src)
    positions = [5.0, 0.0, 10.0]  # frame order is not position order
    frames = [np.roll(src.pixel_array, 7 * i, axis=0) for i in range(3)]
    slopes = [1.0, 2.0, 0.5]
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack(frames).astype(src.pixel_array.dtype).tobytes()
    for name in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
        delattr(ds, name)

    def item(**groups) -> Dataset:
        out = Dataset()
        for seq_name, attrs in groups.items():
            inner = Dataset()
            for k, v in attrs.items():
                setattr(inner, k, v)
            setattr(out, seq_name, Sequence([inner]))
        return out

    ds.SharedFunctionalGroupsSequence = Sequence(
        [item(PlaneOrientationSequence={"ImageOrientationPatient": [1, 0, 0, 0, 1, 0]}, PixelMeasuresSequence={"PixelSpacing": [0.5, 0.75], "SliceThickness": 5.0})]
    )
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [
            item(
                PlanePositionSequence={"ImagePositionPatient": [-10.0, 20.0, z]},
                PixelValueTransformationSequence={"RescaleSlope": s, "RescaleIntercept": -1024.0, "RescaleType": "HU"},
            )
            for z, s in zip(positions, slopes)
        ]
    )
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path)
    image = read_image(path)
    assert image.shape == (1, 128, 128, 3)
    for k, frame in enumerate([1, 0, 2]):  # by position: 0, 5, 10 mm
        np.testing.assert_allclose(image[0, :, :, k].numpy(), (frames[frame] * slopes[frame] - 1024.0).T)
    np.testing.assert_allclose(image.meta["spacing"], [0.75, 0.5, 5.0], atol=TOL)
    np.testing.assert_allclose(image.meta["origin"], [-10.0, 20.0, 0.0], atol=TOL)


def test_failed_writes_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom
    import SimpleITK as sitk

    image = _image(3)
    calls = {"n": 0}
    real_save = pydicom.Dataset.save_as

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing_save)
    with pytest.raises(OSError):
        write_image(image, tmp_path / "series")
    monkeypatch.setattr(sitk, "WriteImage", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        write_image(image, tmp_path / "a.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_with_other_files_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "series"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="notes.txt"):
        write_image(_image(3), out)
    assert [p.name for p in tmp_path.iterdir()] == ["series"] and [p.name for p in out.iterdir()] == ["notes.txt"]
    first = write_image(_image(3, seed=1), tmp_path / "again")  # an earlier series is replaced
    write_image(_image(3, seed=2), first)
    torch.testing.assert_close(read_image(first).as_tensor(), _image(3, seed=2).as_tensor(), atol=0.02, rtol=0)


def test_write_checks_reference_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        write_image(torch.zeros(1, 4, 4, 4), tmp_path / "a.nii.gz", reference=_image(3))
    with pytest.raises(ValueError, match="channel"):
        write_image(torch.zeros(2, 4, 4, 4), tmp_path / "a.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_list_images(tmp_path: Path, phantom_dir: Path) -> None:
    records = list_images(phantom_dir / "manifest.csv")
    assert records == list_images(phantom_dir)  # a folder with a manifest is read through it
    assert len(records) == 16 and {r.modality for r in records} == {"CT", "MR"}
    assert all(r.path.exists() and r.subject and r.split in ("train", "val", "test") and r.label in (0, 1, 2) for r in records)
    vols = tmp_path / "vols"
    for name in ("b.nii.gz", "a.mha"):
        write_image(_image(3), vols / name)
    make_series(vols / "series", n=2)
    assert [r.path.name for r in list_images(vols)] == ["a.mha", "b.nii.gz", "series"]
    assert list_images(vols / "series") == [ImageRecord(vols / "series")]
    assert list_images(vols / "a.mha") == [ImageRecord(vols / "a.mha")]


def test_translated_output_keeps_the_reference_study_with_its_own_modality(tmp_path: Path) -> None:
    """An MR made from a DICOM CT: the CT's geometry, patient and study; MR modality and SOP class."""
    import pydicom

    folder, _, _ = make_series(tmp_path / "ct", n=3)
    ct = read_image(folder)
    fake_mr = torch.rand(ct.shape) * 500  # a plain tensor, as a network returns it
    out = write_image(fake_mr, tmp_path / "mr", reference=ct, modality="MR")
    mr = read_image(out)
    assert mr.meta["modality"] == "MR" and mr.meta["dicom"]["StudyInstanceUID"] == ct.meta["dicom"]["StudyInstanceUID"]
    _same_geometry(ct, mr)
    header = pydicom.dcmread(next(out.iterdir()))
    assert header.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and header.SeriesInstanceUID != ct.meta["dicom"]["SeriesInstanceUID"]
    assert read_image(write_image(fake_mr, tmp_path / "mr.nii.gz", reference=ct, modality="MR")).meta["modality"] == "MR"
