"""File-level R2* mapping: what ``invivo r2star`` does, as one function."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ParameterError
from ..volume import Volume
from .r2star import DEFAULT_METHOD, STATUS, R2StarModel

__all__ = ["load_multiecho", "write_r2star", "output_names", "spio_maps"]


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


def _r2star_input(path_or_volume, what: str):
    """An R2* map (3D, s^-1) and its status map, from a file written by invivo r2star, a multi-echo
    series (fitted here with the default method), or Volumes."""
    from .. import io

    if isinstance(path_or_volume, Volume):
        vol, status = path_or_volume, None
    else:
        p = Path(path_or_volume)
        vol = io.load(p)
        status = None
        if str(p).endswith((".nii", ".nii.gz")):
            names = output_names(p)
            if names["status"].exists():  # status codes come back from NIfTI as floats
                status = np.rint(np.asarray(io.load(names["status"]).data)).astype(np.uint8)
    if vol.data.ndim == 4:  # multi-echo: fit it
        me = load_multiecho(vol)
        fit = R2StarModel(me.meta.echo_times_s).fit(me)
        return fit.volume("r2star"), fit.status
    if vol.meta.units not in (None, "s-1", "1/s", "Hz"):
        raise ParameterError(f"{what}: expected an R2* map in s-1, got units {vol.meta.units!r}")
    return vol, status


def spio_maps(pre, post, *, relaxivity, pg_fe_per_cell: float | None = None, masks=None, out_dir=None,
              overwrite: bool = False) -> dict:
    """dR2*, iron and labeled-cell maps from co-registered pre/post R2* (what ``invivo spio`` does).

    Parameters
    ----------
    pre, post : str, Path or Volume
        R2* maps (s^-1, e.g. from ``invivo r2star``; a ``_status`` map beside them is
        honoured) or multi-echo series, which are fitted with the default method.  Same grid.
    relaxivity : float or invivo.relax.iron.Relaxivity
        r2* of the iron in s^-1 mM^-1 -- always explicit: cell-internalised particles
        differ from free ones; a labeled-cell phantom calibration is the honest value.
    pg_fe_per_cell : float, optional
        Iron per labeled cell (pg); gives a cells-per-voxel map.
    masks : dict of name -> mask (path or Volume), optional
        Regions for the table (iron mean / total, cells).
    out_dir : str or Path, optional
        Write ``dr2star``, ``fe_mM``, ``fe_ug``, ``cells`` (with ``pg_fe_per_cell``), ``status``
        NIfTI maps and ``roi.tsv``, all or nothing.

    Returns
    -------
    dict with the Volumes (``dr2star``, ``fe_mM``, ``fe_ug``, ``cells``, ``status``), ``table``
    (pandas DataFrame, or None) and ``paths`` (when written).
    """
    import pandas as pd

    from .. import io, roi
    from . import iron

    pre_v, pre_s = _r2star_input(pre, "pre")
    post_v, post_s = _r2star_input(post, "post")
    if not pre_v.same_grid(post_v):
        from ..errors import GeometryError

        raise GeometryError(f"pre {pre_v.shape} and post {post_v.shape} R2* maps are on different grids: "
                             "co-register post to pre first (invivo register)")
    status = iron.delta_status(pre_s if pre_s is not None else np.zeros(pre_v.shape, np.uint8),
                               post_s if post_s is not None else np.zeros(post_v.shape, np.uint8))
    dr2 = iron.delta_r2star(pre_v, post_v, pre_status=pre_s, post_status=post_s)
    fe = iron.iron_concentration(dr2, relaxivity=relaxivity)
    fe_ug = iron.iron_mass_ug(fe)
    out = {"dr2star": dr2, "fe_mM": fe, "fe_ug": fe_ug, "status": pre_v.with_data(status, units="code")}
    if pg_fe_per_cell is not None:
        out["cells"] = iron.cell_count(fe_ug, pg_fe_per_cell=pg_fe_per_cell)
    table = None
    if masks:
        mvols = {name: (m if isinstance(m, Volume) else io.load(m)) for name, m in masks.items()}
        mvols = {name: roi.match_mask(m, pre_v) for name, m in mvols.items()}
        rows = iron.roi_iron(fe, mvols)
        recs = []
        for name, r in rows.items():
            rec = {"roi": name, **r}
            d = roi.stats(dr2, mvols[name])
            rec["dr2star_mean_per_s"] = d["mean"]
            if pg_fe_per_cell is not None:
                rec["cells_total"] = float(r["total_ug"]) * 1e6 / float(pg_fe_per_cell)
            recs.append(rec)
        table = pd.DataFrame(recs)
    result = {**out, "table": table, "paths": None}
    if out_dir is not None:
        od = Path(out_dir)
        items = [(v, od / f"{k}.nii.gz") for k, v in out.items()]
        params = {"relaxivity_per_mM_per_s": float(getattr(relaxivity, "r2star_per_mm_per_s", relaxivity)),
                  "pg_fe_per_cell": pg_fe_per_cell}
        tsv = od / "roi.tsv"
        if table is not None and tsv.exists() and not overwrite:
            from ..errors import OutputExistsError

            raise OutputExistsError(f"{tsv} already exists; pass --overwrite")
        inputs = [p for p in (pre, post) if not isinstance(p, Volume)]
        paths = io.nifti.save_many(items, overwrite=overwrite, inputs=inputs, parameters=params)
        if table is not None:
            io.nifti.atomic_write({tsv: lambda tmp: table.to_csv(tmp, sep="\t", index=False)}, overwrite=True)
            paths.append(tsv)
        result["paths"] = paths
    return result
