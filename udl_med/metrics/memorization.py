"""Memorisation check: are synthetic images copies of training images?

For every synthetic image ``s`` the distance to its nearest training image is measured
in two spaces: the feature space of an extractor (``random``, ``encoder:PATH``, ... as
for FID) and intensity (root-mean-square difference of the normalised images, [-1, 1]
scale). The training set is augmented with its flips along every spatial axis (and all
axes at once), so that a flipped copy is as close as a copy. The scale of "close" comes
from real data the generator never saw: the nearest-training distances of held-out real
images. A synthetic image is **flagged** when it is closer to the training set than the
``quantile`` (1%) quantile of the held-out distances in EITHER space.

What the numbers mean:

- ``rate``: fraction of synthetic images flagged. A generator that makes new images
  like held-out real ones has about ``quantile`` to ``2 * quantile`` flagged (by chance,
  per space); much more means it reproduces training images.
- ``stated_rate``: what the rule flags among new real images by construction,
  ``2 * max(quantile, 1 / (n_holdout + 1))`` (two spaces; a held-out set of ``n``
  images cannot resolve quantiles below ``1 / (n + 1)``).
- ``holdout_rate``: the same rule applied to held-out real images, calibrated on the
  other half of the held-out set (two-fold, averaged): the measured false-alarm rate on
  new real images (with half-size calibration sets), for comparison with ``rate``.
- ``flagged``: every flagged image with both distances and its nearest training image.

The distances are in units of the held-out distribution, so thresholds adapt to the
data; a held-out set of ``n`` images resolves quantiles down to about ``1 / n``. This
module measures in-memory images (:func:`memorization_tensors`); reading image sets,
the ``memorization`` command and ``--drop`` are :mod:`udl_med.evaluation.memorization`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from udl_med.errors import UserError

DEFAULT_QUANTILE = 0.01
CHUNK = 256


def with_flips(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` and its flips along each spatial axis and all axes: ``(images (F*N, ...), original index (F*N,))``."""
    axes = list(range(2, x.ndim))
    variants = [x] + [x.flip(a) for a in axes] + ([x.flip(axes)] if len(axes) > 1 else [])
    index = torch.arange(x.shape[0]).repeat(len(variants))
    return torch.cat(variants), index


def nearest(query: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Euclidean distance of each query row to its nearest reference row, and that row: ``((N,), (N,))``."""
    dists, where = [], []
    ref = reference.flatten(1).double()
    for chunk in query.flatten(1).double().split(CHUNK):
        d = torch.cdist(chunk, ref)
        m = d.min(dim=1)
        dists.append(m.values)
        where.append(m.indices)
    return torch.cat(dists).float(), torch.cat(where)


def _features(extractor: Any, x: Tensor) -> Tensor:
    return torch.cat([extractor(b) for b in x.split(64)]) if len(x) else x.new_zeros((0, extractor.feature_dim))


@dataclass(frozen=True)
class Distances:
    """Nearest-training distances of a set: ``feature`` and ``intensity`` (RMS), ``(N,)`` each, and the nearest training view."""

    feature: np.ndarray
    intensity: np.ndarray
    nearest: np.ndarray


class NearestTraining:
    """The training views (with flips) in both spaces; measures any set against them."""

    def __init__(self, train: Tensor, extractor: Any, flips: bool = True) -> None:
        images, self.index = with_flips(train) if flips else (train, torch.arange(len(train)))
        self.extractor = extractor
        self.images = images
        self.features = _features(extractor, images)
        self.voxels = float(np.prod(train.shape[1:]))

    def distances(self, x: Tensor) -> Distances:
        feature, _ = nearest(_features(self.extractor, x), self.features)
        intensity, where = nearest(x, self.images)
        return Distances(feature.numpy(), (intensity / self.voxels**0.5).numpy(), self.index[where].numpy())


def thresholds(holdout: Distances, quantile: float) -> tuple[float, float]:
    """(feature, intensity) thresholds: the ``quantile`` quantiles of held-out nearest-training distances."""
    return float(np.quantile(holdout.feature, quantile)), float(np.quantile(holdout.intensity, quantile))


def flag(d: Distances, limits: tuple[float, float]) -> np.ndarray:
    """Boolean ``(N,)``: closer than either threshold."""
    return (d.feature < limits[0]) | (d.intensity < limits[1])


def holdout_false_alarm_rate(holdout: Distances, quantile: float, seed: int = 0) -> float:
    """Two-fold estimate of how often the rule flags NEW real images (calibrate on one half, apply to the other)."""
    n = len(holdout.feature)
    if n < 4:
        return float("nan")
    order = np.random.default_rng(seed).permutation(n)
    halves = (order[: n // 2], order[n // 2 :])
    rates = []
    for calib, test in (halves, halves[::-1]):
        part = lambda idx: Distances(holdout.feature[idx], holdout.intensity[idx], holdout.nearest[idx])  # noqa: E731
        rates.append(float(flag(part(test), thresholds(part(calib), quantile)).mean()))
    return float(np.mean(rates))


def stated_rate(quantile: float, n_holdout: int) -> float:
    """The rate at which the rule flags new real images: ``quantile`` per space (resolved to ``1/(n+1)``), two spaces."""
    return min(1.0, 2.0 * max(quantile, 1.0 / (n_holdout + 1)))


def memorization_tensors(
    synthetic: Tensor, train: Tensor, holdout: Tensor, extractor: Any = "random", quantile: float = DEFAULT_QUANTILE, flips: bool = True
) -> dict[str, Any]:
    """The check on in-memory images ``(N, C, *spatial)`` in [-1, 1] (see the module docstring).

    Returns:
        ``rate``, ``rate_feature``, ``rate_intensity``, ``holdout_rate``, ``stated_rate``, ``threshold_feature``,
        ``threshold_intensity``, ``quantile``, ``n_synthetic``, ``n_train``, ``n_holdout``,
        ``flagged_index`` (indices into ``synthetic``), and the distances ``synthetic`` /
        ``holdout`` (:class:`Distances`).
    """
    from udl_med.metrics.extractors import build_extractor

    if not 0.0 < quantile < 0.5:
        raise UserError(f"quantile must be in (0, 0.5), got {quantile}")
    for name, x in (("synthetic", synthetic), ("train", train), ("holdout", holdout)):
        if x.ndim not in (4, 5) or len(x) == 0:
            raise UserError(f"{name} images must be a non-empty (N, C, *spatial) batch, got {tuple(x.shape)}")
    if not synthetic.shape[1:] == train.shape[1:] == holdout.shape[1:]:
        raise UserError(f"image sizes differ: synthetic {tuple(synthetic.shape[1:])}, train {tuple(train.shape[1:])}, holdout {tuple(holdout.shape[1:])}")
    net = build_extractor(extractor, synthetic.ndim - 2) if isinstance(extractor, str) else extractor
    reference = NearestTraining(train, net, flips)
    d_hold, d_syn = reference.distances(holdout), reference.distances(synthetic)
    limits = thresholds(d_hold, quantile)
    flagged = flag(d_syn, limits)
    return {
        "rate": float(flagged.mean()),
        "rate_feature": float((d_syn.feature < limits[0]).mean()),
        "rate_intensity": float((d_syn.intensity < limits[1]).mean()),
        "holdout_rate": holdout_false_alarm_rate(d_hold, quantile),
        "stated_rate": stated_rate(quantile, len(holdout)),
        "threshold_feature": limits[0],
        "threshold_intensity": limits[1],
        "quantile": quantile,
        "n_synthetic": int(len(synthetic)),
        "n_train": int(len(train)),
        "n_holdout": int(len(holdout)),
        "extractor": getattr(net, "name", str(extractor)),
        "flagged_index": np.flatnonzero(flagged).tolist(),
        "synthetic": d_syn,
        "holdout": d_hold,
    }
