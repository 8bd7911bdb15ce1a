#!/usr/bin/env python
"""Timelines of ground truth against detections, or a run's plots and report.html (taltoolkit-visualize):
python tools/visualize.py GT.json PRED.json [PRED2.json ...] [--video ID ...] | --run DIR.

A thin wrapper around :mod:`taltoolkit.cli.visualize` for a checkout that is not installed.
"""
import os
import sys

# Running as ``python tools/visualize.py`` puts tools/ on sys.path, not the repository root.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from taltoolkit.cli import visualize as _cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(_cli.main())
