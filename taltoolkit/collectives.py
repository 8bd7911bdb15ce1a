"""Collectives over the ranks of a torchrun job, and no-ops when a process runs alone.

The one place every layer (models, losses, pseudo-label makers, methods, engine) takes its
rank, world size, gathers and reductions from, so that a module low in the stack never
imports the engine. Joining and leaving the process group (and choosing the device) is the
engine's: :mod:`taltoolkit.engine.distributed`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_gather_rows",
    "all_gather_rows_with_grad",
    "all_gather_rows_with_start",
    "all_reduce_max",
    "all_reduce_sum",
    "all_reduce_sum_with_grad",
    "barrier",
    "broadcast_object",
    "global_mean",
    "global_share",
    "is_distributed",
    "is_main",
    "rank",
    "shard_and_gather",
    "world_size",
]


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


def shard_and_gather(items: list, fn, main_only: bool = False):  # noqa: ANN001, ANN201 - any list, picklable results
    """``fn(items)`` computed in shards: rank r runs ``fn`` on ``items[r::W]``, and every rank
    gets the whole list of results in the order of ``items`` (``fn`` returns one result per
    item; results are pickled across ranks, so keep them on the CPU). Alone: ``fn(items)``.
    With ``main_only`` only rank 0 receives them (the others get None).

    For inference every rank needs (COPL's clustering, APL's pseudo-labelling: every rank) or
    that rank 0 reports (evaluation: ``main_only``): W ranks share the work instead of each
    repeating it. Every rank must call it.
    """
    if not is_distributed():
        return fn(items)
    r, w = rank(), world_size()
    mine = fn(items[r::w]) if items[r::w] else []
    if len(mine) != len(items[r::w]):
        raise RuntimeError(f"shard_and_gather: {len(mine)} results for {len(items[r::w])} items")
    parts: list | None = [None] * w if (r == 0 or not main_only) else None
    if main_only:
        dist.gather_object(mine, parts, dst=0)
        if r != 0:
            return None
    else:
        dist.all_gather_object(parts, mine)
    assert parts is not None
    out: list = [None] * len(items)
    for src, part in enumerate(parts):
        out[src::w] = part
    return out


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks of a torchrun job, as a detached copy (a plain copy when run alone).

    For counts and normalisers that must cover the global batch (ActionFormer's positives,
    logged losses): each rank sees only its share of it.
    """
    x = x.detach().clone()
    if is_distributed():
        dist.all_reduce(x)
    return x


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """``x``'s elementwise maximum over the ranks, as a detached copy (a plain copy when run alone)."""
    x = x.detach().clone()
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def global_mean(values: Tensor) -> Tensor:
    """This rank's share of the mean of ``values`` over every rank's elements (its plain mean
    when run alone; 0, attached to the graph, when there are none anywhere).

    For per-item losses whose count differs between ranks (RMGCL's anchors): ``sum_r * W /
    n_global``. DDP averages the ranks' gradients and the logger the ranks' values, so both
    equal one process's mean over the global batch.
    """
    return values.sum() * global_share(values.numel(), values.device) / max(values.numel(), 1)


def global_share(count: int, device: torch.device | str = "cpu") -> Tensor:
    """``count * W / (sum of count over the ranks)``: the factor that turns a rank's mean over
    its ``count`` items into its share of the mean over the global batch (see
    :func:`global_mean`); 1 when run alone (0 for count 0). ``device``: NCCL reduces CUDA tensors only."""
    total = all_reduce_sum(torch.tensor(float(count), device=device))
    return count * world_size() / total.clamp_min(1)


def all_gather_rows(x: Tensor) -> Tensor:
    """Every rank's ``x`` (N_r, ...) concatenated in rank order along dim 0 (N_r may differ).

    No gradient; for labels, counts and the inputs of batch statistics (k-means, ranks).
    """
    if not is_distributed():
        return x
    return _gather_rows(x)[0]


def all_gather_rows_with_start(x: Tensor) -> tuple[Tensor, int]:
    """:func:`all_gather_rows` and where this rank's rows start in the result (0 alone)."""
    if not is_distributed():
        return x, 0
    out, counts = _gather_rows(x)
    return out, sum(counts[: rank()])


def all_gather_rows_with_grad(x: Tensor) -> Tensor:
    """:func:`all_gather_rows` whose gradient reaches this rank's rows.

    For a batch statistic (a contrastive set, a prototype) that every rank computes alike over
    the global batch: the backward sums the incoming gradient over the ranks, so each rank's
    rows get the whole loss's gradient times the world size, which DDP's gradient averaging
    divides back out -- the same update as one process with the global batch.
    """
    if not is_distributed():
        return x
    return _GatherRowsWithGrad.apply(x)


def all_reduce_sum_with_grad(x: Tensor) -> Tensor:
    """``x`` summed over the ranks, with the gradient rule of :func:`all_gather_rows_with_grad`
    (for sums over the global batch: CASE's prototypes)."""
    if not is_distributed():
        return x
    return _AllReduceSumWithGrad.apply(x)


def _gather_rows(x: Tensor) -> tuple[Tensor, list[int]]:
    x = x.contiguous()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    longest = max(counts)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)], 0), counts


class _GatherRowsWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001 - autograd context
        out, counts = _gather_rows(x.detach())
        ctx.start, ctx.count = sum(counts[: rank()]), counts[rank()]
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.start : ctx.start + ctx.count]


class _AllReduceSumWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001
        out = x.detach().contiguous().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad
