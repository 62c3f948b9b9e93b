"""The ``rbm`` method: learning on tiny images (engine runs on in-memory blobs), encode/sample/preview, export, fit_rbm."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from udl_med import keys
from udl_med.data.memory import TensorItems
from udl_med.engine.fit import MemoryFit, fit_in_memory
from udl_med.engine.optimization import EngineOptimization
from udl_med.methods.base import DataSpec, Method, get_method
from udl_med.methods.rbm import RBMConfig, fit_rbm

SIZES = {2: (16, 16), 3: (8, 8, 8)}
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def blobs(n: int, size: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """``(n, 1, *size)`` in [-1, 1]: a bright disk or ball (random centre and radius) on -1."""
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in size], indexing="ij")
    shape = (n, *[1] * len(size))
    centre = (torch.rand(n, len(size), generator=generator) - 0.5) * 0.8
    radius = torch.rand(n, generator=generator) * 0.3 + 0.3
    dist = sum((g[None] - centre[:, i].view(shape)) ** 2 for i, g in enumerate(grids)).sqrt()
    return torch.where(dist < radius.view(shape), 0.6, -1.0)[:, None]


def build(
    name: str, spatial_dims: int, num_classes: int = 0, seed: int = 0, size: tuple[int, ...] | None = None, in_channels: int = 1, **config
) -> Method:
    cls = get_method(name)
    torch.manual_seed(seed)
    spec = DataSpec(spatial_dims=spatial_dims, in_channels=in_channels, image_size=size or SIZES[spatial_dims], num_classes=num_classes)
    return cls(cls.Config(**config), spec)


def blob_items(n: int, size: tuple[int, ...], seed: int = 1, in_channels: int = 1, num_classes: int = 0, labeled: bool = False) -> TensorItems:
    """``n`` blobs as engine items; ``labeled``: with random labels in ``range(num_classes)``."""
    g = torch.Generator().manual_seed(seed)
    images = blobs(n, size, g).expand(-1, in_channels, *size)
    labels = torch.randint(num_classes, (n,), generator=g) if labeled else None
    return TensorItems(images, labels, num_classes=num_classes)


def fit(
    name: str,
    spatial_dims: int,
    steps: int,
    batch_size: int = 16,
    seed: int = 0,
    data: TensorItems | None = None,
    num_classes: int = 0,
    size: tuple[int, ...] | None = None,
    in_channels: int = 1,
    out: Path | None = None,
    resume: bool = False,
    **config,
) -> MemoryFit:
    """Train ``name`` through the engine; ``.method`` is the trained method (eval mode).

    The data defaults to ``steps * batch_size`` fresh blobs (one epoch: no item twice). A
    run continued with ``resume=True`` (same ``out``) needs the same ``data``: make it for
    the total steps.
    """
    size = size or SIZES[spatial_dims]
    data = data if data is not None else blob_items(steps * batch_size, size, in_channels=in_channels, num_classes=num_classes)
    return fit_in_memory(name, config, data, steps=steps, batch_size=batch_size, seed=seed, output_dir=out, resume=resume)


def held_out(spatial_dims: int, n: int = 32) -> dict[str, torch.Tensor]:
    return {keys.IMAGE: blobs(n, SIZES[spatial_dims], torch.Generator().manual_seed(99))}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize(("visible", "lr"), [("bernoulli", 0.05), ("gaussian", 0.005)])
def test_cd1_learns_to_reconstruct_better_than_the_mean_image(spatial_dims: int, visible: str, lr: float) -> None:
    config = dict(n_hidden=32, visible=visible, lr=lr, momentum_switch_step=20)
    before = build("rbm", spatial_dims, **config).evaluate(held_out(spatial_dims))  # the run's initial weights
    method = fit("rbm", spatial_dims, 300, **config).method
    after = method.evaluate(held_out(spatial_dims))
    assert after[keys.RECON_MSE] < 0.6 * after[keys.MEAN_IMAGE_MSE], (before, after)
    if visible == "bernoulli":
        assert after[keys.PSEUDO_LL] > before[keys.PSEUDO_LL] + 50, (before, after)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_persistent_cd_raises_pseudo_likelihood(spatial_dims: int) -> None:
    """PCD follows the likelihood, not the reconstruction: check the pseudo-likelihood."""
    config = dict(n_hidden=32, persistent=True, n_chains=32, lr=0.02, momentum_switch_step=20)
    before = build("rbm", spatial_dims, **config).evaluate(held_out(spatial_dims))
    method = fit("rbm", spatial_dims, 200, **config).method
    after = method.evaluate(held_out(spatial_dims))
    assert after[keys.PSEUDO_LL] > 0.5 * before[keys.PSEUDO_LL], (before, after)  # both negative: at least halved
    assert after[keys.RECON_MSE] < 0.5 * before[keys.RECON_MSE], (before, after)
    assert bool(method.chains.started)


@pytest.mark.parametrize(("spatial_dims", "channels"), [(2, 1), (3, 1), (2, 3)])  # (2, 3): 2.5D stacks
def test_encode_sample_and_preview(spatial_dims: int, channels: int) -> None:
    method = fit("rbm", spatial_dims, 5, batch_size=8, in_channels=channels, n_hidden=24, n_filters=20, sample_steps=5).method
    shape = (channels, *SIZES[spatial_dims])
    x = held_out(spatial_dims, 6)[keys.IMAGE].expand(-1, *shape)
    features = method.encode(x)
    assert features.shape == (6, 24) and 0 <= float(features.min()) and float(features.max()) <= 1
    samples = method.sample(3, torch.Generator().manual_seed(0))
    assert samples.shape == (3, *shape)
    assert -1 <= float(samples.min()) and float(samples.max()) <= 1
    torch.testing.assert_close(samples, method.sample(3, torch.Generator().manual_seed(0)))
    previews = method.preview({keys.IMAGE: x})
    assert previews["filters"].shape == (20, *shape)
    assert previews["samples"].shape[1:] == previews["reconstructions"].shape[1:] == shape
    for images in previews.values():
        assert -1 <= float(images.min()) and float(images.max()) <= 1
    filters = previews["filters"].flatten(1)  # each filter spans the full [-1, 1] range
    torch.testing.assert_close(filters.min(1).values, torch.full((20,), -1.0))
    torch.testing.assert_close(filters.max(1).values, torch.full((20,), 1.0))


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_exported_encoder_is_a_strict_fully_connected_net_matching_encode(visible: str, spatial_dims: int) -> None:
    method = fit("rbm", spatial_dims, 10, n_hidden=12, visible=visible, lr=0.01).method  # moves the weights and, for Gaussian visibles, the standardisation
    class_path, kwargs, state = method.export_encoder()
    module, name = class_path.rsplit(".", 1)
    net = getattr(importlib.import_module(module), name)(**kwargs)
    net.load_state_dict(state, strict=True)
    x = held_out(spatial_dims, 5)[keys.IMAGE]
    torch.testing.assert_close(torch.sigmoid(net(x)), method.encode(x), atol=1e-5, rtol=1e-4)


def test_state_dict_round_trip_keeps_standardisation_and_chains() -> None:
    method = fit("rbm", 2, 7, n_hidden=8, visible="gaussian", persistent=True, n_chains=4, lr=0.001).method
    state = method.state_dict()
    assert {"codec.count", "chains.state"} <= set(state)
    assert float(state["codec.count"]) == 7 * 16
    clone = build("rbm", 2, seed=5, n_hidden=8, visible="gaussian", persistent=True, n_chains=4, lr=0.001)
    clone.load_state_dict(state)
    x = held_out(2, 4)[keys.IMAGE]
    torch.testing.assert_close(clone.encode(x), method.encode(x))
    torch.testing.assert_close(clone.chains.state, method.chains.state)


def test_momentum_switches_from_initial_to_final(tmp_path: Path) -> None:
    config = dict(n_hidden=8, initial_momentum=0.5, momentum=0.9, momentum_switch_step=3)
    data = blob_items(4 * 16, SIZES[2])
    first = fit("rbm", 2, 3, data=data, out=tmp_path, **config)
    assert first.optimizers["rbm"].param_groups[0]["momentum"] == 0.5
    resumed = fit("rbm", 2, 4, data=data, out=tmp_path, resume=True, **config)  # step 4 of the same run
    assert len(resumed.history) == 1
    assert resumed.optimizers["rbm"].param_groups[0]["momentum"] == 0.9
    groups = resumed.optimizers["rbm"].param_groups  # weight cost on W only
    assert groups[0]["weight_decay"] > 0 and groups[1]["weight_decay"] == 0


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_fit_rbm_makes_the_same_update_as_the_engine_path(momentum: float) -> None:
    """The augmented closed-form path and autograd through ``opt.step`` give the same PCD-1 updates, draw for draw."""
    engine = build("rbm", 2, size=(4, 4), n_hidden=6, persistent=True, n_chains=8, lr=0.1, initial_momentum=momentum,
                   momentum_switch_step=100, weight_decay=0.01, init_std=0.1)
    fast = build("rbm", 2, size=(4, 4), n_hidden=6, init_std=0.1).rbm
    fast.load_state_dict(engine.rbm.state_dict())
    x = blobs(24, (4, 4), torch.Generator().manual_seed(0))
    v = (x.flatten(1) + 1) / 2
    torch.manual_seed(7)
    opt = EngineOptimization(engine.configure_optimizers(), torch.device("cpu"))
    for batch in x.split(8):
        engine.train_step({keys.IMAGE: batch}, opt)
        opt.global_step += 1
    torch.manual_seed(7)
    fit_rbm(fast, v, epochs=1, batch_size=8, lr=0.1, momentum=momentum, weight_decay=0.01, shuffle=False)
    for name, param in fast.named_parameters():
        torch.testing.assert_close(param, getattr(engine.rbm, name), atol=1e-5, rtol=1e-4)
    assert not torch.equal(fast.weight, build("rbm", 2, size=(4, 4), n_hidden=6, init_std=0.1).rbm.weight)


@pytest.mark.parametrize(("persistent", "k"), [(False, 1), (False, 2), (True, 2)])
def test_fit_rbm_lowers_reconstruction_error_and_checks_shapes(persistent: bool, k: int) -> None:
    rbm = build("rbm", 2, n_hidden=32).rbm
    v = (blobs(128, SIZES[2], torch.Generator().manual_seed(0)).flatten(1) + 1) / 2
    errors = fit_rbm(rbm, v, epochs=30, batch_size=16, lr=0.1, k=k, persistent=persistent, generator=torch.Generator().manual_seed(0))
    assert len(errors) == 30 and errors[-1] < 0.5 * errors[0], errors
    with pytest.raises(ValueError, match="data must be"):
        fit_rbm(rbm, v[:, :10], epochs=1, batch_size=4, lr=0.1)
    with pytest.raises(ValueError, match="Bernoulli"):
        fit_rbm(build("rbm", 2, n_hidden=8, visible="gaussian").rbm, v, epochs=1, batch_size=4, lr=0.1)


def test_evaluate_reports_exact_or_annealed_log_likelihood() -> None:
    x = {keys.IMAGE: blobs(32, (4, 4), torch.Generator().manual_seed(3))}
    before = build("rbm", 2, size=(4, 4), n_hidden=6, lr=0.1).evaluate(x)[keys.LOG_LIKELIHOOD]  # exact: 2**6 hidden states
    tiny = fit("rbm", 2, 60, size=(4, 4), n_hidden=6, lr=0.1).method
    after = tiny.evaluate(x)[keys.LOG_LIKELIHOOD]
    assert after > before + 1.0, (before, after)
    annealed = fit("rbm", 2, 60, size=(4, 4), n_hidden=12, lr=0.1, ais_chains=64, ais_betas=400, exact_max_units=0).method
    metrics = annealed.evaluate(x)
    exact = float(annealed.rbm.log_likelihood_exact(annealed.codec.encode(x[keys.IMAGE])).mean())
    assert abs(metrics[keys.LOG_LIKELIHOOD] - exact) < 0.05, (metrics, exact)
    assert metrics[keys.LOG_Z_STD] >= 0
    assert annealed.evaluate(x)[keys.LOG_LIKELIHOOD] == metrics[keys.LOG_LIKELIHOOD]  # one estimate per step
    gaussian = build("rbm", 2, n_hidden=32, visible="gaussian")
    assert keys.PSEUDO_LL not in gaussian.evaluate(held_out(2, 8))


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="extra"):
        RBMConfig(n_hiden=3)
    with pytest.raises(ValidationError):
        RBMConfig(cd_k=0)
    with pytest.raises(ValidationError):
        RBMConfig(visible="poisson")


def test_tiny_config_trains_through_the_engine_and_loads_back(phantom_manifest: Path, tracking_uri: str, tmp_path: Path) -> None:
    from udl_med.engine.model_io import load_model
    from udl_med.engine.train import train

    raw = yaml.safe_load((CONFIGS / "rbm-tiny.yaml").read_text())
    overrides = [
        f"data.source={phantom_manifest}",
        f"tracking.uri={tracking_uri}",
        f"output_dir={tmp_path / 'run'}",
        "train.steps=12",
        "train.eval_every=12",
        "train.eval_items=8",
        "tracking.log_model=false",
        "model.sample_steps=5",
    ]
    report = train(raw, overrides)
    assert report["steps"] == 12 and "eval/recon_mse" in report and "eval/pseudo_log_likelihood" in report
    previews = sorted(p.name for p in (tmp_path / "run" / "previews").glob("*.png"))
    assert previews == ["filters_step000012.png", "reconstructions_step000012.png", "samples_step000012.png"]
    loaded = load_model(report["model_dir"])
    features = loaded.method.encode(torch.zeros(2, 1, 32, 32))
    assert features.shape == (2, 64)


def test_engine_resume_is_exact_with_persistent_chains_and_standardisation(phantom_manifest: Path, tracking_uri: str, tmp_path: Path) -> None:
    """Chains, running statistics, the step counter and momentum all come back from the checkpoint."""
    from udl_med.engine.train import train

    raw = yaml.safe_load((CONFIGS / "rbm-tiny.yaml").read_text())

    def run(folder: str, steps: int, resume: bool = False) -> dict[str, torch.Tensor]:
        overrides = [
            f"data.source={phantom_manifest}",
            f"tracking.uri={tracking_uri}",
            f"output_dir={tmp_path / folder}",
            f"train.steps={steps}",
            "train.eval_every=100",
            "train.checkpoint_every=3",
            "tracking.log_model=false",
            "model.visible=gaussian",
            "model.lr=0.002",
            "model.persistent=true",
            "model.n_chains=8",
            "model.momentum_switch_step=4",
        ]
        report = train(raw, overrides, resume=resume)
        return torch.load(Path(report["model_dir"]) / keys.MODEL_FILE, weights_only=True)["state_dict"]

    reference = run("reference", 8)
    run("resumed", 3)
    resumed = run("resumed", 8, resume=True)
    assert bool(resumed["chains.started"])
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference), [k for k in reference if not torch.equal(reference[k], resumed[k])]


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem.startswith(("rbm", "dbn"))))
def test_shipped_configs_validate(name: str) -> None:
    from udl_med.engine.config import load_config

    config = load_config(CONFIGS / f"{name}.yaml", [])
    assert config.method in ("rbm", "dbn")
