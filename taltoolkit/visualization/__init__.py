"""Plots of runs and results files (matplotlib, Agg, no pyplot): each function writes one PNG.

- :func:`plot_timeline`: a video's ground truth against the top detections of one or more
  detection sources (one colour per class, the score on each bar);
- :func:`plot_activation`: a video's CAS and attention with the post-processor's thresholds;
- :func:`plot_training_curves`: losses, learning rate, evaluation mAP and other tag groups;
- :func:`plot_per_class_ap`: AP per class, one run or several results files side by side;
- :func:`plot_cluster_confusion`: clusters against true classes (COPL);
- :func:`plot_pseudo_label_quality`: pseudo-label count, precision and recall per round (APL);
- :func:`write_run_plots`: all of a run directory's plots and its report.html.

The names load on first use, so ``import taltoolkit.visualization`` does not import matplotlib.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "plot_timeline": "timeline",
    "plot_activation": "activation",
    "activation_times": "activation",
    "plot_training_curves": "curves",
    "scalars_from_history": "curves",
    "plot_per_class_ap": "per_class",
    "per_class_ap": "per_class",
    "mean_over_thresholds": "per_class",
    "plot_cluster_confusion": "clusters",
    "cluster_confusion": "clusters",
    "plot_pseudo_label_quality": "pseudo_labels",
    "write_run_plots": "run",
    "plot_video": "run",
    "load_run": "run",
    "write_report": "report",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"taltoolkit.visualization.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
