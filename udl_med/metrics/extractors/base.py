"""What every feature extractor is: a network, its input preprocessing, and an identity.

Extractors take images the way udl-med holds them, ``(B, C, *spatial)`` in [-1, 1]
(the normalisation of :mod:`udl_med.data.normalize`), and apply their own
:class:`Preprocessing` (channel selection or repetition, resizing, intensity mapping)
before the network, so that every caller feeds them the same thing. ``key(layout)``
names the extractor, its weights (SHA-256) and its preprocessing, so that statistics
from different extractors are never compared.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udl_med.metrics.statistics import StatsKey

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTENSITIES = ("identity", "unit", "imagenet", "zscore_foreground")


@dataclass(frozen=True)
class Preprocessing:
    """How images in [-1, 1] become the network's input.

    Attributes:
        size: spatial size the network sees (images are resized to it); None: as given.
        channels: input channels; a multi-channel input (2.5D stack) gives its centre
            channel, and a single channel is repeated (grey to RGB).
        intensity: ``identity`` (keep [-1, 1]), ``unit`` ([0, 1]), ``imagenet`` ([0, 1],
            then ImageNet mean/std per channel), ``zscore_foreground`` (zero mean, unit
            variance over the voxels above the background value -1, as MedicalNet).
    """

    size: tuple[int, ...] | None
    channels: int = 1
    intensity: str = "identity"

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITIES:
            raise ValueError(f"intensity must be one of {INTENSITIES}, got {self.intensity!r}")
        if self.channels < 1 or (self.intensity == "imagenet" and self.channels != 3):
            raise ValueError(f"channels must be >= 1 (3 for imagenet intensity), got {self.channels}")

    def describe(self) -> str:
        size = "native size" if self.size is None else "x".join(map(str, self.size))
        return f"{size}, {self.channels} channel(s), intensity {self.intensity}"

    def __call__(self, x: Tensor) -> Tensor:
        """``(B, C, *spatial)`` in [-1, 1] -> the network's input ``(B, channels, *size)``."""
        if x.shape[1] not in (1, self.channels):
            x = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1]  # centre slice of a 2.5D stack
        x = x.float()
        if self.size is not None and tuple(x.shape[2:]) != tuple(self.size):
            mode = "bilinear" if x.ndim == 4 else "trilinear"
            x = F.interpolate(x, size=self.size, mode=mode, align_corners=False)
        if self.intensity == "unit":
            x = (x + 1.0) / 2.0
        elif self.intensity == "imagenet":
            x = (x + 1.0) / 2.0
        elif self.intensity == "zscore_foreground":
            x = _zscore_foreground(x)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, *x.shape[2:])
        if self.intensity == "imagenet":
            shape = (1, 3) + (1,) * (x.ndim - 2)
            x = (x - x.new_tensor(IMAGENET_MEAN).view(shape)) / x.new_tensor(IMAGENET_STD).view(shape)
        return x


def _zscore_foreground(x: Tensor) -> Tensor:
    """Per image: subtract the mean and divide by the std of voxels above -1 (all voxels if none)."""
    flat = x.flatten(1)
    fg = flat > -1.0 + 1e-3
    fg = torch.where(fg.any(dim=1, keepdim=True), fg, torch.ones_like(fg))
    count = fg.sum(dim=1, keepdim=True)
    mean = (flat * fg).sum(dim=1, keepdim=True) / count
    var = (((flat - mean) * fg) ** 2).sum(dim=1, keepdim=True) / count
    out = (flat - mean) / var.sqrt().clamp_min(1e-6)
    return out.view_as(x)


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, shapes, dtypes and bytes), for built-in networks."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


class FeatureExtractor(nn.Module):
    """A network mapping images ``(B, C, *spatial)`` in [-1, 1] to features ``(B, feature_dim)``.

    Subclasses set the attributes in ``__init__`` and implement :meth:`features` (on
    preprocessed input) and, when the network has a class head, :meth:`head`.
    Extractors are always in eval mode and never track gradients.
    """

    name: str = ""
    spatial_dims: int = 2
    feature_dim: int = 0
    num_classes: int = 0  # size of the class head; 0 when there is none
    preprocessing: Preprocessing = Preprocessing(size=None)
    weights_sha256: str = ""

    def features(self, x: Tensor) -> Tensor:
        """Features ``(B, feature_dim)`` of preprocessed input."""
        raise NotImplementedError

    def head(self, features: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)`` from features ``(B, feature_dim)``, where there is a class head."""
        raise NotImplementedError(f"extractor {self.name!r} has no class head")

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"extractor {self.name!r} takes {self.spatial_dims}D images (B, C, *spatial), got shape {tuple(x.shape)}"
            )

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.features(self.preprocessing(x)).float()

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """Class logits of images in [-1, 1]; for the Inception Score."""
        self._check_input(x)
        return self.head(self.features(self.preprocessing(x))).float()

    def key(self, layout: str) -> StatsKey:
        """The identity of features made by this extractor on images of ``layout`` (2d, 2.5d, 3d)."""
        return StatsKey(self.name, self.weights_sha256, f"{layout}: {self.preprocessing.describe()}")

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)  # batch norm and dropout stay in inference mode
