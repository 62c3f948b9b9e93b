"""udl-med classify and export --format classifier on a tiny K+1 model trained on phantoms."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from udl_med import keys
from udl_med.cli import main


@pytest.fixture(scope="module")
def kplus1_model(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A K+1 model trained for a few steps on CT slices of the session phantoms, 1 labeled subject per class."""
    from udl_med.engine.train import train

    out = tmp_path_factory.mktemp("kplus1")
    config = {
        "method": "semi_supervised_gan",
        "seed": 0,
        "data": {
            "source": str(phantom_dir / "manifest.csv"),
            "size": [16, 16],
            "modality": "CT",
            "semi_supervised": True,
            "labels_per_class": 1,
            "crop": "center",
        },
        "model": {"d_channels": [4, 8], "g_channels": [8, 4], "latent_dim": 8},
        "train": {"steps": 6, "batch_size": 4, "eval_every": 6, "eval_items": 8, "device": "cpu", "threads": 1, "ema_decay": 0.9},
        "tracking": {"enabled": False},
        "output_dir": str(out / "run"),
    }
    return Path(train(config)["model_dir"])


def _read(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_classify_a_manifest_reports_metrics(kplus1_model: Path, phantom_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "predictions.csv"
    assert main(["classify", str(kplus1_model), str(phantom_dir / "manifest.csv"), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = _read(out)
    assert len(rows) == result["n_images"] == 8 and result["n_skipped"] == 8  # CT model: the MR rows are skipped
    assert set(rows[0]) == {"image", "subject", "label", "predicted", "prob_0", "prob_1", "prob_2", "n_items"}
    for row in rows:
        probs = np.array([float(row[f"prob_{k}"]) for k in range(3)])
        assert probs.sum() == pytest.approx(1.0, abs=1e-5) and int(row["predicted"]) == int(probs.argmax())
        assert int(row["n_items"]) >= 1
    for key in ("accuracy", "balanced_accuracy", "macro_auc"):
        assert key in result and (result[key] is None or 0.0 <= result[key] <= 1.0)
    labels = np.array([int(r["label"]) for r in rows])
    predicted = np.array([int(r["predicted"]) for r in rows])
    assert result["accuracy"] == pytest.approx(float((labels == predicted).mean()))


def test_classify_a_folder_and_a_dicom_series(kplus1_model: Path, phantom_dir: Path, tmp_path: Path) -> None:
    from udl_med.data.phantoms import write_phantoms

    folder = tmp_path / "volumes"
    folder.mkdir()
    for sub in ("sub-000", "sub-001"):
        shutil.copy(phantom_dir / sub / "ct.nii.gz", folder / f"{sub}.nii.gz")
    out = tmp_path / "folder.csv"
    assert main(["classify", str(kplus1_model), str(folder), "--out", str(out)]) == 0
    assert [Path(r["image"]).name for r in _read(out)] == ["sub-000.nii.gz", "sub-001.nii.gz"]
    assert all(r["label"] == "" for r in _read(out))

    dicom = tmp_path / "dicom"
    write_phantoms(dicom, n=1, shape=(32, 32, 16), seed=0, fmt="dicom")
    series = dicom / "sub-000" / "ct"
    out = tmp_path / "series.csv"
    assert main(["classify", str(kplus1_model), str(series), "--out", str(out)]) == 0
    (row,) = _read(out)
    # the same subject as NIfTI and as a DICOM series (integer HU): the same slices, nearly the same probabilities
    twin = write_phantoms(tmp_path / "nifti", n=1, shape=(32, 32, 16), seed=0, fmt="nifti")
    assert main(["classify", str(kplus1_model), str(Path(twin["out"]) / "sub-000" / "ct.nii.gz"), "--out", str(tmp_path / "twin.csv")]) == 0
    (nifti,) = _read(tmp_path / "twin.csv")
    assert row["n_items"] == nifti["n_items"]
    for k in range(3):
        assert float(row[f"prob_{k}"]) == pytest.approx(float(nifti[f"prob_{k}"]), abs=0.02)


def test_unreadable_input_exits_2_and_writes_nothing(kplus1_model: Path, phantom_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "volumes"
    folder.mkdir()
    shutil.copy(phantom_dir / "sub-000" / "ct.nii.gz", folder / "a.nii.gz")
    (folder / "b.nii.gz").write_bytes(b"not a nifti file at all")
    out = tmp_path / "predictions.csv"
    assert main(["classify", str(kplus1_model), str(folder), "--out", str(out)]) == 2
    assert not out.exists() and not list(tmp_path.glob(".predictions*"))
    assert main(["classify", str(kplus1_model), str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert main(["classify", str(kplus1_model), str(folder / "a.nii.gz"), "--out", str(tmp_path / "p.txt")]) == 2
    assert not out.exists()


def test_exported_classifier_gives_the_classify_probabilities(kplus1_model: Path, phantom_dir: Path, tmp_path: Path) -> None:
    from udl_med.engine.model_io import load_model
    from udl_med.inference.encode import image_items, item_config
    from udl_med.inference.export_classifier import load_classifier

    export = tmp_path / "classifier"
    assert main(["export", str(kplus1_model), str(export), "--format", "classifier"]) == 0
    spec = json.loads((export / keys.CLASSIFIER_JSON).read_text())
    assert spec["class"] == "monai.networks.nets.Classifier" and spec["num_classes"] == 3
    assert spec["input"]["image_size"] == [16, 16] and spec["input"]["modality"] == "CT" and "pooling" in spec["input"]
    # a MONAI user's load: the class by name, the state dict strictly
    import monai.networks.nets as nets

    net = getattr(nets, spec["class"].rsplit(".", 1)[1])(**spec["kwargs"])
    net.load_state_dict(torch.load(export / keys.CLASSIFIER_WEIGHTS, weights_only=True), strict=True)
    net.eval()
    loaded, _ = load_classifier(export)
    method = load_model(kplus1_model).method
    data = load_model(kplus1_model).config["data"]
    image = phantom_dir / "sub-002" / "ct.nii.gz"
    items = image_items(item_config(data, image), image, "CT").items
    with torch.no_grad():
        exported = torch.softmax(net(items), dim=1)
        assert torch.allclose(exported, torch.softmax(loaded(items), dim=1))
    assert torch.allclose(exported, method.classify(items), atol=1e-6)
    out = tmp_path / "one.csv"
    assert main(["classify", str(kplus1_model), str(image), "--out", str(out)]) == 0
    (row,) = _read(out)
    assert np.allclose([float(row[f"prob_{k}"]) for k in range(3)], exported.mean(0).numpy(), atol=1e-5)


def test_semi_supervised_pipeline_and_demo_steps_validate() -> None:
    from udl_med.demo import demo_steps
    from udl_med.inference.classify import classify_to_file
    from udl_med.pipeline import STEP_KINDS, load_pipeline

    root = Path(__file__).resolve().parents[2]
    pipeline = load_pipeline(root / "pipelines" / "semi-supervised.yaml")
    kinds = [s.run for s in pipeline.steps]
    assert kinds.count("train") == 2 and kinds.count("classify") == 2 and "export" in kinds
    assert STEP_KINDS["classify"].function() is classify_to_file
    names = {s["name"] for s in demo_steps()}
    assert {"kplus1", "supervised_only", "kplus1_classify", "supervised_only_classify"} <= names
    # both learn from and are judged on liver-centred crops (on whole slices neither arm learned)
    steps = {s["name"]: s for s in demo_steps()}
    assert steps["kplus1_crops"]["run"] == "lesion_slices" and steps["kplus1_crops"]["with"]["crop"] == [16, 16]
    for arm in ("kplus1", "supervised_only"):
        assert steps[arm]["with"]["config"].endswith("kplus1-2d-liver-crops.yaml")
        assert "data.source=${steps.kplus1_crops.manifest}" in steps[arm]["with"]["set"]
        assert steps[f"{arm}_classify"]["with"]["input"] == "${steps.kplus1_heldout_crops.manifest}"
    by_name = {s.name: s for s in pipeline.steps}
    assert by_name["crops"].run == "lesion_slices" and str(by_name["train"].with_["config"]).endswith("kplus1-2d-liver-crops.yaml")
    assert by_name["classify"].with_["input"] == "${steps.heldout_crops.manifest}"
