"""Time-activity curves: from images and masks, assembled over scans days apart, read and written as PET-BIDS TSV.

A TAC table has ``frame_start`` and ``frame_end`` (s) and one column per region; its
``attrs["invivo"]`` records the time origin (``"injection"`` or ``"scan start"``), the
decay handling (``"injection"``: every value decay corrected to the injection time, what
kinetic models expect; ``"none"``: physical activity at the time of each frame) with the
factor applied to each frame, and the units.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..backend import get_array_module, to_device
from ..errors import ParameterError
from ..volume import Volume
from .base import Frames, read_table

__all__ = ["tac", "assemble_tac", "read_tac", "write_tac", "DECAY_MODES"]

DECAY_MODES = ("injection", "none", "as-stored")


def _half_life(meta) -> float | None:
    tr = meta.tracer
    return getattr(tr, "half_life_s", None) if tr is not None else None


def _frame_times(vol: Volume):
    """(start_s, end_s) of each frame from the series start, and the offset of the series start after
    the injection (s, or None when the datetimes are missing)."""
    m = vol.meta
    n_t = vol.shape[3] if vol.data.ndim == 4 else 1
    if m.frame_start_s is not None and m.frame_duration_s is not None and len(m.frame_start_s) == n_t:
        start = np.asarray(m.frame_start_s, dtype=np.float64)
        end = start + np.asarray(m.frame_duration_s, dtype=np.float64)
    elif n_t == 1:
        raise ParameterError("image has no frame timing (meta.frame_start_s / frame_duration_s); "
                             "give it (NIfTI: FrameTimesStart / FrameDuration in the sidecar)")
    else:
        raise ParameterError(f"image has {n_t} frames but {0 if m.frame_start_s is None else len(m.frame_start_s)} "
                             "frame times")
    inj = getattr(m.tracer, "injection_datetime", None) if m.tracer is not None else None
    offset = (m.series_datetime - inj).total_seconds() if (inj is not None and m.series_datetime is not None) else None
    return start, end, offset


def _to_injection_factors(vol: Volume, start_s, end_s, offset_s) -> np.ndarray:
    """Per-frame factor turning the stored values into values decay corrected to the injection."""
    m = vol.meta
    hl = _half_life(m)
    injected = getattr(m.tracer, "injected_activity_bq", None) if m.tracer is not None else None
    if m.reference_activity_bq is not None and injected:
        ref = np.asarray(m.reference_activity_bq, dtype=np.float64)
        ref = ref.reshape(-1, ref.shape[-1]) if ref.ndim >= 1 else ref.reshape(1, 1)
        per_frame = ref.mean(axis=0)  # the decay reference is the same for every slice in practice
        if per_frame.size == 1:
            per_frame = np.full(start_s.size, per_frame[0])
        factors = injected / per_frame
        if (m.decay_correction or "").upper() == "NONE":
            # the reference is each frame's start (QIBA); the values are the mean over the frame of a
            # decaying activity: the frame-average decay correction completes the correction
            if not hl:
                raise ParameterError("decay correction NONE needs the half-life (meta.tracer.half_life_s)")
            lam = math.log(2.0) / hl
            d = end_s - start_s
            factors = factors * (lam * d / -np.expm1(-lam * d))
        return factors
    mode = (m.decay_correction or "").upper()
    if mode == "ADMIN":
        return np.ones(start_s.size)
    if offset_s is None or not hl:
        raise ParameterError("cannot decay correct to the injection: the image lacks the injection and series "
                             "datetimes or the half-life; use decay='as-stored'")
    lam = math.log(2.0) / hl
    if mode == "START":
        return np.full(start_s.size, math.exp(lam * offset_s))
    if mode == "NONE":  # raw counts: frame-average decay correction, then back to the injection
        d = end_s - start_s
        return lam * d / -np.expm1(-lam * d) * np.exp(lam * (offset_s + start_s))
    raise ParameterError(f"unknown decay correction {m.decay_correction!r} in the image metadata; use decay='as-stored'")


def tac(volume: Volume, masks, *, decay: str = "injection", time_origin: str = "injection", stat: str = "mean"):
    """Mean (or median) activity per frame inside each mask: a PET-BIDS TAC table.

    Parameters
    ----------
    volume : Volume
        3D (one static frame) or 4D (frames on the last axis), Bq/mL or any unit.
    masks : dict of str to (Volume or bool array), or one mask
        Regions; masks stored in another orientation of the same grid are matched.
    decay : {"injection", "none", "as-stored"}
        ``"injection"``: values decay corrected to the injection (from
        ``meta.reference_activity_bq`` where the loader computed it, else from the
        decay-correction mode and datetimes); ``"none"``: physical activity during each
        frame; ``"as-stored"``: the image values unchanged.
    time_origin : {"injection", "scan start"}
        Zero of ``frame_start`` / ``frame_end``.
    stat : {"mean", "median"}

    Returns
    -------
    pandas.DataFrame
        ``frame_start``, ``frame_end`` (s) and one column per region; ``attrs["invivo"]``
        records the origin, the decay handling and the factor applied to each frame.
    """
    import pandas as pd

    from ..roi import _mask_array

    if decay not in DECAY_MODES:
        raise ParameterError(f"decay must be one of {', '.join(DECAY_MODES)}, got {decay!r}")
    if time_origin not in ("injection", "scan start"):
        raise ParameterError(f"time_origin must be 'injection' or 'scan start', got {time_origin!r}")
    if stat not in ("mean", "median"):
        raise ParameterError(f"stat must be 'mean' or 'median', got {stat!r}")
    if not isinstance(volume, Volume) or volume.data.ndim not in (3, 4):
        raise ParameterError("tac needs a 3D or 4D Volume")
    if not isinstance(masks, dict):
        masks = {"region": masks}
    if not masks:
        raise ParameterError("tac needs at least one mask")
    start, end, offset = _frame_times(volume)
    if time_origin == "injection":
        if offset is None:
            raise ParameterError("frame times relative to the injection need the injection and series datetimes "
                                 "in the metadata; use time_origin='scan start'")
        start, end = start + offset, end + offset
    if decay == "as-stored":
        factors = np.ones(start.size)
    else:
        s0, e0, off = _frame_times(volume)
        factors = _to_injection_factors(volume, s0, e0, off)
        if decay == "none":  # from injection-corrected back to the physical activity of each frame
            hl = _half_life(volume.meta)
            if off is None or not hl:
                raise ParameterError("decay='none' needs the half-life and the injection and series datetimes")
            lam = math.log(2.0) / hl
            d = e0 - s0
            factors = factors / (lam * d / -np.expm1(-lam * d) * np.exp(lam * (off + s0)))
    data = volume.data if volume.data.ndim == 4 else volume.data[..., None]
    xp = get_array_module(data)
    cols = {"frame_start": start, "frame_end": end}
    for name, mask in masks.items():
        m = _mask_array(volume, mask)
        n = int(m.sum())
        if n == 0:
            raise ParameterError(f"mask {name!r} is empty")
        vals = data[m]  # (n, T)
        v = vals.mean(axis=0) if stat == "mean" else xp.median(vals, axis=0)
        cols[str(name)] = np.asarray(to_device(v, "cpu"), dtype=np.float64) * factors  # host: a table
    df = pd.DataFrame(cols)
    df.attrs["invivo"] = {"time_origin": time_origin, "decay": decay, "decay_factors": factors.tolist(),
                          "units": volume.meta.units, "stat": stat, "half_life_s": _half_life(volume.meta),
                          "series": [volume.meta.series_uid]}
    return df


def assemble_tac(volumes, masks, *, decay: str = "injection", stat: str = "mean"):
    """One TAC from several scans (static scans days apart, or dynamic segments), times from the injection.

    ``masks`` is one dict of masks for all scans (same grid) or a list with one dict per
    scan (each on its own scan's grid, e.g. after registration).  The decay handling of
    every scan is made explicit and recorded (``attrs["invivo"]["scans"]``).
    """
    import pandas as pd

    vols = list(volumes)
    if not vols:
        raise ParameterError("assemble_tac needs at least one scan")
    mask_list = masks if isinstance(masks, (list, tuple)) else [masks] * len(vols)
    if len(mask_list) != len(vols):
        raise ParameterError(f"{len(mask_list)} mask sets for {len(vols)} scans")
    parts, scans = [], []
    for i, (v, m) in enumerate(zip(vols, mask_list)):
        df = tac(v, m, decay=decay, time_origin="injection", stat=stat)
        parts.append(df)
        scans.append({"scan": i, "series": v.meta.series_uid, "decay_correction": v.meta.decay_correction,
                      "decay_factors": df.attrs["invivo"]["decay_factors"],
                      "first_frame_start_s": float(df["frame_start"].iloc[0])})
    names = [list(p.columns) for p in parts]
    if any(n != names[0] for n in names):
        raise ParameterError("every scan needs the same regions (mask names)")
    out = pd.concat(parts, ignore_index=True).sort_values("frame_start", ignore_index=True)
    Frames(out["frame_start"].to_numpy(), out["frame_end"].to_numpy())  # validates: increasing, no overlap
    out.attrs["invivo"] = {"time_origin": "injection", "decay": decay, "scans": scans,
                           "units": parts[0].attrs["invivo"]["units"], "stat": stat}
    return out


def write_tac(df, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a TAC table as TSV with a JSON sidecar (units, time origin, decay handling), atomically."""
    from ..io.nifti import atomic_write

    path = Path(path)
    if path.suffix.lower() != ".tsv":
        raise ParameterError(f"TAC file {path} must end in .tsv")
    side = {"FrameTimesStart": "frame_start (s)", "Invivo": df.attrs.get("invivo", {})}
    text = df.to_csv(sep="\t", index=False, float_format="%.10g")
    atomic_write({path: lambda tmp: tmp.write_text(text),
                  path.with_suffix(".json"): lambda tmp: tmp.write_text(json.dumps(side, indent=2, default=str))},
                 overwrite=overwrite)
    return path


def read_tac(path: str | os.PathLike):
    """Read a TAC table (TSV/CSV): ``frame_start`` and ``frame_end`` (s), or one ``time`` column (s).

    Returns ``(Frames, DataFrame of the region columns)``.
    """
    import pandas as pd

    p = Path(path)
    df, cols = read_table(p, "TAC file")
    if "frame_start" in cols and "frame_end" in cols:
        frames = Frames(df[cols["frame_start"]].to_numpy(float), df[cols["frame_end"]].to_numpy(float))
        drop = [cols["frame_start"], cols["frame_end"]]
    elif "time" in cols:
        frames = Frames.from_times(df[cols["time"]].to_numpy(float))
        drop = [cols["time"]]
    else:
        raise ParameterError(f"TAC file {p} needs frame_start and frame_end columns (s) or one time column (s)")
    regions = df.drop(columns=drop)
    if regions.shape[1] == 0:
        raise ParameterError(f"TAC file {p} has no region columns")
    for c in regions.columns:
        v = pd.to_numeric(regions[c], errors="coerce").to_numpy(float)
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise ParameterError(f"TAC file {p}: region {c!r} has a missing or non-numeric value in row {int(bad[0])}")
        regions[c] = v
    regions.columns = [str(c).strip() for c in regions.columns]
    return frames, regions
