"""IOCNet's losses (COPL Sec. 3.4.1, Eq. 14-22), the temporal feature shift and the EMA update.

Tensors in, tensors out. The weakly-supervised losses reuse the MIL pieces of
:mod:`taltoolkit.losses.mil` (top-k selection, video cross-entropy, generalized BCE); the
unsupervised ones return one value per video, shape (B,), because COPL applies them to the
pseudo-labelled set P and the unlabelled set U separately (Algorithm 1 lines 23-24).

Shapes: ``cas`` (B, T, C) logits, ``a_cs``/``a_ca`` (B, T), per-modality ``a_ca_m`` (M, B, T),
``mask`` (B, T) bool (True = real step), ``labels`` (B, C) multi-hot.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from taltoolkit.losses.mil import generalized_bce, topk_mil_indices, topk_mil_pool, video_ce_loss

Tensor = torch.Tensor

__all__ = [
    "SELECTION_MODALITIES",
    "selection_scores",
    "selection_targets",
    "classification_loss",
    "action_selection_loss",
    "masked_mse",
    "inner_consistency_loss",
    "outer_consistency_loss",
    "snippet_contrastive_loss",
    "temporal_feature_shift",
    "ema_update",
]


SELECTION_MODALITIES = ("mean", "sum")


def selection_scores(cas: Tensor, a_ca_m: Tensor, beta: float, modalities: str = "mean") -> Tensor:
    """Eq. 14, the action selection function ``h_cs = beta softmax(CAS) + (1 - beta) A``.

    ``modalities="mean"``: A = (A_ca^R + A_ca^F) / 2, the instance selection function of the
    AICL code [24] whose weights COPL keeps (beta = 1/3 gives (softmax(CAS) + A_ca^R + A_ca^F) / 3,
    and h_cs lies in [0, 1]); ``"sum"``: A = A_ca^R + A_ca^F as Eq. 14 is printed, which weighs
    each modality twice as much. Shapes: cas (B, T, C), a_ca_m (M, B, T) -> (B, T, C).
    """
    if modalities not in SELECTION_MODALITIES:
        raise ValueError(f"Eq. 14 modalities={modalities!r}; choose one of {SELECTION_MODALITIES}")
    a = a_ca_m.mean(0) if modalities == "mean" else a_ca_m.sum(0)  # (B, T)
    return beta * cas.softmax(-1) + (1 - beta) * a.unsqueeze(-1)


def selection_targets(indices: Tensor, labels: Tensor, num_steps: int) -> Tensor:
    """S^p of Eq. 16 as a 0/1 map: snippets among the top-l of one of the video's (pseudo-)classes.

    Shapes: indices (B, l, C) from :func:`~taltoolkit.losses.mil.topk_mil_indices`, labels (B, C)
    -> (B, T). Everything else is S^n.
    """
    b, _, c = indices.shape
    chosen = torch.zeros(b, num_steps, c, device=indices.device)
    chosen.scatter_(1, indices, 1.0)
    return (chosen * (labels > 0).unsqueeze(1).float()).amax(-1)


def classification_loss(
    cas: Tensor, scores: Tensor, labels: Tensor, ratio: float, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Eq. 15 on the top-l snippets of ``scores`` (= h_cs, Eq. 14) per class; l = ratio * T.

    Video logits are the mean CAS over each class's top-l snippets; p = softmax of them; the loss
    is the cross-entropy with L1-normalised labels. Returns (loss scalar, indices (B, l, C)).
    """
    idx, counts = topk_mil_indices(scores, ratio=ratio, mask=mask, return_counts=True)
    return video_ce_loss(topk_mil_pool(cas, idx, counts), labels), idx


def action_selection_loss(a_ca_m: Tensor, targets: Tensor, q: float = 0.7, mask: Tensor | None = None) -> Tensor:
    """Eq. 16 summed over modalities m in {R, F}: the generalized BCE with q on each A_ca^m.

    Per video ``mean_{S^p} (1 - A^q) / q + mean_{S^n} (1 - (1 - A)^q) / q``, then the mean over
    videos. Shapes: a_ca_m (M, B, T), targets (B, T) -> scalar.
    """
    return sum(generalized_bce(a, targets, q=q, mask=mask) for a in a_ca_m)  # type: ignore[return-value]


def masked_mse(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-video mean squared error over real steps (and any trailing axis). Shapes: (B, T, ...) -> (B,)."""
    sq = (a - b) ** 2
    if sq.dim() > 2:
        sq = sq.flatten(2).mean(-1)  # (B, T)
    if mask is None:
        return sq.mean(-1)
    w = mask.to(sq.dtype)
    return (sq * w).sum(-1) / w.sum(-1).clamp_min(1)


def inner_consistency_loss(
    a_ca_m: Tensor, a_cs: Tensor, a_ca: Tensor, mu1: float = 5.0, mu2: float = 0.1, mask: Tensor | None = None
) -> Tensor:
    """L_CI = mu1 MSE(A_ca^R, A_ca^F) + mu2 MSE(A_cs, A_ca), Eq. 18-20. Returns (B,).

    With one modality the modality term is 0.
    """
    l_m = masked_mse(a_ca_m[0], a_ca_m[1], mask) if a_ca_m.shape[0] >= 2 else a_cs.new_zeros(a_cs.shape[0])
    return mu1 * l_m + mu2 * masked_mse(a_cs, a_ca, mask)


def outer_consistency_loss(
    h_student: Tensor, h_teacher: Tensor, a_ca_student: Tensor, a_ca_teacher: Tensor, mask: Tensor | None = None
) -> Tensor:
    """L_CO = MSE(h_cs, h~_cs) + MSE(A_ca, A~_ca), Eq. 21 (teacher outputs are targets: detached).

    Shapes: h (B, T, C), a_ca (B, T) -> (B,). The MSE on h_cs averages over steps and classes.
    """
    return masked_mse(h_student, h_teacher.detach(), mask) + masked_mse(a_ca_student, a_ca_teacher.detach(), mask)


def _above_median(a: Tensor, mask: Tensor | None) -> Tensor:
    """a > per-video median over real steps (numpy median). Shapes: (B, T) -> (B, T) bool."""
    x = a.detach().float()
    if mask is not None:
        x = x.masked_fill(~mask, float("nan"))
    med = torch.nanquantile(x, 0.5, dim=-1, keepdim=True)
    out = x > med
    return out if mask is None else out & mask


def _top_members(emb: Tensor, score: Tensor, region: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k highest-scoring snippets of a region: members (B, k, H) and validity (B, k)."""
    s = score.detach().masked_fill(~region, float("-inf"))
    vals, idx = s.topk(min(k, s.shape[1]), dim=1)  # (B, k)
    members = torch.gather(emb, 1, idx.unsqueeze(-1).expand(-1, -1, emb.shape[-1]))
    return members, torch.isfinite(vals)


def _mean(members: Tensor, valid: Tensor) -> Tensor:
    w = valid.to(members.dtype).unsqueeze(-1)
    return (members * w).sum(1) / w.sum(1).clamp_min(1)


def _nce(query: Tensor, positive: Tensor, negatives: Tensor, neg_valid: Tensor, temperature: float) -> Tensor:
    """InfoNCE with one positive: -log softmax([q.k, q.n_1 ..]/tau)[0], cosine similarities. Returns (B,)."""
    q, k = F.normalize(query, dim=-1), F.normalize(positive, dim=-1)
    n = F.normalize(negatives, dim=-1)
    l_pos = (q * k).sum(-1, keepdim=True)  # (B, 1)
    l_neg = torch.einsum("bh,bkh->bk", q, n).masked_fill(~neg_valid, float("-inf"))  # (B, k)
    logits = torch.cat([l_pos, l_neg], 1) / temperature
    return -logits.log_softmax(1)[:, 0]


def snippet_contrastive_loss(
    embeddings: Tensor | list[Tensor],
    a_cs: Tensor,
    a_ca: Tensor,
    ratio: float = 1 / 20,
    temperature: float = 0.1,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """L_C: the actionness-inconsistency contrastive loss of AICL [24] that COPL adopts.

    Snippets are split by the two branches binarized at their medians (Eq. 1): consistent
    action CA (both high), consistent background CB (both low), inconsistent I (one high).
    From each region the k = max(1, floor(ratio * T)) snippets with the highest A_cs (CA, IA)
    or the lowest A_cs (CB, IB) are taken. Per embedding space, four InfoNCE terms with
    cosine similarity and temperature tau pull IA to CA and IB to CB, and CA to IA and CB to
    IB, each against the other side's consistent snippets as negatives:
    NCE(IA, CA; CB) + NCE(IB, CB; CA) + NCE(CA, IA; CB) + NCE(CB, IB; CA), on region means.
    COPL does not restate the loss; ratio 1/20 and tau 0.1 are AICL's (not given by COPL).

    Shapes: embeddings (B, T, H) or a list of them (summed over spaces; IOCNet passes its
    class-specific and both modality embeddings), a_cs / a_ca (B, T) -> (loss (B,), valid (B,)
    bool). A video missing one of the four regions gets 0 and valid False.
    """
    embs = [embeddings] if isinstance(embeddings, Tensor) else list(embeddings)
    hi_cs, hi_ca = _above_median(a_cs, mask), _above_median(a_ca, mask)
    real = torch.ones_like(hi_cs) if mask is None else mask.bool()
    ca = hi_cs & hi_ca
    cb = ~hi_cs & ~hi_ca & real
    inc = (hi_cs ^ hi_ca) & real
    lengths = real.sum(1)
    k = max(1, int(int(lengths.max()) * ratio)) if lengths.numel() else 1
    rev = a_cs.detach().amax(1, keepdim=True) - a_cs.detach()  # high = background-like, as AICL ranks
    valid = ca.any(1) & cb.any(1) & inc.any(1)
    total = a_cs.new_zeros(a_cs.shape[0])
    for e in embs:
        m_ca, v_ca = _top_members(e, a_cs, ca, k)
        m_cb, v_cb = _top_members(e, rev, cb, k)
        m_ia, v_ia = _top_members(e, a_cs, inc, k)
        m_ib, v_ib = _top_members(e, rev, inc, k)
        ca_mean, cb_mean, ia_mean, ib_mean = _mean(m_ca, v_ca), _mean(m_cb, v_cb), _mean(m_ia, v_ia), _mean(m_ib, v_ib)
        terms = (
            _nce(ia_mean, ca_mean, m_cb, v_cb, temperature)
            + _nce(ib_mean, cb_mean, m_ca, v_ca, temperature)
            + _nce(ca_mean, ia_mean, m_cb, v_cb, temperature)
            + _nce(cb_mean, ib_mean, m_ca, v_ca, temperature)
        )
        total = total + torch.where(valid, terms, torch.zeros_like(terms))
    return total, valid


def temporal_feature_shift(
    features: Tensor, channels: int, mask: Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Temporal feature shift [SSTAP], the student's augmentation (Sec. 3.4.1, supplementary 1.1.2).

    ``channels`` random channels of D are chosen (one draw per call, shared by the batch); the
    first half is shifted one step forward in time (step t takes step t-1's value) and the
    other half one step backward (t takes t+1); vacated steps are zero. Padded steps stay
    zero. Shapes: (B, T, D) -> (B, T, D). Draws from ``generator`` (default: torch's global RNG,
    which the trainer checkpoints, so a resumed run draws the same channels).
    """
    b, t, d = features.shape
    if not 0 <= channels <= d:
        raise ValueError(f"temporal shift of c={channels} channels needs 0 <= c <= D={d}; lower method.shift_channels")
    perm = torch.randperm(d, generator=generator)[:channels].to(features.device)
    fwd, bwd = perm[: channels // 2], perm[channels // 2 :]
    out = features.clone()
    if t > 1:
        out[:, 1:, fwd] = features[:, :-1, fwd]
        out[:, -1:, bwd] = 0
        out[:, :-1, bwd] = features[:, 1:, bwd]
    out[:, 0, fwd] = 0
    if t == 1:
        out[:, 0, bwd] = 0
    if mask is not None:
        out = out * mask.unsqueeze(-1).to(out.dtype)
    return out


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """Mean-teacher EMA (Algorithm 1 line 26): ``theta_t = decay theta_{t-1} + (1 - decay) theta*_t``.

    Floating-point buffers follow the same average; other buffers are copied.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay={decay} must be in [0, 1] (method.ema_decay)")
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(decay).add_(ps.detach(), alpha=1 - decay)
    for bt, bs in zip(teacher.buffers(), student.buffers()):
        if bt.is_floating_point():
            bt.mul_(decay).add_(bs.detach(), alpha=1 - decay)
        else:
            bt.copy_(bs)
