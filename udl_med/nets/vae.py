"""Variational autoencoder whose encoder is a MONAI ``Regressor`` (mean and log-variance heads in one).

The encoder ``Regressor`` outputs ``2 * latent_dim`` values per image, the posterior mean
``mu`` and log-variance ``logvar`` of ``q(z | x) = N(mu, diag(exp(logvar)))`` (Kingma &
Welling, ICLR 2014); the decoder is that of :class:`~udl_med.nets.autoencoder.Autoencoder`.
:meth:`VarAutoencoder.mean_encoder` gives the ``Regressor`` computing ``mu`` alone (the
mean rows of the last linear layer), which is what ``export --format encoder`` writes.

Unlike MONAI's ``VarAutoEncoder``, whose ``reparameterize`` returns ``mu + std`` in eval
mode, :meth:`encode` always returns ``mu`` and :meth:`forward` always draws a sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.networks.nets import Regressor
from torch import Tensor

from udl_med.losses.elbo import reparameterize
from udl_med.nets.autoencoder import ActNorm, Autoencoder

LOGVAR_RANGE = (-30.0, 20.0)  # clamp, so exp(logvar) stays finite early in training


@dataclass(frozen=True)
class VAEOutput:
    """Decoder output ``(B, C, *spatial)`` for a sample ``z ~ q(z | x)``, and the posterior."""

    output: Tensor
    mu: Tensor
    logvar: Tensor
    z: Tensor


class VarAutoencoder(Autoencoder):
    """VAE for 2D or 3D images (arguments as :class:`~udl_med.nets.autoencoder.Autoencoder`)."""

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
        act: ActNorm = "PRELU",
        norm: ActNorm = "INSTANCE",
        dropout: float | None = None,
    ) -> None:
        super().__init__(
            spatial_dims, in_channels, image_size, latent_dim, channels, strides, kernel_size, num_res_units, act, norm, dropout,
            code_features=2,
        )

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, *spatial)`` -> ``mu``, ``logvar``, each ``(B, latent_dim)``."""
        h = self.encoder(x)  # (B, 2 * latent_dim)
        mu, logvar = h[:, : self.latent_dim], h[:, self.latent_dim :]
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean ``mu`` ``(B, latent_dim)``, in any mode."""
        return self.posterior(x)[0]

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> VAEOutput:  # type: ignore[override]
        mu, logvar = self.posterior(x)
        z = reparameterize(mu, logvar, generator)  # z = mu + exp(logvar / 2) * eps
        return VAEOutput(output=self.decode(z), mu=mu, logvar=logvar, z=z)

    def mean_encoder_kwargs(self) -> dict:
        """``Regressor`` kwargs of the mean encoder: the same network with ``latent_dim`` outputs."""
        return {**self.encoder_kwargs, "out_shape": [self.latent_dim]}

    def mean_encoder_state(self) -> dict[str, Tensor]:
        """State dict of the mean encoder: the encoder's, with only the ``mu`` rows of the last layer."""
        state = {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}
        for name in ("final.1.weight", "final.1.bias"):
            state[name] = state[name][: self.latent_dim].clone()
        return state

    def mean_encoder(self) -> Regressor:
        """A standalone ``Regressor`` computing ``mu``."""
        net = Regressor(**self.mean_encoder_kwargs())
        net.load_state_dict(self.mean_encoder_state(), strict=True)
        return net
