"""Memorisation check: which synthetic images are near-copies of training images, at a stated false-alarm rate?

**Measure.** For every image, the near-copy distance to its nearest training image
(:func:`udl_med.metrics.nearcopy.near_copy_distance`: one minus the normalised
cross-correlation, maximised over flips along every axis, rotations up to 10 degrees,
shifts up to 4 pixels in 2D and 2 voxels in 3D; invariant to intensity affine changes,
robust to noise). 0 is a copy, about 1 an unrelated image.

**Threshold.** Calibrated on held-out real images of subjects that are not in training
(:mod:`udl_med.metrics.calibration`): one score per held-out subject (its smallest
distance), and the split-conformal order statistic at the requested ``rate``. A synthetic
image is **flagged** when its distance is below the threshold.

**Guarantee.** A new real subject, exchangeable with the held-out ones, has any of its
images flagged with probability ``stated_rate = k / (n + 1) <= rate`` (``n`` held-out
subjects, ``k = floor((n + 1) * rate)``); given this calibration set the rate is itself
uncertain, ``stated_rate_interval`` its 95% interval. With fewer than ``ceil(1 / rate) - 1``
held-out subjects no threshold can state ``rate``: :func:`memorization_tensors` refuses,
or with ``too_few="warn"`` calibrates at the smallest rate the subjects can state
(``1 / (n + 1)``), says so in ``warning`` and logs it; the stated rate is then that one.

What the numbers mean:

- ``rate``: share of synthetic images flagged. A generator that makes new images has
  about ``stated_rate`` or less flagged (per image; the guarantee is per subject); much
  more means it reproduces training images.
- ``flagged_index``, ``distance``, ``nearest``, ``alignments``: per synthetic image, the
  nearest training image and the alignment that matched.

Pure measure on in-memory tensors; reading image sets, the ``memorization`` command,
geometry checks and ``--drop`` are :mod:`udl_med.evaluation.memorization`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from torch import Tensor

from udl_med.errors import UserError
from udl_med.metrics.calibration import DEFAULT_RATE, CalibrationError, calibrate, subject_scores, subjects_needed
from udl_med.metrics.nearcopy import NearCopies, near_copy_distance

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_RATE", "MEASURE", "memorization_tensors"]

MEASURE = "near-copy NCC (flips, rotations <= 10 deg, shifts <= 4 px / 2 voxels)"


def _check(name: str, x: Tensor) -> None:
    if x.ndim not in (4, 5) or len(x) == 0 or x.shape[1] != 1:
        raise UserError(f"{name} images must be a non-empty (N, 1, *spatial) batch, got {tuple(x.shape)}")


def memorization_tensors(
    synthetic: Tensor,
    train: Tensor,
    holdout: Tensor,
    holdout_subjects: Sequence[Any] | None = None,
    rate: float = DEFAULT_RATE,
    too_few: Literal["refuse", "warn"] = "refuse",
    flips: bool = True,
    level: float = 0.95,
) -> dict[str, Any]:
    """The check on in-memory images ``(N, 1, *spatial)`` in [-1, 1] (see the module docstring).

    Args:
        synthetic, train, holdout: image batches of one size.
        holdout_subjects: the subject of every held-out image (None: each image its own subject).
        rate: requested false-alarm rate per new subject.
        too_few: with too few held-out subjects for ``rate``: ``refuse`` (raise) or ``warn``
            (calibrate at the smallest rate they can state).
        flips: search flips too.
        level: level of ``stated_rate_interval``.

    Returns:
        ``rate``, ``n_flagged``, ``threshold``, ``requested_rate``, ``stated_rate``,
        ``stated_rate_interval``, ``level``, ``n_calibration_subjects``, ``n_synthetic``,
        ``n_train``, ``n_holdout``, ``measure``, ``warning`` (None or a sentence),
        ``flagged_index`` (indices into ``synthetic``) and ``nearest`` (the
        :class:`~udl_med.metrics.nearcopy.NearCopies` of ``synthetic``).

    Raises:
        UserError: empty or mismatched batches, a bad rate, or (``too_few="refuse"``) too few
            held-out subjects for ``rate`` (the message says how many are needed).
    """
    for name, x in (("synthetic", synthetic), ("train", train), ("holdout", holdout)):
        _check(name, x)
    if not synthetic.shape[1:] == train.shape[1:] == holdout.shape[1:]:
        raise UserError(f"image sizes differ: synthetic {tuple(synthetic.shape[2:])}, train {tuple(train.shape[2:])}, holdout {tuple(holdout.shape[2:])}")
    if too_few not in ("refuse", "warn"):
        raise UserError(f"too_few must be 'refuse' or 'warn', got {too_few!r}")
    subjects = list(range(len(holdout))) if holdout_subjects is None else list(holdout_subjects)
    held = near_copy_distance(holdout, train, flips=flips)
    _, scores = subject_scores(held.distance.numpy(), subjects)
    warning = None
    try:
        cal = calibrate(scores, rate, level)
    except CalibrationError:
        if too_few == "refuse" or not 0.0 < rate < 1.0 or len(scores) == 0:
            raise
        cal = calibrate(scores, 1.0 / (len(scores) + 1), level)
        warning = (
            f"{len(scores)} held-out subject(s) cannot state a false-alarm rate of {rate:g} ({subjects_needed(rate)} are "
            f"needed); calibrated at {cal.calibrated_rate:.3g} instead"
        )
        log.warning("memorisation: %s", warning)
    found: NearCopies = near_copy_distance(synthetic, train, flips=flips)
    flagged = cal.flag(found.distance.numpy())
    return {
        "rate": float(flagged.mean()),
        "n_flagged": int(flagged.sum()),
        "threshold": cal.threshold,
        "requested_rate": float(rate),
        "stated_rate": cal.calibrated_rate,
        "stated_rate_interval": list(cal.interval),
        "level": cal.level,
        "n_calibration_subjects": cal.n_subjects,
        "n_synthetic": int(len(synthetic)),
        "n_train": int(len(train)),
        "n_holdout": int(len(holdout)),
        "measure": MEASURE,
        "warning": warning,
        "flagged_index": np.flatnonzero(flagged).tolist(),
        "nearest": found,
    }
