"""Pseudo-label quality per round (APL's rounds): how many pseudo-labels, and their precision
and recall against the hidden ground truth, from plain per-round dicts."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from taltoolkit.visualization._figure import new_figure, save_png

__all__ = ["plot_pseudo_label_quality", "pseudo_label_rounds"]


def pseudo_label_rounds(stage_metrics: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rounds in metrics.json's ``stage_metrics`` that report pseudo-labels, as
    ``{"round": stage name, "count", "precision", "recall"}``: from an entry's own ``count``,
    ``precision`` and ``recall``, or from APL's ``pseudo_quality`` (the final pseudo-labels of
    the round: ``num_pseudo``, ``pos_acc`` -- the share with a same-class hidden instance at
    tIoU > 0.5 -- and ``recall``)."""
    out = []
    for m in stage_metrics:
        q = m.get("pseudo_quality")
        if all(_number(m.get(k)) for k in ("count", "precision", "recall")):
            row = {"count": m["count"], "precision": m["precision"], "recall": m["recall"]}
        elif isinstance(q, Mapping) and all(_number(q.get(k)) for k in ("num_pseudo", "pos_acc", "recall")):
            row = {"count": q["num_pseudo"], "precision": q["pos_acc"], "recall": q["recall"]}
        else:
            continue
        out.append({"round": m.get("round", m.get("stage", len(out) + 1)), **row})
    return out


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def plot_pseudo_label_quality(
    path: str | Path,
    rounds: Sequence[Mapping[str, Any]],
    *,
    title: str | None = None,
) -> Path:
    """Write a PNG with two panels over the rounds (``[{"count", "precision", "recall"}, ...]``,
    an optional ``"round"`` name each): the number of pseudo-labels, and their precision and
    recall (fractions in [0, 1] or percentages, as given)."""
    if not rounds:
        raise ValueError("no pseudo-label rounds to plot")
    names = [str(r.get("round", i + 1)) for i, r in enumerate(rounds)]
    xs = list(range(len(rounds)))
    counts = [float(r["count"]) for r in rounds]
    prec = [float(r["precision"]) for r in rounds]
    rec = [float(r["recall"]) for r in rounds]
    percent = max(prec + rec) > 1.0
    fig = new_figure(10.0, 3.4)
    ax_n, ax_q = fig.subplots(1, 2)
    ax_n.bar(xs, counts, color="tab:blue")
    for x, n in zip(xs, counts):
        ax_n.text(x, n, f"{n:g}", ha="center", va="bottom", fontsize=7)
    ax_n.set_title("pseudo-labels", fontsize=9)
    ax_n.set_ylabel("count")
    for ax in (ax_n, ax_q):
        ax.set_xticks(xs, names, fontsize=7, rotation=30 if max(len(n) for n in names) > 8 else 0)
        ax.set_xlabel("round")
        ax.grid(axis="y", color="lightgray", linewidth=0.4)
        ax.set_axisbelow(True)
    ax_q.plot(xs, prec, marker="o", color="tab:green", label="precision")
    ax_q.plot(xs, rec, marker="s", color="tab:orange", label="recall")
    for x, p, r in zip(xs, prec, rec):
        ax_q.text(x, p, f" {p:.2f}", fontsize=6.5, va="bottom", color="tab:green")
        ax_q.text(x, r, f" {r:.2f}", fontsize=6.5, va="top", color="tab:orange")
    ax_q.set_ylim(0, 105 if percent else 1.05)
    ax_q.set_ylabel("%" if percent else "fraction")
    ax_q.set_title("quality against the ground truth", fontsize=9)
    ax_q.legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, path)
