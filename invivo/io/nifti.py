"""NIfTI + JSON sidecar in and out (PET-BIDS key names where they exist).

The sidecar carries the BIDS keys that other tools read (``FrameTimesStart``,
``FrameDuration``, ``InjectedRadioactivity``, ``EchoTime``, ...) and an
``"Invivo"`` block with the complete metadata, so that a saved Volume loads back
with everything it had (decay reference activities, SUV factors, assumptions,
provenance).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import to_device
from ..errors import InvivoError, OutputError, OutputExistsError, ParameterError
from ..volume import Meta, Subject, Tracer, Volume

__all__ = ["save_nifti", "save_many", "load_nifti", "sidecar_path", "atomic_write", "file_sha256", "input_record", "meta_from_dict"]

_NII_SUFFIXES = (".nii.gz", ".nii")


def _is_nifti(path: Path) -> bool:
    return any(str(path).endswith(s) for s in _NII_SUFFIXES)


def sidecar_path(path: str | os.PathLike) -> Path:
    """``x.nii.gz`` -> ``x.json``."""
    p = str(path)
    for s in _NII_SUFFIXES:
        if p.endswith(s):
            return Path(p[: -len(s)] + ".json")
    return Path(p + ".json")


def file_sha256(path: str | os.PathLike, *, limit: int | None = None) -> str:
    """SHA-256 of a file (the first ``limit`` bytes if given)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = limit
        while True:
            chunk = f.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not chunk:
                break
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
    return h.hexdigest()


def input_record(path: str | os.PathLike) -> dict:
    """Provenance of one input: a file's SHA-256, or for a folder one SHA-256 over its files in sorted order."""
    p = Path(path)
    if p.is_file():
        return {"path": str(p.resolve()), "sha256": file_sha256(p)}
    if not p.is_dir():
        return {"path": str(p)}
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    for f in files:
        h.update(f.relative_to(p).as_posix().encode() + b"\0")
        h.update(bytes.fromhex(file_sha256(f)))
    return {"path": str(p.resolve()), "n_files": len(files), "sha256_of_files": h.hexdigest()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(targets: dict[Path, Any], *, overwrite: bool = False) -> None:
    """Write several files all-or-nothing: each to a temporary name, then renamed into place.

    ``targets`` maps a path to a callable ``writer(tmp_path)``.  Existing targets
    raise :class:`OutputExistsError` unless ``overwrite``; on failure no target is
    left half-written.
    """
    paths = [Path(p) for p in targets]
    if not overwrite:
        existing = [str(p) for p in paths if p.exists()]
        if existing:
            raise OutputExistsError(f"{existing[0]} already exists; choose another output or pass overwrite=True (--overwrite)")
    tmps: dict[Path, Path] = {}
    mode = 0o666 & ~_umask()
    try:
        for p, writer in targets.items():
            p = Path(p)
            p.parent.mkdir(parents=True, exist_ok=True)
            suffix = "".join(p.suffixes)
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp" + suffix, dir=p.parent)
            os.close(fd)
            tmps[p] = Path(tmp)
            writer(Path(tmp))
            os.chmod(tmp, mode)  # mkstemp makes 0600; outputs get the usual permissions
        for p, tmp in tmps.items():
            os.replace(tmp, p)
    except BaseException as exc:
        for tmp in tmps.values():
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        if isinstance(exc, OSError):
            where = getattr(exc, "filename", None) or next(iter(targets))
            raise OutputError(f"cannot write {where}: {exc.strerror or exc}; choose a writable output location") from None
        raise


def _bids_keys(meta: Meta) -> dict:
    d: dict[str, Any] = {"Modality": meta.modality}
    if meta.units:
        d["Units"] = {"BQML": "Bq/mL"}.get(meta.units, meta.units)
    if meta.series_uid:
        d["SeriesInstanceUID"] = meta.series_uid
    if meta.series_description:
        d["SeriesDescription"] = meta.series_description
    if meta.echo_times_s is not None:
        d["EchoTime"] = list(meta.echo_times_s) if len(meta.echo_times_s) > 1 else meta.echo_times_s[0]
    if meta.magnetic_field_t:
        d["MagneticFieldStrength"] = meta.magnetic_field_t
    if meta.series_datetime is not None:
        d["TimeZero"] = meta.series_datetime.strftime("%H:%M:%S")
        d["ScanDate"] = meta.series_datetime.strftime("%Y-%m-%d")
        d["ScanStart"] = 0
    if meta.frame_start_s is not None:
        d["FrameTimesStart"] = list(meta.frame_start_s)
    if meta.frame_duration_s is not None:
        d["FrameDuration"] = list(meta.frame_duration_s)
    t = meta.tracer
    if t is not None:
        if t.radiopharmaceutical:
            d["TracerName"] = t.radiopharmaceutical
        if t.isotope:
            d["TracerRadionuclide"] = t.isotope
        if t.injected_activity_bq is not None:
            d["InjectedRadioactivity"] = t.injected_activity_bq / 1e6
            d["InjectedRadioactivityUnits"] = "MBq"
        if t.injection_datetime is not None and meta.series_datetime is not None:
            d["InjectionStart"] = (t.injection_datetime - meta.series_datetime).total_seconds()
    if meta.decay_correction:
        corrected = meta.decay_correction.upper() != "NONE"
        d["ImageDecayCorrected"] = corrected
        if corrected and meta.decay_correction.upper() == "START":
            d["ImageDecayCorrectionTime"] = 0
        elif corrected and "InjectionStart" in d:
            d["ImageDecayCorrectionTime"] = d["InjectionStart"]
    s = meta.subject
    if s is not None and s.weight_kg is not None:
        d["BodyWeight"] = s.weight_kg
        d["BodyWeightUnits"] = "kg"
    return d


def save_nifti(volume: Volume, path: str | os.PathLike, *, overwrite: bool = False,
               inputs: list[str | os.PathLike] | None = None, parameters: dict | None = None,
               _collect: dict | None = None) -> Path:
    """Write ``volume`` as NIfTI-1 (``.nii`` or ``.nii.gz``) with a JSON sidecar beside it.

    Parameters
    ----------
    volume : Volume
    path : str or Path
        Output file name ending in ``.nii.gz`` or ``.nii``.
    overwrite : bool
        Replace existing outputs (otherwise :class:`OutputExistsError`).
    inputs : list of paths, optional
        Input files recorded with their SHA-256 in the sidecar's provenance.
    parameters : dict, optional
        Processing parameters recorded in the sidecar.

    Returns
    -------
    Path of the image written.  Both files are written atomically.
    """
    import nibabel as nib

    from .. import __version__

    path = Path(path)
    if not _is_nifti(path):
        raise ParameterError(f"output {path} must end in .nii.gz or .nii")
    data = to_device(volume.data, "cpu")  # host: files are written from host memory
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif data.dtype == np.float16:
        data = data.astype(np.float32)
    img = nib.Nifti1Image(np.asarray(data), volume.affine)
    img.set_sform(volume.affine, code=1)
    img.set_qform(volume.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    meta = volume.meta
    side = _bids_keys(meta)
    prov = dict(meta.source)
    if inputs:
        prov["inputs"] = [input_record(p) for p in inputs]
    if parameters:
        prov["parameters"] = parameters
    side["GeneratedBy"] = [{"Name": "invivo", "Version": __version__}]
    side["Invivo"] = {"version": __version__, "created": datetime.now().isoformat(timespec="seconds"),
                      "meta": meta.to_dict(), "provenance": prov}
    if meta.assumptions:
        side["Invivo"]["assumptions"] = list(meta.assumptions)
    text = json.dumps(side, indent=2, default=str, allow_nan=False)
    writers = {path: lambda tmp: nib.save(img, tmp), sidecar_path(path): lambda tmp: tmp.write_text(text)}
    if _collect is not None:  # save_many: written together with the others
        _collect.update(writers)
        return path
    atomic_write(writers, overwrite=overwrite)
    return path


def save_many(items, *, overwrite: bool = False, inputs=None, parameters: dict | None = None) -> list[Path]:
    """Write several Volumes (``[(volume, path), ...]``) all-or-nothing: none is written if any fails."""
    writers: dict = {}
    paths = [save_nifti(v, p, overwrite=True, inputs=inputs, parameters=parameters, _collect=writers)
             for v, p in items]
    atomic_write(writers, overwrite=overwrite)
    return paths


def _parse_dt(v):
    return datetime.fromisoformat(v) if isinstance(v, str) else v


def meta_from_dict(d: dict) -> Meta:
    """Rebuild a :class:`Meta` from :meth:`Meta.to_dict` output (unknown keys go to ``extra``)."""
    kw: dict[str, Any] = {}
    fields = {f.name for f in dataclasses.fields(Meta)}
    for k, v in d.items():
        if k not in fields:
            continue
        if k in ("frame_start_s", "frame_duration_s", "echo_times_s", "image_type") and v is not None:
            v = tuple(v)
        elif k in ("series_datetime", "acquisition_datetime"):
            v = _parse_dt(v)
        elif k in ("reference_activity_bq", "suv_bw_factor") and v is not None:
            v = np.asarray(v, dtype=np.float64)
        elif k == "tracer" and v is not None:
            v = Tracer(**{**v, "injection_datetime": _parse_dt(v.get("injection_datetime")),
                          "residual_datetime": _parse_dt(v.get("residual_datetime"))})
        elif k == "subject" and v is not None:
            v = Subject(**v)
        kw[k] = v
    return Meta(**kw)


def _meta_from_bids(side: dict, meta: Meta) -> Meta:
    """Fill metadata from PET-BIDS / BIDS keys (sidecars written by other tools)."""
    meta.modality = side.get("Modality", meta.modality) or meta.modality
    units = side.get("Units")
    if units:
        meta.units = {"Bq/mL": "BQML", "Bq/ml": "BQML", "kBq/mL": "kBq/mL"}.get(units, units)
    te = side.get("EchoTime")
    if te is not None:
        te = te if isinstance(te, list) else [te]
        if any(t > 1.0 for t in te):
            raise ParameterError(f"sidecar EchoTime {te} looks like milliseconds; BIDS stores seconds")
        meta.echo_times_s = tuple(float(t) for t in te)
    zero = None
    if side.get("TimeZero") and side.get("ScanDate"):
        try:
            zero = datetime.fromisoformat(f"{side['ScanDate']}T{side['TimeZero']}")
        except ValueError:
            zero = None
    scan_start = float(side.get("ScanStart", 0) or 0)
    if zero is not None:
        meta.series_datetime = zero + timedelta(seconds=scan_start)
    if side.get("FrameTimesStart") is not None:
        meta.frame_start_s = tuple(float(x) - scan_start for x in np.atleast_1d(side["FrameTimesStart"]))
    if side.get("FrameDuration") is not None:
        meta.frame_duration_s = tuple(float(x) for x in np.atleast_1d(side["FrameDuration"]))
    if any(k in side for k in ("TracerName", "TracerRadionuclide", "InjectedRadioactivity")):
        from .. import isotopes

        iso = isotopes.find(side.get("TracerRadionuclide"), side.get("TracerName"))
        act = side.get("InjectedRadioactivity")
        unit = str(side.get("InjectedRadioactivityUnits", "MBq"))
        scale = {"MBq": 1e6, "kBq": 1e3, "Bq": 1.0, "mCi": 3.7e7, "uCi": 3.7e4}.get(unit)
        if act is not None and scale is None:
            raise ParameterError(f"sidecar InjectedRadioactivityUnits {unit!r} is not one of MBq, kBq, Bq, mCi, uCi")
        inj = None
        if zero is not None and side.get("InjectionStart") is not None:
            inj = zero + timedelta(seconds=float(side["InjectionStart"]))
        meta.tracer = Tracer(radiopharmaceutical=side.get("TracerName"), isotope=iso.name if iso else side.get("TracerRadionuclide"),
                             half_life_s=iso.half_life_s if iso else None,
                             injected_activity_bq=float(act) * scale if act is not None else None, injection_datetime=inj)
    if "ImageDecayCorrected" in side:
        if not side["ImageDecayCorrected"]:
            meta.decay_correction = "NONE"
        else:
            t = float(side.get("ImageDecayCorrectionTime", 0) or 0)
            inj_s = side.get("InjectionStart")
            meta.decay_correction = "ADMIN" if inj_s is not None and abs(t - float(inj_s)) < 1e-6 and t != scan_start else "START"
    if side.get("BodyWeight") is not None:
        w = float(side["BodyWeight"])
        if str(side.get("BodyWeightUnits", "kg")).lower() in ("g", "gram", "grams"):
            w /= 1000.0
        meta.subject.weight_kg = w
    meta.series_uid = side.get("SeriesInstanceUID", meta.series_uid)
    return meta


def load_nifti(path: str | os.PathLike, *, dtype=None) -> Volume:
    """Load a NIfTI image and the JSON sidecar beside it (when present).

    Data keep float32 when stored as float32; everything else becomes float64
    (``dtype`` overrides).  Metadata come from the sidecar's ``Invivo`` block if
    invivo wrote it, else from its BIDS keys.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InvivoError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
        on_disk = img.get_data_dtype()
        if dtype is None:
            dtype = np.float32 if on_disk == np.float32 and not img.header.get_slope_inter()[0] else np.float64
        data = np.asarray(img.get_fdata(dtype=np.dtype(dtype)))
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise InvivoError(f"{path}: not a readable NIfTI image ({exc})") from None
    affine = img.affine
    sc = sidecar_path(path)
    meta = Meta(modality="OT")
    if sc.exists():
        try:
            side = json.loads(sc.read_text())
        except json.JSONDecodeError as exc:
            raise InvivoError(f"{sc}: sidecar is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(side.get("Invivo"), dict) and "meta" in side["Invivo"]:
            meta = meta_from_dict(side["Invivo"]["meta"])
        else:
            meta = _meta_from_bids(side, meta)
    meta.source.setdefault("nifti", str(path))
    meta.source["sidecar"] = str(sc) if sc.exists() else None
    return Volume(data, affine, meta)
