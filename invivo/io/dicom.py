"""DICOM ingestion: find series under a folder tree (``scan``) and load one as a Volume (``load_dicom``).

Every image file is expanded into 2D *frames* (a classic single-frame file is one
frame; an enhanced multi-frame object, an NM multi-frame file or a Siemens mosaic
is many), each with its own position, orientation, rescale, echo and timing.  One
assembler then groups the frames of a series by echo and time, sorts them along
the slice normal (never by InstanceNumber), checks the spacing and builds the
RAS+ affine.  That keeps the geometry rules in one place for every modality.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import DicomError, GeometryError, InvivoError, InvivoWarning, MissingTagError, ParameterError
from ..isotopes import count_average_time_s
from ..volume import LPS_TO_RAS, Meta, Subject, Tracer, Volume
from ._fastdcm import FastHeader, read_fast

__all__ = ["scan", "load_dicom", "read_headers", "parse_datetime", "series_key"]

log = logging.getLogger(__name__)

_DICOMDIR_UID = "1.2.840.10008.1.3.10"
_NON_IMAGE_MODALITIES = {"RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "SEG", "REG", "RTRECORD", "DOC"}


# ----------------------------------------------------------------------------- time
def parse_datetime(date: str | None = None, time: str | None = None, *, dt: str | None = None) -> datetime | None:
    """Parse DICOM DA + TM, or DT, into a naive ``datetime`` (local scanner time; a DT UTC offset is dropped).

    Returns None when the inputs are empty; raises ValueError on malformed text.
    """
    from ..dicomtime import combine, parse_dt

    if dt:
        out = parse_dt(dt)
        if out is None:
            raise ValueError(f"bad DICOM datetime {dt!r}")
        return out
    if not date or not time:
        return None
    out = combine(date, time)
    if out is None:
        raise ValueError(f"bad DICOM date/time {date!r} {time!r}")
    return out


def _dt_attr(ds: Dataset, date_kw: str, time_kw: str, dt_kw: str | None = None) -> datetime | None:
    try:
        if dt_kw and ds.get(dt_kw):
            return parse_datetime(dt=str(ds.get(dt_kw)))
        return parse_datetime(ds.get(date_kw), ds.get(time_kw))
    except ValueError as exc:
        raise DicomError(f"{_fname(ds)}: unreadable {date_kw}/{time_kw} ({exc}); fix the header") from None


def _fname(ds: Dataset) -> str:
    return str(getattr(ds, "filename", None) or "<dataset>")


def _float(ds: Dataset, kw: str, default=None):
    v = ds.get(kw)
    if v is None or v == "":
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


# ----------------------------------------------------------------------------- reading
def _iter_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.exists():
        raise DicomError(f"{path}: no such file or folder")
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for n in sorted(names):
            if not n.startswith("."):
                files.append(Path(root) / n)
    return files


def _progress(iterable, total: int, desc: str):
    if total < 200 or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="file", leave=False)


def read_headers(path: str | os.PathLike, *, pixels: bool = False) -> tuple[list[Dataset], list[Path]]:
    """Read the DICOM headers of every file under ``path``.

    Returns the image/object datasets and the list of skipped files (not DICOM,
    DICOMDIR).  With ``pixels=True`` the pixel data are read lazily (deferred).
    """
    path = Path(path)
    files = _iter_files(path)
    datasets, skipped = [], []
    for f in _progress(files, len(files), "reading headers"):
        ds = read_fast(f)
        if ds is not None:
            if ds.media_sop_class == _DICOMDIR_UID:
                skipped.append(f)
                continue
            datasets.append(ds)
            continue
        try:
            if pixels:
                ds = pydicom.dcmread(f, defer_size="64 KB")
            else:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, struct.error, ValueError, TypeError, KeyError, AttributeError,
                NotImplementedError):
            skipped.append(f)
            continue
        sop = str(getattr(ds.get("file_meta", Dataset()), "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
        if sop == _DICOMDIR_UID or "DirectoryRecordSequence" in ds:
            skipped.append(f)
            continue
        datasets.append(ds)
    return datasets, skipped


def _image_flavour(ds: Dataset) -> str:
    """'M' magnitude, 'P' phase, 'R'/'I' real/imaginary from ImageType; '' when not stated."""
    it = [str(x).upper() for x in (ds.get("ImageType") or [])]
    for code, names in (("P", ("P", "PHASE")), ("R", ("R", "REAL")), ("I", ("I", "IMAGINARY"))):
        if any(x in names for x in it[2:]):
            return code
    if ds.get("ComplexImageComponent"):
        return str(ds.ComplexImageComponent)[0].upper()
    return "M" if any(x in ("M", "MAGNITUDE") for x in it[2:]) else ""


def series_key(ds: Dataset) -> tuple[str, str]:
    """A series is its SeriesInstanceUID, with magnitude and phase kept apart."""
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if not uid:
        raise MissingTagError(f"{_fname(ds)}: no (0020,000E) SeriesInstanceUID; the file cannot be assigned to a series")
    flav = _image_flavour(ds) if str(ds.get("Modality", "")) == "MR" else ""
    return uid, ("" if flav == "M" else flav)


# ----------------------------------------------------------------------------- scan
def _group(datasets: Iterable[Dataset]) -> dict[tuple[str, str], list[Dataset]]:
    groups: dict[tuple[str, str], list[Dataset]] = defaultdict(list)
    for ds in datasets:
        try:
            groups[series_key(ds)].append(ds)
        except MissingTagError:
            continue
    return groups


def _ordered_keys(groups: dict) -> list:
    """Series in the order of :func:`scan`'s rows (subject, study date, series number, modality, UID, flavour).

    ``scan(...)`` row ``i`` and ``load(..., series=i)`` refer to the same series because both use this.
    """
    def key(k):
        ds = groups[k][0]
        num = ds.get("SeriesNumber")
        try:
            num = int(num)
        except (TypeError, ValueError):
            num = None
        return (str(ds.get("PatientID", "") or "\uffff"), str(ds.get("StudyDate", "") or "\uffff"),
                (0, num) if num is not None else (1, 0), str(ds.get("Modality", "")), k[0], k[1])

    return sorted(groups, key=key)


def _is_image_series(dss) -> bool:
    return str(dss[0].get("Modality", "")) not in _NON_IMAGE_MODALITIES and "PixelData" in dss[0]


def _tracer_summary(ds: Dataset) -> tuple[str | None, str | None]:
    from .. import isotopes

    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        return None, None
    item = seq[0]
    rp = item.get("Radiopharmaceutical")
    code = item.get("RadionuclideCodeSequence")
    meaning = code[0].get("CodeMeaning") if code else None
    value = code[0].get("CodeValue") if code else None
    iso = isotopes.find(meaning, value, rp)
    return (str(rp) if rp else None), (iso.name if iso else (str(meaning) if meaning else None))


def _summary_row(key, dss: list[Dataset]) -> dict:
    """A scan row; a series whose headers cannot be summarised is listed with the reason, not fatal."""
    try:
        return _summarise(key, dss)
    except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError, InvivoError) as exc:
        ds = dss[0]
        return {"subject_id": str(ds.get("PatientID", "")) or None, "modality": str(ds.get("Modality", "")) or None,
                "n_files": len(dss), "series_uid": key[0], "flavour": key[1],
                "folder": str(Path(_fname(ds)).parent), "error": f"{_fname(ds)}: {type(exc).__name__}: {exc}"}


def _parametric_map_units(ds: Dataset) -> str | None:
    """The unit of a Parametric Map's real-world value mapping (invivo's name for it where there is one)."""
    from .dicom_export import _UNIT_OF_UCUM

    groups = ds.get("SharedFunctionalGroupsSequence") or ds.get("PerFrameFunctionalGroupsSequence") or []
    for g in groups[:1]:
        for m in g.get("RealWorldValueMappingSequence") or []:
            for u in m.get("MeasurementUnitsCodeSequence") or []:
                ucum = str(u.get("CodeValue", ""))
                return _UNIT_OF_UCUM.get(ucum, ucum or None)
    return None


def _summarise(key, dss: list[Dataset]) -> dict:
    ds = dss[0]
    n_frames_total = sum(int(d.get("NumberOfFrames", 1) or 1) for d in dss)
    positions = set()
    echoes = set()
    times = set()
    for d in dss:
        ipp = d.get("ImagePositionPatient")
        if ipp is not None:
            positions.add(tuple(round(float(x), 3) for x in ipp))
        if d.get("EchoTime") not in (None, ""):
            echoes.add(round(float(d.EchoTime), 4))
        if d.get("FrameReferenceTime") is not None:
            times.add((round(float(d.FrameReferenceTime), 1), d.get("ActualFrameDuration")))
        elif d.get("AcquisitionNumber") is not None and ds.get("Modality") != "PT":
            times.add(d.get("AcquisitionNumber"))
    n_frames = len(times) or 1
    if int(ds.get("NumberOfTimeSlices", 0) or 0) > 1:
        n_frames = int(ds.NumberOfTimeSlices)
    n_slices = len(positions) if positions else n_frames_total
    if "MOSAIC" in [str(x).upper() for x in (ds.get("ImageType") or [])] and ds.get((0x0019, 0x100A)) is not None:
        n_slices = int(ds[(0x0019, 0x100A)].value)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 and len(dss) == 1:
        n_slices = int(ds.get("NumberOfSlices", 0) or 0) or n_frames_total
    rp, iso = _tracer_summary(ds)
    units = str(ds.get("Units", "")) or None
    sop = str(ds.get("SOPClassUID", ""))
    if sop == "1.2.840.10008.5.1.4.1.1.66.4" and ds.get("SegmentSequence"):  # SEG: frames = segments x slices
        n_slices = max(n_frames_total // len(ds.SegmentSequence), 1)
    elif sop == "1.2.840.10008.5.1.4.1.1.30" and units is None:  # Parametric Map: the real-world value unit
        units = _parametric_map_units(ds)
    folders = {str(Path(getattr(d, "filename", "")).parent) for d in dss}
    return {
        "subject_id": str(ds.get("PatientID", "")) or None,
        "study_date": str(ds.get("StudyDate", "")) or None,
        "modality": str(ds.get("Modality", "")) or None,
        "description": str(ds.get("SeriesDescription", "")) or None,
        "series_number": int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None,
        "image_type": "\\".join(str(x) for x in (ds.get("ImageType") or [])) or None,
        "n_files": len(dss),
        "n_slices": n_slices,
        "n_frames": n_frames,
        "n_echoes": max(len(echoes), 1) if ds.get("Modality") == "MR" else 1,
        "radiopharmaceutical": rp,
        "isotope": iso,
        "units": units,
        "rows": int(ds.get("Rows", 0) or 0),
        "columns": int(ds.get("Columns", 0) or 0),
        "study_uid": str(ds.get("StudyInstanceUID", "")) or None,
        "series_uid": key[0],
        "flavour": key[1],
        "folder": os.path.commonpath(sorted(folders)) if folders else None,
    }


def scan(path: str | os.PathLike):
    """Find every DICOM series under ``path`` (headers only).

    Parameters
    ----------
    path : str or Path
        A folder tree (any depth; non-DICOM files and DICOMDIR are skipped and
        counted) or a single file.

    Returns
    -------
    pandas.DataFrame
        One row per series, ordered by subject, study date, series number: subject_id,
        study_date, modality, description, series_number, image_type, n_files, n_slices,
        n_frames, n_echoes, radiopharmaceutical, isotope, units, rows, columns,
        study_uid, series_uid, flavour ('' magnitude/other, 'P' phase, ...), folder.
        ``df.attrs["skipped_files"]`` counts skipped files.
    """
    import pandas as pd

    datasets, skipped = read_headers(path)
    groups = _group(datasets)
    rows = [_summary_row(k, groups[k]) for k in _ordered_keys(groups)]
    cols = ["subject_id", "study_date", "modality", "description", "series_number", "image_type", "n_files",
            "n_slices", "n_frames", "n_echoes", "radiopharmaceutical", "isotope", "units", "rows", "columns",
            "study_uid", "series_uid", "flavour", "folder"]
    df = pd.DataFrame(rows, columns=cols + ["error"])
    if not df["error"].notna().any():
        df = df.drop(columns="error")
    df.attrs["skipped_files"] = len(skipped)
    df.attrs["path"] = str(path)
    return df


# ----------------------------------------------------------------------------- frames
@dataclass
class _Frame:
    ds: Dataset  # the file's dataset (shared by the frames of a multi-frame file)
    index: int | None  # frame number inside a multi-frame file, None for single frame
    tile: int | None  # mosaic tile number
    position: np.ndarray  # LPS mm of the first transmitted pixel
    orientation: np.ndarray  # (6,) row and column direction cosines
    spacing: tuple[float, float]  # (row spacing = between rows, column spacing) mm
    shape: tuple[int, int]  # (rows, columns)
    slope: float
    intercept: float
    echo_time_s: float | None
    echo_number: int | None
    order: tuple  # ranks frames at one position in time
    acq_datetime: datetime | None
    duration_s: float | None = None
    extra: dict = field(default_factory=dict)

    @cached_property
    def time_id(self) -> tuple:
        """What makes two images at one position and echo different acquisitions (not InstanceNumber)."""
        ds = self.ds
        if self.index is not None:
            return self.order
        return (_float(ds, "FrameReferenceTime"), _float(ds, "ActualFrameDuration"),
                self.acq_datetime, ds.get("AcquisitionNumber"), ds.get("TemporalPositionIdentifier"),
                ds.get("ImageIndex") if str(ds.get("Modality", "")) != "PT" else None)

    @property
    def file(self) -> str:
        return _fname(self.ds)


def _seq_item(container, kw):
    seq = container.get(kw) if container is not None else None
    return seq[0] if seq else None


def _csa_tags(ds: Dataset, tag=(0x0029, 0x1010)) -> dict[str, list[str]]:
    """Parse a Siemens CSA header (SV10 format) into {name: [values]}."""
    el = ds.get(tag)
    if el is None:
        return {}
    raw = bytes(el.value)
    out: dict[str, list[str]] = {}
    try:
        if raw[:4] != b"SV10":
            return {}
        n = struct.unpack_from("<I", raw, 8)[0]
        pos = 16
        for _ in range(n):
            name = raw[pos:pos + 64].split(b"\0", 1)[0].decode("latin-1")
            nitems = struct.unpack_from("<i", raw, pos + 76)[0]
            pos += 84
            vals = []
            for _ in range(nitems):
                length = struct.unpack_from("<i", raw, pos + 4)[0]
                pos += 16
                if length:
                    vals.append(raw[pos:pos + length].split(b"\0", 1)[0].decode("latin-1").strip())
                pos += (length + 3) // 4 * 4
            out[name] = vals
    except (struct.error, UnicodeDecodeError):
        return out
    return out


def _common_frame_fields(ds: Dataset) -> dict:
    echo = _float(ds, "EchoTime")
    en = ds.get("EchoNumbers")
    if en is not None and not isinstance(en, (int, float)):
        en = en[0] if len(en) else None
    return {
        "echo_time_s": echo / 1000.0 if echo is not None else None,
        "echo_number": int(en) if en not in (None, "") else None,
    }


def _order_key(ds: Dataset, acq: datetime | None) -> tuple:
    ts = acq.timestamp() if acq else 0.0
    if str(ds.get("Modality", "")) in ("PT",):
        return (_float(ds, "FrameReferenceTime", 0.0), ts, int(ds.get("ImageIndex", 0) or 0))
    return (int(ds.get("TemporalPositionIdentifier", 0) or 0), int(ds.get("AcquisitionNumber", 0) or 0), ts,
            int(ds.get("InstanceNumber", 0) or 0))


def _frames_of(ds: Dataset) -> list[_Frame]:
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds)
    if str(ds.get("Modality", "")) == "NM" or (nframes > 1 and "DetectorInformationSequence" in ds):
        return _nm_frames(ds)
    if nframes > 1:
        raise DicomError(f"{_fname(ds)}: multi-frame {ds.get('SOPClassUID', '')!s} without per-frame functional "
                         "groups is not supported; export it as single-frame images")
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if ds.get(kw) in (None, ""):
            raise MissingTagError(f"{_fname(ds)}: no {kw}; invivo needs the image geometry tags "
                                  "(0020,0032) ImagePositionPatient, (0020,0037) ImageOrientationPatient, (0028,0030) PixelSpacing")
    pos = np.array([float(x) for x in ds.ImagePositionPatient])
    iop = np.array([float(x) for x in ds.ImageOrientationPatient])
    sp = tuple(float(x) for x in ds.PixelSpacing)
    acq = _dt_attr(ds, "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime") or \
        _dt_attr(ds, "ContentDate", "ContentTime")
    if acq is None and ds.get("AcquisitionTime"):
        acq = parse_datetime(ds.get("SeriesDate") or ds.get("StudyDate"), ds.get("AcquisitionTime"))
    common = _common_frame_fields(ds)
    slope = _float(ds, "RescaleSlope", 1.0)
    inter = _float(ds, "RescaleIntercept", 0.0)
    dur = _float(ds, "ActualFrameDuration")
    it = [str(x).upper() for x in (ds.get("ImageType") or [])]
    if "MOSAIC" in it:
        return _mosaic_frames(ds, pos, iop, sp, slope, inter, acq, common)
    return [_Frame(ds, None, None, pos, iop, sp, (int(ds.Rows), int(ds.Columns)), slope, inter,
                   common["echo_time_s"], common["echo_number"], _order_key(ds, acq), acq,
                   dur / 1000.0 if dur is not None else None)]


def _mosaic_frames(ds, pos, iop, sp, slope, inter, acq, common) -> list[_Frame]:
    n = ds.get((0x0019, 0x100A))
    n = int(n.value) if n is not None else None
    csa = _csa_tags(ds)
    if n is None and csa.get("NumberOfImagesInMosaic"):
        n = int(float(csa["NumberOfImagesInMosaic"][0]))
    if not n:
        raise MissingTagError(f"{_fname(ds)}: Siemens MOSAIC without (0019,100A) NumberOfImagesInMosaic; convert it with the scanner's export")
    m = int(math.ceil(math.sqrt(n)))
    rows, cols = int(ds.Rows) // m, int(ds.Columns) // m
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    if csa.get("SliceNormalVector") and len(csa["SliceNormalVector"]) == 3:
        snv = np.array([float(x) for x in csa["SliceNormalVector"]])
        if np.dot(snv, normal) < 0:
            normal = -normal
    step = _float(ds, "SpacingBetweenSlices") or _float(ds, "SliceThickness")
    if not step:
        raise MissingTagError(f"{_fname(ds)}: MOSAIC without (0018,0088) SpacingBetweenSlices")
    # ImagePositionPatient of a mosaic is the corner of the whole mosaic; move it to the first tile.
    p0 = pos + row_dir * sp[1] * (int(ds.Columns) - cols) / 2.0 + col_dir * sp[0] * (int(ds.Rows) - rows) / 2.0
    frames = []
    for t in range(n):
        frames.append(_Frame(ds, None, t, p0 + t * step * normal, iop, sp, (rows, cols), slope, inter,
                             common["echo_time_s"], common["echo_number"], _order_key(ds, acq), acq))
    return frames


def _enhanced_frames(ds: Dataset) -> list[_Frame]:
    shared = _seq_item(ds, "SharedFunctionalGroupsSequence") or Dataset()
    frames = []
    n = int(ds.get("NumberOfFrames", 1) or 1)
    perframe = ds.PerFrameFunctionalGroupsSequence
    if len(perframe) != n:
        raise DicomError(f"{_fname(ds)}: NumberOfFrames is {n} but PerFrameFunctionalGroupsSequence has {len(perframe)} items")

    def find(item, seq_kw, kw):
        for container in (item, shared):
            sub = _seq_item(container, seq_kw)
            if sub is not None and sub.get(kw) not in (None, ""):
                return sub.get(kw)
        return None

    for f, item in enumerate(perframe):
        ipp = find(item, "PlanePositionSequence", "ImagePositionPatient")
        iop = find(item, "PlaneOrientationSequence", "ImageOrientationPatient")
        ps = find(item, "PixelMeasuresSequence", "PixelSpacing")
        if ipp is None or iop is None or ps is None:
            raise MissingTagError(f"{_fname(ds)}: frame {f + 1} lacks PlanePosition/PlaneOrientation/PixelMeasures functional groups")
        slope = find(item, "PixelValueTransformationSequence", "RescaleSlope")
        inter = find(item, "PixelValueTransformationSequence", "RescaleIntercept")
        if slope is None:
            slope = ds.get("RescaleSlope", 1.0)
            inter = ds.get("RescaleIntercept", 0.0)
        te = find(item, "MREchoSequence", "EffectiveEchoTime")
        if te is None:
            te = ds.get("EchoTime")
        content = _seq_item(item, "FrameContentSequence") or Dataset()
        acq = None
        if content.get("FrameAcquisitionDateTime"):
            acq = parse_datetime(dt=str(content.FrameAcquisitionDateTime))
        dur = content.get("FrameAcquisitionDuration")
        idx = content.get("DimensionIndexValues")
        temporal = int(content.get("TemporalPositionIndex", 0) or 0)
        order = (temporal, acq.timestamp() if acq else 0.0, f)
        fr = _Frame(ds, f, None, np.array([float(x) for x in ipp]), np.array([float(x) for x in iop]),
                    tuple(float(x) for x in ps), (int(ds.Rows), int(ds.Columns)), float(slope), float(inter or 0.0),
                    float(te) / 1000.0 if te not in (None, "") else None, None, order, acq,
                    float(dur) / 1000.0 if dur not in (None, "") else None)
        fr.extra["dimension_index"] = tuple(idx) if idx is not None and not isinstance(idx, int) else idx
        frames.append(fr)
    # echo numbers from the distinct effective echo times
    tes = sorted({round(fr.echo_time_s, 9) for fr in frames if fr.echo_time_s is not None})
    for fr in frames:
        if fr.echo_time_s is not None and len(tes) > 1:
            fr.echo_number = tes.index(round(fr.echo_time_s, 9)) + 1
    return frames


def _nm_frames(ds: Dataset) -> list[_Frame]:
    det = _seq_item(ds, "DetectorInformationSequence") or Dataset()
    iop = det.get("ImageOrientationPatient") or ds.get("ImageOrientationPatient")
    ipp = det.get("ImagePositionPatient") or ds.get("ImagePositionPatient")
    ps = ds.get("PixelSpacing")
    if iop is None or ipp is None or ps is None:
        raise MissingTagError(f"{_fname(ds)}: NM image lacks ImageOrientationPatient/ImagePositionPatient (in DetectorInformationSequence) "
                              "or PixelSpacing; only reconstructed tomographic NM (SPECT) can be loaded as a volume")
    iop = np.array([float(x) for x in iop])
    pos = np.array([float(x) for x in ipp])
    n = int(ds.get("NumberOfFrames", 1) or 1)
    step = _float(ds, "SpacingBetweenSlices") or _float(ds, "SliceThickness")
    if n > 1 and not step:
        raise MissingTagError(f"{_fname(ds)}: NM multi-frame without (0018,0088) SpacingBetweenSlices or SliceThickness")
    fip = ds.get("FrameIncrementPointer")
    pointers = [fip] if fip is not None and not isinstance(fip, (list, tuple)) and not hasattr(fip, "__len__") else list(fip or [])
    names = [pydicom.datadict.keyword_for_tag(int(t)) for t in pointers]
    if n > 1 and names and names != ["SliceVector"]:
        raise DicomError(f"{_fname(ds)}: NM frames vary by {', '.join(names)} (FrameIncrementPointer); only "
                         "reconstructed tomographic images whose frames are slices (SliceVector) can be loaded as a volume")
    normal = np.cross(iop[:3], iop[3:])
    acq = _dt_attr(ds, "AcquisitionDate", "AcquisitionTime") or _dt_attr(ds, "SeriesDate", "SeriesTime")
    slope = _float(ds, "RescaleSlope", 1.0)
    inter = _float(ds, "RescaleIntercept", 0.0)
    return [_Frame(ds, f, None, pos + f * (step or 0.0) * normal, iop, tuple(float(x) for x in ps),
                   (int(ds.Rows), int(ds.Columns)), slope, inter, None, None, (0,), acq) for f in range(n)]


# ----------------------------------------------------------------------------- pixels
def _pixels(ds, cache: dict) -> np.ndarray:
    key = id(ds)
    if key not in cache:
        try:
            arr = ds.pixels() if isinstance(ds, FastHeader) else ds.pixel_array
        except Exception as exc:  # truncated, unsupported compression, missing handler
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            hint = (f"; it is compressed ({ts.name}): install the decoders with pip install 'invivo[codecs]'"
                    if ts is not None and ts.is_compressed else "; the file may be truncated")
            raise DicomError(f"{_fname(ds)}: pixel data cannot be decoded ({type(exc).__name__}: {exc}){hint}") from None
        if len(cache) > 8:
            cache.clear()
        cache[key] = arr
    return cache[key]


def _frame_pixels(fr: _Frame, cache: dict) -> np.ndarray:
    arr = _pixels(fr.ds, cache)
    if fr.index is not None and int(fr.ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[fr.index]
    if fr.tile is not None:
        rows, cols = fr.shape
        m = int(fr.ds.Columns) // cols
        r, c = divmod(fr.tile, m)
        arr = arr[r * rows:(r + 1) * rows, c * cols:(c + 1) * cols]
    if arr.shape != fr.shape:
        raise DicomError(f"{fr.file}: pixel data shape {arr.shape} does not match Rows x Columns {fr.shape}")
    return arr


# ----------------------------------------------------------------------------- assembly
def _check_consistent(frames: list[_Frame]) -> None:
    orient = np.array([fr.orientation for fr in frames])
    bad = np.nonzero(np.abs(orient - orient[0]).max(axis=1) > 1e-4)[0]
    if len(bad):
        fr = frames[int(bad[0])]
        raise GeometryError(f"mixed orientations in one series: {frames[0].file} has ImageOrientationPatient "
                            f"{np.round(orient[0], 4).tolist()} but {fr.file} has {np.round(fr.orientation, 4).tolist()}; "
                            "load the orientations as separate series")
    s0, sp0 = frames[0].shape, frames[0].spacing
    spacing = np.array([fr.spacing for fr in frames])
    for i in np.nonzero([fr.shape != s0 for fr in frames])[0][:1]:
        raise GeometryError(f"mixed image sizes in one series: {frames[0].file} is {s0}, {frames[i].file} is {frames[i].shape}")
    bad = np.nonzero(np.abs(spacing / spacing[0] - 1.0).max(axis=1) > 1e-4)[0]
    if len(bad):
        fr = frames[int(bad[0])]
        raise GeometryError(f"mixed PixelSpacing in one series: {frames[0].file} {sp0}, {fr.file} {fr.spacing}")


def _echo_key(fr: _Frame):
    if fr.echo_number is not None:
        return (fr.echo_number, round(fr.echo_time_s or 0.0, 9))
    return (0, round(fr.echo_time_s, 9) if fr.echo_time_s is not None else 0.0)


def _dedupe(frames_at_pos: list[_Frame], cache: dict) -> list[_Frame]:
    """Drop exact duplicates (same position, echo and time, identical pixels); differing ones are an error."""
    out: list[_Frame] = []
    seen: dict = {}
    for fr in frames_at_pos:
        dup = seen.get(fr.time_id)
        if dup is None:
            seen[fr.time_id] = fr
            out.append(fr)
            continue
        a, b = _frame_pixels(dup, cache), _frame_pixels(fr, cache)
        if a.shape == b.shape and np.array_equal(a * dup.slope + dup.intercept, b * fr.slope + fr.intercept):
            warnings.warn(f"duplicate slice skipped: {fr.file} repeats {dup.file}", InvivoWarning, stacklevel=4)
            continue
        raise DicomError(f"two slices at one position with different data: {dup.file} and {fr.file} "
                         f"(position {np.round(fr.position, 3).tolist()} mm); remove the wrong one or load them as separate series")
    return out


def _assemble(frames: list[_Frame], *, uneven: str, allow_tilt: bool, cache: dict) -> tuple:
    _check_consistent(frames)
    iop = frames[0].orientation
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise GeometryError(f"{frames[0].file}: ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors")
    # group by distinct slice position (to 1 micron along the normal, checked in-plane below)
    d = np.array([fr.position @ normal for fr in frames])
    order = np.argsort(d, kind="stable")
    groups: list[list[_Frame]] = []
    gpos: list[float] = []
    for idx in order:
        if groups and abs(d[idx] - gpos[-1]) < 1e-3:
            groups[-1].append(frames[idx])
        else:
            groups.append([frames[idx]])
            gpos.append(float(d[idx]))
    # at one position, frames differ by echo and time
    per_pos: list[dict] = []
    for g in groups:
        by_echo: dict = defaultdict(list)
        for fr in g:
            by_echo[_echo_key(fr)].append(fr)
        for k in by_echo:
            by_echo[k] = _dedupe(sorted(by_echo[k], key=lambda f: f.order), cache)
        per_pos.append(by_echo)
    echo_keys = sorted({k for p in per_pos for k in p})
    expected = {k: max(len(p.get(k, [])) for p in per_pos) for k in echo_keys}
    for i, p in enumerate(per_pos):
        for k in echo_keys:
            if len(p.get(k, [])) != expected[k]:
                raise GeometryError(
                    f"slice at {gpos[i]:.3f} mm along the normal has {len(p.get(k, []))} images for echo/time group {k} "
                    f"but other slices have {expected[k]} (e.g. {groups[i][0].file}): a missing or extra file in the series")
    return groups, per_pos, echo_keys, np.array(gpos), row_dir, col_dir, normal


def _slice_axis(gpos: np.ndarray, first_frames: list[_Frame], normal, *, uneven: str, allow_tilt: bool):
    """Slice step vector (LPS mm) and, when spacing is uneven and resampling is asked, target offsets."""
    n = len(gpos)
    f0 = first_frames[0]
    if n == 1:
        th = _float(f0.ds, "SpacingBetweenSlices") or _float(f0.ds, "SliceThickness") or 1.0
        return normal * th, None
    diffs = np.diff(gpos)
    step = float(np.median(diffs))
    tol = max(1e-3, 0.01 * abs(step))
    bad = np.nonzero(np.abs(diffs - step) > tol)[0]
    target = None
    if len(bad):
        i = int(bad[0])
        ratio = diffs[i] / step
        what = (f"a missing slice: gap of {diffs[i]:.4g} mm ({ratio:.2f} x the {step:.4g} mm spacing)"
                if abs(ratio - round(ratio)) < 0.05 and round(ratio) >= 2 else
                f"uneven slice spacing: {diffs[i]:.4g} mm where the series has {step:.4g} mm")
        if uneven == "error":
            raise GeometryError(f"{what} between {first_frames[i].file} and {first_frames[i + 1].file} "
                                f"(positions {gpos[i]:.4f} and {gpos[i + 1]:.4f} mm along the slice normal); "
                                "find the missing file or load with uneven='resample' to interpolate onto a regular grid")
        if uneven != "resample":
            raise ParameterError(f"uneven must be 'error' or 'resample', got {uneven!r}")
        step = float(diffs.min())
        nn = int(round((gpos[-1] - gpos[0]) / step)) + 1
        target = gpos[0] + step * np.arange(nn)
    # in-plane drift of the positions = gantry tilt (or a sheared acquisition)
    p_first, p_last = first_frames[0].position, first_frames[-1].position
    vec = (p_last - p_first) / (gpos[-1] - gpos[0])  # per mm along the normal
    inplane = vec - normal * (vec @ normal)
    if np.linalg.norm(inplane) > 1e-4:
        angle = math.degrees(math.atan(np.linalg.norm(inplane)))
        tilt_tag = first_frames[0].ds.get("GantryDetectorTilt")
        if not allow_tilt:
            raise GeometryError(
                f"{first_frames[0].file}: slice positions drift in-plane by {angle:.3g} degrees from the slice normal "
                f"(gantry tilt{'; GantryDetectorTilt=' + str(tilt_tag) if tilt_tag is not None else ''}): the grid is sheared. "
                "Load with allow_tilt=True to keep the exact sheared affine (world positions stay correct)")
        return vec * step, target
    return normal * step, target


def _assign_volumes(per_pos, echo_keys, modality: str, echo: int | None):
    """Decide the 4th axis: echoes, or time, or both (then ``echo`` must pick one)."""
    n_time = max(len(p[k]) for p in per_pos for k in echo_keys)
    multi_echo = len(echo_keys) > 1
    if multi_echo and echo is not None:
        numbers = [k[0] or i + 1 for i, k in enumerate(echo_keys)]
        if echo not in numbers:
            raise ParameterError(f"echo={echo} not in this series; echo numbers are {numbers}")
        echo_keys = [echo_keys[numbers.index(echo)]]
        multi_echo = False
    elif echo is not None and echo != 1 and not multi_echo:
        raise ParameterError(f"echo={echo} requested but the series has one echo")
    if multi_echo and n_time > 1:
        raise ParameterError(f"the series has {len(echo_keys)} echoes and {n_time} time points; "
                             "load one echo at a time with echo=1, 2, ...")
    vols = []  # list of (echo_key, time index)
    if multi_echo:
        vols = [(k, 0) for k in echo_keys]
    else:
        vols = [(echo_keys[0], t) for t in range(n_time)]
    return vols, multi_echo


def load_dicom(path: str | os.PathLike | Sequence, *, series=None, echo: int | None = None, dtype=np.float64,
               uneven: str = "error", allow_tilt: bool = False) -> Volume:
    """Load one DICOM series as a :class:`~invivo.Volume`.

    Parameters
    ----------
    path : str, Path or list of paths
        A folder (searched recursively), a file, or a list of files.
    series : int, str or None
        Which series when several are found: an int is the row of :func:`scan`'s
        table (same order); a str is a SeriesInstanceUID, a SeriesNumber or a
        SeriesDescription (magnitude before phase).  None requires exactly one image series.
    echo : int, optional
        For series with several echoes *and* several time points, the echo number to load.
    dtype : numpy dtype
        Floating dtype of the returned data (rescale applied per slice in float64 first).
    uneven : {"error", "resample"}
        A missing slice or uneven spacing is an error (default) or is linearly
        interpolated onto a regular grid (recorded in ``meta.assumptions``).
    allow_tilt : bool
        Accept a gantry-tilted (sheared) slice stack, keeping the exact sheared affine.

    Returns
    -------
    Volume
        Data ``(i, j, k[, t])`` with echoes (``meta.echo_times_s``) or frames
        (``meta.frame_start_s``/``frame_duration_s``, seconds from
        ``meta.series_datetime``) on the last axis; affine in RAS+ mm.
    """
    import gc

    was_enabled = gc.isenabled()
    gc.disable()  # tens of thousands of small header objects, none cyclic: collection passes only cost time
    try:
        return _load_dicom(path, series=series, echo=echo, dtype=dtype, uneven=uneven, allow_tilt=allow_tilt)
    finally:
        if was_enabled:
            gc.enable()


def _load_dicom(path, *, series, echo, dtype, uneven, allow_tilt) -> Volume:
    if isinstance(path, (list, tuple)):
        datasets, skipped = [], []
        for p in path:
            d, s = read_headers(p, pixels=True)
            datasets += d
            skipped += s
        where = f"{len(path)} files"
    else:
        datasets, skipped = read_headers(path, pixels=True)
        where = str(path)
    groups = _group(datasets)
    if not any(_is_image_series(v) for v in groups.values()):
        extra = f" ({len(skipped)} non-DICOM files skipped)" if skipped else ""
        raise DicomError(f"{where}: no DICOM image series found{extra}; point invivo at a folder of DICOM images")
    key = _choose_series(groups, series, where)
    dss = groups[key]
    if skipped:
        log.info("%s: skipped %d non-DICOM files", where, len(skipped))
    return _load_series(dss, echo=echo, dtype=dtype, uneven=uneven, allow_tilt=allow_tilt,
                        n_skipped=len(skipped))


def _choose_series(groups: dict, series, where: str):
    keys = _ordered_keys(groups)  # the rows of scan(), images and others
    images = [k for k in keys if _is_image_series(groups[k])]

    def describe():
        return "; ".join(f"[{keys.index(k)}] {groups[k][0].get('Modality', '')} #{groups[k][0].get('SeriesNumber', '')} "
                         f"'{groups[k][0].get('SeriesDescription', '')}'{' phase' if k[1] == 'P' else ''}"
                         for k in images)

    if series is None:
        if len(images) > 1:
            raise ParameterError(f"{where}: {len(images)} series found; choose one with series=INDEX (the row of "
                                 f"invivo scan), UID, number or description: {describe()}")
        return images[0]
    if isinstance(series, tuple) and series in groups:  # (SeriesInstanceUID, flavour) as in scan()'s table
        return series
    if isinstance(series, (int, np.integer)) and not isinstance(series, bool):
        if not 0 <= series < len(keys):
            raise ParameterError(f"{where}: series={series} out of range; series found: {describe()}")
        k = keys[int(series)]
        if k not in images:
            raise ParameterError(f"{where}: row {series} of the scan is a {groups[k][0].get('Modality', '')} object, "
                                 f"not an image series; image series: {describe()}")
        return k
    s = str(series)
    hits = [k for k in images if k[0] == s] or \
           [k for k in images if str(groups[k][0].get("SeriesNumber", "")) == s] or \
           [k for k in images if str(groups[k][0].get("SeriesDescription", "")) == s]
    if len(hits) > 1:  # magnitude and phase of one series: magnitude first
        hits = [k for k in hits if k[1] == ""] or hits
    if len(hits) != 1:
        raise ParameterError(f"{where}: series={series!r} matches {len(hits)} series; series found: {describe()}")
    return hits[0]


def _load_series(dss: list[Dataset], *, echo, dtype, uneven, allow_tilt, n_skipped=0) -> Volume:
    ds0 = dss[0]
    modality = str(ds0.get("Modality", "OT"))
    frames: list[_Frame] = []
    for ds in dss:
        try:
            frames.extend(_frames_of(ds))
        except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError, IndexError) as exc:
            raise DicomError(f"{_fname(ds)}: malformed image header ({type(exc).__name__}: {exc}); "
                             "fix or remove the file") from None
    cache: dict = {}
    groups, per_pos, echo_keys, gpos, row_dir, col_dir, normal = _assemble(frames, uneven=uneven,
                                                                            allow_tilt=allow_tilt, cache=cache)
    vols, multi_echo = _assign_volumes(per_pos, echo_keys, modality, echo)
    # frames[t][k]
    stack = [[p[ek][t] for p in per_pos] for ek, t in vols]
    step_vec, target = _slice_axis(gpos, stack[0], normal, uneven=uneven, allow_tilt=allow_tilt)
    f0 = stack[0][0]
    rows, cols = f0.shape
    nk, nt = len(gpos), len(stack)
    # fill slice by slice in (t, k, rows, cols) order so every write is contiguous; the transpose
    # below is a view, F-ordered (i fastest) like NIfTI.  Rescale is computed in float64 per slice.
    out_dtype = np.dtype(dtype)
    buf = np.empty((nt, nk, rows, cols), dtype=out_dtype if target is None else np.float64)
    # decode (and check) every slice first, so errors surface before any thread starts
    pixels = [[_frame_pixels(fr, cache) for fr in col] for col in stack]

    def fill(t):
        ftype = buf.dtype.type
        for k, fr in enumerate(stack[t]):
            px = pixels[t][k]
            if fr.slope == 1.0 and fr.intercept == 0.0:
                buf[t, k] = px
            else:  # float32 output is computed in float32 (within 1.5 ulp), float64 exactly
                np.multiply(px, ftype(fr.slope), out=buf[t, k], casting="unsafe")
                if fr.intercept != 0.0:
                    buf[t, k] += ftype(fr.intercept)

    if nt * nk * rows * cols > 1 << 22 and nt > 1:  # NumPy releases the GIL: frames in parallel
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(fill, range(nt)))
    else:
        for t in range(nt):
            fill(t)
    data = buf.transpose(3, 2, 1, 0)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * f0.spacing[1]
    affine[:3, 1] = col_dir * f0.spacing[0]
    affine[:3, 2] = step_vec
    affine[:3, 3] = f0.position
    meta = _meta_for(modality, stack, vols, multi_echo, dss)
    if target is not None:  # interpolate along k onto the regular grid
        from scipy.interpolate import interp1d

        data = interp1d(gpos, data, axis=2, assume_sorted=True)(target)
        msg = f"uneven slice spacing resampled by linear interpolation onto {len(target)} slices at {affine[:3, 2] @ normal:.4g} mm"
        meta.assumptions.append(msg)
        warnings.warn(msg, InvivoWarning, stacklevel=3)
        nk = len(target)
        for name in ("reference_activity_bq", "suv_bw_factor"):
            v = getattr(meta, name)
            if v is not None:
                setattr(meta, name, interp1d(gpos, np.asarray(v), axis=0)(target))
    affine = LPS_TO_RAS @ affine
    if nt == 1:
        data = data[..., 0]
    import hashlib

    uids = sorted(str(d.get("SOPInstanceUID", "")) for d in dss)
    meta.source.update({"files": len(dss), "skipped_non_dicom": n_skipped,
                        "sop_instance_uids_sha256": hashlib.sha256("\n".join(uids).encode()).hexdigest(),
                        "folder": os.path.commonpath([str(Path(_fname(d)).parent) for d in dss])})
    return Volume(data.astype(out_dtype, copy=False), affine, meta)


def _subject(ds: Dataset) -> Subject:
    species = ds.get("PatientSpeciesDescription") or None
    w = _float(ds, "PatientWeight")
    h = _float(ds, "PatientSize")
    return Subject(id=str(ds.get("PatientID", "")) or None, weight_kg=w, height_m=h,
                   sex=str(ds.get("PatientSex", "")) or None, species=str(species) if species else None,
                   strain=str(ds.get("StrainDescription", "") or ds.get("PatientBreedDescription", "")) or None)


def _tracer(ds: Dataset) -> Tracer | None:
    from .. import isotopes

    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        return None
    it = seq[0]
    rp, iso_name = _tracer_summary(ds)
    try:
        inj = _dt_attr(it, "RadiopharmaceuticalStartDate", "RadiopharmaceuticalStartTime", "RadiopharmaceuticalStartDateTime")
        if inj is None and it.get("RadiopharmaceuticalStartTime"):
            inj = parse_datetime(ds.get("SeriesDate") or ds.get("StudyDate"), it.get("RadiopharmaceuticalStartTime"))
    except DicomError:
        inj = None
    hl = _float(it, "RadionuclideHalfLife")
    if hl is None and iso_name:
        iso = isotopes.find(iso_name)
        hl = iso.half_life_s if iso else None
    return Tracer(radiopharmaceutical=rp, isotope=iso_name, half_life_s=hl,
                  injected_activity_bq=_float(it, "RadionuclideTotalDose"), injection_datetime=inj)


def series_meta(ds: Dataset, modality: str) -> Meta:
    """A Meta holding the series' identity: UIDs, description, number, image type, manufacturer."""
    meta = Meta(modality=modality)
    meta.series_uid = str(ds.get("SeriesInstanceUID", "")) or None
    meta.study_uid = str(ds.get("StudyInstanceUID", "")) or None
    meta.series_description = str(ds.get("SeriesDescription", "")) or None
    meta.series_number = int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None
    meta.image_type = tuple(str(x) for x in (ds.get("ImageType") or [])) or None
    meta.manufacturer = str(ds.get("Manufacturer", "")) or None
    return meta


def _meta_for(modality: str, stack: list[list[_Frame]], vols, multi_echo: bool, dss: list[Dataset]) -> Meta:
    ds = stack[0][0].ds
    meta = series_meta(ds, modality)
    meta.magnetic_field_t = _float(ds, "MagneticFieldStrength")
    meta.subject = _subject(ds)
    meta.extra["frame_of_reference_uid"] = str(ds.get("FrameOfReferenceUID", "")) or None
    meta.extra["sop_class_uid"] = str(ds.get("SOPClassUID", "")) or None
    meta.series_datetime = _dt_attr(ds, "SeriesDate", "SeriesTime")
    acqs = [fr.acq_datetime for col in stack for fr in col if fr.acq_datetime is not None]
    meta.acquisition_datetime = min(acqs) if acqs else None
    if modality != "PT" and meta.acquisition_datetime is not None and (
            meta.series_datetime is None or meta.series_datetime > meta.acquisition_datetime):
        # MR/CT SeriesTime is often when the series was stored; time series count from the first acquisition
        meta.series_datetime = meta.acquisition_datetime
    if multi_echo or (stack[0][0].echo_time_s is not None and modality == "MR"):
        tes = [col[0].echo_time_s for col in stack] if multi_echo else [stack[0][0].echo_time_s]
        if multi_echo and any(t is None for t in tes):
            raise MissingTagError(f"{stack[0][0].file}: multi-echo series without (0018,0081) EchoTime")
        meta.echo_times_s = tuple(float(t) for t in tes)
    if modality in ("PT", "NM"):
        meta.units = str(ds.get("Units", "")) or None
        meta.decay_correction = str(ds.get("DecayCorrection", "")) or None
        meta.tracer = _tracer(ds)
        meta.extra["corrected_image"] = [str(x) for x in (ds.get("CorrectedImage") or [])]
        if ds.get("SUVType"):
            meta.extra["suv_type"] = str(ds.get("SUVType"))  # the kind of SUV stored in GML / CM2ML
    elif modality == "CT":
        meta.units = "HU"
    reps = index = None
    if modality in ("PT", "NM") and meta.tracer is not None:
        reps, index = _representatives([fr for col in stack for fr in col])
        if meta.decay_correction is None and reps[0].get("DecayCorrection"):
            meta.decay_correction = str(reps[0].DecayCorrection)  # enhanced PET: from Decay Corrected
        _pet_timing(meta, reps)
    if len(stack) > 1 and not multi_echo or modality in ("PT",):
        _frame_timing(meta, stack)
    if reps is not None:
        _pet_quant(meta, stack, reps, index)
    elif modality in ("PT", "NM"):
        reason = f"{_fname(ds)}: no (0054,0016) RadiopharmaceuticalInformationSequence: the injected activity and time are unknown"
        meta.suv_unavailable = meta.extra["percent_id_unavailable"] = reason
        meta.extra["suv_unavailable_error"] = meta.extra["percent_id_unavailable_error"] = "MissingTagError"
    return meta


def _frame_timing(meta: Meta, stack: list[list[_Frame]]) -> None:
    """Frame starts (s from ``meta.series_datetime``) and durations, from acquisition times, else from
    FrameReferenceTime minus the time of the frame's mean count rate."""
    ref = meta.series_datetime
    if ref is None:
        acq_all = [fr.acq_datetime for col in stack for fr in col if fr.acq_datetime is not None]
        if acq_all:
            ref = meta.series_datetime = min(acq_all)
    half_life = meta.tracer.half_life_s if meta.tracer is not None else None
    from_acq, from_frt, durs = [], [], []
    for col in stack:
        acq = [fr.acq_datetime for fr in col if fr.acq_datetime is not None]
        dur = next((fr.duration_s for fr in col if fr.duration_s), None)
        frt = _float(col[0].ds, "FrameReferenceTime")
        from_acq.append((min(acq) - ref).total_seconds() if acq and ref is not None else None)
        from_frt.append(frt / 1000.0 - count_average_time_s(dur, half_life) if frt is not None and dur is not None else None)
        durs.append(dur)

    def complete(v):
        return all(x is not None for x in v)

    def increasing(v):
        return len(v) == 1 or bool(np.all(np.diff(v) > 0))

    if complete(from_acq) and increasing(from_acq):
        meta.frame_start_s = tuple(float(x) for x in from_acq)
    elif complete(from_frt) and increasing(from_frt):
        meta.frame_start_s = tuple(float(x) for x in from_frt)
        if len(stack) > 1:
            meta.assumptions.append("acquisition times do not distinguish the frames: frame starts taken as "
                                    "FrameReferenceTime minus the mean-count-rate time of each frame")
    elif complete(from_acq) or complete(from_frt):
        shown = from_acq if complete(from_acq) else from_frt
        raise DicomError(f"{stack[0][0].file}: frame start times are not increasing ({shown} s); "
                         "the frame timing tags (AcquisitionTime, FrameReferenceTime) are inconsistent")
    if complete(durs):
        meta.frame_duration_s = tuple(float(d) for d in durs)
    elif meta.frame_start_s is not None and len(stack) > 1:
        gaps = np.diff(meta.frame_start_s)
        meta.frame_duration_s = tuple(float(x) for x in np.append(gaps, gaps[-1]))
        meta.assumptions.append("frame durations not stored (ActualFrameDuration); taken as the gap to the next frame")


def _representatives(flat: list[_Frame]):
    """One pydicom Dataset per distinct header content, and the index of each frame's representative.

    The QIBA rules read only header content; files whose content (bar per-slice bookkeeping such as
    position and rescale) is identical get identical factors, so they are computed once per content.
    Frames of an enhanced multi-frame PET object are represented by a classic view of each frame.
    """
    groups: dict = {}
    index = []
    reps: list = []
    for fr in flat:
        if fr.index is not None and "PerFrameFunctionalGroupsSequence" in fr.ds:
            key = (id(fr.ds), _frame_timing_key(fr))
        else:
            key = fr.ds.content_key() if isinstance(fr.ds, FastHeader) else id(fr.ds)
        if key not in groups:
            groups[key] = len(reps)
            reps.append(_classic_view(fr) if fr.index is not None and "PerFrameFunctionalGroupsSequence" in fr.ds
                        else (fr.ds.full() if isinstance(fr.ds, FastHeader) else fr.ds))
        index.append(groups[key])
    return reps, np.asarray(index)


def _frame_content(fr: _Frame) -> Dataset:
    base = fr.ds.full() if isinstance(fr.ds, FastHeader) else fr.ds
    return _seq_item(base.PerFrameFunctionalGroupsSequence[fr.index], "FrameContentSequence") or Dataset()


def _frame_timing_key(fr: _Frame) -> tuple:
    c = _frame_content(fr)
    return (str(c.get("FrameReferenceDateTime", "")), str(c.get("FrameAcquisitionDateTime", "")),
            str(c.get("FrameAcquisitionDuration", "")))


def _split_dt(value) -> tuple[str, str]:
    s = str(value)
    return s[:8], (s[8:] or "000000").split("+")[0].split("-")[0]


def _classic_view(fr: _Frame) -> Dataset:
    """One frame of an Enhanced PET object as the classic PET attributes the QIBA rules read.

    Decay Corrected (0018,9758) YES with Decay Correction DateTime (0018,9701) at the injection is ADMIN,
    at any other time START with that time as the series reference; NO is NONE, decayed to the frame's
    Frame Reference DateTime (0018,9151) (else its Frame Acquisition DateTime).
    """
    base = fr.ds.full() if isinstance(fr.ds, FastHeader) else fr.ds
    view = Dataset()
    skip = {0x52009229, 0x52009230, 0x7FE00010}  # shared / per-frame functional groups, pixel data
    for el in base:
        if el.tag not in skip:
            view.add(el)
    view.filename = getattr(base, "filename", None)
    c = _frame_content(fr)
    view.invivo_frame_start = fr.acq_datetime  # Frame Acquisition DateTime (the scan start is the earliest)
    acq = c.get("FrameAcquisitionDateTime")
    ref = c.get("FrameReferenceDateTime")
    if acq:
        view.AcquisitionDate, view.AcquisitionTime = _split_dt(acq)
    if c.get("FrameAcquisitionDuration") not in (None, ""):
        view.ActualFrameDuration = int(round(float(c.FrameAcquisitionDuration)))
    corrected = str(base.get("DecayCorrected", "")).upper()
    if corrected == "YES":
        dc = base.get("DecayCorrectionDateTime")
        rp = (base.get("RadiopharmaceuticalInformationSequence") or [Dataset()])[0]
        inj = rp.get("RadiopharmaceuticalStartDateTime")
        if dc and inj and parse_datetime(dt=str(dc)) == parse_datetime(dt=str(inj)):
            view.DecayCorrection = "ADMIN"
        else:
            view.DecayCorrection = "START"
            if dc:
                view.SeriesDate, view.SeriesTime = _split_dt(dc)
    elif corrected == "NO":
        view.DecayCorrection = "NONE"
        if ref or acq:
            view.AcquisitionDate, view.AcquisitionTime = _split_dt(ref or acq)
    return view


def _qiba(meta: Meta, fn, *args, **kwargs):
    """Call an invivo.uptake function; its assumptions go to ``meta`` (warned once each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    for w in caught:
        _note(meta, str(w.message))
    return out


def _pet_timing(meta: Meta, reps: list) -> None:
    """Scan start and injection datetime by the QIBA rules (injection before midnight, SeriesTime
    after the first acquisition, GE's private datetime), so metadata and sidecars agree with the factors."""
    from .. import uptake

    starts = [getattr(r, "invivo_frame_start", None) for r in reps]
    if all(t is not None for t in starts):  # enhanced PET states each frame's start
        dc = str(reps[0].get("DecayCorrection", ""))
        stored = _dt_attr(reps[0], "SeriesDate", "SeriesTime") if dc == "START" else None
        meta.series_datetime = stored or min(starts)
        return _pet_injection(meta, reps)
    try:
        meta.series_datetime = _qiba(meta, uptake.scan_start_datetime, reps)
    except InvivoError:
        pass  # the SeriesDate/Time as stored; the reason surfaces when SUV or %ID is asked for
    _pet_injection(meta, reps)


def _pet_injection(meta: Meta, reps: list) -> None:
    from .. import uptake

    if meta.tracer is not None:
        try:
            meta.tracer.injection_datetime = _qiba(meta, uptake.injection_datetime, reps)
        except InvivoError:
            pass


def _pet_quant(meta: Meta, stack: list[list[_Frame]], reps: list, index: np.ndarray) -> None:
    """Per-slice/frame SUV factors and reference activity, from the QIBA rules in invivo.uptake."""
    from .. import uptake

    nk, nt = len(stack[0]), len(stack)
    try:
        refs = _qiba(meta, uptake.decay_reference_datetimes, reps)
        distinct = sorted({r.isoformat() for r in refs})
        meta.extra["decay_reference"] = distinct[0] if len(distinct) == 1 else [refs[g].isoformat() for g in index]
    except InvivoError:
        pass  # the same problem is reported below, with what it makes unavailable
    try:
        ref = np.asarray(_qiba(meta, uptake.reference_activity_bq, reps), dtype=np.float64)
        meta.reference_activity_bq = ref[index].reshape(nt, nk).T.copy()
    except InvivoError as exc:  # explains what is missing; %ID is then unavailable
        meta.extra["percent_id_unavailable"] = str(exc)
        meta.extra["percent_id_unavailable_error"] = type(exc).__name__
    try:
        f = np.asarray(_qiba(meta, uptake.suv_scale_factors, reps, kind="bw"), dtype=np.float64)
        meta.suv_bw_factor = f[index].reshape(nt, nk).T.copy()
    except InvivoError as exc:
        meta.suv_unavailable = str(exc)
        meta.extra["suv_unavailable_error"] = type(exc).__name__


def _note(meta: Meta, msg: str) -> None:
    if msg not in meta.assumptions:
        meta.assumptions.append(msg)
        warnings.warn(msg, InvivoWarning, stacklevel=5)
