"""K+1 ensembles (``model.ensemble``): members trained side by side, classified and exported as the mean of their softmaxes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from udl_med import keys
from udl_med.methods.base import DataSpec
from udl_med.methods.semi_supervised_gan import SemiSupervisedGAN, SemiSupervisedGANConfig
from udl_med.nets.ensemble import SoftmaxAverage
from tests.methods.multiscale_testkit import HandOpt

VECTORS = DataSpec(spatial_dims=0, in_channels=10, image_size=(), num_classes=3)
SMALL = dict(d_hidden=(8,), g_hidden=(8, 8), latent_dim=4)


def _batch(n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        keys.IMAGE: torch.rand(n, 10, generator=g) * 2 - 1,
        keys.LABEL: torch.arange(n) % 3,
        keys.UNLABELED_IMAGE: torch.rand(n, 10, generator=g) * 2 - 1,
    }


def test_softmax_average_is_the_log_of_the_mean_probability() -> None:
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    out = SoftmaxAverage([a, b])(x)
    by_hand = (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2
    assert torch.allclose(out.exp(), by_hand, atol=1e-6)
    assert torch.allclose(torch.softmax(out, 1), by_hand, atol=1e-6)  # reads as logits
    assert torch.allclose(SoftmaxAverage([a])(x), torch.log_softmax(a(x), 1), atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        SoftmaxAverage([])


def test_members_are_distinct_pairs_and_one_member_keeps_the_single_layout() -> None:
    torch.manual_seed(0)
    single = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL), VECTORS)
    assert not isinstance(single.discriminator, SoftmaxAverage) and single.classifier_members == 1
    assert all(k.startswith("net.") for k in single.discriminator.state_dict())
    triple = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL, ensemble=3), VECTORS)
    assert triple.classifier_members == 3 and len(triple.generator) == 3
    weights = [m.net.output.weight for m in triple.discriminator.members]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    labels_only = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL, ensemble=2, unsupervised_weight=0), VECTORS)
    assert labels_only.generator is None and len(labels_only.discriminator.members) == 2


def test_each_member_steps_exactly_as_it_would_alone() -> None:
    """No noise, so the only draws are G's z: member 0 of a pair steps bit for bit like the same weights trained alone."""
    settings = dict(**SMALL, input_noise_std=0.0, hidden_noise_std=0.0, consistency_weight=2.0)
    torch.manual_seed(1)
    pair = SemiSupervisedGAN(SemiSupervisedGANConfig(**settings, ensemble=2), VECTORS)
    alone = SemiSupervisedGAN(SemiSupervisedGANConfig(**settings), VECTORS)
    alone.discriminator.load_state_dict(pair.discriminator.members[0].state_dict())
    alone.generator.load_state_dict(pair.generator[0].state_dict())
    other_before = [p.detach().clone() for p in pair.discriminator.members[1].parameters()]
    with torch.no_grad():
        ce_other = float(torch.nn.functional.cross_entropy(pair.discriminator.members[1](_batch()[keys.IMAGE]), _batch()[keys.LABEL]))
    pair_opt, alone_opt = HandOpt(pair.configure_optimizers()), HandOpt(alone.configure_optimizers())
    torch.manual_seed(2)
    out_pair = pair.train_step(_batch(), pair_opt)
    torch.manual_seed(2)
    out_alone = alone.train_step(_batch(), alone_opt)
    assert pair_opt.stepped == alone_opt.stepped == ["discriminator", "generator"]
    for mine, single in zip(pair.discriminator.members[0].state_dict().values(), alone.discriminator.state_dict().values()):
        assert torch.allclose(mine, single, atol=1e-7)
    for mine, single in zip(pair.generator[0].state_dict().values(), alone.generator.state_dict().values()):
        assert torch.allclose(mine, single, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(other_before, pair.discriminator.members[1].parameters()))
    # the logs are the members' means
    assert float(out_pair[keys.CE]) == pytest.approx((float(out_alone[keys.CE]) + ce_other) / 2, rel=1e-5)
    assert {keys.CE, keys.UNSUPERVISED, keys.GENERATOR, keys.D_REAL, keys.D_FAKE, "consistency"} <= set(out_pair)


def test_classify_and_evaluate_use_the_mean_of_the_member_softmaxes() -> None:
    torch.manual_seed(3)
    method = SemiSupervisedGAN(SemiSupervisedGANConfig(**SMALL, ensemble=2), VECTORS).eval()
    batch = _batch()
    x = batch[keys.IMAGE]
    with torch.no_grad():
        by_hand = sum(torch.softmax(m(x), 1) for m in method.discriminator.members) / 2
        z = [torch.logsumexp(m(x), 1).exp() for m in method.discriminator.members]
    probs = method.classify(x)
    assert torch.allclose(probs, by_hand, atol=1e-6)
    metrics = method.evaluate(batch)
    assert metrics[keys.ACCURACY] == pytest.approx(float((by_hand.argmax(1) == batch[keys.LABEL]).float().mean()))
    assert metrics[keys.CE] == pytest.approx(float(-by_hand[torch.arange(6), batch[keys.LABEL]].log().mean()), rel=1e-5)
    assert metrics[keys.D_REAL] == pytest.approx(float(sum((zi / (zi + 1)).mean() for zi in z) / 2), rel=1e-5)


def test_ensemble_refuses_ada_and_nonsense_naming_the_key() -> None:
    with pytest.raises(ValidationError, match="ensemble"):
        SemiSupervisedGANConfig(ensemble=0)
    with pytest.raises(ValidationError, match=r"ensemble[\s\S]*d_augment: ada"):
        SemiSupervisedGANConfig(ensemble=2, d_augment="ada")
    SemiSupervisedGANConfig(ensemble=2, d_augment="diffaugment")  # stateless: allowed


def test_trained_ensemble_saves_loads_and_exports_as_its_mean(tmp_path) -> None:
    """Through the engine (EMA weights, model file): ``classify`` and the exported SoftmaxAverage agree, and the pair learns."""
    from udl_med.data.memory import TensorItems
    from udl_med.data.semi_supervised import SemiSupervisedItems
    from udl_med.engine.model_io import load_model
    from udl_med.engine.train import train
    from udl_med.inference.export_classifier import export_classifier, load_classifier

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 10)).astype(np.float32)
    y = np.repeat(np.arange(3), 40)
    x = np.tanh(centres[y] + 0.3 * rng.normal(size=(120, 10)).astype(np.float32))
    labeled = np.concatenate([np.nonzero(y == k)[0][:2] for k in range(3)])
    train_set = SemiSupervisedItems(TensorItems(x[labeled], y[labeled]), TensorItems(x), 3)
    config = {
        "method": "semi_supervised_gan",
        "seed": 0,
        "data": {"kind": "memory"},
        "model": {"d_hidden": [16], "g_hidden": [16], "latent_dim": 4, "ensemble": 2},
        "train": {"steps": 40, "batch_size": 12, "ema_decay": 0.9, "eval_every": 40, "eval_items": 120, "device": "cpu", "threads": 1},
        "tracking": {"enabled": False},
        "output_dir": str(tmp_path / "run"),
    }
    metrics = train(config, datasets=(train_set, TensorItems(x, y)))
    assert metrics["eval/accuracy"] > 0.8  # well-separated clusters from 2 labels each: chance is 1/3
    loaded = load_model(tmp_path / "run")
    probs = loaded.method.classify(torch.from_numpy(x))
    assert math.isclose(float((probs.argmax(1).numpy() == y).mean()), metrics["eval/accuracy"], abs_tol=1e-6)
    result = export_classifier(loaded, tmp_path / "export")
    net, spec = load_classifier(tmp_path / "export")
    assert spec["members"] == 2 and spec["output"] == "log_probabilities" and isinstance(net, SoftmaxAverage)
    assert result["n_parameters"] == sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        assert torch.allclose(torch.softmax(net(torch.from_numpy(x)), 1), probs, atol=1e-5)
