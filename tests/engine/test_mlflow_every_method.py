"""Every method: its run logs an MLflow pyfunc model whose ``predict`` does what the method does,
and ``udl_med.load_model`` gives the same results as the method's command (sample, encode,
translate, classify), with the geometry kept; the commands and the API read ``runs:/``.

One shipped config per method, trained for a few steps on the test phantoms.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import udl_med
from udl_med.data.geometry import Geometry
from udl_med.data.io import read_image
from udl_med.engine.model_io import load_model
from udl_med.inference.sample import as_volume, sample_space, to_physical
from udl_med.methods.base import Capability
from udl_med.nets.exported import probabilities

ROOT = Path(__file__).resolve().parents[2]
FAST = ["train.steps=2", "train.batch_size=4", "train.eval_every=100", "train.checkpoint_every=100", "train.eval_items=4", "train.threads=1"]

# method -> (shipped config, extra overrides that make it train in a few steps)
METHODS: dict[str, tuple[str, list[str]]] = {
    "autoencoder": ("ae2d-phantom", []),
    "denoising_autoencoder": ("dae2d-phantom", ["model.chain_steps=2"]),
    "sparse_autoencoder": ("sae2d-phantom", []),
    "stacked_autoencoder": ("stacked2d-phantom", ["model.layer_steps=1", "train.steps=5"]),
    "vae": ("vae2d-phantom", []),
    "rbm": ("rbm-tiny", ["model.sample_steps=3"]),
    "dbn": ("dbn-tiny", ["model.layer_steps=1", "train.steps=3", "model.sample_steps=3"]),
    "gan": ("dcgan-tiny", ["train.sample_eval=null"]),
    "lapgan": ("lapgan-tiny", []),
    "two_stage_gan": ("two-stage-tiny", ["model.stage1_steps=1", "train.steps=3"]),
    "semi_supervised_gan": ("kplus1-2d-lesion", ["data.labels_per_class=1", "data.foreground_fraction=0.0", "model.d_channels=[8,8,8]", "model.g_channels=[8,8,8]", "model.latent_dim=8"]),
    "cyclegan": ("cyclegan-tiny", []),
    "pix2pix": ("pix2pix-tiny", []),
    "finetune_classifier": ("", []),  # fine-tunes the autoencoder's exported encoder
    "autoencoder-3d": ("ae3d-phantom", ["model.channels=[4,8,8]"]),
    "cyclegan-3d": ("cyclegan3d-phantom", ["model.channels=4", "model.num_res_blocks=1", "model.disc_channels=4", "train.batch_size=2"]),
}


def _train(method: str, manifest: Path, out: Path, uri: str) -> dict[str, Any]:
    tracking = [f"tracking.uri={uri}", "tracking.experiment=tests-every-method", f"tracking.run_name={method}", f"output_dir={out / 'run'}"]
    common = [f"data.source={manifest}", *FAST, *tracking]
    if method != "finetune_classifier":
        config, extra = METHODS[method]
        return udl_med.train(ROOT / "configs" / f"{config}.yaml", overrides=[*common, *extra])
    ae = udl_med.train(ROOT / "configs" / "ae2d-phantom.yaml", overrides=[*common[:-1], f"output_dir={out / 'ae'}", "tracking.enabled=false"])
    encoder = udl_med.export(ae["model_dir"], out / "encoder", fmt="encoder")["out"]
    config = {
        "method": "finetune_classifier",
        "seed": 0,
        "data": {"source": str(manifest), "layout": "2d", "size": [32, 32], "labeled": True, "ct_window": [-160, 240]},
        "model": {"encoder": str(encoder), "head_init_items": 4},
    }
    return udl_med.train(config, overrides=common)


def _items(spec: Any, n: int = 3) -> torch.Tensor:
    return torch.rand(n, spec.in_channels, *spec.image_size, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_logs_an_mlflow_model_and_the_api_does_what_the_command_does(
    method: str, tmp_path: Path, phantom_dir: Path, tracking_uri: str
) -> None:
    report = _train(method, phantom_dir / "manifest.csv", tmp_path, tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{report['run_id']}/model")
    loaded = load_model(report["model_dir"])
    reference, spec = loaded.method, loaded.data_spec
    uri = f"runs:/{report['run_id']}/model"  # what the commands and the API are given
    model = udl_med.load_model(uri)
    expected_ops = {str(c.value) for c in reference.capabilities}
    assert set(model.operations) == set(pyfunc.unwrap_python_model().operations) == expected_ops, method
    assert model.name == method.split("-")[0] and model.geometry is not None
    ct = phantom_dir / "sub-001" / "ct.nii.gz"
    scan = read_image(ct)
    done = set()

    if "sample" in model.operations:
        images = pyfunc.predict([3, 3, 4])
        assert images.shape == (3, spec.in_channels, *spec.image_size) and np.array_equal(images[0], images[1])
        assert -1 <= images.min() and images.max() <= 1
        seeded = reference.sample(1, generator=torch.Generator().manual_seed(4)).detach().float()[0].numpy()
        assert np.allclose(images[2], seeded, atol=1e-5)
        # the command with --seed 3 --n 1 writes what predict([3]) draws, in physical units
        out = udl_med.sample(uri, 1, tmp_path / "s", seed=3)
        written = read_image(Path(out["out"]) / "sample_0000.nii.gz")
        space = sample_space(loaded)
        physical = to_physical(as_volume(torch.as_tensor(images[0]), spec.spatial_dims, space.slice_axis), space.modality, space.ct_window)
        assert torch.allclose(written.as_tensor(), physical, atol=1e-2 * max(1.0, float(physical.abs().max()))), method
        # the API: the same seed, the same volumes as the command, on the training geometry
        volumes = model.sample(1, seed=3)
        assert isinstance(volumes[0], MetaTensor) and torch.allclose(volumes[0].as_tensor(), written.as_tensor(), atol=1e-2 * max(1.0, float(physical.abs().max())))
        assert np.allclose(Geometry.from_ras_affine(volumes[0].affine.numpy()).spacing, model.geometry.spacing)
        done.add("sample")

    if "encode" in model.operations:
        items = _items(spec)
        codes = pyfunc.predict(items.numpy())  # float images: an image operation
        if "translate" not in model.operations and "classify" not in model.operations:
            assert np.allclose(codes, reference.encode(items).detach().float().flatten(1).numpy(), atol=1e-5)
        codes = pyfunc.predict(items.numpy(), params={"operation": "encode"})
        assert codes.shape[0] == 3 and np.allclose(codes, reference.encode(items).detach().float().flatten(1).numpy(), atol=1e-5)
        udl_med.encode(uri, ct, tmp_path / "f.npz")
        features = np.load(tmp_path / "f.npz")["features"][0]
        assert torch.allclose(model.encode(scan), torch.as_tensor(features), atol=1e-4), method
        done.add("encode")

    if "classify" in model.operations:
        items = _items(spec)
        probs = pyfunc.predict(items.numpy(), params={"operation": "classify"})
        assert np.allclose(probs, probabilities(reference.classify(items).detach().float()).numpy(), atol=1e-5)
        assert np.allclose(probs.sum(1), 1, atol=1e-5)
        udl_med.classify(uri, ct, tmp_path / "p.csv")
        row = next(csv.DictReader((tmp_path / "p.csv").open()))
        api = model.classify(scan)
        assert torch.allclose(api, torch.tensor([float(row[f"prob_{k}"]) for k in range(len(api))]), atol=1e-5), method
        done.add("classify")

    if "translate" in model.operations:
        items = _items(spec, 2)
        for direction in reference.directions:
            out = pyfunc.predict(items.numpy(), params={"direction": direction})
            assert np.allclose(out, reference.translate(items, direction).detach().numpy(), atol=1e-5)
        udl_med.translate(uri, ct, tmp_path / "mr.nii.gz", progress=False)
        by_command = read_image(tmp_path / "mr.nii.gz")
        api = model.translate(scan)
        assert api.meta["modality"] == "MR" and torch.equal(api.affine, scan.affine) and api.shape == scan.shape
        assert torch.allclose(api.as_tensor(), by_command.as_tensor(), atol=1e-3), method
        done.add("translate")

    assert done == expected_ops
    for missing in {"sample", "encode", "translate", "classify"} - expected_ops:
        with pytest.raises(ValueError, match=f"cannot {missing}"):
            pyfunc.predict(_items(spec).numpy(), params={"operation": missing})
