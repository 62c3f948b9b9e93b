"""Walking and computing in a latent space: interpolation, vector arithmetic, projection.

- **Interpolation** between two codes: linear, ``(1 - t) a + t b``, or spherical (slerp),
  ``sin((1 - t) w) / sin(w) a + sin(t w) / sin(w) b`` with ``w`` the angle between ``a``
  and ``b`` (Shoemake 1985). For a Gaussian prior in ``d`` dimensions almost every code
  has a norm near ``sqrt(d)``; a linear path between two of them passes through codes of
  norm down to ``sqrt(d / 2)`` in its middle, codes the generator never saw, while slerp
  keeps the norm profile of its ends (White 2016, "Sampling generative networks",
  https://arxiv.org/abs/1609.04468).
- **Arithmetic** over named sets of codes, e.g. ``"hyper - none + none_other"``: each set is
  averaged first, then the means are added and subtracted (DCGAN, Radford et al. 2016,
  section 6.3, https://arxiv.org/abs/1511.06434: three samples per concept; single codes
  are unstable).
- **Projection**: the code ``z`` whose image ``G(z)`` is closest to a given image, found by
  gradient descent on ``||G(z) - x||^2`` (plus a small pull towards the prior's typical
  norm), from several random starts; the remaining error is reported, since a generator
  need not be able to produce ``x`` at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

INTERPOLATIONS = ("linear", "slerp")
MIN_SET_SIZE = 3  # codes per concept for arithmetic (DCGAN averages three)
_TERM = re.compile(r"\s*([+-])?\s*([A-Za-z_][A-Za-z0-9_]*)\s*")


def lerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Linear interpolation: ``a``, ``b`` ``(D,)`` or ``(B, D)``, ``t`` ``(T,)`` -> ``(T, D)`` or ``(T, B, D)``."""
    t = t.to(a.dtype).reshape(-1, *([1] * a.ndim))
    return (1 - t) * a + t * b


def slerp(a: Tensor, b: Tensor, t: Tensor, eps: float = 1e-7) -> Tensor:
    """Spherical interpolation along the last axis (shapes as :func:`lerp`).

    The angle between ``a`` and ``b`` is measured on their directions; the result's norm
    runs from ``|a|`` to ``|b|`` (equal norms stay equal all along). Nearly parallel codes
    fall back to :func:`lerp`.
    """
    t = t.to(a.dtype).reshape(-1, *([1] * a.ndim))
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    cos = ((a / na.clamp_min(eps)) * (b / nb.clamp_min(eps))).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    spherical = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin.clamp_min(eps)
    return torch.where(sin > 1e-4, spherical, (1 - t) * a + t * b)


def interpolate(a: Tensor, b: Tensor, steps: int, kind: str = "slerp") -> Tensor:
    """``steps`` codes from ``a`` to ``b`` (both ends included): ``(steps, *a.shape)``.

    Raises:
        ValueError: fewer than 2 steps, an unknown ``kind``, or ``a`` and ``b`` of different shapes.
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    if kind not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {kind!r}; valid: {', '.join(INTERPOLATIONS)}")
    if a.shape != b.shape:
        raise ValueError(f"the two codes differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    return (lerp if kind == "linear" else slerp)(a, b, t)


@dataclass(frozen=True)
class Expression:
    """A parsed arithmetic expression: ``terms`` as ``(sign, set name)``, sign +1 or -1, in order."""

    text: str
    terms: tuple[tuple[int, str], ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The set names, each once, in order of first use."""
        return tuple(dict.fromkeys(name for _, name in self.terms))


def parse_expression(text: str) -> Expression:
    """Parse ``"A - B + C"`` (names: letters, digits, ``_``; a leading sign is optional).

    Raises:
        ValueError: an empty expression, or one that is not names joined by ``+`` and ``-``.
    """
    terms, pos = [], 0
    text_s = text.strip()
    if not text_s:
        raise ValueError("the expression is empty; write e.g. 'hyper - none + none_other'")
    while pos < len(text_s):
        m = _TERM.match(text_s, pos)
        if m is None or (terms and m.group(1) is None):
            raise ValueError(f"cannot read the expression {text!r} at {text_s[pos:]!r}; write set names joined by + and -, e.g. 'hyper - none + none_other'")
        terms.append((-1 if m.group(1) == "-" else 1, m.group(2)))
        pos = m.end()
    return Expression(text=text, terms=tuple(terms))


def evaluate_expression(expression: Expression, sets: Mapping[str, Tensor], min_size: int = MIN_SET_SIZE) -> Tensor:
    """``sum_i sign_i * mean(sets[name_i])``: ``(D,)`` from sets of codes ``(N_i, D)``.

    Raises:
        ValueError: a name without a set, a set of fewer than ``min_size`` codes, or sets of
            different code sizes.
    """
    missing = [n for n in expression.names if n not in sets]
    if missing:
        raise ValueError(f"no codes for {', '.join(missing)} (have: {', '.join(sorted(sets)) or 'none'})")
    means = {}
    for name in expression.names:
        codes = torch.as_tensor(sets[name], dtype=torch.float64)
        if codes.ndim != 2 or codes.shape[0] < min_size:
            raise ValueError(f"set {name!r} needs at least {min_size} codes (N, D), got shape {tuple(codes.shape)}; single codes are unstable, average several")
        means[name] = codes.mean(0)
    dims = {m.shape[0] for m in means.values()}
    if len(dims) > 1:
        raise ValueError(f"the sets' codes differ in size: {sorted(dims)}")
    return sum(sign * means[name] for sign, name in expression.terms)


@dataclass(frozen=True)
class Projection:
    """Codes ``z`` ``(B, D)`` found for targets ``(B, ...)``, and the mean squared error of ``G(z)`` per target ``(B,)``."""

    z: Tensor
    error: Tensor


def project(
    generate: Callable[[Tensor], Tensor],
    target: Tensor,
    latent_dim: int,
    steps: int = 300,
    restarts: int = 4,
    lr: float = 0.05,
    norm_weight: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Projection:
    """Find ``z`` with ``generate(z) ~ target`` by Adam on ``mean (G(z) - x)^2 + norm_weight (|z| / sqrt(D) - 1)^2``.

    Every target gets ``restarts`` random starts from ``N(0, I)``; the start whose final
    image error is lowest wins. The norm term keeps ``z`` in the prior's typical set.

    Args:
        generate: ``z (B, D) -> images (B, ...)``, differentiable in ``z``.
        target: ``(B, ...)`` images on the generator's scale.
        latent_dim: ``D``.
        steps: Adam steps per start.
        restarts: random starts per target.
        lr: Adam's step size.
        norm_weight: weight of the typical-norm term.
        generator: the random starts.
    """
    b = target.shape[0]
    target = target.detach().float()
    z = torch.randn(restarts * b, latent_dim, generator=generator).to(target.device).requires_grad_(True)
    goal = target.repeat(restarts, *([1] * (target.ndim - 1)))
    optimizer = torch.optim.Adam([z], lr=lr)
    reduce = tuple(range(1, target.ndim))
    for _ in range(steps):
        optimizer.zero_grad()
        per = ((generate(z).float() - goal) ** 2).mean(reduce)  # (restarts * B,)
        prior = (z.norm(dim=1) / latent_dim**0.5 - 1) ** 2
        (per + norm_weight * prior).sum().backward()
        optimizer.step()
    with torch.no_grad():
        per = ((generate(z).float() - goal) ** 2).mean(reduce).reshape(restarts, b)
        best = per.argmin(0)  # (B,)
        chosen = z.detach().reshape(restarts, b, latent_dim)[best, torch.arange(b)]
        return Projection(z=chosen, error=per[best, torch.arange(b)])


__all__ = [
    "INTERPOLATIONS",
    "MIN_SET_SIZE",
    "Expression",
    "Projection",
    "evaluate_expression",
    "interpolate",
    "lerp",
    "parse_expression",
    "project",
    "slerp",
]
