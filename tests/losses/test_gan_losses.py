"""GAN losses: hand-computed values per mode, label smoothing, feature matching, clipping, the WGAN-GP penalty."""

from __future__ import annotations

import math

import pytest
import torch

from udl_med.losses.gan import (
    CycleConsistencyLoss,
    GANLoss,
    GANMode,
    IdentityLoss,
    clip_weights,
    feature_matching_loss,
    gradient_penalty,
    parse_gan_mode,
    set_requires_grad,
)


def test_mode_parsing_lists_valid_values() -> None:
    assert parse_gan_mode("lsgan") is GANMode.LSGAN
    assert parse_gan_mode(GANMode.WGAN_GP) is GANMode.WGAN_GP
    assert parse_gan_mode("non-saturating") is GANMode.NON_SATURATING
    assert parse_gan_mode("wgan") is GANMode.WGAN
    assert parse_gan_mode("hinge") is GANMode.HINGE
    with pytest.raises(ValueError, match="lsgan, vanilla, non-saturating, minimax, wgan, wgan-gp, hinge"):
        parse_gan_mode("bogus")
    with pytest.raises(ValueError, match="reduction"):
        GANLoss("lsgan", reduction="max")


def test_lsgan_values() -> None:
    loss = GANLoss("lsgan")
    real, fake = torch.tensor([[1.0, 0.5]]), torch.tensor([[0.0, 2.0]])
    # G: mean((fake - 1)^2) = (1 + 1) / 2
    assert loss.generator_loss(fake).item() == pytest.approx(1.0)
    # D: 0.5 * (mean((real - 1)^2) + mean(fake^2)) = 0.5 * (0.125 + 2)
    assert loss.discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.125 + 2.0))


def test_vanilla_and_minimax_values() -> None:
    logits = torch.tensor([0.3, -1.2])
    sp = torch.nn.functional.softplus
    vanilla, minimax = GANLoss("vanilla"), GANLoss("minimax")
    # non-saturating: -log sigmoid(f) = softplus(-f)
    assert vanilla.generator_loss(logits).item() == pytest.approx(sp(-logits).mean().item(), rel=1e-6)
    # minimax: log(1 - sigmoid(f)) = -softplus(f)
    assert minimax.generator_loss(logits).item() == pytest.approx(-sp(logits).mean().item(), rel=1e-6)
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    expected = 0.5 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)))
    assert vanilla.discriminator_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)
    assert minimax.discriminator_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)


def test_non_saturating_is_vanilla() -> None:
    fake, real = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([1.0, -0.5, 0.0])
    ns, vanilla = GANLoss("non-saturating"), GANLoss("vanilla")
    # -log sigmoid(0.3) = 0.554355, -log sigmoid(-1.2) = 1.463282, -log sigmoid(2) = 0.126928
    expected = (0.554355 + 1.463282 + 0.126928) / 3
    assert ns.generator_loss(fake).item() == pytest.approx(expected, abs=1e-5)
    assert ns.generator_loss(fake).item() == pytest.approx(vanilla.generator_loss(fake).item(), abs=1e-7)
    assert ns.discriminator_loss(real, fake).item() == pytest.approx(
        vanilla.discriminator_loss(real, fake).item(), abs=1e-7
    )


def test_minimax_is_saturating() -> None:
    # G minimises log(1 - sigmoid(f)): f = 0 -> log 0.5; f = -2 -> log(1 - 0.119203) = -0.126928
    loss = GANLoss("minimax")
    assert loss.generator_loss(torch.tensor([0.0, -2.0])).item() == pytest.approx(
        (math.log(0.5) - 0.126928) / 2, abs=1e-5
    )
    # saturation: where D confidently rejects the fakes the gradient vanishes, unlike non-saturating
    f = torch.tensor([-8.0], requires_grad=True)
    loss.generator_loss(f).backward()
    g_minimax = f.grad.abs().item()
    f.grad = None
    GANLoss("non-saturating").generator_loss(f).backward()
    assert g_minimax < 1e-3 < f.grad.abs().item()


def test_wgan_clipping_mode_values() -> None:
    loss = GANLoss("wgan")
    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([-1.0, 0.5])
    # D: mean(fake) - mean(real) = -0.25 - 3; G: -mean(fake) = 0.25
    assert loss.discriminator_loss(real, fake).item() == pytest.approx(-3.25)
    assert loss.generator_loss(fake).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="real_label"):
        GANLoss("wgan", real_label=0.9)
    with pytest.raises(ValueError, match="real_label"):
        GANLoss("wgan-gp", real_label=0.9)


def test_one_sided_label_smoothing_targets() -> None:
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([0.0, 1.0])
    ls = GANLoss("lsgan", real_label=0.9)
    # D real target 0.9: ((0.5-0.9)^2 + (2-0.9)^2)/2 = (0.16 + 1.21)/2 = 0.685; fake target 0: (0 + 1)/2 = 0.5
    assert ls.discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.685 + 0.5))
    # G target unsmoothed 1: ((0-1)^2 + (1-1)^2)/2 = 0.5
    assert ls.generator_loss(fake).item() == pytest.approx(0.5)
    assert ls.generator_loss(fake).item() == pytest.approx(GANLoss("lsgan").generator_loss(fake).item())
    bce = GANLoss("non-saturating", real_label=0.9)
    # BCE(s=0, target 0.9) = log 2 whatever the target; BCE(s=2, y=0.9) = softplus(2) - 0.9 * 2 = 2.126928 - 1.8
    real_bce = (math.log(2.0) + (2.126928 - 1.8)) / 2
    # fake target 0: softplus(0) = log 2, softplus(1) = 1.313262
    fake_bce = (math.log(2.0) + 1.313262) / 2
    assert bce.discriminator_loss(torch.tensor([0.0, 2.0]), fake).item() == pytest.approx(
        0.5 * (real_bce + fake_bce), abs=1e-5
    )
    # G: -log sigmoid(f), target 1: softplus(-0) = log 2, softplus(-1) = 0.313262
    assert bce.generator_loss(fake).item() == pytest.approx((math.log(2.0) + 0.313262) / 2, abs=1e-5)
    # the per-element targets: D's optimum on real data is at sigmoid(s) = 0.9
    s = torch.tensor([math.log(9.0)], requires_grad=True)  # sigmoid = 0.9
    bce.forward(s, target_is_real=True).backward()
    assert s.grad.abs().item() < 1e-6


def test_feature_matching_values() -> None:
    real = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])  # mean (2, 1, 0)
    fake = torch.tensor([[0.0, 1.0, 1.0], [0.0, 3.0, 1.0], [3.0, 2.0, 1.0]])  # mean (1, 2, 1)
    # diff (1, -1, -1): squared (1, 1, 1)
    assert feature_matching_loss(real, fake).item() == pytest.approx(1.0)
    assert feature_matching_loss(real, fake, reduction="sum").item() == pytest.approx(3.0)
    fake2 = fake * 2  # mean (2, 4, 2): diff (0, -3, -2)
    assert feature_matching_loss(real, fake2, reduction="sum").item() == pytest.approx(13.0)
    assert feature_matching_loss(real, fake2, distance="l1").item() == pytest.approx(5.0 / 3.0)
    assert feature_matching_loss(real, fake2, reduction="none").tolist() == pytest.approx([0.0, 9.0, 4.0])
    # equal batch means give 0 even when the samples differ
    assert feature_matching_loss(real, real.flip(0)).item() == pytest.approx(0.0)
    # trailing shapes (B, C, H, W) work; the gradient reaches only the fake side
    r = torch.randn(2, 2, 3, 3, requires_grad=True)
    f = torch.randn(4, 2, 3, 3, requires_grad=True)
    feature_matching_loss(r, f).backward()
    assert r.grad is None and f.grad is not None
    with pytest.raises(ValueError, match="distance"):
        feature_matching_loss(real, fake, distance="l3")
    with pytest.raises(ValueError, match="shapes differ"):
        feature_matching_loss(real, fake[:, :2])


def test_clip_weights() -> None:
    net = torch.nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.5, -0.005, -0.3], [0.001, 0.02, -0.02]]))
        net.bias.copy_(torch.tensor([-1.0, 0.0]))
    clip_weights(net, 0.01)
    assert net.weight.flatten().tolist() == pytest.approx([0.01, -0.005, -0.01, 0.001, 0.01, -0.01])
    assert net.bias.tolist() == pytest.approx([-0.01, 0.0])
    with pytest.raises(ValueError, match="c must be"):
        clip_weights(net, 0.0)


def test_wgan_values_and_reductions() -> None:
    loss = GANLoss("wgan-gp")
    real, fake = torch.tensor([[3.0, 1.0]]), torch.tensor([[0.5, -0.5]])
    assert loss.generator_loss(fake).item() == pytest.approx(0.0)
    assert loss.discriminator_loss(real, fake).item() == pytest.approx(0.0 - 2.0)
    summed = GANLoss("wgan-gp", reduction="sum")
    assert summed.discriminator_loss(real, fake).item() == pytest.approx(0.0 - 4.0)
    none = GANLoss("lsgan", reduction="none")
    assert none.generator_loss(fake).shape == fake.shape
    assert none.discriminator_loss(real, fake).shape == fake.shape


@pytest.mark.parametrize("mode", list(GANMode))
def test_gradients_push_fakes_towards_real(mode: GANMode) -> None:
    loss = GANLoss(mode)
    fake = torch.full((4, 1, 3, 3), 0.5, requires_grad=True)
    loss.generator_loss(fake).backward()
    assert (fake.grad < 0).all()  # a gradient step raises the fake scores
    real = torch.full((4, 1, 3, 3), 0.5, requires_grad=True)
    fake = torch.full((4, 1, 3, 3), 0.5, requires_grad=True)
    loss.discriminator_loss(real, fake).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradient_penalty(spatial_dims: int) -> None:
    size = (4,) * spatial_dims
    real, fake = torch.randn(3, 1, *size), torch.randn(3, 1, *size)
    n = real[0].numel()
    # critic(x) = a * sum(x): gradient norm |a| sqrt(n) everywhere
    a = 2.0 / math.sqrt(n)
    penalty = gradient_penalty(lambda x: a * x.flatten(1).sum(1), real, fake)
    assert penalty.item() == pytest.approx((2.0 - 1.0) ** 2, rel=1e-5)
    unit = gradient_penalty(lambda x: x.flatten(1).sum(1) / math.sqrt(n), real, fake)
    assert unit.item() == pytest.approx(0.0, abs=1e-8)
    # the penalty trains the critic: it has a gradient with respect to the critic's weights
    w = torch.tensor(a, requires_grad=True)
    gradient_penalty(lambda x: w * x.flatten(1).sum(1), real, fake).backward()
    assert w.grad is not None and w.grad > 0
    with pytest.raises(ValueError, match="shapes differ"):
        gradient_penalty(lambda x: x.sum(), real, fake[:2])


def test_cycle_and_identity_losses() -> None:
    x, y = torch.zeros(2, 1, 4, 4, 4), torch.full((2, 1, 4, 4, 4), 0.5)
    assert CycleConsistencyLoss()(y, x).item() == pytest.approx(0.5)
    assert IdentityLoss(reduction="sum")(y, x).item() == pytest.approx(0.5 * x.numel())
    assert IdentityLoss(reduction="none")(y, x).shape == x.shape


def test_set_requires_grad() -> None:
    net = torch.nn.Linear(2, 2)
    set_requires_grad([net], False)
    assert not any(p.requires_grad for p in net.parameters())
    set_requires_grad([net], True)
    assert all(p.requires_grad for p in net.parameters())
