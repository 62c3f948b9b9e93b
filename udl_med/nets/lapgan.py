"""The finer-level networks of a LAPGAN: a conditional residual generator and its discriminator.

Denton, Chintala, Szlam, Fergus 2015, "Deep Generative Image Models using a Laplacian
Pyramid of Adversarial Networks" (https://arxiv.org/abs/1506.05751). At level ``k`` of
the pyramid the generator ``G_k(z_k, l_k[, y])`` takes a noise plane ``z_k`` and the
upsampled coarser image ``l_k = u(g_{k+1})`` (and the class as one-hot planes) and
returns the band-pass difference image ``h_k``; the discriminator ``D_k(h, l_k[, y])``
scores a difference image given the same conditioning. Built from MONAI blocks, 2D or 3D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from torch import Tensor, nn

__all__ = ["LaplacianLevelDiscriminator", "LaplacianLevelGenerator", "label_planes"]


def label_planes(labels: Tensor | None, num_classes: int, like: Tensor) -> Tensor | None:
    """One-hot class planes ``(B, num_classes, *spatial of like)``; None when unconditional."""
    if num_classes == 0:
        return None
    if labels is None:
        raise ValueError("a conditional network needs labels (B,)")
    if labels.ndim != 1 or labels.shape[0] != like.shape[0]:
        raise ValueError(f"labels must be (B,) with B = {like.shape[0]}, got shape {tuple(labels.shape)}")
    onehot = F.one_hot(labels.long(), num_classes).to(like.dtype)  # (B, K)
    return onehot.view(*onehot.shape, *([1] * (like.ndim - 2))).expand(-1, -1, *like.shape[2:])


def _check(spatial_dims: int, channels: int, num_blocks: int | None = None, num_classes: int = 0) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if num_blocks is not None and num_blocks < 0:
        raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")


class LaplacianLevelGenerator(nn.Module):
    """``G_k``: noise plane + upsampled coarse image (+ class planes) -> difference image.

    Args:
        spatial_dims: 2 or 3.
        image_channels: channels ``C`` of the images.
        channels: feature channels of the hidden layers.
        num_blocks: MONAI residual units between the input and output convolutions.
        noise_channels: planes of N(0, 1) noise ``z_k``.
        num_classes: classes of the condition (0: unconditional).
        norm: MONAI norm name of the hidden layers (``batch``, ``instance``, ...).

    Forward: ``coarse (B, C, *spatial)``, ``noise (B, noise_channels, *spatial)``,
    ``labels (B,) | None`` -> ``(B, C, *spatial)``, unbounded (a difference image). The
    output layer starts at zero, so an untrained level returns the upsampled coarse image.
    """

    def __init__(
        self,
        spatial_dims: int,
        image_channels: int = 1,
        channels: int = 32,
        num_blocks: int = 2,
        noise_channels: int = 1,
        num_classes: int = 0,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        _check(spatial_dims, channels, num_blocks, num_classes)
        if noise_channels < 1:
            raise ValueError(f"noise_channels must be >= 1, got {noise_channels}")
        self.spatial_dims, self.noise_channels, self.num_classes = spatial_dims, noise_channels, num_classes
        in_ch = image_channels + noise_channels + num_classes
        layers: list[nn.Module] = [Convolution(spatial_dims, in_ch, channels, kernel_size=3, act="relu", norm=norm)]
        layers += [ResidualUnit(spatial_dims, channels, channels, kernel_size=3, subunits=2, act="relu", norm=norm) for _ in range(num_blocks)]
        layers.append(Convolution(spatial_dims, channels, image_channels, kernel_size=3, conv_only=True))
        self.net = nn.Sequential(*layers)
        for p in layers[-1].parameters():  # zero output: G_k starts by adding nothing to the upsampled coarse image
            nn.init.zeros_(p)

    def forward(self, coarse: Tensor, noise: Tensor, labels: Tensor | None = None) -> Tensor:
        parts = [coarse, noise]
        planes = label_planes(labels, self.num_classes, coarse)
        if planes is not None:
            parts.append(planes)
        return self.net(torch.cat(parts, 1))


class LaplacianLevelDiscriminator(nn.Module):
    """``D_k``: difference image + upsampled coarse image (+ class planes) -> one raw score.

    Args:
        spatial_dims: 2 or 3.
        image_channels: channels ``C`` of the images.
        channels: channels of the strided convolutions, one entry per 2x downsampling.
        num_classes: classes of the condition (0: unconditional).
        norm: MONAI norm name after each strided convolution but the first.

    Forward: ``difference (B, C, *spatial)``, ``coarse (B, C, *spatial)``, ``labels`` ->
    ``(B, 1)`` scores (logits for the BCE losses).
    """

    def __init__(
        self,
        spatial_dims: int,
        image_channels: int = 1,
        channels: tuple[int, ...] = (32, 64),
        num_classes: int = 0,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must have at least one entry")
        for c in channels:
            _check(spatial_dims, c, num_classes=num_classes)
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        in_ch = 2 * image_channels + num_classes
        for i, c in enumerate(channels):
            layers.append(
                Convolution(spatial_dims, in_ch, c, strides=2, kernel_size=4, padding=1, act=("leakyrelu", {"negative_slope": 0.2}), norm=None if i == 0 else norm)
            )
            in_ch = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(in_ch, 1)

    def forward(self, difference: Tensor, coarse: Tensor, labels: Tensor | None = None) -> Tensor:
        parts = [difference, coarse]
        planes = label_planes(labels, self.num_classes, coarse)
        if planes is not None:
            parts.append(planes)
        return self.head(self.pool(self.features(torch.cat(parts, 1))).flatten(1))
