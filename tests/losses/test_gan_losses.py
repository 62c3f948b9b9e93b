"""GAN losses: hand-computed values per mode, gradients that point the right way, the WGAN-GP penalty."""

from __future__ import annotations

import math

import pytest
import torch

from udl_med.losses.gan import (
    CycleConsistencyLoss,
    GANLoss,
    GANMode,
    IdentityLoss,
    gradient_penalty,
    parse_gan_mode,
    set_requires_grad,
)


def test_mode_parsing_lists_valid_values() -> None:
    assert parse_gan_mode("lsgan") is GANMode.LSGAN
    assert parse_gan_mode(GANMode.WGAN_GP) is GANMode.WGAN_GP
    with pytest.raises(ValueError, match="lsgan, vanilla, minimax, wgan-gp"):
        parse_gan_mode("hinge")
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
