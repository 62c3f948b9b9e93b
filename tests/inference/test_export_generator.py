"""``udl-med export --format generator``: a GAN's generator as TorchScript, with its latent spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from udl_med.cli import main
from udl_med.engine.model_io import load_model

TINY_DCGAN = {"architecture": "dcgan", "latent_dim": 8, "g_channels": [16, 8], "d_channels": [8, 16]}


def _gan(tmp_path: Path, manifest: Path, model: dict[str, Any]) -> str:
    from udl_med.engine.train import train

    config = {
        "method": "gan",
        "seed": 0,
        "data": {"source": str(manifest), "layout": "2d", "size": [16, 16], "modality": "CT", "labeled": True},
        "model": {**TINY_DCGAN, **model},
        "train": {"steps": 1, "batch_size": 4, "eval_every": 100, "checkpoint_every": 100, "eval_items": 4, "threads": 1},
        "tracking": {"enabled": False},
        "output_dir": str(tmp_path / "run"),
    }
    return train(config)["model_dir"]


@pytest.mark.parametrize("model", [{}, {"conditional": True}, {"latent_mixture": {"components": 3}}], ids=["plain", "conditional", "mixture"])
def test_the_exported_generator_is_gs_network_with_its_latent_spec(model: dict[str, Any], phantom_manifest: Path, tmp_path: Path, capsys) -> None:
    model_dir = _gan(tmp_path, phantom_manifest, model)
    out = tmp_path / "exported"
    assert main(["export", model_dir, str(out), "--format", "generator", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["latent_dim"] == 8
    spec = json.loads((out / "generator.json").read_text())
    g = torch.jit.load(str(out / "generator.ts"))  # torch alone
    method = load_model(model_dir).method
    z = torch.randn(3, spec["inputs"]["z"]["shape"][1])
    labels = torch.tensor([0, 1, 2]) if "labels" in spec["inputs"] else None
    images = g(z, labels) if labels is not None else g(z)
    assert images.shape == (3, *spec["output"]["shape"][1:]) == (3, 1, 16, 16)
    assert torch.allclose(images, method._generate(z, labels), atol=1e-5)  # what sample computes from z
    assert spec["output"]["to_physical"]["unit"] == "HU" and spec["geometry"]["modality"] == "CT"
    if model.get("conditional"):
        assert spec["inputs"]["labels"]["num_classes"] == method.num_classes >= 2 and spec["call"] == "generator(z, labels)"
    if "latent_mixture" in model:
        assert spec["inputs"]["z"]["distribution"] == "mixture"
        assert torch.allclose(torch.tensor(spec["inputs"]["z"]["means"]), method.prior.means)
        assert torch.allclose(torch.tensor(spec["inputs"]["z"]["stds"]), method.prior.log_std.exp())
    else:
        assert spec["inputs"]["z"]["distribution"] == "normal"


def test_a_model_without_a_single_latent_is_refused(tmp_path: Path, phantom_manifest: Path, capsys) -> None:
    from udl_med.engine.train import train

    config = {
        "method": "vae",
        "seed": 0,
        "data": {"source": str(phantom_manifest), "layout": "2d", "size": [16, 16], "modality": "CT"},
        "model": {"latent_dim": 4, "channels": [8, 16], "strides": [2, 2]},
        "train": {"steps": 1, "batch_size": 4, "eval_every": 100, "checkpoint_every": 100, "eval_items": 4, "threads": 1},
        "tracking": {"enabled": False},
        "output_dir": str(tmp_path / "run"),
    }
    model_dir = train(config)["model_dir"]
    capsys.readouterr()
    assert main(["export", model_dir, str(tmp_path / "g"), "--format", "generator"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'vae' has no single-latent generator" in err[0]
