"""Multiple-instance-learning losses of the two-branch WTAL baseline (CASE Sec. 3, Eq. 1-2).

Pure tensor functions: top-k snippet selection, the video-level cross-entropy (Eq. 1) and
the generalized binary cross-entropy that trains the attention branch (Eq. 2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


Tensor = torch.Tensor

__all__ = ["topk_count", "topk_mil_indices", "topk_mil_pool", "video_ce_loss", "generalized_bce"]


def topk_count(
    length: Tensor | int, k: int | None = None, ratio: float | None = None, rounding: str = "round",
    divisor: int | None = None,
) -> Tensor:
    """Snippets per class for sequences of the given valid length(s): ``k``, ``max(1, r(T * ratio))``
    or ``max(1, T // divisor)`` (ACM-Net's counts, in integers).

    ``rounding`` r is ``"round"`` or ``"floor"`` (the public CASE code's ``T // 8``).
    Clamped to the length, so a short video never has to select padded steps. Shapes:
    length () or (B,) -> same shape, long.
    """
    if sum(x is not None for x in (k, ratio, divisor)) != 1:
        raise ValueError("give exactly one of k, ratio or divisor")
    if rounding not in ("round", "floor"):
        raise ValueError(f"rounding must be 'round' or 'floor', got {rounding!r}")
    length = torch.as_tensor(length)
    if divisor is not None:
        if int(divisor) != divisor or divisor < 1:
            raise ValueError(f"top-k divisor {divisor} must be a positive integer (ACM-Net: T // 8, T // 3, T // 3)")
        count = (length.long() // int(divisor)).clamp_min(1)
    elif k is not None:
        count = torch.full_like(length, int(k))
    else:
        scaled = length.double() * ratio
        # The epsilon keeps floor(750 * 0.125) at 93 whatever the float error of the ratio.
        count = (torch.floor(scaled + 1e-9) if rounding == "floor" else torch.round(scaled)).long().clamp_min(1)
    return torch.minimum(count, length).clamp_min(0).long()


def topk_mil_indices(
    scores: Tensor,
    k: int | None = None,
    ratio: float | None = None,
    mask: Tensor | None = None,
    return_counts: bool = False,
    rounding: str = "round",
    divisor: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Indices of the top-k snippets per class (MIL of Eq. 1; also defines Q^A of Eq. 2).

    Shapes: scores (B, T, C); mask (B, T) bool, True = real step -> indices (B, k_max, C), long,
    sorted by decreasing score; with ``return_counts`` also counts (B,) = each video's own k.

    Padded steps are never selected. Without a mask, or when all videos have the same valid
    length, every video selects exactly k_max snippets and ``gather(...).mean(1)`` is the MIL
    mean. In a ragged batch a video with fewer valid steps has k_b < k_max: its extra slots
    repeat its own selection cyclically (still never a padded step, and scattering them into a
    0/1 map is unaffected), but a plain mean would then over-weight its first picks, so pool
    ragged batches with :func:`topk_mil_pool`.
    """
    b, t, c = scores.shape
    if mask is None:
        lengths = torch.full((b,), t, dtype=torch.long, device=scores.device)
    else:
        mask = mask.to(torch.bool)
        lengths = mask.sum(1)
        scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))  # padded steps rank last
    counts = topk_count(lengths, k=k, ratio=ratio, rounding=rounding, divisor=divisor)  # (B,)
    k_max = max(int(counts.max()), 1) if b else 1
    k_max = min(k_max, t)
    idx = scores.detach().topk(k_max, dim=1).indices  # (B, k_max, C)
    if mask is not None and bool((counts < k_max).any()):
        # Slot j of video b reads slot (j mod k_b): a repetition of the video's own picks.
        slot = torch.arange(k_max, device=scores.device)  # (k_max,)
        src = slot.unsqueeze(0) % counts.clamp_min(1).unsqueeze(1)  # (B, k_max)
        idx = torch.gather(idx, 1, src.unsqueeze(-1).expand(-1, -1, c))
    return (idx, counts) if return_counts else idx


def topk_mil_pool(values: Tensor, indices: Tensor, counts: Tensor | None = None) -> Tensor:
    """Mean of ``values`` over each video's own top-k snippets, per class (video logits of Eq. 1).

    Shapes: values (B, T, C) or (S, B, T, C) (streams share the indices); indices (B, k_max, C);
    counts (B,) from ``topk_mil_indices(..., return_counts=True)`` (None: all k_max slots count)
    -> (B, C) or (S, B, C).
    """
    idx = indices.expand(*values.shape[:-3], *indices.shape)  # (..., B, k_max, C)
    picked = torch.gather(values, -2, idx)  # (..., B, k_max, C)
    if counts is None:
        return picked.mean(-2)
    k_max = indices.shape[1]
    valid = torch.arange(k_max, device=values.device).unsqueeze(0) < counts.unsqueeze(1)  # (B, k_max)
    valid = valid.to(values.dtype).unsqueeze(-1)  # (B, k_max, 1)
    return (picked * valid).sum(-2) / counts.clamp_min(1).to(values.dtype).unsqueeze(-1)


def video_ce_loss(video_logits: Tensor, labels: Tensor) -> Tensor:
    """Video classification loss L_V (CASE Eq. 1): cross-entropy with L1-normalised multi-hot labels.

    Shapes: video_logits (B, C), labels (B, C) multi-hot -> scalar, mean over the batch.
    ``CE = -sum_c (y_c / |y|_1) log_softmax(logits)_c``; a video with no label contributes 0.
    """
    target = labels.to(video_logits.dtype)
    target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)  # (B, C)
    return -(target * F.log_softmax(video_logits, dim=-1)).sum(-1).mean()


def generalized_bce(prob: Tensor, target: Tensor, q: float = 0.7, mask: Tensor | None = None) -> Tensor:
    """Generalized binary cross-entropy L_A (CASE Eq. 2; Zhang & Sabuncu's L_q with gamma = q).

    Shapes: prob (..., T) probabilities in [0, 1], the last axis one video's snippets; target
    same shape, 0/1 (soft targets weight both terms); mask same shape, True = counted -> scalar.
    Per video, as Eq. 2 is written: ``mean_pos (1 - p^q) / q + mean_neg (1 - (1 - p)^q) / q``
    with N_pos, N_neg that video's counts (an empty set contributes 0); then the mean over
    videos. Normalising per video (not per batch) also makes the loss of a batch the mean of
    its videos' losses, so data-parallel ranks average to exactly the single-process value.
    As q -> 0 each term tends to the binary cross-entropy -log p / -log(1 - p).
    """
    target = target.to(prob.dtype)
    weight = torch.ones_like(prob) if mask is None else mask.to(prob.dtype)
    pos = target * weight
    neg = (1 - target) * weight
    # Clamp keeps the gradient of p^q (q p^(q-1)) finite at p = 0 or 1 for q < 1; machine eps
    # so that 1 - eps is still below 1 in the working dtype.
    eps = torch.finfo(prob.dtype).eps
    p = prob.clamp(eps, 1 - eps)
    loss_pos = (1 - p.pow(q)) / q
    loss_neg = (1 - (1 - p).pow(q)) / q
    per_video = (pos * loss_pos).sum(-1) / pos.sum(-1).clamp_min(1e-12) + (neg * loss_neg).sum(-1) / neg.sum(
        -1
    ).clamp_min(1e-12)  # (...,)
    return per_video.mean()