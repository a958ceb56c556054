"""Kinetic modeling: input functions, compartment and graphical models, antibody PK, CAR-T cell models.

Every model is a class whose ``.fit(...)`` returns a :class:`KineticFit` (named
parameters, standard errors, AIC).  :func:`get_model` builds one by name::

    from invivo.kinetics import Frames, InputFunction, get_model
    fit = get_model("2tcm-irr").fit(tac_bq_ml, frames, InputFunction(t_s, cp_bq_ml))
    fit.params["Ki"], fit.se["Ki"], fit.aic

Times are seconds at the API (PET-BIDS), rate constants per minute (K1 mL/cm^3/min),
CAR-T cellular kinetics per day.
"""

from __future__ import annotations

import importlib

from ..errors import ParameterError
from .base import Frames, KineticFit
from .inputs import InputFunction, load_blood

__all__ = ["Frames", "KineticFit", "InputFunction", "load_blood", "MODELS", "get_model", "model_class"]

#: model name -> (module under invivo.kinetics, class name, input kind)
#: input kinds: "plasma" (fit(tac, frames, input_function)), "reference" (fit(tac, frames, reference_tac)),
#: "serum" (antibody PK from serum samples), "cells" (cell-count time courses), "organs" (%ID per organ of a
#: labeled-cell study, every organ a column, fitted jointly)
MODELS = {
    "1tcm": ("compartment", "OneTCM", "plasma"),
    "2tcm": ("compartment", "TwoTCM", "plasma"),
    "2tcm-irr": ("compartment", "TwoTCMIrr", "plasma"),
    "patlak": ("graphical", "Patlak", "plasma"),
    "logan": ("graphical", "Logan", "plasma"),
    "srtm": ("reference", "SRTM", "reference"),
    "logan-ref": ("reference", "LoganRef", "reference"),
    "patlak-ref": ("reference", "PatlakRef", "reference"),
    "mab-pk": ("antibody", "MabPK", "serum"),
    "cart-ck": ("cart", "CartCK", "cells"),
    "cell-trafficking": ("cart", "CellTrafficking", "organs"),
}


def model_class(name: str):
    """The class of a model by name (ParameterError listing the valid names otherwise)."""
    key = str(name).strip().lower()
    if key not in MODELS:
        raise ParameterError(f"unknown kinetic model {name!r}; valid models: {', '.join(MODELS)}")
    module, cls, _ = MODELS[key]
    try:
        mod = importlib.import_module(f".{module}", __name__)
        return getattr(mod, cls)
    except (ImportError, AttributeError):  # pragma: no cover - a model not built yet
        raise ParameterError(f"kinetic model {name!r} is not available in this version of invivo") from None


def get_model(name: str, **options):
    """An instance of the named model with its options (see each class)."""
    return model_class(name)(**options)
