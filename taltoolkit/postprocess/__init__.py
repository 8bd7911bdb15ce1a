"""Post-processing: NMS on 1-D segments, model outputs -> Detections, results JSON I/O.

- :mod:`taltoolkit.postprocess.suppression`: ``nms``, ``batched_nms``, ``soft_nms``,
  ``soft_nms_indices``, ``nms_voting``, ``segment_iou`` (torch, any device), each also
  available here (``from taltoolkit.postprocess import nms`` is the function).
- :mod:`taltoolkit.postprocess.proposals`: ``cas_to_proposals`` (postprocessor
  ``"cas_to_proposals"``), ``segment_postprocess`` (postprocessor ``"segment_nms"``),
  ``detections_from_segments``.
- :mod:`taltoolkit.postprocess.acmnet`: ``acmnet_proposals`` (postprocessor
  ``"acmnet_proposals"``), ACM-Net's test loop with its public code's conventions.
- :mod:`taltoolkit.postprocess.results_io`: ``write_results_json``, ``read_results_json``.

Importing this package does not import torch (the evaluation CLI reads results files and
must start fast): the suppression functions are loaded on first access.
"""
from __future__ import annotations

import importlib
from typing import Any

from taltoolkit.postprocess.acmnet import acmnet_proposals
from taltoolkit.postprocess.proposals import cas_to_proposals, detections_from_segments, segment_postprocess
from taltoolkit.postprocess.results_io import ResultsFormatError, read_results_json, write_results_json

_SUPPRESSION = ("nms", "batched_nms", "soft_nms", "soft_nms_indices", "nms_voting", "segment_iou")

__all__ = [
    "acmnet_proposals",
    "cas_to_proposals",
    "detections_from_segments",
    "segment_postprocess",
    "ResultsFormatError",
    "read_results_json",
    "write_results_json",
    *_SUPPRESSION,
]


def __getattr__(name: str) -> Any:
    # PEP 562: import the torch-based module only when one of its functions is asked for.
    if name in _SUPPRESSION:
        return getattr(importlib.import_module("taltoolkit.postprocess.suppression"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
