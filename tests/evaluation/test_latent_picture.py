"""udl-med latent's library function: codes of a labeled manifest, the figures, and runs side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from udl_med.engine.train import train
from udl_med.errors import UserError
from udl_med.evaluation.latent import latent_picture


def _config(method: str, manifest: Path, out: Path, uri: str, **model: Any) -> dict[str, Any]:
    return {
        "method": method,
        "seed": 0,
        "data": {"source": str(manifest), "layout": "2d", "size": [16, 16], "modality": "CT", "ct_window": [-200, 300]},
        "model": {"channels": [4, 8], "strides": [2, 2], "num_res_units": 0, "lr": 3e-3, **model},
        "train": {"steps": 8, "batch_size": 4, "log_every": 8, "eval_every": 8, "checkpoint_every": 8, "eval_items": 4},
        "tracking": {"uri": uri, "experiment": "latent-picture-tests", "log_model": False, "run_name": method},
        "output_dir": str(out),
    }


@pytest.fixture(scope="module")
def models(phantom_manifest: Path, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        "vae": train(_config("vae", phantom_manifest, tmp_path_factory.mktemp("vae"), tracking_uri, latent_dim=2))["model_dir"],
        "ae": train(_config("autoencoder", phantom_manifest, tmp_path_factory.mktemp("ae"), tracking_uri, latent_dim=5))["model_dir"],
    }


def test_latent_picture_of_a_vae_and_an_autoencoder_side_by_side(models: dict[str, str], phantom_manifest: Path, tmp_path: Path) -> None:
    report = latent_picture(models["vae"], phantom_manifest, tmp_path / "out", compare=[models["ae"]], n_prior=16, class_names=("none", "hypo", "hyper"))
    vae, ae = report["runs"]
    assert (vae["method"], vae["view"], vae["latent_dim"]) == ("vae", "codes", 2)
    assert (ae["method"], ae["view"], ae["latent_dim"]) == ("autoencoder", "pca", 5)
    for run in (vae, ae):
        assert run["n_items"] > 0 and run["kl_to_prior"] >= 0 and run["recon_mse"] >= 0 and run["mean_image_mse"] > 0
        codes = np.load(run["codes"])
        assert codes["codes"].shape == (run["n_items"], run["latent_dim"]) and codes["xy"].shape == (run["n_items"], 2)
        assert set(codes["labels"].tolist()) == set(run["classes"])
    assert vae["fid_prior"] is not None and vae["fid_prior"] >= 0  # the VAE samples its prior
    assert ae["fid_prior"] is None  # an autoencoder has no prior
    assert "variances" in np.load(vae["codes"]).files
    assert len(vae["classes"]) >= 2 and vae["silhouette"] is not None
    figure = Path(report["figure"])
    from PIL import Image

    with Image.open(figure) as image:
        assert image.width > 2 * image.height * 0.8  # two panels side by side
    assert json.loads((tmp_path / "out" / "latent.json").read_text())["runs"][0]["name"] == "vae"


def test_a_model_without_an_encoder_is_refused(phantom_manifest: Path, tracking_uri: str, tmp_path: Path) -> None:
    config = _config("gan", phantom_manifest, tmp_path / "gan", tracking_uri)
    config["model"] = {"architecture": "dcgan", "latent_dim": 4, "g_channels": [8, 4], "d_channels": [4, 8]}
    config["train"]["steps"] = 1
    model = train(config)["model_dir"]
    with pytest.raises(UserError, match="no encoder"):
        latent_picture(model, phantom_manifest, tmp_path / "out")
