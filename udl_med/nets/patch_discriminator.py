"""PatchGAN discriminator: one real/fake score per receptive-field patch.

Isola et al. 2017 (pix2pix, https://arxiv.org/abs/1611.07004), section 3.2.2: a
discriminator that only judges local patches models high frequencies and leaves low
frequencies to the L1 (pix2pix) or cycle (CycleGAN) loss. Built on MONAI's
:class:`~monai.networks.nets.PatchDiscriminator`, returning the score map only.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import PatchDiscriminator
from torch import Tensor, nn


def patch_sizes(size: Sequence[int], num_layers: int) -> tuple[list[int], list[int]]:
    """Sizes inside a :class:`PatchGANDiscriminator` (kernel 4, padding 1) for an input of ``size``.

    Returns ``(smallest, scores)``: the smallest normalised feature map and the score map,
    per spatial axis.
    """
    out = [int(s) for s in size]
    smallest = list(out)
    # the first conv (stride 2, no norm), then num_layers normalised convs (stride 2, the last stride 1)
    for i, stride in enumerate([2] + [2] * (num_layers - 1) + [1]):
        out = [(s + 2 - 4) // stride + 1 for s in out]
        if i >= 1:
            smallest = [min(a, b) for a, b in zip(smallest, out)]
    scores = [s - 1 for s in out]  # the final conv: kernel 4, padding 1, stride 1
    return smallest, scores


def check_patch_input(size: Sequence[int], num_layers: int) -> None:
    """Raise ``ValueError`` when a PatchGAN with ``num_layers`` cannot judge images of ``size``.

    Instance norm needs more than one element per channel, and the score map must not vanish.
    """
    smallest, scores = patch_sizes(size, num_layers)
    if min(scores) < 1 or _prod(smallest) < 2:
        raise ValueError(
            f"image size {tuple(size)} is too small for a PatchGAN with num_layers={num_layers}; "
            "use fewer discriminator layers or larger images"
        )


def _prod(values: Sequence[int]) -> int:
    p = 1
    for v in values:
        p *= v
    return p


class PatchGANDiscriminator(nn.Module):
    """A PatchGAN on ``spatial_dims`` images; ``forward`` returns the score map ``(B, 1, *patches)``.

    For pix2pix's conditional discriminator pass ``in_channels`` = source + target
    channels and feed ``torch.cat([source, target], 1)``.

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels: input channels.
        channels: filters of the first layer, doubled per layer.
        num_layers: strided layers after the first (3 gives the 70 x 70 PatchGAN).
        norm: normalisation, by name or ``(name, kwargs)``; instance norm as in CycleGAN.
        act: activation, by name or ``(name, kwargs)``.
        dropout: dropout after each layer.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        channels: int = 64,
        num_layers: int = 3,
        norm: str | tuple = "instance",
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.2}),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.spatial_dims = spatial_dims
        self.num_layers = num_layers
        self.net = PatchDiscriminator(
            spatial_dims=spatial_dims,
            channels=channels,
            in_channels=in_channels,
            out_channels=1,
            num_layers_d=num_layers,
            kernel_size=4,
            activation=act,
            norm=norm,
            bias=True,
            padding=1,
            dropout=dropout,
        )

    def forward(self, x: Tensor) -> Tensor:
        """Scores ``(B, 1, *patches)`` of images ``(B, in_channels, *spatial)``."""
        out = x
        for layer in self.net.children():
            out = layer(out)
        return out
