"""In-memory training data: arrays and point sets that the engine trains on like scans.

``data.kind: memory`` runs take ``(train, eval)`` datasets from Python
(``udl_med.engine.train.train(config, datasets=...)``): toy benchmarks, scikit-learn
arrays, feature vectors. :class:`TensorItems` is the usual one; any dataset of dict
items works, and one with a ``batch(indices)`` method is indexed once per batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from udl_med import keys


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


def memory_data_spec(dataset: Any):
    """The :class:`~udl_med.methods.base.DataSpec` of a dataset of dict items, read from its first item.

    Vectors ``(D,)`` give ``spatial_dims=0, in_channels=D, image_size=()``; images
    ``(C, *spatial)`` give their channels and size.
    """
    from udl_med.methods.base import DataSpec

    image = torch.as_tensor(dataset[0][keys.IMAGE])
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
