#!/usr/bin/env python
"""Score an ActivityNet results JSON (taltoolkit-eval): python tools/eval.py GT.json PRED.json --preset thumos14_weak.

A thin wrapper around :mod:`taltoolkit.cli.eval` for a checkout that is not installed.
"""
import os
import sys

# Running as ``python tools/eval.py`` puts tools/ on sys.path, not the repository root.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from taltoolkit.cli.eval import *  # noqa: E402,F401,F403 - the module's names, for ``import eval``
from taltoolkit.cli import eval as _cli  # noqa: E402

globals().update({k: v for k, v in vars(_cli).items() if k.startswith("_") and not k.startswith("__")})

if __name__ == "__main__":
    sys.exit(_cli.main())
