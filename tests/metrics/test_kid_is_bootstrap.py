"""KID (unbiased), Inception Score (known cases) and bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from udl_med.errors import UserError
from udl_med.metrics.bootstrap import bootstrap_ci
from udl_med.metrics.frechet import frechet_distance_features
from udl_med.metrics.inception_score import inception_score, inception_score_of_images
from udl_med.metrics.kid import (
    KernelMatrices,
    kernel_inception_distance,
    mmd2_unbiased,
    mmd2_weighted,
    polynomial_kernel,
)


def test_mmd_hand_computed() -> None:
    """Loops over the definition, on 3 + 4 points in 2D."""
    x = np.array([[0.0, 1.0], [1.0, 0.5], [-1.0, 2.0]])
    y = np.array([[0.5, 0.5], [2.0, -1.0], [0.0, 0.0], [1.0, 1.0]])

    def k(a, b):
        return (a @ b / 2 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(3) for j in range(3) if i != j) / 6
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(a, b) for a in x for b in y) / 12
    got = mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))
    assert got == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_weighted_mmd_equals_subset_and_duplicate_free_resample() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 3)), rng.standard_normal((9, 3)) + 0.3
    km = KernelMatrices(x, y)
    ix, iy = np.array([0, 3, 4, 7, 11]), np.array([1, 2, 8, 5, 6])
    cx, cy = np.zeros((1, 12)), np.zeros((1, 9))
    cx[0, ix], cy[0, iy] = 1, 1
    subset = mmd2_unbiased(km.kxx[np.ix_(ix, ix)], km.kyy[np.ix_(iy, iy)], km.kxy[np.ix_(ix, iy)])
    assert mmd2_weighted(km.kxx, km.kyy, km.kxy, cx, cy)[0] == pytest.approx(subset, rel=1e-12)
    # Multiplicities: pairs of copies of one sample are excluded, other pairs count c_i c_j times.
    cx2 = np.zeros((1, 12))
    cx2[0, [0, 3, 5]] = [2, 1, 3]
    w_xx = sum(cx2[0, i] * cx2[0, j] * km.kxx[i, j] for i in range(12) for j in range(12) if i != j)
    pairs = cx2.sum() ** 2 - (cx2**2).sum()
    w_yy = (km.kyy.sum() - np.trace(km.kyy)) / (9 * 8)
    w_xy = (cx2[0] @ km.kxy).sum() / (cx2.sum() * 9)
    got = mmd2_weighted(km.kxx, km.kyy, km.kxy, cx2, np.ones((1, 9)))[0]
    assert got == pytest.approx(w_xx / pairs + w_yy - 2 * w_xy, rel=1e-12)


def test_kid_unbiased_for_one_distribution() -> None:
    """Two samples of one distribution: KID averages to 0 (the biased V-statistic does not)."""
    rng = np.random.default_rng(1)
    mixing = rng.standard_normal((16, 16)) / 4.0  # unit-scale features
    kids, biased = [], []
    for _ in range(20):
        x, y = rng.standard_normal((60, 16)) @ mixing, rng.standard_normal((60, 16)) @ mixing
        kids.append(kernel_inception_distance(x, y).mean)
        kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    kids, biased = np.array(kids), np.array(biased)
    sem = kids.std(ddof=1) / np.sqrt(len(kids))
    assert abs(kids.mean()) < 3 * sem
    assert biased.mean() > 10 * sem  # the V-statistic is visibly biased at this size
    shifted = kernel_inception_distance(rng.standard_normal((60, 16)) @ mixing, rng.standard_normal((60, 16)) @ mixing + 1.0)
    assert shifted.mean > 10 * sem


def test_kid_subsets_and_sizes() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((50, 4)), rng.standard_normal((40, 4)) + 0.5
    r = kernel_inception_distance(x, y, subset_size=20, subsets=30, seed=0)
    assert (r.subset_size, r.subsets) == (20, 30) and r.std > 0
    assert kernel_inception_distance(x, y, subset_size=20, subsets=30, seed=0) == r  # seeded
    full = kernel_inception_distance(x[:40], y)
    assert (full.subset_size, full.subsets, full.std) == (40, 1, 0.0)
    with pytest.raises(UserError, match="at least 45"):
        kernel_inception_distance(x, y, subset_size=45)
    with pytest.raises(UserError, match="at least 2"):
        kernel_inception_distance(x[:1], y)


def test_inception_score_known_values() -> None:
    k, n = 5, 100
    uniform = np.full((n, k), 1.0 / k)
    assert inception_score(uniform, splits=4, from_logits=False).mean == pytest.approx(1.0)
    confident = np.eye(k)[np.arange(n) % k]  # one-hot, balanced over k classes
    r = inception_score(confident, splits=4, from_logits=False)
    assert r.mean == pytest.approx(k) and r.std == pytest.approx(0.0, abs=1e-12)
    same_class = np.eye(k)[np.zeros(n, dtype=int)]
    assert inception_score(same_class, splits=1, from_logits=False).mean == pytest.approx(1.0)
    # two classes, half the images each, predicted with p = 0.9: IS = exp(log 2 - H(0.9))
    p = np.where(np.arange(n)[:, None] % 2 == np.arange(2), 0.9, 0.1)
    h = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    assert inception_score(np.log(p), splits=1).mean == pytest.approx(np.exp(np.log(2) - h), rel=1e-10)
    with pytest.raises(UserError, match="sum to 1"):
        inception_score(np.ones((10, 3)), splits=1, from_logits=False)
    with pytest.raises(UserError, match="at least 10"):
        inception_score(uniform[:5], splits=10, from_logits=False)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_inception_score_of_a_hand_made_classifier(spatial_dims: int) -> None:
    """A classifier that reads the mean intensity: K balanced bright levels -> IS close to K."""
    k = 4

    class Brightness(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = x.flatten(1).mean(1, keepdim=True)  # (B, 1)
            centres = torch.linspace(-0.75, 0.75, k)[None]
            return -((m - centres) ** 2) * 1e4  # confident logits

    levels = torch.linspace(-0.75, 0.75, k)
    images = levels.repeat(8)[:, None].reshape(-1, 1, *([1] * spatial_dims)).expand(-1, 1, *([8] * spatial_dims))
    r = inception_score_of_images(Brightness(), images.contiguous(), batch_size=5, splits=2)
    assert r.mean == pytest.approx(k, rel=1e-6)
    r1 = inception_score_of_images(Brightness(), torch.zeros(32, 1, *([8] * spatial_dims)), splits=2)
    assert r1.mean == pytest.approx(1.0, rel=1e-6)


def test_bootstrap_intervals_match_the_sampling_spread() -> None:
    """Interval widths agree with the spread of FID/KID over fresh draws of the same sizes."""
    rng = np.random.default_rng(3)
    mixing = rng.standard_normal((6, 6)) / np.sqrt(6)

    def sample(n: int, shift: float) -> np.ndarray:
        return rng.standard_normal((n, 6)) @ mixing + shift

    n = 150
    fresh = [(sample(n, 0.0), sample(n, 0.3)) for _ in range(150)]
    fids = np.array([frechet_distance_features(a, b) for a, b in fresh])
    kids = np.array([kernel_inception_distance(a, b).mean for a, b in fresh])
    x, y = fresh[0]
    ci = bootstrap_ci(x, y, n_boot=200, seed=0)
    fid, kid = fids[0], kids[0]
    assert ci.fid.low <= fid <= ci.fid.high and ci.kid.low <= kid <= ci.kid.high
    true_fid_width = np.subtract(*np.percentile(fids, [97.5, 2.5]))
    true_kid_width = np.subtract(*np.percentile(kids, [97.5, 2.5]))
    assert 0.5 < (ci.fid.high - ci.fid.low) / true_fid_width < 2.5
    assert 0.5 < (ci.kid.high - ci.kid.low) / true_kid_width < 2.5
    assert bootstrap_ci(x, y, n_boot=200, seed=0) == ci  # seeded
    small = bootstrap_ci(x[:30], y[:30], n_boot=100, seed=0)
    assert (small.fid.high - small.fid.low) > (ci.fid.high - ci.fid.low)
    with pytest.raises(UserError, match="at least 2"):
        bootstrap_ci(x[:1], y)
