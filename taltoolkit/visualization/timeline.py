"""Timeline of one video: ground truth on one row, each detection source's top detections on
its own row(s), one colour per class, the score written on each detection bar."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.patheffects import withStroke

from taltoolkit.visualization._figure import Color, class_colors, legend_handles, new_figure, save_png, text_color

# An instance: {"label": class name, "segment": [start, end] seconds, "score": float (detections)}.
Instance = Mapping[str, Any]

__all__ = ["plot_timeline", "top_detections", "assign_lanes"]


def top_detections(entries: Sequence[Instance], top_k: int | None) -> list[Instance]:
    """The ``top_k`` highest-scoring entries (all when None), best first; ties keep file order."""
    ranked = sorted(entries, key=lambda d: -float(d.get("score", 0.0)))
    return ranked if top_k is None else ranked[: max(0, int(top_k))]


def assign_lanes(segments: Sequence[Sequence[float]], min_width: float = 0.0) -> list[int]:
    """Lane index per segment such that no two overlapping segments share a lane (greedy by
    start time: the fewest lanes for intervals), so overlapping detections stay readable.
    A segment shorter than ``min_width`` counts as ``min_width`` wide around its centre (room
    for the score written on it)."""
    spans = []
    for seg in segments:
        s, e = float(seg[0]), float(seg[1])
        half = max((e - s) / 2, min_width / 2)
        spans.append(((s + e) / 2 - half, (s + e) / 2 + half))
    segments = spans
    order = sorted(range(len(segments)), key=lambda i: (float(segments[i][0]), float(segments[i][1])))
    lane_end: list[float] = []
    lanes = [0] * len(segments)
    for i in order:
        s, e = float(segments[i][0]), float(segments[i][1])
        for j, end in enumerate(lane_end):
            if end <= s:
                lanes[i], lane_end[j] = j, e
                break
        else:
            lanes[i] = len(lane_end)
            lane_end.append(e)
    return lanes


def plot_timeline(
    path: str | Path,
    video: str,
    ground_truth: Sequence[Instance],
    detections: Mapping[str, Sequence[Instance]],
    *,
    duration: float | None = None,
    top_k: int | None = 10,
    classes: Sequence[str] | None = None,
    colors: Mapping[str, Color] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG: the ground truth row, then one row per entry of ``detections``
    (``{row name: instances}``, e.g. ``{"CASE": [...]}`` or one row per results file) with its
    ``top_k`` best detections. Overlapping bars of a row are stacked in lanes; time in seconds.

    ``classes`` (the dataset's class list) keeps class colours stable across a run's figures;
    ``colors`` overrides them (e.g. shared with the video's activation plot).
    """
    rows: list[tuple[str, list[Instance], bool]] = [("ground truth", list(ground_truth), False)]
    rows += [(name, top_detections(entries, top_k), True) for name, entries in detections.items()]
    shown = [str(d["label"]) for _, entries, _ in rows for d in entries]
    palette = dict(colors) if colors is not None else {}
    missing = [n for n in dict.fromkeys(shown) if n not in palette]
    palette.update(class_colors(missing, classes))

    ends = [float(d["segment"][1]) for _, entries, _ in rows for d in entries]
    x_max = max([float(duration or 0.0), *ends, 1e-6])
    label_width = 0.04 * x_max  # a score label's width in seconds, at the figure's width
    lanes = [assign_lanes([d["segment"] for d in entries], label_width if scored else 0.0)
             for _, entries, scored in rows]
    heights = [max(1, max(lane, default=-1) + 1) for lane in lanes]
    gap = 0.6
    total = sum(heights) + gap * (len(rows) - 1)

    fig = new_figure(11.0, 1.0 + 0.32 * total)
    ax = fig.subplots()
    y_top = total
    ticks, tick_labels = [], []
    for (name, entries, scored), lane_of, h in zip(rows, lanes, heights):
        row_top = y_top
        for d, lane in zip(entries, lane_of):
            s, e = float(d["segment"][0]), float(d["segment"][1])
            color = palette[str(d["label"])]
            y = row_top - lane - 0.9
            ax.broken_barh([(s, max(e - s, x_max * 1e-3))], (y, 0.8), facecolors=[color],
                           edgecolor="black", linewidth=0.4)
            if scored:
                wide = e - s >= label_width
                # On a bar narrower than the label, the text spills onto the background: black
                # with a white outline reads on both.
                ax.text((s + e) / 2, y + 0.4, f"{float(d['score']):.2f}", ha="center", va="center", fontsize=6.5,
                        color=text_color(color) if wide else "black", clip_on=True,
                        path_effects=None if wide else [withStroke(linewidth=2.0, foreground="white")])
        if not entries:
            ax.text(x_max / 2, row_top - 0.5, "no detections" if scored else "no ground truth",
                    ha="center", va="center", fontsize=7, color="gray")
        ticks.append(row_top - h / 2)
        tick_labels.append(name if not scored else f"{name}\n(top {len(entries)})")
        y_top = row_top - h - gap
        if y_top > 0:
            ax.axhline(y_top + gap / 2, color="lightgray", linewidth=0.6)
    ax.set_yticks(ticks, tick_labels, fontsize=8)
    ax.set_ylim(0, total)
    ax.set_xlim(0, x_max)
    ax.set_xlabel("time (s)")
    ax.grid(axis="x", color="lightgray", linewidth=0.4)
    ax.set_axisbelow(True)
    ax.set_title(title or f"{video}: ground truth and top detections", fontsize=10)
    used = {n: palette[n] for n in dict.fromkeys(shown)}
    if used:
        ax.legend(handles=legend_handles(used), loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7,
                  title="class", title_fontsize=7, frameon=False)
    return save_png(fig, path)
