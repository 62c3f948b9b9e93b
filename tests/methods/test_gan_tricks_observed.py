"""The `gan` method's tricks and keys observed in a training step, so that a no-op in their place fails (issue 26).

The finite-losses test of every trick stays green when a trick does nothing; these look
at what each one does: the replay pool shows D past fakes, ``batch_norm_batches: joint``
scores real and fake in one batch (and batch statistics then differ), historical
averaging adds its formula to both losses, the noise keys put noise of their std into D,
``feature_matching_distance`` picks the distance G minimises.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.methods.test_gan import TINY_DCGAN, TINY_MLP, Driver, build, spec
from udl_med import keys
from udl_med.losses.gan import GANLoss
from udl_med.methods.adversarial import Adversary
from udl_med.nets.gan_blocks import GaussianNoise


def _spy_d_inputs(method, monkeypatch: pytest.MonkeyPatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Record, per D step, the fresh fakes G made and the fakes D was shown."""
    fresh, shown = [], []
    original = method.adversary.discriminator_loss

    def spy(critic, real, fake, *args, **kwargs):
        shown.append(fake.detach().clone())
        return original(critic, real, fake, *args, **kwargs)

    monkeypatch.setattr(method.adversary, "discriminator_loss", spy)
    method.generator.register_forward_hook(lambda m, i, out: None if torch.is_grad_enabled() else fresh.append(out.detach().clone()))
    return fresh, shown


@pytest.mark.parametrize("replay", [0, 4])
def test_replay_shows_d_fakes_from_earlier_steps(replay: int, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    data = spec(0)
    method = build({**TINY_MLP, "replay": replay}, data)
    fresh, shown = _spy_d_inputs(method, monkeypatch)
    driver = Driver(method, data, n=2)
    for _ in range(30):
        driver()
    assert len(fresh) == len(shown) == 30
    old = 0
    for t, (new, seen) in enumerate(zip(fresh, shown)):
        for row_new, row_seen in zip(new, seen):
            if torch.equal(row_new, row_seen):
                continue
            old += 1
            assert any(torch.equal(row_seen, r) for s in fresh[:t] for r in s)  # a fake of an earlier step
    if replay == 0:
        assert old == 0
    else:
        # the first two steps fill the pool; then each fake is swapped with probability 1/2
        assert 14 <= old <= 42, old


@pytest.mark.parametrize("joint", [False, True])
def test_batch_norm_batches_decides_how_d_scores_real_and_fake(joint: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    data = spec(2)
    method = build({**TINY_DCGAN, "batch_norm_batches": "joint" if joint else "separate"}, data)
    sizes: list[int] = []
    method.discriminator.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    monkeypatch.setattr(method.adversary, "generator_loss", lambda critic, fake, labels=None: fake.mean() * 0)  # G step: no D call
    Driver(method, data, n=3)()
    assert sizes == ([6] if joint else [3, 3])


def test_joint_and_separate_batch_statistics_differ_where_they_must() -> None:
    """Real items all a, fakes all b: separate batch norm maps both batches to the same scores, joint does not."""
    torch.manual_seed(0)
    linear = nn.Linear(4, 1)
    nn.init.constant_(linear.weight, 0.25), nn.init.zeros_(linear.bias)
    net = nn.Sequential(nn.Flatten(), linear, nn.BatchNorm1d(1)).train()  # the batch-normalised mean value

    def critic(x, labels=None):
        return net(x)

    real, fake = torch.full((4, 1, 2, 2), 1.0) + 0.01 * torch.randn(4, 1, 2, 2), torch.full((4, 1, 2, 2), -1.0) + 0.01 * torch.randn(4, 1, 2, 2)
    sep_real, sep_fake = Adversary(GANLoss("vanilla")).scores(critic, real, fake)
    joint_real, joint_fake = Adversary(GANLoss("vanilla"), joint=True).scores(critic, real, fake)
    assert sep_real.mean().abs() < 1e-4 and sep_fake.mean().abs() < 1e-4  # each batch normalised on its own: the offset is gone
    assert joint_real.mean() > 0.9 and joint_fake.mean() < -0.9  # normalised together: real and fake stay apart
    assert torch.allclose(joint_real, net(torch.cat([real, fake]))[:4])


def _ha_penalty(current: dict[str, torch.Tensor], history: list[dict[str, torch.Tensor]]) -> float:
    """``sum ||theta - (1/t) sum_i theta_i||^2`` by hand; 0 with no history."""
    if not history:
        return 0.0
    return sum(float(((current[k] - torch.stack([h[k] for h in history]).mean(0)) ** 2).sum()) for k in current)


def test_historical_averaging_adds_its_formula_to_both_losses(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    data, weight = spec(0), 10.0
    method = build({**TINY_MLP, "historical_averaging": weight, "d_steps": 2, "lr": 0.05}, data)  # steps large enough to see
    params = lambda net: {k: v.detach().clone() for k, v in net.named_parameters()}  # noqa: E731
    d_hist, g_hist, d_seen, g_seen = [], [], [], []
    d_loss, g_loss = method.adversary.discriminator_loss, method.adversary.generator_loss

    def d_spy(critic, *args, **kwargs):
        now = params(method.discriminator)
        if d_seen:  # the parameters after each earlier D step enter the average
            d_hist.append(now)
        parts = d_loss(critic, *args, **kwargs)
        d_seen.append((float(parts.loss.detach()), _ha_penalty(now, d_hist)))
        return parts

    def g_spy(critic, fake, labels=None):
        now = params(method.generator)
        if g_seen:
            g_hist.append(now)
        out = g_loss(critic, fake, labels)
        g_seen.append((float(out.detach()), _ha_penalty(now, g_hist)))
        return out

    monkeypatch.setattr(method.adversary, "discriminator_loss", d_spy)
    monkeypatch.setattr(method.adversary, "generator_loss", g_spy)
    driver = Driver(method, data)
    for step in range(4):
        out = driver()
        (d1, p1), (d2, p2) = d_seen[-2:]
        assert out[keys.LOSS_D] == pytest.approx((d1 + weight * p1 + d2 + weight * p2) / 2, rel=1e-5, abs=1e-6)
        g, pg = g_seen[-1]
        assert out[keys.LOSS_G] == pytest.approx(g + weight * pg, rel=1e-5, abs=1e-6)
        if step > 1:  # (at the first update the average is the parameters themselves)
            assert weight * p2 > 1e-3 and weight * pg > 1e-3  # the parameters moved away from their average: a real penalty
    assert int(method.d_average.count) == 8 and int(method.g_average.count) == 4


@pytest.mark.parametrize(("key", "noisy"), [("d_input_noise", "input"), ("d_hidden_noise", "hidden")])
def test_noise_keys_put_noise_of_their_std_into_d_during_training(key: str, noisy: str) -> None:
    torch.manual_seed(0)
    data = spec(2)
    method = build({**TINY_DCGAN, key: 0.5}, data)
    d = method.discriminator
    seen: dict[str, list[float]] = {"input": [], "hidden": []}
    for name, module in d.named_modules():
        if isinstance(module, GaussianNoise):
            where = "input" if module is d.input_noise else "hidden"
            module.register_forward_hook(lambda m, i, out, where=where: seen[where].append(float((out - i[0]).detach().std())))
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    d.train()(x)
    other = "hidden" if noisy == "input" else "input"
    assert seen[noisy] and all(s == pytest.approx(0.5, rel=0.2) for s in seen[noisy]), seen
    assert all(s == 0 for s in seen[other])
    d.eval()
    assert torch.equal(d(x), d(x))  # no noise at evaluation


@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_feature_matching_distance_is_what_g_minimises(distance: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    data = spec(0)
    method = build({**TINY_MLP, "feature_matching": True, "feature_matching_distance": distance}, data)
    seen = []
    original = method.adversary.feature_matching_loss

    def spy(real_features, fake_features):
        diff = real_features.detach().mean(0) - fake_features.detach().mean(0)
        seen.append(float((diff**2 if distance == "l2" else diff.abs()).mean()))
        return original(real_features, fake_features)

    monkeypatch.setattr(method.adversary, "feature_matching_loss", spy)
    out = Driver(method, data)()
    assert len(seen) == 1 and out[keys.LOSS_G] == pytest.approx(seen[0], rel=1e-5)
    a, b = torch.tensor([[0.0, 3.0]]), torch.tensor([[2.0, 0.0]])
    assert float(method.adversary.feature_matching_loss(a, b)) == pytest.approx({"l2": 6.5, "l1": 2.5}[distance])
