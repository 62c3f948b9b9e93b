"""Sparse autoencoder: a sigmoid code with an L1 or KL sparsity penalty.

The code is ``h = sigmoid(f(x))`` and the loss ``L(x, g(h)) + lambda * Omega(h)``
(Goodfellow, Bengio & Courville, *Deep Learning*, ch. 14.2.1), with ``Omega`` either the
L1 norm of ``h`` (Lee et al., NIPS 2007) or ``sum_j KL(rho || rho_hat_j)``, where
``rho_hat_j`` is the mean activation of unit ``j`` over the batch and ``rho`` the target
activation rate (Ng, "Sparse autoencoder", CS294A notes, 2011). Code names: ``rho`` =
``config.rho``, ``lambda`` = ``config.sparsity_weight``, ``rho_hat`` =
:func:`udl_med.losses.sparsity.mean_activation`. The measured mean activation is logged
as ``mean_activation``.

:meth:`encode` returns the sparse code ``h``; the exported encoder is the ``Regressor``
that computes the pre-activation ``f(x)`` (``h`` is its sigmoid).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from udl_med import keys
from udl_med.losses.sparsity import KLSparsity, L1Sparsity, mean_activation
from udl_med.methods.autoencoder import AutoencoderConfig, ReconstructionMethod
from udl_med.methods.base import DataSpec, Optimization, register


class SparseAutoencoderConfig(AutoencoderConfig):
    """An :class:`AutoencoderConfig` plus the sparsity penalty.

    Attributes:
        penalty: ``kl`` (towards the target rate ``rho``) or ``l1``.
        rho: target mean activation of each code unit (``kl`` only), in (0, 1).
        sparsity_weight: ``lambda``, the weight of the penalty.
    """

    latent_dim: int = Field(64, ge=1)
    penalty: Literal["kl", "l1"] = "kl"
    rho: float = Field(0.05, gt=0.0, lt=1.0)
    sparsity_weight: float = Field(0.02, ge=0.0)


@register("sparse_autoencoder")
class SparseAutoencoderMethod(ReconstructionMethod):
    """Sparse autoencoder (see the module docstring)."""

    Config = SparseAutoencoderConfig

    def __init__(self, config: SparseAutoencoderConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        self.penalty: nn.Module = KLSparsity(config.rho) if config.penalty == "kl" else L1Sparsity(reduction="sum")

    def code(self, x: Tensor) -> Tensor:
        """Sparse code ``h = sigmoid(f(x))``: ``(B, latent_dim)`` in (0, 1)."""
        return torch.sigmoid(self.net.encode(x))

    def reconstruct_output(self, x: Tensor) -> Tensor:
        return self.net.decode(self.code(x))

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor | float]:
        x = self.images(batch)
        with opt.autocast():
            h = self.code(x)  # (B, latent_dim)
            output = self.net.decode(h)
        recon = self.recon_loss(output, x)
        sparsity = self.penalty(h.float())
        loss = recon + self.config.sparsity_weight * sparsity
        opt.step(self.optimizer_name, loss)
        return {
            keys.LOSS: loss.detach(),
            keys.RECON: recon.detach(),
            keys.SPARSITY: sparsity.detach(),
            keys.MEAN_ACTIVATION: mean_activation(h.detach()).mean(),
        }

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, float]:
        metrics = super().evaluate(batch)
        metrics[keys.MEAN_ACTIVATION] = float(mean_activation(self.code(self.images(batch))).mean())
        return metrics

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images ``(B, C, *spatial)`` -> sparse codes ``(B, latent_dim)`` in (0, 1)."""
        return self.code(x.to(next(self.parameters()).device, torch.float32))
