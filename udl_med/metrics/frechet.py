"""Fréchet distance between Gaussians fitted to two feature sets (FID), exact and fast.

Heusel et al., "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium", NeurIPS 2017 (https://arxiv.org/abs/1706.08500)::

    d^2 = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2

The usual implementation takes ``scipy.linalg.sqrtm(S1 @ S2)``: a d x d Schur
decomposition (tens of seconds at d = 2048) for a number it then only takes the trace of.
Here the trace term is computed exactly from *factors*. If ``S_i = F_i^T F_i`` with
``F_i`` of shape ``(k_i, d)``, the non-zero eigenvalues of ``S1 S2`` are those of the
symmetric positive semi-definite ``A = F1 S2 F1^T`` (``k1 x k1``), so

    tr (S1^1/2 S2 S1^1/2)^1/2 = sum sqrt(eig(A)) = sum of the singular values of F1 F2^T.

Two routes, both float64, on any torch device (``device=``):

- ``eigh`` (the fast one): with more samples than dimensions ``F1`` is the transposed
  Cholesky factor ``L^T`` of ``S1`` and ``A = L^T S2 L``; with fewer, the factors are the
  centred features (with the centring's null direction removed, so ``N - 1`` rows) and no
  ``d x d`` matrix is formed. One symmetric eigenvalue solve gives the trace.
- ``svd`` (the fallback): the singular values of ``F1 F2^T`` with Cholesky or eigen-factors
  that drop exact zeros. An SVD resolves singular values down to ``eps * |M|``, so singular
  and near-singular products stay exact; squaring them into eigenvalues does not.

The fast route is taken unless a cheap check says it may be off: a Cholesky that fails or
has pivots at rounding level, an eigenvalue below ``-delta`` (``delta = 4 eps lambda_max``,
the size of a symmetric solver's rounding), or an error estimate ``sum_i
min(sqrt(delta), delta / (2 sqrt(lambda_i)))`` of the trace above ``RTOL`` of the distance.
Well-conditioned features pass (their estimate is about 1e-12 of the distance, and the
actual difference to the SVD route a hundred times smaller still); rank-deficient and
near-singular ones, whose tiny eigenvalues lose half their digits, take the SVD.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from udl_med.metrics._checks import MetricInputError, require_same_dim, require_samples

logger = logging.getLogger(__name__)

EPS = float(np.finfo(np.float64).eps)
EIG_ROUNDING = 4.0  # a symmetric eigensolver's absolute error, in eps * lambda_max
RTOL = 1e-10  # accepted estimated error of the fast route, relative to the distance
SCALE_FLOOR = 1e-4  # ... or to this fraction of tr S1 + tr S2 when the distance is smaller (cancellation)

Device = str | torch.device | None


@dataclass(frozen=True)
class Frechet:
    """A Fréchet distance and the route that computed it (``eigh`` fast, or ``svd`` fallback)."""

    distance: float
    route: str
    reason: str = ""  # why the fallback was taken; empty on the fast route


def resolve_device(device: Device) -> torch.device:
    """``device`` as a torch device (None: CPU).

    Raises:
        MetricInputError: a name torch does not know, or an accelerator this machine lacks.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MetricInputError(f"device {device!r}: not a torch device name (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise MetricInputError(f"device {device!r}: no such CUDA device here ({torch.cuda.device_count()} visible); use --device cpu")
    return dev


def _tensor(x: Any, device: Device, name: str = "features", ndim: int = 2, check_finite: bool = True) -> torch.Tensor:
    """``x`` (numpy or torch) as a float64 tensor on ``device``, checked for shape and (unless the
    caller checks a reduction of it instead) finiteness."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    t = t.to(device=resolve_device(device), dtype=torch.float64)
    if t.ndim != ndim:
        what = "a (samples, features) array" if ndim == 2 else f"{ndim} dimension(s)"
        raise MetricInputError(f"{name}: expected {what}, got shape {tuple(t.shape)}")
    if check_finite:
        _require_finite(t, name)
    return t


def _require_finite(values: torch.Tensor, name: str) -> None:
    """NaN or infinity anywhere in a set shows in its column sums: one check of ``d`` numbers, not ``N d``."""
    if not bool(torch.isfinite(values).all()):
        raise MetricInputError(f"{name}: contains NaN or infinite values")


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# --- factors -------------------------------------------------------------------------


def centred_factor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(d,)`` and factor ``F (N - 1, d)`` of the unbiased covariance of ``x (N, d)``.

    ``F^T F = C^T C / (N - 1)`` for the centred rows ``C``. ``C`` has the null direction
    ``1`` (its rows sum to zero); the Householder reflection that maps ``1 / sqrt(N)`` to
    ``e_1`` removes it exactly: rows 2..N of ``H C`` are ``C[1:] + C[0] / (sqrt(N) - 1)``.
    """
    n = x.shape[0]
    mean = x.mean(dim=0)
    c = (x - mean).mul_(1.0 / math.sqrt(n - 1))
    return mean, torch.add(c[1:], c[0], alpha=1.0 / (math.sqrt(n) - 1.0))


def _scatter(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` of ``x (N, d)``: one centred GEMM."""
    mean = x.mean(dim=0)
    c = x - mean
    return mean, c.T @ c / (x.shape[0] - 1)


def _cholesky_upper(cov: torch.Tensor) -> torch.Tensor | None:
    """``U`` with ``U^T U = cov``, or None when Cholesky fails or has a pivot at rounding level."""
    lower, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        return None
    pivots = torch.diagonal(lower).square()
    if float(pivots.min()) <= cov.shape[0] * EPS * float(torch.diagonal(cov).max()):
        return None
    return lower.T


def _psd_factor(cov: torch.Tensor) -> torch.Tensor:
    """``F (k, d)`` with ``F^T F = cov``: Cholesky when it is sound, else the eigen-factor with
    the eigenvalues at rounding-noise level dropped (numpy's matrix_rank tolerance)."""
    cov = 0.5 * (cov + cov.T)
    upper = _cholesky_upper(cov)
    if upper is not None:
        return upper
    w, v = torch.linalg.eigh(cov)
    keep = w > max(float(w[-1]), 0.0) * cov.shape[0] * EPS
    return (v[:, keep] * w[keep].sqrt()).T


def covariance_factor(cov: Any) -> np.ndarray:
    """Return ``F`` of shape ``(k, d)`` with ``F.T @ F == cov`` for a symmetric PSD ``cov``.

    Cholesky when ``cov`` is positive definite (fast), else the eigen-factor with the
    eigenvalues at rounding-noise level dropped (exact for singular covariances).
    """
    cov = _tensor(cov, None, "covariance")
    if cov.shape[0] != cov.shape[1]:
        raise MetricInputError(f"covariance must be a square matrix, got shape {tuple(cov.shape)}")
    return _numpy(_psd_factor(cov))


def features_factor(x: Any, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(mean (d,), factor (k, d))`` of features ``x`` ``(N, d)``.

    The factor of the unbiased covariance is the centred features with the centring's null
    direction removed (``k = N - 1``) when ``N <= d`` (no ``d x d`` matrix is formed), else
    the covariance's Cholesky (or eigen-) factor (``k <= d``).
    """
    t = _tensor(x, None, name, check_finite=False)
    require_samples(t.shape[0], 2, name)
    if t.shape[0] <= t.shape[1]:
        mean, f = centred_factor(t)
        _require_finite(mean, name)
    else:
        mean, cov = _scatter(t)
        _require_finite(mean, name)
        f = _psd_factor(cov)
    return _numpy(mean), _numpy(f)


# --- the trace -----------------------------------------------------------------------


@dataclass
class _Side:
    """One Gaussian's covariance as a factor ``f (k, d)`` or as the matrix ``cov (d, d)``, and its trace."""

    f: torch.Tensor | None = None
    cov: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.trace = float(self.f.square().sum()) if self.cov is None else float(torch.diagonal(self.cov).sum())

    def factor(self) -> torch.Tensor:
        if self.f is None:
            self.f = _psd_factor(self.cov)
        return self.f


def _gram(a: _Side, b: _Side) -> torch.Tensor | None:
    """Symmetric PSD ``A`` whose eigenvalues are those of ``S_a S_b`` (the non-zero ones), or
    None when the Cholesky factor this needs is unsound (the caller then takes the SVD)."""
    if a.f is None and b.f is None:  # both d x d: A = L^T S_b L with S_a = L L^T
        upper = _cholesky_upper(a.cov)
        if upper is None:
            return None
        a.f = upper
    if a.f is None or (b.f is not None and b.f.shape[0] < a.f.shape[0]):
        a, b = b, a  # factor on the left, the smaller factor when both have one
    if b.f is None:
        return a.f @ b.cov @ a.f.T  # (k_a, k_a)
    m = a.f @ b.f.T  # (k_a, k_b), k_a <= k_b
    return m @ m.T


def _trace_sqrt(a: _Side, b: _Side, scale_of: Any) -> tuple[float, str, str]:
    """``tr (S_a^1/2 S_b S_a^1/2)^1/2``, the route and, for the SVD, the reason.

    ``scale_of(trace)`` gives the size the error is judged against (the distance).
    """
    gram = _gram(a, b)
    if gram is None:
        reason = "Cholesky failed or has a pivot at rounding level"
    else:
        lam = torch.linalg.eigvalsh(gram)
        lam_max = max(float(lam[-1]), 0.0)
        delta = EIG_ROUNDING * EPS * lam_max
        roots = lam.clamp(min=0.0).sqrt()
        trace = float(roots.sum())
        if lam_max == 0.0:
            return trace, "eigh", ""
        estimate = float(torch.minimum(torch.full_like(roots, math.sqrt(delta)), delta / (2.0 * roots.clamp(min=1e-300))).sum())
        if float(lam[0]) < -delta:
            reason = f"eigenvalue {float(lam[0]):.3g} below -{delta:.3g} (not PSD at rounding level)"
        elif 2.0 * estimate > RTOL * scale_of(trace):
            reason = f"estimated trace error {estimate:.3g} (near-singular product)"
        else:
            return trace, "eigh", ""
    logger.debug("Fréchet trace: %s; using the SVD", reason)
    return float(torch.linalg.svdvals(a.factor() @ b.factor().T).sum()), "svd", reason


def _frechet(mu1: torch.Tensor, a: _Side, mu2: torch.Tensor, b: _Side) -> Frechet:
    diff = mu1 - mu2
    base = float(diff @ diff) + a.trace + b.trace
    floor = SCALE_FLOOR * (a.trace + b.trace)
    trace, route, reason = _trace_sqrt(a, b, lambda tr: max(base - 2.0 * tr, floor))
    # The distance is a squared Wasserstein-2 distance, >= 0; only rounding makes it negative.
    return Frechet(max(base - 2.0 * trace, 0.0), route, reason)


def _features_side(x: torch.Tensor) -> tuple[torch.Tensor, _Side]:
    if x.shape[0] <= x.shape[1]:
        mean, f = centred_factor(x)
        return mean, _Side(f=f)
    mean, cov = _scatter(x)
    return mean, _Side(cov=cov)


def frechet_features(x1: Any, x2: Any, device: Device = None) -> Frechet:
    """Fréchet distance between Gaussians fitted to features ``x1 (N1, d)`` and ``x2 (N2, d)``, with its route.

    Uses the unbiased covariance (``N - 1``), as pytorch-fid and MONAI's ``FIDMetric`` do.

    Args:
        device: torch device of the computation (default CPU); float64 throughout.

    Raises:
        MetricInputError: fewer than 2 samples in a set, mismatched feature sizes, NaN.
    """
    t1, t2 = _tensor(x1, device, "first set", check_finite=False), _tensor(x2, device, "second set", check_finite=False)
    require_samples(t1.shape[0], 2, "first set")
    require_samples(t2.shape[0], 2, "second set")
    require_same_dim(t1.shape[1], t2.shape[1])
    mu1, a = _features_side(t1)
    mu2, b = _features_side(t2)
    _require_finite(mu1, "first set")
    _require_finite(mu2, "second set")
    return _frechet(mu1, a, mu2, b)


def frechet_gaussians(
    mu1: Any,
    mu2: Any,
    *,
    cov1: Any = None,
    factor1: Any = None,
    cov2: Any = None,
    factor2: Any = None,
    device: Device = None,
) -> Frechet:
    """Fréchet distance between two Gaussians, each given by its mean ``(d,)`` and either its
    covariance ``(d, d)`` or a factor ``(k, d)`` with ``factor^T factor = cov``; with its route.

    Raises:
        MetricInputError: mismatched sizes, NaN, or not exactly one of covariance and factor per side.
    """
    m1, m2 = _tensor(mu1, device, "mean", 1), _tensor(mu2, device, "mean", 1)
    require_same_dim(m1.shape[0], m2.shape[0])
    d = m1.shape[0]

    def side(cov: Any, factor: Any, which: str) -> _Side:
        if (cov is None) == (factor is None):
            raise MetricInputError(f"Gaussian {which}: give its covariance or a factor of it, not {'both' if cov is not None else 'neither'}")
        if factor is not None:
            f = _tensor(factor, device, "factor")
            require_same_dim(f.shape[1], d, "factor and mean sizes")
            return _Side(f=f)
        c = _tensor(cov, device, "covariance")
        if c.shape != (d, d):
            raise MetricInputError(f"covariance of shape {tuple(c.shape)} does not fit a mean of size {d}")
        return _Side(cov=0.5 * (c + c.T))

    return _frechet(m1, side(cov1, factor1, "1"), m2, side(cov2, factor2, "2"))


def frechet_covariances(mu1: Any, cov1: Any, mu2: Any, cov2: Any, device: Device = None) -> Frechet:
    """Fréchet distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``, with its route."""
    return frechet_gaussians(mu1, mu2, cov1=cov1, cov2=cov2, device=device)


def frechet_factors(mu1: Any, f1: Any, mu2: Any, f2: Any, device: Device = None) -> Frechet:
    """Fréchet distance between ``N(mu1, f1^T f1)`` and ``N(mu2, f2^T f2)``, with its route."""
    return frechet_gaussians(mu1, mu2, factor1=f1, factor2=f2, device=device)


def frechet_distance_features(x1: Any, x2: Any, device: Device = None) -> float:
    """Fréchet distance between Gaussians fitted to features ``x1 (N1, d)`` and ``x2 (N2, d)``.

    Uses the unbiased covariance (``N - 1``), as pytorch-fid and MONAI's ``FIDMetric`` do.

    Raises:
        MetricInputError: fewer than 2 samples in a set, mismatched feature sizes.
    """
    return frechet_features(x1, x2, device).distance


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any, device: Device = None) -> float:
    """Fréchet distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``, exact, in float64.

    Args:
        mu1, mu2: means ``(d,)``.
        cov1, cov2: covariances ``(d, d)``, symmetric positive semi-definite.

    Raises:
        MetricInputError: mismatched sizes.
    """
    return frechet_covariances(mu1, cov1, mu2, cov2, device).distance


def frechet_distance_from_factors(mu1: Any, f1: Any, mu2: Any, f2: Any, device: Device = None) -> float:
    """Fréchet distance between ``N(mu1, f1^T f1)`` and ``N(mu2, f2^T f2)``.

    Args:
        mu1, mu2: means ``(d,)``.
        f1, f2: covariance factors ``(k1, d)`` and ``(k2, d)``.
    """
    return frechet_factors(mu1, f1, mu2, f2, device).distance


def trace_sqrt_product_factors(f1: Any, f2: Any) -> float:
    """``tr (S1^1/2 S2 S1^1/2)^1/2`` for ``S_i = f_i^T f_i``: the nuclear norm of ``f1 @ f2.T``."""
    a, b = _tensor(f1, None, "factor"), _tensor(f2, None, "factor")
    require_same_dim(a.shape[1], b.shape[1])
    side_a, side_b = _Side(f=a), _Side(f=b)
    scale = side_a.trace + side_b.trace
    return _trace_sqrt(side_a, side_b, lambda tr: scale)[0]


def trace_sqrt_product(cov1: Any, cov2: Any) -> float:
    """Exact ``tr sqrtm(cov1 @ cov2)`` for symmetric PSD covariances (singular ones included)."""
    c1, c2 = _tensor(cov1, None, "covariance"), _tensor(cov2, None, "covariance")
    require_same_dim(c1.shape[-1], c2.shape[-1])
    a, b = _Side(cov=0.5 * (c1 + c1.T)), _Side(cov=0.5 * (c2 + c2.T))
    scale = a.trace + b.trace
    return _trace_sqrt(a, b, lambda tr: scale)[0]
