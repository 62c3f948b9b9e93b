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
    frechet_distance_features,
    trace_sqrt_product,
    trace_sqrt_product_factors,
)


def _scipy_trace(c1: np.ndarray, c2: np.ndarray) -> float:
    """The usual reference: trace of scipy's float64 matrix square root of the product."""
    return float(np.trace(scipy.linalg.sqrtm(c1 @ c2)).real)


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


def test_eigenvalue_route_checked_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large factor products use eigvalsh with an error bound; near-singular ones fall back to the SVD."""
    import udl_med.metrics.frechet as frechet

    rng = np.random.default_rng(7)
    d = 48
    mixing = np.eye(d) + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)  # well conditioned
    a, b = rng.standard_normal((400, d)) @ mixing, rng.standard_normal((300, d)) @ mixing * 1.2 + 0.3
    exact = frechet_distance_features(a, b)  # SVD route (48 <= SVD_MAX)
    svd_calls = []
    real_svd = frechet._nuclear_norm_svd
    monkeypatch.setattr(frechet, "_nuclear_norm_svd", lambda m: svd_calls.append(m.shape) or real_svd(m))
    monkeypatch.setattr(frechet, "SVD_MAX", 8)  # force the eigenvalue route at this small size
    assert frechet_distance_features(a, b) == pytest.approx(exact, rel=1e-10)
    assert svd_calls == []  # well conditioned: the bound accepted the eigenvalues

    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    w1, w2 = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    w1[30:], w2[:20] = 0.0, 0.0  # supports overlap in 10 directions: F1 F2^T (30 x 28) has rank 10
    c1, c2 = (q * w1) @ q.T, (q * w2) @ q.T
    mu = np.zeros(d)
    expected = np.sum(w1) + np.sum(w2) - 2 * np.sqrt(w1 * w2).sum()
    assert frechet_distance(mu, c1, mu, c2) == pytest.approx(expected, rel=1e-9)
    assert svd_calls  # zero singular values eigvalsh cannot resolve: the bound refused, exact SVD
