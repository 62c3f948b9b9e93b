"""Differentiable augmentation of what a discriminator sees (DiffAugment), 2D and 3D.

Zhao, Liu, Lin, Zhu & Han, "Differentiable Augmentation for Data-Efficient GAN
Training", NeurIPS 2020 (https://arxiv.org/abs/2006.10738; code
mit-han-lab/data-efficient-gans). The same random transform T is applied to real and
generated images in both players' losses, ``L_D = f(-D(T(x))) + f(D(T(G(z))))`` and
``L_G = f(-D(T(G(z))))``; T is differentiable, so G's gradient flows through it.

Each transform is written once as a deterministic function of its parameters (so a test,
or a paired caller, can apply one draw to several batches) and drawn per item by
:class:`DiffAugment` from the global torch RNG on the input's device (the engine seeds
and checkpoints it). Images are channel-first ``(B, C, *spatial)`` with any number of
spatial axes; intensities are the normalised window ([-1, 1] for CT and MR), so the
intensity policy is brightness and contrast of that window, not RGB saturation.

Policies (DiffAugment's own settings):

- ``translation``: an integer shift of up to 1/8 of the size along every axis, per item,
  the uncovered border filled with 0;
- ``cutout``: a box of half the size per axis, centred anywhere, filled with 0;
- ``intensity``: brightness ``b ~ U(-0.5, 0.5)`` added, contrast ``c ~ U(0.5, 1.5)``
  scaling each item about its mean: ``(x - mean) * c + mean + b``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

DIFFAUGMENT_POLICIES = ("translation", "cutout", "intensity")
TRANSLATION_RATIO = 1 / 8  # DiffAugment: shifts up to 1/8 of the size
CUTOUT_RATIO = 1 / 2  # DiffAugment: a box of half the size
BRIGHTNESS = 0.5  # DiffAugment's rand_brightness: x + U(-0.5, 0.5)
CONTRAST = (0.5, 1.5)  # DiffAugment's rand_contrast: (x - mean) * U(0.5, 1.5) + mean


def _axis_view(index: Tensor, ndim: int, axis: int) -> Tensor:
    """``index (B, n)`` shaped to broadcast along tensor dimension ``axis`` of a ``ndim``-D batch."""
    shape = [index.shape[0]] + [1] * (ndim - 1)
    shape[axis] = index.shape[1]
    return index.reshape(shape)


def reflect_index(index: Tensor, n: int) -> Tensor:
    """Indices folded into ``[0, n)`` by mirroring about the border voxels (``abcd|cba``), as ``reflect`` padding."""
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * (n - 1)
    index = index.remainder(period)
    return torch.where(index < n, index, period - index)


def translate(x: Tensor, shift: Tensor, fill: float = 0.0, reflect: bool = False, replicate: bool = False) -> Tensor:
    """``x (B, C, *spatial)`` moved by integer ``shift (B, spatial_dims)`` voxels per item (output[i] = input[i - shift]).

    The uncovered border is ``fill`` (DiffAugment's zero padding), with ``reflect`` the
    mirror image of the inside (ADA's pixel blitting), or with ``replicate`` the edge voxels
    repeated (the K+1 consistency shift). Differentiable in ``x``.
    """
    if shift.shape != (x.shape[0], x.ndim - 2):
        raise ValueError(f"shift must be (B, spatial_dims) = {(x.shape[0], x.ndim - 2)}, got {tuple(shift.shape)}")
    out, inside = x, None
    for a in range(x.ndim - 2):
        n, dim = x.shape[2 + a], 2 + a
        index = torch.arange(n, device=x.device)[None, :] - shift[:, a : a + 1].to(x.device).long()  # (B, n)
        if reflect:
            index = reflect_index(index, n)
        elif replicate:
            index = index.clamp(0, n - 1)
        else:
            valid = (index >= 0) & (index < n)
            inside = _axis_view(valid, x.ndim, dim) if inside is None else inside & _axis_view(valid, x.ndim, dim)
            index = index.clamp(0, n - 1)
        out = torch.gather(out, dim, _axis_view(index, x.ndim, dim).expand(*out.shape[:dim], n, *out.shape[dim + 1 :]))
    if inside is None:
        return out
    return torch.where(inside, out, torch.full_like(out, fill))


def flip(x: Tensor, flips: Tensor) -> Tensor:
    """``x (B, C, *spatial)`` mirrored along spatial axis ``a`` of the items where ``flips (B, spatial_dims)`` is true."""
    out = x
    for a in range(x.ndim - 2):
        where = flips[:, a].to(x.device).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        out = torch.where(where, out.flip(2 + a), out)
    return out


def cutout(x: Tensor, centre: Tensor, size: Sequence[int], fill: float = 0.0) -> Tensor:
    """``x`` with the box ``[centre - size // 2, centre - size // 2 + size)`` per axis (clipped) set to ``fill``.

    ``centre (B, spatial_dims)`` integer voxel indices; ``size`` one length per axis.
    """
    if centre.shape != (x.shape[0], x.ndim - 2) or len(size) != x.ndim - 2:
        raise ValueError(f"centre must be (B, spatial_dims) = {(x.shape[0], x.ndim - 2)} and size have spatial_dims entries")
    box = None
    for a in range(x.ndim - 2):
        lo = centre[:, a : a + 1].to(x.device).long() - size[a] // 2  # (B, 1)
        grid = torch.arange(x.shape[2 + a], device=x.device)[None, :]
        inside = _axis_view((grid >= lo) & (grid < lo + size[a]), x.ndim, 2 + a)
        box = inside if box is None else box & inside
    return torch.where(box, torch.full_like(x, fill), x)


def intensity(x: Tensor, brightness: Tensor, contrast: Tensor) -> Tensor:
    """``(x - mean) * contrast + mean + brightness`` per item: ``brightness, contrast (B,)``, mean over all non-batch axes."""
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return (x - mean) * contrast.to(x).reshape(shape) + mean + brightness.to(x).reshape(shape)


def check_policy(policy: Sequence[str], valid: Sequence[str]) -> tuple[str, ...]:
    """``policy`` as a tuple; ``ValueError`` names an unknown or repeated entry and lists the valid ones."""
    for i, name in enumerate(policy):
        if name not in valid:
            raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(valid)}")
        if name in policy[:i]:
            raise ValueError(f"augmentation {name!r} is listed twice")
    return tuple(policy)


class DiffAugment(nn.Module):
    """DiffAugment's transforms, each drawn per item and applied to every item.

    Args:
        policy: the transforms in order, a subset of ``translation``, ``cutout``,
            ``intensity`` (DiffAugment applies colour, then translation, then cutout; so
            does this class whatever the order given).

    Raises:
        ValueError: an unknown or repeated policy, or an empty one.
    """

    def __init__(self, policy: Sequence[str] = DIFFAUGMENT_POLICIES) -> None:
        super().__init__()
        if not policy:
            raise ValueError("policy must name at least one transform")
        self.policy = check_policy(policy, DIFFAUGMENT_POLICIES)

    def forward(self, x: Tensor) -> Tensor:
        """Augmented ``x (B, C, *spatial)``: one draw per item, from the global RNG on ``x``'s device."""
        b, dims, size, dev = x.shape[0], x.ndim - 2, x.shape[2:], x.device
        if "intensity" in self.policy:
            brightness = (torch.rand(b, device=dev) - 0.5) * (2 * BRIGHTNESS)
            contrast = torch.rand(b, device=dev) * (CONTRAST[1] - CONTRAST[0]) + CONTRAST[0]
            x = intensity(x, brightness, contrast)
        if "translation" in self.policy:
            limit = torch.tensor([int(s * TRANSLATION_RATIO + 0.5) for s in size], device=dev)
            shift = torch.floor(torch.rand(b, dims, device=dev) * (2 * limit + 1)).long() - limit
            x = translate(x, shift)
        if "cutout" in self.policy:
            box = [int(s * CUTOUT_RATIO + 0.5) for s in size]
            centre = torch.floor(torch.rand(b, dims, device=dev) * torch.tensor(size, device=dev)).long()
            x = cutout(x, centre, box)
        return x

    def extra_repr(self) -> str:
        return f"policy={self.policy}"


__all__ = ["DIFFAUGMENT_POLICIES", "DiffAugment", "check_policy", "cutout", "flip", "intensity", "reflect_index", "translate"]
