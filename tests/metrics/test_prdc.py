"""Precision, recall, density, coverage: equal to the reference package ``prdc``, chunked, bootstrapped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from udl_med.metrics._checks import MetricInputError
from udl_med.metrics.prdc import kth_neighbour_radii, prdc, prdc_bootstrap

reference = pytest.importorskip("prdc")  # test-only dependency (the dev extra)


def _sets(seed: int = 0, n: int = 120, m: int = 90, d: int = 8):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(0.4, 1.3, size=(m, d))


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("chunk", [50, 1 << 22])
def test_equal_to_prdc_with_one_k(k: int, chunk: int) -> None:
    x, y = _sets(k)
    ref = reference.compute_prdc(x, y, nearest_k=k)
    ours = prdc(x, y, k_pr=k, k_dc=k, chunk_elements=chunk)  # 50 entries: blocks of one row
    for key in ("precision", "recall", "density", "coverage"):
        assert getattr(ours, key) == pytest.approx(float(ref[key]), abs=1e-6), key


def test_default_ks_follow_the_papers() -> None:
    """k = 3 for precision/recall (Kynkäänniemi 2019), k = 5 for density/coverage (Naeem 2020)."""
    x, y = _sets(7)
    ours = prdc(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    at3, at5 = reference.compute_prdc(x, y, 3), reference.compute_prdc(x, y, 5)
    assert ours.precision == pytest.approx(float(at3["precision"]), abs=1e-6)
    assert ours.recall == pytest.approx(float(at3["recall"]), abs=1e-6)
    assert ours.density == pytest.approx(float(at5["density"]), abs=1e-6)
    assert ours.coverage == pytest.approx(float(at5["coverage"]), abs=1e-6)


def test_values_respond_to_the_generator() -> None:
    """Same distribution: all four near 1; collapsed fakes: recall and coverage fall; far fakes: all 0."""
    rng = np.random.default_rng(1)
    x, same = rng.normal(size=(400, 4)), rng.normal(size=(400, 4))
    good = prdc(x, same)
    assert good.precision > 0.8 and good.recall > 0.8 and good.coverage > 0.8 and 0.7 < good.density < 1.3
    collapsed = prdc(x, rng.normal(scale=0.1, size=(400, 4)))
    assert collapsed.precision > 0.9 and collapsed.recall < 0.2 and collapsed.coverage < 0.2
    far = prdc(x, same + 100.0)
    assert far == type(far)(0.0, 0.0, 0.0, 0.0)


def test_radii_are_kth_neighbour_distances_chunked() -> None:
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    r = kth_neighbour_radii(x, (1, 2), chunk_elements=4)
    assert r[1].tolist() == [1.0, 1.0, 2.0, 4.0]
    assert r[2].tolist() == [3.0, 2.0, 3.0, 6.0]


def test_bootstrap_intervals_hold_the_value_and_are_seeded() -> None:
    x, y = _sets(3)
    a = prdc_bootstrap(x, y, n_boot=40, seed=5, chunk_elements=500)
    b = prdc_bootstrap(x, y, n_boot=40, seed=5)
    assert a.as_dict() == pytest.approx(b.as_dict())
    for key, iv in a.intervals.items():
        value = getattr(a.values, key)
        assert iv.low <= value <= iv.high and iv.high > iv.low, key
    assert set(a.as_dict("fid_")) >= {"fid_precision", "fid_coverage_low", "fid_density_high"}
    assert prdc_bootstrap(x, y).intervals is None


def test_bad_input_is_one_clear_error() -> None:
    x, y = _sets()
    with pytest.raises(MetricInputError, match="at least 6"):
        prdc(x[:5], y)
    with pytest.raises(MetricInputError, match="feature sizes differ"):
        prdc(x, y[:, :3])
    with pytest.raises(MetricInputError, match="NaN"):
        prdc(x, np.full_like(y, np.nan))
    y32 = torch.as_tensor(y, dtype=torch.float32)
    y32[3, 2] = float("inf")
    with pytest.raises(MetricInputError, match="fake features: contains NaN or infinite values"):
        prdc(x.astype(np.float32), y32)
    with pytest.raises(MetricInputError, match="replicates"):
        prdc_bootstrap(x, y, n_boot=1)


def _exact_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn the float32 screening off: every distance in float64 (the reference path)."""
    import udl_med.metrics.prdc as module

    monkeypatch.setattr(module, "_float32_is_exact_enough", lambda: False)


@pytest.mark.parametrize("dtypes", [(np.float64, np.float64), (np.float32, np.float32), (np.float32, np.float64)])
@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_float32_screening_decides_as_float64_on_ties_and_far_from_the_origin(offset: float, dtypes: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """Integer lattice features make many distances tie exactly with the k-NN radii (the pairs a float32
    screen cannot decide); an offset of 1000 makes float32 lose the distances without centring. The screened
    result must equal the float64 one, bootstrap replicates included. (``prdc`` itself resolves such exact
    ties by its own rounding, as the float64-only code before did not either; equality to it is checked on
    continuous features.)"""
    import udl_med.metrics.prdc as module

    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(300, 16)).astype(np.float64) + offset
    y = rng.integers(0, 3, size=(250, 16)).astype(np.float64) + offset
    y[:20] = x[:20]  # duplicates across the sets: distance 0
    x[50:60] = x[40:50]  # duplicates within the real set: radii at 0 for some k
    # float32 features as given (exact here) are decided on without a float64 copy: the same decisions
    fast = {k: prdc_bootstrap(x.astype(dtypes[0]), y.astype(dtypes[1]), k, k, n_boot=20, seed=1, chunk_elements=4096).as_dict() for k in (1, 3, 5)}
    before = module._NEAR_PAIRS[0]
    _exact_float64(monkeypatch)
    slow = {k: prdc_bootstrap(x, y, k, k, n_boot=20, seed=1, chunk_elements=4096).as_dict() for k in (1, 3, 5)}
    assert fast == slow
    assert module._NEAR_PAIRS[0] == before  # the float64 path never screens


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_equal_to_prdc_on_float32_features_far_from_the_origin(offset: float) -> None:
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(500, 64)) + offset).astype(np.float32)
    y = (rng.normal(0.2, 1.1, size=(400, 64)) + offset).astype(np.float32)
    ref = reference.compute_prdc(x, y, nearest_k=5)
    ours = prdc(x, y, 5, 5, chunk_elements=20000)
    for key in ("precision", "recall", "density", "coverage"):
        assert getattr(ours, key) == pytest.approx(float(ref[key]), abs=1e-6), key


def test_screened_radii_equal_the_float64_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    x = rng.integers(-3, 4, size=(400, 32)).astype(np.float64) + 50.0  # integers: exact float64 arithmetic, many ties
    x[100:110] = x[0:10]
    fast = kth_neighbour_radii(x, (1, 3, 5), chunk_elements=3000)  # blocks of 54 x 54: many block pairs
    _exact_float64(monkeypatch)
    slow = kth_neighbour_radii(x, (1, 3, 5), chunk_elements=3000)
    for k in (1, 3, 5):
        assert torch.equal(fast[k], slow[k]), k
