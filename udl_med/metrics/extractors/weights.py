"""Published weight files on the user's disk: known SHA-256 digests, checking, loading.

Nothing is downloaded. A published extractor is named ``NAME:PATH``; the file's SHA-256
must be one of the known releases below, or the digest pinned by the user, either in
the name (``NAME:PATH#sha256=HEX``) or in the environment (``UDL_MED_<NAME>_SHA256``).
Files load with ``torch.load(weights_only=True)`` (or safetensors): never a way to run code.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from udl_med.errors import InputError, UserError

# name -> {published file name: sha256}. Sources: the pytorch-fid release asset
# pt_inception-2015-12-05-6726825d.pth (95,628,359 bytes; the digest's prefix is in its
# name, the full digest pinned by torch-fidelity and many evaluation scripts); MedicalNet's
# resnet_50.pth from the official MedicalNet_pytorch_files archive (184,885,051 bytes, as
# recorded publicly). No RadImageNet or SwAV digest is published: pin the file you have
# (its SHA-256 is printed when it is refused).
KNOWN_SHA256: dict[str, dict[str, str]] = {
    "inception": {
        "pt_inception-2015-12-05-6726825d.pth": "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    },
    "medicalnet": {
        "resnet_50.pth": "5b6189cafbee2f5604a7279b62bc163365aa6a86a377e1dc260a14275cacbd84",
    },
    "radimagenet": {},
    "swav": {},
}

_PIN = re.compile(r"^(?P<path>.*?)(?:#sha256=(?P<digest>[0-9a-fA-F]*))?$")


def env_var(name: str) -> str:
    return f"UDL_MED_{name.upper()}_SHA256"


def parse_weight_spec(name: str, spec: str) -> tuple[Path, str | None]:
    """Split ``PATH[#sha256=HEX]`` into the path and the pinned digest (None if not pinned).

    Raises:
        UserError: an empty path or a pinned digest that is not 64 hex digits.
    """
    match = _PIN.match(spec)
    path, digest = match.group("path"), match.group("digest")
    if not path:
        raise UserError(f"extractor {name}: give the weight file as {name}:PATH")
    if digest is not None and len(digest) != 64:
        raise UserError(f"extractor {name}: #sha256= needs 64 hex digits, got {len(digest)}")
    return Path(path).expanduser(), digest.lower() if digest else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(name: str, path: Path, pinned: str | None = None) -> str:
    """Return the file's SHA-256 after checking it against the pinned or the known digests.

    Raises:
        InputError: missing file, or a digest that is neither pinned nor a known release.
    """
    if not path.is_file():
        raise InputError(path, f"{name} weight file not found (nothing is downloaded; give a local file)")
    digest = sha256_file(path)
    expected = pinned or (os.environ.get(env_var(name)) or "").strip().lower() or None
    if expected is not None:
        if digest != expected:
            raise InputError(path, f"{name} weights have SHA-256 {digest}, expected {expected}")
        return digest
    known = KNOWN_SHA256.get(name, {})
    if digest not in known.values():
        releases = ", ".join(f"{file} ({h[:12]}...)" for file, h in known.items()) or "none published"
        raise InputError(
            path,
            f"SHA-256 {digest} is not a known {name} release (known: {releases}); "
            f"to use another release pin it: {name}:PATH#sha256={digest} or {env_var(name)}",
        )
    return digest


def load_state_dict(path: Path) -> dict[str, Tensor]:
    """Load a state dict from ``.pt``/``.pth`` (weights only) or ``.safetensors``.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` and strips DataParallel's ``module.``.

    Raises:
        InputError: unreadable file, or not a mapping of names to tensors.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # lazy: an optional dependency: its absence is handled here

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read is the file's problem
        raise InputError(path, f"cannot read weights ({type(err).__name__}: {err})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(path, "not a state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}
