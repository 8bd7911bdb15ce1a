"""The one exception the data layer raises for bad input on disk or in a config.

A :class:`DataError` message always names the offending file (or video) and says how to
fix it, because the person reading it is usually pointing a config at a folder they
downloaded and needs to know which key to change or which file is wrong.
"""
from __future__ import annotations

from typing import Iterable


class DataError(ValueError):
    """Bad dataset input: the message names the file or video and the fix."""


def preview(names: Iterable[str], limit: int = 5) -> str:
    """``'a', 'b', 'c' (and 12 more)`` for error messages that list offending names."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    more = len(names) - limit
    return shown + (f" (and {more} more)" if more > 0 else "")
