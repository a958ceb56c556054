"""Radionuclide half-lives and positron branching ratios.

Half-lives in seconds (DDEP / NUDAT values as used by the QIBA and IBSI SUV
work).  ``lookup`` accepts the many spellings found in DICOM headers:
``"18F"``, ``"F-18"``, ``"Fluorine-18"``, ``"^18^Fluorine"``, SNOMED codes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import ParameterError

__all__ = ["Isotope", "ISOTOPES", "lookup", "decay_factor", "half_life_s", "count_average_time_s"]


@dataclass(frozen=True)
class Isotope:
    """One radionuclide.

    Attributes
    ----------
    name : str
        Canonical name, mass number first (``"89Zr"``).
    half_life_s : float
        Physical half-life in seconds.
    positron_fraction : float
        Fraction of decays that emit a positron (0 for single-photon emitters).
    element : str
        Element name in English, for matching header text.
    """

    name: str
    half_life_s: float
    positron_fraction: float
    element: str

    @property
    def decay_constant_per_s(self) -> float:
        return math.log(2.0) / self.half_life_s


ISOTOPES: dict[str, Isotope] = {
    iso.name: iso
    for iso in (
        Isotope("18F", 6586.2, 0.9673, "fluorine"),
        Isotope("11C", 1220.4, 0.9976, "carbon"),
        Isotope("13N", 597.9, 0.9980, "nitrogen"),
        Isotope("15O", 122.24, 0.9989, "oxygen"),
        Isotope("68Ga", 4062.6, 0.8891, "gallium"),
        Isotope("64Cu", 45721.1, 0.1752, "copper"),
        Isotope("89Zr", 282240.0, 0.2274, "zirconium"),
        Isotope("124I", 360806.0, 0.2256, "iodine"),
        Isotope("99mTc", 21624.0, 0.0, "technetium"),
        Isotope("111In", 242326.0, 0.0, "indium"),
        Isotope("177Lu", 574300.0, 0.0, "lutetium"),
        Isotope("82Rb", 76.38, 0.9545, "rubidium"),
    )
}

# SNOMED-RT codes of the Radionuclide Code Sequence (DICOM CID 4020) that we are sure of.
_CODES = {"C-111A1": "18F", "C-105A1": "11C", "C-107A1": "13N", "C-B1038": "15O", "C-131A1": "68Ga", "C-159A2": "82Rb"}
_SYMBOLS = {"F": "18F", "C": "11C", "N": "13N", "O": "15O", "GA": "68Ga", "CU": "64Cu", "ZR": "89Zr", "I": "124I",
            "TC": "99mTc", "IN": "111In", "LU": "177Lu", "RB": "82Rb"}
_ELEMENTS = {iso.element: iso.name for iso in ISOTOPES.values()}


def _canonical(text: str) -> str | None:
    t = text.strip()
    if not t:
        return None
    if t.upper() in _CODES:
        return _CODES[t.upper()]
    low = t.lower()
    compact = re.sub(r"[\s^_\-()]", "", low)
    for name in ISOTOPES:
        if compact == name.lower():
            return name
    # mass number and element symbol or name, in either order: F-18, 18F, Zr89, ^89^Zirconium, Fluorine-18
    m = re.fullmatch(r"(\d+)(m?)([a-z]+)", compact) or None
    if m:
        mass, meta, elem = m.groups()
    else:
        m = re.fullmatch(r"([a-z]+?)(\d+)(m?)", compact)
        if not m:
            return None
        elem, mass, meta = m.groups()
    for name, iso in ISOTOPES.items():
        sym = next((s for s, n in _SYMBOLS.items() if n == name), "")
        if elem in (iso.element, sym.lower()) and name == f"{mass}{meta}{name.lstrip('0123456789m')}":
            return name
    return None


def lookup(text: str) -> Isotope:
    """Find an isotope from any of its usual spellings or codes.

    Raises
    ------
    ParameterError
        When the text names no known isotope; the message lists the known ones.
    """
    name = _canonical(str(text))
    if name is None:
        raise ParameterError(
            f"unknown radionuclide {text!r}: known are {', '.join(ISOTOPES)}; give the half-life explicitly"
        )
    return ISOTOPES[name]


def find(*texts: str | None) -> Isotope | None:
    """The first isotope named by any of ``texts`` (radiopharmaceutical names, code meanings), or None."""
    for text in texts:
        if not text:
            continue
        name = _canonical(str(text))
        if name:
            return ISOTOPES[name]
        # names such as "Ga68-PSMA", "[18F]FDG", "89Zr-oxine", "FDG"
        for token in re.split(r"[\s\[\]\-_/,;:()]+", str(text)):
            name = _canonical(token) if token else None
            if name:
                return ISOTOPES[name]
        low = str(text).lower()
        if low in ("fdg", "flt", "fet", "fmiso", "fluorodeoxyglucose", "psma-1007", "naf"):
            return ISOTOPES["18F"]
    return None


def half_life_s(isotope: str) -> float:
    """Half-life in seconds of the named isotope."""
    return lookup(isotope).half_life_s


def decay_factor(elapsed_s, half_life_s: float):
    """Fraction of activity left after ``elapsed_s`` seconds: ``2 ** (-t / T½)``.

    Works on floats and on NumPy/CuPy arrays.  A negative time gives a factor > 1
    (activity earlier in time was larger).
    """
    if not half_life_s or half_life_s <= 0:
        raise ParameterError(f"half_life_s must be a positive number of seconds, got {half_life_s!r}")
    return 2.0 ** (-elapsed_s / half_life_s)


def count_average_time_s(duration_s: float, half_life_s: float | None) -> float:
    """Seconds after a frame's start at which its mean count rate occurs.

    For activity decaying as exp(-lambda t) over a frame of duration D the mean rate is
    reached at ``ln(lambda D / (1 - exp(-lambda D))) / lambda`` -- slightly before D/2.
    Scanners store this (from the series reference) as FrameReferenceTime; the QIBA
    and IBSI rules use it to recover the scan start.  ``D / 2`` without a half-life.
    """
    if not half_life_s or duration_s <= 0:
        return duration_s / 2.0
    lam = math.log(2.0) / half_life_s
    x = lam * duration_s
    if x < 1e-9:
        return duration_s / 2.0
    return math.log(x / -math.expm1(-x)) / lam
