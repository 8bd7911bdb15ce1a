"""Each public feature release, as published, loads with the one command docs/datasets.md gives.

Every test writes a small, fake-but-exact copy of a release (the real file and folder names,
the real JSON keys and subset spellings, W-TALC object arrays pickled as Python 2 wrote them,
tiny features, a few real videos), then runs the command of the release's row in the table
of docs/datasets.md -- parsed from the docs, with ``DIR`` replaced by the copy -- for one
epoch with run-size overrides only.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from py2pickle import save_py2_object_array

REPO = Path(__file__).resolve().parent.parent
PACKAGED = REPO / "taltoolkit" / "annotations"
RUN_SIZE = ["trainer.max_epochs=1", "trainer.progress=false", "trainer.device=cpu", "trainer.batch_size=4"]
TINY_WTAL = ["dataset.num_segments=32"]
TINY_DETECTOR = ["model.embed_dim=32", "model.fpn_dim=32", "model.head_dim=32", "model.window_size=5",
                 "dataset.max_seq_len=256"]


def doc_command(release: str) -> list[str]:
    """The overrides of the release's command in the table of docs/datasets.md."""
    text = (REPO / "docs" / "datasets.md").read_text(encoding="utf-8")
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] == release:
            m = re.search(r"`python tools/run\.py ([^`]+)`", cells[-1])
            assert m, f"no command in the row of {release!r}"
            return m.group(1).split()
    raise AssertionError(f"docs/datasets.md has no table row for {release!r}")


def run_doc_command(compose, release: str, root: Path, out: Path, extra: list[str]) -> dict:
    import taltoolkit

    over = [o.replace("DIR", str(root)) for o in doc_command(release)]
    return taltoolkit.run(compose([*over, f"output_dir={out}", *RUN_SIZE, *extra]))


def _rng_features(t: int, d: int, seed: int) -> np.ndarray:
    return np.abs(np.random.default_rng(seed).standard_normal((t, d))).astype(np.float32)


# --------------------------------------------------------------------------- W-TALC joint files
def write_wtalc_release(root: Path, packaged: Path, prefix: str, per_subset: dict[str, int], dim: int = 16) -> list[str]:
    """``<prefix>-I3D-JOINTFeatures.npy`` + ``<prefix>-Annotations/`` for a few real videos, Python 2 pickles."""
    root.mkdir(parents=True)
    ann = root / f"{prefix}-Annotations"
    ann.mkdir()
    load = lambda n: np.load(packaged / f"{n}.npy", allow_pickle=True, encoding="bytes")  # noqa: E731
    subsets = [s.decode() if isinstance(s, bytes) else str(s) for s in load("subset")]
    keep: list[int] = []
    for subset, n in per_subset.items():
        keep += [i for i, s in enumerate(subsets) if s == subset][:n]
    keep.sort()
    for f in sorted(packaged.iterdir()):
        if f.suffix != ".npy":
            shutil.copy(f, ann / f.name)  # Ambiguous_test.txt, ...
            continue
        arr = load(f.stem)
        if f.stem == "classlist":
            np.save(ann / f.name, arr)
        elif arr.dtype == object:  # labels, labels_all, segments: lists per video
            b = lambda x: x if isinstance(x, bytes) else (x.encode() if isinstance(x, str) else x)  # noqa: E731
            items = [[b(v) if not isinstance(v, (list, np.ndarray)) else [float(y) for y in v] for v in arr[i]]
                     for i in keep]
            save_py2_object_array(ann / f.name, items)
        else:
            np.save(ann / f.name, arr[keep])
    durations = np.asarray(load("duration"), np.float64).reshape(-1)[keep]
    feats = [_rng_features(max(4, int(d / 0.64)), dim, i) for i, d in enumerate(durations)]
    save_py2_object_array(root / f"{prefix}-I3D-JOINTFeatures.npy", feats)
    names = load("videoname")[keep]
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def test_wtalc_thumos14_release(compose, tmp_path):
    root = tmp_path / "Thumos14reduced"
    names = write_wtalc_release(root, PACKAGED / "thumos14" / "Thumos14reduced-Annotations", "Thumos14reduced",
                                {"validation": 4, "test": 3})
    with pytest.raises(Exception):  # the files really are Python 2 pickles
        np.load(root / "Thumos14reduced-I3D-JOINTFeatures.npy", allow_pickle=True)
    metrics = run_doc_command(compose, "W-TALC THUMOS'14", root, tmp_path / "run", TINY_WTAL)
    assert "average_mAP" in metrics
    preds = json.loads((tmp_path / "run" / "predictions.json").read_text())["results"]
    assert set(preds) == set(names[4:])  # the test videos of the release's own annotation folder


def test_wtalc_activitynet12_release_scores_against_official_ground_truth(compose, tmp_path):
    root = tmp_path / "ActivityNet1.2"
    packaged = PACKAGED / "activitynet12" / "ActivityNet1.2-Annotations"
    names = write_wtalc_release(root, packaged, "ActivityNet1.2", {"training": 4, "validation": 3})
    run_doc_command(compose, "W-TALC ActivityNet 1.2", root, tmp_path / "run", TINY_WTAL)
    preds = json.loads((tmp_path / "run" / "predictions.json").read_text())["results"]
    # The official ActivityNet 1.2 ground truth (activity_net.v1-2.min.json) names videos by YouTube id.
    src = json.loads((PACKAGED / "activitynet12" / "activitynet12_annotations.json").read_text())["database"]
    official = {"version": "VERSION 1.2", "taxonomy": [], "database": {
        src[n]["youtube_id"]: {"subset": src[n]["subset"], "duration": src[n]["duration"], "url": src[n]["url"],
                               "resolution": "640x360",
                               "annotations": [{"label": a["label"], "segment": a["segment"]}
                                               for a in src[n]["annotations"]]}
        for n in src}}  # every video, so every class, as the official file
    gt = tmp_path / "activity_net.v1-2.min.json"
    gt.write_text(json.dumps(official))
    val_ids = {src[n]["youtube_id"] for n in names[4:]}
    assert set(preds) == val_ids
    res = subprocess.run([sys.executable, str(REPO / "tools" / "eval.py"), str(gt), str(tmp_path / "run" / "predictions.json"),
                          "--subset", "validation", "--preset", "activitynet", "--out", str(tmp_path / "m.json")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert "average_mAP" in m and "num_predictions" in m  # scored: the names are the official ones


# --------------------------------------------------------------------------- BaS-Net / CASE split files
BASNET_EXCLUDED = ["video_test_0000270", "video_test_0001496"]


def write_split_release(root: Path, dim: int = 8) -> tuple[list[str], list[str]]:
    """features/{train,test}/{rgb,flow}, gt.json, split_train.txt, split_test.txt (BaS-Net excluded videos)."""
    db = json.loads((PACKAGED / "thumos14" / "thumos14_annotations.json").read_text())["database"]
    train = [k for k, v in db.items() if v["subset"] == "validation"][:4]
    test = [k for k, v in db.items() if v["subset"] == "test"][:3]
    gt = {"version": "THUMOS14", "database": {
        k: {"subset": db[k]["subset"], "duration": db[k]["duration"],
            "annotations": [{"label": a["label"], "segment": a["segment"]} for a in db[k]["annotations"]]}
        for k in [*train, *test, *BASNET_EXCLUDED]}}
    root.mkdir(parents=True)
    (root / "gt.json").write_text(json.dumps(gt))
    for folder, vids in (("train", train), ("test", test)):
        (root / f"split_{folder}.txt").write_text("".join(v + "\n" for v in vids))
        for i, v in enumerate(vids):
            t = max(4, int(db[v]["duration"] / 0.64))
            for mod in ("rgb", "flow"):
                (root / "features" / folder / mod).mkdir(parents=True, exist_ok=True)
                np.save(root / "features" / folder / mod / f"{v}.npy", _rng_features(t, dim // 2, i))
    return train, test


@pytest.mark.parametrize("release", ["CASE THUMOS'14", "BaS-Net THUMOS'14"])
def test_split_release_with_split_files(compose, tmp_path, release):
    root = tmp_path / "THUMOS14"
    train, test = write_split_release(root)
    metrics = run_doc_command(compose, release, root, tmp_path / "run", TINY_WTAL)
    preds = json.loads((tmp_path / "run" / "predictions.json").read_text())["results"]
    assert set(preds) == set(test)
    # The excluded test videos are left out of the evaluation too (their instances are not counted).
    from taltoolkit.data.dataset import TALDataset

    ds = TALDataset("thumos14", root=str(root))
    assert set(ds.ground_truth("test")) == set(test) and [v.name for v in ds.train_videos()] == train
    assert "average_mAP" in metrics


def test_make_synthetic_split_writes_the_real_folders_and_its_command_works(compose, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import make_synthetic
    finally:
        sys.path.pop(0)
    out = tmp_path / "synth"
    assert make_synthetic.main(["--layout", "split", "--out", str(out), "--num-train", "6", "--num-test", "4",
                                "--feature-dim", "8", "--num-classes", "3", "--max-steps", "40"]) == 0
    assert sorted(p.name for p in (out / "features").iterdir()) == ["test", "train"]
    assert len((out / "split_train.txt").read_text().split()) == 6
    printed = [ln for ln in capsys.readouterr().out.splitlines() if "taltoolkit-run " in ln]
    assert printed, "make_synthetic prints the command that reads the folder"
    over = printed[-1].split("taltoolkit-run", 1)[1].split()
    import taltoolkit

    metrics = taltoolkit.run(compose([*over, f"output_dir={tmp_path / 'run'}", *RUN_SIZE, *TINY_WTAL]))
    assert "average_mAP" in metrics


# --------------------------------------------------------------------------- ActionFormer
def write_actionformer_thumos(root: Path, dim: int = 16) -> dict:
    """annotations/thumos14.json (Validation/Test, per-video fps, 29.97 for one) + i3d_features/ at stride 4."""
    db = json.loads((PACKAGED / "thumos14" / "thumos14_annotations.json").read_text())["database"]
    vids = [k for k, v in db.items() if v["subset"] == "validation"][:3] + [k for k, v in db.items() if v["subset"] == "test"][:2]
    database = {}
    for i, k in enumerate(vids):
        fps = 29.97 if i == 1 else db[k]["fps"]
        database[k] = {"subset": db[k]["subset"].capitalize(), "duration": db[k]["duration"], "fps": fps,
                       "annotations": [{"label": a["label"], "segment": a["segment"],
                                        "segment(frames)": [a["segment"][0] * fps, a["segment"][1] * fps],
                                        "label_id": a["label_id"]} for a in db[k]["annotations"]]}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "thumos14.json").write_text(json.dumps({"version": "Thumos14-30fps", "database": database}))
    (root / "i3d_features").mkdir()
    for i, (k, v) in enumerate(database.items()):
        t = int((v["duration"] * v["fps"] - 16) // 4) + 1
        np.save(root / "i3d_features" / f"{k}.npy", _rng_features(min(t, 300), dim, i))
    np.save(root / "i3d_features" / "video_test_0000999.npy", _rng_features(20, dim, 99))  # no annotation
    return database


def test_actionformer_thumos14_release(compose, tmp_path):
    root = tmp_path / "thumos"
    database = write_actionformer_thumos(root)
    metrics = run_doc_command(compose, "ActionFormer THUMOS'14", root, tmp_path / "run", TINY_DETECTOR)
    assert "average_mAP" in metrics
    from taltoolkit.data.dataset import TALDataset

    ds = TALDataset("thumos14", root=str(root), feature_stride=4, snippet_frames=16)
    v = {x.name: x for x in ds.all_videos()}
    odd = list(database)[1]
    assert v[odd].step_s == pytest.approx(4 / 29.97) and v[odd].fps == 29.97  # the release's fps, not the packaged 30


def write_actionformer_anet_tsp(root: Path, dim: int = 512) -> tuple[dict, list[str]]:
    """annotations/anet1.3_tsp_filtered.json + cuhk_val_simp_share.json, tsp_features/v_<id>.npy."""
    db = json.loads((PACKAGED / "activitynet13" / "activitynet13_annotations.json").read_text())["database"]
    classes: list[str] = []
    picked: list[str] = []
    for subset, n in (("training", 4), ("validation", 3)):
        picked += [k for k, v in db.items() if v["subset"] == subset and v["annotations"]][:n]
    for k in picked:
        classes += [a["label"] for a in db[k]["annotations"] if a["label"] not in classes]
    database = {k: {"subset": db[k]["subset"], "duration": db[k]["duration"], "resolution": "1280x720",
                    "url": f"https://www.youtube.com/watch?v={k}",
                    "annotations": [{"label": a["label"], "segment": a["segment"], "label_id": classes.index(a["label"])}
                                    for a in db[k]["annotations"]]} for k in picked}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "anet1.3_tsp_filtered.json").write_text(json.dumps({"version": "1.3", "database": database}))
    ext_classes = list(reversed(classes))  # another class order: matched by name
    rng = np.random.default_rng(0)
    results = {k: rng.random(len(ext_classes)).round(4).tolist() for k in picked if database[k]["subset"] == "validation"}
    (root / "annotations" / "cuhk_val_simp_share.json").write_text(json.dumps({"results": results, "class": ext_classes}))
    (root / "tsp_features").mkdir()
    for i, k in enumerate(picked):
        t = max(4, int(database[k]["duration"] * 15 / 16))
        np.save(root / "tsp_features" / f"v_{k}.npy", _rng_features(t, dim, i))
    return database, ext_classes


def test_actionformer_activitynet13_tsp_release(compose, tmp_path):
    root = tmp_path / "anet_1.3"
    database, _ = write_actionformer_anet_tsp(root)
    metrics = run_doc_command(compose, "ActionFormer ActivityNet 1.3 (TSP)", root, tmp_path / "run", TINY_DETECTOR)
    assert "average_mAP" in metrics
    preds = json.loads((tmp_path / "run" / "predictions.json").read_text())["results"]
    assert set(preds) == {k for k, v in database.items() if v["subset"] == "validation"}  # names without v_


def test_actionformer_activitynet13_fused_protocol(compose, tmp_path):
    root = tmp_path / "anet_1.3"
    database, ext_classes = write_actionformer_anet_tsp(root)
    run_doc_command(compose, "ActionFormer ActivityNet 1.3 (TSP), fused protocol", root, tmp_path / "run",
                    TINY_DETECTOR)
    preds = json.loads((tmp_path / "run" / "predictions.json").read_text())["results"]
    ext = json.loads((root / "annotations" / "cuhk_val_simp_share.json").read_text())["results"]
    for vid, dets in preds.items():
        scores = np.asarray(ext[vid])
        top2 = {ext_classes[i] for i in np.argsort(-scores)[:2]}
        assert dets and {d["label"] for d in dets} == top2  # every detection takes one of the 2 best classes
        best = scores.max()
        assert max(d["score"] for d in dets) <= np.sqrt(best) + 1e-6  # sqrt(class score x proposal score <= 1)


def test_fusion_matches_the_public_formula(tmp_path):
    from taltoolkit.postprocess.fusion import fuse_external_scores, load_external_scores
    from taltoolkit.structures import Detections

    f = tmp_path / "cuhk.json"
    f.write_text(json.dumps({"results": {"abc": [0.1, 0.9, 0.4]}, "class": ["b", "c", "a"]}))
    load_external_scores.cache_clear()
    dets = Detections(np.array([[0.0, 1.0], [2.0, 3.0]]), np.array([0.25, 0.64]), np.zeros(2, np.int64))
    out = fuse_external_scores(dets, "v_abc", f, classes=["a", "b", "c"], topk=2)
    # classes c (0.9) and a (0.4), each on both proposals, score sqrt(class x proposal)
    expect = sorted([(np.sqrt(0.9 * 0.64), 2), (np.sqrt(0.9 * 0.25), 2), (np.sqrt(0.4 * 0.64), 0),
                     (np.sqrt(0.4 * 0.25), 0)], reverse=True)
    np.testing.assert_allclose(out.scores, [s for s, _ in expect])
    assert out.labels.tolist() == [c for _, c in expect]


# --------------------------------------------------------------------------- auto layout errors
def test_auto_layout_error_lists_what_was_found_and_the_override(tmp_path):
    from taltoolkit.data.dataset import TALDataset
    from taltoolkit.data.errors import DataError

    root = tmp_path / "odd"
    (root / "feats").mkdir(parents=True)
    (root / "notes.txt").write_text("x")
    with pytest.raises(DataError) as e:
        TALDataset("thumos14", root=str(root)).test_videos()
    msg = str(e.value)
    assert "'feats/'" in msg and "'notes.txt'" in msg and "dataset.layout=" in msg
