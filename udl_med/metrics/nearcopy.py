"""Near-copy distance: how close is an image to its nearest reference image, up to a small alignment?

A memorising generator, or an augmentation that leaked into a synthetic set, returns a
training image moved a little: shifted by a few pixels, flipped, rotated by a few
degrees, with its intensities scaled and offset, with noise. The distance here is
minimised over exactly those changes:

``distance(q, r) = 1 - max over alignments T and shifts t of NCC(T(q), r shifted by t)``

- ``NCC`` is the normalised cross-correlation (Pearson correlation of the voxel values)
  over a fixed central window of ``T(q)`` (the image less ``max_shift`` voxels on every
  side) and the window of ``r`` at offset ``t``: invariant to any intensity change
  ``a * x + b`` with ``a > 0``; noise lowers it only by its share of the variance.
- ``T`` runs over every flip (each subset of the spatial axes: 4 in 2D, 8 in 3D) times a
  few rotations (2D: ``angles`` degrees in the plane; 3D: ``angles`` about each axis in
  turn, in voxel space), ``t`` over every integer shift up to ``max_shift`` along each axis
  (default 4 pixels in 2D, 2 voxels in 3D). Rotations between the grid points and
  sub-voxel shifts are absorbed by a Gaussian blur of ``blur`` voxels applied to both
  images first (which also averages noise away): 1 voxel in 2D; in 3D 1 in-plane and 1.5
  along the last (slice) axis, where thick slices leave the most interpolation residual.
- The distance lies in [0, 2]: 0 for a copy, about 1 for an unrelated image.

Search, per query, in two stages (chunked: memory does not grow with the sets). First the
(reference, alignment) pairs are ranked two ways: by the low-frequency magnitude spectra of
the blurred images, which no shift changes, and by the NCC of half-resolution central
windows against the reference windows at every coarse shift (half-resolution steps up to
``max_shift``). The spectrum is blind to where the content sits but is changed by what a
shift fills in at the border: a 2-voxel shift of a 16-slice patch replaces an eighth of it,
and on tuning draws 100-129 the spectral ranking alone left the source of about one such copy
in 20 out of its best 128 pairs. The half-resolution NCC sees the filled-in border only at the
edge of its window, but it misses odd shifts that fall between its grid points; each covers
the other. The ``shortlist`` best spectral pairs and the ``COARSE_SHORTLIST`` best NCC
pairs are then searched over every shift at full resolution (cross-correlations by FFT, in
float32); the winner's NCC is computed again directly in float64 (an exact copy is at 0 to
1e-12). The spectrum cannot tell a flip along one axis from the flip along the others (a real
image's magnitude spectrum is point-symmetric), so the shortlist keeps several. The returned
alignment is the one that matched: the rotation and flips applied to the query, and the
shift of the reference window.

Pure measure on tensors; reading folders, thresholds and reports live in
``udl_med.evaluation.memorization``; the calibrated threshold in
:mod:`udl_med.metrics.calibration`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Alignment", "NearCopies", "alignment_grid", "near_copy_distance"]

ANGLES = (-10.0, -7.5, -5.0, -2.5, 2.5, 5.0, 7.5, 10.0)  # 2D: residual at most 1.25 degrees
ANGLES_3D = (-10.0, -7.5, -5.0, -2.5, 2.5, 5.0, 7.5, 10.0)  # about each axis: 8 flips x 25 rotations
MAX_SHIFT = {2: 4, 3: 2}
SHORTLIST = {2: 24, 3: 128}
COARSE_SHORTLIST = {2: 8, 3: 16}  # pairs added by the half-resolution NCC ranking
EPS = 1e-8
# Gaussian sigma per axis, in voxels. 3D: 1.5 along the last (slice) axis. A rotation about an in-plane axis
# interpolates across slices, and thick slices make the content sharpest there per voxel: with 1 voxel the
# linear-interpolation residual of a true rotated copy (the copy's own resampling and ours) reached 0.004-0.0056,
# above the calibrated threshold, on tuning draws 101-104 (every miss was such a rotation; the true source was found).
# Worst rotated-copy distance / threshold: 1.39 with 1 voxel (draws 101, 103), 0.92 with 1.5 on every axis (100, 101, 103, 104), 0.58
# with 1.5 along the slice axis only (101, 103; the margin, from the largest sigma, is 5 voxels: a 22 x 22 x 6 window).
BLUR: dict[int, float | tuple[float, ...]] = {2: 1.0, 3: (1.0, 1.0, 1.5)}
PAIR_ELEMENTS = 1 << 22  # window entries per block of the fine stage (16 MB of float32)
VARIANT_ELEMENTS = 1 << 24  # voxels of rotated queries and shortlisted crops per block (64 MB of float32)
REFINE = 3  # best pairs whose rotation is refined
REFINE_STEPS = (-1.25, -0.625, 0.625, 1.25)  # degrees about the grid angle: half the grid's step and less


@dataclass(frozen=True)
class Alignment:
    """A rotation (degrees about ``axis``; 2D: in the plane) then flips (spatial axes, 0-based) of the query, and the shift.

    ``T(query)`` matches the reference window shifted by ``shift`` voxels.
    """

    flips: tuple[int, ...]
    angle: float
    axis: int
    shift: tuple[int, ...]

    def describe(self) -> str:
        parts = [f"rotate {self.angle:g} deg" + (f" about axis {self.axis}" if self.axis >= 0 else "")] if self.angle else []
        if self.flips:
            parts.append(f"flip axes {list(self.flips)}")
        if any(self.shift):
            parts.append(f"shift {list(self.shift)}")
        return ", ".join(parts) or "none"

    def as_dict(self) -> dict[str, object]:
        return {"flips": list(self.flips), "angle": self.angle, "axis": self.axis, "shift": list(self.shift), "text": self.describe()}


@dataclass(frozen=True)
class NearCopies:
    """Per query: ``index (N,)`` of the nearest reference, ``distance (N,)`` float64, the matching ``alignments``."""

    index: Tensor
    distance: Tensor
    alignments: list[Alignment]


def alignment_grid(spatial_dims: int, angles: tuple[float, ...] | None = None, flips: bool = True) -> list[tuple[tuple[int, ...], float, int]]:
    """``(flip axes, angle, rotation axis)`` of every alignment searched (identity first).

    2D: flips x (0 and ``angles``); 3D: flips x (0 and ``angles`` about each of the 3 axes).
    The rotation axis is ``-1`` in 2D and for angle 0.
    """
    angles = (ANGLES if spatial_dims == 2 else ANGLES_3D) if angles is None else tuple(angles)
    flip_sets = [()]
    if flips:
        flip_sets = [c for n in range(spatial_dims + 1) for c in itertools.combinations(range(spatial_dims), n)]
    rotations = [(0.0, -1)]
    if spatial_dims == 2:
        rotations += [(a, -1) for a in angles if a]
    else:
        rotations += [(a, axis) for axis in range(3) for a in angles if a]
    return [(f, a, axis) for f in flip_sets for a, axis in rotations]


def _rotation_theta(size: tuple[int, ...], angle: float, axis: int) -> Tensor:
    """Affine ``theta`` for ``affine_grid`` (align_corners=False) of a rotation by ``angle`` degrees in voxel space.

    ``axis`` is the spatial axis (0-based, tensor order) rotated about in 3D. ``affine_grid``
    works in normalised coordinates ``n = v / (S / 2)`` (``v`` centred voxel coordinates,
    ``S`` the size; grid axes run last spatial axis first), so the voxel rotation ``R`` is
    ``D^-1 R D`` with ``D = diag(S / 2)``: a true rotation of a non-cubic patch, as an
    augmentation in millimetres on isotropic voxels makes it.
    """
    d = len(size)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    half = torch.tensor([size[d - 1 - g] / 2.0 for g in range(d)], dtype=torch.float64)  # grid order: x = last axis
    m = torch.eye(d, dtype=torch.float64)
    if not angle:
        return torch.cat([m, torch.zeros(d, 1, dtype=torch.float64)], 1)
    if d == 2:
        i, j = 0, 1
    else:
        i, j = [d - 1 - a for a in range(3) if a != axis][::-1]  # the plane of the two other axes, in grid order
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    m = m * half[None, :] / half[:, None]  # D^-1 R D
    return torch.cat([m, torch.zeros(d, 1, dtype=torch.float64)], 1)


def _rotate(x: Tensor, rotations: list[tuple[float, int]], margin: int = 0) -> Tensor:
    """``x (B, *sp)`` under each rotation ``(angle in degrees, spatial axis in 3D)`` about its centre: ``(B, R, *sp)``.

    Bilinear, border padding; one ``grid_sample`` call for all of them. With ``margin`` only
    the central window (less ``margin`` on every side) is sampled: ``(B, R, *window)``.
    """
    b, sp, d = len(x), tuple(x.shape[1:]), x.ndim - 1
    theta = torch.stack([_rotation_theta(sp, angle, axis) for angle, axis in rotations]).to(x.dtype)  # (R, d, d + 1)
    grid = F.affine_grid(theta, [len(rotations), 1, *sp], align_corners=False)  # (R, *sp, d)
    if margin:
        grid = grid[(slice(None),) + (slice(margin, -margin),) * d]
    out_sp = tuple(grid.shape[1:-1])
    grid = grid[None].expand(b, *grid.shape).reshape(b * len(rotations), *grid.shape[1:])
    src = x[:, None, None].expand(b, len(rotations), 1, *sp).reshape(b * len(rotations), 1, *sp)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.reshape(b, len(rotations), *out_sp)
    for r, (angle, _) in enumerate(rotations):
        if not angle:
            out[:, r] = _crop(x, margin, d)  # the identity exactly
    return out


def _blur(x: Tensor, sigma: float | tuple[float, ...]) -> Tensor:
    """Separable Gaussian blur of ``x (B, *sp)`` along every spatial axis (replicate padding); ``sigma`` per axis or one for all."""
    d = x.ndim - 1
    sigmas = (float(sigma),) * d if isinstance(sigma, (int, float)) else tuple(float(v) for v in sigma)
    conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    y = x[:, None]
    for axis in range(d):
        sigma = sigmas[axis]
        if sigma <= 0:
            continue
        r = max(1, int(math.ceil(2.5 * sigma)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2).to(x.dtype)
        k = k / k.sum()
        shape = [1, 1] + [1] * d
        shape[2 + axis] = 2 * r + 1
        pad = [0, 0] * d
        pad[2 * (d - 1 - axis)] = pad[2 * (d - 1 - axis) + 1] = r
        y = conv(F.pad(y, pad, mode="replicate"), k.reshape(shape))
    return y[:, 0]


def _pool(x: Tensor, factor: int) -> Tensor:
    if factor <= 1:
        return x
    pool = F.avg_pool2d if x.ndim == 3 else F.avg_pool3d
    return pool(x[:, None], factor, ceil_mode=True)[:, 0]


def _standardise(x: Tensor) -> Tensor:
    """Rows of ``(..., P)`` to zero mean and unit norm (constant rows stay 0)."""
    x = x - x.mean(-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def _crop(x: Tensor, margin: int, d: int) -> Tensor:
    """Central crop of ``x (..., *sp)`` less ``margin`` on every side of the last ``d`` axes."""
    if margin == 0:
        return x
    return x[(Ellipsis,) + (slice(margin, -margin),) * d]


def _shift_of(s: int, margin: int, d: int) -> tuple[int, ...]:
    side = 2 * margin + 1
    index = [(s // side ** (d - 1 - a)) % side for a in range(d)]
    return tuple(i - margin for i in index)


def _check(query: Tensor, reference: Tensor) -> int:
    if query.ndim not in (3, 4) or reference.ndim != query.ndim:
        raise ValueError(f"near-copy distance needs (N, *spatial) 2D or 3D images, got query {tuple(query.shape)}, reference {tuple(reference.shape)}")
    if query.shape[1:] != reference.shape[1:]:
        raise ValueError(f"image sizes differ: query {tuple(query.shape[1:])}, reference {tuple(reference.shape[1:])}")
    if len(reference) == 0:
        raise ValueError("no reference images")
    return query.ndim - 1


def _low_magnitudes(x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Low-frequency magnitude spectrum of ``x (B, *sp)`` at half resolution (float32): ``(B, *K)`` and, per axis
    but the last, the negation map of the kept frequencies (``k -> -k``: what a flip along that axis does)."""
    d = x.ndim - 1
    dims = tuple(range(1, d + 1))
    x = _pool(x.float(), 2) if min(x.shape[1:]) >= 16 else x.float()
    mag = torch.fft.rfftn(x - x.mean(dims, keepdim=True), dim=dims).abs()
    negate = []
    for axis, s in enumerate(x.shape[1:-1]):
        idx = torch.cat([torch.arange(0, s // 4 + 1), torch.arange(s - s // 4, s)]).unique()  # symmetric under k -> -k
        where = {int(v): i for i, v in enumerate(idx)}
        negate.append(torch.tensor([where[(-int(v)) % s] for v in idx]))
        mag = mag.index_select(1 + axis, idx)
    return mag[..., : x.shape[-1] // 4 + 1], negate


def _spectrum(x: Tensor) -> Tensor:
    """Shift-invariant descriptor of ``x (B, *sp)``: the low-frequency magnitude spectrum, standardised ``(B, F)``."""
    return _standardise(_low_magnitudes(x)[0].reshape(len(x), -1))


def _flipped_spectra(rotated: Tensor, grid: list[tuple[tuple[int, ...], float, int]], rotation_of: list[int]) -> Tensor:
    """Descriptors ``(B, A, F)`` of every alignment of ``grid`` from the rotated images ``(B, R, *sp)`` alone.

    A flip along axis j maps the magnitude spectrum ``|X(k)|`` to ``|X(k with k_j -> -k_j)|``; the
    spectrum of a real image is point-symmetric, so a flip along the last axis (the half
    ``rfftn`` keeps) equals the flip along all the others. Each rotation is transformed once.
    """
    b, r = rotated.shape[:2]
    d = rotated.ndim - 2
    mag, negate = _low_magnitudes(rotated.reshape(b * r, *rotated.shape[2:]))
    mag = mag.reshape(b, r, *mag.shape[1:])
    out = []
    for (flips, _, _), rot in zip(grid, rotation_of):
        m = mag[:, rot]
        axes = set(flips)
        if d - 1 in axes:
            axes = set(range(d)) - axes
        for a in sorted(axes):
            m = m.index_select(1 + a, negate[a])
        out.append(m.reshape(b, -1))
    return _standardise(torch.stack(out, 1))


def near_copy_distance(
    query: Tensor,
    reference: Tensor,
    max_shift: int | None = None,
    angles: tuple[float, ...] | None = None,
    flips: bool = True,
    blur: float | tuple[float, ...] | None = None,
    shortlist: int | None = None,
    chunk: int | None = None,
) -> NearCopies:
    """Nearest reference of each query image up to flips, rotations, shifts and intensity affine changes.

    Args:
        query: ``(N, *spatial)`` or ``(N, 1, *spatial)`` images (2D or 3D).
        reference: ``(M, ...)`` of the same size.
        max_shift: largest shift searched, in voxels along each axis (default 4 in 2D, 2 in 3D).
        angles: rotation angles in degrees (default ``ANGLES`` in 2D, ``ANGLES_3D`` about each axis in 3D).
        flips: search flips along every subset of axes.
        blur: Gaussian sigma in voxels applied to both sets first, one for all axes or one per axis (0: none;
            default ``BLUR``: 1 in 2D; 1, 1, 1.5 in 3D, more along the slice axis).
        shortlist: (reference, alignment) pairs kept per query by the spectral ranking for the full-resolution
            search (default 24 in 2D, 128 in 3D: the spectrum of a 3D patch changes more when a shift fills in a
            few slices); ``COARSE_SHORTLIST`` more (8 in 2D, 16 in 3D) come from the half-resolution NCC ranking.
        chunk: queries per block (default: as many as keep the block's aligned copies under
            ``VARIANT_ELEMENTS`` voxels).

    Returns:
        :class:`NearCopies` (index into ``reference``, distance in [0, 2], alignment).
    """
    if query.ndim >= 4 and query.shape[1] == 1 and query.ndim == reference.ndim:
        query, reference = query[:, 0], reference[:, 0]
    d = _check(query, reference)
    max_shift = MAX_SHIFT[d] if max_shift is None else int(max_shift)
    # the query window leaves out the voxels a translation fills in, and those whose blur saw them
    blur = BLUR[d] if blur is None else blur
    if isinstance(blur, tuple) and len(blur) != d:
        raise ValueError(f"blur needs one sigma per spatial axis ({d}), got {blur}")
    sig = max(blur) if isinstance(blur, tuple) else blur
    margin = max_shift + (math.ceil(1.5 * sig) if sig > 0 else 0)
    if min(query.shape[1:]) <= 2 * margin + 2:
        raise ValueError(f"images of size {tuple(query.shape[1:])} are too small for shifts of {max_shift} with blur {blur}")
    if len(query) == 0:  # the FFTs below refuse an empty batch
        return NearCopies(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64), [])
    grid = alignment_grid(d, angles, flips)
    rotations = list(dict.fromkeys((angle, axis) for _, angle, axis in grid))
    flip_sets = list(dict.fromkeys(f for f, _, _ in grid))
    rotation_of = [rotations.index((angle, axis)) for _, angle, axis in grid]
    flips_of = torch.tensor([flip_sets.index(f) for f, _, _ in grid])
    rotation_idx = torch.tensor(rotation_of)
    n_align, m = len(grid), len(reference)
    ref = _blur(reference.float(), blur)  # float32 search; the final NCC in float64
    factor = 2 if min(query.shape[1:]) >= 16 else 1
    c_margin = math.ceil(margin / factor)
    coarse = COARSE_SHORTLIST[d] > 0 and min(_pool(ref[:1], factor).shape[1:]) > 2 * c_margin
    if coarse:
        c_shift = math.ceil(max_shift / factor)
        ref_windows = _coarse_reference_windows(_pool(ref, factor), c_margin, c_shift)  # (M, S, P)
        n_shifts = ref_windows.shape[1]
        ref_windows = ref_windows.reshape(m * n_shifts, -1)
    ref_spec = _spectrum(ref)  # (M, F)
    shortlist = max(1, min(SHORTLIST[d] if shortlist is None else shortlist, m * n_align))
    unrotated = [a for a, (_, angle, _) in enumerate(grid) if not angle]  # the coarse ranking: shifts and flips only
    unrotated_idx = torch.tensor(unrotated)
    n_coarse = min(COARSE_SHORTLIST[d], m * len(unrotated)) if coarse else 0
    if chunk is None:
        per_query = (len(rotations) + shortlist + n_coarse) * math.prod(query.shape[1:])
        if coarse:
            per_query = max(per_query, (n_align + 1) * m * n_shifts // 8)
        chunk = max(1, VARIANT_ELEMENTS // per_query)
    window = [s - 2 * margin for s in query.shape[1:]]
    indices, dists, aligns = [], [], []
    for q in query.float().split(chunk):
        b = len(q)
        rows = torch.arange(b)
        qb = _blur(q, blur)
        rotated = _rotate(qb, rotations)  # (B, R, *sp)
        # 1. (reference, alignment) pairs ranked by the shift-invariant low-frequency spectra
        spec = _flipped_spectra(rotated, grid, rotation_of)  # (B, A, F)
        score = torch.einsum("baf,mf->bam", spec, ref_spec).reshape(b, -1)  # (B, A*M)
        top = score.topk(shortlist, dim=1).indices
        if coarse:
            # 1b. the unrotated (flip-only) pairs also by the NCC of half-resolution central windows against the
            # reference windows at coarse shifts
            view = _crop(_pool(rotated[:, rotations.index((0.0, -1))], factor), c_margin, d)  # (B, *window)
            aligned = torch.stack([view.flip([x + 1 for x in grid[a][0]]) if grid[a][0] else view for a in unrotated], 1)
            aligned = _standardise(aligned.reshape(b, len(unrotated), -1))  # (B, A0, P)
            coarse_score = (aligned.reshape(b * len(unrotated), -1) @ ref_windows.T).reshape(b, len(unrotated), m, n_shifts).amax(-1)
            best = coarse_score.reshape(b, -1).topk(n_coarse, dim=1).indices  # over (unrotated alignment, reference)
            top_c = unrotated_idx[best // m] * m + best % m  # as indices into the (alignment, reference) grid
            top = torch.cat([top, top_c], 1)  # a pair in both is searched twice: harmless
        a_idx, r_idx = top // m, top % m  # (B, T)
        # 2. every shift at full resolution on the shortlisted (reference, alignment) pairs (float32)
        n_pairs = top.shape[1]
        crops = _crop(rotated, margin, d)[rows[:, None], rotation_idx[a_idx]].reshape(b * n_pairs, *window)
        pair_flips = flips_of[a_idx].reshape(-1)
        for k, fl in enumerate(flip_sets):
            sel = (pair_flips == k).nonzero().squeeze(1)
            if fl and len(sel):
                crops[sel] = crops[sel].flip([a + 1 for a in fl])
        fine, fine_s = _best_shifts(crops, ref, r_idx.reshape(-1), margin, max_shift)
        fine, fine_s = fine.reshape(b, n_pairs), fine_s.reshape(b, n_pairs)
        # 3. the angle refined about the best few pairs, then the winner's NCC again in float64
        for i in range(b):
            order = fine[i].argsort(descending=True)[:REFINE]
            cands = [(float(fine[i, t]), int(r_idx[i, t]), grid[int(a_idx[i, t])], int(fine_s[i, t])) for t in order]
            best = max(cands + _refined(qb[i], cands, ref, margin, max_shift, d), key=lambda c: c[0])
            _, r, (flips_i, angle, axis), s_best = best
            shift = _shift_of(s_best, max_shift, d)
            view = _rotate(qb[i : i + 1], [(angle, axis)], margin)[0, 0]
            view = view.flip(list(flips_i)) if flips_i else view
            at = tuple(slice(margin + t, margin + t + w) for t, w in zip(shift, window))
            ncc = (_standardise(view.double().reshape(1, -1)) * _standardise(ref[r][at].double().reshape(1, -1))).sum()
            indices.append(r)
            dists.append(float(1.0 - ncc))
            aligns.append(Alignment(tuple(flips_i), float(angle), int(axis), shift))
    return NearCopies(torch.tensor(indices, dtype=torch.long), torch.tensor(dists, dtype=torch.float64).clamp(0.0, 2.0), aligns)


def _coarse_reference_windows(ref: Tensor, margin: int, shift: int) -> Tensor:
    """Standardised windows of ``ref (M, *sp)`` at every offset in ``[-shift, shift]^d`` from ``margin``: ``(M, S, P)``."""
    d = ref.ndim - 1
    window = [s - 2 * margin for s in ref.shape[1:]]
    out = []
    for t in itertools.product(range(-shift, shift + 1), repeat=d):
        at = (slice(None),) + tuple(slice(margin + o, margin + o + w) for o, w in zip(t, window))
        out.append(ref[at].reshape(len(ref), -1))
    return _standardise(torch.stack(out, 1))


def _best_shifts(crops: Tensor, ref: Tensor, which: Tensor, margin: int, max_shift: int) -> tuple[Tensor, Tensor]:
    """Best NCC over shifts of each crop ``(P, *w)`` against ``ref[which]``, and the shift's index: ``((P,), (P,))``."""
    used, where = torch.unique(which, return_inverse=True)  # the references these crops need
    flat = _standardise(crops.reshape(len(crops), -1)).reshape(crops.shape)
    return _ncc_shifts(flat, ref[used], where, margin, max_shift).max(1)


def _refined(
    image: Tensor, cands: list[tuple[float, int, tuple[tuple[int, ...], float, int], int]], ref: Tensor, margin: int, max_shift: int, d: int
) -> list[tuple[float, int, tuple[tuple[int, ...], float, int], int]]:
    """The candidates' rotations moved by ``REFINE_STEPS`` degrees (about each axis where the angle is 0 in 3D), searched over every shift."""
    trials = []
    for _, r, (flips_i, angle, axis), _ in cands:
        axes = [axis] if angle or d == 2 else list(range(3))
        for ax in axes:
            for step in REFINE_STEPS:
                trials.append((r, (flips_i, angle + step, ax if d == 3 else -1)))
    if not trials:
        return []
    views = _rotate(image[None], [(angle, axis) for _, (_, angle, axis) in trials], margin)[0]  # (T, *w)
    for k, (_, (flips_i, _, _)) in enumerate(trials):
        if flips_i:
            views[k] = views[k].flip(list(flips_i))
    fine, fine_s = _best_shifts(views, ref, torch.tensor([r for r, _ in trials]), margin, max_shift)
    return [(float(f), r, alignment, int(s)) for f, s, (r, alignment) in zip(fine, fine_s, trials)]


def _ncc_shifts(crops: Tensor, refs: Tensor, which: Tensor, margin: int, shift: int) -> Tensor:
    """NCC of each standardised crop ``(P, *w)`` (taken at ``margin``) with ``refs[which]`` at every offset in ``[-shift, shift]^d``: ``(P, S)``.

    The cross-correlations come from FFTs (no window is materialised); the window norms
    of the references from box sums.
    """
    d = refs.ndim - 1
    dims = tuple(range(1, d + 1))
    size = refs.shape[1:]
    window = crops.shape[1:]
    ref_f = torch.fft.rfftn(refs, dim=dims)
    n = float(math.prod(window))
    sums, squares = refs.double(), refs.double() ** 2  # window sums by running sums, float64: no cancellation
    for a, w in enumerate(window):
        lo, count = margin - shift, 2 * shift + 1
        pad = [0, 0] * (d - 1 - a) + [1, 0]
        sums, squares = (F.pad(v.cumsum(1 + a), pad) for v in (sums, squares))
        sums, squares = (v.narrow(1 + a, lo + w, count) - v.narrow(1 + a, lo, count) for v in (sums, squares))
    norm = (squares - sums**2 / n).clamp_min(0.0).sqrt().reshape(len(refs), -1).to(refs.dtype)  # (U, S)
    keep = (slice(None),) + (slice(margin - shift, margin + shift + 1),) * d
    out = torch.empty(len(crops), (2 * shift + 1) ** d, dtype=refs.dtype)
    step = max(1, PAIR_ELEMENTS // math.prod(size))
    for lo in range(0, len(crops), step):
        c = crops[lo : lo + step]
        c_f = torch.fft.rfftn(c, s=size, dim=dims)  # crop at the origin, zero-padded
        corr = torch.fft.irfftn(c_f.conj() * ref_f[which[lo : lo + step]], s=size, dim=dims)[keep]
        out[lo : lo + step] = corr.reshape(len(c), -1) / norm[which[lo : lo + step]].clamp_min(EPS)
    return out
