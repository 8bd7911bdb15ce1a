"""CASE's test-time post-processing against a transcription of its public code.

The reference below was written from reading the public CASE code (utils/misc_utils.py:
upgrade_resolution, get_proposal_oic, grouping, basnet_nms; inference_case.py's loop over
thresholds and classes): scipy's interp1d with extrapolation, per-threshold runs, the
outer-inner contrast with int() bounds, and the one-pass Soft-NMS whose IoU adds 1 to
lengths in seconds. The library's ``cas_to_proposals`` with conf/postprocess/case.yaml must
give the same proposals and scores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.interpolate import interp1d

from taltoolkit.postprocess.suppression import one_pass_soft_nms_indices
from taltoolkit.postprocess.proposals import cas_to_proposals

CASE_YAML = Path(__file__).resolve().parent.parent / "conf" / "postprocess" / "case.yaml"


def _ref_upsample(arr: np.ndarray, scale: int) -> np.ndarray:
    x = np.arange(arr.shape[0])
    f = interp1d(x, arr, kind="linear", axis=0, fill_value="extrapolate")
    return f(np.arange(0, arr.shape[0], 1 / scale))


def _ref_runs(idx: np.ndarray) -> list[np.ndarray]:
    return np.split(idx, np.where(np.diff(idx) != 1)[0] + 1)


def _ref_oic(seg_list, wtcam, final_score, c_pred, t_factor, lam, gamma):  # noqa: ANN001, ANN202
    out = []
    for i, pos in enumerate(seg_list):
        rows = []
        if pos.any():
            for g in _ref_runs(pos):
                inner = np.mean(wtcam[g, i])
                n = len(g)
                o_s = max(0, int(g[0] - lam * n))
                o_e = min(int(wtcam.shape[0] - 1), int(g[-1] + lam * n))
                outer_idx = list(range(o_s, int(g[0]))) + list(range(int(g[-1] + 1), o_e + 1))
                outer = 0 if not outer_idx else np.mean(wtcam[outer_idx, i])
                rows.append([c_pred[i], inner - outer + gamma * final_score[c_pred[i]], g[0] * t_factor, (g[-1] + 1) * t_factor])
        out.append(rows)
    return out


def _ref_soft_nms(props: list, thresh: float, alpha: float) -> list:
    p = np.array(props)
    x1, x2, sc = p[:, 2], p[:, 3], p[:, 1]
    areas = x2 - x1 + 1
    order = np.argsort(-sc, kind="stable")
    keep, dropped = [], []
    while order.size > 0:
        i = order[0]
        keep.append(p[i].tolist())
        inter = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        hit = np.where(iou >= thresh)[0]
        for k in hit:
            row = p[order[k + 1]].copy()
            row[1] = row[1] * np.exp(-np.square(iou[k]) / alpha)
            dropped.append(row.tolist())
        order = order[np.where(iou < thresh)[0] + 1]
    return keep + dropped


def _ref_case_proposals(cas: np.ndarray, score: np.ndarray, cfg: dict, t_factor: float) -> list:
    """inference_case.py for one video: cas (T, C) calibrated, score (C,) video-level."""
    pred = np.where(score >= cfg["class_threshold"])[0]
    if pred.size == 0:
        pred = np.array([int(np.argmax(score))])
    cas_pred = _ref_upsample(cas[:, pred], cfg["upsample"])  # (T', K)
    by_class: dict[int, list] = {}
    for thr in cfg["cas_thresholds"]:
        tmp = cas_pred.copy()
        tmp[tmp < thr] = 0
        segs = [np.where(tmp[:, c] > 0)[0] for c in range(len(pred))]
        for rows in _ref_oic(segs, cas_pred, score, pred, t_factor, cfg["inflation"], cfg["score_weight"]):
            if rows:
                by_class.setdefault(int(rows[0][0]), []).extend(rows)
    out = []
    for c, rows in by_class.items():
        out.extend(_ref_soft_nms(rows, cfg["nms_threshold"], cfg["sigma"]))
    return out


def _as_set(rows) -> np.ndarray:  # noqa: ANN001
    a = np.array(sorted((int(r[0]), round(r[2], 6), round(r[3], 6), round(r[1], 9)) for r in rows))
    return a.reshape(-1, 4)


@pytest.mark.parametrize("seed", range(6))
def test_case_postprocess_matches_the_public_inference(seed: int) -> None:
    cfg = yaml.safe_load(CASE_YAML.read_text())
    cfg.pop("_target_")
    rng = np.random.default_rng(seed)
    t, c = int(rng.integers(8, 60)), 5
    # Smooth random CAS in [0, 1] so that runs of several lengths appear at every threshold.
    raw = np.cumsum(rng.normal(size=(t, c)), 0)
    cas = 1 / (1 + np.exp(-(raw - raw.mean(0)) / (raw.std(0) + 1e-6)))
    score = rng.dirichlet(np.ones(c) * 0.5)
    step_s = 0.64 * float(rng.uniform(0.5, 3.0))  # a resampled video's step_scale too
    det = cas_to_proposals(cas, score, step_s=step_s, **cfg)
    ref = _ref_case_proposals(cas, score, cfg, t_factor=step_s / cfg["upsample"])
    ours = [(int(l), float(s), float(a), float(b)) for (a, b), s, l in zip(det.segments, det.scores, det.labels)]
    assert len(ours) == len(ref) and len(ref) > 0
    np.testing.assert_allclose(_as_set(ours), _as_set(ref), rtol=0, atol=1e-6)


def test_one_pass_soft_nms_decays_once_and_keeps_everything() -> None:
    # Seconds, with the public code's +1 lengths: [0, 10] vs [1, 11]: inter 10, union 12 -> 0.833;
    # [0, 10] vs [20, 30]: disjoint; [1, 11] left the queue, so it cannot suppress [5, 15].
    segs = torch.tensor([[0.0, 10.0], [1.0, 11.0], [20.0, 30.0], [5.0, 15.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    idx, sc = one_pass_soft_nms_indices(segs, scores, iou_threshold=0.4, sigma=0.35)
    assert sorted(idx.tolist()) == [0, 1, 2, 3]
    got = dict(zip(idx.tolist(), sc.tolist()))
    assert got[0] == pytest.approx(0.9) and got[2] == pytest.approx(0.7)
    assert got[1] == pytest.approx(0.8 * np.exp(-(10 / 12) ** 2 / 0.35))
    # [0, 10] vs [5, 15]: inter 6, union 11 + 11 - 6 = 16 -> 0.375 < 0.4: untouched by the keeper.
    assert got[3] == pytest.approx(0.6)
    # Standard (exclusive) IoU: [0, 10] vs [5, 15] is 5 / 15; still below 0.4.
    idx2, sc2 = one_pass_soft_nms_indices(segs, scores, iou_threshold=0.3, sigma=0.35, inclusive_iou=False)
    assert dict(zip(idx2.tolist(), sc2.tolist()))[3] == pytest.approx(0.6 * np.exp(-(1 / 3) ** 2 / 0.35))
