"""Adversarial losses and the L1 losses of image-to-image translation.

Shared by every GAN in udl-med (CycleGAN, pix2pix, the conditional and K+1 GANs).
A discriminator returns raw scores (logits for ``vanilla``/``non-saturating``/``minimax``,
real values for ``lsgan``, ``wgan`` and ``wgan-gp``) of any shape ``(B, ...)``: one score
per image or one per patch (PatchGAN). :class:`GANLoss` turns them into the generator's
and the discriminator's objectives:

- ``lsgan``: least squares, Mao et al. 2017, "Least Squares Generative Adversarial
  Networks" (https://arxiv.org/abs/1611.04076); CycleGAN's default.
- ``vanilla`` (``non-saturating`` is the same loss under its descriptive name): the
  non-saturating binary cross-entropy of Goodfellow et al. 2014 (the generator minimises
  ``-log D(G(z))``); pix2pix's default.
- ``minimax``: the original saturating objective, the generator minimises
  ``log(1 - D(G(z)))``; kept for comparison, it trains poorly.
- ``wgan``: Wasserstein critic with weight clipping, Arjovsky et al. 2017,
  "Wasserstein GAN" (https://arxiv.org/abs/1701.07875): critic loss
  ``mean(D(fake)) - mean(D(real))``, generator loss ``-mean(D(fake))``; call
  :func:`clip_weights` on the critic after each of its steps.
- ``hinge``: the hinge loss, Lim & Ye 2017, "Geometric GAN"
  (https://arxiv.org/abs/1705.02894), Miyato et al. 2018 (SN-GAN): D minimises
  ``E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]``, G minimises ``-E[D(G(z))]``; no targets,
  and D's loss is not halved.
- ``wgan-gp``: Wasserstein critic with gradient penalty, Gulrajani et al. 2017,
  "Improved Training of Wasserstein GANs" (https://arxiv.org/abs/1704.00028); add
  :func:`gradient_penalty` to the critic's loss.

The discriminator loss of ``lsgan``/``vanilla``/``minimax`` is halved as in
pytorch-CycleGAN-and-pix2pix, which slows D relative to G.

One-sided label smoothing (Salimans et al. 2016, "Improved Techniques for Training
GANs", https://arxiv.org/abs/1606.03498, section 3.4): ``GANLoss(real_label=0.9)``
changes only the discriminator's target for real data; the generator always targets 1.

Also here: :func:`feature_matching_loss` (Salimans et al. 2016, section 3.1) and
:func:`clip_weights` (WGAN).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.utils import StrEnum
from torch import Tensor, nn

from udl_med.losses.reduction import check_reduction as _check_reduction, reduce as _reduce

#: ``d(x, labels) -> scores``: a discriminator, or a functional copy of it with other parameters
Critic = Callable[[Tensor, Tensor | None], Tensor]


class GANMode(StrEnum):
    """The adversarial objectives :class:`GANLoss` implements."""

    LSGAN = "lsgan"
    VANILLA = "vanilla"
    NON_SATURATING = "non-saturating"
    MINIMAX = "minimax"
    WGAN = "wgan"
    WGAN_GP = "wgan-gp"
    HINGE = "hinge"


#: the modes whose discriminator is a Wasserstein critic (no targets, no sigmoid)
WASSERSTEIN_MODES = frozenset({GANMode.WGAN, GANMode.WGAN_GP})
#: the modes scored with binary cross-entropy on logits
BCE_MODES = frozenset({GANMode.VANILLA, GANMode.NON_SATURATING, GANMode.MINIMAX})


def parse_gan_mode(value: str | GANMode) -> GANMode:
    """Return ``value`` as a :class:`GANMode`.

    Raises:
        ValueError: ``value`` names no mode; the message lists the valid ones.
    """
    try:
        return GANMode(value)
    except ValueError:
        valid = ", ".join(m.value for m in GANMode)
        raise ValueError(f"unknown GAN mode {value!r}; valid: {valid}") from None


class GANLoss(nn.Module):
    """Generator and discriminator objectives of one adversarial game.

    Args:
        mode: ``lsgan``, ``vanilla``, ``non-saturating``, ``minimax``, ``wgan`` or
            ``wgan-gp`` (see the module docstring).
        reduction: ``mean``, ``sum`` or ``none`` (element-wise, the scores' shape).
        real_label: the discriminator's target for real scores (``lsgan``/``vanilla``/
            ``non-saturating``/``minimax``); below 1 gives one-sided label smoothing
            (0.9 in Salimans et al. 2016). The generator's target is never smoothed.
        fake_label: the discriminator's target for fake scores.

    Raises:
        ValueError: an unknown mode or reduction, or targets other than 1 and 0 with a
            Wasserstein critic (which has no targets).
    """

    def __init__(
        self,
        mode: str | GANMode = GANMode.LSGAN,
        reduction: str = "mean",
        real_label: float = 1.0,
        fake_label: float = 0.0,
    ) -> None:
        super().__init__()
        self.mode = parse_gan_mode(mode)
        self.reduction = _check_reduction(reduction)
        self.real_label = float(real_label)
        self.fake_label = float(fake_label)
        if self.mode in WASSERSTEIN_MODES | {GANMode.HINGE} and (self.real_label != 1.0 or self.fake_label != 0.0):
            raise ValueError(
                f"real_label={real_label} / fake_label={fake_label}: "
                + (f"a Wasserstein critic ({self.mode.value})" if self.mode in WASSERSTEIN_MODES else "the hinge loss")
                + " has no targets, label smoothing does not apply"
            )

    def _against(self, scores: Tensor, target: float) -> Tensor:
        """Element-wise loss of ``scores`` against a constant ``target``."""
        scores = scores.float()
        full = torch.full_like(scores, target)
        if self.mode == GANMode.LSGAN:
            return (scores - full) ** 2
        # vanilla, non-saturating, minimax: BCE on logits
        return F.binary_cross_entropy_with_logits(scores, full, reduction="none")

    def generator_loss(self, fake_scores: Tensor) -> Tensor:
        """The generator's loss given the discriminator's scores of generated images ``(B, ...)``.

        ``lsgan``: ``(D(G(z)) - 1)^2``; ``vanilla``/``non-saturating``: ``-log D(G(z))``;
        ``minimax``: ``log(1 - D(G(z)))``; ``wgan``/``wgan-gp``/``hinge``: ``-D(G(z))``. The
        targets are 1 and 0 whatever ``real_label``/``fake_label`` say.
        """
        if self.mode in WASSERSTEIN_MODES or self.mode == GANMode.HINGE:
            return _reduce(-fake_scores.float(), self.reduction)
        if self.mode == GANMode.MINIMAX:
            # minimise log(1 - sigmoid(s)) = -BCE(s, 0)
            return _reduce(-self._against(fake_scores, 0.0), self.reduction)
        return _reduce(self._against(fake_scores, 1.0), self.reduction)

    def discriminator_loss(self, real_scores: Tensor, fake_scores: Tensor) -> Tensor:
        """The discriminator's (critic's) loss given scores of real and generated images.

        Both ``(B, ...)`` of the same shape when ``reduction="none"``. Real scores are
        compared with ``real_label``, fake ones with ``fake_label``. For ``wgan-gp`` add
        :func:`gradient_penalty` yourself; for ``wgan`` call :func:`clip_weights` after the step.
        ``hinge``: ``relu(1 - D(x)) + relu(1 + D(G(z)))``, each term reduced on its own.
        """
        if self.mode == GANMode.HINGE:
            real, fake = F.relu(1.0 - real_scores.float()), F.relu(1.0 + fake_scores.float())
            return real + fake if self.reduction == "none" else _reduce(real, self.reduction) + _reduce(fake, self.reduction)
        if self.mode in WASSERSTEIN_MODES:
            if self.reduction == "none":
                return fake_scores.float() - real_scores.float()
            return _reduce(fake_scores.float(), self.reduction) - _reduce(real_scores.float(), self.reduction)
        real = self._against(real_scores, self.real_label)
        fake = self._against(fake_scores, self.fake_label)
        if self.reduction == "none":
            return 0.5 * (real + fake)
        return 0.5 * (_reduce(real, self.reduction) + _reduce(fake, self.reduction))

    def forward(self, scores: Tensor, target_is_real: bool) -> Tensor:
        """Discriminator-side loss of ``scores`` against all-real or all-fake targets (pytorch-CycleGAN style).

        Uses ``real_label``/``fake_label``; for the generator use :meth:`generator_loss`.
        """
        if self.mode == GANMode.HINGE:
            return _reduce(F.relu(1.0 - scores.float()) if target_is_real else F.relu(1.0 + scores.float()), self.reduction)
        if self.mode in WASSERSTEIN_MODES:
            return _reduce(-scores.float() if target_is_real else scores.float(), self.reduction)
        return _reduce(self._against(scores, self.real_label if target_is_real else self.fake_label), self.reduction)


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """WGAN-GP penalty ``E[(||grad critic(x_hat)||_2 - 1)^2]`` on random interpolates.

    Gulrajani et al. 2017, eq. 3. The gradient norm is taken per sample over all
    non-batch axes, so 2D and 3D images are treated alike.

    Args:
        critic: maps images ``(B, C, *spatial)`` to scores ``(B, ...)``.
        real: real images ``(B, C, *spatial)``.
        fake: generated images of the same shape (detached or not).
        generator: random source of the interpolation weights.

    Returns:
        The scalar penalty; multiply by its weight (10 in the paper).
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake shapes differ: {tuple(real.shape)} vs {tuple(fake.shape)}")
    shape = (real.shape[0],) + (1,) * (real.ndim - 1)
    alpha = torch.rand(shape, generator=generator, device="cpu" if generator is None else generator.device)
    alpha = alpha.to(device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norm = grad.flatten(1).norm(2, dim=1)  # (B,)
    return ((norm - 1.0) ** 2).mean()


class FeatureDistance(StrEnum):
    """Distances :func:`feature_matching_loss` offers."""

    L2 = "l2"
    L1 = "l1"


def feature_matching_loss(
    real_features: Tensor,
    fake_features: Tensor,
    reduction: str = "mean",
    distance: str | FeatureDistance = FeatureDistance.L2,
) -> Tensor:
    """Feature matching: the distance between the batch means of a discriminator layer.

    Salimans et al. 2016, section 3.1: the generator minimises
    ``|| E_x f(x) - E_z f(G(z)) ||_2^2`` with ``f`` an intermediate layer of D (the last
    hidden layer, e.g. :meth:`DCGANDiscriminator.forward_features`). ``l2`` is the squared
    difference of the means (the paper, MNIST code), ``l1`` its absolute value (the CIFAR
    code). The real means are a target: they are detached.

    Args:
        real_features: ``(B_real, F...)`` features of a real batch (any trailing shape).
        fake_features: ``(B_fake, F...)`` features of generated data, the same trailing shape.
        reduction: ``mean`` (over the features), ``sum`` or ``none`` (the per-feature ``(F...)`` tensor).
        distance: ``l2`` or ``l1``.

    Raises:
        ValueError: unknown distance or reduction, or feature shapes that differ.
    """
    _check_reduction(reduction)
    try:
        distance = FeatureDistance(distance)
    except ValueError:
        valid = ", ".join(d.value for d in FeatureDistance)
        raise ValueError(f"unknown distance {distance!r}; valid: {valid}") from None
    if real_features.shape[1:] != fake_features.shape[1:]:
        raise ValueError(
            f"real and fake feature shapes differ: {tuple(real_features.shape)} vs {tuple(fake_features.shape)}"
        )
    diff = real_features.detach().float().mean(0) - fake_features.float().mean(0)  # (F...)
    per_feature = diff**2 if distance == FeatureDistance.L2 else diff.abs()
    return _reduce(per_feature, reduction)


@torch.no_grad()
def clip_weights(module: nn.Module, c: float = 0.01) -> None:
    """Clamp every parameter of ``module`` to ``[-c, c]`` in place (the WGAN critic, Arjovsky et al. 2017, Algorithm 1).

    Raises:
        ValueError: ``c`` is not positive.
    """
    if not c > 0:
        raise ValueError(f"c must be > 0, got {c}")
    for p in module.parameters():
        p.clamp_(-c, c)


class _L1Loss(nn.Module):
    """``|| output - target ||_1`` in float32, the shared body of the cycle and identity losses.

    Args:
        reduction: ``mean``, ``sum`` or ``none``.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(output.float(), target.float(), reduction=self.reduction)


class CycleConsistencyLoss(_L1Loss):
    """``|| F(G(x)) - x ||_1``: the cycle loss of CycleGAN (Zhu et al. 2017, eq. 2); called as ``(reconstructed, original)``."""


class IdentityLoss(_L1Loss):
    """``|| G(y) - y ||_1``: CycleGAN's identity loss (Zhu et al. 2017, section 5.2); called as ``(mapped, original)``.

    It keeps a generator from changing an image already in its target domain, which
    preserves intensity ranges and tissue contrast.
    """


def set_requires_grad(modules: Sequence[nn.Module], flag: bool) -> None:
    """Freeze (``False``) or unfreeze (``True``) every parameter of ``modules``.

    Freezing the discriminators during the generator step avoids computing their
    gradients (pytorch-CycleGAN-and-pix2pix, ``set_requires_grad``).
    """
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(flag)
