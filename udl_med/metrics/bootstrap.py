"""Bootstrap confidence intervals for FID and KID.

Both sets are resampled with replacement, independently, with a seeded generator, and
the metric is recomputed on each resample; the interval is the percentile interval of
those replicates (Efron and Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13).

KID replicates reuse the kernel matrices of the whole sets: a resample is a vector of
multiplicities, and pairs of copies of one sample are excluded so that each replicate
stays an unbiased MMD^2 (see :func:`udl_med.metrics.kid.mmd2_weighted`).

FID is biased upward at finite sizes, and a resample (about 63% distinct samples) is
biased further, so raw FID replicates sit above the observed value, often entirely. The
FID interval is therefore the percentile interval of the replicates shifted by the
bootstrap estimate of that bias (mean of the replicates minus the observed FID, ch. 10):
it describes the spread of FID at these set sizes around the observed value, clipped at 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from udl_med.metrics._checks import MetricInputError, as_features, require_same_dim, require_samples
from udl_med.metrics.frechet import features_factor, frechet_distance_from_factors
from udl_med.metrics.kid import KernelMatrices, mmd2_weighted

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class BootstrapResult:
    """Percentile intervals at ``level`` from ``n_boot`` replicates."""

    fid: Interval
    kid: Interval
    n_boot: int
    level: float


def percentile_interval(values: np.ndarray, level: float) -> Interval:
    """Central ``level`` percentile interval of the finite ``values`` (NaN, NaN if none); shared by FID, KID and PRDC."""
    tail = 50.0 * (1.0 - level)
    values = values[np.isfinite(values)]  # tiny sets can resample a single sample: no pairs
    if values.size == 0:
        return Interval(float("nan"), float("nan"))
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return Interval(float(low), float(high))


def bootstrap_ci(
    real: Any,
    fake: Any,
    n_boot: int = 100,
    level: float = 0.95,
    seed: int = 0,
    kernels: KernelMatrices | None = None,
) -> BootstrapResult:
    """Percentile bootstrap intervals of FID and KID between features ``real`` and ``fake``.

    Args:
        real, fake: features ``(N, d)`` and ``(M, d)``.
        n_boot: number of bootstrap replicates (each costs one Fréchet distance).
        level: coverage of the interval, e.g. 0.95.
        seed: seeds the resampling.
        kernels: KID kernel matrices of these two sets, if already computed.

    Raises:
        MetricInputError: fewer than 2 samples in a set, mismatched sizes, bad n_boot/level.
    """
    x, y = as_features(real, "real features"), as_features(fake, "fake features")
    require_same_dim(x.shape[1], y.shape[1])
    require_samples(x.shape[0], 2, "real set")
    require_samples(y.shape[0], 2, "fake set")
    if n_boot < 2:
        raise MetricInputError(f"bootstrap needs at least 2 replicates, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise MetricInputError(f"confidence level must be in (0, 1), got {level}")
    kernels = kernels if kernels is not None else KernelMatrices(x, y)
    rng = np.random.default_rng(seed)
    nx, ny = x.shape[0], y.shape[0]
    fids = np.empty(n_boot)
    cx, cy = np.zeros((n_boot, nx)), np.zeros((n_boot, ny))
    for b in range(n_boot):
        ix, iy = rng.integers(0, nx, nx), rng.integers(0, ny, ny)
        cx[b], cy[b] = np.bincount(ix, minlength=nx), np.bincount(iy, minlength=ny)
        mu_x, f_x = features_factor(x[ix])
        mu_y, f_y = features_factor(y[iy])
        fids[b] = frechet_distance_from_factors(mu_x, f_x, mu_y, f_y)
    observed = frechet_distance_from_factors(*features_factor(x), *features_factor(y))
    fid = percentile_interval(fids - (fids.mean() - observed), level)
    kids = mmd2_weighted(kernels.kxx, kernels.kyy, kernels.kxy, cx, cy)
    return BootstrapResult(Interval(max(fid.low, 0.0), fid.high), percentile_interval(kids, level), n_boot, level)
