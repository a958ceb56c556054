"""SPIO iron and labeled-cell quantification from R2* maps.

The chain, each step a small function that works on NumPy or CuPy arrays and on
:class:`~invivo.volume.Volume` objects (units in ``meta.units``, provenance in
``meta.extra["iron"]``)::

    delta = delta_r2star(pre, post)                          # s^-1, on co-registered maps
    fe = iron_concentration(delta, relaxivity=r)             # mM  = dR2* / r2*
    ug = iron_mass_ug(fe)                                    # ug per voxel = mM x mL x 55.845
    cells = cell_count(ug, pg_fe_per_cell=p)                 # cells per voxel
    table = roi_iron(fe, {"tumour": mask})                   # mean mM, total ug per ROI
    lim = detection_limit(sd_map, relaxivity=r, pg_fe_per_cell=p)   # smallest detectable dR2*, cells

Units: 1 mM = 1 mmol/L = 1 umol/mL, so an iron concentration ``c`` (mM) in a voxel
of ``V`` mL holds ``c * V`` umol of iron, that is ``c * V * 55.845`` ug
(:data:`FE_MOLAR_MASS_G_PER_MOL`); ``1 ug = 1e6 pg``.

The relaxivity is always an explicit input.  :data:`RELAXIVITY` holds published
values of free particles in solution; particles internalised by cells (compartmentalised
in endosomes) relax water differently from the same particles dispersed, so for
labeled cells the honest relaxivity -- or the direct dR2*-per-cell factor -- comes
from a phantom of the same labeled cells scanned with the same sequence and field.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..backend import check_same_device, float_dtype, get_array_module
from ..errors import GeometryError, InvivoWarning, ParameterError, UnitsError
from ..volume import Volume
from .r2star import check_echo_times

__all__ = [
    "FE_MOLAR_MASS_G_PER_MOL",
    "Relaxivity",
    "RELAXIVITY",
    "relaxivity",
    "delta_r2star",
    "delta_status",
    "iron_concentration",
    "iron_mass_ug",
    "roi_iron",
    "cell_count",
    "DetectionLimit",
    "detection_limit",
    "r2star_sd_from_noise",
]

#: Standard atomic weight of iron (IUPAC), g/mol = ug/umol.
FE_MOLAR_MASS_G_PER_MOL = 55.845

#: Units strings accepted on R2* / dR2* Volumes (``meta.units``; None is accepted too).
_RATE_UNITS = {"s-1", "1/s", "s^-1", "hz", "/s"}


# -- the relaxivity table ------------------------------------------------------------------

@dataclass(frozen=True)
class Relaxivity:
    """One published r2* value of an iron-oxide agent.

    Attributes
    ----------
    agent : str
        Generic name (lower case), e.g. ``"ferumoxytol"``.
    field_t : float
        Nominal field strength, tesla.
    medium : str
        What the particles were dispersed in: ``"saline"``, ``"plasma"``, ``"blood"``,
        ``"agarose"`` or ``"cells"`` (internalised).
    r2star_per_mm_per_s : float
        r2*, s^-1 mM^-1 (per mM of iron).
    sd_per_mm_per_s : float or None
        Its reported standard deviation, s^-1 mM^-1.
    temperature_c : float or None
        Measurement temperature, degrees Celsius.
    citation : str
        Authors, title, journal, year.
    note : str
        What the source says about the range of validity.
    """

    agent: str
    field_t: float
    medium: str
    r2star_per_mm_per_s: float
    sd_per_mm_per_s: float | None
    temperature_c: float | None
    citation: str
    note: str = ""

    def __float__(self) -> float:
        return float(self.r2star_per_mm_per_s)

    def describe(self) -> str:
        sd = f" +/- {self.sd_per_mm_per_s:g}" if self.sd_per_mm_per_s is not None else ""
        temp = f", {self.temperature_c:g} C" if self.temperature_c is not None else ""
        return (f"{self.agent} {self.field_t:g} T in {self.medium}{temp}: r2* = {self.r2star_per_mm_per_s:g}{sd} "
                f"s-1 mM-1 ({self.citation})")


_KNOBLOCH_2018 = ("Knobloch G, Colgan T, Wiens CN, et al. Relaxivity of ferumoxytol at 1.5 T and 3.0 T. "
                  "Invest Radiol. 2018;53(5):257-263")
_KNOBLOCH_NOTE = ("ferumoxytol diluted 0.26-4.2 mM, relaxometry at 37 C; R2* linear in concentration in saline "
                  "and plasma; in whole blood the dependence is nonlinear (no single r2*)")

#: Published r2* values, keyed by ``(agent, field_t, medium)``.  Only values checked
#: against their source are listed; extend it (or pass your own value) for other agents
#: -- ferumoxides (Feridex/Endorem), ferucarbotran (Resovist), MPIO -- and, for labeled
#: cells, calibrate with a phantom of the labeled cells.
RELAXIVITY: dict[tuple[str, float, str], Relaxivity] = {
    (e.agent, e.field_t, e.medium): e
    for e in (
        Relaxivity("ferumoxytol", 1.5, "saline", 60.4, 4.7, 37.0, _KNOBLOCH_2018, _KNOBLOCH_NOTE),
        Relaxivity("ferumoxytol", 1.5, "plasma", 64.4, 2.5, 37.0, _KNOBLOCH_2018, _KNOBLOCH_NOTE),
        Relaxivity("ferumoxytol", 3.0, "saline", 57.0, 4.7, 37.0, _KNOBLOCH_2018, _KNOBLOCH_NOTE),
        Relaxivity("ferumoxytol", 3.0, "plasma", 55.7, 4.4, 37.0, _KNOBLOCH_2018, _KNOBLOCH_NOTE),
    )
}

_AGENT_ALIASES = {
    "feraheme": "ferumoxytol", "rienso": "ferumoxytol",
    "feridex": "ferumoxides", "endorem": "ferumoxides", "ami-25": "ferumoxides",
    "resovist": "ferucarbotran", "sh u 555 a": "ferucarbotran", "cliavist": "ferucarbotran",
}

#: Largest difference between a requested and a tabulated field strength treated as the
#: same nominal field (Siemens "3 T" systems run at 2.89 T).
FIELD_TOLERANCE_T = 0.15

_CALIBRATE = ("particles internalised by cells relax water differently from free particles: for labeled cells "
              "measure r2* (or dR2* per cell) on a phantom of the same labeled cells at the same field and "
              "sequence, and pass it as relaxivity=")


def relaxivity(agent: str, field_t: float, *, medium: str = "saline") -> Relaxivity:
    """Look up a published r2* of a free iron-oxide agent.

    Parameters
    ----------
    agent : str
        Generic or brand name (``"ferumoxytol"``, ``"Feraheme"``, ...), any case.
    field_t : float
        Field strength, tesla; matched to a tabulated nominal field within
        :data:`FIELD_TOLERANCE_T` (0.15 T).
    medium : str
        ``"saline"`` (default) or another medium listed in :data:`RELAXIVITY`.

    Returns
    -------
    Relaxivity
        The table entry: ``float(entry)`` or ``entry.r2star_per_mm_per_s`` is r2* in
        s^-1 mM^-1; pass the entry itself as ``relaxivity=`` to
        :func:`iron_concentration` to keep its citation in the output's provenance.

    Raises
    ------
    ParameterError
        No entry for that agent, field and medium; the message lists what exists and
        recalls that cell-internalised particles need a phantom calibration.

    Examples
    --------
    >>> r = relaxivity("Feraheme", 2.89)
    >>> float(r), r.field_t, r.medium
    (57.0, 3.0, 'saline')
    """
    name = " ".join(str(agent).strip().lower().split())
    name = _AGENT_ALIASES.get(name, name)
    try:
        f = float(field_t)
    except (TypeError, ValueError):
        raise ParameterError(f"field_t must be a field strength in tesla, got {field_t!r}") from None
    med = str(medium).strip().lower()
    hits = [e for (a, ft, m), e in RELAXIVITY.items() if a == name and m == med and abs(ft - f) <= FIELD_TOLERANCE_T]
    if hits:
        return min(hits, key=lambda e: abs(e.field_t - f))
    listing = "; ".join(f"{a} {ft:g} T {m}" for (a, ft, m) in sorted(RELAXIVITY))
    raise ParameterError(
        f"no published r2* tabulated for agent={agent!r} at field_t={f:g} T in medium={medium!r}; "
        f"the table holds: {listing}. Pass relaxivity= explicitly (s-1 mM-1) with its source; {_CALIBRATE}"
    )


def _relaxivity_value(relaxivity) -> tuple[float, dict]:
    """(r2* in s-1 mM-1, provenance) from a number or a :class:`Relaxivity`; > 0 and finite."""
    if isinstance(relaxivity, Relaxivity):
        value, prov = float(relaxivity), {"relaxivity_source": relaxivity.describe()}
    else:
        try:
            value = float(relaxivity)
        except (TypeError, ValueError):
            raise ParameterError(
                f"relaxivity must be r2* in s-1 mM-1 (a positive number or an invivo.relax.iron.Relaxivity), "
                f"got {relaxivity!r}") from None
        prov = {"relaxivity_source": "given"}
    if not (math.isfinite(value) and value > 0):
        raise ParameterError(f"relaxivity must be a positive r2* in s-1 mM-1, got {value!r}; "
                             "see invivo.relax.iron.RELAXIVITY for published values")
    prov["relaxivity_per_mm_per_s"] = value
    return value, prov


def _positive(value, name: str, unit: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a positive number ({unit}), got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ParameterError(f"{name} must be a positive number ({unit}), got {value!r}")
    return v


# -- Volume / array plumbing ---------------------------------------------------------------

def _split(x, name: str):
    """(data, Volume or None) for a Volume, an array or a scalar."""
    if isinstance(x, Volume):
        return x.data, x
    xp = get_array_module(x)
    return xp.asarray(x), None


def _check_units(vol: Volume | None, accepted: set[str], name: str, what: str) -> None:
    if vol is None or vol.meta.units is None:
        return
    if str(vol.meta.units).strip().lower() not in accepted:
        raise UnitsError(f"{name} has units {vol.meta.units!r}; {what} expected "
                         f"(one of {sorted(accepted)} in meta.units)")


def _float_out(xp, data):
    """The package dtype rule: float32 stays float32, everything else becomes float64."""
    return data.astype(float_dtype(data.dtype), copy=False)


def _wrap(data, vol: Volume | None, units: str, prov: dict, notes: list[str] | None = None):
    if vol is None:
        return data
    meta = vol.meta.copy(units=units)
    history = list(meta.extra.get("iron_history", []))
    if "iron" in meta.extra:
        history.append(meta.extra["iron"])
    meta.extra["iron_history"] = history
    meta.extra["iron"] = prov
    for msg in notes or ():
        if msg not in meta.assumptions:
            meta.assumptions.append(msg)
    return Volume(data, vol.affine, meta)


def _grid_desc(v: Volume) -> str:
    return f"shape {v.spatial_shape}"


def _mask_data(mask, ref_data, ref_vol: Volume | None, name: str = "mask"):
    """A boolean mask array on the grid of ``ref`` (Volume masks are matched by world position)."""
    if isinstance(mask, Volume):
        if ref_vol is not None:
            from ..roi import match_mask

            mask = match_mask(mask, ref_vol)
        m = mask.data
    else:
        m = get_array_module(mask).asarray(mask)
    if tuple(m.shape) != tuple(ref_data.shape[:m.ndim]) or m.ndim > ref_data.ndim:
        raise GeometryError(f"{name} has shape {tuple(m.shape)} but the image has shape {tuple(ref_data.shape)}; "
                            "resample the mask onto the image grid first (invivo.align.resample)")
    return m != 0


# -- dR2* ----------------------------------------------------------------------------------

def delta_status(pre_status, post_status, *, mask=None):
    """The status of a dR2* map: 0 where both fits are ok, else the worse of the two codes.

    Parameters
    ----------
    pre_status, post_status : Volume or ndarray of int, shape (I, J, K)
        Per-voxel fit status of the pre- and post-contrast R2* fits (0 = ok; nonzero
        codes such as not converged, saturated or noise floor, larger = worse, as in
        :class:`invivo.relax.R2StarFit`).  Either may be None (treated as all ok).
    mask : Volume or ndarray of bool, optional
        Voxels outside keep their input codes (the mask does not hide a failure).

    Returns
    -------
    Volume or ndarray
        ``maximum(pre_status, post_status)`` with the input's integer dtype, on the
        input's device; a Volume (units "status") when either input is one.

    Raises
    ------
    GeometryError
        The two status maps are on different grids.
    """
    if pre_status is None and post_status is None:
        raise ParameterError("delta_status needs pre_status or post_status")
    a, va = _split(pre_status, "pre_status") if pre_status is not None else (None, None)
    b, vb = _split(post_status, "post_status") if post_status is not None else (None, None)
    check_same_device(pre_status=a, post_status=b)
    if a is not None and b is not None:
        _check_pair(a, b, va, vb, "pre_status", "post_status")
    for name, s in (("pre_status", a), ("post_status", b)):
        if s is not None and s.dtype.kind not in "biu":
            raise ParameterError(f"{name} must hold integer status codes, got dtype {s.dtype}")
    xp = get_array_module(a if a is not None else b)
    if a is None:
        out = b.copy()
    elif b is None:
        out = a.copy()
    else:
        out = xp.maximum(a, b)
    vol = vb if vb is not None else va
    return _wrap(out, vol, "status", {"quantity": "delta_r2star_status", "rule": "max(pre_status, post_status)"})


def _check_pair(a, b, va: Volume | None, vb: Volume | None, na: str, nb: str) -> None:
    if va is not None and vb is not None:
        if not va.same_grid(vb):
            raise GeometryError(
                f"{na} ({_grid_desc(va)}, voxel {va.voxel_size_mm} mm) and {nb} ({_grid_desc(vb)}, voxel "
                f"{vb.voxel_size_mm} mm) are on different grids; co-register and resample {nb} onto {na} "
                "first (invivo.align.register / resample)")
    elif tuple(a.shape) != tuple(b.shape):
        raise GeometryError(f"{na} has shape {tuple(a.shape)} but {nb} has shape {tuple(b.shape)}; "
                            "dR2* needs co-registered maps on the same grid")


def delta_r2star(pre, post, *, mask=None, pre_status=None, post_status=None):
    """dR2* = R2*(post) - R2*(pre) on co-registered maps, s^-1.

    Parameters
    ----------
    pre, post : Volume or ndarray of shape (I, J, K)
        R2* maps (s^-1) before and after the iron (contrast or labeled cells), on the
        same grid.  Volumes must have matching grids (:meth:`Volume.same_grid`);
        ``meta.units``, when set, must be a rate ("s-1").
    mask : Volume or ndarray of bool, optional
        dR2* is 0 outside.
    pre_status, post_status : ndarray or Volume of int, optional
        Fit status codes (0 = ok).  Where either is nonzero the voxel has no honest
        dR2* and is set to 0; get the combined code map from :func:`delta_status`.

    Returns
    -------
    Volume or ndarray
        dR2* in s^-1, float32 if both inputs are float32 else float64, on the input's
        device; a Volume (copy of ``post``'s metadata, ``meta.units = "s-1"``, provenance
        in ``meta.extra["iron"]``) when ``post`` or ``pre`` is a Volume.  Finite
        everywhere: non-finite input voxels become 0, with an :class:`InvivoWarning`.
        Negative values (noise, or iron cleared between scans) are kept.

    Raises
    ------
    GeometryError
        The maps (or a status map / mask) are on different grids; the message gives both.
    UnitsError
        A Volume whose units are not a rate (a T2* map in ms, say).
    ValueError
        Inputs on different devices.

    Examples
    --------
    >>> import numpy as np
    >>> delta_r2star(np.array([20.0, 30.0]), np.array([80.0, 25.0])).tolist()
    [60.0, -5.0]
    """
    a, va = _split(pre, "pre")
    b, vb = _split(post, "post")
    _check_units(va, _RATE_UNITS, "pre", "an R2* map in s-1")
    _check_units(vb, _RATE_UNITS, "post", "an R2* map in s-1")
    check_same_device(pre=a, post=b, mask=None if isinstance(mask, Volume) else mask,
                      pre_status=None if isinstance(pre_status, Volume) else pre_status,
                      post_status=None if isinstance(post_status, Volume) else post_status)
    _check_pair(a, b, va, vb, "pre", "post")
    xp = get_array_module(a, b)
    dtype = float_dtype(np.result_type(a.dtype, b.dtype))
    out = b.astype(dtype) - a.astype(dtype)
    notes: list[str] = []
    bad = ~xp.isfinite(out)
    n_bad = int(bad.sum())
    if n_bad:
        msg = (f"delta_r2star: {n_bad} voxel(s) with NaN or inf in the pre/post R2* maps set to dR2* = 0 "
               "(no honest value there)")
        warnings.warn(msg, InvivoWarning, stacklevel=2)
        notes.append(msg)
        out = xp.where(bad, dtype.type(0), out)
    n_status = 0
    ref_vol = vb if vb is not None else va
    if pre_status is not None or post_status is not None:
        st = delta_status(pre_status, post_status)
        sd, sv = _split(st, "status")
        if sv is not None and ref_vol is not None:
            _check_pair(sd, out, sv, ref_vol, "status", "post")
        elif tuple(sd.shape) != tuple(out.shape):
            raise GeometryError(f"status has shape {tuple(sd.shape)} but the R2* maps have shape {tuple(out.shape)}")
        flagged = sd != 0
        n_status = int(flagged.sum())
        out = xp.where(flagged, dtype.type(0), out)
    if mask is not None:
        m = _mask_data(mask, out, ref_vol)
        out = xp.where(m, out, dtype.type(0))
    prov = {
        "quantity": "delta_r2star", "unit": "s-1", "formula": "R2*post - R2*pre",
        "pre_series_uid": va.meta.series_uid if va is not None else None,
        "post_series_uid": vb.meta.series_uid if vb is not None else None,
        "masked": mask is not None, "status_zeroed_voxels": n_status, "nonfinite_zeroed_voxels": n_bad,
    }
    return _wrap(out, ref_vol, "s-1", prov, notes)


# -- iron and cells --------------------------------------------------------------------------

def iron_concentration(delta, *, relaxivity):
    """Iron concentration [Fe] = dR2* / r2*, mM.

    Parameters
    ----------
    delta : Volume, ndarray or float
        dR2* in s^-1 (from :func:`delta_r2star`).
    relaxivity : float or Relaxivity
        r2* of the iron in the tissue, s^-1 mM^-1; always explicit.  Published
        values of free particles are in :data:`RELAXIVITY` (:func:`relaxivity`); for
        cell-internalised particles calibrate with a labeled-cell phantom.

    Returns
    -------
    Volume, ndarray or float
        [Fe] in mM (mmol/L = umol/mL), same type, dtype rule and device as ``delta``;
        a Volume gets ``meta.units = "mM"`` and ``meta.extra["iron"]`` records r2* and
        its source.  Negative dR2* (noise) gives negative concentrations: they are kept,
        not clipped, so that ROI means stay unbiased.

    Raises
    ------
    ParameterError
        ``relaxivity`` is missing, zero, negative or not finite.
    UnitsError
        ``delta`` is a Volume whose units are not a rate.

    Examples
    --------
    >>> iron_concentration(57.0, relaxivity=57.0)
    1.0
    """
    r, prov = _relaxivity_value(relaxivity)
    if _is_scalar(delta):
        return float(delta) / r
    d, vol = _split(delta, "delta")
    _check_units(vol, _RATE_UNITS, "delta", "a dR2* map in s-1")
    xp = get_array_module(d)
    out = _float_out(xp, d) / r
    prov.update({"quantity": "iron_concentration", "unit": "mM", "formula": "dR2* / r2*"})
    return _wrap(out, vol, "mM", prov)


def _is_scalar(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def iron_mass_ug(fe_mM, *, voxel_volume_ml: float | None = None):
    """Iron mass per voxel, ug = [Fe] (mM) x voxel volume (mL) x 55.845 ug/umol.

    Parameters
    ----------
    fe_mM : Volume, ndarray or float
        Iron concentration, mM (= umol/mL).
    voxel_volume_ml : float, mL
        Voxel volume.  Taken from the Volume (``Volume.voxel_volume_ml``) when
        ``fe_mM`` is one (passing a different value is an error); required otherwise.

    Returns
    -------
    Volume, ndarray or float
        ug of iron per voxel (units "ug" on a Volume), same dtype rule and device.

    Raises
    ------
    ParameterError
        Voxel volume missing, not positive, or contradicting the Volume's grid.

    Examples
    --------
    >>> round(iron_mass_ug(0.5, voxel_volume_ml=1e-3), 12)
    0.0279225
    """
    v = _voxel_volume(fe_mM, voxel_volume_ml)
    factor = v * FE_MOLAR_MASS_G_PER_MOL
    if _is_scalar(fe_mM):
        return float(fe_mM) * factor
    d, vol = _split(fe_mM, "fe_mM")
    _check_units(vol, {"mm", "mmol/l"}, "fe_mM", "an iron concentration in mM")
    xp = get_array_module(d)
    out = _float_out(xp, d) * factor
    prov = {"quantity": "iron_mass", "unit": "ug", "voxel_volume_ml": v,
            "fe_molar_mass_g_per_mol": FE_MOLAR_MASS_G_PER_MOL, "formula": "[Fe] mM x voxel mL x 55.845"}
    return _wrap(out, vol, "ug", prov)


def _voxel_volume(x, voxel_volume_ml) -> float:
    if isinstance(x, Volume):
        own = x.voxel_volume_ml
        if voxel_volume_ml is not None and not math.isclose(float(voxel_volume_ml), own, rel_tol=1e-6):
            raise ParameterError(f"voxel_volume_ml={voxel_volume_ml!r} contradicts the Volume's grid "
                                 f"({own:g} mL per voxel); leave it out for a Volume")
        return own
    if voxel_volume_ml is None:
        raise ParameterError("voxel_volume_ml (mL per voxel) is required for an array input; "
                             "pass a Volume to take it from the grid")
    return _positive(voxel_volume_ml, "voxel_volume_ml", "mL per voxel")


def roi_iron(fe_volume, masks: Mapping[str, Any], *, voxel_volume_ml: float | None = None) -> dict[str, dict]:
    """Iron per region: mean concentration and total mass.

    Parameters
    ----------
    fe_volume : Volume or ndarray of shape (I, J, K)
        Iron concentration, mM.
    masks : dict of str to Volume or ndarray of bool
        Regions by name.  Volume masks stored in another orientation of the same grid
        are matched by world position (:func:`invivo.roi.match_mask`); masks on another
        grid raise GeometryError.
    voxel_volume_ml : float, mL
        Only for an array ``fe_volume``.

    Returns
    -------
    dict
        ``{name: {"mean_mM", "sd_mM", "total_ug", "n_voxels", "volume_ml"}}`` as Python
        numbers: ``total_ug = sum([Fe]) x voxel mL x 55.845`` (negative voxels included,
        see :func:`iron_concentration`).

    Raises
    ------
    ParameterError
        An empty mask, or a missing voxel volume.
    GeometryError
        A mask on another grid.

    Examples
    --------
    >>> import numpy as np
    >>> fe = np.array([[[1.0, 3.0]]])
    >>> roi_iron(fe, {"all": fe > 0}, voxel_volume_ml=1e-3)["all"]["mean_mM"]
    2.0
    """
    if not isinstance(masks, Mapping) or not masks:
        raise ParameterError("masks must be a non-empty dict of region name -> boolean mask")
    d, vol = _split(fe_volume, "fe_volume")
    _check_units(vol, {"mm", "mmol/l"}, "fe_volume", "an iron concentration in mM")
    v = _voxel_volume(fe_volume, voxel_volume_ml)
    xp = get_array_module(d)
    d = d.astype(np.float64)
    out: dict[str, dict] = {}
    for name, mask in masks.items():
        if not isinstance(mask, Volume):
            check_same_device(fe_volume=d, mask=mask)
        m = _mask_data(mask, d, vol, name=f"mask {name!r}")
        if m.ndim != d.ndim:
            raise GeometryError(f"mask {name!r} has shape {tuple(m.shape)}; the image has shape {tuple(d.shape)}")
        n = int(m.sum())
        if n == 0:
            raise ParameterError(f"mask {name!r} is empty (no voxel inside); check the mask or its grid")
        vals = d[m]
        total_mm = float(vals.sum())
        mean = total_mm / n
        sd = float(xp.sqrt(((vals - mean) ** 2).sum() / (n - 1))) if n > 1 else 0.0
        out[str(name)] = {
            "mean_mM": mean, "sd_mM": sd,
            "total_ug": total_mm * v * FE_MOLAR_MASS_G_PER_MOL,
            "n_voxels": n, "volume_ml": n * v,
        }
    return out


def cell_count(iron_ug, *, pg_fe_per_cell: float):
    """Number of labeled cells = iron mass / iron per cell.

    Parameters
    ----------
    iron_ug : Volume, ndarray or float
        Iron mass, ug (per voxel from :func:`iron_mass_ug`, or an ROI total).
    pg_fe_per_cell : float, pg
        Iron load per labeled cell, measured on the labeled cells (reported loads:
        2-11 pg for ferumoxides-protamine stem cells, ~30 pg macrophage-like cells, up
        to 60 pg for MPIO-labeled T cells).  Always explicit.

    Returns
    -------
    Volume, ndarray or float
        ``iron_ug * 1e6 / pg_fe_per_cell`` cells (units "cells" on a Volume).

    Raises
    ------
    ParameterError
        ``pg_fe_per_cell`` zero, negative or not finite.

    Examples
    --------
    >>> cell_count(0.0279225, pg_fe_per_cell=25.0)
    1116.9
    """
    p = _positive(pg_fe_per_cell, "pg_fe_per_cell", "pg of iron per cell")
    if _is_scalar(iron_ug):
        return float(iron_ug) * 1e6 / p
    d, vol = _split(iron_ug, "iron_ug")
    _check_units(vol, {"ug"}, "iron_ug", "an iron mass in ug")
    xp = get_array_module(d)
    out = _float_out(xp, d) * (1e6 / p)
    prov = {"quantity": "cell_count", "unit": "cells", "pg_fe_per_cell": p, "formula": "ug x 1e6 / pg per cell"}
    return _wrap(out, vol, "cells", prov)


# -- noise and detection limits ----------------------------------------------------------------


def r2star_sd_from_noise(s0, echo_times_s, r2star, sigma):
    """Cramér-Rao lower bound on the standard deviation of R2*, s^-1.

    For S(TE) = S0 exp(-R2* TE) sampled at ``E`` echo times with independent
    Gaussian noise of standard deviation ``sigma`` and both S0 and R2* unknown, the
    Fisher information is

    .. math::

        F = \\frac{1}{\\sigma^2}\\begin{pmatrix} A & -S_0 B \\\\ -S_0 B & S_0^2 C \\end{pmatrix},\\quad
        A = \\sum_i e_i^2,\\; B = \\sum_i t_i e_i^2,\\; C = \\sum_i t_i^2 e_i^2,\\; e_i = e^{-R_2^* t_i}

    so var(R2*) >= [F^-1]_RR = sigma^2 A / (S0^2 (A C - B^2)).  It is evaluated with
    the times shifted to the first echo (A C - B^2 is shift invariant) so that high
    R2* does not underflow.  No unbiased estimator does better; unweighted NLLS
    reaches it at high SNR (magnitude data at low SNR is Rician, and biased).

    Parameters
    ----------
    s0 : Volume, ndarray or float
        Signal at TE = 0 (same units as ``sigma``), e.g. ``R2StarFit.s0``.
    echo_times_s : sequence of float, seconds
        At least 2, strictly increasing.
    r2star : Volume, ndarray or float
        R2*, s^-1, broadcastable with ``s0``.
    sigma : Volume, ndarray or float
        Noise standard deviation per echo image (Gaussian; for magnitude data the
        underlying complex-channel sigma), same units as ``s0``.

    Returns
    -------
    Volume, ndarray or float
        The CRLB on sd(R2*), s^-1, with the dtype rule of ``s0`` and on its device.
        ``inf`` where it does not exist (S0 <= 0, or every echo but one decayed to
        zero): no R2* change is detectable there.

    Raises
    ------
    ParameterError
        Bad echo times, or a negative sigma.

    Examples
    --------
    >>> sd = r2star_sd_from_noise(100.0, [0.002, 0.004], 50.0, 1.0)
    >>> round(sd, 6)   # two echoes: sqrt(e1^-2 + e2^-2) / (S0 dt)
    8.235939
    """
    te = check_echo_times(echo_times_s)
    scalar = all(_is_scalar(x) for x in (s0, r2star, sigma))
    arrays = {n: (x.data if isinstance(x, Volume) else x) for n, x in (("s0", s0), ("r2star", r2star), ("sigma", sigma))
              if not _is_scalar(x)}
    check_same_device(**arrays)
    xp = get_array_module(*arrays.values())
    vol = next((x for x in (s0, r2star, sigma) if isinstance(x, Volume)), None)
    s0_d, r_d, sg_d = (xp.asarray(x.data if isinstance(x, Volume) else x) for x in (s0, r2star, sigma))
    out_dtype = float_dtype(np.result_type(*(a.dtype for a in arrays.values()))) if arrays else np.dtype(np.float64)
    if bool(xp.any(sg_d < 0)):
        raise ParameterError("sigma (noise standard deviation) must be >= 0")
    s0f = s0_d.astype(np.float64)
    r = r_d.astype(np.float64)
    dt = te - te[0]
    shape = np.broadcast_shapes(tuple(s0f.shape), tuple(r.shape), tuple(sg_d.shape))
    a = xp.zeros(shape, np.float64)
    b = xp.zeros(shape, np.float64)
    c = xp.zeros(shape, np.float64)
    for t in dt:  # a loop over echoes (a handful), not over voxels
        w = xp.exp(-2.0 * r * float(t))
        a = a + w
        b = b + float(t) * w
        c = c + float(t) ** 2 * w
    det = a * c - b * b
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        # relative tolerance: A C - B^2 of a numerically one-echo decay is rounding noise
        ok = (det > 1e-12 * a * c) & (s0f > 0) & xp.isfinite(s0f) & xp.isfinite(r)
        var_shifted = xp.where(ok, a / xp.where(ok, det, 1.0), 0.0)
        growth = xp.exp(xp.minimum(r * float(te[0]), 350.0))  # exp(R2* TE1): the shift's scale factor
        sd = xp.abs(sg_d.astype(np.float64)) / xp.where(ok, s0f, 1.0) * xp.sqrt(var_shifted) * growth
        sd = xp.where(ok, sd, xp.inf)
    if scalar:
        return float(sd)
    sd = sd.astype(out_dtype)
    prov = {"quantity": "r2star_sd_crlb", "unit": "s-1", "echo_times_s": te.tolist(),
            "model": "S0 exp(-R2* TE), Gaussian noise, S0 and R2* unknown"}
    return _wrap(sd, vol, "s-1", prov)


@dataclass
class DetectionLimit:
    """Smallest detectable change, per voxel, at the measured noise.

    Attributes
    ----------
    delta_r2star : Volume, ndarray or float
        Smallest detectable dR2*, s^-1 (= k x sd of the pre/post difference).
    fe_mM : Volume, ndarray or float
        The iron concentration that produces it, mM.
    fe_ug_per_voxel : Volume, ndarray or float
        That iron in one voxel, ug.
    cells_per_voxel : Volume, ndarray, float or None
        That iron in labeled cells (None when no ``pg_fe_per_cell`` was given).
    k : float
        Multiple of the difference's sd used as the threshold.
    """

    delta_r2star: Any
    fe_mM: Any
    fe_ug_per_voxel: Any
    cells_per_voxel: Any
    k: float


def detection_limit(sigma_r2star, *, relaxivity, pg_fe_per_cell: float | None = None,
                    voxel_volume_ml: float | None = None, k: float = 3.0,
                    sigma_r2star_post=None) -> DetectionLimit:
    """Smallest detectable dR2*, iron and labeled cells per voxel.

    A voxel counts as changed when dR2* exceeds ``k`` standard deviations of the
    difference of two independent R2* maps: dR2*_min = k sqrt(sd_pre^2 + sd_post^2)
    (= k sqrt(2) sd for equal noise), then [Fe]_min = dR2*_min / r2*, the iron mass in
    one voxel and, with ``pg_fe_per_cell``, the number of labeled cells.

    Parameters
    ----------
    sigma_r2star : Volume, ndarray or float
        Standard deviation of R2* in one map, s^-1: measured (repeat scans, a
        uniform region) or predicted by :func:`r2star_sd_from_noise`.
    relaxivity : float or Relaxivity
        r2*, s^-1 mM^-1, explicit (see :func:`iron_concentration`).
    pg_fe_per_cell : float, pg, optional
        Iron per labeled cell, for ``cells_per_voxel``.
    voxel_volume_ml : float, mL
        From the Volume when ``sigma_r2star`` is one; required otherwise.
    k : float
        Threshold in standard deviations (3: about 0.13 % one-sided false positives
        per voxel for Gaussian noise).
    sigma_r2star_post : Volume, ndarray or float, optional
        sd of the post map when it differs from ``sigma_r2star`` (taken as the pre map's).

    Returns
    -------
    DetectionLimit
        Maps (or numbers) of the same kind as ``sigma_r2star``; ``inf`` where the sd is.

    Raises
    ------
    ParameterError
        Non-positive ``relaxivity``, ``pg_fe_per_cell``, ``k`` or voxel volume.

    Examples
    --------
    >>> lim = detection_limit(2.0, relaxivity=57.0, pg_fe_per_cell=25.0, voxel_volume_ml=1e-6)
    >>> round(lim.delta_r2star, 6), round(lim.fe_mM, 6)
    (8.485281, 0.148865)
    """
    r, prov = _relaxivity_value(relaxivity)
    kk = _positive(k, "k", "standard deviations")
    p = _positive(pg_fe_per_cell, "pg_fe_per_cell", "pg of iron per cell") if pg_fe_per_cell is not None else None
    v = _voxel_volume(sigma_r2star, voxel_volume_ml)
    if _is_scalar(sigma_r2star) and (sigma_r2star_post is None or _is_scalar(sigma_r2star_post)):
        s1 = float(sigma_r2star)
        s2 = float(sigma_r2star_post) if sigma_r2star_post is not None else s1
        if s1 < 0 or s2 < 0:
            raise ParameterError("sigma_r2star must be >= 0 (a standard deviation, s-1)")
        dmin = kk * math.sqrt(s1 * s1 + s2 * s2)
        fe = dmin / r
        ug = fe * v * FE_MOLAR_MASS_G_PER_MOL
        return DetectionLimit(dmin, fe, ug, ug * 1e6 / p if p is not None else None, kk)
    d, vol = _split(sigma_r2star, "sigma_r2star")
    _check_units(vol, _RATE_UNITS, "sigma_r2star", "an R2* standard deviation in s-1")
    xp = get_array_module(d)
    s1 = _float_out(xp, d)
    if sigma_r2star_post is not None:
        d2, vol2 = _split(sigma_r2star_post, "sigma_r2star_post")
        check_same_device(sigma_r2star=d, sigma_r2star_post=d2)
        _check_pair(d, d2, vol, vol2, "sigma_r2star", "sigma_r2star_post")
        s2 = d2.astype(s1.dtype)
    else:
        s2 = s1
    if bool(xp.any(s1 < 0)) or bool(xp.any(s2 < 0)):
        raise ParameterError("sigma_r2star must be >= 0 (a standard deviation, s-1)")
    dmin = kk * xp.sqrt(s1 * s1 + s2 * s2)
    fe = dmin / r
    ug = fe * (v * FE_MOLAR_MASS_G_PER_MOL)
    cells = ug * (1e6 / p) if p is not None else None
    base = {"k": kk, "voxel_volume_ml": v, **prov,
            "formula": "k sqrt(sd_pre^2 + sd_post^2) -> / r2* -> x mL x 55.845 -> x 1e6 / pg"}
    return DetectionLimit(
        _wrap(dmin, vol, "s-1", {"quantity": "detection_limit_delta_r2star", "unit": "s-1", **base}),
        _wrap(fe, vol, "mM", {"quantity": "detection_limit_fe", "unit": "mM", **base}),
        _wrap(ug, vol, "ug", {"quantity": "detection_limit_fe_mass", "unit": "ug", **base}),
        _wrap(cells, vol, "cells", {"quantity": "detection_limit_cells", "unit": "cells",
                                    "pg_fe_per_cell": p, **base}) if cells is not None else None,
        kk,
    )
