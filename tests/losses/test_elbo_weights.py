"""The VAE's two loss weights (model.recon_weight, model.beta) reach the loss and its gradients."""

from __future__ import annotations

import pytest
import torch

from udl_med.engine.config import validate_config
from udl_med.errors import ConfigError
from udl_med.losses.elbo import ELBOLoss, gaussian_kl
from udl_med.methods.base import DataSpec, get_method


def test_elbo_loss_is_the_weighted_sum_of_its_terms_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    mu, logvar = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    recon = ((out - x) ** 2).flatten(1).sum(1).mean()  # l2, summed per sample
    kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).sum(1).mean()
    for w, beta in ((1.0, 1.0), (2.5, 0.0), (0.0, 0.7)):
        terms = ELBOLoss("l2", beta=beta, recon_weight=w)(out, x, mu, logvar)
        torch.testing.assert_close(terms.recon, recon)
        torch.testing.assert_close(terms.kl, kl)
        torch.testing.assert_close(terms.loss, w * recon + beta * kl)
    torch.testing.assert_close(gaussian_kl(mu, logvar).mean(), kl)
    with pytest.raises(ValueError, match="both 0"):
        ELBOLoss("l2", beta=0.0, recon_weight=0.0)
    with pytest.raises(ValueError, match="recon_weight"):
        ELBOLoss("l2", recon_weight=-1.0)


def _vae(**model):
    cls = get_method("vae")
    torch.manual_seed(0)
    return cls(cls.Config(latent_dim=2, channels=[4, 8], strides=[2, 2], num_res_units=0, **model), DataSpec(spatial_dims=2, in_channels=1, image_size=(16, 16)))


@pytest.mark.parametrize(("recon_weight", "beta"), [(0.0, 1.0), (1.0, 0.0), (1.0, 1.0)])
def test_vae_weights_reach_the_gradients(recon_weight: float, beta: float) -> None:
    """KL only: the decoder gets no gradient; reconstruction only: the log-variance rows none."""
    method = _vae(recon_weight=recon_weight, beta=beta)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    out = method.net(x, generator=torch.Generator().manual_seed(0))
    terms = method.elbo(out.output, x, out.mu, out.logvar)
    terms.loss.backward()
    decoder_grad = sum(float(p.grad.abs().sum()) for p in method.net.decoder.parameters() if p.grad is not None)
    assert (decoder_grad == 0.0) == (recon_weight == 0.0)
    torch.testing.assert_close(terms.loss, recon_weight * terms.recon + beta * terms.kl)


def test_both_weights_zero_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="model.recon_weight"):
        _vae(recon_weight=0.0, beta=0.0)


def test_shipped_latent_configs_are_the_three_pictures() -> None:
    import yaml

    from udl_med.shipped import find_shipped

    weights = {}
    for name in ("recon", "kl", "both"):
        raw = yaml.safe_load(find_shipped("configs", f"vae2d-latent-{name}").read_text())
        config = validate_config(raw, name)
        weights[name] = (config.model.recon_weight, config.model.beta, config.model.latent_dim)
    assert weights == {"recon": (1.0, 0.0, 2), "kl": (0.0, 1.0, 2), "both": (1.0, 1.0, 2)}
