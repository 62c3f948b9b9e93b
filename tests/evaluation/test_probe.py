"""The encoder probe: its pieces on hand-made cases, its items on phantoms, and the pretraining pipeline."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from udl_med.data.io import list_images, read_image
from udl_med.engine.model_io import LoadedModel
from udl_med.errors import InputError, UserError
from udl_med.inference.export_encoder import export_encoder
from udl_med.methods.base import DataSpec, get_method
from udl_med.evaluation.probe import (
    fit_linear_head,
    linear_probe_accuracy,
    probe_items,
    probe_step,
    split_subjects,
)

ROOT = Path(__file__).resolve().parents[2]
INPUT = {"layout": "2d", "size": [16, 16], "slice_axis": 2, "ct_window": [-160.0, 240.0]}


@pytest.mark.parametrize("num_classes", [2, 3])
def test_linear_head_reproduces_the_logistic_regression(num_classes: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 5)) * [1, 10, 0.1, 3, 1] + [0, 5, 0, -2, 1]
    labels = np.arange(90) % num_classes
    x[:, 0] += labels * 2.0
    head = fit_linear_head(x, labels, num_classes=num_classes + 1, c=1.0)  # one class absent from training
    ours = head(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy()
    mean, std = x.mean(0), x.std(0) + 1e-6
    reference = LogisticRegression(C=1.0, max_iter=5000).fit((x - mean) / std, labels).predict((x - mean) / std)
    assert (ours == reference).mean() > 0.98
    assert (ours != num_classes).all()  # the absent class is never predicted


def test_linear_probe_scores_informative_and_useless_features() -> None:
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(30), 4).astype(str)
    labels = np.repeat(np.arange(30) % 3, 4)
    informative = np.eye(3)[labels] + 0.1 * rng.normal(size=(120, 3))
    noise = rng.normal(size=(120, 3))
    assert linear_probe_accuracy(informative, labels, subjects) == 1.0
    assert linear_probe_accuracy(noise, labels, subjects) < 0.6
    with pytest.raises(InputError):
        linear_probe_accuracy(noise[:4], labels[:4], subjects[:4])


def test_split_subjects_draws_a_fraction_of_each_class() -> None:
    subjects = np.repeat([f"s{i}" for i in range(30)], 3)
    labels = np.repeat(np.arange(30) % 3, 3)
    mask = split_subjects(labels, subjects, 0.2, seed=0)
    chosen = np.unique(subjects[mask])
    assert len(chosen) == 6 and sorted(np.bincount(labels[mask] // 1)[:3] // 3) == [2, 2, 2]
    assert all(mask[subjects == s].all() for s in chosen)  # whole subjects, never part of one
    assert not np.array_equal(mask, split_subjects(labels, subjects, 0.2, seed=1))
    tiny = split_subjects(labels, subjects, 0.01, seed=0)
    assert len(np.unique(subjects[tiny])) == 3  # at least one subject per class


def test_probe_items_are_liver_centred_and_show_their_label(phantom_dir: Path) -> None:
    manifest = phantom_dir / "manifest.csv"
    data = probe_items(manifest, INPUT)
    assert data.roi == "liver" and data.items.shape[1:] == (1, 16, 16)
    assert len(data.labels) == len(data.subjects) == len(data.items)
    records = list_images(manifest)
    assert set(np.unique(data.subjects)) == {r.subject for r in records}
    # every lesion-subject item comes from a slice the lesion reaches
    lesion_subject = next(r for r in records if r.label and r.modality == "CT")
    tissue = read_image(lesion_subject.path.parent / "tissue.nii.gz")[0].numpy()
    lesion_slices = {k for k in range(tissue.shape[2]) if (tissue[:, :, k] == 6).any()}
    n_ct = (data.subjects == lesion_subject.subject).sum() // 2  # CT and MR items per slice
    assert 0 < n_ct <= len(lesion_slices)

    whole = probe_items(manifest, INPUT, roi="whole", split="test")
    assert whole.roi == "whole" and whole.parts is not None and len(whole.parts) == len(whole.labels)
    with pytest.raises(UserError, match="roi"):
        probe_items(manifest, INPUT, roi="kidney")


def test_probe_needs_labels(tmp_path: Path, phantom_dir: Path) -> None:
    rows = ["image,modality,subject", f"{phantom_dir / 'sub-000' / 'ct.nii.gz'},CT,sub-000"]
    (tmp_path / "unlabeled.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match="label"):
        probe_items(tmp_path / "unlabeled.csv", INPUT)


def test_probe_step_compares_an_exported_encoder_with_random_init(phantom_dir: Path, tmp_path: Path) -> None:
    cls = get_method("autoencoder")
    spec = DataSpec(spatial_dims=2, in_channels=1, image_size=(16, 16))
    method = cls(cls.Config(latent_dim=4, channels=(4, 8), strides=(2, 2), num_res_units=0), spec).eval()
    config = {"method": "autoencoder", "data": {"source": "x", **INPUT}, "model": {"latent_dim": 4, "channels": [4, 8], "strides": [2, 2], "num_res_units": 0}}
    loaded = LoadedModel(method=method, config=config, data_spec=spec, source="test", folder=tmp_path)
    export_encoder(loaded, tmp_path / "enc")
    result = probe_step(str(tmp_path / "enc"), str(phantom_dir / "manifest.csv"), seed=0, quick=True, finetune_steps=5)
    for key in ("linear_probe/pretrained", "linear_probe/random", "finetune/pretrained", "finetune/random", "chance"):
        assert 0.0 <= result[key] <= 1.0
    assert result["linear_probe/gain"] == pytest.approx(result["linear_probe/pretrained"] - result["linear_probe/random"])
    assert result["n_subjects"] == 8 and result["n_finetune_subjects"] >= 3


@pytest.mark.slow
def test_pretrain_encoder_pipeline_runs_each_step_as_a_nested_run(tmp_path: Path, tracking_uri: str) -> None:
    import yaml

    from udl_med.pipeline import run_pipeline

    pipeline = yaml.safe_load((ROOT / "pipelines" / "pretrain-encoder.yaml").read_text())
    train = next(step for step in pipeline["steps"] if step["name"] == "train")
    train["with"]["config"] = str(ROOT / "configs" / "ae2d-phantom.yaml")
    train["with"]["set"] += ["train.steps=20", "train.eval_every=20", "train.checkpoint_every=20", "train.batch_size=8", "tracking.log_model=false"]
    path = tmp_path / "pretrain-encoder.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    result = run_pipeline(
        path,
        [
            f"workdir={tmp_path / 'work'}",
            f"tracking.uri={tracking_uri}",
            "tracking.experiment=pretrain-pipeline-test",
            "steps.phantoms.with.n=6",
            "steps.phantoms.with.shape=[40,40,12]",
            "steps.heldout.with.n=9",
            "steps.heldout.with.shape=[40,40,12]",
            "steps.probe.with.quick=true",
            "steps.probe.with.label_fraction=0.3",
        ],
    )
    assert 0.0 <= result["probe.linear_probe/pretrained"] <= 1.0 and "probe.finetune/random" in result
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("pretrain-pipeline-test").experiment_id
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{result['run_id']}'")
    names = {run.info.run_name for run in children}
    assert {"phantoms", "heldout", "export", "probe"} <= names
    probe_run = next(run for run in children if run.info.run_name == "probe")
    assert {"linear_probe/pretrained", "linear_probe/random", "finetune/pretrained", "finetune/random"} <= set(probe_run.data.metrics)
