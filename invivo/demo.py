"""The built-in phantom study behind ``invivo demo``.

A small preclinical immunotherapy study, written as scanner folders (DICOM) with
:mod:`invivo.synth` and run through the whole pipeline (:func:`invivo.study.run`):

* **CAR-T** (3 mice): CAR-T cells labeled with both 89Zr-oxine and SPIO, 5 x 10^6 cells
  i.v.; multi-echo gradient-echo MRI before the cells (``pre``) and PET + MRI at 2, 24, 72
  and 168 h.  The cells move through lungs, liver, spleen and the tumour as the
  :class:`invivo.kinetics.cart.CellTrafficking` model says; 92 % of the tumour's cells
  stay in its 1.5 mm rim (an immune-excluded tumour: core density 0.38x the rim's, which
  the rim-to-core profile recovers); released 89Zr goes to bone and liver.  Iron follows the
  cells, so R2* rises where the cells are.
* **anti-PD-L1** (3 mice) and **anti-PD-L1 + blocking dose** (3 mice): a 89Zr antibody,
  PET + MR at 24, 72 and 144 h and serum samples; tissues follow
  ``C = VT Cp + Ki int Cp`` with the tumour's and spleen's Ki lowered by the blocking dose.

Every mouse is repositioned between sessions (rigid motions up to 10 degrees / 4 mm) and
between the MR and the PET of one session (up to 3 degrees / 2 mm), so the pipeline must
co-register to measure the right voxels.  The demo prints every recovered value beside its
truth with the tolerance it is judged by, and writes the report.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from .errors import InvivoWarning, OutputExistsError

__all__ = ["run_demo", "build_demo_study", "build_cohort", "DemoResult", "CART_CELLS", "PG_FE_PER_CELL", "RELAXIVITY"]

INJECTION = datetime(2026, 3, 2, 9, 30, 0)
CART_CELLS = 5.0e6
CART_ACTIVITY_BQ = 0.5e6  # 0.1 Bq per cell at injection
PG_FE_PER_CELL = 10.0
RELAXIVITY = 60.0  # r2* of cell-internalised SPIO at 7 T, s-1 mM-1
CART_SESSIONS_H = {"pre": -2.0, "h2": 2.0, "d1": 24.0, "d3": 72.0, "d7": 168.0}
MAB_SESSIONS_H = {"d1": 24.0, "d3": 72.0, "d6": 144.0}
MAB_ACTIVITY_BQ = 1.0e6
TUMOUR_RIM_SHARE = 0.92  # fraction of tumour cells in the 1.5 mm rim: core density 0.38x the rim's (immune-excluded)
PET_NOISE = 0.10
MR_SIGMA = 8.0
#: anti-PD-L1 serum (%ID/mL): two exponentials, amplitudes and half-lives (h)
SERUM = ((25.0, 6.0), (15.0, 80.0))
SERUM_SAMPLES_H = (0.083, 0.25, 0.5, 1, 2, 4, 6, 8, 12, 16, 24, 36, 48, 60, 72, 96, 120, 144, 150, 168)
#: (VT mL/g, Ki mL/g/h) per organ of the anti-PD-L1 arm; the blocking dose scales Ki by BLOCK
MAB_TISSUE = {"tumour_rim": (0.10, 0.0040), "tumour_core": (0.10, 0.0040), "spleen": (0.15, 0.0060),
              "liver": (0.15, 0.0020), "kidneys": (0.20, 0.0005), "lungs": (0.15, 0.0003), "bone": (0.05, 0.0002),
              "body": (0.05, 0.0003), "bladder": (0.05, 0.0), "heart": (1.0, 0.0)}
BLOCK = {"tumour_rim": 0.25, "tumour_core": 0.25, "spleen": 0.3}
ROI_LABELS = {"lungs": [2], "heart": [3], "liver": [4], "spleen": [5], "kidneys": [6], "bone": [8],
              "tumour_rim": [9], "tumour_core": [10], "tumour": [9, 10]}
#: Tolerances (relative unless said): ROI means over 10 % voxel noise, R2* fits, cell counts
TOL = {"idg_mean": 0.03, "r2star_mean": 0.05, "dr2star_mean": 0.15, "cells_pet": 0.05, "cells_mri": 0.15,
       "Ki_per_h": 0.05, "specific_fraction": 0.10, "k_blood_tumour_per_h": 0.10, "k_lung_blood_per_h": 0.15,
       "k_blood_spleen_per_h": 0.10, "idg_core_to_rim": 0.10, "dr2star_core_to_rim": 0.10}
#: Rim thickness of the phantom tumour (mm): the [profile] rim of the demo study
RIM_MM = 1.5
FREE_RATES = ["k_blood_lung_per_h", "k_lung_blood_per_h", "k_blood_liver_per_h", "k_blood_spleen_per_h",
              "k_blood_tumour_per_h", "k_blood_other_per_h"]


@dataclass
class DemoResult:
    """Outcome of :func:`run_demo`: the recovered-vs-truth table and where the files went."""

    out_dir: Path
    checks: list = field(default_factory=list)  # dicts: what, truth, recovered, error, tolerance, ok
    study: object = None  # invivo.study.StudyResult
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks) and self.study is not None and self.study.ok

    def table_text(self) -> str:
        head = f"{'check':58s} {'truth':>11s} {'recovered':>11s} {'error':>9s} {'tolerance':>9s}  ok"
        lines = [head, "-" * len(head)]
        for c in self.checks:
            err = f"{100 * c['error']:+8.2f}%" if c["rel"] else f"{c['error']:9.4f}"
            tol = f"{100 * c['tolerance']:8.1f}%" if c["rel"] else f"{c['tolerance']:9.4f}"
            lines.append(f"{c['what'][:58]:58s} {c['truth']:11.5g} {c['recovered']:11.5g} {err} {tol}  "
                         f"{'yes' if c['ok'] else 'NO'}")
        n_bad = sum(not c["ok"] for c in self.checks)
        if self.study is not None:
            for sid, msg in self.study.failures.items():
                lines.append(f"FAILED subject {sid}: {msg}")
        lines.append(f"{'PASSED' if self.passed else 'FAILED'}: {len(self.checks) - n_bad} of {len(self.checks)} "
                     f"recovered values within tolerance; {self.seconds:.1f} s")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- truth
def _serum(t_h):
    t = np.asarray(t_h, dtype=float)
    return sum(a * np.exp2(-t / hl) for a, hl in SERUM)


def _serum_samples():
    t = np.concatenate([[0.0], SERUM_SAMPLES_H])
    return t, _serum(t)


def _serum_integral(t_h) -> np.ndarray:
    """int_0^t of the serum curve linear between its samples (%ID/mL x h): what the pipeline sees."""
    ts, cs = _serum_samples()
    cum = np.concatenate([[0.0], np.cumsum(np.diff(ts) * (cs[1:] + cs[:-1]) / 2)])
    t = np.atleast_1d(np.asarray(t_h, dtype=float))
    i = np.clip(np.searchsorted(ts, t) - 1, 0, len(ts) - 2)  # the segment holding t
    return cum[i] + (t - ts[i]) * (cs[i] + np.interp(t, ts, cs)) / 2


def _mab_idg(organ: str, t_h: float, blocked: bool) -> float:
    vt, ki = MAB_TISSUE[organ]
    if blocked:
        ki *= BLOCK.get(organ, 1.0)
    cp = float(np.interp(t_h, *_serum_samples()))
    return vt * cp + ki * float(_serum_integral(t_h)[0])


def _cart_truth(phantom, t_h: float) -> dict:
    """%ID/g (decay corrected) per phantom organ and cells per organ at ``t_h``."""
    from .kinetics.cart import CellTrafficking, TRAFFICKING_DEMO_RATES_PER_H

    m = CellTrafficking()
    pid = {o: float(v[0]) for o, v in m.simulate([t_h]).items()}
    cell_pid = {o: float(v[0]) for o, v in m.simulate([t_h], cell_bound=True).items()}
    retention = math.exp(-TRAFFICKING_DEMO_RATES_PER_H["k_efflux_per_h"] * t_h)
    vol = {o: phantom.volume_ml(o) for o in ("lungs", "heart", "liver", "spleen", "kidneys", "bladder", "bone",
                                             "tumour_rim", "tumour_core", "body")}
    other_ml = vol["body"] + vol["kidneys"] + vol["bladder"]
    idg = {"lungs": pid["lung"] / vol["lungs"], "liver": pid["liver"] / vol["liver"],
           "spleen": pid["spleen"] / vol["spleen"], "bone": pid["bone"] / vol["bone"],
           "heart": pid["blood"] / vol["heart"],
           "tumour_rim": TUMOUR_RIM_SHARE * pid["tumour"] / vol["tumour_rim"],
           "tumour_core": (1 - TUMOUR_RIM_SHARE) * pid["tumour"] / vol["tumour_core"]}
    for o in ("body", "kidneys", "bladder"):
        idg[o] = pid["other"] / other_ml
    cells_in = {o: cell_pid[k] / 100.0 * CART_CELLS / retention
                for o, k in (("lungs", "lung"), ("liver", "liver"), ("spleen", "spleen"), ("heart", "blood"))}
    tum = cell_pid["tumour"] / 100.0 * CART_CELLS / retention
    cells_in["tumour_rim"], cells_in["tumour_core"] = TUMOUR_RIM_SHARE * tum, (1 - TUMOUR_RIM_SHARE) * tum
    oth = cell_pid["other"] / 100.0 * CART_CELLS / retention
    for o in ("body", "kidneys", "bladder"):
        cells_in[o] = oth * vol[o] / other_ml
    cells_in["bone"] = 0.0
    return {"idg": idg, "cells": cells_in, "volume_ml": vol}


def _r2star_table(cells: dict | None, vol: dict) -> dict:
    from .synth.phantom import DEFAULT_R2STAR_PER_S
    from .synth.spio import fe_mM_from_cells

    r2 = dict(DEFAULT_R2STAR_PER_S)
    if cells:
        for o, n in cells.items():
            r2[o] = r2[o] + RELAXIVITY * fe_mM_from_cells(n / vol[o], PG_FE_PER_CELL)
    return r2


# ----------------------------------------------------------------------------- writing the study
def build_demo_study(folder, *, voxel_size_mm: float = 0.5, seed: int = 0, small: bool = False):
    """Write the demo study (DICOM, ROI labels, serum files and ``study.toml``) under ``folder``.

    Returns
    -------
    study_file : Path
    truth : pandas.DataFrame
        ``subject, session, roi, measure, truth, tolerance, rel`` -- and for the kinetics
        (session ``"-"``) the true parameters.
    """
    import pandas as pd
    from pydicom.uid import generate_uid

    from . import io
    from .synth import mouse_phantom, render_mr, render_pet, write_dicom
    from .synth.displaced import random_rigid
    from .volume import Volume

    folder = Path(folder)
    inputs = folder / "inputs"
    rng = np.random.default_rng(seed)
    phantom = mouse_phantom(voxel_size_mm=voxel_size_mm)
    a0 = phantom.labels.affine
    (inputs / "rois").mkdir(parents=True, exist_ok=True)
    io.save(phantom.labels, inputs / "rois" / "labels.nii.gz", overwrite=True)
    vol_ml = {o: phantom.volume_ml(o) for o in ("lungs", "heart", "liver", "spleen", "kidneys", "bladder", "bone",
                                                "tumour_rim", "tumour_core", "body")}
    truth, scans, subjects, injections = [], [], [], []

    def roi_truth(values: dict, organ_roi: str) -> float:
        labs = ROI_LABELS[organ_roi]
        names = [phantom.names[k] for k in labs]
        w = np.array([vol_ml[n] for n in names])
        return float(np.sum(w * np.array([values[n] for n in names])) / w.sum())

    def add_truth(sid, ses, roi, measure, value):
        truth.append({"subject": sid, "session": ses, "roi": roi, "measure": measure, "truth": float(value),
                      "tolerance": TOL[measure], "rel": True})

    def write(vol, sid, ses, kind, desc, **kw):
        out = inputs / "dicom" / sid / ses / kind
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InvivoWarning)  # the writer notes its rounding of frame times
            write_dicom(vol, out, patient_id=sid, series_description=desc, overwrite=True,
                        seed=int(rng.integers(1 << 30)), **kw)
        scans.append((sid, ses, kind, f"dicom/{sid}/{ses}/{kind}"))

    def motion(max_deg, max_mm):
        return random_rigid(rng, max_rotation_deg=max_deg, max_translation_mm=max_mm)

    n_cart, n_mab = (1, 2) if small else (3, 3)
    r2_pre = _r2star_table(None, vol_ml)
    # --- CAR-T: 89Zr-oxine + SPIO dual-labeled cells -------------------------------------------
    for n in range(n_cart):
        sid = f"cart{n + 1}"
        subjects.append((sid, "CAR-T"))
        injections.append((sid, "89Zr-oxine CAR-T", CART_ACTIVITY_BQ, CART_CELLS, None))
        study_uid = generate_uid()
        for ses, t_h in CART_SESSIONS_H.items():
            m_ses = np.eye(4) if ses == "pre" else motion(10.0, 4.0)
            tr = _cart_truth(phantom, t_h) if t_h > 0 else None
            r2 = _r2star_table(tr["cells"] if tr else None, vol_ml)
            mr, _ = render_mr(phantom, r2star_per_s=r2, noise_sigma=MR_SIGMA, seed=int(rng.integers(1 << 30)))
            mr.meta.series_datetime = INJECTION + timedelta(hours=t_h, minutes=25)
            write(Volume(mr.data, m_ses @ a0, mr.meta), sid, ses, "mge", f"MGE 8 echoes {ses}", enhanced=True,
                  study_uid=study_uid, series_number=10 + len(scans))
            for roi in ("liver", "spleen", "tumour_rim", "tumour_core", "heart", "kidneys"):
                add_truth(sid, ses, roi, "r2star_mean", r2[roi])
            if tr is None:
                continue
            dr2 = {k: r2[k] - r2_pre[k] for k in r2}
            for roi in ("liver", "spleen", "tumour_rim", "tumour_core", "tumour"):
                add_truth(sid, ses, roi, "dr2star_mean", roi_truth(dr2, roi))
            add_truth(sid, ses, "tumour", "dr2star_core_to_rim", dr2["tumour_core"] / dr2["tumour_rim"])
            add_truth(sid, ses, "tumour", "cells_mri", tr["cells"]["tumour_rim"] + tr["cells"]["tumour_core"])
            add_truth(sid, ses, "spleen", "cells_mri", tr["cells"]["spleen"])
            add_truth(sid, ses, "liver", "cells_mri", tr["cells"]["liver"])
            pet, _ = render_pet(phantom, percent_id_per_g=tr["idg"], injected_activity_bq=CART_ACTIVITY_BQ,
                                isotope="89Zr", injection_datetime=INJECTION, scan_delay_s=t_h * 3600.0,
                                frame_starts_s=[0.0], frame_durations_s=[1200.0], noise=PET_NOISE,
                                seed=int(rng.integers(1 << 30)), radiopharmaceutical="89Zr-oxine CAR-T cells",
                                subject_id=sid)
            write(Volume(pet.data, m_ses @ motion(3.0, 2.0) @ a0, pet.meta), sid, ses, "pet", f"PET 89Zr CAR-T {ses}",
                  study_uid=study_uid, series_number=10 + len(scans))
            for roi in ("lungs", "heart", "liver", "spleen", "bone", "tumour_rim", "tumour_core", "tumour"):
                add_truth(sid, ses, roi, "idg_mean", roi_truth(tr["idg"], roi))
            add_truth(sid, ses, "tumour", "idg_core_to_rim", tr["idg"]["tumour_core"] / tr["idg"]["tumour_rim"])
            add_truth(sid, ses, "tumour", "cells_pet", tr["cells"]["tumour_rim"] + tr["cells"]["tumour_core"])
            add_truth(sid, ses, "spleen", "cells_pet", tr["cells"]["spleen"])
            add_truth(sid, ses, "lungs", "cells_pet", tr["cells"]["lungs"])

    from .kinetics.cart import TRAFFICKING_DEMO_RATES_PER_H

    for n in range(n_cart):
        for p in ("k_blood_tumour_per_h", "k_lung_blood_per_h", "k_blood_spleen_per_h"):
            truth.append({"subject": f"cart{n + 1}", "session": "-", "roi": "kinetics", "measure": p,
                          "truth": TRAFFICKING_DEMO_RATES_PER_H[p], "tolerance": TOL[p], "rel": True})

    # --- anti-PD-L1 and blocking --------------------------------------------------------------
    (inputs / "blood").mkdir(exist_ok=True)
    ts, cs = _serum_samples()
    for arm, blocked in (("aPDL1", False), ("aPDL1-block", True)):
        for n in range(n_mab):
            sid = f"{'blk' if blocked else 'pdl'}{n + 1}"
            subjects.append((sid, arm))
            blood = inputs / "blood" / f"sub-{sid}_blood.tsv"
            pd.DataFrame({"time": ts[1:] * 3600.0, "plasma_radioactivity": cs[1:]}).to_csv(blood, sep="\t",
                                                                                           index=False)
            injections.append((sid, "89Zr-anti-PD-L1", MAB_ACTIVITY_BQ, None, f"blood/sub-{sid}_blood.tsv"))
            study_uid = generate_uid()
            for i, (ses, t_h) in enumerate(MAB_SESSIONS_H.items()):
                m_ses = np.eye(4) if i == 0 else motion(10.0, 4.0)
                idg = {o: _mab_idg(o, t_h, blocked) for o in MAB_TISSUE}
                mr, _ = render_mr(phantom, echo_times_s=(0.003, 0.006), noise_sigma=MR_SIGMA,
                                  seed=int(rng.integers(1 << 30)))
                mr.meta.series_datetime = INJECTION + timedelta(hours=t_h, minutes=25)
                write(Volume(mr.data, m_ses @ a0, mr.meta), sid, ses, "mr", f"GRE anatomy {ses}", enhanced=True,
                      study_uid=study_uid, series_number=10 + len(scans))
                pet, _ = render_pet(phantom, percent_id_per_g=idg, injected_activity_bq=MAB_ACTIVITY_BQ,
                                    isotope="89Zr", injection_datetime=INJECTION, scan_delay_s=t_h * 3600.0,
                                    frame_starts_s=[0.0], frame_durations_s=[1200.0], noise=PET_NOISE,
                                    seed=int(rng.integers(1 << 30)), radiopharmaceutical="89Zr-anti-PD-L1",
                                    subject_id=sid)
                write(Volume(pet.data, m_ses @ motion(3.0, 2.0) @ a0, pet.meta), sid, ses, "pet",
                      f"PET 89Zr anti-PD-L1 {ses}", study_uid=study_uid, series_number=10 + len(scans))
                for roi in ("heart", "liver", "spleen", "kidneys", "tumour"):
                    add_truth(sid, ses, roi, "idg_mean", roi_truth(idg, roi))
                add_truth(sid, ses, "tumour", "idg_core_to_rim", idg["tumour_core"] / idg["tumour_rim"])
            ki = MAB_TISSUE["tumour_rim"][1] * (BLOCK["tumour_rim"] if blocked else 1.0)
            truth.append({"subject": sid, "session": "-", "roi": "tumour", "measure": "Ki_per_h", "truth": ki,
                          "tolerance": TOL["Ki_per_h"], "rel": True})
    last = MAB_SESSIONS_H["d6"]
    tot, blk = _mab_idg("tumour_rim", last, False), _mab_idg("tumour_rim", last, True)
    truth.append({"subject": "aPDL1 vs aPDL1-block", "session": "-", "roi": "tumour", "measure": "specific_fraction",
                  "truth": (tot - blk) / tot, "tolerance": TOL["specific_fraction"], "rel": True})

    # --- the study file -------------------------------------------------------------------------
    lines = ['[study]', 'name = "invivo demo: 89Zr CAR-T (+SPIO) and 89Zr anti-PD-L1 with blocking"',
             'root = "inputs"', '']
    for sid, grp in subjects:
        lines += ['[[subject]]', f'id = "{sid}"', f'group = "{grp}"', 'weight_g = 25.0', '']
    for sid, tracer, act, cells, blood in injections:
        lines += ['[[injection]]', f'subject = "{sid}"', f'tracer = "{tracer}"', 'isotope = "89Zr"',
                  f'activity_mbq = {act / 1e6:g}', f'time = {INJECTION.isoformat()}']
        if cells:
            lines.append(f'cells = {cells:g}')
        if blood:
            lines.append(f'blood = "{blood}"')
        lines.append('')
    for sid, ses, kind, path in scans:
        lines += ['[[scan]]', f'subject = "{sid}"', f'session = "{ses}"', f'kind = "{kind}"', f'path = "{path}"', '']
    for name, labs in ROI_LABELS.items():
        lab = labs[0] if len(labs) == 1 else "[" + ", ".join(map(str, labs)) + "]"
        lines += ['[[roi]]', f'name = "{name}"', 'labels = "rois/labels.nii.gz"', f'label = {lab}', '']
    lines += ['[registration]', 'transform = "rigid"', '',
              '[uptake]', 'units = ["idg", "suvbw"]', '',
              '[r2star]', 'pre = "pre"', f'relaxivity = {RELAXIVITY:g}', f'pg_fe_per_cell = {PG_FE_PER_CELL:g}', '',
              '[cells]', f'activity_per_cell_bq = {CART_ACTIVITY_BQ / CART_CELLS:g}',
              f'retention_24h = {math.exp(-24 * TRAFFICKING_DEMO_RATES_PER_H["k_efflux_per_h"]):.10g}',
              'rois = ["tumour", "spleen", "lungs"]', '',
              '[[kinetics]]', 'name = "CAR-T trafficking"', 'model = "cell-trafficking"', 'groups = ["CAR-T"]',
              'organs = { lung = "lungs", liver = "liver", spleen = "spleen", tumour = "tumour", bone = "bone" }',
              'free = [' + ", ".join(f'"{r}"' for r in FREE_RATES) + ']', '',
              '[[kinetics]]', 'name = "anti-PD-L1 tumour Ki"', 'model = "patlak"', 'groups = ["aPDL1", "aPDL1-block"]',
              'roi = "tumour"', '',
              '[[kinetics]]', 'name = "anti-PD-L1 blocking"', 'model = "blocking"', 'roi = "tumour"',
              'total = "aPDL1"', 'blocked = "aPDL1-block"', 'measure = "idg_mean"', '',
              '[profile]', 'roi = "tumour"', f'rim_mm = {RIM_MM:g}', '',
              '[report]', 'title = "invivo demo study"', '']
    study_file = folder / "study.toml"
    study_file.write_text("\n".join(lines))
    return study_file, pd.DataFrame(truth)


def run_demo(out_dir: str | Path = "invivo-demo", *, overwrite: bool = False, voxel_size_mm: float = 0.5,
             progress: bool = False, small: bool = False) -> DemoResult:
    """Write the phantom study as DICOM, run the study pipeline on it, compare with the truth.

    Parameters
    ----------
    out_dir : str or Path
        Created; must be empty or absent unless ``overwrite`` (then it is replaced).
    overwrite : bool
    voxel_size_mm : float
        Phantom voxel size (0.5 mm: a 60 x 48 x 180 grid).
    progress : bool
        Progress lines on stderr.
    small : bool
        One CAR-T mouse and two per anti-PD-L1 arm instead of three (the tests).

    Returns
    -------
    DemoResult
        ``checks`` (one per recovered value: truth, recovered, error, tolerance, ok),
        ``study`` (the :class:`invivo.study.StudyResult`) and ``passed``.
    """
    import pandas as pd

    from .study import run

    t0 = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out} already exists; choose another --out or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if progress:
        import sys

        print("writing the phantom study as DICOM ...", file=sys.stderr, flush=True)
    study_file, truth = build_demo_study(out, voxel_size_mm=voxel_size_mm, small=small)
    img_truth = truth[truth.session != "-"][["subject", "session", "roi", "measure", "truth", "tolerance"]]
    res = run(study_file, out / "results", progress=progress, truth=img_truth)
    result = DemoResult(out_dir=out, study=res)

    def check(what, t, r, tol, rel=True):
        err = (r / t - 1.0) if rel else (r - t)
        ok = bool(np.isfinite(r) and abs(err) <= tol)
        result.checks.append({"what": what, "truth": float(t), "recovered": float(r), "error": float(err),
                              "tolerance": float(tol), "rel": rel, "ok": ok})

    tab = res.table
    for _, row in truth[truth.session != "-"].iterrows():
        sel = tab[(tab.subject == row.subject) & (tab.session == row.session) & (tab.roi == row.roi)
                  & (tab.measure == row.measure)]
        r = float(sel.value.iloc[0]) if len(sel) else float("nan")
        check(f"{row.subject} {row.session} {row.roi} {row.measure}", row.truth, r, row.tolerance)
    kin = res.kinetics
    for _, row in truth[truth.session == "-"].iterrows():
        if row.measure == "specific_fraction":
            sel = kin[(kin.model == "blocking") & (kin.parameter == "specific_fraction")]
        else:
            sel = kin[(kin.subject == row.subject) & (kin.parameter == row.measure)]
        r = float(sel.value.iloc[0]) if len(sel) else float("nan")
        check(f"{row.subject} {row.roi} {row.measure}", row.truth, r, row.tolerance)
    pd.DataFrame(result.checks).to_csv(out / "recovered_vs_truth.tsv", sep="\t", index=False)
    result.seconds = time.perf_counter() - t0
    return result


# ----------------------------------------------------------------------------- cohorts
def build_cohort(folder, n_studies: int, *, subjects_per_study: int = 1, voxel_size_mm: float = 1.0,
                 seed: int = 0) -> list[Path]:
    """Write ``n_studies`` small study files (for cohort runs and their benchmark), each under ``folder/NAME/``.

    Every subject: one session 72 h after a 89Zr anti-PD-L1 antibody, a gradient-echo MR and a PET
    repositioned against it (up to 3 degrees / 2 mm), the phantom's organ labels as ROIs.

    Returns
    -------
    list of Path
        The study files, ``folder/study001/study001.toml`` and so on.
    """
    from pydicom.uid import generate_uid

    from . import io
    from .synth import mouse_phantom, render_mr, render_pet, write_dicom
    from .synth.displaced import random_rigid
    from .volume import Volume

    if not (isinstance(n_studies, int) and n_studies >= 1):
        from .errors import ParameterError

        raise ParameterError(f"n_studies must be a positive integer, got {n_studies!r}")
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    phantom = mouse_phantom(voxel_size_mm=voxel_size_mm)
    a0 = phantom.labels.affine
    t_h = MAB_SESSIONS_H["d3"]
    files = []
    for k in range(n_studies):
        name = f"study{k + 1:03d}"
        root = folder / name
        (root / "inputs").mkdir(parents=True, exist_ok=True)
        io.save(phantom.labels, root / "inputs" / "labels.nii.gz", overwrite=True)
        lines = ['[study]', f'name = "{name}"', 'root = "inputs"', '']
        for j in range(subjects_per_study):
            sid = f"m{j + 1:02d}"
            study_uid = generate_uid()
            idg = {o: _mab_idg(o, t_h, False) for o in MAB_TISSUE}
            mr, _ = render_mr(phantom, echo_times_s=(0.003, 0.006), noise_sigma=MR_SIGMA,
                              seed=int(rng.integers(1 << 30)))
            mr.meta.series_datetime = INJECTION + timedelta(hours=t_h, minutes=25)
            pet, _ = render_pet(phantom, percent_id_per_g=idg, injected_activity_bq=MAB_ACTIVITY_BQ, isotope="89Zr",
                                injection_datetime=INJECTION, scan_delay_s=t_h * 3600.0, frame_starts_s=[0.0],
                                frame_durations_s=[1200.0], noise=PET_NOISE, seed=int(rng.integers(1 << 30)),
                                radiopharmaceutical="89Zr-anti-PD-L1", subject_id=sid)
            motion = random_rigid(rng, max_rotation_deg=3.0, max_translation_mm=2.0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InvivoWarning)
                for kind, vol, desc, num in (("mr", Volume(mr.data, a0, mr.meta), "GRE anatomy", 1),
                                             ("pet", Volume(pet.data, motion @ a0, pet.meta), "PET 89Zr", 2)):
                    write_dicom(vol, root / "inputs" / sid / kind, patient_id=f"{name}-{sid}", series_description=desc,
                                overwrite=True, seed=int(rng.integers(1 << 30)), study_uid=study_uid,
                                series_number=num, **({"enhanced": True} if kind == "mr" else {}))
            lines += ['[[subject]]', f'id = "{sid}"', 'group = "aPDL1"', 'weight_g = 25.0', '',
                      '[[injection]]', f'subject = "{sid}"', 'tracer = "89Zr-anti-PD-L1"', 'isotope = "89Zr"',
                      f'activity_mbq = {MAB_ACTIVITY_BQ / 1e6:g}', f'time = {INJECTION.isoformat()}', '']
            for kind in ("mr", "pet"):
                lines += ['[[scan]]', f'subject = "{sid}"', 'session = "d3"', f'kind = "{kind}"',
                          f'path = "{sid}/{kind}"', '']
        for roi in ("liver", "spleen", "tumour"):
            labs = ROI_LABELS[roi]
            lab = labs[0] if len(labs) == 1 else "[" + ", ".join(map(str, labs)) + "]"
            lines += ['[[roi]]', f'name = "{roi}"', 'labels = "labels.nii.gz"', f'label = {lab}', '']
        lines += ['[uptake]', 'units = ["idg"]', '']
        f = root / f"{name}.toml"
        f.write_text("\n".join(lines))
        files.append(f)
    return files
