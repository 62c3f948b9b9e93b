"""Phantoms: deterministic, realistic HU and MR contrast, a lesion class that must be seen; PNG grids."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_erosion

from udl_med.data.geometry import Geometry
from udl_med.data.io import read_image
from udl_med.data.phantoms import NUM_CLASSES, TISSUES, make_phantom, write_phantoms
from udl_med.data.preview import save_grid


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv") as f:
        return list(csv.DictReader(f))


def test_manifest_and_files(phantom_dir: Path) -> None:
    rows = _rows(phantom_dir)
    assert list(rows[0]) == ["image", "label", "modality", "subject", "split"]
    assert len(rows) == 16 and {r["modality"] for r in rows} == {"CT", "MR"}
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert {int(r["label"]) for r in rows} == set(range(NUM_CLASSES)) and NUM_CLASSES >= 3
    for subject in {r["subject"] for r in rows}:
        pair = [r for r in rows if r["subject"] == subject]
        assert len(pair) == 2 and pair[0]["label"] == pair[1]["label"] and pair[0]["split"] == pair[1]["split"]
        assert (phantom_dir / subject / "tissue.nii.gz").exists()


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = write_phantoms(tmp_path / "a", n=2, shape=(16, 16, 8), seed=11)
    write_phantoms(tmp_path / "b", n=2, shape=(16, 16, 8), seed=11)
    write_phantoms(tmp_path / "c", n=2, shape=(16, 16, 8), seed=12)
    assert a["n_images"] == 4
    for name in ("sub-000/ct.nii.gz", "sub-001/mr.nii.gz"):
        x, y, z = (read_image(tmp_path / d / name) for d in "abc")
        assert torch.equal(x.as_tensor(), y.as_tensor()) and x.meta["origin"] == y.meta["origin"]
        assert not torch.equal(x.as_tensor(), z.as_tensor())
    assert (tmp_path / "a" / "manifest.csv").read_text() == (tmp_path / "b" / "manifest.csv").read_text()


def test_geometry_is_varied_and_shared_by_ct_and_mr(phantom_dir: Path) -> None:
    rotated = 0
    for i in range(8):
        ct, mr = (read_image(phantom_dir / f"sub-{i:03d}" / f"{m}.nii.gz") for m in ("ct", "mr"))
        assert Geometry.from_meta(ct.meta).close_to(Geometry.from_meta(mr.meta))
        spacing = np.asarray(ct.meta["spacing"])
        assert spacing[2] > 1.8 * spacing[0]  # anisotropic
        assert np.abs(ct.meta["origin"]).max() > 1.0  # non-zero origin
        rotated += not np.allclose(np.reshape(ct.meta["direction"], (3, 3)), np.eye(3))
    assert 0 < rotated < 8


def _tissue_means(ph, image: np.ndarray) -> dict[str, float]:
    """Median of each tissue away from its in-plane edges (blur mixes thin layers with air)."""
    out = {}
    for i, t in enumerate(TISSUES):
        mask = ph.tissue == i
        core = binary_erosion(mask, structure=np.ones((3, 3, 1), bool))
        if mask.any():
            out[t] = float(np.median(image[core if core.sum() > 5 else mask]))
    return out


@pytest.mark.parametrize("lesion_class", [0, 1, 2])
def test_realistic_ct_and_mr_contrast(lesion_class: int) -> None:
    ph = make_phantom((40, 40, 16), lesion_class, np.random.default_rng(lesion_class), rotate=False)
    ct, mr = _tissue_means(ph, ph.ct), _tissue_means(ph, ph.mr)
    assert ct["air"] < -950 and -160 < ct["fat"] < -40 and 0 < ct["soft"] < 80 and ct["bone"] > 400
    assert ph.ct.min() >= -1000 and ph.ct.max() <= 1000  # inside the default CT window
    assert mr["fat"] > mr["liver"] > mr["bone"] and mr["fat"] > mr["soft"] > mr["air"]  # fat bright, bone and air dark
    assert mr["air"] > 0  # Rician noise floor: the magnitude of noise is positive
    if lesion_class:  # visible in both modalities, in the class's direction
        sign = -1 if lesion_class == 1 else 1
        assert sign * (ct["lesion"] - ct["liver"]) > 20 and sign * (mr["lesion"] - mr["liver"]) > 0.1 * mr["liver"]
    else:
        assert "lesion" not in ct


def test_mr_has_a_smooth_bias_field() -> None:
    """The same tissue varies slowly across the MR volume, not in the CT."""
    ph = make_phantom((48, 48, 16), 0, np.random.default_rng(5))
    fat = ph.tissue == TISSUES.index("fat")
    x = np.nonzero(fat)[0]
    left, right = fat & (np.arange(48)[:, None, None] < np.median(x)), fat & (np.arange(48)[:, None, None] >= np.median(x))
    mr_ratio = ph.mr[left].mean() / ph.mr[right].mean()
    ct_diff = abs(ph.ct[left].mean() - ph.ct[right].mean())
    assert abs(mr_ratio - 1) > 0.02 and ct_diff < 15


def test_lesion_class_is_not_readable_from_mean_intensity() -> None:
    """Leave-one-out nearest-centroid on volume means is near chance, yet every lesion stands out locally."""
    n = 36
    classes = np.arange(n) % NUM_CLASSES
    means = []
    for i in range(n):
        ph = make_phantom((32, 32, 12), int(classes[i]), np.random.default_rng([99, i]))
        means.append([ph.ct.mean(), ph.mr.mean()])
        lesion, liver = ph.tissue == TISSUES.index("lesion"), ph.tissue == TISSUES.index("liver")
        assert lesion.any() == bool(classes[i])
        if classes[i]:  # contrast against the liver core, in units of its noise, in both modalities
            core = binary_erosion(liver, structure=np.ones((3, 3, 1), bool))
            for image in (ph.ct, ph.mr):
                cnr = abs(image[lesion].mean() - image[core].mean()) / image[core].std()
                assert cnr > 1.5
    f = np.array(means)
    f = (f - f.mean(0)) / f.std(0)
    hits = 0
    for i in range(n):
        keep = np.arange(n) != i
        centroids = np.stack([f[keep & (classes == c)].mean(0) for c in range(NUM_CLASSES)])
        hits += int(np.argmin(((centroids - f[i]) ** 2).sum(1)) == classes[i])
    assert hits / n < 0.6  # chance is 1/3


def test_dicom_phantoms_match_nifti_ones(tmp_path: Path) -> None:
    write_phantoms(tmp_path / "n", n=2, shape=(16, 16, 8), seed=4, fmt="nifti")
    write_phantoms(tmp_path / "d", n=2, shape=(16, 16, 8), seed=4, fmt="dicom")
    write_phantoms(tmp_path / "d2", n=2, shape=(16, 16, 8), seed=4, fmt="dicom")
    files = sorted(p.relative_to(tmp_path / "d") for p in (tmp_path / "d").rglob("*.dcm"))
    assert files and all((tmp_path / "d" / f).read_bytes() == (tmp_path / "d2" / f).read_bytes() for f in files)  # byte for byte
    rows = _rows(tmp_path / "d")
    assert rows[0]["image"] == "sub-000/ct" and (tmp_path / "d" / "sub-000" / "ct").is_dir()
    for i in range(2):
        for m in ("ct", "mr"):
            a = read_image(tmp_path / "n" / f"sub-{i:03d}" / f"{m}.nii.gz")
            b = read_image(tmp_path / "d" / f"sub-{i:03d}" / m)
            assert b.meta["modality"] == m.upper() and b.meta["dicom"]["PatientID"] == f"sub-{i:03d}"
            assert Geometry.from_meta(a.meta).close_to(Geometry.from_meta(b.meta))
            assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max()) + 0.02


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_save_grid(tmp_path: Path, spatial_dims: int) -> None:
    size = (12, 10, 6)[:spatial_dims]
    x = torch.full((5, 3, *size), -1.0)
    x[:, 1] = 1.0  # the centre channel (2.5D) is the one shown
    x[0, 1, 0] = -1.0  # first image: its first column (X = 0) is dark
    path = save_grid(x, tmp_path / "grid.png")
    img = np.asarray(Image.open(path))
    pad, zoom = 2, 10  # tiles are enlarged until the short side has at least 96 pixels: 10 x 10
    h, w = 10 * zoom, 12 * zoom
    assert img.shape == (2 * (h + pad) + pad, 3 * (w + pad) + pad)  # 3 tiles per row, rows are Y, columns X
    tile = img[pad : pad + h, pad : pad + w]
    assert (tile[:, :zoom] == 0).all() and (tile[:, zoom:] == 255).all()
    assert img[0].max() == 0  # padding is black
