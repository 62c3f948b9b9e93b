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
  images first (which also averages noise away).
- The distance lies in [0, 2]: 0 for a copy, about 1 for an unrelated image.

Search, per query, in two stages (chunked: memory does not grow with the sets): the
low-frequency magnitude spectra of the blurred images, which no shift changes, rank every
(reference, alignment) pair, and the ``shortlist`` best pairs are searched over every
shift at full resolution (cross-correlations by FFT, in float32); the winner's NCC is
computed again directly in float64 (an exact copy is at 0 to 1e-12). The spectrum cannot
tell a flip along one axis from the flip along the others (a real image's magnitude
spectrum is point-symmetric), so the shortlist keeps several. The returned alignment is
the one that matched: the rotation and flips applied to the query, and the shift of the
reference window.

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
SHORTLIST = {2: 24, 3: 64}
EPS = 1e-8
PAIR_ELEMENTS = 1 << 22  # window entries per block of the fine stage (16 MB of float32)
VARIANT_ELEMENTS = 1 << 24  # voxels of aligned query copies per block (64 MB of float32)


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
    if d == 2:
        i, j = 0, 1
    else:
        i, j = [d - 1 - a for a in range(3) if a != axis][::-1]  # the plane of the two other axes, in grid order
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    m = m * half[None, :] / half[:, None]  # D^-1 R D
    return torch.cat([m, torch.zeros(d, 1, dtype=torch.float64)], 1)


def _variants(x: Tensor, grid: list[tuple[tuple[int, ...], float, int]]) -> Tensor:
    """``x (B, *sp)`` under every alignment of ``grid``: ``(B, A, *sp)``.

    Each rotation (about the image centre, bilinear, border padding) is computed once, then flipped.
    """
    d = x.ndim - 1
    rotated: dict[tuple[float, int], Tensor] = {}
    for _, angle, axis in grid:
        if (angle, axis) in rotated:
            continue
        if not angle:
            rotated[(angle, axis)] = x
            continue
        theta = _rotation_theta(tuple(x.shape[1:]), angle, axis).to(x.dtype)[None]
        where = F.affine_grid(theta, [1, 1, *x.shape[1:]], align_corners=False).expand(len(x), *([-1] * (d + 1)))
        rotated[(angle, axis)] = F.grid_sample(x[:, None], where, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    out = [rotated[(angle, axis)].flip([a + 1 for a in flips]) if flips else rotated[(angle, axis)] for flips, angle, axis in grid]
    return torch.stack(out, 1)


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``x (B, *sp)`` along every spatial axis (replicate padding)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2).to(x.dtype)
    k = k / k.sum()
    d = x.ndim - 1
    conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    y = x[:, None]
    for axis in range(d):
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


def _spectrum(x: Tensor) -> Tensor:
    """Shift-invariant descriptor of ``x (B, *sp)``: the low-frequency magnitude spectrum, standardised ``(B, F)``.

    Computed at half resolution in float32 (the half of the spectrum kept is what the pooling preserves).
    """
    d = x.ndim - 1
    dims = tuple(range(1, d + 1))
    x = _pool(x.float(), 2) if min(x.shape[1:]) >= 16 else x.float()
    mag = torch.fft.rfftn(x - x.mean(dims, keepdim=True), dim=dims).abs()
    keep = tuple(torch.cat([torch.arange(0, s // 4 + 1), torch.arange(s - s // 4, s)]).unique() for s in x.shape[1:-1])
    for axis, idx in enumerate(keep):
        mag = mag.index_select(1 + axis, idx)
    mag = mag[..., : x.shape[-1] // 4 + 1]
    return _standardise(mag.reshape(len(x), -1))


def near_copy_distance(
    query: Tensor,
    reference: Tensor,
    max_shift: int | None = None,
    angles: tuple[float, ...] | None = None,
    flips: bool = True,
    blur: float = 1.0,
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
        blur: Gaussian sigma in voxels applied to both sets first (0: none).
        shortlist: (reference, alignment) pairs kept per query for the full-resolution search
            (default 24 in 2D, 64 in 3D: the spectrum of a 3D patch changes more when a shift fills in a few slices).
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
    margin = max_shift + (math.ceil(1.5 * blur) if blur > 0 else 0)
    if min(query.shape[1:]) <= 2 * margin + 2:
        raise ValueError(f"images of size {tuple(query.shape[1:])} are too small for shifts of {max_shift} with blur {blur}")
    grid = alignment_grid(d, angles, flips)
    n_align, m = len(grid), len(reference)
    ref = _blur(reference.float(), blur)  # float32 search; the final NCC in float64
    ref_spec = _spectrum(ref).float()  # (M, F)
    shortlist = max(1, min(SHORTLIST[d] if shortlist is None else shortlist, m * n_align))
    if chunk is None:
        chunk = max(1, VARIANT_ELEMENTS // (n_align * math.prod(query.shape[1:])))
    window = [s - 2 * margin for s in query.shape[1:]]
    indices, dists, aligns = [], [], []
    for q in query.float().split(chunk):
        b = len(q)
        rows = torch.arange(b)
        qv = _variants(_blur(q, blur), grid)  # (B, A, *sp)
        flat = qv.reshape(b * n_align, *qv.shape[2:])
        # 1. (reference, alignment) pairs ranked by the shift-invariant low-frequency spectra
        spec = _spectrum(flat).reshape(b, n_align, -1)
        score = torch.einsum("baf,mf->bam", spec, ref_spec).reshape(b, -1)  # (B, A*M)
        top = score.topk(shortlist, dim=1).indices
        a_idx, r_idx = top // m, top % m  # (B, T)
        used, where = torch.unique(r_idx, return_inverse=True)  # references this block needs
        # 2. every shift at full resolution on the shortlisted (reference, alignment) pairs (float32)
        crops = _crop(qv, margin, d)[rows[:, None], a_idx].reshape(b * shortlist, -1)  # (B*T, P)
        pair_q = _standardise(crops).reshape(b * shortlist, *window)
        fine = _ncc_shifts(pair_q, ref[used], where.reshape(-1), margin, max_shift)  # (B*T, S)
        fine, fine_s = fine.max(1)
        fine, fine_s = fine.reshape(b, shortlist), fine_s.reshape(b, shortlist)
        best = fine.argmax(1)
        # 3. the winner's NCC again, in float64
        for i in range(b):
            t = int(best[i])
            flips_i, angle, axis = grid[int(a_idx[i, t])]
            shift = _shift_of(int(fine_s[i, t]), max_shift, d)
            r = int(r_idx[i, t])
            at = tuple(slice(margin + s, margin + s + w) for s, w in zip(shift, window))
            ncc = (_standardise(_crop(qv[i, int(a_idx[i, t])], margin, d).double().reshape(1, -1))
                   * _standardise(ref[r][at].double().reshape(1, -1))).sum()
            indices.append(r)
            dists.append(float(1.0 - ncc))
            aligns.append(Alignment(tuple(flips_i), float(angle), int(axis), shift))
    if not indices:
        return NearCopies(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64), [])
    return NearCopies(torch.tensor(indices, dtype=torch.long), torch.tensor(dists, dtype=torch.float64).clamp(0.0, 2.0), aligns)


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
    pool = F.avg_pool2d if d == 2 else F.avg_pool3d
    r64 = refs.double()
    mean = pool(r64[:, None], window, stride=1)[:, 0] * n  # window sums (U, *S), float64: no cancellation
    sq = pool(r64[:, None] ** 2, window, stride=1)[:, 0] * n
    keep = (slice(None),) + (slice(margin - shift, margin + shift + 1),) * d
    norm = (sq - mean**2 / n).clamp_min(0.0).sqrt()[keep].reshape(len(refs), -1).to(refs.dtype)  # (U, S)
    out = torch.empty(len(crops), (2 * shift + 1) ** d, dtype=refs.dtype)
    step = max(1, PAIR_ELEMENTS // math.prod(size))
    for lo in range(0, len(crops), step):
        c = crops[lo : lo + step]
        c_f = torch.fft.rfftn(c, s=size, dim=dims)  # crop at the origin, zero-padded
        corr = torch.fft.irfftn(c_f.conj() * ref_f[which[lo : lo + step]], s=size, dim=dims)[keep]
        out[lo : lo + step] = corr.reshape(len(c), -1) / norm[which[lo : lo + step]].clamp_min(EPS)
    return out
