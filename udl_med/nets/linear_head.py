"""A linear classification head fitted in closed form: a logistic regression folded into ``nn.Linear``.

The linear probe of a frozen encoder, and the LP step of LP-FT fine-tuning (Kumar et al.,
"Fine-tuning can distort pretrained features and underperform out-of-distribution",
ICLR 2022), where the head starts from this fit before encoder and head train together.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["fit_linear_head"]


def fit_linear_head(x: np.ndarray, labels: np.ndarray, num_classes: int, c: float = 0.1) -> nn.Linear:
    """A logistic regression on standardised ``x``, folded into one ``nn.Linear`` on raw features."""
    from sklearn.linear_model import LogisticRegression  # lazy: scikit-learn loads only when a head is fitted

    mean, std = x.mean(0), x.std(0) + 1e-6
    model = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / std, labels)
    weight = np.zeros((num_classes, x.shape[1]))
    bias = np.full(num_classes, -1e4)  # classes absent from the training items are never predicted
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # scikit-learn keeps one row for two classes
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight[model.classes_] = coef / std
    bias[model.classes_] = intercept - (coef / std) @ mean
    head = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return head
