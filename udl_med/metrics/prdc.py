"""Precision, recall, density and coverage of generated features against real ones.

With real features ``X`` (N) and generated features ``Y`` (M), ``r_i`` the distance from
``X_i`` to its k-th nearest neighbour in X (itself excluded), ``s_j`` the same for ``Y_j``
in Y, and ``B(v, r)`` the open ball of radius r round v:

- **precision** (Kynkäänniemi et al., NeurIPS 2019): share of the ``Y_j`` inside the union
  of the balls ``B(X_i, r_i)``: how many generated samples look real (fidelity).
- **recall** (same paper): share of the ``X_i`` inside the union of ``B(Y_j, s_j)``: how
  much of the real data the generator reaches (diversity).
- **density** (Naeem et al., ICML 2020): ``(1/(kM)) sum_j sum_i 1[Y_j in B(X_i, r_i)]``:
  how many real balls hold a generated sample on average, divided by k; about 1 when
  Y follows X, above 1 when Y crowds the dense real regions. Not bounded by 1.
- **coverage** (same paper): share of the ``X_i`` whose ball ``B(X_i, r_i)`` holds at
  least one ``Y_j``. Density and coverage use only the real balls, so a few outlying
  generated samples cannot inflate them as they inflate recall.

**k.** The reference implementation (``prdc`` on PyPI, by Naeem et al.) takes one
``nearest_k`` for all four; Kynkäänniemi et al. recommend k = 3 for precision and recall,
Naeem et al. k = 5 for density and coverage. The defaults here follow the two papers
(``k_pr=3``, ``k_dc=5``); pass the same value for both to reproduce ``prdc`` with its
``nearest_k`` (the tests check equality to 1e-6). Comparisons are strict (``<``) as in
``prdc``.

**Memory.** Distances are computed in float64 from ``|x|^2 + |y|^2 - 2 x.y`` in row blocks
of at most ``chunk_elements`` entries; no N x N, M x M or N x M matrix is held, so
N = M = 10,000 needs a few tens of MB beyond the features.

**Bootstrap.** As for FID (:mod:`udl_med.metrics.bootstrap`), both sets are resampled with
replacement, independently, with a seeded generator, and the interval is the percentile
interval of the replicates. The k-NN radii are those of the whole sets (a resample's
duplicates would shrink them to 0): the interval describes how the four shares vary with
the samples drawn from fixed estimated manifolds. A resample holds about 63% distinct
samples, so fewer distinct balls and lower shares: as for FID, the interval is the
percentile interval of the replicates shifted by the bootstrap estimate of that bias
(mean of the replicates minus the observed value; Efron and Tibshirani 1993, ch. 10),
clipped to [0, 1] (density: to [0, inf)). A resample is a vector of multiplicities, and
every replicate is accumulated in the same pass over the distances.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from udl_med.metrics._checks import MetricInputError, as_features, require_same_dim, require_samples
from udl_med.metrics.bootstrap import Interval, percentile_interval

__all__ = ["PRDC", "PRDCResult", "PRDC_KEYS", "kth_neighbour_radii", "prdc", "prdc_bootstrap", "prdc_report"]

K_PR = 3  # Kynkäänniemi et al. 2019
K_DC = 5  # Naeem et al. 2020
CHUNK_ELEMENTS = 1 << 22  # distance entries per block (32 MB of float64)
PRDC_KEYS = ("precision", "recall", "density", "coverage")


@dataclass(frozen=True)
class PRDC:
    """The four shares (see the module docstring)."""

    precision: float
    recall: float
    density: float
    coverage: float


@dataclass(frozen=True)
class PRDCResult:
    """Observed values, their percentile intervals (``None`` without bootstrap), the k used."""

    values: PRDC
    intervals: dict[str, Interval] | None
    k_pr: int
    k_dc: int
    n_boot: int
    level: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat keys ``precision``, ``recall``, ``density``, ``coverage`` and ``<key>_low`` / ``<key>_high``."""
        out = {f"{prefix}{k}": v for k, v in asdict(self.values).items()}
        for k, iv in (self.intervals or {}).items():
            out[f"{prefix}{k}_low"], out[f"{prefix}{k}_high"] = iv.low, iv.high
        return out


def _tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        if x.ndim != 2:
            raise MetricInputError(f"{name}: expected a (samples, features) array, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise MetricInputError(f"{name}: contains NaN or infinite values")
        return x.double()
    return torch.from_numpy(as_features(x, name))


def _rows(n_rows: int, n_cols: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(n_cols, 1))


def _sq_norms(x: Tensor) -> Tensor:
    return (x * x).sum(1)


def _sq_dist(a: Tensor, a2: Tensor, b: Tensor, b2: Tensor) -> Tensor:
    """Squared Euclidean distances ``(len(a), len(b))``, clamped at 0 (float64)."""
    return (a2[:, None] + b2[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)


def kth_neighbour_radii(x: Any, ks: tuple[int, ...], chunk_elements: int = CHUNK_ELEMENTS) -> dict[int, Tensor]:
    """For each k in ``ks``: distance of every row of ``x`` to its k-th nearest other row, ``(N,)`` float64.

    Like ``prdc``, the row itself counts as its own 0-th neighbour (a duplicate row is a
    neighbour at distance 0).
    """
    x = _tensor(x, "features")
    n, top = x.shape[0], max(ks) + 1
    if n < top:
        raise MetricInputError(f"features: {n} sample(s), at least {top} needed for k = {max(ks)} nearest neighbours")
    x2 = _sq_norms(x)
    out = {k: torch.empty(n, dtype=torch.float64) for k in ks}
    step = _rows(n, n, chunk_elements)
    for lo in range(0, n, step):
        d2 = _sq_dist(x[lo : lo + step], x2[lo : lo + step], x, x2)
        d2[torch.arange(d2.shape[0]), torch.arange(lo, lo + d2.shape[0])] = 0.0  # self exactly 0
        smallest = d2.topk(top, dim=1, largest=False).values  # sorted ascending
        for k in ks:
            out[k][lo : lo + step] = smallest[:, k].sqrt()
    return out


def _accumulate(
    x: Tensor, y: Tensor, r_pr: Tensor, r_dc: Tensor, s_pr: Tensor, wx: Tensor, wy: Tensor, chunk_elements: int
) -> dict[str, Tensor]:
    """One pass over the N x M distances, for the observed sets and every resample at once.

    ``wx (B, N)``, ``wy (B, M)``: multiplicities (row 0 all ones: the observed sets).
    Returns per replicate ``(B,)``: the weighted counts behind the four shares.
    """
    n_rep = wx.shape[0]
    x2, y2 = _sq_norms(x), _sq_norms(y)
    r_pr2, r_dc2, s_pr2 = r_pr**2, r_dc**2, s_pr**2
    in_real_pr = torch.zeros(n_rep, y.shape[0])  # sum_i wx_i 1[Y_j in B(X_i, r_i)] (k_pr radii)
    in_real_dc = torch.zeros(n_rep, y.shape[0])  # same with k_dc radii (density)
    coverage = torch.zeros(n_rep, dtype=torch.float64)
    recall = torch.zeros(n_rep, dtype=torch.float64)
    step = _rows(x.shape[0], y.shape[0], chunk_elements)
    wyt = wy.T.float()
    for lo in range(0, x.shape[0], step):
        sl = slice(lo, lo + step)
        d2 = _sq_dist(x[sl], x2[sl], y, y2)  # (c, M)
        # sqrt is monotone: comparing squares decides as prdc's distances do (float64 either way)
        a_pr = (d2 < r_pr2[sl, None]).float()
        a_dc = (d2 < r_dc2[sl, None]).float()
        b = (d2 < s_pr2[None, :]).float()
        w = wx[:, sl].float()  # counts are integers < 2^24: exact in float32
        in_real_pr += w @ a_pr
        in_real_dc += w @ a_dc
        coverage += (w * ((a_dc @ wyt).T > 0)).sum(1).double()
        recall += (w * ((b @ wyt).T > 0)).sum(1).double()
    precision = (wy * (in_real_pr > 0)).sum(1).double()
    density = (wy * in_real_dc).sum(1).double()
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def prdc_bootstrap(
    real: Any,
    fake: Any,
    k_pr: int = K_PR,
    k_dc: int = K_DC,
    n_boot: int = 0,
    level: float = 0.95,
    seed: int = 0,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> PRDCResult:
    """Precision, recall, density and coverage with (``n_boot >= 2``) percentile bootstrap intervals.

    Args:
        real, fake: features ``(N, d)`` and ``(M, d)`` (numpy or torch).
        k_pr: k of the precision/recall balls; k_dc: k of the density/coverage balls.
        n_boot: bootstrap replicates (0: no intervals).
        level: coverage of the intervals.
        seed: seeds the resampling.
        chunk_elements: distance entries computed per block (memory bound).

    Raises:
        MetricInputError: too few samples for k, mismatched sizes, non-finite values, bad n_boot/level/k.
    """
    x, y = _tensor(real, "real features"), _tensor(fake, "fake features")
    require_same_dim(x.shape[1], y.shape[1])
    for k, what in ((k_pr, "k_pr"), (k_dc, "k_dc")):
        if int(k) != k or k < 1:
            raise MetricInputError(f"{what} must be a positive integer, got {k}")
    require_samples(x.shape[0], max(k_pr, k_dc) + 1, "real set")
    require_samples(y.shape[0], k_pr + 1, "fake set")
    if n_boot == 1 or n_boot < 0:
        raise MetricInputError(f"bootstrap needs 0 (none) or at least 2 replicates, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise MetricInputError(f"confidence level must be in (0, 1), got {level}")
    r = kth_neighbour_radii(x, (k_pr, k_dc), chunk_elements)
    s = kth_neighbour_radii(y, (k_pr,), chunk_elements)[k_pr]
    n, m = x.shape[0], y.shape[0]
    wx, wy = torch.ones(1 + n_boot, n), torch.ones(1 + n_boot, m)
    if n_boot:
        rng = np.random.default_rng(seed)
        for b in range(1, n_boot + 1):
            wx[b] = torch.from_numpy(np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float32))
            wy[b] = torch.from_numpy(np.bincount(rng.integers(0, m, m), minlength=m).astype(np.float32))
    counts = _accumulate(x, y, r[k_pr], r[k_dc], s, wx, wy, chunk_elements)
    shares = {
        "precision": counts["precision"] / m,
        "recall": counts["recall"] / n,
        "density": counts["density"] / (k_dc * m),
        "coverage": counts["coverage"] / n,
    }
    values = PRDC(**{k: float(v[0]) for k, v in shares.items()})
    intervals = {k: _shifted_interval(v, k != "density", level) for k, v in shares.items()} if n_boot else None
    return PRDCResult(values, intervals, int(k_pr), int(k_dc), int(n_boot), level)


def _shifted_interval(values: Tensor, bounded: bool, level: float) -> Interval:
    """Percentile interval of ``values[1:]`` shifted by their bias against ``values[0]``, clipped."""
    reps = values[1:].numpy()
    iv = percentile_interval(reps - (reps.mean() - float(values[0])), level)
    high = min(iv.high, 1.0) if bounded else iv.high
    return Interval(max(iv.low, 0.0), high)


def prdc(real: Any, fake: Any, k_pr: int = K_PR, k_dc: int = K_DC, chunk_elements: int = CHUNK_ELEMENTS) -> PRDC:
    """Precision, recall, density and coverage of ``fake`` against ``real`` features (no intervals)."""
    return prdc_bootstrap(real, fake, k_pr, k_dc, 0, chunk_elements=chunk_elements).values


def prdc_report(real: Any, fake: Any, n_boot: int = 0, seed: int = 0, level: float = 0.95, k_pr: int = K_PR, k_dc: int = K_DC) -> dict[str, float | None]:
    """Flat report keys: ``precision``, ``recall``, ``density``, ``coverage``, each with ``<key>_ci_low`` / ``<key>_ci_high``.

    The intervals are None without bootstrap (``n_boot`` 0); every key is None when a set
    has too few samples for its k (``k_dc + 1`` real, ``k_pr + 1`` generated), so that a
    report from tiny sets keeps its other numbers.
    """
    out: dict[str, float | None] = {}
    for key in PRDC_KEYS:
        out[key] = out[f"{key}_ci_low"] = out[f"{key}_ci_high"] = None
    n_real, n_fake = len(real), len(fake)
    if n_real < max(k_pr, k_dc) + 1 or n_fake < k_pr + 1:
        return out
    result = prdc_bootstrap(real, fake, k_pr, k_dc, n_boot, level, seed)
    for key in PRDC_KEYS:
        out[key] = getattr(result.values, key)
        if result.intervals is not None:
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = result.intervals[key].low, result.intervals[key].high
    return out
