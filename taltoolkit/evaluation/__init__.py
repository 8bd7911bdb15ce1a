"""Evaluation: ActivityNet-exact detection mAP, named protocols, clustering scores.

Importing this package loads numpy only (no torch, scipy or scikit-learn), so that
``tools/eval.py`` starts quickly; scipy is imported inside :func:`clustering_scores`.
"""
from taltoolkit.evaluation.clustering import clustering_scores
from taltoolkit.evaluation.detection import (
    DEFAULT_TIOU_THRESHOLDS,
    DetectionResult,
    average_over_ranges,
    detection_map,
)
from taltoolkit.evaluation.errors import EvaluationError
from taltoolkit.evaluation.presets import PRESETS, EvalPreset, get_preset, preset_names, resolve_preset

__all__ = [
    "DEFAULT_TIOU_THRESHOLDS",
    "DetectionResult",
    "EvalPreset",
    "EvaluationError",
    "PRESETS",
    "average_over_ranges",
    "clustering_scores",
    "detection_map",
    "get_preset",
    "preset_names",
    "resolve_preset",
]
