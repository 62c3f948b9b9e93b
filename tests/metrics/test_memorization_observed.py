"""metrics.memorization piece by piece against brute force: flips, nearest rows, thresholds,
the flag, the two-fold false-alarm rate and the report (issue 26's mutants)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from udl_med.errors import UserError
from udl_med.metrics import memorization as mem


class _Pixels:
    """A stand-in extractor: the pixels themselves as features."""

    name = "pixels"
    feature_dim = 8

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, x):
        self.batches.append(len(x))
        return x.flatten(1).float()


def test_flips_along_each_axis_and_all_of_them() -> None:
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3)
    images, index = mem.with_flips(x)
    expected = torch.cat([x, x.flip(2), x.flip(3), x.flip([2, 3])])
    assert torch.equal(images, expected) and index.tolist() == [0, 1] * 4
    line = torch.arange(6.0).reshape(2, 1, 3)  # one spatial axis: no "all axes" copy
    images, index = mem.with_flips(line)
    assert torch.equal(images, torch.cat([line, line.flip(2)])) and index.tolist() == [0, 1, 0, 1]
    vol = torch.randn(1, 1, 2, 2, 2)
    assert mem.with_flips(vol)[0].shape[0] == 5


def test_nearest_is_brute_force_across_chunks() -> None:
    g = torch.Generator().manual_seed(0)
    query, reference = torch.randn(mem.CHUNK + 44, 3, generator=g), torch.randn(50, 3, generator=g)
    dist, where = mem.nearest(query, reference)
    full = torch.cdist(query.double(), reference.double())
    assert dist.dtype == torch.float32 and torch.equal(where, full.argmin(1))
    assert torch.allclose(dist.double(), full.min(1).values, atol=1e-6)


def test_nearest_training_measures_rms_distance_and_maps_flips_back() -> None:
    train = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]], [[[5.0, 5.0], [5.0, 5.0]]]])
    extractor = _Pixels()
    reference = mem.NearestTraining(train, extractor)
    assert reference.voxels == 4.0 and reference.images.shape[0] == 8
    query = torch.stack([train[0].flip(2) + 0.5, train[1] - 1.0])  # a flipped copy of image 0, shifted by 0.5
    d = reference.distances(query)
    assert d.nearest.tolist() == [0, 1]
    np.testing.assert_allclose(d.intensity, [0.5, 1.0], rtol=1e-6)  # RMS: ||diff|| / sqrt(voxels)
    np.testing.assert_allclose(d.feature, [1.0, 2.0], rtol=1e-6)  # Euclidean in feature space
    plain = mem.NearestTraining(train, extractor, flips=False)
    assert plain.images.shape[0] == 2 and plain.index.tolist() == [0, 1]
    assert plain.distances(query).intensity[0] > 0.5
    empty = mem._features(extractor, torch.zeros(0, 1, 2, 2))
    assert empty.shape == (0, 8)
    extractor.batches.clear()
    mem._features(extractor, torch.zeros(130, 1, 2, 2))
    assert extractor.batches == [64, 64, 2]


def test_thresholds_flag_and_rates() -> None:
    hold = mem.Distances(np.arange(11.0), np.arange(11.0) * 2, np.zeros(11, dtype=int))
    assert mem.thresholds(hold, 0.1) == (1.0, 2.0)
    d = mem.Distances(np.array([1.0, 0.5, 3.0, 3.0]), np.array([5.0, 5.0, 1.9, 2.0]), np.zeros(4, dtype=int))
    assert mem.flag(d, (1.0, 2.0)).tolist() == [False, True, True, False]  # at a threshold is not below it
    assert mem.stated_rate(0.01, 9) == pytest.approx(0.2) and mem.stated_rate(0.2, 1000) == pytest.approx(0.4)
    assert mem.stated_rate(0.4, 1) == 1.0
    assert math.isnan(mem.holdout_false_alarm_rate(mem.Distances(np.ones(3), np.ones(3), np.zeros(3)), 0.1))


def _two_fold(hold: mem.Distances, quantile: float, seed: int) -> float:
    n = len(hold.feature)
    order = np.random.default_rng(seed).permutation(n)
    a, b = order[: n // 2], order[n // 2 :]
    rates = []
    for calib, test in ((a, b), (b, a)):
        lf, li = np.quantile(hold.feature[calib], quantile), np.quantile(hold.intensity[calib], quantile)
        rates.append(float(((hold.feature[test] < lf) | (hold.intensity[test] < li)).mean()))
    return float(np.mean(rates))


def test_holdout_false_alarm_rate_is_two_fold() -> None:
    rng = np.random.default_rng(1)
    hold = mem.Distances(rng.uniform(size=9), rng.uniform(size=9), np.zeros(9, dtype=int))
    for seed in (0, 4):
        assert mem.holdout_false_alarm_rate(hold, 0.3, seed) == _two_fold(hold, 0.3, seed)
    assert mem.holdout_false_alarm_rate(hold, 0.3) == _two_fold(hold, 0.3, 0)
    assert mem.holdout_false_alarm_rate(mem.Distances(np.arange(4.0), np.arange(4.0), np.zeros(4)), 0.3) == _two_fold(
        mem.Distances(np.arange(4.0), np.arange(4.0), np.zeros(4)), 0.3, 0
    )


def test_memorization_tensors_reports_every_number() -> None:
    g = torch.Generator().manual_seed(2)
    train, holdout = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1, torch.rand(10, 1, 4, 4, generator=g) * 2 - 1
    synthetic = torch.cat([train[:2].flip(3), torch.rand(3, 1, 4, 4, generator=g) * 2 - 1])  # two flipped copies
    extractor = _Pixels()
    got = mem.memorization_tensors(synthetic, train, holdout, extractor, quantile=0.2)
    reference = mem.NearestTraining(train, extractor)
    d_hold, d_syn = reference.distances(holdout), reference.distances(synthetic)
    limits = mem.thresholds(d_hold, 0.2)
    flagged = mem.flag(d_syn, limits)
    assert flagged[:2].all()
    assert set(got) == {
        "rate", "rate_feature", "rate_intensity", "holdout_rate", "stated_rate", "threshold_feature", "threshold_intensity",
        "quantile", "n_synthetic", "n_train", "n_holdout", "extractor", "flagged_index", "synthetic", "holdout",
    }  # fmt: skip
    assert got["rate"] == float(flagged.mean()) and got["flagged_index"] == np.flatnonzero(flagged).tolist()
    assert got["rate_feature"] == float((d_syn.feature < limits[0]).mean())
    assert got["rate_intensity"] == float((d_syn.intensity < limits[1]).mean())
    assert got["holdout_rate"] == mem.holdout_false_alarm_rate(d_hold, 0.2)
    assert got["stated_rate"] == mem.stated_rate(0.2, 10)
    assert (got["threshold_feature"], got["threshold_intensity"]) == limits
    assert (got["quantile"], got["n_synthetic"], got["n_train"], got["n_holdout"], got["extractor"]) == (0.2, 5, 6, 10, "pixels")
    assert np.array_equal(got["synthetic"].feature, d_syn.feature) and np.array_equal(got["holdout"].intensity, d_hold.intensity)
    no_flips = mem.memorization_tensors(synthetic, train, holdout, extractor, quantile=0.2, flips=False)
    assert np.allclose(got["synthetic"].intensity[:2], 0.0, atol=1e-6) and (no_flips["synthetic"].intensity[:2] > 0.01).all()
    default = mem.memorization_tensors(synthetic, train, holdout, extractor)
    assert default["quantile"] == mem.DEFAULT_QUANTILE == 0.01

    class Nameless:
        feature_dim = 16

        def __call__(self, x):
            return x.flatten(1)

    nameless = Nameless()
    assert mem.memorization_tensors(synthetic, train, holdout, nameless, quantile=0.2)["extractor"] == str(nameless)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quantile": 0.0}, "quantile must be in (0, 0.5), got 0.0"),
        ({"quantile": 0.5}, "quantile must be in (0, 0.5), got 0.5"),
        ({"synthetic": torch.zeros(2, 4, 4)}, "synthetic images must be a non-empty (N, C, *spatial) batch, got (2, 4, 4)"),
        ({"train": torch.zeros(0, 1, 4, 4)}, "train images must be a non-empty (N, C, *spatial) batch, got (0, 1, 4, 4)"),
        ({"holdout": torch.zeros(2, 1, 1, 1, 4, 4)}, "holdout images must be a non-empty (N, C, *spatial) batch, got (2, 1, 1, 1, 4, 4)"),
        ({"holdout": torch.zeros(2, 1, 4, 5)}, "image sizes differ: synthetic (1, 4, 4), train (1, 4, 4), holdout (1, 4, 5)"),
        ({"train": torch.zeros(2, 1, 5, 4)}, "image sizes differ: synthetic (1, 4, 4), train (1, 5, 4), holdout (1, 4, 4)"),
    ],
)
def test_memorization_tensors_refusals(change: dict, message: str) -> None:
    args = {"synthetic": torch.zeros(2, 1, 4, 4), "train": torch.zeros(3, 1, 4, 4), "holdout": torch.zeros(4, 1, 4, 4), "extractor": _Pixels(), "quantile": 0.1}
    args.update(change)
    with pytest.raises(UserError) as caught:
        mem.memorization_tensors(**args)
    assert str(caught.value) == message
