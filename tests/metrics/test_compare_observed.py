"""metrics.compare observed piece by piece: what each view, key and number of ``fid`` is (issue 26's mutants).

Each test pins a documented behaviour exactly (the views the extractor sees, the keys and
values of the comparison, the log lines), so that changing one operator or argument fails.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from udl_med.errors import UserError
from udl_med.metrics import compare
from udl_med.metrics.bootstrap import bootstrap_ci
from udl_med.metrics.inception_score import inception_score
from udl_med.metrics.kid import KID_SUBSETS, KernelMatrices
from udl_med.metrics.prdc import prdc_report
from udl_med.metrics.statistics import DEFAULT_MAX_FEATURES, FeatureStats, StatsKey, frechet_distance_stats


@pytest.mark.parametrize(
    ("dims", "expected"),
    [("2", ("2d", 2)), (2, ("2d", 2)), (2.0, ("2d", 2)), ("2.5", ("2.5d", 2)), (2.5, ("2.5d", 2)), ("3", ("3d", 3)), (3, ("3d", 3)), (3.0, ("3d", 3))],
)
def test_parse_dims(dims, expected) -> None:
    assert compare.parse_dims(dims) == expected


def test_parse_dims_refuses_other_dims() -> None:
    with pytest.raises(UserError) as caught:
        compare.parse_dims("4")
    assert str(caught.value) == "dims must be 2, 2.5 or 3, got '4'"


def test_a_one_slice_volume_is_a_2d_image_whatever_its_axis() -> None:
    for shape in [(1, 1, 4, 5), (1, 4, 1, 5), (1, 4, 5, 1)]:
        image = torch.full(shape, -1.0)  # all background: a 2D image is never filtered
        (view,) = compare.image_views(image, "2d")
        assert view.shape == (1, 4, 5)
    image = torch.arange(4.0).reshape(1, 1, 4)  # a 2D image with a singleton side stays as it is
    (view,) = compare.image_views(image, "2d")
    assert view.shape == (1, 1, 4) and torch.equal(view, image)
    views = compare.image_views(torch.ones(1, 1, 1, 5), "2d")  # two singleton sides: a volume, sliced
    assert len(views) == 5 and views[0].shape == (1, 1, 1)


def test_a_2d_image_has_no_volume_views() -> None:
    for layout in ("2.5d", "3d"):
        with pytest.raises(ValueError) as caught:
            compare.image_views(torch.zeros(1, 4, 5), layout)
        assert str(caught.value) == f"a 2D image (4, 5) has no {layout} view; use dims 2"


def test_volume_views_are_the_volume_or_its_three_middle_planes() -> None:
    image = torch.arange(4 * 6 * 8, dtype=torch.float32).reshape(1, 4, 6, 8)
    (whole,) = compare.image_views(image, "3d")
    assert whole is image
    planes = compare.image_views(image, "2.5d")
    assert len(planes) == 3
    for got, want in zip(planes, [image[:, 2], image[:, :, 3], image[:, :, :, 4]]):
        assert got.shape == want.shape and torch.equal(got, want)


def test_2d_slices_keep_those_with_enough_foreground() -> None:
    level = compare.FOREGROUND_LEVEL
    image = torch.full((1, 2, 10, 4), -1.0, dtype=torch.float64)  # slices along the last axis: 20 voxels each
    image[0, 0, 0, 1] = 0.5  # 1 of 20 voxels = the 0.05 fraction: kept
    image[0, 0, 0, 2] = level  # at the level is not above it: dropped
    image[0, :, :2, 3] = 0.5  # 4 of 20: kept
    views = compare.image_views(image, "2d")
    assert [v.shape for v in views] == [(1, 2, 10)] * 2
    assert torch.equal(views[0], image[..., 1]) and torch.equal(views[1], image[..., 3])
    assert len(compare.image_views(image, "2d", foreground_fraction=0.1)) == 1
    along_first = compare.image_views(image, "2d", slice_axis=0)  # 2 slices of 40 voxels along the first axis
    assert [v.shape for v in along_first] == [(1, 10, 4), (1, 10, 4)]


def test_resize_view_as_the_extractors_do() -> None:
    x = torch.randn(1, 4, 6)
    assert compare.resize_view(x, None) is x and compare.resize_view(x, (4, 6)) is x
    assert torch.equal(compare.resize_view(x, (8, 12)), F.interpolate(x[None], size=(8, 12), mode="bilinear", align_corners=False)[0])
    v = torch.randn(1, 4, 6, 2)
    assert torch.equal(compare.resize_view(v, (8, 12, 4)), F.interpolate(v[None], size=(8, 12, 4), mode="trilinear", align_corners=False)[0])
    assert compare.resize_view(v.double(), (8, 12, 4)).dtype == torch.float32


class _Extractor(nn.Module):
    """A stand-in extractor: the first ``dim`` pixels of each image as its features; a linear class head."""

    name = "stand-in"

    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.dim = dim
        self.calls = 0
        self.classes = nn.Linear(dim, 4)

    def forward(self, x):
        self.calls += 1
        return x.flatten(1)[:, : self.dim].float()

    def head(self, features):
        return self.classes(features)

    def key(self, layout: str) -> StatsKey:
        return StatsKey(self.name, "00", layout)


def test_tensor_statistics_keep_every_row_and_the_key_of_the_layout() -> None:
    images = torch.randn(DEFAULT_MAX_FEATURES + 3, 1, 1, 4)
    extractor = _Extractor()
    stats = compare.tensor_statistics(images, extractor, batch_size=2000, layout="2.5d")
    assert extractor.calls == 3
    assert stats.key == StatsKey("stand-in", "00", "2.5d") and stats.n == DEFAULT_MAX_FEATURES + 3 and stats.complete
    np.testing.assert_allclose(stats.mean, images.flatten(1)[:, :3].double().mean(0).numpy(), atol=1e-12)


def _stats(seed: int, n: int, keep: int | None = None) -> FeatureStats:
    x = np.random.default_rng(seed).standard_normal((n, 4)) + seed
    full = FeatureStats.from_features(x)
    return full if keep is None else FeatureStats(full.n, full.mean, full.cov, x[:keep], full.key)


def _expected(real, fake, bootstrap, subset, subsets, seed) -> dict:
    kernels = KernelMatrices(real.features, fake.features)
    kid = kernels.kid(subset, subsets, seed)
    out = {
        "fid": frechet_distance_stats(real, fake),
        "kid": kid.mean,
        "kid_std": kid.std,
        "kid_subset_size": kid.subset_size,
        "n_real": real.n,
        "n_fake": fake.n,
        "feature_dim": 4,
        "fid_ci_low": None,
        "fid_ci_high": None,
        "kid_ci_low": None,
        "kid_ci_high": None,
    }
    if bootstrap:
        ci = bootstrap_ci(real.features, fake.features, n_boot=bootstrap, seed=seed, kernels=kernels)
        out.update(fid_ci_low=ci.fid.low, fid_ci_high=ci.fid.high, kid_ci_low=ci.kid.low, kid_ci_high=ci.kid.high)
    return out


def test_compare_stats_reports_fid_kid_and_their_intervals(caplog: pytest.LogCaptureFixture) -> None:
    real, fake = _stats(0, 40), _stats(1, 30)
    with caplog.at_level(logging.INFO, logger="udl_med.metrics.compare"):
        assert compare.compare_stats(real, fake) == _expected(real, fake, 100, None, KID_SUBSETS, 0)
        got = compare.compare_stats(real, fake, bootstrap=17, kid_subset_size=12, kid_subsets=7, seed=3)
    assert got == _expected(real, fake, 17, 12, 7, 3) and got["kid_subset_size"] == 12
    assert got["fid_ci_low"] < got["fid"] < got["fid_ci_high"]
    assert caplog.records == []  # complete sets: nothing to say
    no_ci = compare.compare_stats(real, fake, bootstrap=0, kid_subset_size=12, kid_subsets=7, seed=3)
    assert no_ci == _expected(real, fake, 0, 12, 7, 3)


def test_compare_stats_says_what_it_cannot_do(caplog: pytest.LogCaptureFixture) -> None:
    real, fake = _stats(0, 40), _stats(1, 30)
    bare = FeatureStats(fake.n, fake.mean, fake.cov)
    for a, b in ((real, bare), (FeatureStats(real.n, real.mean, real.cov), fake)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="udl_med.metrics.compare"):
            result = compare.compare_stats(a, b, seed=5)
        nothing = dict.fromkeys(["fid_ci_low", "fid_ci_high", "kid", "kid_std", "kid_ci_low", "kid_ci_high"])
        assert result == {"fid": frechet_distance_stats(a, b), **nothing, "n_real": 40, "n_fake": 30, "feature_dim": 4}
        assert [r.getMessage() for r in caplog.records] == ["statistics without features: KID and confidence intervals are not available"]
        assert caplog.records[0].levelno == logging.WARNING
    sampled_real, sampled_fake = _stats(0, 40, keep=25), _stats(1, 30, keep=20)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="udl_med.metrics.compare"):
        result = compare.compare_stats(sampled_real, sampled_fake, bootstrap=5)
    assert [r.getMessage() for r in caplog.records] == [
        "KID and intervals of the real set use a uniform sample of 25 of its 40 vectors",
        "KID and intervals of the fake set use a uniform sample of 20 of its 30 vectors",
    ]
    assert result == _expected(sampled_real, sampled_fake, 5, None, KID_SUBSETS, 0)


def test_fake_inception_score_through_the_class_head() -> None:
    torch.manual_seed(0)
    extractor = _Extractor(dim=4)
    for n in (12, 4):
        stats = _stats(2, n)
        with torch.no_grad():
            logits = extractor.classes(torch.as_tensor(stats.features, dtype=torch.float32))
        score = inception_score(logits.double().numpy(), splits=min(10, n))
        assert compare.fake_inception_score(stats, extractor) == {"inception_score": score.mean, "inception_score_std": score.std}
        assert n == 4 or score.std > 0


def test_compare_tensors_is_compare_stats_of_the_batches() -> None:
    torch.manual_seed(0)
    real, fake = torch.randn(30, 1, 2, 2), torch.randn(24, 1, 2, 2) + 0.5
    extractor = _Extractor()
    got = compare.compare_tensors(real, fake, extractor, bootstrap=9, kid_subset_size=10, seed=4)
    stats = [compare.tensor_statistics(x, extractor, layout="2d") for x in (real, fake)]
    prdc = prdc_report(stats[0].features, stats[1].features, n_boot=9, seed=4)
    assert got == {**compare.compare_stats(*stats, 9, 10, KID_SUBSETS, 4), "extractor": "stand-in", "dims": "2", **prdc}
    default = compare.compare_tensors(real, fake, extractor)
    prdc = prdc_report(stats[0].features, stats[1].features, n_boot=100, seed=0)
    assert default == {**compare.compare_stats(*stats, 100, None, KID_SUBSETS, 0), "extractor": "stand-in", "dims": "2", **prdc}
    volumes = compare.compare_tensors(real[:, :, None], fake[:, :, None], extractor, bootstrap=0)
    assert volumes["dims"] == "3"
    with pytest.raises(UserError) as caught:
        compare.compare_tensors(real, fake[:, :, None], extractor)
    assert str(caught.value) == "images must both be (N, C, H, W) or (N, C, D, H, W), got (30, 1, 2, 2) and (24, 1, 1, 2, 2)"


def test_compare_tensors_builds_the_random_extractor_by_default() -> None:
    torch.manual_seed(0)
    real, fake = torch.rand(6, 1, 16, 16) * 2 - 1, torch.rand(6, 1, 16, 16) * 2 - 1
    got = compare.compare_tensors(real, fake, bootstrap=0)
    assert got["extractor"] == "random" and got["dims"] == "2" and got["n_real"] == 6


def test_tensor_statistics_default_to_the_2d_layout() -> None:
    stats = compare.tensor_statistics(torch.randn(6, 1, 1, 4), _Extractor())
    assert stats.key == StatsKey("stand-in", "00", "2d")
