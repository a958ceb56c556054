"""Results as DICOM: Parametric Maps and Segmentations that reference their source series, and readers.

A map computed by invivo (SUVbw, %ID/g, R2*, Ki, iron, cells, ...) on the grid of the
series it came from is written as one DICOM **Parametric Map** (an enhanced multi-frame
object, SOP class 1.2.840.10008.5.1.4.1.1.30), masks as one DICOM **Segmentation**
(BINARY, one segment per ROI).  Both are built with highdicom, placed in the source's
study and frame of reference with a new series UID, and reference every source image
(ReferencedSeriesSequence, SourceImageSequence, per-frame DerivationImageSequence), so
PACS and viewers (3D Slicer, OHIF, Weasis) show them over the source images.

Storage choices
---------------
* Parametric Map values are stored as **float32** (Float Pixel Data) with an identity
  Real World Value Mapping (slope 1, intercept 0): the map reads back bit for bit, with
  no quantisation step to choose per map.  Viewers that read Parametric Maps (Slicer's
  QuantitativeReporting / dcmqi, OHIF) read float pixel data; an integer encoding would
  only help viewers that ignore the Real World Value Mapping, and those would then show
  wrong numbers.  float64 maps are rounded to float32 (relative error <= 6e-8).
* The unit is a UCUM code in the mapping's MeasurementUnitsCodeSequence (table
  :data:`UNITS`); the quantity a coded concept in its QuantityDefinitionSequence: DICOM
  codes where they exist (SUVbw 126401, R2* 126395, Ktrans 126312, ... from
  ``pydicom.sr.codedict``), else the local scheme ``99INVIVO`` (declared in
  CodingSchemeIdentificationSequence).
* NaN or inf in a map is an error unless ``fill_value`` says what to store instead.
* The map's voxels must be the source's: same shape and affine (to 1e-3 mm), otherwise a
  :class:`~invivo.errors.GeometryError` asks to resample onto the source first.  Frame
  positions are the source's ImagePositionPatient values.
* SEG: every frame of every segment is stored (empty ones too), so the file alone
  carries the source grid and :func:`read_seg` rebuilds masks on it.

The readers need only pydicom; the writers need highdicom.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.coding import Code

from ..backend import to_device
from ..errors import DicomError, GeometryError, MissingTagError, OutputExistsError, ParameterError, UnitsError
from ..volume import LPS_TO_RAS, Meta, Volume
from . import dicom as _dicom
from .nifti import atomic_write

__all__ = ["write_parametric_map", "write_seg", "read_parametric_map", "read_seg", "UNITS", "QUANTITIES",
           "PARAMETRIC_MAP_SOP_CLASS", "SEGMENTATION_SOP_CLASS"]

PARAMETRIC_MAP_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.30"
SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LOCAL_SCHEME = "99INVIVO"

# ----------------------------------------------------------------------------- units
#: invivo unit -> (UCUM code value, meaning).  Keys are the spellings invivo writes in ``meta.units``.
UNITS: dict[str, tuple[str, str]] = {
    "BQML": ("Bq/ml", "Becquerels/milliliter"),
    "kBq/mL": ("kBq/ml", "kilobecquerels per milliliter"),
    "SUVbw": ("g/ml{SUVbw}", "Standardized Uptake Value body weight"),
    "SUVlbm": ("g/ml{SUVlbm}", "Standardized Uptake Value lean body mass (James)"),
    "SUVibw": ("g/ml{SUVibw}", "Standardized Uptake Value ideal body weight"),
    "SUVbsa": ("cm2/ml{SUVbsa}", "Standardized Uptake Value body surface area"),
    "g/mL": ("g/ml", "gram per milliliter"),
    "%ID/g": ("%/g", "percent per gram"),
    "%ID/cc": ("%/ml", "percent per milliliter"),
    "s-1": ("/s", "per second"),
    "s": ("s", "second"),
    "ms": ("ms", "millisecond"),
    "min": ("min", "minute"),
    "1/min": ("/min", "per minute"),
    "mM": ("mmol/L", "millimole per liter"),
    "mL/cm3/min": ("mL/cm3/min", "milliliter per cubic centimeter per minute"),
    "mL/cm3": ("mL/cm3", "milliliter per cubic centimeter"),
    "ug": ("ug", "microgram"),
    "cells": ("{cells}", "cells"),
    "cells/voxel": ("{cells}/{voxel}", "cells per voxel"),
    "HU": ("[hnsf'U]", "Hounsfield unit"),
    "mm": ("mm", "millimeter"),
    "1": ("1", "no units"),
}

#: Other spellings accepted for the keys of :data:`UNITS` (case-sensitive: mM is not mm).
_UNIT_ALIASES = {
    "Bq/mL": "BQML", "Bq/ml": "BQML", "kBq/ml": "kBq/mL", "g/ml": "g/mL", "GML": "g/mL",
    "SUVBW": "SUVbw", "SUVLBM": "SUVlbm", "SUVIBW": "SUVibw", "SUVBSA": "SUVbsa",
    "%ID/mL": "%ID/cc", "%ID/ml": "%ID/cc", "%ID/cm3": "%ID/cc",
    "1/s": "s-1", "/s": "s-1", "s^-1": "s-1", "per s": "s-1",
    "mmol/L": "mM", "mmol/l": "mM", "mml/L": "mM",
    "ml/cm3/min": "mL/cm3/min", "mL/min/cm3": "mL/cm3/min", "mL/min/mL": "mL/cm3/min", "ml/min/ml": "mL/cm3/min",
    "ml/cm3": "mL/cm3", "mL/mL": "mL/cm3",
    "min-1": "1/min", "/min": "1/min", "min^-1": "1/min",
    "cells per voxel": "cells/voxel", "cell": "cells",
    "ratio": "1", "unitless": "1", "": "1",
}

#: UCUM code value -> the invivo unit it came from (for the readers).
_UNIT_OF_UCUM = {ucum: unit for unit, (ucum, _) in UNITS.items()}
_UNIT_OF_UCUM.update({"Bq/mL": "BQML", "mmol/l": "mM", "ml/cm3/min": "mL/cm3/min", "1/s": "s-1"})

_SUV_UNIT_OF_CODE = {"126401": "SUVbw", "126402": "SUVlbm", "126404": "SUVibw", "126403": "SUVbsa"}


def _canonical_unit(unit: str) -> str:
    u = str(unit).strip()
    if u in UNITS:
        return u
    if u in _UNIT_ALIASES:
        return _UNIT_ALIASES[u]
    raise UnitsError(f"unit {unit!r} has no UCUM code in invivo's table; use one of {', '.join(UNITS)} "
                     "(or an alias such as 1/s, mmol/L, Bq/mL)")


def _unit_code(unit: str, quantity: Code) -> tuple[str, Code]:
    canon = _canonical_unit(unit)
    if canon == "g/mL" and quantity.scheme_designator == "DCM" and quantity.value in _SUV_UNIT_OF_CODE:
        canon = _SUV_UNIT_OF_CODE[quantity.value]  # SUV in g/mL: the SUV-kind unit code of CID 85
    value, meaning = UNITS[canon]
    return canon, Code(value, "UCUM", meaning)


# ----------------------------------------------------------------------------- quantities
def _dcm(value: str, meaning: str) -> Code:
    return Code(value, "DCM", meaning)


def _local(value: str, meaning: str) -> Code:
    return Code(value, LOCAL_SCHEME, meaning)


#: Quantity name (case-insensitive) -> coded concept.  Other names get a 99INVIVO code made from the name.
QUANTITIES: dict[str, Code] = {
    "suv": _dcm("126400", "Standardized Uptake Value"),
    "suvbw": _dcm("126401", "SUVbw"),
    "suvlbm": _dcm("126402", "SUVlbm"),
    "suvbsa": _dcm("126403", "SUVbsa"),
    "suvibw": _dcm("126404", "SUVibw"),
    "suvlbm(janma)": _dcm("126405", "SUVlbm(Janma)"),
    "tracer concentration": _dcm("126377", "Tracer Concentration"),
    "activity concentration": _dcm("126377", "Tracer Concentration"),
    "bqml": _dcm("126377", "Tracer Concentration"),
    "r2*": _dcm("126395", "R2*"),
    "r2star": _dcm("126395", "R2*"),
    "r2": _dcm("126394", "R2"),
    "t2*": _dcm("113064", "T2*"),
    "t2star": _dcm("113064", "T2*"),
    "ktrans": _dcm("126312", "Ktrans"),
    "kep": _dcm("126313", "kep"),
    "ve": _dcm("126314", "ve"),
    "vp": _dcm("126331", "vp"),
    "%id/g": _local("PCTIDG", "Percent injected dose per gram"),
    "idg": _local("PCTIDG", "Percent injected dose per gram"),
    "%id/cc": _local("PCTIDCC", "Percent injected dose per cubic centimeter"),
    "idcc": _local("PCTIDCC", "Percent injected dose per cubic centimeter"),
    "ki": _local("KI", "Net influx rate constant Ki"),
    "k1": _local("K1", "Influx rate constant K1"),
    "vd": _local("VD", "Distribution volume"),
    "vt": _local("VT", "Total distribution volume"),
    "dvr": _local("DVR", "Distribution volume ratio"),
    "bpnd": _local("BPND", "Non-displaceable binding potential"),
    "dr2*": _local("DR2STAR", "R2* change (post minus pre)"),
    "dr2star": _local("DR2STAR", "R2* change (post minus pre)"),
    "iron": _local("FE", "Iron concentration"),
    "fe": _local("FE", "Iron concentration"),
    "fe_mm": _local("FE", "Iron concentration"),
    "cells": _local("CELLS", "Labeled cells"),
    "cells per voxel": _local("CELLS", "Labeled cells"),
}


def quantity_code(quantity: str) -> Code:
    """The coded concept of a quantity name: a standard code where one exists, else ``99INVIVO``.

    Examples
    --------
    >>> quantity_code("SUVbw").value, quantity_code("R2*").scheme_designator
    ('126401', 'DCM')
    >>> c = quantity_code("CAR-T density")
    >>> c.value, c.scheme_designator, c.meaning
    ('CAR_T_DENSITY', '99INVIVO', 'CAR-T density')
    """
    if not isinstance(quantity, str) or not quantity.strip():
        raise ParameterError(f"quantity must be a non-empty name such as 'SUVbw', '%ID/g' or 'R2*', got {quantity!r}")
    q = quantity.strip()
    hit = QUANTITIES.get(q.lower())
    if hit is not None:
        return hit
    return _local(_token(q) or "QUANTITY", q[:64])


def _token(name: str) -> str:
    """Upper-case letters, digits and '_' (at most 16): a code value or ContentLabel made from a name."""
    return re.sub(r"[^A-Z0-9]+", "_", name.upper().replace("%", "PCT").replace("*", "STAR")).strip("_")[:16]


# ----------------------------------------------------------------------------- helpers
def _highdicom():
    try:
        import highdicom
    except ImportError:  # pragma: no cover - depends on the environment
        raise ParameterError("writing DICOM Parametric Maps and SEG needs highdicom: pip install highdicom") from None
    return highdicom


def _as_volume(obj, name: str) -> Volume:
    if not isinstance(obj, Volume):
        raise ParameterError(f"{name} must be an invivo.Volume, got {type(obj).__name__}")
    return obj


def _volume_label(vol: Volume, default: str) -> str:
    src = vol.meta.source or {}
    return str(src.get("nifti") or default)


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; choose another output or pass overwrite=True (--overwrite)")
    if path.is_dir():
        raise ParameterError(f"output {path} is a folder; give a file name such as {path / 'map.dcm'}")


def _check_lo(text: str | None, what: str) -> str | None:
    if text is None:
        return None
    text = str(text)
    if len(text) > 64 or "\\" in text:
        raise ParameterError(f"{what} must be at most 64 characters without backslashes, got {text!r}")
    return text


def _short(text: str, n: int) -> str:
    return str(text).replace("\\", "/")[:n]


def _ds_number(x: float) -> float:
    """A float that DICOM's 16-character DS string holds exactly enough (10 significant digits)."""
    return float(f"{float(x):.10g}")


# ----------------------------------------------------------------------------- source
@dataclass
class _Grid:
    """The source series' voxel grid, as invivo.load builds it."""

    shape: tuple[int, int, int]  # (columns, rows, slices) = (i, j, k)
    affine: np.ndarray  # RAS+
    positions: list  # LPS ImagePositionPatient of slice k
    orientation: np.ndarray  # (6,) ImageOrientationPatient
    spacing: tuple[float, float]  # PixelSpacing (between rows, between columns)
    step_mm: float
    thickness_mm: float


def _source_datasets(source, series, where_hint: str | None = None) -> tuple[list[Dataset], str]:
    """The chosen series' datasets (headers, no pixels) and a name for messages."""
    if isinstance(source, Dataset):
        source = [source]
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, Dataset) for s in source):
        dss = list(source)
        groups = _dicom._group(dss)
        if len(groups) != 1:
            raise ParameterError(f"source datasets belong to {len(groups)} series; pass the datasets of one series")
        return dss, where_hint or f"{len(dss)} source datasets"
    if isinstance(source, (list, tuple)):
        if not source:
            raise ParameterError("source is an empty list; pass the source series' folder, files or datasets")
        headers = []
        for p in source:
            headers += _dicom.read_headers(p)[0]
        where = f"{len(source)} source files"
    else:
        headers = _dicom.read_headers(source)[0]
        where = str(source)
    groups = _dicom._group(headers)
    if not any(_dicom._is_image_series(v) for v in groups.values()):
        raise DicomError(f"{where}: no DICOM image series found; --source/source must be the series the map was computed from")
    key = _dicom._choose_series(groups, series, where)
    dss = []
    for h in groups[key]:
        f = _dicom._fname(h)
        try:
            dss.append(pydicom.dcmread(f, stop_before_pixels=True))
        except (InvalidDicomError, OSError, ValueError, TypeError, KeyError, AttributeError, EOFError) as exc:
            raise DicomError(f"{f}: cannot be read ({type(exc).__name__}: {exc})") from None
    return dss, where


def _source_grid(dss: list[Dataset], where: str) -> _Grid:
    """The grid invivo.load gives the series (same rules: sorted along the normal, regular spacing)."""
    frames = []
    for ds in dss:
        try:
            frames.extend(_dicom._frames_of(ds))
        except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError, IndexError) as exc:
            raise DicomError(f"{_dicom._fname(ds)}: malformed image header ({type(exc).__name__}: {exc})") from None
    _, per_pos, echo_keys, gpos, row_dir, col_dir, normal = _dicom._assemble(frames, uneven="error", allow_tilt=False,
                                                                            cache={})
    col0 = [p[echo_keys[0]][0] for p in per_pos]
    step_vec, _ = _dicom._slice_axis(gpos, col0, normal, uneven="error", allow_tilt=False)
    f0 = col0[0]
    rows, cols = f0.shape
    lps = np.eye(4)
    lps[:3, 0] = row_dir * f0.spacing[1]
    lps[:3, 1] = col_dir * f0.spacing[0]
    lps[:3, 2] = step_vec
    lps[:3, 3] = f0.position
    step = float(np.linalg.norm(step_vec))
    thick = _dicom._float(f0.ds, "SliceThickness") or step
    return _Grid((cols, rows, len(col0)), LPS_TO_RAS @ lps, [fr.position for fr in col0], np.asarray(f0.orientation),
                 f0.spacing, step, float(thick))


def _check_grid(vol: Volume, grid: _Grid, what: str, where: str) -> None:
    if vol.spatial_shape == grid.shape and np.allclose(vol.affine, grid.affine, atol=1e-3):
        return
    diff = float(np.abs(vol.affine - grid.affine).max())
    voxel = tuple(round(float(v), 4) for v in np.sqrt((grid.affine[:3, :3] ** 2).sum(axis=0)))
    raise GeometryError(
        f"{what} is not on the grid of the source {where}: shape {vol.spatial_shape} vs {grid.shape}, voxel "
        f"{tuple(round(v, 4) for v in vol.voxel_size_mm)} vs {voxel} mm, largest affine difference {diff:.4g} mm; "
        "resample it onto the source first (invivo.align.resample(volume, invivo.load(source), transform) "
        "or invivo resample)")


def _spatial_kwargs(hd, grid: _Grid) -> dict:
    iop = [_ds_number(x) for x in grid.orientation]
    return {
        "pixel_measures": hd.PixelMeasuresSequence(
            pixel_spacing=[_ds_number(grid.spacing[0]), _ds_number(grid.spacing[1])],
            slice_thickness=_ds_number(grid.thickness_mm), spacing_between_slices=_ds_number(grid.step_mm)),
        "plane_orientation": hd.PlaneOrientationSequence(coordinate_system="PATIENT", image_orientation=iop),
        "plane_positions": [hd.PlanePositionSequence(coordinate_system="PATIENT",
                                                     image_position=[_ds_number(x) for x in p])
                            for p in grid.positions],
    }


_TYPE2_PATIENT_STUDY = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                        "StudyDate", "StudyTime", "ReferringPhysicianName")


def _complete_type2(dss: list[Dataset]) -> list[Dataset]:
    """highdicom copies these from the first source image; absent type 2 attributes become empty (on a copy)."""
    ds0 = dss[0]
    missing = [kw for kw in _TYPE2_PATIENT_STUDY if kw not in ds0]
    if not missing:
        return dss
    ds0 = copy.deepcopy(ds0)
    for kw in missing:
        setattr(ds0, kw, "")
    return [ds0] + list(dss[1:])


def _series_number(series_number, dss: list[Dataset], offset: int = 1000) -> int:
    if series_number is not None:
        try:
            n = int(series_number)
        except (TypeError, ValueError):
            n = -1
        if n < 0:
            raise ParameterError(f"series_number must be a non-negative integer, got {series_number!r}")
        return n
    try:
        return offset + int(dss[0].get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        return offset


def _complete_type2c(obj: Dataset, src: Dataset, *, laterality: bool) -> None:
    """Type 2C attributes highdicom leaves out: present (empty where unknown) so the object validates.

    PatientSexNeutered is required for animals (PatientSpeciesDescription/CodeSequence present);
    a Parametric Map without Frame Laterality needs the series' Laterality: the source's, else empty (unknown).
    """
    is_animal = "PatientSpeciesDescription" in src or "PatientSpeciesCodeSequence" in src
    if is_animal and "PatientSexNeutered" not in obj:
        obj.PatientSexNeutered = src.get("PatientSexNeutered", "")
    if laterality and "Laterality" not in obj:
        obj.Laterality = src.get("Laterality") or src.get("ImageLaterality") or ""
        if obj.Laterality not in ("R", "L"):
            obj.Laterality = ""


def _equipment() -> dict:
    from .. import __version__

    return {"manufacturer": "invivo", "manufacturer_model_name": "invivo", "software_versions": str(__version__),
            "device_serial_number": "0"}


def _wrap_highdicom(what: str, where: str, fn):
    """Build a highdicom object; its construction errors become one-line DicomErrors naming the source."""
    import warnings

    try:
        with warnings.catch_warnings():
            # the source's PatientName is copied as it is; a one-component name (a mouse ID) is normal here
            warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent the intended person name",
                                    category=UserWarning)
            return fn()
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise DicomError(f"{where}: the {what} cannot be built from this source series "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None


# ----------------------------------------------------------------------------- Parametric Map
def write_parametric_map(volume: Volume, source, path: str | os.PathLike, *, quantity: str, unit: str | None = None,
                         series_description: str | None = None, series_number: int | None = None,
                         overwrite: bool = False, content_label: str | None = None, series=None,
                         fill_value: float | None = None) -> Path:
    """Write a 3D map as a DICOM Parametric Map that references the series it was computed from.

    Parameters
    ----------
    volume : Volume
        3D map ``(I, J, K)`` (a 4D Volume with one frame is accepted) on the grid of
        ``source``: same shape and affine to 1e-3 mm (as ``invivo.load(source)`` gives it).
    source : path, list of paths, or list of pydicom.Dataset
        The source series: a folder (one image series, or pick one with ``series``), its
        files, or its datasets (headers suffice).
    path : str or Path
        Output file (``.dcm``), written atomically.
    quantity : str
        What the values are: ``"SUVbw"``, ``"%ID/g"``, ``"R2*"``, ``"Ki"``, ... (see
        :data:`QUANTITIES`); other names get a local ``99INVIVO`` code.
    unit : str, optional
        invivo unit (a key or alias of :data:`UNITS`: ``"%ID/g"``, ``"s-1"``, ``"mM"``,
        ``"mL/cm3/min"``, ``"g/mL"``, ...).  Default ``volume.meta.units``.
    series_description : str, optional
        Default ``"<quantity> [<unit>]"``.
    series_number : int, optional
        Default the source's SeriesNumber + 1000.
    overwrite : bool
        Replace an existing ``path``.
    content_label : str, optional
        ContentLabel (upper case, digits, ``_``; at most 16); default made from ``quantity``.
    series : int or str, optional
        Which series of a ``source`` folder holding several (as :func:`invivo.load`).
    fill_value : float, optional
        Stored in place of NaN/inf voxels.  Default None: NaN/inf is an error.

    Returns
    -------
    Path
        ``path``.  Values are stored as float32 (see the module notes).

    Raises
    ------
    GeometryError
        The map is not on the source's grid.
    UnitsError
        No unit, or a unit without a UCUM code in :data:`UNITS`.
    ParameterError
        A 4D map, NaN/inf without ``fill_value``, bad labels or numbers.
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.

    Examples
    --------
    >>> write_parametric_map(idg, "pet_dicom/", "idg_pm.dcm", quantity="%ID/g")  # doctest: +SKIP
    PosixPath('idg_pm.dcm')
    """
    vol = _as_volume(volume, "volume")
    path = Path(path)
    label = _volume_label(vol, "the map")
    data = np.asarray(to_device(vol.data, "cpu"))  # host: files are written from host memory
    if data.ndim == 4:
        if data.shape[3] != 1:
            raise ParameterError(f"{label} is 4D {tuple(data.shape)}; a Parametric Map holds one 3D map: export "
                                 "one frame or echo at a time (volume.frame(i))")
        data = data[..., 0]
    if data.dtype.kind not in "fiub":
        raise ParameterError(f"{label} has data type {data.dtype}; a Parametric Map stores numbers")
    qcode = quantity_code(quantity)
    if unit is None:
        unit = vol.meta.units
        if unit is None:
            raise UnitsError(f"{label} has no units (meta.units is None); pass unit= (--unit), e.g. '%ID/g' or 's-1'")
    unit_name, ucode = _unit_code(unit, qcode)
    series_description = _check_lo(series_description, "series_description")
    if content_label is None:
        content_label = _token(quantity) or "MAP"
    elif not re.fullmatch(r"[A-Z0-9_ ]{1,16}", str(content_label)):
        raise ParameterError(f"content_label must be 1-16 upper-case letters, digits, '_' or spaces, got {content_label!r}")
    values = data.astype(np.float32)
    bad = ~np.isfinite(values)
    if bad.any():
        first = tuple(int(x) for x in np.argwhere(bad)[0])
        if fill_value is None:
            raise ParameterError(f"{label} has {int(bad.sum())} NaN/inf voxels (first at voxel {first}), or values "
                                 "beyond float32; pass fill_value= (--fill-value) to store a number there, or fix the map")
        fv = np.float32(fill_value)
        if not np.isfinite(fv):
            raise ParameterError(f"fill_value must be a finite number, got {fill_value!r}")
        values[bad] = fv
    _check_output(path, overwrite)
    hd = _highdicom()
    dss, where = _source_datasets(source, series)
    grid = _source_grid(dss, where)
    _check_grid(vol, grid, label, where)
    pixels = np.ascontiguousarray(values.transpose(2, 1, 0))  # (k, rows = j, columns = i)
    lo, hi = float(values.min()), float(values.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=_short(quantity, 16), lut_explanation=_short(f"{qcode.meaning} [{unit_name}]", 64), unit=ucode,
        value_range=(lo, hi), slope=1.0, intercept=0.0, quantity_definition=qcode)
    centre, width = (lo + hi) / 2.0, max(hi - lo, 1e-6)
    voi = hd.VOILUTTransformation(window_center=_ds_number(centre), window_width=_ds_number(width))
    kwargs = {}
    if qcode.scheme_designator == LOCAL_SCHEME:
        kwargs["coding_schemes"] = [hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=LOCAL_SCHEME, name="invivo local codes", responsible_organization="invivo")]
    src = _complete_type2(dss)
    pm = _wrap_highdicom("Parametric Map", where, lambda: hd.pm.ParametricMap(
        source_images=src, pixel_array=pixels, series_instance_uid=hd.UID(),
        series_number=_series_number(series_number, dss), sop_instance_uid=hd.UID(), instance_number=1,
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[voi], content_label=content_label,
        content_description=_short(f"{quantity} map computed by invivo", 64),
        series_description=series_description or _short(
            quantity if quantity.strip() == unit_name else f"{quantity} [{unit_name}]", 64),
        **_spatial_kwargs(hd, grid), **_equipment(), **kwargs))
    _complete_type2c(pm, dss[0], laterality=True)
    atomic_write({path: lambda tmp: pm.save_as(tmp, enforce_file_format=True)}, overwrite=overwrite)
    return path


# ----------------------------------------------------------------------------- SEG
_CATEGORY_ANATOMY = Code("91723000", "SCT", "Anatomical Structure")
_CATEGORY_TISSUE = Code("85756007", "SCT", "Tissue")
_CATEGORY_ABNORMAL = Code("49755003", "SCT", "Morphologically Abnormal Structure")
_CATEGORY_SUBSTANCE = Code("91720002", "SCT", "Body Substance")

#: word in an ROI name -> (category, type)
_ROI_CODES: dict[str, tuple[Code, Code]] = {
    "liver": (_CATEGORY_ANATOMY, Code("10200004", "SCT", "Liver")),
    "spleen": (_CATEGORY_ANATOMY, Code("78961009", "SCT", "Spleen")),
    "kidney": (_CATEGORY_ANATOMY, Code("64033007", "SCT", "Kidney")),
    "heart": (_CATEGORY_ANATOMY, Code("80891009", "SCT", "Heart")),
    "lung": (_CATEGORY_ANATOMY, Code("39607008", "SCT", "Lung")),
    "bladder": (_CATEGORY_ANATOMY, Code("89837001", "SCT", "Bladder")),
    "brain": (_CATEGORY_ANATOMY, Code("12738006", "SCT", "Brain")),
    "stomach": (_CATEGORY_ANATOMY, Code("69695003", "SCT", "Stomach")),
    "pancreas": (_CATEGORY_ANATOMY, Code("15776009", "SCT", "Pancreas")),
    "thyroid": (_CATEGORY_ANATOMY, Code("69748006", "SCT", "Thyroid")),
    "aorta": (_CATEGORY_ANATOMY, Code("15825003", "SCT", "Aorta")),
    "lymph": (_CATEGORY_ANATOMY, Code("59441001", "SCT", "Lymph Node")),
    "marrow": (_CATEGORY_TISSUE, Code("14016003", "SCT", "Bone Marrow")),
    "body": (_CATEGORY_ANATOMY, Code("38266002", "SCT", "Entire body")),
    "bone": (_CATEGORY_TISSUE, Code("272673000", "SCT", "Bone")),
    "muscle": (_CATEGORY_TISSUE, Code("71616004", "SCT", "Muscle")),
    "fat": (_CATEGORY_TISSUE, Code("55603005", "SCT", "Fat")),
    "adipose": (_CATEGORY_TISSUE, Code("55603005", "SCT", "Fat")),
    "blood": (_CATEGORY_SUBSTANCE, Code("87612001", "SCT", "Blood")),
    "necrosis": (_CATEGORY_ABNORMAL, Code("6574001", "SCT", "Necrosis")),
    "necrotic": (_CATEGORY_ABNORMAL, Code("6574001", "SCT", "Necrosis")),
}
_TUMOUR = (_CATEGORY_ABNORMAL, Code("108369006", "SCT", "Tumor"))
_TUMOUR_WORDS = ("tumour", "tumor", "lesion", "neoplasm", "cancer", "carcinoma", "metastasis", "metastases")
_GENERIC = (_CATEGORY_TISSUE, Code("85756007", "SCT", "Tissue"))


def segment_codes(name: str) -> tuple[Code, Code]:
    """(category, type) codes for an ROI name: Tumor where it says tumour/tumor, an organ or tissue it names, else Tissue.

    Examples
    --------
    >>> [c.meaning for c in segment_codes("tumour_rim")]
    ['Morphologically Abnormal Structure', 'Tumor']
    >>> segment_codes("kidneys")[1].meaning, segment_codes("ROI 3")[1].meaning
    ('Kidney', 'Tissue')
    """
    words = [w for w in re.split(r"[^a-z0-9]+", str(name).lower()) if w]
    if any(w.startswith(t) for w in words for t in _TUMOUR_WORDS):
        return _TUMOUR
    for w in words:
        for cand in (w, w[:-1] if w.endswith("s") else w):
            if cand in _ROI_CODES:
                return _ROI_CODES[cand]
    return _GENERIC


def write_seg(masks: Mapping[str, Volume], source, path: str | os.PathLike, *, overwrite: bool = False,
              series_description: str | None = None, series_number: int | None = None, series=None) -> Path:
    """Write boolean masks as one DICOM Segmentation (BINARY, one segment per ROI) referencing ``source``.

    Parameters
    ----------
    masks : dict of str to Volume
        ``{ROI name: mask}``; each mask boolean (or 0/1) on the grid of ``source``.  The
        name is the SegmentLabel; the category/type codes come from :func:`segment_codes`.
        Masks may overlap.
    source : path, list of paths, or list of pydicom.Dataset
        The series the masks were drawn on (as for :func:`write_parametric_map`).
    path : str or Path
        Output file, written atomically.
    overwrite : bool
        Replace an existing ``path``.
    series_description : str, optional
        Default ``"invivo ROIs: <names>"``.
    series_number : int, optional
        Default the source's SeriesNumber + 1000.
    series : int or str, optional
        Which series of a ``source`` folder holding several.

    Returns
    -------
    Path
        ``path``.  Segment algorithm type is MANUAL (the masks are the caller's; invivo encodes them).

    Raises
    ------
    GeometryError
        A mask is not on the source's grid.
    ParameterError
        No masks, an empty mask, values other than 0/1, a 4D mask, a bad name.
    """
    if not isinstance(masks, Mapping) or not masks:
        raise ParameterError("masks must be a non-empty dict {ROI name: boolean Volume}")
    path = Path(path)
    series_description = _check_lo(series_description, "series_description")
    arrays = []
    for name, m in masks.items():
        if not isinstance(name, str) or not name.strip() or len(name) > 64 or "\\" in name:
            raise ParameterError(f"ROI name {name!r} must be 1-64 characters without backslashes")
        vol = _as_volume(m, f"mask {name!r}")
        a = np.asarray(to_device(vol.data, "cpu"))  # host: files are written from host memory
        if a.ndim == 4:
            if a.shape[3] != 1:
                raise ParameterError(f"mask {name!r} is 4D {tuple(a.shape)}; give one 3D mask per ROI")
            a = a[..., 0]
        if a.dtype != bool:
            if a.dtype.kind not in "fiub" or not np.all((a == 0) | (a == 1)):
                found = np.unique(a[(a != 0) & (a != 1)])[:5] if a.dtype.kind in "fiub" else a.dtype
                raise ParameterError(f"mask {name!r} ({_volume_label(vol, 'a Volume')}) holds values other than 0 and 1 "
                                     f"({found}); pass a boolean mask (label maps: one mask per label)")
            a = a != 0
        if not a.any():
            raise ParameterError(f"mask {name!r} ({_volume_label(vol, 'a Volume')}) is empty; a SEG segment needs at "
                                 "least one voxel: leave the ROI out")
        arrays.append((name, vol, a))
    _check_output(path, overwrite)
    hd = _highdicom()
    dss, where = _source_datasets(source, series)
    grid = _source_grid(dss, where)
    for name, vol, _ in arrays:
        _check_grid(vol, grid, f"mask {name!r} ({_volume_label(vol, 'a Volume')})", where)
    pixels = np.stack([a.transpose(2, 1, 0) for _, _, a in arrays], axis=-1).astype(np.uint8)  # (k, rows, cols, segments)

    descriptions = []
    for n, (name, _, _) in enumerate(arrays, start=1):
        category, kind = segment_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=name, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type="MANUAL"))
    names = ", ".join(name for name, _, _ in arrays)
    seg = _wrap_highdicom("Segmentation", where, lambda: hd.seg.Segmentation(
        source_images=_complete_type2(dss), pixel_array=pixels, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=_series_number(series_number, dss, 2000), sop_instance_uid=hd.UID(), instance_number=1,
        omit_empty_frames=False, content_label="ROI", content_description=_short(f"invivo ROIs: {names}", 64),
        series_description=series_description or _short(f"invivo ROIs: {names}", 64),
        **_spatial_kwargs(hd, grid), **_equipment()))
    _complete_type2c(seg, dss[0], laterality=False)
    atomic_write({path: lambda tmp: seg.save_as(tmp, enforce_file_format=True)}, overwrite=overwrite)
    return path


# ----------------------------------------------------------------------------- readers
def _find_objects(path: Path, sop_class: str) -> list[Path]:
    """Files under ``path`` (or ``path`` itself) whose SOPClassUID is ``sop_class``."""
    files = _dicom._iter_files(path)
    hits = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        except (InvalidDicomError, OSError, ValueError, TypeError, KeyError, AttributeError, EOFError):
            continue
        if str(ds.get("SOPClassUID", "")) == sop_class:
            hits.append(f)
    return hits


def find_parametric_maps(path: str | os.PathLike) -> list[Path]:
    """The Parametric Map files at ``path`` (a file or a folder searched recursively)."""
    p = Path(path)
    if not p.exists():
        return []
    return _find_objects(p, PARAMETRIC_MAP_SOP_CLASS)


def _read_object(path, sop_class: str, what: str) -> tuple[Dataset, Path]:
    p = Path(path)
    if not p.exists():
        raise DicomError(f"{p}: no such file or folder")
    if p.is_dir():
        hits = _find_objects(p, sop_class)
        if not hits:
            raise DicomError(f"{p}: no DICOM {what} found")
        if len(hits) > 1:
            raise ParameterError(f"{p}: {len(hits)} DICOM {what} files found ({', '.join(h.name for h in hits[:5])}); "
                                 "pass the file")
        p = hits[0]
    try:
        ds = pydicom.dcmread(p)
    except (InvalidDicomError, OSError, ValueError, TypeError, KeyError, AttributeError, EOFError) as exc:
        raise DicomError(f"{p}: not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    sop = str(ds.get("SOPClassUID", ""))
    if sop != sop_class:
        name = getattr(pydicom.uid.UID(sop), "name", sop) if sop else "none"
        raise DicomError(f"{p}: not a DICOM {what} (SOPClassUID {sop or 'missing'}: {name})")
    return ds, p


def _find_in(item, shared, seq_kw: str, kw: str):
    for container in (item, shared):
        if container is None:
            continue
        seq = container.get(seq_kw)
        if seq and kw in seq[0] and seq[0].get(kw) not in (None, ""):
            return seq[0].get(kw)
    return None


@dataclass
class _Planes:
    positions: np.ndarray  # (n, 3) LPS per frame
    orientation: np.ndarray  # (6,)
    spacing: tuple[float, float]
    spacing_between_slices: float | None
    rows: int
    columns: int


def _planes(ds: Dataset, where: Path) -> _Planes:
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if len(per) != n:
        raise DicomError(f"{where}: NumberOfFrames is {n} but PerFrameFunctionalGroupsSequence has {len(per)} items")
    pos, ori = [], []
    for f, item in enumerate(per):
        p = _find_in(item, shared, "PlanePositionSequence", "ImagePositionPatient")
        o = _find_in(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        if p is None or o is None:
            raise MissingTagError(f"{where}: frame {f + 1} has no PlanePositionSequence/PlaneOrientationSequence "
                                  "(0020,9113)/(0020,9116); invivo reads patient-space objects only")
        pos.append([float(x) for x in p])
        ori.append([float(x) for x in o])
    ori_a = np.asarray(ori)
    if np.abs(ori_a - ori_a[0]).max() > 1e-4:
        raise GeometryError(f"{where}: frames have different ImageOrientationPatient; cannot build one grid")
    ps = _find_in(per[0], shared, "PixelMeasuresSequence", "PixelSpacing")
    if ps is None:
        raise MissingTagError(f"{where}: no (0028,0030) PixelSpacing in PixelMeasuresSequence")
    sbs = _find_in(per[0], shared, "PixelMeasuresSequence", "SpacingBetweenSlices")
    return _Planes(np.asarray(pos), ori_a[0], (float(ps[0]), float(ps[1])),
                   float(sbs) if sbs not in (None, "") and float(sbs) > 0 else None, int(ds.Rows), int(ds.Columns))


def _grid_of_planes(pl: _Planes, where: Path) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """Shape (i, j, k), RAS affine and each frame's slice index k."""
    row_dir, col_dir = pl.orientation[:3], pl.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    d = pl.positions @ normal
    order = np.argsort(d, kind="stable")
    ud, reps = [], []
    for i in order:
        if not ud or abs(d[i] - ud[-1]) >= 1e-3:
            ud.append(float(d[i]))
            reps.append(pl.positions[i])
    ud_a = np.asarray(ud)
    if len(ud) > 1:
        diffs = np.diff(ud_a)
        step = pl.spacing_between_slices or float(diffs.min())
        r = (ud_a - ud_a[0]) / step
        if np.abs(r - np.round(r)).max() > 0.01:
            raise GeometryError(f"{where}: frame positions are not on a regular slice grid of {step:.6g} mm "
                                f"(positions {np.round(ud_a[:6], 4).tolist()}... mm along the normal)")
        nk = int(round(r[-1])) + 1
        if nk == len(ud):  # every slice present: the median spacing, as invivo.load computes it
            step = float(np.median(diffs))
        vec = (reps[-1] - reps[0]) / (ud_a[-1] - ud_a[0])
        inplane = vec - normal * (vec @ normal)
        step_vec = vec * step if np.linalg.norm(inplane) > 1e-4 else normal * step
    else:
        nk, step = 1, pl.spacing_between_slices or 1.0
        step_vec = normal * step
    p0 = reps[0]
    k = np.rint((d - ud_a[0]) / step).astype(int)
    expected = p0 + k[:, None] * step_vec
    dev = np.abs(pl.positions - expected).max() if len(k) else 0.0
    if dev > 1e-3 + 1e-6 * nk:
        raise GeometryError(f"{where}: frame positions deviate by {dev:.4g} mm from one regular grid "
                            "(in-plane shifts between frames); the object cannot be read as one volume")
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pl.spacing[1]
    lps[:3, 1] = col_dir * pl.spacing[0]
    lps[:3, 2] = step_vec
    lps[:3, 3] = p0
    return (pl.columns, pl.rows, nk), LPS_TO_RAS @ lps, k


def _common_meta(ds: Dataset, path: Path, modality: str) -> Meta:
    meta = _dicom.series_meta(ds, modality)
    meta.subject = _dicom._subject(ds)
    meta.extra["frame_of_reference_uid"] = str(ds.get("FrameOfReferenceUID", "")) or None
    meta.extra["sop_class_uid"] = str(ds.get("SOPClassUID", "")) or None
    meta.extra["sop_instance_uid"] = str(ds.get("SOPInstanceUID", "")) or None
    meta.extra["referenced_series_uids"] = [str(it.get("SeriesInstanceUID", ""))
                                           for it in (ds.get("ReferencedSeriesSequence") or [])]
    meta.source = {"file": str(path), "files": 1}
    return meta


def _code_dict(item: Dataset | None) -> dict | None:
    if item is None:
        return None
    return {"value": str(item.get("CodeValue", "") or item.get("LongCodeValue", "") or item.get("URNCodeValue", "")),
            "scheme": str(item.get("CodingSchemeDesignator", "")), "meaning": str(item.get("CodeMeaning", ""))}


def read_parametric_map(path: str | os.PathLike) -> Volume:
    """Read a DICOM Parametric Map as a Volume with its real-world values.

    Parameters
    ----------
    path : str or Path
        The file, or a folder holding exactly one Parametric Map.

    Returns
    -------
    Volume
        float32 data (Real World Value Mapping applied; float pixel data with an identity
        mapping come back bit for bit), RAS+ affine of the frames' grid, ``meta.units``
        the invivo unit of the UCUM code (else the UCUM code itself),
        ``meta.extra["quantity"]`` the coded quantity, ``meta.extra["unit_ucum"]``, the
        referenced series UIDs and the frame of reference UID.

    Examples
    --------
    >>> vol = read_parametric_map("idg_pm.dcm")     # doctest: +SKIP
    >>> vol.meta.units, vol.meta.extra["quantity"]["meaning"]  # doctest: +SKIP
    ('%ID/g', 'Percent injected dose per gram')
    """
    ds, p = _read_object(path, PARAMETRIC_MAP_SOP_CLASS, "Parametric Map")
    pl = _planes(ds, p)
    shape, affine, k = _grid_of_planes(pl, p)
    try:
        frames = ds.pixel_array
    except Exception as exc:  # unsupported encoding, truncated file
        raise DicomError(f"{p}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None
    frames = np.asarray(frames).reshape(len(k), pl.rows, pl.columns)
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per = ds.PerFrameFunctionalGroupsSequence
    out = np.zeros(shape, dtype=np.float32)
    seen = np.zeros(shape[2], dtype=bool)
    first_map = None
    for f, item in enumerate(per):
        if seen[k[f]]:
            raise DicomError(f"{p}: two frames at slice {k[f]} (several channels or time points); invivo reads "
                             "single-channel 3D Parametric Maps")
        seen[k[f]] = True
        maps = None
        for container in (item, shared):
            if container is not None and container.get("RealWorldValueMappingSequence"):
                maps = container.RealWorldValueMappingSequence
                break
        if not maps:
            raise MissingTagError(f"{p}: frame {f + 1} has no (0040,9096) RealWorldValueMappingSequence")
        m = maps[0]
        first_map = first_map or m
        px = frames[f]
        if "RealWorldValueLUTData" in m:
            if px.dtype.kind not in "iu":
                raise DicomError(f"{p}: a LUT Real World Value Mapping on non-integer pixel data")
            lut = np.asarray(m.RealWorldValueLUTData, dtype=np.float64)
            first = int(m.get("RealWorldValueFirstValueMapped", 0))
            idx = np.clip(px.astype(np.int64) - first, 0, len(lut) - 1)
            vals = lut[idx]
        else:
            slope = float(m.get("RealWorldValueSlope", 1.0))
            inter = float(m.get("RealWorldValueIntercept", 0.0))
            vals = px if (slope == 1.0 and inter == 0.0 and px.dtype.kind == "f") else px.astype(np.float64) * slope + inter
        out[:, :, k[f]] = np.asarray(vals, dtype=np.float32).T
    if not seen.all():
        missing = np.nonzero(~seen)[0]
        raise GeometryError(f"{p}: no frame for {len(missing)} of {shape[2]} slices (first missing: {int(missing[0])}); "
                            "the map does not cover a regular grid")
    meta = _common_meta(ds, p, str(ds.get("Modality", "OT")) or "OT")
    unit_item = (first_map.get("MeasurementUnitsCodeSequence") or [None])[0]
    ucum = str(unit_item.get("CodeValue", "")) if unit_item is not None else ""
    meta.units = _UNIT_OF_UCUM.get(ucum, ucum or None)
    qseq = first_map.get("QuantityDefinitionSequence") or []
    quantity = next((_code_dict((it.get("ConceptCodeSequence") or [None])[0]) for it in qseq
                     if it.get("ConceptCodeSequence")), None)
    meta.extra.update({"quantity": quantity, "unit_ucum": _code_dict(unit_item),
                       "lut_label": str(first_map.get("LUTLabel", "")) or None,
                       "content_label": str(ds.get("ContentLabel", "")) or None})
    return Volume(out, affine, meta)


def read_seg(path: str | os.PathLike, *, reference: Volume | None = None) -> dict[str, Volume]:
    """Read a DICOM Segmentation as ``{segment label: boolean Volume}``.

    Parameters
    ----------
    path : str or Path
        The file, or a folder holding exactly one Segmentation.
    reference : Volume, optional
        Put the masks on this grid (its slices must be the SEG's planes: same orientation,
        pixel spacing and rows/columns).  Default: the grid of the SEG's own frames, which
        for files written by :func:`write_seg` is the source series' grid.

    Returns
    -------
    dict of str to Volume
        In segment-number order; boolean data; ``meta.extra["segment"]`` holds the segment
        number and its category/type codes.  FRACTIONAL segments are thresholded at half
        their maximum value.
    """
    ds, p = _read_object(path, SEGMENTATION_SOP_CLASS, "Segmentation")
    kind = str(ds.get("SegmentationType", "BINARY")).upper()
    if kind not in ("BINARY", "FRACTIONAL"):
        raise DicomError(f"{p}: SegmentationType {kind} is not supported; invivo reads BINARY and FRACTIONAL")
    pl = _planes(ds, p)
    if reference is not None:
        ref = _as_volume(reference, "reference")
        shape, affine = ref.spatial_shape, ref.affine
        lps = LPS_TO_RAS @ affine
        ijk = (np.linalg.inv(lps) @ np.c_[pl.positions, np.ones(len(pl.positions))].T).T[:, :3]
        k = np.rint(ijk[:, 2]).astype(int)
        ok = (np.abs(ijk[:, :2]).max() < 1e-3 and np.abs(ijk[:, 2] - k).max() < 1e-3 and k.min() >= 0 and k.max() < shape[2]
              and (pl.columns, pl.rows) == tuple(shape[:2])
              and np.allclose(lps[:3, 0], pl.orientation[:3] * pl.spacing[1], atol=1e-4)
              and np.allclose(lps[:3, 1], pl.orientation[3:] * pl.spacing[0], atol=1e-4))
        if not ok:
            raise GeometryError(f"{p}: the segmentation's planes are not slices of the reference grid "
                                f"(shape {shape}); pass the series the SEG was drawn on")
    else:
        shape, affine, k = _grid_of_planes(pl, p)
    try:
        frames = np.asarray(ds.pixel_array).reshape(len(k), pl.rows, pl.columns)
    except Exception as exc:
        raise DicomError(f"{p}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None
    threshold = 0 if kind == "BINARY" else float(ds.get("MaximumFractionalValue", 255)) / 2.0
    segs = {int(s.SegmentNumber): s for s in ds.get("SegmentSequence") or []}
    if not segs:
        raise MissingTagError(f"{p}: no (0062,0002) SegmentSequence")
    data = {n: np.zeros(shape, dtype=bool) for n in segs}
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        n = _find_in(item, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        if n is None or int(n) not in data:
            raise DicomError(f"{p}: frame {f + 1} names segment {n}, which SegmentSequence does not describe")
        data[int(n)][:, :, k[f]] |= (frames[f] > threshold).T
    out: dict[str, Volume] = {}
    for n in sorted(segs):
        s = segs[n]
        label = str(s.get("SegmentLabel", "")) or f"segment {n}"
        if label in out:
            label = f"{label} ({n})"
        meta = _common_meta(ds, p, "SEG")
        meta.series_description = label
        meta.extra["segment"] = {
            "number": n, "label": str(s.get("SegmentLabel", "")),
            "category": _code_dict((s.get("SegmentedPropertyCategoryCodeSequence") or [None])[0]),
            "type": _code_dict((s.get("SegmentedPropertyTypeCodeSequence") or [None])[0]),
            "algorithm_type": str(s.get("SegmentAlgorithmType", "")) or None}
        out[label] = Volume(data[n], affine, meta)
    return out
