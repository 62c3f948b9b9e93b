"""Feature statistics of an image set: streamed in chunks, saved to ``.npz``, reused.

A set of any size fits in memory: :class:`StreamingStats` merges each chunk's mean and
scatter into running float64 totals (Chan, Golub and LeVeque's pairwise update, stable
where the textbook sum-of-squares formula cancels) with one in-place GEMM per chunk, on
any torch device, so the moments cost one ``d x d`` float64 matrix plus the chunk (FID-50k
never holds the 50,000 features), and keeps the features themselves
only up to ``max_features`` rows, as a uniform reservoir sample beyond that (Vitter's
algorithm R). The kept features serve KID, the bootstrap, and the fast small-matrix
trace of the Fréchet distance when they are the whole set.

Saved statistics carry a :class:`StatsKey` (extractor name, SHA-256 of its weights, its
preprocessing) so that statistics made by another network or preprocessing are refused
instead of silently compared.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udl_med.errors import InputError
from udl_med.io_utils import atomic_write
from udl_med.metrics._checks import MetricInputError, as_features, require_same_dim, require_samples
from udl_med.metrics.frechet import Device, Frechet, covariance_factor, features_factor, frechet_gaussians, resolve_device

logger = logging.getLogger(__name__)

STATS_FORMAT = "udl-med-feature-stats/1"
DEFAULT_MAX_FEATURES = 5000  # rows kept for KID and the bootstrap (a uniform sample beyond)


@dataclass(frozen=True)
class StatsKey:
    """What made the features: statistics with different keys are not comparable."""

    extractor: str  # e.g. "random", "inception", "encoder"
    weights_sha256: str  # of the weight file, or of the state dict for built-in networks
    preprocessing: str  # layout (2d / 2.5d / 3d), size, intensity mapping

    def describe(self) -> str:
        return f"extractor {self.extractor} (weights sha256 {self.weights_sha256[:12]}), preprocessing {self.preprocessing!r}"


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance (float64) of ``n`` feature vectors, and up to all of the vectors.

    Attributes:
        n: number of feature vectors the statistics summarise.
        mean: ``(d,)``.
        cov: ``(d, d)`` unbiased covariance (divided by ``n - 1``).
        features: ``(m, d)`` with ``m <= n``: all features, or a uniform sample; None if not kept.
        key: what made the features; None for bare arrays.
    """

    n: int
    mean: np.ndarray
    cov: np.ndarray
    features: np.ndarray | None = None
    key: StatsKey | None = None

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def complete(self) -> bool:
        """True when ``features`` holds every feature vector, not a sample."""
        return self.features is not None and self.features.shape[0] == self.n

    def factor(self) -> np.ndarray:
        """Covariance factor ``F`` with ``F^T F = cov``; from the features when they are complete."""
        if self.complete and self.n <= self.dim:
            return features_factor(self.features)[1]
        return covariance_factor(self.cov)

    @classmethod
    def from_features(cls, features: Any, key: StatsKey | None = None) -> FeatureStats:
        """One-shot statistics of ``features (N, d)``, keeping all of them."""
        x = as_features(features)
        require_samples(x.shape[0], 2, "features")
        mean = x.mean(axis=0)
        centred = x - mean
        cov = centred.T @ centred / (x.shape[0] - 1)
        return cls(n=x.shape[0], mean=mean, cov=cov, features=x, key=key)


class StreamingStats:
    """Accumulate feature statistics chunk by chunk: ``update`` / ``compute`` / ``reset``.

    Args:
        max_features: feature rows kept (all of them up to this count, then a uniform
            reservoir sample of this size); 0 keeps none (moments only: FID, no KID).
        seed: seeds the reservoir sampling.
        key: stored in the computed :class:`FeatureStats`.
        device: torch device the float64 moments accumulate on (default CPU); chunks on
            it (e.g. an extractor's output on a GPU) are not copied to the host for them.
    """

    def __init__(self, max_features: int = DEFAULT_MAX_FEATURES, seed: int = 0, key: StatsKey | None = None, device: Device = None) -> None:
        if max_features < 0:
            raise ValueError(f"max_features must be >= 0, got {max_features}")
        self.max_features = max_features
        self.seed = seed
        self.key = key
        self.device = resolve_device(device)
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self._mean: torch.Tensor | None = None  # (d,) float64
        self._scatter: torch.Tensor | None = None  # (d, d) float64: sum of outer products of centred rows
        self._kept: list[np.ndarray] = []  # chunks while n <= max_features
        self._reservoir: np.ndarray | None = None
        self._rng = np.random.default_rng(self.seed)

    def update(self, features: Any) -> None:
        """Add a chunk of features ``(B, d)`` (numpy array or torch tensor, any device).

        Raises:
            MetricInputError: not 2-D, a feature size that differs from earlier chunks, NaN.
        """
        chunk = features.detach() if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
        if chunk.ndim != 2:
            raise MetricInputError(f"features: expected (batch, features), got shape {tuple(chunk.shape)}")
        if chunk.shape[0] == 0:
            return
        if self._mean is not None:
            require_same_dim(self._mean.shape[0], chunk.shape[1])
        self._merge_moments(chunk.to(device=self.device, dtype=torch.float64))
        if self.max_features:
            kept = chunk.cpu().numpy()
            self._keep(kept if np.issubdtype(kept.dtype, np.floating) else kept.astype(np.float64))

    def _merge_moments(self, x: torch.Tensor) -> None:
        """Chan et al.: ``scatter += C_b^T C_b + (n_a n_b / n) delta delta^T`` as one in-place GEMM
        of the chunk's centred rows with the scaled mean difference appended as a last row."""
        n_b, d = x.shape
        mean_b = x.mean(dim=0)
        if not bool(torch.isfinite(mean_b).all()):  # NaN or inf anywhere in the chunk shows in its mean
            raise MetricInputError("features: contains NaN or infinite values")
        if self._mean is None:
            self._mean = torch.zeros(d, dtype=torch.float64, device=self.device)
            self._scatter = torch.zeros(d, d, dtype=torch.float64, device=self.device)
        n_a, n = self.n, self.n + n_b
        delta = mean_b - self._mean
        rows = torch.cat([x - mean_b, (delta * math.sqrt(n_a * n_b / n)).unsqueeze(0)])  # (n_b + 1, d)
        self._scatter.addmm_(rows.T, rows)
        self._mean.add_(delta, alpha=n_b / n)
        self.n = n

    def _keep(self, chunk: np.ndarray) -> None:
        if self.max_features == 0:
            return
        n_before = self.n - chunk.shape[0]
        if self._reservoir is None and self.n <= self.max_features:
            self._kept.append(chunk.copy())
            return
        if self._reservoir is None:  # switch from "keep all" to algorithm R
            self._reservoir = np.concatenate([*self._kept, chunk], axis=0)[: self.max_features].copy()
            self._kept = []
            start = self.max_features - n_before  # rows of this chunk already placed
        else:
            start = 0
        for i in range(start, chunk.shape[0]):
            t = n_before + i  # index of this row in the whole stream
            j = int(self._rng.integers(0, t + 1))
            if j < self.max_features:
                self._reservoir[j] = chunk[i]

    def compute(self) -> FeatureStats:
        """Return the statistics of everything added so far.

        Raises:
            MetricInputError: fewer than 2 feature vectors.
        """
        require_samples(self.n, 2, "feature set")
        if self._reservoir is not None:
            kept = self._reservoir
        elif self._kept:
            kept = np.concatenate(self._kept, axis=0)
        else:
            kept = None
        cov = (self._scatter / (self.n - 1)).cpu().numpy()
        return FeatureStats(n=self.n, mean=self._mean.cpu().numpy(), cov=cov, features=kept, key=self.key)


def check_comparable(a: FeatureStats, b: FeatureStats, names: tuple[str, str] = ("real", "fake")) -> None:
    """Refuse statistics made by different extractors or preprocessing, or of different sizes.

    Raises:
        MetricInputError: keys or feature sizes differ, or a set has fewer than 2 samples.
    """
    require_samples(a.n, 2, names[0])
    require_samples(b.n, 2, names[1])
    if a.key is not None and b.key is not None and a.key != b.key:
        raise MetricInputError(
            f"{names[0]} and {names[1]} statistics are not comparable: "
            f"{names[0]} from {a.key.describe()}; {names[1]} from {b.key.describe()}"
        )
    require_same_dim(a.dim, b.dim, f"feature sizes of {names[0]} and {names[1]}")


def frechet_stats(a: FeatureStats, b: FeatureStats, device: Device = None) -> Frechet:
    """Fréchet distance between two statistics, with its route: from the features' small factor
    where they are complete and fewer than the dimensions, else from the covariance.

    Raises:
        MetricInputError: statistics that are not comparable (see :func:`check_comparable`).
    """
    check_comparable(a, b)

    small_a, small_b = a.complete and a.n <= a.dim, b.complete and b.n <= b.dim
    return frechet_gaussians(
        a.mean,
        b.mean,
        cov1=None if small_a else a.cov,
        factor1=a.factor() if small_a else None,
        cov2=None if small_b else b.cov,
        factor2=b.factor() if small_b else None,
        device=device,
    )


def frechet_distance_stats(a: FeatureStats, b: FeatureStats, device: Device = None) -> float:
    """Fréchet distance between two statistics (see :func:`frechet_stats`)."""
    return frechet_stats(a, b, device).distance


def save_stats(stats: FeatureStats, path: str | Path, keep_features: bool = True) -> Path:
    """Write ``stats`` to an ``.npz`` file (no pickles) and return its path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise InputError(path, "statistics are saved as .npz; use a name ending in .npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "format": np.array(STATS_FORMAT),
        "n": np.array(stats.n, dtype=np.int64),
        "mean": stats.mean.astype(np.float64),
        "cov": stats.cov.astype(np.float64),
        "key": np.array(json.dumps(asdict(stats.key) if stats.key else None)),
    }
    if keep_features and stats.features is not None:
        arrays["features"] = stats.features
    return atomic_write(path, lambda tmp: np.savez(tmp, **arrays))


def load_stats(path: str | Path) -> FeatureStats:
    """Read statistics written by :func:`save_stats`.

    Raises:
        InputError: missing file, not an ``.npz`` of udl-med statistics, or inconsistent arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "statistics file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {name: data[name] for name in data.files}
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a readable .npz file ({err})") from None
    if str(fields.get("format", "")) != STATS_FORMAT:
        raise InputError(path, f"not udl-med feature statistics (expected format {STATS_FORMAT!r})")
    mean, cov, n = fields["mean"].astype(np.float64), fields["cov"].astype(np.float64), int(fields["n"])
    d = mean.shape[0]
    if mean.ndim != 1 or cov.shape != (d, d):
        raise InputError(path, f"mean {mean.shape} and covariance {cov.shape} sizes disagree")
    features = fields.get("features")
    if features is not None and (features.ndim != 2 or features.shape[1] != d or features.shape[0] > n):
        raise InputError(path, f"features of shape {features.shape} do not fit {n} vectors of size {d}")
    key_json = json.loads(str(fields["key"]))
    key = StatsKey(**key_json) if key_json else None
    return FeatureStats(n=n, mean=mean, cov=cov, features=features, key=key)
