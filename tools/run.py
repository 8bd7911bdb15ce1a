#!/usr/bin/env python
"""Train and evaluate a method (taltoolkit-run): python tools/run.py method=case [dataset=thumos14 dataset.root=DIR].

A thin wrapper around :mod:`taltoolkit.cli.run` for a checkout that is not installed.
"""
import os
import sys

# Running as ``python tools/run.py`` puts tools/ on sys.path, not the repository root.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from taltoolkit.cli.run import *  # noqa: E402,F401,F403 - the module's names, for ``import run``
from taltoolkit.cli import run as _cli  # noqa: E402

globals().update({k: v for k, v in vars(_cli).items() if k.startswith("_") and not k.startswith("__")})

if __name__ == "__main__":
    sys.exit(_cli.main())
