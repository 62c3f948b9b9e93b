"""What a method is told about its data, and the training geometry a model file keeps.

:class:`DataSpec` is built by the data layer (:func:`udl_med.data.build_datasets`) and
handed to a method's constructor; the model file keeps it, so a trained model is
rebuilt for the same items. For scans it carries a :class:`TrainingGeometry`: the
physical side of the training items (spacing, orientation, item size, modality and
intensity window), so that commands that write images from a model (``sample``,
``synthesize``) never need the training scans again.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["DataSpec", "TrainingGeometry"]


class TrainingGeometry(BaseModel):
    """The physical side of scan training items, kept in the model file.

    Attributes:
        spacing: voxel spacing (mm) of the first training image, 3 values (a 2D image
            has 1 mm along its missing third axis). The scan's grid: what ``translate``,
            ``encode`` and ``classify`` compare inputs with (:mod:`udl_med.inference.model_grid`).
        direction: direction cosines of that image (ITK/LPS, flat row-major, 9 values).
        item_size: spatial size of one training item (``data.size``).
        slice_axis: the axis 2D items were taken across (None for 3D patches).
        modality: ``CT`` or ``MR`` when every training image has that modality, else None.
        ct_window: the CT window (HU) mapped to [-1, 1].
        mr_percentiles: the MR percentiles mapped to -1 and 1.
        item_spacing: spacing (mm) of one training item's voxels, what ``sample`` and
            ``synthesize`` write: ``spacing``, except that a ``crop: resize`` run scales
            the resized axes by the first image's size / item size (as ``interpolate``
            does). None in model files written before it was kept: ``spacing`` then.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    item_size: tuple[int, ...]
    slice_axis: int | None
    modality: str | None
    ct_window: tuple[float, float]
    mr_percentiles: tuple[float, float]
    item_spacing: tuple[float, float, float] | None = None

    @property
    def sample_spacing(self) -> tuple[float, float, float]:
        """The spacing of a generated item: ``item_spacing``, or ``spacing`` for older model files."""
        return self.item_spacing if self.item_spacing is not None else self.spacing


class DataSpec(BaseModel):
    """What the engine tells a method about its data when building it."""

    model_config = ConfigDict(frozen=True)

    spatial_dims: int  # 2 for slices (2D and 2.5D), 3 for patches, 0 for vectors
    in_channels: int  # 1, or 2*context+1 for 2.5D
    image_size: tuple[int, ...]  # spatial size of one training item
    num_classes: int = 0  # number of distinct manifest labels (0 when unlabeled)
    geometry: TrainingGeometry | None = None  # scans only; None for points and in-memory data
