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

How it runs (the cost, about 15% of a small GAN's step, is the full-size passes over the
batch: the resampling and its backward about half, the noise draw a seventh; the small ops
matter little): all per-item parameters come from one uniform and one
normal draw of fixed width on the global CPU generator, and the bookkeeping on them (which
items a transform hits, the affine map, the cutout box) is numpy on the host, a few
numbers per item. Flip, translation, scaling and rotation compose into ONE affine map and
ONE bilinear resampling (:func:`affine_resample`); when at least half the items move, all
are resampled (the others by the identity) and ``torch.lerp`` with weights 0 and 1 keeps
the unmoved ones bit-exact in one pass; when fewer move, only those are resampled and
copied back. The sampling grid is a sum of per-axis terms made on the host. The border
rule is reflection about the border voxels' centres (``abcd|cba``) for all four, so an
integer shift equals the reflect-padded roll up to float rounding, and a zoom out or a
rotation mirrors the inside as a shift does. Intensity is a multiply and an add (a
ternary op broadcasting per-item values runs unvectorised on a CPU), noise is drawn for
the items it hits only (a normal draw costs as much as twenty elementwise passes), cutout
is a float mask. Items a transform misses stay bit-exact.

Draws come from the global torch CPU generator (the per-item parameters) and the input's
device (the noise), both seeded and checkpointed by the engine; ``p`` and the heuristic's
running sums are buffers, so checkpoints keep them and a resumed run continues bit-exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
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
_NORMAL_STD_NP = np.array(_NORMAL_STD)
_SCALING, _BRIGHTNESS, _CONTRAST, _NOISE, _FLIP, _TRANSLATION, _ROTATION, _CUTOUT = range(len(_HIT_OF))
_COIN, _ANGLE, _UNIFORMS = 8, 9, 10  # the flip's coin, the rotation's uniform; then the shift and the cutout centre (nd columns each)
_FAR = 1e6  # a cutout start past any image: the box of an item cutout missed


@functools.lru_cache(maxsize=32)
def _grid_constants(size: tuple[int, ...]) -> np.ndarray:
    """``(nd, nd + 1)``: the signs of :func:`_affine_theta`'s entries times the change to normalised coordinates, in grid order.

    With ``align_corners=True`` a voxel coordinate about the centre is ``half * q_norm``,
    ``half = (n - 1) / 2`` per axis, so the voxel map ``s = L q + o`` is
    ``s_norm = half^-1 L half q_norm + half^-1 o``; grid coordinates run over the axes in
    reverse (x is the last axis).
    """
    nd = len(size)
    half = [max((n - 1) / 2, 0.5) for n in size][::-1]  # grid order
    sign = [[1.0, 1.0, -1.0], [-1.0, 1.0, -1.0]] if nd == 2 else [[1.0, 0.0, 0.0, -1.0], [0.0, 1.0, 1.0, -1.0], [0.0, -1.0, 1.0, -1.0]]
    out = np.array(sign, dtype=np.float64)
    for k in range(nd):
        for col in range(nd + 1):
            out[k, col] *= (half[col] if col < nd else 1.0) / half[k]
    out.flags.writeable = False
    return out


def _affine_theta(inv: np.ndarray, angle: np.ndarray, shift: np.ndarray, sign: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """``theta (B, nd, nd + 1)`` of :func:`torch.nn.functional.affine_grid` (``align_corners=True``), float64, on the host.

    In voxel units about the centre, spatial-axis order, the source of output voxel ``q`` is
    ``F (A q - t)``: ``A = inv * R(angle)`` (``R`` rotates the plane of axes 0 and 1, ``inv``
    is 1 / scale), ``t = shift (B, nd)``, ``F`` multiplies axis 0 by ``sign (B,)`` (-1: a mirror).
    The draws are a few numbers per item: numpy does this math in microseconds where a
    dozen tiny tensor ops cost their dispatch each.
    """
    nd = len(size)
    cos, sin = np.cos(angle) * inv, np.sin(angle) * inv
    theta = np.zeros((len(inv), nd, nd + 1))
    mirrored = sign[:, None] * np.stack([sin, cos, shift[:, 0]], 1)
    if nd == 2:  # grid rows: axis 1, axis 0; columns: axis 1, axis 0, offset
        theta[:, 0] = np.stack([cos, sin, shift[:, 1]], 1)
        theta[:, 1] = mirrored
    else:  # grid rows: axis 2, axis 1, axis 0
        theta[:, 0, 0], theta[:, 0, 3] = inv, shift[:, 2]
        theta[:, 1, 1], theta[:, 1, 2], theta[:, 1, 3] = cos, sin, shift[:, 1]
        theta[:, 2, 1:] = mirrored
    return theta * _grid_constants(tuple(size))


@functools.lru_cache(maxsize=32)
def _bases(size: tuple[int, ...]) -> np.ndarray:
    """``affine_grid``'s normalised voxel centres (``align_corners=True``) along each spatial axis, concatenated."""
    out = np.concatenate([np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in size])
    out.flags.writeable = False
    return out


def _axis_terms(theta: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """``(B, nd, sum(size))`` float32: grid coordinate ``k``'s term along each spatial axis (the offset in axis 0's), concatenated.

    Grid coordinate ``k`` at a voxel is ``sum_col theta[k, col] * base_col + theta[k, nd]``,
    ``base_col`` varying along spatial axis ``nd - 1 - col`` only: so the grid is a sum of
    per-axis terms (:func:`_grid`), made here from ``B * nd * sum(size)`` numbers.
    """
    nd = len(size)
    per_axis = theta[:, :, nd - 1 :: -1]  # (B, nd, nd): coefficient of spatial axis a in column a
    terms = np.repeat(per_axis, size, axis=2) * _bases(tuple(size))
    terms[:, :, : size[0]] += theta[:, :, nd, None]
    return terms.astype(np.float32)


def _grid(terms: Tensor, size: tuple[int, ...]) -> Tensor:
    """The ``(B, *size, nd)`` sampling grid from :func:`_axis_terms`: one broadcast add per extra axis, written as contiguous planes."""
    b, nd = terms.shape[0], len(size)
    parts = terms.split(list(size), dim=2)
    views = [parts[a].reshape((b, nd) + tuple(n if i == a else 1 for i, n in enumerate(size))) for a in range(nd)]
    planes = views[0] + views[1]
    for view in views[2:]:
        planes = planes + view
    return planes.permute(0, *range(2, nd + 2), 1)  # (B, *size, nd): grid_sample reads the strides


def _affine_grid(theta: Tensor | np.ndarray, shape: Sequence[int]) -> Tensor:
    """``F.affine_grid(theta, shape, align_corners=True)`` as sums of per-axis outer terms (float32)."""
    size = tuple(shape[2:])
    values = theta.detach().cpu().double().numpy() if isinstance(theta, Tensor) else theta
    return _grid(torch.from_numpy(_axis_terms(values, size)), size)


def _resample(x: Tensor, terms: Tensor) -> Tensor:
    """``x`` sampled at the grid of ``terms`` (:func:`_axis_terms`): bilinear (trilinear), reflection about the border voxels' centres."""
    grid = _grid(terms.to(device=x.device, dtype=x.dtype), tuple(x.shape[2:]))
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def _host(values: Tensor | None, default: float, b: int, width: int | None = None) -> np.ndarray:
    """A per-item parameter as float64 on the host (``default`` where None)."""
    if values is None:
        return np.full((b,) if width is None else (b, width), default)
    return values.detach().cpu().double().numpy()


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
    only the items a geometric transform hit. Differentiable in ``x`` (the parameters are
    constants: they go through the host).
    """
    b, nd = x.shape[0], x.ndim - 2
    if nd not in (2, 3):
        raise ValueError(f"affine_resample needs 2D or 3D images, got {nd} spatial axes")
    size = tuple(x.shape[2:])
    sign = 1.0 - 2.0 * _host(flips, 0.0, b)
    theta = _affine_theta(1.0 / _host(scale, 1.0, b), _host(angle, 0.0, b), _host(shift, 0.0, b, nd), sign, size)
    return _resample(x, torch.from_numpy(_axis_terms(theta, size)))


class _DrawConstants(NamedTuple):
    """What :meth:`AdaptiveAugment.forward` needs per image size, made once (host arrays)."""

    span: np.ndarray  # (nd,) the shift's 2 * limit + 1 values
    limit: np.ndarray  # (nd,) the largest shift
    extent: np.ndarray  # (nd,) the size
    box: np.ndarray  # (nd,) cutout's box length
    box_half: np.ndarray  # (nd,) box // 2: the box starts there before its centre
    positions: np.ndarray  # (sum(size),) voxel indices 0 .. n - 1 of each axis, concatenated
    axis_of: np.ndarray  # (sum(size),) the axis of each of those positions


@functools.lru_cache(maxsize=32)
def _draw_constants(size: tuple[int, ...]) -> _DrawConstants:
    """The per-size constants of one draw (made once per image size)."""
    limit = np.array([float(int(n * TRANSLATION_RATIO + 0.5)) for n in size])
    box = np.array([float(int(n * CUTOUT_RATIO + 0.5)) for n in size])
    positions = np.concatenate([np.arange(n, dtype=np.float64) for n in size])
    axis_of = np.repeat(np.arange(len(size)), size)
    return _DrawConstants(2 * limit + 1, limit, np.array([float(n) for n in size]), box, np.floor(box / 2), positions, axis_of)


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
        self._on = np.array([name in self.policy for name in _HIT_OF])  # the policy's hit columns

    # -- the pipeline -----------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, C, *spatial)`` with every transform of the policy applied to each item with probability ``p``.

        Every per-item parameter comes from one uniform and one normal draw of a fixed
        width (whatever the policy) on the global CPU generator, and the bookkeeping on
        them is numpy on the host (a call on 32 small crops is mostly per-op overhead, so
        the fewer tensor ops the better; on a GPU this also spares the read-back). Then few
        tensor ops: flip, translation, scaling and rotation are ONE resampling
        (:func:`affine_resample`'s map) of only the items a geometric transform hit;
        intensity and noise are one fused multiply-add (the noise drawn for the whole
        batch, scaled by 0 where it missed); cutout is one float mask. Items a transform
        misses stay bit-exact; at ``p = 0`` the pipeline is the identity and draws nothing.
        """
        p = float(self.p)
        if p == 0.0:
            return x
        b, nd, size, dev = x.shape[0], x.ndim - 2, tuple(x.shape[2:]), x.device
        const = _draw_constants(size)
        u = torch.rand(b, _UNIFORMS + 2 * nd).numpy().astype(np.float64)
        hit = (u[:, : len(_HIT_OF)] < p) & self._on  # (B, 8) in _HIT_OF's order
        normal = torch.randn(b, len(_NORMAL_STD)).numpy().astype(np.float64) * _NORMAL_STD_NP * hit[:, : len(_NORMAL_STD)]  # 0 where missed
        any_hit = hit.any(0)
        per_item = (b,) + (1,) * (x.ndim - 1)
        if any_hit[_FLIP] or any_hit[_TRANSLATION] or any_hit[_SCALING] or any_hit[_ROTATION]:
            shift = (np.floor(u[:, _UNIFORMS : _UNIFORMS + nd] * const.span) - const.limit) * hit[:, _TRANSLATION, None]  # (B, nd) integers
            angle = (u[:, _ANGLE] * 2 - 1) * (math.radians(ROTATION_DEGREES) * hit[:, _ROTATION])
            flips = hit[:, _FLIP] & (u[:, _COIN] < 0.5)
            moved = np.flatnonzero(flips | hit[:, _SCALING] | hit[:, _ROTATION] | (shift != 0).any(1))
            if 2 * len(moved) >= b:  # most items move: resample all (the others by the identity), then keep the unmoved ones exactly
                theta = _affine_theta(np.exp2(-normal[:, _SCALING]), angle, shift, 1.0 - 2.0 * flips, size)
                resampled = _resample(x, torch.from_numpy(_axis_terms(theta, size)))
                if len(moved) == b:
                    x = resampled
                else:  # lerp is exact at weights 0 and 1 (x + 0 * d; r - d * 0), one vectorised pass where an index copy takes four
                    weight = np.zeros(per_item, dtype=np.float32)
                    weight[moved] = 1.0
                    x = torch.lerp(x, resampled, torch.from_numpy(weight).to(device=dev, dtype=x.dtype))
            elif len(moved):  # few move: resample only those
                theta = _affine_theta(np.exp2(-normal[moved, _SCALING]), angle[moved], shift[moved], 1.0 - 2.0 * flips[moved], size)
                index = torch.from_numpy(moved).to(dev)
                x = x.index_copy(0, index, _resample(x[index], torch.from_numpy(_axis_terms(theta, size))))
        if any_hit[_BRIGHTNESS] or any_hit[_CONTRAST]:  # x * c + (mean * (1 - c) + brightness): c = 1, brightness 0 leave an item bit-exact
            contrast = np.exp2(normal[:, _CONTRAST])
            scalars = torch.from_numpy(np.stack([contrast, 1 - contrast, normal[:, _BRIGHTNESS]]).astype(np.float32))
            c, one_minus_c, brightness = (s.reshape(per_item) for s in scalars.to(device=dev, dtype=x.dtype))
            if any_hit[_CONTRAST]:  # two binary ops: a ternary one broadcasting (B, 1, ...) runs unvectorised on a CPU
                x = x * c + torch.addcmul(brightness, x.mean(dim=tuple(range(1, x.ndim)), keepdim=True), one_minus_c)
            else:
                x = x + brightness
        if any_hit[_NOISE]:  # drawn for the items it hits only (a normal draw costs twenty elementwise ops)
            noisy = np.flatnonzero(hit[:, _NOISE])
            sigma = torch.from_numpy(np.abs(normal[noisy, _NOISE]).astype(np.float32)).to(device=dev, dtype=x.dtype).reshape((len(noisy),) + per_item[1:])
            noise = torch.randn((len(noisy),) + tuple(x.shape[1:]), device=dev, dtype=x.dtype) * sigma
            x = x + noise if len(noisy) == b else x.index_add(0, torch.from_numpy(noisy).to(dev), noise)
        if any_hit[_CUTOUT]:  # float masks: bool ops on the whole batch cost ten times more on a CPU
            start = np.floor(u[:, _UNIFORMS + nd :] * const.extent) - const.box_half  # (B, nd)
            offset_in_box = const.positions - start[:, const.axis_of]  # (B, sum(size)): voxel index minus the box's start, per axis
            along = torch.from_numpy(((offset_in_box >= 0) & (offset_in_box < const.box[const.axis_of]) & hit[:, _CUTOUT, None]).astype(np.float32))
            parts = along.to(device=dev, dtype=x.dtype).split(list(size), dim=1)
            inside = parts[0].reshape((b, 1, size[0]) + (1,) * (nd - 1))
            for a in range(1, nd):
                inside = inside * parts[a].reshape((b, 1) + (1,) * a + (size[a],) + (1,) * (nd - 1 - a))
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
