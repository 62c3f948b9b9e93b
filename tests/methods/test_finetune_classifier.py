"""The ``finetune_classifier`` method: the LP head at the start, LP-FT learning through the engine, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from udl_med import keys
from udl_med.data.memory import TensorItems
from udl_med.engine.fit import fit_in_memory
from udl_med.engine.model_io import LoadedModel
from udl_med.errors import ConfigError
from udl_med.evaluation.probe import fit_linear_head
from udl_med.inference.export_encoder import export_encoder
from udl_med.methods.base import DataSpec, get_method

SIZES = {2: (16, 16), 3: (8, 8, 8)}
AE = {"latent_dim": 4, "channels": [4, 8], "strides": [2, 2], "num_res_units": 0}


def exported_encoder(tmp_path: Path, spatial_dims: int) -> Path:
    """An autoencoder's encoder (a MONAI Regressor), exported as ``udl-med export --format encoder`` writes it."""
    cls = get_method("autoencoder")
    spec = DataSpec(spatial_dims=spatial_dims, in_channels=1, image_size=SIZES[spatial_dims])
    torch.manual_seed(0)
    method = cls(cls.Config(**AE), spec).eval()
    config = {"method": "autoencoder", "data": {"source": "x", "layout": f"{spatial_dims}d", "size": list(SIZES[spatial_dims])}, "model": AE}
    loaded = LoadedModel(method=method, config=config, data_spec=spec, source="test", folder=tmp_path)
    return Path(export_encoder(loaded, tmp_path / f"encoder{spatial_dims}d")["out"])


def spec(spatial_dims: int, num_classes: int = 2) -> DataSpec:
    return DataSpec(spatial_dims=spatial_dims, in_channels=1, image_size=SIZES[spatial_dims], num_classes=num_classes)


def two_classes(n: int, spatial_dims: int, seed: int) -> TensorItems:
    """Class 0: a bright half-space on the first axis's low side; class 1: on its high side; plus noise."""
    g = torch.Generator().manual_seed(seed)
    size = SIZES[spatial_dims]
    labels = torch.arange(n) % 2
    ramp = torch.linspace(-1, 1, size[0]).view(-1, *[1] * (spatial_dims - 1))
    side = torch.where(labels.view(-1, *[1] * spatial_dims) == 0, ramp < 0, ramp > 0)
    images = torch.where(side, 0.5, -1.0).expand(n, *size) + 0.3 * torch.randn(n, *size, generator=g)
    return TensorItems(images[:, None].clamp(-1, 1), labels, num_classes=2)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_head_starts_as_the_logistic_regression_on_frozen_features(tmp_path: Path, spatial_dims: int) -> None:
    folder = exported_encoder(tmp_path, spatial_dims)
    data = two_classes(12, spatial_dims, 0)
    cls = get_method("finetune_classifier")
    method = cls(cls.Config(encoder=str(folder), head_init_items=12), spec(spatial_dims))
    assert method.reference_batch_size() == 12
    reference = data.batch(list(range(12)))
    method.on_train_start(reference, torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = method.encoder.eval()(reference[keys.IMAGE]).flatten(1).numpy()
    expected = fit_linear_head(x, reference[keys.LABEL].numpy(), 2, c=0.1)
    torch.testing.assert_close(method.head.weight, expected.weight)
    torch.testing.assert_close(method.head.bias, expected.bias)
    before = method.head.weight.clone()
    method.on_train_start(data.batch(list(range(6))), torch.Generator())  # a resumed run: the head is not fitted again
    assert torch.equal(method.head.weight, before) and bool(method.head_fitted)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_lp_ft_through_the_engine_learns_from_a_random_encoder(tmp_path: Path, spatial_dims: int) -> None:
    folder = exported_encoder(tmp_path, spatial_dims)
    train_set, test = two_classes(32, spatial_dims, 1), two_classes(32, spatial_dims, 2)
    model = {"encoder": str(folder), "pretrained": False, "init_seed": 3, "head_init_items": 32, "lr": 3e-3}
    run = fit_in_memory("finetune_classifier", model, train_set, steps=40, batch_size=8, seed=0)
    losses = run.losses()
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10]), losses
    metrics = run.method.evaluate(test.batch(list(range(32))))
    assert metrics[keys.ACCURACY] >= 0.9, metrics
    # the random init is the exported architecture from init_seed, not the exported weights
    exported = torch.load(folder / keys.ENCODER_WEIGHTS, weights_only=True)
    cls = get_method("finetune_classifier")
    fresh = cls(cls.Config(**model), spec(spatial_dims))
    name = next(k for k in exported if k.endswith("weight"))
    assert not torch.equal(fresh.encoder.state_dict()[name], exported[name])


def test_resume_is_exact_and_keeps_the_fine_tuned_head(tmp_path: Path) -> None:
    folder = exported_encoder(tmp_path, 2)
    data = two_classes(16, 2, 0)
    model = {"encoder": str(folder), "head_init_items": 16}
    straight = fit_in_memory("finetune_classifier", model, data, steps=6, batch_size=4, seed=1).method
    fit_in_memory("finetune_classifier", model, data, steps=3, batch_size=4, seed=1, output_dir=tmp_path / "run")
    resumed = fit_in_memory("finetune_classifier", model, data, steps=6, batch_size=4, seed=1, output_dir=tmp_path / "run", resume=True).method
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_one_class_is_a_config_error(tmp_path: Path) -> None:
    folder = exported_encoder(tmp_path, 2)
    cls = get_method("finetune_classifier")
    with pytest.raises(ConfigError, match="data.labeled"):
        cls(cls.Config(encoder=str(folder)), spec(2, num_classes=1))
