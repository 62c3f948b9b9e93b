"""The K+1 semi-supervised GAN objective (Salimans et al. 2016).

Salimans, Goodfellow, Zaremba, Cheung, Radford & Chen, "Improved Techniques for
Training GANs", NeurIPS 2016 (https://arxiv.org/abs/1606.03498), section 5.

The discriminator outputs K class logits ``l_1..l_K``; the (K+1)-th class, "generated",
has its logit fixed at 0 (a softmax over K+1 logits is unchanged when all of them move
together, so fixing one loses nothing). With ``Z(x) = sum_k exp(l_k(x))``:

- ``p(y = k | x, real) = softmax(l)_k``: the K-class classifier;
- ``D(x) = p(real | x) = Z / (Z + 1) = sigmoid(lse(x))``, ``lse = log Z``;
- supervised loss: cross-entropy of ``softmax(l)`` on labeled data;
- unsupervised loss on an unlabeled batch and a generated batch:
  ``-log D(x_unl) - log(1 - D(G(z)))`` = ``-lse(x_unl) + softplus(lse(x_unl)) +
  softplus(lse(G(z)))``, batch means, halved as in the reference code
  (openai/improved-gan);
- optional conditional entropy of ``softmax(l)`` on the unlabeled batch (Dai, Yang, Yang,
  Cohen & Salakhutdinov, "Good Semi-supervised Learning that Requires a Bad GAN",
  NeurIPS 2017, https://arxiv.org/abs/1705.09783): it asks D to be confident on real
  unlabeled items, so class boundaries move into the low-density regions that the
  generated samples fill;
- optional class balance on the unlabeled batch (Springenberg, "Unsupervised and
  Semi-supervised Learning with Categorical Generative Adversarial Networks", ICLR 2016,
  https://arxiv.org/abs/1511.06390): the KL divergence from the batch's mean class
  prediction to a prior (uniform by default), so that every class keeps its share.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udl_med.losses.reduction import check_reduction as _check_reduction, reduce as _reduce


__all__ = ["KPlusOneLoss", "real_probability", "class_probabilities"]


def real_probability(logits: Tensor) -> Tensor:
    """``D(x) = Z / (Z + 1)`` from the K logits ``(B, K)``: ``(B,)``, computed as ``sigmoid(logsumexp)``."""
    return torch.sigmoid(torch.logsumexp(logits.float(), dim=1))


def class_probabilities(logits: Tensor) -> Tensor:
    """``p(y | x, real)``: the softmax over the K real-class logits ``(B, K)``."""
    return torch.softmax(logits.float(), dim=1)


class KPlusOneLoss(nn.Module):
    """Supervised and unsupervised terms of the K+1 objective (see the module docstring).

    Args:
        reduction: ``mean`` (the paper's batch means), ``sum`` or ``none`` (per item;
            the unsupervised loss then returns the per-item terms of the real and
            the generated batch concatenated, each halved).

    Raises:
        ValueError: an unknown reduction.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def supervised(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of the K logits ``(B, K)`` against class indices ``(B,)``."""
        return F.cross_entropy(logits.float(), labels.long(), reduction=self.reduction)

    def discriminator_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """Unsupervised loss: ``0.5 * (-log D(x_unl) - log(1 - D(G(z))))``, logits ``(B, K)`` each."""
        lse_real = torch.logsumexp(real_logits.float(), dim=1)
        lse_fake = torch.logsumexp(fake_logits.float(), dim=1)
        real_term = -lse_real + F.softplus(lse_real)  # -log D(x)
        fake_term = F.softplus(lse_fake)  # -log(1 - D(G(z)))
        if self.reduction == "none":
            return 0.5 * torch.cat([real_term, fake_term])
        return 0.5 * (_reduce(real_term, self.reduction) + _reduce(fake_term, self.reduction))

    def conditional_entropy(self, logits: Tensor) -> Tensor:
        """Entropy of ``p(y | x, real) = softmax(l)`` per item, logits ``(B, K)``: ``-sum_k p_k log p_k``."""
        log_p = torch.log_softmax(logits.float(), dim=1)
        return _reduce(-(log_p.exp() * log_p).sum(dim=1), self.reduction)

    @staticmethod
    def class_balance(logits: Tensor, prior: Tensor | None = None) -> Tensor:
        """``KL(mean_x softmax(l) || prior)`` over the batch (uniform prior by default): 0 when D's
        predictions over the batch are spread over the classes as the prior says.

        CatGAN's marginal-entropy term (Springenberg 2016; with a uniform prior it is
        ``log K - H(mean p)``): it keeps a few labels per class from letting one class swallow
        another's unlabeled cluster. A batch quantity, so it takes no reduction.
        """
        mean_p = torch.softmax(logits.float(), dim=1).mean(dim=0)
        if prior is None:
            prior = torch.full_like(mean_p, 1.0 / mean_p.numel())
        if prior.shape != mean_p.shape:
            raise ValueError(f"prior must have one entry per class ({mean_p.numel()}), got shape {tuple(prior.shape)}")
        return (mean_p * (mean_p.clamp_min(1e-12).log() - prior.to(mean_p).log())).sum()

    def generator_loss(self, fake_logits: Tensor) -> Tensor:
        """Non-saturating generator loss ``-log D(G(z)) = softplus(-lse(G(z)))`` (used with minibatch discrimination)."""
        return _reduce(F.softplus(-torch.logsumexp(fake_logits.float(), dim=1)), self.reduction)
