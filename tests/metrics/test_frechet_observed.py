"""metrics.frechet observed in its messages, devices, factors and routes (issue 26's mutants).

Every refusal names the input it refuses ("first set", "factor", "covariance", ...), every
entry point passes its ``device`` on, the factors have the documented shapes, and the
route and its reason are what the docstrings say.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from udl_med.metrics import frechet
from udl_med.metrics._checks import MetricInputError

RNG = np.random.default_rng(0)
X, Y = RNG.standard_normal((6, 3)), RNG.standard_normal((5, 3)) + 1.0
WIDE = RNG.standard_normal((3, 5))  # fewer samples than features
MU = np.zeros(3)
COV = np.cov(X.T)


def _nan(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flat[1] = np.nan
    return a


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(MetricInputError) as caught:
        fn(*args, **kwargs)
    return str(caught.value)


SIZES = "(were both sets embedded by the same extractor?)"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: frechet.frechet_features(np.zeros(3), Y), "first set: expected a (samples, features) array, got shape (3,)"),
        (lambda: frechet.frechet_features(X, np.zeros((2, 3, 1))), "second set: expected a (samples, features) array, got shape (2, 3, 1)"),
        (lambda: frechet.frechet_features(X[:1], Y), "first set: 1 sample(s), at least 2 needed"),
        (lambda: frechet.frechet_features(X, Y[:1]), "second set: 1 sample(s), at least 2 needed"),
        (lambda: frechet.frechet_features(X[:2], Y[:2]), None),  # two samples are enough
        (lambda: frechet.frechet_features(X, Y[:, :2]), f"feature sizes differ: 3 vs 2 {SIZES}"),
        (lambda: frechet.frechet_features(_nan(X), Y), "first set: contains NaN or infinite values"),
        (lambda: frechet.frechet_features(X, _nan(Y)), "second set: contains NaN or infinite values"),
        (lambda: frechet.frechet_features(_nan(WIDE), WIDE), "first set: contains NaN or infinite values"),
        (lambda: frechet.frechet_features(WIDE, _nan(WIDE)), "second set: contains NaN or infinite values"),
        (lambda: frechet.frechet_gaussians(np.zeros((1, 3)), MU, cov1=COV, cov2=COV), "mean: expected 1 dimension(s), got shape (1, 3)"),
        (lambda: frechet.frechet_gaussians(MU, np.zeros((1, 3)), cov1=COV, cov2=COV), "mean: expected 1 dimension(s), got shape (1, 3)"),
        (lambda: frechet.frechet_gaussians(_nan(MU), MU, cov1=COV, cov2=COV), "mean: contains NaN or infinite values"),
        (lambda: frechet.frechet_gaussians(MU, _nan(MU), cov1=COV, cov2=COV), "mean: contains NaN or infinite values"),
        (lambda: frechet.frechet_gaussians(MU, MU, cov1=COV, factor1=X, cov2=COV), "Gaussian 1: give its covariance or a factor of it, not both"),
        (lambda: frechet.frechet_gaussians(MU, MU, cov2=COV), "Gaussian 1: give its covariance or a factor of it, not neither"),
        (lambda: frechet.frechet_gaussians(MU, MU, cov1=COV), "Gaussian 2: give its covariance or a factor of it, not neither"),
        (lambda: frechet.frechet_gaussians(MU, MU, cov1=COV, cov2=COV, factor2=X), "Gaussian 2: give its covariance or a factor of it, not both"),
        (lambda: frechet.frechet_gaussians(MU, MU, factor1=np.zeros(3), cov2=COV), "factor: expected a (samples, features) array, got shape (3,)"),
        (lambda: frechet.frechet_gaussians(MU, MU, factor1=_nan(X), cov2=COV), "factor: contains NaN or infinite values"),
        (lambda: frechet.frechet_gaussians(MU, MU, factor1=WIDE, cov2=COV), f"factor and mean sizes differ: 5 vs 3 {SIZES}"),
        (lambda: frechet.frechet_gaussians(MU, MU, cov1=_nan(COV), cov2=COV), "covariance: contains NaN or infinite values"),
        (lambda: frechet.frechet_gaussians(MU, MU, cov1=np.zeros(3), cov2=COV), "covariance: expected a (samples, features) array, got shape (3,)"),
        (lambda: frechet.frechet_gaussians(MU, MU, cov1=COV[:, :2], cov2=COV), "covariance of shape (3, 2) does not fit a mean of size 3"),
        (lambda: frechet.covariance_factor(np.zeros((2, 3))), "covariance must be a square matrix, got shape (2, 3)"),
        (lambda: frechet.covariance_factor(_nan(COV)), "covariance: contains NaN or infinite values"),
        (lambda: frechet.features_factor(np.zeros(3), name="real"), "real: expected a (samples, features) array, got shape (3,)"),
        (lambda: frechet.features_factor(X[:1], name="real"), "real: 1 sample(s), at least 2 needed"),
        (lambda: frechet.features_factor(_nan(X), name="real"), "real: contains NaN or infinite values"),
        (lambda: frechet.features_factor(_nan(WIDE), name="real"), "real: contains NaN or infinite values"),
        (lambda: frechet.features_factor(_nan(X)), "features: contains NaN or infinite values"),
        (lambda: frechet.trace_sqrt_product_factors(np.zeros(3), X), "factor: expected a (samples, features) array, got shape (3,)"),
        (lambda: frechet.trace_sqrt_product_factors(X, np.zeros(3)), "factor: expected a (samples, features) array, got shape (3,)"),
        (lambda: frechet.trace_sqrt_product_factors(X, WIDE), f"feature sizes differ: 3 vs 5 {SIZES}"),
        (lambda: frechet.trace_sqrt_product(np.zeros(3), COV), "covariance: expected a (samples, features) array, got shape (3,)"),
        (lambda: frechet.trace_sqrt_product(COV, np.zeros(3)), "covariance: expected a (samples, features) array, got shape (3,)"),
        (lambda: frechet.trace_sqrt_product(COV, np.eye(2)), f"feature sizes differ: 3 vs 2 {SIZES}"),
    ],
)
def test_each_refusal_names_what_it_refuses(call, message) -> None:
    if message is None:
        call()
    else:
        assert _message(call) == message


def test_features_factor_shapes() -> None:
    for n, d, rows in [(6, 3, 3), (3, 5, 2), (4, 4, 3), (2, 1, 1), (5, 1, 1)]:
        x = np.random.default_rng(n * d).standard_normal((n, d))
        mean, f = frechet.features_factor(x)
        assert f.shape == (rows, d)  # N <= d: the centred features (N - 1 rows); else at most d rows
        np.testing.assert_allclose(mean, x.mean(0), atol=1e-12)
        np.testing.assert_allclose(f.T @ f, np.atleast_2d(np.cov(x.T)), atol=1e-10)
    grad = torch.randn(6, 3, requires_grad=True)  # a tensor that needs grad is detached, not refused
    frechet.features_factor(grad)
    assert frechet.frechet_features(grad, torch.from_numpy(Y)).distance > 0


def test_covariance_factor_is_cholesky_when_definite_and_drops_rounding_level_eigenvalues() -> None:
    f = frechet.covariance_factor(COV)
    assert f.shape == (3, 3) and np.allclose(np.tril(f, -1), 0.0)  # upper triangular: Cholesky
    np.testing.assert_allclose(f.T @ f, COV, atol=1e-12)
    assert frechet.covariance_factor(np.diag([1e8, 1e-10])).shape == (1, 2)  # 1e-10 is below 2 eps 1e8
    assert frechet.covariance_factor(np.diag([1e8, 1.0, 1e-10])).shape == (2, 3)
    assert frechet.covariance_factor(np.zeros((3, 3))).shape == (0, 3)


def test_every_entry_point_passes_its_device_on(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = [
        lambda device: frechet.frechet_features(X, Y, device=device),
        lambda device: frechet.frechet_distance_features(X, Y, device=device),
        lambda device: frechet.frechet_covariances(MU, COV, MU, COV, device=device),
        lambda device: frechet.frechet_distance(MU, COV, MU, COV, device=device),
        lambda device: frechet.frechet_factors(MU, X, MU, X, device=device),
        lambda device: frechet.frechet_distance_from_factors(MU, X, MU, X, device=device),
    ]
    for call in calls:
        assert _message(call, "gpu0") == "device 'gpu0': not a torch device name (cpu, cuda, cuda:1, ...)"
        call("cpu")


def test_resolve_device_checks_the_cuda_index(monkeypatch: pytest.MonkeyPatch) -> None:
    assert frechet.resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert frechet.resolve_device("cuda") == torch.device("cuda")
    assert frechet.resolve_device("cuda:0") == torch.device("cuda:0")
    assert _message(frechet.resolve_device, "cuda:1") == "device 'cuda:1': no such CUDA device here (1 visible); use --device cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _message(frechet.resolve_device, "cuda:0") == "device 'cuda:0': no such CUDA device here (1 visible); use --device cpu"


def test_routes_and_reasons(caplog: pytest.LogCaptureFixture) -> None:
    zero = np.zeros((1, 3))
    assert frechet.frechet_factors(MU, zero, MU, zero) == frechet.Frechet(0.0, "eigh", "")  # nothing to take a root of
    fast = frechet.frechet_covariances(MU, COV, MU + 1, 2 * COV)
    assert fast.route == "eigh" and fast.reason == ""
    singular = np.diag([1.0, 1.0, 0.0])
    with caplog.at_level(logging.DEBUG, logger="udl_med.metrics.frechet"):
        slow = frechet.frechet_covariances(MU, singular, MU, singular)
    assert slow == frechet.Frechet(pytest.approx(0.0, abs=1e-12), "svd", "Cholesky failed or has a pivot at rounding level")
    assert [r.getMessage() for r in caplog.records] == ["Fréchet trace: Cholesky failed or has a pivot at rounding level; using the SVD"]
