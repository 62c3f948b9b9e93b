"""2D Gaussian mixtures: the mode centres, fixed seeded points, the batch fast path, scatter plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch.utils.data import default_collate

from udl_med.data.points import PointsConfig, PointsDataset
from udl_med.data.preview import SCATTER_SIZE, save_scatter


def test_ring_centres_are_distinct_on_the_circle() -> None:
    cfg = PointsConfig(mixture="ring")
    c = cfg.centres()
    assert c.shape == (8, 2) and c.dtype == torch.float32
    torch.testing.assert_close(c.norm(dim=1), torch.full((8,), 2.0))
    d = torch.cdist(c, c) + torch.eye(8) * 10
    # neighbours on a regular octagon of radius 2: 2 * 2 * sin(pi / 8) apart, none repeated
    assert float(d.min()) == pytest.approx(4 * math.sin(math.pi / 8), abs=1e-5)
    torch.testing.assert_close(c[0], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(c[2], torch.tensor([0.0, 2.0]), atol=1e-6, rtol=0)
    assert cfg.scale() == 0.02


def test_grid_centres_are_the_25_means() -> None:
    cfg = PointsConfig(mixture="grid")
    c = cfg.centres()
    assert c.shape == (25, 2)
    want = {(x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)}
    assert {(round(float(a)), round(float(b))) for a, b in c} == want
    torch.testing.assert_close(c, c.round())
    assert cfg.scale() == 0.05
    assert PointsConfig(mixture="grid", std=0.1).scale() == 0.1
    assert PointsConfig(mixture="grid", grid_size=3, spacing=1.0).centres().abs().max() == 1.0


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValidationError):
        PointsConfig(mixture="ring", n_mode=8)
    with pytest.raises(ValidationError):
        PointsConfig(mixture="spiral")
    with pytest.raises(ValidationError):
        PointsConfig(std=0.0)


@pytest.mark.parametrize("mixture", ["ring", "grid"])
def test_dataset_is_deterministic_per_seed_and_split(mixture: str) -> None:
    cfg = PointsConfig(mixture=mixture, n_train=3000, n_eval=500)
    a, b = PointsDataset(cfg, "train", seed=1), PointsDataset(cfg, "train", seed=1)
    torch.testing.assert_close(a.points, b.points, rtol=0, atol=0)
    assert len(a) == 3000 and len(PointsDataset(cfg, "val", seed=1)) == 500
    assert not torch.equal(a.points[:500], PointsDataset(cfg, "train", seed=2).points[:500])
    assert not torch.equal(a.points[:500], PointsDataset(cfg, "val", seed=1).points)
    assert a.set_random_state(seed=5) is a
    torch.testing.assert_close(a.points, b.points, rtol=0, atol=0)
    item = a[3]
    assert set(item) == {"image"} and item["image"].shape == (2,) and item["image"].dtype == torch.float32
    # every point lies near its own mode, and every mode is used
    dist = (a.points - a.centres[a.modes]).norm(dim=1)
    assert float(dist.max()) < 6 * a.std
    assert float(dist.pow(2).mean() / 2) == pytest.approx(a.std**2, rel=0.1)
    assert torch.bincount(a.modes, minlength=len(a.centres)).min() > 0
    torch.testing.assert_close(a.centres, cfg.centres())


def test_batch_equals_stacked_items() -> None:
    ds = PointsDataset(PointsConfig(mixture="grid", n_train=200), "train", seed=0)
    idx = [5, 0, 199, 5, 42]
    fast = ds.batch(idx)
    slow = default_collate([ds[i] for i in idx])
    assert fast["image"].shape == (5, 2)
    torch.testing.assert_close(fast["image"], slow["image"], rtol=0, atol=0)


def test_save_scatter_writes_a_marked_png(tmp_path: Path) -> None:
    from PIL import Image

    ds = PointsDataset(PointsConfig(mixture="ring", n_eval=500), "val", seed=0)
    path = save_scatter(ds.points, tmp_path / "sub" / "ring.png", centres=ds.centres)
    assert path == tmp_path / "sub" / "ring.png" and not list(path.parent.glob(".*tmp*"))
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape == (SCATTER_SIZE, SCATTER_SIZE, 3)
    blue = (img[..., 2] > 150) & (img[..., 0] < 100)
    red = (img[..., 0] > 150) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert blue.sum() > 100 and red.sum() > 50  # dots and centre markers are drawn
    # the dots sit where the modes are: the mode at angle 0 (x = 2, y = 0) is right of the middle row
    row = img.shape[0] // 2
    assert blue[row - 10 : row + 10, img.shape[1] // 2 + 50 :].any()
    assert not blue[row - 20 : row + 20, img.shape[1] // 2 - 20 : img.shape[1] // 2 + 20].any()  # no dots at (0, 0)
    with pytest.raises(ValueError, match="points"):
        save_scatter(torch.zeros(4, 3), tmp_path / "bad.png")
