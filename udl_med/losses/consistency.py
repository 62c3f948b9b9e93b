"""Consistency regularisation of a classifier on unlabeled data, and the sigmoid ramp-up of its weight.

Pi-model: Laine & Aila, "Temporal Ensembling for Semi-Supervised Learning", ICLR 2017
(https://arxiv.org/abs/1610.02242): two stochastic passes of the same network (here D's
Gaussian noise) over the same unlabeled batch should give the same class probabilities;
the loss is the squared difference of the two softmaxes, the second pass a fixed target.
Mean Teacher (Tarvainen & Valpola 2017) uses the averaged weights for the second pass;
on digits it was no better than the Pi-model combined with the K+1 game (README).

Ramp: ``exp(-5 (1 - t)^2)`` with ``t = step / length`` clipped to 1 (both papers), so the
unlabeled targets count little while the labels have not yet shaped the classes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from udl_med.losses.reduction import check_reduction as _check_reduction, reduce as _reduce

__all__ = ["consistency_loss", "sigmoid_rampup"]


def consistency_loss(student_logits: Tensor, teacher_logits: Tensor, reduction: str = "mean") -> Tensor:
    """``sum_k (softmax(student)_k - softmax(teacher)_k)^2`` per item; the teacher is a target (detached).

    Args:
        student_logits, teacher_logits: ``(B, K)`` class logits of two passes over the same items.
        reduction: ``mean`` over the batch, ``sum`` or ``none`` (``(B,)``).

    Raises:
        ValueError: shapes that differ, or an unknown reduction.
    """
    _check_reduction(reduction)
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(f"student and teacher logits must both be (B, K), got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    p = torch.softmax(student_logits.float(), dim=1)
    q = torch.softmax(teacher_logits.detach().float(), dim=1)
    return _reduce(((p - q) ** 2).sum(dim=1), reduction)


def sigmoid_rampup(step: int, length: int) -> float:
    """``exp(-5 (1 - min(step / length, 1))^2)``: from ``exp(-5)`` at step 0 to 1 at ``length``; 1 when ``length`` is 0."""
    if length < 0 or step < 0:
        raise ValueError(f"step and length must be >= 0, got step={step}, length={length}")
    if length == 0:
        return 1.0
    t = min(1.0, step / length)
    return math.exp(-5.0 * (1.0 - t) ** 2)
