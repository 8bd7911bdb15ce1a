"""One reader per real on-disk feature layout; each returns ``list[Video]`` in annotation order.

Layouts (trees in docs/datasets.md):

- ``wtalc``: one pickled object array ``<Dataset>-I3D-JOINTFeatures.npy`` holding a
  ``(T, 2048)`` array per video, in the order of the annotation folder's ``videoname.npy``.
- ``split``: BaS-Net / CASE per-video files ``root/features/<split>/<modality>/<video>.npy``,
  concatenated on the channel axis in ``modalities`` order (rgb first).
- ``concat``: ActionFormer per-video files ``root/<video>.npy`` of shape ``(T, 2048)``.

Timing follows docs/architecture.md: step ``j`` covers ``[offset_s + j * step_s,
offset_s + (j + 1) * step_s)`` seconds. Every problem with the input raises
:class:`~taltoolkit.data.errors.DataError` naming the file and the fix; nothing is skipped
silently.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from taltoolkit.data.annotations import AnnotationSet, VideoAnnotation
from taltoolkit.data.errors import DataError, preview
from taltoolkit.structures import Video

WTALC_STEP_S = 16 / 25  # 16-frame snippets at 25 fps
WTALC_FPS = 25.0  # the frame rate W-TALC / BaS-Net features were extracted at
CONCAT_DEFAULT_FPS = 30.0  # ActionFormer THUMOS videos are (mostly) 30 fps

_A = TypeVar("_A")
_R = TypeVar("_R")


def _ordered_map(fn: Callable[[_A], _R], items: Sequence[_A]) -> list[_R]:
    # Reading thousands of small .npy files is I/O bound and np.load releases the GIL, so a
    # few threads help; map() keeps the input order, so results stay deterministic.
    if len(items) < 16:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        return list(pool.map(fn, items))


def _short(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _check_finite(feats: np.ndarray, name: str, path: Path | str) -> None:
    if np.isfinite(feats).all():
        return
    bad_steps = np.nonzero(~np.isfinite(feats).all(axis=1))[0]
    step = int(bad_steps[0])
    kind = "NaN" if np.isnan(feats[step]).any() else "inf"
    raise DataError(
        f"features of video {name!r} in {path} contain {kind} at step {step} "
        f"({len(bad_steps)} bad step(s) of {feats.shape[0]}); re-extract or repair this file"
    )


def _check_array(feats: np.ndarray, name: str, path: Path | str) -> None:
    if feats.ndim != 2:
        raise DataError(
            f"features of video {name!r} in {path} have shape {tuple(feats.shape)}; expected (T, D) "
            "with time first: re-save the array as 2-D"
        )
    if feats.shape[0] == 0:
        raise DataError(f"features of video {name!r} in {path} are empty (T=0); remove the video or re-extract it")


def _check_dim(dim: int, feature_dim: int | None, name: str, path: Path | str) -> None:
    if feature_dim is not None and dim != feature_dim:
        raise DataError(
            f"features of video {name!r} in {path} have {dim} channels but feature_dim={feature_dim}: "
            f"set dataset.feature_dim={dim} (or point dataset.root at features of dimension {feature_dim})"
        )


def load_feature_file(path: Path, name: str) -> np.ndarray:
    """One ``(T, D)`` float32 array, checked for shape, emptiness and finiteness."""
    if not path.is_file():
        raise DataError(f"feature file {path} of video {name!r} not found; check dataset.root")
    try:
        # mmap reads only the header first, so a wrong shape fails before the data is read.
        mm = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"feature file {path} of video {name!r} cannot be read as .npy ({e}); re-extract it") from None
    _check_array(mm, name, path)
    feats = np.array(mm, dtype=np.float32)  # one pass: copies out of the map and converts
    del mm
    _check_finite(feats, name, path)
    return feats


def _make_video(
    ann: VideoAnnotation, feats: np.ndarray, annotations: AnnotationSet, step_s: float, offset_s: float, fps: float
) -> Video:
    return Video(
        name=ann.name,
        features=feats,
        duration=float(ann.duration),
        fps=float(fps),
        step_s=float(step_s),
        offset_s=float(offset_s),
        subset=ann.subset,
        segments=ann.segments.astype(np.float64, copy=True),
        labels=ann.labels.astype(np.int64, copy=True),
        video_labels=annotations.video_labels(ann.name),
        label_level="full",
    )


def _selected(annotations: AnnotationSet, videos_subset: Iterable[str] | str | None) -> list[VideoAnnotation]:
    if isinstance(videos_subset, str):
        videos_subset = [videos_subset]
    return list(annotations.select(videos_subset).videos.values())


def _missing_error(missing: list[str], total: int, where: Path, fix: str) -> DataError:
    return DataError(
        f"{len(missing)} of {total} annotated video(s) have no features in {where}: {preview(missing)}; {fix}"
    )


def _extra_error(extra: list[str], where: Path, annotations: AnnotationSet) -> DataError:
    return DataError(
        f"{len(extra)} feature file(s) in {where} have no annotation in {annotations.source or 'the annotations'}: "
        f"{preview(extra)}; remove them, use the annotation file they were released with "
        "(dataset.annotations=...), or set dataset.ignore_unannotated=true to skip them"
    )


def _npy_stems(folder: Path) -> set[str]:
    with os.scandir(folder) as it:
        return {e.name[:-4] for e in it if e.name.endswith(".npy") and e.is_file()}


# --------------------------------------------------------------------------- W-TALC joint file
def read_wtalc(
    features_file: str | os.PathLike,
    annotations: AnnotationSet,
    feature_dim: int | None = 2048,
    step_s: float = WTALC_STEP_S,
    offset_s: float = 0.0,
    videos_subset: Iterable[str] | str | None = None,
) -> list[Video]:
    """Read a W-TALC ``<Dataset>-I3D-JOINTFeatures.npy`` (one ``(T, D)`` array per video).

    The file has no names: array ``i`` belongs to the ``i``-th video of ``annotations``,
    which must therefore be the annotation set released with it (same ``videoname.npy``
    order). ``videos_subset`` keeps only the given subsets (the whole file is still read).
    ``feature_dim=None`` takes the width of the first video (every video must share it).
    """
    path = Path(features_file)
    if not path.is_file():
        raise DataError(
            f"W-TALC feature file {path} not found: set dataset.root to the folder that holds it or "
            "dataset.features_file=PATH, or run tools/make_synthetic.py"
        )
    try:
        # The joint file is a pickled object array (unpickling runs code from the file: only
        # files the user pointed at are loaded, docs/datasets.md). The public files were written
        # by Python 2; encoding="bytes" is how the public loaders read them.
        joint = np.load(path, allow_pickle=True, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - a truncated pickle raises UnpicklingError, EOFError, ValueError...
        raise DataError(
            f"W-TALC feature file {path} cannot be read ({type(e).__name__}: {_short(e)}); the file is truncated "
            "or not a W-TALC .npy: re-download it"
        ) from None
    if joint.dtype != object and joint.ndim != 3:
        raise DataError(
            f"W-TALC feature file {path} holds an array of shape {joint.shape}; expected an object array of "
            "(T, D) arrays (or a (N, T, D) array), one per video in videoname.npy order"
        )
    all_anns = list(annotations.videos.values())
    if len(joint) != len(all_anns):
        # The file has no names, so only the tail of the annotation order can be blamed.
        if len(joint) < len(all_anns):
            tail = [a.name for a in all_anns[len(joint):]]
            detail = f"{len(tail)} annotated video(s) have no features, e.g. {preview(tail)}"
        else:
            detail = f"{len(joint) - len(all_anns)} feature array(s) (entries {len(all_anns)}..{len(joint) - 1}) have no annotation"
        raise DataError(
            f"W-TALC feature file {path} holds {len(joint)} videos but the annotations "
            f"{annotations.source or ''} list {len(all_anns)} ({detail}); use the annotation folder released with "
            "this feature file (its videoname.npy gives the order)"
        )
    keep = {a.name for a in _selected(annotations, videos_subset)}
    videos: list[Video] = []
    for i, ann in enumerate(all_anns):
        if ann.name not in keep:
            continue
        arr = np.asarray(joint[i])
        where = f"{path} (entry {i})"
        _check_array(arr, ann.name, where)
        if feature_dim is None:
            feature_dim = int(arr.shape[1])
        _check_dim(arr.shape[1], feature_dim, ann.name, where)
        feats = np.ascontiguousarray(arr, dtype=np.float32)
        _check_finite(feats, ann.name, where)
        videos.append(_make_video(ann, feats, annotations, step_s, offset_s, ann.fps or WTALC_FPS))
    return videos


# --------------------------------------------------------------------------- split rgb / flow
def read_split(
    root: str | os.PathLike,
    annotations: AnnotationSet,
    feature_dim: int | None = 2048,
    subsets: Mapping[str, str] | None = None,
    modalities: Sequence[str] = ("rgb", "flow"),
    step_s: float = WTALC_STEP_S,
    offset_s: float = 0.0,
    videos_subset: Iterable[str] | str | None = None,
    ignore_unannotated: bool = False,
    split_lists: Mapping[str, Sequence[str]] | None = None,
) -> list[Video]:
    """Read BaS-Net/CASE per-video features ``root/features/<split>/<modality>/<video>.npy``.

    ``subsets`` maps an annotation subset to its split folder, e.g.
    ``{"validation": "train", "test": "test"}`` for THUMOS'14 (None: folder = subset name).
    Modalities are concatenated on the channel axis in the given order. ``split_lists`` maps
    a split folder to the videos its ``split_<split>.txt`` lists: only those are read from it
    (annotated videos the release leaves out, e.g. BaS-Net's excluded test videos, are
    skipped); a listed video without annotation is an error.
    """
    root = Path(root)
    selected = _selected(annotations, videos_subset)
    if subsets is None:
        subsets = {s: s for s in annotations.subsets()}
    needed = list(dict.fromkeys(a.subset for a in selected))
    unmapped = [s for s in needed if s not in subsets]
    if unmapped:
        raise DataError(
            f"subset(s) {unmapped} of {annotations.source or 'the annotations'} have no split folder under "
            f"{root / 'features'}: add them to dataset.split_folders (now {dict(subsets)})"
        )
    if not modalities:
        raise DataError("read_split needs at least one modality, e.g. modalities=('rgb', 'flow')")
    if split_lists:
        for split, names in split_lists.items():
            listed = set(names)
            in_folder = {a.name for a in annotations.videos.values() if subsets.get(a.subset) == split}
            unknown = sorted(listed - in_folder)
            if unknown:
                raise DataError(
                    f"{root / f'split_{split}.txt'} lists {len(unknown)} video(s) that "
                    f"{annotations.source or 'the annotations'} do not annotate in a subset mapped to features/{split}: "
                    f"{preview(unknown)}; use the annotations released with the features (dataset.annotations=...) "
                    f"or check dataset.split_folders (now {dict(subsets)})"
                )
        selected = [a for a in selected if subsets[a.subset] not in split_lists or a.name in set(split_lists[subsets[a.subset]])]

    # Check every folder and both directions of name matching before reading any data.
    by_folder: dict[str, list[VideoAnnotation]] = {}
    for a in selected:
        by_folder.setdefault(subsets[a.subset], []).append(a)
    for split, anns in by_folder.items():
        expected = {a.name for a in annotations.videos.values() if subsets.get(a.subset) == split}
        for mod in modalities:
            folder = root / "features" / split / mod
            if not folder.is_dir():
                raise DataError(
                    f"features folder {folder} not found: point dataset.root at the folder that holds "
                    f"features/{split}/{mod}, or run tools/make_synthetic.py"
                )
            present = _npy_stems(folder)
            missing = [a.name for a in anns if a.name not in present]
            if missing:
                raise _missing_error(
                    missing, len(anns), folder,
                    "add the files, or check dataset.split_folders maps each subset to the right folder",
                )
            extra = sorted(present - expected)
            if extra and not ignore_unannotated:
                raise _extra_error(extra, folder, annotations)

    def load(a: VideoAnnotation) -> tuple[Video, list[tuple[Path, tuple[int, ...]]]]:
        parts = []
        for mod in modalities:
            p = root / "features" / subsets[a.subset] / mod / f"{a.name}.npy"
            parts.append((p, load_feature_file(p, a.name)))
        lengths = {f.shape[0] for _, f in parts}
        if len(lengths) > 1:
            detail = ", ".join(f"{p} has T={f.shape[0]}" for p, f in parts)
            raise DataError(
                f"modalities of video {a.name!r} differ in length ({detail}); re-extract them with the same snippets"
            )
        shapes = [(p, tuple(f.shape)) for p, f in parts]
        dim = sum(f.shape[1] for _, f in parts)
        if feature_dim is not None and dim != feature_dim:
            # Name every modality's file and shape: one file with extra channels is a broken
            # file, not a reason to change dataset.feature_dim to the sum.
            raise DataError(
                f"features of video {a.name!r} have {dim} channels in all, not dataset.feature_dim={feature_dim}: "
                + ", ".join(f"{p} has shape {shape}" for p, shape in shapes)
                + "; re-extract the file whose channels differ, or set dataset.feature_dim if every video has them"
            )
        feats = parts[0][1] if len(parts) == 1 else np.concatenate([f for _, f in parts], axis=1)  # (T, D)
        return _make_video(a, feats, annotations, step_s, offset_s, a.fps or WTALC_FPS), shapes

    loaded = _ordered_map(load, selected)
    # Per-modality widths must agree across videos, or channels of one video would be
    # misaligned with the others' although the sum matches feature_dim.
    widths = [tuple(shape[1] for _, shape in shapes) for _, shapes in loaded]
    common = max(set(widths), key=widths.count) if widths else ()
    def files(shapes: list[tuple[Path, tuple[int, ...]]]) -> str:
        return ", ".join(f"{p} has shape {shape}" for p, shape in shapes)

    for (video, shapes), w in zip(loaded, widths):
        if w != common:
            ref_video, ref_shapes = loaded[widths.index(common)]
            raise DataError(
                f"modalities {list(modalities)} of video {video.name!r} are {list(w)} channels wide ({files(shapes)}) "
                f"but those of video {ref_video.name!r} are {list(common)} ({files(ref_shapes)}); re-extract the "
                "video whose widths are wrong"
            )
    return _same_width([video for video, _ in loaded], feature_dim)


# --------------------------------------------------------------------------- concat per video
def concat_timing(
    feature_stride: int | float, snippet_frames: int | float, fps: float
) -> tuple[float, float]:
    """(step_s, offset_s) of ActionFormer-style sliding-window features at ``fps``.

    A window of ``snippet_frames`` frames every ``feature_stride`` frames: step ``j``'s window
    is centred at ``(j * stride + snippet_frames / 2) / fps``; giving step ``j`` the interval
    ``[offset_s + j * step_s, offset_s + (j + 1) * step_s)`` with the same centre needs
    ``offset_s = (snippet_frames / 2 - stride / 2) / fps``.
    """
    return feature_stride / fps, (snippet_frames / 2 - feature_stride / 2) / fps


def resample_steps(feats: np.ndarray, length: int) -> np.ndarray:
    """Linear resampling of ``(T, D)`` to ``(length, D)`` treating steps as intervals.

    Sample ``i`` of the output sits at the centre of the ``i``-th of ``length`` equal parts of
    the video, i.e. at input coordinate ``(i + 0.5) * T / length - 0.5`` (what
    ``F.interpolate(mode="linear", align_corners=False)`` does).
    """
    t = feats.shape[0]
    if t == length:
        return feats
    x = np.clip((np.arange(length, dtype=np.float64) + 0.5) * t / length - 0.5, 0.0, t - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, t - 1)
    w = (x - lo)[:, None].astype(np.float32)
    return (feats[lo] * (1 - w) + feats[hi] * w).astype(np.float32)


def read_concat(
    root: str | os.PathLike,
    annotations: AnnotationSet,
    feature_dim: int | None = 2048,
    feature_stride: int | float = 4,
    snippet_frames: int | float = 16,
    fps: float | None = None,
    resize_length: int | None = None,
    videos_subset: Iterable[str] | str | None = None,
    ignore_unannotated: bool = False,
    file_prefix: str = "",
) -> list[Video]:
    """Read ActionFormer-style per-video features ``root/<file_prefix><video>.npy`` of shape ``(T, D)``.

    Timing: ``step_s = feature_stride / fps`` and ``offset_s = (snippet_frames / 2 -
    feature_stride / 2) / fps`` where fps is ``fps`` if given, else the video's fps from the
    annotations, else 30. With ``resize_length = L`` (ActivityNet) each video is resampled to
    ``L`` steps when it has a different length and ``step_s = duration / L``, ``offset_s = 0``;
    with ``fps`` given as well, the stored steps span ``((T - 1) * feature_stride +
    snippet_frames) / fps`` seconds and ``step_s`` is that span over ``L`` (ActionFormer's
    ``force_upsampling``, e.g. TSP features at 15 fps). ``file_prefix`` is what file names add
    to video names (``'v_'`` in ActionFormer's ActivityNet release).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"features folder {root} not found: point dataset.root at the folder that holds <video>.npy, "
            "or run tools/make_synthetic.py"
        )
    if resize_length is not None and resize_length < 1:
        raise DataError(f"resize_length must be a positive number of steps, got {resize_length}; set dataset.resize_length")
    selected = _selected(annotations, videos_subset)
    stems = _npy_stems(root)
    present = {s[len(file_prefix):] for s in stems if s.startswith(file_prefix)}
    missing = [a.name for a in selected if a.name not in present]
    if missing:
        raise _missing_error(missing, len(selected), root, "add the files, point dataset.root at the right folder"
                             + (f" or check dataset.file_prefix={file_prefix!r}" if file_prefix else ""))
    extra = sorted(file_prefix + n for n in present - set(annotations.videos)) + sorted(
        s for s in stems if not s.startswith(file_prefix))
    if extra and not ignore_unannotated:
        raise _extra_error(extra, root, annotations)

    def load(a: VideoAnnotation) -> Video:
        path = root / f"{file_prefix}{a.name}.npy"
        feats = load_feature_file(path, a.name)  # (T, D)
        _check_dim(feats.shape[1], feature_dim, a.name, path)
        video_fps = fps if fps is not None else (a.fps if a.fps is not None else CONCAT_DEFAULT_FPS)
        if resize_length is not None:
            if fps is not None:
                span = ((feats.shape[0] - 1) * feature_stride + snippet_frames) / float(fps)
            else:
                span = float(a.duration)
            feats = resample_steps(feats, int(resize_length))
            step, offset = span / int(resize_length), 0.0
        else:
            step, offset = concat_timing(feature_stride, snippet_frames, float(video_fps))
        return _make_video(a, feats, annotations, step, offset, a.fps if a.fps is not None else video_fps)

    return _same_width(_ordered_map(load, selected), feature_dim)


def _same_width(videos: list[Video], feature_dim: int | None) -> list[Video]:
    """With ``feature_dim=None`` every video must still have the first one's width."""
    if feature_dim is None and videos:
        first = videos[0]
        for v in videos:
            if v.features.shape[1] != first.features.shape[1]:
                raise DataError(
                    f"features of video {v.name!r} have {v.features.shape[1]} channels but those of {first.name!r} "
                    f"have {first.features.shape[1]}; re-extract the video whose width is wrong"
                )
    return videos
