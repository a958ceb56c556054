"""Resampling of Volumes (3D and 4D, images and label masks) through a :class:`Transform`."""

from __future__ import annotations

import math

import numpy as np

from ..backend import device_of, to_device
from ..errors import GeometryError, ParameterError
from ..volume import Volume
from .transforms import Transform, read_transform, to_sitk

__all__ = ["resample", "INTERPOLATIONS"]

INTERPOLATIONS = ("linear", "bspline", "nearest")


def _interpolator(name: str):
    import SimpleITK as sitk

    table = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}
    if name not in table:
        raise ParameterError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {name!r}")
    return table[name]


def _as_transform(transform) -> Transform:
    if transform is None:
        return Transform.identity()
    if isinstance(transform, Transform):
        return transform
    if isinstance(transform, (str, bytes)) or hasattr(transform, "__fspath__"):
        return read_transform(transform)
    m = np.asarray(transform, dtype=float)
    return Transform(m)


def _grid_of(reference):
    """(shape, affine) of a Volume (its spatial grid) or of a ``(shape, affine)`` pair."""
    if isinstance(reference, Volume):
        return tuple(reference.shape[:3]), np.asarray(reference.affine, dtype=float)
    try:
        shape, affine = reference
        shape = tuple(int(s) for s in shape)
        affine = np.asarray(affine, dtype=float)
    except (TypeError, ValueError):
        raise ParameterError("reference must be a Volume or a (shape, affine) pair") from None
    if len(shape) != 3 or affine.shape != (4, 4):
        raise ParameterError(f"reference grid must be 3D with a 4x4 affine, got shape {shape}")
    return shape, affine


def _resample_frame(img, shape, affine, tx, interp, default, pixel):
    import SimpleITK as sitk

    from .transforms import _F

    a = _F @ affine
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    direction = a[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise GeometryError("the reference grid's affine has shear; choose an orthogonal reference grid")
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in shape])
    f.SetOutputSpacing(spacing.tolist())
    f.SetOutputDirection(direction.ravel().tolist())
    f.SetOutputOrigin(a[:3, 3].tolist())
    f.SetTransform(tx)
    f.SetInterpolator(interp)
    f.SetDefaultPixelValue(float(default))
    f.SetOutputPixelType(pixel)
    out = f.Execute(img)
    return sitk.GetArrayViewFromImage(out).transpose(2, 1, 0).copy()


def resample(moving: Volume, reference, transform=None, *, interpolation: str | None = None,
             default_value: float = 0.0, conserve: bool = False) -> Volume:
    """Resample ``moving`` onto the grid of ``reference`` through ``transform``.

    Parameters
    ----------
    moving : Volume
        3D image, 4D series (every frame or echo is resampled), or a label / boolean mask.
    reference : Volume or (shape, affine)
        The output grid (only its geometry is used).
    transform : Transform, path, 4x4 array or None
        Maps reference-space (fixed) points to moving-space points (ITK convention), RAS mm;
        ``None`` is the identity (pure regridding).  A path is read with
        :func:`read_transform`.
    interpolation : {"linear", "bspline", "nearest"}, optional
        Default ``"nearest"`` for boolean and integer data (label masks keep their
        labels), ``"linear"`` otherwise.
    default_value : float
        Value outside the moving image.
    conserve : bool
        Activity-conserving downsampling: each output voxel is the mean of the moving
        image over the voxel's footprint (linear interpolation at sub-voxel points, as
        many per axis as the ratio of voxel sizes), so ``sum * voxel volume`` -- the
        total activity of a concentration image -- is kept.  For images, not masks.

    Returns
    -------
    Volume
        On the reference grid, on the moving data's device; float32 data stay float32,
        other images become float64, masks keep their dtype.  The metadata are the
        moving image's with the resampling recorded in ``meta.source["resampled"]``.

    Examples
    --------
    >>> import numpy as np
    >>> from invivo import Volume
    >>> v = Volume(np.arange(27.0).reshape(3, 3, 3), np.eye(4))
    >>> out = resample(v, v, Transform.from_parameters(translation_mm=(1.0, 0.0, 0.0)))
    >>> out.data[0, 1, 1], v.data[1, 1, 1]
    (np.float64(13.0), np.float64(13.0))
    """
    import SimpleITK as sitk

    if not isinstance(moving, Volume):
        raise ParameterError(f"moving must be a Volume, got {type(moving).__name__}")
    if moving.data.ndim not in (3, 4):
        raise ParameterError(f"moving must be a 3D or 4D Volume, got shape {moving.shape}")
    shape, affine = _grid_of(reference)
    t = _as_transform(transform)
    dev = device_of(moving.data)
    src = to_device(moving.data, "cpu")  # host: SimpleITK resamples in host memory
    is_mask = src.dtype == bool or src.dtype.kind in "iu"
    interp_name = interpolation or ("nearest" if is_mask else "linear")
    interp = _interpolator(interp_name)
    if conserve and is_mask:
        raise ParameterError("conserve=True is for images (activity); label masks are resampled with nearest")
    if src.dtype == bool:
        work, pixel, out_dtype = src.astype(np.uint8), sitk.sitkUInt8, bool
    elif is_mask and interp_name == "nearest":
        work, pixel, out_dtype = src, None, src.dtype
    else:
        out_dtype = np.float32 if src.dtype == np.float32 else np.float64
        work = src.astype(out_dtype, copy=False)
        pixel = sitk.sitkFloat32 if out_dtype == np.float32 else sitk.sitkFloat64
    tx = t.to_sitk()

    factors = (1, 1, 1)
    grid_shape, grid_affine = shape, affine
    if conserve:
        ref_sp = np.linalg.norm(affine[:3, :3], axis=0)
        mov_sp = np.linalg.norm(moving.affine[:3, :3], axis=0)
        # moving voxel size seen along each output axis (through the transform's linear part)
        factors = tuple(max(1, int(math.ceil(r / mov_sp.min() - 1e-6))) for r in ref_sp)
        grid_shape = tuple(s * f for s, f in zip(shape, factors))
        grid_affine = affine.copy()
        for ax, f in enumerate(factors):
            grid_affine[:3, ax] = affine[:3, ax] / f
        grid_affine[:3, 3] = affine[:3, 3] - sum(affine[:3, ax] * (f - 1) / (2.0 * f) for ax, f in enumerate(factors))

    frames = [work] if work.ndim == 3 else [work[..., i] for i in range(work.shape[-1])]
    outs = []
    for fr in frames:
        vol = Volume(fr, moving.affine, moving.meta)
        img = to_sitk(vol, dtype=None)
        px = pixel if pixel is not None else img.GetPixelID()
        arr = _resample_frame(img, grid_shape, grid_affine, tx, interp, default_value, px)
        if conserve and factors != (1, 1, 1):
            fx, fy, fz = factors
            arr = arr.reshape(shape[0], fx, shape[1], fy, shape[2], fz).mean(axis=(1, 3, 5))
        outs.append(arr)
    data = outs[0] if work.ndim == 3 else np.stack(outs, axis=-1)
    data = data.astype(out_dtype, copy=False)
    meta = moving.meta.copy()
    meta.source = dict(meta.source)
    meta.source["resampled"] = {"transform_ras": t.matrix.tolist(), "interpolation": interp_name,
                                "conserve": bool(conserve), "from_affine": np.asarray(moving.affine).tolist(),
                                "from_shape": list(moving.shape[:3])}
    return Volume(to_device(data, dev), affine, meta)
