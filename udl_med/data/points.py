"""2D Gaussian mixtures for the mode-collapse benchmark: a ring of 8 and a grid of 25.

The two toy distributions on which the GAN mode-collapse papers count recovered modes
(Metz et al. 2017, unrolled GANs; VEEGAN; PacGAN), with their settings, so that our
counts compare with theirs:

- **ring**: ``n_modes`` Gaussians with means on a circle of ``radius``, at angles
  ``2 pi k / M`` for ``k = 0..M-1`` (not ``linspace(0, 2 pi, M)``, which repeats the
  first mode and gives only ``M - 1`` distinct ones), std 0.02 by default
  (Metz et al. 2017 reimplementations: radius 2, std 0.02);
- **grid**: ``grid_size ** 2`` Gaussians with means on
  ``spacing * {-(n-1)/2, ..., (n-1)/2}^2`` (default ``{-4, -2, 0, 2, 4}^2``), std 0.05
  (VEEGAN, PacGAN).

Every point picks its mode uniformly. The points are drawn once when the dataset is
built, from a generator seeded by the run seed and the split, so the training and
evaluation sets are different and both are pure functions of ``(seed, split)``.
Items are ``{"image": (2,) float32}``; :meth:`PointsDataset.batch` returns a whole
batch ``(B, 2)`` by indexing one tensor, the path the engine takes instead of collating
item by item.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torch.utils.data import Dataset

from udl_med import keys

__all__ = ["PointsConfig", "PointsDataset", "DEFAULT_STD"]

DEFAULT_STD = {"ring": 0.02, "grid": 0.05}  # per-mixture std when `std` is not given: the papers' values


class PointsConfig(BaseModel):
    """The ``data.points:`` section: which mixture and how many points.

    Attributes:
        mixture: ``ring`` (``n_modes`` on a circle) or ``grid`` (``grid_size`` x
            ``grid_size`` means).
        n_modes: modes on the ring (ring only).
        radius: radius of the ring (ring only).
        spacing: distance between neighbouring grid means (grid only).
        grid_size: means per grid row (grid only).
        std: standard deviation of every mode, per coordinate (``None``: 0.02 for the
            ring, 0.05 for the grid).
        n_train: points in the training split.
        n_eval: points in every other split (evaluation).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mixture: Literal["ring", "grid"] = "ring"
    n_modes: int = Field(8, ge=1)
    radius: float = Field(2.0, gt=0.0)
    spacing: float = Field(2.0, gt=0.0)
    grid_size: int = Field(5, ge=1)
    std: float | None = Field(None, gt=0.0)
    n_train: int = Field(100_000, ge=1)
    n_eval: int = Field(2_500, ge=1)

    def centres(self) -> Tensor:
        """The mode means, ``(M, 2)`` float32 (ring: counter-clockwise from angle 0;
        grid: row-major, x varying fastest)."""
        if self.mixture == "ring":
            k = torch.arange(self.n_modes, dtype=torch.float64)
            angle = 2.0 * math.pi * k / self.n_modes
            c = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) * self.radius
        else:
            n = self.grid_size
            axis = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0) * self.spacing
            y, x = torch.meshgrid(axis, axis, indexing="ij")
            c = torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)
        return c.float()

    def scale(self) -> float:
        """The std of every mode (the configured one, or the mixture's default)."""
        return float(self.std) if self.std is not None else DEFAULT_STD[self.mixture]


def _split_seed(seed: int, split: str) -> int:
    """A generator seed from the run seed and the split name (stable across processes)."""
    entropy = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(split.encode("utf-8"))])
    return int(entropy.generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))


class PointsDataset(Dataset):
    """Fixed points of a 2D Gaussian mixture, one split.

    Args:
        cfg: the mixture.
        split: ``"train"`` holds ``cfg.n_train`` points, any other name ``cfg.n_eval``;
            the split name enters the seed, so the splits differ.
        seed: the run seed.

    Attributes:
        centres: ``(M, 2)`` mode means.
        std: the std of every mode.
        points: ``(N, 2)`` float32, the items.
        modes: ``(N,)`` long, the mode each point was drawn from.
        spatial_dims, in_channels, image_size, num_classes: what one item looks like
            (0, 2, (), 0: flat vectors of 2 coordinates).
    """

    spatial_dims = 0
    in_channels = 2
    image_size: tuple[int, ...] = ()
    num_classes = 0

    def __init__(self, cfg: PointsConfig, split: str, seed: int) -> None:
        self.cfg = cfg
        self.split = split
        self.centres = cfg.centres()
        self.std = cfg.scale()
        n = cfg.n_train if split == "train" else cfg.n_eval
        g = torch.Generator().manual_seed(_split_seed(seed, split))
        self.modes = torch.randint(len(self.centres), (n,), generator=g)
        noise = torch.randn(n, 2, generator=g, dtype=torch.float64) * self.std
        self.points = (self.centres.double()[self.modes] + noise).float()

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {keys.IMAGE: self.points[i].clone()}

    def set_random_state(self, seed: int | None = None, state: Any = None) -> PointsDataset:
        """No-op (the points are fixed when the dataset is built); the engine calls it."""
        return self

    def batch(self, indices: list[int]) -> dict[str, Tensor]:
        """Items ``indices`` as one batch ``{"image": (B, 2)}``: one indexing operation,
        equal to stacking ``self[i]`` for each index."""
        return {keys.IMAGE: self.points[torch.as_tensor(indices, dtype=torch.long)]}
