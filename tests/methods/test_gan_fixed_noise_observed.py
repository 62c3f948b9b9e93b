"""The gan method's fixed preview noise and InfoGAN's Q head, observed (issue 26, mutants of the seed-1 sample).

The preview and evaluation noise is a function of the config alone (drawn from a fixed
seed, whatever the global RNG): it is rebuilt at every load, so a model file holds only
the networks and loads strictly into a method built from the same config. InfoGAN's Q
reads D's body features through a hidden layer of ``info_codes.q_hidden`` units.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from udl_med.methods.base import DataSpec
from udl_med.methods.gan import GAN, GANConfig

TINY = {"architecture": "dcgan", "latent_dim": 8, "g_channels": [16, 8], "d_channels": [8, 16]}
VARIANTS = {
    "plain": {},
    "conditional": {"conditional": True},
    "mixture": {"latent_mixture": {"components": 3}},
    "info": {"info_codes": {"categorical": 3, "continuous": 1}},
}


def _build(model: dict[str, Any], torch_seed: int) -> GAN:
    torch.manual_seed(torch_seed)
    return GAN(GANConfig(**{**TINY, **model}), DataSpec(spatial_dims=2, in_channels=1, image_size=(16, 16), num_classes=3))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fixed_noise_comes_from_its_own_seed_and_stays_out_of_the_model_file(variant: str) -> None:
    one, two = _build(VARIANTS[variant], 0), _build(VARIANTS[variant], 1)
    width = 8 + (4 if variant == "info" else 0)  # z, then the codes (3 categorical + 1 continuous)
    assert one.fixed_z.shape == (64, width)
    assert torch.equal(one.fixed_z, two.fixed_z)  # not the global RNG's: the same preview whatever the run's seed
    assert torch.equal(one.fixed_components, two.fixed_components) and torch.equal(one.fixed_labels, two.fixed_labels)
    if variant in ("plain", "conditional", "mixture"):
        assert torch.equal(one.fixed_z, torch.randn(64, 8, generator=torch.Generator().manual_seed(0)))
    state = one.state_dict()
    assert not [k for k in state if k.startswith("fixed_")]  # rebuilt at load, never saved
    fresh = _build(VARIANTS[variant], 2)
    fresh.load_state_dict(state, strict=True)  # the networks are the whole file
    assert torch.equal(fresh.fixed_z, one.fixed_z)


@pytest.mark.parametrize("q_hidden", [16, 40])
def test_q_hidden_is_the_width_of_q_on_ds_body_features(q_hidden: int) -> None:
    method = _build({"info_codes": {"categorical": 3, "continuous": 2, "q_hidden": q_hidden}}, 0)
    head = method.discriminator.head
    x = torch.zeros(2, 1, 16, 16)
    features = method.discriminator.forward_features(x, None)[1].flatten(1)
    hidden = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert hidden[0].in_features == features.shape[1] and hidden[0].out_features == q_hidden
    assert method.discriminator.predict_codes(x).shape == (2, 3 + 2 * 2)
    total = sum(p.numel() for p in head.parameters())
    assert total == (features.shape[1] + 1) * q_hidden + (q_hidden + 1) * (3 + 2 * 2)
