"""Each trick swapped for a no-op must make a test fail (issue 26, "How it is checked").

An audit ran the suite with tricks replaced in memory by no-ops and the suite stayed
green. This script repeats those swaps: for each one it runs the given test files once
with the swap applied (a pytest plugin, this module, patches the code at start-up) and
reports whether at least one test failed; a swap that leaves them green is a test gap.
The same files must pass without any swap (the ``none`` row).

    .venv/bin/python benchmarks/noop_swaps.py            # every swap, one JSON row each
    .venv/bin/python benchmarks/noop_swaps.py pool_identity

Row: ``ours`` is 1.0 when the swap makes the tests fail (0.0 when they stay green; for
``none``, 1.0 when they pass), ``goal`` 1.0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = "UDL_MED_NOOP_SWAP"

LOSSES = "tests/losses/test_losses_observed.py"
TRICKS = "tests/methods/test_gan_tricks_observed.py"
MULTISCALE = "tests/methods/test_multiscale_observed.py"
KPLUS1 = "tests/methods/test_kplus1_generator_objective.py"
VBN = "tests/nets/test_vbn_reference_observed.py"


def _wrap_init(cls: type, **forced) -> None:
    """``cls(config, data)`` builds from ``config`` with the keys ``forced`` (the key ignored)."""
    original = cls.__init__

    def init(self, config, data):
        original(self, config.model_copy(update=forced), data)

    cls.__init__ = init


def pool_identity() -> None:
    from udl_med.losses.image_pool import ImagePool

    ImagePool.query = lambda self, images: images


def joint_ignored() -> None:
    from udl_med.methods.adversarial import Adversary

    original = Adversary.__init__
    Adversary.__init__ = lambda self, objective, **kw: original(self, objective, **{**kw, "joint": False})


def ha_penalty_zero() -> None:
    import torch

    from udl_med.losses.historical_averaging import HistoricalAverage

    HistoricalAverage.penalty = lambda self, module: torch.zeros(())


def lapgan_full_image() -> None:
    from udl_med.methods.lapgan import LAPGAN
    from udl_med.nets.pyramid import upsample

    original = LAPGAN._fake_and_conditioning

    def swapped(self, k, gauss, labels):
        real, fake, extra = original(self, k, gauss, labels)
        if k == self.levels - 1:
            return real, fake, extra
        coarse = upsample(gauss[k + 1], self.config.upsampling)
        return gauss[k], coarse + fake, extra  # D shown full images, not differences

    LAPGAN._fake_and_conditioning = swapped


def two_stage_kl_zero() -> None:
    import torch

    import udl_med.methods.two_stage_gan as module

    module.kl_to_standard_normal = lambda mu, logvar: torch.zeros((), device=mu.device)


def gp_at_real_points() -> None:
    import torch

    import udl_med.losses.gan as gan
    import udl_med.methods.adversarial as adversarial

    def at_real(critic, real, fake, generator=None):
        x = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
        return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()

    gan.gradient_penalty = adversarial.gradient_penalty = at_real


def vbn_no_normalisation() -> None:
    from udl_med.nets.vbn import VirtualBatchNorm

    VirtualBatchNorm.forward = lambda self, x: x


def kplus1_objective_ignored() -> None:
    from udl_med.methods.semi_supervised_gan import SemiSupervisedGAN

    _wrap_init(SemiSupervisedGAN, generator_objective="feature_matching")


def d_input_noise_ignored() -> None:
    from udl_med.methods.gan import GAN

    _wrap_init(GAN, d_input_noise=0.0)


def d_hidden_noise_ignored() -> None:
    from udl_med.methods.gan import GAN

    _wrap_init(GAN, d_hidden_noise=0.0)


def feature_matching_distance_ignored() -> None:
    from udl_med.methods.gan import GAN

    _wrap_init(GAN, feature_matching_distance="l2")


def kl_weight_ignored() -> None:
    from udl_med.methods.two_stage_gan import TwoStageGAN

    _wrap_init(TwoStageGAN, kl_weight=1.0)


def condition_modality_ignored() -> None:
    from udl_med.methods.two_stage_gan import TwoStageGAN

    _wrap_init(TwoStageGAN, condition_modality=False)


def gradient_penalty_off() -> None:
    from udl_med.methods.adversarial import Adversary

    original = Adversary.__init__
    Adversary.__init__ = lambda self, objective, **kw: original(self, objective, **{**kw, "gp_weight": 0.0})


#: swap name -> (what it does in place of the trick, the test files that must catch it)
SWAPS: dict[str, tuple[Callable[[], None] | None, list[str]]] = {
    "none": (None, [LOSSES, TRICKS, MULTISCALE, KPLUS1, VBN]),
    "pool_identity": (pool_identity, [LOSSES, TRICKS]),
    "joint_ignored": (joint_ignored, [TRICKS]),
    "ha_penalty_zero": (ha_penalty_zero, [LOSSES, TRICKS]),
    "lapgan_full_image": (lapgan_full_image, [MULTISCALE]),
    "two_stage_kl_zero": (two_stage_kl_zero, [MULTISCALE]),
    "gp_at_real_points": (gp_at_real_points, [LOSSES]),
    "vbn_no_normalisation": (vbn_no_normalisation, [VBN]),
    "kplus1_objective_ignored": (kplus1_objective_ignored, [KPLUS1]),
    "d_input_noise_ignored": (d_input_noise_ignored, [TRICKS]),
    "d_hidden_noise_ignored": (d_hidden_noise_ignored, [TRICKS]),
    "feature_matching_distance_ignored": (feature_matching_distance_ignored, [TRICKS]),
    "kl_weight_ignored": (kl_weight_ignored, [MULTISCALE]),
    "condition_modality_ignored": (condition_modality_ignored, [MULTISCALE]),
    "wgan_gp_penalty_off": (gradient_penalty_off, [MULTISCALE]),
}


def pytest_configure(config: pytest.Config) -> None:
    """Plugin hook: apply the swap named in the environment before any test runs."""
    name = os.environ.get(ENV)
    if name and SWAPS[name][0] is not None:
        SWAPS[name][0]()


def run(name: str) -> dict:
    """Run the swap's tests with it applied; the JSON row."""
    _, files = SWAPS[name]
    env = {**os.environ, ENV: name, "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "noop_swaps", "-p", "no:cacheprovider", *files],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    caught = proc.returncode != 0 if name != "none" else proc.returncode == 0
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    return {
        "benchmark": "noop_swaps",
        "case": name,
        "metric": "caught" if name != "none" else "passes_unswapped",
        "ours": 1.0 if caught else 0.0,
        "peer_name": None,
        "peer": None,
        "ratio": 1.0 if caught else 0.0,
        "goal": "1.0: at least one test fails under the swap" if name != "none" else "1.0: the tests pass",
        "meets_goal": caught,
        "tests": files,
        "pytest": summary,
        "elapsed_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    names = sys.argv[1:] or list(SWAPS)
    unknown = [n for n in names if n not in SWAPS]
    if unknown:
        raise SystemExit(f"unknown swap {unknown[0]!r}: choose from {', '.join(SWAPS)}")
    for name in names:
        print(json.dumps(run(name)), flush=True)


if __name__ == "__main__":
    main()
