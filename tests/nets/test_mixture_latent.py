"""DeLiGAN's mixture latent: z = mu_c + sigma_c * eps, reproducible draws, the sigma penalty, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from udl_med.nets.mixture_latent import MixtureLatent


def test_latent_is_the_chosen_components_mean_plus_its_sigma_times_eps() -> None:
    torch.manual_seed(0)
    latent = MixtureLatent(3, components=4, init_std=0.5)
    with torch.no_grad():
        latent.log_std[2] = torch.log(torch.tensor([0.1, 2.0, 3.0]))
    eps = torch.randn(5, 3)
    component = torch.tensor([2, 0, 2, 3, 1])
    z = latent(eps, component)
    assert torch.allclose(z[0], latent.means[2] + torch.tensor([0.1, 2.0, 3.0]) * eps[0])
    assert torch.allclose(z[1], latent.means[0] + 0.5 * eps[1])
    assert latent.means.min() >= -1 and latent.means.max() <= 1  # DeLiGAN: means start uniform in [-1, 1]


def test_draws_follow_the_generator_and_use_every_component() -> None:
    latent = MixtureLatent(2, components=5, init_std=1e-3)
    a = latent.draw(400, torch.Generator().manual_seed(3))
    b = latent.draw(400, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # with a tiny sigma every draw sits on one of the 5 means, and each mean is drawn
    nearest = torch.cdist(a, latent.means.detach()).argmin(1)
    assert torch.cdist(a, latent.means.detach()).min(1).values.max() < 0.01
    assert set(nearest.tolist()) == set(range(5))


def test_std_penalty_is_deligans_and_zero_at_unit_sigma() -> None:
    latent = MixtureLatent(2, components=2, init_std=0.2)
    # (1/N) sum_i ||1 - sigma_i||^2 = (1/2) * 2 * (2 * 0.8^2)
    assert latent.std_penalty().item() == pytest.approx(2 * 0.8**2)
    with torch.no_grad():
        latent.log_std.zero_()
    assert latent.std_penalty().item() == 0.0


def test_gradients_reach_means_and_sigmas() -> None:
    latent = MixtureLatent(4, components=3)
    latent.draw(16).pow(2).sum().backward()
    assert latent.means.grad.abs().sum() > 0 and latent.log_std.grad.abs().sum() > 0


@pytest.mark.parametrize(("kwargs", "word"), [({"components": 0}, "components"), ({"init_std": 0.0}, "init_std")])
def test_bad_arguments_are_refused(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        MixtureLatent(2, **{"components": 3, **kwargs})


def test_log_std_starts_at_init_std() -> None:
    assert torch.allclose(MixtureLatent(2, 3, init_std=0.01).log_std, torch.full((3, 2), math.log(0.01)))


def test_standard_normal_latent_draws_like_randn_and_passes_fixed_noise_through() -> None:
    from udl_med.nets.mixture_latent import StandardNormalLatent

    prior = StandardNormalLatent(3)
    assert torch.equal(prior.draw(5, torch.Generator().manual_seed(4)), torch.randn(5, 3, generator=torch.Generator().manual_seed(4)))
    torch.manual_seed(7)
    drawn = prior.draw(6)
    torch.manual_seed(7)
    assert torch.equal(drawn, torch.randn(6, 3))  # the training path: the global RNG
    eps = torch.randn(4, 3)
    assert prior(eps, torch.zeros(0, dtype=torch.long)) is eps
    assert prior.state_dict() == {}  # nothing saved: a model file is the same with or without it
    assert prior.draw(2).device.type == "cpu" and prior.to("meta").draw(2).device.type == "meta"  # z follows the owner's .to(device)
    with pytest.raises(ValueError, match="latent_dim"):
        StandardNormalLatent(0)
