"""``TALDataset``: one benchmark (annotations + features in one layout), built by Hydra.

The constructor only records the configuration; annotations and features are read on
first use, once, for the training and test subsets only. Training videos come through a
label view (``full | weak | none | semi``); test videos and the evaluator's ground truth
are always the full annotations.

With ``layout="auto"`` (the configs' default) the public release in ``root`` is recognised
from its files (:mod:`taltoolkit.data.releases`) and loaded as it is published: its own
annotation file, file names, split lists and timing; keys left null (``feature_dim``,
``fps``, ``resize_length``, ``ignore_unannotated``) take the release's values.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from taltoolkit.data.annotations import AnnotationSet, canonical_name, load_annotations, packaged_annotations
from taltoolkit.data.errors import DataError, preview
from taltoolkit.data.readers import WTALC_STEP_S, read_concat, read_split, read_wtalc
from taltoolkit.data.releases import Release, concat_file_prefix, detect_release, read_split_list, youtube_ids
from taltoolkit.data.views import label_view
from taltoolkit.data.writers import GT_FILE, read_layout_meta
from taltoolkit.registry import register
from taltoolkit.structures import Video

LAYOUTS = ("wtalc", "split", "concat")
VIDEO_IDS = ("auto", "release", "youtube")
log = logging.getLogger("taltoolkit")
# File names of the public W-TALC joint feature releases.
_WTALC_FEATURE_FILES = {
    "thumos14": "Thumos14reduced-I3D-JOINTFeatures.npy",
    "activitynet12": "ActivityNet1.2-I3D-JOINTFeatures.npy",
    "activitynet13": "ActivityNet1.3-I3D-JOINTFeatures.npy",
}
_ROOT_HINT = {
    "wtalc": "the folder that holds <Dataset>-I3D-JOINTFeatures.npy",
    "split": "the folder that holds features/<split>/rgb and features/<split>/flow",
    "concat": "the folder that holds one <video>.npy per video",
}


def _has_npy(folder: Path) -> bool:
    return any(p.suffix == ".npy" for p in folder.iterdir()) if folder.is_dir() else False


def _npy_stems_safe(folder: Path) -> set[str]:
    return {p.name[:-4] for p in folder.iterdir() if p.name.endswith(".npy")} if folder.is_dir() else set()


@register("dataset", "tal")
class TALDataset:
    """A TAL benchmark read from disk: classes, label-viewed train videos, test videos, GT."""

    def __init__(
        self,
        name: str,
        root: str | None = None,
        layout: str = "auto",
        annotations: str | None = None,
        feature_dim: int | None = None,
        train_subset: str = "validation",
        test_subset: str = "test",
        features_file: str | None = None,
        split_folders: Mapping[str, str] | None = None,
        modalities: Sequence[str] = ("rgb", "flow"),
        step_s: float = WTALC_STEP_S,
        offset_s: float = 0.0,
        feature_stride: int = 4,
        snippet_frames: int = 16,
        fps: float | None = None,
        resize_length: int | None = None,
        num_segments: int = 750,
        max_seq_len: int = 2304,
        split_dir: str | None = None,
        ignore_unannotated: bool | None = None,
        features_dir: str | None = None,
        file_prefix: str | None = None,
        video_ids: str = "auto",
        evaluation_preset: str | None = None,
    ) -> None:
        if layout not in (*LAYOUTS, "auto"):
            raise DataError(
                f"dataset {name!r}: unknown layout {layout!r}; set dataset.layout to auto or one of {LAYOUTS}"
            )
        if video_ids not in VIDEO_IDS:
            raise DataError(f"dataset {name!r}: unknown video_ids {video_ids!r}; set dataset.video_ids to one of {VIDEO_IDS}")
        self.name = name
        self.root = None if root in (None, "") else str(root)
        self.layout_setting = layout
        self.annotations_path = annotations
        self._feature_dim = None if feature_dim is None else int(feature_dim)
        self.train_subset = train_subset
        self.test_subset = test_subset
        self.features_file = features_file
        self.split_folders = None if split_folders is None else {str(k): str(v) for k, v in dict(split_folders).items()}
        self.modalities = tuple(modalities)
        self.step_s = float(step_s)
        self.offset_s = float(offset_s)
        self.feature_stride = feature_stride
        self.snippet_frames = snippet_frames
        self.fps = None if fps is None else float(fps)
        self.resize_length = None if resize_length is None else int(resize_length)
        self.num_segments = int(num_segments)
        self.max_seq_len = int(max_seq_len)
        self.split_dir = split_dir
        self.ignore_unannotated = ignore_unannotated
        self.features_dir = features_dir
        self.file_prefix = file_prefix
        self.video_ids = video_ids
        # The evaluation protocol (a preset or a family of taltoolkit.evaluation.presets) that
        # a run uses unless evaluation.preset says otherwise; None: the run must name one.
        self.evaluation_preset = evaluation_preset
        self._release: Release | None = None
        self._annotations: AnnotationSet | None = None
        self._videos: list[Video] | None = None
        self._left_out: set[str] = set()  # annotated videos a split file leaves out

    def __repr__(self) -> str:
        return f"TALDataset(name={self.name!r}, layout={self.layout_setting!r}, root={self.root!r})"

    # ------------------------------------------------------------------ release
    def release(self) -> Release | None:
        """The release found in ``root`` (None without a root folder)."""
        if self._release is None:
            root = Path(self.root).expanduser() if self.root is not None else None
            if root is None or not root.is_dir():
                return None
            key = canonical_name(self.name)
            preferred = self.features_file or _WTALC_FEATURE_FILES.get(key or "")
            if self.layout_setting == "auto":
                rel = detect_release(root, preferred_joint=preferred)
            else:
                rel = Release(layout=self.layout_setting, kind=f"dataset.layout={self.layout_setting}")
                if self.layout_setting == "concat" and self.features_dir is None and not _has_npy(root):
                    try:  # the ActionFormer folder (annotations/ + <kind>_features/) given with layout=concat
                        found = detect_release(root)
                        if found.layout == "concat":
                            rel = found
                    except DataError:
                        pass
            if self.features_dir is not None:
                rel.features_dir = self._resolve(self.features_dir, root)
            self._release = rel
            for k, v in rel.defaults.items():
                if getattr(self, k) is None:
                    setattr(self, k, v)
            log.info("dataset %s: %s in %s (layout %s)", self.name, rel.kind, root, rel.layout)
        return self._release

    @property
    def layout(self) -> str:
        """The layout in use: ``dataset.layout``, or the one found in ``root`` when it is auto."""
        if self.layout_setting != "auto":
            return self.layout_setting
        rel = self.release()
        if rel is None:
            return "auto"
        return rel.layout

    @property
    def feature_dim(self) -> int:
        """``dataset.feature_dim``, or (null) the width of the features on disk."""
        if self._feature_dim is None:
            videos = self._load()
            self._feature_dim = int(videos[0].features.shape[1])
        return self._feature_dim

    # ------------------------------------------------------------------ paths
    def root_path(self) -> Path:
        """The features folder; a missing one is an error explaining ``dataset.root``."""
        hint = _ROOT_HINT.get(self.layout_setting, "the folder of a feature release (the table in docs/datasets.md)")
        if self.root is None:
            raise DataError(
                f"dataset {self.name!r} needs its features: set dataset.root=DIR to {hint} "
                "(layouts and where to get features: docs/datasets.md), or use dataset=synthetic"
            )
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"dataset.root {root} is not a folder: set dataset.root=DIR to {hint} "
                "(see docs/datasets.md), or run tools/make_synthetic.py"
            )
        return root

    def _file_name(self) -> str:
        # A folder written by write_layout records the name its files were written under.
        if self.root is not None:
            meta = read_layout_meta(Path(self.root).expanduser())
            if "name" in meta:
                return str(meta["name"])
        return self.name

    def _resolve(self, path: str, root: Path | None) -> Path:
        p = Path(path).expanduser()
        if not p.is_absolute() and not p.exists() and root is not None and (root / p).exists():
            return root / p
        return p

    def annotations_file(self) -> Path:
        """Which annotation file or folder is used (see the class docstring for the order)."""
        root = Path(self.root).expanduser() if self.root is not None else None
        if self.annotations_path:
            return self._resolve(self.annotations_path, root)
        rel = self.release()
        if rel is not None and rel.annotations is not None and rel.layout != "split":
            # The annotation file released with the features: its names, order, subsets and fps.
            return rel.annotations
        key = canonical_name(self.name)
        if key is not None:
            packaged = packaged_annotations(key)
            # The W-TALC joint file is in videoname.npy order; the folder is the order's source.
            return packaged.wtalc if self.layout == "wtalc" else packaged.json
        if root is not None:
            candidates = [root / GT_FILE]
            if self.layout == "wtalc":
                candidates.insert(0, root / f"{self._file_name()}-Annotations")
            for c in candidates:
                if c.exists():
                    return c
        raise DataError(
            f"dataset {self.name!r} has no packaged annotations and none were found in dataset.root={self.root}: "
            "set dataset.annotations=PATH (an ActivityNet-style JSON or a W-TALC annotation folder)"
        )

    def wtalc_features_file(self) -> Path:
        root = self.root_path()
        if self.features_file:
            return self._resolve(self.features_file, root)
        rel = self.release()
        if rel is not None and rel.features_file is not None:
            return rel.features_file
        key = canonical_name(self.name)
        fname = _WTALC_FEATURE_FILES.get(key or "", f"{self._file_name()}-I3D-JOINTFeatures.npy")
        path = root / fname
        if not path.is_file():
            found = sorted(p.name for p in root.glob("*-I3D-JOINTFeatures.npy"))
            raise DataError(
                f"W-TALC feature file {path} not found"
                + (f"; {root} holds {found}: set dataset.features_file=NAME" if found else
                   f": point dataset.root at {_ROOT_HINT['wtalc']} or set dataset.features_file=PATH")
            )
        return path

    # ------------------------------------------------------------------ loading
    @property
    def annotations(self) -> AnnotationSet:
        if self._annotations is None:
            path = self.annotations_file()
            ann = self._match_subset_case(load_annotations(path))
            if self._use_youtube_ids():
                mapping = youtube_ids(path)
                if mapping:
                    ann = ann.renamed(mapping)
                    log.info("dataset %s: videos renamed to their YouTube ids (from %s; dataset.video_ids=release "
                             "keeps the release's names)", self.name, path)
                elif self.video_ids == "youtube":
                    raise DataError(f"{path} gives no YouTube URL per video; set dataset.video_ids=release")
            self._annotations = ann
        return self._annotations

    def _use_youtube_ids(self) -> bool:
        # The W-TALC ActivityNet 1.2 release names videos video_<n>; the official ground truth
        # and every results file use YouTube ids, so predictions are written with those.
        if self.video_ids == "auto":
            return self.root is not None and self.layout == "wtalc"
        return self.video_ids == "youtube"

    def _match_subset_case(self, ann: AnnotationSet) -> AnnotationSet:
        """``Validation``/``Test`` (ActionFormer's THUMOS'14 JSON) match dataset.train_subset/test_subset."""
        have = ann.subsets()
        rename: dict[str, str] = {}
        for want in (self.train_subset, self.test_subset):
            if want in have:
                continue
            same = [s for s in have if s.lower() == want.lower()]
            if len(same) == 1:
                rename[same[0]] = want
        if not rename:
            return ann
        log.info("dataset %s: subsets %s of %s read as %s", self.name, sorted(rename), ann.source,
                 [rename[k] for k in sorted(rename)])
        return ann.with_subsets(rename)

    @property
    def classes(self) -> list[str]:
        return list(self.annotations.classes)

    @property
    def num_classes(self) -> int:
        return len(self.annotations.classes)

    def _check_layout_meta(self, root: Path) -> None:
        meta = read_layout_meta(root)
        if not meta:
            return
        problems = []
        if meta.get("layout") != self.layout:
            problems.append(f"dataset.layout={meta.get('layout')}")
        if "feature_dim" in meta and self._feature_dim is not None and int(meta["feature_dim"]) != self._feature_dim:
            problems.append(f"dataset.feature_dim={meta['feature_dim']}")
        if self.layout in ("wtalc", "split"):
            for key in ("step_s", "offset_s"):
                if key in meta and not math.isclose(float(meta[key]), getattr(self, key), rel_tol=1e-9, abs_tol=1e-12):
                    problems.append(f"dataset.{key}={meta[key]}")
        else:
            for key in ("feature_stride", "snippet_frames", "fps", "resize_length"):
                if key in meta and meta[key] != getattr(self, key):
                    problems.append(f"dataset.{key}={meta[key]}")
        if problems:
            raise DataError(
                f"{root / 'layout.json'} says the features were written with a different layout or timing: "
                f"set {' '.join(problems)}"
            )

    def _load(self) -> list[Video]:
        if self._videos is not None:
            return self._videos
        root = self.root_path()
        rel = self.release()
        self._check_layout_meta(root)
        ann = self.annotations
        subsets = list(dict.fromkeys([self.train_subset, self.test_subset]))
        ignore = bool(self.ignore_unannotated)
        if self.layout == "wtalc":
            videos = read_wtalc(
                self.wtalc_features_file(), ann, self._feature_dim, step_s=self.step_s, offset_s=self.offset_s,
                videos_subset=subsets,
            )
        elif self.layout == "split":
            folders = self.split_folders
            if folders is None:
                folders = read_layout_meta(root).get("split_folders") or {self.train_subset: "train", self.test_subset: "test"}
            # BaS-Net/CASE: split_<folder>.txt says which videos belong to each folder.
            lists = {f: read_split_list(root / f"split_{f}.txt") for f in dict.fromkeys(folders.values())
                     if (root / f"split_{f}.txt").is_file()}
            videos = read_split(
                root, ann, self._feature_dim, subsets=folders, modalities=self.modalities, step_s=self.step_s,
                offset_s=self.offset_s, videos_subset=subsets, ignore_unannotated=ignore, split_lists=lists,
            )
            kept = {v.name for v in videos}
            self._left_out = {a.name for a in ann.select(subsets).videos.values()
                              if a.name not in kept and folders.get(a.subset) in lists}
            if self._left_out:
                log.info("dataset %s: %d annotated video(s) are not in the release's split files and are left out "
                         "of training and evaluation: %s", self.name, len(self._left_out), preview(sorted(self._left_out)))
        else:
            fdir = rel.features_dir if rel is not None and rel.features_dir is not None else root
            prefix = self.file_prefix
            if prefix is None:
                prefix = concat_file_prefix(list(ann.select(subsets).videos), _npy_stems_safe(fdir))
            videos = read_concat(
                fdir, ann, self._feature_dim, feature_stride=self.feature_stride, snippet_frames=self.snippet_frames,
                fps=self.fps, resize_length=self.resize_length, videos_subset=subsets,
                ignore_unannotated=ignore, file_prefix=prefix,
            )
        self._videos = videos
        return videos

    # ------------------------------------------------------------------ API
    def all_videos(self) -> list[Video]:
        """Full-label records of the training and test subsets, in annotation order."""
        return list(self._load())

    def videos(self, subset: str) -> list[Video]:
        return [v for v in self._load() if v.subset == subset]

    def split_file(self, fraction: float, seed: int) -> Path:
        base = Path(self.split_dir).expanduser() if self.split_dir else self.root_path()
        return base / "splits" / f"semi_{fraction:g}_seed{seed}.json"

    def train_videos(
        self, label_mode: str = "full", labelled_fraction: float | None = None, split_seed: int = 0
    ) -> list[Video]:
        """The label view of the training subset (semi splits go to :meth:`split_file`)."""
        videos = self.videos(self.train_subset)
        if label_mode != "semi":
            return label_view(videos, label_mode)
        split_file = None
        if labelled_fraction is not None:
            split_file = self.split_file(float(labelled_fraction), split_seed)
        try:
            return label_view(videos, "semi", fraction=labelled_fraction, seed=split_seed, split_file=split_file)
        except OSError as e:
            raise DataError(
                f"cannot write the semi split file {split_file} ({e}): set dataset.split_dir=DIR to a writable folder"
            ) from None

    def test_videos(self) -> list[Video]:
        """Test subset with full ground truth (never label-viewed)."""
        return self.videos(self.test_subset)

    def ground_truth(self, subset: str | None = None) -> dict[str, dict[str, Any]]:
        """ActivityNet ``database`` form of a subset (default: the test subset) for the evaluator."""
        subset = subset or self.test_subset
        if subset not in self.annotations.subsets():
            raise DataError(
                f"subset {subset!r} not in {self.annotations.source}; it has {self.annotations.subsets()}"
            )
        if self.root is not None and self.layout == "split":
            self._load()  # the split files decide which videos the subset has
        db = self.annotations.to_database(subset)
        return {k: v for k, v in db.items() if k not in self._left_out}

