"""Write a :class:`~invivo.volume.Volume` as one synthetic DICOM series.

The writer exists so that tests, ``invivo demo``, benchmarks and the validation
phantoms can exercise the DICOM reader on data whose truth is known exactly.  It
writes what real scanners write, including the habits that break naive readers:

- files are written (and named) in a shuffled order, and ``InstanceNumber`` is not
  in spatial order (multi-echo MR repeats instance numbers per echo, as Siemens
  scanners do), so a reader must sort by ``ImagePositionPatient``;
- PET slices are int16 with one ``RescaleSlope`` per slice (and frame);
- enhanced MR is one multi-frame file with shuffled frames and the geometry in
  functional groups; SPECT is one multi-frame NM file with the geometry in the
  ``DetectorInformationSequence``.

Geometry
--------
The Volume affine maps voxel ``(i, j, k)`` to RAS+ mm; it is turned into DICOM's LPS
once (``LPS_TO_RAS``).  Axis ``i`` runs along a row (the first three values of
ImageOrientationPatient), ``j`` down the columns; the pixel array of slice ``k`` is
``data[:, :, k].T`` (rows = j, columns = i).  ``PixelSpacing`` is
``[spacing along j, spacing along i]``.

DICOM readers stack slices in increasing position along the slice normal
``row x column``.  When the affine's ``k`` axis points the other way the writer
stores the slices reversed, and the ``stored`` Volume returned with
``return_stored=True`` says so: it has the data and affine a correct reader returns.
"""

from __future__ import annotations

import math
import os
import uuid
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from ..backend import to_device
from ..errors import GeometryError, InvivoWarning, OutputExistsError, ParameterError
from ..isotopes import count_average_time_s, lookup
from ..volume import LPS_TO_RAS, Meta, Subject, Volume

__all__ = ["write_dicom", "DEFAULT_SERIES_DATETIME"]

#: Series date/time written when the Volume's metadata has none.
DEFAULT_SERIES_DATETIME = datetime(2024, 1, 15, 10, 0, 0)

#: Frame duration (s) written for a static PET Volume without ``frame_duration_s``.
DEFAULT_STATIC_DURATION_S = 600.0

#: Gyromagnetic ratio of 1H over 2 pi, MHz/T (for ImagingFrequency).
_GAMMA_BAR_MHZ_PER_T = 42.577478518

#: SNOMED CT codes of the Radionuclide Code Sequence (DICOM CID 4020 / CID 18).
_RADIONUCLIDE_CODES = {
    "18F": ("77004003", "^18^Fluorine"),
    "11C": ("40565003", "^11^Carbon"),
    "13N": ("21576001", "^13^Nitrogen"),
    "15O": ("129504001", "^15^Oxygen"),
    "68Ga": ("35337001", "^68^Gallium"),
    "64Cu": ("3932008", "^64^Copper"),
    "89Zr": ("63360001", "^89^Zirconium"),
    "124I": ("40937006", "^124^Iodine"),
    "82Rb": ("79197006", "^82^Rubidium"),
    "99mTc": ("72454006", "^99m^Technetium"),
    "111In": ("56609000", "^111^Indium"),
    "177Lu": ("447553000", "^177^Lutetium"),
}

_MODALITIES = {"PT": "PT", "PET": "PT", "MR": "MR", "MRI": "MR", "CT": "CT", "NM": "NM", "SPECT": "NM"}


# --------------------------------------------------------------------------- value formatting
def _ds(x) -> str:
    """A decimal string of at most 16 characters (DICOM DS)."""
    x = float(x)
    if x == 0.0:
        return "0"
    return format_number_as_ds(x)


def _dsf(x) -> float:
    """The float a reader gets back from ``_ds(x)``."""
    return float(_ds(x))


def _da(dt: datetime) -> str:
    return dt.strftime("%Y%m%d")


def _tm(dt: datetime) -> str:
    s = dt.strftime("%H%M%S")
    return f"{s}.{dt.microsecond:06d}" if dt.microsecond else s


def _dt(dt: datetime) -> str:
    return _da(dt) + _tm(dt)


def _add_seconds(dt: datetime, seconds: float) -> datetime:
    return dt + timedelta(microseconds=round(float(seconds) * 1e6))


# --------------------------------------------------------------------------- geometry
class _Geometry:
    """Everything the writer needs about the grid, in DICOM terms (LPS)."""

    def __init__(self, affine_ras: np.ndarray, n_slices: int, *, name: str):
        lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)
        ci, cj, ck = lps[:3, 0], lps[:3, 1], lps[:3, 2]
        di, dj = float(np.linalg.norm(ci)), float(np.linalg.norm(cj))
        row, col = ci / di, cj / dj
        if abs(float(row @ col)) > 1e-6:
            raise GeometryError(
                f"{name}: the i and j axes of the affine are not orthogonal (cos = {row @ col:.3g}); "
                "DICOM slices need orthogonal row and column directions: resample the volume first"
            )
        normal = np.cross(row, col)
        proj = float(ck @ normal)
        if abs(proj) < 1e-6 * float(np.linalg.norm(ck)):
            raise GeometryError(f"{name}: the k axis of the affine lies in the slice plane; cannot write slices")
        self.flipped = proj < 0
        if self.flipped:  # store slices in increasing position along the normal
            lps = lps.copy()
            lps[:3, 3] = lps[:3, 3] + (n_slices - 1) * ck
            lps[:3, 2] = -ck
            ck = -ck
            proj = -proj
        self.sheared = bool(np.linalg.norm(ck - proj * normal) > 1e-6 * abs(proj))
        if n_slices == 1:  # a reader can only place one slice along the normal
            lps = lps.copy()
            lps[:3, 2] = proj * normal
            ck = lps[:3, 2]
        self.lps = lps
        self.ras = LPS_TO_RAS @ lps
        self.n_slices = n_slices
        self.row, self.col, self.normal = row, col, normal
        self.iop = [_ds(v) for v in (*row, *col)]
        self.pixel_spacing = [_ds(dj), _ds(di)]
        self.slice_spacing = proj

    def position(self, k: int) -> list[str]:
        p = self.lps[:3, 3] + k * self.lps[:3, 2]
        return [_ds(v) for v in p]

    def slice_location(self, k: int) -> str:
        return _ds(float((self.lps[:3, 3] + k * self.lps[:3, 2]) @ self.normal))


# --------------------------------------------------------------------------- helpers
def _shuffled(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(n)`` that is neither the identity nor its reverse (n >= 3)."""
    if n < 2:
        return np.arange(n)
    for _ in range(100):
        p = rng.permutation(n)
        if not (np.all(p == np.arange(n)) or (n >= 3 and np.all(p == np.arange(n)[::-1]))):
            return p
    return np.roll(np.arange(n), 1)  # pragma: no cover - practically unreachable


def _note(meta: Meta, msg: str) -> None:
    warnings.warn(msg, InvivoWarning, stacklevel=4)  # _note <- _pet <- write_dicom <- caller
    meta.assumptions.append(msg)


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a folder; choose another out_dir")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out_dir} exists and is not empty; choose an empty folder or pass overwrite=True "
            "(files of the same names are then replaced)"
        )


def _write_atomic(ds: Dataset, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _sex_code(sex: str | None) -> str:
    if not sex:
        return ""
    s = str(sex).strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}.get(s, "O")


def _base_dataset(ctx: dict, sop_class: str) -> Dataset:
    """Patient, study, series, frame-of-reference and equipment modules."""
    ds = Dataset()
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid()
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = "INVIVO_SYNTH"
    ds.file_meta = fm

    sdt: datetime = ctx["series_datetime"]
    subj: Subject = ctx["subject"]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = _da(ctx["study_datetime"])
    ds.StudyTime = _tm(ctx["study_datetime"])
    ds.SeriesDate = _da(sdt)
    ds.SeriesTime = _tm(sdt)
    ds.ContentDate = _da(sdt)
    ds.ContentTime = _tm(sdt)
    ds.AccessionNumber = ""
    ds.Modality = ctx["modality"]
    ds.Manufacturer = "invivo.synth"
    ds.ManufacturerModelName = "synthetic"
    ds.SoftwareVersions = ctx["version"]
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = ctx["study_description"]
    ds.SeriesDescription = ctx["series_description"]
    ds.PatientName = ctx["patient_name"]
    ds.PatientID = ctx["patient_id"]
    ds.PatientBirthDate = ""
    ds.PatientSex = _sex_code(subj.sex)
    if subj.weight_kg is not None:
        ds.PatientWeight = _ds(subj.weight_kg)
    if subj.height_m is not None:
        ds.PatientSize = _ds(subj.height_m)
    if subj.species:
        ds.PatientSpeciesDescription = str(subj.species)
        ds.PatientBreedDescription = str(subj.strain or "")
        ds.PatientBreedCodeSequence = Sequence()
        ds.BreedRegistrationSequence = Sequence()
        ds.ResponsiblePerson = ""
        ds.ResponsibleOrganization = ""
    ds.StudyInstanceUID = ctx["study_uid"]
    ds.SeriesInstanceUID = ctx["series_uid"]
    ds.StudyID = "1"
    ds.SeriesNumber = ctx["series_number"]
    ds.FrameOfReferenceUID = ctx["frame_of_reference_uid"]
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = ctx["patient_position"]
    ds.BurnedInAnnotation = "NO"
    return ds


def _pixel_module(ds: Dataset, rows: int, cols: int, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0


def _plane_module(ds: Dataset, geo: _Geometry, k: int) -> None:
    ds.PixelSpacing = geo.pixel_spacing
    ds.ImageOrientationPatient = geo.iop
    ds.ImagePositionPatient = geo.position(k)
    ds.SliceThickness = _ds(geo.slice_spacing)
    ds.SpacingBetweenSlices = _ds(geo.slice_spacing)
    ds.SliceLocation = geo.slice_location(k)


def _radiopharmaceutical_item(tracer, *, pet: bool) -> Dataset:
    item = Dataset()
    iso = None
    if tracer.isotope:
        iso = lookup(tracer.isotope)
    if tracer.radiopharmaceutical or iso is not None:
        item.Radiopharmaceutical = str(tracer.radiopharmaceutical or iso.name)
    if tracer.injection_datetime is not None:
        item.RadiopharmaceuticalStartTime = _tm(tracer.injection_datetime)
        item.RadiopharmaceuticalStartDateTime = _dt(tracer.injection_datetime)
    if tracer.injected_activity_bq is not None:
        item.RadionuclideTotalDose = _ds(tracer.injected_activity_bq)
    half_life = tracer.half_life_s if tracer.half_life_s else (iso.half_life_s if iso else None)
    if half_life:
        item.RadionuclideHalfLife = _ds(half_life)
    if iso is not None:
        if pet and iso.positron_fraction:
            item.RadionuclidePositronFraction = _ds(iso.positron_fraction)
        if iso.name in _RADIONUCLIDE_CODES:
            value, meaning = _RADIONUCLIDE_CODES[iso.name]
            code = Dataset()
            code.CodeValue = value
            code.CodingSchemeDesignator = "SCT"
            code.CodeMeaning = meaning
            item.RadionuclideCodeSequence = Sequence([code])
    return item


def _half_life(meta: Meta) -> float | None:
    t = meta.tracer
    if t is None:
        return None
    if t.half_life_s:
        return float(t.half_life_s)
    if t.isotope:
        return lookup(t.isotope).half_life_s
    return None


# --------------------------------------------------------------------------- public entry point
def write_dicom(
    volume: Volume,
    out_dir: str | os.PathLike,
    *,
    modality: str | None = None,
    series_description: str | None = None,
    patient_id: str = "SYNTH01",
    patient_name: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    study_datetime: datetime | None = None,
    enhanced: bool = False,
    phase: bool = False,
    repetition_time_s: float | None = None,
    flip_angle_deg: float | None = None,
    mr_scale: float | None = None,
    patient_position: str = "HFP",
    seed: int = 0,
    overwrite: bool = False,
    return_stored: bool = False,
):
    """Write ``volume`` as one DICOM series (Explicit VR Little Endian).

    Parameters
    ----------
    volume : Volume
        3D ``(I, J, K)`` or 4D ``(I, J, K, T)`` data; the last axis holds PET frames
        (``meta.frame_start_s``/``frame_duration_s``, seconds from
        ``meta.series_datetime``) or MR echoes (``meta.echo_times_s``, seconds).
        CuPy data are copied to the host.
    out_dir : str or Path
        Folder for the files; created if needed.  An existing non-empty folder is
        refused unless ``overwrite=True``.
    modality : {"PT", "MR", "CT", "NM"}, optional
        SOP class to write (PET Image, MR Image or Enhanced MR Image, CT Image, NM
        Image); ``"PET"`` and ``"SPECT"`` are accepted too.  Default:
        ``volume.meta.modality``.
    series_description, patient_id, patient_name : str, optional
        Written as SeriesDescription, PatientID and PatientName (default: the ID).
    study_uid, series_uid, frame_of_reference_uid : str, optional
        Pass the same study and frame-of-reference UIDs to several calls to write
        series of one study on one bed.  Default: new UIDs
        (:func:`pydicom.uid.generate_uid`).
    series_number : int
        SeriesNumber.
    study_datetime : datetime, optional
        StudyDate/Time; default the series date/time.
    enhanced : bool
        MR only: write one Enhanced MR Image Storage multi-frame file with the
        geometry, echo times and rescale in functional groups and frames shuffled.
    phase : bool
        MR only: the data are phase images in radians in [-pi, pi]; they are stored
        as 0..4095 with RescaleSlope 2 and RescaleIntercept -4096 (Siemens' scheme),
        ImageType ``ORIGINAL\\PRIMARY\\P\\ND``.
    repetition_time_s, flip_angle_deg : float, optional
        MR RepetitionTime (written in ms) and FlipAngle (degrees).  Defaults:
        ``meta.extra["repetition_time_s"]`` / ``["flip_angle_deg"]``, else 0.05 s and 20 deg.
    mr_scale : float, optional
        MR magnitude only: multiply the data by this before rounding to uint16.
        Default: 1 for integer data in [0, 65535], else ``65535 / max`` (one factor for
        the whole series, so echo ratios are kept).  Classic MR has no rescale tags,
        so a reader recovers the scaled integers.
    patient_position : str
        PatientPosition (default ``"HFP"``, head first prone, as for a mouse).
    seed : int
        Seed of the shuffles of file names, instance numbers and frames.
    overwrite : bool
        Allow writing into a non-empty ``out_dir``.
    return_stored : bool
        Also return the Volume a correct reader recovers.

    Returns
    -------
    paths : list of Path
        The files written, sorted by name (names are in write order, which is shuffled).
    stored : Volume
        Only with ``return_stored=True``: float64 data exactly as stored
        (``int * RescaleSlope + RescaleIntercept``), on the affine a reader
        reconstructs (slices reversed when the input's k axis points against the
        slice normal), with the metadata written (UIDs, timing rounded to what the
        tags hold, ...).

    Raises
    ------
    ParameterError
        Unknown modality, data that do not fit the storage (NaN, negative NM or MR
        magnitude values, phase outside [-pi, pi]), or timing that does not match
        the number of frames/echoes.
    GeometryError
        The affine's i and j axes are not orthogonal, or (NM) the slices are sheared.
    OutputExistsError
        ``out_dir`` is not empty and ``overwrite`` is False.

    Notes
    -----
    PET: int16 per slice and frame with ``RescaleSlope = max|slice| / 32767`` (the
    slope as written in its DS string is the one used to quantise), Units from
    ``meta.units`` (default BQML), DecayCorrection from ``meta.decay_correction``
    (default START), the radiopharmaceutical from ``meta.tracer`` and the subject
    from ``meta.subject``.  CT: int16 with RescaleIntercept -1024.  NM: one
    multi-frame file (frames = slices) stored as uint16 with one RescaleSlope.

    Examples
    --------
    >>> import numpy as np, tempfile, invivo
    >>> from invivo.synth import write_dicom
    >>> vol = invivo.Volume(np.arange(24.0).reshape(2, 3, 4), np.eye(4), invivo.Meta(modality="CT"))
    >>> paths = write_dicom(vol, tempfile.mkdtemp())
    >>> len(paths)
    4
    """
    if not isinstance(volume, Volume):
        raise ParameterError(f"write_dicom: volume must be an invivo.Volume, got {type(volume).__name__}")
    mod_in = modality if modality is not None else volume.meta.modality
    mod = _MODALITIES.get(str(mod_in).upper()) if mod_in else None
    if mod is None:
        raise ParameterError(
            f"write_dicom: modality {mod_in!r} cannot be written; pass modality= one of PT, MR, CT, NM"
        )
    if enhanced and mod != "MR":
        raise ParameterError(f"write_dicom: enhanced=True is for MR, not {mod}")
    if phase and mod != "MR":
        raise ParameterError(f"write_dicom: phase=True is for MR, not {mod}")

    data = np.asarray(to_device(volume.data, "cpu"), dtype=np.float64)  # host: files are written from host memory
    if not np.all(np.isfinite(data)):
        raise ParameterError("write_dicom: volume.data contains NaN or inf; DICOM integers cannot hold them")
    if data.ndim == 3:
        data4 = data[..., None]
    else:
        data4 = data
    n_i, n_j, n_k, n_t = data4.shape
    if mod in ("CT", "NM") and data.ndim == 4:
        raise ParameterError(f"write_dicom: {mod} is written as a 3D volume; got shape {data.shape}")

    out = Path(out_dir)
    _check_out_dir(out, overwrite)

    geo = _Geometry(volume.affine, n_k, name="write_dicom")
    if geo.flipped:
        data4 = data4[:, :, ::-1, :]
    if mod == "NM" and geo.sheared:
        raise GeometryError(
            "write_dicom: NM slices are placed along the slice normal; the affine's k axis is sheared "
            "(not perpendicular to the slice plane): resample first"
        )

    import invivo

    meta = volume.meta.copy()
    sdt = meta.series_datetime or DEFAULT_SERIES_DATETIME
    subject = meta.subject if meta.subject is not None else Subject()
    subject = Subject(**{**subject.__dict__, "id": patient_id})
    ctx = {
        "modality": mod,
        "series_datetime": sdt,
        "study_datetime": study_datetime or sdt,
        "subject": subject,
        "patient_id": patient_id,
        "patient_name": patient_name if patient_name is not None else patient_id,
        "study_uid": study_uid or generate_uid(),
        "series_uid": series_uid or generate_uid(),
        "frame_of_reference_uid": frame_of_reference_uid or generate_uid(),
        "series_number": int(series_number),
        "series_description": series_description if series_description is not None
        else (meta.series_description or f"synthetic {mod}"),
        "study_description": "invivo synthetic study",
        "patient_position": patient_position,
        "version": str(invivo.__version__),
    }
    stored_meta = meta.copy(
        modality=mod,
        subject=subject,
        series_datetime=sdt,
        series_uid=ctx["series_uid"],
        study_uid=ctx["study_uid"],
        series_description=ctx["series_description"],
        series_number=ctx["series_number"],
        manufacturer="invivo.synth",
    )
    stored_meta.extra = {**stored_meta.extra, "frame_of_reference_uid": ctx["frame_of_reference_uid"]}
    # the stored metadata holds only what this modality's files carry
    if mod != "PT":
        stored_meta.frame_start_s = stored_meta.frame_duration_s = None
        stored_meta.decay_correction = None
        stored_meta.reference_activity_bq = stored_meta.suv_bw_factor = None
    if mod != "MR":
        stored_meta.echo_times_s = None
        stored_meta.magnetic_field_t = None
    if mod in ("MR", "CT"):
        stored_meta.tracer = None
    rng = np.random.default_rng(seed)

    if mod == "PT":
        items, stored = _pet(data4, geo, ctx, stored_meta, rng)
    elif mod == "MR" and enhanced:
        items, stored = _mr_enhanced(data4, geo, ctx, stored_meta, rng, phase=phase, mr_scale=mr_scale,
                                     tr_s=repetition_time_s, flip_deg=flip_angle_deg, is4d=data.ndim == 4)
    elif mod == "MR":
        items, stored = _mr(data4, geo, ctx, stored_meta, rng, phase=phase, mr_scale=mr_scale,
                            tr_s=repetition_time_s, flip_deg=flip_angle_deg, is4d=data.ndim == 4)
    elif mod == "CT":
        items, stored = _ct(data4, geo, ctx, stored_meta, rng)
    else:
        items, stored = _nm(data4, geo, ctx, stored_meta)

    out.mkdir(parents=True, exist_ok=True)  # only now that every dataset was built
    order = _shuffled(len(items), rng)
    paths = []
    for n, idx in enumerate(order):
        path = out / f"{mod}{n + 1:05d}.dcm"
        _write_atomic(items[idx], path)
        paths.append(path)

    if not return_stored:
        return paths
    sdata = stored if data.ndim == 4 else stored[..., 0]
    return paths, Volume(sdata, geo.ras, stored_meta)


# --------------------------------------------------------------------------- PET
def _pet(data4, geo: _Geometry, ctx, meta: Meta, rng):
    n_i, n_j, n_k, n_t = data4.shape
    # frame timing
    starts = meta.frame_start_s
    durs = meta.frame_duration_s
    if starts is None:
        if n_t > 1:
            raise ParameterError(
                f"write_dicom: dynamic PET with {n_t} frames needs meta.frame_start_s (seconds from series start)"
            )
        starts = (0.0,)
    if durs is None:
        if n_t > 1:
            raise ParameterError(f"write_dicom: dynamic PET with {n_t} frames needs meta.frame_duration_s (seconds)")
        durs = (DEFAULT_STATIC_DURATION_S,)
        _note(meta, "static PET without frame_duration_s: ActualFrameDuration written as "
                    f"{DEFAULT_STATIC_DURATION_S:g} s")
    if len(starts) != n_t or len(durs) != n_t:
        raise ParameterError(
            f"write_dicom: PET data have {n_t} frames but meta.frame_start_s has {len(starts)} and "
            f"meta.frame_duration_s {len(durs)} values"
        )
    starts_us = [round(float(s) * 1e6) / 1e6 for s in starts]
    durs_ms = [round(float(d) * 1000.0) for d in durs]  # ActualFrameDuration is IS (integer ms)
    if any(abs(d / 1000.0 - float(x)) > 1e-9 for d, x in zip(durs_ms, durs)) or any(
        abs(a - float(b)) > 1e-9 for a, b in zip(starts_us, starts)
    ):
        _note(meta, "PET frame timing rounded to what DICOM holds (start: microseconds, duration: whole ms)")
    if any(d <= 0 for d in durs_ms):
        raise ParameterError(f"write_dicom: PET frame durations must be at least 1 ms, got {list(durs)}")
    meta.frame_start_s = tuple(float(s) for s in starts_us)
    meta.frame_duration_s = tuple(d / 1000.0 for d in durs_ms)

    units = meta.units or "BQML"
    meta.units = units
    decay = (meta.decay_correction or "START").upper()
    if decay not in ("START", "ADMIN", "NONE"):
        raise ParameterError(f"write_dicom: meta.decay_correction must be START, ADMIN or NONE, got {decay!r}")
    meta.decay_correction = decay
    half_life = _half_life(meta)
    tracer = meta.tracer
    if decay == "ADMIN" and (tracer is None or tracer.injection_datetime is None):
        raise ParameterError("write_dicom: DecayCorrection ADMIN needs meta.tracer.injection_datetime")
    sdt = ctx["series_datetime"]
    inj_offset_s = None
    if tracer is not None and tracer.injection_datetime is not None:
        inj_offset_s = (sdt - tracer.injection_datetime).total_seconds()
    meta.acquisition_datetime = _add_seconds(sdt, meta.frame_start_s[0])

    perm = _shuffled(n_k * n_t, rng)
    stored = np.empty_like(data4)
    items = []
    for t in range(n_t):
        start_s = meta.frame_start_s[t]
        dur_ms = durs_ms[t]
        acq = _add_seconds(sdt, start_s)
        decay_factor = 1.0
        if decay != "NONE" and half_life:
            lam = math.log(2.0) / half_life
            dt_ref = start_s if decay == "START" else start_s + inj_offset_s
            ld = lam * dur_ms / 1000.0
            decay_factor = math.exp(lam * dt_ref) * ld / (-math.expm1(-ld))
        for k in range(n_k):
            sl = data4[:, :, k, t]
            m = float(np.max(np.abs(sl)))
            slope = _dsf(m / 32767.0) if m > 0 else 1.0
            q = np.clip(np.rint(sl / slope), -32768, 32767).astype(np.int16)
            stored[:, :, k, t] = q.astype(np.float64) * slope

            ds = _base_dataset(ctx, PositronEmissionTomographyImageStorage)
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.SeriesType = ["DYNAMIC" if n_t > 1 else "STATIC", "IMAGE"]
            ds.Units = units
            ds.CountsSource = "EMISSION"
            ds.DecayCorrection = decay
            ds.CorrectedImage = (["DECY"] if decay != "NONE" else []) + ["ATTN", "SCAT", "DTIM", "RAN", "NORM"]
            ds.RandomsCorrectionMethod = "DLYD"
            ds.AttenuationCorrectionMethod = "synthetic"
            ds.ReconstructionMethod = "synthetic (analytic phantom)"
            ds.NumberOfSlices = n_k
            ds.NumberOfTimeSlices = n_t
            ds.AcquisitionDate = _da(acq)
            ds.AcquisitionTime = _tm(acq)
            ds.FrameReferenceTime = _ds(1000.0 * (start_s + count_average_time_s(dur_ms / 1000.0, half_life)))
            ds.ActualFrameDuration = dur_ms
            ds.DecayFactor = _ds(decay_factor)
            ds.DoseCalibrationFactor = "1"
            ds.ImageIndex = t * n_k + k + 1
            ds.InstanceNumber = int(perm[t * n_k + k]) + 1
            ds.AcquisitionNumber = t + 1
            ds.PatientOrientationCodeSequence = Sequence()
            ds.PatientGantryRelationshipCodeSequence = Sequence()
            ds.RadiopharmaceuticalInformationSequence = Sequence(
                [_radiopharmaceutical_item(tracer, pet=True)] if tracer is not None else []
            )
            _plane_module(ds, geo, k)
            _pixel_module(ds, n_j, n_i, signed=True)
            ds.RescaleIntercept = "0"
            ds.RescaleSlope = _ds(slope)
            ds.PixelData = np.ascontiguousarray(q.T).astype("<i2").tobytes()
            items.append(ds)

    # what a QIBA reader derives (one value per slice and frame)
    if tracer is not None and tracer.injected_activity_bq and half_life and inj_offset_s is not None:
        a0 = float(tracer.injected_activity_bq)
        if decay == "ADMIN":
            ref = np.full((n_k, n_t), a0)
        elif decay == "START":
            ref = np.full((n_k, n_t), a0 * 2.0 ** (-inj_offset_s / half_life))
        else:
            ref = np.tile(a0 * 2.0 ** (-(inj_offset_s + np.asarray(meta.frame_start_s)) / half_life), (n_k, 1))
        meta.reference_activity_bq = ref
        if meta.subject.weight_kg:
            meta.suv_bw_factor = meta.subject.weight_kg * 1000.0 / ref
    return items, stored


# --------------------------------------------------------------------------- MR
def _mr_quantise(data4, *, phase: bool, mr_scale, enhanced: bool):
    """Integers to store, RescaleSlope, RescaleIntercept (None: no rescale tags)."""
    if phase:
        if data4.min() < -math.pi - 1e-9 or data4.max() > math.pi + 1e-9:
            raise ParameterError(
                "write_dicom: phase=True expects radians in [-pi, pi]; "
                f"data range is [{data4.min():.4g}, {data4.max():.4g}]"
            )
        q = np.clip(np.rint((data4 + math.pi) / (2 * math.pi) * 4095.0), 0, 4095).astype(np.uint16)
        return q, 2.0, -4096.0
    if data4.min() < 0:
        raise ParameterError(
            f"write_dicom: MR magnitude data must be >= 0 (min {data4.min():.4g}); pass phase=True for phase images"
        )
    integer = bool(np.all(data4 == np.rint(data4))) and data4.max() <= 65535
    if mr_scale is not None:
        if not (mr_scale > 0 and math.isfinite(mr_scale)):
            raise ParameterError(f"write_dicom: mr_scale must be a positive number, got {mr_scale!r}")
        scaled = data4 * float(mr_scale)
        if scaled.max() > 65535:
            raise ParameterError(f"write_dicom: mr_scale={mr_scale} makes values up to {scaled.max():.4g} > 65535")
        q = np.rint(scaled).astype(np.uint16)
        return q, (1.0 / float(mr_scale) if enhanced else None), (0.0 if enhanced else None)
    if integer:
        return data4.astype(np.uint16), (1.0 if enhanced else None), (0.0 if enhanced else None)
    m = float(data4.max())
    if enhanced:  # a real rescale is available: keep the physical values
        slope = _dsf(m / 65535.0) if m > 0 else 1.0
        return np.clip(np.rint(data4 / slope), 0, 65535).astype(np.uint16), slope, 0.0
    scale = 65535.0 / m if m > 0 else 1.0
    return np.clip(np.rint(data4 * scale), 0, 65535).astype(np.uint16), None, None


def _mr_common(ds: Dataset, meta: Meta, *, tr_ms: float, flip_deg: float, field_t: float, n_e: int) -> None:
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.SequenceName = "fl3d_me"
    ds.AngioFlag = "N"
    ds.RepetitionTime = _ds(tr_ms)
    ds.FlipAngle = _ds(flip_deg)
    ds.EchoTrainLength = n_e
    ds.NumberOfAverages = "1"
    ds.ImagedNucleus = "1H"
    ds.ImagingFrequency = _ds(_GAMMA_BAR_MHZ_PER_T * field_t)
    ds.MagneticFieldStrength = _ds(field_t)
    ds.PixelBandwidth = "300"


def _mr_params(meta: Meta, tr_s, flip_deg, n_e: int, is4d: bool):
    tes = meta.echo_times_s
    if is4d and (tes is None or len(tes) != n_e):
        raise ParameterError(
            f"write_dicom: 4D MR data have {n_e} echoes on the last axis but meta.echo_times_s is {tes!r}; "
            "give one echo time (seconds) per echo"
        )
    if tes is not None and not is4d and len(tes) != 1:
        raise ParameterError(f"write_dicom: 3D MR data need at most one echo time, got meta.echo_times_s={tes!r}")
    te_ms = None if tes is None else [_ds(float(t) * 1000.0) for t in tes]
    if tr_s is None:
        tr_s = meta.extra.get("repetition_time_s", 0.05)
    if flip_deg is None:
        flip_deg = meta.extra.get("flip_angle_deg", 20.0)
    field_t = float(meta.magnetic_field_t) if meta.magnetic_field_t else 7.0
    meta.magnetic_field_t = _dsf(field_t)
    if te_ms is not None:
        meta.echo_times_s = tuple(float(t) / 1000.0 for t in te_ms)
    meta.extra = {**meta.extra, "repetition_time_s": _dsf(tr_s * 1000.0) / 1000.0, "flip_angle_deg": _dsf(flip_deg)}
    return te_ms, float(tr_s) * 1000.0, float(flip_deg), field_t


def _mr(data4, geo, ctx, meta: Meta, rng, *, phase, mr_scale, tr_s, flip_deg, is4d):
    n_i, n_j, n_k, n_e = data4.shape
    te_ms, tr_ms, flip, field_t = _mr_params(meta, tr_s, flip_deg, n_e, is4d)
    q, slope, inter = _mr_quantise(data4, phase=phase, mr_scale=mr_scale, enhanced=False)
    stored = q.astype(np.float64)
    if phase:
        stored = stored * slope + inter
    meta.units = None
    meta.image_type = ("ORIGINAL", "PRIMARY", "P" if phase else "M", "ND")
    meta.acquisition_datetime = ctx["series_datetime"]
    perm = _shuffled(n_k, rng)  # instance numbers repeat per echo, as on Siemens scanners
    items = []
    for e in range(n_e):
        for k in range(n_k):
            ds = _base_dataset(ctx, MRImageStorage)
            ds.ImageType = list(meta.image_type)
            _mr_common(ds, meta, tr_ms=tr_ms, flip_deg=flip, field_t=field_t, n_e=n_e)
            ds.EchoTime = te_ms[e] if te_ms is not None else ""
            ds.EchoNumbers = e + 1
            ds.InstanceNumber = int(perm[k]) + 1
            ds.AcquisitionNumber = 1
            ds.AcquisitionDate = _da(ctx["series_datetime"])
            ds.AcquisitionTime = _tm(ctx["series_datetime"])
            _plane_module(ds, geo, k)
            _pixel_module(ds, n_j, n_i, signed=False)
            if phase:
                ds.RescaleIntercept = _ds(inter)
                ds.RescaleSlope = _ds(slope)
                ds.RescaleType = "US"
            ds.PixelData = np.ascontiguousarray(q[:, :, k, e].T).astype("<u2").tobytes()
            items.append(ds)
    return items, stored


def _mr_enhanced(data4, geo, ctx, meta: Meta, rng, *, phase, mr_scale, tr_s, flip_deg, is4d):
    n_i, n_j, n_k, n_e = data4.shape
    te_ms, tr_ms, flip, field_t = _mr_params(meta, tr_s, flip_deg, n_e, is4d)
    q, slope, inter = _mr_quantise(data4, phase=phase, mr_scale=mr_scale, enhanced=True)
    stored = q.astype(np.float64) * slope + inter
    flavour = "P_FFE" if phase else "M_FFE"
    meta.units = None
    meta.image_type = ("ORIGINAL", "PRIMARY", flavour, "NONE")
    meta.acquisition_datetime = ctx["series_datetime"]
    sdt = ctx["series_datetime"]

    ds = _base_dataset(ctx, EnhancedMRImageStorage)
    ds.ImageType = list(meta.image_type)
    ds.InstanceNumber = 1
    ds.ContentQualification = "PRODUCT"
    ds.AcquisitionDateTime = _dt(sdt)
    ds.AcquisitionDuration = 60.0
    ds.AcquisitionContrast = "T2_STAR"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "PHASE" if phase else "MAGNITUDE"
    ds.PulseSequenceName = "fl3d_me"
    ds.MRAcquisitionType = "3D"
    ds.EchoPulseSequence = "GRADIENT"
    ds.MultipleSpinEcho = "NO"
    ds.MultiPlanarExcitation = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE"
    ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = _ds(field_t)
    ds.ResonantNucleus = "1H"
    ds.ImagingFrequency = _ds(_GAMMA_BAR_MHZ_PER_T * field_t)
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.NumberOfFrames = n_k * n_e

    dim_org = generate_uid()
    org = Dataset()
    org.DimensionOrganizationUID = dim_org
    ds.DimensionOrganizationSequence = Sequence([org])
    ds.DimensionOrganizationType = "3D"
    dims = []
    dim_defs = [(Tag(0x0020, 0x9057), Tag(0x0020, 0x9111), "In-Stack Position Number")]  # in FrameContentSequence
    if te_ms is not None:
        dim_defs.append((Tag(0x0018, 0x9082), Tag(0x0018, 0x9114), "Effective Echo Time"))  # in MREchoSequence
    for pointer, group, desc in dim_defs:
        d = Dataset()
        d.DimensionOrganizationUID = dim_org
        d.DimensionIndexPointer = pointer
        d.FunctionalGroupPointer = group
        d.DimensionDescriptionLabel = desc
        dims.append(d)
    ds.DimensionIndexSequence = Sequence(dims)

    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = geo.pixel_spacing
    pm.SliceThickness = _ds(geo.slice_spacing)
    pm.SpacingBetweenSlices = _ds(geo.slice_spacing)
    shared.PixelMeasuresSequence = Sequence([pm])
    po = Dataset()
    po.ImageOrientationPatient = geo.iop
    shared.PlaneOrientationSequence = Sequence([po])
    timing = Dataset()
    timing.RepetitionTime = _ds(tr_ms)
    timing.FlipAngle = _ds(flip)
    timing.EchoTrainLength = n_e
    timing.RFEchoTrainLength = 0
    timing.GradientEchoTrainLength = n_e
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    ft = Dataset()
    ft.FrameType = list(meta.image_type)
    ft.PixelPresentation = "MONOCHROME"
    ft.VolumetricProperties = "VOLUME"
    ft.VolumeBasedCalculationTechnique = "NONE"
    ft.ComplexImageComponent = "PHASE" if phase else "MAGNITUDE"
    ft.AcquisitionContrast = "T2_STAR"
    shared.MRImageFrameTypeSequence = Sequence([ft])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    pairs = [(k, e) for e in range(n_e) for k in range(n_k)]
    order = _shuffled(len(pairs), rng)
    per_frame = []
    frames = []
    for idx in order:
        k, e = pairs[idx]
        fg = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = geo.position(k)
        fg.PlanePositionSequence = Sequence([pp])
        fc = Dataset()
        fc.StackID = "1"
        fc.InStackPositionNumber = k + 1
        fc.DimensionIndexValues = [k + 1, e + 1] if te_ms is not None else [k + 1]
        fc.FrameAcquisitionDateTime = _dt(sdt)
        fc.FrameReferenceDateTime = _dt(sdt)
        fc.FrameAcquisitionDuration = 60000.0
        fc.FrameAcquisitionNumber = 1
        fg.FrameContentSequence = Sequence([fc])
        if te_ms is not None:
            echo = Dataset()
            echo.EffectiveEchoTime = float(te_ms[e])
            fg.MREchoSequence = Sequence([echo])
        pv = Dataset()
        pv.RescaleIntercept = _ds(inter)
        pv.RescaleSlope = _ds(slope)
        pv.RescaleType = "US"
        fg.PixelValueTransformationSequence = Sequence([pv])
        per_frame.append(fg)
        frames.append(q[:, :, k, e].T)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    _pixel_module(ds, n_j, n_i, signed=False)
    ds.PixelData = np.ascontiguousarray(np.stack(frames)).astype("<u2").tobytes()
    return [ds], stored


# --------------------------------------------------------------------------- CT
def _ct(data4, geo, ctx, meta: Meta, rng):
    n_i, n_j, n_k, _ = data4.shape
    q = np.rint(data4[..., 0] + 1024.0)
    if q.min() < -32768 or q.max() > 32767:
        raise ParameterError(
            f"write_dicom: CT values must lie in [-33792, 31743] HU to fit int16 with intercept -1024; "
            f"got [{data4.min():.6g}, {data4.max():.6g}]"
        )
    q = q.astype(np.int16)
    stored = (q.astype(np.float64) - 1024.0)[..., None]
    meta.units = "HU"
    meta.image_type = ("ORIGINAL", "PRIMARY", "AXIAL")
    meta.acquisition_datetime = ctx["series_datetime"]
    perm = _shuffled(n_k, rng)
    items = []
    for k in range(n_k):
        ds = _base_dataset(ctx, CTImageStorage)
        ds.ImageType = list(meta.image_type)
        ds.KVP = "50"
        ds.XRayTubeCurrent = 500
        ds.ExposureTime = 300
        ds.ConvolutionKernel = "synthetic"
        ds.AcquisitionNumber = 1
        ds.AcquisitionDate = _da(ctx["series_datetime"])
        ds.AcquisitionTime = _tm(ctx["series_datetime"])
        ds.InstanceNumber = int(perm[k]) + 1
        _plane_module(ds, geo, k)
        _pixel_module(ds, n_j, n_i, signed=True)
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(q[:, :, k].T).astype("<i2").tobytes()
        items.append(ds)
    return items, stored


# --------------------------------------------------------------------------- NM (SPECT)
def _nm(data4, geo, ctx, meta: Meta):
    n_i, n_j, n_k, _ = data4.shape
    vol = data4[..., 0]
    if vol.min() < 0:
        raise ParameterError(
            f"write_dicom: NM data are stored as uint16 and must be >= 0 (min {vol.min():.4g}); "
            "clip or offset them first"
        )
    units = (meta.units or "CNTS").upper()
    if units not in ("BQML", "CNTS"):
        raise ParameterError(f"write_dicom: NM Units must be BQML or CNTS, got meta.units={meta.units!r}")
    meta.units = units
    m = float(vol.max())
    integer = bool(np.all(vol == np.rint(vol))) and m <= 65535
    slope = 1.0 if (integer or m == 0) else _dsf(m / 65535.0)
    q = np.clip(np.rint(vol / slope), 0, 65535).astype(np.uint16)
    stored = (q.astype(np.float64) * slope)[..., None]
    meta.image_type = ("ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION")
    meta.acquisition_datetime = ctx["series_datetime"]

    ds = _base_dataset(ctx, NuclearMedicineImageStorage)
    ds.ImageType = list(meta.image_type)
    ds.InstanceNumber = 1
    ds.AcquisitionDate = _da(ctx["series_datetime"])
    ds.AcquisitionTime = _tm(ctx["series_datetime"])
    ds.NumberOfFrames = n_k
    ds.FrameIncrementPointer = Tag(0x0054, 0x0080)  # SliceVector
    ds.SliceVector = list(range(1, n_k + 1))
    ds.NumberOfSlices = n_k
    ds.NumberOfEnergyWindows = 1
    ds.NumberOfDetectors = 1
    ds.Units = units
    ds.SliceThickness = _ds(geo.slice_spacing)
    ds.SpacingBetweenSlices = _ds(geo.slice_spacing)
    ds.PixelSpacing = geo.pixel_spacing
    det = Dataset()
    det.ImageOrientationPatient = geo.iop
    det.ImagePositionPatient = geo.position(0)
    ds.DetectorInformationSequence = Sequence([det])
    ew = Dataset()
    ew.EnergyWindowName = "photopeak"
    ds.EnergyWindowInformationSequence = Sequence([ew])
    ds.RadiopharmaceuticalInformationSequence = Sequence(
        [_radiopharmaceutical_item(meta.tracer, pet=False)] if meta.tracer is not None else []
    )
    ds.PatientOrientationCodeSequence = Sequence()
    ds.PatientGantryRelationshipCodeSequence = Sequence()
    _pixel_module(ds, n_j, n_i, signed=False)
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = _ds(slope)
    frames = np.stack([q[:, :, k].T for k in range(n_k)])
    ds.PixelData = np.ascontiguousarray(frames).astype("<u2").tobytes()
    return [ds], stored

