"""Tiny synthetic paired CT/MR images and engine runs on them (``data.kind: memory``) for the translation tests."""

from __future__ import annotations

import torch
from torch import Tensor

from udl_med import keys
from udl_med.data.memory import TranslationItems
from udl_med.engine.fit import MemoryFit, fit_in_memory
from udl_med.methods.base import DataSpec, Method, get_method

SIZES = {2: (32, 32), 3: (16, 16, 16)}
# tissue -> (CT, MR) in [-1, 1]; MR contrast is not a monotone (nor linear) function of CT
TISSUES = {"air": (-1.0, -1.0), "fat": (-0.1, 0.8), "soft": (0.05, 0.1), "bone": (0.7, -0.6)}


def tissue_pairs(n: int, size: tuple[int, ...], generator: torch.Generator, noise: float = 0.02) -> tuple[Tensor, Tensor]:
    """Paired CT and MR ``(n, 1, *size)``: an ellipse/ellipsoid body of fat around soft tissue, with a bone blob."""
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in size], indexing="ij")
    ct = torch.full((n, 1, *size), TISSUES["air"][0])
    mr = torch.full((n, 1, *size), TISSUES["air"][1])
    for i in range(n):
        r = 0.7 + 0.2 * torch.rand(len(size), generator=generator)
        c = 0.2 * (torch.rand(len(size), generator=generator) - 0.5)
        body = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grids, c, r)) < 1.0
        inner = sum(((g - ci) / (0.8 * ri)) ** 2 for g, ci, ri in zip(grids, c, r)) < 1.0
        b = c + 0.4 * (torch.rand(len(size), generator=generator) - 0.5)
        rb = 0.15 + 0.15 * torch.rand((), generator=generator)
        bone = sum(((g - bi) / rb) ** 2 for g, bi in zip(grids, b)) < 1.0
        for mask, tissue in ((body, "fat"), (inner, "soft"), (bone & inner, "bone")):
            ct[i, 0][mask] = TISSUES[tissue][0]
            mr[i, 0][mask] = TISSUES[tissue][1]
    ct = ct + noise * torch.randn(ct.shape, generator=generator)
    mr = mr + noise * torch.randn(mr.shape, generator=generator)
    return ct.clamp(-1, 1), mr.clamp(-1, 1)


def build(name: str, spatial_dims: int, seed: int = 0, **config) -> Method:
    """The method as the engine builds it for a run with ``seed``, before training (same initial weights as :func:`fit`)."""
    cls = get_method(name)
    torch.manual_seed(seed)
    spec = DataSpec(spatial_dims=spatial_dims, in_channels=1, image_size=SIZES[spatial_dims])
    return cls(cls.Config(**config), spec)


def fit(
    name: str, spatial_dims: int, steps: int, paired: bool, batch_size: int = 4, seed: int = 0, data_seed: int = 1, pool: int = 64, **config
) -> MemoryFit:
    """Train ``name`` through the engine on a fixed pool of tiny pairs; ``.method`` trained, ``.history`` the losses per step.

    Unpaired, the items are all (CT, MR) combinations of the pool, so batches draw CT and
    MR items independently (as ``pairing: unpaired`` does).
    """
    ct, mr = tissue_pairs(pool, SIZES[spatial_dims], torch.Generator().manual_seed(data_seed))
    return fit_in_memory(name, config, TranslationItems(ct, mr, paired), steps=steps, batch_size=batch_size, seed=seed)


def held_out(spatial_dims: int, n: int = 16, seed: int = 99) -> dict[str, Tensor]:
    ct, mr = tissue_pairs(n, SIZES[spatial_dims], torch.Generator().manual_seed(seed))
    return {keys.CT: ct, keys.MR: mr}


def mean_of(history: list[dict[str, float]], key: str, first: bool, k: int = 10) -> float:
    part = history[:k] if first else history[-k:]
    return sum(h[key] for h in part) / len(part)
