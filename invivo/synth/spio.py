"""An SPIO vial phantom and its multi-echo gradient-echo renderer with Rician noise.

The phantom is a cylinder of agarose (axis along ``k``, the slice normal) in air,
holding small cylindrical vials that also run through the whole field of view
along ``k``: vials of known iron concentration and vials of SPIO-labelled cells.
Every vial has one true R2*::

    R2*(vial) = R2*_agarose + r2* x [Fe]

with ``r2*`` (s^-1 mM^-1) an explicit parameter of the phantom.  For cell vials the
iron concentration follows from the cell density and the iron load per cell::

    cells/mL x pg Fe/cell          = pg Fe/mL
    x 1e-12 g/pg                   = g Fe/mL
    / 55.845 g/mol                 = mol Fe/mL
    x 1e3 mL/L                     = mol/L (M)
    x 1e3 mmol/mol                 = mmol/L (mM)

so ``[Fe] (mM) = cells/mL x pg/cell x 1e-6 / 55.845``: 1e6 cells/mL at 10 pg/cell is
0.17907 mM.  Conversely 1 mM of iron is 55.845 ug/mL.

The renderer writes ``S0 exp(-R2* TE)`` per echo (echoes on the last axis) and, when
asked, Rician noise: Gaussian noise of standard deviation ``sigma`` in the real and
imaginary channels, then the magnitude (Rayleigh in air, where S0 = 0).
:func:`rician_mean` is the analytic expected magnitude the noisy data scatter about.

Labels (``SpioPhantom.names``): 0 air, 1 ``agarose``, 2.. the vials in the order
given (default: ``fe_0mM`` ... ``fe_6.4mM``, then ``cells_1e5``, ``cells_1e6``,
``cells_1e7``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Mapping, Sequence

import numpy as np

from ..backend import check_same_device, device_of, get_array_module, to_device
from ..relax.r2star import rician_mean
from ..errors import ParameterError
from ..volume import Meta, Subject, Volume

__all__ = [
    "Vial",
    "SpioPhantom",
    "spio_vial_phantom",
    "render_spio_mr",
    "render_spio_pair",
    "rician_signal",
    "rician_mean",
    "fe_mM_from_cells",
    "FE_MOLAR_MASS_G_PER_MOL",
    "EXAMPLE_RELAXIVITY_PER_MM_PER_S",
    "DEFAULT_ECHO_TIMES_S",
    "DEFAULT_VIALS",
]

#: Molar mass of iron, g/mol.
FE_MOLAR_MASS_G_PER_MOL = 55.845

#: An *example* r2* (s^-1 mM^-1): ferumoxytol in saline/plasma at 37 C and 1.5 T is
#: ~60 (SCIENCE.md).  It is not a value for any particular agent at 7 T, and
#: cell-internalised particles relax differently; pass the calibrated value.
EXAMPLE_RELAXIVITY_PER_MM_PER_S = 60.0

#: 8 echoes from 2 to 23 ms every 3 ms (``np.linspace(0.002, 0.023, 8)``, written as
#: the decimals it stands for so that the values survive DICOM's EchoTime in ms).
DEFAULT_ECHO_TIMES_S = (0.002, 0.005, 0.008, 0.011, 0.014, 0.017, 0.020, 0.023)

#: Series date/time of the rendered images when none is given.
DEFAULT_SERIES_DATETIME = datetime(2024, 1, 15, 10, 0, 0)

#: Names that cannot be vial names (they are labels or mask groups).
_RESERVED = ("air", "agarose", "vials", "phantom")


def fe_mM_from_cells(cells_per_ml, pg_fe_per_cell):
    """Iron concentration (mM) of a suspension of labelled cells.

    Parameters
    ----------
    cells_per_ml : float or ndarray, cells per mL
    pg_fe_per_cell : float or ndarray, pg of iron per cell

    Returns
    -------
    float or ndarray, mM (mmol/L)

    Notes
    -----
    cells/mL x pg/cell = pg Fe/mL; x 1e-12 g/pg = g/mL; / 55.845 g/mol = mol/mL;
    x 1e3 mL/L = mol/L; x 1e3 mmol/mol = mM.

    Examples
    --------
    >>> round(fe_mM_from_cells(1e6, 10.0), 6)
    0.179067
    """
    g_per_ml = cells_per_ml * pg_fe_per_cell * 1e-12
    mol_per_ml = g_per_ml / FE_MOLAR_MASS_G_PER_MOL
    return mol_per_ml * 1e3 * 1e3


@dataclass(frozen=True)
class Vial:
    """One vial: either free iron (``fe_mM``) or labelled cells (``cells_per_ml`` and ``pg_fe_per_cell``).

    Attributes
    ----------
    name : str
        Label name (unique; not ``air``, ``agarose``, ``vials`` or ``phantom``).
    fe_mM : float, optional
        Iron concentration of a free-particle vial, mM.
    cells_per_ml : float, optional
        Labelled-cell density of a cell vial, cells per mL.
    pg_fe_per_cell : float, optional
        Iron load per cell of a cell vial, pg.
    centre_mm : tuple of 2 float, optional
        In-plane centre (x, y) in RAS mm; default: placed on a ring by
        :func:`spio_vial_phantom`.
    """

    name: str
    fe_mM: float | None = None
    cells_per_ml: float | None = None
    pg_fe_per_cell: float | None = None
    centre_mm: tuple[float, float] | None = None

    @property
    def kind(self) -> str:
        """``"cells"`` or ``"iron"``."""
        return "cells" if self.cells_per_ml is not None else "iron"

    @property
    def total_fe_mM(self) -> float:
        """Iron concentration (mM), from the cells for a cell vial."""
        if self.kind == "cells":
            return float(fe_mM_from_cells(float(self.cells_per_ml), float(self.pg_fe_per_cell)))
        return float(self.fe_mM)

    def _check(self) -> None:
        n = self.name
        if not isinstance(n, str) or not n or n in _RESERVED:
            raise ParameterError(f"spio_vial_phantom: vial name {n!r} is empty or reserved ({', '.join(_RESERVED)})")
        cells = self.cells_per_ml is not None or self.pg_fe_per_cell is not None
        if cells == (self.fe_mM is not None):
            raise ParameterError(
                f"spio_vial_phantom: vial {n!r} needs either fe_mM (free iron) or cells_per_ml and "
                "pg_fe_per_cell (labelled cells), not both and not neither"
            )
        if cells:
            c, p = self.cells_per_ml, self.pg_fe_per_cell
            if c is None or p is None or not (c >= 0 and math.isfinite(c)) or not (p > 0 and math.isfinite(p)):
                raise ParameterError(
                    f"spio_vial_phantom: vial {n!r} needs cells_per_ml >= 0 and pg_fe_per_cell > 0, "
                    f"got {c!r} cells/mL and {p!r} pg/cell"
                )
        elif not (self.fe_mM >= 0 and math.isfinite(self.fe_mM)):
            raise ParameterError(f"spio_vial_phantom: vial {n!r} fe_mM must be >= 0 mM, got {self.fe_mM!r}")


def _default_vials() -> tuple[Vial, ...]:
    fe = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)
    cells = (1e5, 1e6, 1e7)
    return tuple(Vial(f"fe_{c:g}mM", fe_mM=c) for c in fe) + tuple(
        Vial(f"cells_{n:.0e}".replace("e+0", "e"), cells_per_ml=n, pg_fe_per_cell=10.0) for n in cells
    )


#: Default vials: free iron 0-6.4 mM (R2* 20-404 s^-1 with the example relaxivity)
#: and 1e5, 1e6, 1e7 cells/mL at 10 pg Fe/cell.
DEFAULT_VIALS = _default_vials()


@dataclass
class SpioPhantom:
    """A labelled SPIO vial phantom with its truth.

    Attributes
    ----------
    labels : Volume
        int16 label map: 0 air, 1 agarose, 2.. vials.
    names : dict of int to str
        Label value -> name.
    vials : tuple of Vial
        The vials, with their in-plane centres (RAS mm).
    truth : dict of str to dict
        Per name (``agarose`` and every vial): ``label``, ``kind`` (``"background"``,
        ``"iron"`` or ``"cells"``), ``fe_mM`` (mM), ``r2star_per_s`` (s^-1),
        ``delta_r2star_per_s`` (s^-1, over agarose), ``cells_per_ml``,
        ``pg_fe_per_cell`` (0 for free iron and agarose), ``cells_per_voxel``,
        ``iron_ug_per_voxel`` (ug), ``volume_ml`` (voxelised) and
        ``analytic_volume_ml`` (the cylinder cut by the field of view).
    field_t : float
        Field strength (T) the R2* values stand for.
    r2star_agarose_per_s, relaxivity_per_mM_per_s, cell_relaxivity_per_mM_per_s : float
        The relaxation parameters the truth was computed from (s^-1, s^-1 mM^-1).
    phantom_radius_mm, vial_radius_mm : float
        Radii of the agarose cylinder and of the vials.
    """

    labels: Volume
    names: dict[int, str]
    vials: tuple[Vial, ...]
    truth: dict[str, dict]
    field_t: float
    r2star_agarose_per_s: float
    relaxivity_per_mM_per_s: float
    cell_relaxivity_per_mM_per_s: float
    phantom_radius_mm: float
    vial_radius_mm: float

    def label(self, name: str) -> int:
        """The label value of ``agarose`` or a vial name."""
        for k, v in self.names.items():
            if v == name:
                return k
        raise ParameterError(f"SPIO phantom has no region {name!r}; known: {', '.join(self.names.values())}")

    def mask(self, name: str) -> Volume:
        """Boolean Volume of a vial, ``agarose``, ``air``, ``vials`` (all vials) or ``phantom`` (not air)."""
        lab = self.labels.data
        if name == "air":
            m = lab == 0
        elif name == "phantom":
            m = lab > 0
        elif name == "vials":
            m = lab > 1
        else:
            m = lab == self.label(name)
        return Volume(m, self.labels.affine, Meta(modality="SEG", series_description=name))

    def masks(self) -> dict[str, Volume]:
        """``{name: boolean Volume}`` for agarose and every vial, plus ``air``, ``vials`` and ``phantom``."""
        out = {name: self.mask(name) for name in self.names.values()}
        for g in ("air", "vials", "phantom"):
            out[g] = self.mask(g)
        return out

    def table(self):
        """The truth as a :class:`pandas.DataFrame`, one row per region (index: name)."""
        import pandas as pd

        return pd.DataFrame.from_dict(self.truth, orient="index")

    def r2star_table(self, *, pre: bool = False) -> dict[int, float]:
        """``{label: R2* (s^-1)}``; with ``pre=True`` every vial at the agarose R2* (no iron)."""
        return {lab: (self.r2star_agarose_per_s if pre else self.truth[n]["r2star_per_s"])
                for lab, n in self.names.items()}


def _check_positive(value, name: str, *, zero_ok: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (math.isfinite(v) and (v >= 0 if zero_ok else v > 0)):
        raise ParameterError(f"spio_vial_phantom: {name} must be a {'non-negative' if zero_ok else 'positive'} "
                             f"number, got {value!r}")
    return v


def _disk(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def spio_vial_phantom(
    *,
    voxel_size_mm: float = 0.25,
    shape: tuple[int, int, int] | None = None,
    field_t: float = 7.0,
    vials: Sequence[Vial] | None = None,
    r2star_agarose_per_s: float = 20.0,
    relaxivity_per_mM_per_s: float = EXAMPLE_RELAXIVITY_PER_MM_PER_S,
    cell_relaxivity_per_mM_per_s: float | None = None,
    phantom_radius_mm: float = 7.5,
    vial_radius_mm: float = 1.0,
    length_mm: float = 2.0,
    device: str = "cpu",
) -> SpioPhantom:
    """Build an agarose cylinder with SPIO vials (free iron and labelled cells) in air.

    Parameters
    ----------
    voxel_size_mm : float
        Isotropic voxel size, mm.
    shape : tuple of 3 int, optional
        Grid shape.  Default: ``2 ceil((phantom_radius_mm + 0.5) / voxel_size_mm)``
        in plane (64 x 64 at 0.25 mm: a rim of air around the cylinder) and
        ``ceil(length_mm / voxel_size_mm)`` slices (8).  The grid is centred on the
        cylinder axis, at the world origin; ``k`` runs along the axis (+S).
    field_t : float
        Field strength (T) the R2* values stand for (metadata; the relaxation
        parameters below must be the ones for this field).
    vials : sequence of Vial, optional
        Default :data:`DEFAULT_VIALS`.  Vials without ``centre_mm`` are spread
        evenly on a ring of radius ``phantom_radius_mm - vial_radius_mm - 1``.
    r2star_agarose_per_s : float
        R2* of the agarose (s^-1); ~20 s^-1 at 7 T is an example value.
    relaxivity_per_mM_per_s : float
        r2* of the free particles, s^-1 mM^-1.  The default,
        :data:`EXAMPLE_RELAXIVITY_PER_MM_PER_S` (60: ferumoxytol at 1.5 T), is an
        example only: pass the value of your agent, field and temperature.
    cell_relaxivity_per_mM_per_s : float, optional
        r2* of cell-internalised particles (s^-1 mM^-1); default the free value.
    phantom_radius_mm, vial_radius_mm : float
        Radii of the agarose cylinder and of the vials, mm.
    length_mm : float
        Length covered by the default grid along the axis, mm (the cylinders run
        through the whole field of view).
    device : {"cpu", "gpu"}
        Where the label array lives.

    Returns
    -------
    SpioPhantom

    Raises
    ------
    ParameterError
        Non-positive sizes or relaxivity, bad or duplicate vials, vials that overlap
        or leave the cylinder, a grid that does not hold the cylinder.

    Notes
    -----
    A voxel belongs to a cylinder when its centre lies inside it, so every voxel
    holds exactly one region (no partial volume) and the rendered signal of a vial
    is exactly its formula.  ``R2* = R2*_agarose + r2* [Fe]``; cell vials use
    ``cell_relaxivity_per_mM_per_s`` and ``[Fe] = cells/mL x pg/cell x 1e-6 / 55.845``
    (:func:`fe_mM_from_cells`).

    Examples
    --------
    >>> ph = spio_vial_phantom()
    >>> ph.labels.shape, ph.truth["fe_0.1mM"]["r2star_per_s"]
    ((64, 64, 8), 26.0)
    """
    vox = _check_positive(voxel_size_mm, "voxel_size_mm")
    field_t = _check_positive(field_t, "field_t (tesla)")
    r2a = _check_positive(r2star_agarose_per_s, "r2star_agarose_per_s (s^-1)", zero_ok=True)
    rel = _check_positive(relaxivity_per_mM_per_s, "relaxivity_per_mM_per_s (s^-1 mM^-1)")
    rel_c = rel if cell_relaxivity_per_mM_per_s is None else _check_positive(
        cell_relaxivity_per_mM_per_s, "cell_relaxivity_per_mM_per_s (s^-1 mM^-1)")
    rp = _check_positive(phantom_radius_mm, "phantom_radius_mm")
    rv = _check_positive(vial_radius_mm, "vial_radius_mm")
    length = _check_positive(length_mm, "length_mm")
    vials = tuple(DEFAULT_VIALS if vials is None else vials)
    if any(not isinstance(v, Vial) for v in vials):
        raise ParameterError("spio_vial_phantom: vials must be invivo.synth.Vial objects")
    for v in vials:
        v._check()
    names = [v.name for v in vials]
    if len(set(names)) != len(names):
        raise ParameterError(f"spio_vial_phantom: vial names must be unique, got {names}")

    # place the vials without a centre on a ring
    ring = rp - rv - 1.0
    free = [i for i, v in enumerate(vials) if v.centre_mm is None]
    placed = list(vials)
    for n, i in enumerate(free):
        a = 2.0 * math.pi * n / len(free)
        placed[i] = replace(vials[i], centre_mm=(ring * math.cos(a), ring * math.sin(a)))
    vials = tuple(placed)
    for v in vials:
        cx, cy = (float(c) for c in v.centre_mm)
        if math.hypot(cx, cy) + rv > rp + 1e-9:
            raise ParameterError(
                f"spio_vial_phantom: vial {v.name!r} at {v.centre_mm} mm (radius {rv} mm) leaves the agarose "
                f"cylinder of radius {rp} mm; use fewer or smaller vials or a larger phantom_radius_mm"
            )
    for a in range(len(vials)):
        for b in range(a + 1, len(vials)):
            d = math.dist(vials[a].centre_mm, vials[b].centre_mm)
            if d < 2.0 * rv + vox:
                raise ParameterError(
                    f"spio_vial_phantom: vials {vials[a].name!r} and {vials[b].name!r} are {d:.3g} mm apart, "
                    f"less than two radii ({2 * rv:g} mm) plus a voxel; use fewer or smaller vials"
                )

    if shape is None:
        n_xy = 2 * int(math.ceil((rp + 0.5) / vox - 1e-9))
        shape = (n_xy, n_xy, max(1, int(math.ceil(length / vox - 1e-9))))
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ParameterError(f"spio_vial_phantom: shape must be three positive integers, got {shape}")
    aff = np.diag([vox, vox, vox, 1.0])
    aff[:3, 3] = [-(n - 1) / 2.0 * vox for n in shape]
    x = aff[0, 3] + vox * np.arange(shape[0])
    y = aff[1, 3] + vox * np.arange(shape[1])
    if rp > min(-x[0], x[-1], -y[0], y[-1]) - 0.5 * vox:
        raise ParameterError(
            f"spio_vial_phantom: a {shape[0]} x {shape[1]} grid of {vox} mm voxels does not hold the "
            f"{rp} mm-radius cylinder with air around it; give a larger shape or leave shape=None"
        )
    xx, yy = x[:, None], y[None, :]
    plane = np.zeros(shape[:2], dtype=np.int16)
    plane[_disk(xx, yy, 0.0, 0.0, rp)] = 1
    lab_names = {1: "agarose"}
    for n, v in enumerate(vials):
        plane[_disk(xx, yy, v.centre_mm[0], v.centre_mm[1], rv)] = n + 2
        lab_names[n + 2] = v.name
    lab = np.ascontiguousarray(np.broadcast_to(plane[:, :, None], shape))

    voxel_ml = vox ** 3 / 1000.0
    fov_length_mm = shape[2] * vox
    counts = np.bincount(plane.ravel(), minlength=len(vials) + 2) * shape[2]
    vial_ml = math.pi * rv * rv * fov_length_mm / 1000.0
    truth = {
        "agarose": {
            "label": 1, "kind": "background", "fe_mM": 0.0, "r2star_per_s": r2a, "delta_r2star_per_s": 0.0,
            "cells_per_ml": 0.0, "pg_fe_per_cell": 0.0, "cells_per_voxel": 0.0, "iron_ug_per_voxel": 0.0,
            "volume_ml": float(counts[1]) * voxel_ml,
            "analytic_volume_ml": math.pi * rp * rp * fov_length_mm / 1000.0 - len(vials) * vial_ml,
        }
    }
    for n, v in enumerate(vials):
        fe = v.total_fe_mM
        r = rel_c if v.kind == "cells" else rel
        cells = float(v.cells_per_ml) if v.kind == "cells" else 0.0
        truth[v.name] = {
            "label": n + 2,
            "kind": v.kind,
            "fe_mM": fe,
            "r2star_per_s": r2a + r * fe,
            "delta_r2star_per_s": r * fe,
            "cells_per_ml": cells,
            "pg_fe_per_cell": float(v.pg_fe_per_cell) if v.kind == "cells" else 0.0,
            "cells_per_voxel": cells * voxel_ml,
            # 1 mM = 1e-6 mol/mL x 55.845 g/mol = 55.845e-6 g/mL = 55.845 ug/mL
            "iron_ug_per_voxel": fe * FE_MOLAR_MASS_G_PER_MOL * voxel_ml,
            "volume_ml": float(counts[n + 2]) * voxel_ml,
            "analytic_volume_ml": vial_ml,
        }

    meta = Meta(modality="SEG", series_description="SPIO vial phantom labels")
    meta.extra["label_names"] = dict(lab_names)
    labels = Volume(to_device(lab, device), aff, meta)
    return SpioPhantom(
        labels=labels, names=lab_names, vials=vials, truth=truth, field_t=field_t, r2star_agarose_per_s=r2a,
        relaxivity_per_mM_per_s=rel, cell_relaxivity_per_mM_per_s=rel_c, phantom_radius_mm=rp,
        vial_radius_mm=rv,
    )


# --------------------------------------------------------------------------- Rician noise
def rician_signal(noise_free, sigma, rng=0):
    """Magnitude of a signal with complex Gaussian noise: ``|nu + sigma (n1 + i n2)|``.

    Parameters
    ----------
    noise_free : ndarray
        The noise-free magnitude ``nu`` (e.g. ``S0 exp(-R2* TE)``), any shape, NumPy
        or CuPy.  float32 stays float32; other dtypes become float64.
    sigma : float or ndarray
        Standard deviation of the noise in each of the real and imaginary channels
        (same units as ``noise_free``), >= 0; an array must broadcast to
        ``noise_free`` and live on its device.
    rng : int or Generator
        A seed, or a ``default_rng`` Generator of the data's array module.  The
        noise for one seed differs between NumPy and CuPy.

    Returns
    -------
    ndarray
        Rician magnitude, same shape, dtype and device as ``noise_free`` (Rayleigh
        where ``noise_free`` is 0).

    Examples
    --------
    >>> m = rician_signal(np.zeros(100000), 2.0, 1)
    >>> bool(abs(m.mean() / (2.0 * np.sqrt(np.pi / 2)) - 1) < 0.01)
    True
    """
    _check_devices(noise_free=noise_free, sigma=sigma)
    xp = get_array_module(noise_free)
    nu = xp.asarray(noise_free)
    dtype = nu.dtype if nu.dtype in (np.float32, np.float64) else np.float64
    nu = nu.astype(dtype, copy=False)
    if np.ndim(sigma) == 0 and not (float(sigma) >= 0 and math.isfinite(float(sigma))):
        raise ParameterError(f"rician_signal: sigma must be >= 0, got {sigma!r}")
    if isinstance(rng, (int, np.integer)):
        rng = xp.random.default_rng(int(rng))
    re = nu + sigma * rng.standard_normal(nu.shape, dtype=dtype)
    im = sigma * rng.standard_normal(nu.shape, dtype=dtype)
    return xp.sqrt(re * re + im * im).astype(dtype, copy=False)


def _check_devices(**arrays) -> None:
    """ValueError naming the arguments when arrays (not Python or NumPy scalars) live on different devices."""
    check_same_device(**{k: v for k, v in arrays.items() if isinstance(v, np.ndarray) or device_of(v) == "gpu"})


# --------------------------------------------------------------------------- rendering
def _check_phantom(phantom, what: str) -> None:
    if not isinstance(phantom, SpioPhantom):
        raise ParameterError(f"{what}: phantom must be an invivo.synth.SpioPhantom, got {type(phantom).__name__}")


def _echo_times(echo_times_s, what: str) -> tuple[float, ...]:
    try:
        tes = tuple(float(t) for t in np.atleast_1d(np.asarray(echo_times_s, dtype=np.float64)))
    except (TypeError, ValueError):
        raise ParameterError(f"{what}: echo_times_s must be a sequence of seconds, got {echo_times_s!r}") from None
    if not tes or any(not (t >= 0 and math.isfinite(t)) for t in tes):
        raise ParameterError(f"{what}: echo_times_s must be non-negative seconds, got {echo_times_s!r}")
    if any(t > 1.0 for t in tes):
        raise ParameterError(f"{what}: echo_times_s look like milliseconds ({tes}); give seconds")
    return tes


def _s0_table(phantom: SpioPhantom, s0, what: str) -> dict[int, float]:
    if isinstance(s0, Mapping):
        unknown = [n for n in s0 if n not in phantom.names.values()]
        if unknown:
            raise ParameterError(f"{what}: s0 names {unknown} are not in the phantom "
                                 f"({', '.join(phantom.names.values())})")
        table = {lab: float(s0.get(n, 1000.0)) for lab, n in phantom.names.items()}
    else:
        table = {lab: float(s0) for lab in phantom.names}
    if any(not (v >= 0 and math.isfinite(v)) for v in table.values()):
        raise ParameterError(f"{what}: s0 must be >= 0, got {s0!r}")
    return table


def _noise_sigma(noise_sigma, snr, s0_table: Mapping[int, float], what: str) -> float | None:
    if noise_sigma is not None and snr is not None:
        raise ParameterError(f"{what}: give noise_sigma or snr, not both")
    if snr is not None:
        if not (float(snr) > 0 and math.isfinite(float(snr))):
            raise ParameterError(f"{what}: snr must be a positive number (S0 / sigma), got {snr!r}")
        return s0_table[1] / float(snr)  # S0 of the agarose
    if noise_sigma is not None:
        if not (float(noise_sigma) >= 0 and math.isfinite(float(noise_sigma))):
            raise ParameterError(f"{what}: noise_sigma must be >= 0, got {noise_sigma!r}")
        return float(noise_sigma) or None
    return None


def _lut(phantom: SpioPhantom, table: Mapping[int, float]):
    xp = get_array_module(phantom.labels.data)
    lut = np.zeros(max(phantom.names) + 1, dtype=np.float64)
    for lab, v in table.items():
        lut[lab] = v
    return xp.asarray(lut)[phantom.labels.data.astype(xp.intp)]  # small table: host -> device once


def _render(phantom, r2_table, s0_t, tes, sigma, seed, field_t, series_datetime, description, what):
    xp = get_array_module(phantom.labels.data)
    s0_map = _lut(phantom, s0_t)
    r2_map = _lut(phantom, r2_table)
    te = xp.asarray(np.asarray(tes, dtype=np.float64))
    clean = s0_map[..., None] * xp.exp(-r2_map[..., None] * te)
    data = clean if sigma is None else rician_signal(clean, sigma, xp.random.default_rng(seed))
    if len(tes) == 1:
        data, clean = data[..., 0], clean[..., 0]
    meta = Meta(
        modality="MR",
        echo_times_s=tes,
        magnetic_field_t=float(field_t),
        series_datetime=series_datetime,
        acquisition_datetime=series_datetime,
        image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
        series_description=description,
        subject=Subject(id="spio_phantom"),
        source={"synth": f"invivo.synth.{what}", "noise_sigma": sigma, "seed": seed},
        extra={"repetition_time_s": 0.05, "flip_angle_deg": 20.0},
    )
    return Volume(data, phantom.labels.affine, meta), s0_map, r2_map, clean


def _field(phantom: SpioPhantom, field_t, what: str) -> float:
    if field_t is None:
        return phantom.field_t
    if not math.isclose(float(field_t), phantom.field_t, rel_tol=1e-12):
        raise ParameterError(
            f"{what}: field_t={field_t!r} T but the phantom's R2* values are for {phantom.field_t} T; "
            "build the phantom with field_t and the relaxation parameters of that field"
        )
    return float(field_t)


def render_spio_mr(
    phantom: SpioPhantom,
    *,
    echo_times_s: Sequence[float] = DEFAULT_ECHO_TIMES_S,
    s0: float | Mapping[str, float] = 1000.0,
    noise_sigma: float | None = None,
    snr: float | None = None,
    seed: int = 0,
    field_t: float | None = None,
    series_datetime: datetime | None = None,
) -> tuple[Volume, dict]:
    """Render the phantom as a multi-echo gradient-echo magnitude image ``S0 exp(-R2* TE)``.

    Parameters
    ----------
    phantom : SpioPhantom
    echo_times_s : sequence of float, seconds
        Default :data:`DEFAULT_ECHO_TIMES_S` (8 echoes, 2-23 ms).
    s0 : float or dict of str to float
        Signal at TE = 0 (a.u.) of every region, or per name (``agarose`` and vial
        names; names not given get 1000).  Air is 0.
    noise_sigma : float, optional
        Standard deviation of the Gaussian noise in each of the real and imaginary
        channels (a.u.); the magnitude is then Rician (Rayleigh in air).
    snr : float, optional
        Alternative to ``noise_sigma``: ``S0_agarose / sigma``.
    seed : int
        Noise seed (the noise differs between CPU and GPU).
    field_t : float, optional
        Field strength (T) written as MagneticFieldStrength; must be the phantom's
        (default).
    series_datetime : datetime, optional
        Scan start; default 2024-01-15 10:00.

    Returns
    -------
    volume : Volume
        float64 ``(I, J, K, E)`` magnitude (``(I, J, K)`` for one echo) on the
        phantom's grid and device; ``meta.echo_times_s``, ``magnetic_field_t``,
        ``series_datetime``; modality MR.
    truth : dict
        ``r2star_per_s`` and ``s0`` per region name, ``table`` (the phantom's truth
        table), ``r2star_map`` and ``s0_map`` (arrays (I, J, K), 0 in air),
        ``noise_free`` (the data before noise), ``noise_sigma`` (None without noise)
        and ``echo_times_s``.

    Examples
    --------
    >>> ph = spio_vial_phantom()
    >>> mr, truth = render_spio_mr(ph, snr=50.0)
    >>> mr.shape, truth["noise_sigma"]
    ((64, 64, 8, 8), 20.0)
    """
    what = "render_spio_mr"
    _check_phantom(phantom, what)
    tes = _echo_times(echo_times_s, what)
    f = _field(phantom, field_t, what)
    s0_t = _s0_table(phantom, s0, what)
    sigma = _noise_sigma(noise_sigma, snr, s0_t, what)
    sdt = series_datetime or DEFAULT_SERIES_DATETIME
    r2_t = phantom.r2star_table()
    vol, s0_map, r2_map, clean = _render(phantom, r2_t, s0_t, tes, sigma, seed, f, sdt,
                                         "synthetic SPIO vial phantom multi-echo GRE", what)
    truth = {
        "r2star_per_s": {phantom.names[k]: float(v) for k, v in r2_t.items()},
        "s0": {phantom.names[k]: float(v) for k, v in s0_t.items()},
        "table": {k: dict(v) for k, v in phantom.truth.items()},
        "r2star_map": r2_map,
        "s0_map": s0_map,
        "noise_free": clean,
        "noise_sigma": sigma,
        "echo_times_s": tes,
    }
    return vol, truth


def render_spio_pair(
    phantom: SpioPhantom,
    *,
    echo_times_s: Sequence[float] = DEFAULT_ECHO_TIMES_S,
    s0: float | Mapping[str, float] = 1000.0,
    noise_sigma: float | None = None,
    snr: float | None = None,
    seed: int = 0,
    field_t: float | None = None,
    series_datetime: datetime | None = None,
    post_delay_s: float = 3600.0,
) -> tuple[Volume, Volume, dict]:
    """Pre- and post-iron images of the phantom on the same grid, for dR2* = R2*post - R2*pre.

    The pre image has every vial at the agarose R2* (no iron), the post image is
    :func:`render_spio_mr`'s.  The noise is independent: seeds ``seed`` (pre) and
    ``seed + 1`` (post).

    Parameters
    ----------
    phantom : SpioPhantom
    echo_times_s, s0, noise_sigma, snr, seed, field_t, series_datetime
        As for :func:`render_spio_mr` (``series_datetime`` is the pre scan's start).
    post_delay_s : float
        Post scan start after the pre scan start, seconds.

    Returns
    -------
    pre, post : Volume
        Magnitude images as :func:`render_spio_mr` makes them.
    truth : dict
        ``delta_r2star_per_s`` and ``fe_mM`` per region (agarose 0),
        ``r2star_pre_per_s`` and ``r2star_post_per_s`` per region,
        ``delta_r2star_map`` (s^-1) and ``fe_map`` (mM), ``pre`` and ``post`` (the
        truth dicts of each image) and ``table`` (the phantom's truth table).

    Examples
    --------
    >>> pre, post, truth = render_spio_pair(spio_vial_phantom(), snr=50.0)
    >>> round(truth["delta_r2star_per_s"]["fe_0.4mM"], 9), pre.shape == post.shape
    (24.0, True)
    """
    what = "render_spio_pair"
    _check_phantom(phantom, what)
    if not (float(post_delay_s) >= 0 and math.isfinite(float(post_delay_s))):
        raise ParameterError(f"{what}: post_delay_s must be >= 0 seconds, got {post_delay_s!r}")
    tes = _echo_times(echo_times_s, what)
    f = _field(phantom, field_t, what)
    s0_t = _s0_table(phantom, s0, what)
    sigma = _noise_sigma(noise_sigma, snr, s0_t, what)
    sdt = series_datetime or DEFAULT_SERIES_DATETIME
    pre_t = phantom.r2star_table(pre=True)
    post_t = phantom.r2star_table()
    pre, s0_map, pre_map, pre_clean = _render(phantom, pre_t, s0_t, tes, sigma, seed, f, sdt,
                                              "synthetic SPIO vial phantom GRE pre", what)
    post, _, post_map, post_clean = _render(phantom, post_t, s0_t, tes, sigma, seed + 1, f,
                                            sdt + timedelta(seconds=float(post_delay_s)),
                                            "synthetic SPIO vial phantom GRE post", what)
    delta = {n: float(t["delta_r2star_per_s"]) for n, t in phantom.truth.items()}
    fe = {n: float(t["fe_mM"]) for n, t in phantom.truth.items()}
    names = phantom.names
    truth = {
        "delta_r2star_per_s": delta,
        "fe_mM": fe,
        "r2star_pre_per_s": {names[k]: float(v) for k, v in pre_t.items()},
        "r2star_post_per_s": {names[k]: float(v) for k, v in post_t.items()},
        "delta_r2star_map": _lut(phantom, {k: delta[n] for k, n in names.items()}),
        "fe_map": _lut(phantom, {k: fe[n] for k, n in names.items()}),
        "table": {k: dict(v) for k, v in phantom.truth.items()},
        "noise_sigma": sigma,
        "echo_times_s": tes,
        "pre": {"r2star_map": pre_map, "s0_map": s0_map, "noise_free": pre_clean, "seed": seed},
        "post": {"r2star_map": post_map, "s0_map": s0_map, "noise_free": post_clean, "seed": seed + 1},
    }
    return pre, post, truth
