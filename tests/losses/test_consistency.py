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


def test_translate_by_hand_and_its_random_draw() -> None:
    from udl_med.losses.consistency import draw_shifts, random_translate, translate

    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(2, 1, 1, 1)
    out = translate(x, torch.tensor([[1, 0], [0, -1]]))
    # item 0: one row down, the top row replicated; item 1: one column left, the last column replicated
    assert torch.equal(out[0, 0], torch.tensor([[0.0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]))
    assert torch.equal(out[1, 0], torch.tensor([[1.0, 2, 3, 3], [5, 6, 7, 7], [9, 10, 11, 11], [13, 14, 15, 15]]))
    assert torch.equal(translate(x, torch.zeros(2, 2, dtype=torch.long)), x)
    volume = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    assert torch.equal(translate(volume, torch.tensor([[0, 0, 1]]))[0, 0, :, :, 1], volume[0, 0, :, :, 0])  # 3D, last axis
    shifts = draw_shifts(500, 2, 1, torch.Generator().manual_seed(0))
    assert shifts.min() == -1 and shifts.max() == 1 and shifts.shape == (500, 2)
    assert random_translate(x, 0) is x
    moved = random_translate(x, 2, torch.Generator().manual_seed(1))
    assert torch.equal(moved, translate(x, draw_shifts(2, 2, 2, torch.Generator().manual_seed(1))))  # draw, then the deterministic form
    with pytest.raises(ValueError, match="images"):
        translate(torch.zeros(2, 5), torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="shifts"):
        translate(x, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="max_shift"):
        draw_shifts(2, 2, -1)


def test_pseudo_label_loss_by_hand() -> None:
    from udl_med.losses.consistency import pseudo_label_loss

    # teacher item 1: softmax (3/4, 1/4): confidence 0.75, class 0; item 2: softmax (1/2, 1/2): 0.5, no label at 0.7
    teacher = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    student = torch.tensor([[0.0, 0.0], [2.0, 0.0]], requires_grad=True)
    loss, mask = pseudo_label_loss(student, teacher, threshold=0.7)
    assert torch.equal(mask, torch.tensor([1.0, 0.0]))
    # CE of student (0, 0) against class 0: ln 2; the masked item counts 0 in the mean over 2 items
    assert float(loss.detach()) == pytest.approx(math.log(2.0) / 2, abs=1e-6)
    per_item, _ = pseudo_label_loss(student, teacher, threshold=0.5, reduction="none")
    # at 0.5 item 2 qualifies too; argmax of a tie is class 0: CE of (2, 0) against class 0 = ln(1 + e^-2)
    assert torch.allclose(per_item.detach(), torch.tensor([math.log(2.0), math.log(1 + math.exp(-2.0))]), atol=1e-6)
    loss.backward()
    assert float(student.grad[0, 0]) == pytest.approx(-0.25, abs=1e-6)  # (p0 - 1) / 2 = (1/2 - 1) / 2
    assert float(student.grad[1].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="threshold"):
        pseudo_label_loss(student, teacher, threshold=1.5)
    with pytest.raises(ValueError, match="student and teacher"):
        pseudo_label_loss(torch.zeros(2, 3), teacher, threshold=0.5)


def test_vat_direction_is_the_top_eigenvector_of_the_kl_hessian_for_a_linear_softmax() -> None:
    """For logits ``W x`` the KL's Hessian in the input is ``W^T (diag(q) - q q^T) W``; power iteration finds its top eigenvector."""
    from udl_med.losses.consistency import vat_direction

    torch.manual_seed(0)
    w = torch.randn(4, 6, dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64)
    model = lambda v: v @ w.T  # noqa: E731
    d = vat_direction(model, x, model(x), xi=1e-4, power_iterations=30)
    assert torch.allclose(d.norm(dim=1), torch.ones(3, dtype=torch.float64))
    for i in range(3):
        q = torch.softmax(model(x[i : i + 1]), dim=1)[0]
        hessian = w.T @ (torch.diag(q) - torch.outer(q, q)) @ w
        _, vectors = torch.linalg.eigh(hessian)
        top = vectors[:, -1]
        assert abs(float(d[i] @ top)) == pytest.approx(1.0, abs=1e-4)


def test_vat_loss_by_hand_and_no_gradient_from_the_power_iteration() -> None:
    from udl_med.losses.consistency import vat_direction, vat_loss

    torch.manual_seed(1)
    net = torch.nn.Linear(5, 3)
    x = torch.randn(4, 5)
    target = net(x).detach() + torch.tensor([0.5, 0.0, -0.5])  # a target off the clean pass: the KL is not 0 at x
    torch.manual_seed(2)
    d = vat_direction(net, x, target)
    assert all(p.grad is None for p in net.parameters())  # only the direction was differentiated
    torch.manual_seed(2)
    loss = vat_loss(net, x, target, epsilon=0.3)
    q = torch.softmax(target, dim=1)
    p = torch.softmax(net(x + 0.3 * d), dim=1)
    expected = (q * (q.log() - p.log())).sum(dim=1).mean()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    loss.backward()  # the loss itself reaches the parameters
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    # the direction found is worse than a random one of the same length: it is the adversarial one
    with torch.no_grad():
        random = torch.randn(4, 5)
        random = 0.3 * random / random.norm(dim=1, keepdim=True)
        p_random = torch.softmax(net(x + random), dim=1)
    assert float(expected.detach()) > float((q * (q.log() - p_random.log())).sum(dim=1).mean())
    with pytest.raises(ValueError, match="epsilon"):
        vat_loss(net, x, target, epsilon=0.0)
    with pytest.raises(ValueError, match="target logits"):
        vat_loss(net, x, target[:2], epsilon=0.1)
