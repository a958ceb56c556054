"""Fused per-voxel R2* fit for CuPy: one CUDA thread per voxel, the echoes in registers.

The array code in :mod:`invivo.relax.r2star` (``_fit_voxels`` + ``_voxel_results`` +
the scatter in ``_finish``) is the reference; this kernel computes the same quantities in
the same order for one voxel, so that plain CuPy array code (many passes over memory and,
for the iterative fits, one kernel launch per operation per iteration) is
replaced by a single pass: read the echoes once, write every map once.

The source is plain C++ with a few CUDA names, so that the tests can also compile it for
the host (``INVIVO_HOST``) and check it voxel by voxel against the NumPy path on machines
without a GPU; the GPU parity tests run it through CuPy where a device is present.

Nothing here imports CuPy directly: it comes from :mod:`invivo.backend` (the backend rule).
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import cupy, get_array_module, to_device

#: method codes shared with the C++ source
METHOD_CODES = {"loglin": 0, "wls": 1, "arlo": 2, "nlls": 3, "truncation": 4, "rician": 5}
#: echoes per voxel handled by the kernel (more: the array path)
MAX_ECHOES = 64
_BLOCK = 128
#: the Rician fit (r2star._lm and lm here) stops when its next step is below this fraction of the parameters'
#: standard errors, and takes that step
LM_STOP = 5e-2

# The NumPy expressions each C++ function replaces are named beside it (r2star.py).
SOURCE = r"""
// ---------------------------------------------------------------- invivo fused R2* fit
// status codes (r2star.STATUS)
#define ST_OK %(ok)d
#define ST_NOTCONV %(not_converged)d
#define ST_SAT %(saturated)d
#define ST_NOISE %(noise_floor)d
#define ST_OUTSIDE %(outside_mask)d
#define ST_INVALID %(invalid)d
#define M_LOGLIN 0
#define M_WLS 1
#define M_ARLO 2
#define M_NLLS 3
#define M_TRUNC 4
#define M_RICIAN 5
// _lm's stop: the next step below this fraction of the standard errors
#define LM_STOP %(lm_stop)s

template<typename T> struct Lim;
template<> struct Lim<float> {
    static __device__ inline float eps() { return 1.1920928955078125e-07f; }
    static __device__ inline float tiny() { return 1.1754943508222875e-38f; }
};
template<> struct Lim<double> {
    static __device__ inline double eps() { return 2.220446049250313e-16; }
    static __device__ inline double tiny() { return 2.2250738585072014e-308; }
};

__device__ inline float inv_i0(float z) { return cyl_bessel_i0f(z); }
__device__ inline float inv_i1(float z) { return cyl_bessel_i1f(z); }
__device__ inline double inv_i0(double z) { return cyl_bessel_i0(z); }
__device__ inline double inv_i1(double z) { return cyl_bessel_i1(z); }

// NumPy's maximum/minimum/clip/isfinite: NaN propagates
template<typename T> __device__ inline T nmax(T a, T b) { return (a != a) ? a : ((b != b) ? b : (a > b ? a : b)); }
template<typename T> __device__ inline T nmin(T a, T b) { return (a != a) ? a : ((b != b) ? b : (a < b ? a : b)); }
template<typename T> __device__ inline T nclip(T x, T lo, T hi) { return nmin(nmax(x, lo), hi); }
template<typename T> __device__ inline bool fin(T x) { return (x - x) == (T)0; }

// exponentially scaled Bessel I0, I1; the 4-term asymptotic series above z = 40 (the array code's _rician
// uses the same series above r = 16 and a Hermite table of the mean below: equal to 2e-9)
template<typename T> __device__ inline void i0e_i1e(T z, T& i0, T& i1) {
    if (z > (T)40) {
        T u = (T)1 / ((T)8 * z);
        T pre = (T)1 / sqrt((T)6.283185307179586 * z);
        i0 = pre * ((T)1 + u * ((T)1 + u * ((T)4.5 + u * (T)37.5)));
        i1 = pre * ((T)1 - u * ((T)3 + u * ((T)7.5 + u * (T)52.5)));
    } else {
        T ez = exp(-z);
        i0 = ez * inv_i0(z);
        i1 = ez * inv_i1(z);
    }
}

// _rician: Rician mean A(nu, sigma), dA/dnu and d2A/dnu2 = sqrt(pi/2) / (2 sigma) (i0e - i1e)(nu^2 / 4 sigma^2)
//   two_s2 = 2 sigma^2, s_sq = sigma sqrt(pi/2), sq_2s = sqrt(pi/2) / (2 sigma)
template<typename T> __device__ inline void rician(T nu, T two_s2, T s_sq, T sq_2s, T& mean, T& dmean, T& d2mean) {
    T x = nu * nu / two_s2;
    T i0, i1;
    i0e_i1e(x / (T)2, i0, i1);
    mean = s_sq * (((T)1 + x) * i0 + x * i1);
    dmean = sq_2s * nu * (i0 + i1);
    d2mean = sq_2s * (i0 - i1);
}

// _weighted_loglin: closed-form weighted LS of log y = a - R te
template<typename T, int NE> __device__ inline bool wloglin(const T* y, const T* t, const T* w, T& s0, T& r2) {
    const T tiny = Lim<T>::tiny();
    T sw = 0, st = 0, stt = 0, sy = 0, sty = 0;
#pragma unroll
    for (int e = 0; e < NE; ++e) {
        T ly = log(nmax(y[e], tiny));
        sw += w[e];
        st += w[e] * t[e];
        stt += w[e] * t[e] * t[e];
        sy += w[e] * ly;
        sty += w[e] * t[e] * ly;
    }
    T det = sw * stt - st * st;
    bool ok = det > ((T)1e-12 * sw * stt + tiny);
    if (!ok) det = (T)1;
    T slope = (sw * sty - st * sy) / det;
    T icpt = (sy * stt - st * sty) / det;
    s0 = exp(nclip(icpt, (T)-80, (T)80));
    r2 = -slope;
    return ok;
}

// _arlo (+ _s0_given_r2 with unit weights)
template<typename T, int NE> __device__ inline bool arlo(const T* y, const T* t, T& s0, T& r2) {
    T dte = t[1] - t[0];
    T sd = 0, ss = 0;
#pragma unroll
    for (int e = 0; e < NE - 2; ++e) {
        T s = dte / (T)3 * (y[e] + (T)4 * y[e + 1] + y[e + 2]);
        T d = y[e] - y[e + 2];
        ss += s * s;
        sd += s * d;
    }
    r2 = sd / (ss > 0 ? ss : (T)1);
    T num = 0, den = 0;
#pragma unroll
    for (int e = 0; e < NE; ++e) {
        T ee = exp(-r2 * t[e]);
        num += y[e] * ee;
        den += ee * ee;
    }
    s0 = num / (den > 0 ? den : (T)1);
    return ss > 0;
}

// model() inside _lm: the Rician mean f, j0 = df/dS0 (df/dR2* = -S0 te j0) and k2 = d2f/dS0^2 = A'' e^2
template<typename T, int NE> __device__ inline void lm_model(T s0, T r2, const T* t, T two_s2, T s_sq, T sq_2s,
                                                          T* f, T* j0, T* k2) {
#pragma unroll
    for (int e = 0; e < NE; ++e) {
        T ee = exp(-r2 * t[e]);
        T m, dm, d2m;
        rician(s0 * ee, two_s2, s_sq, sq_2s, m, dm, d2m);
        f[e] = m; j0[e] = dm * ee; k2[e] = d2m * ee * ee;
    }
}

// _lm: damped Newton on (S0, R2*) of the Rician mean for one voxel; returns converged, and in f, j0 the model and
// its S0 derivative at the result (moved along J by the final step, as the array code does)
template<typename T, int NE> __device__ inline bool lm(const T* y, const T* t, T& s0, T& r2, T two_s2, T s_sq,
                                                    T sq_2s, T r2_lo, T r2_hi, T tol, int max_iter,
                                                    T* f, T* j0) {
    const T tiny = Lim<T>::tiny();
    const T eps = Lim<T>::eps();
    T k2[NE], nf[NE], nj0[NE], nk2[NE];
    T lam = (T)1e-3;
    lm_model<T, NE>(s0, r2, t, two_s2, s_sq, sq_2s, f, j0, k2);
    T cost = 0, scale = 0;
#pragma unroll
    for (int e = 0; e < NE; ++e) {
        T r = y[e] - f[e];
        cost += r * r;
        scale += y[e] * y[e];
    }
    const T dof = nmax((T)NE - (T)2, (T)1);
    bool converged = false;
    bool last_ok = true;  // the current point came from an accepted step (or the start)
    for (int it = 0; it < max_iter; ++it) {
        T q0 = 0, q1 = 0, q2 = 0, p0 = 0, p1 = 0, p2 = 0, c0 = 0, c1 = 0, c2 = 0;
#pragma unroll
        for (int e = 0; e < NE; ++e) {
            T r = y[e] - f[e];
            T jj = j0[e] * j0[e], jr = j0[e] * r, kr = k2[e] * r;
            T tt = t[e] * t[e];
            q0 += jj; q1 += jj * t[e]; q2 += jj * tt;
            p0 += jr; p1 += jr * t[e]; p2 += jr * tt;
            c0 += kr; c1 += kr * t[e]; c2 += kr * tt;
        }
        T a11 = q0, a12 = -s0 * q1, a22 = s0 * s0 * q2;
        T g0 = p0, g1 = -s0 * p1;
        T h11 = a11 - c0;
        T h12 = a12 + p1 + s0 * c1;
        T h22 = a22 - s0 * (p2 + s0 * c2);
        bool pd = (h11 > 0) && (h22 > 0) && (h11 * h22 > h12 * h12);
        if (!pd) { h11 = a11; h12 = a12; h22 = a22; }
        T b11 = h11 * ((T)1 + lam);
        T b22 = h22 * ((T)1 + lam);
        T det = b11 * b22 - h12 * h12;
        bool good = det > 0;
        if (!good) det = (T)1;
        T d0 = good ? (b22 * g0 - h12 * g1) / det : (T)0;
        T d1 = good ? (b11 * g1 - h12 * g0) / det : (T)0;
        T det_a = a11 * a22 - a12 * a12;
        T s2 = cost / dof;
        T sd1 = det_a > 0 ? sqrt(s2 * a11 / det_a) : (T)0;
        T sd0 = det_a > 0 ? sqrt(s2 * a22 / det_a) : (T)0;
        bool small = (fabs(d1) <= nmax(tol * (fabs(r2) + (T)1), (T)LM_STOP * sd1))
                     && (fabs(d0) <= nmax(tol * (fabs(s0) + (T)1), (T)LM_STOP * sd0));
        bool ok_stop = (small && (last_ok || lam >= (T)1e3)) || (cost <= (T)1e-30 * scale);
        converged = ok_stop;
        if (ok_stop || lam >= (T)1e12) {
            bool fin_step = small && last_ok;  // an undamped step this small: taken without a new evaluation
            T fs0 = nmax(s0 + (fin_step ? d0 : (T)0), (T)1e-12 * fabs(s0) + tiny);
            T fr2 = nclip(r2 + (fin_step ? d1 : (T)0), r2_lo, r2_hi);
            T fd0 = fs0 - s0, fd1 = fr2 - r2;
#pragma unroll
            for (int e = 0; e < NE; ++e) f[e] = f[e] + j0[e] * (fd0 - s0 * fd1 * t[e]);
            s0 = fs0; r2 = fr2;
            break;
        }
        T ns0 = nmax(s0 + d0, (T)1e-12 * fabs(s0) + tiny);
        T nr2 = nclip(r2 + d1, r2_lo, r2_hi);
        lm_model<T, NE>(ns0, nr2, t, two_s2, s_sq, sq_2s, nf, nj0, nk2);
        T ncost = 0;
#pragma unroll
        for (int e = 0; e < NE; ++e) {
            T r = y[e] - nf[e];
            ncost += r * r;
        }
        bool accept = (ncost <= cost * ((T)1 + (T)8 * eps)) && fin(ncost);
        last_ok = accept;
        if (accept) {
            s0 = ns0; r2 = nr2; cost = ncost;
#pragma unroll
            for (int e = 0; e < NE; ++e) { f[e] = nf[e]; j0[e] = nj0[e]; k2[e] = nk2[e]; }
            lam = nmax(lam / (T)10, (T)1e-12);
        } else {
            lam = nmin(lam * (T)10, (T)1e12);
        }
    }
    return converged;
}

// _vp_terms + the state() of _vp_newton: best S0, projection, h'(R) and h''(R) at R
template<typename T, int NE> __device__ inline void vp_state(const T* wy, const T* w, const T* t, T r, T& s0, T& proj,
                                                          T& grad, T& curv) {
    T a0 = 0, a1 = 0, a2 = 0, b0 = 0, b1 = 0, b2 = 0;
#pragma unroll
    for (int e = 0; e < NE; ++e) {
        T ee = exp(-r * t[e]);
        T ye = wy[e] * ee;
        a0 += ye; a1 += ye * t[e]; a2 += ye * t[e] * t[e];
        T e2 = w[e] * ee * ee;
        b0 += e2; b1 += e2 * t[e]; b2 += e2 * t[e] * t[e];
    }
    T p = a1 / a0, q = b1 / b0;
    grad = (T)2 * (q - p);
    curv = (T)2 * (a2 / a0 - p * p) - (T)4 * (b2 / b0 - q * q);
    proj = a0 * a0 / b0;
    s0 = a0 / b0;
}

// newton() inside _vp_newton
template<typename T> __device__ inline T vp_step(T r, T grad, T curv, T max_step) {
    T sg = (grad != grad) ? grad : (T)((grad > 0) - (grad < 0));
    T d = curv < 0 ? -grad / curv : sg * max_step;
    T cap = nmax(fabs(r), max_step);
    return nclip(d, -cap, cap);
}

// _vp_newton: least squares of S0 exp(-R te) by Newton's method on the profiled objective; returns converged
template<typename T, int NE> __device__ inline bool vp_newton(const T* y, const T* t, const T* w, T& s0, T& r2,
                                                           T r2_lo, T r2_hi, T tol, int max_iter) {
    const T eps = Lim<T>::eps();
    const T max_step = (T)2 / t[NE - 1];
    const T grad_noise = (T)16 * eps * t[NE - 1];
    T wy[NE];
    T syy = 0, n_w = 0;
#pragma unroll
    for (int e = 0; e < NE; ++e) {
        wy[e] = w[e] * y[e];
        syy += wy[e] * y[e];
        n_w += w[e];
    }
    const T dof = nmax(n_w - (T)2, (T)1);
    T r = nclip(r2, r2_lo, r2_hi);
    r2 = r;
    if (!(n_w >= (T)2)) { s0 = y[0]; return true; }
    T proj, g, c;
    vp_state<T, NE>(wy, w, t, r, s0, proj, g, c);
    T d = vp_step(r, g, c, max_step);
    bool converged = false;
    for (int it = 0; it < max_iter; ++it) {
        T sse = nmax(syy - proj, (T)0);
        T neg = c < 0 ? -c : (T)1;  // only read where c < 0
        T var_r = (T)2 * (sse / dof) / (neg * proj);
        T floor_ = nmax(tol * (fabs(r) + (T)1), grad_noise / neg);
        bool small = (c < 0) && (fabs(d) <= nmax(floor_, (T)1e-3 * sqrt(var_r)));
        converged = small;
        if (small || !fin(proj)) break;
        T cand = nclip(r + d, r2_lo, r2_hi);
        T s0c, projc, gc, cc;
        vp_state<T, NE>(wy, w, t, cand, s0c, projc, gc, cc);
        if (projc >= proj * ((T)1 - (T)8 * eps)) {
            r = cand; s0 = s0c; proj = projc; g = gc; c = cc;
            d = vp_step(r, g, c, max_step);
        } else {
            d = (T)0.5 * d;
        }
    }
    r2 = r;
    return converged;
}

// _fit_voxels + _voxel_results + the masking and cleaning of _finish, for voxel i
template<typename T, int NE>
__device__ inline void fit_voxel(const T* __restrict__ yin, const unsigned char* __restrict__ mask, int has_mask,
                                 long long i, const T* __restrict__ tein, int method, int has_sigma, T sigma,
                                 T floor_, T two_s2, T s_sq, T sq_2s, T r2_lo, T r2_hi, T tol, int max_iter,
                                 int wls_passes, T* __restrict__ params, T* __restrict__ var,
                                 unsigned char* __restrict__ status_out, unsigned char* __restrict__ used_out,
                                 T* __restrict__ rms_out, T* __restrict__ rsq_out, T* __restrict__ ceil_out,
                                 bool& any_neg, bool& any_pos) {
    T y[NE], t[NE], w[NE], pos[NE];
#pragma unroll
    for (int e = 0; e < NE; ++e) {
        T v = yin[i * NE + e];
        if (v < 0) { any_neg = true; v = -v; }   // fit(): negative values -> magnitude, with a warning
        if (v > 0) any_pos = true;                // fit(): all-zero data is an error
        y[e] = v;
        t[e] = tein[e];
    }
    if (has_mask && !mask[i]) {
        params[2 * i] = 0; params[2 * i + 1] = 0; var[2 * i] = 0; var[2 * i + 1] = 0;
        status_out[i] = ST_OUTSIDE; used_out[i] = 0; rms_out[i] = 0; rsq_out[i] = 0; ceil_out[i] = 0;
        return;
    }
    int st = ST_OK;
    T ceiling = 0;
    bool invalid = !(y[0] > 0);
    if (has_sigma) {
        bool a0 = y[0] > floor_, a1 = y[1] > floor_;
        bool sat = a0 && !a1;
        ceiling = sat ? log(nmax(y[0], floor_) / floor_) / (t[1] - t[0]) : (T)0;
        if (!a0) st = ST_NOISE;
        if (sat) st = ST_SAT;
    }
    if (invalid) st = ST_INVALID;
    int used = NE;
    bool converged = true;
    T c = 1;
#pragma unroll
    for (int e = 0; e < NE; ++e) {
        if (method == M_TRUNC) {  // echoes up to the first at the noise floor
            c = c * (y[e] > floor_ ? (T)1 : (T)0);
            w[e] = c;
        } else {
            w[e] = 1;
        }
        pos[e] = y[e] > 0 ? (T)1 : (T)0;
    }
    if (method == M_TRUNC) {
        T u = 0;
#pragma unroll
        for (int e = 0; e < NE; ++e) u += w[e];
        used = (int)u;
    }
    T s0, r2;
    T lf[NE], lj0[NE];  // the Rician fit's model and S0 derivative at its result
    bool ok;
    if (method == M_LOGLIN) {
        ok = wloglin<T, NE>(y, t, pos, s0, r2);
    } else if (method == M_ARLO) {
        ok = arlo<T, NE>(y, t, s0, r2);
    } else {
        T wt[NE];
#pragma unroll
        for (int e = 0; e < NE; ++e) wt[e] = pos[e] * w[e];
        ok = wloglin<T, NE>(y, t, wt, s0, r2);
#pragma unroll
        for (int e = 0; e < NE; ++e) wt[e] = y[e] * y[e] * pos[e] * w[e];
        int passes = method == M_WLS ? wls_passes : 2;
        for (int p = 0; p < passes; ++p) {
            T s0n, r2n;
            if (wloglin<T, NE>(y, t, wt, s0n, r2n)) { s0 = s0n; r2 = r2n; }
#pragma unroll
            for (int e = 0; e < NE; ++e) {
                T fitted = s0 * exp(-r2 * t[e]);
                wt[e] = fitted * fitted * pos[e] * w[e];
            }
        }
        if (method == M_NLLS || method == M_TRUNC || method == M_RICIAN) {
            if (!(ok && fin(s0) && fin(r2))) { s0 = y[0]; r2 = 0; }
            if (method == M_RICIAN) {
                converged = lm<T, NE>(y, t, s0, r2, two_s2, s_sq, sq_2s, r2_lo, r2_hi, tol, max_iter, lf, lj0);
            } else {
                converged = vp_newton<T, NE>(y, t, w, s0, r2, r2_lo, r2_hi, tol, max_iter);
            }
        }
    }
    if (st == ST_OK && (method == M_LOGLIN || method == M_ARLO) && !ok) st = ST_INVALID;
    if (method == M_TRUNC && st == ST_OK && used < 2) st = ST_SAT;

    // _voxel_results: residual, R^2, parameter variance
    const bool ric = method == M_RICIAN;
    // J'WJ with j0 = A' e, j1 = -S0 te A' e: sums of w (A' e)^2 times 1, te, te^2, S0 factored out
    T res = 0, sw = 0, swy = 0, q0 = 0, q1 = 0, q2 = 0;
    T pred[NE];
#pragma unroll
    for (int e = 0; e < NE; ++e) {
        T jj;
        if (ric) {  // the fit's last evaluation (r2star._voxel_results takes it too)
            pred[e] = lf[e];
            jj = lj0[e] * lj0[e];
        } else {
            T ee = exp(-r2 * t[e]);
            pred[e] = s0 * ee;
            jj = ee * ee;
        }
        T r = y[e] - pred[e];
        res += r * r * w[e];
        sw += w[e];
        swy += w[e] * y[e];
        T jw = jj * w[e];
        q0 += jw;
        q1 += jw * t[e];
        q2 += jw * (t[e] * t[e]);
    }
    T a11 = q0, a12 = -s0 * q1, a22 = s0 * s0 * q2;
    T nw = nmax(sw, (T)1);
    T rms = sqrt(res / nw);
    T ybar = swy / nw;
    T sst = 0;
#pragma unroll
    for (int e = 0; e < NE; ++e) { T d = y[e] - ybar; sst += w[e] * d * d; }
    T rsq = sst > 0 ? (T)1 - res / sst : (T)1;
    T det = a11 * a22 - a12 * a12;
    T dof = sw - (T)2;
    T s2 = ric ? sigma * sigma : (dof > 0 ? res / dof : (T)0);
    T var_s0 = det > 0 ? s2 * a22 / det : (T)0;
    T var_r2 = det > 0 ? s2 * a11 / det : (T)0;
    bool finite = fin(s0) && fin(r2) && fin(rms) && fin(var_s0) && fin(var_r2);
    if (!finite && st == ST_OK) st = ST_INVALID;
    if (st == ST_OK && !converged) st = ST_NOTCONV;
    // _finish: maps are 0 wherever the status is not ok / not converged, and never non-finite
    bool usable = st == ST_OK || st == ST_NOTCONV;
    params[2 * i] = (usable && fin(s0)) ? s0 : (T)0;
    params[2 * i + 1] = (usable && fin(r2)) ? r2 : (T)0;
    var[2 * i] = (usable && fin(var_s0)) ? var_s0 : (T)0;
    var[2 * i + 1] = (usable && fin(var_r2)) ? var_r2 : (T)0;
    rms_out[i] = (usable && fin(rms)) ? rms : (T)0;
    rsq_out[i] = (usable && fin(rsq)) ? rsq : (T)0;
    ceil_out[i] = fin(ceiling) ? ceiling : (T)0;
    status_out[i] = (unsigned char)st;
    used_out[i] = (unsigned char)used;
}

#ifndef INVIVO_HOST
template<typename T, int NE>
__global__ void r2star_fit(const T* __restrict__ yin, const unsigned char* __restrict__ mask, int has_mask,
                           long long n, const T* __restrict__ tein, int method, int has_sigma, T sigma, T floor_,
                           T two_s2, T s_sq, T sq_2s, T r2_lo, T r2_hi, T tol, int max_iter, int wls_passes,
                           T* __restrict__ params, T* __restrict__ var, unsigned char* __restrict__ status_out,
                           unsigned char* __restrict__ used_out, T* __restrict__ rms_out, T* __restrict__ rsq_out,
                           T* __restrict__ ceil_out, int* flags) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    bool any_neg = false, any_pos = false;
    if (i < n)
        fit_voxel<T, NE>(yin, mask, has_mask, i, tein, method, has_sigma, sigma, floor_, two_s2, s_sq, sq_2s, r2_lo,
                         r2_hi, tol, max_iter, wls_passes, params, var, status_out, used_out, rms_out, rsq_out,
                         ceil_out, any_neg, any_pos);
    // one atomic per warp, and none once the flag is set
    bool wn = __any_sync(0xffffffffu, any_neg);
    bool wp = __any_sync(0xffffffffu, any_pos);
    if ((threadIdx.x & 31) == 0) {
        if (wn) atomicOr(&flags[0], 1);
        if (wp && ((volatile int*)flags)[1] == 0) atomicOr(&flags[1], 1);
    }
}
#endif
"""


def source(status: dict) -> str:
    """The C++/CUDA source with the status codes (and the Rician fit's stopping rule) filled in."""
    return SOURCE % dict(status, lm_stop=repr(float(LM_STOP)))


def _memoize(fn):
    """``cupy.memoize(for_each_device=True)`` where CuPy is present (the function is only called then)."""
    return cupy.memoize(for_each_device=True)(fn) if cupy is not None else fn


@_memoize
def _module(status_items: tuple, ctype: str, n_echoes: int):
    name = f"r2star_fit<{ctype}, {n_echoes}>"
    mod = cupy.RawModule(code=source(dict(status_items)), options=("--std=c++14",), name_expressions=(name,))
    return mod.get_function(name)


def scalars(model, sigma, dtype) -> dict:
    """The scalar arguments, computed on the host in float64 like the NumPy path's Python floats."""
    te = model.echo_times_s
    s = float(sigma) if sigma is not None else 1.0
    t = np.dtype(dtype).type
    eps = float(np.finfo(dtype).eps)
    return {
        "has_sigma": sigma is not None,
        "sigma": t(s),
        "floor": t(model.noise_k * s),
        "two_s2": t(2.0 * s * s),
        "s_sq": t(s * math.sqrt(math.pi / 2.0)),
        "sq_2s": t(math.sqrt(math.pi / 2.0) / (2.0 * s)),
        "r2_lo": t(-20.0 / te[-1]),
        "r2_hi": t(200.0 / te[0]),
        "tol": t(max(1e-10, 16 * eps)),
        "method": METHOD_CODES[model.method],
        "max_iter": model.max_iter,
        "wls_passes": model.wls_iterations,
    }


#: a host build of :data:`SOURCE` for NumPy arrays, set only by the tests (``launch(ne, ctype, n, args)``)
host_launcher = None


def available(xp) -> bool:
    """True when the fused kernel can run on arrays of module ``xp``."""
    return (cupy is not None and xp is cupy) or (xp is np and host_launcher is not None)


def fit_fused(model, arr, mask, sigma, status: dict):
    """Run the kernel over an array ``(..., E)`` (float32/float64) and an optional bool mask ``(...)``.

    CuPy arrays run on the GPU; NumPy arrays only through :data:`host_launcher` (tests).
    Returns ``(maps, any_negative, any_positive)``, maps named like the ``R2StarFit`` fields.
    """
    xp = get_array_module(arr)
    n_e = arr.shape[-1]
    spatial = arr.shape[:-1]
    dtype = arr.dtype
    ctype = "float" if dtype == np.float32 else "double"
    y = xp.ascontiguousarray(arr).reshape(-1, n_e)
    n = y.shape[0]
    if mask is not None:
        m = xp.ascontiguousarray(mask.astype(bool, copy=False)).reshape(-1)
    else:
        m = xp.zeros(1, dtype=bool)
    te = xp.asarray(model.echo_times_s, dtype=dtype)
    sc = scalars(model, sigma, dtype)
    maps = {"params": xp.empty(spatial + (2,), dtype=dtype), "variance": xp.empty(spatial + (2,), dtype=dtype),
            "status": xp.empty(spatial, dtype=xp.uint8), "echoes_used": xp.empty(spatial, dtype=xp.uint8),
            "residual": xp.empty(spatial, dtype=dtype), "r_squared": xp.empty(spatial, dtype=dtype),
            "r2star_ceiling": xp.empty(spatial, dtype=dtype)}
    flags = xp.zeros(2, dtype=xp.int32)
    i32, i64 = np.int32, np.int64
    args = (y, m, i32(mask is not None), i64(n), te, i32(sc["method"]), i32(sc["has_sigma"]), sc["sigma"],
            sc["floor"], sc["two_s2"], sc["s_sq"], sc["sq_2s"], sc["r2_lo"], sc["r2_hi"], sc["tol"],
            i32(sc["max_iter"]), i32(sc["wls_passes"]), maps["params"], maps["variance"], maps["status"],
            maps["echoes_used"], maps["residual"], maps["r_squared"], maps["r2star_ceiling"], flags)
    if n:
        if xp is np:
            host_launcher(n_e, ctype, n, args)
        else:
            kern = _module(tuple(sorted(status.items())), ctype, n_e)
            kern(((n + _BLOCK - 1) // _BLOCK,), (_BLOCK,), args)
    neg, pos = (bool(v) for v in to_device(flags, "cpu"))  # host: two flags for the warning and the all-zero error
    return maps, neg, pos
