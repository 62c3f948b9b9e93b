"""The evaluation tests train their tiny translation models with the inference tests' kit."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))  # translationkit
