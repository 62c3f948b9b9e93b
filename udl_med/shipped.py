"""The configs and pipelines that ship with udl-med, found by name.

In the repository they are the top-level ``configs/`` and ``pipelines/`` folders; an
installed wheel carries the same files as package data, ``udl_med/configs/`` and
``udl_med/pipelines/`` (``setup.py`` maps the folders into the package, so every YAML
file in them ships without being listed). ``udl-med train NAME`` and ``udl-med pipeline
NAME`` accept a shipped name (the file name without ``.yaml``) wherever they accept a
path; a path that exists always wins over a name. ``udl-med configs`` lists both kinds
with their one-line descriptions: the first comment line of each file.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from udl_med.errors import ConfigError

KINDS = ("configs", "pipelines")
SUFFIXES = (".yaml", ".yml")
_PACKAGE = Path(__file__).resolve().parent

__all__ = ["KINDS", "shipped_folder", "shipped_files", "description", "list_shipped", "find_shipped", "resolve_shipped"]


def shipped_folder(kind: str) -> Path:
    """The folder of shipped ``kind`` (``configs`` or ``pipelines``): package data, else the source checkout's."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    installed = _PACKAGE / kind
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / kind  # a source checkout (editable install or PYTHONPATH)


def shipped_files(kind: str) -> dict[str, Path]:
    """``{name: path}`` of every shipped file of ``kind``, by name."""
    folder = shipped_folder(kind)
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith(".")}


def description(path: Path) -> str:
    """The first sentence of a YAML file's first comment paragraph, whole, without the ``#``.

    A paragraph runs over consecutive comment lines up to an empty comment line, a
    command line (``udl-med ...``), a ``Label: ...`` line, or the first key; a sentence ends at ``.``, ``!`` or ``?`` followed by a capital letter, a
    backtick or the paragraph's end (empty if the file starts with no comment).
    """
    lines: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("#"):
            if text or lines:
                break
            continue
        body = text.lstrip("#").strip()
        if not body or (lines and _NEW_ITEM.match(body)):
            if lines:
                break
            continue
        lines.append(body)
        if body[-1] in ".!?":  # a sentence that ends with its line ends the description
            break
    paragraph = " ".join(lines)
    return _SENTENCE_END.split(paragraph, maxsplit=1)[0].strip()


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`])")
_NEW_ITEM = re.compile(r"^(udl-med|torchrun|python)\s|^[A-Z][A-Za-z]*( [a-z]+)?: ")  # a command line or "Sample: ..." after the description


def list_shipped() -> dict[str, Any]:
    """``udl-med configs``: ``{"configs": {name: description}, "pipelines": {...}}``, plus where they live."""
    result: dict[str, Any] = {kind: {name: description(path) for name, path in shipped_files(kind).items()} for kind in KINDS}
    result["folders"] = {kind: str(shipped_folder(kind)) for kind in KINDS}
    return result


def find_shipped(kind: str, name: str) -> Path | None:
    """The shipped file ``name`` (with or without ``.yaml``) of ``kind``, or None."""
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix in SUFFIXES else name
    if "/" in stem or "\\" in stem:
        return None
    return shipped_files(kind).get(stem)


def resolve_shipped(kind: str, value: str | Path, base: Path | None = None, source: str | None = None, key: str = "<file>") -> Path:
    """A config or pipeline named by a path or a shipped name.

    Args:
        kind: ``configs`` or ``pipelines``.
        value: a path (absolute, or relative to ``base``) or a shipped name.
        base: the folder relative paths start from (default: the working directory).
        source, key: where ``value`` was written, for the error message.

    Raises:
        ConfigError: neither a file there nor a shipped name; the message lists the names.
    """
    path = Path(value)
    candidate = path if path.is_absolute() or base is None else base / path
    if candidate.is_file():
        return candidate
    found = find_shipped(kind, str(value))
    if found is not None:
        return found

    names = list(shipped_files(kind))
    what = "config" if kind == "configs" else "pipeline"
    close = difflib.get_close_matches(Path(str(value)).stem, names, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(
        source or candidate, key, f"no such {what} file {str(candidate)!r} and no shipped {what} {str(value)!r} ({hint}`udl-med configs` lists the {len(names)} shipped)"
    )
