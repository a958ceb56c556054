"""The analytic mouse phantom rendered on any grid, moved by a known rigid transform.

Co-registration (:mod:`invivo.align`) is validated against images whose
misalignment is known exactly.  This module renders the ellipsoids of
:func:`invivo.synth.mouse_phantom` *analytically* (each voxel samples the
ellipsoids themselves, not the phantom's label grid) on an arbitrary grid, with the
object displaced by a rigid ``motion``, as MR, PET, SPECT or CT images::

    motion = random_rigid(np.random.default_rng(1), max_rotation_deg=10, max_translation_mm=3)
    mr, mr_truth = render_modality(ph, "MR", voxel_size_mm=0.25)
    pet, pet_truth = render_modality(ph, "PET", voxel_size_mm=0.5, motion=motion)
    # a perfect registration of pet onto mr recovers inverse(motion)

Conventions
-----------
All transforms are 4x4 matrices acting on RAS+ mm points (column vectors,
``x' = M @ [x, 1]``).  ``motion`` moves the *object*: the voxel at world point ``x``
shows the phantom point ``inverse(motion) @ x``.  A moved image keeps the plain,
axis-aligned grid affine; the displacement lives in the data, so a registration has
to find it.  The transform that maps a point of the moved image back onto the
unmoved one (the registration's answer for "moved -> unmoved") is ``inv(motion)``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ..errors import GeometryError, ParameterError
from ..volume import Meta, Subject, Volume, check_affine
from .phantom import DEFAULT_HU, DEFAULT_R2STAR_PER_S, DEFAULT_S0, Ellipsoid, Phantom

__all__ = [
    "rigid_matrix",
    "random_rigid",
    "grid",
    "render_phantom",
    "render_modality",
    "body_points",
    "MODALITY_DEFAULTS",
    "PET_BQ_PER_ML",
    "SPECT_BQ_PER_ML",
    "MR_ECHO_TIME_S",
]

#: FWHM = FWHM_PER_SIGMA x sigma for a Gaussian: 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: Echo time (s) of the single-echo T2*-weighted MR image.
MR_ECHO_TIME_S = 0.003

#: PET activity concentration (Bq/mL) per organ: an antibody-like distribution
#: (liver high, tumour rim high with a poorly perfused core, bladder very high,
#: lungs and body low).  Magnitudes are those of a few MBq in a 25 g mouse.
PET_BQ_PER_ML = {"body": 20e3, "lungs": 8e3, "heart": 60e3, "liver": 150e3, "spleen": 90e3, "kidneys": 60e3,
                 "bladder": 400e3, "bone": 30e3, "tumour_rim": 120e3, "tumour_core": 15e3}

#: SPECT activity concentration (Bq/mL) per organ: a renally cleared tracer
#: (kidneys and bladder dominate, modest liver and tumour uptake).
SPECT_BQ_PER_ML = {"body": 10e3, "lungs": 5e3, "heart": 25e3, "liver": 40e3, "spleen": 30e3, "kidneys": 300e3,
                   "bladder": 600e3, "bone": 15e3, "tumour_rim": 50e3, "tumour_core": 8e3}


def _mr_values() -> dict[str, float]:
    return {n: DEFAULT_S0[n] * math.exp(-DEFAULT_R2STAR_PER_S[n] * MR_ECHO_TIME_S) for n in DEFAULT_S0}


#: Per-modality defaults of :func:`render_modality`: organ values, value outside the
#: phantom (``background``), ``supersample``, ``fwhm_mm`` (0: no blur), ``noise``
#: (its meaning differs per modality, see :func:`render_modality`), DICOM modality
#: and units.
MODALITY_DEFAULTS: dict[str, dict] = {
    "MR": {"values": _mr_values(), "background": 0.0, "supersample": 1, "fwhm_mm": 0.0, "noise": 0.02,
           "dicom_modality": "MR", "units": None, "blur_mode": "nearest"},
    "PET": {"values": PET_BQ_PER_ML, "background": 0.0, "supersample": 4, "fwhm_mm": 1.2, "noise": 0.05,
            "dicom_modality": "PT", "units": "BQML", "blur_mode": "constant"},
    "SPECT": {"values": SPECT_BQ_PER_ML, "background": 0.0, "supersample": 4, "fwhm_mm": 1.6, "noise": 0.08,
              "dicom_modality": "NM", "units": "BQML", "blur_mode": "constant"},
    "CT": {"values": dict(DEFAULT_HU), "background": -1000.0, "supersample": 2, "fwhm_mm": 0.2, "noise": 20.0,
           "dicom_modality": "CT", "units": "HU", "blur_mode": "nearest"},
}

# Voxels per slab of the renderer (float64 temporaries of 32 MB).
_SLAB_VOXELS = 1 << 22


# --------------------------------------------------------------------------- transforms
def _cos_sin_deg(angle_deg: float) -> tuple[float, float]:
    """cos and sin of an angle in degrees, exact for multiples of 90 degrees."""
    q, r = divmod(float(angle_deg), 90.0)
    if r == 0.0:
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[int(q) % 4]
    t = math.radians(angle_deg)
    return math.cos(t), math.sin(t)


def _vec3(v, what: str) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ParameterError(f"{what} must be three numbers, got {v!r}") from None
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise ParameterError(f"{what} must be three finite numbers, got {v!r}")
    return a


def _compose(r: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """4x4 of x' = R (x - c) + c + t."""
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + t
    return m


def rigid_matrix(rotation_deg=(0.0, 0.0, 0.0), translation_mm=(0.0, 0.0, 0.0), *,
                 centre_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A rigid transform of RAS+ mm points: ``x' = R (x - c) + c + t``.

    Parameters
    ----------
    rotation_deg : sequence of 3 float, degrees
        Right-handed rotation angles about the R, A and S axes; ``R = Rz @ Ry @ Rx``
        (the rotation about R is applied first).  Multiples of 90 degrees give an
        exact integer matrix.
    translation_mm : sequence of 3 float, mm
        Translation ``t`` (R, A, S), applied after the rotation.
    centre_mm : sequence of 3 float, mm
        Centre of rotation ``c``; it moves to ``c + t``.

    Returns
    -------
    ndarray of shape (4, 4)
        float64, acting on column vectors ``[x, y, z, 1]`` in RAS+ mm.

    Examples
    --------
    >>> m = rigid_matrix((0, 0, 90), (1, 0, 0))
    >>> (m @ [1.0, 0.0, 0.0, 1.0])[:3].tolist()  # +R turns to +A, then moves 1 mm along R
    [1.0, 1.0, 0.0]
    """
    ax, ay, az = _vec3(rotation_deg, "rigid_matrix: rotation_deg")
    t = _vec3(translation_mm, "rigid_matrix: translation_mm")
    c = _vec3(centre_mm, "rigid_matrix: centre_mm")
    cx, sx = _cos_sin_deg(ax)
    cy, sy = _cos_sin_deg(ay)
    cz, sz = _cos_sin_deg(az)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    return _compose(rz @ ry @ rx, t, c)


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    while True:  # an isotropic Gaussian direction is uniform on the sphere
        v = rng.standard_normal(3)
        n = float(np.linalg.norm(v))
        if n > 1e-12:
            return v / n


def random_rigid(rng: np.random.Generator, *, max_rotation_deg: float = 20.0, max_translation_mm: float = 10.0,
                 centre_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A random rigid transform of RAS+ mm points.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (``np.random.default_rng(seed)``).
    max_rotation_deg : float, degrees
        The rotation is about a uniformly random axis (uniform on the sphere) by an
        angle uniform in ``[0, max_rotation_deg]`` (at most 180).
    max_translation_mm : float, mm
        The translation has a uniformly random direction and a length uniform in
        ``[0, max_translation_mm]``.
    centre_mm : sequence of 3 float, mm
        Centre of rotation ``c``: ``x' = R (x - c) + c + t``.

    Returns
    -------
    ndarray of shape (4, 4)
        float64 rigid matrix.

    Examples
    --------
    >>> m = random_rigid(np.random.default_rng(0), max_rotation_deg=10.0, max_translation_mm=2.0)
    >>> angle = np.degrees(np.arccos((np.trace(m[:3, :3]) - 1.0) / 2.0))
    >>> bool(angle <= 10.0 and np.linalg.norm(m[:3, 3]) <= 2.0)
    True
    """
    if not isinstance(rng, np.random.Generator):
        raise ParameterError(
            f"random_rigid: rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    if not (0.0 <= max_rotation_deg <= 180.0):
        raise ParameterError(f"random_rigid: max_rotation_deg must be in [0, 180] degrees, got {max_rotation_deg!r}")
    if not (0.0 <= max_translation_mm < math.inf):
        raise ParameterError(f"random_rigid: max_translation_mm must be a finite length >= 0 mm, got "
                             f"{max_translation_mm!r}")
    c = _vec3(centre_mm, "random_rigid: centre_mm")
    axis = _unit_vector(rng)
    theta = math.radians(rng.uniform(0.0, float(max_rotation_deg)))
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    r = np.eye(3) + math.sin(theta) * k + (1.0 - math.cos(theta)) * (k @ k)  # Rodrigues
    t = _unit_vector(rng) * rng.uniform(0.0, float(max_translation_mm))
    return _compose(r, t, c)


def _check_motion(motion, what: str) -> np.ndarray:
    """The motion as a float64 4x4 rigid matrix (identity for None)."""
    if motion is None:
        return np.eye(4)
    try:
        m = np.array(motion, dtype=np.float64)
    except (TypeError, ValueError):
        raise ParameterError(f"{what}: motion must be a 4x4 rigid matrix (RAS mm), got {motion!r}") from None
    if m.shape != (4, 4):
        raise ParameterError(f"{what}: motion must be a 4x4 rigid matrix (RAS mm), got shape {m.shape}")
    if not np.all(np.isfinite(m)) or not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=0.0):
        raise ParameterError(f"{what}: motion must be finite with last row [0, 0, 0, 1], got {m[3].tolist()}")
    r = m[:3, :3]
    if not np.allclose(r.T @ r, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
        raise ParameterError(
            f"{what}: motion is not rigid (its 3x3 block must be a rotation: orthonormal, det +1); "
            f"singular values {np.round(np.linalg.svd(r, compute_uv=False), 6).tolist()}"
        )
    return m


def _rigid_inverse(m: np.ndarray) -> np.ndarray:
    """Inverse of a rigid matrix, exact for integer rotations (R^T, -R^T t)."""
    inv = np.eye(4)
    inv[:3, :3] = m[:3, :3].T
    inv[:3, 3] = -(m[:3, :3].T @ m[:3, 3])
    return inv


# --------------------------------------------------------------------------- grid
def _voxel3(voxel_size_mm, what: str) -> np.ndarray:
    try:
        v = np.broadcast_to(np.asarray(voxel_size_mm, dtype=np.float64), (3,)).copy()
    except (TypeError, ValueError):
        raise ParameterError(f"{what}: voxel_size_mm must be a number or three numbers of mm, "
                             f"got {voxel_size_mm!r}") from None
    if not np.all(np.isfinite(v) & (v > 0)):
        raise ParameterError(f"{what}: voxel_size_mm must be positive mm, got {voxel_size_mm!r}")
    return v


def grid(voxel_size_mm, *, fov_mm=(40.0, 36.0, 100.0),
         centre_mm=(0.0, 0.0, 0.0)) -> tuple[tuple[int, int, int], np.ndarray]:
    """An axis-aligned RAS+ grid covering a field of view.

    Parameters
    ----------
    voxel_size_mm : float or sequence of 3 float, mm
        Voxel size (isotropic, or along i = R, j = A, k = S).
    fov_mm : sequence of 3 float, mm
        Field of view along R, A, S; the grid has ``ceil(fov / voxel)`` voxels per
        axis (so it covers at least the field of view).
    centre_mm : sequence of 3 float, mm
        The grid is centred here (the mean of its voxel centres).

    Returns
    -------
    shape : tuple of 3 int
    affine : ndarray of shape (4, 4)
        Voxel ``(i, j, k)`` -> RAS+ mm, diagonal voxel sizes.

    Examples
    --------
    >>> shape, aff = grid(0.5, fov_mm=(30.0, 24.0, 90.0))
    >>> shape, float(aff[0, 3])
    ((60, 48, 180), -14.75)
    """
    v = _voxel3(voxel_size_mm, "grid")
    fov = _vec3(fov_mm, "grid: fov_mm")
    if not np.all(fov > 0):
        raise ParameterError(f"grid: fov_mm must be positive mm, got {fov_mm!r}")
    c = _vec3(centre_mm, "grid: centre_mm")
    shape = tuple(int(math.ceil(f / s - 1e-9)) for f, s in zip(fov, v))
    aff = np.diag([*v, 1.0])
    aff[:3, 3] = c - (np.asarray(shape) - 1) / 2.0 * v
    return shape, aff  # type: ignore[return-value]


# --------------------------------------------------------------------------- renderer
def _check_phantom(phantom, what: str) -> None:
    if not isinstance(phantom, Phantom):
        raise ParameterError(f"{what}: phantom must be an invivo.synth.Phantom, got {type(phantom).__name__}")


def _check_shape(shape, what: str) -> tuple[int, int, int]:
    try:
        s = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise ParameterError(f"{what}: shape must be three positive integers, got {shape!r}") from None
    if len(s) != 3 or min(s) < 1 or any(float(a) != b for a, b in zip(shape, s)):
        raise ParameterError(f"{what}: shape must be three positive integers, got {shape!r}")
    return s  # type: ignore[return-value]


def _check_supersample(supersample, what: str) -> int:
    if isinstance(supersample, bool) or not isinstance(supersample, (int, np.integer)) or not 1 <= supersample <= 16:
        raise ParameterError(f"{what}: supersample must be an integer from 1 to 16 (sub-points per voxel axis), "
                             f"got {supersample!r}")
    return int(supersample)


def _index_box(e: Ellipsoid, b_inv: np.ndarray, b: np.ndarray, shape) -> list[tuple[int, int]] | None:
    """Index ranges [lo, hi) per axis holding every voxel a sub-point of which can lie in ``e``."""
    c = np.asarray(e.centre_mm, dtype=np.float64)
    a = np.asarray(e.semi_axes_mm, dtype=np.float64)
    centre = b_inv @ (c - b)
    half = np.sqrt(((b_inv * a[None, :]) ** 2).sum(axis=1))  # exact half-extents of the image of the ellipsoid
    box = []
    for ax in range(3):
        lo = max(int(math.floor(centre[ax] - half[ax] - 0.5)) - 1, 0)
        hi = min(int(math.ceil(centre[ax] + half[ax] + 0.5)) + 2, shape[ax])
        if hi <= lo:
            return None
        box.append((lo, hi))
    return box


def _inside(e: Ellipsoid, bmat: np.ndarray, b: np.ndarray, idx: list[np.ndarray]) -> np.ndarray:
    """Boolean array over the box spanned by ``idx``: the point ``bmat @ ijk + b`` lies in ``e``.

    ``idx`` are the (sub-)voxel index coordinates of the box along i, j, k.  Each
    phantom coordinate is built from the axes it depends on only (one 1D array when
    the grid is axis aligned), so for an axis-aligned grid it is computed exactly as
    :func:`invivo.synth.mouse_phantom` paints (``origin + voxel * index``).
    """
    shapes = ((-1, 1, 1), (1, -1, 1), (1, 1, -1))
    q_total = None
    for m in range(3):
        terms = [bmat[m, ax] * idx[ax].reshape(shapes[ax]) for ax in range(3) if bmat[m, ax] != 0.0]
        if not terms:
            p = np.full((1, 1, 1), b[m])
        elif len(terms) == 1:
            p = terms[0] + b[m]
        else:
            terms.sort(key=lambda t: t.size)
            p = terms[0] + b[m]
            for t in terms[1:]:
                p = p + t
        q = ((p - e.centre_mm[m]) / e.semi_axes_mm[m]) ** 2
        q_total = q if q_total is None else q_total + q
    return q_total <= 1.0


def _render_table(phantom: Phantom, table: Mapping[int, float], *, affine: np.ndarray, shape, motion: np.ndarray,
                  supersample: int, background: float) -> np.ndarray:
    """Mean over the supersample^3 sub-points of each voxel of ``table[label]`` (background outside)."""
    n_lab = max(phantom.names) + 1
    lut = np.zeros(n_lab, dtype=np.float64)
    lut[0] = background
    for lab, v in table.items():
        lut[lab] = v
    lab_dtype = np.uint8 if n_lab <= 256 else np.int32
    # voxel index -> phantom (unmoved) mm:  inverse(motion) @ affine
    bfull = _rigid_inverse(motion) @ affine
    bmat, b = bfull[:3, :3], bfull[:3, 3]
    b_inv = np.linalg.inv(bmat)
    boxes = []
    for lab, name in phantom.names.items():  # painting order: body first, later labels overwrite
        for e in phantom.shapes[name]:
            box = _index_box(e, b_inv, b, shape)
            if box is not None:
                boxes.append((lab, e, box))

    s = supersample
    offsets = (np.arange(s) + 0.5) / s - 0.5  # sub-point positions inside a voxel, in voxels
    ni, nj, nk = shape
    slab = max(1, min(nk, _SLAB_VOXELS // (ni * nj)))
    out = np.empty(shape, dtype=np.float64)
    for k0 in range(0, nk, slab):
        k1 = min(nk, k0 + slab)
        acc = None
        lab_arr = np.empty((ni, nj, k1 - k0), dtype=lab_dtype)
        for oi in offsets:
            for oj in offsets:
                for ok in offsets:
                    lab_arr.fill(0)
                    for lab, e, ((i0, i1), (j0, j1), (kk0, kk1)) in boxes:
                        lo, hi = max(kk0, k0), min(kk1, k1)
                        if hi <= lo:
                            continue
                        idx = [np.arange(i0, i1) + oi, np.arange(j0, j1) + oj, np.arange(lo, hi) + ok]
                        np.copyto(lab_arr[i0:i1, j0:j1, lo - k0:hi - k0], lab, where=_inside(e, bmat, b, idx))
                    vals = lut[lab_arr]
                    if acc is None:
                        acc = vals
                    else:
                        acc += vals
        if s > 1:
            acc /= s ** 3
        out[:, :, k0:k1] = acc
    return out


def render_phantom(phantom: Phantom, values: Mapping[str, float], *, affine, shape, motion=None,
                   supersample: int = 1, background: float = 0.0) -> np.ndarray:
    """Render the phantom's ellipsoids analytically on any grid, optionally moved.

    Parameters
    ----------
    phantom : Phantom
        From :func:`invivo.synth.mouse_phantom`; only its ``names`` (painting order)
        and ``shapes`` (ellipsoids, RAS+ mm) are used, not its label grid.
    values : dict of str to float
        Value per organ name or group (``"tumour"``); organs not named get 0.
    affine : array_like of shape (4, 4)
        Voxel -> RAS+ mm of the output grid (any invertible affine, oblique too).
    shape : sequence of 3 int
        Output grid shape (I, J, K).
    motion : array_like of shape (4, 4), optional
        Rigid transform (RAS+ mm) that moves the *object*: the voxel at world point
        ``x`` shows the phantom point ``inverse(motion) @ x``.
    supersample : int
        Sub-points per voxel axis: each voxel is the mean over a regular
        ``supersample^3`` sub-grid (at ``(n + 0.5) / supersample - 0.5`` voxels from
        the centre) of the value of the organ containing each sub-point.  With 1 the
        voxel centre decides, exactly as :func:`mouse_phantom` paints its labels.
    background : float
        Value at points that lie in no ellipsoid (air).

    Returns
    -------
    ndarray of shape ``shape``
        float64.  A point takes the value of the last organ (in ``phantom.names``
        order: body, then organs) whose ellipsoid contains it (surface included).

    Notes
    -----
    Work is restricted to each ellipsoid's exact bounding box in index space and
    done in slabs along k of at most 4 M voxels, so memory stays near the output
    size plus ~200 MB whatever the grid.

    Examples
    --------
    >>> from invivo.synth import mouse_phantom
    >>> ph = mouse_phantom(voxel_size_mm=1.0)
    >>> names = {name: float(lab) for lab, name in ph.names.items()}
    >>> img = render_phantom(ph, names, affine=ph.labels.affine, shape=ph.labels.shape)
    >>> bool(np.array_equal(img, ph.labels.data))
    True
    """
    what = "render_phantom"
    _check_phantom(phantom, what)
    try:
        aff = check_affine(affine)
    except GeometryError as exc:
        raise ParameterError(f"{what}: affine: {exc}") from None
    shp = _check_shape(shape, what)
    m = _check_motion(motion, what)
    s = _check_supersample(supersample, what)
    if not isinstance(values, Mapping):
        raise ParameterError(f"{what}: values must be a dict of organ name -> value, got {type(values).__name__}")
    table = _float_table(phantom, values, what)
    if not math.isfinite(background):
        raise ParameterError(f"{what}: background must be a finite number, got {background!r}")
    return _render_table(phantom, table, affine=aff, shape=shp, motion=m, supersample=s, background=float(background))


def _float_table(phantom: Phantom, values: Mapping[str, float], what: str,
                 defaults: Mapping[str, float] | None = None) -> dict[int, float]:
    table = phantom.value_table(values, what=f"{what} values", default=0.0, defaults=defaults)
    out = {}
    for lab, v in table.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        if not math.isfinite(f):
            raise ParameterError(f"{what}: the value of {phantom.names[lab]!r} must be a finite number, got {v!r}")
        out[lab] = f
    return out


# --------------------------------------------------------------------------- modalities
def _nonneg(x, msg: str) -> float:
    try:
        f = float(x)
    except (TypeError, ValueError):
        f = math.nan
    if isinstance(x, bool) or not (0.0 <= f < math.inf):
        raise ParameterError(f"{msg}, got {x!r}")
    return f

def render_modality(phantom: Phantom, modality: str, *, voxel_size_mm, fov_mm=(40.0, 36.0, 100.0), motion=None,
                    fwhm_mm: float | None = None, noise: float | None = None, seed: int = 0,
                    supersample: int | None = None,
                    values: Mapping[str, float] | None = None) -> tuple[Volume, dict]:
    """Render the phantom, moved by ``motion``, as an MR, PET, SPECT or CT image.

    Parameters
    ----------
    phantom : Phantom
        From :func:`invivo.synth.mouse_phantom` (any voxel size: it is re-rendered).
    modality : {"MR", "PET", "SPECT", "CT"}
        What to render (see Notes).
    voxel_size_mm : float or sequence of 3 float, mm
        Voxel size of the output grid (:func:`grid`, centred on the world origin).
    fov_mm : sequence of 3 float, mm
        Field of view (R, A, S); default 40 x 36 x 100 mm around the 24 x 21 x 88 mm
        body.
    motion : array_like of shape (4, 4), optional
        Rigid transform (RAS+ mm) moving the object (see :func:`render_phantom`).
        Keep the moved body inside the field of view if totals matter.
    fwhm_mm : float, mm, optional
        FWHM of the isotropic Gaussian resolution; 0 for none.  Default per modality:
        MR 0, PET 1.2, SPECT 1.6, CT 0.2.
    noise : float, optional
        Noise level, 0 for none.  Default per modality: MR 0.02, PET 0.05,
        SPECT 0.08 (relative to the body level), CT 20 (HU); see Notes.
    seed : int
        Seed of ``np.random.default_rng`` for the noise.
    supersample : int, optional
        Sub-points per voxel axis (:func:`render_phantom`).  Default MR 1, PET 3,
        SPECT 3, CT 2.
    values : dict of str to float, optional
        Organ (or ``"tumour"``) values overriding the modality's defaults
        (``MODALITY_DEFAULTS[modality]["values"]``), in the modality's units.

    Returns
    -------
    volume : Volume
        float64 (I, J, K) on the axis-aligned grid (the displacement is in the data).
    truth : dict
        ``motion`` (4x4, identity when None), ``noise_free`` (the array before
        noise, after blur), ``values`` (organ -> value used), ``background``,
        ``fwhm_mm`` (0.0 when not blurred), ``supersample``, ``noise`` (the level
        used), ``noise_sd`` (the absolute noise scale: Rician sigma for MR, the sd
        at the body level for PET/SPECT, HU for CT; 0 without noise) and, for MR,
        ``echo_times_s``.

    Notes
    -----
    - **MR**: single-echo T2*-weighted gradient-echo magnitude
      ``S0 exp(-R2* TE)`` at TE = 3 ms from ``DEFAULT_S0`` and
      ``DEFAULT_R2STAR_PER_S`` (air 0); Rician noise: Gaussian noise of sigma =
      ``noise x`` (body signal) in the real and imaginary channels, then the
      magnitude.
    - **PET / SPECT**: activity concentration (Bq/mL, ``PET_BQ_PER_ML`` /
      ``SPECT_BQ_PER_ML``), blurred with ``scipy.ndimage.gaussian_filter`` (sigma =
      fwhm / 2.3548 / voxel size voxels, zero outside the field of view, so the
      total is kept while the activity stays inside), then Poisson-like Gaussian
      noise whose variance is proportional to the value:
      ``sd = noise x sqrt(body x max(value, 0))``, i.e. ``noise x body`` at the body
      level, relatively less in hot organs, none in air.  Noisy values may be
      negative.
    - **CT**: Hounsfield units from ``DEFAULT_HU``, air -1000, blurred (nearest
      edge), plus Gaussian noise of sd ``noise`` HU.

    Examples
    --------
    >>> from invivo.synth import mouse_phantom
    >>> ph = mouse_phantom()
    >>> m = rigid_matrix((0, 0, 10), (1.0, 0.0, 0.0))
    >>> ct, truth = render_modality(ph, "CT", voxel_size_mm=1.0, motion=m, noise=0, fwhm_mm=0)
    >>> ct.shape, ct.meta.units, float(ct.data.min()), truth["values"]["bone"]
    ((40, 36, 100), 'HU', -1000.0, 700.0)
    """
    what = "render_modality"
    _check_phantom(phantom, what)
    key = str(modality).upper()
    if key not in MODALITY_DEFAULTS:
        raise ParameterError(f"{what}: unknown modality {modality!r}; choose one of {', '.join(MODALITY_DEFAULTS)}")
    d = MODALITY_DEFAULTS[key]
    shape, aff = grid(voxel_size_mm, fov_mm=fov_mm)  # validates voxel size and fov
    vox = _voxel3(voxel_size_mm, what)
    m = _check_motion(motion, what)
    s = _check_supersample(d["supersample"] if supersample is None else supersample, what)
    fwhm = _nonneg(d["fwhm_mm"] if fwhm_mm is None else fwhm_mm,
                   f"{what}: fwhm_mm must be a finite FWHM >= 0 mm (0 for no blur)")
    level = _nonneg(d["noise"] if noise is None else noise, f"{what}: noise must be a finite level >= 0 (0 for none)")
    if values is not None and not isinstance(values, Mapping):
        raise ParameterError(f"{what}: values must be a dict of organ name -> value, got {type(values).__name__}")
    table = _float_table(phantom, values or {}, what, defaults=d["values"])
    background = d["background"]

    clean = _render_table(phantom, table, affine=aff, shape=shape, motion=m, supersample=s, background=background)
    if fwhm > 0:
        from scipy.ndimage import gaussian_filter

        sigma_vox = float(fwhm) / FWHM_PER_SIGMA / vox
        clean = gaussian_filter(clean, sigma=tuple(sigma_vox), mode=d["blur_mode"], truncate=4.0)

    by_name = {phantom.names[lab]: v for lab, v in table.items()}
    body = by_name.get("body", 0.0)
    ref = body if body > 0 else float(np.max(np.abs(clean)))  # level the relative noise refers to
    rng = np.random.default_rng(seed)
    data = clean
    noise_sd = 0.0
    if level > 0:
        if key == "MR":
            noise_sd = float(level) * ref
            re = clean + noise_sd * rng.standard_normal(clean.shape)
            im = noise_sd * rng.standard_normal(clean.shape)
            data = np.sqrt(re * re + im * im)
        elif key in ("PET", "SPECT"):
            noise_sd = float(level) * ref
            data = clean + float(level) * np.sqrt(ref * np.maximum(clean, 0.0)) * rng.standard_normal(clean.shape)
        else:  # CT: noise in HU
            noise_sd = float(level)
            data = clean + noise_sd * rng.standard_normal(clean.shape)

    meta = Meta(
        modality=d["dicom_modality"],
        units=d["units"],
        series_description=f"synthetic displaced mouse {key}",
        subject=Subject(id="mouse01", species="mouse"),
        source={"synth": "invivo.synth.render_modality", "modality": key, "noise": float(level), "seed": seed,
                "fwhm_mm": float(fwhm), "supersample": s},
    )
    if key == "MR":
        meta.echo_times_s = (MR_ECHO_TIME_S,)
        meta.magnetic_field_t = 7.0
        meta.image_type = ("ORIGINAL", "PRIMARY", "M", "ND")
    truth = {
        "motion": m,
        "noise_free": clean,
        "values": by_name,
        "background": background,
        "fwhm_mm": float(fwhm),
        "supersample": s,
        "noise": float(level),
        "noise_sd": noise_sd,
    }
    if key == "MR":
        truth["echo_times_s"] = (MR_ECHO_TIME_S,)
    return Volume(data, aff, meta), truth


# --------------------------------------------------------------------------- points
def body_points(phantom: Phantom, n: int, *, rng: np.random.Generator, margin_mm: float = 1.0) -> np.ndarray:
    """Points uniformly distributed inside the body, for target registration errors.

    Parameters
    ----------
    phantom : Phantom
    n : int
        Number of points.
    rng : numpy.random.Generator
        Source of randomness.
    margin_mm : float, mm
        The body ellipsoid's semi-axes are shrunk by this much first.

    Returns
    -------
    ndarray of shape (n, 3)
        RAS+ mm, in the unmoved phantom's frame (map them with ``motion`` to the
        moved image).

    Examples
    --------
    >>> from invivo.synth import mouse_phantom
    >>> pts = body_points(mouse_phantom(voxel_size_mm=1.0), 100, rng=np.random.default_rng(0))
    >>> pts.shape, bool(np.all(((pts / [11.0, 9.5, 43.0]) ** 2).sum(axis=1) <= 1.0))
    ((100, 3), True)
    """
    what = "body_points"
    _check_phantom(phantom, what)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ParameterError(f"{what}: n must be an integer >= 0, got {n!r}")
    if not isinstance(rng, np.random.Generator):
        raise ParameterError(f"{what}: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if "body" not in phantom.shapes or len(phantom.shapes["body"]) != 1:
        raise ParameterError(f"{what}: the phantom has no single 'body' ellipsoid")
    e = phantom.shapes["body"][0]
    a = np.asarray(e.semi_axes_mm, dtype=np.float64) - float(margin_mm)
    if not (margin_mm >= 0 and np.all(a > 0)):
        raise ParameterError(f"{what}: margin_mm must be >= 0 mm and below the smallest body semi-axis "
                             f"({min(e.semi_axes_mm)} mm), got {margin_mm!r}")
    v = rng.standard_normal((int(n), 3))
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)
    r = rng.uniform(0.0, 1.0, (int(n), 1)) ** (1.0 / 3.0)  # radius law of a uniform ball
    return np.asarray(e.centre_mm, dtype=np.float64) + a * (v * r)
