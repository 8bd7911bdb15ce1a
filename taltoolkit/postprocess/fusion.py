"""External video-level class scores fused with class-agnostic proposals (ActivityNet protocol).

ActionFormer's ActivityNet 1.3 results (and APL's, which builds on it) come from
class-agnostic segments fused with an external video classifier's scores, the
``cuhk_val_simp_share.json`` file (``{"results": {youtube_id: [one score per class]},
"class": [class names]}``). For each video the ``topk`` best classes of the external scores
each take every proposal, with score ``sqrt(class_score * proposal_score)`` (the public
``libs/utils/postprocessing.py``: ``postprocess_results``, ``num_pred=200``, ``topk=2``).

Selected with ``postprocess.external_scores=PATH`` (``segment_nms`` post-processing: NMS is
then class-agnostic, as the public code's ``multiclass_nms: False``).
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from taltoolkit.data.errors import DataError, preview
from taltoolkit.structures import Detections


@lru_cache(maxsize=4)
def load_external_scores(path: str) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """``(video -> (C,) scores, class names)`` of a ``cuhk_val_simp_share.json``-style file."""
    p = Path(path).expanduser()
    fix = "set postprocess.external_scores to a JSON {\"results\": {video: [scores]}, \"class\": [names]}"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"external class score file {p} not found: {fix}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"external class score file {p} cannot be read ({e}): {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict) or not isinstance(data.get("class"), list):
        raise DataError(f"external class score file {p} lacks the 'results' object or the 'class' list: {fix}")
    classes = tuple(str(c) for c in data["class"])
    out: dict[str, np.ndarray] = {}
    for vid, scores in data["results"].items():
        arr = np.asarray(scores, dtype=np.float64).reshape(-1)
        if arr.shape[0] != len(classes) or not np.all(np.isfinite(arr)):
            raise DataError(
                f"external class score file {p}: results[{vid!r}] has {arr.shape[0]} scores (or a non-finite one) "
                f"but 'class' lists {len(classes)} classes; re-download the file"
            )
        out[str(vid)] = arr
    return out, classes


def fuse_external_scores(
    dets: Detections,
    video: str,
    scores_file: str | os.PathLike,
    classes: Sequence[str],
    topk: int = 2,
    num_proposals: int | None = 200,
) -> Detections:
    """Detections of ``video`` with labels and scores from the external classifier.

    ``dets`` are class-agnostic proposals (labels ignored); the ``num_proposals`` best are
    kept, then each of the ``topk`` best external classes takes all of them with score
    ``sqrt(class_score * proposal_score)``. Labels are ids in ``classes`` (matched by name).
    """
    table, ext_classes = load_external_scores(str(scores_file))
    key = video if video in table else (video[2:] if video.startswith("v_") and video[2:] in table else None)
    if key is None:
        raise DataError(
            f"external class score file {scores_file} has no scores for video {video!r} (it has {len(table)} videos, "
            f"e.g. {preview(list(table)[:3])}); use the score file of the evaluated subset or unset "
            "postprocess.external_scores"
        )
    index = {c: i for i, c in enumerate(classes)}
    missing = [c for c in ext_classes if c not in index]
    if missing:
        raise DataError(
            f"external class score file {scores_file} names class(es) {preview(missing)} that the dataset's class "
            f"list lacks ({len(classes)} classes); use the annotation file its scores belong to"
        )
    order = np.argsort(-dets.scores, kind="stable")
    if num_proposals is not None:
        order = order[:num_proposals]
    seg, sc = dets.segments[order], dets.scores[order]
    ext = table[key]
    top = np.argsort(-ext, kind="stable")[:topk]
    new_scores = np.sqrt(ext[top][:, None] * sc[None, :]).reshape(-1)  # class-major, as the public code
    new_segs = np.tile(seg, (len(top), 1))
    new_labels = np.repeat(np.asarray([index[ext_classes[t]] for t in top], np.int64), len(sc))
    keep = np.argsort(-new_scores, kind="stable")
    return Detections(new_segs[keep], new_scores[keep], new_labels[keep])
