"""udl-med synthesize: HU, geometry, manifest, per-class counts, reproducibility, atomicity."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from udl_med.errors import UserError

WINDOW = (-250.0, 250.0)


def _model(folder: Path, manifest: Path, spatial_dims: int, crop: str = "center") -> Path:
    from udl_med.data.datasets import build_dataset, data_spec
    from udl_med.engine.config import validate_config
    from udl_med.engine.model_io import save_model
    from udl_med.methods.lapgan import LAPGAN, LAPGANConfig

    size = [8] * spatial_dims
    model = {"levels": 2, "latent_dim": 8, "coarse_channels": [8], "fine_channels": 4, "fine_blocks": 1, "disc_channels": [4]}
    data = {"source": str(manifest), "layout": f"{spatial_dims}d", "size": size, "labeled": True, "modality": "CT", "ct_window": list(WINDOW), "crop": crop}
    run = validate_config({"method": "lapgan", "data": data, "model": model})
    spec = data_spec(run.data, build_dataset(run.data, run.data.split))  # with the training geometry, as train writes it
    torch.manual_seed(0)
    method = LAPGAN(LAPGANConfig(**model), spec).eval()
    config = run.to_dict()
    save_model(folder, method, config, method.state_dict(), step=1)
    return folder


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "manifest.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_synthesize_writes_hu_geometry_and_manifest(tmp_path: Path, phantom_manifest: Path, spatial_dims: int) -> None:
    from udl_med.data.io import list_images, read_image
    from udl_med.engine.model_io import load_model
    from udl_med.inference.synthesize import synthesize

    model = _model(tmp_path / "model", phantom_manifest, spatial_dims)
    result = synthesize(str(model), tmp_path / "out", n_per_class=3, seed=7)
    out = Path(result["out"])
    rows = _rows(out)
    assert list(rows[0]) == ["image", "label", "modality", "subject", "split", "synthetic", "model", "seed"]
    assert [r["label"] for r in rows] == ["0"] * 3 + ["1"] * 3 + ["2"] * 3 and result["per_class"] == {"0": 3, "1": 3, "2": 3}
    assert {r["synthetic"] for r in rows} == {"1"} and {r["seed"] for r in rows} == {"7"} and {r["modality"] for r in rows} == {"CT"}
    assert len(list_images(out / "manifest.csv")) == 9  # readers accept the synthetic columns
    assert (out / "samples.png").is_file()
    # HU: the inverse of the run's CT window applied to what the model samples (class 0 first, same generator)
    expected = load_model(model).method.sample(3, torch.Generator().manual_seed(7), label=0)[0, 0]
    first = read_image(out / rows[0]["image"])
    hu = (expected.numpy() + 1) / 2 * (WINDOW[1] - WINDOW[0]) + WINDOW[0]
    volume = first[0].numpy()
    assert volume.shape == ((8, 8, 1) if spatial_dims == 2 else (8, 8, 8))
    np.testing.assert_allclose(volume.reshape(hu.shape), hu, atol=1e-2)
    assert volume.min() >= WINDOW[0] - 1e-3 and volume.max() <= WINDOW[1] + 1e-3
    training = read_image(list_images(phantom_manifest)[0].path)
    np.testing.assert_allclose(first.meta["spacing"], training.meta["spacing"], atol=1e-4)  # the training data's spacing
    # reproducible for a seed
    again = synthesize(str(model), tmp_path / "again", n_per_class=3, seed=7)
    for r in rows:
        assert np.array_equal(read_image(out / r["image"]).numpy(), read_image(Path(again["out"]) / r["image"]).numpy())


def test_synthesize_like_a_reference_scan(tmp_path: Path, phantom_manifest: Path) -> None:
    from udl_med.data.geometry import Geometry
    from udl_med.data.io import list_images, read_image
    from udl_med.inference.synthesize import synthesize

    model = _model(tmp_path / "model", phantom_manifest, 2)
    reference = [r for r in list_images(phantom_manifest) if r.modality == "CT"][2].path
    result = synthesize(str(model), tmp_path / "out", n=4, like=reference)
    assert [r["label"] for r in _rows(tmp_path / "out")] == ["0", "0", "1", "2"]  # --n: classes in turn
    ref = read_image(reference)
    image = read_image(Path(result["out"]) / "synthetic_0000.nii.gz")
    assert tuple(image.shape[1:]) == (ref.shape[1], ref.shape[2], 1)  # in-plane size of the reference
    assert Geometry.from_meta(image.meta).close_to(Geometry.from_meta(ref.meta))


def test_a_failure_leaves_no_folder(tmp_path: Path, phantom_manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import udl_med.data.io as data_io
    import udl_med.inference.synthesize as synthesize_module
    from udl_med.inference.synthesize import synthesize

    model = _model(tmp_path / "model", phantom_manifest, 2)
    real_write, calls = data_io.write_image, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(synthesize_module, "write_image", failing)  # the name synthesize writes through
    with pytest.raises(OSError, match="disk full"):
        synthesize(str(model), tmp_path / "out", n=6)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no hidden temporary left either


def test_bad_requests(tmp_path: Path, phantom_manifest: Path) -> None:
    from udl_med.inference.synthesize import synthesize

    model = _model(tmp_path / "model", phantom_manifest, 2)
    with pytest.raises(UserError, match="exactly one of"):
        synthesize(str(model), tmp_path / "a", n=2, n_per_class=2)
    with pytest.raises(UserError, match="at least 1"):
        synthesize(str(model), tmp_path / "a", n_per_class=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(UserError, match="not an empty folder"):
        synthesize(str(model), tmp_path / "full", n=1)


def test_cli_synthesize(tmp_path: Path, phantom_manifest: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    from udl_med.cli import main

    model = _model(tmp_path / "model", phantom_manifest, 2)
    assert main(["synthesize", str(model), "--out", str(tmp_path / "o"), "--n-per-class", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 3
    assert main(["synthesize", str(model), "--out", str(tmp_path / "o"), "--n", "1"]) == 2  # exists: exit 2


def test_the_model_file_keeps_the_training_geometry(tmp_path: Path, phantom_manifest: Path) -> None:
    """Samples take spacing, direction, modality and window from the model file: the training scans may be gone."""
    from udl_med.data.geometry import Geometry
    from udl_med.data.io import list_images, read_image
    from udl_med.engine.model_io import load_model, save_model
    from udl_med.inference.sample import sample_to_dir
    from udl_med.inference.synthesize import synthesize

    model = _model(tmp_path / "model", phantom_manifest, 2)
    loaded = load_model(model)
    kept = loaded.data_spec.geometry
    training = read_image(list_images(phantom_manifest)[0].path)
    np.testing.assert_allclose(kept.spacing, training.meta["spacing"], atol=1e-4)
    assert (kept.modality, kept.ct_window, kept.item_size, kept.slice_axis) == ("CT", WINDOW, (8, 8), 2)
    # the training data moves away: sampling does not read it
    config = {**loaded.config, "data": {**loaded.config["data"], "source": str(tmp_path / "gone.csv")}}
    save_model(tmp_path / "moved", loaded.method, config, loaded.method.state_dict(), step=1)
    report = sample_to_dir(str(tmp_path / "moved"), n=2, out=tmp_path / "s")
    written = read_image(Path(report["out"]) / "sample_0000.nii.gz")
    assert Geometry.from_meta(written.meta).close_to(Geometry.create(kept.spacing, (0.0, 0.0, 0.0), np.reshape(kept.direction, (3, 3))))
    assert report["modality"] == "CT"
    # a model file written before the geometry was kept: a clear refusal, not a 1 mm guess
    old = loaded.method
    old.data = loaded.data_spec.model_copy(update={"geometry": None})
    save_model(tmp_path / "old", old, config, old.state_dict(), step=1)
    with pytest.raises(UserError, match="keeps no training geometry"):
        sample_to_dir(str(tmp_path / "old"), n=1, out=tmp_path / "o")
    with pytest.raises(UserError, match="keeps no training geometry"):
        synthesize(str(tmp_path / "old"), tmp_path / "o2", n=1)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_resized_items_are_written_with_the_resized_spacing(tmp_path: Path, phantom_manifest: Path, spatial_dims: int) -> None:
    """A ``crop: resize`` run shrinks the whole scan onto the item: a sample's voxels are scan size / item size times the scan's."""
    from udl_med.data.io import list_images, read_image
    from udl_med.engine.model_io import load_model
    from udl_med.inference.sample import sample_to_dir

    model = _model(tmp_path / "model", phantom_manifest, spatial_dims, crop="resize")
    kept = load_model(model).data_spec.geometry
    first = read_image(next(r for r in list_images(phantom_manifest) if r.split == "train" and r.modality == "CT").path)
    scan_spacing, shape = np.asarray(first.meta["spacing"], np.float64), np.asarray(first.shape[-3:], np.float64)
    expected = scan_spacing.copy()
    axes = [0, 1, 2] if spatial_dims == 3 else [0, 1]  # slice_axis 2
    expected[axes] = scan_spacing[axes] * shape[axes] / 8
    np.testing.assert_allclose(kept.spacing, scan_spacing, atol=1e-4)  # the scan's grid stays what inputs are compared with
    np.testing.assert_allclose(kept.item_spacing, expected, atol=1e-4)
    written = read_image(Path(sample_to_dir(str(model), n=1, out=tmp_path / "s")["out"]) / "sample_0000.nii.gz")
    np.testing.assert_allclose(written.meta["spacing"], expected, atol=1e-4)
    assert not np.allclose(expected, scan_spacing)  # the phantoms are larger than 8 voxels: the test can fail
