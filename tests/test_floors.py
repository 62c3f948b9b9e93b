"""Dependency floors are versions the suite runs on: every declared floor is at most what is installed."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def floors(requirements: list[str]) -> dict[str, Version]:
    out = {}
    for text in requirements:
        req = Requirement(text)
        lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert lows, f"{text}: declare a floor (>=)"
        out[req.name] = max(lows)
    return out


def test_runtime_and_dev_floors_are_installed_here() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = floors(project["dependencies"]) | floors(project["optional-dependencies"]["dev"])
    for name, floor in declared.items():
        installed = Version(metadata.version(name))
        assert Version(installed.base_version) >= floor, f"{name}: floor {floor} is above the installed {installed}"
    python_floor = Version(re.sub(r"[^0-9.]", "", project["requires-python"]))
    assert Version(".".join(map(str, sys.version_info[:2]))) >= python_floor


def test_the_readme_lists_the_floors() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for name, floor in floors(project["dependencies"]).items():
        assert f"{name} {floor}" in readme, f"README: list {name} {floor} under the dependency floors"
