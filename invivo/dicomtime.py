"""DICOM DA / TM / DT values as Python dates and times (lenient: None when unreadable)."""

from __future__ import annotations

import re
from datetime import date, datetime, time

__all__ = ["parse_da", "parse_tm", "parse_dt", "combine"]


def parse_da(v) -> date | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    s = re.sub(r"[^0-9]", "", str(v))
    if len(s) < 8:
        return None
    try:
        return date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return None


def parse_tm(v) -> time | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return v.time().replace(tzinfo=None)
    if isinstance(v, time):
        return v.replace(tzinfo=None)
    s = str(v).strip().replace(":", "")
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", s)
    if not m:
        return None
    hh, mm, ss, frac = m.groups()
    try:
        return time(int(hh), int(mm or 0), min(int(ss or 0), 59), int((frac or "0").ljust(6, "0")))
    except ValueError:
        return None


def parse_dt(v) -> datetime | None:
    """DICOM DT (YYYYMMDDHHMMSS.FFFFFF&ZZXX); the UTC offset is dropped (local clock time)."""
    if v is None:
        return None
    if isinstance(v, datetime):
        return v.replace(tzinfo=None)
    s = str(v).strip()
    m = re.fullmatch(r"(\d{8})(\d{2,6}(?:\.\d{1,6})?)?([+-]\d{4})?", s)
    if not m:
        return None
    d = parse_da(m.group(1))
    t = parse_tm(m.group(2)) if m.group(2) else time(0, 0)
    if d is None or t is None:
        return None
    return datetime.combine(d, t)


def combine(d, t) -> datetime | None:
    dd, tt = parse_da(d), parse_tm(t)
    if dd is None or tt is None:
        return None
    return datetime.combine(dd, tt)
