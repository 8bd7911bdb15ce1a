"""Process-group helpers: the same code runs alone or under ``torchrun --nproc_per_node=N``."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


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


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj):  # noqa: ANN001, ANN201 - any picklable object
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks of a torchrun job, as a detached copy (a plain copy when run alone).

    For counts and normalisers that must cover the global batch (ActionFormer's positives,
    logged losses): each rank sees only its share of it.
    """
    x = x.detach().clone()
    if is_distributed():
        dist.all_reduce(x)
    return x


def all_gather_tensor(x: torch.Tensor) -> torch.Tensor:
    """Concatenate equally-shaped tensors from every rank along dim 0 (no gradient)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def cleanup() -> None:
    """Leave the process group. Exiting with it alive can abort the process (gloo's threads
    are still joinable at interpreter shutdown: "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank leaves while another still has a collective in flight
        dist.destroy_process_group()
