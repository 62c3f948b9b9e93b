"""Mode coverage of samples from a Gaussian mixture (VEEGAN, PacGAN).

The metric of the 2D mode-collapse benchmark (Srivastava et al. 2017, "VEEGAN";
Lin et al. 2018, "PacGAN"): a sample is *high quality* when its Euclidean distance to
the nearest mode mean is at most ``threshold * std`` (3 std in both papers); a mode is
*covered* when it is the nearest mode of at least one high-quality sample. The papers
draw 2,500 samples and report the modes covered and the percentage of high-quality
samples, averaged over runs.

Both figures reward a generator that puts a few points exactly on each mean, so
:attr:`ModeCoverage.spread` also reports how wide the high-quality samples lie around their
modes, in units of ``std``: 0 for point masses, about 0.97 for samples of the mixture itself
(a 2D Gaussian truncated at 3 std).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from udl_med.metrics._checks import MetricInputError, as_features

__all__ = ["ModeCoverage", "mode_coverage"]


@dataclass(frozen=True)
class ModeCoverage:
    """Result of :func:`mode_coverage`.

    Attributes:
        modes_covered: modes that are the nearest mode of at least one high-quality sample.
        n_modes: modes of the mixture.
        high_quality_fraction: fraction of samples within ``threshold * std`` of their
            nearest mode, in [0, 1].
        counts: high-quality samples per mode, ``(M,)`` int64.
        spread: root mean square distance of the high-quality samples from their mode, per
            coordinate, over ``std`` (nan when there are none).
    """

    modes_covered: int
    n_modes: int
    high_quality_fraction: float
    counts: np.ndarray
    spread: float


def mode_coverage(samples: Any, centres: Any, std: float, threshold: float = 3.0) -> ModeCoverage:
    """Modes covered and the high-quality fraction of ``samples`` (float64 math).

    Args:
        samples: ``(N, 2)`` generated points (tensor or array), N >= 1.
        centres: ``(M, 2)`` mode means, M >= 1.
        std: the std of every mode (> 0).
        threshold: a sample is high quality within ``threshold * std`` of its nearest
            mode (> 0).

    Raises:
        ValueError (:class:`~udl_med.metrics._checks.MetricInputError`): bad shapes,
        non-finite values, or a non-positive ``std`` / ``threshold``.
    """
    x = as_features(samples, "samples")
    c = as_features(centres, "centres")
    if x.shape[0] < 1 or c.shape[0] < 1:
        raise MetricInputError(f"mode_coverage needs at least one sample and one mode, got {x.shape[0]} and {c.shape[0]}")
    if x.shape[1] != c.shape[1]:
        raise MetricInputError(f"samples have {x.shape[1]} coordinates but centres have {c.shape[1]}")
    if not (np.isfinite(std) and std > 0):
        raise MetricInputError(f"std must be a positive number, got {std}")
    if not (np.isfinite(threshold) and threshold > 0):
        raise MetricInputError(f"threshold must be a positive number, got {threshold}")
    d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)  # (N, M)
    nearest = d2.argmin(1)
    dist = np.sqrt(d2[np.arange(len(x)), nearest])
    hq = dist <= threshold * float(std)
    counts = np.bincount(nearest[hq], minlength=len(c)).astype(np.int64)
    return ModeCoverage(
        modes_covered=int((counts > 0).sum()),
        n_modes=len(c),
        high_quality_fraction=float(hq.mean()),
        counts=counts,
        spread=float(np.sqrt((dist[hq] ** 2).mean() / x.shape[1]) / float(std)) if hq.any() else float("nan"),
    )
