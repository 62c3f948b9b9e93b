"""Published ResNets on MONAI's ``ResNet``: RadImageNet and SwAV ResNet-50 (2D), MedicalNet (3D).

- **RadImageNet** (Mei et al., "RadImageNet: an open radiologic deep learning research
  dataset for effective transfer learning", Radiology: AI 2022): a ResNet-50 trained on
  1.35 M CT, MR and ultrasound slices. Its PyTorch release (``ResNet50.pt``) is the state
  dict of ``nn.Sequential(*list(torchvision_resnet50.children())[:9])`` under
  ``backbone.``: ``backbone.0`` = conv1, ``backbone.1`` = bn1, ``backbone.4..7`` =
  layer1..4. Plain torchvision names (``conv1``, ``layer1`` ...) are accepted too. Input
  224 x 224, grey repeated to RGB, [0, 1] then ImageNet mean/std. The Keras-converted
  ``RadImageNet-ResNet50_notop.pth`` (convolution biases, Keras v1 strides) is another
  network and is refused with a message.
- **SwAV** (Caron et al., "Unsupervised learning of visual features by contrasting
  cluster assignments", NeurIPS 2020): a ResNet-50 trained without labels on ImageNet.
  Its release ``swav_800ep_pretrain.pth.tar`` (facebookresearch/swav, the weights
  ``torch.hub`` loads for ``resnet50``) is a state dict in torchvision's names under
  ``module.``, plus the training heads ``projection_head.*`` and ``prototypes.*``, which
  are dropped. SwAV's stem pads by 1 and then convolves with padding 2: the same as
  torchvision's padding 3, so it is the torchvision ResNet-50. Input as RadImageNet's
  (224 x 224, grey to RGB, ImageNet mean/std). Woodland et al. (MICCAI 2024) found FD
  on SwAV features agreed with radiologists' rankings of medical generative models where
  FD on RadImageNet features did not.
- **MedicalNet / Med3D** (Chen et al., "Med3D: Transfer learning for 3D medical image
  analysis", 2019, https://arxiv.org/abs/1904.00625): 3D ResNets 10-200 trained for
  segmentation on 8 or 23 datasets; files ``{"state_dict": {"module.conv1.weight", ...}}``
  in MONAI's own names (MONAI's ``ResNet`` is their architecture), possibly with the
  ``conv_seg`` head, which is dropped. Depth, block type and shortcut type are read off
  the checkpoint. Input: volumes resized to 64^3, z-scored over the foreground.

Features are the global average of the last stage (2048 for ResNet-50, 512 for 10-34).
"""

from __future__ import annotations

import re
from pathlib import Path

from monai.networks.nets import ResNet
from torch import Tensor

from udl_med.errors import InputError
from udl_med.metrics.extractors.base import FeatureExtractor, Preprocessing
from udl_med.metrics.extractors.weights import load_state_dict, verify_weights

RADIMAGENET_SIZE = (224, 224)
MEDICALNET_SIZE = (64, 64, 64)
_SEQUENTIAL_TO_NAMED = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def radimagenet_resnet50() -> ResNet:
    """The torchvision ResNet-50 (v1.5, stride in the 3x3 convolution) as a MONAI ``ResNet``, no head."""
    return ResNet(
        block="bottleneck",
        layers=[3, 4, 6, 3],
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=2,
        n_input_channels=3,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type="B",
        bias_downsample=False,
        feed_forward=False,
    )


def map_radimagenet_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """RadImageNet's ``backbone.N.`` names (or torchvision's) -> MONAI ``ResNet`` names; the fc head is dropped."""
    mapped = {}
    for key, value in state.items():
        match = re.match(r"^backbone\.(\d+)\.(.*)$", key)
        if match:
            if match.group(1) not in _SEQUENTIAL_TO_NAMED:
                raise KeyError(key)
            key = f"{_SEQUENTIAL_TO_NAMED[match.group(1)]}.{match.group(2)}"
        if key.startswith("fc."):
            continue
        mapped[key] = value
    return mapped


def medicalnet_architecture(state: dict[str, Tensor]) -> dict:
    """MONAI ``ResNet`` arguments of a MedicalNet checkpoint, read off its keys and shapes."""
    bottleneck = "layer1.0.conv3.weight" in state
    layers = []
    for i in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"^layer{i}\.(\d+)\.", k))}
        layers.append(max(blocks) + 1 if blocks else 0)
    shortcut_b = any(k.startswith("layer2.0.downsample.") for k in state)
    return {
        "block": "bottleneck" if bottleneck else "basic",
        "layers": layers,
        "shortcut_type": "B" if shortcut_b else "A",
        "bias_downsample": "layer2.0.downsample.0.bias" in state,
        "n_input_channels": int(state["conv1.weight"].shape[1]) if "conv1.weight" in state else 1,
    }


def medicalnet_resnet(block: str, layers: list[int], shortcut_type: str, bias_downsample: bool, n_input_channels: int = 1) -> ResNet:
    """MedicalNet's 3D ResNet (conv1 7^3 stride 2) as a MONAI ``ResNet`` without head."""
    return ResNet(
        block=block,
        layers=layers,
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=3,
        n_input_channels=n_input_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type=shortcut_type,
        bias_downsample=bias_downsample,
        feed_forward=False,
    )


def _load_strict(network: ResNet, state: dict[str, Tensor], path: Path, layout: str) -> None:
    expected = network.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise InputError(
            path,
            f"not the {layout} layout: {len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]}), {len(wrong)} of another shape (e.g. {wrong[:2]})",
        )
    full = dict(state)
    for k, v in expected.items():
        full.setdefault(k, v)  # num_batches_tracked
    network.load_state_dict(full, strict=True)


class ResNetExtractor(FeatureExtractor):
    """Global-average-pooled last-stage features of a MONAI ``ResNet`` without head."""

    def __init__(self, name: str, network: ResNet, spatial_dims: int, preprocessing: Preprocessing, weights_sha256: str) -> None:
        super().__init__()
        self.name = name
        self.spatial_dims = spatial_dims
        self.network = network
        self.feature_dim = _out_channels(network)
        self.preprocessing = preprocessing
        self.weights_sha256 = weights_sha256
        self.eval()

    def features(self, x: Tensor) -> Tensor:
        return self.network(x)  # ResNet without fc: adaptive average pool, flattened (B, C)


def _out_channels(network: ResNet) -> int:
    last = network.layer4[-1]
    return int((last.bn3 if hasattr(last, "bn3") else last.bn2).num_features)


def radimagenet_from_file(path: Path, pinned_sha256: str | None = None) -> ResNetExtractor:
    """``radimagenet:PATH``: check the hash, map the keys, load strictly.

    Raises:
        InputError: wrong hash, unreadable file, the Keras-converted layout, or another layout.
    """
    digest = verify_weights("radimagenet", path, pinned_sha256)
    state = load_state_dict(path)
    if any(re.search(r"conv\d\.bias$", k) for k in state):
        raise InputError(
            path,
            "Keras-converted RadImageNet layout (convolutions with bias, Keras v1 strides) is not supported; "
            "use the PyTorch release ResNet50.pt",
        )
    try:
        state = map_radimagenet_keys(state)
    except KeyError as err:
        raise InputError(path, f"not the RadImageNet ResNet-50 layout: unexpected key {err}") from None
    network = radimagenet_resnet50()
    _load_strict(network, state, path, "RadImageNet ResNet-50")
    preprocessing = Preprocessing(size=RADIMAGENET_SIZE, channels=3, intensity="imagenet")
    return ResNetExtractor("radimagenet", network, 2, preprocessing, digest)


def swav_from_file(path: Path, pinned_sha256: str | None = None) -> ResNetExtractor:
    """``swav:PATH``: check the hash, drop the SwAV heads, load strictly.

    Raises:
        InputError: wrong hash, unreadable file, or not a ResNet-50 in torchvision's names.
    """
    digest = verify_weights("swav", path, pinned_sha256)
    state = {k: v for k, v in load_state_dict(path).items() if not k.startswith(("projection_head.", "prototypes.", "fc."))}
    network = radimagenet_resnet50()  # the torchvision ResNet-50 (see the module docstring)
    _load_strict(network, state, path, "SwAV ResNet-50 (torchvision names)")
    preprocessing = Preprocessing(size=RADIMAGENET_SIZE, channels=3, intensity="imagenet")
    return ResNetExtractor("swav", network, 2, preprocessing, digest)


def medicalnet_from_file(path: Path, pinned_sha256: str | None = None) -> ResNetExtractor:
    """``medicalnet:PATH``: check the hash, infer the depth, drop the segmentation head, load strictly.

    Raises:
        InputError: wrong hash, unreadable file, or not a MedicalNet 3D ResNet.
    """
    digest = verify_weights("medicalnet", path, pinned_sha256)
    state = {k: v for k, v in load_state_dict(path).items() if not k.startswith(("conv_seg.", "fc."))}
    if "conv1.weight" not in state or state["conv1.weight"].ndim != 5:
        raise InputError(path, "not a MedicalNet 3D ResNet: no 3D conv1.weight")
    try:
        network = medicalnet_resnet(**medicalnet_architecture(state))
    except (ValueError, IndexError) as err:
        raise InputError(path, f"not a MedicalNet 3D ResNet ({err})") from None
    _load_strict(network, state, path, "MedicalNet 3D ResNet")
    preprocessing = Preprocessing(size=MEDICALNET_SIZE, channels=1, intensity="zscore_foreground")
    return ResNetExtractor("medicalnet", network, 3, preprocessing, digest)
