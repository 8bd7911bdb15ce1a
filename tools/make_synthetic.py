#!/usr/bin/env python
"""Write a synthetic dataset in a real layout (taltoolkit-synthetic): python tools/make_synthetic.py --layout split --out DIR.

A thin wrapper around :mod:`taltoolkit.cli.synthetic` for a checkout that is not installed.
"""
import os
import sys

# Running as ``python tools/make_synthetic.py`` puts tools/ on sys.path, not the repository root.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from taltoolkit.cli.synthetic import *  # noqa: E402,F401,F403 - the module's names, for ``import make_synthetic``
from taltoolkit.cli import synthetic as _cli  # noqa: E402

globals().update({k: v for k, v in vars(_cli).items() if k.startswith("_") and not k.startswith("__")})

if __name__ == "__main__":
    sys.exit(_cli.main())
