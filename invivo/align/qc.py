"""Registration QC pictures: a fused overlay and a checkerboard, three orthogonal slices each (PNG)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..backend import to_device
from ..errors import GeometryError, ParameterError
from ..volume import Volume

__all__ = ["overlay_png", "checkerboard_png", "qc_slices"]


def _window(a: np.ndarray) -> np.ndarray:
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros_like(a, dtype=np.float64)
    lo, hi = np.percentile(finite, (1.0, 99.5))
    if not hi > lo:
        lo, hi = float(finite.min()), float(finite.max()) if finite.max() > finite.min() else float(finite.min()) + 1
    return np.clip((np.nan_to_num(a, nan=lo) - lo) / (hi - lo), 0.0, 1.0)


def _square(panel: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Repeat pixels so that a panel with pixel sizes (sx, sy) mm looks right (integer factors)."""
    m = min(sx, sy)
    return np.repeat(np.repeat(panel, max(1, round(sx / m)), axis=0), max(1, round(sy / m)), axis=1)


def qc_slices(volume: Volume, centre_vox=None) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices (display orientation) through ``centre_vox`` (default: the middle)."""
    data = np.asarray(to_device(volume.data, "cpu"), dtype=np.float64)  # host: pictures
    if data.ndim == 4:
        data = data[..., -1]
    if data.ndim != 3:
        raise ParameterError(f"QC pictures need a 3D image, got shape {data.shape}")
    c = [s // 2 for s in data.shape] if centre_vox is None else [int(round(v)) for v in centre_vox]
    sp = volume.voxel_size_mm
    ax = _square(data[:, :, c[2]], sp[0], sp[1])            # i (R-L) x j (A-P)
    co = _square(data[:, c[1], :], sp[0], sp[2])            # i x k (S-I)
    sa = _square(data[c[0], :, :], sp[1], sp[2])            # j x k
    # display: rows top->bottom, columns left->right; superior up, anterior up in axial
    return [np.flipud(ax.T), np.flipud(co.T), np.flipud(sa.T)]


def _montage(panels: list[np.ndarray], pad: int = 4) -> np.ndarray:
    h = max(p.shape[0] for p in panels)
    out = []
    for p in panels:
        block = np.zeros((h, p.shape[1]) + p.shape[2:], dtype=p.dtype)
        block[:p.shape[0]] = p
        out.append(block)
        out.append(np.zeros((h, pad) + p.shape[2:], dtype=p.dtype))
    return np.concatenate(out[:-1], axis=1)


def _check_pair(fixed: Volume, moving_on_fixed: Volume):
    if fixed.shape[:3] != moving_on_fixed.shape[:3] or not np.allclose(fixed.affine, moving_on_fixed.affine, atol=1e-3):
        raise GeometryError("QC pictures need the moving image resampled onto the fixed grid "
                            "(Registration.resample() or invivo.align.resample)")


def _write_png(rgb: np.ndarray, path, overwrite: bool) -> Path:
    import SimpleITK as sitk

    from ..io.nifti import atomic_write

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ParameterError(f"QC picture {path} must end in .png")
    img = sitk.GetImageFromArray(np.ascontiguousarray(rgb), isVector=True)
    atomic_write({path: lambda tmp: sitk.WriteImage(img, os.fspath(tmp))}, overwrite=overwrite)
    return path


def _centre(fixed: Volume):
    d = np.asarray(to_device(fixed.data, "cpu"), dtype=np.float64)
    if d.ndim == 4:
        d = d[..., 0]
    w = _window(d)
    if w.sum() <= 0:
        return None
    idx = np.indices(d.shape).reshape(3, -1)
    return (idx * w.ravel()).sum(axis=1) / w.sum()


def _picture(fixed: Volume, moving_on_fixed: Volume, path, blend, overwrite: bool) -> Path:
    """Three orthogonal slices through the fixed image's centre, each ``blend(fixed, moving)`` (windowed, RGB 0-1)."""
    _check_pair(fixed, moving_on_fixed)
    c = _centre(fixed)
    panels = [blend(_window(f), _window(m)) * 255 for f, m in zip(qc_slices(fixed, c), qc_slices(moving_on_fixed, c))]
    return _write_png(_montage(panels).astype(np.uint8), path, overwrite)


def overlay_png(fixed: Volume, moving_on_fixed: Volume, path, *, alpha: float = 0.6,
                overwrite: bool = False) -> Path:
    """Fixed image in grey with the moving image (on the fixed grid) in a hot colour scale over it."""

    def blend(g, h):
        hot = np.stack([np.clip(3 * h, 0, 1), np.clip(3 * h - 1, 0, 1), np.clip(3 * h - 2, 0, 1)], axis=-1)
        a = alpha * np.clip(2 * h, 0, 1)[..., None]
        return (1 - a) * g[..., None] + a * hot

    return _picture(fixed, moving_on_fixed, path, blend, overwrite)


def checkerboard_png(fixed: Volume, moving_on_fixed: Volume, path, *, tiles: int = 8,
                     overwrite: bool = False) -> Path:
    """Alternating tiles of the fixed and the resampled moving image (each windowed), grey."""

    def blend(g, h):
        ty, tx = max(1, g.shape[0] // tiles), max(1, g.shape[1] // tiles)
        yy, xx = np.indices(g.shape)
        board = ((yy // ty + xx // tx) % 2).astype(bool)
        return np.repeat(np.where(board, h, g)[..., None], 3, axis=-1)

    return _picture(fixed, moving_on_fixed, path, blend, overwrite)
