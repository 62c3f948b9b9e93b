"""The one data builder: the ``data:`` section in, training set, evaluation set and data spec out.

Every data kind goes through :func:`build_datasets`, so the engine never branches on
kinds:

- ``scans``: slices, 2.5D stacks or patches of the ``source`` images
  (:func:`udl_med.data.datasets.build_dataset`): plain, ``labeled``, ``paired``,
  ``unpaired`` or ``semi_supervised`` items; the spec carries the training geometry;
- ``points``: the 2D Gaussian mixture of ``data.points`` (:mod:`udl_med.data.points`),
  training and evaluation sets drawn from the run seed;
- ``memory``: datasets of dict items handed in from Python (:mod:`udl_med.data.memory`).
"""

from __future__ import annotations

from typing import Any

from udl_med.data.config import DataConfig
from udl_med.data.datasets import build_dataset, data_spec
from udl_med.data.memory import memory_data_spec
from udl_med.data.points import PointsConfig, PointsDataset
from udl_med.data.spec import DataSpec
from udl_med.errors import ConfigError

__all__ = ["build_datasets"]


def build_datasets(
    data: DataConfig, seed: int = 0, given: tuple[Any, Any | None] | None = None, source: str = "<config>"
) -> tuple[Any, Any | None, DataSpec]:
    """The training set, the evaluation set (None without ``eval_split``) and the data spec of a run.

    Args:
        data: the run's ``data:`` section.
        seed: the run seed (the point mixtures are drawn from it).
        given: ``(train, eval)`` datasets of a ``kind: memory`` run; ignored for other kinds.
        source: the config file, for messages.

    Raises:
        ConfigError: a ``memory`` run without ``given`` datasets; see also
            :func:`~udl_med.data.datasets.build_dataset` for scans.
        InputError: bad or missing scans.
    """
    if data.kind == "memory":
        if given is None:
            raise ConfigError(source, "data.kind", "memory data is given in Python: Trainer(config, datasets=(train, eval))")
        train_set, eval_set = given
        return train_set, eval_set, memory_data_spec(train_set)
    if data.kind == "points":
        points = data.points or PointsConfig()
        train_set, eval_set = PointsDataset(points, "train", seed), PointsDataset(points, "val", seed)
        return train_set, eval_set, memory_data_spec(train_set)
    train_set = build_dataset(data, data.split)
    eval_set = build_dataset(data, data.eval_split) if data.eval_split else None
    return train_set, eval_set, data_spec(data, train_set)
