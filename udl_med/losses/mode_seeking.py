"""The mode-seeking term of MSGAN: G pays when two latents it maps far apart give like images.

Mao et al. 2019, "Mode Seeking Generative Adversarial Networks for Diverse Image
Synthesis" (https://arxiv.org/abs/1903.05628), eq. 3: maximise
d_I(G(c, z1), G(c, z2)) / d_z(z1, z2) for two latents under the same condition c, as the
minimisation of its reciprocal. A conditional G that maps many z to one image per class
(the partial collapse that leaves its samples alike) sees the ratio fall and the term
rise. Distances are mean absolute differences, as in the authors' code (HelenMao/MSGAN).
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-5  # the authors' epsilon of 1 / (ratio + eps)


def mode_seeking_loss(first: Tensor, second: Tensor, first_latent: Tensor, second_latent: Tensor) -> Tensor:
    """``1 / (mean|G(z2) - G(z1)| / mean|z2 - z1| + eps)`` of two batches of images ``(B, ...)`` from latents ``(B, D)`` under the same conditions."""
    if first.shape != second.shape or first_latent.shape != second_latent.shape or first.shape[0] != first_latent.shape[0]:
        raise ValueError(f"two batches of the same shape and their latents are needed, got {tuple(first.shape)}, {tuple(second.shape)}, {tuple(first_latent.shape)}, {tuple(second_latent.shape)}")
    ratio = (second.float() - first.float()).abs().mean() / (second_latent.float() - first_latent.float()).abs().mean()
    return 1.0 / (ratio + EPS)
