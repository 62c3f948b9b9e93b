"""The ``data:`` section of a run config."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from udl_med.data.augment import check_step, normalise_step
from udl_med.data.normalize import CT_WINDOW, MR_PERCENTILES
from udl_med.data.points import PointsConfig
from udl_med.data.split import DEFAULT_SPLIT_FRACTIONS, DEFAULT_SPLIT_SEED

# One data.augment entry: {MonaiDictionaryTransform: {argument: value}} (or just the name).
AugmentStep = Annotated[dict[str, dict[str, Any]], BeforeValidator(normalise_step), AfterValidator(check_step)]


class DataConfig(BaseModel):
    """Where the images come from and how they become training items.

    Attributes:
        kind: ``scans`` (images from ``source``), ``points`` (2D Gaussian mixtures,
            ``points:``, for toy GAN benchmarks) or ``memory`` (datasets handed to the
            trainer in Python, :mod:`udl_med.data.memory`). The other keys describe scans.
        source: a manifest CSV, a folder (of volumes, or with a ``manifest.csv``), a
            DICOM series folder, or one volume (``kind: scans``).
        points: the mixture of a ``kind: points`` run (default: the ring of 8).
        layout: ``2d`` slices, ``2.5d`` slices with ``context`` neighbours on each side
            as channels, or ``3d`` patches.
        size: spatial size of one item: 2 ints for slices, 3 for patches. Slices and
            patches smaller than ``size`` are padded with background (-1).
        slice_axis: the spatial axis slices are taken across (0, 1, 2 = X, Y, Z;
            2 is axial for axial acquisitions).
        context: 2.5D neighbours on each side; items have ``2 * context + 1`` channels.
        modality: keep only ``CT`` or ``MR`` images (``None``: keep all).
        pairing: ``none`` (one image per item), ``paired`` (CT and MR of the same
            subject and position) or ``unpaired`` (CT and MR from disjoint halves of
            the subjects, sampled independently).
        labeled: add the manifest ``label`` to every item.
        semi_supervised: partly labeled data (:mod:`udl_med.data.semi_supervised`): rows
            with an empty ``label`` are unlabeled; each training item is an unlabeled
            item plus a labeled one, evaluation items are the labeled ones.
        labels_per_class: with ``semi_supervised``, keep the labels of only this many
            training subjects per class (the others become unlabeled); None: all labels.
        labels_seed: the seed that chooses those subjects.
        split: the training split of the manifest (``None``: every image).
        eval_split: the split used for evaluation batches.
        split_fractions: train, val and test fractions of the subjects when the source
            has no ``split`` column (:mod:`udl_med.data.split`: split by subject).
        split_seed: the seed of that split (the same for every run by default, so that
            runs are judged on the same held-out subjects).
        ct_window: CT clip window in HU mapped to [-1, 1] (see ``udl_med.data.normalize``).
        mr_percentiles: MR percentiles mapped to -1 and 1.
        cache: keep the normalised volumes in memory (MONAI ``CacheDataset``).
        foreground_fraction: slices (and patches) with less foreground than this
            fraction are skipped.
        crop: ``random`` crops (drawn from the dataset's seed and the item index, so an
            evaluation set that is not re-seeded gives the same items every time),
            ``center`` crops, or ``resize`` (whole slices or volumes resampled to
            ``size``, no crop).
        augment: MONAI dictionary transforms applied to training items after the crop,
            ``[{RandFlipd: {prob: 0.5}}, ...]`` (:mod:`udl_med.data.augment`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["scans", "points", "memory"] = "scans"
    source: str | None = None
    points: PointsConfig | None = None
    layout: Literal["2d", "2.5d", "3d"] = "2d"
    size: tuple[int, int] | tuple[int, int, int] = (32, 32)
    slice_axis: int = Field(2, ge=0, le=2)
    context: int = Field(1, ge=0)
    modality: Literal["CT", "MR"] | None = None
    pairing: Literal["none", "paired", "unpaired"] = "none"
    labeled: bool = False
    semi_supervised: bool = False
    labels_per_class: int | None = Field(None, ge=1)
    labels_seed: int = 0
    split: str | None = "train"
    eval_split: str | None = "val"
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS
    split_seed: int = DEFAULT_SPLIT_SEED
    ct_window: tuple[float, float] = CT_WINDOW  # the one default (udl_med.data.normalize)
    mr_percentiles: tuple[float, float] = MR_PERCENTILES
    cache: bool = True
    foreground_fraction: float = Field(0.05, ge=0.0, le=1.0)
    crop: Literal["random", "center", "resize"] = "random"
    augment: tuple[AugmentStep, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.kind == "scans" and not self.source:
            raise ValueError("source is required for kind 'scans' (a manifest, folder or volume)")
        if self.points is not None and self.kind != "points":
            raise ValueError(f"points is set but kind is {self.kind!r}; set kind: points")
        want = 3 if self.layout == "3d" else 2
        if len(self.size) != want:
            raise ValueError(f"size must have {want} values for layout {self.layout!r}, got {list(self.size)}")
        if any(s < 1 for s in self.size):
            raise ValueError(f"size values must be positive, got {list(self.size)}")
        if not self.ct_window[0] < self.ct_window[1]:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {list(self.ct_window)}")
        if any(f < 0 for f in self.split_fractions) or self.split_fractions[0] <= 0:
            raise ValueError(f"split_fractions (train, val, test) must be non-negative with train > 0, got {list(self.split_fractions)}")
        lo, hi = self.mr_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"mr_percentiles must satisfy 0 <= low < high <= 100, got {[lo, hi]}")
        if self.labels_per_class is not None and not self.semi_supervised:
            raise ValueError("labels_per_class needs semi_supervised: true")
        if self.semi_supervised and (self.pairing != "none" or self.labeled):
            raise ValueError("semi_supervised data has one image per item and its own labels: set pairing: none, labeled: false")
        if self.pairing != "none" and self.modality is not None:
            raise ValueError(f"modality must be null when pairing is {self.pairing!r} (items hold both CT and MR)")
        if self.augment and (self.kind != "scans" or self.semi_supervised):
            raise ValueError("augment applies to scan items (kind: scans, not semi_supervised)")
        if self.augment and self.eval_split is not None and self.eval_split == self.split:
            raise ValueError("augment needs an evaluation split other than the training split (augmentation is for training items only)")
        return self

    @property
    def spatial_dims(self) -> int:
        """2 for slices (2D and 2.5D), 3 for patches."""
        return 3 if self.layout == "3d" else 2

    @property
    def in_channels(self) -> int:
        """1, or ``2 * context + 1`` for 2.5D."""
        return 2 * self.context + 1 if self.layout == "2.5d" else 1
