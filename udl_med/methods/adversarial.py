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
from udl_med.methods.base import MethodConfig, Optimization
from udl_med.nets.gan_wrappers import Packed, SwapHistory


def refuse(key: str, problem: str, value: Any, title: str = "MethodConfig") -> ValidationError:
    """A validation error located at ``key`` (so the engine reports ``FILE: model.KEY: problem``)."""
    error = PydanticCustomError("refused_combination", problem)
    return ValidationError.from_exception_data(title, [InitErrorDetails(type=error, loc=tuple(key.split(".")), input=value)])


def _either(values: list[str]) -> str:
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


class AdversarialConfig(MethodConfig):
    """The D-side keys of every adversarial method scored with :class:`GANLoss`.

    A subclass declares its objective: a ``gan_mode: GANMode`` field (the default reading
    of :attr:`adversarial_mode`), or another field named by ``objective_key`` with
    :attr:`adversarial_mode` overridden (``gan``'s ``loss``).
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
        if mode in WASSERSTEIN_MODES and self.label_smoothing != 1.0:
            objectives = type(self).model_fields[self.objective_key].annotation
            targets = _either([m.value for m in objectives if m.value not in WASSERSTEIN_MODES])
            raise refuse(
                "label_smoothing",
                f"a Wasserstein critic ({self.objective_key} {mode.value}) has no target to smooth; use it with {targets}",
                self.label_smoothing,
            )
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


@dataclass(frozen=True)
class DiscriminatorLoss:
    """D's loss and its parts.

    Attributes:
        loss: what D minimises: ``adversarial`` plus ``gp_weight * gradient_penalty``.
        adversarial: the objective's D loss on the scores.
        real_scores, fake_scores: D's raw scores of the real and the fake batch (in the
            graph: a method may add terms on them; detach them to log).
        gradient_penalty: the WGAN-GP penalty before its weight (None when off).
    """

    loss: Tensor
    adversarial: Tensor
    real_scores: Tensor
    fake_scores: Tensor
    gradient_penalty: Tensor | None = None


class Adversary(nn.Module):
    """D's loss and G's adversarial term of one adversarial game, for any method.

    A method builds it once (:meth:`from_config`) and, each step, calls
    :meth:`discriminator_loss` with its critic and the real and (detached) fake batches,
    steps D, calls :meth:`after_discriminator_step`, then adds :meth:`generator_loss`
    (or :meth:`feature_matching_loss`) to G's loss. Every critic call of a training step
    goes through here, so this is where a D-side trick goes once for every method: a
    transform of D's inputs (applied to real and fake alike, and to G's fakes in
    :meth:`generator_loss`) in :meth:`scores` and :meth:`generator_loss`; a regulariser
    on D (a penalty on real scores' gradients) in :meth:`discriminator_loss`, with its
    key in :class:`AdversarialConfig` and its weight in :meth:`from_config`; another
    objective as a :class:`ScoreObjective` (a new :class:`GANLoss` mode).

    Args:
        objective: scores -> losses (a :class:`GANLoss`, with its real target for label
            smoothing, or a :class:`~udl_med.losses.kplus1.KPlusOneLoss`).
        gp_weight: lambda of the WGAN-GP gradient penalty (0: off).
        clip_value: c, clamp D's weights to ``[-c, c]`` after each D step (WGAN; None: off).
        joint: D scores real and fake in one batch (its batch norm sees both), not in two.
        feature_distance: ``l2`` or ``l1``, the distance of :meth:`feature_matching_loss`.

    Raises:
        ValueError: a negative ``gp_weight`` or a non-positive ``clip_value``.
    """

    def __init__(
        self,
        objective: ScoreObjective,
        *,
        gp_weight: float = 0.0,
        clip_value: float | None = None,
        joint: bool = False,
        feature_distance: Literal["l2", "l1"] = "l2",
    ) -> None:
        super().__init__()
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}")
        if clip_value is not None and not clip_value > 0:
            raise ValueError(f"clip_value must be > 0, got {clip_value}")
        self.objective = objective
        self.gp_weight = float(gp_weight)
        self.clip_value = clip_value
        self.joint = joint
        self.feature_distance = feature_distance

    @classmethod
    def from_config(cls, config: AdversarialConfig, **kwargs: Any) -> Adversary:
        """The adversary of ``config``: its objective with ``label_smoothing`` as D's real target, and the gradient penalty of wgan-gp."""
        mode = config.adversarial_mode
        gp_weight = (config.gp_weight or 0.0) if mode == GANMode.WGAN_GP else 0.0
        return cls(GANLoss(mode, real_label=config.label_smoothing), gp_weight=gp_weight, **kwargs)

    def scores(self, critic: Critic, real: Tensor, fake: Tensor, real_labels: Tensor | None = None, fake_labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """D's scores of ``real`` and ``fake`` ``(B, C, *spatial)``: one joint batch or two separate ones."""
        if self.joint:
            labels = None if real_labels is None else torch.cat([real_labels, fake_labels])
            scores = critic(torch.cat([real, fake]), labels)
            return scores[: real.shape[0]], scores[real.shape[0] :]
        return critic(real, real_labels), critic(fake, fake_labels)

    def discriminator_loss(
        self, critic: Critic, real: Tensor, fake: Tensor, real_labels: Tensor | None = None, fake_labels: Tensor | None = None
    ) -> DiscriminatorLoss:
        """D's loss on ``real`` and ``fake`` (detach ``fake`` unless differentiating through it, as unrolling does).

        The gradient penalty's interpolates are scored with ``real_labels`` (conditional
        fakes share them, except those a replay pool swapped in).
        """
        real_scores, fake_scores = self.scores(critic, real, fake, real_labels, fake_labels)
        adversarial = self.objective.discriminator_loss(real_scores, fake_scores)
        loss, penalty = adversarial, None
        if self.gp_weight > 0:
            penalty = gradient_penalty(lambda x: critic(x, real_labels), real, fake)
            loss = adversarial + self.gp_weight * penalty
        return DiscriminatorLoss(loss, adversarial, real_scores, fake_scores, penalty)

    def after_discriminator_step(self, discriminator: nn.Module) -> None:
        """Clip D's weights (WGAN); nothing otherwise."""
        if self.clip_value is not None:
            clip_weights(discriminator, self.clip_value)

    def generator_loss(self, critic: Critic, fake: Tensor, labels: Tensor | None = None) -> Tensor:
        """G's adversarial term on ``fake`` (D frozen by the caller): the objective's generator loss on ``critic(fake, labels)``."""
        return self.objective.generator_loss(critic(fake, labels))

    def feature_matching_loss(self, real_features: Tensor, fake_features: Tensor) -> Tensor:
        """``||E f(x) - E f(G(z))||`` between D's features ``(B, F...)`` of a real and a fake batch (real ones detached)."""
        return feature_matching_loss(real_features.float(), fake_features.float(), distance=self.feature_distance)


def discriminator_logs(steps: list[tuple[DiscriminatorLoss, Tensor]]) -> dict[str, Tensor]:
    """Detached means over a step's D updates ``[(parts, whole loss)]``: D's loss, its mean real and fake scores, the gradient penalty."""
    out = {
        keys.LOSS_D: torch.stack([loss.detach() for _, loss in steps]).mean(),
        keys.D_REAL: torch.stack([p.real_scores.detach().float().mean() for p, _ in steps]).mean(),
        keys.D_FAKE: torch.stack([p.fake_scores.detach().float().mean() for p, _ in steps]).mean(),
    }
    if steps[0][0].gradient_penalty is not None:
        out[keys.GRADIENT_PENALTY] = torch.stack([p.gradient_penalty.detach() for p, _ in steps]).mean()
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
    "PackingConfig",
    "ScoreObjective",
    "UnrolledConfig",
    "checkpoint_swap",
    "discriminator_logs",
    "packed_discriminator",
    "refuse",
    "replay",
    "score_metrics",
]
