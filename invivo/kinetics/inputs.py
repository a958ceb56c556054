"""Input functions: arterial blood samples (PET-BIDS blood layout) or image-derived from a blood-pool ROI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import ParameterError
from .base import Frames, read_table

__all__ = ["InputFunction", "load_blood"]


def _curve(name, v, n):
    a = np.asarray(v, dtype=np.float64)
    if a.shape != (n,):
        raise ParameterError(f"input function: {name} has {a.size} values for {n} sample times")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise ParameterError(f"input function: {name} at sample {int(bad[0])} is not a number")
    return a


class InputFunction:
    """A blood input function: plasma (and whole-blood) activity concentration against time.

    Parameters
    ----------
    times_s : array of float
        Sample times (s after injection), strictly increasing.
    plasma : array of float
        Plasma activity concentration (Bq/mL), decay corrected to injection unless
        ``decay_corrected=False``.
    whole_blood : array of float, optional
        Whole-blood activity concentration (Bq/mL) at the same times (the vB term of the
        models uses it; default: the plasma curve).
    parent_fraction : array of float, optional
        Fraction of plasma activity that is the intact tracer (metabolite correction).
    decay_corrected : bool
        Whether the samples are decay corrected (to the injection time).
    half_life_s : float, optional
        Needed to decay-correct uncorrected samples.
    description : str
        Where the curve came from (recorded in fits).

    Notes
    -----
    Between samples the curves are linear; before the first sample they rise linearly from
    0 at t = 0 (the injection) unless a sample sits at t = 0.  Models refuse to extrapolate
    beyond the last sample (:meth:`check_covers`).

    Examples
    --------
    >>> inp = InputFunction([0, 60, 120, 600], [0.0, 1000.0, 500.0, 100.0])
    >>> round(float(inp.plasma_at(30.0)), 9), round(float(inp.plasma_at(90.0)), 9)
    (500.0, 750.0)
    """

    def __init__(self, times_s, plasma, *, whole_blood=None, parent_fraction=None, decay_corrected: bool = True,
                 half_life_s: float | None = None, description: str = "blood samples"):
        t = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
        if t.ndim != 1 or t.size < 2:
            raise ParameterError("input function: at least 2 sample times are needed")
        if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
            raise ParameterError("input function: sample times must be finite and strictly increasing (s)")
        if t[0] < 0:
            raise ParameterError(f"input function: the first sample is at {t[0]:g} s, before the injection (t = 0)")
        n = t.size
        cp = _curve("plasma_radioactivity", plasma, n)
        cb = _curve("whole_blood_radioactivity", whole_blood, n) if whole_blood is not None else None
        pf = _curve("metabolite_parent_fraction", parent_fraction, n) if parent_fraction is not None else None
        if pf is not None and (np.any(pf < 0) or np.any(pf > 1.0 + 1e-9)):
            raise ParameterError("input function: metabolite_parent_fraction must lie in [0, 1]")
        if not decay_corrected:
            if not half_life_s or half_life_s <= 0:
                raise ParameterError("input function: uncorrected samples need the isotope's half-life to be "
                                     "decay corrected (half_life_s)")
            f = np.exp(math.log(2.0) * t / half_life_s)
            cp = cp * f
            cb = cb * f if cb is not None else None
            description += f" (decay corrected here, T1/2 {half_life_s:g} s)"
        if t[0] > 0:  # the injection: activity 0 at t = 0
            t = np.concatenate([[0.0], t])
            cp = np.concatenate([[0.0], cp])
            cb = np.concatenate([[0.0], cb]) if cb is not None else None
            pf = np.concatenate([[pf[0]], pf]) if pf is not None else None
        self.times_s = t
        self.plasma = cp
        self.whole_blood = cb
        self.parent_fraction = pf
        self.description = description

    def __repr__(self) -> str:
        return (f"InputFunction({self.times_s.size} samples to {self.times_s[-1]:g} s, {self.description}"
                f"{', whole blood' if self.whole_blood is not None else ''}"
                f"{', metabolite corrected' if self.parent_fraction is not None else ''})")

    # ------------------------------------------------------------------ evaluation
    def _at(self, values, t_s):
        return np.interp(np.asarray(t_s, dtype=np.float64), self.times_s, values, left=0.0, right=values[-1])

    def plasma_at(self, t_s):
        """Parent (metabolite-corrected where a parent fraction is given) plasma activity at ``t_s`` (Bq/mL)."""
        cp = self.plasma if self.parent_fraction is None else self.plasma * self.parent_fraction
        return self._at(cp, t_s)

    def blood_at(self, t_s):
        """Whole-blood activity at ``t_s`` (the plasma curve when no whole blood was given)."""
        return self._at(self.whole_blood if self.whole_blood is not None else self.plasma, t_s)

    @property
    def end_s(self) -> float:
        return float(self.times_s[-1])

    def check_covers(self, frames: Frames, *, delay_s: float = 0.0) -> None:
        """Raise ParameterError unless the samples reach the end of the last frame."""
        need = float(frames.end_s[-1]) - min(0.0, delay_s)
        if self.end_s < need - 1e-6:
            raise ParameterError(f"input function ends at {self.end_s:g} s but the scan runs to {need:g} s: "
                                 "give samples covering the whole scan")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_image(cls, values, frames: Frames, *, recovery: float = 1.0, plasma_blood_ratio: float = 1.0,
                   description: str = "image-derived (blood pool ROI)") -> "InputFunction":
        """Image-derived input: a blood-pool ROI's curve (Bq/mL, decay corrected) at the frame mid times.

        ``recovery`` (<= 1) corrects the partial-volume loss of a small blood pool (whole
        blood = ROI / recovery); plasma = whole blood x ``plasma_blood_ratio``.
        """
        if not (0 < recovery <= 1.5):
            raise ParameterError(f"recovery coefficient must be in (0, 1.5], got {recovery!r}")
        if not plasma_blood_ratio > 0:
            raise ParameterError(f"plasma_blood_ratio must be positive, got {plasma_blood_ratio!r}")
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (len(frames),):
            raise ParameterError(f"image-derived input: {v.size} values for {len(frames)} frames")
        wb = v / recovery
        # the last frame's value holds to its end (the curve must cover the scan)
        t = np.concatenate([frames.mid_s, [frames.end_s[-1]]])
        wb = np.concatenate([wb, [wb[-1]]])
        return cls(t, wb * plasma_blood_ratio, whole_blood=wb,
                   description=f"{description}, recovery {recovery:g}, plasma/blood {plasma_blood_ratio:g}")


def load_blood(path: str | os.PathLike, *, half_life_s: float | None = None) -> InputFunction:
    """Read a PET-BIDS blood file (``*_blood.tsv`` with ``time`` in s, ``plasma_radioactivity``
    and optionally ``whole_blood_radioactivity`` and ``metabolite_parent_fraction``).

    A JSON sidecar with ``"DecayCorrected": false`` (or ``"PlasmaAvail"`` style BIDS keys)
    marks uncorrected samples, which then need ``half_life_s``.
    """
    p = Path(path)
    df, cols = read_table(p, "blood file")
    if "time" not in cols:
        raise ParameterError(f"blood file {p} has no 'time' column (PET-BIDS: time in s)")
    plasma_col = cols.get("plasma_radioactivity") or cols.get("whole_blood_radioactivity")
    if plasma_col is None:
        raise ParameterError(f"blood file {p} needs a plasma_radioactivity (or whole_blood_radioactivity) column")
    decay_corrected = True
    side = p.with_suffix(".json")
    if side.exists():
        try:
            meta = json.loads(side.read_text())
        except json.JSONDecodeError as exc:
            raise ParameterError(f"{side}: not valid JSON ({exc.msg})") from None
        decay_corrected = bool(meta.get("DecayCorrected", meta.get("decay_corrected", True)))
    wb = cols.get("whole_blood_radioactivity")
    pf = cols.get("metabolite_parent_fraction")
    return InputFunction(df[cols["time"]].to_numpy(float), df[plasma_col].to_numpy(float),
                         whole_blood=df[wb].to_numpy(float) if wb else None,
                         parent_fraction=df[pf].to_numpy(float) if pf else None,
                         decay_corrected=decay_corrected, half_life_s=half_life_s, description=f"blood file {p.name}")
