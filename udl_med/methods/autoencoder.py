"""Undercomplete autoencoder, convolutional or linear, with an L2, L1 or BCE reconstruction loss.

An encoder ``f`` maps an image ``x`` to a code ``h = f(x)`` of ``latent_dim`` values, much
smaller than the image, and a decoder ``g`` reconstructs ``x^ = g(h)``; training minimises
``L(x, g(f(x)))`` (Goodfellow, Bengio & Courville, *Deep Learning*, ch. 14.1). The
bottleneck forces the code to keep the directions of largest variation: a linear
autoencoder with an L2 loss spans the same subspace as the top ``latent_dim`` principal
components (Baldi & Hornik, Neural Networks 2, 1989). The encoder is a MONAI
``Regressor``, exported as-is by ``udl-med export --format encoder``.

This module also holds :class:`ReconstructionMethod`, the shared base of the autoencoder
family (sparse, denoising, stacked, variational): evaluation against the mean-image
baseline, previews, encoding and encoder export.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.losses.reconstruction import ReconstructionLoss
from udl_med.methods.base import Capability, DataSpec, Method, MethodConfig, Optimization, register
from udl_med.nets.autoencoder import REGRESSOR_CLASS, Autoencoder, check_geometry

ActNorm = str | tuple[str, dict[str, Any]]


class AutoencoderConfig(MethodConfig):
    """The ``model:`` section of an autoencoder run.

    Attributes:
        architecture: ``conv`` (strided blocks, then a linear code) or ``linear`` (one
            linear encoder and decoder; ``channels`` and ``strides`` are then unused).
        latent_dim: size of the code.
        channels, strides: output channels and stride of each encoder block.
        kernel_size, num_res_units, act, norm, dropout: as in MONAI's ``Regressor``.
        loss: reconstruction loss, ``l2``, ``l1`` or ``bce``.
        lr, betas, weight_decay: Adam(W) hyperparameters.
    """

    architecture: Literal["conv", "linear"] = "conv"
    latent_dim: int = Field(32, ge=1)
    channels: tuple[int, ...] = (16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2)
    kernel_size: int = Field(3, ge=1)
    num_res_units: int = Field(1, ge=0)
    act: ActNorm = "PRELU"
    norm: ActNorm | None = "INSTANCE"
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    loss: Literal["l2", "l1", "bce"] = "l2"
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> AutoencoderConfig:
        if self.architecture == "conv" and not self.channels:
            raise ValueError("channels must not be empty for architecture 'conv' (use architecture: linear)")
        if len(self.channels) != len(self.strides):
            raise ValueError(f"channels {list(self.channels)} and strides {list(self.strides)} differ in length")
        return self


def mse_per_batch(a: Tensor, b: Tensor) -> float:
    return float(torch.mean((a.float() - b.float()) ** 2))


class ReconstructionMethod(Method):
    """Shared base of the autoencoder family: one ``Autoencoder`` network ``net``, one Adam optimizer.

    Subclasses override :meth:`reconstruct_output` (decoder output for an input batch),
    :meth:`train_step`, and optionally :meth:`encode` and :meth:`export_encoder`.
    """

    Config: ClassVar[type[MethodConfig]] = AutoencoderConfig
    batch_keys = (keys.IMAGE,)
    capabilities = frozenset({Capability.ENCODE})
    optimizer_name: ClassVar[str] = "autoencoder"
    network_class: ClassVar[type[Autoencoder]] = Autoencoder

    def __init__(self, config: AutoencoderConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        conv = config.architecture == "conv"
        channels, strides = (config.channels, config.strides) if conv else ((), ())
        try:
            check_geometry(data.spatial_dims, data.image_size, channels, strides)
        except ValueError as err:
            raise ConfigError("<config>", "model.strides", f"do not fit data.size: {err}") from None
        self.net = self.network_class(
            data.spatial_dims,
            data.in_channels,
            data.image_size,
            config.latent_dim,
            channels=channels,
            strides=strides,
            kernel_size=config.kernel_size,
            num_res_units=config.num_res_units,
            act=config.act,
            norm=config.norm,
            dropout=config.dropout,
        )
        self.recon_loss = ReconstructionLoss(config.loss)

    # --- training -------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        return {self.optimizer_name: torch.optim.AdamW(self.net.parameters(), lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)}

    def images(self, batch: dict[str, Any]) -> Tensor:
        """The batch's images ``(B, C, *spatial)`` on this method's device."""
        return batch[keys.IMAGE].to(next(self.parameters()).device, torch.float32)

    def reconstruct_output(self, x: Tensor) -> Tensor:
        """Decoder output (before the loss's link function) for input ``x``."""
        return self.net(x)

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor | float]:
        x = self.images(batch)  # (B, C, *spatial) in [-1, 1]
        with opt.autocast():
            output = self.reconstruct_output(x)
        loss = self.recon_loss(output, x)  # L(x, g(f(x)))
        opt.step(self.optimizer_name, loss)
        return {keys.LOSS: loss.detach()}

    # --- evaluation and previews ----------------------------------------------------

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstruction of ``x`` on the [-1, 1] scale."""
        return self.recon_loss.to_image(self.reconstruct_output(x)).clamp(-1, 1)

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, float]:
        """Held-out reconstruction error and the error of predicting the batch's mean image.

        The baseline uses the held-out batch's own per-voxel mean, a stronger baseline
        than the training mean: an autoencoder that beats it has learned per-image content.
        """
        x = self.images(batch)
        output = self.reconstruct_output(x)
        mean_image = x.mean(dim=0, keepdim=True).expand_as(x)
        return {
            keys.RECON: float(self.recon_loss(output, x)),
            keys.RECON_MSE: mse_per_batch(self.recon_loss.to_image(output).clamp(-1, 1), x),
            keys.MEAN_IMAGE_MSE: mse_per_batch(mean_image, x),
        }

    @torch.no_grad()
    def preview(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = self.images(batch)
        return {"input": x.clamp(-1, 1), "reconstruction": self.reconstruct(x)}

    # --- use of the trained model ---------------------------------------------------

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images ``(B, C, *spatial)`` in [-1, 1] -> codes ``(B, latent_dim)``: the exported encoder's output."""
        return self.net.encode(x.to(next(self.parameters()).device, torch.float32))

    def export_encoder(self) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
        """The encoder is a ``monai.networks.nets.Regressor`` whose output is the code."""
        state = {k: v.detach().cpu().clone() for k, v in self.net.encoder.state_dict().items()}
        return REGRESSOR_CLASS, dict(self.net.encoder_kwargs), state


@register("autoencoder")
class AutoencoderMethod(ReconstructionMethod):
    """Undercomplete autoencoder: minimise ``L(x, g(f(x)))`` with L = L2, L1 or BCE (see the module docstring)."""

    Config = AutoencoderConfig
