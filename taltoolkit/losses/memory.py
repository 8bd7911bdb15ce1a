"""Cross-video memory losses of RMGCL/GKSA (Zhang & Zhao; ../shared/papers/rmgcl_gksa.txt).

Pure tensor functions for Sec. III-C and III-E:

* :func:`regional_features` -- per-video, per-class regional representative features
  beta_c (Eq. 6) over the confident segments mu_c (Eq. 7);
* :func:`momentum_enqueue` -- the per-class queue update with momentum (Eq. 8);
* :func:`noise_tolerant_contrastive` -- the memory-guided noise-tolerant contrastive loss
  (Eq. 9);
* :func:`segment_uncertainty` -- the per-segment KL uncertainty D_t (Eq. 15);
* :func:`uncertainty_weighted_pseudo_loss` -- the uncertainty-weighted pseudo-label loss
  (Eq. 16).

The memory branch that owns the memory bank and calls these lives in
``taltoolkit.models.memory``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = [
    "momentum_enqueue",
    "noise_tolerant_contrastive",
    "regional_features",
    "segment_uncertainty",
    "uncertainty_weighted_pseudo_loss",
]


def regional_features(
    embeddings: Tensor,
    scores: Tensor,
    labels: Tensor,
    zeta: float = 0.75,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Regional representative features beta_c (Eq. 6) over mu_c = [A^ins[:, c] > zeta] (Eq. 7).

    Shapes: embeddings (B, T, H) segment features f_t; scores (B, T, K) per-class
    probabilities (the attention-weighted instance TCAM A^ins after softmax, one column per
    memory row, background included when the caller has one); labels (B, K) 0/1, the video
    labels that filter which classes may produce a feature (weak labels, Sec. III-C1; pass 1
    for the background column); mask (B, T) bool, True = real step ->
    features (B, K, H), valid (B, K) bool.

    ``beta_c = sum_t mu_c(t) f_t / sum_t mu_c(t)``. A class is valid when the video carries
    it and at least one real step passes the threshold; invalid entries are 0. The selection
    is a hard threshold (no gradient); the features keep the gradient of the embeddings, so a
    contrastive loss on them trains the embedding network.
    """
    sel = scores.detach() > zeta  # (B, T, K): mu_c(t), Eq. 7
    if mask is not None:
        sel = sel & mask.to(torch.bool).unsqueeze(-1)
    mu = sel.to(embeddings.dtype)  # (B, T, K)
    count = mu.sum(1)  # (B, K)
    summed = torch.einsum("btk,bth->bkh", mu, embeddings)  # (B, K, H)
    features = summed / count.clamp_min(1).unsqueeze(-1)  # Eq. 6
    valid = (count > 0) & (labels > 0)
    return features * valid.unsqueeze(-1).to(features.dtype), valid


@torch.no_grad()
def momentum_enqueue(
    memory: Tensor, count: Tensor, pointer: Tensor, features: Tensor, rows: Tensor, alpha: float = 0.99
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class FIFO queues updated with the momentum of Eq. 8: ``m_c <- (1 - alpha) m_c + alpha beta_c``.

    Shapes: memory (R, Q, H) with R rows (classes, background last) of Q slots; count (R,)
    long, how many slots of each row have ever been written (<= Q); pointer (R,) long, the
    row's next slot; features (N, H) new regional features beta; rows (N,) long, the row of
    each -> new (memory, count, pointer); the inputs are not modified.

    Each feature goes to its row's slot at the pointer, i.e. the slot a FIFO queue would
    evict next (the oldest entry), and the pointer advances cyclically. That slot m_c is
    updated exactly as Eq. 8 says, so with alpha = 0.99 the new feature replaces the oldest
    one up to a 1% trace of it. A slot that was never written holds no feature to average
    with, so the first visit stores beta as it is (otherwise the zero initialisation would
    shrink it by alpha). Several features of one row in a call take successive slots in the
    given order, exactly as if they were enqueued one at a time.
    """
    memory = memory.clone()
    count = count.clone()
    pointer = pointer.clone()
    n = rows.shape[0]
    if n == 0:
        return memory, count, pointer
    q = memory.shape[1]
    features = features.detach().to(memory.dtype)
    # One host round-trip for the bookkeeping; the writes themselves are vectorised.
    row_list = rows.tolist()
    ptr = pointer.tolist()
    cnt = count.tolist()
    slots, fresh, rounds = [], [], []
    seen: dict[tuple[int, int], int] = {}
    for r in row_list:
        s = ptr[r]
        slots.append(s)
        fresh.append(cnt[r] <= s)  # a slot at or beyond the fill level was never written
        rounds.append(seen.get((r, s), 0))  # > 0 only when one call wraps a whole queue
        seen[(r, s)] = rounds[-1] + 1
        ptr[r] = (s + 1) % q
        cnt[r] = min(cnt[r] + 1, q)
    device = memory.device
    rows_t = rows.to(device=device, dtype=torch.long)
    slots_t = torch.tensor(slots, device=device, dtype=torch.long)
    fresh_t = torch.tensor(fresh, device=device, dtype=torch.bool)
    rounds_t = torch.tensor(rounds, device=device, dtype=torch.long)
    for k in range(max(rounds) + 1):  # successive writes to one slot are applied in order
        sel = rounds_t == k
        r, s = rows_t[sel], slots_t[sel]
        old = memory[r, s]  # (n_k, H)
        new = features[sel]
        blended = (1 - alpha) * old + alpha * new  # Eq. 8
        is_fresh = fresh_t[sel] & (k == 0)
        memory[r, s] = torch.where(is_fresh.unsqueeze(-1), new, blended)
    count = torch.tensor(cnt, device=count.device, dtype=count.dtype)
    pointer = torch.tensor(ptr, device=pointer.device, dtype=pointer.dtype)
    return memory, count, pointer


def noise_tolerant_contrastive(
    anchors: Tensor,
    anchor_rows: Tensor,
    memory: Tensor,
    memory_valid: Tensor,
    temperature: float = 0.1,
    lam: float = 0.5,
    q: float = 0.2,
    reduction: str = "mean",
    per_anchor_out: bool = False,
) -> Tensor:
    """Memory-guided noise-tolerant contrastive loss L_cont (Eq. 9), averaged over anchors.

    Shapes: anchors (N, H) regional features beta_c; anchor_rows (N,) long, the memory row
    (class, background last) of each; memory (R, Q, H); memory_valid (R, Q) bool, which
    slots hold a feature -> scalar.

    With cosine similarities s = <beta_c, r> / tau, positives P_c = the valid slots of row c
    and negatives N_c = the valid slots of every other row (other classes and background),
    each positive r+ contributes

        -(1/q) exp(q s+) + (1/q) [lam (exp(s+) + sum_{r-} exp(s-))]^q.

    ``reduction="sum"`` sums over P_c as Eq. 9 is written; ``"mean"`` (default) divides by
    |P_c|, which only rescales the loss by the number of stored positives -- that number
    grows from 0 to q = 500 while the queues fill, and dividing keeps the weight mu of
    Eq. 17 meaningful throughout. The result is the mean over anchors that have at least one
    positive (0, still attached to the graph, when none has); ``per_anchor_out=True`` returns
    those anchors' losses (N',) instead, for a mean taken elsewhere (over torchrun's ranks).

    Limits (Sec. III-C2): as q -> 0 each term tends to ``-log(exp(s+) / (exp(s+) + sum
    exp(s-))) + log(lam)``, the InfoNCE loss up to a constant, whose gradient weights hard
    (low-similarity) positives most; at q = 1 it is ``-(1 - lam) exp(s+) + lam sum exp(s-)``,
    the bounded symmetric form (RINCE), whose gradient weights easy positives most, so that
    noisy (false) positives cannot dominate. Computed in the log domain with ``expm1`` so
    that it is finite for any tau and exact as q -> 0.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}; choose mean or sum")
    if not 0 < q <= 1:
        raise ValueError(f"q={q} must be in (0, 1]")
    if not 0 < lam <= 1:
        raise ValueError(f"lam={lam} must be in (0, 1]")
    r = memory.shape[0]
    if anchors.shape[0] == 0:
        return anchors[:, 0] if per_anchor_out else anchors.sum() * 0
    a = F.normalize(anchors, dim=-1)  # (N, H)
    m = F.normalize(memory.detach().to(anchors.dtype), dim=-1)  # (R, Q, H)
    sim = torch.einsum("nh,rqh->nrq", a, m) / temperature  # (N, R, Q)
    valid = memory_valid.to(torch.bool).unsqueeze(0).expand_as(sim)  # (N, R, Q)
    own = F.one_hot(anchor_rows.long(), r).to(torch.bool).unsqueeze(-1)  # (N, R, 1)
    pos = valid & own  # (N, R, Q)
    neg = valid & ~own
    neg_lse = torch.logsumexp(sim.masked_fill(~neg, float("-inf")), dim=(1, 2))  # (N,): log sum exp(s-)
    # log(exp(s+) + sum exp(s-)) per positive; logaddexp handles an empty negative set (-inf).
    total = torch.logaddexp(sim, neg_lse[:, None, None])  # (N, R, Q)
    log_lam = math.log(lam)
    # (1/q)[exp(q b) - exp(q a)] = (1/q)[expm1(q b) - expm1(q a)], a = s+, b = log lam + total
    term = (torch.expm1(q * (log_lam + total)) - torch.expm1(q * sim)) / q  # (N, R, Q)
    term = term.masked_fill(~pos, 0.0)
    n_pos = pos.sum((1, 2))  # (N,)
    per_anchor = term.sum((1, 2))
    if reduction == "mean":
        per_anchor = per_anchor / n_pos.clamp_min(1)
    has_pos = n_pos > 0
    if per_anchor_out:
        return per_anchor[has_pos]
    if not bool(has_pos.any()):
        return anchors.sum() * 0
    return per_anchor[has_pos].mean()


def segment_uncertainty(cam_logits: Tensor, pseudo_logits: Tensor) -> Tensor:
    """Per-segment uncertainty D_t (Eq. 15): KL(A(t) || A_hat(t)) over the class axis.

    Shapes: cam_logits (..., K) logits of the main branch's TCAM A; pseudo_logits (..., K)
    logits of the pseudo-TCAM A_hat (Eq. 14); both are softmax-normalised over K here ->
    (...,) ``sum_c A log(A / A_hat)`` >= 0. Both inputs keep their gradients.
    """
    log_a = F.log_softmax(cam_logits, dim=-1)
    log_p = F.log_softmax(pseudo_logits, dim=-1)
    return (log_a.exp() * (log_a - log_p)).sum(-1)


def uncertainty_weighted_pseudo_loss(
    cam_logits: Tensor,
    pseudo_logits: Tensor,
    mask: Tensor | None = None,
    rho: float = 0.001,
    use_uncertainty: bool = True,
    detach_target: bool = True,
    detach_weight: bool = False,
) -> Tensor:
    """Uncertainty-weighted pseudo-label supervision L_ps (Eq. 16), mean over videos.

    Shapes: cam_logits (B, T, K) logits of the main TCAM A (the student); pseudo_logits
    (B, T, K) logits of the pseudo-TCAM A_hat (Eq. 14); mask (B, T) bool, True = real step
    -> scalar. Per video, over its T real steps:

        (1/T) sum_t [ exp(-D_t) CE(A(t), A_hat(t)) + rho D_t ],

    with ``CE(A, A_hat) = -sum_c A_hat_c log A_c`` (A_hat is the label) and D_t of Eq. 15.
    ``use_uncertainty=False`` is the ablation without uncertainty weighting:
    ``(1/T) sum_t CE(A(t), A_hat(t))``.

    Gradients: A_hat is a label inside CE, so ``detach_target=True`` stops its gradient
    there; D_t keeps the gradients of both sides in both places, as Eq. 16 is written (the
    rho D_t term exists, the paper says, to stop the model from predicting ever larger
    variances, which it can only do if D_t is differentiable inside exp(-D_t)).
    ``detach_weight=True`` stops the gradient through the weight exp(-D_t) only: the
    literal form is minimised per step at ``D_t = ln(CE / rho)`` (about 8 for rho = 1e-3),
    where the pseudo-labels no longer teach anything (docs/methods/rmgcl.md).
    """
    log_a = F.log_softmax(cam_logits, dim=-1)  # (B, T, K)
    target = F.softmax(pseudo_logits.detach() if detach_target else pseudo_logits, dim=-1)
    ce = -(target * log_a).sum(-1)  # (B, T)
    if use_uncertainty:
        d = segment_uncertainty(cam_logits, pseudo_logits)  # (B, T), Eq. 15
        weight_d = d.detach() if detach_weight else d
        per_step = torch.exp(-weight_d) * ce + rho * d
    else:
        per_step = ce
    weight = torch.ones_like(per_step) if mask is None else mask.to(per_step.dtype)
    per_video = (per_step * weight).sum(-1) / weight.sum(-1).clamp_min(1)  # (B,)
    return per_video.mean()

