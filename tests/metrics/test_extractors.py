"""Feature extractors: the random baseline, published layouts mapped onto the networks, hashes, encoders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import Regressor

from udl_med.errors import InputError, UserError
from udl_med.metrics.compare import compare_tensors
from udl_med.metrics.extractors import build_extractor
from udl_med.metrics.extractors.base import Preprocessing
from udl_med.metrics.extractors.encoder import EncoderExtractor
from udl_med.metrics.extractors.inception import FIDInceptionV3
from udl_med.metrics.extractors.resnets import medicalnet_architecture, medicalnet_resnet, radimagenet_resnet50
from udl_med.metrics.extractors.weights import env_var, sha256_file, verify_weights


def _randomise(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights *and* batch-norm statistics, so a wrong mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                values = torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var") else torch.randn(t.shape, generator=g) * 0.05
                t.copy_(values)
    return net.eval()


def _smooth_images(n: int, spatial_dims: int, size: int, seed: int) -> torch.Tensor:
    """Blobs of random position and size on a dark background, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, size)] * spatial_dims, indexing="ij"))  # (D, *S)
    centres = torch.rand(n, spatial_dims, generator=g) - 0.5
    radii = torch.rand(n, generator=g) * 0.4 + 0.2
    shape = (n, spatial_dims) + (1,) * spatial_dims
    dist = ((grid[None] - centres.view(shape)) ** 2).sum(1).sqrt()  # (n, *S)
    img = torch.sigmoid((radii.view((n,) + (1,) * spatial_dims) - dist) * 20) * 1.6 - 0.8
    return img[:, None]


# --- random ----------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_random_extractor_is_seeded_and_sees_images(spatial_dims: int) -> None:
    a, b = build_extractor("random", spatial_dims), build_extractor("random", spatial_dims)
    c = build_extractor("random:7", spatial_dims)
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    x = _smooth_images(4, spatial_dims, 16, seed=0)
    fa = a(x)
    assert fa.shape == (4, a.feature_dim) and a.feature_dim == 480
    torch.testing.assert_close(fa, b(x))
    assert not torch.allclose(fa[0], fa[1])  # different images, different features
    stack = torch.cat([torch.zeros_like(x), x, torch.zeros_like(x)], dim=1)  # a 2.5D stack: centre channel used
    torch.testing.assert_close(a(stack), fa)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fid_on_random_features_grows_with_image_noise(spatial_dims: int) -> None:
    size, n = (32, 48) if spatial_dims == 2 else (16, 32)
    real = _smooth_images(n, spatial_dims, size, seed=1)
    other = _smooth_images(n, spatial_dims, size, seed=2)
    noise = torch.randn(other.shape, generator=torch.Generator().manual_seed(3))
    extractor = build_extractor("random", spatial_dims)
    fids = [compare_tensors(real, (other + s * noise).clamp(-1, 1), extractor, bootstrap=0)["fid"] for s in (0.0, 0.1, 0.3, 0.6)]
    assert all(x < y for x, y in zip(fids, fids[1:])), fids


def test_preprocessing_modes() -> None:
    x = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    rgb = Preprocessing(size=(8, 8), channels=3, intensity="imagenet")(x)
    assert rgb.shape == (1, 3, 8, 8)
    # grey 0.5 in [0, 1] maps to (0.5 - mean) / std per channel
    mid = Preprocessing(size=None, channels=3, intensity="imagenet")(torch.zeros(1, 1, 2, 2))
    torch.testing.assert_close(mid[0, :, 0, 0], (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))
    vol = torch.full((2, 1, 6, 6, 6), -1.0)
    vol[:, :, 1:5, 1:5, 1:5] = torch.rand(2, 1, 4, 4, 4) * 0.5
    z = Preprocessing(size=(6, 6, 6), intensity="zscore_foreground")(vol)
    fg = z[:, :, 1:5, 1:5, 1:5].flatten(1)
    torch.testing.assert_close(fg.mean(1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(fg.std(1, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)


# --- InceptionV3 -------------------------------------------------------------------------

# Names and shapes of the published pt_inception-2015-12-05 state dict (torchvision's names).
PUBLISHED_INCEPTION = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5d.branch_pool.conv.weight": (64, 288, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "fc.weight": (1008, 2048),
}
PUBLISHED_INCEPTION_BYTES = 95_628_359  # size of pt_inception-2015-12-05-6726825d.pth


def test_inception_layout_is_the_published_one() -> None:
    state = FIDInceptionV3().state_dict()
    for key, shape in PUBLISHED_INCEPTION.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in state)
    # float32 values of every tensor but the counters: a little under the published file's size
    values = sum(t.numel() for k, t in state.items() if not k.endswith("num_batches_tracked"))
    assert 0.998 * PUBLISHED_INCEPTION_BYTES < 4 * values < PUBLISHED_INCEPTION_BYTES


def test_inception_checkpoint_loads_and_hash_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _randomise(FIDInceptionV3(), seed=0)
    published = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}  # TF port has none
    path = tmp_path / "pt_inception-test.pth"
    torch.save(published, path)
    digest = sha256_file(path)

    with pytest.raises(InputError, match="not a known inception release"):
        build_extractor(f"inception:{path}")
    with pytest.raises(InputError, match="expected"):
        build_extractor(f"inception:{path}#sha256={'0' * 64}")
    with pytest.raises(InputError, match="not found"):
        build_extractor(f"inception:{tmp_path / 'missing.pth'}#sha256={digest}")
    with pytest.raises(UserError, match="64 hex"):
        build_extractor(f"inception:{path}#sha256=abc")

    extractor = build_extractor(f"inception:{path}#sha256={digest}")
    monkeypatch.setenv(env_var("inception"), digest)  # pinning through the environment
    assert verify_weights("inception", path) == digest
    for key, value in published.items():
        torch.testing.assert_close(extractor.network.state_dict()[key], value, rtol=0, atol=0)
    assert (extractor.feature_dim, extractor.num_classes) == (2048, 1008)
    x = torch.rand(2, 3, 80, 80) * 2 - 1  # the smallest size the network takes, to keep it quick
    torch.testing.assert_close(extractor.features(x), source.pool3(x))
    torch.testing.assert_close(extractor.head(extractor.features(x)), source.fc(source.pool3(x)))
    assert extractor.preprocessing(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 299, 299)
    with pytest.raises(UserError, match="2D"):
        build_extractor(f"inception:{path}#sha256={digest}", spatial_dims=3)

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="not the FID InceptionV3 layout"):
        build_extractor(f"inception:{tmp_path / 'other.pth'}#sha256={sha256_file(tmp_path / 'other.pth')}")


# --- RadImageNet and MedicalNet ResNets --------------------------------------------------------

_TO_SEQUENTIAL = {"conv1.": "backbone.0.", "bn1.": "backbone.1.", "layer1.": "backbone.4.", "layer2.": "backbone.5.", "layer3.": "backbone.6.", "layer4.": "backbone.7."}


def test_radimagenet_checkpoint_maps_onto_monai_resnet(tmp_path: Path) -> None:
    source = _randomise(radimagenet_resnet50(), seed=1)
    state = source.state_dict()
    assert len(state) == 318  # torchvision resnet50 without fc: 318 entries
    assert tuple(state["layer1.0.downsample.0.weight"].shape) == (256, 64, 1, 1)
    assert tuple(state["layer4.2.bn3.running_var"].shape) == (2048,)
    published = {}
    for key, value in state.items():  # RadImageNet's ResNet50.pt: nn.Sequential(children[:9]) under backbone.
        prefix = next(p for p in _TO_SEQUENTIAL if key.startswith(p))
        published[_TO_SEQUENTIAL[prefix] + key[len(prefix):]] = value
    path = tmp_path / "ResNet50.pt"
    torch.save(published, path)
    with pytest.raises(InputError, match="no.*published|not a known radimagenet release"):
        build_extractor(f"radimagenet:{path}")
    extractor = build_extractor(f"radimagenet:{path}#sha256={sha256_file(path)}")
    assert extractor.feature_dim == 2048
    x = torch.rand(1, 1, 40, 40) * 2 - 1
    expected = source(extractor.preprocessing(x))
    torch.testing.assert_close(extractor(x), expected)

    torch.save({**state, "fc.weight": torch.zeros(165, 2048), "fc.bias": torch.zeros(165)}, tmp_path / "tv.pt")
    tv = build_extractor(f"radimagenet:{tmp_path / 'tv.pt'}#sha256={sha256_file(tmp_path / 'tv.pt')}")
    torch.testing.assert_close(tv(x), expected)  # torchvision names (and a dropped head) work too

    keras = {**state, "layer1.0.conv1.bias": torch.zeros(64)}
    torch.save(keras, tmp_path / "notop.pth")
    with pytest.raises(InputError, match="Keras-converted"):
        build_extractor(f"radimagenet:{tmp_path / 'notop.pth'}#sha256={sha256_file(tmp_path / 'notop.pth')}")


def test_swav_checkpoint_loads_without_its_heads_and_only_when_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _randomise(radimagenet_resnet50(), seed=3)
    published = {f"module.{k}": v for k, v in source.state_dict().items()}  # swav_800ep_pretrain.pth.tar: DataParallel names
    published.update({
        "module.projection_head.0.weight": torch.zeros(2048, 2048), "module.projection_head.1.running_mean": torch.zeros(2048),
        "module.projection_head.3.weight": torch.zeros(128, 2048), "module.prototypes.weight": torch.zeros(3000, 128),
    })
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.save(published, path)
    digest = sha256_file(path)
    with pytest.raises(InputError, match=f"not a known swav release.*swav:PATH#sha256={digest}"):
        build_extractor(f"swav:{path}")
    extractor = build_extractor(f"swav:{path}#sha256={digest}")
    assert (extractor.name, extractor.feature_dim, extractor.weights_sha256) == ("swav", 2048, digest)
    x = torch.rand(2, 1, 48, 40) * 2 - 1
    prepared = extractor.preprocessing(x)
    assert prepared.shape == (2, 3, 224, 224)
    torch.testing.assert_close(extractor(x), source(prepared))
    monkeypatch.setenv(env_var("swav"), digest)
    torch.testing.assert_close(build_extractor(f"swav:{path}")(x), source(prepared))  # pinned in the environment
    with pytest.raises(UserError, match="2D"):
        build_extractor(f"swav:{path}", spatial_dims=3)
    torch.save({k: v for k, v in published.items() if "layer4" not in k}, tmp_path / "cut.pth")
    monkeypatch.setenv(env_var("swav"), sha256_file(tmp_path / "cut.pth"))
    with pytest.raises(InputError, match="not the SwAV ResNet-50"):
        build_extractor(f"swav:{tmp_path / 'cut.pth'}")
    with pytest.raises(InputError, match="not found.*nothing is downloaded"):
        build_extractor(f"swav:{tmp_path / 'missing.pth.tar'}")


def test_medicalnet_checkpoint_maps_onto_monai_resnet(tmp_path: Path) -> None:
    source = _randomise(medicalnet_resnet("basic", [1, 1, 1, 1], "B", False), seed=2)
    state = source.state_dict()
    # resnet_10_23dataset.pth, as publicly recorded: 72 tensors, 14,361,292 values.
    assert len(state) == 72 and sum(t.numel() for t in state.values()) == 14_361_292
    published = {f"module.{k}": v for k, v in state.items()}
    published["module.conv_seg.0.weight"] = torch.zeros(32, 512, 3, 3, 3)  # segmentation head, dropped
    path = tmp_path / "resnet_10_23dataset.pth"
    torch.save({"state_dict": published}, path)
    extractor = build_extractor(f"medicalnet:{path}#sha256={sha256_file(path)}", spatial_dims=3)
    assert extractor.feature_dim == 512
    x = torch.rand(1, 1, 12, 12, 12) * 2 - 1
    torch.testing.assert_close(extractor(x), source(extractor.preprocessing(x)))
    with pytest.raises(UserError, match="3D"):
        build_extractor(f"medicalnet:{path}#sha256={sha256_file(path)}", spatial_dims=2)


def test_medicalnet_architecture_read_off_keys() -> None:
    r50 = medicalnet_resnet("bottleneck", [3, 4, 6, 3], "B", False).state_dict()
    assert medicalnet_architecture(r50) == {
        "block": "bottleneck", "layers": [3, 4, 6, 3], "shortcut_type": "B", "bias_downsample": False, "n_input_channels": 1,
    }
    r18 = medicalnet_resnet("basic", [2, 2, 2, 2], "A", True).state_dict()
    assert medicalnet_architecture(r18)["shortcut_type"] == "A" and medicalnet_architecture(r18)["layers"] == [2, 2, 2, 2]


# --- exported encoders ---------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_encoder_extractor_from_export_folder(tmp_path: Path, spatial_dims: int) -> None:
    size = [16] * spatial_dims
    kwargs = {"in_shape": [1, *size], "out_shape": [8], "channels": [4, 8], "strides": [2, 2], "num_res_units": 0}
    net = _randomise(Regressor(**kwargs), seed=3)
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "encoder.json").write_text(json.dumps({
        "class": "monai.networks.nets.Regressor", "kwargs": kwargs, "out_features": 8,
        "input": {"spatial_dims": spatial_dims, "in_channels": 1, "image_size": size, "intensity_range": [-1, 1]},
    }))
    torch.save(net.state_dict(), folder / "encoder.pt")
    extractor = build_extractor(f"encoder:{folder}", spatial_dims)
    assert extractor.feature_dim == 8 and extractor.weights_sha256 == sha256_file(folder / "encoder.pt")
    x = torch.rand(3, 1, *[20] * spatial_dims) * 2 - 1  # resized to the encoder's 16^d
    torch.testing.assert_close(extractor(x), net(extractor.preprocessing(x)))

    torch.save({k: v for k, v in list(net.state_dict().items())[1:]}, folder / "encoder.pt")
    with pytest.raises(InputError, match="strictly"):
        build_extractor(f"encoder:{folder}", spatial_dims)
    with pytest.raises(InputError):
        build_extractor(f"encoder:{tmp_path / 'nowhere'}", spatial_dims)


def test_unknown_extractor_names() -> None:
    with pytest.raises(UserError, match="unknown extractor"):
        build_extractor("vgg")
    with pytest.raises(UserError, match="integer"):
        build_extractor("random:abc")
    with pytest.raises(UserError, match="encoder:PATH"):
        build_extractor("encoder")
    with pytest.raises(UserError, match="inception:PATH"):
        build_extractor("inception")


def test_encoder_extractor_rejects_non_monai_classes(tmp_path: Path) -> None:
    (tmp_path / "encoder.json").write_text(json.dumps({"class": "os.system", "kwargs": {}, "out_features": 1, "input": {}}))
    torch.save({}, tmp_path / "encoder.pt")
    with pytest.raises(UserError, match="not in monai.networks.nets"):
        EncoderExtractor.from_folder(tmp_path)
