"""The ``dbn`` method: greedy layers in turn, fine-tuning beats random init, export, the engine path."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import yaml
from test_rbm_method import CONFIGS, SIZES, blob_items, build, fit, held_out

from udl_med import keys
from udl_med.data.memory import TensorItems
from udl_med.errors import ConfigError
from udl_med.methods.base import Method


def snapshot(method: Method) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in rbm.named_parameters()} for rbm in method.dbn.rbms]


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_greedy_layers_train_in_turn(spatial_dims: int, tmp_path: Path) -> None:
    config = dict(hidden=(32, 16), layer_steps=60, lr=0.05, momentum_switch_step=10)
    data = blob_items(125 * 16, SIZES[spatial_dims])  # one epoch of fresh blobs for the whole run
    x = held_out(spatial_dims)
    initial = build("dbn", spatial_dims, **config)  # the run's initial weights
    before = initial.evaluate(x)
    s0 = snapshot(initial)
    method = fit("dbn", spatial_dims, 60, data=data, out=tmp_path, **config).method
    s1 = snapshot(method)
    mid = method.evaluate(x)
    assert changed(s0[0], s1[0]) and not changed(s0[1], s1[1])  # only layer 0 trained
    assert mid["recon_layer0"] < 0.5 * before["recon_layer0"], (before, mid)
    method = fit("dbn", spatial_dims, 120, data=data, out=tmp_path, resume=True, **config).method  # steps 61-120
    s2 = snapshot(method)
    after = method.evaluate(x)
    assert not changed(s1[0], s2[0]) and changed(s1[1], s2[1])  # then only layer 1
    assert after["recon_layer1"] < 0.5 * mid["recon_layer1"], (mid, after)
    assert after["recon_layer0"] == mid["recon_layer0"]
    method = fit("dbn", spatial_dims, 125, data=data, out=tmp_path, resume=True, **config).method  # no labels: the top RBM keeps training
    s3 = snapshot(method)
    assert not changed(s2[0], s3[0]) and changed(s2[1], s3[1])
    assert method.encode(x[keys.IMAGE]).shape == (32, 16)
    assert method.sample(3, torch.Generator().manual_seed(0)).shape == (3, 1, *SIZES[spatial_dims])
    assert method.preview(x)["filters"].shape[1:] == (1, *SIZES[spatial_dims])


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as images in [-1, 1] ``(1797, 1, 8, 8)`` and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16 * 2 - 1
    return x, torch.tensor(data.target)


def train_digits(
    layer_steps: int, seed: int, x: torch.Tensor, y: torch.Tensor, unlabeled: torch.Tensor, labeled: torch.Tensor, out: Path
) -> Method:
    """Greedy phase on unlabeled digits (``layer_steps`` per layer, batches of 32), then 300 fine-tuning steps on the few labels (16).

    Two engine runs in one folder: the greedy run, then the same run resumed on the labeled items.
    """
    config = dict(hidden=(64, 32), layer_steps=layer_steps, lr=0.1, momentum_switch_step=50, finetune_lr=0.003)
    greedy = 2 * layer_steps
    if greedy:
        fit("dbn", 2, greedy, batch_size=32, seed=seed, data=TensorItems(x[unlabeled], num_classes=10), out=out, **config)
    labels = TensorItems(x[labeled], y[labeled], num_classes=10)
    return fit("dbn", 2, greedy + 300, batch_size=16, seed=seed, data=labels, out=out, resume=bool(greedy), **config).method


def test_fine_tuned_dbn_beats_the_same_network_from_random_init_with_few_labels(tmp_path: Path) -> None:
    x, y = digits()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, pool = order[:400], order[400:]
    labeled = torch.cat([pool[y[pool] == c][:3] for c in range(10)])  # 30 labels, 3 per class
    accuracy = {}
    for name, layer_steps in (("pretrained", 300), ("random", 0)):
        accuracy[name] = [
            train_digits(layer_steps, seed, x, y, pool, labeled, tmp_path / f"{name}{seed}").evaluate({keys.IMAGE: x[test], keys.LABEL: y[test]})[keys.ACCURACY]
            for seed in (0, 1)
        ]
    mean = {k: sum(v) / len(v) for k, v in accuracy.items()}
    assert mean["pretrained"] > mean["random"] + 0.05, accuracy
    assert mean["pretrained"] > 0.7, accuracy


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_exported_networks_load_strictly_and_match_classify_and_encode(visible: str, tmp_path: Path) -> None:
    x = held_out(2, 6)[keys.IMAGE]

    def load(method: Method) -> torch.nn.Module:
        class_path, kwargs, state = method.export_encoder()
        module, name = class_path.rsplit(".", 1)
        net = getattr(importlib.import_module(module), name)(**kwargs)
        net.load_state_dict(state, strict=True)
        return net.eval()

    config = dict(hidden=(16, 8), layer_steps=5, visible=visible, lr=0.005)
    labeled = blob_items(15 * 16, SIZES[2], num_classes=3, labeled=True)
    classifier = fit("dbn", 2, 10, data=labeled, out=tmp_path, **config).method  # greedy phase only: the export carries the RBM weights
    net = load(classifier)
    assert net.out_channels == 3
    hidden = torch.nn.Sequential(*list(net.children())[:-1])(x)
    torch.testing.assert_close(hidden, classifier.encode(x), atol=1e-5, rtol=1e-4)
    classifier = fit("dbn", 2, 15, data=labeled, out=tmp_path, resume=True, **config).method  # 5 fine-tuning steps
    torch.testing.assert_close(load(classifier)(x), classifier.classify(x), atol=1e-5, rtol=1e-4)

    features = fit("dbn", 2, 10, **config).method
    torch.testing.assert_close(torch.sigmoid(load(features)(x)), features.encode(x), atol=1e-5, rtol=1e-4)


def test_fine_tuning_without_labels_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="data.labeled"):  # step 3 fine-tunes: the unlabeled items stop the run
        fit("dbn", 2, 3, num_classes=2, hidden=(8,), layer_steps=2)


def test_tiny_config_pretrains_and_fine_tunes_through_the_engine(phantom_manifest: Path, tracking_uri: str, tmp_path: Path) -> None:
    from udl_med.engine.train import train

    raw = yaml.safe_load((CONFIGS / "dbn-tiny.yaml").read_text())
    overrides = [
        f"data.source={phantom_manifest}",
        f"tracking.uri={tracking_uri}",
        f"output_dir={tmp_path / 'run'}",
        "model.layer_steps=5",
        "train.steps=14",
        "train.eval_every=14",
        "train.eval_items=8",
        "tracking.log_model=false",
        "model.sample_steps=5",
    ]
    report = train(raw, overrides)
    assert report["steps"] == 14
    assert {"eval/accuracy", "eval/recon_layer0", "eval/recon_layer1", "train/accuracy"} <= set(report)
    assert (tmp_path / "run" / "previews" / "filters_step000014.png").is_file()
