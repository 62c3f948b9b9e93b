"""What the methods sample of seed 20 (issue 26) found unobserved: D's virtual batch norm and the WGAN clip reach the networks."""

from __future__ import annotations

import torch

from tests.methods.test_gan import Driver, spec
from udl_med.methods.gan import GAN, GANConfig
from udl_med.nets.vbn import VirtualBatchNorm

TINY = {"architecture": "dcgan", "latent_dim": 8, "g_channels": [16, 8], "d_channels": [8, 16]}


def test_d_norm_virtual_batch_builds_vbn_into_d_and_asks_for_its_reference() -> None:
    torch.manual_seed(0)
    method = GAN(GANConfig(**TINY, d_norm="virtual_batch", vbn_reference=5), spec(2))
    assert method.reference_batch_size() == 5
    assert any(isinstance(m, VirtualBatchNorm) for m in method.discriminator.modules())
    plain = GAN(GANConfig(**TINY, d_norm="batch"), spec(2))
    assert plain.reference_batch_size() == 0 and not any(isinstance(m, VirtualBatchNorm) for m in plain.discriminator.modules())


def test_wgan_clips_the_critic_and_the_unrolled_copy_of_it() -> None:
    for extra in ({}, {"unrolled": {"steps": 1}}):
        torch.manual_seed(0)
        method = GAN(GANConfig(**TINY, loss="wgan", clip_value=0.003, d_norm="none", lr=0.05, **extra), spec(2))
        assert method.adversary.clip_value == 0.003, extra
        Driver(method, spec(2))()
        assert max(float(p.detach().abs().max()) for p in method.discriminator.parameters()) <= 0.003 + 1e-9, extra


def test_a_dcgan_with_a_vbn_critic_loads_its_model_file_strictly() -> None:
    """D's reference batch is a buffer from construction on (a placeholder), so a fresh method takes a trained state strictly."""
    model = {**TINY, "d_norm": "virtual_batch", "vbn_reference": 4}
    torch.manual_seed(0)
    trained = GAN(GANConfig(**model), spec(2))
    Driver(trained, spec(2))()
    torch.manual_seed(1)
    fresh = GAN(GANConfig(**model), spec(2))
    fresh.load_state_dict(trained.state_dict(), strict=True)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    trained.eval(), fresh.eval()
    torch.testing.assert_close(fresh.discriminator(x, None), trained.discriminator(x, None), rtol=0, atol=0)
