"""High Actionness snippet Selection (HAS, COPL Sec. 3.2, Eq. 1-5).

Plain tensor functions: they take any localizer's class-specific attention ``A_cs`` and
class-agnostic attention ``A_ca`` of one video (``(T,)`` each, values in [0, 1]) and return
the attention that aggregates the video's global feature for clustering.

- Eq. 1: binarize each branch at its median (a snippet is "high" when strictly above it).
- Eq. 2: keep the two-branch mean ``A_c = (A_cs + A_ca) / 2`` where *both* branches are high.
- Eq. 3: keep only the top ``k = max(1, floor(T / gamma))`` of what survived.
- Eq. 4: the voting function smooths the result over training epochs (:func:`vote`).
- Eq. 5: ``F = L2Norm(X^T A^HAS)`` (:func:`global_video_feature`).

``branch`` selects the filter of Table 3: ``"both"`` (HAS), ``"cs"`` / ``"ca"`` (the filter on a
single branch, lines 2-3: binarize and rank that branch's own attention) and ``"none"`` (line 1,
"w/o filter": the unfiltered class-agnostic attention, as earlier UTAL methods aggregate).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

HAS_BRANCHES = ("both", "cs", "ca", "none")

__all__ = ["HAS_BRANCHES", "above_median", "has_attention", "vote", "global_video_feature"]


def above_median(a: Tensor) -> Tensor:
    """Eq. 1: ``a > median(a)`` along the last axis (median of an even count = mean of the middle two,
    as numpy's). Shapes: (..., T) -> (..., T) bool."""
    med = torch.quantile(a.float(), 0.5, dim=-1, keepdim=True).to(a.dtype)  # (..., 1)
    return a > med


def has_attention(a_cs: Tensor, a_ca: Tensor, gamma: float = 20.0, branch: str = "both") -> Tensor:
    """HAS attention of one video, Eq. 1-3 (before voting). Shapes: (T,), (T,) -> (T,).

    ``gamma`` sets ``k = max(1, floor(T / gamma))`` (20 THUMOS14, 2 ActivityNet1.2, Sec. 4.1).
    If no snippet passes the filter (T = 1, or a constant attention, so nothing is strictly
    above the median) the top-k of the unfiltered values is used instead, so the video still
    gets a feature; this fallback is ours, the paper does not discuss the case.
    """
    if branch not in HAS_BRANCHES:
        raise ValueError(f"HAS branch={branch!r}; choose one of {HAS_BRANCHES} (Table 3)")
    if a_cs.shape != a_ca.shape or a_cs.dim() != 1:
        raise ValueError(f"a_cs and a_ca must both have shape (T,), got {tuple(a_cs.shape)} and {tuple(a_ca.shape)}")
    if gamma <= 0:
        raise ValueError(f"gamma={gamma} must be > 0 (k = max(1, floor(T / gamma)), Eq. 3)")
    if branch == "none":
        return a_ca.clone()  # Table 3 line 1: unfiltered class-agnostic attention
    t = a_cs.shape[0]
    if branch == "both":
        values = (a_cs + a_ca) / 2  # A_c
        keep = above_median(a_cs) & above_median(a_ca)  # Eq. 2: high in both branches
    else:  # single-branch filter (Table 3 lines 2-3)
        values = a_cs if branch == "cs" else a_ca
        keep = above_median(values)
    filtered = torch.where(keep, values, torch.zeros_like(values))  # A_c^f, Eq. 2
    if not bool(keep.any()):
        filtered = values  # fallback described in the docstring
    k = max(1, int(t // gamma))  # Eq. 3
    top = filtered.topk(min(k, t)).indices  # A_c^{f,Desc}[:k]
    out = torch.zeros_like(values)
    out[top] = filtered[top]
    return out


def vote(previous: Tensor | None, current: Tensor, alpha: float) -> Tensor:
    """Voting function, Eq. 4, as a running sum: ``alpha * previous + current``. Shapes: (T,) -> (T,).

    After epochs ``0..E`` this equals ``sum_k alpha^(E - k) A^HAS_k``: the newest epoch weighs 1
    and older ones decay by ``alpha`` per epoch. Eq. 4 as printed (``sum_k alpha^k A^HAS_k``)
    would instead weigh the *first* epoch most and make late epochs vanish, which contradicts
    "alpha denotes the decay rate"; we read it as the decaying running sum (docs/methods/copl.md).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1] (decay rate of the voting function, Eq. 4)")
    if previous is None:
        return current.clone()
    if previous.shape != current.shape:
        raise ValueError(f"vote: previous has shape {tuple(previous.shape)}, current {tuple(current.shape)}")
    return alpha * previous + current


def global_video_feature(features: Tensor, attention: Tensor, eps: float = 1e-12) -> Tensor:
    """Eq. 5: ``F = L2Norm(X^T A)``. Shapes: features (T, D), attention (T,) -> (D,).

    The attention is not normalised first: the L2 norm removes its scale.
    """
    if features.dim() != 2 or attention.shape != features.shape[:1]:
        raise ValueError(f"features (T, D) and attention (T,) expected, got {tuple(features.shape)}, {tuple(attention.shape)}")
    f = features.transpose(0, 1) @ attention.to(features.dtype)  # (D,)
    return f / f.norm().clamp_min(eps)
