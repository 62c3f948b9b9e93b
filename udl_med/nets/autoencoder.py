"""Undercomplete autoencoders whose encoder is exactly a MONAI ``Regressor``.

The encoder is a :class:`monai.networks.nets.Regressor` (strided convolution or residual
blocks, then flatten and one linear layer to the code), so an exported encoder is a stock
MONAI class that a downstream classifier is built from. With ``channels=()`` the encoder
is a single linear layer and the network is the linear autoencoder of Baldi & Hornik
(1989), which with an L2 loss spans the principal subspace of the data.

The decoder mirrors the encoder: a linear layer from the code back to the last feature
map, then one transposed-convolution block per encoder block. Block ``i`` of the decoder
(``decoder.layers[i]``) inverts block ``i`` of the encoder (``encoder.net.layer_i``), which
is what greedy layer-wise pretraining of a stacked autoencoder needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.factories import Act
from monai.networks.layers.utils import get_act_layer
from monai.networks.nets import Regressor
from torch import Tensor, nn

ActNorm = str | tuple[str, dict[str, Any]] | None

REGRESSOR_CLASS = "monai.networks.nets.Regressor"


def check_geometry(
    spatial_dims: int, image_size: Sequence[int], channels: Sequence[int], strides: Sequence[int]
) -> tuple[int, ...]:
    """Validate the encoder geometry and return the spatial size of the last feature map.

    Raises:
        ValueError: a bad ``spatial_dims``, a size/stride mismatch, or a size that the
            strides do not divide (the decoder could not restore it exactly).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if len(image_size) != spatial_dims:
        raise ValueError(f"image_size {tuple(image_size)} does not have spatial_dims={spatial_dims} entries")
    if len(channels) != len(strides):
        raise ValueError(f"channels {tuple(channels)} and strides {tuple(strides)} differ in length")
    if any(s < 1 for s in strides):
        raise ValueError(f"strides must be positive, got {tuple(strides)}")
    factor = int(np.prod(strides)) if strides else 1
    if any(n % factor for n in image_size):
        raise ValueError(f"image_size {tuple(image_size)} is not divisible by the product of strides ({factor})")
    return tuple(n // factor for n in image_size)


def regressor_kwargs(
    in_channels: int,
    image_size: Sequence[int],
    out_features: int,
    channels: Sequence[int],
    strides: Sequence[int],
    kernel_size: int = 3,
    num_res_units: int = 1,
    act: ActNorm = Act.PRELU,
    norm: ActNorm = "INSTANCE",
    dropout: float | None = None,
) -> dict[str, Any]:
    """Keyword arguments of the encoder's ``Regressor``: JSON-friendly, so they are exported."""
    return {
        "in_shape": [int(in_channels), *(int(n) for n in image_size)],
        "out_shape": [int(out_features)],
        "channels": [int(c) for c in channels],
        "strides": [int(s) for s in strides],
        "kernel_size": int(kernel_size),
        "num_res_units": int(num_res_units),
        "act": list(act) if isinstance(act, tuple) else act,
        "norm": list(norm) if isinstance(norm, tuple) else norm,
        "dropout": dropout,
    }


class Decoder(nn.Module):
    """Mirror of a ``Regressor`` encoder: linear to the last feature map, then transposed blocks.

    Args:
        spatial_dims: 2 or 3.
        out_channels: channels of the reconstructed image.
        image_size: spatial size of the reconstructed image.
        latent_dim: size of the code ``(B, latent_dim)``.
        channels, strides, kernel_size, num_res_units, act, norm, dropout: those of the encoder.

    ``layers[i]`` maps the output of encoder block ``i`` back to its input; they run in
    reverse order. The last block (``layers[0]``) has no norm or activation, so the output
    is unbounded (an identity link for L2/L1 losses, logits for binary cross-entropy).
    """

    def __init__(
        self,
        spatial_dims: int,
        out_channels: int,
        image_size: Sequence[int],
        latent_dim: int,
        channels: Sequence[int],
        strides: Sequence[int],
        kernel_size: int = 3,
        num_res_units: int = 1,
        act: ActNorm = Act.PRELU,
        norm: ActNorm = "INSTANCE",
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.final_size = check_geometry(spatial_dims, image_size, channels, strides)
        self.last_channels = channels[-1] if channels else out_channels
        self.linear = nn.Linear(latent_dim, self.last_channels * int(np.prod(self.final_size)))
        self.act = get_act_layer(act) if act is not None else nn.Identity()
        in_chs = [out_channels, *channels[:-1]]
        self.layers = nn.ModuleList()
        for i, (c_in, c_out, s) in enumerate(zip(in_chs, channels, strides)):
            self.layers.append(
                self._block(spatial_dims, c_out, c_in, s, i == 0, kernel_size, num_res_units, act, norm, dropout)
            )

    @staticmethod
    def _block(
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int,
        is_last: bool,
        kernel_size: int,
        num_res_units: int,
        act: ActNorm,
        norm: ActNorm,
        dropout: float | None,
    ) -> nn.Sequential:
        """A transposed convolution (upsampling by ``stride``), then a residual unit, as MONAI's AutoEncoder."""
        block = nn.Sequential()
        block.add_module(
            "conv",
            Convolution(
                spatial_dims,
                in_channels,
                out_channels,
                strides=stride,
                kernel_size=kernel_size,
                act=act,
                norm=norm,
                dropout=dropout,
                conv_only=is_last and num_res_units == 0,
                is_transposed=True,
            ),
        )
        if num_res_units > 0:
            block.add_module(
                "resunit",
                ResidualUnit(
                    spatial_dims,
                    out_channels,
                    out_channels,
                    strides=1,
                    kernel_size=kernel_size,
                    subunits=1,
                    act=act,
                    norm=norm,
                    dropout=dropout,
                    last_conv_only=is_last,
                ),
            )
        return block

    def forward(self, z: Tensor) -> Tensor:
        x = self.linear(z).view(z.shape[0], self.last_channels, *self.final_size)  # (B, C_L, *final_size)
        x = self.act(x)
        for layer in reversed(self.layers):
            x = layer(x)
        return x  # (B, C, *image_size)


class Autoencoder(nn.Module):
    """Undercomplete autoencoder: ``Regressor`` encoder to a ``latent_dim`` code, mirrored decoder.

    Args:
        spatial_dims: 2 for slices, 3 for patches.
        in_channels: image channels.
        image_size: spatial size ``(H, W[, D])``; divisible by the product of ``strides``.
        latent_dim: size of the code.
        channels: output channels of each encoder block; ``()`` gives a linear autoencoder.
        strides: stride of each encoder block.
        kernel_size, num_res_units, act, norm, dropout: as in MONAI's ``Regressor``.
        code_features: encoder outputs per latent unit (2 for a VAE: mean and log-variance).

    Raises:
        ValueError: bad geometry (see :func:`check_geometry`) or a non-positive ``latent_dim``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        image_size: Sequence[int],
        latent_dim: int,
        channels: Sequence[int] = (16, 32, 64),
        strides: Sequence[int] = (2, 2, 2),
        kernel_size: int = 3,
        num_res_units: int = 1,
        act: ActNorm = Act.PRELU,
        norm: ActNorm = "INSTANCE",
        dropout: float | None = None,
        code_features: int = 1,
    ) -> None:
        super().__init__()
        check_geometry(spatial_dims, image_size, channels, strides)
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        self.linear = not channels
        if self.linear:
            # MONAI's Regressor needs one block (with none its linear layer gets a wrong size),
            # so a linear encoder is a 1x1 convolution without norm or activation, then the linear map.
            channels, strides, kernel_size, num_res_units, act = (in_channels,), (1,), 1, 0, None
        self.spatial_dims = spatial_dims
        self.latent_dim = latent_dim
        self.encoder_kwargs = regressor_kwargs(
            in_channels, image_size, code_features * latent_dim, channels, strides, kernel_size, num_res_units, act, norm, dropout
        )
        self.encoder = Regressor(**self.encoder_kwargs)
        self.decoder = Decoder(
            spatial_dims, in_channels, image_size, latent_dim, channels, strides, kernel_size, num_res_units, act, norm, dropout
        )
        if self.linear:
            # Start the structural 1x1 convolutions at the identity, so the network is the
            # classic linear autoencoder W_d (W_e x + b_e) + b_d from the first step.
            for conv in (self.encoder.net.layer_0.conv, self.decoder.layers[0].conv.conv):
                nn.init.dirac_(conv.weight)
                nn.init.zeros_(conv.bias)

    def encode(self, x: Tensor) -> Tensor:
        """``(B, C, *spatial)`` -> code ``(B, code_features * latent_dim)``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Code ``(B, latent_dim)`` -> reconstruction ``(B, C, *spatial)`` (unbounded)."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def encoder_feature_maps(encoder: Regressor, x: Tensor) -> list[Tensor]:
    """Outputs of every block of a ``Regressor`` encoder, input first: ``[x, h_0, ..., h_{L-1}]``."""
    maps = [x]
    for layer in encoder.net:
        maps.append(layer(maps[-1]))
    return maps


__all__ = ["Autoencoder", "Decoder", "REGRESSOR_CLASS", "check_geometry", "encoder_feature_maps", "regressor_kwargs"]
