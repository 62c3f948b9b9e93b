"""StackGAN pieces: the KL by hand, conditioning augmentation draws mu + sigma * eps, stage II starts as the upsampled stage I."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from udl_med.nets.stackgan import ATANH_LIMIT, ConditioningAugmentation, StageIIGenerator, kl_to_standard_normal


def test_kl_matches_a_hand_computation() -> None:
    mu = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, -1.0]])
    per_row = [0.5 * (0 + 1 - 1 - 0) + 0.5 * (1 + 2 - 1 - math.log(2.0)), 0.5 * (4 + 1 - 1 - 0) + 0.5 * (1 + math.exp(-1) - 1 + 1)]
    assert kl_to_standard_normal(mu, logvar).item() == pytest.approx(sum(per_row) / 2, rel=1e-6)
    assert kl_to_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0


def test_conditioning_augmentation_draws_mu_plus_sigma_eps_from_the_generator() -> None:
    torch.manual_seed(0)
    ca = ConditioningAugmentation(num_conditions=3, embed_dim=4).eval()
    conditions = torch.tensor([0, 2, 2])
    c_hat, mu, logvar = ca(conditions, torch.Generator().manual_seed(5))
    eps = torch.randn((3, 4), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(c_hat, mu + (0.5 * logvar).exp() * eps, atol=1e-6)
    assert torch.equal(mu[1], mu[2]) and not torch.equal(mu[0], mu[1])  # mu and sigma depend on the condition only
    again, _, _ = ca(conditions, torch.Generator().manual_seed(5))
    other, _, _ = ca(conditions, torch.Generator().manual_seed(6))
    assert torch.equal(c_hat, again) and not torch.equal(c_hat, other)  # still drawn in eval mode
    with pytest.raises(ValueError, match="embed_dim"):
        ConditioningAugmentation(3, embed_dim=0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_stage_two_starts_as_the_upsampled_stage_one_image(spatial_dims: int) -> None:
    torch.manual_seed(0)
    net = StageIIGenerator(spatial_dims, image_channels=1, condition_dim=2, channels=8, num_blocks=1).eval()
    stage1 = torch.rand(2, 1, *(4,) * spatial_dims) * 2.2 - 1.1  # some values beyond the atanh limit
    condition = torch.eye(2)
    out = net(stage1, condition)
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    upsampled = F.interpolate(stage1, scale_factor=4, mode=mode, align_corners=False).clamp(-ATANH_LIMIT, ATANH_LIMIT)
    assert out.shape == (2, 1, *(16,) * spatial_dims)
    assert torch.allclose(out, upsampled, atol=1e-5)  # the residual layer starts at zero
    with torch.no_grad():
        for p in net.out.parameters():
            p.normal_(0, 0.1)
    changed = net(stage1, condition)
    assert changed.abs().max() < 1 and not torch.allclose(changed, upsampled, atol=1e-3)
    assert not torch.allclose(changed[:1], net(stage1[:1], condition[1:]), atol=1e-4)  # the condition reaches the image
    with pytest.raises(ValueError, match=r"condition must be \(B, 2\)"):
        net(stage1, None)
