"""The one fixed-width text table every printout uses (stdlib only, so the CLIs can use it
without importing numpy or torch): the run's mAP table, the eval CLI's, sweep summaries, the
synthetic generator's statistics and the component list."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["format_table"]


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    align: str | None = None,
    float_format: str = "{:.2f}",
) -> str:
    """A header line, a dashed rule and one line per row, columns two spaces apart.

    ``align`` has one character per column, ``">"`` (right) or ``"<"`` (left); None: every
    column right-aligned, as numbers read best. Floats are written with ``float_format``,
    anything else with ``str``. Trailing spaces are dropped.
    """
    align = align or ">" * len(headers)
    if len(align) != len(headers) or set(align) - {"<", ">"}:
        raise ValueError(f"align={align!r} must give '<' or '>' for each of the {len(headers)} columns")
    cells = [[float_format.format(c) if isinstance(c, float) else str(c) for c in r] for r in rows]
    for r in cells:
        if len(r) != len(headers):
            raise ValueError(f"a row has {len(r)} cells for {len(headers)} columns: {r}")
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(f"{{:{a}{w}}}" for a, w in zip(align, widths))
    out = [line.format(*map(str, headers)), line.format(*("-" * w for w in widths))]
    out += [line.format(*r) for r in cells]
    return "\n".join(s.rstrip() for s in out)
