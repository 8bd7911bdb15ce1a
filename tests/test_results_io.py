"""ActivityNet results JSON: exact round trip, atomic writes, and one clear error per bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from taltoolkit.postprocess.results_io import ResultsFormatError, read_results_json, write_results_json
from taltoolkit.structures import Detections

CLASSES = ["BaseballPitch", "Billiards", "CliffDiving"]
REPO = Path(__file__).resolve().parent.parent


def make_dets(seed: int = 0) -> dict[str, Detections]:
    rng = np.random.default_rng(seed)
    out = {}
    for v, n in [("video_a", 5), ("video_b", 0), ("video_c", 3)]:
        start = rng.random(n) * 100
        segs = np.stack([start, start + rng.random(n) * 10], 1)
        out[v] = Detections(segs, rng.random(n), rng.integers(0, len(CLASSES), n))
    # float32 values and an awkward decimal must come back bit-identical (as float64)
    out["video_c"].segments = out["video_c"].segments.astype(np.float32)
    out["video_c"].scores[0] = 0.1 + 0.2
    return out


def test_round_trip_is_exact(tmp_path):
    dets = make_dets()
    path = tmp_path / "sub" / "predictions.json"  # missing folders are created
    write_results_json(path, dets, CLASSES, external_data={"used": True, "details": "I3D features"})
    doc = json.loads(path.read_text())
    assert doc["version"] == "taltoolkit"
    assert doc["external_data"] == {"used": True, "details": "I3D features"}
    first = doc["results"]["video_a"][0]
    assert set(first) == {"label", "score", "segment"} and first["label"] in CLASSES
    back = read_results_json(path, CLASSES)
    assert list(back) == list(dets)
    for v, d in dets.items():
        b = back[v]
        assert b.segments.dtype == np.float64 and b.scores.dtype == np.float64 and b.labels.dtype == np.int64
        assert b.segments.shape == (len(d), 2)
        assert np.array_equal(b.segments, np.asarray(d.segments, np.float64))
        assert np.array_equal(b.scores, d.scores) and np.array_equal(b.labels, d.labels)
    # without classes, ids index the sorted names found in the file
    found = read_results_json(path)
    names = sorted({e["label"] for entries in doc["results"].values() for e in entries})
    for v in dets:
        assert [names[i] for i in found[v].labels] == [CLASSES[i] for i in dets[v].labels]


def test_default_external_data_and_overwrite(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("old contents")
    write_results_json(str(path), {"v": make_dets()["video_a"]}, CLASSES, version="v2")
    doc = json.loads(path.read_text())
    assert doc["version"] == "v2" and doc["external_data"] == {"used": False, "details": ""}
    assert os.listdir(tmp_path) == ["p.json"]  # no temporary file left behind


def test_crash_during_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    write_results_json(path, make_dets(1), CLASSES)
    before = path.read_bytes()

    import taltoolkit.atomicio as atomicio

    def crash(fd):  # the new text is in the temporary file, not yet renamed over p.json
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(atomicio.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        write_results_json(path, make_dets(2), CLASSES)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["p.json"]


@pytest.mark.parametrize(
    "det, message",
    [
        (Detections(np.array([[1.0, 2.0]]), np.array([0.5]), np.array([3])), r"video 'v', detection 0: label id 3"),
        (Detections(np.array([[1.0, 2.0]]), np.array([0.5]), np.array([-1])), "label id -1"),
        (Detections(np.array([[3.0, 2.0]]), np.array([0.5]), np.array([0])), r"0 <= start <= end"),
        (Detections(np.array([[-1.0, 2.0]]), np.array([0.5]), np.array([0])), r"0 <= start <= end"),
        (Detections(np.array([[1.0, 2.0]]), np.array([np.nan]), np.array([0])), "non-finite"),
        (Detections(np.array([[1.0, np.inf]]), np.array([0.5]), np.array([0])), "non-finite"),
        (Detections(np.array([1.0, 2.0]), np.array([0.5]), np.array([0])), r"segments \(N, 2\)"),
        (Detections(np.array([[1.0, 2.0]]), np.array([0.5]), np.array([0.0])), "integer class ids"),
    ],
)
def test_write_rejects_bad_detections_before_touching_disk(tmp_path, det, message):
    path = tmp_path / "p.json"
    with pytest.raises(ResultsFormatError, match=message):
        write_results_json(path, {"v": det}, CLASSES)
    assert os.listdir(tmp_path) == []


def write_raw(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(text)
    return p


def entry(label="Billiards", score=0.5, segment=(1.0, 2.0)):
    return {"label": label, "score": score, "segment": list(segment) if segment is not None else None}


@pytest.mark.parametrize(
    "doc, message",
    [
        ([1, 2], "expected a JSON object with a 'results' object"),
        ({"version": "x"}, "expected a JSON object with a 'results' object"),
        ({"results": []}, "expected a JSON object with a 'results' object"),
        ({"results": {"v1": {"label": "Billiards"}}}, r"video 'v1': expected a list of detections"),
        ({"results": {"v1": [{"label": "Billiards", "score": 1}]}}, r"video 'v1', detection 0: expected an object"),
        ({"results": {"v1": [entry(), "oops"]}}, r"video 'v1', detection 1: expected an object"),
        ({"results": {"v1": [entry(label="Biliards")]}}, r"unknown label 'Biliards'.*did you mean 'Billiards'"),
        ({"results": {"v1": [entry(label=1)]}}, "'label' must be a class name string"),
        ({"results": {"v1": [entry(score="high")]}}, "'score' must be a finite number"),
        ({"results": {"v1": [entry(score=True)]}}, "'score' must be a finite number"),
        ({"results": {"v1": [entry(segment=(1.0,))]}}, r"'segment' must be \[start, end\]"),
        ({"results": {"v1": [entry(segment=None)]}}, r"'segment' must be \[start, end\]"),
        ({"results": {"v1": [entry(), entry(segment=(5.0, 4.0))]}}, r"video 'v1', detection 1: reversed segment"),
        ({"results": {"v1": [entry(segment=(-0.5, 4.0))]}}, r"detection 0: negative segment start"),
    ],
)
def test_read_errors_name_file_and_entry(tmp_path, doc, message):
    path = write_raw(tmp_path, json.dumps(doc))
    with pytest.raises(ResultsFormatError, match=message) as err:
        read_results_json(path, CLASSES)
    assert str(path) in str(err.value)


def test_read_errors_file_level(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_results_json(missing, CLASSES)
    with pytest.raises(ResultsFormatError, match="not valid JSON"):
        read_results_json(write_raw(tmp_path, '{"results": {"v": [}'), CLASSES)
    # NaN is accepted by Python's json module but is no finite score
    with pytest.raises(ResultsFormatError, match="finite"):
        read_results_json(write_raw(tmp_path, '{"results": {"v": [{"label": "Billiards", "score": NaN, '
                                              '"segment": [1, 2]}]}}'), CLASSES)
    with pytest.raises(ResultsFormatError, match="'v' appears twice"):
        read_results_json(write_raw(tmp_path, '{"results": {"v": [], "v": []}}'), CLASSES)


def test_zero_length_segment_and_integers_are_fine(tmp_path):
    path = write_raw(tmp_path, json.dumps({"results": {"v": [entry(score=1, segment=(3, 3))]}}))
    d = read_results_json(path, CLASSES)["v"]
    assert d.segments.tolist() == [[3.0, 3.0]] and d.scores.tolist() == [1.0] and d.labels.tolist() == [1]


def test_import_does_not_load_torch():
    code = "import sys, taltoolkit.postprocess.results_io; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert out.stdout.strip() == "False"
