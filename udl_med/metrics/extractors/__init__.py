"""Feature extractors, chosen by name.

- ``random`` (or ``random:SEED``): a seeded random-init conv net, 2D or 3D, the baseline.
- ``encoder:PATH``: an encoder folder written by ``udl-med export --format encoder``.
- ``inception:PATH``: the FID InceptionV3 (pt_inception-2015-12-05), 2D.
- ``radimagenet:PATH``: the RadImageNet ResNet-50 (PyTorch release), 2D.
- ``swav:PATH``: the SwAV ResNet-50 (ImageNet, self-supervised; ``swav_800ep_pretrain.pth.tar``), 2D.
- ``medicalnet:PATH``: a MedicalNet 3D ResNet (10 to 200), 3D.

Published weights are files on disk, checked against known SHA-256 digests; append
``#sha256=HEX`` to the path (or set ``UDL_MED_<NAME>_SHA256``) to use another release.
"""

from __future__ import annotations

from pathlib import Path

from udl_med.errors import UserError
from udl_med.metrics.extractors.base import FeatureExtractor, Preprocessing
from udl_med.metrics.extractors.encoder import EncoderExtractor
from udl_med.metrics.extractors.inception import InceptionExtractor
from udl_med.metrics.extractors.random_net import RandomExtractor
from udl_med.metrics.extractors.resnets import medicalnet_from_file, radimagenet_from_file, swav_from_file
from udl_med.metrics.extractors.weights import KNOWN_SHA256, parse_weight_spec

EXTRACTOR_NAMES = ("random", "encoder", "inception", "radimagenet", "swav", "medicalnet")

__all__ = ["EXTRACTOR_NAMES", "FeatureExtractor", "KNOWN_SHA256", "Preprocessing", "build_extractor"]


def build_extractor(spec: str, spatial_dims: int = 2) -> FeatureExtractor:
    """Build the extractor ``spec`` names, for images of ``spatial_dims`` (2 or 3).

    Raises:
        UserError: unknown name, an extractor that does not take ``spatial_dims``-D
            images, or a weight file that is missing, unreadable or has the wrong hash.
    """
    name, _, rest = spec.partition(":")
    if name == "random":
        try:
            seed = int(rest) if rest else 0
        except ValueError:
            raise UserError(f"extractor random: the seed must be an integer, got {rest!r}") from None
        extractor: FeatureExtractor = RandomExtractor(spatial_dims, seed=seed)
    elif name == "encoder":
        if not rest:
            raise UserError("extractor encoder: give the exported folder as encoder:PATH")
        extractor = EncoderExtractor.from_folder(Path(rest).expanduser())
    elif name == "inception":
        extractor = InceptionExtractor.from_file(*parse_weight_spec(name, rest))
    elif name == "radimagenet":
        extractor = radimagenet_from_file(*parse_weight_spec(name, rest))
    elif name == "swav":
        extractor = swav_from_file(*parse_weight_spec(name, rest))
    elif name == "medicalnet":
        extractor = medicalnet_from_file(*parse_weight_spec(name, rest))
    else:
        raise UserError(f"unknown extractor {name!r}; valid: random, encoder:PATH, inception:PATH, radimagenet:PATH, swav:PATH, medicalnet:PATH")
    if extractor.spatial_dims != spatial_dims:
        raise UserError(f"extractor {extractor.name} takes {extractor.spatial_dims}D images, not {spatial_dims}D (check --dims)")
    return extractor
