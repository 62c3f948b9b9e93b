"""The D side every adversarial method shares: augmentation of what D sees, ADA's p, R1, spectral norm, hinge, G's EMA, the data.augment refusal."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from udl_med import keys
from udl_med.engine.config import validate_config
from udl_med.errors import ConfigError
from udl_med.losses.gan import GANLoss
from udl_med.methods.adversarial import Adversary
from udl_med.methods.base import DataSpec, get_method
from udl_med.nets.ada import AdaptiveAugment
from udl_med.nets.diffaugment import DiffAugment
from tests.methods.multiscale_testkit import HandOpt as _HandOpt


class HandOpt(_HandOpt):
    """The test kit's optimisation object plus ``optimizer(name)`` (``gan`` reads D's optimizer)."""

    def optimizer(self, name: str) -> torch.optim.Optimizer:
        return self.optimizers[name]

# method -> (tiny model keys, data spec, batch keys)
TINY: dict[str, tuple[dict[str, Any], str]] = {
    "gan": ({"latent_dim": 8, "g_channels": (8, 4), "d_channels": (4, 8), "conditional": True}, "image"),
    "lapgan": ({"levels": 2, "latent_dim": 8, "coarse_channels": (8,), "fine_channels": 4, "fine_blocks": 1, "disc_channels": (4,), "conditional": True}, "image"),
    "two_stage_gan": ({"latent_dim": 8, "stage1_channels": (8,), "stage2_channels": 8, "stage2_blocks": 1, "disc2_channels": (4,), "embed_dim": 4, "stage1_steps": 1}, "image"),
    "semi_supervised_gan": ({"d_channels": (4, 8), "g_channels": (8, 4), "latent_dim": 8, "generator_objective": "non_saturating"}, "semi"),
    "cyclegan": ({"channels": 4, "num_downsample": 1, "num_res_blocks": 1, "disc_channels": 4, "disc_layers": 2, "pool_size": 0}, "pair"),
    "pix2pix": ({"channels": (4, 8), "strides": (2,), "disc_channels": 4, "disc_layers": 2, "direction": "ct2mr"}, "pair"),
}


def _build(name: str, spatial_dims: int = 2, **keys_: Any):
    model, _ = TINY[name]
    cls = get_method(name)
    spec = DataSpec(spatial_dims=spatial_dims, in_channels=1, image_size=(16,) * spatial_dims, num_classes=3)
    return cls(cls.Config(**{**model, **keys_}), spec)


def _batch(name: str, spatial_dims: int = 2, n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)

    def img() -> torch.Tensor:
        return torch.rand(n, 1, *([16] * spatial_dims), generator=g) * 2 - 1

    kind = TINY[name][1]
    if kind == "pair":
        return {keys.CT: img(), keys.MR: img()}
    out = {keys.IMAGE: img(), keys.LABEL: torch.arange(n) % 3}
    if kind == "semi":
        out[keys.UNLABELED_IMAGE] = img()
    return out


def _discriminators(method: torch.nn.Module) -> list[torch.nn.Module]:
    names = ("discriminator", "coarse_discriminator", "discriminators", "d1", "d2", "d_ct", "d_mr")
    out = []
    for n in names:
        m = getattr(method, n, None)
        if isinstance(m, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            out += list(m.values()) if isinstance(m, torch.nn.ModuleDict) else list(m)
        elif m is not None:
            out.append(m)
    return out


# -- the augmentation reaches every method ---------------------------------------------------


@pytest.mark.parametrize("name", list(TINY))
def test_every_adversarial_method_augments_what_its_d_sees_and_logs_ada_p(name: str) -> None:
    """With ADA at a fixed p = 1 (cutout only), every D input in a training step has a cut-out box of zeros; without, none has."""
    seen: list[torch.Tensor] = []

    def spy(module, args):
        seen.append(args[0].detach())

    for d_augment, expect in (("none", False), ("ada", True)):
        torch.manual_seed(0)
        extra = {"d_augment": "ada", "d_augment_policy": ["cutout"], "ada_target": None, "ada_p": 1.0} if d_augment == "ada" else {}
        method = _build(name, **extra)
        opt = HandOpt(method.configure_optimizers())
        seen.clear()
        if name == "semi_supervised_gan":  # the adversary scores K+1's D through gan_logits (its labeled batch goes through forward, unaugmented)
            logits = method.discriminator.gan_logits
            method.discriminator.gan_logits = lambda x: (seen.append(x.detach()), logits(x))[1]
            hooks = []
        else:
            hooks = [d.register_forward_pre_hook(spy) for d in _discriminators(method)]
        out = method.train_step(_batch(name), opt)
        for h in hooks:
            h.remove()
        adversarial = seen[:]
        assert adversarial
        # a cut-out box of half the size filled with 0, clipped at worst to a quarter of it: (size / 4)^d exact zeros per item
        enough = [bool(((x[:, :1] == 0).flatten(1).sum(1) >= (x.shape[-1] // 4) ** (x.ndim - 2)).all()) for x in adversarial]
        assert all(enough) == expect, (d_augment, enough)
        assert (keys.ADA_P in out) == expect
        if expect:
            assert float(out[keys.ADA_P]) == 1.0


def test_pix2pix_augments_source_and_target_with_one_draw() -> None:
    method = _build("pix2pix", d_augment="diffaugment", d_augment_policy=["translation"])
    seen: list[torch.Tensor] = []
    method.discriminators["ct2mr"].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    batch = _batch("pix2pix")
    batch[keys.MR] = batch[keys.CT].clone()  # target == source: a shared draw keeps the two channels equal
    method.train_step(batch, HandOpt(method.configure_optimizers()))
    real_pairs = seen[0][:4]
    torch.testing.assert_close(real_pairs[:, 0], real_pairs[:, 1], rtol=0, atol=0)
    assert not torch.equal(real_pairs[:, :1], batch[keys.CT])


def test_generator_gradient_flows_through_the_augmentation() -> None:
    adversary = Adversary(GANLoss("non-saturating"), augment=DiffAugment())
    fake = torch.randn(4, 1, 8, 8, requires_grad=True)
    w = torch.randn(1, 1, 8, 8)
    loss = adversary.generator_loss(lambda x, labels=None: (x * w).flatten(1).sum(1), fake)
    (grad,) = torch.autograd.grad(loss, fake)
    assert grad.abs().sum() > 0


# -- ADA's p -------------------------------------------------------------------------------


def _ada_game(memorise: bool, steps: int = 80) -> tuple[AdaptiveAugment, float]:
    """D trained from p = 0.3 against a fixed G: fakes that are faint copies of 4 reals D can memorise (D wins), or the reals themselves (it cannot).

    Returns ADA and the mean r_t over the last half of the steps (one step's r_t is the sign of 4 scores: noisy).
    """
    torch.manual_seed(0)
    reals = torch.rand(4, 1, 8, 8) * 2 - 1
    d = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 1))
    ada = AdaptiveAugment(("translation", "noise"), p=0.3, target=0.6, interval=1, kimg=0.4)  # 4 images a step: p moves 0.01
    adversary = Adversary(GANLoss("non-saturating"), augment=ada)
    optimizer = torch.optim.Adam(d.parameters(), lr=1e-2)
    rts = []
    for step in range(1, steps + 1):
        fake = reals[torch.randperm(4)] * (0.2 if memorise else 1.0)
        parts = adversary.discriminator_loss(lambda x, labels=None: d(x), reals, fake, step=step)
        optimizer.zero_grad()
        parts.loss.backward()
        optimizer.step()
        rts.append(float(ada.rt))
    return ada, sum(rts[steps // 2 :]) / (steps - steps // 2)


def test_ada_p_rises_when_d_memorises_and_falls_when_it_cannot() -> None:
    (overfit, overfit_rt), (fooled, fooled_rt) = _ada_game(memorise=True), _ada_game(memorise=False)
    assert float(overfit.p) > 0.4 and overfit_rt > 0.6
    assert float(fooled.p) < 0.1 and fooled_rt < 0.6  # from 0.3: r_t stayed below the target (a D that cannot tell scores about 0, so one batch's last r_t is noise)


def test_ada_keys_change_the_pipeline() -> None:
    cls = get_method("gan").Config
    ada = cls(d_augment="ada", ada_p=0.25, ada_target=0.7, ada_interval=3, ada_kimg=5.0, d_augment_policy=["flip", "noise"]).augmenter()
    assert (float(ada.p), ada.target, ada.interval, ada.kimg, ada.policy) == (0.25, 0.7, 3, 5.0, ("flip", "noise"))
    assert cls(d_augment="ada").augmenter().policy == ("translation", "scaling", "rotation", "intensity", "noise", "cutout")
    assert cls(d_augment="diffaugment", d_augment_policy=["cutout"]).augmenter().policy == ("cutout",)
    assert cls().augmenter() is None


# -- R1, hinge, spectral norm --------------------------------------------------------------


def test_r1_matches_a_hand_computation_and_is_lazy() -> None:
    """D(x) = sum(w x) + a sum(x^2): grad_x D = w + 2 a x, R1 = E ||w + 2 a x||^2; added as gamma/2 * every * R1 at steps divisible by every."""
    torch.manual_seed(0)
    w, a = torch.randn(1, 2, 3, 3), 0.7
    critic = lambda x, labels=None: (w * x).flatten(1).sum(1) + a * x.square().flatten(1).sum(1)  # noqa: E731
    real, fake = torch.randn(5, 2, 3, 3), torch.randn(5, 2, 3, 3)
    adversary = Adversary(GANLoss("non-saturating"), r1_weight=8.0, r1_every=4)
    hand = (w + 2 * a * real).flatten(1).square().sum(1).mean()
    due = adversary.discriminator_loss(critic, real, fake, step=8)
    torch.testing.assert_close(due.r1, hand)
    torch.testing.assert_close(due.loss - due.adversarial, 8.0 / 2 * 4 * hand)
    later = adversary.discriminator_loss(critic, real, fake, step=9)
    assert later.r1 is None and torch.equal(later.loss, later.adversarial)
    assert adversary.discriminator_loss(critic, real, fake).r1 is None  # no step: simulated updates carry no R1
    # R1 trains D: its gradient reaches D's parameters
    lin = torch.nn.Linear(18, 1)
    parts = adversary.discriminator_loss(lambda x, labels=None: lin(x.flatten(1)).square(), real, fake, step=0)
    parts.loss.backward()
    assert lin.weight.grad is not None and parts.r1 > 0


def test_r1_keys_reach_the_adversary() -> None:
    method = _build("gan", r1_weight=4.0, r1_every=2)
    assert (method.adversary.r1_weight, method.adversary.r1_every) == (4.0, 2)
    opt = HandOpt(method.configure_optimizers())
    assert keys.R1 in method.train_step(_batch("gan"), opt)  # step 0: due
    opt.global_step = 1
    assert keys.R1 not in method.train_step(_batch("gan"), opt)


def test_hinge_loss_values() -> None:
    loss = GANLoss("hinge")
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    torch.testing.assert_close(loss.discriminator_loss(real, fake), torch.tensor((0 + 0.5 + 2) / 3 + (0 + 1 + 2.5) / 3))
    torch.testing.assert_close(loss.generator_loss(fake), -fake.mean())
    method = _build("gan", loss="hinge")
    assert method.adversary.objective.mode == "hinge"
    with pytest.raises(ValidationError, match="label_smoothing"):
        get_method("lapgan").Config(gan_mode="hinge", label_smoothing=0.9)


@pytest.mark.parametrize("name", ["gan", "lapgan", "two_stage_gan", "cyclegan", "pix2pix"])
def test_spectral_norm_normalises_every_d_layer(name: str) -> None:
    plain = _build(name)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for d in _discriminators(plain) for m in d.modules())
    method = _build(name, spectral_norm=True)
    layers = [m for d in _discriminators(method) for m in d.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in layers)
    for d in _discriminators(method):
        d.train()
    batch = _batch(name)
    opt = HandOpt(method.configure_optimizers())
    for step in range(3):
        opt.global_step = step
        method.train_step(batch, opt)
    for m in layers:  # W / sigma(W): the largest singular value of the weight used is about 1
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.15), (m, float(sigma))


def test_spectral_norm_refused_where_the_export_needs_plain_weights() -> None:
    with pytest.raises(ValidationError, match="spectral_norm"):
        get_method("semi_supervised_gan").Config(spectral_norm=True)


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys_", "where"),
    [
        ({"ada_p": 0.3}, "ada_p"),
        ({"d_augment": "diffaugment", "ada_target": 0.5}, "ada_target"),
        ({"d_augment_policy": ["cutout"]}, "d_augment_policy"),
        ({"d_augment": "diffaugment", "d_augment_policy": ["flip"]}, "d_augment_policy.0"),
        ({"d_augment": "ada", "d_augment_policy": ["rotation", "hue"]}, "d_augment_policy.1"),
        ({"d_augment": "ada", "ada_target": None}, "ada_target"),
        ({"r1_every": 4}, "r1_every"),
        ({"loss": "wgan-gp", "r1_weight": 1.0}, "r1_weight"),
        ({"loss": "wgan", "d_augment": "ada"}, "ada_target"),
        ({"d_augment": "mixup"}, "d_augment"),
        ({"ada_interval": 0, "d_augment": "ada"}, "ada_interval"),
    ],
)
def test_nonsense_is_refused_naming_the_key(keys_: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as err:
        get_method("gan").Config(**keys_)
    assert ".".join(str(p) for p in err.value.errors()[0]["loc"]) == where


def test_a_saved_config_with_every_key_loads_again() -> None:
    cls = get_method("gan").Config
    for config in (cls(), cls(d_augment="ada", ada_target=None, ada_p=0.3), cls(d_augment="diffaugment", r1_weight=2.0, r1_every=8)):
        assert cls(**config.model_dump(mode="json")) == config


def _run(method: str, model: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    return {"method": method, "data": {"source": "x.csv", **data}, "model": model}


@pytest.mark.parametrize("name", ["gan", "lapgan", "two_stage_gan"])
def test_data_augment_is_refused_for_a_generator_naming_the_key(name: str) -> None:
    augment = [{"RandFlipd": {"prob": 0.5}}]
    with pytest.raises(ConfigError) as err:
        validate_config(_run(name, {}, {"augment": augment}), "run.yaml")
    assert err.value.key == "data.augment" and "model.d_augment" in err.value.problem and "run.yaml" in str(err.value)
    validate_config(_run(name, {"d_augment": "diffaugment"}, {}), "run.yaml")  # the D-side augmentation instead


def test_translators_keep_data_augment() -> None:
    augment = [{"RandFlipd": {"prob": 0.5}}]
    for name in ("pix2pix", "cyclegan"):
        validate_config(_run(name, {}, {"augment": augment, "pairing": "paired" if name == "pix2pix" else "unpaired"}), "run.yaml")


# -- G's EMA where a method lacked it -------------------------------------------------------


@pytest.mark.parametrize(("name", "modules"), [("lapgan", ("coarse_generator", "generators")), ("two_stage_gan", ("g1", "ca1", "g2", "ca2"))])
def test_generators_have_an_ema_for_sampling(name: str, modules: tuple[str, ...]) -> None:
    from udl_med.engine.optimization import EMA

    method = _build(name)
    assert get_method(name).ema_modules == modules
    ema = EMA(method, method.ema_modules, 0.5)
    ema.update(method)  # the first update copies the weights
    with torch.no_grad():
        for p in method.parameters():
            p.add_(1.0)
    ema.update(method)
    averaged, live = ema.averaged_state(method), method.state_dict()
    moved = [k for k in averaged if k.startswith(modules[0] + ".") and k in dict(method.named_parameters())]
    assert moved and all(torch.allclose(averaged[k], live[k] - 0.5) for k in moved)
