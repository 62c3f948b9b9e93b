"""``encoder:PATH``: an encoder exported by ``udl-med export --format encoder``.

The folder holds ``encoder.json`` (the ``monai.networks.nets`` class, its keyword
arguments and the ``input`` it expects) and ``encoder.pt`` (its state dict); it is
rebuilt and loaded strictly by :func:`udl_med.nets.exported.load_encoder`,
and its output is global-average-pooled to a vector: an in-domain extractor trained on
the user's own scans. Images are resized to the encoder's ``input.image_size``; a
single channel is repeated when the encoder takes several (a 2.5D encoder then sees a
flat stack, the best available for generated single slices).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from udl_med import keys
from udl_med.errors import InputError
from udl_med.metrics.extractors.base import FeatureExtractor, Preprocessing
from udl_med.metrics.extractors.weights import sha256_file
from udl_med.nets.exported import load_encoder


class EncoderExtractor(FeatureExtractor):
    """Features of an exported udl-med encoder (any ``monai.networks.nets`` class)."""

    def __init__(self, network: nn.Module, spatial_dims: int, in_channels: int, size: tuple[int, ...], weights_sha256: str) -> None:
        super().__init__()
        self.name = "encoder"
        self.network = network
        self.spatial_dims = spatial_dims
        self.preprocessing = Preprocessing(size=size, channels=in_channels, intensity="identity")
        self.weights_sha256 = weights_sha256
        self.eval()
        self.feature_dim = int(self.forward(torch.zeros(1, 1, *size)).shape[1])

    def features(self, x: Tensor) -> Tensor:
        out = self.network(x)
        if isinstance(out, (tuple, list)):
            out = out[0]  # e.g. (mean, logvar, ...) of variational encoders
        if out.ndim > 2:
            out = out.mean(dim=tuple(range(2, out.ndim)))  # global average pool over spatial axes
        return out.flatten(1)

    @classmethod
    def from_folder(cls, folder: Path) -> EncoderExtractor:
        """Rebuild, load strictly and wrap the encoder exported to ``folder``.

        Raises:
            InputError: not an export folder, or weights that do not load strictly.
        """
        if not folder.is_dir():
            raise InputError(folder, "not an exported encoder folder (make one with `udl-med export MODEL OUT --format encoder`)")
        try:
            exported = load_encoder(folder)
        except RuntimeError as err:  # load_state_dict(strict=True) mismatch
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(folder / keys.ENCODER_WEIGHTS, f"weights do not load strictly: {first}") from None
        spec = exported.spec["input"]
        try:
            dims, channels, size = int(spec["spatial_dims"]), int(spec["in_channels"]), tuple(int(v) for v in spec["image_size"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(folder / keys.ENCODER_JSON, f"'input' needs spatial_dims, in_channels and image_size ({err})") from None
        return cls(exported.net, dims, channels, size, sha256_file(folder / keys.ENCODER_WEIGHTS))
