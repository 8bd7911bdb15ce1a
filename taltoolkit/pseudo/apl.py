"""APL's pseudo-label makers (Zhou, Williams and Rahmani, ECCV 2024; ../shared/papers/apl.txt).

- ALQA (Sec. 3.1): :func:`joint_score` (Eq. 4), :func:`adaptive_split` (Eq. 6: tau_neg fixed,
  tau_pos from the mean and standard deviation of the remaining joint scores, a stated
  fallback below a minimum count), :func:`adaptive_split_videos` (the same, pooled over the
  unlabelled videos or per video) and :func:`fixed_split` (Table 2's baseline: a fixed
  confidence threshold).
- ICD (Sec. 3.2): :class:`ConsistencyDiscriminator` (Eq. 9), :func:`instance_features`
  (the MaxPool ``MAP`` over an instance's input features), :func:`icd_loss` (Eq. 7-8),
  :func:`icd_similarity` (Eq. 10) and :func:`icd_refine` (removing ambiguous positives, EAP,
  and mining potential positives, MPP).
- :func:`pseudo_label_quality`: Fig. 3(c)'s class accuracy, average tIoU and positive accuracy
  of pseudo-labels against the hidden ground truth.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------- ALQA


def joint_score(cls_prob: Tensor, tiou_prob: Tensor, tnd_prob: Tensor, eps: float = 1e-3) -> Tensor:
    """Eq. 4: ``max(P_tiou - P_tnd, eps) * P_cls``; cls (..., C), tiou and tnd (...) -> (..., C)."""
    return (tiou_prob - tnd_prob).clamp(min=eps)[..., None] * cls_prob


def adaptive_thresholds(scores: np.ndarray, tau_neg: float = 0.15, std_factor: float = 1.0,
                        min_count: int = 1, fallback: float = float("inf")) -> float:
    """Eq. 6's tau_pos: mean + ``std_factor`` x std of the scores above ``tau_neg``.

    The paper says tau_pos "is dynamically computed based on the mean and standard deviation"
    of those scores without the formula; mean + 1 std is our reading (``std_factor``).
    With fewer than ``min_count`` scores above tau_neg the statistics say nothing (a single
    score would make tau_pos equal to it and select it alone), so tau_pos is ``fallback``
    (+inf by default: nothing is positive).
    """
    s = np.asarray(scores, np.float64)
    rest = s[s > tau_neg]
    if rest.size == 0 or rest.size < min_count:
        return float(fallback)
    return float(rest.mean() + std_factor * rest.std())


def adaptive_split(scores: np.ndarray, tau_neg: float = 0.15, std_factor: float = 1.0, min_count: int = 1,
                   fallback: float = float("inf")) -> tuple[np.ndarray, np.ndarray, float]:
    """Eq. 6: positives ``s >= tau_pos``, candidates ``tau_neg < s < tau_pos`` -> (pos, cand, tau_pos)."""
    s = np.asarray(scores, np.float64)
    tau_pos = adaptive_thresholds(s, tau_neg, std_factor, min_count, fallback)
    pos = s >= tau_pos
    cand = (s > tau_neg) & ~pos
    return pos, cand, tau_pos


TAU_POS_SCOPES = ("pooled", "video")


def adaptive_split_videos(scores: Sequence[np.ndarray], tau_neg: float = 0.15, std_factor: float = 1.0,
                          scope: str = "pooled", min_count: int = 1, fallback: float = float("inf")
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Eq. 6 over the post-NMS predictions of several videos (``scores[v]`` (N_v,)).

    ``scope="pooled"``: one tau_pos from every video's scores above tau_neg together (guarded
    by ``min_count`` / ``fallback``, :func:`adaptive_thresholds`). ``scope="video"``: each
    video's own tau_pos from its own scores; a video with fewer than ``min_count`` scores above
    tau_neg takes the pooled value instead (itself guarded).

    Returns positives and candidates over the concatenated scores (sum N_v,), each video's
    tau_pos (V,) and what the metrics record: the pooled tau_pos, the number of scores above
    tau_neg, whether the pooled value fell back, and how many videos took the pooled value.
    """
    if scope not in TAU_POS_SCOPES:
        raise ValueError(f"tau_pos scope {scope!r}; choose one of {TAU_POS_SCOPES}")
    per_video = [np.asarray(s, np.float64).reshape(-1) for s in scores]
    flat = np.concatenate(per_video) if per_video else np.zeros(0)
    above = int((flat > tau_neg).sum())
    pooled = adaptive_thresholds(flat, tau_neg, std_factor, min_count, fallback)
    taus = np.full(len(per_video), pooled)  # (V,)
    videos_fallback = 0
    if scope == "video":
        for i, s in enumerate(per_video):
            if int((s > tau_neg).sum()) >= max(min_count, 1):
                taus[i] = adaptive_thresholds(s, tau_neg, std_factor, min_count, fallback)
            else:
                videos_fallback += 1
    tau_each = np.repeat(taus, [len(s) for s in per_video]) if per_video else np.zeros(0)  # (sum N_v,)
    pos = flat >= tau_each
    cand = (flat > tau_neg) & ~pos
    info = {"tau_pos_pooled": pooled, "num_above_tau_neg": above,
            "tau_pos_fallback": bool(above == 0 or above < min_count), "videos_fallback": videos_fallback}
    return pos, cand, taus, info


def fixed_split(scores: np.ndarray, threshold: float = 0.3) -> tuple[np.ndarray, np.ndarray, float]:
    """Table 2's baseline: positives ``s >= threshold``, no candidates."""
    s = np.asarray(scores, np.float64)
    return s >= threshold, np.zeros(s.shape, bool), float(threshold)


# ----------------------------------------------------------------------------- ICD


class ConsistencyDiscriminator(nn.Module):
    """Eq. 9: ``D(a, b) = sigmoid(MLP([a; b]))``, an MLP from 2D to 1 (hidden width ``hidden``)."""

    def __init__(self, in_dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """a, b (N, D) -> logits (N,)."""
        return self.mlp(torch.cat([a, b], -1))[:, 0]


def instance_features(features: Tensor, segments: Tensor) -> Tensor:
    """MAP: max over the input steps of each instance. features (T, D), segments (N, 2) grid -> (N, D).

    Instance ``[s, e]`` covers the steps ``floor(s) .. ceil(e) - 1`` clipped to the sequence,
    at least the one step nearest its centre.
    """
    t = features.shape[0]
    out = []
    for s, e in segments.tolist():
        a = int(np.clip(np.floor(s), 0, t - 1))
        b = int(np.clip(np.ceil(e), a + 1, t))
        out.append(features[a:b].amax(0))
    if not out:
        return features.new_zeros(0, features.shape[1])
    return torch.stack(out)


def icd_loss(disc: ConsistencyDiscriminator, feats: Tensor, labels: Tensor, pairs: int = 4,
             generator: torch.Generator | None = None) -> Tensor:
    """Eq. 7-8 on the M labelled instances of a batch: feats (M, D), labels (M,).

    For each anchor, ``pairs`` partners are drawn with replacement from its same-class set
    G_i (others than itself) and ``pairs`` from its other-class set; BCE pushes D to 1 on the
    former and 0 on the latter ("we sample a fixed number of instances for the two sets to
    ensure a balanced training"). Anchors whose set is empty skip that term. 0 when nothing pairs.
    The partners are drawn with ``generator`` (a CPU generator; the global RNG when None).
    """
    m = feats.shape[0]
    dev = feats.device
    if m < 2:
        return feats.sum() * 0.0
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(m, dtype=torch.bool, device=dev)
    terms = []
    for mask, target in ((same & ~eye, 1.0), (~same, 0.0)):
        has = mask.any(1)
        if not bool(has.any()):
            continue
        anchors = torch.nonzero(has).squeeze(1).repeat_interleave(pairs)  # (A * pairs,)
        partners = torch.multinomial(mask[anchors].float().cpu(), 1, generator=generator).squeeze(1).to(dev)
        logits = disc(feats[anchors], feats[partners])
        terms.append(F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target)))
    if not terms:
        return feats.sum() * 0.0
    return torch.stack(terms).sum()


@torch.no_grad()
def icd_similarity(disc: ConsistencyDiscriminator, pred_feats: Tensor, pred_labels: Tensor,
                   bank_feats: Tensor, bank_labels: Tensor) -> Tensor:
    """Eq. 10: mean over the labelled instances of the predicted class of ``D(pred, labelled)`` -> (N,).

    A predicted class without any labelled instance gets similarity 0 (nothing vouches for it).
    """
    out = torch.zeros(pred_feats.shape[0], device=pred_feats.device)
    for c in torch.unique(pred_labels).tolist():
        idx = torch.nonzero(pred_labels == c).squeeze(1)
        bank = bank_feats[bank_labels == c]  # (M_c, D)
        if bank.shape[0] == 0:
            continue
        a = pred_feats[idx].repeat_interleave(bank.shape[0], 0)  # (n * M_c, D)
        b = bank.repeat(idx.numel(), 1)
        out[idx] = torch.sigmoid(disc(a, b)).reshape(idx.numel(), bank.shape[0]).mean(1)
    return out


def icd_refine(pos: np.ndarray, cand: np.ndarray, similarity: np.ndarray, tau_icd: float = 0.3,
               sigma_icd: float = 0.7, eliminate: bool = True, mine: bool = True) -> np.ndarray:
    """Final positives: EAP drops positives with ``S < tau_icd``; MPP adds candidates with ``S > sigma_icd``."""
    s = np.asarray(similarity, np.float64)
    keep = pos & (s >= tau_icd) if eliminate else pos.copy()
    if mine:
        keep = keep | (cand & (s > sigma_icd))
    return keep


# ----------------------------------------------------------------------------- quality


def _tiou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 2) x (M, 2) -> (N, M) temporal IoU."""
    inter = np.clip(np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _positive_pairs(iou: np.ndarray, pl: np.ndarray, gl: np.ndarray, tiou_positive: float) -> np.ndarray:
    """(N, M) bool: pseudo-label n and ground-truth instance m share the class at tIoU > tiou_positive."""
    return (iou > tiou_positive) & (pl[:, None] == gl[None, :])


def positive_pseudo_labels(segments: np.ndarray, labels: np.ndarray, truth_segments: np.ndarray,
                           truth_labels: np.ndarray, tiou_positive: float = 0.5) -> np.ndarray:
    """(N,) bool: which of one video's pseudo-labels are positives (the paper's Pos Acc: a
    ground-truth instance of the same class at tIoU > ``tiou_positive``)."""
    ps, pl = np.asarray(segments, np.float64).reshape(-1, 2), np.asarray(labels, np.int64).reshape(-1)
    gs, gl = np.asarray(truth_segments, np.float64).reshape(-1, 2), np.asarray(truth_labels, np.int64).reshape(-1)
    if len(pl) == 0 or len(gl) == 0:
        return np.zeros(len(pl), bool)
    return _positive_pairs(_tiou(ps, gs), pl, gl, tiou_positive).any(1)


def pseudo_label_quality(pseudo: Sequence[tuple[np.ndarray, np.ndarray]],
                         truth: Sequence[tuple[np.ndarray, np.ndarray]], tiou_positive: float = 0.5) -> dict[str, float]:
    """Fig. 3(c) over videos: each item is (segments (N, 2) seconds, labels (N,)).

    - ``class_acc``: share of pseudo-labels whose class is that of the ground-truth instance
      they overlap most;
    - ``avg_tiou``: mean over pseudo-labels of the best tIoU with any ground-truth instance;
    - ``pos_acc``: share of pseudo-labels that are positives, i.e. have a ground-truth instance
      of the same class with tIoU above ``tiou_positive`` (0.5, the paper's definition);
    - ``recall``: share of ground-truth instances covered by such a positive.
    """
    n = correct_cls = positives = 0
    tious: list[float] = []
    gt_total = gt_found = 0
    for (ps, pl), (gs, gl) in zip(pseudo, truth):
        ps, pl = np.asarray(ps, np.float64).reshape(-1, 2), np.asarray(pl, np.int64).reshape(-1)
        gs, gl = np.asarray(gs, np.float64).reshape(-1, 2), np.asarray(gl, np.int64).reshape(-1)
        gt_total += len(gl)
        n += len(pl)
        if len(pl) == 0:
            continue
        if len(gl) == 0:
            tious.extend([0.0] * len(pl))
            continue
        iou = _tiou(ps, gs)  # (N, M)
        best = iou.argmax(1)
        tious.extend(iou.max(1).tolist())
        correct_cls += int((gl[best] == pl).sum())
        hit = _positive_pairs(iou, pl, gl, tiou_positive)
        positives += int(hit.any(1).sum())
        gt_found += int(hit.any(0).sum())
    return {
        "num_pseudo": float(n),
        "class_acc": correct_cls / n if n else 0.0,
        "avg_tiou": float(np.mean(tious)) if tious else 0.0,
        "pos_acc": positives / n if n else 0.0,
        "recall": gt_found / gt_total if gt_total else 0.0,
    }
