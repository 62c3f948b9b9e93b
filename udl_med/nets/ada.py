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

How it runs: a call on the 32 small crops D sees is mostly per-op cost, not arithmetic.
Measured on one CPU thread, a call is about half host bookkeeping and dispatch, half
full-size passes (the resampling, about 140 us, and the noise draw, 70 us, the largest),
and inside a training step, where the network's work between two calls leaves every cache
cold, each op costs several times what it costs in a loop. So each transform takes as few
ops, numpy or torch, as it can. All per-item parameters come from one uniform and one
normal draw of fixed width on the global CPU generator, and the bookkeeping on them (which
items a transform hits, the affine map, the cutout box) is numpy on the host, a few
numbers per item; a transform no item drew costs nothing. Flip, translation, scaling and
rotation compose into ONE affine map and ONE bilinear resampling (:func:`affine_resample`);
when at least half the items move, all are resampled (the others by the identity) and
``torch.lerp`` with weights 0 and 1 keeps the unmoved ones bit-exact in one pass; when
fewer move, only those are resampled and copied back. The sampling grid is a sum of
per-axis terms made on the host. The border rule is reflection about the border voxels'
centres (``abcd|cba``) for all four, so an integer shift equals the reflect-padded roll up
to float rounding, and a zoom out or a rotation mirrors the inside as a shift does.
Intensity is a multiply and an add (a ternary op broadcasting per-item values runs
unvectorised on a CPU), noise is drawn for the items it hits only (a normal draw costs as
much as twenty elementwise passes), cutout is a float mask; once a transform has made a new
tensor, the later ones write into it. Items a transform misses stay bit-exact.

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


def _affine_theta(inv: np.ndarray, angle: np.ndarray, shift: np.ndarray, sign: np.ndarray | None, size: tuple[int, ...]) -> np.ndarray:
    """``theta (B, nd, nd + 1)`` of :func:`torch.nn.functional.affine_grid` (``align_corners=True``), float64, on the host.

    In voxel units about the centre, spatial-axis order, the source of output voxel ``q`` is
    ``F (A q - t)``: ``A = inv * R(angle)`` (``R`` rotates the plane of axes 0 and 1, ``inv``
    is 1 / scale), ``t = shift (B, nd)``, ``F`` multiplies axis 0 by ``sign (B,)`` (-1: a
    mirror; None: no item mirrored). The draws are a few numbers per item: numpy does this
    math on the host (each op, numpy or torch, costs microseconds of dispatch whatever its
    size, so the fewer the better).
    """
    cos, sin = np.cos(angle) * inv, np.sin(angle) * inv
    mirrored = [sin, cos, shift[:, 0]] if sign is None else [sign * sin, sign * cos, sign * shift[:, 0]]
    if len(size) == 2:  # grid rows: axis 1, axis 0; columns: axis 1, axis 0, offset
        rows = [[cos, sin, shift[:, 1]], mirrored]
    else:  # grid rows: axis 2, axis 1, axis 0
        zero = np.zeros_like(inv)
        rows = [[inv, zero, zero, shift[:, 2]], [zero, cos, sin, shift[:, 1]], [zero] + mirrored]
    return np.array(rows).transpose(2, 0, 1) * _grid_constants(tuple(size))  # one array op for all entries (each op costs its dispatch)


class _Plan(NamedTuple):
    """The host constants of one image size, made once: for the grid, the draws' scales and cutout's box."""

    bases: np.ndarray  # (sum(size),) affine_grid's normalised voxel centres (align_corners=True) along each spatial axis, concatenated
    column: np.ndarray  # (sum(size),) theta's column for each of them (spatial axis a is column nd - 1 - a)
    views: tuple[tuple[slice | None, ...], ...]  # per spatial axis: the index taking (B, K, sum(size)) to a broadcastable (B, K, 1.., n_a, ..1) view
    scale: np.ndarray  # (2 nd,) the shift's 2 * limit + 1 values, then the size: floor(u * scale) - offset is the shift, then cutout's start
    offset: np.ndarray  # (2 nd,) the largest shift, then box // 2 (the box starts there before its centre)
    axis_of: np.ndarray  # (sum(size),) the spatial axis of each position along the axes, concatenated
    box_centre: np.ndarray  # (sum(size),) voxel index minus (box - 1) / 2, box cutout's length along that axis
    box_reach: np.ndarray  # (sum(size),) box / 2


@functools.lru_cache(maxsize=32)
def _plan(size: tuple[int, ...]) -> _Plan:
    """The constants of ``size`` (made once per image size)."""
    nd = len(size)
    bases = np.concatenate([np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in size])
    starts = np.cumsum((0,) + size)
    views = tuple((slice(None), slice(None)) + (None,) * a + (slice(starts[a], starts[a + 1]),) + (None,) * (nd - 1 - a) for a in range(nd))
    limit = np.array([float(int(n * TRANSLATION_RATIO + 0.5)) for n in size])
    box = np.array([float(int(n * CUTOUT_RATIO + 0.5)) for n in size])
    axis_of = np.repeat(np.arange(nd), size)
    plan = _Plan(
        bases, np.repeat(np.arange(nd - 1, -1, -1), size), views,
        np.concatenate([2 * limit + 1, size]).astype(np.float64), np.concatenate([limit, np.floor(box / 2)]),
        axis_of, np.concatenate([np.arange(n, dtype=np.float64) for n in size]) - (box[axis_of] - 1) / 2, box[axis_of] / 2,
    )
    for value in plan:
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    return plan


def _axis_terms(theta: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """``(B, nd, sum(size))`` float32: grid coordinate ``k``'s term along each spatial axis (the offset in axis 0's), concatenated.

    Grid coordinate ``k`` at a voxel is ``sum_col theta[k, col] * base_col + theta[k, nd]``,
    ``base_col`` varying along spatial axis ``nd - 1 - col`` only: so the grid is a sum of
    per-axis terms (:func:`_grid`), made here from ``B * nd * sum(size)`` numbers.
    """
    plan = _plan(tuple(size))
    terms = theta[:, :, plan.column] * plan.bases
    terms[:, :, : size[0]] += theta[:, :, len(size), None]
    return terms.astype(np.float32, order="C")  # C order: the fancy index may leave the batch axis innermost, and the tensor sums follow their inputs' layout


def _tensor(values: np.ndarray, like: Tensor) -> Tensor:
    """A host array as a tensor on ``like``'s device and dtype: for a CPU float32 input the array's own memory (no copy, no further op)."""
    out = torch.from_numpy(values)
    return out if out.dtype == like.dtype and like.device.type == "cpu" else out.to(device=like.device, dtype=like.dtype)


def _outer(values: np.ndarray, like: Tensor, add: bool) -> Tensor:
    """``values (B, K, sum(size))`` as the ``(B, K, *size)`` sum (``add``) or product of its per-axis parts, axis 0's first, on ``like``'s device and dtype."""
    parts = [_tensor(values[view], like) for view in _plan(tuple(like.shape[2:])).views]
    out = parts[0]
    for part in parts[1:]:
        out = out + part if add else out * part
    return out


def _grid(terms: np.ndarray, like: Tensor) -> Tensor:
    """The ``(B, *size, nd)`` sampling grid of ``like (B, C, *size)`` from :func:`_axis_terms`: one broadcast add per extra axis, written as contiguous planes."""
    return _outer(terms, like, add=True).permute(0, *range(2, like.ndim), 1)  # grid_sample reads the strides: planes are its fastest layout


def _affine_grid(theta: Tensor | np.ndarray, shape: Sequence[int]) -> Tensor:
    """``F.affine_grid(theta, shape, align_corners=True)`` as sums of per-axis outer terms (float32)."""
    size = tuple(shape[2:])
    values = theta.detach().cpu().double().numpy() if isinstance(theta, Tensor) else theta
    return _grid(_axis_terms(values, size), torch.empty((0, 0) + size))


def _resample(x: Tensor, terms: np.ndarray) -> Tensor:
    """``x`` sampled at the grid of ``terms`` (:func:`_axis_terms`): bilinear (trilinear), reflection about the border voxels' centres."""
    return F.grid_sample(x, _grid(terms, x), mode="bilinear", padding_mode="reflection", align_corners=True)


def _item_mean(x: Tensor) -> Tensor:
    """``x.mean(dim=(1, ..., ndim - 1), keepdim=True)`` (B, 1, ...), bit for bit.

    On a CPU ``mean`` IS this sum and division; written out, its backward divides B
    numbers and expands them (a view) where ``mean``'s divides a full expanded tensor.
    Elsewhere ``mean`` has its own kernel (a sum times 1 / n), so it stays.
    """
    dims = tuple(range(1, x.ndim))
    if x.device.type != "cpu":
        return x.mean(dim=dims, keepdim=True)
    return x.sum(dim=dims, keepdim=True).div_(math.prod(x.shape[1:]))


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
    return _resample(x, _axis_terms(theta, size))


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
        self._threshold_of: tuple[float, np.ndarray] = (-1.0, self._on * 0.0)  # (p, its thresholds): made again when p moves

    # -- the pipeline -----------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, C, *spatial)`` with every transform of the policy applied to each item with probability ``p``.

        Every per-item parameter comes from one uniform and one normal draw of a fixed
        width (whatever the policy) on the global CPU generator, and the bookkeeping on
        them is numpy on the host (on a GPU this also spares the read-back). A call on 32
        small crops is mostly per-op dispatch, numpy's and torch's alike, so each transform
        takes as few ops as it can: flip, translation, scaling and rotation are ONE
        resampling (:func:`affine_resample`'s map) of only the items they move; intensity a
        multiply and an add; noise one draw for the items it hits; cutout one float mask;
        once a transform has made a new tensor, the later ones write into it. A transform
        no item drew costs nothing. Items a transform misses stay bit-exact, the input is
        never written; at ``p = 0`` the pipeline is the identity and draws nothing.
        """
        p = float(self.p)
        if p == 0.0:
            return x
        b, nd = x.shape[0], x.ndim - 2
        plan = _plan(tuple(x.shape[2:]))
        u = torch.rand(b, _UNIFORMS + 2 * nd).numpy().astype(np.float64)
        hit = u[:, : len(_HIT_OF)] < self._thresholds(p)  # (B, 8) in _HIT_OF's order
        normal = torch.randn(b, len(_NORMAL_STD)).numpy().astype(np.float64) * _NORMAL_STD_NP * hit[:, : len(_NORMAL_STD)]  # 0 where missed
        any_hit = hit.any(0).tolist()
        if any_hit[_TRANSLATION] or any_hit[_CUTOUT]:  # the integer draws: the shift (nd columns), then cutout's start (nd)
            drawn = np.floor(u[:, _UNIFORMS:] * plan.scale) - plan.offset
        owned = False  # whether x is a tensor this call made: then the next transforms write into it
        if any_hit[_FLIP] or any_hit[_TRANSLATION] or any_hit[_SCALING] or any_hit[_ROTATION]:
            shift = drawn[:, :nd] * hit[:, _TRANSLATION, None] if any_hit[_TRANSLATION] else np.zeros((b, nd))
            moved = self._geometry(x, u, hit, normal, shift, any_hit[_FLIP])
            x, owned = moved, moved is not x
        if any_hit[_BRIGHTNESS] or any_hit[_CONTRAST]:
            x, owned = self._intensity(x, normal, any_hit[_CONTRAST], owned), True
        if any_hit[_NOISE]:
            x, owned = self._noise(x, hit, normal, owned), True
        if any_hit[_CUTOUT]:
            x = self._cutout(x, drawn[:, nd:], hit, plan, owned)
        return x

    def _thresholds(self, p: float) -> np.ndarray:
        """``(8,)``: ``p`` in the policy's hit columns, -1 in the others (a uniform draw is never below it): ``u < thresholds`` is the hits."""
        if self._threshold_of[0] != p:
            self._threshold_of = (p, np.where(self._on, p, -1.0))
        return self._threshold_of[1]

    @staticmethod
    def _geometry(x: Tensor, u: np.ndarray, hit: np.ndarray, normal: np.ndarray, shift: np.ndarray, flip_hit: bool) -> Tensor:
        """Flip, translation ``shift (B, nd)``, scaling and rotation: ONE resampling (:func:`affine_resample`'s map) of the items they move (``x`` itself if none).

        When at least half the items move, all are resampled (the others by the identity)
        and ``torch.lerp`` with weights 0 and 1 keeps the unmoved ones bit-exact in one pass
        (``x + 0 * d``, ``r - d * 0``; an index copy takes four); when fewer move, only
        those are resampled and copied back.
        """
        b, nd, size = x.shape[0], x.ndim - 2, tuple(x.shape[2:])
        angle = (u[:, _ANGLE] * 2 - 1) * (math.radians(ROTATION_DEGREES) * hit[:, _ROTATION])
        moving = hit[:, _SCALING] | hit[:, _ROTATION] | shift.any(1)  # a shift of 0 moves nothing
        sign = None  # nobody mirrored: a sign of 1 would change nothing
        if flip_hit:
            flips = hit[:, _FLIP] & (u[:, _COIN] < 0.5)
            moving |= flips
            sign = 1.0 - 2.0 * flips
        n = int(np.count_nonzero(moving))
        if 2 * n >= b:  # most items move: resample all (the others by the identity), then keep the unmoved ones exactly
            resampled = _resample(x, _axis_terms(_affine_theta(np.exp2(-normal[:, _SCALING]), angle, shift, sign, size), size))
            if n == b:
                return resampled
            return torch.lerp(x, resampled, _tensor(moving.astype(np.float32).reshape((b,) + (1,) * (nd + 1)), x))
        if n == 0:
            return x
        moved = np.flatnonzero(moving)
        theta = _affine_theta(np.exp2(-normal[moved, _SCALING]), angle[moved], shift[moved], None if sign is None else sign[moved], size)
        index = torch.from_numpy(moved).to(x.device)
        return x.index_copy(0, index, _resample(x[index], _axis_terms(theta, size)))

    @staticmethod
    def _intensity(x: Tensor, normal: np.ndarray, contrast_hit: bool, owned: bool) -> Tensor:
        """``x * c + (mean * (1 - c) + brightness)``: c = 1 and brightness 0 leave an item bit-exact (written into ``x`` if ``owned``)."""
        per_item = (x.shape[0],) + (1,) * (x.ndim - 1)
        if not contrast_hit:
            brightness = _tensor(normal[:, _BRIGHTNESS].astype(np.float32).reshape(per_item), x)
            return x.add_(brightness) if owned else x + brightness
        contrast = np.exp2(normal[:, _CONTRAST])
        c, one_minus_c, brightness = _tensor(np.array([contrast, 1 - contrast, normal[:, _BRIGHTNESS]], dtype=np.float32).reshape((3,) + per_item), x).unbind(0)
        # two binary ops: a ternary one broadcasting (B, 1, ...) runs unvectorised on a CPU (and fused, rounds differently)
        offset = torch.addcmul(brightness, _item_mean(x), one_minus_c)
        return (x * c).add_(offset)

    @staticmethod
    def _noise(x: Tensor, hit: np.ndarray, normal: np.ndarray, owned: bool) -> Tensor:
        """Gaussian noise of a per-item level, drawn for the items it hits only (a normal draw costs twenty elementwise ops); written into ``x`` if ``owned``."""
        noisy = np.flatnonzero(hit[:, _NOISE])
        sigma = np.abs(normal[noisy, _NOISE]).astype(np.float32).reshape((len(noisy),) + (1,) * (x.ndim - 1))
        noise = torch.randn((len(noisy),) + tuple(x.shape[1:]), device=x.device, dtype=x.dtype).mul_(_tensor(sigma, x))
        if len(noisy) == x.shape[0]:
            return x.add_(noise) if owned else x + noise
        index = torch.from_numpy(noisy) if x.device.type == "cpu" else torch.from_numpy(noisy).to(x.device)
        return x.index_add_(0, index, noise) if owned else x.index_add(0, index, noise)

    @staticmethod
    def _cutout(x: Tensor, start: np.ndarray, hit: np.ndarray, plan: _Plan, owned: bool) -> Tensor:
        """A box of half the size per axis from ``start (B, nd)``, set to 0 (in ``x`` if ``owned``): one float mask, the outer product of per-axis ones (bool ops on the whole batch cost ten times more on a CPU)."""
        # inside along an axis: 0 <= index - start < box, i.e. |index - (box - 1) / 2 - start| < box / 2 (integers; exact); 0 < 0 for items cutout missed
        along = (np.abs(plan.box_centre - start[:, plan.axis_of]) < plan.box_reach * hit[:, _CUTOUT, None]).astype(np.float32, order="C")  # (B, sum(size))
        inside = _outer(along[:, None], x, add=False)
        # x - x * inside: cutout's fill is 0; items missed stay bit-exact
        return x.addcmul_(x, inside, value=-1) if owned else torch.addcmul(x, x, inside, value=-1)

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
