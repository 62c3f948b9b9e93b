"""pipelines/synthesize.yaml end to end at tiny scale: liver-centred crops, nested runs, outputs of every step, the FID gate."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_pipeline_synthesizes_liver_centred_crops_in_the_soft_tissue_window() -> None:
    """The job users run is the case where synthetic data helped: crops, -200..300 HU, per class, all subjects."""
    from udl_med.engine.config import load_config
    from udl_med.pipeline import load_pipeline

    steps = {s.name: s for s in load_pipeline(ROOT / "pipelines" / "synthesize.yaml").steps}
    for name in ("crops", "heldout_crops"):
        assert steps[name].run == "lesion_slices" and steps[name].with_["crop"] == [32, 32] and steps[name].with_["window"] == [-200, 300]
    assert Path(steps["train"].with_["config"]).name == "lapgan2d-liver-crops.yaml"  # resolved to the shipped file
    assert steps["synthesize"].with_["n_per_class"] > 0
    utility = steps["utility"].with_
    assert utility["ct_window"] == [-200, 300] and utility["per_class_subjects"] is None and "heldout_crops" in utility["heldout"]
    config = load_config(ROOT / "configs" / "lapgan2d-liver-crops.yaml")
    assert tuple(config.data.size) == (32, 32)
    assert list(config.data.ct_window) == [-200, 300] and config.data.split is None and config.data.labeled
    assert config.model.d_augment == "none"  # for this LAPGAN, plain measured best (benchmarks/small_data.py at 6, 12, 24 subjects; issue 22)


def test_synthesize_pipeline_tiny(tmp_path: Path, tracking_uri: str) -> None:
    import mlflow

    from udl_med.data.io import list_images, read_image
    from udl_med.pipeline import run_pipeline
    from udl_med.evaluation.synthesis import QualityGateError, fid_gate_step

    work = tmp_path / "work"
    overrides = [
        f"workdir={work}",
        f"tracking.uri={tracking_uri}",
        "steps.phantoms.with.n=9",
        "steps.phantoms.with.shape=[32, 32, 16]",
        "steps.heldout.with.n=6",
        "steps.heldout.with.shape=[32, 32, 16]",
        "steps.crops.with.crop=[16, 16]",
        "steps.heldout_crops.with.crop=[16, 16]",
        # the shipped generator config, shrunk: 16 x 16 crops, 20 steps
        f"steps.train.with.set=['data.source=${{steps.crops.manifest}}', 'output_dir=${{workdir}}/runs/train', 'data.size=[16, 16]', 'train.steps=20', 'train.batch_size=8', 'train.eval_every=20', 'train.checkpoint_every=20', 'tracking.uri={tracking_uri}']",
        "steps.synthesize.with.n_per_class=4",
        "steps.fid.with.max_fid=1.0e9",
        "steps.fid.with.bootstrap=10",
        "steps.utility.with.seeds=[0]",
        "steps.utility.with.steps=5",
        "steps.utility.with.channels=[4, 8]",
    ]
    result = run_pipeline(ROOT / "pipelines" / "synthesize.yaml", overrides)
    crops = list_images(work / "crops" / "manifest.csv")
    assert crops and tuple(read_image(crops[0].path).shape) == (1, 16, 16, 1)
    assert result["synthesize.n"] == 12
    synthetic = list_images(result["synthesize.manifest"])
    assert tuple(read_image(synthetic[0].path).shape[1:3]) == (16, 16) and sorted({r.label for r in synthetic}) == [0, 1, 2]
    assert result["fid.fid"] >= 0 and result["fid.passed"] is True
    assert 0 <= result["memorization.rate"] <= 1
    for arm in ("real", "real_plus_synthetic", "synthetic"):
        assert 0 <= result[f"utility.{arm}/balanced_accuracy"] <= 1
    assert result["utility.n_heldout_items"] == len(list_images(work / "heldout_crops" / "manifest.csv"))  # every arm tested on the held-out crops
    assert (work / "synthetic" / "samples.png").is_file() and (work / "memorization" / "memorization.png").is_file()
    mlflow.set_tracking_uri(tracking_uri)
    children = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{result['run_id']}'")
    assert {"crops", "heldout_crops", "synthesize", "fid", "memorization", "utility"} <= set(children["tags.mlflow.runName"])
    with pytest.raises(QualityGateError, match="above the gate max_fid=1e-06"):
        fid_gate_step(str(work / "heldout_crops" / "manifest.csv"), str(work / "synthetic" / "manifest.csv"), max_fid=1e-6, bootstrap=0)
