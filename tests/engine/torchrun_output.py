"""What a failed torchrun test shows: every rank's fatal-error block, then the tail.

A rank that aborts prints Python's faulthandler dump (thread stacks, then a long list of
extension modules) before the agent's summary, so the last few thousand characters of
stderr hold only the module list; the stacks are what tell where it died.
"""

from __future__ import annotations

import re

_FATAL = re.compile(r"Fatal Python error.*?(?=\nExtension modules:|\Z)", re.S)


def failure_report(stderr: str, tail: int = 2500) -> str:
    blocks = _FATAL.findall(stderr)
    head = "\n\n".join(block[:6000] for block in blocks)
    return f"{head}\n\n--- last {tail} characters of stderr ---\n{stderr[-tail:]}" if head else stderr[-tail:]
