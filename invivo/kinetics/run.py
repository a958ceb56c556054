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
