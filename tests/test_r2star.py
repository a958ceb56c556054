"""R2* estimators against the forward model: noise-free to 1e-6, seeded Rician noise with stated tolerances."""

import numpy as np
import pytest

from invivo import Meta, Volume
from invivo.errors import GeometryError, InvivoWarning, ParameterError
from invivo.relax import METHODS, STATUS, R2StarModel, estimate_sigma, r2star_signal, rician_mean
from invivo.relax.r2star import DEFAULT_METHOD

TE = np.linspace(0.002, 0.023, 8)  # 8 echoes, 2-23 ms, 3 ms apart
R2 = np.array([10.0, 25.0, 50.0, 100.0, 200.0, 300.0, 400.0])
S0 = 1000.0


def _noisy(r2, n, sigma, rng, te=TE):
    clean = S0 * np.exp(-np.outer(np.repeat(r2, n), te))
    return np.abs(clean + sigma * rng.standard_normal(clean.shape) + 1j * sigma * rng.standard_normal(clean.shape))


@pytest.mark.parametrize("method", METHODS)
def test_noise_free_recovery(method, xp):
    data = xp.asarray(S0 * np.exp(-np.outer(R2, TE)))
    fit = R2StarModel(TE, method=method).fit(data, sigma=1e-6)
    r2 = np.asarray(fit.r2star.get() if hasattr(fit.r2star, "get") else fit.r2star)
    s0 = np.asarray(fit.s0.get() if hasattr(fit.s0, "get") else fit.s0)
    assert np.all(np.asarray(fit.status.get() if hasattr(fit.status, "get") else fit.status) == STATUS["ok"])
    if method == "arlo":  # Simpson's rule: relative error ~ (R2* dTE)^4 / 180
        bound = 1.5 * (R2 * (TE[1] - TE[0])) ** 4 / 180 + 1e-9
        assert np.all(np.abs(r2 / R2 - 1) <= bound)
    else:
        np.testing.assert_allclose(r2, R2, rtol=1e-6)
        np.testing.assert_allclose(s0, S0, rtol=1e-6)


def test_default_method_median_bias_within_2_percent_at_snr_50():
    rng = np.random.default_rng(2024)
    sigma = S0 / 50
    n = 3000
    fit = R2StarModel(TE).fit(_noisy(R2, n, sigma, rng), sigma=sigma)
    assert R2StarModel(TE).method == DEFAULT_METHOD == "rician"
    r2 = fit.r2star.reshape(len(R2), n)
    ok = (fit.status == STATUS["ok"]).reshape(len(R2), n)
    for i, truth in enumerate(R2):
        assert ok[i].mean() > 0.99
        assert abs(np.median(r2[i][ok[i]]) / truth - 1) <= 0.02, truth


def test_noise_floor_bias_of_simple_estimators_is_reproduced():
    """SCIENCE.md's simulation (SNR 50, R2* 400 s^-1): OLS collapses (~127), Rician NLLS ~401."""
    rng = np.random.default_rng(7)
    sigma = S0 / 50
    y = _noisy(np.array([400.0]), 4000, sigma, rng)
    med = {m: np.median(R2StarModel(TE, method=m).fit(y, sigma=sigma).r2star) for m in METHODS}
    assert 110 < med["loglin"] < 145
    assert 380 < med["truncation"] < 400 and 360 < med["nlls"] < 395
    assert abs(med["rician"] / 400 - 1) < 0.02


def test_saturation_is_flagged_not_reported():
    """At TE1 = 2 ms and R2* = 800 s^-1 only the first echo stands above 3 sigma (SNR 50)."""
    rng = np.random.default_rng(3)
    sigma = S0 / 50
    fit = R2StarModel(TE).fit(_noisy(np.array([800.0]), 2000, sigma, rng), sigma=sigma)
    sat = fit.status == STATUS["saturated"]
    assert sat.mean() > 0.9
    assert np.all(fit.r2star[sat] == 0) and np.all(fit.r2star_ceiling[sat] > 0)
    assert np.median(fit.r2star_ceiling[sat]) > 300  # the lowest R2* with only TE1 above 3 sigma
    assert np.all(np.isfinite(fit.params)) and np.all(np.isfinite(fit.variance))


def test_background_noise_only_is_noise_floor():
    rng = np.random.default_rng(4)
    sigma = 10.0
    y = np.abs(sigma * rng.standard_normal((500, 8)) + 1j * sigma * rng.standard_normal((500, 8)))
    fit = R2StarModel(TE).fit(y, sigma=sigma)
    assert (fit.status == STATUS["noise_floor"]).mean() > 0.95


def test_volume_fit_estimates_sigma_and_gives_maps():
    rng = np.random.default_rng(5)
    sigma = 8.0
    shape = (40, 40, 3)
    r2map = np.zeros(shape)
    yy, xx = np.mgrid[:40, :40]
    inside = (yy - 20) ** 2 + (xx - 20) ** 2 < 12 ** 2
    r2map[inside] = 60.0
    s0map = np.where(inside[..., None], S0, 0.0) * np.ones(shape)
    clean = r2star_signal(s0map, r2map, TE)
    data = np.abs(clean + sigma * rng.standard_normal(clean.shape) + 1j * sigma * rng.standard_normal(clean.shape))
    vol = Volume(data.astype(np.float32), np.diag([0.1, 0.1, 0.5, 1.0]), Meta(modality="MR", echo_times_s=tuple(TE)))
    assert estimate_sigma(vol) == pytest.approx(sigma, rel=0.05)
    mask = np.broadcast_to(inside[..., None], shape)
    fit = R2StarModel(TE).fit(vol, mask=mask)
    assert fit.sigma == pytest.approx(sigma, rel=0.05)
    assert fit.r2star.dtype == np.float32
    assert np.median(fit.r2star[mask]) == pytest.approx(60.0, rel=0.02)
    assert np.all(fit.status[~mask] == STATUS["outside_mask"]) and np.all(fit.r2star[~mask] == 0)
    r2vol = fit.volume("r2star")
    assert r2vol.meta.units == "s-1" and r2vol.same_grid(vol)
    assert fit.volume("status").meta.extra["r2star_fit"]["method"] == "rician"
    np.testing.assert_allclose(fit.predict(TE)[mask][:, 0], fit.s0[mask] * np.exp(-fit.r2star[mask] * TE[0]),
                               rtol=1e-6)


def test_rician_mean_limits():
    assert float(rician_mean(np.array([0.0]), 2.0)[0]) == pytest.approx(2.0 * np.sqrt(np.pi / 2), rel=1e-12)
    assert float(rician_mean(np.array([1e4]), 1.0)[0]) == pytest.approx(np.sqrt(1e8 + 1.0), rel=1e-9)
    rng = np.random.default_rng(6)
    nu, sigma = 3.0, 2.0
    mc = np.abs(nu + sigma * rng.standard_normal(10**6) + 1j * sigma * rng.standard_normal(10**6)).mean()
    assert float(rician_mean(np.array([nu]), sigma)[0]) == pytest.approx(mc, rel=2e-3)


@pytest.mark.parametrize("te,match", [
    ([0.004, 0.002, 0.006], "strictly increasing"),
    ([0.002, 0.002, 0.006], "strictly increasing"),
    ([2.0, 4.0, 6.0], "milliseconds"),
    ([0.002], "at least 2 echoes"),
    ([0.0, 0.002], "positive"),
])
def test_bad_echo_times(te, match):
    with pytest.raises(ParameterError, match=match):
        R2StarModel(te)


def test_arlo_needs_three_equally_spaced_echoes():
    with pytest.raises(ParameterError, match="at least 3 echoes"):
        R2StarModel([0.002, 0.004], method="arlo")
    with pytest.raises(ParameterError, match="equally spaced"):
        R2StarModel([0.002, 0.004, 0.007], method="arlo")


def test_bad_data():
    model = R2StarModel(TE, method="nlls")
    with pytest.raises(ParameterError, match="8 of them"):
        model.fit(np.ones((4, 7)))
    with pytest.raises(ParameterError, match="all zero"):
        model.fit(np.zeros((4, 8)))
    with pytest.raises(ValueError, match="valid methods: loglin, wls, arlo, nlls, truncation, rician"):
        R2StarModel(TE, method="magic")
    with pytest.raises(GeometryError, match="mask shape"):
        model.fit(np.ones((4, 8)), mask=np.ones(5, bool))
    with pytest.raises(ParameterError, match="needs the noise sigma"):
        R2StarModel(TE, method="rician").fit(np.ones((4, 8)))
    data = S0 * np.exp(-np.outer([50.0], TE))
    with pytest.warns(InvivoWarning, match="complex"):
        fit = model.fit(data * np.exp(1j * 0.3))
    assert fit.r2star[0] == pytest.approx(50.0, rel=1e-9)
    with pytest.warns(InvivoWarning, match="negative"):
        fit = model.fit(-data)
    assert fit.r2star[0] == pytest.approx(50.0, rel=1e-9)


@pytest.mark.parametrize("method", ["nlls", "truncation", "rician"])
def test_float32_fits_converge(method):
    """Convergence is judged at the data's precision: float32 fits must not end 'not_converged'."""
    rng = np.random.default_rng(8)
    sigma = S0 / 50
    y = _noisy(R2, 300, sigma, rng).astype(np.float32)
    fit = R2StarModel(TE.astype(np.float32), method=method).fit(y, sigma=sigma)
    assert fit.r2star.dtype == np.float32
    assert (fit.status == STATUS["ok"]).mean() > 0.99
    if method == "rician":
        med = np.median(fit.r2star.reshape(len(R2), 300), axis=1)
        np.testing.assert_allclose(med, R2, rtol=0.02)


def test_rician_parameter_variance_matches_the_spread_of_estimates():
    """Variance from the Rician Jacobian with the known sigma: within 10 % of the empirical sd (20000 voxels)."""
    for r2 in (50.0, 200.0, 400.0):
        rng = np.random.default_rng(0)
        y = _noisy(np.array([r2]), 20000, 20.0, rng)
        fit = R2StarModel(TE, method="rician").fit(y, sigma=20.0)
        ok = fit.status == STATUS["ok"]
        assert np.median(np.sqrt(fit.variance[ok, 1])) == pytest.approx(fit.r2star[ok].std(), rel=0.10)


def test_sigma_of_a_noise_free_image_is_refused():
    data = np.zeros((20, 20, 2, 8))
    data[5:15, 5:15] = r2star_signal(np.full((10, 10, 2), S0), np.full((10, 10, 2), 50.0), TE)
    with pytest.raises(ParameterError, match="exactly zero"):
        estimate_sigma(data)


def test_body_mask_keeps_dark_vials_running_through_all_slices():
    from invivo.relax import body_mask

    data = np.zeros((30, 30, 4, 8))
    yy, xx = np.mgrid[:30, :30]
    disk = (yy - 15) ** 2 + (xx - 15) ** 2 < 12 ** 2
    vial = (yy - 15) ** 2 + (xx - 15) ** 2 < 3 ** 2
    s0 = np.where(disk & ~vial, S0, 0.0)[..., None] * np.ones((1, 1, 4))
    data[...] = r2star_signal(s0, np.full((30, 30, 4), 30.0), TE)
    m = body_mask(data)
    assert np.all(m[disk])


@pytest.mark.parametrize("method", METHODS)
def test_chunked_threaded_fit_equals_single_block(method, monkeypatch):
    """The CPU splits large fits into blocks on all cores: results equal one block's to rounding (the echo
    sums are BLAS matrix products, whose last bit can depend on where a row sits in its block)."""
    import invivo.relax.r2star as r2mod

    rng = np.random.default_rng(9)
    y = _noisy(R2, 100, 20.0, rng)
    single = R2StarModel(TE, method=method).fit(y, sigma=20.0)
    monkeypatch.setattr(r2mod, "_CHUNK", 64)
    chunked = R2StarModel(TE, method=method).fit(y, sigma=20.0)
    for name in ("status", "echoes_used"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(single, name))
    for name in ("params", "variance", "residual", "r_squared", "r2star_ceiling"):
        np.testing.assert_allclose(getattr(chunked, name), getattr(single, name), rtol=1e-12, atol=0)
    again = R2StarModel(TE, method=method).fit(y, sigma=20.0)
    np.testing.assert_array_equal(again.params, chunked.params)  # the same split: the same bits


def test_blocks_check_signs_leave_the_input_alone_and_mask(monkeypatch):
    """Signs are checked block by block on the threaded CPU path: a negative voxel in a late block still warns
    and is fitted as its magnitude; the input array is never changed (it is fitted through a view); an all-zero
    region inside the mask is not an all-zero image; masked fits put voxels back where they were."""
    import invivo.relax.r2star as r2mod

    monkeypatch.setattr(r2mod, "_CHUNK", 64)
    monkeypatch.setattr(r2mod, "cpu_cores", lambda: 2)
    rng = np.random.default_rng(4)
    y = _noisy(R2, 60, 20.0, rng).reshape(10, -1, TE.size)
    ref = R2StarModel(TE).fit(y, sigma=20.0)
    neg = y.copy()
    neg[-1, -1] *= -1.0
    kept = neg.copy()
    with pytest.warns(InvivoWarning, match="negative"):
        fit = R2StarModel(TE).fit(neg, sigma=20.0)
    np.testing.assert_array_equal(neg, kept)
    np.testing.assert_array_equal(fit.params, ref.params)
    mask = np.zeros(y.shape[:-1], bool)
    mask[2:7] = True
    masked = R2StarModel(TE).fit(y, sigma=20.0, mask=mask)
    np.testing.assert_allclose(masked.params[mask], ref.params[mask], rtol=1e-12)
    assert np.all(masked.params[~mask] == 0) and np.all(masked.status[~mask] == STATUS["outside_mask"])
    zero_inside = y.copy()
    zero_inside[mask] = 0.0
    fit = R2StarModel(TE).fit(zero_inside, sigma=20.0, mask=mask)
    assert np.all(fit.status[mask] == STATUS["invalid"])
    with pytest.raises(ParameterError, match="all zero"):
        R2StarModel(TE).fit(np.zeros_like(y), sigma=20.0)


def test_fitting_form_of_the_rician_mean_matches_the_exact_one():
    """The fits' tabulated Rician mean (no Bessel calls) against the exact public form and its slope, from r = 0
    to 1e9 and at the table's ends."""
    from scipy.special import i0e, i1e

    from invivo.relax.r2star import _rician

    r = np.concatenate([np.linspace(0.0, 40.0, 200_001), np.geomspace(40.0, 1e9, 20_000), [1e-9, 999.9, 1e3, 1e3 + 1e-9]])
    for sigma in (1.0, 20.0):
        mean, slope = _rician(r * sigma, sigma, np)
        exact = rician_mean(r * sigma, sigma)
        np.testing.assert_allclose(mean, exact, rtol=1e-12)
        z = r * r / 4.0
        exact_slope = np.where(z > 1e6, 1.0 - 0.5 / (r * r + 1e-300),
                               np.sqrt(np.pi / 2) * 0.5 * r * (i0e(z) + i1e(z)))
        np.testing.assert_allclose(slope, exact_slope, rtol=0, atol=5e-10)
    m32, s32 = _rician((r[:1000] * 20.0).astype(np.float32), 20.0, np)
    assert m32.dtype == np.float32 and s32.dtype == np.float32  # no silent promotion to float64


@pytest.mark.parametrize("method", ["nlls", "truncation", "rician"])
def test_iterative_fits_reach_the_least_squares_optimum_of_an_independent_solver(method):
    """On noisy voxels the batched fits (Newton on R2* with S0 profiled out; damped Newton on the Rician mean
    from its table, which takes its last, small step unevaluated) land on the optimum SciPy's least_squares
    finds per voxel with the exact model, within 2e-3 of the standard error."""
    from scipy.optimize import least_squares

    rng = np.random.default_rng(21)
    sigma = 20.0
    y = _noisy(R2, 6, sigma, rng)
    fit = R2StarModel(TE, method=method).fit(y, sigma=sigma)
    ok = np.flatnonzero(fit.status == STATUS["ok"])
    assert ok.size >= 30
    for i in ok:
        use = np.cumprod(y[i] > 3.0 * sigma).astype(bool) if method == "truncation" else np.ones(TE.size, bool)
        te, yi = TE[use], y[i, use]

        def resid(p, te=te, yi=yi):
            nu = p[0] * np.exp(-p[1] * te)
            return yi - (rician_mean(nu, sigma) if method == "rician" else nu)

        ref = least_squares(resid, [1.1 * fit.s0[i], 0.8 * fit.r2star[i]], method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15).x
        sd_s0, sd_r2 = np.sqrt(fit.variance[i])
        assert abs(fit.r2star[i] - ref[1]) <= 2e-3 * sd_r2 + 1e-9 * ref[1], (i, fit.r2star[i], ref[1], sd_r2)
        assert abs(fit.s0[i] - ref[0]) <= 2e-3 * sd_s0 + 1e-9 * ref[0], (i, fit.s0[i], ref[0], sd_s0)
