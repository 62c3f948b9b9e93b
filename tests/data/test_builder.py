"""build_datasets: one way from a data: section to (train, eval, spec), for every data kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from udl_med.data import build_datasets
from udl_med.data.config import DataConfig
from udl_med.data.io import list_images, read_image
from udl_med.data.memory import TensorItems
from udl_med.data.points import PointsDataset
from udl_med.data.semi_supervised import SemiSupervisedItems
from udl_med.data.spec import DataSpec
from udl_med.errors import ConfigError


def test_points_are_drawn_from_the_seed() -> None:
    train, held, spec = build_datasets(DataConfig(kind="points"), seed=3)
    assert isinstance(train, PointsDataset) and isinstance(held, PointsDataset)
    assert spec == DataSpec(spatial_dims=0, in_channels=2, image_size=(), num_classes=0)
    again, _, _ = build_datasets(DataConfig(kind="points"), seed=3)
    assert torch.equal(train.points, again.points) and not torch.equal(train.points, build_datasets(DataConfig(kind="points"), seed=4)[0].points)


def test_memory_data_comes_from_python() -> None:
    items = TensorItems(torch.zeros(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2]))
    train, held, spec = build_datasets(DataConfig(kind="memory"), given=(items, None))
    assert train is items and held is None
    assert spec == DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8), num_classes=3)
    with pytest.raises(ConfigError, match="data.kind"):
        build_datasets(DataConfig(kind="memory"), source="run.yaml")


def test_scans_carry_their_training_geometry(phantom_manifest: Path) -> None:
    cfg = DataConfig(source=str(phantom_manifest), modality="CT", size=(16, 16), ct_window=(-200.0, 300.0))
    train, held, spec = build_datasets(cfg)
    assert len(train) and held is not None and (spec.spatial_dims, spec.in_channels, spec.image_size) == (2, 1, (16, 16))
    first = read_image(next(r for r in list_images(phantom_manifest) if r.split == "train" and r.modality == "CT").path)
    np.testing.assert_allclose(spec.geometry.spacing, first.meta["spacing"], atol=1e-4)
    np.testing.assert_allclose(np.reshape(spec.geometry.direction, (3, 3)), np.reshape(first.meta["direction"], (3, 3)), atol=1e-6)
    assert (spec.geometry.modality, spec.geometry.ct_window, spec.geometry.slice_axis) == ("CT", (-200.0, 300.0), 2)
    mixed = build_datasets(DataConfig(source=str(phantom_manifest), size=(16, 16), eval_split=None))
    assert mixed[1] is None and mixed[2].geometry.modality is None  # CT and MR: no one modality


def test_semi_supervised_scans_go_through_the_same_builder(phantom_manifest: Path) -> None:
    cfg = DataConfig(source=str(phantom_manifest), modality="CT", size=(16, 16), semi_supervised=True, labels_per_class=1)
    train, held, spec = build_datasets(cfg)
    assert isinstance(train, SemiSupervisedItems) and spec.num_classes == 3 and spec.geometry is not None
    assert {int(held[i]["label"]) for i in range(len(held))} <= {0, 1, 2}
