"""A small analytic mouse phantom and its PET, MR and CT renderers.

The phantom is a set of ellipsoids in a 24 x 21 x 88 mm body (23 mL, a 23 g mouse) (RAS+ mm, body centre
at the world origin, head towards +S, belly towards +A, the animal's right towards
+R).  Organs do not overlap one another, so every organ's volume is the analytic
ellipsoid volume up to the voxelisation, and every rendered value inside an organ
is exactly the value its formula gives: the truth the tests of the rest of invivo
are measured against.

Labels (``Phantom.names``)::

    1 body (soft tissue not in an organ)   6 kidneys
    2 lungs                                7 bladder
    3 heart                                8 bone (spine)
    4 liver                                9 tumour_rim
    5 spleen                               10 tumour_core

The subcutaneous tumour sits on the right flank, half outside the body ellipsoid,
with a 1.5 mm rim around a 2 mm-radius core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Mapping

import numpy as np

from ..backend import get_array_module, to_device
from ..errors import ParameterError
from ..isotopes import lookup
from ..volume import Meta, Subject, Tracer, Volume

__all__ = [
    "Ellipsoid",
    "Phantom",
    "mouse_phantom",
    "render_pet",
    "render_mr",
    "render_ct",
    "DEFAULT_S0",
    "DEFAULT_R2STAR_PER_S",
    "DEFAULT_HU",
    "DEFAULT_INJECTION_DATETIME",
]

#: Injection time used when none is given.
DEFAULT_INJECTION_DATETIME = datetime(2024, 1, 15, 9, 0, 0)


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid in RAS+ mm."""

    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]

    @property
    def volume_ml(self) -> float:
        a, b, c = self.semi_axes_mm
        return 4.0 / 3.0 * math.pi * a * b * c / 1000.0

    def contains(self, x, y, z):
        """Boolean array: points (broadcastable arrays of RAS mm) inside or on the surface."""
        (cx, cy, cz), (a, b, c) = self.centre_mm, self.semi_axes_mm
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2 <= 1.0


#: Field of view (mm) of the default grid: R-L, A-P, S-I.
FOV_MM = (30.0, 24.0, 90.0)

_BODY = Ellipsoid((0.0, 0.0, 0.0), (12.0, 10.5, 44.0))
_TUMOUR_CENTRE = (11.0, 0.0, -18.0)
_TUMOUR_RADIUS_MM = 3.5
_CORE_RADIUS_MM = 2.0

# (label, name, ellipsoids), painted in this order after the body; no two overlap.
_ORGANS: tuple[tuple[int, str, tuple[Ellipsoid, ...]], ...] = (
    (2, "lungs", (Ellipsoid((4.5, 0.5, 20.0), (3.0, 3.5, 6.0)), Ellipsoid((-4.5, 0.5, 20.0), (3.0, 3.5, 6.0)))),
    (3, "heart", (Ellipsoid((-0.5, 3.0, 11.0), (2.5, 2.5, 3.0)),)),
    (4, "liver", (Ellipsoid((0.0, 1.0, 3.0), (8.0, 5.0, 4.0)),)),
    (5, "spleen", (Ellipsoid((-6.5, 0.5, -4.0), (1.5, 2.5, 3.5)),)),
    (6, "kidneys", (Ellipsoid((4.0, -3.5, -9.0), (1.8, 1.8, 3.0)), Ellipsoid((-4.0, -3.5, -9.0), (1.8, 1.8, 3.0)))),
    (7, "bladder", (Ellipsoid((0.0, 3.0, -30.0), (2.5, 2.5, 2.5)),)),
    (8, "bone", (Ellipsoid((0.0, -6.0, -2.0), (1.5, 1.5, 30.0)),)),
    (9, "tumour_rim", (Ellipsoid(_TUMOUR_CENTRE, (_TUMOUR_RADIUS_MM,) * 3),)),
    (10, "tumour_core", (Ellipsoid(_TUMOUR_CENTRE, (_CORE_RADIUS_MM,) * 3),)),
)

#: Label groups accepted wherever an organ name is (``"tumour"`` = rim and core).
GROUPS = {"tumour": ("tumour_rim", "tumour_core")}


@dataclass
class Phantom:
    """A labelled phantom.

    Attributes
    ----------
    labels : Volume
        int16 label map (0 = air) on a RAS+ grid.
    names : dict of int to str
        Label value -> organ name.
    shapes : dict of str to tuple of Ellipsoid
        The ellipsoids each organ was painted from (``"body"``: the body ellipsoid,
        before the organs and the tumour were painted over it).
    analytic_volumes_ml : dict of str to float
        Exact organ volumes in mL (``tumour_rim`` is the shell between the outer
        sphere and the core; ``body`` is absent: it is what the organs leave).
    """

    labels: Volume
    names: dict[int, str]
    shapes: dict[str, tuple[Ellipsoid, ...]] = field(default_factory=dict)
    analytic_volumes_ml: dict[str, float] = field(default_factory=dict)

    def label(self, name: str) -> int:
        """The label value of an organ name."""
        for k, v in self.names.items():
            if v == name:
                return k
        raise ParameterError(f"phantom has no organ {name!r}; known: {', '.join(self.names.values())}")

    def _resolve(self, name: str) -> tuple[str, ...]:
        if name in GROUPS:
            return GROUPS[name]
        if name == "whole_body":
            return tuple(self.names.values())
        self.label(name)
        return (name,)

    def mask(self, name: str) -> Volume:
        """Boolean Volume of one organ, a group (``"tumour"``) or ``"whole_body"`` (all labels)."""
        xp = get_array_module(self.labels.data)
        lab = self.labels.data
        if name == "whole_body":
            m = lab > 0
        else:
            m = xp.zeros(lab.shape, dtype=bool)
            for n in self._resolve(name):
                m |= lab == self.label(n)
        return Volume(m, self.labels.affine, Meta(modality="SEG", series_description=name))

    def masks(self) -> dict[str, Volume]:
        """``{name: boolean Volume}`` for every organ, plus ``"tumour"`` and ``"whole_body"``."""
        out = {name: self.mask(name) for name in self.names.values()}
        for g in GROUPS:
            out[g] = self.mask(g)
        out["whole_body"] = self.mask("whole_body")
        return out

    def volume_ml(self, name: str) -> float:
        """Voxelised volume (mL) of an organ or group."""
        m = self.mask(name).data
        return float(m.sum()) * self.labels.voxel_volume_ml

    def value_table(self, values: Mapping[str, object], *, what: str, default=0.0,
                    defaults: Mapping[str, object] | None = None) -> dict[int, object]:
        """``{label: value}`` from ``{name or group: value}``; unknown names raise ParameterError.

        Labels start from ``defaults`` (organ names), else ``default``; then the
        groups of ``values`` (``"tumour"``) apply, then its organ names, which
        override groups.
        """
        valid = set(self.names.values()) | set(GROUPS)
        unknown = [n for n in values if n not in valid]
        if unknown:
            raise ParameterError(
                f"{what}: unknown organ name(s) {unknown}; valid are {', '.join(sorted(valid))}"
            )
        table = {lab: (defaults or {}).get(name, default) for lab, name in self.names.items()}
        for g, members in GROUPS.items():
            if g in values:
                for n in members:
                    table[self.label(n)] = values[g]
        for n, v in values.items():
            if n not in GROUPS:
                table[self.label(n)] = v
        return table


def _grid(voxel_size_mm: float, shape) -> tuple[tuple[int, int, int], np.ndarray]:
    if shape is None:
        shape = tuple(int(math.ceil(f / voxel_size_mm - 1e-9)) for f in FOV_MM)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ParameterError(f"mouse_phantom: shape must be three positive integers, got {shape}")
    aff = np.diag([voxel_size_mm, voxel_size_mm, voxel_size_mm, 1.0])
    aff[:3, 3] = [-(n - 1) / 2.0 * voxel_size_mm for n in shape]  # grid centred on the body centre
    return shape, aff


def _paint_ellipsoid(lab: np.ndarray, e: Ellipsoid, value: int, aff: np.ndarray, vox: float) -> None:
    """Set ``lab`` to ``value`` at the voxels whose centre lies inside ``e``.

    Works on the ellipsoid's bounding box only.  (Sub-voxel majority voting was
    tried: it does not bring the voxelised volumes closer to the analytic ones.)
    """
    sl = []
    axes = []
    for ax in range(3):
        c, a = e.centre_mm[ax], e.semi_axes_mm[ax]
        lo = max(int(math.floor((c - a - aff[ax, 3]) / vox)) - 1, 0)
        hi = min(int(math.ceil((c + a - aff[ax, 3]) / vox)) + 2, lab.shape[ax])
        if hi <= lo:
            return
        sl.append(slice(lo, hi))
        axes.append(aff[ax, 3] + vox * np.arange(lo, hi))
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    block = lab[tuple(sl)]
    block[e.contains(x, y, z)] = value


def mouse_phantom(*, voxel_size_mm: float = 0.5, shape: tuple[int, int, int] | None = None,
                  device: str = "cpu") -> Phantom:
    """Build the analytic mouse phantom.

    Parameters
    ----------
    voxel_size_mm : float
        Isotropic voxel size in mm (0.5 mm gives a 60 x 48 x 180 grid).
    shape : tuple of int, optional
        Grid shape; default covers a 30 x 24 x 90 mm field of view.  The grid is
        always centred on the body centre (the world origin).
    device : {"cpu", "gpu"}
        Where the label array lives.

    Returns
    -------
    Phantom

    Examples
    --------
    >>> ph = mouse_phantom()
    >>> ph.labels.shape, ph.names[4]
    ((60, 48, 180), 'liver')
    """
    if not (voxel_size_mm > 0 and math.isfinite(voxel_size_mm)):
        raise ParameterError(f"mouse_phantom: voxel_size_mm must be a positive number of mm, got {voxel_size_mm!r}")
    shape, aff = _grid(float(voxel_size_mm), shape)
    lab = np.zeros(shape, dtype=np.int16)
    _paint_ellipsoid(lab, _BODY, 1, aff, voxel_size_mm)
    names = {1: "body"}
    shapes = {"body": (_BODY,)}
    analytic = {}
    for value, name, ells in _ORGANS:
        for e in ells:
            _paint_ellipsoid(lab, e, value, aff, voxel_size_mm)
        names[value] = name
        shapes[name] = ells
        analytic[name] = sum(e.volume_ml for e in ells)
    analytic["tumour_rim"] -= analytic["tumour_core"]
    labels = Volume(to_device(lab, device), aff, Meta(modality="SEG", series_description="mouse phantom labels"))
    labels.meta.extra["label_names"] = dict(names)
    return Phantom(labels=labels, names=names, shapes=shapes, analytic_volumes_ml=analytic)


def _check_phantom(phantom, what: str) -> None:
    if not isinstance(phantom, Phantom):
        raise ParameterError(f"{what}: phantom must be an invivo.synth.Phantom, got {type(phantom).__name__}")


def _paint(phantom: Phantom, table: Mapping[int, object], n_t: int):
    """Array (I, J, K[, T]) with ``table[label]`` (a float or a length-T array) in each label; 0 in air."""
    xp = get_array_module(phantom.labels.data)
    n_lab = max(phantom.names) + 1
    lut = np.zeros((n_lab, n_t), dtype=np.float64)
    for lab, v in table.items():
        lut[lab] = np.broadcast_to(np.asarray(v, dtype=np.float64), (n_t,))
    lut = xp.asarray(lut)  # small table: host -> device once
    out = lut[phantom.labels.data.astype(xp.intp)]
    return out[..., 0] if n_t == 1 else out


# --------------------------------------------------------------------------- PET
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(64)


def _frame_average(fun: Callable, t0: float, dur: float, lam: float) -> float:
    """(1/dur) * integral over [t0, t0+dur] of fun(t) * exp(-lam t) dt (Gauss-Legendre, 64 nodes)."""
    t = t0 + dur * (_GL_NODES + 1.0) / 2.0
    f = np.asarray(fun(t), dtype=np.float64)
    if f.shape != t.shape:
        f = np.broadcast_to(f, t.shape)
    return float(np.sum(_GL_WEIGHTS * f * np.exp(-lam * t)) / 2.0)


def render_pet(
    phantom: Phantom,
    *,
    percent_id_per_g: Mapping[str, float | Callable],
    injected_activity_bq: float,
    isotope: str = "89Zr",
    injection_datetime: datetime | None = None,
    scan_delay_s: float,
    frame_starts_s=None,
    frame_durations_s=None,
    weight_kg: float = 0.025,
    decay_correction: str = "START",
    noise: float | None = None,
    seed: int = 0,
    radiopharmaceutical: str | None = None,
    subject_id: str = "mouse01",
    sex: str | None = "F",
    strain: str | None = "C57BL/6",
    height_m: float | None = None,
) -> tuple[Volume, dict]:
    """Render a PET activity-concentration image (Bq/mL) of the phantom.

    Parameters
    ----------
    phantom : Phantom
    percent_id_per_g : dict of str to float or callable
        True uptake in %ID/g per organ (or group, ``"tumour"``); organs not named
        get 0.  A callable ``f(t_s)`` gives %ID/g at ``t_s`` seconds after injection
        (NumPy array in, array out), for dynamic scans.  %ID/g is decay corrected:
        the fraction of the injected activity per gram, whatever the time.
    injected_activity_bq : float
        Injected activity (Bq) at ``injection_datetime``.
    isotope : str
        Radionuclide (any spelling :func:`invivo.isotopes.lookup` accepts).
    injection_datetime : datetime, optional
        Default ``DEFAULT_INJECTION_DATETIME``.
    scan_delay_s : float
        Scan start (series start) after injection, seconds.
    frame_starts_s, frame_durations_s : sequence of float, optional
        Frame timing in seconds from the series start.  Default one static frame of
        600 s.  More than one frame gives a 4D Volume.
    weight_kg : float
        Body weight in kg (a mouse: ~0.025).
    decay_correction : {"START", "ADMIN", "NONE"}
        Decay reference of the stored values: the series start, the injection, or
        none (the mean physical concentration during each frame).
    noise : float, optional
        Relative standard deviation of multiplicative Gaussian noise (0.1 = 10 %).
        The noise differs between CPU and GPU for the same seed.
    seed : int
        Noise seed.
    radiopharmaceutical, subject_id, sex, strain, height_m
        Written into the metadata.

    Returns
    -------
    volume : Volume
        float64 Bq/mL (Units ``BQML``) with the tracer, subject (species "mouse"),
        series datetime, decay correction, frame timing, and the QIBA decay
        reference (``reference_activity_bq``, ``suv_bw_factor``, shape (K, T)).
    truth : dict
        ``percent_id_per_g``, ``bq_per_ml`` (the noise-free stored value) and
        ``suv_bw`` per organ (floats for one frame, arrays of shape (T,) for a
        dynamic scan), ``reference_activity_bq`` (the injected activity decayed to
        the decay reference, Bq; per frame for NONE), ``decay_reference_datetime``
        (None for NONE), ``weight_g`` and ``noise_free`` (the array before noise).

    Notes
    -----
    With A_inj the injected activity, lambda = ln 2 / T1/2 and a frame from t0 to
    t0 + D (seconds after injection), the physical mean concentration is
    ``C_phys = (1/D) int f(t)/100 * A_inj * exp(-lambda t) dt`` (1 g = 1 mL).
    START and ADMIN store ``C_phys * exp(lambda t0) * lambda D / (1 - exp(-lambda D))
    * exp(-lambda (t0 - t_ref))``: for constant f exactly ``f/100 * A_ref`` with
    ``A_ref = A_inj exp(-lambda t_ref)``.  NONE stores ``C_phys``.  The true %ID/g
    of a frame is the decay-weighted frame mean of f.  SUVbw = C / A_ref * W(g);
    for NONE A_ref is the activity at each frame start (QIBA).

    Examples
    --------
    >>> ph = mouse_phantom(voxel_size_mm=1.0)
    >>> pet, truth = render_pet(ph, percent_id_per_g={"liver": 20.0}, injected_activity_bq=3.7e6,
    ...                         scan_delay_s=86400.0)
    >>> round(truth["suv_bw"]["liver"], 6)
    5.0
    """
    _check_phantom(phantom, "render_pet")
    iso = lookup(isotope)
    lam = math.log(2.0) / iso.half_life_s
    if not (injected_activity_bq > 0 and math.isfinite(injected_activity_bq)):
        raise ParameterError(
            f"render_pet: injected_activity_bq must be a positive number of Bq, got {injected_activity_bq!r}"
        )
    if not (weight_kg > 0 and weight_kg < 5):
        raise ParameterError(
            f"render_pet: weight_kg={weight_kg!r} is not a plausible animal weight in kg (a mouse is ~0.025)"
        )
    if scan_delay_s < 0:
        raise ParameterError(f"render_pet: scan_delay_s must be >= 0 (seconds after injection), got {scan_delay_s!r}")
    decay = str(decay_correction).upper()
    if decay not in ("START", "ADMIN", "NONE"):
        raise ParameterError(
            f"render_pet: decay_correction must be one of START, ADMIN, NONE; got {decay_correction!r}"
        )
    if frame_starts_s is None:
        if frame_durations_s is not None and len(frame_durations_s) != 1:
            raise ParameterError("render_pet: frame_durations_s given without frame_starts_s")
        starts = (0.0,)
        durs = tuple(float(d) for d in frame_durations_s) if frame_durations_s is not None else (600.0,)
    else:
        if frame_durations_s is None or len(frame_durations_s) != len(frame_starts_s):
            raise ParameterError("render_pet: frame_durations_s must give one duration (s) per frame start")
        starts = tuple(float(s) for s in frame_starts_s)
        durs = tuple(float(d) for d in frame_durations_s)
    if any(d <= 0 for d in durs) or any(s < 0 for s in starts):
        raise ParameterError(f"render_pet: frame starts must be >= 0 and durations > 0 s; got {starts}, {durs}")
    n_t = len(starts)
    inj = injection_datetime or DEFAULT_INJECTION_DATETIME
    series_dt = inj + timedelta(seconds=float(scan_delay_s))
    a_inj = float(injected_activity_bq)
    weight_g = float(weight_kg) * 1000.0

    t0 = float(scan_delay_s) + np.asarray(starts)
    d = np.asarray(durs)
    mean_decay = np.exp(-lam * t0) * -np.expm1(-lam * d) / (lam * d)  # (1/D) int exp(-lam t) dt
    if decay == "START":
        a_ref = np.full(n_t, a_inj * math.exp(-lam * float(scan_delay_s)))
        ref_dt = series_dt
    elif decay == "ADMIN":
        a_ref = np.full(n_t, a_inj)
        ref_dt = inj
    else:
        a_ref = a_inj * np.exp(-lam * t0)
        ref_dt = None

    table = phantom.value_table(percent_id_per_g, what="render_pet percent_id_per_g")
    pid = {}
    conc = {}
    for lab, f in table.items():
        if callable(f):
            phys = np.array([_frame_average(lambda t: np.asarray(f(t)) / 100.0 * a_inj, t0[i], d[i], lam)
                             for i in range(n_t)])
        else:
            phys = float(f) / 100.0 * a_inj * mean_decay
        phys = np.broadcast_to(np.asarray(phys, dtype=np.float64), (n_t,))
        p = phys / (a_inj * mean_decay) * 100.0  # decay-weighted frame mean of %ID/g
        if decay == "NONE":
            c = phys.copy()
        elif callable(f):
            c = phys / mean_decay * (a_ref / a_inj)
        else:
            c = np.full(n_t, float(f) / 100.0) * a_ref  # exactly the formula, no round trip through exp
            p = np.full(n_t, float(f))
        pid[lab] = p
        conc[lab] = c
    clean = _paint(phantom, conc, n_t)
    data = clean
    if noise:
        if noise < 0:
            raise ParameterError(f"render_pet: noise is a relative standard deviation >= 0, got {noise!r}")
        xp = get_array_module(clean)
        rng = xp.random.default_rng(seed)
        data = clean * (1.0 + float(noise) * rng.standard_normal(clean.shape))

    n_k = phantom.labels.shape[2]
    iso_name = iso.name
    meta = Meta(
        modality="PT",
        units="BQML",
        frame_start_s=starts,
        frame_duration_s=durs,
        tracer=Tracer(
            radiopharmaceutical=radiopharmaceutical or f"{iso_name}-tracer",
            isotope=iso_name,
            half_life_s=iso.half_life_s,
            injected_activity_bq=a_inj,
            injection_datetime=inj,
        ),
        subject=Subject(id=subject_id, weight_kg=float(weight_kg), height_m=height_m, sex=sex, species="mouse",
                        strain=strain),
        decay_correction=decay,
        series_datetime=series_dt,
        acquisition_datetime=series_dt + timedelta(seconds=starts[0]),
        reference_activity_bq=np.tile(a_ref, (n_k, 1)),
        suv_bw_factor=np.tile(weight_g / a_ref, (n_k, 1)),
        series_description="synthetic mouse PET",
        source={"synth": "invivo.synth.render_pet", "noise": noise, "seed": seed},
    )
    vol = Volume(data, phantom.labels.affine, meta)

    def per_organ(arrs):
        return {phantom.names[lab]: (float(v[0]) if n_t == 1 else np.asarray(v)) for lab, v in arrs.items()}

    suv = {lab: conc[lab] / a_ref * weight_g for lab in conc}
    truth = {
        "percent_id_per_g": per_organ(pid),
        "bq_per_ml": per_organ(conc),
        "suv_bw": per_organ(suv),
        "reference_activity_bq": float(a_ref[0]) if (n_t == 1 or decay != "NONE") else a_ref.copy(),
        "decay_reference_datetime": ref_dt,
        "weight_g": weight_g,
        "noise_free": clean,
    }
    return vol, truth


# --------------------------------------------------------------------------- MR
#: Proton density (arbitrary units) at 7 T, gradient echo, per organ.
DEFAULT_S0 = {"body": 800.0, "lungs": 150.0, "heart": 900.0, "liver": 700.0, "spleen": 850.0, "kidneys": 1000.0,
              "bladder": 1200.0, "bone": 150.0, "tumour_rim": 1000.0, "tumour_core": 1100.0}
#: R2* (1/s) at 7 T per organ (order of magnitude of published mouse values).
DEFAULT_R2STAR_PER_S = {"body": 45.0, "lungs": 600.0, "heart": 60.0, "liver": 130.0, "spleen": 110.0,
                        "kidneys": 50.0, "bladder": 8.0, "bone": 400.0, "tumour_rim": 70.0, "tumour_core": 30.0}
#: CT numbers (HU) per organ; air outside the body is -1000.
DEFAULT_HU = {"body": 40.0, "lungs": -700.0, "heart": 40.0, "liver": 60.0, "spleen": 50.0, "kidneys": 35.0,
              "bladder": 10.0, "bone": 700.0, "tumour_rim": 45.0, "tumour_core": 25.0}


def render_mr(
    phantom: Phantom,
    *,
    echo_times_s=(0.002, 0.004, 0.006, 0.008, 0.010, 0.012, 0.014, 0.016),
    s0: Mapping[str, float] | None = None,
    r2star_per_s: Mapping[str, float] | None = None,
    noise_sigma: float | None = None,
    seed: int = 0,
    field_t: float = 7.0,
    repetition_time_s: float = 0.05,
    flip_angle_deg: float = 20.0,
) -> tuple[Volume, dict]:
    """Render a multi-echo gradient-echo magnitude image ``S0 exp(-R2* TE)``.

    Parameters
    ----------
    phantom : Phantom
    echo_times_s : sequence of float, seconds
        Echo times (default 8 echoes, 2-16 ms).
    s0, r2star_per_s : dict of str to float, optional
        Per-organ S0 (a.u.) and R2* (1/s); names not given keep ``DEFAULT_S0`` /
        ``DEFAULT_R2STAR_PER_S``.  Air has S0 = 0.
    noise_sigma : float, optional
        Standard deviation of the Gaussian noise in each of the real and imaginary
        channels; the magnitude is then Rician (Rayleigh in air).
    seed : int
        Noise seed (noise differs between CPU and GPU).
    field_t, repetition_time_s, flip_angle_deg : float
        Written into the metadata (tesla, seconds, degrees).

    Returns
    -------
    volume : Volume
        float64 (I, J, K, E) magnitude (or (I, J, K) for one echo).
    truth : dict
        ``s0`` and ``r2star_per_s`` per organ, ``s0_map`` and ``r2star_map``
        (arrays (I, J, K)), ``noise_free`` and ``noise_sigma``.

    Examples
    --------
    >>> ph = mouse_phantom(voxel_size_mm=1.0)
    >>> mr, truth = render_mr(ph, r2star_per_s={"liver": 200.0})
    >>> mr.meta.echo_times_s[:2], truth["r2star_per_s"]["liver"]
    ((0.002, 0.004), 200.0)
    """
    _check_phantom(phantom, "render_mr")
    tes = tuple(float(t) for t in np.atleast_1d(echo_times_s))
    if not tes or any(not (t >= 0 and math.isfinite(t)) for t in tes):
        raise ParameterError(f"render_mr: echo_times_s must be non-negative seconds, got {echo_times_s!r}")
    if any(t > 1.0 for t in tes):
        raise ParameterError(f"render_mr: echo_times_s look like milliseconds ({tes}); give seconds")
    s0_t = phantom.value_table(s0 or {}, what="render_mr s0", defaults=DEFAULT_S0)
    r2_t = phantom.value_table(r2star_per_s or {}, what="render_mr r2star_per_s",
                               defaults=DEFAULT_R2STAR_PER_S)
    s0_map = _paint(phantom, s0_t, 1)
    r2_map = _paint(phantom, r2_t, 1)
    xp = get_array_module(s0_map)
    te = xp.asarray(np.asarray(tes))
    clean = s0_map[..., None] * xp.exp(-r2_map[..., None] * te)
    data = clean
    if noise_sigma:
        if noise_sigma < 0:
            raise ParameterError(f"render_mr: noise_sigma must be >= 0, got {noise_sigma!r}")
        rng = xp.random.default_rng(seed)
        re = clean + noise_sigma * rng.standard_normal(clean.shape)
        im = noise_sigma * rng.standard_normal(clean.shape)
        data = xp.sqrt(re * re + im * im)
    if len(tes) == 1:
        data, clean = data[..., 0], clean[..., 0]
    meta = Meta(
        modality="MR",
        echo_times_s=tes,
        magnetic_field_t=float(field_t),
        image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
        series_description="synthetic mouse multi-echo GRE",
        subject=Subject(id="mouse01", species="mouse"),
        source={"synth": "invivo.synth.render_mr", "noise_sigma": noise_sigma, "seed": seed},
        extra={"repetition_time_s": float(repetition_time_s), "flip_angle_deg": float(flip_angle_deg)},
    )
    truth = {
        "s0": {phantom.names[k]: float(v) for k, v in s0_t.items()},
        "r2star_per_s": {phantom.names[k]: float(v) for k, v in r2_t.items()},
        "s0_map": s0_map,
        "r2star_map": r2_map,
        "noise_free": clean,
        "noise_sigma": noise_sigma,
    }
    return Volume(data, phantom.labels.affine, meta), truth


# --------------------------------------------------------------------------- CT
def render_ct(phantom: Phantom, *, hu: Mapping[str, float] | None = None, noise_sd_hu: float | None = None,
              seed: int = 0) -> tuple[Volume, dict]:
    """Render a CT image in Hounsfield units (air -1000 outside the body).

    Parameters
    ----------
    phantom : Phantom
    hu : dict of str to float, optional
        Per-organ HU overriding ``DEFAULT_HU``.
    noise_sd_hu : float, optional
        Standard deviation (HU) of additive Gaussian noise.
    seed : int

    Returns
    -------
    volume : Volume
        float64 HU (Units ``HU``).
    truth : dict
        ``hu`` per organ and ``noise_free``.

    Examples
    --------
    >>> ct, truth = render_ct(mouse_phantom(voxel_size_mm=1.0))
    >>> truth["hu"]["bone"]
    700.0
    """
    _check_phantom(phantom, "render_ct")
    table = phantom.value_table(hu or {}, what="render_ct hu", defaults=DEFAULT_HU)
    xp = get_array_module(phantom.labels.data)
    clean = _paint(phantom, table, 1)
    clean = xp.where(phantom.labels.data == 0, -1000.0, clean)
    data = clean
    if noise_sd_hu:
        rng = xp.random.default_rng(seed)
        data = clean + float(noise_sd_hu) * rng.standard_normal(clean.shape)
    meta = Meta(modality="CT", units="HU", series_description="synthetic mouse CT",
                subject=Subject(id="mouse01", species="mouse"),
                source={"synth": "invivo.synth.render_ct", "noise_sd_hu": noise_sd_hu, "seed": seed})
    truth = {"hu": {phantom.names[k]: float(v) for k, v in table.items()}, "noise_free": clean}
    return Volume(data, phantom.labels.affine, meta), truth
