"""Sinkhorn-Knopp self-labelling (CASE, Liu et al. ICCV 2023, Eq. 7-13 and Algorithm 1).

One solver, written once in the log domain, serves two front ends:

* :func:`sinkhorn_labels` - pseudo-labels ``Q`` (N, K) whose rows sum to 1 (Algorithm 1's
  ``Q.t() * N``), from logits, an optional multiplicative prior ``\\hat Q`` (Eq. 12) and
  optional marginals (``beta`` of Eq. 8/9/13).
* :func:`sinkhorn_plan` - the generic entropic OT plan for a cost matrix and marginals, the
  quantity POT's ``ot.sinkhorn(a, b, M, reg)`` returns.

Why log domain: ``exp(L / eps)`` overflows float32 as soon as ``L / eps > 88`` (eps = 0.05 and
logits of 5 are enough). Keeping ``log Q`` and normalising with ``logsumexp`` gives exactly the
same iterates as the plain algorithm without ever forming the unnormalised kernel.

Representation: the solver keeps the *row-stochastic* assignment ``Q`` (each row sums to 1);
the transport plan is ``diag(a) Q``. A row with weight ``a_n = 0`` (e.g. a padded snippet) then
still has a well-defined assignment but contributes nothing to the column marginals.
"""
from __future__ import annotations

import math

import torch

from taltoolkit import collectives


Tensor = torch.Tensor

__all__ = ["sinkhorn_labels", "sinkhorn_plan", "sinkhorn_log"]


def _log_marginal(m: Tensor | None, size: int, like: Tensor, batch_shape: torch.Size) -> Tensor:
    """log of a marginal, shaped (*batch, size); uniform when ``m`` is None.

    Only relative values matter to the returned row-stochastic ``Q`` (every column step is
    followed by a row normalisation that removes a global scale), so marginals are used as
    given and need not sum to 1.
    """
    if m is None:
        return torch.full((*batch_shape, size), -math.log(size), dtype=like.dtype, device=like.device)
    m = m.to(dtype=like.dtype, device=like.device)
    if m.shape[-1] != size:
        raise ValueError(f"marginal has {m.shape[-1]} entries, expected {size}")
    if (m < 0).any():
        raise ValueError("marginals must be non-negative")
    return m.log().expand(*batch_shape, size)


def _global_logsumexp_rows(log_q: Tensor, log_a: Tensor, distributed: bool) -> Tensor:
    """log sum_n a_n Q_nk over the snippet dim (-2), all-reduced over ranks when asked.

    Shapes: log_q (*, N, K), log_a (*, N) -> (*, K).
    """
    local = torch.logsumexp(log_a.unsqueeze(-1) + log_q, dim=-2)  # (*, K)
    if not (distributed and collectives.is_distributed()):
        return local
    # Sum of exp across ranks in a stable way: shift by the global max, sum, shift back
    # (SwAV sums the linear-domain matrix; doing it on logs keeps the log-domain stability).
    gmax = collectives.all_reduce_max(local)
    gmax = torch.where(torch.isfinite(gmax), gmax, torch.zeros_like(gmax))  # all ranks -inf: column empty
    total = collectives.all_reduce_sum((local - gmax).exp())
    return total.log() + gmax


def sinkhorn_log(
    log_kernel: Tensor,
    log_a: Tensor,
    log_b: Tensor,
    n_iter: int,
    distributed: bool = False,
) -> Tensor:
    """The one Sinkhorn-Knopp loop. Returns log of the row-stochastic assignment ``Q``.

    Shapes: log_kernel (*, N, K) (= L / eps + log prior, or -C / reg), log_a (*, N), log_b (*, K).
    Each iteration is Algorithm 1's loop body read on the (N, K) matrix:

    1. column step (Alg. 1 lines 21-22): scale cluster ``k`` so that its mass
       ``sum_n a_n Q_nk`` equals ``b_k``;
    2. row step (lines 23-24): renormalise every row to sum to 1 (i.e. row mass ``a_n``).

    Algorithm 1 works on the transposed (K, N) matrix, where step 1 is its ``Q /= Q.sum(dim=1);
    Q *= Beta`` ("rows", i.e. clusters) and step 2 its ``Q /= Q.sum(dim=0); Q /= N`` ("columns",
    i.e. snippets); the order is the same. Ending on the snippet step means the *snippet*
    marginal (each snippet's labels summing to 1, rows of the (N, K) result) is exact on
    return, while the cluster marginal ``b`` holds only up to the convergence of the iteration
    (after 3 iterations it is typically close, not exact).

    With ``distributed=True`` the column masses (the only sums over N) are all-reduced, so
    the ranks together solve the problem of the global batch; ``log_a`` is then each rank's
    slice of the global row weights.
    """
    log_q = log_kernel
    for _ in range(n_iter):
        col = _global_logsumexp_rows(log_q, log_a, distributed)  # (*, K)
        # A column whose current mass is zero cannot be rescaled; leave it at zero instead of
        # producing -inf - -inf = NaN. A column whose target is zero becomes zero.
        shift = torch.where(torch.isfinite(col), log_b - col, torch.zeros_like(col))
        log_q = log_q + shift.unsqueeze(-2)
        row = torch.logsumexp(log_q, dim=-1, keepdim=True)  # (*, N, 1)
        # A row with no admissible column (all -inf) stays all-zero rather than NaN.
        log_q = log_q - torch.where(torch.isfinite(row), row, torch.zeros_like(row))
    return log_q


@torch.no_grad()
def sinkhorn_labels(
    logits: Tensor,
    epsilon: float = 0.5,
    n_iter: int = 3,
    row_marginal: Tensor | None = None,
    col_marginal: Tensor | None = None,
    prior: Tensor | None = None,
    distributed: bool = False,
    log_prior: Tensor | None = None,
) -> Tensor:
    """Sinkhorn-Knopp pseudo-labels (CASE Eq. 10 / Eq. 12, Algorithm 1): ``Q ∝ exp(L / eps) * prior``.

    Shapes: logits (N, K) or (B, N, K); row_marginal (N,) / (B, N) ``alpha`` (default uniform
    1/N); col_marginal (K,) / (B, K) ``beta`` (default uniform 1/K, Eq. 9; CASE's CCC passes
    beta^C of Eq. 13); prior (N, K) / (B, N, K) the multiplicative ``\\hat Q`` of Eq. 11-12, or
    ``log_prior`` its logarithm (use it when the prior would underflow, e.g. a small sigma).

    Returns Q with the shape of ``logits``, rows summing to 1 (``N *`` transport plan for the
    uniform alpha) and columns summing to ``N * beta`` up to convergence; see
    :func:`sinkhorn_log` for why the rows are the exact marginal. No gradient.

    Defaults: the public CASE code computes ``exp(L * 20 / 10)`` (eps 20 over the temperature
    rho 10), i.e. epsilon = 0.5 here, with Algorithm 1's 3 iterations.
    """
    if prior is not None and log_prior is not None:
        raise ValueError("give prior or log_prior, not both")
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be (N, K) or (B, N, K), got {tuple(logits.shape)}")
    out_dtype = logits.dtype
    # Half precision is too coarse for the iteration; run in at least float32.
    work = logits.detach().to(torch.promote_types(logits.dtype, torch.float32))
    n, k = work.shape[-2:]
    batch = work.shape[:-2]
    log_kernel = work / epsilon
    if prior is not None:
        log_kernel = log_kernel + prior.detach().to(work).log()
    elif log_prior is not None:
        log_kernel = log_kernel + log_prior.detach().to(work)
    log_a = _log_marginal(row_marginal, n, work, batch)
    log_b = _log_marginal(col_marginal, k, work, batch)
    log_q = sinkhorn_log(log_kernel, log_a, log_b, n_iter, distributed=distributed)
    return log_q.exp().to(out_dtype)


def sinkhorn_plan(cost: Tensor, a: Tensor, b: Tensor, reg: float, n_iter: int = 1000) -> Tensor:
    """Entropic OT plan ``argmin_P <P, C> - reg H(P)`` s.t. ``P 1 = a``, ``P^T 1 = b``.

    The same solver as :func:`sinkhorn_labels` with kernel ``exp(-C / reg)``; returns the plan
    ``diag(a) Q`` (N, K) (batched shapes (B, N, K), (B, N), (B, K) work too), comparable to
    ``ot.sinkhorn(a, b, C, reg)``. ``a`` and ``b`` should have equal totals. Differentiable
    through the unrolled iterations (no ``no_grad`` here).
    """
    n, k = cost.shape[-2:]
    batch = cost.shape[:-2]
    log_a = _log_marginal(a, n, cost, batch)
    log_b = _log_marginal(b, k, cost, batch)
    log_q = sinkhorn_log(-cost / reg, log_a, log_b, n_iter)
    return (log_q + log_a.unsqueeze(-1)).exp()
