"""The K+1 GAN's ``generator_objective`` observed: G minimises the objective the key names (issue 26).

``feature_matching``: ``mean_f (E f(x_unl) - E f(G(z)))^2`` on D's last hidden layer;
``non_saturating``: ``E softplus(-lse(l(G(z))))`` = ``-E log D(G(z))`` on D's K logits plus the
minibatch head's realness shift. Both are recomputed by hand from D after its step (D's
noise off, so D is a function), and the two keys give different generator losses.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.methods.multiscale_testkit import HandOpt
from udl_med import keys
from udl_med.methods.base import DataSpec
from udl_med.methods.semi_supervised_gan import SemiSupervisedGAN, SemiSupervisedGANConfig

SPEC = DataSpec(spatial_dims=0, in_channels=10, image_size=(), num_classes=3)


def _step(objective: str) -> tuple[SemiSupervisedGAN, dict, torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    config = SemiSupervisedGANConfig(
        d_hidden=(8,), g_hidden=(8,), latent_dim=4, input_noise_std=0.0, hidden_noise_std=0.0, generator_objective=objective, minibatch_kernels=2
    )
    method = SemiSupervisedGAN(config, SPEC).train()
    made = []
    method.generator.register_forward_hook(lambda m, i, out: made.append(out.detach().clone()))
    g = torch.Generator().manual_seed(1)
    batch = {
        keys.IMAGE: torch.rand(6, 10, generator=g) * 2 - 1,
        keys.LABEL: torch.arange(6) % 3,
        keys.UNLABELED_IMAGE: torch.rand(6, 10, generator=g) * 2 - 1,
    }
    out = method.train_step(batch, HandOpt(method.configure_optimizers()))
    return method, out, made[0], batch


def test_feature_matching_objective_is_the_distance_of_mean_features() -> None:
    method, out, fake, batch = _step("feature_matching")
    d = method.discriminator
    with torch.no_grad():
        _, real_features = d.forward_features(batch[keys.UNLABELED_IMAGE])
        _, fake_features = d.gan_logits(fake)
    expected = ((real_features.mean(0) - fake_features.mean(0)) ** 2).mean()
    assert float(out[keys.GENERATOR]) == pytest.approx(float(expected), rel=1e-4)


def test_non_saturating_objective_is_minus_log_d_of_the_fakes() -> None:
    method, out, fake, _ = _step("non_saturating")
    with torch.no_grad():
        logits, _ = method.discriminator.gan_logits(fake)
    expected = F.softplus(-torch.logsumexp(logits, 1)).mean()  # -log D(G(z)), D = Z / (Z + 1)
    assert float(out[keys.GENERATOR]) == pytest.approx(float(expected), rel=1e-4)


def test_the_two_objectives_give_different_generator_losses() -> None:
    fm = float(_step("feature_matching")[1][keys.GENERATOR])
    ns = float(_step("non_saturating")[1][keys.GENERATOR])
    assert abs(fm - ns) > 1e-3
