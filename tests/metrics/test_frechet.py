"""Fréchet distance: exactness against scipy.linalg.sqrtm and closed forms, and its behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from udl_med.errors import UserError
from udl_med.metrics.frechet import (
    covariance_factor,
    features_factor,
    frechet_distance,
    Frechet,
    frechet_covariances,
    frechet_distance_features,
    frechet_features,
    trace_sqrt_product,
    trace_sqrt_product_factors,
)


def _scipy_trace(c1: np.ndarray, c2: np.ndarray) -> float:
    """The usual reference: trace of scipy's float64 matrix square root of the product."""
    return float(np.trace(scipy.linalg.sqrtm(c1 @ c2)).real)


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's matrix square root (the slow reference)."""
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2 * _scipy_trace(c1, c2))


def _structured(rng: np.random.Generator, n: int, d: int, rank: int | None = None, shift: float = 0.0) -> np.ndarray:
    """n samples of a correlated Gaussian in d dims (of the given rank); one distribution per (d, rank)."""
    rank = d if rank is None else rank
    mixing = np.random.default_rng(d * 1000 + rank).standard_normal((rank, d)) * np.linspace(2.0, 0.1, d)
    return rng.standard_normal((n, rank)) @ mixing + shift


# (N1, N2, d, rank): fewer samples than dimensions, more, equal, mixed, rank-deficient.
CASES = [(20, 30, 64, None), (300, 200, 48, None), (64, 64, 64, None), (10, 500, 64, None), (200, 150, 32, 6)]


@pytest.mark.parametrize("n1,n2,d,rank", CASES)
def test_trace_matches_scipy_sqrtm(n1: int, n2: int, d: int, rank: int | None) -> None:
    rng = np.random.default_rng(n1 + n2 + d)
    a, b = _structured(rng, n1, d, rank), _structured(rng, n2, d, rank, shift=0.5)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = _scipy_trace(c1, c2)
    from_covs = trace_sqrt_product(c1, c2)
    from_features = trace_sqrt_product_factors(features_factor(a)[1], features_factor(b)[1])
    assert from_covs == pytest.approx(reference, rel=1e-6)
    assert from_features == pytest.approx(reference, rel=1e-6)


def test_trace_exact_on_singular_commuting_covariances() -> None:
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: tr sqrt(S1 S2) = sum sqrt(a b), zeros included."""
    rng = np.random.default_rng(0)
    d = 40
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    a[:15] = 0.0  # singular S1
    b[10:20] = 0.0  # singular S2, overlapping null spaces
    c1, c2 = (q * a) @ q.T, (q * b) @ q.T
    expected = np.sqrt(a * b).sum()
    assert trace_sqrt_product(c1, c2) == pytest.approx(expected, rel=1e-9)


def test_covariance_factor_reconstructs_pd_and_singular() -> None:
    rng = np.random.default_rng(1)
    pd_cov = np.cov(rng.standard_normal((50, 8)), rowvar=False)
    low_rank = np.cov(rng.standard_normal((4, 8)), rowvar=False)  # rank 3: Cholesky fails
    for cov in (pd_cov, low_rank):
        f = covariance_factor(cov)
        np.testing.assert_allclose(f.T @ f, cov, atol=1e-12)


def test_fid_matches_textbook_formula() -> None:
    rng = np.random.default_rng(2)
    a, b = _structured(rng, 80, 16), _structured(rng, 90, 16, shift=1.0)
    mu1, mu2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    textbook = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * _scipy_trace(c1, c2)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(textbook, rel=1e-9)
    assert frechet_distance_features(a, b) == pytest.approx(textbook, rel=1e-9)


def test_fid_of_univariate_gaussians_hand_computed() -> None:
    # d = 1: (mu1 - mu2)^2 + (sigma1 - sigma2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_fid_of_a_set_with_itself_is_zero() -> None:
    rng = np.random.default_rng(3)
    for n, d in [(30, 64), (200, 16)]:
        x = _structured(rng, n, d)
        scale = frechet_distance_features(x, rng.standard_normal((n, d)))
        assert frechet_distance_features(x, x) <= 1e-10 * scale


def test_fid_grows_monotonically_with_noise() -> None:
    rng = np.random.default_rng(4)
    real = _structured(rng, 400, 32)
    other = _structured(rng, 400, 32)  # a second sample of the same distribution
    noise = rng.standard_normal(other.shape)
    fids = [frechet_distance_features(real, other + s * noise) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_accepts_torch_tensors() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((20, 8)), rng.standard_normal((25, 8)) + 1
    assert frechet_distance_features(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(
        frechet_distance_features(a.astype(np.float32), b.astype(np.float32)), rel=1e-12
    )


def test_bad_inputs_raise_user_errors() -> None:
    rng = np.random.default_rng(6)
    with pytest.raises(UserError, match="at least 2"):
        frechet_distance_features(rng.standard_normal((1, 4)), rng.standard_normal((5, 4)))
    with pytest.raises(UserError, match="differ"):
        frechet_distance_features(rng.standard_normal((5, 4)), rng.standard_normal((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance_features(np.full((5, 4), np.nan), rng.standard_normal((5, 4)))


def _svd_route(monkeypatch: pytest.MonkeyPatch, fn, *args) -> Frechet:
    """The same computation forced onto the SVD route (no error estimate is accepted)."""
    import udl_med.metrics.frechet as frechet

    with monkeypatch.context() as m:
        m.setattr(frechet, "RTOL", -1.0)
        result = fn(*args)
    assert result.route == "svd"
    return result


# (N1, N2, d): more samples than dimensions (Cholesky route), fewer (centred factors), mixed.
WELL_CONDITIONED = [(400, 300, 48), (30, 40, 64), (20, 300, 48)]


@pytest.mark.parametrize("n1,n2,d", WELL_CONDITIONED)
def test_fast_route_on_well_conditioned_features_equals_svd(monkeypatch: pytest.MonkeyPatch, n1: int, n2: int, d: int) -> None:
    rng = np.random.default_rng(n1 + n2 + d)
    mixing = np.eye(d) + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)  # well conditioned
    a, b = rng.standard_normal((n1, d)) @ mixing, rng.standard_normal((n2, d)) @ mixing * 1.2 + 0.3
    fast = frechet_features(a, b)
    assert fast.route == "eigh" and fast.reason == ""
    svd = _svd_route(monkeypatch, frechet_features, a, b)
    assert fast.distance == pytest.approx(svd.distance, rel=1e-10)
    assert fast.distance == pytest.approx(_scipy_fid(a, b), rel=1e-6)  # sqrtm of a singular product (N < d) is the inexact one


def _commuting(d: int, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T and their exact distance (equal means)."""
    q, _ = np.linalg.qr(np.random.default_rng(d).standard_normal((d, d)))
    return (q * a) @ q.T, (q * b) @ q.T, float(np.sum(a) + np.sum(b) - 2 * np.sqrt(a * b).sum())


@pytest.mark.parametrize("kind", ["rank-deficient", "near-singular"])
def test_rank_deficient_and_near_singular_take_the_svd(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    rng = np.random.default_rng(11)
    d = 48
    w1, w2 = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    small = 0.0 if kind == "rank-deficient" else 1e-11  # exact zeros, or variances 1e-11 of the largest
    w1[30:], w2[:20] = small, small  # supports overlap in 10 directions
    c1, c2, expected = _commuting(d, w1, w2)
    mu = np.zeros(d)
    result = frechet_covariances(mu, c1, mu, c2)
    assert result.route == "svd" and result.reason
    assert result.distance == pytest.approx(expected, rel=1e-10)
    assert result.distance == pytest.approx(_svd_route(monkeypatch, frechet_covariances, mu, c1, mu, c2).distance, rel=1e-10)
    # Features of such a distribution (fewer directions than dimensions) also take the SVD.
    x = rng.standard_normal((200, 30)) @ rng.standard_normal((30, d))
    y = rng.standard_normal((150, 30)) @ rng.standard_normal((30, d))
    if kind == "near-singular":
        x, y = x + 1e-9 * rng.standard_normal(x.shape), y + 1e-9 * rng.standard_normal(y.shape)
    feats = frechet_features(x, y)
    assert feats.route == "svd"
    assert feats.distance == pytest.approx(_scipy_fid(x, y), rel=1e-6)


def test_well_conditioned_covariances_take_the_fast_route(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(12)
    d = 40
    w1, w2 = rng.uniform(0.5, 2.0, d), rng.uniform(0.2, 3.0, d)
    c1, c2, expected = _commuting(d, w1, w2)
    mu1, mu2 = np.zeros(d), np.full(d, 0.1)
    fast = frechet_covariances(mu1, c1, mu2, c2)
    assert fast.route == "eigh"
    assert fast.distance == pytest.approx(expected + 0.01 * d, rel=1e-10)
    assert fast.distance == pytest.approx(_svd_route(monkeypatch, frechet_covariances, mu1, c1, mu2, c2).distance, rel=1e-10)


def test_device_cpu_and_tensors_give_the_same_distance() -> None:
    rng = np.random.default_rng(13)
    a, b = rng.standard_normal((60, 16)), rng.standard_normal((50, 16)) + 0.2
    ref = frechet_distance_features(a, b)
    assert frechet_distance_features(a, b, device="cpu") == pytest.approx(ref, rel=1e-12)
    tensors = torch.from_numpy(a), torch.from_numpy(b)
    assert frechet_distance_features(*tensors, device=torch.device("cpu")) == pytest.approx(ref, rel=1e-12)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_missing_cuda_device_is_a_user_error() -> None:
    rng = np.random.default_rng(14)
    with pytest.raises(UserError, match="no such CUDA device"):
        frechet_distance_features(rng.standard_normal((5, 3)), rng.standard_normal((5, 3)), device="cuda")
    with pytest.raises(UserError, match="not a torch device"):
        frechet_distance_features(rng.standard_normal((5, 3)), rng.standard_normal((5, 3)), device="gpu0")
