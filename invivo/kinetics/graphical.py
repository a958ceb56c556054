"""Graphical (linearised) plasma-input models: Patlak (Ki) and Logan (VT), with t* selection.

After a time t* the transformed curves fall on a line, fitted by weighted linear
regression.  Patlak's slope and intercept carry standard errors from the regression
covariance; Logan's (and Logan-ref's) from the curve's noise propagated through the plot
(:func:`tac_space_cov`), since the measured curve is in both coordinates there and the
regression's own errors, which assume exact x, come out several times too small.

- Patlak (irreversible uptake): ``C_T(t) / C_p(t) = Ki int_0^t C_p / C_p(t) + V0``.
- Logan (reversible uptake): ``int_0^t C_T / C_T(t) = VT int_0^t C_p / C_T(t) + b``
  (``b = -1 / k2`` for a one-tissue curve, min).

Frame-consistent transforms.  The PET measures frame averages, so both equations are
averaged over each frame before dividing (``<.>_i`` is the mean over frame ``i``):

- Patlak: ``x_i = <int C_p>_i / <C_p>_i``, ``y_i = C_T,i / <C_p>_i``;
- Logan: ``x_i = <int C_p>_i / C_T,i``, ``y_i = <int C_T>_i / C_T,i``.

The plasma terms come exactly from the :class:`InputFunction` (linear between its
samples) on a fine grid that holds every sample and frame boundary, so a curve that
obeys the Patlak equation at all times is *exactly* linear in these coordinates.  The
tissue integral ``<int C_T>_i`` is estimated from the frame averages (:func:`tissue_integral`):
exact up to each frame start for back-to-back frames, half the current frame added
(error ``s d^2 / 12`` for a curve of slope ``s`` within a frame of length ``d``).

t* selection (``tstar_s=None``): the earliest frame start such that at least
``min_points`` frames remain and every one of them lies within ``max_rel_residual``
(default 10 %, kinfitr's "maximum percentage variance") of the weighted line fitted to
them, ``|y_i - yhat_i| <= max_rel_residual |yhat_i|``.  When no start qualifies the last
``min_points`` frames are used with an :class:`InvivoWarning` (``info["tstar_linear"]``
is then False).  Frames whose transform is undefined (a zero denominator, e.g. before the
tracer arrives) cannot start the line.

Examples
--------
>>> import numpy as np
>>> frames = Frames.from_durations([60] * 5 + [300] * 10)
>>> t = np.arange(0, 3601, 10.0)
>>> inp = InputFunction(t, 100 * (t / 60) * np.exp(-t / 60) + 10 * np.exp(-t / 3000))
>>> fit = Patlak().fit(Patlak.simulate(frames, inp, Ki=0.02, V0=0.3), frames, inp)
>>> round(fit.params["Ki"], 8), round(fit.params["V0"], 8)
(0.02, 0.3)
>>> fit = Logan().fit(Logan.simulate(frames, inp, VT=1.5, intercept=-8.0), frames, inp)
>>> round(fit.params["VT"], 8), round(fit.params["intercept"], 6)
(1.5, -8.0)
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..errors import InvivoWarning, ParameterError
from .base import (Frames, KineticFit, check_curve, check_dt_min, check_from_injection, frame_weights,
                   information_criteria, weights_label)
from .inputs import InputFunction
from .simulate import fine_grid, frame_average, grid_index, integrate

__all__ = ["Patlak", "Logan", "weighted_line", "select_tstar", "tissue_integral", "plasma_terms", "tac_space_cov"]


# ---------------------------------------------------------------------------------------------- pure functions
def weighted_line(x, y, w):
    """Weighted least-squares line ``y = intercept + slope x``.

    Parameters
    ----------
    x, y : (n,) array
    w : (n,) array of non-negative weights (inverse variances up to a common factor)

    Returns
    -------
    slope, intercept : float
    cov : (2, 2) ndarray
        Covariance of (slope, intercept): ``s^2 (X^T W X)^-1`` with
        ``s^2 = WRSS / (n - 2)`` (NaN when n <= 2).
    wrss : float
        Weighted residual sum of squares.

    Examples
    --------
    >>> s, b, cov, wrss = weighted_line([0, 1, 2, 3], [1, 3, 5, 7], [1, 1, 1, 1])
    >>> round(s, 12), round(b, 12), round(wrss, 12)
    (2.0, 1.0, 0.0)
    """
    x, y, w = (np.asarray(a, dtype=np.float64) for a in (x, y, w))
    if not (x.ndim == 1 and x.shape == y.shape == w.shape and x.size >= 2):
        raise ParameterError(f"weighted_line: x, y and w must be 1D of one length >= 2, got shapes {x.shape}, "
                             f"{y.shape} and {w.shape}")
    sw = w.sum()
    if not sw > 0:
        raise ParameterError("graphical fit: every frame used has weight 0; no line can be fitted "
                             "(give positive weights to the frames from t* on)")
    xm = float(w @ x) / sw
    ym = float(w @ y) / sw
    dx = x - xm
    sxx = float(w @ (dx * dx))
    if not sxx > 0:
        raise ParameterError("graphical fit: the points used have one x value; no line can be fitted "
                             "(choose an earlier t* or check the curves)")
    slope = float(w @ (dx * (y - ym))) / sxx
    intercept = float(ym - slope * xm)
    r = y - intercept - slope * x
    wrss = float(w @ (r * r))
    n = x.size
    s2 = wrss / (n - 2) if n > 2 else math.nan
    # (X^T W X)^-1 for X = [x, 1], written in centred form
    var_s = s2 / sxx
    var_b = s2 * (1.0 / sw + xm * xm / sxx)
    cov_sb = -s2 * xm / sxx
    return slope, intercept, np.array([[var_s, cov_sb], [cov_sb, var_b]]), wrss


def select_tstar(frames: Frames, x, y, w, *, tstar_s=None, min_points: int = 3, max_rel_residual: float = 0.10,
                 what: str = "graphical fit"):
    """First frame of the linear part (see the module notes).

    Parameters
    ----------
    frames : Frames
    x, y : (n,) array
        Transformed coordinates; NaN where undefined.
    w : (n,) array
        Regression weights.
    tstar_s : float, optional
        Override (s): the frames starting at or after it are used.
    min_points, max_rel_residual
        The automatic criterion.

    Returns
    -------
    first : int
        Index of the first frame used.
    info : dict
        ``tstar_s`` (start of that frame), ``tstar_auto``, ``tstar_linear`` (criterion met),
        ``max_rel_residual`` (largest relative residual of the points used).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.size
    ok = np.isfinite(x) & np.isfinite(y)
    # a start k is admissible when every frame from k on is defined
    tail_ok = np.flip(np.cumprod(np.flip(ok))).astype(bool)

    def rel_resid(k):
        s, b, _, _ = weighted_line(x[k:], y[k:], w[k:])
        fit = b + s * x[k:]
        return float(np.max(np.abs(y[k:] - fit) / np.maximum(np.abs(fit), 1e-300)))

    if tstar_s is not None:
        t = float(tstar_s)
        if not math.isfinite(t):
            raise ParameterError(f"{what}: tstar_s must be a number of seconds, got {tstar_s!r}")
        k = int(np.searchsorted(frames.start_s, t - 1e-6))
        if n - k < min_points:
            raise ParameterError(f"{what}: {n - k} frames start at or after t* = {t:g} s; at least {min_points} "
                                 "are needed: choose an earlier tstar_s")
        bad = np.flatnonzero(~ok[k:])
        if bad.size:
            raise ParameterError(f"{what}: frame {k + int(bad[0])} after t* = {t:g} s has a zero or negative "
                                 "denominator in the graphical transform: choose a later tstar_s or check the curves")
        return k, {"tstar_s": float(frames.start_s[k]), "tstar_auto": False, "tstar_linear": True,
                   "max_rel_residual": rel_resid(k)}
    if n < min_points:
        raise ParameterError(f"{what}: {n} frames; the graphical model needs at least {min_points} (min_points)")
    last = n - min_points
    if not tail_ok[last]:
        bad = int(np.flatnonzero(~ok)[-1])
        raise ParameterError(f"{what}: the graphical transform is undefined at frame {bad} (zero or negative "
                             "denominator) among the last frames: check the curves")
    for k in range(0, last + 1):
        if not tail_ok[k]:
            continue
        r = rel_resid(k)
        if r <= max_rel_residual:
            return k, {"tstar_s": float(frames.start_s[k]), "tstar_auto": True, "tstar_linear": True,
                       "max_rel_residual": r}
    r = rel_resid(last)
    msg = (f"{what}: no t* gives a line within {100 * max_rel_residual:g} % of every point; the last {min_points} "
           f"frames (from {frames.start_s[last]:g} s) were used")
    warnings.warn(msg, InvivoWarning, stacklevel=4)  # the caller of Model.fit
    return last, {"tstar_s": float(frames.start_s[last]), "tstar_auto": True, "tstar_linear": False,
                  "max_rel_residual": r, "warning": msg}


def tac_space_cov(plot, tac, first, w, slope, intercept):
    """Covariance of a graphical fit's (slope, intercept) from the noise of the measured curve.

    Where the measured curve sits in both coordinates of the plot (Logan: ``C_T`` divides x and y, and its
    running integral is in y), the plot's points share their noise and lie off the line in both directions,
    so the regression's covariance, which assumes exact x and independent y, is several times too small
    (4.5x for Logan VT in ``phantoms/validate_kinetics.py``).  Here the frames' noise is propagated instead,
    to first order:

    - each frame ``j`` of the curve has variance ``s^2 / w_j`` (the regression weights are inverse
      variances up to the common factor ``s^2``; a frame of weight 0 gets the largest variance of the others);
    - ``J`` = d(slope, intercept) / dC and ``G`` = d(residuals of the points used) / dC, by central
      differences over every frame (the frames before t* enter the running integral);
    - ``s^2 = r' (G V G')^-1 r / (m - 2)`` from the m residuals ``r`` at the fit (their covariance under
      that noise is ``s^2 G V G'``, ``V = diag(1 / w)``), and the covariance is ``s^2 J V J'``.

    Parameters
    ----------
    plot : callable
        ``plot(C) -> (x, y)`` of the plot for curves ``C`` of shape (..., n), frames on the last axis.
    tac : (n,) array
        The measured curve.
    first : int
        First frame on the line.
    w : (n,) array
        Regression weights.
    slope, intercept : float
        The fit.

    Returns
    -------
    (2, 2) ndarray or None
        None where it cannot be formed (fewer than 3 points, a non-finite plot near the curve, a singular
        residual covariance): the caller keeps the regression's.
    """
    c = np.asarray(tac, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n = c.size
    m = n - first
    pos = w > 0
    if m < 3 or not pos.any():
        return None
    var = np.where(pos, 1.0 / np.where(pos, w, 1.0), float(np.max(1.0 / w[pos])))
    h = 1e-5 * (np.abs(c) + 1e-3 * float(np.max(np.abs(c))))
    if not np.all(h > 0):
        return None
    x, y = plot(c[None, :] + np.concatenate([np.diag(h), -np.diag(h)]))  # (2n, n): every frame, up and down
    x0, y0 = plot(c)
    xs, ys, ws = x[:, first:], y[:, first:], w[first:]
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        return None
    sw = ws.sum()
    xm, ym = xs @ ws / sw, ys @ ws / sw
    dx = xs - xm[:, None]
    slopes = ((dx * (ys - ym[:, None])) @ ws) / ((dx * dx) @ ws)
    theta = np.stack([slopes, ym - slopes * xm], axis=1)
    jac = ((theta[:n] - theta[n:]) / (2.0 * h[:, None])).T  # (2, n)
    res = ys - intercept - slope * xs
    g = ((res[:n] - res[n:]) / (2.0 * h[:, None])).T  # (m, n)
    r0 = y0[first:] - intercept - slope * x0[first:]
    sigma_r = (g * var) @ g.T
    try:
        s2 = float(r0 @ np.linalg.solve(sigma_r, r0)) / (m - 2)
    except np.linalg.LinAlgError:
        return None
    cov = s2 * (jac * var) @ jac.T
    return cov if np.all(np.isfinite(cov)) and s2 >= 0 else None


def tissue_integral(values, frames: Frames) -> np.ndarray:
    """Estimate of the frame mean of ``int_0^t C(s) ds`` (unit of C x min) from frame averages ``C_i``.

    ``int_0^{start_i} C`` is the sum of the earlier frames' averages x durations (exact for
    back-to-back frames); a gap between frames is bridged by a trapezoid between the
    neighbouring averages and the time before the first frame by a line from 0 at t = 0;
    half the current frame (``C_i d_i / 2``) is added.

    Examples
    --------
    >>> f = Frames([0, 60, 120], [60, 120, 240])
    >>> tissue_integral([1.0, 1.0, 1.0], f).tolist()   # a constant curve: <t>_i, min
    [0.5, 1.5, 3.0]

    ``values`` may hold many curves, ``(..., n)``, the frames on the last axis.
    """
    c = np.asarray(values, dtype=np.float64)
    if c.shape[-1:] != (len(frames),):
        raise ParameterError(f"tissue_integral: {c.shape[-1] if c.ndim else 1} values per curve for "
                             f"{len(frames)} frames")
    d = frames.duration_s / 60.0
    gaps = frames.start_min[1:] - frames.end_min[:-1]
    inc = c[..., :-1] * d[:-1] + np.maximum(gaps, 0.0) * 0.5 * (c[..., :-1] + c[..., 1:])
    start_int = (0.5 * c[..., :1] * max(float(frames.start_min[0]), 0.0)
                 + np.concatenate([np.zeros_like(c[..., :1]), np.cumsum(inc, axis=-1)], axis=-1))
    return start_int + 0.5 * c * d


def _double_integral(t, c):
    """``J(t) = int_0^t int_0^u c`` exactly for ``c`` linear between grid points (``t`` min)."""
    h = np.diff(t)
    i1 = integrate(t, c)
    inc = h * i1[:-1] + h * h * (2.0 * c[:-1] + c[1:]) / 6.0
    out = np.zeros_like(i1)
    np.cumsum(inc, out=out[1:])
    return out


def _frame_mean_from_cumulative(t, cum, frames: Frames):
    i0 = grid_index(t, frames.start_min)
    i1 = grid_index(t, frames.end_min)
    return (cum[i1] - cum[i0]) / (frames.end_min - frames.start_min)


def plasma_terms(frames: Frames, inp: InputFunction, *, dt_min: float = 0.05):
    """Frame means of the plasma curve, of its running integral, and of the whole-blood curve.

    Exact for the input function (linear between its samples): the grid holds every
    sample time and frame boundary.

    Returns
    -------
    cp, icp, cb : (n,) arrays
        ``<C_p>_i`` (Bq/mL), ``<int_0^t C_p>_i`` (Bq/mL x min), ``<C_B>_i`` (Bq/mL).
    """
    if not isinstance(inp, InputFunction):
        raise ParameterError(f"the plasma input must be an InputFunction (samples against time, s), not "
                             f"{type(inp).__name__}; a reference region's curve goes to srtm, logan-ref or patlak-ref")
    check_from_injection(frames)
    inp.check_covers(frames)
    knots = inp.times_s / 60.0
    t = fine_grid(frames, dt_min=dt_min, extra_min=knots[knots < frames.end_min[-1]])
    cp = inp.plasma_at(t * 60.0)
    cb = inp.blood_at(t * 60.0)
    return (frame_average(t, cp, frames), _frame_mean_from_cumulative(t, _double_integral(t, cp), frames),
            frame_average(t, cb, frames))


# ---------------------------------------------------------------------------------------------- models
class _GraphicalModel:
    """What the graphical models share (Patlak, Logan here; Logan-ref, Patlak-ref in
    :mod:`invivo.kinetics.reference`): the options, t* selection and the weighted line.

    A model names its slope and intercept and turns the checked curve into the plot's
    coordinates in ``_plot(y, frames, source) -> (x, y, info)`` (``source``: the plasma
    input or the reference curve); its public ``fit`` calls :meth:`_fit`.
    """

    name = ""
    slope = ""
    intercept = ""
    units: dict = {}
    #: the measured curve is in both coordinates of the plot (Logan): standard errors by tac_space_cov
    noise_in_x = False

    def __init__(self, *, tstar_s: float | None = None, min_points: int = 3, max_rel_residual: float = 0.10,
                 weights="duration", half_life_s: float | None = None, dt_min: float = 0.05):
        """
        Parameters
        ----------
        tstar_s : float, optional
            t* (s): frames starting at or after it are fitted; ``None`` (default) selects it
            automatically (module notes).
        min_points : int
            Fewest frames on the line (>= 3, so that the standard errors exist).
        max_rel_residual : float
            Linearity criterion of the automatic t* (fraction, default 0.10).
        weights : "duration", "decay", "uniform" or array
            Regression weights per frame (:func:`invivo.kinetics.base.frame_weights`).
        half_life_s : float, optional
            For ``weights="decay"``.
        dt_min : float
            Grid step for the plasma integrals (min, <= 0.1).
        """
        if tstar_s is not None and not (isinstance(tstar_s, (int, float, np.floating, np.integer))
                                        and math.isfinite(float(tstar_s)) and float(tstar_s) >= 0):
            raise ParameterError(f"tstar_s must be a time in s >= 0 or None (automatic), got {tstar_s!r}")
        if not (isinstance(min_points, (int, np.integer)) and min_points >= 3):
            raise ParameterError(f"min_points must be an integer >= 3, got {min_points!r}")
        if not (isinstance(max_rel_residual, (int, float, np.floating)) and 0 < max_rel_residual < 1):
            raise ParameterError(f"max_rel_residual must be a fraction in (0, 1), got {max_rel_residual!r}")
        self.tstar_s = None if tstar_s is None else float(tstar_s)
        self.min_points = int(min_points)
        self.max_rel_residual = float(max_rel_residual)
        self.weights = weights
        self.half_life_s = half_life_s
        self.dt_min = check_dt_min(dt_min)

    def __repr__(self) -> str:
        t = "auto" if self.tstar_s is None else f"{self.tstar_s:g} s"
        return f"{type(self).__name__}(tstar={t}, weights={weights_label(self.weights)})"

    def _fit(self, tac, frames: Frames, source, region: str) -> KineticFit:
        """Check the curve, transform it (``_plot``), select t* and fit the line."""
        what = f"{self.name} fit of {region or 'the curve'}"
        y = check_curve(tac, frames, what)
        x, yy, extra_info = self._plot(y, frames, source)
        w = frame_weights(frames, self.weights, half_life_s=self.half_life_s)
        k, tinfo = select_tstar(frames, x, yy, w, tstar_s=self.tstar_s, min_points=self.min_points,
                                max_rel_residual=self.max_rel_residual, what=what)
        xs, ys, ws = x[k:], yy[k:], w[k:]
        slope, icpt, cov, wrss = weighted_line(xs, ys, ws)
        se_method = "regression"
        if self.noise_in_x:  # the regression's covariance assumes exact x: propagate the curve's noise instead
            tac_cov = tac_space_cov(lambda c: self._plot(c, frames, source)[:2], y, k, w, slope, icpt)
            if tac_cov is not None:
                cov, se_method = tac_cov, "tac-space"
            else:
                warnings.warn(f"{what}: the curve's noise could not be propagated through the {self.name} plot "
                              "(a frame near a zero denominator, or a singular residual covariance); the standard "
                              "errors are the regression's, which assume exact x and come out too small",
                              InvivoWarning, stacklevel=4)
        fitted = icpt + slope * xs
        aic, aicc, bic = information_criteria(wrss, xs.size, 2)
        params = {self.slope: slope, self.intercept: icpt}
        se = {self.slope: _sqrt(cov[0, 0]), self.intercept: _sqrt(cov[1, 1])}
        for name, val, grad in self._derived(slope, icpt):
            g = np.array([grad.get(self.slope, 0.0), grad.get(self.intercept, 0.0)])
            params[name] = val
            se[name] = _sqrt(float(g @ cov @ g))
        info = {"weights": weights_label(self.weights), "se_method": se_method, **tinfo,
                "frames_used": list(range(k, x.size)),
                "n_frames": int(x.size), "x": x, "y": yy, "cov": cov,
                "space": f"{self.name} plot (fitted and residuals are y of the plot)", "region": region, **extra_info}
        return KineticFit(model=self.name, params=params, se=se, aic=aic, aicc=aicc, bic=bic, wrss=wrss,
                          n_points=int(xs.size), n_params=2, fitted=fitted, residuals=ys - fitted,
                          units={p: self.units.get(p, "") for p in params}, info=info)

    def _plot(self, y, frames: Frames, source):
        raise NotImplementedError

    def _derived(self, slope, intercept):
        return []


def _sqrt(v):
    v = float(v)
    return math.sqrt(v) if v >= 0 else math.nan


def _ratio(num, den):
    """num / den where den > 0, NaN elsewhere (undefined points of a graphical plot)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _patlak_xy(tac, conc, integral):
    """Patlak plot of a tissue curve against an input curve (plasma or reference) ``conc`` with
    running-integral frame means ``integral``: ``x = integral / conc``, ``y = tac / conc``."""
    return _ratio(integral, conc), _ratio(tac, conc)


def _logan_xy(tac, x_numerator, frames: Frames):
    """Logan plot of a tissue curve: ``x = x_numerator / tac``, ``y = <int tac> / tac``."""
    return _ratio(x_numerator, tac), _ratio(tissue_integral(tac, frames), tac)


def _solve_logan(frames: Frames, rhs, intercept: float, what: str):
    """Frame averages ``C`` with ``tissue_integral(C) = rhs + intercept C`` (intercept < 0 min)."""
    from scipy.linalg import solve_triangular

    if not intercept < 0:
        raise ParameterError(f"{what}: intercept must be negative (min), got {intercept!r}")
    n = len(frames)
    # tissue_integral is linear and lower triangular in C: tissue_integral(C) = a @ C
    a = tissue_integral(np.eye(n), frames).T
    return solve_triangular(a - intercept * np.eye(n), np.asarray(rhs, dtype=np.float64), lower=True)


class Patlak(_GraphicalModel):
    """Patlak plot: net influx rate Ki (slope, mL/cm^3/min) and intercept V0 (mL/cm^3).

    ``x_i = <int_0^t C_p>_i / <C_p>_i`` (min), ``y_i = C_PET,i / <C_p>_i``; the PET curve
    is used as measured (blood volume is part of V0).  Example: the module docstring.
    """

    name = "patlak"
    slope = "Ki"
    intercept = "V0"
    units = {"Ki": "mL/cm3/min", "V0": "mL/cm3"}

    @staticmethod
    def simulate(frames: Frames, inp: InputFunction, *, Ki: float, V0: float, dt_min: float = 0.05):
        """Frame-averaged ``Ki int_0^t C_p + V0 C_p`` (Bq/mL): the curve that is exactly linear
        in the Patlak plot (slope Ki mL/cm^3/min, intercept V0 mL/cm^3)."""
        cp, icp, _ = plasma_terms(frames, inp, dt_min=dt_min)
        return Ki * icp + V0 * cp

    def fit(self, tac, frames: Frames, inp: InputFunction, *, region: str = "") -> KineticFit:
        """Fit one time-activity curve (Bq/mL per frame, decay corrected).

        Parameters
        ----------
        tac : (n,) array
            Frame-averaged tissue (PET) concentration, Bq/mL.
        frames : Frames
            Frame timing (s).
        inp : InputFunction
            Plasma input (must cover the scan).
        region : str
            Name recorded in the result and used in error messages.

        Returns
        -------
        KineticFit
            ``Ki`` (mL/cm^3/min), ``V0`` (mL/cm^3) with SEs; ``info`` holds t*, the frames used
            and the plot coordinates.
        """
        return self._fit(tac, frames, inp, region)

    def _plot(self, y, frames, inp):
        cp, icp, _ = plasma_terms(frames, inp, dt_min=self.dt_min)
        return (*_patlak_xy(y, cp, icp), {"input": inp.description})


class Logan(_GraphicalModel):
    """Logan plot: total volume of distribution VT (slope, mL/cm^3) and intercept (min).

    ``x_i = <int_0^t C_p>_i / C_T,i`` (min), ``y_i = <int_0^t C_T>_i / C_T,i`` (min), the
    tissue integral from the frame averages (:func:`tissue_integral`).  With ``vB`` the
    blood is removed first: ``C_T = (C_PET - vB <C_B>) / (1 - vB)``.  Example: the module
    docstring.
    """

    name = "logan"
    slope = "VT"
    intercept = "intercept"
    units = {"VT": "mL/cm3", "intercept": "min"}
    noise_in_x = True

    def __init__(self, *, vB: float = 0.0, **options):
        """
        Parameters
        ----------
        vB : float
            Blood volume fraction removed before the plot (default 0).
        **options
            t*, weights and grid options of the graphical models (see ``Patlak``).
        """
        if not (isinstance(vB, (int, float, np.floating)) and 0.0 <= vB < 1.0):
            raise ParameterError(f"vB must be a fraction in [0, 1), got {vB!r}")
        super().__init__(**options)
        self.vB = float(vB)

    @staticmethod
    def simulate(frames: Frames, inp: InputFunction, *, VT: float, intercept: float, dt_min: float = 0.05):
        """Frame-averaged tissue curve (Bq/mL) that is exactly linear in this Logan plot from the
        first frame: ``<int C_T>_i = VT <int C_p>_i + intercept C_T,i`` solved frame by frame
        (the frame-level analogue of a one-tissue curve, K1 = -VT / intercept, k2 = -1 / intercept;
        ``intercept`` < 0 min)."""
        _, icp, _ = plasma_terms(frames, inp, dt_min=dt_min)
        return _solve_logan(frames, VT * icp, intercept, "Logan.simulate")

    def fit(self, tac, frames: Frames, inp: InputFunction, *, region: str = "") -> KineticFit:
        """Fit one time-activity curve (Bq/mL per frame, decay corrected); see ``Patlak.fit``.

        Returns
        -------
        KineticFit
            ``VT`` (mL/cm^3) and ``intercept`` (min) with SEs.
        """
        return self._fit(tac, frames, inp, region)

    def _plot(self, y, frames, inp):
        _, icp, cb = plasma_terms(frames, inp, dt_min=self.dt_min)
        ct = (y - self.vB * cb) / (1.0 - self.vB) if self.vB else y
        return (*_logan_xy(ct, icp, frames), {"input": inp.description, "vB": self.vB})
