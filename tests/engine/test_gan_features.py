"""Engine features adversarial methods need: the step clock, several batches per step, a
reference batch, optimizer snapshots, inference modules, sample-based FID, in-memory and
point data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import Field

from udl_med import keys
from udl_med.data.memory import TensorItems, memory_data_spec
from udl_med.engine.model_io import load_model
from udl_med.engine.optimization import EngineOptimization
from udl_med.engine.train import Trainer, scalars, train
from udl_med.engine.config import validate_config
from udl_med.errors import ConfigError
from udl_med.methods.base import Capability, DataSpec, Method, MethodConfig, register


class ToyConfig(MethodConfig):
    extra_batches: int = Field(2, ge=0)
    reference: int = Field(0, ge=0)


@register("test-toy-sampler")
class ToySampler(Method):
    """A Gaussian 'generator' (a learnt mean) with a useless 'critic': records what the engine hands it."""

    Config = ToyConfig
    batch_keys = (keys.IMAGE,)
    capabilities = frozenset({Capability.SAMPLE})
    inference_modules = ("generator",)

    def __init__(self, config: ToyConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        self.generator = torch.nn.Linear(1, data.in_channels)
        self.critic = torch.nn.Linear(data.in_channels, 1)
        self.register_buffer("reference", torch.zeros(max(config.reference, 1), data.in_channels))
        self.seen: list[tuple[int, list[torch.Tensor]]] = []
        self.started_with: list[torch.Tensor | None] = []

    def batches_per_step(self) -> int:
        return 1 + self.config.extra_batches

    def reference_batch_size(self) -> int:
        return self.config.reference

    def on_train_start(self, reference, generator) -> None:
        self.started_with.append(None if reference is None else reference[keys.IMAGE].clone())
        if reference is not None:
            self.reference.copy_(reference[keys.IMAGE])

    def configure_optimizers(self):
        return {"g": torch.optim.Adam(self.generator.parameters(), lr=0.05), "d": torch.optim.SGD(self.critic.parameters(), lr=0.01)}

    def train_step(self, batch, opt):
        batches = [batch[keys.IMAGE]] + [opt.next_batch()[keys.IMAGE] for _ in range(self.config.extra_batches)]
        self.seen.append((opt.global_step, batches))
        loss_d = self.critic(torch.cat(batches)).pow(2).mean()
        opt.step("d", loss_d)
        x = batches[-1]
        loss_g = (self.generator(torch.ones(1, 1)) - x.mean(0, keepdim=True)).pow(2).mean()
        opt.step("g", loss_g)
        return {"loss_g": loss_g.detach(), "loss_d": loss_d.detach(), "constant": 1.0}

    def sample(self, n, generator=None, label=None):
        noise = torch.randn(n, self.data.in_channels, generator=generator)
        return self.generator(torch.ones(n, 1)) + 0.1 * noise

    @torch.no_grad()
    def preview(self, batch):
        return {"points": self.sample(16, torch.Generator().manual_seed(0))}


def toy_config(tmp_path: Path, uri: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "method": "test-toy-sampler",
        "seed": 4,
        "data": {"kind": "memory"},
        "model": {},
        "train": {"steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 3, "log_every": 1},
        "tracking": {"uri": uri, "experiment": "gan-features", "log_model": False},
        "output_dir": str(tmp_path / "run"),
    }
    for section, values in overrides.items():
        config[section] = {**config[section], **values} if isinstance(values, dict) else values
    return config


def points(n: int, seed: int) -> TensorItems:
    return TensorItems(torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) + 3.0)


def run_toy(config: dict[str, Any], resume: bool = False) -> Trainer:
    trainer = Trainer(validate_config(config), resume=resume, datasets=(points(40, 0), points(12, 1)))
    trainer.run()
    return trainer


def test_several_batches_per_step_are_fresh_and_follow_the_step(tmp_path: Path, tracking_uri: str) -> None:
    trainer = run_toy(toy_config(tmp_path, tracking_uri, train={"steps": 4}))
    seen = trainer.method.seen
    assert [step for step, _ in seen] == [0, 1, 2, 3]  # the engine's clock
    drawn = torch.cat([torch.cat(batches) for _, batches in seen])  # 4 steps x 3 batches x 4 items
    assert drawn.shape == (48, 2)
    # 10 batches of 4 make an epoch of 40 items: the first 40 draws are a permutation of the set
    torch.testing.assert_close(drawn[:40].sort(0).values, points(40, 0).images.sort(0).values)


def test_resume_continues_the_data_order_and_the_reference_batch(tmp_path: Path, tracking_uri: str) -> None:
    whole = run_toy(toy_config(tmp_path / "whole", tracking_uri, model={"reference": 5}))
    config = toy_config(tmp_path / "parts", tracking_uri, model={"reference": 5}, train={"steps": 3})
    run_toy(config)
    config["train"]["steps"] = 6
    resumed = run_toy(config, resume=True)
    assert [s for s, _ in resumed.method.seen] == [3, 4, 5]
    for (_, a), (_, b) in zip(whole.method.seen[3:], resumed.method.seen):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    for name, value in whole.method.state_dict().items():
        torch.testing.assert_close(value, resumed.method.state_dict()[name], rtol=0, atol=0)
    # the reference batch: 5 training items, the same for the fresh and the resumed run
    (fresh,), (again,) = whole.method.started_with, resumed.method.started_with
    assert fresh.shape == (5, 2)
    torch.testing.assert_close(fresh, again, rtol=0, atol=0)
    assert any(torch.equal(fresh[0], row) for row in points(40, 0).images)


def test_a_step_cannot_draw_more_batches_than_it_declares() -> None:
    opt = EngineOptimization({}, torch.device("cpu"))
    opt.begin_step(0, lambda: {keys.IMAGE: torch.zeros(1)}, 1)
    opt.next_batch()
    with pytest.raises(RuntimeError, match="batches_per_step"):
        opt.next_batch()


def test_snapshot_and_restore_optimizer_state() -> None:
    net = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    opt = EngineOptimization({"d": optimizer}, torch.device("cpu"))
    opt.step("d", net(torch.ones(3, 2)).sum())
    saved = opt.snapshot("d")
    moment = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    for _ in range(3):
        opt.step("d", net(torch.ones(3, 2)).pow(2).sum())
    assert not torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], moment)
    opt.restore(saved)
    torch.testing.assert_close(optimizer.state_dict()["state"][0]["exp_avg"], moment, rtol=0, atol=0)
    assert opt.optimizer("d") is optimizer
    with pytest.raises(KeyError, match="no optimizer named"):
        opt.snapshot("g")


def test_model_files_keep_only_the_inference_modules(tmp_path: Path, tracking_uri: str) -> None:
    trainer = run_toy(toy_config(tmp_path, tracking_uri))
    content = torch.load(tmp_path / "run" / "model" / keys.MODEL_FILE, weights_only=True)
    assert set(content["state_dict"]) == {"generator.weight", "generator.bias"}
    loaded = load_model(tmp_path / "run" / "model")
    torch.testing.assert_close(loaded.method.generator.weight, trainer.method.generator.weight)


def test_sample_eval_logs_fid_and_keeps_the_best_weights(tmp_path: Path, tracking_uri: str) -> None:
    import mlflow

    config = toy_config(tmp_path, tracking_uri, model={"extra_batches": 0}, train={"steps": 40, "sample_eval": {"every": 10, "n": 12, "keep_best": True}})
    report = train(config, datasets=(points(40, 0), points(12, 1)))
    history = mlflow.MlflowClient(tracking_uri).get_metric_history(report["run_id"], "eval/fid")
    fids = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(fids) == 4 and fids[-1] < 0.5 * fids[0]  # the mean moves from ~0 to the data's +3
    assert report["best_fid"] == pytest.approx(min(fids))
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    saved = torch.load(tmp_path / "run" / "model" / keys.MODEL_FILE, weights_only=True)["state_dict"]
    torch.testing.assert_close(saved["generator.bias"], best["model"]["generator.bias"])
    assert list((tmp_path / "run" / "previews").glob("points_step*.png"))  # (B, 2) previews: scatter plots


def test_sample_eval_needs_a_method_that_samples(tmp_path: Path, tracking_uri: str, phantom_manifest: Path) -> None:
    config = {
        "method": "autoencoder",
        "data": {"source": str(phantom_manifest), "size": [32, 32]},
        "model": {"latent_dim": 4, "channels": [4], "strides": [2], "num_res_units": 0},
        "train": {"steps": 1, "batch_size": 2, "sample_eval": {"every": 1}},
        "tracking": {"uri": tracking_uri, "log_model": False},
        "output_dir": str(tmp_path / "ae"),
    }
    with pytest.raises(ConfigError, match="train.sample_eval: method 'autoencoder' cannot sample"):
        train(config)


def test_sample_eval_on_a_one_item_evaluation_split_is_refused_with_what_to_do(tmp_path: Path, tracking_uri: str, phantom_manifest: Path) -> None:
    """8 phantoms: split 'val' is one subject, one CT, one 32x32x16 patch: FID cannot be computed (was exit 1, a ValueError)."""
    config = {
        "method": "gan",
        "data": {"source": str(phantom_manifest), "layout": "3d", "size": [32, 32, 16], "modality": "CT", "split": "train", "eval_split": "val"},
        "model": {"architecture": "dcgan", "latent_dim": 4, "g_channels": [4, 4], "d_channels": [4, 4]},
        "train": {"steps": 1, "batch_size": 2, "sample_eval": {"every": 1, "n": 8}},
        "tracking": {"uri": tracking_uri, "log_model": False},
        "output_dir": str(tmp_path / "gan3d"),
    }
    with pytest.raises(ConfigError, match=r"train.sample_eval: needs at least 2 evaluation items; data.eval_split 'val' gives 1: .*set train.sample_eval to null"):
        train(config)


def test_point_data_trains_through_the_engine(tmp_path: Path, tracking_uri: str) -> None:
    config = toy_config(tmp_path, tracking_uri, data={"kind": "points", "points": {"mixture": "grid", "n_train": 400, "n_eval": 50}})
    trainer = Trainer(validate_config(config))
    trainer.run()
    assert trainer.spec == DataSpec(spatial_dims=0, in_channels=2, image_size=(), num_classes=0)
    assert trainer.method.seen[0][1][0].shape == (4, 2)


def test_memory_data_needs_datasets_and_specs_come_from_items(tmp_path: Path, tracking_uri: str) -> None:
    with pytest.raises(ConfigError, match="data.kind"):
        train(toy_config(tmp_path, tracking_uri))
    images = TensorItems(torch.zeros(3, 1, 8, 8, 4), labels=torch.tensor([0, 2, 1]))
    assert memory_data_spec(images) == DataSpec(spatial_dims=3, in_channels=1, image_size=(8, 8, 4), num_classes=3)
    with pytest.raises(ValueError, match="labels"):
        TensorItems(torch.zeros(3, 2), labels=torch.tensor([0, 1]))


def test_scalars_turns_losses_into_floats_in_order() -> None:
    out = scalars({"a": torch.tensor(1.5), "b": 2.0, "c": torch.tensor([3.0])})
    assert out == {"a": 1.5, "b": 2.0, "c": 3.0} and list(out) == ["a", "b", "c"]


def test_unconditional_models_refuse_a_label() -> None:
    method = ToySampler(ToyConfig(), DataSpec(spatial_dims=0, in_channels=2, image_size=()))
    method.check_sample_label(None)
    with pytest.raises(ValueError, match="unconditional"):
        method.check_sample_label(1)
