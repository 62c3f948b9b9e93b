"""Consistency regularisation of a classifier on unlabeled data, and the sigmoid ramp-up of its weight.

Pi-model: Laine & Aila, "Temporal Ensembling for Semi-Supervised Learning", ICLR 2017
(https://arxiv.org/abs/1610.02242): two stochastic passes of the same network (here D's
Gaussian noise) over the same unlabeled batch should give the same class probabilities;
the loss is the squared difference of the two softmaxes, the second pass a fixed target.
Mean Teacher (Tarvainen & Valpola 2017) uses the averaged weights for the second pass;
on digits it was no better than the Pi-model combined with the K+1 game (README).

Ramp: ``exp(-5 (1 - t)^2)`` with ``t = step / length`` clipped to 1 (both papers), so the
unlabeled targets count little while the labels have not yet shaped the classes.

Perturbation: besides D's own Gaussian noise, :func:`random_translate` shifts each image by
up to ``max_shift`` pixels per axis (edges replicated), the translations the Pi-model paper
uses; the draw (:func:`draw_shifts`) is separate from the deterministic
:func:`translate`, so a result is reproducible from its shifts.

Pseudo-labels (FixMatch, Sohn et al. 2020, https://arxiv.org/abs/2001.07685):
:func:`pseudo_label_loss` is the cross-entropy of the student pass against the teacher
pass's argmax, counted only where the teacher's top class probability reaches a threshold.

Virtual adversarial training (VAT, Miyato et al. 2018, https://arxiv.org/abs/1704.03976):
:func:`vat_loss` finds, by one power iteration, the direction of length ``epsilon`` in which
the class softmax changes most, and penalises the KL divergence from the clean pass to the
pass moved that way. It needs no image-specific augmentation, which suits inputs too small
to translate (a pixel is an eighth of an 8x8 digit).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from udl_med.losses.reduction import check_reduction as _check_reduction, reduce as _reduce
from udl_med.nets.diffaugment import translate as shift_images

__all__ = ["consistency_loss", "draw_shifts", "pseudo_label_loss", "random_translate", "sigmoid_rampup", "translate", "vat_direction", "vat_loss"]


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


def pseudo_label_loss(student_logits: Tensor, teacher_logits: Tensor, threshold: float, reduction: str = "mean") -> tuple[Tensor, Tensor]:
    """``(loss, mask)``: ``mask_i * CE(student_i, argmax teacher_i)``, ``mask_i = max_k softmax(teacher_i)_k >= threshold``.

    FixMatch's unlabeled term: the mean runs over the whole batch (masked items count 0), so
    the term grows as the teacher grows confident. The teacher is a target (detached).

    Args:
        student_logits, teacher_logits: ``(B, K)`` class logits of two passes over the same items.
        threshold: the confidence a pseudo-label needs, in ``[0, 1]``.
        reduction: ``mean`` over the batch, ``sum`` or ``none`` (``(B,)``).

    Returns:
        The loss and the ``(B,)`` float mask of the items that got a pseudo-label.

    Raises:
        ValueError: shapes that differ, a threshold outside ``[0, 1]``, or an unknown reduction.
    """
    _check_reduction(reduction)
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(f"student and teacher logits must both be (B, K), got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    confidence, target = torch.softmax(teacher_logits.detach().float(), dim=1).max(dim=1)
    mask = (confidence >= threshold).float()
    per_item = F.cross_entropy(student_logits.float(), target, reduction="none") * mask
    return _reduce(per_item, reduction), mask


def draw_shifts(n: int, spatial_dims: int, max_shift: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """``(n, spatial_dims)`` integer shifts, each uniform in ``[-max_shift, max_shift]``."""
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    return torch.randint(-max_shift, max_shift + 1, (n, spatial_dims), generator=generator, device=device)


def translate(x: Tensor, shifts: Tensor) -> Tensor:
    """Images ``(B, C, *spatial)`` moved by ``shifts`` ``(B, len(spatial))`` pixels, edges replicated.

    A positive shift moves the content towards higher indices:
    ``out[..., i] = x[..., clamp(i - shift, 0, size - 1)]`` along each axis
    (:func:`udl_med.nets.diffaugment.translate` with ``replicate``).

    Raises:
        ValueError: images of 1 or more than 3 spatial axes, or shifts of the wrong shape.
    """
    spatial = x.ndim - 2
    if spatial not in (2, 3):
        raise ValueError(f"translate needs images (B, C, H, W[, D]), got shape {tuple(x.shape)}")
    if shifts.shape != (x.shape[0], spatial):
        raise ValueError(f"shifts must be ({x.shape[0]}, {spatial}), got {tuple(shifts.shape)}")
    return shift_images(x, shifts, replicate=True)


def random_translate(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """:func:`translate` by shifts drawn with :func:`draw_shifts`; ``x`` itself when ``max_shift`` is 0."""
    if max_shift == 0:
        return x
    return translate(x, draw_shifts(x.shape[0], x.ndim - 2, max_shift, generator, x.device))


def _unit(d: Tensor) -> Tensor:
    """Each item of ``d`` scaled to unit L2 norm over all its non-batch axes (a zero item stays zero)."""
    norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)
    return d / norm.view(-1, *([1] * (d.ndim - 1)))


def _kl_from_target(target_logits: Tensor, logits: Tensor) -> Tensor:
    """``KL(softmax(target) || softmax(logits))`` per item, the target detached."""
    log_q = torch.log_softmax(target_logits.detach().float(), dim=1)
    return (log_q.exp() * (log_q - torch.log_softmax(logits.float(), dim=1))).sum(dim=1)


def vat_direction(model: Callable[[Tensor], Tensor], x: Tensor, target_logits: Tensor, xi: float = 1e-6, power_iterations: int = 1) -> Tensor:
    """The unit direction (per item) in which ``model``'s softmax moves most away from ``target_logits``.

    Power iteration from a random unit direction ``d``: ``d <- unit(grad_d KL(target || model(x + xi d)))``.
    Only ``d`` is differentiated (``torch.autograd.grad``), so no gradient reaches the model's
    parameters. Returned detached.
    """
    if xi <= 0 or power_iterations < 1:
        raise ValueError(f"xi must be > 0 and power_iterations >= 1, got xi={xi}, power_iterations={power_iterations}")
    d = _unit(torch.randn_like(x))
    for _ in range(power_iterations):
        d = d.detach().requires_grad_(True)
        divergence = _kl_from_target(target_logits, model(x.detach() + xi * d)).mean()
        (grad,) = torch.autograd.grad(divergence, d)
        d = _unit(grad)
    return d.detach()


def vat_loss(
    model: Callable[[Tensor], Tensor], x: Tensor, target_logits: Tensor, epsilon: float, xi: float = 1e-6, power_iterations: int = 1, reduction: str = "mean"
) -> Tensor:
    """``KL(softmax(target) || softmax(model(x + epsilon * d)))``, ``d`` from :func:`vat_direction`.

    Args:
        model: maps ``x``-shaped inputs to ``(B, K)`` class logits.
        x: the unlabeled batch.
        target_logits: ``(B, K)`` class logits of a clean pass over ``x`` (a target: detached).
        epsilon: the L2 length of the perturbation per item (over all of an item's values).
        xi: the finite-difference step of the power iteration.
        power_iterations: how many (the paper: 1).
        reduction: ``mean`` over the batch, ``sum`` or ``none`` (``(B,)``).

    Raises:
        ValueError: ``epsilon`` <= 0, a bad ``xi`` or iteration count, logits that are not
            ``(len(x), K)``, or an unknown reduction.
    """
    _check_reduction(reduction)
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if target_logits.ndim != 2 or target_logits.shape[0] != x.shape[0]:
        raise ValueError(f"target logits must be ({x.shape[0]}, K), got {tuple(target_logits.shape)}")
    d = vat_direction(model, x, target_logits, xi, power_iterations)
    return _reduce(_kl_from_target(target_logits, model(x.detach() + epsilon * d)), reduction)
