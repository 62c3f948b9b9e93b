"""The adversarial module: one Adversary scores D and G for every adversarial method; shared keys, refusals and the pack check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from udl_med import keys
from udl_med.engine.config import validate_config
from udl_med.engine.optimization import EngineOptimization
from udl_med.errors import ConfigError
from udl_med.losses.gan import GANLoss, feature_matching_loss, gradient_penalty
from udl_med.losses.image_pool import ImagePool
from udl_med.losses.kplus1 import KPlusOneLoss
from udl_med.methods.adversarial import Adversary, discriminator_logs, replay, score_metrics
from udl_med.methods.base import DataSpec, get_method
from tests.engine.test_train import _udl_med


def critic_of(net: nn.Module):
    return lambda x, labels=None: net(x)


def test_discriminator_and_generator_losses_are_the_objectives_on_the_critics_scores() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 1))
    real, fake = torch.randn(4, 2, 4), torch.randn(4, 2, 4)
    adversary = Adversary(GANLoss("vanilla", real_label=0.9))
    parts = adversary.discriminator_loss(critic_of(net), real, fake)
    expected = GANLoss("vanilla", real_label=0.9).discriminator_loss(net(real), net(fake))
    assert torch.equal(parts.loss, expected) and torch.equal(parts.adversarial, expected) and parts.gradient_penalty is None
    assert torch.equal(parts.real_scores, net(real)) and parts.real_scores.requires_grad  # in the graph: a method may add terms
    # G's target is never smoothed
    assert torch.equal(adversary.generator_loss(critic_of(net), fake), GANLoss("vanilla").generator_loss(net(fake)))


def test_gradient_penalty_is_added_with_its_weight_and_scored_with_the_real_labels() -> None:
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    seen: list[Any] = []

    def critic(x, labels=None):
        seen.append(labels)
        return net(x)

    real, fake, labels = torch.randn(5, 3), torch.randn(5, 3), torch.arange(5)
    adversary = Adversary(GANLoss("wgan-gp"), gp_weight=10.0)
    torch.manual_seed(1)
    parts = adversary.discriminator_loss(critic, real, fake, labels, labels + 1)
    torch.manual_seed(1)
    penalty = gradient_penalty(critic_of(net), real, fake)
    assert torch.allclose(parts.gradient_penalty, penalty) and parts.gradient_penalty > 0
    assert torch.allclose(parts.loss, parts.adversarial + 10.0 * penalty)
    assert torch.equal(seen[-1], labels)  # the interpolates take the real labels


def test_from_config_turns_the_penalty_on_only_for_wgan_gp() -> None:
    lapgan = get_method("lapgan").Config
    assert Adversary.from_config(lapgan(gan_mode="wgan-gp")).gp_weight == 10.0
    assert Adversary.from_config(lapgan(gan_mode="lsgan")).gp_weight == 0.0
    smooth = Adversary.from_config(lapgan(gan_mode="lsgan", label_smoothing=0.9))
    assert smooth.objective.real_label == 0.9 and smooth.objective.mode == "lsgan"
    gan = get_method("gan").Config
    assert Adversary.from_config(gan(loss="wgan-gp")).gp_weight == 10.0 and Adversary.from_config(gan()).gp_weight == 0.0


def test_joint_scoring_calls_the_critic_once_on_real_then_fake() -> None:
    calls: list[torch.Tensor] = []

    def critic(x, labels=None):
        calls.append(x)
        return x.sum(1, keepdim=True) + (0 if labels is None else labels[:, None].float())

    real, fake = torch.randn(3, 2), torch.randn(4, 2)
    r, f = Adversary(GANLoss("lsgan"), joint=True).scores(critic, real, fake, torch.zeros(3), torch.ones(4))
    assert len(calls) == 1 and torch.equal(calls[0], torch.cat([real, fake]))
    assert torch.allclose(r, real.sum(1, keepdim=True)) and torch.allclose(f, fake.sum(1, keepdim=True) + 1)


def test_clipping_after_the_d_step_and_argument_checks() -> None:
    net = nn.Linear(4, 1)
    with torch.no_grad():
        net.weight.fill_(0.5)
    Adversary(GANLoss("wgan"), clip_value=0.01).after_discriminator_step(net)
    assert net.weight.abs().max() <= 0.01
    Adversary(GANLoss("vanilla")).after_discriminator_step(net)  # no clipping: unchanged
    with pytest.raises(ValueError, match="gp_weight"):
        Adversary(GANLoss("wgan-gp"), gp_weight=-1.0)
    with pytest.raises(ValueError, match="clip_value"):
        Adversary(GANLoss("wgan"), clip_value=0.0)


def test_feature_matching_and_the_k_plus_one_objective() -> None:
    real, fake = torch.randn(6, 5), torch.randn(4, 5)
    assert torch.equal(Adversary(GANLoss("vanilla"), feature_distance="l1").feature_matching_loss(real, fake), feature_matching_loss(real, fake, distance="l1"))
    net = nn.Linear(5, 3)
    parts = Adversary(KPlusOneLoss()).discriminator_loss(critic_of(net), real, fake)
    assert torch.equal(parts.loss, KPlusOneLoss().discriminator_loss(net(real), net(fake)))


def test_replay_keeps_each_fakes_label_and_logs_and_metrics() -> None:
    torch.manual_seed(0)
    pool = ImagePool(4)
    for _ in range(5):
        labels = torch.randint(3, (4,))
        fake = labels.float()[:, None, None, None].expand(4, 1, 2, 2) + 0.1  # each fake carries its label in its values
        out, out_labels = replay(pool, fake, labels)
        assert torch.equal(out[:, 0, 0, 0].floor().long(), out_labels)
    same, none = replay(ImagePool(0), fake, labels)
    assert same is fake and none is labels
    scores = Adversary(GANLoss("vanilla")).discriminator_loss(critic_of(nn.Linear(2, 1)), torch.randn(3, 2), torch.randn(3, 2))
    logs = discriminator_logs([(scores, scores.loss + 1.0)])
    assert logs[keys.LOSS_D] == pytest.approx(float(scores.loss.detach()) + 1.0) and not logs[keys.D_REAL].requires_grad
    metrics = score_metrics(torch.tensor([1.0, -1.0]), torch.tensor([-2.0, -3.0]), wasserstein=False)
    assert metrics == {keys.D_REAL: 0.0, keys.D_FAKE: -2.5, keys.D_ACCURACY: 0.75}
    assert score_metrics(torch.tensor([1.0]), torch.tensor([-2.0]), wasserstein=True)[keys.WASSERSTEIN] == 3.0


# -- every adversarial method -------------------------------------------------------------

IMAGES = DataSpec(spatial_dims=2, in_channels=1, image_size=(16, 16), num_classes=3)
PAIRS = DataSpec(spatial_dims=2, in_channels=1, image_size=(32, 32))
METHODS: dict[str, tuple[dict[str, Any], DataSpec]] = {
    "gan": ({"latent_dim": 8, "g_channels": [16, 8], "d_channels": [8, 16]}, IMAGES),
    "lapgan": ({"latent_dim": 8, "coarse_channels": [8], "fine_channels": 4, "fine_blocks": 1, "disc_channels": [4], "levels": 2}, IMAGES),
    "two_stage_gan": ({"latent_dim": 8, "stage1_channels": [8], "stage2_channels": 8, "stage2_blocks": 1, "disc2_channels": [4], "embed_dim": 4, "stage1_steps": 1}, IMAGES),
    "semi_supervised_gan": ({"d_channels": [8, 16], "g_channels": [16, 8], "latent_dim": 8, "generator_objective": "non_saturating"}, IMAGES),
    "cyclegan": ({"channels": 4, "num_res_blocks": 1, "disc_channels": 4, "disc_layers": 2, "pool_size": 2}, PAIRS),
    "pix2pix": ({"channels": [4, 8, 16], "strides": [2, 2], "disc_channels": 4, "disc_layers": 2}, PAIRS),
}


def _batch(data: DataSpec, n: int = 4) -> dict[str, torch.Tensor]:
    size = data.image_size
    if data is PAIRS:
        return {keys.CT: torch.rand(n, 1, *size) * 2 - 1, keys.MR: torch.rand(n, 1, *size) * 2 - 1}
    return {keys.IMAGE: torch.rand(n, 1, *size) * 2 - 1, keys.LABEL: torch.arange(n) % 3, keys.UNLABELED_IMAGE: torch.rand(n, 1, *size) * 2 - 1}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_adversarial_method_asks_its_adversary_for_d_and_g_losses(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seam a D-side trick uses: both losses of every method go through Adversary."""
    calls: list[str] = []
    d_loss, g_loss = Adversary.discriminator_loss, Adversary.generator_loss
    monkeypatch.setattr(Adversary, "discriminator_loss", lambda self, *a, **k: calls.append("d") or d_loss(self, *a, **k))
    monkeypatch.setattr(Adversary, "generator_loss", lambda self, *a, **k: calls.append("g") or g_loss(self, *a, **k))
    model, data = METHODS[name]
    torch.manual_seed(0)
    cls = get_method(name)
    method = cls(cls.Config(**model), data)
    assert isinstance(method.adversary, Adversary)
    opt = EngineOptimization(method.configure_optimizers(), torch.device("cpu"))
    opt.begin_step(0, lambda: _batch(data), method.batches_per_step() - 1)
    method.train().train_step(_batch(data), opt)
    assert "d" in calls and "g" in calls


@pytest.mark.parametrize("name", ["lapgan", "two_stage_gan", "cyclegan", "pix2pix"])
def test_label_smoothing_is_a_key_of_every_gan_mode_method_and_refused_with_a_wasserstein_critic(name: str) -> None:
    cls = get_method(name).Config
    assert cls().label_smoothing == 1.0 and cls(label_smoothing=0.9).label_smoothing == 0.9
    with pytest.raises(ValueError, match=r"\(gan_mode wgan\) has no target to smooth"):
        cls(gan_mode="wgan", label_smoothing=0.9)


def _gan_run(tmp_path: Path, pack: int, batch_size: int) -> dict[str, Any]:
    return {
        "method": "gan",
        "data": {"source": "x.csv", "layout": "2d", "size": [16, 16]},
        "model": {"latent_dim": 8, "g_channels": [16, 8], "d_channels": [8, 16], "pack": pack},
        "train": {"batch_size": batch_size},
        "tracking": {"enabled": False},
        "output_dir": str(tmp_path),
    }


def test_pack_must_divide_the_batch_size_when_the_config_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(_gan_run(tmp_path, 3, 8), "run.yaml")
    assert err.value.key == "model.pack" and str(err.value).startswith("run.yaml: model.pack: ") and "train.batch_size" in str(err.value)
    assert validate_config(_gan_run(tmp_path, 2, 8), "run.yaml").model.pack == 2


def test_pack_against_the_batch_size_exits_2_before_training() -> None:
    proc = _udl_med("train", "gan-ring-best", "--set", "model.pack=3")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "model.pack" in lines[0] and "train.batch_size" in lines[0]
