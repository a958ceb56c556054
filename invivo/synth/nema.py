"""A NEMA NU 4-2008-style digital image-quality phantom, supersampled spheres and a Gaussian scanner blur.

The phantom is the small-animal image-quality phantom of NEMA NU 4-2008, drawn
analytically (RAS+ mm, phantom axis along +S through the world origin)::

    z (mm)   -25 ........ -5 .................... 10 ............ 25
             | rod region | uniform region (30 mm diameter, 30 mm long) |
             | 5 rods,    |                       | cold inserts:  |
             | 20 mm long |                       | water and air, |
             | (1-5 mm)   |                       | 8 mm x 15 mm   |

* The five rods (diameters 1, 2, 3, 4, 5 mm) are 20 mm long, centred on a circle
  of 7 mm radius at 72 degree steps (the 1 mm rod at +A, then counter-clockwise
  seen from +S).  They hold the same activity concentration as the uniform region
  (in the real phantom they are filled from it); the solid acrylic around them is
  cold.
* The uniform region is a cylinder of 30 mm diameter and 30 mm length.
* The two cold inserts (water- and air-filled in the real phantom; both hold no
  activity here, and their 1 mm acrylic walls are not drawn) are cylinders of 8 mm
  diameter and 15 mm length in the far half of the uniform region, centred 7.5 mm
  to the right (water) and left (air) of the axis.

Every voxel holds the exact fraction of its volume inside each cylinder: the
in-plane fraction of a disk by ``supersample x supersample`` sub-samples per
pixel, the axial fraction exactly (the cylinders have flat ends), so the rendered
noise-free image before the blur is the voxel average of the true activity to the
supersampling error.  The image is then blurred by an isotropic Gaussian of
``fwhm_mm`` (:func:`gaussian_blur`), the scanner's resolution, and optionally
gets seeded Gaussian noise.  :func:`invivo.roi.nema_recovery` measures it the way
NEMA NU 4 does; :func:`invivo.roi.recovery_coefficients` does both.

:func:`sphere_phantom` renders a radial activity profile in a sphere (a uniform
sphere, or a tumour with a rim and a core) with ``supersample^3`` sub-samples per
voxel: the truth for :func:`invivo.roi.sphere_recovery` and
:func:`invivo.roi.rim_core_profile`.

All rendering and the blur run on the host (``scipy.ndimage``); ``device="gpu"``
moves the finished image to the GPU.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..backend import to_device
from ..errors import ParameterError
from ..roi import _number, _orthogonal
from ..volume import Meta, Volume

__all__ = ["nema_nu4_phantom", "sphere_phantom", "gaussian_blur", "NEMA_NU4_GEOMETRY", "FWHM_PER_SIGMA"]

#: FWHM = FWHM_PER_SIGMA x sigma for a Gaussian: 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: The geometry of :func:`nema_nu4_phantom` (mm; z along the phantom axis, +S).
#: ``*_voi_*`` are the NEMA NU 4 analysis volumes: the central 10 mm of the rods;
#: a 22.5 mm x 10 mm cylinder in the uniform region (placed in the 15 mm of it that
#: the cold inserts leave free, so that it meets no insert); 4 mm x 7.5 mm in the
#: middle of each cold insert.
NEMA_NU4_GEOMETRY = {
    "cylinder_diameter_mm": 30.0,
    "rod_z_mm": (-25.0, -5.0),
    "rod_ring_radius_mm": 7.0,
    "rod_voi_z_mm": (-20.0, -10.0),
    "uniform_z_mm": (-5.0, 25.0),
    "uniform_voi_diameter_mm": 22.5,
    "uniform_voi_z_mm": (-2.5, 7.5),
    "cold_diameter_mm": 8.0,
    "cold_z_mm": (10.0, 25.0),
    "cold_centres_mm": {"water": (7.5, 0.0), "air": (-7.5, 0.0)},
    "cold_voi_diameter_mm": 4.0,
    "cold_voi_z_mm": (13.75, 21.25),
}

#: Default activity concentration: 3.7 MBq in the ~20 mL phantom (NEMA NU 4).
DEFAULT_ACTIVITY_BQ_ML = 185e3


def _positive(value, what: str) -> float:
    return _number(value, what, "a positive finite number")


def _fwhm(value, what: str) -> float:
    """A Gaussian FWHM >= 0 mm (0: no blur)."""
    return _number(value, f"{what}: fwhm_mm", "a finite FWHM >= 0 mm", zero_ok=True)


def _in_disk(x_mm, y_mm, centre_mm, radius_mm: float):
    """Points (broadcast ``x_mm``, ``y_mm``) within ``radius_mm`` of ``centre_mm`` (x, y), boundary included."""
    return (x_mm - centre_mm[0]) ** 2 + (y_mm - centre_mm[1]) ** 2 <= radius_mm ** 2


def _in_range(z_mm, z_range_mm):
    """Points within ``[z0, z1]`` (1e-9 mm tolerance for rounding of grid coordinates)."""
    return (z_mm >= z_range_mm[0] - 1e-9) & (z_mm <= z_range_mm[1] + 1e-9)


def _supersample(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ParameterError(f"{what}: supersample must be a positive integer, got {value!r}")
    return int(value)


def _sub_offsets(step: float, s: int) -> np.ndarray:
    """Sub-sample offsets (mm) from a voxel centre: midpoints of ``s`` equal parts of the voxel."""
    return ((np.arange(s) + 0.5) / s - 0.5) * step


def _disk_fraction(x_mm: np.ndarray, y_mm: np.ndarray, centre_mm, radius_mm: float, step_mm: tuple[float, float],
                   supersample: int) -> np.ndarray:
    """Fraction of each pixel (centres ``x_mm`` x ``y_mm``) inside a disk, by sub-sampling.

    Only the disk's bounding box is sub-sampled; pixels outside it are 0.
    """
    out = np.zeros((x_mm.size, y_mm.size))
    cx, cy = float(centre_mm[0]), float(centre_mm[1])
    reach = radius_mm + max(step_mm)
    bi = np.nonzero(np.abs(x_mm - cx) <= reach)[0]
    bj = np.nonzero(np.abs(y_mm - cy) <= reach)[0]
    if bi.size == 0 or bj.size == 0:
        return out
    xs = (x_mm[bi, None] + _sub_offsets(step_mm[0], supersample)[None, :] - cx) ** 2  # (I, s)
    ys = (y_mm[bj, None] + _sub_offsets(step_mm[1], supersample)[None, :] - cy) ** 2  # (J, s)
    inside = xs[:, :, None, None] + ys[None, None, :, :] <= radius_mm * radius_mm  # (I, s, J, s)
    out[bi[0]:bi[-1] + 1, bj[0]:bj[-1] + 1] = inside.mean(axis=(1, 3))
    return out


def _slab_fraction(z_mm: np.ndarray, z_range_mm, step_mm: float) -> np.ndarray:
    """Exact fraction of each slice ``[z - step/2, z + step/2]`` inside ``[z0, z1]``."""
    lo = np.maximum(z_mm - step_mm / 2.0, z_range_mm[0])
    hi = np.minimum(z_mm + step_mm / 2.0, z_range_mm[1])
    return np.clip(hi - lo, 0.0, None) / step_mm


def _three(value, *, broadcast: bool = True) -> np.ndarray | None:
    """Three finite floats from ``value`` (one number too with ``broadcast``), or None."""
    try:
        v = np.asarray(value, dtype=np.float64)
        v = np.broadcast_to(v, (3,)).copy() if broadcast else v
    except (TypeError, ValueError):
        return None
    return v if v.shape == (3,) and np.all(np.isfinite(v)) else None


def _axis_centres(n: int, step: float) -> np.ndarray:
    return (np.arange(n) - (n - 1) / 2.0) * step


def gaussian_blur(volume: Volume, fwhm_mm: float, *, truncate: float = 5.0) -> Volume:
    """Blur an image with an isotropic 3D Gaussian (a scanner's resolution).

    Parameters
    ----------
    volume : Volume
        3D image (or 4D: each frame is blurred in 3D) on an orthogonal grid.
    fwhm_mm : float, mm
        Full width at half maximum of the Gaussian; 0 returns a copy.
    truncate : float
        Kernel half-width in standard deviations (``scipy.ndimage.gaussian_filter``).

    Returns
    -------
    Volume
        Same grid, device and dtype rule (float32 stays float32, else float64);
        zero is assumed outside the field of view.  ``meta.extra["blur_fwhm_mm"]``
        records the FWHM.

    Raises
    ------
    ParameterError
        A negative or non-finite FWHM, or a grid whose axes are not orthogonal.

    Notes
    -----
    Runs on the host (``scipy.ndimage.gaussian_filter``, sigma = FWHM / 2.3548 /
    voxel size per axis).  The kernel is the Gaussian sampled at voxel centres and
    renormalised: for sigma below about one voxel its variance differs slightly
    from sigma^2 (1 % at 0.64 voxel).

    Examples
    --------
    >>> img = Volume(np.pad(np.ones((1, 1, 1)), 10), np.eye(4))
    >>> out = gaussian_blur(img, 2.0)
    >>> round(float(out.data.sum()), 9)
    1.0
    """
    from scipy.ndimage import gaussian_filter

    if not isinstance(volume, Volume):
        raise ParameterError(f"gaussian_blur: volume must be an invivo.Volume, got {type(volume).__name__}")
    fwhm = _fwhm(fwhm_mm, "gaussian_blur")
    if not _orthogonal(volume.affine):
        raise ParameterError("gaussian_blur: the grid's axes are not orthogonal (a sheared affine); "
                             "resample onto an orthogonal grid first")
    dtype = volume.data.dtype if volume.data.dtype in (np.float32, np.float64) else np.float64
    data = to_device(volume.data, "cpu").astype(dtype, copy=True)  # host: scipy.ndimage.gaussian_filter
    if fwhm > 0:
        sigma = tuple(fwhm / FWHM_PER_SIGMA / v for v in volume.voxel_size_mm)
        if data.ndim == 4:
            sigma = sigma + (0.0,)
        data = gaussian_filter(data, sigma=sigma, mode="constant", cval=0.0, truncate=truncate)
    meta = volume.meta.copy()
    meta.extra["blur_fwhm_mm"] = fwhm
    return Volume(to_device(data, volume.device), volume.affine, meta)


def _noise(clean: np.ndarray, sd: float, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return clean + rng.normal(0.0, sd, size=clean.shape)


def _bool_volume(mask: np.ndarray, affine: np.ndarray, what: str, device: str) -> Volume:
    return Volume(to_device(mask, device), affine, Meta(modality="SEG", series_description=what))


def nema_nu4_phantom(*, voxel_size_mm: float = 0.5, fwhm_mm: float = 1.5,
                     activity_bq_ml: float = DEFAULT_ACTIVITY_BQ_ML,
                     rod_diameters_mm=(1.0, 2.0, 3.0, 4.0, 5.0), seed=None, noise_rel_sd: float = 0.0,
                     supersample: int = 16, device: str = "cpu") -> tuple[Volume, dict]:
    """Render the NEMA NU 4-2008 image-quality phantom as a scanner with a Gaussian resolution sees it.

    Parameters
    ----------
    voxel_size_mm : float, mm
        Isotropic voxel size.  The grid is centred on the phantom and extends
        ``max(2 mm, 5 sigma)`` beyond it, so the blur never meets the grid's edge.
    fwhm_mm : float, mm
        Scanner resolution: FWHM of the isotropic Gaussian blur (0: no blur).
    activity_bq_ml : float, Bq/mL
        Activity concentration of the uniform region and of the rods (they share
        it, as in the real phantom).  Default 185 kBq/mL (3.7 MBq in ~20 mL).
    rod_diameters_mm : sequence of float, mm
        Diameters of the hot rods (NEMA: 1-5 mm); up to five, each at most 6 mm
        (so that neighbours on the 7 mm ring do not touch).
    seed : int or numpy.random.Generator, optional
        Seed of the noise (ignored without noise).
    noise_rel_sd : float
        Standard deviation of additive white Gaussian noise, as a fraction of
        ``activity_bq_ml`` (the same everywhere, cold regions included); 0 for none.
    supersample : int
        In-plane sub-samples per voxel edge for the partial-volume fractions (the
        axial fractions are exact).
    device : {"cpu", "gpu"}
        Where the returned image and masks live.

    Returns
    -------
    image : Volume
        ``BQML`` PET image (modality ``PT``), float64.
    truth : dict
        ``activity_bq_ml``, ``fwhm_mm``, ``voxel_size_mm``, ``noise_rel_sd``,
        ``supersample``; ``noise_free`` (the blurred image before noise, host
        ndarray); ``geometry`` (:data:`NEMA_NU4_GEOMETRY` plus ``rods``, which
        :func:`invivo.roi.nema_recovery` reads); ``rods``: one dict per rod with
        ``diameter_mm``, ``centre_mm`` (x, y), ``z_mm`` and ``mask`` (a boolean
        Volume: voxel centres inside the rod); ``uniform_voi`` and ``cold_voi``
        (``{"water": ..., "air": ...}``): boolean Volumes of the NEMA analysis
        volumes.

    Raises
    ------
    ParameterError
        Non-positive sizes or activity, a negative FWHM or noise, more than five or
        too large rods.

    Examples
    --------
    >>> img, truth = nema_nu4_phantom(voxel_size_mm=1.0, fwhm_mm=0.0)
    >>> img.shape, [r["diameter_mm"] for r in truth["rods"]]
    ((35, 35, 55), [1.0, 2.0, 3.0, 4.0, 5.0])
    >>> img.world_coordinates([17, 17, 32]).tolist(), float(img.data[17, 17, 32]) == truth["activity_bq_ml"]
    ([0.0, 0.0, 5.0], True)
    """
    what = "nema_nu4_phantom"
    h = _positive(voxel_size_mm, f"{what}: voxel_size_mm")
    a = _positive(activity_bq_ml, f"{what}: activity_bq_ml (Bq/mL)")
    fwhm = _fwhm(fwhm_mm, what)
    noise = _number(noise_rel_sd, f"{what}: noise_rel_sd", ">= 0 (a fraction of activity_bq_ml)", zero_ok=True)
    s = _supersample(supersample, what)
    try:
        diameters = [float(d) for d in rod_diameters_mm]
    except (TypeError, ValueError):
        raise ParameterError(f"{what}: rod_diameters_mm must be a sequence of numbers (mm), "
                             f"got {rod_diameters_mm!r}") from None
    if not 1 <= len(diameters) <= 5:
        raise ParameterError(f"{what}: rod_diameters_mm must hold 1 to 5 diameters (NEMA: 1-5 mm), got {diameters}")
    if any(not (0 < d <= 6.0) for d in diameters):
        raise ParameterError(f"{what}: every rod diameter must be in (0, 6] mm (rods sit on a 7 mm ring), "
                             f"got {diameters}")

    g = NEMA_NU4_GEOMETRY
    radius = g["cylinder_diameter_mm"] / 2.0
    sigma = fwhm / FWHM_PER_SIGMA
    margin = max(2.0, 5.0 * sigma)
    n_xy = 2 * int(math.ceil((radius + margin) / h - 1e-9)) + 1
    half_len = (g["uniform_z_mm"][1] - g["rod_z_mm"][0]) / 2.0
    n_z = 2 * int(math.ceil((half_len + margin) / h - 1e-9)) + 1
    x = _axis_centres(n_xy, h)
    z = _axis_centres(n_z, h)
    aff = np.diag([h, h, h, 1.0])
    aff[:3, 3] = [x[0], x[0], z[0]]
    step = (h, h)

    uniform_xy = _disk_fraction(x, x, (0.0, 0.0), radius, step, s)
    act = uniform_xy[:, :, None] * _slab_fraction(z, g["uniform_z_mm"], h)[None, None, :]
    cold_frac = _slab_fraction(z, g["cold_z_mm"], h)
    for c in g["cold_centres_mm"].values():
        act -= _disk_fraction(x, x, c, g["cold_diameter_mm"] / 2.0, step, s)[:, :, None] * cold_frac[None, None, :]
    rod_frac = _slab_fraction(z, g["rod_z_mm"], h)
    rods = []
    xx, yy, zz = x[:, None, None], x[None, :, None], z[None, None, :]
    in_rod_z = (zz >= g["rod_z_mm"][0]) & (zz <= g["rod_z_mm"][1])
    for n, d in enumerate(diameters):
        ang = math.radians(90.0 + 72.0 * n)
        c = (g["rod_ring_radius_mm"] * math.cos(ang), g["rod_ring_radius_mm"] * math.sin(ang))
        act += _disk_fraction(x, x, c, d / 2.0, step, s)[:, :, None] * rod_frac[None, None, :]
        mask = _in_disk(xx, yy, c, d / 2.0) & in_rod_z
        rods.append({"diameter_mm": d, "centre_mm": c, "z_mm": g["rod_z_mm"],
                     "mask": _bool_volume(mask, aff, f"NEMA rod {d:g} mm", device)})
    np.clip(act, 0.0, 1.0, out=act)  # rounding of the insert subtraction
    act *= a

    meta = Meta(modality="PT", units="BQML", series_description="NEMA NU 4-2008 digital image-quality phantom")
    meta.extra["synthetic"] = {"phantom": "nema_nu4", "fwhm_mm": fwhm, "activity_bq_ml": a,
                               "noise_rel_sd": noise, "supersample": s}
    clean = gaussian_blur(Volume(act, aff, meta), fwhm)
    clean_data = clean.data
    data = _noise(clean_data, noise * a, seed) if noise > 0 else clean_data.copy()

    def cyl(centre, diameter, z_range):
        return _in_disk(xx, yy, centre, diameter / 2.0) & _in_range(zz, z_range)

    geometry = dict(g)
    geometry["rods"] = [{"diameter_mm": r["diameter_mm"], "centre_mm": r["centre_mm"]} for r in rods]
    truth = {
        "activity_bq_ml": a,
        "fwhm_mm": fwhm,
        "voxel_size_mm": h,
        "noise_rel_sd": noise,
        "supersample": s,
        "noise_free": clean_data,
        "geometry": geometry,
        "rods": rods,
        "uniform_voi": _bool_volume(cyl((0.0, 0.0), g["uniform_voi_diameter_mm"], g["uniform_voi_z_mm"]), aff,
                                    "NEMA uniform VOI", device),
        "cold_voi": {name: _bool_volume(cyl(c, g["cold_voi_diameter_mm"], g["cold_voi_z_mm"]), aff,
                                        f"NEMA {name} VOI", device)
                     for name, c in g["cold_centres_mm"].items()},
    }
    return Volume(to_device(data, device), aff, clean.meta), truth


def sphere_phantom(profile, *, radius_mm: float, voxel_size_mm=0.25, centre_mm=(0.0, 0.0, 0.0),
                   margin_mm: float = 2.0, supersample: int = 4, device: str = "cpu") -> tuple[Volume, dict]:
    """Render a radial activity profile inside a sphere, each voxel the mean of ``supersample^3`` sub-samples.

    Parameters
    ----------
    profile : float or callable
        The value inside the sphere: a constant, or a function of the distance
        from the centre ``r_mm`` (ndarray, mm) returning values of the same shape.
        Zero outside the sphere.  A tumour with a rim of uptake A over a core of
        uptake B, rim thickness t: ``lambda r: np.where(r > R - t, A, B)``.
    radius_mm : float, mm
        Sphere radius.
    voxel_size_mm : float or sequence of 3 float, mm
        Voxel size (anisotropic allowed).
    centre_mm : sequence of 3 float, mm
        Sphere centre in world (RAS+) mm; the grid is centred on the world origin,
        so an offset places the sphere off the voxel lattice.
    margin_mm : float, mm
        Space between the sphere and the grid's edge (leave room for a blur).
    supersample : int
        Sub-samples per voxel edge.
    device : {"cpu", "gpu"}
        Where the image and masks live.

    Returns
    -------
    image : Volume
        float64, modality ``PT``, units ``BQML`` (the profile's units).
    truth : dict
        ``radius_mm``, ``centre_mm``, ``supersample``; ``mask`` (boolean Volume:
        voxel centres inside the sphere) and ``depth_mm`` (host ndarray: the true
        distance of each voxel centre inward from the sphere's surface,
        ``radius - r``; negative outside).

    Examples
    --------
    >>> img, truth = sphere_phantom(1.0, radius_mm=2.0, voxel_size_mm=0.5)
    >>> vol_ml = float(img.data.sum()) * img.voxel_volume_ml
    >>> abs(vol_ml / (4 / 3 * np.pi * 8e-3) - 1) < 0.01
    True
    """
    what = "sphere_phantom"
    radius = _positive(radius_mm, f"{what}: radius_mm")
    vs = _three(voxel_size_mm)
    if vs is None or not np.all(vs > 0):
        raise ParameterError(f"{what}: voxel_size_mm must be positive (one or three values), got {voxel_size_mm!r}")
    c = _three(centre_mm, broadcast=False)
    if c is None:
        raise ParameterError(f"{what}: centre_mm must be three finite numbers, got {centre_mm!r}")
    margin = _number(margin_mm, f"{what}: margin_mm", ">= 0 mm", zero_ok=True)
    s = _supersample(supersample, what)
    if callable(profile):
        fun: Callable = profile
    else:
        try:
            value = float(profile)
        except (TypeError, ValueError):
            raise ParameterError(f"{what}: profile must be a number or a function of r_mm, got {profile!r}") from None
        fun = lambda r: np.full(np.shape(r), value)  # noqa: E731

    shape = tuple(2 * int(math.ceil((radius + abs(c[a]) + margin) / vs[a] - 1e-9)) + 1 for a in range(3))
    axes = [_axis_centres(shape[a], vs[a]) for a in range(3)]
    aff = np.diag([*vs, 1.0])
    aff[:3, 3] = [ax[0] for ax in axes]
    offs = [_sub_offsets(vs[a], s) for a in range(3)]
    dy2 = (axes[1][:, None] + offs[1][None, :] - c[1]) ** 2  # (J, s)
    dz2 = (axes[2][:, None] + offs[2][None, :] - c[2]) ** 2  # (K, s)
    yz2 = dy2[:, :, None, None] + dz2[None, None, :, :]  # (J, s, K, s)
    out = np.zeros(shape)
    for i in range(shape[0]):
        dx2 = (axes[0][i] + offs[0] - c[0]) ** 2  # (s,)
        r = np.sqrt(dx2[:, None, None, None, None] + yz2[None])  # (s, J, s, K, s)
        inside = r <= radius
        if not inside.any():
            continue
        vals = np.zeros(r.shape)
        got = np.asarray(fun(r[inside]), dtype=np.float64)
        try:
            vals[inside] = got
        except ValueError:
            raise ParameterError(f"{what}: profile(r_mm) must return one value per distance (shape "
                                 f"{(int(inside.sum()),)}), got shape {got.shape}") from None
        out[i] = vals.mean(axis=(0, 2, 4))
    rc = np.sqrt((axes[0][:, None, None] - c[0]) ** 2 + (axes[1][None, :, None] - c[1]) ** 2
                 + (axes[2][None, None, :] - c[2]) ** 2)
    meta = Meta(modality="PT", units="BQML", series_description="supersampled sphere phantom")
    meta.extra["synthetic"] = {"phantom": "sphere", "radius_mm": radius, "centre_mm": c.tolist(), "supersample": s}
    truth = {
        "radius_mm": radius,
        "centre_mm": tuple(float(v) for v in c),
        "supersample": s,
        "mask": _bool_volume(rc <= radius, aff, "sphere", device),
        "depth_mm": radius - rc,
    }
    return Volume(to_device(out, device), aff, meta), truth
