"""The fused R2* kernel against the array code, voxel by voxel.

Three levels: the CUDA source compiles for the device (where nvcc is present); the same
source built for the host with g++ gives the NumPy path's maps on every method and dtype
(runs wherever a C++ compiler is present, so without a GPU too); and on a GPU the kernel
through CuPy gives the same maps as NumPy (parity).
"""

import shutil
import subprocess

import numpy as np
import pytest

from invivo.backend import cupy
from invivo.errors import InvivoWarning, ParameterError
from invivo.relax import METHODS, STATUS, R2StarModel
from invivo.relax import _kernel

from . import kernel_host

TE = np.linspace(0.002, 0.023, 8)
FIELDS = ("params", "variance", "status", "echoes_used", "residual", "r_squared", "r2star_ceiling")


def _data(rng, n_e=8, te=TE, n=4000):
    """R2* 0-900 s^-1 (noise floor and saturation included), S0 300-2000, Rician noise sigma 20, plus
    background-only voxels, a zero voxel and a negative-free magnitude."""
    r2 = rng.uniform(0, 900, n)
    s0 = rng.uniform(300, 2000, n)
    s0[: n // 20] = 0.0  # background: noise only
    clean = s0[:, None] * np.exp(-r2[:, None] * te)
    y = np.abs(clean + 20 * rng.standard_normal(clean.shape) + 20j * rng.standard_normal(clean.shape))
    y[n // 20] = 0.0  # an all-zero voxel: invalid
    return y.reshape(40, n // 40, n_e)


def _get(x):
    return cupy.asnumpy(x) if cupy is not None and isinstance(x, cupy.ndarray) else np.asarray(x)


def _compare(kern, ref, dtype, method=None):
    """Status agreement and map agreement on voxels of equal status.

    The Rician fit's residual is held to 1e-5 rather than 1e-7 in float64: its model is moved along J by the
    last, unevaluated Newton step, whose length depends on the model's curvature, from the table's cubic in
    the array code (good to 1e-6 of its scale) and from Bessel functions in the kernel.  Its parameters still
    agree to 1e-7.
    """
    st_k, st_r = _get(kern.status), _get(ref.status)
    agree = st_k == st_r
    # float32 rounding can tip a voxel that sits on a threshold (noise floor, convergence); float64 must agree
    assert agree.mean() >= (1.0 if dtype == np.float64 else 0.998), np.argwhere(~agree)[:5]
    np.testing.assert_array_equal(_get(kern.echoes_used)[agree], _get(ref.echoes_used)[agree])
    rtol = 1e-7 if dtype == np.float64 else 2e-3
    for name in ("params", "variance", "residual", "r_squared", "r2star_ceiling"):
        a, b = _get(getattr(kern, name))[agree], _get(getattr(ref, name))[agree]
        for col in range(b.shape[1]) if b.ndim == 2 else [None]:
            ac, bc = (a, b) if col is None else (a[:, col], b[:, col])
            atol = rtol * float(np.max(np.abs(bc), initial=0.0))
            if name == "residual" and method == "rician" and dtype == np.float64:
                atol = max(atol, 1e-5 * float(np.max(np.abs(bc), initial=0.0)))
            if name == "residual":  # exact fits (2 echoes, noise-free) leave rounding noise of the signal's size
                atol = max(atol, 1e3 * np.finfo(dtype).eps * float(np.max(_get(kern.params)[..., 0])))
            np.testing.assert_allclose(ac, bc, rtol=rtol, atol=atol, err_msg=f"{name} {col}")
    for name in FIELDS:
        assert np.all(np.isfinite(_get(getattr(kern, name)))), name


# ----------------------------------------------------------------------------- device compile
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed")
def test_kernel_source_compiles_for_the_device(tmp_path):
    src = _kernel.source(STATUS)
    for ctype in ("float", "double"):
        src += (f"\ntemplate __global__ void r2star_fit<{ctype}, 8>(const {ctype}*, const unsigned char*, int, long long,"
                f" const {ctype}*, int, int, {', '.join([ctype] * 8)}, int, int, {ctype}*, {ctype}*, unsigned char*,"
                f" unsigned char*, {ctype}*, {ctype}*, {ctype}*, int*);\n")
    (tmp_path / "k.cu").write_text(src)
    proc = subprocess.run(["nvcc", "--std=c++14", "-arch=sm_80", "--ptx", "k.cu", "-o", "k.ptx"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ----------------------------------------------------------------------------- host build of the kernel
@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory):
    if kernel_host.compiler() is None:
        pytest.skip("no C++ compiler (g++) to build the kernel source for the host")
    return kernel_host.build(tmp_path_factory.mktemp("r2star_kernel"))


@pytest.fixture
def with_host_kernel(host_kernel, monkeypatch):
    monkeypatch.setattr(_kernel, "host_launcher", host_kernel)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method", METHODS)
def test_host_built_kernel_matches_array_code(method, dtype, with_host_kernel):
    rng = np.random.default_rng(11)
    y = _data(rng).astype(dtype)
    mask = np.ones(y.shape[:-1], dtype=bool)
    mask[:3] = False
    te = TE.astype(dtype)
    ref = R2StarModel(te, method=method, engine="array").fit(y, mask=mask, sigma=20.0)
    kern = R2StarModel(te, method=method, engine="kernel").fit(y, mask=mask, sigma=20.0)
    assert kern.extra["engine"] == "kernel" and ref.extra["engine"] == "array"
    assert kern.extra["n_fitted"] == ref.extra["n_fitted"]
    _compare(kern, ref, dtype, method)
    assert np.all(_get(kern.status)[:3] == STATUS["outside_mask"])


@pytest.mark.parametrize("n_e", [2, 3, 5, 12])
@pytest.mark.parametrize("method", ["loglin", "nlls", "rician"])
def test_host_built_kernel_other_echo_counts(method, n_e, with_host_kernel):
    te = np.linspace(0.003, 0.003 * n_e, n_e)
    y = _data(np.random.default_rng(n_e), n_e=n_e, te=te, n=800)
    ref = R2StarModel(te, method=method, engine="array").fit(y, sigma=20.0)
    kern = R2StarModel(te, method=method, engine="kernel").fit(y, sigma=20.0)
    _compare(kern, ref, np.float64, method)


def test_host_built_kernel_noise_free_recovery(with_host_kernel):
    r2 = np.array([10.0, 25.0, 50.0, 100.0, 200.0, 300.0, 400.0])
    y = 1000.0 * np.exp(-np.outer(r2, TE))
    for method in ("loglin", "wls", "nlls", "truncation", "rician"):
        fit = R2StarModel(TE, method=method, engine="kernel").fit(y, sigma=1e-6)
        assert np.all(fit.status == STATUS["ok"])
        np.testing.assert_allclose(fit.r2star, r2, rtol=1e-6)
        np.testing.assert_allclose(fit.s0, 1000.0, rtol=1e-6)


def test_host_built_kernel_flags_negative_and_zero_data(with_host_kernel):
    y = 1000.0 * np.exp(-50.0 * TE)[None, :]
    model = R2StarModel(TE, method="nlls", engine="kernel")
    with pytest.warns(InvivoWarning, match="negative"):
        fit = model.fit(-y, sigma=1.0)
    assert fit.r2star[0] == pytest.approx(50.0, rel=1e-9)
    with pytest.raises(ParameterError, match="all zero"):
        model.fit(np.zeros((3, 8)), sigma=1.0)
    neg = -y
    with pytest.warns(InvivoWarning):
        model.fit(neg, sigma=1.0)
    assert np.all(neg < 0)  # the input is not modified


# ----------------------------------------------------------------------------- engine choice
def test_engine_choice_and_errors():
    y = 1000.0 * np.exp(-np.outer([50.0, 80.0], TE))
    fit = R2StarModel(TE, method="nlls").fit(y)
    assert fit.extra["engine"] == "array"  # NumPy input: array code
    with pytest.raises(ParameterError, match="engine"):
        R2StarModel(TE, engine="fast")
    if _kernel.host_launcher is None:
        with pytest.raises(ParameterError, match="CuPy"):
            R2StarModel(TE, engine="kernel").fit(y, sigma=1.0)
    with pytest.raises(ParameterError, match="64 echoes"):
        R2StarModel(np.linspace(0.001, 0.07, 70), engine="kernel")


# ----------------------------------------------------------------------------- GPU parity
gpu = pytest.mark.skipif(cupy is None, reason="CuPy/GPU not available")


@gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method", METHODS)
def test_gpu_kernel_and_array_code_match_numpy(method, dtype):
    rng = np.random.default_rng(12)
    y = _data(rng).astype(dtype)
    mask = np.ones(y.shape[:-1], dtype=bool)
    mask[:3] = False
    te = TE.astype(dtype)
    ref = R2StarModel(te, method=method).fit(y, mask=mask, sigma=20.0)
    yg, mg = cupy.asarray(y), cupy.asarray(mask)
    kern = R2StarModel(te, method=method, engine="kernel").fit(yg, mask=mg, sigma=20.0)
    arr = R2StarModel(te, method=method, engine="array").fit(yg, mask=mg, sigma=20.0)
    assert isinstance(kern.params, cupy.ndarray) and kern.extra["engine"] == "kernel"
    assert kern.params.dtype == dtype
    _compare(kern, ref, dtype, method)
    _compare(arr, ref, dtype, method)


@gpu
def test_gpu_kernel_estimates_sigma_and_flags_bad_data():
    rng = np.random.default_rng(13)
    vol = np.abs(20 * rng.standard_normal((24, 24, 4, 8)) + 20j * rng.standard_normal((24, 24, 4, 8)))
    vol[6:18, 6:18] += 1000.0 * np.exp(-60.0 * TE)
    ref = R2StarModel(TE).fit(vol)
    kern = R2StarModel(TE, engine="kernel").fit(cupy.asarray(vol))
    assert kern.sigma == pytest.approx(ref.sigma, rel=1e-9)
    _compare(kern, ref, np.float64, "rician")
    with pytest.warns(InvivoWarning, match="negative"):
        R2StarModel(TE, engine="kernel").fit(-cupy.asarray(vol[8:10, 8:10, 0]), sigma=20.0)
    with pytest.raises(ParameterError, match="all zero"):
        R2StarModel(TE, engine="kernel").fit(cupy.zeros((4, 8)), sigma=20.0)
