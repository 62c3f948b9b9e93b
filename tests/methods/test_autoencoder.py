"""Undercomplete autoencoder: networks, learning, the PCA property, encoder export."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from autoencoder_testkit import build, early_late, fit, held_out
from pydantic import ValidationError
from scipy.linalg import subspace_angles

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.methods.base import DataSpec, get_method
from udl_med.nets.autoencoder import Autoencoder

TINY = dict(latent_dim=8, channels=(8, 16), strides=(2, 2), num_res_units=0, lr=1e-2)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("channels", [(8, 16), ()])
def test_network_shapes(spatial_dims: int, channels: tuple[int, ...]) -> None:
    size = (16,) * spatial_dims
    net = Autoencoder(spatial_dims, 2, size, latent_dim=5, channels=channels, strides=(2,) * len(channels))
    x = torch.randn(3, 2, *size)
    assert net.encode(x).shape == (3, 5)
    assert net(x).shape == x.shape


def test_linear_network_is_linear() -> None:
    net = Autoencoder(2, 1, (8, 8), latent_dim=3, channels=(), strides=())
    a, b = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    zero = net(torch.zeros(2, 1, 8, 8))
    # affine: f(a + b) - f(0) = (f(a) - f(0)) + (f(b) - f(0))
    torch.testing.assert_close(net(a + b) - zero, (net(a) - zero) + (net(b) - zero), atol=1e-4, rtol=1e-4)


def test_network_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError, match="divisible"):
        Autoencoder(2, 1, (30, 30), latent_dim=4, channels=(4, 8, 16), strides=(2, 2, 2))
    with pytest.raises(ValueError, match="spatial_dims"):
        Autoencoder(4, 1, (8, 8, 8, 8), latent_dim=4)


def test_config_validation() -> None:
    cls = get_method("autoencoder")
    with pytest.raises(ValidationError):
        cls.Config(channels=(), strides=())  # conv needs blocks
    with pytest.raises(ValidationError):
        cls.Config(latnt_dim=3)  # unknown key
    with pytest.raises(ValidationError):
        cls.Config(loss="huber")
    with pytest.raises(ConfigError, match="model.strides"):
        cls(cls.Config(strides=(2, 2, 2)), DataSpec(spatial_dims=2, in_channels=1, image_size=(20, 20)))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_conv_autoencoder_learns(spatial_dims: int) -> None:
    val = held_out(spatial_dims)
    before = build("autoencoder", spatial_dims, **TINY).evaluate(val)  # the run's initial weights
    run = fit("autoencoder", spatial_dims, steps=150, **TINY)
    method, losses = run.method, run.losses()
    after = method.evaluate(val)
    first, last = early_late(losses)
    assert last < 0.3 * first
    assert after[keys.RECON_MSE] < before[keys.RECON_MSE]
    # it reconstructs each image better than the held-out batch's own mean image
    assert after[keys.RECON_MSE] < 0.6 * after[keys.MEAN_IMAGE_MSE]
    previews = method.preview(val)
    assert previews["reconstruction"].shape == val["image"].shape
    assert previews["reconstruction"].min() >= -1 and previews["reconstruction"].max() <= 1


@pytest.mark.parametrize("loss", ["l1", "bce"])
def test_other_losses_learn(loss: str) -> None:
    run = fit("autoencoder", 2, steps=120, **{**TINY, "loss": loss})
    losses = run.losses()
    after = run.method.evaluate(held_out(2))
    first, last = early_late(losses)
    assert last < 0.5 * first
    assert after[keys.RECON_MSE] < 0.6 * after[keys.MEAN_IMAGE_MSE]


def test_linear_autoencoder_spans_principal_subspace() -> None:
    """Baldi & Hornik (1989): a linear AE with L2 loss learns the top-k principal subspace."""
    gen = torch.Generator().manual_seed(0)
    d, k, n = 64, 3, 128
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=gen))  # orthonormal (d, k)
    codes = torch.randn(n, k, generator=gen) * torch.tensor([2.0, 1.5, 1.0])
    data = codes @ basis.T + 0.05 * torch.randn(n, d, generator=gen) + 0.3 * torch.randn(d, generator=gen)
    images = data.view(n, 1, 8, 8)

    # full-batch steps on the 128 vectors; the learning rate decays linearly to 0 over the last 200 steps
    run = fit(
        "autoencoder", 2, steps=800, batch_size=n, images=images, train={"lr_schedule": "linear_decay", "decay_start": 0.75},
        architecture="linear", latent_dim=k, loss="l2", lr=3e-2,
    )
    method, losses = run.method, run.losses()

    centred = (data - data.mean(0)).double().numpy()
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    pcs = vt[:k].T  # (d, k) top principal directions
    decoder_columns = method.net.decoder.linear.weight.detach().double().numpy()  # (d, k)
    assert np.degrees(subspace_angles(decoder_columns, pcs)).max() < 2.0
    # and its error is the PCA residual: the variance of the discarded components
    pca_residual = (singular[k:] ** 2).sum() / (n * d)
    assert losses[-1] == pytest.approx(pca_residual, rel=0.1)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_exported_encoder_loads_strictly_into_monai_class(spatial_dims: int) -> None:
    method = fit("autoencoder", spatial_dims, steps=3, **TINY).method
    class_path, kwargs, state = method.export_encoder()
    module, name = class_path.rsplit(".", 1)
    assert module == "monai.networks.nets"
    net = getattr(importlib.import_module(module), name)(**kwargs)
    net.load_state_dict(state, strict=True)
    net.eval()
    x = held_out(spatial_dims, n=4)["image"]
    torch.testing.assert_close(net(x), method.encode(x))
    assert method.encode(x).shape == (4, TINY["latent_dim"])
