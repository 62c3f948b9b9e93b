"""``udl-med memorization SYNTH TRAIN --holdout HELD``: the memorisation check on image sets.

Reads the three sets (folders, manifests or volumes) into normalised views (2D: the
foreground slices of a volume, or the image of a one-slice volume; 3D: volumes), runs the
measure of :mod:`udl_med.metrics.memorization` (the near-copy distance and the threshold
calibrated per held-out subject; what the numbers mean is documented there), lists every
flagged image with its nearest training image, the distance and the alignment that
matched, writes ``memorization.png`` (the closest synthetic images above their nearest
training images) and, with ``drop``, removes the flagged images from the synthetic set's
manifest (written atomically).

**Subjects.** A held-out image's subject is the manifest's ``subject`` column, else its
file (all views of one volume belong together). Held-out subjects that are also training
subjects are refused: the guarantee needs subjects the generator never saw.

**Same kind of image.** Distances compare voxel grids, so every image must be the kind the
training set holds: the training views' size, a spacing inside the training set's range
(per axis, widened by ``SPACING_TOLERANCE``) and the training set's modality. Another
size or spacing is refused (exit 2, the file and the problem) unless ``resample``: the
image is then resampled to the training set's median spacing (linear) and centre-cropped
or padded with background to the training size, keeping its physical field of view.
Another modality is always refused.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from udl_med.data.geometry import Geometry
from udl_med.data.io import list_images, read_image
from udl_med.data.normalize import normalize
from udl_med.data.preview import save_grid
from udl_med.errors import InputError
from udl_med.inference.synthesize import write_synthetic_manifest
from udl_med.metrics.compare import SLICE_AXIS, image_views, parse_dims
from udl_med.metrics.memorization import DEFAULT_RATE, memorization_tensors

log = logging.getLogger(__name__)

__all__ = ["SPACING_TOLERANCE", "ImageSet", "drop_from_manifest", "memorization_check", "save_pairs"]

SPACING_TOLERANCE = 0.1  # relative: a spacing up to 10% outside the training set's range is the same kind
BACKGROUND = -1.0  # normalised background: what padding adds


@dataclass(frozen=True)
class _View:
    image: Tensor  # (1, *spatial) in [-1, 1]
    spacing: tuple[float, ...] | None  # mm per view axis
    source: str
    subject: str
    modality: str | None


@dataclass(frozen=True)
class ImageSet:
    """Normalised views ``images (N, 1, *spatial)`` in [-1, 1], each from ``sources[i]`` of ``subjects[i]``."""

    images: Tensor
    sources: list[str]
    subjects: list[str]


def _view_spacing(geometry: Geometry | None, spatial: tuple[int, ...], layout: str) -> tuple[float, ...] | None:
    """The spacing of the axes a view keeps (see :func:`image_views`)."""
    if geometry is None or len(geometry.spacing) != len(spatial):
        return None
    spacing = list(geometry.spacing)
    if len(spatial) == 3 and sum(s == 1 for s in spatial) == 1:  # a one-slice volume is a 2D image
        del spacing[spatial.index(1)]
    elif len(spatial) == 3 and layout == "2d":
        del spacing[SLICE_AXIS]
    return tuple(spacing)


def _read(source: str | Path, layout: str, default_modality: str | None = None) -> list[_View]:
    views = []
    for record in list_images(source):
        image = read_image(record.path)
        modality = record.modality or image.meta.get("modality") or default_modality
        tensor, _ = normalize(image.as_tensor(), modality)
        try:
            cut = image_views(tensor, layout)
        except ValueError as err:
            raise InputError(record.path, str(err)) from None
        spacing = _view_spacing(Geometry.from_meta(image.meta), tuple(image.shape[1:]), layout)
        subject = record.subject or str(record.path)
        views += [_View(v.float(), spacing, str(record.path), subject, modality) for v in cut]
    if not views:
        raise InputError(source, "no images (or no slices with foreground)")
    return views


@dataclass(frozen=True)
class _Kind:
    """What the training set holds: view size, spacing range per axis, modality."""

    size: tuple[int, ...]
    spacing_low: tuple[float, ...] | None
    spacing_high: tuple[float, ...] | None
    spacing_median: tuple[float, ...] | None
    modality: str | None

    @classmethod
    def of(cls, views: list[_View]) -> _Kind:
        modalities = {v.modality for v in views if v.modality}
        if len(modalities) > 1:
            first = next(v for v in views if v.modality)
            other = next(v for v in views if v.modality and v.modality != first.modality)
            raise InputError(other.source, f"modality {other.modality} differs from {first.modality} of {first.source}: the training set must hold one modality")
        spacings = np.array([v.spacing for v in views if v.spacing is not None and len(v.spacing) == views[0].image.ndim - 1])
        low = high = median = None
        if len(spacings):
            low, high, median = (tuple(float(s) for s in f(spacings, axis=0)) for f in (np.min, np.max, np.median))
        return cls(tuple(views[0].image.shape[1:]), low, high, median, modalities.pop() if modalities else None)

    def problem(self, view: _View) -> str | None:
        """Why ``view`` is not this kind of image (size or spacing), or None."""
        size = tuple(view.image.shape[1:])
        if size != self.size:
            return f"size {'x'.join(map(str, size))} differs from the training images' {'x'.join(map(str, self.size))}"
        if view.spacing is not None and self.spacing_low is not None and len(view.spacing) == len(self.spacing_low):
            for s, lo, hi in zip(view.spacing, self.spacing_low, self.spacing_high):
                if not lo / (1 + SPACING_TOLERANCE) <= s <= hi * (1 + SPACING_TOLERANCE):
                    shown = "x".join(f"{v:.3g}" for v in view.spacing)
                    rng = " to ".join("x".join(f"{v:.3g}" for v in b) for b in (self.spacing_low, self.spacing_high))
                    return f"spacing {shown} mm is outside the training images' {rng} mm"
        return None


def _resample(view: _View, kind: _Kind) -> Tensor:
    """``view`` at the training set's median spacing, centre-cropped or padded with background to its size."""
    x = view.image
    if view.spacing is not None and kind.spacing_median is not None and len(view.spacing) == len(kind.spacing_median):
        scaled = tuple(max(1, round(n * s / t)) for n, s, t in zip(x.shape[1:], view.spacing, kind.spacing_median))
        if scaled != tuple(x.shape[1:]):
            mode = "bilinear" if x.ndim == 3 else "trilinear"
            x = F.interpolate(x[None], size=scaled, mode=mode, align_corners=False)[0]
    for axis, target in enumerate(kind.size):
        n = x.shape[axis + 1]
        if n > target:
            start = (n - target) // 2
            x = x.narrow(axis + 1, start, target)
        elif n < target:
            before = (target - n) // 2
            pad = [0, 0] * (x.ndim - 1)
            pad[2 * (x.ndim - 2 - axis)], pad[2 * (x.ndim - 2 - axis) + 1] = before, target - n - before
            x = F.pad(x, pad, value=BACKGROUND)
    return x


def _as_set(views: list[_View], kind: _Kind, resample: bool, role: str) -> ImageSet:
    images = []
    for view in views:
        if kind.modality and view.modality and view.modality != kind.modality:
            raise InputError(view.source, f"modality {view.modality} differs from the training images' {kind.modality}")
        problem = kind.problem(view)
        if problem is not None and not resample:
            raise InputError(view.source, f"{problem} ({role} image); resample it (--resample) or leave it out")
        images.append(_resample(view, kind) if problem is not None else view.image)
    return ImageSet(torch.stack(images), [v.source for v in views], [v.subject for v in views])


def _manifest_of(source: Path) -> Path | None:
    if source.is_file() and source.suffix == ".csv":
        return source
    if source.is_dir() and (source / "manifest.csv").is_file():
        return source / "manifest.csv"
    return None


def drop_from_manifest(source: str | Path, flagged_files: set[str]) -> dict[str, Any]:
    """Rewrite SYNTH's manifest (atomically) without the rows whose image is in ``flagged_files`` (absolute paths)."""
    manifest = _manifest_of(Path(source))
    if manifest is None:
        raise InputError(source, "--drop needs a manifest (a folder with manifest.csv, or a .csv)")
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [r for r in rows if str((manifest.parent / r["image"]).resolve()) not in flagged_files]
    write_synthetic_manifest(manifest, kept)
    return {"manifest": str(manifest), "dropped": len(rows) - len(kept), "kept": len(kept)}


def save_pairs(synthetic: Tensor, train: Tensor, distance: np.ndarray, nearest: np.ndarray, path: Path, k: int = 8) -> Path:
    """PNG: the ``k`` synthetic images closest to the training set (top row) above their nearest training images.

    3D images show their middle slice along the last axis. Both rows share one display
    window, the range of the shown images.
    """
    order = np.argsort(distance, kind="stable")[:k]
    pairs = torch.cat([synthetic[order], train[nearest[order]]])
    if pairs.ndim == 5:
        pairs = pairs[..., pairs.shape[-1] // 2]
    low, high = pairs.min(), pairs.max()
    pairs = (pairs - low) / (high - low).clamp_min(1e-6) * 2 - 1
    return save_grid(pairs, path, nrow=len(order))


def memorization_check(
    synthetic: str | Path,
    train: str | Path,
    holdout: str | Path,
    dims: str = "2",
    rate: float = DEFAULT_RATE,
    too_few: Literal["refuse", "warn"] = "warn",
    resample: bool = False,
    drop: bool = False,
    out: str | Path | None = None,
    flips: bool = True,
) -> dict[str, Any]:
    """``udl-med memorization SYNTH TRAIN --holdout HELD``: the check on image sets (see the module docstring).

    A pipeline step (``run: memorization``) and a library function.

    Args:
        synthetic, train, holdout: folders, manifests or volumes (HOLDOUT: real images of
            subjects not in TRAIN, the calibration set).
        dims: ``"2"`` (slices) or ``"3"`` (volumes).
        rate: requested false-alarm rate per new subject (default 1%).
        too_few: with too few held-out subjects for ``rate``: ``warn`` (calibrate at the
            smallest rate they can state, say so in ``warning``) or ``refuse`` (exit 2).
        resample: resample images of another size or spacing to the training images'
            instead of refusing them.
        drop: remove flagged images from SYNTH's manifest.
        out: folder for ``memorization.png``.
        flips: search flipped alignments too.

    Returns:
        the numbers of :func:`~udl_med.metrics.memorization.memorization_tensors` (``rate``,
        ``stated_rate``, ``stated_rate_interval``, ``n_calibration_subjects``, ``threshold``,
        ...), ``flagged`` (per flagged synthetic view: image, nearest training image,
        distance, alignment), ``artifacts``, and with ``drop`` also ``manifest`` /
        ``dropped`` / ``kept``.

    Raises:
        InputError: unreadable or empty sets, images of another kind (size, spacing,
            modality), held-out subjects that are training subjects.
        CalibrationError: ``too_few="refuse"`` and too few held-out subjects.
    """
    layout, _ = parse_dims(dims)
    train_views = _read(train, layout)
    kind = _Kind.of(train_views)
    tr = _as_set(train_views, kind, resample, "training")
    ho = _as_set(_read(holdout, layout, kind.modality), kind, resample, "held-out")
    shared = set(ho.subjects) & set(tr.subjects)
    if shared:
        raise InputError(holdout, f"held-out subject {sorted(shared)[0]!r} is also a training subject: calibration needs subjects the generator never saw")
    syn = _as_set(_read(synthetic, layout, kind.modality), kind, resample, "synthetic")
    result = memorization_tensors(syn.images, tr.images, ho.images, ho.subjects, rate, too_few, flips)
    found = result.pop("nearest")
    flagged = result.pop("flagged_index")
    distance, nearest = found.distance.numpy(), found.index.numpy()
    result["flagged"] = [
        {
            "image": syn.sources[i],
            "nearest_train": tr.sources[int(nearest[i])],
            "distance": float(distance[i]),
            "alignment": found.alignments[i].as_dict(),
        }
        for i in flagged
    ]
    result["closest_distance"] = float(distance.min())
    result["dims"] = str(dims)
    result["artifacts"] = []
    if out is not None:
        result["artifacts"].append(str(save_pairs(syn.images, tr.images, distance, nearest, Path(out) / "memorization.png")))
    if drop:
        result.update(drop_from_manifest(synthetic, {str(Path(syn.sources[i]).resolve()) for i in flagged}))
    log.info(
        "memorisation: %d of %d synthetic views flagged (stated false-alarm rate %.3g per new subject, %d calibration subjects)",
        len(flagged), result["n_synthetic"], result["stated_rate"], result["n_calibration_subjects"],
    )
    return result
