"""Study figures (PNG) and the self-contained HTML report.

Every figure function draws on its own :class:`matplotlib.figure.Figure` with an
Agg canvas (pyplot and its global state are never used), writes one PNG
atomically (a temporary name in the same folder, then renamed into place) and
returns its :class:`~pathlib.Path`; ``return_figure=True`` returns
``(path, figure)`` so that callers and tests can read the plotted data back from
the artists.  Figures are 900 px wide.

Images are shown in RAS+ world millimetres: the volume is first turned to the
closest RAS axis order (a flip or permutation of voxel axes, no interpolation),
then every panel's axes are world x (left -> right = patient L -> R), y
(P -> A) or z (I -> S) in mm, so the displayed aspect is the physical one.
Oblique grids are shown in their nearest orthogonal orientation.

Tables are the study pipeline's tidy tables: one row per subject x session x ROI x
measure with columns ``subject, group, session, time_h, modality, roi, measure,
value, unit`` and optionally ``sd, n_voxels, volume_ml, truth``.
"""

from __future__ import annotations

import html
import json
import math
import os
import urllib.parse
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .backend import to_device
from .errors import GeometryError, ParameterError
from .volume import Volume

__all__ = [
    "fused_png",
    "map_png",
    "tac_png",
    "group_bars_png",
    "profile_png",
    "cells_png",
    "histogram_png",
    "recovered_vs_truth_png",
    "Report",
    "FIGURE_WIDTH_PX",
]

#: Width of every figure written by this module, pixels.
FIGURE_WIDTH_PX = 900
_DPI = 100
_WIDTH_IN = FIGURE_WIDTH_PX / _DPI
_MAX_PANELS = 8


# ---------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------
def _new_figure(height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(_WIDTH_IN, float(height_in)), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_path(path) -> Path:
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ParameterError(f"path {os.fspath(p)!r} must end in .png")
    return p


def _save(fig, path: Path, overwrite: bool, return_figure: bool):
    from .io.nifti import atomic_write

    atomic_write({path: lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI)}, overwrite=overwrite)
    return (path, fig) if return_figure else path


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


#: Columns that must hold numbers (or be empty) wherever a figure reads them.
_NUMERIC_COLUMNS = ("value", "time_h", "truth")


def _check_table(table, required: tuple[str, ...], name: str = "table"):
    import pandas as pd

    if not isinstance(table, pd.DataFrame):
        raise ParameterError(f"{name} must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ParameterError(f"{name} lacks column(s) {missing}; it has {list(table.columns)}")
    for c in required:
        if c in _NUMERIC_COLUMNS:
            try:
                table[c].to_numpy(float)
            except (TypeError, ValueError):
                raise ParameterError(f"{name} column {c!r} cannot be read as floats (text or pandas NA in it); "
                                     "make it numeric with NaN for missing values") from None


def _select_measure(table, measure: str):
    if not isinstance(measure, str):
        raise ParameterError(f"measure must be a string such as 'idg_mean', got {measure!r}")
    df = table[table["measure"] == measure]
    if df.empty:
        raise ParameterError(f"measure={measure!r} is not in the table; it has {sorted(map(str, table['measure'].unique()))}")
    return df


def _unit_of(df, measure: str) -> str:
    units = [str(u) for u in df["unit"].dropna().unique()]
    if len(units) > 1:
        raise ParameterError(f"measure {measure!r} has several units {units} in the table; convert to one unit first")
    return units[0] if units else "unitless"


def _choose(present: list, wanted, absent_msg: str) -> list:
    """``wanted`` (one name or a sequence; None: all of ``present``), each of which must be in ``present``.

    ``absent_msg`` is formatted with ``absent`` (the missing names) and ``present``.
    """
    if wanted is None:
        return present
    chosen = [wanted] if isinstance(wanted, str) else list(wanted)
    absent = [w for w in chosen if w not in present]
    if absent:
        raise ParameterError(absent_msg.format(absent=absent, present=present))
    return chosen


def _select_rois(df, rois) -> list:
    present = list(dict.fromkeys(df["roi"].tolist()))
    chosen = _choose(present, rois, "rois {absent} are not in the table for this measure; it has {present}")
    if not chosen:
        raise ParameterError("rois is empty; name at least one ROI")
    return chosen


def _group_labels(df, by: str):
    if by not in df.columns:
        raise ParameterError(f"by={by!r} is not a column of the table; it has {list(df.columns)}")
    return df[by].astype(object).where(df[by].notna(), "all").astype(str)


def _mean_sd(v: np.ndarray) -> tuple[float, float]:
    """Mean and sample SD (ddof=1; 0 for one value) of the finite values; NaN, NaN for none."""
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


# ---------------------------------------------------------------------------
# image geometry for display
# ---------------------------------------------------------------------------
def _as_3d(volume: Volume, frame: int | None, name: str) -> np.ndarray:
    if not isinstance(volume, Volume):
        raise ParameterError(f"{name} must be an invivo.Volume, got {type(volume).__name__}")
    data = np.asarray(to_device(volume.data, "cpu"))  # host: pictures are drawn in host memory
    if data.ndim == 4:
        n = data.shape[3]
        idx = n - 1 if frame is None else frame
        if not isinstance(idx, (int, np.integer)) or not -n <= idx < n:
            raise ParameterError(f"frame={frame!r} is out of range for {name} with {n} frames/echoes")
        data = data[..., idx]
    elif frame not in (None, 0, -1):
        raise ParameterError(f"frame={frame!r} given but {name} is 3D (only frame 0 exists)")
    return data.astype(np.float64)


class _View:
    """A volume turned to the closest RAS axis order, with world coordinates of voxel centres."""

    def __init__(self, volume: Volume):
        import nibabel as nib

        self.ornt = nib.orientations.io_orientation(volume.affine)
        self.affine = volume.affine @ nib.orientations.inv_ornt_aff(self.ornt, volume.spatial_shape)
        source = np.argsort(self.ornt[:, 0])  # output axis a is input axis source[a]
        self.shape = tuple(int(volume.spatial_shape[i]) for i in source)
        self.spacing = np.array(volume.voxel_size_mm)[source]
        mid = (np.array(self.shape) - 1) / 2.0
        wmid = self.affine[:3, :3] @ mid + self.affine[:3, 3]
        # exact for non-oblique grids; for oblique ones, exact at the grid centre
        self.coords = [wmid[a] + (np.arange(self.shape[a]) - mid[a]) * self.spacing[a] for a in range(3)]

    def reorient(self, data: np.ndarray) -> np.ndarray:
        import nibabel as nib

        return nib.orientations.apply_orientation(data, self.ornt)

    def voxel_of(self, point_mm) -> tuple[int, int, int]:
        p = np.asarray(point_mm, dtype=np.float64).reshape(-1)
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise ParameterError(f"slice_mm must be three finite RAS coordinates in mm, got {point_mm!r}")
        ijk = np.linalg.solve(self.affine[:3, :3], p - self.affine[:3, 3])
        v = np.rint(ijk).astype(int)
        if np.any(v < 0) or np.any(v >= np.array(self.shape)):
            lo = [float(c[0]) for c in self.coords]
            hi = [float(c[-1]) for c in self.coords]
            raise ParameterError(f"slice_mm={p.tolist()} lies outside the image (RAS mm from {lo} to {hi})")
        return tuple(int(x) for x in v)  # type: ignore[return-value]

    def extent(self, h: int, v: int) -> tuple[float, float, float, float]:
        ch, cv = self.coords[h], self.coords[v]
        dh, dv = self.spacing[h] / 2, self.spacing[v] / 2
        return (ch[0] - dh, ch[-1] + dh, cv[0] - dv, cv[-1] + dv)

    def width_mm(self, a: int) -> float:
        return float(self.shape[a] * self.spacing[a])


# panel name -> (horizontal axis, vertical axis, sliced axis)
_PANELS = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}
_AXIS_NAMES = ("x", "y", "z")
_AXIS_ENDS = (("L", "R"), ("P", "A"), ("I", "S"))


def _plane(data: np.ndarray, panel: str, index: int) -> np.ndarray:
    """(vertical, horizontal) image of one orthogonal slice, for ``imshow(origin='lower')``."""
    # the remaining axes keep their order and every panel has h < v: (h, v) -> transpose
    return np.take(data, index, axis=_PANELS[panel][2]).T


def _mip(data: np.ndarray, panel: str) -> np.ndarray:
    """(vertical, horizontal) maximum-intensity projection along the panel's sliced axis (NaN where none finite)."""
    m = np.max(np.where(np.isfinite(data), data, -np.inf), axis=_PANELS[panel][2])
    return np.where(np.isfinite(m), m, np.nan).T


def _decorate(ax, panel: str, title: str):
    h, v, _ = _PANELS[panel]
    ax.set_xlabel(f"{_AXIS_NAMES[h]} (mm, {_AXIS_ENDS[h][0]} \u2192 {_AXIS_ENDS[h][1]})", fontsize=8)
    ax.set_ylabel(f"{_AXIS_NAMES[v]} (mm, {_AXIS_ENDS[v][0]} \u2192 {_AXIS_ENDS[v][1]})", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    style = dict(transform=ax.transAxes, color="#7fdbff", fontsize=9, fontweight="bold")
    ax.text(0.02, 0.5, _AXIS_ENDS[h][0], ha="left", va="center", **style)
    ax.text(0.98, 0.5, _AXIS_ENDS[h][1], ha="right", va="center", **style)
    ax.text(0.5, 0.02, _AXIS_ENDS[v][0], ha="center", va="bottom", **style)
    ax.text(0.5, 0.98, _AXIS_ENDS[v][1], ha="center", va="top", **style)
    ax.set_facecolor("black")


def _window(a: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.5) -> tuple[float, float]:
    f = a[np.isfinite(a)]
    if f.size == 0:
        return 0.0, 1.0
    lo, hi = (float(x) for x in np.percentile(f, (lo_pct, hi_pct)))
    if not hi > lo:
        lo, hi = float(f.min()), float(f.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _check_range(r, name: str) -> tuple[float, float] | None:
    if r is None:
        return None
    try:
        lo, hi = (float(x) for x in r)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be (low, high), got {r!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ParameterError(f"{name} must be finite with high > low, got {r!r}")
    return lo, hi


def _fraction(value, name: str, *, one_ok: bool = True) -> float:
    """A number in [0, 1] ([0, 1) without ``one_ok``)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = math.nan
    if not (0.0 <= f <= 1.0 if one_ok else 0.0 <= f < 1.0):
        raise ParameterError(f"{name} must be a fraction in [0, 1{']' if one_ok else ')'}, got {value!r}")
    return f


def _check_companion(other, volume: Volume, name: str, volume_name: str) -> None:
    """``other`` (underlay, overlay) is a Volume on ``volume``'s grid."""
    if not isinstance(other, Volume):
        raise ParameterError(f"{name} must be an invivo.Volume or None, got {type(other).__name__}")
    if not other.same_grid(volume):
        raise GeometryError(
            f"{name} (shape {other.spatial_shape}, voxel {other.voxel_size_mm} mm) and {volume_name} "
            f"(shape {volume.spatial_shape}, voxel {volume.voxel_size_mm} mm) are not on the same grid; "
            f"resample the {name} onto the {volume_name} with invivo.align.resample(moving, reference, transform)")


def _underlay_frame(underlay: Volume) -> int | None:
    """Default frame of an anatomical underlay: the first echo of a multi-echo MR (most signal), else the last."""
    if underlay.data.ndim == 4:
        return 0 if underlay.meta.echo_times_s else underlay.n_volumes - 1
    return None


def _show(ax, image: np.ndarray, view: _View, panel: str, gid: str, **kwargs):
    """``imshow`` of a (vertical, horizontal) panel image in world mm, physical aspect."""
    h, v, _ = _PANELS[panel]
    im = ax.imshow(image, origin="lower", extent=view.extent(h, v), interpolation="nearest", aspect="equal",
                   **kwargs)
    im.set_gid(gid)
    return im


def _colorbar(fig, mappable, cax, label: str, *, opaque: bool = True) -> None:
    cb = fig.colorbar(mappable, cax=cax)
    if opaque:
        cb.solids.set_alpha(1.0)  # the colours of the scale, not of the semi-transparent overlay
    cb.set_label(label)
    cax.tick_params(labelsize=7)


def _slice_title(view: _View, panel: str, centre) -> str:
    _, _, s = _PANELS[panel]
    return f"{panel} {_AXIS_NAMES[s]} = {view.coords[s][centre[s]]:.1f} mm"


def _panel_layout(view: _View, rows: list[list[str]]):
    """Width ratios of the panel columns plus a colour-bar column, and the figure height (inches).

    ``rows`` lists panel names (``"axial"``, ``"coronal"``, ``"sagittal"``, optionally
    prefixed ``"mip_"``) row by row; column widths follow the widest row, in mm, so
    every panel is drawn at the same mm-per-inch scale.
    """
    w = [view.width_mm(a) for a in range(3)]
    n_cols = max(len(r) for r in rows)
    ratios = [0.0] * n_cols
    for r in rows:
        for c, name in enumerate(r):
            h, _, _ = _PANELS[name.removeprefix("mip_")]
            ratios[c] = max(ratios[c], w[h])
    cbar = 0.035 * sum(ratios)
    scale = (_WIDTH_IN - 0.9 - 0.5 * n_cols) / (sum(ratios) + cbar)  # inches per mm, after labels
    height = 0.5
    for r in rows:
        height += scale * max(w[_PANELS[n.removeprefix("mip_")][1]] for n in r) + 0.75
    return ratios + [cbar], min(max(height, 3.0), 16.0)


# ---------------------------------------------------------------------------
# 1. fused PET/MR slices and MIPs
# ---------------------------------------------------------------------------
def fused_png(underlay: Volume, overlay: Volume | None, path, *, slice_mm=None, overlay_label: str = "%ID/g",
              overlay_range=None, alpha: float = 0.6, mip: bool = True, title: str | None = None,
              frame: int | None = None, underlay_frame: int | None = None, threshold: float = 0.05,
              overwrite: bool = False, return_figure: bool = False):
    """Fused PET/MR picture: three orthogonal slices and, optionally, two MIPs of the overlay.

    Parameters
    ----------
    underlay : Volume
        Anatomical image (MR, CT), shown in grey (window: 1st-99.5th percentile of the volume).
    overlay : Volume or None
        Functional image (PET, SPECT; e.g. in %ID/g) on the same grid as ``underlay``
        (resample it first with :func:`invivo.align.resample`); ``None`` shows the
        underlay alone.
    path : str or Path
        Output ``.png``.
    slice_mm : sequence of 3 float, optional
        RAS point (mm) the slices pass through; default the overlay's maximum (the
        underlay's centre without an overlay).
    overlay_label : str
        Colour-bar label with units.
    overlay_range : (float, float), optional
        Overlay colour range in its units; default ``(min(0, minimum), maximum)``.
    alpha : float
        Overlay opacity, 0-1.
    mip : bool
        Add coronal and sagittal maximum-intensity projections of the overlay.
    title : str, optional
        Figure title; a default names the images and the frame.
    frame : int, optional
        Frame of a 4D overlay (default the last); of a 4D underlay when ``overlay`` is None.
    underlay_frame : int, optional
        Frame or echo of a 4D underlay; default the first echo of a multi-echo MR
        (``meta.echo_times_s`` set: the echo with most signal), else the last frame.
    threshold : float
        Overlay values below ``low + threshold * (high - low)`` of the colour range
        are transparent, so the underlay shows around the uptake.
    overwrite : bool
        Replace an existing ``path``.
    return_figure : bool
        Return ``(path, figure)`` instead of ``path``.

    Returns
    -------
    Path, or (Path, matplotlib.figure.Figure)
        The axes carry ``gid`` ``"axial"``, ``"coronal"``, ``"sagittal"``,
        ``"mip_coronal"``, ``"mip_sagittal"``; their images ``"underlay"`` and ``"overlay"``.
    """
    path = _png_path(path)
    if not isinstance(underlay, Volume):
        raise ParameterError(f"underlay must be an invivo.Volume, got {type(underlay).__name__}")
    if overlay is not None:
        _check_companion(overlay, underlay, "overlay", "underlay")
    alpha = _fraction(alpha, "alpha")
    threshold = _fraction(threshold, "threshold", one_ok=False)
    orange = _check_range(overlay_range, "overlay_range")

    if underlay_frame is None and overlay is None:
        underlay_frame = frame
    if underlay_frame is None:
        underlay_frame = _underlay_frame(underlay)
    view = _View(underlay)
    mr = view.reorient(_as_3d(underlay, underlay_frame, "underlay"))
    pet = view.reorient(_as_3d(overlay, frame, "overlay")) if overlay is not None else None

    if slice_mm is not None:
        centre = view.voxel_of(slice_mm)
    elif pet is not None and np.isfinite(pet).any():
        centre = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(pet), pet, -np.inf))), pet.shape)
    else:
        centre = tuple(s // 2 for s in view.shape)
    centre = tuple(int(c) for c in centre)

    u_lo, u_hi = _window(mr)
    if pet is not None:
        finite = pet[np.isfinite(pet)]
        if orange is None:
            hi = float(finite.max()) if finite.size else 1.0
            lo = min(0.0, float(finite.min())) if finite.size else 0.0
            orange = (lo, hi if hi > lo else lo + 1.0)
        cut = orange[0] + threshold * (orange[1] - orange[0])

    show_mip = bool(mip) and pet is not None
    slices = ["axial", "coronal", "sagittal"]
    w = [view.width_mm(a) for a in range(3)]
    if not show_mip:
        rows = [slices]
    elif w[2] > 1.5 * max(w[0], w[1]):  # a long body (mouse, rat): one row of five tall panels
        rows = [slices + ["mip_coronal", "mip_sagittal"]]
    else:
        rows = [slices, ["mip_coronal", "mip_sagittal"]]
    ratios, height = _panel_layout(view, rows)
    fig = _new_figure(height)
    gs = fig.add_gridspec(len(rows), len(ratios), width_ratios=ratios)
    from matplotlib import colormaps

    hot = colormaps["hot"].with_extremes(bad=(0, 0, 0, 0))
    overlay_im = None
    for r, row in enumerate(rows):
        for col, name in enumerate(row):
            panel = name.removeprefix("mip_")
            s = _PANELS[panel][2]
            ax = fig.add_subplot(gs[r, col])
            ax.set_gid(name)
            if name.startswith("mip_"):
                _show(ax, _mip(pet, panel), view, panel, "overlay", cmap=colormaps["hot"], vmin=orange[0],
                      vmax=orange[1])
                _decorate(ax, panel, f"{panel} MIP")
                continue
            _show(ax, _plane(mr, panel, centre[s]), view, panel, "underlay", cmap="gray", vmin=u_lo, vmax=u_hi)
            if pet is not None:
                sl = _plane(pet, panel, centre[s])
                shown = np.ma.masked_where(~np.isfinite(sl) | (np.nan_to_num(sl, nan=-np.inf) < cut), sl)
                overlay_im = _show(ax, shown, view, panel, "overlay", cmap=hot, vmin=orange[0], vmax=orange[1],
                                   alpha=alpha)
            _decorate(ax, panel, _slice_title(view, panel, centre))
    world = [float(view.coords[a][centre[a]]) for a in range(3)]
    info = [f"slices through RAS ({world[0]:.1f}, {world[1]:.1f}, {world[2]:.1f}) mm",
            f"voxel {' x '.join(f'{x:.3g}' for x in view.spacing)} mm"]
    if pet is not None:
        info.insert(1, f"overlay transparent below {cut:.3g} {overlay_label} ({100 * threshold:.0f} % of range)")
    fig.supxlabel("; ".join(info), fontsize=8)
    cax = fig.add_subplot(gs[:, len(ratios) - 1])
    if overlay_im is not None:
        _colorbar(fig, overlay_im, cax, overlay_label)
    else:
        from matplotlib import cm
        from matplotlib.colors import Normalize

        _colorbar(fig, cm.ScalarMappable(norm=Normalize(u_lo, u_hi), cmap="gray"), cax,
                  underlay.meta.units or "intensity (a.u.)", opaque=False)
    if title is None:
        u = f"{underlay.meta.modality}"
        if underlay.data.ndim == 4:
            u += f" (volume {underlay_frame if underlay_frame >= 0 else underlay.n_volumes + underlay_frame} of {underlay.n_volumes}, from 0)"
        if overlay is None:
            title = f"{u}: orthogonal slices"
        else:
            o = f"{overlay.meta.modality} {overlay_label}"
            if overlay.data.ndim == 4:
                f = overlay.n_volumes - 1 if frame is None else (frame % overlay.n_volumes)
                o += f" (frame {f} of {overlay.n_volumes}, from 0)"
            title = f"{o} over {u}"
    fig.suptitle(title, fontsize=11)
    return _save(fig, path, overwrite, return_figure)


# ---------------------------------------------------------------------------
# 2. parametric maps
# ---------------------------------------------------------------------------
def _mask_array(mask, volume: Volume) -> np.ndarray:
    if isinstance(mask, Volume):
        if not mask.same_grid(volume):
            raise GeometryError("mask and volume are not on the same grid; resample the mask with "
                                "invivo.align.resample(mask, volume) (nearest interpolation)")
        m = np.asarray(to_device(mask.data, "cpu"))  # host: pictures
        if m.ndim == 4:
            m = m[..., 0]
    else:
        m = np.asarray(to_device(mask, "cpu"))  # host: pictures
    if m.shape != volume.spatial_shape:
        raise GeometryError(f"mask has shape {m.shape}, the volume {volume.spatial_shape}; give a mask on the volume's grid")
    m = m != 0
    if not m.any():
        raise ParameterError("mask is empty; give a mask with at least one voxel")
    return m


def map_png(volume: Volume, path, *, underlay: Volume | None = None, label: str, cmap: str = "viridis",
            vrange=None, mask=None, title: str | None = None, frame: int | None = None, alpha: float = 0.85,
            overwrite: bool = False, return_figure: bool = False):
    """A parametric map (R2*, iron, Ki, ...): three orthogonal slices through the centre of ``mask``.

    Parameters
    ----------
    volume : Volume
        The map, e.g. R2* in s-1.  4D maps show ``frame`` (default the last).
    path : str or Path
        Output ``.png``.
    underlay : Volume, optional
        Anatomy in grey under the map (same grid as ``volume``).
    label : str
        Colour-bar label with units, e.g. ``"R2* (s-1)"``.
    cmap : str
        A matplotlib colormap name.
    vrange : (float, float), optional
        Colour range in the map's units; default the 1st-99th percentile inside ``mask``.
    mask : Volume or ndarray of bool, optional
        Voxels to show (others transparent); the slices pass through its centre of
        mass (rounded to a voxel), else through the volume's centre.
    title, frame, alpha, overwrite, return_figure
        As in :func:`fused_png`; ``alpha`` is the map's opacity over ``underlay``.

    Returns
    -------
    Path, or (Path, matplotlib.figure.Figure)
        Axes ``gid`` ``"axial"``, ``"coronal"``, ``"sagittal"``; the map image ``gid`` ``"map"``.
    """
    from matplotlib import colormaps

    path = _png_path(path)
    if not isinstance(label, str) or not label:
        raise ParameterError("label must name the quantity and its unit, e.g. 'R2* (s-1)'")
    if cmap not in colormaps:
        raise ParameterError(f"cmap={cmap!r} is not a matplotlib colormap (e.g. 'viridis', 'magma', 'hot')")
    rng = _check_range(vrange, "vrange")
    alpha = _fraction(alpha, "alpha")
    data = _as_3d(volume, frame, "volume")
    if underlay is not None:
        _check_companion(underlay, volume, "underlay", "map")
    m = _mask_array(mask, volume) if mask is not None else np.ones(volume.spatial_shape, bool)
    view = _View(volume)
    data = view.reorient(data)
    m = view.reorient(m)
    if mask is not None:
        centre = tuple(int(round(float(c))) for c in np.argwhere(m).mean(axis=0))
    else:
        centre = tuple(s // 2 for s in view.shape)
    if rng is None:
        rng = _window(np.where(m, data, np.nan), 1.0, 99.0)
    shown = np.where(m & np.isfinite(data), data, np.nan)
    mr = None
    if underlay is not None:
        mr = view.reorient(_as_3d(underlay, _underlay_frame(underlay), "underlay"))
        u_lo, u_hi = _window(mr)

    ratios, height = _panel_layout(view, [["axial", "coronal", "sagittal"]])
    fig = _new_figure(height)
    gs = fig.add_gridspec(1, 4, width_ratios=ratios)
    cm = colormaps[cmap].with_extremes(bad=(0, 0, 0, 0))
    for col, panel in enumerate(("axial", "coronal", "sagittal")):
        s = _PANELS[panel][2]
        ax = fig.add_subplot(gs[0, col])
        ax.set_gid(panel)
        if mr is not None:
            _show(ax, _plane(mr, panel, centre[s]), view, panel, "underlay", cmap="gray", vmin=u_lo, vmax=u_hi)
        im = _show(ax, np.ma.masked_invalid(_plane(shown, panel, centre[s])), view, panel, "map", cmap=cm,
                   vmin=rng[0], vmax=rng[1], alpha=alpha if mr is not None else None)
        _decorate(ax, panel, _slice_title(view, panel, centre))
    _colorbar(fig, im, fig.add_subplot(gs[0, 3]), label)
    if title is None:
        title = f"{label} map" + (" (inside mask)" if mask is not None else "")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path, overwrite, return_figure)


# ---------------------------------------------------------------------------
# 3. time-activity curves
# ---------------------------------------------------------------------------
def _grid_shape(n: int) -> tuple[int, int]:
    if n <= 3:
        return 1, n
    if n == 4:
        return 2, 2
    return 2, math.ceil(n / 2)


def _group_curves(ax, d, groups, colors, *, x: str, y: str, key: str, subject_marker: str | None = None) -> None:
    """Each subject's ``y`` against ``x`` (thin line, ``gid`` ``"subject:<id>"``), and per group the mean +/- SD
    over subjects of the rows sharing ``key``, at their mean ``x`` (``gid`` ``"mean:<group>"``)."""
    for g in groups:
        dg = d[d["_group"] == g]
        if dg.empty:
            continue
        for subj, ds in dg.groupby("subject", sort=False):
            ds = ds.sort_values(x)
            ax.plot(ds[x].to_numpy(float), ds[y].to_numpy(float), color=colors[g], lw=0.7, alpha=0.45,
                    marker=subject_marker, ms=3, gid=f"subject:{subj}")
        rows = []
        for _, dk in dg.groupby(key, sort=False):
            mean, sd = _mean_sd(dk[y].to_numpy(float))
            rows.append((float(np.nanmean(dk[x].to_numpy(float))), mean, sd))
        xs, ys, es = (np.array(c, float) for c in zip(*sorted(rows)))
        n_subj = dg.loc[np.isfinite(dg[y].to_numpy(float)), "subject"].nunique()
        cont = ax.errorbar(xs, ys, yerr=np.nan_to_num(es), color=colors[g], lw=1.8, marker="o", ms=4, capsize=3,
                           label=f"{g} (n={n_subj})")
        cont.lines[0].set_gid(f"mean:{g}")


def tac_png(table, path, *, measure: str, rois=None, by: str = "group", title: str | None = None,
            overwrite: bool = False, return_figure: bool = False):
    """Value vs time after injection, one panel per ROI: group mean +/- SD and each subject.

    Parameters
    ----------
    table : pandas.DataFrame
        Tidy study table with columns ``subject, time_h, roi, measure, value, unit``,
        the ``by`` column, and optionally ``session`` (points of one session are
        averaged together, at the group's mean ``time_h``).
    path : str or Path
        Output ``.png``.
    measure : str
        The measure to plot, e.g. ``"idg_mean"``.
    rois : str or sequence of str, optional
        ROIs to show (at most 8); default every ROI of the measure, in table order.
    by : str
        Column that groups subjects (one colour each).
    title, overwrite, return_figure
        As in :func:`fused_png`.

    Returns
    -------
    Path, or (Path, matplotlib.figure.Figure)
        One axes per ROI (``gid`` ``"roi:<name>"``); the mean line of each group has
        ``gid`` ``"mean:<group>"`` (its error bars are the sample SD over subjects,
        ddof=1; 0 for a single subject), subject lines ``"subject:<id>"``.
    """
    _check_table(table, ("subject", "time_h", "roi", "measure", "value", "unit"))
    path = _png_path(path)
    df = _select_measure(table, measure)
    unit = _unit_of(df, measure)
    chosen = _select_rois(df, rois)
    if len(chosen) > _MAX_PANELS:
        raise ParameterError(f"{len(chosen)} ROIs for measure {measure!r}; pass rois= with at most {_MAX_PANELS}")
    df = df[df["roi"].isin(chosen)].copy()
    df["_group"] = _group_labels(df, by)
    key = "session" if "session" in df.columns else "time_h"
    dup = df.duplicated(["_group", "subject", key, "roi"], keep=False)
    if dup.any():
        row = df[dup].iloc[0]
        raise ParameterError(f"several rows for subject {row['subject']!r}, {key} {row[key]!r}, roi {row['roi']!r} "
                             f"and measure {measure!r}; filter the table (e.g. by modality) first")
    groups = list(dict.fromkeys(df["_group"].tolist()))
    colors = dict(zip(groups, _colors(len(groups))))
    nr, nc = _grid_shape(len(chosen))
    fig = _new_figure(2.9 * nr + 0.7)
    axes = fig.subplots(nr, nc, squeeze=False).ravel()
    for ax, roi in zip(axes, chosen):
        ax.set_gid(f"roi:{roi}")
        d = df[df["roi"] == roi]
        _group_curves(ax, d, groups, colors, x="time_h", y="value", key=key, subject_marker=".")
        ax.set_title(str(roi), fontsize=10)
        ax.set_xlabel("time after injection (h)", fontsize=9)
        ax.set_ylabel(f"{measure} ({unit})", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(chosen):]:
        ax.remove()
    axes[0].legend(fontsize=7, title=by, title_fontsize=7)
    fig.suptitle(title or f"{measure} vs time: mean \u00b1 SD over subjects per {by}; thin lines = subjects", fontsize=11)
    return _save(fig, path, overwrite, return_figure)


# ---------------------------------------------------------------------------
# 4. group comparison bars
# ---------------------------------------------------------------------------
def group_bars_png(table, path, *, measure: str, rois=None, session=None, by: str = "group",
                   title: str | None = None, overwrite: bool = False, return_figure: bool = False):
    """Grouped bar chart: one bar per group per ROI (mean +/- SD over subjects), subjects as points.

    Parameters
    ----------
    table : pandas.DataFrame
        Tidy study table (``subject, roi, measure, value, unit``, the ``by`` column and,
        when the measure has several sessions, ``session``).
    path : str or Path
        Output ``.png``.
    measure : str
        The measure to compare.
    rois : str or sequence of str, optional
        ROIs (default all of the measure's, in table order).
    session : optional
        The session to show; required when the measure has values at several sessions.
    by : str
        Grouping column.
    title, overwrite, return_figure
        As in :func:`fused_png`.

    Returns
    -------
    Path, or (Path, matplotlib.figure.Figure)
        Bars of group ``g`` have ``gid`` ``"bars:<g>"`` (heights = means, error bars =
        sample SD, ddof=1); subject points ``"points:<g>"``.
    """
    _check_table(table, ("subject", "roi", "measure", "value", "unit"))
    path = _png_path(path)
    df = _select_measure(table, measure)
    if session is not None:
        if "session" not in df.columns:
            raise ParameterError("session= given but the table has no 'session' column")
        df = df[df["session"] == session]
        if df.empty:
            raise ParameterError(f"no rows for measure {measure!r} at session {session!r}; "
                                 f"sessions are {sorted(map(str, table['session'].unique()))}")
    elif "session" in df.columns and df["session"].nunique(dropna=False) > 1:
        raise ParameterError(f"measure {measure!r} has several sessions {sorted(map(str, df['session'].unique()))}; "
                             "pass session= to choose one")
    unit = _unit_of(df, measure)
    chosen = _select_rois(df, rois)
    df = df[df["roi"].isin(chosen)].copy()
    df["_group"] = _group_labels(df, by)
    dup = df.duplicated(["_group", "subject", "roi"], keep=False)
    if dup.any():
        row = df[dup].iloc[0]
        raise ParameterError(f"several rows for subject {row['subject']!r}, roi {row['roi']!r} and measure "
                             f"{measure!r}; filter the table (e.g. by modality or session) first")
    groups = list(dict.fromkeys(df["_group"].tolist()))
    colors = _colors(len(groups))
    width = 0.8 / len(groups)
    fig = _new_figure(4.2)
    ax = fig.add_subplot()
    x0 = np.arange(len(chosen), dtype=float)
    for gi, g in enumerate(groups):
        xs = x0 - 0.4 + width * (gi + 0.5)
        means, sds, px, py = [], [], [], []
        for r, x in zip(chosen, xs):
            v = df[(df["_group"] == g) & (df["roi"] == r)]["value"].to_numpy(float)
            mean, sd = _mean_sd(v)
            means.append(mean)
            sds.append(sd)
            v = v[np.isfinite(v)]
            px.extend(x + np.linspace(-width / 4, width / 4, v.size) if v.size > 1 else [x] * v.size)
            py.extend(v)
        bars = ax.bar(xs, np.nan_to_num(means), width * 0.92, yerr=np.nan_to_num(sds), capsize=3, color=colors[gi],
                      alpha=0.75, label=g, error_kw=dict(lw=1.2))
        for patch in bars.patches:
            patch.set_gid(f"bars:{g}")
        pts = ax.scatter(px, py, s=12, color="black", zorder=3, lw=0)
        pts.set_gid(f"points:{g}")
    ax.set_xticks(x0, [str(r) for r in chosen], rotation=30 if len(chosen) > 6 else 0)
    ax.set_xlabel("region of interest", fontsize=9)
    ax.set_ylabel(f"{measure} ({unit})", fontsize=9)
    ax.axhline(0.0, color="black", lw=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, title=by, title_fontsize=8)
    when = f" at session {session}" if session is not None else ""
    ax.set_title(title or f"{measure}{when}: mean \u00b1 SD over subjects, points = subjects", fontsize=11)
    return _save(fig, path, overwrite, return_figure)


# ---------------------------------------------------------------------------
# rim-to-core profiles and cells from two modalities
# ---------------------------------------------------------------------------
#: How the maps of a rim-to-core profile are named on the figures
_MAP_LABELS = {"idg": "%ID/g", "idcc": "%ID/cc", "suvbw": "SUVbw", "suvlbm": "SUVlbm", "suvbsa": "SUVbsa",
               "suvibw": "SUVibw", "dr2star": "dR2*", "r2star": "R2*"}


def profile_png(profiles, path, *, map: str, by: str = "group", rim_mm: float | None = None,
                title: str | None = None, overwrite: bool = False, return_figure: bool = False):
    """Value against depth inside an ROI (rim-to-core profile): one panel per session.

    Parameters
    ----------
    profiles : pandas.DataFrame
        Rows of :func:`invivo.roi.rim_core_profile` with ``subject``, ``session``,
        ``time_h``, ``map``, ``depth_mm``, ``mean``, ``unit`` and the ``by`` column (the
        study pipeline's ``tables/profiles``).
    path : str or Path
        Output ``.png``.
    map : str
        Which map's profiles to show (``"idg"``, ``"dr2star"``, ...).
    by : str
        Column that groups subjects (one colour each): mean over subjects per depth bin
        +/- SD, subjects as thin lines.
    rim_mm : float, optional
        Draw the rim/core boundary at this depth.
    title, overwrite, return_figure
        As in :func:`fused_png`.

    Returns
    -------
    Path, or (Path, matplotlib.figure.Figure)
        One axes per session (``gid`` ``"session:<id>"``), in time order; the group means
        have ``gid`` ``"mean:<group>"``, subject lines ``"subject:<id>"``.
    """
    _check_table(profiles, ("subject", "session", "time_h", "map", "depth_mm", "mean", "unit"), "profiles")
    path = _png_path(path)
    df = profiles[profiles["map"] == map].copy()
    if df.empty:
        raise ParameterError(f"map={map!r} is not in the profiles; they have {sorted(map_ for map_ in profiles['map'].unique())}")
    unit = _unit_of(df.rename(columns={"mean": "value"}), map)
    df["_group"] = _group_labels(df, by)
    sessions = list(df.groupby("session", sort=False)["time_h"].mean().sort_values().index)
    if len(sessions) > _MAX_PANELS:
        sessions = sessions[-_MAX_PANELS:]
    groups = list(dict.fromkeys(df["_group"].tolist()))
    colors = dict(zip(groups, _colors(len(groups))))
    nr, nc = _grid_shape(len(sessions))
    fig = _new_figure(2.9 * nr + 0.7)
    axes = fig.subplots(nr, nc, squeeze=False).ravel()
    for ax, ses in zip(axes, sessions):
        ax.set_gid(f"session:{ses}")
        d = df[df["session"] == ses]
        _group_curves(ax, d, groups, colors, x="depth_mm", y="mean", key="depth_mm")
        if rim_mm is not None:
            ax.axvline(float(rim_mm), color="0.4", ls="--", lw=0.8)
        ax.set_title(f"ses-{ses} ({d['time_h'].mean():.0f} h)", fontsize=10)
        ax.set_xlabel("depth from the boundary (mm)", fontsize=9)
        name = _MAP_LABELS.get(map, map)
        ax.set_ylabel(name if name == unit else f"{name} ({unit})", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(sessions):]:
        ax.remove()
    handles = {}
    for ax in axes[:len(sessions)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab.split(" (n=")[0], (h, lab))
    axes[0].legend([h for h, _ in handles.values()], [lab for _, lab in handles.values()], fontsize=7, title=by,
                   title_fontsize=7)
    fig.suptitle(title or f"{_MAP_LABELS.get(map, map)}: rim (left) to core (right), mean \u00b1 SD over subjects",
                 fontsize=11)
    return _save(fig, path, overwrite, return_figure)


def cells_png(table, path, *, title: str | None = None, overwrite: bool = False, return_figure: bool = False):
    """Labeled cells per ROI from PET against MRI, with 1 SD error bars and both detection limits.

    Parameters
    ----------
    table : pandas.DataFrame
        Tidy study table holding ``cells_pet``, ``cells_mri`` and optionally their
        ``_sd`` and ``_min`` measures, per ``subject``, ``session`` and ``roi``.
    path : str or Path
        Output ``.png``.
    title, overwrite, return_figure
        As in :func:`fused_png`.

    Returns
    -------
    Path, or (Path, matplotlib.figure.Figure)
        One point per subject x session x ROI with both numbers (``gid`` ``"roi:<name>"``
        per ROI series), the identity line, and the median detection limits as dotted lines.
        A number below its detection limit (``cells_*_min``), or not positive, is drawn at
        that limit as an open marker (``gid`` ``"below:<roi>"``).
    """
    _check_table(table, ("subject", "session", "roi", "measure", "value"))
    path = _png_path(path)
    names = ["cells_pet", "cells_pet_sd", "cells_pet_min", "cells_mri", "cells_mri_sd", "cells_mri_min"]
    df = table[table["measure"].isin(names)]
    wide = df.pivot_table(index=["subject", "session", "roi"], columns="measure", values="value").reset_index()
    if not {"cells_pet", "cells_mri"} <= set(wide.columns):
        raise ParameterError("cells_png needs both cells_pet and cells_mri measures in the table")
    wide = wide.dropna(subset=["cells_pet", "cells_mri"])
    if wide.empty:
        raise ParameterError("no subject, session and ROI has cells from both PET and MRI")
    for col in ("cells_pet_sd", "cells_pet_min", "cells_mri_sd", "cells_mri_min"):
        if col not in wide:
            wide[col] = np.nan
    # below its detection limit (or not positive) a number is shown at the limit, as an open marker
    below = {k: ~(wide[f"cells_{k}"].to_numpy(float) > np.nan_to_num(wide[f"cells_{k}_min"].to_numpy(float)))
             for k in ("pet", "mri")}
    shown = {k: np.where(below[k], wide[f"cells_{k}_min"].to_numpy(float), wide[f"cells_{k}"].to_numpy(float))
             for k in ("pet", "mri")}
    fig = _new_figure(4.2)
    ax = fig.subplots()
    rois = list(dict.fromkeys(wide["roi"].tolist()))
    for roi, c in zip(rois, _colors(len(rois))):
        sel = (wide["roi"] == roi).to_numpy()
        det = sel & ~below["pet"] & ~below["mri"]
        if not det.any():
            continue
        cont = ax.errorbar(shown["mri"][det], shown["pet"][det], xerr=wide["cells_mri_sd"].to_numpy(float)[det],
                           yerr=wide["cells_pet_sd"].to_numpy(float)[det], fmt="o", ms=4, color=c, capsize=2,
                           lw=0.8, label=str(roi))
        cont.lines[0].set_gid(f"roi:{roi}")
    for roi, c in zip(rois, _colors(len(rois))):
        und = (wide["roi"] == roi).to_numpy() & (below["pet"] | below["mri"])
        if und.any():
            ax.plot(shown["mri"][und], shown["pet"][und], "o", ms=6, mfc="none", mec=c,
                    label=f"{roi}: below a detection limit", gid=f"below:{roi}")
    v = np.concatenate([shown["pet"], shown["mri"], [np.nanmedian(wide["cells_pet_min"].to_numpy(float)),
                                                     np.nanmedian(wide["cells_mri_min"].to_numpy(float))]])
    v = v[np.isfinite(v) & (v > 0)]
    if v.size:
        lo, hi = v.min() / 2.0, v.max() * 2.0
        ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8, ls="-", label="PET = MRI")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    for col, line in (("cells_mri_min", ax.axvline), ("cells_pet_min", ax.axhline)):
        if np.isfinite(wide[col].to_numpy(float)).any():
            line(float(np.nanmedian(wide[col].to_numpy(float))), color="0.5", ls=":", lw=0.9)
    ax.set_xlabel("cells from MRI (iron)", fontsize=9)
    ax.set_ylabel("cells from PET (89Zr)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.suptitle(title or "labeled cells per ROI: PET against MRI (\u00b1 1 SD; dotted: median detection limits)",
                 fontsize=10)
    return _save(fig, path, overwrite, return_figure)


# ---------------------------------------------------------------------------
# 5. histograms
# ---------------------------------------------------------------------------
def histogram_png(values: Mapping[str, Any], path, *, label: str = "R2* (s-1)", bins: int = 60, range=None,
                  density: bool = False, title: str | None = None, overwrite: bool = False,
                  return_figure: bool = False):
    """Overlaid step histograms (e.g. tumour R2* before vs after SPIO cells), medians marked.

    Parameters
    ----------
    values : mapping of str to array_like
        Name -> values (any shape; NaN and inf are left out).
    path : str or Path
        Output ``.png``.
    label : str
        x-axis label with units.
    bins : int
        Number of bins over ``range``.
    range : (float, float), optional
        Histogram range in the values' units; default the 0.5th-99.5th percentile of all
        values pooled (values outside are counted in the legend).  Medians are always of
        all finite values.
    density : bool
        Normalise each histogram to unit area (compare groups of different sizes).
    title, overwrite, return_figure
        As in :func:`fused_png`.

    Returns
    -------
    Path, or (Path, matplotlib.figure.Figure)
        Median lines have ``gid`` ``"median:<name>"``.
    """
    path = _png_path(path)
    if not isinstance(values, Mapping) or not values:
        raise ParameterError("values must be a non-empty mapping of name -> array, e.g. {'before': r2s_pre, 'after': r2s_post}")
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ParameterError(f"bins must be a positive integer, got {bins!r}")
    arrays = {}
    for name, v in values.items():
        a = np.asarray(to_device(v, "cpu"), dtype=np.float64).ravel()  # host: pictures
        a = a[np.isfinite(a)]
        if a.size == 0:
            raise ParameterError(f"values[{name!r}] has no finite values")
        arrays[str(name)] = a
    rng = _check_range(range, "range")
    if rng is None:
        rng = _window(np.concatenate(list(arrays.values())), 0.5, 99.5)
    fig = _new_figure(4.0)
    ax = fig.add_subplot()
    for (name, a), c in zip(arrays.items(), _colors(len(arrays))):
        med = float(np.median(a))
        outside = int(np.count_nonzero((a < rng[0]) | (a > rng[1])))
        extra = f", {outside} outside range" if outside else ""
        ax.hist(a, bins=int(bins), range=rng, histtype="step", lw=1.6, color=c, density=density,
                label=f"{name}: median {med:.4g} (n={a.size}{extra})")
        ax.axvline(med, color=c, ls="--", lw=1.2, gid=f"median:{name}")
    ax.set_xlabel(label, fontsize=9)
    ax.set_ylabel("probability density (1 / x unit)" if density else "voxels (count)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{label}: histograms, dashed lines = medians", fontsize=11)
    return _save(fig, path, overwrite, return_figure)


# ---------------------------------------------------------------------------
# 6. recovered vs truth
# ---------------------------------------------------------------------------
def recovered_vs_truth_png(table, path, *, measures=None, title: str | None = None, overwrite: bool = False,
                           return_figure: bool = False):
    """Recovered ``value`` vs ``truth`` (rows with a truth), one colour per measure, and relative errors.

    Parameters
    ----------
    table : pandas.DataFrame
        With columns ``measure, value, truth`` and optionally ``unit``.
    path : str or Path
        Output ``.png``.
    measures : sequence of str, optional
        Measures to show; default every measure with a truth.
    title, overwrite, return_figure
        As in :func:`fused_png`.

    Returns
    -------
    Path, or (Path, matplotlib.figure.Figure)
        Left axes (``gid`` ``"scatter"``): points of measure ``m`` with ``gid``
        ``"measure:<m>"`` (offsets are ``(truth, value)``), identity line
        ``"identity"``; both axes logarithmic when all values are positive and span
        more than two decades.  Right axes (``gid`` ``"error"``): ``100 * (value -
        truth) / truth`` in %, points ``"error:<m>"`` (rows with truth 0 left out).
    """
    _check_table(table, ("measure", "value", "truth"))
    path = _png_path(path)
    df = table[table["truth"].notna() & table["value"].notna()]
    if df.empty:
        raise ParameterError("no rows with both a value and a truth; recovered_vs_truth_png needs a table with truth (the demo)")
    present = list(dict.fromkeys(df["measure"].tolist()))
    chosen = _choose(present, measures, "measures {absent} have no rows with truth; measures with truth are {present}")
    if not chosen:
        raise ParameterError("measures is empty; name at least one measure or pass None for all")
    df = df[df["measure"].isin(chosen)]
    t_all = df["truth"].to_numpy(float)
    v_all = df["value"].to_numpy(float)
    both = np.concatenate([t_all, v_all])
    both = both[np.isfinite(both)]
    log = bool(both.size and both.min() > 0 and both.max() / both.min() > 100.0)
    fig = _new_figure(4.3)
    gs = fig.add_gridspec(1, 2, width_ratios=[1.1, 1.0])
    ax = fig.add_subplot(gs[0, 0])
    ax.set_gid("scatter")
    ex = fig.add_subplot(gs[0, 1])
    ex.set_gid("error")
    for i, (m, c) in enumerate(zip(chosen, _colors(len(chosen)))):
        d = df[df["measure"] == m]
        unit = _unit_of(d, m) if "unit" in d.columns else "unitless"
        t = d["truth"].to_numpy(float)
        v = d["value"].to_numpy(float)
        ax.scatter(t, v, s=18, color=c, label=f"{m} ({unit})", zorder=3).set_gid(f"measure:{m}")
        ok = t != 0
        err = 100.0 * (v[ok] - t[ok]) / t[ok]
        xs = i + (np.linspace(-0.2, 0.2, err.size) if err.size > 1 else np.zeros(err.size))
        ex.scatter(xs, err, s=14, color=c, zorder=3).set_gid(f"error:{m}")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    if log:
        lo, hi = lo / 1.5, hi * 1.5
    else:
        pad = 0.05 * (hi - lo if hi > lo else max(abs(hi), 1.0))
        lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=1, gid="identity", label="identity")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("truth (unit of each measure, see legend)", fontsize=9)
    ax.set_ylabel("recovered (same unit)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("recovered vs truth" + (" (log-log)" if log else ""), fontsize=10)
    ex.axhline(0.0, color="grey", ls="--", lw=1)
    ex.set_xticks(np.arange(len(chosen)), chosen, rotation=30 if len(chosen) > 3 else 0, fontsize=8)
    ex.set_xlim(-0.6, len(chosen) - 0.4)
    ex.set_xlabel("measure", fontsize=9)
    ex.set_ylabel("(recovered \u2212 truth) / truth (%)", fontsize=9)
    ex.grid(alpha=0.3)
    ex.set_title("relative error", fontsize=10)
    fig.suptitle(title or "Recovered values against the known truth", fontsize=11)
    return _save(fig, path, overwrite, return_figure)


# ---------------------------------------------------------------------------
# 7. the HTML report
# ---------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1000px;
padding:1em 1.5em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
nav ol{padding-left:1.4em}nav a{text-decoration:none}
.badge{display:inline-block;padding:.3em .8em;border-radius:1em;font-weight:600}
.badge.ok{background:#dff3e0;color:#1b5e20;border:1px solid #7cc47f}
.badge.bad{background:#fde2e1;color:#8e1c16;border:1px solid #e58a85}
.meta{color:#666;font-size:.9em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption,.caption{font-size:.9em;color:#444;margin:.3em 0}
.tablewrap{overflow-x:auto;margin:.5em 0 1em}
table.dataframe{border-collapse:collapse;font-size:.85em}
table.dataframe th,table.dataframe td{border:1px solid #ccc;padding:.2em .5em;text-align:right}
table.dataframe th{background:#f3f3f3}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em}
footer{margin-top:2em;color:#777;font-size:.85em}
"""


def _default_float(x: float) -> str:
    return f"{x:.4g}"


class Report:
    """One self-contained HTML page: sections, figures, tables, text and provenance.

    Images are referenced by their path relative to ``out_dir`` (they must live under
    it), so the folder can be moved or zipped as a whole; no external CSS or
    JavaScript is used.

    Parameters
    ----------
    title : str
        Page title.
    out_dir : str or Path
        The report's folder; :meth:`write` puts the HTML there.

    Examples
    --------
    >>> import pandas as pd
    >>> r = Report("Demo <study>", "derivatives/report")
    >>> r.status("all recovered values within tolerance", ok=True)
    >>> r.section("Uptake", "Mean %ID/g per ROI.")
    >>> r.table(pd.DataFrame({"roi": ["tumour"], "idg_mean": [5.123456]}), "ROI means")
    >>> page = r.render()  # r.write() puts it in derivatives/report/report.html
    >>> "Demo &lt;study&gt;" in page and "<td>5.123</td>" in page and 'href="#sec-1"' in page
    True
    """

    def __init__(self, title: str, out_dir):
        if not isinstance(title, str) or not title.strip():
            raise ParameterError("title must be a non-empty string")
        self.title = title
        self.out_dir = Path(out_dir)
        self._preamble: list[str] = []
        self._sections: list[tuple[str, str, list[str]]] = []
        self._status: tuple[str, bool] | None = None
        self._provenance: dict = {}
        self._n_fig = 0
        self._n_tab = 0
        self._figures: list[Path] = []

    # -- building --------------------------------------------------------------
    def _blocks(self) -> list[str]:
        return self._sections[-1][2] if self._sections else self._preamble

    def status(self, message: str, *, ok: bool) -> None:
        """A badge under the title, e.g. ``"3 values outside tolerance"`` with ``ok=False``."""
        if not isinstance(message, str) or not message.strip():
            raise ParameterError("status message must be a non-empty string")
        self._status = (message, bool(ok))

    def section(self, heading: str, text: str = "") -> None:
        """Start a new section (listed in the table of contents), with an optional paragraph."""
        if not isinstance(heading, str) or not heading.strip():
            raise ParameterError("section heading must be a non-empty string")
        self._sections.append((f"sec-{len(self._sections) + 1}", heading, []))
        if text:
            self.text(text)

    def text(self, paragraph: str) -> None:
        """A paragraph of plain text (escaped; blank lines start new paragraphs)."""
        for p in str(paragraph).split("\n\n"):
            if p.strip():
                self._blocks().append(f"<p>{html.escape(p.strip())}</p>")

    def figure(self, png_path, caption: str) -> None:
        """An image under ``out_dir``, referenced by its relative path, with a numbered caption."""
        p = Path(png_path)
        if not p.is_file():
            raise ParameterError(f"figure {os.fspath(p)!r} does not exist; write it (e.g. with fused_png) first")
        root = self.out_dir.resolve()
        try:
            rel = p.resolve().relative_to(root)
        except ValueError:
            raise ParameterError(f"figure {os.fspath(p)!r} is not under the report folder {os.fspath(root)!r}; "
                                 "write figures inside out_dir so the report folder is self-contained") from None
        self._n_fig += 1
        self._figures.append(p.resolve())
        src = html.escape(urllib.parse.quote(rel.as_posix()), quote=True)
        cap = html.escape(str(caption))
        self._blocks().append(f'<figure><img src="{src}" alt="{cap}" loading="lazy">'
                              f"<figcaption>Figure {self._n_fig}. {cap}</figcaption></figure>")

    def table(self, df, caption: str, max_rows: int = 200,
              float_format: Callable[[float], str] | str | None = None) -> None:
        """A pandas table (values escaped); only the first ``max_rows`` rows are shown, with a note.

        ``float_format`` is a callable or a format spec such as ``".3f"``; default 4
        significant digits.
        """
        import pandas as pd

        if isinstance(df, pd.Series):
            df = df.to_frame()
        if not isinstance(df, pd.DataFrame):
            raise ParameterError(f"table needs a pandas DataFrame, got {type(df).__name__}")
        if not isinstance(max_rows, (int, np.integer)) or max_rows < 1:
            raise ParameterError(f"max_rows must be a positive integer, got {max_rows!r}")
        if float_format is None:
            fmt = _default_float
        elif isinstance(float_format, str):
            spec = float_format
            try:
                format(1.5, spec)
            except ValueError:
                raise ParameterError(f"float_format={spec!r} is not a format spec such as '.3g'") from None
            fmt = lambda x: format(x, spec)  # noqa: E731
        elif callable(float_format):
            fmt = float_format
        else:
            raise ParameterError(f"float_format must be a callable or a format spec, got {float_format!r}")
        self._n_tab += 1
        shown = df.head(int(max_rows))
        index = not isinstance(df.index, pd.RangeIndex)
        body = shown.to_html(index=index, float_format=fmt, na_rep="\u2013", escape=True, border=0)
        note = f" (first {len(shown)} of {len(df)} rows)" if len(df) > len(shown) else ""
        self._blocks().append(f'<p class="caption">Table {self._n_tab}. {html.escape(str(caption))}{note}</p>'
                              f'<div class="tablewrap">{body}</div>')

    def provenance(self, info: Mapping[str, Any]) -> None:
        """Record provenance (invivo version, inputs, parameters); shown as the last section, as JSON."""
        if not isinstance(info, Mapping):
            raise ParameterError(f"provenance needs a mapping, got {type(info).__name__}")
        self._provenance.update(info)

    # -- output ------------------------------------------------------------------
    def render(self) -> str:
        """The HTML page as a string."""
        from . import __version__

        e = html.escape
        sections = list(self._sections)
        if self._provenance:
            prov = {"invivo_version": __version__, **self._provenance}
            text = json.dumps(prov, indent=2, default=str, ensure_ascii=False)
            sections.append(("provenance", "Provenance", [f"<pre>{html.escape(text, quote=False)}</pre>"]))
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
               '<meta name="viewport" content="width=device-width, initial-scale=1">',
               f"<title>{e(self.title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", "<header>",
               f"<h1>{e(self.title)}</h1>"]
        if self._status is not None:
            msg, ok = self._status
            cls, mark = ("ok", "\u2714") if ok else ("bad", "\u2718")
            out.append(f'<p class="badge {cls}">{mark} {e(msg)}</p>')
        out.append(f'<p class="meta">Generated {now} by invivo {e(str(__version__))}</p>')
        out.append("</header>")
        if sections:
            out.append("<nav><h2>Contents</h2><ol>")
            out += [f'<li><a href="#{sid}">{e(h)}</a></li>' for sid, h, _ in sections]
            out.append("</ol></nav>")
        out.append("<main>")
        out += self._preamble
        for sid, h, blocks in sections:
            out.append(f'<section id="{sid}"><h2>{e(h)}</h2>')
            out += blocks
            out.append("</section>")
        out += ["</main>", f"<footer>invivo {e(str(__version__))}</footer>", "</body>", "</html>", ""]
        return "\n".join(out)

    def write(self, name: str = "report.html", *, overwrite: bool = False) -> Path:
        """Write the page to ``out_dir / name`` atomically; an existing file needs ``overwrite=True``.

        Raises
        ------
        invivo.errors.OutputExistsError
            The report exists and ``overwrite`` is False.
        """
        from .io.nifti import atomic_write

        if not isinstance(name, str) or Path(name).name != name or not name.lower().endswith((".html", ".htm")):
            raise ParameterError(f"name must be a file name ending in .html (no folders), got {name!r}")
        gone = [p for p in self._figures if not p.is_file()]
        if gone:
            raise ParameterError(f"figure {os.fspath(gone[0])!r} has disappeared since it was added to the report")
        page = self.render()
        path = self.out_dir / name
        atomic_write({path: lambda tmp: Path(tmp).write_text(page, encoding="utf-8")}, overwrite=overwrite)
        return path
