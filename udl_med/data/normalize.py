"""Intensity normalisation into [-1, 1] with an exact inverse.

One documented mapping per modality, so that a network's output in [-1, 1] can be
written back in the input's units (a translated CT in Hounsfield units):

- **CT**: clip to a Hounsfield window, by default ``CT_WINDOW = (-1000, 1000)`` HU (air
  to dense bone), and map the window linearly onto [-1, 1]. The inverse is exact for
  every voxel inside the window; voxels outside it come back at the window's edge.
- **MR** (and images of unknown modality): the volume's own robust percentiles, by
  default ``MR_PERCENTILES = (0.5, 99.5)``, map onto -1 and 1 and the result is clipped
  to [-1, 1]. The two percentile values are kept in the parameters, so the inverse
  restores the input's scale (arbitrary MR units).

The parameters are a small JSON-friendly dict (``{"modality", "kind", "low", "high"}``);
the transforms keep them in the MetaTensor's ``meta[NORM_META_KEY]`` and in MONAI's
``applied_operations`` so that ``Compose.inverse`` undoes them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform
from monai.utils import TraceKeys

CT_WINDOW: tuple[float, float] = (-1000.0, 1000.0)
MR_PERCENTILES: tuple[float, float] = (0.5, 99.5)
NORM_META_KEY = "udl_norm"  # MetaTensor meta key holding the normalisation parameters

__all__ = [
    "CT_WINDOW",
    "MR_PERCENTILES",
    "NORM_META_KEY",
    "normalize",
    "denormalize",
    "normalization_params",
    "NormalizeModality",
    "NormalizeModalityd",
]


def _as_numpy(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        return image.detach().cpu().numpy()
    return np.asarray(image)


def normalization_params(
    image: Any,
    modality: str | None,
    ct_window: Sequence[float] = CT_WINDOW,
    mr_percentiles: Sequence[float] = MR_PERCENTILES,
) -> dict[str, Any]:
    """Return the parameters :func:`normalize` uses for ``image``.

    CT uses the fixed window; anything else the image's own percentiles. A constant
    image gets a unit-wide range so the mapping stays invertible.
    """
    if modality == "CT":
        low, high = float(ct_window[0]), float(ct_window[1])
        if not low < high:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {tuple(ct_window)}")
        return {"modality": "CT", "kind": "window", "low": low, "high": high}
    if modality not in (None, "MR"):
        raise ValueError(f"modality must be 'CT', 'MR' or None, got {modality!r}")
    p_low, p_high = float(mr_percentiles[0]), float(mr_percentiles[1])
    if not 0.0 <= p_low < p_high <= 100.0:
        raise ValueError(f"mr_percentiles must satisfy 0 <= low < high <= 100, got {tuple(mr_percentiles)}")
    low, high = (float(v) for v in np.percentile(_as_numpy(image).astype(np.float64, copy=False), [p_low, p_high]))
    if not high > low:
        high = low + 1.0
    return {"modality": modality, "kind": "percentile", "low": low, "high": high}


def _affine(image: torch.Tensor, scale: float, offset: float, clip: tuple[float, float] | None) -> torch.Tensor:
    """float32 ``(clip(image) * scale + offset)``, computed in float64.

    CPU tensors go through numpy: single-threaded elementwise numpy is many times faster
    than torch's thread pool on a busy machine, and this runs once per volume.
    """
    if image.device.type == "cpu" and not image.requires_grad:
        x = image.detach().numpy().astype(np.float64)
        if clip is not None:
            np.clip(x, clip[0], clip[1], out=x)
        x *= scale
        x += offset
        return torch.from_numpy(x.astype(np.float32))
    x = image.to(torch.float64)
    if clip is not None:
        x = x.clamp(clip[0], clip[1])
    return (x * scale + offset).to(torch.float32)


def _forward(image: torch.Tensor, params: Mapping[str, Any], clip: bool) -> torch.Tensor:
    low, high = float(params["low"]), float(params["high"])
    scale = 2.0 / (high - low)
    return _affine(image, scale, -low * scale - 1.0, (low, high) if clip else None)


def _backward(image: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
    low, high = float(params["low"]), float(params["high"])
    scale = (high - low) / 2.0
    return _affine(image, scale, scale + low, None)


def normalize(
    image: Any,
    modality: str | None,
    ct_window: Sequence[float] = CT_WINDOW,
    mr_percentiles: Sequence[float] = MR_PERCENTILES,
    clip: bool = True,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Map ``image`` into [-1, 1]; return ``(tensor, params)`` for :func:`denormalize`.

    Args:
        image: array or tensor of any shape, in physical units (CT in HU).
        modality: ``"CT"`` (fixed window) or ``"MR"`` / ``None`` (robust percentiles).
        ct_window: the HU window mapped onto [-1, 1].
        mr_percentiles: percentiles mapped onto -1 and 1.
        clip: clip to [-1, 1] (the window) first; without it values may leave [-1, 1].

    Returns:
        A float32 tensor of the same shape (plain ``torch.Tensor`` unless ``image`` is a
        MetaTensor, whose meta is kept) and the parameters.
    """
    params = normalization_params(image, modality, ct_window, mr_percentiles)
    tensor = image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image))
    return _forward(tensor, params, clip), params


def denormalize(tensor: Any, params: Mapping[str, Any]) -> torch.Tensor:
    """Undo :func:`normalize`: map [-1, 1] back to the units described by ``params``."""
    t = tensor if isinstance(tensor, torch.Tensor) else torch.as_tensor(np.asarray(tensor))
    return _backward(t, params)


class NormalizeModality(InvertibleTransform):
    """Array transform: :func:`normalize` a channel-first image, invertibly.

    The modality comes from the constructor, or else from ``img.meta["modality"]``.
    The parameters are stored in ``meta[NORM_META_KEY]`` and in the applied-operations
    stack, so ``inverse`` (or ``Compose.inverse``) restores the input's units.
    """

    def __init__(
        self,
        modality: str | None = None,
        ct_window: Sequence[float] = CT_WINDOW,
        mr_percentiles: Sequence[float] = MR_PERCENTILES,
        clip: bool = True,
    ) -> None:
        self.modality = modality
        self.ct_window = tuple(ct_window)
        self.mr_percentiles = tuple(mr_percentiles)
        self.clip = clip

    def __call__(self, img: Any, modality: str | None = None) -> MetaTensor:
        """Normalise ``img`` (C, *spatial); ``modality`` overrides the constructor's."""
        if not isinstance(img, MetaTensor):
            img = MetaTensor(img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img)))
        modality = modality or self.modality or img.meta.get("modality")
        out, params = normalize(img.as_tensor(), modality, self.ct_window, self.mr_percentiles, self.clip)
        out = MetaTensor(out, meta=dict(img.meta), applied_operations=list(img.applied_operations))
        out.meta[NORM_META_KEY] = dict(params)
        self.push_transform(out, extra_info={"params": dict(params)})
        return out

    def inverse(self, data: Any) -> MetaTensor:
        transform = self.pop_transform(data)
        params = transform[TraceKeys.EXTRA_INFO]["params"]
        out = MetaTensor(
            denormalize(data.as_tensor(), params), meta=dict(data.meta), applied_operations=list(data.applied_operations)
        )
        out.meta.pop(NORM_META_KEY, None)
        return out


class NormalizeModalityd(MapTransform, InvertibleTransform):
    """Dictionary form of :class:`NormalizeModality`.

    Args:
        keys: the image keys to normalise.
        modality_key: a key of the dictionary holding each item's modality (e.g. the
            manifest's), used when ``modality`` is None and before the image's meta.
    """

    def __init__(
        self,
        keys: KeysCollection,
        modality: str | None = None,
        ct_window: Sequence[float] = CT_WINDOW,
        mr_percentiles: Sequence[float] = MR_PERCENTILES,
        clip: bool = True,
        modality_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality_key = modality_key
        self.normalizer = NormalizeModality(modality, ct_window, mr_percentiles, clip)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        modality = (d.get(self.modality_key) or None) if self.modality_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key], modality)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer.inverse(d[key])
        return d
