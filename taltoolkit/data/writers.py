"""Writers for the three feature layouts the readers understand, plus atomic file helpers.

``write_layout`` builds the whole dataset in a temporary sibling folder and renames it into
place, so a crash or a concurrent writer never leaves a half-written dataset behind.
Reading back what was written (``read_layout``) gives records identical to the input:
features bit-identical, segments, labels, timing, subset, duration and fps.

Besides the layout's own files every written dataset has ``gt.json`` (ActivityNet-style,
what the evaluator reads) and ``layout.json`` (the layout name and timing parameters, so
that ``read_layout`` needs only the folder).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from taltoolkit.atomicio import atomic_write_bytes, atomic_write_text
from taltoolkit.data.annotations import AnnotationSet, load_activitynet_json, load_wtalc_annotations
from taltoolkit.data.errors import DataError, preview
from taltoolkit.data.readers import WTALC_STEP_S, concat_timing, read_concat, read_split, read_wtalc
from taltoolkit.structures import Video

LAYOUTS = ("wtalc", "split", "concat")
LAYOUT_FILE = "layout.json"
GT_FILE = "gt.json"


# --------------------------------------------------------------------------- atomic helpers
def _tmp_sibling(path: Path) -> Path:
    """A unique sibling name, to stage a folder and rename it into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray, allow_pickle: bool = False) -> None:
    """``np.save`` through the atomic writer."""
    atomic_write_bytes(path, lambda f: np.save(f, array, allow_pickle=allow_pickle))


def _publish_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move a fully built folder into place; an existing non-empty target needs overwrite."""
    try:
        os.rename(tmp, out)  # atomic; also succeeds onto an empty directory
        return
    except OSError:
        if not out.exists():
            raise
    if not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; pass overwrite=True or choose another folder")
    foreign = foreign_files(out)
    if foreign:
        # overwrite replaces a dataset this module wrote, never files of the user's.
        raise FileExistsError(
            f"{out} holds {len(foreign)} file(s) that write_layout did not write, e.g. {preview(foreign, 4)}; "
            "overwrite only replaces a folder written by write_layout / tools/make_synthetic.py: move those "
            "files or choose another folder"
        )
    old = _tmp_sibling(out)
    os.rename(out, old)  # two renames: the target is briefly absent, but never half-written
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


# Files of a W-TALC annotation folder as write_wtalc_annotations writes it.
_WTALC_ANNOTATION_FILES = frozenset(f"{n}.npy" for n in (
    "videoname", "subset", "classlist", "duration", "original_fps", "labels", "labels_all", "segments"))
# Besides the layout's own files: the synthetic cache's / make_synthetic's record, and the
# semi split files runs write into a dataset root (regenerated from their seed).
_OWN_EXTRAS = frozenset({LAYOUT_FILE, GT_FILE, "synthetic.json", "splits"})


def foreign_files(folder: Path) -> list[str]:
    """Paths under ``folder`` (relative) that :func:`write_layout` did not write there.

    What a folder holds is judged from its own ``layout.json`` and ``gt.json``: without
    them nothing in it is known to be ours.
    """
    try:
        meta = read_layout_meta(folder)
        videos = set(json.loads((folder / GT_FILE).read_text(encoding="utf-8"))["database"])
    except (OSError, ValueError, KeyError, TypeError, DataError):
        meta, videos = {}, set()
    layout, name = meta.get("layout"), str(meta.get("name", ""))
    out: list[str] = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        top = rel.parts[0]
        if not meta:
            ok = False
        elif top in _OWN_EXTRAS:
            ok = top != "splits" or p.is_dir() or p.suffix == ".json"
        elif layout == "wtalc":
            ok = (rel.as_posix() == f"{name}-I3D-JOINTFeatures.npy" or (top == f"{name}-Annotations" and (
                len(rel.parts) == 1 or (len(rel.parts) == 2 and rel.name in _WTALC_ANNOTATION_FILES))))
        elif layout == "split" and len(rel.parts) == 1 and rel.name.startswith("split_") and rel.suffix == ".txt":
            ok = True
        elif layout == "split":
            ok = top == "features" and (len(rel.parts) < 4 or (len(rel.parts) == 4 and rel.suffix == ".npy"
                                                                and rel.stem in videos))
        else:  # concat
            ok = len(rel.parts) == 1 and rel.suffix == ".npy" and rel.stem in videos
        if not ok and not any(rel.as_posix().startswith(f + "/") for f in out):
            out.append(rel.as_posix())
    return out


# --------------------------------------------------------------------------- validation
def _object_array(items: Sequence[Any]) -> np.ndarray:
    # np.array(list_of_arrays, dtype=object) would build a 3-D array when all T are equal.
    out = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        out[i] = x
    return out


def _check_videos(videos: Sequence[Video], classes: Sequence[str]) -> int:
    if not videos:
        raise ValueError("write_layout needs at least one video")
    names = [v.name for v in videos]
    if len(set(names)) != len(names):
        raise ValueError("write_layout: video names must be unique")
    dims = {int(v.features.shape[1]) if v.features.ndim == 2 else -1 for v in videos}
    if len(dims) != 1 or -1 in dims:
        raise ValueError(f"write_layout: every video needs (T, D) features with one D, got D in {sorted(dims)}")
    for v in videos:
        if not v.name or "/" in v.name or "\\" in v.name or v.name.startswith("."):
            raise ValueError(f"write_layout: video name {v.name!r} cannot be a file name")
        if v.label_level != "full":
            raise ValueError(
                f"write_layout: video {v.name!r} has label_level={v.label_level!r}; write the full records "
                "(label views are applied after reading)"
            )
        if v.features.shape[0] == 0:
            raise ValueError(f"write_layout: video {v.name!r} has no feature steps")
        if v.labels.size and (v.labels.min() < 0 or v.labels.max() >= len(classes)):
            raise ValueError(f"write_layout: video {v.name!r} has a label outside the {len(classes)} classes")
        if v.video_labels is not None:
            # Readers derive video labels from the instances, so anything else would not round-trip.
            expect = np.zeros(len(classes), np.float32)
            expect[v.labels] = 1.0
            if v.video_labels.shape != expect.shape or not np.array_equal(v.video_labels, expect):
                raise ValueError(
                    f"write_layout: video {v.name!r} has video_labels that differ from the classes of its instances"
                )
    return dims.pop()


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _common_timing(videos: Sequence[Video], layout: str) -> tuple[float, float]:
    steps = {v.step_s for v in videos}
    offsets = {v.offset_s for v in videos}
    if len(steps) != 1 or len(offsets) != 1:
        raise ValueError(
            f"write_layout: the {layout!r} layout has one step_s/offset_s for all videos, but the videos have "
            f"step_s in {sorted(steps)[:4]} and offset_s in {sorted(offsets)[:4]}"
        )
    return steps.pop(), offsets.pop()


def _check_concat_timing(
    videos: Sequence[Video], feature_stride: float, snippet_frames: float, fps: float | None, resize_length: int | None
) -> None:
    for v in videos:
        if resize_length is not None:
            want = (v.duration / resize_length, 0.0)
            if v.num_steps != resize_length:
                raise ValueError(
                    f"write_layout: video {v.name!r} has T={v.num_steps} but resize_length={resize_length}"
                )
        else:
            want = concat_timing(feature_stride, snippet_frames, fps if fps is not None else v.fps)
        if not (_same(v.step_s, want[0]) and _same(v.offset_s, want[1])):
            implied = v.step_s * (fps or v.fps)
            raise ValueError(
                f"write_layout: video {v.name!r} has step_s={v.step_s}, offset_s={v.offset_s} but the concat layout "
                f"with feature_stride={feature_stride}, snippet_frames={snippet_frames}, fps={fps}, "
                f"resize_length={resize_length} gives {want}; its timing implies feature_stride={implied:g} "
                f"(frames per step at {fps or v.fps:g} fps)"
            )


# --------------------------------------------------------------------------- annotation files
def videos_to_database(videos: Sequence[Video], classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """ActivityNet ``database`` dict of the videos' ground truth."""
    return {
        v.name: {
            "subset": v.subset,
            "duration": float(v.duration),
            "fps": float(v.fps),
            "annotations": [
                {"label": classes[int(c)], "segment": [float(s), float(e)], "label_id": int(c)}
                for (s, e), c in zip(np.asarray(v.segments, np.float64).reshape(-1, 2), v.labels)
            ],
        }
        for v in videos
    }


def write_activitynet_json(path: str | os.PathLike, videos: Sequence[Video], classes: Sequence[str], version: str) -> None:
    atomic_write_json(path, {"version": version, "classes": list(classes), "database": videos_to_database(videos, classes)})


def write_wtalc_annotations(folder: str | os.PathLike, videos: Sequence[Video], classes: Sequence[str]) -> None:
    """The W-TALC annotation npy files (bytes strings, pickled per-video lists), each written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    enc = lambda xs: np.array([x.encode("utf-8") for x in xs])  # noqa: E731 - W-TALC stores bytes
    labels = [[classes[int(c)] for c in v.labels] for v in videos]
    atomic_save_npy(folder / "videoname.npy", enc([v.name for v in videos]))
    atomic_save_npy(folder / "subset.npy", enc([v.subset for v in videos]))
    atomic_save_npy(folder / "classlist.npy", enc(classes))
    atomic_save_npy(folder / "duration.npy", np.array([[float(v.duration)] for v in videos], np.float64))  # (N, 1) as released
    atomic_save_npy(folder / "original_fps.npy", np.array([float(v.fps) for v in videos], np.float64))
    atomic_save_npy(folder / "labels.npy", _object_array(labels), allow_pickle=True)
    atomic_save_npy(folder / "labels_all.npy", _object_array([list(dict.fromkeys(x)) for x in labels]), allow_pickle=True)
    segs = [[[float(s), float(e)] for s, e in np.asarray(v.segments, np.float64).reshape(-1, 2)] for v in videos]
    atomic_save_npy(folder / "segments.npy", _object_array(segs), allow_pickle=True)


# --------------------------------------------------------------------------- layouts
def write_layout(
    videos: Sequence[Video],
    classes: Sequence[str],
    out_dir: str | os.PathLike,
    layout: str,
    *,
    name: str = "Synthetic",
    subsets: Mapping[str, str] | None = None,
    modalities: Sequence[str] = ("rgb", "flow"),
    modality_dims: Sequence[int] | None = None,
    feature_stride: int | float = 4,
    snippet_frames: int | float = 16,
    fps: float | None = None,
    resize_length: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write videos in one of the layouts ``wtalc | split | concat``; returns ``out_dir``.

    - ``wtalc``: ``<name>-I3D-JOINTFeatures.npy`` + ``<name>-Annotations/`` + ``gt.json``.
      All videos must share ``step_s``/``offset_s``.
    - ``split``: ``features/<split>/<modality>/<video>.npy`` + ``gt.json``; ``subsets`` maps
      each subset to its split folder (None: the subset's own name); features are cut on the
      channel axis into ``modality_dims`` (None: equal parts). One ``step_s``/``offset_s``.
    - ``concat``: ``<video>.npy`` + ``gt.json``; each video's timing must equal what
      ``read_concat`` computes from ``feature_stride, snippet_frames, fps, resize_length``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    classes = list(classes)
    dim = _check_videos(videos, classes)
    meta: dict[str, Any] = {"layout": layout, "name": name, "feature_dim": dim}
    if layout in ("wtalc", "split"):
        step_s, offset_s = _common_timing(videos, layout)
        meta.update(step_s=step_s, offset_s=offset_s)
    else:
        _check_concat_timing(videos, feature_stride, snippet_frames, fps, resize_length)
        meta.update(feature_stride=feature_stride, snippet_frames=snippet_frames, fps=fps, resize_length=resize_length)
    if layout == "split":
        split_folders = dict(subsets) if subsets is not None else {s: s for s in dict.fromkeys(v.subset for v in videos)}
        unmapped = sorted({v.subset for v in videos} - set(split_folders))
        if unmapped:
            raise ValueError(f"write_layout: subsets {unmapped} have no split folder in subsets={split_folders}")
        dims = list(modality_dims) if modality_dims is not None else [dim // len(modalities)] * len(modalities)
        if sum(dims) != dim or len(dims) != len(modalities):
            raise ValueError(f"write_layout: modality_dims {dims} must split D={dim} into {len(modalities)} parts")
        meta.update(split_folders=split_folders, modalities=list(modalities), modality_dims=dims)

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(out)
    tmp.mkdir()  # not mkdtemp: its 0700 mode would survive the rename and hide a shared cache
    # Files inside the staging folder are written plainly: the folder is renamed into place whole.
    try:
        if layout == "wtalc":
            feats = _object_array([np.ascontiguousarray(v.features, np.float32) for v in videos])
            np.save(tmp / f"{name}-I3D-JOINTFeatures.npy", feats, allow_pickle=True)
            write_wtalc_annotations(tmp / f"{name}-Annotations", videos, classes)
        elif layout == "split":
            bounds = np.cumsum([0, *meta["modality_dims"]])
            for v in videos:
                split = meta["split_folders"][v.subset]
                f32 = np.asarray(v.features, np.float32)
                for mod, lo, hi in zip(modalities, bounds[:-1], bounds[1:]):
                    folder = tmp / "features" / split / mod
                    folder.mkdir(parents=True, exist_ok=True)
                    np.save(folder / f"{v.name}.npy", np.ascontiguousarray(f32[:, lo:hi]))
            for split in dict.fromkeys(meta["split_folders"].values()):
                # BaS-Net/CASE's split_<folder>.txt: the videos of each feature folder
                names = [v.name for v in videos if meta["split_folders"][v.subset] == split]
                (tmp / f"split_{split}.txt").write_text("".join(n + "\n" for n in names), encoding="utf-8")
        else:
            for v in videos:
                np.save(tmp / f"{v.name}.npy", np.ascontiguousarray(v.features, np.float32))
        write_activitynet_json(tmp / GT_FILE, videos, classes, version=f"{name} (written by taltoolkit)")
        atomic_write_json(tmp / LAYOUT_FILE, meta)
        _publish_dir(tmp, out, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_layout_meta(root: str | os.PathLike) -> dict[str, Any]:
    """The ``layout.json`` that ``write_layout`` left in ``root`` ({} if there is none)."""
    path = Path(root) / LAYOUT_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"layout file {path} is not valid JSON ({e.msg}); delete it or re-run write_layout") from None
    if not isinstance(meta, dict):
        raise DataError(f"layout file {path} must hold a JSON object; delete it or re-run write_layout")
    return meta


def load_layout_annotations(root: str | os.PathLike, layout: str | None = None, name: str | None = None) -> AnnotationSet:
    """The annotations of a written dataset: the W-TALC folder for ``wtalc``, else ``gt.json``."""
    root = Path(root)
    meta = read_layout_meta(root)
    layout = layout or meta.get("layout")
    if layout == "wtalc":
        return load_wtalc_annotations(root / f"{name or meta.get('name', 'Synthetic')}-Annotations")
    return load_activitynet_json(root / GT_FILE)


def read_layout(
    root: str | os.PathLike,
    layout: str | None = None,
    *,
    videos_subset: Sequence[str] | str | None = None,
    **overrides: Any,
) -> list[Video]:
    """Read a dataset written by :func:`write_layout` (parameters from its ``layout.json``).

    ``overrides`` replace recorded parameters (``name``, ``feature_dim``, ``step_s``,
    ``offset_s``, ``subsets``, ``modalities``, ``feature_stride``, ``snippet_frames``,
    ``fps``, ``resize_length``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} not found; write it with write_layout or tools/make_synthetic.py")
    meta = read_layout_meta(root)
    layout = layout or meta.get("layout")
    if layout not in LAYOUTS:
        raise DataError(f"{root} has no {LAYOUT_FILE} naming its layout; pass layout= one of {LAYOUTS}")
    p = {**meta, **overrides}
    name = p.get("name", "Synthetic")
    ann = load_layout_annotations(root, layout, name)
    dim = int(p.get("feature_dim", 2048))
    if layout == "wtalc":
        return read_wtalc(
            p.get("features_file") or root / f"{name}-I3D-JOINTFeatures.npy", ann, dim,
            step_s=p.get("step_s", WTALC_STEP_S), offset_s=p.get("offset_s", 0.0), videos_subset=videos_subset,
        )
    if layout == "split":
        return read_split(
            root, ann, dim, subsets=p.get("subsets", p.get("split_folders")),
            modalities=tuple(p.get("modalities", ("rgb", "flow"))), step_s=p.get("step_s", WTALC_STEP_S),
            offset_s=p.get("offset_s", 0.0), videos_subset=videos_subset,
        )
    return read_concat(
        root, ann, dim, feature_stride=p.get("feature_stride", 4), snippet_frames=p.get("snippet_frames", 16),
        fps=p.get("fps"), resize_length=p.get("resize_length"), videos_subset=videos_subset,
    )
