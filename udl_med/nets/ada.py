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
  spatial axes (the axial plane of a slice or a volume), in voxel units;
- ``intensity``: an affine map of the normalised window, brightness ``b ~ N(0, 0.2)``
  added, contrast ``c = 2^N(0, 0.5)`` about the item's mean (ADA's colour transforms
  without hue and saturation);
- ``noise``: additive Gaussian noise of standard deviation ``|N(0, 0.1)|``;
- ``cutout``: a box of half the size per axis, filled with 0.

How it runs (the cost, a sixth of a small GAN's step before, is mostly per-call overhead):
all per-item parameters come from one uniform and one normal draw of fixed width;
flip, translation, scaling and rotation compose into ONE affine map and ONE bilinear
resampling (:func:`affine_resample`) of only the items a geometric transform hit; the
border rule is reflection about the border voxels' centres (``abcd|cba``) for all four,
so an integer shift equals the reflect-padded roll up to float rounding, and a zoom out or
a rotation mirrors the inside as a shift does (before, the resampling reflected about the
voxels' outer edges, ``abcd|dcba``, and a shift then a rotation reflected twice; the
distribution differs only in the voxels brought in from outside the image). Intensity is
one multiply-add, noise is drawn for the items it hits, cutout is a float mask. Items a
transform misses stay bit-exact.

Draws come from the global torch RNG on the input's device (seeded and checkpointed by
the engine); ``p`` and the heuristic's running sums are buffers, so checkpoints keep them
and a resumed run continues bit-exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udl_med.nets.diffaugment import check_policy

ADA_POLICIES = ("flip", "translation", "scaling", "rotation", "intensity", "noise", "cutout")
ADA_DEFAULT_POLICY = ("translation", "scaling", "rotation", "intensity", "noise", "cutout")  # no flips: anatomy is not symmetric
TRANSLATION_RATIO = 1 / 8
SCALE_STD = 0.2  # log2 of the isotropic scale (ADA: 0.2)
ROTATION_DEGREES = 15.0  # a small rotation: anatomy keeps its orientation
BRIGHTNESS_STD = 0.2  # ADA: 0.2
CONTRAST_STD = 0.5  # log2 of the contrast (ADA: 0.5)
NOISE_STD = 0.1  # ADA: 0.1
CUTOUT_RATIO = 1 / 2  # ADA: 0.5
# the columns of one draw: Bernoulli(p) hits, ordered so that the first four line up with the normal draws
_HIT_OF = ("scaling", "intensity", "intensity", "noise", "flip", "translation", "rotation", "cutout")  # intensity twice: brightness, contrast
_NORMAL_STD = (SCALE_STD, BRIGHTNESS_STD, CONTRAST_STD, NOISE_STD)  # log2 scale, brightness, log2 contrast, noise level
_SCALING, _BRIGHTNESS, _CONTRAST, _NOISE, _FLIP, _TRANSLATION, _ROTATION, _CUTOUT = range(len(_HIT_OF))
_COIN, _ANGLE, _UNIFORMS = 8, 9, 10  # the flip's coin, the rotation's uniform; then the shift and the cutout centre (nd columns each)
_FAR = 1e6  # a cutout start past any image: the box of an item cutout missed


@functools.lru_cache(maxsize=32)
def _grid_constants(size: tuple[int, ...], device: torch.device) -> Tensor:
    """``(nd, nd + 1)``: the signs of :func:`_affine_theta`'s entries times the change to normalised coordinates, in grid order.

    With ``align_corners=True`` a voxel coordinate about the centre is ``half * q_norm``,
    ``half = (n - 1) / 2`` per axis, so the voxel map ``s = L q + o`` is
    ``s_norm = half^-1 L half q_norm + half^-1 o``; grid coordinates run over the axes in
    reverse (x is the last axis).
    """
    nd = len(size)
    half = [max((n - 1) / 2, 0.5) for n in size][::-1]  # grid order
    sign = [[1.0, 1.0, -1.0], [-1.0, 1.0, -1.0]] if nd == 2 else [[1.0, 0.0, 0.0, -1.0], [0.0, 1.0, 1.0, -1.0], [0.0, -1.0, 1.0, -1.0]]
    out = torch.tensor(sign, dtype=torch.float64)
    for k in range(nd):
        for col in range(nd + 1):
            out[k, col] *= (half[col] if col < nd else 1.0) / half[k]
    return out.to(device=device, dtype=torch.float32)


def _affine_theta(inv: Tensor, angle: Tensor, shift: Tensor, sign: Tensor, size: tuple[int, ...]) -> Tensor:
    """``theta (B, nd, nd + 1)`` of :func:`torch.nn.functional.affine_grid` (``align_corners=True``), in one stack.

    In voxel units about the centre, spatial-axis order, the source of output voxel ``q`` is
    ``F (A q - t)``: ``A = inv * R(angle)`` (``R`` rotates the plane of axes 0 and 1, ``inv``
    is 1 / scale), ``t = shift (B, nd)``, ``F`` multiplies axis 0 by ``sign (B,)`` (-1: a mirror).
    """
    cos, sin = torch.cos(angle) * inv, torch.sin(angle) * inv
    t = shift.unbind(1)
    if len(size) == 2:  # grid rows: axis 1, axis 0; columns: axis 1, axis 0, offset
        entries = [cos, sin, t[1], sign * sin, sign * cos, sign * t[0]]
    else:  # grid rows: axis 2, axis 1, axis 0
        zero = torch.zeros_like(inv)
        entries = [inv, zero, zero, t[2], zero, cos, sin, t[1], zero, sign * sin, sign * cos, sign * t[0]]
    return torch.stack(entries, 1).reshape(-1, len(size), len(size) + 1) * _grid_constants(tuple(size), inv.device)


@functools.lru_cache(maxsize=32)
def _base(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``affine_grid``'s normalised voxel centres along an axis of ``n`` (``align_corners=True``)."""
    return torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) if n > 1 else torch.zeros(1, device=device, dtype=dtype)


def _affine_grid(theta: Tensor, shape: Sequence[int]) -> Tensor:
    """``F.affine_grid(theta, shape, align_corners=True)`` as sums of per-axis outer terms.

    Each grid coordinate is ``sum_l theta[:, k, l] * base_l + theta[:, k, nd]`` with
    ``base_l`` varying along one axis, so it is one broadcast add per axis instead of a
    ``(B, voxels, nd + 1) x (nd + 1, nd)`` product (half the time on a CPU at 32 x 32),
    written as contiguous planes and returned as a ``(B, *size, nd)`` view.
    """
    b, size = theta.shape[0], tuple(shape[2:])
    nd = len(size)
    planes = torch.empty((b, nd, *size), device=theta.device, dtype=theta.dtype)  # one contiguous plane per coordinate: no strided writes
    for k in range(nd):
        terms = []
        for col in range(nd):
            axis = nd - 1 - col  # grid coordinate col runs along spatial axis nd - 1 - col
            view = [b] + [1] * nd
            view[1 + axis] = size[axis]
            base = _base(size[axis], theta.device, theta.dtype)
            term = theta[:, k, col, None] * base if col else torch.addcmul(theta[:, k, nd, None], theta[:, k, col, None], base)
            terms.append(term.reshape(view))
        total = terms[0]
        for term in terms[1:-1]:
            total = total + term
        torch.add(total, terms[-1], out=planes[:, k])  # theta carries no gradient: the draws are constants
    return planes.permute(0, *range(2, nd + 2), 1)  # (B, *size, nd): grid_sample reads the strides


def _resample(x: Tensor, theta: Tensor) -> Tensor:
    """``x`` sampled at ``affine_grid(theta)``: bilinear (trilinear), reflection about the border voxels' centres."""
    grid = _affine_grid(theta.to(x.dtype), x.shape)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def affine_resample(
    x: Tensor, scale: Tensor, angle: Tensor, shift: Tensor | None = None, flips: Tensor | None = None
) -> Tensor:
    """``x (B, C, *spatial)`` (2D or 3D) flipped, shifted, zoomed and rotated per item in ONE resampling.

    The source of output voxel ``q`` (voxel coordinates about the centre, ``(n - 1) / 2``
    per axis) is ``F (A q - t)``: ``A`` the inverse of a zoom by ``scale (B,)`` and a
    rotation by ``angle (B,)`` radians in the plane of spatial axes 0 and 1, ``t`` the
    integer ``shift (B, spatial_dims)`` (output[i] = input[i - t], as
    :func:`~udl_med.nets.diffaugment.translate`), ``F`` a mirror of spatial axis 0 where
    ``flips (B,)`` is true. So a flip, then a shift, then the zoom and rotation about the
    centre, in voxel units (a rotation stays a rotation on a non-square grid).

    Bilinear (trilinear) sampling with ``align_corners=True``: the border rule is
    reflection about the border voxels' centres (``abcd|cba``, as ``reflect`` padding and
    ADA's pixel blitting), and a pure flip or integer shift lands on voxel centres, so it
    equals :func:`~udl_med.nets.diffaugment.flip` / ``translate(..., reflect=True)`` up to
    float rounding (below 1e-5). Every item is resampled; :class:`AdaptiveAugment` passes
    only the items a geometric transform hit. Differentiable in ``x``.
    """
    b, nd, dev = x.shape[0], x.ndim - 2, x.device
    if nd not in (2, 3):
        raise ValueError(f"affine_resample needs 2D or 3D images, got {nd} spatial axes")
    inv = 1.0 / scale.to(device=dev, dtype=torch.float32)
    shift = torch.zeros(b, nd, device=dev) if shift is None else shift.to(device=dev, dtype=torch.float32)
    sign = torch.ones(b, device=dev) if flips is None else 1.0 - 2.0 * flips.to(device=dev, dtype=torch.float32)
    return _resample(x, _affine_theta(inv, angle.to(device=dev, dtype=torch.float32), shift, sign, tuple(x.shape[2:])))


class _DrawConstants(NamedTuple):
    """What :meth:`AdaptiveAugment.forward` needs per image size and device, made once."""

    span: Tensor  # (nd,) the shift's 2 * limit + 1 values
    limit: Tensor  # (nd,) the largest shift
    extent: Tensor  # (nd,) the size
    std: Tensor  # (4,) the normal draws' standard deviations
    box: Tensor  # (nd, 1) cutout's box length
    box_half: Tensor  # (nd,) box // 2: the box starts there before its centre
    positions: Tensor  # (max size,) voxel indices 0, 1, ...


@functools.lru_cache(maxsize=32)
def _draw_constants(size: tuple[int, ...], device: torch.device) -> _DrawConstants:
    """The per-size constants of one draw (made once per image size and device)."""
    limit = torch.tensor([float(int(n * TRANSLATION_RATIO + 0.5)) for n in size], device=device)
    box = [int(n * CUTOUT_RATIO + 0.5) for n in size]
    return _DrawConstants(
        2 * limit + 1, limit, torch.tensor([float(n) for n in size], device=device), torch.tensor(_NORMAL_STD, device=device),
        torch.tensor([[float(n)] for n in box], device=device), torch.tensor([float(n // 2) for n in box], device=device),
        torch.arange(max(size), device=device, dtype=torch.float32),
    )


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
        self.register_buffer("on", torch.tensor([name in self.policy for name in _HIT_OF]), persistent=False)  # the policy's hit columns

    # -- the pipeline -----------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, C, *spatial)`` with every transform of the policy applied to each item with probability ``p``.

        Every per-item parameter is drawn in one go (one uniform and one normal draw of a
        fixed width, whatever the policy); flip, translation, scaling and rotation are ONE
        resampling (:func:`affine_resample`'s map) of only the items a geometric transform
        hit; intensity is one fused multiply-add, noise is drawn for the items it hits
        only, cutout is one mask. Items a transform misses stay bit-exact; at ``p = 0`` the
        pipeline is the identity and draws nothing. One read-back per call (which items
        move, which transforms hit anyone).
        """
        p = float(self.p)
        if p == 0.0:
            return x
        b, nd, size, dev = x.shape[0], x.ndim - 2, tuple(x.shape[2:]), x.device
        span, limit, extent, std, box, box_half, positions = _draw_constants(size, dev)
        u = torch.rand(b, _UNIFORMS + 2 * nd, device=dev)
        hit = (u[:, : len(_HIT_OF)] < p) & self.on  # (B, 8) in _HIT_OF's order
        on = hit.float()
        normal = torch.randn(b, len(_NORMAL_STD), device=dev) * std * on[:, : len(_NORMAL_STD)]  # 0 where missed
        shift = (torch.floor(u[:, _UNIFORMS : _UNIFORMS + nd] * span) - limit) * on[:, _TRANSLATION, None]  # (B, nd) integers
        angle = (u[:, _ANGLE] * 2 - 1) * (math.radians(ROTATION_DEGREES) * on[:, _ROTATION])
        flips = hit[:, _FLIP] & (u[:, _COIN] < 0.5)
        moved = flips | hit[:, _SCALING] | hit[:, _ROTATION] | shift.ne(0).any(1)
        flags = torch.cat([moved, hit[:, _NOISE], hit.any(0)]).tolist()  # the one read-back
        any_hit = flags[2 * b :]
        if any(flags[:b]):
            theta = _affine_theta(torch.exp2(-normal[:, _SCALING]), angle, shift, 1.0 - 2.0 * flips.float(), size)
            if all(flags[:b]):
                x = _resample(x, theta)
            else:
                index = torch.tensor([i for i in range(b) if flags[i]], device=dev)
                x = x.index_copy(0, index, _resample(x[index], theta[index]))
        per_item = (b,) + (1,) * (x.ndim - 1)
        if any_hit[_CONTRAST]:  # contrast about the item's mean: x * c + (mean * (1 - c) + brightness); c = 1, brightness 0 leave x bit-exact
            contrast = torch.exp2(normal[:, _CONTRAST]).to(x).reshape(per_item)
            offset = torch.addcmul(normal[:, _BRIGHTNESS].to(x).reshape(per_item), x.mean(dim=tuple(range(1, x.ndim)), keepdim=True), 1 - contrast)
            x = torch.addcmul(offset, x, contrast)
        elif any_hit[_BRIGHTNESS]:
            x = x + normal[:, _BRIGHTNESS].to(x).reshape(per_item)
        if any_hit[_NOISE]:
            noisy = [i for i in range(b) if flags[b + i]]
            index = torch.tensor(noisy, device=dev)
            sigma = normal[index, _NOISE].abs().to(x).reshape((len(noisy),) + per_item[1:])
            x = x.index_add(0, index, torch.randn((len(noisy),) + tuple(x.shape[1:]), device=dev, dtype=x.dtype) * sigma)
        if any_hit[_CUTOUT]:  # float masks: bool ops on the whole batch cost ten times more on a CPU
            start = torch.floor(u[:, _UNIFORMS + nd :] * extent) - box_half + (1 - on[:, _CUTOUT, None]) * _FAR  # (B, nd); items missed: past the end
            offset = positions - start[:, :, None]  # (B, nd, max size): voxel index minus the box's start, per axis
            along = ((offset >= 0) & (offset < box)).to(x.dtype)
            inside = along[:, 0, : size[0]].reshape((b, 1, size[0]) + (1,) * (nd - 1))
            for a in range(1, nd):
                inside = inside * along[:, a, : size[a]].reshape((b, 1) + (1,) * a + (size[a],) + (1,) * (nd - 1 - a))
            x = torch.addcmul(x, x, inside, value=-1)  # x - x * inside: cutout's fill is 0; items missed stay bit-exact
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
