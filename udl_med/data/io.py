"""Reading and writing scans: the one import path for readers, writers and collections.

The code lives in files that each do one thing; this module gathers their public names:

- :mod:`udl_med.data.readers`: :func:`read_image` (NIfTI, MetaImage, NRRD, DICOM) into a
  ``(1, *spatial)`` MetaTensor in physical units with its geometry;
- :mod:`udl_med.data.writers`: :func:`write_image` with a reference's geometry, atomically;
- :mod:`udl_med.data.formats`: suffixes and :func:`image_kind` of an output path;
- :mod:`udl_med.data.manifest`: :class:`ImageRecord`, :func:`list_images` (manifest,
  folder, one image) and :func:`write_manifest`;
- :mod:`udl_med.data.inspect`: :func:`describe` and :func:`convert` (``udl-med info`` /
  ``convert``).
"""

from __future__ import annotations

from udl_med.data.formats import MODALITY_NOTE, VOLUME_SUFFIXES, image_kind
from udl_med.data.inspect import convert, describe
from udl_med.data.manifest import SPLITS, ImageRecord, list_images, write_manifest
from udl_med.data.readers import read_image
from udl_med.data.writers import write_image

__all__ = [
    "ImageRecord",
    "read_image",
    "write_image",
    "list_images",
    "write_manifest",
    "describe",
    "convert",
    "image_kind",
    "VOLUME_SUFFIXES",
    "MODALITY_NOTE",
    "SPLITS",
]
