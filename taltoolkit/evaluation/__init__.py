"""Evaluation: ActivityNet-exact detection mAP, named protocols, clustering scores.

Importing this package loads numpy only (no torch, scipy or scikit-learn), so that
``tools/eval.py`` starts quickly; scipy is imported inside :func:`clustering_scores`.
"""
from taltoolkit.evaluation.clustering import clustering_scores
from taltoolkit.evaluation.detection import (
    DEFAULT_TIOU_THRESHOLDS,
    DetectionResult,
    EvaluationError,
    average_over_ranges,
    detection_map,
)
from taltoolkit.evaluation.presets import PRESETS, EvalPreset, default_preset, get_preset, preset_names

__all__ = [
    "DEFAULT_TIOU_THRESHOLDS",
    "DetectionResult",
    "EvalPreset",
    "EvaluationError",
    "PRESETS",
    "average_over_ranges",
    "clustering_scores",
    "default_preset",
    "detection_map",
    "get_preset",
    "preset_names",
]
