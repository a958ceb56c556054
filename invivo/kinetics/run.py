"""Fit a model to every region of a TAC file: what ``invivo kinetics`` runs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import ParameterError
from . import MODELS, get_model
from .inputs import load_blood
from .tac import read_tac

__all__ = ["fit_tac_file", "results_table"]


def fit_tac_file(tac_path, model: str, *, input_path=None, reference: str | None = None, regions=None,
                 options: dict | None = None, fit_options: dict | None = None) -> dict:
    """Fit ``model`` to the regions of a TAC file; returns ``{region: KineticFit}``.

    Plasma-input models need ``input_path`` (a PET-BIDS blood TSV); reference-region models
    need ``reference`` (a column of the TAC file, excluded from the fitted regions).
    ``options`` go to the model's constructor, ``fit_options`` to its ``fit``.
    """
    name = str(model).strip().lower()
    if name not in MODELS:
        raise ParameterError(f"unknown kinetic model {model!r}; valid models: {', '.join(MODELS)}")
    kind = MODELS[name][2]
    frames, table = read_tac(tac_path)
    m = get_model(name, **(options or {}))
    fit_options = dict(fit_options or {})
    cols = list(table.columns)
    if regions:
        missing = [r for r in regions if r not in cols]
        if missing:
            raise ParameterError(f"region(s) {missing} not in {tac_path}; regions are {', '.join(cols)}")
        cols = list(regions)
    out = {}
    if kind == "plasma":
        if input_path is None:
            raise ParameterError(f"model {name!r} needs a plasma input function: --input BLOOD.tsv")
        inp = load_blood(input_path, half_life_s=fit_options.pop("half_life_s", None))
        for c in cols:
            out[c] = m.fit(table[c].to_numpy(), frames, inp, region=c, **fit_options)
    elif kind == "reference":
        if reference is None:
            raise ParameterError(f"model {name!r} needs a reference region: --reference REGION")
        if reference not in table.columns:
            raise ParameterError(f"reference region {reference!r} is not in {tac_path}; regions are "
                                 f"{', '.join(table.columns)}")
        ref = table[reference].to_numpy()
        for c in cols:
            if c != reference:
                out[c] = m.fit(table[c].to_numpy(), frames, ref, region=c, **fit_options)
    elif kind == "cells":
        t_d = frames.mid_s / 86400.0
        for c in cols:
            out[c] = m.fit(t_d, table[c].to_numpy(), region=c, **fit_options)
    elif kind == "serum":
        t_h = frames.mid_s / 3600.0
        for c in cols:
            out[c] = m.fit(t_h, table[c].to_numpy(), region=c, **fit_options)
    elif kind == "organs":  # every organ column of the file in one joint fit (%ID, decay corrected)
        t_h = frames.mid_s / 3600.0
        name_ = fit_options.pop("region", None) or Path(tac_path).stem
        out[name_] = m.fit(t_h, table[cols], region=name_, **fit_options)
    else:  # pragma: no cover - registry and dispatcher out of step
        raise ParameterError(f"model {name!r}: unknown input kind {kind!r}")
    if not out:
        raise ParameterError(f"{tac_path}: no region to fit")
    return out


def results_table(fits: dict):
    """One row per region: every parameter and its SE (``<name>_se``), AIC."""
    import pandas as pd

    rows = []
    for region, f in fits.items():
        row = {"region": region, "model": f.model}
        for k, v in f.params.items():
            row[k] = v
            row[f"{k}_se"] = f.se.get(k, math.nan)
        row.update({"aic": f.aic, "aicc": f.aicc, "n_points": f.n_points, "n_params": f.n_params})
        rows.append(row)
    return pd.DataFrame(rows)


def write_maps(pet_path, model: str, out_dir, *, input_path=None, reference_mask=None, mask=None,
               tstar_s: float | None = None, vB: float | None = None, overwrite: bool = False,
               half_life_s: float | None = None) -> list:
    """Parametric maps of a 4D PET file (DICOM folder or NIfTI) written as NIfTI + sidecars in ``out_dir``.

    Frame times are taken relative to the injection when the image records the injection and
    series datetimes (the blood file's clock), else relative to the scan start (with a warning).
    """
    import warnings

    from ..errors import InvivoWarning
    from ..io import load
    from ..io.nifti import save_many
    from ..volume import Volume
    from .base import Frames
    from .maps import MAP_MODELS, compartment_map, logan_map, patlak_map, srtm_map
    from .tac import _frame_times

    name = str(model).strip().lower()
    if name not in MAP_MODELS:
        raise ParameterError(f"kinetics-map model must be one of {', '.join(MAP_MODELS)}, got {model!r}")
    pet = load(pet_path)
    if pet.data.ndim != 4:
        raise ParameterError(f"{pet_path} is not a dynamic (4D) image: parametric maps need frames")
    start, end, offset = _frame_times(pet)
    if offset is None:
        warnings.warn("the image does not record the injection time: frame times are taken from the scan start",
                      InvivoWarning, stacklevel=2)
        offset = 0.0
    frames = Frames(start + offset, end + offset)
    m = None
    if mask is not None:
        mv = load(mask)
        m = np.asarray(mv.data) > 0
        if m.shape != pet.shape[:3]:
            raise ParameterError(f"mask {mask} has shape {m.shape}, the image {pet.shape[:3]}: resample it first")
    data = pet.data
    params = {"model": name, "tstar_s": tstar_s, "vB": vB, "frames_start_s": frames.start_s.tolist()}
    if name == "srtm":
        if reference_mask is None:
            raise ParameterError("model 'srtm' needs --reference-mask (a reference-region mask NIfTI)")
        rm = np.asarray(load(reference_mask).data) > 0
        if rm.shape != pet.shape[:3] or not rm.any():
            raise ParameterError(f"reference mask {reference_mask} must be a non-empty mask on the image grid")
        ref = np.asarray(data)[rm].mean(axis=0)
        maps = srtm_map(data, frames, ref, mask=m)
    else:
        if input_path is None:
            raise ParameterError(f"model {name!r} needs a plasma input: --input BLOOD.tsv")
        inp = load_blood(input_path, half_life_s=half_life_s)
        if name == "patlak":
            maps = patlak_map(data, frames, inp, tstar_s=tstar_s, mask=m)
        elif name == "logan":
            maps = logan_map(data, frames, inp, tstar_s=tstar_s, mask=m)
        else:
            maps = compartment_map(data, frames, inp, model=name, mask=m, vB=vB)
    out_dir = Path(out_dir)
    units = {"Ki": "mL/cm3/min", "V0": "mL/cm3", "VT": "mL/cm3", "K1": "mL/cm3/min", "k2": "1/min",
             "k3": "1/min", "k2a": "1/min", "vB": "mL/mL", "status": "code"}
    items = []
    for key, arr in maps.items():
        meta = pet.meta.copy(units=units.get(key.replace("_se", ""), None), frame_start_s=None,
                             frame_duration_s=None, reference_activity_bq=None, suv_bw_factor=None)
        meta.extra["kinetics_map"] = {"model": name, "map": key}
        items.append((Volume(arr, pet.affine, meta), out_dir / f"{name}_{key}.nii.gz"))
    inputs = [pet_path] + [p for p in (input_path, reference_mask, mask) if p is not None]
    return save_many(items, overwrite=overwrite, inputs=inputs, parameters=params)
