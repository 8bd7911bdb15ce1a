"""The class activation sequence (CAS) and attention/actionness of one video over time, with
the thresholds the post-processor cuts proposals at and the ground truth underneath."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from taltoolkit.visualization._figure import Color, class_colors, new_figure, save_png
from taltoolkit.visualization.timeline import Instance

__all__ = ["plot_activation", "activation_times", "localized_classes", "threshold_values"]


def activation_times(
    num_steps: int,
    step_s: float,
    offset_s: float = 0.0,
    step_scale: float = 1.0,
    positions: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Seconds at the centre of each of ``num_steps`` output steps.

    Output step ``j`` covers grid coordinates ``[j, j + 1)`` times ``step_scale`` (a test video
    resampled to another length); for a sampled sequence, step ``i`` covers
    ``[positions[i], positions[i] + span_i)`` with ``span_i`` the distance to the next position
    (at least 1), as the post-processor maps them (``taltoolkit.postprocess.proposals``).
    """
    step = float(step_s) * float(step_scale)
    if positions is not None:
        pos = np.asarray(positions, dtype=np.float64).reshape(-1)[:num_steps]
        span = np.maximum(np.diff(pos, append=pos[-1] + 1.0), 1.0) if pos.size else pos
        centre = pos + span / 2.0
    else:
        centre = np.arange(num_steps, dtype=np.float64) + 0.5
    return float(offset_s) + centre * step


def threshold_values(spec: Any) -> list[float]:
    """Threshold levels from a post-processing config value: a list, ``"arange(a, b, s)"`` or
    ``{start, stop, step}`` (as ``conf/postprocess/*.yaml`` write them); None -> none."""
    if spec is None:
        return []
    from taltoolkit.postprocess.acmnet import threshold_levels

    return [float(x) for x in threshold_levels(spec)]


def localized_classes(
    class_scores: Sequence[float] | np.ndarray | None,
    class_threshold: float | None,
    num_classes: int,
) -> list[int]:
    """The classes the post-processor localizes: video score >= ``class_threshold`` (none: the
    top-1), best first; all-class fallback when there are no video scores."""
    if class_scores is None:
        return list(range(num_classes))
    scores = np.asarray(class_scores, dtype=np.float64).reshape(-1)
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    if class_threshold is None:
        return order
    keep = [i for i in order if scores[i] >= class_threshold]
    return keep or order[:1]


def plot_activation(
    path: str | Path,
    video: str,
    times: Sequence[float] | np.ndarray,
    cas: np.ndarray,
    classes: Sequence[str],
    *,
    class_scores: Sequence[float] | np.ndarray | None = None,
    class_threshold: float | None = None,
    cas_thresholds: Sequence[float] = (),
    actionness: np.ndarray | None = None,
    actionness_thresholds: Sequence[float] = (),
    ground_truth: Sequence[Instance] = (),
    duration: float | None = None,
    max_classes: int = 4,
    colors: Mapping[str, Color] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG of ``cas`` (T, C) over ``times`` (T,) seconds for the classes the
    post-processor localizes (``class_scores >= class_threshold``, else the top-1) and the
    ground-truth classes, at most ``max_classes``; ``actionness`` (T,) in black. Dotted lines:
    ``cas_thresholds``; dashed: ``actionness_thresholds``. Ground-truth instances are shaded
    and drawn as a strip below zero in their class colour."""
    cas = np.asarray(cas, dtype=np.float64)
    if cas.ndim != 2:
        raise ValueError(f"cas must be (T, C), got shape {cas.shape}")
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    n = min(len(times), cas.shape[0])
    index = {c: i for i, c in enumerate(classes)}
    gt_ids = [index[str(g["label"])] for g in ground_truth if str(g["label"]) in index]
    picked = localized_classes(class_scores, class_threshold, cas.shape[1])
    gt_unique = list(dict.fromkeys(gt_ids))  # the ground-truth classes always, then the best others
    shown = gt_unique + [c for c in picked if c not in gt_unique][: max(0, max_classes - len(gt_unique))]
    names = [classes[c] for c in shown]
    palette = dict(colors) if colors is not None else {}
    palette.update(class_colors([c for c in names if c not in palette], classes))

    fig = new_figure(11.0, 3.6)
    ax = fig.subplots()
    y_max = max(1.0, float(np.nanmax(cas[:n, shown])) if n and shown else 1.0)
    if actionness is not None:
        a = np.asarray(actionness, dtype=np.float64).reshape(-1)
        y_max = max(y_max, float(np.nanmax(a[:n])) if n else 1.0)
    for g in ground_truth:
        color = palette.get(str(g["label"]), (0.5, 0.5, 0.5, 1.0))
        s, e = float(g["segment"][0]), float(g["segment"][1])
        ax.axvspan(s, e, color=color, alpha=0.15, linewidth=0)
        ax.axvspan(s, e, ymin=0.0, ymax=0.04, color=color, alpha=0.9, linewidth=0)
    for c, name in zip(shown, names):
        score = "" if class_scores is None else f" (video score {float(np.asarray(class_scores)[c]):.2f})"
        ax.plot(times[:n], cas[:n, c], color=palette[name], linewidth=1.2, label=f"CAS {name}{score}")
    if actionness is not None:
        ax.plot(times[:n], a[:n], color="black", linewidth=1.0, alpha=0.75, label="attention / actionness")
    x_max = max(float(duration or 0.0), float(times[n - 1]) if n else 1.0)
    for levels, style, what in ((cas_thresholds, ":", "CAS"), (actionness_thresholds if actionness is not None
                                                                 else (), "--", "actionness")):
        levels = list(levels)
        for i, t in enumerate(levels):
            ax.axhline(t, color="dimgray", linestyle=style, linewidth=0.6, alpha=0.7,
                       label=f"{what} thresholds ({len(levels)})" if i == 0 else None)
            if len(levels) <= 10:
                ax.text(x_max, t, f" {t:g}", fontsize=6, va="center", ha="left", color="dimgray", clip_on=False)
    ax.set_xlim(0, x_max)
    ax.set_ylim(-0.02 * y_max, 1.04 * y_max)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("activation")
    ax.set_title(title or f"{video}: activation, proposal thresholds and ground truth (shaded)", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), fontsize=7, frameon=False)
    return save_png(fig, path)
