"""The discriminator side every adversarial method shares, written once.

An adversarial method (``gan``, ``lapgan``, ``two_stage_gan``, ``cyclegan``, ``pix2pix``,
``semi_supervised_gan``) builds one :class:`Adversary` from its config and asks it for
D's loss and for G's adversarial term, whatever its networks look like: it hands over a
*critic* ``d(x, labels) -> scores`` (a closure that adds the method's own conditioning:
pix2pix's source image, a LAPGAN level's coarse image, a class label) and the real and
fake batches. So a D-side trick added here (an input augmentation applied to both
batches before the critic, a regulariser added to D's loss, a new adversarial objective)
reaches every method at once.

What lives here:

- :class:`AdversarialConfig`: the ``model:`` keys of the D side shared by every method
  scored with :class:`~udl_med.losses.gan.GANLoss` (``gp_weight``, ``label_smoothing``;
  the objective itself is ``gan_mode``, or ``loss`` in ``gan``) and their refusals;
  :class:`PackingConfig` adds PacGAN's ``pack`` and checks it against
  ``train.batch_size`` when the run config loads.
- :class:`Adversary`: the adversarial loss and its targets (one-sided label smoothing,
  Salimans et al. 2016, https://arxiv.org/abs/1606.03498, section 3.4), the WGAN-GP
  gradient penalty (Gulrajani et al. 2017, https://arxiv.org/abs/1704.00028), WGAN
  weight clipping, D seeing real and fake jointly or separately, and feature matching
  (Salimans et al. 2016, section 3.1).
- D-side augmentation (``model.d_augment``): DiffAugment (Zhao et al. 2020,
  https://arxiv.org/abs/2006.10738; :mod:`udl_med.nets.diffaugment`) or ADA (Karras et al.
  2020, https://arxiv.org/abs/2006.06676; :mod:`udl_med.nets.ada`) on every image D sees,
  real and generated, in D's loss and in G's; R1 on real data (Mescheder et al. 2018,
  https://arxiv.org/abs/1801.04406) with lazy regularisation (StyleGAN2, Karras et al.
  2020, https://arxiv.org/abs/1912.04958); spectral normalisation of D (Miyato et al.
  2018, https://arxiv.org/abs/1802.05957; :func:`discriminator_network`); the refusal of
  ``data.augment`` (:meth:`DiscriminatorSideConfig.check_data`).
- :func:`packed_discriminator` (PacGAN, Lin et al. 2018, https://arxiv.org/abs/1712.04086),
  :func:`replay` (the image pool of past fakes, Shrivastava et al. 2017,
  https://arxiv.org/abs/1612.07828), :func:`checkpoint_swap`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch
from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from torch import Tensor, nn

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.losses.gan import WASSERSTEIN_MODES, Critic, GANLoss, GANMode, clip_weights, feature_matching_loss, gradient_penalty
from udl_med.losses.image_pool import ImagePool
from udl_med.losses.kplus1 import KPlusOneLoss
from udl_med.methods.base import MethodConfig, Optimization
from udl_med.nets.ada import ADA_DEFAULT_POLICY, ADA_POLICIES, AdaptiveAugment
from udl_med.nets.diffaugment import DIFFAUGMENT_POLICIES, DiffAugment
from udl_med.nets.gan_wrappers import Packed, SwapHistory


def refuse(key: str, problem: str, value: Any, title: str = "MethodConfig") -> ValidationError:
    """A validation error located at ``key`` (so the engine reports ``FILE: model.KEY: problem``)."""
    error = PydanticCustomError("refused_combination", problem)
    return ValidationError.from_exception_data(title, [InitErrorDetails(type=error, loc=tuple(key.split(".")), input=value)])


def _either(values: list[str]) -> str:
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


_ADA_KEYS = ("ada_p", "ada_target", "ada_interval", "ada_kimg")


class DiscriminatorSideConfig(MethodConfig):
    """The ``model:`` keys of what D sees and how it is regularised, in every adversarial method.

    - ``d_augment``: ``none``; ``diffaugment`` (the same differentiable transforms drawn
      for every real and generated image D sees, in D's loss and in G's: translation,
      cutout, brightness/contrast of the normalised window); ``ada`` (a pipeline of
      anatomically safe transforms, each applied with probability p, p tuned online
      towards ``ada_target``). Augmenting only the real items (``data.augment``) would
      teach G the augmented distribution; augmenting what D sees does not.
    - ``d_augment_policy``: the transforms (null: DiffAugment's three; ADA's six safe ones,
      flips only when listed).
    - ``ada_p``, ``ada_target``, ``ada_interval``, ``ada_kimg``: ADA's starting p, r_t's
      target (null: p fixed at ``ada_p``), steps between adjustments, and thousands of real
      images over which p can move from 0 to 1.
    - ``r1_weight``, ``r1_every``: gamma of R1 = gamma/2 E||grad_x D(x)||^2 on real data,
      evaluated every ``r1_every`` steps and scaled by it (lazy regularisation).
    - ``spectral_norm``: every convolution and linear layer of D divided by its largest
      singular value (one power iteration per step).

    A subclass that cannot take spectral normalisation sets ``spectral_norm_refusal`` to
    the reason; one whose data may be augmented sets ``data_augment_allowed`` to why.
    """

    spectral_norm_refusal: ClassVar[str | None] = None
    data_augment_allowed: ClassVar[str | None] = None

    d_augment: Literal["none", "diffaugment", "ada"] = Field(
        "none", description="augment every image D sees, real and generated: none, diffaugment or ada (anatomically safe, adaptive p)"
    )
    d_augment_policy: tuple[str, ...] | None = Field(
        None,
        min_length=1,
        description="the transforms: diffaugment takes translation, cutout, intensity; ada takes flip, translation, scaling, rotation, intensity, noise, cutout (null: all but flip)",
    )
    ada_p: float = Field(0.0, ge=0.0, le=1.0, description="ADA's probability p at the start (the fixed p when ada_target is null)")
    ada_target: float | None = Field(0.6, gt=0.0, lt=1.0, description="ADA: the target of r_t = E[sign(D(x_real))] that p is tuned towards (null: p fixed)")
    ada_interval: int = Field(4, ge=1, description="ADA: training steps between adjustments of p")
    ada_kimg: float = Field(20.0, gt=0.0, description="ADA: thousands of real images over which p can move from 0 to 1 (ADA's paper: 500, for far longer runs)")
    r1_weight: float = Field(0.0, ge=0.0, description="gamma of the R1 penalty gamma/2 E||grad_x D(x)||^2 on real data (0: off; medical StyleGAN2 recipes use about 8)")
    r1_every: int = Field(16, ge=1, description="lazy regularisation: R1 every this many steps, scaled by it (StyleGAN2: 16)")
    spectral_norm: bool = Field(False, description="spectral normalisation of every convolution and linear layer of D")

    @model_validator(mode="after")
    def _refuse_side(self) -> DiscriminatorSideConfig:
        given = self.model_fields_set
        fields = type(self).model_fields

        def changed(key: str) -> bool:  # given with a value other than the default (a saved config holds every key)
            return key in given and getattr(self, key) != fields[key].default

        if self.d_augment != "ada":
            for key in _ADA_KEYS:
                if changed(key):
                    raise refuse(key, f"is a key of ADA; set d_augment: ada to use it (d_augment is {self.d_augment})", getattr(self, key))
        if self.d_augment == "none" and self.d_augment_policy is not None:
            raise refuse("d_augment_policy", "chooses the transforms of d_augment, which is none; set d_augment: diffaugment or ada", list(self.d_augment_policy))
        if self.d_augment_policy is not None:
            valid = DIFFAUGMENT_POLICIES if self.d_augment == "diffaugment" else ADA_POLICIES
            for i, name in enumerate(self.d_augment_policy):
                if name not in valid:
                    hint = " (flips are ADA's, and only when asked: anatomy is not left-right symmetric)" if name == "flip" else ""
                    raise refuse(f"d_augment_policy.{i}", f"{name!r} is not a {self.d_augment} transform; valid: {', '.join(valid)}{hint}", name)
                if name in self.d_augment_policy[:i]:
                    raise refuse(f"d_augment_policy.{i}", f"{name!r} is listed twice", name)
        if self.d_augment == "ada" and self.ada_target is None and "ada_p" not in given:
            raise refuse("ada_target", "null keeps p fixed at ada_p, which is left at 0 (no augmentation); give ada_p", None)
        if changed("r1_every") and self.r1_weight == 0:
            raise refuse("r1_every", "paces R1, which is off (r1_weight 0); set r1_weight", self.r1_every)
        if self.spectral_norm and self.spectral_norm_refusal:
            raise refuse("spectral_norm", self.spectral_norm_refusal, True)
        return self

    def check_data(self, data: Any) -> None:
        """Refuse ``data.augment``: it transforms only the real items, so G would learn the augmented distribution."""
        if getattr(data, "augment", ()) and self.data_augment_allowed is None:
            raise ConfigError(
                "<config>",
                "data.augment",
                "transforms only the real items, so an adversarial generator learns the augmented distribution (a flipped "
                "abdomen has its liver on the left); augment what D sees, real and generated alike, with model.d_augment: diffaugment or ada",
            )

    def augmenter(self) -> nn.Module | None:
        """The module that augments D's inputs (:class:`DiffAugment`, :class:`AdaptiveAugment`), or None."""
        if self.d_augment == "diffaugment":
            return DiffAugment(self.d_augment_policy or DIFFAUGMENT_POLICIES)
        if self.d_augment == "ada":
            return AdaptiveAugment(self.d_augment_policy or ADA_DEFAULT_POLICY, self.ada_p, self.ada_target, self.ada_interval, self.ada_kimg)
        return None


class AdversarialConfig(DiscriminatorSideConfig):
    """The D-side keys of every adversarial method scored with :class:`GANLoss`.

    A subclass declares its objective: a ``gan_mode: GANMode`` field (the default reading
    of :attr:`adversarial_mode`), or another field named by ``objective_key`` with
    :attr:`adversarial_mode` overridden (``gan``'s ``loss``). The augmentation and
    regularisers of :class:`DiscriminatorSideConfig` come with it.
    """

    objective_key: ClassVar[str] = "gan_mode"

    gp_weight: float = Field(10.0, ge=0.0, description="lambda, gradient-penalty weight (wgan-gp only)")
    label_smoothing: float = Field(1.0, gt=0.0, le=1.0, description="D's target for real data; 0.9 is one-sided label smoothing")

    @property
    def adversarial_mode(self) -> GANMode:
        """The adversarial objective as a :class:`GANMode`."""
        return GANMode(self.gan_mode)

    @model_validator(mode="after")
    def _refuse_adversarial(self) -> AdversarialConfig:
        mode = self.adversarial_mode
        untargeted = WASSERSTEIN_MODES | {GANMode.HINGE}
        if mode in untargeted and self.label_smoothing != 1.0:
            objectives = type(self).model_fields[self.objective_key].annotation
            targets = _either([m.value for m in objectives if m.value not in untargeted])
            kind = "a hinge loss (margins, not targets)" if mode == GANMode.HINGE else "a Wasserstein critic"
            raise refuse(
                "label_smoothing",
                f"{kind} ({self.objective_key} {mode.value}) has no target to smooth; use it with {targets}",
                self.label_smoothing,
            )
        if mode in WASSERSTEIN_MODES and self.d_augment == "ada" and self.ada_target is not None:
            raise refuse(
                "ada_target",
                f"ADA tunes p from r_t = E[sign(D(x_real))], which needs a classifier's scores; a Wasserstein critic ({self.objective_key} {mode.value}) has none: fix p (ada_target: null, ada_p) or use d_augment: diffaugment",
                self.ada_target,
            )
        if mode == GANMode.WGAN_GP and self.r1_weight > 0:
            raise refuse("r1_weight", f"{self.objective_key} wgan-gp already penalises D's gradients (gp_weight); use R1 with the other objectives", self.r1_weight)
        return self


class PackingConfig(AdversarialConfig):
    """:class:`AdversarialConfig` plus PacGAN's ``pack``: D scores ``m`` real or ``m`` fake items at once."""

    pack: int = Field(1, ge=1, description="m, PacGAN packing: D scores m real or m fake items at once (1: off)")

    @model_validator(mode="after")
    def _refuse_packing(self) -> PackingConfig:
        if self.pack > 1 and self.adversarial_mode == GANMode.WGAN_GP:
            raise refuse(
                "pack",
                "the gradient penalty is per item, a packed critic scores groups of items; use pack with minimax, non-saturating, lsgan or wgan",
                self.pack,
            )
        return self

    def check_run(self, train: Any) -> None:
        """Refuse a ``train.batch_size`` that is not a multiple of ``pack`` (D scores whole groups)."""
        if train.batch_size % self.pack:
            raise ConfigError(
                "<config>", "model.pack", f"{self.pack} must divide train.batch_size ({train.batch_size}): D scores groups of {self.pack} items"
            )


def packed_discriminator(net: nn.Module, pack: int) -> nn.Module:
    """``net`` as PacGAN's packed D (:class:`~udl_med.nets.gan_wrappers.Packed`) when ``pack`` > 1; build ``net`` for ``pack`` times the channels."""
    return Packed(net, pack) if pack > 1 else net


class ScoreObjective(Protocol):
    """What turns D's scores into losses: :class:`GANLoss`, or :class:`~udl_med.losses.kplus1.KPlusOneLoss`."""

    def discriminator_loss(self, real_scores: Tensor, fake_scores: Tensor) -> Tensor: ...

    def generator_loss(self, fake_scores: Tensor) -> Tensor: ...


def discriminator_network(net: nn.Module, config: DiscriminatorSideConfig) -> nn.Module:
    """``net`` (a discriminator) with ``model.spectral_norm``: every convolution, transposed convolution and linear weight spectrally normalised.

    :func:`torch.nn.utils.parametrizations.spectral_norm` (Miyato et al. 2018): W / sigma(W),
    sigma estimated by one power iteration per training forward pass. Call it when
    building D, before its optimizer.
    """
    if not config.spectral_norm:
        return net
    layers = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
    for module in list(net.modules()):
        if isinstance(module, layers) and isinstance(getattr(module, "weight", None), nn.Parameter):
            nn.utils.parametrizations.spectral_norm(module)
    return net


@dataclass(frozen=True)
class DiscriminatorLoss:
    """D's loss and its parts.

    Attributes:
        loss: what D minimises: ``adversarial`` plus ``gp_weight * gradient_penalty``
            plus ``r1_weight / 2 * r1_every * r1`` at the steps R1 is due.
        adversarial: the objective's D loss on the scores.
        real_scores, fake_scores: D's raw scores of the (augmented) real and fake batch
            (in the graph: a method may add terms on them; detach them to log).
        gradient_penalty: the WGAN-GP penalty before its weight (None when off).
        r1: ``E ||grad_x D(T(x))||^2`` on the real batch before its weight (None when not due).
    """

    loss: Tensor
    adversarial: Tensor
    real_scores: Tensor
    fake_scores: Tensor
    gradient_penalty: Tensor | None = None
    r1: Tensor | None = None


class Adversary(nn.Module):
    """D's loss and G's adversarial term of one adversarial game, for any method.

    A method builds it once (:meth:`from_config`) and, each step, calls
    :meth:`discriminator_loss` with its critic and the real and (detached) fake batches,
    steps D, calls :meth:`after_discriminator_step`, then adds :meth:`generator_loss`
    (or :meth:`feature_matching_loss`) to G's loss, and logs :meth:`logs`. Every critic
    call of a training step goes through here, so this is where a D-side trick goes once
    for every method: the augmentation of D's inputs (applied to real and fake alike, and
    to G's fakes in :meth:`generator_loss`) in :meth:`scores`; a regulariser on D in
    :meth:`discriminator_loss`, with its key in :class:`DiscriminatorSideConfig` and its
    weight in :meth:`from_config`; another objective as a :class:`ScoreObjective`.

    A critic is ``critic(x, labels)``; a method whose D also sees an image beside ``x``
    (pix2pix's source, a LAPGAN level's coarse image) passes it as ``condition`` and a
    critic ``critic(x, labels, condition)``: the augmentation then transforms ``x`` and its
    condition together, one draw per item, so a pair stays aligned.

    Args:
        objective: scores -> losses (a :class:`GANLoss`, with its real target for label
            smoothing, or a :class:`~udl_med.losses.kplus1.KPlusOneLoss`).
        gp_weight: lambda of the WGAN-GP gradient penalty (0: off).
        clip_value: c, clamp D's weights to ``[-c, c]`` after each D step (WGAN; None: off).
        joint: D scores real and fake in one batch (its batch norm sees both), not in two.
        feature_distance: ``l2`` or ``l1``, the distance of :meth:`feature_matching_loss`.
        augment: the transform of every image D sees (:class:`~udl_med.nets.diffaugment.DiffAugment`,
            :class:`~udl_med.nets.ada.AdaptiveAugment`), drawn per item; None: off.
        r1_weight: gamma of R1 (0: off).
        r1_every: R1 every this many steps, scaled by it (lazy regularisation).

    Raises:
        ValueError: a negative ``gp_weight`` or ``r1_weight``, a non-positive ``clip_value`` or ``r1_every``.
    """

    def __init__(
        self,
        objective: ScoreObjective,
        *,
        gp_weight: float = 0.0,
        clip_value: float | None = None,
        joint: bool = False,
        feature_distance: Literal["l2", "l1"] = "l2",
        augment: nn.Module | None = None,
        r1_weight: float = 0.0,
        r1_every: int = 1,
    ) -> None:
        super().__init__()
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}")
        if clip_value is not None and not clip_value > 0:
            raise ValueError(f"clip_value must be > 0, got {clip_value}")
        if r1_weight < 0 or r1_every < 1:
            raise ValueError(f"r1_weight must be >= 0 and r1_every >= 1, got {r1_weight} and {r1_every}")
        self.objective = objective
        self.gp_weight = float(gp_weight)
        self.clip_value = clip_value
        self.joint = joint
        self.feature_distance = feature_distance
        self.augment = augment
        self.r1_weight = float(r1_weight)
        self.r1_every = int(r1_every)

    @classmethod
    def from_config(cls, config: DiscriminatorSideConfig, objective: ScoreObjective | None = None, **kwargs: Any) -> Adversary:
        """The adversary of ``config``: its objective (``label_smoothing`` as D's real target; or ``objective``), wgan-gp's penalty, the augmentation and R1."""
        side = dict(augment=config.augmenter(), r1_weight=config.r1_weight, r1_every=config.r1_every)
        if objective is not None:
            return cls(objective, **side, **kwargs)
        mode = config.adversarial_mode
        gp_weight = (config.gp_weight or 0.0) if mode == GANMode.WGAN_GP else 0.0
        return cls(GANLoss(mode, real_label=config.label_smoothing), gp_weight=gp_weight, **side, **kwargs)

    # -- what D sees ------------------------------------------------------------------

    def view(self, x: Tensor, condition: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``(T(x), T(condition))`` with one draw per item for ``x`` and its condition (identity without augmentation)."""
        if self.augment is None:
            return x, condition
        if condition is None:
            return self.augment(x), None
        both = self.augment(torch.cat([x, condition], 1))
        return both[:, : x.shape[1]], both[:, x.shape[1] :]

    @staticmethod
    def _call(critic: Critic, x: Tensor, labels: Tensor | None, condition: Tensor | None) -> Tensor:
        return critic(x, labels) if condition is None else critic(x, labels, condition)

    def scores(
        self,
        critic: Critic,
        real: Tensor,
        fake: Tensor,
        real_labels: Tensor | None = None,
        fake_labels: Tensor | None = None,
        condition: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """D's scores of ``T(real)`` and ``T(fake)`` ``(B, C, *spatial)``: one joint batch or two separate ones.

        Both batches pass the augmentation in one call, so each item gets its own draw of
        the same transforms; ``condition`` (the image D sees beside both, or None) is
        transformed with each item's draw.
        """
        n = real.shape[0]
        if self.augment is None and not self.joint:  # as they are, one call each
            return self._call(critic, real, real_labels, condition), self._call(critic, fake, fake_labels, condition)
        both = None if condition is None else torch.cat([condition, condition])
        seen, seen_condition = self.view(torch.cat([real, fake]), both)
        real_c, fake_c = (None, None) if seen_condition is None else (seen_condition[:n], seen_condition[n:])
        if self.joint:
            labels = None if real_labels is None else torch.cat([real_labels, fake_labels])
            scores = self._call(critic, seen, labels, seen_condition)
            return scores[:n], scores[n:]
        return self._call(critic, seen[:n], real_labels, real_c), self._call(critic, seen[n:], fake_labels, fake_c)

    # -- the losses -------------------------------------------------------------------

    def r1_due(self, step: int | None) -> bool:
        """Whether D's loss at training ``step`` carries R1 (lazy: every ``r1_every`` steps; never when the step is unknown)."""
        return self.r1_weight > 0 and step is not None and step % self.r1_every == 0

    def discriminator_loss(
        self,
        critic: Critic,
        real: Tensor,
        fake: Tensor,
        real_labels: Tensor | None = None,
        fake_labels: Tensor | None = None,
        *,
        condition: Tensor | None = None,
        step: int | None = None,
    ) -> DiscriminatorLoss:
        """D's loss on ``real`` and ``fake`` (detach ``fake`` unless differentiating through it, as unrolling does).

        ``step`` is the training step (``opt.global_step``) of a real D update: R1 is added
        when due and ADA's controller sees the real scores; None (simulated updates,
        unrolling) does neither. R1 is ``E ||grad_x D(T(x))||^2`` with respect to the real
        images before augmentation (as StyleGAN2-ADA), added as
        ``r1_weight / 2 * r1_every * R1``. The gradient penalty's interpolates are the
        un-augmented ones, scored with ``real_labels`` (conditional fakes share them,
        except those a replay pool swapped in).
        """
        due = self.r1_due(step)
        if due:
            real = real.detach().requires_grad_(True)
        real_scores, fake_scores = self.scores(critic, real, fake, real_labels, fake_labels, condition)
        adversarial = self.objective.discriminator_loss(real_scores, fake_scores)
        loss, penalty, r1 = adversarial, None, None
        if self.gp_weight > 0:
            penalty = gradient_penalty(lambda x: self._call(critic, x, real_labels, condition), real, fake)
            loss = loss + self.gp_weight * penalty
        if due:
            (grad,) = torch.autograd.grad(real_scores.float().sum(), real, create_graph=True)
            r1 = grad.float().square().flatten(1).sum(1).mean()
            loss = loss + (self.r1_weight / 2 * self.r1_every) * r1
        if isinstance(self.augment, AdaptiveAugment) and step is not None:
            self.augment.observe(self.decision(real_scores), real.shape[0], step)
        return DiscriminatorLoss(loss, adversarial, real_scores, fake_scores, penalty, r1)

    def decision(self, scores: Tensor) -> Tensor:
        """D's scores centred on its decision boundary (> 0: "real"): logits and hinge scores as they are, least squares minus the targets' midpoint, K+1's log-sum-exp of the class logits."""
        if isinstance(self.objective, KPlusOneLoss):
            return torch.logsumexp(scores.float(), dim=1)
        if isinstance(self.objective, GANLoss) and self.objective.mode == GANMode.LSGAN:
            return scores.float() - (self.objective.real_label + self.objective.fake_label) / 2
        return scores.float()

    def after_discriminator_step(self, discriminator: nn.Module) -> None:
        """Clip D's weights (WGAN); nothing otherwise."""
        if self.clip_value is not None:
            clip_weights(discriminator, self.clip_value)

    def generator_loss(self, critic: Critic, fake: Tensor, labels: Tensor | None = None, *, condition: Tensor | None = None) -> Tensor:
        """G's adversarial term on ``fake`` (D frozen by the caller): the objective's generator loss on D's scores of ``T(fake)`` (G's gradient flows through T)."""
        seen, seen_condition = self.view(fake, condition)
        return self.objective.generator_loss(self._call(critic, seen, labels, seen_condition))

    def feature_matching_loss(self, real_features: Tensor, fake_features: Tensor) -> Tensor:
        """``||E f(x) - E f(G(z))||`` between D's features ``(B, F...)`` of a real and a fake batch (real ones detached)."""
        return feature_matching_loss(real_features.float(), fake_features.float(), distance=self.feature_distance)

    def logs(self) -> dict[str, Tensor]:
        """What a method's step reports of the D side: ADA's p and its last r_t (nothing without ADA)."""
        if isinstance(self.augment, AdaptiveAugment):
            return {keys.ADA_P: self.augment.p.detach().float(), keys.ADA_RT: self.augment.rt.detach().float()}
        return {}


def discriminator_logs(steps: list[tuple[DiscriminatorLoss, Tensor]]) -> dict[str, Tensor]:
    """Detached means over a step's D updates ``[(parts, whole loss)]``: D's loss, its mean real and fake scores, the gradient penalty."""
    out = {
        keys.LOSS_D: torch.stack([loss.detach() for _, loss in steps]).mean(),
        keys.D_REAL: torch.stack([p.real_scores.detach().float().mean() for p, _ in steps]).mean(),
        keys.D_FAKE: torch.stack([p.fake_scores.detach().float().mean() for p, _ in steps]).mean(),
    }
    if steps[0][0].gradient_penalty is not None:
        out[keys.GRADIENT_PENALTY] = torch.stack([p.gradient_penalty.detach() for p, _ in steps]).mean()
    r1 = [p.r1.detach() for p, _ in steps if p.r1 is not None]
    if r1:
        out[keys.R1] = torch.stack(r1).mean()
    return out


def score_metrics(real_scores: Tensor, fake_scores: Tensor, wasserstein: bool) -> dict[str, float]:
    """Held-out D metrics from raw scores of real and fake items: mean scores, and the critic's W estimate or D's accuracy.

    A Wasserstein critic's ``E f(x) - E f(G(z))`` estimates ``W(p_data, p_g)``; a
    classifier's accuracy counts real scored > 0 and fakes scored < 0 (logits).
    """
    real_scores, fake_scores = real_scores.float(), fake_scores.float()
    out = {keys.D_REAL: float(real_scores.mean()), keys.D_FAKE: float(fake_scores.mean())}
    if wasserstein:
        out[keys.WASSERSTEIN] = out[keys.D_REAL] - out[keys.D_FAKE]
    else:
        out[keys.D_ACCURACY] = float(((real_scores > 0).float().mean() + (fake_scores < 0).float().mean()) / 2)
    return out


def replay(pool: ImagePool, fake: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Fakes ``(B, C, *spatial)`` (and their labels ``(B,)``) drawn through an experience-replay ``pool``.

    A label rides along as one extra channel, so a replayed fake keeps the class it was
    generated for. A pool of size 0 returns its inputs.
    """
    if pool.pool_size == 0:
        return fake, labels
    if labels is None:
        return pool.query(fake), None
    tag = labels.to(fake.dtype).reshape(-1, *([1] * (fake.ndim - 1))).expand(-1, 1, *fake.shape[2:])
    mixed = pool.query(torch.cat([fake, tag], 1))
    tags = mixed[:, -1]
    return mixed[:, :-1], tags.reshape(tags.shape[0], -1)[:, 0].round().long()


class CheckpointSwapConfig(MethodConfig):
    """``model.checkpoint_swap``: every ``every`` steps snapshot G and D; swap an old one in for ``duration`` steps."""

    every: int = Field(..., ge=2, description="steps between snapshots (and swaps)")
    duration: int = Field(..., ge=1, description="steps the old snapshot stays swapped in")
    player: Literal["d", "g"] = Field("d", description="which network is swapped: the old D trains G, or the old G trains D")
    keep: int = Field(5, ge=1, description="snapshots kept besides the newest; the swapped-in one is drawn among them")


class UnrolledConfig(MethodConfig):
    """``model.unrolled``: G's loss through ``steps`` simulated D updates (Metz et al. 2017; :mod:`udl_med.losses.unrolled`)."""

    steps: int = Field(..., ge=1, description="K, simulated D updates")
    first_order: bool = Field(False, description="train G against D updated K times with G detached (no second derivatives)")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="inner steps: SGD, or Adam continuing from the D optimizer's moments")
    lr: float | None = Field(
        None, gt=0.0, description="inner step size (null: D's learning rate); SGD moves D by lr * grad, much less than Adam at the same lr"
    )


def checkpoint_swap(history: SwapHistory, net: nn.Module, optimizer: str, opt: Optimization, swap: CheckpointSwapConfig) -> None:
    """At this step: restore the live ``net`` after a swap; every ``every`` steps snapshot it and swap an old one in.

    Snapshots are taken at steps ``every, 2 every, ...``; from the second one on, each of
    them swaps in a snapshot drawn among the ``keep`` older ones (weights and the state of
    ``net``'s optimizer, named ``optimizer``) for ``duration`` steps, during which the
    opponent trains against it and it trains too; then the current weights and optimizer
    state come back and those ``duration`` updates are discarded. A run that ends inside a
    swap keeps the swapped-in network: end runs on a multiple of ``every`` or after
    ``duration`` more steps.
    """
    step = opt.global_step
    if history.live is not None and step >= history.until:
        net.load_state_dict(history.live["weights"])
        opt.restore(history.live["optimizer"])
        history.live, history.until = None, -1
    if step == 0 or step % swap.every or history.live is not None:
        return
    current = {"step": step, "weights": {k: v.detach().clone() for k, v in net.state_dict().items()}, "optimizer": opt.snapshot(optimizer)}
    older = history.snapshots[-swap.keep :]
    if older:
        # drawn from the step alone: every rank of a distributed run swaps in the same snapshot
        pick = torch.Generator().manual_seed(step)
        chosen = older[int(torch.randint(len(older), (), generator=pick).item())]
        history.live = current
        history.until = step + swap.duration
        net.load_state_dict(chosen["weights"])
        opt.restore(chosen["optimizer"])
    history.snapshots = (history.snapshots + [current])[-(swap.keep + 1) :]


__all__ = [
    "AdversarialConfig",
    "Adversary",
    "CheckpointSwapConfig",
    "DiscriminatorLoss",
    "DiscriminatorSideConfig",
    "PackingConfig",
    "ScoreObjective",
    "UnrolledConfig",
    "checkpoint_swap",
    "discriminator_logs",
    "discriminator_network",
    "packed_discriminator",
    "refuse",
    "replay",
    "score_metrics",
]
