"""Kinetics foundation against truth: exact convolution, frames, input functions, compartment models."""

import math

import numpy as np
import pytest
from scipy.integrate import quad, solve_ivp

from invivo.errors import ParameterError
from invivo.kinetics import Frames, InputFunction, get_model, load_blood
from invivo.kinetics.compartment import OneTCM, TwoTCM, TwoTCMIrr
from invivo.kinetics.simulate import conv_exp, fine_grid, frame_average


def bolus_input(end_s=5400.0):
    """A typical arterial bolus (Bq/mL): a gamma-variate peak plus two washout exponentials, sampled densely early."""
    t = np.concatenate([np.arange(0, 120, 5), np.arange(120, 600, 30), np.arange(600, end_s + 1, 120)]).astype(float)
    tm = np.maximum(t / 60.0 - 0.3, 0.0)
    cp = 8e4 * tm * np.exp(-4 * tm) + np.where(t / 60 > 0.3, 2e3 * np.exp(-0.05 * tm) + 800 * np.exp(-0.005 * tm), 0)
    return InputFunction(t, cp, whole_blood=cp * 1.1)


FRAMES = Frames.from_durations([10] * 6 + [30] * 4 + [60] * 5 + [300] * 5 + [600] * 5)


def test_conv_exp_is_exact_for_piecewise_linear_curves():
    t = np.concatenate([np.linspace(0, 1, 21), np.linspace(1.1, 10, 90)])
    c = np.sin(t) ** 2 + t
    f = lambda s: np.interp(s, t, c)  # noqa: E731
    for b in (0.0, 1e-9, 0.3, 5.0):
        ref = [quad(lambda s: f(s) * math.exp(-b * (T - s)), 0, T, points=t[t < T], limit=400)[0] for T in t]
        np.testing.assert_allclose(conv_exp(t, c, b), ref, rtol=0, atol=1e-10)
    batch = conv_exp(t, np.stack([c, 2 * c]), np.array([0.3, 0.7]))
    np.testing.assert_allclose(batch[0], conv_exp(t, c, 0.3), atol=1e-12)
    np.testing.assert_allclose(batch[1], 2 * conv_exp(t, c, 0.7), atol=1e-12)


def test_fine_grid_holds_frames_and_frame_average_is_exact_for_linear_curves():
    g = fine_grid(FRAMES, dt_min=0.1)
    assert np.all(np.diff(g) <= 0.1 + 1e-12)
    assert np.all(np.isin(np.round(FRAMES.start_min, 9), np.round(g, 9)))
    np.testing.assert_allclose(frame_average(g, 3 * g + 1, FRAMES), 3 * FRAMES.mid_min + 1, rtol=1e-12)


def test_one_tcm_matches_an_ode_solution():
    """Independent check: the 1TCM ODE dC/dt = K1 Cp - k2 C solved numerically."""
    inp = bolus_input()
    K1, k2 = 0.3, 0.15
    g = fine_grid(FRAMES, dt_min=0.02)
    cp = inp.plasma_at(g * 60)
    sol = solve_ivp(lambda t, y: K1 * np.interp(t, g, cp) - k2 * y, (0, g[-1]), [0.0], t_eval=g, rtol=1e-11,
                    atol=1e-9, max_step=0.02)
    ct = OneTCM(dt_min=0.02).simulate(FRAMES, inp, **{"K1": K1, "k2": k2})
    np.testing.assert_allclose(ct, frame_average(g, sol.y[0], FRAMES), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("model,truth", [
    ("1tcm", {"K1": 0.3, "k2": 0.15}),
    ("2tcm-irr", {"K1": 0.2, "k2": 0.3, "k3": 0.05}),
    ("2tcm", {"K1": 0.25, "k2": 0.2, "k3": 0.08, "k4": 0.04}),
])
@pytest.mark.parametrize("fit_delay", [False, True])
def test_noise_free_recovery(model, truth, fit_delay):
    inp = bolus_input()
    m = get_model(model, fit_delay=fit_delay)
    y = m.simulate(FRAMES, inp, vB=0.05, delay_s=12.0 if fit_delay else 0.0, **truth)
    fit = m.fit(y, FRAMES, inp, region="tumour")
    for k, v in truth.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-6), k
    assert fit.params["vB"] == pytest.approx(0.05, rel=1e-6)
    assert fit.params["delay_s"] == pytest.approx(12.0 if fit_delay else 0.0, abs=1e-4)
    if model == "2tcm-irr":
        assert fit.params["Ki"] == pytest.approx(0.2 * 0.05 / 0.35, rel=1e-6)
    if model == "2tcm":
        assert fit.params["VT"] == pytest.approx(0.25 / 0.2 * 3.0, rel=1e-6)
        assert fit.params["BPND"] == pytest.approx(2.0, rel=1e-6)
    d = fit.to_dict()
    assert set(d) >= set(truth) | {"se", "aic"}
    if not fit_delay:
        assert d["se"]["delay_s"] == 0.0


def test_seeded_noise_recovery_and_standard_errors():
    """2TCM-irr at 3 % noise (sd proportional to sqrt(value / duration)): Ki median within 3 %, and the
    reported SE of Ki within 35 % of the spread over 40 fits."""
    inp = bolus_input()
    m = TwoTCMIrr()
    truth = {"K1": 0.2, "k2": 0.3, "k3": 0.05}
    clean = m.simulate(FRAMES, inp, vB=0.05, **truth)
    rng = np.random.default_rng(11)
    sd = 0.03 * np.sqrt(clean * clean.max() / (FRAMES.duration_s / FRAMES.duration_s.mean()))
    ki, se = [], []
    for _ in range(40):
        f = m.fit(clean + sd * rng.standard_normal(clean.size), FRAMES, inp)
        ki.append(f.params["Ki"])
        se.append(f.se["Ki"])
    ki_true = 0.2 * 0.05 / 0.35
    assert np.median(ki) == pytest.approx(ki_true, rel=0.03)
    assert np.median(se) == pytest.approx(np.std(ki), rel=0.35)


def test_fixed_vb_and_weights():
    inp = bolus_input()
    y = OneTCM().simulate(FRAMES, inp, vB=0.03, K1=0.3, k2=0.15)
    fit = OneTCM(vB=0.03, weights="uniform").fit(y, FRAMES, inp)
    assert fit.se["vB"] == 0.0 and "vB" in fit.info["fixed"] and fit.n_params == 2
    assert fit.params["K1"] == pytest.approx(0.3, rel=1e-6)
    fit = OneTCM(weights="decay", half_life_s=6586.2).fit(y, FRAMES, inp)
    assert fit.params["VT"] == pytest.approx(2.0, rel=1e-6)


def test_input_function_rules(tmp_path):
    inp = InputFunction([60, 120], [1000.0, 500.0])
    assert float(inp.plasma_at(30.0)) == pytest.approx(500.0)  # linear from 0 at injection
    unc = InputFunction([0, 3600], [100.0, 100.0], decay_corrected=False, half_life_s=3600.0)
    assert float(unc.plasma_at(3600.0)) == pytest.approx(200.0)
    pf = InputFunction([0, 60, 120], [0.0, 100.0, 100.0], parent_fraction=[1.0, 1.0, 0.5])
    assert float(pf.plasma_at(120.0)) == pytest.approx(50.0)
    (tmp_path / "b_blood.tsv").write_text("time\tplasma_radioactivity\twhole_blood_radioactivity\n"
                                           "0\t0\t0\n60\t1000\t1100\n600\t100\t110\n")
    b = load_blood(tmp_path / "b_blood.tsv")
    assert float(b.blood_at(60.0)) == pytest.approx(1100.0)
    img = InputFunction.from_image(np.array([10.0, 20.0]), Frames([0, 60], [60, 120]), recovery=0.5)
    assert float(img.blood_at(90.0)) == pytest.approx(40.0) and img.end_s == 120.0


def test_bad_input():
    inp = bolus_input(end_s=1200.0)
    with pytest.raises(ParameterError, match="overlap"):
        Frames([0, 50], [60, 120])
    with pytest.raises(ParameterError, match="increase"):
        Frames([0, 0], [60, 120])
    with pytest.raises(ParameterError, match="durations must be positive"):
        Frames([0, 60], [60, 50])
    with pytest.raises(ParameterError, match="scan runs to"):
        OneTCM().fit(np.ones(len(FRAMES)), FRAMES, inp)
    full = bolus_input()
    y = np.ones(len(FRAMES))
    y[3] = np.nan
    with pytest.raises(ParameterError, match="frame 3"):
        OneTCM().fit(y, FRAMES, full)
    with pytest.raises(ParameterError, match="more frames"):
        TwoTCM().fit(np.ones(4), Frames.from_durations([60] * 4), full)
    with pytest.raises(ParameterError, match="valid models: 1tcm"):
        get_model("3tcm")
    with pytest.raises(ParameterError, match="strictly increasing"):
        InputFunction([0, 60, 60], [0, 1, 2])
    with pytest.raises(ParameterError, match="half-life"):
        InputFunction([0, 60], [0, 1], decay_corrected=False)
    with pytest.raises(ParameterError, match="vB"):
        OneTCM(vB=1.5)


def test_cli_fits_every_region_and_prints_json(tmp_path, capsys):
    import json

    import pandas as pd

    from invivo.cli.main import main

    inp = bolus_input()
    pd.DataFrame({"time": inp.times_s, "plasma_radioactivity": inp.plasma,
                  "whole_blood_radioactivity": inp.whole_blood}).to_csv(tmp_path / "blood.tsv", sep="\t", index=False)
    m = TwoTCMIrr()
    truth = {"tumour": {"K1": 0.2, "k2": 0.3, "k3": 0.05}, "liver": {"K1": 0.6, "k2": 0.5, "k3": 0.02}}
    cols = {"frame_start": FRAMES.start_s, "frame_end": FRAMES.end_s}
    for r, p in truth.items():
        cols[r] = m.simulate(FRAMES, inp, vB=0.04, **p)
    pd.DataFrame(cols).to_csv(tmp_path / "tac.tsv", sep="\t", index=False, float_format="%.17g")
    rc = main(["kinetics", "--tac", str(tmp_path / "tac.tsv"), "--model", "2tcm-irr", "--input",
               str(tmp_path / "blood.tsv"), "--json", "--out", str(tmp_path / "res.tsv")])
    out = capsys.readouterr().out
    assert rc == 0
    res = json.loads(out)  # one JSON object and nothing else on stdout
    for r, p in truth.items():
        for k, v in p.items():
            assert res[r][k] == pytest.approx(v, rel=1e-6)
        assert res[r]["Ki"] == pytest.approx(p["K1"] * p["k3"] / (p["k2"] + p["k3"]), rel=1e-6)
        assert set(res[r]["se"]) >= {"K1", "Ki"} and isinstance(res[r]["aic"], float)
    table = pd.read_csv(tmp_path / "res.tsv", sep="\t")
    assert list(table["region"]) == ["tumour", "liver"] and "Ki_se" in table.columns
    rc = main(["kinetics", "--tac", str(tmp_path / "tac.tsv"), "--model", "2tcm-irr"])
    err = capsys.readouterr().err
    assert rc == 2 and "--input" in err and len(err.strip().splitlines()) == 1
    rc = main(["kinetics", "--tac", str(tmp_path / "tac.tsv"), "--model", "4tcm", "--input", str(tmp_path / "blood.tsv")])
    assert rc == 2 and "valid models" in capsys.readouterr().err
