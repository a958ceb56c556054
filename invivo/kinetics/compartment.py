"""Plasma-input compartment models: 1TCM, 2TCM (reversible) and 2TCM-irr, with blood volume and delay.

The tissue curve is the plasma input convolved with the model's impulse response, a sum
of exponentials (exact convolution, :mod:`invivo.kinetics.simulate`); the PET sees
``C_PET = (1 - vB) C_T + vB C_B`` averaged over each frame.  Rate constants per minute.

- 1TCM: ``h(t) = K1 e^(-k2 t)``; VT = K1 / k2.
- 2TCM: ``h(t) = K1 / (a2 - a1) [(k3 + k4 - a1) e^(-a1 t) + (a2 - k3 - k4) e^(-a2 t)]``,
  ``a1,2 = (k2 + k3 + k4 -/+ sqrt((k2 + k3 + k4)^2 - 4 k2 k4)) / 2``;
  VT = K1 / k2 (1 + k3 / k4), VND = K1 / k2, BPND = k3 / k4.
- 2TCM-irr: ``k4 = 0``: ``h(t) = K1 / (k2 + k3) [k3 + k2 e^(-(k2 + k3) t)]``;
  Ki = K1 k3 / (k2 + k3).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ParameterError
from .base import (Frames, KineticFit, check_curve, delta_se, frame_weights, information_criteria,
                   least_squares)
from .inputs import InputFunction
from .simulate import conv_exp, fine_grid, frame_average

__all__ = ["OneTCM", "TwoTCM", "TwoTCMIrr", "impulse_terms"]

RATE_UNITS = {"K1": "mL/cm3/min", "k2": "1/min", "k3": "1/min", "k4": "1/min", "vB": "mL/mL", "delay_s": "s",
              "VT": "mL/cm3", "VND": "mL/cm3", "BPND": "1", "Ki": "mL/cm3/min"}


def impulse_terms(model: str, p: dict):
    """(amplitudes, rates) of the impulse response ``sum A_i exp(-b_i t)`` (t in min)."""
    K1, k2 = p["K1"], p["k2"]
    if model == "1tcm":
        return [K1], [k2]
    k3 = p["k3"]
    k4 = p.get("k4", 0.0) if model == "2tcm" else 0.0
    s = k2 + k3 + k4
    disc = math.sqrt(max(s * s - 4.0 * k2 * k4, 0.0))
    a1, a2 = (s - disc) / 2.0, (s + disc) / 2.0
    if a2 - a1 < 1e-9 * max(s, 1e-12):  # degenerate (double root): nudge apart, error O(1e-9)
        a2 = a1 + 1e-9 * max(s, 1e-12)
    return [K1 * (k3 + k4 - a1) / (a2 - a1), K1 * (a2 - k3 - k4) / (a2 - a1)], [a1, a2]


class _CompartmentModel:
    name = ""
    rates: tuple[str, ...] = ()
    #: (initial, min, max) per rate constant
    bounds = {"K1": (0.2, 1e-6, 10.0), "k2": (0.2, 1e-6, 10.0), "k3": (0.05, 0.0, 5.0), "k4": (0.05, 0.0, 5.0)}
    starts: list[dict] = []

    def __init__(self, *, vB: float | None = None, fit_delay: bool = False, delay_s: float = 0.0,
                 dt_min: float = 0.05, weights="duration", half_life_s: float | None = None):
        """
        Parameters
        ----------
        vB : float, optional
            Fixed blood volume fraction; ``None`` (default) fits it in [0, 0.6].
        fit_delay : bool
            Fit the delay of the input relative to the tissue (s, -60..120).
        delay_s : float
            Delay used when it is not fitted (s; the input is shifted later by it).
        dt_min : float
            Step of the simulation grid (min; SCIENCE.md: <= 0.1).
        weights : "duration", "decay", "uniform" or array
            Frame weights (:func:`invivo.kinetics.base.frame_weights`).
        half_life_s : float, optional
            For ``weights="decay"``.
        """
        if vB is not None and not (0.0 <= vB < 1.0):
            raise ParameterError(f"vB must be a fraction in [0, 1), got {vB!r}")
        if not (0 < dt_min <= 0.1):
            raise ParameterError(f"dt_min must be in (0, 0.1] min, got {dt_min!r}")
        self.vB = vB
        self.fit_delay = bool(fit_delay)
        self.delay_s = float(delay_s)
        self.dt_min = float(dt_min)
        self.weights = weights
        self.half_life_s = half_life_s

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vB={'fitted' if self.vB is None else self.vB}, "
                f"delay={'fitted' if self.fit_delay else self.delay_s})")

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.rates + ("vB", "delay_s")

    # ------------------------------------------------------------------ forward model
    def _grid_inputs(self, frames: Frames, inp: InputFunction, delay_s: float):
        t = fine_grid(frames, dt_min=self.dt_min)
        ts = t * 60.0 - delay_s
        return t, inp.plasma_at(ts), inp.blood_at(ts)

    def _tissue(self, t, cp, p):
        amps, rates = impulse_terms(self.name, p)
        return sum(a * conv_exp(t, cp, b) for a, b in zip(amps, rates))

    def simulate(self, frames: Frames, inp: InputFunction, *, vB: float = 0.0, delay_s: float = 0.0, **rates):
        """Frame-averaged C_PET (Bq/mL) for the given rate constants (per min), vB and delay (s)."""
        missing = [r for r in self.rates if r not in rates]
        if missing:
            raise ParameterError(f"{self.name}: missing rate constant(s) {missing}; needs {', '.join(self.rates)}")
        inp.check_covers(frames, delay_s=delay_s)
        t, cp, cb = self._grid_inputs(frames, inp, delay_s)
        ct = self._tissue(t, cp, rates)
        return frame_average(t, (1.0 - vB) * ct + vB * cb, frames)

    # ------------------------------------------------------------------ fitting
    def fit(self, tac, frames: Frames, inp: InputFunction, *, region: str = "") -> KineticFit:
        """Fit one time-activity curve (Bq/mL, one value per frame, decay corrected)."""
        import lmfit

        what = f"{self.name} fit of {region or 'the curve'}"
        y = check_curve(tac, frames, what)
        n_free = len(self.rates) + (self.vB is None) + self.fit_delay
        if y.size <= n_free:
            raise ParameterError(f"{what}: {y.size} frames for {n_free} free parameters; the model needs more frames")
        inp.check_covers(frames, delay_s=-60.0 if self.fit_delay else self.delay_s)
        w = frame_weights(frames, self.weights, half_life_s=self.half_life_s)
        sw = np.sqrt(w)
        scale = float(np.max(np.abs(y))) or 1.0

        params = lmfit.Parameters()
        for r in self.rates:
            v0, lo, hi = self.bounds[r]
            params.add(r, value=v0, min=lo, max=hi)
        params.add("vB", value=0.05 if self.vB is None else self.vB, min=0.0, max=0.6, vary=self.vB is None)
        params.add("delay_s", value=self.delay_s, min=-60.0, max=120.0, vary=self.fit_delay)

        # the delay changes the grid inputs; cache them per delay value
        cache = {}

        def inputs(d):
            key = round(float(d), 9)
            if key not in cache:
                if len(cache) > 64:
                    cache.clear()
                cache[key] = self._grid_inputs(frames, inp, float(d))
            return cache[key]

        def residual(p):
            v = p.valuesdict()
            t, cp, cb = inputs(v["delay_s"])
            ct = self._tissue(t, cp, v)
            model = frame_average(t, (1.0 - v["vB"]) * ct + v["vB"] * cb, frames)
            return sw * (model - y) / scale

        res = least_squares(residual, params, starts=self.starts, xtol=1e-12, ftol=1e-12)
        v = res.params.valuesdict()
        fitted = y + res.residual * scale / np.where(sw > 0, sw, 1.0)
        wrss = float(np.sum((res.residual * scale) ** 2))
        k = int(res.nvarys)
        aic, aicc, bic = information_criteria(wrss, y.size, k)
        params_out = {r: float(v[r]) for r in self.param_names}
        se = {r: (float(res.params[r].stderr) if res.params[r].stderr is not None else
                  (0.0 if not res.params[r].vary else math.nan)) for r in self.param_names}
        for name, val, grad in self._derived(v):
            params_out[name] = val
            se[name] = delta_se(res, grad)
        return KineticFit(model=self.name, params=params_out, se=se, aic=aic, aicc=aicc, bic=bic, wrss=wrss,
                          n_points=int(y.size), n_params=k, fitted=fitted, residuals=y - fitted,
                          units={p: RATE_UNITS.get(p, "") for p in params_out},
                          info={"weights": self.weights if isinstance(self.weights, str) else "user",
                                "converged": bool(res.success), "message": res.message, "nfev": int(res.nfev),
                                "input": inp.description, "region": region, "dt_min": self.dt_min,
                                "fixed": [n for n in self.param_names if not res.params[n].vary]})

    def _derived(self, v):  # (name, value, {param: d value / d param})
        return []


class OneTCM(_CompartmentModel):
    """One-tissue compartment model (K1, k2) with vB and optional delay; VT = K1 / k2."""

    name = "1tcm"
    rates = ("K1", "k2")
    starts = [{"K1": 0.05, "k2": 0.02}, {"K1": 1.0, "k2": 1.0}]

    def _derived(self, v):
        K1, k2 = v["K1"], v["k2"]
        return [("VT", K1 / k2, {"K1": 1.0 / k2, "k2": -K1 / k2 ** 2})]


class TwoTCM(_CompartmentModel):
    """Reversible two-tissue compartment model (K1..k4) with vB and delay; VT, VND, BPND."""

    name = "2tcm"
    rates = ("K1", "k2", "k3", "k4")
    starts = [{"K1": 0.1, "k2": 0.1, "k3": 0.1, "k4": 0.1}, {"K1": 0.5, "k2": 0.5, "k3": 0.02, "k4": 0.01},
              {"K1": 0.05, "k2": 0.02, "k3": 0.3, "k4": 0.3}]

    def _derived(self, v):
        K1, k2, k3, k4 = v["K1"], v["k2"], v["k3"], v["k4"]
        if k4 <= 0:
            return [("VND", K1 / k2, {"K1": 1 / k2, "k2": -K1 / k2 ** 2}), ("VT", math.inf, {}),
                    ("BPND", math.inf, {})]
        vt = K1 / k2 * (1 + k3 / k4)
        return [("VND", K1 / k2, {"K1": 1 / k2, "k2": -K1 / k2 ** 2}),
                ("VT", vt, {"K1": vt / K1, "k2": -vt / k2, "k3": K1 / (k2 * k4), "k4": -K1 * k3 / (k2 * k4 ** 2)}),
                ("BPND", k3 / k4, {"k3": 1 / k4, "k4": -k3 / k4 ** 2})]


class TwoTCMIrr(_CompartmentModel):
    """Irreversible two-tissue compartment model (K1, k2, k3; k4 = 0) with vB and delay; Ki."""

    name = "2tcm-irr"
    rates = ("K1", "k2", "k3")
    starts = [{"K1": 0.1, "k2": 0.1, "k3": 0.01}, {"K1": 0.5, "k2": 0.5, "k3": 0.1}, {"K1": 0.02, "k2": 0.05, "k3": 0.002}]

    def _derived(self, v):
        K1, k2, k3 = v["K1"], v["k2"], v["k3"]
        s = k2 + k3
        ki = K1 * k3 / s
        return [("Ki", ki, {"K1": k3 / s, "k2": -K1 * k3 / s ** 2, "k3": K1 * k2 / s ** 2})]
