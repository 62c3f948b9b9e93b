"""KL of the aggregate posterior to the prior, silhouette, 2-D view and best-matching agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from udl_med.metrics._checks import MetricInputError
from udl_med.metrics.latent import aggregate_kl, best_matching_agreement, gaussian_kl_to_standard, project_2d, silhouette


def test_gaussian_kl_by_hand() -> None:
    # KL(N(m, diag(s2)) || N(0, I)) = 0.5 * sum(s2 + m^2 - 1 - log s2)
    m, s2 = np.array([1.0, -2.0]), np.array([0.5, 3.0])
    expected = 0.5 * float(np.sum(s2 + m**2 - 1 - np.log(s2)))
    assert gaussian_kl_to_standard(m, np.diag(s2)) == pytest.approx(expected)
    assert gaussian_kl_to_standard(np.zeros(3), np.eye(3)) == pytest.approx(0.0, abs=1e-9)


def test_aggregate_kl_of_prior_codes_is_near_zero_and_of_clusters_large() -> None:
    rng = np.random.default_rng(0)
    assert aggregate_kl(rng.standard_normal((4000, 2))) < 0.01
    # a KL-only VAE: every mean 0, every variance 1 -> the aggregate is the prior
    assert aggregate_kl(np.zeros((50, 2)), np.ones((50, 2))) == pytest.approx(0.0, abs=1e-6)
    # reconstruction only: tight clusters far apart
    clusters = np.concatenate([rng.normal(c, 0.05, (100, 2)) for c in (-8.0, 0.0, 8.0)])
    assert aggregate_kl(clusters, np.full_like(clusters, 1e-6)) > 20.0
    with pytest.raises(MetricInputError):
        aggregate_kl(np.zeros((1, 2)))


def test_silhouette_separates_clusters_and_needs_two_classes() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (20, 3)), rng.normal(5, 0.1, (20, 3))])
    y = np.repeat([0, 1], 20)
    assert silhouette(x, y) > 0.9
    assert abs(silhouette(rng.standard_normal((40, 3)), y)) < 0.2
    assert silhouette(x, np.zeros(40)) is None


def test_project_2d_keeps_2d_codes_and_finds_the_main_axes() -> None:
    codes = np.array([[1.0, 2.0], [3.0, 4.0]])
    xy, view = project_2d(codes)
    assert view == "codes" and np.array_equal(xy, codes)
    rng = np.random.default_rng(0)
    x = np.zeros((200, 5))
    x[:, 3] = rng.normal(0, 10, 200)  # the main axis
    x[:, 1] = rng.normal(0, 1, 200)
    xy, view = project_2d(x)
    assert view == "pca" and xy.shape == (200, 2)
    assert abs(np.corrcoef(xy[:, 0], x[:, 3])[0, 1]) > 0.999


def test_best_matching_agreement() -> None:
    assert best_matching_agreement([1, 1, 0, 0], [0, 0, 1, 1]) == 1.0  # a relabelling is a perfect match
    assert best_matching_agreement([0, 0, 0, 0], [0, 1, 0, 1]) == 0.5
    assert best_matching_agreement([0, 1, 2, 2], [5, 5, 7, 7]) == 0.75
    assert math.isclose(best_matching_agreement([0, 1, 0, 1, 2, 2], [0, 0, 1, 1, 2, 2]), 4 / 6)
