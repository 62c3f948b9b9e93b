"""The evidence lower bound of a variational autoencoder, with a beta weight on the KL term.

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014; the beta weight is that
of Higgins et al., "beta-VAE", ICLR 2017. With an approximate posterior
``q(z|x) = N(mu, diag(exp(logvar)))`` and prior ``p(z) = N(0, I)`` the loss per sample is

    -ELBO_beta = E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z)),

estimated with one reparameterised sample ``z = mu + exp(logvar / 2) * eps``. The
reconstruction term is the per-sample sum of :class:`ReconstructionLoss` over all voxels
(a Gaussian decoder with variance 1/2 up to a constant for L2, a Bernoulli decoder for
BCE); the KL term is summed over all latent axes. Both are averaged over the batch.

``recon_weight`` (default 1) multiplies the reconstruction term: with ``beta = 0`` the
loss is reconstruction only, with ``recon_weight = 0`` KL only (the lecture's pictures of
the latent space under each term alone, after J. Jordan's "Intuitively understanding
variational autoencoders"); both 1 is the ELBO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from udl_med.losses.reconstruction import ReconstructionKind, ReconstructionLoss, per_sample_sum


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` per sample, summed over all non-batch axes: ``(B,)``."""
    return per_sample_sum(0.5 * (mu.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()))


def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``z = mu + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)``: always a sample, in any mode.

    (MONAI's ``VarAutoEncoder.reparameterize`` returns ``mu + std`` in eval mode; use the
    mean directly where a deterministic code is wanted.)
    """
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


@dataclass(frozen=True)
class ELBOTerms:
    """The batch-mean loss ``recon_weight * recon + beta * kl`` and its two (unweighted) terms."""

    loss: Tensor
    recon: Tensor
    kl: Tensor


class ELBOLoss(nn.Module):
    """Negative beta-ELBO.

    Args:
        kind: reconstruction likelihood, ``"l2"``, ``"l1"`` (Laplace) or ``"bce"`` (Bernoulli).
        beta: weight of the KL term (1 is the ELBO itself; 0: reconstruction only).
        recon_weight: weight of the reconstruction term (1 is the ELBO itself; 0: KL only).

    Raises:
        ValueError: a negative ``beta`` or ``recon_weight``, both zero, or an unknown ``kind``.
    """

    def __init__(self, kind: str | ReconstructionKind = "l2", beta: float = 1.0, recon_weight: float = 1.0) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        if recon_weight < 0:
            raise ValueError(f"recon_weight must be non-negative, got {recon_weight}")
        if beta == 0 and recon_weight == 0:
            raise ValueError("beta and recon_weight are both 0: the loss would be zero")
        self.beta = beta
        self.recon_weight = recon_weight
        self.reconstruction = ReconstructionLoss(kind, reduction="sum")

    def forward(self, output: Tensor, target: Tensor, mu: Tensor, logvar: Tensor) -> ELBOTerms:
        """``output``/``target``: ``(B, C, H, W[, D])``; ``mu``/``logvar``: ``(B, latent)``."""
        recon = self.reconstruction(output, target)
        kl = gaussian_kl(mu, logvar).mean()
        return ELBOTerms(loss=self.recon_weight * recon + self.beta * kl, recon=recon, kl=kl)
