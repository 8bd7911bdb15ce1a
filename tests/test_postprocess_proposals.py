"""cas_to_proposals and segment_postprocess on hand-built inputs whose answers are known."""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from taltoolkit.postprocess import cas_to_proposals, detections_from_segments, segment_postprocess
from taltoolkit.registry import get
from taltoolkit.structures import Detections, Video




def as_rows(det: Detections) -> list[tuple[int, float, float, float]]:
    return [(int(l), float(s), float(a), float(b)) for (a, b), s, l in zip(det.segments, det.scores, det.labels)]


def approx_rows(rows):
    return [(l, pytest.approx(s, abs=1e-12), pytest.approx(a, abs=1e-12), pytest.approx(b, abs=1e-12))
            for l, s, a, b in rows]


# ----------------------------------------------------------------------------- cas_to_proposals


def test_single_run_oic_by_hand():
    # Class 0 is active on steps 2..4; steps 1 and 5 form the outer region
    # (ceil(0.25 * 3) = 1 step each side).
    cas = np.zeros((10, 2))
    cas[:, 0] = [0, 0.3, 0.9, 0.8, 0.9, 0.1, 0, 0, 0, 0]
    cas[:, 1] = 0.05
    kw = dict(step_s=0.64, cas_thresholds=[0.5], class_threshold=0.5, upsample=1, inflation=0.25,
              score_weight=0.2, nms="none")
    inner = (0.9 + 0.8 + 0.9) / 3
    # masked: steps 1 and 5 are below the 0.5 level -> count as 0
    det = cas_to_proposals(cas, np.array([0.8, 0.1]), **kw)
    assert as_rows(det) == approx_rows([(0, inner - 0.0 + 0.2 * 0.8, 2 * 0.64, 5 * 0.64)])
    # raw: the outer mean is (0.3 + 0.1) / 2
    det = cas_to_proposals(cas, np.array([0.8, 0.1]), contrast="raw", **kw)
    assert as_rows(det) == approx_rows([(0, inner - 0.2 + 0.2 * 0.8, 2 * 0.64, 5 * 0.64)])
    assert det.segments.dtype == np.float64 and det.labels.dtype == np.int64


def test_no_class_above_threshold_uses_top1_and_offset():
    cas = np.zeros((6, 3))
    cas[1:3, 2] = 0.9
    det = cas_to_proposals(cas, [0.1, 0.05, 0.2], step_s=0.5, offset_s=0.25, cas_thresholds=[0.5],
                           class_threshold=0.9, upsample=1, score_weight=0.0, nms="none")
    # run [1, 3) in steps -> [0.25 + 0.5, 0.25 + 1.5]; outer: steps 0 and 3 (masked: 0)
    assert as_rows(det) == approx_rows([(2, 0.9, 0.75, 1.75)])


def test_linear_upsampling_centres_and_seconds():
    # Values sit at step centres: [0, 1, 0] upsampled x2 at centres (k + 0.5) / 2 gives
    # [0, .25, .75, .75, .25, 0]. Level 0.5 -> upsampled run [2, 4) = grid [1, 2);
    # level 0.2 -> run [1, 5) = grid [0.5, 2.5). inflation 0.5: 1 resp. 2 outer steps.
    cas = np.array([[0.0], [1.0], [0.0]])
    kw = dict(step_s=0.64, cas_thresholds=[0.5, 0.2], upsample=2, inflation=0.5, score_weight=0.0, nms="none")
    det = cas_to_proposals(cas, [1.0], **kw)
    assert as_rows(det) == approx_rows([(0, 0.75, 0.64, 1.28), (0, 0.5, 0.32, 1.6)])
    det = cas_to_proposals(cas, [1.0], contrast="raw", **kw)
    # raw outer: level .5 -> steps 1 and 4 (0.25 each); level .2 -> steps 0 and 5 (0 each);
    # both score 0.5 exactly, so the first generated (level 0.5) comes first
    assert as_rows(det) == approx_rows([(0, 0.5, 0.64, 1.28), (0, 0.5, 0.32, 1.6)])


def test_nearest_upsampling_matches_no_upsampling():
    rng = np.random.default_rng(0)
    cas = rng.random((30, 4))
    scores = np.array([0.9, 0.1, 0.6, 0.3])
    kw = dict(step_s=0.64, cas_thresholds=[0.3, 0.5, 0.7], class_threshold=0.5, inflation=0.0, nms="none")
    a = cas_to_proposals(cas, scores, upsample=1, **kw)
    b = cas_to_proposals(cas, scores, upsample=4, interpolation="nearest", **kw)
    # same runs, same seconds, same inner means (inflation 0: no outer region)
    assert np.allclose(a.segments, b.segments) and np.allclose(a.scores, b.scores)
    assert (a.labels == b.labels).all()


def test_positions_map_a_sampled_sequence():
    # Sampled steps at original steps 0, 3, 6, 9 (sparse): sampled step i covers original
    # [p_i, p_i + 3), the last one [9, 10). step_s 0.5, offset 0.25.
    # [0, 1, 1, 0] upsampled x2 (linear): [0, .25, .75, 1, 1, .75, .25, 0].
    # Level 0.5: run [2, 6) -> sampled [1, 3) -> original [3, 9) -> [1.75, 4.75] s.
    # Level 0.2: run [1, 7) -> sampled [0.5, 3.5) -> original [1.5, 9.5) -> [1.0, 5.0] s.
    cas = np.array([[0.0], [1.0], [1.0], [0.0]])
    det = cas_to_proposals(cas, [1.0], step_s=0.5, offset_s=0.25, positions=np.array([0, 3, 6, 9]),
                           cas_thresholds=[0.5, 0.2], upsample=2, score_weight=0.0, nms="none")
    np.testing.assert_allclose(sorted(det.segments.tolist()), [[1.0, 5.0], [1.75, 4.75]], rtol=0, atol=1e-12)
    # identity positions give exactly the unsampled result
    a = cas_to_proposals(cas, [1.0], step_s=0.5, positions=np.arange(4), cas_thresholds=[0.5, 0.2], upsample=3)
    b = cas_to_proposals(cas, [1.0], step_s=0.5, cas_thresholds=[0.5, 0.2], upsample=3)
    assert np.allclose(a.segments, b.segments) and np.allclose(a.scores, b.scores)
    # repeated positions (a short video stretched): each step covers its one original step
    det = cas_to_proposals(np.array([[1.0], [1.0], [0.0], [0.0]]), [1.0], step_s=1.0,
                           positions=np.array([0, 0, 1, 1]), cas_thresholds=[0.5], upsample=1, nms="none")
    assert det.segments.tolist() == [[0.0, 1.0]]
    with pytest.raises(ValueError, match="non-decreasing"):
        cas_to_proposals(cas, [1.0], step_s=0.5, positions=np.array([0, 3, 2, 9]))


def test_seconds_agree_with_video_boundaries():
    # A run over steps [a, b) must map to Video.boundaries()[a], [b] for every reader layout.
    cas = np.zeros((12, 1))
    cas[4:9, 0] = 1.0
    for step_s, offset_s in [(0.64, 0.0), (4 / 30, (16 / 2 - 4 / 2) / 30), (123.4 / 12, 0.0)]:
        v = Video("v", np.zeros((12, 1), np.float32), duration=20.0, fps=30.0, step_s=step_s, offset_s=offset_s)
        det = cas_to_proposals(cas, [1.0], step_s=v.step_s, offset_s=v.offset_s, cas_thresholds=[0.5],
                               upsample=5, interpolation="nearest", nms="none")
        b = v.boundaries()
        np.testing.assert_allclose(det.segments, [[b[4], b[9]]], rtol=0, atol=1e-12)


def test_actionness_levels_and_masked_contrast():
    # Actionness defines the runs; the contrast is on the class CAS masked by the level.
    cas = np.array([[0.2], [0.4], [0.6], [0.4], [0.2], [0.3]])
    act = np.array([0.1, 0.9, 0.9, 0.9, 0.1, 0.1])
    det = cas_to_proposals(cas, [0.5], act, step_s=1.0, cas_thresholds=[], actionness_thresholds=[0.5],
                           upsample=1, inflation=0.25, score_weight=0.2, nms="none")
    # run [1, 4): inner mean(.4, .6, .4); outer steps 0 and 4 are outside the mask -> 0
    assert as_rows(det) == approx_rows([(0, (0.4 + 0.6 + 0.4) / 3 + 0.2 * 0.5, 1.0, 4.0)])
    det = cas_to_proposals(cas, [0.5], act, step_s=1.0, cas_thresholds=[], actionness_thresholds=[0.5],
                           upsample=1, inflation=0.25, score_weight=0.2, nms="none", contrast="raw")
    assert as_rows(det) == approx_rows([(0, (0.4 + 0.6 + 0.4) / 3 - 0.2 + 0.2 * 0.5, 1.0, 4.0)])
    # without actionness the actionness levels are ignored
    det = cas_to_proposals(cas, [0.5], step_s=1.0, cas_thresholds=[], actionness_thresholds=[0.5], upsample=1)
    assert len(det) == 0


def test_masked_cas_contrast_masks_cas_levels_only():
    # ACM-Net: a CAS level's run is scored on the CAS masked by the level; an actionness
    # level's run on the raw CAS.
    cas = np.array([[0.2], [0.4], [0.6], [0.4], [0.2], [0.3]])
    act = np.array([0.1, 0.1, 0.9, 0.1, 0.1, 0.1])
    det = cas_to_proposals(cas, [0.5], act, step_s=1.0, cas_thresholds=[0.35], actionness_thresholds=[0.5],
                           upsample=1, inflation=0.25, score_weight=0.0, nms="none", contrast="masked_cas")
    masked_cas_run = (0, (0.4 + 0.6 + 0.4) / 3 - 0.0, 1.0, 4.0)  # outer steps 0 and 4 below 0.35 -> 0
    raw_act_run = (0, 0.6 - (0.4 + 0.4) / 2, 2.0, 3.0)  # outer steps 1 and 3 unmasked
    assert sorted(as_rows(det), key=lambda r: r[2]) == approx_rows([masked_cas_run, raw_act_run])
    with pytest.raises(ValueError, match="contrast"):
        cas_to_proposals(cas, [0.5], step_s=1.0, contrast="bogus")


def test_oic_clipped_outer_region_and_several_runs():
    # Two runs at level 0.5 in one class: [0, 2) touches the start (no left outer region),
    # [5, 9) has ceil(0.3 * 4) = 2 outer steps each side, the right side clipped at T = 10.
    c = np.array([0.9, 0.7, 0.2, 0.1, 0.4, 0.8, 0.6, 0.9, 0.7, 0.3])
    det = cas_to_proposals(c[:, None], [1.0], step_s=1.0, cas_thresholds=[0.5], upsample=1,
                           inflation=0.3, score_weight=0.0, contrast="raw", nms="none")
    s1 = (0.9 + 0.7) / 2 - 0.2 / 1  # outer: step 2 only (ceil(0.6) = 1)
    s2 = (0.8 + 0.6 + 0.9 + 0.7) / 4 - (0.1 + 0.4 + 0.3) / 3  # outer: steps 3, 4 and 9
    assert as_rows(det) == approx_rows(sorted([(0, s1, 0.0, 2.0), (0, s2, 5.0, 9.0)], key=lambda r: -r[1]))


def test_nested_levels_and_per_class_nms():
    # Levels 0.2 and 0.5 give nested runs [0, 4) (score 0.6) and [1, 3) (score 0.9), IoU 0.5.
    cas = np.array([[0.3, 0.3], [0.9, 0.9], [0.9, 0.9], [0.3, 0.3], [0.0, 0.0], [0.0, 0.0]])
    kw = dict(step_s=1.0, cas_thresholds=[0.2, 0.5], class_threshold=0.5, upsample=1, inflation=0.25,
              score_weight=0.0)
    det = cas_to_proposals(cas[:, :1], [1.0], nms="hard", nms_threshold=0.5, **kw)
    assert as_rows(det) == approx_rows([(0, 0.9, 1.0, 3.0), (0, 0.6, 0.0, 4.0)])  # IoU 0.5 is not > 0.5
    det = cas_to_proposals(cas[:, :1], [1.0], nms="hard", nms_threshold=0.4, **kw)
    assert as_rows(det) == approx_rows([(0, 0.9, 1.0, 3.0)])
    # two classes never suppress each other; top_k keeps the best overall
    det = cas_to_proposals(cas, [1.0, 1.0], nms="hard", nms_threshold=0.4, **kw)
    assert sorted(det.labels.tolist()) == [0, 1] and np.allclose(det.scores, 0.9)
    det = cas_to_proposals(cas, [1.0, 1.0], nms="hard", nms_threshold=0.6, top_k=3, **kw)
    assert len(det) == 3 and list(det.scores) == sorted(det.scores, reverse=True)
    # soft: the nested one decays by exp(-0.5**2 / sigma)
    det = cas_to_proposals(cas[:, :1], [1.0], nms="soft", nms_threshold=0.5, sigma=0.3, **kw)
    assert as_rows(det) == approx_rows([(0, 0.9, 1.0, 3.0), (0, 0.6 * math.exp(-0.25 / 0.3), 0.0, 4.0)])


def test_duration_clip_and_empty_cases():
    cas = np.zeros((5, 1))
    cas[3:, 0] = 1.0
    det = cas_to_proposals(cas, [1.0], step_s=1.0, duration=4.5, cas_thresholds=[0.5], upsample=1)
    assert det.segments.tolist() == [[3.0, 4.5]]
    assert len(cas_to_proposals(np.zeros((0, 3)), np.zeros(3), step_s=1.0)) == 0
    assert len(cas_to_proposals(np.zeros((5, 1)), [1.0], step_s=1.0, cas_thresholds=[0.5])) == 0
    with pytest.raises(ValueError, match="class_scores"):
        cas_to_proposals(np.zeros((5, 2)), [1.0], step_s=1.0)
    with pytest.raises(ValueError, match="nms"):
        cas_to_proposals(np.zeros((5, 1)), [1.0], step_s=1.0, nms="fast")


def test_torch_inputs_accepted():
    cas = torch.zeros(6, 1)
    cas[2:4, 0] = 1.0
    det = cas_to_proposals(cas, torch.tensor([1.0]), step_s=1.0, cas_thresholds=[0.5], upsample=1)
    assert det.segments.tolist() == [[2.0, 4.0]]


# ----------------------------------------------------------------------------- segment_postprocess


def test_segment_postprocess_filters_and_maps_to_seconds():
    segs = np.array([[0.0, 10.0], [0.0, 10.0], [20.0, 20.01], [30.0, 40.0], [-2.0, 3.0], [50.0, 70.0]])
    scores = np.array([0.9, 0.0005, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([0, 0, 1, 1, 2, 2])
    det = segment_postprocess(segs, scores, labels, step_s=0.5, offset_s=0.1, duration=30.0,
                              nms_method="hard", iou_threshold=0.5, pre_nms_thresh=0.001,
                              duration_thresh=0.05, max_seg_num=10)
    # dropped: score 0.0005 (pre_nms_thresh) and the 0.01-long segment (duration_thresh)
    expected = [(0, 0.9, 0.1, 5.1), (1, 0.7, 15.1, 20.1), (2, 0.6, 0.0, 1.6), (2, 0.5, 25.1, 30.0)]
    assert as_rows(det) == approx_rows(expected)


def test_segment_postprocess_soft_hard_caps_and_voting():
    segs = np.array([[0.0, 10.0], [1.0, 11.0], [5.0, 15.0], [40.0, 50.0]])
    scores = np.array([0.9, 0.6, 0.5, 0.4])
    labels = np.array([0, 0, 0, 1])
    # soft, multiclass. Class 0: select [0, 10]; [1, 11] (IoU 9/11) -> 0.157, [5, 15] (IoU 1/3)
    # -> 0.400; select [5, 15]; [1, 11] decays again by its IoU 6/14 with it. Class 1 alone.
    det = segment_postprocess(segs, scores, labels, nms_method="soft", sigma=0.5, min_score=0.001,
                              iou_threshold=0.1, max_seg_num=10)
    g = lambda iou: math.exp(-iou * iou / 0.5)  # noqa: E731
    s_c = 0.5 * g(1 / 3)
    s_b = 0.6 * g(9 / 11) * g(6 / 14)
    assert as_rows(det) == approx_rows([(0, 0.9, 0.0, 10.0), (0, s_c, 5.0, 15.0), (1, 0.4, 40.0, 50.0),
                                        (0, s_b, 1.0, 11.0)])
    # max_seg_num caps the output
    assert len(segment_postprocess(segs, scores, labels, nms_method="soft", max_seg_num=2)) == 2
    # hard NMS at 0.5 drops [1, 11] only
    det = segment_postprocess(segs, scores, labels, nms_method="hard", iou_threshold=0.5)
    assert det.segments.tolist() == [[0.0, 10.0], [5.0, 15.0], [40.0, 50.0]]
    # class-agnostic hard NMS + voting: the kept [0, 10] becomes [6/17, 176/17] (see the
    # voting test in test_postprocess_nms.py); voting is off for multiclass (ActionFormer)
    det = segment_postprocess(segs, scores, labels, nms_method="hard", iou_threshold=0.5,
                              multiclass=False, voting_thresh=0.75)
    assert det.segments[0].tolist() == pytest.approx([6 / 17, 176 / 17])
    det = segment_postprocess(segs, scores, labels, nms_method="hard", iou_threshold=0.5,
                              multiclass=True, voting_thresh=0.75)
    assert det.segments[0].tolist() == [0.0, 10.0]
    # "none": sorted and capped only
    det = segment_postprocess(segs, scores, labels, nms_method="none", max_seg_num=3)
    assert det.scores.tolist() == [0.9, 0.6, 0.5]
    assert len(segment_postprocess(np.zeros((0, 2)), np.zeros(0), np.zeros(0, int))) == 0


def test_actionformer_time_mapping():
    # ActionFormer THUMOS: (x * stride + 0.5 * num_frames) / fps with stride 4, 16 frames.
    # structures.py: step_s = 4 / fps, offset_s = (16 / 2 - 4 / 2) / fps; pass x + 0.5.
    fps, x = 30.0, np.array([[10.3, 25.0]])
    det = segment_postprocess(x + 0.5, np.array([0.9]), np.array([0]), step_s=4 / fps,
                              offset_s=(16 / 2 - 4 / 2) / fps, nms_method="none")
    np.testing.assert_allclose(det.segments, (x * 4 + 0.5 * 16) / fps, rtol=1e-12)


def test_detections_from_segments():
    det = detections_from_segments(torch.tensor([[1.0, 3.0], [-1.0, 9.0]]), torch.tensor([0.5, 0.4]),
                                   torch.tensor([2, 0]), step_s=2.0, offset_s=0.5, duration=10.0)
    assert det.segments.tolist() == [[2.5, 6.5], [0.0, 10.0]] and det.labels.tolist() == [2, 0]
    # without duration only negative times are clipped (as ActionFormer), seconds in, seconds out
    det = detections_from_segments(np.array([[-3.0, 50.0]]), np.array([0.5]), np.array([1]))
    assert det.segments.tolist() == [[0.0, 50.0]]


# ----------------------------------------------------------------------------- registration


def test_registered_with_config_keyword_names():
    assert get("postprocessor", "cas_to_proposals").obj is cas_to_proposals
    assert get("postprocessor", "segment_nms").obj is segment_postprocess
    params = inspect.signature(cas_to_proposals).parameters
    for name in ["cas_thresholds", "actionness_thresholds", "class_threshold", "upsample", "interpolation",
                 "inflation", "score_weight", "contrast", "nms", "nms_threshold", "sigma", "top_k",
                 "step_s", "offset_s", "positions", "duration"]:
        assert name in params, name
    params = inspect.signature(segment_postprocess).parameters
    for name in ["pre_nms_thresh", "pre_nms_topk", "duration_thresh", "nms_method", "iou_threshold", "sigma",
                 "min_score", "max_seg_num", "multiclass", "voting_thresh", "step_s", "offset_s", "duration"]:
        assert name in params, name
