"""ACM-Net's test-time proposals, with the conventions of its public code (postprocessor ``"acmnet_proposals"``).

RMGCL/GKSA cuts its proposals "as prior work" does (Sec. III-E3), i.e. as ACM-Net's public
inference. The general :func:`~taltoolkit.postprocess.proposals.cas_to_proposals` differs
from that code in several small conventions; this function keeps all of them, so that the
ACM-Net baseline is evaluated as its authors evaluated it:

1. classes: those whose video score is strictly above ``class_threshold`` when the best
   one is; otherwise the top-1 alone;
2. upsampling: linear interpolation with values anchored at step starts, sampled at
   ``arange(0, T, 1 / upsample)``, the last ``upsample - 1`` samples extrapolated along the
   last segment's slope (``scipy.interpolate.interp1d(..., fill_value="extrapolate")``);
3. CAS levels: for each threshold the CAS of the predicted classes with values below it set
   to 0; a run is a maximal set of consecutive steps ``>=`` the threshold, scored on
   ``(1 - actionness_mix) * masked CAS + actionness_mix * actionness``;
   actionness levels: runs of the instance attention ``>=`` the threshold, scored on
   ``(1 - actionness_mix) * CAS + actionness_mix * masked actionness`` (THUMOS14: mix 0, so
   the CAS levels are scored on the thresholded CAS and the actionness levels on the raw one);
4. runs shorter than ``min_length`` (2) upsampled steps are dropped;
5. outer-inner contrast: the outer region runs from ``int(a - lamb L)`` (at least 0) to
   ``int(b + lamb L)`` (at most the last step) around a run ``a .. b`` of ``L`` steps
   (``int`` truncates: ceil on the left, floor on the right); score
   ``mean(inner) - mean(outer) + gamma * class_score`` with ``gamma = cas_score_weight`` for
   CAS levels and ``actionness_score_weight`` for actionness levels;
6. seconds: run ``a .. b`` (inclusive) is ``[a, b + 1] * step_s / upsample`` (+ ``offset_s``);
7. per-class greedy NMS by decreasing score (numpy's ``argsort()[::-1]`` order), keeping a
   proposal when its IoU with the kept one is below ``nms_threshold``; IoU computed on
   seconds with ACM-Net's ``+ iou_offset`` (1) on lengths and intersections;
8. no cap on the number of proposals, and no clipping to the video's duration (``clip``).

Time: ``step_s`` is the seconds per step of the sequence given (the evaluator multiplies a
resampled test video's step by its ``step_scale``, which is ACM-Net's ``t_factor``).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Optional, Sequence, Union

import numpy as np

from taltoolkit.evaluation.stages import stage
from taltoolkit.postprocess.proposals import upgrade_resolution  # shared with CASE (interpolation="start_linear")
from taltoolkit.registry import register
from taltoolkit.structures import Detections

__all__ = ["acmnet_proposals", "acmnet_nms", "acmnet_oic", "threshold_levels", "upgrade_resolution"]

# A list of levels, or numpy's arange written as a string "arange(start, stop, step)" (or a
# {start, stop, step} mapping): ACM-Net writes its levels as aranges, whose values are not
# the rounded decimals (0.30000000000000004, ...), and a string merges with a list override.
Levels = Union[Sequence[float], Mapping[str, float], str]

_ARANGE = re.compile(r"^\s*(?:np\.)?arange\(\s*([^,]+),\s*([^,]+),\s*([^,)]+)\)\s*$")


def threshold_levels(spec: Levels) -> np.ndarray:
    """Threshold levels (L,) float64 from a sequence, ``"arange(start, stop, step)"`` or a mapping of those keys."""
    if isinstance(spec, str):
        m = _ARANGE.match(spec)
        if m is None:
            raise ValueError(f"threshold levels {spec!r}: give a list or 'arange(start, stop, step)'")
        return np.arange(*(float(v) for v in m.groups()))
    if isinstance(spec, Mapping):
        missing = {"start", "stop", "step"} - set(spec)
        if missing:
            raise ValueError(f"a threshold range needs start, stop and step; missing {sorted(missing)}")
        return np.arange(float(spec["start"]), float(spec["stop"]), float(spec["step"]))
    return np.asarray(list(spec), dtype=np.float64).reshape(-1)


def _runs(positions: np.ndarray) -> list[np.ndarray]:
    """Maximal runs of consecutive indices in a sorted index array."""
    if positions.size == 0:
        return []
    return np.split(positions, np.flatnonzero(np.diff(positions) != 1) + 1)


def acmnet_oic(
    runs_of: Sequence[np.ndarray], scores: np.ndarray, classes: np.ndarray, class_scores: np.ndarray,
    seconds_per_step: float, offset_s: float, inflation: float, gamma: float, min_length: int,
) -> list[list[float]]:
    """Proposals ``[class, score, start_s, end_s]`` of one level, classes in order.

    Shapes: runs_of[i] the indices (sorted) that pass the level for the i-th predicted class;
    scores (T', K) the sequence each class's runs are scored on (column i for classes[i]);
    class_scores (C,) video scores indexed by class id.
    """
    out: list[list[float]] = []
    last = scores.shape[0] - 1
    for i, pos in enumerate(runs_of):
        for run in _runs(np.asarray(pos)):
            n = len(run)
            if n < min_length:
                continue
            a, b = int(run[0]), int(run[-1])
            inner = float(np.mean(scores[run, i]))
            lo = max(0, int(a - inflation * n))  # int() truncates toward zero, as ACM-Net's code
            hi = min(last, int(b + inflation * n))
            outer_idx = list(range(lo, a)) + list(range(b + 1, hi + 1))
            outer = float(np.mean(scores[outer_idx, i])) if outer_idx else 0.0
            c = int(classes[i])
            score = inner - outer + gamma * float(class_scores[c])
            out.append([c, score, offset_s + a * seconds_per_step, offset_s + (b + 1) * seconds_per_step])
    return out


def acmnet_nms(proposals: np.ndarray, threshold: float, iou_offset: float = 1.0) -> np.ndarray:
    """Greedy NMS of one class's proposals (P, 4) ``[class, score, start, end]`` -> kept rows, best first.

    IoU as ACM-Net's code computes it: ``inter = max(0, min(e) - max(s) + off)``, lengths
    ``e - s + off`` (off = 1 on seconds there); a proposal survives while its IoU with every
    kept one is ``< threshold``. Order: ``scores.argsort()[::-1]`` (numpy's default sort).
    """
    if proposals.shape[0] == 0:
        return proposals
    x1, x2, scores = proposals[:, 2], proposals[:, 3], proposals[:, 1]
    areas = x2 - x1 + iou_offset
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        inter = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + iou_offset)
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou < threshold]
    return proposals[np.asarray(keep, dtype=np.int64)]


@register("postprocessor", "acmnet_proposals")
def acmnet_proposals(
    cas: Any,
    class_scores: Any,
    actionness: Optional[Any] = None,
    *,
    step_s: float,
    offset_s: float = 0.0,
    positions: Optional[Any] = None,
    duration: Optional[float] = None,
    cas_thresholds: Levels = "arange(0.15, 0.25, 0.05)",
    actionness_thresholds: Levels = "arange(0.15, 1.0, 0.05)",
    class_threshold: float = 0.25,
    upsample: int = 20,
    inflation: float = 0.2,
    cas_score_weight: float = 0.0,
    actionness_score_weight: float = 0.0,
    actionness_mix: float = 0.0,
    min_length: int = 2,
    nms_threshold: float = 0.55,
    iou_offset: float = 1.0,
    clip: bool = False,
) -> Detections:
    """Instance CAS (T, C) + video scores (C,) + instance attention (T,) -> Detections (module docstring).

    Defaults are ACM-Net's THUMOS14 values. ``clip=True`` clips the segments to
    ``[0, duration]`` (ACM-Net does not). Labels are ``cas`` column ids; the result is sorted
    by decreasing score.
    """
    if positions is not None:
        raise ValueError("acmnet_proposals maps steps to seconds by step_s only; positions are not supported")
    upsample = int(upsample)
    if upsample < 1:
        raise ValueError(f"upsample must be an integer >= 1, got {upsample}")
    if not step_s > 0:
        raise ValueError(f"step_s must be > 0, got {step_s}")
    cas = np.asarray(cas.detach().cpu() if hasattr(cas, "detach") else cas, dtype=np.float64)
    if cas.ndim != 2:
        raise ValueError(f"cas must have shape (T, C), got {cas.shape}")
    t, c = cas.shape
    scores = np.asarray(class_scores.detach().cpu() if hasattr(class_scores, "detach") else class_scores,
                        dtype=np.float64).reshape(-1)
    if scores.shape[0] != c:
        raise ValueError(f"class_scores must have shape ({c},), got {scores.shape}")
    empty = Detections(np.zeros((0, 2)), np.zeros((0,)), np.zeros((0,), np.int64))
    if t == 0 or c == 0:
        return empty

    if scores.max() > class_threshold:
        classes = np.flatnonzero(scores > class_threshold)
    else:
        classes = np.array([int(np.argmax(scores))])
    seq = upgrade_resolution(cas[:, classes], upsample)  # (T', K)
    att = None
    if actionness is not None:
        act = np.asarray(actionness.detach().cpu() if hasattr(actionness, "detach") else actionness,
                         dtype=np.float64).reshape(-1)
        if act.shape[0] != t:
            raise ValueError(f"actionness must have shape ({t},), got {act.shape}")
        att = np.repeat(upgrade_resolution(act[:, None], upsample), len(classes), axis=1)  # (T', K)
    per_step = step_s / upsample
    mix = float(actionness_mix)
    props: dict[int, list[list[float]]] = {}

    def add(level_props: list[list[float]]) -> None:
        for p in level_props:
            props.setdefault(int(p[0]), []).append(p)

    for thr in threshold_levels(cas_thresholds):
        masked = np.where(seq < thr, 0.0, seq)
        runs_of = [np.flatnonzero(masked[:, i] >= thr) for i in range(len(classes))]
        score_seq = masked if att is None or mix == 0 else (1 - mix) * masked + mix * att
        add(acmnet_oic(runs_of, score_seq, classes, scores, per_step, offset_s, inflation, cas_score_weight,
                       min_length))
    if att is not None:
        for thr in threshold_levels(actionness_thresholds):
            masked_att = np.where(att < thr, 0.0, att)
            runs_of = [np.flatnonzero(masked_att[:, i] >= thr) for i in range(len(classes))]
            score_seq = seq if mix == 0 else (1 - mix) * seq + mix * masked_att
            add(acmnet_oic(runs_of, score_seq, classes, scores, per_step, offset_s, inflation,
                           actionness_score_weight, min_length))

    with stage("nms"):
        kept = [acmnet_nms(np.asarray(p, dtype=np.float64), nms_threshold, iou_offset) for p in props.values()]
    if not kept:
        return empty
    allp = np.concatenate(kept, 0)  # (N, 4)
    order = np.argsort(-allp[:, 1], kind="stable")
    allp = allp[order]
    segs = allp[:, 2:4]
    if clip:
        segs = np.clip(segs, 0.0, None if duration is None else float(duration))
    return Detections(np.ascontiguousarray(segs), allp[:, 1].copy(), allp[:, 0].astype(np.int64))
