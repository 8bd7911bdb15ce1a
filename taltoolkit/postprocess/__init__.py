"""Post-processing: NMS on 1-D segments, model outputs -> Detections, results JSON I/O.

- :mod:`taltoolkit.postprocess.nms`: ``nms``, ``batched_nms``, ``soft_nms``,
  ``soft_nms_indices``, ``nms_voting``, ``segment_iou`` (torch, any device).
- :mod:`taltoolkit.postprocess.proposals`: ``cas_to_proposals`` (postprocessor
  ``"cas_to_proposals"``), ``segment_postprocess`` (postprocessor ``"segment_nms"``),
  ``detections_from_segments``.
- :mod:`taltoolkit.postprocess.results_io`: ``write_results_json``, ``read_results_json``.

Importing this package does not import torch (the evaluation CLI reads results files and
must start fast); the NMS functions are loaded on first access. Note that
``taltoolkit.postprocess.nms`` is the submodule (as for any package); the function is
``taltoolkit.postprocess.nms.nms``, while ``batched_nms``, ``soft_nms``, ... are also
available here directly.
"""
from __future__ import annotations

import importlib
from typing import Any

from taltoolkit.postprocess.proposals import cas_to_proposals, detections_from_segments, segment_postprocess
from taltoolkit.postprocess.results_io import ResultsFormatError, read_results_json, write_results_json

_LAZY_NMS = ("batched_nms", "soft_nms", "soft_nms_indices", "nms_voting", "segment_iou")

__all__ = [
    "cas_to_proposals",
    "detections_from_segments",
    "segment_postprocess",
    "ResultsFormatError",
    "read_results_json",
    "write_results_json",
    *_LAZY_NMS,
]


def __getattr__(name: str) -> Any:
    # PEP 562: import the torch-based module only when one of its names is asked for.
    if name == "nms":
        return importlib.import_module("taltoolkit.postprocess.nms")
    if name in _LAZY_NMS:
        return getattr(importlib.import_module("taltoolkit.postprocess.nms"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
