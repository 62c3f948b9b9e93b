"""Adaptive discriminator augmentation (ADA) with anatomically safe transforms, 2D and 3D.

Karras, Aittala, Hellsten, Laine, Lehtinen & Aila, "Training Generative Adversarial
Networks with Limited Data", NeurIPS 2020 (https://arxiv.org/abs/2006.06676). Every image
D sees, real and generated, passes a pipeline of transforms, each applied to an item with
probability ``p``; the transforms are invertible in distribution, so at ``p`` below about
0.8 they do not leak into G's samples. ``p`` is tuned online from the overfitting
heuristic ``r_t = E[sign(D(x_real))]``: every ``interval`` steps it moves by
``sign(r_t - target) * N / (kimg * 1000)``, N the real images seen since the last
adjustment, so ``kimg`` thousand images can take it from 0 to 1 (ADA: 500; udl-med's runs
are short).

The pipeline (:data:`ADA_POLICIES`, applied in this order, each drawn per item):

- ``flip``: mirror along the first spatial axis (left-right of an axial slice), with
  probability p then 1/2. **Not in the default**: anatomy is not left-right symmetric
  (the liver is on the right), so a flip is a leaking transform unless p stays low;
- ``translation``: an integer shift of up to 1/8 of the size per axis, reflect-padded
  (ADA's pixel blitting);
- ``scaling``: isotropic, ``s = 2^N(0, 0.2)`` (ADA's lognormal);
- ``rotation``: a small rotation ``U(-15, 15)`` degrees in the plane of the first two
  spatial axes (the axial plane of a slice or a volume); scaling and rotation are one
  resampling (bilinear, reflection padding);
- ``intensity``: an affine map of the normalised window, brightness ``b ~ N(0, 0.2)``
  added, contrast ``c = 2^N(0, 0.5)`` about the item's mean (ADA's colour transforms
  without hue and saturation);
- ``noise``: additive Gaussian noise of standard deviation ``|N(0, 0.1)|``;
- ``cutout``: a box of half the size per axis, filled with 0.

Draws come from the global torch RNG on the input's device (seeded and checkpointed by
the engine); ``p`` and the heuristic's running sums are buffers, so checkpoints keep them
and a resumed run continues bit-exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udl_med.nets.diffaugment import check_policy, cutout, flip, intensity, translate

ADA_POLICIES = ("flip", "translation", "scaling", "rotation", "intensity", "noise", "cutout")
ADA_DEFAULT_POLICY = ("translation", "scaling", "rotation", "intensity", "noise", "cutout")  # no flips: anatomy is not symmetric
TRANSLATION_RATIO = 1 / 8
SCALE_STD = 0.2  # log2 of the isotropic scale (ADA: 0.2)
ROTATION_DEGREES = 15.0  # a small rotation: anatomy keeps its orientation
BRIGHTNESS_STD = 0.2  # ADA: 0.2
CONTRAST_STD = 0.5  # log2 of the contrast (ADA: 0.5)
NOISE_STD = 0.1  # ADA: 0.1
CUTOUT_RATIO = 1 / 2  # ADA: 0.5


def affine_resample(x: Tensor, scale: Tensor, angle: Tensor) -> Tensor:
    """``x (B, C, *spatial)`` (2D or 3D) zoomed by ``scale (B,)`` and rotated by ``angle (B,)`` radians in the plane of spatial axes 0 and 1.

    Bilinear (trilinear) resampling with reflection padding about the centre; items with
    scale 1 and angle 0 are returned unchanged (bit for bit). Differentiable in ``x``.
    """
    b, nd = x.shape[0], x.ndim - 2
    if nd not in (2, 3):
        raise ValueError(f"affine_resample needs 2D or 3D images, got {nd} spatial axes")
    theta = torch.zeros(b, nd, nd + 1, device=x.device, dtype=x.dtype)
    inverse = (1.0 / scale).to(x)
    for i in range(nd):
        theta[:, i, i] = inverse
    # grid coordinate k indexes tensor axis 2 + nd - 1 - k: spatial axes 0 and 1 are grid coordinates nd - 1 and nd - 2
    u, v = nd - 1, nd - 2
    cos, sin = torch.cos(angle).to(x) * inverse, torch.sin(angle).to(x) * inverse
    theta[:, u, u], theta[:, u, v], theta[:, v, u], theta[:, v, v] = cos, -sin, sin, cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    keep = ((scale == 1) & (angle == 0)).reshape((b,) + (1,) * (x.ndim - 1)).to(x.device)
    return torch.where(keep, x, moved)


class AdaptiveAugment(nn.Module):
    """ADA's pipeline with its probability ``p`` and the controller that tunes it.

    Args:
        policy: the transforms, a subset of :data:`ADA_POLICIES` (applied in that order).
        p: the probability at the start (the fixed one when ``target`` is None).
        target: r_t's target (ADA: 0.6); None keeps ``p`` fixed (r_t is still measured).
        interval: steps between adjustments of ``p`` (ADA: 4 minibatches).
        kimg: thousands of real images over which ``p`` can move from 0 to 1 (ADA: 500).

    Raises:
        ValueError: an unknown or repeated policy, ``p`` outside [0, 1], ``target``
            outside (0, 1), a non-positive ``interval`` or ``kimg``.
    """

    def __init__(
        self,
        policy: Sequence[str] = ADA_DEFAULT_POLICY,
        p: float = 0.0,
        target: float | None = 0.6,
        interval: int = 4,
        kimg: float = 20.0,
    ) -> None:
        super().__init__()
        if not policy:
            raise ValueError("policy must name at least one transform")
        self.policy = check_policy(policy, ADA_POLICIES)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if target is not None and not 0.0 < target < 1.0:
            raise ValueError(f"target must be in (0, 1), got {target}")
        if interval < 1 or not kimg > 0:
            raise ValueError(f"interval must be >= 1 and kimg > 0, got {interval} and {kimg}")
        self.target, self.interval, self.kimg = target, int(interval), float(kimg)
        self.register_buffer("p", torch.tensor(float(p), dtype=torch.float64))
        self.register_buffer("sign_sum", torch.zeros((), dtype=torch.float64))  # sum of sign(D(x_real)) since the last adjustment
        self.register_buffer("sign_count", torch.zeros((), dtype=torch.float64))  # scores summed (patches count one each)
        self.register_buffer("images", torch.zeros((), dtype=torch.float64))  # real items seen since the last adjustment
        self.register_buffer("last_adjust", torch.zeros((), dtype=torch.long))  # the step of the last adjustment
        self.register_buffer("rt", torch.zeros((), dtype=torch.float64))  # r_t at the last adjustment (for the logs)

    # -- the pipeline -----------------------------------------------------------------

    def _applied(self, b: int, device: torch.device) -> Tensor:
        """Which of ``b`` items a transform hits: Bernoulli(p) per item."""
        return torch.rand(b, device=device) < self.p.to(device=device, dtype=torch.float32)

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, C, *spatial)`` with every transform of the policy applied to each item with probability ``p``.

        A transform whose draw hits no item is skipped (at ``p = 0`` the pipeline costs a
        few random draws).
        """
        b, nd, size, dev = x.shape[0], x.ndim - 2, x.shape[2:], x.device
        if float(self.p) == 0.0:
            return x
        per_item = (b,) + (1,) * (x.ndim - 1)
        if "flip" in self.policy:
            hit = self._applied(b, dev) & (torch.rand(b, device=dev) < 0.5)
            if hit.any():
                flips = torch.zeros(b, nd, dtype=torch.bool, device=dev)
                flips[:, 0] = hit
                x = flip(x, flips)
        if "translation" in self.policy:
            hit = self._applied(b, dev)
            if hit.any():
                limit = torch.tensor([int(s * TRANSLATION_RATIO + 0.5) for s in size], device=dev)
                shift = torch.floor(torch.rand(b, nd, device=dev) * (2 * limit + 1)).long() - limit
                x = translate(x, shift * hit[:, None], reflect=True)
        scale, angle = torch.ones(b, device=dev), torch.zeros(b, device=dev)
        if "scaling" in self.policy:
            hit = self._applied(b, dev)
            if hit.any():
                scale = torch.where(hit, torch.exp2(torch.randn(b, device=dev) * SCALE_STD), scale)
        if "rotation" in self.policy:
            hit = self._applied(b, dev)
            if hit.any():
                angle = torch.where(hit, (torch.rand(b, device=dev) * 2 - 1) * math.radians(ROTATION_DEGREES), angle)
        if bool((scale != 1).any() or (angle != 0).any()):
            x = affine_resample(x, scale, angle)
        if "intensity" in self.policy:
            hit_b, hit_c = self._applied(b, dev), self._applied(b, dev)
            if (hit_b | hit_c).any():
                brightness = torch.where(hit_b, torch.randn(b, device=dev) * BRIGHTNESS_STD, torch.zeros(b, device=dev))
                contrast = torch.where(hit_c, torch.exp2(torch.randn(b, device=dev) * CONTRAST_STD), torch.ones(b, device=dev))
                x = torch.where((hit_b | hit_c).reshape(per_item), intensity(x, brightness, contrast), x)  # items missed stay bit-exact
        if "noise" in self.policy:
            hit = self._applied(b, dev)
            if hit.any():
                sigma = torch.where(hit, torch.randn(b, device=dev).abs() * NOISE_STD, torch.zeros(b, device=dev))
                x = x + sigma.to(x).reshape(per_item) * torch.randn_like(x)
        if "cutout" in self.policy:
            hit = self._applied(b, dev)
            if hit.any():
                box = [int(s * CUTOUT_RATIO + 0.5) for s in size]
                centre = torch.floor(torch.rand(b, nd, device=dev) * torch.tensor(size, device=dev)).long()
                x = torch.where(hit.reshape(per_item), cutout(x, centre, box), x)
        return x

    # -- the controller ---------------------------------------------------------------

    @torch.no_grad()
    def observe(self, decision: Tensor, items: int, step: int) -> None:
        """Add D's centred scores of a real batch (``decision (B, ...)``, > 0: "real") at training ``step``; adjust ``p`` when due.

        Every ``interval`` steps: ``r_t`` is the mean sign since the last adjustment (summed
        over the processes of a distributed run, so every rank keeps the same ``p``), and
        ``p`` moves by ``sign(r_t - target) * images / (kimg * 1000)``, clamped to [0, 1].
        """
        self.sign_sum += torch.sign(decision.detach().double()).sum().to(self.sign_sum.device)
        self.sign_count += decision.numel()
        self.images += items
        if step - int(self.last_adjust) < self.interval:
            return
        sums = torch.stack([self.sign_sum, self.sign_count, self.images])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)  # every rank adjusts p alike
        signs, count, images = sums.tolist()
        self.rt.fill_(signs / max(count, 1.0))
        if self.target is not None:
            step_size = images / (self.kimg * 1000.0)
            self.p.copy_((self.p + math.copysign(step_size, float(self.rt) - self.target) * (float(self.rt) != self.target)).clamp(0.0, 1.0))
        self.sign_sum.zero_()
        self.sign_count.zero_()
        self.images.zero_()
        self.last_adjust.fill_(step)

    def extra_repr(self) -> str:
        return f"policy={self.policy}, target={self.target}, interval={self.interval}, kimg={self.kimg}"


__all__ = ["ADA_DEFAULT_POLICY", "ADA_POLICIES", "AdaptiveAugment", "affine_resample"]
