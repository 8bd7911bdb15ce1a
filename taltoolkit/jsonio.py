"""JSON in and out (stdlib only, so the eval CLI that reads results stays fast to start):
strict reading shared by the annotation and results readers, and :func:`dump_json`, which
writes a run's JSON files through the one atomic writer."""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from taltoolkit.atomicio import atomic_write_text


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice; ``key`` says which."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads silently keeps the last of duplicate keys, which would hide a duplicated video.
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKeyError(k)
        out[k] = v
    return out


def strict_loads(text: str | bytes) -> Any:
    """``json.loads`` that raises :class:`DuplicateKeyError` instead of dropping a duplicate key."""
    return json.loads(text, object_pairs_hook=_no_duplicate_keys)


def is_finite_number(x: Any) -> bool:
    """A JSON number (not a bool) that is finite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def dump_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically; numpy scalars and arrays become numbers and
    lists, anything else JSON cannot hold its ``str``."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    np = sys.modules.get("numpy")  # a numpy value means numpy is loaded; never import it here
    if np is not None:
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    return str(o)
