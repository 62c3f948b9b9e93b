"""The autoencoder losses by hand: reconstruction kinds and reductions, the ELBO, sparsity, corruption (issue 26).

Each value is computed on tiny tensors by hand, so that a changed operator, constant or
reduction in ``udl_med/losses`` makes a test fail (mutation testing, ``make mutation``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from udl_med.losses.corruption import Corruption, add_noise, apply_mask
from udl_med.losses.elbo import ELBOLoss, gaussian_kl, reparameterize
from udl_med.losses.reconstruction import Reduction, ReconstructionLoss, per_sample_sum, reduce
from udl_med.losses.reduction import check_reduction, reduce as reduce_named
from udl_med.losses.sparsity import KLSparsity, L1Sparsity, bernoulli_kl, mean_activation

OUT = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])  # (2, 1, 2, 2)
TARGET = torch.tensor([[[[0.0, 0.0], [1.0, 0.0]]], [[[1.0, -1.0], [1.0, 1.0]]]])


def test_reconstruction_kinds_and_reductions_by_hand() -> None:
    sq = [0.25 + 1 + 1 + 0, 0 + 4 + 0 + 0]  # per-sample sums of squared errors
    assert ReconstructionLoss("l2")(OUT, TARGET).item() == pytest.approx(sum(sq) / 8)
    assert ReconstructionLoss("l2", "sum")(OUT, TARGET).item() == pytest.approx(sum(sq) / 2)
    assert ReconstructionLoss("l2", "none")(OUT, TARGET).tolist() == pytest.approx(sq)
    ab = [0.5 + 1 + 1 + 0, 0 + 2 + 0 + 0]
    assert ReconstructionLoss("l1", "none")(OUT, TARGET).tolist() == pytest.approx(ab)
    bce = F.binary_cross_entropy_with_logits(OUT, (TARGET + 1) / 2, reduction="none").flatten(1).sum(1)
    assert ReconstructionLoss("bce", "none")(OUT, TARGET).tolist() == pytest.approx(bce.tolist())
    assert torch.allclose(ReconstructionLoss("bce").to_image(OUT), 2 * torch.sigmoid(OUT) - 1)
    assert ReconstructionLoss("l2").to_image(OUT) is OUT
    with pytest.raises(ValueError, match="shape"):
        ReconstructionLoss()(OUT, TARGET[:1])
    with pytest.raises(ValueError, match=r"unknown reconstruction loss 'l3'; valid: l2, l1, bce"):
        ReconstructionLoss("l3")
    with pytest.raises(ValueError, match=r"unknown reduction 'max'; valid: mean, sum, none"):
        ReconstructionLoss("l2", "max")


def test_reductions_by_hand() -> None:
    x = torch.arange(6.0).view(2, 3)
    assert per_sample_sum(x).tolist() == [3.0, 12.0]
    assert reduce(x, Reduction.MEAN).item() == 2.5
    assert reduce(x, Reduction.SUM).item() == 7.5
    assert reduce(x, Reduction.NONE).tolist() == [3.0, 12.0]
    assert reduce_named(x, "mean").item() == 2.5 and reduce_named(x, "sum").item() == 15.0 and reduce_named(x, "none") is x
    assert check_reduction("none") == "none"
    with pytest.raises(ValueError, match=r"unknown reduction 'avg'; valid: mean, sum, none"):
        check_reduction("avg")


def test_elbo_by_hand() -> None:
    mu, logvar = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    kl = gaussian_kl(mu, logvar)  # 0.5 (mu^2 + sigma^2 - 1 - log sigma^2) summed
    assert kl.tolist() == pytest.approx([0.5 * 1 + 0.5 * (2 - 1 - math.log(2.0)), 0.0])
    terms = ELBOLoss("l2", beta=3.0)(OUT, TARGET, mu, logvar)
    recon = (2.25 + 4) / 2
    assert terms.recon.item() == pytest.approx(recon)
    assert terms.kl.item() == pytest.approx(kl.mean().item())
    assert terms.loss.item() == pytest.approx(recon + 3.0 * kl.mean().item())
    with pytest.raises(ValueError, match="beta"):
        ELBOLoss(beta=-1)
    assert ELBOLoss(beta=0.0).beta == 0.0


def test_reparameterize_is_mu_plus_sigma_eps() -> None:
    mu, logvar = torch.full((3, 4), 2.0), torch.full((3, 4), math.log(4.0))
    z = reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    eps = torch.randn((3, 4), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z, 2.0 + 2.0 * eps)


def test_sparsity_penalties_by_hand() -> None:
    h = torch.tensor([[0.1, -0.3], [0.5, 0.0]])
    assert L1Sparsity()(h).item() == pytest.approx((0.4 + 0.5) / 2)
    assert L1Sparsity("mean")(h).item() == pytest.approx(0.9 / 4)
    assert mean_activation(h).tolist() == pytest.approx([0.3, -0.15])
    rho, rho_hat = 0.1, torch.tensor([0.2, 0.1, 0.0])
    kl = bernoulli_kl(rho, rho_hat)
    assert kl[0].item() == pytest.approx(0.1 * math.log(0.1 / 0.2) + 0.9 * math.log(0.9 / 0.8))
    assert kl[1].item() == pytest.approx(0.0, abs=1e-7)
    assert math.isfinite(kl[2].item()) and kl[2].item() == pytest.approx(0.1 * math.log(0.1 / 1e-6) + 0.9 * math.log(0.9 / (1 - 1e-6)), rel=1e-4)
    assert bernoulli_kl(0.9, torch.tensor([1.0])).item() == pytest.approx(0.9 * math.log(0.9 / (1 - 1e-6)) + 0.1 * math.log(0.1 / 1e-6), rel=3e-3)  # (float32 clamp)
    acts = torch.tensor([[0.2, 0.1], [0.2, 0.1]])
    assert KLSparsity(0.1)(acts).item() == pytest.approx(kl[0].item(), rel=1e-5)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="rho"):
            KLSparsity(bad)
    assert KLSparsity().rho == 0.05


def test_corruptions_by_hand_and_seeded() -> None:
    x = torch.zeros(2, 1, 4, 4)
    assert torch.equal(add_noise(x, torch.ones_like(x), 0.5), torch.full_like(x, 0.5))
    keep = torch.tensor([True, False]).view(2, 1, 1, 1).expand_as(x)
    assert torch.equal(apply_mask(x + 1, keep, -1.0)[0], torch.ones(1, 4, 4)) and torch.equal(apply_mask(x + 1, keep, -1.0)[1], -torch.ones(1, 4, 4))
    gauss = Corruption("gaussian", 0.2)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(gauss, 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    big = torch.ones(1, 1, 64, 64)
    masked = Corruption("masking", 0.25, fill=-1.0)(big, torch.Generator().manual_seed(0))
    kept = torch.rand(big.shape, generator=torch.Generator().manual_seed(0)) >= 0.25
    assert torch.equal(masked, torch.where(kept, big, -big))
    assert abs((masked == -1).float().mean().item() - 0.25) < 0.05
    assert torch.equal(Corruption("masking", 0.0)(big), big)
    assert Corruption().kind.value == "gaussian" and Corruption().level == 0.3 and Corruption().fill == -1.0
    with pytest.raises(ValueError, match="non-negative"):
        Corruption("gaussian", -0.1)
    with pytest.raises(ValueError, match="below 1"):
        Corruption("masking", 1.0)
    Corruption("gaussian", 1.0)  # a Gaussian level of 1 is fine
    with pytest.raises(ValueError, match="unknown corruption"):
        Corruption("salt")
