"""Synthetic subjects: paired CT and MR of one random anatomy, tissue labels, a lesion class.

Each subject is a body (an elliptic cylinder that tapers towards both ends, so the end
slices are air only) in air, with a subcutaneous fat layer, soft tissue, a spine-like
bone cylinder with two rib arcs, a kidney-like organ and a liver-like organ. The liver
holds a lesion whose class ``k`` is the subject's label:

====  ===========  ==============================  ==============================
k     lesion       CT                              MR
====  ===========  ==============================  ==============================
0     none         --                              --
1     hypo-dense   darker than the liver (~0 HU)   darker than the liver
2     hyper-dense  brighter than the liver (~180)  brighter than the liver
====  ===========  ==============================  ==============================

The lesion radius (35 to 60% of the liver's) and the body size vary at random, so the class cannot be
read from the mean intensity of a volume: it must be seen. Tissue values:

- CT in HU: air -1000, fat -100, soft tissue 40, kidney 30, liver 60, bone 700, plus a
  slight blur and Gaussian noise, clipped to the default CT window (-1000, 1000) HU so
  that normalisation is exactly invertible.
- MR (arbitrary units, T1-like): air 0, fat bright, bone dark, a smooth multiplicative
  bias field, a random scanner gain and Rician noise.

Geometry: anisotropic spacing (about 1 x 1 x 2.5 mm, jittered), a non-zero origin and,
for every third subject, a direction rotated about the slice axis (det +1). CT and MR
of a subject share the grid. Everything is drawn from ``numpy.random.default_rng((seed,
subject))``: the same seed gives the same files, and adding subjects keeps the others.

Files (``fmt="nifti"``)::

    OUT/sub-000/ct.nii.gz  mr.nii.gz  tissue.nii.gz
    OUT/manifest.csv        image,label,modality,subject,split

With ``fmt="dicom"`` the CT and MR are DICOM series folders ``ct/`` and ``mr/`` (one
patient and study per subject); the tissue map stays NIfTI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from udl_med.data.dicom import write_dicom_series
from udl_med.data.geometry import Geometry
from udl_med.data.manifest import write_manifest
from udl_med.data.writers import write_image
from udl_med.errors import InputError

log = logging.getLogger(__name__)

NUM_CLASSES = 3  # lesion classes: 0 none, 1 hypo-dense, 2 hyper-dense
CLASS_NAMES = ("none", "hypo", "hyper")
TISSUES = ("air", "fat", "soft", "bone", "kidney", "liver", "lesion")  # tissue map values 0..6
CT_HU = {"air": -1000.0, "fat": -100.0, "soft": 40.0, "bone": 700.0, "kidney": 30.0, "liver": 60.0}
MR_T1 = {"air": 0.0, "fat": 1.0, "soft": 0.45, "bone": 0.08, "kidney": 0.35, "liver": 0.6}
LESION_CT = {1: 0.0, 2: 180.0}
LESION_MR = {1: 0.3, 2: 0.9}


@dataclass
class Phantom:
    """One subject: CT (HU), MR, tissue map, all ``(X, Y, Z)``, on one grid."""

    ct: np.ndarray
    mr: np.ndarray
    tissue: np.ndarray  # uint8, indices into TISSUES
    lesion_class: int
    geometry: Geometry


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def make_phantom(shape: tuple[int, int, int], lesion_class: int, rng: np.random.Generator, rotate: bool = False) -> Phantom:
    """Draw one subject on a grid of ``shape`` voxels (X, Y, Z)."""
    nx, ny, nz = shape
    spacing = np.array([1.0, 1.0, 2.5]) * rng.uniform(0.85, 1.15, size=3)
    spacing[1] = spacing[0] * rng.uniform(0.97, 1.03)
    direction = _rotation_z(rng.uniform(-0.5, 0.5)) if rotate else np.eye(3)
    origin = rng.uniform(-150.0, 150.0, size=3)
    # millimetre coordinates of voxel centres relative to the grid centre (body frame)
    x = (np.arange(nx) - (nx - 1) / 2) * spacing[0]
    y = (np.arange(ny) - (ny - 1) / 2) * spacing[1]
    z = (np.arange(nz) - (nz - 1) / 2) * spacing[2]
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    half = np.array([nx * spacing[0], ny * spacing[1], nz * spacing[2]]) / 2

    cx, cy = rng.uniform(-0.08, 0.08, 2) * half[:2]
    ax, ay = rng.uniform(0.62, 0.9) * half[0], rng.uniform(0.5, 0.78) * half[1]
    length = rng.uniform(0.7, 0.85) * half[2]  # the body ends inside the grid
    taper = np.sqrt(np.clip(1.0 - (Z / length) ** 2, 0.0, None))  # 1 at the centre, 0 at the ends
    r_body = ((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2
    body = (r_body <= taper**2) & (np.abs(Z) < length)
    fat_mm = rng.uniform(0.16, 0.25) * min(ax, ay)  # anatomy scales with the body
    r_inner = ((X - cx) / max(ax - fat_mm, 1.0)) ** 2 + ((Y - cy) / max(ay - fat_mm, 1.0)) ** 2
    inner = body & (r_inner <= (taper * 0.97) ** 2)

    tissue = np.zeros(shape, np.uint8)
    tissue[body] = TISSUES.index("fat")
    tissue[inner] = TISSUES.index("soft")
    # spine: a cylinder near the back (LPS: +y is posterior), ribs: two arcs
    sx, sy = cx + rng.normal(0, 0.05) * ax, cy + ay * rng.uniform(0.45, 0.6)
    r_spine = rng.uniform(0.16, 0.22) * ay
    tissue[inner & ((X - sx) ** 2 + (Y - sy) ** 2 <= r_spine**2)] = TISSUES.index("bone")
    rib_r = rng.uniform(0.75, 0.85)
    ring = np.abs(np.sqrt(r_inner) - rib_r * taper) < 0.06
    tissue[inner & ring & (Y > cy) & (np.abs(Z % 12.0 - 6.0) < 2.0)] = TISSUES.index("bone")
    # kidney (left of the spine) and liver (anterior-right), random size
    kx, ky = sx + rng.choice([-1, 1]) * rng.uniform(0.35, 0.5) * ax, sy - rng.uniform(0.1, 0.2) * ay
    kr = rng.uniform(0.15, 0.22, size=3) * np.array([ax, ay, 2.0 * ay])
    kidney = inner & (((X - kx) / kr[0]) ** 2 + ((Y - ky) / kr[1]) ** 2 + (Z / kr[2]) ** 2 <= 1)
    tissue[kidney & (tissue == TISSUES.index("soft"))] = TISSUES.index("kidney")
    lx, ly = cx - ax * rng.uniform(0.15, 0.3), cy - ay * rng.uniform(0.0, 0.25)
    lr = np.array([ax * rng.uniform(0.45, 0.6), ay * rng.uniform(0.4, 0.55), length * rng.uniform(0.5, 0.75)])
    liver = inner & (((X - lx) / lr[0]) ** 2 + ((Y - ly) / lr[1]) ** 2 + (Z / lr[2]) ** 2 <= 1)
    tissue[liver & (tissue == TISSUES.index("soft"))] = TISSUES.index("liver")
    if lesion_class:  # random size and place inside the liver: the class is not in the mean intensity
        radius = rng.uniform(0.35, 0.6) * min(lr[0], lr[1])
        rz = max(radius, 1.2 * spacing[2])  # at least a few slices thick
        centre = np.array([lx, ly, 0.0]) + rng.uniform(-0.2, 0.2, 3) * lr
        d2 = ((X - centre[0]) / radius) ** 2 + ((Y - centre[1]) / radius) ** 2 + ((Z - centre[2]) / rz) ** 2
        tissue[(d2 <= 1.0) & (tissue == TISSUES.index("liver"))] = TISSUES.index("lesion")

    ct_lut = np.array([CT_HU[t] for t in TISSUES[:-1]] + [LESION_CT.get(lesion_class, CT_HU["liver"])])
    mr_lut = np.array([MR_T1[t] for t in TISSUES[:-1]] + [LESION_MR.get(lesion_class, MR_T1["liver"])])
    tissue_ct = ct_lut + np.concatenate([[0.0], rng.normal(0, 8.0, len(TISSUES) - 1)])  # per-subject tissue jitter
    ct = gaussian_filter(tissue_ct[tissue], sigma=rng.uniform(0.4, 0.8))
    ct = ct + rng.normal(0.0, rng.uniform(6.0, 15.0), shape) * body
    ct = np.clip(ct, -1000.0, 1000.0)

    mr = gaussian_filter(mr_lut[tissue], sigma=rng.uniform(0.4, 0.8))
    coords = [X / half[0], Y / half[1], Z / half[2]]
    log_bias = sum(rng.normal(0, 0.12) * c for c in coords) + sum(rng.normal(0, 0.08) * c * c for c in coords)
    mr = mr * np.exp(log_bias) * rng.uniform(600.0, 1400.0)  # bias field and scanner gain
    sigma = 0.025 * mr.max()
    mr = np.sqrt((mr + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)  # Rician noise
    geometry = Geometry.create(spacing, origin, direction)
    return Phantom(ct.astype(np.float32), mr.astype(np.float32), tissue, lesion_class, geometry)


def _splits(n: int) -> list[str]:
    """About 70 / 15 / 15 percent, at least one val and one test subject when n >= 3."""
    n_val = n_test = max(1, round(0.15 * n)) if n >= 3 else 0
    return ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test


def write_phantoms(
    out: str | Path,
    n: int = 8,
    shape: tuple[int, int, int] = (48, 48, 24),
    seed: int = 0,
    fmt: str = "nifti",
) -> dict[str, Any]:
    """Write ``n`` synthetic subjects and ``manifest.csv`` under ``out``.

    Args:
        out: output folder (created; existing phantom files are replaced).
        n: number of subjects; lesion classes are balanced over them.
        shape: grid size (X, Y, Z) in voxels, each at least 8.
        seed: the random seed; the same seed writes the same voxels.
        fmt: ``nifti`` or ``dicom`` (CT and MR as DICOM series folders).

    Returns:
        ``{"out", "manifest", "n_subjects", "n_images", "format", "shape", "seed",
        "num_classes", "splits"}``.

    Raises:
        InputError: ``n < 1``, a shape value below 8, an unknown format, or ``out`` is a file.
    """
    out = Path(out)
    if n < 1:
        raise InputError(out, f"the number of subjects must be at least 1, got {n}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(out, f"the shape must be 3 values of at least 8, got {list(shape)}")
    if fmt not in ("nifti", "dicom"):
        raise InputError(out, f"unknown format {fmt!r}; valid: nifti, dicom")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    classes = np.random.default_rng([seed, 2**31]).permutation(np.arange(n) % NUM_CLASSES)
    splits = _splits(n)
    rows = []
    for i in range(n):
        subject = f"sub-{i:03d}"
        rng = np.random.default_rng([seed, i])
        ph = make_phantom(shape, int(classes[i]), rng, rotate=(i % 3 == 2))
        folder = out / subject
        folder.mkdir(exist_ok=True)
        meta = {**ph.geometry.as_meta()}
        _write_labels(ph, folder / "tissue.nii.gz", write_image, meta)
        for modality, array in (("CT", ph.ct), ("MR", ph.mr)):
            name = modality.lower()
            if fmt == "dicom":
                tags = {
                    "PatientID": subject,
                    "PatientName": f"Phantom^{subject}",
                    "StudyInstanceUID": _uid(seed, subject, "study"),
                    "FrameOfReferenceUID": _uid(seed, subject, "frame"),
                    "StudyDate": "20240101",
                    "StudyTime": "120000",
                    "StudyID": subject,
                }
                write_dicom_series(array, folder / name, ph.geometry, modality, tags=tags, series_description=f"phantom {name}", uid_entropy=[seed, subject, name])
                image = f"{subject}/{name}"
            else:
                write_image(_tensor(array, {**meta, "modality": modality}), folder / f"{name}.nii.gz")
                image = f"{subject}/{name}.nii.gz"
            rows.append({"image": image, "label": ph.lesion_class, "modality": modality, "subject": subject, "split": splits[i]})
    manifest = out / "manifest.csv"
    write_manifest(manifest, rows)
    log.info("wrote %d phantom subjects to %s", n, out)
    return {
        "out": str(out),
        "manifest": str(manifest),
        "n_subjects": n,
        "n_images": len(rows),
        "format": fmt,
        "shape": list(shape),
        "seed": seed,
        "num_classes": NUM_CLASSES,
        "splits": {s: splits.count(s) for s in ("train", "val", "test")},
    }


def _uid(*parts: Any) -> str:
    from pydicom.uid import generate_uid  # lazy: pydicom is only needed for DICOM

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _tensor(array: np.ndarray, meta: dict[str, Any]):
    from monai.data import MetaTensor  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array))[None], meta=meta)


def _write_labels(ph: Phantom, path: Path, write_image, meta: dict[str, Any]) -> None:
    write_image(_tensor(ph.tissue, meta), path)
