"""The table every validation script prints: rows of truth against recovered values, and notes.

Shared by the scripts in phantoms/ (imported by file location, they are not a package).
"""

from __future__ import annotations

import warnings


def fmt(v, digits: int = 10) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{float(v):.{digits}g}"


def fmt_err(v, scale) -> str:
    if v is None:
        return "-"
    return f"{v:.2e} {scale}".rstrip()


def rel(recovered, truth) -> float:
    return abs(float(recovered) / float(truth) - 1.0)


def render(head: tuple, cells: list[tuple], right: set[int]) -> str:
    """Column-aligned text: ``head``, a dashed rule, then one line per row (``right`` = right-aligned columns)."""
    cells = [head] + cells
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]

    def line(c):
        return "  ".join(s.rjust(w) if i in right else s.ljust(w) for i, (s, w) in enumerate(zip(c, widths))).rstrip()

    out = [line(head), "  ".join("-" * w for w in widths)]
    out += [line(c) for c in cells[1:]]
    return "\n".join(out)


def guarded(table, case: str, fn, *args, **kwargs):
    """Run one part: an InvivoError becomes a FAIL row; warnings become notes under the table."""
    import invivo

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = fn(*args, **kwargs)
        except invivo.InvivoError as e:
            table.fail(case, "raised", f"{type(e).__name__}: {e}")
            out = None
    for w in caught:
        table.notes.append(f"{case}: {w.category.__name__}: {w.message}")
    return out
