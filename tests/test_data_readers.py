"""Layout writers and readers: exact round trips and the snippet -> seconds mapping."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from taltoolkit.data.annotations import load_activitynet_json
from taltoolkit.data.readers import concat_timing, read_concat, read_split, read_wtalc, resample_steps
from taltoolkit.data.writers import read_layout, write_layout
from taltoolkit.structures import Video

CLASSES = ["jump", "run", "swim"]


def make_videos(
    n: int = 5, dim: int = 8, step_s: float = 0.64, offset_s: float = 0.0, fps: float = 25.0,
    equal_t: int | None = None, seed: int = 0, concat: tuple[int, int] | None = None,
) -> list[Video]:
    """Tiny random videos; ``concat=(stride, window)`` gives ActionFormer timing at each fps."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = equal_t or int(rng.integers(3, 20))
        v_fps = fps if i % 2 == 0 else 30.0
        if concat is not None:
            st, off = concat_timing(concat[0], concat[1], v_fps)
        else:
            st, off = step_s, offset_s
        k = int(rng.integers(0, 4))
        starts = rng.uniform(0, t * st, k)
        segs = np.stack([starts, starts + rng.uniform(0.1, 3.0, k)], 1) if k else np.zeros((0, 2))
        labels = rng.integers(0, len(CLASSES), k).astype(np.int64)
        vl = np.zeros(len(CLASSES), np.float32)
        vl[labels] = 1
        out.append(Video(
            name=f"vid_{i:03d}", features=rng.standard_normal((t, dim)).astype(np.float32),
            duration=float(t * st + rng.uniform(0, 1)), fps=v_fps, step_s=st, offset_s=off,
            subset="validation" if i % 2 == 0 else "test", segments=segs.astype(np.float64),
            labels=labels, video_labels=vl,
        ))
    return out


def assert_same(a: list[Video], b: list[Video]) -> None:
    assert [v.name for v in a] == [v.name for v in b]
    for x, y in zip(a, b):
        for f in dataclasses.fields(Video):
            xa, ya = getattr(x, f.name), getattr(y, f.name)
            if isinstance(xa, np.ndarray):
                assert xa.dtype == ya.dtype and xa.shape == ya.shape, f.name
                assert xa.tobytes() == ya.tobytes(), f.name  # bit-identical
            else:
                assert xa == ya, (f.name, xa, ya)


@pytest.mark.parametrize("layout", ["wtalc", "split", "concat"])
def test_round_trip(tmp_path: Path, layout: str) -> None:
    videos = make_videos(concat=(4, 16) if layout == "concat" else None)
    out = write_layout(videos, CLASSES, tmp_path / "ds", layout, name="Tiny",
                       subsets={"validation": "train", "test": "test"})
    assert_same(videos, read_layout(out))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_round_trip_equal_lengths_and_resize(tmp_path: Path) -> None:
    # Equal T would turn a naive object array into a 3-D array.
    videos = make_videos(n=3, equal_t=6)
    assert_same(videos, read_layout(write_layout(videos, CLASSES, tmp_path / "w", "wtalc")))
    resized = [dataclasses.replace(v, step_s=v.duration / 6, offset_s=0.0) for v in videos]
    out = write_layout(resized, CLASSES, tmp_path / "c", "concat", resize_length=6)
    assert_same(resized, read_layout(out))


def test_write_is_atomic_and_refuses_overwrite(tmp_path: Path) -> None:
    videos = make_videos(n=2)
    out = write_layout(videos, CLASSES, tmp_path / "ds", "wtalc")
    with pytest.raises(FileExistsError):
        write_layout(make_videos(n=2, seed=1), CLASSES, out, "wtalc")
    assert_same(videos, read_layout(out))  # untouched
    new = make_videos(n=2, seed=1)
    write_layout(new, CLASSES, out, "wtalc", overwrite=True)
    assert_same(new, read_layout(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    # overwrite replaces only a folder write_layout wrote: a file of the user's stops it.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        write_layout(videos, CLASSES, out, "wtalc", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert_same(new, read_layout(out))
    user = tmp_path / "user"
    user.mkdir()
    (user / "a.npy").write_bytes(b"x")  # no layout.json: nothing in it is known to be ours
    with pytest.raises(FileExistsError, match="a.npy"):
        write_layout(videos, CLASSES, user, "wtalc", overwrite=True)


def test_writer_rejects_timing_the_layout_cannot_hold(tmp_path: Path) -> None:
    videos = make_videos(n=2, concat=(4, 16))
    with pytest.raises(ValueError, match="feature_stride"):
        write_layout(videos, CLASSES, tmp_path / "x", "concat", feature_stride=8)
    mixed = [videos[0], dataclasses.replace(videos[1], step_s=1.0)]
    with pytest.raises(ValueError, match="step_s"):
        write_layout(mixed, CLASSES, tmp_path / "y", "wtalc")
    assert not tmp_path.joinpath("x").exists() and not tmp_path.joinpath("y").exists()


# --------------------------------------------------------------------------- timing
def test_wtalc_and_split_timing(tmp_path: Path) -> None:
    videos = make_videos(n=3)
    write_layout(videos, CLASSES, tmp_path / "w", "wtalc", name="T")
    ann = load_activitynet_json(tmp_path / "w" / "gt.json")
    v = read_wtalc(tmp_path / "w" / "T-I3D-JOINTFeatures.npy", ann, 8)[0]
    assert v.step_s == 0.64 and v.offset_s == 0.0
    np.testing.assert_allclose(v.boundaries()[:3], [0.0, 0.64, 1.28])
    write_layout(videos, CLASSES, tmp_path / "s", "split", subsets={"validation": "train", "test": "test"})
    s = read_split(tmp_path / "s", ann, 8, subsets={"validation": "train", "test": "test"}, videos_subset="test")
    assert [x.subset for x in s] == ["test"] and s[0].to_seconds(2.5) == pytest.approx(1.6)
    # rgb first: the two halves are stored in features/<split>/rgb and .../flow
    rgb = np.load(tmp_path / "s" / "features" / "test" / "rgb" / f"{s[0].name}.npy")
    np.testing.assert_array_equal(rgb, s[0].features[:, :4])


def test_concat_timing_exact(tmp_path: Path) -> None:
    videos = make_videos(n=2, concat=(4, 16))  # fps 25 then 30
    write_layout(videos, CLASSES, tmp_path / "c", "concat")
    ann = load_activitynet_json(tmp_path / "c" / "gt.json")
    v25, v30 = read_concat(tmp_path / "c", ann, 8)
    # 16-frame window every 4 frames at 30 fps: step 0 is centred on frame 8 = 8/30 s.
    assert v30.step_s == 4 / 30 and v30.offset_s == 6 / 30
    assert v30.to_seconds(0.5) == pytest.approx(8 / 30, abs=1e-15)
    assert v30.to_seconds(10.5) == pytest.approx((10 * 4 + 8) / 30, abs=1e-15)
    assert v25.to_seconds(0.5) == pytest.approx(8 / 25, abs=1e-15)
    # A fixed fps overrides the annotation's.
    (w,) = read_concat(tmp_path / "c", ann, 8, fps=10.0, feature_stride=8, snippet_frames=16, videos_subset="test")
    assert (w.step_s, w.offset_s) == (0.8, 0.4) and w.fps == 30.0


def test_concat_resize(tmp_path: Path) -> None:
    videos = make_videos(n=2, concat=(4, 16))
    write_layout(videos, CLASSES, tmp_path / "c", "concat")
    ann = load_activitynet_json(tmp_path / "c" / "gt.json")
    vs = read_concat(tmp_path / "c", ann, 8, resize_length=16)
    for v, orig in zip(vs, videos):
        assert v.num_steps == 16 and v.offset_s == 0.0 and v.step_s == orig.duration / 16
        assert v.to_seconds(16) == pytest.approx(orig.duration)
    x = np.arange(4, dtype=np.float32)[:, None]  # (4, 1)
    np.testing.assert_allclose(resample_steps(x, 8)[:, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])
    np.testing.assert_array_equal(resample_steps(x, 4), x)
