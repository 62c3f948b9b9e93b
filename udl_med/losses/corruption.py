"""Corruption processes of a denoising autoencoder.

Vincent et al., "Extracting and composing robust features with denoising autoencoders",
ICML 2008 (masking noise), and "Stacked denoising autoencoders", JMLR 2010 (additive
isotropic Gaussian noise). As in torchio, the random part only draws the noise; applying
it is a deterministic function, so a corruption is reproducible from its generator.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

from udl_med.losses.reconstruction import parse_enum


class CorruptionKind(str, Enum):
    GAUSSIAN = "gaussian"  # x + sigma * eps, eps ~ N(0, I)
    MASKING = "masking"  # each voxel replaced by `fill` with probability p (dropout-style)


def add_noise(x: Tensor, noise: Tensor, sigma: float) -> Tensor:
    """Deterministic additive corruption ``x + sigma * noise``."""
    return x + sigma * noise


def apply_mask(x: Tensor, keep: Tensor, fill: float) -> Tensor:
    """Deterministic masking corruption: keep voxels where ``keep`` is true, else ``fill``."""
    return torch.where(keep, x, torch.full_like(x, fill))


class Corruption:
    """Draws and applies a corruption ``x~ ~ C(x~ | x)``.

    Args:
        kind: ``"gaussian"`` or ``"masking"``.
        level: the Gaussian standard deviation (on the [-1, 1] scale), or the masking probability.
        fill: value of masked voxels (-1 is air/background on the normalised scale).

    Raises:
        ValueError: an unknown kind, a negative level, or a masking probability >= 1.
    """

    def __init__(self, kind: str | CorruptionKind = "gaussian", level: float = 0.3, fill: float = -1.0) -> None:
        self.kind = parse_enum(CorruptionKind, kind, "corruption")
        if level < 0:
            raise ValueError(f"corruption level must be non-negative, got {level}")
        if self.kind is CorruptionKind.MASKING and level >= 1:
            raise ValueError(f"masking probability must be below 1, got {level}")
        self.level = level
        self.fill = fill

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Corrupt ``x`` ``(B, C, *spatial)``; ``generator`` (on ``x``'s device) makes it reproducible."""
        if self.kind is CorruptionKind.GAUSSIAN:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return add_noise(x, noise, self.level)
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= self.level
        return apply_mask(x, keep, self.fill)
