"""Tiny data and engine runs on it (``data.kind: memory``) for the autoencoder-family tests."""

from __future__ import annotations

from pathlib import Path

import torch

from udl_med.data.memory import TensorItems
from udl_med.engine.fit import MemoryFit, fit_in_memory
from udl_med.methods.base import DataSpec, Method, get_method

SIZES = {2: (32, 32), 3: (16, 16, 16)}


def blobs(n: int, size: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """``(n, 1, *size)`` images in [-1, 1]: a bright disk/ball of random centre and radius on background -1.

    Three to four degrees of freedom per image, so a small code can reconstruct them and
    predicting the mean image cannot.
    """
    d = len(size)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in size], indexing="ij")
    shape = (n, *[1] * d)
    centre = torch.rand(n, d, generator=generator) - 0.5
    radius = torch.rand(n, generator=generator) * 0.3 + 0.3
    dist = sum((g[None] - centre[:, i].view(shape)) ** 2 for i, g in enumerate(grids)).sqrt()
    return torch.where(dist < radius.view(shape), 0.5, -1.0)[:, None]


def build(name: str, spatial_dims: int, seed: int = 0, in_channels: int = 1, **config) -> Method:
    """The method as the engine builds it for a run with ``seed``, before training (same initial weights as :func:`fit`)."""
    cls = get_method(name)
    torch.manual_seed(seed)
    return cls(cls.Config(**config), DataSpec(spatial_dims=spatial_dims, in_channels=in_channels, image_size=SIZES[spatial_dims]))


def fit(
    name: str,
    spatial_dims: int,
    steps: int,
    seed: int = 0,
    batch_size: int = 8,
    data_seed: int = 1,
    images: torch.Tensor | None = None,
    train: dict | None = None,
    out: Path | None = None,
    resume: bool = False,
    **config,
) -> MemoryFit:
    """Train ``name`` through the engine for ``steps`` steps; ``.method`` is the trained method, ``.losses()`` the loss per step.

    The training set is ``steps * batch_size`` fresh blobs (one epoch: no item is seen
    twice), or ``images`` when given. ``train``: further ``train:`` keys. ``out``: the run
    folder (default: a temporary one), which ``resume=True`` continues.
    """
    if images is None:
        images = blobs(steps * batch_size, SIZES[spatial_dims], torch.Generator().manual_seed(data_seed))
    return fit_in_memory(name, config, TensorItems(images), steps=steps, batch_size=batch_size, seed=seed, train=train, output_dir=out, resume=resume)


def held_out(spatial_dims: int, n: int = 32, seed: int = 99) -> dict[str, torch.Tensor]:
    return {"image": blobs(n, SIZES[spatial_dims], torch.Generator().manual_seed(seed))}


def early_late(losses: list[float], k: int = 10) -> tuple[float, float]:
    return sum(losses[:k]) / k, sum(losses[-k:]) / k
