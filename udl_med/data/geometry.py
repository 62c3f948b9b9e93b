"""Image geometry: spacing, origin and direction (ITK/LPS) and MONAI's RAS affine.

udl-med keeps geometry the way SimpleITK reports it: ``spacing`` and ``origin`` as
tuples of floats, ``direction`` as a flat row-major tuple (9 values in 3D, 4 in 2D)
whose columns are the physical directions of the index axes, in LPS patient
coordinates (the DICOM and ITK convention). MONAI's ``affine`` is the same grid in RAS,
as ``monai.data.ITKReader`` builds it (``affine_lps_to_ras=True``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TOLERANCE_MM = 1e-4  # an output's geometry equals its input's within this (mm): writers must not drift


@dataclass(frozen=True)
class Geometry:
    """Spacing (mm), origin (mm) and direction cosines of an image grid, in LPS."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # flat, row-major, ndim * ndim values

    def __post_init__(self) -> None:
        n = len(self.spacing)
        if len(self.origin) != n or len(self.direction) != n * n:
            raise ValueError(
                f"inconsistent geometry: spacing {self.spacing}, origin {self.origin}, direction {self.direction}"
            )
        if any(not s > 0 for s in self.spacing):
            raise ValueError(f"spacing must be positive, got {self.spacing}")

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(self.ndim, self.ndim)

    @classmethod
    def identity(cls, ndim: int) -> Geometry:
        return cls((1.0,) * ndim, (0.0,) * ndim, tuple(np.eye(ndim).ravel().tolist()))

    @classmethod
    def create(cls, spacing: Sequence[float], origin: Sequence[float], direction: Any) -> Geometry:
        """Build from any sequences or arrays; ``direction`` flat or as a square matrix."""
        return cls(
            tuple(float(v) for v in np.asarray(spacing, dtype=np.float64).ravel()),
            tuple(float(v) for v in np.asarray(origin, dtype=np.float64).ravel()),
            tuple(float(v) for v in np.asarray(direction, dtype=np.float64).ravel()),
        )

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Geometry | None:
        """Geometry from a MetaTensor's meta: the ITK keys, else the RAS ``affine``."""
        if all(k in meta for k in ("spacing", "origin", "direction")):
            return cls.create(meta["spacing"], meta["origin"], meta["direction"])
        if "affine" in meta and meta["affine"] is not None:
            return cls.from_ras_affine(np.asarray(meta["affine"], dtype=np.float64))
        return None

    @classmethod
    def from_ras_affine(cls, affine: np.ndarray) -> Geometry:
        """Invert :meth:`ras_affine`: split a (n+1, n+1) RAS affine into LPS geometry."""
        affine = np.asarray(affine, dtype=np.float64)
        n = affine.shape[0] - 1
        lps = _ras_flip(n) @ affine
        spacing = np.linalg.norm(lps[:n, :n], axis=0)
        if np.any(spacing <= 0):
            raise ValueError(f"affine has a zero column: {affine.tolist()}")
        return cls.create(spacing, lps[:n, n], lps[:n, :n] / spacing)

    def lps_affine(self) -> np.ndarray:
        """(n+1, n+1) affine from voxel index to LPS millimetres."""
        n = self.ndim
        affine = np.eye(n + 1)
        affine[:n, :n] = self.direction_matrix * np.asarray(self.spacing)
        affine[:n, n] = self.origin
        return affine

    def ras_affine(self) -> np.ndarray:
        """(n+1, n+1) affine from voxel index to RAS millimetres, as MONAI stores it."""
        return _ras_flip(self.ndim) @ self.lps_affine()

    def close_to(self, other: Geometry, tol: float = TOLERANCE_MM) -> bool:
        """True when spacing, origin and direction agree within ``tol``."""
        if other.ndim != self.ndim:
            return False
        return bool(
            np.allclose(self.spacing, other.spacing, rtol=0, atol=tol)
            and np.allclose(self.origin, other.origin, rtol=0, atol=tol)
            and np.allclose(self.direction, other.direction, rtol=0, atol=tol)
        )

    def as_meta(self) -> dict[str, Any]:
        return {"spacing": self.spacing, "origin": self.origin, "direction": self.direction}


def _ras_flip(n: int) -> np.ndarray:
    flip = np.eye(n + 1)
    flip[0, 0] = flip[1, 1] = -1.0  # LPS <-> RAS negates x and y (also in 2D, as MONAI does)
    return flip
