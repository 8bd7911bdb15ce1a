"""Recognise a public feature release from the files in ``dataset.root`` (``dataset.layout=auto``).

Each public release is loaded as it is published (docs/datasets.md has the table):

- **W-TALC joint file** (W-TALC, 3C-Net, CO2-Net, ...): ``<Name>-I3D-JOINTFeatures.npy`` and,
  when shipped next to it, the ``<Name>-Annotations/`` folder it is ordered by.
- **BaS-Net / CASE split files**: ``features/<split>/<modality>/<video>.npy``, ``gt.json`` and
  ``split_<split>.txt`` listing the videos of each split folder.
- **ActionFormer**: ``annotations/<file>.json`` plus one folder ``<kind>_features/`` of
  per-video ``[<prefix>]<video>.npy`` files (``i3d_features`` for THUMOS'14, ``tsp_features``
  with the ``v_`` prefix for ActivityNet 1.3).
- A folder written by :func:`taltoolkit.data.writers.write_layout` (its ``layout.json``).

:func:`detect_release` only looks at names (and reads small JSON files under
``annotations/``); nothing is unpickled here.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taltoolkit.data.errors import DataError, preview

WTALC_SUFFIX = "-I3D-JOINTFeatures.npy"
LAYOUT_FILE = "layout.json"
# ActivityNet videos of the W-TALC 1.2 release are named video_<n>; their url.npy gives the YouTube id.
_RELEASE_NAME = re.compile(r"^video_\d+$")
_YOUTUBE = re.compile(r"(?:[?&]v=|youtu\.be/)([A-Za-z0-9_-]{11})")


@dataclass
class Release:
    """What :func:`detect_release` found: the layout and where its parts are."""

    layout: str  # wtalc | split | concat
    kind: str  # a readable name of the release, for logs and errors
    features_file: Path | None = None  # wtalc: the joint file
    features_dir: Path | None = None  # concat: the folder of per-video files
    annotations: Path | None = None  # the release's own annotation file / folder, if any
    file_prefix: str | None = None  # concat: prefix of feature file names (None: decide from the names)
    defaults: dict[str, Any] = field(default_factory=dict)  # dataset keys the release fixes when left null


def _entries(root: Path) -> list[os.DirEntry]:
    with os.scandir(root) as it:
        return sorted(it, key=lambda e: e.name)


def _has_npy(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(e.name.endswith(".npy") and e.is_file() for e in it)
    except OSError:
        return False


def _json_database_files(folder: Path) -> list[Path]:
    """JSON files of ``folder`` with a top-level ``database`` object (annotation files)."""
    out = []
    if not folder.is_dir():
        return out
    for p in sorted(folder.glob("*.json")):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("database"), dict):
            out.append(p)
    return out


def found_summary(root: Path, limit: int = 12) -> str:
    """``'a/', 'b.npy' (and 3 more)``: what a folder holds, for error messages."""
    try:
        names = [e.name + ("/" if e.is_dir() else "") for e in _entries(root)]
    except OSError as e:
        return f"(unreadable: {e})"
    return preview(names, limit) if names else "nothing"


def detect_release(root: Path, preferred_joint: str | None = None) -> Release:
    """The release in ``root``; a :class:`DataError` listing what was found when none fits."""
    if (root / LAYOUT_FILE).is_file():
        meta = json.loads((root / LAYOUT_FILE).read_text(encoding="utf-8"))
        if isinstance(meta, dict) and meta.get("layout") in ("wtalc", "split", "concat"):
            return Release(layout=str(meta["layout"]), kind="a folder written by taltoolkit (layout.json)")

    joints = sorted(p for p in root.glob("*" + WTALC_SUFFIX) if p.is_file())
    if joints:
        chosen = [p for p in joints if p.name == preferred_joint] or joints
        if len(chosen) > 1:
            raise DataError(
                f"dataset.root {root} holds {len(joints)} W-TALC joint feature files ({preview(p.name for p in joints)}): "
                "set dataset.features_file=NAME to the one to use"
            )
        joint = chosen[0]
        ann = root / (joint.name[: -len(WTALC_SUFFIX)] + "-Annotations")
        return Release(layout="wtalc", kind="W-TALC joint feature file", features_file=joint,
                       annotations=ann if ann.is_dir() else None)

    feats = root / "features"
    if feats.is_dir() and any(p.is_dir() for p in feats.iterdir()):
        return Release(layout="split", kind="BaS-Net/CASE per-video rgb/flow files",
                       annotations=root / "gt.json" if (root / "gt.json").is_file() else None)

    # ActionFormer: <root>/<kind>_features/*.npy (+ <root>/annotations/*.json).
    feature_dirs = [Path(e.path) for e in _entries(root)
                    if e.is_dir() and e.name.endswith("features") and _has_npy(Path(e.path))]
    if len(feature_dirs) > 1:
        raise DataError(
            f"dataset.root {root} holds several feature folders ({preview(p.name for p in feature_dirs)}): "
            "set dataset.features_dir=NAME to the one to use"
        )
    if feature_dirs:
        fdir = feature_dirs[0]
        anns = _json_database_files(root / "annotations")
        if len(anns) > 1:
            raise DataError(
                f"{root / 'annotations'} holds several annotation files ({preview(p.name for p in anns)}): "
                "set dataset.annotations=PATH to the one released with the features"
            )
        defaults: dict[str, Any] = {"ignore_unannotated": True}  # ActionFormer reads only the JSON's videos
        kind = "ActionFormer per-video feature files"
        if fdir.name.startswith("tsp"):
            # configs/anet_tsp.yaml: 16-frame windows every 16 frames at 15 fps, resized to 192 steps.
            defaults.update(feature_stride=16, snippet_frames=16, fps=15.0, resize_length=192)
            kind = "ActionFormer TSP features (ActivityNet 1.3)"
        return Release(layout="concat", kind=kind, features_dir=fdir, annotations=anns[0] if anns else None,
                       defaults=defaults)
    if _has_npy(root):
        return Release(layout="concat", kind="per-video feature files", features_dir=root)
    raise DataError(
        f"dataset.root {root} holds no feature release taltoolkit recognises; found {found_summary(root)}. "
        f"Expected one of: <Name>{WTALC_SUFFIX} (W-TALC, dataset.layout=wtalc), features/<split>/rgb|flow/ "
        "(BaS-Net/CASE, dataset.layout=split), <kind>_features/<video>.npy with annotations/*.json "
        "(ActionFormer, dataset.layout=concat) or <video>.npy files (dataset.layout=concat); "
        "point dataset.root at the folder that holds them (docs/datasets.md)"
    )


def concat_file_prefix(names: list[str], stems: set[str]) -> str:
    """The prefix feature files add to video names: ``''`` or ActionFormer's ActivityNet ``'v_'``."""
    if not names or any(n in stems for n in names):
        return ""
    if any(f"v_{n}" in stems for n in names):
        return "v_"
    return ""


def read_split_list(path: Path) -> list[str]:
    """Video names of a BaS-Net ``split_<split>.txt`` (one per line, blank lines ignored)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"split file {path} cannot be read ({e}); re-download it or delete it") from None
    names = [ln.strip() for ln in lines if ln.strip()]
    dup = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
    if dup:
        raise DataError(f"split file {path} lists video(s) {preview(dup)} twice; remove the duplicates")
    return names


def youtube_ids(annotations_path: Path) -> dict[str, str]:
    """Release video name -> YouTube id, from a W-TALC folder's ``url.npy`` or a JSON's ``url``/``youtube_id``.

    Empty when the release names its videos by YouTube id already (or gives no URLs).
    """
    out: dict[str, str] = {}
    if annotations_path.is_dir():
        url_file, name_file = annotations_path / "url.npy", annotations_path / "videoname.npy"
        if not url_file.is_file():
            return {}
        # Plain byte-string arrays (no pickle): the W-TALC url.npy / videoname.npy.
        urls = np.load(url_file, allow_pickle=False)
        names = np.load(name_file, allow_pickle=False)
        dec = lambda x: x.decode("utf-8") if isinstance(x, bytes) else str(x)  # noqa: E731
        pairs = [(dec(n), dec(u)) for n, u in zip(names.tolist(), urls.tolist())]
        if len(urls) != len(names):
            raise DataError(f"{url_file} has {len(urls)} entries but {name_file} has {len(names)}; re-download the folder")
    else:
        try:
            db = json.loads(annotations_path.read_text(encoding="utf-8")).get("database", {})
        except (OSError, ValueError, AttributeError):
            return {}
        pairs = [(k, str(v.get("youtube_id") or v.get("url") or "")) for k, v in db.items() if isinstance(v, dict)]
    if not pairs or not all(_RELEASE_NAME.match(n) for n, _ in pairs):
        return {}
    for name, url in pairs:
        m = _YOUTUBE.search(url)
        yid = m.group(1) if m else (url if re.fullmatch(r"[A-Za-z0-9_-]{11}", url) else None)
        if yid is None:
            raise DataError(
                f"{annotations_path}: video {name!r} has no YouTube URL ({url!r}), so it cannot be renamed to its "
                "YouTube id; fix the file or set dataset.video_ids=release to keep the release's names"
            )
        out[name] = yid
    if len(set(out.values())) != len(out):
        raise DataError(f"{annotations_path}: two videos share a YouTube id; set dataset.video_ids=release")
    return out
