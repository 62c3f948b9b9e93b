"""udl-med latent / interpolate / arithmetic / sample --code on the command line: help, real runs, exit 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from udl_med.cli import main
from udl_med.engine.train import train


def _config(method: str, manifest: Path, out: Path, uri: str, model: dict[str, Any], layout: str = "2d", size: tuple[int, ...] = (16, 16)) -> dict[str, Any]:
    return {
        "method": method,
        "seed": 0,
        "data": {"source": str(manifest), "layout": layout, "size": list(size), "modality": "CT"},
        "model": model,
        "train": {"steps": 4, "batch_size": 4, "log_every": 4, "eval_every": 4, "checkpoint_every": 4, "eval_items": 4},
        "tracking": {"uri": uri, "experiment": "latent-cli-tests", "log_model": False},
        "output_dir": str(out),
    }


@pytest.fixture(scope="module")
def models(phantom_manifest: Path, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    vae = {"latent_dim": 2, "channels": [4, 8], "strides": [2, 2], "num_res_units": 0}
    gan = {"architecture": "dcgan", "latent_dim": 4, "g_channels": [8, 4], "d_channels": [4, 8]}
    return {
        "vae": train(_config("vae", phantom_manifest, tmp_path_factory.mktemp("vae"), tracking_uri, vae))["model_dir"],
        "gan": train(_config("gan", phantom_manifest, tmp_path_factory.mktemp("gan"), tracking_uri, gan))["model_dir"],
    }


@pytest.fixture(scope="module")
def gan_3d(phantom_manifest: Path, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    gan = {"architecture": "dcgan", "latent_dim": 4, "g_channels": [8, 4], "d_channels": [4, 8]}
    return train(_config("gan", phantom_manifest, tmp_path_factory.mktemp("gan3d"), tracking_uri, gan, "3d", (16, 16, 16)))["model_dir"]


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("command", ["latent", "interpolate", "arithmetic"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "--out" in capsys.readouterr().out


def test_the_three_commands_on_tiny_models(models: dict[str, str], phantom_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["latent", models["vae"], str(phantom_manifest), "--out", str(tmp_path / "l"), "--n-prior", "8", "--class-names", "none,hypo,hyper", "--json"]) == 0
    result = _json(capsys)
    assert result["runs"][0]["view"] == "codes" and Path(result["figure"]).is_file()
    assert main(["interpolate", models["gan"], "--out", str(tmp_path / "i"), "--steps", "4", "--kind", "slerp", "--json"]) == 0
    result = _json(capsys)
    assert len(result["files"]["slerp"]) == 4 and result["kinds"] == ["slerp"]
    assert main(["arithmetic", models["gan"], "--out", str(tmp_path / "picks"), "--draw", "9", "--json"]) == 0
    codes = _json(capsys)["codes"]
    args = ["arithmetic", models["gan"], "--out", str(tmp_path / "a"), "--expr", "a - b + c", "--json"]
    args += ["--codes", f"a={codes}:0,1,2", "--codes", f"b={codes}:3,4,5", "--codes", f"c={codes}:6,7,8"]
    assert main(args) == 0
    assert _json(capsys)["set_sizes"] == {"a": 3, "b": 3, "c": 3}


def test_bad_input_exits_2_with_one_line(models: dict[str, str], phantom_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        ["latent", models["gan"], str(phantom_manifest), "--out", str(tmp_path / "x")],  # no encoder
        ["interpolate", models["vae"], "--out", str(tmp_path / "x"), "--steps", "1"],
        ["arithmetic", models["vae"], "--out", str(tmp_path / "x")],  # neither --expr nor --draw
        ["arithmetic", models["vae"], "--out", str(tmp_path / "x"), "--expr", "a - b", "--codes", "a"],
        ["sample", models["gan"], "--n", "2", "--out", str(tmp_path / "s"), "--code", "1"],  # a model without InfoGAN codes
    ]
    for args in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error" in err[0], (args, err)
    main(["sample", models["gan"], "--n", "2", "--out", str(tmp_path / "s"), "--code", "1"])
    assert "model.info_codes" in capsys.readouterr().err


def test_interpolate_a_3d_gan_from_the_command_line(gan_3d: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """3-D volumes through the CLI: a NIfTI volume per step on both paths and a PNG strip of each."""
    from udl_med.data.io import read_image  # lazy: only this test reads the written volumes

    assert main(["interpolate", gan_3d, "--out", str(tmp_path / "i"), "--steps", "3", "--json"]) == 0
    result = _json(capsys)
    assert result["kinds"] == ["linear", "slerp"]
    for kind in ("linear", "slerp"):
        assert len(result["files"][kind]) == 3 and Path(result["strips"][kind]).is_file()
        volumes = [read_image(f) for f in result["files"][kind]]
        assert all(v.shape == (1, 16, 16, 16) for v in volumes)
        assert not np.allclose(np.asarray(volumes[0]), np.asarray(volumes[-1]))  # the ends are different codes
    # slerp keeps the norm between the ends' norms more than the straight line (which cuts towards 0)
    assert min(result["norms"]["slerp"]) >= min(result["norms"]["linear"]) - 1e-6
