"""engine.distributed's global-batch helpers in two gloo processes, against one process.

The gradient rule: every rank computes the loss on the gathered global batch and the backward
sums gradients over ranks; after DDP's averaging (emulated here: all-reduce / W) each rank
must hold the single-process gradient of the same loss on the concatenated batch.
"""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from taltoolkit.engine import distributed as du

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

D = 4
ROWS = (3, 1)  # uneven shards: rank 0 holds 3 rows, rank 1 one


def _inputs() -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(D, generator=g, dtype=torch.float64)
    a = [torch.randn(n, D, generator=g, dtype=torch.float64) for n in ROWS]
    v = torch.randn(D, generator=g, dtype=torch.float64)
    return w, a, v


def _set_loss(rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(rows @ v, 0) + rows.pow(2).mean()  # depends on the whole set


def _losses(w: torch.Tensor, a: list[torch.Tensor], v: torch.Tensor, gathered: bool) -> dict[str, torch.Tensor]:
    """Each helper's loss; with ``gathered`` the rank's rows go through the helpers."""
    rows = a[du.rank()] * w if gathered else torch.cat(a) * w  # (N, D)
    everyone = du.all_gather_rows_with_grad(rows) if gathered else rows
    sums = du.all_reduce_sum_with_grad(rows.sum(0)) if gathered else rows.sum(0)
    per_row = rows @ v
    return {
        "gather": _set_loss(everyone, v),
        "reduce": torch.log1p(sums.pow(2)).sum(),
        "mean": du.global_mean(per_row) if gathered else per_row.mean(),
    }


def _worker(r: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=r, world_size=2)
    w, a, v = _inputs()
    result = {"rows": du.all_gather_rows(a[r]).tolist(),
              "shards": du.shard_and_gather(list(range(5)), lambda part: [10 * x for x in part])}
    for name, loss in _losses(w, a, v, gathered=True).items():
        w_r = w.clone().requires_grad_(True)
        loss = _losses(w_r, a, v, gathered=True)[name]
        loss.backward()
        grad = w_r.grad.clone()
        dist.all_reduce(grad)
        result[name] = (float(du.all_reduce_sum(loss.detach().reshape(1))) / 2, (grad / 2).tolist())  # DDP's average
    with open(f"{out}.{r}", "wb") as f:
        pickle.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


def test_helpers_match_one_process(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_worker, args=(init, str(tmp_path / "out")), nprocs=2, start_method="spawn")
    ranks = [pickle.loads((tmp_path / f"out.{r}").read_bytes()) for r in (0, 1)]
    w, a, v = _inputs()
    assert ranks[0]["rows"] == ranks[1]["rows"] == torch.cat(a).tolist()  # rank order, uneven sizes
    assert ranks[0]["shards"] == ranks[1]["shards"] == [0, 10, 20, 30, 40]
    for name in ("gather", "reduce", "mean"):
        w1 = w.clone().requires_grad_(True)
        loss = _losses(w1, a, v, gathered=False)[name]
        loss.backward()
        for res in ranks:
            got_loss, got_grad = res[name]
            assert got_loss == pytest.approx(float(loss), rel=1e-12), name
            torch.testing.assert_close(torch.tensor(got_grad, dtype=torch.float64), w1.grad, rtol=1e-10, atol=1e-12,
                                       msg=name)
