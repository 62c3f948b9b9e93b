"""``udl-med encode MODEL INPUT --out FEATURES.npz``: one latent vector per image.

Each image (a volume, DICOM series, every volume of a folder or manifest) is prepared as
in training (:func:`udl_med.data.transforms.volume_transform`: read, normalise with the
run's CT window or MR percentiles, pad with background) and cut into the items the model
was trained on: every foreground slice across the run's ``slice_axis`` for 2D/2.5D
models (with its ``context`` neighbours as channels), or a grid of patches covering the
volume for 3D models, keeping those with foreground. Items are centre-cropped to the
training size (or resized, for runs trained with ``crop: resize``). The method's
``encode`` maps every item to a vector, and an image's vector is the mean over its items.

Geometry: each image is first resampled to the spacing and orientation the model was
trained on (:mod:`udl_med.inference.model_grid`, MONAI); ``--no-resample`` uses it as it
is and refuses a large mismatch (exit code 2).

``FEATURES.npz`` holds ``features`` ``(N, F)`` float32, ``paths`` ``(N,)``, ``modality``,
``subject``, ``label`` (-1 where the manifest has none) and ``n_items`` per image.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from udl_med import keys
from udl_med.data.config import DataConfig
from udl_med.data.datasets import FOREGROUND_LEVEL
from udl_med.data.io import list_images, read_image
from udl_med.data.transforms import volume_transform
from udl_med.engine.model_io import load_model
from udl_med.errors import InputError, UserError
from udl_med.inference.model_grid import to_model_grid
from udl_med.io_utils import atomic_write
from udl_med.methods.base import Capability
from udl_med.nets.exported import encode_items

log = logging.getLogger(__name__)

DATA_KEYS = ("layout", "size", "slice_axis", "context", "crop", "ct_window", "mr_percentiles", "foreground_fraction")


@dataclass(frozen=True)
class ImageItems:
    """The model inputs cut from one image: ``items`` ``(N, C, *size)`` and where each came from."""

    items: Tensor
    positions: list[int]  # slice index (2D) or patch number (3D) of each item
    volume_shape: tuple[int, ...]  # the prepared volume: (S, P, Q) slice-first, or (1, X, Y, Z)


def item_config(data: Any, source: str | Path):
    """A :class:`DataConfig` for cutting items from ``source`` as a run's ``data`` section did.

    ``data``: the run's validated DataConfig, or a mapping of its item settings (an
    exported encoder's ``input`` section); settings it lacks take DataConfig's defaults.
    """
    if isinstance(data, DataConfig):
        data = data.model_dump(mode="json")
    return DataConfig(source=str(source), **{k: data[k] for k in DATA_KEYS if data.get(k) is not None})


def _starts(n: int, size: int) -> list[int]:
    """Patch starts along one axis that cover ``n`` voxels with windows of ``size``."""
    if n <= size:
        return [0]
    count = math.ceil(n / size)
    return sorted({round(i * (n - size) / (count - 1)) for i in range(count)})


def on_model_grid(image: Any, kept: Any, resample: bool = True) -> Any:
    """``image`` (a path or a ``(1, X, Y, Z)`` MetaTensor) on the model's training grid (:mod:`udl_med.inference.model_grid`).

    A path stays a path when the model keeps no training geometry (nothing to match).

    Raises:
        InputError: an unreadable image. UserError: a refused mismatch (resampling off).
    """
    if kept is None:
        return image

    source = image if isinstance(image, str | Path) else getattr(image, "meta", {}).get("filename_or_obj", "<image>")
    loaded = image if isinstance(image, torch.Tensor) else read_image(image)
    return to_model_grid(loaded, kept, resample, source)[0]


def image_items(cfg: Any, path: str | Path | Tensor, modality: str | None) -> ImageItems:
    """Cut one image into model inputs, as described in the module docstring.

    Args:
        cfg: a :class:`udl_med.data.config.DataConfig` (see :func:`item_config`).
        path: the image: a path, or a ``(1, X, Y[, Z])`` (Meta)Tensor in physical units.
        modality: ``CT``, ``MR`` or None (then the file's own).

    Raises:
        InputError: an unreadable image (from the reader).
    """
    d = volume_transform(cfg)({keys.IMAGE: path if isinstance(path, Tensor) else str(path), keys.MODALITY: modality or ""})
    vol: Tensor = d[keys.IMAGE]
    size = tuple(cfg.size)
    if cfg.layout == "3d":
        spatial = vol.shape[1:]
        if cfg.crop == "resize":
            return ImageItems(F.interpolate(vol[None], size=size, mode="trilinear", align_corners=False), [0], tuple(vol.shape))
        grids = [_starts(n, s) for n, s in zip(spatial, size)]
        patches, fg = [], []
        for sx in grids[0]:
            for sy in grids[1]:
                for sz in grids[2]:
                    p = vol[:, sx : sx + size[0], sy : sy + size[1], sz : sz + size[2]]
                    patches.append(p)
                    fg.append(float((p > FOREGROUND_LEVEL).float().mean()))
        keep = [i for i, f in enumerate(fg) if f >= cfg.foreground_fraction] or [int(np.argmax(fg))]
        return ImageItems(torch.stack([patches[i] for i in keep]), keep, tuple(vol.shape))
    fraction = (vol > FOREGROUND_LEVEL).flatten(1).float().mean(1)  # per slice
    slices = [int(k) for k in torch.nonzero(fraction >= cfg.foreground_fraction).flatten()] or [int(fraction.argmax())]
    c = cfg.context if cfg.layout == "2.5d" else 0
    items = []
    for k in slices:
        x = vol.index_select(0, torch.arange(k - c, k + c + 1).clamp_(0, vol.shape[0] - 1))
        if cfg.crop == "resize":
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        else:
            (p, q), (sp, sq) = x.shape[1:], size
            i, j = (p - sp) // 2, (q - sq) // 2
            x = x[:, i : i + sp, j : j + sq]
        items.append(x)
    return ImageItems(torch.stack(items), slices, tuple(vol.shape))


def _records(input: str | Path) -> list[Any]:
    records = list_images(input)
    if not records:
        raise InputError(input, "no images found")
    return records


def save_npz(out: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` through :func:`udl_med.io_utils.atomic_write`."""
    atomic_write(out, lambda tmp: np.savez(tmp, **arrays))


def encode_records(
    encode: Callable[[Tensor], Tensor],
    data: Any,
    records: Sequence[Any],
    kept: Any = None,
    resample: bool = True,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Mean feature vector of every record's items: ``(N, F)`` and the item count of each.

    ``kept``: the model's training geometry; each image is resampled to it first
    (``resample``). ``device``: where the network is (the items are moved there).
    """
    features, counts = [], []
    for record in records:
        cut = image_items(item_config(data, record.path), on_model_grid(record.path, kept, resample), record.modality)
        codes = encode_items(encode, cut.items, device=device)
        features.append(codes.mean(0).numpy())
        counts.append(len(cut.items))
    return np.stack(features).astype(np.float32), counts


def encode_to_file(
    model: str, input: str | Path, out: str | Path, device: str | None = None, resample: bool = True  # noqa: A002
) -> dict[str, Any]:
    """Encode every image of ``input`` with ``model``; write ``out`` (.npz). See the module docstring.

    Each image is first resampled to the model's training spacing and orientation
    (:mod:`udl_med.inference.model_grid`); ``resample=False`` uses it as it is, and
    refuses a large mismatch. ``device``: where the network runs (default: the CPU).

    Returns:
        ``{"out", "n_images", "n_features", "method"}``.

    Raises:
        UserError: a model that cannot encode, or an output name that is not ``.npz``.
        InputError: an input without images, or an unreadable image.
    """
    out = Path(out)
    if out.suffix != ".npz":
        raise UserError(f"{out}: the features file must end in .npz")
    loaded = load_model(model, device=device)
    method = loaded.method
    if Capability.ENCODE not in method.capabilities:
        raise UserError(f"{loaded.source}: method {method.name!r} cannot encode")
    records = _records(input)
    features, counts = encode_records(method.encode, loaded.run_config.data, records, loaded.data_spec.geometry, resample, next(method.parameters()).device)
    save_npz(
        out,
        {
            "features": features,
            "paths": np.array([str(r.path) for r in records]),
            "modality": np.array([r.modality or "" for r in records]),
            "subject": np.array([r.subject or "" for r in records]),
            "label": np.array([-1 if r.label is None else int(r.label) for r in records], dtype=np.int64),
            "n_items": np.array(counts, dtype=np.int64),
        },
    )
    log.info("encoded %d images of %s into %s", len(records), input, out)
    return {"out": str(out), "n_images": len(records), "n_features": int(features.shape[1]), "method": method.name}
