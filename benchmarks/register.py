"""Registration benchmark: wall time and target registration error of invivo, ANTsPy and plain SimpleITK.

Cases (generated once, not timed): the fixed image is an unmoved MR of the mouse phantom
(``invivo.synth.mouse_phantom``; 0.25 mm voxels, 30 x 26 x 92 mm field of view); the
moving images are PET (0.5 mm), SPECT (0.8 mm) and CT (0.4 mm; 0.2 mm too with
``--fine-ct``) rendered with ``invivo.synth.displaced.render_modality`` on the default
40 x 36 x 100 mm field of view, the object moved by ``--cases`` random rigid motions
(``random_rigid``: rotation up to 20 degrees about a random axis, translation up to
10 mm; seeded, the same motions for every pair and every tool, fresh noise per case).

    python benchmarks/register.py [--cases 5] [--ants-cases N] [--dense-cases 1] [--fine-ct]
                                  [--tools invivo,ants-rigid,ants-quick,ants-dense,sitk]
                                  [--threads 2] [--repeat 1] [--detail] [--seed 0]

Tools, all on ``--threads`` threads (ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS set before
SimpleITK and ANTsPy are imported, SimpleITK's global default too, and the process
pinned to that many cores where the OS allows it):

- ``invivo``: ``invivo.align.register(mr, moving)`` with its defaults.
- ``ants-rigid``, ``ants-quick``, ``ants-dense``: ``ants.registration(fixed, moving,
  type_of_transform=...)`` with the "Rigid", "QuickRigid" and "DenseRigid" presets
  (Mattes MI 32 bins, regular sampling 20 % -- 100 % for DenseRigid --, shrink 6/4/2/1,
  smoothing 3/2/1/0 voxels, 2100/1200/1200/10 iterations -- 20/20/0/0 for QuickRigid --,
  centre-of-mass start), ANTs' random seed fixed.  The ANTs images are built from the
  same Volumes with their LPS origin, spacing and direction; the forward transform (the
  ``.mat`` ANTs writes, read with SimpleITK) maps fixed points to moving points, as
  invivo's does (checked on a pure translation at start-up).
- ``sitk``: the recipe of the SimpleITK notebooks: CenteredTransformInitializer
  (GEOMETRY) with Euler3DTransform, Mattes MI 50 bins, random sampling 1 % (seeded),
  linear interpolation, gradient descent (learning rate 1, 100 iterations, convergence
  1e-6 over 10), scales from physical shift, shrink 4/2/1, smoothing 2/1/0 voxels.

Wall time covers everything from the two Volumes to a 4x4 transform: conversion to the
tool's image type, the registration, reading its transform back (ANTs: also the warped
images and transform files it always writes).  TRE of a case: the distance
``|T(p) - motion(p)|`` over ``--points`` points uniform in the phantom's body (1 mm
inside its surface), RAS mm; its mean and maximum.  The table gives per tool and pair
the median and maximum wall time over cases; the median CPU time (user + system of all
the process's threads); ``idle s``, the median of an estimate of the wall time on idle
cores from per-thread CPU times (Linux ``/proc/self/task``; the main thread's plus the
busiest other live thread's, see ``idle_estimate``) -- the column to read when the
printed load average says other processes shared the cores; the median over cases of
the mean TRE, the worst maximum TRE, and the number of failed cases (maximum TRE over
``--fail-mm``).  With ``--repeat N`` each case runs N times and the fastest run's times
count (TRE from the first run).  Each tool first registers a small pair of blob images,
untimed (lazy imports, first-call set-up).

ANTs is slow on 2 cores (Rigid some 15-30 s a pair, DenseRigid 1-2 minutes):
``--ants-cases`` and ``--dense-cases`` (default 1) keep the default run near 15 minutes.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import threading
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Table, cpu_count, cpu_name, load_average  # noqa: E402

MR_FOV_MM = (30.0, 26.0, 92.0)
MR_VOXEL_MM = 0.25
PAIRS = (("PET", 0.5), ("SPECT", 0.8), ("CT", 0.4))
FINE_CT = ("CT", 0.2)
TOOLS = ("invivo", "ants-rigid", "ants-quick", "ants-dense", "sitk")
ANTS_PRESETS = {"ants-rigid": "Rigid", "ants-quick": "QuickRigid", "ants-dense": "DenseRigid"}


# ---------------------------------------------------------------------- cases
def make_cases(n_cases, *, fine_ct, seed, max_rotation_deg, max_translation_mm):
    """(phantom, fixed MR Volume, [(pair name, [(case index, motion 4x4, moving Volume), ...]), ...])."""
    from invivo.synth import mouse_phantom
    from invivo.synth.displaced import random_rigid, render_modality

    ph = mouse_phantom()
    mr, _ = render_modality(ph, "MR", voxel_size_mm=MR_VOXEL_MM, fov_mm=MR_FOV_MM, seed=seed)
    rng = np.random.default_rng(seed)
    motions = [random_rigid(rng, max_rotation_deg=max_rotation_deg, max_translation_mm=max_translation_mm)
               for _ in range(n_cases)]
    pairs = list(PAIRS) + ([FINE_CT] if fine_ct else [])
    cases = []
    for p, (modality, vox) in enumerate(pairs):
        name = f"{modality} {vox:g} mm"
        rows = []
        for c, m in enumerate(motions):
            vol, _ = render_modality(ph, modality, voxel_size_mm=vox, motion=m, seed=seed + 1000 * (p + 1) + c)
            rows.append((c, m, vol))
        cases.append((name, rows))
    return ph, mr, cases


def motion_size(m):
    """(rotation angle in degrees, translation length in mm about the world origin) of a rigid 4x4."""
    ang = np.degrees(np.arccos(np.clip((np.trace(m[:3, :3]) - 1.0) / 2.0, -1.0, 1.0)))
    return float(ang), float(np.linalg.norm(m[:3, 3]))


# ---------------------------------------------------------------------- tools
def run_invivo(fixed, moving, *, seed):
    from invivo.align import register

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quality notes are reported in the detail, not as warnings
        reg = register(fixed, moving)
    return reg.transform.matrix, reg.quality


def to_ants(volume):
    """An ANTsImage with the Volume's LPS geometry (ANTsPy keeps NumPy's (i, j, k) index order)."""
    import ants
    import SimpleITK as sitk

    from invivo.align.transforms import to_sitk

    img = to_sitk(volume)  # float32, LPS origin / spacing / direction
    arr = np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0))
    return ants.from_numpy(arr, origin=list(img.GetOrigin()), spacing=list(img.GetSpacing()),
                           direction=np.array(img.GetDirection()).reshape(3, 3))


def _ants_transform(out):
    """RAS 4x4 of ANTs' forward transform (fixed point -> moving point); its temporary files removed."""
    import SimpleITK as sitk

    from invivo.align.transforms import Transform

    fwd = out["fwdtransforms"]
    if len(fwd) != 1:
        raise RuntimeError(f"expected one forward affine transform from ANTs, got {fwd}")
    matrix = Transform.from_sitk(sitk.ReadTransform(fwd[0])).matrix
    for f in set(list(fwd) + list(out["invtransforms"])):
        prefix = f.rsplit("0GenericAffine.mat", 1)[0]
        for g in glob.glob(prefix + "*"):
            try:
                os.remove(g)
            except OSError:
                pass
    return matrix


def run_ants(fixed, moving, *, preset, seed):
    import ants

    out = ants.registration(to_ants(fixed), to_ants(moving), type_of_transform=preset)
    return _ants_transform(out), ""


def run_sitk(fixed, moving, *, seed):
    """The SimpleITK notebooks' rigid recipe (60_Registration_Introduction), seeded."""
    import SimpleITK as sitk

    from invivo.align.transforms import Transform, to_sitk

    f = to_sitk(fixed)  # float32
    m = to_sitk(moving)
    init = sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.01, int(seed) + 1)  # SimpleITK reads seed 0 as "wall clock"
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsGradientDescent(learningRate=1.0, numberOfIterations=100, convergenceMinimumValue=1e-6,
                                      convergenceWindowSize=10)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(shrinkFactors=[4, 2, 1])
    reg.SetSmoothingSigmasPerLevel(smoothingSigmas=[2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=False)
    tx = reg.Execute(f, m)
    return Transform.from_sitk(tx).matrix, ""


def blob_pair(shift=(2.0, -1.5, 3.0)):
    """A small fixed / moving pair (48 x 40 x 56 voxels of 0.5 mm, three Gaussian blobs), the object moved by ``shift`` mm."""
    from invivo import Volume

    rng = np.random.default_rng(7)
    shape = (48, 40, 56)
    aff = np.diag([0.5, 0.5, 0.5, 1.0])
    aff[:3, 3] = -0.5 * (np.array(shape) - 1) * 0.5
    idx = np.indices(shape).reshape(3, -1).T
    pts = idx @ aff[:3, :3].T + aff[:3, 3]

    def blobs(offset):
        c = np.array([[3.0, -2.0, 4.0], [-4.0, 3.0, -5.0], [2.0, 4.0, -2.0]]) + offset
        v = sum(w * np.exp(-((pts - ci) ** 2).sum(axis=1) / (2 * s ** 2))
                for ci, w, s in zip(c, (1.0, 0.6, 0.8), (3.0, 2.0, 2.5)))
        return (v + 0.01 * rng.standard_normal(v.shape)).reshape(shape)

    return Volume(blobs(0.0), aff), Volume(blobs(np.asarray(shift)), aff)


def check_ants_direction():
    """Register a pure (2, -1.5, 3) mm translation with ANTs: its transform must map fixed to moving points.

    Returns the error (mm) of the recovered translation; raises if ANTs' transform reads backwards.
    """
    shift = np.array([2.0, -1.5, 3.0])  # the object moves by +shift (RAS mm): fixed -> moving is +shift
    fixed, moving = blob_pair(shift)
    m, _ = run_ants(fixed, moving, preset="Rigid", seed=0)
    got = m[:3, 3]
    if np.linalg.norm(got + shift) < np.linalg.norm(got - shift):
        raise RuntimeError(f"ANTs' forward transform read backwards: translation {got}, expected {shift}")
    return float(np.linalg.norm(got - shift))


def thread_cpu() -> dict:
    """CPU seconds (user + system) of each live thread of this process, by thread id (Linux; {} elsewhere)."""
    tck = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out = {}
    for d in glob.glob("/proc/self/task/*"):
        try:
            with open(d + "/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(d.rsplit("/", 1)[1])] = (int(fields[11]) + int(fields[12])) / tck
        except (OSError, ValueError, IndexError):
            pass
    return out


def idle_estimate(before: dict, after: dict) -> float:
    """Wall time the call would take on idle cores: the main thread's CPU time plus the busiest other live thread's.

    SimpleITK's default ("Platform") threader runs one share of each parallel step on
    the calling thread and the others on threads it starts and joins, so the main
    thread's CPU time is the critical path; ANTs' ITK uses a pool whose threads
    outlive the call while the caller waits, hence the busiest pool thread is added.
    """
    if not after:
        return float("nan")
    d = {k: v - before.get(k, 0.0) for k, v in after.items()}
    main = d.pop(threading.get_native_id(), 0.0)
    return main + (max(d.values()) if d else 0.0)


def tre(matrix, motion, points):
    """(mean, max) of |T(p) - motion(p)| over points (RAS mm)."""
    est = points @ matrix[:3, :3].T + matrix[:3, 3]
    true = points @ motion[:3, :3].T + motion[:3, 3]
    d = np.linalg.norm(est - true, axis=1)
    return float(d.mean()), float(d.max())


# ---------------------------------------------------------------------- main
def _invivo_source(invivo) -> str:
    """Where invivo was imported from: git commit of its checkout (and whether invivo/ has uncommitted changes)."""
    import subprocess

    root = Path(invivo.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "invivo"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"from {root}"
    return f"git {head}" + (", invivo/ modified" if dirty else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=5, help="random rigid motions per pair (default 5)")
    ap.add_argument("--ants-cases", type=int, default=None,
                    help="cases per pair for ants-rigid and ants-quick (default: --cases)")
    ap.add_argument("--dense-cases", type=int, default=1,
                    help="cases per pair for ants-dense (default 1: it is some 4x slower than ants-rigid)")
    ap.add_argument("--fine-ct", action="store_true", help="add CT at 0.2 mm (18 million voxels)")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma separated, from {', '.join(TOOLS)}")
    ap.add_argument("--threads", type=int, default=2, help="threads (and cores, where pinning works) for every tool")
    ap.add_argument("--points", type=int, default=2000, help="body points for the TRE")
    ap.add_argument("--fail-mm", type=float, default=1.0, help="a case fails when its maximum TRE exceeds this")
    ap.add_argument("--max-rotation", type=float, default=20.0, help="degrees, random_rigid's max_rotation_deg")
    ap.add_argument("--max-translation", type=float, default=10.0, help="mm, random_rigid's max_translation_mm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per case; the fastest one's wall and CPU time are reported (default 1)")
    ap.add_argument("--detail", action="store_true", help="also print one CSV line per tool, pair and case")
    args = ap.parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown or args.cases < 1 or args.threads < 1 or args.repeat < 1 or args.points < 1:
        ap.error(f"unknown tool(s) {unknown}; valid: {', '.join(TOOLS)}" if unknown
                 else "--cases, --threads, --repeat and --points must be >= 1")
    n_cases = {t: args.cases for t in tools}
    for t in ("ants-rigid", "ants-quick"):
        if args.ants_cases is not None:
            n_cases[t] = min(args.cases, args.ants_cases)
    if "ants-dense" in n_cases:
        n_cases["ants-dense"] = min(args.cases, args.dense_cases)

    # threads: before SimpleITK / ANTs load their ITK
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    cores_all = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))
    pinned = False
    if len(cores_all) > args.threads and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, cores_all[:args.threads])
            pinned = True
        except OSError:
            pass
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    ants_version = "-"
    if any(t.startswith("ants") for t in tools):
        try:
            import ants
            from ants import config as ants_config
        except ImportError:
            print("# ANTsPy is not installed (pip install -e '.[bench]'): ants rows skipped")
            tools = [t for t in tools if not t.startswith("ants")]
        else:
            from importlib.metadata import version

            ants_version = version("antspyx")
            # a fixed seed for ANTs' sampling jitter (without its single-thread "deterministic" mode)
            ants_config.set_ants_deterministic(on=False, seed_value=args.seed + 1)
    import invivo

    cores_used = cpu_count()
    print(f"# {date.today().isoformat()}  {len(cores_all)} CPU cores available ({cpu_name()}), "
          f"{cores_used} used{' (pinned)' if pinned else ''}, {args.threads} ITK threads; numpy {np.__version__}, "
          f"SimpleITK {sitk.Version_VersionString()}, antspyx {ants_version}, invivo {invivo.__version__} ({_invivo_source(invivo)})"
          + (f"; fastest of {args.repeat} runs per case" if args.repeat > 1 else ""))

    from invivo.synth.displaced import body_points

    load0 = load_average()[0]

    t = time.perf_counter()
    ph, mr, cases = make_cases(args.cases, fine_ct=args.fine_ct, seed=args.seed,
                               max_rotation_deg=args.max_rotation, max_translation_mm=args.max_translation)
    points = body_points(ph, args.points, rng=np.random.default_rng(args.seed + 99))
    print(f"# generated in {time.perf_counter() - t:.1f} s (not timed): fixed MR {MR_VOXEL_MM:g} mm {mr.shape}; "
          + "; ".join(f"{name} {rows[0][2].shape}" for name, rows in cases), file=sys.stderr)
    sizes = [motion_size(m) for _, m, _ in cases[0][1]]
    print(f"# fixed: MR {MR_VOXEL_MM:g} mm {'x'.join(map(str, mr.shape))}; {args.cases} rigid motions "
          f"(rotation deg / translation mm): " + ", ".join(f"{a:.1f}/{d:.1f}" for a, d in sizes)
          + f"; TRE over {args.points} body points; fail: max TRE > {args.fail_mm:g} mm")
    if any(t.startswith("ants") for t in tools):
        err = check_ants_direction()
        print(f"# ANTs transform direction checked on a pure translation: fixed -> moving, error {err:.3f} mm")

    runners = {"invivo": run_invivo, "sitk": run_sitk}
    for key, preset in ANTS_PRESETS.items():
        runners[key] = (lambda preset_: (lambda f, m, *, seed: run_ants(f, m, preset=preset_, seed=seed)))(preset)
    small = blob_pair()
    for tool in tools:  # untimed warm-up on a small pair: lazy imports and first-call set-up are not timed
        runners[tool](*small, seed=args.seed)

    results = []  # (tool, pair, case, seconds, tre mean, tre max, note)
    if args.detail:
        print("tool,pair,case,rotation_deg,translation_mm,seconds,cpu_seconds,idle_estimate_s,tre_mean_mm,tre_max_mm,note")
    for name, rows in cases:
        for tool in tools:
            for c, motion, moving in rows[:n_cases[tool]]:
                dt = dcpu = float("inf")
                for rep in range(args.repeat):  # the fastest run counts; TRE and note from the first
                    t, cpu, threads0 = time.perf_counter(), time.process_time(), thread_cpu()
                    try:
                        out = runners[tool](mr, moving, seed=args.seed)
                    except Exception as exc:  # a peer that errors is a failed case, not a crash of the benchmark
                        out = None, f"error: {str(exc).splitlines()[0][:80]}"
                    w, u = time.perf_counter() - t, time.process_time() - cpu
                    est = idle_estimate(threads0, thread_cpu())
                    if rep == 0:
                        matrix, note = out
                    if w < dt:
                        dt, dcpu, didle = w, u, est
                tm, tx = tre(matrix, motion, points) if matrix is not None else (float("nan"), float("inf"))
                results.append((tool, name, c, dt, tm, tx, note, dcpu, didle))
                if args.detail:
                    a, d = motion_size(motion)
                    print(f"{tool},{name},{c},{a:.2f},{d:.2f},{dt:.3f},{dcpu:.3f},{didle:.3f},{tm:.4f},{tx:.4f},{note}", flush=True)

    load = load_average()[0]
    print(f"# load average (1 min) {load0:.2f} at the start, {load:.2f} at the end: above {cores_used} "
          "means other processes shared the cores (wall times then overstate; CPU times much less)")
    table = Table(("tool", "11s"), ("pair", "12s"), ("cases", "5d"), ("median s", "8.2f"), ("max s", "7.2f"),
                  ("CPU s", "6.2f"), ("idle s", "6.2f"), ("TRE mean mm", "11.3f"), ("TRE max mm", "10.3f"),
                  ("failed", "6d"))
    print(table.header())
    for name, _ in cases:
        for tool in tools:
            r = [x for x in results if x[0] == tool and x[1] == name]
            if not r:
                continue
            secs = np.array([x[3] for x in r])
            cpus = np.array([x[7] for x in r])
            idles = np.array([x[8] for x in r])
            means = np.array([x[4] for x in r])
            maxes = np.array([x[5] for x in r])
            failed = int(np.sum(~(maxes <= args.fail_mm)))
            print(table.row(tool, name, len(r), np.median(secs), secs.max(), np.median(cpus), np.median(idles),
                            np.nanmedian(means) if np.isfinite(means).any() else float("nan"), maxes.max(), failed),
                  flush=True)
    notes = sorted({(x[0], x[6]) for x in results if x[6] and x[6] != "good"})
    for tool, note in notes:
        print(f"# {tool}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
