"""PNG grids of images in [-1, 1], to look at samples, reconstructions and translations."""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


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
    from PIL import Image

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}.png")
    try:
        Image.fromarray(grid, mode="L").save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
