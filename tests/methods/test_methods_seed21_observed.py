"""What the methods samples of seeds 20 and 21 (issue 26) left open, observed in the methods' own steps.

- The two-stage GAN's four Adams take the configured betas.
- The unrolled look-ahead continues D's real Adam moments: G's loss in a step is the loss
  computed from D's optimizer state, not from zero moments.
- WGAN's clip reaches the unrolled copy of D: G's loss is scored by a copy clipped after
  its inner step, computed here by hand.

(Historical averaging below weight 1 is observed in ``test_gan_tricks_observed.py``.)

Seed 22: G's steps of LAPGAN and the two-stage GAN leave D's gradients as D's own step
left them (D is frozen while G's loss back-propagates through it).
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.methods.multiscale_testkit import HandOpt, batch
from tests.methods.test_gan import TINY_MLP, Driver, build, spec
from tests.methods.test_lapgan import _method as lapgan
from tests.methods.test_two_stage_gan import _method as two_stage
from udl_med import keys


def test_the_two_stage_gans_adams_take_the_configured_betas() -> None:
    method = two_stage(2, beta1=0.3, beta2=0.95)
    optimizers = method.configure_optimizers()
    assert sorted(optimizers) == ["d1", "d2", "g1", "g2"]
    for name, opt in optimizers.items():
        assert isinstance(opt, torch.optim.Adam), name
        assert [tuple(g["betas"]) for g in opt.param_groups] == [(0.3, 0.95)], name


def test_unrolled_adam_continues_the_moments_of_ds_optimizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """G's loss in a step equals the unrolled loss from D's optimizer state after that step's D update."""
    torch.manual_seed(0)
    data = spec(0)
    method = build({**TINY_MLP, "unrolled": {"steps": 2, "optimizer": "adam", "lr": 0.05}, "lr": 0.01}, data)
    driver = Driver(method, data)
    original = method.generator_loss
    seen: list[tuple[float, float]] = []

    def spy(real, labels, fm_batch=None, d_optimizer=None):
        state = torch.get_rng_state()
        with_moments = original(real, labels, fm_batch, driver.opt.optimizer("d"))
        torch.set_rng_state(state)
        zero_moments = original(real, labels, fm_batch, None)
        torch.set_rng_state(state)
        seen.append((float(with_moments.detach()), float(zero_moments.detach())))
        return original(real, labels, fm_batch, d_optimizer)

    monkeypatch.setattr(method, "generator_loss", spy)
    for _ in range(3):
        out = driver()
        with_moments, zero_moments = seen[-1]
        assert out[keys.LOSS_G] == pytest.approx(with_moments, rel=1e-6, abs=1e-7)
        assert abs(with_moments - zero_moments) > 1e-4  # D's moments change the look-ahead


def test_wgans_clip_reaches_the_unrolled_copy_of_d() -> None:
    """G's unrolled loss equals a hand look-ahead: one SGD step of a copy of D on the WGAN loss, clipped to [-c, c]."""
    c, lr = 0.05, 0.5
    torch.manual_seed(0)
    data = spec(0)
    method = build({**TINY_MLP, "loss": "wgan", "clip_value": c, "d_norm": "none", "unrolled": {"steps": 1, "lr": lr}}, data)
    driver = Driver(method, data)
    driver()  # D's weights clipped by a real step
    real = torch.randn(8, 2) + 1.0

    torch.manual_seed(1)
    loss = method.generator_loss(real, None)

    torch.manual_seed(1)
    fake = method.generator(method.prior.draw(8), None)
    ahead = copy.deepcopy(method.discriminator)
    inner = ahead(fake.detach(), None).mean() - ahead(real, None).mean()  # WGAN's critic loss
    grads = torch.autograd.grad(inner, list(ahead.parameters()))
    unclipped = 0.0
    with torch.no_grad():
        for p, g in zip(ahead.parameters(), grads):
            p.sub_(lr * g)
            unclipped = max(unclipped, float(p.abs().max()))
            p.clamp_(-c, c)
    assert unclipped > 1.5 * c  # the inner step leaves [-c, c]: the clip matters
    expected = -ahead(fake, None).mean()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5, abs=1e-7)


class _WatchDGrads(HandOpt):
    """:class:`HandOpt` that records, after every step, the gradients held by the D optimizers' parameters."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        super().__init__(optimizers)
        self.d_grads: list[list[torch.Tensor | None]] = []

    def step(self, name: str, loss: torch.Tensor, retain_graph: bool = False) -> None:
        super().step(name, loss, retain_graph)
        params = [p for n, o in self.optimizers.items() if n.startswith("d") for g in o.param_groups for p in g["params"]]
        self.d_grads.append([None if p.grad is None else p.grad.clone() for p in params])


@pytest.mark.parametrize("name", ["lapgan", "two_stage_gan"])
def test_g_steps_leave_ds_gradients_as_ds_step_left_them(name: str) -> None:
    method = lapgan(2, schedule="joint") if name == "lapgan" else two_stage(2)
    opt = _WatchDGrads(method.configure_optimizers())
    method.train()
    method.train_step(batch(2, 16), opt)
    assert opt.stepped[0].startswith("d") and len(opt.stepped) >= 2
    for (before, after), (d_name, g_name) in zip(zip(opt.d_grads[::2], opt.d_grads[1::2]), zip(opt.stepped[::2], opt.stepped[1::2])):
        assert d_name.startswith("d") and g_name.startswith("g"), opt.stepped
        assert any(b is not None for b in before)  # D's own step left gradients
        assert all((b is None and a is None) or torch.equal(a, b) for a, b in zip(before, after)), g_name
