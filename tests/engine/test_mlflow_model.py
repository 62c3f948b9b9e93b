"""Every run logs a model MLflow loads (pyfunc) whose ``predict`` does what the method's command does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch

from tests.inference.translationkit import tiny_model
from udl_med.cli import main
from udl_med.engine.model_io import load_model
from udl_med.engine.train import train

TINY_DCGAN = {"architecture": "dcgan", "latent_dim": 8, "g_channels": [16, 8], "d_channels": [8, 16]}
TINY_VAE = {"latent_dim": 4, "channels": [8, 16], "strides": [2, 2]}


def _train(method: str, model: dict[str, Any], manifest: Path, out: Path, uri: str) -> dict[str, Any]:
    return train(
        {
            "method": method,
            "seed": 0,
            "data": {"source": str(manifest), "layout": "2d", "size": [16, 16], "modality": "CT"},
            "model": model,
            "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2, "eval_items": 4},
            "tracking": {"uri": uri, "experiment": "tests-mlflow-model", "run_name": method},
            "output_dir": str(out),
        }
    )


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory, phantom_manifest: Path, tracking_uri: str) -> dict[str, Any]:
    return _train("gan", TINY_DCGAN, phantom_manifest, tmp_path_factory.mktemp("gan"), tracking_uri)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, phantom_manifest: Path, tracking_uri: str) -> dict[str, Any]:
    return _train("vae", TINY_VAE, phantom_manifest, tmp_path_factory.mktemp("vae"), tracking_uri)


def _pyfunc(run: dict[str, Any], uri: str) -> Any:
    mlflow.set_tracking_uri(uri)
    return mlflow.pyfunc.load_model(f"runs:/{run['run_id']}/model")


def _seeded(method: Any, seed: int) -> torch.Tensor:
    return method.sample(1, generator=torch.Generator().manual_seed(seed)).float()


def test_a_gan_run_logs_a_pyfunc_model_that_samples_what_sample_draws(gan_run: dict[str, Any], tracking_uri: str) -> None:
    model = _pyfunc(gan_run, tracking_uri)
    images = model.predict(3)  # N: seeds 0, 1, 2
    assert images.shape == (3, 1, 16, 16) and images.dtype == np.float32
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
    method = load_model(gan_run["model_dir"]).method  # what `udl-med sample` loads
    for seed in (0, 2):
        assert np.allclose(images[seed], _seeded(method, seed)[0].numpy(), atol=1e-6)
    again = model.predict([2, 2, 5])
    assert np.array_equal(again[0], again[1]) and np.allclose(again[0], images[2], atol=1e-6) and not np.allclose(again[0], again[2])
    assert model.unwrap_python_model().operations == ("sample",)
    with pytest.raises(ValueError, match="'gan' cannot encode; it can: sample"):
        model.predict(np.zeros((1, 1, 16, 16), np.float32), params={"operation": "encode"})


def test_a_vae_run_logs_what_sample_uses_plus_encode(vae_run: dict[str, Any], tracking_uri: str) -> None:
    model = _pyfunc(vae_run, tracking_uri)
    method = load_model(vae_run["model_dir"]).method
    samples = model.predict([7])
    assert samples.shape == (1, 1, 16, 16) and np.allclose(samples[0], _seeded(method, 7)[0].numpy(), atol=1e-6)
    items = torch.rand(3, 1, 16, 16) * 2 - 1
    codes = model.predict(items.numpy())  # float images: encode
    assert codes.shape == (3, 4) and np.allclose(codes, method.encode(items).detach().numpy(), atol=1e-5)
    assert not np.allclose(codes[0], codes[1])
    assert model.unwrap_python_model().operations == ("sample", "encode")
    with pytest.raises(ValueError, match="'vae' cannot translate"):
        model.predict(items.numpy(), params={"operation": "translate"})


def test_a_cyclegan_run_logs_both_directions(tmp_path_factory, phantom_manifest: Path, tracking_uri: str) -> None:
    report = tiny_model(tmp_path_factory, phantom_manifest, tracking_uri, "2d", steps=2, log_model=True)
    model = _pyfunc(report, tracking_uri)
    method = load_model(report["model_dir"]).method
    items = torch.rand(2, 1, 32, 32) * 2 - 1
    outputs = {}
    for direction in ("ct2mr", "mr2ct"):
        outputs[direction] = model.predict(items.numpy(), params={"direction": direction})
        expected = method.translate(items, direction).detach().numpy()
        assert outputs[direction].shape == (2, 1, 32, 32) and np.allclose(outputs[direction], expected, atol=1e-5)
    assert not np.allclose(outputs["ct2mr"], outputs["mr2ct"])
    assert np.allclose(model.predict(items.numpy()), outputs["ct2mr"])  # the default: the first direction


def test_registered_models_work_in_commands(gan_run: dict[str, Any], tracking_uri: str, tmp_path: Path, monkeypatch, capsys) -> None:
    import json

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    version = mlflow.register_model(f"runs:/{gan_run['run_id']}/model", "tiny-gan").version
    for uri in (f"runs:/{gan_run['run_id']}/model", f"models:/tiny-gan/{version}"):
        out = tmp_path / uri.split(":")[0]
        assert main(["sample", uri, "--n", "2", "--out", str(out), "--json"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 2
        assert len(list(out.glob("*.nii.gz"))) == 2
    assert mlflow.pyfunc.load_model(f"models:/tiny-gan/{version}").predict(1).shape == (1, 1, 16, 16)
