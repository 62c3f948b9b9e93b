"""Inception Score over any classifier with a class head.

Salimans et al., "Improved techniques for training GANs", NeurIPS 2016
(https://arxiv.org/abs/1606.03498)::

    IS = exp( E_x KL( p(y | x) || p(y) ) ),   p(y) = E_x p(y | x)

It is 1 when every image gets the same prediction and K when predictions are confident
and spread evenly over K classes. The images are split into ``splits`` parts and the
mean and standard deviation over the parts are reported, as in the original code. Any
network that returns class logits works: the FID InceptionV3 (1008 ImageNet classes), or
a classifier trained here (the semi-supervised K+1 discriminator, a fine-tuned encoder).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from udl_med.metrics._checks import MetricInputError, as_features, require_samples


@dataclass(frozen=True)
class ISResult:
    mean: float
    std: float
    splits: int


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def inception_score(scores: Any, splits: int = 10, from_logits: bool = True) -> ISResult:
    """Inception Score of class scores ``(N, K)``: logits (default) or probabilities.

    Raises:
        MetricInputError: fewer samples than splits, probabilities that are not
            non-negative rows summing to 1.
    """
    s = as_features(scores, "class scores")
    n = s.shape[0]
    if splits < 1:
        raise MetricInputError(f"splits must be >= 1, got {splits}")
    require_samples(n, splits, f"class scores ({splits} splits)")
    if from_logits:
        log_p = _log_softmax(s)
    else:
        if (s < 0).any() or not np.allclose(s.sum(axis=1), 1.0, atol=1e-6):
            raise MetricInputError("class scores: probabilities must be non-negative and sum to 1 per row")
        with np.errstate(divide="ignore"):
            log_p = np.log(s)
    p = np.exp(log_p)
    values = []
    for part in np.array_split(np.arange(n), splits):
        p_part, log_part = p[part], log_p[part]
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 log 0 = 0, handled by the mask
            log_marginal = np.log(p_part.mean(axis=0))
            kl = np.where(p_part > 0, p_part * (log_part - log_marginal), 0.0).sum(axis=1)  # KL(p(y|x) || p(y))
        values.append(np.exp(kl.mean()))
    return ISResult(float(np.mean(values)), float(np.std(values)), splits)


@torch.no_grad()
def class_logits(classifier: Callable[[Tensor], Tensor], batches: Iterable[Tensor]) -> np.ndarray:
    """Run ``classifier`` over image batches and stack its logits ``(N, K)``."""
    out = [classifier(b).detach().double().cpu() for b in batches]
    if not out:
        raise MetricInputError("no images to classify")
    return torch.cat(out).numpy()


def inception_score_of_images(
    classifier: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 32, splits: int = 10
) -> ISResult:
    """Inception Score of ``images (N, C, *spatial)`` under ``classifier`` (images -> logits).

    An extractor with a class head passes its ``logits`` method; a trained classifier passes itself.
    """
    return inception_score(class_logits(classifier, images.split(batch_size)), splits=splits)
