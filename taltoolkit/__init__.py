"""taltoolkit: temporal action localization across unsupervised, weakly- and semi-supervised paradigms."""
from __future__ import annotations

from typing import Any

from taltoolkit._version import __version__

__all__ = ["Detections", "Video", "__version__", "run"]


def __getattr__(name: str) -> Any:
    # PEP 562: ``taltoolkit.Video`` / ``taltoolkit.Detections`` without importing numpy at
    # ``import taltoolkit`` (the CLIs' --help must start instantly).
    if name in ("Detections", "Video"):
        from taltoolkit import structures

        return getattr(structures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(cfg):  # noqa: ANN001 - an omegaconf DictConfig
    """Run one job described by a composed Hydra config (what ``taltoolkit-run`` / ``tools/run.py`` call)."""
    from taltoolkit.entry import run as _run

    return _run(cfg)
