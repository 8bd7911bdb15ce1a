"""tools/eval.py on the real THUMOS14 ground truth: numbers, JSON, errors, start-up imports."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import reference_anet as ref

from taltoolkit.evaluation import detection_map, get_preset

REPO = Path(__file__).resolve().parent.parent
EVAL = REPO / "tools" / "eval.py"
GT = REPO / "taltoolkit" / "annotations" / "thumos14" / "thumos14_annotations.json"

_spec = importlib.util.spec_from_file_location("taltoolkit_tools_eval", EVAL)
eval_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_cli)


@pytest.fixture(scope="module")
def gt_json() -> dict:
    return json.loads(GT.read_text())


def _predictions(gt_json: dict, n_videos: int = 12, per_video: int = 40, seed: int = 0) -> dict:
    """Seeded predictions near the ground truth of the first test videos (a small subset
    keeps the test fast; the other test videos simply get no predictions)."""
    rng = np.random.default_rng(seed)
    classes = gt_json["classes"]
    out = {}
    videos = [v for v, e in gt_json["database"].items() if e["subset"] == "test"][:n_videos]
    for v in videos:
        anns = gt_json["database"][v]["annotations"]
        items = []
        for _ in range(per_video):
            a = anns[int(rng.integers(0, len(anns)))]
            s, e = a["segment"]
            jit = (e - s) * rng.normal(0, 0.3, 2)
            s2, e2 = max(0.0, s + jit[0]), max(0.0, e + jit[1])
            label = a["label"] if rng.random() < 0.8 else classes[int(rng.integers(0, len(classes)))]
            items.append({"label": label, "score": round(float(rng.random()), 3),
                          "segment": [round(min(s2, e2), 2), round(max(s2, e2), 2)]})
        out[v] = items
    return {"version": "test", "results": out, "external_data": {}}


def _write(path: Path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def test_cli_end_to_end(tmp_path, gt_json):
    pred = _predictions(gt_json)
    pred_path = _write(tmp_path / "pred.json", pred)
    out = tmp_path / "sub" / "metrics.json"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(EVAL), str(GT), pred_path,
         "--preset", "thumos14_weak", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    # Start-up stays light: none of the heavy libraries is imported.
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "numpy" in imported
    for heavy in ("torch", "sklearn", "scipy", "hydra", "matplotlib", "pandas", "omegaconf"):
        assert heavy not in imported, heavy
    # The table.
    assert "tIoU" in proc.stdout and "avg(0.1:0.5)" in proc.stdout and "average" in proc.stdout
    # The JSON: percent values identical to the loop reference.
    m = json.loads(out.read_text())
    preset = get_preset("thumos14_weak")
    for key in ("tiou_thresholds", "mAP", "average_mAP", "per_class_AP", "averages"):
        assert key in m
    assert m["tiou_thresholds"] == list(preset.tiou_thresholds)
    ap, idx, mAP, avg = ref.evaluate(gt_json, pred, "test", preset.tiou_thresholds)
    assert m["mAP"] == [100.0 * float(x) for x in mAP]
    assert m["average_mAP"] == 100.0 * avg
    assert set(m["averages"]) == {"avg(0.1:0.5)", "avg(0.3:0.7)", "avg(0.1:0.7)"}
    assert m["averages"]["avg(0.1:0.7)"] == m["average_mAP"]
    assert set(m["per_class_AP"]) == set(gt_json["classes"])
    for c, j in idx.items():
        assert m["per_class_AP"][c] == [100.0 * float(x) for x in ap[:, j]]
    assert 0 < m["average_mAP"] < 100


def test_cli_tiou_and_subset_flags(tmp_path, gt_json, capsys):
    pred = _predictions(gt_json, n_videos=5, per_video=20, seed=1)
    pred_path = _write(tmp_path / "p.json", pred)
    out = tmp_path / "m.json"
    rc = eval_cli.main([str(GT), pred_path, "--subset", "test", "--tiou", "0.3", "0.5",
                        "--out", str(out), "--per-class"])
    assert rc == 0
    m = json.loads(out.read_text())
    r = detection_map(gt_json, pred, tiou_thresholds=[0.3, 0.5], subset="test")
    assert m["tiou_thresholds"] == [0.3, 0.5]
    assert m["mAP"] == [100.0 * float(x) for x in r.mAP]
    assert "BaseballPitch" in capsys.readouterr().out  # --per-class table


def test_cli_missing_file_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, str(EVAL), str(GT), str(tmp_path / "nope.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.json" in lines[0] and "not found" in lines[0]
    assert "Traceback" not in proc.stderr


def _result(item):
    return {"results": {"video_test_0000004": [item]}}


GOOD = {"label": "CricketBowling", "score": 0.5, "segment": [1.0, 2.0]}


@pytest.mark.parametrize("case,pred,extra,needle", [
    ("not_json", "{not json", [], "not valid JSON"),
    ("pred_is_list", [1, 2], [], "JSON object with a 'results' key"),
    ("no_results_key", {"version": 1}, [], "no 'results' key"),
    ("gt_as_pred", {"database": {}}, [], "looks like a ground-truth file"),
    ("unknown_label", _result(dict(GOOD, label="Jumping")), [], "'Jumping' is not a class"),
    ("negative_segment", _result(dict(GOOD, segment=[-3.0, 2.0])), [], "negative time"),
    ("reversed_segment", _result(dict(GOOD, segment=[5.0, 2.0])), [], "ends before it starts"),
    ("bad_segment", _result(dict(GOOD, segment=[5.0])), [], "[start, end]"),
    ("missing_field", _result({"label": "CricketBowling", "segment": [1, 2]}), [], "needs 'label'"),
    ("empty_subset", _result(GOOD), ["--subset", "training"], "subset 'training' has no videos"),
    ("bad_tiou", _result(GOOD), ["--tiou", "1.5"], "thresholds"),
])
def test_cli_bad_inputs(tmp_path, capsys, case, pred, extra, needle):
    path = tmp_path / f"{case}.json"
    path.write_text(pred if isinstance(pred, str) else json.dumps(pred))
    rc = eval_cli.main([str(GT), str(path), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("eval.py: error: ")
    assert needle in err[0]
    if case not in ("empty_subset", "bad_tiou"):  # those name the GT file / the flag
        assert str(path) in err[0]
    if case == "empty_subset":
        assert str(GT) in err[0]


def test_cli_bad_ground_truth(tmp_path, capsys):
    pred = _write(tmp_path / "p.json", _result(GOOD))
    gt = _write(tmp_path / "gt.json", {"database": {"v": {"annotations": []}}})
    assert eval_cli.main([gt, pred]) == 2
    err = capsys.readouterr().err
    assert gt in err and "'subset'" in err
    # Swapped arguments.
    assert eval_cli.main([pred, str(GT)]) == 2
    assert "looks like a results file" in capsys.readouterr().err
    assert eval_cli.main([str(tmp_path / "missing_gt.json"), pred]) == 2
    assert "missing_gt.json: ground truth file not found" in capsys.readouterr().err


def test_cli_debug_shows_the_exception(tmp_path):
    pred = _write(tmp_path / "p.json", _result(dict(GOOD, segment=[5.0, 2.0])))
    with pytest.raises(Exception, match="ends before it starts"):
        eval_cli.main([str(GT), pred, "--debug"])


def test_cli_reads_what_results_io_writes(tmp_path, gt_json):
    """The CLI parses the results JSON itself (no torch on start-up); check it agrees with
    the postprocess writer / reader wherever those exist."""
    from taltoolkit.postprocess import results_io
    from taltoolkit.structures import Detections

    classes = gt_json["classes"]
    raw = _predictions(gt_json, n_videos=6, per_video=30, seed=2)["results"]
    dets = {
        v: Detections(
            segments=np.array([it["segment"] for it in items], dtype=np.float64),
            scores=np.array([it["score"] for it in items], dtype=np.float64),
            labels=np.array([classes.index(it["label"]) for it in items], dtype=np.int64),
        )
        for v, items in raw.items()
    }
    path = tmp_path / "written.json"
    results_io.write_results_json(str(path), dets, classes)
    out = tmp_path / "m.json"
    assert eval_cli.main([str(GT), str(path), "--tiou", "0.3", "0.5", "--out", str(out), "--quiet"]) == 0
    m = json.loads(out.read_text())
    back = results_io.read_results_json(str(path), classes)
    r = detection_map(gt_json, back, classes, tiou_thresholds=[0.3, 0.5])
    assert m["mAP"] == [100.0 * float(x) for x in r.mAP]


def test_bench_eval_smoke(tmp_path):
    """tools/bench.py eval on a tiny input: runs, reports identical numbers, writes JSON."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench.py"), "eval", "--per-video", "5",
         "--repeat", "1", "--ref-repeat", "1", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["identical"] is True
    assert report["input"]["predictions"] == 5 * report["input"]["videos"]
    assert set(report["speedup"]) == {"cli_vs_loop_reference_with_json_load",
                                      "detection_map_vs_loop_reference_compute_only"}


def test_bench_sinkhorn_smoke(tmp_path):
    """tools/bench.py sinkhorn on a small problem: our plan equals POT's after the same iterations."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench.py"), "sinkhorn", "--snippets", "200", "--clusters", "5",
         "--iters", "20", "--repeat", "1", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["identical"] is True and report["max_abs_plan_difference"] < 1e-9
    assert len(report["runs"]) == 3


@pytest.mark.parametrize("method,extra", [
    ("rmgcl", ["--label-mode", "weak", "model.hidden_dim=32", "memory_branch.num_heads=2"]),
    ("copl", ["--label-mode", "none", "method.iterations=1", "method.shift_channels=8", "model.hidden_dim=16"]),
])
def test_bench_train_smoke(tmp_path, method, extra):
    """tools/bench.py train times an epoch of any method (COPL's clustering stage gets real inference)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench.py"), "train", "--method", method, "--videos", "24",
         "--num-segments", "32", "--feature-dim", "32", "--batch-size", "8", "--epochs", "1", "--out", str(out),
         *extra],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["method"] == method and all(r["seconds_per_epoch"] > 0 for r in report["runs"].values())


def test_bench_apl_reports_each_stage_and_nms_runs(tmp_path):
    """APL through `bench.py actionformer --method apl --label-mode semi`: one time per stage
    (ACP pre-training, supervised, semi); then the NMS benchmark on a small input."""
    out = tmp_path / "apl.json"
    tiny = ["model.embed_dim=32", "model.fpn_dim=32", "model.head_dim=32", "method.icd_hidden=32",
            "method.acp_epochs=2", "method.supervised_epochs=1", "method.semi_epochs=1", "method.tau_neg=0.0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench.py"), "actionformer", "--method", "apl", "--label-mode", "semi",
         "--labelled-fraction", "0.25", "--videos", "12", "--max-seq-len", "128", "--feature-dim", "32",
         "--epochs", "1", "--amp", "bfloat16", "--out", str(out), *tiny],
        capture_output=True, text=True, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    run = report["runs"]["features_on_device=False"]
    assert report["amp"] == "bfloat16" and set(run["stages"]) == {"acp_pretrain", "supervised", "semi"}
    out = tmp_path / "nms.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench.py"), "nms", "--videos", "3", "--proposals", "50",
         "--repeat", "1", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(json.loads(out.read_text())["seconds"]) == 4


@pytest.mark.parametrize("where", ["predictions", "ground_truth"])
def test_cli_refuses_a_duplicated_video(tmp_path, capsys, gt_json, where):
    """json.loads keeps the last of two equal keys: perfect predictions for a video listed
    twice would be scored on one copy only (95 instead of 100 was observed)."""
    video = "video_test_0000004"
    pred = {"results": {video: [dict(GOOD)]}}
    pred_text, gt_text = json.dumps(pred), GT.read_text()
    if where == "predictions":
        pred_text = pred_text[:-2] + ", " + json.dumps({video: [dict(GOOD, score=0.1)]})[1:-1] + "}}"
    else:
        entry = json.dumps(gt_json["database"][video])
        gt_text = gt_text.replace('"database": {', '"database": {' + f'"{video}": {entry}, ', 1)
        assert gt_text.count(f'"{video}"') == 2
    pred_path, gt_path = tmp_path / "p.json", tmp_path / "gt.json"
    pred_path.write_text(pred_text)
    gt_path.write_text(gt_text)
    assert eval_cli.main([str(gt_path), str(pred_path)]) == 2
    err = capsys.readouterr().err
    assert f"'{video}' appears twice" in err
    assert str(pred_path if where == "predictions" else gt_path) in err


@pytest.mark.parametrize("bad,needle", [
    (dict(GOOD, score=True), "score True must be a JSON number"),
    (dict(GOOD, score="0.5"), "score '0.5' must be a JSON number"),
    (dict(GOOD, segment=["1.0", "2.0"]), "segment ['1.0', '2.0'] must be [start, end] as JSON numbers"),
    (dict(GOOD, segment=[True, 2.0]), "must be [start, end] as JSON numbers"),
])
def test_cli_refuses_scores_and_segments_that_are_not_numbers(tmp_path, capsys, bad, needle):
    pred = _write(tmp_path / "p.json", _result(bad))
    assert eval_cli.main([str(GT), pred]) == 2
    err = capsys.readouterr().err
    assert needle in err and pred in err


def test_cli_refuses_string_segments_in_the_ground_truth(tmp_path, capsys, gt_json):
    db = {"video_test_0000004": dict(gt_json["database"]["video_test_0000004"])}
    db["video_test_0000004"]["annotations"] = [{"label": "CricketBowling", "segment": ["1.0", "2.0"]}]
    gt = _write(tmp_path / "gt.json", {"classes": gt_json["classes"], "database": db})
    pred = _write(tmp_path / "p.json", _result(GOOD))
    assert eval_cli.main([gt, pred]) == 2
    err = capsys.readouterr().err
    assert gt in err and "as JSON numbers" in err


@pytest.mark.parametrize("which", ["ground_truth", "predictions"])
def test_cli_out_may_not_replace_an_input(tmp_path, capsys, gt_json, which):
    gt = _write(tmp_path / "gt.json", gt_json)
    pred = _write(tmp_path / "p.json", _predictions(gt_json))
    target = gt if which == "ground_truth" else pred
    before = Path(target).read_bytes()
    # Spelled differently from the argument, as a user might.
    out = str(tmp_path / "." / Path(target).name)
    assert eval_cli.main([gt, pred, "--out", out, "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err
    assert Path(target).read_bytes() == before


def test_cli_metrics_file_mode_follows_the_umask(tmp_path, gt_json):
    pred = _write(tmp_path / "p.json", _predictions(gt_json))
    for umask in (0o022, 0o027):
        old = os.umask(umask)
        try:
            out = tmp_path / f"m{umask:o}.json"
            assert eval_cli.main([str(GT), pred, "--out", str(out), "--quiet"]) == 0
        finally:
            os.umask(old)
        assert out.stat().st_mode & 0o777 == 0o666 & ~umask
