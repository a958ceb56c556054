"""invivo: quantitative in vivo imaging for preclinical immunotherapy research.

The short public surface::

    import invivo
    table = invivo.scan("scanner_export/")          # one row per series
    pet = invivo.load("scanner_export/", series=0)  # a Volume (RAS+ mm, units in metadata)
    suv = invivo.uptake.suv(pet)
    invivo.save(suv, "out/sub-01_suv.nii.gz")
"""

from importlib.metadata import PackageNotFoundError, version as _version

from .errors import InvivoError, InvivoWarning
from .volume import Meta, Subject, Tracer, Volume

try:
    __version__ = _version("invivo")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"


def __getattr__(name):
    # heavy submodules load on first use
    import importlib

    if name in ("scan", "load", "save"):
        io = importlib.import_module(".io", __name__)
        return getattr(io, name)
    if name in ("io", "uptake", "roi", "synth", "isotopes", "backend"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'invivo' has no attribute {name!r}")


__all__ = ["scan", "load", "save", "Volume", "Meta", "Tracer", "Subject", "InvivoError", "InvivoWarning", "__version__"]
