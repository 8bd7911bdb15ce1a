"""Annotation loaders on the real packaged files and on small hand-written inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from taltoolkit.data.annotations import (
    AnnotationSet,
    load_activitynet_json,
    load_annotations,
    load_packaged_annotations,
    load_wtalc_annotations,
    packaged_annotations,
)
from taltoolkit.data.errors import DataError

# Counts from /work/shared/data/README.md.
REAL = {
    "thumos14": (20, {"validation": 200, "test": 212}, {"validation": 3007, "test": 3358}),
    "activitynet12": (100, {"training": 4819, "validation": 2383}, None),
    "activitynet13": (200, {"training": 9337, "validation": 4575}, None),
}


@pytest.fixture(scope="module", params=sorted(REAL))
def real(request: pytest.FixtureRequest) -> tuple[str, AnnotationSet, AnnotationSet]:
    name = request.param
    paths = packaged_annotations(name)
    return name, load_activitynet_json(paths.json), load_wtalc_annotations(paths.wtalc)


def _subset_counts(a: AnnotationSet) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in a.videos.values():
        out[v.subset] = out.get(v.subset, 0) + 1
    return out


def test_real_counts_json_and_wtalc(real: tuple[str, AnnotationSet, AnnotationSet]) -> None:
    name, js, wt = real
    num_classes, videos, instances = REAL[name]
    for a in (js, wt):
        assert len(a.classes) == num_classes
        assert _subset_counts(a) == videos
        if instances is not None:
            assert {s: a.num_instances(s) for s in instances} == instances


def test_real_json_and_wtalc_agree(real: tuple[str, AnnotationSet, AnnotationSet]) -> None:
    _, js, wt = real
    assert js.classes == wt.classes
    assert list(js.videos) == list(wt.videos)  # same order: the joint feature file relies on it
    for k, a in js.videos.items():
        b = wt.videos[k]
        assert (a.subset, a.duration, a.fps) == (b.subset, b.duration, b.fps)
        assert a.segments.dtype == np.float64 and a.labels.dtype == np.int64
        np.testing.assert_array_equal(a.segments, b.segments)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_thumos_keeps_segments_past_the_end() -> None:
    a = load_packaged_annotations("thumos14")
    past = {"validation": 0, "test": 0}
    for v in a.videos.values():
        past[v.subset] += int((v.segments[:, 1] > v.duration).sum())
    assert past == {"validation": 4, "test": 26}  # README: nothing dropped
    assert {v.fps for v in a.videos.values()} == {30.0, 25.0, 24.0}


def test_packaged_names_and_dispatch() -> None:
    p = packaged_annotations("THUMOS14")
    assert p.json.is_file() and p.wtalc.is_dir()
    assert packaged_annotations("activitynet1.3").json == packaged_annotations("activitynet13").json
    assert len(load_annotations(p.wtalc).videos) == 412
    with pytest.raises(DataError, match="dataset.annotations"):
        packaged_annotations("kinetics")


def test_to_database_round_trip(tmp_path: Path) -> None:
    a = load_packaged_annotations("thumos14")
    db = a.to_database("test")
    assert len(db) == 212 and all(v["subset"] == "test" for v in db.values())
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"version": "x", "classes": a.classes, "database": db}))
    b = load_activitynet_json(path)
    for k, v in b.videos.items():
        np.testing.assert_array_equal(v.segments, a.videos[k].segments)
        np.testing.assert_array_equal(v.labels, a.videos[k].labels)


# --------------------------------------------------------------------------- small inputs
def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_class_list_sources(tmp_path: Path) -> None:
    db = {
        "v1": {"subset": "train", "duration": 10.0, "annotations": [{"label": "b", "segment": [1, 2]}]},
        "v2": {"subset": "test", "duration": 5.0, "fps": 25, "annotations": [{"label": "a", "segment": [0, 6]}]},
        "v3": {"subset": "test", "duration": 5.0},  # no annotations key: a video without instances
    }
    p = _write(tmp_path / "a.json", {"version": "1", "database": db})
    a = load_activitynet_json(p)
    assert a.classes == ["a", "b"]  # sorted labels when the file has no list
    assert a.videos["v1"].labels.tolist() == [1] and a.videos["v1"].fps is None
    assert a.videos["v2"].fps == 25.0 and a.videos["v2"].segments.tolist() == [[0.0, 6.0]]  # past the end: kept
    assert a.videos["v3"].segments.shape == (0, 2)
    b = load_activitynet_json(p, classes=["b", "a", "c"])
    assert b.videos["v1"].labels.tolist() == [0] and b.classes == ["b", "a", "c"]
    np.testing.assert_array_equal(b.video_labels("v2"), [0, 1, 0])


def test_wtalc_variants(tmp_path: Path) -> None:
    # str arrays and a flat duration are accepted as well as bytes and (N, 1).
    f = tmp_path / "ann"
    f.mkdir()
    np.save(f / "videoname.npy", np.array(["x", "y"]))
    np.save(f / "subset.npy", np.array([b"validation", b"test"]))
    np.save(f / "classlist.npy", np.array(["A", "B"]))
    np.save(f / "duration.npy", np.array([3.0, 4.0]))
    labels = np.empty(2, object)
    labels[0], labels[1] = ["B", "A"], []
    segs = np.empty(2, object)
    segs[0], segs[1] = [[0.5, 1.0], [2.0, 3.5]], []
    np.save(f / "labels.npy", labels, allow_pickle=True)
    np.save(f / "segments.npy", segs, allow_pickle=True)
    a = load_wtalc_annotations(f)
    assert list(a.videos) == ["x", "y"] and a.classes == ["A", "B"]
    assert a.videos["x"].labels.tolist() == [1, 0] and a.videos["x"].duration == 3.0
    assert a.videos["y"].segments.shape == (0, 2) and a.videos["y"].subset == "test"
    assert a.videos["x"].fps is None
