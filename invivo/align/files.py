"""File-level registration and resampling (what ``invivo register`` and ``invivo resample`` run)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ParameterError
from ..volume import Volume

__all__ = ["register_files", "resample_files"]


def _load(path, what: str, series=None) -> Volume:
    from ..io import load

    p = Path(path)
    if not p.exists():
        raise ParameterError(f"{what} {p} does not exist")
    return load(p, series=series)


def _load_keep_labels(path, what: str, series=None) -> Volume:
    """Like _load, but a NIfTI stored as integers (a label map or mask) keeps its integer type,
    so that resampling uses nearest neighbour and the labels survive."""
    v = _load(path, what, series)
    if str(path).endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        on_disk = np.dtype(img.get_data_dtype())
        slope, inter = img.header.get_slope_inter()
        if on_disk.kind in "iub" and slope in (None, 1.0) and inter in (None, 0.0):
            v = Volume(np.asarray(v.data).astype(on_disk), v.affine, v.meta)
    return v


def _pick(v: Volume, frame, what: str) -> Volume:
    if frame is None:
        return v
    if v.data.ndim != 4:
        raise ParameterError(f"--{what}-frame given but the {what} image is 3D")
    if not (-v.shape[3] <= frame < v.shape[3]):
        raise ParameterError(f"--{what}-frame {frame} is outside 0..{v.shape[3] - 1}")
    return v.frame(frame) if hasattr(v, "frame") else Volume(v.data[..., frame], v.affine, v.meta)


def register_files(fixed, moving, out_transform, *, out_image=None, transform: str = "rigid", mask=None,
                   fixed_frame: int | None = None, qc_prefix=None, interpolation: str | None = None,
                   overwrite: bool = False, fixed_series=None, moving_series=None, **kwargs) -> dict:
    """Register image files (DICOM folders or NIfTI); write the transform, and optionally the
    moving image on the fixed grid and QC pictures.

    A 4D moving image (dynamic PET) is registered through its summed late frames and
    every frame is resampled.  A 4D fixed image needs ``fixed_frame``.
    Returns ``{"registration": Registration, "paths": [...]}``.
    """
    from .qc import checkerboard_png, overlay_png
    from .register import register
    from .transforms import write_transform
    from .workflows import register_dynamic

    f = _pick(_load(fixed, "fixed image", fixed_series), fixed_frame, "fixed")
    m = _load(moving, "moving image", moving_series)
    mk = "auto"  # register()'s default: the fixed image's foreground
    if mask is not None:
        mk = _load(mask, "mask")
        mk = Volume(mk.data.astype(bool), mk.affine, mk.meta)
    reg = (register_dynamic(f, m, transform=transform, mask=mk, **kwargs) if m.data.ndim == 4
           else register(f, m, transform=transform, mask=mk, **kwargs))
    reg.transform.info["inputs"] = {"fixed": os.fspath(fixed), "moving": os.fspath(moving)}
    reg.transform.info["quality"] = reg.quality
    reg.transform.info["overlap"] = reg.overlap
    paths = [write_transform(reg.transform, out_transform, overwrite=overwrite)]
    resampled = None
    if out_image is not None or qc_prefix is not None:
        resampled = reg.resample(interpolation=interpolation)
    if out_image is not None:
        from ..io.nifti import save_nifti

        paths.append(save_nifti(resampled, out_image, overwrite=overwrite, inputs=[fixed, moving],
                                parameters={"transform": os.fspath(out_transform), **reg.settings}))
    if qc_prefix is not None:
        show = resampled if resampled.data.ndim == 3 else Volume(resampled.data[..., -1], resampled.affine,
                                                                  resampled.meta)
        paths.append(overlay_png(f, show, f"{qc_prefix}_overlay.png", overwrite=overwrite))
        paths.append(checkerboard_png(f, show, f"{qc_prefix}_checkerboard.png", overwrite=overwrite))
    return {"registration": reg, "paths": paths}


def resample_files(moving, reference, transform, out, *, interpolation: str | None = None, conserve: bool = False,
                   overwrite: bool = False, moving_series=None, reference_series=None) -> Path:
    """Resample an image file onto a reference image's grid through a transform file; write NIfTI."""
    from ..io.nifti import save_nifti
    from .resample import resample
    from .transforms import read_transform

    m = _load_keep_labels(moving, "moving image", moving_series)
    r = _load(reference, "reference image", reference_series)
    t = read_transform(transform) if transform is not None else None
    out_v = resample(m, r, t, interpolation=interpolation, conserve=conserve)
    inputs = [moving, reference] + ([transform] if transform is not None else [])
    return save_nifti(out_v, out, overwrite=overwrite, inputs=inputs,
                      parameters={"transform": None if transform is None else os.fspath(transform),
                                  "interpolation": interpolation or "auto", "conserve": conserve})
