"""Several classifiers read as one: the mean of their class softmaxes.

Why: a K+1 discriminator trained from a few labels lands in a different answer on each
training run (digits, 3 labels per class, one labeled draw: 17.2, 15.8 and 8.8% test
error from three initialisations; README "Semi-supervised"), and the mean of a few such
runs' probabilities is steadier than any one of them. The output is the log of the mean
probability, so ``softmax(output, dim=1)`` is that mean and the ensemble slots in where
one network's logits did (``classify``, cross-entropy, the exported classifier).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["SoftmaxAverage"]


class SoftmaxAverage(nn.Module):
    """``log(mean_i softmax(member_i(x)))`` over the members' outputs ``(B, K, ...)``.

    Args:
        members: the classifiers, each mapping the same input to logits of the same classes.

    Raises:
        ValueError: no members.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("SoftmaxAverage needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        return self.combine([member(x) for member in self.members])

    @staticmethod
    def combine(outputs: Sequence[Tensor]) -> Tensor:
        """``log(mean_i softmax(outputs[i]))``: the ensemble's output from its members' outputs (for a caller that needs both)."""
        log_probs = torch.stack([torch.log_softmax(out, dim=1) for out in outputs])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(outputs))
