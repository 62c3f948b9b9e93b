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


@pytest.mark.parametrize("weight", [10.0, 0.5])  # any weight above 0 switches it on, 1 no more than 0.5
def test_historical_averaging_adds_its_formula_to_both_losses(weight: float, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    data = spec(0)
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


# --- The adversarial module and the GAN wrappers, called directly (their mutmut survivors) ---

from udl_med.errors import ConfigError  # noqa: E402
from udl_med.losses.gan import GANMode  # noqa: E402
from udl_med.losses.image_pool import ImagePool  # noqa: E402
from udl_med.methods import adversarial as adv  # noqa: E402
from udl_med.nets.gan_wrappers import Flat, Packed, SwapHistory  # noqa: E402


class _Recorder(nn.Module):
    """A net that records the inputs and labels it was called with and scores by the sum of the input."""

    def __init__(self, out: int = 1) -> None:
        super().__init__()
        self.out = out
        self.calls: list[tuple[str, torch.Size, object]] = []

    def forward(self, x, labels=None):
        self.calls.append(("forward", x.shape, labels))
        return x.flatten(1).sum(1, keepdim=True).expand(-1, self.out)

    def forward_features(self, x, labels=None):
        self.calls.append(("features", x.shape, labels))
        return x.flatten(1).sum(1, keepdim=True), x.flatten(1)

    def set_reference(self, x, labels=None):
        self.calls.append(("reference", x.shape, labels))


def test_flat_and_packed_pass_labels_and_shapes_on() -> None:
    labels = torch.tensor([1, 0, 1, 0])
    x = torch.randn(4, 3, 2, 2)
    gen = Flat(_Recorder(out=12), (3, 2, 2), "generator")
    assert gen(torch.randn(4, 12), labels).shape == (4, 3, 2, 2)
    gen.set_reference(torch.randn(4, 12, 1, 1), labels)  # G's reference is z as given, not flattened
    assert [(c[0], tuple(c[1])) for c in gen.net.calls] == [("forward", (4, 12)), ("reference", (4, 12, 1, 1))]
    assert all(c[2] is labels for c in gen.net.calls)
    disc = Flat(_Recorder(), (3, 2, 2), "discriminator")
    disc(x, labels), disc.forward_features(x, labels), disc.set_reference(x, labels)
    assert [(c[0], tuple(c[1])) for c in disc.net.calls] == [("forward", (4, 12)), ("features", (4, 12)), ("reference", (4, 12))]
    assert all(c[2] is labels for c in disc.net.calls)
    packed = Packed(_Recorder(), 2)
    packed(x, labels), packed.forward_features(x, labels)
    assert [(c[0], tuple(c[1])) for c in packed.net.calls] == [("forward", (2, 6, 2, 2)), ("features", (2, 6, 2, 2))]
    assert all(c[2] is labels for c in packed.net.calls)
    assert Packed(_Recorder(), 1)(x).shape == (4, 1)  # pack 1 is allowed: every item on its own
    with pytest.raises(ValueError, match="pack must be >= 1, got 0"):
        Packed(_Recorder(), 0)
    with pytest.raises(ValueError, match=r"multiple of 3 items \(train.batch_size\), got 4$"):
        Packed(_Recorder(), 3)(x)
    assert isinstance(adv.packed_discriminator(_Recorder(), 2), Packed)
    assert not isinstance(adv.packed_discriminator(_Recorder(), 1), Packed)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled",))


def test_swap_history_round_trips_and_refuses_arbitrary_pickles() -> None:
    history = SwapHistory()
    history.snapshots, history.live, history.until = [{"step": 3, "weights": {"w": torch.ones(2)}, "optimizer": {}}], None, -1
    other = SwapHistory()
    other.set_extra_state(history.get_extra_state())
    assert other.snapshots[0]["step"] == 3 and torch.equal(other.snapshots[0]["weights"]["w"], torch.ones(2))
    assert other.live is None and other.until == -1
    import io
    import pickle

    buffer = io.BytesIO()
    torch.save({"snapshots": [_Evil()], "live": {}, "until": 0}, buffer)
    with pytest.raises(pickle.UnpicklingError):  # weights_only: a checkpoint cannot run code when it loads
        other.set_extra_state(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))


def test_refuse_locates_the_key_and_either_lists_the_choices() -> None:
    error = adv.refuse("unrolled.steps", "too many", 7)
    assert error.title == "MethodConfig"
    (detail,) = error.errors()
    assert detail["type"] == "refused_combination" and detail["loc"] == ("unrolled", "steps") and detail["input"] == 7
    assert detail["msg"] == "too many"
    assert adv.refuse("pack", "p", 1, title="GANConfig").title == "GANConfig"
    assert adv._either(["lsgan"]) == "lsgan"
    assert adv._either(["minimax", "non-saturating", "lsgan"]) == "minimax, non-saturating or lsgan"
    assert adv._either(["a", "b"]) == "a or b"


class _WganGp(adv.PackingConfig):
    gan_mode: GANMode = GANMode.WGAN_GP


class _Minimax(adv.PackingConfig):
    gan_mode: GANMode = GANMode.MINIMAX


def test_check_run_names_the_config_key_and_from_config_keeps_a_zero_penalty() -> None:
    class Train:
        batch_size = 6

    with pytest.raises(ConfigError) as caught:
        _Minimax(pack=4).check_run(Train())
    assert caught.value.source == "<config>" and caught.value.key == "model.pack"
    assert str(caught.value) == "<config>: model.pack: 4 must divide train.batch_size (6): D scores groups of 4 items"
    _Minimax(pack=3).check_run(Train())
    assert adv.Adversary.from_config(_WganGp(gp_weight=0.0)).gp_weight == 0.0
    assert adv.Adversary.from_config(_WganGp(gp_weight=2.5)).gp_weight == 2.5
    assert adv.Adversary.from_config(_Minimax(gp_weight=2.5)).gp_weight == 0.0


def _critic(calls: list) -> object:
    weight = torch.tensor([1.0, -2.0, 0.5])

    def critic(x, labels=None):
        calls.append((x.shape[0], labels))
        return (x.flatten(1) * weight).sum(1, keepdim=True).tanh()  # non-linear: its gradient depends on x

    return critic


@pytest.mark.parametrize("joint", [False, True])
def test_the_adversary_hands_each_batch_its_own_labels(joint: bool) -> None:
    real, fake = torch.randn(3, 3), torch.randn(3, 3)
    real_labels, fake_labels = torch.tensor([0, 1, 1]), torch.tensor([1, 1, 0])
    calls: list = []
    adversary = adv.Adversary(GANLoss(GANMode.WGAN_GP), gp_weight=0.5, joint=joint)
    parts = adversary.discriminator_loss(_critic(calls), real, fake, real_labels, fake_labels)
    if joint:
        assert calls[0][0] == 6 and torch.equal(calls[0][1], torch.tensor([0, 1, 1, 1, 1, 0]))
    else:
        assert calls[0][0] == 3 and calls[0][1] is real_labels and calls[1][0] == 3 and calls[1][1] is fake_labels
    assert parts.gradient_penalty is not None  # a weight below 1 still turns the penalty on
    assert parts.loss.item() == pytest.approx((parts.adversarial + 0.5 * parts.gradient_penalty).item())
    calls.clear()
    adversary.generator_loss(_critic(calls), fake, fake_labels)
    assert calls == [(3, fake_labels)]


def test_clipping_after_the_d_step_and_the_logged_penalty() -> None:
    net = nn.Linear(3, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.5, -0.04, 0.003]]))
    adv.Adversary(GANLoss(GANMode.WGAN), clip_value=0.02).after_discriminator_step(net)  # not clip_weights' default 0.01
    assert torch.equal(net.weight, torch.tensor([[0.02, -0.02, 0.003]]))
    adv.Adversary(GANLoss(GANMode.WGAN)).after_discriminator_step(net)  # no clip value: untouched
    assert torch.equal(net.weight, torch.tensor([[0.02, -0.02, 0.003]]))
    scores = torch.zeros(2, 1)
    steps = [(adv.DiscriminatorLoss(torch.tensor(1.0), torch.tensor(1.0), scores, scores, torch.tensor(g)), torch.tensor(1.0)) for g in (1.0, 3.0)]
    assert adv.discriminator_logs(steps)[keys.GRADIENT_PENALTY].item() == 2.0


def test_score_metrics_count_a_zero_score_as_wrong_both_ways() -> None:
    real, fake = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5, -1.0])
    out = adv.score_metrics(real, fake, wasserstein=False)
    assert out[keys.D_ACCURACY] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert out[keys.D_REAL] == 0.5 and out[keys.D_FAKE] == pytest.approx(-1 / 6)
    assert adv.score_metrics(real, fake, wasserstein=True)[keys.WASSERSTEIN] == pytest.approx(0.5 + 1 / 6)


@pytest.mark.parametrize("shape", [(6, 3, 2, 2), (6, 4)])
def test_replay_keeps_each_fake_with_its_label(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    pool = ImagePool(8)
    seen: dict[float, int] = {}
    for step in range(6):
        fake = torch.randn(*shape)
        labels = torch.randint(0, 5, (shape[0],))
        for row, label in zip(fake, labels):
            seen[float(row.flatten()[0])] = int(label)
        out, out_labels = adv.replay(pool, fake, labels)
        assert out.shape == fake.shape and out.dtype == fake.dtype and out_labels.dtype == torch.long
        for row, label in zip(out, out_labels):
            assert seen[float(row.flatten()[0])] == int(label)  # a replayed fake comes back with the class it was made for


class _Opt:
    def __init__(self) -> None:
        self.global_step = 0
        self.restored: list = []

    def snapshot(self, *names: str) -> dict:
        return {"at": self.global_step}

    def restore(self, snapshot: dict) -> None:
        self.restored.append(snapshot["at"])


def _swap_run(seed: int, keep: int = 3, steps: int = 40) -> tuple[list[int], SwapHistory]:
    torch.manual_seed(seed)
    net, history, opt = nn.Linear(1, 1, bias=False), SwapHistory(), _Opt()
    swap = adv.CheckpointSwapConfig(every=2, duration=1, keep=keep)
    chosen = []
    for step in range(steps):
        opt.global_step = step
        with torch.no_grad():
            net.weight.fill_(step)
        adv.checkpoint_swap(history, net, "d", opt, swap)
        if history.live is not None:
            chosen.append(int(net.weight.item()))
        assert len(history.snapshots) <= keep + 1
    return chosen, history


def test_checkpoint_swap_draws_by_the_step_alone_and_keeps_keep_plus_one() -> None:
    chosen, history = _swap_run(0)
    assert len(history.snapshots) == 4 and [s["step"] for s in history.snapshots] == [32, 34, 36, 38]
    assert history.live is None and history.until == -1
    assert len(set(chosen)) > 3  # several snapshots drawn
    for seed in range(1, 6):  # every rank draws the same whatever its global random state
        assert _swap_run(seed)[0] == chosen


def test_gan_refusals_name_the_key_and_the_problem() -> None:
    from tests.methods.test_gan import spec as gan_spec

    def refusal(model: dict, data) -> tuple[str, str, str]:
        with pytest.raises(ConfigError) as caught:
            build(model, data)
        return caught.value.source, caught.value.key, caught.value.problem

    assert refusal(TINY_DCGAN, gan_spec(0)) == ("<config>", "model.architecture", "point data (spatial_dims 0) needs architecture: mlp")
    assert refusal({**TINY_DCGAN, "conditional": True}, gan_spec(2, num_classes=1)) == (
        "<config>",
        "model.conditional",
        "needs labeled data with at least 2 classes (set data.labeled: true); the data has 1",
    )
    source, key, problem = refusal({**TINY_DCGAN, "g_channels": [16, 8, 8, 8, 8]}, gan_spec(2))
    assert (source, key) == ("<config>", "model.g_channels") and problem.startswith("does not fit data.size [16, 16]: ")
    source, key, problem = refusal({**TINY_DCGAN, "d_channels": [8, 8, 8, 8, 8]}, gan_spec(2))
    assert (source, key) == ("<config>", "model.d_channels") and problem.startswith("does not fit data.size [16, 16]: ")


def test_a_conditional_vbn_generator_keeps_its_reference_labels() -> None:
    from tests.methods.test_gan import spec as gan_spec

    data = gan_spec(2, num_classes=3)
    method = build({**TINY_MLP, "conditional": True, "g_norm": "virtual_batch", "d_norm": "virtual_batch", "vbn_reference": 4}, data)
    seen: list = []
    for net in (method.generator.net, method.discriminator.net):
        original = net.set_reference
        net.set_reference = lambda x, labels=None, original=original: (seen.append(labels), original(x, labels))
    reference = random_batch_of(data, 4)
    method.on_train_start(reference, torch.Generator().manual_seed(0))
    assert len(seen) == 2 and all(labels is not None and labels.shape == (4,) for labels in seen)
    assert any(torch.equal(labels, reference[keys.LABEL]) for labels in seen)  # D's reference: the real items' labels


def random_batch_of(data, n: int) -> dict:
    from tests.methods.test_gan import random_batch

    return random_batch(data, n)


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_g_norm_and_d_norm_reach_the_dcgan_nets(norm: str) -> None:
    from tests.methods.test_gan import spec as gan_spec

    method = build({**TINY_DCGAN, "g_norm": norm, "d_norm": norm}, gan_spec(2))
    for net in (method.generator, method.discriminator):
        kinds = {type(m).__name__ for m in net.modules()}
        assert not any("BatchNorm" in k for k in kinds), kinds
        assert any("InstanceNorm" in k for k in kinds) == (norm == "instance"), kinds
