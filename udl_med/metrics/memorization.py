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
- With ``drop`` the flagged images are removed from the synthetic set's manifest.

The distances are in units of the held-out distribution, so thresholds adapt to the
data; a held-out set of ``n`` images resolves quantiles down to about ``1 / n``.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from udl_med.errors import InputError, UserError

log = logging.getLogger(__name__)

DEFAULT_QUANTILE = 0.01
CHUNK = 256


@dataclass(frozen=True)
class ViewSet:
    """Normalised views ``images (N, C, *spatial)`` in [-1, 1], each from ``sources[i]`` (a file)."""

    images: Tensor
    sources: list[str]


def load_views(source: str | Path, dims: str = "2", size: tuple[int, ...] | None = None) -> ViewSet:
    """Every view of an image set (2D: foreground slices, or the image of a one-slice volume; 3D: volumes).

    Views are resized to ``size`` (default: the first view's size) so that sets compare.

    Raises:
        InputError: no views, or images of the wrong dimensionality.
    """
    from udl_med.metrics.compare import _resize, image_views, iter_normalised, parse_dims

    layout, _ = parse_dims(dims)
    images, sources = [], []
    for path, image in iter_normalised(source):
        try:
            views = image_views(image, layout)
        except ValueError as err:
            raise InputError(path, str(err)) from None
        for view in views:
            size = size or tuple(view.shape[1:])
            images.append(_resize(view, size))
            sources.append(path)
    if not images:
        raise InputError(source, "no images (or no slices with foreground)")
    return ViewSet(torch.stack(images).float(), sources)


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


def _manifest_of(source: Path) -> Path | None:
    if source.is_file() and source.suffix == ".csv":
        return source
    if source.is_dir() and (source / "manifest.csv").is_file():
        return source / "manifest.csv"
    return None


def drop_from_manifest(source: str | Path, flagged_files: set[str]) -> dict[str, Any]:
    """Rewrite SYNTH's manifest without the rows whose image is in ``flagged_files`` (absolute paths)."""
    from udl_med.inference.synthesize import write_synthetic_manifest

    manifest = _manifest_of(Path(source))
    if manifest is None:
        raise InputError(source, "--drop needs a manifest (a folder with manifest.csv, or a .csv)")
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [r for r in rows if str((manifest.parent / r["image"]).resolve()) not in flagged_files]
    write_synthetic_manifest(manifest, kept)
    return {"manifest": str(manifest), "dropped": len(rows) - len(kept), "kept": len(kept)}


def save_pairs(synthetic: Tensor, train: Tensor, d: Distances, path: Path, k: int = 8) -> Path:
    """PNG: the ``k`` synthetic images closest to the training set (top row) above their nearest training images.

    Both rows share one display window, the range of the shown images (files clipped to a
    narrow HU window read back with the default CT window would look flat otherwise).
    """
    from udl_med.data.preview import save_grid

    order = np.argsort(d.intensity)[:k]
    pairs = torch.cat([synthetic[order], train[d.nearest[order]]])
    low, high = pairs.min(), pairs.max()
    pairs = (pairs - low) / (high - low).clamp_min(1e-6) * 2 - 1  # one display window for both rows
    return save_grid(pairs, path, nrow=len(order))


def memorization_check(
    synthetic: str | Path,
    train: str | Path,
    holdout: str | Path,
    extractor: str = "random",
    dims: str = "2",
    quantile: float = DEFAULT_QUANTILE,
    drop: bool = False,
    out: str | Path | None = None,
    flips: bool = True,
) -> dict[str, Any]:
    """``udl-med memorization SYNTH TRAIN --holdout HELD``: the check on image sets (see the module docstring).

    A pipeline step (``run: memorization``) and a library function.

    Args:
        synthetic, train, holdout: folders, manifests or volumes.
        extractor: feature extractor spec (as ``udl-med fid``).
        dims: ``"2"`` (slices) or ``"3"`` (volumes).
        quantile: held-out quantile below which an image is flagged.
        drop: remove flagged images from SYNTH's manifest.
        out: folder for ``memorization.png`` (closest synthetic images and their nearest training images).
        flips: compare against flipped training images too.

    Returns:
        the numbers of :func:`memorization_tensors`, ``flagged`` (one entry per flagged
        synthetic view: image, distances, nearest training image), ``artifacts``, and with
        ``drop`` also ``dropped`` / ``kept``.
    """
    syn = load_views(synthetic, dims)
    size = tuple(syn.images.shape[2:])
    tr, ho = load_views(train, dims, size), load_views(holdout, dims, size)
    result = memorization_tensors(syn.images, tr.images, ho.images, extractor, quantile, flips)
    d = result.pop("synthetic")
    result.pop("holdout")
    flagged = result.pop("flagged_index")
    result["flagged"] = [
        {
            "image": syn.sources[i],
            "feature_distance": float(d.feature[i]),
            "intensity_distance": float(d.intensity[i]),
            "nearest_train": tr.sources[int(d.nearest[i])],
        }
        for i in flagged
    ]
    result["n_flagged"] = len(flagged)
    result["artifacts"] = []
    if out is not None:
        result["artifacts"].append(str(save_pairs(syn.images, tr.images, d, Path(out) / "memorization.png")))
    if drop:
        result.update(drop_from_manifest(synthetic, {str(Path(syn.sources[i]).resolve()) for i in flagged}))
    log.info(
        "memorisation: %d of %d synthetic views flagged (rate %.3f; held-out false-alarm rate %.3f)",
        len(flagged), result["n_synthetic"], result["rate"], result["holdout_rate"],
    )
    return result
