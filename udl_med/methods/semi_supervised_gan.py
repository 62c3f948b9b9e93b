"""Semi-supervised K+1 GAN: a discriminator that learns a K-class classifier from few labels and many unlabeled scans.

Salimans, Goodfellow, Zaremba, Cheung, Radford & Chen, "Improved Techniques for
Training GANs", NeurIPS 2016 (https://arxiv.org/abs/1606.03498), section 5; the MNIST
set-up of openai/improved-gan. The discriminator
(:class:`udl_med.nets.kplus1.KPlusOneDiscriminator`, a stock MONAI ``Classifier`` or
``FullyConnectedNet`` with Gaussian noise layers) outputs K class logits; the
"generated" class's logit is fixed at 0, so ``D(x) = Z / (Z + 1)`` with ``Z = sum_k
exp(l_k)``. One step (:mod:`udl_med.losses.kplus1`):

- discriminator (optimizer ``discriminator``): cross-entropy on the labeled batch plus
  ``unsupervised_weight`` times ``0.5 * (-mean(lse(x_unl)) + mean(softplus(lse(x_unl)))
  + mean(softplus(lse(G(z)))))`` on the unlabeled batch and a generated batch of the
  same size; plus ``entropy_weight`` times the conditional entropy of the class softmax on
  the unlabeled batch when set (Dai et al. 2017, "Good Semi-supervised Learning that
  Requires a Bad GAN": confident on real data, boundaries pushed into the low-density
  regions the generator fills; 0, the paper's objective, by default); plus
  ``consistency_weight`` times the Pi-model consistency loss (Laine & Aila 2017,
  :mod:`udl_med.losses.consistency`): the class softmax of the noisy pass over the
  unlabeled batch against a second noisy pass, with a sigmoid ramp-up over
  ``consistency_rampup_steps``. Measured on digits (README, tuning seeds 100-104): the
  K+1 game plus this term beat either alone. ``consistency_shift`` also translates the
  second pass's images by up to that many pixels per axis (the Pi-model's translations);
  ``pseudo_label_weight`` adds FixMatch's term (Sohn et al. 2020): the cross-entropy of
  the first pass against the second pass's class where its softmax reaches
  ``pseudo_label_threshold``; ``class_balance_weight`` adds CatGAN's class balance
  (Springenberg 2016): the KL divergence from the unlabeled batch's mean class prediction to
  a prior (uniform by default); ``vat_weight`` adds virtual adversarial training's term
  (Miyato et al. 2018): the KL divergence from a clean pass to a pass moved by
  ``vat_epsilon`` in the direction the class softmax is most sensitive to;
- generator (optimizer ``generator``): feature matching (default; the squared distance
  between the batch means of D's last hidden layer on the unlabeled batch and on
  ``G(z)``, best for classification in the paper) or ``non_saturating``
  (``-log D(G(z))``), usually with minibatch discrimination (``minibatch_kernels``;
  better samples, a worse classifier in the paper).

``unsupervised_weight: 0`` is the supervised-only baseline: the same discriminator, the
same steps and labeled batches, no generator, no unlabeled term (``entropy_weight`` and
``consistency_weight`` ignored). ``consistency_only: true`` is the non-GAN baseline on the
same discriminator: the labeled cross-entropy plus the consistency term, no generator, so
that the gain of the GAN game itself shows. Evaluation uses the engine's averaged
weights when ``train.ema_decay`` is set (``ema_modules = ("discriminator",)``; the
paper evaluates with averaged parameters), and the model file keeps only the
discriminator. Images: 2D slices, 2.5D stacks and 3D patches (DCGAN generator, conv
discriminator), or flattened images and vectors (MLP generator and discriminator).

``ensemble: M`` trains M such (D, G) pairs side by side on the same batches and
classifies with the mean of the M discriminators' class softmaxes
(:class:`~udl_med.nets.ensemble.SoftmaxAverage`): one K+1 run's error moves with its
initialisation as much as with the labeled draw, and the mean of three is steadier (README).

Data: ``data.semi_supervised: true`` (:mod:`udl_med.data.semi_supervised`) gives each
step a labeled batch (``image``, ``label``) and an unlabeled batch
(``unlabeled_image``); evaluation batches are labeled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.losses.consistency import consistency_loss, pseudo_label_loss, random_translate, sigmoid_rampup, vat_loss
from udl_med.losses.kplus1 import KPlusOneLoss, class_probabilities, real_probability
from udl_med.methods.adversarial import Adversary, DiscriminatorSideConfig, refuse
from udl_med.methods.base import Capability, DataSpec, Method, Optimization, register
from udl_med.nets.dcgan import DCGANGenerator
from udl_med.nets.ensemble import SoftmaxAverage
from udl_med.nets.kplus1 import KPlusOneDiscriminator
from udl_med.nets.mlp_gan import MLPGenerator
from udl_med.nets.modes import eval_mode

DISCRIMINATOR = "discriminator"  # optimizer and submodule names
GENERATOR = "generator"
ENTROPY = "entropy"  # metric: conditional entropy of the class softmax on the unlabeled batch
CONSISTENCY = "consistency"  # metric: the Pi-model consistency loss on the unlabeled batch
PSEUDO_LABEL = "pseudo_label"  # metric: FixMatch's masked pseudo-label cross-entropy on the unlabeled batch
PSEUDO_LABEL_FRACTION = "pseudo_label_fraction"  # metric: the share of the unlabeled batch with a pseudo-label
CLASS_BALANCE = "class_balance"  # metric: KL of the unlabeled batch's mean class prediction from the prior
VAT = "vat"  # metric: virtual adversarial training's KL term on the unlabeled batch


class SemiSupervisedGANConfig(DiscriminatorSideConfig):
    """The ``model:`` section of a ``semi_supervised_gan`` run.

    Attributes:
        discriminator: ``auto`` (``conv`` for images, ``mlp`` for vectors), ``conv`` or
            ``mlp`` (flattened images).
        d_channels, d_kernel_size, d_norm: the conv discriminator (strided convolutions, LeakyReLU 0.2).
        d_hidden: the MLP discriminator's hidden sizes (Salimans' MNIST: 1000, 500, 250, 250, 250).
        d_dropout: dropout of D's hidden layers.
        input_noise_std, hidden_noise_std: D's Gaussian noise while training (paper: 0.3, 0.5 on [0, 1] pixels).
        latent_dim: generator input size.
        g_channels: DCGAN generator channels (images); g_hidden: MLP generator hidden sizes (vectors).
        generator: ``auto`` (DCGAN for images, MLP for vectors), ``dcgan`` or ``mlp`` (an MLP whose
            output is reshaped to the image: the digits benchmark's small images with an MLP D).
        generator_objective: ``feature_matching`` or ``non_saturating``.
        minibatch_kernels, minibatch_kernel_dims: minibatch discrimination in D (0: off).
        unsupervised_weight: weight of the unsupervised loss; 0 is the supervised-only baseline
            (no generator, no unlabeled batch, ``entropy_weight`` unused).
        entropy_weight: weight of the conditional entropy of ``p(y | x, real)`` on the
            unlabeled batch (Dai et al. 2017); 0: Salimans' objective alone.
        entropy_rampup_steps: the entropy weight grows linearly from 0 over this many
            steps (0: full weight from the start), so that D is not asked to be confident
            before the labels have shaped its classes.
        consistency_weight: weight of the Pi-model consistency loss on the unlabeled batch
            (0: off). Digits, 3-5 labels per class, tuning seeds 100-104: 5 took K+1's mean
            error from 7.0 / 6.9% to 7.0 / 5.6% (README).
        consistency_rampup_steps: the consistency weight follows ``exp(-5 (1 - t)^2)``,
            ``t = step / consistency_rampup_steps`` (0: full weight from the start).
        consistency_shift: the second (target) pass sees its images translated by a random
            whole number of pixels in ``[-consistency_shift, consistency_shift]`` per axis, edges
            replicated (images only; 0: D's noise is the only perturbation). On 8x8 digits (MLP D)
            and 16x16 phantom crops 1 pixel is too much: K+1 collapsed to one class on the tuning
            seeds (README), so no shipped setting uses it.
        pseudo_label_weight: weight of FixMatch's pseudo-label cross-entropy on the unlabeled
            batch: the target pass's class, where its softmax reaches ``pseudo_label_threshold``
            (0: off). Digits, 3 labels per class, tuning seeds 100-104: weight 1, ramp 500 gave
            7.4 +- 1.8% against 6.8 +- 0.9% without (README), so it is off in the benchmark.
        pseudo_label_threshold: the confidence a pseudo-label needs (FixMatch: 0.95).
        pseudo_label_rampup_steps: the pseudo-label weight follows the same ``exp(-5 (1 - t)^2)``
            ramp (0: full weight from the start, as FixMatch).
        class_balance_weight: weight of CatGAN's class balance on the unlabeled batch (Springenberg
            2016; :meth:`~udl_med.losses.kplus1.KPlusOneLoss.class_balance`): the KL divergence from
            the batch's mean class prediction to ``class_balance_prior`` (0: off). With a few labels
            per class one class can swallow another's unlabeled cluster; this keeps each class its
            share. Digits, 3 labels per class, tuning draws 105-114, three pairs: 8.1 -> 6.3% error
            (README).
        class_balance_prior: the class frequencies expected in the unlabeled data, one per class,
            summing to 1 (None: uniform). Give it for imbalanced data: a uniform prior pulls a
            rare class's share up.
        vat_weight: weight of virtual adversarial training's term on the unlabeled batch (Miyato
            et al. 2018; :func:`udl_med.losses.consistency.vat_loss`): the KL divergence from a clean
            pass to a pass moved by ``vat_epsilon`` (L2 per item) in the direction one power
            iteration finds most sensitive (0: off). Its passes run with D's noise off: noise of
            0.3 on a 64-value digit is an L2 length of about 2.4 and swamps the finite difference
            (tuning draws 105-106, noise on: 23.2 / 11.8% error at ``vat_epsilon`` 1, README).
            Ramped like the consistency term, over ``vat_rampup_steps``.
        vat_epsilon: the perturbation's L2 length per item, in the normalised intensities.
        vat_rampup_steps: the VAT weight follows the same ``exp(-5 (1 - t)^2)`` ramp.
        consistency_only: the non-GAN baseline: no generator and no K+1 unsupervised loss,
            the labeled cross-entropy plus the consistency, pseudo-label, class-balance and VAT
            terms (needs a consistency, pseudo-label or VAT weight > 0).
        lr, g_lr, beta1: Adam (paper: 3e-3, beta1 0.5); ``g_lr`` defaults to ``lr``.
        ensemble: train this many (D, G) pairs side by side, each from its own
            initialisation, on the same batches; the classifier is the mean of the
            discriminators' class softmaxes (:class:`~udl_med.nets.ensemble.SoftmaxAverage`),
            exported as such. 1: one pair. K+1's error varies with the training run as much
            as with the labeled draw; digits, 3 labels per class, tuning seeds 105-114:
            one run 9.9 +- 3.6% (worst 17.2), the mean of three 8.1 +- 2.4% (worst 11.2)
            (README). Each member costs a run's compute. Not with ``d_augment: ada``
            (one p would be tuned on every member's scores).

    With ``d_augment`` the K+1 game scores the unlabeled batch through the augmentation, so
    the consistency term's first pass is the augmented batch and its target an unaugmented
    second pass: augmentation consistency as well as the Pi-model's noise (the consistency
    baseline's first pass is augmented alike). The labeled cross-entropy sees its batch as it is.
    """

    # D-side augmentation (d_augment, ADA) and R1 come from DiscriminatorSideConfig; the labeled cross-entropy sees its batch unaugmented
    spectral_norm_refusal: ClassVar[str | None] = "the exported classifier is a stock MONAI network loaded strictly; spectral normalisation renames its weights"

    discriminator: Literal["auto", "conv", "mlp"] = "auto"
    d_channels: tuple[int, ...] = (32, 64, 128)
    d_kernel_size: int = 3
    d_norm: Literal["none", "batch", "instance"] = "none"
    d_hidden: tuple[int, ...] = (500, 250, 250)
    d_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    input_noise_std: float = Field(0.3, ge=0.0)
    hidden_noise_std: float = Field(0.5, ge=0.0)
    latent_dim: int = Field(100, ge=1)
    g_channels: tuple[int, ...] = (128, 64, 32)
    g_hidden: tuple[int, ...] = (500, 500)
    generator: Literal["auto", "dcgan", "mlp"] = "auto"
    generator_objective: Literal["feature_matching", "non_saturating"] = "feature_matching"
    minibatch_kernels: int = Field(0, ge=0)
    minibatch_kernel_dims: int = Field(5, ge=1)
    unsupervised_weight: float = Field(1.0, ge=0.0)
    entropy_weight: float = Field(0.0, ge=0.0)
    entropy_rampup_steps: int = Field(0, ge=0)
    consistency_weight: float = Field(0.0, ge=0.0)
    consistency_rampup_steps: int = Field(0, ge=0)
    consistency_shift: int = Field(0, ge=0)
    pseudo_label_weight: float = Field(0.0, ge=0.0)
    pseudo_label_threshold: float = Field(0.95, ge=0.0, le=1.0)
    pseudo_label_rampup_steps: int = Field(0, ge=0)
    class_balance_weight: float = Field(0.0, ge=0.0)
    class_balance_prior: tuple[float, ...] | None = None
    vat_weight: float = Field(0.0, ge=0.0)
    vat_epsilon: float = Field(1.0, gt=0.0)
    vat_rampup_steps: int = Field(0, ge=0)
    consistency_only: bool = False
    lr: float = Field(3e-3, gt=0)
    g_lr: float | None = Field(None, gt=0)
    beta1: float = Field(0.5, ge=0.0, lt=1.0)
    ensemble: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> SemiSupervisedGANConfig:
        for name in ("d_channels", "d_hidden", "g_channels", "g_hidden"):
            value = getattr(self, name)
            if not value or min(value) < 1:
                raise ValueError(f"{name} must be one or more positive sizes, got {list(value)}")
        if self.d_kernel_size < 1 or self.d_kernel_size % 2 == 0:
            raise ValueError(f"d_kernel_size must be odd, got {self.d_kernel_size}")
        if self.consistency_only and self.consistency_weight == 0 and self.pseudo_label_weight == 0 and self.vat_weight == 0:
            raise ValueError("consistency_only needs consistency_weight, pseudo_label_weight or vat_weight > 0 (it is the consistency baseline)")
        if self.class_balance_prior is not None:
            prior = self.class_balance_prior
            if len(prior) < 2 or min(prior) <= 0 or abs(sum(prior) - 1.0) > 1e-3:
                raise refuse("class_balance_prior", "must be two or more positive class frequencies that sum to 1", list(prior))
        if self.ensemble > 1 and self.d_augment == "ada":
            raise refuse("ensemble", "cannot take d_augment: ada (one p would be tuned on every member's scores at once; use diffaugment)", self.ensemble)
        return self

    @property
    def supervised_only(self) -> bool:
        """The labels-only arm: no generator, no unlabeled term."""
        return self.unsupervised_weight == 0 and not self.consistency_only

    @property
    def uses_generator(self) -> bool:
        return self.unsupervised_weight > 0 and not self.consistency_only


def _class_logits(d: KPlusOneDiscriminator) -> Callable[..., Tensor]:
    """The critic the adversary scores with: ``d``'s K class logits ``(B, K)`` in training mode (noise on)."""
    return lambda x, labels=None: d.gan_logits(x)[0]


@register("semi_supervised_gan")
class SemiSupervisedGAN(Method):
    """K+1 semi-supervised GAN; see the module docstring."""

    Config = SemiSupervisedGANConfig
    batch_keys = (keys.IMAGE, keys.LABEL, keys.UNLABELED_IMAGE)
    capabilities = frozenset({Capability.CLASSIFY})
    ema_modules = (DISCRIMINATOR,)
    inference_modules = (DISCRIMINATOR,)

    def __init__(self, config: SemiSupervisedGANConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        if data.num_classes < 2:
            raise ConfigError(
                "<config>", "data.semi_supervised", f"semi_supervised_gan needs at least 2 labeled classes, the data has {data.num_classes}"
            )
        architecture = config.discriminator
        if architecture == "auto":
            architecture = "mlp" if data.spatial_dims == 0 else "conv"
        if architecture == "conv" and data.spatial_dims == 0:
            raise ConfigError("<config>", "model.discriminator", "'conv' needs images; vector data uses 'mlp'")
        if config.class_balance_prior is not None and len(config.class_balance_prior) != data.num_classes:
            raise ConfigError(
                "<config>", "model.class_balance_prior", f"has {len(config.class_balance_prior)} frequencies, the data has {data.num_classes} classes"
            )
        if config.consistency_shift and data.spatial_dims == 0:
            raise ConfigError("<config>", "model.consistency_shift", "translations need images; vector data has no pixel grid (use 0)")
        if config.generator == "dcgan" and data.spatial_dims == 0:
            raise ConfigError("<config>", "model.generator", "'dcgan' needs images; vector data uses 'mlp'")
        self.architecture = architecture
        discriminators = [self._build_discriminator(config, data, architecture) for _ in range(config.ensemble)]
        self.discriminator: torch.nn.Module = discriminators[0] if config.ensemble == 1 else SoftmaxAverage(discriminators)
        generators = [self._build_generator(config, data) for _ in range(config.ensemble)] if config.uses_generator else []
        self.generator: torch.nn.Module | None = (generators[0] if config.ensemble == 1 else torch.nn.ModuleList(generators)) if generators else None
        self.loss = KPlusOneLoss()  # the supervised cross-entropy, the conditional entropy and the class balance
        self._class_prior = torch.tensor(config.class_balance_prior) if config.class_balance_prior else None  # moved to the logits' device when used
        self.adversary = Adversary.from_config(config, KPlusOneLoss())  # real-versus-generated on the K+1 logits; feature matching; d_augment, R1

    @staticmethod
    def _build_discriminator(config: SemiSupervisedGANConfig, data: DataSpec, architecture: str) -> KPlusOneDiscriminator:
        return KPlusOneDiscriminator(
            data.spatial_dims,
            data.in_channels,
            data.image_size,
            data.num_classes,
            architecture=architecture,
            channels=config.d_channels,
            kernel_size=config.d_kernel_size,
            hidden=config.d_hidden,
            norm=config.d_norm,
            dropout=config.d_dropout,
            input_noise_std=config.input_noise_std,
            hidden_noise_std=config.hidden_noise_std,
            minibatch_kernels=config.minibatch_kernels,
            minibatch_kernel_dims=config.minibatch_kernel_dims,
        )

    @staticmethod
    def _build_generator(config: SemiSupervisedGANConfig, data: DataSpec) -> torch.nn.Module:
        if data.spatial_dims == 0:
            return MLPGenerator(config.latent_dim, data.in_channels, hidden=config.g_hidden, norm="batch", output="tanh")
        if config.generator == "mlp":
            shape = (data.in_channels, *data.image_size)
            return torch.nn.Sequential(
                MLPGenerator(config.latent_dim, math.prod(shape), hidden=config.g_hidden, norm="batch", output="tanh"), torch.nn.Unflatten(1, shape)
            )
        return DCGANGenerator(data.spatial_dims, config.latent_dim, data.in_channels, data.image_size, channels=config.g_channels, norm="batch")

    def _device(self) -> torch.device:
        return next(self.discriminator.parameters()).device

    # --- training -------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        betas = (c.beta1, 0.999)
        opts = {DISCRIMINATOR: torch.optim.Adam(self.discriminator.parameters(), lr=c.lr, betas=betas)}
        if self.generator is not None:
            opts[GENERATOR] = torch.optim.Adam(self.generator.parameters(), lr=c.g_lr or c.lr, betas=betas)
        return opts

    def _members(self) -> list[tuple[KPlusOneDiscriminator, torch.nn.Module | None]]:
        """The (D, G) pairs trained side by side (one unless ``ensemble`` > 1; G None without a generator)."""
        ds = list(self.discriminator.members) if isinstance(self.discriminator, SoftmaxAverage) else [self.discriminator]
        gs = list(self.generator) if isinstance(self.generator, torch.nn.ModuleList) else [self.generator] * len(ds)
        return list(zip(ds, gs))

    def _z(self, n: int) -> Tensor:
        return torch.randn(n, self.config.latent_dim, device=self._device())

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor | float]:
        """One step of every member: the D losses summed into one D step, then the G losses into one G step.

        Members share no parameter, so the summed losses give each member exactly its own
        gradients (Adam is per parameter); ``train.grad_clip`` clips their joint norm.
        """
        members = self._members()
        d_parts = [self._discriminator_part(d, g, batch, opt) for d, g in members]
        opt.step(DISCRIMINATOR, sum(loss for loss, _, _ in d_parts))
        if self.generator is not None:
            with opt.autocast():
                g_losses = [self._generator_part(d, fake, batch[keys.UNLABELED_IMAGE]) for (d, _), (_, fake, _) in zip(members, d_parts)]
            opt.step(GENERATOR, sum(g_losses))
            for (_, _, out), loss_g in zip(d_parts, g_losses):
                out[keys.GENERATOR] = loss_g.detach()
                out.update(self.adversary.logs())
        logs = [out for _, _, out in d_parts]
        return logs[0] if len(logs) == 1 else {k: sum(out[k] for out in logs) / len(logs) for k in logs[0]}

    def _discriminator_part(
        self, d: KPlusOneDiscriminator, g: torch.nn.Module | None, batch: dict[str, Any], opt: Optimization
    ) -> tuple[Tensor, Tensor | None, dict[str, Tensor | float]]:
        """One member's D loss, its generated batch (None without G) and its logs."""
        c = self.config
        x_lab, labels = batch[keys.IMAGE], batch[keys.LABEL].long()
        with opt.autocast():
            logits_lab = d(x_lab)
        ce = self.loss.supervised(logits_lab, labels)
        out: dict[str, Tensor | float] = {keys.CE: ce.detach(), keys.ACCURACY: (logits_lab.argmax(1) == labels).float().mean().detach()}
        if c.supervised_only:
            out[keys.LOSS] = ce.detach()
            return ce, None, out
        x_unl = batch[keys.UNLABELED_IMAGE]
        loss_d = ce
        fake = None
        if g is not None:
            fake = g(self._z(x_unl.shape[0]))
            with opt.autocast():
                parts = self.adversary.discriminator_loss(_class_logits(d), x_unl, fake.detach(), step=getattr(opt, "global_step", None))
            unsup, logits_unl, logits_fake = parts.loss, parts.real_scores, parts.fake_scores
            loss_d = loss_d + c.unsupervised_weight * unsup
            if c.entropy_weight > 0:
                entropy = self.loss.conditional_entropy(logits_unl)  # the realness shift moves every logit alike: softmax unchanged
                ramp = min(1.0, opt.global_step / c.entropy_rampup_steps) if c.entropy_rampup_steps else 1.0
                loss_d = loss_d + c.entropy_weight * ramp * entropy
                out[ENTROPY] = entropy.detach()
            out.update(
                {
                    keys.UNSUPERVISED: unsup.detach(),
                    keys.D_REAL: real_probability(logits_unl.detach()).mean(),
                    keys.D_FAKE: real_probability(logits_fake.detach()).mean(),
                }
            )
        else:  # the consistency baseline sees its unlabeled batch as K+1's game does: through d_augment
            with opt.autocast():
                logits_unl = d(self.adversary.view(x_unl)[0])
        if c.consistency_weight > 0 or c.pseudo_label_weight > 0:
            with torch.no_grad(), opt.autocast():
                teacher = d(random_translate(x_unl, c.consistency_shift))  # a second pass, own noise (and shift): the target
        if c.consistency_weight > 0:
            consistency = consistency_loss(logits_unl, teacher)  # the realness shift leaves the softmax unchanged
            loss_d = loss_d + c.consistency_weight * sigmoid_rampup(opt.global_step, c.consistency_rampup_steps) * consistency
            out[CONSISTENCY] = consistency.detach()
        if c.pseudo_label_weight > 0:
            pseudo, mask = pseudo_label_loss(logits_unl, teacher, c.pseudo_label_threshold)  # softmax: realness shift irrelevant
            loss_d = loss_d + c.pseudo_label_weight * sigmoid_rampup(opt.global_step, c.pseudo_label_rampup_steps) * pseudo
            out[PSEUDO_LABEL] = pseudo.detach()
            out[PSEUDO_LABEL_FRACTION] = mask.mean()
        if c.class_balance_weight > 0:
            balance = self.loss.class_balance(logits_unl, self._class_prior)  # softmax: the realness shift leaves it unchanged
            loss_d = loss_d + c.class_balance_weight * balance
            out[CLASS_BALANCE] = balance.detach()
        if c.vat_weight > 0:
            with eval_mode(d), opt.autocast():  # D's noise off: it would swamp the power iteration's finite difference
                with torch.no_grad():
                    clean = d(x_unl)
                vat = vat_loss(d, x_unl, clean, c.vat_epsilon)
            loss_d = loss_d + c.vat_weight * sigmoid_rampup(opt.global_step, c.vat_rampup_steps) * vat
            out[VAT] = vat.detach()
        out[keys.LOSS] = loss_d.detach()
        return loss_d, fake, out

    def _generator_part(self, d: KPlusOneDiscriminator, fake: Tensor, x_unl: Tensor) -> Tensor:
        """One member's G loss on its generated batch, against its D after the D step."""
        if self.config.generator_objective == "feature_matching":
            _, features_fake = d.gan_logits(fake)
            with torch.no_grad():
                _, features_real = d.forward_features(x_unl)
            return self.adversary.feature_matching_loss(features_real, features_fake)
        return self.adversary.generator_loss(_class_logits(d), fake)

    # --- evaluation and use ---------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, float]:
        """Accuracy and cross-entropy on a labeled held-out batch, and the mean ``D(x)``."""
        x = batch[keys.IMAGE].to(self._device())
        member_logits = [d(x) for d, _ in self._members()]
        logits = member_logits[0] if len(member_logits) == 1 else SoftmaxAverage.combine(member_logits)  # an ensemble's: log of its mean softmax
        out = {keys.D_REAL: sum(float(real_probability(m).mean()) for m in member_logits) / len(member_logits)}
        if keys.LABEL in batch:
            labels = batch[keys.LABEL].to(self._device()).long()
            out[keys.ACCURACY] = float((logits.argmax(1) == labels).float().mean())
            out[keys.CE] = float(self.loss.supervised(logits, labels))
        return out

    @torch.no_grad()
    def preview(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        if self.generator is None or self.data.spatial_dims == 0:
            return {}
        g = self._members()[0][1]  # an ensemble's first member
        with eval_mode(g):
            generator = torch.Generator(self._device()).manual_seed(0)
            z = torch.randn(16, self.config.latent_dim, generator=generator, device=self._device())
            samples = g(z)
        return {"samples": samples[:, :1] if self.data.spatial_dims == 2 else samples[..., samples.shape[-1] // 2][:, :1]}

    @torch.no_grad()
    def classify(self, x: Tensor) -> Tensor:
        """Images ``(B, C, *spatial)`` (or vectors ``(B, D)``) in [-1, 1] -> class probabilities ``(B, K)``."""
        with eval_mode(self.discriminator):  # no noise, running statistics: what the exported network computes
            return class_probabilities(self.discriminator(x.to(self._device())))

    @property
    def classifier_members(self) -> int:
        """How many networks the exported classifier averages (``ensemble``)."""
        return self.config.ensemble

    def export_classifier(self) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
        """``(monai class path, kwargs, state dict)`` of the classifier; its softmax is :meth:`classify`.

        An ensemble's state holds each member's network under ``members.<i>.``, the keys of
        a :class:`~udl_med.nets.ensemble.SoftmaxAverage` of ``classifier_members`` such networks.
        """
        parts = [d.exported() for d, _ in self._members()]
        if len(parts) == 1:
            return parts[0]
        state = {f"members.{i}.{k}": v for i, (_, _, member) in enumerate(parts) for k, v in member.items()}
        return parts[0][0], parts[0][1], state


__all__ = ["SemiSupervisedGANConfig", "SemiSupervisedGAN"]
