"""Strict JSON reading shared by the annotation and results readers (stdlib only, so the
eval CLI that reads results stays fast to start)."""
from __future__ import annotations

import json
import math
from typing import Any


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
