"""Input checks shared by the metrics: one wording for every message."""

from __future__ import annotations

from typing import Any

import numpy as np

from udl_med.errors import UserError


class MetricInputError(UserError, ValueError):
    """Features a metric cannot use (too few samples, mismatched sizes, non-finite values).

    A :class:`UserError` so the CLI exits with code 2 and one line, and a
    :class:`ValueError` for library callers who treat it as a bad argument.
    """


def as_features(x: Any, name: str = "features") -> np.ndarray:
    """Return ``x`` as a float64 array ``(N, F)``; a torch tensor is detached and moved to CPU."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise MetricInputError(f"{name}: expected a (samples, features) array, got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise MetricInputError(f"{name}: contains NaN or infinite values")
    return arr


def require_samples(n: int, minimum: int, what: str) -> None:
    """Raise :class:`MetricInputError` when ``n < minimum``, naming the minimum."""
    if n < minimum:
        raise MetricInputError(f"{what}: {n} sample(s), at least {minimum} needed")


def require_same_dim(d1: int, d2: int, what: str = "feature sizes") -> None:
    if d1 != d2:
        raise MetricInputError(f"{what} differ: {d1} vs {d2} (were both sets embedded by the same extractor?)")
