"""Training curves: one panel per group of tags (losses, learning rate, evaluation mAP, the
methods' own diagnostics), from scalars.jsonl or, for a run without per-step scalars, from
the per-epoch history in metrics.json."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from taltoolkit.visualization._figure import new_figure, save_png

Series = Sequence[tuple[float, float]]

__all__ = ["group_tags", "plot_training_curves", "scalars_from_history"]

LOSSES, LR, EVAL = "losses", "learning rate", "evaluation mAP (%)"


def group_tags(tags: Sequence[str]) -> dict[str, list[str]]:
    """Panel title -> tags: losses (``train/*loss*``), learning rate, evaluation mAP, then
    ``<prefix>: losses`` for other loss tags (``epoch/loss`` epoch means), "speed"
    (``seconds``, ``*_per_s``), "train: other" for other training diagnostics and one panel
    per remaining prefix (``copl/nmi`` -> "copl", ``iter1/purity`` -> "iter1")."""
    groups: dict[str, list[str]] = {LOSSES: [], LR: [], EVAL: []}
    for tag in tags:
        prefix, _, name = tag.rpartition("/")
        low = name.lower()
        if low == "lr" or low.startswith("lr_") or low.startswith("lr@") or low == "learning_rate":
            key = LR
        elif "mAP" in name:  # case-sensitive: "heatmap_loss" is a loss
            key = EVAL
        elif low == "seconds" or low.endswith("_per_s"):
            key = "speed"
        elif "loss" in low:
            key = LOSSES if prefix in ("", "train") else f"{prefix}: losses"
        elif prefix in ("", "train"):
            key = "train: other"
        else:
            key = prefix
        groups.setdefault(key, []).append(tag)
    return {k: v for k, v in groups.items() if v}


def _labels(tags: Sequence[str]) -> list[str]:
    """Legend labels: the names alone when the panel's tags share one prefix."""
    prefixes = {t.rpartition("/")[0] for t in tags}
    return [t.rpartition("/")[2] for t in tags] if len(prefixes) == 1 else list(tags)


def plot_training_curves(
    path: str | Path,
    scalars: Mapping[str, Series],
    *,
    x_label: str = "step",
    stage_starts: Sequence[tuple[float, str]] = (),
    title: str | None = None,
) -> Path:
    """Write a PNG with one panel per tag group (:func:`group_tags`) of ``scalars``
    (``tag -> [(x, value)]``); ``stage_starts`` (x, name) draws the start of each training
    stage (COPL's iterations, APL's phases) as a vertical line."""
    groups = group_tags([t for t, s in scalars.items() if len(s)])
    if not groups:
        raise ValueError("no scalars to plot")
    ncols = 1 if len(groups) == 1 else 2
    nrows = math.ceil(len(groups) / ncols)
    fig = new_figure(11.0, 0.6 + 2.7 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
    for ax, (group, tags) in zip(axes, groups.items()):
        positive = True
        for tag, label in zip(tags, _labels(tags)):
            xs = [float(x) for x, _ in scalars[tag]]
            ys = [float(y) for _, y in scalars[tag]]
            positive &= all(y > 0 for y in ys if not math.isnan(y))
            few = len(xs) <= 3  # a point or two (a final evaluation) would be invisible as a line
            ax.plot(xs, ys, marker="o" if few else None, markersize=4, linewidth=1.1, label=label)
        if group == LR and positive:
            values = [y for t in tags for _, y in scalars[t] if not math.isnan(y)]
            if values and max(values) / min(values) > 20:
                ax.set_yscale("log")
        for i, (x, name) in enumerate(stage_starts):
            ax.axvline(x, color="gray", linestyle=":", linewidth=0.8)
            if group == next(iter(groups)):
                ax.text(x, 1.0, f" {name}", transform=ax.get_xaxis_transform(), fontsize=6, va="top",
                        ha="left", color="gray", rotation=0 if len(stage_starts) <= 6 else 90)
        ax.set_title(group, fontsize=9)
        ax.set_xlabel(x_label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(color="lightgray", linewidth=0.4)
        ax.legend(fontsize=6.5, loc="best", frameon=False, ncols=2 if len(tags) > 6 else 1)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, path)


_NOT_CURVES = {"stage", "epoch"}


def scalars_from_history(
    history: Sequence[Mapping[str, Any]],
    evaluations: Sequence[Mapping[str, Any]] = (),
) -> tuple[dict[str, list[tuple[float, float]]], list[tuple[float, str]]]:
    """Curves from metrics.json's per-epoch ``history`` rows (and periodic ``evaluations``),
    x = epochs counted across stages (1 = the end of the first epoch): ``train/<key>`` per
    numeric key, ``train/lr``, ``epoch/seconds``, ``eval/<key>``. Also returns the start of
    each stage as (x, name) when there is more than one."""
    out: dict[str, list[tuple[float, float]]] = {}
    x_of: dict[tuple[str, int], float] = {}
    starts: list[tuple[float, str]] = []
    for i, row in enumerate(history):
        x = float(i + 1)
        stage = str(row.get("stage", ""))
        x_of[(stage, int(row.get("epoch", -1)))] = x
        if not starts or starts[-1][1] != stage:
            starts.append((x - 1, stage))
        for key, v in row.items():
            if key in _NOT_CURVES or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            tag = {"lr": "train/lr", "seconds": "epoch/seconds", "videos_per_s": "epoch/videos_per_s"}.get(
                key, f"train/{key}")
            out.setdefault(tag, []).append((x, float(v)))
    for e in evaluations:
        x = x_of.get((str(e.get("stage", "")), int(e.get("epoch", -1))), float(len(history)))
        for key, v in e.items():
            if key not in _NOT_CURVES and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(f"eval/{key}", []).append((x, float(v)))
    return out, (starts if len(starts) > 1 else [])
