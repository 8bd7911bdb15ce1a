"""Model outputs -> :class:`~taltoolkit.structures.Detections` in seconds.

Two post-processors, both registered (kind ``"postprocessor"``) and configured by
``conf/postprocess/*.yaml`` whose keys are the keyword arguments below:

- ``cas_to_proposals`` (``"cas_to_proposals"``): the weakly-/un-supervised recipe of
  BaS-Net / CoLA / ACM-Net / CASE / COPL-style code. Threshold a class activation sequence
  (and optionally a class-agnostic actionness sequence) at several levels, turn each run of
  consecutive above-threshold steps into a proposal scored by the outer-inner contrast
  (OIC), then per-class NMS.
- ``segment_postprocess`` (``"segment_nms"``): ActionFormer-style post-processing for
  detectors that regress segments directly (score filter, top-k, duration filter,
  Soft-NMS / NMS per class, optional voting, cap).

Time convention (:mod:`taltoolkit.structures`): feature step ``j`` covers
``[offset_s + j * step_s, offset_s + (j + 1) * step_s)`` seconds and a continuous grid
coordinate ``x`` is ``offset_s + x * step_s`` seconds. With an upsampling factor ``s``,
upsampled step ``k`` covers grid coordinates ``[k / s, (k + 1) / s)``, so a run of upsampled
steps ``a .. b - 1`` is the segment ``[a / s, b / s)`` in grid coordinates -- no half-step
shift. For a sampled sequence, ``positions[i]`` is the original step of sampled step ``i``;
sampled step ``i`` then covers original grid coordinates ``[positions[i], positions[i] +
span_i)`` with ``span_i = max(positions[i + 1] - positions[i], 1)`` (the last step spans
1): consecutive sampled steps tile the original grid when sampling is sparse, and repeated
positions (an upsampled short video) each cover their one original step.

This module imports numpy only; torch is imported when NMS runs, so that importing the
package (e.g. for :mod:`taltoolkit.postprocess.results_io`) stays fast.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from taltoolkit.evaluation.stages import stage, timed
from taltoolkit.registry import register
from taltoolkit.structures import Detections

__all__ = ["cas_to_proposals", "segment_postprocess", "detections_from_segments"]

_NMS_KINDS = ("hard", "soft", "one_pass_soft", "none")


def _np(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """An array-like or (CPU/GPU) torch tensor as a numpy array of ``dtype``."""
    if hasattr(x, "detach"):  # a torch tensor; avoid importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _empty(n: int = 0) -> Detections:
    return Detections(np.zeros((n, 2), np.float64), np.zeros((n,), np.float64), np.zeros((n,), np.int64))


# ----------------------------------------------------------------------------- time mapping


def _positions(positions: Any) -> np.ndarray:
    pos = _np(positions, np.float64).reshape(-1)
    if pos.size and (np.any(np.diff(pos) < 0) or pos[0] < 0):
        raise ValueError("positions must be non-negative and non-decreasing (original step index of each step)")
    return pos


def _spans(pos: np.ndarray) -> np.ndarray:
    span = np.ones_like(pos)
    if pos.size > 1:
        span[:-1] = np.maximum(np.diff(pos), 1.0)
    return span


def _runs_to_seconds(
    a: np.ndarray, b: np.ndarray, upsample: int, step_s: float, offset_s: float, positions: Optional[np.ndarray]
) -> np.ndarray:
    """Runs of upsampled steps [a, b) (b exclusive) -> (P, 2) seconds."""
    if positions is None:
        return offset_s + np.stack([a / upsample, b / upsample], 1) * step_s
    span = _spans(positions)
    i0, f0 = a // upsample, (a % upsample) / upsample  # first upsampled step a
    i1, f1 = (b - 1) // upsample, ((b - 1) % upsample + 1) / upsample  # end of step b - 1
    start = positions[i0] + f0 * span[i0]
    end = positions[i1] + f1 * span[i1]
    return offset_s + np.stack([start, end], 1) * step_s


# ----------------------------------------------------------------------------- upsampling


def _upsample(x: np.ndarray, factor: int, interpolation: str) -> np.ndarray:
    """(T, K) -> (T * factor, K). Upsampled step k covers [k / factor, (k + 1) / factor).

    ``"nearest"`` repeats each step ``factor`` times. ``"linear"`` interpolates linearly
    between step centres (step j's value sits at coordinate j + 0.5), sampling at the
    centres (k + 0.5) / factor of the upsampled steps and holding the first/last value
    beyond the outermost centres; centring keeps each value over the seconds it describes.
    ``"start_linear"`` is the public codes' rule instead (:func:`upgrade_resolution`): values
    anchored at step starts, the last ``factor - 1`` samples extrapolated.
    """
    if factor == 1:
        return x
    t = x.shape[0]
    if interpolation == "nearest":
        return np.repeat(x, factor, axis=0)
    if interpolation == "start_linear":
        return upgrade_resolution(x, factor)
    u = np.clip((np.arange(t * factor) + 0.5) / factor - 0.5, 0.0, t - 1)  # source index
    i0 = np.floor(u).astype(np.int64)
    i1 = np.minimum(i0 + 1, t - 1)
    w = (u - i0)[:, None]
    return x[i0] * (1.0 - w) + x[i1] * w


def upgrade_resolution(x: np.ndarray, scale: int) -> np.ndarray:
    """BaS-Net / CASE / ACM-Net upsampling ("start_linear"): (T, K) -> (len(arange(0, T, 1 / scale)), K).

    Values anchored at step starts, sampled at ``arange(0, T, 1 / scale)``, the last samples
    extrapolated along the last segment's slope (the public codes' ``interp1d(...,
    fill_value="extrapolate")``). A one-step sequence (nothing to interpolate between) is
    repeated ``scale`` times.
    """
    t = x.shape[0]
    if scale == 1:
        return x
    if t < 2:
        return np.repeat(x, scale, axis=0)
    from scipy.interpolate import interp1d  # deferred: the package imports fast without scipy

    f = interp1d(np.arange(t), x, kind="linear", axis=0, fill_value="extrapolate")
    return f(np.arange(0, t, 1 / scale))


# ----------------------------------------------------------------------------- NMS glue


@timed("nms")
def _nms_select(
    segs: np.ndarray, scores: np.ndarray, labels: np.ndarray, nms: str, iou_threshold: float,
    sigma: float = 0.5, min_score: Optional[float] = None, method: str = "gaussian",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-label NMS on numpy arrays -> (kept indices, their scores) by decreasing score."""
    if nms == "none" or len(scores) == 0:
        order = np.lexsort((np.arange(len(scores)), -scores))
        return order, scores[order]
    import torch  # deferred: see the module docstring

    from taltoolkit.postprocess.suppression import batched_nms, soft_nms_indices

    s_t, c_t, l_t = torch.from_numpy(segs), torch.from_numpy(scores), torch.from_numpy(labels)
    if nms == "hard":
        keep = batched_nms(s_t, c_t, l_t, iou_threshold).numpy()
        return keep, scores[keep]
    if nms == "one_pass_soft":
        from taltoolkit.postprocess.suppression import one_pass_soft_nms_indices

        idx, sc = one_pass_soft_nms_indices(s_t, c_t, l_t, iou_threshold=iou_threshold, sigma=sigma)
        return idx.numpy(), sc.numpy()
    idx, sc = soft_nms_indices(s_t, c_t, l_t, iou_threshold=iou_threshold, sigma=sigma,
                               min_score=min_score, method=method)
    return idx.numpy(), sc.numpy().astype(np.float64)


# ----------------------------------------------------------------------------- CAS -> proposals

_DEFAULT_CAS_THRESHOLDS = tuple(round(0.025 * i, 3) for i in range(10))  # BaS-Net: arange(0, 0.25, 0.025)
_DEFAULT_ACTIONNESS_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 10))


_CONTRASTS = ("masked", "raw", "masked_cas")


@register("postprocessor", "cas_to_proposals")
def cas_to_proposals(
    cas: np.ndarray,
    class_scores: np.ndarray,
    actionness: Optional[np.ndarray] = None,
    *,
    step_s: float,
    offset_s: float = 0.0,
    positions: Optional[np.ndarray] = None,
    duration: Optional[float] = None,
    cas_thresholds: Sequence[float] = _DEFAULT_CAS_THRESHOLDS,
    actionness_thresholds: Sequence[float] = _DEFAULT_ACTIONNESS_THRESHOLDS,
    class_threshold: float = 0.25,
    upsample: int = 24,
    interpolation: str = "linear",
    inflation: float = 0.25,
    score_weight: float = 0.2,
    contrast: str = "masked",
    outer_rounding: str = "ceil",
    nms: str = "hard",
    nms_threshold: float = 0.7,
    sigma: float = 0.3,
    top_k: Optional[int] = None,
) -> Detections:
    """Class activation sequence -> scored proposals in seconds (multi-threshold + OIC + NMS).

    Inputs: ``cas (T, C)`` class activation probabilities on the video's feature grid (no
    background column), ``class_scores (C,)`` video-level scores, optional ``actionness
    (T,)``; timing ``step_s``, ``offset_s`` and, for a sampled sequence, ``positions (T,)``
    (module docstring); ``duration`` (seconds) clips the output when given.

    1. Classes with ``class_scores >= class_threshold`` are localized (none: the top-1).
    2. The sequences are upsampled by the integer ``upsample`` (``interpolation`` "linear",
       "nearest" or BaS-Net's "start_linear", see :func:`_upsample`).
    3. Levels: for each ``t`` in ``cas_thresholds`` a class's steps with ``cas >= t``; when
       ``actionness`` is given, also for each ``t`` in ``actionness_thresholds`` the steps
       with ``actionness >= t`` (for every localized class). Each maximal run of such steps
       is a proposal.
    4. Score (outer-inner contrast): ``mean(inner) - mean(outer) + score_weight *
       class_scores[c]`` on the class's CAS, where the outer region is
       ``ceil(inflation * L)`` steps on each side of a run of ``L`` steps (clipped to the
       sequence; its mean is 0 when empty). ``contrast="masked"`` (BaS-Net/CoLA)
       counts the steps outside the level's mask as 0; ``"raw"`` (CO2-Net/DELU) uses the
       CAS as is; ``"masked_cas"`` (ACM-Net) masks the CAS levels' sequences and scores the
       actionness levels' runs on the raw CAS. ``outer_rounding="ceil"`` takes
       ``ceil(inflation * L)`` steps on both sides; ``"bas"`` rounds as BaS-Net's and CASE's
       ``int()`` does (truncation: ceil on the left, floor on the right).
    5. Runs -> seconds exactly (module docstring), per-class NMS: ``nms="hard"``
       (:func:`~taltoolkit.postprocess.suppression.batched_nms`, IoU > ``nms_threshold``),
       ``"soft"`` (gaussian Soft-NMS with ``sigma``, no score floor, as CO2-Net),
       ``"one_pass_soft"`` (BaS-Net's and CASE's one pass,
       :func:`~taltoolkit.postprocess.suppression.one_pass_soft_nms_indices`) or ``"none"``; keep the ``top_k`` best (all when None); clip to ``[0, duration]``
       (``duration`` None: below at 0 only).

    Returns Detections sorted by decreasing score, labels are class ids of ``cas`` columns.
    """
    if nms not in _NMS_KINDS:
        raise ValueError(f"nms must be one of {_NMS_KINDS}, got {nms!r}")
    if contrast not in _CONTRASTS:
        raise ValueError(f"contrast must be one of {_CONTRASTS}, got {contrast!r}")
    if interpolation not in ("linear", "nearest", "start_linear"):
        raise ValueError(f"interpolation must be 'linear', 'nearest' or 'start_linear', got {interpolation!r}")
    if outer_rounding not in ("ceil", "bas"):
        raise ValueError(f"outer_rounding must be 'ceil' or 'bas', got {outer_rounding!r}")
    upsample = int(upsample)
    if upsample < 1:
        raise ValueError(f"upsample must be an integer >= 1, got {upsample}")
    if not step_s > 0:
        raise ValueError(f"step_s must be > 0, got {step_s}")
    cas = _np(cas)
    if cas.ndim != 2:
        raise ValueError(f"cas must have shape (T, C), got {cas.shape}")
    t, c = cas.shape
    class_scores = _np(class_scores).reshape(-1)
    if class_scores.shape[0] != c:
        raise ValueError(
            f"class_scores must have shape ({c},) to match cas (T, C) = {cas.shape}, got {class_scores.shape}")
    pos = None
    if positions is not None:
        pos = _positions(positions)
        if pos.shape[0] != t:
            raise ValueError(f"positions must have shape ({t},), got {pos.shape}")
    act = None
    if actionness is not None:
        act = _np(actionness).reshape(-1)
        if act.shape[0] != t:
            raise ValueError(f"actionness must have shape ({t},), got {act.shape}")
    if t == 0 or c == 0:
        return _empty()

    chosen = np.flatnonzero(class_scores >= class_threshold)
    if chosen.size == 0:
        chosen = np.array([int(np.argmax(class_scores))])
    k = chosen.size
    seq = _upsample(cas[:, chosen], upsample, interpolation)  # (T', K)
    tu = seq.shape[0]

    # Level masks, one row per (level, class): (R, T').
    cas_thr = np.asarray(list(cas_thresholds), dtype=np.float64)
    masks = [(seq.T[None, :, :] >= cas_thr[:, None, None]).reshape(-1, tu)]  # (Lc * K, T')
    row_class = [np.tile(np.arange(k), cas_thr.size)]
    if act is not None:
        act_thr = np.asarray(list(actionness_thresholds), dtype=np.float64)
        act_up = _upsample(act[:, None], upsample, interpolation)[:, 0]  # (T',)
        a_mask = act_up[None, :] >= act_thr[:, None]  # (La, T')
        masks.append(np.repeat(a_mask, k, axis=0))  # (La * K, T'), class fastest
        row_class.append(np.tile(np.arange(k), act_thr.size))
    mask = np.concatenate(masks, 0)  # (R, T')
    rc = np.concatenate(row_class)  # (R,) column of `seq` for each row
    if mask.shape[0] == 0:
        return _empty()

    # Runs of consecutive True steps: +1 / -1 transitions of the zero-padded mask.
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)  # (R, T' + 1)
    run_row, a = np.nonzero(edges == 1)  # (P,) row-major, so starts and ends pair up in order
    _, b = np.nonzero(edges == -1)  # (P,) exclusive ends
    if a.size == 0:
        return _empty()
    labels = chosen[rc[run_row]].astype(np.int64)  # (P,)

    # Outer-inner contrast from prefix sums of the contrast sequence of each run's row
    # ("raw": all rows of a class share one sequence, so one prefix sum per class).
    if contrast == "masked":
        values, seq_row = seq.T[rc] * mask, run_row  # (R, T')
    elif contrast == "masked_cas":
        contrast_mask = mask.copy()
        contrast_mask[cas_thr.size * k :] = True  # actionness rows: the CAS unmasked
        values, seq_row = seq.T[rc] * contrast_mask, run_row  # (R, T')
    else:
        values, seq_row = seq.T, rc[run_row]  # (K, T')
    csum = np.zeros((values.shape[0], tu + 1), np.float64)
    np.cumsum(values, axis=1, out=csum[:, 1:])  # csum[r, j] = sum(values[r, :j])
    length = b - a
    inner = (csum[seq_row, b] - csum[seq_row, a]) / length
    if outer_rounding == "bas":
        # int() truncates toward zero: the outer region is [int(a - r), a) and (b - 1, int(b - 1 + r)].
        lo = np.maximum(np.trunc(a - inflation * length), 0).astype(np.int64)
        hi = np.minimum(np.trunc(b - 1 + inflation * length).astype(np.int64) + 1, tu)
    else:
        m = np.ceil(inflation * length).astype(np.int64) if inflation > 0 else np.zeros_like(length)
        lo = np.maximum(a - m, 0)
        hi = np.minimum(b + m, tu)
    outer_n = (a - lo) + (hi - b)
    outer_sum = (csum[seq_row, a] - csum[seq_row, lo]) + (csum[seq_row, hi] - csum[seq_row, b])
    outer = np.where(outer_n > 0, outer_sum / np.maximum(outer_n, 1), 0.0)
    scores = inner - outer + score_weight * class_scores[labels]

    segs = _runs_to_seconds(a, b, upsample, step_s, offset_s, pos)  # (P, 2)
    keep, kept_scores = _nms_select(segs, scores, labels, nms, nms_threshold, sigma=sigma, min_score=None)
    if top_k is not None:
        keep, kept_scores = keep[:top_k], kept_scores[:top_k]
    # Clip (a no-op unless offset_s < 0 or the last step passes the duration).
    out = np.clip(segs[keep], 0.0, None if duration is None else float(duration))
    return Detections(out, kept_scores.astype(np.float64), labels[keep])


# ----------------------------------------------------------------------------- regressed segments


def detections_from_segments(
    segments: Any,
    scores: Any,
    labels: Any,
    step_s: Optional[float] = None,
    offset_s: float = 0.0,
    duration: Optional[float] = None,
) -> Detections:
    """Segments in grid coordinates (or seconds when ``step_s`` is None) -> Detections.

    Maps ``x -> offset_s + x * step_s``, then clips like ActionFormer after NMS: times below
    0 become 0 (always, so the results file stays valid) and, when ``duration`` is given,
    times above it become ``duration``. Accepts numpy arrays or torch tensors.
    """
    segs = _np(segments).reshape(-1, 2)
    sc = _np(scores).reshape(-1)
    lab = _np(labels, np.int64).reshape(-1)
    if not (segs.shape[0] == sc.shape[0] == lab.shape[0]):
        raise ValueError(f"segments {segs.shape}, scores {sc.shape} and labels {lab.shape} disagree in length")
    if step_s is not None:
        segs = offset_s + segs * float(step_s)
    segs = np.clip(segs, 0.0, None if duration is None else float(duration))
    return Detections(segs, sc, lab)


@register("postprocessor", "segment_nms")
def segment_postprocess(
    segments: Any,
    scores: Any,
    labels: Any,
    *,
    step_s: Optional[float] = None,
    offset_s: float = 0.0,
    duration: Optional[float] = None,
    pre_nms_thresh: float = 0.001,
    pre_nms_topk: int = 5000,
    duration_thresh: float = 0.05,
    nms_method: str = "soft",
    iou_threshold: float = 0.1,
    sigma: float = 0.5,
    min_score: float = 0.001,
    max_seg_num: int = 200,
    multiclass: bool = True,
    voting_thresh: float = 0.0,
    external_scores: Optional[str] = None,
    external_topk: int = 2,
    external_num_proposals: Optional[int] = 200,
    video: Optional[str] = None,
    classes: Optional[Sequence[str]] = None,
) -> Detections:
    """ActionFormer-style post-processing of regressed segments -> Detections in seconds.

    ``segments (N, 2)`` in continuous grid coordinates of the video's feature grid (the
    centre of step j is coordinate j + 0.5, so ActionFormer's point coordinates ``x``, which
    put step j at j, are passed as ``x + 0.5``: its ``(x * stride + 0.5 * num_frames) / fps``
    equals ``offset_s + (x + 0.5) * step_s`` for the layouts of structures.py), or in
    seconds when ``step_s`` is None; ``scores (N,)``;
    ``labels (N,)`` class ids. Steps, as ActionFormer's ``inference_single_video`` +
    ``postprocessing``:

    1. keep ``scores > pre_nms_thresh``; then the ``pre_nms_topk`` best (over all points and
       classes given; ActionFormer applies top-k per FPN level, which the caller can do
       before concatenating);
    2. keep segments longer than ``duration_thresh`` (units of ``segments``);
    3. ``nms_method``: ``"soft"`` (gaussian Soft-NMS, ``sigma``, scores below ``min_score``
       dropped), ``"hard"`` (greedy NMS after dropping ``scores <= min_score``; IoU >
       ``iou_threshold``) or ``"none"``; per class when ``multiclass`` (capped at
       ``max_seg_num`` per class) else class-agnostic;
    4. voting when ``voting_thresh > 0`` and not ``multiclass`` (ActionFormer disables it for
       multiclass NMS): kept segments become the score x IoU weighted mean of the candidates
       with IoU >= ``voting_thresh``;
    5. sort by score, keep ``max_seg_num``, map to seconds, clip below at 0 and, when
       ``duration`` is given, above at ``duration``;
    6. with ``external_scores=PATH`` (ActivityNet's fused protocol, :mod:`.fusion`): NMS is
       class-agnostic and the kept segments are proposals whose classes and scores come from
       the external video-level scores of ``video`` (``external_topk`` classes, the
       ``external_num_proposals`` best proposals; ``classes`` names the dataset's classes).
    """
    if external_scores:
        if video is None or classes is None:
            raise ValueError("postprocess.external_scores needs the video name and the class list (the evaluator "
                             "passes them)")
        from taltoolkit.postprocess.fusion import fuse_external_scores

        proposals = segment_postprocess(
            segments, scores, labels, step_s=step_s, offset_s=offset_s, duration=duration,
            pre_nms_thresh=pre_nms_thresh, pre_nms_topk=pre_nms_topk, duration_thresh=duration_thresh,
            nms_method=nms_method, iou_threshold=iou_threshold, sigma=sigma, min_score=min_score,
            max_seg_num=max_seg_num, multiclass=False, voting_thresh=voting_thresh,
        )
        return fuse_external_scores(proposals, video, external_scores, classes, topk=external_topk,
                                    num_proposals=external_num_proposals)
    if nms_method not in _NMS_KINDS:
        raise ValueError(f"nms_method must be one of {_NMS_KINDS}, got {nms_method!r}")
    segs = _np(segments).reshape(-1, 2)
    sc = _np(scores).reshape(-1)
    lab = _np(labels, np.int64).reshape(-1)
    if not (segs.shape[0] == sc.shape[0] == lab.shape[0]):
        raise ValueError(f"segments {segs.shape}, scores {sc.shape} and labels {lab.shape} disagree in length")
    keep = np.flatnonzero(sc > pre_nms_thresh)
    if pre_nms_topk is not None and keep.size > pre_nms_topk:
        # stable: equal scores keep their input order
        keep = keep[np.argsort(-sc[keep], kind="stable")[:pre_nms_topk]]
    keep = keep[(segs[keep, 1] - segs[keep, 0]) > duration_thresh]
    segs, sc, lab = segs[keep], sc[keep], lab[keep]
    voters = (segs, sc)  # voting uses all candidates that entered NMS, original scores

    if nms_method == "hard" and min_score is not None:
        ok = sc > min_score  # ActionFormer filters strictly before hard NMS
        segs, sc, lab = segs[ok], sc[ok], lab[ok]
    nms_labels = lab if multiclass else np.zeros_like(lab)
    if nms_method == "soft":
        import torch

        from taltoolkit.postprocess.suppression import soft_nms_indices

        with stage("nms"):
            idx_t, sc_t = soft_nms_indices(
                torch.from_numpy(segs), torch.from_numpy(sc), torch.from_numpy(nms_labels),
                iou_threshold=iou_threshold, sigma=sigma, min_score=min_score, method="gaussian",
                top_k=max_seg_num,
            )
        idx, new_sc = idx_t.numpy(), sc_t.numpy().astype(np.float64)
    else:
        idx, new_sc = _nms_select(segs, sc, nms_labels, nms_method, iou_threshold)
        if max_seg_num is not None and nms_method == "hard":
            # per-class cap (ActionFormer's NMSop max_num), then the overall cap below
            rank = _rank_within(nms_labels[idx])
            idx, new_sc = idx[rank < max_seg_num], new_sc[rank < max_seg_num]
    out_segs = segs[idx]
    if voting_thresh > 0 and not multiclass and idx.size:
        import torch

        from taltoolkit.postprocess.suppression import nms_voting

        out_segs = nms_voting(torch.from_numpy(out_segs), torch.from_numpy(voters[0]), torch.from_numpy(voters[1]),
                              voting_thresh).numpy()
    if max_seg_num is not None:
        out_segs, new_sc, idx = out_segs[:max_seg_num], new_sc[:max_seg_num], idx[:max_seg_num]
    return detections_from_segments(out_segs, new_sc, lab[idx], step_s, offset_s, duration)


def _rank_within(group: np.ndarray) -> np.ndarray:
    """For ids listed in priority order, each entry's position among entries of its id."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    first = np.searchsorted(g, g, side="left")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - first
    return rank

