"""Reference-region models: SRTM (with a voxelwise basis-function fit), Logan-ref and Patlak-ref.

The input is a reference region's frame-averaged curve ``C_R`` (Bq/mL, one value per
frame, decay corrected), a region without specific binding.

- SRTM (Lammertsma & Hume 1996): ``C_T(t) = R1 C_R(t) + (k2 - R1 k2a) [C_R (x) e^(-k2a t)](t)``,
  ``k2a = k2 / (1 + BPND)``; R1 = K1 / K1' (1), k2 and k2a in 1/min.
  Assumes the target is one-tissue-like (free and bound exchange fast).
- Logan-ref (Logan 1996): ``int C_T / C_T = DVR (int C_R + C_R / k2') / C_T + b``;
  BPND = DVR - 1.  Without ``k2_ref`` the ``C_R / k2'`` term is left out (the slope is
  still DVR once C_R / C_T is constant).
- Patlak-ref: ``C_T / C_R = Ki_ref int C_R / C_R + intercept`` (Ki_ref 1/min, for
  irreversibly trapped tracers).

SRTM's convolution needs ``C_R`` between frames: it is interpolated linearly between the
frame mid times, from ``C_R = 0`` at t = 0 and held at the last value to the end of the
scan, onto a fine grid holding every mid time and frame boundary; the convolution is then
exact (:func:`invivo.kinetics.simulate.conv_exp`) and averaged over each frame.  The
``R1 C_R`` term uses the measured frame averages.  The graphical models use the frame
averages and :func:`invivo.kinetics.graphical.tissue_integral` for ``<int C>_i``, with the
t* selection of :mod:`invivo.kinetics.graphical`.

Examples
--------
A reference curve and a target exactly following each model:

>>> import numpy as np
>>> frames = Frames.from_durations([30] * 6 + [120] * 5 + [300] * 8)
>>> tm = frames.mid_min
>>> ref = 50 * tm * np.exp(-tm / 8) + 5
>>> fit = SRTM().fit(SRTM.simulate(frames, ref, R1=1.2, k2=0.25, BPND=1.5), frames, ref)
>>> [round(fit.params[p], 6) for p in ("R1", "k2", "BPND", "k2a")]
[1.2, 0.25, 1.5, 0.1]
>>> model = LoganRef(k2_ref=0.1)
>>> fit = model.fit(model.simulate(frames, ref, DVR=2.5, intercept=-10.0), frames, ref)
>>> round(fit.params["DVR"], 8), round(fit.params["BPND"], 8)
(2.5, 1.5)
>>> fit = PatlakRef().fit(PatlakRef.simulate(frames, ref, Ki_ref=0.01, intercept=0.8), frames, ref)
>>> round(fit.params["Ki_ref"], 10), round(fit.params["intercept"], 10)
(0.01, 0.8)

Basis functions, for many curves at once (k2a on the grid: exact):

>>> grid = np.geomspace(0.01, 1.0, 50)
>>> tacs = np.stack([SRTM.simulate(frames, ref, R1=r, k2=grid[20] * 2.0, BPND=1.0) for r in (0.8, 1.2)])
>>> out = srtm_bfm(tacs, frames, ref, k2a_grid=grid)
>>> np.round(out["R1"], 8).tolist(), np.round(out["BPND"], 8).tolist(), out["status"].tolist()
([0.8, 1.2], [1.0, 1.0], [0, 0])
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import float_dtype, get_array_module, to_device
from ..errors import ParameterError
from .base import (Frames, KineticFit, check_curve, check_dt_min, check_frames, check_from_injection, delta_se,
                   frame_weights, information_criteria, least_squares, weights_label)
from .graphical import _GraphicalModel, _logan_xy, _patlak_xy, _solve_logan, tissue_integral
from .simulate import conv_exp, fine_grid, frame_average

__all__ = ["SRTM", "LoganRef", "PatlakRef", "srtm_bfm", "srtm_curve", "reference_on_grid", "DEFAULT_K2A_GRID",
           "BFM_OK", "BFM_EDGE_LOW", "BFM_EDGE_HIGH", "BFM_FAILED"]

#: default basis-function grid of k2a (1/min): 100 values, geometric from 0.002 to 1 (6.5 % apart)
DEFAULT_K2A_GRID = np.geomspace(0.002, 1.0, 100)

#: ``srtm_bfm`` status codes
BFM_OK, BFM_EDGE_LOW, BFM_EDGE_HIGH, BFM_FAILED = 0, 1, 2, 3

UNITS = {"R1": "1", "k2": "1/min", "BPND": "1", "k2a": "1/min", "DVR": "1", "intercept": "min", "Ki_ref": "1/min"}


# ---------------------------------------------------------------------------------------------- helpers
def check_reference(reference, frames: Frames, what: str = "reference curve") -> np.ndarray:
    """A reference curve: one finite, non-negative value per frame, some positive."""
    cr = check_curve(reference, frames, what)
    neg = np.flatnonzero(cr < 0)
    if neg.size:
        i = int(neg[0])
        raise ParameterError(f"{what}: frame {i} is {cr[i]:g} (negative); a reference region's curve must be "
                             "non-negative (clip small negative noise to 0 or check the region)")
    if not np.any(cr > 0):
        raise ParameterError(f"{what}: every frame is 0; the reference region holds no activity (check the region)")
    check_from_injection(frames)
    return cr


def reference_on_grid(frames: Frames, reference, *, dt_min: float = 0.05):
    """The reference curve on a fine grid (min): linear between frame mid times, 0 at t = 0,
    the last value held to the end of the last frame.

    Returns
    -------
    t : (G,) array, min
        Grid holding every frame boundary and mid time.
    cr : (G,) array
        Interpolated reference curve (Bq/mL).
    """
    cr = np.asarray(reference, dtype=np.float64)
    t = fine_grid(frames, dt_min=dt_min, extra_min=frames.mid_min)
    tk = np.concatenate([[0.0], frames.mid_min, [frames.end_min[-1]]])
    ck = np.concatenate([[0.0], cr, [cr[-1]]])
    return t, np.interp(t, tk, ck)


def _conv_basis(frames: Frames, reference, rates, dt_min: float):
    """Frame averages of ``C_R (x) exp(-rate t)`` for each rate: (len(rates), n)."""
    t, crt = reference_on_grid(frames, reference, dt_min=dt_min)
    return frame_average(t, conv_exp(t, crt, np.asarray(rates, dtype=np.float64)), frames)


def _srtm(frames: Frames, cr, on_grid, R1, k2, k2a):
    """``R1 C_R + (k2 - R1 k2a) <C_R (x) e^(-k2a t)>`` per frame; ``on_grid`` is
    :func:`reference_on_grid` of ``cr``."""
    t, crt = on_grid
    return R1 * cr + (k2 - R1 * k2a) * frame_average(t, conv_exp(t, crt, k2a), frames)


def srtm_curve(frames: Frames, reference, *, R1: float, k2: float, BPND: float, dt_min: float = 0.05):
    """SRTM target curve (Bq/mL per frame) from the reference's frame averages.

    Parameters
    ----------
    frames : Frames
    reference : (n,) array
        Reference region frame averages (Bq/mL).
    R1 : float
        K1 / K1' (1).
    k2 : float
        Target efflux rate (1/min).
    BPND : float
        Non-displaceable binding potential (> -1).
    dt_min : float
        Grid step (min).
    """
    if not BPND > -1:
        raise ParameterError(f"SRTM: BPND must be > -1, got {BPND!r}")
    cr = np.asarray(reference, dtype=np.float64)
    return _srtm(frames, cr, reference_on_grid(frames, cr, dt_min=dt_min), R1, k2, k2 / (1.0 + BPND))


# ---------------------------------------------------------------------------------------------- SRTM
class SRTM:
    """Simplified reference tissue model: R1, k2 (1/min), BPND, and k2a = k2 / (1 + BPND).

    Fitted with lmfit (bounds R1 in [0, 20], k2 in [1e-5, 20] /min, BPND in (-0.95, 100])
    from the basis-function estimate; standard errors from lmfit's covariance, k2a's by
    the delta method.  Example: the module docstring.
    """

    name = "srtm"
    param_names = ("R1", "k2", "BPND")

    def __init__(self, *, weights="duration", half_life_s: float | None = None, dt_min: float = 0.05,
                 k2a_grid=None):
        """
        Parameters
        ----------
        weights : "duration", "decay", "uniform" or array
            Frame weights (:func:`invivo.kinetics.base.frame_weights`).
        half_life_s : float, optional
            For ``weights="decay"``.
        dt_min : float
            Grid step of the convolution (min, <= 0.1).
        k2a_grid : array, optional
            k2a values (1/min) of the basis-function start (default :data:`DEFAULT_K2A_GRID`).
        """
        self.weights = weights
        self.half_life_s = half_life_s
        self.dt_min = check_dt_min(dt_min)
        self.k2a_grid = _check_grid(k2a_grid)

    def __repr__(self) -> str:
        return f"SRTM(weights={weights_label(self.weights)}, dt_min={self.dt_min:g})"

    @staticmethod
    def simulate(frames: Frames, reference_values, *, R1: float, k2: float, BPND: float, dt_min: float = 0.05):
        """Frame-averaged target curve (Bq/mL) for R1, k2 (1/min) and BPND (:func:`srtm_curve`)."""
        cr = check_reference(reference_values, frames)
        return srtm_curve(frames, cr, R1=R1, k2=k2, BPND=BPND, dt_min=dt_min)

    def fit(self, tac, frames: Frames, reference, *, region: str = "") -> KineticFit:
        """Fit one target curve.

        Parameters
        ----------
        tac : (n,) array
            Target region frame averages (Bq/mL, decay corrected).
        frames : Frames
            Frame timing (s from injection).
        reference : (n,) array
            Reference region frame averages (Bq/mL).
        region : str
            Name recorded in the result and used in messages.

        Returns
        -------
        KineticFit
            R1, k2 (1/min), BPND, k2a (1/min) with standard errors.
        """
        import lmfit

        what = f"srtm fit of {region or 'the curve'}"
        y = check_curve(tac, frames, what)
        cr = check_reference(reference, frames)
        if y.size <= 3:
            raise ParameterError(f"{what}: {y.size} frames for 3 free parameters; SRTM needs more frames")
        w = frame_weights(frames, self.weights, half_life_s=self.half_life_s)
        sw = np.sqrt(w)
        scale = float(np.max(np.abs(y))) or 1.0
        on_grid = reference_on_grid(frames, cr, dt_min=self.dt_min)

        est = srtm_bfm(y, frames, cr, k2a_grid=self.k2a_grid, weights=w, dt_min=self.dt_min)
        r1, k2a0, bp0 = ((float(est["R1"]), float(est["k2a"]), float(est["BPND"])) if est["status"] != BFM_FAILED
                         else (1.0, 0.1, 0.5))
        params = lmfit.Parameters()
        params.add("R1", value=float(np.clip(r1, 1e-3, 19.0)), min=0.0, max=20.0)
        params.add("BPND", value=float(np.clip(bp0, -0.9, 99.0)), min=-0.95, max=100.0)
        params.add("k2", value=float(np.clip(k2a0 * (1 + np.clip(bp0, -0.9, 99.0)), 1e-4, 19.0)), min=1e-5, max=20.0)

        def model(v):
            return _srtm(frames, cr, on_grid, v["R1"], v["k2"], v["k2"] / (1.0 + v["BPND"]))

        def residual(p):
            return sw * (model(p.valuesdict()) - y) / scale

        # a generic second start only when the basis-function start is not inside its grid
        starts = [] if est["status"] == BFM_OK else [{"R1": 1.0, "k2": 0.1, "BPND": 0.5}]
        res = least_squares(residual, params, starts=starts, xtol=1e-12, ftol=1e-12)
        v = res.params.valuesdict()
        fitted = model(v)
        wrss = float(np.sum(w * (y - fitted) ** 2))
        k = int(res.nvarys)
        aic, aicc, bic = information_criteria(wrss, y.size, k)
        params_out = {n: float(v[n]) for n in self.param_names}
        se = {n: (float(res.params[n].stderr) if res.params[n].stderr is not None else math.nan)
              for n in self.param_names}
        k2, bp = v["k2"], v["BPND"]
        params_out["k2a"] = k2 / (1.0 + bp)
        se["k2a"] = delta_se(res, {"k2": 1.0 / (1.0 + bp), "BPND": -k2 / (1.0 + bp) ** 2})
        return KineticFit(model=self.name, params=params_out, se=se, aic=aic, aicc=aicc, bic=bic, wrss=wrss,
                          n_points=int(y.size), n_params=k, fitted=fitted, residuals=y - fitted,
                          units={p: UNITS[p] for p in params_out},
                          info={"weights": weights_label(self.weights),
                                "converged": bool(res.success), "message": res.message, "nfev": int(res.nfev),
                                "region": region, "dt_min": self.dt_min,
                                "start": {"R1": r1, "k2a": k2a0, "BPND": bp0, "bfm_status": int(est["status"])},
                                "reference_interpolation": "linear between frame mid times, 0 at t = 0"})


def _check_grid(k2a_grid):
    if k2a_grid is None:
        return DEFAULT_K2A_GRID
    g = np.asarray(k2a_grid, dtype=np.float64)
    if g.ndim != 1 or g.size < 2 or not np.all(np.isfinite(g)) or np.any(g <= 0) or np.any(np.diff(g) <= 0):
        raise ParameterError("k2a_grid must be at least 2 positive, finite, strictly increasing rates (1/min)")
    return g


def srtm_bfm(tac_array, frames: Frames, reference, *, k2a_grid=None, weights="duration",
             half_life_s: float | None = None, dt_min: float = 0.05, chunk: int = 32768) -> dict:
    """Voxelwise SRTM by basis functions (Gunn et al. 1997), vectorised over voxels.

    For each ``k2a`` of the grid the basis ``B = <C_R (x) e^(-k2a t)>`` makes the model
    linear, ``C_T = R1 C_R + c B`` (``c = k2 - R1 k2a``); the weighted 2-parameter least
    squares is solved for every voxel at once and the basis with the lowest residual kept.

    Parameters
    ----------
    tac_array : ndarray of shape (..., n), NumPy or CuPy
        Curves (Bq/mL), the frames on the last axis.
    frames : Frames
        Frame timing (s).
    reference : (n,) array
        Reference region frame averages (Bq/mL).
    k2a_grid : (m,) array, optional
        Increasing k2a values (1/min); default :data:`DEFAULT_K2A_GRID`.
    weights : "duration", "decay", "uniform" or (n,) array
        Frame weights.
    half_life_s : float, optional
        For ``weights="decay"``.
    dt_min : float
        Grid step of the convolution (min).
    chunk : int
        Voxels per block (memory ~ 50 x chunk x m bytes).

    Returns
    -------
    dict of ndarray of shape (...), on the input's device
        ``R1``, ``k2`` (1/min), ``BPND``, ``k2a`` (1/min), ``wrss`` (weighted residual sum of
        squares) and ``status`` (int8): :data:`BFM_OK`; :data:`BFM_EDGE_LOW` /
        :data:`BFM_EDGE_HIGH` when the best k2a is the lowest / highest of the grid (the
        estimate is then bounded by the grid); :data:`BFM_FAILED` for a curve with a
        non-finite value, a zero curve or no solvable basis -- its values are 0, never NaN.
        Float outputs are float32 for float32 input, float64 otherwise.  Example: the module
        docstring.
    """
    xp = get_array_module(tac_array)
    if xp is np:
        tac_array = np.asarray(tac_array)
    what = "srtm_bfm"
    if tac_array.dtype.kind not in "biuf":
        raise ParameterError(f"{what}: tac_array must hold numbers (Bq/mL), not {tac_array.dtype}")
    check_frames(frames, what)
    if tac_array.ndim < 1 or tac_array.shape[-1] != len(frames):
        raise ParameterError(f"{what}: tac_array has {tac_array.shape[-1] if tac_array.ndim else 0} frames on its "
                             f"last axis for {len(frames)} frames")
    if not (isinstance(chunk, (int, np.integer)) and chunk >= 1):
        raise ParameterError(f"{what}: chunk must be a positive integer, got {chunk!r}")
    cr = check_reference(to_device(reference, "cpu"), frames)
    grid = _check_grid(k2a_grid)
    w = frame_weights(frames, weights, half_life_s=half_life_s)
    sw = np.sqrt(w)
    # host: the basis comes from the one reference curve; built once on the host, then moved
    basis = _conv_basis(frames, cr, grid, dt_min) * sw          # (m, n) weighted
    crw = cr * sw
    g00 = float(crw @ crw)
    g01 = basis @ crw
    g11 = np.einsum("mn,mn->m", basis, basis)
    det = g00 * g11 - g01 * g01
    valid = det > 1e-12 * g00 * g11
    det_s = np.where(valid, det, 1.0)
    i00, i01, i11 = g11 / det_s, -g01 / det_s, g00 / det_s      # inverse of [[g00, g01], [g01, g11]]
    dev = "gpu" if xp is not np else "cpu"
    cols = to_device(np.concatenate([crw[None, :], basis]).T.copy(), dev)  # (n, m + 1)
    i00, i01, i11, grid_d, sw_d = (to_device(a, dev) for a in (i00, i01, i11, grid, sw))
    bad_basis = to_device(~valid, dev)

    shape = tac_array.shape[:-1]
    n = len(frames)
    flat = tac_array.reshape(-1, n)
    nv = flat.shape[0]
    odt = float_dtype(tac_array.dtype)
    out = {k: xp.zeros(nv, dtype=odt) for k in ("R1", "k2", "BPND", "k2a", "wrss")}
    status = xp.zeros(nv, dtype=xp.int8)
    m = grid.size
    for s in range(0, nv, int(chunk)):
        y = flat[s:s + chunk].astype(xp.float64)
        finite = xp.all(xp.isfinite(y), axis=1)
        yw = xp.where(finite[:, None], y, 0.0) * sw_d
        yy = xp.sum(yw * yw, axis=1)
        p = yw @ cols                                        # (v, m + 1): C_R.y and B_j.y
        a, b = p[:, :1], p[:, 1:]
        c0 = i00 * a + i01 * b                               # R1 for each basis
        c1 = i01 * a + i11 * b                               # k2 - R1 k2a
        rss = yy[:, None] - (c0 * a + c1 * b)
        rss = xp.where(bad_basis[None, :], xp.inf, rss)
        j = xp.argmin(rss, axis=1)
        take = j[:, None]
        r1 = xp.take_along_axis(c0, take, axis=1)[:, 0]
        c = xp.take_along_axis(c1, take, axis=1)[:, 0]
        th = grid_d[j]
        k2 = c + r1 * th
        ok = finite & (yy > 0) & xp.isfinite(r1) & xp.isfinite(c) & ~bad_basis[j]
        st = xp.where(j == 0, BFM_EDGE_LOW, xp.where(j == m - 1, BFM_EDGE_HIGH, BFM_OK))
        status[s:s + chunk] = xp.where(ok, st, BFM_FAILED).astype(xp.int8)
        out["R1"][s:s + chunk] = xp.where(ok, r1, 0.0)
        out["k2"][s:s + chunk] = xp.where(ok, k2, 0.0)
        out["k2a"][s:s + chunk] = xp.where(ok, th, 0.0)
        out["BPND"][s:s + chunk] = xp.where(ok, k2 / th - 1.0, 0.0)
        out["wrss"][s:s + chunk] = xp.where(ok, xp.maximum(xp.take_along_axis(rss, take, axis=1)[:, 0], 0.0), 0.0)
    res = {k: v.reshape(shape) for k, v in out.items()}
    res["status"] = status.reshape(shape)
    return res


# ---------------------------------------------------------------------------------------------- graphical
class LoganRef(_GraphicalModel):
    """Logan reference-region plot: DVR (slope), BPND = DVR - 1, intercept (min).

    ``x_i = (<int C_R>_i + C_R,i / k2') / C_T,i``, ``y_i = <int C_T>_i / C_T,i`` (min).
    Example: the module docstring.
    """

    name = "logan-ref"
    slope = "DVR"
    intercept = "intercept"
    units = {"DVR": "1", "intercept": "min", "BPND": "1"}
    noise_in_x = True  # the target's noise; the reference is taken as exact

    def __init__(self, *, k2_ref: float | None = None, **options):
        """
        Parameters
        ----------
        k2_ref : float, optional
            The reference region's efflux rate k2' (1/min); ``None`` leaves the ``C_R / k2'``
            term out.
        **options
            t*, weights (see :class:`invivo.kinetics.graphical.Patlak`).
        """
        if k2_ref is not None and not (isinstance(k2_ref, (int, float, np.floating)) and math.isfinite(k2_ref)
                                       and k2_ref > 0):
            raise ParameterError(f"k2_ref must be a positive rate (1/min) or None, got {k2_ref!r}")
        super().__init__(**options)
        self.k2_ref = None if k2_ref is None else float(k2_ref)

    def _x_numerator(self, cr, frames):
        num = tissue_integral(cr, frames)
        return num + cr / self.k2_ref if self.k2_ref else num

    def simulate(self, frames: Frames, reference_values, *, DVR: float, intercept: float):
        """Target frame averages (Bq/mL) exactly linear in this plot from the first frame
        (``<int C_T>_i = DVR x_num,i + intercept C_T,i`` solved frame by frame; intercept < 0 min)."""
        cr = check_reference(reference_values, frames)
        return _solve_logan(frames, DVR * self._x_numerator(cr, frames), intercept, "LoganRef.simulate")

    def fit(self, tac, frames: Frames, reference, *, region: str = "") -> KineticFit:
        """Fit one target curve against the reference's frame averages (Bq/mL).

        Returns
        -------
        KineticFit
            DVR, intercept (min) and BPND = DVR - 1 with standard errors.
        """
        return self._fit(tac, frames, reference, region)

    def _plot(self, y, frames, reference):
        cr = check_reference(reference, frames)
        return (*_logan_xy(y, self._x_numerator(cr, frames), frames), {"k2_ref": self.k2_ref})

    def _derived(self, slope, intercept):
        return [("BPND", slope - 1.0, {"DVR": 1.0})]


class PatlakRef(_GraphicalModel):
    """Patlak reference-region plot: Ki_ref (slope, 1/min) and intercept (1).

    ``x_i = <int C_R>_i / C_R,i`` (min), ``y_i = C_T,i / C_R,i``.  Example: the module
    docstring.
    """

    name = "patlak-ref"
    slope = "Ki_ref"
    intercept = "intercept"
    units = {"Ki_ref": "1/min", "intercept": "1"}

    @staticmethod
    def simulate(frames: Frames, reference_values, *, Ki_ref: float, intercept: float):
        """``Ki_ref <int C_R>_i + intercept C_R,i`` (Bq/mL): exactly linear in this plot."""
        cr = check_reference(reference_values, frames)
        return Ki_ref * tissue_integral(cr, frames) + intercept * cr

    def fit(self, tac, frames: Frames, reference, *, region: str = "") -> KineticFit:
        """Fit one target curve against the reference's frame averages (Bq/mL).

        Returns
        -------
        KineticFit
            Ki_ref (1/min) and intercept with standard errors.
        """
        return self._fit(tac, frames, reference, region)

    def _plot(self, y, frames, reference):
        cr = check_reference(reference, frames)
        return (*_patlak_xy(y, cr, tissue_integral(cr, frames)), {})
