"""evaluate_translation on held-out paired phantoms, and its pipeline step."""

from __future__ import annotations

from pathlib import Path

import pytest
from translationkit import tiny_model

from udl_med.errors import InputError, UserError
from udl_med.evaluation.translation import evaluate_translation, evaluate_translation_step, paired_subjects


@pytest.fixture(scope="module")
def model_2d(tmp_path_factory, phantom_manifest, tracking_uri) -> str:
    return tiny_model(tmp_path_factory, phantom_manifest, tracking_uri, "2d")["model_dir"]


def test_paired_subjects(phantom_manifest: Path) -> None:
    pairs = paired_subjects(phantom_manifest, "test")
    assert pairs and all(ct.name == "ct.nii.gz" and mr.name == "mr.nii.gz" and ct.parent == mr.parent for _, ct, mr in pairs)
    with pytest.raises(InputError, match="no subject"):
        paired_subjects(phantom_manifest, "nonexistent")


def test_evaluate_and_step(model_2d: str, phantom_manifest: Path, tmp_path: Path) -> None:
    result = evaluate_translation(model_2d, phantom_manifest, split="test", out_dir=tmp_path)
    for d in ("ct2mr", "mr2ct"):
        for k in ("mae", "psnr", "ssim"):
            assert f"{d}/{k}" in result and f"baseline/{d}/{k}" in result and f"baseline_body/{d}/{k}" in result
    assert 0 < result["mr2ct/mae_hu"] < 1000 and result["mr2ct/mae_hu"] == pytest.approx(1000 * result["mr2ct/mae"])
    # phantom MR contrast is not linear in CT: bone is bright in CT and dark in MR, so the fit is poor
    assert result["baseline/mr2ct/mae_hu"] > 50
    assert [Path(p).name for p in result["artifacts"]] == ["translation_ct2mr.png", "translation_mr2ct.png"]
    assert all(Path(p).stat().st_size > 0 for p in result["artifacts"])
    step = evaluate_translation_step(model=model_2d, source=str(phantom_manifest), directions=["mr2ct"], max_subjects=1)
    assert step["n_subjects"] == 1 and "mr2ct_mae_hu" in step and "ct2mr_mae" not in step
    assert step["mr2ct_mae_vs_baseline"] == pytest.approx(step["mr2ct_mae"] / step["baseline_mr2ct_mae"])
    with pytest.raises(UserError, match="not pet2ct"):
        evaluate_translation(model_2d, phantom_manifest, directions=["pet2ct"])
