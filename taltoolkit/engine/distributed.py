"""Joining and leaving the process group, and the device: the same code runs alone or under
``torchrun --nproc_per_node=N``.

The collectives themselves (rank, gathers, reductions) live in :mod:`taltoolkit.collectives`,
which every layer imports; they are re-exported here for code written against this module.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from taltoolkit.collectives import (  # re-exported (__all__)
    all_gather_rows,
    all_gather_rows_with_grad,
    all_gather_rows_with_start,
    all_reduce_max,
    all_reduce_sum,
    all_reduce_sum_with_grad,
    barrier,
    broadcast_object,
    global_mean,
    global_share,
    is_distributed,
    is_main,
    rank,
    shard_and_gather,
    world_size,
)

__all__ = [
    "all_gather_rows",
    "all_gather_rows_with_grad",
    "all_gather_rows_with_start",
    "all_reduce_max",
    "all_reduce_sum",
    "all_reduce_sum_with_grad",
    "barrier",
    "broadcast_object",
    "cleanup",
    "global_mean",
    "global_share",
    "init_distributed",
    "is_distributed",
    "is_main",
    "rank",
    "resolve_device",
    "shard_and_gather",
    "world_size",
]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present (this rank's GPU under torchrun), else CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={device} but CUDA is not available; use trainer.device=cpu or auto")
    return dev


def init_distributed(device: torch.device) -> bool:
    """Join the process group torchrun describes in the environment; False when run alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        if device.type == "cuda":
            torch.cuda.set_device(device)
    return True


def cleanup() -> None:
    """Leave the process group. Exiting with it alive can abort the process (gloo's threads
    are still joinable at interpreter shutdown: "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank leaves while another still has a collective in flight
        dist.destroy_process_group()
