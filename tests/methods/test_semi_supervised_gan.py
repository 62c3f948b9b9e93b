"""K+1 semi-supervised GAN: losses by hand, the discriminator's export equivalence, training steps, learning from unlabeled data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from udl_med import keys
from udl_med.losses.kplus1 import KPlusOneLoss, class_probabilities, real_probability
from udl_med.methods.base import DataSpec
from udl_med.methods.semi_supervised_gan import SemiSupervisedGAN, SemiSupervisedGANConfig
from udl_med.nets.kplus1 import KPlusOneDiscriminator
from tests.methods.multiscale_testkit import HandOpt

# --- losses ---------------------------------------------------------------------------


def test_fixed_fake_logit_gives_d_equal_z_over_z_plus_one() -> None:
    logits = torch.tensor([[0.0, math.log(2.0)], [math.log(3.0), math.log(5.0)], [-30.0, -30.0]])
    z = torch.tensor([1.0 + 2.0, 3.0 + 5.0, 2 * math.exp(-30.0)])
    assert torch.allclose(real_probability(logits), z / (z + 1), atol=1e-7)
    assert torch.allclose(real_probability(logits), torch.tensor([0.75, 8.0 / 9.0, 2 * math.exp(-30.0)]), atol=1e-7)
    # the same as a (K+1)-way softmax whose last logit is 0
    with_fake = torch.cat([logits, torch.zeros(3, 1)], dim=1)
    assert torch.allclose(1 - torch.softmax(with_fake, dim=1)[:, -1], real_probability(logits), atol=1e-7)
    assert torch.allclose(class_probabilities(logits), torch.softmax(with_fake, 1)[:, :2] / real_probability(logits)[:, None], atol=1e-6)


def test_unsupervised_loss_by_hand() -> None:
    real = torch.tensor([[0.0, math.log(2.0)], [math.log(3.0), 0.0]])  # Z = 3, 4 -> D = 3/4, 4/5
    fake = torch.tensor([[0.0, 0.0], [math.log(0.5), math.log(0.5)]])  # Z = 2, 1 -> D = 2/3, 1/2
    expected = 0.5 * (-(math.log(3 / 4) + math.log(4 / 5)) / 2 - (math.log(1 - 2 / 3) + math.log(1 - 1 / 2)) / 2)
    loss = KPlusOneLoss()
    assert loss.discriminator_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)
    # the paper's form: -mean(lse) + mean(softplus(lse)) + mean(softplus(lse_fake)), halved
    lse_r, lse_f = torch.logsumexp(real, 1), torch.logsumexp(fake, 1)
    paper = 0.5 * (-lse_r.mean() + F.softplus(lse_r).mean() + F.softplus(lse_f).mean())
    assert loss.discriminator_loss(real, fake).item() == pytest.approx(paper.item(), rel=1e-6)
    per_item = KPlusOneLoss("none").discriminator_loss(real, fake)
    assert per_item.shape == (4,) and (per_item.sum() / 2).item() == pytest.approx(expected, rel=1e-6)  # two items per batch
    assert KPlusOneLoss("sum").discriminator_loss(real, fake).item() == pytest.approx(2 * expected, rel=1e-6)


def test_supervised_and_generator_losses_by_hand() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(4.0), 0.0]])
    labels = torch.tensor([1, 1])
    expected_ce = -(math.log(3 / 4) + math.log(1 / 5)) / 2
    assert KPlusOneLoss().supervised(logits, labels).item() == pytest.approx(expected_ce, rel=1e-6)
    # -log D(G(z)) with D = Z / (Z + 1): Z = 4, 5
    assert KPlusOneLoss().generator_loss(logits).item() == pytest.approx(-(math.log(4 / 5) + math.log(5 / 6)) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="valid: mean, sum, none"):
        KPlusOneLoss("max")


def test_conditional_entropy_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [40.0, 0.0]])  # p = (1/2, 1/2), (3/4, 1/4), ~(1, 0)
    expected = [math.log(2.0), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), 0.0]
    per_item = KPlusOneLoss("none").conditional_entropy(logits)
    assert per_item.tolist() == pytest.approx(expected, abs=1e-6)
    assert KPlusOneLoss().conditional_entropy(logits).item() == pytest.approx(sum(expected) / 3, rel=1e-6)
    # adding one number to every logit (the fake class's 0 aside) leaves the class entropy alone
    assert KPlusOneLoss("none").conditional_entropy(logits + 5.0).tolist() == pytest.approx(expected, abs=1e-5)


def test_class_balance_by_hand() -> None:
    # p = (1/2, 1/2), (3/4, 1/4): mean (5/8, 3/8)
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    m = (5 / 8, 3 / 8)
    uniform = m[0] * math.log(m[0] / 0.5) + m[1] * math.log(m[1] / 0.5)
    assert KPlusOneLoss.class_balance(logits).item() == pytest.approx(uniform, rel=1e-6)
    assert KPlusOneLoss.class_balance(logits).item() == pytest.approx(math.log(2) + sum(v * math.log(v) for v in m), rel=1e-6)  # log K - H(mean p)
    skewed = m[0] * math.log(m[0] / 0.8) + m[1] * math.log(m[1] / 0.2)
    assert KPlusOneLoss.class_balance(logits, torch.tensor([0.8, 0.2])).item() == pytest.approx(skewed, rel=1e-6)
    assert KPlusOneLoss.class_balance(logits, torch.tensor([5 / 8, 3 / 8])).item() == pytest.approx(0.0, abs=1e-7)
    # each item confident, the batch balanced: no penalty (unlike the conditional entropy)
    assert KPlusOneLoss.class_balance(torch.tensor([[30.0, 0.0], [0.0, 30.0]])).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="one entry per class"):
        KPlusOneLoss.class_balance(logits, torch.tensor([1.0]))

# --- discriminator ----------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims, architecture", [(2, "conv"), (3, "conv"), (2, "mlp"), (0, "mlp")])
def test_discriminator_is_its_monai_network_in_eval_mode(spatial_dims: int, architecture: str) -> None:
    from udl_med.inference.export_encoder import build_encoder

    torch.manual_seed(0)
    size = {0: (), 2: (16, 16), 3: (8, 8, 8)}[spatial_dims]
    channels = 12 if spatial_dims == 0 else 1
    d = KPlusOneDiscriminator(spatial_dims, channels, size, 3, architecture=architecture, channels=(4, 8), hidden=(16, 8), input_noise_std=0.3, hidden_noise_std=0.5)
    x = torch.randn(5, channels, *size)
    class_path, kwargs, state = d.exported()
    net = build_encoder(class_path, kwargs)
    net.load_state_dict(state, strict=True)
    d.eval()
    assert torch.allclose(d(x), net.eval()(x), atol=1e-6)
    logits, features = d.forward_features(x)
    assert logits.shape == (5, 3) and features.shape == (5, d.n_features)
    d.train()  # noise layers while training only
    assert not torch.allclose(d(x), d(x))


def test_minibatch_head_moves_realness_not_classes() -> None:
    torch.manual_seed(0)
    d = KPlusOneDiscriminator(2, 1, (16, 16), 3, channels=(4, 8), minibatch_kernels=6, minibatch_kernel_dims=3, input_noise_std=0.0, hidden_noise_std=0.0)
    x = torch.randn(6, 1, 16, 16)
    shifted, _ = d.gan_logits(x)
    plain = d(x)
    assert not torch.allclose(real_probability(shifted), real_probability(plain))
    assert torch.allclose(class_probabilities(shifted), class_probabilities(plain), atol=1e-6)
    assert set(d.exported()[2]) == set(d.net.state_dict())  # the head is not exported


def test_discriminator_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        KPlusOneDiscriminator(2, 1, (16, 16), 1)
    with pytest.raises(ValueError, match="architecture 'conv' needs images"):
        KPlusOneDiscriminator(0, 8, (), 3, architecture="conv")
    with pytest.raises(ValueError, match="unknown norm"):
        KPlusOneDiscriminator(2, 1, (16, 16), 3, norm="group")


# --- method -----------------------------------------------------------------------------


def _batch(spec: DataSpec, n: int = 4) -> dict[str, torch.Tensor]:
    shape = (spec.in_channels, *spec.image_size)
    return {
        keys.IMAGE: torch.rand(n, *shape) * 2 - 1,
        keys.LABEL: torch.arange(n) % spec.num_classes,
        keys.UNLABELED_IMAGE: torch.rand(n, *shape) * 2 - 1,
    }


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("objective", ["feature_matching", "non_saturating"])
def test_train_step_updates_both_networks(spatial_dims: int, objective: str) -> None:
    torch.manual_seed(0)
    size = (16, 16) if spatial_dims == 2 else (16, 16, 16)
    spec = DataSpec(spatial_dims=spatial_dims, in_channels=1, image_size=size, num_classes=3)
    config = SemiSupervisedGANConfig(
        d_channels=(4, 8), g_channels=(8, 4), latent_dim=8, generator_objective=objective, minibatch_kernels=4 if objective == "non_saturating" else 0
    )
    method = SemiSupervisedGAN(config, spec)
    opt = HandOpt(method.configure_optimizers())
    before_d = [p.detach().clone() for p in method.discriminator.parameters()]
    before_g = [p.detach().clone() for p in method.generator.parameters()]
    out = method.train_step(_batch(spec), opt)
    assert opt.stepped == ["discriminator", "generator"]
    assert {keys.CE, keys.UNSUPERVISED, keys.GENERATOR, keys.D_REAL, keys.D_FAKE, keys.ACCURACY} <= set(out)
    assert all(math.isfinite(float(v)) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(before_d, method.discriminator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, method.generator.parameters()))
    method.eval()
    probs = method.classify(_batch(spec)[keys.IMAGE])
    assert probs.shape == (4, 3) and torch.allclose(probs.sum(1), torch.ones(4), atol=1e-5)
    assert set(method.evaluate(_batch(spec))) == {keys.ACCURACY, keys.CE, keys.D_REAL}


def test_supervised_only_has_no_generator_and_the_same_discriminator() -> None:
    spec = DataSpec(spatial_dims=0, in_channels=10, image_size=(), num_classes=2)
    torch.manual_seed(1)
    both = SemiSupervisedGAN(SemiSupervisedGANConfig(d_hidden=(8,), g_hidden=(8, 8), latent_dim=4), spec)
    torch.manual_seed(1)
    alone = SemiSupervisedGAN(SemiSupervisedGANConfig(d_hidden=(8,), g_hidden=(8, 8), latent_dim=4, unsupervised_weight=0), spec)
    assert alone.generator is None and set(alone.configure_optimizers()) == {"discriminator"}
    assert {k: v.shape for k, v in alone.discriminator.state_dict().items()} == {k: v.shape for k, v in both.discriminator.state_dict().items()}
    opt = HandOpt(alone.configure_optimizers())
    out = alone.train_step(_batch(spec), opt)
    assert opt.stepped == ["discriminator"] and keys.UNSUPERVISED not in out


def test_entropy_term_is_added_on_the_unlabeled_batch_only_with_the_gan() -> None:
    spec = DataSpec(spatial_dims=0, in_channels=10, image_size=(), num_classes=3)
    batch = _batch(spec)
    losses = {}
    for weight in (0.0, 2.0):
        torch.manual_seed(3)
        method = SemiSupervisedGAN(SemiSupervisedGANConfig(d_hidden=(8,), g_hidden=(8, 8), latent_dim=4, entropy_weight=weight), spec)
        torch.manual_seed(4)
        out = method.train_step(batch, HandOpt(method.configure_optimizers()))
        losses[weight] = out
    assert "entropy" not in losses[0.0]
    entropy = float(losses[2.0]["entropy"])
    assert 0 < entropy <= math.log(3) + 1e-6
    # same networks, same noise: the D loss differs by exactly the weighted entropy
    assert float(losses[2.0][keys.LOSS]) == pytest.approx(float(losses[0.0][keys.LOSS]) + 2.0 * entropy, rel=1e-5)
    # the ramp: a quarter of the weight a quarter of the way in
    torch.manual_seed(3)
    ramped = SemiSupervisedGAN(
        SemiSupervisedGANConfig(d_hidden=(8,), g_hidden=(8, 8), latent_dim=4, entropy_weight=2.0, entropy_rampup_steps=40), spec
    )
    opt = HandOpt(ramped.configure_optimizers())
    opt.global_step = 10
    torch.manual_seed(4)
    out = ramped.train_step(batch, opt)
    assert float(out[keys.LOSS]) == pytest.approx(float(losses[0.0][keys.LOSS]) + 0.5 * float(out["entropy"]), rel=1e-5)
    alone = SemiSupervisedGAN(SemiSupervisedGANConfig(d_hidden=(8,), g_hidden=(8, 8), latent_dim=4, unsupervised_weight=0, entropy_weight=1.0), spec)
    out = alone.train_step(batch, HandOpt(alone.configure_optimizers()))
    assert "entropy" not in out and alone.generator is None  # the labels-only baseline stays labels only
    with pytest.raises(Exception):
        SemiSupervisedGANConfig(entropy_weight=-0.1)


def test_config_rejects_nonsense() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="d_hidden"):
        SemiSupervisedGANConfig(d_hidden=())
    with pytest.raises(ValidationError):
        SemiSupervisedGANConfig(unsupervised_weight=-1)
    with pytest.raises(ValidationError):
        SemiSupervisedGANConfig(unknown_key=1)


# --- learning from unlabeled data ---------------------------------------------------------


def _digits_case(seed: int = 0, classes: int = 4, per_class: int = 2):
    """scikit-learn's 8x8 digits 0..3: ``per_class`` labels per class, the rest unlabeled, 30% held out."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from udl_med.data.memory import TensorItems
    from udl_med.data.semi_supervised import SemiSupervisedItems

    x, y = load_digits(return_X_y=True)
    keep = y < classes
    x, y = (x[keep] / 8.0 - 1.0).astype(np.float32), y[keep]
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    rng = np.random.default_rng(seed)
    labeled = np.concatenate([rng.choice(np.nonzero(y_train == k)[0], per_class, replace=False) for k in range(classes)])
    train = SemiSupervisedItems(TensorItems(x_train[labeled], y_train[labeled]), TensorItems(x_train), classes)
    return train, TensorItems(x_test, y_test)


def test_few_labels_plus_unlabeled_beat_labels_alone(tmp_path) -> None:
    """Two labels per class: the K+1 discriminator beats the same network trained on the labels alone."""
    from udl_med.engine.train import train

    train_set, test_set = _digits_case()
    accuracy = {}
    for weight in (1.0, 0.0):
        config = {
            "method": "semi_supervised_gan",
            "seed": 0,
            "data": {"kind": "memory"},
            "model": {"d_hidden": [64, 64], "g_hidden": [64, 64], "input_noise_std": 0.6, "unsupervised_weight": weight},
            "train": {"steps": 600, "batch_size": 32, "eval_every": 600, "eval_items": len(test_set), "device": "cpu", "threads": 1},
            "tracking": {"enabled": False},
            "output_dir": str(tmp_path / f"w{weight}"),
        }
        accuracy[weight] = train(config, datasets=(train_set, test_set))["eval/accuracy"]
    assert accuracy[1.0] > accuracy[0.0] + 0.03, accuracy


def test_consistency_term_with_the_gan_its_ramp_and_the_consistency_only_baseline() -> None:
    from udl_med.losses.consistency import consistency_loss

    spec = DataSpec(spatial_dims=0, in_channels=10, image_size=(), num_classes=3)
    batch = _batch(spec)
    small = {"d_hidden": (8,), "g_hidden": (8, 8), "latent_dim": 4}
    outs = {}
    for weight, ramp, step in ((0.0, 0, 0), (3.0, 0, 0), (3.0, 40, 20)):
        torch.manual_seed(3)
        method = SemiSupervisedGAN(SemiSupervisedGANConfig(**small, consistency_weight=weight, consistency_rampup_steps=ramp), spec)
        opt = HandOpt(method.configure_optimizers())
        opt.global_step = step
        torch.manual_seed(4)
        outs[(weight, ramp)] = method.train_step(batch, opt)
    assert "consistency" not in outs[(0.0, 0)]
    full = float(outs[(3.0, 0)]["consistency"])
    assert 0 < full < 2  # squared difference of two softmaxes, summed over classes
    # same networks and noise for the GAN terms: the D loss differs by exactly the weighted consistency loss
    assert float(outs[(3.0, 0)][keys.LOSS]) == pytest.approx(float(outs[(0.0, 0)][keys.LOSS]) + 3.0 * full, rel=1e-5)
    # half way through the ramp the weight is 3 exp(-5 / 4)
    ramped = float(outs[(3.0, 40)]["consistency"])
    assert float(outs[(3.0, 40)][keys.LOSS]) == pytest.approx(float(outs[(0.0, 0)][keys.LOSS]) + 3.0 * math.exp(-1.25) * ramped, rel=1e-5)

    # consistency only: no generator; the loss is CE + w * consistency of two noisy passes over the unlabeled batch
    torch.manual_seed(5)
    alone = SemiSupervisedGAN(SemiSupervisedGANConfig(**small, consistency_weight=2.0, consistency_only=True), spec)
    assert alone.generator is None and set(alone.configure_optimizers()) == {"discriminator"}
    d = alone.discriminator
    torch.manual_seed(6)
    logits_lab = d(batch[keys.IMAGE])
    student, teacher = d(batch[keys.UNLABELED_IMAGE]), d(batch[keys.UNLABELED_IMAGE])
    expected = F.cross_entropy(logits_lab, batch[keys.LABEL]) + 2.0 * consistency_loss(student, teacher)
    opt = HandOpt(alone.configure_optimizers())
    torch.manual_seed(6)
    out = alone.train_step(batch, opt)
    assert opt.stepped == ["discriminator"] and keys.UNSUPERVISED not in out
    assert float(out[keys.LOSS]) == pytest.approx(float(expected), rel=1e-5)
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="consistency_only"):
        SemiSupervisedGANConfig(consistency_only=True)


def test_labels_only_arm_ignores_every_unlabeled_term() -> None:
    """``unsupervised_weight: 0``: the unlabeled batch changes nothing, whatever the entropy, consistency, pseudo-label, class-balance and VAT weights."""
    spec = DataSpec(spatial_dims=0, in_channels=10, image_size=(), num_classes=3)
    batch = _batch(spec)
    other = {**batch, keys.UNLABELED_IMAGE: batch[keys.UNLABELED_IMAGE] * 0 + 5.0}
    results = []
    for b in (batch, other):
        torch.manual_seed(7)
        config = SemiSupervisedGANConfig(d_hidden=(8,), g_hidden=(8, 8), latent_dim=4, unsupervised_weight=0, entropy_weight=1.0, consistency_weight=5.0, pseudo_label_weight=1.0, vat_weight=1.0, class_balance_weight=1.0)
        method = SemiSupervisedGAN(config, spec)
        torch.manual_seed(8)
        out = method.train_step(b, HandOpt(method.configure_optimizers()))
        results.append((out, [p.detach().clone() for p in method.discriminator.parameters()]))
        assert method.generator is None and set(out) == {keys.CE, keys.ACCURACY, keys.LOSS}
    # the loss is the labeled cross-entropy alone, and the step is the same with any unlabeled batch
    assert float(results[0][0][keys.LOSS]) == pytest.approx(float(results[0][0][keys.CE]))
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_shifted_target_pass_and_pseudo_labels_by_hand() -> None:
    """``consistency_shift`` translates the target pass's images; ``pseudo_label_weight`` adds FixMatch's term exactly."""
    from udl_med.errors import ConfigError
    from udl_med.losses.consistency import consistency_loss, draw_shifts, pseudo_label_loss, translate

    spec = DataSpec(spatial_dims=2, in_channels=1, image_size=(4, 4), num_classes=3)
    batch = _batch(spec, n=6)
    small = {"discriminator": "mlp", "generator": "mlp", "d_hidden": (8,), "g_hidden": (8, 8), "latent_dim": 4}
    torch.manual_seed(5)
    config = SemiSupervisedGANConfig(**small, consistency_weight=2.0, consistency_shift=1, pseudo_label_weight=0.5, pseudo_label_threshold=0.0, consistency_only=True)
    method = SemiSupervisedGAN(config, spec)
    d = method.discriminator
    # the step's draws in order: the labeled pass's noise, the unlabeled pass's noise, the shifts, the target pass's noise
    torch.manual_seed(6)
    logits_lab = d(batch[keys.IMAGE])
    student = d(batch[keys.UNLABELED_IMAGE])
    shifts = draw_shifts(6, 2, 1)
    teacher = d(translate(batch[keys.UNLABELED_IMAGE], shifts))
    pseudo, mask = pseudo_label_loss(student, teacher, 0.0)
    expected = F.cross_entropy(logits_lab, batch[keys.LABEL]) + 2.0 * consistency_loss(student, teacher) + 0.5 * pseudo
    assert float(mask.mean()) == 1.0  # threshold 0: every item gets its pseudo-label
    opt = HandOpt(method.configure_optimizers())
    torch.manual_seed(6)
    out = method.train_step(batch, opt)
    assert float(out[keys.LOSS]) == pytest.approx(float(expected), rel=1e-5)
    assert float(out["pseudo_label"]) == pytest.approx(float(pseudo), rel=1e-5) and float(out["pseudo_label_fraction"]) == 1.0
    # the ramp: half way through it the term counts exp(-5 / 4) of its weight
    torch.manual_seed(5)
    ramped = SemiSupervisedGAN(config.model_copy(update={"pseudo_label_rampup_steps": 40}), spec)
    opt = HandOpt(ramped.configure_optimizers())
    opt.global_step = 20
    torch.manual_seed(6)
    out = ramped.train_step(batch, opt)
    consistency_ramp = 1.0  # consistency_rampup_steps is 0
    expected = F.cross_entropy(logits_lab, batch[keys.LABEL]) + 2.0 * consistency_ramp * consistency_loss(student, teacher) + 0.5 * math.exp(-1.25) * pseudo
    assert float(out[keys.LOSS]) == pytest.approx(float(expected), rel=1e-5)
    # an unreachable threshold: no pseudo-label, the term is 0
    method = SemiSupervisedGAN(SemiSupervisedGANConfig(**small, pseudo_label_weight=1.0, pseudo_label_threshold=1.0), spec)
    out = method.train_step(batch, HandOpt(method.configure_optimizers()))
    assert float(out["pseudo_label"]) == 0.0 and float(out["pseudo_label_fraction"]) == 0.0
    # pseudo-labels alone make a consistency baseline too; translations need a pixel grid
    SemiSupervisedGANConfig(pseudo_label_weight=1.0, consistency_only=True)
    vectors = DataSpec(spatial_dims=0, in_channels=10, image_size=(), num_classes=3)
    with pytest.raises(ConfigError, match="consistency_shift"):
        SemiSupervisedGAN(SemiSupervisedGANConfig(consistency_weight=1.0, consistency_shift=1), vectors)
    with pytest.raises(ConfigError, match="dcgan"):
        SemiSupervisedGAN(SemiSupervisedGANConfig(generator="dcgan"), vectors)


def test_mlp_generator_on_images_matches_the_vector_setup() -> None:
    """``generator: mlp`` on ``(1, 4, 4)`` images is the vector set-up's MLP reshaped: same draws, same numbers."""
    image = DataSpec(spatial_dims=2, in_channels=1, image_size=(4, 4), num_classes=3)
    vector = DataSpec(spatial_dims=0, in_channels=16, image_size=(), num_classes=3)
    batch = _batch(image, n=6)
    flat = {k: (v.flatten(1) if v.ndim > 1 else v) for k, v in batch.items()}
    small = {"discriminator": "mlp", "d_hidden": (8,), "g_hidden": (8, 8), "latent_dim": 4, "consistency_weight": 1.0}
    outs = []
    for spec, b, extra in ((image, batch, {"generator": "mlp"}), (vector, flat, {})):
        torch.manual_seed(9)
        method = SemiSupervisedGAN(SemiSupervisedGANConfig(**small, **extra), spec)
        torch.manual_seed(10)
        outs.append(method.train_step(b, HandOpt(method.configure_optimizers())))
        if spec is image:
            assert method.generator(torch.zeros(2, 4)).shape == (2, 1, 4, 4)
    for key in (keys.LOSS, keys.GENERATOR, "consistency"):
        assert float(outs[0][key]) == pytest.approx(float(outs[1][key]), rel=1e-6)


class _FlipHalf(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flip(x, dims=(-1,)) * 0.5


@pytest.mark.parametrize("consistency_only", [False, True])
def test_with_d_augment_the_consistency_term_compares_the_augmented_unlabeled_pass_to_a_plain_one(consistency_only: bool) -> None:
    """K+1 scores its unlabeled batch through ``d_augment``; the consistency term's first pass is that view, its target is not."""
    from udl_med.losses.consistency import consistency_loss

    spec = DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8), num_classes=3)
    batch = _batch(spec)
    common = {"d_channels": (4, 8), "g_channels": (8, 4), "latent_dim": 4, "input_noise_std": 0.0, "hidden_noise_std": 0.0}
    values = {}
    for d_augment in ("none", "diffaugment"):
        torch.manual_seed(0)
        config = SemiSupervisedGANConfig(**common, consistency_weight=1.0, consistency_only=consistency_only, d_augment=d_augment)
        method = SemiSupervisedGAN(config, spec)
        if d_augment != "none":
            assert method.adversary.augment is not None
            method.adversary.augment = _FlipHalf()  # a known, deterministic view
        d = method.discriminator
        with torch.no_grad():  # no noise: D is a function, so the term is known before the step
            plain = d(batch[keys.UNLABELED_IMAGE])
            seen = d(torch.flip(batch[keys.UNLABELED_IMAGE], dims=(-1,)) * 0.5)
        out = method.train_step(batch, HandOpt(method.configure_optimizers()))
        values[d_augment] = float(out["consistency"])
        expected = consistency_loss(seen if d_augment != "none" else plain, plain)
        assert values[d_augment] == pytest.approx(float(expected), rel=1e-5, abs=1e-7)
    assert values["none"] == pytest.approx(0.0, abs=1e-7) and values["diffaugment"] > 1e-6


@pytest.mark.parametrize("consistency_only", [False, True])
def test_vat_term_is_the_noise_free_kl_to_the_most_sensitive_direction_and_leaves_d_training(consistency_only: bool) -> None:
    """``vat_weight``: the D loss grows by exactly ``w * ramp * KL`` of D's noise-free passes, in both arms, and D's noise comes back."""
    from udl_med.losses.consistency import vat_loss

    spec = DataSpec(spatial_dims=0, in_channels=10, image_size=(), num_classes=3)
    batch = _batch(spec)
    small = {"d_hidden": (8,), "g_hidden": (8, 8), "latent_dim": 4, "consistency_weight": 2.0, "consistency_only": consistency_only}
    outs, methods = {}, {}
    for weight, ramp, step in ((0.0, 0, 0), (3.0, 0, 0), (3.0, 40, 20)):
        torch.manual_seed(3)
        method = SemiSupervisedGAN(SemiSupervisedGANConfig(**small, vat_weight=weight, vat_epsilon=0.7, vat_rampup_steps=ramp), spec)
        opt = HandOpt(method.configure_optimizers())
        opt.global_step = step
        torch.manual_seed(4)
        outs[(weight, ramp)] = method.train_step(batch, opt)
        methods[(weight, ramp)] = method
        assert method.discriminator.training  # the noise-free passes give D its training mode back
    assert "vat" not in outs[(0.0, 0)]
    full, ramped = float(outs[(3.0, 0)]["vat"]), float(outs[(3.0, 40)]["vat"])
    assert full > 0
    # the VAT passes come after every other term's draws, so the rest of the loss is the same
    assert float(outs[(3.0, 0)][keys.LOSS]) == pytest.approx(float(outs[(0.0, 0)][keys.LOSS]) + 3.0 * full, rel=1e-5)
    assert float(outs[(3.0, 40)][keys.LOSS]) == pytest.approx(float(outs[(0.0, 0)][keys.LOSS]) + 3.0 * math.exp(-1.25) * ramped, rel=1e-5)
    # the term is vat_loss on the unlabeled batch, D's noise off, its target D's own noise-free pass
    import udl_med.methods.semi_supervised_gan as module

    calls = []

    def recording(model, x, target, epsilon):
        calls.append((model.training, x, target.clone(), model(x).detach(), epsilon))
        return vat_loss(model, x, target, epsilon)

    torch.manual_seed(3)
    method = SemiSupervisedGAN(SemiSupervisedGANConfig(**small, vat_weight=3.0, vat_epsilon=0.7), spec)
    original, module.vat_loss = module.vat_loss, recording
    try:
        out = method.train_step(batch, HandOpt(method.configure_optimizers()))
    finally:
        module.vat_loss = original
    ((training, x, target, again, epsilon),) = calls
    assert not training and epsilon == 0.7 and torch.equal(x, batch[keys.UNLABELED_IMAGE])
    assert torch.equal(target, again)  # noise off: the target pass is repeatable
    assert "vat" in out and method.discriminator.training


def test_class_balance_term_by_hand_its_prior_and_its_refusals() -> None:
    """``class_balance_weight``: the D loss grows by exactly ``w * KL(mean softmax || prior)`` of the unlabeled pass."""
    from pydantic import ValidationError

    from udl_med.errors import ConfigError

    spec = DataSpec(spatial_dims=0, in_channels=10, image_size=(), num_classes=3)
    batch = _batch(spec)
    small = {"d_hidden": (8,), "g_hidden": (8, 8), "latent_dim": 4, "consistency_weight": 1.0}
    outs = {}
    for weight, prior in ((0.0, None), (2.0, None), (2.0, (0.5, 0.3, 0.2))):
        torch.manual_seed(3)
        method = SemiSupervisedGAN(SemiSupervisedGANConfig(**small, class_balance_weight=weight, class_balance_prior=prior), spec)
        torch.manual_seed(4)
        outs[(weight, prior)] = method.train_step(batch, HandOpt(method.configure_optimizers()))
    assert "class_balance" not in outs[(0.0, None)]
    for prior in (None, (0.5, 0.3, 0.2)):
        value = float(outs[(2.0, prior)]["class_balance"])
        assert value > 0
        assert float(outs[(2.0, prior)][keys.LOSS]) == pytest.approx(float(outs[(0.0, None)][keys.LOSS]) + 2.0 * value, rel=1e-5)
    assert float(outs[(2.0, None)]["class_balance"]) != pytest.approx(float(outs[(2.0, (0.5, 0.3, 0.2))]["class_balance"]))
    with pytest.raises(ValidationError, match="class_balance_prior"):
        SemiSupervisedGANConfig(class_balance_prior=(0.5, 0.6))
    with pytest.raises(ValidationError, match="class_balance_prior"):
        SemiSupervisedGANConfig(class_balance_prior=(1.2, -0.2))
    with pytest.raises(ConfigError, match="class_balance_prior"):
        SemiSupervisedGAN(SemiSupervisedGANConfig(**small, class_balance_weight=1.0, class_balance_prior=(0.5, 0.5)), spec)


def test_eval_mode_switches_off_training_and_restores_the_mode_even_on_error() -> None:
    from udl_med.nets.modes import eval_mode

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    with eval_mode(net) as inside:
        assert inside is net and not net.training and not net[1].training
    assert net.training and net[1].training
    net.eval()
    with eval_mode(net):
        pass
    assert not net.training  # a module in evaluation mode stays there
    net.train()
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError("boom")
    assert net.training
