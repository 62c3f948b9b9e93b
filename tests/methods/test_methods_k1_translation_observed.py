"""What the K+1 GAN, CycleGAN and pix2pix do, observed where the mutation samples of issue 26 found it unchecked.

Each test fails under a mutant of ``methods_k1_translation`` (``pyproject.toml``) that the
package's other tests let pass; the README (Mutation testing) lists them.
"""

from __future__ import annotations

import pytest
import torch

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.methods.base import DataSpec, get_method
from udl_med.methods.semi_supervised_gan import SemiSupervisedGAN, SemiSupervisedGANConfig
from tests.methods.multiscale_testkit import HandOpt

IMAGES = DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8), num_classes=3)
VECTORS = DataSpec(spatial_dims=0, in_channels=6, image_size=(), num_classes=3)
PAIRS = DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8))
SMALL_CYCLEGAN = {"channels": 4, "num_downsample": 1, "num_res_blocks": 1, "disc_channels": 4, "disc_layers": 1, "pool_size": 0}
SMALL_PIX2PIX = {"channels": (4, 8), "strides": (2,), "disc_channels": 4, "disc_layers": 1}
SMALL_K1 = {"d_channels": (4, 8), "g_channels": (8, 4), "d_hidden": (8,), "g_hidden": (8,), "latent_dim": 4}


def test_k1_refusals_name_their_keys() -> None:
    """One labeled class, a conv D, translations or a DCGAN generator on vectors: refused from ``<config>``, naming the key to fix."""
    with pytest.raises(ConfigError) as err:
        SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1), DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8), num_classes=1))
    assert (err.value.source, err.value.key) == ("<config>", "data.semi_supervised") and "at least 2 labeled classes" in err.value.problem
    with pytest.raises(ConfigError) as err:
        SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, discriminator="conv"), VECTORS)
    assert err.value.key == "model.discriminator"
    with pytest.raises(ConfigError) as err:
        SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, consistency_weight=1.0, consistency_shift=1), VECTORS)
    assert (err.value.source, err.value.key) == ("<config>", "model.consistency_shift") and err.value.problem.startswith("translations need images")
    with pytest.raises(ConfigError) as err:
        SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, generator="dcgan"), VECTORS)
    assert (err.value.source, err.value.key) == ("<config>", "model.generator")


@pytest.mark.parametrize(("d_norm", "module"), [("batch", torch.nn.modules.batchnorm._BatchNorm), ("instance", torch.nn.modules.instancenorm._InstanceNorm)])
def test_k1_d_norm_reaches_the_discriminator(d_norm: str, module: type) -> None:
    """``d_norm`` puts its normalisation in the conv D (the default ``none`` has none)."""
    plain = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1), IMAGES).discriminator
    normed = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, d_norm=d_norm), IMAGES).discriminator
    assert not any(isinstance(m, module) for m in plain.modules())
    assert any(isinstance(m, module) for m in normed.modules())


def test_k1_adams_take_the_configured_rates_and_betas() -> None:
    """D's Adam takes ``lr``, G's ``g_lr`` (``lr`` when unset), both with ``beta1``."""
    method = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, lr=0.02, g_lr=0.005, beta1=0.3), IMAGES)
    opts = method.configure_optimizers()
    assert opts["discriminator"].defaults["lr"] == 0.02 and opts["generator"].defaults["lr"] == 0.005
    assert opts["discriminator"].defaults["betas"] == (0.3, 0.999) == opts["generator"].defaults["betas"]
    unset = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, lr=0.02), IMAGES).configure_optimizers()
    assert unset["generator"].defaults["lr"] == 0.02


def _pair_batch(n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {keys.CT: torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, keys.MR: torch.rand(n, 1, 8, 8, generator=g) * 2 - 1}


@pytest.mark.parametrize(("name", "model"), [("cyclegan", SMALL_CYCLEGAN), ("pix2pix", SMALL_PIX2PIX)])
def test_every_discriminator_loss_carries_r1_at_a_due_step(name: str, model: dict) -> None:
    """The training step passes its step to each D's loss: at a step where lazy R1 is due, every D's loss has it, and at others none."""
    cls = get_method(name)
    method = cls(cls.Config(**model, r1_weight=4.0, r1_every=2), PAIRS)
    seen = []
    loss = method.adversary.discriminator_loss
    method.adversary.discriminator_loss = lambda *a, **k: (lambda parts: (seen.append(parts.r1), parts)[1])(loss(*a, **k))
    opt = HandOpt(method.configure_optimizers())
    for step, due in ((4, True), (5, False)):
        seen.clear()
        opt.global_step = step
        method.train_step(_pair_batch(), opt)
        assert len(seen) == 2 and all((r1 is not None) == due for r1 in seen), (step, seen)


@pytest.mark.parametrize(("name", "model"), [("cyclegan", SMALL_CYCLEGAN), ("pix2pix", SMALL_PIX2PIX)])
def test_a_patchgan_too_deep_for_the_images_is_refused_in_the_configs_words(name: str, model: dict) -> None:
    """``<config>: model.disc_layers: does not fit data.size: ...``, as the CLI prints it (the method is built from the config)."""
    cls = get_method(name)
    with pytest.raises(ConfigError) as err:
        cls(cls.Config(**{**model, "disc_layers": 4}), DataSpec(spatial_dims=2, in_channels=1, image_size=(8, 8)))
    assert (err.value.source, err.value.key) == ("<config>", "model.disc_layers")
    assert str(err.value).startswith("<config>: model.disc_layers: does not fit data.size: ")


def test_k1_d_kernel_size_reaches_the_conv_discriminator() -> None:
    method = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, d_kernel_size=5), IMAGES)
    convs = [m for m in method.discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.kernel_size == (5, 5) for m in convs)


def test_k1_logged_accuracy_is_the_share_of_labeled_items_d_classifies_right() -> None:
    """Without noise or dropout D is deterministic: the step's accuracy is that of D's argmax on the labeled batch before the step."""
    torch.manual_seed(0)
    method = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, input_noise_std=0.0, hidden_noise_std=0.0, unsupervised_weight=0.0), IMAGES)
    g = torch.Generator().manual_seed(2)
    batch = {keys.IMAGE: torch.rand(12, 1, 8, 8, generator=g) * 2 - 1, keys.LABEL: torch.arange(12) % 3}
    with torch.no_grad():
        right = (method.discriminator(batch[keys.IMAGE]).argmax(1) == batch[keys.LABEL]).float().mean()
    assert 0 < float(right) < 1  # a batch where right and wrong differ
    out = method.train_step(batch, HandOpt(method.configure_optimizers()))
    assert float(out[keys.ACCURACY]) == pytest.approx(float(right))


def test_cyclegan_generator_losses_by_hand() -> None:
    """L_GAN (LSGAN) + lambda * cycle L1 + lambda * lambda_identity * identity L1, each logged, from the weights before the step."""
    torch.manual_seed(0)
    cls = get_method("cyclegan")
    method = cls(cls.Config(**SMALL_CYCLEGAN, lambda_cycle=3.0, lambda_identity=0.4), PAIRS)
    batch = _pair_batch()
    x, y = batch[keys.CT], batch[keys.MR]
    G, F, d_mr, d_ct = method.g_ct2mr, method.g_mr2ct, method.d_mr, method.d_ct
    l1 = lambda a, b: (a - b).abs().mean()  # noqa: E731
    with torch.no_grad():
        gan = (d_mr(G(x)) - 1).square().mean() + (d_ct(F(y)) - 1).square().mean()
        cycle = 3.0 * (l1(F(G(x)), x) + l1(G(F(y)), y))
        identity = 3.0 * 0.4 * (l1(G(y), y) + l1(F(x), x))
    out = method.train_step(batch, HandOpt(method.configure_optimizers()))
    assert float(out[keys.LOSS_G_GAN]) == pytest.approx(float(gan), rel=1e-5)
    assert float(out[keys.LOSS_CYCLE]) == pytest.approx(float(cycle), rel=1e-5)
    assert float(out[keys.LOSS_IDENTITY]) == pytest.approx(float(identity), rel=1e-5)
    assert float(out[keys.LOSS_G]) == pytest.approx(float(gan + cycle + identity), rel=1e-5)


def test_cyclegan_skips_the_identity_pass_at_weight_0() -> None:
    """``lambda_identity: 0`` runs each generator twice a step (translation, cycle), not a third time on the other domain (its batch statistics untouched)."""
    cls = get_method("cyclegan")
    for weight, calls in ((0.0, 2), (0.5, 3)):
        method = cls(cls.Config(**SMALL_CYCLEGAN, lambda_identity=weight), PAIRS)
        counts = {"g": 0, "f": 0}
        method.g_ct2mr.register_forward_hook(lambda *_: counts.__setitem__("g", counts["g"] + 1))
        method.g_mr2ct.register_forward_hook(lambda *_: counts.__setitem__("f", counts["f"] + 1))
        out = method.train_step(_pair_batch(), HandOpt(method.configure_optimizers()))
        assert counts == {"g": calls, "f": calls}, weight
        assert (float(out[keys.LOSS_IDENTITY]) == 0.0) == (weight == 0.0)


class _GradsAfterG(HandOpt):
    """Records whether any parameter of ``watched`` has a gradient right after G's step."""

    def __init__(self, optimizers, watched) -> None:
        super().__init__(optimizers)
        self.watched, self.d_had_grads = watched, None

    def step(self, name, loss, retain_graph=False) -> None:
        super().step(name, loss, retain_graph)
        if name == "g":
            self.d_had_grads = any(p.grad is not None for m in self.watched for p in m.parameters())


def test_cyclegans_g_step_computes_no_d_gradient() -> None:
    """D_X and D_Y are frozen while G and F step (pytorch-CycleGAN's ``set_requires_grad``): G's backward leaves them without gradients."""
    cls = get_method("cyclegan")
    method = cls(cls.Config(**SMALL_CYCLEGAN), PAIRS)
    opt = _GradsAfterG(method.configure_optimizers(), [method.d_ct, method.d_mr])
    method.train_step(_pair_batch(), opt)
    assert opt.d_had_grads is False
    assert all(p.requires_grad for m in (method.d_ct, method.d_mr) for p in m.parameters())  # unfrozen for their own step


def test_pix2pix_strides_of_the_wrong_length_are_refused_in_the_configs_words() -> None:
    cls = get_method("pix2pix")
    with pytest.raises(ConfigError) as err:
        cls(cls.Config(**{**SMALL_PIX2PIX, "strides": (2, 2)}), PAIRS)
    assert str(err.value) == "<config>: model.strides: needs len(model.channels) - 1 = 1 entries, got 2"


def test_cyclegan_steps_on_multichannel_images() -> None:
    """Two-channel scans (a 2.5D stack): both generators and both discriminators take (and give) two channels."""
    cls = get_method("cyclegan")
    method = cls(cls.Config(**SMALL_CYCLEGAN), DataSpec(spatial_dims=2, in_channels=2, image_size=(8, 8)))
    g = torch.Generator().manual_seed(4)
    batch = {keys.CT: torch.rand(2, 2, 8, 8, generator=g) * 2 - 1, keys.MR: torch.rand(2, 2, 8, 8, generator=g) * 2 - 1}
    out = method.train_step(batch, HandOpt(method.configure_optimizers()))
    assert torch.isfinite(out[keys.LOSS_D]) and method.translate(batch[keys.CT], "ct2mr").shape == (2, 2, 8, 8)


def test_k1_entropy_term_enters_with_a_weight_below_1() -> None:
    """``entropy_weight: 0.5`` adds half the conditional entropy to D's loss (same networks, same draws as without it)."""
    losses = {}
    for weight in (0.0, 0.5):
        torch.manual_seed(3)
        method = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, entropy_weight=weight), VECTORS)
        g = torch.Generator().manual_seed(5)
        batch = {keys.IMAGE: torch.rand(6, 6, generator=g) * 2 - 1, keys.LABEL: torch.arange(6) % 3, keys.UNLABELED_IMAGE: torch.rand(6, 6, generator=g) * 2 - 1}
        torch.manual_seed(4)
        losses[weight] = method.train_step(batch, HandOpt(method.configure_optimizers()))
    entropy = float(losses[0.5]["entropy"])
    assert entropy > 0
    assert float(losses[0.5][keys.LOSS]) == pytest.approx(float(losses[0.0][keys.LOSS]) + 0.5 * entropy, rel=1e-5)


def test_k1_generators_take_g_channels_and_end_in_tanh() -> None:
    """The DCGAN generator's feature maps are ``g_channels``; the MLP generator of vectors squashes to [-1, 1] as the data are."""
    dcgan = SemiSupervisedGAN(SemiSupervisedGANConfig(**{**SMALL_K1, "g_channels": (12, 6)}), IMAGES).generator
    ups = [(m.in_channels, m.out_channels) for m in dcgan.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert ups == [(12, 6), (6, 1)]  # 12 -> 6 -> the image's channel
    mlp = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1), VECTORS).generator.eval()
    with torch.no_grad():
        out = mlp(100 * torch.randn(64, 4, generator=torch.Generator().manual_seed(0)))
    assert out.abs().max() <= 1


@pytest.mark.parametrize(("name", "model"), [("cyclegan", SMALL_CYCLEGAN), ("pix2pix", SMALL_PIX2PIX)])
def test_translation_norm_reaches_generators_and_discriminators(name: str, model: dict) -> None:
    """``norm: batch`` builds every generator and discriminator with batch norm (the default, instance, with none)."""
    cls = get_method(name)
    method = cls(cls.Config(**model, norm="batch"), PAIRS)
    nets = [method.g_ct2mr, method.g_mr2ct, method.d_ct, method.d_mr] if name == "cyclegan" else [*method.generators.values(), *method.discriminators.values()]
    assert all(any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()) for net in nets)
    default = cls(cls.Config(**model), PAIRS)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in default.modules())


def _convs(net: torch.nn.Module) -> list[tuple[int, int, int]]:
    """``(in, out, stride)`` of each convolution, in order."""
    kinds = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    return [(m.in_channels, m.out_channels, m.stride[0]) for m in net.modules() if isinstance(m, kinds)]


@pytest.mark.parametrize(("name", "model"), [("cyclegan", SMALL_CYCLEGAN), ("pix2pix", SMALL_PIX2PIX)])
def test_patchgan_takes_disc_channels_and_disc_layers(name: str, model: dict) -> None:
    """``disc_channels: 4, disc_layers: 2``: two strided convolutions 4 -> 8, then the stride-1 pair of a PatchGAN (8 -> 16 -> 1)."""
    cls = get_method(name)
    method = cls(cls.Config(**{**model, "disc_channels": 4, "disc_layers": 2}), DataSpec(spatial_dims=2, in_channels=1, image_size=(16, 16)))
    d = method.d_ct if name == "cyclegan" else method.discriminators["ct2mr"]
    first = 1 if name == "cyclegan" else 2  # pix2pix's D sees the pair
    assert _convs(d) == [(first, 4, 2), (4, 8, 2), (8, 16, 1), (16, 1, 1)]


def test_pix2pix_unet_takes_channels_and_strides() -> None:
    cls = get_method("pix2pix")
    unet = cls(cls.Config(**{**SMALL_PIX2PIX, "channels": (4, 6), "strides": (2,)}), PAIRS).generators["ct2mr"]
    assert [c for c in _convs(unet) if c[2] == 2][0] == (1, 4, 2)  # the first level: stride 2 to 4 channels
    assert (4, 6, 1) in _convs(unet)  # the bottom: 6 channels at stride 1


def test_k1_mlp_generators_take_g_hidden_and_batch_norm_and_end_in_tanh() -> None:
    """The MLP generator (vectors, or ``generator: mlp`` on images): ``g_hidden`` widths, batch norm, a tanh output."""
    for spec, extra in ((VECTORS, {}), (IMAGES, {"generator": "mlp", "discriminator": "mlp"})):
        g = SemiSupervisedGAN(SemiSupervisedGANConfig(**{**SMALL_K1, "g_hidden": (8, 5)}, **extra), spec).generator
        widths = [m.out_features for m in g.modules() if isinstance(m, torch.nn.Linear)]
        assert widths[:2] == [8, 5], extra
        assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in g.modules()) == 2
        with torch.no_grad():
            out = g.eval()(100 * torch.randn(64, 4, generator=torch.Generator().manual_seed(0)))
        assert out.abs().max() <= 1, extra


def test_k1_runs_the_target_pass_only_for_a_consistency_or_pseudo_label_term() -> None:
    """The second (target) pass of D over the unlabeled batch costs a forward, noise draws and batch statistics: only when a term uses it."""
    g = torch.Generator().manual_seed(6)
    batch = {keys.IMAGE: torch.rand(6, 6, generator=g) * 2 - 1, keys.LABEL: torch.arange(6) % 3, keys.UNLABELED_IMAGE: torch.rand(6, 6, generator=g) * 2 - 1}
    passes = {}
    for name, extra in (("none", {}), ("consistency", {"consistency_weight": 1.0}), ("pseudo", {"pseudo_label_weight": 1.0})):
        method = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, **extra), VECTORS)
        d, calls = method.discriminator, []
        inner = d.forward_features
        d.forward_features = lambda x: (calls.append(x.shape[0]), inner(x))[1]
        method.train_step(batch, HandOpt(method.configure_optimizers()))
        passes[name] = len(calls)
    assert passes["consistency"] == passes["pseudo"] == passes["none"] + 1


@pytest.mark.parametrize(("name", "model"), [("cyclegan", SMALL_CYCLEGAN), ("pix2pix", SMALL_PIX2PIX)])
def test_generator_spec_rebuilds_the_generator(name: str, model: dict) -> None:
    """``generator_spec`` (what export writes): the class path and kwargs build a network that loads the generator's weights strictly and translates alike."""
    import importlib

    cls = get_method(name)
    method = cls(cls.Config(**model), PAIRS).eval()
    for direction in ("ct2mr", "mr2ct"):
        path, kwargs = method.generator_spec(direction)
        module, _, cls_name = path.rpartition(".")
        rebuilt = getattr(importlib.import_module(module), cls_name)(**kwargs).eval()
        rebuilt.load_state_dict(method.generator(direction).state_dict(), strict=True)
        x = _pair_batch()[keys.CT]
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x), method.translate(x, direction))



def test_cyclegans_d_step_descends_both_discriminators_losses() -> None:
    """``loss_d`` is D_Y's LSGAN loss plus D_X's: the step's Adam update lowers each on the step's real and generated batches."""
    torch.manual_seed(0)
    cls = get_method("cyclegan")
    method = cls(cls.Config(**SMALL_CYCLEGAN, lr=1e-3), PAIRS)  # pool_size 0: D sees this step's fakes
    batch = _pair_batch()
    x, y = batch[keys.CT], batch[keys.MR]
    with torch.no_grad():
        fake_mr, fake_ct = method.g_ct2mr(x), method.g_mr2ct(y)  # what D's step sees (made before G's step)

    def d_losses() -> tuple[float, float]:
        lsgan = lambda d, real, fake: 0.5 * ((d(real) - 1).square().mean() + d(fake).square().mean())  # noqa: E731
        with torch.no_grad():
            return float(lsgan(method.d_mr, y, fake_mr)), float(lsgan(method.d_ct, x, fake_ct))

    before = d_losses()
    out = method.train_step(batch, HandOpt(method.configure_optimizers()))
    assert float(out[f"{keys.LOSS_D}_mr"]) == pytest.approx(before[0], rel=1e-5) and float(out[f"{keys.LOSS_D}_ct"]) == pytest.approx(before[1], rel=1e-5)
    assert float(out[keys.LOSS_D]) == pytest.approx(before[0] + before[1], rel=1e-5)
    after = d_losses()
    assert after[0] < before[0] and after[1] < before[1], (before, after)


def test_k1_noise_stds_reach_the_discriminator() -> None:
    """``input_noise_std`` and ``hidden_noise_std``: D in training mode is deterministic with both 0, and noisy with either set."""
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(7)) * 2 - 1
    for stds, noisy in (((0.0, 0.0), False), ((0.5, 0.0), True), ((0.0, 0.5), True)):
        d = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1, input_noise_std=stds[0], hidden_noise_std=stds[1]), IMAGES).discriminator.train()
        with torch.no_grad():
            assert (not torch.equal(d(x), d(x))) == noisy, stds


def test_k1_draws_one_fake_per_unlabeled_item() -> None:
    """The generated batch has the unlabeled batch's size (5 items of 6 values here, so neither axis is mistaken for the other)."""
    method = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL_K1), VECTORS)
    sizes = []
    method.generator.register_forward_hook(lambda module, args, output: sizes.append(output.shape[0]))
    g = torch.Generator().manual_seed(8)
    batch = {keys.IMAGE: torch.rand(3, 6, generator=g) * 2 - 1, keys.LABEL: torch.arange(3) % 3, keys.UNLABELED_IMAGE: torch.rand(5, 6, generator=g) * 2 - 1}
    method.train_step(batch, HandOpt(method.configure_optimizers()))
    assert sizes == [5]
