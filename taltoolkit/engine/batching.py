"""Batches to the device, and the sampler that cuts every epoch into global batches."""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch.utils.data import Sampler

from taltoolkit import collectives

__all__ = ["GlobalBatchSampler", "move_batch"]


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch on ``device``: tensors and lists of tensors (per-video segments) move."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            out[k] = [t.to(device, non_blocking=True) for t in v]
        else:
            out[k] = v
    return out


class GlobalBatchSampler(Sampler[list[int]]):
    """Seeded per-epoch shuffle cut into global batches; each rank takes its slice.

    Every rank draws the same permutation, so with W ranks the union of the ranks' batches
    is exactly the batch a single process would see with the same global batch size.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last, self.seed = n, batch_size, shuffle, drop_last, seed
        self.epoch = 0
        self.rank, self.world = collectives.rank(), collectives.world_size()
        if batch_size % self.world:
            raise ValueError(f"trainer.batch_size={batch_size} must be divisible by the {self.world} processes")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size and len(batches) > 1:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for b in self._global_batches():
            per = math.ceil(len(b) / self.world)
            part = b[self.rank * per : (self.rank + 1) * per]
            if part:
                yield part

    def __len__(self) -> int:
        return len(self._global_batches())
