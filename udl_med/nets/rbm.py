"""Restricted Boltzmann machines: Bernoulli-Bernoulli and Gaussian-Bernoulli.

An RBM is an undirected bipartite model over visible units ``v`` (a flattened image)
and binary hidden units ``h`` with energy ``E(v, h)`` and ``p(v, h) = exp(-E) / Z``.
Code names against the usual symbols (Hinton, "A practical guide to training
restricted Boltzmann machines", UTML TR 2010-003):

=================  ==============================================
code               paper
=================  ==============================================
``weight``         ``W`` with shape ``(n_hidden, n_visible)``
``visible_bias``   ``b`` (``a`` in the guide)
``hidden_bias``    ``c`` (``b`` in the guide)
``log_sigma``      ``log sigma_i`` of Gaussian visibles
``free_energy``    ``F(v) = -log sum_h exp(-E(v, h))``
=================  ==============================================

Training lives in the methods (``udl_med.methods.rbm``): the contrastive-divergence
gradient (Hinton 2002) is the gradient of :func:`contrastive_divergence_loss`, the
difference of mean free energies of data and of (detached) model samples, so any
PyTorch optimizer applies it. Persistent CD (Tieleman 2008) keeps the model samples in
a :class:`PersistentChains` buffer between steps.

Monitoring: reconstruction error, pseudo-likelihood (Besag 1975), the exact
log-likelihood of tiny models by enumeration, and annealed importance sampling of the
log-partition function (Salakhutdinov & Murray 2008, "On the quantitative analysis of
deep belief networks").

These modules work on flat vectors ``(B, n_visible)``; reshaping images is the
method's job, so one class serves 2D slices and 3D patches alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AISEstimate",
    "BernoulliRBM",
    "GaussianBernoulliRBM",
    "PersistentChains",
    "RBM",
    "bernoulli",
    "contrastive_divergence_loss",
    "make_rbm",
]

_ENUM_CHUNK = 1 << 12  # states per chunk when enumerating 2**n configurations


@dataclass(frozen=True)
class AISEstimate:
    """An annealed-importance-sampling estimate of ``log Z``.

    ``log_z_std`` is the delta-method standard error of the estimate (the standard
    error of the mean importance weight divided by that mean).
    """

    log_z: float
    log_z_std: float
    n_chains: int
    n_betas: int


def bernoulli(p: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Binary sample with ``P(1) = p``: ``u < p`` for uniform ``u`` (a few times faster than ``torch.bernoulli`` on CPU)."""
    return torch.rand_like(p, generator=generator).lt_(p)


def _binary_states(n: int, start: int, stop: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Rows ``start..stop-1`` of the ``2**n`` binary vectors of length ``n``: ``(stop-start, n)``."""
    idx = torch.arange(start, stop, device=device).unsqueeze(1)  # (S, 1)
    bits = 1 << torch.arange(n, device=device)  # (n,)
    return ((idx & bits) != 0).to(dtype)


class RBM(nn.Module):
    """Base of both RBM kinds: binary hidden units, a visible type set by the subclass.

    Args:
        n_visible: number of visible units (pixels times channels).
        n_hidden: number of binary hidden units.
        init_std: standard deviation of the initial weights (the guide suggests 0.01).

    Raises:
        ValueError: a non-positive size or standard deviation.
    """

    def __init__(self, n_visible: int, n_hidden: int, init_std: float = 0.01) -> None:
        super().__init__()
        if n_visible < 1:
            raise ValueError(f"n_visible must be >= 1, got {n_visible}")
        if n_hidden < 1:
            raise ValueError(f"n_hidden must be >= 1, got {n_hidden}")
        if init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        self.n_visible = n_visible
        self.n_hidden = n_hidden
        self.weight = nn.Parameter(torch.randn(n_hidden, n_visible) * init_std)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))

    # --- the parts each visible type defines --------------------------------------

    def scaled_visible(self, v: Tensor) -> Tensor:
        """What the hidden units see of ``v`` (``v / sigma`` for Gaussian visibles)."""
        return v

    def visible_mean(self, h: Tensor) -> Tensor:
        """``E[v | h]``: ``(B, n_hidden) -> (B, n_visible)``."""
        raise NotImplementedError

    def sample_v(self, h: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Return ``(E[v | h], a sample of v | h)``, each ``(B, n_visible)``."""
        raise NotImplementedError

    def visible_energy(self, v: Tensor) -> Tensor:
        """The visible-only term of the energy, ``(B,)``."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------

    def effective_weight(self) -> Tensor:
        """Weights as a linear map of raw ``v`` to hidden logits, ``(n_hidden, n_visible)``."""
        return self.weight

    def hidden_logits(self, v: Tensor) -> Tensor:
        """Hidden pre-activations ``c + W s(v)``: ``(B, n_visible) -> (B, n_hidden)``."""
        return F.linear(self.scaled_visible(v), self.weight, self.hidden_bias)

    def hidden_probs(self, v: Tensor) -> Tensor:
        """``p(h = 1 | v)``, ``(B, n_hidden)``: the features ``udl-med encode`` returns."""
        return self.hidden_logits(v).sigmoid_()

    def sample_h(self, v: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Return ``(p(h = 1 | v), a binary sample of h | v)``, each ``(B, n_hidden)``."""
        p = self.hidden_probs(v)
        return p, bernoulli(p, generator=generator)

    def forward(self, v: Tensor) -> Tensor:
        return self.hidden_probs(v)

    def energy(self, v: Tensor, h: Tensor) -> Tensor:
        """``E(v, h) = E_v(v) - c.h - h.W s(v)``, ``(B,)``."""
        return self.visible_energy(v) - h @ self.hidden_bias - (F.linear(self.scaled_visible(v), self.weight) * h).sum(1)

    def free_energy(self, v: Tensor) -> Tensor:
        """``F(v) = E_v(v) - sum_j softplus(c_j + W_j s(v))``, so ``p(v) = exp(-F(v)) / Z``; ``(B,)``."""
        return self.visible_energy(v) - F.softplus(self.hidden_logits(v)).sum(1)

    def reconstruct(self, v: Tensor) -> Tensor:
        """Mean-field reconstruction ``E[v | h = p(h | v)]``, ``(B, n_visible)``."""
        return self.visible_mean(self.hidden_probs(v))

    def reconstruction_error(self, v: Tensor) -> Tensor:
        """Mean squared error of the mean-field reconstruction per sample, ``(B,)``."""
        return (v - self.reconstruct(v)).pow(2).mean(1)

    def visible_bias_grad(self, v: Tensor) -> Tensor:
        """``-dF/db`` per sample, ``(B, n_visible)``."""
        raise NotImplementedError

    @torch.no_grad()
    def gibbs(self, v: Tensor, k: int = 1, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Run ``k >= 1`` steps of block Gibbs sampling ``v -> h -> v`` from ``v``.

        Returns:
            ``(v_mean, v_sample)`` of the last step, each ``(B, n_visible)``. Use the
            sample to continue a chain and the mean to look at it.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        v_mean = v
        for _ in range(k):
            _, h = self.sample_h(v, generator)
            v_mean, v = self.sample_v(h, generator)
        return v_mean, v

    @torch.no_grad()
    def gibbs_from_hidden(self, h: Tensor, k: int = 1, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Run ``k >= 1`` steps ``h -> v -> h`` from binary hidden states ``h`` ``(B, n_hidden)``.

        The negative phase of persistent CD: returns the last step's visible sample and
        hidden sample ``(v, h')``; the chain goes on from ``h'``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        for _ in range(k):
            _, v = self.sample_v(h, generator)
            _, h = self.sample_h(v, generator)
        return v, h

    # --- likelihoods --------------------------------------------------------------

    @torch.no_grad()
    def log_partition_exact(self, max_units: int = 20) -> Tensor:
        """``log Z`` by enumerating the ``2**n_hidden`` hidden states (float64 scalar).

        Raises:
            ValueError: more than ``max_units`` hidden units (the sum has ``2**n`` terms).
        """
        if self.n_hidden > max_units:
            raise ValueError(f"exact log Z needs n_hidden <= {max_units}, got {self.n_hidden}")
        return self._log_partition_over_hidden()

    def _log_partition_over_hidden(self) -> Tensor:
        total = self.n_hidden
        parts = []
        for start in range(0, 1 << total, _ENUM_CHUNK):
            h = _binary_states(total, start, min(start + _ENUM_CHUNK, 1 << total), self.weight.device, torch.float64)
            parts.append(torch.logsumexp(self._log_marginal_hidden(h), 0))
        return torch.logsumexp(torch.stack(parts), 0)

    def _log_marginal_hidden(self, h: Tensor) -> Tensor:
        """``log sum_v exp(-E(v, h))`` for hidden states ``h`` (float64), ``(S,)``."""
        raise NotImplementedError

    @torch.no_grad()
    def log_likelihood_exact(self, v: Tensor, max_units: int = 20) -> Tensor:
        """``log p(v) = -F(v) - log Z`` per sample, by enumeration; ``(B,)`` float64."""
        return -self.double_free_energy(v) - self.log_partition_exact(max_units)

    def double_free_energy(self, v: Tensor) -> Tensor:
        """:meth:`free_energy` computed in float64 (for comparisons with ``log Z``), ``(B,)``."""
        raise NotImplementedError

    # --- annealed importance sampling ---------------------------------------------

    def _ais_base_sample(self, n: int, base_bias: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def _ais_base_log_z(self, base_bias: Tensor) -> Tensor:
        raise NotImplementedError

    def _ais_log_p(self, v: Tensor, beta: float, base_bias: Tensor) -> Tensor:
        raise NotImplementedError

    def _ais_transition(self, v: Tensor, beta: float, base_bias: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def _default_base_bias(self) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def ais_log_partition(
        self,
        n_chains: int = 100,
        n_betas: int = 1000,
        base_visible_bias: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> AISEstimate:
        """Estimate ``log Z`` by annealed importance sampling (Salakhutdinov & Murray 2008).

        Anneals from a base model with no couplings (``W = 0``) to this RBM through
        ``p_beta(v) ~ exp(-(1 - beta) E_A(v) - beta F(v))`` with ``n_betas`` equally
        spaced inverse temperatures, one Gibbs transition per temperature.

        Args:
            n_chains: independent AIS runs; more give a smaller variance.
            n_betas: number of intermediate distributions.
            base_visible_bias: visible biases ``b_A`` of the base model (Bernoulli: the
                log-odds of the data's mean is a good choice); default ``b`` itself for
                Gaussian visibles, zeros (uniform) for Bernoulli visibles.
            generator: random numbers, for reproducible estimates.
        """
        if n_chains < 1 or n_betas < 2:
            raise ValueError(f"need n_chains >= 1 and n_betas >= 2, got {n_chains} and {n_betas}")
        base = (self._default_base_bias() if base_visible_bias is None else base_visible_bias).to(self.weight)
        betas = torch.linspace(0.0, 1.0, n_betas).tolist()
        v = self._ais_base_sample(n_chains, base, generator)
        log_w = torch.zeros(n_chains, dtype=torch.float64, device=v.device)
        for prev, beta in zip(betas[:-1], betas[1:], strict=True):
            log_w += (self._ais_log_p(v, beta, base) - self._ais_log_p(v, prev, base)).double()
            if beta < 1.0:
                v = self._ais_transition(v, beta, base, generator)
        log_mean_w = torch.logsumexp(log_w, 0) - math.log(n_chains)
        w = torch.exp(log_w - log_w.max())
        rel_se = (w.std(unbiased=True) / w.mean() / math.sqrt(n_chains)).item() if n_chains > 1 else float("nan")
        log_z = self._ais_base_log_z(base).double() + log_mean_w
        return AISEstimate(log_z=float(log_z), log_z_std=rel_se, n_chains=n_chains, n_betas=n_betas)


class BernoulliRBM(RBM):
    """RBM with binary visible units; ``E(v, h) = -b.v - c.h - h.W v``.

    Visible values in [0, 1] are read as probabilities (the guide's advice for grey
    levels): training on them is the usual mean-field shortcut.
    """

    def visible_energy(self, v: Tensor) -> Tensor:
        return -(v @ self.visible_bias)

    def visible_bias_grad(self, v: Tensor) -> Tensor:
        return v

    def visible_mean(self, h: Tensor) -> Tensor:
        return torch.addmm(self.visible_bias, h, self.weight).sigmoid_()

    def sample_v(self, h: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        p = self.visible_mean(h)
        return p, bernoulli(p, generator=generator)

    def double_free_energy(self, v: Tensor) -> Tensor:
        v = v.double()
        a = F.linear(v, self.weight.double(), self.hidden_bias.double())
        return -(v @ self.visible_bias.double()) - F.softplus(a).sum(1)

    def _log_marginal_hidden(self, h: Tensor) -> Tensor:
        # sum over binary v of exp(b.v + c.h + h.W v) = exp(c.h) prod_i (1 + exp(b_i + (W^T h)_i))
        a = F.linear(h, self.weight.double().t(), self.visible_bias.double())  # (S, n_visible)
        return h @ self.hidden_bias.double() + F.softplus(a).sum(1)

    @torch.no_grad()
    def log_partition_exact(self, max_units: int = 20) -> Tensor:
        """``log Z`` by enumerating the smaller of the visible or hidden layer (float64)."""
        if min(self.n_visible, self.n_hidden) > max_units:
            raise ValueError(
                f"exact log Z needs min(n_visible, n_hidden) <= {max_units}, got {self.n_visible} and {self.n_hidden}"
            )
        if self.n_hidden <= self.n_visible:
            return self._log_partition_over_hidden()
        parts = []
        n = self.n_visible
        for start in range(0, 1 << n, _ENUM_CHUNK):
            v = _binary_states(n, start, min(start + _ENUM_CHUNK, 1 << n), self.weight.device, torch.float64)
            parts.append(torch.logsumexp(-self.double_free_energy(v), 0))
        return torch.logsumexp(torch.stack(parts), 0)

    def pseudo_log_likelihood(self, v: Tensor, chunk_elements: int = 1 << 22) -> Tensor:
        """Exact pseudo-log-likelihood ``sum_i log p(v_i | v_-i)`` per sample (Besag 1975).

        ``p(v_i | v_-i) = sigmoid(F(v with v_i flipped) - F(v))``, flipping ``v_i -> 1 - v_i``;
        all ``n_visible`` flips are evaluated (scikit-learn's ``score_samples`` samples
        one and multiplies by ``n_visible``). Exact for binary ``v``.

        Args:
            v: ``(B, n_visible)`` in [0, 1].
            chunk_elements: bound on the ``B x chunk x n_hidden`` intermediate.

        Returns:
            ``(B,)`` float32.
        """
        a = self.hidden_logits(v)  # (B, H)
        base = F.softplus(a).sum(1, keepdim=True)  # (B, 1)
        delta = 1.0 - 2.0 * v  # (B, V): change of v_i when flipped
        chunk = max(1, chunk_elements // max(1, v.shape[0] * self.n_hidden))
        out = []
        for s in range(0, self.n_visible, chunk):
            d = delta[:, s : s + chunk]  # (B, c)
            a_flip = a.unsqueeze(1) + d.unsqueeze(2) * self.weight.t()[s : s + chunk].unsqueeze(0)  # (B, c, H)
            # F(v') - F(v) = -b_i d_i - (sum softplus(a') - sum softplus(a))
            df = -d * self.visible_bias[s : s + chunk] - (F.softplus(a_flip).sum(2) - base)
            out.append(F.logsigmoid(df).sum(1))
        return torch.stack(out, 1).sum(1)

    def _default_base_bias(self) -> Tensor:
        return torch.zeros_like(self.visible_bias)

    def _ais_base_sample(self, n: int, base_bias: Tensor, generator: torch.Generator | None) -> Tensor:
        p = torch.sigmoid(base_bias).expand(n, -1)
        return bernoulli(p, generator=generator)

    def _ais_base_log_z(self, base_bias: Tensor) -> Tensor:
        # p_0(v, h) ~ exp(b_A . v) over binary v and n_hidden free binary h.
        return F.softplus(base_bias.double()).sum() + self.n_hidden * math.log(2.0)

    def _ais_log_p(self, v: Tensor, beta: float, base_bias: Tensor) -> Tensor:
        a = F.linear(v, self.weight, self.hidden_bias)
        return (1.0 - beta) * (v @ base_bias) + beta * (v @ self.visible_bias) + F.softplus(beta * a).sum(1)

    def _ais_transition(self, v: Tensor, beta: float, base_bias: Tensor, generator: torch.Generator | None) -> Tensor:
        h = bernoulli(torch.sigmoid(beta * F.linear(v, self.weight, self.hidden_bias)), generator=generator)
        logits = (1.0 - beta) * base_bias + beta * F.linear(h, self.weight.t(), self.visible_bias)
        return bernoulli(torch.sigmoid(logits), generator=generator)


class GaussianBernoulliRBM(RBM):
    """RBM with Gaussian visible units for continuous intensities.

    ``E(v, h) = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - c.h - h.W (v / sigma)``, so
    ``v | h ~ N(b + sigma W^T h, sigma^2)`` (Hinton's guide, section 13.2; Cho et al.
    2011 for the learned variance). The guide's advice is to standardise each visible
    unit and keep ``sigma = 1``; ``learn_sigma`` makes ``log sigma`` a parameter.

    Args:
        learn_sigma: learn a per-unit ``log sigma`` (else fixed at ``sigma = 1``).
    """

    def __init__(self, n_visible: int, n_hidden: int, init_std: float = 0.01, learn_sigma: bool = False) -> None:
        super().__init__(n_visible, n_hidden, init_std)
        self.learn_sigma = learn_sigma
        if learn_sigma:
            self.log_sigma = nn.Parameter(torch.zeros(n_visible))
        else:
            self.register_buffer("log_sigma", torch.zeros(n_visible))

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    def scaled_visible(self, v: Tensor) -> Tensor:
        return v / self.sigma

    def effective_weight(self) -> Tensor:
        return self.weight / self.sigma

    def visible_energy(self, v: Tensor) -> Tensor:
        return ((v - self.visible_bias).pow(2) / (2.0 * self.sigma.pow(2))).sum(1)

    def visible_bias_grad(self, v: Tensor) -> Tensor:
        return (v - self.visible_bias) / self.sigma.pow(2)

    def visible_mean(self, h: Tensor) -> Tensor:
        return self.visible_bias + self.sigma * F.linear(h, self.weight.t())

    def sample_v(self, h: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        mean = self.visible_mean(h)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean, mean + self.sigma * noise

    def double_free_energy(self, v: Tensor) -> Tensor:
        v = v.double()
        sigma = self.sigma.double()
        a = F.linear(v / sigma, self.weight.double(), self.hidden_bias.double())
        return ((v - self.visible_bias.double()).pow(2) / (2.0 * sigma.pow(2))).sum(1) - F.softplus(a).sum(1)

    def _log_marginal_hidden(self, h: Tensor) -> Tensor:
        # integral over v of exp(-E): per unit sqrt(2 pi) sigma exp(b a / sigma + a^2 / 2), a = (W^T h)_i
        sigma = self.sigma.double()
        a = F.linear(h, self.weight.double().t())  # (S, n_visible)
        b = self.visible_bias.double()
        gauss = (b * a / sigma + 0.5 * a.pow(2)).sum(1)
        return h @ self.hidden_bias.double() + gauss + (0.5 * math.log(2 * math.pi) + sigma.log()).sum()

    def _default_base_bias(self) -> Tensor:
        return self.visible_bias.detach()

    def _ais_base_sample(self, n: int, base_bias: Tensor, generator: torch.Generator | None) -> Tensor:
        noise = torch.randn((n, self.n_visible), generator=generator, device=base_bias.device, dtype=base_bias.dtype)
        return base_bias + self.sigma * noise

    def _ais_base_log_z(self, base_bias: Tensor) -> Tensor:
        sigma = self.sigma.double()
        return (0.5 * math.log(2 * math.pi) + sigma.log()).sum() + self.n_hidden * math.log(2.0)

    def _ais_log_p(self, v: Tensor, beta: float, base_bias: Tensor) -> Tensor:
        # The base model keeps this model's sigma and uses base_bias as its mean; the
        # quadratic term is interpolated, the coupling term scaled by beta.
        var2 = 2.0 * self.sigma.pow(2)
        quad = (1.0 - beta) * ((v - base_bias).pow(2) / var2).sum(1) + beta * ((v - self.visible_bias).pow(2) / var2).sum(1)
        return -quad + F.softplus(beta * self.hidden_logits(v)).sum(1)

    def _ais_transition(self, v: Tensor, beta: float, base_bias: Tensor, generator: torch.Generator | None) -> Tensor:
        h = bernoulli(torch.sigmoid(beta * self.hidden_logits(v)), generator=generator)
        mean = (1.0 - beta) * base_bias + beta * self.visible_bias + beta * self.sigma * F.linear(h, self.weight.t())
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + self.sigma * noise


class PersistentChains(nn.Module):
    """The fantasy particles of persistent CD (Tieleman 2008), kept as buffers for checkpoints.

    The state is the chains' binary hidden units, as in scikit-learn's ``BernoulliRBM``:
    the hidden sample drawn at the end of one update is where the next update's chains
    go on (``h -> v -> h``, :meth:`RBM.gibbs_from_hidden`), so no half step is computed
    twice. The chains start from the first data batch they see (rows repeated to
    ``n_chains``, hidden units sampled from it) and never restart.

    Args:
        n_chains: number of chains.
        n_hidden: hidden units of the RBM they sample from.
    """

    def __init__(self, n_chains: int, n_hidden: int) -> None:
        super().__init__()
        if n_chains < 1:
            raise ValueError(f"n_chains must be >= 1, got {n_chains}")
        self.register_buffer("state", torch.zeros(n_chains, n_hidden))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def advance(self, rbm: RBM, v_data: Tensor, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """Advance the chains ``k`` steps; return their visible samples ``(n_chains, n_visible)``."""
        if not bool(self.started):
            reps = -(-self.state.shape[0] // v_data.shape[0])
            self.state.copy_(rbm.sample_h(v_data.repeat(reps, 1)[: self.state.shape[0]], generator)[1])
            self.started.fill_(True)
        v, h = rbm.gibbs_from_hidden(self.state, k, generator)
        self.state.copy_(h)
        return v


def make_rbm(visible: str, n_visible: int, n_hidden: int, init_std: float = 0.01, learn_sigma: bool = False) -> RBM:
    """Build an RBM by visible type: ``"bernoulli"`` or ``"gaussian"``.

    Raises:
        ValueError: an unknown visible type (the message lists the valid ones).
    """
    if visible == "bernoulli":
        return BernoulliRBM(n_visible, n_hidden, init_std)
    if visible == "gaussian":
        return GaussianBernoulliRBM(n_visible, n_hidden, init_std, learn_sigma=learn_sigma)
    raise ValueError(f"unknown visible type {visible!r}; valid: bernoulli, gaussian")


def contrastive_divergence_loss(rbm: RBM, v_data: Tensor, v_model: Tensor) -> Tensor:
    """``mean F(v_data) - mean F(v_model)``: its gradient is the CD / PCD update, negated.

    ``dF/dW = -p(h | v) s(v)^T``, so descending this loss raises ``<v h>_data`` and
    lowers ``<v h>_model`` exactly as the CD rule (Hinton 2002) with mean-field hidden
    statistics. ``v_model`` is detached here: the samples are constants of the update.
    """
    return rbm.free_energy(v_data).mean() - rbm.free_energy(v_model.detach()).mean()
