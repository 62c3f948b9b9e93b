"""Collections of images: the manifest CSV (the one way udl-med lists images), folders, and the one manifest writer.

A manifest has a column ``image`` (a path relative to the CSV, or absolute) and
optional ``label``, ``modality`` (``CT``/``MR``), ``subject`` and ``split``
(``train``/``val``/``test``). :func:`list_images` reads a manifest, a folder or one
image into :class:`ImageRecord` s; :func:`write_manifest` writes every manifest
udl-med produces (phantoms, samples, translations, pipeline selections), always with
the columns :data:`udl_med.keys.MANIFEST_COLUMNS`, atomically.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udl_med import keys
from udl_med.data.dicom import is_dicom_file, series_files
from udl_med.data.formats import VOLUME_SUFFIXES, volume_suffix
from udl_med.errors import ConfigError, InputError
from udl_med.io_utils import atomic_write_text

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)  # data.split_fractions: train, val, test subjects
DEFAULT_SPLIT_SEED = 0  # data.split_seed
MANIFEST_NAME = "manifest.csv"

__all__ = ["ImageRecord", "SPLITS", "MANIFEST_NAME", "list_images", "parse_manifest", "write_manifest", "select_images"]


@dataclass(frozen=True)
class ImageRecord:
    """One image of a collection: the manifest's columns (:data:`udl_med.keys.MANIFEST_COLUMNS`)."""

    path: Path
    label: int | None = None
    modality: str | None = None
    subject: str | None = None
    split: str | None = None



def parse_manifest(path: Path) -> list[ImageRecord]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(path, "manifest is not UTF-8 text") from None
    rows = list(csv.DictReader(text.splitlines()))
    if not text.strip():
        raise InputError(path, "empty manifest")
    header = next(csv.reader(text.splitlines()))
    if "image" not in header:
        raise InputError(path, f"manifest has no 'image' column (columns: {', '.join(header)})")
    unknown = [c for c in header if c not in keys.MANIFEST_COLUMNS + keys.SYNTHETIC_COLUMNS]
    if unknown:
        raise InputError(path, f"unknown manifest column(s) {', '.join(unknown)}; valid: {', '.join(keys.MANIFEST_COLUMNS)}")
    if not rows:
        raise InputError(path, "manifest has no rows")
    records = []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"line {i}"
        image = (row.get("image") or "").strip()
        if not image:
            raise InputError(path, f"{where}: empty 'image'")
        img_path = (path.parent / image) if not Path(image).is_absolute() else Path(image)
        if not img_path.exists():
            raise InputError(path, f"{where}: image {image!r} does not exist")
        label_text = (row.get("label") or "").strip()
        label = None
        if label_text:
            try:
                label = int(label_text)
            except ValueError:
                raise InputError(path, f"{where}: label {label_text!r} is not a non-negative integer") from None
            if label < 0:
                raise InputError(path, f"{where}: label {label_text!r} is not a non-negative integer")
        modality = (row.get("modality") or "").strip().upper() or None
        if modality is not None and modality not in keys.MODALITIES:
            raise InputError(path, f"{where}: unknown modality {row.get('modality')!r}; valid: {', '.join(keys.MODALITIES)}")
        split = (row.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            raise InputError(path, f"{where}: unknown split {row.get('split')!r}; valid: {', '.join(SPLITS)}")
        subject = (row.get("subject") or "").strip() or None
        records.append(ImageRecord(img_path, label, modality, subject, split))
    return records


def list_images(path: str | Path) -> list[ImageRecord]:
    """The images of a volume, DICOM folder, folder of volumes or manifest CSV.

    A folder holding ``manifest.csv`` is read through it; other folders list their
    volume files (by name) and their sub-folders of DICOM files. Files are not read.

    Raises:
        InputError: a missing path, a manifest with a missing file or an unknown value,
            or a folder without images.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return parse_manifest(path)
        return [ImageRecord(path)]
    if (path / "manifest.csv").is_file():
        return parse_manifest(path / "manifest.csv")
    files = series_files(path)
    volumes = [f for f in files if volume_suffix(f) in VOLUME_SUFFIXES]
    if volumes:
        records = [ImageRecord(f) for f in volumes]
        for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if any(is_dicom_file(f) for f in series_files(sub)):
                records.append(ImageRecord(sub))
        return records
    if files:  # a DICOM series folder
        return [ImageRecord(path)]
    subs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    records = [ImageRecord(sub) for sub in subs if any(is_dicom_file(f) for f in series_files(sub))]
    if not records:
        raise InputError(path, "no images found (expected volumes, DICOM files or a manifest.csv)")
    return records



def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def write_manifest(path: str | Path, rows: Iterable[ImageRecord | Mapping[str, Any]], extra_columns: tuple[str, ...] = ()) -> Path:
    """Write a manifest CSV with the columns ``image, label, modality, subject, split``, atomically.

    Args:
        path: the CSV to write (its folder is created).
        rows: :class:`ImageRecord` s or mappings with an ``image`` key and any of the
            other columns (missing ones are left empty; unknown keys are an error).
            A record's path is taken as it stands (relative to the working directory,
            as :func:`list_images` returns it); a mapping's relative ``image`` is relative
            to the CSV's folder. An image inside the CSV's folder is written relative to
            it, any other as an absolute path, so the manifest reads back with
            :func:`list_images`.
        extra_columns: columns after those (e.g. :data:`udl_med.keys.SYNTHETIC_COLUMNS`
            of a synthetic data set, which the manifest reader accepts).

    Returns:
        ``path``.

    Raises:
        ValueError: a row without ``image`` or with a key that is not a manifest column.
    """
    path = Path(path)
    base = path.parent.resolve()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = (*keys.MANIFEST_COLUMNS, *extra_columns)
    writer.writerow(columns)
    for row in rows:
        record = isinstance(row, ImageRecord)
        fields = {"image": row.path, "label": row.label, "modality": row.modality, "subject": row.subject, "split": row.split} if record else dict(row)
        unknown = [k for k in fields if k not in columns]
        if unknown or fields.get("image") in (None, ""):
            raise ValueError(f"manifest rows need 'image' and only the columns {columns}; got {sorted(fields)}")
        image = Path(fields["image"])
        # a record's path is a usable path (relative to the working directory); a mapping's relative image is relative to the CSV
        absolute = image if image.is_absolute() or record else (path.parent / image)
        try:
            fields["image"] = absolute.resolve().relative_to(base).as_posix()
        except ValueError:
            fields["image"] = str(absolute.resolve())
        writer.writerow([_cell(fields.get(c)) for c in columns])
    return atomic_write_text(path, buffer.getvalue())


def select_images(
    source: str | Path,
    out: str | Path,
    modality: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
    split_seed: int = DEFAULT_SPLIT_SEED,
) -> dict[str, Any]:
    """The pipeline step ``select``: a manifest of the images of ``source`` with that modality and split.

    Args:
        source: a manifest, a folder or one image (as :func:`list_images`).
        out: the manifest CSV to write (:func:`write_manifest`: paths relative to it where
            the images lie below its folder, else absolute).
        modality, split: keep only images with this modality / split (None: any).
        limit: keep at most this many images (None: all).
        split_fractions, split_seed: how a source without a split column is split by
            subject (training's ``data.split_fractions`` / ``data.split_seed``).

    Returns:
        ``manifest`` (the new CSV, with the split of every image), ``first`` (its first
        image, e.g. a volume to translate), ``n`` and ``subjects``.

    Raises:
        ConfigError: no image of ``source`` matches.
    """
    from udl_med.data.split import records_of_split, subjects_of  # lazy: import cycle (split reads manifests through this module)

    records = [r for r in records_of_split(source, split, split_fractions, split_seed) if modality is None or r.modality == modality][: limit or None]
    if not records:
        raise ConfigError(source, "select", f"no images with modality={modality} split={split}")
    path = write_manifest(out, records)
    return {"manifest": str(path), "first": str(records[0].path), "n": len(records), "subjects": subjects_of(records)}
