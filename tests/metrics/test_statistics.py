"""Streaming statistics equal one-shot ones; saved statistics round-trip and are keyed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from udl_med.errors import InputError, UserError
from udl_med.metrics.frechet import frechet_distance, frechet_distance_features
from udl_med.metrics.statistics import (
    FeatureStats,
    StatsKey,
    StreamingStats,
    frechet_distance_stats,
    load_stats,
    save_stats,
)

KEY = StatsKey("random", "ab" * 32, "2d axial slices, 64x64, [-1, 1]")


def _features(seed: int, n: int, d: int, offset: float = 1e3) -> np.ndarray:
    # A large common offset is where the naive sum-of-squares covariance loses digits.
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + offset).astype(np.float32)


@pytest.mark.parametrize("max_features", [1000, 37, 0])
def test_streaming_equals_one_shot(max_features: int) -> None:
    x = _features(0, 250, 12)
    stream = StreamingStats(max_features=max_features)
    for chunk in np.array_split(x, [7, 8, 60, 61, 190]):  # uneven chunks, one of size 1
        stream.update(chunk)
    streamed, one_shot = stream.compute(), FeatureStats.from_features(x)
    assert streamed.n == one_shot.n == 250
    np.testing.assert_allclose(streamed.mean, one_shot.mean, rtol=1e-12)
    np.testing.assert_allclose(streamed.cov, one_shot.cov, rtol=1e-9, atol=1e-9 * np.abs(one_shot.cov).max())
    kept = streamed.features
    if max_features == 0:
        assert kept is None
    else:
        assert kept.shape == (min(250, max_features), 12)
        rows = {r.tobytes() for r in x}
        assert all(r.tobytes() in rows for r in kept)  # a sample of the real rows
        assert len({r.tobytes() for r in kept}) == kept.shape[0]  # without repeats
    other = _features(1, 100, 12)
    ref = frechet_distance_features(x, other)
    assert frechet_distance_stats(streamed, FeatureStats.from_features(other)) == pytest.approx(ref, rel=1e-7)


def test_reservoir_is_uniform() -> None:
    """Algorithm R keeps each row with probability max_features / n."""
    counts = np.zeros(100)
    for seed in range(300):
        stream = StreamingStats(max_features=10, seed=seed)
        for chunk in np.array_split(np.arange(100, dtype=np.float64)[:, None].repeat(2, 1), 9):
            stream.update(chunk)
        counts[stream.compute().features[:, 0].astype(int)] += 1
    # 300 draws x 10 rows = 3000; 30 expected per row; a biased sampler (first or last rows) fails.
    assert counts[:50].sum() == pytest.approx(1500, rel=0.1)
    assert counts.min() > 10 and counts.max() < 55


def test_small_matrix_path_used_when_complete() -> None:
    """Few samples in many dimensions: FID from stats equals the exact covariance form."""
    x, y = _features(2, 20, 64, offset=0.0), _features(3, 30, 64, offset=0.5)
    sx, sy = FeatureStats.from_features(x), FeatureStats.from_features(y)
    assert sx.complete and sx.factor().shape == (19, 64)  # centred rows less the centring's null direction
    exact = frechet_distance(sx.mean, sx.cov, sy.mean, sy.cov)
    assert frechet_distance_stats(sx, sy) == pytest.approx(exact, rel=1e-8)


def test_save_load_round_trip(tmp_path: Path) -> None:
    stats = StreamingStats(key=KEY)
    stats.update(_features(4, 40, 6))
    s = stats.compute()
    path = save_stats(s, tmp_path / "real.npz")
    back = load_stats(path)
    assert back.key == KEY and back.n == 40 and back.complete
    np.testing.assert_array_equal(back.mean, s.mean)
    np.testing.assert_array_equal(back.cov, s.cov)
    np.testing.assert_array_equal(back.features, s.features)
    no_feats = load_stats(save_stats(s, tmp_path / "bare.npz", keep_features=False))
    assert no_feats.features is None
    assert frechet_distance_stats(no_feats, back) == pytest.approx(0.0, abs=1e-6)


def test_mismatched_keys_and_sizes_refused(tmp_path: Path) -> None:
    a = FeatureStats.from_features(_features(5, 10, 4), key=KEY)
    b = FeatureStats.from_features(_features(6, 10, 4), key=StatsKey("inception", "cd" * 32, "2d, 299x299"))
    with pytest.raises(UserError, match="not comparable"):
        frechet_distance_stats(a, b)
    c = FeatureStats.from_features(_features(7, 10, 5), key=KEY)
    with pytest.raises(UserError, match="feature sizes"):
        frechet_distance_stats(a, c)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(InputError, match="not udl-med feature statistics"):
        load_stats(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(InputError, match="not a readable"):
        load_stats(tmp_path / "junk.npz")
    with pytest.raises(UserError, match="at least 2"):
        StreamingStats().compute()


@pytest.mark.parametrize("device", [None, "cpu"])
def test_streamed_fid_equals_in_memory_fid(device: str | None) -> None:
    """More samples than dimensions, moments only (no features kept), torch chunks: the same FID."""
    import torch

    from udl_med.metrics.frechet import frechet_features
    from udl_med.metrics.statistics import frechet_stats

    x, y = _features(5, 300, 16, offset=50.0), _features(6, 200, 16, offset=50.5)
    streams = [StreamingStats(max_features=0, device=device) for _ in range(2)]
    for stream, data in zip(streams, (x, y)):
        for chunk in np.array_split(data, 7):
            stream.update(torch.from_numpy(chunk))
    sx, sy = (s.compute() for s in streams)
    assert sx.features is None and sx.n == 300
    np.testing.assert_allclose(sx.cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-11, atol=1e-11 * np.abs(sx.cov).max())
    streamed, in_memory = frechet_stats(sx, sy, device=device), frechet_features(x, y)
    assert streamed.route == in_memory.route == "eigh"
    assert streamed.distance == pytest.approx(in_memory.distance, rel=1e-10)


def test_streaming_rejects_nan_and_size_changes() -> None:
    stream = StreamingStats()
    stream.update(np.ones((3, 4)))
    with pytest.raises(UserError, match="differ"):
        stream.update(np.ones((3, 5)))
    bad = np.ones((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(UserError, match="NaN"):
        stream.update(bad)
