"""ActivityNet results JSON: write detections atomically, read them back as Detections.

File format (the ActivityNet Challenge submission format)::

    {"version": "taltoolkit",
     "results": {"video_name": [{"label": "class name", "score": 0.93, "segment": [12.3, 20.1]},
                                ...], ...},
     "external_data": {"used": false, "details": ""}}

Segments are in seconds, ``0 <= start <= end``; labels are class names, mapped to and
from ids by position in ``classes``. Floats are written with Python's shortest round-trip
repr, so reading a written file gives back bit-identical float64 values.

Writing is atomic: the document is built and validated first, written to a temporary
file in the destination folder, flushed to disk and moved over the destination with
``os.replace``, so a crash never leaves a half-written results file. Reading raises
``FileNotFoundError`` for a missing file and :class:`ResultsFormatError` (a ``ValueError``)
naming the file and the offending entry for anything malformed.

This module imports json, os and numpy only (no torch): the evaluation CLI reads results
files and must start fast.
"""
from __future__ import annotations

import difflib
import json
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from taltoolkit.atomicio import atomic_write_text
from taltoolkit.jsonio import DuplicateKeyError, is_finite_number, strict_loads
from taltoolkit.structures import Detections

__all__ = ["ResultsFormatError", "write_results_json", "read_results_json"]


class ResultsFormatError(ValueError):
    """A results file or a detection to be written is malformed; the message names it."""


# ----------------------------------------------------------------------------- writing


def _video_entries(name: str, det: Detections, classes: Sequence[str]) -> list[dict[str, Any]]:
    segs = np.asarray(det.segments, dtype=np.float64)
    scores = np.asarray(det.scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(det.labels)
    n = scores.shape[0]
    if segs.size == 0 and n == 0:
        segs = segs.reshape(0, 2)
    if segs.shape != (n, 2) or labels.shape != (n,):
        raise ResultsFormatError(
            f"video {name!r}: Detections must have segments (N, 2), scores (N,), labels (N,); "
            f"got {segs.shape}, {scores.shape}, {labels.shape}")
    if n and not np.issubdtype(labels.dtype, np.integer):
        raise ResultsFormatError(f"video {name!r}: labels must be integer class ids, got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
    if bad.size:
        i = int(bad[0])
        raise ResultsFormatError(
            f"video {name!r}, detection {i}: label id {int(labels[i])} is outside 0..{len(classes) - 1} "
            f"({len(classes)} classes)")
    bad = np.flatnonzero(~np.isfinite(scores) | ~np.isfinite(segs).all(1))
    if bad.size:
        i = int(bad[0])
        raise ResultsFormatError(f"video {name!r}, detection {i}: non-finite score or segment "
                                 f"({scores[i]}, {segs[i].tolist()})")
    bad = np.flatnonzero((segs[:, 0] < 0) | (segs[:, 1] < segs[:, 0]))
    if bad.size:
        i = int(bad[0])
        raise ResultsFormatError(
            f"video {name!r}, detection {i}: segment {segs[i].tolist()} must satisfy 0 <= start <= end "
            "(clip to [0, duration] before writing)")
    names = [classes[int(label)] for label in labels]
    return [
        {"label": lab, "score": sc, "segment": [s, e]}
        for lab, sc, (s, e) in zip(names, scores.tolist(), segs.tolist())
    ]


def write_results_json(
    path: str | os.PathLike,
    detections: Mapping[str, Detections],
    classes: Sequence[str],
    version: str = "taltoolkit",
    external_data: Optional[Mapping[str, Any]] = None,
) -> None:
    """Write ``{video: Detections}`` (seconds, class ids into ``classes``) as ActivityNet results JSON.

    ``external_data`` defaults to ``{"used": False, "details": ""}``. Validation (shapes,
    label ids, finite values, ``0 <= start <= end``) happens before anything touches the
    disk; the write itself is atomic (module docstring). Missing parent folders are created.
    """
    path = os.fspath(path)
    classes = list(classes)
    results = {str(name): _video_entries(str(name), det, classes) for name, det in detections.items()}
    doc = {
        "version": version,
        "results": results,
        "external_data": dict(external_data) if external_data is not None else {"used": False, "details": ""},
    }
    atomic_write_text(path, json.dumps(doc, allow_nan=False))


# ----------------------------------------------------------------------------- reading


_number = is_finite_number


def read_results_json(path: str | os.PathLike, classes: Optional[Sequence[str]] = None) -> dict[str, Detections]:
    """Read an ActivityNet results JSON -> ``{video: Detections}`` with numpy arrays.

    Label names map to ids by position in ``classes``; when ``classes`` is None the ids
    index the sorted set of names found in the file. Entries keep the file's order.
    Raises ``FileNotFoundError`` or :class:`ResultsFormatError` naming the file and entry.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: results file not found") from None
    try:
        doc = strict_loads(raw)
    except DuplicateKeyError as e:
        raise ResultsFormatError(f"{path}: key {e.key!r} appears twice in one JSON object") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
        what = type(doc).__name__ if not isinstance(doc, dict) else f"keys {sorted(doc)[:5]}"
        raise ResultsFormatError(
            f"{path}: expected a JSON object with a 'results' object mapping video -> list of detections, "
            f"got {what}")
    results: dict[str, Any] = doc["results"]

    if classes is None:
        found = {e.get("label") for v in results.values() if isinstance(v, list) for e in v if isinstance(e, dict)}
        classes = sorted(x for x in found if isinstance(x, str))
    index = {name: i for i, name in enumerate(classes)}

    out: dict[str, Detections] = {}
    for video, entries in results.items():
        where = f"{path}: video {video!r}"
        if not isinstance(entries, list):
            raise ResultsFormatError(f"{where}: expected a list of detections, got {type(entries).__name__}")
        n = len(entries)
        segs = np.empty((n, 2), np.float64)
        scores = np.empty((n,), np.float64)
        labels = np.empty((n,), np.int64)
        for i, e in enumerate(entries):
            at = f"{where}, detection {i}"
            if not isinstance(e, dict) or not {"label", "score", "segment"} <= e.keys():
                raise ResultsFormatError(f"{at}: expected an object with 'label', 'score' and 'segment', got {e!r}")
            label, score, seg = e["label"], e["score"], e["segment"]
            if not isinstance(label, str):
                raise ResultsFormatError(f"{at}: 'label' must be a class name string, got {label!r}")
            if label not in index:
                close = difflib.get_close_matches(label, list(index), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ResultsFormatError(f"{at}: unknown label {label!r} ({len(index)} known classes){hint}")
            if not _number(score):
                raise ResultsFormatError(f"{at}: 'score' must be a finite number, got {score!r}")
            if not (isinstance(seg, list) and len(seg) == 2 and all(_number(x) for x in seg)):
                raise ResultsFormatError(f"{at}: 'segment' must be [start, end] with two finite numbers, got {seg!r}")
            if seg[0] < 0:
                raise ResultsFormatError(f"{at}: negative segment start {seg!r}")
            if seg[1] < seg[0]:
                raise ResultsFormatError(f"{at}: reversed segment {seg!r} (end < start)")
            segs[i] = seg
            scores[i] = score
            labels[i] = index[label]
        out[str(video)] = Detections(segs, scores, labels)
    return out
