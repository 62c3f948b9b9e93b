"""``udl-med memorization SYNTH TRAIN --holdout HELD``: the memorisation check on image sets.

Reads the three sets (folders, manifests or volumes) into normalised views, runs the
measure of :mod:`udl_med.metrics.memorization` (what the numbers mean is documented
there), lists every flagged image with its nearest training image, writes
``memorization.png`` (the closest synthetic images above their nearest training images)
and, with ``drop``, removes the flagged images from the synthetic set's manifest.
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

from udl_med.data.preview import save_grid
from udl_med.errors import InputError
from udl_med.evaluation.compare import iter_normalised
from udl_med.inference.synthesize import write_synthetic_manifest
from udl_med.metrics.compare import image_views, parse_dims, resize_view
from udl_med.metrics.memorization import DEFAULT_QUANTILE, Distances, memorization_tensors

log = logging.getLogger(__name__)

__all__ = ["ViewSet", "drop_from_manifest", "load_views", "memorization_check", "save_pairs"]


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
    layout, _ = parse_dims(dims)
    images, sources = [], []
    for path, image in iter_normalised(source):
        try:
            views = image_views(image, layout)
        except ValueError as err:
            raise InputError(path, str(err)) from None
        for view in views:
            size = size or tuple(view.shape[1:])
            images.append(resize_view(view, size))
            sources.append(path)
    if not images:
        raise InputError(source, "no images (or no slices with foreground)")
    return ViewSet(torch.stack(images).float(), sources)


def _manifest_of(source: Path) -> Path | None:
    if source.is_file() and source.suffix == ".csv":
        return source
    if source.is_dir() and (source / "manifest.csv").is_file():
        return source / "manifest.csv"
    return None


def drop_from_manifest(source: str | Path, flagged_files: set[str]) -> dict[str, Any]:
    """Rewrite SYNTH's manifest without the rows whose image is in ``flagged_files`` (absolute paths)."""
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
