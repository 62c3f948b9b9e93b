"""Training items from scans: 2D slices, 2.5D slice stacks and 3D patches.

The volumes are read, normalised into [-1, 1] (``udl_med.data.normalize``), padded with
background to at least the item size and re-laid out so the slice axis comes first, by
the deterministic MONAI transform chain of :mod:`udl_med.data.transforms`; a MONAI ``CacheDataset`` keeps the result in
memory (``cache: true``), a plain MONAI ``Dataset`` re-reads it for every item
(``cache: false``). The list of foreground slices (at least ``foreground_fraction``
of the voxels above ``FOREGROUND_LEVEL``) is made once when the dataset is built, so
``__getitem__`` is a slice and a crop.

Randomness: item ``i``'s random draws (crop position, and for unpaired data the MR
partner) come from ``numpy.random.default_rng((seed, i))``; ``set_random_state(seed)``
re-seeds, so the engine can make item ``i`` of epoch ``e`` reproducible, with any
number of loader workers, by seeding each epoch. ``data.augment`` (MONAI dictionary
transforms, :mod:`udl_med.data.augment`) runs on training items after the crop, its
draws seeded from the same ``(seed, i)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import CacheDataset
from monai.data import Dataset as MonaiDataset
from torch.utils.data import Dataset

from udl_med import keys
from udl_med.data.augment import augment_item, build_augment
from udl_med.data.config import DataConfig
from udl_med.data.geometry import Geometry
from udl_med.data.io import ImageRecord, list_images, read_image
from udl_med.data.semi_supervised import SemiSupervisedItems, manifest_file, semi_supervised_records, subject_of
from udl_med.data.spec import DataSpec, TrainingGeometry
from udl_med.data.split import assign_subject_splits
from udl_med.data.transforms import unwrap_user_error, volume_transform
from udl_med.errors import ConfigError, InputError

log = logging.getLogger(__name__)

FOREGROUND_LEVEL = -0.8  # normalised intensity above which a voxel counts as foreground (10% of the range)
_SUBJECT = "subject"
_INDEX = "index"

__all__ = ["build_dataset", "data_spec", "training_geometry", "UdlDataset", "FOREGROUND_LEVEL"]


# --- datasets ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Volume:
    """A prepared volume's place in the base dataset and what the index needs from it."""

    base_index: int
    record: ImageRecord
    modality: str
    shape: tuple[int, ...]  # (S, P, Q) for slices, (1, X, Y, Z) for patches
    foreground: np.ndarray  # per slice (slices) or whole-volume mask fraction (patches)
    fullest: float = 1.0  # the largest foreground fraction of any slice (for the error when none reaches data.foreground_fraction)


def _no_foreground(cfg: DataConfig, volumes: Sequence[_Volume], split: str | None, what: str = "") -> InputError:
    """The one-line error for a split none of whose slices reaches ``data.foreground_fraction``, with what to do."""
    subjects = len({subject_of(v.record) for v in volumes})
    fullest = max((v.fullest for v in volumes), default=0.0)
    if split is None:
        more = "more scans"
    elif any(r.split for r in list_images(cfg.source)):
        more = f"more scans, or more of them in split {split!r} of the manifest's split column"
    else:
        more = "more scans, or a larger share in data.split_fractions"
    return InputError(
        cfg.source,
        f"no {what}slice of split {split!r} ({len(volumes)} image(s) of {subjects} subject(s)) has data.foreground_fraction "
        f"{cfg.foreground_fraction:g} foreground (its fullest slice has {fullest:.2f}): give this split more subjects "
        f"({more}) or set data.foreground_fraction to at most {math.floor(fullest * 100) / 100:g}",
    )


class UdlDataset(Dataset):
    """Base of the udl-med datasets: the volumes, the crop and the random state.

    Attributes:
        spatial_dims, in_channels, image_size: what one item looks like.
        num_classes: ``max(label) + 1`` over the whole source when labeled, else 0.
        records: the image records used.
    """

    def __init__(self, cfg: DataConfig, base: Dataset, volumes: list[_Volume], num_classes: int) -> None:
        self.cfg = cfg
        self.base = base
        self.volumes = volumes
        self.num_classes = num_classes
        self.spatial_dims = cfg.spatial_dims
        self.in_channels = cfg.in_channels
        self.image_size = tuple(cfg.size)
        self.records = [v.record for v in volumes]
        self._seed = 0
        self.augment: Any = None  # a MONAI Compose over image_keys (training items only), set by build_dataset

    image_keys: tuple[str, ...] = (keys.IMAGE,)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self._item(i)
        if self.augment is not None:
            item = augment_item(self.augment, item, self.image_keys, self._seed, i)
        return item

    def _item(self, i: int) -> dict[str, Any]:
        raise NotImplementedError

    def set_random_state(self, seed: int | None = None, state: Any = None) -> UdlDataset:
        """Re-seed every random draw of this dataset (crops, unpaired partners)."""
        self._seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**32))
        return self

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self._seed, index])

    def _volume(self, v: _Volume) -> torch.Tensor:
        return self.base[v.base_index][keys.IMAGE]

    # one 2D/2.5D item: (C, *size) from slice k of a (S, P, Q) volume
    def _slice_item(self, vol: torch.Tensor, k: int, start: Sequence[int] | None) -> torch.Tensor:
        c = self.cfg.context if self.cfg.layout == "2.5d" else 0
        if c:
            idx = torch.arange(k - c, k + c + 1).clamp_(0, vol.shape[0] - 1)
            x = vol.index_select(0, idx)
        else:
            x = vol[k : k + 1]
        if self.cfg.crop == "resize":
            return F.interpolate(x[None], size=tuple(self.cfg.size), mode="bilinear", align_corners=False, antialias=True)[0]
        (p, q), (sp, sq) = x.shape[1:], self.cfg.size
        i, j = start if start is not None else ((p - sp) // 2, (q - sq) // 2)
        return x[:, i : i + sp, j : j + sq].clone()

    def _slice_start(self, shape: Sequence[int], rng: np.random.Generator | None) -> tuple[int, int] | None:
        if self.cfg.crop != "random" or rng is None:
            return None
        (p, q), (sp, sq) = shape[1:], self.cfg.size
        return int(rng.integers(0, p - sp + 1)), int(rng.integers(0, q - sq + 1))

    def _patch_item(self, vol: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        size = tuple(self.cfg.size)
        if self.cfg.crop == "resize":
            return F.interpolate(vol[None], size=size, mode="trilinear", align_corners=False)[0]
        spatial = vol.shape[1:]
        if self.cfg.crop == "center":
            start = [(n - s) // 2 for n, s in zip(spatial, size)]
            return vol[(slice(None),) + tuple(slice(a, a + s) for a, s in zip(start, size))].clone()
        best, best_fg = None, -1.0
        for _ in range(10):  # a few draws to find a patch with enough foreground
            start = [int(rng.integers(0, n - s + 1)) for n, s in zip(spatial, size)]
            patch = vol[(slice(None),) + tuple(slice(a, a + s) for a, s in zip(start, size))]
            fg = float((patch > FOREGROUND_LEVEL).float().mean())
            if fg > best_fg:
                best, best_fg = patch, fg
            if fg >= self.cfg.foreground_fraction:
                break
        return best.clone()


class ImageDataset(UdlDataset):
    """``pairing: none``: one image per item, ``{image, path, modality[, label]}``."""

    def __init__(self, cfg: DataConfig, base: Dataset, volumes: list[_Volume], num_classes: int, split: str | None = None, what: str = "") -> None:
        super().__init__(cfg, base, volumes, num_classes)
        if cfg.layout == "3d":
            self.index = [(vi, j) for vi, v in enumerate(volumes) for j in range(_patches_per_volume(v.shape, cfg.size))]
        else:
            self.index = [(vi, int(k)) for vi, v in enumerate(volumes) for k in np.nonzero(v.foreground)[0]]
        if not self.index:
            raise _no_foreground(cfg, volumes, split, what)

    def __len__(self) -> int:
        return len(self.index)

    def _item(self, i: int) -> dict[str, Any]:
        vi, k = self.index[i]
        v = self.volumes[vi]
        vol = self._volume(v)
        rng = self._rng(i)
        if self.cfg.layout == "3d":
            x = self._patch_item(vol, rng)
        else:
            x = self._slice_item(vol, k, self._slice_start(vol.shape, rng))
        item = {keys.IMAGE: x, keys.PATH: str(v.record.path), keys.MODALITY: v.modality}
        if self.cfg.labeled:
            item[keys.LABEL] = int(v.record.label)
        return item


class PairedDataset(UdlDataset):
    """``pairing: paired``: CT and MR of the same subject, same position and crop."""

    def __init__(self, cfg: DataConfig, base: Dataset, pairs: list[tuple[_Volume, _Volume]], num_classes: int, split: str | None = None) -> None:
        super().__init__(cfg, base, [v for pair in pairs for v in pair], num_classes)
        self.pairs = pairs
        if cfg.layout == "3d":
            self.index = [(pi, j) for pi, (ct, _) in enumerate(pairs) for j in range(_patches_per_volume(ct.shape, cfg.size))]
        else:
            self.index = [(pi, int(k)) for pi, (ct, mr) in enumerate(pairs) for k in np.nonzero(ct.foreground | mr.foreground)[0]]
        if not self.index:
            raise _no_foreground(cfg, [v for pair in pairs for v in pair], split, "paired CT/MR ")

    image_keys = (keys.CT, keys.MR)

    def __len__(self) -> int:
        return len(self.index)

    def _item(self, i: int) -> dict[str, Any]:
        pi, k = self.index[i]
        ct_v, mr_v = self.pairs[pi]
        ct, mr = self._volume(ct_v), self._volume(mr_v)
        rng = self._rng(i)
        if self.cfg.layout == "3d":
            both = self._patch_item(torch.cat([ct, mr]), rng)  # one crop for both
            item = {keys.CT: both[:1], keys.MR: both[1:]}
        else:
            start = self._slice_start(ct.shape, rng)
            item = {keys.CT: self._slice_item(ct, k, start), keys.MR: self._slice_item(mr, k, start)}
        if self.cfg.labeled:
            item[keys.LABEL] = int(ct_v.record.label)
        return item


class UnpairedDataset(UdlDataset):
    """``pairing: unpaired``: CT items in order, each with an MR item drawn at random."""

    def __init__(self, cfg: DataConfig, base: Dataset, cts: list[_Volume], mrs: list[_Volume], num_classes: int, split: str | None = None) -> None:
        super().__init__(cfg, base, cts + mrs, num_classes)
        self.ct_index = self._items(cts)
        self.mr_index = self._items(mrs)
        if not self.ct_index:
            raise _no_foreground(cfg, cts, split, "CT ")
        if not self.mr_index:
            raise _no_foreground(cfg, mrs, split, "MR ")

    def _items(self, vols: list[_Volume]) -> list[tuple[_Volume, int]]:
        if self.cfg.layout == "3d":
            return [(v, j) for v in vols for j in range(_patches_per_volume(v.shape, self.cfg.size))]
        return [(v, int(k)) for v in vols for k in np.nonzero(v.foreground)[0]]

    def __len__(self) -> int:
        return max(len(self.ct_index), len(self.mr_index))

    def _one(self, entry: tuple[_Volume, int], rng: np.random.Generator) -> torch.Tensor:
        v, k = entry
        vol = self._volume(v)
        if self.cfg.layout == "3d":
            return self._patch_item(vol, rng)
        return self._slice_item(vol, k, self._slice_start(vol.shape, rng))

    image_keys = (keys.CT, keys.MR)

    def _item(self, i: int) -> dict[str, Any]:
        rng = self._rng(i)
        ct_entry = self.ct_index[i % len(self.ct_index)]
        mr_entry = self.mr_index[int(rng.integers(len(self.mr_index)))]
        return {keys.CT: self._one(ct_entry, rng), keys.MR: self._one(mr_entry, rng)}


def _patches_per_volume(shape: Sequence[int], size: Sequence[int]) -> int:
    """Enough random patches to cover a volume about once per epoch."""
    return max(1, math.ceil(math.prod(shape[1:]) / math.prod(size)))


# --- building ------------------------------------------------------------------------


def source_records(cfg: DataConfig) -> list[ImageRecord]:
    """The images of ``cfg.source``, split by subject when it has no ``split`` column (:mod:`udl_med.data.split`)."""
    return assign_subject_splits(list_images(cfg.source), cfg.split_fractions, cfg.split_seed, str(cfg.source))


def _select(records: list[ImageRecord], cfg: DataConfig, split: str | None) -> list[ImageRecord]:
    if split is not None and any(r.split for r in records):  # without any split (one subject): every image, as split.py warned
        records = [r for r in records if r.split == split]
    if cfg.modality is not None:
        records = [r for r in records if r.modality in (None, cfg.modality)]
    if cfg.labeled:
        missing = [r for r in records if r.label is None]
        if missing:
            raise InputError(missing[0].path, "labeled: true, but this image has no label in the manifest")
    return records


class _Unwrapped(Dataset):
    """Re-raise bad-input errors from inside MONAI's transform machinery as themselves."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        try:
            return self.base[i]
        except RuntimeError as err:
            user = unwrap_user_error(err)
            if user is None:
                raise
            raise user from None


def _build_base(cfg: DataConfig, records: list[ImageRecord]) -> Dataset:
    items = [
        {keys.IMAGE: str(r.path), keys.MODALITY: r.modality or "", _SUBJECT: r.subject or "", _INDEX: i}
        for i, r in enumerate(records)
    ]
    transform = volume_transform(cfg)
    if not cfg.cache:
        return _Unwrapped(MonaiDataset(items, transform))
    try:
        return _Unwrapped(CacheDataset(items, transform, cache_rate=1.0, num_workers=0, progress=False, copy_cache=False))
    except RuntimeError as err:
        user = unwrap_user_error(err)
        if user is None:
            raise
        raise user from None


def _scan(cfg: DataConfig, base: Dataset, records: list[ImageRecord]) -> list[_Volume]:
    """Read each prepared volume once: its modality, shape and foreground slices."""
    volumes = []
    for i, rec in enumerate(records):
        d = base[i]
        x = d[keys.IMAGE]
        if cfg.layout == "3d" and x.ndim != 4:
            raise InputError(rec.path, "is a 2D image; 3D patches need volumes (use layout 2d)")
        fg = x > FOREGROUND_LEVEL
        if cfg.layout == "3d":
            foreground = np.array([float(fg.float().mean())])
            fullest = float(foreground[0])
        else:
            fractions = fg.flatten(1).float().mean(1)
            foreground = (fractions >= cfg.foreground_fraction).numpy()
            fullest = float(fractions.max()) if len(fractions) else 0.0
        modality = d[keys.MODALITY] or ""
        if cfg.modality is not None and modality != cfg.modality:
            continue
        volumes.append(_Volume(i, rec, modality, tuple(x.shape), foreground, fullest))
    return volumes


def _halves(cts: list[_Volume], mrs: list[_Volume]) -> tuple[list[_Volume], list[_Volume]]:
    """CT and MR from disjoint halves of the subjects that have both (alternating by id)."""
    ct_subjects = {v.record.subject for v in cts if v.record.subject}
    mr_subjects = {v.record.subject for v in mrs if v.record.subject}
    shared = sorted(ct_subjects & mr_subjects)
    if len(shared) < 2:
        if shared:
            log.warning("unpaired data: only one subject has both CT and MR; it is used on both sides")
        return cts, mrs
    mr_only = set(shared[1::2])
    ct_only = set(shared[0::2])
    return [v for v in cts if v.record.subject not in mr_only], [v for v in mrs if v.record.subject not in ct_only]


def _semi_supervised_dataset(cfg: DataConfig, split: str | None) -> Dataset:
    """The training set (``split == cfg.split``) or the labeled evaluation set of a semi-supervised run."""
    records, labeled_records, k = semi_supervised_records(cfg, source_records(cfg), split)
    where = manifest_file(cfg.source)
    base = _build_base(cfg, records)
    volumes = _scan(cfg, base, records)
    labeled_ids = {id(r) for r in labeled_records}
    lab_volumes = [v for v in volumes if id(v.record) in labeled_ids]
    if not lab_volumes:
        raise InputError(where, f"no labeled {cfg.modality or ''} images in split {split!r}".replace("  ", " "))
    labeled = ImageDataset(cfg.model_copy(update={"labeled": True}), base, lab_volumes, k, split, "labeled ")
    if split != cfg.split:
        log.info("%s split %r: %d labeled evaluation items", cfg.source, split, len(labeled))
        return labeled
    unl_volumes = [v for v in volumes if id(v.record) not in labeled_ids]
    if not unl_volumes:
        raise InputError(where, f"no unlabeled {cfg.modality or ''} images in split {split!r}".replace("  ", " "))
    unlabeled = ImageDataset(cfg.model_copy(update={"labeled": False}), base, unl_volumes, k, split, "unlabeled ")
    n_subjects = len({subject_of(v.record) for v in lab_volumes})
    log.info(
        "%s split %r: %d unlabeled items, %d labeled items from %d subjects (%d classes)",
        cfg.source, split, len(unlabeled), len(labeled), n_subjects, k,
    )
    return SemiSupervisedItems(labeled, unlabeled, k)


def build_dataset(cfg: DataConfig, split: str | None, augment: bool | None = None) -> UdlDataset:
    """The torch Dataset of dict items the ``data:`` section describes.

    Args:
        cfg: the data config.
        split: the manifest split to use (``cfg.split`` for training, ``cfg.eval_split``
            for evaluation), or None for every image.
        augment: apply ``cfg.augment``; default: when ``split`` is the training split
            (``cfg.split``), never for the evaluation split.

    Returns:
        ``pairing: none``: items ``{image: (C, *size), path, modality[, label]}``;
        ``paired``/``unpaired``: ``{ct: (C, *size), mr: (C, *size)[, label]}``; float32
        in [-1, 1]. The dataset has ``set_random_state(seed)``.

    Raises:
        InputError: a bad source (named), or no usable image in ``split``.
        ConfigError: a config that cannot fit the data.
    """
    if cfg.semi_supervised:  # labeled + unlabeled items (udl_med.data.semi_supervised)
        return _semi_supervised_dataset(cfg, split)
    all_records = source_records(cfg)
    num_classes = 0
    if cfg.labeled:
        labels = [r.label for r in all_records if r.label is not None]
        if not labels:
            raise InputError(cfg.source, "labeled: true, but no image has a label")
        num_classes = max(labels) + 1
    records = _select(all_records, cfg, split)
    if not records:
        raise InputError(cfg.source, f"no images in split {split!r}" + (f" with modality {cfg.modality}" if cfg.modality else ""))
    if cfg.modality is not None and cfg.pairing == "none" and any(r.modality is None for r in records):
        log.info("%s: images whose manifest and file say no modality are taken as %s (data.modality)", cfg.source, cfg.modality)
    base = _build_base(cfg, records)
    volumes = _scan(cfg, base, records)
    if not volumes:
        raise InputError(cfg.source, f"no {cfg.modality} images in split {split!r}")
    if cfg.layout == "2.5d" and cfg.context < 1:
        raise ConfigError(cfg.source, "data.context", "2.5d needs context >= 1")
    if cfg.pairing == "none":
        dataset: UdlDataset = ImageDataset(cfg, base, volumes, num_classes, split)
    else:
        cts = [v for v in volumes if v.modality == "CT"]
        mrs = [v for v in volumes if v.modality == "MR"]
        if not cts or not mrs:
            raise InputError(cfg.source, f"pairing {cfg.pairing!r} needs CT and MR images in split {split!r} (found {len(cts)} CT, {len(mrs)} MR)")
        if cfg.pairing == "paired":
            by_subject = {v.record.subject: v for v in mrs if v.record.subject}
            pairs = [(ct, by_subject[ct.record.subject]) for ct in cts if ct.record.subject in by_subject]
            if not pairs:
                raise InputError(cfg.source, "pairing 'paired' needs subjects with both CT and MR (manifest column 'subject')")
            for ct, mr in pairs:
                if ct.shape != mr.shape:
                    raise InputError(mr.record.path, f"paired MR shape {mr.shape} differs from its CT's {ct.shape}")
            dataset = PairedDataset(cfg, base, pairs, num_classes, split)
        else:
            cts, mrs = _halves(cts, mrs)
            dataset = UnpairedDataset(cfg, base, cts, mrs, num_classes, split)
    if augment is None:
        augment = split == cfg.split and (cfg.eval_split is None or split != cfg.eval_split)
    if augment and cfg.augment:
        dataset.augment = build_augment(cfg.augment, dataset.image_keys)
        before = {k: tuple(dataset._item(0)[k].shape) for k in dataset.image_keys}
        after = {k: tuple(v.shape) for k, v in dataset[0].items() if k in dataset.image_keys}
        if before != after:
            raise ConfigError(cfg.source, "data.augment", f"changes the item shape {before} to {after}; items must keep data.size")
    log.info(
        "%s split %r: %d items from %d images (%s, %s%s)", cfg.source, split, len(dataset), len(volumes), cfg.layout, cfg.pairing,
        f", {len(cfg.augment)} augmentation(s)" if dataset.augment is not None else "",
    )
    return dataset


def scan_volumes(dataset: Dataset) -> list[_Volume]:
    """The prepared volumes behind a scan dataset (both sides of semi-supervised items); [] for others."""
    if isinstance(dataset, UdlDataset):
        return list(dataset.volumes)
    if isinstance(dataset, SemiSupervisedItems):
        return [v for part in (dataset.unlabeled, dataset.labeled) for v in scan_volumes(part)]
    return []


def training_geometry(cfg: DataConfig, dataset: Dataset) -> TrainingGeometry | None:
    """The geometry a model trained on ``dataset`` keeps (None: not a scan dataset).

    Spacing and direction are those of the first training image (its header is read once
    here, at training time); the modality is the one every training image has (None when
    they mix CT and MR, or say nothing). The item spacing is the image's, scaled along the
    resized axes by image size / item size for ``crop: resize`` (the image is resized
    whole, without padding, so its prepared shape is its own).
    """
    volumes = scan_volumes(dataset)
    if not volumes:
        return None
    geometry = Geometry.from_meta(read_image(volumes[0].record.path).meta) or Geometry.identity(3)
    n = geometry.ndim
    spacing = (tuple(geometry.spacing) + (1.0, 1.0, 1.0))[:3]
    direction = np.eye(3)
    direction[:n, :n] = geometry.direction_matrix[:3, :3]
    item_spacing = np.asarray(spacing, np.float64)
    if cfg.crop == "resize":
        shape = volumes[0].shape  # (S, P, Q) for slices (slice axis first), (1, X, Y, Z) for patches
        if cfg.layout == "3d":
            axes, sizes = [0, 1, 2], shape[1:]
        else:
            axes, sizes = [a for a in range(3) if a != cfg.slice_axis], shape[1:]
        item_spacing[axes] = item_spacing[axes] * np.asarray(sizes, np.float64) / np.asarray(cfg.size, np.float64)
    modalities = {v.modality for v in volumes}
    modality = modalities.pop() if len(modalities) == 1 and "" not in modalities else None
    return TrainingGeometry(
        spacing=spacing,
        direction=tuple(float(v) for v in direction.ravel()),
        item_size=tuple(cfg.size),
        slice_axis=None if cfg.layout == "3d" else cfg.slice_axis,
        modality=cfg.modality or modality,
        ct_window=tuple(cfg.ct_window),
        mr_percentiles=tuple(cfg.mr_percentiles),
        item_spacing=tuple(float(v) for v in item_spacing),
    )


def data_spec(cfg: DataConfig, dataset: Dataset) -> DataSpec:
    """The :class:`~udl_med.data.spec.DataSpec` a method is built with, with the training geometry."""
    return DataSpec(
        spatial_dims=cfg.spatial_dims,
        in_channels=cfg.in_channels,
        image_size=tuple(cfg.size),
        num_classes=int(getattr(dataset, "num_classes", 0)),
        geometry=training_geometry(cfg, dataset),
    )
