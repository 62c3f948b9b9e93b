"""ADA's overfitting signal for each objective, observed (issue 26, a mutant of the d_side sample, seed 5).

ADA tunes p from r_t = E[sign(D(x_real))]: the sign must be taken about D's decision
boundary, which for least squares is the midpoint of its two targets (0.5, or 0.45 with
label smoothing 0.9), not 0; logits and hinge scores are centred already.

Seed 7 (after ADA's one-resample rewrite): the refusals of ``Adversary``'s weights and of
``data.augment`` for an adversarial generator, word for word (the message is the fix).
Seed 8: an ``Adversary``'s feature matching is the squared difference of the batch means
unless told otherwise (Salimans et al.'s l2). Seed 9: PacGAN's packing wraps the given D
(and is the plain D at pack 1); an adversary built from a config with its own objective keeps
the other settings it is given.
"""

from __future__ import annotations

import pytest
import torch

from udl_med.engine.config import validate_config
from udl_med.errors import ConfigError
from udl_med.losses.gan import GANLoss
from udl_med.losses.kplus1 import KPlusOneLoss
from udl_med.methods.adversarial import Adversary, packed_discriminator
from udl_med.methods.base import get_method


@pytest.mark.parametrize(("mode", "real_label", "centre"), [("lsgan", 1.0, 0.5), ("lsgan", 0.9, 0.45), ("non-saturating", 1.0, 0.0), ("hinge", 1.0, 0.0)])
def test_decision_centres_scores_on_the_objectives_boundary(mode: str, real_label: float, centre: float) -> None:
    scores = torch.tensor([[-1.0], [0.2], [0.46], [0.6], [2.0]])
    decision = Adversary(GANLoss(mode, real_label=real_label)).decision(scores)
    torch.testing.assert_close(decision, scores - centre)
    assert torch.sign(decision).tolist() == torch.sign(scores - centre).tolist()


def test_an_adversary_adds_no_r1_unless_asked() -> None:
    critic = torch.nn.Linear(3, 1)
    real, fake = torch.randn(4, 3), torch.randn(4, 3)
    parts = Adversary(GANLoss("non-saturating")).discriminator_loss(lambda x, labels=None: critic(x), real, fake, step=0)
    assert parts.r1 is None and torch.equal(parts.loss, parts.adversarial)
    with_r1 = Adversary(GANLoss("non-saturating"), r1_weight=2.0).discriminator_loss(lambda x, labels=None: critic(x), real, fake, step=0)
    assert with_r1.r1 is not None and float(with_r1.loss.detach()) == pytest.approx(float(with_r1.adversarial.detach()) + 1.0 * float(with_r1.r1.detach()))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gp_weight": -1.0}, "gp_weight must be >= 0, got -1.0"),
        ({"clip_value": 0.0}, "clip_value must be > 0, got 0.0"),
        ({"r1_weight": -0.5}, "r1_weight must be >= 0 and r1_every >= 1, got -0.5 and 1"),
        ({"r1_every": 0}, "r1_weight must be >= 0 and r1_every >= 1, got 0.0 and 0"),
    ],
)
def test_an_adversary_refuses_bad_weights_word_for_word(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        Adversary(GANLoss("non-saturating"), **kwargs)
    assert str(err.value) == message


def test_data_augment_for_an_adversarial_generator_is_refused_with_the_fix_word_for_word() -> None:
    run = {"method": "gan", "data": {"source": "x.csv", "augment": [{"RandFlipd": {"prob": 0.5}}]}, "model": {}}
    with pytest.raises(ConfigError) as err:
        validate_config(run, "run.yaml")
    assert err.value.key == "data.augment"
    assert err.value.problem == (
        "transforms only the real items, so an adversarial generator learns the augmented distribution (a flipped abdomen has "
        "its liver on the left); augment what D sees, real and generated alike, with model.d_augment: diffaugment or ada"
    )


def test_an_adversarys_feature_matching_is_l2_by_default() -> None:
    real = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])  # means 2, 1, 0
    fake = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])  # means 0, 0.5, 1
    loss = Adversary(GANLoss("non-saturating")).feature_matching_loss(real, fake)
    assert float(loss) == pytest.approx((4.0 + 0.25 + 1.0) / 3)  # l2: the squared differences, averaged
    l1 = Adversary(GANLoss("non-saturating"), feature_distance="l1").feature_matching_loss(real, fake)
    assert float(l1) == pytest.approx((2.0 + 0.5 + 1.0) / 3)


class _Critic(torch.nn.Module):
    """A linear D with the ``(x, labels)`` call every discriminator takes."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(features, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(x)


def test_packing_wraps_the_given_discriminator() -> None:
    net = _Critic(6)  # built for 2 x 3 features
    assert packed_discriminator(net, 1) is net
    packed = packed_discriminator(net, 2)
    x = torch.randn(4, 3)
    scores = packed(x)
    assert scores.shape == (2, 1)
    torch.testing.assert_close(scores, net(x.reshape(2, 6)))  # items 0, 1 and 2, 3 side by side


def test_an_adversary_from_a_config_with_its_own_objective_keeps_the_other_settings() -> None:
    adversary = Adversary.from_config(get_method("gan").Config(), KPlusOneLoss(), feature_distance="l1", joint=True)
    assert isinstance(adversary.objective, KPlusOneLoss) and adversary.joint
    real, fake = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])
    assert float(adversary.feature_matching_loss(real, fake)) == pytest.approx((1.0 + 2.0) / 2)  # l1, not the default l2
