"""Image-to-image generators: the ResNet generator of CycleGAN and a U-Net for pix2pix.

Both take any spatial size: the input is padded (edge replication) up to a multiple
of the network's total stride and the output cropped back, so a 2D model trained on
32 x 32 slices translates 512 x 512 slices and a 3D one any sliding-window patch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import UNet
from torch import Tensor, nn

PADDING_MODES = ("reflect", "replicate", "zeros")
_PAD_LAYERS = {
    "reflect": (nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d),
    "replicate": (nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d),
}


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")


def pad_to_multiple(x: Tensor, divisor: int) -> tuple[Tensor, list[int]]:
    """Pad ``x`` ``(B, C, *spatial)`` at the high end of each spatial axis to a multiple of ``divisor``.

    Returns the padded tensor and the original spatial size (to crop back with :func:`crop_to`).
    """
    size: list[int] = [int(s) for s in x.shape[2:]]
    pad: list[int] = []
    for s in size[::-1]:  # F.pad lists the last axis first
        pad += [0, (divisor - s % divisor) % divisor]
    if sum(pad) > 0:
        x = F.pad(x, pad, mode="replicate")
    return x, size


def crop_to(x: Tensor, size: list[int]) -> Tensor:
    """Crop ``x`` ``(B, C, *spatial)`` to the leading ``size`` of each spatial axis."""
    if len(size) == 1:
        return x[:, :, : size[0]]
    if len(size) == 2:
        return x[:, :, : size[0], : size[1]]
    return x[:, :, : size[0], : size[1], : size[2]]


class _ResidualBlock(nn.Module):
    """``x + conv(norm(relu(conv(norm(pad(x))))))``, the ResNet block of Johnson et al. 2016."""

    def __init__(
        self, spatial_dims: int, channels: int, norm: str | tuple, act: str | tuple, padding_mode: str, dropout: float
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(2):
            pad = 1
            if padding_mode != "zeros":
                layers.append(_PAD_LAYERS[padding_mode][spatial_dims - 1](1))
                pad = 0
            layers.append(
                Convolution(
                    spatial_dims,
                    channels,
                    channels,
                    kernel_size=3,
                    padding=pad,
                    norm=norm,
                    act=act if i == 0 else None,
                    dropout=dropout if i == 0 and dropout > 0 else None,
                )
            )
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class ResNetGenerator(nn.Module):
    """CycleGAN's generator: stem, strided downsampling, residual blocks, upsampling, tanh.

    Johnson et al. 2016, "Perceptual Losses for Real-Time Style Transfer"
    (https://arxiv.org/abs/1603.08155), as used by Zhu et al. 2017, "Unpaired
    Image-to-Image Translation using Cycle-Consistent Adversarial Networks"
    (https://arxiv.org/abs/1703.10593), appendix 7.2: ``c7s1-64, d128, d256, R256 x 9,
    u128, u64, c7s1-3`` with instance norm.

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels: channels of the input image.
        out_channels: channels of the output image.
        channels: filters of the stem; doubled at each downsampling.
        num_downsample: number of stride-2 convolutions (and of transposed ones).
        num_res_blocks: residual blocks at the lowest resolution (9 in the paper for 256^2).
        norm: normalisation, by name or ``(name, kwargs)`` (MONAI's ``Norm`` factory).
        act: activation, by name or ``(name, kwargs)``.
        padding_mode: ``reflect`` (the paper), ``replicate`` or ``zeros``.
        dropout: dropout inside the residual blocks.

    Raises:
        ValueError: a bad argument (names it and its value).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: int = 64,
        num_downsample: int = 2,
        num_res_blocks: int = 9,
        norm: str | tuple = "instance",
        act: str | tuple = "relu",
        padding_mode: str = "reflect",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("channels", channels, 1),
            ("num_downsample", num_downsample, 0),
            ("num_res_blocks", num_res_blocks, 0),
        ):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        self.spatial_dims = spatial_dims
        self.size_divisor = 2**num_downsample

        stem: list[nn.Module] = []
        stem_pad = 3
        if padding_mode != "zeros":
            stem.append(_PAD_LAYERS[padding_mode][spatial_dims - 1](3))
            stem_pad = 0
        stem.append(Convolution(spatial_dims, in_channels, channels, kernel_size=7, padding=stem_pad, norm=norm, act=act))
        layers: list[nn.Module] = [nn.Sequential(*stem)]
        ch = channels
        for _ in range(num_downsample):  # d_k: 3x3 stride-2 conv, norm, ReLU
            layers.append(Convolution(spatial_dims, ch, ch * 2, strides=2, kernel_size=3, padding=1, norm=norm, act=act))
            ch *= 2
        for _ in range(num_res_blocks):
            layers.append(_ResidualBlock(spatial_dims, ch, norm, act, padding_mode, dropout))
        for _ in range(num_downsample):  # u_k: 3x3 stride-1/2 transposed conv, norm, ReLU
            layers.append(
                Convolution(
                    spatial_dims,
                    ch,
                    ch // 2,
                    strides=2,
                    kernel_size=3,
                    padding=1,
                    output_padding=1,
                    is_transposed=True,
                    norm=norm,
                    act=act,
                )
            )
            ch //= 2
        head: list[nn.Module] = []
        head_pad = 3
        if padding_mode != "zeros":
            head.append(_PAD_LAYERS[padding_mode][spatial_dims - 1](3))
            head_pad = 0
        head += [Convolution(spatial_dims, ch, out_channels, kernel_size=7, padding=head_pad, conv_only=True), nn.Tanh()]
        layers.append(nn.Sequential(*head))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` in [-1, 1]."""
        x, size = pad_to_multiple(x, self.size_divisor)
        return crop_to(self.model(x), size)


class UNetGenerator(nn.Module):
    """pix2pix's generator: a U-Net (MONAI's :class:`~monai.networks.nets.UNet`) with a tanh output.

    Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial
    Networks" (https://arxiv.org/abs/1611.07004), section 3.2.1: skip connections
    carry low-level structure (edges, anatomy) straight from input to output.

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels: channels of the input image.
        out_channels: channels of the output image.
        channels: filters per level (length = levels).
        strides: downsampling per level (length = levels - 1).
        num_res_units: residual units per level (0: plain conv blocks, as in pix2pix).
        norm: normalisation, by name or ``(name, kwargs)``.
        act: activation, by name or ``(name, kwargs)``.
        dropout: dropout in every block (pix2pix's noise source).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (64, 128, 256, 512),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 0,
        norm: str | tuple = "instance",
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.2}),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        if len(strides) != len(channels) - 1:
            raise ValueError(f"strides must have len(channels) - 1 = {len(channels) - 1} entries, got {len(strides)}")
        self.spatial_dims = spatial_dims
        divisor = 1
        for s in strides:
            divisor *= int(s)
        self.size_divisor = divisor
        self.unet = UNet(
            spatial_dims,
            in_channels,
            out_channels,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
            norm=norm,
            act=act,
            dropout=dropout,
        )

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` in [-1, 1]."""
        x, size = pad_to_multiple(x, self.size_divisor)
        return crop_to(torch.tanh(self.unet(x)), size)
