"""Snippet clustering (SCC) and cluster classification (CCC) pieces of CASE (Eq. 3-6, 11, 13).

Pure tensor functions. The pseudo-labels themselves come from
:func:`taltoolkit.pseudo.sinkhorn.sinkhorn_labels`; these functions build its inputs (the rank
prior of Eq. 11, the marginal of Eq. 13, the cluster-vs-F&B logits of Eq. 4-5) and the soft
cross-entropy that Eq. 3 and Eq. 6 apply to its outputs.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


Tensor = torch.Tensor

__all__ = [
    "soft_ce",
    "ascending_ranks",
    "rank_gaussian_prior",
    "cluster_prototypes",
    "cluster_fb_logits",
    "fb_marginal",
]


def soft_ce(targets: Tensor, logits: Tensor) -> Tensor:
    """Soft-label cross-entropy, L_S of Eq. 3 (rows = snippets) and L_C of Eq. 6 (rows = clusters).

    Shapes: targets (N, K) (rows sum to 1, e.g. Sinkhorn labels), logits (N, K) -> scalar
    ``mean_n -sum_k t_nk log_softmax(logits)_nk``. Gradient reaches ``logits`` only: the targets
    are detached, since self-labels must not be pulled towards the prediction.
    """
    return -(targets.detach() * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def ascending_ranks(scores: Tensor) -> Tensor:
    """0-based rank of every entry when sorted ascending (ties: original order). (N,) -> (N,) long."""
    order = torch.sort(scores, stable=True).indices  # (N,) positions in ascending order
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=scores.device)
    return ranks


def rank_gaussian_prior(
    attention: Tensor,
    cluster_fg: Tensor,
    sigma: float = 10.0,
    mask: Tensor | None = None,
    log: bool = False,
    normalize_rows: bool = False,
    positions: str = "rank",
) -> Tensor:
    """Rank prior \\hat Q^S of SCC (CASE Eq. 11): ``N(rank_n / N; Q^C_{k,fg}, sigma^2)``.

    Shapes: attention (N,) fused foreground probabilities P^A; cluster_fg (K,) = Q^C[:, fg];
    mask (N,) bool, True = real snippet -> (N, K) prior (or its log with ``log=True``, which
    cannot underflow for a small sigma).

    Snippets are ranked by attention in ascending order with *true* ranks (0 = least
    foreground, N - 1 = most), as the paper says; the public code feeds argsort indices
    instead, which are not ranks. ``rank_n / N`` lies in [0, 1), the range of Q^C_{k,fg}.
    With the code's sigma = 10 the prior is nearly flat over that range (its log varies by at
    most 1 / (2 sigma^2) = 0.005); a sigma around 0.1-0.3 makes it informative.

    Padded snippets (mask False) are left out of the ranking (N counts real snippets) and get
    a uniform row. ``normalize_rows`` makes every row a distribution over the K clusters; it
    only changes the first Sinkhorn iterations, not the fixed point (per-row factors are
    absorbed by the row scaling), so the default keeps Eq. 11 literally, as Algorithm 1 does.

    ``positions="argsort"`` reproduces the public code instead: snippet n's position is
    ``1 - (argsort(-P^A)[n] + 1) / N`` (an index of the sorted order, not n's rank).
    """
    if positions not in ("rank", "argsort"):
        raise ValueError(f"positions must be 'rank' or 'argsort', got {positions!r}")
    n = attention.shape[0]
    cluster_fg = cluster_fg.to(attention)
    if positions == "argsort":
        if mask is not None:
            raise ValueError("positions='argsort' (the public code's prior) takes no mask")
        desc = torch.argsort(-attention.detach()).to(attention.dtype)  # (N,) not ranks: see above
        pos = (n - 1 - desc) / max(n, 1)  # (N,) the code's |(idx + 1) / N - Q^C_bg| as |pos - Q^C_fg|
    elif mask is None:
        pos = ascending_ranks(attention.detach()).to(attention.dtype) / max(n, 1)  # (N,)
    else:
        mask = mask.to(torch.bool)
        n_valid = int(mask.sum())
        # Padded snippets sort last (+inf), so real snippets take ranks 0..n_valid-1.
        filled = attention.detach().masked_fill(~mask, float("inf"))
        pos = ascending_ranks(filled).to(attention.dtype) / max(n_valid, 1)  # (N,)
    diff = pos.unsqueeze(1) - cluster_fg.unsqueeze(0)  # (N, K)
    log_prior = -diff.pow(2) / (2 * sigma**2) - math.log(sigma * math.sqrt(2 * math.pi))
    if mask is not None:
        log_prior = log_prior.masked_fill(~mask.unsqueeze(1), 0.0)  # uniform row for padding
    if normalize_rows:
        log_prior = log_prior - torch.logsumexp(log_prior, dim=1, keepdim=True)
    return log_prior if log else log_prior.exp()


def cluster_prototypes(assign: Tensor, emb: Tensor, sum_over: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Prototypes (CASE Eq. 4): assignment-weighted mean embedding per cluster, L2-normalised.

    Shapes: assign (N, K) soft or hard assignments (Q^S, or [Q^A, 1 - Q^A] for the F&B
    prototypes), emb (N, D) -> (K, D) unit rows. The weighted mean's denominator of Eq. 4 is a
    positive per-cluster scale that the normalisation removes, so it is skipped (an empty
    cluster then gives a zero vector instead of 0 / 0). Gradient flows into ``emb``.
    ``sum_over`` totals the weighted sums over more snippets than these (torchrun's ranks:
    ``engine.distributed.all_reduce_sum_with_grad``).
    """
    sums = assign.to(emb.dtype).transpose(0, 1) @ emb  # (K, D)
    return F.normalize(sum_over(sums) if sum_over is not None else sums, dim=-1)


def cluster_fb_logits(cluster_protos: Tensor, fb_protos: Tensor, rho: float = 10.0) -> Tensor:
    """Cluster-to-F&B logits (CASE Eq. 5 before the softmax): ``rho * cos(E^S_k, E^A_i)``.

    Shapes: cluster_protos (K, D), fb_protos (2, D) (foreground first) -> (K, 2). rho = 10 is
    the public code's temperature. Inputs are re-normalised, so unnormalised prototypes work.
    """
    return rho * F.normalize(cluster_protos, dim=-1) @ F.normalize(fb_protos, dim=-1).transpose(0, 1)


def fb_marginal(q_a: Tensor, mask: Tensor | None = None, sum_over: Callable[[Tensor], Tensor] | None = None
                ) -> Tensor:
    """Column marginal beta^C of CCC (CASE Eq. 13): ``[mean Q^A, mean (1 - Q^A)]``.

    Shapes: q_a (N,) foreground pseudo-labels (any shape works; it is flattened), mask same
    shape, True = counted -> (2,) summing to 1. ``sum_over`` totals the sums over more
    snippets than these (torchrun's ranks: ``engine.distributed.all_reduce_sum``).
    """
    q = q_a.detach().reshape(-1).float()
    w = torch.ones_like(q) if mask is None else mask.reshape(-1).to(q.dtype)
    totals = torch.stack([(q * w).sum(), w.sum()])
    fg, n = sum_over(totals) if sum_over is not None else totals
    fg = fg / n.clamp_min(1e-12)
    return torch.stack([fg, 1 - fg]).to(q_a.dtype if q_a.is_floating_point() else torch.float32)
