"""LAPGAN and the two-stage GAN observed in a training step, so that a no-op in their place fails (issue 26).

LAPGAN's finer discriminators see the difference image ``h_k = I_k - u(I_{k+1})`` (real)
and the generated difference (fake), with the upsampled coarse image as their condition;
the two-stage GAN adds ``kl_weight`` times the conditioning augmentation's KL to G's
loss; ``condition_modality`` makes the modality part of the condition; both methods run
their wgan-gp branch with the gradient penalty in D's loss.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.methods.multiscale_testkit import HandOpt, batch
from udl_med import keys
from udl_med.methods.adversarial import Adversary
from udl_med.methods.base import DataSpec
from udl_med.methods.lapgan import LAPGAN, LAPGANConfig
from udl_med.methods.two_stage_gan import TwoStageGAN, TwoStageGANConfig
from udl_med.nets.pyramid import gaussian_pyramid, upsample

LAP = dict(latent_dim=8, coarse_channels=(8,), fine_channels=4, fine_blocks=1, disc_channels=(4,))
TWO = dict(latent_dim=8, stage1_channels=(8,), stage2_channels=8, stage2_blocks=1, disc2_channels=(4,), embed_dim=4)


def _lapgan(**kw) -> LAPGAN:
    torch.manual_seed(0)
    return LAPGAN(LAPGANConfig(levels=2, **{**LAP, **kw}), DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8), num_classes=3))


def _two_stage(spatial_dims: int = 2, **kw) -> TwoStageGAN:
    torch.manual_seed(0)
    spec = DataSpec(spatial_dims=spatial_dims, in_channels=1, image_size=(8,) * spatial_dims, num_classes=3)
    return TwoStageGAN(TwoStageGANConfig(**{**TWO, "stage1_steps": 1, **kw}), spec)


def test_lapgan_finer_discriminator_sees_the_difference_image() -> None:
    method = _lapgan().train()
    seen, made = [], []
    method.discriminators[0].register_forward_pre_hook(lambda m, args: seen.append([a.detach().clone() if a is not None else None for a in args]))
    method.generators[0].register_forward_hook(lambda m, i, out: made.append(out.detach().clone()))
    data = batch(2, 8)
    method.train_step(data, HandOpt(method.configure_optimizers()))
    gauss = gaussian_pyramid(data[keys.IMAGE], 2)
    coarse = upsample(gauss[1], method.config.upsampling)
    real_call, fake_call = seen[0], seen[1]
    assert torch.allclose(real_call[0], gauss[0] - coarse, atol=1e-6)  # h_0 = I_0 - u(I_1), not I_0
    assert not torch.allclose(real_call[0], gauss[0], atol=1e-3)
    assert torch.allclose(real_call[1], coarse, atol=1e-6)  # conditioned on the real coarse image
    assert torch.equal(real_call[2], data[keys.LABEL])
    assert torch.allclose(fake_call[0], made[0], atol=1e-6)  # the generated difference, not coarse + difference
    assert torch.allclose(fake_call[1], coarse, atol=1e-6)


def _spy_discriminator_parts(monkeypatch: pytest.MonkeyPatch) -> list:
    parts = []
    original = Adversary.discriminator_loss

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        parts.append(out)
        return out

    monkeypatch.setattr(Adversary, "discriminator_loss", spy)
    return parts


def test_lapgan_wgan_gp_puts_the_gradient_penalty_in_every_levels_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _spy_discriminator_parts(monkeypatch)
    method = _lapgan(gan_mode="wgan-gp", gp_weight=3.0, coarse_norm="instance", norm="instance").train()
    opt = HandOpt(method.configure_optimizers())
    before = {k: v.clone() for k, v in method.state_dict().items()}
    out = method.train_step(batch(2, 8), opt)
    assert len(parts) == 2 and opt.stepped == ["d0", "g0", "d1", "g1"]
    for k, p in enumerate(parts):
        assert p.gradient_penalty is not None and float(p.gradient_penalty.detach()) > 0
        assert float(p.loss.detach()) == pytest.approx(float(p.adversarial.detach()) + 3.0 * float(p.gradient_penalty.detach()), rel=1e-5)
        assert float(p.adversarial.detach()) == pytest.approx(float((p.fake_scores - p.real_scores.mean()).mean().detach()), rel=1e-5, abs=1e-6)
        assert float(out[f"{keys.LOSS_D}{k}"]) == pytest.approx(float(p.loss.detach()), rel=1e-6)
    assert all(math.isfinite(float(v)) for v in out.values())
    assert any(not torch.equal(before[k], v) for k, v in method.state_dict().items() if k.startswith("discriminators.0"))


@pytest.mark.parametrize("weight", [0.5, 3.0])
def test_two_stage_kl_enters_g_loss_with_its_weight(weight: float, monkeypatch: pytest.MonkeyPatch) -> None:
    method = _two_stage(kl_weight=weight).train()
    stats, adversarial = [], []
    method.ca1.register_forward_hook(lambda m, i, out: stats.append((out[1].detach(), out[2].detach())))
    original = method.adversary.generator_loss
    monkeypatch.setattr(method.adversary, "generator_loss", lambda critic, fake, labels=None: adversarial.append(original(critic, fake, labels)) or adversarial[-1])
    out = method.train_step(batch(2, 8), HandOpt(method.configure_optimizers()))  # step 0: stage I
    mu, logvar = stats[0]
    kl = float((0.5 * (mu**2 + logvar.exp() - 1 - logvar)).sum(1).mean())  # KL(N(mu, sigma^2) || N(0, I)), StackGAN eq. 5
    assert kl > 0 and float(out["kl1"]) == pytest.approx(kl, rel=1e-5)
    assert float(out["loss_g1"]) == pytest.approx(float(adversarial[0].detach()) + weight * kl, rel=1e-5)


def test_two_stage_kl_pulls_the_condition_distribution_towards_the_standard_normal() -> None:
    """G's step on a large KL weight lowers the KL of conditioning augmentation."""
    method = _two_stage(kl_weight=100.0, lr=0.01).train()
    opt = HandOpt(method.configure_optimizers())
    data = batch(2, 8)
    kls = [float(method.train_step(data, opt)["kl1"])]
    method.config = method.config.model_copy(update={"stage1_steps": 10})
    for step in range(1, 6):
        opt.global_step = step
        kls.append(float(method.train_step(data, opt)["kl1"]))
    assert kls[-1] < 0.5 * kls[0], kls


def test_condition_modality_makes_the_modality_part_of_the_condition() -> None:
    method = _two_stage(condition_modality=True, sample_modality="MR")
    assert method.num_conditions == 6 and method.ca1.num_conditions == 6
    data = {**batch(2, 8), keys.MODALITY: ["CT", "MR", "MR", "CT"]}
    assert method.conditions(data).tolist() == [0, 1 + 3, 2 + 3, 0]
    with pytest.raises(ValueError, match="modality"):
        method.conditions(batch(2, 8))
    out = method.train().train_step(data, HandOpt(method.configure_optimizers()))
    assert all(math.isfinite(float(v)) for v in out.values())
    method.eval()
    as_mr = method.sample(4, torch.Generator().manual_seed(0), label=1)
    method.config = method.config.model_copy(update={"sample_modality": "CT"})
    as_ct = method.sample(4, torch.Generator().manual_seed(0), label=1)
    assert not torch.allclose(as_mr, as_ct)  # the same class and noise, another modality: another image
    plain = _two_stage()
    assert plain.num_conditions == 3 and plain.conditions(data).tolist() == [0, 1, 2, 0]


@pytest.mark.parametrize("stage", [1, 2])
def test_two_stage_wgan_gp_puts_the_gradient_penalty_in_d_loss(stage: int, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _spy_discriminator_parts(monkeypatch)
    method = _two_stage(gan_mode="wgan-gp", gp_weight=2.0, stage1_norm="none", stage2_norm="instance").train()
    opt = HandOpt(method.configure_optimizers())
    opt.global_step = stage - 1
    out = method.train_step(batch(2, 8), opt)
    (p,) = parts
    assert p.gradient_penalty is not None and float(p.gradient_penalty.detach()) > 0
    assert float(p.loss.detach()) == pytest.approx(float(p.adversarial.detach()) + 2.0 * float(p.gradient_penalty.detach()), rel=1e-5)
    assert float(out[f"{keys.LOSS_D}{stage}"]) == pytest.approx(float(p.loss.detach()), rel=1e-6)
    assert opt.stepped == [f"d{stage}", f"g{stage}"]


# --- refusals, word for word (issue 26's mutants of lapgan.py and two_stage_gan.py) ---

from udl_med.errors import ConfigError  # noqa: E402
from udl_med.methods.lapgan import class_labels  # noqa: E402


def _refusal(build, *args, **kwargs) -> tuple[str, str, str]:
    with pytest.raises(ConfigError) as caught:
        build(*args, **kwargs)
    return caught.value.source, caught.value.key, caught.value.problem


def test_lapgan_refusals_name_the_key_and_the_problem() -> None:
    def lapgan(spec: DataSpec, **kw) -> LAPGAN:
        return LAPGAN(LAPGANConfig(**{"levels": 2, **LAP, **kw}), spec)

    flat = DataSpec(spatial_dims=0, in_channels=2, image_size=(), num_classes=0)
    assert _refusal(lapgan, flat) == ("<config>", "data.layout", "LAPGAN needs 2D or 3D images, got spatial_dims 0")
    square = DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8), num_classes=0)
    source, key, problem = _refusal(lapgan, square, levels=6)
    assert (source, key) == ("<config>", "model.levels") and problem.startswith("does not fit data.size: ")
    assert _refusal(lapgan, square, conditional=True) == ("<config>", "model.conditional", "needs class labels: set data.labeled: true (a manifest with labels)")
    labeled = DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8), num_classes=3)
    source, key, problem = _refusal(lapgan, labeled, coarse_channels=(8, 8, 8, 8))
    assert (source, key) == ("<config>", "model.coarse_channels") and problem.startswith("coarsest level (4, 4): ")


def test_lapgan_class_labels() -> None:
    assert class_labels(3, 0, None, None) is None
    assert torch.equal(class_labels(3, 4, 3, None), torch.full((3,), 3))
    with pytest.raises(ValueError) as caught:
        class_labels(3, 4, 4, None)
    assert str(caught.value) == "label must be in [0, 3], got 4"
    with pytest.raises(ValueError) as caught:
        class_labels(3, 0, 1, None)
    assert str(caught.value) == "this model is unconditional: it cannot sample a given label"
    drawn = class_labels(200, 4, None, torch.Generator().manual_seed(0))
    assert drawn.shape == (200,) and set(drawn.tolist()) == {0, 1, 2, 3}


def test_two_stage_refusals_name_the_key_and_the_problem() -> None:
    def two(spec: DataSpec, **kw) -> TwoStageGAN:
        return TwoStageGAN(TwoStageGANConfig(**{**TWO, "stage1_steps": 1, **kw}), spec)

    def spec(size=(8, 8), classes=3, dims=2) -> DataSpec:
        return DataSpec(spatial_dims=dims, in_channels=1, image_size=size, num_classes=classes)

    assert _refusal(two, spec((), dims=0)) == ("<config>", "data.layout", "needs 2D or 3D images, got spatial_dims 0")
    assert _refusal(two, spec((8, 6))) == ("<config>", "data.size", "must divide by 4 (stage I is 1/4), got [8, 6]")
    assert _refusal(two, spec(classes=0)) == ("<config>", "data.labeled", "the two-stage GAN is conditional: set data.labeled: true")
    assert _refusal(two, spec(), stage1_model="runs/x/model") == ("<config>", "model.stage1_steps", "must be 0 when model.stage1_model gives a trained stage I")
    assert _refusal(two, spec(), stage1_steps=0) == ("<config>", "model.stage1_steps", "stage I needs training: set stage1_steps > 0 or model.stage1_model")
    modalities = ", ".join(keys.MODALITIES)
    assert _refusal(two, spec(), condition_modality=True, sample_modality="PET") == ("<config>", "model.sample_modality", f"must be one of {modalities}")
    source, key, problem = _refusal(two, spec(), stage1_channels=(8, 8, 8))
    assert (source, key) == ("<config>", "model.stage1_channels") and problem.startswith("stage I at (2, 2): ")
    source, key, problem = _refusal(two, spec(), disc2_channels=(4, 4, 4, 4, 4))
    assert (source, key) == ("<config>", "model.disc2_channels") and problem.startswith("stage II at (8, 8): ")
    (key, init), = two(spec(), stage1_steps=0, stage1_model="runs/x/model").init_from()
    assert key == "model.stage1_model" and init.method == "two_stage_gan" and tuple(init.modules) == ("g1", "ca1")
    assert two(spec()).init_from() == ()
