"""The VAE network: eval mode encodes to the mean, the sample is mu + sigma * eps, the KL by hand, the exported mean encoder."""

from __future__ import annotations

import math

import pytest
import torch

from udl_med.losses.elbo import gaussian_kl
from udl_med.nets.vae import LOGVAR_RANGE, VarAutoencoder


def _vae(spatial_dims: int) -> VarAutoencoder:
    torch.manual_seed(0)
    return VarAutoencoder(spatial_dims, 1, (8,) * spatial_dims, latent_dim=3, channels=(4, 8), strides=(2, 2), num_res_units=0)


def _set_posterior(net: VarAutoencoder, mu: list[float], logvar: list[float]) -> None:
    """Zero the last encoder layer's weights, so the posterior is its bias: ``mu`` then ``logvar``."""
    last = net.encoder.final[1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(mu + logvar))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_eval_mode_encodes_to_the_posterior_mean(spatial_dims: int) -> None:
    net = _vae(spatial_dims).eval()
    x = torch.randn(2, 1, *(8,) * spatial_dims, generator=torch.Generator().manual_seed(1))
    mu, logvar = net.posterior(x)
    assert mu.shape == logvar.shape == (2, 3)
    with torch.no_grad():
        assert torch.equal(net.encode(x), mu) and torch.equal(net.encode(x), net.encode(x))  # MONAI's VarAutoEncoder gives mu + std
        assert torch.allclose(net.mean_encoder().eval()(x), mu, atol=1e-6)  # what export --format encoder writes


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_sample_is_mu_plus_sigma_eps_and_the_kl_matches_a_hand_computation(spatial_dims: int) -> None:
    net = _vae(spatial_dims).eval()
    mu, logvar = [0.5, -1.0, 2.0], [0.0, math.log(4.0), -2.0]
    _set_posterior(net, mu, logvar)
    x = torch.randn(2, 1, *(8,) * spatial_dims)
    out = net(x, generator=torch.Generator().manual_seed(7))
    eps = torch.randn((2, 3), generator=torch.Generator().manual_seed(7))
    sigma = torch.tensor([1.0, 2.0, math.exp(-1.0)])
    assert torch.allclose(out.z, torch.tensor(mu) + sigma * eps, atol=1e-6)
    assert torch.allclose(out.output, net.decode(out.z)) and out.output.shape == x.shape
    # KL(N(mu, s^2) || N(0, 1)) = sum 0.5 * (mu^2 + s^2 - 1 - log s^2), per sample
    hand = sum(0.5 * (m * m + math.exp(lv) - 1.0 - lv) for m, lv in zip(mu, logvar))
    assert torch.allclose(gaussian_kl(out.mu, out.logvar), torch.full((2,), hand), atol=1e-5)
    _set_posterior(net, [0.0] * 3, [0.0] * 3)
    assert torch.allclose(gaussian_kl(*net.posterior(x)), torch.zeros(2))  # the prior itself: no KL


def test_logvar_is_clamped() -> None:
    net = _vae(2)
    _set_posterior(net, [0.0] * 3, [-100.0, 0.0, 100.0])
    _, logvar = net.posterior(torch.zeros(1, 1, 8, 8))
    assert logvar.tolist() == [[LOGVAR_RANGE[0], 0.0, LOGVAR_RANGE[1]]]
