"""The Python API (``import udl_med``): load_model and its operations on tensors and MetaTensors, train, fid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from monai.data import MetaTensor

import udl_med
from tests.inference.translationkit import tiny_model
from udl_med.data.geometry import Geometry
from udl_med.data.io import read_image
from udl_med.errors import UserError

TINY_DCGAN = {"architecture": "dcgan", "latent_dim": 8, "g_channels": [16, 8], "d_channels": [8, 16]}


def _config(method: str, model: dict[str, Any], manifest: Path, out: Path, **data: Any) -> dict[str, Any]:
    return {
        "method": method,
        "seed": 0,
        "data": {"source": str(manifest), "layout": "2d", "size": [16, 16], "modality": "CT", **data},
        "model": model,
        "train": {"steps": 1, "batch_size": 4, "eval_every": 100, "checkpoint_every": 100, "eval_items": 4, "threads": 1},
        "tracking": {"enabled": False},
        "output_dir": str(out),
    }


@pytest.fixture(scope="module")
def gan(tmp_path_factory, phantom_manifest: Path) -> udl_med.Model:
    report = udl_med.train(_config("gan", TINY_DCGAN, phantom_manifest, tmp_path_factory.mktemp("gan")))
    return udl_med.load_model(report["model_dir"])


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory, phantom_manifest: Path) -> str:
    """A VAE trained through a config FILE and overrides, as ``udl-med train FILE --set ...``."""
    folder = tmp_path_factory.mktemp("vae")
    path = folder / "vae.yaml"
    path.write_text(yaml.safe_dump(_config("vae", {"latent_dim": 4, "channels": [8, 16], "strides": [2, 2]}, phantom_manifest, folder / "run")))
    report = udl_med.train(path, overrides=["train.steps=2", "model.latent_dim=6"])
    assert report["steps"] == 2
    return report["model_dir"]


@pytest.fixture(scope="module")
def cyclegan_dir(tmp_path_factory, phantom_manifest: Path, tracking_uri: str) -> str:
    return tiny_model(tmp_path_factory, phantom_manifest, tracking_uri, "2d", steps=2)["model_dir"]


def test_import_udl_med_stays_light() -> None:
    code = "import sys, udl_med; print(sorted(m for m in ('torch', 'monai', 'mlflow') if m in sys.modules)); print(udl_med.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "[]"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        udl_med.nope  # noqa: B018
    assert {"load_model", "train", "fid", "Model"} <= set(dir(udl_med))


def test_a_gan_samples_volumes_with_the_training_geometry(gan: udl_med.Model, phantom_manifest: Path) -> None:
    assert gan.name == "gan" and gan.operations == ("sample",)
    volumes = gan.sample(3, seed=1)
    assert len(volumes) == 3 and all(isinstance(v, MetaTensor) and v.shape == (1, 16, 16, 1) for v in volumes)
    kept = gan.geometry
    geometry = Geometry.from_ras_affine(volumes[0].affine.numpy())
    assert np.allclose(geometry.spacing, kept.spacing) and np.allclose(geometry.direction, kept.direction)
    low, high = kept.ct_window
    assert all(low - 1e-3 <= float(v.min()) and float(v.max()) <= high + 1e-3 for v in volumes)  # HU
    again, other = gan.sample(3, seed=1), gan.sample(3, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(volumes, again)) and not torch.equal(volumes[0], other[0])
    with pytest.raises(UserError, match="method 'gan' cannot encode; it can: sample"):
        gan.encode(torch.zeros(1, 16, 16, 4))
    with pytest.raises(UserError, match="cannot translate"):
        gan.translate(torch.zeros(1, 16, 16, 4))


def test_a_vae_encodes_a_scan_as_the_encode_command_does(vae_dir: str, phantom_dir: Path, tmp_path: Path) -> None:
    model = udl_med.load_model(vae_dir)
    assert model.operations == ("sample", "encode") and model.method.config.latent_dim == 6  # the override
    ct = phantom_dir / "sub-001" / "ct.nii.gz"
    udl_med.encode(vae_dir, ct, out=tmp_path / "f.npz")  # the command's function, with its arguments
    expected = np.load(tmp_path / "f.npz")["features"][0]
    from monai.transforms import LoadImage

    monai_image = LoadImage(image_only=True, ensure_channel_first=True)(str(ct))  # MONAI's reader: no udl-med meta
    for given in (ct, read_image(ct), monai_image):  # a path, our MetaTensor, MONAI's MetaTensor
        assert torch.allclose(model.encode(given), torch.as_tensor(expected), atol=1e-4)
    other = model.encode(phantom_dir / "sub-004" / "ct.nii.gz")
    assert not torch.allclose(other, torch.as_tensor(expected), atol=1e-3)


def _finer(image: MetaTensor, factor: float) -> MetaTensor:
    """``image`` resampled onto a grid ``factor`` times finer in-plane (MONAI), as a scan of another scanner."""
    from monai.transforms import Spacing

    spacing = Geometry.from_meta(image.meta).spacing
    out = Spacing(pixdim=(spacing[0] / factor, spacing[1] / factor, spacing[2]), mode="bilinear")(image)
    for key in ("spacing", "origin", "direction"):
        out.meta.pop(key, None)
    geometry = Geometry.from_ras_affine(out.affine.numpy())
    return MetaTensor(out.as_tensor(), affine=out.affine, meta={**geometry.as_meta(), "modality": image.meta["modality"]})


def test_translate_keeps_the_inputs_geometry_and_resamples_a_foreign_grid(cyclegan_dir: str, phantom_dir: Path, tmp_path: Path) -> None:
    model = udl_med.load_model(cyclegan_dir)
    assert model.operations == ("translate",)
    mr = read_image(phantom_dir / "sub-000" / "mr.nii.gz")
    sct = model.translate(mr)  # the direction from the image's modality
    assert sct.meta["modality"] == "CT" and sct.shape == mr.shape and torch.equal(sct.affine, mr.affine)
    udl_med.translate(cyclegan_dir, phantom_dir / "sub-000" / "mr.nii.gz", tmp_path / "sct.nii.gz", progress=False)
    assert torch.allclose(sct.as_tensor(), read_image(tmp_path / "sct.nii.gz").as_tensor(), atol=1e-3)

    fine = _finer(mr, 3.0)  # 3x finer in-plane: far from the training grid
    out = model.translate(fine)
    assert out.shape == fine.shape and Geometry.from_meta(out.meta).close_to(Geometry.from_meta(fine.meta))
    assert torch.equal(out.affine, fine.affine)
    # resampled to the training grid and back, the result is the native translation, finer
    coarse_again = _finer(out, 1 / 3.0).as_tensor()[0]
    body = mr.as_tensor()[0] > float(mr.as_tensor().mean())
    n = min(coarse_again.shape[0], body.shape[0]), min(coarse_again.shape[1], body.shape[1])
    diff = (coarse_again[: n[0], : n[1]] - sct.as_tensor()[0, : n[0], : n[1]]).abs()[body[: n[0], : n[1]]]
    unresampled = model.translate(fine.as_tensor(), direction="mr2ct")  # a plain tensor: taken as it is
    assert float(diff.mean()) < 0.1 * float((unresampled - out.as_tensor()).abs().mean())  # 0 HU against 236 HU here
    with pytest.raises(UserError, match="3.00x.*drop --no-resample"):
        model.translate(fine, resample=False)


def test_a_foreign_grid_with_resampling_off_exits_2(cyclegan_dir: str, phantom_dir: Path, tmp_path: Path, capsys) -> None:
    from udl_med.cli import main
    from udl_med.data.writers import write_image

    write_image(_finer(read_image(phantom_dir / "sub-000" / "mr.nii.gz"), 2.0), tmp_path / "fine.nii.gz")
    args = ["translate", cyclegan_dir, str(tmp_path / "fine.nii.gz"), str(tmp_path / "o.nii.gz")]
    assert main([*args, "--no-resample"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs from the model's training grid" in err[0] and not (tmp_path / "o.nii.gz").exists()
    assert main([*args, "--device", "cpu"]) == 0
    out, fine = read_image(tmp_path / "o.nii.gz"), read_image(tmp_path / "fine.nii.gz")
    assert out.shape == fine.shape and Geometry.from_meta(out.meta).close_to(Geometry.from_meta(fine.meta))


def test_fid_and_a_bad_device(gan: udl_med.Model, phantom_dir: Path, tmp_path: Path, capsys) -> None:
    from udl_med.cli import main

    result = udl_med.fid(phantom_dir / "manifest.csv", phantom_dir / "manifest.csv", bootstrap=0)  # positional, as the command
    assert result["fid"] == pytest.approx(0.0, abs=1e-6) and result["n_real"] == result["n_fake"] > 0
    with pytest.raises(TypeError):
        udl_med.fid(phantom_dir, phantom_dir, nonsense=1)
    # images in memory: the API's samples score as the sample command's files do
    udl_med.sample(gan.source, 6, tmp_path / "synth", seed=4)
    by_files = udl_med.fid(phantom_dir / "manifest.csv", tmp_path / "synth", bootstrap=0, kid_subset_size=4)
    in_memory = udl_med.fid(phantom_dir / "manifest.csv", gan.sample(6, seed=4), bootstrap=0, kid_subset_size=4)
    assert in_memory["fid"] == pytest.approx(by_files["fid"], rel=1e-4) and in_memory["n_fake"] == by_files["n_fake"] > 0
    import csv

    rows = list(csv.DictReader((phantom_dir / "manifest.csv").open()))
    real = []
    for row in rows:
        image = read_image(phantom_dir / row["image"])
        image.meta["modality"] = row["modality"]
        real.append(image)
    assert udl_med.fid(real, phantom_dir / "manifest.csv", bootstrap=0)["fid"] == pytest.approx(0.0, abs=1e-3)
    for bad in ([], [np.zeros((1, 4, 4))], torch.zeros(4)):
        with pytest.raises(UserError, match="image"):
            udl_med.fid(bad, phantom_dir, bootstrap=0)
    model_dir = gan.source
    assert main(["sample", model_dir, "--n", "1", "--out", str(tmp_path / "s"), "--device", "tpu9"]) == 2
    assert "device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["encode", model_dir, str(phantom_dir), "--out", str(tmp_path / "f.npz"), "--device", "cuda"]) == 2


def test_a_classifier_classifies_a_scan_as_the_classify_command_does(phantom_dir: Path, tmp_path: Path) -> None:
    import csv

    config = _config(
        "semi_supervised_gan",
        {"d_channels": [4, 8], "g_channels": [8, 4], "latent_dim": 8},
        phantom_dir / "manifest.csv",
        tmp_path / "run",
        semi_supervised=True,
        labels_per_class=1,
        crop="center",
    )
    config["train"]["steps"] = 3
    model_dir = udl_med.train(config)["model_dir"]
    model = udl_med.load_model(model_dir)
    assert model.operations == ("classify",)
    udl_med.classify(model_dir, phantom_dir / "manifest.csv", out=tmp_path / "p.csv")
    rows = {Path(r["image"]).name + r["subject"]: r for r in csv.DictReader((tmp_path / "p.csv").open())}
    for subject in ("sub-000", "sub-003"):
        probs = model.classify(read_image(phantom_dir / subject / "ct.nii.gz"))
        row = rows["ct.nii.gz" + subject]
        expected = torch.tensor([float(row[f"prob_{k}"]) for k in range(len(probs))])
        assert probs.shape == (3,) and torch.allclose(probs, expected, atol=1e-5) and float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(UserError, match="'semi_supervised_gan' cannot sample; it can: classify"):
        model.sample(1)


def test_the_public_api_is_documented_and_typed() -> None:
    import inspect

    for name in udl_med.__all__:
        if name == "__version__":
            continue
        obj = getattr(udl_med, name)
        assert inspect.getdoc(obj), name
        functions = [obj] if not inspect.isclass(obj) else [f for n, f in vars(obj).items() if not n.startswith("_") and callable(f)]
        for function in functions:
            signature = inspect.signature(function)
            assert inspect.getdoc(function), f"{name}.{function.__name__}"
            assert signature.return_annotation is not inspect.Signature.empty, f"{name}.{function.__name__}"
            for parameter in signature.parameters.values():
                if parameter.name not in ("self", "args", "kwargs"):
                    assert parameter.annotation is not inspect.Parameter.empty, f"{name}({parameter.name})"
    doc = inspect.getdoc(udl_med.translate)
    assert "udl-med translate" in doc and "direction: ``ct2mr`` or ``mr2ct``" in doc
    assert list(inspect.signature(udl_med.encode).parameters)[:3] == ["model", "input", "out"]


def test_an_input_in_another_orientation_is_translated_on_the_training_axes_and_comes_back_on_its_own(cyclegan_dir: str, phantom_dir: Path) -> None:
    from monai.transforms import Orientation

    from udl_med.inference.model_grid import axcodes

    model = udl_med.load_model(cyclegan_dir)
    mr = read_image(phantom_dir / "sub-002" / "mr.nii.gz")
    native = model.translate(mr)
    codes = axcodes(mr.affine)
    other = "".join({"L": "R", "R": "L", "P": "A", "A": "P", "I": "S", "S": "I"}[c] for c in codes[:2]) + codes[2]  # in-plane flips
    flipped = Orientation(axcodes=other, labels=(("L", "R"), ("P", "A"), ("I", "S")))(mr)
    flipped = MetaTensor(flipped.as_tensor(), affine=flipped.affine, meta={**Geometry.from_ras_affine(flipped.affine.numpy()).as_meta(), "modality": "MR"})
    assert axcodes(flipped.affine) == other != codes
    out = model.translate(flipped)
    assert torch.equal(out.affine, flipped.affine) and out.shape == flipped.shape and out.meta["modality"] == "CT"
    # reoriented, not resampled: the network sees the native array, and the result is the native one, flipped
    assert torch.allclose(out.as_tensor().flip(1, 2), native.as_tensor(), atol=1e-2)
    with pytest.raises(UserError, match="orientation"):
        model.translate(flipped, resample=False)


def test_encode_and_the_encode_command_resample_a_foreign_grid(vae_dir: str, phantom_dir: Path, tmp_path: Path, capsys) -> None:
    import logging
    import sys

    from udl_med.cli import main

    logging.basicConfig(stream=sys.stderr, force=True)  # not an earlier test's closed capture (main() installed it)
    from udl_med.data.writers import write_image

    model = udl_med.load_model(vae_dir)
    ct = read_image(phantom_dir / "sub-001" / "ct.nii.gz")
    native, fine = model.encode(ct), _finer(ct, 3.0)
    other = model.encode(phantom_dir / "sub-004" / "ct.nii.gz")
    resampled = model.encode(fine)
    as_is = _items_as_is(model, fine)
    # resampled to the training grid, the fine scan encodes close to the native one; taken as it is, not
    assert float((resampled - native).norm()) < 0.5 * float((as_is - native).norm())
    assert float((resampled - native).norm()) < float((other - native).norm())
    with pytest.raises(UserError, match="differs from the model's training grid"):
        model.encode(fine, resample=False)
    write_image(fine, tmp_path / "fine.nii.gz")
    capsys.readouterr()
    assert main(["encode", vae_dir, str(tmp_path / "fine.nii.gz"), "--out", str(tmp_path / "f.npz"), "--no-resample"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "f.npz").exists()
    assert main(["encode", vae_dir, str(tmp_path / "fine.nii.gz"), "--out", str(tmp_path / "f.npz")]) == 0
    assert torch.allclose(torch.as_tensor(np.load(tmp_path / "f.npz")["features"][0]), resampled, atol=1e-3)


def _items_as_is(model: udl_med.Model, image: MetaTensor) -> torch.Tensor:
    """What encode gives ``image`` on its own grid (as a model without a training geometry would)."""
    from udl_med.inference.encode import image_items, item_config
    from udl_med.nets.exported import encode_items

    items = image_items(item_config(model.config.data, "<image>"), image, image.meta["modality"]).items
    with torch.no_grad():
        return encode_items(model.method.encode, items).mean(0)
