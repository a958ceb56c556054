"""A study: subjects x sessions x scans described in a TOML file, and the pipeline over it.

The study file names the subjects and their groups, the injections, the scans of every
session (a DICOM folder or NIfTI file, and which series), the regions of interest, the
registration plan and the analyses.  :func:`load_study` reads and checks it -- every
error names the file and the line -- and :func:`run` (``invivo run STUDY.toml --out DIR``)
goes from the scanner folders to tables, maps and a report::

    ingest -> co-register (PET to MR per session, sessions to the baseline MR)
           -> %ID/g and SUV maps -> R2*, dR2*, iron, labeled cells
           -> ROI statistics per subject x session x ROI -> cells from PET and from MRI
           -> kinetic fits -> tidy tables (TSV, Parquet) -> NIfTI derivatives -> report.html

ROIs are drawn once, in the baseline session's anatomical (MR) space, and carried to each
image through the chained transforms with nearest-neighbour sampling: quantitative images
are measured on their own grid and never interpolated for the ROI statistics.

A study file (paths are relative to ``[study] root``, itself relative to the file)::

    [study]
    name = "89Zr CAR-T, day 0-7"
    root = "dicom"

    [[subject]]
    id = "m01"
    group = "CAR-T"
    weight_g = 23.0                # used when the DICOM has no weight

    [[injection]]
    subject = "m01"
    tracer = "89Zr-oxine CAR-T"
    isotope = "89Zr"
    activity_mbq = 0.5             # optional: overrides the DICOM dose
    residual_mbq = 0.01            # optional: syringe residual
    time = 2026-03-02T09:30:00     # optional: overrides the DICOM injection time
    cells = 5e6                    # labeled cells injected (cells from PET)

    [[scan]]
    subject = "m01"
    session = "d1"
    kind = "pet"                   # pet, spect, mr (anatomical), mge (multi-echo, R2*), ct
    path = "m01/d1/pet"
    series = 0                     # optional: index, SeriesInstanceUID or description

    [[roi]]
    name = "liver"
    labels = "m01_labels.nii.gz"   # a label image in the baseline MR space...
    label = 4
    subject = "m01"                # optional: only this subject
    # or: sphere = [x, y, z] (RAS mm, baseline MR space) with radius_mm = 2
    # or: threshold = 50 (percent of max) within = "tumour" on kind = "pet" (per scan)
    # or: rtstruct = "m01_rt.dcm" with structure = "Tumour"

    [registration]
    transform = "rigid"
    baseline = "d0"                # default: each subject's first session

    [uptake]
    units = ["idg", "suvbw"]

    [r2star]
    pre = "d0"                     # session before the labeled cells: dR2*, iron, cells
    relaxivity = 60.0              # r2*, s-1 mM-1 (or agent = "ferumoxytol" with field_t)
    pg_fe_per_cell = 5.0

    [cells]
    activity_per_cell_bq = 0.05    # 89Zr per cell at labeling
    labeling_hours_before_injection = 2.0
    retention_24h = 0.8

    [[kinetics]]
    model = "cell-trafficking"     # or "patlak", "blocking"
    ...

See ``docs/study.md`` for every key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sys
import time
import tomllib
import traceback
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvivoError, InvivoWarning, OutputExistsError, ParameterError
from .uptake import _ACTIVITY_UNITS, _norm_units

__all__ = ["Study", "ScanDef", "RoiDef", "InjectionDef", "SubjectDef", "load_study", "run", "run_cohort",
           "process_subject", "StudyResult", "SubjectOutcome", "SCAN_KINDS", "MEASURES"]

log = logging.getLogger("invivo.study")

SCAN_KINDS = ("pet", "spect", "mr", "mge", "ct")
_EMISSION = ("pet", "spect")
_ANATOMY_ORDER = ("mr", "mge", "ct")
UPTAKE_UNITS = {"idg": ("%ID/g", "idg"), "idcc": ("%ID/cc", "idcc"), "suvbw": ("SUVbw", "suvbw"),
                "suvlbm": ("SUVlbm", "suvlbm"), "suvbsa": ("SUVbsa", "suvbsa"), "suvibw": ("SUVibw", "suvibw")}
#: What the tidy table's ``measure`` column holds, with units.
MEASURES = {
    "idg_mean": "%ID/g", "idg_max": "%ID/g", "idg_peak": "%ID/g", "idcc_mean": "%ID/cc", "suvbw_mean": "g/mL",
    "suvbw_max": "g/mL", "suvlbm_mean": "g/mL", "suvbsa_mean": "cm2/mL", "suvibw_mean": "g/mL",
    "activity_bq": "Bq", "percent_id": "%ID", "volume_ml": "mL",
    "r2star_mean": "s-1", "dr2star_mean": "s-1", "iron_mM_mean": "mM", "iron_ug": "ug",
    "cells_pet": "cells", "cells_pet_sd": "cells", "cells_pet_min": "cells",
    "cells_mri": "cells", "cells_mri_sd": "cells", "cells_mri_min": "cells",
}
# partial-volume corrected ROI means ([uptake] pv_fwhm_mm)
MEASURES.update({f"{u}_mean_pvc": MEASURES.get(f"{u}_mean", "") for u in UPTAKE_UNITS})
MEASURES["pv_rc"] = "1"
# the tumour's rim and core ([profile]): means of the uptake maps and of dR2*, and the core-to-rim ratio
for _m, _unit in [(u, MEASURES.get(f"{u}_mean", "")) for u in UPTAKE_UNITS] + [("dr2star", "s-1")]:
    MEASURES.update({f"{_m}_rim_mean": _unit, f"{_m}_core_mean": _unit, f"{_m}_core_to_rim": "1"})

_KEYS = {
    "study": {"name", "root", "description", "density_g_per_ml"},
    "subject": {"id", "group", "weight_g", "sex", "species", "strain"},
    "injection": {"subject", "tracer", "isotope", "activity_mbq", "residual_mbq", "residual_time", "time", "cells",
                  "mass_ug", "blood"},
    "scan": {"subject", "session", "kind", "path", "series", "echo", "time_h"},
    "roi": {"name", "subject", "labels", "label", "sphere", "radius_mm", "threshold", "within", "kind", "rtstruct",
            "structure"},
    "registration": {"transform", "baseline", "pet_to_mr", "to_baseline", "seed", "threads"},
    "uptake": {"units", "peak", "pv_fwhm_mm", "pv_rois"},
    "r2star": {"method", "pre", "relaxivity", "agent", "field_t", "pg_fe_per_cell", "mask_rois", "device"},
    "cells": {"activity_per_cell_bq", "labeling_hours_before_injection", "retention_24h", "rois"},
    "kinetics": {"model", "name", "groups", "organs", "free", "roi", "measure", "session", "total", "blocked",
                 "blood", "t_star_h"},
    "report": {"title", "fused_session"},
    "profile": {"roi", "rim_mm", "step_mm"},
}
_TABLES = {"study": False, "subject": True, "injection": True, "scan": True, "roi": True, "registration": False,
           "uptake": False, "r2star": False, "cells": False, "kinetics": True, "report": False,
           "profile": False}


# ============================================================================ the file
class _Lines:
    """Line numbers of TOML headers and keys: ``line(table, index, key)``."""

    def __init__(self, text: str):
        self.at: dict[tuple, int] = {}
        counts: dict[str, int] = {}
        cur: tuple = (None, None)
        for n, raw in enumerate(text.splitlines(), 1):
            s = raw.strip()
            if not s or s.startswith("#"):
                continue
            m = re.match(r"^\[\[\s*([^\]]+?)\s*\]\]", s)
            if m:
                i = counts.get(m[1], 0)
                counts[m[1]] = i + 1
                cur = (m[1], i)
                self.at[(m[1], i, None)] = n
                continue
            m = re.match(r"^\[\s*([^\]]+?)\s*\]", s)
            if m:
                cur = (m[1], None)
                self.at[(m[1], None, None)] = n
                continue
            m = re.match(r'^([A-Za-z0-9_\-]+|"[^"]*")\s*=', s)
            if m:
                self.at.setdefault((cur[0], cur[1], m[1].strip('"')), n)

    def line(self, table, index=None, key=None) -> int | None:
        return self.at.get((table, index, key)) or self.at.get((table, index, None))


class StudyFileError(ParameterError):
    """A study file that cannot be used as written (the message names the file and line)."""


@dataclass
class SubjectDef:
    id: str
    group: str = ""
    weight_g: float | None = None
    sex: str | None = None
    species: str | None = "mouse"
    strain: str | None = None


@dataclass
class InjectionDef:
    subject: str
    tracer: str | None = None
    isotope: str | None = None
    activity_bq: float | None = None
    residual_bq: float | None = None
    residual_time: datetime | None = None
    time: datetime | None = None
    cells: float | None = None
    mass_ug: float | None = None
    blood: Path | None = None


@dataclass
class ScanDef:
    subject: str
    session: str
    kind: str
    path: Path
    series: Any = None
    time_h: float | None = None
    line: int | None = None


@dataclass
class RoiDef:
    name: str
    subject: str | None = None
    labels: Path | None = None
    label: tuple | None = None
    sphere: tuple | None = None
    radius_mm: float | None = None
    threshold: float | None = None
    within: str | None = None
    kind: str = "pet"
    rtstruct: Path | None = None
    structure: str | None = None
    line: int | None = None

    @property
    def source(self) -> str:
        return ("labels" if self.labels is not None else "sphere" if self.sphere is not None
                else "threshold" if self.threshold is not None else "rtstruct")


@dataclass
class Study:
    """A checked study file (:func:`load_study`)."""

    name: str
    path: Path
    root: Path
    subjects: dict[str, SubjectDef]
    injections: dict[str, InjectionDef]
    scans: list[ScanDef]
    rois: list[RoiDef]
    registration: dict
    uptake: dict
    r2star: dict | None
    cells: dict | None
    kinetics: list[dict]
    report: dict
    profile: dict | None = None
    density_g_per_ml: float = 1.0
    text_sha256: str = ""

    def sessions(self, subject: str) -> list[str]:
        """The subject's sessions in the order of the file."""
        out: list[str] = []
        for s in self.scans:
            if s.subject == subject and s.session not in out:
                out.append(s.session)
        return out

    def scans_of(self, subject: str, session: str | None = None) -> list[ScanDef]:
        return [s for s in self.scans if s.subject == subject and (session is None or s.session == session)]

    def baseline(self, subject: str) -> str:
        b = self.registration.get("baseline")
        ses = self.sessions(subject)
        return b if b in ses else ses[0]


def _err(path: Path, line: int | None, msg: str) -> StudyFileError:
    return StudyFileError(f"{path}{f':{line}' if line else ''}: {msg}")


def load_study(path: str | os.PathLike) -> Study:
    """Read and check a study file (TOML).

    Parameters
    ----------
    path : str or Path
        The study file; relative paths in it are relative to ``[study] root`` (default:
        the file's folder).

    Returns
    -------
    Study

    Raises
    ------
    StudyFileError
        With ``file:line`` and what to change: unknown keys or tables, missing keys,
        values of the wrong type or range, references to subjects, sessions or ROIs that
        are not defined, files that do not exist.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise StudyFileError(f"{path}: cannot read the study file ({e.strerror or e}); check the path") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise StudyFileError(f"{path}: not valid TOML: {e}") from None
    lines = _Lines(text)

    def fail(table, index, key, msg):
        where = f"[[{table}]] #{index + 1}" if index is not None else f"[{table}]"
        return _err(path, lines.line(table, index, key), f"{where}{f' {key}' if key else ''}: {msg}")

    for t in doc:
        if t not in _KEYS:
            raise _err(path, lines.line(t), f"unknown table [{t}]; known: {', '.join(sorted(_KEYS))}")
        is_arr = isinstance(doc[t], list)
        if is_arr != _TABLES[t]:
            raise _err(path, lines.line(t), f"[{t}] must be written as {'[[' + t + ']]' if _TABLES[t] else '[' + t + ']'}")
        for i, entry in enumerate(doc[t] if is_arr else [doc[t]]):
            if not isinstance(entry, dict):
                raise _err(path, lines.line(t), f"[{t}] must be a table")
            for k in entry:
                if k not in _KEYS[t]:
                    raise fail(t, i if is_arr else None, k, f"unknown key; known keys: {', '.join(sorted(_KEYS[t]))}")

    def get(table, index, entry, key, kind, *, required=False, default=None, positive=False, choices=None):
        if key not in entry:
            if required:
                raise fail(table, index, None, f"missing key {key!r}")
            return default
        v = entry[key]
        ok = {"str": isinstance(v, str), "num": isinstance(v, (int, float)) and not isinstance(v, bool),
              "int": isinstance(v, int) and not isinstance(v, bool), "bool": isinstance(v, bool),
              "datetime": isinstance(v, datetime), "list": isinstance(v, list), "any": True}[kind]
        if not ok:
            want = {"str": "a string", "num": "a number", "int": "an integer", "bool": "true or false",
                    "datetime": "a TOML date-time (2026-03-02T09:30:00)", "list": "a list", "any": "a value"}[kind]
            raise fail(table, index, key, f"must be {want}, got {v!r}")
        if kind == "num":
            v = float(v)
            if not math.isfinite(v) or (positive and not v > 0):
                raise fail(table, index, key, f"must be a {'positive ' if positive else ''}finite number, got {v!r}")
        if choices is not None and v not in choices:
            raise fail(table, index, key, f"must be one of {', '.join(map(str, choices))}, got {v!r}")
        return v

    st = doc.get("study", {})
    name = get("study", None, st, "name", "str", default=path.stem)
    root = (path.parent / get("study", None, st, "root", "str", default=".")).resolve()
    if not root.is_dir():
        raise fail("study", None, "root", f"folder {root} does not exist")
    density = get("study", None, st, "density_g_per_ml", "num", default=1.0, positive=True)

    def file_of(table, index, entry, key, *, must_exist=True):
        v = get(table, index, entry, key, "str")
        if v is None:
            return None
        p = (root / v).resolve()
        if must_exist and not p.exists():
            raise fail(table, index, key, f"{p} does not exist (paths are relative to [study] root = {root})")
        return p

    subjects: dict[str, SubjectDef] = {}
    for i, e in enumerate(doc.get("subject", [])):
        sid = get("subject", i, e, "id", "str", required=True)
        if not re.fullmatch(r"[A-Za-z0-9]+", sid):
            raise fail("subject", i, "id", f"{sid!r}: use letters and digits only (it becomes the BIDS label sub-{sid})")
        if sid in subjects:
            raise fail("subject", i, "id", f"subject {sid!r} is defined twice")
        subjects[sid] = SubjectDef(sid, get("subject", i, e, "group", "str", default=""),
                                   get("subject", i, e, "weight_g", "num", positive=True),
                                   get("subject", i, e, "sex", "str", choices=("F", "M", "O")),
                                   get("subject", i, e, "species", "str", default="mouse"),
                                   get("subject", i, e, "strain", "str"))
    if not subjects:
        raise _err(path, None, "no [[subject]]: name at least one subject (id, group)")

    def subject_ref(table, i, e, *, required=True):
        s = get(table, i, e, "subject", "str", required=required)
        if s is not None and s not in subjects:
            raise fail(table, i, "subject", f"subject {s!r} is not defined in a [[subject]] (known: {', '.join(subjects)})")
        return s

    injections: dict[str, InjectionDef] = {}
    for i, e in enumerate(doc.get("injection", [])):
        s = subject_ref("injection", i, e)
        if s in injections:
            raise fail("injection", i, "subject", f"a second injection of {s!r}: one injection per subject")
        iso = get("injection", i, e, "isotope", "str")
        if iso is not None:
            from .isotopes import lookup

            try:
                lookup(iso)
            except InvivoError as err:
                raise fail("injection", i, "isotope", str(err)) from None
        mbq = get("injection", i, e, "activity_mbq", "num", positive=True)
        res = get("injection", i, e, "residual_mbq", "num")
        if res is not None and res < 0:
            raise fail("injection", i, "residual_mbq", "must be >= 0")
        injections[s] = InjectionDef(
            s, get("injection", i, e, "tracer", "str"), iso, None if mbq is None else mbq * 1e6,
            None if res is None else res * 1e6, get("injection", i, e, "residual_time", "datetime"),
            get("injection", i, e, "time", "datetime"), get("injection", i, e, "cells", "num", positive=True),
            get("injection", i, e, "mass_ug", "num", positive=True), file_of("injection", i, e, "blood"))

    scans: list[ScanDef] = []
    for i, e in enumerate(doc.get("scan", [])):
        s = subject_ref("scan", i, e)
        ses = get("scan", i, e, "session", "str", required=True)
        if not re.fullmatch(r"[A-Za-z0-9]+", ses):
            raise fail("scan", i, "session", f"{ses!r}: use letters and digits only (it becomes ses-{ses})")
        kind = get("scan", i, e, "kind", "str", required=True, choices=SCAN_KINDS)
        p = file_of("scan", i, e, "path")
        if p is None:
            raise fail("scan", i, None, "missing key 'path'")
        series = get("scan", i, e, "series", "any")
        if series is not None and not isinstance(series, (int, str)):
            raise fail("scan", i, "series", f"must be an index or a text (UID or description), got {series!r}")
        if any(x.subject == s and x.session == ses and x.kind == kind for x in scans):
            raise fail("scan", i, "kind", f"a second {kind} scan in session {ses} of {s}: one per kind and session")
        scans.append(ScanDef(s, ses, kind, p, series, get("scan", i, e, "time_h", "num"), lines.line("scan", i)))
    if not scans:
        raise _err(path, None, "no [[scan]]: list the scans (subject, session, kind, path)")
    for sid in subjects:
        if not any(x.subject == sid for x in scans):
            raise _err(path, lines.line("subject", list(subjects).index(sid)), f"subject {sid!r} has no [[scan]]")

    rois: list[RoiDef] = []
    for i, e in enumerate(doc.get("roi", [])):
        nm = get("roi", i, e, "name", "str", required=True)
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", nm):
            raise fail("roi", i, "name", f"{nm!r}: use letters, digits, '_' and '-'")
        s = subject_ref("roi", i, e, required=False)
        r = RoiDef(nm, s, line=lines.line("roi", i))
        sources = [k for k in ("labels", "sphere", "threshold", "rtstruct") if k in e]
        if len(sources) != 1:
            raise fail("roi", i, None, "give exactly one of labels, sphere, threshold, rtstruct"
                       + (f" (got {', '.join(sources)})" if sources else ""))
        if "labels" in e:
            r.labels = file_of("roi", i, e, "labels")
            lab = get("roi", i, e, "label", "any", required=True)
            labs = lab if isinstance(lab, list) else [lab]
            if not labs or not all(isinstance(x, int) and not isinstance(x, bool) for x in labs):
                raise fail("roi", i, "label", f"must be an integer label or a list of them, got {lab!r}")
            r.label = tuple(labs)
        elif "sphere" in e:
            c = get("roi", i, e, "sphere", "list")
            if len(c) != 3 or not all(isinstance(x, (int, float)) for x in c):
                raise fail("roi", i, "sphere", f"must be the centre [x, y, z] in RAS mm, got {c!r}")
            r.sphere = tuple(float(x) for x in c)
            r.radius_mm = get("roi", i, e, "radius_mm", "num", required=True, positive=True)
        elif "threshold" in e:
            r.threshold = get("roi", i, e, "threshold", "num", positive=True)
            if r.threshold > 100:
                raise fail("roi", i, "threshold", f"percent of the maximum, in (0, 100], got {r.threshold:g}")
            r.within = get("roi", i, e, "within", "str", required=True)
            r.kind = get("roi", i, e, "kind", "str", default="pet", choices=_EMISSION)
        else:
            r.rtstruct = file_of("roi", i, e, "rtstruct")
            r.structure = get("roi", i, e, "structure", "str", required=True)
        if any(x.name == nm and x.subject == s for x in rois):
            raise fail("roi", i, "name", f"ROI {nm!r} is defined twice{f' for {s}' if s else ''}")
        rois.append(r)
    names = {r.name for r in rois}
    for i, r in enumerate(rois):
        if r.within is not None and r.within not in names:
            raise fail("roi", i, "within", f"ROI {r.within!r} is not defined (known: {', '.join(sorted(names))})")

    reg = dict(doc.get("registration", {}))
    get("registration", None, reg, "transform", "str", choices=("rigid", "affine"))
    get("registration", None, reg, "baseline", "str")
    for k in ("pet_to_mr", "to_baseline"):
        get("registration", None, reg, k, "bool")
    get("registration", None, reg, "seed", "int")
    thr = get("registration", None, reg, "threads", "int")
    if thr is not None and thr < 1:
        raise fail("registration", None, "threads", f"must be a positive integer, got {thr}")
    reg.setdefault("transform", "rigid")
    reg.setdefault("pet_to_mr", True)
    reg.setdefault("to_baseline", True)

    upt = dict(doc.get("uptake", {"units": ["idg", "suvbw"]}))
    units = get("uptake", None, upt, "units", "list", default=["idg", "suvbw"])
    for u in units:
        if u not in UPTAKE_UNITS:
            raise fail("uptake", None, "units", f"unknown unit {u!r}; use {', '.join(UPTAKE_UNITS)}")
    upt["units"] = list(units)
    if get("uptake", None, upt, "pv_fwhm_mm", "num", positive=True) is not None:
        for r in get("uptake", None, upt, "pv_rois", "list", default=[]):
            if r not in names:
                raise fail("uptake", None, "pv_rois", f"ROI {r!r} is not defined")

    r2 = doc.get("r2star")
    if r2 is not None:
        r2 = dict(r2)
        from .relax.r2star import METHODS

        get("r2star", None, r2, "method", "str", choices=tuple(METHODS))
        get("r2star", None, r2, "device", "str", choices=("auto", "cpu", "gpu"))
        pre = get("r2star", None, r2, "pre", "str")
        rel = get("r2star", None, r2, "relaxivity", "num", positive=True)
        agent = get("r2star", None, r2, "agent", "str")
        if pre is not None:
            if rel is None and agent is None:
                raise fail("r2star", None, None, "dR2* -> iron needs relaxivity (s-1 mM-1) or agent (+ field_t)")
            if rel is None:
                from .relax.iron import relaxivity as lookup_relaxivity

                try:
                    lookup_relaxivity(agent, get("r2star", None, r2, "field_t", "num", required=True, positive=True))
                except InvivoError as err:
                    raise fail("r2star", None, "agent", str(err)) from None
        get("r2star", None, r2, "pg_fe_per_cell", "num", positive=True)

    cells = doc.get("cells")
    if cells is not None:
        cells = dict(cells)
        get("cells", None, cells, "activity_per_cell_bq", "num", positive=True)
        get("cells", None, cells, "labeling_hours_before_injection", "num", default=0.0)
        rt = get("cells", None, cells, "retention_24h", "num")
        if rt is not None and not 0 < rt <= 1:
            raise fail("cells", None, "retention_24h", f"a fraction in (0, 1], got {rt:g}")

    kin = []
    for i, e in enumerate(doc.get("kinetics", [])):
        e = dict(e)
        model = get("kinetics", i, e, "model", "str", required=True, choices=("cell-trafficking", "patlak", "blocking"))
        groups = get("kinetics", i, e, "groups", "list", default=[])
        known_groups = {s.group for s in subjects.values()}
        for g in groups:
            if g not in known_groups:
                raise fail("kinetics", i, "groups", f"group {g!r} has no subject (groups: {', '.join(sorted(known_groups))})")
        if model == "cell-trafficking":
            organs = get("kinetics", i, e, "organs", "any", required=True)
            if not isinstance(organs, dict):
                raise fail("kinetics", i, "organs", "must be a table {model organ = ROI name}, e.g. "
                           "{ lung = \"lungs\", tumour = \"tumour\" }")
            from .kinetics.cart import CellTrafficking

            for o, rn in organs.items():
                if o not in CellTrafficking.ORGANS:
                    raise fail("kinetics", i, "organs", f"unknown organ {o!r}; the model has {', '.join(CellTrafficking.ORGANS)}")
                if rn not in names:
                    raise fail("kinetics", i, "organs", f"ROI {rn!r} is not defined")
            for r in get("kinetics", i, e, "free", "list", default=[]):
                if r not in CellTrafficking.RATES:
                    raise fail("kinetics", i, "free", f"unknown rate {r!r}; the model has {', '.join(CellTrafficking.RATES)}")
        elif model == "patlak":
            rn = get("kinetics", i, e, "roi", "str", required=True)
            if rn not in names:
                raise fail("kinetics", i, "roi", f"ROI {rn!r} is not defined")
            get("kinetics", i, e, "t_star_h", "num", default=0.0)
        else:
            rn = get("kinetics", i, e, "roi", "str", required=True)
            if rn not in names:
                raise fail("kinetics", i, "roi", f"ROI {rn!r} is not defined")
            for k in ("total", "blocked"):
                g = get("kinetics", i, e, k, "str", required=True)
                if g not in known_groups:
                    raise fail("kinetics", i, k, f"group {g!r} has no subject")
            meas = get("kinetics", i, e, "measure", "str", default="idg_mean")
            if meas not in MEASURES:
                raise fail("kinetics", i, "measure", f"unknown measure {meas!r}")
            e["measure"] = meas
            get("kinetics", i, e, "session", "str")
        e.setdefault("name", f"{model}-{i + 1}")
        e["_line"] = lines.line("kinetics", i)
        kin.append(e)

    prof = doc.get("profile")
    if prof is not None:
        prof = dict(prof)
        rn = get("profile", None, prof, "roi", "str", required=True)
        if rn not in names:
            raise fail("profile", None, "roi", f"ROI {rn!r} is not defined")
        prof["rim_mm"] = get("profile", None, prof, "rim_mm", "num", positive=True, default=1.0)
        get("profile", None, prof, "step_mm", "num", positive=True)

    rep = dict(doc.get("report", {}))
    return Study(name=name, path=path.resolve(), root=root, subjects=subjects, injections=injections, scans=scans,
                 rois=rois, registration=reg, uptake=upt, r2star=r2, cells=cells, kinetics=kin, report=rep, profile=prof,
                 density_g_per_ml=density, text_sha256=hashlib.sha256(text.encode()).hexdigest())


# ============================================================================ the run
@dataclass
class StudyResult:
    """What :func:`run` produced."""

    out_dir: Path
    table: Any  # pandas.DataFrame, the tidy table
    kinetics: Any  # pandas.DataFrame
    registrations: Any  # pandas.DataFrame
    failures: dict[str, str] = field(default_factory=dict)
    report: Path | None = None
    seconds: float = 0.0
    reused: list[str] = field(default_factory=list)
    derivatives: list[Path] = field(default_factory=list)
    profiles: Any = None  # pandas.DataFrame: rim-to-core profiles ([profile]), one row per depth bin

    @property
    def ok(self) -> bool:
        return not self.failures


class _Progress:
    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.done, self.t0 = enabled, total, 0, time.perf_counter()

    def __call__(self, msg: str, *, step: bool = False) -> None:
        if step:
            self.done += 1
        log.info(msg)
        if self.enabled:
            print(f"[{self.done}/{self.total} {time.perf_counter() - self.t0:6.1f} s] {msg}", file=sys.stderr,
                  flush=True)


def _fingerprint_path(p: Path) -> dict:
    """Size, count and latest modification time of a file or a folder's files (cheap change detection)."""
    if p.is_file():
        st = p.stat()
        return {"path": str(p), "bytes": st.st_size, "files": 1, "mtime_ns": st.st_mtime_ns}
    n = size = latest = 0
    for dirpath, _, files in os.walk(p):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            n, size, latest = n + 1, size + st.st_size, max(latest, st.st_mtime_ns)
    return {"path": str(p), "bytes": size, "files": n, "mtime_ns": latest}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Steps:
    """Finished steps of earlier runs: ``done(key, fingerprint, outputs)``, ``mark(...)``."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.reused: list[str] = []

    def _file(self, key: str) -> Path:
        return self.folder / (re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".json")

    def done(self, key: str, fingerprint: str, outputs) -> dict | None:
        f = self._file(key)
        if not f.exists():
            return None
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            return None
        if rec.get("fingerprint") != fingerprint or not all(Path(o).exists() for o in outputs):
            return None
        self.reused.append(key)
        return rec

    def mark(self, key: str, fingerprint: str, outputs, **extra) -> None:
        rec = {"fingerprint": fingerprint, "outputs": [str(o) for o in outputs], **extra}
        _atomic(self._file(key), lambda tmp: Path(tmp).write_text(json.dumps(rec, indent=1, default=str)))


def _atomic(path: Path, writer) -> None:
    from .io.nifti import atomic_write

    atomic_write({Path(path): writer}, overwrite=True)


def _version() -> str:
    from . import __version__

    return __version__


def _check_modality(vol, sc: ScanDef) -> None:
    want = {"pet": ("PT",), "spect": ("NM", "ST"), "mr": ("MR",), "mge": ("MR",), "ct": ("CT",)}[sc.kind]
    mod = (vol.meta.modality or "").upper()
    if mod and mod not in want and mod != "OT":
        raise ParameterError(f"{sc.path}: scan of kind {sc.kind!r} (study file line {sc.line}) holds a {mod} series: "
                             f"fix 'kind' or 'series'")
    if sc.kind == "mge":
        te = vol.meta.echo_times_s
        if vol.data.ndim != 4 or te is None or len(te) < 2:
            raise ParameterError(f"{sc.path}: kind 'mge' (study file line {sc.line}) needs a multi-echo series with "
                                 "echo times; this one has " + (f"{len(te)} echo" if te else "no echo times"))


def _apply_injection(vol, inj: InjectionDef | None, subj: SubjectDef, notes: list[str]):
    """The study file's injection and subject records, where given, override the DICOM header."""
    import copy

    from .isotopes import lookup
    from .volume import Subject, Tracer

    meta = copy.deepcopy(vol.meta)
    tr = meta.tracer or Tracer()
    changed = False
    if inj is not None:
        if inj.isotope is not None:
            iso = lookup(inj.isotope)
            if tr.isotope is not None and lookup(tr.isotope).name != iso.name:
                raise ParameterError(f"{subj.id}: the study file says {iso.name} but the DICOM says {tr.isotope}: "
                                     "fix the [[injection]] isotope")
            tr.isotope, tr.half_life_s = iso.name, tr.half_life_s or iso.half_life_s
        if inj.tracer is not None and not tr.radiopharmaceutical:
            tr.radiopharmaceutical = inj.tracer
        if inj.time is not None and inj.time != tr.injection_datetime:
            notes.append(f"injection time {inj.time} from the study file (DICOM: {tr.injection_datetime})")
            tr.injection_datetime, changed = inj.time, True
        if inj.activity_bq is not None and inj.activity_bq != tr.injected_activity_bq:
            notes.append(f"injected activity {inj.activity_bq / 1e6:.4g} MBq from the study file "
                         f"(DICOM: {tr.injected_activity_bq})")
            tr.injected_activity_bq, changed = inj.activity_bq, True
        if inj.residual_bq:
            # invivo.uptake nets the residual out (decayed from its own measurement time)
            notes.append(f"syringe residual {inj.residual_bq / 1e6:.4g} MBq from the study file "
                         f"(DICOM: {tr.residual_activity_bq})")
            tr.residual_activity_bq = inj.residual_bq
            tr.residual_datetime = inj.residual_time or tr.residual_datetime or tr.injection_datetime
            changed = True
    meta.tracer = tr
    sub = meta.subject or Subject()
    if subj.weight_g is not None and sub.weight_kg is None:
        sub.weight_kg = subj.weight_g / 1000.0
        notes.append(f"body weight {subj.weight_g:g} g from the study file")
        changed = True
    if sub.sex is None and subj.sex:
        sub.sex = subj.sex
    sub.id = sub.id or subj.id
    meta.subject = sub
    if changed:  # derived factors from the header no longer hold: recompute from the tracer record
        meta.reference_activity_bq = None
        meta.suv_bw_factor = None
    return type(vol)(vol.data, vol.affine, meta)


def _anatomy(vol):
    """A 3D anatomical image for registration: echo/frame mean of a 4D MR."""
    from .volume import Volume

    if vol.data.ndim == 4:
        return Volume(np.asarray(vol.data, dtype=np.float32)[..., : max(1, vol.data.shape[3] // 2)].mean(axis=3),
                      vol.affine, vol.meta)
    return vol


def _hours_after_injection(vol) -> float | None:
    tr = vol.meta.tracer
    when = vol.meta.series_datetime or vol.meta.acquisition_datetime
    if tr is None or tr.injection_datetime is None or when is None:
        return None
    return (when - tr.injection_datetime).total_seconds() / 3600.0


class _Subject:
    """Everything the pipeline holds for one subject."""

    def __init__(self, study: Study, sid: str, out: Path, steps: _Steps, progress: _Progress):
        self.study, self.sid, self.out, self.steps, self.progress = study, sid, out, steps, progress
        self.subj = study.subjects[sid]
        self.inj = study.injections.get(sid)
        self.sessions = study.sessions(sid)
        self.baseline = study.baseline(sid)
        self.vols: dict[tuple[str, str], Any] = {}
        self.notes: list[str] = []
        self.to_session: dict[str, Any] = {}  # baseline anatomy -> session anatomy
        self.to_emission: dict[tuple[str, str], Any] = {}  # session anatomy -> PET/SPECT
        self.reg_rows: list[dict] = []
        self.rows: list[dict] = []
        self.profile_rows: list[dict] = []
        self.outputs: list[Path] = []
        self.maps: dict[str, Any] = {}
        self.time_h: dict[str, float] = {}

    # ----------------------------------------------------------------- paths
    def deriv(self, ses: str, dtype: str, suffix: str, ext: str = ".nii.gz") -> Path:
        d = self.out / "derivatives" / "invivo" / f"sub-{self.sid}" / f"ses-{ses}" / dtype
        d.mkdir(parents=True, exist_ok=True)
        return d / f"sub-{self.sid}_ses-{ses}_{suffix}{ext}"

    # ----------------------------------------------------------------- ingest
    def load(self):
        from . import io

        for sc in self.study.scans_of(self.sid):
            self.progress(f"{self.sid} ses-{sc.session}: load {sc.kind} {sc.path.name}")
            vol = io.load(sc.path, series=sc.series)
            _check_modality(vol, sc)
            if sc.kind in _EMISSION:
                vol = _apply_injection(vol, self.inj, self.subj, self.notes)
            self.vols[(sc.session, sc.kind)] = (vol, sc)
        for ses in self.sessions:
            t = next((sc.time_h for sc in self.study.scans_of(self.sid, ses) if sc.time_h is not None), None)
            if t is None:
                for k in _EMISSION:
                    if (ses, k) in self.vols:
                        t = _hours_after_injection(self.vols[(ses, k)][0])
                        break
            if t is None and self.inj is not None and self.inj.time is not None:
                for k in _ANATOMY_ORDER:
                    if (ses, k) in self.vols:
                        v = self.vols[(ses, k)][0]
                        when = v.meta.series_datetime or v.meta.acquisition_datetime
                        if when is not None:
                            t = (when - self.inj.time).total_seconds() / 3600.0
                            break
            self.time_h[ses] = float("nan") if t is None else float(t)

    def anatomy_kind(self, ses: str) -> str | None:
        return next((k for k in _ANATOMY_ORDER if (ses, k) in self.vols), None)

    # ----------------------------------------------------------------- registration
    def _register(self, key: str, fixed_kind, fixed_ses, moving_kind, moving_ses, out_tfm: Path, what: str):
        from .align import read_transform, register

        reg_cfg = self.study.registration
        fsc, msc = self.vols[(fixed_ses, fixed_kind)][1], self.vols[(moving_ses, moving_kind)][1]
        fp = _digest({"fixed": _fingerprint_path(fsc.path), "fseries": fsc.series, "moving": _fingerprint_path(msc.path),
                      "mseries": msc.series, "transform": reg_cfg["transform"], "seed": reg_cfg.get("seed", 0),
                      "threads": reg_cfg.get("threads", 1), "version": _version()})
        rec = self.steps.done(key, fp, [out_tfm])
        if rec is not None:
            self.progress(f"{self.sid}: {what} (reused {out_tfm.name})")
            t = read_transform(out_tfm)
            self.reg_rows.append({**rec["row"], "reused": True})
            return t
        self.progress(f"{self.sid}: {what}")
        fixed = _anatomy(self.vols[(fixed_ses, fixed_kind)][0])
        moving = _anatomy(self.vols[(moving_ses, moving_kind)][0])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InvivoWarning)
            # one thread by default: the metric's partial sums then add up in a fixed order and a study's numbers
            # repeat exactly, run after run and on any number of cluster workers
            reg = register(fixed, moving, transform=reg_cfg["transform"], seed=reg_cfg.get("seed", 0),
                           threads=reg_cfg.get("threads", 1))
        for w in caught:
            self.notes.append(f"{what}: {w.message}")
        reg.transform.write(out_tfm, overwrite=True)
        self.outputs.append(out_tfm)
        row = {"subject": self.sid, "what": what, "fixed": f"ses-{fixed_ses} {fixed_kind}",
               "moving": f"ses-{moving_ses} {moving_kind}", "rotation_deg": reg.transform.rotation_deg(),
               "translation_mm": float(np.linalg.norm(reg.transform.matrix[:3, 3])), "metric": reg.metric,
               "quality": reg.quality, "seconds": reg.elapsed_s, "transform": str(out_tfm)}
        self.reg_rows.append({**row, "reused": False})
        self.steps.mark(key, fp, [out_tfm], row=row)
        return reg.transform

    def register(self):
        from .align import Transform

        cfg = self.study.registration
        base_kind = self.anatomy_kind(self.baseline)
        for ses in self.sessions:
            kind = self.anatomy_kind(ses)
            if ses == self.baseline or kind is None or base_kind is None or not cfg["to_baseline"]:
                self.to_session[ses] = Transform.identity()
                continue
            self.to_session[ses] = self._register(
                f"{self.sid}_{ses}_to_baseline", base_kind, self.baseline, kind, ses,
                self.deriv(ses, "xfm", f"from-baseline_to-{kind}_mode-image_xfm", ".tfm"),
                f"ses-{ses} {kind} -> ses-{self.baseline} {base_kind}")
        for ses in self.sessions:
            kind = self.anatomy_kind(ses)
            for em in _EMISSION:
                if (ses, em) not in self.vols:
                    continue
                if kind is None:
                    # no anatomy in this session: straight to the baseline's
                    if base_kind is None:
                        self.to_emission[(ses, em)] = Transform.identity()
                        continue
                    self.to_session[ses] = Transform.identity()
                    t = self._register(f"{self.sid}_{ses}_{em}_to_baseline", base_kind, self.baseline, em, ses,
                                       self.deriv(ses, "xfm", f"from-baseline_to-{em}_mode-image_xfm", ".tfm"),
                                       f"ses-{ses} {em} -> ses-{self.baseline} {base_kind}")
                elif cfg["pet_to_mr"]:
                    t = self._register(f"{self.sid}_{ses}_{em}_to_{kind}", kind, ses, em, ses,
                                       self.deriv(ses, "xfm", f"from-{kind}_to-{em}_mode-image_xfm", ".tfm"),
                                       f"ses-{ses} {em} -> {kind}")
                else:
                    t = Transform.identity()
                self.to_emission[(ses, em)] = t

    def baseline_to(self, ses: str, kind: str):
        """The transform from baseline anatomy points to points of the image ``(ses, kind)``."""
        t = self.to_session.get(ses)
        if kind in _EMISSION:
            return self.to_emission[(ses, kind)] @ t
        return t

    # ----------------------------------------------------------------- ROIs
    def base_masks(self) -> dict[str, Any]:
        """The subject's label, sphere and RTSTRUCT ROIs as boolean Volumes in baseline space (built once)."""
        if "base_masks" in self.maps:
            return self.maps["base_masks"]
        from . import io
        from .volume import Volume

        base_kind = self.anatomy_kind(self.baseline)
        base = self.vols[(self.baseline, base_kind)][0] if base_kind else None
        labels: dict[Path, Any] = {}
        out: dict[str, Any] = {}
        for r in self.study.rois:
            if r.subject not in (None, self.sid) or r.threshold is not None:
                continue
            if r.labels is not None:
                if r.labels not in labels:
                    labels[r.labels] = io.load(r.labels)
                lab = labels[r.labels]
                out[r.name] = Volume(np.isin(np.asarray(lab.data), r.label), lab.affine)
                continue
            if base is None:
                raise ParameterError(f"ROI {r.name!r} (study file line {r.line}): a sphere or RTSTRUCT ROI is drawn on "
                                     f"the baseline MR, and {self.sid} has no MR or CT in ses-{self.baseline}")
            if r.sphere is not None:
                ijk = np.indices(base.spatial_shape).reshape(3, -1).T
                xyz = ijk @ base.affine[:3, :3].T + base.affine[:3, 3]
                inside = np.linalg.norm(xyz - np.asarray(r.sphere), axis=1) <= r.radius_mm
                out[r.name] = Volume(inside.reshape(base.spatial_shape), base.affine)
            else:
                structs = io.load_rtstruct(r.rtstruct, base)
                if r.structure not in structs:
                    raise ParameterError(f"{r.rtstruct}: no structure {r.structure!r} (has {', '.join(structs)}); "
                                         f"fix the [[roi]] structure on line {r.line}")
                out[r.name] = structs[r.structure]
        self.maps["base_masks"] = out
        return out

    def rois_on(self, ses: str, kind: str, image=None) -> dict[str, Any]:
        """Boolean ROI Volumes on the grid of image ``(ses, kind)``: the baseline-space ROIs carried through the
        chained transforms (nearest neighbour), then the threshold ROIs on the image itself."""
        from .align import resample
        from .roi import threshold_mask
        from .volume import Volume

        vol = image if image is not None else self.vols[(ses, kind)][0]
        has_anatomy = self.anatomy_kind(self.baseline) is not None
        out: dict[str, Any] = {}
        for name, m in self.base_masks().items():
            if has_anatomy:
                m = resample(Volume(np.asarray(m.data).astype(np.uint8), m.affine), vol,
                             self.baseline_to(ses, kind).inverse(), interpolation="nearest")
            elif not m.same_grid(vol):
                raise ParameterError(f"ROI {name!r}: {self.sid} has no baseline MR or CT to carry it to the {kind} "
                                     f"of ses-{ses}, and its grid is not that image's")
            out[name] = Volume(np.asarray(m.data).astype(bool), vol.affine)
        for r in self.study.rois:
            if r.threshold is None or r.subject not in (None, self.sid) or r.kind != kind:
                continue
            out[r.name] = threshold_mask(vol if vol.data.ndim == 3 else vol.frame(vol.data.shape[3] - 1),
                                         out[r.within], percent_of_max=r.threshold)
        return out

    # ----------------------------------------------------------------- measures
    def add(self, ses, modality, roi, measure, value, *, sd=None, n_voxels=None, volume_ml=None):
        self.rows.append({"subject": self.sid, "group": self.subj.group, "session": ses, "time_h": self.time_h[ses],
                          "modality": modality, "roi": roi, "measure": measure, "value": float(value),
                          "unit": MEASURES.get(measure, ""), "sd": None if sd is None else float(sd),
                          "n_voxels": n_voxels, "volume_ml": volume_ml})

    def uptake(self):
        from . import io, roi, uptake
        from .kinetics.cart import LabelRetention, cells_from_activity

        units = self.study.uptake["units"]
        cells_cfg = self.study.cells
        pv = None
        if self.study.uptake.get("pv_fwhm_mm"):
            # spheres: compact ROIs (tumours, lymph nodes) lose activity in all three directions
            pv = roi.RecoveryCorrection.analytic(float(self.study.uptake["pv_fwhm_mm"]), geometry="sphere",
                                                 clamp_above=True)
            pv_rois = self.study.uptake.get("pv_rois") or None
        for ses in self.sessions:
            for em in _EMISSION:
                if (ses, em) not in self.vols:
                    continue
                vol, sc = self.vols[(ses, em)]
                if vol.data.ndim == 4:
                    vol = vol.frame(vol.data.shape[3] - 1)
                masks = self.rois_on(ses, em, vol)
                maps = {}
                for u in units:
                    label, suffix = UPTAKE_UNITS[u]
                    self.progress(f"{self.sid} ses-{ses}: {label} map")
                    if u in ("idg", "idcc"):
                        mp = uptake.percent_id(vol, per=u[-1] if u == "idg" else "cc",
                                               density_g_per_ml=self.study.density_g_per_ml)
                    else:
                        mp = uptake.suv(vol, kind=u[3:])
                    path = self.deriv(ses, em, suffix)
                    io.save(mp, path, overwrite=True, inputs=[sc.path],
                            parameters={"unit": label, "study": self.study.name, "notes": self.notes})
                    self.outputs.append(path)
                    maps[u] = mp
                self.maps[(ses, em)] = maps
                self.maps[(ses, em, "masks")] = masks
                bq_factor = _ACTIVITY_UNITS.get(_norm_units(vol.meta.units))
                if bq_factor is None:
                    self.notes.append(f"ses-{ses} {em}: stored in {vol.meta.units!r}, not an activity concentration: "
                                      "no ROI activity and no cells from PET")
                for name, m in masks.items():
                    if not np.asarray(m.data).any():
                        self.notes.append(f"ses-{ses} {em}: ROI {name} is empty on this image")
                        continue
                    rc = None  # the ROI's recovery coefficient, one per ROI and image
                    if pv is not None and (pv_rois is None or name in pv_rois):
                        try:
                            rc = pv.rc(roi.equivalent_diameter_mm(m, geometry="sphere"))
                        except InvivoError as err:
                            self.notes.append(f"ses-{ses} {em} {name}: no partial-volume correction: {err}")
                        else:
                            self.add(ses, em, name, "pv_rc", rc)
                    for u, mp in maps.items():
                        s = roi.stats(mp, m)
                        self.add(ses, em, name, f"{u}_mean", s["mean"], sd=s["sd"], n_voxels=s["n_voxels"],
                                 volume_ml=s["volume_ml"])
                        if u in ("idg", "suvbw"):
                            self.add(ses, em, name, f"{u}_max", s["max"])
                        if u == "idg":
                            self.add(ses, em, name, "idg_peak", s["peak"])
                            self.add(ses, em, name, "percent_id", s["mean"] * s["volume_ml"] * self.study.density_g_per_ml)
                        if rc is not None:
                            self.add(ses, em, name, f"{u}_mean_pvc", s["mean"] / rc)
                    if bq_factor is None:
                        continue
                    sa = roi.stats(vol, m)
                    act = float(sa["mean"]) * bq_factor * sa["volume_ml"]
                    self.add(ses, em, name, "activity_bq", act, volume_ml=sa["volume_ml"], n_voxels=sa["n_voxels"])
                    if (cells_cfg is not None and self.inj is not None and self.inj.cells
                            and (not cells_cfg.get("rois") or name in cells_cfg["rois"])):
                        hrs = self.time_h[ses] + float(cells_cfg.get("labeling_hours_before_injection", 0.0))
                        ret = LabelRetention(float(cells_cfg["retention_24h"])) if "retention_24h" in cells_cfg \
                            else None
                        dc = (vol.meta.decay_correction or "").upper()
                        # activity at the scan start (START) is what the cells hold then
                        a_now = act if dc in ("START", "NONE") else act * 2.0 ** (-self.time_h[ses] * 3600.0
                                                                                  / vol.meta.tracer.half_life_s)
                        per_cell = float(cells_cfg.get("activity_per_cell_bq")
                                         or vol.meta.tracer.injected_activity_bq / self.inj.cells)
                        n = cells_from_activity(a_now, activity_per_cell_bq_at_labeling=per_cell,
                                                hours_since_labeling=hrs, retention=ret,
                                                isotope=vol.meta.tracer.isotope or "89Zr")
                        # uncertainty: the ROI mean's standard error (voxel SD / sqrt(n)) and the detection
                        # limit: 3 SD of the ROI total from voxel noise
                        rel_se = (sa["sd"] / math.sqrt(max(sa["n_voxels"], 1))) / sa["mean"] if sa["mean"] else float("nan")
                        self.add(ses, em, name, "cells_pet", float(n))
                        self.add(ses, em, name, "cells_pet_sd", abs(float(n) * rel_se))
                        self.add(ses, em, name, "cells_pet_min", 3.0 * abs(float(n) * rel_se))

    def r2star(self):
        from . import io, roi
        from .align import resample
        from .backend import to_device
        from .relax import R2StarModel
        from .relax.r2star import STATUS
        from .volume import Volume
        from .relax.iron import cell_count, delta_r2star, iron_concentration, iron_mass_ug, r2star_sd_from_noise

        cfg = self.study.r2star
        if cfg is None:
            return
        fits = {}
        for ses in self.sessions:
            if (ses, "mge") not in self.vols:
                continue
            vol, sc = self.vols[(ses, "mge")]
            path = self.deriv(ses, "anat", "R2starmap")
            fp = _digest({"scan": _fingerprint_path(sc.path), "series": sc.series, "method": cfg.get("method"),
                          "version": _version()})
            key = f"{self.sid}_{ses}_r2star"
            sig_path = self.deriv(ses, "anat", "R2starsd")
            st_path = self.deriv(ses, "anat", "R2starstatus")
            rec = self.steps.done(key, fp, [path, sig_path, st_path])
            if rec is not None:
                self.progress(f"{self.sid} ses-{ses}: R2* map (reused)")
                r2 = io.load(path)
                sd = io.load(sig_path)
                status = io.load(st_path)
            else:
                self.progress(f"{self.sid} ses-{ses}: R2* fit of {int(np.prod(vol.spatial_shape))} voxels")
                model = R2StarModel(vol.meta.echo_times_s, **({"method": cfg["method"]} if cfg.get("method") else {}))
                # on a GPU when there is one (a cluster's GPU workers each use their own), else NumPy
                fit = model.fit(vol.to_device("gpu") if self._r2star_on_gpu() else vol)
                r2 = fit.volume("r2star").to_device("cpu")
                from .volume import Meta

                s0_h, r2_h = to_device(fit.s0, "cpu"), to_device(fit.r2star, "cpu")
                failed_h = to_device(fit.failed, "cpu")
                if fit.sigma is None:  # no background to estimate the noise from: no SDs, said so
                    sd_data = np.full(vol.spatial_shape, np.nan, dtype=np.float32)
                    self.notes.append(f"ses-{ses}: no noise estimate for the R2* fit: no R2* SD map, no cell SDs")
                else:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        sd_data = np.asarray(r2star_sd_from_noise(s0_h, vol.meta.echo_times_s, r2_h,
                                                                  float(fit.sigma)), dtype=np.float32)
                    sd_data[~np.isfinite(sd_data) | failed_h] = np.nan  # no fit, no SD
                sd = Volume(sd_data, vol.affine, Meta(modality="MR", units="s-1",
                                                      series_description="R2* SD from noise (Cramer-Rao)"))
                status = fit.volume("status").to_device("cpu")
                io.save(r2, path, overwrite=True, inputs=[sc.path], parameters={"method": model.method})
                io.save(sd, sig_path, overwrite=True, inputs=[sc.path], parameters={"method": model.method,
                                                                                   "sigma": fit.sigma})
                io.save(status, st_path, overwrite=True, inputs=[sc.path],
                        parameters={"method": model.method, "status_codes": dict(STATUS)})
                self.steps.mark(key, fp, [path, sig_path, st_path])
            self.outputs += [path, sig_path, st_path]
            # voxels with an R2* value (ok or not converged); the others (saturated: R2* beyond what TE1 can
            # measure, noise floor, outside the body) hold 0 and are left out of every ROI statistic
            fitted = Volume(np.isin(np.asarray(status.data), (STATUS["ok"], STATUS["not_converged"])), r2.affine)
            fits[ses] = (r2, sd, fitted)
            masks = self.rois_on(ses, "mge", vol)
            self.maps[(ses, "r2star")] = r2
            for name, m in masks.items():
                mf = self._fitted_part(ses, name, m, fitted)
                if mf is not None:
                    s = roi.stats(r2, mf)
                    self.add(ses, "MR", name, "r2star_mean", s["mean"], sd=s["sd"], n_voxels=s["n_voxels"],
                             volume_ml=s["volume_ml"])
        pre = cfg.get("pre")
        if pre is None or pre not in fits:
            if pre is not None:
                self.notes.append(f"no mge scan in the pre session {pre!r}: no dR2*")
            return
        rel = cfg.get("relaxivity")
        if rel is None:
            from .relax.iron import relaxivity as lookup_relaxivity

            rel = lookup_relaxivity(cfg["agent"], cfg["field_t"])
        pre_r2, pre_sd, pre_fit = fits[pre]
        pre_masks = self.rois_on(pre, "mge")
        for ses, (r2, sd, fitted) in fits.items():
            if ses == pre:
                continue
            # post -> pre grid: pre points -> baseline -> post
            t = self.baseline_to(ses, "mge") @ self.baseline_to(pre, "mge").inverse()
            post = resample(r2, pre_r2, t)
            post_sd = resample(sd, pre_r2, t, interpolation="nearest", default_value=np.nan)
            post_fit = resample(Volume(np.asarray(fitted.data).astype(np.uint8), fitted.affine), pre_r2, t,
                                interpolation="nearest")
            both = Volume(np.asarray(pre_fit.data) & (np.asarray(post_fit.data) > 0), pre_r2.affine)
            d = delta_r2star(pre_r2, post)
            fe = iron_concentration(d, relaxivity=rel)
            for nm, v, unit in (("dR2starmap", d, "s-1"), ("ironmap", fe, "mM")):
                p = self.deriv(ses, "anat", nm)
                io.save(v, p, overwrite=True, inputs=[str(self.vols[(ses, 'mge')][1].path),
                                                     str(self.vols[(pre, 'mge')][1].path)],
                        parameters={"pre_session": pre, "relaxivity_per_s_per_mM": float(getattr(rel, "value", rel))})
                self.outputs.append(p)
            self.maps[(ses, "dr2star")] = d
            self.maps[(ses, "dr2star", "masks")] = pre_masks
            self.maps[(ses, "iron")] = fe
            fe_ug = iron_mass_ug(fe)
            pg = cfg.get("pg_fe_per_cell")
            for name, m in pre_masks.items():
                m = self._fitted_part(ses, name, m, both, what="dR2*, iron and cells")
                if m is None:
                    continue
                s = roi.stats(d, m)
                self.add(ses, "MR", name, "dr2star_mean", s["mean"], sd=s["sd"], n_voxels=s["n_voxels"],
                         volume_ml=s["volume_ml"])
                self.add(ses, "MR", name, "iron_mM_mean", roi.stats(fe, m)["mean"])
                mdat = np.asarray(m.data)
                ug = float(np.asarray(fe_ug.data if hasattr(fe_ug, "data") else fe_ug)[mdat].sum())
                self.add(ses, "MR", name, "iron_ug", ug)
                if pg:
                    n = float(cell_count(ug, pg_fe_per_cell=pg))
                    # uncertainty of the ROI sum from the per-voxel R2* SDs (independent voxels)
                    var_vox = (np.asarray(pre_sd.data)[mdat].astype(np.float64) ** 2
                               + np.asarray(post_sd.data)[mdat].astype(np.float64) ** 2)
                    var_d = float(np.nansum(var_vox))
                    rv = float(getattr(rel, "value", rel))
                    ug_per_dr2 = float(iron_mass_ug(1.0 / rv, voxel_volume_ml=pre_r2.voxel_volume_ml))
                    n_sd = math.sqrt(var_d) * ug_per_dr2 / (pg * 1e-6)
                    self.add(ses, "MR", name, "cells_mri", n)
                    self.add(ses, "MR", name, "cells_mri_sd", n_sd)
                    self.add(ses, "MR", name, "cells_mri_min", 3.0 * n_sd)


    def _r2star_on_gpu(self) -> bool:
        from .backend import has_gpu

        dev = (self.study.r2star or {}).get("device", "auto")
        if dev == "gpu" and not has_gpu():
            raise ParameterError("[r2star] device = \"gpu\" but CuPy finds no CUDA device here: install invivo[gpu] "
                                 "on a GPU machine, or use device = \"auto\" (GPU when there is one) or \"cpu\"")
        return dev == "gpu" or (dev == "auto" and has_gpu())

    #: An ROI whose voxels have R2* values in less than this fraction gets no R2* statistics
    MIN_FITTED_FRACTION = 0.5

    def _fitted_part(self, ses, name, m, fitted, what="R2*"):
        """The voxels of ROI ``m`` that have an R2* value (``fitted``), or None (and a note) when fewer than
        :attr:`MIN_FITTED_FRACTION` of them do: an ROI mean over its few fitted voxels would be biased."""
        from .volume import Volume

        md = np.asarray(m.data).astype(bool)
        n = int(md.sum())
        if n == 0:
            return None
        mf = md & np.asarray(fitted.data).astype(bool)
        k = int(mf.sum())
        if k < self.MIN_FITTED_FRACTION * n:
            self.notes.append(f"ses-{ses} {name}: only {k} of {n} voxels have an R2* value (the others are "
                              "saturated -- R2* beyond what the first echo can measure -- or at the noise floor): "
                              f"no {what} for this ROI; a shorter first echo would measure it")
            return None
        if k < n:
            self.notes.append(f"ses-{ses} {name}: {n - k} of {n} voxels have no R2* value: the {what} statistics "
                              "leave them out")
        return Volume(mf, m.affine)

    def profiles(self):
        """Rim-to-core profile and core-to-rim ratio of the ``[profile]`` ROI on every uptake and dR2* map."""
        from . import roi

        cfg = self.study.profile
        if cfg is None:
            return
        name, rim, step = cfg["roi"], float(cfg["rim_mm"]), cfg.get("step_mm")
        items = []
        for ses in self.sessions:
            for em in _EMISSION:
                if (ses, em) in self.maps:
                    u = next(iter(self.maps[(ses, em)]))
                    items.append((ses, em, u, self.maps[(ses, em)][u], self.maps[(ses, em, "masks")].get(name)))
            if (ses, "dr2star") in self.maps:
                items.append((ses, "MR", "dr2star", self.maps[(ses, "dr2star")],
                              self.maps[(ses, "dr2star", "masks")].get(name)))
        for ses, modality, what, img, m in items:
            if m is None or not np.asarray(m.data).any():
                continue
            self.progress(f"{self.sid} ses-{ses}: {name} rim-to-core profile ({what})")
            try:
                prof = roi.rim_core_profile(img, m, step_mm=step)
                ix = roi.infiltration_index(img, m, rim_mm=rim)
            except InvivoError as err:
                self.notes.append(f"ses-{ses} {modality} {name}: no rim-to-core profile: {err}")
                continue
            unit = MEASURES.get(f"{what}_rim_mean", "")
            for r in prof.itertuples(index=False):
                self.profile_rows.append({"subject": self.sid, "group": self.subj.group, "session": ses,
                                          "time_h": self.time_h[ses], "modality": modality, "roi": name, "map": what,
                                          "depth_mm": r.depth_mm, "depth_mm_lo": r.depth_mm_lo,
                                          "depth_mm_hi": r.depth_mm_hi, "mean": r.mean, "sd": r.sd,
                                          "n_voxels": r.n_voxels, "unit": unit})
            self.add(ses, modality, name, f"{what}_rim_mean", ix["rim_mean"], sd=ix["rim_sd"],
                     n_voxels=ix["rim_n_voxels"], volume_ml=ix["rim_volume_ml"])
            self.add(ses, modality, name, f"{what}_core_mean", ix["core_mean"], sd=ix["core_sd"],
                     n_voxels=ix["core_n_voxels"], volume_ml=ix["core_volume_ml"])
            self.add(ses, modality, name, f"{what}_core_to_rim", ix["core_to_rim"])


# ============================================================================ cohort steps
def _row(k, sid, group, roi, parameter, value, se, unit, aic=float("nan")) -> dict:
    return {"analysis": k["name"], "model": k["model"], "subject": sid, "group": group, "roi": roi,
            "parameter": parameter, "value": float(value), "se": float("nan") if se is None else float(se),
            "unit": unit, "aic": float(aic)}


def _trafficking_rows(study, table, k, sid) -> list[dict]:
    """CellTrafficking fitted to the subject's %ID per organ over its PET sessions."""
    from .kinetics.cart import TRAFFICKING_DEMO_RATES_PER_H, CellTrafficking

    pid = table[(table.subject == sid) & (table.measure == "percent_id")]
    if not len(pid):
        raise ParameterError("no PET ROI measures (%ID) to fit")
    times = pid.groupby("session").time_h.first().sort_values()
    organs = {}
    for organ, roi in k["organs"].items():
        per_ses = pid[pid.roi == roi].set_index("session").value.reindex(times.index)
        if per_ses.isna().any():
            raise ParameterError(f"ROI {roi!r} ({organ}) has no %ID in session(s) "
                                 f"{', '.join(per_ses.index[per_ses.isna()])}")
        organs[organ] = per_ses.to_numpy()
    free = k.get("free") or list(CellTrafficking.RATES)
    fixed = {r: v for r, v in TRAFFICKING_DEMO_RATES_PER_H.items() if r not in free}
    # ROI means of PET: noise about proportional to the value, so relative residuals (and calibrated SEs)
    fit = CellTrafficking(weights="relative").fit(times.to_numpy(), organs, fixed=fixed, region=sid)
    units = {"lung_residence_h": "h", "retained_24h": ""}
    return [_row(k, sid, study.subjects[sid].group, ",".join(k["organs"].values()), p, fit.params[p], fit.se.get(p),
                 units.get(p, "1/h"), fit.aic)
            for p in free + [q for q in units if q in fit.params]]


def _patlak_rows(study, table, k, sid) -> list[dict]:
    """Multi-day Patlak of the ROI's %ID/g against the subject's serum file."""
    from .kinetics.antibody import multi_day_patlak
    from .kinetics.inputs import load_blood

    inj = study.injections.get(sid)
    if inj is None or inj.blood is None:
        raise ParameterError(f"needs blood = \"...tsv\" in the [[injection]] of {sid}")
    sub = table[(table.subject == sid) & (table.roi == k["roi"]) & (table.measure == "idg_mean")].sort_values("time_h")
    fit = multi_day_patlak(sub.value.to_numpy(), sub.time_h.to_numpy() * 3600.0, load_blood(inj.blood),
                           t_star_s=float(k.get("t_star_h", 0.0)) * 3600.0, region=f"{sid} {k['roi']}")
    return [_row(k, sid, study.subjects[sid].group, k["roi"], p, fit.params[p], fit.se.get(p), unit, fit.aic)
            for p, unit in (("Ki_per_h", "mL/g/h"), ("VT", "mL/g"))]


def _blocking_rows(table, k) -> list[dict]:
    """Specific uptake: the ``total`` group against the ``blocked`` group (each subject's last or given session)."""
    from .kinetics.antibody import blocking_comparison

    meas = k["measure"]
    sub = table[(table.roi == k["roi"]) & (table.measure == meas)]
    sub = sub[sub.session == k["session"]] if k.get("session") else sub.sort_values("time_h").groupby("subject").tail(1)
    tot = sub[sub.group == k["total"]].value.to_numpy()
    blk = sub[sub.group == k["blocked"]].value.to_numpy()
    if len(tot) < 2 or len(blk) < 2:
        raise ParameterError(f"needs at least 2 subjects per arm ({len(tot)} in {k['total']!r}, "
                             f"{len(blk)} in {k['blocked']!r})")
    res = blocking_comparison(tot, blk, units=MEASURES.get(meas))
    unit = MEASURES.get(meas, "")
    se_of = {"specific": "specific_se", "specific_fraction": "specific_fraction_se", "total_mean": "total_se",
             "blocked_mean": "blocked_se", "p_value": None}
    return [_row(k, f"{k['total']} vs {k['blocked']}", "", k["roi"], p, res[p], res.get(se_key) if se_key else None,
                 "" if p in ("specific_fraction", "p_value") else unit) for p, se_key in se_of.items()]


def _kinetics(study: Study, table, subjects: list[str], notes: list[str]):
    """The [[kinetics]] analyses: one row per (analysis, subject or comparison, parameter).  A subject whose fit
    cannot be done is noted and the others go on."""
    import pandas as pd

    per_subject = {"cell-trafficking": _trafficking_rows, "patlak": _patlak_rows}
    rows = []
    for k in study.kinetics:
        where = f"kinetics {k['name']!r} (study file line {k.get('_line')})"
        if k["model"] == "blocking":
            try:
                rows += _blocking_rows(table, k)
            except InvivoError as e:
                notes.append(f"{where}: {e}")
            continue
        groups = k.get("groups") or sorted({study.subjects[s].group for s in subjects})
        for sid in subjects:
            if study.subjects[sid].group not in groups:
                continue
            try:
                rows += per_subject[k["model"]](study, table, k, sid)
            except InvivoError as e:
                notes.append(f"{where} {sid}: {e}")
    cols = ["analysis", "model", "subject", "group", "roi", "parameter", "value", "se", "unit", "aic"]
    return pd.DataFrame(rows, columns=cols)


def _write_table(df, path_tsv: Path, notes: list[str]) -> list[Path]:
    out = []
    _atomic(path_tsv, lambda tmp: df.to_csv(tmp, sep="\t", index=False, na_rep="n/a"))
    out.append(path_tsv)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        notes.append("pyarrow is not installed: no Parquet copies of the tables (pip install pyarrow)")
        return out
    pq = path_tsv.with_suffix(".parquet")
    _atomic(pq, lambda tmp: df.to_parquet(tmp, index=False))
    out.append(pq)
    return out


@dataclass
class SubjectOutcome:
    """What one subject's task returns (:func:`process_subject`): plain data, cheap to send between processes."""

    study: str
    subject: str
    rows: list = field(default_factory=list)
    reg_rows: list = field(default_factory=list)
    profile_rows: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    figures: list = field(default_factory=list)  # (section, png path, caption)
    time_h: dict = field(default_factory=dict)
    reused: list = field(default_factory=list)
    failure: str | None = None
    seconds: float = 0.0
    host: str = ""


def process_subject(study: Study, sid: str, out_dir, *, progress=False, figures: bool = True,
                    total: int = 1) -> SubjectOutcome:
    """Every per-subject step of :func:`run` for one subject: ingest, co-registration, uptake, R2*, profiles and
    the subject's figures.  Errors are caught and returned (``failure``), so one subject never stops the others;
    this is the task a cluster worker runs."""
    import socket

    t0 = time.perf_counter()
    out = Path(out_dir)
    steps = _Steps(out / "work")
    prog = progress if isinstance(progress, _Progress) else _Progress(bool(progress), total)
    s = _Subject(study, sid, out, steps, prog)
    res = SubjectOutcome(study=study.name, subject=sid, host=socket.gethostname())
    try:
        s.load()
        s.register()
        s.uptake()
        s.r2star()
        s.profiles()
        if figures:
            res.figures = _subject_figures(study, s, out / "figures")
    except InvivoError as e:
        res.failure = str(e)
    except Exception as e:  # a bug: report it, go on with the others
        res.failure = f"{type(e).__name__}: {e}"
        log.error("subject %s failed:\n%s", sid, traceback.format_exc())
    res.rows, res.reg_rows, res.profile_rows = s.rows, s.reg_rows, s.profile_rows
    res.outputs, res.notes, res.time_h, res.reused = s.outputs, s.notes, dict(s.time_h), list(steps.reused)
    res.seconds = time.perf_counter() - t0
    return res


def _subject_figures(study: Study, s: "_Subject", figs: Path) -> list[tuple[str, Path, str]]:
    """The subject's own figures: PET on MR (fused) for one session, and its dR2* map and tumour R2* histogram."""
    from . import report as rp
    from .align import resample

    figs.mkdir(parents=True, exist_ok=True)
    out = []
    sid = s.sid
    cands = [x for x in s.sessions if (x, "pet") in s.maps] + [x for x in s.sessions if (x, "spect") in s.maps]
    if cands:
        ses = study.report.get("fused_session")
        ses = ses if ses in cands else cands[-1]
        em = "pet" if (ses, "pet") in s.maps else "spect"
        kind = s.anatomy_kind(ses)
        if kind is not None:
            anat = _anatomy(s.vols[(ses, kind)][0])
            unit = next(iter(s.maps[(ses, em)]))
            on_mr = resample(s.maps[(ses, em)][unit], anat, s.to_emission[(ses, em)])
            label = UPTAKE_UNITS[unit][0]
            png = rp.fused_png(anat, on_mr, figs / f"sub-{sid}_ses-{ses}_fused.png", overlay_label=label,
                               title=f"{sid} ({s.subj.group}), ses-{ses}: {label} on MR", overwrite=True)
            out.append(("registration", png, f"{sid} ses-{ses}: PET {label} resampled onto the session MR through "
                        "the registration (slices through the maximum, and MIPs)"))
    pre = (study.r2star or {}).get("pre")
    posts = [x for x in s.sessions if (x, "dr2star") in s.maps]
    if posts and pre is not None:
        post = posts[-1]
        anat = _anatomy(s.vols[(pre, "mge")][0])
        masks = s.maps[(post, "dr2star", "masks")]
        tm = next((masks[n] for n in ("tumour", "tumour_rim") if n in masks), None)
        png = rp.map_png(s.maps[(post, "dr2star")], figs / f"sub-{sid}_ses-{post}_dR2star.png", underlay=anat,
                         label="dR2* (s-1)", mask=tm, title=f"{sid}: dR2* ses-{post} vs ses-{pre}", overwrite=True)
        out.append(("spio", png, f"{sid}: dR2* map, ses-{post} against ses-{pre} (slices through the tumour)"))
        if tm is not None:
            m = np.asarray(tm.data)
            vals = {f"ses-{pre}": np.asarray(s.maps[(pre, "r2star")].data)[m]}
            post_on_pre = resample(s.maps[(post, "r2star")], s.maps[(pre, "r2star")],
                                   s.baseline_to(post, "mge") @ s.baseline_to(pre, "mge").inverse())
            vals[f"ses-{post}"] = np.asarray(post_on_pre.data)[m]
            png = rp.histogram_png(vals, figs / f"sub-{sid}_r2star_hist.png", label="R2* (s-1)",
                                   title=f"{sid}: tumour R2* before and after the labeled cells", overwrite=True)
            out.append(("spio", png, f"{sid}: R2* in the tumour, before vs after the cells (medians marked)"))
    return out


def run(study, out_dir, *, overwrite: bool = False, subjects=None, progress: bool = False, report: bool = True,
        truth=None, scheduler=None, workers: int | None = None) -> StudyResult:
    """Run the whole pipeline of a study.

    Parameters
    ----------
    study : Study, str or Path
        A :class:`Study` or the path of a study file (:func:`load_study`).
    out_dir : str or Path
        Output folder: ``derivatives/invivo/sub-*/ses-*/`` (NIfTI maps + JSON, transforms),
        ``tables/`` (``measures``, ``kinetics``, ``registrations``, ``profiles`` as TSV and
        Parquet), ``figures/``, ``report.html`` and ``study.json`` (provenance).  A second run
        into the same folder reuses the finished registrations and R2* fits whose inputs have
        not changed (``work/``) and rewrites the rest; an existing report is kept unless
        ``overwrite``.
    overwrite : bool
        Replace an earlier report and tables.
    subjects : list of str, optional
        Only these subjects.
    progress : bool
        Print progress lines on stderr.
    report : bool
        Write figures and ``report.html``.
    truth : pandas.DataFrame, optional
        Known values (columns ``subject, session, roi, measure, truth``[, ``tolerance``]) merged
        into the tidy table (the demo's recovered-vs-truth check).
    scheduler : None, "local", str or distributed.Client
        None (default): the subjects one after the other in this process.  ``"local"``: a
        ``dask.distributed`` cluster on this machine with ``workers`` processes; an address
        (``tcp://host:8786``): that scheduler's workers; a ``Client``: its cluster.  Each
        subject is one task (retried on another worker if its worker dies); the numbers are
        identical to a serial run's.  Needs the ``cluster`` extra.
    workers : int, optional
        Worker processes of a ``"local"`` cluster (default 2).

    Returns
    -------
    StudyResult
        The tidy table (one row per subject x session x ROI x measure), kinetic results,
        the registrations, failures per subject (the other subjects complete) and paths.
    """
    st = study if isinstance(study, Study) else load_study(study)
    out = Path(out_dir).resolve()  # absolute: cluster workers may start elsewhere
    _check_out(out, overwrite)
    sids = list(st.subjects) if subjects is None else list(subjects)
    for s in sids:
        if s not in st.subjects:
            raise ParameterError(f"subject {s!r} is not in {st.path} (has {', '.join(st.subjects)})")
    res = _run_studies([(st, out, sids, truth)], scheduler=scheduler, workers=workers, progress=progress,
                       report=report)[0]
    if isinstance(res, BaseException):
        raise res
    return res


def run_cohort(studies, out_dir, *, overwrite: bool = False, progress: bool = False, report: bool = True,
               scheduler=None, workers: int | None = None) -> dict:
    """Run several studies, every subject of every study one task: ``out_dir/<study file stem>/`` each.

    Parameters
    ----------
    studies : list of str or Path
        Study files; their stems must differ.
    out_dir : str or Path
    overwrite, progress, report, scheduler, workers
        As in :func:`run`.

    Returns
    -------
    dict
        Study file stem -> :class:`StudyResult`, or -> the error (str) of a study that could
        not be read or run; the other studies complete.
    """
    paths = [Path(p) for p in studies]
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ParameterError(f"study files must have different names (their outputs go to DIR/<name>/): {stems}")
    out = Path(out_dir).resolve()  # absolute: cluster workers may start elsewhere
    results: dict = {}
    todo, stems_todo = [], []
    for p in paths:
        try:
            st = load_study(p)
            _check_out(out / p.stem, overwrite)
        except InvivoError as e:
            results[p.stem] = str(e)
            continue
        todo.append((st, out / p.stem, list(st.subjects), None))
        stems_todo.append(p.stem)
    done = _run_studies(todo, scheduler=scheduler, workers=workers, progress=progress, report=report)
    for stem, res in zip(stems_todo, done):
        results[stem] = str(res) if isinstance(res, BaseException) else res
    return {p.stem: results[p.stem] for p in paths}


def _check_out(out: Path, overwrite: bool) -> None:
    if (out / "report.html").exists() and not overwrite:
        raise OutputExistsError(f"{out / 'report.html'} exists: choose another --out, or pass --overwrite "
                                "(finished registrations and fits are reused)")
    out.mkdir(parents=True, exist_ok=True)


class _Cluster:
    """A ``distributed.Client`` for ``scheduler`` ("local", an address or a Client), closed on exit if made here."""

    def __init__(self, scheduler, workers):
        self.scheduler, self.workers, self.own = scheduler, workers, []

    def __enter__(self):
        try:
            import distributed
        except ImportError:
            raise ParameterError("running on a cluster needs dask.distributed: pip install 'invivo[cluster]'") from None
        if isinstance(self.scheduler, distributed.Client):
            return self.scheduler
        if self.workers is not None and not (isinstance(self.workers, int) and self.workers >= 1):
            raise ParameterError(f"workers must be a positive integer, got {self.workers!r}")
        if self.scheduler == "local":
            cluster = distributed.LocalCluster(n_workers=self.workers or 2, threads_per_worker=1, processes=True,
                                               dashboard_address=None, silence_logs=logging.ERROR)
            self.own.append(cluster)
            client = distributed.Client(cluster)
        elif isinstance(self.scheduler, str):
            if self.workers is not None:
                raise ParameterError("--workers applies to --scheduler local; a scheduler address brings its own "
                                     "workers")
            try:
                client = distributed.Client(self.scheduler, timeout="20s")
            except (OSError, TimeoutError, ValueError) as e:  # ValueError: a malformed address
                raise InvivoError(f"cannot reach the dask scheduler at {self.scheduler}: {e}; start one with "
                                  "`dask scheduler` (and workers with `dask worker ADDRESS`) or use "
                                  "--scheduler local") from None
        else:
            raise ParameterError(f"scheduler must be None, 'local', an address or a distributed.Client, "
                                 f"got {self.scheduler!r}")
        self.own.insert(0, client)
        return client

    def __exit__(self, *exc):
        for obj in self.own:
            obj.close()
        return False


def _run_studies(todo, *, scheduler, workers, progress: bool, report: bool) -> list:
    """Every subject of every ``(study, out_dir, subjects, truth)`` as a :func:`process_subject` task, then each
    study's tables and report (:func:`_assemble`) as soon as its subjects are done -- in this process, or as
    cluster tasks.  Returns one StudyResult (or the exception that stopped its assembly) per study, in order."""
    jobs = [(k, st, sid, out) for k, (st, out, sids, _) in enumerate(todo) for sid in sids]
    n = len(jobs)
    several = len(todo) > 1
    prog = _Progress(progress, n)
    t0 = time.perf_counter()

    def line(st, sid, o):
        label = f"{st.name} {sid}" if several else sid
        where = f" ({o.seconds:.1f} s on {o.host or '?'})" if scheduler is not None else ""
        return f"{label}: {'FAILED: ' + o.failure if o.failure else 'done'}{where}"

    def assembly_args(k, outcomes):
        st, out, _, truth = todo[k]
        return (st, out, outcomes), {"truth": truth, "report": report, "progress": progress and not several, "t0": t0}

    results: list = [None] * len(todo)
    if scheduler is None:
        if workers is not None:
            raise ParameterError("workers needs a scheduler ('local' or an address)")
        for k, (st, out, sids, _) in enumerate(todo):
            outs = []
            for sid in sids:
                o = process_subject(st, sid, out, progress=prog, figures=report)
                prog(line(st, sid, o), step=True)
                outs.append(o)
            a, kw = assembly_args(k, outs)
            try:
                results[k] = _assemble(*a, **kw)
            except InvivoError as e:
                results[k] = e
        return results
    import uuid

    with _Cluster(scheduler, workers) as client:
        from distributed import as_completed

        run_id = uuid.uuid4().hex[:8]
        futures = [client.submit(process_subject, st, sid, out, figures=report, pure=False, retries=1,
                                 key=f"invivo-{run_id}-{i}-{sid}") for i, (_, st, sid, out) in enumerate(jobs)]
        index = {f.key: i for i, f in enumerate(futures)}
        outs: list[SubjectOutcome | None] = [None] * n
        left = [len(sids) for _, _, sids, _ in todo]
        of_study: list[list[int]] = [[] for _ in todo]  # job indices of each study
        for i, job in enumerate(jobs):
            of_study[job[0]].append(i)
        pending = as_completed(futures)
        finals = {}
        for fut in pending:
            if fut.key in finals:  # a study's assembly finished
                k = finals[fut.key]
                try:
                    results[k] = fut.result()
                except Exception as e:
                    results[k] = e if isinstance(e, InvivoError) else InvivoError(
                        f"{todo[k][0].name}: writing the tables and report failed: {type(e).__name__}: {e}")
                continue
            i = index[fut.key]
            k, st, sid, _ = jobs[i]
            try:
                o = fut.result()
            except Exception as e:  # the task could not finish anywhere (workers lost, or a bug outside the try)
                o = SubjectOutcome(study=st.name, subject=sid, failure=f"cluster task failed: {type(e).__name__}: {e}")
            outs[i] = o
            prog(line(st, sid, o), step=True)
            left[k] -= 1
            if left[k] == 0:  # the study's subjects are done: its tables and report, on a worker
                a, kw = assembly_args(k, [outs[j] for j in of_study[k]])
                fa = client.submit(_assemble, *a, **kw, pure=False, retries=1, key=f"invivo-{run_id}-assemble-{k}")
                finals[fa.key] = k
                pending.add(fa)
        for k in range(len(todo)):
            if results[k] is None and not todo[k][2]:  # a study without subjects
                a, kw = assembly_args(k, [])
                results[k] = _assemble(*a, **kw)
        return results


def _assemble(st: Study, out: Path, outcomes: list[SubjectOutcome], *, truth, report: bool, progress: bool,
              t0: float) -> StudyResult:
    """Tables, cohort kinetics, report and provenance from the subjects' outcomes."""
    import pandas as pd

    rows, reg_rows, prof_rows, failures, notes, outputs, reused = [], [], [], {}, [], [], []
    for o in outcomes:
        if o.failure:
            failures[o.subject] = o.failure
        rows += o.rows
        reg_rows += o.reg_rows
        prof_rows += o.profile_rows
        outputs += o.outputs
        reused += o.reused
        notes += [f"{o.subject}: {n}" for n in o.notes]
    sids = [o.subject for o in outcomes]
    cols = ["subject", "group", "session", "time_h", "modality", "roi", "measure", "value", "unit", "sd", "n_voxels",
            "volume_ml"]
    table = pd.DataFrame(rows, columns=cols)
    if truth is not None and len(table):
        table = table.merge(truth, on=[c for c in ("subject", "session", "roi", "measure") if c in truth.columns],
                            how="left")
    ok_subjects = [s for s in sids if s not in failures]
    kin = _kinetics(st, table, ok_subjects if len(table) else [], notes)
    regs = pd.DataFrame(reg_rows)
    tables = out / "tables"
    tables.mkdir(exist_ok=True)
    written = []
    written += _write_table(table, tables / "measures.tsv", notes)
    written += _write_table(kin, tables / "kinetics.tsv", notes)
    if len(regs):
        written += _write_table(regs, tables / "registrations.tsv", notes)
    profiles = pd.DataFrame(prof_rows)
    if len(profiles):
        written += _write_table(profiles, tables / "profiles.tsv", notes)
    result = StudyResult(out_dir=out, table=table, kinetics=kin, registrations=regs, failures=failures,
                         reused=reused, derivatives=outputs, profiles=profiles)
    prov = {"invivo_version": _version(), "study_file": str(st.path), "study_sha256": st.text_sha256,
            "subjects": sids, "failures": failures, "notes": notes, "reused_steps": reused,
            "created": datetime.now().isoformat(timespec="seconds"), "tables": [str(p) for p in written],
            "hosts": sorted({o.host for o in outcomes if o.host})}
    if report:
        if progress:
            print(f"{st.name}: report", file=sys.stderr, flush=True)
        result.report = _write_report(st, result, outcomes, prov)
    result.seconds = time.perf_counter() - t0
    prov["seconds"] = result.seconds
    _atomic(out / "study.json", lambda tmp: Path(tmp).write_text(json.dumps(prov, indent=1, default=str)))
    return result


def _write_report(study: Study, result: StudyResult, outcomes: list[SubjectOutcome], prov: dict) -> Path:
    """Figures and ``report.html`` for a finished run."""
    import pandas as pd

    from . import report as rp

    out = result.out_dir
    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    table = result.table
    rep = rp.Report(study.report.get("title", study.name), out)
    n_fail = len(result.failures)
    truth_bad = 0
    if "truth" in table.columns and "tolerance" in table.columns:
        judged = table.dropna(subset=["truth"])
        rel = (judged.value / judged.truth - 1.0).abs()
        truth_bad = int((rel > judged.tolerance).sum())
        msg = (f"{len(judged) - truth_bad} of {len(judged)} image measures within tolerance of the truth"
               + (f"; {n_fail} subject(s) failed" if n_fail else ""))
        rep.status(msg, ok=truth_bad == 0 and n_fail == 0)
    else:
        rep.status("all subjects processed" if not n_fail else f"{n_fail} subject(s) failed: see Failures",
                   ok=not n_fail)

    # --- the study
    rep.section("Study", f"{len(study.subjects)} subjects in {len({s.group for s in study.subjects.values()})} "
                f"group(s); {len(study.scans)} scans; study file {study.path}.")
    held = {o.subject: o for o in outcomes}
    subj = pd.DataFrame([{"subject": s.id, "group": s.group,
                          "sessions": ", ".join(f"{x} ({held[s.id].time_h.get(x, float('nan')):.1f} h)"
                                                if s.id in held else x for x in study.sessions(s.id)),
                          "status": "failed" if s.id in result.failures else "ok"} for s in study.subjects.values()
                         if s.id in held])
    rep.table(subj, "Subjects and sessions (hours after injection)")
    if result.failures:
        rep.section("Failures")
        rep.table(pd.DataFrame([{"subject": k, "error": v} for k, v in result.failures.items()]),
                  "Subjects that did not complete (the others did)")

    # --- registration
    if len(result.registrations):
        rep.section("Co-registration", "PET to the MR of its session, each session's MR to the baseline MR "
                    "(Mattes mutual information, rigid); ROIs drawn on the baseline MR are carried through these "
                    "transforms to every image.")
        cols = [c for c in ("subject", "what", "rotation_deg", "translation_mm", "metric", "quality", "seconds",
                            "reused") if c in result.registrations.columns]
        rep.table(result.registrations[cols], "Registrations", float_format="{:.3f}".format)
        for fig in [f for o in outcomes for f in o.figures if f[0] == "registration"][:12]:
            rep.figure(fig[1], fig[2])

    # --- uptake
    up = table[table.measure == "idg_mean"] if len(table) else table
    if len(up):
        rep.section("Uptake", "Mean %ID/g per ROI (decay corrected), mean +/- SD over the subjects of each group.")
        rois = [r for r in dict.fromkeys(up.roi)][:8]
        png = rp.tac_png(up, figs / "tac_idg.png", measure="idg_mean", rois=rois, title="%ID/g over time",
                         overwrite=True)
        rep.figure(png, "Time-activity curves (%ID/g) per ROI and group")
        last = up.sort_values("time_h").groupby(["subject", "roi"]).tail(1).copy()
        last["session"] = "last"
        png = rp.group_bars_png(last, figs / "bars_idg_last.png", measure="idg_mean", rois=rois, session="last",
                                title="%ID/g at each subject's last scan", overwrite=True)
        rep.figure(png, "Group comparison at the last scan (mean +/- SD, subjects as points)")
        wide = up.pivot_table(index=["group", "subject", "session", "time_h"], columns="roi", values="value").reset_index()
        rep.table(wide, "%ID/g per subject, session and ROI", float_format="{:.3f}".format)

    # --- SPIO MRI
    r2 = table[table.measure.isin(["r2star_mean", "dr2star_mean"])] if len(table) else table
    if len(r2):
        rep.section("SPIO MRI: R2*, dR2*, iron", "R2* from the multi-echo gradient echo; dR2* against the pre-cell "
                    "session after co-registration; iron = dR2* / r2*.")
        png = rp.tac_png(table[table.measure == "r2star_mean"], figs / "tac_r2star.png", measure="r2star_mean",
                         rois=[r for r in dict.fromkeys(table[table.measure == "r2star_mean"].roi)][:8],
                         title="R2* over time", overwrite=True)
        rep.figure(png, "R2* per ROI over time")
        spio = next(([f for f in o.figures if f[0] == "spio"] for o in outcomes
                     if any(f[0] == "spio" for f in o.figures)), [])
        for fig in spio:  # one subject's maps: the tables have the rest
            rep.figure(fig[1], fig[2])

    # --- cells
    cells = table[table.measure.isin(["cells_pet", "cells_pet_sd", "cells_pet_min", "cells_mri", "cells_mri_sd",
                                      "cells_mri_min"])] if len(table) else table
    if len(cells):
        rep.section("Labeled cells: PET and MRI", "PET: ROI activity / (activity per cell x decay x label retention). "
                    "MRI: iron in the ROI / iron per cell.  SD from the voxel noise; the detection limit is 3 SD.")
        wide = cells.pivot_table(index=["subject", "session", "time_h", "roi"], columns="measure",
                                 values="value").reset_index()
        rep.table(wide, "Labeled cells per ROI", float_format="{:.4g}".format)
        if {"cells_pet", "cells_mri"} <= set(cells.measure):
            try:
                png = rp.cells_png(table, figs / "cells_pet_vs_mri.png", overwrite=True)
            except InvivoError as err:
                prov["notes"].append(f"no PET-vs-MRI cells figure: {err}")
            else:
                rep.figure(png, "Labeled cells per ROI from PET (89Zr) against MRI (iron), +/- 1 SD from voxel noise; "
                           "dotted lines: median detection limits (3 SD)")

    # --- rim and core
    if result.profiles is not None and len(result.profiles):
        cfg = study.profile
        rep.section(f"{cfg['roi']}: rim to core", f"Mean value against depth inward from the {cfg['roi']}'s "
                    f"boundary; rim = the outer {cfg['rim_mm']:g} mm.  Core-to-rim ratio ~1: spread through the "
                    "core (infiltrated); << 1: held at the rim (immune-excluded).  Scanner blur pulls the ratio "
                    "towards 1: compare ratios at the same resolution.")
        for what in dict.fromkeys(result.profiles["map"]):
            png = rp.profile_png(result.profiles, figs / f"profile_{what}.png", map=what, rim_mm=cfg["rim_mm"],
                                 overwrite=True)
            rep.figure(png, f"{cfg['roi']} rim-to-core profile of {what}, per session (group mean +/- SD)")
        ratio = table[table.measure.str.endswith("_core_to_rim")] if len(table) else table
        if len(ratio):
            wide = ratio.pivot_table(index=["group", "subject", "session", "time_h"], columns="measure",
                                     values="value").reset_index()
            rep.table(wide, f"{cfg['roi']}: core-to-rim ratio per map", float_format="{:.3f}".format)

    # --- kinetics
    if len(result.kinetics):
        rep.section("Kinetics", "Fits per subject (cell trafficking, multi-day Patlak) and group comparisons.")
        rep.table(result.kinetics, "Kinetic parameters (value +/- SE)", float_format="{:.4g}".format)

    if "truth" in table.columns:
        judged = table.dropna(subset=["truth"])
        if len(judged):
            rep.section("Recovered against truth", "The demo's phantom values against what the pipeline measured.")
            png = rp.recovered_vs_truth_png(judged, figs / "recovered_vs_truth.png", title="recovered vs truth",
                                            overwrite=True)
            rep.figure(png, "Every judged value against its truth")
    if prov.get("notes"):
        rep.section("Notes")
        for n in prov["notes"][:200]:
            rep.text(n)
    rep.provenance(prov)
    return rep.write("report.html", overwrite=True)
