"""In-memory training data: arrays and point sets that the engine trains on like scans.

``data.kind: memory`` runs take ``(train, eval)`` datasets from Python
(``udl_med.engine.train.train(config, datasets=...)``): toy benchmarks, scikit-learn
arrays, feature vectors. :class:`TensorItems` is the usual one; any dataset of dict
items works, and one with a ``batch(indices)`` method is indexed once per batch.
``udl_med.engine.fit.fit_in_memory`` is that run in one call (no MLflow, a temporary run folder).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from udl_med import keys
from udl_med.data.spec import DataSpec


class TensorItems(Dataset):
    """Items ``{image: images[i][, label: labels[i]]}`` of in-memory tensors.

    Args:
        images: ``(N, D)`` vectors or ``(N, C, *spatial)`` images, float.
        labels: ``(N,)`` class indices, or None.
        num_classes: number of classes (default: ``max(labels) + 1``).

    Raises:
        ValueError: labels that do not match the images, or negative labels.
    """

    def __init__(self, images: Tensor | np.ndarray, labels: Tensor | np.ndarray | None = None, num_classes: int | None = None) -> None:
        self.images = torch.as_tensor(images, dtype=torch.float32)
        if self.images.ndim < 2:
            raise ValueError(f"images must be (N, D) or (N, C, *spatial), got shape {tuple(self.images.shape)}")
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if self.labels is not None:
            if self.labels.shape != (self.images.shape[0],):
                raise ValueError(f"labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}")
            if self.labels.numel() and int(self.labels.min()) < 0:
                raise ValueError("labels must be class indices >= 0")
        found = int(self.labels.max()) + 1 if self.labels is not None and self.labels.numel() else 0
        self.num_classes = found if num_classes is None else int(num_classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {keys.IMAGE: self.images[i]}
        if self.labels is not None:
            item[keys.LABEL] = self.labels[i]
        return item

    def batch(self, indices: list[int]) -> dict[str, Tensor]:
        """The items ``indices`` as one batch (one indexing per tensor)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        out = {keys.IMAGE: self.images[index]}
        if self.labels is not None:
            out[keys.LABEL] = self.labels[index]
        return out


class TranslationItems(Dataset):
    """CT/MR items ``{ct: ct[i], mr: mr[j]}`` of in-memory tensors, paired (``j = i``) or unpaired.

    Unpaired, the dataset is every ``(i, j)`` combination (``len = N_ct * N_mr``), so the
    engine's shuffled epochs draw the two sides independently, as ``pairing: unpaired``
    does for scans, while the data order stays a function of (seed, step).

    Args:
        ct: ``(N, C, *spatial)`` CT images.
        mr: ``(M, C, *spatial)`` MR images (``M = N`` when paired).
        paired: whether item ``i`` of ``ct`` and of ``mr`` belong together.

    Raises:
        ValueError: paired sides of different lengths, or images of different shapes.
    """

    def __init__(self, ct: Tensor | np.ndarray, mr: Tensor | np.ndarray, paired: bool = True) -> None:
        self.ct = torch.as_tensor(ct, dtype=torch.float32)
        self.mr = torch.as_tensor(mr, dtype=torch.float32)
        if self.ct.shape[1:] != self.mr.shape[1:] or self.ct.ndim < 3:
            raise ValueError(f"ct and mr must be (N, C, *spatial) of one shape, got {tuple(self.ct.shape)} and {tuple(self.mr.shape)}")
        if paired and len(self.ct) != len(self.mr):
            raise ValueError(f"paired ct and mr need as many items, got {len(self.ct)} and {len(self.mr)}")
        self.paired = paired

    def __len__(self) -> int:
        return len(self.ct) if self.paired else len(self.ct) * len(self.mr)

    def _sides(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return (index, index) if self.paired else (index // len(self.mr), index % len(self.mr))

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        c, m = self._sides(torch.as_tensor(i))
        return {keys.CT: self.ct[c], keys.MR: self.mr[m]}

    def batch(self, indices: list[int]) -> dict[str, Tensor]:
        """The items ``indices`` as one batch (one indexing per side)."""
        c, m = self._sides(torch.as_tensor(indices, dtype=torch.long))
        return {keys.CT: self.ct[c], keys.MR: self.mr[m]}


def memory_data_spec(dataset: Any) -> DataSpec:
    """The :class:`~udl_med.data.spec.DataSpec` of a dataset of dict items, read from its first item.

    Vectors ``(D,)`` give ``spatial_dims=0, in_channels=D, image_size=()``; images
    ``(C, *spatial)`` give their channels and size (the ``ct`` image of CT/MR items).
    """
    first = dataset[0]
    image = torch.as_tensor(first[keys.IMAGE] if keys.IMAGE in first else first[keys.CT])
    if image.ndim == 1:
        return DataSpec(spatial_dims=0, in_channels=int(image.shape[0]), image_size=(), num_classes=int(getattr(dataset, "num_classes", 0)))
    if image.ndim not in (3, 4):
        raise ValueError(f"an item's image must be (D,), (C, H, W) or (C, H, W, D), got shape {tuple(image.shape)}")
    return DataSpec(
        spatial_dims=image.ndim - 1,
        in_channels=int(image.shape[0]),
        image_size=tuple(int(s) for s in image.shape[1:]),
        num_classes=int(getattr(dataset, "num_classes", 0)),
    )
