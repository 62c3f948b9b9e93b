"""Gaussian and Laplacian image pyramids whose reconstruction is exact by construction.

Denton, Chintala, Szlam, Fergus 2015, "Deep Generative Image Models using a Laplacian
Pyramid of Adversarial Networks" (https://arxiv.org/abs/1506.05751), section 3.1. With
``d`` the downsampling and ``u`` the upsampling, the Gaussian pyramid is
``g_0 = x, g_{k+1} = d(g_k)`` and the Laplacian pyramid
``h_k = g_k - u(g_{k+1})`` for ``k < L - 1``, ``h_{L-1} = g_{L-1}``. Reconstruction runs
coarse to fine, ``g_k = u(g_{k+1}) + h_k``, and gives back ``x`` (up to float rounding,
``(a - b) + b``) because every level uses the SAME ``d`` and ``u``, whatever they are:
here ``d`` is a 2x average pool and ``u`` a fixed 2x upsampling (``nearest`` or
``linear``: bi/trilinear, ``align_corners=False``). The LAPGAN generators and sampling
use :func:`upsample` too, so training and sampling see the same coarse images.
"""

from __future__ import annotations

import torch.nn.functional as F
from monai.utils import StrEnum
from torch import Tensor

__all__ = ["Upsampling", "downsample", "gaussian_pyramid", "laplacian_pyramid", "reconstruct", "upsample", "check_pyramid_size"]


class Upsampling(StrEnum):
    """The fixed 2x upsampling of the pyramid."""

    NEAREST = "nearest"
    LINEAR = "linear"


def parse_upsampling(value: str | Upsampling) -> Upsampling:
    """``value`` as an :class:`Upsampling`; ``ValueError`` lists the valid values."""
    try:
        return Upsampling(value)
    except ValueError:
        raise ValueError(f"unknown upsampling {value!r}; valid: {', '.join(u.value for u in Upsampling)}") from None


def _spatial_dims(x: Tensor) -> int:
    if x.ndim not in (4, 5):
        raise ValueError(f"images must be (B, C, H, W) or (B, C, H, W, D), got shape {tuple(x.shape)}")
    return x.ndim - 2


def downsample(x: Tensor) -> Tensor:
    """2x average pool of ``(B, C, *spatial)`` (2D or 3D); every spatial size must be even."""
    dims = _spatial_dims(x)
    if any(s % 2 for s in x.shape[2:]):
        raise ValueError(f"downsample needs even spatial sizes, got {tuple(x.shape[2:])}")
    return F.avg_pool2d(x, 2) if dims == 2 else F.avg_pool3d(x, 2)


def upsample(x: Tensor, mode: str | Upsampling = Upsampling.LINEAR, factor: int = 2) -> Tensor:
    """Fixed ``factor``-times upsampling of ``(B, C, *spatial)`` (nearest, or bi/trilinear)."""
    dims = _spatial_dims(x)
    mode = parse_upsampling(mode)
    if mode == Upsampling.NEAREST:
        return F.interpolate(x, scale_factor=factor, mode="nearest")
    return F.interpolate(x, scale_factor=factor, mode="bilinear" if dims == 2 else "trilinear", align_corners=False)


def check_pyramid_size(image_size: tuple[int, ...], levels: int) -> tuple[tuple[int, ...], ...]:
    """Spatial size of every level, finest first; ``ValueError`` unless each size divides by ``2**(levels-1)``."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    factor = 2 ** (levels - 1)
    if any(s % factor for s in image_size):
        raise ValueError(f"image size {tuple(image_size)} must be divisible by 2**(levels - 1) = {factor} for {levels} levels")
    return tuple(tuple(s // 2**k for s in image_size) for k in range(levels))


def gaussian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """``[g_0 = x, g_1, ..., g_{L-1}]``, each ``(B, C, *spatial / 2**k)``."""
    check_pyramid_size(tuple(x.shape[2:]), levels)
    out = [x]
    for _ in range(levels - 1):
        out.append(downsample(out[-1]))
    return out


def laplacian_pyramid(x: Tensor, levels: int, mode: str | Upsampling = Upsampling.LINEAR) -> list[Tensor]:
    """``[h_0, ..., h_{L-2}, g_{L-1}]``: band-pass residuals finest first, then the coarsest image."""
    gauss = gaussian_pyramid(x, levels)
    return [g - upsample(coarser, mode) for g, coarser in zip(gauss[:-1], gauss[1:])] + [gauss[-1]]


def reconstruct(pyramid: list[Tensor], mode: str | Upsampling = Upsampling.LINEAR) -> Tensor:
    """Invert :func:`laplacian_pyramid` (same ``mode``): ``g_k = u(g_{k+1}) + h_k``, coarse to fine."""
    if not pyramid:
        raise ValueError("reconstruct needs at least one level")
    x = pyramid[-1]
    for residual in reversed(pyramid[:-1]):
        x = upsample(x, mode) + residual
    return x
