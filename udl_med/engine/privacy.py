"""What may leave the site through tracking: the privacy mode of every logged run.

Two modes, ``standard`` (the default: runs are logged as they always were) and
``strict``. A run is strict when any of these says so (the strictest wins, so a site's
setting cannot be undone by a config file):

- the run config's ``tracking.privacy`` (a pipeline's ``tracking.privacy``),
- ``--privacy strict`` on ``udl-med train``, ``pipeline`` and ``demo``,
- the environment variable :data:`ENV_VAR` (``UDL_MED_PRIVACY=strict``), set once by a site.

In strict mode a :class:`Scrubber` rewrites what is logged:

- every path (in params, tags, run names, ``config.yaml``, the config inside logged
  checkpoints and model files, pipeline step params) becomes ``path#<hash> (<n> files)``:
  the first :data:`HASH_CHARS` hex digits of an HMAC-SHA256 of the resolved path keyed by
  a salt, and the number of files under it (a folder: its files, recursively; a
  manifest CSV: its rows; a file: 1). The salt lives in :data:`SALT_FILE` in the working
  directory, created once (atomically, mode 0600), so one site's runs stay comparable and
  another site cannot recompute the hashes of guessed paths;
- the manifest columns that name images or people (:data:`HASHED_COLUMNS`) of a logged
  CSV are hashed the same way;
- previews of real scans, and of anything computed from a real scan (reconstructions,
  translations, traversals around a real scan's code), are withheld: only previews drawn
  from the prior (:data:`PRIOR_PREVIEWS`) and the artifacts of the steps that only draw
  from the prior (:data:`PRIOR_STEPS`) are logged;
- no input example is logged with the MLflow model (in either mode).

DICOM header strings never reach the store in either mode: nothing read from a header
is logged; tests/engine/test_privacy.py searches a whole store for them.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import io
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from udl_med.engine.checkpoint import atomic_torch_save
from udl_med.errors import UserError
from udl_med.io_utils import atomic_write_text

STANDARD, STRICT = "standard", "strict"
MODES = (STANDARD, STRICT)
ENV_VAR = "UDL_MED_PRIVACY"
SALT_FILE = ".udl-med-salt"
SALT_BYTES = 32
HASH_CHARS = 12
# Preview names of images drawn from the prior (or the model's own weights): kept in strict mode.
PRIOR_PREVIEWS = frozenset({"samples", "stage1", "stage2", "levels", "filters", "chain"})
# Pipeline step kinds whose artifacts come from the prior alone (sample grids): kept in strict mode.
PRIOR_STEPS = frozenset({"sample", "synthesize"})
# Manifest columns hashed in a logged CSV (paths, and who the image belongs to).
HASHED_COLUMNS = ("image", "subject", "model")
PATH_SUFFIXES = (
    ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm", ".dicom", ".ima", ".csv", ".npz", ".npy",
    ".pt", ".pth", ".safetensors", ".yaml", ".yml", ".json", ".png",
)  # fmt: skip
_COMPOSITE = re.compile(r"([A-Za-z_][\w.-]*)([=:])(.+)", re.S)  # key=PATH (a --set), name:PATH (an extractor)


def env_mode() -> str | None:
    """The site's mode from :data:`ENV_VAR` (None when unset); a value other than the modes is a UserError."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return None
    if value not in MODES:
        raise UserError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: must be one of {', '.join(MODES)}")
    return value


def effective_mode(*modes: str | None) -> str:
    """``strict`` if any of ``modes`` or :data:`ENV_VAR` says so, else ``standard``."""
    return STRICT if STRICT in (*modes, env_mode()) else STANDARD


@contextlib.contextmanager
def forced(mode: str | None) -> Iterator[None]:
    """Within the block, every run of this process (and its children) is at least as private as ``mode``.

    ``--privacy strict`` on the command line; a pipeline in strict mode uses it for its
    train steps. ``None`` or ``standard`` change nothing (a site's strict setting stays).
    """
    if mode not in (None, *MODES):
        raise UserError(f"privacy must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != STRICT:
        yield
        return
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = STRICT
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous


def site_salt(folder: str | Path | None = None) -> bytes:
    """The salt in ``folder/.udl-med-salt`` (the working directory by default), created once.

    Created atomically with mode 0600: written to a private temporary file that is then
    hard-linked into place, so concurrent runs agree on one salt and nobody reads a half
    written one.
    """
    path = Path(folder or Path.cwd()) / SALT_FILE
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{SALT_FILE}.")  # mkstemp: mode 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(SALT_BYTES) + "\n")
            with contextlib.suppress(FileExistsError):  # another run made it first: use theirs
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    text = path.read_text().strip()
    if len(text) < 2 * SALT_BYTES:
        raise UserError(f"{path}: not a udl-med salt (delete it to make a new one; earlier hashes then change)")
    return text.encode()


def is_uri(text: str) -> bool:
    """An MLflow or tracking URI (``runs:/``, ``models:/``, ``scheme://``): not a local path."""
    return text.startswith(("runs:/", "models:/")) or bool(re.match(r"[A-Za-z][\w+.-]+://", text))


def looks_like_path(text: str) -> bool:
    """A string that names a file or folder: has a separator, a file suffix, or exists."""
    if not text or "\n" in text or len(text) > 4096 or is_uri(text):
        return False
    if "/" in text or "\\" in text or text.startswith("~") or text.lower().endswith(PATH_SUFFIXES):
        return True
    try:
        return Path(text).exists()
    except OSError:
        return False


def count_files(path: Path) -> int:
    """Files under a folder (recursively, hidden ones left out), rows of a CSV, 1 for another file, 0 if absent."""
    try:
        if path.is_dir():
            return sum(
                sum(not f.startswith(".") for f in files) for _, _, files in os.walk(path, onerror=lambda err: None)
            )
        if path.suffix.lower() == ".csv":
            with path.open(newline="") as handle:
                return max(sum(1 for _ in csv.reader(handle)) - 1, 0)
        return int(path.is_file())
    except OSError:
        return 0


class Scrubber:
    """Rewrites what a run logs for its privacy mode (see the module docstring); standard mode changes nothing."""

    def __init__(self, mode: str | None = None, folder: str | Path | None = None) -> None:
        self.mode = effective_mode(mode)
        self.strict = self.mode == STRICT
        self._folder = folder
        self._salt: bytes | None = None

    def _key(self) -> bytes:
        if self._salt is None:
            self._salt = site_salt(self._folder)
        return self._salt

    def path(self, text: str, base: Path | None = None) -> str:
        """``path#<hash> (<n> files)`` of a path (relative ones resolved against ``base`` or the working directory)."""
        path = Path(text).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        path = Path(os.path.abspath(path))
        digest = hmac.new(self._key(), str(path).encode(), hashlib.sha256).hexdigest()[:HASH_CHARS]
        n = count_files(path)
        return f"path#{digest} ({n} file{'s' if n != 1 else ''})"

    def text(self, text: str) -> str:
        """A string as logged: a path, ``key=PATH`` or ``name:PATH`` hashed in strict mode."""
        if not self.strict or not isinstance(text, str) or is_uri(text):
            return text
        match = _COMPOSITE.fullmatch(text)
        if match and len(match.group(1)) > 1 and looks_like_path(match.group(3)):  # a drive letter (C:) is part of a path
            return f"{match.group(1)}{match.group(2)}{self.path(match.group(3))}"
        return self.path(text) if looks_like_path(text) else text

    def value(self, value: Any) -> Any:
        """``value`` with every string in it (in lists and mappings too) passed through :meth:`text`."""
        if not self.strict:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(v) for v in value)
        return value

    def config(self, config: dict[str, Any]) -> dict[str, Any]:
        """A run config as logged: paths hashed and, in strict mode, ``tracking.privacy: strict`` recorded."""
        if not self.strict:
            return config
        out = self.value(config)
        if isinstance(out.get("tracking"), dict):
            out["tracking"] = {**out["tracking"], "privacy": STRICT}
        return out

    def keep_preview(self, name: str) -> bool:
        """Whether a training preview of this name may be logged."""
        return not self.strict or name in PRIOR_PREVIEWS

    def keep_step_artifact(self, kind: str, path: Path) -> bool:
        """Whether a pipeline step's artifact may be logged: in strict mode, images only from prior-only steps."""
        return not self.strict or kind in PRIOR_STEPS or Path(path).suffix.lower() not in (".png", ".jpg", ".jpeg", ".gif")

    def artifact(self, path: Path, folder: Path) -> Path:
        """The file to log for ``path``: itself, or in strict mode a rewritten copy in ``folder``.

        Rewritten: a manifest CSV (:data:`HASHED_COLUMNS`), a YAML file (its strings), a
        checkpoint or model file (the run config it holds). Anything else is logged as it is.
        """
        path = Path(path)
        if not self.strict:
            return path
        suffix = path.suffix.lower()
        target = Path(folder) / path.name
        if suffix == ".csv":
            return self._manifest(path, target)
        if suffix in (".yaml", ".yml"):
            return atomic_write_text(target, yaml.safe_dump(self.value(yaml.safe_load(path.read_text())), sort_keys=False))
        if suffix in (".pt", ".pth"):
            return self._torch_file(path, target)
        return path

    def _manifest(self, path: Path, target: Path) -> Path:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        for row in rows:
            for column in HASHED_COLUMNS:
                if row.get(column):
                    row[column] = self.path(row[column], base=path.parent) if column == "image" else self._label(row[column])
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        return atomic_write_text(target, text.getvalue())

    def _label(self, text: str) -> str:
        """A name that is not a path (a subject ID): its salted hash alone."""
        if looks_like_path(text):
            return self.path(text)
        return "id#" + hmac.new(self._key(), text.encode(), hashlib.sha256).hexdigest()[:HASH_CHARS]

    def _torch_file(self, path: Path, target: Path) -> Path:
        content = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(content, dict) and isinstance(content.get("config"), dict):
            content["config"] = self.config(content["config"])
        atomic_torch_save(content, target)
        return target
