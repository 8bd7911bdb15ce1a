"""1-D non-maximum suppression on torch tensors: greedy NMS, Soft-NMS and segment voting.

Conventions shared by every function here:

- A segment is a row ``[start, end]`` with ``start <= end``, in any unit (grid steps or
  seconds). IoU is invariant to an affine change of unit, so NMS may run before or after the
  step -> seconds mapping of :mod:`taltoolkit.structures`.
- ``IoU(a, b) = inter / (len_a + len_b - inter)`` with ``inter = max(0, min(ends) - max(starts))``
  and no epsilon. A pair whose union is 0 (two zero-length segments at the same point) has
  IoU 0; torchvision gets NaN there and ``NaN > t`` is false, so NMS decisions are the same.
  Zero-length segments therefore never suppress and are never suppressed.
- Greedy NMS (``nms``, ``batched_nms``, Soft-NMS ``"hard"``/``"linear"``) suppresses when
  ``IoU > iou_threshold`` (strict, as ``torchvision.ops.nms``): threshold 1 suppresses
  nothing, threshold 0 suppresses every strictly overlapping lower-ranked segment; negative
  thresholds are rejected. ActionFormer's C++ kernel uses ``>=``; the two differ only at
  exact equality. Voting counts candidates with ``IoU >= voting threshold`` (as ActionFormer).
- Order and ties: results are sorted by decreasing score; equal scores are ordered by
  increasing input index (a stable descending sort, as torchvision's CPU kernel), and the
  same order decides which of two tied segments is processed first. NaN scores are rejected.
- Precision: float64 inputs are processed in float64, float32 in float32, other floating
  types in float32 and integer coordinates in float64. The threshold is compared as a
  double, like torchvision's ``ovr > iou_threshold`` in C++ (it is replaced by the nearest
  float32 on the correct side, so no float32 IoU is misclassified by rounding the threshold).
- Device: inputs may live on any device; outputs are on the inputs' device. There is no
  Python loop over segments or pairs. Greedy NMS runs blockwise in score order: a block is
  first checked against the segments kept in earlier blocks (only pairs that can overlap
  are formed, found by binary search on starts), then the rule "kept iff no kept
  higher-ranked segment overlaps it" is iterated inside the block to its fixed point. The
  fixed point is unique, so the result is exactly greedy NMS; the number of iterations is
  at most the longest suppression chain inside the block plus one. Soft-NMS runs in rounds
  (see :func:`soft_nms_indices`).
- Many videos at once: ``batched_nms(..., groups=video_ids)`` and
  ``soft_nms_indices(..., groups=video_ids)`` treat every (video, label) pair independently
  in one call; results are indices into the concatenated input.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "segment_iou",
    "nms",
    "batched_nms",
    "soft_nms",
    "soft_nms_indices",
    "one_pass_soft_nms_indices",
    "nms_voting",
]

# Rows per block of the blockwise greedy NMS: small enough that one fixed-point iteration
# (a (B, B) product) is cheap, large enough that the Python loop over blocks is short.
_BLOCK = 256
# Largest number of pairwise entries materialised at once (bounds memory for large N).
_PAIR_BUDGET = 1 << 22

_METHODS = ("gaussian", "linear", "hard")


# ----------------------------------------------------------------------------- helpers


def _work_dtype(x: Tensor) -> torch.dtype:
    if x.dtype == torch.float64:
        return torch.float64
    if x.is_floating_point():
        return torch.float32
    return torch.float64  # integer coordinates: float64 represents them exactly


def _check_threshold(t: float, name: str = "iou_threshold") -> float:
    t = float(t)
    if not t >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {t}")
    return t


def _threshold_for(dtype: torch.dtype, t: float, strict: bool) -> float:
    """A threshold ``t'`` exactly representable in ``dtype`` such that, for every ``x`` of
    ``dtype``, ``x > t'`` iff ``x > t`` (strict) or ``x >= t'`` iff ``x >= t`` in real numbers.

    torch compares a float32 tensor with a Python float after rounding the float to float32,
    which would misclassify an IoU lying between ``t`` and its float32 rounding.
    """
    t = float(t)
    if dtype == torch.float64 or not np.isfinite(t):
        return t
    f = np.float32(t)
    if strict and float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    elif not strict and float(f) < t:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def _iou(a: Tensor, len_a: Tensor, b: Tensor, len_b: Tensor) -> Tensor:
    """Pairwise IoU of a (M, 2) and b (K, 2) given their lengths -> (M, K)."""
    inter = (torch.minimum(a[:, None, 1], b[None, :, 1]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp_(min=0)
    union = len_a[:, None] + len_b[None, :] - inter
    # union == 0 only for two coincident zero-length segments: define IoU 0 (no NaN).
    return torch.where(union > 0, inter / union, torch.zeros((), dtype=inter.dtype, device=inter.device))


def _iou_rowwise(a: Tensor, b: Tensor) -> Tensor:
    """IoU of a[i] with b[i] for (M, 2) inputs -> (M,); same arithmetic as :func:`_iou`."""
    inter = (torch.minimum(a[:, 1], b[:, 1]) - torch.maximum(a[:, 0], b[:, 0])).clamp_(min=0)
    union = (a[:, 1] - a[:, 0]) + (b[:, 1] - b[:, 0]) - inter
    return torch.where(union > 0, inter / union, torch.zeros((), dtype=inter.dtype, device=inter.device))


def _iou_exceeds(a: Tensor, len_a: Tensor, b: Tensor, len_b: Tensor, thr: float) -> Tensor:
    """``IoU(a_i, b_j) > thr`` as an (M, K) bool matrix for ``thr >= 0``, same arithmetic as
    :func:`_iou` without its guard: an empty union gives 0/0 = NaN, which compares False
    exactly as the IoU 0 it stands for."""
    inter = (torch.minimum(a[:, None, 1], b[None, :, 1]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp_(min=0)
    union = len_a[:, None] + len_b[None, :] - inter
    return inter.div_(union) > thr


def _iou_rowwise_exceeds(a: Tensor, b: Tensor, thr: float) -> Tensor:
    """``IoU(a_i, b_i) > thr`` for (M, 2) inputs and ``thr >= 0`` (see :func:`_iou_exceeds`)."""
    inter = (torch.minimum(a[:, 1], b[:, 1]) - torch.maximum(a[:, 0], b[:, 0])).clamp_(min=0)
    union = (a[:, 1] - a[:, 0]) + (b[:, 1] - b[:, 0]) - inter
    return inter.div_(union) > thr


def _prepare(segments: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    segments = torch.as_tensor(segments)
    scores = torch.as_tensor(scores, device=segments.device)
    if segments.ndim != 2 or segments.shape[1] != 2:
        raise ValueError(f"segments must have shape (N, 2), got {tuple(segments.shape)}")
    if scores.shape != (segments.shape[0],):
        raise ValueError(f"scores must have shape ({segments.shape[0]},), got {tuple(scores.shape)}")
    if scores.is_floating_point() and bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN; their order would be undefined")
    return segments.to(_work_dtype(segments)), scores


def _compact_key(labels: Optional[Tensor], groups: Optional[Tensor], n: int, device: torch.device) -> Optional[Tensor]:
    """Ids 0..G-1, one per distinct (group, label) pair; None when everything is one group."""
    parts = [torch.as_tensor(x, device=device).long().reshape(-1) for x in (groups, labels) if x is not None]
    for x in parts:
        if x.shape[0] != n:
            raise ValueError(f"labels / groups must have shape ({n},), got {tuple(x.shape)}")
    if not parts:
        return None
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    key = torch.unique(parts[0], return_inverse=True)[1]
    for x in parts[1:]:
        # Compact each part first, so the combined code is small and cannot overflow
        # (and 1-D unique is much faster than unique over rows).
        x = torch.unique(x, return_inverse=True)[1]
        key = torch.unique(key * (int(x.max().item()) + 1) + x, return_inverse=True)[1]
    return key


def _score_order(scores: Tensor, idx: Tensor) -> Tensor:
    """Sort ``idx`` (original indices) by decreasing ``scores[idx]``, ties by increasing index."""
    idx = torch.sort(idx).values
    return idx[torch.sort(scores[idx], descending=True, stable=True).indices]


def _rank_in_group(group: Tensor) -> Tensor:
    """For ids listed in priority order, each entry's position among entries of its id."""
    gs = torch.sort(group, stable=True)
    first = torch.searchsorted(gs.values, gs.values)  # where each id's run starts
    rank = torch.empty_like(group)
    rank[gs.indices] = torch.arange(group.numel(), device=group.device) - first
    return rank


def _widen(start: Tensor, reach: Tensor) -> Tensor:
    """``start - reach`` moved a little further left, so that rounding in the caller's
    necessary-condition bound can never exclude a true candidate (the exact IoU decides)."""
    return start - reach - 1e-6 * (start.abs() + reach.abs() + 1.0)


def _ranges_by_key_start(
    ref_start: Tensor, ref_key: Optional[Tensor], q_lo: Tensor, q_hi: Tensor, q_key: Optional[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Sort references by (key, start); for each query find the run of references with the
    query's key and ``q_lo <= start < q_hi``.

    Returns ``perm (K,)`` (the sorted order of the references) and ``lo, hi (M,)`` positions
    in that order. Keys must be ids in 0..K. The (key, start) order is expressed with exact
    integer codes ``key * (K + 1) + rank(start)`` (rank = number of reference starts strictly
    below), so no float offset can lose precision.
    """
    base = ref_start.shape[0] + 1
    sorted_start = torch.sort(ref_start).values
    code = torch.searchsorted(sorted_start, ref_start.contiguous())  # (K,)
    a = torch.searchsorted(sorted_start, q_lo.contiguous())  # number of starts < q_lo
    b = torch.searchsorted(sorted_start, q_hi.contiguous())
    if ref_key is not None:
        assert q_key is not None
        code = ref_key * base + code
        a = q_key * base + a
        b = q_key * base + b
    code_sorted, perm = torch.sort(code, stable=True)
    return perm, torch.searchsorted(code_sorted, a), torch.searchsorted(code_sorted, b)


def _expand_ranges(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """All pairs (i, p) with lo[i] <= p < hi[i] -> (row (P,), position (P,))."""
    cnt = (hi - lo).clamp(min=0)
    total = int(cnt.sum().item())
    row = torch.repeat_interleave(torch.arange(lo.shape[0], device=lo.device), cnt)  # (P,)
    first = torch.cumsum(cnt, 0) - cnt  # offset of each row's first pair
    pos = lo[row] + torch.arange(total, device=lo.device) - first[row]
    return row, pos


def _range_min(values: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``min(values[lo[i]:hi[i]])`` for non-empty ranges, by a sparse table (log2 levels)."""
    m = values.shape[0]
    width = int((hi - lo).max().item())
    tables = [values]
    h = 1
    while 2 * h <= width:
        prev = tables[-1]
        nxt = torch.full_like(prev, torch.iinfo(prev.dtype).max)
        nxt[: m - h] = torch.minimum(prev[: m - h], prev[h:])  # min over [p, p + 2h)
        tables.append(nxt)
        h *= 2
    table = torch.stack(tables)  # (levels, M)
    pow2 = 2 ** torch.arange(table.shape[0], device=values.device)
    level = torch.searchsorted(pow2, hi - lo, right=True) - 1  # floor(log2(len)), exact
    return torch.minimum(table[level, lo], table[level, hi - pow2[level]])


# ----------------------------------------------------------------------------- IoU


def segment_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of 1-D segments: a (M, 2), b (K, 2) -> (M, K) (0 where the union is 0)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    dtype = torch.promote_types(_work_dtype(a), _work_dtype(b))
    a, b = a.to(dtype), b.to(dtype=dtype, device=a.device)
    return _iou(a, a[:, 1] - a[:, 0], b, b[:, 1] - b[:, 0])


# ----------------------------------------------------------------------------- greedy NMS


def _suppressed_by_kept(
    rows: Tensor, row_key: Optional[Tensor], kept: Tensor, kept_key: Optional[Tensor], thr: float
) -> Tensor:
    """Which rows (nb, 2) have IoU > thr with some kept segment (K, 2) of the same key -> (nb,).

    Only pairs that can reach IoU > thr >= 0 are formed: they overlap strictly, and a kept
    segment with IoU > thr to row i is shorter than len_i / thr, so its start lies in
    (start_i - min(len_i / thr, longest kept), end_i): one run per row in (key, start) order.
    """
    nb, dev = rows.shape[0], rows.device
    longest = (kept[:, 1] - kept[:, 0]).max()
    row_len = rows[:, 1] - rows[:, 0]
    reach = torch.minimum(row_len / thr, longest) if thr > 0 else longest.expand(nb)
    perm, lo, hi = _ranges_by_key_start(kept[:, 0], kept_key, _widen(rows[:, 0], reach), rows[:, 1], row_key)
    kept = kept[perm]
    cnt = (hi - lo).clamp(min=0)  # (nb,) candidate pairs per row
    sup = torch.zeros(nb, dtype=torch.bool, device=dev)
    total = int(cnt.sum().item())
    if total == 0:
        return sup
    per = max(1, int(nb * _PAIR_BUDGET // total))  # rows per chunk, ~_PAIR_BUDGET pairs
    for r0 in range(0, nb, per):
        row, pos = _expand_ranges(lo[r0:r0 + per], hi[r0:r0 + per])
        row = row + r0
        hit = _iou_rowwise_exceeds(rows[row], kept[pos], thr)
        sup[row[hit]] = True
    return sup


def _greedy_nms(segs: Tensor, scores: Tensor, key: Optional[Tensor], iou_threshold: float) -> Tensor:
    """Indices kept by greedy NMS (per ``key`` when given), sorted by decreasing score."""
    n = scores.shape[0]
    dev = scores.device
    thr = _threshold_for(segs.dtype, _check_threshold(iou_threshold), strict=True)
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=dev)
    # Processing order: by key (so a key's segments are contiguous), then by decreasing
    # score, ties by index. The order across keys is irrelevant: keys never interact.
    order = torch.sort(scores, descending=True, stable=True).indices  # (N,)
    k = None
    if key is not None:
        k = key[order]
        by_key = torch.sort(k, stable=True).indices
        order, k = order[by_key], k[by_key]
    s = segs[order]  # (N, 2) in processing order
    length = s[:, 1] - s[:, 0]  # (N,)

    keep = torch.zeros(n, dtype=torch.bool, device=dev)  # (N,) in processing order
    kept = torch.empty(0, dtype=torch.long, device=dev)  # positions kept so far, increasing
    bmax = min(_BLOCK, n)
    earlier = torch.ones(bmax, bmax, dtype=torch.bool, device=dev).tril_(-1)  # [i, j]: j ranked before i
    for b0 in range(0, n, _BLOCK):
        b1 = min(n, b0 + _BLOCK)
        nb = b1 - b0
        rs, rl = s[b0:b1], length[b0:b1]
        rk = None if k is None else k[b0:b1]
        # 1) Suppression by segments kept in earlier blocks: those decisions are final.
        cand = kept
        if rk is not None and cand.numel():
            # Kept positions have non-decreasing keys; keys below this block's first cannot match.
            cand = cand[int(torch.searchsorted(k[cand], rk[:1]).item()):]
        if cand.numel():
            alive = ~_suppressed_by_kept(rs, rk, s[cand], None if k is None else k[cand], thr)
        else:
            alive = torch.ones(nb, dtype=torch.bool, device=dev)
        # 2) Within the block: fixed point of keep[i] = alive[i] and no kept j < i overlaps i.
        hit = _iou_exceeds(rs, rl, rs, rl, thr)  # (nb, nb)
        hit &= earlier[:nb, :nb]
        if rk is not None:
            hit &= rk[:, None] == rk[None, :]
        hit &= alive[None, :]  # a suppressed segment suppresses nothing
        cur = alive
        if bool(hit.any()):
            hit_f = hit.to(s.dtype)
            while True:
                # (hit @ cur)[i] > 0 iff some currently kept j < i overlaps i (exact counts).
                nxt = alive & ~((hit_f @ cur.to(s.dtype)) > 0)
                if torch.equal(nxt, cur):
                    break
                cur = nxt
        keep[b0:b1] = cur
        kept = torch.cat([kept, b0 + torch.nonzero(cur).squeeze(1)])
    return _score_order(scores, order[keep])


def nms(segments: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy 1-D NMS with the semantics of ``torchvision.ops.nms``.

    segments (N, 2), scores (N,) -> LongTensor (K,) of kept indices sorted by decreasing
    score (ties: lower index first). A segment is dropped when its IoU with a kept,
    higher-ranked segment is ``> iou_threshold``.
    """
    segs, scores = _prepare(segments, scores)
    return _greedy_nms(segs, scores, None, iou_threshold)


def batched_nms(
    segments: Tensor,
    scores: Tensor,
    labels: Tensor,
    iou_threshold: float,
    groups: Optional[Tensor] = None,
) -> Tensor:
    """NMS independently per label (and per group, e.g. video id), as ``torchvision.ops.batched_nms``.

    segments (N, 2), scores (N,), labels (N,) int, optional groups (N,) int -> LongTensor (K,)
    of kept indices sorted by decreasing score over everything (ties: lower index first).
    Passing ``groups`` processes many videos in one call: segments of different videos or
    labels never suppress each other. Keys are compared directly instead of torchvision's
    coordinate offsets, so many videos x classes cannot cost float precision.
    """
    segs, scores = _prepare(segments, scores)
    key = _compact_key(labels, groups, scores.shape[0], segs.device)
    return _greedy_nms(segs, scores, key, iou_threshold)


# ----------------------------------------------------------------------------- Soft-NMS


def soft_nms_indices(
    segments: Tensor,
    scores: Tensor,
    labels: Optional[Tensor] = None,
    iou_threshold: float = 0.5,
    sigma: float = 0.5,
    min_score: Optional[float] = 1e-3,
    method: str = "gaussian",
    top_k: Optional[int] = None,
    groups: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017, as in ActionFormer) returning indices and decayed scores.

    Semantics of the sequential algorithm: repeatedly select the highest-scored remaining
    segment (ties: lower index) and multiply every remaining segment's score by a weight of
    its IoU with the selected one -- ``"gaussian"``: ``exp(-IoU**2 / sigma)`` (the reference
    implementations' form, without a factor 2); ``"linear"``: ``1 - IoU`` if
    ``IoU > iou_threshold`` else 1; ``"hard"``: 0 if ``IoU > iou_threshold`` else 1 (then the
    kept set equals :func:`batched_nms`). Segments whose score is below ``min_score``
    (initially or after a decay) are discarded and decay nothing; ``min_score=None`` keeps
    everything. Runs independently per label and per group (e.g. video id).

    ``top_k``: keep at most this many per (group, label), then at most this many per group
    (the whole input when ``groups`` is None), as ActionFormer's ``max_seg_num``.

    Returns ``(indices (K,), scores (K,))`` sorted by decreasing decayed score (ties: lower
    index first); the selected segments themselves are ``segments[indices]``.

    Computation: each round selects, in every key at once, all segments whose current score
    beats every remaining segment overlapping them. Such a segment would be selected by the
    sequential algorithm with its current score (overlapping ones only decrease, others do
    not touch it), so the result is the sequential one, in far fewer rounds (about the
    largest cluster of mutually overlapping segments). Weights of one round are multiplied
    together first, so scores can differ from a sequential run in the last bits. Negative
    scores (possible with ``min_score=None``) rise towards 0 when decayed, so among them only
    the best of each key is selected per round (exact, but sequential).
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"sigma must be > 0 for gaussian Soft-NMS, got {sigma}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 or None, got {top_k}")
    segs, scores = _prepare(segments, scores)
    n, dev = scores.shape[0], segs.device
    thr = _threshold_for(segs.dtype, _check_threshold(iou_threshold), strict=True)
    work = torch.promote_types(scores.dtype, torch.float32) if scores.is_floating_point() else torch.float64
    key = _compact_key(labels, groups, n, dev)
    key = torch.zeros(n, dtype=torch.long, device=dev) if key is None else key
    cand = torch.arange(n, device=dev)  # (M,) original index of each entry in play
    cur = scores.to(work)  # (M,) current scores
    if min_score is not None:
        live = cur >= min_score
        cand, cur = cand[live], cur[live]
    out_idx: list[Tensor] = []
    out_sc: list[Tensor] = []
    if cand.numel():
        seg, k = segs[cand], key[cand]  # (M, 2), (M,)
        # Window of each entry: same key, start in [start - longest of key, end) -- a superset
        # of the segments overlapping it, contiguous in (key, start) order.
        num_keys = int(k.max().item()) + 1
        longest = torch.zeros(num_keys, dtype=seg.dtype, device=dev).scatter_reduce(
            0, k, seg[:, 1] - seg[:, 0], "amax")
        perm, lo, hi = _ranges_by_key_start(seg[:, 0], k, _widen(seg[:, 0], longest[k]), seg[:, 1], k)
        lo, hi = lo[perm], hi[perm]
        cand, cur, seg, k = cand[perm], cur[perm], seg[perm], k[perm]
        pos = torch.arange(cand.numel(), device=dev)
        lo, hi = torch.minimum(lo, pos), torch.maximum(hi, pos + 1)  # include itself (zero length)
        alive = torch.ones(cand.numel(), dtype=torch.bool, device=dev)
        by_index = torch.sort(cand).indices  # positions in original-index order (tie-break)
        while True:
            m = cand.numel()
            n_alive = int(alive.sum().item())
            if n_alive == 0:
                break
            if n_alive <= m // 2:
                # Drop dead entries; windows stay contiguous runs of the survivors.
                prefix = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), torch.cumsum(alive.long(), 0)])
                lo, hi = prefix[lo[alive]], prefix[hi[alive]]
                cand, cur, seg, k = cand[alive], cur[alive], seg[alive], k[alive]
                m = cand.numel()
                alive = torch.ones(m, dtype=torch.bool, device=dev)
                by_index = torch.sort(cand).indices
            # Priority rank: decreasing score, ties by lower original index; dead entries last.
            prio = torch.where(alive, cur, torch.full((), float("-inf"), dtype=work, device=dev))
            order = by_index[torch.sort(prio[by_index], descending=True, stable=True).indices]
            rank = torch.empty(m, dtype=torch.long, device=dev)
            rank[order] = torch.arange(m, device=dev)
            rank = torch.where(alive, rank, m)
            # The best of each key is always safe to select. A positive segment that beats its
            # whole window is safe too: its overlapping rivals only decrease (and non-positive
            # scores, which a decay raises towards 0, never overtake a positive one).
            key_best = torch.full((num_keys,), m, dtype=torch.long, device=dev).scatter_reduce(0, k, rank, "amin")
            sel = (rank == key_best[k]) | ((rank == _range_min(rank, lo, hi)) & (cur > 0))
            sel &= alive  # (M,)
            out_idx.append(cand[sel])
            out_sc.append(cur[sel])
            alive &= ~sel
            # Decay the remaining segments overlapping a selected one.
            src = torch.nonzero(sel).squeeze(1)
            row, tgt = _expand_ranges(lo[src], hi[src])
            ok = alive[tgt]
            src, tgt = src[row[ok]], tgt[ok]
            if tgt.numel():
                iou = _iou_rowwise(seg[src], seg[tgt])
                if method == "gaussian":
                    w = torch.exp(-(iou * iou) / sigma)
                elif method == "linear":
                    w = torch.where(iou > thr, 1 - iou, torch.ones((), dtype=iou.dtype, device=dev))
                else:
                    w = (iou <= thr).to(iou.dtype)
                factor = torch.ones(m, dtype=work, device=dev).scatter_reduce(0, tgt, w.to(work), "prod")
                cur = cur * factor
                if min_score is not None:
                    alive &= cur >= min_score
    if not out_idx:
        return torch.empty(0, dtype=torch.long, device=dev), torch.empty(0, dtype=work, device=dev)
    sel_idx, sel_sc = torch.cat(out_idx), torch.cat(out_sc)
    # Final order: decreasing decayed score, ties by index (the sequential selection order).
    o = torch.sort(sel_idx).indices
    sel_idx, sel_sc = sel_idx[o], sel_sc[o]
    o = torch.sort(sel_sc, descending=True, stable=True).indices
    sel_idx, sel_sc = sel_idx[o], sel_sc[o]
    if top_k is not None:
        # The sequential selection order is by decreasing score, so "the first top_k
        # selections" of a key are its top_k scores.
        keep = _rank_in_group(key[sel_idx]) < top_k
        sel_idx, sel_sc = sel_idx[keep], sel_sc[keep]
        if groups is None:
            sel_idx, sel_sc = sel_idx[:top_k], sel_sc[:top_k]
        else:
            g = torch.as_tensor(groups, device=dev).long()[sel_idx]
            keep = _rank_in_group(g) < top_k
            sel_idx, sel_sc = sel_idx[keep], sel_sc[keep]
    return sel_idx, sel_sc


def soft_nms(
    segments: Tensor,
    scores: Tensor,
    labels: Optional[Tensor] = None,
    iou_threshold: float = 0.5,
    sigma: float = 0.5,
    min_score: Optional[float] = 1e-3,
    method: str = "gaussian",
    top_k: Optional[int] = None,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Soft-NMS of one video, per class when ``labels`` is given (ActionFormer's multiclass mode).

    segments (N, 2), scores (N,), labels (N,) | None -> ``(segments (K, 2), scores (K,),
    labels (K,) | None)`` sorted by decreasing decayed score. See :func:`soft_nms_indices`
    for the weights, ``min_score`` and ``top_k`` (per class, then overall); use that function
    with ``groups`` for many videos in one call.
    """
    idx, sc = soft_nms_indices(segments, scores, labels, iou_threshold, sigma, min_score, method, top_k)
    segs = torch.as_tensor(segments)
    lab = None if labels is None else torch.as_tensor(labels, device=segs.device)[idx]
    return segs[idx], sc, lab


# ----------------------------------------------------------------------------- one-pass Soft-NMS


def one_pass_soft_nms_indices(
    segments: Tensor,
    scores: Tensor,
    labels: Optional[Tensor] = None,
    iou_threshold: float = 0.4,
    sigma: float = 0.35,
    inclusive_iou: bool = True,
) -> tuple[Tensor, Tensor]:
    """BaS-Net's one-pass Soft-NMS, the post-processing of the public CASE and BaS-Net codes.

    Per class, greedily by decreasing score: the best remaining proposal is kept; every
    remaining one whose IoU with it is ``>= iou_threshold`` is decayed *once*, by
    ``exp(-IoU^2 / sigma)`` of its own score, and leaves the queue (it is still returned); the
    others stay in the queue. Proposals that never overlap enough keep their scores.
    ``inclusive_iou`` is the public code's convention for segments in seconds: lengths and
    intersections get ``+ 1`` (``x2 - x1 + 1``), as for integer frame ranges.

    segments (N, 2), scores (N,), labels (N,) | None -> ``(indices (N,), scores (N,))``: every
    proposal once, sorted by decreasing final score (ties by index).
    """
    segs = torch.as_tensor(segments, dtype=torch.float64).reshape(-1, 2)
    sc = torch.as_tensor(scores, dtype=torch.float64).reshape(-1).clone()
    n = sc.shape[0]
    _check_threshold(iou_threshold)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if n == 0:
        return torch.zeros(0, dtype=torch.long), sc
    lab = np.zeros(n, dtype=np.int64) if labels is None else torch.as_tensor(labels).reshape(-1).long().cpu().numpy()
    plus = 1.0 if inclusive_iou else 0.0
    # The queue walk runs on numpy arrays (a few microseconds a step instead of a few tens
    # for torch's per-call overhead on such small tensors); the IoU arithmetic is the same
    # float64 expression element by element, and the decay is applied once at the end in
    # torch, so the result equals the per-step torch formulation bit for bit.
    seg_np = segs.detach().cpu().numpy()
    sc_np = sc.detach().cpu().numpy()
    start, end = seg_np[:, 0], seg_np[:, 1]
    area = end - start + plus  # (N,)
    hit_idx: list[np.ndarray] = []  # proposals that leave the queue decayed, and their IoU
    hit_iou: list[np.ndarray] = []
    order_by_label = np.argsort(lab, kind="stable")
    bounds = np.flatnonzero(np.r_[True, lab[order_by_label][1:] != lab[order_by_label][:-1], True])
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        queue = order_by_label[lo:hi]
        queue = queue[np.argsort(-sc_np[queue], kind="stable")]  # (Q,) by decreasing score
        qs, qe, qa = start[queue], end[queue], area[queue]  # queue-ordered copies
        alive = np.arange(queue.size)  # positions in the queue still waiting
        while alive.size > 0:
            i, rest = alive[0], alive[1:]
            inter = np.maximum(np.minimum(qe[i], qe[rest]) - np.maximum(qs[i], qs[rest]) + plus, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0: NaN, never a hit (as in torch)
                iou = inter / (qa[i] + qa[rest] - inter)  # (Q - 1,)
            hit = iou >= iou_threshold
            if hit.any():
                hit_idx.append(queue[rest[hit]])
                hit_iou.append(iou[hit])
                alive = rest[~hit]
            else:
                alive = rest
    final = sc.clone()
    if hit_idx:
        idx = torch.from_numpy(np.concatenate(hit_idx)).to(sc.device)
        iou_t = torch.from_numpy(np.concatenate(hit_iou)).to(sc.device)
        final[idx] = sc[idx] * torch.exp(-iou_t ** 2 / sigma)
    order = torch.argsort(-final, stable=True)
    return order, final[order]


# ----------------------------------------------------------------------------- voting


def nms_voting(
    segments: Tensor,
    all_segments: Tensor,
    all_scores: Tensor,
    iou_threshold: float = 0.75,
    labels: Optional[Tensor] = None,
    all_labels: Optional[Tensor] = None,
) -> Tensor:
    """Segment voting after NMS (ActionFormer's ``seg_voting``): refine each kept segment.

    segments (K, 2) kept after NMS; all_segments (N, 2), all_scores (N,): the candidates
    before NMS with their original scores. Each kept segment becomes the weighted mean of the
    candidates with ``IoU >= iou_threshold`` to it, weight ``score * IoU``. With
    ``labels``/``all_labels`` only candidates of the same label vote. A kept segment without
    voters (or with zero total weight) is returned unchanged. Returns (K, 2).
    """
    segs = torch.as_tensor(segments)
    dtype = torch.promote_types(_work_dtype(segs), torch.float32)
    segs = segs.to(dtype)
    dev = segs.device
    cands = torch.as_tensor(all_segments, device=dev).to(dtype)
    w_all = torch.as_tensor(all_scores, device=dev).to(dtype)
    if (labels is None) != (all_labels is None):
        raise ValueError("nms_voting: give both labels and all_labels, or neither")
    thr = _threshold_for(dtype, _check_threshold(iou_threshold), strict=False)
    out = segs.clone()
    if segs.shape[0] == 0 or cands.shape[0] == 0:
        return out
    cand_len = cands[:, 1] - cands[:, 0]
    zero = torch.zeros((), dtype=dtype, device=dev)
    step = max(1, _PAIR_BUDGET // cands.shape[0])
    for r0 in range(0, segs.shape[0], step):
        r = segs[r0:r0 + step]
        iou = _iou(r, r[:, 1] - r[:, 0], cands, cand_len)  # (R, N)
        vote = iou >= thr
        if labels is not None:
            lab = torch.as_tensor(labels, device=dev)[r0:r0 + step]
            vote &= lab[:, None] == torch.as_tensor(all_labels, device=dev)[None, :]
        w = torch.where(vote, w_all[None, :] * iou, zero)  # (R, N)
        total = w.sum(1, keepdim=True)  # (R, 1)
        refined = (w @ cands) / torch.where(total > 0, total, torch.ones_like(total))
        out[r0:r0 + step] = torch.where(total > 0, refined, r)
    return out
