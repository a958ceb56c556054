"""The table every validation script prints: rows of truth against recovered values, and notes.

Shared by the scripts in phantoms/ (imported by file location, they are not a package).  A script
subclasses :class:`Table` (or :class:`GroupedTable`, which has a model / method column) to set its
number format and default scales, fills it (``guarded`` runs each part), prints the lines that
describe its run, then returns ``finish(table, ...)``: the table, the notes, the summary line and
the exit code.
"""

from __future__ import annotations

import argparse
import math
import warnings
from dataclasses import dataclass


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


@dataclass
class Row:
    case: str
    quantity: str
    truth: object
    recovered: object
    error: float | None
    tolerance: float | None
    scale: str  # "rel", "abs", "log" or "" (no number)
    status: str  # PASS, FAIL, INFO, SKIP or BELOW
    group: str | None = None  # a GroupedTable's model / method column

    @property
    def model(self) -> str | None:  # the group under validate_kinetics.py's name
        return self.group

    method = model  # and under validate_r2star.py's


class _Rows:
    """What both tables share.  ``check`` adds a judged row: PASS when ``error`` is finite and at most
    ``tolerance``, else FAIL; ``info`` a row shown, not judged (INFO, or the ``status`` given); ``fail``
    a FAIL row with its reason in the notes."""

    digits = 10  # significant digits of the truth and recovered columns
    scale = "rel"  # the default scale of check() rows ...
    info_scale = "rel"  # ... and of info() rows
    group: str | None = None  # the header of the column between case and quantity (GroupedTable)

    def __init__(self):
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def add(self, case, quantity, truth, recovered, error, tolerance, scale, status, group=None) -> Row:
        row = Row(case, quantity, truth, recovered, error, tolerance, scale, status, group)
        self.rows.append(row)
        return row

    def _check(self, case, group, quantity, truth, recovered, error, tolerance, scale) -> Row:
        ok = error is not None and math.isfinite(error) and error <= tolerance
        return self.add(case, quantity, truth, recovered, error, tolerance, self.scale if scale is None else scale,
                        "PASS" if ok else "FAIL", group)

    def _info(self, case, group, quantity, truth, recovered, error, scale, status) -> Row:
        return self.add(case, quantity, truth, recovered, error, None, self.info_scale if scale is None else scale,
                        status, group)

    def fail(self, case, quantity, message) -> None:
        self.add(case, quantity, "-", "-", None, None, "", "FAIL", None if self.group is None else "-")
        self.notes.append(f"{case}: {message}")

    @property
    def failed(self) -> bool:
        return any(r.status == "FAIL" for r in self.rows)

    def text(self) -> str:
        grouped = self.group is not None
        labels = ("case", self.group, "quantity") if grouped else ("case", "quantity")
        head = (*labels, "truth", "recovered", "error", "tolerance", "status")
        cells = [((r.case, r.group, r.quantity) if grouped else (r.case, r.quantity))
                 + (fmt(r.truth, self.digits), fmt(r.recovered, self.digits), fmt_err(r.error, r.scale),
                    fmt_err(r.tolerance, r.scale), r.status) for r in self.rows]
        n = len(labels)
        return render(head, cells, {n, n + 1, n + 2, n + 3})


class Table(_Rows):
    """Columns case, quantity, truth, recovered, error, tolerance, status."""

    def check(self, case, quantity, truth, recovered, error, tolerance, scale=None) -> Row:
        return self._check(case, None, quantity, truth, recovered, error, tolerance, scale)

    def info(self, case, quantity, truth, recovered, error=None, scale=None, status="INFO") -> Row:
        return self._info(case, None, quantity, truth, recovered, error, scale, status)


class GroupedTable(_Rows):
    """A :class:`Table` with one more column, named by ``group``, between case and quantity."""

    group = "group"

    def check(self, case, group, quantity, truth, recovered, error, tolerance, scale=None) -> Row:
        return self._check(case, group, quantity, truth, recovered, error, tolerance, scale)

    def info(self, case, group, quantity, truth, recovered, error=None, scale=None, status="INFO") -> Row:
        return self._info(case, group, quantity, truth, recovered, error, scale, status)


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


def finish(table: _Rows, seconds: float, counted: dict[str, str], extra: list[str] = ()) -> int:
    """Print the table, a blank line, its notes and the ``extra`` lines (a blank line between the two),
    then the summary line: ``PASSED: 12 pass, 0 fail``, the ``counted`` statuses (e.g. ``{"INFO": "info"}``)
    and the seconds.  Return the exit code: 1 if any row FAILed, 0 otherwise."""
    print()
    print(table.text())
    print()
    blocks = ["\n".join(f"note: {note}" for note in table.notes), "\n".join(extra)]
    if any(blocks):
        print("\n\n".join(b for b in blocks if b))
    n = {s: sum(r.status == s for r in table.rows) for s in ("PASS", "FAIL", *counted)}
    words = [f"{n['PASS']} pass", f"{n['FAIL']} fail"] + [f"{n[s]} {word}" for s, word in counted.items()]
    print(f"{'FAILED' if n['FAIL'] else 'PASSED'}: {', '.join(words)}; {seconds:.1f} s")
    return 1 if n["FAIL"] else 0


def int_at_least(low: int):
    """An argparse type: an integer >= ``low`` (a case count >= 1; a seed >= 0, numpy takes no negative seed)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {low}")
        return value

    return parse
