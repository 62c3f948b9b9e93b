"""Losses observed where mutation testing found them unobserved (issue 26): the K+1 and ELBO
settings that reach their inner losses, HA's dtype, messages, the unrolled optimiser's state,
sign, clamp and detaching, and the image pool following its module's dtype; the fresh losses
sample of issue 26's third round (seed 2): the hinge loss against each target on its own, and
InfoGAN's log-variance clamped on both sides."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from udl_med.losses import unrolled
from udl_med.losses.elbo import ELBOLoss, gaussian_kl
from udl_med.losses.gan import GANLoss, feature_matching_loss
from udl_med.losses.historical_averaging import HistoricalAverage
from udl_med.losses.image_pool import ImagePool
from udl_med.losses.info import InfoCodes, info_loss
from udl_med.losses.kplus1 import KPlusOneLoss
from udl_med.losses.sparsity import L1Sparsity


def test_kplus1_supervised_reduction_and_elbo_reconstruction_kind() -> None:
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    per_item = KPlusOneLoss(reduction="none").supervised(logits, labels)
    assert per_item.shape == (2,)
    assert torch.allclose(per_item, torch.nn.functional.cross_entropy(logits, labels, reduction="none"))
    out, target = torch.tensor([[[[2.0, -1.0]]]]), torch.zeros(1, 1, 1, 2)
    mu, logvar = torch.zeros(1, 2), torch.zeros(1, 2)
    assert ELBOLoss("l1")(out, target, mu, logvar).recon.item() == 3.0 and ELBOLoss("l2")(out, target, mu, logvar).recon.item() == 5.0  # kind reaches the sum


def test_gaussian_kl_of_a_negative_mean() -> None:
    mu, logvar = torch.tensor([[-2.0]]), torch.tensor([[0.5]])
    expected = 0.5 * (4.0 + torch.tensor(0.5).exp() - 1.0 - 0.5)
    assert gaussian_kl(mu, logvar).item() == pytest.approx(expected.item())


def test_messages_name_what_is_wrong() -> None:
    with pytest.raises(ValueError) as caught:
        GANLoss("wgan", real_label=0.9)
    assert str(caught.value) == "real_label=0.9 / fake_label=0.0: a Wasserstein critic (wgan) has no targets, label smoothing does not apply"
    with pytest.raises(ValueError) as caught:
        feature_matching_loss(torch.zeros(2, 3), torch.zeros(2, 3), distance="l3")
    assert str(caught.value) == "unknown distance 'l3'; valid: l2, l1"
    with pytest.raises(ValueError) as caught:
        L1Sparsity(reduction="median")
    assert str(caught.value).startswith("unknown reduction 'median'; valid: ")


def test_historical_average_penalty_is_float32_for_any_module() -> None:
    net = nn.Linear(1, 1, bias=False).double()
    average = HistoricalAverage(net)
    zero = average.penalty(net)
    assert zero.dtype == torch.float32 and zero.item() == 0.0
    average.update(net)
    with torch.no_grad():
        net.weight.add_(2.0)
    penalty = average.penalty(net)
    assert penalty.dtype == torch.float32 and penalty.item() == pytest.approx(4.0)


def test_adam_eps_and_moments_of_an_optimizer() -> None:
    net = nn.Linear(2, 1)
    opt = torch.optim.Adam(net.parameters(), eps=1e-3)
    assert unrolled.adam_eps(opt) == 1e-3 and unrolled.adam_eps(None) == unrolled.ADAM_EPS
    fresh = unrolled.adam_moments(net, opt)
    none = unrolled.adam_moments(net, None)
    for moments in (fresh, none):
        assert set(moments) == {"weight", "bias"}
        for name, (m, v, t) in moments.items():
            shape = dict(net.named_parameters())[name].shape
            assert m.shape == v.shape == shape and not m.any() and not v.any() and t == 0
    net(torch.ones(3, 2)).sum().backward()
    opt.step()
    m, v, t = unrolled.adam_moments(net, opt)["weight"]
    assert t == 1 and torch.equal(m, opt.state[net.weight]["exp_avg"])


class _WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(1, 1, bias=False)
        self.unused = nn.Parameter(torch.ones(1))

    def forward(self, x, labels=None):
        return self.score(x)


@pytest.mark.parametrize("create_graph", [False, True])
def test_unrolled_sgd_steps_downhill_clamps_and_detaches(create_graph: bool) -> None:
    disc = _WithUnused()
    with torch.no_grad():
        disc.score.weight.fill_(0.5)
    x = torch.ones(4, 1)

    def d_loss(critic):
        return critic(x).sum()  # d/dw = 4

    out = unrolled.unroll_discriminator(disc, d_loss, steps=1, lr=0.1, create_graph=create_graph)
    assert out["score.weight"].item() == pytest.approx(0.5 - 0.1 * 4)  # downhill
    assert torch.equal(out["unused"], disc.unused.detach())  # a parameter the loss does not use stays
    assert out["score.weight"].is_leaf != create_graph  # without the graph every step is detached
    clipped = unrolled.unroll_discriminator(disc, lambda c: -c(x).sum(), steps=2, lr=0.1, create_graph=create_graph, clip_value=0.6)
    assert clipped["score.weight"].item() == pytest.approx(0.6)
    low = unrolled.unroll_discriminator(disc, d_loss, steps=2, lr=0.5, create_graph=create_graph, clip_value=0.6)
    assert low["score.weight"].item() == pytest.approx(-0.6)
    adam = ((0.5, 0.9), 1e-8, unrolled.adam_moments(disc, None))
    stepped = unrolled.unroll_discriminator(disc, d_loss, steps=2, lr=0.1, create_graph=create_graph, adam=adam)
    assert stepped["score.weight"].item() == pytest.approx(0.5 - 0.2, rel=1e-5)  # Adam's first steps move by lr each
    assert stepped["score.weight"].is_leaf != create_graph


def test_the_pool_follows_its_modules_dtype() -> None:
    pool = ImagePool(4)
    pool.query(torch.randn(3, 1, 2, 2))
    assert len(pool.images) == 3
    pool.double()
    assert all(image.dtype == torch.float64 for image in pool.images) and len(pool.images) == 3
    other = ImagePool(4)
    other.set_extra_state(pool.get_extra_state())
    assert len(other.images) == 3 and torch.equal(torch.cat(other.images), torch.cat(pool.images))


def test_noise_is_drawn_in_the_inputs_dtype() -> None:
    from udl_med.losses.corruption import Corruption
    from udl_med.losses.elbo import reparameterize

    x = torch.zeros(2, 3, dtype=torch.float64)
    noisy = Corruption("gaussian", level=0.5)(x, torch.Generator().manual_seed(0))
    expected = 0.5 * torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert noisy.dtype == torch.float64 and torch.allclose(noisy, expected, rtol=0, atol=1e-15)
    z = reparameterize(x, x, torch.Generator().manual_seed(1))
    assert z.dtype == torch.float64 and torch.equal(z, torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))


def test_elbo_beta_defaults_to_1() -> None:
    out, target = torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2)
    mu, logvar = torch.tensor([[1.0, -1.0]]), torch.zeros(1, 2)
    terms = ELBOLoss()(out, target, mu, logvar)
    assert terms.kl.item() == pytest.approx(1.0) and terms.loss.item() == pytest.approx(1.0)


def test_hinge_against_each_target_by_hand() -> None:
    # pytorch-CycleGAN's call, D's side: relu(1 - s) for real targets, relu(1 + s) for fake ones
    scores = torch.tensor([-2.0, 0.5, 3.0])
    hinge = GANLoss("hinge")
    assert hinge(scores, True).item() == pytest.approx((3.0 + 0.5 + 0.0) / 3)
    assert hinge(scores, False).item() == pytest.approx((0.0 + 1.5 + 4.0) / 3)
    assert torch.equal(GANLoss("hinge", reduction="none")(scores, True), torch.tensor([3.0, 0.5, 0.0]))


def test_info_loss_clamps_the_log_variance_to_plus_minus_10() -> None:
    # Q's log-variance is clamped to [-10, 10]: a runaway Q neither divides by exp(-huge) nor makes the
    # Gaussian term free by widening without bound, and past the clamp it gets no gradient
    codes = InfoCodes(categorical=torch.zeros(1, dtype=torch.long), continuous=torch.tensor([[0.0]]))
    for logvar in (20.0, -20.0):
        clamped = max(-10.0, min(10.0, logvar))
        q = torch.tensor([[1.0, logvar]], requires_grad=True)  # K = 0: the mean, then the log-variance
        terms = info_loss(q, codes, k=0)
        expected = 0.5 * (math.log(2 * math.pi) + clamped + 1.0 / math.exp(clamped))
        assert terms.continuous.item() == pytest.approx(expected, rel=1e-6)
        terms.loss.backward()
        assert q.grad[0, 1].item() == 0.0
