#!/usr/bin/env python
"""Validate invivo's kinetic models, voxelwise maps and TAC extraction against known truth.

Usage::

    python phantoms/validate_kinetics.py [--quick] [--seed N]

Prints one table (case, model, quantity, truth, recovered, error, tolerance, status) and
exits 1 if any row FAILs, 0 otherwise.  INFO rows are shown but not judged; SKIP rows say
what was not run and why (in a note).  Five parts, all on synthetic data made here:

1. **Noise-free, every model in** ``invivo.kinetics.MODELS`` **from its own simulator**
   (built by name with ``get_model``): every parameter, with the fitted vB and input
   delay of the compartment models, and the derived ones (VT, Ki, BPND, half-lives,
   AUC), within 1e-4 relative (the issue); then the ``invivo kinetics --json`` command on
   TSV files written here (2tcm-irr with a blood file, srtm with a reference column, and
   cart-ck from a ``time`` column).
2. **Seeded noise** (PET frames: sd proportional to sqrt(activity / frame duration), 5 %
   in a 300-s frame at the curve's mean level; serum / blood samples: 5 % / 10 %
   log-normal): N fits per model (100; 20 in the quick run, 8 for 2tcm and 10 for mab-pk),
   the median relative bias and the median reported SE against the spread of the fits
   (judged from 20 fits on).
3. **Independent cross-checks**: the Stein 2019 typical CAR-T curve (half-lives 4.33 and
   216.6 d, AUC 0-28 about 172,000); SRTM and Logan-ref on a 1TCM reference and a 2TCM
   target with BPND 1.5 and R1 1.2; Patlak Ki of a 2TCM-irr curve; Logan VT of a 1TCM
   curve; the 1TCM against an ODE solved with ``scipy.integrate.solve_ivp``, within an
   a-priori bound of its discretisation error; and a common preclinical framing (5 x 5 s,
   5 x 30 s, ...) whose frame ends are not multiples of the simulation step.
4. **Voxelwise maps** (``invivo.kinetics.maps``): Patlak, Logan, 1TCM, 2TCM-irr and SRTM on
   a 4D array of random parameters, noise-free and with noise (median bias over voxels),
   with voxels/s as INFO.
5. **TAC extraction**: ``invivo.roi.tac`` on ``invivo.synth.render_pet`` images stored with
   decay correction START, ADMIN and NONE gives the same injection-corrected curve.

``--quick`` runs 20 noisy fits per model (8 for 2tcm, 10 for mab-pk) and 2,000-voxel noisy
maps (< 60 s; 11-41 s measured on a shared 2-core machine); the full run 100 fits per model
and 20,000-voxel maps (< 5 min; 90-180 s measured).
``--seed`` changes the noise.  See ``phantoms/README.md`` for the tolerances and why.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
from _report import guarded as _guarded, rel as _rel  # noqa: E402


# ----------------------------------------------------------------------------- constants
TOL_NOISE_FREE = 1e-4  # the issue: noise-free recovery within 1e-4 relative
#: the scan: 33 frames to 90 min (6 x 10 s, 4 x 30 s, 4 x 60 s, 4 x 120 s, 15 x 300 s)
FRAME_DURATIONS_S = (10,) * 6 + (30,) * 4 + (60,) * 4 + (120,) * 4 + (300,) * 15
VB = 0.05
DELAY_S = 12.0
WB_PLASMA = 1.1  # whole blood / plasma
REF_RATES = {"K1": 0.1, "k2": 0.1}  # reference region: 1TCM, VT' = 1
PLASMA_TRUTH = {
    "1tcm": {"K1": 0.3, "k2": 0.15},
    "2tcm": {"K1": 0.25, "k2": 0.2, "k3": 0.08, "k4": 0.04},
    "2tcm-irr": {"K1": 0.2, "k2": 0.3, "k3": 0.05},
}
PATLAK_TRUTH = {"Ki": 0.02, "V0": 0.3}
LOGAN_TRUTH = {"VT": 1.5, "intercept": -8.0}
SRTM_TRUTH = {"R1": 1.2, "k2": 0.25, "BPND": 1.5}
LOGAN_REF_TRUTH = {"DVR": 2.5, "intercept": -12.0}
PATLAK_REF_TRUTH = {"Ki_ref": 0.01, "intercept": 0.8}
#: mab-pk: a mouse IgG with target-mediated clearance; tracer (10 ug) and blocking (400 ug) arms
MAB_TRUTH = {"V1_ml": 1.5, "V2_ml": 1.0, "CL_ml_per_h": 0.01, "Q_ml_per_h": 0.05, "Vmax_ug_per_h": 0.1,
             "Km_ug_per_ml": 0.5}
MAB_DOSES_UG = (10.0, 400.0)
MAB_T_H = (0.25, 1, 4, 8, 24, 48, 72, 96, 144, 168, 240, 336)
#: cart-ck sample days: dense through expansion and contraction, sparse through persistence
CART_T_D = (0.5, 1, 2, 4, 7, 9, 11, 14, 17, 21, 28, 42, 56, 90, 180, 270, 365)

#: cell-trafficking (89Zr-oxine cells, %ID per organ): PET days, the organs imaged, and the rates held fixed (the
#: label efflux and the free 89Zr uptake: known from the labeling and from free-89Zr studies)
TRAFFICKING_T_H = (0.5, 2, 6, 24, 48, 72, 120, 168)
TRAFFICKING_ORGANS = ("lung", "liver", "spleen", "tumour", "bone", "blood")
TRAFFICKING_HELD = ("k_efflux_per_h", "k_free_bone_per_h", "k_free_liver_per_h")

#: Stein et al. 2019 (tisagenlecleucel, typical patient): published figures
STEIN_HALF_LIFE_ALPHA_D = 4.33
STEIN_HALF_LIFE_BETA_D = 216.6
STEIN_AUC_0_28 = 172000.0
TOL_STEIN_AUC = 0.005

# noise
NOISE_REL = 0.05  # PET: 5 % sd in a 300-s frame at the curve's mean level
NOISE_REF_DURATION_S = 300.0
NOISE_SERUM = 0.05  # mab-pk: 5 % log-normal
NOISE_CELLS = 0.10  # cart-ck: 10 % log-normal (qPCR / flow counts)
NOISE_ORGANS = 0.05  # cell-trafficking: 5 % log-normal on each organ's %ID (ROI means of PET)
N_FULL, N_QUICK = 100, 20
N_SLOW = {"2tcm": (100, 8), "mab-pk": (100, 10)}  # (full, quick) for the slow fits
BIAS_ALLOW = 0.01  # nonlinear least-squares bias allowed at 5 % noise
BIAS_ALLOW_LOGAN = 0.03  # Logan plots: noise in the denominators biases VT / DVR low
K_SE = 3.0  # standard errors of the median
MEDIAN_SE = math.sqrt(math.pi / 2.0)  # se(median) = 1.2533 sd / sqrt(N) for a normal spread
SE_RATIO_ALLOW = math.log(1.25)  # reported SE within 25 % of the spread ...
K_SD = 3.0  # ... plus 3 standard errors of the sample sd (1 / sqrt(2 (N - 1)) relative)
MIN_N_SE_JUDGED = 20  # fewer fits (2tcm and mab-pk in the quick run): the SE ratio is shown, not judged
MAX_SE_MISSING = 0.05  # at most 5 % of the fits (or one) without a finite SE
WILD_SCALES = 5.0  # fits further from the median than 5 x max(robust sd, median SE) are left out of the sd
GRAPHICAL_TSTAR_S = 600.0  # t* of the noisy Patlak / Logan fits and maps (their own curves are linear from 0)

# cross-checks
TOL_PATLAK_KI = 0.01
TOL_LOGAN_VT = 0.01
TOL_SRTM_BPND = 0.05
TOL_SRTM_R1_FAST = 0.03
TOL_ODE_FIT = 1e-4
#: a common preclinical framing (58 min) whose frame ends are not all multiples of the 3-s grid step
ODD_FRAME_DURATIONS_S = (5,) * 5 + (30,) * 5 + (60,) * 5 + (300,) * 10

# maps
TOL_MAP_EXACT = 1e-9  # Patlak / Logan on their own curves: float64 arithmetic
TOL_MAP_COMPARTMENT = 1e-6
TOL_MAP_VB_ABS = 1e-6  # vB is a fraction ~0.05: judged in absolute terms
MAP_SHAPE = (6, 6, 4)
MAP_CURVES_FULL, MAP_CURVES_QUICK = 200, 50  # distinct noise-free curves of the noisy maps ...
MAP_REPLICAS = 100, 40  # ... each repeated with independent noise: 20,000 / 2,000 voxels

# TAC extraction
TAC_ISOTOPE = "18F"
TAC_A_INJ_BQ = 1.0e7
TAC_DELAY_S = 120.0
TAC_FRAMES_S = ((0, 30, 60, 120, 240, 480, 900, 1500, 2100, 2700), (30, 30, 60, 120, 240, 420, 600, 600, 600, 900))
TOL_TAC = 1e-9

DEFAULT_SEED = 2025


# ----------------------------------------------------------------------------- the table
class Table(_report.GroupedTable):
    digits = 8
    group = "model"

    def rel_check(self, case, model, quantity, truth, recovered, tolerance) -> _report.Row:
        r = float(recovered)
        err = _rel(r, truth) if math.isfinite(r) else math.inf
        return self.check(case, model, quantity, truth, r, err, tolerance)

    def skip(self, case, model, quantity, why) -> _report.Row:
        self.notes.append(f"{case}: {model}: {why}")
        return self.info(case, model, quantity, "-", "-", None, "", "SKIP")


# ----------------------------------------------------------------------------- the scan
def feng_input_kbq_ml(t_min):
    """Feng et al. 1993 FDG plasma input (kBq/mL), t in min: a published, independent curve."""
    a1, a2, a3, l1, l2, l3 = 851.1225, 21.8798, 20.8113, 4.133859, 0.01043449, 0.1190996
    t = np.asarray(t_min, dtype=np.float64)
    return (a1 * t - a2 - a3) * np.exp(-l1 * t) + a2 * np.exp(-l2 * t) + a3 * np.exp(-l3 * t)


@dataclass
class Scan:
    frames: object
    inp: object
    ref: np.ndarray  # reference region frame averages (1TCM, K1' = k2' = 0.1)
    t_s: np.ndarray  # blood sample times
    cp: np.ndarray  # plasma (Bq/mL)


def make_scan() -> Scan:
    """Blood samples every 5 s to 3 min, 15 s to 10 min, 60 s to 92 min (the delay fit needs 60 s
    beyond the scan); whole blood = 1.1 x plasma; frames 0-90 min."""
    from invivo.kinetics import Frames, InputFunction
    from invivo.kinetics.compartment import OneTCM

    t = np.concatenate([np.arange(0, 180, 5.0), np.arange(180, 600, 15.0), np.arange(600, 5521, 60.0)])
    cp = 1000.0 * feng_input_kbq_ml(t / 60.0)
    inp = InputFunction(t, cp, whole_blood=WB_PLASMA * cp, description="Feng 1993 input")
    frames = Frames.from_durations(FRAME_DURATIONS_S)
    ref = OneTCM().simulate(frames, inp, vB=0.0, **REF_RATES)
    return Scan(frames, inp, ref, t, cp)


def pet_noise_sd(y, frames, *, rel: float = NOISE_REL):
    """sd of each frame: counts ~ activity x duration (Poisson), so sd_i = k sqrt(C_i / d_i), with k
    such that a 300-s frame at the curve's duration-weighted mean level has ``rel`` relative sd."""
    y = np.asarray(y, dtype=np.float64)
    d = frames.duration_s
    ybar = float(np.sum(y * d) / np.sum(d))
    return rel * np.sqrt(np.maximum(y, 0.0) * ybar * NOISE_REF_DURATION_S / d)


def inverse_variance_weights(y, frames):
    """Weights 1 / sd^2 of the noise model (up to a constant): d_i / C_i (the noise-free curve)."""
    return frames.duration_s / np.maximum(np.asarray(y, dtype=np.float64), 1e-12 * float(np.max(y)))


# ----------------------------------------------------------------------------- 1. noise-free
def derived_truth(name: str, p: dict) -> dict:
    """Derived parameters computed here from their definitions (SCIENCE.md)."""
    if name == "1tcm":
        return {"VT": p["K1"] / p["k2"]}
    if name == "2tcm":
        return {"VT": p["K1"] / p["k2"] * (1 + p["k3"] / p["k4"]), "VND": p["K1"] / p["k2"], "BPND": p["k3"] / p["k4"]}
    if name == "2tcm-irr":
        return {"Ki": p["K1"] * p["k3"] / (p["k2"] + p["k3"])}
    return {}


def mab_half_lives_h(p: dict) -> tuple[float, float]:
    """(alpha, beta) half-lives (h) of the linear limit far below Km, clearance CL + Vmax / Km: the
    eigenvalues of the two-compartment rate matrix, computed here with numpy."""
    k10 = (p["CL_ml_per_h"] + p["Vmax_ug_per_h"] / p["Km_ug_per_ml"]) / p["V1_ml"]
    k12, k21 = p["Q_ml_per_h"] / p["V1_ml"], p["Q_ml_per_h"] / p["V2_ml"]
    lam = np.sort(-np.linalg.eigvals(np.array([[-(k10 + k12), k21], [k12, -k21]])).real)
    return math.log(2) / lam[1], math.log(2) / lam[0]


def stein_auc_quad(t_end: float, p: dict) -> float:
    """AUC 0 - t_end of the Stein 2019 curve by adaptive quadrature of the equations in SCIENCE.md."""
    from scipy.integrate import quad

    rho = math.log(p["fold_expansion"]) / p["tmax_d"]
    c0 = p["cmax"] / p["fold_expansion"]
    pre = quad(lambda s: c0 * math.exp(rho * s), 0, p["tmax_d"], epsabs=0, epsrel=1e-13)[0]
    post = quad(lambda s: p["cmax"] * ((1 - p["fb"]) * math.exp(-p["alpha_per_d"] * (s - p["tmax_d"]))
                                       + p["fb"] * math.exp(-p["beta_per_d"] * (s - p["tmax_d"]))),
                p["tmax_d"], t_end, epsabs=0, epsrel=1e-13)[0]
    return pre + post


def noise_free_case(name: str, scan: Scan):
    """(fit, truth) of one model on data from its own simulator (the model built by name)."""
    from invivo.kinetics import get_model

    frames, inp, ref = scan.frames, scan.inp, scan.ref
    if name in PLASMA_TRUTH:
        rates = PLASMA_TRUTH[name]
        m = get_model(name, fit_delay=True)
        y = m.simulate(frames, inp, vB=VB, delay_s=DELAY_S, **rates)
        truth = {**rates, "vB": VB, "delay_s": DELAY_S, **derived_truth(name, rates)}
        return m.fit(y, frames, inp, region="tissue"), truth
    if name == "patlak":
        m = get_model(name)
        return m.fit(m.simulate(frames, inp, **PATLAK_TRUTH), frames, inp), dict(PATLAK_TRUTH)
    if name == "logan":
        m = get_model(name)
        return m.fit(m.simulate(frames, inp, **LOGAN_TRUTH), frames, inp), dict(LOGAN_TRUTH)
    if name == "srtm":
        m = get_model(name)
        truth = dict(SRTM_TRUTH, k2a=SRTM_TRUTH["k2"] / (1 + SRTM_TRUTH["BPND"]))
        return m.fit(m.simulate(frames, ref, **SRTM_TRUTH), frames, ref), truth
    if name == "logan-ref":
        m = get_model(name, k2_ref=REF_RATES["k2"])
        truth = dict(LOGAN_REF_TRUTH, BPND=LOGAN_REF_TRUTH["DVR"] - 1)
        return m.fit(m.simulate(frames, ref, **LOGAN_REF_TRUTH), frames, ref), truth
    if name == "patlak-ref":
        m = get_model(name)
        return m.fit(m.simulate(frames, ref, **PATLAK_REF_TRUTH), frames, ref), dict(PATLAK_REF_TRUTH)
    if name == "mab-pk":
        m = get_model(name)
        t = np.asarray(MAB_T_H, dtype=np.float64)
        arms = [(t, m.simulate(t, dose_ug=d, **MAB_TRUTH), d) for d in MAB_DOSES_UG]
        ha, hb = mab_half_lives_h(MAB_TRUTH)
        truth = dict(MAB_TRUTH, t_half_alpha_h=ha, t_half_beta_h=hb)
        return m.fit_arms(arms, region="serum"), truth
    if name == "cart-ck":
        from invivo.kinetics.cart import STEIN_2019_TYPICAL

        m = get_model(name)
        p = STEIN_2019_TYPICAL
        t = np.asarray(CART_T_D, dtype=np.float64)
        truth = dict(p, auc_0_28=stein_auc_quad(28.0, p), half_life_alpha_d=math.log(2) / p["alpha_per_d"],
                     half_life_beta_d=math.log(2) / p["beta_per_d"])
        return m.fit(t, m.simulate(t, **p), region="blood"), truth
    if name == "cell-trafficking":
        m, t, organs, fixed, truth = _trafficking_setup()
        return m.fit(t, organs, fixed=fixed, region="mouse"), truth
    raise _no_truth(name)


def _trafficking_setup():
    """(model, t_h, {organ: noise-free %ID}, fixed rates, truth) of the cell-trafficking cases."""
    from invivo.kinetics import get_model
    from invivo.kinetics.cart import TRAFFICKING_DEMO_RATES_PER_H as R

    m = get_model("cell-trafficking")
    t = np.asarray(TRAFFICKING_T_H, dtype=np.float64)
    pid = m.simulate(t)
    organs = {o: np.asarray(pid[o], dtype=np.float64) for o in TRAFFICKING_ORGANS}
    fixed = {r: R[r] for r in TRAFFICKING_HELD}
    truth = {r: v for r, v in R.items() if r not in TRAFFICKING_HELD}
    truth["retained_24h"] = math.exp(-24.0 * R["k_efflux_per_h"])
    truth["lung_residence_h"] = 1.0 / R["k_lung_blood_per_h"]
    return m, t, organs, fixed, truth


def _no_truth(name: str):
    """The error for a model of invivo.kinetics.MODELS that this script has no truth for (a FAIL row)."""
    from invivo.errors import ParameterError

    return ParameterError(f"model {name!r} is in invivo.kinetics.MODELS but phantoms/validate_kinetics.py has no "
                          "truth for it: add it to noise_free_case() and noise_setup()")


def _model_available(name: str):
    """None if the model can be built, else the reason."""
    from invivo.errors import InvivoError
    from invivo.kinetics import model_class

    try:
        model_class(name)
    except InvivoError as e:
        return str(e)
    return None


def validate_noise_free(table: Table, scan: Scan, models, *, truths: dict | None = None) -> None:
    """Part 1: one row per parameter of every model; ``truths`` overrides a model's truth (tests)."""
    import invivo

    case = "1 noise-free"
    for name in models:
        why = _model_available(name)
        if why:
            table.skip(case, name, "every parameter", why)
            continue
        try:
            fit, truth = noise_free_case(name, scan)
        except invivo.InvivoError as e:
            table.fail(case, f"{name} raised", f"{name}: {type(e).__name__}: {e}")
            continue
        truth = dict(truth, **(truths or {}).get(name, {}))
        for p, t in truth.items():
            if p not in fit.params:
                table.fail(case, f"{name}: {p} missing", f"{name}: the fit has no parameter {p!r}")
                continue
            table.rel_check(case, name, f"{p} ({fit.units.get(p, '')})".replace(" ()", ""), t, fit.params[p],
                            TOL_NOISE_FREE)
        missing = [p for p in fit.params if p not in fit.se]
        aic_ok = math.isfinite(fit.aic)
        table.check(case, name, f"parameters without an SE{'' if aic_ok else ', AIC not finite'}", 0,
                    len(missing) + (0 if aic_ok else 1), float(len(missing) + (0 if aic_ok else 1)), 0.0, "abs")


def _write_tsv(path: Path, columns: dict) -> None:
    """A TSV with every float at full precision (repr), so that the file holds the exact values."""
    names = list(columns)
    n = len(next(iter(columns.values())))
    lines = ["\t".join(names)] + ["\t".join(repr(float(columns[c][i])) for c in names) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def _cli_json(argv) -> tuple[int, dict | None, str]:
    from invivo.cli.main import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(argv)
    if rc != 0:
        return rc, None, err.getvalue().strip()
    try:
        return rc, json.loads(out.getvalue()), ""
    except json.JSONDecodeError as e:
        return 1, None, f"stdout is not one JSON object ({e}): {out.getvalue()[:200]!r}"


def validate_cli(table: Table, scan: Scan, workdir: Path) -> None:
    """Part 1, the command line: ``invivo kinetics --tac ... --json`` on files written here."""
    from invivo.kinetics import get_model
    from invivo.kinetics.cart import STEIN_2019_TYPICAL

    case = "1 noise-free CLI"
    frames, inp = scan.frames, scan.inp
    rates = PLASMA_TRUTH["2tcm-irr"]
    tumour = get_model("2tcm-irr").simulate(frames, inp, vB=VB, **rates)
    target = get_model("srtm").simulate(frames, scan.ref, **SRTM_TRUTH)
    _write_tsv(workdir / "tacs.tsv", {"frame_start": frames.start_s, "frame_end": frames.end_s, "tumour": tumour,
                                      "striatum": target, "cerebellum": scan.ref})
    _write_tsv(workdir / "blood.tsv", {"time": scan.t_s, "plasma_radioactivity": scan.cp,
                                       "whole_blood_radioactivity": WB_PLASMA * scan.cp})
    t_d = np.asarray(CART_T_D, dtype=np.float64)
    _write_tsv(workdir / "cells.tsv", {"time": t_d * 86400.0,
                                       "blood": get_model("cart-ck").simulate(t_d, **STEIN_2019_TYPICAL)})
    runs = [
        ("2tcm-irr", ["--tac", str(workdir / "tacs.tsv"), "--model", "2tcm-irr", "--input", str(workdir / "blood.tsv"),
                      "--region", "tumour"], "tumour", dict(rates, vB=VB, **derived_truth("2tcm-irr", rates))),
        ("srtm", ["--tac", str(workdir / "tacs.tsv"), "--model", "srtm", "--reference", "cerebellum", "--region",
                  "striatum"], "striatum", dict(SRTM_TRUTH)),
        ("cart-ck", ["--tac", str(workdir / "cells.tsv"), "--model", "cart-ck"], "blood",
         {k: STEIN_2019_TYPICAL[k] for k in ("tmax_d", "cmax", "fold_expansion", "alpha_per_d", "beta_per_d", "fb")}),
    ]
    for name, argv, region, truth in runs:
        rc, payload, err = _cli_json(["kinetics", *argv, "--json"])
        if payload is None:
            table.fail(case, f"invivo kinetics --model {name}", f"{name}: exit code {rc}: {err}")
            continue
        if set(payload) != {region}:
            table.fail(case, f"{name}: regions in the JSON", f"{name}: JSON regions {sorted(payload)}, expected "
                                                             f"[{region!r}]")
            continue
        res = payload[region]
        for p, t in truth.items():
            v = res.get(p)
            table.rel_check(case, name, f"{p} from --json", t, math.nan if v is None else v, TOL_NOISE_FREE)
        params = [k for k in res if k not in ("se", "aic")]
        lacking = [k for k in params if k not in res.get("se", {})] + ([] if "aic" in res else ["aic"])
        table.check(case, name, f"JSON keys without se (or no aic), of {len(params)}", 0, len(lacking),
                    float(len(lacking)), 0.0, "abs")


# ----------------------------------------------------------------------------- 2. seeded noise
def noise_setup(name: str, scan: Scan):
    """(truth, judged parameters, draw) for the noisy fits of one model: ``draw(rng)`` adds seeded
    noise to the model's noise-free data and returns the fit."""
    from invivo.kinetics import get_model
    from invivo.kinetics.graphical import plasma_terms

    frames, inp, ref = scan.frames, scan.inp, scan.ref
    if name in PLASMA_TRUTH:
        rates = PLASMA_TRUTH[name]
        y = get_model(name).simulate(frames, inp, vB=VB, **rates)
        m = get_model(name, weights=inverse_variance_weights(y, frames))
        truth = {**rates, "vB": VB, **derived_truth(name, rates)}
        judged = {"1tcm": ("K1", "k2", "VT"), "2tcm": ("VT",), "2tcm-irr": ("K1", "k3", "Ki")}[name]
        sd = pet_noise_sd(y, frames)
        return truth, judged, lambda rng: m.fit(y + sd * rng.standard_normal(y.size), frames, inp)
    if name in ("patlak", "logan"):
        truth = dict(PATLAK_TRUTH if name == "patlak" else LOGAN_TRUTH)
        y = get_model(name).simulate(frames, inp, **truth)
        if name == "patlak":  # inverse variance of the plot's ordinate C / <C_p>
            cp, _, _ = plasma_terms(frames, inp)
            m = get_model(name, tstar_s=GRAPHICAL_TSTAR_S, weights=inverse_variance_weights(y, frames) * cp ** 2)
            judged = ("Ki", "V0")
        else:  # noise in both axes: duration weights; the SE comes from the curve's noise (tac_space_cov)
            m = get_model(name, tstar_s=GRAPHICAL_TSTAR_S)
            judged = ("VT",)
        sd = pet_noise_sd(y, frames)
        return truth, judged, lambda rng: m.fit(y + sd * rng.standard_normal(y.size), frames, inp)
    if name in ("srtm", "logan-ref", "patlak-ref"):
        if name == "srtm":
            truth = dict(SRTM_TRUTH)
            y = get_model(name).simulate(frames, ref, **truth)
            m = get_model(name, weights=inverse_variance_weights(y, frames))
            truth["k2a"] = truth["k2"] / (1 + truth["BPND"])
            judged = ("R1", "k2", "BPND")
        elif name == "logan-ref":
            m0 = get_model(name, k2_ref=REF_RATES["k2"])
            y = m0.simulate(frames, ref, **LOGAN_REF_TRUTH)
            m = get_model(name, k2_ref=REF_RATES["k2"], tstar_s=GRAPHICAL_TSTAR_S)
            truth = dict(LOGAN_REF_TRUTH, BPND=LOGAN_REF_TRUTH["DVR"] - 1)
            judged = ("DVR",)
        else:
            truth = dict(PATLAK_REF_TRUTH)
            y = get_model(name).simulate(frames, ref, **truth)
            m = get_model(name, tstar_s=GRAPHICAL_TSTAR_S, weights=inverse_variance_weights(y, frames) * ref ** 2)
            judged = ("Ki_ref", "intercept")
        sd = pet_noise_sd(y, frames)
        return truth, judged, lambda rng: m.fit(y + sd * rng.standard_normal(y.size), frames, ref)
    if name == "mab-pk":
        m = get_model(name)
        t = np.asarray(MAB_T_H, dtype=np.float64)
        clean = [(t, m.simulate(t, dose_ug=d, **MAB_TRUTH), d) for d in MAB_DOSES_UG]
        ha, hb = mab_half_lives_h(MAB_TRUTH)
        truth = dict(MAB_TRUTH, t_half_alpha_h=ha, t_half_beta_h=hb)

        def draw(rng):
            return m.fit_arms([(tt, c * np.exp(NOISE_SERUM * rng.standard_normal(c.size)), d) for tt, c, d in clean])

        return truth, ("V1_ml", "CL_ml_per_h", "Vmax_ug_per_h", "t_half_beta_h"), draw
    if name == "cart-ck":
        from invivo.kinetics.cart import STEIN_2019_TYPICAL as P

        m = get_model(name)
        t = np.asarray(CART_T_D, dtype=np.float64)
        y = m.simulate(t, **P)
        truth = dict(P, auc_0_28=stein_auc_quad(28.0, P), half_life_alpha_d=math.log(2) / P["alpha_per_d"],
                     half_life_beta_d=math.log(2) / P["beta_per_d"])
        return truth, ("tmax_d", "cmax", "alpha_per_d", "auc_0_28", "half_life_beta_d"), \
            lambda rng: m.fit(t, y * np.exp(NOISE_CELLS * rng.standard_normal(y.size)))
    if name == "cell-trafficking":
        _, t, organs, fixed, truth = _trafficking_setup()
        m = get_model(name, weights="relative")  # the noise is relative: so are the residuals, and the SEs hold

        def draw(rng):
            noisy = {o: v * np.exp(NOISE_ORGANS * rng.standard_normal(v.size)) for o, v in organs.items()}
            return m.fit(t, noisy, fixed=fixed, region="mouse")

        return truth, ("k_blood_lung_per_h", "k_blood_tumour_per_h", "k_blood_spleen_per_h"), draw
    raise _no_truth(name)


def robust_sd(v) -> float:
    """1.4826 x the median absolute deviation: the sd of a normal spread, insensitive to a few wild fits."""
    v = np.asarray(v, dtype=np.float64)
    return 1.4826 * float(np.median(np.abs(v - np.median(v))))


def clipped_sd(v, scale: float, k: float = WILD_SCALES) -> tuple[float, int]:
    """Sample sd of the fits within ``k`` x ``scale`` of their median, and how many were set aside: a
    non-identifiable fit (2TCM with k4 -> 0: VT -> infinity) would otherwise set the sd alone.
    ``scale`` is the larger of the fits' robust sd and their median SE, so that a robust sd that
    comes out small by chance (a few fits) does not set ordinary fits aside."""
    v = np.asarray(v, dtype=np.float64)
    keep = np.abs(v - np.median(v)) <= k * scale if scale > 0 else np.isfinite(v)
    return (float(np.std(v[keep], ddof=1)) if keep.sum() > 1 else math.nan), int(v.size - keep.sum())


def bias_tolerance(name: str, sd_rel: float, n: int) -> float:
    allow = BIAS_ALLOW_LOGAN if name in ("logan", "logan-ref") else BIAS_ALLOW
    return allow + K_SE * MEDIAN_SE * sd_rel / math.sqrt(n)


def se_ratio_tolerance(n: int) -> float:
    return SE_RATIO_ALLOW + K_SD / math.sqrt(2.0 * (n - 1))


def n_fits(name: str, quick: bool) -> int:
    full, q = N_SLOW.get(name, (N_FULL, N_QUICK))
    return q if quick else full


def validate_noise(table: Table, scan: Scan, models, *, quick: bool, seed: int = DEFAULT_SEED) -> None:
    """Part 2: N noisy fits per model; median bias (judged for the main parameters), SE vs spread."""
    case = "2 noise"
    se_judged = {"1tcm", "2tcm", "2tcm-irr", "patlak", "logan", "srtm", "logan-ref", "patlak-ref", "mab-pk", "cart-ck",
                 "cell-trafficking"}
    for k, name in enumerate(models):
        n = n_fits(name, quick)
        why = _model_available(name)
        if why or n < 3:
            table.skip(case, name, "noisy fits", why or f"{n} noisy fits asked for; at least 3 are needed")
            continue
        truth, judged, draw = noise_setup(name, scan)
        rng = np.random.default_rng([seed, k])
        t0 = time.perf_counter()
        fits = [draw(rng) for _ in range(n)]
        per_fit = (time.perf_counter() - t0) / n
        for p, t in truth.items():
            v = np.array([f.params[p] for f in fits], dtype=np.float64)
            se = np.array([f.se.get(p, math.nan) for f in fits], dtype=np.float64)
            med = float(np.median(v))
            finite = np.isfinite(se)
            # the spread behind the median's standard error: the robust sd of the fits, or the fits' own
            # median SE where that is larger (a robust sd of a few fits can come out small by chance)
            rsd = robust_sd(v)
            scale = max(rsd, float(np.median(se[finite])) if finite.any() else 0.0)
            sd_rel = scale / abs(t)
            label = f"{p}: median of {n}"
            if p in judged:
                table.check(case, name, f"{label} [bias]", t, med, _rel(med, t), bias_tolerance(name, sd_rel, n))
            else:
                table.info(case, name, f"{label} (sd {100 * rsd / abs(t):.2g} %)", t, med, _rel(med, t))
            if p not in judged:
                continue
            n_bad = int(np.sum(~finite))
            sd, n_wild = clipped_sd(v, scale)
            ratio = float(np.median(se[finite])) / sd if sd > 0 and finite.any() else math.nan
            err = abs(math.log(ratio)) if ratio > 0 and math.isfinite(ratio) else math.inf
            extra = [f"{n_bad} of {n} SE not finite"] if n_bad else []
            extra += [f"{n_wild} wild fit(s) set aside"] if n_wild else []
            q = f"{p}: median SE / sd of the fits" + (f" ({', '.join(extra)})" if extra else "")
            if name not in se_judged:
                why = "relative noise, residuals in %ID: the SEs of the small organs' rates are not reliable"
                table.info(case, name, q + f": {why}", 1.0, ratio, err, "log")
                continue
            if n < MIN_N_SE_JUDGED:  # the sd of a handful of fits is too uncertain to judge the SE by
                table.info(case, name, q + f": N < {MIN_N_SE_JUDGED}, not judged", 1.0, ratio, err, "log")
                continue
            if n_bad > max(1.0, MAX_SE_MISSING * n):  # a fit without an SE now and then (a parameter at a bound)
                err = math.inf
            table.check(case, name, q, 1.0, ratio, err, se_ratio_tolerance(n), "log")
            if n_bad:
                table.notes.append(f"{case}: {name}: {p}: {n_bad} of {n} fits gave no finite SE (lmfit could not "
                                   "estimate the covariance, e.g. vB at its bound 0)")
        table.notes.append(f"{case}: {name}: {n} fits, {per_fit:.3g} s per fit")


# ----------------------------------------------------------------------------- 3. cross-checks
def validate_stein(table: Table, *, half_lives=(STEIN_HALF_LIFE_ALPHA_D, STEIN_HALF_LIFE_BETA_D),
                   auc_0_28: float = STEIN_AUC_0_28) -> None:
    """The Stein 2019 typical tisagenlecleucel curve: published half-lives and AUC 0-28 d."""
    from invivo.kinetics import get_model
    from invivo.kinetics.cart import STEIN_2019_TYPICAL as P

    case = "3 Stein 2019"
    t = np.asarray(CART_T_D, dtype=np.float64)
    m = get_model("cart-ck")
    fit = m.fit(t, m.simulate(t, **P), region="blood")
    # the published values are given to 3 and 4 significant figures: half a unit of the last digit
    table.check(case, "cart-ck", "half_life_alpha_d (d), published 4.33", half_lives[0],
                fit.params["half_life_alpha_d"], abs(fit.params["half_life_alpha_d"] - half_lives[0]), 0.005, "abs")
    table.check(case, "cart-ck", "half_life_beta_d (d), published 216.6", half_lives[1],
                fit.params["half_life_beta_d"], abs(fit.params["half_life_beta_d"] - half_lives[1]), 0.05, "abs")
    table.rel_check(case, "cart-ck", "auc_0_28 (copies/ug x d), published ~172,000", auc_0_28,
                    fit.params["auc_0_28"], TOL_STEIN_AUC)
    quad_auc = stein_auc_quad(28.0, P)
    table.rel_check(case, "cart-ck", "auc_0_28 vs adaptive quadrature of the curve", quad_auc,
                    fit.params["auc_0_28"], 1e-9)


def validate_reference_region(table: Table, scan: Scan) -> None:
    """SRTM and Logan-ref on a 1TCM reference (K1' = k2' = 0.1) and 2TCM targets with R1 = 1.2 and
    BPND = k3 / k4 = 1.5 (K1 = R1 K1' = 0.12, k2 = R1 k2' = 0.12: the target's VND equals the
    reference's VT, SRTM's assumption)."""
    from invivo.kinetics import get_model

    case = "3 reference region"
    frames, inp, ref = scan.frames, scan.inp, scan.ref
    r1, bp = 1.2, 1.5
    K1, k2 = r1 * REF_RATES["K1"], r1 * REF_RATES["k2"]
    for label, k3, k4 in (("fast exchange k3 3, k4 2", 3.0, 2.0), ("slow exchange k3 0.15, k4 0.1", 0.15, 0.1)):
        target = get_model("2tcm").simulate(frames, inp, vB=0.0, K1=K1, k2=k2, k3=k3, k4=k4)
        fit = get_model("srtm").fit(target, frames, ref, region="target")
        table.rel_check(case, "srtm", f"BPND, 2TCM target, {label}", bp, fit.params["BPND"], TOL_SRTM_BPND)
        if k3 > 1:
            table.rel_check(case, "srtm", f"R1, 2TCM target, {label}", r1, fit.params["R1"], TOL_SRTM_R1_FAST)
        else:  # SRTM lumps free and bound: with slow exchange R1 is biased low (a model property)
            table.info(case, "srtm", f"R1, 2TCM target, {label} (one-tissue bias)", r1, fit.params["R1"],
                       _rel(fit.params["R1"], r1))
        lr = get_model("logan-ref", k2_ref=REF_RATES["k2"]).fit(target, frames, ref, region="target")
        table.rel_check(case, "logan-ref", f"BPND, 2TCM target, {label}", bp, lr.params["BPND"], TOL_SRTM_BPND)
        table.info(case, "logan-ref", f"t* chosen (s), {label}", "-", lr.info["tstar_s"])


def validate_graphical(table: Table, scan: Scan) -> None:
    """Patlak on a 2TCM-irr curve, Logan on a 1TCM curve (automatic t*)."""
    from invivo.kinetics import get_model

    case = "3 graphical"
    frames, inp = scan.frames, scan.inp
    p = PLASMA_TRUTH["2tcm-irr"]
    y = get_model("2tcm-irr").simulate(frames, inp, vB=VB, **p)
    fit = get_model("patlak").fit(y, frames, inp, region="tumour")
    ki = (1 - VB) * derived_truth("2tcm-irr", p)["Ki"]  # the whole voxel's Ki: tissue fraction 1 - vB
    table.rel_check(case, "patlak", f"Ki of a 2TCM-irr curve, (1 - vB) K1 k3 / (k2 + k3), vB {VB:g}", ki,
                    fit.params["Ki"], TOL_PATLAK_KI)
    table.info(case, "patlak", "t* chosen (s)", "-", fit.info["tstar_s"])
    q = PLASMA_TRUTH["1tcm"]
    y = get_model("1tcm").simulate(frames, inp, vB=VB, **q)
    fit = get_model("logan", vB=VB).fit(y, frames, inp, region="tissue")
    table.rel_check(case, "logan", f"VT of a 1TCM curve, K1 / k2 (vB {VB:g} removed)", q["K1"] / q["k2"],
                    fit.params["VT"], TOL_LOGAN_VT)
    table.info(case, "logan", "t* chosen (s)", "-", fit.info["tstar_s"])


def ode_one_tcm(scan: Scan, K1: float, k2: float):
    """The 1TCM ODE dC/dt = K1 C_p(t) - k2 C, solved with scipy's DOP853 (C_p linear between the blood
    samples, as InputFunction defines it).  The running integral of C is a second state, so the frame
    averages need no quadrature.  Returns (frame averages, dense solution)."""
    from scipy.integrate import solve_ivp

    frames = scan.frames
    tk = scan.t_s / 60.0
    cp = scan.cp

    def rhs(t, y):
        return [K1 * np.interp(t, tk, cp) - k2 * y[0], y[0]]

    edges = np.unique(np.concatenate([frames.start_min, frames.end_min]))
    sol = solve_ivp(rhs, (0.0, float(edges[-1])), [0.0, 0.0], method="DOP853", rtol=1e-12, atol=1e-9,
                    max_step=5.0 / 60.0, dense_output=True)
    integral = sol.sol(edges)[1]
    i0 = np.searchsorted(edges, frames.start_min)
    i1 = np.searchsorted(edges, frames.end_min)
    return (integral[i1] - integral[i0]) / (frames.end_min - frames.start_min), sol.sol


def one_tcm_discretisation_bound(scan: Scan, dense, K1: float, k2: float, dt_min: float) -> np.ndarray:
    """A-priori bound (Bq/mL, per frame) on the error of the 1TCM's fine-grid simulation.

    Two terms: (a) the frame average treats the tissue curve as linear between grid points
    (trapezoid rule): at most h^2 / 12 max|C''| over the frame, h the frame's grid step
    (its duration split into ceil(d / dt) equal steps), C'' = K1 C_p' - k2 C' from the ODE
    solution; (b) the input is linear between *grid points*, not between its samples: at a
    sample time off the grid with slope change |ds| the input is misrepresented over one
    step by a triangle of area <= dt^2 |ds| / 8, which reaches C at most K1 times (the
    kernel e^(-k2 t) <= 1), summed over the samples before the frame's end.
    """
    frames = scan.frames
    tk = scan.t_s / 60.0
    cp = scan.cp
    slopes = np.diff(cp) / np.diff(tk)
    end = float(frames.end_min[-1])
    pts, cpp = [], []
    for j in range(tk.size - 1):  # C'' on each input segment (C_p' constant there), every ~1 s
        a, b = tk[j], min(tk[j + 1], end)
        if a >= end:
            break
        t = np.linspace(a, b, max(2, int(math.ceil((b - a) * 60.0)) + 1))
        c = dense(t)[0]
        pts.append(t)
        cpp.append(np.abs(K1 * slopes[j] - k2 * (K1 * np.interp(t, tk, cp) - k2 * c)))
    pts, cpp = np.concatenate(pts), np.concatenate(cpp)
    d = frames.duration_s / 60.0
    h = d / np.ceil(d / dt_min - 1e-9)
    trap = np.array([h[i] ** 2 / 12.0 * cpp[(pts >= frames.start_min[i]) & (pts <= frames.end_min[i])].max()
                     for i in range(len(frames))])
    ds = np.abs(np.diff(slopes))
    knots = K1 * dt_min ** 2 / 8.0 * np.array([ds[tk[1:-1] < frames.end_min[i]].sum() for i in range(len(frames))])
    return trap + knots


def validate_ode(table: Table, scan: Scan) -> None:
    from invivo.kinetics import get_model

    case = "3 ODE"
    q = PLASMA_TRUTH["1tcm"]
    ode, dense = ode_one_tcm(scan, **q)
    m = get_model("1tcm", vB=0.0)
    sim = m.simulate(scan.frames, scan.inp, vB=0.0, **q)
    bound = one_tcm_discretisation_bound(scan, dense, q["K1"], q["k2"], m.dt_min) + 1e-9 * float(np.max(ode))
    ratio = np.abs(sim - ode) / bound
    i = int(np.argmax(ratio))
    table.check(case, "1tcm", f"|simulate - ODE| / discretisation bound, worst frame ({i}), dt {m.dt_min:g} min",
                float(ode[i]), float(sim[i]), float(ratio[i]), 1.0, "")
    err = float(np.max(np.abs(sim - ode)) / np.max(ode))
    table.info(case, "1tcm", "max |simulate - ODE| / max(ODE), 33 frames", 0.0, err, err, "abs")
    fit = m.fit(ode, scan.frames, scan.inp, region="ode")
    for p, t in q.items():
        table.rel_check(case, "1tcm", f"{p} fitted to the ODE curve (vB fixed 0)", t, fit.params[p], TOL_ODE_FIT)


def validate_frame_timing(table: Table, scan: Scan) -> None:
    """Noise-free recovery with a common preclinical framing whose frames (5 s, 10 s, ...) are not
    multiples of the simulation step: the grid must still hold every frame boundary."""
    import invivo
    from invivo.kinetics import Frames, get_model

    case = "3 frame timing"
    frames = Frames.from_durations(ODD_FRAME_DURATIONS_S)
    label = "+".join(f"{n}x{d:g}s" for d, n in _runs(ODD_FRAME_DURATIONS_S))
    for name, truth in (("1tcm", PLASMA_TRUTH["1tcm"]), ("patlak", PATLAK_TRUTH), ("srtm", SRTM_TRUTH)):
        try:
            m = get_model(name)
            if name == "srtm":
                ref = get_model("1tcm").simulate(frames, scan.inp, vB=0.0, **REF_RATES)
                fit = m.fit(m.simulate(frames, ref, **truth), frames, ref, region="tissue")
            elif name == "1tcm":
                fit = m.fit(m.simulate(frames, scan.inp, vB=VB, **truth), frames, scan.inp, region="tissue")
            else:
                fit = m.fit(m.simulate(frames, scan.inp, **truth), frames, scan.inp, region="tissue")
        except invivo.InvivoError as e:
            table.fail(case, f"{name} on frames {label}", f"{name}: {type(e).__name__}: {e}")
            continue
        for p, t in truth.items():
            table.rel_check(case, name, f"{p}, frames {label}", t, fit.params[p], TOL_NOISE_FREE)


def _runs(durations):
    out = []
    for d in durations:
        if out and out[-1][0] == d:
            out[-1][1] += 1
        else:
            out.append([d, 1])
    return [(d, n) for d, n in out]


# ----------------------------------------------------------------------------- 4. maps
def map_truth(scan: Scan, n: int, rng):
    """Random parameters and noise-free curves (n, frames) from each model's own simulator."""
    from invivo.kinetics import get_model
    from invivo.kinetics.reference import DEFAULT_K2A_GRID

    frames, inp, ref = scan.frames, scan.inp, scan.ref
    out = {}
    ki, v0 = rng.uniform(0.002, 0.05, n), rng.uniform(0.1, 0.8, n)
    pat = get_model("patlak")
    out["patlak"] = ({"Ki": ki, "V0": v0},
                     np.stack([pat.simulate(frames, inp, Ki=a, V0=b) for a, b in zip(ki, v0)]))
    vt, icpt = rng.uniform(0.5, 3.0, n), rng.uniform(-15.0, -3.0, n)
    lg = get_model("logan")
    out["logan"] = ({"VT": vt}, np.stack([lg.simulate(frames, inp, VT=a, intercept=b) for a, b in zip(vt, icpt)]))
    k1, k2, k3, vb = (rng.uniform(0.05, 0.6, n), rng.uniform(0.05, 0.5, n), rng.uniform(0.005, 0.1, n),
                      rng.uniform(0.01, 0.1, n))
    one = get_model("1tcm")
    out["1tcm"] = ({"K1": k1, "k2": k2, "VT": k1 / k2, "vB": vb},
                   np.stack([one.simulate(frames, inp, vB=vb[i], K1=k1[i], k2=k2[i]) for i in range(n)]))
    irr = get_model("2tcm-irr")
    out["2tcm-irr"] = ({"K1": k1, "k2": k2, "k3": k3, "Ki": k1 * k3 / (k2 + k3), "vB": vb},
                       np.stack([irr.simulate(frames, inp, vB=vb[i], K1=k1[i], k2=k2[i], k3=k3[i]) for i in range(n)]))
    # SRTM by basis functions is exact when k2a is a node of its grid
    k2a = DEFAULT_K2A_GRID[rng.integers(20, 85, n)]
    r1, bp = rng.uniform(0.7, 1.5, n), rng.uniform(0.2, 3.0, n)
    srtm = get_model("srtm")
    out["srtm"] = ({"R1": r1, "BPND": bp, "k2": k2a * (1 + bp), "k2a": k2a},
                   np.stack([srtm.simulate(frames, ref, R1=r1[i], k2=k2a[i] * (1 + bp[i]), BPND=bp[i])
                             for i in range(n)]))
    return out


def run_map(name: str, data, scan: Scan, *, tstar_s: float):
    from invivo.kinetics.maps import compartment_map, logan_map, patlak_map, srtm_map

    if name == "patlak":
        return patlak_map(data, scan.frames, scan.inp, tstar_s=tstar_s)
    if name == "logan":
        return logan_map(data, scan.frames, scan.inp, tstar_s=tstar_s)
    if name == "srtm":
        return srtm_map(data, scan.frames, scan.ref)
    return compartment_map(data, scan.frames, scan.inp, model=name)


def validate_maps(table: Table, scan: Scan, *, quick: bool, seed: int = DEFAULT_SEED) -> None:
    from invivo.kinetics.maps import MAP_STATUS

    n_vox = int(np.prod(MAP_SHAPE))
    rng = np.random.default_rng([seed, 100])
    clean = map_truth(scan, n_vox, rng)
    case = f"4 maps {'x'.join(map(str, MAP_SHAPE))}"
    for name, (truth, curves) in clean.items():
        data = curves.reshape(*MAP_SHAPE, -1)
        res = run_map(name, data, scan, tstar_s=0.0)
        st = np.asarray(res["status"]).ravel()
        n_ok = int(np.sum(st == MAP_STATUS["ok"]))
        table.check(case, name, "voxels with status ok", n_vox, n_ok, float(n_vox - n_ok), 0.0, "abs")
        exact = name in ("patlak", "logan")
        for p, t in truth.items():
            est = np.asarray(res[p], dtype=np.float64).ravel()
            if p == "vB":
                err = np.abs(est - t)
                i = int(np.argmax(err))
                table.check(case, name, "vB, worst voxel", float(t[i]), float(est[i]), float(err[i]), TOL_MAP_VB_ABS,
                            "abs")
                continue
            err = np.abs(est / t - 1.0)
            i = int(np.argmax(err))
            table.check(case, name, f"{p}, worst voxel", float(t[i]), float(est[i]), float(err[i]),
                        TOL_MAP_EXACT if exact else TOL_MAP_COMPARTMENT)

    # noise: distinct curves, each repeated with independent noise
    n_curves = MAP_CURVES_QUICK if quick else MAP_CURVES_FULL
    reps = MAP_REPLICAS[1] if quick else MAP_REPLICAS[0]
    rng = np.random.default_rng([seed, 101])
    clean = map_truth(scan, n_curves, rng)
    case = f"4 maps noise {n_curves * reps} vox"
    for name, (truth, curves) in clean.items():
        sd = np.stack([pet_noise_sd(c, scan.frames) for c in curves])
        y = np.repeat(curves, reps, axis=0)
        y = y + np.repeat(sd, reps, axis=0) * rng.standard_normal(y.shape)
        t0 = time.perf_counter()
        res = run_map(name, y, scan, tstar_s=GRAPHICAL_TSTAR_S)
        sec = time.perf_counter() - t0
        st = np.asarray(res["status"])
        n_ok = int(np.sum(st == MAP_STATUS["ok"]))
        table.info(case, name, "voxels with status ok", y.shape[0], n_ok)
        table.info(case, name, "voxels / s (one CPU process, float64)", "-", y.shape[0] / sec)
        main = {"patlak": ("Ki",), "logan": ("VT",), "1tcm": ("K1", "VT"), "2tcm-irr": ("Ki",),
                "srtm": ("BPND", "R1")}[name]
        for p in main:
            t = np.repeat(truth[p], reps)
            r = np.asarray(res[p], dtype=np.float64) / t - 1.0
            ok = st == MAP_STATUS["ok"]
            med = float(np.median(r[ok]))
            sd_rel = robust_sd(r[ok])
            tol = bias_tolerance(name, sd_rel, int(ok.sum()))
            table.check(case, name, f"{p}: median relative error (voxel sd {100 * sd_rel:.2g} %)", 0.0, med,
                        abs(med), tol, "abs")


# ----------------------------------------------------------------------------- 5. TAC extraction
def tac_uptake():
    """%ID/g against time (s after injection) for three organs: rising, falling, and rise-then-fall."""
    return {"tumour_core": lambda t: 4.0 * (1.0 - np.exp(-np.asarray(t) / 1200.0)),
            "liver": lambda t: 5.0 + 20.0 * np.exp(-np.asarray(t) / 900.0),
            "kidneys": lambda t: 30.0 * (np.exp(-np.asarray(t) / 1800.0) - np.exp(-np.asarray(t) / 120.0))}


def validate_tac(table: Table) -> None:
    import invivo.roi
    from invivo.synth import mouse_phantom, render_pet

    case = "5 TAC decay"
    ph = mouse_phantom(voxel_size_mm=1.0)
    uptake = tac_uptake()
    masks = {name: ph.mask(name) for name in uptake}
    curves = {}
    for mode in ("START", "ADMIN", "NONE"):
        pet, truth = render_pet(ph, percent_id_per_g=uptake, injected_activity_bq=TAC_A_INJ_BQ, isotope=TAC_ISOTOPE,
                                scan_delay_s=TAC_DELAY_S, frame_starts_s=TAC_FRAMES_S[0],
                                frame_durations_s=TAC_FRAMES_S[1], decay_correction=mode)
        df = invivo.roi.tac(pet, masks)
        t_ok = np.allclose(df["frame_start"].to_numpy(), TAC_DELAY_S + np.asarray(TAC_FRAMES_S[0]), rtol=0,
                           atol=1e-9)
        table.check(case, TAC_ISOTOPE, f"{mode}: frame_start = scan delay + frame start (s)", TAC_DELAY_S,
                    float(df["frame_start"].iloc[0]), 0.0 if t_ok else math.inf, 1e-9, "abs")
        worst = (None, 0.0, 0.0, -1.0)
        for name in uptake:
            # truth: the decay-weighted frame mean of %ID/g (the renderer's), as Bq/mL at the injection
            t = np.asarray(truth["percent_id_per_g"][name], dtype=np.float64) / 100.0 * TAC_A_INJ_BQ
            v = df[name].to_numpy()
            e = np.abs(v / t - 1.0)
            i = int(np.argmax(e))
            if e[i] > worst[3]:
                worst = (f"{name}, frame {i}", float(t[i]), float(v[i]), float(e[i]))
        table.check(case, TAC_ISOTOPE, f"{mode}: injection-corrected curve vs truth (worst: {worst[0]})", worst[1],
                    worst[2], worst[3], TOL_TAC)
        curves[mode] = np.stack([df[n].to_numpy() for n in uptake])
    for mode in ("ADMIN", "NONE"):
        e = float(np.max(np.abs(curves[mode] / curves["START"] - 1.0)))
        table.check(case, TAC_ISOTOPE, f"{mode} vs START, every region and frame", 0.0, e, e, TOL_TAC, "abs")


# ----------------------------------------------------------------------------- main
def _parse(argv):
    p = argparse.ArgumentParser(prog="validate_kinetics.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="20 noisy fits per model (8 for 2tcm, 10 for mab-pk), 2,000-voxel noisy maps (< 60 s)")
    p.add_argument("--seed", type=_report.int_at_least(0), default=DEFAULT_SEED,
                   help=f"noise seed (default {DEFAULT_SEED}); the tolerances hold for any seed with high probability")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Run the validation, print the table, return 0 when no row fails, 1 otherwise."""
    args = _parse(argv)
    import invivo
    from invivo.kinetics import MODELS

    t0 = time.perf_counter()
    table = Table()
    models = list(MODELS)
    timing = {}

    def part(case, fn, *a, **k):
        t = time.perf_counter()
        out = _guarded(table, case, fn, *a, **k)
        timing[case] = timing.get(case, 0.0) + time.perf_counter() - t
        return out

    scan = part("0 scan", make_scan)
    if scan is not None:
        part("1 noise-free", validate_noise_free, table, scan, models)
        with tempfile.TemporaryDirectory(prefix="invivo-validate-kinetics-") as tmp:
            part("1 noise-free CLI", validate_cli, table, scan, Path(tmp))
        part("2 noise", validate_noise, table, scan, models, quick=args.quick, seed=args.seed)
    part("3 Stein 2019", validate_stein, table)
    if scan is not None:
        part("3 reference region", validate_reference_region, table, scan)
        part("3 graphical", validate_graphical, table, scan)
        part("3 ODE", validate_ode, table, scan)
        part("3 frame timing", validate_frame_timing, table, scan)
        part("4 maps", validate_maps, table, scan, quick=args.quick, seed=args.seed)
    part("5 TAC decay", validate_tac, table)
    table.notes.append("seconds per part: " + ", ".join(f"{k} {v:.1f}" for k, v in timing.items()))

    seconds = time.perf_counter() - t0
    print(f"invivo {invivo.__version__} kinetics validation ({'quick' if args.quick else 'full'} run; seed "
          f"{args.seed}; models {', '.join(models)})")
    print(f"scan: Feng 1993 plasma input (x 1000 Bq/mL), whole blood {WB_PLASMA:g} x plasma, "
          f"{len(FRAME_DURATIONS_S)} frames to {sum(FRAME_DURATIONS_S) / 60:g} min; reference region 1TCM "
          f"K1' = k2' = {REF_RATES['k2']:g}; compartment truth vB {VB:g}, delay {DELAY_S:g} s (fitted)")
    print(f"tolerances: 1 every parameter within {TOL_NOISE_FREE:g} relative (also through `invivo kinetics --json`);")
    print(f"  2 noise sd = {NOISE_REL:.0%} x sqrt(C ybar 300 s / d) per PET frame, {NOISE_SERUM:.0%} / "
          f"{NOISE_CELLS:.0%} log-normal for serum / cells; |median bias| <= {BIAS_ALLOW:.0%} ({BIAS_ALLOW_LOGAN:.0%} "
          f"Logan) + {K_SE:g} x 1.2533 sd / sqrt(N)")
    print(f"    (sd: 1.4826 MAD of the fits, or their median SE if larger); |ln(median SE / sd)| <= ln 1.25 + "
          f"{K_SD:g} / sqrt(2 (N - 1)), judged for the main parameters when N >= {MIN_N_SE_JUDGED};")
    print(f"  3 Stein half-lives to the published digits, AUC 0-28 within {TOL_STEIN_AUC:.1%} of 172,000; BPND "
          f"{TOL_SRTM_BPND:.0%}, R1 {TOL_SRTM_R1_FAST:.0%} (fast exchange); Patlak Ki {TOL_PATLAK_KI:.0%}, Logan VT "
          f"{TOL_LOGAN_VT:.0%}; 1TCM vs ODE within its discretisation bound, fit {TOL_ODE_FIT:g};")
    print(f"  4 maps noise-free: Patlak / Logan {TOL_MAP_EXACT:g}, compartment and SRTM {TOL_MAP_COMPARTMENT:g} "
          f"(vB {TOL_MAP_VB_ABS:g} absolute); noisy: median relative error as in 2;  5 TAC {TOL_TAC:g} relative")
    return _report.finish(table, seconds, {"INFO": "info", "SKIP": "skipped"})


if __name__ == "__main__":
    sys.exit(main())
