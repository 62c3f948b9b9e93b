"""The deterministic MONAI transform chain that prepares a scan for training items.

:func:`volume_transform` reads a record (:func:`udl_med.data.io.read_image`), normalises
it into [-1, 1] (:mod:`udl_med.data.normalize`), pads it with background to at least the
item size and lays it out slice-first. Training datasets (:mod:`udl_med.data.datasets`)
cache its output; ``encode`` and the probes run it on single scans, so every path sees
the same items. Random augmentation is separate (:mod:`udl_med.data.augment`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.transforms import Compose, MapTransform, SpatialPad

from udl_med import keys
from udl_med.data.config import DataConfig
from udl_med.data.io import read_image
from udl_med.data.normalize import NormalizeModalityd
from udl_med.errors import InputError, UserError

__all__ = ["ReadImaged", "SliceFirstd", "volume_transform", "unwrap_user_error"]


class ReadImaged(MapTransform):
    """Dictionary transform: :func:`udl_med.data.io.read_image` on ``keys`` (a MetaTensor passes as it is); fills ``modality``.

    The manifest's modality wins over the file's; a file that says otherwise is an error.
    An image that says none (a NIfTI from elsewhere has no modality field) gets
    ``unstated``: the run's ``data.modality``, which says what the images are.
    """

    def __init__(self, keys_: Sequence[str] | str = keys.IMAGE, modality_key: str = keys.MODALITY, unstated: str | None = None) -> None:
        super().__init__(keys_)
        self.modality_key = modality_key
        self.unstated = unstated or ""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key] if isinstance(d[key], torch.Tensor) else read_image(d[key])  # an image read (and resampled) already
            listed, found = d.get(self.modality_key), image.meta.get("modality")
            if listed and found and listed != found:
                raise InputError(d[key], f"the manifest says modality {listed} but the file says {found}")
            d[self.modality_key] = listed or found or self.unstated
            d[key] = image
        return d


class SliceFirstd(MapTransform):
    """Dictionary transform: ``(1, X, Y, Z)`` -> plain ``(S, P, Q)`` float32 with the slice axis first.

    For 3D items (``slice_axis=None``) the volume stays ``(1, X, Y, Z)`` as a plain tensor.
    """

    def __init__(self, keys_: Sequence[str] | str, slice_axis: int | None) -> None:
        super().__init__(keys_)
        self.slice_axis = slice_axis

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
            if self.slice_axis is not None:
                if x.ndim == 3:  # a 2D image is one slice
                    x = x[..., None]
                spatial = [1, 2, 3]
                axis = 1 + self.slice_axis
                spatial.remove(axis)
                x = x[0].permute(axis - 1, spatial[0] - 1, spatial[1] - 1)
            d[key] = x.to(torch.float32).contiguous()
        return d


class _Chain(Compose):
    """A ``Compose`` whose bad-input errors come out as themselves, not wrapped by MONAI."""

    def __call__(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(data, *args, **kwargs)
        except RuntimeError as err:
            user = unwrap_user_error(err)
            if user is None:
                raise
            raise user from None


def volume_transform(cfg: DataConfig) -> Compose:
    """The deterministic chain from a record dict to a normalised, padded, slice-first volume.

    Input ``{image: path, modality: "CT" | "MR" | ""}``; output ``image`` as a plain
    float32 tensor ``(S, P, Q)`` (slice axis first) for 2D/2.5D, ``(1, X, Y, Z)`` for 3D.
    Bad inputs raise :class:`~udl_med.errors.InputError` (not MONAI's RuntimeError).
    """
    if cfg.layout == "3d":
        pad_size: list[int] = list(cfg.size)
    else:
        pad_size = [-1, -1, -1]
        others = [a for a in range(3) if a != cfg.slice_axis]
        for a, s in zip(others, cfg.size):
            pad_size[a] = s
    chain = [
        ReadImaged(keys.IMAGE, unstated=cfg.modality if cfg.pairing == "none" else None),
        NormalizeModalityd(keys.IMAGE, ct_window=cfg.ct_window, mr_percentiles=cfg.mr_percentiles, modality_key=keys.MODALITY),
    ]
    if cfg.crop != "resize":
        chain.append(_PadIfNeededd(keys.IMAGE, pad_size))
    chain.append(SliceFirstd(keys.IMAGE, None if cfg.layout == "3d" else cfg.slice_axis))
    return _Chain(chain)


class _PadIfNeededd(MapTransform):
    """Pad with background (-1) to at least ``size`` (-1 keeps an axis); 2D images gain a slice axis."""

    def __init__(self, keys_: Sequence[str] | str, size: Sequence[int]) -> None:
        super().__init__(keys_)
        self.size = list(size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            size = self.size[: x.ndim - 1]
            if any(s > n for s, n in zip(size, x.shape[1:])):
                d[key] = SpatialPad(spatial_size=[max(s, n) for s, n in zip(size, x.shape[1:])], value=-1.0)(x)
        return d


def unwrap_user_error(err: BaseException) -> UserError | None:
    """The udl-med user error MONAI's ``apply_transform`` wrapped in a RuntimeError, if any."""
    seen = err
    while seen is not None:
        if isinstance(seen, UserError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
