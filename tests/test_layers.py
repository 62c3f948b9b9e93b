"""Imports run one way through udl_med: a module never imports a higher layer.

The layer map below is the one in the design (shared/DESIGN.md, "Layout"): keys and
other leaf helpers, then data, nets and losses, metrics, methods, engine, inference,
evaluation, the user-facing actions, and last the package's own ``__init__``. Every
``import`` and ``from ... import`` is checked, at module level and inside functions,
with relative imports resolved against the importing module's package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import udl_med

PACKAGE_ROOT = Path(udl_med.__file__).resolve().parent

# Longest matching prefix wins. Same layer may import itself.
LAYERS: dict[str, int] = {
    "udl_med.keys": 0,
    "udl_med.errors": 0,
    "udl_med.io_utils": 0,
    "udl_med.shipped": 0,
    "udl_med.data": 1,
    "udl_med.nets": 2,
    "udl_med.losses": 2,
    "udl_med.metrics": 3,
    "udl_med.methods": 4,
    "udl_med.engine": 5,
    "udl_med.inference": 6,
    "udl_med.evaluation": 7,
    "udl_med.actions": 8,
    "udl_med.pipeline": 8,
    "udl_med.cli": 8,
    "udl_med.demo": 8,
    "udl_med.api": 8,
    "udl_med": 9,  # udl_med/__init__.py: the public Python API
}


def layer_of(module: str) -> int:
    """The layer of a dotted module name (the longest prefix in ``LAYERS``)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(f"{module}: not in the layer map of tests/test_layers.py")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) for every udl_med import in one file (``source``: its text), anywhere in it."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    text = path.read_text(encoding="utf-8") if source is None else source
    tree = ast.parse(text, filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from udl_med import keys` imports the module udl_med.keys;
            # `from udl_med.data.spec import DataSpec` imports udl_med.data.spec
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if _is_module(sub) else target))
    return [(line, mod) for line, mod in found if mod == "udl_med" or mod.startswith("udl_med.")]


def _is_module(module: str) -> bool:
    rel = Path(*module.split("."))
    root = PACKAGE_ROOT.parent
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def upward_imports() -> list[str]:
    bad: list[str] = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        here = module_name(path)
        own = layer_of(here)
        for line, target in imported_modules(path):
            if layer_of(target) > own:
                rel = path.relative_to(PACKAGE_ROOT.parent)
                bad.append(f"{rel}:{line}: {here} (layer {own}) imports {target} (layer {layer_of(target)})")
    return bad


def test_every_module_has_a_layer():
    for path in PACKAGE_ROOT.rglob("*.py"):
        layer_of(module_name(path))  # raises KeyError naming the module


def test_no_import_runs_back_up():
    bad = upward_imports()
    assert not bad, "imports that run back up the layer order:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from ..inference import sample\n", "udl_med/metrics/x.py", "udl_med.inference.sample"),
        ("from .extractors.base import FeatureExtractor\n", "udl_med/metrics/x.py", "udl_med.metrics.extractors.base"),
        ("def f():\n    from udl_med.engine import train\n", "udl_med/data/x.py", "udl_med.engine.train"),
        ("from . import spec\n", "udl_med/data/__init__.py", "udl_med.data.spec"),
        ("import udl_med.methods.base as b\n", "udl_med/nets/x.py", "udl_med.methods.base"),
    ],
)
def test_walker_sees_relative_and_nested_imports(source: str, module: str, expected: str) -> None:
    found = [mod for _, mod in imported_modules(PACKAGE_ROOT.parent / module, source)]
    assert expected in found
    assert upward_of(module, found) == ([expected] if layer_of(expected) > layer_of(module_name(PACKAGE_ROOT.parent / module)) else [])


def upward_of(module: str, found: list[str]) -> list[str]:
    own = layer_of(module_name(PACKAGE_ROOT.parent / module))
    return [m for m in found if layer_of(m) > own]


def test_layer_map_orders_the_design():
    assert layer_of("udl_med.data.spec") < layer_of("udl_med.nets.vae") < layer_of("udl_med.metrics.fid")
    assert layer_of("udl_med.metrics.fid") < layer_of("udl_med.methods.gan") < layer_of("udl_med.engine.train")
    assert layer_of("udl_med.engine.train") < layer_of("udl_med.inference.sample")
    assert layer_of("udl_med.inference.sample") < layer_of("udl_med.evaluation.probe")
    assert layer_of("udl_med.evaluation.probe") < layer_of("udl_med.actions") < layer_of("udl_med")
    assert layer_of("udl_med.pipeline") == layer_of("udl_med.cli")


def imports_inside_functions_without_a_reason() -> list[str]:
    """``file:line`` of each import inside a function whose line carries no ``# lazy:`` reason."""
    missing = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    span = lines[inner.lineno - 1 : inner.end_lineno]
                    if not any("# lazy:" in line for line in span):
                        missing.append(f"{path.relative_to(PACKAGE_ROOT.parent)}:{inner.lineno}")
    return missing


def test_imports_inside_functions_say_why_they_are_lazy() -> None:
    """Imports belong at module level; one inside a function keeps a heavy or optional package off the start-up path and says so."""
    assert imports_inside_functions_without_a_reason() == []
