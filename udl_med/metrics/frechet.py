"""Fréchet distance between Gaussians fitted to two feature sets (FID), exact and fast.

Heusel et al., "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium", NeurIPS 2017 (https://arxiv.org/abs/1706.08500)::

    d^2 = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2

The usual implementation takes ``scipy.linalg.sqrtm(S1 @ S2)``: a d x d Schur
decomposition (tens of seconds at d = 2048) for a number it then only takes the trace of.
Here the trace term is computed exactly from *factors*. If ``S_i = F_i^T F_i`` with
``F_i`` of shape ``(k_i, d)``, the non-zero eigenvalues of ``S1 S2 = F1^T (F1 F2^T F2)``
are those of ``(F1 F2^T)(F1 F2^T)^T``, so

    tr (S1^1/2 S2 S1^1/2)^1/2 = sum of the singular values of M = F1 F2^T   (k1 x k2)

i.e. the nuclear norm of ``M``. Centred features divided by ``sqrt(N - 1)`` are such a
factor with ``N`` rows: when there are fewer samples than feature dimensions the whole
computation happens on an ``N1 x N2`` matrix and no ``d x d`` matrix is ever formed.
Otherwise the factor is the Cholesky factor of the covariance, or its eigen-factor
``diag(sqrt(w)) V^T`` when the covariance is singular. Everything is float64. Small
``M`` (up to 1024 on a side) go through an SVD, whose singular values are accurate to
``eps * |M|`` even when they are tiny, so singular and rank-deficient covariances are
handled exactly. Large ``M`` (d x d when both sets have more samples than dimensions)
take the eigenvalues of the symmetric ``M M^T``, several times faster than the SVD, with
a conservative a-posteriori error estimate; when it is not below 1e-8 of the distance
(a near-singular product) the SVD is used after all.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.linalg

from udl_med.metrics._checks import MetricInputError, as_features, require_same_dim, require_samples

logger = logging.getLogger(__name__)

SVD_MAX = 1024  # up to this size the trace comes from an SVD; above, from eigenvalues (checked)
RTOL = 1e-8  # accepted relative error estimate of the eigenvalue route


def _as_float64(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def covariance_factor(cov: Any) -> np.ndarray:
    """Return ``F`` of shape ``(k, d)`` with ``F.T @ F == cov`` for a symmetric PSD ``cov``.

    Cholesky when ``cov`` is positive definite (fast), else the eigen-factor with the
    eigenvalues at rounding-noise level dropped (exact for singular covariances).
    """
    cov = _as_float64(cov)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise MetricInputError(f"covariance must be a square matrix, got shape {cov.shape}")
    cov = 0.5 * (cov + cov.T)
    try:
        return scipy.linalg.cholesky(cov, lower=False, check_finite=False)  # cov = U^T U, so F = U
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(cov)
        # Eigenvalues below the rounding level of cov's entries are zeros (numpy's matrix_rank tolerance).
        keep = w > max(w[-1], 0.0) * cov.shape[0] * np.finfo(np.float64).eps
        return (v[:, keep] * np.sqrt(w[keep])).T


def features_factor(x: Any, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(mean (d,), factor (k, d))`` of features ``x`` ``(N, d)``, with k = min(N, d).

    The factor of the unbiased covariance is the centred features over ``sqrt(N - 1)``
    when ``N <= d`` (no ``d x d`` matrix is formed), else the covariance's Cholesky factor.
    """
    x = as_features(x, name)
    n, d = x.shape
    require_samples(n, 2, name)
    mean = x.mean(axis=0)
    centred = x - mean
    if n <= d:
        return mean, centred / np.sqrt(n - 1)
    return mean, covariance_factor(centred.T @ centred / (n - 1))


def _nuclear_norm_svd(m: np.ndarray) -> float:
    return float(np.linalg.svd(m, compute_uv=False).sum())


def _nuclear_norm_eig(m: np.ndarray) -> tuple[float, float]:
    """Sum of singular values of ``m`` from the eigenvalues of its smaller Gram matrix, and an error bound.

    ``eigvalsh`` of the symmetric Gram is several times faster than an SVD at d = 2048,
    but squares the singular values: an eigenvalue error ``delta`` moves ``sqrt(lambda)``
    by at most ``min(sqrt(delta), delta / sqrt(lambda))``. With ``delta`` ten times the
    typical backward error of forming and solving the Gram (``sqrt(k) eps lambda_max``),
    the sum of those is a conservative error estimate (not a proof); callers fall back
    to the SVD when it is not negligible (near-singular products).
    """
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    lam = scipy.linalg.eigvalsh(gram, driver="evd", check_finite=False)
    lam = np.clip(lam, 0.0, None)
    delta = 10.0 * np.sqrt(lam.size) * np.finfo(np.float64).eps * max(lam[-1], np.finfo(np.float64).tiny)
    bound = float(np.minimum(np.sqrt(delta), delta / np.sqrt(np.maximum(lam, np.finfo(np.float64).tiny))).sum())
    return float(np.sqrt(lam).sum()), bound


def trace_sqrt_product_factors(f1: np.ndarray, f2: np.ndarray) -> float:
    """``tr (S1^1/2 S2 S1^1/2)^1/2`` for ``S_i = f_i^T f_i``: the nuclear norm of ``f1 @ f2.T``."""
    require_same_dim(f1.shape[1], f2.shape[1])
    m = f1 @ f2.T  # (k1, k2)
    if min(m.shape) <= SVD_MAX:
        return _nuclear_norm_svd(m)
    value, bound = _nuclear_norm_eig(m)
    return value if bound <= RTOL * value else _nuclear_norm_svd(m)


def trace_sqrt_product(cov1: Any, cov2: Any) -> float:
    """Exact ``tr sqrtm(cov1 @ cov2)`` for symmetric PSD covariances (singular ones included)."""
    return trace_sqrt_product_factors(covariance_factor(cov1), covariance_factor(cov2))


def frechet_distance_from_factors(mu1: Any, f1: np.ndarray, mu2: Any, f2: np.ndarray) -> float:
    """Fréchet distance between ``N(mu1, f1^T f1)`` and ``N(mu2, f2^T f2)``.

    Args:
        mu1, mu2: means ``(d,)``.
        f1, f2: covariance factors ``(k1, d)`` and ``(k2, d)``.
    """
    mu1, mu2 = _as_float64(mu1), _as_float64(mu2)
    require_same_dim(mu1.shape[-1], mu2.shape[-1])
    require_same_dim(f1.shape[1], mu1.shape[-1], "factor and mean sizes")
    diff = mu1 - mu2
    tr1 = float(np.einsum("ij,ij->", f1, f1))  # tr S1 = |F1|_F^2
    tr2 = float(np.einsum("ij,ij->", f2, f2))
    base = float(diff @ diff) + tr1 + tr2
    m = f1 @ f2.T  # (k1, k2)
    if min(m.shape) <= SVD_MAX:
        value = base - 2.0 * _nuclear_norm_svd(m)
    else:
        trace, bound = _nuclear_norm_eig(m)
        value = base - 2.0 * trace
        if 2.0 * bound > RTOL * max(value, RTOL * base):  # not provably accurate: exact SVD
            logger.debug("Fréchet trace: eigenvalue bound %.3g too loose, using the SVD", bound)
            value = base - 2.0 * _nuclear_norm_svd(m)
    # The distance is a squared Wasserstein-2 distance, >= 0; only rounding makes it negative.
    return max(value, 0.0)


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
    """Fréchet distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``, exact, in float64.

    Args:
        mu1, mu2: means ``(d,)``.
        cov1, cov2: covariances ``(d, d)``, symmetric positive semi-definite.

    Raises:
        MetricInputError: mismatched sizes.
    """
    c1, c2 = _as_float64(cov1), _as_float64(cov2)
    require_same_dim(c1.shape[-1], c2.shape[-1])
    return frechet_distance_from_factors(mu1, covariance_factor(c1), mu2, covariance_factor(c2))


def frechet_distance_features(x1: Any, x2: Any) -> float:
    """Fréchet distance between Gaussians fitted to features ``x1 (N1, d)`` and ``x2 (N2, d)``.

    Uses the unbiased covariance (``N - 1``), as pytorch-fid and MONAI's ``FIDMetric`` do.

    Raises:
        MetricInputError: fewer than 2 samples in a set, mismatched feature sizes.
    """
    x1, x2 = as_features(x1, "first set"), as_features(x2, "second set")
    require_same_dim(x1.shape[1], x2.shape[1])
    mu1, f1 = features_factor(x1, "first set")
    mu2, f2 = features_factor(x2, "second set")
    return frechet_distance_from_factors(mu1, f1, mu2, f2)
