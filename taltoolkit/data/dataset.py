"""``TALDataset``: one benchmark (annotations + features in one layout), built by Hydra.

The constructor only records the configuration; annotations and features are read on
first use, once, for the training and test subsets only. Training videos come through a
label view (``full | weak | none | semi``); test videos and the evaluator's ground truth
are always the full annotations.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from taltoolkit.data.annotations import AnnotationSet, canonical_name, load_annotations, packaged_annotations
from taltoolkit.data.errors import DataError
from taltoolkit.data.readers import WTALC_STEP_S, read_concat, read_split, read_wtalc
from taltoolkit.data.views import label_view
from taltoolkit.data.writers import GT_FILE, read_layout_meta
from taltoolkit.registry import register
from taltoolkit.structures import Video

LAYOUTS = ("wtalc", "split", "concat")
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


@register("dataset", "tal")
class TALDataset:
    """A TAL benchmark read from disk: classes, label-viewed train videos, test videos, GT."""

    def __init__(
        self,
        name: str,
        root: str | None = None,
        layout: str = "wtalc",
        annotations: str | None = None,
        feature_dim: int = 2048,
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
        ignore_unannotated: bool = False,
    ) -> None:
        if layout not in LAYOUTS:
            raise DataError(f"dataset {name!r}: unknown layout {layout!r}; set dataset.layout to one of {LAYOUTS}")
        self.name = name
        self.root = None if root in (None, "") else str(root)
        self.layout = layout
        self.annotations_path = annotations
        self.feature_dim = int(feature_dim)
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
        self.ignore_unannotated = bool(ignore_unannotated)
        self._annotations: AnnotationSet | None = None
        self._videos: list[Video] | None = None

    def __repr__(self) -> str:
        return f"TALDataset(name={self.name!r}, layout={self.layout!r}, root={self.root!r})"

    # ------------------------------------------------------------------ paths
    def root_path(self) -> Path:
        """The features folder; a missing one is an error explaining ``dataset.root``."""
        if self.root is None:
            raise DataError(
                f"dataset {self.name!r} needs its features: set dataset.root=DIR to {_ROOT_HINT[self.layout]} "
                "(layouts and where to get features: docs/datasets.md), or use dataset=synthetic"
            )
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"dataset.root {root} is not a folder: set dataset.root=DIR to {_ROOT_HINT[self.layout]} "
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
            self._annotations = load_annotations(self.annotations_file())
        return self._annotations

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
        if "feature_dim" in meta and int(meta["feature_dim"]) != self.feature_dim:
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
        self._check_layout_meta(root)
        ann = self.annotations
        subsets = list(dict.fromkeys([self.train_subset, self.test_subset]))
        if self.layout == "wtalc":
            videos = read_wtalc(
                self.wtalc_features_file(), ann, self.feature_dim, step_s=self.step_s, offset_s=self.offset_s,
                videos_subset=subsets,
            )
        elif self.layout == "split":
            folders = self.split_folders
            if folders is None:
                folders = read_layout_meta(root).get("split_folders") or {self.train_subset: "train", self.test_subset: "test"}
            videos = read_split(
                root, ann, self.feature_dim, subsets=folders, modalities=self.modalities, step_s=self.step_s,
                offset_s=self.offset_s, videos_subset=subsets, ignore_unannotated=self.ignore_unannotated,
            )
        else:
            videos = read_concat(
                root, ann, self.feature_dim, feature_stride=self.feature_stride, snippet_frames=self.snippet_frames,
                fps=self.fps, resize_length=self.resize_length, videos_subset=subsets,
                ignore_unannotated=self.ignore_unannotated,
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
        return self.annotations.to_database(subset)

