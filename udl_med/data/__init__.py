"""Readers, writers, normalisation, MONAI transforms, datasets and phantoms.

:func:`build_datasets` (:mod:`udl_med.data.builder`) is the one way from a ``data:``
section to training items; it is imported on first use so that ``udl_med.data.spec``
stays light for the methods that import it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_datasets"]


def __getattr__(name: str) -> Any:
    if name == "build_datasets":
        from udl_med.data.builder import build_datasets  # lazy: keeps `import udl_med.data.spec` light

        return build_datasets
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
