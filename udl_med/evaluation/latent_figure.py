"""Scatter panels of codes coloured by class, side by side in one PNG (PIL only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from udl_med.io_utils import atomic_write

PANEL = 360  # side of a panel's plot area in pixels
MARGIN = 28
TITLE_LINE = 13
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127))


@dataclass(frozen=True)
class Panel:
    """One scatter: ``xy`` ``(N, 2)`` points, ``labels`` ``(N,)`` class indices, ``lines`` of title text."""
    xy: np.ndarray
    labels: np.ndarray
    lines: tuple[str, ...]


def save_panels(panels: Sequence[Panel], path: str | Path, class_names: Sequence[str] | None = None) -> Path:
    """Draw ``panels`` left to right, each with its own axes (limits of its points), a legend below.

    Raises:
        ValueError: no panels.
    """

    if not panels:
        raise ValueError("save_panels needs at least one panel")
    title_h = TITLE_LINE * max(len(p.lines) for p in panels) + 6
    classes = sorted({int(c) for p in panels for c in np.asarray(p.labels).reshape(-1)})
    legend_h = TITLE_LINE + 8
    width, height = len(panels) * (PANEL + 2 * MARGIN), title_h + PANEL + 2 * MARGIN + legend_h
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for i, panel in enumerate(panels):
        x0 = i * (PANEL + 2 * MARGIN) + MARGIN
        y0 = title_h + MARGIN
        for j, line in enumerate(panel.lines):
            draw.text((x0, 4 + j * TITLE_LINE), line, fill="black")
        draw.rectangle([x0, y0, x0 + PANEL, y0 + PANEL], outline="black")
        xy = np.asarray(panel.xy, np.float64)
        ok = np.isfinite(xy).all(1)
        xy, labels = xy[ok], np.asarray(panel.labels).reshape(-1)[ok]
        if len(xy):
            lo, hi = xy.min(0), xy.max(0)
            span = np.maximum(hi - lo, 1e-9)
            lo, hi = lo - 0.05 * span, hi + 0.05 * span
            u = (xy - lo) / (hi - lo)
            px = x0 + u[:, 0] * PANEL
            py = y0 + (1 - u[:, 1]) * PANEL
            for k in np.random.default_rng(0).permutation(len(xy)):  # no class drawn wholly on top
                colour = COLOURS[int(labels[k]) % len(COLOURS)]
                draw.ellipse([px[k] - 2, py[k] - 2, px[k] + 2, py[k] + 2], fill=colour)
            draw.text((x0, y0 + PANEL + 3), f"x {lo[0]:.3g}..{hi[0]:.3g}", fill="black")
            draw.text((x0 + PANEL // 2, y0 + PANEL + 3), f"y {lo[1]:.3g}..{hi[1]:.3g}", fill="black")
    x = MARGIN
    for c in classes:
        name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
        draw.rectangle([x, height - legend_h + 4, x + 10, height - legend_h + 14], fill=COLOURS[c % len(COLOURS)])
        draw.text((x + 14, height - legend_h + 3), name, fill="black")
        x += 24 + 7 * len(name)
    return atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG"))


__all__ = ["Panel", "save_panels"]
