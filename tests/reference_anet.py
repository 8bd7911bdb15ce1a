"""A deliberately plain, loop-based restatement of the ActivityNet detection rule.

This is the yardstick for ``taltoolkit.evaluation.detection`` (tests) and the "official"
side of ``tools/bench.py eval``. It keeps the official tool's structure: rows in file
order, one class at a time, one prediction at a time in score order, one threshold at a
time, walking the video's ground truth from the highest tIoU down. Pandas is not available
here, so rows are plain lists and the per-video ground truth a dict of index lists.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def load_ground_truth(gt_json: dict[str, Any], subset: str):
    """Subset rows ``[(video, start, end, class_idx)]`` and ``{label: class_idx}`` built in
    order of first appearance, like the official class index."""
    db = gt_json["database"] if "database" in gt_json else gt_json
    class_idx: dict[str, int] = {}
    rows = []
    for video, entry in db.items():
        if entry["subset"] != subset:
            continue
        for ann in entry["annotations"]:
            if ann["label"] not in class_idx:
                class_idx[ann["label"]] = len(class_idx)
            rows.append((video, float(ann["segment"][0]), float(ann["segment"][1]),
                         class_idx[ann["label"]]))
    return rows, class_idx


def load_predictions(pred_json: dict[str, Any], class_idx: dict[str, int], unknown: str = "raise"):
    """Rows ``[(video, start, end, class_idx, score)]`` in file order. A label missing from
    the subset's ground truth raises KeyError as in the official tool, or is dropped with
    ``unknown="drop"`` (taltoolkit's documented behaviour)."""
    results = pred_json["results"] if "results" in pred_json else pred_json
    rows = []
    for video, items in results.items():
        for it in items:
            if unknown == "drop" and it["label"] not in class_idx:
                continue
            rows.append((video, float(it["segment"][0]), float(it["segment"][1]),
                         class_idx[it["label"]], it["score"]))
    return rows


def segment_tiou(seg: np.ndarray, others: np.ndarray) -> np.ndarray:
    """tIoU of one segment (2,) with each of ``others`` (G, 2)."""
    inter = (np.minimum(seg[1], others[:, 1]) - np.maximum(seg[0], others[:, 0])).clip(0)
    union = (others[:, 1] - others[:, 0]) + (seg[1] - seg[0]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter.astype(float) / union


def interpolated_ap(prec: np.ndarray, rec: np.ndarray) -> float:
    p = np.hstack([[0.0], prec, [0.0]])
    r = np.hstack([[0.0], rec, [1.0]])
    for i in range(len(p) - 2, -1, -1):
        p[i] = max(p[i], p[i + 1])
    where = np.where(r[1:] != r[:-1])[0] + 1
    return float(np.sum((r[where] - r[where - 1]) * p[where]))


def class_ap(gt_rows: list, pred_rows: list, thresholds: np.ndarray) -> np.ndarray:
    """AP (K,) of one class: ``gt_rows`` / ``pred_rows`` are that class's rows, file order."""
    K = len(thresholds)
    if not pred_rows:
        return np.zeros(K)
    npos = float(len(gt_rows))
    gt_by_video: dict[str, list[int]] = {}
    for i, row in enumerate(gt_rows):
        gt_by_video.setdefault(row[0], []).append(i)
    gt_segs = np.array([[r[1], r[2]] for r in gt_rows], dtype=float).reshape(-1, 2)
    taken = -np.ones((K, len(gt_rows)))

    scores = np.array([r[4] for r in pred_rows], dtype=float)
    order = scores.argsort()[::-1]
    tp = np.zeros((K, len(pred_rows)))
    fp = np.zeros((K, len(pred_rows)))
    for rank, p in enumerate(order):
        video, s, e = pred_rows[p][0], pred_rows[p][1], pred_rows[p][2]
        if video not in gt_by_video:
            fp[:, rank] = 1
            continue
        members = gt_by_video[video]
        tiou = segment_tiou(np.array([s, e]), gt_segs[members])
        visit = tiou.argsort()[::-1]
        for k in range(K):
            for j in visit:
                if tiou[j] < thresholds[k]:
                    fp[k, rank] = 1
                    break
                if taken[k, members[j]] >= 0:
                    continue
                tp[k, rank] = 1
                taken[k, members[j]] = rank
                break
            if fp[k, rank] == 0 and tp[k, rank] == 0:
                fp[k, rank] = 1
    tp_cum = np.cumsum(tp, axis=1).astype(float)
    fp_cum = np.cumsum(fp, axis=1).astype(float)
    rec = tp_cum / npos
    prec = tp_cum / (tp_cum + fp_cum)
    return np.array([interpolated_ap(prec[k], rec[k]) for k in range(K)])


def evaluate(gt_json: dict, pred_json: dict, subset: str, thresholds, unknown: str = "raise"):
    """Returns (ap (K, C_present) in first-appearance class order, class_idx, mAP (K,),
    average mAP)."""
    thresholds = np.asarray(thresholds, dtype=float)
    gt_rows, class_idx = load_ground_truth(gt_json, subset)
    pred_rows = load_predictions(pred_json, class_idx, unknown)
    ap = np.zeros((len(thresholds), len(class_idx)))
    for c in class_idx.values():
        ap[:, c] = class_ap([r for r in gt_rows if r[3] == c], [r for r in pred_rows if r[3] == c],
                            thresholds)
    mAP = ap.mean(axis=1)
    return ap, class_idx, mAP, float(mAP.mean())
