"""Antibody kinetics: mab-pk serum PK with target-mediated disposition, multi-day Patlak, blocking studies.

Truths: the model's own ODE (noise-free self-recovery), the analytic biexponential of the
linear two-compartment model (an independent check of the ODE), the linear limits of the
half-lives, numerical quadrature for AUCs and for the Patlak tissue curve, and the Welch
formulas (scipy.stats) for the blocking comparison.
"""

import json
import math

import numpy as np
import pytest
from scipy import integrate, stats

from invivo.errors import ParameterError
from invivo.kinetics import Frames, InputFunction, KineticFit, get_model
from invivo.kinetics.antibody import (MabPK, blocking_comparison, injected_mass_ug, linear_half_lives_h,
                                      mab_pk_concentration, multi_day_patlak, serum_concentration_ug_per_ml)

# mouse-like anti-PD-L1 values: plasma ~1.5 mL, a target sink saturated above ~1 ug/mL
TRUE = dict(V1_ml=1.5, V2_ml=1.2, CL_ml_per_h=0.015, Q_ml_per_h=0.05, Vmax_ug_per_h=0.05, Km_ug_per_ml=1.0)
T_H = np.array([0.25, 1.0, 4.0, 8.0, 24.0, 48.0, 72.0, 96.0, 144.0, 168.0])
DOSES = (2.0, 20.0, 1000.0)  # tracer only, low blocking, full blocking (ug of antibody)


def biexponential(t_h, dose, V1, V2, CL, Q):
    """Closed-form linear two-compartment bolus: C = D/V1 [(a - k21) e^-at + (k21 - b) e^-bt] / (a - b)."""
    k10, k12, k21 = CL / V1, Q / V1, Q / V2
    s = k10 + k12 + k21
    r = math.sqrt(s * s - 4 * k10 * k21)
    a, b = (s + r) / 2, (s - r) / 2
    t = np.asarray(t_h, float)
    return dose / V1 * ((a - k21) * np.exp(-a * t) + (k21 - b) * np.exp(-b * t)) / (a - b)


@pytest.fixture(scope="module")
def arms():
    return [(T_H, mab_pk_concentration(T_H, dose_ug=d, **TRUE), d) for d in DOSES]


@pytest.fixture(scope="module")
def arms_fit(arms):
    return MabPK().fit_arms(arms)


# ------------------------------------------------------------------------------------------ forward model
def test_linear_model_matches_analytic_biexponential():
    lin = dict(V1_ml=1.5, V2_ml=1.2, CL_ml_per_h=0.015, Q_ml_per_h=0.05)
    t = np.array([0.0, 0.1, 0.5, 2.0, 6.0, 24.0, 72.0, 168.0, 336.0, 700.0])
    for dose in (1.0, 300.0):
        c = mab_pk_concentration(t, dose_ug=dose, Vmax_ug_per_h=0.0, Km_ug_per_ml=1.0, **lin)
        ref = biexponential(t, dose, 1.5, 1.2, 0.015, 0.05)
        assert np.max(np.abs(c / ref - 1)) < 1e-8
    # one compartment (Q = 0): C0 exp(-CL/V1 t)
    c = mab_pk_concentration(t, dose_ug=10.0, V1_ml=2.0, V2_ml=1.0, CL_ml_per_h=0.03, Q_ml_per_h=0.0,
                             Vmax_ug_per_h=0.0, Km_ug_per_ml=1.0)
    assert np.max(np.abs(c / (5.0 * np.exp(-0.015 * t)) - 1)) < 1e-8
    # linear half-lives: the roots of the biexponential
    a_h, b_h = linear_half_lives_h(1.5, 1.2, 0.015, 0.05)
    k10, k12, k21 = 0.01, 0.05 / 1.5, 0.05 / 1.2
    roots = np.roots([1.0, -(k10 + k12 + k21), k10 * k21])
    assert a_h == pytest.approx(math.log(2) / roots.max(), rel=1e-12)
    assert b_h == pytest.approx(math.log(2) / roots.min(), rel=1e-10)


def test_saturation_lengthens_the_apparent_half_life():
    """A larger dose saturates the target sink: slower apparent elimination, bounded by the two linear limits."""
    t = np.array([48.0, 168.0])

    def apparent_half_life(dose):
        c = mab_pk_concentration(t, dose_ug=dose, **TRUE)
        return math.log(2) * (t[1] - t[0]) / math.log(c[0] / c[1])

    t12 = [apparent_half_life(d) for d in (0.01, 2.0, 20.0, 1000.0, 1e5)]
    assert all(b > a for a, b in zip(t12, t12[1:])), t12
    # far below Km: linear with CL + Vmax/Km; far above: linear with CL. Late terminal slopes equal the beta half-lives.
    late = np.array([600.0, 900.0])
    _, beta_low = linear_half_lives_h(1.5, 1.2, 0.015 + 0.05 / 1.0, 0.05)
    _, beta_sat = linear_half_lives_h(1.5, 1.2, 0.015, 0.05)
    c = mab_pk_concentration(late, dose_ug=1e-6, **TRUE)
    assert math.log(2) * 300 / math.log(c[0] / c[1]) == pytest.approx(beta_low, rel=1e-5)
    c = mab_pk_concentration([300.0, 400.0], dose_ug=1e7, **TRUE)
    assert math.log(2) * 100 / math.log(c[0] / c[1]) == pytest.approx(beta_sat, rel=1e-4)
    assert t12[-1] < beta_sat


def test_simulate_solver_agreement():
    """LSODA and Radau agree to the tolerance asked (a check that the ODE is solved, not just run)."""
    a = MabPK(method="LSODA").simulate(T_H, dose_ug=20.0, **TRUE)
    b = MabPK(method="Radau").simulate(T_H, dose_ug=20.0, **TRUE)
    assert np.max(np.abs(a / b - 1)) < 1e-7


def test_sensitivities_match_finite_differences():
    """The exact Jacobian (sensitivity equations) that drives the fit and its SEs, against central differences."""
    from invivo.kinetics.antibody import _integrate

    th = np.array([TRUE[k] for k in TRUE])
    for dose in (2.0, 1000.0):
        y = _integrate(T_H, [dose], [th], sens=True)[0]
        dlog = y[3:9].T / y[0][:, None]
        dlog[:, 0] -= 1.0  # C = dose a1 / V1
        h = 1e-5
        for i, name in enumerate(TRUE):
            up = dict(TRUE, **{name: TRUE[name] * math.exp(h)})
            dn = dict(TRUE, **{name: TRUE[name] * math.exp(-h)})
            num = (np.log(mab_pk_concentration(T_H, dose_ug=dose, rtol=1e-12, **up))
                   - np.log(mab_pk_concentration(T_H, dose_ug=dose, rtol=1e-12, **dn))) / (2 * h)
            assert np.max(np.abs(dlog[:, i] - num)) < 1e-5, (dose, name)


# ------------------------------------------------------------------------------------------ fits
def test_noise_free_recovery_of_three_arms(arms_fit, arms):
    fit = arms_fit
    assert isinstance(fit, KineticFit) and fit.model == "mab-pk"
    for k, v in TRUE.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-7), k
        assert 0 <= fit.se[k] < 1e-6 * v
    assert fit.n_points == 30 and fit.n_params == 6 and math.isfinite(fit.aic)
    # derived: half-lives at the two linear limits, AUCs against quadrature of the model
    a_h, b_h = linear_half_lives_h(1.5, 1.2, 0.065, 0.05)
    assert fit.params["t_half_alpha_h"] == pytest.approx(a_h, rel=1e-7)
    assert fit.params["t_half_beta_h"] == pytest.approx(b_h, rel=1e-7)
    assert fit.params["t_half_beta_saturated_h"] == pytest.approx(linear_half_lives_h(1.5, 1.2, 0.015, 0.05)[1],
                                                                  rel=1e-7)
    assert fit.params["CL_low_conc_ml_per_h"] == pytest.approx(0.065, rel=1e-7)
    for j, (_, _, dose) in enumerate(arms, start=1):
        tt = np.linspace(0.0, 168.0, 16801)
        auc_last = integrate.simpson(mab_pk_concentration(tt, dose_ug=dose, **TRUE), x=tt)
        assert fit.params[f"AUC_0_last_ug_h_per_ml_arm{j}"] == pytest.approx(auc_last, rel=1e-7)
        tt = np.concatenate([np.linspace(0.0, 200.0, 20001), np.linspace(200.0, 20000.0, 99001)[1:]])
        auc_inf = integrate.simpson(mab_pk_concentration(tt, dose_ug=dose, **TRUE), x=tt)
        assert fit.params[f"AUC_ug_h_per_ml_arm{j}"] == pytest.approx(auc_inf, rel=1e-6)
    assert fit.units["AUC_ug_h_per_ml_arm1"] == "ug*h/mL" and fit.units["Km_ug_per_ml"] == "ug/mL"
    assert [a["dose_ug"] for a in fit.info["arms"]] == list(DOSES)
    assert np.max(np.abs(fit.residuals / np.concatenate([c for _, c, _ in arms]))) < 1e-7
    d = json.loads(json.dumps(fit.to_dict()))
    assert d["V1_ml"] == pytest.approx(1.5) and "aic" in d and "Km_ug_per_ml" in d["se"]


def test_noise_free_recovery_of_one_arm():
    """One dose spanning Km identifies all six parameters (slowly: the problem is ill-conditioned)."""
    c = mab_pk_concentration(T_H, dose_ug=5.0, **TRUE)
    fit = get_model("mab-pk").fit(T_H, c, dose_ug=5.0, region="serum")
    for k, v in TRUE.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-4), k
    assert "_arm" not in "".join(fit.params) and fit.info["region"] == "serum"
    assert fit.params["AUC_ug_h_per_ml"] > fit.params["AUC_0_last_ug_h_per_ml"] > 0


def test_linear_model_fit_with_fixed_vmax():
    lin = dict(V1_ml=2.0, V2_ml=1.0, CL_ml_per_h=0.02, Q_ml_per_h=0.08)
    c = biexponential(T_H, 100.0, *lin.values())  # the analytic curve, not the ODE
    fit = MabPK().fit(T_H, c, dose_ug=100.0, fixed={"Vmax_ug_per_h": 0.0})
    for k, v in lin.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-7), k
    assert fit.params["Vmax_ug_per_h"] == 0.0 and fit.se["Vmax_ug_per_h"] == 0.0
    assert math.isnan(fit.params["Km_ug_per_ml"]) and fit.info["linear_only"] and fit.n_params == 4
    assert fit.params["AUC_ug_h_per_ml"] == pytest.approx(100.0 / 0.02, rel=1e-7)
    assert "t_half_beta_saturated_h" not in fit.params


def test_linear_residuals_option(arms):
    fit = MabPK(residuals="linear").fit_arms(arms[:2])
    for k, v in TRUE.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-5), k
    assert fit.info["residuals"] == "linear"


def test_seeded_noise_recovery_and_standard_errors():
    """5 % log-normal noise, 20 seeds, three arms of 10 samples: every parameter's median within 10 %
    of the truth; standard errors consistent with the spread (per parameter within 40 %, pooled
    standardized errors RMS within 35 % of 1).  Measured: medians +0.3, +0.5, +2.5, +2.7, -6.3, -3.8 %;
    SE / spread 0.91, 0.94, 0.83, 0.70, 0.95, 0.98; RMS z 1.21 (linearised SEs run a little small at n = 30)."""
    base = [mab_pk_concentration(T_H, dose_ug=d, **TRUE) for d in DOSES]
    model = MabPK()
    names = list(TRUE)
    truth = np.array([TRUE[k] for k in names])
    est, se = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        fit = model.fit_arms([(T_H, c * np.exp(0.05 * rng.standard_normal(c.size)), d) for c, d in zip(base, DOSES)])
        est.append([fit.params[k] for k in names])
        se.append([fit.se[k] for k in names])
    est, se = np.array(est), np.array(se)
    rel = np.median(est, axis=0) / truth - 1
    assert np.all(np.abs(rel) < 0.10), dict(zip(names, rel.round(3)))
    se_log = np.median(se / est, axis=0)  # SE of log(theta): the fit's own parameterisation
    spread = np.std(np.log(est), axis=0, ddof=1)
    assert np.all(np.abs(se_log / spread - 1) < 0.40), dict(zip(names, (se_log / spread).round(2)))
    z = (np.log(est) - np.log(truth)) / (se / est)
    assert 0.75 < math.sqrt(np.mean(z ** 2)) < 1.35


# ------------------------------------------------------------------------------------------ activity -> mass
def test_serum_concentration_from_89zr_activity():
    half_h = 282240.0 / 3600.0  # 89Zr, 78.4 h
    c = serum_concentration_ug_per_ml([2.0e5, 1.0e5], specific_activity_bq_per_ug=1.0e5, decay_corrected=False,
                                      hours_since_injection=[half_h, 2 * half_h])
    assert np.allclose(c, [4.0, 4.0], rtol=1e-12)
    assert serum_concentration_ug_per_ml(3.0e5, specific_activity_bq_per_ug=1.0e5, decay_corrected=True) == 3.0
    assert injected_mass_ug(5.0e6, specific_activity_bq_per_ug=1.0e6, unlabelled_ug=400.0) == 405.0
    with pytest.raises(ParameterError, match="hours_since_injection"):
        serum_concentration_ug_per_ml(1.0, specific_activity_bq_per_ug=1.0, decay_corrected=False)
    with pytest.raises(ParameterError, match="decay_corrected"):
        serum_concentration_ug_per_ml(1.0, specific_activity_bq_per_ug=1.0, decay_corrected="yes")
    with pytest.raises(ParameterError, match="specific_activity_bq_per_ug"):
        serum_concentration_ug_per_ml(1.0, specific_activity_bq_per_ug=0.0, decay_corrected=True)


# ------------------------------------------------------------------------------------------ multi-day Patlak
def _serum():
    t = np.array([0, 300, 900, 1800, 3600, 4, 8, 16, 24, 36, 48, 72, 96, 120, 144, 168, 192], float)
    t[5:] *= 3600.0
    cp = 400.0 * np.exp(-t / 3600.0 / 6.0) + 600.0 * np.exp(-t / 3600.0 / 90.0)
    cp[0] = 0.0  # the injection
    return InputFunction(t, cp, description="serum samples")


def _patlak_truth(serum, frames, ki, vt):
    """Frame means of Ki int_0^t Cp + VT Cp by adaptive quadrature of the serum curve (independent of the module)."""
    cp = serum.plasma_at
    knots = serum.times_s
    out = []
    for s, e in zip(frames.start_s, frames.end_s):
        pts = knots[(knots > 0) & (knots < e)]
        i_s = integrate.quad(cp, 0.0, s, points=pts[pts < s], limit=200, epsabs=0, epsrel=1e-13)[0]
        inner = pts[(pts > s) & (pts < e)]
        mean_cp = integrate.quad(cp, s, e, points=inner, epsabs=0, epsrel=1e-13)[0] / (e - s)
        tail = integrate.quad(lambda u: (e - u) * cp(u), s, e, points=inner, epsabs=0, epsrel=1e-13)[0]
        mean_int = (i_s * (e - s) + tail) / (e - s) / 60.0  # Bq/mL x min
        out.append(ki * mean_int + vt * mean_cp)
    return np.array(out)


def test_multi_day_patlak_recovers_ki_and_vt():
    serum = _serum()
    days = np.array([1, 2, 3, 4, 7], float) * 86400.0
    frames = Frames(days, days + np.array([600, 1200, 1800, 1800, 1800], float))  # 10-30 min scans, gaps of days
    ki, vt = 2.0e-5, 0.08  # mL/cm3/min, mL/cm3
    tissue = _patlak_truth(serum, frames, ki, vt)
    fit = multi_day_patlak(tissue, frames, serum, region="tumour")
    assert fit.params["Ki"] == pytest.approx(ki, rel=1e-8)
    assert fit.params["VT"] == pytest.approx(vt, rel=1e-8)
    assert fit.params["Ki_per_h"] == pytest.approx(ki * 60, rel=1e-8)
    assert fit.params["Ki_per_d"] == pytest.approx(ki * 1440, rel=1e-8)
    assert fit.se["Ki_per_d"] == pytest.approx(1440 * fit.se["Ki"]) and fit.se["VT"] < 1e-8 * vt
    assert fit.units["Ki_per_d"] == "mL/cm3/d" and fit.n_points == 5 and fit.info["multi_day"]
    # point values at sample times (s) work the same way
    t = np.array([1, 2, 4, 7], float) * 86400.0
    pts = Frames.from_times(t)
    fit2 = multi_day_patlak(_patlak_truth(serum, pts, ki, vt), t, serum)
    assert fit2.params["Ki"] == pytest.approx(ki, rel=1e-7) and fit2.params["VT"] == pytest.approx(vt, rel=1e-7)


def test_multi_day_patlak_standard_errors_match_the_spread():
    """Noise of constant size in the Patlak ordinate (the regression's assumption): the SEs match the spread."""
    serum = _serum()
    days = np.array([1, 2, 3, 4, 5, 7], float) * 86400.0
    frames = Frames(days, days + 1800.0)
    clean = _patlak_truth(serum, frames, 2.0e-5, 0.08)
    cp = serum.plasma_at(frames.mid_s)
    rng = np.random.default_rng(1)
    fits = [multi_day_patlak(clean + 0.01 * cp * rng.standard_normal(clean.size), frames, serum) for _ in range(100)]
    ki = np.array([f.params["Ki"] for f in fits])
    se = np.array([f.se["Ki"] for f in fits])
    x = np.asarray(fits[0].info["x"])
    sd_theory = 0.01 / math.sqrt(np.sum((x - x.mean()) ** 2))  # OLS slope SD for noise 0.01 in C_T/C_P
    assert np.median(ki) == pytest.approx(2.0e-5, rel=0.03)
    assert math.sqrt(np.mean(se ** 2)) == pytest.approx(sd_theory, rel=0.1)
    assert np.std(ki, ddof=1) == pytest.approx(sd_theory, rel=0.2)


# ------------------------------------------------------------------------------------------ blocking
def test_blocking_comparison_from_summaries_by_hand():
    r = blocking_comparison((10.0, 0.3), (4.0, 0.4))
    assert r["specific"] == 6.0 and r["specific_se"] == pytest.approx(0.5, rel=1e-12)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((6 - 1.959963985 * 0.5, 6 + 1.959963985 * 0.5), rel=1e-9)
    assert r["specific_fraction"] == pytest.approx(0.6, rel=1e-12)
    assert r["specific_fraction_se"] == pytest.approx(math.sqrt(0.001744), rel=1e-12)  # (4/100)^2 .09 + (.4/10)^2
    assert r["method"] == "normal" and r["n_total"] is None and r["units"] == "%ID/g"


def test_blocking_comparison_welch_from_per_animal_values():
    total = np.array([12.1, 10.4, 11.8, 13.0, 9.9])  # %ID/g, tumour, tracer only
    blocked = np.array([4.2, 5.1, 3.8, 4.6])          # %ID/g, with excess unlabelled antibody
    r = blocking_comparison(total, blocked, units="%ID/g")
    mt, mb = total.mean(), blocked.mean()
    vt, vb = total.var(ddof=1) / 5, blocked.var(ddof=1) / 4
    se = math.sqrt(vt + vb)
    df = (vt + vb) ** 2 / (vt ** 2 / 4 + vb ** 2 / 3)
    assert r["specific"] == pytest.approx(mt - mb, rel=1e-12)
    assert r["specific_se"] == pytest.approx(se, rel=1e-12)
    assert r["df"] == pytest.approx(df, rel=1e-12)
    q = stats.t.ppf(0.975, df)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((mt - mb - q * se, mt - mb + q * se), rel=1e-12)
    welch = stats.ttest_ind(total, blocked, equal_var=False)
    assert r["p_value"] == pytest.approx(welch.pvalue, rel=1e-9)
    assert r["specific_fraction"] == pytest.approx(1 - mb / mt, rel=1e-12)
    assert r["specific_fraction_se"] == pytest.approx(math.sqrt((mb / mt ** 2) ** 2 * vt + vb / mt ** 2), rel=1e-12)
    assert (r["n_total"], r["n_blocked"], r["method"], r["units"]) == (5, 4, "welch", "%ID/g")
    # a mapping with n gives the same Welch interval
    r2 = blocking_comparison({"mean": mt, "se": math.sqrt(vt), "n": 5}, {"mean": mb, "se": math.sqrt(vb), "n": 4})
    assert r2["ci_low"] == pytest.approx(r["ci_low"], rel=1e-12) and r2["df"] == pytest.approx(df, rel=1e-12)


def test_blocking_comparison_of_patlak_ki():
    serum = _serum()
    days = np.array([1, 2, 4, 7], float) * 86400.0
    frames = Frames(days, days + 1800.0)
    rng = np.random.default_rng(3)
    fits = [multi_day_patlak(_patlak_truth(serum, frames, ki, 0.08) * (1 + 0.02 * rng.standard_normal(4)), frames,
                             serum) for ki in (3.0e-5, 1.0e-5)]
    r = blocking_comparison(fits[0], fits[1], param="Ki")
    assert r["specific"] == pytest.approx(fits[0]["Ki"] - fits[1]["Ki"], rel=1e-12)
    assert r["specific_se"] == pytest.approx(math.hypot(fits[0].se["Ki"], fits[1].se["Ki"]), rel=1e-12)
    assert r["units"] == "mL/cm3/min" and r["n_total"] is None


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input_one_line_errors(arms):
    model = MabPK()
    c = arms[0][1]

    def one_line(exc_info):
        assert "\n" not in str(exc_info.value)

    cases = [
        (lambda: model.fit(T_H, c, dose_ug=0.0), "dose_ug"),
        (lambda: model.fit(T_H, c, dose_ug=-5.0), "dose_ug"),
        (lambda: model.fit(T_H[::-1], c, dose_ug=2.0), "increasing"),
        (lambda: model.fit(T_H, np.where(np.arange(c.size) == 3, -0.1, c), dose_ug=2.0), "negative"),
        (lambda: model.fit(T_H[:2], c[:2], dose_ug=2.0), "at least 3"),
        (lambda: model.fit(T_H, c[:5], dose_ug=2.0), "concentrations for"),
        (lambda: model.fit(T_H, np.where(np.arange(c.size) == 2, np.nan, c), dose_ug=2.0), "nan"),
        (lambda: model.fit(T_H, np.where(np.arange(c.size) == 2, 0.0, c), dose_ug=2.0), "residuals='linear'"),
        (lambda: model.fit(T_H, c, dose_ug=2.0, fixed={"kon": 1.0}), "unknown fixed"),
        (lambda: model.fit(T_H, c, dose_ug=2.0, fixed={"Km_ug_per_ml": 0.0}), "Km_ug_per_ml"),
        (lambda: model.simulate(T_H, dose_ug=2.0, **dict(TRUE, Km_ug_per_ml=0.0)), "Km_ug_per_ml must be positive"),
        (lambda: model.simulate(T_H, dose_ug=2.0, **dict(TRUE, Km_ug_per_ml=-1.0)), "Km_ug_per_ml"),
        (lambda: model.simulate(T_H, dose_ug=2.0, **dict(TRUE, V1_ml=0.0)), "V1_ml"),
        (lambda: model.simulate([-1.0, 2.0], dose_ug=2.0, **TRUE), "before the injection"),
        (lambda: model.fit_arms([(T_H, c, 2.0), {"t_h": T_H, "conc_ug_per_ml": c, "dose_ug": 20.0}]),
         "different fields"),
        (lambda: model.fit_arms([(T_H, c, 2.0), (T_H, c, 20.0, "blocked")]), "different fields"),
        (lambda: model.fit_arms([{"t_h": T_H, "conc": c, "dose_ug": 2.0}]), "keys"),
        (lambda: model.fit_arms([]), "non-empty"),
        (lambda: MabPK(residuals="squared"), "residuals"),
        (lambda: MabPK(method="Euler"), "unknown ODE method"),
        (lambda: model.fit(T_H[:6], c[:6], dose_ug=2.0), "free parameters"),
    ]
    for call, match in cases:
        with pytest.raises(ParameterError, match=match) as exc:
            call()
        one_line(exc)


def test_bad_input_patlak_and_blocking():
    serum = _serum()
    frames = Frames([86400.0, 172800.0], [88200.0, 174600.0])
    with pytest.raises(ParameterError, match="at least 3"):
        multi_day_patlak([1.0, 2.0], frames, serum)
    late = Frames([86400.0, 172800.0, 1.0e6], [88200.0, 174600.0, 1.002e6])
    with pytest.raises(ParameterError, match="input function ends"):
        multi_day_patlak([1.0, 2.0, 3.0], late, serum)
    with pytest.raises(ParameterError, match="InputFunction"):
        multi_day_patlak([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ParameterError, match="1 animal"):
        blocking_comparison([10.0], [4.0, 5.0])
    with pytest.raises(ParameterError, match="param="):
        blocking_comparison(KineticFit("patlak", {"Ki": 1.0}, {"Ki": 0.1}, 0, 0, 0, 0, 3, 2), (1.0, 0.1))
    with pytest.raises(ParameterError, match="standard error"):
        blocking_comparison((10.0, -1.0), (4.0, 0.4))
