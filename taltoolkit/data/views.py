"""Label regimes as views over one list of videos: ``full | weak | none | semi``.

A view returns new :class:`Video` records (``dataclasses.replace``) and never mutates its
input. Features are shared with the input (they are large and views never change them);
segments, labels and video labels are copied so that editing a view cannot leak back.

The semi-supervised split is **stratified by primary class** (a video's most frequent
instance class, lowest id on ties; videos without instances form their own stratum): each
stratum contributes ``fraction`` of its videos, rounded with the largest-remainder rule so
that the total is ``round(fraction * N)`` (at least one). Within a stratum the choice is a
seeded shuffle of the names sorted alphabetically, so the split depends only on
``(names, classes, fraction, seed)`` and not on the order of the input list. Stratifying
keeps every class represented at small fractions (10 % of THUMOS'14's 200 training videos
is 20 videos for 20 classes), where a plain random draw often misses classes.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from taltoolkit.data.errors import DataError, preview
from taltoolkit.data.writers import atomic_write_json
from taltoolkit.structures import Video

LABEL_MODES = ("full", "weak", "none", "semi")
_LEVEL_RANK = {"none": 0, "weak": 1, "full": 2}


def _copy_level(v: Video, level: str) -> Video:
    if _LEVEL_RANK.get(v.label_level, -1) < _LEVEL_RANK[level]:
        raise ValueError(
            f"video {v.name!r} has label_level={v.label_level!r}; a {level!r} view needs at least that much "
            "ground truth (apply views to the reader's full records)"
        )
    empty_segs, empty_labels = np.zeros((0, 2), np.float64), np.zeros((0,), np.int64)
    vl = None if v.video_labels is None else np.array(v.video_labels, np.float32, copy=True)
    if level == "full":
        return dataclasses.replace(
            v, segments=np.array(v.segments, np.float64, copy=True), labels=np.array(v.labels, np.int64, copy=True),
            video_labels=vl, label_level="full",
        )
    if level == "weak":
        return dataclasses.replace(v, segments=empty_segs, labels=empty_labels, video_labels=vl, label_level="weak")
    return dataclasses.replace(
        v, segments=empty_segs, labels=empty_labels,
        video_labels=None if vl is None else np.zeros_like(vl), label_level="none",
    )


def primary_class(v: Video) -> int:
    """A video's single class: its most frequent instance class (lowest id on ties), else the
    first of its video labels; -1 when it has none (the semi split's strata, COPL's metrics)."""
    if v.labels.size:
        counts = np.bincount(v.labels.astype(np.int64))
        return int(np.argmax(counts))  # argmax returns the lowest id on ties
    if v.video_labels is not None and v.video_labels.any():
        return int(np.argmax(v.video_labels))
    return -1


def choose_labelled(videos: Sequence[Video], fraction: float, seed: int) -> list[str]:
    """Names of the videos that keep labels in a semi split (stratified, seeded)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"labelled fraction must be in (0, 1], got {fraction}")
    n = len(videos)
    if n == 0:
        return []
    strata: dict[int, list[str]] = {}
    for v in videos:
        strata.setdefault(primary_class(v), []).append(v.name)
    keys = sorted(strata)
    total = min(n, max(1, int(np.floor(fraction * n + 0.5))))  # half rounds up
    exact = np.array([fraction * len(strata[k]) for k in keys])
    quota = np.floor(exact).astype(np.int64)
    # Largest remainder: hand the leftover picks to the strata with the largest fractional part
    # (larger strata first on ties, then lower class id), never above a stratum's size.
    rest = total - int(quota.sum())
    order = sorted(range(len(keys)), key=lambda i: (-(exact[i] - quota[i]), -len(strata[keys[i]]), keys[i]))
    for i in order:
        if rest <= 0:
            break
        if quota[i] < len(strata[keys[i]]):
            quota[i] += 1
            rest -= 1
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for k, q in zip(keys, quota):
        names = sorted(strata[k])
        perm = rng.permutation(len(names))
        chosen.update(names[i] for i in perm[: int(q)])
    return [v.name for v in videos if v.name in chosen]


def _read_split_file(path: Path, videos: Sequence[Video], fraction: float | None, seed: int) -> set[str]:
    fix = f"delete {path} to draw a new split, or pass the fraction/seed it was made with"
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"semi split file {path} is not valid JSON ({e.msg}); {fix}") from None
    if not isinstance(data, dict) or not all(k in data for k in ("seed", "fraction", "labelled", "unlabelled")):
        raise DataError(f"semi split file {path} must hold seed, fraction, labelled and unlabelled; {fix}")
    labelled, unlabelled = data["labelled"], data["unlabelled"]
    if not (isinstance(labelled, list) and isinstance(unlabelled, list)):
        raise DataError(f"semi split file {path}: labelled and unlabelled must be lists of video names; {fix}")
    if fraction is not None and not np.isclose(float(data["fraction"]), fraction):
        raise DataError(f"semi split file {path} was made with fraction={data['fraction']}, not {fraction}; {fix}")
    if data["seed"] != seed:
        raise DataError(f"semi split file {path} was made with seed={data['seed']}, not {seed}; {fix}")
    lab, unl = set(labelled), set(unlabelled)
    both = lab & unl
    if both:
        raise DataError(f"semi split file {path} lists {preview(sorted(both))} as both labelled and unlabelled; {fix}")
    names = {v.name for v in videos}
    unknown = sorted((lab | unl) - names)
    absent = sorted(names - (lab | unl))
    if unknown or absent:
        raise DataError(
            f"semi split file {path} does not match the training videos: {len(unknown)} name(s) not among them "
            f"({preview(unknown)}), {len(absent)} video(s) not in the file ({preview(absent)}); {fix}"
        )
    return lab


def label_view(
    videos: Sequence[Video],
    mode: str,
    fraction: float | None = None,
    seed: int = 0,
    split_file: str | os.PathLike | None = None,
) -> list[Video]:
    """A label regime over ``videos`` (copies, input untouched), in input order.

    ``full`` keeps instances; ``weak`` keeps only video labels; ``none`` keeps nothing;
    ``semi`` keeps ``full`` labels on a seeded, class-stratified ``fraction`` of the videos
    and ``none`` on the rest. With ``split_file`` the semi split is read from that JSON if it
    exists (and validated), else drawn and written there.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {mode!r}; choose one of {', '.join(LABEL_MODES)}")
    if mode != "semi":
        return [_copy_level(v, mode) for v in videos]

    path = Path(split_file) if split_file is not None else None
    if path is not None and path.is_file():
        labelled = _read_split_file(path, videos, fraction, seed)
    else:
        if fraction is None:
            raise ValueError("label_mode 'semi' needs labelled_fraction (e.g. 0.1) or an existing split file")
        labelled = set(choose_labelled(videos, float(fraction), seed))
        if path is not None:
            atomic_write_json(
                path,
                {
                    "seed": seed,
                    "fraction": float(fraction),
                    "labelled": [v.name for v in videos if v.name in labelled],
                    "unlabelled": [v.name for v in videos if v.name not in labelled],
                },
            )
    return [_copy_level(v, "full" if v.name in labelled else "none") for v in videos]
