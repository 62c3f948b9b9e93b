"""Denoising autoencoder, and sampling from it by a corruption/reconstruction Markov chain.

Training corrupts each image, ``x~ ~ C(x~ | x)``, and reconstructs the clean image:
minimise ``L(x, g(f(x~)))`` (Vincent et al., ICML 2008, with masking noise; Vincent et
al., JMLR 2010, with additive Gaussian noise). Bengio et al., "Generalized denoising
auto-encoders as generative models" (NIPS 2013) show that the Markov chain that alternates
corruption and reconstruction,

    x~_t ~ C(x~ | x_t),    x_{t+1} = r(x~_t) = g(f(x~_t)),

samples (approximately) from the data distribution; :meth:`chain` runs it from noise and
:meth:`sample` returns its last state. Here ``r`` is the mean of ``P(x | x~)`` rather than
a draw from it, clamped to [-1, 1]. Code names: ``C`` = :class:`Corruption`, ``r`` =
:meth:`reconstruct`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from udl_med import keys
from udl_med.losses.corruption import Corruption
from udl_med.methods.autoencoder import AutoencoderConfig, ReconstructionMethod, mse_per_batch
from udl_med.methods.base import Capability, DataSpec, Optimization, register


class DenoisingAutoencoderConfig(AutoencoderConfig):
    """An :class:`AutoencoderConfig` plus the corruption process and the sampling chain.

    Attributes:
        corruption: ``gaussian`` (additive noise of std ``noise_level``) or ``masking``
            (each voxel set to ``mask_fill`` with probability ``noise_level``).
        noise_level: Gaussian standard deviation on the [-1, 1] scale, or masking probability.
        mask_fill: value of masked voxels (-1 is background/air).
        chain_steps: Markov-chain steps per sample.
        chain_frames: states of the chain kept for the PNG strip (evenly spaced).
    """

    corruption: Literal["gaussian", "masking"] = "gaussian"
    noise_level: float = Field(0.3, ge=0.0)
    mask_fill: float = Field(-1.0, ge=-1.0, le=1.0)
    chain_steps: int = Field(30, ge=1)
    chain_frames: int = Field(8, ge=2)

    @model_validator(mode="after")
    def _check_level(self) -> DenoisingAutoencoderConfig:
        if self.corruption == "masking" and self.noise_level >= 1.0:
            raise ValueError(f"noise_level is a masking probability and must be below 1, got {self.noise_level}")
        return self


@register("denoising_autoencoder")
class DenoisingAutoencoderMethod(ReconstructionMethod):
    """Denoising autoencoder (see the module docstring)."""

    Config = DenoisingAutoencoderConfig
    capabilities = frozenset({Capability.ENCODE, Capability.SAMPLE})

    def __init__(self, config: DenoisingAutoencoderConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        self.corrupt = Corruption(config.corruption, config.noise_level, fill=config.mask_fill)

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor | float]:
        x = self.images(batch)  # (B, C, *spatial) clean
        x_tilde = self.corrupt(x)  # x~ ~ C(x~ | x)
        with opt.autocast():
            output = self.net(x_tilde)
        loss = self.recon_loss(output, x)  # L(x, g(f(x~)))
        opt.step(self.optimizer_name, loss)
        return {keys.LOSS: loss.detach()}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, float]:
        """Clean reconstruction metrics, plus the error before and after denoising a corrupted copy."""
        metrics = super().evaluate(batch)
        x = self.images(batch)
        generator = torch.Generator(x.device).manual_seed(0)  # the same corruption at every evaluation
        x_tilde = self.corrupt(x, generator)
        metrics[keys.CORRUPTED_MSE] = mse_per_batch(x_tilde.clamp(-1, 1), x)
        metrics[keys.DENOISED_MSE] = mse_per_batch(self.reconstruct(x_tilde), x)
        return metrics

    @torch.no_grad()
    def chain(self, x0: Tensor, steps: int, generator: torch.Generator | None = None, frames: int | None = None) -> list[Tensor]:
        """Run the corruption/reconstruction chain from ``x0``; return evenly spaced states, ``x0`` first.

        Args:
            x0: starting images ``(B, C, *spatial)`` on the [-1, 1] scale.
            steps: number of (corrupt, reconstruct) steps.
            generator: randomness of the corruption (on ``x0``'s device).
            frames: number of states to keep (default: all ``steps + 1``).
        """
        keep = frames or steps + 1
        wanted = {round(i * steps / (keep - 1)) for i in range(keep)} if keep > 1 else {steps}
        x = x0
        states = [x0] if 0 in wanted else []
        for t in range(1, steps + 1):
            x = self.reconstruct(self.corrupt(x, generator))  # x_t = r(C(x_{t-1}))
            if t in wanted:
                states.append(x)
        return states

    def initial_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Starting states of the chain: uniform noise on [-1, 1], ``(n, C, *spatial)``, on the CPU."""
        return torch.rand((n, self.data.in_channels, *self.data.image_size), generator=generator) * 2 - 1

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, label: int | None = None) -> Tensor:
        """``n`` images ``(n, C, *spatial)`` in [-1, 1]: the last state of the chain started from noise."""
        if label is not None:
            raise ValueError(f"method {self.name!r} is unconditional: it cannot sample a given label")
        device = next(self.parameters()).device
        x0 = self.initial_noise(n, generator).to(device)
        chain_generator = None
        if generator is not None:
            chain_generator = torch.Generator(device).manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
        return self.chain(x0, self.config.chain_steps, chain_generator, frames=2)[-1]

    @torch.no_grad()
    def chain_strip(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` chains from noise as one image batch, chain after chain, ``chain_frames`` states each.

        Shaped ``(n * chain_frames, C, *spatial)``: saved with ``nrow=chain_frames`` it is one
        row per chain, noise on the left.
        """
        device = next(self.parameters()).device
        x0 = self.initial_noise(n, generator).to(device)
        states = self.chain(x0, self.config.chain_steps, frames=self.config.chain_frames)
        return torch.stack(states, dim=1).flatten(0, 1)  # (n, frames, C, ...) -> (n * frames, C, ...)

    @torch.no_grad()
    def preview(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = self.images(batch)
        x_tilde = self.corrupt(x)
        return {
            "input": x.clamp(-1, 1),
            "corrupted": x_tilde.clamp(-1, 1),
            "denoised": self.reconstruct(x_tilde),
            "chain": self.chain_strip(min(4, x.shape[0])),
        }
