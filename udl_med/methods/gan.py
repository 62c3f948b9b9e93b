"""The GAN family in one method: every loss and stabilising trick chosen in the ``model:`` section.

Goodfellow et al. 2014, "Generative Adversarial Nets" (https://arxiv.org/abs/1406.2661);
DCGAN, Radford et al. 2016 (https://arxiv.org/abs/1511.06434); LSGAN, Mao et al. 2017
(https://arxiv.org/abs/1611.04076); WGAN, Arjovsky et al. 2017
(https://arxiv.org/abs/1701.07875); WGAN-GP, Gulrajani et al. 2017
(https://arxiv.org/abs/1704.00028); feature matching, minibatch discrimination, virtual
batch norm, historical averaging and one-sided label smoothing, Salimans et al. 2016,
"Improved Techniques for Training GANs" (https://arxiv.org/abs/1606.03498); unrolled
GAN, Metz et al. 2017 (https://arxiv.org/abs/1611.02163); experience replay,
Shrivastava et al. 2017 (https://arxiv.org/abs/1612.07828); conditional GAN, Mirza and
Osindero 2014 (https://arxiv.org/abs/1411.1784); AC-GAN, Odena et al. 2017
(https://arxiv.org/abs/1610.09585); MSGAN, Mao et al. 2019
(https://arxiv.org/abs/1903.05628); PacGAN, Lin et al. 2018
(https://arxiv.org/abs/1712.04086); DeLiGAN's mixture latent, Gurumurthy et al. 2017
(https://arxiv.org/abs/1706.02071). The D-side pieces every adversarial method shares
(the loss and its targets, gradient penalty, clipping, packing, replay) come from
:mod:`udl_med.methods.adversarial`; this module keeps the keys, refusals and step of ``gan``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from monai.utils import StrEnum
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.func import functional_call

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.losses.gan import GANMode, set_requires_grad
from udl_med.losses.historical_averaging import HistoricalAverage
from udl_med.losses.image_pool import ImagePool
from udl_med.losses.info import InfoTerms, info_loss
from udl_med.losses.mode_seeking import mode_seeking_loss
from udl_med.losses.unrolled import adam_eps, adam_moments, unroll_discriminator
from udl_med.methods.adversarial import Adversary, CheckpointSwapConfig, DiscriminatorLoss, PackingConfig, UnrolledConfig
from udl_med.methods.adversarial import checkpoint_swap, discriminator_logs, discriminator_network, packed_discriminator, refuse, replay, score_metrics
from udl_med.methods.base import Capability, DataSpec, Method, MethodConfig, Optimization, register
from udl_med.methods.info_codes import InfoCodesConfig, info_refusal, parse_code
from udl_med.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from udl_med.nets.diffaugment import DiffAugment
from udl_med.nets.gan_wrappers import ClassLogitRecorder, Flat, SwapHistory
from udl_med.nets.info_head import InfoCodesLatent, InfoDiscriminator, InfoHead
from udl_med.nets.mixture_latent import MixtureLatent, MixtureLatentGenerator, StandardNormalLatent
from udl_med.nets.mlp_gan import MLPDiscriminator, MLPGenerator
from udl_med.nets.modes import eval_mode

PREVIEW_IMAGES = 64  # samples in the preview grid
PREVIEW_POINTS = 1024  # samples in the preview scatter plot
_FIXED_SEED = 0  # the fixed preview and evaluation z


class GANObjective(StrEnum):
    """``model.loss``: the adversarial game."""

    MINIMAX = "minimax"
    NON_SATURATING = "non-saturating"
    LSGAN = "lsgan"
    WGAN = "wgan"
    WGAN_GP = "wgan-gp"
    HINGE = "hinge"


WASSERSTEIN = (GANObjective.WGAN, GANObjective.WGAN_GP)

# Per-loss defaults filled in for keys the config leaves out, as each paper trains:
_LOSS_DEFAULTS: dict[str, dict[str, Any]] = {
    # DCGAN: Adam 2e-4, beta1 0.5 (Radford et al. 2016, section 4)
    "minimax": {"optimizer": "adam", "lr": 2e-4, "d_steps": 1},
    "non-saturating": {"optimizer": "adam", "lr": 2e-4, "d_steps": 1},
    "lsgan": {"optimizer": "adam", "lr": 2e-4, "d_steps": 1},
    # WGAN: RMSprop 5e-5, n_critic 5, c = 0.01 (Arjovsky et al. 2017, algorithm 1)
    "wgan": {"optimizer": "rmsprop", "lr": 5e-5, "d_steps": 5, "clip_value": 0.01},
    # WGAN-GP: Adam 1e-4, betas (0, 0.9), n_critic 5, lambda 10 (Gulrajani et al. 2017, algorithm 1)
    "wgan-gp": {"optimizer": "adam", "lr": 1e-4, "d_steps": 5, "gp_weight": 10.0},
    # hinge: as the DCGAN-style nets of SN-GAN, Adam 2e-4, betas (0.5, 0.999), n_dis 1 (Miyato et al. 2018, table 1, setting C)
    "hinge": {"optimizer": "adam", "lr": 2e-4, "d_steps": 1},
}
# Adam's betas when the config leaves them out (only when the optimizer is Adam)
_ADAM_BETAS = {"wgan-gp": (0.0, 0.9)}
_DCGAN_BETAS = (0.5, 0.999)


class LatentMixtureConfig(MethodConfig):
    """``model.latent_mixture``: z from N learned Gaussian components instead of N(0, I) (DeLiGAN, Gurumurthy et al. 2017)."""

    components: int = Field(50, ge=2, description="N, components drawn with equal probability (DeLiGAN: 50)")
    init_std: float = Field(0.2, gt=0.0, description="every component's sigma at the start (DeLiGAN: 0.2)")
    std_penalty: float = Field(0.0, ge=0.0, description="lambda of DeLiGAN's (1/N) sum ||1 - sigma_i||^2 in G's loss (0: off)")


class GANConfig(PackingConfig):
    """``model:`` section of a ``gan`` run; keys left out get the chosen loss's published defaults.

    ``null`` (or a missing key) for ``d_steps``, ``optimizer``, ``lr``, ``beta1``,
    ``beta2``, ``clip_value``, ``gp_weight``, ``g_norm``, ``d_norm`` means "the default
    of this loss and architecture" (see :class:`GAN`); the saved run config holds the
    resolved values. ``label_smoothing`` and ``pack`` (and their refusals) come from
    :class:`~udl_med.methods.adversarial.PackingConfig`.
    """

    objective_key: ClassVar[str] = "loss"

    architecture: Literal["dcgan", "mlp"] = Field("dcgan", description="convolutional DCGAN nets, or MLPs (points, flattened images)")
    latent_dim: int = Field(100, ge=1, description="dimension of z ~ N(0, I)")
    latent_mixture: LatentMixtureConfig | None = Field(None, description="z from a learned Gaussian mixture (DeLiGAN); null: N(0, I)")
    g_channels: tuple[int, ...] | None = Field(None, min_length=1, description="DCGAN generator channels (null: the net's default)")
    d_channels: tuple[int, ...] | None = Field(None, min_length=1, description="DCGAN discriminator channels (null: the net's default)")
    g_hidden: tuple[int, ...] = Field((128, 128), min_length=1, description="MLP generator hidden sizes")
    d_hidden: tuple[int, ...] = Field((128, 128), min_length=1, description="MLP discriminator hidden sizes")
    loss: GANObjective = GANObjective.NON_SATURATING
    d_steps: int | None = Field(None, ge=1, description="k, discriminator steps per generator step, each on a fresh batch")
    g_norm: Literal["batch", "virtual_batch", "instance", "layer", "none"] | None = None
    d_norm: Literal["batch", "virtual_batch", "instance", "layer", "none"] | None = None
    batch_norm_batches: Literal["joint", "separate"] = Field(
        "separate", description="D sees real and fake in one batch (joint) or in two (separate, DCGAN's code)"
    )
    vbn_reference: int = Field(64, ge=1, description="|R|, size of the virtual batch norm reference batch")
    feature_matching: bool = Field(False, description="G minimises ||E f(x) - E f(G(z))||^2 on a separate real batch")
    feature_matching_distance: Literal["l2", "l1"] = "l2"
    minibatch_kernels: int = Field(0, ge=0, description="B, minibatch discrimination kernels in D (0: off)")
    d_input_noise: float = Field(0.0, ge=0.0, description="std of Gaussian noise added to D's input")
    d_hidden_noise: float = Field(0.0, ge=0.0, description="std of Gaussian noise added to D's hidden layers")
    historical_averaging: float = Field(0.0, ge=0.0, description="weight of ||theta - mean theta||^2 for G and D (0: off)")
    replay: int = Field(0, ge=0, description="experience replay: fakes shown to D come from a pool of this size (0: off)")
    checkpoint_swap: CheckpointSwapConfig | None = None
    unrolled: UnrolledConfig | None = None
    conditional: bool = Field(False, description="G and D see the manifest's label (needs data.labeled: true)")
    d_conditioning: Literal["concat", "projection", "auxiliary"] = Field(
        "concat",
        description="how a conditional DCGAN D sees the label: one-hot maps on its input (concat), a projection of its last hidden layer on a class embedding (projection), or not at all while a class head predicts it (auxiliary, AC-GAN)",
    )
    aux_class_weight: float = Field(1.0, gt=0.0, description="d_conditioning auxiliary: weight of the class loss L_C in D's and G's losses")
    aux_class_fakes: bool = Field(True, description="d_conditioning auxiliary: D's class head also learns the fakes' classes (AC-GAN); false: real items only, so G follows a classifier of real data")
    mode_seeking: float = Field(0.0, ge=0.0, description="lambda of MSGAN's mode-seeking term: G draws two fakes per real item (same labels) and pays 1 / (mean|G(z2) - G(z1)| / mean|z2 - z1| + eps) (0: off)")
    info_codes: InfoCodesConfig | None = Field(None, description="InfoGAN: categorical/continuous codes next to z, a Q head on D's body, weight lambda (null: off)")
    clip_value: float | None = Field(None, gt=0.0, description="c, weight clipping of the critic (loss wgan)")
    gp_weight: float | None = Field(None, ge=0.0, description="lambda, gradient-penalty weight (loss wgan-gp)")
    optimizer: Literal["adam", "rmsprop"] | None = None
    lr: float | None = Field(None, gt=0.0, description="learning rate of both G and D")
    g_lr: float | None = Field(None, gt=0.0, description="generator learning rate (null: lr)")
    d_lr: float | None = Field(None, gt=0.0, description="discriminator learning rate (null: lr); also the unrolled inner step")
    beta1: float | None = Field(None, ge=0.0, lt=1.0)
    beta2: float | None = Field(None, ge=0.0, lt=1.0)

    @property
    def adversarial_mode(self) -> GANMode:
        return GANMode(self.loss.value)

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        loss = str(getattr(data.get("loss"), "value", data.get("loss") or GANObjective.NON_SATURATING.value))
        defaults = _LOSS_DEFAULTS.get(loss)
        if defaults is None:  # an unknown loss: let field validation name it
            return data
        out, dcgan = dict(data), (data.get("architecture") or "dcgan") == "dcgan"
        adam = (out.get("optimizer") or defaults["optimizer"]) == "adam"
        betas = dict(zip(("beta1", "beta2"), _ADAM_BETAS.get(loss, _DCGAN_BETAS))) if adam else {}
        # DCGAN: batch norm in both; WGAN-GP: no batch norm in the critic (Gulrajani et al., section 4); MLPs: none
        norms = {"g_norm": "batch" if dcgan else "none", "d_norm": "batch" if dcgan and loss != "wgan-gp" else "none"}
        for key, value in {**defaults, **betas, **norms}.items():
            if out.get(key) is None:
                out[key] = value
        return out

    @model_validator(mode="after")
    def _refuse_nonsense(self) -> GANConfig:
        loss = self.loss
        if loss == GANObjective.WGAN and self.gp_weight:
            raise refuse("gp_weight", "weight clipping (loss wgan) and a gradient penalty exclude each other; use loss wgan-gp for the penalty", self.gp_weight)
        if loss != GANObjective.WGAN and self.clip_value is not None:
            raise refuse("clip_value", f"weight clipping belongs to loss wgan, not {loss.value}" + (" (it has the gradient penalty instead)" if loss == GANObjective.WGAN_GP else ""), self.clip_value)
        if loss not in WASSERSTEIN and self.gp_weight:
            raise refuse("gp_weight", f"the gradient penalty belongs to loss wgan-gp, not {loss.value}", self.gp_weight)
        for key in ("g_norm", "d_norm"):
            if self.architecture == "dcgan" and getattr(self, key) == "layer":
                raise refuse(key, "layer norm is for architecture mlp; the DCGAN nets take batch, virtual_batch, instance or none", "layer")
        if loss == GANObjective.WGAN_GP and self.d_norm in ("batch", "virtual_batch"):
            raise refuse("d_norm", f"{self.d_norm} norm makes a critic's output depend on the rest of the batch, which breaks the per-sample gradient penalty (loss wgan-gp); use instance or none", self.d_norm)
        if loss == GANObjective.WGAN_GP and self.minibatch_kernels:
            raise refuse("minibatch_kernels", "minibatch discrimination makes a critic's output depend on the rest of the batch, which breaks the per-sample gradient penalty (loss wgan-gp)", self.minibatch_kernels)
        if self.optimizer == "rmsprop":
            for key in ("beta1", "beta2"):
                if getattr(self, key) is not None:
                    raise refuse(key, "optimizer rmsprop has no betas (they are Adam's); leave them out or use optimizer adam", getattr(self, key))
        if loss in WASSERSTEIN and self.feature_matching:
            raise refuse("feature_matching", f"feature matching replaces the generator's adversarial loss; with loss {loss.value} the critic's features are unconstrained, use minimax, non-saturating or lsgan", True)
        if self.unrolled is not None and self.feature_matching:
            raise refuse("unrolled", "unrolling differentiates D's adversarial loss; it cannot be combined with feature_matching", self.unrolled.model_dump())
        if self.unrolled is not None and loss == GANObjective.WGAN_GP and not self.unrolled.first_order:
            raise refuse("unrolled.first_order", "second-order unrolling through a gradient penalty needs third derivatives; set first_order: true", False)
        if self.unrolled is not None and self.unrolled.optimizer == "adam" and self.optimizer != "adam":
            raise refuse("unrolled.optimizer", f"Adam inner steps continue D's Adam moments; D's optimizer is {self.optimizer}", "adam")
        if self.d_conditioning != "concat" and not (self.conditional and self.architecture == "dcgan"):
            raise refuse("d_conditioning", f"a {self.d_conditioning} discriminator conditions a DCGAN D on the label; it needs conditional: true and architecture: dcgan", self.d_conditioning)
        if self.mode_seeking and self.unrolled is not None:
            raise refuse("mode_seeking", "the unrolled generator loss (model.unrolled) scores one fake per real item; use one of the two", self.mode_seeking)
        if self.d_conditioning == "auxiliary":
            for key in ("feature_matching", "unrolled", "info_codes"):
                if getattr(self, key):
                    raise refuse(key, f"the auxiliary classifier's term (d_conditioning: auxiliary) is built for the plain adversarial loss; {key} is not combined with it", self.d_conditioning)
        if self.pack > 1:
            if self.conditional:
                raise refuse("pack", "a packed D scores several items at once and has no single label to condition on; use pack: 1 with conditional", self.pack)
            if self.d_norm == "virtual_batch":
                raise refuse("pack", "virtual batch norm's reference batch is of single items; use d_norm batch, instance or none with pack", self.pack)
        if self.latent_mixture is not None and self.g_norm == "virtual_batch":
            raise refuse("latent_mixture", "virtual batch norm in G fixes its reference z once, but a learned mixture latent moves; use g_norm batch, instance, layer or none", self.latent_mixture.model_dump())
        refusal = info_refusal(self)
        if refusal is not None:
            raise refuse(refusal[0], refusal[1], self.info_codes.model_dump())
        if self.checkpoint_swap is not None and self.checkpoint_swap.duration >= self.checkpoint_swap.every:
            raise refuse("checkpoint_swap.duration", f"must be shorter than checkpoint_swap.every ({self.checkpoint_swap.every})", self.checkpoint_swap.duration)
        return self


@register("gan")
class GAN(Method):
    """A generator G and a discriminator (critic) D trained adversarially; every trick a config key.

    Code names and the papers' symbols::

        z                     z ~ N(0, I) of dimension latent_dim; with latent_mixture
                              z = mu_c + sigma_c * eps, c uniform over N learned components,
                              eps ~ N(0, I), std_penalty lambda of (1/N) sum ||1 - sigma_i||^2
                              (DeLiGAN, Gurumurthy et al. 2017, section 3)
        generator             G(z[, y]); DCGANGenerator or MLPGenerator
        discriminator         D(x[, y]) -> raw scores (logits; the critic f_w for WGAN)
        loss                  minimax: G minimises E log(1 - D(G(z))) (Goodfellow eq. 1)
                              non-saturating: G minimises -E log D(G(z)) (Goodfellow, section 3)
                              lsgan: a=0, b=c=1 least squares (Mao eq. 2)
                              wgan: E f_w(G(z)) - E f_w(x), w clipped to [-c, c] (Arjovsky alg. 1)
                              wgan-gp: same plus lambda E (||grad f(x_hat)||_2 - 1)^2 (Gulrajani eq. 3)
        d_steps               k (Goodfellow alg. 1) / n_critic (Arjovsky, Gulrajani)
        clip_value            c (Arjovsky, 0.01)
        gp_weight             lambda (Gulrajani, 10)
        label_smoothing       D's real target alpha (Salimans section 3.4, 0.9); fake target 0
        feature_matching      ||E_x f(x) - E_z f(G(z))||_2^2, f = D's last hidden layer (Salimans 3.1)
        minibatch_kernels     B of T in R^(A x B x C), C = 5 (Salimans 3.2)
        pack                  m, PacGAN: D(x_1, ..., x_m) scores m stacked items (Lin et al. 2018)
        g_norm / d_norm       batch | virtual_batch (reference batch R, |R| = vbn_reference;
                              Salimans 3.5) | instance | none
        historical_averaging  weight of ||theta - (1/t) sum_i theta_i||^2 (Salimans 3.3)
        replay                size of the pool of past fakes D sees (Shrivastava 2.3)
        checkpoint_swap       every N steps snapshot G and D; from the second snapshot on swap
                              an older one of checkpoint_swap.player in for `duration` steps
        unrolled.steps        K; G's loss f_K(theta_G, theta_D) = f(theta_G, theta_D^K(theta_G, theta_D))
                              with SGD inner steps of size eta = unrolled.lr (default D's
                              learning rate) (Metz eq. 5-6); unrolled.optimizer: adam continues
                              D's Adam moments inside the graph, as the authors' code
        conditional           G(z, y), D(x, y) with y the manifest's label (Mirza and Osindero)
        d_conditioning        concat: y as one-hot maps on D's input (Mirza and Osindero);
                              projection: D(x, y) = psi(phi(x)) + embed(y)^T phi(x) (Miyato and
                              Koyama 2018, eq. 3), phi = D's last hidden layer;
                              auxiliary: AC-GAN (Odena et al. 2017), D(x) scores the image
                              alone and a class head on phi predicts P(C | x); L_C, the
                              cross-entropy, weight aux_class_weight, is added to D's loss on
                              real items (and on fakes, aux_class_fakes: the paper's eq. 2)
                              and to G's on fakes (G maximises L_C - L_S)
        mode_seeking          lambda_ms of MSGAN (Mao et al. 2019, eq. 3): G's step draws two
                              latents per real item under the same label, its adversarial
                              loss is the mean over both fakes, plus lambda_ms / (mean|G(z2) -
                              G(z1)| / mean|z2 - z1| + 1e-5) (the authors' code sums the two
                              adversarial losses: their lambda 1 is 0.5 here)
        info_codes            InfoGAN (Chen et al. 2016): G(z, c) with codes c (categorical K,
                              continuous N) drawn with z by the prior; Q on D's body predicts c;
                              weight lambda of L_I, the negative MI lower bound (eq. 5), in D's
                              (with Q) and G's steps; info_codes.q_augment: Q reads the fakes
                              through DiffAugment's transforms (not in the paper)

    Defaults per loss (keys left out): minimax / non-saturating / lsgan: Adam(2e-4,
    betas (0.5, 0.999)), k = 1 (DCGAN); wgan: RMSprop(5e-5), k = 5, c = 0.01; wgan-gp:
    Adam(1e-4, betas (0, 0.9)), k = 5, lambda = 10. Norms: DCGAN batch norm in G and D
    (none in a wgan-gp critic), MLPs none. Latent dim 100; the nets' default channels.

    One step (:meth:`train_step`), top to bottom:

    1. checkpoint swap (if configured): snapshot / swap in / restore at this step;
    2. k D steps, each on a fresh batch (the step's batch, then ``opt.next_batch()``):
       D's loss on real x and detached fakes G(z) (through the replay pool), plus the
       gradient penalty, plus historical averaging; weights clipped after the step (wgan);
    3. one G step with D frozen: the adversarial loss (or feature matching on one more
       fresh real batch, or the unrolled loss), plus historical averaging.

    Conditional fakes take the labels of the real batch they are compared with, so D
    cannot tell fakes by their class frequencies. Batches carry ``keys.IMAGE``: images
    ``(B, C, *spatial)`` in [-1, 1], or points ``(B, D)`` (``spatial_dims`` 0, MLPs only);
    and ``keys.LABEL`` ``(B,)`` when conditional.
    """

    Config = GANConfig
    batch_keys = (keys.IMAGE,)
    capabilities = frozenset({Capability.SAMPLE})
    ema_modules = ("generator",)
    inference_modules = ("generator",)

    def __init__(self, config: GANConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        self.points = data.spatial_dims == 0
        self.item_shape = (data.in_channels, *data.image_size)
        if self.points and config.architecture != "mlp":
            raise ConfigError("<config>", "model.architecture", "point data (spatial_dims 0) needs architecture: mlp")
        self.num_classes = data.num_classes if config.conditional else 0
        if config.conditional and data.num_classes < 2:
            raise ConfigError("<config>", "model.conditional", f"needs labeled data with at least 2 classes (set data.labeled: true); the data has {data.num_classes}")
        info = config.info_codes
        self.g_input_dim = config.latent_dim + (info.width if info is not None else 0)
        self.generator, self.discriminator = self._build_nets(config, data)
        clip, joint = (config.clip_value if config.loss == GANObjective.WGAN else None), config.batch_norm_batches == "joint"
        self.adversary = Adversary.from_config(config, clip_value=clip, joint=joint, feature_distance=config.feature_matching_distance)
        self.pool = ImagePool(config.replay)  # draws from the engine-seeded global RNG
        if config.latent_mixture is not None:
            self.normal_latent = None
        elif info is not None:
            self.normal_latent = InfoCodesLatent(config.latent_dim, info.categorical, info.continuous)
        else:
            self.normal_latent = StandardNormalLatent(config.latent_dim)
        self.q_augment = DiffAugment(info.q_augment) if info is not None and info.q_augment else None
        if config.historical_averaging > 0:
            self.g_average = HistoricalAverage(self.generator)
            self.d_average = HistoricalAverage(self.discriminator)
        if config.checkpoint_swap is not None:
            self.swap_history = SwapHistory()
        # Placeholder VBN references of the final shapes (a model file's real ones load strictly); on_train_start sets them.
        r = config.vbn_reference
        placeholder_labels = torch.zeros(r, dtype=torch.long) if self.num_classes else None
        if config.g_norm == "virtual_batch":
            self.generator.set_reference(torch.zeros(r, config.latent_dim), placeholder_labels)
        if config.d_norm == "virtual_batch":
            self.discriminator.set_reference(torch.zeros(r, *self.item_shape), placeholder_labels)
        fixed, n_fixed = torch.Generator().manual_seed(_FIXED_SEED), PREVIEW_POINTS if self.points else PREVIEW_IMAGES
        # the fixed noise of previews and evaluation; with a mixture latent, eps and the components (z = mu_c + sigma_c eps)
        if info is not None:  # G's whole input, the categorical code in turn along a row of the preview grid
            fixed_cat = torch.arange(n_fixed) % info.categorical if info.categorical else None
            fixed_z = self.normal_latent.draw(n_fixed, fixed, categorical=fixed_cat)
        else:
            fixed_z = torch.randn(n_fixed, config.latent_dim, generator=fixed)
        self.register_buffer("fixed_z", fixed_z, persistent=False)
        components = torch.randint(config.latent_mixture.components, (n_fixed,), generator=fixed) if config.latent_mixture else torch.zeros(0, dtype=torch.long)
        self.register_buffer("fixed_components", components, persistent=False)
        labels = torch.arange(n_fixed) % self.num_classes if self.num_classes else torch.zeros(0, dtype=torch.long)
        self.register_buffer("fixed_labels", labels, persistent=False)

    def _build_nets(self, config: GANConfig, data: DataSpec) -> tuple[nn.Module, nn.Module]:
        """G (with its mixture latent, if any) and D (packed, if ``pack`` > 1), DCGANs or MLPs."""
        d_kwargs: dict[str, Any] = dict(norm=config.d_norm, minibatch_kernels=config.minibatch_kernels, input_noise_std=config.d_input_noise, hidden_noise_std=config.d_hidden_noise)
        mixture, m = config.latent_mixture, config.pack
        if config.architecture == "mlp":
            features = math.prod(self.item_shape)
            g = MLPGenerator(self.g_input_dim, features, hidden=config.g_hidden, num_classes=self.num_classes, norm=config.g_norm, output="linear" if self.points else "tanh")
            g = Flat(g, self.item_shape, "generator")
            d = MLPDiscriminator(features * m, hidden=config.d_hidden, out_features=1, num_classes=self.num_classes, **d_kwargs)
            d = Flat(d, (m * self.item_shape[0], *self.item_shape[1:]), "discriminator")
        else:
            dims, c, size = data.spatial_dims, data.in_channels, tuple(data.image_size)
            try:
                g = DCGANGenerator(dims, self.g_input_dim, c, size, **_channels(config.g_channels), num_classes=self.num_classes, norm=config.g_norm)
            except ValueError as err:
                raise ConfigError("<config>", "model.g_channels", f"does not fit data.size {list(size)}: {err}") from None
            try:
                d = DCGANDiscriminator(dims, c * m, size, **_channels(config.d_channels), out_features=1, num_classes=self.num_classes, conditioning=config.d_conditioning, **d_kwargs)
            except ValueError as err:
                raise ConfigError("<config>", "model.d_channels", f"does not fit data.size {list(size)}: {err}") from None
        if mixture is not None:  # G and its learned latent: one module to train, average and save
            g = MixtureLatentGenerator(g, MixtureLatent(config.latent_dim, mixture.components, init_std=mixture.init_std))
        return g, self._with_info(packed_discriminator(discriminator_network(d, config), m))

    def _with_info(self, d: nn.Module) -> nn.Module:
        """D, or D with InfoGAN's Q head on its body features (``model.info_codes``; pack is 1 then)."""
        info = self.config.info_codes
        if info is None:
            return d
        with eval_mode(d), torch.no_grad():  # the width of D's body features, from one dry pass
            probe_labels = torch.zeros(2, dtype=torch.long) if self.num_classes else None
            width = d.forward_features(torch.zeros(2, *self.item_shape), probe_labels)[1].flatten(1).shape[1]
        return InfoDiscriminator(d, InfoHead(width, info.categorical, info.continuous, hidden=info.q_hidden))

    # -- engine hooks ------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        g_lr, d_lr = cfg.g_lr or cfg.lr, cfg.d_lr or cfg.lr

        def build(params, lr: float) -> torch.optim.Optimizer:
            return torch.optim.RMSprop(params, lr=lr) if cfg.optimizer == "rmsprop" else torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2))

        return {"g": build(self.generator.parameters(), g_lr), "d": build(self.discriminator.parameters(), d_lr)}

    def batches_per_step(self) -> int:
        """k batches for the D steps, plus one real batch for feature matching."""
        return self.config.d_steps + int(self.config.feature_matching)

    def reference_batch_size(self) -> int:
        """|R| real items for D's virtual batch norm (G's reference is a fixed z)."""
        return self.config.vbn_reference if self.config.d_norm == "virtual_batch" else 0

    def on_train_start(self, reference: dict[str, Any] | None, generator: torch.Generator) -> None:
        """Fix the virtual-batch-norm references: real items for D, z (and labels) from ``generator`` for G."""
        cfg = self.config
        if cfg.d_norm == "virtual_batch" and reference is not None:
            labels = reference[keys.LABEL].long() if self.num_classes else None
            self.discriminator.set_reference(reference[keys.IMAGE].float(), labels)
        if cfg.g_norm == "virtual_batch":
            z = self.prior.draw(cfg.vbn_reference, generator)
            labels = torch.randint(self.num_classes, (cfg.vbn_reference,), generator=generator).to(z.device) if self.num_classes else None
            self.generator.set_reference(z, labels)

    def num_sample_classes(self) -> int:
        return self.num_classes

    # -- the step ------------------------------------------------------------------

    def _real(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        x = batch[keys.IMAGE].float()
        labels = batch[keys.LABEL].long().to(x.device) if self.num_classes else None
        return x, labels

    @property
    def prior(self) -> nn.Module:
        """What draws G's input: G's learned mixture (trained, averaged and saved with G), N(0, I), or z with InfoGAN codes."""
        return self.generator.latent if self.config.latent_mixture is not None else self.normal_latent

    def info_terms(self, fake: Tensor, latent: Tensor, labels: Tensor | None) -> InfoTerms:
        """InfoGAN's :class:`~udl_med.losses.info.InfoTerms`: Q's prediction from ``fake`` of the codes in G's input ``latent``."""
        if self.q_augment is not None:  # model.info_codes.q_augment: Q reads augmented fakes
            fake = self.q_augment(fake)
        return info_loss(self.discriminator.predict_codes(fake, labels), self.prior.codes(latent), self.config.info_codes.categorical)

    def _fixed_latent(self, n: int) -> Tensor:
        """The first ``n`` fixed latents of previews and evaluation (through the current mixture, if any)."""
        return self.prior(self.fixed_z[:n], self.fixed_components[:n])

    def _critic(self) -> nn.Module | ClassLogitRecorder:
        """D as the adversary calls it: itself, or (AC-GAN) a recorder of its class logits."""
        return ClassLogitRecorder(self.discriminator) if self.config.d_conditioning == "auxiliary" else self.discriminator

    def _d_step(self, batch: dict[str, Any], opt: Optimization) -> tuple[DiscriminatorLoss, Tensor, Tensor | None]:
        """One D step on real ``batch`` and fresh fakes (through the replay pool): D's loss parts, its whole loss, and L_I (InfoGAN) or L_C (AC-GAN), else None."""
        cfg = self.config
        real, labels = self._real(batch)
        with torch.no_grad(), opt.autocast():
            latent = self.prior.draw(real.shape[0])
            fresh = self.generator(latent, labels)
        fake, fake_labels = replay(self.pool, fresh.float(), labels)
        info, critic = None, self._critic()
        with opt.autocast():
            parts = self.adversary.discriminator_loss(critic, real, fake, labels, fake_labels, step=getattr(opt, "global_step", None))
            loss = parts.loss
            if isinstance(critic, ClassLogitRecorder):  # AC-GAN: D's class head learns the real (and fake) classes
                info = critic.class_loss(torch.cat([labels, fake_labels]) if cfg.aux_class_fakes else labels)
                loss = loss + cfg.aux_class_weight * info
            if cfg.info_codes is not None:  # Q and D's body learn to read the codes of the fresh fakes
                info = self.info_terms(fresh.float(), latent, labels).loss
                loss = loss + cfg.info_codes.weight * info
            if cfg.historical_averaging > 0:
                loss = loss + cfg.historical_averaging * self.d_average.penalty(self.discriminator)
        opt.step("d", loss)
        self.adversary.after_discriminator_step(self.discriminator)
        if cfg.historical_averaging > 0:
            self.d_average.update(self.discriminator)
        return parts, loss, info

    def generator_loss(self, real: Tensor, labels: Tensor | None, fm_batch: dict[str, Any] | None = None, d_optimizer: torch.optim.Optimizer | None = None) -> Tensor:
        """G's loss on fresh fakes ``G(z, labels)`` (D frozen): adversarial, feature matching or unrolled.

        ``real`` and ``labels`` are the last D step's real batch (the unrolled inner steps
        use it, conditional fakes take its labels); ``fm_batch`` the separate real batch
        of feature matching; ``d_optimizer`` the real D optimizer, whose moments Adam inner
        steps continue (zeros when None). Unrolling starts from D as the step's k real D
        updates left it, so it combines with ``d_steps`` > 1. With ``mode_seeking`` G
        draws two fakes per real item, the second half under the same labels.
        """
        n, copies = real.shape[0], 2 if self.config.mode_seeking else 1
        latent = self.prior.draw(copies * n)
        labels = labels if labels is None else labels.repeat(copies)  # MSGAN: both fakes of an item share its label
        fake = self.generator(latent, labels)
        loss = self._adversarial_generator_loss(fake, real, labels, fm_batch, d_optimizer)
        if self.config.info_codes is not None:  # InfoGAN: G makes its codes readable by Q (D and Q frozen)
            loss = loss + self.config.info_codes.weight * self.info_terms(fake, latent, labels).loss
        if self.config.mode_seeking:  # MSGAN: like images from distant latents cost G
            loss = loss + self.config.mode_seeking * mode_seeking_loss(fake[:n], fake[n:], latent[:n], latent[n:])
        return loss

    def _adversarial_generator_loss(
        self, fake: Tensor, real: Tensor, labels: Tensor | None, fm_batch: dict[str, Any] | None, d_optimizer: torch.optim.Optimizer | None
    ) -> Tensor:
        """G's adversarial loss of ``fake``: the plain one, feature matching, or unrolled."""
        cfg = self.config
        if cfg.feature_matching:
            fm_real, fm_labels = self._real(fm_batch)
            with torch.no_grad():
                _, real_features = self.discriminator.forward_features(fm_real, fm_labels)
            _, fake_features = self.discriminator.forward_features(fake, labels)
            return self.adversary.feature_matching_loss(real_features, fake_features)
        if cfg.unrolled is None:
            critic = self._critic()
            loss = self.adversary.generator_loss(critic, fake, labels)
            if isinstance(critic, ClassLogitRecorder):  # AC-GAN: G makes its fakes read as their class
                loss = loss + cfg.aux_class_weight * critic.class_loss(labels)
            return loss
        second_order = not cfg.unrolled.first_order
        inner_fake = fake if second_order else fake.detach()
        state = unroll_discriminator(
            self.discriminator,
            lambda d: self.adversary.discriminator_loss(d, real, inner_fake, labels, labels).loss,
            cfg.unrolled.steps,
            cfg.unrolled.lr or cfg.d_lr or cfg.lr,
            create_graph=second_order,
            clip_value=self.adversary.clip_value,
            adam=None if cfg.unrolled.optimizer == "sgd" else ((cfg.beta1, cfg.beta2), adam_eps(d_optimizer), adam_moments(self.discriminator, d_optimizer)),
        )
        return self.adversary.generator_loss(lambda x, y: functional_call(self.discriminator, state, (x, y)), fake, labels)

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor]:
        cfg = self.config
        if cfg.checkpoint_swap is not None:
            net, name = (self.discriminator, "d") if cfg.checkpoint_swap.player == "d" else (self.generator, "g")
            checkpoint_swap(self.swap_history, net, name, opt, cfg.checkpoint_swap)

        # k discriminator steps, each on a fresh batch
        d_parts, infos = [], []
        for i in range(cfg.d_steps):
            d_batch = batch if i == 0 else opt.next_batch()
            parts, loss_d, info = self._d_step(d_batch, opt)
            d_parts.append((parts, loss_d))
            infos.append(info)
        last_real, last_labels = self._real(d_batch)

        # one generator step, D frozen
        fm_batch = opt.next_batch() if cfg.feature_matching else None
        set_requires_grad([self.discriminator], False)
        with opt.autocast():
            loss_g = self.generator_loss(last_real, last_labels, fm_batch, opt.optimizer("d"))
            if cfg.historical_averaging > 0:
                loss_g = loss_g + cfg.historical_averaging * self.g_average.penalty(self.generator)
            if cfg.latent_mixture is not None and cfg.latent_mixture.std_penalty > 0:
                loss_g = loss_g + cfg.latent_mixture.std_penalty * self.prior.std_penalty()
        opt.step("g", loss_g)
        set_requires_grad([self.discriminator], True)
        if cfg.historical_averaging > 0:
            self.g_average.update(self.generator)

        logs = {keys.LOSS_G: loss_g.detach(), **discriminator_logs(d_parts), **self.adversary.logs()}
        if cfg.info_codes is not None or cfg.d_conditioning == "auxiliary":
            logs[keys.INFO if cfg.info_codes is not None else keys.AUX_CLASS] = torch.stack([i.detach() for i in infos]).mean()
        return logs

    # -- what a trained model does ------------------------------------------------------

    def _generate(self, z: Tensor, labels: Tensor | None) -> Tensor:
        """G(z, labels) in eval mode, clamped to [-1, 1] for images."""
        with eval_mode(self.generator):
            out = self.generator(z, labels).float()
        return out if self.points else out.clamp(-1, 1)

    @property
    def latent_dim(self) -> int:
        """Width of G's input: z, then the InfoGAN codes (if any)."""
        return self.g_input_dim

    def draw_latent(self, n: int, generator: torch.Generator | None = None, code: str | None = None) -> Tensor:
        """``n`` inputs of G from the prior ``(n, latent_dim)``: z, and InfoGAN codes with the values ``code`` fixes.

        Raises:
            ValueError: ``code`` for a model without codes, or not fitting them (:func:`~udl_med.methods.info_codes.parse_code`).
        """
        if code is None:
            return self.prior.draw(n, generator)
        categorical, continuous = parse_code(code, self.config.info_codes)
        return self.prior.draw(n, generator, categorical=categorical, continuous=continuous)

    def decode_latent(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """``G(z[, labels])`` in eval mode, clamped to [-1, 1]; differentiable in ``z``."""
        return self._generate(z.to(self.fixed_z.device, torch.float32), None if labels is None else labels.to(self.fixed_z.device))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, label: int | None = None, code: str | None = None) -> Tensor:
        """``n`` samples ``G(z[, label])``, z ~ N(0, I) (or the learned mixture) from ``generator``: ``(n, C, *spatial)`` in [-1, 1] or points ``(n, D)``.

        A conditional model draws class ``label`` (uniform random classes when None); an
        InfoGAN model fixes the codes ``code`` names (:func:`udl_med.methods.info_codes.parse_code`).

        Raises:
            ValueError: ``label`` given to an unconditional model, or out of range; ``code``
                for a model without codes, or not fitting them.
        """
        z, labels = self.draw_latent(n, generator, code), None
        if not self.num_classes and label is not None:
            raise ValueError(f"method {self.name!r} was trained unconditionally (model.conditional: false): it cannot sample a given label")
        if self.num_classes and label is not None and not 0 <= int(label) < self.num_classes:
            raise ValueError(f"label {label} is out of range: the model has classes 0..{self.num_classes - 1}")
        if self.num_classes:
            labels = torch.randint(self.num_classes, (n,), generator=generator) if label is None else torch.full((n,), int(label), dtype=torch.long)
        return self._generate(z, None if labels is None else labels.to(z.device))

    @torch.no_grad()
    def preview(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Samples from the fixed z (and labels 0, 1, ... in turn): an image grid, or a point cloud ``(N, 2)``."""
        out = {"samples": self._generate(self._fixed_latent(self.fixed_z.shape[0]), self.fixed_labels if self.num_classes else None)}
        if self.points:
            out["real"] = batch[keys.IMAGE].float()
        return out

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, float]:
        """D's mean raw score on held-out real items and on fakes from the fixed z (eval mode)."""
        real, labels = self._real(batch)
        keep = real.shape[0] - real.shape[0] % self.config.pack  # a packed D scores whole groups
        real, labels = real[:keep], (labels[:keep] if labels is not None else None)
        if keep == 0:
            return {}
        n = min(real.shape[0], self.fixed_z.shape[0] - self.fixed_z.shape[0] % self.config.pack)
        fake_labels = labels[:n] if labels is not None else None
        fake = self._generate(self._fixed_latent(n), fake_labels)
        return score_metrics(self.discriminator(real, labels), self.discriminator(fake, fake_labels), wasserstein=self.config.loss in WASSERSTEIN)


def _channels(channels: tuple[int, ...] | None) -> dict[str, Any]:
    """A DCGAN net's ``channels`` keyword, or none (the net's default) for null."""
    return {} if channels is None else {"channels": channels}


__all__ = ["GAN", "GANConfig", "GANObjective"]
