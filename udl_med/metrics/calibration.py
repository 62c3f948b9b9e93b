"""A false-alarm rate that holds: split-conformal thresholds calibrated per subject.

A near-copy check flags a scan whose distance to the training set is below a threshold.
The threshold is a guarantee only if it is set on real scans the model never saw, of
subjects that are not in training, and per subject: slices of one subject are not
independent, subjects are.

**Rule.** Each calibration subject gets one score, the smallest distance over its scans
(``subject_scores``). With ``n`` subject scores and the requested rate ``alpha``, let
``k = floor((n + 1) * alpha)``; the threshold is the k-th smallest score (the
``ceil((n + 1)(1 - alpha))``-th order statistic of the negated scores, split conformal
prediction: Vovk et al. 2005; Angelopoulos and Bates 2021) and a scan is flagged when its
distance is strictly below it.

**Guarantee.** For a new subject exchangeable with the calibration subjects, the chance
that any of its scans is flagged is exactly ``k / (n + 1) <= alpha`` (ties aside): the
``calibrated_rate``. A single scan is flagged at most as often as its subject, so the
per-scan rate on new subjects is at most that. Given one calibration set, the rate on
new subjects is itself random, distributed ``Beta(k, n + 1 - k)``: ``interval`` holds its
central ``level`` quantiles.

**Too few subjects.** ``k = 0`` when ``n < 1 / alpha - 1``: no threshold can state the
rate (1% needs 99 calibration subjects). :func:`calibrate` refuses with a message that
says how many are needed and the smallest rate these subjects can state.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy.stats import beta

from udl_med.errors import UserError

__all__ = ["Calibration", "CalibrationError", "calibrate", "clopper_pearson", "subjects_needed", "subject_scores"]

DEFAULT_RATE = 0.01


class CalibrationError(UserError, ValueError):
    """Too few calibration subjects for the requested rate, or an invalid rate (exit 2, one line)."""


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold: flag a scan when ``distance < threshold``.

    ``rate`` is the requested false-alarm rate, ``calibrated_rate`` the one that holds
    (``rank / (n_subjects + 1)``), ``interval`` the ``level`` interval of the rate given
    this calibration set.
    """

    threshold: float
    rate: float
    calibrated_rate: float
    interval: tuple[float, float]
    level: float
    n_subjects: int
    rank: int

    def flag(self, distances: Any) -> np.ndarray:
        return np.asarray(distances, dtype=np.float64) < self.threshold

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval"] = list(self.interval)
        return out


def subjects_needed(rate: float) -> int:
    """Smallest number of calibration subjects that can state ``rate``: ``ceil(1 / rate) - 1``."""
    return max(1, math.ceil(1.0 / rate - 1e-12) - 1)


def subject_scores(distances: Any, subjects: Sequence[Any]) -> tuple[list[Any], np.ndarray]:
    """One score per subject: the smallest distance over its scans. Returns (subjects in first-seen order, scores)."""
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    if len(subjects) != len(d):
        raise CalibrationError(f"{len(d)} distances but {len(subjects)} subject ids")
    best: dict[Any, float] = {}
    for s, v in zip(subjects, d):
        best[s] = min(best.get(s, math.inf), float(v))
    return list(best), np.array(list(best.values()))


def calibrate(scores: Any, rate: float = DEFAULT_RATE, level: float = 0.95) -> Calibration:
    """The split-conformal threshold of per-subject ``scores`` at false-alarm ``rate`` (see the module docstring).

    Raises:
        CalibrationError: ``rate`` outside (0, 1), no scores, or too few subjects for ``rate``.
    """
    if not 0.0 < rate < 1.0:
        raise CalibrationError(f"false-alarm rate must be in (0, 1), got {rate}")
    if not 0.0 < level < 1.0:
        raise CalibrationError(f"confidence level must be in (0, 1), got {level}")
    s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    n = len(s)
    if n == 0 or not np.isfinite(s).all():
        raise CalibrationError(f"calibration needs finite scores of held-out subjects, got {n}")
    k = math.floor((n + 1) * rate + 1e-12)
    if k == 0:
        raise CalibrationError(
            f"{n} calibration subject(s) cannot state a false-alarm rate of {rate:g}: at least "
            f"{subjects_needed(rate)} are needed (or ask for a rate of at least {1.0 / (n + 1):.3g})"
        )
    tail = (1.0 - level) / 2.0
    interval = (float(beta.ppf(tail, k, n + 1 - k)), float(beta.ppf(1.0 - tail, k, n + 1 - k)))
    return Calibration(float(s[k - 1]), float(rate), k / (n + 1), interval, float(level), n, k)


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of a measured rate ``successes / trials``."""
    if trials <= 0:
        return (float("nan"), float("nan"))
    tail = (1.0 - level) / 2.0
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1.0 - tail, successes + 1, trials - successes))
    return (low, high)
