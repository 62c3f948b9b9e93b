"""CycleGAN: CT <-> MR translation learned from unpaired scans.

Zhu, Park, Isola, Efros 2017, "Unpaired Image-to-Image Translation using
Cycle-Consistent Adversarial Networks" (https://arxiv.org/abs/1703.10593).
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.losses.gan import CycleConsistencyLoss, GANMode, IdentityLoss, set_requires_grad
from udl_med.losses.image_pool import ImagePool
from udl_med.methods.adversarial import AdversarialConfig, Adversary, discriminator_network, replay
from udl_med.methods.base import Capability, DataSpec, Method, Optimization, register
from udl_med.nets.patch_discriminator import PatchGANDiscriminator, check_patch_input
from udl_med.nets.resnet_generator import ResNetGenerator

DIRECTIONS = ("ct2mr", "mr2ct")


def check_direction(direction: str, available: tuple[str, ...] = DIRECTIONS) -> str:
    """Return ``direction`` if the model can translate that way; ``ValueError`` lists the valid ones."""
    if direction not in available:
        raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(available)}")
    return direction


class PatchGANConfig(AdversarialConfig):
    """What every PatchGAN translation method shares: discriminator, Adam, and the adversarial keys (``gp_weight``, ``label_smoothing``, ``d_augment``, R1, spectral norm)."""

    # a translator is conditional: an augmented item (pix2pix's pair under one draw, a CycleGAN domain's scan) is still a right input for its output
    data_augment_allowed: ClassVar[str | None] = "a translator maps each input to its own output; paired items share one draw"

    disc_channels: int = Field(64, ge=1, description="discriminator first-layer filters (ndf)")
    disc_layers: int = Field(3, ge=1, description="PatchGAN strided layers (3: 70x70 patches)")
    norm: str = "instance"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lr: float = Field(2e-4, gt=0.0)
    beta1: float = Field(0.5, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)


class CycleGANConfig(PatchGANConfig):
    """``model:`` section of a CycleGAN run. Defaults follow the paper and its code."""

    channels: int = Field(64, ge=1, description="generator stem filters (ngf)")
    num_downsample: int = Field(2, ge=0)
    num_res_blocks: int = Field(9, ge=0)
    padding_mode: Literal["reflect", "replicate", "zeros"] = "reflect"
    gan_mode: GANMode = GANMode.LSGAN
    lambda_cycle: float = Field(10.0, ge=0.0, description="lambda_cyc, weight of the cycle loss")
    lambda_identity: float = Field(0.5, ge=0.0, description="identity weight as a fraction of lambda_cycle")
    pool_size: int = Field(50, ge=0, description="history of generated images shown to the discriminators")


@register("cyclegan")
class CycleGAN(Method):
    """Two generators and two PatchGAN discriminators trained with adversarial, cycle and identity losses.

    Code names and the paper's symbols (X = CT, Y = MR)::

        g_ct2mr  G: X -> Y            d_mr  D_Y (real MR vs G(x))
        g_mr2ct  F: Y -> X            d_ct  D_X (real CT vs F(y))
        lambda_cycle     lambda (eq. 3), 10
        lambda_identity  identity weight / lambda (section 5.2), 0.5

    Generator objective (eq. 3 plus identity)::

        L_GAN(G, D_Y) + L_GAN(F, D_X)
          + lambda * (|F(G(x)) - x|_1 + |G(F(y)) - y|_1)
          + lambda * lambda_identity * (|G(y) - y|_1 + |F(x) - x|_1)

    with least-squares GAN losses by default (section 4); the discriminators see fakes
    drawn from a history of 50 (:class:`~udl_med.losses.image_pool.ImagePool`).
    Optimizers ``g`` (G and F) and ``d`` (D_X and D_Y): Adam(2e-4, betas (0.5, 0.999));
    the constant-then-linear-decay schedule is the engine's ``train.lr_schedule:
    linear_decay`` with ``decay_start: 0.5``.

    Batches carry ``keys.CT`` and ``keys.MR``, each ``(B, C, *spatial)`` in [-1, 1],
    from disjoint subjects (``data.pairing: unpaired``).
    """

    Config = CycleGANConfig
    batch_keys = (keys.CT, keys.MR)
    capabilities = frozenset({Capability.TRANSLATE})
    ema_modules = ("g_ct2mr", "g_mr2ct")
    inference_modules = ("g_ct2mr", "g_mr2ct")  # model files drop the discriminators and image pools
    directions: tuple[str, ...] = DIRECTIONS

    def __init__(self, config: CycleGANConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        try:
            check_patch_input(data.image_size, config.disc_layers)
        except ValueError as err:
            raise ConfigError("<config>", "model.disc_layers", f"does not fit data.size: {err}") from None
        c, dims = data.in_channels, data.spatial_dims
        self.generator_kwargs: dict[str, Any] = dict(
            spatial_dims=dims,
            in_channels=c,
            out_channels=c,
            channels=config.channels,
            num_downsample=config.num_downsample,
            num_res_blocks=config.num_res_blocks,
            norm=config.norm,
            padding_mode=config.padding_mode,
            dropout=config.dropout,
        )

        def generator() -> ResNetGenerator:
            return ResNetGenerator(**self.generator_kwargs)

        def discriminator() -> PatchGANDiscriminator:
            return discriminator_network(
                PatchGANDiscriminator(dims, c, channels=config.disc_channels, num_layers=config.disc_layers, norm=config.norm), config
            )

        self.g_ct2mr, self.g_mr2ct = generator(), generator()
        self.d_mr, self.d_ct = discriminator(), discriminator()
        self.pool_ct = ImagePool(config.pool_size)  # draws from the engine-seeded global RNG
        self.pool_mr = ImagePool(config.pool_size)
        self.adversary = Adversary.from_config(config)
        self.cycle_loss = CycleConsistencyLoss()
        self.identity_loss = IdentityLoss()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        return {
            "g": torch.optim.Adam(
                itertools.chain(self.g_ct2mr.parameters(), self.g_mr2ct.parameters()), lr=self.config.lr, betas=betas
            ),
            "d": torch.optim.Adam(
                itertools.chain(self.d_ct.parameters(), self.d_mr.parameters()), lr=self.config.lr, betas=betas
            ),
        }

    @staticmethod
    def _critic(disc: PatchGANDiscriminator):
        """``(x, labels) -> disc(x)``: an unconditional D as the adversary calls it."""
        return lambda x, labels=None: disc(x)

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor]:
        cfg = self.config
        real_ct, real_mr = batch[keys.CT], batch[keys.MR]  # x, y: (B, C, *spatial)

        # forward: both cycles
        with opt.autocast():
            fake_mr = self.g_ct2mr(real_ct)  # G(x)
            rec_ct = self.g_mr2ct(fake_mr)  # F(G(x))
            fake_ct = self.g_mr2ct(real_mr)  # F(y)
            rec_mr = self.g_ct2mr(fake_ct)  # G(F(y))

        # generators: D_X and D_Y frozen
        set_requires_grad([self.d_ct, self.d_mr], False)
        with opt.autocast():
            loss_gan = self.adversary.generator_loss(self._critic(self.d_mr), fake_mr) + self.adversary.generator_loss(self._critic(self.d_ct), fake_ct)
            loss_cycle = cfg.lambda_cycle * (self.cycle_loss(rec_ct, real_ct) + self.cycle_loss(rec_mr, real_mr))
            loss_identity = real_ct.new_zeros(())
            if cfg.lambda_identity > 0:
                loss_identity = (
                    cfg.lambda_cycle
                    * cfg.lambda_identity
                    * (self.identity_loss(self.g_ct2mr(real_mr), real_mr) + self.identity_loss(self.g_mr2ct(real_ct), real_ct))
                )
            loss_g = loss_gan + loss_cycle + loss_identity
        opt.step("g", loss_g)
        set_requires_grad([self.d_ct, self.d_mr], True)

        # discriminators: real vs pooled, detached fakes
        with opt.autocast():
            # one helper for D_Y and D_X: real vs pooled, detached fakes
            step = getattr(opt, "global_step", None)
            loss_d_mr = self.adversary.discriminator_loss(self._critic(self.d_mr), real_mr, replay(self.pool_mr, fake_mr.detach())[0], step=step).loss
            loss_d_ct = self.adversary.discriminator_loss(self._critic(self.d_ct), real_ct, replay(self.pool_ct, fake_ct.detach())[0], step=step).loss
            loss_d = loss_d_mr + loss_d_ct
        opt.step("d", loss_d)

        return {
            keys.LOSS_G: loss_g.detach(),
            keys.LOSS_G_GAN: loss_gan.detach(),
            keys.LOSS_CYCLE: loss_cycle.detach(),
            keys.LOSS_IDENTITY: loss_identity.detach(),
            keys.LOSS_D: loss_d.detach(),
            f"{keys.LOSS_D}_ct": loss_d_ct.detach(),
            f"{keys.LOSS_D}_mr": loss_d_mr.detach(),
            **self.adversary.logs(),
        }

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, float]:
        """Cycle and identity L1 (normalised units) on held-out CT and MR."""
        real_ct, real_mr = batch[keys.CT], batch[keys.MR]
        fake_mr, fake_ct = self.g_ct2mr(real_ct), self.g_mr2ct(real_mr)
        return {
            f"{keys.CYCLE_L1}_ct": self.cycle_loss(self.g_mr2ct(fake_mr), real_ct).item(),
            f"{keys.CYCLE_L1}_mr": self.cycle_loss(self.g_ct2mr(fake_ct), real_mr).item(),
            f"{keys.IDENTITY_L1}_ct": self.identity_loss(self.g_mr2ct(real_ct), real_ct).item(),
            f"{keys.IDENTITY_L1}_mr": self.identity_loss(self.g_ct2mr(real_mr), real_mr).item(),
        }

    @torch.no_grad()
    def preview(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Side by side along the first spatial axis: input, translation, cycle reconstruction."""
        real_ct, real_mr = batch[keys.CT], batch[keys.MR]
        fake_mr, fake_ct = self.g_ct2mr(real_ct), self.g_mr2ct(real_mr)
        return {
            "ct2mr": torch.cat([real_ct, fake_mr, self.g_mr2ct(fake_mr)], dim=2).clamp(-1, 1),
            "mr2ct": torch.cat([real_mr, fake_ct, self.g_ct2mr(fake_ct)], dim=2).clamp(-1, 1),
        }

    def translate(self, x: Tensor, direction: str) -> Tensor:
        """Translate normalised images ``(B, C, *spatial)``: ``ct2mr`` with G, ``mr2ct`` with F."""
        check_direction(direction, self.directions)
        return self.generator(direction)(x)

    def generator(self, direction: str) -> torch.nn.Module:
        """The generator network for ``direction`` (what export writes)."""
        check_direction(direction, self.directions)
        return self.g_ct2mr if direction == "ct2mr" else self.g_mr2ct

    def generator_spec(self, direction: str) -> tuple[str, dict[str, Any]]:
        """``(class path, constructor kwargs)`` that rebuild :meth:`generator` (for export)."""
        check_direction(direction, self.directions)
        return f"{ResNetGenerator.__module__}.{ResNetGenerator.__qualname__}", dict(self.generator_kwargs)
