"""Masks and region-of-interest statistics.

* :func:`match_mask` puts a mask stored in another orientation of the same voxel
  grid (axis permutations and flips: an LPS-stored NIfTI against a RAS image, a
  DICOM-order mask against a reoriented image) onto a reference grid, by comparing
  world coordinates.  Grids that do not correspond voxel for voxel are an error:
  resampling a mask is a decision the user makes (``invivo.align.resample``).
* :func:`stats` gives mean, SD, min, median, max, peak and volume inside a mask,
  per frame for 4D images.
* :func:`label_stats` does the same for every label of a label image.

All statistics run on the device of the image (NumPy or CuPy); the sphere
convolution behind ``peak`` runs on the host over the mask's bounding box.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backend import check_same_device, get_array_module, to_device
from .errors import GeometryError, ParameterError
from .volume import Volume

__all__ = ["match_mask", "stats", "label_stats", "image_roi_stats", "sphere_kernel", "DEFAULT_PEAK_RADIUS_VOXELS", "tac"]

#: Default peak sphere radius, in units of the largest voxel dimension.  Preclinical
#: images have voxels of 0.4-1 mm, so this is a sphere of 0.6-1.5 mm radius
#: (about 1-14 uL), in place of PERCIST's 1 mL sphere for patients.
DEFAULT_PEAK_RADIUS_VOXELS = 1.5


# -- orientation matching -------------------------------------------------------------

def _grid_desc(v: Volume) -> str:
    aff = np.array2string(np.round(v.affine[:3], 4), separator=",", max_line_width=10_000).replace("\n", "")
    return f"shape {v.spatial_shape} affine[:3] {aff}"


def match_mask(mask: Volume, reference: Volume, *, atol_mm: float = 1e-3, labels: bool = False) -> Volume:
    """Put a mask stored in another orientation of the same grid onto the reference grid.

    Parameters
    ----------
    mask : Volume
        3D mask or label image.  Its grid must be the reference's grid up to a
        permutation and flips of the voxel axes (for example an LPS-stored NIfTI
        mask of a RAS image).
    reference : Volume
        The image whose grid (spatial shape and affine) the result takes.
    atol_mm : float, mm
        Largest distance allowed between the world positions of corresponding
        voxel centres (checked at the eight corners of the grid).
    labels : bool
        False (default): return a boolean mask, True where ``mask`` is nonzero.
        True: keep the integer labels (boolean and integer data keep their dtype;
        floating data must hold whole numbers and become int64).

    Returns
    -------
    Volume
        On the reference grid (``reference.affine``), on the mask's device, with a
        copy of the mask's metadata.

    Raises
    ------
    GeometryError
        The grids do not correspond voxel for voxel (another shape, spacing or
        origin, or an oblique relation); the message gives both shapes and affines.
    ParameterError
        ``mask`` is not 3D, or ``labels=True`` with non-integral values.

    Examples
    --------
    >>> import numpy as np
    >>> ref = Volume(np.zeros((2, 3, 4)), np.diag([1.0, 2.0, 3.0, 1.0]))
    >>> data = np.zeros((2, 3, 4), bool); data[0, 0, 0] = True
    >>> lps = Volume(data[::-1, ::-1], ref.affine @ [[-1, 0, 0, 1], [0, -1, 0, 2], [0, 0, 1, 0], [0, 0, 0, 1]])
    >>> bool(match_mask(lps, ref).data[0, 0, 0])
    True
    """
    if not isinstance(mask, Volume) or not isinstance(reference, Volume):
        raise ParameterError("match_mask(mask, reference): both must be invivo.Volume objects")
    if mask.data.ndim != 3:
        raise ParameterError(f"mask must be 3D, got shape {mask.shape}")
    xp = get_array_module(mask.data)
    data = mask.data
    if labels:
        if data.dtype.kind == "f":
            if not bool(xp.all(data == xp.round(data))):
                raise ParameterError("labels=True: the mask holds non-integral values; pass an integer label image")
            data = data.astype(np.int64)
        elif data.dtype.kind not in "biu":
            raise ParameterError(f"labels=True: mask dtype {data.dtype} is not an integer type")
    else:
        data = data != 0

    if mask.same_grid(reference, atol_mm=atol_mm):
        return Volume(data, reference.affine, mask.meta.copy())

    def mismatch(why: str) -> GeometryError:
        return GeometryError(
            f"mask grid ({_grid_desc(mask)}) does not correspond to the reference grid ({_grid_desc(reference)}): "
            f"{why}; resample the mask onto the reference first (invivo.align.resample, nearest neighbour)"
        )

    # reference voxel index -> mask voxel index; must be a signed permutation + shift
    t = np.linalg.inv(mask.affine) @ reference.affine
    p = np.round(t[:3, :3])
    is_perm = (np.all(np.isin(p, (-1.0, 0.0, 1.0)))
               and np.all(np.abs(p).sum(axis=0) == 1) and np.all(np.abs(p).sum(axis=1) == 1))
    if not is_perm:
        raise mismatch("the axes are not a permutation/flip of each other (other spacing or an oblique relation)")
    shift = np.round(t[:3, 3])
    src_axis = [int(np.nonzero(p[:, a])[0][0]) for a in range(3)]  # mask axis feeding reference axis a
    sign = [int(p[src_axis[a], a]) for a in range(3)]
    if tuple(mask.spatial_shape[b] for b in src_axis) != reference.spatial_shape:
        raise mismatch("other shape")
    for a in range(3):
        b = src_axis[a]
        expected = 0 if sign[a] > 0 else reference.spatial_shape[a] - 1
        if shift[b] != expected:
            raise mismatch("other origin (the grids are shifted)")
    # exact check in world coordinates at the eight corners of the reference grid
    n = np.array(reference.spatial_shape) - 1
    corners = np.array([[i, j, k] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])], dtype=np.float64)
    mapped = corners @ p.T + shift
    err = np.abs(mask.world_coordinates(mapped) - reference.world_coordinates(corners)).max()
    if not err <= atol_mm:
        raise mismatch(f"voxel centres differ by up to {err:.4g} mm (atol_mm={atol_mm})")

    out = xp.transpose(data, src_axis)
    flips = tuple(a for a in range(3) if sign[a] < 0)
    if flips:
        out = xp.flip(out, axis=flips)
    return Volume(xp.ascontiguousarray(out), reference.affine, mask.meta.copy())


# -- statistics -----------------------------------------------------------------------

def sphere_kernel(affine, radius_mm: float) -> np.ndarray:
    """Normalised spherical averaging kernel on a voxel grid.

    Parameters
    ----------
    affine : array_like of shape (4, 4)
        Voxel -> mm affine; anisotropic and sheared grids are handled by measuring
        offsets in mm.
    radius_mm : float, mm
        Sphere radius; every voxel whose centre is within it (inclusive) has weight.

    Returns
    -------
    ndarray of float64, odd shape, sums to 1.

    Examples
    --------
    >>> int((sphere_kernel(np.eye(4), 1.2) > 0).sum())  # centre + 6 face neighbours
    7
    """
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    # half extent along each axis: bounded by radius / (smallest singular value) in any direction
    smin = np.linalg.svd(m, compute_uv=False).min()
    h = int(math.floor(radius_mm / smin + 1e-9))
    r = np.arange(-h, h + 1)
    off = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).astype(np.float64)
    dist = np.linalg.norm(off @ m.T, axis=-1)
    inside = dist <= radius_mm * (1 + 1e-9)
    # trim empty outer planes (anisotropic voxels)
    idx = np.argwhere(inside)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    ext = np.maximum(np.array([h, h, h]) - lo, hi - np.array([h, h, h]))
    inside = inside[h - ext[0]:h + ext[0] + 1, h - ext[1]:h + ext[1] + 1, h - ext[2]:h + ext[2] + 1]
    return inside / inside.sum()


def _mask_array(volume: Volume, mask) -> Any:
    """A boolean array of the volume's spatial shape from a Volume or an array."""
    if isinstance(mask, Volume):
        if mask.data.ndim != 3:
            raise ParameterError(f"mask must be 3D, got shape {mask.shape}")
        if not mask.same_grid(volume):
            mask = match_mask(mask, volume)
        m = mask.data
    else:
        m = mask
        if tuple(m.shape) != volume.spatial_shape:
            raise ParameterError(
                f"mask array shape {tuple(m.shape)} differs from the image's spatial shape {volume.spatial_shape}: "
                "pass a mask Volume (it is reoriented when needed)"
            )
    check_same_device(volume=volume.data, mask=m)
    return m != 0


#: Above this many kernel voxels the sphere mean uses FFT convolution (measured: direct
#: convolution of 160^3 voxels takes 0.14 s at 19 kernel voxels, 0.9 s at 257, FFT ~1 s flat).
_FFT_KERNEL_VOXELS = 500


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Zero-padded ('constant', cval 0) convolution, direct or by FFT for large kernels."""
    if (kernel > 0).sum() > _FFT_KERNEL_VOXELS:
        from scipy import signal

        return signal.fftconvolve(x, kernel, mode="same")
    from scipy import ndimage

    return ndimage.convolve(x, kernel, mode="constant", cval=0.0)


def _peak(frames_host: np.ndarray, m_host: np.ndarray, kernel: np.ndarray) -> list[float]:
    """Max over mask voxels of the NaN-aware sphere mean, per frame (host arrays)."""
    half = np.array(kernel.shape) // 2
    idx = np.argwhere(m_host)
    lo = np.maximum(idx.min(axis=0) - half, 0)
    hi = np.minimum(idx.max(axis=0) + half + 1, m_host.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    mbox = m_host[box]
    out = []
    for f in range(frames_host.shape[-1]):
        x = frames_host[box + (f,)].astype(np.float64)
        valid = np.isfinite(x)
        num = _convolve(np.where(valid, x, 0.0), kernel)
        den = _convolve(valid.astype(np.float64), kernel)
        mean = num[mbox] / den[mbox]  # den > 0: the centre voxel is finite inside the mask
        out.append(float(mean.max()))
    return out


def stats(volume: Volume, mask, *, peak_volume_ml: float | None = None,
          peak_radius_mm: float | None = None) -> dict:
    """Statistics of an image inside a mask.

    Parameters
    ----------
    volume : Volume
        3D image, or 4D (frames/echoes on the last axis: statistics per frame).
    mask : Volume or ndarray of bool
        Nonzero voxels are in the region.  A mask Volume on another orientation of
        the same grid is matched with :func:`match_mask`; an array must have the
        image's spatial shape.  Must be on the image's device.
    peak_volume_ml : float, mL, optional
        Volume of the sphere used for ``peak``.
    peak_radius_mm : float, mm, optional
        Radius of the sphere used for ``peak`` (give this or ``peak_volume_ml``).
        Default: ``DEFAULT_PEAK_RADIUS_VOXELS`` (1.5) times the largest voxel size.

    Returns
    -------
    dict
        ``mean``, ``sd`` (ddof=1; None for a single voxel), ``min``, ``median``,
        ``max``, ``peak`` (image units; lists per frame for 4D), ``volume_ml``
        (voxels x voxel volume, mL), ``n_voxels``, ``units`` (``volume.meta.units``),
        ``peak_radius_mm`` (the radius used), ``peak_volume_ml`` (the nominal sphere
        volume 4/3 pi r^3) and ``peak_kernel_voxels`` (voxels in the discrete sphere).
        Plain Python numbers: JSON-friendly.

    Raises
    ------
    ParameterError
        Empty mask, NaN values inside the mask (the count is given), both or a
        non-positive peak size, or a mask array of the wrong shape.
    GeometryError
        A mask Volume on a grid that does not correspond to the image's.

    Notes
    -----
    ``peak`` is the largest mean over a sphere centred on a voxel of the mask; the
    sphere holds the voxels whose centres are within the radius (measured in mm, so
    anisotropic voxels are handled) and may extend beyond the mask, as for PERCIST's
    SUVpeak.  Where the sphere leaves the image or meets NaN voxels, the mean is over
    the remaining voxels.  With a radius below the voxel size the sphere is one voxel
    and ``peak == max``.

    Examples
    --------
    >>> import numpy as np
    >>> img = Volume(np.arange(27, dtype=np.float32).reshape(3, 3, 3), np.eye(4))
    >>> s = stats(img, img.data > 20)
    >>> s["mean"], s["n_voxels"], s["volume_ml"]
    (23.5, 6, 0.006)
    """
    if not isinstance(volume, Volume):
        raise ParameterError(f"volume must be an invivo.Volume, got {type(volume).__name__}")
    if peak_volume_ml is not None and peak_radius_mm is not None:
        raise ParameterError("stats: give peak_volume_ml or peak_radius_mm, not both")
    if peak_volume_ml is not None:
        if not peak_volume_ml > 0:
            raise ParameterError(f"peak_volume_ml must be > 0 mL, got {peak_volume_ml}")
        radius = (3.0 * peak_volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    elif peak_radius_mm is not None:
        if not peak_radius_mm > 0:
            raise ParameterError(f"peak_radius_mm must be > 0 mm, got {peak_radius_mm}")
        radius = float(peak_radius_mm)
    else:
        radius = DEFAULT_PEAK_RADIUS_VOXELS * max(volume.voxel_size_mm)

    xp = get_array_module(volume.data)
    m = _mask_array(volume, mask)
    n = int(m.sum())  # host: scalar count
    if n == 0:
        raise ParameterError("stats: the mask is empty (no nonzero voxel on the image grid)")
    four_d = volume.data.ndim == 4
    frames = volume.data if four_d else volume.data[..., None]
    values = frames[m]  # (n, T)
    n_nan = int((~xp.isfinite(values)).sum())  # host: scalar count
    if n_nan:
        raise ParameterError(
            f"stats: the image has {n_nan} NaN or infinite value(s) inside the mask ({n} voxels"
            f"{f' x {frames.shape[-1]} frames' if four_d else ''}): mask them out or fill them first"
        )
    values = values.astype(np.float64)
    mean = values.mean(axis=0)
    sd = values.std(axis=0, ddof=1) if n > 1 else None
    res = {
        "mean": mean,
        "sd": sd,
        "min": values.min(axis=0),
        "median": xp.median(values, axis=0),
        "max": values.max(axis=0),
    }
    kernel = sphere_kernel(volume.affine, radius)
    # host: scipy.ndimage convolution over the mask's bounding box
    peak = _peak(to_device(frames, "cpu"), to_device(m, "cpu"), kernel)

    out: dict[str, Any] = {}
    for key, val in res.items():
        if val is None:
            out[key] = None if not four_d else [None] * frames.shape[-1]
            continue
        lst = [float(x) for x in to_device(val, "cpu")]  # host: scalar results for a JSON-friendly dict
        out[key] = lst if four_d else lst[0]
    out["peak"] = peak if four_d else peak[0]
    out["volume_ml"] = float(n * volume.voxel_volume_ml)
    out["n_voxels"] = n
    out["units"] = volume.meta.units
    out["peak_radius_mm"] = float(radius)
    out["peak_volume_ml"] = float(4.0 / 3.0 * math.pi * radius ** 3 / 1000.0)
    out["peak_kernel_voxels"] = int((kernel > 0).sum())
    return out


def label_stats(volume: Volume, labels: Volume, names: dict[int, str], **kwargs) -> dict[str, dict]:
    """:func:`stats` for each named label of a label image.

    Parameters
    ----------
    volume : Volume
        3D or 4D image.
    labels : Volume
        Integer label image on the image's grid or another orientation of it.
    names : dict of int to str
        Label value -> region name; labels not named are ignored.
    **kwargs
        ``peak_volume_ml`` / ``peak_radius_mm``, passed to :func:`stats`.

    Returns
    -------
    dict of str to dict
        Region name -> the :func:`stats` dictionary, in the order of ``names``.

    Raises
    ------
    ParameterError
        A named label has no voxel (the message names it), or a non-integral label image.
    """
    lab = labels if labels.same_grid(volume) else match_mask(labels, volume, labels=True)
    out = {}
    for value, name in names.items():
        region = lab.data == value
        if not bool(region.any()):
            raise ParameterError(f"label_stats: label {value} ({name!r}) has no voxel in the label image")
        out[name] = stats(volume, region, **kwargs)
    return out


def image_roi_stats(image, *, mask=None, rtstruct=None, structures=None,
                    peak_radius_mm: float | None = None, peak_volume_ml: float | None = None) -> dict:
    """:func:`stats` from files: what ``invivo roi-stats`` runs.

    Parameters
    ----------
    image : str or os.PathLike
        Image: NIfTI file or DICOM file/folder (read with :func:`invivo.io.load`).
    mask : str or os.PathLike, optional
        Mask NIfTI (nonzero = inside), on the image's grid or another orientation of it.
    rtstruct : str or os.PathLike, optional
        RTSTRUCT file or a folder holding one (give ``mask`` or ``rtstruct``).
    structures : str or list of str, optional
        RTSTRUCT structure names; all by default.
    peak_radius_mm, peak_volume_ml : float, optional
        Peak sphere size (see :func:`stats`).

    Returns
    -------
    dict
        With ``mask``: the :func:`stats` dictionary.  With ``rtstruct``: structure
        name -> :func:`stats` dictionary.

    Raises
    ------
    ParameterError
        Neither or both of ``mask`` / ``rtstruct``; a structure with no voxel on the
        image grid (named).
    """
    from . import io

    if (mask is None) == (rtstruct is None):
        raise ParameterError("image_roi_stats: give exactly one of mask= (NIfTI) or rtstruct= (RTSTRUCT)")
    img = io.load(image)
    peak = {"peak_radius_mm": peak_radius_mm, "peak_volume_ml": peak_volume_ml}
    if mask is not None:
        return stats(img, io.load(mask), **peak)
    out = {}
    for name, m in io.load_rtstruct(rtstruct, img, structures=structures).items():
        if not bool(m.data.any()):
            raise ParameterError(f"structure {name!r} in {rtstruct} has no voxel on the image grid of {image}")
        out[name] = stats(img, m, **peak)
    return out


def tac(volume: Volume, masks, **kwargs):
    """Time-activity curves of ``masks`` in a 3D/4D image as a PET-BIDS table (``frame_start``,
    ``frame_end`` in s, one column per region), decay handling explicit: see
    :func:`invivo.kinetics.tac.tac` (and :func:`invivo.kinetics.tac.assemble_tac` for scans days apart)."""
    from .kinetics.tac import tac as _tac

    return _tac(volume, masks, **kwargs)
