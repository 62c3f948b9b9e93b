"""KID, the bootstrap, mode coverage, the Inception Score and the translation measures against
references written out here, with their refusals word for word (issue 26's mutants)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from udl_med.metrics import bootstrap as bs
from udl_med.metrics import inception_score as inc
from udl_med.metrics import kid
from udl_med.metrics import translation as tr
from udl_med.metrics._checks import MetricInputError
from udl_med.metrics.frechet import features_factor, frechet_distance_from_factors
from udl_med.metrics.modes import mode_coverage

SIZES = "(were both sets embedded by the same extractor?)"


def _message(fn, *args, error=MetricInputError, **kwargs) -> str:
    with pytest.raises(error) as caught:
        fn(*args, **kwargs)
    return str(caught.value)


def _nan(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flat[0] = np.nan
    return a


RNG = np.random.default_rng(0)
X, Y = RNG.standard_normal((9, 3)), RNG.standard_normal((7, 3)) + 0.5


# --- KID ---------------------------------------------------------------------------------


def _mmd2(x: np.ndarray, y: np.ndarray, degree=3, gamma=None, coef0=1.0) -> float:
    """Unbiased MMD^2 with the polynomial kernel, by its definition (loops over pairs)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma

    def k(a, b):
        return (gamma * float(a @ b) + coef0) ** degree

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def _kid(x, y, m, subsets, seed, **kernel) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        ix = rng.choice(len(x), m, replace=False)
        iy = rng.choice(len(y), m, replace=False)
        values.append(_mmd2(x[ix], y[iy], **kernel))
    return float(np.mean(values)), float(np.std(values))


def test_kid_is_the_mean_over_subsets_drawn_without_replacement() -> None:
    got = kid.kernel_inception_distance(X, Y, subset_size=4, subsets=6)
    mean, std = _kid(X, Y, 4, 6, 0)
    assert got.mean == pytest.approx(mean, rel=1e-10) and got.std == pytest.approx(std, rel=1e-10)
    assert (got.subset_size, got.subsets) == (4, 6)
    seeded = kid.kernel_inception_distance(X, Y, subset_size=4, subsets=6, seed=5)
    assert seeded.mean == pytest.approx(_kid(X, Y, 4, 6, 5)[0], rel=1e-10)
    shaped = kid.kernel_inception_distance(X, Y, subset_size=4, subsets=6, degree=2, gamma=0.3, coef0=0.5)
    assert shaped.mean == pytest.approx(_kid(X, Y, 4, 6, 0, degree=2, gamma=0.3, coef0=0.5)[0], rel=1e-10)
    smaller = kid.kernel_inception_distance(X, Y[:4], subset_size=4, subsets=6)  # one set whole, the other subsampled
    assert smaller.subsets == 6 and smaller.std > 0
    whole = kid.kernel_inception_distance(X[:5], Y[:5])
    assert (whole.mean, whole.std, whole.subset_size, whole.subsets) == (pytest.approx(_mmd2(X[:5], Y[:5]), rel=1e-10), 0.0, 5, 1)


def test_kernel_matrices_use_the_kernel_they_are_given() -> None:
    k = kid.KernelMatrices(X, Y, degree=2, gamma=0.3, coef0=0.5)
    for got, a, b in ((k.kxx, X, X), (k.kyy, Y, Y), (k.kxy, X, Y)):
        np.testing.assert_allclose(got, (a @ b.T * 0.3 + 0.5) ** 2, rtol=1e-12)
    np.testing.assert_allclose(kid.polynomial_kernel(X, Y, gamma=0.5), (X @ Y.T * 0.5 + 1) ** 3, rtol=1e-12)
    np.testing.assert_allclose(kid.polynomial_kernel(X, Y), (X @ Y.T / 3 + 1) ** 3, rtol=1e-12)
    assert _message(kid.KernelMatrices, _nan(X), Y) == "real features: contains NaN or infinite values"
    assert _message(kid.KernelMatrices, X, _nan(Y)) == "fake features: contains NaN or infinite values"
    assert _message(kid.KernelMatrices, X, Y[:, :2]) == f"feature sizes differ: 3 vs 2 {SIZES}"


def test_subset_size_rules() -> None:
    assert kid.resolve_subset_size(5, 3, None) == 3 and kid.resolve_subset_size(3, 5, None) == 3
    assert kid.resolve_subset_size(1500, 1200, None) == 1000
    assert kid.resolve_subset_size(5, 5, 2) == 2 and kid.resolve_subset_size(2, 2, None) == 2
    assert _message(kid.resolve_subset_size, 1, 5, None) == "real set: 1 sample(s), at least 2 needed"
    assert _message(kid.resolve_subset_size, 5, 1, None) == "fake set: 1 sample(s), at least 2 needed"
    assert _message(kid.resolve_subset_size, 5, 5, 1) == "KID subset size must be >= 2, got 1"
    assert _message(kid.resolve_subset_size, 3, 5, 4) == "real set (KID subset size 4): 3 sample(s), at least 4 needed"
    assert _message(kid.resolve_subset_size, 5, 3, 4) == "fake set (KID subset size 4): 3 sample(s), at least 4 needed"


def test_weighted_mmd_of_a_single_sample_is_nan() -> None:
    k = kid.KernelMatrices(X[:3], Y[:3])
    cx = np.array([[0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])  # one sample twice: no pair of distinct samples
    cy = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    out = kid.mmd2_weighted(k.kxx, k.kyy, k.kxy, cx, cy)
    assert math.isnan(out[0]) and out[1] == pytest.approx(kid.mmd2_unbiased(k.kxx, k.kyy, k.kxy), rel=1e-12)


# --- bootstrap ---------------------------------------------------------------------------


def _bootstrap(x, y, n_boot, level, seed, kernels):
    rng = np.random.default_rng(seed)
    fids, cx, cy = [], np.zeros((n_boot, len(x))), np.zeros((n_boot, len(y)))
    for b in range(n_boot):
        ix, iy = rng.integers(0, len(x), len(x)), rng.integers(0, len(y), len(y))
        cx[b], cy[b] = np.bincount(ix, minlength=len(x)), np.bincount(iy, minlength=len(y))
        fids.append(frechet_distance_from_factors(*features_factor(x[ix]), *features_factor(y[iy])))
    fids = np.array(fids)
    observed = frechet_distance_from_factors(*features_factor(x), *features_factor(y))
    tail = 50 * (1 - level)
    low, high = np.percentile(fids - (fids.mean() - observed), [tail, 100 - tail])
    kids = kid.mmd2_weighted(kernels.kxx, kernels.kyy, kernels.kxy, cx, cy)
    kids = kids[np.isfinite(kids)]
    return (max(low, 0.0), high), tuple(np.percentile(kids, [tail, 100 - tail]))


def test_bootstrap_intervals_equal_the_percentile_bootstrap_written_out() -> None:
    k = kid.KernelMatrices(X, Y)
    for n_boot, level, seed in ((100, 0.95, 0), (7, 0.8, 3)):
        got = bs.bootstrap_ci(X, Y) if n_boot == 100 else bs.bootstrap_ci(X, Y, n_boot=n_boot, level=level, seed=seed)
        fid, kid_ = _bootstrap(X, Y, n_boot, level, seed, k)
        assert (got.fid.low, got.fid.high) == pytest.approx(fid, rel=1e-9)
        assert (got.kid.low, got.kid.high) == pytest.approx(kid_, rel=1e-9)
        assert (got.n_boot, got.level) == (n_boot, level)
    other = kid.KernelMatrices(X, Y, gamma=0.05)  # given kernels are used, not recomputed
    assert bs.bootstrap_ci(X, Y, n_boot=7, kernels=other).kid.low == pytest.approx(_bootstrap(X, Y, 7, 0.95, 0, other)[1][0], rel=1e-9)
    bs.bootstrap_ci(X[:2], Y[:2, :1] @ np.ones((1, 3)), n_boot=2)  # 2 samples and 2 replicates are enough
    bs.bootstrap_ci(X[:, :1], Y[:, :1], n_boot=3)  # one feature is enough


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"real": _nan(X)}, "real features: contains NaN or infinite values"),
        ({"fake": _nan(Y)}, "fake features: contains NaN or infinite values"),
        ({"real": X[:1]}, "real set: 1 sample(s), at least 2 needed"),
        ({"fake": Y[:1]}, "fake set: 1 sample(s), at least 2 needed"),
        ({"n_boot": 1}, "bootstrap needs at least 2 replicates, got 1"),
        ({"level": 0.0}, "confidence level must be in (0, 1), got 0.0"),
        ({"level": 1.0}, "confidence level must be in (0, 1), got 1.0"),
        ({"level": 1.5}, "confidence level must be in (0, 1), got 1.5"),
    ],
)
def test_bootstrap_refusals(kwargs: dict, message: str) -> None:
    args = {"real": X, "fake": Y, **kwargs}
    assert _message(bs.bootstrap_ci, **args) == message


def test_percentiles_of_nothing_are_nan() -> None:
    got = bs.percentile_interval(np.arange(101.0), 0.9)
    assert (got.low, got.high) == (pytest.approx(5.0), pytest.approx(95.0))
    assert bs.percentile_interval(np.array([np.nan, 4.0]), 0.9) == bs.Interval(4.0, 4.0)
    empty = bs.percentile_interval(np.array([np.nan]), 0.9)
    assert isinstance(empty.low, float) and isinstance(empty.high, float) and math.isnan(empty.low) and math.isnan(empty.high)


# --- mode coverage -----------------------------------------------------------------------


def test_mode_coverage_counts_the_boundary_and_refuses_word_for_word() -> None:
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    samples = np.array([[3.0, 0.0], [10.0, 3.5], [0.5, 0.0]])  # at 3 std exactly: high quality
    got = mode_coverage(samples, centres, std=1.0)
    assert got.counts.dtype == np.int64 and got.counts.tolist() == [2, 0, 0] and got.modes_covered == 1
    assert got.high_quality_fraction == pytest.approx(2 / 3) and got.spread == pytest.approx(math.sqrt((9 + 0.25) / 2 / 2))
    assert mode_coverage(samples, centres, std=1.0, threshold=0.6).counts.tolist() == [1, 0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mean of an empty slice
        none = mode_coverage(np.array([[5.0, 5.0]]), centres, std=1.0)
    assert math.isnan(none.spread) and none.high_quality_fraction == 0.0
    assert mode_coverage(np.zeros((1, 2)), centres[:1], std=1.0).modes_covered == 1  # one mode is enough
    assert _message(mode_coverage, np.zeros(2), centres, 1.0) == "samples: expected a (samples, features) array, got shape (2,)"
    assert _message(mode_coverage, samples, np.zeros(2), 1.0) == "centres: expected a (samples, features) array, got shape (2,)"
    assert _message(mode_coverage, np.zeros((0, 2)), centres, 1.0) == "mode_coverage needs at least one sample and one mode, got 0 and 3"
    for threshold in (0.0, -1.0, float("inf")):
        assert _message(mode_coverage, samples, centres, 1.0, threshold) == f"threshold must be a positive number, got {threshold}"


# --- Inception Score ---------------------------------------------------------------------


def test_inception_score_softmax_is_per_row_and_refusals() -> None:
    logits = np.array([[1000.0, 999.0, 0.0], [-1000.0, -1001.0, -998.0], [3.0, 1.0, 2.0]])
    shifted = logits - logits.max(axis=1, keepdims=True)
    got = inc.inception_score(logits, splits=1)
    assert math.isfinite(got.mean) and got.mean == pytest.approx(inc.inception_score(shifted, splits=1).mean, rel=1e-12)
    assert inc.inception_score(logits, splits=3).splits == 3
    assert _message(inc.inception_score, np.zeros(3)) == "class scores: expected a (samples, features) array, got shape (3,)"
    assert _message(inc.inception_score, logits, splits=0) == "splits must be >= 1, got 0"
    assert _message(inc.inception_score, logits, splits=4) == "class scores (4 splits): 3 sample(s), at least 4 needed"
    bad = np.array([[0.5, 0.6], [0.5, 0.5]])
    assert _message(inc.inception_score, bad, 1, False) == "class scores: probabilities must be non-negative and sum to 1 per row"
    assert _message(inc.inception_score, np.array([[0.5, 0.501], [0.5, 0.5]]), 1, False).startswith("class scores: probabilities")


def test_inception_score_of_probabilities_with_zeros_is_quiet() -> None:
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # a class no sample has: log 0 and 0 log 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = inc.inception_score(probs, splits=1, from_logits=False)
    assert got.mean == pytest.approx(2.0)


def test_inception_score_of_images_batches_by_32_and_splits_by_10() -> None:
    sizes = []

    def classifier(images):
        sizes.append(images.shape[0])
        return images.flatten(1)[:, :3]

    got = inc.inception_score_of_images(classifier, torch.randn(40, 1, 2, 2))
    assert sizes == [32, 8] and got.splits == 10


# --- translation -------------------------------------------------------------------------


def test_translation_measures_by_hand() -> None:
    ct = torch.full((5, 5), -1000.0)
    ct[0, 0] = tr.BODY_THRESHOLD_HU  # at the threshold: not body
    ct[2, 2] = -400.0
    assert tr.body_mask(ct).sum() == 1 and bool(tr.body_mask(ct)[2, 2])
    pred, target = torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.0])
    assert tr.masked_mae(pred, target, torch.tensor([True, False])) == 2.0
    assert _message(tr.masked_mae, pred, target, torch.tensor([False, False]), error=ValueError) == "the mask is empty"
    x, y = torch.tensor([0.0, 0.1]), torch.tensor([0.0, 0.2])
    a, b = tr.linear_fit([x], [y], [torch.ones(2)])
    assert a == pytest.approx(2.0) and b == pytest.approx(0.0, abs=1e-12)  # a variance below 1 is still fitted
    assert tr.linear_fit([torch.ones(3)], [torch.tensor([1.0, 2.0, 3.0])], [torch.ones(3)]) == (0.0, pytest.approx(2.0))
    assert _message(tr.linear_fit, [x], [y], [torch.zeros(2)], error=ValueError) == "no voxels to fit"


@pytest.mark.parametrize(("size", "window"), [(12, 11), (11, 11), (10, 9), (9, 9), (4, 3), (3, 3)])
def test_ssim_window_fits_the_thinnest_axis(size: int, window: int) -> None:
    from monai.metrics import SSIMMetric

    g = torch.Generator().manual_seed(size)
    pred, target = torch.rand(size, 16, generator=g) * 2 - 1, torch.rand(size, 16, generator=g) * 2 - 1
    target = 0.5 * target + 0.5 * pred
    expected = SSIMMetric(spatial_dims=2, data_range=2.0, win_size=window)(pred.reshape(1, 1, size, 16).double(), target.reshape(1, 1, size, 16).double())
    assert tr.ssim(pred, target) == pytest.approx(float(expected.mean()), rel=1e-9)
    out = tr.translation_metrics(pred, target, torch.ones_like(pred, dtype=torch.bool), "MR", (-100.0, 300.0))
    assert set(out) == {"mae", "psnr", "ssim"} and out["ssim"] == tr.ssim(pred, target) and out["psnr"] == tr.psnr(pred, target)
