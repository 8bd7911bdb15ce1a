"""Losses of the ACM-Net baseline that RMGCL/GKSA builds on (RMGCL/GKSA Sec. III-B, Eq. 4-5, 17).

Pure tensor functions. The RMGCL/GKSA paper writes the baseline objective as the three
branch classification losses (Eq. 5, summed in Eq. 17) and says its baseline "is the same
as ACM-Net" (Sec. IV-D2); its Table V baseline row (68.9 / 55.0 / 42.6) is ACM-Net's own
THUMOS14 result, which ACM-Net obtains with three auxiliary terms on top of Eq. 5. They are
here so that the baseline can be the published one:

* :func:`guide_loss` -- the background column of the instance TCAM must agree with the
  instance attention (ties the CAM head's background class to the attention head);
* :func:`feature_magnitude_loss` -- instance features must have a larger norm than context
  features, which in turn exceed background features, by a margin;
* :func:`sparse_attention_loss` -- few steps may be instance or context.

Their weights in ACM-Net's public configuration are (2e-3, 5e-5, 2e-4) on THUMOS14 and
(5e-3, 5e-5, 0) on ActivityNet 1.3; setting them to 0 gives Eq. 17 as printed.

Top-k counts follow ACM-Net's public code: a video of T real steps pools the
``max(T // k, 1)`` highest steps, with the integer divisors k = (8, 3, 3) on THUMOS14 and
(2, 10, 10) on ActivityNet 1.3 for the (instance, context, background) branches.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from taltoolkit.losses.mil import topk_count, topk_mil_indices, topk_mil_pool, video_ce_loss

Tensor = torch.Tensor

__all__ = [
    "BRANCHES",
    "branch_video_logits",
    "feature_magnitude_loss",
    "guide_loss",
    "sparse_attention_loss",
    "three_branch_mil_loss",
    "three_branch_targets",
    "topk_counts",
    "topk_indices",
]

BRANCHES = ("ins", "con", "back")  # action instance, action context, background (Eq. 3-5)


def three_branch_targets(video_labels: Tensor) -> Tensor:
    """The C+1-class video targets y^ins, y^con, y^back of Eq. 5, L1-normalised.

    Shapes: video_labels (B, C) multi-hot -> (3, B, C+1):
    ``y^ins = [y, 0]``, ``y^con = [y, 1]``, ``y^back = [0, 1]``, each row divided by its sum
    (the "ground-truth video action probability distribution"; a row of zeros stays zero).
    """
    y = video_labels.float()
    zero = torch.zeros_like(y[:, :1])
    one = torch.ones_like(y[:, :1])
    targets = torch.stack(
        [torch.cat([y, zero], -1), torch.cat([y, one], -1), torch.cat([torch.zeros_like(y), one], -1)]
    )  # (3, B, C+1)
    return targets / targets.sum(-1, keepdim=True).clamp_min(1e-12)


def topk_counts(lengths: Tensor, divisor: int) -> Tensor:
    """ACM-Net's top-k count per video: ``max(T_b // divisor, 1)``, clamped to T_b.

    Shapes: lengths (B,) long, each video's number of real steps -> (B,) long. ACM-Net
    computes ``max(temp_len // ins_topk_seg, 1)`` on the (unpadded) sequence it is given.
    """
    return topk_count(lengths, divisor=divisor)


def topk_indices(scores: Tensor, divisor: int, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Indices of each video's ``max(T_b // divisor, 1)`` highest steps, per column.

    Shapes: scores (B, T, K); mask (B, T) bool, True = real step -> indices (B, k_max, K)
    long sorted by decreasing score, counts (B,); pool with
    :func:`~taltoolkit.losses.mil.topk_mil_pool` given the counts. Padded steps are never picked.
    """
    return topk_mil_indices(scores, divisor=divisor, mask=mask, return_counts=True)  # type: ignore[return-value]


def branch_video_logits(tcam: Tensor, divisor: int, mask: Tensor | None = None) -> Tensor:
    """Top-k MIL video logits of one attention-weighted TCAM (Eq. 5's pooling, before the softmax).

    Shapes: tcam (B, T, K) logits A^m (Eq. 4); mask (B, T) bool -> (B, K), per class the mean
    of its ``max(T_b // divisor, 1)`` highest values over each video's T_b real steps
    (ACM-Net's count, :func:`topk_counts`).
    """
    idx, counts = topk_indices(tcam, divisor, mask)  # (B, k, K)
    return topk_mil_pool(tcam, idx, counts)


def three_branch_mil_loss(
    tcams: Sequence[Tensor],
    video_labels: Tensor,
    topk: Sequence[int] = (8, 3, 3),
    mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """L_cls^m of Eq. 5 for m in (ins, con, back): cross-entropy of top-k MIL video scores.

    Shapes: tcams three (B, T, C+1) logits (A^ins, A^con, A^back of Eq. 4); video_labels
    (B, C); topk the integer divisors per branch, k = max(T // divisor, 1) (ACM-Net
    THUMOS14: 8, 3, 3; ActivityNet 1.3: 2, 10, 10); mask (B, T) -> {"loss_ins", "loss_con",
    "loss_back"} scalars, each ``mean_b -sum_c y^m_c log softmax(p^m)_c`` with the targets of
    :func:`three_branch_targets`. Their sum is L_cls of Eq. 17.
    """
    if len(tcams) != 3 or len(topk) != 3:
        raise ValueError("need three TCAMs and three top-k divisors (instance, context, background)")
    targets = three_branch_targets(video_labels)  # (3, B, C+1)
    out = {}
    for name, tcam, divisor, target in zip(BRANCHES, tcams, topk, targets):
        out[f"loss_{name}"] = video_ce_loss(branch_video_logits(tcam, divisor, mask), target)
    return out


def guide_loss(tcam_ins: Tensor, attention: Tensor, mask: Tensor | None = None) -> Tensor:
    """ACM-Net's guide loss: ``sum_t |1 - softmax(A^ins)_t[C+1] - W^ins_t|``, mean over videos.

    Shapes: tcam_ins (B, T, C+1) logits of the instance TCAM (Eq. 4); attention (B, T, 3) the
    softmax attention of Eq. 3 -> scalar. The attention is detached: the TCAM's background
    class is taught to follow the attention, not the reverse (as in ACM-Net). Summed over
    real steps (not averaged), which is the scale ACM-Net's weight 2e-3 was set for.
    """
    bg = F.softmax(tcam_ins, dim=-1)[..., -1]  # (B, T)
    gap = (1 - bg - attention[..., 0].detach()).abs()
    if mask is not None:
        gap = gap * mask.to(gap.dtype)
    return gap.sum(-1).mean()


def feature_magnitude_loss(
    embeddings: Tensor,
    attention: Tensor,
    topk: Sequence[int] = (8, 3, 3),
    mask: Tensor | None = None,
    margin: float = 50.0,
) -> Tensor:
    """ACM-Net's feature-magnitude loss on the mean embeddings of each branch's top-attended steps.

    Shapes: embeddings (B, T, H) (ACM-Net: the embedding before any dropout); attention
    (B, T, 3); topk the top-k divisors per branch (the MIL ones in ACM-Net); mask (B, T) -> scalar

        mean_b ( [m - |f_ins| + |f_con|]_+ + [m - |f_con| + |f_back|]_+ + |f_back| )^2,

    where f_m is the mean embedding over the top-k steps of attention W^m and m the margin
    (50 in ACM-Net's public code).
    """
    norms = []
    for i, divisor in enumerate(topk):
        idx, counts = topk_indices(attention[..., i : i + 1], divisor, mask)  # (B, k, 1)
        idx = idx.expand(-1, -1, embeddings.shape[-1])  # (B, k, H): same steps for every channel
        feat = topk_mil_pool(embeddings, idx, counts)  # (B, H)
        norms.append(feat.norm(dim=-1))  # (B,)
    n_ins, n_con, n_back = norms
    per_video = F.relu(margin - n_ins + n_con) + F.relu(margin - n_con + n_back) + n_back
    return per_video.pow(2).mean()


def sparse_attention_loss(attention: Tensor, mask: Tensor | None = None) -> Tensor:
    """ACM-Net's sparsity term: ``sum_t W^m_t`` per video and branch, mean over videos and m in (ins, con).

    Shapes: attention (B, T, 3); mask (B, T) -> scalar ``mean_b (sum_t W^ins_t + sum_t W^con_t) / 2``.
    Summed over real steps and averaged over the two branches, as ACM-Net's public code takes
    the mean of the (B, 2) per-branch sums: the scale its weight 2e-4 was set for.
    """
    fg = attention[..., :2]  # (B, T, 2)
    if mask is not None:
        fg = fg * mask.to(fg.dtype).unsqueeze(-1)
    return fg.sum(1).mean()  # (B, 2) sums -> mean over videos and both branches
