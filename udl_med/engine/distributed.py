"""Process group set-up for ``torchrun --nproc-per-node N udl-med train ...``.

gloo on CPU, NCCL on GPU; rank 0 alone logs and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> ProcessInfo:
    """Join the process group torchrun describes in the environment; a no-op for one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return ProcessInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def leave_distributed(ranks_in_step: bool) -> None:
    """Close the group after a run every rank ended at the same step, one rank at a time, highest rank first.

    That is a finished run or one stopped by a signal (every rank agreed on the
    step); a rank that failed alone leaves the group as it is.

    gloo closes a pair with a reset (SO_LINGER 0), and a rank that exits while
    gloo's threads still serve the group aborts the interpreter (SIGABRT). So no
    rank closes before every rank has finished its last collective (a barrier on
    the store, which is not gloo's), and each closes only once the ranks above it
    have gone: a reset then reaches idle ranks, never one that is closing its own
    pairs. Rank 0, whose torchrun agent holds the store, leaves last.
    """
    if not dist.is_initialized():
        return
    if not ranks_in_step:
        return  # destroying the group under a peer's pending collective aborts before Python prints this rank's error
    rank, world = dist.get_rank(), dist.get_world_size()
    store = dist.distributed_c10d._get_default_store()
    prefix = f"udl_med/leave/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"  # a restarted group reuses the agent's store
    store.set(f"{prefix}/arrived/{rank}", "1")
    store.wait([f"{prefix}/arrived/{r}" for r in range(world)])
    if rank + 1 < world:
        store.wait([f"{prefix}/left/{rank + 1}"])
    dist.destroy_process_group()
    store.set(f"{prefix}/left/{rank}", "1")


def choose_device(requested: str, process: ProcessInfo) -> torch.device:
    """``auto`` takes CUDA when there is one (this process's local GPU), else the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is available")
    torch.cuda.set_device(process.local_rank)
    return torch.device("cuda", process.local_rank)


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Make every process start from rank 0's weights."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def all_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics across processes (same keys on every rank)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1) or not values:
        return values
    names = sorted(values)
    t = torch.tensor([values[n] for n in names], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(names, t.tolist(), strict=True))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (a signal reaches the ranks at different steps)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
