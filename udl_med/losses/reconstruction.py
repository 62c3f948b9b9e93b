"""Reconstruction losses for autoencoders: L2, L1 and binary cross-entropy.

Images are normalised to [-1, 1]. For L2 and L1 the decoder output is the
reconstruction itself; for binary cross-entropy it is a logit per voxel and the target
is the intensity mapped to [0, 1] (the Bernoulli decoder of Kingma & Welling, 2014), so
:meth:`ReconstructionLoss.to_image` maps it back with ``2 * sigmoid - 1``.
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReconstructionKind(str, Enum):
    L2 = "l2"
    L1 = "l1"
    BCE = "bce"


class Reduction(str, Enum):
    MEAN = "mean"  # mean over every element
    SUM = "sum"  # per-sample sum over all non-batch axes, then mean over the batch
    NONE = "none"  # per-sample sum over all non-batch axes: (B,)


def parse_enum(enum: type[Enum], value: str | Enum, what: str) -> Enum:
    """``enum(value)`` with a ``ValueError`` that lists the valid values."""
    try:
        return enum(value)
    except ValueError:
        valid = ", ".join(str(m.value) for m in enum)
        raise ValueError(f"unknown {what} {value!r}; valid: {valid}") from None


def per_sample_sum(values: Tensor) -> Tensor:
    """Sum over all non-batch axes: ``(B, ...)`` -> ``(B,)`` (works for 2D and 3D images)."""
    return values.flatten(1).sum(dim=1)


def reduce(values: Tensor, reduction: Reduction) -> Tensor:
    """Reduce an element-wise loss ``(B, ...)`` as :class:`Reduction` says."""
    if reduction is Reduction.MEAN:
        return values.mean()
    per_sample = per_sample_sum(values)
    return per_sample if reduction is Reduction.NONE else per_sample.mean()


class ReconstructionLoss(nn.Module):
    """Distance between a decoder output and the image it reconstructs.

    Args:
        kind: ``"l2"`` (squared error), ``"l1"`` (absolute error) or ``"bce"`` (binary
            cross-entropy on logits, target ``(x + 1) / 2``).
        reduction: ``"mean"``, ``"sum"`` (per-sample sum, batch mean) or ``"none"`` ``(B,)``.

    Raises:
        ValueError: an unknown ``kind`` or ``reduction``; the message lists the valid values.
    """

    def __init__(self, kind: str | ReconstructionKind = "l2", reduction: str | Reduction = "mean") -> None:
        super().__init__()
        self.kind = parse_enum(ReconstructionKind, kind, "reconstruction loss")
        self.reduction = parse_enum(Reduction, reduction, "reduction")

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        """``output``: decoder output ``(B, C, H, W[, D])``; ``target``: image in [-1, 1], same shape."""
        if output.shape != target.shape:
            raise ValueError(f"output shape {tuple(output.shape)} differs from target shape {tuple(target.shape)}")
        output = output.float()
        if self.kind is ReconstructionKind.L2:
            values = (output - target) ** 2
        elif self.kind is ReconstructionKind.L1:
            values = (output - target).abs()
        else:
            values = F.binary_cross_entropy_with_logits(output, (target + 1) / 2, reduction="none")
        return reduce(values, self.reduction)

    def to_image(self, output: Tensor) -> Tensor:
        """Decoder output -> reconstructed image on the [-1, 1] scale."""
        if self.kind is ReconstructionKind.BCE:
            return 2 * torch.sigmoid(output) - 1
        return output
