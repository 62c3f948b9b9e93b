"""``random``: a seeded, randomly initialised convolutional network.

The baseline every medical FID paper should report next to any pretrained extractor:
random convolutional features already separate many image distributions, so an
ImageNet or RadImageNet FID is only informative where it differs from this one (see
Naeem et al., "Reliable fidelity and diversity metrics for generative models", ICML
2020, on random embeddings). Four stride-2 convolutions (MONAI ``Convolution`` blocks,
leaky ReLU, no normalisation); the features are the global averages of every stage,
concatenated (multi-scale, 32 + 64 + 128 + 256 = 480 values). Weights are drawn from an
explicit ``torch.Generator``: same seed, same network, in 2D and 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import Tensor, nn

from udl_med.metrics.extractors.base import FeatureExtractor, Preprocessing, state_dict_sha256

RANDOM_SIZE = {2: (64, 64), 3: (32, 32, 32)}


class RandomExtractor(FeatureExtractor):
    """Random-init conv features, 2D or 3D.

    Args:
        spatial_dims: 2 (slices) or 3 (volumes).
        seed: seeds the weights.
        channels: output channels of the stride-2 stages.
    """

    def __init__(self, spatial_dims: int, seed: int = 0, channels: Sequence[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.name = "random" if seed == 0 else f"random:{seed}"
        self.spatial_dims = spatial_dims
        self.preprocessing = Preprocessing(size=RANDOM_SIZE[spatial_dims], channels=1, intensity="identity")
        self.stages = nn.ModuleList()
        in_ch = 1
        for out_ch in channels:
            self.stages.append(
                Convolution(spatial_dims, in_ch, out_ch, strides=2, kernel_size=3, act=("leakyrelu", {"negative_slope": 0.2}), norm=None)
            )
            in_ch = out_ch
        self.feature_dim = int(sum(channels))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                    nn.init.kaiming_normal_(module.weight, a=0.2, nonlinearity="leaky_relu", generator=generator)
                    nn.init.zeros_(module.bias)
        self.weights_sha256 = state_dict_sha256(self)
        self.eval()

    def features(self, x: Tensor) -> Tensor:
        pooled = []
        for stage in self.stages:
            x = stage(x)
            pooled.append(x.mean(dim=tuple(range(2, x.ndim))))  # global average over all spatial axes
        return torch.cat(pooled, dim=1)
