"""InfoGAN's latent codes and the variational lower bound of their mutual information with G's output.

Chen et al. 2016, "InfoGAN: Interpretable Representation Learning by Information
Maximizing Generative Adversarial Nets" (https://arxiv.org/abs/1606.03657). Next to the
noise ``z`` the generator gets codes ``c``: one categorical code of ``K`` values (uniform,
given as a one-hot vector) and ``N`` continuous codes (uniform on [-1, 1]). A head ``Q``
on D's body predicts ``c`` from ``G(z, c)``; G and Q both minimise

    L_I = E[-log Q(c_cat | x)] + E[-log Q(c_cont | x)],   x = G(z, c),

the negative of the bound ``I(c; G(z, c)) >= H(c) - L_I`` (Chen et al., eq. 4-5, lemma
5.1), weighted by ``lambda`` in the GAN's objective ``V(D, G) - lambda L_I(G, Q)``. The
categorical term is a cross-entropy; the continuous one the negative log-likelihood of a
factored Gaussian whose mean and log-variance Q predicts (the paper's choice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class InfoCodes:
    """Codes of a batch: ``categorical`` ``(B,)`` long (all 0 when K = 0), ``continuous`` ``(B, N)``."""

    categorical: Tensor
    continuous: Tensor

    def as_input(self, k: int) -> Tensor:
        """``(B, K + N)``: the one-hot categorical code, then the continuous ones (what G reads after z)."""
        parts = []
        if k:
            parts.append(F.one_hot(self.categorical, k).to(self.continuous.dtype))
        parts.append(self.continuous)
        return torch.cat(parts, 1)


def draw_codes(n: int, k: int, n_continuous: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> InfoCodes:
    """``n`` codes: categorical uniform over ``k`` values, continuous uniform on [-1, 1]."""
    cat = torch.randint(k, (n,), generator=generator) if k else torch.zeros(n, dtype=torch.long)
    cont = torch.rand(n, n_continuous, generator=generator) * 2 - 1
    return InfoCodes(cat.to(device), cont.to(device))


@dataclass(frozen=True)
class InfoTerms:
    """``loss`` = categorical + continuous (unweighted, batch means), and the lower bound ``H(c) - loss`` on I."""

    loss: Tensor
    categorical: Tensor
    continuous: Tensor
    lower_bound: Tensor


def info_loss(q_out: Tensor, codes: InfoCodes, k: int) -> InfoTerms:
    """``L_I`` of Q's output for the codes that made the images.

    Args:
        q_out: ``(B, K + 2N)``: K logits of the categorical code, then N means and N
            log-variances of the continuous ones.
        codes: the codes G was given.
        k: K (0: no categorical code).

    Raises:
        ValueError: ``q_out`` of the wrong width.
    """
    n = codes.continuous.shape[1]
    if q_out.ndim != 2 or q_out.shape[1] != k + 2 * n:
        raise ValueError(f"Q's output must be (B, {k + 2 * n}) for K={k}, N={n}, got {tuple(q_out.shape)}")
    q_out = q_out.float()
    zero = q_out.new_zeros(())
    cat = F.cross_entropy(q_out[:, :k], codes.categorical) if k else zero
    if n:
        mean, logvar = q_out[:, k : k + n], q_out[:, k + n :].clamp(-10.0, 10.0)
        nll = 0.5 * (math.log(2 * math.pi) + logvar + (codes.continuous.float() - mean) ** 2 / logvar.exp())
        cont = nll.sum(1).mean()
    else:
        cont = zero
    loss = cat + cont
    # H(c): log K for the categorical code, N log 2 for N uniform codes on [-1, 1]
    entropy = (math.log(k) if k else 0.0) + n * math.log(2.0)
    return InfoTerms(loss=loss, categorical=cat, continuous=cont, lower_bound=entropy - loss.detach())


__all__ = ["InfoCodes", "InfoTerms", "draw_codes", "info_loss"]
