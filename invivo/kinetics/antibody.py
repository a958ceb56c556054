"""Antibody kinetics: serum PK with target-mediated disposition (``mab-pk``), multi-day Patlak
with a serum input, and blocking studies (specific = total - blocked).

Serum PK (:class:`MabPK`), an intravenous bolus into a two-compartment model whose
central compartment also loses antibody to a saturable target sink (target-mediated
drug disposition in the Michaelis-Menten / quasi-steady-state approximation).  Amounts
``A1`` (central) and ``A2`` (peripheral) in ug, time in hours, ``C = A1 / V1`` (ug/mL)::

    dA1/dt = -CL C - Q C + Q A2 / V2 - Vmax C / (Km + C),     A1(0) = dose
    dA2/dt =  Q C - Q A2 / V2,                                 A2(0) = 0

with V1, V2 (mL), CL, Q (mL/h), Vmax (ug/h), Km (ug/mL).  The dose is the whole
antibody mass (labelled + unlabelled): a blocking arm differs from the tracer arm only
by its unlabelled mass, which saturates the target sink -- the term that tells the
arms apart (:meth:`MabPK.fit_arms`).  At concentrations far below Km the model is
linear with clearance ``CL + Vmax / Km``; far above, with ``CL``.

Multi-day Patlak (:func:`multi_day_patlak`): static scans days apart, each a short
frame, against a serum input: ``C_T(t) = Ki int_0^t C_P + VT C_P(t)``, with Ki the
irreversible uptake (per minute as every rate in :mod:`invivo.kinetics`, also per hour
and per day) and the intercept VT the reversible part.

Blocking (:func:`blocking_comparison`): specific uptake and the specific fraction with
their uncertainty, from group summaries or per-animal values (Welch).

Times: the serum PK works in hours (``t_h``) -- antibody time scales; the Patlak takes
PET frames in seconds as everywhere in :mod:`invivo.kinetics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..errors import ParameterError
from .base import Frames, KineticFit, information_criteria
from .inputs import InputFunction

__all__ = ["MabPK", "mab_pk_concentration", "linear_half_lives_h", "serum_concentration_ug_per_ml",
           "injected_mass_ug", "multi_day_patlak", "blocking_comparison", "PK_PARAMS", "PK_UNITS"]

#: the fitted parameters of ``mab-pk``, in the order used internally
PK_PARAMS = ("V1_ml", "V2_ml", "CL_ml_per_h", "Q_ml_per_h", "Vmax_ug_per_h", "Km_ug_per_ml")
PK_UNITS = {"V1_ml": "mL", "V2_ml": "mL", "CL_ml_per_h": "mL/h", "Q_ml_per_h": "mL/h", "Vmax_ug_per_h": "ug/h",
            "Km_ug_per_ml": "ug/mL", "t_half_alpha_h": "h", "t_half_beta_h": "h", "t_half_beta_saturated_h": "h",
            "CL_low_conc_ml_per_h": "mL/h", "AUC_ug_h_per_ml": "ug*h/mL", "AUC_0_last_ug_h_per_ml": "ug*h/mL"}
_I_V1, _I_V2, _I_CL, _I_Q, _I_VMAX, _I_KM = range(6)
_H = 1e-5  # step in log(theta) of the numerical derivatives of derived quantities
_XTOL = 1e-10  # least-squares stop: relative step in log(theta)
_METHODS = ("LSODA", "Radau", "BDF", "DOP853", "RK45")
_ATOL = 1e-14  # absolute tolerance of the ODE states (dose-normalised amounts, h)


# ---------------------------------------------------------------------------- activity -> mass
def serum_concentration_ug_per_ml(activity_bq_per_ml, *, specific_activity_bq_per_ug: float, decay_corrected: bool,
                                  hours_since_injection=None, isotope: str = "89Zr"):
    """Antibody concentration (ug/mL) from the serum activity of its radiolabel.

    Parameters
    ----------
    activity_bq_per_ml : float or array of float, Bq/mL
        Serum activity concentration.
    specific_activity_bq_per_ug : float, Bq/ug
        Activity per ug of the injected antibody (labelled + unlabelled) **at the
        injection time**.
    decay_corrected : bool
        Whether ``activity_bq_per_ml`` is already decay corrected to the injection time
        (keyword without a default: say which).  If not, each value is corrected here with
        the isotope's half-life and ``hours_since_injection``.
    hours_since_injection : float or array of float, h, optional
        Time of each sample after the injection (needed when ``decay_corrected`` is False).
    isotope : str
        Radionuclide of the label (any spelling :func:`invivo.isotopes.lookup` knows).

    Returns
    -------
    float or ndarray, ug/mL

    Notes
    -----
    Assumes the label stays on the antibody (intact conjugate in serum): the decay-
    corrected activity divided by the specific activity at injection is the mass.

    Examples
    --------
    >>> round(float(serum_concentration_ug_per_ml(1.0e5, specific_activity_bq_per_ug=1.0e5,
    ...                                           decay_corrected=False, hours_since_injection=78.4)), 6)
    2.0
    """
    from ..isotopes import decay_factor, lookup

    if not isinstance(decay_corrected, (bool, np.bool_)):
        raise ParameterError(f"decay_corrected must be True or False, got {decay_corrected!r}")
    sa = float(specific_activity_bq_per_ug)
    if not (math.isfinite(sa) and sa > 0):
        raise ParameterError(f"specific_activity_bq_per_ug must be a positive number of Bq/ug, got {sa!r}")
    a = np.asarray(activity_bq_per_ml, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ParameterError("activity_bq_per_ml must be finite and non-negative (Bq/mL)")
    if decay_corrected:
        out = a / sa
    else:
        if hours_since_injection is None:
            raise ParameterError("hours_since_injection is needed to decay-correct the serum activity "
                                 "(or pass decay_corrected=True if it already is)")
        th = np.asarray(hours_since_injection, dtype=np.float64)
        if not np.all(np.isfinite(th)) or np.any(th < 0):
            raise ParameterError("hours_since_injection must be finite and >= 0 (h)")
        out = a / (sa * decay_factor(th * 3600.0, lookup(isotope).half_life_s))
    return out if out.ndim else float(out)


def injected_mass_ug(injected_activity_bq: float, *, specific_activity_bq_per_ug: float,
                     unlabelled_ug: float = 0.0) -> float:
    """Antibody dose (ug) for :class:`MabPK`: labelled mass (activity / specific activity) plus
    any unlabelled (blocking) antibody co-injected.

    Examples
    --------
    >>> injected_mass_ug(5.0e6, specific_activity_bq_per_ug=1.0e6, unlabelled_ug=400.0)
    405.0
    """
    act, sa, cold = float(injected_activity_bq), float(specific_activity_bq_per_ug), float(unlabelled_ug)
    if not (math.isfinite(act) and act > 0):
        raise ParameterError(f"injected_activity_bq must be positive, got {act!r}")
    if not (math.isfinite(sa) and sa > 0):
        raise ParameterError(f"specific_activity_bq_per_ug must be positive, got {sa!r}")
    if not (math.isfinite(cold) and cold >= 0):
        raise ParameterError(f"unlabelled_ug must be >= 0, got {cold!r}")
    return act / sa + cold


# ---------------------------------------------------------------------------- the serum PK model
def _check_theta(p: Mapping, *, where: str = "mab-pk") -> np.ndarray:
    """The six parameters as an array, validated (one-line ParameterError naming the bad one)."""
    missing = [n for n in PK_PARAMS if n not in p]
    if missing:
        raise ParameterError(f"{where}: missing parameter(s) {', '.join(missing)}; needs {', '.join(PK_PARAMS)}")
    th = np.array([float(p[n]) for n in PK_PARAMS])
    for n, v in zip(PK_PARAMS, th):
        if not math.isfinite(v):
            raise ParameterError(f"{where}: {n} must be a finite number, got {v!r}")
    for n in ("V1_ml", "V2_ml", "Km_ug_per_ml"):
        if p[n] <= 0:
            raise ParameterError(f"{where}: {n} must be positive, got {float(p[n])!r}")
    for n in ("CL_ml_per_h", "Q_ml_per_h", "Vmax_ug_per_h"):
        if p[n] < 0:
            raise ParameterError(f"{where}: {n} must be >= 0, got {float(p[n])!r}")
    if th[_I_CL] == 0 and th[_I_VMAX] == 0:
        raise ParameterError(f"{where}: CL_ml_per_h and Vmax_ug_per_h are both 0: the antibody is never cleared")
    return th


def _check_dose(dose_ug, where: str = "mab-pk") -> float:
    try:
        d = float(dose_ug)
    except (TypeError, ValueError):
        raise ParameterError(f"{where}: dose_ug must be a number of ug, got {dose_ug!r}") from None
    if not (math.isfinite(d) and d > 0):
        raise ParameterError(f"{where}: dose_ug must be positive (ug of antibody, labelled + unlabelled), got {d!r}")
    return d


def _check_times(t_h, where: str, *, min_points: int = 1) -> np.ndarray:
    t = np.atleast_1d(np.asarray(t_h, dtype=np.float64))
    if t.ndim != 1:
        raise ParameterError(f"{where}: t_h must be 1D (hours after injection), got shape {t.shape}")
    if t.size < min_points:
        raise ParameterError(f"{where}: {t.size} sample time(s); at least {min_points} are needed")
    if not np.all(np.isfinite(t)):
        raise ParameterError(f"{where}: t_h must be finite numbers (h)")
    if t[0] < 0:
        raise ParameterError(f"{where}: t_h starts at {t[0]:g} h, before the injection (t = 0)")
    inc = np.flatnonzero(np.diff(t) <= 0)
    if inc.size:
        i = int(inc[0]) + 1
        raise ParameterError(f"{where}: t_h must be strictly increasing; sample {i} ({t[i]:g} h) is not after "
                             f"sample {i - 1} ({t[i - 1]:g} h)")
    return t


def _rhs(doses, thetas, *, sens: bool):
    """Right-hand side of the ODE for ``m`` curves at once (one dose and parameter vector each),
    in dose-normalised amounts ``a = A / dose``.  Per curve the state is ``[a1, a2, u]`` with
    ``u = int a1 dt``, and with ``sens`` also ``S1, S2 = d(a1, a2) / d log(theta)`` (columns V1,
    V2, CL, Q, Vmax, Km) and ``U = int S1 dt``: 21 values.  Returns ``(f, width)``.

    The sensitivities obey ``dS/dt = J S + theta df/dtheta`` with ``J`` the Jacobian of the
    amounts.  Few curves are computed in plain Python floats (much faster than NumPy on
    arrays of 2 values), many with NumPy.
    """
    D = np.asarray(doses, dtype=np.float64).ravel()
    TH = np.asarray(thetas, dtype=np.float64).reshape(D.size, 6)
    m = D.size
    consts = []
    for d, (V1, V2, CL, Q, Vmax, Km) in zip(D.tolist(), TH.tolist()):
        # k11, k12, k21, vm (target-mediated rate in dose units), g (a1 -> C in ug/mL)
        consts.append((V1, V2, CL, Q, Vmax, Km, (CL + Q) / V1, Q / V2, Q / V1, Vmax / d, d / V1))

    if sens:
        def f_sens(_t, y):
            yl = y.tolist()
            out = []
            for j, (V1, V2, CL, Q, Vmax, Km, k11, k12, k21, vm, g) in enumerate(consts):
                a1, a2, _u, s0, s1, s2, s3, s4, s5, r0, r1, r2, r3, r4, r5 = yl[21 * j:21 * j + 15]
                c = g * a1
                den = Km + c
                mm = c / den
                dm = Km / (den * den)
                j11 = -k11 - Vmax * dm / V1  # d(da1/dt)/da1
                x1, x2 = a1 / V1, a2 / V2
                mt = vm * c * dm
                qd = Q * (x2 - x1)
                out += [-k11 * a1 + k12 * a2 - vm * mm, k21 * a1 - k12 * a2, a1,
                        j11 * s0 + k12 * r0 + (CL + Q) * x1 + mt, j11 * s1 + k12 * r1 - Q * x2,
                        j11 * s2 + k12 * r2 - CL * x1, j11 * s3 + k12 * r3 + qd, j11 * s4 + k12 * r4 - vm * mm,
                        j11 * s5 + k12 * r5 + mt,
                        k21 * s0 - k12 * r0 - Q * x1, k21 * s1 - k12 * r1 + Q * x2, k21 * s2 - k12 * r2,
                        k21 * s3 - k12 * r3 - qd, k21 * s4 - k12 * r4, k21 * s5 - k12 * r5,
                        s0, s1, s2, s3, s4, s5]
            return np.array(out)
        return f_sens, 21

    if m <= 4:
        def f_few(_t, y):
            yl = y.tolist()
            out = []
            for j, (V1, V2, CL, Q, Vmax, Km, k11, k12, k21, vm, g) in enumerate(consts):
                a1, a2 = yl[3 * j], yl[3 * j + 1]
                c = g * a1
                out += [-k11 * a1 + k12 * a2 - vm * c / (Km + c), k21 * a1 - k12 * a2, a1]
            return np.array(out)
        return f_few, 3

    Km = TH[:, _I_KM]
    k11, k12, k21, vm, g = np.array([cst[6:] for cst in consts]).T

    def f_many(_t, y):
        Y = y.reshape(m, 3)
        a1, a2 = Y[:, 0], Y[:, 1]
        c = g * a1
        out = np.empty((m, 3))
        out[:, 0] = -k11 * a1 + k12 * a2 - vm * c / (Km + c)
        out[:, 1] = k21 * a1 - k12 * a2
        out[:, 2] = a1
        return out.ravel()
    return f_many, 3


def _integrate(t_eval, doses, thetas, *, sens=False, rtol=1e-10, method="LSODA"):
    """States of ``m`` curves at ``t_eval`` (h, increasing, >= 0): array (m, width, n)."""
    from scipy.integrate import solve_ivp

    doses = np.atleast_1d(np.asarray(doses, dtype=np.float64))
    thetas = np.atleast_2d(np.asarray(thetas, dtype=np.float64))
    m = doses.size
    f, w = _rhs(doses, thetas, sens=sens)
    y0 = np.zeros((m, w))
    y0[:, 0] = 1.0
    t_eval = np.asarray(t_eval, dtype=np.float64)
    out = np.empty((m, w, t_eval.size))
    at0 = t_eval <= 0
    out[:, :, at0] = y0[:, :, None]
    if np.all(at0):
        return out
    sol = solve_ivp(f, (0.0, float(t_eval[-1])), y0.ravel(), method=method, t_eval=t_eval[~at0], rtol=rtol,
                    atol=_ATOL)
    if not sol.success or sol.y.shape[1] != int((~at0).sum()):  # pragma: no cover - smooth, stable ODE
        raise ParameterError(f"mab-pk: the ODE solver failed ({sol.message}); check the parameter values")
    out[:, :, ~at0] = sol.y.reshape(m, w, -1)
    return out


def _solve(t_h, dose, th, *, rtol=1e-10, method="LSODA"):
    """Serum concentration (ug/mL) of one curve at ``t_h``."""
    y = _integrate(t_h, [dose], [th], rtol=rtol, method=method)[0]
    return dose / th[_I_V1] * y[0]


def mab_pk_concentration(t_h, *, dose_ug: float, V1_ml: float, V2_ml: float, CL_ml_per_h: float, Q_ml_per_h: float,
                         Vmax_ug_per_h: float, Km_ug_per_ml: float, rtol: float = 1e-10,
                         method: str = "LSODA") -> np.ndarray:
    """Serum antibody concentration (ug/mL) of the ``mab-pk`` model after an i.v. bolus at t = 0.

    Parameters
    ----------
    t_h : array of float, h
        Sample times after the injection, strictly increasing, >= 0.
    dose_ug : float, ug
        Injected antibody mass (labelled + unlabelled).
    V1_ml, V2_ml : float, mL
        Central and peripheral volumes.
    CL_ml_per_h, Q_ml_per_h : float, mL/h
        Linear clearance and intercompartmental clearance.
    Vmax_ug_per_h : float, ug/h
        Maximum rate of target-mediated elimination (0: linear model).
    Km_ug_per_ml : float, ug/mL
        Concentration at half the maximum target-mediated rate.
    rtol : float
        Relative tolerance of :func:`scipy.integrate.solve_ivp`.
    method : str
        Solver of :func:`scipy.integrate.solve_ivp` (``"LSODA"``, ``"Radau"``, ``"BDF"``,
        ``"DOP853"``, ``"RK45"``).

    Returns
    -------
    ndarray of shape (n,), ug/mL

    Examples
    --------
    >>> c = mab_pk_concentration([0.0, 24.0], dose_ug=100.0, V1_ml=2.0, V2_ml=1.0, CL_ml_per_h=0.02,
    ...                          Q_ml_per_h=0.0, Vmax_ug_per_h=0.0, Km_ug_per_ml=1.0)
    >>> [round(float(x), 6) for x in c]  # one compartment: 50 exp(-0.01 * 24)
    [50.0, 39.331393]
    """
    if method not in _METHODS:
        raise ParameterError(f"mab-pk: unknown ODE method {method!r}; valid: {', '.join(_METHODS)}")
    t = _check_times(t_h, "mab-pk")
    th = _check_theta({"V1_ml": V1_ml, "V2_ml": V2_ml, "CL_ml_per_h": CL_ml_per_h, "Q_ml_per_h": Q_ml_per_h,
                       "Vmax_ug_per_h": Vmax_ug_per_h, "Km_ug_per_ml": Km_ug_per_ml})
    return _solve(t, _check_dose(dose_ug), th, rtol=rtol, method=method)


def linear_half_lives_h(V1_ml: float, V2_ml: float, CL_ml_per_h: float, Q_ml_per_h: float) -> tuple[float, float]:
    """(alpha, beta) half-lives (h) of the linear two-compartment model: ln 2 over the roots of
    ``s^2 - (k10 + k12 + k21) s + k10 k21``, k10 = CL/V1, k12 = Q/V1, k21 = Q/V2.

    Examples
    --------
    >>> [round(x, 4) for x in linear_half_lives_h(2.0, 1.0, 0.02, 0.0)]  # one compartment: ln2 / 0.01
    [69.3147, inf]
    """
    k10, k12, k21 = CL_ml_per_h / V1_ml, Q_ml_per_h / V1_ml, Q_ml_per_h / V2_ml
    s = k10 + k12 + k21
    disc = math.sqrt(max(s * s - 4.0 * k10 * k21, 0.0))
    big = (s + disc) / 2.0
    small = k10 * k21 / big if big > 0 else 0.0  # the product of the roots, without cancellation
    ln2 = math.log(2.0)
    if k21 == 0:  # no peripheral exchange: the central compartment alone
        return (ln2 / k10 if k10 > 0 else math.inf), math.inf
    return (ln2 / big if big > 0 else math.inf), (ln2 / small if small > 0 else math.inf)


def _auc_inf(doses, thetas, *, rtol=1e-10, method="LSODA") -> np.ndarray:
    """AUC of the serum concentration from 0 to infinity (ug h / mL) for ``m`` curves at once.

    Integrates until every curve's concentration is below 1e-4 Km, then adds the tail of the
    linear limit in closed form: with elimination ``k10 a1`` only, ``int_t^inf a1 = (a1 + a2) / k10``
    (``k10 = (CL + Vmax / Km) / V1``).  Linear curves (Vmax = 0) give ``dose / CL`` at once.
    """
    from scipy.integrate import solve_ivp

    D = np.atleast_1d(np.asarray(doses, dtype=np.float64))
    th = np.atleast_2d(np.asarray(thetas, dtype=np.float64))
    V1, V2, CL, Q, Vmax, Km = th.T
    a = np.zeros((D.size, 2))
    a[:, 0] = 1.0
    auc = np.zeros(D.size)
    c_stop = 1e-4 * Km
    sub = np.flatnonzero((Vmax > 0) & (D / V1 > c_stop))
    if sub.size:
        f, _ = _rhs(D[sub], th[sub], sens=False)
        gs, cs = D[sub] / V1[sub], c_stop[sub]

        def below(_t, y):
            return float(np.max(gs * y.reshape(-1, 3)[:, 0] / cs)) - 1.0

        below.terminal = True
        below.direction = -1
        y0 = np.zeros((sub.size, 3))
        y0[:, 0] = 1.0
        sol = solve_ivp(f, (0.0, 1e9), y0.ravel(), method=method, rtol=rtol, atol=_ATOL * float(np.min(cs / gs)),
                        events=below)
        if sol.status != 1:  # pragma: no cover
            raise ParameterError(f"mab-pk: the AUC integration did not reach 1e-4 Km ({sol.message})")
        Y = sol.y_events[0][0].reshape(-1, 3)
        a[sub] = Y[:, :2]
        auc[sub] = gs * Y[:, 2]
    k10 = (CL + Vmax / Km) / V1
    return auc + D / V1 * (a[:, 0] + a[:, 1]) / k10


class MabPK:
    """``mab-pk``: two-compartment serum PK of an antibody with saturable target-mediated elimination.

    Parameters
    ----------
    residuals : {"log", "linear"}
        ``"log"`` (default): residuals ``log(model) - log(data)`` (proportional error, the
        usual choice for concentrations spanning decades; data must be > 0); ``"linear"``:
        ``model - data`` (additive error, uniform weights).
    rtol : float
        Relative tolerance of the ODE solver (:func:`scipy.integrate.solve_ivp`) in
        :meth:`simulate` and in the fit (the screening of starting values runs at 1e-6).
    method : str
        :func:`scipy.integrate.solve_ivp` method (``"LSODA"`` default, ``"Radau"``, ``"BDF"``,
        ``"DOP853"``).
    n_refine : int
        Number of converged least-squares runs, from the best-screened starting values,
        before the best is kept (default 1; at most 4 runs are tried).

    Notes
    -----
    Parameters are fitted as logarithms (all positive; standard errors converted by
    ``se(x) = x se(log x)``) by bounded trust-region least squares
    (:func:`scipy.optimize.least_squares`, ``method="dogbox"``) with an exact Jacobian from the sensitivity
    equations integrated with the model.  Starting values come from a non-compartmental
    look at each arm (back-extrapolated C0, AUC, terminal slope), crossed with a grid
    of Km and Q values; all are screened in one integration and the best refined.
    Standard errors come from the covariance ``s^2 (J^T J)^-1`` with
    ``s^2 = WRSS / (n - k)`` (derived quantities by the delta method).  Fix parameters
    with ``fixed={"Vmax_ug_per_h": 0}`` (the linear model; Km is then dropped and
    reported NaN) or any other values.

    One arm (one dose) rarely pins down both linear and target-mediated clearance; arms
    of different antibody mass (tracer and blocking dose) fitted jointly with shared
    parameters do (:meth:`fit_arms`).

    Derived: ``t_half_alpha_h``, ``t_half_beta_h`` (the linear limit far below Km,
    clearance ``CL_low_conc_ml_per_h = CL + Vmax/Km``), ``t_half_beta_saturated_h`` (far
    above Km, clearance CL), ``AUC_ug_h_per_ml`` (0 to infinity) and
    ``AUC_0_last_ug_h_per_ml`` (0 to the last sample), per arm with suffix ``_arm1``, ...
    when several arms are fitted.
    """

    name = "mab-pk"

    def __init__(self, *, residuals: str = "log", rtol: float = 1e-10, method: str = "LSODA", n_refine: int = 1):
        if residuals not in ("log", "linear"):
            raise ParameterError(f"mab-pk: residuals must be 'log' or 'linear', got {residuals!r}")
        if not (0 < float(rtol) <= 1e-4):
            raise ParameterError(f"mab-pk: rtol must be in (0, 1e-4], got {rtol!r}")
        self.residuals = residuals
        self.rtol = float(rtol)
        if method not in _METHODS:
            raise ParameterError(f"mab-pk: unknown ODE method {method!r}; valid: {', '.join(_METHODS)}")
        self.method = str(method)
        if int(n_refine) < 1:
            raise ParameterError(f"mab-pk: n_refine must be >= 1, got {n_refine!r}")
        self.n_refine = int(n_refine)

    def __repr__(self) -> str:
        return f"MabPK(residuals={self.residuals!r}, rtol={self.rtol:g}, method={self.method!r})"

    @property
    def param_names(self) -> tuple[str, ...]:
        return PK_PARAMS

    # ------------------------------------------------------------------ forward model
    def simulate(self, t_h, *, dose_ug: float, V1_ml: float, V2_ml: float, CL_ml_per_h: float, Q_ml_per_h: float,
                 Vmax_ug_per_h: float, Km_ug_per_ml: float) -> np.ndarray:
        """Serum concentration (ug/mL) at ``t_h`` (h after an i.v. bolus of ``dose_ug``);
        see :func:`mab_pk_concentration`."""
        return mab_pk_concentration(t_h, dose_ug=dose_ug, V1_ml=V1_ml, V2_ml=V2_ml, CL_ml_per_h=CL_ml_per_h,
                                    Q_ml_per_h=Q_ml_per_h, Vmax_ug_per_h=Vmax_ug_per_h, Km_ug_per_ml=Km_ug_per_ml,
                                    rtol=self.rtol, method=self.method)

    # ------------------------------------------------------------------ fitting
    def fit(self, t_h, conc_ug_per_ml, *, dose_ug: float, fixed: Mapping | None = None,
            region: str = "") -> KineticFit:
        """Fit serum concentrations after one dose.

        Parameters
        ----------
        t_h : array of float, h
            Sample times after the injection (strictly increasing, >= 0).
        conc_ug_per_ml : array of float, ug/mL
            Serum antibody concentrations (:func:`serum_concentration_ug_per_ml` converts
            89Zr activity).
        dose_ug : float, ug
            Injected antibody mass (labelled + unlabelled).
        fixed : dict of str to float, optional
            Parameters held at the given values (names from :data:`PK_PARAMS`).
        region : str
            Label recorded in ``info``.

        Returns
        -------
        KineticFit
            ``params``/``se`` for the six parameters and the derived half-lives and AUCs.
        """
        return self.fit_arms([(t_h, conc_ug_per_ml, dose_ug)], fixed=fixed, region=region)

    def fit_arms(self, arms, *, fixed: Mapping | None = None, region: str = "") -> KineticFit:
        """Fit several arms (e.g. tracer dose and blocking dose) with shared parameters.

        Parameters
        ----------
        arms : sequence of ``(t_h, conc_ug_per_ml, dose_ug)`` tuples or of mappings with keys
            ``t_h``, ``conc_ug_per_ml``, ``dose_ug`` (and optionally ``label``); every arm
            the same form.
        fixed, region
            As in :meth:`fit`.

        Returns
        -------
        KineticFit
            ``fitted`` and ``residuals`` are the arms' points one after the other;
            ``info["arms"]`` lists each arm's dose, number of points and slice into them.
        """
        from scipy.optimize import least_squares as scipy_lsq

        data = self._check_arms(arms)
        fixed_th, free = self._check_fixed(fixed)
        n = sum(d["t"].size for d in data)
        k = len(free)
        if n <= k:
            raise ParameterError(f"mab-pk fit of {region or 'the serum curve'}: {n} points for {k} free parameters; "
                                 "give more samples, more arms or fix parameters")
        n_arms = len(data)
        doses = np.array([d["dose"] for d in data])
        t_all = np.unique(np.concatenate([d["t"] for d in data]))
        idx = [np.searchsorted(t_all, d["t"]) for d in data]
        y_obs = np.concatenate([d["c"] for d in data])
        log_res = self.residuals == "log"
        y_cmp = np.log(y_obs) if log_res else y_obs

        def full(x):
            th = fixed_th.copy()
            th[free] = np.exp(x)
            return th

        def conc(Y, th, sens):
            """Concentrations (and d log C / d log theta[free]) of the arms from the states."""
            cs, ds = [], []
            for j in range(n_arms):
                a1 = Y[j, 0, idx[j]]
                cs.append(doses[j] / th[_I_V1] * a1)
                if sens:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        dl = Y[j][3:9][:, idx[j]].T / a1[:, None]
                    dl[:, _I_V1] -= 1.0
                    ds.append(dl[:, free])
            return np.concatenate(cs), (np.concatenate(ds) if sens else None)

        cache = {}

        def model(x):
            key = x.tobytes()
            if key not in cache:
                if len(cache) > 8:
                    cache.clear()
                th = full(x)
                Y = _integrate(t_all, doses, np.tile(th, (n_arms, 1)), sens=True, rtol=self.rtol, method=self.method)
                c, dl = conc(Y, th, True)
                c = np.maximum(c, 1e-300)
                dl = np.nan_to_num(dl, nan=0.0, posinf=0.0, neginf=0.0)
                cache[key] = (np.log(c) - y_cmp, dl, Y) if log_res else (c - y_cmp, dl * c[:, None], Y)
            return cache[key]

        # starts: screen them all in one integration, refine the best two
        starts = self._starts(data, fixed_th, free)
        lo = np.log(np.maximum(np.min(starts[:, free], axis=0) * 1e-5, 1e-12))
        hi = np.log(np.max(starts[:, free], axis=0) * 1e5)
        Ys = _integrate(t_all, np.tile(doses, len(starts)), np.repeat(starts, n_arms, axis=0), rtol=1e-6,
                        method=self.method).reshape(len(starts), n_arms, 3, -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            cost0 = []
            for s, th in enumerate(starts):
                c = np.maximum(conc(Ys[s], th, False)[0], 1e-300)
                r0 = (np.log(c) if log_res else c) - y_cmp
                cost0.append(float(r0 @ r0) if np.all(np.isfinite(r0)) else math.inf)
        # refine from the best starts until n_refine runs have converged (at most 4 runs)
        trials, n_ok = [], 0
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            for s in np.argsort(cost0, kind="stable")[:max(4, self.n_refine)]:
                x0 = np.clip(np.log(starts[s][free]), lo + 1e-9, hi - 1e-9)
                try:
                    r = scipy_lsq(lambda x: model(x)[0], x0, jac=lambda x: model(x)[1], bounds=(lo, hi),
                                  method="dogbox", x_scale=1.0, xtol=_XTOL, ftol=1e-13, gtol=1e-13, max_nfev=300)
                except (ValueError, FloatingPointError, np.linalg.LinAlgError, ParameterError):
                    continue
                if np.isfinite(r.cost):
                    trials.append(r)
                    n_ok += r.status > 0
                if n_ok >= self.n_refine:
                    break
        if not trials:
            raise ParameterError("mab-pk: the fit failed from every starting point: check the concentrations "
                                 "and the doses")
        res = min(trials, key=lambda r: r.cost)
        x = res.x
        th = full(x)
        r, J, Y = model(x)
        wrss = float(r @ r)
        aic, aicc, bic = information_criteria(wrss, n, k)
        cov = None
        if n > k:
            try:
                cov = wrss / (n - k) * np.linalg.pinv(J.T @ J, rcond=1e-13)
            except np.linalg.LinAlgError:  # pragma: no cover
                cov = None

        def se_of(grad):  # delta method; grad = d value / d log(theta[free])
            if cov is None:
                return math.nan
            var = float(grad @ cov @ grad)
            return math.sqrt(var) if var >= 0 else math.nan

        params, se = {}, {}
        linear_only = th[_I_VMAX] == 0 and _I_VMAX not in free
        for i, name in enumerate(PK_PARAMS):
            params[name] = float(th[i])
            se[name] = th[i] * se_of(np.eye(k)[free.index(i)]) if i in free else 0.0
        if linear_only:
            params["Km_ug_per_ml"] = math.nan
            se["Km_ug_per_ml"] = math.nan
        for name, val, grad in self._derived(th, free, data, Y, idx):
            params[name] = float(val)
            se[name] = se_of(grad)

        fitted = np.exp(y_cmp + r) if log_res else y_cmp + r
        arms_info, i0 = [], 0
        for d in data:
            arms_info.append({"label": d["label"], "dose_ug": d["dose"], "n": int(d["t"].size),
                              "points": [i0, i0 + int(d["t"].size)]})
            i0 += int(d["t"].size)
        units = {p: PK_UNITS.get(p, PK_UNITS.get(p.rsplit("_arm", 1)[0], "")) for p in params}
        return KineticFit(model=self.name, params=params, se=se, aic=aic, aicc=aicc, bic=bic, wrss=wrss,
                          n_points=int(n), n_params=k, fitted=fitted, residuals=y_obs - fitted, units=units,
                          info={"residuals": self.residuals, "converged": bool(res.status > 0),
                                "message": str(res.message), "nfev": int(res.nfev), "starts": len(starts),
                                "rtol": self.rtol, "method": self.method, "region": region, "arms": arms_info,
                                "fixed": [PK_PARAMS[i] for i in range(6) if i not in free],
                                "linear_only": bool(linear_only), "time_units": "h"})

    # ------------------------------------------------------------------ helpers
    def _check_arms(self, arms):
        if isinstance(arms, Mapping) or not hasattr(arms, "__len__") or len(arms) == 0:
            raise ParameterError("mab-pk: arms must be a non-empty list of (t_h, conc_ug_per_ml, dose_ug) tuples "
                                 "or of mappings with those keys")
        keys = ("t_h", "conc_ug_per_ml", "dose_ug")
        forms = set()
        out = []
        for j, arm in enumerate(arms):
            if isinstance(arm, Mapping):
                form = ("mapping",) + tuple(sorted(arm))
                if any(k not in arm for k in keys) or not set(arm) <= set(keys) | {"label"}:
                    raise ParameterError(f"mab-pk: arm {j + 1} has keys {sorted(arm)}; each arm needs t_h, "
                                         "conc_ug_per_ml, dose_ug (and optionally label)")
                t, c, dose, label = arm["t_h"], arm["conc_ug_per_ml"], arm["dose_ug"], arm.get("label")
            else:
                try:
                    items = tuple(arm)
                except TypeError:
                    raise ParameterError(f"mab-pk: arm {j + 1} is not a (t_h, conc_ug_per_ml, dose_ug) tuple") from None
                if len(items) not in (3, 4):
                    raise ParameterError(f"mab-pk: arm {j + 1} has {len(items)} items; give (t_h, conc_ug_per_ml, "
                                         "dose_ug[, label])")
                form = ("tuple", len(items))
                t, c, dose = items[:3]
                label = items[3] if len(items) == 4 else None
            forms.add(form)
            if len(forms) > 1:
                raise ParameterError(f"mab-pk: arm {j + 1} is given with different fields from arm 1; give every arm "
                                     "the same fields (t_h, conc_ug_per_ml, dose_ug[, label])")
            where = f"mab-pk arm {j + 1}"
            t = _check_times(t, where, min_points=3)
            c = np.atleast_1d(np.asarray(c, dtype=np.float64))
            if c.shape != t.shape:
                raise ParameterError(f"{where}: {c.size} concentrations for {t.size} sample times")
            bad = np.flatnonzero(~np.isfinite(c))
            if bad.size:
                raise ParameterError(f"{where}: concentration {int(bad[0])} is {c[bad[0]]!r}; remove the sample")
            neg = np.flatnonzero(c < 0)
            if neg.size:
                raise ParameterError(f"{where}: concentration {int(neg[0])} is negative ({c[neg[0]]:g} ug/mL)")
            if self.residuals == "log" and np.any(c == 0):
                raise ParameterError(f"{where}: a concentration is 0, which log residuals cannot fit; drop it or use "
                                     "residuals='linear'")
            out.append({"t": t, "c": c, "dose": _check_dose(dose, where),
                        "label": str(label) if label is not None else f"arm{j + 1}"})
        return out

    def _check_fixed(self, fixed):
        fixed = dict(fixed or {})
        unknown = [k for k in fixed if k not in PK_PARAMS]
        if unknown:
            raise ParameterError(f"mab-pk: unknown fixed parameter(s) {', '.join(map(str, unknown))}; "
                                 f"valid: {', '.join(PK_PARAMS)}")
        th = np.full(6, math.nan)
        for name, v in fixed.items():
            v = float(v)
            i = PK_PARAMS.index(name)
            if not math.isfinite(v) or v < 0 or (v == 0 and i in (_I_V1, _I_V2, _I_KM)):
                raise ParameterError(f"mab-pk: fixed {name} must be {'positive' if i in (_I_V1, _I_V2, _I_KM) else '>= 0'}"
                                     f", got {v!r}")
            th[i] = v
        if fixed.get("Vmax_ug_per_h", None) == 0:
            th[_I_KM] = 1.0  # irrelevant: no target-mediated term
        if fixed.get("CL_ml_per_h", None) == 0 and fixed.get("Vmax_ug_per_h", None) == 0:
            raise ParameterError("mab-pk: CL_ml_per_h and Vmax_ug_per_h both fixed at 0: nothing clears the antibody")
        free = [i for i in range(6) if math.isnan(th[i])]
        if not free:
            raise ParameterError("mab-pk: every parameter is fixed; nothing to fit")
        return th, free

    def _starts(self, data, fixed_th, free):
        """Starting values (full parameter vectors, only the free entries used) from a
        non-compartmental look at each arm."""
        nca = [_nca(d["t"], d["c"], d["dose"]) for d in data]
        hi_arm = max(range(len(data)), key=lambda j: data[j]["dose"])
        lo_arm = min(range(len(data)), key=lambda j: data[j]["dose"])
        V1 = float(np.median([a["V1"] for a in nca]))
        cl_hi, cl_lo = nca[hi_arm]["CL"], nca[lo_arm]["CL"]
        Vz = float(np.median([a["Vz"] for a in nca]))
        V2 = max(Vz - V1, 0.3 * V1)
        if len(data) > 1 and cl_lo > 1.2 * cl_hi:
            cl, tmdd = cl_hi, cl_lo - cl_hi
        else:
            cl, tmdd = 0.5 * cl_lo, 0.5 * cl_lo
        allc = np.concatenate([d["c"] for d in data])
        allc = allc[allc > 0]
        cmed = float(np.median(allc)) if allc.size else 1.0
        clow = float(np.median(data[lo_arm]["c"][data[lo_arm]["c"] > 0])) if np.any(data[lo_arm]["c"] > 0) else cmed
        kms = sorted({round(v, 12) for v in (clow, cmed, 0.1 * clow, 10.0 * cmed)})
        qs = (2.0 * cl_hi + 0.02 * V1, 10.0 * cl_hi + 0.1 * V1)
        starts = []
        for q in qs:
            for km in kms:
                st = np.array([V1, V2, cl, q, tmdd * km, km])
                th = fixed_th.copy()
                th[free] = np.maximum(st[free], 1e-9)
                starts.append(th)
        return np.array(starts)

    def _derived(self, th, free, data, Y, idx):
        """(name, value, gradient in log theta[free]) of the derived quantities."""
        linear_only = th[_I_VMAX] == 0 and _I_VMAX not in free
        k = len(free)
        steps = np.zeros((2 * k, 6))  # central differences in log theta
        for j, i in enumerate(free):
            steps[2 * j, i], steps[2 * j + 1, i] = _H, -_H
        pert = th[None, :] * np.exp(steps)  # (2k, 6)

        def numeric(fun):
            v = np.array([fun(p) for p in pert]).reshape(k, 2)
            return (v[:, 0] - v[:, 1]) / (2 * _H)

        def cl_low(p):
            return p[_I_CL] + p[_I_VMAX] / p[_I_KM]

        funs = [("t_half_alpha_h", lambda p: linear_half_lives_h(p[_I_V1], p[_I_V2], cl_low(p), p[_I_Q])[0]),
                ("t_half_beta_h", lambda p: linear_half_lives_h(p[_I_V1], p[_I_V2], cl_low(p), p[_I_Q])[1])]
        if not linear_only:
            funs += [("t_half_beta_saturated_h",
                      lambda p: linear_half_lives_h(p[_I_V1], p[_I_V2], p[_I_CL], p[_I_Q])[1]),
                     ("CL_low_conc_ml_per_h", cl_low)]
        out = []
        with np.errstate(invalid="ignore"):
            for name, fun in funs:
                out.append((name, fun(th), numeric(fun)))
        # AUC 0 -> infinity: every arm and every perturbation in one integration
        m = len(data)
        doses = np.array([d["dose"] for d in data])
        allth = np.vstack([th[None, :], pert])  # (2k + 1, 6)
        aucs = _auc_inf(np.repeat(doses[None, :], allth.shape[0], axis=0).ravel(),
                        np.repeat(allth, m, axis=0), rtol=self.rtol, method=self.method).reshape(-1, m)
        for j, d in enumerate(data):
            suffix = f"_arm{j + 1}" if m > 1 else ""
            g = aucs[1:, j].reshape(k, 2)
            out.append((f"AUC_ug_h_per_ml{suffix}", aucs[0, j], (g[:, 0] - g[:, 1]) / (2 * _H)))
            # AUC 0 -> last sample from the integral states (and their sensitivities) of the fit
            il = idx[j][-1]
            scale = d["dose"] / th[_I_V1]
            auc_last = scale * Y[j, 2, il]
            grad = scale * Y[j, 15:21, il]
            grad[_I_V1] -= auc_last
            out.append((f"AUC_0_last_ug_h_per_ml{suffix}", auc_last, grad[free]))
        return out


def _nca(t, c, dose):
    """Rough non-compartmental numbers for starting values: V1 (dose / back-extrapolated C0),
    total clearance (dose / AUC), terminal volume."""
    pos = c > 0
    t, c = t[pos], c[pos]
    if c.size >= 2 and c[1] < c[0] and t[1] > t[0]:
        k = math.log(c[0] / c[1]) / (t[1] - t[0])
        c0 = c[0] * math.exp(k * t[0])
    else:
        c0 = float(c[0]) if c.size else 1.0
    lz = 0.0
    if c.size >= 3:
        lz = -np.polyfit(t[-3:], np.log(c[-3:]), 1)[0]
    if not (np.isfinite(lz) and lz > 0):
        lz = math.log(2.0) / max(float(t[-1]) if t.size else 24.0, 1.0)
    tt = np.concatenate([[0.0], t]) if t.size and t[0] > 0 else t
    cc = np.concatenate([[c0], c]) if t.size and t[0] > 0 else c
    auc = float(np.trapezoid(cc, tt)) + float(c[-1]) / lz if c.size else dose / c0
    V1 = dose / c0
    CL = dose / auc
    return {"V1": V1, "CL": CL, "Vz": CL / lz}


# ---------------------------------------------------------------------------- multi-day Patlak
def multi_day_patlak(tissue, frames, serum: InputFunction, *, t_star_s: float | None = 0.0, weights="uniform",
                     half_life_s: float | None = None, region: str = "") -> KineticFit:
    """Patlak plot of static scans days apart against a serum input: Ki (irreversible uptake)
    and VT (reversible, the intercept).

    ``C_T / C_P = Ki int_0^t C_P / C_P + VT``, fitted by (weighted) least squares over the
    scans that start at or after ``t_star_s``, with :class:`invivo.kinetics.graphical.Patlak`:
    each scan is compared as what the PET measured, the frame mean, and the abscissa and
    ordinate use the exact frame means of C_P and of its running integral (the serum curve
    is linear between its samples).  Data that follow ``C_T = Ki int C_P + VT C_P`` give Ki
    and VT exactly, however long the frames and however far apart.

    Parameters
    ----------
    tissue : array of float
        Tissue activity concentration per scan (Bq/mL, decay corrected to the injection,
        the same scale as the serum; %ID/g with a serum in %ID/mL works too).
    frames : Frames or array of float
        The scans (s after the injection; gaps allowed: e.g. 30-min frames on days 1, 2,
        4 and 7), or sample times (s) of point values.
    serum : InputFunction
        Serum activity (Bq/mL, decay corrected) against time, covering the last scan.
    t_star_s : float or None
        Scans starting before this time (s) are left out of the line (default 0: all
        scans); ``None`` selects t* automatically (linearity criterion of the Patlak model).
    weights : "uniform", "duration", "decay" or array
        Regression weights per scan (default uniform); ``"decay"`` needs ``half_life_s``
        (89Zr: ``invivo.isotopes.half_life_s("89Zr")``).
    half_life_s : float, optional
        For ``weights="decay"``.
    region : str
        Label recorded in ``info`` and used in error messages.

    Returns
    -------
    KineticFit
        ``Ki`` (mL/cm^3/min, the registry's unit), ``Ki_per_h`` (mL/cm^3/h), ``Ki_per_d``
        (mL/cm^3/d), ``VT`` (mL/cm^3, the Patlak intercept), each with its standard error
        (regression covariance); ``fitted`` and ``residuals`` are the Patlak ordinate
        (C_T / C_P) of the scans used; ``info`` holds the plot coordinates ``x`` (min) and
        ``y``, ``tstar_s``, ``frames_used`` and ``cov`` (of Ki, VT).

    Examples
    --------
    >>> serum = InputFunction([0, 864000], [50.0, 50.0])  # a constant serum: int C_P = 50 t_min
    >>> frames = Frames([86400, 172800, 345600, 604800], [88200, 174600, 347400, 606600])  # 30 min, days 1-7
    >>> fit = multi_day_patlak(2e-4 * 50.0 * frames.mid_min + 0.1 * 50.0, frames, serum)
    >>> round(fit["Ki"], 10), round(fit["VT"], 10), round(fit["Ki_per_d"], 6)
    (0.0002, 0.1, 0.288)
    """
    from .graphical import Patlak

    if not isinstance(frames, Frames):
        t = np.atleast_1d(np.asarray(frames, dtype=np.float64))
        if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
            raise ParameterError("multi-day patlak: scan times must be finite and strictly increasing (s)")
        frames = Frames.from_times(t)
    if not isinstance(serum, InputFunction):
        raise ParameterError("multi-day patlak: serum must be an InputFunction (serum activity against time, s)")
    if len(frames) < 3:
        raise ParameterError(f"multi-day patlak of {region or 'the curve'}: {len(frames)} scan(s); the Patlak line "
                             "needs at least 3")
    base = Patlak(tstar_s=t_star_s, weights=weights, half_life_s=half_life_s, dt_min=0.1)
    fit = base.fit(tissue, frames, serum, region=region)
    ki, vt, se_ki, se_vt = fit.params["Ki"], fit.params["V0"], fit.se["Ki"], fit.se["V0"]
    params = {"Ki": ki, "VT": vt, "Ki_per_h": ki * 60.0, "Ki_per_d": ki * 1440.0}
    se = {"Ki": se_ki, "VT": se_vt, "Ki_per_h": se_ki * 60.0, "Ki_per_d": se_ki * 1440.0}
    info = dict(fit.info, multi_day=True, intercept="VT (the Patlak intercept V0: reversible uptake)")
    return KineticFit(model="patlak", params=params, se=se, aic=fit.aic, aicc=fit.aicc, bic=fit.bic, wrss=fit.wrss,
                      n_points=fit.n_points, n_params=fit.n_params, fitted=fit.fitted, residuals=fit.residuals,
                      units={"Ki": "mL/cm3/min", "VT": "mL/cm3", "Ki_per_h": "mL/cm3/h", "Ki_per_d": "mL/cm3/d"},
                      info=info)


# ---------------------------------------------------------------------------- blocking studies
def _group(v, name: str, param: str | None):
    """(mean, se, n or None, sd or None, units or None) of one arm of a blocking study."""
    if isinstance(v, KineticFit):
        if param is None:
            raise ParameterError(f"blocking comparison: {name} is a KineticFit; say which parameter with param=")
        if param not in v.params:
            raise ParameterError(f"blocking comparison: {name} has no parameter {param!r}; it has "
                                 f"{', '.join(v.params)}")
        m, s = float(v.params[param]), float(v.se.get(param, math.nan))
        return m, s, None, None, v.units.get(param)
    if isinstance(v, Mapping):
        if "mean" not in v or "se" not in v:
            raise ParameterError(f"blocking comparison: {name} as a mapping needs 'mean' and 'se' (and optionally 'n')")
        m, s = float(v["mean"]), float(v["se"])
        nn = v.get("n")
        if nn is not None and (int(nn) != nn or nn < 2):
            raise ParameterError(f"blocking comparison: {name} n must be an integer >= 2, got {nn!r}")
        return m, s, (int(nn) if nn is not None else None), None, v.get("units")
    if isinstance(v, tuple) and len(v) == 2 and all(np.ndim(a) == 0 for a in v):
        m, s = float(v[0]), float(v[1])
        return m, s, None, None, None
    a = np.asarray(v, dtype=np.float64)
    if a.ndim != 1:
        raise ParameterError(f"blocking comparison: {name} must be (mean, se), a mapping, a KineticFit or a 1D array "
                             f"of per-animal values; got shape {a.shape}")
    if a.size < 2:
        raise ParameterError(f"blocking comparison: {name} has {a.size} animal(s); per-animal values need >= 2")
    if not np.all(np.isfinite(a)):
        raise ParameterError(f"blocking comparison: {name} has a value that is not a number")
    sd = float(np.std(a, ddof=1))
    return float(a.mean()), sd / math.sqrt(a.size), int(a.size), sd, None


def blocking_comparison(total, blocked, *, units: str | None = None, param: str | None = None,
                        confidence: float = 0.95) -> dict:
    """Specific uptake = total - blocked, with its standard error, a confidence interval and the
    specific fraction.

    Parameters
    ----------
    total, blocked
        Each arm as: a 1D array of per-animal values (%ID/g, Ki, ...); a ``(mean, se)``
        pair; a mapping ``{"mean", "se"[, "n"][, "units"]}``; or a :class:`KineticFit`
        with ``param`` naming the value (e.g. ``"Ki"``).  The two arms are independent
        animals (or scans).
    units : str, optional
        Units of the values (default: from a KineticFit or mapping, else ``"%ID/g"``).
    param : str, optional
        The parameter to take from KineticFit arms.
    confidence : float
        Level of the confidence interval (default 0.95).

    Returns
    -------
    dict
        ``specific``, ``specific_se``, ``ci_low``, ``ci_high``, ``df`` (Welch-Satterthwaite
        when both arms have n, else inf: normal), ``p_value`` (two-sided, specific = 0),
        ``specific_fraction`` = specific / total and ``specific_fraction_se`` (delta method,
        independent arms), ``total_mean``, ``total_se``, ``blocked_mean``, ``blocked_se``,
        ``n_total``, ``n_blocked`` (None for summaries without n), ``confidence``,
        ``method`` ("welch" or "normal"), ``units``.

    Notes
    -----
    ``se = sqrt(se_t^2 + se_b^2)`` with ``se = sd / sqrt(n)`` for per-animal values;
    ``df = se^4 / (se_t^4 / (n_t - 1) + se_b^4 / (n_b - 1))``; the interval is
    ``specific +/- t_{df}(1 - alpha/2) se``.  For the fraction ``f = 1 - b / t``:
    ``se_f^2 = (b / t^2)^2 se_t^2 + (1 / t)^2 se_b^2``.

    Examples
    --------
    >>> r = blocking_comparison((10.0, 0.3), (4.0, 0.4))
    >>> r["specific"], round(r["specific_se"], 6), round(r["specific_fraction"], 6)
    (6.0, 0.5, 0.6)
    """
    from scipy import stats

    if not (0 < float(confidence) < 1):
        raise ParameterError(f"blocking comparison: confidence must be in (0, 1), got {confidence!r}")
    mt, st, nt, _, ut = _group(total, "total", param)
    mb, sb, nb, _, ub = _group(blocked, "blocked", param)
    for nm, m, s in (("total", mt, st), ("blocked", mb, sb)):
        if not math.isfinite(m):
            raise ParameterError(f"blocking comparison: {nm} mean is {m!r}")
        if not (math.isfinite(s) and s >= 0):
            raise ParameterError(f"blocking comparison: {nm} standard error must be finite and >= 0, got {s!r}")
    d = mt - mb
    var = st * st + sb * sb
    se_d = math.sqrt(var)
    if nt is not None and nb is not None:
        den = st ** 4 / (nt - 1) + sb ** 4 / (nb - 1)
        df = var * var / den if den > 0 else math.inf
        method = "welch"
    else:
        df = math.inf
        method = "normal"
    q = float(stats.norm.ppf(0.5 + confidence / 2)) if math.isinf(df) else float(stats.t.ppf(0.5 + confidence / 2, df))
    if se_d > 0:
        tstat = d / se_d
        p = float(2 * (stats.norm.sf(abs(tstat)) if math.isinf(df) else stats.t.sf(abs(tstat), df)))
    else:
        p = 0.0 if d != 0 else 1.0
    if mt != 0:
        frac = d / mt
        se_f = math.sqrt((mb / mt ** 2) ** 2 * st * st + (sb / mt) ** 2)
    else:
        frac, se_f = math.nan, math.nan
    return {"specific": d, "specific_se": se_d, "ci_low": d - q * se_d, "ci_high": d + q * se_d, "df": df,
            "p_value": p, "specific_fraction": frac, "specific_fraction_se": se_f, "total_mean": mt, "total_se": st,
            "blocked_mean": mb, "blocked_se": sb, "n_total": nt, "n_blocked": nb, "confidence": float(confidence),
            "method": method, "units": units or ut or ub or "%ID/g"}
