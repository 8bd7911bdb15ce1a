"""Detection mAP that reproduces the ActivityNet Challenge evaluation (``eval_detection.py``).

The official tool is a per-prediction pandas loop; this is a vectorised numpy re-derivation
of the same rule that returns bit-identical numbers. The rule, as the official tool applies
it (see ``docs/evaluation.md`` for the long form):

* Ground truth is restricted to the requested subset. The class list that enters the mean is
  the set of labels that occur in that subset's ground truth, in order of first appearance;
  a class of ``classes`` with no instance there gets AP ``NaN`` and stays out of the mean.
* Each class is scored on its own. Its predictions, in input order (videos in dict order,
  then the order inside each video), are ranked by ``np.argsort(scores)[::-1]``; ties in
  score therefore fall wherever numpy's default argsort puts them, which is what the
  official tool gets as well.
* Walking down that ranking, a prediction looks at the ground truth of its own video and
  class, ordered by ``np.argsort(tiou)[::-1]`` (ties in tIoU broken the same way), and at
  each threshold takes the first one that is not below the threshold and not yet taken.
  If there is none, or its video has no ground truth of that class (including videos
  outside the subset), it is a false positive.
* AP is the VOC-2011 interpolated area under the precision/recall curve; a class with
  ground truth but no predictions gets AP 0.

Deviations, all for inputs the official tool cannot handle: a prediction whose label is in
``classes`` but absent from the subset's ground truth is ignored (the official tool raises
``KeyError``; it cannot change any AP that enters the mean), labels outside ``classes`` and
malformed or reversed segments raise :class:`EvaluationError`, and the blocked-video list
the official tool downloads is not used (as ``check_status=False``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Mapping, Sequence

import numpy as np

from taltoolkit.evaluation.errors import EvaluationError
from taltoolkit.evaluation.presets import EvalPreset, get_preset

# The ActivityNet default: 0.5:0.95:0.05, as the nearest doubles to the decimal values.
DEFAULT_TIOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass
class DetectionResult:
    """mAP at each tIoU threshold, as fractions in [0, 1]."""

    tiou_thresholds: np.ndarray  # (K,)
    mAP: np.ndarray  # (K,) mean over the classes present in the subset's ground truth
    ap: np.ndarray  # (K, C) in ``classes`` order; NaN for classes absent from the subset
    average_mAP: float  # mean of ``mAP`` over all K thresholds
    classes: list[str]
    subset: str = "test"
    num_ground_truth: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (C,)
    num_predictions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (C,)
    num_ignored_predictions: int = 0  # labelled with a class absent from the subset
    averages: dict[str, float] = field(default_factory=dict)  # name -> mean mAP over a range

    @property
    def evaluated_classes(self) -> list[str]:
        """Classes that enter the mean (present in the subset's ground truth)."""
        return [c for c, n in zip(self.classes, self.num_ground_truth) if n > 0]

    def to_dict(self, percent: bool = True) -> dict[str, Any]:
        """JSON-ready summary. Absent classes are ``null`` (JSON has no NaN)."""
        scale = 100.0 if percent else 1.0

        def conv(x: float) -> float | None:
            return None if math.isnan(x) else float(x) * scale

        return {
            "subset": self.subset,
            "units": "percent" if percent else "fraction",
            "tiou_thresholds": [float(t) for t in self.tiou_thresholds],
            "mAP": [conv(x) for x in self.mAP],
            "average_mAP": conv(self.average_mAP),
            "averages": {name: conv(v) for name, v in self.averages.items()},
            "per_class_AP": {
                c: [conv(x) for x in self.ap[:, j]] for j, c in enumerate(self.classes)
            },
            "num_ground_truth": {c: int(n) for c, n in zip(self.classes, self.num_ground_truth)},
            "num_predictions": {c: int(n) for c, n in zip(self.classes, self.num_predictions)},
            "num_ignored_predictions": int(self.num_ignored_predictions),
            "evaluated_classes": self.evaluated_classes,
        }


# ---------------------------------------------------------------------------------------------
# Input normalisation: everything becomes flat arrays in the order the official tool sees rows.
# ---------------------------------------------------------------------------------------------


def _database_of(ground_truth: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[str] | None]:
    """Accept the whole ActivityNet JSON or just its "database"; also return its class list."""
    if not isinstance(ground_truth, Mapping):
        raise EvaluationError(
            "expected a JSON object (ActivityNet format with a 'database' key)", "ground_truth"
        )
    if "database" in ground_truth:
        db = ground_truth["database"]
        if not isinstance(db, Mapping):
            raise EvaluationError("'database' must map video names to entries", "ground_truth")
        classes = ground_truth.get("classes")
        if classes is not None and not (
            isinstance(classes, list) and all(isinstance(c, str) for c in classes)
        ):
            raise EvaluationError("'classes' must be a list of class names", "ground_truth")
        return db, classes
    return ground_truth, None


def _check_thresholds(tiou_thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    try:
        t = np.asarray(tiou_thresholds, dtype=np.float64).reshape(-1)  # (K,)
    except (TypeError, ValueError) as e:
        raise EvaluationError(f"tIoU thresholds must be numbers ({e})") from None
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(t > 1):
        raise EvaluationError(
            f"tIoU thresholds must be a non-empty list of numbers in [0, 1], got {t.tolist()}"
        )
    return t


class _VideoIds:
    """Video name -> dense int id shared by ground truth and predictions."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __call__(self, name: str) -> int:
        i = self.ids.get(name)
        if i is None:
            i = self.ids[name] = len(self.ids)
        return i


def _segment_problem(seg: np.ndarray) -> np.ndarray:
    """Rows that are not finite, have a negative time or end before they start. seg (N, 2)."""
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(seg).all(axis=1) | (seg[:, 0] < 0) | (seg[:, 1] < seg[:, 0])


def _describe_segment_problem(seg: Sequence[float]) -> str:
    s, e = float(seg[0]), float(seg[1])
    if not (math.isfinite(s) and math.isfinite(e)):
        return f"segment {[s, e]} is not finite"
    if s < 0 or e < 0:
        return f"segment {[s, e]} has a negative time; clip segments to [0, duration]"
    return f"segment {[s, e]} ends before it starts; write segments as [start, end]"


def _flatten_ground_truth(
    database: Mapping[str, Any],
    subset: str,
    class_index: Mapping[str, int],
    vids: _VideoIds,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int], int]:
    """Subset ground truth in database order: video ids (M,), class ids (M,), segments (M, 2),
    the class ids in order of first appearance, and the number of subset videos."""
    g_vid: list[int] = []
    g_cls: list[int] = []
    g_seg: list[Any] = []
    first_seen: dict[int, None] = {}  # insertion-ordered set
    n_videos = 0
    for name, entry in database.items():
        if not isinstance(entry, Mapping) or "subset" not in entry:
            raise EvaluationError(
                f"video {name!r}: each database entry needs 'subset' and 'annotations' "
                "(ActivityNet format)",
                "ground_truth",
            )
        if entry["subset"] != subset:
            continue
        n_videos += 1
        anns = entry.get("annotations", [])
        if not isinstance(anns, list):
            raise EvaluationError(f"video {name!r}: 'annotations' must be a list", "ground_truth")
        vid = vids(str(name))
        for a in anns:
            try:
                label, seg = a["label"], a["segment"]
                s, e = float(seg[0]), float(seg[1])
                if len(seg) != 2:
                    raise ValueError
            except (KeyError, TypeError, ValueError, IndexError):
                raise EvaluationError(
                    f"video {name!r}: annotation {a!r} needs 'label' and 'segment': [start, end]",
                    "ground_truth",
                ) from None
            c = class_index.get(label) if isinstance(label, str) else None
            if c is None:
                raise EvaluationError(
                    f"video {name!r}: label {label!r} is not in the class list; add it to "
                    "'classes' or fix the label",
                    "ground_truth",
                )
            if not (math.isfinite(s) and math.isfinite(e)) or s < 0 or e < s:
                raise EvaluationError(
                    f"video {name!r}: {_describe_segment_problem((s, e))}", "ground_truth"
                )
            first_seen.setdefault(c, None)
            g_vid.append(vid)
            g_cls.append(c)
            g_seg.append((s, e))
    seg_arr = np.asarray(g_seg, dtype=np.float64).reshape(-1, 2)
    return (
        np.asarray(g_vid, dtype=np.int64),
        np.asarray(g_cls, dtype=np.int64),
        seg_arr,
        list(first_seen),
        n_videos,
    )


def _flatten_results_json(
    results: Mapping[str, Any], class_index: Mapping[str, int], vids: _VideoIds
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ActivityNet results ``{video: [{"label", "score", "segment"}, ...]}`` -> flat arrays
    in file order: video ids (N,), segments (N, 2), scores (N,), class ids (N,)."""
    vid_ids: list[int] = []
    counts: list[int] = []
    labels: list[Any] = []
    scores: list[Any] = []
    segs: list[Any] = []
    for name, items in results.items():
        if not isinstance(items, (list, tuple)):
            raise EvaluationError(
                f"video {name!r}: 'results' must map each video to a list of "
                "{'label', 'score', 'segment'} objects",
                "predictions",
            )
        try:
            # One comprehension per field is much faster than a loop building dicts.
            labels.extend([it["label"] for it in items])
            scores.extend([it["score"] for it in items])
            segs.extend([it["segment"] for it in items])
        except (KeyError, TypeError):
            bad = next(
                it for it in items
                if not isinstance(it, Mapping) or not {"label", "score", "segment"} <= it.keys()
            )
            raise EvaluationError(
                f"video {name!r}: prediction {bad!r} needs 'label', 'score' and 'segment'",
                "predictions",
            ) from None
        vid_ids.append(vids(str(name)))
        counts.append(len(items))
    n = len(scores)
    vid_arr = np.repeat(np.asarray(vid_ids, dtype=np.int64), np.asarray(counts, dtype=np.int64))

    def where(i: int) -> str:
        names = list(vids.ids)
        return f"video {names[int(vid_arr[i])]!r}"

    def bad_segment(i: int) -> EvaluationError:
        return EvaluationError(
            f"{where(i)}: segment {segs[i]!r} must be [start, end] in seconds", "predictions"
        )

    # fromiter over the chained pairs is ~2x faster than np.asarray on a list of lists; the
    # length check first keeps a 3-element segment from shifting every later one.
    try:
        if n and set(map(len, segs)) != {2}:
            raise bad_segment(next(i for i, sg in enumerate(segs) if len(sg) != 2))
        seg_arr = np.fromiter(chain.from_iterable(segs), dtype=np.float64, count=2 * n).reshape(n, 2)
    except (TypeError, ValueError) as e:
        if isinstance(e, EvaluationError):
            raise
        for i, sg in enumerate(segs):
            try:
                if len(sg) != 2:
                    raise ValueError
                float(sg[0]), float(sg[1])
            except (TypeError, ValueError):
                raise bad_segment(i) from None
        raise
    score_arr = np.asarray(scores)
    if n and score_arr.dtype.kind not in "iuf":
        i = next(i for i, sc in enumerate(scores) if isinstance(sc, bool) or not isinstance(sc, (int, float)))
        raise EvaluationError(f"{where(i)}: score {scores[i]!r} must be a number", "predictions")
    score_arr = score_arr.astype(np.float64, copy=False)
    try:
        ids = list(map(class_index.get, labels))
    except TypeError:  # an unhashable label, e.g. a list
        ids = [class_index.get(lb) if isinstance(lb, str) else None for lb in labels]
    if None in ids:
        i = ids.index(None)
        raise EvaluationError(
            f"{where(i)}: label {labels[i]!r} is not a class of the ground truth; "
            "use one of its class names",
            "predictions",
        )
    label_arr = np.array(ids, dtype=np.int64).reshape(n)
    return vid_arr, seg_arr, score_arr, label_arr


def _flatten_detections(
    predictions: Mapping[str, Any], n_classes: int, vids: _VideoIds
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``{video: Detections}`` -> the same flat arrays as :func:`_flatten_results_json`."""
    p_vid, segs, scores, labels = [], [], [], []
    for name, det in predictions.items():
        try:
            seg = np.asarray(det.segments, dtype=np.float64).reshape(-1, 2)  # (n, 2)
            sc = np.asarray(det.scores, dtype=np.float64).reshape(-1)  # (n,)
            lb = np.asarray(det.labels).reshape(-1)  # (n,)
        except (AttributeError, TypeError, ValueError):
            raise EvaluationError(
                f"video {name!r}: expected a Detections with segments (N, 2), scores (N,), "
                "labels (N,), or an ActivityNet results JSON with a 'results' object",
                "predictions",
            ) from None
        if not (len(seg) == len(sc) == len(lb)):
            raise EvaluationError(
                f"video {name!r}: segments, scores and labels have different lengths "
                f"({len(seg)}, {len(sc)}, {len(lb)})",
                "predictions",
            )
        if len(lb) and (lb.dtype.kind not in "iu" or lb.min() < 0 or lb.max() >= n_classes):
            raise EvaluationError(
                f"video {name!r}: labels must be class ids in [0, {n_classes}), got "
                f"{lb.tolist()[:5]}...",
                "predictions",
            )
        p_vid.append(np.full(len(sc), vids(str(name)), dtype=np.int64))
        segs.append(seg)
        scores.append(sc)
        labels.append(lb.astype(np.int64))
    if not p_vid:
        return (np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros(0), np.zeros(0, np.int64))
    return np.concatenate(p_vid), np.concatenate(segs), np.concatenate(scores), np.concatenate(labels)


# ---------------------------------------------------------------------------------------------
# The rule itself.
# ---------------------------------------------------------------------------------------------


def _interpolated_ap(prec: np.ndarray, rec: np.ndarray) -> float:
    """VOC-2011 interpolated AP of one precision/recall curve, each (n,).

    Precision is made monotone from the right, with a 0 appended; the area is summed over
    the points where recall changes, recall starting at 0 and closing at 1. The terms are
    summed as one 1-D array in that order so the float result matches the official tool's.
    """
    mprec = np.concatenate(([0.0], prec, [0.0]))  # (n + 2,)
    mrec = np.concatenate(([0.0], rec, [1.0]))  # (n + 2,)
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[step] - mrec[step - 1]) * mprec[step]))


def _pairwise_tiou(
    p_start: np.ndarray, p_end: np.ndarray, p_len: np.ndarray,
    g_start: np.ndarray, g_end: np.ndarray, g_len: np.ndarray,
) -> np.ndarray:
    """tIoU of predictions (n, 1) against ground truth (n, G) -> (n, G); ``*_len`` are
    ``end - start``, computed once per segment.

    The arithmetic follows the official order ((gt length + prediction length) -
    intersection) so that equal overlaps are equal bit for bit and tie exactly as there;
    two zero-length segments give 0 / 0 = NaN, which the official rule treats as a match.
    """
    inter = (np.minimum(p_end, g_end) - np.maximum(p_start, g_start)).clip(0)
    union = g_len + p_len - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def _visit_order(tiou: np.ndarray, passes: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, int]:
    """Columns of the passing entries of each row of ``tiou`` (n, G), in the order the official
    walk visits them (``argsort(row)[::-1]``), padded to the widest row: ((n, w), w).

    Arg-sorting whole rows is the slow part and only matters where passing values tie (the
    order among equal values is whatever numpy's argsort gives), so the passing entries
    (usually 1-5 per row) are sorted on their own, and rows with a tie among them are
    arg-sorted in full, exactly as the official code does.
    """
    n = len(tiou)
    w = int(length.max())
    r, c = np.nonzero(passes)  # row-major: rows in order, columns ascending
    slot = np.arange(len(r)) - np.repeat(np.cumsum(length) - length, length)
    # NaN is visited first (argsort puts it last); -inf pads short rows and sorts last.
    key = np.full((n, w), -np.inf)
    key[r, slot] = np.where(np.isnan(tiou[r, c]), np.inf, tiou[r, c])
    col = np.zeros((n, w), dtype=np.int64)
    col[r, slot] = c
    order = np.argsort(-key, axis=1, kind="stable")  # descending
    key = np.take_along_axis(key, order, axis=1)
    col = np.take_along_axis(col, order, axis=1)
    tie = ((key[:, 1:] == key[:, :-1]) & (key[:, 1:] > -np.inf)).any(axis=1)  # (n,)
    if tie.any():
        col[tie] = np.argsort(tiou[tie], axis=1)[:, ::-1][:, :w]
    return col, w


def _greedy_true_positives(
    p_key: np.ndarray,
    p_seg: np.ndarray,
    g_key: np.ndarray,
    g_seg: np.ndarray,
    thresholds: np.ndarray,
) -> np.ndarray:
    """True-positive flags (K, N) of ranked predictions against ground truth.

    p_key (N,) / g_key (M,) are (class, video) group keys; predictions must already be in
    rank order within each class. Only predictions of the same group compete for the same
    ground truth, so the greedy pass runs over "rank within the group", each step handling
    the next prediction of every group at all thresholds at once.
    """
    K, N = len(thresholds), len(p_key)
    tp = np.zeros((K, N), dtype=bool)
    if N == 0 or len(g_key) == 0:
        return tp

    # Ground truth grouped by key; a stable sort keeps the annotation order inside a group,
    # which decides how equal tIoUs are ordered below.
    g_order = np.argsort(g_key, kind="stable")
    g_key_s = g_key[g_order]
    gs, ge = g_seg[g_order, 0].copy(), g_seg[g_order, 1].copy()  # (M,) contiguous
    g_len = ge - gs
    uniq, g_first, g_count = np.unique(g_key_s, return_index=True, return_counts=True)
    gi = np.searchsorted(uniq, p_key).clip(max=len(uniq) - 1)  # (N,) group of each prediction
    has_gt = uniq[gi] == p_key  # (N,) False -> false positive at every threshold
    t_min = thresholds.min()
    M = len(g_key)  # index M is a padding ground truth that is always taken
    ps, pe = p_seg[:, 0].copy(), p_seg[:, 1].copy()
    p_len = pe - ps

    # Candidate lists: for each prediction, its group's ground truth in the official visiting
    # order (argsort(tiou)[::-1]), cut where tIoU drops below the smallest threshold, since the
    # official walk stops there. Work by group size G so each block is a plain (n, G) array.
    rel_pred: list[np.ndarray] = []
    rel_gt: list[np.ndarray] = []  # (n, w) sorted-GT indices in visiting order
    rel_tiou: list[np.ndarray] = []  # (n, w) their tIoU, -inf as padding
    pred_idx = np.flatnonzero(has_gt)
    if len(pred_idx) == 0:
        return tp
    sizes = g_count[gi[pred_idx]]
    by_size = np.argsort(sizes, kind="stable")
    pred_idx, sizes = pred_idx[by_size], sizes[by_size]
    cuts = np.flatnonzero(np.r_[True, sizes[1:] != sizes[:-1], True])
    for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        sel = pred_idx[lo:hi]  # (n,) predictions whose group has G ground truths
        G = int(sizes[lo])
        cols = g_first[gi[sel]][:, None] + np.arange(G)  # (n, G) sorted-GT indices
        tiou = _pairwise_tiou(ps[sel, None], pe[sel, None], p_len[sel, None],
                              gs[cols], ge[cols], g_len[cols])  # (n, G)
        # NaN (two zero-length segments) fails "tiou < thr", so it passes every threshold,
        # exactly as in the official loop.
        passes = ~(tiou < t_min)  # (n, G)
        length = passes.sum(axis=1)
        keep = length > 0
        if not keep.any():
            continue
        if not keep.all():
            sel, cols, tiou, passes, length = (
                sel[keep], cols[keep], tiou[keep], passes[keep], length[keep])
        rel_pred.append(sel)
        visit, w = _visit_order(tiou, passes, length)  # (n, w) columns in visiting order
        rows = np.arange(len(sel))[:, None]
        pad = np.arange(w) >= length[:, None]  # (n, w)
        rel_gt.append(np.where(pad, M, cols[rows, visit]))
        rel_tiou.append(np.where(pad, -np.inf, tiou[rows, visit]))
    if not rel_pred:
        return tp

    W = max(g.shape[1] for g in rel_gt)
    R = sum(len(r) for r in rel_pred)
    cand_gt = np.full((R, W), M, dtype=np.int64)
    cand_tiou = np.full((R, W), -np.inf)
    o = 0
    for r, g, t in zip(rel_pred, rel_gt, rel_tiou):
        cand_gt[o:o + len(r), : g.shape[1]] = g
        cand_tiou[o:o + len(r), : t.shape[1]] = t
        o += len(r)
    rel = np.concatenate(rel_pred)  # (R,) prediction indices

    # Rank of each relevant prediction inside its group: sort by (group, rank order), then
    # count from each group's start. Then lay everything out step by step (all rank-0
    # predictions, all rank-1, ...) so that each step reads contiguous slices.
    by_group = np.argsort(gi[rel] * N + rel)
    grp = gi[rel[by_group]]
    starts = np.flatnonzero(np.r_[True, grp[1:] != grp[:-1]])
    rank = np.arange(R) - np.repeat(starts, np.diff(np.r_[starts, R]))
    by_step = np.argsort(rank, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(rank))].tolist()
    perm = by_group[by_step]
    rel, cand_gt, cand_tiou = rel[perm], cand_gt[perm], cand_tiou[perm]
    # Candidate axis last, for fast reductions; (R, K, W).
    cand_ok = ~(cand_tiou[:, None, :] < thresholds[:, None])
    k_off = np.arange(K)[:, None]  # (K, 1) threshold offset in the flat ``taken`` index

    taken = np.zeros((M + 1) * K, dtype=bool)  # flat (ground truth, threshold): matched
    taken[M * K:] = True
    tp_rel = np.zeros((R, K), dtype=bool)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        cf = cand_gt[lo:hi, None, :] * K + k_off  # (a, K, W): the next prediction of each group
        free = cand_ok[lo:hi] & ~taken[cf]  # (a, K, W)
        hit = free.any(axis=2)  # (a, K)
        pick = np.take_along_axis(cf, free.argmax(axis=2)[:, :, None], axis=2)[:, :, 0]  # (a, K)
        taken[pick[hit]] = True
        tp_rel[lo:hi] = hit
    tp[:, rel] = tp_rel.T
    return tp


def _average_precision(
    g_vid: np.ndarray,
    g_cls: np.ndarray,
    g_seg: np.ndarray,
    p_vid: np.ndarray,
    p_cls: np.ndarray,
    p_seg: np.ndarray,
    p_score: np.ndarray,
    classes_present: Sequence[int],
    thresholds: np.ndarray,
) -> dict[int, np.ndarray]:
    """AP (K,) for each class in ``classes_present``; inputs are flat arrays in file order."""
    K = len(thresholds)
    n_vid = int(max(g_vid.max(initial=-1), p_vid.max(initial=-1))) + 1

    # Rank predictions class by class exactly as the official tool does: the class's rows in
    # input order, then argsort of their scores, reversed.
    by_cls = np.argsort(p_cls, kind="stable")
    cls_sorted = p_cls[by_cls]
    ranked_parts: list[np.ndarray] = []
    spans: dict[int, tuple[int, int]] = {}
    o = 0
    for c in classes_present:
        lo, hi = np.searchsorted(cls_sorted, [c, c + 1])
        rows = by_cls[lo:hi]
        rows = rows[np.argsort(p_score[rows])[::-1]]
        ranked_parts.append(rows)
        spans[c] = (o, o + len(rows))
        o += len(rows)
    ranked = np.concatenate(ranked_parts) if ranked_parts else np.zeros(0, np.int64)

    tp = _greedy_true_positives(
        p_cls[ranked] * n_vid + p_vid[ranked],
        p_seg[ranked],
        g_cls * n_vid + g_vid,
        g_seg,
        thresholds,
    )  # (K, N)

    npos = np.bincount(g_cls, minlength=max(classes_present, default=0) + 1)
    out: dict[int, np.ndarray] = {}
    for c in classes_present:
        lo, hi = spans[c]
        ap = np.zeros(K)
        if hi > lo:
            tp_c = tp[:, lo:hi].astype(np.float64)  # (K, n)
            tp_cum = np.cumsum(tp_c, axis=1)
            fp_cum = np.cumsum(1.0 - tp_c, axis=1)
            rec = tp_cum / float(npos[c])
            prec = tp_cum / (tp_cum + fp_cum)
            for k in range(K):
                ap[k] = _interpolated_ap(prec[k], rec[k])
        out[c] = ap
    return out


def detection_map(
    ground_truth: Mapping[str, Any],
    predictions: Mapping[str, Any],
    classes: Sequence[str] | None = None,
    tiou_thresholds: Sequence[float] | np.ndarray | None = None,
    subset: str | None = None,
    averages: Mapping[str, tuple[float, float]] | None = None,
    preset: str | EvalPreset | None = None,
) -> DetectionResult:
    """ActivityNet detection mAP.

    Args:
        ground_truth: ActivityNet JSON (with "database") or its database
            ``{video: {"subset", "annotations": [{"label", "segment"}], ...}}``.
        predictions: ``{video: Detections}`` (labels index ``classes``) or an ActivityNet
            results JSON (``{"results": {video: [{"label", "score", "segment"}]}}`` or the
            inner ``{video: [...]}``).
        classes: class names; ``ap`` columns follow this order. Defaults to the ground-truth
            file's "classes", else the sorted labels of the whole database.
        tiou_thresholds: (K,) thresholds; default from ``preset``, else 0.5:0.95:0.05.
        subset: ground-truth subset to evaluate; default from ``preset``, else "test".
        averages: name -> (low, high) inclusive tIoU ranges to average mAP over.
        preset: a preset name or :class:`~taltoolkit.evaluation.presets.EvalPreset` giving
            defaults for the three arguments above.
    """
    if classes is not None and (
        isinstance(classes, str) or not all(isinstance(c, str) for c in classes)
    ):
        raise EvaluationError(
            "classes must be a list of class names (did you pass tIoU thresholds "
            "positionally? use tiou_thresholds=...)"
        )
    if preset is not None:
        p = get_preset(preset) if isinstance(preset, str) else preset
        tiou_thresholds = p.tiou_thresholds if tiou_thresholds is None else tiou_thresholds
        subset = p.subset if subset is None else subset
        averages = p.averages if averages is None else averages
    thresholds = _check_thresholds(DEFAULT_TIOU_THRESHOLDS if tiou_thresholds is None else tiou_thresholds)
    subset = "test" if subset is None else subset

    database, file_classes = _database_of(ground_truth)
    if classes is None:
        classes = file_classes
    if classes is None:
        labels = {
            a.get("label") for e in database.values() if isinstance(e, Mapping)
            for a in e.get("annotations", []) if isinstance(a, Mapping)
        }
        classes = sorted(lb for lb in labels if isinstance(lb, str))
    classes = list(classes)
    class_index = {c: i for i, c in enumerate(classes)}
    if len(class_index) != len(classes):
        raise EvaluationError("classes contains duplicate names")

    vids = _VideoIds()
    g_vid, g_cls, g_seg, first_seen, n_videos = _flatten_ground_truth(
        database, subset, class_index, vids
    )
    if n_videos == 0:
        found = sorted({str(e.get("subset")) for e in database.values() if isinstance(e, Mapping)})
        raise EvaluationError(
            f"subset {subset!r} has no videos; subsets in the file: {found}", "ground_truth"
        )
    if len(g_cls) == 0:
        raise EvaluationError(
            f"subset {subset!r} has {n_videos} videos but no annotated instances", "ground_truth"
        )

    # Predictions -> flat arrays.
    if not isinstance(predictions, Mapping):
        raise EvaluationError(
            "predictions must be {video: Detections} or an ActivityNet results JSON object",
            "predictions",
        )
    if "results" in predictions and isinstance(predictions["results"], Mapping):
        flat = _flatten_results_json(predictions["results"], class_index, vids)
    elif any(isinstance(v, (list, tuple)) for v in predictions.values()) or "results" in predictions:
        if "results" in predictions:
            raise EvaluationError("'results' must map video names to lists", "predictions")
        flat = _flatten_results_json(predictions, class_index, vids)
    else:
        flat = _flatten_detections(predictions, len(classes), vids)
    p_vid, p_seg, p_score, p_cls = flat
    bad = _segment_problem(p_seg)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        name = list(vids.ids)[int(p_vid[i])]
        raise EvaluationError(
            f"video {name!r}: {_describe_segment_problem(p_seg[i])}", "predictions"
        )
    if not np.all(np.isfinite(p_score)):
        i = int(np.flatnonzero(~np.isfinite(p_score))[0])
        name = list(vids.ids)[int(p_vid[i])]
        raise EvaluationError(f"video {name!r}: score {p_score[i]} is not finite", "predictions")

    C = len(classes)
    num_gt = np.bincount(g_cls, minlength=C)
    present = num_gt > 0
    keep = present[p_cls]  # official: these labels are unknown to the subset (KeyError)
    num_ignored = int((~keep).sum())
    if num_ignored:
        p_vid, p_seg, p_score, p_cls = p_vid[keep], p_seg[keep], p_score[keep], p_cls[keep]
    num_pred = np.bincount(p_cls, minlength=C)

    ap_by_class = _average_precision(
        g_vid, g_cls, g_seg, p_vid, p_cls, p_seg, p_score, first_seen, thresholds
    )
    ap = np.full((len(thresholds), C), np.nan)
    for c, v in ap_by_class.items():
        ap[:, c] = v
    # The mean is taken over the columns in first-appearance order, as the official array is
    # laid out, so that even the summation order (and hence the last bit) matches.
    ap_official = np.ascontiguousarray(ap[:, first_seen])  # (K, C_present)
    mAP = ap_official.mean(axis=1)
    result = DetectionResult(
        tiou_thresholds=thresholds,
        mAP=mAP,
        ap=ap,
        average_mAP=float(mAP.mean()),
        classes=classes,
        subset=subset,
        num_ground_truth=num_gt,
        num_predictions=num_pred,
        num_ignored_predictions=num_ignored,
    )
    if averages:
        result.averages = average_over_ranges(thresholds, mAP, averages)
    return result


def average_over_ranges(
    thresholds: np.ndarray, mAP: np.ndarray, ranges: Mapping[str, tuple[float, float]]
) -> dict[str, float]:
    """Mean mAP over the thresholds inside each inclusive (low, high) range.

    A small tolerance absorbs thresholds written as 0.30000000000000004 and the like.
    """
    out: dict[str, float] = {}
    for name, (lo, hi) in ranges.items():
        sel = (thresholds >= lo - 1e-9) & (thresholds <= hi + 1e-9)
        if not sel.any():
            raise EvaluationError(
                f"average {name!r}: no tIoU threshold in [{lo}, {hi}] "
                f"(thresholds: {thresholds.tolist()})"
            )
        out[name] = float(mAP[sel].mean())
    return out
