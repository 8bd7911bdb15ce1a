"""Sinkhorn-Knopp: against POT, against a plain transcription of CASE's Algorithm 1, stability, batching, ranks."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from taltoolkit.pseudo.sinkhorn import sinkhorn_labels, sinkhorn_plan


def algorithm1(L: torch.Tensor, Q_hat=None, Beta=None, n_iter: int = 3, eps: float = 0.5) -> torch.Tensor:
    """CASE Algorithm 1 transcribed line by line (linear domain, (K, N) layout)."""
    N, K = L.size()
    Q_hat = 1 / K if Q_hat is None else Q_hat
    Beta = torch.full((K,), 1 / K, dtype=L.dtype) if Beta is None else Beta
    Q = torch.exp(L / eps)
    Q = (Q * Q_hat).T  # (K, N)
    Q /= Q.sum()
    for _ in range(n_iter):
        Q /= Q.sum(dim=1, keepdim=True)
        Q = Q * Beta[:, None]
        Q /= Q.sum(dim=0, keepdim=True)
        Q /= N
    return Q.t() * N


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("reg", [1.0, 0.2])
def test_plan_matches_pot(seed: int, reg: float) -> None:
    rng = np.random.default_rng(seed)
    n, k = 9, 5
    cost = rng.random((n, k))
    a = rng.random(n) + 0.1
    b = rng.random(k) + 0.1
    a, b = a / a.sum(), b / b.sum()
    import ot  # POT, a dependency; imported here because it takes seconds
    ref = ot.sinkhorn(a, b, cost, reg, numItermax=20000, stopThr=1e-14)
    plan = sinkhorn_plan(torch.from_numpy(cost), torch.from_numpy(a), torch.from_numpy(b), reg, n_iter=300)
    np.testing.assert_allclose(plan.numpy(), ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(plan.sum(1).numpy(), a, atol=1e-12)  # rows exact (last step)
    np.testing.assert_allclose(plan.sum(0).numpy(), b, atol=1e-8)  # columns at convergence


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_prior", [False, True])
@pytest.mark.parametrize("with_beta", [False, True])
def test_labels_equal_algorithm1(seed: int, with_prior: bool, with_beta: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    n, k = 12, 4
    logits = torch.randn(n, k, generator=g, dtype=torch.float64)
    prior = torch.rand(n, k, generator=g, dtype=torch.float64) + 0.05 if with_prior else None
    beta = torch.rand(k, generator=g, dtype=torch.float64) + 0.1 if with_beta else None
    beta = beta / beta.sum() if beta is not None else None
    for n_iter in (1, 3, 10):
        ref = algorithm1(logits, prior, beta, n_iter=n_iter, eps=0.5)
        q = sinkhorn_labels(logits, epsilon=0.5, n_iter=n_iter, prior=prior, col_marginal=beta)
        torch.testing.assert_close(q, ref, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(q.sum(1), torch.ones(n, dtype=torch.float64))


def test_ccc_shape_and_log_prior() -> None:
    # CCC: Q^C (K, 2) with beta^C; and a log prior is the same as its exp.
    g = torch.Generator().manual_seed(5)
    lc = torch.randn(16, 2, generator=g, dtype=torch.float64) * 3
    beta = torch.tensor([0.3, 0.7], dtype=torch.float64)
    torch.testing.assert_close(sinkhorn_labels(lc, col_marginal=beta), algorithm1(lc, Beta=beta))
    prior = torch.rand(16, 2, generator=g, dtype=torch.float64) + 0.01
    torch.testing.assert_close(sinkhorn_labels(lc, prior=prior), sinkhorn_labels(lc, log_prior=prior.log()))


def test_column_marginal_at_convergence() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 4, generator=g, dtype=torch.float64)
    beta = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    q = sinkhorn_labels(logits, n_iter=500, col_marginal=beta)
    torch.testing.assert_close(q.sum(0), 40 * beta, atol=1e-9, rtol=0)


def test_log_domain_stable_with_huge_logits() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 8, generator=g) * 1e4  # exp(logits / eps) overflows float32 (and float64)
    assert not torch.isfinite(algorithm1(logits.double(), n_iter=3)).all()
    for eps in (0.5, 1e-3):
        q = sinkhorn_labels(logits, epsilon=eps, n_iter=3, prior=torch.rand(64, 8, generator=g) + 1e-3)
        assert torch.isfinite(q).all()
        torch.testing.assert_close(q.sum(1), torch.ones(64))
    q16 = sinkhorn_labels(logits.half(), epsilon=0.05)
    assert q16.dtype == torch.float16 and torch.isfinite(q16).all()


def test_zero_marginal_entries() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 2, generator=g)
    q = sinkhorn_labels(logits, col_marginal=torch.tensor([0.0, 1.0]))  # no foreground at all
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q, torch.tensor([[0.0, 1.0]]).expand(10, 2))
    # A row of weight 0 (a padded snippet) leaves the other rows' labels unchanged.
    a = torch.ones(11)
    a[4] = 0
    extra = torch.cat([logits[:4], torch.randn(1, 2, generator=g) * 50, logits[4:]])
    q_pad = sinkhorn_labels(extra, row_marginal=a, n_iter=5)
    torch.testing.assert_close(torch.cat([q_pad[:4], q_pad[5:]]), sinkhorn_labels(logits, n_iter=5))
    torch.testing.assert_close(q_pad[4].sum(), torch.tensor(1.0))


def test_batched_equals_per_item() -> None:
    g = torch.Generator().manual_seed(2)
    b, n, k = 3, 10, 5
    logits = torch.randn(b, n, k, generator=g)
    prior = torch.rand(b, n, k, generator=g) + 0.1
    alpha = torch.rand(b, n, generator=g) + 0.1
    beta = torch.rand(b, k, generator=g) + 0.1
    qb = sinkhorn_labels(logits, n_iter=4, prior=prior, row_marginal=alpha, col_marginal=beta)
    for i in range(b):
        qi = sinkhorn_labels(logits[i], n_iter=4, prior=prior[i], row_marginal=alpha[i], col_marginal=beta[i])
        torch.testing.assert_close(qb[i], qi)
    cost = torch.rand(b, n, k, generator=g, dtype=torch.float64)
    pa, pb = alpha.double() / alpha.sum(1, keepdim=True), beta.double() / beta.sum(1, keepdim=True)
    plans = sinkhorn_plan(cost, pa, pb, 0.3, n_iter=50)
    for i in range(b):
        torch.testing.assert_close(plans[i], sinkhorn_plan(cost[i], pa[i], pb[i], 0.3, n_iter=50))


def test_no_gradient_through_labels() -> None:
    logits = torch.randn(6, 3, requires_grad=True)
    q = sinkhorn_labels(logits)
    assert not q.requires_grad and q.grad_fn is None


def _distributed_worker(rank: int, world: int, init_file: str, logits: torch.Tensor, prior: torch.Tensor,
                        out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = torch.arange(logits.shape[0]).chunk(world)[rank]
        q = sinkhorn_labels(logits[rows], n_iter=3, prior=prior[rows], distributed=True)
        torch.save(q, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_distributed_solves_the_global_batch() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(20, 4, generator=g) * 5
    prior = torch.rand(20, 4, generator=g) + 0.1
    # Fork (as DataLoader workers do) so the workers need not re-import torch and this module.
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory() as tmp:
        init_file, out = os.path.join(tmp, "init"), os.path.join(tmp, "q")
        procs = [ctx.Process(target=_distributed_worker, args=(r, 2, init_file, logits, prior, out)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        q = torch.cat([torch.load(f"{out}.{r}") for r in range(2)])
    torch.testing.assert_close(q, sinkhorn_labels(logits, n_iter=3, prior=prior))
    # Without the all-reduce each half would be balanced on its own: a different answer.
    local = torch.cat([sinkhorn_labels(logits[:10], prior=prior[:10]), sinkhorn_labels(logits[10:], prior=prior[10:])])
    assert not torch.allclose(local, q, atol=1e-4)
