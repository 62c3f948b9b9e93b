"""StackGAN pieces: conditioning augmentation and the stage-II residual generator, 2D and 3D.

Zhang, Xu, Li, Zhang, Wang, Huang, Metaxas 2017, "StackGAN: Text to Photo-realistic
Image Synthesis with Stacked Generative Adversarial Networks"
(https://arxiv.org/abs/1612.03242). Here the condition is a class index (the manifest
label, optionally combined with the modality) rather than a text embedding:

- :class:`ConditioningAugmentation` (section 3.1): an embedding ``phi(c)`` of the
  condition gives ``mu(c)`` and ``log sigma^2(c)``; the generator gets
  ``c_hat = mu + sigma * eps``, and ``KL(N(mu, sigma^2) || N(0, I))`` is added to its loss.
- :class:`StageIIGenerator` (section 3.3): the stage-I image, encoded and joined with the
  condition, passes residual blocks and two 2x upsamplings to a 4x larger image. The
  output is ``tanh(atanh(u(s1)) + r)``: the residual ``r`` corrects the upsampled stage-I
  image ``u(s1)``, so stage II starts from what stage I drew.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from torch import Tensor, nn

__all__ = ["ConditioningAugmentation", "StageIIGenerator", "kl_to_standard_normal"]

ATANH_LIMIT = 0.99  # u(s1) is clipped to +-0.99 before atanh


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, diag exp(logvar)) || N(0, I))`` summed over features, mean over the batch ``(B, E)``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()


class ConditioningAugmentation(nn.Module):
    """``c -> c_hat ~ N(mu(c), sigma(c)^2)`` with its KL penalty (StackGAN section 3.1).

    Args:
        num_conditions: number of condition values (classes).
        embed_dim: size ``E`` of ``c_hat``.

    Forward: ``conditions (B,)`` long, optional ``generator`` -> ``(c_hat (B, E), mu, logvar)``;
    in eval mode ``c_hat`` is still drawn (sampling diversity), from ``generator`` when given.
    """

    def __init__(self, num_conditions: int, embed_dim: int = 16) -> None:
        super().__init__()
        if num_conditions < 1:
            raise ValueError(f"num_conditions must be >= 1, got {num_conditions}")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.num_conditions, self.embed_dim = num_conditions, embed_dim
        self.embedding = nn.Embedding(num_conditions, 2 * embed_dim)
        self.fc = nn.Linear(2 * embed_dim, 2 * embed_dim)

    def forward(self, conditions: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        h = F.leaky_relu(self.embedding(conditions.long()), 0.2)
        mu, logvar = self.fc(h).chunk(2, dim=1)
        eps = torch.randn(mu.shape, generator=generator).to(mu) if generator is not None else torch.randn_like(mu)
        return mu + (0.5 * logvar).exp() * eps, mu, logvar


class StageIIGenerator(nn.Module):
    """Stage-I image ``(B, C, *s)`` + condition vector ``(B, K)`` -> image ``(B, C, *4s)`` in [-1, 1].

    Args:
        spatial_dims: 2 or 3.
        image_channels: channels ``C``.
        condition_dim: size ``K`` of the condition vector (one-hot class or ``c_hat``).
        channels: feature channels at the stage-I resolution (halved at each upsampling).
        num_blocks: MONAI residual units at the stage-I resolution.
        norm: MONAI norm name.
    """

    def __init__(
        self, spatial_dims: int, image_channels: int, condition_dim: int, channels: int = 64, num_blocks: int = 2, norm: str = "batch"
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if condition_dim < 0:
            raise ValueError(f"condition_dim must be >= 0, got {condition_dim}")
        if channels < 4:
            raise ValueError(f"channels must be >= 4 (halved twice), got {channels}")
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        self.spatial_dims, self.condition_dim = spatial_dims, condition_dim
        self.encode = Convolution(spatial_dims, image_channels, channels, kernel_size=3, act="relu", norm=norm)
        self.join = Convolution(spatial_dims, channels + condition_dim, channels, kernel_size=3, act="relu", norm=norm)
        self.blocks = nn.Sequential(
            *(ResidualUnit(spatial_dims, channels, channels, kernel_size=3, subunits=2, act="relu", norm=norm) for _ in range(num_blocks))
        )
        up: list[nn.Module] = []
        c = channels
        for _ in range(2):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), Convolution(spatial_dims, c, c // 2, kernel_size=3, act="relu", norm=norm)]
            c //= 2
        self.up = nn.Sequential(*up)
        self.out = Convolution(spatial_dims, c, image_channels, kernel_size=3, conv_only=True)
        for p in self.out.parameters():  # zero residual: stage II starts as the upsampled stage-I image
            nn.init.zeros_(p)

    def forward(self, stage1: Tensor, condition: Tensor | None) -> Tensor:
        h = self.encode(stage1)
        if self.condition_dim:
            if condition is None or condition.shape != (stage1.shape[0], self.condition_dim):
                raise ValueError(f"condition must be (B, {self.condition_dim}), got {None if condition is None else tuple(condition.shape)}")
            planes = condition.view(*condition.shape, *([1] * self.spatial_dims)).expand(-1, -1, *h.shape[2:])
            h = torch.cat([h, planes.to(h.dtype)], 1)
        residual = self.out(self.up(self.blocks(self.join(h))))
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        base = F.interpolate(stage1, scale_factor=4, mode=mode, align_corners=False).clamp(-ATANH_LIMIT, ATANH_LIMIT)
        return torch.tanh(torch.atanh(base) + residual)
