"""Rigid and affine registration by Mattes mutual information (SimpleITK's framework).

The recipe (SCIENCE.md, Co-registration): both images intensity-windowed (robust
percentiles, so that a hot bladder does not take every histogram bin), centred by
intensity moments (or the grid centres), a pyramid of smoothed, regridded images (3x,
1.5x and 1x the finest level's voxel size, smoothing in mm), several starting rotations
tried at the coarsest level and the best carried on, regular-step gradient descent on
sampled voxels at each level, and a final quasi-Newton pass (L-BFGS-B) at the finest
level with every masked voxel in the metric.  Sampling is seeded: the same inputs give
the same transform.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..backend import to_device
from ..errors import GeometryError, InvivoWarning, ParameterError
from ..volume import Volume
from .transforms import Transform, _F, to_sitk

__all__ = ["register", "Registration", "TRANSFORMS"]

log = logging.getLogger(__name__)
TRANSFORMS = ("rigid", "affine")


@dataclass
class Registration:
    """Result of :func:`register`.

    Attributes
    ----------
    transform : Transform
        Fixed-space point -> moving-space point (RAS mm; ITK's convention).
    metric : float
        Final Mattes mutual information (negative; lower is better) at full resolution.
    iterations : int
        Optimizer iterations over all levels and stages.
    quality : str
        ``"good"``, ``"check"`` (a warning was raised: look at the QC images) or
        ``"failed"`` (the result is not usable).
    overlap : float
        Fraction of the fixed image's foreground that maps inside the moving image.
    warnings : list of str
    starts : list of dict
        Each starting rotation tried (degrees about R, A, S), its coarse-level metric and
        drift; the close runners-up (within ``FINALIST_MARGIN`` of the best) also carry
        ``metric_next_level``, the metric after the next level, which picks among them.
    settings : dict
    elapsed_s : float
    stage_s : dict
        Wall time (s) of each stage: preparing the images, the starting rotations, the pyramid
        levels and the final pass.
    """

    transform: Transform
    metric: float
    iterations: int
    quality: str
    overlap: float
    warnings: list = field(default_factory=list)
    starts: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    stage_s: dict = field(default_factory=dict)
    fixed: Volume | None = field(default=None, repr=False)
    moving: Volume | None = field(default=None, repr=False)

    def resample(self, moving: Volume | None = None, **kwargs) -> Volume:
        """The moving image (or another image in its space) resampled onto the fixed grid."""
        from .resample import resample

        return resample(self.moving if moving is None else moving, self.fixed, self.transform, **kwargs)


# ---------------------------------------------------------------------- input checks
def _check_volume(v, name: str, *, allow_4d: bool = False) -> Volume:
    if not isinstance(v, Volume):
        raise ParameterError(f"{name} must be a Volume (load it with invivo.io.load), got {type(v).__name__}")
    if v.data.ndim == 4 and not allow_4d:
        hint = ("use invivo.align.register_dynamic for dynamic PET, or pass one frame/echo (volume.frame(i))"
                if name == "moving" else "pass one frame or echo (volume.frame(i)) or a summed image")
        raise ParameterError(f"{name} image is 4D {v.shape}: {hint}")
    if v.data.ndim != 3 or min(v.shape[:3]) < 2:
        raise ParameterError(f"{name} image must be 3D with at least 2 voxels along each axis, got shape {v.shape}")
    return v


def _world_box(shape, affine) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array(list(itertools.product(*[(-0.5, s - 0.5) for s in shape[:3]])))
    pts = corners @ affine[:3, :3].T + affine[:3, 3]
    return pts.min(axis=0), pts.max(axis=0)


def _window(arr: np.ndarray, name: str, percentiles) -> tuple[np.ndarray, float, float]:
    finite = np.isfinite(arr)
    vals = arr[finite]
    if vals.size == 0:
        raise ParameterError(f"{name} image has no finite values")
    lo_all, hi_all = float(vals.min()), float(vals.max())
    if not hi_all > lo_all:
        raise ParameterError(f"{name} image is constant ({lo_all:g} everywhere): nothing to register")
    # percentiles over a subsample (speed), of the voxels above the minimum (air/zero padding excluded)
    sub = vals[:: max(1, vals.size // 2_000_000)]
    fg = sub[sub > lo_all]
    lo, hi = np.percentile(fg if fg.size > 100 else sub, percentiles)
    if not hi > lo:
        lo, hi = lo_all, hi_all
    out = np.clip(np.where(finite, arr, lo), lo, hi).astype(np.float32)
    return out, float(lo), float(hi)


def _foreground(arr: np.ndarray) -> np.ndarray:
    """Otsu foreground of a windowed image (for overlap and quality checks)."""
    from ..relax.r2star import _otsu

    thr = _otsu(arr[:: max(1, arr.size // 2_000_000)].ravel())
    return arr > thr


# ---------------------------------------------------------------------- the registration
def _euler_from_matrix(m_lps: np.ndarray, centre_lps) -> "object":
    import SimpleITK as sitk

    tx = sitk.Euler3DTransform()
    tx.SetCenter([float(c) for c in centre_lps])
    tx.SetMatrix(m_lps[:3, :3].ravel().tolist())
    c = np.asarray(centre_lps, dtype=float)
    # x -> R (x - c) + c + t must equal M x: t = M c - c  (with M's translation)
    t = m_lps[:3, :3] @ c + m_lps[:3, 3] - c
    tx.SetTranslation(t.tolist())
    return tx


def _rotation_lps(rot_deg) -> np.ndarray:
    t = Transform.from_parameters(rotation_deg=rot_deg)
    return (_F @ t.matrix @ _F)[:3, :3]


#: Starts whose coarse metric is within this fraction of the best one's also go through the next level
#: (at most this many); the best there is kept
FINALIST_MARGIN = 0.05
MAX_FINALISTS = 3

#: Final pass (L-BFGS-B): convergence tests on the projected gradient and on the relative metric change
#: (``factor`` x machine epsilon)
FINAL_GRADIENT_TOLERANCE = 1e-5
FINAL_CONVERGENCE_FACTOR = 1e9


def _method(bins, sampling, seed, mask):
    """Mattes mutual information over ``sampling`` of the (masked) fixed voxels, linear interpolation."""
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(bins))
    if sampling >= 1.0:
        reg.SetMetricSamplingStrategy(reg.NONE)
    else:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        # SimpleITK reads seed 0 as "wall clock" (a different sample every run): shift ours by one
        reg.SetMetricSamplingPercentage(float(sampling), int(seed) + 1)
    if mask is not None:
        reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    return reg


def _regular_step(iterations: int, min_step: float, rate: float):
    """Regular-step gradient descent: ``rate`` mm first step, halved at each change of direction."""
    def configure(reg):
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=rate, minStep=min_step,
                                                     numberOfIterations=int(iterations), relaxationFactor=0.5,
                                                     gradientMagnitudeTolerance=1e-10)
    return configure


def _lbfgsb(iterations: int):
    """Quasi-Newton (L-BFGS-B, unbounded) over at most ``iterations`` iterations and twice as many metric
    evaluations.  It builds its own curvature model, so the unscaled parameters (radians and mm) do not
    matter: ITK's note that the optimizer ignores parameter scales is silenced."""
    def lbfgsb(reg):
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=FINAL_GRADIENT_TOLERANCE,
                                 numberOfIterations=int(iterations), maximumNumberOfCorrections=5,
                                 maximumNumberOfFunctionEvaluations=2 * int(iterations),
                                 costFunctionConvergenceFactor=FINAL_CONVERGENCE_FACTOR)
    lbfgsb.scaled = False  # no parameter scales (and ITK's note that it ignores them silenced)
    return lbfgsb


def register(fixed: Volume, moving: Volume, *, transform: str = "rigid", mask="auto", margin_mm: float = 2.0,
             init: str = "moments", initial: Transform | None = None, start_rotations_deg: float = 15.0,
             levels_mm=None, bins: int = 32, sampling: float = 0.5, iterations: int = 200,
             window_percentiles=(0.5, 99.5), final_pass: bool = True, seed: int = 0,
             threads: int | None = None, smooth_moving_voxels: float = 1.0, final_iterations: int = 100,
             max_start_drift_deg: float = 45.0) -> Registration:
    """Register ``moving`` to ``fixed`` by Mattes mutual information.

    Parameters
    ----------
    fixed : Volume
        3D reference image (typically the MR), RAS grid.
    moving : Volume
        3D image to align (PET, SPECT, CT or another MR).  Dynamic PET: see
        :func:`invivo.align.register_dynamic`.
    transform : {"rigid", "affine"}
        6 degrees of freedom, or 12 (rigid first, then affine).
    mask : Volume of bool, "auto" or None
        Region of the fixed image that drives the metric (on the fixed grid).  ``"auto"``
        (default): the fixed image's foreground (Otsu threshold, holes filled) grown by
        ``margin_mm`` -- without it, mutual information can gain by shrinking the body
        (affine) and spends most of its samples in air.  ``None``: every voxel.
    margin_mm : float
        Growth of the automatic mask (mm).
    init : {"moments", "geometry"}
        Starting translation: align the intensity centres of mass, or the grid centres.
    initial : Transform, optional
        Start from this transform instead (``init`` and the starting rotations are skipped).
    start_rotations_deg : float
        Besides no rotation, start from +/- this angle about each axis (7 starts, compared
        at the coarsest level; up to 3 that come within 5 % of the best go on to the next
        level, where the best is kept); 0 tries only the unrotated start.
    levels_mm : sequence of float, optional
        Voxel sizes (mm) of the pyramid levels, coarse to fine; both images are smoothed
        (sigma = half the level's voxel) and regridded onto each.  Default: the finest
        level at 2.5x the coarser image's voxel size, at most 1 mm (but never finer than
        that voxel), and two levels at 1.5x and 3x it.  With every voxel in the metric at
        the finest level the optimum is found to a few hundredths of a mm, at a fraction of
        the cost of the native grid (phantoms/validate_registration.py).
    bins : int
        Histogram bins of the mutual information.
    sampling : float
        Fraction of fixed voxels sampled at the finest level (random, seeded; coarser
        levels use at least 20,000 points).
    iterations : int
        Maximum optimizer iterations per level.
    window_percentiles : (float, float)
        Intensities are clipped to these percentiles of each image's non-background voxels.
    final_pass : bool
        Finish at the finest level with every (masked) voxel in the metric and a smaller
        step (deterministic: no sampling noise in the final position).
    seed : int
        Seed of the metric sampling: same inputs, seed and ``threads``, same result.  With
        several threads the metric's partial sums add up in a varying order, and the result
        varies by about 1e-5 mm from run to run; ``threads=1`` repeats exactly.
    threads : int, optional
        SimpleITK worker threads for this call (default: SimpleITK's default, all cores); the
        global default is restored afterwards.
    smooth_moving_voxels : float
        Gaussian sigma (in moving voxels) applied to the moving image at the finest level.
    final_iterations : int
        Iterations of the final pass's quasi-Newton optimizer (L-BFGS-B; it stops earlier when
        the gradient or the metric's change is negligible).
    max_start_drift_deg : float
        A starting rotation whose coarse-level descent turns the image by more than this
        (a slide into a mirrored or flipped pose) is not used.

    Returns
    -------
    Registration
    """
    import SimpleITK as sitk

    if threads is not None:
        if not (isinstance(threads, int) and threads >= 1):
            raise ParameterError(f"threads must be a positive integer, got {threads!r}")
        options = {k: v for k, v in locals().items() if k not in ("fixed", "moving", "threads", "sitk")}
        before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        try:
            return register(fixed, moving, **options)
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)

    t0 = time.perf_counter()
    _check_volume(fixed, "fixed")
    _check_volume(moving, "moving")
    if transform not in TRANSFORMS:
        raise ParameterError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
    if init not in ("moments", "geometry"):
        raise ParameterError(f"init must be 'moments' or 'geometry', got {init!r}")
    if not (0 < sampling <= 1):
        raise ParameterError(f"sampling must be a fraction in (0, 1], got {sampling!r}")
    if levels_mm is not None and (len(levels_mm) == 0 or any(not float(v) > 0 for v in levels_mm)):
        raise ParameterError(f"levels_mm must be positive voxel sizes in mm, got {levels_mm!r}")
    if mask is not None and not isinstance(mask, str):
        if not isinstance(mask, Volume):
            raise ParameterError("mask must be a boolean Volume on the fixed image's grid")
        if mask.shape[:3] != fixed.shape[:3] or not np.allclose(mask.affine, fixed.affine, atol=1e-3):
            raise GeometryError(f"mask grid {mask.shape} does not match the fixed image grid {fixed.shape}: "
                                "resample the mask onto the fixed image (invivo resample --interpolation nearest)")
    lo_f, hi_f = _world_box(fixed.shape, fixed.affine)
    lo_m, hi_m = _world_box(moving.shape, moving.affine)
    if np.any(hi_f < lo_m) or np.any(hi_m < lo_f):
        raise GeometryError("fixed and moving images do not overlap in world coordinates: check that both are "
                            "of the same subject and that their DICOM positions are right")

    fdata, *_ = _window(np.asarray(to_device(fixed.data, "cpu"), dtype=np.float32), "fixed",
                        window_percentiles)  # host: SimpleITK
    mdata, *_ = _window(np.asarray(to_device(moving.data, "cpu"), dtype=np.float32), "moving", window_percentiles)
    f_img = to_sitk(Volume(fdata, fixed.affine, fixed.meta))
    m_img = to_sitk(Volume(mdata, moving.affine, moving.meta))
    f_mask = None
    auto_mask = isinstance(mask, str)
    if auto_mask:
        if mask != "auto":
            raise ParameterError(f"mask must be a boolean Volume on the fixed grid, 'auto' or None, got {mask!r}")
        mask = None
    if mask is not None:
        mdat = np.asarray(to_device(mask.data, "cpu")).astype(bool)
        if not mdat.any():
            raise ParameterError("mask is empty: it selects no fixed voxel")
        f_mask = to_sitk(Volume(mdat.astype(np.uint8), fixed.affine, mask.meta), dtype=None)

    # work at the coarser image's voxel size; an explicit pyramid of smoothed, regridded images
    # (built once, so that the several starts and the levels only pay for the metric)
    f_sp, m_sp = np.array(f_img.GetSpacing()), np.array(m_img.GetSpacing())
    work_sp = float(max(f_sp.min(), m_sp.min()))
    if levels_mm is None:
        finest = max(work_sp, min(2.5 * work_sp, 1.0))
        levels_mm = (3.0 * finest, 1.5 * finest, finest)
    levels_mm = tuple(float(s) for s in levels_mm)
    # built fine to coarse, each level regridded from the next finer one (the smoothing of a large fixed
    # image is paid once, on its way to the finest level)
    pyramid = []
    f_src, m_src = (f_img, f_mask), m_img
    for i in reversed(range(len(levels_mm))):
        sp = levels_mm[i]
        last = i == len(levels_mm) - 1
        if f_sp.min() >= sp / 1.5:
            fi, fm = f_img, f_mask
        else:
            fi, fm = _regrid(*f_src, sp)
            f_src = (fi, fm)
        if last and m_sp.min() >= sp / 3.0:
            # finest level: the moving image on its own grid (no second interpolation), smoothed by one
            # voxel -- noise then weighs the same at every sub-voxel position, which removes the
            # interpolation ripples of mutual information that otherwise stall the optimizer a
            # tenth of a voxel short of the optimum
            mi = (sitk.SmoothingRecursiveGaussian(m_img, (smooth_moving_voxels * m_sp).tolist())
                  if smooth_moving_voxels > 0 else m_img)
        elif m_sp.min() >= sp / 1.5:
            mi = m_img
        else:
            mi = _regrid(m_src, None, sp / 2.0 if last else sp)[0]
            m_src = mi
        if auto_mask:
            fm = _auto_mask(fi, margin_mm)
        pyramid.insert(0, (fi, fm, mi, sp))

    # initial transform
    if initial is not None:
        m0 = _F @ initial.matrix @ _F
        centre = np.array(f_img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in f_img.GetSize()]))
        if transform == "rigid" or initial.kind != "affine":
            base = _euler_from_matrix(m0, centre)
        else:
            base = sitk.AffineTransform(3)
            base.SetMatrix(m0[:3, :3].ravel().tolist())
            base.SetTranslation(m0[:3, 3].tolist())
        rotations = [None]
    else:
        mode = (sitk.CenteredTransformInitializerFilter.MOMENTS if init == "moments"
                else sitk.CenteredTransformInitializerFilter.GEOMETRY)
        base = sitk.CenteredTransformInitializer(pyramid[0][0], pyramid[0][2], sitk.Euler3DTransform(), mode)
        a = float(start_rotations_deg)
        rotations = [(0.0, 0.0, 0.0)]
        if a > 0:
            for ax in range(3):
                for sgn in (1.0, -1.0):
                    r = [0.0, 0.0, 0.0]
                    r[ax] = sgn * a
                    rotations.append(tuple(r))

    def run(tx_, level, samp, optimizer):
        fi, fm, mi, sp = level
        reg = _method(bins, samp, seed, fm)
        optimizer(reg)
        scaled = getattr(optimizer, "scaled", True)
        if scaled:
            reg.SetOptimizerScalesFromPhysicalShift()
        # a moving image much larger than the fixed one: gradients at the sampled points only,
        # not a whole gradient image per call
        n_f, n_m = np.prod(fi.GetSize()), np.prod(mi.GetSize())
        reg.SetMetricUseMovingImageGradientFilter(bool(n_m <= 4 * n_f))
        reg.SetInitialTransform(tx_, inPlace=True)
        warn = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(scaled)
        try:
            reg.Execute(fi, mi)
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(warn)
        return reg

    starts = []
    aborted = []  # optimizer runs ITK stopped (the images no longer overlapped)
    total_iter = 0
    coarse = pyramid[0]
    stage_s = {"prepare": time.perf_counter() - t0}
    t_stage = time.perf_counter()
    finalists = []
    if len(rotations) > 1:
        for rot in rotations:
            cand = sitk.Euler3DTransform(base)
            if any(rot):
                r = _rotation_lps(rot) @ np.array(base.GetMatrix()).reshape(3, 3)
                cand.SetMatrix(r.ravel().tolist())
            r_start = np.array(cand.GetMatrix()).reshape(3, 3)
            try:
                reg = run(cand, coarse, 1.0, _regular_step(max(50, iterations // 4), 1e-2 * coarse[3], coarse[3]))
            except RuntimeError as exc:  # this start walked the images apart: drop it
                aborted.append(_itk_reason(exc))
                starts.append({"rotation_deg": list(rot), "metric": float("nan"), "drift_deg": float("inf")})
                continue
            metric = reg.GetMetricValue()
            total_iter += reg.GetOptimizerIteration()
            r_end = np.array(cand.GetMatrix()).reshape(3, 3)
            drift = math.degrees(math.acos(float(np.clip((np.trace(r_start.T @ r_end) - 1) / 2, -1, 1))))
            starts.append({"rotation_deg": list(rot), "metric": float(metric), "drift_deg": drift})
            if drift > max_start_drift_deg:
                continue
            finalists.append((metric, cand, len(starts) - 1))
        finalists.sort(key=lambda mc: mc[0])
        if not finalists:  # every start slid away: keep the unrotated initialisation
            finalists = [(None, sitk.Euler3DTransform(base), None)]
        # the coarse metric of different poses can differ by a percent or two only (weak contrast: a late
        # 89Zr scan): the close runners-up go on to the next level too, and the better one there is kept
        best_m = finalists[0][0]
        finalists = [mc for mc in finalists if best_m is not None and mc[0] <= best_m * (1.0 - FINALIST_MARGIN)][
            :MAX_FINALISTS] or finalists[:1]
        tx = finalists[0][1]
    else:
        tx = sitk.Euler3DTransform(base) if isinstance(base, sitk.Euler3DTransform) else base
    stage_s["starts"] = time.perf_counter() - t_stage
    t_stage = time.perf_counter()

    def evaluate(tx_, level):
        """The metric (all voxels of the level) at ``tx_``, without moving it."""
        fi, fm, mi, _ = level
        reg_ = _method(bins, 1.0, seed, fm)
        reg_.SetMetricUseFixedImageGradientFilter(False)  # a value only: no gradient images
        reg_.SetMetricUseMovingImageGradientFilter(False)
        reg_.SetInitialTransform(tx_, inPlace=False)
        return float(reg_.MetricEvaluate(fi, mi))

    def guarded_run(tx_, level, samp, optimizer):
        """Run one level; if it ends at a worse metric than it started (a first step thrown off into
        another basin, or a sampling-noise walk), keep the starting transform."""
        nonlocal total_iter
        before_params = tx_.GetParameters()
        before = evaluate(tx_, level)
        try:
            reg_ = run(tx_, level, samp, optimizer)
        except RuntimeError as exc:  # ITK stops when the optimizer walks the images apart
            tx_.SetParameters(before_params)
            aborted.append(_itk_reason(exc))
            return before
        total_iter += reg_.GetOptimizerIteration()
        after = evaluate(tx_, level)
        if not after <= before:
            tx_.SetParameters(before_params)
            after = before
        return after

    def pyramid_pass(tx_, rate_scale, first: int, stop: int | None = None):
        for i, level in enumerate(pyramid[first:stop], start=first):
            n_vox = int(np.prod(level[0].GetSize()))
            samp = 1.0 if n_vox * sampling < 20_000 else max(sampling, 20_000 / n_vox)
            guarded_run(tx_, level, samp if i < len(pyramid) - 1 else sampling,
                        _regular_step(iterations, 1e-3 * level[3], rate_scale * level[3]))

    # the several starts already converged at the coarsest level: go on from the next one
    first = 1 if (len(rotations) > 1 and len(pyramid) > 1) else 0
    if len(finalists) > 1 and len(pyramid) > 2:
        scored = []
        for k, (_, cand, i_start) in enumerate(finalists):
            pyramid_pass(cand, 1.0, 1, 2)
            scored.append((evaluate(cand, pyramid[1]), k, cand))
            starts[i_start]["metric_next_level"] = scored[-1][0]
        tx = min(scored, key=lambda sc: (sc[0], sc[1]))[2]
        first = 2
    pyramid_pass(tx, 1.0, first)
    if transform == "affine":
        aff = sitk.AffineTransform(3)
        aff.SetCenter(tx.GetCenter())
        aff.SetMatrix(tx.GetMatrix())
        aff.SetTranslation(tx.GetTranslation())
        tx = aff
        pyramid_pass(tx, 0.5, max(0, len(pyramid) - 2))
    finest = pyramid[-1]
    stage_s["pyramid"] = time.perf_counter() - t_stage
    t_stage = time.perf_counter()
    if final_pass:
        # every voxel (a smooth, deterministic metric) and a quasi-Newton optimizer: regular-step descent
        # stalled a tenth of a voxel short of the optimum in narrow valleys (roll about the long axis
        # coupled with a shift); conjugate gradients with line searches crossed them but needed ~3x the
        # metric evaluations (phantoms/validate_registration.py, phantoms/README.md)
        metric = guarded_run(tx, finest, 1.0, _lbfgsb(final_iterations))
    else:
        metric = evaluate(tx, finest)
    stage_s["final"] = time.perf_counter() - t_stage
    coarse_final = evaluate(tx, coarse)
    smooth = [0.5 * lv[3] for lv in pyramid]

    result = Transform.from_sitk(tx, kind=transform)
    settings = {"transform": transform, "metric": "MattesMutualInformation", "bins": int(bins),
                "sampling": float(sampling), "levels_mm": list(levels_mm), "smoothing_mm": list(smooth),
                "working_voxel_mm": work_sp, "init": "initial" if initial is not None else init,
                "start_rotations_deg": float(start_rotations_deg), "window_percentiles": list(window_percentiles),
                "final_pass": bool(final_pass), "seed": int(seed), "iterations_per_level": int(iterations),
                "smooth_moving_voxels": float(smooth_moving_voxels),
                "final_optimizer": "LBFGSB", "final_iterations": int(final_iterations)}
    result.info = {"registration": settings, "metric": metric}

    # quality: how much of the fixed foreground lands inside the moving field of view, and the metric
    fg = _foreground(fdata)
    idx = np.argwhere(fg)[:: max(1, int(fg.sum()) // 200_000)]
    pts = idx @ fixed.affine[:3, :3].T + fixed.affine[:3, 3]
    mp = result.apply_points(pts)
    vox = (mp - moving.affine[:3, 3]) @ np.linalg.inv(moving.affine[:3, :3]).T
    inside = np.all((vox > -0.5) & (vox < np.array(moving.shape[:3]) - 0.5), axis=1)
    overlap = float(inside.mean()) if inside.size else 0.0
    notes = []
    if overlap < 0.5:
        notes.append(f"only {100 * overlap:.0f} % of the fixed image's foreground maps inside the moving image")
    if not metric < -0.05:
        notes.append(f"weak mutual information at the optimum ({metric:.3f}): the images may not match")
    kept = [st["metric"] for st in starts if st["drift_deg"] <= max_start_drift_deg]
    if kept and coarse_final > min(kept) + 0.2 * abs(min(kept)):
        notes.append(f"the result's coarse-level metric ({coarse_final:.3f}) is much weaker than the best start's "
                     f"({min(kept):.3f}): the optimizer may have left the right basin")
    if aborted:
        notes.append(f"{len(aborted)} optimizer run(s) stopped and were undone ({aborted[0]}): the images may not "
                     "match; check the QC overlay or give an initial transform")
    if transform == "rigid" and result.rotation_deg() > 60:
        notes.append(f"large rotation ({result.rotation_deg():.0f} deg): check the QC overlay")
    quality = "good" if not notes else ("failed" if overlap < 0.1 else "check")
    for n in notes:
        warnings.warn(f"registration: {n}", InvivoWarning, stacklevel=2)
    elapsed = time.perf_counter() - t0
    log.info("registered in %.2f s: metric %.4f, %d iterations, overlap %.2f", elapsed, metric, total_iter, overlap)
    return Registration(transform=result, metric=metric, iterations=int(total_iter), quality=quality,
                        overlap=overlap, warnings=notes, starts=starts, settings=settings, elapsed_s=elapsed,
                        stage_s={k: round(v, 4) for k, v in stage_s.items()},
                        fixed=fixed, moving=moving)


def _itk_reason(exc: Exception) -> str:
    """The one-line reason in an ITK exception (its message repeats file paths and object addresses)."""
    text = str(exc)
    if "do not sufficiently overlap" in text or "outside moving image buffer" in text:
        return "the moving image left the fixed image's sampled region"
    lines = [ln.strip() for ln in text.splitlines() if "ERROR" in ln]
    return lines[-1].split(":", 1)[-1].strip()[:160] if lines else text.strip().splitlines()[-1][:160]


def _auto_mask(img, margin_mm: float):
    """The fixed image's foreground (Otsu), holes filled, grown by ``margin_mm``: where the metric looks."""
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(img)
    fg = _foreground(np.asarray(arr))
    m = sitk.GetImageFromArray(fg.astype(np.uint8))
    m.CopyInformation(img)
    m = sitk.BinaryFillhole(m)
    radius = [max(1, int(round(margin_mm / s))) for s in img.GetSpacing()]
    m = sitk.BinaryDilate(m, radius)
    if not sitk.GetArrayViewFromImage(m).any():  # pragma: no cover - Otsu found nothing: no mask
        return None
    return m


def _regrid(img, mask, spacing: float):
    """Smooth (anti-alias) and resample an image to an isotropic ``spacing`` over the same extent."""
    import SimpleITK as sitk

    sp = np.array(img.GetSpacing())
    sigma = np.sqrt(np.maximum((0.5 * spacing) ** 2 - (0.5 * sp) ** 2, 0.0))
    sm = sitk.SmoothingRecursiveGaussian(img, sigma.tolist()) if np.any(sigma > 0) else img
    size = [max(2, int(math.floor(n * s / spacing))) for n, s in zip(img.GetSize(), sp)]
    # same centre as the original grid
    centre_idx = [(n - 1) / 2.0 for n in img.GetSize()]
    centre = np.array(img.TransformContinuousIndexToPhysicalPoint(centre_idx))
    d = np.array(img.GetDirection()).reshape(3, 3)
    origin = centre - d @ (np.array([(n - 1) / 2.0 for n in size]) * spacing)
    f = sitk.ResampleImageFilter()
    f.SetSize(size)
    f.SetOutputSpacing([spacing] * 3)
    f.SetOutputDirection(img.GetDirection())
    f.SetOutputOrigin(origin.tolist())
    f.SetInterpolator(sitk.sitkLinear)
    out = f.Execute(sm)
    if mask is not None:
        f.SetInterpolator(sitk.sitkNearestNeighbor)
        mask = f.Execute(mask)
    return out, mask
