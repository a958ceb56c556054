"""Relaxometry: R2* mapping from multi-echo gradient-echo MRI, SPIO iron and labeled-cell estimates.

    from invivo.relax import R2StarModel
    fit = R2StarModel(echo_times_s).fit(volume, mask=mask)     # all voxels at once, NumPy or CuPy
    fit.r2star, fit.s0, fit.status, fit.predict(te)
"""

from .r2star import (
    METHODS,
    STATUS,
    R2StarFit,
    R2StarModel,
    body_mask,
    estimate_sigma,
    r2star_signal,
    rician_mean,
)

__all__ = ["R2StarModel", "R2StarFit", "METHODS", "STATUS", "r2star_signal", "rician_mean", "estimate_sigma",
           "body_mask"]
