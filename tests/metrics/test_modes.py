"""Mode coverage (VEEGAN / PacGAN): hand cases for high quality and coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from udl_med.data.points import PointsConfig, PointsDataset
from udl_med.metrics.modes import mode_coverage

RING = PointsConfig(mixture="ring").centres()
STD = 0.02


def test_samples_on_three_of_eight_modes() -> None:
    samples = RING[[0, 3, 5, 0, 3]]
    r = mode_coverage(samples, RING, STD)
    assert (r.modes_covered, r.n_modes, r.high_quality_fraction) == (3, 8, 1.0)
    assert r.counts.tolist() == [2, 0, 0, 2, 0, 1, 0, 0]


def test_far_samples_are_not_high_quality() -> None:
    samples = torch.tensor([[0.0, 0.0], [10.0, 10.0], [1.0, 1.0]])
    r = mode_coverage(samples, RING, STD)
    assert r.modes_covered == 0 and r.high_quality_fraction == 0.0 and r.counts.sum() == 0


def test_a_low_quality_sample_covers_no_mode() -> None:
    # 2.9 std off mode 1 (high quality), 3.1 std off mode 2 (low quality): only mode 1 is covered
    off = torch.tensor([1.0, 0.0]) * STD
    samples = torch.stack([RING[1] + 2.9 * off, RING[2] + 3.1 * off, RING[2] + 3.1 * off])
    r = mode_coverage(samples, RING, STD)
    assert r.modes_covered == 1 and r.counts[1] == 1 and r.counts[2] == 0
    assert r.high_quality_fraction == pytest.approx(1 / 3)
    assert mode_coverage(samples, RING, STD, threshold=3.2).modes_covered == 2


def test_real_data_covers_every_mode() -> None:
    for mixture in ("ring", "grid"):
        ds = PointsDataset(PointsConfig(mixture=mixture, n_eval=2500), "val", seed=0)
        r = mode_coverage(ds.points, ds.centres, ds.std)
        assert r.modes_covered == len(ds.centres)
        # 2D Gaussian: P(|x| <= 3 std) = 1 - exp(-4.5) = 0.989
        assert r.high_quality_fraction == pytest.approx(1 - np.exp(-4.5), abs=0.01)
        # E[r^2 | r < 3] of a 2D standard Gaussian = 2 - 9 e^-4.5 / (1 - e^-4.5): spread 0.974
        assert r.spread == pytest.approx(np.sqrt((2 - 9 * np.exp(-4.5) / (1 - np.exp(-4.5))) / 2), abs=0.03)


def test_spread_tells_point_masses_from_a_mode_wide_cloud() -> None:
    assert mode_coverage(RING[[0, 3, 5]], RING, STD).spread == 0.0
    # every sample 2 std off its mode along x: per-coordinate RMS sqrt(4 / 2) = 1.41 std
    r = mode_coverage(RING[[0, 3]] + torch.tensor([2 * STD, 0.0]), RING, STD)
    assert r.spread == pytest.approx(np.sqrt(2.0))
    assert np.isnan(mode_coverage(torch.tensor([[9.0, 9.0]]), RING, STD).spread)


def test_bad_inputs_raise_value_error() -> None:
    with pytest.raises(ValueError, match="samples"):
        mode_coverage(torch.zeros(5), RING, STD)
    with pytest.raises(ValueError, match="coordinates"):
        mode_coverage(torch.zeros(5, 3), RING, STD)
    with pytest.raises(ValueError, match="std"):
        mode_coverage(torch.zeros(5, 2), RING, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        mode_coverage(torch.full((5, 2), float("nan")), RING, STD)
    with pytest.raises(ValueError):
        mode_coverage(torch.zeros(0, 2), RING, STD)
