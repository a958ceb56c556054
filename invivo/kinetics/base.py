"""Shared pieces of the kinetic models: frame timing, the fit result, weighted least squares with lmfit.

Times cross the public API in seconds (PET-BIDS ``frame_start`` / ``frame_end``); the
compartment models work in minutes inside, because rate constants are reported per
minute (K1 in mL/cm^3/min, k2..k4 in 1/min).  The CAR-T cellular-kinetics models work
in days.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from ..errors import ParameterError

__all__ = ["Frames", "KineticFit", "least_squares", "frame_weights", "check_curve", "check_frames",
           "check_from_injection", "check_dt_min", "weights_label", "information_criteria", "delta_se", "read_table"]


@dataclass(frozen=True)
class Frames:
    """Frame timing of a dynamic scan, seconds from the scan start (or from injection).

    Parameters
    ----------
    start_s, end_s : array of float
        Frame start and end times (s).  Starts strictly increasing, each end after its
        start, frames not overlapping (gaps are allowed: multi-day static scans).

    Examples
    --------
    >>> f = Frames([0, 60, 120], [60, 120, 300])
    >>> f.mid_min.tolist(), f.duration_s.tolist()
    ([0.5, 1.5, 3.5], [60.0, 60.0, 180.0])
    """

    start_s: np.ndarray
    end_s: np.ndarray

    def __post_init__(self):
        s = np.atleast_1d(np.asarray(self.start_s, dtype=np.float64))
        e = np.atleast_1d(np.asarray(self.end_s, dtype=np.float64))
        if s.ndim != 1 or s.shape != e.shape or s.size == 0:
            raise ParameterError(f"frames: start and end must be 1D of the same length, got {s.shape} and {e.shape}")
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(e))):
            raise ParameterError("frames: start and end times must be finite numbers (s)")
        bad = np.flatnonzero(e <= s)
        if bad.size:
            i = int(bad[0])
            raise ParameterError(f"frames: frame {i} ends ({e[i]:g} s) before or when it starts ({s[i]:g} s): "
                                 "durations must be positive")
        if s.size > 1:
            inc = np.flatnonzero(np.diff(s) <= 0)
            if inc.size:
                i = int(inc[0]) + 1
                raise ParameterError(f"frames: frame starts must increase; frame {i} starts at {s[i]:g} s, "
                                     f"not after frame {i - 1} ({s[i - 1]:g} s)")
            over = np.flatnonzero(s[1:] < e[:-1] - 1e-6 * np.maximum(1.0, np.abs(e[:-1])))
            if over.size:
                i = int(over[0])
                raise ParameterError(f"frames: frame {i} ends at {e[i]:g} s after frame {i + 1} starts "
                                     f"({s[i + 1]:g} s): frames overlap")
        object.__setattr__(self, "start_s", s)
        object.__setattr__(self, "end_s", e)

    @classmethod
    def from_durations(cls, durations_s, *, start_s: float = 0.0) -> "Frames":
        """Back-to-back frames of the given durations."""
        d = np.asarray(durations_s, dtype=np.float64)
        ends = start_s + np.cumsum(d)
        return cls(ends - d, ends)

    @classmethod
    def from_times(cls, times_s) -> "Frames":
        """Instantaneous samples (a TAC with one ``time`` column): zero-length frames are not
        allowed, so each sample becomes a 1 ms frame centred on its time."""
        t = np.asarray(times_s, dtype=np.float64)
        return cls(t - 5e-4, t + 5e-4)

    def __len__(self) -> int:
        return int(self.start_s.size)

    @property
    def duration_s(self) -> np.ndarray:
        return self.end_s - self.start_s

    @property
    def mid_s(self) -> np.ndarray:
        return 0.5 * (self.start_s + self.end_s)

    @property
    def start_min(self) -> np.ndarray:
        return self.start_s / 60.0

    @property
    def end_min(self) -> np.ndarray:
        return self.end_s / 60.0

    @property
    def mid_min(self) -> np.ndarray:
        return self.mid_s / 60.0


def check_frames(frames, what: str) -> None:
    """ParameterError unless ``frames`` is a :class:`Frames`."""
    if not isinstance(frames, Frames):
        raise ParameterError(f"{what}: frames must be a Frames (frame start and end times, s), "
                             f"not {type(frames).__name__}")


def check_curve(values, frames: Frames, what: str) -> np.ndarray:
    """A finite 1D curve with one value per frame."""
    check_frames(frames, what)
    try:
        y = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ParameterError(f"{what}: the values must be numbers, one per frame") from None
    if y.ndim != 1 or y.size != len(frames):
        raise ParameterError(f"{what}: {y.size} values for {len(frames)} frames")
    nan = np.flatnonzero(~np.isfinite(y))
    if nan.size:
        i = int(nan[0])
        raise ParameterError(f"{what}: value of frame {i} is {float(y[i])!r}; remove the frame or fix the curve")
    return y


def check_from_injection(frames: Frames) -> None:
    """ParameterError unless the first frame starts at or after the injection (t = 0)."""
    if frames.start_s[0] < 0:
        raise ParameterError(f"frames: the first frame starts at {frames.start_s[0]:g} s, before the injection "
                             "(t = 0); give times from the injection")


def check_dt_min(dt_min) -> float:
    """The grid step of a model's plasma or reference integrals: a number in (0, 0.1] min."""
    if not (isinstance(dt_min, (int, float, np.integer, np.floating)) and 0 < dt_min <= 0.1):
        raise ParameterError(f"dt_min must be in (0, 0.1] min, got {dt_min!r}")
    return float(dt_min)


def weights_label(weights) -> str:
    """How a fit records its weights: the scheme's name, or ``"user"`` for an array."""
    return weights if isinstance(weights, str) else "user"


def frame_weights(frames: Frames, weights="duration", *, half_life_s: float | None = None,
                  values=None) -> np.ndarray:
    """Least-squares weights per frame (normalised to mean 1).

    ``"uniform"``; ``"duration"`` (frame length: counts ~ duration); ``"decay"`` (frame
    length x decay factor exp(-lambda t_mid): variance of decay-corrected data grows as the
    counts fall; needs ``half_life_s``); or an array of user weights.
    """
    n = len(frames)
    if isinstance(weights, str):
        if weights == "uniform":
            w = np.ones(n)
        elif weights == "duration":
            w = frames.duration_s.copy()
        elif weights == "decay":
            if not half_life_s or half_life_s <= 0:
                raise ParameterError("weights='decay' needs the isotope's half-life (half_life_s)")
            w = frames.duration_s * np.exp(-math.log(2.0) * frames.mid_s / half_life_s)
        else:
            raise ParameterError(f"weights must be 'uniform', 'duration', 'decay' or an array, got {weights!r}")
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
            raise ParameterError(f"weights must be {n} finite non-negative numbers, not all zero")
    return w / w.mean()


def information_criteria(wrss: float, n: int, k: int) -> tuple[float, float, float]:
    """AIC, AICc and BIC of a weighted least-squares fit with ``k`` parameters to ``n`` points."""
    wrss = max(float(wrss), 1e-300)
    aic = n * math.log(wrss / n) + 2 * k
    aicc = aic + (2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else math.inf)
    bic = n * math.log(wrss / n) + k * math.log(n)
    return aic, aicc, bic


@dataclass
class KineticFit:
    """Result of a kinetic model fit.

    Attributes
    ----------
    model : str
        Model name (``"1tcm"``, ``"patlak"``, ...).
    params : dict of str to float
        Named parameters (K1 mL/cm^3/min, k2..k4 1/min, vB, VT mL/cm^3, Ki mL/cm^3/min,
        BPND, R1, delay_s, ...); ``units`` gives each unit.
    se : dict of str to float
        Standard errors (NaN where the fit could not estimate one; fixed parameters 0).
    aic, aicc, bic : float
    wrss : float
        Weighted residual sum of squares.
    n_points, n_params : int
    fitted : ndarray
        The model at the fitted parameters, one value per point used.
    residuals : ndarray
    units : dict of str to str
    info : dict
        Fit details: weights, t*, converged, message, fixed parameters, ...
    """

    model: str
    params: dict
    se: dict
    aic: float
    aicc: float
    bic: float
    wrss: float
    n_points: int
    n_params: int
    fitted: np.ndarray | None = None
    residuals: np.ndarray | None = None
    units: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        return self.params[name]

    def to_dict(self) -> dict:
        """``{param: value, ..., "se": {...}, "aic": value}`` (what ``invivo kinetics --json`` prints)."""
        out = {k: _num(v) for k, v in self.params.items()}
        out["se"] = {k: _num(v) for k, v in self.se.items()}
        out["aic"] = _num(self.aic)
        return out

    def summary(self) -> str:
        lines = [f"{self.model}: n={self.n_points}, k={self.n_params}, AIC {self.aic:.2f}"]
        for k, v in self.params.items():
            se = self.se.get(k, math.nan)
            lines.append(f"  {k:14s} {v:12.6g} +/- {se:.3g} {self.units.get(k, '')}".rstrip())
        return "\n".join(lines)


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else None


def least_squares(residual: Callable, params, *, method: str = "leastsq", starts: list[Mapping] | None = None,
                  max_nfev: int = 4000, **fit_kws):
    """Minimise ``residual(params) -> weighted residual vector`` with lmfit from one or more starts.

    Returns the best ``lmfit.MinimizerResult`` (lowest chi-square).  ``starts`` are dicts of
    starting values tried in addition to the values in ``params``.
    """
    import lmfit

    best = None
    for st in [None] + list(starts or []):
        p = params.copy()
        if st:
            for k, v in st.items():
                if k in p and p[k].vary:
                    p[k].set(value=float(np.clip(v, p[k].min, p[k].max)))
        try:
            res = lmfit.minimize(residual, p, method=method, max_nfev=max_nfev, nan_policy="raise", **fit_kws)
        except ValueError:  # NaN from the model at a start: skip it
            continue
        if best is None or (np.isfinite(res.chisqr) and res.chisqr < best.chisqr):
            best = res
    if best is None:
        raise ParameterError("the fit failed from every starting point (the model returned NaN): check the curve "
                             "and the input function")
    return best


def delta_se(res, grad: dict) -> float:
    """Standard error of a derived quantity by the delta method from an lmfit result's covariance
    (``grad``: d quantity / d parameter for the varying parameters; NaN without a covariance)."""
    if res.covar is None:
        return math.nan
    g = np.array([grad.get(n, 0.0) for n in res.var_names])
    var = float(g @ res.covar @ g)
    return math.sqrt(var) if var >= 0 else math.nan


def read_table(path, what: str):
    """A TSV/CSV table (separator sniffed) and ``{lower-case stripped name: column name}``.

    ParameterError naming the file when it is missing or unreadable."""
    from pathlib import Path

    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise ParameterError(f"{what} {p} does not exist")
    try:
        df = pd.read_csv(p, sep=None, engine="python")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ParameterError(f"{what} {p} is not a readable table ({exc})") from None
    return df, {c.strip().lower(): c for c in df.columns}
