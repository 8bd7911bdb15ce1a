"""Ground-truth annotations: loaders for the ActivityNet-style JSON and the W-TALC npy folder.

Both formats load into one :class:`AnnotationSet` whose videos keep the file's order (the
W-TALC joint feature file is stored in ``videoname.npy`` order, so order is data). Segments
are kept exactly as written, including the ones that end after the video's duration or
have zero length (real THUMOS'14 and ActivityNet files contain both); nothing is dropped.
A segment that starts before 0 s is an error; one that lies wholly after the video's end
(30 in real THUMOS'14) is kept and logged as a warning naming the videos.

Video-level labels are always derived from the instances. The W-TALC folder also has a
``labels_all.npy`` but on THUMOS'14 it disagrees with the instances for 28 videos, and the
JSON format has no such field, so using it would make the two formats disagree.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np

from taltoolkit.jsonio import DuplicateKeyError, is_finite_number, strict_loads
from taltoolkit.data.errors import DataError, preview

# Packaged benchmark name -> (folder under taltoolkit/annotations, JSON file, W-TALC folder).
_PACKAGED = {
    "thumos14": ("thumos14", "thumos14_annotations.json", "Thumos14reduced-Annotations"),
    "activitynet12": ("activitynet12", "activitynet12_annotations.json", "ActivityNet1.2-Annotations"),
    "activitynet13": ("activitynet13", "activitynet13_annotations.json", "ActivityNet1.3-Annotations"),
}
log = logging.getLogger("taltoolkit")

_ALIASES = {
    "thumos": "thumos14",
    "thumos14reduced": "thumos14",
    "anet12": "activitynet12",
    "anet13": "activitynet13",
    "activitynet": "activitynet13",
}

WTALC_REQUIRED = ("videoname", "subset", "classlist", "duration", "labels", "segments")


@dataclass
class VideoAnnotation:
    """Ground truth of one video, in seconds."""

    name: str
    subset: str
    duration: float  # seconds
    fps: float | None  # frames per second of the source video; None when the file has none
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))  # (N, 2) seconds
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # (N,) class ids

    @property
    def num_instances(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class AnnotationSet:
    """Class list plus every annotated video, in file order."""

    classes: list[str]
    videos: dict[str, VideoAnnotation]
    source: str = ""  # where it was loaded from, for error messages

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subsets(self) -> list[str]:
        """Subset names in order of first appearance."""
        return list(dict.fromkeys(v.subset for v in self.videos.values()))

    def select(self, subsets: Iterable[str] | None) -> AnnotationSet:
        """The videos of the given subsets (all when None), order kept."""
        if subsets is None:
            return self
        keep = set(subsets)
        unknown = keep - set(self.subsets())
        if unknown:
            raise DataError(
                f"subset(s) {sorted(unknown)} not in annotations {self.source or '(in memory)'}; "
                f"the file has {self.subsets()}: set dataset.train_subset / dataset.test_subset to one of these"
            )
        return AnnotationSet(self.classes, {k: v for k, v in self.videos.items() if v.subset in keep}, self.source)

    def renamed(self, mapping: dict[str, str]) -> AnnotationSet:
        """The same videos (order kept) under new names ``mapping[old]`` (unmapped names kept)."""
        videos: dict[str, VideoAnnotation] = {}
        for k, v in self.videos.items():
            new = mapping.get(k, k)
            if new in videos:
                raise DataError(f"annotations {self.source}: renaming gives two videos the name {new!r}")
            videos[new] = VideoAnnotation(new, v.subset, v.duration, v.fps, v.segments, v.labels)
        return AnnotationSet(self.classes, videos, self.source)

    def with_subsets(self, mapping: dict[str, str]) -> AnnotationSet:
        """The same videos with subset names ``mapping[old]`` (unmapped subsets kept)."""
        videos = {k: VideoAnnotation(v.name, mapping.get(v.subset, v.subset), v.duration, v.fps, v.segments, v.labels)
                  for k, v in self.videos.items()}
        return AnnotationSet(self.classes, videos, self.source)

    def video_labels(self, name: str) -> np.ndarray:
        """Multi-hot (C,) float32 of the classes that occur in the video's instances."""
        out = np.zeros(len(self.classes), np.float32)
        out[self.videos[name].labels] = 1.0
        return out

    def num_instances(self, subset: str | None = None) -> int:
        return sum(v.num_instances for v in self.videos.values() if subset is None or v.subset == subset)

    def to_database(self, subset: str | None = None) -> dict[str, dict[str, Any]]:
        """ActivityNet ``database`` form ``{video: {subset, duration, fps, annotations}}``."""
        db: dict[str, dict[str, Any]] = {}
        for name, v in self.videos.items():
            if subset is not None and v.subset != subset:
                continue
            db[name] = {
                "subset": v.subset,
                "duration": float(v.duration),
                "fps": None if v.fps is None else float(v.fps),
                "annotations": [
                    {"label": self.classes[int(c)], "segment": [float(s), float(e)], "label_id": int(c)}
                    for (s, e), c in zip(v.segments, v.labels)
                ],
            }
        return db


# --------------------------------------------------------------------------- packaged files
class PackagedAnnotations(NamedTuple):
    json: Path  # ActivityNet-style JSON
    wtalc: Path  # W-TALC npy folder (videoname.npy order = joint feature file order)


def packaged_root() -> Path:
    return Path(__file__).resolve().parent.parent / "annotations"


def canonical_name(name: str) -> str | None:
    """``"THUMOS14"``, ``"activitynet1.3"`` ... -> the packaged key, or None if not packaged."""
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    key = _ALIASES.get(key, key)
    return key if key in _PACKAGED else None


def packaged_annotations(name: str) -> PackagedAnnotations:
    """Paths of the real annotation files shipped with the package for a benchmark."""
    key = canonical_name(name)
    if key is None:
        raise DataError(
            f"no packaged annotations for dataset {name!r}; packaged: {sorted(_PACKAGED)}. "
            "Pass dataset.annotations=PATH (an ActivityNet-style JSON or a W-TALC annotation folder)"
        )
    folder, js, wt = _PACKAGED[key]
    base = packaged_root() / folder
    return PackagedAnnotations(json=base / js, wtalc=base / wt)


def load_packaged_annotations(name: str, source: str = "json") -> AnnotationSet:
    """Load a packaged benchmark's annotations from its ``"json"`` or ``"wtalc"`` files (identical)."""
    paths = packaged_annotations(name)
    if source not in ("json", "wtalc"):
        raise ValueError(f"source must be 'json' or 'wtalc', got {source!r}")
    return load_activitynet_json(paths.json) if source == "json" else load_wtalc_annotations(paths.wtalc)


def load_annotations(path: str | os.PathLike, classes: list[str] | None = None) -> AnnotationSet:
    """Dispatch on the path: a folder is W-TALC npy, a file is ActivityNet-style JSON."""
    p = Path(path)
    if p.is_dir():
        return load_wtalc_annotations(p, classes=classes)
    return load_activitynet_json(p, classes=classes)


# --------------------------------------------------------------------------- JSON
_number = is_finite_number


def load_activitynet_json(path: str | os.PathLike, classes: list[str] | None = None) -> AnnotationSet:
    """Load ``{"version", "classes"?, "database": {video: {subset, duration, fps?, annotations}}}``.

    The class list is ``classes`` if given, else the file's ``"classes"``, else the sorted
    labels. A label outside the class list, or any malformed entry, raises :class:`DataError`.
    """
    path = Path(path)
    fix = "check the file or point dataset.annotations at an ActivityNet-style JSON"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"annotation file {path} not found: set dataset.annotations=PATH to an existing file") from None
    except OSError as e:
        raise DataError(f"annotation file {path} cannot be read ({e}): {fix}") from None
    try:
        data = strict_loads(text)
    except DuplicateKeyError as e:
        raise DataError(f"annotation file {path}: key {e.key!r} appears twice; remove the duplicate") from None
    except json.JSONDecodeError as e:
        raise DataError(f"annotation file {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}): {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise DataError(f"annotation file {path}: expected a top-level object with a 'database' object: {fix}")
    db: dict[str, Any] = data["database"]

    file_classes = data.get("classes")
    if file_classes is not None and (
        not isinstance(file_classes, list) or not all(isinstance(c, str) for c in file_classes)
    ):
        raise DataError(f"annotation file {path}: key 'classes' must be a list of class names: {fix}")

    # First pass: validate shapes and collect raw entries.
    raw: list[tuple[str, str, float, float | None, list[tuple[float, float]], list[str], list[int | None]]] = []
    for vid, entry in db.items():
        where = f"annotation file {path}: database[{vid!r}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where} must be an object: {fix}")
        subset = entry.get("subset")
        if not isinstance(subset, str):
            raise DataError(f"{where}['subset'] missing or not a string: {fix}")
        duration = entry.get("duration")
        if not _number(duration) or duration <= 0:
            raise DataError(f"{where}['duration'] must be a positive number, got {duration!r}: {fix}")
        fps = entry.get("fps")
        if fps is not None and (not _number(fps) or fps <= 0):
            raise DataError(f"{where}['fps'] must be a positive number, got {fps!r}: {fix}")
        anns = entry.get("annotations", [])
        if not isinstance(anns, list):
            raise DataError(f"{where}['annotations'] must be a list: {fix}")
        segs: list[tuple[float, float]] = []
        labs: list[str] = []
        ids: list[int | None] = []
        for i, a in enumerate(anns):
            awhere = f"{where}['annotations'][{i}]"
            if not isinstance(a, dict) or not isinstance(a.get("label"), str):
                raise DataError(f"{awhere} must be an object with a string 'label': {fix}")
            seg = a.get("segment")
            if not (isinstance(seg, list) and len(seg) == 2 and all(_number(x) for x in seg)):
                raise DataError(f"{awhere}['segment'] must be [start, end] in seconds, got {seg!r}: {fix}")
            if seg[1] < seg[0]:
                raise DataError(f"{awhere}['segment'] ends before it starts ({seg!r}): swap or fix the times")
            lid = a.get("label_id")
            if lid is not None and (not isinstance(lid, int) or isinstance(lid, bool)):
                raise DataError(f"{awhere}['label_id'] must be an integer, got {lid!r}: {fix}")
            segs.append((float(seg[0]), float(seg[1])))
            labs.append(a["label"])
            ids.append(lid)
        raw.append((vid, subset, float(duration), None if fps is None else float(fps), segs, labs, ids))

    if classes is not None:
        class_list = list(classes)
    elif file_classes is not None:
        class_list = list(file_classes)
    else:
        class_list = sorted({lab for r in raw for lab in r[5]})
    index = {c: i for i, c in enumerate(class_list)}
    if len(index) != len(class_list):
        raise DataError(f"annotation file {path}: the class list has duplicate names; make class names unique")
    # label_id only means something relative to the file's own class list.
    check_ids = classes is None and file_classes is not None

    videos: dict[str, VideoAnnotation] = {}
    for vid, subset, duration, fps, segs, labs, ids in raw:
        unknown = sorted({lab for lab in labs if lab not in index})
        if unknown:
            raise DataError(
                f"annotation file {path}: video {vid!r} has label(s) {unknown} not in the class list "
                f"({len(class_list)} classes: {preview(class_list, 4)}); fix the label or the 'classes' list"
            )
        lab_ids = [index[lab] for lab in labs]
        if check_ids:
            for j, (lid, li) in enumerate(zip(ids, lab_ids)):
                if lid is not None and lid != li:
                    raise DataError(
                        f"annotation file {path}: database[{vid!r}]['annotations'][{j}] has label_id {lid} "
                        f"but label {labs[j]!r} is class {li} of 'classes'; fix label_id or drop it"
                    )
        videos[vid] = VideoAnnotation(
            name=vid,
            subset=subset,
            duration=duration,
            fps=fps,
            segments=np.asarray(segs, np.float64).reshape(-1, 2),
            labels=np.asarray(lab_ids, np.int64),
        )
    _check_segment_bounds(videos, f"annotation file {path}")
    return AnnotationSet(class_list, videos, str(path))


def _check_segment_bounds(videos: dict[str, VideoAnnotation], where: str) -> None:
    """Negative starts are an error; segments wholly past the video's end are kept, with a warning.

    A negative start is no real time (evaluation rejects it, after a whole training run);
    real THUMOS'14 has 30 segments that start after their video's duration, which the
    official evaluation counts as ground truth, so those stay, but the user is told that
    no feature covers them.
    """
    negative = [(v.name, v.segments[i].tolist()) for v in videos.values() for i in np.nonzero(v.segments[:, 0] < 0)[0]]
    if negative:
        shown = ", ".join(f"{n!r} {seg}" for n, seg in negative[:3])
        raise DataError(
            f"{where}: {len(negative)} segment(s) start before 0 s, e.g. video {shown}; fix the start times "
            "(segments are [start, end] seconds from the video's start)"
        )
    past = [(v.name, v.segments[i].tolist(), v.duration) for v in videos.values()
            for i in np.nonzero(v.segments[:, 0] >= v.duration)[0]]
    if past:
        names = list(dict.fromkeys(n for n, _, _ in past))
        shown = ", ".join(f"{n!r} {seg} (duration {d:g} s)" for n, seg, d in past[:3])
        log.warning(
            "%s: %d segment(s) of %d video(s) lie wholly after their video's end, e.g. %s; they are kept as "
            "ground truth (the official evaluation counts them) but no feature covers them: check the durations "
            "or segment times of %s", where, len(past), len(names), shown, preview(names, 3),
        )


# --------------------------------------------------------------------------- W-TALC npy
def _strings(a: np.ndarray) -> list[str]:
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in np.asarray(a).ravel().tolist()]


def _load_npy(path: Path, folder: Path) -> np.ndarray:
    try:
        # Pickled object arrays written by Python 2: encoding="bytes" as the public loaders do
        # (strings come back as bytes and are decoded by _strings).
        return np.load(path, allow_pickle=True, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - a truncated pickle raises UnpicklingError, EOFError, ValueError...
        raise DataError(
            f"W-TALC annotation file {path} cannot be read ({type(e).__name__}: {e}); re-download the folder {folder}"
        ) from None


def load_wtalc_annotations(folder: str | os.PathLike, classes: list[str] | None = None) -> AnnotationSet:
    """Load a W-TALC annotation folder (``videoname.npy, subset.npy, classlist.npy, ...``).

    ``labels.npy``/``segments.npy`` are pickled object arrays (one list per video);
    strings may be bytes or str; ``duration.npy`` may be ``(N,)`` or ``(N, 1)``. The optional
    ``original_fps.npy`` gives each video's fps. Video order is ``videoname.npy`` order.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"W-TALC annotation folder {folder} not found: set dataset.annotations=DIR to the folder that "
            "holds videoname.npy, subset.npy, classlist.npy, duration.npy, labels.npy, segments.npy"
        )
    missing = [f"{n}.npy" for n in WTALC_REQUIRED if not (folder / f"{n}.npy").is_file()]
    if missing:
        raise DataError(
            f"W-TALC annotation folder {folder} lacks {missing}; it must hold "
            + ", ".join(f"{n}.npy" for n in WTALC_REQUIRED)
        )
    arr = {n: _load_npy(folder / f"{n}.npy", folder) for n in WTALC_REQUIRED}
    names = _strings(arr["videoname"])
    subsets = _strings(arr["subset"])
    file_classes = _strings(arr["classlist"])
    durations = np.asarray(arr["duration"], dtype=np.float64).reshape(-1) if arr["duration"].dtype != object else None
    if durations is None:
        durations = np.asarray([float(np.asarray(d).reshape(-1)[0]) for d in arr["duration"]], np.float64)
    labels_raw, segments_raw = arr["labels"], arr["segments"]
    n = len(names)
    for key, length in (("subset", len(subsets)), ("duration", len(durations)), ("labels", len(labels_raw)),
                        ("segments", len(segments_raw))):
        if length != n:
            raise DataError(
                f"W-TALC annotation file {folder / (key + '.npy')} has {length} entries but videoname.npy has {n}; "
                "the folder mixes files of different datasets"
            )
    dup = [k for k, c in _counts(names).items() if c > 1]
    if dup:
        raise DataError(f"W-TALC annotation file {folder / 'videoname.npy'} repeats video(s) {preview(dup)}")

    fps_arr: np.ndarray | None = None
    fps_path = folder / "original_fps.npy"
    if fps_path.is_file():
        fps_arr = np.asarray(_load_npy(fps_path, folder), np.float64).reshape(-1)
        if len(fps_arr) != n:
            raise DataError(f"W-TALC annotation file {fps_path} has {len(fps_arr)} entries but videoname.npy has {n}")

    class_list = list(classes) if classes is not None else file_classes
    index = {c: i for i, c in enumerate(class_list)}
    videos: dict[str, VideoAnnotation] = {}
    for i, name in enumerate(names):
        labs = _strings(np.asarray(labels_raw[i], dtype=object)) if len(labels_raw[i]) else []
        segs = np.asarray(segments_raw[i], dtype=np.float64).reshape(-1, 2) if len(segments_raw[i]) else np.zeros((0, 2))
        if len(labs) != len(segs):
            raise DataError(
                f"W-TALC annotation folder {folder}: video {name!r} has {len(labs)} labels but {len(segs)} segments "
                "in labels.npy / segments.npy; the files are inconsistent"
            )
        unknown = sorted({lab for lab in labs if lab not in index})
        if unknown:
            raise DataError(
                f"W-TALC annotation folder {folder}: video {name!r} has label(s) {unknown} not in "
                f"classlist.npy ({preview(class_list, 4)}); fix labels.npy or the class list"
            )
        if not np.all(np.isfinite(segs)) or np.any(segs[:, 1] < segs[:, 0]):
            raise DataError(
                f"W-TALC annotation file {folder / 'segments.npy'}: video {name!r} has a non-finite or reversed "
                "segment; fix the segment times"
            )
        dur = float(durations[i])
        if not np.isfinite(dur) or dur <= 0:
            raise DataError(f"W-TALC annotation file {folder / 'duration.npy'}: video {name!r} has duration {dur}")
        videos[name] = VideoAnnotation(
            name=name,
            subset=subsets[i],
            duration=dur,
            fps=None if fps_arr is None else float(fps_arr[i]),
            segments=segs,
            labels=np.asarray([index[lab] for lab in labs], np.int64),
        )
    _check_segment_bounds(videos, f"W-TALC annotation file {folder / 'segments.npy'}")
    return AnnotationSet(class_list, videos, str(folder))


def _counts(names: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in names:
        out[n] = out.get(n, 0) + 1
    return out
