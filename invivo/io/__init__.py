"""Reading and writing images: DICOM series, NIfTI + JSON sidecars, RTSTRUCT."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DicomError, ParameterError
from .dicom import load_dicom, read_headers, scan
from .dicom_export import read_parametric_map, read_seg, write_parametric_map, write_seg
from .nifti import load_nifti, save_nifti, sidecar_path

__all__ = ["scan", "load", "save", "load_dicom", "load_nifti", "save_nifti", "load_rtstruct", "read_headers", "sidecar_path",
           "write_parametric_map", "write_seg", "read_parametric_map", "read_seg"]


def load(path: str | os.PathLike, *, series=None, **kwargs):
    """Load a DICOM folder/file or a NIfTI image (with its JSON sidecar) as a Volume.

    Parameters
    ----------
    path : str or Path
        ``*.nii`` / ``*.nii.gz`` (sidecar ``*.json`` beside it), a DICOM file, or
        a folder searched recursively for DICOM.  A DICOM Parametric Map (a file, or a
        folder holding one and no image series) loads with its real-world values
        (:func:`invivo.io.dicom_export.read_parametric_map`).
    series : int, str or None
        For DICOM: which series (see :func:`invivo.io.dicom.load_dicom`).
    **kwargs
        Passed to the reader (``echo``, ``dtype``, ``uneven``, ``allow_tilt``).

    Examples
    --------
    >>> vol = invivo.load("export/")          # doctest: +SKIP
    >>> vol.meta.units, vol.voxel_size_mm     # doctest: +SKIP
    """
    p = Path(path)
    if str(p).endswith((".nii", ".nii.gz")):
        if series is not None:
            raise ParameterError("series= applies to DICOM input; a NIfTI file holds one series")
        return load_nifti(p, **{k: v for k, v in kwargs.items() if k == "dtype"})
    from .dicom_export import find_parametric_maps

    if p.is_file() and series is None and find_parametric_maps(p):  # a DICOM Parametric Map: its real-world values
        return read_parametric_map(p)
    try:
        return load_dicom(p, series=series, **kwargs)
    except (DicomError, ParameterError) as exc:
        # only where no image series fits: a Parametric Map there (its files are looked for only then, so that
        # loading an image series does not read every header twice)
        if not p.is_dir() or type(exc) not in (DicomError, ParameterError):
            raise
        if series is None:
            if type(exc) is not DicomError or not find_parametric_maps(p):
                raise
            return read_parametric_map(p)  # a folder holding a Parametric Map and no image series
        pm = _parametric_map_series(p, series)
        if pm is None:
            raise
        return read_parametric_map(pm)


def _parametric_map_series(folder: Path, series):
    """The Parametric Map file of ``folder`` that ``series`` names (its SeriesInstanceUID or description, or its
    row in :func:`scan`), or None."""
    from pydicom import dcmread

    from .dicom_export import find_parametric_maps

    pms = find_parametric_maps(folder)
    if not pms:
        return None
    if isinstance(series, str):
        for f in pms:
            ds = dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SeriesDescription"])
            if series in (str(ds.get("SeriesInstanceUID", "")), str(ds.get("SeriesDescription", ""))):
                return f
        return None
    if isinstance(series, int) and not isinstance(series, bool):
        table = scan(folder)
        if 0 <= series < len(table):
            uid = str(table.iloc[series]["series_uid"])
            return _parametric_map_series(folder, uid)
    return None


def save(volume, path: str | os.PathLike, **kwargs):
    """Write a Volume as NIfTI + JSON sidecar (see :func:`invivo.io.nifti.save_nifti`)."""
    return save_nifti(volume, path, **kwargs)


def load_rtstruct(path, reference, **kwargs):
    """Rasterise an RTSTRUCT onto ``reference``'s grid: ``{structure name: boolean Volume}``."""
    from .rtstruct import load_rtstruct as _impl

    return _impl(path, reference, **kwargs)
