"""CAR-T cell models: cellular kinetics (``cart-ck``) and 89Zr-oxine direct-label trafficking.

Two ways of following CAR-T cells in vivo see different things:

- **Cellular kinetics** (:class:`CartCK`, registered as ``"cart-ck"``), from reporter-gene
  imaging or blood counts (cells/uL, transgene copies/ug DNA), which *do* see
  expansion.  The Stein et al. (2019, tisagenlecleucel) model: exponential expansion
  until ``tmax_d``, then a bi-exponential contraction and persistence::

      C(t) = C0 exp(rho t)                                        t <= Tmax
      C(t) = Cmax [(1 - fb) e^(-alpha (t - Tmax)) + fb e^(-beta (t - Tmax))]   t > Tmax
      rho = ln(fold_expansion) / Tmax,   C0 = Cmax / fold_expansion

  Times in days, rates per day, values in the input's own units.
- **Direct labels** (89Zr-oxine), which *cannot* see expansion: the label of a cell
  is split between its daughters, so activity measures labeled-cell equivalents.
  :func:`cells_from_activity` turns activity into cell equivalents from the activity
  per cell at labeling, physical decay and a label-retention (efflux) model
  (:class:`LabelRetention`); :class:`CellTrafficking` is a linear multi-organ
  compartment model (blood, lung, liver, spleen, tumour, other tissues; released
  89Zr to bone and liver) fitted to %ID-per-organ time courses.  Rates per hour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..errors import ParameterError
from ..isotopes import decay_factor, lookup
from .base import Frames, KineticFit, information_criteria

__all__ = ["CartCK", "cart_ck_curve", "cart_ck_auc", "STEIN_2019_TYPICAL", "LabelRetention", "cells_from_activity",
           "CellTrafficking", "TRAFFICKING_DEMO_RATES_PER_H"]

LN2 = math.log(2.0)

#: Typical tisagenlecleucel cellular kinetics (Stein et al. 2019; transgene copies/ug genomic DNA, days).
STEIN_2019_TYPICAL = {"cmax": 24000.0, "tmax_d": 9.3, "fold_expansion": 3900.0, "alpha_per_d": 0.16,
                      "beta_per_d": 0.0032, "fb": 0.0079}

CK_PARAMS = ("tmax_d", "cmax", "fold_expansion", "alpha_per_d", "beta_per_d", "fb")


# ---------------------------------------------------------------------------------------------------------
# input checks
def _times(t, what: str, name: str = "t_d") -> np.ndarray:
    if isinstance(t, Frames):
        t = t.mid_s / 86400.0
    a = np.atleast_1d(np.asarray(t, dtype=np.float64))
    if a.ndim != 1 or a.size == 0:
        raise ParameterError(f"{what}: {name} must be a 1D array of sample times, got shape {a.shape}")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise ParameterError(f"{what}: {name}[{int(bad[0])}] is {a[bad[0]]!r}; sample times must be finite")
    neg = np.flatnonzero(a < 0)
    if neg.size:
        raise ParameterError(f"{what}: {name}[{int(neg[0])}] = {a[neg[0]]:g} is negative; times are counted from "
                             "the infusion / injection (t = 0)")
    return a


def _positive(value, name: str, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ParameterError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} finite number, "
                             f"got {value!r}")
    return v


def _check_ck(cmax, tmax_d, fold_expansion, alpha_per_d, beta_per_d, fb) -> tuple[float, ...]:
    cmax = _positive(cmax, "cmax")
    tmax_d = _positive(tmax_d, "tmax_d (d)")
    fold = _positive(fold_expansion, "fold_expansion")
    if fold < 1.0:
        raise ParameterError(f"fold_expansion must be >= 1 (Cmax / C0), got {fold_expansion!r}")
    a = _positive(alpha_per_d, "alpha_per_d (1/d)", allow_zero=True)
    b = _positive(beta_per_d, "beta_per_d (1/d)", allow_zero=True)
    f = float(fb)
    if not (0.0 <= f <= 1.0):
        raise ParameterError(f"fb (the persistent fraction) must be in [0, 1], got {fb!r}")
    return cmax, tmax_d, fold, a, b, f


# ---------------------------------------------------------------------------------------------------------
# cellular kinetics: pure functions
def _ck_log(t, T, lnM, lnF, a, b, fb, *, jac: bool = False):
    """ln C(t) and, with ``jac``, d ln C / d (T, lnM, lnF, ln a, ln b, fb), shape (n, 6)."""
    pre = t <= T
    s = np.where(pre, 0.0, t - T)
    with np.errstate(divide="ignore"):
        la = math.log1p(-fb) if fb < 1.0 else -math.inf
        lb = math.log(fb) if fb > 0.0 else -math.inf
    ea, eb = la - a * s, lb - b * s
    lng = np.logaddexp(ea, eb)
    out = np.where(pre, lnM - lnF * (1.0 - t / T), lnM + lng)
    if not jac:
        return out
    wa, wb = np.exp(ea - lng), np.exp(eb - lng)  # shares of the two phases, sum 1
    J = np.zeros((t.size, 6))
    J[:, 0] = np.where(pre, -lnF * t / T ** 2, a * wa + b * wb)
    J[:, 1] = 1.0
    J[:, 2] = np.where(pre, -(1.0 - t / T), 0.0)
    J[:, 3] = np.where(pre, 0.0, -a * s * wa)
    J[:, 4] = np.where(pre, 0.0, -b * s * wb)
    J[:, 5] = np.where(pre, 0.0, np.exp(-b * s - lng) - np.exp(-a * s - lng))
    return out, J


def cart_ck_curve(t_d, *, cmax: float, tmax_d: float, fold_expansion: float, alpha_per_d: float,
                  beta_per_d: float, fb: float) -> np.ndarray:
    """The Stein (2019) CAR-T cellular-kinetics curve.

    Parameters
    ----------
    t_d : array of float, days after infusion (>= 0)
    cmax : float
        Peak level (units of the data: cells/uL, copies/ug, reporter signal).
    tmax_d : float
        Time of the peak (d).
    fold_expansion : float
        Cmax / C0 (>= 1); the expansion rate is ``rho = ln(fold_expansion) / tmax_d``.
    alpha_per_d, beta_per_d : float
        Contraction and persistence rate constants (1/d).
    fb : float
        Persistent fraction at the peak, in [0, 1].

    Returns
    -------
    ndarray of float, same shape as ``t_d``, units of ``cmax``.

    Examples
    --------
    >>> c = cart_ck_curve([0.0, 9.3, 28.0], **STEIN_2019_TYPICAL)
    >>> [round(float(v), 2) for v in c]
    [6.15, 24000.0, 1373.56]
    """
    t = _times(t_d, "cart_ck_curve")
    M, T, F, a, b, f = _check_ck(cmax, tmax_d, fold_expansion, alpha_per_d, beta_per_d, fb)
    out = np.exp(_ck_log(t, T, math.log(M), math.log(F), a, b, f))
    return out.reshape(np.shape(t_d)) if np.ndim(t_d) else out


def _phi(k: float, L: float) -> float:
    """int_0^L exp(-k s) ds (-> L as k -> 0)."""
    x = k * L
    return L if abs(x) < 1e-300 else -math.expm1(-x) / k


def cart_ck_auc(t_end_d: float = 28.0, *, cmax: float, tmax_d: float, fold_expansion: float, alpha_per_d: float,
                beta_per_d: float, fb: float) -> float:
    """Area under the CAR-T kinetics curve from the infusion (t = 0) to ``t_end_d`` (value x day), exact.

    ``AUC = C0 (e^(rho T1) - 1) / rho + Cmax [(1 - fb) (1 - e^(-alpha L)) / alpha + fb (1 - e^(-beta L)) / beta]``
    with ``T1 = min(Tmax, t_end)``, ``L = max(t_end - Tmax, 0)``, ``C0 = Cmax / fold``.

    Examples
    --------
    >>> round(cart_ck_auc(28.0, **STEIN_2019_TYPICAL))
    171774
    """
    L_end = _positive(t_end_d, "t_end_d (d)", allow_zero=True)
    M, T, F, a, b, f = _check_ck(cmax, tmax_d, fold_expansion, alpha_per_d, beta_per_d, fb)
    rho = math.log(F) / T
    T1 = min(T, L_end)
    c0 = M / F
    pre = c0 * T1 if rho * T1 < 1e-12 else c0 * math.expm1(rho * T1) / rho
    L = max(L_end - T, 0.0)
    post = M * ((1.0 - f) * _phi(a, L) + f * _phi(b, L)) if L > 0 else 0.0
    return float(pre + post)


# ---------------------------------------------------------------------------------------------------------
class CartCK:
    """CAR-T cellular kinetics with expansion, contraction and persistence (Stein et al. 2019).

    Fitted to reporter-gene imaging or blood counts (cells/uL, transgene copies/ug) over
    days.  Parameters ``tmax_d`` (d), ``cmax`` (data units), ``fold_expansion``,
    ``alpha_per_d``, ``beta_per_d`` (1/d) and ``fb``; derived ``auc_0_28`` (data units x d,
    exact integral from 0 to 28 d), ``half_life_alpha_d = ln 2 / alpha``,
    ``half_life_beta_d = ln 2 / beta`` and ``rho_per_d = ln(fold) / tmax_d``.

    Parameters
    ----------
    weights : {"log", "uniform"}
        ``"log"`` (default) fits ln(values): counts and imaging signals span decades and
        their error is roughly proportional; ``"uniform"`` fits the values themselves.
    tmax_d : float, optional
        Fix the time of the peak (d); ``None`` (default) fits it.
    units : str
        Units of the values (recorded in the fit's ``units``).

    Notes
    -----
    Tmax is a breakpoint: the least-squares cost is smooth in Tmax between sample times
    but has a kink at each of them.  The fit profiles the cost over a grid of Tmax
    values between the samples around the observed peak (the other five parameters
    fitted at each), then refines all six from the two best grid points.  The phase
    labels are ordered so that ``alpha_per_d >= beta_per_d``.  At least one sample
    before the peak is needed (it sets ``fold_expansion``).

    Examples
    --------
    >>> t = [1, 3, 5, 7, 9, 11, 14, 21, 28, 60, 90, 180, 365]
    >>> y = cart_ck_curve(t, **STEIN_2019_TYPICAL)
    >>> fit = CartCK(units="copies/ug").fit(t, y)
    >>> round(fit.params["tmax_d"], 6), round(fit.params["half_life_alpha_d"], 3)
    (9.3, 4.332)
    """

    name = "cart-ck"
    WEIGHTS = ("log", "uniform")

    def __init__(self, *, weights: str = "log", tmax_d: float | None = None, units: str = ""):
        self.weights = self._check_weights(weights)
        self.tmax_d = None if tmax_d is None else _positive(tmax_d, "tmax_d (d)")
        self.units = str(units)

    def __repr__(self) -> str:
        return (f"CartCK(weights={self.weights!r}, tmax_d={'fitted' if self.tmax_d is None else self.tmax_d}, "
                f"units={self.units!r})")

    @classmethod
    def _check_weights(cls, weights) -> str:
        if weights not in cls.WEIGHTS:
            raise ParameterError(f"cart-ck: weights must be one of {', '.join(cls.WEIGHTS)}, got {weights!r}")
        return weights

    @property
    def param_names(self) -> tuple[str, ...]:
        return CK_PARAMS

    def simulate(self, t_d, *, cmax: float, tmax_d: float, fold_expansion: float, alpha_per_d: float,
                 beta_per_d: float, fb: float) -> np.ndarray:
        """The model at times ``t_d`` (d): :func:`cart_ck_curve`."""
        return cart_ck_curve(t_d, cmax=cmax, tmax_d=tmax_d, fold_expansion=fold_expansion, alpha_per_d=alpha_per_d,
                             beta_per_d=beta_per_d, fb=fb)

    # ------------------------------------------------------------------ fitting
    def fit(self, t_d, values, *, region: str = "", weights: str | None = None, tmax_d: float | None = None,
            units: str | None = None) -> KineticFit:
        """Fit one time course.

        Parameters
        ----------
        t_d : array of float or Frames
            Sample times, days after infusion (>= 0; any order, replicates allowed).  A
            :class:`Frames` object is read at its frame mid-times.
        values : array of float
            Cell counts, transgene copies or reporter signal at ``t_d`` (> 0 for log weights).
        region : str
            Name recorded in the result.
        weights, tmax_d, units
            Override the model's options for this fit (``None``: the model's).

        Returns
        -------
        KineticFit
            ``params`` tmax_d, cmax, fold_expansion, alpha_per_d, beta_per_d, fb, auc_0_28,
            half_life_alpha_d, half_life_beta_d, rho_per_d, each with an SE (covariance from
            the Jacobian scaled by the residual variance, delta method for the derived ones);
            ``aic`` of the fit in the weighted space (log values for ``"log"``).
        """
        from scipy.optimize import least_squares as lsq

        what = f"cart-ck fit of {region or 'the curve'}"
        wmode = self._check_weights(self.weights if weights is None else weights)
        T_fixed = self.tmax_d if tmax_d is None else _positive(tmax_d, "tmax_d (d)")
        unit = self.units if units is None else str(units)
        t = _times(t_d, what)
        y = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if y.ndim != 1 or y.size != t.size:
            raise ParameterError(f"{what}: {y.size} values for {t.size} sample times")
        bad = np.flatnonzero(~np.isfinite(y))
        if bad.size:
            raise ParameterError(f"{what}: value at t = {t[bad[0]]:g} d is {y[bad[0]]!r}; remove the sample or "
                                 "fix the curve")
        if wmode == "log":
            nonpos = np.flatnonzero(y <= 0)
            if nonpos.size:
                raise ParameterError(f"{what}: value at t = {t[nonpos[0]]:g} d is {y[nonpos[0]]:g}; log weighting "
                                     "needs positive values: drop samples below the limit of quantification or "
                                     "use weights='uniform'")
        elif not np.any(y > 0):
            raise ParameterError(f"{what}: no positive value; nothing to fit")
        k = 5 if T_fixed is not None else 6
        if y.size <= k:
            raise ParameterError(f"{what}: {y.size} samples for {k} free parameters; the model needs at least "
                                 f"{k + 1} samples")
        u = np.unique(t)
        # observed peak: the time of the largest mean value
        means = np.array([y[t == v].mean() for v in u])
        i_pk = int(np.argmax(means))
        if T_fixed is None:
            if i_pk == 0:
                raise ParameterError(f"{what}: no sample before the peak (t = {u[i_pk]:g} d); fold_expansion "
                                     "cannot be estimated: add samples during expansion or fix tmax_d")
        else:
            if not np.any((t < T_fixed) & (y > 0)):
                raise ParameterError(f"{what}: no sample before tmax_d = {T_fixed:g} d; fold_expansion cannot be "
                                     "estimated")
            if not np.any(t > T_fixed):
                raise ParameterError(f"{what}: no sample after tmax_d = {T_fixed:g} d; the contraction cannot be "
                                     "estimated")
        if i_pk == u.size - 1 and T_fixed is None:
            raise ParameterError(f"{what}: the largest value is the last sample (t = {u[-1]:g} d); the contraction "
                                 "cannot be estimated: add later samples or fix tmax_d")

        # the log fit gives the starting points (and is the fit for weights="log"); with uniform weights
        # its solutions are refined on the values themselves
        first = "log" if np.all(y > 0) else wmode
        with np.errstate(divide="ignore", invalid="ignore"):
            ly = np.log(y)
        scale = float(np.max(np.abs(y)))

        def resid_jac(x, T, want_jac, mode):
            # x = (lnM, lnF, ln a, ln b, fb) [+ T when T is None]
            if T is None:
                T = x[5]
            a, b = math.exp(x[2]), math.exp(x[3])
            if want_jac:
                lc, J = _ck_log(t, T, x[0], x[1], a, b, x[4], jac=True)
                J = J[:, [1, 2, 3, 4, 5, 0]]  # columns in the order of x
            else:
                lc = _ck_log(t, T, x[0], x[1], a, b, x[4])
            if mode == "log":
                r = lc - ly
                return (r, J) if want_jac else r
            c = np.exp(lc)
            r = (c - y) / scale
            return (r, J * (c / scale)[:, None]) if want_jac else r

        def solve(x0, T, lo, hi, tol, mode=first):
            ncol = 5 if T is not None else 6

            def fun(x):
                return resid_jac(x, T, False, mode)

            def jac(x):
                return resid_jac(x, T, True, mode)[1][:, :ncol]

            x0 = _inside(x0, lo, hi)
            return lsq(fun, x0, jac=jac, bounds=(lo, hi), method="trf", x_scale="jac", xtol=tol, ftol=tol, gtol=tol,
                       max_nfev=2000)

        lnf_max = math.log(1e12)
        lo5 = np.array([-np.inf, 0.0, math.log(1e-7), math.log(1e-7), 0.0])
        hi5 = np.array([np.inf, lnf_max, math.log(100.0), math.log(100.0), 1.0])

        def start(T):
            """Data-driven starting values for a given Tmax."""
            lm = math.log(max(means[i_pk], 1e-300))
            pre = (u < T) & (means > 0)
            tp = u[pre]
            if tp.size:
                j = int(np.argmin(tp))
                rho = max((lm - math.log(means[pre][j])) / max(T - tp[j], 1e-6), 1e-3)
            else:
                rho = math.log(100.0) / T
            lnF = float(np.clip(rho * T, 1e-3, lnf_max - 1))
            post = (u > T) & (means > 0)
            tq, yq = u[post], np.log(means[post])
            b0, fb0, a0 = 0.01, 0.01, 0.2
            if tq.size >= 3:
                nl = max(2, tq.size // 3)
                pb = np.polyfit(tq[-nl:] - T, yq[-nl:], 1)
                b0 = max(-pb[0], 1e-5)
                fb0 = float(np.clip(math.exp(pb[1] - lm), 1e-5, 0.5))
                ne = max(2, tq.size - nl)
                pa = np.polyfit(np.concatenate([[0.0], tq[:ne] - T]), np.concatenate([[lm], yq[:ne]]), 1)
                a0 = max(-pa[0], 2.0 * b0, 1e-3)
            elif tq.size:
                a0 = max((lm - yq[0]) / max(tq[0] - T, 1e-6), 1e-3)
            a0 = min(a0, 50.0)
            return np.array([lm, lnF, math.log(a0), math.log(min(b0, 0.5 * a0)), fb0])

        tol = 1e-14
        results = []
        if T_fixed is not None:
            for x0 in _variants(start(T_fixed)):
                results.append((solve(x0, T_fixed, lo5, hi5, tol), T_fixed))
        else:
            t_lo = u[max(i_pk - 2, 0)]
            t_hi = u[min(i_pk + 2, u.size - 1)]
            knots = u[(u >= t_lo) & (u <= t_hi)]
            grid = np.unique(np.concatenate([knots[:-1, None] + np.diff(knots)[:, None] * np.array([0.0, 1 / 3, 2 / 3]),
                                             knots[-1:, None]], axis=None))
            grid = grid[(grid > u[0]) & (grid < u[-1])]
            prof = []
            for T in grid:
                r = solve(start(T), float(T), lo5, hi5, 1e-8)
                prof.append((r.cost, float(T), r.x))
            prof.sort(key=lambda p: p[0])
            T_lo, T_hi = float(u[0]) + 1e-9 * max(1.0, float(u[-1])), float(u[-1])
            lo6, hi6 = np.append(lo5, T_lo), np.append(hi5, T_hi)
            for cost, T, x in prof[:2]:
                results.append((solve(np.append(x, T), None, lo6, hi6, tol), None))
        if first != wmode:
            results.sort(key=lambda rt: rt[0].cost)
            if T_fixed is not None:
                results = [(solve(r.x, T_fixed, lo5, hi5, tol, wmode), T_fixed) for r, _ in results[:2]]
            else:
                results = [(solve(r.x, None, lo6, hi6, tol, wmode), None) for r, _ in results[:2]]
        best, Tb = min(results, key=lambda rt: rt[0].cost)
        x = best.x
        T = float(x[5]) if Tb is None else float(Tb)
        lnM, lnF, a, b, f = float(x[0]), float(x[1]), math.exp(x[2]), math.exp(x[3]), float(x[4])
        if b > a:  # order the phases: alpha the faster
            a, b, f = b, a, 1.0 - f
        M, F = math.exp(lnM), math.exp(lnF)

        # covariance in the natural parameters (tmax_d, cmax, fold, alpha, beta, fb)
        lc, J = _ck_log(t, T, lnM, lnF, a, b, f, jac=True)
        Jn = J / np.array([1.0, M, F, a, b, 1.0])
        c = np.exp(lc)
        if wmode == "log":
            r = lc - ly
        else:
            r = c - y
            Jn = Jn * c[:, None]
        wrss = float(r @ r)
        free = [0, 1, 2, 3, 4, 5] if T_fixed is None else [1, 2, 3, 4, 5]
        cov_f = _covariance(Jn[:, free], wrss, y.size)
        cov = np.zeros((6, 6))
        cov[np.ix_(free, free)] = cov_f
        vals = {"tmax_d": T, "cmax": M, "fold_expansion": F, "alpha_per_d": a, "beta_per_d": b, "fb": f}
        params = dict(vals)
        se = {n: _sd(cov[i, i]) for i, n in enumerate(CK_PARAMS)}

        def auc(v):
            return cart_ck_auc(28.0, cmax=v[1], tmax_d=v[0], fold_expansion=max(v[2], 1.0), alpha_per_d=max(v[3], 0),
                               beta_per_d=max(v[4], 0), fb=min(max(v[5], 0.0), 1.0))

        v0 = np.array([vals[n] for n in CK_PARAMS])
        g = np.zeros(6)
        for i in free:
            h = 1e-6 * max(abs(v0[i]), 1e-8)
            vp, vm = v0.copy(), v0.copy()
            vp[i] += h
            vm[i] -= h
            if i == 5:  # fb near its bounds: one-sided
                vp[i], vm[i] = min(vp[i], 1.0), max(vm[i], 0.0)
            g[i] = (auc(vp) - auc(vm)) / (vp[i] - vm[i])
        params["auc_0_28"] = auc(v0)
        se["auc_0_28"] = _sd(g @ cov @ g)
        params["half_life_alpha_d"] = LN2 / a if a > 0 else math.inf
        se["half_life_alpha_d"] = LN2 / a ** 2 * se["alpha_per_d"] if a > 0 else math.nan
        params["half_life_beta_d"] = LN2 / b if b > 0 else math.inf
        se["half_life_beta_d"] = LN2 / b ** 2 * se["beta_per_d"] if b > 0 else math.nan
        params["rho_per_d"] = lnF / T
        gr = np.zeros(6)
        gr[0], gr[2] = -lnF / T ** 2, 1.0 / (F * T)
        se["rho_per_d"] = _sd(gr @ cov @ gr)

        aic, aicc, bic = information_criteria(wrss, y.size, len(free))
        u_ = unit or ""
        units_out = {"tmax_d": "d", "cmax": u_, "fold_expansion": "1", "alpha_per_d": "1/d", "beta_per_d": "1/d",
                     "fb": "1", "auc_0_28": f"{u_} x d" if u_ else "d", "half_life_alpha_d": "d",
                     "half_life_beta_d": "d", "rho_per_d": "1/d"}
        return KineticFit(model=self.name, params=params, se=se, aic=aic, aicc=aicc, bic=bic, wrss=wrss,
                          n_points=int(y.size), n_params=len(free), fitted=c, residuals=y - c, units=units_out,
                          info={"weights": wmode, "converged": bool(best.success), "message": best.message,
                                "nfev": int(best.nfev), "region": region, "time_unit": "d", "values_unit": u_,
                                "fixed": [] if T_fixed is None else ["tmax_d"]})


def _inside(x, lo, hi):
    """``x`` clipped strictly inside finite bounds (the trust-region solver needs an interior start)."""
    with np.errstate(invalid="ignore"):
        lo_in = np.where(np.isfinite(lo), lo + 1e-10 * (1.0 + np.abs(lo)), lo)
        hi_in = np.where(np.isfinite(hi), hi - 1e-10 * (1.0 + np.abs(hi)), hi)
    return np.clip(x, lo_in, hi_in)


def _variants(x0: np.ndarray) -> list[np.ndarray]:
    """Starting points around a data-driven start (faster / slower contraction, larger persistence)."""
    out = [x0]
    for da, dfb in ((math.log(3.0), 1.0), (-math.log(3.0), 1.0), (0.0, 10.0)):
        x = x0.copy()
        x[2] += da
        x[4] = min(x[4] * dfb, 0.5)
        out.append(x)
    return out


def _covariance(J: np.ndarray, wrss: float, n: int) -> np.ndarray:
    """``(J^T J)^-1 wrss / (n - k)`` (lmfit's scaled covariance); NaN where J is rank deficient."""
    k = J.shape[1]
    if n <= k:
        return np.full((k, k), np.nan)
    JtJ = J.T @ J
    d = np.sqrt(np.diag(JtJ))
    if not np.all(d > 0) or not np.all(np.isfinite(d)):
        return np.full((k, k), np.nan)
    Js = JtJ / np.outer(d, d)
    if np.linalg.cond(Js) > 1e14:
        return np.full((k, k), np.nan)
    return np.linalg.inv(Js) / np.outer(d, d) * (wrss / (n - k))


def _sd(var) -> float:
    var = float(var)
    return math.sqrt(var) if math.isfinite(var) and var >= 0 else math.nan


# ---------------------------------------------------------------------------------------------------------
# direct labels: retention and activity -> cells
@dataclass(frozen=True)
class LabelRetention:
    """Fraction of the 89Zr-oxine label still in the cells ``t`` hours after labeling.

    Parameters
    ----------
    fraction_retained_24h : float
        Fraction retained at 24 h, in (0, 1] (SCIENCE.md: 0.71 to 0.90+ in vitro).
    model : {"mono-exponential", "two-phase"}
        ``"mono-exponential"``: ``r(t) = exp(-k t)``, ``k = -ln(r24) / 24`` (1/h).
        ``"two-phase"``: ``r(t) = f e^(-k_fast t) + (1 - f) e^(-k_slow t)`` -- an early burst
        of loosely bound label (``fast_fraction`` f, ``fast_half_life_h``) then a slow
        efflux whose rate ``k_slow`` is set so that ``r(24 h)`` is the given value.
    fast_fraction : float
        Two-phase only: fraction of the label released in the fast phase, in [0, 1).
    fast_half_life_h : float
        Two-phase only: half-life of the fast release (h).

    Notes
    -----
    Released 89Zr is not in the cells any more: it circulates, then goes to bone and
    liver.  A cell that divides gives half its label to each daughter, so label-based
    cell numbers are labeled-cell *equivalents* (expansion is invisible to direct labels).

    Examples
    --------
    >>> r = LabelRetention(0.8)
    >>> round(float(r.fraction(24.0)), 6), round(r.efflux_rate_per_h, 6)
    (0.8, 0.009298)
    >>> round(float(LabelRetention(0.8, model="two-phase", fast_fraction=0.1).fraction(24.0)), 6)
    0.8
    """

    fraction_retained_24h: float = 0.8
    model: str = "mono-exponential"
    fast_fraction: float = 0.0
    fast_half_life_h: float = 1.0

    MODELS = ("mono-exponential", "two-phase")

    def __post_init__(self):
        r = self.fraction_retained_24h
        try:
            rf = float(r)
        except (TypeError, ValueError):
            raise ParameterError(f"fraction_retained_24h must be a number in (0, 1], got {r!r}") from None
        if not (0.0 < rf <= 1.0):
            raise ParameterError(f"fraction_retained_24h must be in (0, 1] (the fraction of the label still in "
                                 f"the cells 24 h after labeling), got {r!r}")
        if self.model not in self.MODELS:
            raise ParameterError(f"retention model must be one of {', '.join(self.MODELS)}, got {self.model!r}")
        object.__setattr__(self, "fraction_retained_24h", rf)
        if self.model == "two-phase":
            f = float(self.fast_fraction)
            if not (0.0 <= f < 1.0):
                raise ParameterError(f"fast_fraction must be in [0, 1), got {self.fast_fraction!r}")
            _positive(self.fast_half_life_h, "fast_half_life_h (h)")
            rest = rf - f * 2.0 ** (-24.0 / self.fast_half_life_h)
            if not (0.0 < rest <= (1.0 - f) * (1 + 1e-12)):
                raise ParameterError(f"two-phase retention: fraction_retained_24h = {rf:g} is not reachable with "
                                     f"fast_fraction = {f:g}; lower fast_fraction or raise fraction_retained_24h")

    @property
    def efflux_rate_per_h(self) -> float:
        """The (slow-phase) first-order efflux rate constant (1/h)."""
        if self.model == "mono-exponential":
            return -math.log(self.fraction_retained_24h) / 24.0
        f = self.fast_fraction
        rest = self.fraction_retained_24h - f * 2.0 ** (-24.0 / self.fast_half_life_h)
        return max(-math.log(min(rest / (1.0 - f), 1.0)) / 24.0, 0.0)

    def fraction(self, t_h):
        """Fraction of the label retained ``t_h`` hours after labeling (float or ndarray)."""
        t = np.asarray(t_h, dtype=np.float64)
        if not np.all(np.isfinite(t)) or np.any(t < 0):
            raise ParameterError(f"retention: hours since labeling must be finite and >= 0, got {t_h!r}")
        k = self.efflux_rate_per_h
        if self.model == "mono-exponential":
            out = np.exp(-k * t)
        else:
            f = self.fast_fraction
            out = f * 2.0 ** (-t / self.fast_half_life_h) + (1.0 - f) * np.exp(-k * t)
        return float(out) if out.ndim == 0 else out


def cells_from_activity(activity_bq, *, activity_per_cell_bq_at_labeling: float, hours_since_labeling,
                        retention: LabelRetention | None = None, isotope: str = "89Zr",
                        decay_corrected: bool = False):
    """Labeled-cell equivalents from the activity measured in a region.

    ``cells = A / (a_cell x 2^(-t / T1/2) x r(t))`` with ``a_cell`` the activity per cell at
    labeling, ``T1/2`` the isotope's half-life and ``r(t)`` the label retention.

    Parameters
    ----------
    activity_bq : float or array of float
        Activity in the region (Bq) at the time of the measurement, >= 0.
    activity_per_cell_bq_at_labeling : float
        Activity per cell at the end of labeling (Bq/cell), > 0: the labeled batch's
        activity divided by its cell count.
    hours_since_labeling : float or array of float
        Time from the end of labeling to the measurement (h, >= 0; includes the time
        before injection, during which the cells also lose label).
    retention : LabelRetention, optional
        The efflux model (default ``LabelRetention()``: 80 % retained at 24 h, mono-exponential).
    isotope : str
        Radionuclide of the label (half-life from :mod:`invivo.isotopes`).
    decay_corrected : bool
        ``True`` when ``activity_bq`` is already decay corrected to the labeling time
        (no decay factor is applied then).

    Returns
    -------
    float or ndarray
        Labeled-cell equivalents.

    Notes
    -----
    Assumes all activity in the region is cell bound.  Released 89Zr is not in the
    cells (it goes to bone and liver), so in bone and liver this over-counts cells
    unless the free 89Zr is separated (:class:`CellTrafficking` does this).  Division
    splits the label between daughter cells: the result counts labeled-cell
    equivalents, not cells -- expansion is invisible to a direct label.

    Examples
    --------
    >>> round(cells_from_activity(1000.0, activity_per_cell_bq_at_labeling=0.01, hours_since_labeling=0.0))
    100000
    >>> round(cells_from_activity(1000.0, activity_per_cell_bq_at_labeling=0.01, hours_since_labeling=78.4,
    ...                           retention=LabelRetention(1.0)))
    200000
    """
    what = "cells_from_activity"
    a = np.asarray(activity_bq, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ParameterError(f"{what}: activity_bq must be finite and >= 0 (Bq), got {activity_bq!r}")
    try:
        per_cell = float(activity_per_cell_bq_at_labeling)
    except (TypeError, ValueError):
        per_cell = math.nan
    if not (math.isfinite(per_cell) and per_cell > 0):
        raise ParameterError(f"{what}: activity_per_cell_bq_at_labeling must be a positive number of Bq per cell, "
                             f"got {activity_per_cell_bq_at_labeling!r}")
    t = np.asarray(hours_since_labeling, dtype=np.float64)
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ParameterError(f"{what}: hours_since_labeling must be finite and >= 0 (h), got {hours_since_labeling!r}")
    ret = LabelRetention() if retention is None else retention
    if not isinstance(ret, LabelRetention):
        raise ParameterError(f"{what}: retention must be a LabelRetention, got {type(retention).__name__}")
    phys = 1.0 if decay_corrected else decay_factor(t * 3600.0, lookup(isotope).half_life_s)
    out = a / (per_cell * phys * ret.fraction(t))
    return float(out) if np.ndim(out) == 0 else out


# ---------------------------------------------------------------------------------------------------------
# multi-organ trafficking of directly labeled cells
#: Default rates (1/h) reproducing SCIENCE.md's 89Zr-oxine pattern: lung ~24 %ID at 1 h; day 7 liver ~36,
#: lung ~3.9, spleen ~1.4 %ID (decay corrected).  In vivo efflux 0.0025/h (94 % retained at 24 h).
TRAFFICKING_DEMO_RATES_PER_H = {
    "k_blood_lung_per_h": 0.574,
    "k_lung_blood_per_h": 0.0127,
    "k_blood_liver_per_h": 0.345,
    "k_blood_spleen_per_h": 0.0339,
    "k_blood_tumour_per_h": 0.065,
    "k_blood_other_per_h": 1.05,
    "k_efflux_per_h": 0.0025,
    "k_free_bone_per_h": 0.033,
    "k_free_liver_per_h": 0.066,
}

_COMPARTMENTS = ("blood_cells", "lung_cells", "liver_cells", "spleen_cells", "tumour_cells", "other_cells",
                 "free_89zr", "bone_89zr", "liver_89zr")
# rate -> (from, to) compartment indices; efflux acts on all six cell compartments
_FLOWS = {
    "k_blood_lung_per_h": [(0, 1)],
    "k_lung_blood_per_h": [(1, 0)],
    "k_blood_liver_per_h": [(0, 2)],
    "k_blood_spleen_per_h": [(0, 3)],
    "k_blood_tumour_per_h": [(0, 4)],
    "k_blood_other_per_h": [(0, 5)],
    "k_efflux_per_h": [(i, 6) for i in range(6)],
    "k_free_bone_per_h": [(6, 7)],
    "k_free_liver_per_h": [(6, 8)],
}
# organ -> compartments it contains (all label) and the cell-bound ones
_ORGANS = {"blood": (0, 6), "lung": (1,), "liver": (2, 8), "spleen": (3,), "tumour": (4,), "other": (5,),
           "bone": (7,)}
_CELLS = {"blood": (0,), "lung": (1,), "liver": (2,), "spleen": (3,), "tumour": (4,), "other": (5,), "bone": ()}


def _eigenbasis(A: np.ndarray):
    """(lambda, V, V^-1) of a diagonalisable A with a real, well-conditioned eigenbasis, else None."""
    lam, V = np.linalg.eig(A)
    scale = max(float(np.max(np.abs(lam))), 1e-300)
    if not np.all(np.abs(lam.imag) <= 1e-12 * scale):
        return None
    V = V.real
    if not np.linalg.cond(V) < 1e8:
        return None
    return lam.real, V, np.linalg.inv(V)


def _expm_columns(A: np.ndarray, t: np.ndarray, *, eig: bool = False) -> np.ndarray:
    """``expm(A t) e_0`` for every time, shape (n_t, N): scipy's matrix exponential, or with ``eig``
    ``V exp(lambda t) V^-1 e_0`` when A has a well-conditioned eigenbasis (the fit's fast path)."""
    from scipy.linalg import expm

    eb = _eigenbasis(A) if eig else None
    if eb is not None:
        lam, V, Vi = eb
        return (np.exp(t[:, None] * lam[None, :]) * Vi[:, 0][None, :]) @ V.T
    return expm(t[:, None, None] * A[None])[:, :, 0]


def _expm_sensitivity(A: np.ndarray, t: np.ndarray, dAs) -> np.ndarray:
    """``d/dk_p expm(A t) e_0`` for rates with ``dA/dk_p = dAs[p]``, shape (n_t, P, N).

    The Frechet derivative ``int_0^t e^(A (t - s)) dA e^(A s) ds`` in the eigenbasis of A
    (``V (G o V^-1 dA V) V^-1``, G the divided differences of ``exp(lambda t)``), exact for a
    diagonalisable A; an ill-conditioned or complex eigenbasis falls back to the matrix
    exponential of the block matrix ``[[A, 0], [dA, A]]``.
    """
    from scipy.linalg import expm

    n = A.shape[0]
    dAs = np.asarray(dAs, dtype=np.float64).reshape(-1, n, n)
    eb = _eigenbasis(A)
    if eb is not None:
        lam, V, Vi = eb
        w = Vi[:, 0]
        M = Vi[None] @ dAs @ V[None]  # (P, N, N)
        tt = t[:, None, None]
        d = (lam[:, None] - lam[None, :])[None]  # (1, N, N)
        el = np.exp(lam[None, :] * t[:, None])  # (n_t, N)
        x = 0.5 * d * tt
        small = np.abs(x) < 1e-3
        with np.errstate(divide="ignore", invalid="ignore"):
            mid = np.exp(0.5 * (lam[:, None] + lam[None, :])[None] * tt)
            G = np.where(small, tt * mid * (1 + x * x / 6 + x ** 4 / 120),  # t e^(m t) sinh(x) / x
                         (el[:, :, None] - el[:, None, :]) / np.where(small, 1.0, d))
        return np.einsum("ik,tpkl,l->tpi", V, G[:, None] * M[None], w)
    P = dAs.shape[0]
    out = np.zeros((t.size, P, n))
    for p in range(P):  # host: rare fallback, one block expm per rate
        B = np.zeros((2 * n, 2 * n))
        B[:n, :n] = A
        B[n:, n:] = A
        B[n:, :n] = dAs[p]
        out[:, p] = expm(t[:, None, None] * B[None])[:, n:, 0]
    return out


class CellTrafficking:
    """Multi-organ trafficking of directly labeled (89Zr-oxine) cells: a linear compartment model.

    Compartments (fractions of the injected label): cells in blood, lung, liver, spleen,
    tumour and other tissues (lymph nodes, marrow, carcass); free 89Zr released by the
    cells, which circulates and goes to bone and liver.  First-order rates, **per hour**:

    - ``k_blood_lung_per_h`` (first-pass and later lung trapping), ``k_lung_blood_per_h``
      (release from the lung);
    - ``k_blood_liver_per_h``, ``k_blood_spleen_per_h``, ``k_blood_tumour_per_h``,
      ``k_blood_other_per_h`` (homing; cells are not returned from these);
    - ``k_efflux_per_h``: label efflux from every cell compartment to free 89Zr (the
      in-vivo retention ``exp(-k t)``; :class:`LabelRetention` gives it from the 24 h
      retention);
    - ``k_free_bone_per_h``, ``k_free_liver_per_h``: uptake of free 89Zr.

    Injected as an i.v. bolus: all label in blood cells at ``t = 0``.  The system is
    closed (no excretion: sum over compartments is 100 %ID) and solved exactly with a
    matrix exponential at each sample time.  Organs read out: blood (cells + free
    89Zr), lung, liver (cells + 89Zr taken up), spleen, tumour, other, bone (89Zr).
    Values are %ID of the label, decay corrected (``decay_corrected=False`` applies
    the isotope's physical decay from the injection).

    Parameters
    ----------
    decay_corrected : bool
        %ID decay corrected to the injection time (default) or not.
    isotope : str
        The label's radionuclide (for ``decay_corrected=False``).
    weights : {"uniform", "organ", "relative"}
        Residuals in %ID (``"uniform"``: noise of the same size in every organ), each
        organ's residuals divided by that organ's largest observed value (``"organ"``:
        every organ counts alike), or each residual divided by its observed value
        (``"relative"``: noise proportional to the value, as in ROI means of PET; the
        standard errors are then calibrated for such noise).

    Examples
    --------
    >>> m = CellTrafficking()
    >>> pid = m.simulate([1.0, 168.0])
    >>> [round(float(v), 1) for v in pid["lung"]], round(float(pid["liver"][1]), 1)
    ([24.0, 3.9], 36.0)
    """

    name = "cell-trafficking"
    RATES = tuple(TRAFFICKING_DEMO_RATES_PER_H)
    ORGANS = tuple(_ORGANS)
    COMPARTMENTS = _COMPARTMENTS
    WEIGHTS = ("uniform", "organ", "relative")

    def __init__(self, *, decay_corrected: bool = True, isotope: str = "89Zr", weights: str = "uniform"):
        self.decay_corrected = bool(decay_corrected)
        self.isotope = lookup(isotope)
        if weights not in self.WEIGHTS:
            raise ParameterError(f"cell-trafficking: weights must be one of {', '.join(self.WEIGHTS)}, "
                                 f"got {weights!r}")
        self.weights = weights

    def __repr__(self) -> str:
        return (f"CellTrafficking(decay_corrected={self.decay_corrected}, isotope={self.isotope.name!r}, "
                f"weights={self.weights!r})")

    # ------------------------------------------------------------------ forward model
    def _rates(self, rates: Mapping) -> dict:
        unknown = [r for r in rates if r not in self.RATES]
        if unknown:
            raise ParameterError(f"cell-trafficking: unknown rate(s) {unknown}; valid: {', '.join(self.RATES)}")
        out = dict(TRAFFICKING_DEMO_RATES_PER_H)
        for k, v in rates.items():
            out[k] = _positive(v, f"{k} (1/h)", allow_zero=True)
        return out

    @staticmethod
    def rate_matrix(rates: Mapping) -> np.ndarray:
        """The (9, 9) matrix A of ``dx/dt = A x`` (1/h) over :attr:`COMPARTMENTS`."""
        A = np.zeros((len(_COMPARTMENTS), len(_COMPARTMENTS)))
        for name, flows in _FLOWS.items():
            k = float(rates[name])
            for i, j in flows:
                A[j, i] += k
                A[i, i] -= k
        return A

    @staticmethod
    def _dA(name: str) -> np.ndarray:
        A = np.zeros((len(_COMPARTMENTS), len(_COMPARTMENTS)))
        for i, j in _FLOWS[name]:
            A[j, i] += 1.0
            A[i, i] -= 1.0
        return A

    def compartments(self, t_h, **rates) -> dict:
        """%ID in each compartment (:attr:`COMPARTMENTS`) at times ``t_h`` (h after injection).

        Rates not given take their :data:`TRAFFICKING_DEMO_RATES_PER_H` values.
        """
        t = _times(t_h, "cell-trafficking", "t_h")
        A = self.rate_matrix(self._rates(rates))
        X = _expm_columns(A, t).T * (100.0 * self._phys(t))  # (9, n)
        return {c: X[i] for i, c in enumerate(_COMPARTMENTS)}

    def simulate(self, t_h, *, cell_bound: bool = False, **rates) -> dict:
        """%ID of the label per organ at times ``t_h`` (h after injection).

        Parameters
        ----------
        t_h : array of float, hours after injection (>= 0)
        cell_bound : bool
            Only the label still in cells (no free 89Zr: bone 0); divide by the activity
            per cell to count labeled-cell equivalents.
        **rates : float
            Rate constants (1/h) by name (:attr:`RATES`); missing ones take the demo values.

        Returns
        -------
        dict of organ name to ndarray of %ID (decay corrected unless the model says not).
        """
        x = self.compartments(t_h, **rates)
        X = np.stack([x[c] for c in _COMPARTMENTS])
        sel = _CELLS if cell_bound else _ORGANS
        return {o: (X[list(idx)].sum(axis=0) if idx else np.zeros(X.shape[1])) for o, idx in sel.items()}

    def _organ_matrix(self, organs) -> np.ndarray:
        H = np.zeros((len(organs), len(_COMPARTMENTS)))
        for i, o in enumerate(organs):
            H[i, list(_ORGANS[o])] = 1.0
        return H

    def _phys(self, t) -> np.ndarray:
        return np.ones(t.size) if self.decay_corrected else decay_factor(t * 3600.0, self.isotope.half_life_s)

    def _organ_values(self, t, A, H) -> np.ndarray:
        """Organ %ID, shape (n_organs, n_t): ``H expm(A t) e_blood`` at every time."""
        return (H @ _expm_columns(A, t, eig=True).T) * (100.0 * self._phys(t))

    def _organ_jac(self, t, A, dAs, H) -> np.ndarray:
        """d organ %ID / d rate, shape (n_organs, n_t, n_rates), exact (Frechet derivative of expm)."""
        dX = _expm_sensitivity(A, t, dAs)  # (n_t, P, 9)
        return np.einsum("oi,tpi->otp", H, dX) * (100.0 * self._phys(t))[None, :, None]

    # ------------------------------------------------------------------ fitting
    def fit(self, t_h, table, *, fixed: Mapping | None = None, start: Mapping | None = None,
            region: str = "") -> KineticFit:
        """Fit the rates to %ID-per-organ time courses, all organs jointly.

        Parameters
        ----------
        t_h : array of float
            Sample times (h after injection, >= 0).
        table : mapping or pandas.DataFrame
            Organ name (of :attr:`ORGANS`) -> %ID at ``t_h`` (decay corrected unless the
            model says not); any subset of the organs.
        fixed : mapping, optional
            Rates (1/h) held at the given values.
        start : mapping, optional
            Starting values (1/h); default the demo rates, plus scaled variants.
        region : str
            Name recorded in the result (e.g. the subject).

        Returns
        -------
        KineticFit
            Every rate (1/h) with its SE, plus ``retained_24h = exp(-24 k_efflux)`` and
            ``lung_residence_h = 1 / k_lung_blood``; ``fitted``/``residuals`` are the organ
            curves concatenated in ``info["organs"]`` order.
        """
        from scipy.optimize import least_squares as lsq

        what = f"cell-trafficking fit of {region or 'the data'}"
        t = _times(t_h, what, "t_h")
        cols = list(table.columns) if hasattr(table, "columns") else list(table)
        if not cols:
            raise ParameterError(f"{what}: the table has no organ column; give any of {', '.join(self.ORGANS)}")
        unknown = [c for c in cols if c not in _ORGANS]
        if unknown:
            raise ParameterError(f"{what}: unknown organ(s) {unknown}; valid organs: {', '.join(self.ORGANS)}")
        organs = [o for o in self.ORGANS if o in cols]
        Y = np.zeros((len(organs), t.size))
        for i, o in enumerate(organs):
            v = np.atleast_1d(np.asarray(table[o], dtype=np.float64))
            if v.shape != t.shape:
                raise ParameterError(f"{what}: organ {o!r} has {v.size} values for {t.size} sample times")
            bad = np.flatnonzero(~np.isfinite(v))
            if bad.size:
                raise ParameterError(f"{what}: organ {o!r} at t = {t[bad[0]]:g} h is {v[bad[0]]!r}; remove the "
                                     "sample time or the organ column")
            Y[i] = v
        fixed = dict(fixed or {})
        for k in fixed:
            if k not in self.RATES:
                raise ParameterError(f"{what}: cannot fix unknown rate {k!r}; valid: {', '.join(self.RATES)}")
        base = self._rates({**(start or {}), **fixed})
        names = [n for n in self.RATES if n not in fixed]
        if not names:
            raise ParameterError(f"{what}: every rate is fixed; nothing to fit")
        n_obs = Y.size
        if n_obs <= len(names):
            raise ParameterError(f"{what}: {n_obs} values for {len(names)} free rates; add organs or time points, "
                                 "or fix rates")
        if np.unique(t).size < 3:
            raise ParameterError(f"{what}: {np.unique(t).size} distinct sample times; the model needs at least 3")
        H = self._organ_matrix(organs)
        if self.weights == "organ":
            sw = 1.0 / np.maximum(np.abs(Y).max(axis=1, keepdims=True), 1e-12)
        elif self.weights == "relative":  # values near 0 (an organ before the cells arrive) weigh as 1 % of its max
            sw = 1.0 / np.maximum(np.abs(Y), 0.01 * np.abs(Y).max(axis=1, keepdims=True) + 1e-12)
        else:
            sw = np.ones((len(organs), 1))
        sw = np.broadcast_to(sw, Y.shape)

        def rates_of(x):
            r = dict(base)
            r.update({n: math.exp(v) for n, v in zip(names, x)})
            return r

        dAs = [self._dA(n) for n in names]

        def fun(x):
            return ((self._organ_values(t, self.rate_matrix(rates_of(x)), H) - Y) * sw).ravel()

        def jac(x):
            D = self._organ_jac(t, self.rate_matrix(rates_of(x)), dAs, H) * sw[..., None]
            return D.reshape(n_obs, len(names)) * np.exp(x)[None, :]

        x0 = np.log(np.maximum([base[n] for n in names], 1e-6))
        lo, hi = np.full(len(names), math.log(1e-7)), np.full(len(names), math.log(1e3))
        starts = [x0, x0 + math.log(2.0), x0 - math.log(2.0)]
        best = None
        for xs in starts:
            res = lsq(fun, _inside(xs, lo, hi), jac=jac, bounds=(lo, hi), method="trf", x_scale="jac",
                      xtol=1e-14, ftol=1e-14, gtol=1e-14, max_nfev=500)
            if best is None or res.cost < best.cost:
                best = res
            if best.cost < 1e-20 * max(1.0, float(np.sum((Y * sw) ** 2))):
                break
        r = rates_of(best.x)
        A = self.rate_matrix(r)
        Ym, D = self._organ_values(t, A, H), self._organ_jac(t, A, dAs, H)
        resid = (Ym - Y) * sw
        wrss = float(np.sum(resid ** 2))
        Jn = (D * sw[..., None]).reshape(n_obs, len(names))
        cov = _covariance(Jn, wrss, n_obs)
        params = {n: float(r[n]) for n in self.RATES}
        se = {n: 0.0 for n in self.RATES}
        for i, n in enumerate(names):
            se[n] = _sd(cov[i, i])
        ke = r["k_efflux_per_h"]
        params["retained_24h"] = math.exp(-24.0 * ke)
        se["retained_24h"] = 24.0 * params["retained_24h"] * se["k_efflux_per_h"]
        kl = r["k_lung_blood_per_h"]
        params["lung_residence_h"] = 1.0 / kl if kl > 0 else math.inf
        se["lung_residence_h"] = se["k_lung_blood_per_h"] / kl ** 2 if kl > 0 else math.nan
        aic, aicc, bic = information_criteria(wrss, n_obs, len(names))
        units = {n: "1/h" for n in self.RATES}
        units.update({"retained_24h": "1", "lung_residence_h": "h"})
        return KineticFit(model=self.name, params=params, se=se, aic=aic, aicc=aicc, bic=bic, wrss=wrss,
                          n_points=int(n_obs), n_params=len(names), fitted=Ym.ravel(), residuals=(Y - Ym).ravel(),
                          units=units,
                          info={"organs": organs, "times_h": t.tolist(), "weights": self.weights,
                                "converged": bool(best.success), "message": best.message, "nfev": int(best.nfev),
                                "fixed": sorted(fixed), "region": region, "decay_corrected": self.decay_corrected,
                                "fitted_by_organ": {o: Ym[i] for i, o in enumerate(organs)},
                                "units_values": "%ID"})
