"""Losses and label assignment of one-stage segment detectors (ActionFormer, Zhang et al. 2022).

Pure tensor functions, device-agnostic:

- :func:`make_points`: the anchor points of a feature pyramid, in the grid coordinates of
  :mod:`taltoolkit.structures` (step ``j`` of level ``l`` sits at ``j * 2**l + 0.5``, the
  centre of the input step it is aligned with), with each level's stride and regression range.
- :func:`assign_targets`: ActionFormer's label assignment (center sampling, regression
  ranges, ties resolved to the shortest segment).
- :func:`sigmoid_focal_loss`: RetinaNet's focal loss on logits (alpha 0.25, gamma 2).
- :func:`quality_focal_loss`: the focal loss on probabilities against soft targets (Generalized
  Focal Loss's QFL), used by APL's Eq. 5 where the "classification" output is a joint score.
- :func:`diou_terms` / :func:`diou_loss`: tIoU, tND and the 1-D DIoU loss ``1 - tIoU + tND``
  between segments given as distances (left, right) from a common point (APL Eq. 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ActionFormer's default regression ranges (libs/core/config.py), in level-0 steps.
DEFAULT_REGRESSION_RANGES = ((0.0, 4.0), (4.0, 8.0), (8.0, 16.0), (16.0, 32.0), (32.0, 64.0), (64.0, 10000.0))


def make_points(
    level_lengths: list[int], scale_factor: int, regression_ranges: list[tuple[float, float]], device: torch.device
) -> Tensor:
    """(P, 4) rows ``[x, range_lo, range_hi, stride]`` for every point of every level.

    ``x`` is in grid coordinates of the input sequence: ActionFormer places point ``j`` of a
    level with stride ``s`` at ``j * s`` in units where step ``k`` sits at ``k``; the grid of
    structures.py puts step ``k``'s centre at ``k + 0.5``, hence the ``+ 0.5``.
    """
    if len(regression_ranges) < len(level_lengths):
        raise ValueError(
            f"model.regression_ranges has {len(regression_ranges)} entries for {len(level_lengths)} pyramid "
            "levels; give one (lo, hi) pair per level"
        )
    rows = []
    for lvl, n in enumerate(level_lengths):
        s = float(scale_factor**lvl)
        x = torch.arange(n, device=device, dtype=torch.float32) * s + 0.5  # (T_l,)
        lo, hi = regression_ranges[lvl]
        rows.append(torch.stack([x, torch.full_like(x, lo), torch.full_like(x, hi), torch.full_like(x, s)], 1))
    return torch.cat(rows, 0)


def assign_targets(
    points: Tensor, segments: Tensor, labels: Tensor, num_classes: int, center_radius: float = 1.5
) -> tuple[Tensor, Tensor, Tensor]:
    """ActionFormer's label assignment for one video.

    points (P, 4) from :func:`make_points`; segments (N, 2) grid coordinates; labels (N,).
    A point ``x`` of stride ``s`` is assigned to a segment when

    1. it lies strictly inside the segment and, with center sampling (``center_radius > 0``),
       strictly within ``center_radius * s`` of the segment's centre (the sampling window
       clipped to the segment, as ActionFormer does);
    2. the larger of its two distances to the boundaries, ``max(x - start, end - x)``, lies
       in the level's regression range ``[lo, hi]`` (both ends inclusive, as in the reference);
    3. among the segments meeting 1-2 it is the shortest. When several share that length
       (within 1e-3 steps), the point becomes positive for every one of their classes and
       regresses to the first of them in input order.

    Returns ``cls_targets (P, C)`` (multi-hot, zeros = background), ``reg_targets (P, 2)``
    (left, right distances divided by the stride; zeros for background) and ``positive (P,)``.
    """
    p = points.shape[0]
    dev = points.device
    if segments.numel() == 0:
        return (torch.zeros(p, num_classes, device=dev), torch.zeros(p, 2, device=dev),
                torch.zeros(p, dtype=torch.bool, device=dev))
    segments = segments.to(device=dev, dtype=torch.float32).reshape(-1, 2)
    labels = labels.to(dev).long().reshape(-1)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"segment labels must be in [0, {num_classes}), got {labels.tolist()}")
    x, lo, hi, stride = points[:, 0:1], points[:, 1:2], points[:, 2:3], points[:, 3:4]  # (P, 1) each
    start, end = segments[None, :, 0], segments[None, :, 1]  # (1, N)
    left, right = x - start, end - x  # (P, N)
    lens = (end - start).expand(p, -1)  # (P, N)
    if center_radius > 0:
        centre = 0.5 * (start + end)
        c_lo = torch.maximum(centre - center_radius * stride, start)
        c_hi = torch.minimum(centre + center_radius * stride, end)
        inside = torch.minimum(x - c_lo, c_hi - x) > 0  # (P, N) strictly inside, as the reference
    else:
        inside = torch.minimum(left, right) > 0
    reach = torch.maximum(left, right)
    in_range = (reach >= lo) & (reach <= hi)  # (P, N)
    cand = torch.where(inside & in_range, lens, torch.full_like(lens, float("inf")))  # (P, N)
    min_len, first = cand.min(1)  # (P,), (P,) argmin: first of the shortest
    positive = torch.isfinite(min_len)
    # Every segment within 1e-3 steps of the shortest length counts as tied (reference tolerance).
    shortest = (cand <= min_len[:, None] + 1e-3) & torch.isfinite(cand)  # (P, N)
    onehot = F.one_hot(labels, num_classes).float()  # (N, C)
    cls_targets = (shortest.float() @ onehot).clamp_(max=1.0)  # (P, C)
    reg = torch.stack([left.gather(1, first[:, None])[:, 0], right.gather(1, first[:, None])[:, 0]], 1)  # (P, 2)
    reg = reg / stride
    reg = torch.where(positive[:, None], reg, torch.zeros_like(reg))
    return cls_targets, reg, positive


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss (Lin et al. 2017) on logits, summed by the caller.

    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)`` with ``p_t = p`` where the target is 1 and
    ``1 - p`` where it is 0 (soft targets interpolate both terms, as torchvision's does).
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def quality_focal_loss(prob: Tensor, targets: Tensor, beta: float = 2.0, eps: float = 1e-6) -> Tensor:
    """Element-wise focal loss on probabilities with soft targets (QFL, Li et al. 2020):
    ``-|q - p|^beta [q log p + (1 - q) log(1 - p)]``; zero when ``p == q``."""
    p = prob.clamp(eps, 1 - eps)
    bce = -(targets * torch.log(p) + (1 - targets) * torch.log1p(-p))
    return (targets - prob).abs().pow(beta) * bce


def diou_terms(pred: Tensor, target: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """tIoU and tND of segments given as distances from one point: pred, target (N, 2) = (left, right).

    tIoU = |A ∩ B| / |A ∪ B|; tND = rho^2 / d^2 with rho the distance between the two
    centres and d the length of the smallest segment covering both (APL Eq. 1, DIoU).
    """
    lp, rp = pred[:, 0], pred[:, 1]
    lg, rg = target[:, 0], target[:, 1]
    inter = torch.minimum(lp, lg) + torch.minimum(rp, rg)
    union = (lp + rp) + (lg + rg) - inter
    tiou = inter / union.clamp(min=eps)
    cover = torch.maximum(lp, lg) + torch.maximum(rp, rg)  # d
    rho = 0.5 * ((rp - lp) - (rg - lg))  # centre_pred - centre_gt
    tnd = rho.pow(2) / cover.pow(2).clamp(min=eps)
    return tiou, tnd


def diou_loss(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Element-wise 1-D DIoU loss ``1 - tIoU + tND`` (N,) (ActionFormer's regression loss)."""
    tiou, tnd = diou_terms(pred, target, eps)
    return 1.0 - tiou + tnd
