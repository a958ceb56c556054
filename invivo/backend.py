"""The NumPy/CuPy rule: the only module of invivo that imports CuPy.

Array functions begin with ``xp = get_array_module(data)`` and return results on
the device of their input.  Data moves between host and GPU only through
:func:`to_device`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["cupy", "has_gpu", "get_array_module", "to_device", "float_dtype", "check_same_device", "special", "cpu_cores"]


def _import_cupy():
    try:
        import cupy  # noqa: F401
    except ImportError:
        return None
    except Exception as exc:  # a broken CUDA install: degrade to NumPy, once
        warnings.warn(f"CuPy is installed but unusable ({exc}); invivo runs on NumPy", stacklevel=2)
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:
        return None
    return cupy


cupy = _import_cupy()


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity set where the OS has one): threads for block-wise
    NumPy work, which releases the GIL in its loops."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def has_gpu() -> bool:
    """True when CuPy is installed and a CUDA device is usable."""
    return cupy is not None


def get_array_module(*arrays: Any):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return np


def to_device(x: Any, device: str = "cpu"):
    """Move an array to ``"cpu"`` (NumPy) or ``"gpu"`` (CuPy)."""
    if device == "cpu":
        if cupy is not None and isinstance(x, cupy.ndarray):
            return cupy.asnumpy(x)
        return np.asarray(x)
    if device == "gpu":
        if cupy is None:
            from .errors import ParameterError

            raise ParameterError(
                "device='gpu' needs CuPy and a CUDA device: install invivo[gpu] on a machine with an NVIDIA GPU"
            )
        return cupy.asarray(x)
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")


def device_of(x: Any) -> str:
    """``"gpu"`` for a CuPy array, else ``"cpu"``."""
    return "gpu" if get_array_module(x) is not np else "cpu"


def float_dtype(dtype) -> np.dtype:
    """One dtype rule for both backends: float32 stays float32, everything else float64."""
    dtype = np.dtype(dtype)
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)


def check_same_device(**arrays: Any) -> None:
    """Raise ValueError naming the arguments when arrays live on different devices."""
    devices = {name: device_of(a) for name, a in arrays.items() if a is not None}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{k} on {v}" for k, v in devices.items())
        raise ValueError(f"arrays are on different devices ({desc}); move them with invivo.backend.to_device")


def special(xp):
    """``scipy.special`` for NumPy, ``cupyx.scipy.special`` for CuPy (same function names)."""
    if xp is np:
        import scipy.special

        return scipy.special
    import cupyx.scipy.special  # only reached with CuPy arrays, so CuPy is installed

    return cupyx.scipy.special
