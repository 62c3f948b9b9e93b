"""Image sets end to end: views, compare_sets on phantoms, saved statistics, and `udl-med fid`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from udl_med.cli import main
from udl_med.errors import UserError
from udl_med.evaluation.compare import compare_sets, compare_tensors, image_views, parse_dims


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Six phantom subjects; manifests of CT and MR for two disjoint halves of them."""
    from udl_med.data.phantoms import write_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out, n=6, shape=(24, 24, 12), seed=0)
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    subjects = sorted({r["subject"] for r in rows})
    sets = {}
    for modality in ("CT", "MR"):
        for half, chosen in (("a", subjects[:3]), ("b", subjects[3:])):
            path = out / f"{modality.lower()}_{half}.csv"
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(r for r in rows if r["modality"] == modality and r["subject"] in chosen)
            sets[f"{modality.lower()}_{half}"] = path
    return sets


def test_views() -> None:
    vol = torch.full((1, 10, 12, 6), -1.0)
    vol[:, 2:8, 3:9, 1:4] = 0.5  # foreground in axial slices 1..3 only
    slices = image_views(vol, "2d")
    assert len(slices) == 3 and all(s.shape == (1, 10, 12) for s in slices)
    planes = image_views(vol, "2.5d")
    assert [tuple(p.shape) for p in planes] == [(1, 12, 6), (1, 10, 6), (1, 10, 12)]
    assert image_views(vol, "3d")[0] is vol
    one_slice = torch.full((1, 10, 1, 6), -1.0)  # a generated slice, empty: kept, never filtered
    assert [tuple(v.shape) for v in image_views(one_slice, "2d")] == [(1, 10, 6)]
    with pytest.raises(ValueError, match="use dims 2"):
        image_views(torch.zeros(1, 8, 8), "3d")
    assert parse_dims("2.5") == ("2.5d", 2) and parse_dims(3) == ("3d", 3)
    with pytest.raises(UserError):
        parse_dims("4")


def test_compare_sets_tells_modalities_apart(phantoms: dict[str, Path], tmp_path: Path) -> None:
    same = compare_sets(phantoms["ct_a"], phantoms["ct_a"], bootstrap=20)
    assert same["fid"] == pytest.approx(0.0, abs=1e-9)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0  # every sample sits in its own ball
    ct_ct = compare_sets(phantoms["ct_a"], phantoms["ct_b"], bootstrap=20)
    ct_mr = compare_sets(phantoms["ct_a"], phantoms["mr_b"], bootstrap=20, save_real_stats=tmp_path / "ct_a.npz")
    assert ct_ct["fid"] < ct_mr["fid"] and ct_ct["kid"] < ct_mr["kid"]
    assert ct_mr["fid_ci_low"] <= ct_mr["fid"] <= ct_mr["fid_ci_high"]
    assert ct_mr["kid_ci_low"] <= ct_mr["kid"] <= ct_mr["kid_ci_high"]
    assert ct_ct["precision"] > ct_mr["precision"] and ct_ct["coverage"] > ct_mr["coverage"]
    for key in ("precision", "recall", "density", "coverage"):
        assert ct_mr[f"{key}_ci_low"] <= ct_mr[key] <= ct_mr[f"{key}_ci_high"], key
    assert ct_mr["n_real"] > 3 and ct_mr["n_fake"] > 3  # several slices per volume
    assert (ct_mr["extractor"], ct_mr["dims"], ct_mr["feature_dim"]) == ("random", "2", 480)

    # Saved statistics stand in for the real set and give the same numbers.
    reused = compare_sets(tmp_path / "ct_a.npz", phantoms["mr_b"], bootstrap=20)
    for key in ("fid", "kid", "fid_ci_low", "kid_ci_high", "n_real", "n_fake"):
        assert reused[key] == pytest.approx(ct_mr[key], rel=1e-9), key
    with pytest.raises(UserError, match="not comparable"):
        compare_sets(tmp_path / "ct_a.npz", phantoms["mr_b"], dims="3")

    volumes = compare_sets(phantoms["ct_a"], phantoms["mr_b"], dims="3", bootstrap=0)
    assert volumes["n_real"] == 3 and volumes["fid_ci_low"] is None and volumes["kid"] is not None
    planes = compare_sets(phantoms["ct_a"], phantoms["mr_b"], dims="2.5", bootstrap=0)
    assert planes["n_real"] == 3 and planes["fid"] > 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_compare_tensors(spatial_dims: int) -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.rand(12, 1, *[16] * spatial_dims, generator=g) * 2 - 1
    fake = torch.rand(10, 1, *[16] * spatial_dims, generator=g) * 2 - 1
    r = compare_tensors(real, fake, bootstrap=10)
    assert r["n_real"] == 12 and r["n_fake"] == 10 and r["dims"] == str(spatial_dims)
    for key in ("precision", "recall", "density", "coverage"):  # PRDC beside FID in 2D and 3D, with intervals
        assert r[key] is not None and r[f"{key}_ci_low"] <= r[key] <= r[f"{key}_ci_high"]
    same = compare_tensors(real, real, bootstrap=0)
    assert same["fid"] == pytest.approx(0.0, abs=1e-9)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0 and same["precision_ci_low"] is None


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_cli_fid(phantoms: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fid", str(phantoms["ct_a"]), str(phantoms["mr_b"]), "--json", "--bootstrap", "10"]) == 0
    result = _last_json(capsys.readouterr().out)
    for key in ("fid", "kid", "fid_ci_low", "fid_ci_high", "kid_ci_low", "kid_ci_high", "n_real", "n_fake"):
        assert isinstance(result[key], (int, float)), key
    for key in ("precision", "recall", "density", "coverage"):
        assert 0.0 <= result[f"{key}_ci_low"] <= result[key] <= result[f"{key}_ci_high"], key

    def fails(*argv: str) -> str:
        assert main(["fid", *argv]) == 2
        err = capsys.readouterr().err.strip()
        lines = [line for line in err.splitlines() if not line.startswith(("INFO ", "WARNING "))]  # log lines (set counts, modality warning) may precede it
        assert len(lines) == 1 and "Traceback" not in err
        return lines[0]

    assert "does not exist" in fails(str(tmp_path / "nothing"), str(phantoms["ct_a"]))
    weights = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(1)}, weights)
    assert "not a known inception release" in fails(str(phantoms["ct_a"]), str(phantoms["mr_b"]), "--extractor", f"inception:{weights}")
    assert "at least 500" in fails(str(phantoms["ct_a"]), str(phantoms["mr_b"]), "--kid-subset-size", "500")
    assert "not comparable" in fails(str(_stats(phantoms, tmp_path)), str(phantoms["mr_b"]), "--dims", "3")

    from udl_med.data.io import write_image

    single = tmp_path / "single"
    single.mkdir()
    write_image(torch.zeros(1, 24, 24, 1), single / "one.nii.gz")
    assert "at least 2" in fails(str(single), str(phantoms["mr_b"]))
    assert "nonsense" in fails(str(phantoms["ct_a"]), str(phantoms["mr_b"]), "--device", "nonsense")


def test_cli_fid_device_gives_the_same_figure(phantoms: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """``--device cpu`` (explicit) is the default's figure; the device reaches the statistics."""
    figures = []
    for extra in ([], ["--device", "cpu"]):
        assert main(["fid", str(phantoms["ct_a"]), str(phantoms["mr_b"]), "--json", "--bootstrap", "0", *extra]) == 0
        figures.append(_last_json(capsys.readouterr().out)["fid"])
    assert figures[0] == pytest.approx(figures[1], rel=1e-12) and figures[0] > 0


def _stats(phantoms: dict[str, Path], tmp_path: Path) -> Path:
    path = tmp_path / "saved.npz"
    compare_sets(phantoms["ct_a"], phantoms["ct_a"], bootstrap=0, save_real_stats=path)
    return path


def test_inception_score_through_an_extractor_head() -> None:
    """compare_sets reports IS of FAKE when the extractor has a class head (as inception does)."""
    from udl_med.evaluation.compare import fake_inception_score
    from udl_med.metrics.extractors.base import FeatureExtractor
    from udl_med.metrics.statistics import FeatureStats

    class Head(FeatureExtractor):
        num_classes = 4

        def head(self, features: torch.Tensor) -> torch.Tensor:
            return features * 50.0  # features are one-hot: confident logits

    balanced = torch.eye(4).repeat(10, 1).double().numpy()
    r = fake_inception_score(FeatureStats.from_features(balanced), Head())
    assert r["inception_score"] == pytest.approx(4.0, rel=1e-6)
    collapsed = torch.eye(4)[[0] * 40].double().numpy() + 1e-3 * torch.rand(40, 4).double().numpy()
    assert fake_inception_score(FeatureStats.from_features(collapsed), Head())["inception_score"] == pytest.approx(1.0, rel=1e-3)
