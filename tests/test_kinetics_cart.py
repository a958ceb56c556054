"""CAR-T cell models: Stein 2019 cellular kinetics (cart-ck), 89Zr-oxine label retention, cell
equivalents from activity, and the multi-organ trafficking compartment model."""

import math

import numpy as np
import pytest

from invivo.errors import ParameterError
from invivo.kinetics import Frames, get_model
from invivo.kinetics.cart import (STEIN_2019_TYPICAL, TRAFFICKING_DEMO_RATES_PER_H, CartCK, CellTrafficking,
                                  LabelRetention, cart_ck_auc, cart_ck_curve, cells_from_activity)

P = STEIN_2019_TYPICAL
CK = ("tmax_d", "cmax", "fold_expansion", "alpha_per_d", "beta_per_d", "fb")
# days after infusion: dense through expansion and contraction, sparse through persistence
T_D = np.array([0.5, 1, 2, 4, 7, 9, 11, 14, 17, 21, 28, 42, 56, 90, 180, 270, 365.0])


def _rel(a, b):
    return abs(a / b - 1.0)


# ------------------------------------------------------------------------------------- cart-ck
def test_stein_2019_typical_curve_cross_check():
    # half-lives as published: 4.33 d and 216.6 d
    fit = CartCK().fit(T_D, cart_ck_curve(T_D, **P))
    assert fit.params["half_life_alpha_d"] == pytest.approx(4.33, abs=0.005)
    assert fit.params["half_life_beta_d"] == pytest.approx(216.6, abs=0.05)
    # AUC 0-28 d: independent quadrature of the equations as written in SCIENCE.md
    from scipy.integrate import quad

    rho = math.log(P["fold_expansion"]) / P["tmax_d"]
    c0 = P["cmax"] / P["fold_expansion"]
    pre = quad(lambda s: c0 * math.exp(rho * s), 0, P["tmax_d"], epsabs=0, epsrel=1e-13)[0]
    post = quad(lambda s: P["cmax"] * ((1 - P["fb"]) * math.exp(-P["alpha_per_d"] * (s - P["tmax_d"]))
                                       + P["fb"] * math.exp(-P["beta_per_d"] * (s - P["tmax_d"]))),
                P["tmax_d"], 28.0, epsabs=0, epsrel=1e-13)[0]
    auc = cart_ck_auc(28.0, **P)
    assert auc == pytest.approx(pre + post, rel=1e-10)
    assert auc == pytest.approx(171774.285, abs=0.01)
    assert _rel(auc, 172000.0) < 0.002  # "about 172,000"
    assert fit.params["auc_0_28"] == pytest.approx(auc, rel=1e-10)


def test_curve_shape():
    c = cart_ck_curve([0.0, P["tmax_d"], P["tmax_d"] + 1e-9, 28.0], **P)
    assert c[0] == pytest.approx(P["cmax"] / P["fold_expansion"], rel=1e-14)  # C0 = Cmax / fold
    assert c[1] == pytest.approx(P["cmax"], rel=1e-14)
    assert c[2] == pytest.approx(P["cmax"], rel=1e-8)  # continuous at Tmax
    s = 28.0 - P["tmax_d"]
    assert c[3] == pytest.approx(P["cmax"] * ((1 - P["fb"]) * math.exp(-P["alpha_per_d"] * s)
                                              + P["fb"] * math.exp(-P["beta_per_d"] * s)), rel=1e-13)
    # expansion doubling time ln2 / rho
    rho = math.log(P["fold_expansion"]) / P["tmax_d"]
    c2 = cart_ck_curve([2.0, 2.0 + math.log(2) / rho], **P)
    assert c2[1] / c2[0] == pytest.approx(2.0, rel=1e-13)
    # AUC before Tmax only: the expansion integral
    c0 = P["cmax"] / P["fold_expansion"]
    assert cart_ck_auc(5.0, **P) == pytest.approx(c0 * math.expm1(rho * 5) / rho, rel=1e-13)


@pytest.mark.parametrize("weights", ["log", "uniform"])
@pytest.mark.parametrize("truth", [
    P,
    {"cmax": 35.0, "tmax_d": 12.0, "fold_expansion": 250.0, "alpha_per_d": 0.3, "beta_per_d": 0.01, "fb": 0.05},
    {"cmax": 1.2e5, "tmax_d": 7.5, "fold_expansion": 1e4, "alpha_per_d": 0.08, "beta_per_d": 5e-4, "fb": 0.02},
], ids=["stein", "cells-per-uL", "long-persistence"])
def test_cart_ck_noise_free_recovery(weights, truth):
    y = cart_ck_curve(T_D, **truth)
    fit = CartCK(weights=weights, units="copies/ug").fit(T_D, y)
    for k in CK:
        assert _rel(fit.params[k], truth[k]) < 1e-8, (k, fit.params[k], truth[k])
    assert np.max(np.abs(fit.residuals / y)) < 1e-8
    assert fit.units["cmax"] == "copies/ug" and fit.units["auc_0_28"] == "copies/ug x d"
    assert fit.n_params == 6 and fit.n_points == T_D.size and math.isfinite(fit.aic)


def test_cart_ck_recovery_tmax_on_a_sample_shuffled_with_replicates():
    truth = dict(P, tmax_d=9.0)  # the peak falls exactly on a sample
    t = np.concatenate([T_D, [9.0, 14.0, 28.0]])
    rng = np.random.default_rng(0)
    order = rng.permutation(t.size)
    t = t[order]
    fit = CartCK().fit(t, cart_ck_curve(t, **truth))
    for k in CK:
        assert _rel(fit.params[k], truth[k]) < 1e-8, k
    np.testing.assert_allclose(fit.fitted, cart_ck_curve(t, **truth), rtol=1e-8)  # input order kept


def test_cart_ck_fixed_tmax_and_frames_and_registry():
    y = cart_ck_curve(T_D, **P)
    model = get_model("cart-ck")
    assert isinstance(model, CartCK)
    fit = model.fit(Frames.from_times(T_D * 86400.0), y, tmax_d=9.3, region="blood")
    assert fit.model == "cart-ck" and fit.n_params == 5 and fit.se["tmax_d"] == 0.0
    assert fit.info["fixed"] == ["tmax_d"] and fit.info["region"] == "blood"
    for k in CK:
        assert _rel(fit.params[k], P[k]) < 1e-8
    d = fit.to_dict()
    for name in CK + ("auc_0_28", "half_life_alpha_d", "half_life_beta_d"):
        assert name in d and name in d["se"]
    assert "aic" in d


def test_cart_ck_seeded_noise():
    """50 fits, 10 % log-normal noise: medians within 5 % of truth, SE within 30 % of the spread."""
    y = cart_ck_curve(T_D, **P)
    names = CK + ("auc_0_28", "half_life_alpha_d", "half_life_beta_d")
    truth = np.array([P[k] for k in CK] + [cart_ck_auc(28.0, **P), math.log(2) / 0.16, math.log(2) / 0.0032])
    rng = np.random.default_rng(2)
    est, ses = [], []
    model = CartCK()
    for _ in range(50):
        f = model.fit(T_D, y * np.exp(0.1 * rng.standard_normal(y.size)))
        est.append([f.params[k] for k in names])
        ses.append([f.se[k] for k in names])
    est, ses = np.array(est), np.array(ses)
    med = np.median(est, axis=0) / truth - 1
    ratio = est.std(axis=0) / np.median(ses, axis=0)
    assert np.all(np.abs(med) < 0.05), dict(zip(names, med))
    assert np.all(np.abs(ratio - 1) < 0.3), dict(zip(names, ratio))


@pytest.mark.parametrize("call, match", [
    (lambda: CartCK().fit([-1, 2, 4, 8, 10, 20, 30], [1, 2, 3, 4, 3, 2, 1]), "negative"),
    (lambda: CartCK().fit([1, 2, 4, 8, 10, 20, 30], [1, 2, np.nan, 4, 3, 2, 1]), "nan"),
    (lambda: CartCK().fit([1, 2, 4, 8, 10, 20], [1, 2, 3, 4, 3, 2]), "6 samples for 6 free parameters"),
    (lambda: CartCK().fit([1, 2, 4, 8, 10, 20, 30], [1, 2, 0, 4, 3, 2, 1]), "log weighting"),
    (lambda: CartCK().fit([1, 2, 4, 8, 10, 20, 30], [9, 8, 7, 6, 5, 4, 3]), "no sample before the peak"),
    (lambda: CartCK().fit([1, 2, 4, 8, 10, 20, 30], [1, 2, 3, 4, 5, 6, 7]), "last sample"),
    (lambda: CartCK().fit([1, 2, 4], [1, 2, 3, 4]), "4 values for 3 sample times"),
    (lambda: CartCK(weights="bad"), "weights must be one of"),
    (lambda: cart_ck_curve([1.0], **dict(P, fb=1.5)), "fb"),
    (lambda: cart_ck_curve([1.0], **dict(P, fold_expansion=0.5)), "fold_expansion"),
    (lambda: cart_ck_curve([1.0], **dict(P, tmax_d=0.0)), "tmax_d"),
])
def test_cart_ck_bad_input(call, match):
    with pytest.raises(ParameterError, match=f"(?i){match}") as e:
        call()
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------ direct labels
def test_label_retention_models():
    r = LabelRetention(0.8)
    assert r.fraction(24.0) == pytest.approx(0.8, rel=1e-14)
    assert r.fraction(48.0) == pytest.approx(0.64, rel=1e-14)  # mono-exponential
    assert r.efflux_rate_per_h == pytest.approx(-math.log(0.8) / 24, rel=1e-14)
    np.testing.assert_allclose(r.fraction(np.array([0.0, 12.0])), [1.0, math.sqrt(0.8)], rtol=1e-14)
    two = LabelRetention(0.8, model="two-phase", fast_fraction=0.1, fast_half_life_h=2.0)
    assert two.fraction(0.0) == pytest.approx(1.0)
    assert two.fraction(24.0) == pytest.approx(0.8, rel=1e-13)
    # after the burst the slow phase alone: ratio over a day is exp(-24 k_slow)
    ks = two.efflux_rate_per_h
    assert two.fraction(96.0) / two.fraction(72.0) == pytest.approx(math.exp(-24 * ks), rel=1e-6)
    tt = np.linspace(0, 200, 101)
    assert np.all(np.diff(two.fraction(tt)) < 0)
    assert LabelRetention(1.0).fraction(100.0) == 1.0


def test_cells_from_activity_round_trip():
    n_cells = np.array([1e5, 3e6, 2.5e7])
    a_cell = 0.05  # Bq per cell at labeling
    hours = np.array([2.0, 26.0, 170.0])
    ret = LabelRetention(0.75)
    half_life_h = 78.41  # 89Zr, NUDAT
    activity = n_cells * a_cell * 0.5 ** (hours / half_life_h) * 0.75 ** (hours / 24.0)
    got = cells_from_activity(activity, activity_per_cell_bq_at_labeling=a_cell, hours_since_labeling=hours,
                              retention=ret)
    np.testing.assert_allclose(got, n_cells, rtol=2e-4)  # NUDAT half-life rounded to 0.01 h
    # decay-corrected activity: only the efflux is undone
    got_dc = cells_from_activity(n_cells * a_cell * 0.75, activity_per_cell_bq_at_labeling=a_cell,
                                 hours_since_labeling=24.0, retention=ret, decay_corrected=True)
    np.testing.assert_allclose(got_dc, n_cells, rtol=1e-13)
    # one half-life, full retention: twice the naive count
    one = cells_from_activity(1000.0, activity_per_cell_bq_at_labeling=0.01, hours_since_labeling=282240 / 3600,
                              retention=LabelRetention(1.0))
    assert one == pytest.approx(2e5, rel=1e-13)


@pytest.mark.parametrize("call, match", [
    (lambda: LabelRetention(0.0), "fraction_retained_24h"),
    (lambda: LabelRetention(1.2), "fraction_retained_24h"),
    (lambda: LabelRetention(float("nan")), "fraction_retained_24h"),
    (lambda: LabelRetention(0.8, model="linear"), "retention model"),
    (lambda: LabelRetention(0.5, model="two-phase", fast_fraction=0.6, fast_half_life_h=100.0), "not reachable"),
    (lambda: cells_from_activity(10.0, activity_per_cell_bq_at_labeling=0.0, hours_since_labeling=1.0),
     "activity_per_cell"),
    (lambda: cells_from_activity(10.0, activity_per_cell_bq_at_labeling=-1.0, hours_since_labeling=1.0),
     "activity_per_cell"),
    (lambda: cells_from_activity(10.0, activity_per_cell_bq_at_labeling=0.1, hours_since_labeling=-1.0),
     "hours_since_labeling"),
    (lambda: cells_from_activity([1.0, np.nan], activity_per_cell_bq_at_labeling=0.1, hours_since_labeling=1.0),
     "activity_bq"),
    (lambda: cells_from_activity(1.0, activity_per_cell_bq_at_labeling=0.1, hours_since_labeling=1.0,
                                 isotope="Xx-999"), "unknown radionuclide"),
])
def test_direct_label_bad_input(call, match):
    with pytest.raises(ParameterError, match=f"(?i){match}") as e:
        call()
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- trafficking
T_H = np.array([0.25, 1, 2, 4, 8, 24, 48, 72, 120, 168.0])


def test_trafficking_demo_reproduces_science_pattern():
    pid = CellTrafficking().simulate([1.0, 168.0])
    assert 20.0 <= pid["lung"][0] <= 28.0  # lung trapping ~24 %ID at 1 h
    assert 32.0 <= pid["liver"][1] <= 40.0  # day 7: liver 36
    assert 3.0 <= pid["lung"][1] <= 4.8  # lung 3.9
    assert 1.0 <= pid["spleen"][1] <= 1.8  # spleen 1.4
    assert pid["bone"][1] > 5.0 > pid["bone"][0]  # released 89Zr accumulates in bone
    full = CellTrafficking().compartments(T_H)
    np.testing.assert_allclose(sum(full.values()), 100.0, rtol=1e-12)  # closed system


def test_trafficking_matches_an_ode_integrator():
    from scipy.integrate import solve_ivp

    m = CellTrafficking()
    A = m.rate_matrix(TRAFFICKING_DEMO_RATES_PER_H)
    x0 = np.zeros(9)
    x0[0] = 100.0
    sol = solve_ivp(lambda t, x: A @ x, (0, T_H[-1]), x0, t_eval=T_H, method="LSODA", rtol=1e-11, atol=1e-12)
    got = m.compartments(T_H)
    for i, c in enumerate(m.COMPARTMENTS):
        np.testing.assert_allclose(got[c], sol.y[i], rtol=1e-6, atol=1e-8)
    # physical decay on request
    hot = CellTrafficking(decay_corrected=False).simulate(T_H)
    cold = m.simulate(T_H)
    np.testing.assert_allclose(hot["liver"], cold["liver"] * 0.5 ** (T_H * 3600 / 282240.0), rtol=1e-12)
    # cell-bound label: no bone, blood without the free 89Zr
    cells = m.simulate(T_H, cell_bound=True)
    assert np.all(cells["bone"] == 0) and np.all(cells["blood"] <= cold["blood"])
    np.testing.assert_allclose(cells["blood"], got["blood_cells"], rtol=1e-14)


def test_trafficking_noise_free_recovery():
    m = CellTrafficking()
    table = m.simulate(T_H)
    start = {k: v * 1.7 for k, v in TRAFFICKING_DEMO_RATES_PER_H.items()}
    fit = m.fit(T_H, table, start=start)
    for k, v in TRAFFICKING_DEMO_RATES_PER_H.items():
        assert _rel(fit.params[k], v) < 1e-8, (k, fit.params[k], v)
        assert math.isfinite(fit.se[k])
    assert fit.params["retained_24h"] == pytest.approx(math.exp(-24 * 0.0025), rel=1e-8)
    assert fit.model == "cell-trafficking" and fit.n_points == 7 * T_H.size and fit.n_params == 9


def test_trafficking_recovery_subset_of_organs_fixed_rates():
    import pandas as pd

    truth = dict(TRAFFICKING_DEMO_RATES_PER_H, k_blood_tumour_per_h=0.02, k_efflux_per_h=0.006)
    m = CellTrafficking(weights="organ")
    full = m.simulate(T_H, **truth)
    table = pd.DataFrame({o: full[o] for o in ("lung", "liver", "spleen", "tumour", "bone", "blood")})
    fit = m.fit(T_H, table, fixed={"k_blood_other_per_h": truth["k_blood_other_per_h"]})
    assert fit.se["k_blood_other_per_h"] == 0.0 and fit.n_params == 8
    for k, v in truth.items():
        assert _rel(fit.params[k], v) < 1e-8, (k, fit.params[k], v)
    assert fit.info["organs"] == ["blood", "lung", "liver", "spleen", "tumour", "bone"]


def test_trafficking_seeded_noise():
    """30 fits, Gaussian noise 0.5 %ID: medians within 5 %, SE within 30 % of the spread."""
    m = CellTrafficking()
    table = m.simulate(T_H)
    truth = np.array(list(TRAFFICKING_DEMO_RATES_PER_H.values()))
    rng = np.random.default_rng(0)
    est, ses = [], []
    for _ in range(30):
        f = m.fit(T_H, {k: v + 0.5 * rng.standard_normal(v.size) for k, v in table.items()})
        est.append([f.params[k] for k in TRAFFICKING_DEMO_RATES_PER_H])
        ses.append([f.se[k] for k in TRAFFICKING_DEMO_RATES_PER_H])
    est, ses = np.array(est), np.array(ses)
    med = np.median(est, axis=0) / truth - 1
    ratio = est.std(axis=0) / np.median(ses, axis=0)
    assert np.all(np.abs(med) < 0.05), med
    assert np.all(np.abs(ratio - 1) < 0.3), ratio


@pytest.mark.parametrize("call, match", [
    (lambda m, tab: m.fit(-T_H, tab), "negative"),
    (lambda m, tab: m.fit(T_H, {**tab, "kidney": tab["lung"]}), "unknown organ"),
    (lambda m, tab: m.fit(T_H, {"lung": np.where(T_H == 24, np.nan, tab["lung"])}), "nan"),
    (lambda m, tab: m.fit(T_H[:2], {"lung": tab["lung"][:2], "liver": tab["liver"][:2]}), "free rates"),
    (lambda m, tab: m.fit(T_H, {"lung": tab["lung"][:3]}), "3 values for 10 sample times"),
    (lambda m, tab: m.fit(T_H, tab, fixed={"k_lung_liver_per_h": 1.0}), "unknown rate"),
    (lambda m, tab: m.simulate(T_H, k_blood_lung_per_h=-1.0), "k_blood_lung_per_h"),
    (lambda m, tab: CellTrafficking(weights="log"), "weights"),
])
def test_trafficking_bad_input(call, match):
    m = CellTrafficking()
    tab = m.simulate(T_H)
    with pytest.raises(ParameterError, match=f"(?i){match}") as e:
        call(m, tab)
    assert "\n" not in str(e.value)


def test_trafficking_from_the_command_line(tmp_path, capsys):
    """`invivo kinetics --model cell-trafficking`: a TAC file whose columns are organs (%ID over time) fitted
    jointly; noise-free curves from the model give back its rates (the label and free-89Zr rates held by --fix)."""
    import json

    import pandas as pd

    from invivo.cli.main import main

    t_h = np.array([0.5, 2, 6, 24, 48, 72, 120, 168.0])
    pid = CellTrafficking().simulate(t_h)
    organs = ["lung", "liver", "spleen", "tumour", "bone", "blood"]
    f = tmp_path / "mouse1_organs.tsv"
    pd.DataFrame({"time": t_h * 3600.0, **{o: pid[o] for o in organs}}).to_csv(f, sep="\t", index=False)
    held = ("k_efflux_per_h", "k_free_bone_per_h", "k_free_liver_per_h")
    fix = [a for r in held for a in ("--fix", f"{r}={TRAFFICKING_DEMO_RATES_PER_H[r]!r}")]
    assert main(["kinetics", "--tac", str(f), "--model", "cell-trafficking", "--json", *fix]) == 0
    out = json.loads(capsys.readouterr().out)
    fit = out["mouse1_organs"]
    for r, v in TRAFFICKING_DEMO_RATES_PER_H.items():
        if r not in held:
            assert fit[r] == pytest.approx(v, rel=1e-4), r
    assert fit["retained_24h"] == pytest.approx(math.exp(-24 * TRAFFICKING_DEMO_RATES_PER_H["k_efflux_per_h"]))
    assert main(["kinetics", "--tac", str(f), "--model", "cell-trafficking", "--fix", "k_efflux_per_h"]) == 2
    assert "RATE=VALUE" in capsys.readouterr().err
    assert main(["kinetics", "--tac", str(f), "--model", "patlak", "--fix", "k_efflux_per_h=1"]) == 2
    bad = tmp_path / "bad.tsv"
    pd.DataFrame({"time": t_h * 3600.0, "lungs": pid["lung"]}).to_csv(bad, sep="\t", index=False)
    assert main(["kinetics", "--tac", str(bad), "--model", "cell-trafficking"]) == 2
    assert "unknown organ" in capsys.readouterr().err
