"""Shared test settings."""

from __future__ import annotations

import torch

# Two cores, two xdist workers: one thread each keeps the suite from oversubscribing.
torch.set_num_threads(1)
