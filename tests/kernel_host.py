"""Build invivo's fused R2* CUDA source for the host (g++), to check its logic without a GPU.

The kernel source (:mod:`invivo.relax._kernel`) is plain C++ apart from a few CUDA names;
with ``INVIVO_HOST`` defined and those names mapped to the C++ library it compiles into a
shared library whose loop over voxels calls the very ``fit_voxel`` a GPU thread runs.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

from invivo.relax import _kernel
from invivo.relax.r2star import STATUS

ECHO_COUNTS = (2, 3, 4, 5, 6, 8, 10, 12, 16)

_SHIM_HEAD = r"""
#define INVIVO_HOST
#include <cmath>
#define __device__
using std::exp; using std::log; using std::sqrt; using std::fabs;
inline float cyl_bessel_i0f(float z) { return std::cyl_bessel_i(0.0f, z); }
inline float cyl_bessel_i1f(float z) { return std::cyl_bessel_i(1.0f, z); }
inline double cyl_bessel_i0(double z) { return std::cyl_bessel_i(0.0, z); }
inline double cyl_bessel_i1(double z) { return std::cyl_bessel_i(1.0, z); }
"""

_SHIM_TAIL = r"""
template<typename T, int NE>
static void run(const T* y, const unsigned char* mask, int has_mask, long long n, const T* te, int method,
                int has_sigma, T sigma, T floor_, T two_s2, T s_sq, T sq_2s, T r2_lo, T r2_hi, T tol, int max_iter,
                int wls_passes, T* params, T* var, unsigned char* st, unsigned char* used, T* rms, T* rsq, T* ceil,
                int* flags) {
    for (long long i = 0; i < n; ++i) {
        bool an = false, ap = false;
        fit_voxel<T, NE>(y, mask, has_mask, i, te, method, has_sigma, sigma, floor_, two_s2, s_sq, sq_2s, r2_lo,
                         r2_hi, tol, max_iter, wls_passes, params, var, st, used, rms, rsq, ceil, an, ap);
        if (an) flags[0] = 1;
        if (ap) flags[1] = 1;
    }
}
#define ENTRY(NAME, T) \
extern "C" int NAME(int ne, const T* y, const unsigned char* mask, int has_mask, long long n, const T* te, \
    int method, int has_sigma, T sigma, T floor_, T two_s2, T s_sq, T sq_2s, T r2_lo, T r2_hi, T tol, int max_iter, \
    int wls_passes, T* params, T* var, unsigned char* st, unsigned char* used, T* rms, T* rsq, T* ceil, \
    int* flags) { \
    switch (ne) { \
    CASES(T) \
    default: return -1; } \
    return 0; }
#define CASE(T, K) case K: run<T, K>(y, mask, has_mask, n, te, method, has_sigma, sigma, floor_, two_s2, s_sq, \
    sq_2s, r2_lo, r2_hi, tol, max_iter, wls_passes, params, var, st, used, rms, rsq, ceil, flags); break;
"""


def compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++")


def build(tmpdir: Path):
    """Compile the shim into ``tmpdir``; return a ``host_launcher`` for :mod:`invivo.relax._kernel`."""
    cases = " ".join(f"CASE(T, {k})" for k in ECHO_COUNTS)
    src = (_SHIM_HEAD + _kernel.source(STATUS) + _SHIM_TAIL + f"#define CASES(T) {cases}\n"
           + "ENTRY(run_float, float)\nENTRY(run_double, double)\n")
    cpp = tmpdir / "r2star_host.cpp"
    lib = tmpdir / "r2star_host.so"
    cpp.write_text(src)
    proc = subprocess.run([compiler(), "-std=c++17", "-O2", "-shared", "-fPIC", str(cpp), "-o", str(lib)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"g++ failed on the kernel source:\n{proc.stderr[-4000:]}")
    dll = ctypes.CDLL(str(lib))

    def launch(n_e, ctype, n, args):
        fn = dll.run_float if ctype == "float" else dll.run_double
        c_t = ctypes.c_float if ctype == "float" else ctypes.c_double
        conv = []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous
                conv.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.int64):
                conv.append(ctypes.c_longlong(int(a)))
            elif isinstance(a, (np.int32, int, bool, np.bool_)):
                conv.append(ctypes.c_int(int(a)))
            else:
                conv.append(c_t(float(a)))
        rc = fn(ctypes.c_int(n_e), *conv)
        if rc != 0:
            raise ValueError(f"host kernel not built for {n_e} echoes (built: {ECHO_COUNTS})")

    return launch
