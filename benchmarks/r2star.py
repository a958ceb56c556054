"""R2* benchmark: voxel-fits/s of every R2StarModel method beside a per-voxel scipy curve_fit loop.

Synthetic multi-echo data, generated once per size: N voxels x 8 echoes (TE 2-23 ms, 3 ms
apart), float32, S0 = 1000, R2* uniform 10-400 s^-1, Rician noise with sigma = S0 / 50
(SNR 50), seeded.  Every method fits all voxels at once with the known sigma
(``R2StarModel(te, method=m).fit(y, sigma=sigma)``), on CPU (NumPy) and, when CuPy
sees a CUDA device, on GPU (data moved once with ``invivo.backend.to_device``, timings
closed by ``cupy.cuda.Device().synchronize()``, one untimed warm-up run per method).

    python benchmarks/r2star.py [--sizes 1e5,1e6,1e7] [--methods loglin,arlo] [--device cpu|gpu|both]
                                [--repeat 3] [--max-seconds 300] [--curve-fit-sample 500]

Columns: best and median wall time over the runs, voxel-fits/s from the best, and for
``loglin`` and ``arlo`` the effective bandwidth: bytes read (the N x 8 float32 input)
plus bytes written (every array of the R2StarFit: params and variance (N, 2) float32,
residual, r_squared and r2star_ceiling float32, status and echoes_used uint8; 30 B per
voxel) over the best time.  ``x curve_fit`` is fits/s over the fits/s of the peer
baseline: ``scipy.optimize.curve_fit`` (mono-exponential, float64, p0 = S(TE1) and the R2*
of the first two echoes, default MINPACK Levenberg-Marquardt) looped over a seeded sample
of voxels; ``x bounded`` is the same loop with bounds S0, R2* >= 0, which switches
curve_fit to its trust-region reflective solver, as tedana's per-voxel loop does.  A
final table gives each method's median relative R2* bias (over voxels with status ok)
at the largest size it ran.

A cell is skipped, with the reason printed, when its estimated time (seconds per voxel
from the last size measured, first from a 1e5-voxel probe) exceeds --max-seconds for a
single run, or its estimated peak memory (bytes per voxel traced in the probe) exceeds
80 % of the memory available; otherwise runs stop early when one more would take the
cell past --max-seconds (the ``runs`` column says how many were made).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (Table, add_sweep_options, fmt_n, free_gpu, gpu_line, machine_line, mem_available,  # noqa: E402
                     over_budget, parse_sweep, pick_devices, probe, sync, time_runs)

S0 = 1000.0
SNR = 50.0
SIGMA = S0 / SNR
ECHO_TIMES_S = np.linspace(0.002, 0.023, 8)
R2_RANGE = (10.0, 400.0)
PROBE_VOXELS = 100_000
BANDWIDTH_METHODS = ("loglin", "arlo")


def make_data(n: int, *, seed: int = 0, chunk: int = 1_000_000):
    """(signal float32 (n, 8), true R2* float64 (n,)): Rician magnitude, built in chunks to bound float64 temporaries."""
    rng = np.random.default_rng(seed)
    y = np.empty((n, ECHO_TIMES_S.size), dtype=np.float32)
    r2 = np.empty(n, dtype=np.float64)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        r2[a:b] = rng.uniform(*R2_RANGE, b - a)
        s = S0 * np.exp(-np.outer(r2[a:b], ECHO_TIMES_S))
        re = s + SIGMA * rng.standard_normal(s.shape)
        im = SIGMA * rng.standard_normal(s.shape)
        y[a:b] = np.hypot(re, im)
    return y, r2


def _fit(model, y, device):
    fit = model.fit(y, sigma=SIGMA)
    sync(device)
    return fit


def _written_bytes(fit) -> int:
    return sum(int(a.nbytes) for a in (fit.params, fit.variance, fit.status, fit.echoes_used, fit.residual,
                                      fit.r_squared, fit.r2star_ceiling))


def curve_fit_rate(y, *, sample, repeat, bounded=False, seed=1):
    """Per-voxel scipy.optimize.curve_fit loop on ``sample`` voxels: (best s, median s, fits/s, failures).

    ``bounded=False``: curve_fit's default, MINPACK Levenberg-Marquardt.  ``bounded=True``:
    S0, R2* >= 0, which makes curve_fit use its trust-region reflective solver (as tedana does).
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    te = ECHO_TIMES_S

    def model(t, s0, r2):
        return s0 * np.exp(-r2 * t)

    idx = np.random.default_rng(seed).choice(y.shape[0], size=min(sample, y.shape[0]), replace=False)
    ys = y[idx].astype(np.float64)
    kw = {"bounds": ((0.0, 0.0), (np.inf, np.inf))} if bounded else {}

    def loop():
        failed = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            for v in ys:
                r0 = np.log(max(v[0], 1e-6) / max(v[1], 1e-6)) / (te[1] - te[0])
                try:
                    curve_fit(model, te, v, p0=(v[0], max(r0, 1.0)), **kw)
                except RuntimeError:
                    failed += 1
        return failed

    best, med, failed, *_ = time_runs(loop, repeat)
    return best, med, ys.shape[0] / best, failed


def main(argv=None):
    from invivo.backend import to_device
    from invivo.relax.r2star import METHODS, STATUS, R2StarModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sweep_options(ap, sizes="1e5,1e6,1e7", methods=METHODS)
    ap.add_argument("--gpu-array", action="store_true",
                    help="also time the GPU with engine='array' (plain CuPy array code) beside the fused kernel")
    ap.add_argument("--curve-fit-sample", type=int, default=500, help="voxels fitted by the curve_fit loop")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sizes, methods = parse_sweep(ap, args, METHODS)
    if args.curve_fit_sample < 1:
        ap.error("--curve-fit-sample must be >= 1 (the curve_fit loop is the x curve_fit baseline)")
    devices = pick_devices(args.device)
    if not devices:
        return 0
    if "gpu" in devices and args.gpu_array:
        devices.append("gpuarr")  # same GPU, engine='array'
    where = {"cpu": "cpu", "gpu": "gpu", "gpuarr": "gpu"}

    print(machine_line())
    if "gpu" in devices:
        print(gpu_line())
    print(f"# {ECHO_TIMES_S.size} echoes TE {1e3 * ECHO_TIMES_S[0]:g}-{1e3 * ECHO_TIMES_S[-1]:g} ms, float32, "
          f"S0 {S0:g}, sigma {SIGMA:g} (SNR {SNR:g}), R2* uniform {R2_RANGE[0]:g}-{R2_RANGE[1]:g} s^-1, seed {args.seed}")

    te = ECHO_TIMES_S
    models = {(dev, m): R2StarModel(te, method=m, engine="array" if dev == "gpuarr" else "auto")
              for dev in devices for m in methods}
    y_probe, _ = make_data(min(PROBE_VOXELS, sizes[0]), seed=args.seed + 12345)

    cf_rate = {}
    for bounded, what in ((False, "Levenberg-Marquardt (default, no bounds)"), (True, "bounds >= 0 (trust-region reflective)")):
        best_cf, med_cf, cf_rate[bounded], cf_failed = curve_fit_rate(y_probe, sample=args.curve_fit_sample,
                                                                      repeat=args.repeat, bounded=bounded)
        print(f"# peer: scipy.optimize.curve_fit loop, {what}, {min(args.curve_fit_sample, y_probe.shape[0])} voxels: "
              f"best {best_cf:.2f} s (median {med_cf:.2f}), {cf_rate[bounded]:.0f} fits/s, {cf_failed} failed")

    per_voxel_s, per_voxel_b = {}, {}
    for dev in devices:
        yp = to_device(y_probe, where[dev])
        for m in methods:
            per_voxel_s[dev, m], per_voxel_b[dev, m] = probe(lambda: _fit(models[dev, m], yp, where[dev]),
                                                             yp.shape[0], where[dev])
        del yp
    print(f"# probe ({y_probe.shape[0]} voxels) peak bytes/voxel: "
          + ", ".join(f"{dev} {m} {per_voxel_b[dev, m]:.0f}" for dev in devices for m in methods))

    table = Table(("device", "6s"), ("method", "10s"), ("voxels", ">6s"), ("runs", "4d"), ("best s", "8.3f"),
                  ("median s", "9.3f"), ("fits/s", "9.3g"), ("GB/s", "6.2f"), ("x curve_fit", "11.0f"),
                  ("x bounded", "9.0f"))
    print(table.header())
    bias = {}
    written_per_voxel = None
    for n in sizes:
        t = time.perf_counter()
        y_host, r2_true = make_data(n, seed=args.seed)
        print(f"# generated {fmt_n(n)} voxels in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        for dev in devices:
            y = to_device(y_host, where[dev])
            avail = mem_available(where[dev])
            for m in methods:
                skip = over_budget(per_voxel_s[dev, m] * n, per_voxel_b[dev, m] * n, avail, args.max_seconds)
                if skip:
                    print(f"{table.row(dev, m, fmt_n(n))}  {skip}")
                    continue
                best, med, fit, runs, _ = time_runs(lambda: _fit(models[dev, m], y, where[dev]), args.repeat,
                                                    args.max_seconds)
                per_voxel_s[dev, m] = best / n
                written = _written_bytes(fit)
                written_per_voxel = written / n
                rate = n / best
                gbs = (int(y.nbytes) + written) / best / 1e9 if m in BANDWIDTH_METHODS else None
                print(table.row(dev, m, fmt_n(n), runs, best, med, rate, gbs, rate / cf_rate[False],
                                rate / cf_rate[True]), flush=True)
                status = to_device(fit.status, "cpu")
                r2_fit = to_device(fit.r2star, "cpu").astype(np.float64)
                ok = status == STATUS["ok"]
                rel = (r2_fit[ok] - r2_true[ok]) / r2_true[ok]
                bias[dev, m] = (n, 100.0 * float(np.median(rel)), 100.0 * float(ok.mean()))
                del fit, status, r2_fit, ok, rel
            del y
            free_gpu(where[dev])
        del y_host, r2_true
        gc.collect()

    if written_per_voxel is not None:
        print(f"# GB/s counts {ECHO_TIMES_S.size * 4} B/voxel read (float32 echoes) + {written_per_voxel:.0f} B/voxel "
              "written (params, variance, residual, r_squared, r2star_ceiling float32; status, echoes_used uint8)")
    print("\n# median relative R2* bias over status-ok voxels, at the largest size each method ran")
    bias_table = Table(("device", "6s"), ("method", "10s"), ("voxels", ">6s"), ("bias %", "7.2f"), ("ok %", "6.2f"))
    print(bias_table.header())
    for (dev, m), (n, b, okp) in bias.items():
        print(bias_table.row(dev, m, fmt_n(n), b, okp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
