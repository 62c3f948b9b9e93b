"""Adversarial losses and the L1 losses of image-to-image translation.

Shared by every GAN in udl-med (CycleGAN, pix2pix, the conditional and K+1 GANs).
A discriminator returns raw scores (logits for ``vanilla``/``minimax``, real values for
``lsgan`` and ``wgan-gp``) of any shape ``(B, ...)``: one score per image or one per
patch (PatchGAN). :class:`GANLoss` turns them into the generator's and the
discriminator's objectives:

- ``lsgan``: least squares, Mao et al. 2017, "Least Squares Generative Adversarial
  Networks" (https://arxiv.org/abs/1611.04076); CycleGAN's default.
- ``vanilla``: the non-saturating binary cross-entropy of Goodfellow et al. 2014
  (the generator maximises ``log D(G(z))``); pix2pix's default.
- ``minimax``: the original saturating objective, the generator minimises
  ``log(1 - D(G(z)))``; kept for comparison, it trains poorly.
- ``wgan-gp``: Wasserstein critic with gradient penalty, Gulrajani et al. 2017,
  "Improved Training of Wasserstein GANs" (https://arxiv.org/abs/1704.00028); add
  :func:`gradient_penalty` to the critic's loss.

The discriminator loss of ``lsgan``/``vanilla``/``minimax`` is halved as in
pytorch-CycleGAN-and-pix2pix, which slows D relative to G.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.utils import StrEnum
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum", "none")


class GANMode(StrEnum):
    """The adversarial objectives :class:`GANLoss` implements."""

    LSGAN = "lsgan"
    VANILLA = "vanilla"
    MINIMAX = "minimax"
    WGAN_GP = "wgan-gp"


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


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    return reduction


def _reduce(x: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


class GANLoss(nn.Module):
    """Generator and discriminator objectives of one adversarial game.

    Args:
        mode: ``lsgan``, ``vanilla``, ``minimax`` or ``wgan-gp`` (see the module docstring).
        reduction: ``mean``, ``sum`` or ``none`` (element-wise, the scores' shape).
        real_label: target of real scores (``lsgan``/``vanilla``/``minimax``); below 1
            gives one-sided label smoothing.
        fake_label: target of fake scores.

    Raises:
        ValueError: an unknown mode or reduction.
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

    def _against(self, scores: Tensor, target: float) -> Tensor:
        """Element-wise loss of ``scores`` against a constant ``target``."""
        scores = scores.float()
        full = torch.full_like(scores, target)
        if self.mode == GANMode.LSGAN:
            return (scores - full) ** 2
        return F.binary_cross_entropy_with_logits(scores, full, reduction="none")

    def generator_loss(self, fake_scores: Tensor) -> Tensor:
        """The generator's loss given the discriminator's scores of generated images ``(B, ...)``."""
        if self.mode == GANMode.WGAN_GP:
            return _reduce(-fake_scores.float(), self.reduction)
        if self.mode == GANMode.MINIMAX:
            # minimise log(1 - D(G(z))) = -BCE(scores, fake_label)
            return _reduce(-self._against(fake_scores, self.fake_label), self.reduction)
        return _reduce(self._against(fake_scores, self.real_label), self.reduction)

    def discriminator_loss(self, real_scores: Tensor, fake_scores: Tensor) -> Tensor:
        """The discriminator's (critic's) loss given scores of real and generated images.

        Both ``(B, ...)`` of the same shape when ``reduction="none"``. For ``wgan-gp``
        add :func:`gradient_penalty` yourself.
        """
        if self.mode == GANMode.WGAN_GP:
            if self.reduction == "none":
                return fake_scores.float() - real_scores.float()
            return _reduce(fake_scores.float(), self.reduction) - _reduce(real_scores.float(), self.reduction)
        real = self._against(real_scores, self.real_label)
        fake = self._against(fake_scores, self.fake_label)
        if self.reduction == "none":
            return 0.5 * (real + fake)
        return 0.5 * (_reduce(real, self.reduction) + _reduce(fake, self.reduction))

    def forward(self, scores: Tensor, target_is_real: bool) -> Tensor:
        """Loss of ``scores`` against all-real or all-fake targets (pytorch-CycleGAN style)."""
        if self.mode == GANMode.WGAN_GP:
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
