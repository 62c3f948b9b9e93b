"""Small pieces the DCGAN and MLP GAN networks share: input noise, label conditioning, norm names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Norm
from torch import Tensor, nn

from udl_med.nets.vbn import VirtualBatchNorm

#: norm choices of the DCGAN networks
CONV_NORMS = ("batch", "virtual_batch", "instance", "none")
#: norm choices of the MLP networks ("instance" on a vector = per-example normalisation over its features)
MLP_NORMS = ("batch", "virtual_batch", "instance", "layer", "none")


def check_positive(**values: int) -> None:
    """``ValueError`` naming the first argument below 1."""
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def check_non_negative(**values: float) -> None:
    """``ValueError`` naming the first argument below 0."""
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def check_norm(norm: str, valid: tuple[str, ...]) -> str:
    if norm not in valid:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(valid)}")
    return norm


def norm_layer(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """The normalisation layer named ``norm`` for ``channels`` features (``spatial_dims`` 0: vectors)."""
    if norm == "none":
        return nn.Identity()
    if norm == "virtual_batch":
        return VirtualBatchNorm(channels, spatial_dims)
    if spatial_dims == 0:
        if norm == "batch":
            return nn.BatchNorm1d(channels)
        return nn.LayerNorm(channels, elementwise_affine=(norm == "layer"))
    return Norm[norm, spatial_dims](channels)


class GaussianNoise(nn.Module):
    """``x + std * N(0, 1)`` in training mode, the identity in eval mode (Salimans et al. 2016's D: 0.3 input, 0.5 hidden)."""

    def __init__(self, std: float) -> None:
        super().__init__()
        if std < 0:
            raise ValueError(f"noise std must be >= 0, got {std}")
        self.std = float(std)

    def extra_repr(self) -> str:
        return f"std={self.std}"

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.std > 0:
            return x + self.std * torch.randn_like(x)
        return x


def one_hot_labels(
    labels: Tensor | None, num_classes: int, batch: int, device: torch.device, dtype: torch.dtype
) -> Tensor | None:
    """One-hot ``(B, num_classes)`` of ``labels`` ``(B,)``; ``None`` for an unconditional network.

    Float ``labels`` ``(B, num_classes)`` are class weights, used as they are (a soft label,
    e.g. halfway between two classes when interpolating a conditional generator).

    Raises:
        ValueError: labels missing for a conditional network, given to an unconditional
            one, of the wrong shape or out of range.
    """
    if num_classes == 0:
        if labels is not None:
            raise ValueError("labels given to an unconditional network (num_classes=0)")
        return None
    if labels is None:
        raise ValueError(f"labels (B,) are required: the network is conditional (num_classes={num_classes})")
    if labels.is_floating_point() and tuple(labels.shape) == (batch, num_classes):
        return labels.to(device, dtype)
    if tuple(labels.shape) != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got {labels.min().item()}..{labels.max().item()}")
    return F.one_hot(labels.to(device), num_classes).to(dtype)
