"""Two-stage conditional GAN (StackGAN-like): a low-resolution stage I, a 4x stage II on top.

Zhang et al. 2017, "StackGAN: Text to Photo-realistic Image Synthesis with Stacked
Generative Adversarial Networks" (https://arxiv.org/abs/1612.03242), with the class label
(and optionally the modality) as the condition ``c``:

- stage I: ``s1 = G1(z, c)`` at ``data.size / 4`` (a DCGAN generator,
  :class:`udl_med.nets.dcgan.DCGANGenerator`), judged by ``D1(x_low, c)`` on real images
  average-pooled 4x (:func:`udl_med.nets.pyramid.downsample` twice);
- stage II: ``G2(s1, c)`` -> full size with residual blocks
  (:class:`udl_med.nets.stackgan.StageIIGenerator`), judged by ``D2(x, c)``. Stage II
  trains with stage I FROZEN (no gradient, eval mode, optimizer untouched): stage I is
  trained first in the same run (``model.stage1_steps``: steps ``< stage1_steps`` train
  stage I, the rest stage II) or loaded from a stage-I run (``model.stage1_model``, a
  model folder of a ``two_stage_gan`` run, copied in by the engine before the first step
  like any ``train.init_from``: :meth:`TwoStageGAN.init_from`).
- conditioning augmentation (``model.conditioning_augmentation``): each stage's
  generator gets ``c_hat ~ N(mu(c), sigma(c))`` from its own
  :class:`~udl_med.nets.stackgan.ConditioningAugmentation` and adds
  ``kl_weight * KL(N(mu, sigma) || N(0, I))`` to its loss; without it the generators get
  the one-hot condition. The discriminators always get one-hot condition planes.

Code names: ``g1, d1, ca1`` (stage I), ``g2, d2, ca2`` (stage II); optimizers ``g1, d1,
g2, d2``; log keys ``loss_g1, loss_d1, kl1`` or ``loss_g2, loss_d2, kl2``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.losses.gan import GANMode, set_requires_grad
from udl_med.methods.adversarial import AdversarialConfig, Adversary, discriminator_network
from udl_med.methods.base import Capability, DataSpec, InitFrom, Method, Optimization, register
from udl_med.methods.lapgan import PREVIEW_PER_CLASS, class_labels, dcgan_kwargs
from udl_med.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from udl_med.nets.pyramid import downsample, upsample
from udl_med.nets.stackgan import ConditioningAugmentation, StageIIGenerator, kl_to_standard_normal

STAGE_FACTOR = 4  # stage II is 4x stage I


class TwoStageGANConfig(AdversarialConfig):
    """``model:`` section of a two-stage GAN run.

    Attributes:
        latent_dim: noise ``z`` of stage I.
        stage1_channels, stage1_norm: DCGAN channels / norm of G1 and D1 (None: the nets' defaults).
        stage2_channels, stage2_blocks, stage2_norm: width, residual units and norm of G2.
        disc2_channels: DCGAN channels of D2 (None: the nets' defaults).
        conditioning_augmentation, embed_dim, kl_weight: c_hat ~ N(mu(c), sigma(c)) with its KL weight.
        condition_modality: the condition is (label, modality) rather than the label alone.
        sample_modality: the modality :meth:`sample` draws when ``condition_modality``.
        stage1_steps: training steps of stage I before stage II starts (0 with ``stage1_model``).
        stage1_model: a ``two_stage_gan`` model folder whose stage I is loaded and frozen.
        gan_mode, lr, beta1, beta2: adversarial objective and Adam of both stages (``gp_weight`` and
            ``label_smoothing`` come from :class:`~udl_med.methods.adversarial.AdversarialConfig`).
    """

    latent_dim: int = Field(64, ge=1)
    stage1_channels: tuple[int, ...] | None = None
    stage1_norm: str = "batch"
    stage2_channels: int = Field(64, ge=4)
    stage2_blocks: int = Field(2, ge=0)
    stage2_norm: str = "batch"
    disc2_channels: tuple[int, ...] | None = None
    conditioning_augmentation: bool = True
    embed_dim: int = Field(16, ge=1)
    kl_weight: float = Field(1.0, ge=0.0)
    condition_modality: bool = False
    sample_modality: str = "CT"
    stage1_steps: int = Field(0, ge=0)
    stage1_model: str | None = None
    gan_mode: GANMode = GANMode.VANILLA
    lr: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)


@register("two_stage_gan")
class TwoStageGAN(Method):
    """Stage I at 1/4 size, stage II at full size, stage I frozen while stage II trains."""

    Config = TwoStageGANConfig
    batch_keys = (keys.IMAGE, keys.LABEL)
    capabilities = frozenset({Capability.SAMPLE})
    ema_modules = ("g1", "ca1", "g2", "ca2")  # train.ema_decay: samples from G's averaged weights
    inference_modules = ("g1", "ca1", "g2", "ca2")
    stage1_modules = ("g1", "ca1", "d1")

    def __init__(self, config: TwoStageGANConfig, data: DataSpec) -> None:
        super().__init__(config, data)

        if data.spatial_dims not in (2, 3):
            raise ConfigError("<config>", "data.layout", f"needs 2D or 3D images, got spatial_dims {data.spatial_dims}")
        if any(s % STAGE_FACTOR for s in data.image_size):
            raise ConfigError("<config>", "data.size", f"must divide by {STAGE_FACTOR} (stage I is 1/{STAGE_FACTOR}), got {list(data.image_size)}")
        if data.num_classes < 1:
            raise ConfigError("<config>", "data.labeled", "the two-stage GAN is conditional: set data.labeled: true")
        if config.stage1_model is not None and config.stage1_steps:
            raise ConfigError("<config>", "model.stage1_steps", "must be 0 when model.stage1_model gives a trained stage I")
        if config.stage1_model is None and config.stage1_steps == 0:
            raise ConfigError("<config>", "model.stage1_steps", "stage I needs training: set stage1_steps > 0 or model.stage1_model")
        if config.condition_modality and config.sample_modality not in keys.MODALITIES:
            raise ConfigError("<config>", "model.sample_modality", f"must be one of {', '.join(keys.MODALITIES)}")
        dims, c = data.spatial_dims, data.in_channels
        self.num_classes = data.num_classes
        self.num_conditions = data.num_classes * (len(keys.MODALITIES) if config.condition_modality else 1)
        self.low_size = tuple(s // STAGE_FACTOR for s in data.image_size)
        ca = config.conditioning_augmentation
        cond_dim = config.embed_dim if ca else self.num_conditions
        s1 = dcgan_kwargs(config.stage1_channels, config.stage1_norm)
        try:
            self.g1 = DCGANGenerator(dims, config.latent_dim + (cond_dim if ca else 0), c, self.low_size, num_classes=0 if ca else self.num_conditions, **s1)
            self.d1 = discriminator_network(DCGANDiscriminator(dims, c, self.low_size, num_classes=self.num_conditions, **s1), config)
        except ValueError as err:
            raise ConfigError("<config>", "model.stage1_channels", f"stage I at {self.low_size}: {err}") from None
        try:
            self.d2 = discriminator_network(DCGANDiscriminator(dims, c, tuple(data.image_size), num_classes=self.num_conditions, **dcgan_kwargs(config.disc2_channels, config.stage2_norm)), config)
        except ValueError as err:
            raise ConfigError("<config>", "model.disc2_channels", f"stage II at {tuple(data.image_size)}: {err}") from None
        self.g2 = StageIIGenerator(dims, c, cond_dim, config.stage2_channels, config.stage2_blocks, config.stage2_norm)
        self.ca1 = ConditioningAugmentation(self.num_conditions, config.embed_dim) if ca else nn.Identity()
        self.ca2 = ConditioningAugmentation(self.num_conditions, config.embed_dim) if ca else nn.Identity()
        self.adversary = Adversary.from_config(config)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)

        def adam(*modules: nn.Module) -> torch.optim.Optimizer:
            return torch.optim.Adam([p for m in modules for p in m.parameters()], lr=self.config.lr, betas=betas)

        return {"g1": adam(self.g1, self.ca1), "d1": adam(self.d1), "g2": adam(self.g2, self.ca2), "d2": adam(self.d2)}

    # -- stage I from a stage-I run -----------------------------------------------------

    def init_from(self) -> tuple[tuple[str, InitFrom], ...]:
        """Stage I (``g1``, ``ca1``) of ``model.stage1_model``, loaded by the engine before training; then frozen."""
        if self.config.stage1_model is None:
            return ()
        return (("model.stage1_model", InitFrom(model=self.config.stage1_model, modules=("g1", "ca1"), method=self.name)),)

    # -- training -----------------------------------------------------------------------

    def conditions(self, batch: dict[str, Any]) -> Tensor:
        """Condition index ``(B,)``: the label, plus ``num_classes * modality`` with ``condition_modality``."""
        labels = batch[keys.LABEL].long()
        if not self.config.condition_modality:
            return labels
        names = batch.get(keys.MODALITY)
        if names is None:
            raise ValueError("condition_modality needs the batch's modality")
        index = torch.tensor([keys.MODALITIES.index(m) for m in names], device=labels.device)
        return labels + self.num_classes * index

    def _condition_vector(self, ca: nn.Module, cond: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Generator condition ``(B, E)`` and its KL (0 without conditioning augmentation)."""
        if isinstance(ca, ConditioningAugmentation):
            c_hat, mu, logvar = ca(cond, generator)
            return c_hat, kl_to_standard_normal(mu, logvar)
        return F.one_hot(cond, self.num_conditions).float(), cond.new_zeros((), dtype=torch.float32)

    def stage1(self, z: Tensor, cond: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(s1 (B, C, *size/4), KL)``."""
        vector, kl = self._condition_vector(self.ca1, cond, generator)
        if self.config.conditioning_augmentation:
            return self.g1(torch.cat([z, vector], 1), None), kl
        return self.g1(z, cond), kl

    def stage2(self, s1: Tensor, cond: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(image (B, C, *size), KL)``."""
        vector, kl = self._condition_vector(self.ca2, cond, generator)
        return self.g2(s1, vector), kl

    def in_stage1(self, step: int) -> bool:
        return self.config.stage1_model is None and step < self.config.stage1_steps

    def _adversarial(self, opt: Optimization, stage: int, real: Tensor, fake: Tensor, kl: Tensor, cond: Tensor) -> dict[str, Tensor]:
        d = self.d1 if stage == 1 else self.d2

        def critic(x: Tensor, labels: Tensor | None = None) -> Tensor:
            return d(x, cond)

        with opt.autocast():
            loss_d = self.adversary.discriminator_loss(critic, real, fake.detach(), step=getattr(opt, "global_step", None)).loss
        opt.step(f"d{stage}", loss_d)
        set_requires_grad([d], False)
        with opt.autocast():
            loss_g = self.adversary.generator_loss(critic, fake) + self.config.kl_weight * kl
        opt.step(f"g{stage}", loss_g)
        set_requires_grad([d], True)
        return {f"{keys.LOSS_G}{stage}": loss_g.detach(), f"{keys.LOSS_D}{stage}": loss_d.detach(), f"{keys.KL}{stage}": kl.detach(), **self.adversary.logs()}

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor]:
        x = batch[keys.IMAGE]  # (B, C, *size) in [-1, 1]
        cond = self.conditions(batch)
        z = torch.randn(x.shape[0], self.config.latent_dim, device=x.device)
        if self.in_stage1(int(getattr(opt, "global_step", 0))):
            with opt.autocast():
                s1, kl = self.stage1(z, cond)
            return self._adversarial(opt, 1, downsample(downsample(x)), s1, kl, cond)
        frozen = [getattr(self, n) for n in self.stage1_modules]
        set_requires_grad(frozen, False)
        for module in frozen:
            module.eval()  # no batch-norm statistics updates either: stage I stays exactly as it was
        with torch.no_grad(), opt.autocast():
            s1, _ = self.stage1(z, cond)
        with opt.autocast():
            fake, kl = self.stage2(s1.detach(), cond)
        return self._adversarial(opt, 2, x, fake, kl, cond)

    # -- sampling -----------------------------------------------------------------------

    def num_sample_classes(self) -> int:
        return self.num_classes

    def _sample_conditions(self, n: int, label: int | None, generator: torch.Generator | None) -> Tensor:
        labels = class_labels(n, self.num_classes, label, generator)
        if self.config.condition_modality:
            labels = labels + self.num_classes * keys.MODALITIES.index(self.config.sample_modality)
        return labels

    @torch.no_grad()
    def sample_stages(self, n: int, generator: torch.Generator | None = None, label: int | None = None) -> tuple[Tensor, Tensor]:
        """``(stage-I images (n, C, *size/4), stage-II images (n, C, *size))`` in [-1, 1]."""
        device = next(self.parameters()).device
        cond = self._sample_conditions(n, label, generator).to(device)
        z = torch.randn((n, self.config.latent_dim), generator=generator).to(device)
        s1, _ = self.stage1(z, cond, generator)
        s2, _ = self.stage2(s1, cond, generator)
        return s1.clamp(-1, 1), s2.clamp(-1, 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, label: int | None = None) -> Tensor:
        """``n`` stage-II images ``(n, C, *data.image_size)`` in [-1, 1]; uniform classes when ``label`` is None."""
        return self.sample_stages(n, generator, label)[1]

    @torch.no_grad()
    def preview(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Stage-I (upsampled) and stage-II samples, one row of 8 per class, and real images."""
        g = torch.Generator().manual_seed(0)
        s1, s2 = zip(*(self.sample_stages(PREVIEW_PER_CLASS, g, label=c) for c in range(self.num_classes)))
        return {"real": batch[keys.IMAGE].clamp(-1, 1), "stage1": upsample(torch.cat(s1), "nearest", STAGE_FACTOR), "stage2": torch.cat(s2)}
