"""The image object: voxel data, a RAS+ affine and typed metadata with units in names."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from .backend import device_of, get_array_module, to_device
from .errors import GeometryError, ParameterError

__all__ = ["Tracer", "Subject", "Meta", "Volume", "LPS_TO_RAS", "check_affine"]

#: Flip of the first two world axes: DICOM patient LPS <-> NIfTI RAS+ (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Tracer:
    """Radiopharmaceutical and injection record.

    Activities are net of nothing: ``injected_activity_bq`` is what was measured in
    the syringe at ``injection_datetime`` (or the value the scanner stored), and
    ``residual_activity_bq`` (measured at ``residual_datetime``) is subtracted by
    :func:`invivo.uptake.net_injected_activity_bq`.
    """

    radiopharmaceutical: str | None = None
    isotope: str | None = None
    half_life_s: float | None = None
    injected_activity_bq: float | None = None
    injection_datetime: datetime | None = None
    residual_activity_bq: float | None = None
    residual_datetime: datetime | None = None


@dataclass
class Subject:
    """The scanned subject (a patient or an animal)."""

    id: str | None = None
    weight_kg: float | None = None
    height_m: float | None = None
    sex: str | None = None
    species: str | None = None
    strain: str | None = None


@dataclass
class Meta:
    """Metadata of a :class:`Volume`; every physical quantity carries its unit in its name.

    ``reference_activity_bq`` and ``suv_bw_factor`` are arrays broadcastable to
    ``(k, frames)`` -- one value per slice and frame -- because PET decay references
    may differ per slice (DecayCorrection NONE) and per frame.
    """

    modality: str = "OT"
    units: str | None = None
    frame_start_s: tuple[float, ...] | None = None
    frame_duration_s: tuple[float, ...] | None = None
    echo_times_s: tuple[float, ...] | None = None
    tracer: Tracer | None = None
    subject: Subject = field(default_factory=Subject)
    decay_correction: str | None = None
    series_datetime: datetime | None = None
    acquisition_datetime: datetime | None = None
    reference_activity_bq: Any = None
    suv_bw_factor: Any = None
    suv_unavailable: str | None = None
    series_uid: str | None = None
    study_uid: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    image_type: tuple[str, ...] | None = None
    manufacturer: str | None = None
    magnetic_field_t: float | None = None
    source: dict = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def copy(self, **changes) -> "Meta":
        """A deep copy with some fields replaced."""
        new = copy.deepcopy(self)
        for k, v in changes.items():
            if not hasattr(new, k):
                raise AttributeError(f"Meta has no field {k!r}")
            setattr(new, k, v)
        return new

    @property
    def frame_end_s(self) -> tuple[float, ...] | None:
        if self.frame_start_s is None or self.frame_duration_s is None:
            return None
        return tuple(s + d for s, d in zip(self.frame_start_s, self.frame_duration_s))

    def to_dict(self) -> dict:
        """A JSON-friendly dictionary (datetimes as ISO strings, arrays as lists)."""

        def conv(v):
            if isinstance(v, datetime):
                return v.isoformat()
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, (np.floating, np.integer)):
                return v.item()
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [conv(x) for x in v]
            return v

        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if dataclasses.is_dataclass(v):
                v = {g.name: conv(getattr(v, g.name)) for g in dataclasses.fields(v)}
            out[f.name] = conv(v)
        return out


def check_affine(affine) -> np.ndarray:
    """Copy to float64 (4, 4) and validate: finite, last row 0 0 0 1, invertible."""
    a = np.array(to_device(affine, "cpu"), dtype=np.float64, copy=True)
    if a.shape != (4, 4):
        raise GeometryError(f"affine must be 4x4, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise GeometryError("affine contains NaN or inf values")
    if not np.allclose(a[3], [0, 0, 0, 1]):
        raise GeometryError(f"affine last row must be [0, 0, 0, 1], got {a[3].tolist()}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise GeometryError("affine is singular (a zero voxel size or collinear axes)")
    return a


class Volume:
    """Voxel data on a grid placed in RAS+ millimetres.

    Parameters
    ----------
    data : ndarray of shape (I, J, K) or (I, J, K, T)
        NumPy or CuPy array.  The optional last axis holds frames (dynamic PET,
        time series) or echoes (multi-echo MR).
    affine : array_like of shape (4, 4)
        Maps voxel indices ``(i, j, k, 1)`` to RAS+ mm.
    meta : Meta, optional
        Metadata; a fresh :class:`Meta` if omitted.

    Examples
    --------
    >>> import numpy as np
    >>> v = Volume(np.zeros((4, 5, 6), np.float32), np.diag([0.5, 0.5, 1.0, 1.0]))
    >>> v.shape, v.voxel_size_mm
    ((4, 5, 6), (0.5, 0.5, 1.0))
    """

    def __init__(self, data, affine, meta: Meta | None = None):
        xp = get_array_module(data)
        data = xp.asarray(data)
        if data.ndim == 2:
            data = data[:, :, None]
        if data.ndim not in (3, 4):
            raise ParameterError(f"Volume data must be 3D or 4D (i, j, k[, t]), got shape {tuple(data.shape)}")
        self.data = data
        self.affine = check_affine(affine)
        self.meta = meta if meta is not None else Meta()
        if not isinstance(self.meta, Meta):
            raise ParameterError(f"meta must be an invivo.Meta, got {type(self.meta).__name__}")

    # -- simple properties (never fail) --------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return self.shape[:3]  # type: ignore[return-value]

    @property
    def n_volumes(self) -> int:
        """Number of frames or echoes on the last axis (1 for a 3D volume)."""
        return self.shape[3] if self.data.ndim == 4 else 1

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        return tuple(float(x) for x in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    @property
    def device(self) -> str:
        return device_of(self.data)

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"RAS"`` or ``"LPS"`` (nibabel convention)."""
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))

    def __repr__(self) -> str:
        m = self.meta
        extra = ""
        if m.frame_start_s:
            extra = f", frames={len(m.frame_start_s)}"
        if m.echo_times_s:
            extra = f", echoes={len(m.echo_times_s)}"
        vs = "x".join(f"{v:g}" for v in self.voxel_size_mm)
        return (f"<Volume {m.modality} shape={self.shape} voxel={vs} mm {self.orientation} "
                f"units={m.units}{extra} dtype={self.data.dtype} on {self.device}>")

    # -- methods ---------------------------------------------------------------
    def with_data(self, data, **meta_changes) -> "Volume":
        """A new Volume on the same grid with new data and a copy of the metadata."""
        return Volume(data, self.affine, self.meta.copy(**meta_changes))

    def to_device(self, device: str) -> "Volume":
        """This Volume with its data on ``"cpu"`` or ``"gpu"``."""
        return Volume(to_device(self.data, device), self.affine, self.meta.copy())

    def numpy(self):
        """The data as a NumPy array (copied from the GPU when needed)."""
        return to_device(self.data, "cpu")

    def world_coordinates(self, ijk) -> np.ndarray:
        """RAS+ mm of voxel indices ``ijk`` (array of shape (..., 3))."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def same_grid(self, other: "Volume", *, atol_mm: float = 1e-3) -> bool:
        """True when both volumes have the same spatial shape and affine (to ``atol_mm``)."""
        return self.spatial_shape == other.spatial_shape and bool(np.allclose(self.affine, other.affine, atol=atol_mm))

    def frame(self, index: int) -> "Volume":
        """One frame or echo of a 4D volume as a 3D Volume."""
        if self.data.ndim != 4:
            raise ParameterError("frame(): this Volume is 3D")
        m = self.meta.copy()
        for name in ("frame_start_s", "frame_duration_s", "echo_times_s"):
            v = getattr(m, name)
            if v is not None:
                setattr(m, name, (v[index],))
        for name in ("reference_activity_bq", "suv_bw_factor"):
            v = getattr(m, name)
            if v is not None:
                v = np.asarray(v)
                if v.ndim == 2 and v.shape[1] > 1:
                    setattr(m, name, v[:, index:index + 1])
        return Volume(self.data[..., index], self.affine, m)
