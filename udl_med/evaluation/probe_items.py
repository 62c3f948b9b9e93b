"""Probe items: labeled held-out images cut into the model inputs a probe scores.

The lesion class of a phantom is a property of the subject, but most of a subject's
voxels say nothing about it. When a label map lies beside an image (the phantoms'
``tissue.nii.gz``, ``roi: auto``/``liver``), items are crops of the training item size
centred on the liver (2D: on every slice through the liver; 3D: one patch at the
liver's centre), and the slices of lesion subjects that the lesion does not reach are
dropped, so every item shows what its label says. Without label maps (``roi: whole``)
an item is the mean feature over an image's foreground slices or patches, a much harder
task. The phantom anatomy (which label values are liver and lesion) comes from
:mod:`udl_med.data.phantoms`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from udl_med import keys
from udl_med.data.manifest import select_images
from udl_med.data.phantoms import TISSUES, write_phantoms
from udl_med.data.readers import read_image
from udl_med.data.split import DEFAULT_SPLIT_FRACTIONS, DEFAULT_SPLIT_SEED, records_of_split
from udl_med.data.transforms import volume_transform
from udl_med.errors import InputError, UserError
from udl_med.inference.encode import image_items, item_config

__all__ = ["LABEL_MAP_NAME", "ROI_CHOICES", "MIN_ROI_VOXELS", "ProbeItems", "centred_crop", "liver_slices", "phantom_ct_probe_items", "probe_items"]

LABEL_MAP_NAME = "tissue.nii.gz"  # the phantoms' label map, beside ct.nii.gz / mr.nii.gz
ROI_CHOICES = ("auto", "liver", "whole")
MIN_ROI_VOXELS = 4  # a slice through fewer liver voxels is not an item


@dataclass(frozen=True)
class ProbeItems:
    """Model inputs ``items`` ``(N, C, *size)`` with a class ``labels`` ``(N,)`` and a ``subjects`` group ``(N,)`` each.

    ``pooled``: items are whole images whose feature is the mean over ``parts`` (``roi: whole``).
    """

    items: Tensor
    labels: np.ndarray
    subjects: np.ndarray
    roi: str
    parts: list[Tensor] | None = None


def centred_crop(volume: Tensor, centre: Sequence[int], size: Sequence[int]) -> Tensor:
    """Crop ``(C, *spatial)`` to ``size`` around ``centre``, shifted to stay inside the volume."""
    index = [slice(None)]
    for c, s, n in zip(centre, size, volume.shape[1:]):
        start = min(max(int(c) - s // 2, 0), max(n - s, 0))
        index.append(slice(start, start + s))
    return volume[tuple(index)]


def _liver_values() -> tuple[int, int]:
    return TISSUES.index("liver"), TISSUES.index("lesion")


def _roi_items(cfg: Any, record: Any, label_map: Path) -> list[Tensor]:
    """Liver-centred items of one image (see the module docstring)."""
    prepared = volume_transform(cfg)({keys.IMAGE: str(record.path), keys.MODALITY: record.modality or ""})[keys.IMAGE]
    tissue = read_image(label_map)[0].numpy()  # (X, Y, Z)
    if tissue.ndim != 3:
        raise InputError(label_map, "the label map must be a 3D volume")
    laid_out = tissue.shape if cfg.layout == "3d" else np.moveaxis(tissue, cfg.slice_axis, 0).shape
    expected = tuple(prepared.shape[1:]) if cfg.layout == "3d" else tuple(prepared.shape)
    if tuple(laid_out) != expected:
        raise InputError(label_map, f"label map shape {tissue.shape} does not match its image (laid out {expected})")
    if cfg.layout == "3d":
        liver_value, lesion_value = _liver_values()
        liver = (tissue == liver_value) | (tissue == lesion_value)
        if liver.sum() < MIN_ROI_VOXELS:
            return []
        centre = [int(round(c.mean())) for c in np.nonzero(liver)]
        return [centred_crop(prepared, centre, cfg.size)]
    context = cfg.context if cfg.layout == "2.5d" else 0
    items = []
    for k, centre in liver_slices(np.moveaxis(tissue, cfg.slice_axis, 0), bool(record.label)):
        channels = prepared.index_select(0, torch.arange(k - context, k + context + 1).clamp_(0, prepared.shape[0] - 1))
        items.append(centred_crop(channels, centre, cfg.size))
    return items


def liver_slices(tissue: np.ndarray, lesion_subject: bool) -> list[tuple[int, list[int]]]:
    """``(k, centre)`` of the slices ``tissue[k]`` (a phantom label map, slices first) that are 2D liver items, and the liver's centre in each.

    A slice is an item when it cuts at least :data:`MIN_ROI_VOXELS` of liver (lesion
    included) and, for a lesion subject, the lesion: a slice the lesion does not reach
    would carry a wrong label. What cuts the crops of an image and of its label map alike.
    """
    liver_value, lesion_value = _liver_values()
    liver = (tissue == liver_value) | (tissue == lesion_value)
    lesion = tissue == lesion_value
    return [
        (k, [int(round(c.mean())) for c in np.nonzero(liver[k])])
        for k in range(liver.shape[0])
        if liver[k].sum() >= MIN_ROI_VOXELS and (not lesion_subject or lesion[k].any())
    ]


def probe_items(
    data: str | Path,
    input_spec: dict[str, Any],
    roi: str = "auto",
    split: str | None = None,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    split_seed: int = DEFAULT_SPLIT_SEED,
) -> ProbeItems:
    """Cut the labeled images of ``data`` into probe items for an encoder with ``input_spec``.

    Args:
        data: a manifest (or folder) with ``label`` and ``subject`` for every image.
        input_spec: the ``input`` section of ``encoder.json`` (layout, size, normalisation).
        roi: ``auto`` (liver items where label maps exist, else whole images), ``liver``, ``whole``.
        split: use only the images of this manifest split (None: all); a source without a
            split column is split by subject as training split it (``split_fractions``,
            ``split_seed``: :func:`~udl_med.data.split.records_of_split`).

    Raises:
        InputError: images without labels, or ``roi: liver`` without label maps.
        UserError: an unknown ``roi``.
    """
    if roi not in ROI_CHOICES:
        raise UserError(f"unknown probe roi {roi!r}; valid: {', '.join(ROI_CHOICES)}")
    records = records_of_split(data, split, split_fractions, split_seed)
    if not records:
        raise InputError(data, f"no images in split {split!r}")
    unlabeled = [r for r in records if r.label is None]
    if unlabeled:
        raise InputError(unlabeled[0].path, "the probe needs a label for every image (manifest column 'label')")
    maps = {r.path: r.path.parent / LABEL_MAP_NAME for r in records}
    has_maps = all(p.is_file() for p in maps.values())
    if roi == "liver" and not has_maps:
        raise InputError(data, f"roi 'liver' needs a {LABEL_MAP_NAME} beside every image")
    use_roi = "liver" if roi == "liver" or (roi == "auto" and has_maps) else "whole"
    items, labels, subjects, parts = [], [], [], []
    for record in records:
        cfg = item_config(input_spec, record.path)
        subject = record.subject or str(record.path)
        if use_roi == "liver":
            found = _roi_items(cfg, record, maps[record.path])
            items.extend(found)
            labels.extend([record.label] * len(found))
            subjects.extend([subject] * len(found))
        else:
            cut = image_items(cfg, record.path, record.modality)
            parts.append(cut.items)
            items.append(cut.items[0])
            labels.append(record.label)
            subjects.append(subject)
    if not items:
        raise InputError(data, "no probe items (no image shows a liver)")
    return ProbeItems(
        items=torch.stack(items).float(),
        labels=np.asarray(labels, dtype=np.int64),
        subjects=np.asarray(subjects),
        roi=use_roi,
        parts=parts if use_roi == "whole" else None,
    )


def phantom_ct_probe_items(folder: str | Path, n: int, seed: int, input_spec: dict[str, Any], roi: str = "liver") -> ProbeItems:
    """Write ``n`` CT/MR phantoms (64 x 64 x 16) of ``seed`` to ``folder`` and cut their CT images into probe items.

    The labeled items of the K+1 and synthesis benchmarks: with ``roi: liver`` every slice
    through the liver, cropped around it (``input_spec`` sets the size and the CT window).
    """
    folder = Path(folder)
    written = write_phantoms(folder, n=n, shape=(64, 64, 16), seed=seed)
    ct = select_images(written["manifest"], str(folder / "ct.csv"), modality="CT")["manifest"]
    return probe_items(ct, input_spec, roi=roi)
