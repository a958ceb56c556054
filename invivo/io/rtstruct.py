"""DICOM RT Structure Sets (RTSTRUCT) rasterised to boolean masks on a reference grid.

Contours are ``CLOSED_PLANAR`` polygons in DICOM patient coordinates (LPS, mm).
Each is converted to RAS+, then to the voxel index space of the reference with the
inverse of its affine, where it must lie on one slice plane (a plane of constant
index along one grid axis, normally ``k``).  The polygon is filled on that slice
with the even-odd rule: a voxel whose *centre* is inside the polygon is in the
mask, and contours on the same slice combine by exclusive or, so a contour inside
another one cuts a hole.  Because the fill happens in index space and affine maps
preserve point-in-polygon relations, oblique-but-consistent grids (a reference
whose slices are rotated in patient space) are handled exactly.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..backend import to_device
from ..errors import DicomError, GeometryError, InvivoWarning, ParameterError
from ..volume import LPS_TO_RAS, Meta, Volume

__all__ = ["load_rtstruct", "fill_polygon"]

#: How far (in voxels) a contour point may lie off its slice plane.
SLICE_TOLERANCE_VOXELS = 0.1


# -- finding and reading the file -----------------------------------------------

def _read_header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # not DICOM, unreadable: simply not a candidate
        return None


def _find_rtstruct(folder: Path) -> Path:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    found = []
    for p in files:
        ds = _read_header(p)
        if ds is None:
            continue
        if str(ds.get("Modality", "")).upper() == "RTSTRUCT":
            found.append(p)
    if not found:
        raise DicomError(
            f"no RTSTRUCT file (Modality RTSTRUCT) found under {folder} ({len(files)} files looked at): "
            "pass the RTSTRUCT file itself"
        )
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(folder)) for p in found)
        raise DicomError(f"{len(found)} RTSTRUCT files found under {folder} ({names}): pass one of them as the path")
    return found[0]


def _read_rtstruct(path: Path):
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise DicomError(f"{path}: cannot be read as DICOM ({exc})") from exc
    modality = str(ds.get("Modality", ""))
    if modality.upper() != "RTSTRUCT":
        raise DicomError(
            f"{path}: Modality (0008,0060) is {modality or 'absent'!r}, not 'RTSTRUCT': pass an RT Structure Set file"
        )
    if "StructureSetROISequence" not in ds:
        raise DicomError(f"{path}: RTSTRUCT without StructureSetROISequence (3006,0020): the file holds no ROIs")
    return ds


def _frame_of_reference(ds) -> str | None:
    for item in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        uid = item.get("FrameOfReferenceUID")
        if uid:
            return str(uid)
    for item in ds.StructureSetROISequence:
        uid = item.get("ReferencedFrameOfReferenceUID")
        if uid:
            return str(uid)
    uid = ds.get("FrameOfReferenceUID")
    return str(uid) if uid else None


# -- rasterisation ----------------------------------------------------------------

def fill_polygon(u, v, shape: tuple[int, int]) -> np.ndarray:
    """Voxel centres inside a polygon, by the even-odd rule, on a 2D index grid.

    Parameters
    ----------
    u, v : array_like of shape (N,)
        Vertex coordinates in voxel index units along the first and second grid
        axes (voxel centres are the integer points).  The polygon is closed
        implicitly (last vertex joins the first).
    shape : tuple of int
        ``(U, V)``, the size of the grid.

    Returns
    -------
    ndarray of bool, shape (U, V)
        True where the voxel centre ``(a, b)`` is inside the polygon.  A centre
        exactly on a vertical-crossing boundary counts as outside on the left
        edge and inside on the right one (half-open rule), so two polygons that
        share an edge never both claim a centre.

    Notes
    -----
    Vectorised scanline fill: for every grid line ``v = b`` the crossings of all
    edges are computed at once (half-open in ``v``), each crossing toggles the
    parity from the first centre strictly beyond it, and a cumulative sum along
    ``u`` gives the parity of every centre.  Cost O(edges x lines + U x V).

    Examples
    --------
    >>> fill_polygon([0.5, 2.5, 2.5, 0.5], [0.5, 0.5, 2.5, 2.5], (4, 4)).astype(int)
    array([[0, 0, 0, 0],
           [0, 1, 1, 0],
           [0, 1, 1, 0],
           [0, 0, 0, 0]])
    """
    u = np.asarray(u, dtype=np.float64).ravel()
    v = np.asarray(v, dtype=np.float64).ravel()
    nu, nv = int(shape[0]), int(shape[1])
    out = np.zeros((nu, nv), dtype=bool)
    if u.size < 3 or nu == 0 or nv == 0:
        return out
    u0, v0 = u, v
    u1, v1 = np.roll(u, -1), np.roll(v, -1)
    # grid lines b (integers) that the polygon spans, clipped to the grid
    b_lo = max(int(np.ceil(v.min())), 0)
    b_hi = min(int(np.floor(v.max())), nv - 1)
    if b_hi < b_lo:
        return out
    b = np.arange(b_lo, b_hi + 1, dtype=np.float64)[:, None]  # (B, 1)
    crosses = (v0[None, :] <= b) != (v1[None, :] <= b)  # (B, E), half-open in v
    rows, edges = np.nonzero(crosses)
    if rows.size == 0:
        return out
    e0u, e0v, e1u, e1v = u0[edges], v0[edges], u1[edges], v1[edges]
    t = (b[rows, 0] - e0v) / (e1v - e0v)  # e1v != e0v wherever an edge crosses
    uc = e0u + t * (e1u - e0u)
    # centres a > uc are right of the crossing: toggle from floor(uc) + 1 on
    start = np.clip(np.floor(uc).astype(np.int64) + 1, 0, nu)
    toggles = np.zeros((b_hi - b_lo + 1, nu + 1), dtype=np.int64)
    np.add.at(toggles, (rows, start), 1)
    parity = (np.cumsum(toggles[:, :nu], axis=1) & 1).astype(bool)  # (B, U)
    out[:, b_lo:b_hi + 1] = parity.T
    return out


def _slice_axis(ijk: np.ndarray) -> int | None:
    """The grid axis along which all points share one integer index (k first), else None."""
    for axis in (2, 0, 1):
        c = ijk[:, axis]
        r = np.round(c)
        if np.all(np.abs(c - r) <= SLICE_TOLERANCE_VOXELS) and np.ptp(r) == 0:
            return axis
    return None


# -- the public function ------------------------------------------------------------

def load_rtstruct(path, reference: Volume, *, structures: str | Iterable[str] | None = None) -> dict[str, Volume]:
    """Rasterise the ROIs of an RTSTRUCT to boolean masks on a reference grid.

    Parameters
    ----------
    path : str or os.PathLike
        An RTSTRUCT file, or a folder (searched recursively) holding exactly one.
    reference : Volume
        The image the contours were drawn on (or any image sharing its patient
        coordinates); the masks get its spatial grid and affine.
    structures : str or iterable of str, optional
        ROI names (StructureSetROISequence ROIName) to load; all ROIs by default.

    Returns
    -------
    dict of str to Volume
        One 3D boolean Volume per ROI name, in StructureSetROISequence order, on the
        reference grid and the reference's device.  ``meta.modality`` is
        ``"RTSTRUCT"``; ``meta.source`` names the file and ROI number;
        ``meta.extra["frame_of_reference_uid"]`` is the structure set's frame of
        reference; ``meta.assumptions`` lists every warning given for that ROI.

    Raises
    ------
    DicomError
        The file is not an RTSTRUCT, a folder holds none or several, or a contour
        is malformed.
    GeometryError
        A contour does not lie on a slice plane of the reference (an oblique
        contour, or one between slices): resample the reference to the grid the
        contours were drawn on.
    ParameterError
        A requested structure name does not exist (the message lists those that do).

    Warns
    -----
    InvivoWarning
        POINT and OPEN_PLANAR contours are skipped; an ROI without closed contours
        gives an empty mask; contours on slices outside the reference grid are
        dropped; the structure set's FrameOfReferenceUID differs from
        ``reference.meta.extra["frame_of_reference_uid"]``.

    Notes
    -----
    Rule: a voxel is in the mask when its centre is inside the polygon (even-odd
    rule on each slice: holes and several contours on one slice combine by
    exclusive or).  Voxels cut by the contour but whose centre lies outside are
    out, so a mask from a contour traced along voxel edges contains every voxel
    the contour encloses, while a contour traced through voxel centres gives about
    half of the boundary voxels.
    """
    if not isinstance(reference, Volume):
        raise ParameterError(f"reference must be an invivo.Volume, got {type(reference).__name__}")
    p = Path(os.fspath(path))
    if not p.exists():
        raise DicomError(f"{p}: no such file or folder")
    file = _find_rtstruct(p) if p.is_dir() else p
    ds = _read_rtstruct(file)

    # ROI number -> name, in StructureSetROISequence order (names made unique)
    rois: dict[str, int] = {}
    for item in ds.StructureSetROISequence:
        number = int(item.ROINumber)
        name = str(item.get("ROIName", "") or f"ROI {number}")
        if name in rois:
            name = f"{name} (ROI {number})"
        rois[name] = number

    if structures is None:
        wanted = list(rois)
    else:
        wanted = [structures] if isinstance(structures, str) else list(structures)
        unknown = [s for s in wanted if s not in rois]
        if unknown:
            raise ParameterError(
                f"structures: {unknown} not in {file} (StructureSetROISequence ROIName); available: {list(rois)}"
            )

    contours_of: dict[int, list] = {}
    for item in ds.get("ROIContourSequence", []) or []:
        if "ReferencedROINumber" not in item:
            continue
        contours_of.setdefault(int(item.ReferencedROINumber), []).extend(item.get("ContourSequence", []) or [])

    common: list[str] = []
    for_uid = _frame_of_reference(ds)
    ref_uid = reference.meta.extra.get("frame_of_reference_uid")
    if ref_uid and for_uid and str(ref_uid) != for_uid:
        msg = (f"{file}: FrameOfReferenceUID {for_uid} differs from the reference image's {ref_uid}; "
               "contours are placed by patient coordinates as if both shared one frame of reference")
        warnings.warn(msg, InvivoWarning, stacklevel=2)
        common.append(msg)

    shape = reference.spatial_shape
    inv = np.linalg.inv(reference.affine)
    lps_to_index = inv @ LPS_TO_RAS  # patient LPS (homogeneous) -> voxel index

    out: dict[str, Volume] = {}
    for name in wanted:
        number = rois[name]
        notes = list(common)

        def note(msg: str) -> None:
            warnings.warn(msg, InvivoWarning, stacklevel=3)
            notes.append(msg)

        mask = np.zeros(shape, dtype=bool)
        n_closed = 0
        skipped: dict[str, int] = {}
        outside = 0
        for n, contour in enumerate(contours_of.get(number, [])):
            kind = str(contour.get("ContourGeometricType", "") or "").upper()
            if kind != "CLOSED_PLANAR":
                skipped[kind or "no ContourGeometricType"] = skipped.get(kind or "no ContourGeometricType", 0) + 1
                continue
            data = np.asarray(contour.get("ContourData", []) or [], dtype=np.float64)
            if data.size % 3:
                raise DicomError(
                    f"{file}: ROI {name!r} contour {n}: ContourData (3006,0050) has {data.size} values, "
                    "not a multiple of 3"
                )
            pts = data.reshape(-1, 3)
            if len(pts) < 3:
                skipped[f"CLOSED_PLANAR with {len(pts)} points"] = skipped.get(f"CLOSED_PLANAR with {len(pts)} points", 0) + 1
                continue
            ijk = pts @ lps_to_index[:3, :3].T + lps_to_index[:3, 3]
            axis = _slice_axis(ijk)
            if axis is None:
                lo, hi = ijk.min(axis=0), ijk.max(axis=0)
                span = ", ".join(f"{a} {l:.2f}..{h:.2f}" for a, l, h in zip("ijk", lo, hi))
                raise GeometryError(
                    f"{file}: ROI {name!r} contour {n} is not on a slice plane of the reference "
                    f"(voxel index range {span}; tolerance {SLICE_TOLERANCE_VOXELS} voxel): "
                    "load the masks on the image the contours were drawn on"
                )
            s = int(np.round(ijk[0, axis]))
            if not 0 <= s < shape[axis]:
                outside += 1
                continue
            in_plane = [a for a in range(3) if a != axis]
            fill = fill_polygon(ijk[:, in_plane[0]], ijk[:, in_plane[1]], (shape[in_plane[0]], shape[in_plane[1]]))
            index: list = [slice(None)] * 3
            index[axis] = s
            mask[tuple(index)] ^= fill
            n_closed += 1

        if skipped:
            what = ", ".join(f"{c} {k}" for k, c in skipped.items())
            note(f"{file}: ROI {name!r}: skipped {what} contour(s); only CLOSED_PLANAR contours make a mask")
        if outside:
            note(f"{file}: ROI {name!r}: {outside} contour(s) lie on slices outside the reference grid "
                 f"{shape} and were dropped")
        if n_closed == 0:
            note(f"{file}: ROI {name!r} has no closed contours on the reference grid; its mask is empty")

        meta = Meta(
            modality="RTSTRUCT",
            series_uid=str(ds.get("SeriesInstanceUID", "")) or None,
            study_uid=str(ds.get("StudyInstanceUID", "")) or None,
            series_description=name,
            source={"file": str(file), "roi_name": name, "roi_number": number,
                    "sop_instance_uid": str(ds.get("SOPInstanceUID", "")) or None},
            assumptions=notes,
            extra={"frame_of_reference_uid": for_uid, "roi_name": name, "roi_number": number},
        )
        out[name] = Volume(to_device(mask, reference.device), reference.affine, meta)
    return out
