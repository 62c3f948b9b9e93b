"""metrics.statistics observed: refusals word for word, the reservoir against algorithm R, the
factor and covariance routes of the distance, and saved files refused for each defect (issue 26's mutants)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from udl_med.errors import InputError
from udl_med.metrics import statistics as st
from udl_med.metrics._checks import MetricInputError, as_features, require_samples
from udl_med.metrics.frechet import features_factor, frechet_gaussians

KEY = st.StatsKey("random", "0123456789abcdef" * 4, "2d: 64x64")
SIZES = "(were both sets embedded by the same extractor?)"


def _message(fn, *args, error=MetricInputError, **kwargs) -> str:
    with pytest.raises(error) as caught:
        fn(*args, **kwargs)
    return str(caught.value)


def test_describe_and_one_shot_refusals() -> None:
    assert KEY.describe() == "extractor random (weights sha256 0123456789ab), preprocessing '2d: 64x64'"
    assert _message(st.FeatureStats.from_features, np.zeros((1, 3))) == "features: 1 sample(s), at least 2 needed"
    assert st.FeatureStats.from_features(np.arange(2.0)[:, None]).n == 2  # two samples of one feature are enough
    require_samples(2, 2, "x")
    assert _message(require_samples, 1, 2, "x") == "x: 1 sample(s), at least 2 needed"
    grad = torch.ones(2, 3, requires_grad=True)
    assert as_features(grad).shape == (2, 3)


def test_factor_from_the_features_only_when_they_are_all_there_and_few() -> None:
    x = np.random.default_rng(0).standard_normal((4, 4))
    complete = st.FeatureStats.from_features(x)
    assert np.array_equal(complete.factor(), features_factor(x)[1])  # N == d: the centred features
    bare = st.FeatureStats(complete.n, complete.mean, complete.cov)  # no features: from the covariance
    assert bare.factor().shape == (3, 4)
    np.testing.assert_allclose(bare.factor().T @ bare.factor(), complete.cov, atol=1e-12)


def test_streaming_refusals_and_edge_chunks() -> None:
    assert _message(st.StreamingStats, -1, error=ValueError) == "max_features must be >= 0, got -1"
    assert _message(st.StreamingStats, device="gpu0") == "device 'gpu0': not a torch device name (cpu, cuda, cuda:1, ...)"
    stream = st.StreamingStats()
    assert _message(stream.update, np.zeros(3)) == "features: expected (batch, features), got shape (3,)"
    stream.update(np.zeros((0, 3)))  # an empty chunk adds nothing
    assert stream.n == 0
    assert _message(stream.compute) == "feature set: 0 sample(s), at least 2 needed"
    assert _message(stream.update, np.array([[1.0, np.nan, 0.0]])) == "features: contains NaN or infinite values"
    stream.update(torch.ones(2, 3, requires_grad=True))
    stream.update(np.arange(6).reshape(2, 3))  # integers are kept as floats
    stats = stream.compute()
    assert stats.n == 4 and stats.features.dtype == np.float64
    assert _message(stream.update, np.zeros((2, 4))) == f"feature sizes differ: 3 vs 4 {SIZES}"


def _algorithm_r(rows: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Vitter's algorithm R over the whole stream, drawing as StreamingStats does."""
    rng = np.random.default_rng(seed)
    reservoir = rows[:size].copy()
    for t in range(size, rows.shape[0]):
        j = int(rng.integers(0, t + 1))
        if j < size:
            reservoir[j] = rows[t]
    return reservoir


@pytest.mark.parametrize("splits", [[3], [3, 5, 6], [7], [1, 2, 9, 15]])
def test_the_reservoir_is_algorithm_r_whatever_the_chunks(splits: list[int]) -> None:
    rows = np.arange(40.0).reshape(20, 2)
    for seed in (0, 3):
        stream = st.StreamingStats(max_features=5, seed=seed)
        for chunk in np.split(rows, splits):
            stream.update(chunk)
        assert np.array_equal(stream.compute().features, _algorithm_r(rows, 5, seed))
    one = st.StreamingStats(max_features=1, seed=1)
    one.update(rows)
    assert one.compute().features.shape == (1, 2)
    assert st.StreamingStats(max_features=5, seed=0).seed == 0 and st.StreamingStats(seed=7).seed == 7


def test_check_comparable_names_the_sets() -> None:
    a = st.FeatureStats.from_features(np.random.default_rng(0).standard_normal((3, 3)), KEY)
    b = st.FeatureStats.from_features(np.random.default_rng(1).standard_normal((2, 3)), KEY)
    st.check_comparable(a, b, ("ours", "theirs"))
    one = st.FeatureStats(1, a.mean, a.cov)
    assert _message(st.check_comparable, one, b, ("ours", "theirs")) == "ours: 1 sample(s), at least 2 needed"
    assert _message(st.check_comparable, a, one, ("ours", "theirs")) == "theirs: 1 sample(s), at least 2 needed"
    other = st.FeatureStats(b.n, b.mean, b.cov, b.features, st.StatsKey("inception", "ff" * 32, "2d: 299x299"))
    assert _message(st.check_comparable, a, other, ("ours", "theirs")) == (
        f"ours and theirs statistics are not comparable: ours from {KEY.describe()}; theirs from {other.key.describe()}"
    )
    wide = st.FeatureStats.from_features(np.zeros((2, 4)) + np.arange(2)[:, None])
    assert _message(st.check_comparable, a, wide, ("ours", "theirs")) == f"feature sizes of ours and theirs differ: 3 vs 4 {SIZES}"


@pytest.mark.parametrize(("n1", "n2", "keep1"), [(3, 6, None), (6, 3, None), (4, 4, None), (3, 6, 2), (8, 9, None)])
def test_frechet_stats_takes_factors_of_complete_small_sets_and_covariances_otherwise(n1: int, n2: int, keep1: int | None) -> None:
    d = 4
    x1, x2 = np.random.default_rng(n1).standard_normal((n1, d)), np.random.default_rng(n2).standard_normal((n2, d)) + 0.3
    a, b = st.FeatureStats.from_features(x1), st.FeatureStats.from_features(x2)
    if keep1 is not None:
        a = st.FeatureStats(a.n, a.mean, a.cov, x1[:keep1])
    small_a, small_b = a.complete and n1 <= d, b.complete and n2 <= d
    expected = frechet_gaussians(
        a.mean,
        b.mean,
        cov1=None if small_a else a.cov,
        factor1=a.factor() if small_a else None,
        cov2=None if small_b else b.cov,
        factor2=b.factor() if small_b else None,
    )
    assert st.frechet_stats(a, b) == expected
    assert st.frechet_distance_stats(a, b) == expected.distance
    for fn in (st.frechet_stats, st.frechet_distance_stats):
        assert _message(fn, a, b, device="gpu0") == "device 'gpu0': not a torch device name (cpu, cuda, cuda:1, ...)"


def test_saved_statistics_round_trip_into_new_folders(tmp_path: Path) -> None:
    stats = st.FeatureStats.from_features(np.random.default_rng(0).standard_normal((5, 3)))
    path = st.save_stats(stats, tmp_path / "a" / "b" / "s.npz")
    back = st.load_stats(path)
    assert back.key is None and back.n == 5 and np.array_equal(back.features, stats.features)
    assert _message(st.save_stats, stats, tmp_path / "s.json", error=InputError) == f"{tmp_path / 's.json'}: statistics are saved as .npz; use a name ending in .npz"
    assert _message(st.load_stats, tmp_path / "none.npz", error=InputError) == f"{tmp_path / 'none.npz'}: statistics file not found"


def _write(path: Path, **overrides) -> Path:
    arrays = {
        "format": np.array(st.STATS_FORMAT),
        "n": np.array(5),
        "mean": np.zeros(3),
        "cov": np.eye(3),
        "key": np.array(json.dumps(None)),
        "features": np.zeros((5, 3)),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"format": None}, f"not udl-med feature statistics (expected format {st.STATS_FORMAT!r})"),
        ({"format": np.array("None")}, f"not udl-med feature statistics (expected format {st.STATS_FORMAT!r})"),
        ({"cov": np.eye(2)}, "mean (3,) and covariance (2, 2) sizes disagree"),
        ({"features": np.zeros((5, 4))}, "features of shape (5, 4) do not fit 5 vectors of size 3"),
        ({"features": np.zeros((6, 3))}, "features of shape (6, 3) do not fit 5 vectors of size 3"),
        ({"features": np.zeros((3, 3))}, None),
        ({"features": np.zeros((2, 2))}, "features of shape (2, 2) do not fit 5 vectors of size 3"),
    ],
)
def test_load_stats_refuses_each_defect(tmp_path: Path, overrides: dict, problem: str | None) -> None:
    path = _write(tmp_path / "s.npz", **overrides)
    if problem is None:
        assert st.load_stats(path).features.shape == (3, 3)
    else:
        assert _message(st.load_stats, path, error=InputError) == f"{path}: {problem}"


def test_load_stats_refuses_a_file_that_is_not_npz(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    path.write_text("not a zip")
    assert _message(st.load_stats, path, error=InputError).startswith(f"{path}: not a readable .npz file (")
