"""Pi-model consistency loss and the sigmoid ramp-up, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from udl_med.losses.consistency import consistency_loss, sigmoid_rampup


def test_consistency_loss_by_hand() -> None:
    # item 1: logits (0, 0) vs (ln 3, 0): softmax (1/2, 1/2) vs (3/4, 1/4): (1/4)^2 * 2 = 1/8
    # item 2: equal logits up to a shift: softmax identical, 0
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[math.log(3.0), 0.0], [5.0, 6.0]], requires_grad=True)
    per_item = consistency_loss(student, teacher, reduction="none")
    assert torch.allclose(per_item, torch.tensor([0.125, 0.0]), atol=1e-6)
    assert float(consistency_loss(student, teacher).detach()) == pytest.approx(0.0625, abs=1e-6)
    assert float(consistency_loss(student, teacher, reduction="sum").detach()) == pytest.approx(0.125, abs=1e-6)
    consistency_loss(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None  # the teacher is a target
    # d/dl of (p - q)^2 summed: p = softmax(0, 0) = (1/2, 1/2), dp0/dl0 = p0 p1 = 1/4; grad_l0 = mean over 2 items of
    # 2 (p0 - q0) dp0/dl0 + 2 (p1 - q1) dp1/dl0 = 2 (-1/4)(1/4) + 2 (1/4)(-1/4) = -1/4, halved by the mean: -1/8
    assert float(student.grad[0, 0]) == pytest.approx(-0.125, abs=1e-6)
    with pytest.raises(ValueError, match="student and teacher"):
        consistency_loss(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="reduction"):
        consistency_loss(student, teacher, reduction="max")


def test_sigmoid_rampup_by_hand() -> None:
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(500, 100) == 1.0
    assert sigmoid_rampup(0, 0) == 1.0  # no ramp
    with pytest.raises(ValueError):
        sigmoid_rampup(-1, 10)
