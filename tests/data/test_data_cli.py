"""`udl-med info`, `convert` and `phantoms`: real runs, and every bad input is exit 2, one line, nothing written."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from udl_med.cli import main
from udl_med.data.geometry import Geometry
from udl_med.data.io import read_image

from datakit import make_series


def _volume(path: Path, array: np.ndarray) -> Path:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((0.8, 0.8, 2.0)[: img.GetDimension()] + (1.0,) * max(0, img.GetDimension() - 3))
    sitk.WriteImage(img, str(path))
    return path


def _good(tmp: Path, name: str = "good.nii") -> Path:
    return _volume(tmp / name, np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32))


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


# Each builder makes one bad input under tmp and returns (what to pass, the path the message must name).
def empty_file(tmp: Path) -> tuple[Path, Path]:
    p = tmp / "empty.nii.gz"
    p.write_bytes(b"")
    return p, p


def truncated_nifti_gz(tmp: Path) -> tuple[Path, Path]:
    p = _truncate(_good(tmp, "cut.nii.gz"))
    return p, p


def truncated_nifti(tmp: Path) -> tuple[Path, Path]:
    p = _truncate(_good(tmp, "cut.nii"))
    return p, p


def truncated_mha(tmp: Path) -> tuple[Path, Path]:
    p = _truncate(_good(tmp, "cut.mha"))
    return p, p


def text_as_nifti(tmp: Path) -> tuple[Path, Path]:
    p = tmp / "notes.nii.gz"
    p.write_text("patient notes, not an image\n" * 20)
    return p, p


def text_as_gzip_nifti(tmp: Path) -> tuple[Path, Path]:
    p = tmp / "notes2.nii.gz"
    with gzip.open(p, "wt") as f:
        f.write("still not an image\n" * 40)
    return p, p


def text_as_dicom(tmp: Path) -> tuple[Path, Path]:
    p = tmp / "notes.dcm"
    p.write_text("not a DICOM file\n" * 20)
    return p, p


def nan_voxels(tmp: Path) -> tuple[Path, Path]:
    a = np.zeros((4, 5, 6), np.float32)
    a[1, 2, 3] = np.nan
    p = _volume(tmp / "nan.nii.gz", a)
    return p, p


def inf_voxels(tmp: Path) -> tuple[Path, Path]:
    a = np.zeros((4, 5, 6), np.float32)
    a[0, 0, 0] = np.inf
    p = _volume(tmp / "inf.mha", a)
    return p, p


def four_d(tmp: Path) -> tuple[Path, Path]:
    p = _volume(tmp / "fmri.nii.gz", np.zeros((3, 4, 5, 6), np.float32))
    return p, p


def mixed_series(tmp: Path) -> tuple[Path, Path]:
    folder = tmp / "mixed"
    make_series(folder, n=3)
    second = tmp / "second"
    make_series(second, n=2)
    for f in second.iterdir():
        f.rename(folder / f"other_{f.name}")
    return folder, folder


def missing_slice(tmp: Path) -> tuple[Path, Path]:
    folder, _, _ = make_series(tmp / "gap", positions=[0.0, 2.5, 5.0, 10.0, 12.5])
    return folder, folder


def uneven_slices(tmp: Path) -> tuple[Path, Path]:
    folder, _, _ = make_series(tmp / "uneven", positions=[0.0, 2.5, 4.0, 7.5])
    return folder, folder


def truncated_dicom_in_series(tmp: Path) -> tuple[Path, Path]:
    folder, _, _ = make_series(tmp / "cut_series", n=3)
    victim = sorted(folder.iterdir())[1]
    _truncate(victim)
    return folder, victim


def manifest_missing_file(tmp: Path) -> tuple[Path, Path]:
    _good(tmp, "a.nii.gz")
    p = tmp / "manifest.csv"
    p.write_text("image,modality\na.nii.gz,CT\nb.nii.gz,CT\n")
    return p, p


def manifest_unknown_modality(tmp: Path) -> tuple[Path, Path]:
    _good(tmp, "a.nii.gz")
    p = tmp / "list.csv"
    p.write_text("image,modality,split\na.nii.gz,PET,train\n")
    return p, p


def manifest_unknown_split(tmp: Path) -> tuple[Path, Path]:
    _good(tmp, "a.nii.gz")
    p = tmp / "splits.csv"
    p.write_text("image,split\na.nii.gz,trian\n")
    return p, p


BAD_INPUTS: list[Callable[[Path], tuple[Path, Path]]] = [
    empty_file,
    truncated_nifti_gz,
    truncated_nifti,
    truncated_mha,
    text_as_nifti,
    text_as_gzip_nifti,
    text_as_dicom,
    nan_voxels,
    inf_voxels,
    four_d,
    mixed_series,
    missing_slice,
    uneven_slices,
    truncated_dicom_in_series,
    manifest_missing_file,
    manifest_unknown_modality,
    manifest_unknown_split,
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("command", ["info", "convert-nifti", "convert-dicom"])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture[str], make_bad, command: str) -> None:
    src = tmp_path / "in"
    src.mkdir()
    bad, named = make_bad(src)
    before = _tree(tmp_path)
    out = tmp_path / "out" / ("x.nii.gz" if command == "convert-nifti" else "series")
    argv = ["info", str(bad)] if command == "info" else ["convert", str(bad), str(out)]
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert str(named) in lines[0] and "error" in lines[0]
    assert "Traceback" not in captured.err
    assert _tree(tmp_path) == before  # nothing written, no temporary files


def test_info_describes_a_volume(phantom_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = phantom_dir / "sub-000" / "ct.nii.gz"
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    image = read_image(path)
    assert info["shape"] == [32, 32, 16] and info["modality"] == "CT"
    np.testing.assert_allclose(info["spacing"], image.meta["spacing"], atol=1e-5)
    np.testing.assert_allclose(info["origin"], image.meta["origin"], atol=1e-5)
    assert len(info["direction"]) == 9
    assert info["min"] == pytest.approx(-1000.0) and 500 < info["max"] <= 1000


def test_info_validates_a_manifest(phantom_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(phantom_dir / "manifest.csv"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["n_images"] == 16 and info["modalities"] == {"CT": 8, "MR": 8}
    assert sum(info["splits"].values()) == 16 and set(info["labels"]) == {"0", "1", "2"}
    assert len(info["images"]) == 16 and info["subjects"] == 8


@pytest.mark.parametrize("output", ["ct.mha", "ct.nrrd", "ct_series"])
def test_convert_keeps_geometry(phantom_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str) -> None:
    src = phantom_dir / "sub-002" / "ct.nii.gz"  # a subject with a rotated direction
    out = tmp_path / output
    assert main(["convert", str(src), str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["output"] == str(out)
    a, b = read_image(src), read_image(out)
    assert a.shape == b.shape and b.meta["modality"] == "CT"
    assert Geometry.from_meta(a.meta).close_to(Geometry.from_meta(b.meta), 1e-4)
    assert not np.allclose(np.reshape(a.meta["direction"], (3, 3)), np.eye(3))
    assert float((a - b).abs().max()) <= (0.02 if output == "ct_series" else 0.0)


def test_convert_dicom_series_to_nifti(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, _, _ = make_series(tmp_path / "series", n=3)
    out = tmp_path / "ct.nii.gz"
    assert main(["convert", str(folder), str(out)]) == 0
    a, b = read_image(folder), read_image(out)
    assert float((a - b).abs().max()) == 0.0
    assert Geometry.from_meta(a.meta).close_to(Geometry.from_meta(b.meta), 1e-4)


def test_convert_unknown_output_format(tmp_path: Path, phantom_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ct.png"
    assert main(["convert", str(phantom_dir / "sub-000" / "ct.nii.gz"), str(out)]) == 2
    assert str(out) in capsys.readouterr().err and not out.exists()


def test_phantoms_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ph"
    assert main(["phantoms", str(out), "--n", "3", "--shape", "16", "16", "8", "--seed", "5", "--format", "dicom", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_subjects"] == 3 and result["format"] == "dicom"
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["n_images"] == 6 and all(img["format"] == "dicom" and img["shape"] == [16, 16, 8] for img in info["images"])


@pytest.mark.parametrize("args", [["--n", "0"], ["--shape", "4", "16", "16"]])
def test_phantoms_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    out = tmp_path / "ph"
    assert main(["phantoms", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0]
    assert not out.exists()
