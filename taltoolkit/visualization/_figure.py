"""Shared figure plumbing: a pyplot-free Agg figure, atomic PNG writing, class colours.

Figures are built with :class:`matplotlib.figure.Figure` rather than pyplot, so drawing never
switches the process's matplotlib backend (a notebook keeps its own) and no global figure
registry holds on to memory.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from matplotlib.figure import Figure

from taltoolkit.atomicio import atomic_write_bytes

Color = tuple[float, float, float, float]

DPI = 100


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def save_png(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Render ``fig`` with Agg and write it to ``path`` atomically (a reader never sees half a PNG)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    atomic_write_bytes(path, lambda f: f.write(data))
    return path


def class_colors(names: Iterable[str], all_classes: Sequence[str] | None = None) -> dict[str, Color]:
    """A colour per class name.

    With a class list of at most 20 names, each class keeps its colour in every figure of a
    run (by class index). With more classes (ActivityNet's 200) no palette keeps
    them apart, so the colours follow the order of ``names`` (the classes of one figure),
    distinct for up to 20 classes in that figure.
    """
    palette = _palette()
    names = list(dict.fromkeys(names))
    if all_classes is not None and len(all_classes) <= len(palette):
        index = {c: i for i, c in enumerate(all_classes)}
        extra = len(all_classes)
        out = {}
        for n in names:
            i = index.get(n)
            if i is None:  # a label outside the class list: next free colour
                i, extra = extra, extra + 1
            out[n] = palette[i % len(palette)]
        return out
    return {n: palette[i % len(palette)] for i, n in enumerate(names)}


# After tab10, ten colours far from its hues (tab20's light halves are too pale for curves
# and thin bars, and Dark2 repeats tab10's orange, pink and grey).
_EXTRA = ("#000075", "#800000", "#469990", "#f032e6", "#ffd700", "#2f4f4f", "#bfef45", "#fa8072", "#4b0082",
          "#000000")


def _palette() -> list[Color]:
    from matplotlib import colormaps
    from matplotlib.colors import to_rgba

    return [tuple(colormaps["tab10"](i)) for i in range(10)] + [to_rgba(c) for c in _EXTRA]


def text_color(rgba: Sequence[float]) -> str:
    """Black or white, whichever reads better on ``rgba``."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def file_stem(name: str) -> str:
    """A video name as a safe file name (path separators and odd characters -> ``_``)."""
    stem = re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("._")
    return stem or "video"


def legend_handles(colors: Mapping[str, Color]) -> list:
    from matplotlib.patches import Patch

    return [Patch(facecolor=c, edgecolor="black", linewidth=0.4, label=n) for n, c in colors.items()]
