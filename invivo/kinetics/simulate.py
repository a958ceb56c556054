"""Exact convolution of piecewise-linear curves with exponentials, on a fine time grid, and frame averages.

``conv_exp(t, c, b)`` is ``int_0^t c(s) exp(-b (t - s)) ds`` for ``c`` linear between the
grid points -- exact for that ``c`` (no quadrature error), by the recursion

    I(t_{n+1}) = e^{-b h} I(t_n) + c_{n+1} E1 - (c_{n+1} - c_n) E2 / h,
    E1 = (1 - e^{-b h}) / b,   E2 = (1 - e^{-b h} (1 + b h)) / b^2,

(``E1 -> h``, ``E2 -> h^2 / 2`` as ``b -> 0``).  Compartment models are sums of such
terms; the PET measures their average over each frame, computed exactly on a grid that
holds every frame boundary (the tissue curve is treated as linear between grid points).
"""

from __future__ import annotations

import numpy as np

from ..errors import ParameterError
from .base import Frames

__all__ = ["fine_grid", "conv_exp", "frame_average", "integrate", "grid_index"]


def fine_grid(frames: Frames, *, dt_min: float = 0.05, t0_min: float = 0.0, extra_min=()) -> np.ndarray:
    """Times (min) from ``t0_min`` to the last frame end: every frame boundary (and ``extra_min``),
    with steps of at most ``dt_min`` between them."""
    if not dt_min > 0:
        raise ParameterError(f"dt_min must be positive, got {dt_min!r}")
    knots = np.unique(np.concatenate([[t0_min], frames.start_min, frames.end_min, np.asarray(extra_min, float)]))
    knots = knots[knots >= t0_min]
    # boundaries computed two ways (end of one frame, start of the next) may differ by an ulp: keep one
    keep = np.concatenate([[True], np.diff(knots) > 1e-12 * np.maximum(1.0, np.abs(knots[1:]))])
    knots = knots[keep]
    pieces = [knots[:1]]
    for a, b in zip(knots[:-1], knots[1:]):
        n = max(1, int(np.ceil((b - a) / dt_min - 1e-9)))
        # interior points, then the knot itself exactly (a + (b - a) n / n can miss b by an ulp)
        pieces.append(np.concatenate([a + (b - a) * np.arange(1, n) / n, [b]]))
    return np.concatenate(pieces)


def conv_exp(t, c, b):
    """``int_0^t c(s) exp(-b (t - s)) ds`` on the grid ``t`` (min) for ``c`` linear between grid points.

    Parameters
    ----------
    t : (T,) array, increasing, ``t[0]`` the start (the integral is 0 there)
    c : (..., T) array
    b : float or (...,) array of rates (1/min, >= 0)

    Returns
    -------
    (..., T) array (broadcast of ``c`` and ``b``)
    """
    t = np.asarray(t, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)[..., None]
    h = np.diff(t)  # (T-1,)
    bh = b * h
    small = np.abs(bh) < 1e-6
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = np.exp(-bh)
        e1 = np.where(small, h * (1 - bh / 2 + bh * bh / 6), -np.expm1(-bh) / np.where(small, 1.0, b))
        e2 = np.where(small, h * h * (0.5 - bh / 3 + bh * bh / 8),
                      (1 - a * (1 + bh)) / np.where(small, 1.0, b * b))
    w1 = e1 - e2 / h  # weight of c[n+1]
    w0 = e2 / h       # weight of c[n]
    shape = np.broadcast_shapes(c.shape[:-1], b.shape[:-1])
    if shape == () and h.size > 8:
        return _conv_one(h, a.reshape(-1), w1.reshape(-1) * c[1:] + w0.reshape(-1) * c[:-1])
    c = np.broadcast_to(c, shape + (t.size,))
    a = np.broadcast_to(a, shape + (h.size,))
    u = np.broadcast_to(w1, shape + (h.size,)) * c[..., 1:] + np.broadcast_to(w0, shape + (h.size,)) * c[..., :-1]
    out = np.empty(shape + (t.size,), dtype=np.float64)
    out[..., 0] = 0.0
    acc = np.zeros(shape, dtype=np.float64)
    for n in range(h.size):  # the recursion is sequential in time, vectorised over curves
        acc = a[..., n] * acc + u[..., n]
        out[..., n + 1] = acc
    return out


def _conv_one(h, a, u):
    """One curve: ``I_{n+1} = a_n I_n + u_n``, run as a first-order filter over each stretch of equal steps."""
    from scipy.signal import lfilter

    out = np.empty(h.size + 1, dtype=np.float64)
    out[0] = 0.0
    # stretches where the step (hence a_n) is constant
    brk = np.flatnonzero(np.abs(np.diff(h)) > 1e-12 * h[1:]) + 1
    edges = np.concatenate([[0], brk, [h.size]])
    prev = 0.0
    for i0, i1 in zip(edges[:-1], edges[1:]):
        an = a[i0]
        seg, _ = lfilter([1.0], [1.0, -an], u[i0:i1], zi=[an * prev])
        out[i0 + 1:i1 + 1] = seg
        prev = seg[-1]
    return out


def integrate(t, y):
    """Running integral (trapezoid) of ``y`` (..., T) on the grid ``t``, 0 at ``t[0]``."""
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    inc = 0.5 * (y[..., 1:] + y[..., :-1]) * np.diff(t)
    out = np.zeros(y.shape, dtype=np.float64)
    np.cumsum(inc, axis=-1, out=out[..., 1:])
    return out


def grid_index(t, x):
    """Indices of the grid points equal to ``x`` (to an ulp-level tolerance: boundaries computed two ways)."""
    x = np.asarray(x, dtype=np.float64)
    return np.searchsorted(t, x - 1e-12 * np.maximum(1.0, np.abs(x)))


def frame_average(t, y, frames: Frames):
    """Mean of ``y`` (..., T) over each frame; ``t`` (min) must hold every frame boundary."""
    t = np.asarray(t, dtype=np.float64)
    cum = integrate(t, y)
    i0 = grid_index(t, frames.start_min)
    i1 = grid_index(t, frames.end_min)
    ok = (i0 < t.size) & (i1 < t.size)
    if not np.all(ok) or not (np.allclose(t[np.minimum(i0, t.size - 1)], frames.start_min, rtol=2e-12, atol=1e-9)
                              and np.allclose(t[np.minimum(i1, t.size - 1)], frames.end_min, rtol=2e-12, atol=1e-9)):
        raise ParameterError("frame_average: the time grid does not hold the frame boundaries (use fine_grid)")
    return (cum[..., i1] - cum[..., i0]) / (frames.end_min - frames.start_min)
