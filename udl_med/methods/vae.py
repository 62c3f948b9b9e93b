"""Variational autoencoder with a beta-weighted ELBO, prior sampling and latent traversals.

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014; the weight ``beta`` on
the KL term is that of Higgins et al., "beta-VAE", ICLR 2017. One step maximises

    ELBO_beta(x) = E_{q(z|x)}[log p(x|z)] - beta * KL(q(z|x) || p(z)),

with ``q(z|x) = N(mu, diag(sigma^2))`` from the encoder, ``z = mu + sigma * eps`` (the
reparameterisation trick) and ``p(z) = N(0, I)``. Code names: ``mu``/``logvar`` =
``mu``/``log sigma^2``, ``recon`` = ``-E_q[log p(x|z)]`` (up to a constant), ``kl`` =
``KL(q || p)``, ``beta`` = ``config.beta``; both terms are logged. ``config.recon_weight``
multiplies the reconstruction term, so the lecture's three latent pictures can be trained:
reconstruction only (``beta: 0``), KL only (``recon_weight: 0``), both (the defaults);
``configs/vae2d-latent-{recon,kl,both}.yaml`` are the three, and ``udl-med latent`` draws
them. :meth:`sample` decodes
``z ~ p(z)``; :meth:`traversal` decodes a code with one latent coordinate swept at a time,
one row per latent direction. :meth:`encode` (and the exported encoder) give ``mu``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.losses.elbo import ELBOLoss
from udl_med.methods.autoencoder import AutoencoderConfig, ReconstructionMethod, mse_per_batch
from udl_med.methods.base import Capability, DataSpec, Optimization, register
from udl_med.nets.autoencoder import REGRESSOR_CLASS
from udl_med.nets.vae import VarAutoencoder


class VAEConfig(AutoencoderConfig):
    """An :class:`AutoencoderConfig` plus the ELBO weight and the traversal grid.

    Attributes:
        beta: weight of the KL term (1: the ELBO; > 1: a beta-VAE; 0: reconstruction only).
        recon_weight: weight of the reconstruction term (1: the ELBO; 0: KL only).
        traversal_dims: latent directions in the traversal grid (those with the largest
            mean KL on the preview batch), one row each, with as many columns.
        traversal_range: each direction is swept over ``mu_j +- traversal_range``.
    """

    latent_dim: int = Field(16, ge=1)
    beta: float = Field(1.0, ge=0.0)
    recon_weight: float = Field(1.0, ge=0.0)
    traversal_dims: int = Field(8, ge=1)
    traversal_range: float = Field(3.0, gt=0.0)


@register("vae")
class VAEMethod(ReconstructionMethod):
    """Variational autoencoder (see the module docstring)."""

    Config = VAEConfig
    capabilities = frozenset({Capability.ENCODE, Capability.SAMPLE})
    network_class = VarAutoencoder
    optimizer_name = "vae"

    def __init__(self, config: VAEConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        if config.beta == 0 and config.recon_weight == 0:
            raise ConfigError("<config>", "model.recon_weight", "and model.beta are both 0: nothing to train")
        self.elbo = ELBOLoss(config.loss, beta=config.beta, recon_weight=config.recon_weight)

    def reconstruct_output(self, x: Tensor) -> Tensor:
        """Deterministic reconstruction: decode the posterior mean."""
        return self.net.decode(self.net.encode(x))

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor | float]:
        x = self.images(batch)  # (B, C, *spatial)
        with opt.autocast():
            out = self.net(x)  # z = mu + sigma * eps, decoded
        terms = self.elbo(out.output, x, out.mu, out.logvar)  # recon_weight * recon + beta * kl
        opt.step(self.optimizer_name, terms.loss)
        return {keys.LOSS: terms.loss.detach(), keys.RECON: terms.recon.detach(), keys.KL: terms.kl.detach()}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, float]:
        """The two ELBO terms (one posterior sample, fixed seed) and the mean-decoded reconstruction error."""
        x = self.images(batch)
        out = self.net(x, generator=torch.Generator(x.device).manual_seed(0))
        terms = self.elbo(out.output, x, out.mu, out.logvar)
        mean_image = x.mean(dim=0, keepdim=True).expand_as(x)
        return {
            keys.LOSS: float(terms.loss),
            keys.RECON: float(terms.recon),
            keys.KL: float(terms.kl),
            keys.RECON_MSE: mse_per_batch(self.reconstruct(x), x),
            keys.MEAN_IMAGE_MSE: mse_per_batch(mean_image, x),
        }

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def draw_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes of the prior ``N(0, I)``: ``(n, latent_dim)`` on the CPU."""
        return torch.randn((n, self.config.latent_dim), generator=generator)

    def decode_latent(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images ``(B, C, *spatial)`` in [-1, 1] decoded from codes ``z`` ``(B, latent_dim)`` (differentiable in ``z``)."""
        if labels is not None:
            raise ValueError(f"method {self.name!r} is unconditional: it cannot decode a given label")
        return self.recon_loss.to_image(self.net.decode(z.to(next(self.parameters()).device, torch.float32))).clamp(-1, 1)

    @torch.no_grad()
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``mu`` and ``logvar`` of ``q(z | x)``, each ``(B, latent_dim)``."""
        return self.net.posterior(x.to(next(self.parameters()).device, torch.float32))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, label: int | None = None) -> Tensor:
        """Decode ``z ~ N(0, I)``: ``(n, C, *spatial)`` in [-1, 1]."""
        if label is not None:
            raise ValueError(f"method {self.name!r} is unconditional: it cannot sample a given label")
        return self.decode_latent(self.draw_latent(n, generator))  # no_grad: the decorator

    @torch.no_grad()
    def traversal(self, x: Tensor | None = None) -> Tensor:
        """Latent traversal grid ``(k * k, C, *spatial)``, ``k = min(traversal_dims, latent_dim)``.

        Row ``r`` sweeps latent direction ``j_r`` over ``k`` values in ``mu_j +- traversal_range``,
        the other coordinates fixed at the posterior mean of ``x[0]`` (zero without ``x``).
        With ``x`` the directions are those with the largest mean KL over ``x`` (the ones the
        model uses); without it the first ``k``. Saved with ``nrow=k`` (the default for k * k
        images), it is one row per direction.
        """
        device = next(self.parameters()).device
        k = min(self.config.traversal_dims, self.config.latent_dim)
        if x is None:
            base = torch.zeros(self.config.latent_dim, device=device)
            dims = torch.arange(k, device=device)
        else:
            mu, logvar = self.net.posterior(x.to(device, torch.float32))
            base = mu[0]
            per_dim_kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).mean(0)  # (latent_dim,)
            dims = per_dim_kl.argsort(descending=True)[:k]
        values = torch.linspace(-self.config.traversal_range, self.config.traversal_range, k, device=device)
        z = base.repeat(k, k, 1)  # (rows, cols, latent_dim)
        for r, j in enumerate(dims.tolist()):
            z[r, :, j] = base[j] + values
        images = self.net.decode(z.flatten(0, 1))
        return self.recon_loss.to_image(images).clamp(-1, 1)

    @torch.no_grad()
    def preview(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = self.images(batch)
        return {
            "input": x.clamp(-1, 1),
            "reconstruction": self.reconstruct(x),
            "samples": self.sample(x.shape[0], torch.Generator().manual_seed(0)),
            "traversal": self.traversal(x),
        }

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean ``mu`` ``(B, latent_dim)``, in train and eval mode alike."""
        return self.net.encode(x.to(next(self.parameters()).device, torch.float32))

    def export_encoder(self) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
        """A ``Regressor`` computing ``mu`` (the mean rows of the encoder's last layer)."""
        return REGRESSOR_CLASS, self.net.mean_encoder_kwargs(), self.net.mean_encoder_state()


