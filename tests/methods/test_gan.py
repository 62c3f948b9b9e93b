"""The `gan` method: every loss and trick steps, k fresh D batches, unrolling against finite differences,
checkpoint swapping, label smoothing, refusals, exact resume, FID falling, conditional samples, the optimal D."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
import yaml
from torch import nn

from udl_med import keys
from udl_med.engine.config import load_config, validate_config
from udl_med.engine.optimization import EngineOptimization
from udl_med.engine.train import train
from udl_med.errors import ConfigError
from udl_med.losses.gan import GANLoss
from udl_med.methods.base import DataSpec
from udl_med.losses.unrolled import adam_moments, unroll_discriminator
from udl_med.methods.gan import GAN, GANConfig
from tests.engine.test_train import _final_state, _udl_med, _write_config, kill_and_resume

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY_DCGAN = {"architecture": "dcgan", "latent_dim": 8, "g_channels": [16, 8], "d_channels": [8, 16]}
TINY_MLP = {"architecture": "mlp", "latent_dim": 4, "g_hidden": [8], "d_hidden": [8]}


class Unconditional(nn.Module):
    """``(x, labels) -> scores`` around a plain module, as the method calls its discriminator."""

    def __init__(self, lin: nn.Module) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x, labels=None):
        return self.lin(x)

def spec(spatial_dims: int = 2, num_classes: int = 0) -> DataSpec:
    size = {0: (), 2: (16, 16), 3: (8, 8, 8)}[spatial_dims]
    return DataSpec(spatial_dims=spatial_dims, in_channels=2 if spatial_dims == 0 else 1, image_size=size, num_classes=num_classes)


def random_batch(data: DataSpec, n: int = 6) -> dict[str, torch.Tensor]:
    batch = {keys.IMAGE: torch.rand(n, data.in_channels, *data.image_size) * 2 - 1}
    if data.num_classes:
        batch[keys.LABEL] = torch.randint(data.num_classes, (n,))
    return batch


class Driver:
    """Runs ``train_step`` with the engine's :class:`EngineOptimization`, as the engine does."""

    def __init__(self, method: GAN, data: DataSpec, n: int = 6) -> None:
        self.method, self.data, self.n = method, data, n
        self.opt = EngineOptimization(method.configure_optimizers(), torch.device("cpu"))
        self.step, self.drawn = 0, []
        reference = random_batch(data, method.reference_batch_size()) if method.reference_batch_size() else None
        method.on_train_start(reference, torch.Generator().manual_seed(0))

    def draw(self) -> dict[str, torch.Tensor]:
        batch = random_batch(self.data, self.n)
        self.drawn.append(batch)
        return batch

    def __call__(self) -> dict[str, float]:
        self.method.train()
        self.opt.begin_step(self.step, self.draw, self.method.batches_per_step() - 1)
        out = self.method.train_step(random_batch(self.data, self.n), self.opt)
        self.step += 1
        return {k: float(v) for k, v in out.items()}


def build(model: dict[str, Any], data: DataSpec) -> GAN:
    return GAN(GANConfig(**model), data)


TRICKS = {
    "non-saturating": {},
    "minimax": {"loss": "minimax"},
    "lsgan": {"loss": "lsgan"},
    "wgan": {"loss": "wgan"},
    "wgan-gp": {"loss": "wgan-gp", "d_norm": "instance"},
    "label_smoothing": {"label_smoothing": 0.9},
    "feature_matching": {"feature_matching": True},
    "minibatch": {"minibatch_kernels": 4},
    "vbn": {"g_norm": "virtual_batch", "d_norm": "virtual_batch", "vbn_reference": 4},
    "instance": {"g_norm": "instance", "d_norm": "instance"},
    "joint_bn": {"batch_norm_batches": "joint"},
    "historical": {"historical_averaging": 0.1},
    "replay": {"replay": 8},
    "swap": {"checkpoint_swap": {"every": 2, "duration": 1}},
    "unrolled": {"unrolled": {"steps": 2}},
    "unrolled_first_order": {"unrolled": {"steps": 2, "first_order": True}},
    "unrolled_adam": {"unrolled": {"steps": 2, "optimizer": "adam", "lr": 0.01}},
    "d_steps": {"d_steps": 3},
    "pack": {"pack": 2, "feature_matching": True},
    "conditional": {"conditional": True, "replay": 4},
    "projection": {"conditional": True, "d_conditioning": "projection"},
    "auxiliary": {"conditional": True, "d_conditioning": "auxiliary", "replay": 4},
    "mode_seeking": {"conditional": True, "mode_seeking": 1.0, "d_conditioning": "auxiliary"},
    "mode_seeking_fm": {"mode_seeking": 0.5, "feature_matching": True},
    "auxiliary_real_only_gp": {"conditional": True, "d_conditioning": "auxiliary", "aux_class_fakes": False, "loss": "wgan-gp", "d_norm": "instance", "batch_norm_batches": "joint"},
    "mixture_latent": {"latent_mixture": {"components": 4, "std_penalty": 0.1}, "conditional": True, "historical_averaging": 0.1},
}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("trick", list(TRICKS))
def test_every_loss_and_trick_steps_with_finite_losses(trick: str, spatial_dims: int) -> None:
    torch.manual_seed(0)
    data = spec(spatial_dims, num_classes=3)
    method = build({**TINY_DCGAN, **TRICKS[trick]}, data)
    driver = Driver(method, data)
    before = {k: v.clone() for k, v in method.generator.state_dict().items()}
    for _ in range(5):
        losses = driver()
    assert {"loss_g", "loss_d", "d_real", "d_fake"} <= losses.keys()
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert any(not torch.equal(before[k], v) for k, v in method.generator.state_dict().items())  # G learnt something
    method.eval()
    samples = method.sample(3, torch.Generator().manual_seed(1), label=2 if method.num_sample_classes() else None)
    assert samples.shape == (3, 1, *data.image_size) and samples.abs().max() <= 1
    assert method.preview(random_batch(data))["samples"].shape[1:] == (1, *data.image_size)
    assert all(math.isfinite(v) for v in method.evaluate(random_batch(data)).values())


@pytest.mark.parametrize("trick", ["non-saturating", "wgan-gp", "feature_matching", "minibatch", "vbn", "unrolled", "pack", "conditional", "mixture_latent"])
def test_mlp_on_points_steps_and_samples_points(trick: str) -> None:
    torch.manual_seed(0)
    data = spec(0, num_classes=3)
    method = build({**TINY_MLP, **TRICKS[trick]}, data)
    driver = Driver(method, data)
    for _ in range(3):
        losses = driver()
    assert all(math.isfinite(v) for v in losses.values())
    method.eval()
    assert method.sample(5).shape == (5, 2)
    assert method.preview(random_batch(data))["samples"].shape[1] == 2
    assert method.num_sample_classes() == (3 if trick in ("conditional", "mixture_latent") else 0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mlp_on_flattened_images(spatial_dims: int) -> None:
    torch.manual_seed(0)
    data = spec(spatial_dims, num_classes=3)
    method = build({**TINY_MLP, "conditional": True, "feature_matching": True}, data)
    driver = Driver(method, data)
    losses = driver()
    assert all(math.isfinite(v) for v in losses.values())
    samples = method.eval().sample(4, label=1)
    assert samples.shape == (4, 1, *data.image_size) and samples.abs().max() <= 1  # tanh output for images


@pytest.mark.parametrize("feature_matching", [False, True])
def test_d_steps_each_see_a_fresh_batch(feature_matching: bool) -> None:
    torch.manual_seed(0)
    data = spec(2)
    method = build({**TINY_DCGAN, "d_steps": 3, "feature_matching": feature_matching}, data)
    assert method.batches_per_step() == 3 + feature_matching
    driver = Driver(method, data)
    seen: list[torch.Tensor] = []
    features = method.discriminator.forward_features  # forward goes through it too

    def recording(x, labels=None):
        seen.append(x.detach().clone())
        return features(x, labels)

    method.discriminator.forward_features = recording
    driver.opt.begin_step(0, driver.draw, method.batches_per_step() - 1)
    first = random_batch(data)
    method.train_step(first, driver.opt)
    assert len(driver.drawn) == 2 + feature_matching and driver.opt.unused_batches() == 0
    # the D steps see the step's batch, then each drawn batch, in that order (real first: separate batches)
    reals = [first[keys.IMAGE]] + [b[keys.IMAGE] for b in driver.drawn[:2]]
    d_real_inputs = [x for x in seen if any(torch.equal(x, r) for r in reals)]
    assert [next(i for i, r in enumerate(reals) if torch.equal(x, r)) for x in d_real_inputs][:3] == [0, 1, 2]
    if feature_matching:  # G's feature matching used the last drawn batch
        assert any(torch.equal(x, driver.drawn[2][keys.IMAGE]) for x in seen)
    with pytest.raises(RuntimeError, match="batches_per_step"):
        driver.opt.begin_step(1, driver.draw, 0)  # an engine that gave no extra batch
        method.train_step(first, driver.opt)


def test_mixture_latent_trains_with_g_and_its_penalty_widens_the_components() -> None:
    """DeLiGAN: the means and sigmas are G's parameters; the std penalty pulls every sigma towards 1."""
    torch.manual_seed(0)
    data = spec(0)
    method = build({**TINY_MLP, "latent_mixture": {"components": 3, "init_std": 0.2, "std_penalty": 100.0}, "lr": 0.05}, data)
    latent = method.generator.latent
    assert any(p is latent.means for p in method.configure_optimizers()["g"].param_groups[0]["params"])
    means = latent.means.detach().clone()
    driver = Driver(method, data)
    for _ in range(10):
        driver()
    assert not torch.equal(latent.means, means)
    assert (latent.log_std.exp() > 0.3).all()  # 0.2 at the start; Adam moves log sigma by about lr a step, up: the penalty dominates
    # the fixed preview latents go through the current mixture
    assert torch.allclose(method._fixed_latent(4), latent(method.fixed_z[:4], method.fixed_components[:4]))
    first, again = method.eval().sample(5, torch.Generator().manual_seed(2)), method.sample(5, torch.Generator().manual_seed(2))
    assert torch.equal(first, again)


def test_mixture_latent_is_kept_in_the_model_file_and_averaged_with_g(tmp_path: Path, tracking_uri: str) -> None:
    from udl_med.data.memory import TensorItems
    from udl_med.engine.model_io import load_model

    torch.manual_seed(0)
    points = torch.randn(64, 2)
    config = {
        "method": "gan",
        "seed": 0,
        "data": {"kind": "memory"},
        "model": {**TINY_MLP, "latent_mixture": {"components": 5}},
        "train": {"steps": 6, "batch_size": 8, "ema_decay": 0.9, "eval_every": 100, "checkpoint_every": 100},
        "tracking": {"uri": tracking_uri, "experiment": "gan-tests", "log_model": False},
        "output_dir": str(tmp_path / "run"),
    }
    report = train(config, datasets=(TensorItems(points), TensorItems(points[:16])))
    method = load_model(report["model_dir"]).method
    saved = torch.load(Path(report["model_dir"]) / keys.MODEL_FILE, weights_only=True)["state_dict"]
    assert {"generator.latent.means", "generator.latent.log_std"} <= saved.keys()
    assert not any(k.startswith("discriminator") for k in saved)
    assert torch.equal(method.generator.latent.means, saved["generator.latent.means"])
    assert method.sample(4, torch.Generator().manual_seed(0)).shape == (4, 2)


# -- unrolling --------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [0, 2, 3])
def test_packed_discriminator_scores_each_group_of_m_items_on_its_own(spatial_dims: int) -> None:
    """PacGAN: D's score of a group depends on the group's m items and on nothing else in the batch."""
    torch.manual_seed(0)
    data = spec(spatial_dims)
    method = build({**(TINY_MLP if spatial_dims == 0 else TINY_DCGAN), "pack": 3, "d_norm": "none"}, data).eval()
    x = random_batch(data, 6)[keys.IMAGE]
    scores = method.discriminator(x)
    assert scores.shape[0] == 2  # 6 items in groups of 3
    changed = x.clone()
    changed[4] = -changed[4]  # an item of the second group
    after = method.discriminator(changed)
    assert torch.equal(after[0], scores[0]) and not torch.equal(after[1], scores[1])
    swapped = x[[1, 0, 2, 3, 4, 5]]  # the order inside a group is part of D's input, as in PacGAN
    assert not torch.allclose(method.discriminator(swapped)[0], scores[0])
    with pytest.raises(ValueError, match="model.pack 3"):
        method.discriminator(x[:4])


def _bce(scores: torch.Tensor, target: float) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(scores, torch.full_like(scores, target))


def _tiny_game(k: int, second_order: bool, a: torch.Tensor, b: torch.Tensor, adam: bool = False) -> torch.Tensor:
    """G(z) = a z + b, D(x) = w x + c, float64: the non-saturating G loss after k unrolled D steps.

    The losses are written out here in float64 (GANLoss computes in float32, too coarse
    for a finite-difference check at h = 1e-6).
    """
    torch.manual_seed(0)
    disc = nn.Linear(1, 1).double()
    with torch.no_grad():
        disc.weight.fill_(0.7)
        disc.bias.fill_(-0.2)
    z = torch.randn(16, 1, dtype=torch.float64)
    real = torch.randn(16, 1, dtype=torch.float64) * 0.5 + 2.0
    fake = a * z + b

    def d_loss(d) -> torch.Tensor:
        return 0.5 * (_bce(d(real, None), 1.0) + _bce(d(fake if second_order else fake.detach(), None), 0.0))

    d = Unconditional(disc)
    moments = None
    if adam:  # Adam inner steps continuing some earlier moments
        start = {name: (torch.full_like(p, 0.1), torch.full_like(p, 0.02), 3) for name, p in d.named_parameters()}
        moments = ((0.5, 0.9), 1e-8, start)
    lr = 0.1 if adam else 0.5
    state = unroll_discriminator(d, d_loss, k, lr=lr, create_graph=second_order, adam=moments) if k else dict(d.named_parameters())
    return _bce(torch.func.functional_call(d, state, (fake, None)), 1.0)


def test_unrolled_gradient_matches_finite_differences_and_differs_from_k0() -> None:
    a = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    grads = {}
    for k, second in [(0, True), (3, True), (3, False)]:
        (ga, gb) = torch.autograd.grad(_tiny_game(k, second, a, b), (a, b))
        grads[(k, second)] = torch.stack([ga, gb])
    h = 1e-6
    fd = torch.stack(
        [
            (_tiny_game(3, True, a + h, b) - _tiny_game(3, True, a - h, b)) / (2 * h),
            (_tiny_game(3, True, a, b + h) - _tiny_game(3, True, a, b - h)) / (2 * h),
        ]
    ).detach()
    print("unrolled grad", grads[(3, True)].tolist(), "finite differences", fd.tolist(), "first order", grads[(3, False)].tolist(), "k=0", grads[(0, True)].tolist())
    assert torch.allclose(grads[(3, True)], fd, rtol=1e-6, atol=1e-9)
    assert (grads[(3, True)] - grads[(0, True)]).abs().max() > 1e-2  # unrolling changes G's gradient
    assert (grads[(3, False)] - grads[(3, True)]).abs().max() > 1e-3  # first order drops the second-order term


def test_adam_unrolling_matches_finite_differences_and_torch_adam() -> None:
    a = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    grad = torch.stack(torch.autograd.grad(_tiny_game(3, True, a, b, adam=True), (a, b)))
    h = 1e-6
    fd = torch.stack(
        [
            (_tiny_game(3, True, a + h, b, adam=True) - _tiny_game(3, True, a - h, b, adam=True)) / (2 * h),
            (_tiny_game(3, True, a, b + h, adam=True) - _tiny_game(3, True, a, b - h, adam=True)) / (2 * h),
        ]
    ).detach()
    assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-9)
    sgd = torch.stack(torch.autograd.grad(_tiny_game(3, True, a, b), (a, b)))
    assert (grad - sgd).abs().max() > 1e-3

    # one simulated Adam step from the real optimizer's moments is the real optimizer's next step
    torch.manual_seed(0)
    disc = nn.Linear(3, 1).double()
    x = torch.randn(8, 3, dtype=torch.float64)

    d = Unconditional(disc)
    optimizer = torch.optim.Adam(d.parameters(), lr=0.1, betas=(0.5, 0.9))
    for _ in range(2):
        optimizer.zero_grad()
        (d(x) - 1.0).pow(2).mean().backward()
        optimizer.step()
    simulated = unroll_discriminator(d, lambda critic: (critic(x, None) - 1.0).pow(2).mean(), 1, 0.1, False, adam=((0.5, 0.9), 1e-8, adam_moments(d, optimizer)))
    optimizer.zero_grad()
    (d(x) - 1.0).pow(2).mean().backward()
    optimizer.step()
    assert all(torch.allclose(simulated[k], p, rtol=0, atol=1e-12) for k, p in d.named_parameters())


def test_method_unrolled_gradient_matches_finite_differences() -> None:
    """Through the method's own G loss (float32), tiny MLPs: G parameters perturbed both ways."""
    torch.manual_seed(0)
    data = spec(0)
    method = build({**TINY_MLP, "g_hidden": [3], "d_hidden": [3], "unrolled": {"steps": 2}, "lr": 0.5}, data)
    with torch.no_grad():  # weights large enough that the inner steps matter
        for p in method.parameters():
            p.mul_(4.0)
    real = torch.randn(8, 2) + 1.0

    def g_loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same z every call
        return method.generator_loss(real, None)

    param = next(method.generator.parameters())
    (grad,) = torch.autograd.grad(g_loss(), param)
    h = 1e-2
    for index in [(0, 0), (1, 1), (2, 0)]:
        with torch.no_grad():
            param[index] += h
        up = g_loss().item()
        with torch.no_grad():
            param[index] -= 2 * h
        down = g_loss().item()
        with torch.no_grad():
            param[index] += h
        print("method unrolled grad", grad[index].item(), "finite difference", (up - down) / (2 * h))
        assert grad[index].item() == pytest.approx((up - down) / (2 * h), rel=2e-3, abs=1e-5)
    plain = build({**TINY_MLP, "g_hidden": [3], "d_hidden": [3], "lr": 0.5}, data)
    plain.load_state_dict(method.state_dict())
    torch.manual_seed(1)
    (plain_grad,) = torch.autograd.grad(plain.generator_loss(real, None), next(plain.generator.parameters()))
    assert (plain_grad - grad).abs().max() > 1e-4
    # the real D was not changed by the simulated updates
    assert all(p.grad is None for p in method.discriminator.parameters())


def test_unrolled_inner_step_size_is_its_own_key() -> None:
    """With D's Adam lr (1e-4) as the SGD step the unrolled gradient is nearly the plain one; unrolled.lr moves D."""
    torch.manual_seed(0)
    data = spec(0)
    base = {**TINY_MLP, "lr": 1e-4}
    methods = {name: build({**base, **extra}, data) for name, extra in [("plain", {}), ("d_lr", {"unrolled": {"steps": 3}}), ("own", {"unrolled": {"steps": 3, "lr": 1.0}})]}
    with torch.no_grad():
        for p in methods["plain"].parameters():
            p.mul_(4.0)
    for m in methods.values():
        m.load_state_dict(methods["plain"].state_dict())
    real = torch.randn(16, 2) + 1.0
    grads = {}
    for name, m in methods.items():
        torch.manual_seed(1)
        grads[name] = torch.autograd.grad(m.generator_loss(real, None), list(m.generator.parameters()))
    gap = {name: max((a - b).abs().max().item() for a, b in zip(grads[name], grads["plain"])) for name in ("d_lr", "own")}
    scale = max(g.abs().max().item() for g in grads["plain"])
    assert gap["d_lr"] < 1e-3 * scale < gap["own"]


# -- checkpoint swapping, label smoothing ---------------------------------------------------


def _optimizer_state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v.clone() for s in opt.state_dict()["state"].values() for v in s.values() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("player", ["d", "g"])
def test_checkpoint_swap_swaps_an_old_snapshot_in_and_restores_the_current_one(player: str) -> None:
    torch.manual_seed(0)
    data = spec(2)
    method = build({**TINY_DCGAN, "checkpoint_swap": {"every": 3, "duration": 2, "player": player}}, data)
    net = method.discriminator if player == "d" else method.generator
    driver = Driver(method, data)
    seen: dict[int, tuple[dict[str, torch.Tensor], list[torch.Tensor]]] = {}
    states: dict[int, tuple[dict[str, torch.Tensor], list[torch.Tensor]]] = {}

    def record(module, args) -> None:  # the player's weights when it first runs in a step
        seen.setdefault(driver.step, ({k: v.clone() for k, v in net.state_dict().items()}, _optimizer_state(driver.opt.optimizer(player))))

    net.register_forward_pre_hook(record)
    for _ in range(10):
        states[driver.step] = ({k: v.clone() for k, v in net.state_dict().items()}, _optimizer_state(driver.opt.optimizer(player)))
        driver()

    def same(x, y) -> bool:
        return all(torch.equal(x[0][k], y[0][k]) for k in x[0]) and all(torch.equal(a, b) for a, b in zip(x[1], y[1]))

    assert same(seen[3], states[3])  # snapshot taken, nothing older to swap in
    assert same(seen[6], states[3]) and not same(states[6], states[3])  # the step-3 snapshot is swapped in
    assert not same(states[8], states[6]) and same(seen[8], states[6])  # after 2 steps the current weights and optimizer state are back
    assert same(seen[9], states[3]) or same(seen[9], states[6])  # the next swap: one of the older snapshots


def test_label_smoothing_reaches_only_the_discriminators_real_target() -> None:
    torch.manual_seed(0)
    data = spec(2)
    plain, smooth = build(TINY_DCGAN, data), build({**TINY_DCGAN, "label_smoothing": 0.9}, data)
    with torch.no_grad():
        plain.discriminator.score.bias.fill_(1.5)  # scores away from 0, where the targets make a difference
    smooth.load_state_dict(plain.state_dict())
    plain.eval(), smooth.eval()
    real, fake = random_batch(data)[keys.IMAGE], random_batch(data)[keys.IMAGE]
    loss_plain = plain.adversary.discriminator_loss(plain.discriminator, real, fake, None, None)
    loss_smooth = smooth.adversary.discriminator_loss(smooth.discriminator, real, fake, None, None)
    # BCE(s, 0.9) - BCE(s, 1) = 0.1 s, halved by GANLoss: 0.05 * mean real score
    expected = 0.05 * loss_plain.real_scores.float().mean()
    assert (loss_smooth.loss - loss_plain.loss).item() == pytest.approx(expected.item(), abs=1e-6)
    assert abs(expected.item()) > 0.05
    scores = plain.discriminator(fake)
    assert torch.equal(plain.adversary.objective.generator_loss(scores), smooth.adversary.objective.generator_loss(scores))


class _RecordingOptimization:
    """Just enough of :class:`Optimization` for one ``_d_step``: no autocast, the loss kept instead of stepped."""

    global_step = None

    def __init__(self) -> None:
        self.losses: dict[str, torch.Tensor] = {}

    def autocast(self):
        return contextlib.nullcontext()

    def step(self, name: str, loss: torch.Tensor) -> None:
        self.losses[name] = loss


@pytest.mark.parametrize("fakes", [True, False])
def test_auxiliary_class_loss_is_the_cross_entropy_of_the_items_d_scored(fakes: bool) -> None:
    data = spec(2, num_classes=3)
    method = build({**TINY_DCGAN, "conditional": True, "d_conditioning": "auxiliary", "aux_class_fakes": fakes, "aux_class_weight": 0.5, "loss": "wgan-gp", "d_norm": "instance"}, data)
    method.eval()  # G's batch norm on its running statistics, so the fakes can be drawn again
    batch = random_batch(data)
    opt = _RecordingOptimization()
    torch.manual_seed(3)
    parts, loss, class_loss = method._d_step(batch, opt)
    torch.manual_seed(3)
    with torch.no_grad():
        fake = method.generator(method.prior.draw(6), batch[keys.LABEL])
        items, labels = (torch.cat([batch[keys.IMAGE], fake]), torch.cat([batch[keys.LABEL]] * 2)) if fakes else (batch[keys.IMAGE], batch[keys.LABEL])
        expected = nn.functional.cross_entropy(method.discriminator.forward_with_classes(items, labels)[1], labels)
    assert class_loss.item() == pytest.approx(expected.item(), rel=1e-5)  # the gradient-penalty interpolates are left out
    assert loss.item() == pytest.approx((parts.loss + 0.5 * expected).item(), rel=1e-5)
    # G's loss: the adversarial term plus the class loss of its fakes under the labels they were drawn for
    torch.manual_seed(4)
    g_loss = method.generator_loss(batch[keys.IMAGE], batch[keys.LABEL])
    torch.manual_seed(4)
    fake = method.generator(method.prior.draw(6), batch[keys.LABEL])
    scores, logits = method.discriminator.forward_with_classes(fake, batch[keys.LABEL])
    expected_g = method.adversary.objective.generator_loss(scores) + 0.5 * nn.functional.cross_entropy(logits, batch[keys.LABEL])
    assert g_loss.item() == pytest.approx(expected_g.item(), rel=1e-5)


def test_auxiliary_classifier_gan_learns_the_classes_of_real_items() -> None:
    torch.manual_seed(0)
    data = DataSpec(spatial_dims=2, in_channels=1, image_size=(16, 16), num_classes=2)
    images, labels = _two_class_images(256, 0)
    method = build({**TINY_DCGAN, "conditional": True, "d_conditioning": "auxiliary", "lr": 5e-4}, data)
    driver = Driver(method, data, n=16)
    driver.draw = lambda: _pick(images, labels, 16)
    method.train()
    losses = []
    for step in range(60):
        driver.opt.begin_step(step, driver.draw, method.batches_per_step() - 1)
        losses.append(float(method.train_step(_pick(images, labels, 16), driver.opt)[keys.AUX_CLASS]))
    x_eval, y_eval = _two_class_images(64, 1)
    method.eval()
    with torch.no_grad():
        accuracy = (method.discriminator.forward_with_classes(x_eval, y_eval)[1].argmax(1) == y_eval).float().mean().item()
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10, losses
    assert accuracy > 0.9


def test_mode_seeking_loss_by_hand_and_in_gs_loss() -> None:
    from udl_med.losses.mode_seeking import EPS, mode_seeking_loss

    a, b = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.5)
    za, zb = torch.zeros(2, 3), torch.full((2, 3), 2.0)
    assert mode_seeking_loss(a, b, za, zb).item() == pytest.approx(1 / (0.5 / 2.0 + EPS))
    assert mode_seeking_loss(a, a, za, zb).item() == pytest.approx(1 / EPS)  # a collapsed G: the same image from distant z
    with pytest.raises(ValueError, match="same shape"):
        mode_seeking_loss(a, b[:1], za, zb)
    # G's loss: the adversarial loss over both fakes of every item (same labels) plus lambda times the term
    data = spec(2, num_classes=3)
    method = build({**TINY_DCGAN, "conditional": True, "mode_seeking": 0.5}, data)
    method.eval()
    batch = random_batch(data)
    torch.manual_seed(4)
    loss = method.generator_loss(batch[keys.IMAGE], batch[keys.LABEL])
    torch.manual_seed(4)
    latent = method.prior.draw(12)
    labels = batch[keys.LABEL].repeat(2)
    fake = method.generator(latent, labels)
    expected = method.adversary.objective.generator_loss(method.discriminator(fake, labels)) + 0.5 * mode_seeking_loss(fake[:6], fake[6:], latent[:6], latent[6:])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.slow
def test_mode_seeking_spreads_the_samples_of_each_class() -> None:
    """On the two-class toy a tiny conditional G collapses towards one image per class; MSGAN's term keeps same-class samples apart."""
    data = DataSpec(spatial_dims=2, in_channels=1, image_size=(16, 16), num_classes=2)
    images, labels = _two_class_images(256, 0)

    def spread(mode_seeking: float) -> float:
        torch.manual_seed(0)
        method = build({**TINY_DCGAN, "conditional": True, "mode_seeking": mode_seeking, "lr": 5e-4}, data)
        driver = Driver(method, data, n=16)
        driver.draw = lambda: _pick(images, labels, 16)
        method.train()
        for step in range(150):
            driver.opt.begin_step(step, driver.draw, method.batches_per_step() - 1)
            method.train_step(_pick(images, labels, 16), driver.opt)
        method.eval()
        generator = torch.Generator().manual_seed(9)
        samples = [method.sample(32, generator, label=k).flatten(1) for k in (0, 1)]
        return sum(float(torch.cdist(s, s, p=1).mean()) for s in samples) / 2 / samples[0].shape[1]  # mean |x_i - x_j| per pixel

    plain, seeking = spread(0.0), spread(1.0)
    print(f"same-class spread per pixel: plain {plain:.3f}, mode seeking {seeking:.3f}")
    assert seeking > 2 * plain


def _pick(images: torch.Tensor, labels: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    i = torch.randint(images.shape[0], (n,))
    return {keys.IMAGE: images[i], keys.LABEL: labels[i]}


# -- refusals ---------------------------------------------------------------------------


REFUSED = [
    ({"loss": "wgan", "label_smoothing": 0.9}, "model.label_smoothing"),
    ({"loss": "wgan-gp", "label_smoothing": 0.9}, "model.label_smoothing"),
    ({"loss": "wgan", "gp_weight": 10}, "model.gp_weight"),
    ({"loss": "wgan-gp", "clip_value": 0.01}, "model.clip_value"),
    ({"loss": "wgan-gp", "d_norm": "batch"}, "model.d_norm"),
    ({"loss": "wgan-gp", "d_norm": "virtual_batch"}, "model.d_norm"),
    ({"loss": "wgan-gp", "minibatch_kernels": 8}, "model.minibatch_kernels"),
    ({"loss": "wgan", "beta1": 0.5}, "model.beta1"),
    ({"optimizer": "rmsprop", "beta2": 0.9}, "model.beta2"),
    ({"architecture": "dcgan", "g_norm": "layer"}, "model.g_norm"),
    ({"loss": "wgan", "feature_matching": True}, "model.feature_matching"),
    ({"feature_matching": True, "unrolled": {"steps": 3}}, "model.unrolled"),
    ({"loss": "wgan-gp", "unrolled": {"steps": 3}}, "model.unrolled.first_order"),
    ({"checkpoint_swap": {"every": 5, "duration": 5}}, "model.checkpoint_swap.duration"),
    ({"loss": "wgan", "unrolled": {"steps": 3, "optimizer": "adam"}}, "model.unrolled.optimizer"),
    ({"loss": "bogus"}, "model.loss"),  # hinge is a loss since issue 22
    ({"d_steps": 0}, "model.d_steps"),
    ({"loss": "wgan-gp", "pack": 2}, "model.pack"),
    ({"conditional": True, "pack": 2}, "model.pack"),
    ({"d_conditioning": "projection"}, "model.d_conditioning"),  # nothing to condition on
    ({"architecture": "mlp", "conditional": True, "d_conditioning": "projection"}, "model.d_conditioning"),
    ({"conditional": True, "d_conditioning": "bilinear"}, "model.d_conditioning"),
    ({"d_conditioning": "auxiliary"}, "model.d_conditioning"),
    ({"conditional": True, "d_conditioning": "auxiliary", "feature_matching": True}, "model.feature_matching"),
    ({"conditional": True, "d_conditioning": "auxiliary", "unrolled": {"steps": 2}}, "model.unrolled"),
    ({"conditional": True, "d_conditioning": "auxiliary", "info_codes": {"categorical": 2}}, "model.info_codes"),
    ({"conditional": True, "d_conditioning": "auxiliary", "aux_class_weight": 0}, "model.aux_class_weight"),
    ({"mode_seeking": 1.0, "unrolled": {"steps": 2}}, "model.mode_seeking"),
    ({"mode_seeking": -1.0}, "model.mode_seeking"),
    ({"d_norm": "virtual_batch", "pack": 2}, "model.pack"),
    ({"pack": 0}, "model.pack"),
    ({"g_norm": "virtual_batch", "latent_mixture": {"components": 10}}, "model.latent_mixture"),
    ({"latent_mixture": {"components": 1}}, "model.latent_mixture.components"),
]


def _run_config(model: dict[str, Any], source: str, out: Path, uri: str = "sqlite:///:memory:", **train_kw: Any) -> dict[str, Any]:
    return {
        "method": "gan",
        "seed": 1,
        "data": {"source": source, "layout": "2d", "size": [16, 16], "modality": "CT", "foreground_fraction": 0.0},
        "model": {**TINY_DCGAN, **model},
        "train": {"steps": 4, "batch_size": 4, "log_every": 2, "eval_every": 100, "checkpoint_every": 100, "eval_items": 8, **train_kw},
        "tracking": {"uri": uri, "experiment": "gan-tests", "log_model": False},
        "output_dir": str(out),
    }


@pytest.mark.parametrize(("model", "key"), REFUSED)
def test_nonsense_combinations_are_refused_naming_the_key(model: dict[str, Any], key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(_run_config(model, "x.csv", tmp_path), "run.yaml")
    assert err.value.key == key and str(err.value).startswith(f"run.yaml: {key}: ")


def test_refusal_exits_2_with_file_and_key(tmp_path: Path) -> None:
    path = _write_config(tmp_path, _run_config({"loss": "wgan", "label_smoothing": 0.9}, "x.csv", tmp_path / "run"))
    proc = _udl_med("train", str(path))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "model.label_smoothing" in lines[0] and "Wasserstein" in lines[0]


def test_defaults_follow_the_papers() -> None:
    dcgan, wgan, gp = GANConfig(), GANConfig(loss="wgan"), GANConfig(loss="wgan-gp")
    assert (dcgan.optimizer, dcgan.lr, dcgan.beta1, dcgan.d_steps, dcgan.g_norm, dcgan.d_norm) == ("adam", 2e-4, 0.5, 1, "batch", "batch")
    assert (wgan.optimizer, wgan.lr, wgan.d_steps, wgan.clip_value, wgan.gp_weight) == ("rmsprop", 5e-5, 5, 0.01, None)
    assert (gp.optimizer, gp.lr, gp.beta1, gp.beta2, gp.d_steps, gp.gp_weight, gp.d_norm) == ("adam", 1e-4, 0.0, 0.9, 5, 10.0, "none")
    assert GANConfig(**GANConfig(loss="wgan").model_dump()) == wgan  # resolved values survive a save and reload


def test_conditional_without_labels_and_dcgan_on_points_are_refused() -> None:
    with pytest.raises(ConfigError, match="model.conditional"):
        build({**TINY_DCGAN, "conditional": True}, spec(2, num_classes=0))
    with pytest.raises(ConfigError, match="model.architecture"):
        build(TINY_DCGAN, spec(0))
    with pytest.raises(ValueError, match="unconditional"):
        build(TINY_DCGAN, spec(2)).sample(2, label=1)
    with pytest.raises(ValueError, match="out of range"):
        build({**TINY_DCGAN, "conditional": True}, spec(2, num_classes=3)).sample(2, label=3)


IMAGE_CONFIGS = ["dcgan-tiny.yaml", "dcgan2d-ct-phantom.yaml", "dcgan2d-mr-phantom.yaml", "dcgan3d-phantom.yaml", "wgangp2d-phantom.yaml", "cdcgan2d-lesion.yaml"]


@pytest.mark.parametrize("name", IMAGE_CONFIGS)
def test_shipped_image_configs_build_and_step(name: str) -> None:
    run = load_config(CONFIGS / name)
    assert run.method == "gan" and run.train.sample_eval is not None
    data = DataSpec(
        spatial_dims=run.data.spatial_dims, in_channels=run.data.in_channels, image_size=tuple(run.data.size), num_classes=3 if run.data.labeled else 0
    )
    assert run.model.conditional == run.data.labeled
    torch.manual_seed(0)
    method = GAN(run.model, data)
    losses = Driver(method, data, n=2)()
    assert all(math.isfinite(v) for v in losses.values())


# -- through the engine -------------------------------------------------------------------


def _checkpoint_model(run_dir: Path) -> dict[str, Any]:
    """The checkpoint's method state; the checkpoint-swap history decoded (its serialised bytes may differ)."""
    import io

    state = dict(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"])
    for key in [k for k in state if k.endswith("swap_history._extra_state")]:
        state[key] = torch.load(io.BytesIO(state[key].numpy().tobytes()), weights_only=True)
    return state


def _equal_states(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def same(x, y) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and torch.equal(x, y)
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(same(p, q) for p, q in zip(x, y))
        return x == y

    return same(a, b)


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical_with_d_steps_and_vbn(phantom_manifest: Path, tmp_path: Path, tracking_uri: str) -> None:
    model = {
        "d_steps": 2,
        "g_norm": "virtual_batch",
        "d_norm": "virtual_batch",
        "vbn_reference": 4,
        "replay": 6,
        "historical_averaging": 0.01,
        "checkpoint_swap": {"every": 6, "duration": 3},
    }
    steps = 80
    reference = train(_run_config(model, str(phantom_manifest), tmp_path / "reference", tracking_uri, steps=steps, checkpoint_every=4))
    path = _write_config(tmp_path, _run_config(model, str(phantom_manifest), tmp_path / "killed", tracking_uri, steps=steps, checkpoint_every=4))
    report = kill_and_resume(path, tmp_path / "killed" / "checkpoints" / "last.pt", steps)
    ours, theirs = _final_state(report["model_dir"]), _final_state(reference["model_dir"])
    assert ours.keys() == theirs.keys() and any("generator" in k for k in ours)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # D, the pool, the averages and the VBN references too
    assert _equal_states(_checkpoint_model(tmp_path / "killed"), _checkpoint_model(tmp_path / "reference"))


def test_vbn_generator_with_ema_and_swap_trains_and_its_model_file_samples(tmp_path: Path, tracking_uri: str) -> None:
    """In-memory data; the model file keeps G with its VBN reference z; EMA swaps the whole state dict in and out."""
    from udl_med.data.memory import TensorItems
    from udl_med.engine.model_io import load_model

    torch.manual_seed(0)
    images = torch.rand(64, 1, 16, 16) * 2 - 1
    config = {
        "method": "gan",
        "seed": 0,
        "data": {"kind": "memory"},
        "model": {**TINY_DCGAN, "g_norm": "virtual_batch", "d_norm": "virtual_batch", "vbn_reference": 4, "checkpoint_swap": {"every": 3, "duration": 1}},
        "train": {"steps": 8, "batch_size": 8, "ema_decay": 0.9, "eval_every": 4, "checkpoint_every": 4, "sample_eval": {"every": 4, "n": 16}},
        "tracking": {"uri": tracking_uri, "experiment": "gan-tests", "log_model": False},
        "output_dir": str(tmp_path / "run"),
    }
    report = train(config, datasets=(TensorItems(images), TensorItems(images[:32])))
    assert math.isfinite(report["eval/fid"])
    method = load_model(report["model_dir"]).method
    reference = _checkpoint_model(tmp_path / "run")["generator.reference_x"]
    assert torch.equal(method.generator.reference_x, reference) and reference.abs().sum() > 0  # the drawn z, not the placeholder
    first, again = method.sample(3, torch.Generator().manual_seed(0)), method.sample(3, torch.Generator().manual_seed(0))
    assert first.shape == (3, 1, 16, 16) and torch.equal(first, again)


@pytest.mark.slow
def test_sample_label_on_an_unconditional_gan_exits_2(phantom_manifest: Path, tmp_path: Path, tracking_uri: str) -> None:
    report = train(_run_config({}, str(phantom_manifest), tmp_path / "run", tracking_uri, steps=2))
    state = _final_state(report["model_dir"])
    assert state and all(k.startswith("generator.") for k in state)  # the model file keeps G only
    proc = _udl_med("sample", report["model_dir"], "--n", "2", "--out", str(tmp_path / "samples"), "--label", "1")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert len(err.strip().splitlines()) == 1
    proc = _udl_med("sample", report["model_dir"], "--n", "2", "--out", str(tmp_path / "samples"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert (tmp_path / "samples" / "samples.png").exists()


@pytest.mark.slow
def test_dcgan_on_phantom_slices_lowers_its_fid(phantom_manifest: Path, tmp_path: Path, tracking_uri: str) -> None:
    from udl_med.data.datasets import build_dataset, data_spec
    from udl_med.engine.config import SampleEvalConfig
    from udl_med.engine.sample_eval import SampleEvaluator

    config = yaml.safe_load((CONFIGS / "dcgan-tiny.yaml").read_text())
    config["data"]["source"] = str(phantom_manifest)
    config["train"].update(steps=300, sample_eval={"every": 150, "n": 128}, eval_every=150, checkpoint_every=300, threads=1)
    config["tracking"] = {"uri": tracking_uri, "experiment": "gan-tests", "log_model": False}
    config["output_dir"] = str(tmp_path / "run")
    run = validate_config(config)
    torch.manual_seed(run.seed)
    untrained = GAN(run.model, data_spec(run.data, build_dataset(run.data, run.data.split))).eval()
    evaluator = SampleEvaluator(SampleEvalConfig(every=1, n=128), build_dataset(run.data, run.data.eval_split), 2)
    fid_start = evaluator(untrained)["fid"]
    report = train(run)
    history = [m.value for m in mlflow.MlflowClient(tracking_uri).get_metric_history(report["run_id"], "eval/fid")]
    print(f"FID at step 0: {fid_start:.2f}, during training: {[round(v, 2) for v in history]}")
    assert len(history) == 2 and history[-1] < 0.2 * fid_start


def _two_class_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 images: a bright square in the left half (class 0) or the right half (class 1), random row, noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, (n,), generator=g)
    images = torch.full((n, 1, 16, 16), -1.0)
    rows = torch.randint(0, 11, (n,), generator=g)
    cols = torch.randint(0, 3, (n,), generator=g) + 8 * labels
    for i in range(n):
        images[i, 0, rows[i] : rows[i] + 5, cols[i] : cols[i] + 5] = 1.0
    return (images + 0.05 * torch.randn(images.shape, generator=g)).clamp(-1, 1), labels


@pytest.mark.slow
@pytest.mark.parametrize("conditioning", ["concat", "auxiliary"])
def test_conditional_samples_are_classified_as_their_class(conditioning: str, tmp_path: Path, tracking_uri: str) -> None:
    from sklearn.linear_model import LogisticRegression

    from udl_med.data.memory import TensorItems
    from udl_med.engine.model_io import load_model

    x_train, y_train = _two_class_images(512, 0)
    x_eval, y_eval = _two_class_images(64, 1)
    config = {
        "method": "gan",
        "seed": 0,
        "data": {"kind": "memory"},
        "model": {**TINY_DCGAN, "g_channels": [32, 16], "d_channels": [16, 32], "latent_dim": 16, "conditional": True, "d_conditioning": conditioning, "lr": 5e-4},
        "train": {"steps": 400, "batch_size": 32, "log_every": 50, "eval_every": 400, "checkpoint_every": 400, "threads": 1},
        "tracking": {"uri": tracking_uri, "experiment": "gan-tests", "log_model": False},
        "output_dir": str(tmp_path / "run"),
    }
    report = train(config, datasets=(TensorItems(x_train, y_train), TensorItems(x_eval, y_eval)))
    classifier = LogisticRegression(max_iter=2000).fit(x_train.flatten(1).numpy(), y_train.numpy())
    assert classifier.score(x_eval.flatten(1).numpy(), y_eval.numpy()) > 0.95  # the classifier itself works
    method = load_model(report["model_dir"]).method
    generator = torch.Generator().manual_seed(5)
    correct = 0
    for k in (0, 1):
        samples = method.sample(100, generator, label=k)
        correct += int((classifier.predict(samples.flatten(1).numpy()) == k).sum())
    accuracy = correct / 200
    print(f"conditional samples ({conditioning}) classified as their class: {accuracy:.3f} (chance 0.5)")
    assert accuracy > 0.8


# -- the optimal discriminator ---------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [1.0, 0.9])
def test_trained_discriminator_approaches_the_optimal_one(smoothing: float) -> None:
    """p_data = N(0, 1), p_model = N(1, 1) fixed: D* = alpha p_data / (p_data + p_model) (Goodfellow prop. 1).

    Only D trains (an MLP on (B, 1) points, the method's non-saturating loss, real target
    alpha = ``smoothing``); the model's samples play the fakes of a frozen generator.
    """
    from udl_med.nets.mlp_gan import MLPDiscriminator

    torch.manual_seed(0)
    disc = MLPDiscriminator(1, hidden=(32, 32))
    loss = GANLoss("non-saturating", real_label=smoothing)
    opt = torch.optim.Adam(disc.parameters(), lr=2e-3)
    for step in range(1500):
        real, fake = torch.randn(512, 1), torch.randn(512, 1) + 1.0
        d_loss = loss.discriminator_loss(disc(real), disc(fake))
        opt.zero_grad()
        d_loss.backward()
        opt.step()
    grid = torch.linspace(-2.0, 3.0, 201)[:, None]  # where both densities have mass
    normal = torch.distributions.Normal(0.0, 1.0)
    p_data, p_model = normal.log_prob(grid).exp(), normal.log_prob(grid - 1.0).exp()
    optimal = smoothing * p_data / (p_data + p_model)
    with torch.no_grad():
        trained = torch.sigmoid(disc(grid))
    gap = (trained - optimal).abs().max().item()
    print(f"optimal discriminator (real target {smoothing}): max |D(x) - D*(x)| over [-2, 3] = {gap:.4f}")
    assert gap < 0.05
