"""What the GAN losses and tricks do, observed so that a no-op in their place fails (issue 26).

The gradient penalty is taken at the interpolates (shown with a non-linear critic, whose
gradient differs from point to point); the image pool hands back stored fakes half of
the time; historical averaging is its formula and pulls the parameters towards the mean.
"""

from __future__ import annotations

import math

import pytest
import torch

from udl_med.losses.gan import GANLoss, feature_matching_loss, gradient_penalty
from udl_med.losses.historical_averaging import HistoricalAverage
from udl_med.losses.image_pool import ImagePool


def _square_critic(x: torch.Tensor) -> torch.Tensor:
    """``f(x) = ||x||^2 / 2`` per item: its gradient at ``x`` is ``x`` itself."""
    return 0.5 * (x.flatten(1) ** 2).sum(1)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradient_penalty_is_taken_at_the_interpolates(spatial_dims: int) -> None:
    torch.manual_seed(0)
    real, fake = torch.randn(5, 1, *(3,) * spatial_dims), torch.randn(5, 1, *(3,) * spatial_dims) * 0.1
    penalty = gradient_penalty(_square_critic, real, fake, generator=torch.Generator().manual_seed(7))
    alpha = torch.rand((5,) + (1,) * (real.ndim - 1), generator=torch.Generator().manual_seed(7))
    x_hat = alpha * real + (1 - alpha) * fake
    expected = ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean()  # grad f(x_hat) = x_hat
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5)
    at_real = ((real.flatten(1).norm(dim=1) - 1) ** 2).mean()
    at_fake = ((fake.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert abs(penalty.item() - at_real.item()) > 0.1 and abs(penalty.item() - at_fake.item()) > 0.1
    # E over alpha: a different draw of alpha gives a different penalty; the same draw the same one
    again = gradient_penalty(_square_critic, real, fake, generator=torch.Generator().manual_seed(7))
    other = gradient_penalty(_square_critic, real, fake, generator=torch.Generator().manual_seed(8))
    assert again.item() == penalty.item() and other.item() != penalty.item()


def test_gradient_penalty_trains_the_critic_and_not_the_samples() -> None:
    real, fake = torch.randn(4, 1, 3, 3, requires_grad=True), torch.randn(4, 1, 3, 3, requires_grad=True)
    w = torch.tensor(0.3, requires_grad=True)
    # critic w * ||x||^2 / 2: gradient w x_hat, norm w ||x_hat||; d/dw of mean (w n - 1)^2 = mean 2 (w n - 1) n
    penalty = gradient_penalty(lambda x: w * _square_critic(x), real, fake, generator=torch.Generator().manual_seed(1))
    penalty.backward()
    alpha = torch.rand((4, 1, 1, 1), generator=torch.Generator().manual_seed(1))
    norms = (alpha * real + (1 - alpha) * fake).detach().flatten(1).norm(dim=1)
    assert w.grad.item() == pytest.approx((2 * (0.3 * norms - 1) * norms).mean().item(), rel=1e-5)
    assert real.grad is None and fake.grad is None  # the interpolates are built from detached samples


def test_feature_matching_l1_and_l2_by_hand_and_mean_over_the_batch() -> None:
    real = torch.tensor([[1.0, 2.0], [3.0, 2.0]])  # mean (2, 2)
    fake = torch.tensor([[0.0, 5.0], [0.0, 1.0]], requires_grad=True)  # mean (0, 3)
    assert feature_matching_loss(real, fake).item() == pytest.approx((4.0 + 1.0) / 2)
    assert feature_matching_loss(real, fake, distance="l1").item() == pytest.approx((2.0 + 1.0) / 2)
    assert feature_matching_loss(real, fake, reduction="sum").item() == pytest.approx(5.0)
    assert torch.allclose(feature_matching_loss(real, fake, reduction="none"), torch.tensor([4.0, 1.0]))
    feature_matching_loss(real, fake).backward()
    # d/d fake_ij of mean_j (m_real_j - m_fake_j)^2 = -(m_real_j - m_fake_j) / B_fake ... / F
    assert torch.allclose(fake.grad, torch.tensor([[-1.0, 0.5], [-1.0, 0.5]]))
    with pytest.raises(ValueError, match="distance"):
        feature_matching_loss(real, fake, distance="l3")
    with pytest.raises(ValueError, match="shapes differ"):
        feature_matching_loss(real, fake[:, :1])


def test_minimax_generator_loss_is_log_one_minus_d() -> None:
    scores = torch.tensor([-1.0, 0.0, 2.0])
    d = torch.sigmoid(scores)
    assert GANLoss("minimax").generator_loss(scores).item() == pytest.approx(torch.log(1 - d).mean().item(), rel=1e-5)
    assert GANLoss("non-saturating").generator_loss(scores).item() == pytest.approx((-torch.log(d)).mean().item(), rel=1e-5)
    assert GANLoss("lsgan").generator_loss(scores).item() == pytest.approx(((scores - 1) ** 2).mean().item())
    assert GANLoss("wgan-gp").generator_loss(scores).item() == pytest.approx(-scores.mean().item())


def test_discriminator_targets_and_forward_by_hand() -> None:
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-1.0, 0.0])
    ls = GANLoss("lsgan", real_label=0.9, fake_label=0.1)
    expected = 0.5 * (((real - 0.9) ** 2).mean() + ((fake - 0.1) ** 2).mean())
    assert ls.discriminator_loss(real, fake).item() == pytest.approx(expected.item())
    assert ls(real, True).item() == pytest.approx(((real - 0.9) ** 2).mean().item())
    assert ls(fake, False).item() == pytest.approx(((fake - 0.1) ** 2).mean().item())
    w = GANLoss("wgan")
    assert w(real, True).item() == pytest.approx(-real.mean().item())
    assert w(fake, False).item() == pytest.approx(fake.mean().item())
    assert torch.allclose(GANLoss("wgan", reduction="none").discriminator_loss(real, fake), fake - real)
    bce = GANLoss("vanilla", reduction="none").discriminator_loss(real, fake)
    assert torch.allclose(bce, 0.5 * (torch.nn.functional.softplus(-real) + torch.nn.functional.softplus(fake)))
    with pytest.raises(ValueError, match="no targets"):
        GANLoss("wgan", real_label=0.9)
    with pytest.raises(ValueError, match="no targets"):
        GANLoss("wgan-gp", fake_label=0.1)


def test_pool_returns_a_stored_fake_half_of_the_time_and_keeps_the_new_one() -> None:
    pool = ImagePool(10, generator=torch.Generator().manual_seed(0))
    pool.query(torch.arange(10.0).view(10, 1, 1, 1))  # filled with 0..9
    swapped, n = 0, 0
    for step in range(300):
        value = 100.0 + step
        before = {float(x) for x in pool.images}
        out = pool.query(torch.full((1, 1, 1, 1), value))
        n += 1
        if float(out) != value:
            swapped += 1
            assert float(out) in before  # a fake from the history, not a new one
            assert value in {float(x) for x in pool.images}  # and the new fake took its place
        else:
            assert {float(x) for x in pool.images} == before  # returned as is, the pool unchanged
        assert len(pool) == 10
    assert abs(swapped / n - 0.5) < 0.1  # probability 1/2 (300 draws: std 0.029)


def test_pool_while_filling_returns_the_new_images_and_stores_them() -> None:
    pool = ImagePool(3, generator=torch.Generator().manual_seed(0))
    out = pool.query(torch.arange(2.0).view(2, 1, 1, 1))
    assert torch.equal(out, torch.arange(2.0).view(2, 1, 1, 1)) and len(pool) == 2
    pool.query(torch.full((2, 1, 1, 1), 5.0))  # one fills the pool, the other may swap
    assert len(pool) == 3
    pool.reset()
    assert len(pool) == 0


def test_historical_average_pulls_the_parameters_towards_the_running_mean() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    avg = HistoricalAverage(net)
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        avg.update(net)
    mean = {name: avg.mean(name).clone() for name, _ in net.named_parameters()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)

    def distance() -> float:
        return math.sqrt(sum(((p - mean[name]) ** 2).sum().item() for name, p in net.named_parameters()))

    lr, start = 0.1, distance()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for step in range(1, 4):
        opt.zero_grad()
        penalty = avg.penalty(net)
        assert penalty.item() == pytest.approx(distance() ** 2, rel=1e-5)  # ||theta - mean||^2
        penalty.backward()
        opt.step()
        # gradient 2 (theta - mean): each SGD step shrinks the distance by (1 - 2 lr)
        assert distance() == pytest.approx(start * (1 - 2 * lr) ** step, rel=1e-4)


def test_checkpoint_keys_and_defaults_are_the_documented_ones() -> None:
    """The names a saved run holds (renaming them breaks loading older model files) and the papers' defaults."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    avg = HistoricalAverage(net)
    assert set(avg.state_dict()) == {"mean__0__weight", "mean__0__bias", "count"}
    assert avg.count.dtype == torch.long and avg.penalty(net).dtype == torch.float32
    with pytest.raises(ValueError, match="^module has no parameters to average$"):
        HistoricalAverage(torch.nn.ReLU())
    with pytest.raises(ValueError, match="^module's parameters differ from those HistoricalAverage was built for$"):
        avg.penalty(torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False)))
    assert ImagePool().pool_size == 50  # CycleGAN's
    pool = ImagePool(2)
    pool.query(torch.ones(2, 1, 3, 3))
    assert pool.get_extra_state().shape == (2, 1, 3, 3) and ImagePool(2).get_extra_state().shape == (0,)
