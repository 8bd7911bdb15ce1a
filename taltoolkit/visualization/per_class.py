"""AP per class as a bar chart: one run's classes sorted by AP, or several results files
(methods) side by side on the same classes."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from taltoolkit.visualization._figure import new_figure, save_png

__all__ = ["mean_over_thresholds", "per_class_ap", "plot_per_class_ap"]


def mean_over_thresholds(per_class_AP: Mapping[str, Sequence[float | None]]) -> dict[str, float | None]:
    """``{class: [AP per tIoU]}`` (metrics.json's ``per_class_AP``) -> ``{class: mean AP}``;
    None for a class absent from the evaluated subset."""
    out: dict[str, float | None] = {}
    for c, aps in per_class_AP.items():
        vals = [float(a) for a in aps if a is not None and not math.isnan(float(a))]
        out[c] = sum(vals) / len(vals) if vals and len(vals) == len(aps) else None
    return out


def per_class_ap(
    ground_truth: Mapping[str, Any],
    predictions: Mapping[str, Any],
    *,
    subset: str | None = None,
    tiou_thresholds: Sequence[float] | None = None,
    preset: Any = None,
) -> tuple[dict[str, float | None], list[float]]:
    """Mean AP over the tIoU thresholds per class (percent) of an ActivityNet results JSON,
    from the evaluation layer (:func:`taltoolkit.evaluation.detection_map`), and the thresholds."""
    from taltoolkit.evaluation import detection_map

    res = detection_map(ground_truth, predictions, tiou_thresholds=tiou_thresholds, subset=subset, preset=preset)
    d = res.to_dict(percent=True)
    return mean_over_thresholds(d["per_class_AP"]), d["tiou_thresholds"]


def plot_per_class_ap(
    path: str | Path,
    series: Mapping[str, Mapping[str, float | None]],
    *,
    title: str | None = None,
    value_label: str = "AP (%)",
) -> Path:
    """Write a PNG of horizontal bars: ``series`` is ``{name: {class: AP}}`` (one entry for a
    run, one per results file to compare them); classes with None (absent from the subset)
    are left out, the rest sorted by the first series' AP. A dashed line per series marks its
    mean over the classes (the mAP)."""
    names = list(series)
    if not names:
        raise ValueError("no AP series to plot")
    first = series[names[0]]
    classes = [c for c in first if first[c] is not None]
    for n in names[1:]:
        classes += [c for c, v in series[n].items() if v is not None and c not in classes]
    if not classes:
        raise ValueError("no class has an AP (no ground truth in the evaluated subset?)")
    classes.sort(key=lambda c: -(first.get(c) if first.get(c) is not None else -1.0))

    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    k = len(names)
    bar = 0.8 / k
    fig = new_figure(9.0, 1.2 + len(classes) * (0.16 + 0.1 * k))
    ax = fig.subplots()
    for j, n in enumerate(names):
        vals = [series[n].get(c) for c in classes]
        ys = [i + (j - (k - 1) / 2) * bar for i in range(len(classes))]
        xs = [v if v is not None else 0.0 for v in vals]
        color = cmap(j % 10)
        ax.barh(ys, xs, height=bar * 0.95, color=color, label=n if k > 1 else None)
        if len(classes) * k <= 80:
            for y, v in zip(ys, vals):
                ax.text((v or 0.0), y, f" {v:.1f}" if v is not None else " n/a", va="center", fontsize=6)
        present = [v for v in vals if v is not None]
        if present:
            mean = sum(present) / len(present)
            ax.axvline(mean, color=color, linestyle="--", linewidth=0.9,
                       label=f"{n + ': ' if k > 1 else ''}mean {mean:.2f}")
    ax.set_yticks(range(len(classes)), classes, fontsize=7 if len(classes) <= 60 else 5)
    ax.invert_yaxis()
    ax.set_xlabel(value_label)
    top = max((v or 0.0) for s in series.values() for v in s.values())
    ax.set_xlim(0, top * 1.15 if top > 0 else 1.0)  # room for the value labels
    ax.grid(axis="x", color="lightgray", linewidth=0.4)
    ax.set_axisbelow(True)
    ax.legend(fontsize=7, loc="lower right", frameon=True)
    ax.set_title(title or "AP per class", fontsize=10)
    return save_png(fig, path)
