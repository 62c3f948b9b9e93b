"""Sparsity penalties on hidden activations of a sparse autoencoder.

Two classic penalties (Ng, "Sparse autoencoder", CS294A lecture notes, 2011; Lee et
al., NIPS 2007): the L1 norm of the code, and the Kullback-Leibler divergence between a
target activation rate ``rho`` and the measured mean activation ``rho_hat_j`` of each
hidden unit ``j`` over the batch, ``sum_j KL(rho || rho_hat_j)``. The KL form needs
activations in (0, 1), i.e. a sigmoid code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from udl_med.losses.reconstruction import Reduction, parse_enum, reduce


class L1Sparsity(nn.Module):
    """L1 norm of the activations ``h``: ``(B, ...)`` -> per-sample sum, reduced as ``reduction`` says."""

    def __init__(self, reduction: str | Reduction = "sum") -> None:
        super().__init__()
        self.reduction = parse_enum(Reduction, reduction, "reduction")

    def forward(self, h: Tensor) -> Tensor:
        return reduce(h.abs(), self.reduction)


def mean_activation(h: Tensor) -> Tensor:
    """Mean activation of each hidden unit over the batch: ``(B, ...)`` -> ``(...)``, the ``rho_hat`` of Ng."""
    return h.float().mean(dim=0)


def bernoulli_kl(rho: float, rho_hat: Tensor, eps: float = 1e-6) -> Tensor:
    """``KL(Bernoulli(rho) || Bernoulli(rho_hat))`` element-wise, with ``rho_hat`` clamped away from 0 and 1."""
    rho_hat = rho_hat.clamp(eps, 1 - eps)
    return rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))


class KLSparsity(nn.Module):
    """``sum_j KL(rho || rho_hat_j)`` over all hidden units (a scalar: ``rho_hat`` is a batch statistic).

    Args:
        rho: target mean activation, in (0, 1).

    Raises:
        ValueError: ``rho`` outside (0, 1).
    """

    def __init__(self, rho: float = 0.05) -> None:
        super().__init__()
        if not 0.0 < rho < 1.0:
            raise ValueError(f"rho must be in (0, 1), got {rho}")
        self.rho = rho

    def forward(self, h: Tensor) -> Tensor:
        """``h``: sigmoid activations ``(B, ...)`` in (0, 1)."""
        return bernoulli_kl(self.rho, mean_activation(h)).sum()
