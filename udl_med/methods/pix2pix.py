"""pix2pix: CT <-> MR translation learned from paired scans.

Isola, Zhu, Zhou, Efros 2017, "Image-to-Image Translation with Conditional Adversarial
Networks" (https://arxiv.org/abs/1611.07004). With paired data it is the upper bound
CycleGAN is judged against.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.losses.gan import GANMode, set_requires_grad
from udl_med.methods.adversarial import Adversary, discriminator_network
from udl_med.methods.base import Capability, DataSpec, Method, Optimization, register
from udl_med.methods.cyclegan import DIRECTIONS, PatchGANConfig, check_direction
from udl_med.nets.patch_discriminator import PatchGANDiscriminator, check_patch_input
from udl_med.nets.resnet_generator import UNetGenerator

# direction -> (source key, target key)
_PAIRS = {"ct2mr": (keys.CT, keys.MR), "mr2ct": (keys.MR, keys.CT)}


class Pix2PixConfig(PatchGANConfig):
    """``model:`` section of a pix2pix run. Defaults follow the paper."""

    direction: Literal["both", "ct2mr", "mr2ct"] = Field(
        "both", description="train one generator per direction ('both') or a single one"
    )
    channels: tuple[int, ...] = Field((64, 128, 256, 512), min_length=2, description="U-Net filters per level")
    strides: tuple[int, ...] = Field((2, 2, 2), description="U-Net downsampling per level")
    num_res_units: int = Field(0, ge=0)
    gan_mode: GANMode = GANMode.VANILLA
    lambda_l1: float = Field(100.0, ge=0.0, description="lambda, weight of the L1 loss (eq. 4)")


@register("pix2pix")
class Pix2Pix(Method):
    """A U-Net generator and a conditional PatchGAN per direction, trained on paired CT/MR.

    Code names and the paper's symbols, for direction ``d`` with source x and target y::

        generators[d]      G: x -> y (U-Net, section 3.2.1)
        discriminators[d]  D(x, y): conditional PatchGAN on cat(x, y) (section 3.2.2)
        lambda_l1          lambda in eq. 4, 100

    ``G* = arg min_G max_D L_cGAN(G, D) + lambda * L_L1(G)`` (eq. 4), with the
    non-saturating GAN loss by default. Optimizers ``d`` then ``g`` each step, as in the
    authors' code; Adam(2e-4, betas (0.5, 0.999)).

    Batches carry ``keys.CT`` and ``keys.MR`` of the same subject and position
    (``data.pairing: paired``), each ``(B, C, *spatial)`` in [-1, 1].
    """

    Config = Pix2PixConfig
    batch_keys = (keys.CT, keys.MR)
    capabilities = frozenset({Capability.TRANSLATE})
    ema_modules = ("generators",)
    inference_modules = ("generators",)  # model files drop the discriminator

    def __init__(self, config: Pix2PixConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        if len(config.strides) != len(config.channels) - 1:
            raise ConfigError(
                "<config>", "model.strides", f"needs len(model.channels) - 1 = {len(config.channels) - 1} entries, got {len(config.strides)}"
            )
        try:
            check_patch_input(data.image_size, config.disc_layers)
        except ValueError as err:
            raise ConfigError("<config>", "model.disc_layers", f"does not fit data.size: {err}") from None
        c, dims = data.in_channels, data.spatial_dims
        self.directions: tuple[str, ...] = DIRECTIONS if config.direction == "both" else (config.direction,)
        self.generator_kwargs: dict[str, Any] = dict(
            spatial_dims=dims,
            in_channels=c,
            out_channels=c,
            channels=list(config.channels),
            strides=list(config.strides),
            num_res_units=config.num_res_units,
            norm=config.norm,
            dropout=config.dropout,
        )
        self.generators = nn.ModuleDict({d: UNetGenerator(**self.generator_kwargs) for d in self.directions})
        self.discriminators = nn.ModuleDict(
            {
                d: discriminator_network(
                    PatchGANDiscriminator(dims, 2 * c, channels=config.disc_channels, num_layers=config.disc_layers, norm=config.norm), config
                )
                for d in self.directions
            }
        )
        self.adversary = Adversary.from_config(config)
        self.l1_loss = nn.L1Loss()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        return {
            "g": torch.optim.Adam(self.generators.parameters(), lr=self.config.lr, betas=betas),
            "d": torch.optim.Adam(self.discriminators.parameters(), lr=self.config.lr, betas=betas),
        }

    def _critic(self, direction: str):
        """``(y, labels, x) -> D(x, y)``: the conditional PatchGAN of ``direction`` on a pair (the adversary passes the source ``x``, augmented with ``y``)."""
        disc = self.discriminators[direction]
        return lambda y, labels, source: disc(torch.cat([source, y], 1))

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor]:
        pairs = {d: (batch[_PAIRS[d][0]], batch[_PAIRS[d][1]]) for d in self.directions}  # x, y: (B, C, *spatial)

        # forward: G(x) per direction
        with opt.autocast():
            fakes = {d: self.generators[d](x) for d, (x, _) in pairs.items()}

        # discriminators: D(x, y) real vs D(x, G(x)) fake, detached
        with opt.autocast():
            losses_d = {
                d: self.adversary.discriminator_loss(self._critic(d), y, fakes[d].detach(), condition=x, step=getattr(opt, "global_step", None)).loss
                for d, (x, y) in pairs.items()
            }
            loss_d = sum(losses_d.values())
        opt.step("d", loss_d)

        # generators: D frozen; fool D and stay close to y in L1
        set_requires_grad(list(self.discriminators.values()), False)
        with opt.autocast():
            losses_gan = {
                d: self.adversary.generator_loss(self._critic(d), fakes[d], condition=x) for d, (x, _) in pairs.items()
            }
            losses_l1 = {d: self.l1_loss(fakes[d].float(), y.float()) for d, (_, y) in pairs.items()}
            loss_g = sum(losses_gan.values()) + self.config.lambda_l1 * sum(losses_l1.values())
        opt.step("g", loss_g)
        set_requires_grad(list(self.discriminators.values()), True)

        out = {keys.LOSS_G: loss_g.detach(), keys.LOSS_D: loss_d.detach()}
        for d in self.directions:
            out[f"{keys.LOSS_L1}_{d}"] = losses_l1[d].detach()
            out[f"{keys.LOSS_G_GAN}_{d}"] = losses_gan[d].detach()
            out[f"{keys.LOSS_D}_{d}"] = losses_d[d].detach()
        return {**out, **self.adversary.logs()}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, float]:
        """L1 (normalised units) of each translation against its paired target."""
        out = {}
        for d in self.directions:
            x, y = batch[_PAIRS[d][0]], batch[_PAIRS[d][1]]
            out[f"{keys.L1}_{d}"] = self.l1_loss(self.generators[d](x), y).item()
        return out

    @torch.no_grad()
    def preview(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Side by side along the first spatial axis: input, translation, ground truth."""
        out = {}
        for d in self.directions:
            x, y = batch[_PAIRS[d][0]], batch[_PAIRS[d][1]]
            out[d] = torch.cat([x, self.generators[d](x), y], dim=2).clamp(-1, 1)
        return out

    def translate(self, x: Tensor, direction: str) -> Tensor:
        """Translate normalised images ``(B, C, *spatial)`` with the generator of ``direction``."""
        return self.generator(direction)(x)

    def generator(self, direction: str) -> nn.Module:
        """The generator network for ``direction`` (what export writes)."""
        check_direction(direction, self.directions)
        return self.generators[direction]

    def generator_spec(self, direction: str) -> tuple[str, dict[str, Any]]:
        """``(class path, constructor kwargs)`` that rebuild :meth:`generator` (for export)."""
        check_direction(direction, self.directions)
        return f"{UNetGenerator.__module__}.{UNetGenerator.__qualname__}", dict(self.generator_kwargs)
