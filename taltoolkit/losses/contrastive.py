"""APL's Action-aware Contrastive Pre-training (ACP, Sec. 3.3): set-based InfoNCE and k-means.

- :func:`set_infonce`: Eq. 11 -- for every anchor ``f_i`` and every positive ``f_j`` (same
  label, ``j != i``), ``-log(e^{s_ij} / (e^{s_ij} + sum_{k in N_i} e^{s_ik}))`` with ``s`` the
  cosine similarity over the temperature, averaged over the ``N_c`` (anchor, positive) pairs.
- :func:`kmeans`: Lloyd's k-means with k-means++ seeding (torch, the caller's device and the
  global torch RNG, which the engine seeds and checkpoints), giving ACP its unsupervised labels.
- :func:`sample_partition_frames`: one random step from each of ``n`` equal partitions of a
  video's real steps (ACP's frame sampling).
- :func:`pyramid_to_input`: upsample every pyramid level to the input length and concatenate
  along the feature dimension (ACP's representation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def set_infonce(features: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Eq. 11 over one set: features (N, F), labels (N,) -> scalar (0 when no positive pair).

    ``P_i`` excludes the anchor itself (its similarity with itself is 1 by construction and
    teaches nothing); ``N_i`` is every feature with another label. An anchor without negatives
    contributes ``-log(1) = 0`` for each of its positives.
    """
    if temperature <= 0:
        raise ValueError(f"the ACP temperature must be > 0, got {temperature}")
    n = features.shape[0]
    if n < 2:
        return features.sum() * 0.0
    f = F.normalize(features.float(), dim=-1)
    s = f @ f.T / temperature  # (N, N)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    pos = same & ~eye
    neg = ~same
    lse_neg = torch.logsumexp(s.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)  # (N, 1), -inf if none
    pair = torch.logaddexp(s, lse_neg) - s  # (N, N): -log(e^s_ij / (e^s_ij + sum_neg))
    n_c = pos.sum()
    if int(n_c) == 0:
        return features.sum() * 0.0
    return pair[pos].sum() / n_c


@torch.no_grad()
def kmeans(x: Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """Cluster labels (N,) of x (N, D) into ``min(k, N)`` clusters (k-means++ seeding, Lloyd).

    The seeding draws come from ``generator`` (a CPU generator; the global RNG when None).
    """
    n = x.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    k = max(1, min(int(k), n))
    x = x.float()
    centres = x[int(torch.randint(n, (1,), generator=generator))][None]  # (1, D)
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).pow(2).min(1).values  # (N,)
        if float(d2.sum()) <= 0:
            pick = int(torch.randint(n, (1,), generator=generator))
        else:
            pick = int(torch.multinomial(d2.cpu(), 1, generator=generator))
        centres = torch.cat([centres, x[pick][None]])
    labels = torch.cdist(x, centres).argmin(1)
    for _ in range(iters):
        for c in range(k):
            members = labels == c
            if bool(members.any()):
                centres[c] = x[members].mean(0)
        new = torch.cdist(x, centres).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def sample_partition_frames(length: int, n: int, device: torch.device,
                            generator: torch.Generator | None = None) -> Tensor:
    """Indices (min(n, length),): one uniformly drawn step in each of n equal parts of [0, length).

    The draws come from ``generator`` (a CPU generator; the global RNG when None).
    """
    n = min(int(n), int(length))
    if n <= 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    edges = torch.div(torch.arange(n + 1) * length, n, rounding_mode="floor")  # (n + 1,)
    lo, width = edges[:-1], (edges[1:] - edges[:-1]).clamp(min=1)
    idx = lo + (torch.rand(n, generator=generator) * width).long().clamp(max=width - 1)
    return idx.to(device)


def pyramid_to_input(levels: list[Tensor], length: int, scale_factor: int) -> Tensor:
    """Per-level (B, T_l, F) features -> (B, length, L * F): level ``l`` step ``j`` covers
    input steps ``[j s^l, (j + 1) s^l)``, so it is repeated ``s^l`` times (nearest upsampling)."""
    out = []
    for lvl, f in enumerate(levels):
        rep = scale_factor**lvl
        up = f.repeat_interleave(rep, dim=1) if rep > 1 else f
        out.append(up[:, :length])
    return torch.cat(out, -1)
