"""Voxelwise parametric maps: Patlak Ki and Logan VT in closed form, SRTM by basis functions, 1TCM and
2TCM-irr by variable projection over a table of exact convolutions.

Every map function takes the 4D image's data ``(..., n_frames)`` (NumPy or CuPy: one code
path, the backend rule), returns arrays on the same device, and never spreads NaN: failed
voxels carry a status code and zeros.

1TCM / 2TCM-irr.  The models are linear in all parameters but one rate ``b`` (k2 for the
1TCM, k2 + k3 for the 2TCM-irr):

    1TCM:      C_PET = (1 - vB) K1 F(k2) + vB C_B
    2TCM-irr:  C_PET = (1 - vB) [Ki F(0) + (K1 - Ki) F(k2 + k3)] + vB C_B,   Ki = K1 k3 / (k2 + k3)

with ``F(b)`` the frame averages of ``C_p (x) e^(-b t)`` (exact convolution).  ``F`` is
tabulated once on a log-spaced grid of ``b`` and interpolated by a cubic spline in ``log
b``; for every voxel the linear parameters are solved in closed form (variable
projection), the best grid ``b`` is found for all voxels at once (every node's explained sum of
squares from a few matrix products), then refined between its grid neighbours by regula falsi on
the slope of the profiled sum of squares (its derivative from the spline's, by the envelope
theorem), vectorised over voxels.  The result is the
least-squares fit of the exact model, to the spline's accuracy (~1e-8 relative on the
default grid).
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import cpu_cores, get_array_module, to_device
from ..errors import ParameterError
from .base import Frames, frame_weights
from .inputs import InputFunction
from .simulate import conv_exp, fine_grid, frame_average

__all__ = ["patlak_map", "logan_map", "srtm_map", "compartment_map", "MAP_STATUS", "MAP_MODELS"]

#: per-voxel status of the maps
MAP_STATUS = {"ok": 0, "at_bound": 1, "failed": 2, "outside_mask": 3}
MAP_MODELS = ("patlak", "logan", "srtm", "1tcm", "2tcm-irr")


def _prepare(data, frames: Frames, mask):
    xp = get_array_module(data)
    y = xp.asarray(data)
    if y.ndim < 2 or y.shape[-1] != len(frames):
        raise ParameterError(f"image data {tuple(y.shape)}: expected frames on the last axis ({len(frames)} of them)")
    dtype = np.float32 if y.dtype == np.float32 else np.float64
    y = y.astype(dtype, copy=False)
    spatial = y.shape[:-1]
    flat = y.reshape(-1, y.shape[-1])
    if mask is not None:
        m = xp.asarray(mask).astype(bool).reshape(-1)
        if m.size != flat.shape[0]:
            raise ParameterError(f"mask shape {tuple(xp.asarray(mask).shape)} does not match the image {spatial}")
    else:
        m = xp.ones(flat.shape[0], dtype=bool)
    finite = xp.isfinite(flat).all(axis=1)
    return xp, flat, m, finite, spatial, dtype


def _finish(xp, spatial, dtype, maps: dict, status):
    out = {}
    for k, v in maps.items():
        v = xp.where(xp.isfinite(v) & (status != MAP_STATUS["failed"]) & (status != MAP_STATUS["outside_mask"]),
                     v, 0.0)
        out[k] = v.astype(dtype).reshape(spatial)
    out["status"] = status.astype(xp.uint8).reshape(spatial)
    return out


def _weighted_line_batch(xp, x, y, w):
    """Weighted LS line for many curves at once: x, y (N, n), w (n,) -> slope, intercept, se_slope, se_int."""
    sw = w.sum()
    sx = (w * x).sum(axis=-1)
    sy = (w * y).sum(axis=-1)
    sxx = (w * x * x).sum(axis=-1)
    sxy = (w * x * y).sum(axis=-1)
    det = sw * sxx - sx * sx
    ok = det > 1e-12 * (sw * sxx + 1e-300)
    det = xp.where(ok, det, 1.0)
    slope = (sw * sxy - sx * sy) / det
    icpt = (sxx * sy - sx * sxy) / det
    res = y - (slope[..., None] * x + icpt[..., None])
    n = x.shape[-1]
    s2 = (w * res * res).sum(axis=-1) / max(n - 2, 1) * (n / sw)
    se_s = xp.sqrt(xp.maximum(s2 * sw / det, 0.0))
    se_i = xp.sqrt(xp.maximum(s2 * sxx / det, 0.0))
    return slope, icpt, se_s, se_i, ok


def _late(frames: Frames, tstar_s: float | None, min_points: int = 3):
    if tstar_s is None:
        raise ParameterError("voxelwise graphical maps need t* (tstar_s, s): pick it from a regional fit "
                             "(fit.info['tstar_s'] of Patlak/Logan on a large region)")
    sel = frames.start_s >= float(tstar_s) - 1e-6
    if sel.sum() < min_points:
        raise ParameterError(f"t* = {tstar_s:g} s leaves {int(sel.sum())} frames; at least {min_points} are needed")
    return sel


def patlak_map(data, frames: Frames, inp: InputFunction, *, tstar_s: float, mask=None, weights="duration",
               dt_min: float = 0.05) -> dict:
    """Patlak Ki (mL/cm^3/min) and V0 (mL/cm^3) for every voxel, in closed form (with SEs).

    Returns ``{"Ki", "V0", "Ki_se", "V0_se", "status"}`` arrays of the image's spatial shape.
    """
    from .graphical import plasma_terms

    xp, y, m, finite, spatial, dtype = _prepare(data, frames, mask)
    cp, icp, _ = plasma_terms(frames, inp, dt_min=dt_min)
    sel = _late(frames, tstar_s)
    if np.any(cp[sel] <= 0):
        raise ParameterError("the plasma input is 0 in a frame after t*: Patlak needs C_p > 0")
    w = xp.asarray(frame_weights(frames, weights)[sel], dtype=dtype)
    x = xp.asarray(icp[sel] / cp[sel], dtype=dtype)
    yy = y[:, xp.asarray(np.flatnonzero(sel))] / xp.asarray(cp[sel], dtype=dtype)
    slope, icpt, se_s, se_i, ok = _weighted_line_batch(xp, xp.broadcast_to(x, yy.shape), yy, w)
    status = xp.where(~m, MAP_STATUS["outside_mask"], xp.where(ok & finite, MAP_STATUS["ok"], MAP_STATUS["failed"]))
    return _finish(xp, spatial, dtype, {"Ki": slope, "V0": icpt, "Ki_se": se_s, "V0_se": se_i}, status)


def logan_map(data, frames: Frames, inp: InputFunction, *, tstar_s: float, mask=None, weights="duration",
              vB: float = 0.0, dt_min: float = 0.05) -> dict:
    """Logan VT (mL/cm^3) for every voxel, in closed form (with SE); voxels whose late curve
    touches 0 are ``failed``."""
    from .graphical import plasma_terms

    xp, y, m, finite, spatial, dtype = _prepare(data, frames, mask)
    _, icp, cb = plasma_terms(frames, inp, dt_min=dt_min)
    sel = _late(frames, tstar_s)
    ct = (y - vB * xp.asarray(cb, dtype=dtype)) / (1.0 - vB) if vB else y
    # frame means of the running integral, as graphical.tissue_integral defines them for one curve: earlier
    # frames' averages x durations, gaps bridged by trapezoids, a line from 0 before the first frame, plus
    # half the current frame
    d = xp.asarray(frames.duration_s / 60.0, dtype=dtype)
    gaps = xp.asarray(np.maximum(frames.start_min[1:] - frames.end_min[:-1], 0.0), dtype=dtype)
    inc = ct[:, :-1] * d[:-1] + gaps * 0.5 * (ct[:, :-1] + ct[:, 1:])
    start_int = xp.concatenate([xp.zeros((ct.shape[0], 1), dtype=dtype), xp.cumsum(inc, axis=1)], axis=1)
    ict = start_int + 0.5 * ct[:, :1] * max(float(frames.start_min[0]), 0.0) + 0.5 * ct * d
    idx = xp.asarray(np.flatnonzero(sel))
    cts = ct[:, idx]
    pos = (cts > 0).all(axis=1)
    safe = xp.where(cts > 0, cts, 1.0)
    x = xp.asarray(icp, dtype=dtype)[idx] / safe
    yy = ict[:, idx] / safe
    w = xp.asarray(frame_weights(frames, weights)[sel], dtype=dtype)
    slope, icpt, se_s, se_i, ok = _weighted_line_batch(xp, x, yy, w)
    good = ok & pos & finite
    status = xp.where(~m, MAP_STATUS["outside_mask"], xp.where(good, MAP_STATUS["ok"], MAP_STATUS["failed"]))
    return _finish(xp, spatial, dtype, {"VT": slope, "intercept": icpt, "VT_se": se_s}, status)


def srtm_map(data, frames: Frames, reference, *, mask=None, **kwargs) -> dict:
    """SRTM maps (R1, k2, BPND, k2a) by basis functions: :func:`invivo.kinetics.reference.srtm_bfm`
    with the mask applied and the map status codes of this module."""
    from .reference import BFM_OK, srtm_bfm

    xp, y, m, finite, spatial, dtype = _prepare(data, frames, mask)
    res = srtm_bfm(y, frames, reference, **kwargs)
    st = res.pop("status")
    status = xp.where(~m, MAP_STATUS["outside_mask"],
                      xp.where(st == BFM_OK, MAP_STATUS["ok"], xp.where(st == 3, MAP_STATUS["failed"],
                                                                        MAP_STATUS["at_bound"])))
    return _finish(xp, spatial, dtype, {k: v.reshape(-1) for k, v in res.items()}, status)


# ---------------------------------------------------------------------- 1TCM / 2TCM-irr by variable projection
def _table(frames: Frames, inp: InputFunction, rates, dt_min: float, delay_s: float = 0.0):
    """Frame averages of C_p (x) e^(-b t) for every b of ``rates`` (m, n), of C_p integrated (b = 0), and of C_B."""
    t = fine_grid(frames, dt_min=dt_min)
    cp = inp.plasma_at(t * 60.0 - delay_s)
    cb = inp.blood_at(t * 60.0 - delay_s)
    conv = conv_exp(t, cp[None, :], np.asarray(rates, dtype=np.float64))
    return frame_average(t, conv, frames), frame_average(t, conv_exp(t, cp, 0.0), frames), frame_average(t, cb, frames)


class _Spline:
    """Cubic spline in log(b) of the table rows, evaluated with xp (host-built coefficients)."""

    def __init__(self, xp, log_b, values, dtype):
        from scipy.interpolate import CubicSpline

        cs = CubicSpline(log_b, values, axis=0, bc_type="not-a-knot")
        self.xp = xp
        self.nodes = xp.asarray(log_b, dtype=np.float64)
        self.c = xp.asarray(cs.c, dtype=np.float64)  # (4, m-1, n)
        self.lo, self.hi = float(log_b[0]), float(log_b[-1])

    def __call__(self, lb, derivative=False):
        """Rows at ``lb`` (N, n); with ``derivative``, also their derivative in log b."""
        xp = self.xp
        lb = xp.clip(lb, self.lo, self.hi)
        i = xp.clip(xp.searchsorted(self.nodes, lb, side="right") - 1, 0, self.nodes.shape[0] - 2)
        d = (lb - self.nodes[i])[:, None]
        c = self.c[:, i, :]  # (4, N, n)
        value = ((c[0] * d + c[1]) * d + c[2]) * d + c[3]
        if not derivative:
            return value
        return value, (3.0 * c[0] * d + 2.0 * c[1]) * d + c[2]


def _sym_solve(xp, g, r):
    """Solve the small symmetric systems ``g x = r`` for many voxels at once (closed form, p <= 3).

    ``g`` is a p x p nested list of arrays (N,) or scalars, ``r`` a list of p arrays (N,).
    Returns the list of p solutions and ``r . x`` (the explained sum of squares)."""
    p = len(r)
    if p == 1:
        x = [r[0] / g[0][0]]
    elif p == 2:
        det = g[0][0] * g[1][1] - g[0][1] * g[0][1]
        x = [(g[1][1] * r[0] - g[0][1] * r[1]) / det, (g[0][0] * r[1] - g[0][1] * r[0]) / det]
    else:
        a, b, c = g[0][0], g[0][1], g[0][2]
        d, e, f = g[1][1], g[1][2], g[2][2]
        A, B, C = d * f - e * e, c * e - b * f, b * e - c * d
        D, E, F = a * f - c * c, b * c - a * e, a * d - b * b
        det = a * A + b * B + c * C
        x = [(A * r[0] + B * r[1] + C * r[2]) / det, (B * r[0] + D * r[1] + E * r[2]) / det,
             (C * r[0] + E * r[1] + F * r[2]) / det]
    return x, sum(xi * ri for xi, ri in zip(x, r))


def compartment_map(data, frames: Frames, inp: InputFunction, *, model: str = "2tcm-irr", mask=None,
                    weights="duration", vB: float | None = None, rate_range=(1e-4, 5.0), n_grid: int = 256,
                    refine_iterations: int = 8, dt_min: float = 0.05, chunk: int | None = None) -> dict:
    """Voxelwise 1TCM (K1, k2, VT, vB) or 2TCM-irr (K1, k2, k3, Ki, vB) by variable projection.

    Parameters
    ----------
    data : (..., n) array, NumPy or CuPy
    frames : Frames
    inp : InputFunction
    model : {"1tcm", "2tcm-irr"}
    mask : (...) bool array, optional
    weights : frame weights
    vB : float, optional
        Fixed blood volume; ``None`` (default) fits it per voxel (linear parameter).
    rate_range : (float, float)
        Range of the nonlinear rate (1/min): k2 for the 1TCM, k2 + k3 for the 2TCM-irr.
        Voxels whose optimum sits at an end get status ``at_bound``.
    n_grid : int
        Log-spaced table nodes over ``rate_range``.
    refine_iterations : int
        Regula falsi (Illinois) steps on the slope of the profiled sum of squares between the best
        node's neighbours; converged in 4 on noise-free and 5 % noise data (default 8).
    chunk : int, optional
        Voxels per block: default at most 8192 on NumPy (the refinement's temporaries stay in
        cache) and at least one block per core (blocks run on all cores), 2^20 on CuPy.

    Returns
    -------
    dict of arrays (the image's spatial shape), on the input's device, and ``status``.
    """
    if model not in ("1tcm", "2tcm-irr"):
        raise ParameterError(f"compartment_map model must be '1tcm' or '2tcm-irr', got {model!r}")
    lo, hi = float(rate_range[0]), float(rate_range[1])
    if not (0 < lo < hi):
        raise ParameterError(f"rate_range must be 0 < low < high (1/min), got {rate_range!r}")
    if vB is not None and not (0 <= vB < 1):
        raise ParameterError(f"vB must be a fraction in [0, 1), got {vB!r}")
    xp, y, m, finite, spatial, dtype = _prepare(data, frames, mask)
    inp.check_covers(frames)
    log_b = np.linspace(math.log(lo), math.log(hi), int(n_grid))
    table, f0, cb = _table(frames, inp, np.exp(log_b), dt_min)
    spline = _Spline(xp, log_b, table, dtype)
    w = xp.asarray(frame_weights(frames, weights), dtype=np.float64)
    tab = xp.asarray(table, dtype=np.float64)
    f0x = xp.asarray(f0, dtype=np.float64)
    cbx = xp.asarray(cb, dtype=np.float64)
    n_vox, n = y.shape
    names = ["K1", "k2", "VT", "vB"] if model == "1tcm" else ["K1", "k2", "k3", "Ki", "vB"]
    out = {k: xp.zeros(n_vox, dtype=np.float64) for k in names + ["wrss"]}
    status = xp.full(n_vox, MAP_STATUS["outside_mask"], dtype=xp.int32)
    todo = xp.flatnonzero(m & finite)
    status[xp.flatnonzero(m & ~finite)] = MAP_STATUS["failed"]
    # the fixed columns (F(0) for the 2TCM-irr, C_B when vB is fitted) and their weighted products
    fixed = ([f0x] if model == "2tcm-irr" else []) + ([cbx] if vB is None else [])
    gff = [[float((w * u * v).sum()) for v in fixed] for u in fixed]

    def solve(fwf, fwfix, fwy, fixwy):
        """Linear parameters for a column F per voxel from its weighted products; order [fixed..., F]."""
        q = len(fixed)
        g = [[None] * (q + 1) for _ in range(q + 1)]
        for i in range(q):
            for j in range(q):
                g[i][j] = gff[i][j]
            g[i][q] = g[q][i] = fwfix[i]
        g[q][q] = fwf
        return _sym_solve(xp, g, list(fixwy) + [fwy])

    tab_w = tab * w  # (m, n)
    nodes = xp.asarray(log_b, dtype=np.float64)
    # the grid search's normal matrices [fixed..., F_j] do not depend on the voxel: their inverses H_j, once,
    # so that every voxel's explained sum of squares r' H_j r (r = [fixed'Wy..., F_j'Wy]) at every node is a few
    # matrix products (quadratic in the voxel's fixed products, linear and quadratic in F_j'Wy)
    n_fix = len(fixed)
    cols = np.concatenate([np.array([to_device(u, "cpu") for u in fixed]).reshape(n_fix, table.shape[1]), table])  # host
    g_all = (cols * to_device(w, "cpu")) @ cols.T  # weighted products of [fixed..., every node's F]
    gmat = np.empty((len(log_b), n_fix + 1, n_fix + 1))
    gmat[:, :n_fix, :n_fix] = g_all[:n_fix, :n_fix]
    gmat[:, :n_fix, n_fix] = gmat[:, n_fix, :n_fix] = g_all[n_fix:, :n_fix]
    gmat[:, n_fix, n_fix] = np.diagonal(g_all)[n_fix:]
    with np.errstate(all="ignore"):
        try:
            hmat = np.linalg.inv(gmat)
        except np.linalg.LinAlgError:  # a node whose column is a combination of the fixed ones: never the best
            hmat = np.linalg.pinv(gmat)
    pairs = [(i, j) for i in range(n_fix) for j in range(i, n_fix)]
    h_fix = xp.asarray(np.stack([hmat[:, i, j] * (1.0 if i == j else 2.0) for i, j in pairs])
                       if pairs else np.zeros((0, len(log_b))))  # (pairs, m)
    h_cross = xp.asarray(2.0 * hmat[:, :n_fix, n_fix].T)  # (n_fix, m)
    h_last = xp.asarray(hmat[:, n_fix, n_fix])  # (m,)

    def block(s):
        """Fit the voxels todo[s:s + chunk] and write their maps."""
        idx = todo[s:s + chunk]
        yb = y[idx].astype(np.float64)
        yt = yb - vB * cbx if vB else yb
        k = yb.shape[0]
        yw = yt * w
        fixwy = [yw @ u for u in fixed]
        # grid search: the voxel-dependent products of every node in one matrix product
        fwy_grid = yt @ tab_w.T  # (k, m)
        fix_sq = xp.stack([fixwy[i] * fixwy[j] for i, j in pairs], axis=1) if pairs else None  # (k, pairs)
        fix_lin = xp.stack(fixwy, axis=1) if n_fix else None  # (k, n_fix)
        expl = fwy_grid * fwy_grid
        expl *= h_last
        if n_fix:
            expl += (fix_lin @ h_cross) * fwy_grid
            expl += fix_sq @ h_fix
        expl = xp.where(xp.isfinite(expl), expl, -xp.inf)
        best_j = xp.argmax(expl, axis=1)

        def fit_at(lb, slope=False):
            """Coefficients and the residual sum of squares, computed from the residuals themselves (a
            difference of sums of squares would lose the digits that locate a noise-free optimum); with
            ``slope``, instead the derivative of that profiled sum in log b: by the envelope theorem
            ``-2 c_F F'(lb)' W res`` at the optimal linear coefficients."""
            fb, dfb = spline(lb, derivative=True) if slope else (spline(lb), None)
            fbw = fb * w
            coef, _ = solve((fbw * fb).sum(axis=1), [fbw @ u for u in fixed], (fbw * yt).sum(axis=1), fixwy)
            res = yt - coef[-1][:, None] * fb
            for cf, u in zip(coef[:-1], fixed):
                res = res - cf[:, None] * u
            if slope:
                return -2.0 * coef[-1] * (dfb * w * res).sum(axis=1)
            return coef, (res * res * w).sum(axis=1)

        # refinement between the best node's neighbours: the zero of the profiled sum's slope by regula falsi
        # with the Illinois modification (superlinear, and never leaves its bracket); where the slope has no
        # sign change in the bracket it closes on the end the sum falls towards, as bisection on the sign would
        a = nodes[xp.clip(best_j - 1, 0, len(log_b) - 1)]
        c = nodes[xp.clip(best_j + 1, 0, len(log_b) - 1)]
        ga, gc = fit_at(a, True), fit_at(c, True)
        kept = xp.zeros(k, dtype=xp.int8)  # which end the last step kept: -1 a, +1 c
        x = 0.5 * (a + c)
        for _ in range(int(refine_iterations)):
            x = c - gc * (c - a) / (gc - ga)
            x = xp.where(xp.isfinite(x) & (x > a) & (x < c), x, 0.5 * (a + c))
            gx = fit_at(x, True)
            right = gx > 0  # rising at x: the minimum lies in [a, x]
            ga = xp.where(right & (kept == -1), 0.5 * ga, ga)  # a kept twice running: halve its slope (Illinois)
            gc = xp.where(~right & (kept == 1), 0.5 * gc, gc)
            c, gc = xp.where(right, x, c), xp.where(right, gx, gc)
            a, ga = xp.where(right, a, x), xp.where(right, ga, gx)
            kept = xp.where(right, -1, 1).astype(xp.int8)
        lb = x
        coef, rss = fit_at(lb)
        b = xp.exp(lb)
        q = len(fixed)  # coefficient order: [F(0)?, C_B?, F]
        c_f = coef[q]
        v_b = coef[q - 1] if vB is None else xp.full(k, float(vB))
        scale = 1.0 - v_b
        ok = (scale > 0) & xp.isfinite(rss) & xp.isfinite(c_f)
        scale = xp.where(ok, scale, 1.0)
        if model == "1tcm":
            K1 = c_f / scale
            vals = {"K1": K1, "k2": b, "VT": K1 / b, "vB": v_b}
        else:
            ki = coef[0] / scale
            K1 = ki + c_f / scale
            k3 = xp.where(K1 != 0, b * ki / xp.where(K1 != 0, K1, 1.0), 0.0)
            vals = {"K1": K1, "k2": b - k3, "k3": k3, "Ki": ki, "vB": v_b}
        vals["wrss"] = rss
        edge = (best_j == 0) | (best_j == len(log_b) - 1)
        st = xp.where(~ok, MAP_STATUS["failed"], xp.where(edge, MAP_STATUS["at_bound"], MAP_STATUS["ok"]))
        for kname, v in vals.items():
            out[kname][idx] = v
        status[idx] = st

    n_todo = int(todo.shape[0])
    if chunk is None:
        chunk = 1 << 20
        if xp is np:
            # blocks of at most 8192 voxels (cache), and at least one per core: 10,000 voxels in blocks of
            # 8192 and 1808 left one core idle most of the time
            chunk = max(256, min(8192, -(-n_todo // cpu_cores())))
    starts = range(0, n_todo, int(chunk))
    if xp is np and len(starts) > 1:
        # blocks are independent and write disjoint voxels; NumPy releases the GIL in its loops
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=cpu_cores()) as pool:
            list(pool.map(block, starts))
    else:
        for s0 in starts:
            block(s0)
    return _finish(xp, spatial, dtype, out, status)
