"""Every kind of bad input raises DataError whose message names the file and the fix."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from taltoolkit.data.annotations import load_activitynet_json, load_wtalc_annotations
from taltoolkit.data.dataset import TALDataset
from taltoolkit.data.errors import DataError
from taltoolkit.data.readers import read_concat, read_split, read_wtalc
from taltoolkit.structures import Video

CLASSES = ["a", "b"]


def _gt(root: Path, names: dict[str, str]) -> Path:
    db = {n: {"subset": s, "duration": 4.0, "fps": 25.0, "annotations": [{"label": "a", "segment": [0.5, 1.5]}]}
          for n, s in names.items()}
    path = root / "gt.json"
    path.write_text(json.dumps({"version": "t", "classes": CLASSES, "database": db}))
    return path


def _concat(tmp_path: Path, arrays: dict[str, np.ndarray]) -> tuple[Path, Path]:
    root = tmp_path / "feats"
    root.mkdir()
    for name, arr in arrays.items():
        np.save(root / f"{name}.npy", arr)
    return root, _gt(tmp_path, {n: "test" for n in arrays})


def _ok(t: int = 5, d: int = 4) -> np.ndarray:
    return np.ones((t, d), np.float32)


def _raises(fn, *must_contain: str) -> str:  # noqa: ANN001
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    for s in must_contain:
        assert s in msg, (s, msg)
    return msg


def test_missing_feature_folders(tmp_path: Path) -> None:
    ann = load_activitynet_json(_gt(tmp_path, {"v1": "test"}))
    missing = tmp_path / "nope"
    _raises(lambda: read_concat(missing, ann, 4), str(missing), "dataset.root")
    folder = tmp_path / "features" / "test" / "rgb"
    _raises(lambda: read_split(tmp_path, ann, 4), str(folder), "dataset.root", "make_synthetic")
    _raises(lambda: read_wtalc(tmp_path / "X-I3D-JOINTFeatures.npy", ann, 4), "X-I3D-JOINTFeatures.npy")


def test_video_without_features(tmp_path: Path) -> None:
    root, gt = _concat(tmp_path, {"v1": _ok(), "v2": _ok()})
    (root / "v2.npy").unlink()
    _raises(lambda: read_concat(root, load_activitynet_json(gt), 4), str(root), "'v2'", "1 of 2")


def test_features_without_annotation(tmp_path: Path) -> None:
    root, gt = _concat(tmp_path, {"v1": _ok()})
    np.save(root / "stray.npy", _ok())
    ann = load_activitynet_json(gt)
    _raises(lambda: read_concat(root, ann, 4), str(root), "'stray'", "ignore_unannotated")
    assert [v.name for v in read_concat(root, ann, 4, ignore_unannotated=True)] == ["v1"]


def test_wrong_dim_names_the_setting(tmp_path: Path) -> None:
    root, gt = _concat(tmp_path, {"v1": _ok(d=6)})
    _raises(lambda: read_concat(root, load_activitynet_json(gt), 4), str(root / "v1.npy"), "dataset.feature_dim=6")


@pytest.mark.parametrize("bad,kind", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite(tmp_path: Path, bad: float, kind: str) -> None:
    x = _ok()
    x[3, 1] = bad
    root, gt = _concat(tmp_path, {"v1": x})
    _raises(lambda: read_concat(root, load_activitynet_json(gt), 4), str(root / "v1.npy"), kind, "step 3", "'v1'")


def test_empty_and_wrong_ndim(tmp_path: Path) -> None:
    root, gt = _concat(tmp_path, {"v1": _ok(t=0)})
    ann = load_activitynet_json(gt)
    _raises(lambda: read_concat(root, ann, 4), str(root / "v1.npy"), "T=0")
    np.save(root / "v1.npy", np.ones((1, 5, 4), np.float32))
    _raises(lambda: read_concat(root, ann, 4), str(root / "v1.npy"), "(1, 5, 4)")


def test_split_errors(tmp_path: Path) -> None:
    gt = _gt(tmp_path, {"v1": "validation", "v2": "test"})
    ann = load_activitynet_json(gt)
    folders = {"validation": "train", "test": "test"}
    for split, name in (("train", "v1"), ("test", "v2")):
        for mod, d in (("rgb", 2), ("flow", 2)):
            p = tmp_path / "features" / split / mod
            p.mkdir(parents=True, exist_ok=True)
            np.save(p / f"{name}.npy", _ok(d=d))
    assert read_split(tmp_path, ann, 4, subsets=folders)[1].features.shape == (5, 4)
    _raises(lambda: read_split(tmp_path, ann, 4, subsets={"test": "test"}), "dataset.split_folders")
    flow = tmp_path / "features" / "test" / "flow" / "v2.npy"
    np.save(flow, _ok(t=4, d=2))
    _raises(lambda: read_split(tmp_path, ann, 4, subsets=folders), str(flow), "differ in length")
    flow.unlink()
    _raises(lambda: read_split(tmp_path, ann, 4, subsets=folders), str(flow.parent), "'v2'")


def test_wtalc_count_mismatch_and_bad_entry(tmp_path: Path) -> None:
    ann = load_activitynet_json(_gt(tmp_path, {"v1": "test", "v2": "test"}))
    f = tmp_path / "D-I3D-JOINTFeatures.npy"
    arr = np.empty(1, object)
    arr[0] = _ok()
    np.save(f, arr, allow_pickle=True)
    _raises(lambda: read_wtalc(f, ann, 4), str(f), "holds 1 videos", "'v2'")
    arr = np.empty(2, object)
    arr[0], arr[1] = _ok(), _ok(d=3)
    np.save(f, arr, allow_pickle=True)
    _raises(lambda: read_wtalc(f, ann, 4), str(f), "entry 1", "dataset.feature_dim=3")


def test_annotation_errors(tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text('{"database": {"v1": ')
    _raises(lambda: load_activitynet_json(p), str(p), "not valid JSON")
    p.write_text(json.dumps({"classes": ["a"], "database": {"v1": {"subset": "test", "duration": 3,
                 "annotations": [{"label": "zebra", "segment": [0, 1]}]}}}))
    _raises(lambda: load_activitynet_json(p), str(p), "'zebra'", "'v1'")
    p.write_text(json.dumps({"database": {"v1": {"subset": "test", "annotations": []}}}))
    _raises(lambda: load_activitynet_json(p), str(p), "['duration']")
    p.write_text(json.dumps({"database": {"v1": {"subset": "test", "duration": 3,
                 "annotations": [{"label": "a", "segment": [2, 1]}]}}}))
    _raises(lambda: load_activitynet_json(p), str(p), "ends before it starts")
    p.write_text('{"database": {"v1": {"subset": "test", "duration": 3}, "v1": {"subset": "test", "duration": 3}}}')
    _raises(lambda: load_activitynet_json(p), str(p), "'v1' appears twice")
    p.write_text(json.dumps({"classes": ["a", "b"], "database": {"v1": {"subset": "test", "duration": 3,
                 "annotations": [{"label": "a", "segment": [0, 1], "label_id": 1}]}}}))
    _raises(lambda: load_activitynet_json(p), str(p), "label_id")
    _raises(lambda: load_activitynet_json(tmp_path / "none.json"), "none.json", "dataset.annotations")
    (tmp_path / "ann").mkdir()
    _raises(lambda: load_wtalc_annotations(tmp_path / "ann"), str(tmp_path / "ann"), "videoname.npy")


def test_dataset_without_root() -> None:
    ds = TALDataset(name="thumos14", root=None, layout="wtalc")
    assert ds.num_classes == 20  # annotations need no root
    _raises(ds.test_videos, "dataset.root=DIR", "docs/datasets.md")
    _raises(TALDataset(name="thumos14", root="/no/such/dir", layout="concat").train_videos, "/no/such/dir")


def test_dataset_layout_meta_mismatch(tmp_path: Path) -> None:
    from taltoolkit.data.writers import write_layout

    v = Video("v1", _ok(), 4.0, 25.0, 0.64, subset="test", video_labels=np.zeros(2, np.float32))
    root = write_layout([v], CLASSES, tmp_path / "ds", "split")
    ds = TALDataset(name="tiny", root=str(root), layout="split", feature_dim=4, step_s=0.5, train_subset="test")
    _raises(ds.test_videos, "layout.json", "dataset.step_s=0.64")


def test_truncated_wtalc_joint_file_names_the_file(tmp_path: Path) -> None:
    ann = load_activitynet_json(_gt(tmp_path, {"v1": "test", "v2": "test"}))
    f = tmp_path / "D-I3D-JOINTFeatures.npy"
    arr = np.empty(2, object)
    arr[0], arr[1] = _ok(t=50), _ok(t=60)
    np.save(f, arr, allow_pickle=True)
    assert len(read_wtalc(f, ann, 4)) == 2
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # an interrupted download
    _raises(lambda: read_wtalc(f, ann, 4), str(f), "truncated")


def _python2_joint_file(path: Path, features: np.ndarray) -> None:
    """A one-video W-TALC joint file as Python 2's pickle writes it: protocol 2, the array's
    dtype codes and data as Python 2 ``str`` (SHORT_BINSTRING), which Python 3 can only read
    as bytes (the public loaders pass ``encoding='bytes'``)."""
    import io

    def u(b: bytes) -> bytes:
        assert len(b) < 256
        return b"U" + bytes([len(b)]) + b

    def array(shape: bytes, descr: bytes, order: bytes, flags: bytes, payload: bytes) -> bytes:
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + u(b"b") + b"\x87R"
                + b"(K\x01" + shape + b"cnumpy\ndtype\n" + u(descr) + b"K\x00K\x01\x87R(K\x03" + u(order)
                + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + flags + b"tb\x89" + payload + b"tb")

    t, d = features.shape
    inner = array(b"K%cK%c\x86" % (t, d), b"f4", b"<", b"K\x00", u(features.astype("<f4").tobytes()))
    outer = array(b"K\x01\x85", b"O8", b"|", b"K?", b"]" + inner + b"a")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    path.write_bytes(header.getvalue() + b"\x80\x02" + outer + b".")


def test_wtalc_joint_file_written_by_python2_reads(tmp_path: Path) -> None:
    ann = load_activitynet_json(_gt(tmp_path, {"v1": "test"}))
    f = tmp_path / "D-I3D-JOINTFeatures.npy"
    feats = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5) / 3  # bytes >= 0x80: not ASCII
    _python2_joint_file(f, feats)
    (v,) = read_wtalc(f, ann, 4)
    assert np.array_equal(v.features, feats)


def test_one_modality_with_extra_channels_names_both_files(tmp_path: Path) -> None:
    gt = _gt(tmp_path, {"v1": "test", "v2": "test"})
    ann = load_activitynet_json(gt)
    for name in ("v1", "v2"):
        for mod in ("rgb", "flow"):
            p = tmp_path / "features" / "test" / mod
            p.mkdir(parents=True, exist_ok=True)
            np.save(p / f"{name}.npy", _ok(d=2))
    assert len(read_split(tmp_path, ann, 4, subsets={"test": "test"})) == 2
    flow = tmp_path / "features" / "test" / "flow" / "v2.npy"
    rgb = tmp_path / "features" / "test" / "rgb" / "v2.npy"
    np.save(flow, _ok(d=3))
    msg = _raises(lambda: read_split(tmp_path, ann, 4, subsets={"test": "test"}), str(flow), str(rgb),
                  "(5, 3)", "(5, 2)", "'v2'")
    assert "dataset.feature_dim=5" not in msg  # not told to widen every video for one broken file
    # Same total width, misaligned channels: v2's modalities are 1 + 3 wide, v1's 2 + 2.
    np.save(rgb, _ok(d=1))
    _raises(lambda: read_split(tmp_path, ann, 4, subsets={"test": "test"}), str(flow), str(rgb), "(5, 1)", "(5, 3)",
            "'v1'", "'v2'", "re-extract")


def _gt_segments(root: Path, segments: list[list[float]], duration: float = 10.0) -> Path:
    db = {"v1": {"subset": "test", "duration": duration, "fps": 25.0,
                 "annotations": [{"label": "a", "segment": s} for s in segments]}}
    path = root / "gt.json"
    path.write_text(json.dumps({"version": "t", "classes": CLASSES, "database": db}))
    return path


def test_negative_segment_start_is_an_error_at_load_time(tmp_path: Path) -> None:
    from taltoolkit.data.writers import write_wtalc_annotations

    p = _gt_segments(tmp_path, [[1.0, 2.0], [-0.5, 1.0]])
    _raises(lambda: load_activitynet_json(p), str(p), "'v1'", "[-0.5, 1.0]", "before 0 s")
    v = Video("v1", _ok(), 10.0, 25.0, 0.64, subset="test", segments=np.array([[-0.5, 1.0]]),
              labels=np.array([0]), video_labels=np.array([1, 0], np.float32))
    write_wtalc_annotations(tmp_path / "ann", [v], CLASSES)
    _raises(lambda: load_wtalc_annotations(tmp_path / "ann"), "segments.npy", "'v1'", "before 0 s")


def test_segment_beyond_the_video_end_warns_naming_the_video(tmp_path: Path, caplog) -> None:
    import logging

    p = _gt_segments(tmp_path, [[1.0, 2.0]], duration=10.0)
    with caplog.at_level(logging.WARNING, logger="taltoolkit"):
        load_activitynet_json(p)
    assert not caplog.records
    p = _gt_segments(tmp_path, [[1.0, 2.0], [12.0, 13.5]], duration=10.0)
    with caplog.at_level(logging.WARNING, logger="taltoolkit"):
        ann = load_activitynet_json(p)
    assert ann.videos["v1"].segments.tolist() == [[1.0, 2.0], [12.0, 13.5]]  # kept, as the official evaluation does
    (rec,) = caplog.records
    assert "'v1'" in rec.getMessage() and str(p) in rec.getMessage() and "after their video's end" in rec.getMessage()
