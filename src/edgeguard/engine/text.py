"""Plain-text tables for the terminal (CLI output of every family)."""

from __future__ import annotations

from typing import Any


def format_table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    """Plain-text table for the terminal."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{100 * v:.1f}%" if v <= 1 else f"{v:.3g}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    cells = [list(headers)] + [[cell(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
