"""File-level R2* mapping: what ``invivo r2star`` does, as one function."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ParameterError
from ..volume import Volume
from .r2star import DEFAULT_METHOD, STATUS, R2StarModel

__all__ = ["load_multiecho", "write_r2star", "output_names"]


def _nii_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise ParameterError(f"output {path} must end in .nii.gz or .nii")


def output_names(out: str | os.PathLike) -> dict[str, Path]:
    """``x.nii.gz`` -> {r2star: x.nii.gz, s0: x_s0.nii.gz, status: x_status.nii.gz}."""
    out = Path(out)
    stem = _nii_stem(out)
    ext = out.name[len(stem):]
    return {"r2star": out, "s0": out.with_name(f"{stem}_s0{ext}"), "status": out.with_name(f"{stem}_status{ext}")}


def load_multiecho(path, *, echo_times_s=None, series=None) -> Volume:
    """A multi-echo magnitude Volume (echoes on the last axis) from DICOM or a 4D NIfTI.

    Echo times come from the data (DICOM EchoTime, the sidecar's EchoTime list) or from
    ``echo_times_s``; when both exist they must agree.
    """
    from .. import io

    vol = path if isinstance(path, Volume) else io.load(path, series=series)
    if vol.data.ndim != 4 or vol.shape[3] < 2:
        raise ParameterError(f"{path}: expected a multi-echo image with echoes on the last axis, got shape {vol.shape}")
    stored = vol.meta.echo_times_s
    if echo_times_s is not None:
        te = tuple(float(t) for t in echo_times_s)
        if len(te) != vol.shape[3]:
            raise ParameterError(f"{len(te)} echo times given but the image has {vol.shape[3]} echoes")
        if stored is not None and len(stored) == len(te) and not np.allclose(stored, te, rtol=1e-4, atol=1e-7):
            raise ParameterError(f"echo times given ({[round(1e3 * t, 4) for t in te]} ms) differ from the image's "
                                 f"({[round(1e3 * t, 4) for t in stored]} ms)")
        vol.meta.echo_times_s = te
    elif stored is None or len(stored) != vol.shape[3]:
        raise ParameterError(f"{path}: echo times unknown; give them (--te-ms 2,4,6,...) or an EchoTime list in the "
                             "JSON sidecar")
    return vol


def write_r2star(path, out, *, method: str = DEFAULT_METHOD, echo_times_s=None, mask=None, sigma=None,
                 series=None, overwrite: bool = False) -> dict[str, Path]:
    """Fit R2* to a multi-echo series and write the R2* (s^-1), S0 and status maps on its grid.

    Parameters
    ----------
    path : str or Path
        Multi-echo DICOM series (folder) or 4D NIfTI with echoes on the last axis.
    out : str or Path
        ``.nii.gz`` for the R2* map; ``_s0`` and ``_status`` maps are written beside it.
    method, echo_times_s, sigma
        See :class:`invivo.relax.R2StarModel`; echo times in seconds.
    mask : str, Path or Volume, optional
        Voxels to fit (matched to the MR grid in world coordinates).

    Returns
    -------
    dict of output paths (all written atomically together).
    """
    from .. import io, roi

    vol = load_multiecho(path, echo_times_s=echo_times_s, series=series)
    m = None
    if mask is not None:
        mvol = mask if isinstance(mask, Volume) else io.load(mask)
        m = roi.match_mask(mvol, vol).data
    model = R2StarModel(vol.meta.echo_times_s, method=method)
    fit = model.fit(vol, mask=m, sigma=sigma)
    names = output_names(out)
    params = {"method": method, "echo_times_s": list(model.echo_times_s), "sigma": fit.sigma,
              "status_codes": dict(STATUS)}
    io.nifti.save_many([(fit.volume(k), p) for k, p in names.items()], overwrite=overwrite,
                       inputs=[path] if not isinstance(path, Volume) else None, parameters=params)
    return names
