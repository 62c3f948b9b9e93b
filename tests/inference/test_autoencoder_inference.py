"""sample, encode and export --format encoder on autoencoder-family models trained by the engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from udl_med import keys
from udl_med.cli import main
from udl_med.data.io import list_images, read_image
from udl_med.engine.model_io import load_model
from udl_med.engine.train import train
from udl_med.errors import UserError
from udl_med.inference.encode import encode_to_file, image_items, item_config
from udl_med.inference.export import export_model
from udl_med.inference.export_encoder import build_encoder, load_encoder
from udl_med.inference.sample import sample_to_dir


def run_config(method: str, manifest: Path, out: Path, uri: str, layout: str, size: list[int], **model: Any) -> dict[str, Any]:
    return {
        "method": method,
        "seed": 0,
        "data": {"source": str(manifest), "layout": layout, "size": size, "modality": "CT"},
        "model": {"latent_dim": 6, "channels": [4, 8], "strides": [2, 2], "num_res_units": 0, "lr": 3e-3, **model},
        "train": {"steps": 12, "batch_size": 4, "log_every": 6, "eval_every": 12, "checkpoint_every": 12, "eval_items": 8},
        "tracking": {"uri": uri, "experiment": "autoencoder-inference-tests", "log_model": False},
        "output_dir": str(out),
    }


@pytest.fixture(scope="module")
def vae_2d(phantom_manifest: Path, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("vae2d")
    return train(run_config("vae", phantom_manifest, out, tracking_uri, "2d", [32, 32], traversal_dims=3))


@pytest.fixture(scope="module")
def dae_3d(phantom_manifest: Path, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("dae3d")
    return train(run_config("denoising_autoencoder", phantom_manifest, out, tracking_uri, "3d", [16, 16, 16], chain_steps=4, chain_frames=3))


def test_vae_samples_are_nifti_in_hounsfield_units_with_training_spacing(vae_2d, phantom_manifest: Path, tmp_path: Path) -> None:
    report = sample_to_dir(vae_2d["model_dir"], n=3, out=tmp_path / "s", seed=1)
    files = sorted((tmp_path / "s").glob("sample_*.nii.gz"))
    assert len(files) == 3 and report["modality"] == "CT"
    image = read_image(files[0])
    assert image.shape == (1, 32, 32, 1)  # a 2D sample is one slice across slice_axis 2
    assert -1000.0 <= float(image.min()) and float(image.max()) <= 1000.0 and float(image.std()) > 1.0  # HU, not [-1, 1]
    first_ct = next(r for r in list_images(phantom_manifest) if r.modality == "CT" and r.split == "train")
    np.testing.assert_allclose(image.meta["spacing"], read_image(first_ct.path).meta["spacing"], atol=1e-4)
    for png in ("samples.png", "traversal.png"):
        assert (tmp_path / "s" / png).stat().st_size > 0
    assert [r.path.name for r in list_images(tmp_path / "s" / "manifest.csv")] == [f.name for f in files]
    # same seed, same samples
    sample_to_dir(vae_2d["model_dir"], n=3, out=tmp_path / "t", seed=1)
    np.testing.assert_array_equal(read_image(tmp_path / "t" / files[0].name).numpy(), image.numpy())
    with pytest.raises(UserError, match="unconditional"):
        sample_to_dir(vae_2d["model_dir"], n=1, out=tmp_path / "u", label=1)


def test_denoising_chain_sampling_3d(dae_3d, tmp_path: Path) -> None:
    report = sample_to_dir(dae_3d["model_dir"], n=2, out=tmp_path / "s")
    image = read_image(tmp_path / "s" / "sample_0000.nii.gz")
    assert image.shape == (1, 16, 16, 16)
    assert "chain.png" in {Path(p).name for p in report["artifacts"]}


def test_encode_writes_one_vector_per_image_with_its_path(vae_2d, phantom_manifest: Path, tmp_path: Path) -> None:
    report = encode_to_file(vae_2d["model_dir"], phantom_manifest, tmp_path / "f.npz")
    records = list_images(phantom_manifest)
    data = np.load(tmp_path / "f.npz")
    assert data["features"].shape == (len(records), 6) == (report["n_images"], report["n_features"])
    assert list(data["paths"]) == [str(r.path) for r in records]
    assert list(data["label"]) == [r.label for r in records]
    # the vector of an image is the mean posterior mean of its slices
    loaded = load_model(vae_2d["model_dir"])
    cut = image_items(item_config(loaded.config["data"], records[0].path), records[0].path, records[0].modality)
    assert cut.items.shape[1:] == (1, 32, 32) and len(cut.items) == data["n_items"][0]
    np.testing.assert_allclose(data["features"][0], loaded.method.encode(cut.items).mean(0).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fixture", ["vae_2d", "dae_3d"])
def test_exported_encoder_loads_strictly_into_the_named_monai_class(fixture: str, request, tmp_path: Path) -> None:
    model_dir = request.getfixturevalue(fixture)["model_dir"]
    report = export_model(model_dir, tmp_path / "enc", fmt="encoder")
    spec = json.loads((tmp_path / "enc" / keys.ENCODER_JSON).read_text())
    assert spec["class"] == report["class"] == "monai.networks.nets.Regressor"
    # what a downstream user does, without udl-med
    import monai.networks.nets as nets

    net = getattr(nets, spec["class"].rsplit(".", 1)[1])(**spec["kwargs"])
    net.load_state_dict(torch.load(tmp_path / "enc" / keys.ENCODER_WEIGHTS, weights_only=True), strict=True)
    net.eval()
    loaded = load_model(model_dir)
    x = torch.rand(2, *[spec["input"]["in_channels"], *spec["input"]["image_size"]]) * 2 - 1
    torch.testing.assert_close(net(x), loaded.method.encode(x))
    assert spec["out_features"] == 6 and spec["input"]["ct_window"] == [-1000.0, 1000.0]
    random_init = load_encoder(tmp_path / "enc", pretrained=False, seed=0).net
    assert not torch.allclose(random_init(x), net(x))


def test_build_encoder_refuses_classes_outside_monai_nets() -> None:
    with pytest.raises(UserError, match="not in monai.networks.nets"):
        build_encoder("os.system", {})
    with pytest.raises(UserError):
        build_encoder("monai.networks.nets.NoSuchNet", {})


def test_cli_encode_sample_export(vae_2d, phantom_manifest: Path, tmp_path: Path, capsys) -> None:
    model = vae_2d["model_dir"]
    assert main(["encode", model, str(phantom_manifest), "--out", str(tmp_path / "f.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_features"] == 6
    assert main(["sample", model, "--n", "2", "--out", str(tmp_path / "s"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 2
    assert main(["export", model, str(tmp_path / "e"), "--format", "encoder", "--json"]) == 0
    assert (tmp_path / "e" / keys.ENCODER_WEIGHTS).is_file()
    # bad input: one line, exit 2
    assert main(["encode", model, str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "g.npz")]) == 2
    assert main(["encode", model, str(phantom_manifest), "--out", str(tmp_path / "g.csv")]) == 2
    assert main(["sample", model, "--n", "0", "--out", str(tmp_path / "z")]) == 2
    assert main(["sample", str(tmp_path / "no-model"), "--n", "1", "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith("udl-med ") for line in err if "error" in line)
