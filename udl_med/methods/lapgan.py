"""LAPGAN: a Laplacian pyramid of (conditional) GANs, sampled coarse to fine, 2D and 3D.

Denton, Chintala, Szlam, Fergus 2015, "Deep Generative Image Models using a Laplacian
Pyramid of Adversarial Networks" (https://arxiv.org/abs/1506.05751). With the pyramid
of :mod:`udl_med.nets.pyramid` (``g_0 = x``, ``g_{k+1} = d(g_k)``, ``l_k = u(g_{k+1})``,
``h_k = g_k - l_k``) and ``L = config.levels``:

- level ``L - 1`` (coarsest) is an ordinary DCGAN, ``G_{L-1}(z[, y])``, on ``g_{L-1}``
  (:class:`udl_med.nets.dcgan.DCGANGenerator` / ``DCGANDiscriminator``; conditional on
  the class when ``model.conditional``);
- level ``k < L - 1`` has ``G_k(z_k, l_k[, y]) -> h~_k`` (a difference image) and
  ``D_k(h, l_k[, y])``, which tells the real ``h_k`` from ``h~_k``, both conditioned on
  the upsampled REAL coarser image ``l_k`` (the levels train independently, eq. 3);
  :class:`udl_med.nets.lapgan.LaplacianLevelGenerator` / ``...Discriminator``.

Sampling is coarse to fine (eq. 2): ``g~_{L-1} = G_{L-1}(z)``, then
``g~_k = u(g~_{k+1}) + G_k(z_k, u(g~_{k+1})[, y])``. ``model.schedule`` says which levels
train in a step: ``joint`` (all of them), ``alternate`` (level ``step mod L``) or
``sequential`` (``level_steps`` steps per level, coarsest first; then joint).

Code names: ``coarse_generator``/``coarse_discriminator`` = ``G_{L-1}``/``D_{L-1}``,
``generators[k]``/``discriminators[k]`` = ``G_k``/``D_k`` for ``k < L - 1``; optimizers
``g{k}`` and ``d{k}``; log keys ``loss_g{k}``, ``loss_d{k}``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.losses.gan import GANMode, set_requires_grad
from udl_med.methods.adversarial import AdversarialConfig, Adversary, discriminator_network
from udl_med.methods.base import Capability, DataSpec, Method, Optimization, register
from udl_med.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from udl_med.nets.lapgan import LaplacianLevelDiscriminator, LaplacianLevelGenerator
from udl_med.nets.pyramid import Upsampling, check_pyramid_size, gaussian_pyramid, upsample

PREVIEW_PER_CLASS = 8


class LAPGANConfig(AdversarialConfig):
    """``model:`` section of a LAPGAN run.

    Attributes:
        levels: pyramid levels ``L`` (>= 2); ``data.size`` must divide by ``2**(L-1)``.
        upsampling: the pyramid's fixed 2x upsampling, ``linear`` or ``nearest``.
        conditional: condition every level on the manifest label (needs ``data.labeled``).
        latent_dim: size of the coarsest generator's noise ``z``.
        coarse_channels: DCGAN channels of the coarsest generator and discriminator (None: the nets' defaults).
        coarse_norm: DCGAN norm of the coarsest level.
        fine_channels, fine_blocks, fine_noise_channels: width, residual units and noise planes of each ``G_k``.
        disc_channels: strided convolutions of each ``D_k``.
        norm: MONAI norm of the finer levels.
        gan_mode: adversarial objective of every level; ``gp_weight`` (WGAN-GP penalty weight) and
            ``label_smoothing`` come from :class:`~udl_med.methods.adversarial.AdversarialConfig`.
        schedule, level_steps: which levels train when (see the module docstring).
        lr, beta1, beta2: Adam of every level (DCGAN's 2e-4, 0.5).
    """

    levels: int = Field(3, ge=2, le=6)
    upsampling: Upsampling = Upsampling.LINEAR
    conditional: bool = True
    latent_dim: int = Field(64, ge=1)
    coarse_channels: tuple[int, ...] | None = None
    coarse_norm: str = "batch"
    fine_channels: int = Field(32, ge=1)
    fine_blocks: int = Field(2, ge=0)
    fine_noise_channels: int = Field(1, ge=1)
    disc_channels: tuple[int, ...] = Field((32, 64), min_length=1)
    norm: str = "batch"
    gan_mode: GANMode = GANMode.VANILLA
    schedule: Literal["joint", "alternate", "sequential"] = "joint"
    level_steps: int = Field(0, ge=0)
    lr: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)


def class_labels(n: int, num_classes: int, label: int | None, generator: torch.Generator | None) -> Tensor | None:
    """Labels ``(n,)`` for sampling: all ``label``, or uniform draws; None for an unconditional model."""
    if num_classes == 0:
        if label is not None:
            raise ValueError("this model is unconditional: it cannot sample a given label")
        return None
    if label is not None:
        if not 0 <= int(label) < num_classes:
            raise ValueError(f"label must be in [0, {num_classes - 1}], got {label}")
        return torch.full((n,), int(label), dtype=torch.long)
    return torch.randint(num_classes, (n,), generator=generator)


def dcgan_kwargs(channels: tuple[int, ...] | None, norm: str) -> dict[str, Any]:
    out: dict[str, Any] = {"norm": norm}
    if channels is not None:
        out["channels"] = tuple(channels)
    return out


@register("lapgan")
class LAPGAN(Method):
    """A Laplacian pyramid of GANs (see the module docstring)."""

    Config = LAPGANConfig
    batch_keys = (keys.IMAGE,)
    capabilities = frozenset({Capability.SAMPLE})
    ema_modules = ("coarse_generator", "generators")  # train.ema_decay: samples from G's averaged weights
    inference_modules = ("coarse_generator", "generators")

    def __init__(self, config: LAPGANConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        if data.spatial_dims not in (2, 3):
            raise ConfigError("<config>", "data.layout", f"LAPGAN needs 2D or 3D images, got spatial_dims {data.spatial_dims}")
        try:
            self.sizes = check_pyramid_size(tuple(data.image_size), config.levels)
        except ValueError as err:
            raise ConfigError("<config>", "model.levels", f"does not fit data.size: {err}") from None
        if config.conditional and data.num_classes < 1:
            raise ConfigError("<config>", "model.conditional", "needs class labels: set data.labeled: true (a manifest with labels)")
        if config.schedule == "sequential" and config.level_steps < 1:
            raise ConfigError("<config>", "model.level_steps", "schedule 'sequential' needs level_steps >= 1")
        dims, c = data.spatial_dims, data.in_channels
        self.num_classes = data.num_classes if config.conditional else 0
        coarse = dcgan_kwargs(config.coarse_channels, config.coarse_norm)
        try:
            self.coarse_generator = DCGANGenerator(dims, config.latent_dim, c, self.sizes[-1], num_classes=self.num_classes, **coarse)
            self.coarse_discriminator = discriminator_network(DCGANDiscriminator(dims, c, self.sizes[-1], num_classes=self.num_classes, **coarse), config)
        except ValueError as err:
            raise ConfigError("<config>", "model.coarse_channels", f"coarsest level {self.sizes[-1]}: {err}") from None
        fine = config.levels - 1
        self.generators = nn.ModuleList(
            LaplacianLevelGenerator(dims, c, config.fine_channels, config.fine_blocks, config.fine_noise_channels, self.num_classes, config.norm)
            for _ in range(fine)
        )
        self.discriminators = nn.ModuleList(
            discriminator_network(LaplacianLevelDiscriminator(dims, c, tuple(config.disc_channels), self.num_classes, config.norm), config) for _ in range(fine)
        )
        self.adversary = Adversary.from_config(config)

    # -- the pieces of each level -----------------------------------------------------

    @property
    def levels(self) -> int:
        return self.config.levels

    def level_modules(self, k: int) -> tuple[nn.Module, nn.Module]:
        """``(G_k, D_k)``; ``k = L - 1`` is the coarsest DCGAN."""
        if k == self.levels - 1:
            return self.coarse_generator, self.coarse_discriminator
        return self.generators[k], self.discriminators[k]

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        out = {}
        for k in range(self.levels):
            g, d = self.level_modules(k)
            out[f"g{k}"] = torch.optim.Adam(g.parameters(), lr=self.config.lr, betas=betas)
            out[f"d{k}"] = torch.optim.Adam(d.parameters(), lr=self.config.lr, betas=betas)
        return out

    def levels_at(self, step: int) -> list[int]:
        """The levels one training step at ``step`` trains (see ``model.schedule``)."""
        schedule, n = self.config.schedule, self.levels
        if schedule == "alternate":
            return [n - 1 - step % n]
        if schedule == "sequential" and step < n * self.config.level_steps:
            return [n - 1 - step // self.config.level_steps]
        return list(range(n))

    def _noise(self, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        shape = (like.shape[0], self.config.fine_noise_channels, *like.shape[2:])
        return torch.randn(shape, generator=generator).to(like.device) if generator is not None else torch.randn(shape, device=like.device)

    def _fake_and_conditioning(self, k: int, gauss: list[Tensor], labels: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(real sample, fake sample, the coarse image D_k sees beside them)`` of level ``k`` on a real Gaussian pyramid (None at the coarsest)."""
        if k == self.levels - 1:
            real = gauss[k]
            z = torch.randn(real.shape[0], self.config.latent_dim, device=real.device)
            return real, self.coarse_generator(z, labels), None
        coarse = upsample(gauss[k + 1], self.config.upsampling)  # l_k from the REAL coarser level
        real = gauss[k] - coarse  # h_k
        fake = self.generators[k](coarse, self._noise(coarse), labels)
        return real, fake, coarse

    def _critic(self, k: int, labels: Tensor | None):
        """D_k as the adversary calls it: ``(x, _, coarse) -> D_k(x, coarse, labels)`` (the coarse image comes through the adversary, augmented with ``x``)."""
        d = self.level_modules(k)[1]
        if k == self.levels - 1:
            return lambda x, _labels=None: d(x, labels)
        return lambda x, _labels, coarse: d(x, coarse, labels)

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor]:
        x = batch[keys.IMAGE]  # (B, C, *spatial) in [-1, 1]
        labels = batch[keys.LABEL].long() if self.num_classes else None
        gauss = gaussian_pyramid(x, self.levels)
        out: dict[str, Tensor] = {}
        for k in self.levels_at(int(getattr(opt, "global_step", 0))):
            g, d = self.level_modules(k)
            with opt.autocast():
                real, fake, coarse = self._fake_and_conditioning(k, gauss, labels)
                critic = self._critic(k, labels)
                loss_d = self.adversary.discriminator_loss(critic, real, fake.detach(), condition=coarse, step=getattr(opt, "global_step", None)).loss
            opt.step(f"d{k}", loss_d)
            set_requires_grad([d], False)
            with opt.autocast():
                loss_g = self.adversary.generator_loss(critic, fake, condition=coarse)
            opt.step(f"g{k}", loss_g)
            set_requires_grad([d], True)
            out[f"{keys.LOSS_G}{k}"], out[f"{keys.LOSS_D}{k}"] = loss_g.detach(), loss_d.detach()
        return {**out, **self.adversary.logs()}

    # -- sampling -----------------------------------------------------------------------

    def num_sample_classes(self) -> int:
        return self.num_classes

    @torch.no_grad()
    def sample_levels(self, n: int, generator: torch.Generator | None = None, label: int | None = None) -> list[Tensor]:
        """Every level of ``n`` samples, coarsest first: ``[g~_{L-1}, ..., g~_0]`` (unclamped)."""
        device = next(self.parameters()).device
        labels = class_labels(n, self.num_classes, label, generator)
        labels = None if labels is None else labels.to(device)
        z = torch.randn((n, self.config.latent_dim), generator=generator).to(device)
        images = [self.coarse_generator(z, labels)]
        for k in range(self.levels - 2, -1, -1):
            coarse = upsample(images[-1], self.config.upsampling)
            images.append(coarse + self.generators[k](coarse, self._noise(coarse, generator), labels))
        return images

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, label: int | None = None) -> Tensor:
        """``n`` images ``(n, C, *data.image_size)`` in [-1, 1], coarse to fine; conditional models draw
        uniform classes when ``label`` is None."""
        return self.sample_levels(n, generator, label)[-1].clamp(-1, 1)

    @torch.no_grad()
    def preview(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Samples per class (one row of 8 each), and the levels of 8 samples upsampled to full size (one row per level)."""
        x = batch[keys.IMAGE]
        g = torch.Generator().manual_seed(0)
        if self.num_classes:
            samples = torch.cat([self.sample(PREVIEW_PER_CLASS, g, label=c) for c in range(self.num_classes)])
        else:
            samples = self.sample(len(x), g)
        levels = self.sample_levels(PREVIEW_PER_CLASS, torch.Generator().manual_seed(1))
        full = [upsample(lv, "nearest", 2 ** (self.levels - 1 - i)) if i < self.levels - 1 else lv for i, lv in enumerate(levels)]
        return {"real": x.clamp(-1, 1), "samples": samples, "levels": torch.cat(full).clamp(-1, 1)}
