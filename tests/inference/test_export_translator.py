"""export --format bundle|torchscript: the bundle runs under monai.bundle and matches udl-med translate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from translationkit import tiny_model

from udl_med.cli import main
from udl_med.data.geometry import TOLERANCE_MM
from udl_med.data.io import read_image
from udl_med.engine.model_io import LoadedModel, load_model
from udl_med.errors import UserError
from udl_med.inference.export import export_model
from udl_med.inference.export_translator import export_bundle, export_torchscript
from udl_med.inference.translate import translate_path
from udl_med.methods.base import DataSpec, get_method


@pytest.fixture(scope="module")
def model_2d(tmp_path_factory, phantom_manifest, tracking_uri) -> str:
    return tiny_model(tmp_path_factory, phantom_manifest, tracking_uri, "2d")["model_dir"]


def run_bundle(bundle: Path, image: Path, out: Path, direction: str) -> None:
    """``python -m monai.bundle run``, as a MONAI user runs the bundle."""
    args = {"config_file": str(bundle / "configs" / "inference.json"), "meta_file": str(bundle / "configs" / "metadata.json"),
            "bundle_root": str(bundle), "input": str(image), "output_dir": str(out), "direction": direction}
    cmd = [sys.executable, "-m", "monai.bundle", "run"] + [f"--{k}={v}" for k, v in args.items()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("direction,name", [("mr2ct", "mr.nii.gz"), ("ct2mr", "ct.nii.gz")])
def test_bundle_runs_and_matches_translate(direction: str, name: str, model_2d: str, phantom_dir: Path, tmp_path: Path) -> None:
    result = export_model(model_2d, tmp_path / "bundle", fmt="bundle")
    assert result["directions"] == ["ct2mr", "mr2ct"] and result["default_direction"] == "mr2ct"
    meta = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert {"version", "monai_version", "network_data_format", "task"} <= set(meta)
    image = phantom_dir / "sub-002" / name  # a rotated grid
    run_bundle(tmp_path / "bundle", image, tmp_path / "out", direction)
    written = list((tmp_path / "out").glob("*.nii.gz"))
    assert len(written) == 1
    bundle_out, src = read_image(written[0]), read_image(image)
    assert tuple(bundle_out.shape) == tuple(src.shape)
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(bundle_out.meta[key], src.meta[key], atol=TOLERANCE_MM)
    translate_path(model_2d, image, tmp_path / "ours.nii.gz", direction=direction, progress=False)
    ours = read_image(tmp_path / "ours.nii.gz")
    # same normalisation, same windows, same blending: the same volume (HU for CT, 0..1000 for MR)
    np.testing.assert_allclose(bundle_out.numpy(), ours.numpy(), atol=0.5)
    # CycleGAN's ResNet generator is udl-med's: the bundle says it needs udl-med
    assert result["needs_udl_med"] and result["network"] == "udl_med.nets.resnet_generator.ResNetGenerator"
    assert "udl-med" in meta["required_packages_version"] and "udl-med installed" in meta["description"]
    assert "ResNetGenerator` is not a MONAI class" in (tmp_path / "bundle" / "docs" / "README.md").read_text()


TINY_PIX2PIX = {"channels": [4, 8, 16], "strides": [2, 2], "disc_channels": 4, "disc_layers": 2}

# Parses the bundle with MONAI's ConfigParser in a process where ``import udl_med`` fails,
# runs the bundle's own initialize + run (writes the NIfTI), and saves the network's
# output on a fixed input for the parent to compare with the udl-med generator.
_MONAI_ONLY = """
import sys
sys.modules["udl_med"] = None  # any import of udl_med now raises ImportError
import torch
from monai.bundle import ConfigParser
bundle, image, out, direction, x_path, y_path = sys.argv[1:7]
parser = ConfigParser()
parser.read_config(f"{bundle}/configs/inference.json")
parser.read_meta(f"{bundle}/configs/metadata.json")
parser.update({"bundle_root": bundle, "input": image, "output_dir": out, "direction": direction, "device": "$torch.device('cpu')"})
parser.get_parsed_content("initialize")
parser.get_parsed_content("run")
net = parser.get_parsed_content("network")
assert type(net[0]).__module__.startswith("monai."), type(net[0])
with torch.no_grad():
    torch.save(net(torch.load(x_path)), y_path)
assert not any(m == "udl_med" or m.startswith("udl_med.") for m, v in sys.modules.items() if v is not None)
"""


@pytest.fixture(scope="module")
def pix2pix_2d(tmp_path_factory, phantom_manifest, tracking_uri) -> str:
    return tiny_model(tmp_path_factory, phantom_manifest, tracking_uri, "2d", steps=10, method="pix2pix", model=TINY_PIX2PIX)["model_dir"]


def test_pix2pix_bundle_runs_with_monai_alone(pix2pix_2d: str, phantom_dir: Path, tmp_path: Path) -> None:
    """pix2pix's bundle names monai.networks.nets.UNet and runs where udl_med cannot be imported."""
    result = export_model(pix2pix_2d, tmp_path / "bundle", fmt="bundle")
    assert result["network"] == "monai.networks.nets.UNet" and not result["needs_udl_med"]
    text = (tmp_path / "bundle" / "configs" / "inference.json").read_text()
    assert "udl_med" not in text
    meta = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert "udl-med" not in meta["required_packages_version"]
    direction, image = "mr2ct", phantom_dir / "sub-002" / "mr.nii.gz"
    x = torch.rand(2, 1, 32, 32) * 2 - 1  # the training size, as the inferer feeds it
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "monai_only.py"
    script.write_text(_MONAI_ONLY)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "bundle"), str(image), str(tmp_path / "out"), direction, str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = load_model(pix2pix_2d)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), loaded.method.translate(x, direction), atol=1e-5, rtol=1e-5)
    written = list((tmp_path / "out").glob("*.nii.gz"))
    assert len(written) == 1
    translate_path(pix2pix_2d, image, tmp_path / "ours.nii.gz", direction=direction, progress=False)
    np.testing.assert_allclose(read_image(written[0]).numpy(), read_image(tmp_path / "ours.nii.gz").numpy(), atol=0.5)


def test_torchscript(model_2d: str, tmp_path: Path) -> None:
    loaded = load_model(model_2d)
    result = export_torchscript(loaded, tmp_path / "ts")
    info = json.loads((tmp_path / "ts" / "translator.json").read_text())
    assert info["directions"] == ["ct2mr", "mr2ct"] and info["CT"]["low"] == -1000.0
    x = torch.rand(2, 1, 40, 36) * 2 - 1  # not the training size
    for d in ("ct2mr", "mr2ct"):
        net = torch.jit.load(str(tmp_path / "ts" / f"{d}.ts"))
        with torch.no_grad():
            torch.testing.assert_close(net(x), loaded.method.translate(x, d), atol=1e-5, rtol=1e-5)
    assert len(result["files"]) == 3


def test_cli_export_and_refusals(model_2d: str, tmp_path: Path, capsys) -> None:
    assert main(["export", model_2d, str(tmp_path / "ts"), "--format", "torchscript", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["format"] == "torchscript"
    cls = get_method("autoencoder")
    spec = DataSpec(spatial_dims=2, in_channels=1, image_size=(32, 32))
    not_a_translator = LoadedModel(method=cls(cls.Config(), spec), config={}, data_spec=spec, source="ae", folder=tmp_path)
    with pytest.raises(UserError, match="cannot translate"):
        export_bundle(not_a_translator, tmp_path / "b")
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "b"), "--format", "bundle"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
