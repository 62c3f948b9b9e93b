"""Tiny data and a plain training loop for the autoencoder-family tests."""

from __future__ import annotations

import torch

from udl_med.engine.optimization import EngineOptimization
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
    cls = get_method(name)
    torch.manual_seed(seed)
    return cls(cls.Config(**config), DataSpec(spatial_dims=spatial_dims, in_channels=in_channels, image_size=SIZES[spatial_dims]))


def fit(method: Method, steps: int, batch_size: int = 8, seed: int = 1, data=blobs, decay_at: int | None = None) -> list[float]:
    """Train with the engine's optimizer step on fresh tiny batches; return the loss per step.

    ``decay_at``: step after which every learning rate is divided by 10.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizers = method.configure_optimizers()
    opt = EngineOptimization(optimizers, torch.device("cpu"))
    size = method.data.image_size
    losses = []
    for step in range(steps):
        if step == decay_at:
            for optimizer in optimizers.values():
                for group in optimizer.param_groups:
                    group["lr"] /= 10
        method.train()
        out = method.train_step({"image": data(batch_size, size, generator)}, opt)
        opt.global_step += 1
        losses.append(float(out["loss"]))
    method.eval()
    return losses


def held_out(spatial_dims: int, n: int = 32, seed: int = 99) -> dict[str, torch.Tensor]:
    return {"image": blobs(n, SIZES[spatial_dims], torch.Generator().manual_seed(seed))}


def early_late(losses: list[float], k: int = 10) -> tuple[float, float]:
    return sum(losses[:k]) / k, sum(losses[-k:]) / k
