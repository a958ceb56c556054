"""R2* mapping from multi-echo gradient-echo magnitude images.

Signal model ``S(TE) = S0 exp(-R2* TE)``.  Estimators, fastest to most robust
(SCIENCE.md has the measured biases):

``loglin``
    ordinary least squares on log S (closed form; biased once late echoes reach the noise floor).
``wls``
    log-linear with weights S^2, iterated (weights from the fitted curve after the first pass).
``arlo``
    auto-regression on linear operations (Pei et al., MRM 2015): for equally spaced echoes,
    ``S_i - S_{i+2} = R2* int S dt`` with the integral by Simpson's rule, solved by least
    squares in closed form.  Its only error on noise-free data is Simpson's:
    relative error in R2* ~ (R2* dTE)^4 / 180.
``nlls``
    least squares on (S0, R2*) for every voxel at once, started from ``wls``: S0 is linear, so
    the fit is Newton's method on R2* alone with S0 profiled out (variable projection).
``truncation``
    ``nlls`` on the echoes above ``noise_k`` x sigma only.
``rician``
    ``nlls`` on the Rician mean ``E|S + noise| = A(S0 exp(-R2* TE), sigma)`` (Feng 2013):
    nearly unbiased at high R2*; needs the noise sigma (given, or estimated from the
    background of the image).

Every method is array code over all voxels, on NumPy or CuPy (the backend rule), and
never leaves NaN or inf: failures carry a status code (:data:`STATUS`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..backend import check_same_device, cpu_cores, device_of, float_dtype, get_array_module, special, to_device
from ..errors import GeometryError, InvivoWarning, ParameterError
from ..volume import Volume
from . import _kernel

__all__ = ["R2StarModel", "R2StarFit", "METHODS", "STATUS", "DEFAULT_METHOD", "r2star_signal", "rician_mean",
           "check_echo_times",
           "estimate_sigma", "body_mask"]

#: per-voxel status codes of a fit
STATUS = {"ok": 0, "not_converged": 1, "saturated": 2, "noise_floor": 3, "outside_mask": 4, "invalid": 5}
METHODS = ("loglin", "wls", "arlo", "nlls", "truncation", "rician")
#: meets the accuracy target (median bias <= 2 % for R2* 10-400 s^-1 at SNR 50, 8 echoes 2-23 ms)
DEFAULT_METHOD = "rician"
_SQRT_HALF_PI = math.sqrt(math.pi / 2.0)
_CHUNK = 1 << 15  # voxels per block on the CPU
_LM_STOP = _kernel.LM_STOP  # the Rician fit's stopping rule (see _lm), shared with the kernel
_NEGATIVE_WARNING = "negative values in magnitude data: their absolute value is fitted"
_ZERO_ERROR = "data are all zero: nothing to fit"


# ----------------------------------------------------------------------------- pure functions
def r2star_signal(s0, r2star, echo_times_s):
    """``S0 exp(-R2* TE)``: arrays ``s0``, ``r2star`` of shape (...), echo times (E,) -> (..., E)."""
    xp = get_array_module(s0, r2star)
    te = xp.asarray(echo_times_s, dtype=float_dtype(getattr(r2star, "dtype", np.float64)))
    return xp.asarray(s0)[..., None] * xp.exp(-xp.asarray(r2star)[..., None] * te)


#: the Rician mean's table: in w = 1 / (r + 2) for r = nu / sigma, w from 0 (r infinite) to 1/2 (r = 0), 1,024
#: intervals
_RICIAN_TABLE_A = 2.0
_RICIAN_TABLE_N = 1024
_rician_tables: dict = {}


def _rician_table(xp, dtype):
    """Cubic coefficients (N, 4) of ``H(w) = F(r) - r`` on each interval of the table, with ``F(r) = A(r, 1)``,
    ``w = 1 / (r + a)`` and the interval's own coordinate ``t`` in [0, 1): cubic Hermite from H and dH/dw at
    the nodes, built once per array module, dtype and device.

    In w the whole half-line r >= 0 is one finite, smooth interval: H tends to w / 2 as w -> 0 (the Rician
    mean's ``nu + sigma^2 / (2 nu)``) and is sqrt(pi/2) at r = 0.  With z = r^2 / 4:
    ``F`` from :func:`rician_mean` and ``F' = dA/dnu = sqrt(pi/2) r / 2 (i0e + i1e)(z)`` (SciPy, float64);
    above r = 1000 the asymptotic series, exact there to float64.
    """
    key = (xp.__name__, np.dtype(dtype).str, 0 if xp is np else xp.cuda.runtime.getDevice())
    if key not in _rician_tables:
        import scipy.special as sps

        n, a = _RICIAN_TABLE_N, _RICIAN_TABLE_A
        w = np.linspace(0.0, 1.0 / a, n + 1)
        h = w[1] - w[0]
        r = 1.0 / np.maximum(w, 1e-100) - a  # w = 0 is set below
        series = r > 1e3
        rs = np.where(series, 1.0, r)  # the Bessel form where it is used; the series above r = 1000
        z = rs * rs / 4.0
        i0, i1 = sps.i0e(z), sps.i1e(z)
        hv = rician_mean(rs, 1.0) - rs
        slope_m1 = _SQRT_HALF_PI * 0.5 * rs * (i0 + i1) - 1.0  # F' - 1
        rb = np.where(series, r, 1e3)
        inv2 = 1.0 / (rb * rb)
        hv = np.where(series, (0.5 + inv2 * (0.125 + inv2 * (0.1875 + inv2 * 75.0 / 16.0))) / rb, hv)
        slope_m1 = np.where(series, -inv2 * (0.5 + inv2 * (0.375 + inv2 * (15.0 / 16.0))), slope_m1)
        dh = -slope_m1 * (r + a) ** 2  # dH/dw = (F' - 1) dr/dw, dr/dw = -1 / w^2
        hv[0], dh[0] = 0.0, 0.5  # w = 0: H = w / 2 + O(w^2)
        dh *= h
        f0, f1, d0, d1 = hv[:-1], hv[1:], dh[:-1], dh[1:]
        coef = np.stack([f0, d0, 3.0 * (f1 - f0) - 2.0 * d0 - d1, 2.0 * (f0 - f1) + d0 + d1], axis=1)
        _rician_tables[key] = xp.asarray(coef.astype(dtype))
    return _rician_tables[key]


def _rician(nu, sigma, xp, second=False):
    """Rician mean A(nu, sigma) and dA/dnu (and with ``second``, d2A/dnu2), for any nu / sigma >= 0, without
    Bessel function calls.

    One cubic Hermite table (1,024 intervals) of ``H = A / sigma - r`` in ``w = 1 / (r + 2)``,
    ``r = nu / sigma``, covers every r: ``A = sigma (r + H(w))``, ``dA/dnu = 1 - H'(w) w^2`` and
    ``d2A/dnu2 = (H''(w) w^4 + 2 H'(w) w^3) / sigma``.  Error below 1e-12 relative on the mean and 5e-10
    absolute on its slope (tested against the exact :func:`rician_mean`), where SciPy's i0e and i1e cost
    some 100 exps per element; the fused kernel evaluates the Bessel functions (same values to that error).
    The curvature, the cubic's second derivative, is good to some 1e-6 of its scale: only the size of a
    Newton step depends on it, never the optimum.
    """
    coef = _rician_table(xp, nu.dtype)
    n_int = _RICIAN_TABLE_N
    inv_h = n_int * _RICIAN_TABLE_A
    r = nu * (1.0 / sigma)
    w = r + _RICIAN_TABLE_A
    xp.reciprocal(w, out=w)
    u = w * inv_h
    kf = xp.floor(u)
    xp.minimum(kf, n_int - 1, out=kf)  # r = 0 sits on the last node
    u -= kf  # the interval coordinate t, same dtype as nu (an integer index here would promote to float64)
    t = u
    # one gather of each element's four coefficients (a row of the table), read as strided views
    rows = xp.take(coef, kf.astype(xp.intp), axis=0)
    a0, a1, a2, a3 = rows[..., 0], rows[..., 1], rows[..., 2], rows[..., 3]
    mean = a3 * t
    mean += a2
    mean *= t
    mean += a1
    mean *= t
    mean += a0
    mean += r
    mean *= sigma
    dmean = a3 * (3.0 * t)
    a2 *= 2.0
    dmean += a2
    dmean *= t
    dmean += a1  # dH/dw / inv_h
    if second:  # (H'' w + 2 H') w^3 / sigma, with H' = dmean inv_h and H'' = (6 a3 t + 2 a2) inv_h^2
        d2 = a3 * (6.0 * t)
        d2 += a2
        d2 *= w
        d2 *= inv_h
        d2 += 2.0 * dmean
        w3 = w * w
        w3 *= w
        w3 *= inv_h / sigma
        d2 *= w3
    w *= w
    w *= -inv_h
    dmean *= w
    dmean += 1.0
    if second:
        return mean, dmean, d2
    return mean, dmean


def _bessel_i0e_i1e(xp):
    """(i0e, i1e) of the array module, or None when only a host round trip will do."""
    try:
        sp = special(xp)
        return sp.i0e, sp.i1e
    except (ImportError, AttributeError):  # pragma: no cover - old CuPy
        return None


#: Beyond this nu / sigma the two-term asymptote nu + sigma^2 / (2 nu) is exact in
#: float64 (next term ~ (sigma/nu)^4), and nu^2 / (2 sigma^2) stays far from overflow.
_RICIAN_ASYMPTOTE_RATIO = 1e8


def rician_mean(nu, sigma):
    """Expected magnitude of a Rician variable: ``sigma sqrt(pi/2) L_1/2(-nu^2 / (2 sigma^2))``.

    Parameters
    ----------
    nu : float or ndarray
        Noise-free magnitude (>= 0; the sign is ignored), NumPy or CuPy.
    sigma : float or ndarray
        Noise standard deviation per channel (>= 0), broadcastable to ``nu`` and on
        its device.

    Returns
    -------
    ndarray
        ``E|nu + sigma (n1 + i n2)|``, float64 (float32 for float32 inputs), on the
        device of the inputs.  ``sigma = 0`` gives ``|nu|``; ``nu = 0`` gives
        ``sigma sqrt(pi/2)`` (Rayleigh); for ``nu >> sigma`` it tends to
        ``sqrt(nu^2 + sigma^2)``.

    Notes
    -----
    With ``x = nu^2 / (2 sigma^2)``, ``L_1/2(-x) = e^(-x/2) [(1 + x) I0(x/2) + x I1(x/2)]
    = (1 + x) i0e(x/2) + x i1e(x/2)`` with the exponentially scaled Bessel functions
    ``i0e``, ``i1e``: a sum of positive terms, accurate to rounding for any x, with
    no overflow.  Beyond ``nu / sigma = 1e8`` the asymptote ``nu + sigma^2 / (2 nu)`` is
    used (its error is below float64 resolution there).

    Examples
    --------
    >>> float(rician_mean(0.0, 1.0)) == float(np.sqrt(np.pi / 2))
    True
    >>> round(float(rician_mean(100.0, 1.0)), 6)
    100.005
    """
    check_same_device(**{k: v for k, v in {'nu': nu, 'sigma': sigma}.items()
                         if isinstance(v, np.ndarray) or device_of(v) == 'gpu'})
    xp = get_array_module(nu, sigma)
    nu = xp.abs(xp.asarray(nu))
    sigma = xp.asarray(sigma)
    dtype = np.float32 if nu.dtype == np.float32 and (sigma.dtype == np.float32 or sigma.ndim == 0) else np.float64
    nu64 = nu.astype(np.float64)
    s64 = sigma.astype(np.float64)
    ok = s64 > 0
    s_safe = xp.where(ok, s64, 1.0)
    ratio = nu64 / s_safe
    big = ratio > _RICIAN_ASYMPTOTE_RATIO
    r = xp.where(big, 1.0, ratio)
    x = 0.5 * r * r
    fns = _bessel_i0e_i1e(xp)
    if fns is None:  # pragma: no cover - old CuPy without cupyx.scipy.special.i0e
        xh = to_device(x, "cpu")  # host: this CuPy has no i0e/i1e
        import scipy.special as host_special

        lag = xp.asarray((1.0 + xh) * host_special.i0e(0.5 * xh) + xh * host_special.i1e(0.5 * xh))
    else:
        i0e, i1e = fns
        lag = (1.0 + x) * i0e(0.5 * x) + x * i1e(0.5 * x)
    mean = s_safe * math.sqrt(math.pi / 2.0) * lag
    nu_safe = xp.where(big, nu64, 1.0)
    mean = xp.where(big, nu64 + s_safe * s_safe / (2.0 * nu_safe), mean)
    mean = xp.where(ok, mean, nu64)
    return mean.astype(dtype, copy=False)



def check_echo_times(echo_times_s) -> np.ndarray:
    """Validate echo times once: >= 2, positive, finite, strictly increasing, seconds (not ms).

    Returns them as a float64 host array; raises ParameterError naming the problem.
    """
    te = np.asarray(to_device(echo_times_s, "cpu"), dtype=np.float64).ravel()  # host: a handful of numbers
    if te.size < 2:
        raise ParameterError(f"echo_times_s: R2* needs at least 2 echoes, got {te.size}")
    if not np.all(np.isfinite(te)) or np.any(te <= 0):
        raise ParameterError(f"echo_times_s must be positive and finite, got {te.tolist()}")
    if np.any(np.diff(te) <= 0):
        raise ParameterError(f"echo_times_s must be strictly increasing without duplicates, got {te.tolist()}")
    if te.max() > 0.5:
        raise ParameterError(f"echo_times_s {te.tolist()} look like milliseconds: give seconds "
                             "(e.g. 0.002 for 2 ms)")
    return te


# ----------------------------------------------------------------------------- noise and masks
def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centers = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between[:-1]))])


def body_mask(data, *, fill_holes: bool = True):
    """Automatic foreground (body / phantom) mask from the first echo.

    Otsu threshold on log(1 + S_TE1), the largest connected component, holes filled.

    Parameters
    ----------
    data : Volume or ndarray of shape (X, Y, Z[, E])
    Returns
    -------
    ndarray of bool, shape (X, Y, Z), on the input's device.
    """
    from scipy import ndimage

    arr = data.data if isinstance(data, Volume) else data
    xp = get_array_module(arr)
    first = to_device(xp.abs(arr[..., 0] if arr.ndim == 4 else arr), "cpu")  # host: histogram and labelling
    first = np.asarray(first, dtype=np.float64)
    if not np.any(first > 0):
        raise ParameterError("body_mask: the image is all zero")
    t = _otsu(np.log1p(first[first > 0]))
    m = np.log1p(first) > t
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = ndimage.sum(m, lab, index=np.arange(1, n + 1))
        m = lab == (1 + int(np.argmax(sizes)))
    if fill_holes:  # slice by slice too: a dark vial running through every slice is no 3D hole
        m = ndimage.binary_fill_holes(m)
        for k in range(m.shape[2]):
            m[:, :, k] = ndimage.binary_fill_holes(m[:, :, k])
    return xp.asarray(m)


def estimate_sigma(data, *, background=None) -> float:
    """Noise sigma (per channel) from the background: mean magnitude / sqrt(pi/2) (Rayleigh).

    Parameters
    ----------
    data : Volume or ndarray (X, Y, Z[, E])
        Magnitude images.
    background : ndarray of bool, optional
        Noise-only voxels; default: outside a dilated :func:`body_mask`.

    Raises
    ------
    ParameterError
        When fewer than 100 background voxels exist (give ``sigma`` instead).
    """
    from scipy import ndimage

    arr = data.data if isinstance(data, Volume) else data
    xp = get_array_module(arr)
    if background is None:
        fg = to_device(body_mask(arr), "cpu")  # host: morphology
        bg = ~ndimage.binary_dilation(fg, iterations=2)
        background = xp.asarray(bg)
    background = xp.asarray(background, dtype=bool)
    vals = arr[background] if arr.ndim == background.ndim else arr[background, :]
    n = int(vals.size)
    if n < 100:
        raise ParameterError(f"estimate_sigma: only {n} background values; give the noise sigma explicitly "
                             "(--sigma) or a background mask")
    sigma = float(xp.mean(xp.abs(vals))) / _SQRT_HALF_PI
    if not sigma > 0:
        raise ParameterError("estimate_sigma: the background is exactly zero (a noise-free or masked image); "
                             "give the noise sigma explicitly (--sigma)")
    return sigma


# ----------------------------------------------------------------------------- estimators
def _echo_powers(te, xp):
    """The (E, 3) matrix [1, te, te^2]: a product with it gives a set of sums over the echoes in one BLAS call."""
    return xp.stack([xp.ones_like(te), te, te * te], axis=1)


def _log_signal(y, xp):
    return xp.log(xp.maximum(y, xp.finfo(y.dtype).tiny))


def _weighted_loglin(y, te, w, xp, logy=None):
    """Closed-form weighted LS of log y = a - R te; returns s0, r2, ok (det > 0).  ``logy``: log y, when the
    caller has it already (the iterated fits)."""
    tiny = xp.finfo(y.dtype).tiny
    logy = _log_signal(y, xp) if logy is None else logy
    powers = _echo_powers(te, xp)
    sums = w @ powers  # sum w, sum w te, sum w te^2: each a matrix product over the echoes
    sw, st, stt = sums[:, 0], sums[:, 1], sums[:, 2]
    sums = (w * logy) @ powers[:, :2]
    sy, sty = sums[:, 0], sums[:, 1]
    det = sw * stt - st * st
    ok = det > (1e-12 * sw * stt + tiny)
    det = xp.where(ok, det, 1.0)
    slope = (sw * sty - st * sy) / det
    icpt = (sy * stt - st * sty) / det
    return xp.exp(xp.clip(icpt, -80.0, 80.0)), -slope, ok


def _s0_given_r2(y, te, r2, w, xp):
    e = xp.exp(-r2[:, None] * te)
    num = (w * y * e).sum(axis=1)
    den = (w * e * e).sum(axis=1)
    return num / xp.where(den > 0, den, 1.0)


def _arlo(y, te, xp):
    dte = te[1] - te[0]
    s = dte / 3.0 * (y[:, :-2] + 4.0 * y[:, 1:-1] + y[:, 2:])
    d = y[:, :-2] - y[:, 2:]
    ss = (s * s).sum(axis=1)
    r2 = (s * d).sum(axis=1) / xp.where(ss > 0, ss, 1.0)
    ok = ss > 0
    s0 = _s0_given_r2(y, te, r2, xp.ones_like(y), xp)
    return s0, r2, ok


def _rows(idx, *arrays, xp):
    """The rows ``idx`` of each array (None stays None): an active set shrinking.  An integer take along the
    first axis, several times faster than boolean indexing of (n, E) arrays."""
    return tuple(None if a is None else xp.take(a, idx, axis=0) for a in arrays)


def _vp_terms(r2, wy, w, te, powers, xp):
    """The sums of the profiled exponential fit at ``r2``: the data's projection on exp(-R te) and its first
    two R-derivatives (a0, a1, a2), and the model's norm and its derivatives (b0, b1, b2).  ``powers`` is
    the (E, 3) matrix [1, te, te^2]: each triple of sums over the echoes is one matrix product."""
    e = xp.exp(-r2[:, None] * te)
    a = (wy * e) @ powers
    e *= e
    if w is not None:
        e *= w
    b = e @ powers
    return a[:, 0], a[:, 1], a[:, 2], b[:, 0], b[:, 1], b[:, 2]


def _vp_newton(y, te, w, r2, *, max_iter, xp, tol=None):
    """Least squares of ``S0 exp(-R te)`` by variable projection: S0 is linear, so the fit is a 1D search over R.

    For a given R the best S0 is ``A / B`` (``A = sum w y e``, ``B = sum w e^2``, ``e = exp(-R te)``) and the
    residual sum of squares ``sum w y^2 - A^2 / B``: the fit maximises ``h(R) = log(A^2 / B)``.  Newton's
    method on ``h`` (exact first and second derivatives: sums over the echoes) with step halving converges
    quadratically from the ``wls`` start, in 2-4 evaluations for most voxels against some 6 for
    Levenberg-Marquardt on (S0, R2*), at the same optimum.  ``w`` is None (every echo) or 0/1 weights
    (``truncation``).  Returns s0, r2, converged.  The fused kernel (:mod:`._kernel`) runs the same steps.
    """
    dt = y.dtype
    n = y.shape[0]
    eps = float(xp.finfo(dt).eps)
    tol = max(1e-10, 16 * eps) if tol is None else tol
    te_max = float(te[-1])  # host: scalar bounds
    r2_lo, r2_hi = -20.0 / te_max, 200.0 / float(te[0])
    max_step = 2.0 / te_max  # the largest move from a small R2* (a larger R2* may move by itself)
    grad_noise = 16.0 * eps * te_max
    powers = _echo_powers(te, xp)
    wy = y if w is None else w * y
    syy = (wy * y).sum(axis=1)
    n_w = xp.full(n, float(y.shape[1]), dtype=dt) if w is None else w.sum(axis=1)
    dof = xp.maximum(n_w - 2.0, 1.0)
    r2 = xp.clip(r2, r2_lo, r2_hi).astype(dt)
    s0 = xp.zeros(n, dtype=dt)
    converged = xp.zeros(n, dtype=bool)
    # fewer than 2 echoes carry no fit: keep the start (truncation marks these saturated)
    act = xp.nonzero(n_w >= 2)[0]
    s0[n_w < 2] = y[n_w < 2, 0]
    converged[n_w < 2] = True
    if act.shape[0] == 0:
        return s0, r2, converged
    wy_a, w_a, syy_a, dof_a = wy[act], None if w is None else w[act], syy[act], dof[act]
    r_a = r2[act]

    def state(r_):
        a0, a1, a2, b0, b1, b2 = _vp_terms(r_, wy_a, w_a, te, powers, xp)
        p, q = a1 / a0, b1 / b0
        grad = 2.0 * (q - p)                                   # h'(R)
        curv = 2.0 * (a2 / a0 - p * p) - 4.0 * (b2 / b0 - q * q)  # h''(R)
        proj = a0 * a0 / b0                                    # sum of the fitted curve squared
        return a0 / b0, proj, grad, curv

    def newton(r_, grad, curv):
        d = xp.where(curv < 0, -grad / xp.where(curv < 0, curv, -1.0), xp.sign(grad) * max_step)
        cap = xp.maximum(xp.abs(r_), max_step)
        return xp.clip(d, -cap, cap)

    s0_a, proj_a, g_a, c_a = state(r_a)
    d_a = newton(r_a, g_a, c_a)
    for _ in range(max_iter):
        # converged: the Newton step is below float precision, below what the rounding of the gradient allows
        # (h' is a difference of two echo-time averages, each good to a few eps x TE), or below 1e-3 of R's
        # standard error
        sse = xp.maximum(syy_a - proj_a, 0.0)
        neg = xp.where(c_a < 0, -c_a, 1.0)  # only read where c < 0
        var_r = 2.0 * (sse / dof_a) / (neg * proj_a)
        floor = xp.maximum(tol * (xp.abs(r_a) + 1.0), grad_noise / neg)
        small = (c_a < 0) & (xp.abs(d_a) <= xp.maximum(floor, 1e-3 * xp.sqrt(var_r)))
        done = small | ~xp.isfinite(proj_a)
        s0[act] = s0_a
        r2[act] = r_a
        converged[act] = small
        keep = ~done
        n_keep = int(keep.sum())  # host: one scalar per iteration
        if n_keep == 0:
            break
        if n_keep < keep.shape[0]:  # shrink the active set
            act, wy_a, syy_a, dof_a, w_a, r_a, s0_a, proj_a, g_a, c_a, d_a = _rows(
                xp.nonzero(keep)[0], act, wy_a, syy_a, dof_a, w_a, r_a, s0_a, proj_a, g_a, c_a, d_a, xp=xp)
        cand = xp.clip(r_a + d_a, r2_lo, r2_hi)
        s0_c, proj_c, g_c, c_c = state(cand)
        # better, or equal to rounding (a sum of E terms): near the optimum the function value cannot tell two R
        # apart that the gradient still can, so Newton's step is taken there (False for NaN)
        accept = proj_c >= proj_a * (1.0 - 8.0 * eps)
        r_a = xp.where(accept, cand, r_a)
        s0_a = xp.where(accept, s0_c, s0_a)
        proj_a = xp.where(accept, proj_c, proj_a)
        g_a = xp.where(accept, g_c, g_a)
        c_a = xp.where(accept, c_c, c_a)
        d_a = xp.where(accept, newton(r_a, g_a, c_a), 0.5 * d_a)
    else:  # out of iterations: keep where the last accepted step left each voxel (not converged)
        s0[act] = s0_a
        r2[act] = r_a
    return s0, r2, converged


def _lm(y, te, s0, r2, *, sigma, max_iter, xp, tol=None):
    """Batched damped Newton (Levenberg-Marquardt) on (S0, R2*) for the Rician mean ``A(S0 exp(-R2* TE), sigma)``.

    Minimises sum (y - A)^2 per voxel; returns s0, r2, converged and the model and ``j0`` (below) at the
    result, (n, E) each, for the quality measures.  Each iteration works on the voxels still moving only (an
    active set), so the cost follows the slowest voxels' count, not the whole volume's.

    With ``j0 = dA/dS0 = A' e`` the other derivative is ``dA/dR2* = -S0 te j0``, so J'J and J'r are sums of
    ``j0^2`` and ``j0 r`` times 1, te, te^2: one matrix product each.  The step is Newton's: J'J less the
    residual-weighted curvature of the model (from A'' and A'; a third product), where that matrix is
    positive definite, Gauss-Newton's where not, damped by Marquardt's lambda.

    Converged: the next step is below ``tol`` relative (a few float eps of the data's dtype) or below
    ``_LM_STOP`` of the parameter's standard error (from J'J and the residual), or the residual vanishes.
    That last, small step is then taken without a new evaluation: Newton's step from that close is exact to
    second order (its error some 1e-3 of the step), and the model it returns is moved along J to match
    (exact to the step's square, a few 1e-4 of the noise variance in the residual at most).
    """
    dt = y.dtype
    n, n_e = y.shape
    eps = float(xp.finfo(dt).eps)
    tol = max(1e-10, 16 * eps) if tol is None else tol
    te_max = float(te[-1])  # host: scalar bounds
    r2_lo, r2_hi = -20.0 / te_max, 200.0 / float(te[0])
    tiny = xp.finfo(dt).tiny
    powers = _echo_powers(te, xp)
    ones = powers[:, 0]
    dof = max(n_e - 2.0, 1.0)

    def model(s0_, r2_):
        e = xp.exp(-r2_[:, None] * te)
        mean, dmean, d2 = _rician(s0_[:, None] * e, sigma, xp, second=True)
        dmean *= e
        d2 *= e
        d2 *= e
        return mean, dmean, d2

    def bounded(s0_, r2_, d0_, d1_):
        return xp.maximum(s0_ + d0_, 1e-12 * xp.abs(s0_) + tiny), xp.clip(r2_ + d1_, r2_lo, r2_hi)

    s0 = s0.copy()
    r2 = r2.copy()
    converged = xp.zeros(n, dtype=bool)
    act = xp.arange(n)
    ya, s0a, r2a = y, s0, r2
    lam = xp.full(n, 1e-3, dtype=dt)
    f, j0, k2 = model(s0a, r2a)
    f_out, j0_out = xp.empty_like(f), xp.empty_like(j0)
    res = ya - f
    cost = (res * res) @ ones
    scale = (ya * ya) @ ones
    last_ok = xp.ones(n, dtype=bool)  # the current point came from an accepted step (or the start)
    for _ in range(max_iter):
        a = (j0 * j0) @ powers
        g = (j0 * res) @ powers
        c = (k2 * res) @ powers
        a11, a12, a22 = a[:, 0], -s0a * a[:, 1], s0a * s0a * a[:, 2]
        g0, g1 = g[:, 0], -s0a * g[:, 1]
        # the Hessian of cost / 2: J'J - sum r d2A/dp dq, with d2A/dS0^2 = A'' e^2 (k2),
        # d2A/dS0 dR2* = -te (A' e + S0 k2) and d2A/dR2*^2 = S0 te^2 (A' e + S0 k2)
        h11 = a11 - c[:, 0]
        h12 = a12 + g[:, 1] + s0a * c[:, 1]
        h22 = a22 - s0a * (g[:, 2] + s0a * c[:, 2])
        pd = (h11 > 0) & (h22 > 0) & (h11 * h22 > h12 * h12)
        h11 = xp.where(pd, h11, a11)
        h12 = xp.where(pd, h12, a12)
        h22 = xp.where(pd, h22, a22)
        b11 = h11 * (1.0 + lam)
        b22 = h22 * (1.0 + lam)
        det = b11 * b22 - h12 * h12
        good = det > 0
        det = xp.where(good, det, 1.0)
        d0 = xp.where(good, (b22 * g0 - h12 * g1) / det, 0.0)
        d1 = xp.where(good, (b11 * g1 - h12 * g0) / det, 0.0)
        # converged before the step is tried: it is below float precision, or below _LM_STOP of the parameter's
        # own standard error (estimated from the residual), and not merely shortened by the damping a rejected
        # step raised (unless that damping is already huge): further digits would be noise, not information
        det_a = a11 * a22 - a12 * a12
        det_a = xp.where(det_a > 0, det_a, xp.inf)
        s2 = cost / dof
        sd1 = xp.sqrt(s2 * a11 / det_a)
        sd0 = xp.sqrt(s2 * a22 / det_a)
        small = ((xp.abs(d1) <= xp.maximum(tol * (xp.abs(r2a) + 1.0), _LM_STOP * sd1))
                 & (xp.abs(d0) <= xp.maximum(tol * (xp.abs(s0a) + 1.0), _LM_STOP * sd0)))
        final = small & last_ok  # an undamped step this small: take it (below)
        ok_stop = (small & (last_ok | (lam >= 1e3))) | (cost <= 1e-30 * scale)
        stop = ok_stop | (lam >= 1e12)
        fs0, fr2 = bounded(s0a, r2a, xp.where(final, d0, 0.0), xp.where(final, d1, 0.0))
        fd0, fd1 = fs0 - s0a, fr2 - r2a  # before s0 is written: s0a is s0 itself until the set first shrinks
        s0[act] = fs0
        r2[act] = fr2
        converged[act] = ok_stop
        keep = ~stop
        n_keep = int(keep.sum())  # host: one scalar per iteration
        if n_keep < keep.shape[0]:  # the model at the stopped voxels' results: A + J d, j0 as it was
            at, fd0, fd1, fs, js, ss = _rows(xp.nonzero(stop)[0], act, fd0, fd1, f, j0, s0a, xp=xp)
            f_out[at] = fs + js * (fd0[:, None] - (ss * fd1)[:, None] * te)
            j0_out[at] = js
        if n_keep == 0:
            break
        if n_keep < keep.shape[0]:  # shrink the active set
            act, ya, s0a, r2a, d0, d1, last_ok, f, j0, k2, res, cost, lam, scale = _rows(
                xp.nonzero(keep)[0], act, ya, s0a, r2a, d0, d1, last_ok, f, j0, k2, res, cost, lam, scale, xp=xp)
        ns0, nr2 = bounded(s0a, r2a, d0, d1)  # keeps exp() finite whatever the step
        nf, nj0, nk2 = model(ns0, nr2)
        nres = ya - nf
        ncost = (nres * nres) @ ones
        # better, or equal to rounding: near the optimum the cost cannot tell steps apart that the gradient can
        accept = (ncost <= cost * (1.0 + 8.0 * eps)) & xp.isfinite(ncost)
        s0a = xp.where(accept, ns0, s0a)
        r2a = xp.where(accept, nr2, r2a)
        acc = accept[:, None]
        f = xp.where(acc, nf, f)
        j0 = xp.where(acc, nj0, j0)
        k2 = xp.where(acc, nk2, k2)
        res = xp.where(acc, nres, res)
        cost = xp.where(accept, ncost, cost)
        lam = xp.where(accept, xp.maximum(lam / 10.0, 1e-12), xp.minimum(lam * 10.0, 1e12))
        last_ok = accept
    else:  # out of iterations: where the last accepted step left each voxel (not converged)
        s0[act] = s0a
        r2[act] = r2a
        f_out[act] = f
        j0_out[act] = j0
    return s0, r2, converged, f_out, j0_out


# ----------------------------------------------------------------------------- model and fit
@dataclass
class R2StarFit:
    """Result of :meth:`R2StarModel.fit`; maps are views of ``params`` and live on the input's device.

    Attributes
    ----------
    params : ndarray (..., 2)
        ``[..., 0]`` S0 (signal units), ``[..., 1]`` R2* (s^-1).
    status : ndarray of uint8 (...)
        :data:`STATUS` codes; R2* and S0 are 0 wherever status is not ok / not_converged.
    echoes_used : ndarray of uint8 (...)
    residual : ndarray (...)
        RMS of the weighted residual over the echoes used (signal units).
    r_squared : ndarray (...)
    variance : ndarray (..., 2)
        Variance of S0 and R2* from the residual and the Jacobian (0 where undefined).
    r2star_ceiling : ndarray (...)
        For saturated voxels: the lowest R2* consistent with the data (only TE1 above the noise).
    sigma : float or None
        Noise sigma used (given or estimated).
    """

    model: "R2StarModel"
    params: object
    status: object
    echoes_used: object
    residual: object
    r_squared: object
    variance: object
    r2star_ceiling: object
    sigma: float | None
    affine: np.ndarray | None = None
    meta: object = None
    extra: dict = field(default_factory=dict)

    @property
    def s0(self):
        return self.params[..., 0]

    @property
    def r2star(self):
        return self.params[..., 1]

    @property
    def failed(self):
        """True where the fit did not give a usable R2* (any status but ok)."""
        return self.status != STATUS["ok"]

    def predict(self, echo_times_s=None):
        """Noise-free signal ``S0 exp(-R2* TE)`` at ``echo_times_s`` (default: the model's echoes)."""
        te = self.model.echo_times_s if echo_times_s is None else echo_times_s
        return r2star_signal(self.s0, self.r2star, te)

    def volume(self, name: str = "r2star") -> Volume:
        """A map as a Volume on the input's grid (only for Volume input): r2star, s0, status, ..."""
        if self.affine is None:
            raise ParameterError("fit.volume(): the fit was made from a bare array; fit a Volume to get Volumes")
        maps = {"r2star": (self.r2star, "s-1"), "s0": (self.s0, self.meta.units if self.meta else None),
                "status": (self.status, "code"), "echoes_used": (self.echoes_used, "count"),
                "residual": (self.residual, None), "r_squared": (self.r_squared, "1"),
                "r2star_ceiling": (self.r2star_ceiling, "s-1")}
        if name not in maps:
            raise ParameterError(f"unknown map {name!r}; available: {', '.join(maps)}")
        data, unit = maps[name]
        meta = self.meta.copy(units=unit, echo_times_s=None, modality="MR") if self.meta is not None else None
        if meta is not None:
            meta.extra["r2star_fit"] = {"method": self.model.method, "echo_times_s": list(self.model.echo_times_s),
                                        "sigma": self.sigma, "noise_k": self.model.noise_k, "map": name,
                                        "status_codes": dict(STATUS)}
        return Volume(data, self.affine, meta)


class R2StarModel:
    """Mono-exponential R2* model for one multi-echo acquisition.

    Parameters
    ----------
    echo_times_s : sequence of float, seconds
        Strictly increasing echo times (>= 2; ARLO needs >= 3 equally spaced).
    method : str
        One of :data:`METHODS` (default :data:`DEFAULT_METHOD`).
    max_iter : int
        Iterations of the nonlinear fits (Newton on R2* for ``nlls`` and ``truncation``,
        damped Newton (Levenberg-Marquardt) on (S0, R2*) for ``rician``).
    noise_k : float
        Echoes below ``noise_k`` x sigma are at the noise floor (truncation, saturation flags).
    wls_iterations : int
        Reweighting passes of ``wls``.
    engine : {"auto", "array", "kernel"}
        How CuPy input is fitted: ``"kernel"``, one fused CUDA kernel (one thread per
        voxel, every map written in one pass); ``"array"``, the same array code as on
        NumPy; ``"auto"`` (default), the kernel for up to 64 echoes.  NumPy input always
        runs the array code (``"kernel"`` with NumPy input is an error).  Both give the
        same maps to rounding (tested).

    Examples
    --------
    >>> import numpy as np
    >>> te = np.array([0.002, 0.004, 0.006, 0.008])
    >>> data = 1000 * np.exp(-np.array([[50.0], [200.0]]) * te)
    >>> fit = R2StarModel(te, method="nlls").fit(data)
    >>> np.round(fit.r2star, 6).tolist()
    [50.0, 200.0]
    """

    def __init__(self, echo_times_s, *, method: str = DEFAULT_METHOD, max_iter: int = 50, noise_k: float = 3.0,
                 wls_iterations: int = 3, engine: str = "auto"):
        te = check_echo_times(echo_times_s)
        if method not in METHODS:
            raise ParameterError(f"unknown R2* method {method!r}; valid methods: {', '.join(METHODS)}")
        if method == "arlo":
            if te.size < 3:
                raise ParameterError(f"method 'arlo' needs at least 3 echoes, got {te.size}")
            d = np.diff(te)
            if np.max(np.abs(d - d[0])) > 1e-3 * d[0]:
                raise ParameterError(f"method 'arlo' needs equally spaced echoes; spacings are {np.round(d, 6).tolist()} s")
        if max_iter < 1 or noise_k <= 0 or wls_iterations < 1:
            raise ParameterError("max_iter and wls_iterations must be >= 1 and noise_k > 0")
        if engine not in ("auto", "array", "kernel"):
            raise ParameterError(f"engine must be 'auto', 'array' or 'kernel', got {engine!r}")
        if engine == "kernel" and te.size > _kernel.MAX_ECHOES:
            raise ParameterError(f"engine='kernel' handles up to {_kernel.MAX_ECHOES} echoes, got {te.size}; "
                                 "use engine='array'")
        self.engine = engine
        self.echo_times_s = tuple(float(t) for t in te)
        self.method = method
        self.max_iter = int(max_iter)
        self.noise_k = float(noise_k)
        self.wls_iterations = int(wls_iterations)

    def __repr__(self) -> str:
        return f"R2StarModel({len(self.echo_times_s)} echoes {1e3 * self.echo_times_s[0]:g}-{1e3 * self.echo_times_s[-1]:g} ms, method={self.method!r})"

    def fit(self, data, *, mask=None, sigma: float | None = None) -> R2StarFit:
        """Fit every voxel at once.

        Parameters
        ----------
        data : Volume or ndarray of shape (..., E)
            Magnitude images, echoes on the last axis (complex or negative values: the
            magnitude is taken, with a warning).
        mask : Volume or ndarray of bool (...), optional
            Voxels to fit; the rest get status ``outside_mask`` and zeros.
        sigma : float, optional
            Noise sigma per channel (signal units).  Needed by ``rician`` and
            ``truncation``, used by all methods to flag saturated and noise-floor
            voxels; estimated from the image background when not given.

        Returns
        -------
        R2StarFit
        """
        affine = meta = None
        if isinstance(data, Volume):
            affine, meta, arr = data.affine, data.meta, data.data
        else:
            arr = data
        xp = get_array_module(arr)
        arr = xp.asarray(arr)
        if arr.ndim < 2 or arr.shape[-1] != len(self.echo_times_s):
            raise ParameterError(f"data has shape {tuple(arr.shape)}: expected echoes on the last axis, "
                                 f"{len(self.echo_times_s)} of them (echo_times_s)")
        if xp.iscomplexobj(arr):
            warnings.warn("complex data: the magnitude is fitted", InvivoWarning, stacklevel=2)
            arr = xp.abs(arr)
        dtype = float_dtype(arr.dtype)
        arr = arr.astype(dtype, copy=False)
        fused = self._use_kernel(xp)
        # the kernel, and the array code's blocks, check signs in their pass over the data, unless sigma must be
        # estimated first
        if sigma is None:
            if bool((arr < 0).any()):
                warnings.warn(_NEGATIVE_WARNING, InvivoWarning, stacklevel=2)
                arr = xp.abs(arr)
            if not bool((arr > 0).any()):
                raise ParameterError(_ZERO_ERROR)
        spatial = arr.shape[:-1]
        if mask is None:
            m = None
        else:
            m = mask.data if isinstance(mask, Volume) else mask
            if isinstance(mask, Volume) and affine is not None and not np.allclose(mask.affine, affine, atol=1e-3):
                raise GeometryError(f"mask grid {mask.shape} does not match the data grid {tuple(spatial)}: "
                                    "resample the mask onto the MR grid")
            m = xp.asarray(m).astype(bool)
            if m.shape != spatial:
                raise GeometryError(f"mask shape {tuple(m.shape)} does not match the data's spatial shape {tuple(spatial)}")
        if sigma is None and (self.method in ("rician", "truncation") or arr.ndim == 4):
            try:
                sigma = estimate_sigma(arr) if arr.ndim == 4 else None
            except ParameterError:
                sigma = None
            if sigma is None and self.method in ("rician", "truncation"):
                raise ParameterError(f"method {self.method!r} needs the noise sigma: give sigma= (--sigma) or an "
                                     "image with background (air) voxels to estimate it from")
        if sigma is not None and not (float(sigma) > 0 and math.isfinite(float(sigma))):
            raise ParameterError(f"sigma must be a positive number, got {sigma!r}")
        sigma = float(sigma) if sigma is not None else None
        if fused:
            maps, negative, positive = _kernel.fit_fused(self, arr, m, sigma, STATUS)
            if negative:
                warnings.warn(_NEGATIVE_WARNING, InvivoWarning, stacklevel=2)
            if not positive:
                raise ParameterError(_ZERO_ERROR)
            return R2StarFit(model=self, sigma=sigma, affine=affine, meta=meta,
                             extra={"n_fitted": int(m.sum()) if mask is not None else math.prod(spatial),
                                    "n_echoes": len(self.echo_times_s), "engine": "kernel"}, **maps)

        y = arr.reshape(-1, arr.shape[-1]) if m is None else arr[m]  # (n, E); a view of the input without a mask
        te = xp.asarray(self.echo_times_s, dtype=dtype)
        with np.errstate(all="ignore"):  # failed voxels become non-finite and get a status below
            maps, negative, positive = self._finish(y, te, sigma, xp)
        if negative:
            warnings.warn(_NEGATIVE_WARNING, InvivoWarning, stacklevel=2)
        if not positive and not (m is not None and bool((arr > 0).any())):  # all zero, not just inside the mask
            raise ParameterError(_ZERO_ERROR)
        for name, v in maps.items():  # back onto the image grid
            if m is None:
                maps[name] = v.reshape(spatial + v.shape[1:])
            else:
                fill = STATUS["outside_mask"] if name == "status" else 0
                full = xp.full(spatial + v.shape[1:], fill, dtype=v.dtype)
                full[m] = v
                maps[name] = full
        return R2StarFit(model=self, sigma=sigma, affine=affine, meta=meta,
                         extra={"n_fitted": int(y.shape[0]), "n_echoes": int(te.shape[0]), "engine": "array"}, **maps)

    def _use_kernel(self, xp) -> bool:
        """Whether this fit runs the fused kernel (CuPy input, up to MAX_ECHOES echoes)."""
        if self.engine == "array" or (self.engine == "auto" and xp is np):
            return False
        ok = _kernel.available(xp) and len(self.echo_times_s) <= _kernel.MAX_ECHOES
        if self.engine == "kernel" and not ok:
            raise ParameterError("engine='kernel' needs CuPy input on a CUDA device; NumPy input runs "
                                 "engine='array' (or 'auto')")
        return ok

    def _finish(self, y, te, sigma, xp):
        """Fit the voxels (rows of y) block by block and clean the results: (maps of n voxels, negative, positive).

        Each block checks the signs of its data (negative values: their magnitude is fitted) and writes its
        cleaned results into the output arrays, so that nothing but the fit itself touches all the data, and
        on the CPU all of it runs on every core.  The maps are 0 wherever the status is not ok / not converged,
        and never non-finite.
        """
        n = y.shape[0]
        dtype = y.dtype
        out = {"params": xp.empty((n, 2), dtype=dtype), "variance": xp.empty((n, 2), dtype=dtype),
               "status": xp.empty(n, dtype=xp.uint8), "echoes_used": xp.empty(n, dtype=xp.uint8),
               "residual": xp.empty(n, dtype=dtype), "r_squared": xp.empty(n, dtype=dtype),
               "r2star_ceiling": xp.empty(n, dtype=dtype)}

        def block(a, b):
            yb = y[a:b]
            negative = bool((yb < 0).any())  # host: one scalar per block
            if negative:
                yb = xp.abs(yb)
            positive = bool((yb > 0).any())
            res = self._voxel_results(yb, te, sigma, xp)
            status = res["status"]
            usable = (status == STATUS["ok"]) | (status == STATUS["not_converged"])
            for name, col, key in (("params", 0, "s0"), ("params", 1, "r2"), ("variance", 0, "var_s0"),
                                   ("variance", 1, "var_r2"), ("residual", None, "rms"), ("r_squared", None, "rsq")):
                v = res[key]
                v = xp.where(usable & xp.isfinite(v), v, 0.0)
                if col is None:
                    out[name][a:b] = v
                else:
                    out[name][a:b, col] = v
            ceiling = res["ceiling"]
            out["r2star_ceiling"][a:b] = xp.where(xp.isfinite(ceiling), ceiling, 0.0)
            out["status"][a:b] = status
            out["echoes_used"][a:b] = res["used"]
            return negative, positive

        workers = cpu_cores()
        if xp is np and n > _CHUNK and workers > 1:
            # blocks of at most _CHUNK voxels, of equal size and an even count (100,000 voxels in 4 blocks of
            # 25,000 rather than 3 of 32,768 and one of 1,696, which left one of 2 cores idle a quarter of the
            # time); the split does not depend on the number of cores, so neither do the results
            n_blocks = -(-n // _CHUNK)
            n_blocks += n_blocks % 2
            size = -(-n // n_blocks)
            # voxels are independent: fit blocks on all cores (NumPy releases the GIL in its loops), and keep
            # each block's temporaries in cache
            from concurrent.futures import ThreadPoolExecutor

            def work(a):
                with np.errstate(all="ignore"):  # errstate is per thread
                    return block(a, min(n, a + size))

            with ThreadPoolExecutor(max_workers=workers) as pool:
                flags = list(pool.map(work, range(0, n, size)))
        else:
            flags = [block(0, n)] if n else [(False, False)]
        return out, any(f[0] for f in flags), any(f[1] for f in flags)

    def _voxel_results(self, y, te, sigma, xp) -> dict:
        """Fit one block of voxels and the quality measures of each (1D arrays)."""
        s0, r2, status, used, w, ceiling, converged, at_fit = self._fit_voxels(y, te, sigma, xp)
        # sums over the echoes as matrix products with [1, te, te^2]: one BLAS call per set of sums
        powers = _echo_powers(te, xp)
        ones = powers[:, 0]
        weighted = self.method == "truncation"  # w is all ones for the other methods: skip the products
        if self.method == "rician":  # the model fitted is the Rician mean: chain rule through dA/dnu
            pred, j0 = at_fit  # the fit's last evaluation, at (s0, r2): A and dA/dS0 = A' e
            jj = j0 * j0
        else:
            e = xp.exp(-r2[:, None] * te)
            pred = s0[:, None] * e
            jj = e * e
        res = y - pred
        res *= res
        if weighted:
            res *= w
        res_sum = res @ ones
        w_sum = w @ ones if weighted else xp.full(res_sum.shape, float(te.shape[0]), dtype=res_sum.dtype)
        nw = xp.maximum(w_sum, 1.0)
        rms = xp.sqrt(res_sum / nw)
        ybar = (((w * y) if weighted else y) @ ones) / nw
        dev = y - ybar[:, None]
        dev *= dev
        if weighted:
            dev *= w
        sst = dev @ ones
        rsq = xp.where(sst > 0, 1.0 - res_sum / xp.where(sst > 0, sst, 1.0), 1.0)
        # J'WJ with j0 = dA/dS0 = A' e and j1 = dA/dR2* = -S0 te A' e
        if weighted:
            jj *= w
        a = jj @ powers
        a11, a12, a22 = a[:, 0], -s0 * a[:, 1], s0 * s0 * a[:, 2]
        det = a11 * a22 - a12 * a12
        dof = w_sum - 2.0
        s2 = xp.where(dof > 0, res_sum / xp.where(dof > 0, dof, 1.0), 0.0)
        if self.method == "rician":  # the noise is known: sigma^2 (J'J)^-1 (the residual of Rician data underestimates it)
            s2 = xp.full_like(s2, sigma * sigma)
        okdet = det > 0
        var_s0 = xp.where(okdet, s2 * a22 / xp.where(okdet, det, 1.0), 0.0)
        var_r2 = xp.where(okdet, s2 * a11 / xp.where(okdet, det, 1.0), 0.0)
        finite = xp.isfinite(s0) & xp.isfinite(r2) & xp.isfinite(rms) & xp.isfinite(var_s0) & xp.isfinite(var_r2)
        status = xp.where(~finite & (status == 0), STATUS["invalid"], status)
        status = xp.where((status == 0) & ~converged, STATUS["not_converged"], status).astype(xp.uint8)
        return {"s0": s0, "r2": r2, "status": status, "used": used, "var_s0": var_s0, "var_r2": var_r2,
                "rms": rms, "rsq": rsq, "ceiling": ceiling}

    # -------------------------------------------------------------------------------------------
    def _fit_voxels(self, y, te, sigma, xp):
        n, n_e = y.shape
        dtype = y.dtype
        status = xp.zeros(n, dtype=xp.uint8)
        ceiling = xp.zeros(n, dtype=dtype)
        ones = xp.ones_like(y)
        w = ones
        invalid = ~(y[:, 0] > 0)
        if sigma is not None:
            floor = self.noise_k * sigma
            above = y > floor
            noise = ~above[:, 0]
            sat = above[:, 0] & ~above[:, 1]
            ceiling = xp.where(sat, xp.log(xp.maximum(y[:, 0], floor) / floor) / (te[1] - te[0]), 0.0).astype(dtype)
            status = xp.where(noise, STATUS["noise_floor"], status)
            status = xp.where(sat, STATUS["saturated"], status)
        status = xp.where(invalid, STATUS["invalid"], status).astype(xp.uint8)
        used = xp.full(n, n_e, dtype=xp.int32)
        converged = xp.ones(n, dtype=bool)
        at_fit = None  # the Rician fit returns its model and slope at the result
        method = self.method
        if method == "truncation":
            w = (y > self.noise_k * sigma).astype(dtype)
            # keep echoes only up to the first one at the floor: later noise spikes are not signal
            w = xp.cumprod(w, axis=1)
            used = w.sum(axis=1).astype(xp.int32)
        pos = (y > 0).astype(dtype)
        if method == "loglin":
            s0, r2, ok = _weighted_loglin(y, te, pos, xp)
        elif method == "arlo":
            s0, r2, ok = _arlo(y, te, xp)
        else:
            logy = _log_signal(y, xp)
            s0, r2, ok = _weighted_loglin(y, te, pos * w, xp, logy)
            passes = self.wls_iterations if method == "wls" else 2
            wt = y * y * pos * w
            for i in range(passes):
                s0_new, r2_new, ok_new = _weighted_loglin(y, te, wt, xp, logy)
                s0 = xp.where(ok_new, s0_new, s0)
                r2 = xp.where(ok_new, r2_new, r2)
                if i + 1 < passes:  # the next pass's weights
                    fitted = s0[:, None] * xp.exp(-r2[:, None] * te)
                    wt = fitted * fitted * pos * w
            if method in ("nlls", "truncation", "rician"):
                start_ok = ok & xp.isfinite(s0) & xp.isfinite(r2)
                s0 = xp.where(start_ok, s0, y[:, 0])
                r2 = xp.where(start_ok, r2, 0.0)
                if method == "rician":
                    s0, r2, converged, *at_fit = _lm(y, te, s0.astype(dtype), r2.astype(dtype), sigma=sigma,
                                                     max_iter=self.max_iter, xp=xp)
                else:
                    s0, r2, converged = _vp_newton(y, te, None if method == "nlls" else w, r2.astype(dtype),
                                                   max_iter=self.max_iter, xp=xp)
        bad = ~ok if method in ("loglin", "arlo") else xp.zeros(n, dtype=bool)
        status = xp.where((status == 0) & bad, STATUS["invalid"], status).astype(xp.uint8)
        if method == "truncation":
            status = xp.where((status == 0) & (used < 2), STATUS["saturated"], status).astype(xp.uint8)
        return s0, r2, status, used, w, ceiling, converged, at_fit
