"""Kernel Inception Distance: unbiased squared MMD with a cubic polynomial kernel.

Bińkowski et al., "Demystifying MMD GANs", ICLR 2018 (https://arxiv.org/abs/1801.01401).
With ``k(x, y) = (x.y / d + 1)^3`` and subsets ``X`` (m samples of the real set) and ``Y``
(m of the generated set)::

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2

whose expectation is exactly 0 when both sets come from one distribution (unlike FID,
which is biased upward for finite sets). KID is the mean over random subsets, reported
with the standard deviation over those subsets.

The kernel matrices of the whole sets are computed once (float64); a subset is then a
0/1 weight vector, and so is a bootstrap resample (with multiplicities), see
:func:`mmd2_weighted`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from udl_med.metrics._checks import MetricInputError, as_features, require_same_dim, require_samples

KID_SUBSET_SIZE = 1000  # Bińkowski et al. and most FID/KID libraries
KID_SUBSETS = 100


@dataclass(frozen=True)
class KIDResult:
    """KID: mean and standard deviation of the unbiased MMD^2 over ``subsets`` subsets."""

    mean: float
    std: float
    subset_size: int
    subsets: int


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
    """``k(x, y) = (gamma x.y + coef0)^degree`` for rows of ``x (N, d)`` and ``y (M, d)``; gamma = 1/d."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Unbiased MMD^2 from the kernel matrices of two samples (diagonals of kxx, kyy excluded)."""
    m, n = kxx.shape[0], kyy.shape[0]
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def mmd2_weighted(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 of weighted samples, for a batch of weight vectors.

    Sample ``x_i`` appears ``cx[b, i]`` times in the ``b``-th sample (0/1 for a subset, a
    multiplicity for a bootstrap resample). Pairs of copies of one sample are excluded
    like the diagonal, so the estimate stays unbiased under resampling with replacement.

    Args:
        kxx, kyy, kxy: kernel matrices ``(Nx, Nx)``, ``(Ny, Ny)``, ``(Nx, Ny)``.
        cx, cy: weights ``(B, Nx)`` and ``(B, Ny)``.

    Returns:
        ``(B,)`` MMD^2 estimates.
    """

    def within(k: np.ndarray, c: np.ndarray) -> np.ndarray:
        total = np.einsum("bi,bi->b", c @ k, c) - (c * c) @ np.diag(k)
        pairs = c.sum(axis=1) ** 2 - (c * c).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):  # a resample of one sample only: NaN
            return np.where(pairs > 0, total / np.where(pairs > 0, pairs, 1.0), np.nan)

    cross = np.einsum("bi,bi->b", cx @ kxy, cy) / (cx.sum(axis=1) * cy.sum(axis=1))
    return within(kxx, cx) + within(kyy, cy) - 2.0 * cross


def resolve_subset_size(n_real: int, n_fake: int, subset_size: int | None) -> int:
    """The subset size: as given (checked against both set sizes), else min(1000, n_real, n_fake).

    Raises:
        MetricInputError: a set has fewer samples than the subset size, or fewer than 2.
    """
    require_samples(n_real, 2, "real set")
    require_samples(n_fake, 2, "fake set")
    if subset_size is None:
        return min(KID_SUBSET_SIZE, n_real, n_fake)
    if subset_size < 2:
        raise MetricInputError(f"KID subset size must be >= 2, got {subset_size}")
    require_samples(n_real, subset_size, f"real set (KID subset size {subset_size})")
    require_samples(n_fake, subset_size, f"fake set (KID subset size {subset_size})")
    return subset_size


class KernelMatrices:
    """Kernel matrices of a real and a fake feature set, computed once and reused."""

    def __init__(self, real: Any, fake: Any, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> None:
        x, y = as_features(real, "real features"), as_features(fake, "fake features")
        require_same_dim(x.shape[1], y.shape[1])
        self.kxx = polynomial_kernel(x, x, degree, gamma, coef0)
        self.kyy = polynomial_kernel(y, y, degree, gamma, coef0)
        self.kxy = polynomial_kernel(x, y, degree, gamma, coef0)

    @property
    def n_real(self) -> int:
        return self.kxx.shape[0]

    @property
    def n_fake(self) -> int:
        return self.kyy.shape[0]

    def kid(self, subset_size: int | None = None, subsets: int = KID_SUBSETS, seed: int = 0) -> KIDResult:
        m = resolve_subset_size(self.n_real, self.n_fake, subset_size)
        if m == self.n_real and m == self.n_fake:  # every subset is the whole set
            return KIDResult(mmd2_unbiased(self.kxx, self.kyy, self.kxy), 0.0, m, 1)
        rng = np.random.default_rng(seed)
        values = np.empty(subsets)
        for s in range(subsets):
            ix = rng.choice(self.n_real, m, replace=False)
            iy = rng.choice(self.n_fake, m, replace=False)
            values[s] = mmd2_unbiased(self.kxx[np.ix_(ix, ix)], self.kyy[np.ix_(iy, iy)], self.kxy[np.ix_(ix, iy)])
        return KIDResult(float(values.mean()), float(values.std()), m, subsets)


def kernel_inception_distance(
    real: Any,
    fake: Any,
    subset_size: int | None = None,
    subsets: int = KID_SUBSETS,
    seed: int = 0,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
) -> KIDResult:
    """KID between feature sets ``real (N, d)`` and ``fake (M, d)``.

    Args:
        subset_size: samples per subset; None: min(1000, N, M). When it equals both set
            sizes there is one subset (the whole sets) and the std is 0.
        subsets: number of random subsets (drawn without replacement within a subset).
        seed: seeds the subset draws.
        degree, gamma, coef0: the polynomial kernel; the defaults are KID's.

    Raises:
        MetricInputError: fewer than 2 samples, fewer than ``subset_size``, mismatched sizes.
    """
    return KernelMatrices(real, fake, degree, gamma, coef0).kid(subset_size, subsets, seed)
