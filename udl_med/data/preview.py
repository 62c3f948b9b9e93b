"""PNG grids of images in [-1, 1], to look at samples, reconstructions and translations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from udl_med.io_utils import atomic_write


def to_tiles(images: Tensor) -> np.ndarray:
    """(B, C, *spatial) in [-1, 1] -> (B, H, W) uint8 tiles.

    3D volumes show their middle slice along the last axis; several channels show the
    centre one (the slice itself for 2.5D stacks of ``2 * context + 1``), an even number
    the first. Index axis X runs left to right, Y top to bottom.
    """
    if images.ndim < 4:
        raise ValueError(f"images must be (B, C, *spatial) with 2 or 3 spatial dims, got shape {tuple(images.shape)}")
    x = images.detach().float().cpu()
    c = x.shape[1]
    x = x[:, c // 2 if c % 2 else 0]
    while x.ndim > 3:  # middle slice of each extra (last) spatial axis
        x = x[..., x.shape[-1] // 2]
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.transpose(1, 2).numpy()  # (B, X, Y) -> rows are Y, columns are X


MIN_TILE = 96  # tiles whose short side is smaller than this are enlarged (nearest neighbour) so a person can see them


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, pad: int = 2) -> Path:
    """Tile a batch into one greyscale PNG (written atomically).

    Args:
        images: (B, C, H, W[, D]) in [-1, 1].
        path: the PNG file.
        nrow: tiles per row (default: ``ceil(sqrt(B))``).
        pad: pixels of black between tiles.
    """
    from PIL import Image  # lazy: Pillow is only needed to write PNGs

    tiles = to_tiles(images)
    b, h, w = tiles.shape
    if b == 0:
        raise ValueError("save_grid needs at least one image")
    zoom = max(1, math.ceil(MIN_TILE / min(h, w)))
    if zoom > 1:
        tiles = tiles.repeat(zoom, axis=1).repeat(zoom, axis=2)
        b, h, w = tiles.shape
    cols = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad), np.uint8)
    for i in range(b):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = tiles[i]
    return atomic_write(Path(path), lambda tmp: Image.fromarray(grid, mode="L").save(tmp, format="PNG"))


SCATTER_SIZE = 400  # side of a scatter plot in pixels
_SCATTER_MARGIN = 24  # pixels between the image edge and the axes box


def save_scatter(
    points: Tensor | np.ndarray,
    path: str | Path,
    centres: Tensor | np.ndarray | None = None,
    limits: tuple[float, float] | None = None,
) -> Path:
    """Scatter plot of 2D points as a PNG (400 x 400 px, PIL only; written atomically).

    Points are small blue dots, mode centres open red circles, inside a black axes box
    labelled with its limits; x runs left to right, y bottom to top. Points outside the
    limits are drawn on the box edge (so they stay visible).

    Args:
        points: ``(N, 2)`` coordinates.
        path: the PNG file.
        centres: ``(M, 2)`` mode means to mark, or ``None``.
        limits: ``(low, high)`` of both axes (default: the centres' extent plus a quarter
            on each side, or the points' extent when there are no centres).
    """
    from PIL import Image, ImageDraw  # lazy: Pillow is only needed to write PNGs

    def as_xy(a: Tensor | np.ndarray, name: str) -> np.ndarray:
        a = a.detach().cpu().double().numpy() if isinstance(a, Tensor) else np.asarray(a, np.float64)
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"{name} must be (N, 2), got shape {tuple(a.shape)}")
        return a

    xy = as_xy(points, "points")
    c = as_xy(centres, "centres") if centres is not None else None
    if limits is None:
        ref = c if c is not None and len(c) else xy[np.isfinite(xy).all(1)]
        if len(ref) == 0:
            lo, hi = -1.0, 1.0
        else:
            lo, hi = float(ref.min()), float(ref.max())
            pad = 0.25 * max(hi - lo, 1e-6) if c is not None else 0.05 * max(hi - lo, 1e-6)
            lo, hi = lo - pad, hi + pad
    else:
        lo, hi = float(limits[0]), float(limits[1])
    if not hi > lo:
        raise ValueError(f"limits must be (low, high) with low < high, got {limits}")

    size, m = SCATTER_SIZE, _SCATTER_MARGIN
    box = size - 2 * m

    def to_px(a: np.ndarray) -> np.ndarray:
        a = a[np.isfinite(a).all(1)]
        u = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
        return np.stack([m + u[:, 0] * box, m + (1.0 - u[:, 1]) * box], 1)

    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([m, m, m + box, m + box], outline="black")
    if c is not None:  # open red circles, under the dots so that the dots stay visible
        for px, py in to_px(c):
            draw.ellipse([px - 8, py - 8, px + 8, py + 8], outline=(220, 0, 0), width=2)
    for px, py in to_px(xy):
        draw.rectangle([px - 1, py - 1, px + 1, py + 1], fill=(30, 80, 200))
    draw.text((m, m + box + 4), f"{lo:g}", fill="black")
    draw.text((m + box - 6 * len(f"{hi:g}"), m + box + 4), f"{hi:g}", fill="black")
    draw.text((2, m), f"{hi:g}", fill="black")
    draw.text((m + 4, 6), f"n={len(xy)}", fill="black")

    return atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG"))
