"""Joining and leaving the process group, and the device: the same code runs alone or under
``torchrun --nproc_per_node=N``.

The collectives themselves (rank, gathers, reductions) live in :mod:`taltoolkit.collectives`,
which every layer imports; they are re-exported here for code written against this module.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from taltoolkit import collectives
from taltoolkit.collectives import *  # noqa: F403 - re-exported: every collective, listed once in collectives.__all__

__all__ = [*collectives.__all__, "cleanup", "init_distributed", "resolve_device"]


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
