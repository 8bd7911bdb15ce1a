"""The ``figures`` fixture: every figure the visualization package saves, by file name, so a
test can read back what a plot drew (bars, lines, texts, legends)."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from taltoolkit.visualization import _figure

MODULES = ("timeline", "activation", "curves", "per_class", "clusters", "pseudo_labels")


@pytest.fixture
def figures(monkeypatch):
    saved: dict[str, object] = {}
    real = _figure.save_png

    def capture(fig, path, dpi=_figure.DPI):  # noqa: ANN001, ANN202
        saved[Path(path).name] = fig
        return real(fig, path, dpi)

    for mod in MODULES:
        monkeypatch.setattr(importlib.import_module(f"taltoolkit.visualization.{mod}"), "save_png", capture)
    return saved
