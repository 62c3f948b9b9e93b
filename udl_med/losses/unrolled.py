"""Unrolled GAN: the discriminator after K simulated updates, as a function of the generator.

Metz, Poole, Pfau, Sohl-Dickstein 2017, "Unrolled Generative Adversarial Networks"
(https://arxiv.org/abs/1611.02163). The generator's loss is evaluated against
``theta_D^K``, reached from the current D by K gradient steps on D's loss (eq. 5-6);
differentiating through those steps lets G anticipate how D reacts, which damps mode
hopping. :func:`unroll_discriminator` returns the unrolled parameters for
:func:`torch.func.functional_call`; :func:`adam_moments` reads the real D optimizer's
moments so that Adam inner steps continue from them, as the authors' code does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from udl_med.losses.gan import Critic

ADAM_EPS = 1e-8  # torch's Adam default


def adam_eps(optimizer: torch.optim.Optimizer | None) -> float:
    """The ``eps`` of an Adam ``optimizer``'s first parameter group (torch's default when None)."""
    return float(optimizer.param_groups[0]["eps"]) if optimizer is not None else ADAM_EPS


def adam_moments(disc: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, tuple[Tensor, Tensor, int]]:
    """``{name: (exp_avg, exp_avg_sq, step)}`` of ``disc``'s parameters in an Adam ``optimizer`` (zeros before its first step)."""
    state = optimizer.state if optimizer is not None else {}
    out = {}
    for name, p in disc.named_parameters():
        s = state.get(p, {})
        if "exp_avg" in s:
            out[name] = (s["exp_avg"].detach(), s["exp_avg_sq"].detach(), int(float(s["step"])))
        else:
            out[name] = (torch.zeros_like(p), torch.zeros_like(p), 0)
    return out


def unroll_discriminator(
    disc: nn.Module,
    d_loss: Callable[[Critic], Tensor],
    steps: int,
    lr: float,
    create_graph: bool,
    clip_value: float | None = None,
    adam: tuple[tuple[float, float], float, dict[str, tuple[Tensor, Tensor, int]]] | None = None,
) -> dict[str, Tensor]:
    """Parameters (and buffers) of ``disc`` after ``steps`` simulated updates on ``d_loss``.

    Metz et al. 2017, eq. 5-6: ``theta_D^{k+1} = theta_D^k - lr * d L_D(theta_G, theta_D^k) / d theta_D^k``
    (SGD), starting from copies of ``disc``'s current parameters (``disc`` itself is not
    changed, its buffers are cloned). With ``adam = ((beta1, beta2), eps, moments)`` the
    inner steps are Adam's instead, continuing from ``moments`` (:func:`adam_moments` of
    the real D optimizer) with the moment updates inside the graph, as the authors'
    code unrolls its optimizer. With ``create_graph`` the updates stay in the autograd
    graph, so a loss evaluated at the result is differentiated through them (when
    ``d_loss`` uses the generator's output without detaching it); without it every step
    is detached (the first-order surrogate).

    Args:
        disc: the discriminator (a module ``(x, labels) -> scores``).
        d_loss: maps a critic ``d(x, labels)`` to D's scalar loss.
        steps: K, the number of simulated updates.
        lr: the inner learning rate.
        create_graph: differentiate through the updates (second order).
        clip_value: clamp the parameters to ``[-c, c]`` after each update (WGAN).
        adam: Adam's betas, eps and starting moments; None: SGD.

    Returns:
        ``{name: tensor}`` for :func:`torch.func.functional_call`.
    """
    params = {k: p.detach().clone().requires_grad_(True) for k, p in disc.named_parameters()}
    buffers = {k: b.detach().clone() for k, b in disc.named_buffers()}
    moments = None if adam is None else {k: (m.clone(), v.clone(), t) for k, (m, v, t) in adam[2].items()}
    for _ in range(steps):
        state = {**params, **buffers}

        def critic(x: Tensor, labels: Tensor | None = None, state: dict[str, Tensor] = state) -> Tensor:
            return functional_call(disc, state, (x, labels))

        loss = d_loss(critic)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
        updated = {}
        for (name, p), g in zip(params.items(), grads):
            if g is None:
                new = p
            elif moments is None:
                new = p - lr * g
            else:
                (beta1, beta2), eps = adam[0], adam[1]
                m, v, t = moments[name]
                t += 1
                m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
                # clamp_min: no infinite derivative of sqrt at v = 0 (where g = 0 anyway)
                new = p - lr * (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).clamp_min(1e-30).sqrt() + eps)
                moments[name] = (m, v, t) if create_graph else (m.detach(), v.detach(), t)
            if clip_value is not None:
                new = new.clamp(-clip_value, clip_value)
            updated[name] = new if create_graph else new.detach().requires_grad_(True)
        params = updated
    return {**params, **buffers}


__all__ = ["adam_eps", "adam_moments", "unroll_discriminator"]
