"""A data order that is a pure function of (seed, step), so a killed run resumes exactly.

Epoch ``e`` visits the items in a permutation drawn from ``seed`` and ``e``; each item
is fetched with its own transform seed drawn from the same generator, so random crops
are reproducible whichever process or worker fetches them. Resuming at step ``s``
starts the sampler at batch ``s`` without loading the skipped items.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler
from torch.utils.data import default_collate


class SeededItems(Dataset):
    """Wraps a udl-med dataset so ``ds[(index, seed)]`` re-seeds its random transforms first."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        if hasattr(self.dataset, "set_random_state"):
            self.dataset.set_random_state(seed)
        return self.dataset[index]


class WholeBatches(Dataset):
    """Wraps an in-memory dataset with ``batch(indices) -> dict``: one indexing per batch, no collation.

    Point sets and arrays index one tensor per batch, which is what makes a toy GAN step
    cost microseconds rather than a Python loop over items.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, keys: list[tuple[int, int]]) -> Any:
        return self.dataset.batch([index for index, _ in keys])  # type: ignore[attr-defined]


class StepSampler(Sampler):
    """Yields ``(index, item_seed)`` for batches ``start_batch, start_batch + 1, ...`` forever.

    Args:
        n_items: dataset length.
        batch_size: items per batch and process.
        seed: run seed.
        rank, world_size: this process's shard of every epoch's permutation.
        start_batch: the global step to start from (resume).
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_batch: int = 0):
        self.n_items = n_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self.batches_per_epoch = n_items // (batch_size * world_size)
        if self.batches_per_epoch < 1:
            raise ValueError(f"batch_size {batch_size} x {world_size} processes is larger than the {n_items} items")

    def _epoch(self, epoch: int) -> tuple[list[int], list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n_items, generator=g)
        item_seeds = torch.randint(0, 2**31 - 1, (self.n_items,), generator=g)
        return order[self.rank :: self.world_size].tolist(), item_seeds[self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, batch = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            order, seeds = self._epoch(epoch)
            for b in range(batch, self.batches_per_epoch):
                for i in range(b * self.batch_size, (b + 1) * self.batch_size):
                    yield order[i], seeds[i]
            epoch, batch = epoch + 1, 0

    def __len__(self) -> int:  # infinite sampler; DataLoader only needs a length for progress
        return 2**62


def collate_plain(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Default collation, with MONAI MetaTensors turned into plain tensors (cheaper to move)."""
    batch = default_collate(items)
    return {k: v.as_tensor() if hasattr(v, "as_tensor") else v for k, v in batch.items()}


def _unchanged(batch: Any) -> Any:
    return batch


def step_loader(
    dataset: Dataset, batch_size: int, seed: int, start_step: int, num_workers: int = 0, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """An endless loader whose ``k``-th batch is the run's batch ``start_step + k``.

    ``start_step`` counts batches: a method that uses several batches per training step
    resumes at ``step * batches_per_step``. A dataset with a ``batch(indices)`` method
    (in-memory data) is indexed once per batch instead of item by item.
    """
    sampler = StepSampler(len(dataset), batch_size, seed, rank, world_size, start_step)  # type: ignore[arg-type]
    if hasattr(dataset, "batch"):  # one indexing per batch: the sampler's items grouped into lists
        items: Dataset = WholeBatches(dataset)
        batching: dict[str, Any] = dict(batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last=False), collate_fn=_unchanged)
    else:
        items, batching = SeededItems(dataset), dict(batch_size=batch_size, sampler=sampler, collate_fn=collate_plain)
    loader = DataLoader(
        items,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        # Its own generator: creating the iterator then draws nothing from the global RNG,
        # which the method's own sampling (noise, Gibbs chains) must find as it was saved.
        generator=torch.Generator().manual_seed(seed + start_step),
        **batching,
    )
    loader.step_sampler = sampler  # type: ignore[attr-defined]
    return loader


def reference_batch(dataset: Dataset, n: int, seed: int) -> dict[str, Any]:
    """``n`` training items chosen by ``seed`` alone, with fixed item seeds: the same on every rank and on resume."""
    size = len(dataset)  # type: ignore[arg-type]
    if n > size:
        raise ValueError(f"a reference batch of {n} items is larger than the {size} training items")
    g = torch.Generator().manual_seed(seed * 7_919 + 17)
    indices = torch.randperm(size, generator=g)[:n].tolist()
    if hasattr(dataset, "batch"):
        return dataset.batch(indices)  # type: ignore[attr-defined]
    wrapped = SeededItems(dataset)
    return collate_plain([wrapped[(i, seed + k)] for k, i in enumerate(indices)])


def fixed_batches(dataset: Dataset, n_items: int, batch_size: int, seed: int = 0) -> list[dict[str, Any]]:
    """The first ``n_items`` held-out items, fetched with fixed seeds, in batches (evaluation)."""
    n = min(n_items, len(dataset))  # type: ignore[arg-type]
    if hasattr(dataset, "batch"):
        return [dataset.batch(list(range(i, min(n, i + batch_size)))) for i in range(0, n, batch_size)]  # type: ignore[attr-defined]
    wrapped = SeededItems(dataset)
    items = [wrapped[(i, seed + i)] for i in range(n)]
    return [collate_plain(items[i : i + batch_size]) for i in range(0, n, batch_size)]
