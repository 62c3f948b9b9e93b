"""InfoGAN in the gan method (model.info_codes): Q on D's body, the codes' loss in both steps, refusals, sample codes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError

from udl_med import keys
from udl_med.data.memory import TensorItems
from udl_med.engine.fit import fit_in_memory
from udl_med.methods.base import DataSpec
from udl_med.methods.gan import GAN, GANConfig
from udl_med.metrics.latent import best_matching_agreement

MLP = {"architecture": "mlp", "latent_dim": 2, "g_hidden": [32, 32], "d_hidden": [32, 32], "lr": 2e-3}


def _build(model: dict[str, Any], spatial_dims: int = 0) -> GAN:
    size = {0: (), 2: (16, 16)}[spatial_dims]
    torch.manual_seed(0)
    return GAN(GANConfig(**model), DataSpec(spatial_dims=spatial_dims, in_channels=2 if spatial_dims == 0 else 1, image_size=size))


def test_generator_loss_adds_the_weighted_info_term() -> None:
    method = _build({**MLP, "info_codes": {"categorical": 3, "continuous": 1, "weight": 1.0}})
    real = torch.randn(8, 2)
    losses = {}
    for weight in (1.0, 3.0):
        method.config = method.config.model_copy(update={"info_codes": method.config.info_codes.model_copy(update={"weight": weight})})
        torch.manual_seed(5)
        losses[weight] = float(method.generator_loss(real, None).detach())
    torch.manual_seed(5)
    z = method.prior.draw(8)
    fake = method.generator(z, None)
    info = float(method.info_terms(fake, z, None).loss.detach())
    adversarial = float(method.adversary.generator_loss(method.discriminator, fake, None).detach())
    assert losses[1.0] == pytest.approx(adversarial + info, rel=1e-5)
    assert losses[3.0] - losses[1.0] == pytest.approx(2.0 * info, rel=1e-4)
    assert method.latent_dim == 2 + 3 + 1 and z.shape == (8, 6)


def test_the_prior_draws_z_and_codes_in_one_place_and_reads_them_back() -> None:
    method = _build({**MLP, "info_codes": {"categorical": 3, "continuous": 2}})
    latent = method.draw_latent(50, torch.Generator().manual_seed(1), code="2,_,0.25")
    codes = method.prior.codes(latent)
    assert latent.shape == (50, 2 + 3 + 2)
    assert torch.equal(codes.categorical, torch.full((50,), 2))
    assert torch.equal(latent[:, 2:5].sum(1), torch.ones(50))  # one-hot
    assert torch.all(codes.continuous[:, 1] == 0.25) and codes.continuous[:, 0].std() > 0.1
    assert codes.continuous[:, 0].abs().max() <= 1.0
    again = method.draw_latent(50, torch.Generator().manual_seed(1), code="2,_,0.25")
    assert torch.equal(latent, again)
    # the preview grid cycles the categorical code
    assert method.prior.codes(method.fixed_z[:6]).categorical.tolist() == [0, 1, 2, 0, 1, 2]


def test_info_dcgan_steps_and_logs_its_info_term() -> None:
    from udl_med.engine.optimization import EngineOptimization

    method = _build({"architecture": "dcgan", "latent_dim": 4, "g_channels": [16, 8], "d_channels": [8, 16], "info_codes": {"categorical": 2, "continuous": 2}}, spatial_dims=2)
    opt = EngineOptimization(method.configure_optimizers(), torch.device("cpu"))
    q_before = method.discriminator.head.net[0].weight.detach().clone()
    batch = {keys.IMAGE: torch.rand(6, 1, 16, 16) * 2 - 1}
    opt.next_batch = lambda: batch  # type: ignore[method-assign]
    out = method.train_step(batch, opt)
    assert torch.isfinite(out[keys.INFO]) and float(out[keys.INFO]) > 0
    assert not torch.equal(q_before, method.discriminator.head.net[0].weight)  # Q learns in D's step
    samples = method.eval().sample(4, torch.Generator().manual_seed(0), code="1,0.5")
    assert samples.shape == (4, 1, 16, 16)


@pytest.mark.parametrize(
    ("extra", "word"),
    [({"pack": 2}, "pack"), ({"d_norm": "virtual_batch"}, "virtual batch norm"), ({"latent_mixture": {"components": 3}}, "latent_mixture")],
)
def test_refusals_name_the_key(extra: dict[str, Any], word: str) -> None:
    with pytest.raises(ValidationError) as err:
        GANConfig(**{**MLP, "info_codes": {"categorical": 2}, **extra})
    text = str(err.value)
    assert "info_codes" in text and word in text
    with pytest.raises(ValidationError, match="categorical"):
        GANConfig(**{**MLP, "info_codes": {"categorical": 1}})


def test_sample_code_on_a_model_without_codes_is_refused() -> None:
    method = _build(MLP).eval()
    with pytest.raises(ValueError, match="model.info_codes"):
        method.sample(2, code="1")
    coded = _build({**MLP, "info_codes": {"categorical": 2, "continuous": 1}}).eval()
    with pytest.raises(ValueError, match="0..1"):
        coded.sample(2, code="2")
    with pytest.raises(ValueError, match="gives 3 values"):
        coded.sample(2, code="1,0.5,0.2")


def test_the_categorical_code_learns_a_two_cluster_split() -> None:
    """Two well separated clusters, K = 2, no labels: each code value draws (almost only) one cluster."""
    g = torch.Generator().manual_seed(0)
    side = torch.randint(2, (2048,), generator=g)
    points = torch.randn(2048, 2, generator=g) * 0.15 + torch.stack([side * 4.0 - 2.0, torch.zeros(2048)], 1)
    model = {**MLP, "latent_dim": 2, "info_codes": {"categorical": 2, "weight": 1.0}}
    method = fit_in_memory("gan", model, TensorItems(points), steps=500, batch_size=64, seed=0).method.eval()
    codes, clusters = [], []
    for value in (0, 1):
        x = method.sample(200, torch.Generator().manual_seed(value), code=str(value))
        codes += [value] * 200
        clusters += (x[:, 0] > 0).long().tolist()
    agreement = best_matching_agreement(codes, clusters)
    # a plain GAN's code would be unrelated to the cluster: agreement about 0.5
    assert agreement > 0.9, agreement


DCGAN_TINY = {"architecture": "dcgan", "latent_dim": 4, "g_channels": [16, 8], "d_channels": [8, 16]}


def test_q_augment_makes_q_read_augmented_fakes() -> None:
    """``info_codes.q_augment``: L_I is Q's loss on the fakes after DiffAugment's draw, and G's gradient passes through it."""
    from udl_med.losses.info import info_loss  # lazy: only this test computes L_I by hand
    from udl_med.nets.diffaugment import DiffAugment  # lazy: only this test applies the transforms by hand

    method = _build({**DCGAN_TINY, "info_codes": {"categorical": 3, "q_augment": ["translation", "intensity"]}}, spatial_dims=2)
    plain = _build({**DCGAN_TINY, "info_codes": {"categorical": 3}}, spatial_dims=2)
    assert method.q_augment is not None and plain.q_augment is None
    z = method.prior.draw(6, torch.Generator().manual_seed(2))
    fake = method.generator(z, None)
    torch.manual_seed(7)
    ours = method.info_terms(fake, z, None).loss
    torch.manual_seed(7)
    by_hand = info_loss(method.discriminator.predict_codes(DiffAugment(["translation", "intensity"])(fake)), method.prior.codes(z), 3).loss
    unaugmented = info_loss(method.discriminator.predict_codes(fake), method.prior.codes(z), 3).loss
    assert ours.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert abs(ours.item() - unaugmented.item()) > 1e-6  # the transforms changed what Q saw
    ours.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.generator.parameters())


@pytest.mark.parametrize(
    ("model", "word"),
    [({**MLP, "info_codes": {"categorical": 2, "q_augment": ["translation"]}}, "q_augment"), ({**DCGAN_TINY, "info_codes": {"categorical": 2, "q_augment": ["flip"]}}, "flip")],
)
def test_q_augment_refusals_name_the_key(model: dict[str, Any], word: str) -> None:
    with pytest.raises(ValidationError) as err:
        GANConfig(**model)
    assert word in str(err.value)
