"""A scan onto the model's training grid, and a result back onto the scan's exact grid.

A model file keeps the spacing and orientation of its first training scan
(:class:`udl_med.data.spec.TrainingGeometry`). ``translate``, ``encode`` and ``classify``
compare each input with it. An input whose axis codes (``LPS``, ``RAS`` ...) are the
training ones and whose every spacing the network sees is within a factor
:data:`MAX_SPACING_RATIO` (1.5) of the training spacing is used as it is: the training
scans themselves vary that much (the phantoms by up to 1.35x), and the network was
trained on them at their own spacing. Any other input is brought onto the training grid
with MONAI before the network sees it: :class:`monai.transforms.Orientation` to the
training axis codes (a permutation and flips, no interpolation), then, where a seen
spacing is off by more than the factor, :class:`monai.transforms.Spacing` to the
training spacing (bilinear, border padding); ``translate`` resamples its output back onto the input's
grid (:class:`monai.transforms.SpatialResample` to the input's affine and shape) and
writes it with the input's own geometry and meta, so spacing, origin, direction and
shape are the input's exactly. A 0.2 mm scan given to a 1 mm model is resampled; a
1.1 mm scan is not.

For 2D and 2.5D models only the in-plane spacing counts: the spacing across the slice
axis stays the input's (a slice model never sees it).

With resampling off (``resample=False``, ``--no-resample``) an input that would be
resampled is refused with a :class:`~udl_med.errors.UserError` (exit code 2) that names
both grids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from udl_med.data.geometry import Geometry
from udl_med.errors import UserError

log = logging.getLogger(__name__)

MAX_SPACING_RATIO = 1.5  # a seen spacing further than this factor from training's is resampled (refused without resampling)
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # our affines are RAS (as MONAI's ITKReader builds them)
_ITK_KEYS = ("spacing", "origin", "direction")  # stale once MONAI resamples; the affine is the truth then

__all__ = ["MAX_SPACING_RATIO", "GridPlan", "plan_grid", "to_model_grid", "back_to", "axcodes"]


def axcodes(affine: Any) -> str:
    """MONAI/nibabel axis codes (``RAS``, ``LPS`` ...) of a RAS affine."""
    import nibabel as nib  # lazy: nibabel is only needed for NIfTI

    return "".join(nib.orientations.aff2axcodes(np.asarray(affine, dtype=np.float64)))


@dataclass(frozen=True)
class GridPlan:
    """How an input relates to the model's training grid.

    Attributes:
        codes: the training axis codes (e.g. ``LPS``).
        spacing: the target spacing in the training axis order (mm).
        input_codes: the input's axis codes.
        input_spacing: the input's spacing in the training axis order (mm).
        ratio: the largest factor between a seen input spacing and the target's.
        same: the input is close enough to the training grid to be used as it is.
    """

    codes: str
    spacing: tuple[float, ...]
    input_codes: str
    input_spacing: tuple[float, ...]
    ratio: float
    same: bool


def plan_grid(image: MetaTensor, kept: Any) -> GridPlan:
    """Compare ``image`` ``(1, X, Y, Z)`` with the training geometry ``kept`` (see the module docstring)."""
    from monai.data.utils import affine_to_spacing  # lazy: MONAI's transforms/networks are slow to import; only this path needs them
    from monai.transforms import Orientation  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    codes = axcodes(Geometry.create(kept.spacing, (0.0, 0.0, 0.0), kept.direction).ras_affine())
    input_codes = axcodes(image.affine)
    oriented = Orientation(axcodes=codes, labels=_RAS_LABELS)(image) if input_codes != codes else image
    spacing_in = [float(v) for v in affine_to_spacing(oriented.affine, r=3)]
    target = [float(v) for v in kept.spacing]
    seen = [a for a in range(3) if a != kept.slice_axis]
    if kept.slice_axis is not None:
        target[kept.slice_axis] = spacing_in[kept.slice_axis]
    ratio = max(max(spacing_in[a] / target[a], target[a] / spacing_in[a]) for a in seen)
    same = input_codes == codes and ratio <= MAX_SPACING_RATIO
    return GridPlan(codes, tuple(target), input_codes, tuple(spacing_in), float(ratio), same)


def _shown(spacing: tuple[float, ...]) -> str:
    return " x ".join(f"{s:.4g}" for s in spacing)


def to_model_grid(image: Any, kept: Any, resample: bool = True, source: Any = "<image>") -> tuple[Any, bool]:
    """``image`` on the model's training grid, and whether it was resampled.

    Plain tensors (no geometry), 2D images and models without a training geometry
    (in-memory data) pass through unchanged.

    Raises:
        UserError: resampling off and the input's orientation or a seen spacing differs
            by more than :data:`MAX_SPACING_RATIO` from the training grid.
    """
    if kept is None or not isinstance(image, MetaTensor) or image.ndim != 4:
        return image, False
    from monai.transforms import Orientation, Spacing  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    plan = plan_grid(image, kept)
    if plan.same:
        return image, False
    if not resample:
        raise UserError(
            f"{source}: its grid ({_shown(plan.input_spacing)} mm, {plan.input_codes}) differs from the model's training grid "
            f"({_shown(plan.spacing)} mm, {plan.codes}) by {plan.ratio:.2f}x (more than {MAX_SPACING_RATIO}x) or in orientation; "
            "leave resampling on (drop --no-resample) or resample the scan first"
        )
    spacing_too = plan.ratio > MAX_SPACING_RATIO
    log.info(
        "%s: %s from %s mm (%s) to the model's %s mm (%s)",
        source,
        "resampled" if spacing_too else "reoriented (no interpolation)",
        _shown(plan.input_spacing),
        plan.input_codes,
        _shown(plan.spacing) if spacing_too else _shown(plan.input_spacing),
        plan.codes,
    )
    with torch.no_grad():
        out = Orientation(axcodes=plan.codes, labels=_RAS_LABELS)(image)
        if spacing_too:  # within the factor, the spacing stays the input's (as for an input in the training orientation)
            out = Spacing(pixdim=plan.spacing, mode="bilinear", padding_mode="border")(out)
    for key in _ITK_KEYS:
        out.meta.pop(key, None)
    return out, True


def back_to(output: MetaTensor, reference: MetaTensor) -> MetaTensor:
    """``output`` (on the model's grid) resampled onto ``reference``'s grid, with ``reference``'s geometry and meta.

    The result's affine, spacing, origin, direction and shape are ``reference``'s; its
    ``modality`` is ``output``'s.
    """
    from monai.transforms import SpatialResample  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    with torch.no_grad():
        moved = SpatialResample(mode="bilinear", padding_mode="border")(
            output, dst_affine=reference.affine, spatial_size=tuple(reference.shape[1:])
        )
    data = moved.as_tensor() if isinstance(moved, MetaTensor) else torch.as_tensor(moved)
    meta = {k: v for k, v in dict(reference.meta).items() if k != "affine"}
    meta["modality"] = output.meta.get("modality", meta.get("modality"))
    return MetaTensor(data.to(torch.float32), affine=reference.affine.clone(), meta=meta)
