"""udl-med translate: geometry kept (NIfTI, DICOM, rotated grids), CT out in HU, 2D/2.5D/3D, folders, bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from translationkit import tiny_model

from udl_med.cli import main
from udl_med.data.geometry import TOLERANCE_MM
from udl_med.data.io import list_images, read_image
from udl_med.engine.model_io import load_model
from udl_med.errors import InputError, UserError
from udl_med.inference import translate as tr
from udl_med.inference import translation_setup, window_engines
from udl_med.inference.translate import TranslationSetup, translate_image, translate_path


@pytest.fixture(scope="module")
def model_2d(tmp_path_factory, phantom_manifest, tracking_uri) -> str:
    return tiny_model(tmp_path_factory, phantom_manifest, tracking_uri, "2d")["model_dir"]


@pytest.fixture(scope="module")
def model_3d(tmp_path_factory, phantom_manifest, tracking_uri) -> str:
    return tiny_model(tmp_path_factory, phantom_manifest, tracking_uri, "3d", steps=3)["model_dir"]


def assert_same_geometry(out, ref) -> None:
    assert tuple(out.shape) == tuple(ref.shape)
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(out.meta[key], ref.meta[key], atol=TOLERANCE_MM, err_msg=key)


def rotated_subject(manifest: Path) -> tuple[Path, Path]:
    """(ct, mr) of a phantom subject whose direction is not the identity."""
    for row in csv.DictReader(manifest.open()):
        if row["modality"] == "CT":
            ct = manifest.parent / row["image"]
            if not np.allclose(read_image(ct).meta["direction"], np.eye(3).ravel()):
                return ct, ct.with_name("mr.nii.gz")
    raise AssertionError("the phantoms have no rotated subject")


def test_nifti_rotated_grid_mr_to_ct_in_hu(model_2d: str, phantom_manifest: Path, tmp_path: Path) -> None:
    ct_path, mr_path = rotated_subject(phantom_manifest)
    result = translate_path(model_2d, mr_path, tmp_path / "sct.nii.gz", progress=False)
    assert result["direction"] == "mr2ct"  # from the input's modality
    mr, sct = read_image(mr_path), read_image(tmp_path / "sct.nii.gz")
    assert_same_geometry(sct, mr)
    assert sct.meta["modality"] == "CT"
    # HU: exactly the network's [-1, 1] output mapped through the run's CT window (-1000, 1000)
    loaded = load_model(model_2d)
    setup = TranslationSetup.from_config(loaded.config)
    x = tr.to_unit(mr.as_tensor()[0], tr.input_params(mr.as_tensor()[0], "MR", setup))  # (X, Y, Z)
    with torch.no_grad():
        k = x.shape[2] // 2
        net = loaded.method.translate(x[None, None, :, :, k], "mr2ct")[0, 0]  # one slice fits one window
    torch.testing.assert_close(sct.as_tensor()[0, :, :, k], (net + 1) * 1000 - 1000, atol=0.05, rtol=0)
    assert -1000 <= float(sct.min()) and float(sct.max()) <= 1000
    # it has learned something: body brighter than air, and closer to the truth than a constant
    ct = read_image(ct_path).as_tensor()[0]
    body = ct > -500
    assert float(sct[0][body].mean()) > float(sct[0][~body].mean()) + 300


def test_dicom_series_in_and_out(model_2d: str, tmp_path: Path) -> None:
    from udl_med.data.phantoms import write_phantoms

    write_phantoms(tmp_path / "dcm", n=3, shape=(32, 32, 8), seed=1, fmt="dicom")
    ct_dir = tmp_path / "dcm" / "sub-002" / "ct"  # the rotated subject
    ct = read_image(ct_dir)
    assert not np.allclose(ct.meta["direction"], np.eye(3).ravel())
    result = translate_path(model_2d, ct_dir, tmp_path / "smr", direction="ct2mr", progress=False)
    smr = read_image(tmp_path / "smr")
    assert result["direction"] == "ct2mr" and smr.meta["modality"] == "MR"
    assert_same_geometry(smr, ct)
    src, out = ct.meta["dicom"], smr.meta["dicom"]
    assert out["PatientID"] == src["PatientID"] and out["StudyInstanceUID"] == src["StudyInstanceUID"]
    assert out["SeriesInstanceUID"] != src["SeriesInstanceUID"]  # a new, derived series
    # DICOM in, NIfTI out
    translate_path(model_2d, ct_dir, tmp_path / "smr.nii.gz", progress=False)
    assert_same_geometry(read_image(tmp_path / "smr.nii.gz"), ct)
    np.testing.assert_allclose(read_image(tmp_path / "smr.nii.gz").numpy(), smr.numpy(), atol=0.05)


def test_chunks_do_not_change_the_result(model_2d: str, phantom_manifest: Path, tmp_path: Path, monkeypatch) -> None:
    mr_path = phantom_manifest.parent / "sub-000" / "mr.nii.gz"
    translate_path(model_2d, mr_path, tmp_path / "a.nii.gz", progress=False)
    monkeypatch.setattr(window_engines, "SLICE_PIXELS", 32 * 32 * 2)  # two slices per chunk
    monkeypatch.setattr(translation_setup, "PERCENTILE_SAMPLE", 10_000)  # MR percentiles from a strided sample
    translate_path(model_2d, mr_path, tmp_path / "b.nii.gz", progress=False)
    a, b = read_image(tmp_path / "a.nii.gz").numpy(), read_image(tmp_path / "b.nii.gz").numpy()
    assert np.abs(a - b).max() < 5.0  # HU; only the sampled percentiles differ


def test_3d_model_is_monai_sliding_window(model_3d: str, phantom_manifest: Path, tmp_path: Path) -> None:
    from monai.inferers import sliding_window_inference

    ct_path, _ = rotated_subject(phantom_manifest)
    translate_path(model_3d, ct_path, tmp_path / "smr.nii.gz", progress=False)
    ct, smr = read_image(ct_path), read_image(tmp_path / "smr.nii.gz")
    assert_same_geometry(smr, ct)
    loaded = load_model(model_3d)
    x = (ct.as_tensor().clamp(-1000, 1000) / 1000)[None]  # the CT window, (1, 1, X, Y, Z)
    with torch.no_grad():
        y = sliding_window_inference(
            x, (16, 16, 16), 4, lambda p: loaded.method.translate(p, "ct2mr"), overlap=0.25, mode="gaussian", cval=-1.0
        )
    expected = (y[0, 0] + 1) * 500  # MR output scale (0, 1000)
    np.testing.assert_allclose(smr.numpy()[0], expected.numpy(), atol=0.05)
    image2d = read_image(ct_path)[..., 0]
    with pytest.raises(InputError, match="3D model"):
        translate_image(loaded.method, image2d, "ct2mr", TranslationSetup.from_config(loaded.config), progress=False)


def test_2_5d_model(tmp_path_factory, phantom_manifest: Path, tracking_uri: str, tmp_path: Path) -> None:
    model = tiny_model(tmp_path_factory, phantom_manifest, tracking_uri, "2.5d", steps=2)["model_dir"]
    mr_path = phantom_manifest.parent / "sub-001" / "mr.nii.gz"
    translate_path(model, mr_path, tmp_path / "sct.nii.gz", progress=False)
    assert_same_geometry(read_image(tmp_path / "sct.nii.gz"), read_image(mr_path))


def test_manifest_and_folder_inputs_report_failures(model_2d: str, phantom_dir: Path, tmp_path: Path) -> None:
    result = translate_path(model_2d, phantom_dir / "manifest.csv", tmp_path / "all", direction="mr2ct", progress=False)
    assert result["volumes"] == 16 and result["translated"] == 8 and result["skipped"] == 8 and result["failed"] == 0
    assert (tmp_path / "all" / "sub-003" / "mr_mr2ct.nii.gz").is_file()
    # the output folder lists what it holds, so it is an input to fid, info or train
    records = list_images(tmp_path / "all")
    assert len(records) == 8 and {r.modality for r in records} == {"CT"}
    # a folder of volumes with one broken file: the others are still translated
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(phantom_dir / "sub-000" / "ct.nii.gz", folder / "a_ct.nii.gz")
    shutil.copy(phantom_dir / "sub-001" / "mr.nii.gz", folder / "b_mr.nii.gz")
    (folder / "c_broken.nii.gz").write_bytes(b"not a nifti file at all")
    result = translate_path(model_2d, folder, tmp_path / "out", progress=False)
    assert (result["translated"], result["failed"]) == (2, 1)
    assert "c_broken.nii.gz" in result["failures"][0]
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"a_ct_ct2mr.nii.gz", "b_mr_mr2ct.nii.gz", "manifest.csv"}
    assert read_image(tmp_path / "out" / "a_ct_ct2mr.nii.gz").meta["modality"] == "MR"


def test_direction_rules(model_2d: str, phantom_dir: Path) -> None:
    assert tr.resolve_direction(None, "CT", ("ct2mr", "mr2ct"), "x") == "ct2mr"
    assert tr.resolve_direction(None, None, ("mr2ct",), "x") == "mr2ct"
    with pytest.raises(InputError, match="--direction"):
        tr.resolve_direction(None, None, ("ct2mr", "mr2ct"), "x")
    with pytest.raises(InputError, match="needs a CT input"):
        tr.resolve_direction("ct2mr", "MR", ("ct2mr", "mr2ct"), "x")
    with pytest.raises(UserError, match="only mr2ct"):
        tr.resolve_direction("ct2mr", "CT", ("mr2ct",), "x")


@pytest.mark.parametrize(
    "case",
    ["missing_input", "png_output", "wrong_modality", "bad_model", "file_output_for_folder"],
)
def test_bad_inputs_exit_2_with_one_line(case: str, model_2d: str, phantom_dir: Path, tmp_path: Path, capsys) -> None:
    mr = str(phantom_dir / "sub-000" / "mr.nii.gz")
    args = {
        "missing_input": [model_2d, str(tmp_path / "nope.nii.gz"), str(tmp_path / "o.nii.gz")],
        "png_output": [model_2d, mr, str(tmp_path / "o.png")],
        "wrong_modality": [model_2d, mr, str(tmp_path / "o.nii.gz"), "--direction", "ct2mr"],
        "bad_model": [str(tmp_path / "no-model"), mr, str(tmp_path / "o.nii.gz")],
        "file_output_for_folder": [model_2d, str(phantom_dir / "manifest.csv"), str(tmp_path / "o.nii.gz")],
    }[case]
    assert main(["translate", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("udl-med translate: error:")
    assert not (tmp_path / "o.nii.gz").exists()


def test_cli_json_and_mlflow_uri(tmp_path_factory, phantom_manifest: Path, tracking_uri: str, tmp_path: Path, capsys, monkeypatch) -> None:
    import json

    report = tiny_model(tmp_path_factory, phantom_manifest, tracking_uri, "2d", steps=2, log_model=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    mr = phantom_manifest.parent / "sub-000" / "mr.nii.gz"
    assert main(["translate", f"runs:/{report['run_id']}/model", str(mr), str(tmp_path / "o.nii.gz"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["direction"] == "mr2ct" and result["method"] == "cyclegan"
    assert_same_geometry(read_image(tmp_path / "o.nii.gz"), read_image(mr))
