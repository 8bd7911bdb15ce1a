"""Synthetic generator: determinism, I3D-like feature statistics, real timing statistics,
exact copies of real ground truth, the cached ``dataset=synthetic`` factory and the tool."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from taltoolkit.data import synthetic as S
from taltoolkit.data.synthetic import generate_synthetic, summary_statistics, synthetic_dataset

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(num_videos=6, feature_dim=16)


def _same_records(a, b) -> None:
    assert [v.name for v in a] == [v.name for v in b]
    for x, y in zip(a, b):
        assert np.array_equal(x.features, y.features), x.name
        assert x.features.dtype == y.features.dtype == np.float32
        assert np.array_equal(x.segments, y.segments) and np.array_equal(x.labels, y.labels), x.name
        assert np.array_equal(x.video_labels, y.video_labels), x.name
        assert (x.duration, x.fps, x.step_s, x.offset_s, x.subset, x.label_level) == \
            (y.duration, y.fps, y.step_s, y.offset_s, y.subset, y.label_level), x.name


@pytest.fixture(scope="module")
def default_set():
    """A 40-video set with the default model (128-d to keep it quick)."""
    return generate_synthetic(num_videos=20, feature_dim=128, seed=3)


# --------------------------------------------------------------------------- generator
def test_deterministic_and_keyed_by_purpose():
    a, ca = generate_synthetic(**SMALL, seed=1)
    b, cb = generate_synthetic(**SMALL, seed=1)
    assert ca == cb
    _same_records(a, b)
    c, _ = generate_synthetic(**SMALL, seed=2)
    assert not np.array_equal(a[0].features[:5], c[0].features[:5])
    # Ground truth does not depend on the feature model's knobs ...
    d, _ = generate_synthetic(num_videos=6, feature_dim=32, difficulty=2.0, seed=1)
    for x, y in zip(a, d):
        assert np.array_equal(x.segments, y.segments) and np.array_equal(x.labels, y.labels) and x.duration == y.duration
    # ... and adding test videos leaves the training videos unchanged.
    e, _ = generate_synthetic(num_videos={"validation": 6, "test": 9}, feature_dim=16, seed=1)
    _same_records([v for v in a if v.subset == "validation"], [v for v in e if v.subset == "validation"])


def test_records_are_well_formed(default_set):
    videos, classes = default_set
    assert len(classes) == 20 and {v.subset for v in videos} == {"validation", "test"}
    for v in videos:
        x = v.features
        assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 128
        assert np.isfinite(x).all() and (x >= 0).all()
        assert (v.step_s, v.offset_s) == (0.64, 0.0)
        assert x.shape[0] == int(np.floor(v.duration / v.step_s + 1e-6)) <= 320
        assert v.segments.shape == (len(v.labels), 2) and len(v.labels) >= 1
        assert (v.segments[:, 1] > v.segments[:, 0]).all() and v.segments.min() >= 0 and v.segments.max() <= v.duration
        expect = np.zeros(len(classes), np.float32)
        expect[v.labels] = 1
        assert np.array_equal(v.video_labels, expect) and v.label_level == "full"


def test_feature_statistics_are_i3d_like(default_set):
    s = summary_statistics(default_set[0])
    assert 0.85 <= s["lag1_cos"]["rgb"] <= 0.93  # real I3D ~0.89
    assert 0.74 <= s["lag1_cos"]["flow"] <= 0.85  # real I3D ~0.79
    assert 0.80 <= s["lag1_cos"]["all"] <= 0.90
    assert 0.42 <= s["cross_video_cos"] <= 0.60  # strong shared component (~0.5)
    assert 0.85 <= s["action_bg_cos"] <= 0.95
    assert 1.10 <= s["action_bg_norm_ratio"] <= 1.30
    assert s["step_norm"]["rgb"] > s["step_norm"]["flow"]  # RGB half has the larger norm
    assert 0.12 <= s["dim_mean"] <= 0.28 and 0.12 <= s["dim_std"] <= 0.28
    x = np.concatenate([v.features for v in default_set[0]])
    skew = (((x - x.mean(0)) ** 3).mean(0) / x.std(0) ** 3).mean()
    assert skew > 0.5  # right-skewed like pooled ReLU activations


def test_difficulty_moves_separation():
    def sep(difficulty: float) -> tuple[float, float]:
        s = summary_statistics(generate_synthetic(num_videos=12, feature_dim=64, difficulty=difficulty, seed=5)[0])
        return s["action_bg_cos"], s["action_bg_norm_ratio"]

    (c_easy, r_easy), (c_mid, r_mid), (c_hard, r_hard) = sep(0.5), sep(1.0), sep(2.0)
    assert c_easy < c_mid < c_hard
    assert r_easy > r_mid > r_hard > 1.0
    with pytest.raises(ValueError, match="difficulty"):
        generate_synthetic(num_videos=1, difficulty=0)


def test_thumos_timing_matches_real_statistics():
    videos, _ = generate_synthetic(num_videos=150, feature_dim=2, duration_scale=1.0, max_steps=None, seed=0)
    s = summary_statistics(videos)
    assert 100 <= s["duration_s"]["median"] <= 225  # real 150 s
    assert 4 <= s["instances_per_video"]["median"] <= 16  # real 8
    assert 1.45 <= s["instance_length_s"]["median"] <= 5.8  # real 2.9 s
    assert 0.12 <= s["coverage"]["median"] <= 0.45  # real 0.24
    assert s["classes_per_video"]["1"] / len(videos) >= 0.75  # real 86 % one class
    assert s["classes_per_video"].get("2", 0) > 0
    # Shrinking the videos keeps the coverage and the instance lengths.
    small = summary_statistics(generate_synthetic(num_videos=150, feature_dim=2, seed=0)[0])
    assert small["steps"]["max"] <= 320
    assert 0.12 <= small["coverage"]["median"] <= 0.45
    assert abs(np.log(small["instance_length_s"]["median"] / s["instance_length_s"]["median"])) < np.log(1.5)


def test_anet_timing_matches_real_statistics():
    videos, classes = generate_synthetic("anet", num_videos=150, feature_dim=2, duration_scale=1.0, max_steps=None)
    assert {v.subset for v in videos} == {"training", "validation"}
    s = summary_statistics(videos)
    assert 75 <= s["duration_s"]["median"] <= 170  # real 115 s
    assert 0.65 <= np.mean([len(v.labels) == 1 for v in videos]) <= 0.85  # real 75 %
    assert 13 <= s["instance_length_s"]["median"] <= 52  # real 26 s
    assert s["classes_per_video"] == {"1": len(videos)}
    ratio = np.concatenate([np.diff(v.segments, axis=1)[:, 0] / v.duration for v in videos])
    assert 0.3 <= (ratio < 0.2).mean() <= 0.6 and 0.15 <= (ratio > 0.8).mean() <= 0.35  # bimodal


def test_from_annotations_copies_real_ground_truth():
    from taltoolkit.data.annotations import load_packaged_annotations

    ann = load_packaged_annotations("thumos14")
    videos, classes = generate_synthetic(feature_dim=4, from_annotations="thumos14")
    assert classes == ann.classes
    assert [v.name for v in videos] == list(ann.videos)
    for v in videos:
        a = ann.videos[v.name]
        assert np.array_equal(v.segments, a.segments) and np.array_equal(v.labels, a.labels)
        assert (v.duration, v.subset, v.fps) == (a.duration, a.subset, a.fps)
        assert v.features.shape == (int(np.floor(a.duration / 0.64 + 1e-6)), 4)
    assert sum(len(v.labels) for v in videos) == 3007 + 3358
    # An AnnotationSet works too, and num_videos keeps the first N of each subset (file order).
    few, _ = generate_synthetic(feature_dim=4, from_annotations=ann, num_videos={"validation": 3, "test": 2})
    names = list(ann.videos)
    assert [v.name for v in few] == [n for n in names if ann.videos[n].subset == "validation"][:3] + \
        [n for n in names if ann.videos[n].subset == "test"][:2]
    _same_records(few, [v for v in videos if v.name in {f.name for f in few}])
    with pytest.raises(ValueError, match="num_classes"):
        generate_synthetic(feature_dim=4, from_annotations=ann, num_classes=5, num_videos=1)


# --------------------------------------------------------------------------- layouts and cache
@pytest.mark.parametrize("layout", ["wtalc", "split", "concat"])
def test_layouts_round_trip(tmp_path, layout):
    from taltoolkit.data.writers import read_layout, write_layout

    videos, classes = generate_synthetic(**SMALL, seed=4)
    timing = S.concat_write_params(0.64, 0.0, videos[0].fps) if layout == "concat" else {}
    write_layout(videos, classes, tmp_path / layout, layout, **timing)
    _same_records(videos, read_layout(tmp_path / layout))


@pytest.mark.parametrize("layout", ["wtalc", "split", "concat"])
def test_dataset_factory_caches_and_matches_generator(tmp_path, monkeypatch, layout):
    calls = []
    real = S.generate_synthetic
    monkeypatch.setattr(S, "generate_synthetic", lambda **kw: calls.append(kw) or real(**kw))
    kw = dict(num_train=5, num_test=4, feature_dim=16, seed=7, layout=layout, cache_dir=str(tmp_path))
    ds = synthetic_dataset(**kw)
    videos = ds.all_videos()
    again = synthetic_dataset(**kw)
    assert len(calls) == 1 and again.root == ds.root  # second call reads the cache
    assert [p.name for p in tmp_path.iterdir()] == [Path(ds.root).name]  # no temporary folder left
    expect, classes = real(num_videos={"validation": 5, "test": 4}, num_classes=20, feature_dim=16, seed=7)
    _same_records(expect, videos)
    _same_records(expect, again.all_videos())
    assert ds.classes == classes and ds.feature_dim == 16 and ds.num_segments == 320
    assert [v.name for v in ds.test_videos()] == [v.name for v in expect if v.subset == "test"]
    assert set(ds.ground_truth()) == {v.name for v in expect if v.subset == "test"}
    # Other generation parameters get another cache folder.
    synthetic_dataset(**{**kw, "difficulty": 2.0})
    assert len(calls) == 2 and len(list(tmp_path.iterdir())) == 2


def test_cache_is_never_half_written(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    kw = dict(num_train=2, num_test=2, feature_dim=8, cache_dir=str(tmp_path))
    monkeypatch.setattr(S, "write_layout", crash)  # the cache builder's writer fails mid-way
    with pytest.raises(RuntimeError, match="disk full"):
        synthetic_dataset(**kw)
    assert list(tmp_path.iterdir()) == []  # nothing that a later call could mistake for a cache
    monkeypatch.undo()
    ds = synthetic_dataset(**kw)
    assert (Path(ds.root) / S.MARKER_FILE).is_file() and len(ds.all_videos()) == 4


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(S.CACHE_ENV, str(tmp_path))
    assert S.default_cache_dir() == tmp_path / "synthetic"
    ds = synthetic_dataset(num_train=2, num_test=1, feature_dim=8)
    assert Path(ds.root).parent == tmp_path / "synthetic"


def test_factory_from_annotations(tmp_path):
    ds = synthetic_dataset(from_annotations="thumos14", num_train=3, num_test=2, feature_dim=8, cache_dir=str(tmp_path))
    assert ds.num_classes == 20 and (ds.train_subset, ds.test_subset) == ("validation", "test")
    assert len(ds.train_videos("weak")) == 3 and len(ds.test_videos()) == 2


def test_registered_and_buildable_by_hydra(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from taltoolkit.registry import get

    assert get("dataset", "synthetic").obj is synthetic_dataset
    cfg = OmegaConf.create({"_target_": "taltoolkit.data.synthetic.synthetic_dataset", "num_train": 2,
                            "num_test": 2, "feature_dim": 8, "cache_dir": str(tmp_path)})
    assert len(instantiate(cfg).all_videos()) == 4


# --------------------------------------------------------------------------- tool
def _tool():
    """tools/make_synthetic.py as a module (tools/ is not a package)."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import make_synthetic
    finally:
        sys.path.pop(0)
    return make_synthetic


def test_tool_writes_and_prints_statistics(tmp_path, capsys):
    make_synthetic = _tool()
    from taltoolkit.data.writers import read_layout

    out = tmp_path / "synth"
    assert make_synthetic.main(["--layout", "split", "--out", str(out), "--num-train", "3", "--num-test", "2",
                                "--feature-dim", "16", "--num-classes", "5"]) == 0
    text = capsys.readouterr().out
    for row in ("lag-1 cosine", "action vs background cosine", "instances / video", "coverage", "validation"):
        assert row in text
    videos = read_layout(out)
    assert len(videos) == 5 and videos[0].features.shape[1] == 16 and len(videos[0].video_labels) == 5
    assert (out / "synthetic.json").is_file()


def test_tool_help_is_cheap():
    code = ("import runpy, sys; sys.argv = ['make_synthetic.py', '--help']\n"
            "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "assert 'numpy' not in sys.modules, 'numpy imported at start-up'" % str(REPO / "tools" / "make_synthetic.py"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "--from-annotations" in res.stdout


def test_tool_from_annotations_is_a_drop_in_for_real_thumos14(tmp_path, capsys):
    """Real ground truth + W-TALC file name: ``dataset=thumos14 dataset.root=DIR`` reads it."""
    make_synthetic = _tool()
    from taltoolkit.data.dataset import TALDataset

    out = tmp_path / "thumos14"
    make_synthetic.main(["--from-annotations", "thumos14", "--feature-dim", "4", "--name", "Thumos14reduced",
                         "--out", str(out)])
    assert "test" in capsys.readouterr().out
    ds = TALDataset("thumos14", root=str(out), layout="wtalc", feature_dim=4)
    assert len(ds.train_videos("weak")) == 200 and len(ds.test_videos()) == 212
    expect, _ = generate_synthetic(feature_dim=4, from_annotations="thumos14")
    _same_records(expect, ds.all_videos())


@pytest.mark.parametrize("layout", ["wtalc", "split", "concat"])
def test_make_synthetic_overwrite_keeps_the_users_files(tmp_path, layout, capsys):
    """--overwrite replaces a folder the tool wrote, and refuses one holding anything else."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_synthetic", Path(__file__).parent.parent / "tools" / "make_synthetic.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "synth"
    args = ["--out", str(out), "--layout", layout, "--num-train", "3", "--num-test", "2", "--num-classes", "2",
            "--feature-dim", "8", "--max-steps", "40"]
    assert tool.main(args) == 0
    assert tool.main(args) == 2  # exists, no --overwrite
    assert tool.main([*args, "--overwrite", "--seed", "1"]) == 0  # its own folder: replaced
    capsys.readouterr()
    dataset = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    mine = {"notes.txt": out / "notes.txt", "deep": out / "features" / "x.txt" if layout == "split" else out / "x.npy"}
    for f in mine.values():
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("the user's")
    assert tool.main([*args, "--overwrite", "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "--overwrite never deletes" in err
    assert all(f.read_text() == "the user's" for f in mine.values())
    assert all(p.read_bytes() == b for p, b in dataset.items())  # the dataset is untouched too
