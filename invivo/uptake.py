"""Uptake quantification: SUV variants, %ID/g and %ID/cc, decay correction.

Two levels:

* **DICOM level** -- :func:`suv_scale_factors` (one factor per dataset of a PET or
  SPECT series), :func:`suv_scale_factor`, :func:`decay_reference_datetimes`,
  :func:`injection_datetime` and :func:`reference_activity_bq` read pydicom
  datasets and follow the QIBA vendor-neutral SUV pseudo-code (D. Clunie) and the
  IBSI "Standardizing SUV computation" manual (M. Vácha et al., oncoray/suv_computation).
* **Volume level** -- :func:`suv`, :func:`percent_id` and :func:`compute` work on a
  :class:`~invivo.volume.Volume` and its metadata only (``meta.suv_bw_factor``,
  ``meta.reference_activity_bq``, or the tracer / subject / timing fields), so a
  NIfTI + sidecar volume works as well as a DICOM one.

The rules, in short:

* Units (0054,1001): ``BQML`` (activity concentration); ``CNTS`` with the Philips
  private factors (7053,1000) "SUV Scale Factor" or (7053,1009) "Activity
  Concentration Scale Factor" (looked up by tag number when the private creator
  (7053,0010) is missing); ``GML`` (already SUV, of the kind named by SUV Type
  (0054,1006), body weight when absent) and ``CM2ML`` (already SUVbsa).  Anything
  else raises :class:`~invivo.errors.UnitsError`.
* Decay Correction (0054,1102): ``START`` -- the series start, SeriesDate/Time, or,
  when SeriesTime is after the earliest AcquisitionTime of the series (a
  post-processed series), GE's private scan datetime (0009,100D) when present and
  else the earliest acquisition datetime; ``ADMIN`` -- the injection (no decay);
  ``NONE`` -- each dataset's own AcquisitionDate/Time.
* Injection: RadiopharmaceuticalStartDateTime (0018,1078), else
  RadiopharmaceuticalStartTime (0018,1072) on the scan date -- the previous day
  when the injection time of day is later than the scan's (injection before
  midnight).  As in the IBSI manual, a time without a date is refused for
  half-lives above 41400 s (89Zr, 64Cu, 124I...): such scans may be days after the
  injection.
* Dose RadionuclideTotalDose (0018,1074) in Bq (a value below 1e4 is taken as MBq,
  with a warning); half-life RadionuclideHalfLife (0018,1075), checked against
  :mod:`invivo.isotopes`.
* Body normalisers: body weight (g); lean body mass by James ("James 128") or by
  Janmahasatian (g); ideal body weight (Sugawara 1999; g); body surface area by
  Du Bois (cm²).  PatientSex ``O`` uses the mean of the male and female values (the
  IBSI adaptation), with a warning.

SUV = C (Bq/mL) x normaliser / A_ref, with A_ref the injected activity decayed to
the image's decay-reference time; %ID/cc = C / A_ref x 100 and %ID/g = %ID/cc /
density.  A syringe residual in ``meta.tracer`` is subtracted (each activity
decayed from its own measurement time).
"""

from __future__ import annotations

import math
import re
import struct
import warnings
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from . import isotopes
from .backend import float_dtype, get_array_module
from .dicomtime import combine as _combine, parse_da as _parse_da, parse_dt as _parse_dt, parse_tm as _parse_tm
from .errors import DicomError, InvivoError, InvivoWarning, MissingTagError, ParameterError, UnitsError
from .volume import Meta, Subject, Tracer, Volume

__all__ = [
    "KINDS",
    "UNIT_KINDS",
    "suv_scale_factors",
    "suv_scale_factor",
    "decay_reference_datetimes",
    "injection_datetime",
    "reference_activity_bq",
    "body_normaliser",
    "net_injected_activity_bq",
    "decay_correct",
    "suv",
    "percent_id",
    "compute",
    "write_uptake",
]

#: SUV kinds: body weight, lean body mass (James), lean body mass (Janmahasatian),
#: body surface area (Du Bois), ideal body weight (Sugawara).
KINDS: tuple[str, ...] = ("bw", "lbm", "lbm-janma", "bsa", "ibw")

_UNIT_OF_KIND = {"bw": "SUVbw", "lbm": "SUVlbm", "lbm-janma": "SUVlbm", "bsa": "SUVbsa", "ibw": "SUVibw"}

#: CLI names of ``invivo uptake --unit`` and what each computes.
UNIT_KINDS: dict[str, dict[str, str]] = {
    "suv": {"quantity": "suv", "kind": "native", "unit": "SUV of the stored kind; SUVbw from activity"},
    "suvbw": {"quantity": "suv", "kind": "bw", "unit": "SUVbw"},
    "suvlbm": {"quantity": "suv", "kind": "lbm", "unit": "SUVlbm"},
    "suvlbmjanma": {"quantity": "suv", "kind": "lbm-janma", "unit": "SUVlbm"},
    "suvbsa": {"quantity": "suv", "kind": "bsa", "unit": "SUVbsa"},
    "suvibw": {"quantity": "suv", "kind": "ibw", "unit": "SUVibw"},
    "idg": {"quantity": "percent_id", "per": "g", "unit": "%ID/g"},
    "idcc": {"quantity": "percent_id", "per": "cc", "unit": "%ID/cc"},
}

# DICOM tags named in messages
_T_WEIGHT = "PatientWeight (0010,1030)"
_T_SIZE = "PatientSize (0010,1020)"
_T_SEX = "PatientSex (0010,0040)"
_T_UNITS = "Units (0054,1001)"
_T_DC = "DecayCorrection (0054,1102)"
_T_RPSEQ = "RadiopharmaceuticalInformationSequence (0054,0016)"
_T_DOSE = "RadionuclideTotalDose (0018,1074)"
_T_HALF = "RadionuclideHalfLife (0018,1075)"
_T_START_DT = "RadiopharmaceuticalStartDateTime (0018,1078)"
_T_START_T = "RadiopharmaceuticalStartTime (0018,1072)"
_T_SERIES = "SeriesDate/SeriesTime (0008,0021)/(0008,0031)"
_T_ACQ = "AcquisitionDate/AcquisitionTime (0008,0022)/(0008,0032)"

_PHILIPS_CREATORS = ("Philips PET Private Group",)
_GE_PET_CREATORS = ("GEMS_PETD_01",)

#: IBSI: a date may be assumed for an injection given as a time of day only when the
#: half-life is below this (s); longer-lived isotopes are often scanned days later.
_DATE_ASSUMPTION_MAX_HALF_LIFE_S = 41400.0
#: A dynamic scan may start shortly before the injection recorded time (s).
_EARLY_START_TOLERANCE_S = 1800.0
#: Below this a RadionuclideTotalDose is taken to be in MBq.
_MBQ_THRESHOLD = 1e4
#: Species whose adult weight is far below 2 kg (a larger PatientWeight is grams).
_SMALL_ANIMAL = re.compile(r"\b(mouse|mice|mus|murine|rat|rats|rattus|hamster|gerbil|vole)\b", re.IGNORECASE)
_HUMAN = re.compile(r"\b(human|homo|sapiens|patient)\b", re.IGNORECASE)


# ----------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------
class _Notes(list):
    """Assumptions made while computing; each is warned once and may be recorded."""

    def add(self, msg: str) -> None:
        if msg not in self:
            self.append(msg)


def _emit(notes: Sequence[str], assumptions: list | None, *, stacklevel: int = 3) -> None:
    for msg in notes:
        warnings.warn(msg, InvivoWarning, stacklevel=stacklevel)
        if assumptions is not None and msg not in assumptions:
            assumptions.append(msg)


def _check_kind(kind: str) -> str:
    k = str(kind).lower().replace("_", "-")
    k = {"janma": "lbm-janma", "lbm-janmahasatian": "lbm-janma", "lbmjanma": "lbm-janma",
         "lbm-james": "lbm", "james": "lbm"}.get(k, k)
    if k not in KINDS:
        raise ParameterError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return k


def _val(ds, keyword: str):
    """A DICOM attribute's value, or None when absent or empty."""
    try:
        v = ds.get(keyword, None)
    except Exception:  # a malformed element pydicom cannot decode
        return None
    if v is None:
        return None
    if isinstance(v, (str, bytes)) and not v.strip():
        return None
    if hasattr(v, "__len__") and not isinstance(v, (str, bytes)) and len(v) == 0:
        return None
    return v


def _float(v) -> float | None:
    """A number from DS/IS/FD values, strings, or raw bytes of an unknown (UN) element."""
    if v is None:
        return None
    if isinstance(v, (bytes, bytearray)):
        raw = bytes(v)
        try:
            txt = raw.decode("ascii").strip("\x00 ").split("\\")[0]
            return float(txt)
        except (UnicodeDecodeError, ValueError):
            pass
        if len(raw) == 8:
            return struct.unpack("<d", raw)[0]
        if len(raw) == 4:
            return struct.unpack("<f", raw)[0]
        return None
    if isinstance(v, (list, tuple)) or (hasattr(v, "__len__") and not isinstance(v, str)):
        return _float(v[0]) if len(v) else None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _text(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, (bytes, bytearray)):
        v = bytes(v).decode("latin-1", errors="replace")
    return str(v).strip("\x00 ") or None


# ----------------------------------------------------------------------------
# DICOM dates and times
# ----------------------------------------------------------------------------
def _series_datetime(ds) -> datetime | None:
    return _combine(_val(ds, "SeriesDate"), _val(ds, "SeriesTime"))


def _acquisition_datetime(ds, notes: _Notes | None = None) -> datetime | None:
    """AcquisitionDateTime, else AcquisitionDate (else SeriesDate) + AcquisitionTime.

    An AcquisitionDate more than a day away from the SeriesDate (anonymised
    dates) is replaced by the series date, with a note.
    """
    dt = _parse_dt(_val(ds, "AcquisitionDateTime"))
    if dt is None:
        t = _parse_tm(_val(ds, "AcquisitionTime"))
        if t is None:
            return None
        d = _parse_da(_val(ds, "AcquisitionDate")) or _parse_da(_val(ds, "SeriesDate")) or _parse_da(_val(ds, "StudyDate"))
        if d is None:
            return None
        dt = datetime.combine(d, t)
    sd = _series_datetime(ds)
    if sd is not None and abs((dt - sd).total_seconds()) > 86400.0 * 1.5:
        fixed = datetime.combine(sd.date(), dt.time())
        if (fixed - sd).total_seconds() < -43200.0:  # acquired after midnight of the series day
            fixed += timedelta(days=1)
        if notes is not None:
            notes.add(f"AcquisitionDate {dt.date().isoformat()} is {abs((dt - sd).days)} days away from SeriesDate "
                      f"{sd.date().isoformat()} (anonymised dates?): acquisition time of day taken on the series date")
        dt = fixed
    return dt


def _private_value(ds, group: int, offset: int, creators: Sequence[str]):
    """A private element by creator, or by tag number in block 0x10 when the creator is missing."""
    for creator in creators:
        try:
            block = ds.private_block(group, creator)
        except (KeyError, ValueError):
            continue
        try:
            if offset in block:
                return block[offset].value
        except Exception:
            continue
    tag = (group << 16) | 0x1000 | offset
    if tag in ds:
        owner = _text(ds[(group << 16) | 0x0010].value) if ((group << 16) | 0x0010) in ds else None
        if owner is None or owner in creators:
            return ds[tag].value
    return None


# ----------------------------------------------------------------------------
# the radiopharmaceutical
# ----------------------------------------------------------------------------
def _rp_item(ds):
    seq = _val(ds, "RadiopharmaceuticalInformationSequence")
    if seq is None or len(seq) == 0:
        raise MissingTagError(f"{_T_RPSEQ} is missing: the injected activity and time are unknown; "
                              "SUV and %ID need them (set them in the DICOM or in meta.tracer)")
    return seq[0]


def _isotope_of(item) -> isotopes.Isotope | None:
    texts: list[str | None] = []
    codes = _val(item, "RadionuclideCodeSequence")
    if codes:
        for c in codes:
            texts += [_text(_val(c, "CodeMeaning")), _text(_val(c, "CodeValue"))]
    texts.append(_text(_val(item, "Radiopharmaceutical")))
    rcodes = _val(item, "RadiopharmaceuticalCodeSequence")
    if rcodes:
        for c in rcodes:
            texts.append(_text(_val(c, "CodeMeaning")))
    try:
        return isotopes.find(*texts)
    except Exception:
        return None


def _dose_bq(item, notes: _Notes) -> float:
    dose = _float(_val(item, "RadionuclideTotalDose"))
    if dose is None:
        raise MissingTagError(f"{_T_DOSE} is missing: the injected activity is unknown; "
                              "set meta.tracer.injected_activity_bq")
    if dose <= 0:
        raise ParameterError(f"{_T_DOSE} is {dose:g}: the injected activity must be positive (Bq)")
    if dose < _MBQ_THRESHOLD:
        notes.add(f"{_T_DOSE} = {dose:g} is too small to be in Bq: taken as {dose:g} MBq = {dose * 1e6:g} Bq")
        dose *= 1e6
    return dose


def _half_life_s(item, notes: _Notes) -> float:
    hl = _float(_val(item, "RadionuclideHalfLife"))
    iso = _isotope_of(item)
    if hl is None:  # IBSI: an error, not a table look-up (DRO_error_5_0)
        hint = (f" (the tracer looks like {iso.name}, {iso.half_life_s:g} s in invivo.isotopes)" if iso is not None
                else "")
        raise MissingTagError(f"{_T_HALF} is missing{hint}: fix the header or set meta.tracer.half_life_s")
    if hl <= 0:
        raise ParameterError(f"{_T_HALF} is {hl:g}: the half-life must be a positive number of seconds")
    if iso is not None and abs(hl - iso.half_life_s) > 0.01 * iso.half_life_s:
        notes.add(f"{_T_HALF} = {hl:g} s differs by {100 * abs(hl / iso.half_life_s - 1):.1f}% from the "
                  f"half-life of {iso.name} ({iso.half_life_s:g} s); the DICOM value is used")
    return hl


def _scan_start(datasets, notes: _Notes | None = None) -> datetime | None:
    """The earliest of SeriesDate/Time and the acquisition datetimes of the series."""
    cands = [t for t in (_series_datetime(datasets[0]),) if t is not None]
    cands += [t for t in (_acquisition_datetime(ds, notes) for ds in datasets) if t is not None]
    return min(cands) if cands else None


def _injection(item, scan_start: datetime | None, half_life_s: float, notes: _Notes) -> datetime:
    """Injection datetime from one radiopharmaceutical item (rules in the module docstring)."""
    hl_h = half_life_s / 3600.0
    dt = _parse_dt(_val(item, "RadiopharmaceuticalStartDateTime"))
    if dt is not None:
        if scan_start is None:
            return dt
        elapsed = (scan_start - dt).total_seconds()
        if half_life_s < _DATE_ASSUMPTION_MAX_HALF_LIFE_S:
            if elapsed > 86400.0 or elapsed < -_EARLY_START_TOLERANCE_S:
                fixed = datetime.combine(scan_start.date(), dt.time())
                if (fixed - scan_start).total_seconds() > _EARLY_START_TOLERANCE_S:
                    fixed -= timedelta(days=1)
                notes.add(f"{_T_START_DT} {dt.isoformat()} is {elapsed / 3600:.1f} h from the scan start "
                          f"{scan_start.isoformat()}, impossible for a half-life of {hl_h:.2f} h (anonymised "
                          f"dates?): injection time of day taken on the scan date, {fixed.isoformat()}")
                return fixed
            return dt
        if elapsed < -_EARLY_START_TOLERANCE_S:
            raise ParameterError(f"{_T_START_DT} {dt.isoformat()} is after the scan start {scan_start.isoformat()}; "
                                 "correct the injection or scan dates")
        if elapsed > 10 * half_life_s:
            raise ParameterError(f"{_T_START_DT} {dt.isoformat()} is {elapsed / 86400:.1f} days before the scan start "
                                 f"{scan_start.isoformat()}, more than 10 half-lives ({hl_h:.1f} h): the dates look "
                                 "anonymised; correct the injection date")
        return dt
    t = _parse_tm(_val(item, "RadiopharmaceuticalStartTime"))
    if t is None:
        raise MissingTagError(f"neither {_T_START_DT} nor {_T_START_T} is present: the injection time is unknown; "
                              "set meta.tracer.injection_datetime")
    if half_life_s >= _DATE_ASSUMPTION_MAX_HALF_LIFE_S:
        raise MissingTagError(f"only {_T_START_T} is present and the half-life ({hl_h:.1f} h) is too long to assume "
                              f"the injection was on the scan day; give {_T_START_DT} (or meta.tracer.injection_datetime)")
    if scan_start is None:
        raise MissingTagError(f"{_T_SERIES} and {_T_ACQ} are missing: the injection date cannot be placed "
                              f"({_T_START_T} has no date)")
    inj = datetime.combine(scan_start.date(), t)
    if (inj - scan_start).total_seconds() > _EARLY_START_TOLERANCE_S:
        inj -= timedelta(days=1)
        notes.add(f"{_T_START_T} {t.isoformat()} is later in the day than the scan start "
                  f"{scan_start.time().isoformat()}: injection assumed the previous day, {inj.isoformat()}")
    return inj


def _start_from_frame_reference(datasets, half_life_s: float | None) -> datetime | None:
    """Scan start = AcquisitionDateTime + t_avg - FrameReferenceTime for the earliest-acquired image (QIBA/IBSI).

    FrameReferenceTime (0054,1300) is the offset from the series reference to the time the
    pixel values refer to; for a frame of duration D that time lies t_avg after its start,
    t_avg = ln(lambda D / (1 - exp(-lambda D))) / lambda (the time of the mean count rate).
    """
    best = None
    for ds in datasets:
        acq = _acquisition_datetime(ds)
        frt = _float(_val(ds, "FrameReferenceTime"))
        dur = _float(_val(ds, "ActualFrameDuration"))
        if acq is None or frt is None or dur is None or dur <= 0:
            continue
        if best is None or acq < best[0]:
            best = (acq, frt / 1000.0, dur / 1000.0)
    if best is None:
        return None
    acq, frt_s, dur_s = best
    return acq + timedelta(seconds=isotopes.count_average_time_s(dur_s, half_life_s) - frt_s)


def _start_reference(datasets, acq: list, notes: _Notes, half_life_s: float | None = None) -> datetime:
    """The scan start (QIBA): SeriesDate/Time, unless it is after the earliest acquisition; then GE's
    private post-injection datetime (0009,100D) when present, else the earliest acquisition."""
    series = _series_datetime(datasets[0])
    acq = [t for t in acq if t is not None]
    earliest = min(acq) if acq else None
    if series is not None and (earliest is None or series <= earliest):
        return series
    if series is None and earliest is None:
        raise MissingTagError(f"{_T_SERIES} and {_T_ACQ} are missing: the decay reference (series start) is unknown")
    for ds in datasets:
        ge = _parse_dt(_text(_private_value(ds, 0x0009, 0x0D, _GE_PET_CREATORS)))
        if ge is not None:
            return ge
    back = _start_from_frame_reference(datasets, half_life_s)
    if back is not None:
        notes.add(f"{'SeriesTime is missing' if series is None else 'SeriesTime ' + series.isoformat() + ' is after the earliest AcquisitionTime ' + earliest.isoformat()}"
                  f": scan start (START decay reference) back-computed from AcquisitionTime, FrameReferenceTime and "
                  f"ActualFrameDuration: {back.isoformat()}")
        return back
    if series is None:
        notes.add(f"{_T_SERIES} is missing: decay reference (START) taken as the earliest acquisition "
                  f"{earliest.isoformat()}")
    else:
        notes.add(f"SeriesTime {series.isoformat()} is after the earliest AcquisitionTime {earliest.isoformat()} "
                  "(a post-processed series?): decay reference (START) taken as the earliest acquisition")
    return earliest  # type: ignore[return-value]


def scan_start_datetime(datasets, *, assumptions: list | None = None) -> datetime:
    """When the scan of a PET/SPECT series started, by the QIBA rules (the START decay reference).

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        All datasets of one series (or one representative per distinct acquisition time).
    assumptions : list, optional
        Assumptions made are appended here (and warned).
    """
    notes = _Notes()
    dss = _as_list(datasets)
    try:
        hl = _half_life_s(_rp_item(dss[0]), _Notes())
    except InvivoError:
        hl = None
    out = _start_reference(dss, [_acquisition_datetime(ds, notes) for ds in dss], notes, hl)
    _emit(notes, assumptions)
    return out


class _SeriesTiming:
    """Everything time-related for a series of datasets, computed once."""

    def __init__(self, datasets, notes: _Notes):
        if len(datasets) == 0:
            raise ParameterError("datasets is empty: give the pydicom Datasets of one PET/SPECT series")
        self.datasets = list(datasets)
        ds0 = self.datasets[0]
        dcs = {(_text(_val(ds, "DecayCorrection")) or "").upper() for ds in self.datasets}
        if len(dcs) > 1:
            raise DicomError(f"{_T_DC} differs within the series ({', '.join(sorted(dcs))}); load one series at a time")
        dc = dcs.pop()
        if not dc:
            raise MissingTagError(f"{_T_DC} is missing: the decay reference time is unknown; "
                                  "set meta.decay_correction to START, ADMIN or NONE")
        if dc not in ("START", "ADMIN", "NONE"):
            raise UnitsError(f"{_T_DC} is {dc!r}; known are START, ADMIN and NONE")
        self.decay_correction = dc
        item = _rp_item(ds0)
        self.item = item
        self.half_life_s = _half_life_s(item, notes)
        self.dose_bq = _dose_bq(item, notes)
        self.acq = [_acquisition_datetime(ds, notes) for ds in self.datasets]
        self.scan_start = _scan_start(self.datasets)
        self.injection = _injection(item, self.scan_start, self.half_life_s, notes)
        self.references = self._references(notes)

    def _references(self, notes: _Notes) -> list[datetime]:
        n = len(self.datasets)
        if self.decay_correction == "ADMIN":
            return [self.injection] * n
        if self.decay_correction == "NONE":
            missing = [i for i, t in enumerate(self.acq) if t is None]
            if missing:
                raise MissingTagError(f"{_T_DC} is NONE but {_T_ACQ} is missing in {len(missing)} of {n} datasets: "
                                      "the time each image was acquired is unknown")
            return list(self.acq)  # type: ignore[arg-type]
        return [_start_reference(self.datasets, self.acq, notes, self.half_life_s)] * n

    def reference_activity(self) -> np.ndarray:
        dt = np.array([(r - self.injection).total_seconds() for r in self.references], dtype=np.float64)
        return self.dose_bq * isotopes.decay_factor(dt, self.half_life_s)


# ----------------------------------------------------------------------------
# body normalisers
# ----------------------------------------------------------------------------
def _species_of_ds(ds) -> str | None:
    s = _text(_val(ds, "PatientSpeciesDescription"))
    if s is None:
        seq = _val(ds, "PatientSpeciesCodeSequence")
        if seq:
            s = _text(_val(seq[0], "CodeMeaning"))
    return s


def _weight_g(weight_kg, species: str | None) -> float:
    w = _float(weight_kg)
    if w is None:
        raise MissingTagError(f"the body weight is missing ({_T_WEIGHT}; subject.weight_kg): SUV needs it "
                              "(%ID does not); set meta.subject.weight_kg in kg")
    if w <= 0:
        raise ParameterError(f"the body weight ({_T_WEIGHT}; subject.weight_kg) is {w:g} kg: it must be positive; "
                             "set the weight in kg")
    if species and _SMALL_ANIMAL.search(species) and w > 2.0:
        raise ParameterError(f"the body weight ({_T_WEIGHT}) is {w:g} kg for a {species}: that looks like grams "
                             f"(DICOM stores kg); set it to {w / 1000:g} kg")
    if w > 500.0:
        raise ParameterError(f"the body weight ({_T_WEIGHT}) is {w:g} kg, more than 500 kg: it looks like grams "
                             f"(DICOM stores kg); set it to {w / 1000:g} kg")
    return 1000.0 * w


def _normaliser(kind: str, weight_kg, height_m, sex, species: str | None, notes: _Notes) -> float:
    """Body normaliser of an SUV kind: g for bw/lbm/lbm-janma/ibw, cm² for bsa."""
    w_g = _weight_g(weight_kg, species)
    if kind == "bw":
        return w_g
    if species and not _HUMAN.search(species):
        raise ParameterError(f"SUV{kind} uses formulas for adult humans; the subject is a {species}: use kind='bw' "
                             "or %ID/g")
    h = _float(height_m)
    if h is None:
        raise MissingTagError(f"the height is missing ({_T_SIZE}; subject.height_m): SUV{kind} needs it; "
                              "set meta.subject.height_m in m")
    if h <= 0:
        raise ParameterError(f"the height ({_T_SIZE}; subject.height_m) is {h:g} m: it must be positive")
    if h > 3.0:
        raise ParameterError(f"the height ({_T_SIZE}) is {h:g} m: that looks like cm (DICOM stores m); "
                             f"set it to {h / 100:g} m")
    w, h_cm = w_g / 1000.0, 100.0 * h
    if kind == "bsa":  # Du Bois & Du Bois 1916, m² -> cm²
        return 0.007184 * w ** 0.425 * h_cm ** 0.725 * 1e4

    def male(k):
        if k == "lbm":  # James 1976 ("James 128")
            return 1.10 * w - 128.0 * (w / h_cm) ** 2
        if k == "lbm-janma":  # Janmahasatian 2005
            return 9270.0 * w / (6680.0 + 216.0 * w / h ** 2)
        return 48.0 + 1.06 * (h_cm - 152.0)  # ibw, Sugawara 1999

    def female(k):
        if k == "lbm":
            return 1.07 * w - 148.0 * (w / h_cm) ** 2
        if k == "lbm-janma":
            return 9270.0 * w / (8780.0 + 244.0 * w / h ** 2)
        return 45.5 + 0.91 * (h_cm - 152.0)

    s = (_text(sex) or "").upper()
    if not s:
        raise MissingTagError(f"the sex is missing ({_T_SEX}; subject.sex): SUV{kind} needs M or F; "
                              "set meta.subject.sex")
    if s in ("M", "MALE"):
        kg = male(kind)
    elif s in ("F", "FEMALE"):
        kg = female(kind)
    elif s in ("O", "OTHER"):
        kg = 0.5 * (male(kind) + female(kind))
        notes.add(f"{_T_SEX} is O (other): SUV{kind} normaliser is the mean of the male and female formulas "
                  "(IBSI adaptation)")
    else:
        raise ParameterError(f"the sex ({_T_SEX}; subject.sex) is {s!r}; SUV{kind} needs M, F or O")
    if not kg > 0:
        raise ParameterError(f"the {kind} formula gives {kg:.3g} kg for weight {w:g} kg, height {h:g} m: "
                             "the body measures are out of the formula's range")
    return 1000.0 * kg


def body_normaliser(subject: Subject, kind: str) -> float:
    """The body normaliser of an SUV kind for a subject.

    Parameters
    ----------
    subject : Subject
        ``weight_kg`` (kg), and for lbm/lbm-janma/ibw also ``height_m`` (m) and
        ``sex`` (``"M"``, ``"F"`` or ``"O"``); bsa needs weight and height.
    kind : {"bw", "lbm", "lbm-janma", "bsa", "ibw"}
        bw: body weight; lbm: lean body mass, James ("James 128": men 1.10 W −
        128 (W/H)², women 1.07 W − 148 (W/H)², W kg, H cm); lbm-janma: lean body
        mass, Janmahasatian (men 9270 W / (6680 + 216 BMI), women 9270 W / (8780 +
        244 BMI)); bsa: Du Bois (0.007184 W^0.425 H^0.725 m²); ibw: ideal body
        weight, Sugawara (men 48.0 + 1.06 (H − 152), women 45.5 + 0.91 (H − 152)).

    Returns
    -------
    float
        Grams for bw, lbm, lbm-janma and ibw; cm² for bsa.  Sex ``"O"`` gives the
        mean of the male and female values (with an :class:`InvivoWarning`).

    Raises
    ------
    MissingTagError
        A needed measure is missing (the message names the DICOM tag).
    ParameterError
        A measure is zero, out of range, or looks like the wrong unit (a mouse
        weighing more than 2 kg: grams); lbm/bsa/ibw for a non-human species.

    Examples
    --------
    >>> body_normaliser(Subject(weight_kg=0.025, species="mouse"), "bw")
    25.0
    >>> round(body_normaliser(Subject(weight_kg=70, height_m=1.75, sex="M"), "lbm"), 1)
    56520.0
    """
    notes = _Notes()
    out = _normaliser(_check_kind(kind), subject.weight_kg, subject.height_m, subject.sex, subject.species, notes)
    _emit(notes, None)
    return out


# ----------------------------------------------------------------------------
# DICOM-level public functions
# ----------------------------------------------------------------------------
def _as_list(datasets) -> list:
    if hasattr(datasets, "dir") and hasattr(datasets, "get"):  # a single Dataset
        return [datasets]
    return list(datasets)


def decay_reference_datetimes(datasets, *, assumptions: list | None = None) -> list[datetime]:
    """The decay-reference datetime of each dataset of a series.

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        All datasets of one PET/SPECT series (series-level rules, such as the
        earliest AcquisitionTime, use all of them).
    assumptions : list, optional
        Assumptions made (also warned as :class:`InvivoWarning`) are appended here.

    Returns
    -------
    list of datetime
        DecayCorrection START: the series start (SeriesDate/Time; the GE private scan
        datetime (0009,100D) or the earliest acquisition when SeriesTime is after
        the earliest AcquisitionTime); ADMIN: the injection; NONE: each dataset's
        AcquisitionDate/Time.
    """
    notes = _Notes()
    timing = _SeriesTiming(_as_list(datasets), notes)
    _emit(notes, assumptions)
    return list(timing.references)


def injection_datetime(ds, *, assumptions: list | None = None) -> datetime:
    """The injection datetime of a dataset's radiopharmaceutical.

    RadiopharmaceuticalStartDateTime (0018,1078), else RadiopharmaceuticalStartTime
    (0018,1072) on the scan date -- the day before when the injection time of day
    is later than the scan start (injection before midnight; warned).  A time
    without a date is refused for half-lives above 41400 s (IBSI).

    Parameters
    ----------
    ds : pydicom.Dataset or sequence of them
        One dataset of a PET/SPECT series, or several (the scan start is then the
        earliest of their series and acquisition times).
    assumptions : list, optional
        Assumptions made are appended here (and warned).

    Returns
    -------
    datetime
        Local clock time, naive (a DT UTC offset is dropped).
    """
    notes = _Notes()
    dss = _as_list(ds)
    item = _rp_item(dss[0])
    hl = _half_life_s(item, notes)
    out = _injection(item, _scan_start(dss), hl, notes)
    _emit(notes, assumptions)
    return out


def reference_activity_bq(datasets, *, assumptions: list | None = None) -> np.ndarray:
    """Injected activity decayed to each dataset's decay-reference time.

    The activity is RadionuclideTotalDose (nothing subtracted: DICOM holds no
    syringe residual), decayed from the injection to
    :func:`decay_reference_datetimes`.  It is returned whatever the Units, also
    when they are not an activity concentration; callers decide.

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        All datasets of one series.
    assumptions : list, optional
        Assumptions made are appended here (and warned).

    Returns
    -------
    ndarray of shape (N,), float64, Bq
    """
    notes = _Notes()
    timing = _SeriesTiming(_as_list(datasets), notes)
    _emit(notes, assumptions)
    return timing.reference_activity()


def _stored_suv_kind(units: str, suv_type: str | None) -> str:
    """The SUV kind of values stored in GML / CM2ML (SUV Type (0054,1006) when given)."""
    t = (suv_type or "").upper().replace("_", "").replace("-", "")
    by_type = {"BW": "bw", "LBM": "lbm", "LBMJAMES": "lbm", "LBMJAMES128": "lbm", "IBW": "ibw", "BSA": "bsa"}
    kind = by_type.get(t) or ("lbm-janma" if "JAN" in t else None)
    if t and kind is None:
        raise UnitsError(f"SUV Type (0054,1006) {suv_type!r} is not known (BW, LBM, LBMJANMA, IBW, BSA)")
    if units == "CM2ML":
        if kind not in (None, "bsa"):
            raise UnitsError(f"Units CM2ML (SUVbsa) contradict SUV Type (0054,1006) {suv_type!r}")
        return "bsa"
    if kind == "bsa":
        raise UnitsError(f"Units GML (g/mL) contradict SUV Type (0054,1006) {suv_type!r} (BSA is cm²/mL)")
    return kind or "bw"


def suv_scale_factors(datasets, *, kind: str = "bw", assumptions: list | None = None) -> np.ndarray:
    """One SUV scale factor per dataset of a PET/SPECT series.

    Multiply the stored values **after** RescaleSlope/RescaleIntercept by the factor
    to get SUV of ``kind`` (QIBA vendor-neutral pseudo-code; IBSI SUV manual).

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        All datasets of one series (single-frame PET/NM images); series-level rules
        (earliest AcquisitionTime, GE private scan datetime) use all of them.
    kind : {"bw", "lbm", "lbm-janma", "bsa", "ibw"}
        The SUV normalisation (see :func:`body_normaliser`).
    assumptions : list, optional
        Assumptions made (dose in MBq, injection before midnight, ...) are appended
        here; each is also warned as :class:`InvivoWarning`.

    Returns
    -------
    ndarray of shape (N,), float64
        g/mL per (Bq/mL) for BQML (cm²/mL for bsa); for CNTS the Philips factors;
        for GML / CM2ML the ratio of normalisers (1 for the stored kind).

    Raises
    ------
    UnitsError
        Units other than BQML, CNTS (with a Philips factor), GML or CM2ML.
    MissingTagError, ParameterError
        A needed attribute is missing or impossible; the message names it.

    Examples
    --------
    >>> f = suv_scale_factors(datasets)           # doctest: +SKIP
    >>> suv_slice = (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)) * f[i]  # doctest: +SKIP
    """
    kind = _check_kind(kind)
    dss = _as_list(datasets)
    if not dss:
        raise ParameterError("datasets is empty: give the pydicom Datasets of one PET/SPECT series")
    notes = _Notes()
    units_set = {(_text(_val(ds, "Units")) or "").upper() for ds in dss}
    if len(units_set) > 1:
        raise DicomError(f"{_T_UNITS} differ within the series ({', '.join(sorted(units_set))}); load one series at a time")
    units = units_set.pop()
    if not units:
        raise MissingTagError(f"{_T_UNITS} is missing: the meaning of the pixel values is unknown")
    ds0 = dss[0]
    species = _species_of_ds(ds0)
    body = (_val(ds0, "PatientWeight"), _val(ds0, "PatientSize"), _val(ds0, "PatientSex"), species)

    def norm(k):
        return _normaliser(k, *body, notes)

    if units in ("GML", "CM2ML"):
        stored = _stored_suv_kind(units, _text(_val(ds0, "SUVType")))
        f = 1.0 if stored == kind else norm(kind) / norm(stored)
        out = np.full(len(dss), f, dtype=np.float64)
    elif units == "BQML":
        timing = _SeriesTiming(dss, notes)
        out = norm(kind) / timing.reference_activity()
    elif units == "CNTS":
        suvf = [_float(_private_value(ds, 0x7053, 0x00, _PHILIPS_CREATORS)) for ds in dss]
        actf = [_float(_private_value(ds, 0x7053, 0x09, _PHILIPS_CREATORS)) for ds in dss]
        if all(v is not None and v > 0 for v in suvf):
            out = np.asarray(suvf, dtype=np.float64)
            if kind != "bw":
                out = out * (norm(kind) / norm("bw"))
        elif all(v is not None and v > 0 for v in actf):
            timing = _SeriesTiming(dss, notes)
            out = np.asarray(actf, dtype=np.float64) * norm(kind) / timing.reference_activity()
        else:
            raise UnitsError("Units are CNTS and the Philips private scale factors (7053,1000) SUV Scale Factor and "
                             "(7053,1009) Activity Concentration Scale Factor are missing (or zero) in "
                             f"{sum(v is None for v in suvf)} of {len(dss)} datasets: counts cannot be turned into "
                             "activity or SUV; export the series in BQML")
    else:
        raise UnitsError(f"{_T_UNITS} {units!r} cannot be converted to SUV: supported are BQML, CNTS (Philips "
                         "private scale factors), GML and CM2ML")
    _emit(notes, assumptions)
    return out


def suv_scale_factor(ds, *, kind: str = "bw", assumptions: list | None = None) -> float:
    """The SUV scale factor of one pydicom Dataset (:func:`suv_scale_factors` of ``[ds]``).

    Multiply the stored values after RescaleSlope/Intercept by it to get SUV.
    Series-level rules see only this dataset; prefer :func:`suv_scale_factors`
    with the whole series.
    """
    return float(suv_scale_factors([ds], kind=kind, assumptions=assumptions)[0])


# ----------------------------------------------------------------------------
# activities and decay
# ----------------------------------------------------------------------------
def decay_correct(values, *, elapsed_s, half_life_s: float):
    """Correct values for decay over ``elapsed_s``: ``values * 2 ** (elapsed_s / half_life_s)``.

    Parameters
    ----------
    values : float or ndarray (NumPy or CuPy)
        Activities or concentrations measured at the later time.
    elapsed_s : float or ndarray, seconds
        Time from the reference to the measurement (broadcast against ``values``).
    half_life_s : float, seconds

    Returns
    -------
    float or ndarray
        On the device of ``values``; float32 stays float32, everything else float64.

    Examples
    --------
    >>> decay_correct(50.0, elapsed_s=6586.2, half_life_s=6586.2)
    100.0
    """
    if not half_life_s or not half_life_s > 0:
        raise ParameterError(f"half_life_s must be a positive number of seconds, got {half_life_s!r}")
    xp = get_array_module(values, elapsed_s)
    if np.isscalar(values) and np.isscalar(elapsed_s):
        return float(values) * 2.0 ** (float(elapsed_s) / float(half_life_s))
    v = xp.asarray(values)
    dtype = float_dtype(v.dtype)
    f = xp.exp2(xp.asarray(elapsed_s, dtype=np.float64) / float(half_life_s))
    return (v.astype(dtype, copy=False) * f.astype(dtype, copy=False)).astype(dtype, copy=False)


def _tracer_half_life(tracer: Tracer | None) -> float:
    if tracer is not None and tracer.half_life_s:
        if not tracer.half_life_s > 0:
            raise ParameterError(f"meta.tracer.half_life_s is {tracer.half_life_s!r}: must be positive seconds")
        return float(tracer.half_life_s)
    iso = isotopes.find(tracer.isotope, tracer.radiopharmaceutical) if tracer is not None else None
    if iso is None:
        raise ParameterError("the half-life is unknown: set meta.tracer.half_life_s (s) or meta.tracer.isotope")
    return iso.half_life_s


def net_injected_activity_bq(tracer: Tracer, at: datetime) -> float:
    """Injected activity minus the syringe residual, both decayed to ``at``.

    Parameters
    ----------
    tracer : Tracer
        ``injected_activity_bq`` measured at ``injection_datetime``;
        ``residual_activity_bq`` (optional) measured at ``residual_datetime`` (the
        injection datetime when missing, with a warning); the half-life from
        ``half_life_s`` or ``isotope``.
    at : datetime
        The time to decay both activities to.

    Returns
    -------
    float, Bq

    Examples
    --------
    >>> t0 = datetime(2025, 1, 1, 10, 0)
    >>> tr = Tracer(isotope="18F", injected_activity_bq=10e6, injection_datetime=t0,
    ...             residual_activity_bq=1e6, residual_datetime=t0)
    >>> round(net_injected_activity_bq(tr, t0 + timedelta(seconds=6586.2)))
    4500000
    """
    notes = _Notes()
    out = _net_activity(tracer, at, notes)
    _emit(notes, None)
    return out


def _net_activity(tracer: Tracer | None, at: datetime, notes: _Notes) -> float:
    if tracer is None or tracer.injected_activity_bq is None:
        raise ParameterError("the injected activity is unknown: set meta.tracer.injected_activity_bq (Bq)")
    a = float(tracer.injected_activity_bq)
    if not a > 0:
        raise ParameterError(f"meta.tracer.injected_activity_bq is {a:g}: must be positive (Bq)")
    if tracer.injection_datetime is None:
        raise ParameterError("the injection time is unknown: set meta.tracer.injection_datetime")
    hl = _tracer_half_life(tracer)
    out = a * 2.0 ** (-(at - tracer.injection_datetime).total_seconds() / hl)
    if tracer.residual_activity_bq:
        t_res = tracer.residual_datetime
        if t_res is None:
            t_res = tracer.injection_datetime
            notes.add("meta.tracer.residual_datetime is missing: the syringe residual is taken as measured at the "
                      "injection time")
        out -= float(tracer.residual_activity_bq) * 2.0 ** (-(at - t_res).total_seconds() / hl)
    if not out > 0:
        raise ParameterError(f"the syringe residual ({tracer.residual_activity_bq:g} Bq) is not smaller than the "
                             f"injected activity ({a:g} Bq) once decayed: check meta.tracer")
    return out


def _residual_fraction(meta: Meta, notes: _Notes) -> float:
    """Net / gross injected activity (independent of the time both are decayed to)."""
    tr = meta.tracer
    if tr is None or not tr.residual_activity_bq:
        return 1.0
    if (meta.extra.get("uptake") or {}).get("residual_applied"):
        return 1.0
    if tr.injected_activity_bq is None or not tr.injected_activity_bq > 0:
        raise ParameterError("meta.tracer.residual_activity_bq is set but injected_activity_bq is not")
    if tr.injection_datetime is None:
        if tr.residual_datetime is not None:
            raise ParameterError("meta.tracer.residual_datetime is set but injection_datetime is not")
        notes.add("meta.tracer injection and residual datetimes are missing: the residual is taken as measured at "
                  "the injection time")
        r = 1.0 - tr.residual_activity_bq / tr.injected_activity_bq
    else:
        r = _net_activity(tr, tr.injection_datetime, notes) / float(tr.injected_activity_bq)
    if not r > 0:
        raise ParameterError("the syringe residual is not smaller than the injected activity: check meta.tracer")
    return r


# ----------------------------------------------------------------------------
# Volume-level: factors from metadata
# ----------------------------------------------------------------------------
_ACTIVITY_UNITS = {"BQML": 1.0, "BQ/ML": 1.0, "BQ/CC": 1.0, "KBQ/ML": 1e3, "KBQ/CC": 1e3, "MBQ/ML": 1e6, "MBQ/CC": 1e6}
_STORED_SUV_UNITS = {"GML", "CM2ML", "SUVBW", "SUVLBM", "SUVBSA", "SUVIBW"}


def _norm_units(units: str | None) -> str:
    return (units or "").strip().upper().replace(" ", "")


def _grid(volume: Volume) -> tuple[int, int]:
    return volume.shape[2], (volume.shape[3] if volume.data.ndim == 4 else 1)


def _as_kt(value, name: str, k: int, t: int) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    try:
        return np.broadcast_to(a, (k, t)).copy()
    except ValueError:
        raise ParameterError(f"meta.{name} has shape {a.shape}; expected one value per slice and frame, ({k}, {t})") from None


def _reference_times(meta: Meta, k: int, t: int) -> np.ndarray | None:
    """Decay-reference times as seconds after the injection, shape (k, t); None for ADMIN."""
    dc = (meta.decay_correction or "").upper()
    if not dc:
        raise MissingTagError("meta.decay_correction is unknown (DICOM DecayCorrection (0054,1102)): set it to START, "
                              "ADMIN or NONE")
    if dc not in ("START", "ADMIN", "NONE"):
        raise UnitsError(f"meta.decay_correction is {meta.decay_correction!r}; known are START, ADMIN and NONE")
    if dc == "ADMIN":
        return None
    inj = meta.tracer.injection_datetime if meta.tracer is not None else None
    if inj is None:
        raise ParameterError("the injection time is unknown: set meta.tracer.injection_datetime")
    if dc == "START":
        if meta.series_datetime is None:
            raise ParameterError("meta.series_datetime (the scan start, the START decay reference) is unknown")
        return np.full((k, t), (meta.series_datetime - inj).total_seconds())
    # NONE: each frame decays from its own start
    if meta.frame_start_s is not None and (t > 1 or len(meta.frame_start_s) == 1):
        if len(meta.frame_start_s) != t:
            raise ParameterError(f"meta.frame_start_s has {len(meta.frame_start_s)} values for {t} frames")
        if meta.series_datetime is None:
            raise ParameterError("meta.series_datetime is unknown: frame_start_s cannot be placed in time")
        base = (meta.series_datetime - inj).total_seconds()
        return np.broadcast_to(base + np.asarray(meta.frame_start_s, dtype=np.float64)[None, :], (k, t)).copy()
    when = meta.acquisition_datetime or meta.series_datetime
    if when is None or t > 1:
        raise ParameterError("decay correction is NONE but the acquisition times are unknown: set "
                             "meta.frame_start_s and meta.series_datetime")
    return np.full((k, t), (when - inj).total_seconds())


def _reference_activity_from_meta(meta: Meta, k: int, t: int) -> np.ndarray:
    tr = meta.tracer
    if tr is None or tr.injected_activity_bq is None:
        raise ParameterError("the injected activity is unknown: set meta.tracer.injected_activity_bq (Bq)")
    a = float(tr.injected_activity_bq)
    if not a > 0:
        raise ParameterError(f"meta.tracer.injected_activity_bq is {a:g}: must be positive (Bq)")
    dt = _reference_times(meta, k, t)
    if dt is None:
        return np.full((k, t), a)
    return a * np.exp2(-dt / _tracer_half_life(tr))


def _stored_kind_of_meta(meta: Meta, u: str) -> str:
    if u in ("GML", "CM2ML"):
        return _stored_suv_kind(u, (meta.extra or {}).get("suv_type"))
    if u == "SUVLBM":
        prev = (meta.extra.get("uptake") or {}).get("kind")
        return "lbm-janma" if prev == "lbm-janma" else "lbm"
    return {"SUVBW": "bw", "SUVBSA": "bsa", "SUVIBW": "ibw"}[u]


def _no_units_hint(meta: Meta) -> str | None:
    """For a NIfTI read without a sidecar: say so, since that is why the units are unknown."""
    nifti = meta.source.get("nifti")
    if meta.units is None and nifti and meta.source.get("sidecar", "") is None:
        return (f"{nifti}: no JSON sidecar beside it, so units, tracer and timing are unknown; write one "
                "(PET-BIDS keys), set meta.units and meta.tracer, or convert from DICOM with invivo convert")
    return None


def _unavailable(reason: str, error: str | None = None, what: str = "SUV") -> Exception:
    """The error recorded at load time, re-raised with its original class when known."""
    from . import errors

    cls = getattr(errors, error, None) if error else None
    if not (isinstance(cls, type) and issubclass(cls, errors.InvivoError)):
        cls = MissingTagError if re.search(r"\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)", reason) else UnitsError
    return cls(f"{what} is unavailable for this volume: {reason}")


def _norm_of_meta(meta: Meta, kind: str, notes: _Notes) -> float:
    s = meta.subject or Subject()
    return _normaliser(kind, s.weight_kg, s.height_m, s.sex, s.species, notes)


def _bw_route(meta: Meta, k: int, t: int, notes: _Notes) -> tuple[np.ndarray, str, str]:
    """(base factor (k, t), kind the base normalises to, source) for SUV.

    base_kind "activity" means values x base = C / A_ref (1/mL); a body normaliser
    turns it into SUV.
    """
    u = _norm_units(meta.units)
    if meta.suv_bw_factor is not None:
        return _as_kt(meta.suv_bw_factor, "suv_bw_factor", k, t), "bw", "meta.suv_bw_factor"
    if u in _STORED_SUV_UNITS:
        return np.ones((k, t)), _stored_kind_of_meta(meta, u), f"stored {meta.units}"
    if meta.suv_unavailable:
        raise _unavailable(meta.suv_unavailable, meta.extra.get("suv_unavailable_error"))
    if u in _ACTIVITY_UNITS:
        if meta.reference_activity_bq is not None:
            ref, src = _as_kt(meta.reference_activity_bq, "reference_activity_bq", k, t), "meta.reference_activity_bq"
        else:
            ref, src = _reference_activity_from_meta(meta, k, t), "metadata (tracer, timing)"
        return _ACTIVITY_UNITS[u] / ref, "activity", src
    raise UnitsError(_no_units_hint(meta) or f"units {meta.units!r} cannot be converted to SUV: needs activity "
                     "concentration (BQML), stored SUV (GML, CM2ML) or meta.suv_bw_factor")


def _apply(volume: Volume, factor_kt: np.ndarray):
    xp = get_array_module(volume.data)
    dtype = float_dtype(volume.data.dtype)
    f = xp.asarray(factor_kt, dtype=dtype)
    data = volume.data.astype(dtype, copy=False)
    if data.ndim == 4:
        return data * f[None, None, :, :]
    return data * f[None, None, :, 0]


def _jsonable(a: np.ndarray):
    a = np.asarray(a, dtype=np.float64)
    if a.size and np.all(a == a.flat[0]):
        return float(a.flat[0])
    return a.tolist()


def suv(volume: Volume, *, kind: str = "bw") -> Volume:
    """An SUV map of a PET/SPECT volume.

    Parameters
    ----------
    volume : Volume
        Activity concentration (units BQML / Bq/mL / kBq/mL), stored SUV (GML,
        CM2ML, SUVbw, ...) or CNTS with ``meta.suv_bw_factor``.  ``meta.suv_bw_factor``
        (shape (K, T): per slice and frame) is used when present; else the factor is
        computed from the metadata: ``meta.reference_activity_bq`` or
        ``tracer.injected_activity_bq``, ``tracer.injection_datetime``, the
        half-life, ``decay_correction`` (START: ``series_datetime``; ADMIN: the
        injection; NONE: ``series_datetime + frame_start_s``).
    kind : {"bw", "lbm", "lbm-janma", "bsa", "ibw"}
        See :func:`body_normaliser`.

    Returns
    -------
    Volume
        Units "SUVbw", "SUVlbm", "SUVbsa" (cm²/mL) or "SUVibw"; float32 if the input
        is float32, else float64, on the input's device.  ``meta.extra["uptake"]``
        records the kind, the factor(s) and their source.  A syringe residual in
        ``meta.tracer`` is subtracted from the injected activity.

    Raises
    ------
    UnitsError, MissingTagError
        The values cannot be turned into SUV (``meta.suv_unavailable`` says why).
    ParameterError
        Missing or impossible metadata (weight, injection, ...).

    Examples
    --------
    >>> import numpy as np
    >>> from datetime import datetime
    >>> m = Meta(modality="PT", units="BQML", decay_correction="ADMIN",
    ...          tracer=Tracer(injected_activity_bq=1e6), subject=Subject(weight_kg=0.025))
    >>> v = Volume(np.full((2, 2, 1), 4e4, np.float32), np.eye(4), m)
    >>> float(suv(v).data[0, 0, 0])
    1.0
    """
    kind = _check_kind(kind)
    k, t = _grid(volume)
    meta = volume.meta
    notes = _Notes()
    base, base_kind, source = _bw_route(meta, k, t, notes)
    factor = base
    norm_kind = None
    if base_kind != kind:
        norm_kind = _norm_of_meta(meta, kind, notes)
        norm_base = 1.0 if base_kind == "activity" else _norm_of_meta(meta, base_kind, notes)
        factor = base * (norm_kind / norm_base)
    elif kind != "bw":
        # values stored as SUVlbm / SUVibw / SUVbsa are only trusted with the body data they were made
        # from (IBSI DRO_error_2_2..2_5): the normaliser must be computable
        norm_kind = _norm_of_meta(meta, kind, notes)
    r = _residual_fraction(meta, notes)
    factor = factor / r
    data = _apply(volume, factor)
    unit = _UNIT_OF_KIND[kind]
    new = meta.copy(units=unit, suv_bw_factor=None, reference_activity_bq=None, suv_unavailable=None)
    new.extra["uptake"] = {
        "quantity": "SUV", "kind": kind, "unit": unit, "input_units": meta.units,
        "factor": _jsonable(factor), "factor_source": source,
        "body_normaliser": norm_kind, "body_normaliser_unit": "cm2" if kind == "bsa" else "g",
        "residual_fraction": r, "residual_applied": r != 1.0 or bool((meta.extra.get("uptake") or {}).get("residual_applied")),
    }
    for msg in notes:
        if msg not in new.assumptions:
            new.assumptions.append(msg)
    _emit(notes, None)
    return Volume(data, volume.affine, new)


def percent_id(volume: Volume, *, per: str = "g", density_g_per_ml: float = 1.0) -> Volume:
    """A %ID/g or %ID/cc map: C (Bq/mL) / A_ref (Bq) x 100 (/ density for %ID/g).

    Parameters
    ----------
    volume : Volume
        BQML (or Bq/mL, kBq/mL): A_ref from ``meta.reference_activity_bq`` or from
        the metadata (tracer, timing) -- the body weight is not needed; stored SUV
        (GML, CM2ML, SUV*): SUV / normaliser x 100 (needs the body measures);
        CNTS with ``meta.suv_bw_factor``: value x factor / weight x 100.
    per : {"g", "cc"}
        Per gram of tissue or per mL.
    density_g_per_ml : float
        Tissue density for %ID/g (1.0 by default, as is usual preclinically).

    Returns
    -------
    Volume
        Units "%ID/g" or "%ID/cc"; float32 if the input is float32, else float64,
        on the input's device.  ``meta.extra["uptake"]`` records the factor(s).

    Examples
    --------
    >>> import numpy as np
    >>> m = Meta(modality="PT", units="BQML", decay_correction="ADMIN", tracer=Tracer(injected_activity_bq=1e6))
    >>> v = Volume(np.full((2, 2, 1), 4e4), np.eye(4), m)
    >>> round(float(percent_id(v).data[0, 0, 0]), 9)
    4.0
    """
    if per not in ("g", "cc"):
        raise ParameterError(f"per must be 'g' or 'cc', got {per!r}")
    d = float(density_g_per_ml)
    if not (math.isfinite(d) and d > 0):
        raise ParameterError(f"density_g_per_ml must be a positive number, got {density_g_per_ml!r}")
    k, t = _grid(volume)
    meta = volume.meta
    notes = _Notes()
    u = _norm_units(meta.units)
    if u in _ACTIVITY_UNITS:
        if meta.reference_activity_bq is not None:
            ref, source = _as_kt(meta.reference_activity_bq, "reference_activity_bq", k, t), "meta.reference_activity_bq"
            g = _ACTIVITY_UNITS[u] / ref
        else:
            try:
                ref = _reference_activity_from_meta(meta, k, t)
                g, source = _ACTIVITY_UNITS[u] / ref, "metadata (tracer, timing)"
            except InvivoError as exc:
                if meta.suv_bw_factor is None:
                    reason = meta.extra.get("percent_id_unavailable")
                    if reason:  # the header problem found at load time says more than the metadata does
                        raise _unavailable(reason, meta.extra.get("percent_id_unavailable_error"), "%ID") from exc
                    raise
                g = _as_kt(meta.suv_bw_factor, "suv_bw_factor", k, t) / _norm_of_meta(meta, "bw", notes)
                source = "meta.suv_bw_factor / weight"
    elif u in _STORED_SUV_UNITS:
        sk = _stored_kind_of_meta(meta, u)
        g = np.full((k, t), 1.0 / _norm_of_meta(meta, sk, notes))
        source = f"stored {meta.units} / body normaliser"
    elif meta.suv_bw_factor is not None:
        g = _as_kt(meta.suv_bw_factor, "suv_bw_factor", k, t) / _norm_of_meta(meta, "bw", notes)
        source = "meta.suv_bw_factor / weight"
    elif meta.suv_unavailable:
        raise _unavailable(meta.suv_unavailable, meta.extra.get("suv_unavailable_error"), "%ID")
    else:
        raise UnitsError(_no_units_hint(meta) or f"units {meta.units!r} cannot be converted to %ID: needs activity "
                         "concentration (BQML), stored SUV (GML, CM2ML) or meta.suv_bw_factor")
    r = _residual_fraction(meta, notes)
    factor = g * 100.0 / r
    if per == "g":
        factor = factor / d
    unit = "%ID/g" if per == "g" else "%ID/cc"
    data = _apply(volume, factor)
    new = meta.copy(units=unit, suv_bw_factor=None, reference_activity_bq=None,
                    suv_unavailable=f"values are {unit}; compute SUV from the activity-concentration volume")
    new.extra["uptake"] = {
        "quantity": unit, "unit": unit, "input_units": meta.units, "factor": _jsonable(factor),
        "factor_source": source, "density_g_per_ml": d if per == "g" else None,
        "residual_fraction": r, "residual_applied": r != 1.0 or bool((meta.extra.get("uptake") or {}).get("residual_applied")),
    }
    for msg in notes:
        if msg not in new.assumptions:
            new.assumptions.append(msg)
    _emit(notes, None)
    return Volume(data, volume.affine, new)


def compute(volume: Volume, unit: str) -> Volume:
    """The uptake map named by a CLI unit (``invivo uptake --unit``).

    Parameters
    ----------
    volume : Volume
    unit : str
        One of :data:`UNIT_KINDS`: suv (the kind an image already stored as SUV has --
        GML/CM2ML with SUV Type -- else SUVbw), suvbw, suvlbm, suvlbmjanma, suvbsa,
        suvibw, idg (%ID/g), idcc (%ID/cc).
    """
    spec = UNIT_KINDS.get(str(unit).lower())
    if spec is None:
        raise ParameterError(f"unit must be one of {', '.join(UNIT_KINDS)}; got {unit!r}")
    if spec["quantity"] == "suv":
        kind = spec["kind"]
        if kind == "native":  # an image already in SUV keeps its kind (validated); activity gives SUVbw
            u = _norm_units(volume.meta.units)
            kind = _stored_kind_of_meta(volume.meta, u) if u in _STORED_SUV_UNITS else "bw"
        return suv(volume, kind=kind)
    return percent_id(volume, per=spec["per"])


def write_uptake(path, out, *, unit: str = "suv", series=None, overwrite: bool = False) -> Path:
    """Load a PET/SPECT series, compute ``unit`` (see :func:`compute`) and save it as NIfTI + sidecar.

    Returns the output path.
    """
    from . import io

    vol = io.load(path, series=series)
    res = compute(vol, unit)
    io.save(res, out, overwrite=overwrite, inputs=[path], parameters={"unit": unit, "series": series})
    return Path(out)
