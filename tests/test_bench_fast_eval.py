"""The fast evaluation path against plain-loop transcriptions of the previous implementation.

The evaluation path was made faster (tools/bench.py ``evalstages``/``sidebyside``,
docs/benchmarks.md) under one rule: outputs, and so the mAP, unchanged bit for bit. The
``_loop_*`` functions below are the previous implementations written as plain per-class,
per-proposal loops; the library's functions must return exactly the same arrays on small
fixed inputs (``np.array_equal`` / ``torch.equal``, no tolerance).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from taltoolkit.evaluation.stages import STAGES, StageTimer, record_stages, stage
from taltoolkit.postprocess.proposals import cas_to_proposals
from taltoolkit.postprocess.suppression import one_pass_soft_nms_indices


def _loop_one_pass_soft_nms(segments, scores, labels, iou_threshold=0.4, sigma=0.35, inclusive_iou=True):  # noqa: ANN001, ANN202
    """The previous one-pass Soft-NMS: per class, per queue head, torch ops on the remaining queue."""
    segs = torch.as_tensor(segments, dtype=torch.float64).reshape(-1, 2)
    sc = torch.as_tensor(scores, dtype=torch.float64).reshape(-1).clone()
    n = sc.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long), sc
    lab = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels).reshape(-1).long()
    plus = 1.0 if inclusive_iou else 0.0
    final = sc.clone()
    for c in torch.unique(lab).tolist():
        queue = torch.nonzero(lab == c).reshape(-1)
        queue = queue[torch.argsort(-sc[queue], stable=True)]
        while queue.numel() > 0:
            i, rest = queue[0], queue[1:]
            inter = (torch.minimum(segs[i, 1], segs[rest, 1]) - torch.maximum(segs[i, 0], segs[rest, 0]) + plus).clamp_min(0)
            area_i = segs[i, 1] - segs[i, 0] + plus
            area_r = segs[rest, 1] - segs[rest, 0] + plus
            iou = inter / (area_i + area_r - inter)
            hit = iou >= iou_threshold
            final[rest[hit]] = sc[rest[hit]] * torch.exp(-iou[hit] ** 2 / sigma)
            queue = rest[~hit]
    order = torch.argsort(-final, stable=True)
    return order, final[order]


def _proposal_like(seed: int, n: int, classes: int, rounded: bool):  # noqa: ANN202
    """Many overlapping segments in seconds (as cas_to_proposals makes them), some exact ties."""
    g = np.random.default_rng(seed)
    start = g.random(n) * 60.0
    length = g.exponential(4.0, n) + 0.02
    segs = np.stack([start, start + length], 1)
    scores = g.random(n)
    if rounded:  # ties in score and in coordinates
        segs, scores = np.round(segs, 1), np.round(scores, 2)
    labels = g.integers(0, classes, n)
    return segs, scores, labels


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold,sigma,inclusive", [(0.4, 0.35, True), (0.1, 0.5, False), (0.0, 0.2, True),
                                                        (0.9, 0.35, True)])
def test_one_pass_soft_nms_equals_the_loop(seed: int, threshold: float, sigma: float, inclusive: bool) -> None:
    segs, scores, labels = _proposal_like(seed, 300, 4, rounded=seed % 2 == 1)
    got_idx, got_sc = one_pass_soft_nms_indices(torch.from_numpy(segs), torch.from_numpy(scores),
                                                torch.from_numpy(labels), threshold, sigma, inclusive)
    ref_idx, ref_sc = _loop_one_pass_soft_nms(segs, scores, labels, threshold, sigma, inclusive)
    assert torch.equal(got_idx, ref_idx)
    assert torch.equal(got_sc, ref_sc)  # bit for bit
    assert got_sc.dtype == torch.float64


def test_one_pass_soft_nms_edge_cases() -> None:
    empty = one_pass_soft_nms_indices(torch.zeros(0, 2), torch.zeros(0))
    assert empty[0].numel() == 0 and empty[1].numel() == 0
    one = one_pass_soft_nms_indices(torch.tensor([[1.0, 2.0]]), torch.tensor([0.5]))
    assert one[0].tolist() == [0] and one[1].tolist() == [0.5]
    segs, scores, _ = _proposal_like(3, 50, 1, rounded=True)
    for got, ref in zip(one_pass_soft_nms_indices(torch.from_numpy(segs), torch.from_numpy(scores)),
                        _loop_one_pass_soft_nms(segs, scores, None)):
        assert torch.equal(got, ref)


def _case_like_cas(seed: int, t: int = 120, c: int = 5):  # noqa: ANN202
    g = np.random.default_rng(seed)
    base = g.random((t, c)) * 0.3
    for _ in range(6):  # a few planted bumps so that every threshold has runs
        a = int(g.integers(0, t - 10))
        base[a:a + int(g.integers(3, 10)), int(g.integers(0, c))] += 0.6
    scores = g.random(c)
    scores[int(g.integers(0, c))] = 0.9
    return base.clip(0, 1), scores


@pytest.mark.parametrize("seed", range(4))
def test_cas_to_proposals_with_case_settings_equals_the_loop_nms(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """CASE's post-processing (conf/postprocess/case.yaml) with the fast one-pass Soft-NMS and
    with the previous loop: the same detections, bit for bit."""
    cas, scores = _case_like_cas(seed)
    kw = dict(step_s=0.64, cas_thresholds=[0.1 * i for i in range(1, 10)], actionness_thresholds=[],
              class_threshold=0.25, upsample=24, interpolation="start_linear", inflation=0.15, score_weight=0.2,
              contrast="raw", outer_rounding="bas", nms="one_pass_soft", nms_threshold=0.4, sigma=0.35)
    fast = cas_to_proposals(cas, scores, **kw)
    import taltoolkit.postprocess.suppression as sup

    monkeypatch.setattr(sup, "one_pass_soft_nms_indices", _loop_one_pass_soft_nms)
    slow = cas_to_proposals(cas, scores, **kw)
    assert len(fast.scores) > 50
    assert np.array_equal(fast.segments, slow.segments)
    assert np.array_equal(fast.scores, slow.scores)
    assert np.array_equal(fast.labels, slow.labels)


# ----------------------------------------------------------------------------- stage timing


def test_stage_is_a_no_op_unless_recorded() -> None:
    with stage("prediction"):
        pass
    with record_stages() as timer:
        with stage("prediction"):
            with stage("nms"):
                pass
        with stage("nms"):
            pass
    assert set(timer.seconds) == {"prediction", "nms"}
    assert timer.calls == {"prediction": 1, "nms": 2}
    assert all(v >= 0 for v in timer.seconds.values())
    with stage("mAP"):  # outside the block again: not recorded
        pass
    assert "mAP" not in timer.seconds


def test_nested_stages_are_exclusive() -> None:
    import time

    timer = StageTimer()
    with record_stages(timer):
        with stage("prediction"):
            time.sleep(0.02)
            with stage("clustering_assisted"):
                time.sleep(0.05)
    assert timer.seconds["clustering_assisted"] >= 0.05
    assert 0.02 <= timer.seconds["prediction"] < 0.05  # the nested 0.05 s is not counted twice
    assert set(STAGES) >= set(timer.seconds)
