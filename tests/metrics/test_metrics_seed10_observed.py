"""Behaviours a fresh mutation sample of the metrics package (seed 10) found unobserved: what each returns and how much work the PRDC screen saves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import beta

import udl_med.metrics.prdc as prdc_module
from udl_med.metrics.calibration import calibrate, subject_scores
from udl_med.metrics.memorization import memorization_tensors
from udl_med.metrics.nearcopy import near_copy_distance
from udl_med.metrics.prdc import kth_neighbour_radii, prdc


def test_subject_scores_take_a_grid_of_distances_flat() -> None:
    subjects, scores = subject_scores(np.array([[0.5, 0.2], [0.4, 0.9]]), ["a", "b", "a", "c"])
    assert subjects == ["a", "b", "c"] and scores.tolist() == [0.4, 0.2, 0.9]


def test_calibration_keeps_the_requested_rate_and_the_exact_beta_interval() -> None:
    scores = np.linspace(0.1, 1.0, 39)
    cal = calibrate(scores, rate=0.1, level=0.9)
    n, k = 39, 4  # floor(40 * 0.1)
    assert cal.rate == 0.1 and cal.rank == k and cal.calibrated_rate == k / (n + 1) and cal.threshold == scores[k - 1]
    assert cal.interval == (float(beta.ppf(0.05, k, n + 1 - k)), float(beta.ppf(0.95, k, n + 1 - k)))


def test_memorisation_reports_its_counts_by_name() -> None:
    g = torch.Generator().manual_seed(0)
    train, holdout, new = (torch.rand(n, 1, 16, 16, generator=g) * 2 - 1 for n in (6, 20, 4))
    result = memorization_tensors(torch.cat([new, train[:2]]), train, holdout, rate=0.1)
    assert result["n_train"] == 6 and result["n_flagged"] == len(result["flagged_index"]) >= 2


def test_near_copy_distances_are_float64() -> None:
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(3, 1, 16, 16, generator=g)
    found = near_copy_distance(ref[:2] + 1e-3, ref)
    assert found.distance.dtype == torch.float64 and found.index.dtype == torch.long


def test_the_float32_screen_decides_almost_every_pair_itself() -> None:
    """The point of the screen: on continuous features only pairs within the rounding bound of a
    threshold are recomputed in float64 (a bound far too wide would recompute them all)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 64)).astype(np.float32), rng.normal(0.2, 1.1, size=(300, 64)).astype(np.float32)
    before = prdc_module._NEAR_PAIRS[0]
    prdc(x, y, 5, 5)
    assert prdc_module._NEAR_PAIRS[0] - before < 0.01 * 300 * 300


def test_radii_of_rows_whose_near_ties_run_past_the_candidates_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """A centre with 30 neighbours at squared distances 1 + j 1e-9: all inside the float32 band,
    so the k-th is found by the whole-row float64 fallback, and it must be the k-th, not the next."""
    rng = np.random.default_rng(2)
    angles = rng.uniform(0, 2 * np.pi, 30)
    radii = np.sqrt(1.0 + 1e-9 * rng.permutation(30))
    ring = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    x = np.concatenate([np.zeros((1, 2)), ring])
    before = prdc_module._FALLBACK_ROWS[0]
    fast = kth_neighbour_radii(x, (3, 5))
    assert prdc_module._FALLBACK_ROWS[0] > before  # the centre's row went the fallback way
    monkeypatch.setattr(prdc_module, "_float32_is_exact_enough", lambda: False)
    slow = kth_neighbour_radii(x, (3, 5))
    for k in (3, 5):
        # other rows: float64 pair sums (einsum) and matmul sums may differ in the last bit
        torch.testing.assert_close(fast[k], slow[k], rtol=0, atol=1e-14)
        assert fast[k][0] ** 2 == pytest.approx(1.0 + (k - 1) * 1e-9, abs=1e-13), k  # the centre: ring rank k - 1


def test_memorisation_states_its_interval_at_the_level_asked() -> None:
    g = torch.Generator().manual_seed(3)
    train, holdout, new = (torch.rand(n, 1, 16, 16, generator=g) * 2 - 1 for n in (6, 20, 4))
    result = memorization_tensors(new, train, holdout, rate=0.1, level=0.8)
    scores = near_copy_distance(holdout, train).distance
    assert result["level"] == 0.8 and result["stated_rate_interval"] == list(calibrate(scores, 0.1, 0.8).interval)


def test_radii_refuse_too_few_rows_word_for_word() -> None:
    with pytest.raises(Exception, match=r"^features: 3 sample\(s\), at least 6 needed for k = 5 nearest neighbours$"):
        kth_neighbour_radii(np.zeros((3, 2)), (1, 5))


def test_ssim_uses_monai_s_11_voxel_window_on_large_images() -> None:
    from monai.metrics import SSIMMetric

    from udl_med.metrics.translation import ssim

    g = torch.Generator().manual_seed(4)
    x = torch.rand(24, 24, generator=g)
    y = (x + 0.3 * torch.rand(24, 24, generator=g)).clamp(0, 1)
    expected = float(SSIMMetric(spatial_dims=2, data_range=1.0, win_size=11)(x[None, None], y[None, None]).mean())
    assert ssim(x, y, data_range=1.0) == pytest.approx(expected, abs=1e-7)


def test_prdc_refuses_a_level_of_one_or_more() -> None:
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(Exception, match=r"^confidence level must be in \(0, 1\), got 1.5$"):
        prdc_module.prdc_bootstrap(x, x + 1, n_boot=5, level=1.5)


@pytest.mark.parametrize("exact", [False, True])
def test_density_with_its_own_k_is_the_same_in_small_blocks(exact: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """k_pr != k_dc (the default 3 and 5) over many row blocks: the density count sums every block,
    and the float64 path's column blocks line up with their norms."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(90, 6)), rng.normal(0.3, 1.2, size=(70, 6))
    if exact:
        monkeypatch.setattr(prdc_module, "_float32_is_exact_enough", lambda: False)
    whole = prdc(x, y)
    assert prdc(x, y, chunk_elements=300) == whole  # blocks of 4 rows
    assert prdc(x, y, chunk_elements=50) == whole  # one row at a time; float64: blocks of 50 columns
    assert whole.density > 0
