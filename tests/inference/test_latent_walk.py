"""interpolate / arithmetic / draw on VAE, GAN and conditional GAN models trained by the engine, 2D and 3D."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from udl_med.data.io import list_images, read_image
from udl_med.engine.model_io import load_model
from udl_med.engine.train import train
from udl_med.errors import UserError
from udl_med.inference.encode import image_items, item_config
from udl_med.inference.latent_walk import arithmetic_to_dir, draw_to_dir, interpolate_to_dir, scan_items


def _config(method: str, manifest: Path, out: Path, uri: str, layout: str, size: list[int], labeled: bool = False, steps: int = 6, **model: Any) -> dict[str, Any]:
    return {
        "method": method,
        "seed": 0,
        "data": {"source": str(manifest), "layout": layout, "size": size, "modality": "CT", "crop": "resize", "labeled": labeled},
        "model": model,
        "train": {"steps": steps, "batch_size": 4, "log_every": steps, "eval_every": steps, "checkpoint_every": steps, "eval_items": 4},
        "tracking": {"uri": uri, "experiment": "latent-walk-tests", "log_model": False},
        "output_dir": str(out),
    }


VAE = {"latent_dim": 4, "channels": [4, 8], "strides": [2, 2], "num_res_units": 0, "lr": 3e-3}
GAN = {"architecture": "dcgan", "latent_dim": 8, "g_channels": [16, 8], "d_channels": [8, 16], "lr": 1e-3}


@pytest.fixture(scope="module")
def vae_2d(phantom_manifest: Path, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return train(_config("vae", phantom_manifest, tmp_path_factory.mktemp("vae"), tracking_uri, "2d", [32, 32], **VAE))["model_dir"]


@pytest.fixture(scope="module")
def cgan_2d(phantom_manifest: Path, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return train(_config("gan", phantom_manifest, tmp_path_factory.mktemp("cgan"), tracking_uri, "2d", [16, 16], labeled=True, conditional=True, **GAN))["model_dir"]


@pytest.fixture(scope="module")
def gan_3d(phantom_manifest: Path, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return train(_config("gan", phantom_manifest, tmp_path_factory.mktemp("gan3d"), tracking_uri, "3d", [16, 16, 16], steps=4, **GAN))["model_dir"]


def _ct(manifest: Path) -> list[Path]:
    return [r.path for r in list_images(manifest) if r.modality == "CT"]


def test_vae_interpolation_between_prior_codes_writes_both_paths(vae_2d: str, tmp_path: Path) -> None:
    report = interpolate_to_dir(vae_2d, tmp_path / "i", steps=5, seed=3)
    for kind in ("linear", "slerp"):
        files = report["files"][kind]
        assert len(files) == 5 and all(Path(f).name == f"step_{i:03d}.nii.gz" for i, f in enumerate(files))
        image = read_image(files[0])
        assert image.shape == (1, 32, 32, 1)  # a 2D step is a one-slice volume
        assert Path(report["strips"][kind]).stat().st_size > 0
    codes = np.load(tmp_path / "i" / "codes.npz")
    np.testing.assert_allclose(codes["linear"][[0, -1]], codes["slerp"][[0, -1]], atol=1e-6)  # same ends
    lin, sph = report["norms"]["linear"], report["norms"]["slerp"]
    assert lin[2] < min(lin[0], lin[-1])  # linear passes through lower-norm codes
    assert sph[2] >= min(sph[0], sph[-1]) - 1e-4
    assert (tmp_path / "i" / "interpolation.png").stat().st_size > 0


def test_vae_interpolation_between_two_scans_starts_at_the_first_scans_code(vae_2d: str, phantom_manifest: Path, tmp_path: Path) -> None:
    a, b = _ct(phantom_manifest)[:2]
    report = interpolate_to_dir(vae_2d, tmp_path / "i", steps=3, source_from=a, source_to=b, kind="slerp")
    loaded = load_model(vae_2d)
    items, _ = scan_items(loaded, a)
    expected = loaded.method.encode(items).numpy()[0]
    np.testing.assert_allclose(np.load(tmp_path / "i" / "codes.npz")["slerp"][0], expected, rtol=1e-4, atol=1e-5)
    # written on the item's grid: the scan's direction, the in-plane centre of the scan (crop: resize), the middle slice
    import nibabel as nib

    scan, step = nib.load(str(a)), nib.load(report["files"]["slerp"][0])
    centre = lambda im, index: (im.affine @ np.r_[index, 1.0])[:3]  # noqa: E731
    middle = image_items(item_config(loaded.run_config.data, a), a, None).positions
    middle = middle[len(middle) // 2]
    expected_centre = centre(scan, [(scan.shape[0] - 1) / 2, (scan.shape[1] - 1) / 2, middle])
    np.testing.assert_allclose(centre(step, [(step.shape[0] - 1) / 2, (step.shape[1] - 1) / 2, 0]), expected_centre, atol=1e-3)
    np.testing.assert_allclose(np.asarray(step.header.get_zooms()[:2]) * 32, np.asarray(scan.header.get_zooms()[:2]) * scan.shape[:2], rtol=1e-4)
    assert report["projection"] == {}  # an encoder, no projection


def test_conditional_gan_interpolates_between_classes(cgan_2d: str, tmp_path: Path) -> None:
    report = interpolate_to_dir(cgan_2d, tmp_path / "i", steps=4, label_from=0, label_to=2)
    assert report["classes"] == [0, 2]
    assert len(report["files"]["linear"]) == 4
    with pytest.raises(UserError, match="not a class"):
        interpolate_to_dir(cgan_2d, tmp_path / "j", steps=3, label_to=7)


def test_gan_3d_interpolation_from_a_projected_scan_reports_its_error(gan_3d: str, tmp_path: Path) -> None:
    drawn = draw_to_dir(gan_3d, tmp_path / "d", n=2, seed=1)
    sample = drawn["files"][0]
    assert read_image(sample).shape == (1, 16, 16, 16)
    report = interpolate_to_dir(gan_3d, tmp_path / "i", steps=3, source_from=sample, kind="slerp")
    error = report["projection"]["from"]
    # a sample of the generator itself: projection finds an image much closer than the image's spread
    assert error["projection_mse"] < 0.1 * error["target_variance"], error
    assert read_image(report["files"]["slerp"][1]).shape == (1, 16, 16, 16)


def test_refusals(vae_2d: str, gan_3d: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="steps"):
        interpolate_to_dir(vae_2d, tmp_path / "a", steps=1)
    with pytest.raises(UserError, match="unconditional"):
        interpolate_to_dir(vae_2d, tmp_path / "b", steps=3, label_from=1)
    with pytest.raises(UserError, match="unknown interpolation"):
        interpolate_to_dir(gan_3d, tmp_path / "c", steps=3, kind="cubic")


def test_arithmetic_over_picked_codes_averages_each_set(vae_2d: str, tmp_path: Path) -> None:
    drawn = draw_to_dir(vae_2d, tmp_path / "d", n=9, seed=0)
    codes = np.load(drawn["codes"])["codes"]
    assert codes.shape == (9, 4) and len(drawn["files"]) == 9
    sets = {"a": f"{drawn['codes']}:0,1,2", "b": f"{drawn['codes']}:3,4,5", "c": f"{drawn['codes']}:6,7,8"}
    report = arithmetic_to_dir(vae_2d, tmp_path / "r", "a - b + c", sets, variants=3)
    result = np.load(tmp_path / "r" / "result.npz")["codes"]
    expected = codes[0:3].mean(0) - codes[3:6].mean(0) + codes[6:9].mean(0)
    np.testing.assert_allclose(result[0], expected, rtol=1e-5, atol=1e-6)
    assert result.shape == (3, 4) and len(report["files"]) == 3
    assert report["set_sizes"] == {"a": 3, "b": 3, "c": 3} and report["rows"] == ["a", "b", "c", "result"]
    assert Path(report["grid"]).stat().st_size > 0
    with pytest.raises(UserError, match="at least 3 codes"):
        arithmetic_to_dir(vae_2d, tmp_path / "s", "a - b", {"a": f"{drawn['codes']}:0,1", "b": sets["b"]})
    with pytest.raises(UserError, match="--codes c="):
        arithmetic_to_dir(vae_2d, tmp_path / "s", "a - c", {"a": sets["a"]})
    with pytest.raises(UserError, match="--expr"):
        arithmetic_to_dir(vae_2d, tmp_path / "s", "a * b", sets)


def test_arithmetic_with_sets_of_scans_through_the_encoder(vae_2d: str, phantom_manifest: Path, tmp_path: Path) -> None:
    report = arithmetic_to_dir(vae_2d, tmp_path / "r", "scans + scans - scans", {"scans": phantom_manifest.parent / "manifest.csv"}, variants=1)
    n = len(list_images(phantom_manifest))
    assert report["set_sizes"] == {"scans": n}
    loaded = load_model(vae_2d)
    items, _ = scan_items(loaded, phantom_manifest)
    mean = loaded.method.encode(items).mean(0)
    np.testing.assert_allclose(np.load(tmp_path / "r" / "result.npz")["codes"][0], mean.numpy(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.as_tensor(report["result_norm"]), mean.norm(), rtol=1e-4, atol=1e-5)
