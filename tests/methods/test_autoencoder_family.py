"""Sparse, denoising, stacked and variational autoencoders: each learns what it is for."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from autoencoder_testkit import SIZES, blobs, build, early_late, fit, held_out

from udl_med import keys
from udl_med.methods.base import Capability, get_method

TINY = dict(latent_dim=8, channels=(8, 16), strides=(2, 2), num_res_units=0, lr=1e-2)


def load_exported(method) -> torch.nn.Module:
    class_path, kwargs, state = method.export_encoder()
    module, name = class_path.rsplit(".", 1)
    assert module == "monai.networks.nets"
    net = getattr(importlib.import_module(module), name)(**kwargs)
    net.load_state_dict(state, strict=True)
    return net.eval()


# --- sparse ------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sparse_kl_penalty_lowers_mean_activation(spatial_dims: int) -> None:
    val = held_out(spatial_dims)
    config = {**TINY, "latent_dim": 32, "penalty": "kl", "rho": 0.05}
    plain = fit("sparse_autoencoder", spatial_dims, steps=60, **config, sparsity_weight=0.0).method
    run = fit("sparse_autoencoder", spatial_dims, steps=150, **config, sparsity_weight=0.02)
    sparse, losses = run.method, run.losses()
    m_plain, m_sparse = plain.evaluate(val), sparse.evaluate(val)
    assert m_sparse[keys.MEAN_ACTIVATION] < 0.5 * m_plain[keys.MEAN_ACTIVATION]
    assert m_sparse[keys.MEAN_ACTIVATION] < 0.1  # close to the target rate rho = 0.05
    first, last = early_late(losses)
    assert last < 0.5 * first
    assert m_sparse[keys.RECON_MSE] < 0.75 * m_sparse[keys.MEAN_IMAGE_MSE]
    codes = sparse.encode(val["image"])
    assert codes.shape == (val["image"].shape[0], 32) and 0 < codes.min() and codes.max() < 1


def test_sparse_l1_penalty_lowers_mean_activation_and_logs_it() -> None:
    val = held_out(2)
    config = {**TINY, "latent_dim": 32, "penalty": "l1"}
    plain = fit("sparse_autoencoder", 2, steps=100, **config, sparsity_weight=0.0).method
    run = fit("sparse_autoencoder", 2, steps=100, **config, sparsity_weight=0.005)
    sparse = run.method
    assert sparse.evaluate(val)[keys.MEAN_ACTIVATION] < 0.5 * plain.evaluate(val)[keys.MEAN_ACTIVATION]
    assert {keys.LOSS, keys.RECON, keys.SPARSITY, keys.MEAN_ACTIVATION} <= set(run.history[-1])  # what each step logs


# --- denoising ---------------------------------------------------------------------


@pytest.mark.parametrize(("spatial_dims", "corruption", "level"), [(2, "gaussian", 0.8), (3, "gaussian", 0.8), (2, "masking", 0.5)])
def test_denoiser_removes_the_noise_it_was_trained_on(spatial_dims: int, corruption: str, level: float) -> None:
    run = fit("denoising_autoencoder", spatial_dims, steps=150, **TINY, corruption=corruption, noise_level=level)
    method, losses = run.method, run.losses()
    metrics = method.evaluate(held_out(spatial_dims))
    first, last = early_late(losses)
    assert last < 0.5 * first
    assert metrics[keys.DENOISED_MSE] < 0.45 * metrics[keys.CORRUPTED_MSE]
    assert metrics[keys.RECON_MSE] < 0.6 * metrics[keys.MEAN_IMAGE_MSE]


def test_denoising_chain_samples_from_noise() -> None:
    method = fit("denoising_autoencoder", 2, steps=150, **TINY, corruption="gaussian", noise_level=0.5, chain_steps=10, chain_frames=4).method
    assert Capability.SAMPLE in method.capabilities
    x0 = method.initial_noise(6, torch.Generator().manual_seed(0))
    states = method.chain(x0, steps=10, generator=torch.Generator().manual_seed(1), frames=4)
    assert len(states) == 4 and torch.equal(states[0], x0)
    assert all(s.shape == x0.shape for s in states)

    def off_manifold(x: torch.Tensor) -> float:  # distance to the two intensity levels of the data
        return float(torch.minimum((x + 1).abs(), (x - 0.5).abs()).mean())

    assert off_manifold(states[-1]) < 0.5 * off_manifold(x0)
    a = method.sample(3, torch.Generator().manual_seed(5))
    b = method.sample(3, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert a.shape == (3, 1, *SIZES[2]) and a.min() >= -1 and a.max() <= 1
    strip = method.chain_strip(4)
    assert strip.shape == (4 * 4, 1, *SIZES[2])  # 4 chains x 4 frames: a square grid, one row per chain
    assert set(method.preview(held_out(2, n=4))) == {"input", "corrupted", "denoised", "chain"}


# --- stacked -----------------------------------------------------------------------


def test_stacked_greedy_trains_one_stage_at_a_time_then_fine_tunes(tmp_path) -> None:
    config = {**TINY, "schedule": "greedy", "layer_steps": 40}
    n_stages = len(TINY["channels"]) + 1
    total = 40 * n_stages + 150
    images = blobs(total * 8, SIZES[2], torch.Generator().manual_seed(1))  # one epoch of fresh blobs for the whole run
    initial = build("stacked_autoencoder", 2, **config)
    assert initial.stage_at(0) == 0
    before = {k: v.clone() for k, v in initial.net.state_dict().items()}
    method = fit("stacked_autoencoder", 2, steps=40, images=images, out=tmp_path, **config).method  # stage 0: only f_0 and g_0 move
    after = method.net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("encoder.net.layer_0.", "decoder.layers.0.")) for k in changed)
    assert method.stage_at(40) == 1
    # resume the same run through the other stages and 150 fine-tuning steps
    run = fit("stacked_autoencoder", 2, steps=total, images=images, out=tmp_path, resume=True, **config)
    method, losses = run.method, run.losses()
    assert run.report["steps"] == total and len(losses) == total - 40
    assert method.stage_at(40 * n_stages) == n_stages  # fine-tuning
    metrics = method.evaluate(held_out(2))
    assert metrics[keys.RECON_MSE] < 0.6 * metrics[keys.MEAN_IMAGE_MSE]
    first, last = early_late(losses[-150:])
    assert last < first

    # the stage follows the engine's step alone (exact resume): nothing of it is in the state
    clone = build("stacked_autoencoder", 2, **TINY, schedule="greedy", layer_steps=40)
    clone.load_state_dict(method.state_dict(), strict=True)
    assert [clone.stage_at(s) for s in (0, 39, 40, 40 * n_stages)] == [0, 0, 1, n_stages]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_stacked_end_to_end_learns(spatial_dims: int) -> None:
    run = fit("stacked_autoencoder", spatial_dims, steps=150, **TINY, schedule="end_to_end")
    method, losses = run.method, run.losses()
    assert set(run.optimizers) == {"finetune"}
    metrics = method.evaluate(held_out(spatial_dims))
    first, last = early_late(losses)
    assert last < 0.3 * first
    assert metrics[keys.RECON_MSE] < 0.6 * metrics[keys.MEAN_IMAGE_MSE]


# --- variational -------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_vae_learns_and_logs_finite_elbo_terms(spatial_dims: int) -> None:
    run = fit("vae", spatial_dims, steps=150, **TINY, beta=1.0)
    method, losses = run.method, run.losses()
    for out in (run.history[0], run.history[-1]):  # what the first and the last step logged
        assert {keys.LOSS, keys.RECON, keys.KL} <= set(out)
        assert all(math.isfinite(v) for v in out.values())
        assert out[keys.LOSS] == pytest.approx(out[keys.RECON] + out[keys.KL], rel=1e-5, abs=1e-6)
    first, last = early_late(losses)
    assert last < 0.3 * first
    metrics = method.evaluate(held_out(spatial_dims))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert metrics[keys.RECON_MSE] < 0.7 * metrics[keys.MEAN_IMAGE_MSE]
    samples = method.sample(5, torch.Generator().manual_seed(0))
    assert samples.shape == (5, 1, *SIZES[spatial_dims]) and samples.min() >= -1 and samples.max() <= 1


def test_vae_kl_term_responds_to_beta() -> None:
    kls = {}
    for beta in (0.1, 10.0):
        method = fit("vae", 2, steps=100, **TINY, beta=beta).method
        kls[beta] = method.evaluate(held_out(2))[keys.KL]
    assert kls[10.0] < 0.5 * kls[0.1]


def test_vae_encode_is_the_posterior_mean_in_eval_and_train_mode() -> None:
    method = fit("vae", 2, steps=5, **TINY).method
    x = held_out(2, n=4)["image"]
    mu, logvar = method.net.posterior(x)
    method.eval()
    torch.testing.assert_close(method.encode(x), mu)  # not mu + std, as MONAI's VarAutoEncoder in eval mode
    method.train()
    torch.testing.assert_close(method.encode(x), mu)
    out = method.net(x)  # a forward pass samples
    assert not torch.allclose(out.z, mu)
    method.eval()
    torch.testing.assert_close(load_exported(method)(x), mu)  # the exported encoder computes mu


def test_vae_traversal_grid_has_one_row_per_latent_direction() -> None:
    method = fit("vae", 2, steps=30, **TINY, traversal_dims=4).method
    x = held_out(2, n=4)["image"]
    grid = method.traversal(x)
    assert grid.shape == (16, 1, *SIZES[2])
    rows = grid.view(4, 4, -1)
    # along a row only one latent coordinate changes: consecutive images differ, and rows differ
    assert all(not torch.allclose(rows[r, 0], rows[r, -1]) for r in range(4))
    assert set(method.preview({"image": x})) == {"input", "reconstruction", "samples", "traversal"}


@pytest.mark.parametrize("name", ["sparse_autoencoder", "denoising_autoencoder", "stacked_autoencoder", "vae"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_exported_encoder_loads_strictly(name: str, spatial_dims: int) -> None:
    method = build(name, spatial_dims, **TINY)
    method.eval()
    net = load_exported(method)
    x = held_out(spatial_dims, n=3)["image"]
    assert net(x).shape == (3, TINY["latent_dim"])
    assert get_method(name).Config().model_dump()  # the defaults validate
