"""The LeCam regulariser of D for GANs trained on little data (Tseng et al. 2021, https://arxiv.org/abs/2104.03310).

R_LC = E[relu(D(x) - a_F)^2] + E[relu(a_R - D(G(z)))^2], where a_R and a_F are moving
averages of D's mean score on real and on generated items. It keeps D's scores of the
two sets from drifting apart, which is how a D that memorises a small training set
stops guiding G; the paper adds it on top of DiffAugment and ADA (weight 0.3 with
BigGAN's hinge loss, anchors' decay 0.99).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LeCamAnchors(nn.Module):
    """The two moving averages and the regulariser on them.

    The averages are buffers (saved in checkpoints, so a resumed run goes on from them)
    kept biased, with the count of updates to remove the bias as Adam does: at the first
    update the anchors are that step's means, not a tenth of them.
    """

    def __init__(self, decay: float = 0.99) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.register_buffer("real_average", torch.zeros((), dtype=torch.float64))
        self.register_buffer("fake_average", torch.zeros((), dtype=torch.float64))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def update(self, real_scores: Tensor, fake_scores: Tensor) -> None:
        """Move the averages towards this D update's mean scores (detached; averaged over the processes of a distributed run, so every rank keeps the same anchors)."""
        means = torch.stack([real_scores.detach().double().mean(), fake_scores.detach().double().mean()])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(means)
            means = means / torch.distributed.get_world_size()
        means = means.to(self.real_average.device)
        self.real_average.mul_(self.decay).add_((1 - self.decay) * means[0])
        self.fake_average.mul_(self.decay).add_((1 - self.decay) * means[1])
        self.updates.add_(1)

    def anchors(self) -> tuple[float, float]:
        """``(a_R, a_F)``, the bias-corrected averages (0, 0 before the first update)."""
        n = int(self.updates)
        if n == 0:
            return 0.0, 0.0
        debias = 1 - self.decay**n
        return float(self.real_average) / debias, float(self.fake_average) / debias

    def forward(self, real_scores: Tensor, fake_scores: Tensor) -> Tensor:
        """R_LC on this update's scores ``(B, ...)`` against the current anchors (a patch D's scores count one each)."""
        anchor_real, anchor_fake = self.anchors()
        real, fake = real_scores.float(), fake_scores.float()
        return torch.relu(real - anchor_fake).square().mean() + torch.relu(anchor_real - fake).square().mean()
