"""What a picture of a latent space shows, in numbers: distance to the prior, class separation, a 2-D view.

- :func:`aggregate_kl`: ``KL(N(m, S) || N(0, I))`` of a Gaussian fitted to the aggregate
  posterior ``q(z) = (1/N) sum_i q(z | x_i)``: ``m`` the mean of the codes, ``S`` their
  covariance plus the mean posterior variance (zero for deterministic encoders). Near 0
  when the codes fill the prior (a VAE trained on its KL term), large when they sit in
  separated clusters far from it (reconstruction only). In closed form
  ``0.5 (tr S + m^T m - D - log det S)``.
- :func:`silhouette`: scikit-learn's mean silhouette of the codes by class (Rousseeuw
  1987), in [-1, 1]; higher is better separated.
- :func:`best_matching_agreement`: how well a discrete code (InfoGAN's categorical one)
  matches a class, under the best one-to-one matching of code values to classes.
- :func:`project_2d`: the codes themselves when they have two dimensions, else their
  projection on the first two principal axes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import silhouette_score

from udl_med.metrics._checks import MetricInputError, as_features

VARIANCE_FLOOR = 1e-12  # keeps log det finite for codes that collapse along an axis


def gaussian_fit(codes: Any, variances: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` of the aggregate posterior (see the module docstring).

    Args:
        codes: posterior means ``(N, D)``, N >= 2.
        variances: posterior variances ``(N, D)``, or None for a deterministic encoder.
    """
    x = as_features(codes, "codes")
    if x.shape[0] < 2:
        raise MetricInputError(f"codes needs at least 2 rows, got {x.shape[0]}")
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    if variances is not None:
        v = as_features(variances, "variances")
        if v.shape != x.shape:
            raise MetricInputError(f"variances must have the shape of codes {x.shape}, got {v.shape}")
        cov = cov + np.diag(v.mean(0))
    return x.mean(0), cov


def gaussian_kl_to_standard(mean: Any, cov: Any) -> float:
    """``KL(N(mean, cov) || N(0, I))`` in nats, float64."""
    m = np.asarray(mean, np.float64).reshape(-1)
    s = np.asarray(cov, np.float64).reshape(m.size, m.size)
    s = 0.5 * (s + s.T) + VARIANCE_FLOOR * np.eye(m.size)
    sign, logdet = np.linalg.slogdet(s)
    if sign <= 0:
        raise ValueError("the covariance is not positive definite")
    return float(0.5 * (np.trace(s) + m @ m - m.size - logdet))


def aggregate_kl(codes: Any, variances: Any | None = None) -> float:
    """KL of the Gaussian fit of the aggregate posterior to ``N(0, I)`` (see the module docstring)."""
    return gaussian_kl_to_standard(*gaussian_fit(codes, variances))


def silhouette(codes: Any, labels: Any) -> float | None:
    """Mean silhouette of ``codes`` ``(N, D)`` grouped by ``labels`` ``(N,)``; None with fewer than 2 classes."""
    x = as_features(codes, "codes")
    y = np.asarray(labels).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise MetricInputError(f"labels must have {x.shape[0]} entries, got {y.shape[0]}")
    classes = np.unique(y)
    if len(classes) < 2 or len(classes) >= x.shape[0]:
        return None
    return float(silhouette_score(x, y))


def project_2d(codes: Any) -> tuple[np.ndarray, str]:
    """``(N, 2)`` coordinates to draw and how they were made (``"codes"`` or ``"pca"``)."""
    x = as_features(codes, "codes")
    if x.shape[1] == 1:
        return np.concatenate([x, np.zeros_like(x)], 1), "codes"
    if x.shape[1] == 2:
        return x.copy(), "codes"
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, "pca"


def best_matching_agreement(codes: Any, classes: Any) -> float:
    """Fraction of items whose code value maps to their class under the best one-to-one matching.

    The unsupervised accuracy of a clustering (InfoGAN's categorical code against a class),
    with the matching found by the Hungarian algorithm on the contingency table.
    """

    a, b = np.asarray(codes).reshape(-1), np.asarray(classes).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"codes and classes must be two equal, non-empty lists, got {a.shape} and {b.shape}")
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    table = np.zeros((len(ua), len(ub)))
    np.add.at(table, (ia, ib), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / a.size)


__all__ = ["aggregate_kl", "best_matching_agreement", "gaussian_fit", "gaussian_kl_to_standard", "project_2d", "silhouette"]
