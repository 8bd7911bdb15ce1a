"""Detection mAP: bit-identical to the loop restatement of the ActivityNet rule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import reference_anet as ref

from taltoolkit.evaluation import (
    DEFAULT_TIOU_THRESHOLDS,
    EvaluationError,
    detection_map,
    get_preset,
    preset_names,
)
from taltoolkit.evaluation.detection import _visit_order
from taltoolkit.structures import Detections

# ----------------------------------------------------------------------------- helpers


def _random_case(rng: np.random.Generator, big: bool = False):
    """Small ActivityNet-style GT + results with coarse values, so that ties in score and in
    tIoU, duplicate predictions and duplicate ground truth are common. Includes videos of
    another subset, predictions for unknown videos, classes that never occur in the subset
    and zero-length segments."""
    n_cls = int(rng.integers(1, 6))
    classes = [f"class{i}" for i in range(n_cls)]
    grid = 8 if big else 20
    db = {}
    for v in range(int(rng.integers(1, 4 if big else 6))):
        anns = []
        for _ in range(int(rng.integers(8, 40) if big else rng.integers(0, 6))):
            s = float(rng.integers(0, grid)) / 2
            # Only the first classes get ground truth now and then, so some never occur.
            c = classes[int(rng.integers(0, max(1, n_cls - int(rng.integers(0, 2)))))]
            anns.append({"label": c, "segment": [s, s + float(rng.integers(0, 8)) / 2]})
        db[f"vid{v}"] = {"subset": "test" if rng.random() < 0.75 else "validation",
                         "annotations": anns, "duration": 30.0}
    results = {}
    for v in list(db) + ["not_in_gt"]:
        if rng.random() < 0.15:
            continue
        items = []
        for _ in range(int(rng.integers(0, 80 if big else 12))):
            s = float(rng.integers(0, grid)) / 2
            items.append({"label": classes[int(rng.integers(0, n_cls))],
                          "score": float(rng.integers(0, 5)) / 4,
                          "segment": [s, s + float(rng.integers(0, 8)) / 2]})
            if rng.random() < 0.1:  # exact duplicate
                items.append(dict(items[-1]))
        results[v] = items
    return {"database": db, "classes": classes}, {"results": results}, classes


def _has_test_gt(gt: dict) -> bool:
    return any(e["subset"] == "test" and e["annotations"] for e in gt["database"].values())


def _compare(gt, pred, classes, thresholds):
    ours = detection_map(gt, pred, classes, tiou_thresholds=thresholds, subset="test")
    ap, idx, mAP, avg = ref.evaluate(gt, pred, "test", thresholds, unknown="drop")
    cols = [classes.index(c) for c in idx]
    np.testing.assert_array_equal(ours.ap[:, cols], ap)  # bit for bit
    np.testing.assert_array_equal(ours.mAP, mAP)
    assert ours.average_mAP == avg
    absent = [j for j, c in enumerate(classes) if c not in idx]
    assert np.isnan(ours.ap[:, absent]).all()
    return ours


# ----------------------------------------------------------------------------- against the loop


@pytest.mark.parametrize("chunk", range(4))
def test_random_small_cases_match_reference(chunk):
    th = [0.1, 0.25, 0.5, 0.75]
    n = 0
    for seed in range(chunk * 150, (chunk + 1) * 150):
        gt, pred, classes = _random_case(np.random.default_rng(seed))
        if not _has_test_gt(gt):
            continue
        _compare(gt, pred, classes, th)
        n += 1
    assert n > 80


def test_random_tie_heavy_larger_cases_match_reference():
    # Many ground truths per (video, class) and many predictions per class with few
    # distinct values: numpy's argsort is not stable beyond 16 elements, so this checks
    # that ties fall exactly where the official argsort-based ordering puts them.
    th = np.linspace(0.1, 0.9, 9)
    for seed in range(60):
        gt, pred, classes = _random_case(np.random.default_rng(10_000 + seed), big=True)
        if _has_test_gt(gt):
            _compare(gt, pred, classes, th)


def test_detections_input_equals_results_json():
    rng = np.random.default_rng(3)
    gt, pred, classes = _random_case(rng, big=True)
    while not _has_test_gt(gt):
        gt, pred, classes = _random_case(rng, big=True)
    dets = {}
    for v, items in pred["results"].items():
        dets[v] = Detections(
            segments=np.array([it["segment"] for it in items], dtype=float).reshape(-1, 2),
            scores=np.array([it["score"] for it in items], dtype=float),
            labels=np.array([classes.index(it["label"]) for it in items], dtype=np.int64),
        )
    a = detection_map(gt, pred, classes, tiou_thresholds=[0.3, 0.5])
    b = detection_map(gt["database"], dets, classes, tiou_thresholds=[0.3, 0.5])
    c = detection_map(gt, pred["results"], classes, tiou_thresholds=[0.3, 0.5])
    np.testing.assert_array_equal(a.ap, b.ap)
    np.testing.assert_array_equal(a.ap, c.ap)


def test_visit_order_fast_path_equals_full_argsort():
    rng = np.random.default_rng(0)
    for G in (1, 2, 5, 17, 40):
        tiou = rng.integers(0, 6, size=(300, G)) / 5.0
        tiou[rng.random(tiou.shape) < 0.05] = np.nan
        passes = ~(tiou < 0.4)
        keep = passes.any(axis=1)
        tiou, passes = tiou[keep], passes[keep]
        length = passes.sum(axis=1)
        col, w = _visit_order(tiou, passes, length)
        full = np.argsort(tiou, axis=1)[:, ::-1]
        for i in range(len(tiou)):
            np.testing.assert_array_equal(col[i, :length[i]], full[i, :length[i]])


# ----------------------------------------------------------------------------- the rule, by hand


def _tiny_gt():
    return {"database": {
        "v1": {"subset": "test", "annotations": [
            {"label": "A", "segment": [0.0, 10.0]}, {"label": "A", "segment": [20.0, 30.0]}]},
        "v2": {"subset": "test", "annotations": [{"label": "B", "segment": [5.0, 6.0]}]},
        "v3": {"subset": "validation", "annotations": [{"label": "A", "segment": [0.0, 10.0]}]},
    }}


def test_hand_computed_ap():
    pred = {"results": {"v1": [
        {"label": "A", "score": 0.9, "segment": [0.0, 10.0]},   # tIoU 1.0 with gt0: TP
        {"label": "A", "score": 0.8, "segment": [1.0, 10.0]},   # gt0 again, taken: FP
        {"label": "A", "score": 0.7, "segment": [20.0, 25.0]},  # tIoU exactly 0.5 with gt1
    ]}}
    r = detection_map(_tiny_gt(), pred, ["A", "B", "C"], tiou_thresholds=[0.5, 0.7])
    # 0.5: TP FP TP -> P = 1, .5, .667; R = .5, .5, 1 -> AP = .5 * 1 + .5 * 2/3
    # 0.7: TP FP FP -> AP = .5 * 1
    assert r.ap[0, 0] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-15)
    assert r.ap[1, 0] == pytest.approx(0.5, abs=1e-15)
    # B has ground truth but no predictions: AP 0, and it enters the mean.
    assert r.ap[0, 1] == 0 and r.ap[1, 1] == 0
    # C never occurs in the test ground truth: NaN, and it stays out of the mean.
    assert np.isnan(r.ap[:, 2]).all()
    np.testing.assert_allclose(r.mAP, [(0.5 + 1 / 3) / 2, 0.25])
    assert r.evaluated_classes == ["A", "B"]
    assert list(r.num_ground_truth) == [2, 1, 0]


def test_other_subset_and_unknown_video_are_false_positives():
    pred = {"results": {
        "v3": [{"label": "A", "score": 1.0, "segment": [0.0, 10.0]}],  # validation video
        "zz": [{"label": "A", "score": 0.95, "segment": [0.0, 10.0]}],  # unknown video
        "v1": [{"label": "A", "score": 0.9, "segment": [0.0, 10.0]}],
    }}
    r = detection_map(_tiny_gt(), pred, ["A", "B"], tiou_thresholds=[0.5])
    # FP FP TP -> P = 0, 0, 1/3; R = 0, 0, .5 -> AP = .5 * 1/3
    assert r.ap[0, 0] == pytest.approx(1 / 6, abs=1e-15)


def test_highest_tiou_unmatched_ground_truth_is_taken():
    gt = {"database": {"v": {"subset": "test", "annotations": [
        {"label": "A", "segment": [0.0, 10.0]}, {"label": "A", "segment": [0.0, 6.0]}]}}}
    pred = {"results": {"v": [
        {"label": "A", "score": 0.9, "segment": [0.0, 6.0]},  # 1.0 with gt1, 0.6 with gt0
        {"label": "A", "score": 0.8, "segment": [0.0, 6.0]},  # gt1 taken -> gt0 at 0.6
    ]}}
    r = detection_map(gt, pred, ["A"], tiou_thresholds=[0.5, 0.7])
    assert r.ap[0, 0] == 1.0  # both TP at 0.5
    assert r.ap[1, 0] == 0.5  # second is FP at 0.7


def test_empty_predictions_give_zero():
    r = detection_map(_tiny_gt(), {"results": {}}, ["A", "B"], tiou_thresholds=[0.5])
    assert r.mAP[0] == 0 and r.average_mAP == 0
    r2 = detection_map(_tiny_gt(), {}, ["A", "B"], tiou_thresholds=[0.5])
    assert r2.mAP[0] == 0


def test_zero_length_segments_follow_official_nan_rule():
    # Two zero-length segments have tIoU 0/0 = NaN, which the official walk counts as a match
    # wherever they are; the reference reproduces the official arithmetic.
    gt = {"database": {"v": {"subset": "test", "annotations": [
        {"label": "A", "segment": [4.0, 4.0]}, {"label": "A", "segment": [1.0, 3.0]}]}}}
    pred = {"results": {"v": [
        {"label": "A", "score": 0.9, "segment": [8.0, 8.0]},
        {"label": "A", "score": 0.8, "segment": [1.0, 3.0]},
    ]}}
    _compare(gt, pred, ["A"], [0.5])
    assert detection_map(gt, pred, ["A"], tiou_thresholds=[0.5]).ap[0, 0] == 1.0


def test_label_absent_from_subset_is_ignored_where_official_raises():
    pred = {"results": {"v1": [
        {"label": "A", "score": 0.9, "segment": [0.0, 10.0]},
        {"label": "C", "score": 0.95, "segment": [0.0, 10.0]},  # C: no ground truth in test
    ]}}
    with pytest.raises(KeyError):
        ref.evaluate(_tiny_gt(), pred, "test", [0.5])  # what the official tool does
    r = detection_map(_tiny_gt(), pred, ["A", "B", "C"], tiou_thresholds=[0.5])
    assert r.num_ignored_predictions == 1
    ap, idx, mAP, _ = ref.evaluate(_tiny_gt(), pred, "test", [0.5], unknown="drop")
    np.testing.assert_array_equal(r.mAP, mAP)


def test_classes_default_to_file_then_sorted_labels():
    gt = _tiny_gt()
    pred = {"results": {"v1": [{"label": "A", "score": 0.9, "segment": [0.0, 10.0]}]}}
    r = detection_map(gt, pred, tiou_thresholds=[0.5])
    assert r.classes == ["A", "B"]
    gt2 = dict(gt, classes=["B", "A", "Z"])
    r2 = detection_map(gt2, pred, tiou_thresholds=[0.5])
    assert r2.classes == ["B", "A", "Z"] and np.isnan(r2.ap[0, 2])
    np.testing.assert_array_equal(r.mAP, r2.mAP)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("segment,needle", [
    ([5.0, 4.0], "ends before it starts"),
    ([-1.0, 4.0], "negative time"),
    ([float("nan"), 4.0], "not finite"),
])
def test_bad_prediction_segments(segment, needle):
    pred = {"results": {"v1": [{"label": "A", "score": 0.9, "segment": segment}]}}
    with pytest.raises(EvaluationError, match=needle) as e:
        detection_map(_tiny_gt(), pred, ["A", "B"], tiou_thresholds=[0.5])
    assert e.value.source == "predictions" and "v1" in str(e.value)


def test_bad_inputs_raise_clear_errors():
    good = {"results": {"v1": [{"label": "A", "score": 0.9, "segment": [0, 1]}]}}
    with pytest.raises(EvaluationError, match="'Q' is not a class"):
        detection_map(_tiny_gt(), {"results": {"v1": [{"label": "Q", "score": 1, "segment": [0, 1]}]}},
                      ["A", "B"])
    with pytest.raises(EvaluationError, match="needs 'label', 'score' and 'segment'"):
        detection_map(_tiny_gt(), {"results": {"v1": [{"label": "A", "segment": [0, 1]}]}}, ["A", "B"])
    with pytest.raises(EvaluationError, match=r"must be \[start, end\]"):
        detection_map(_tiny_gt(), {"results": {"v1": [{"label": "A", "score": 1, "segment": [0, 1, 2]}]}},
                      ["A", "B"])
    with pytest.raises(EvaluationError, match="must be a number"):
        detection_map(_tiny_gt(), {"results": {"v1": [{"label": "A", "score": "hi", "segment": [0, 1]}]}},
                      ["A", "B"])
    with pytest.raises(EvaluationError, match="subset 'training' has no videos") as e:
        detection_map(_tiny_gt(), good, ["A", "B"], subset="training")
    assert e.value.source == "ground_truth"
    with pytest.raises(EvaluationError, match="not in the class list"):
        detection_map(_tiny_gt(), good, ["A"])
    with pytest.raises(EvaluationError, match="thresholds"):
        detection_map(_tiny_gt(), good, ["A", "B"], tiou_thresholds=[1.5])
    with pytest.raises(EvaluationError, match="tiou_thresholds="):
        detection_map(_tiny_gt(), good, [0.3, 0.5])  # thresholds passed as classes
    with pytest.raises(EvaluationError, match="labels must be class ids"):
        detection_map(_tiny_gt(), {"v1": Detections(np.zeros((1, 2)), np.ones(1), np.array([7]))},
                      ["A", "B"])
    with pytest.raises(EvaluationError, match="'subset'"):
        detection_map({"database": {"v": {"annotations": []}}}, good, ["A"])


# ----------------------------------------------------------------------------- result and presets


def test_to_dict_percent_and_nan_as_null():
    pred = {"results": {"v1": [{"label": "A", "score": 0.9, "segment": [0.0, 10.0]}]}}
    r = detection_map(_tiny_gt(), pred, ["A", "B", "C"], preset="thumos14_full")
    d = r.to_dict()
    assert d["tiou_thresholds"] == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert d["mAP"] == [100 * x for x in r.mAP]
    assert d["average_mAP"] == 100 * r.average_mAP
    assert d["per_class_AP"]["C"] == [None] * 5
    assert d["per_class_AP"]["B"] == [0.0] * 5
    assert set(d["averages"]) == {"avg(0.3:0.7)"}
    assert d["evaluated_classes"] == ["A", "B"]
    f = r.to_dict(percent=False)
    assert f["mAP"] == [float(x) for x in r.mAP]


def test_presets():
    assert set(preset_names()) >= {"thumos14_weak", "thumos14_unsup", "thumos14_full",
                                   "thumos14_semi", "activitynet"}
    w = get_preset("thumos14_weak")
    assert w.tiou_thresholds == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    assert set(w.averages) == {"avg(0.1:0.5)", "avg(0.3:0.7)", "avg(0.1:0.7)"}
    assert get_preset("thumos14_unsup").tiou_thresholds == w.tiou_thresholds
    assert get_preset("thumos14_full").tiou_thresholds == (0.3, 0.4, 0.5, 0.6, 0.7)
    assert get_preset("thumos14_semi").tiou_thresholds == (0.3, 0.4, 0.5, 0.6, 0.7)
    a = get_preset("activitynet")
    assert len(a.tiou_thresholds) == 10 and a.tiou_thresholds[0] == 0.5 and a.tiou_thresholds[-1] == 0.95
    assert a.tiou_thresholds == DEFAULT_TIOU_THRESHOLDS and a.subset == "validation"
    with pytest.raises(ValueError, match="thumos14_weak"):
        get_preset("thumos")


def test_preset_averages():
    pred = {"results": {"v1": [{"label": "A", "score": 0.9, "segment": [0.0, 8.0]},
                               {"label": "A", "score": 0.8, "segment": [22.0, 30.0]}]}}
    r = detection_map(_tiny_gt(), pred, ["A", "B"], preset="thumos14_weak")
    assert r.subset == "test"
    assert r.averages["avg(0.1:0.7)"] == r.average_mAP
    assert r.averages["avg(0.1:0.5)"] == pytest.approx(r.mAP[:5].mean())
    assert r.averages["avg(0.3:0.7)"] == pytest.approx(r.mAP[2:].mean())
    assert not math.isnan(r.average_mAP)


def test_preset_from_what_the_dataset_names():
    from taltoolkit.evaluation import resolve_preset

    assert resolve_preset("thumos14", "weak") == "thumos14_weak"
    assert resolve_preset("thumos14", "unsup") == "thumos14_unsup"
    assert resolve_preset("thumos14", "full") == "thumos14_full"
    assert resolve_preset("thumos14", "semi") == "thumos14_semi"
    assert resolve_preset("activitynet", "weak") == "activitynet"  # a preset: every paradigm
    assert resolve_preset("thumos14_full", "weak") == "thumos14_full"
    with pytest.raises(ValueError, match="evaluation.preset"):
        resolve_preset("thumos14", "magic")
    # No guess from a name: a dataset that names no preset (or an unknown one) is told to.
    with pytest.raises(ValueError, match="mydata names no evaluation preset.*evaluation.preset"):
        resolve_preset(None, "weak", "mydata")
    with pytest.raises(ValueError, match="neither a preset nor a family"):
        resolve_preset("activitynet13", "weak")
