"""Kinetics benchmark: voxels/s of the voxelwise maps beside per-voxel scipy and lmfit loops.

Synthetic dynamic PET, generated once per size: N voxels x 30 frames over 80 min
(8 x 15 s, 4 x 30 s, 4 x 60 s, 4 x 180 s, 10 x 360 s), float32, from a Feng (1993) FDG-like
bolus plasma input (sampled every 2 s to 3 min, every 15 s to 10 min, then every minute;
whole blood 0.9 x plasma), seeded Gaussian noise with a frame SD of
``noise x sqrt(C_i x mean(C) x 300 s / d_i)`` (``noise`` relative SD of a 300-s frame at
the curve's mean; default 5 %).  Three data sets per size, each simulated exactly (exact
exponential convolution on the maps' 0.05-min grid, frame averages) by the same arithmetic
as :mod:`invivo.kinetics.maps`; the one nonlinear rate of each voxel is taken from a
4096-value geometric table (0.04-0.2 % apart) so that the simulation costs one
convolution per table value, every other parameter is drawn continuously:

- ``irr`` (patlak, 2tcm-irr): 2TCM-irr, K1 U(0.05, 0.5) mL/cm3/min, k2 + k3 in [0.1, 0.8] /min,
  k3 / (k2 + k3) U(0.05, 0.4), vB U(0.02, 0.1); truth Ki = K1 k3 / (k2 + k3).
- ``rev`` (logan, 1tcm): 1TCM, K1 U(0.05, 0.5), k2 in [0.05, 0.5] /min, vB U(0.02, 0.1);
  truth VT = K1 / k2.
- ``ref`` (srtm): 1TCM targets without blood (vB = 0) against a noise-free 1TCM reference
  region (K1' 0.1 mL/cm3/min, k2' 0.15 /min), R1 U(0.7, 1.4), BPND U(0.5, 3) (moved to the
  nearest table rate); SRTM is exact for this pair in continuous time.

Every map runs over all voxels at once (``patlak_map``/``logan_map`` with t* = 20 min,
``srtm_map`` with the default basis grid, ``compartment_map(model=...)`` with vB fitted),
on CPU (NumPy) and, when CuPy sees a CUDA device, on GPU (data moved once with
``invivo.backend.to_device``, one untimed warm-up per method, timings closed by
``cupy.cuda.Device().synchronize()``).

Peers, on ``--peer-sample`` voxels (default 50) of the first size: for 2tcm-irr (and 1tcm) a
per-voxel ``scipy.optimize.curve_fit`` loop over a plain model function a user would
write -- impulse response on a uniform 0.05-min grid, ``np.convolve`` with the sampled
plasma curve (rectangle rule) plus vB x whole blood, frame means of the grid samples --
with sigma = 1 / sqrt(frame duration), p0 (K1 0.1, k2 0.1, k3 0.05, vB 0.05) and bounds
(>= 0; K1, k2 <= 5, k3 <= 2, vB <= 1), so trust-region reflective; and
``invivo.kinetics.get_model(name).fit`` per voxel (our regional lmfit fitter: exact
convolution, four starts).

    python benchmarks/kinetics.py [--sizes 1e4,1e5,1e6] [--methods patlak,2tcm-irr] [--device cpu|gpu|both]
                                  [--repeat 3] [--max-seconds 300] [--peer-sample 50] [--noise 0.05] [--chunk N]

Columns: best and median wall time, voxels/s from the best, effective GB/s for patlak and
logan (bytes of the N x 30 float32 data / best time; both read only the frames after t*),
``x scipy`` / ``x lmfit``: voxels/s over the same model's per-voxel loop, and accuracy
over status-ok voxels: median signed and median absolute relative error of Ki (patlak,
2tcm-irr), VT (logan, 1tcm) or BPND (srtm) against truth, and the share of ok voxels.  The
graphical maps are scored against the whole voxel's value, the blood included, as their
plots define it: ``Ki_vox = (1 - vB) Ki`` and ``VT_vox = (1 - vB) VT + 0.9 vB`` (the late
C_PET / C_p of a 1TCM voxel); the compartment fits and SRTM against the tissue's.

A cell is skipped, with the reason printed, when its estimated time (seconds per voxel from
the last size measured, first from a probe on the first size) exceeds --max-seconds for a
single run, or its estimated peak memory (bytes per voxel traced in the probe) exceeds 80 %
of the memory available; repeats stop early when one more would pass --max-seconds.
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
from _common import (Table, add_sweep_options, cpu_count, fmt_n, free_gpu, gpu_line, load_average,  # noqa: E402
                     machine_line, mem_available, over_budget, parse_sweep, pick_devices, probe, sync, time_runs)

FRAME_DURATIONS_S = [15] * 8 + [30] * 4 + [60] * 4 + [180] * 4 + [360] * 10
TSTAR_S = 1200.0
DT_MIN = 0.05
TABLE_SIZE = 4096
REF_K1, REF_K2 = 0.1, 0.15
METHODS = ("patlak", "logan", "srtm", "1tcm", "2tcm-irr")
DATASET = {"patlak": "irr", "2tcm-irr": "irr", "logan": "rev", "1tcm": "rev", "srtm": "ref"}
#: method -> (map output, truth): the graphical maps estimate the whole voxel's Ki / VT (the blood fraction
#: included: (1 - vB) Ki, and (1 - vB) VT + vB C_B / C_p with C_B / C_p = 0.9 here), the fits the tissue's
TRUTH = {"patlak": ("Ki", "Ki_vox"), "2tcm-irr": ("Ki", "Ki"), "logan": ("VT", "VT_vox"), "1tcm": ("VT", "VT"),
         "srtm": ("BPND", "BPND")}
BLOOD_PLASMA = 0.9
BANDWIDTH_METHODS = ("patlak", "logan")
PEER_MODELS = ("2tcm-irr", "1tcm")
PROBE_VOXELS = 10_000
#: voxels per block of the chunked maps (their working set stops growing there) and the bytes per voxel of
#: their full-size outputs (float64 maps and the status)
CHUNKED = {"srtm": 32768, "1tcm": 65536, "2tcm-irr": 65536}
OUTPUT_BYTES = 100


# ------------------------------------------------------------------------------------------- synthetic data
def frames_and_input():
    """(Frames, InputFunction): 30 frames over 80 min, a Feng-model FDG-like plasma bolus (kBq/mL)."""
    from invivo.kinetics import Frames, InputFunction

    frames = Frames.from_durations(FRAME_DURATIONS_S)
    t_s = np.unique(np.concatenate([np.arange(0, 180, 2.0), np.arange(180, 600, 15.0),
                                    np.arange(600, frames.end_s[-1] + 60.0, 60.0)]))
    t = t_s / 60.0
    a1, a2, a3, l1, l2, l3 = 851.1, 21.88, 20.81, 4.134, 0.1191, 0.01043  # Feng et al. 1993 (per min)
    cp = (a1 * t - a2 - a3) * np.exp(-l1 * t) + a2 * np.exp(-l2 * t) + a3 * np.exp(-l3 * t)
    cp = np.maximum(cp, 0.0)
    return frames, InputFunction(t_s, cp, whole_blood=BLOOD_PLASMA * cp, description="Feng 1993 bolus (synthetic)")


class Simulator:
    """Frame averages of exact convolutions for a table of rates (the maps' own arithmetic)."""

    def __init__(self, frames, inp):
        from invivo.kinetics.simulate import conv_exp, fine_grid, frame_average

        self.frames = frames
        t = fine_grid(frames, dt_min=DT_MIN)
        cp = inp.plasma_at(t * 60.0)
        self.f0 = frame_average(t, conv_exp(t, cp, 0.0), frames)  # int_0^t C_p, frame means
        self.cb = frame_average(t, inp.blood_at(t * 60.0), frames)
        self._t, self._cp, self._fa, self._conv = t, cp, frame_average, conv_exp
        self.ref = REF_K1 * frame_average(t, conv_exp(t, cp, REF_K2), frames)  # reference region, vB = 0

    def table(self, lo, hi):
        rates = np.geomspace(lo, hi, TABLE_SIZE)
        tab = np.empty((TABLE_SIZE, len(self.frames)))
        for s in range(0, TABLE_SIZE, 256):  # bounded temporaries: 256 x grid float64
            tab[s:s + 256] = self._fa(self._t, self._conv(self._t, self._cp[None, :], rates[s:s + 256]), self.frames)
        return rates, tab


def _noisy(c, rng, noise):
    d = np.asarray(FRAME_DURATIONS_S, dtype=np.float64)
    sd = noise * np.sqrt(np.maximum(c, 0.0) * c.mean(axis=1, keepdims=True) * (300.0 / d))
    return c + sd * rng.standard_normal(c.shape)


def make_data(sim: Simulator, tables: dict, n: int, *, seed: int, noise: float, chunk: int = 250_000):
    """{"irr" | "rev" | "ref": (float32 (n, 30) data, {truth name: (n,) float64})}."""
    out = {}
    for k, key in enumerate(("irr", "rev", "ref")):
        rng = np.random.default_rng([seed, k])
        y = np.empty((n, len(sim.frames)), dtype=np.float32)
        truth = {k: np.empty(n) for k in {"irr": ("Ki", "Ki_vox"), "rev": ("VT", "VT_vox"), "ref": ("BPND",)}[key]}
        rates, tab = tables[key]
        for a in range(0, n, chunk):
            m = min(n, a + chunk) - a
            if key == "irr":
                j = rng.integers(0, TABLE_SIZE, m)
                K1, frac, vB = rng.uniform(0.05, 0.5, m), rng.uniform(0.05, 0.4, m), rng.uniform(0.02, 0.1, m)
                ki = K1 * frac  # Ki = K1 k3 / (k2 + k3)
                c = (1 - vB)[:, None] * (ki[:, None] * sim.f0 + (K1 - ki)[:, None] * tab[j]) + vB[:, None] * sim.cb
                truth["Ki"][a:a + m] = ki
                truth["Ki_vox"][a:a + m] = (1 - vB) * ki
            elif key == "rev":
                j = rng.integers(0, TABLE_SIZE, m)
                K1, vB = rng.uniform(0.05, 0.5, m), rng.uniform(0.02, 0.1, m)
                c = (1 - vB)[:, None] * K1[:, None] * tab[j] + vB[:, None] * sim.cb
                truth["VT"][a:a + m] = K1 / rates[j]
                truth["VT_vox"][a:a + m] = (1 - vB) * K1 / rates[j] + vB * BLOOD_PLASMA
            else:
                r1, bp = rng.uniform(0.7, 1.4, m), rng.uniform(0.5, 3.0, m)
                j = np.clip(np.searchsorted(rates, r1 * REF_K2 / (1 + bp)), 0, TABLE_SIZE - 1)
                c = (r1 * REF_K1)[:, None] * tab[j]  # target 1TCM: K1 = R1 K1', k2 = the table rate
                truth["BPND"][a:a + m] = r1 * REF_K2 / rates[j] - 1.0  # BPND = VT / VND - 1
            y[a:a + m] = _noisy(c, rng, noise)
        out[key] = (y, truth)
    return out


# ------------------------------------------------------------------------------------------- our maps
def run_map(method, y, frames, inp, ref, chunk=None):
    """One map over all voxels, the library's defaults but for ``chunk`` (voxels per block of
    ``compartment_map``; None: its default)."""
    from invivo.kinetics import maps

    if method == "patlak":
        return maps.patlak_map(y, frames, inp, tstar_s=TSTAR_S)
    if method == "logan":
        return maps.logan_map(y, frames, inp, tstar_s=TSTAR_S)
    if method == "srtm":
        return maps.srtm_map(y, frames, ref)
    return maps.compartment_map(y, frames, inp, model=method, **({} if chunk is None else {"chunk": chunk}))


def accuracy(est, truth, ok):
    """(median signed %, median |.| %, ok %) of the relative error over ok voxels."""
    if not ok.any():
        return float("nan"), float("nan"), 0.0
    rel = (est[ok] - truth[ok]) / truth[ok]
    return 100 * float(np.median(rel)), 100 * float(np.median(np.abs(rel))), 100 * float(ok.mean())


# ------------------------------------------------------------------------------------------- peers
class UserModel:
    """What a user writes for a per-voxel fit: impulse response on a uniform grid, np.convolve
    (rectangle rule), blood term, frame means of the grid samples."""

    def __init__(self, frames, inp, dt_min=DT_MIN):
        self.dt = dt_min
        self.t = np.arange(0.0, frames.end_min[-1] + 1e-9, dt_min)  # frame boundaries fall on the grid
        self.cp = inp.plasma_at(self.t * 60.0)
        self.cb = inp.blood_at(self.t * 60.0)
        self.i0 = np.rint(frames.start_min / dt_min).astype(int)
        self.count = np.rint(frames.duration_s / 60.0 / dt_min).astype(int)

    def _frames(self, c):
        return np.add.reduceat(c[:-1], self.i0) / self.count  # mean of the samples in [start, end)

    def two_tcm_irr(self, _x, K1, k2, k3, vB):
        b = k2 + k3
        irf = K1 / b * (k3 + k2 * np.exp(-b * self.t)) if b > 0 else K1 * np.ones_like(self.t)
        ct = np.convolve(self.cp, irf)[: self.t.size] * self.dt
        return self._frames((1 - vB) * ct + vB * self.cb)

    def one_tcm(self, _x, K1, k2, vB):
        ct = np.convolve(self.cp, K1 * np.exp(-k2 * self.t))[: self.t.size] * self.dt
        return self._frames((1 - vB) * ct + vB * self.cb)


def scipy_loop(model, ys, frames, inp):
    """Per-voxel curve_fit loop: (wall s, CPU s, fitted parameter of interest per voxel, failures)."""
    from scipy.optimize import OptimizeWarning, curve_fit

    um = UserModel(frames, inp)
    sigma = 1.0 / np.sqrt(frames.duration_s)
    if model == "2tcm-irr":
        f, p0, bounds = um.two_tcm_irr, (0.1, 0.1, 0.05, 0.05), ((0, 0, 0, 0), (5, 5, 2, 1))
        derived = lambda p: p[0] * p[2] / (p[1] + p[2]) if p[1] + p[2] > 0 else np.nan  # noqa: E731
    else:
        f, p0, bounds = um.one_tcm, (0.1, 0.1, 0.05), ((0, 0, 0), (5, 5, 1))
        derived = lambda p: p[0] / p[1] if p[1] > 0 else np.nan  # noqa: E731
    x = np.arange(len(frames))
    est, failed = np.full(ys.shape[0], np.nan), 0
    c = time.process_time()
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        for i, v in enumerate(ys):
            try:
                p, _ = curve_fit(f, x, v, p0=p0, sigma=sigma, bounds=bounds)
                est[i] = derived(p)
            except (RuntimeError, ValueError):
                failed += 1
    return time.perf_counter() - t, time.process_time() - c, est, failed


def lmfit_loop(model, ys, frames, inp):
    """Per-voxel ``get_model(model).fit`` loop: (wall s, CPU s, parameter of interest, failures)."""
    from invivo.errors import InvivoError, InvivoWarning
    from invivo.kinetics import get_model

    m = get_model(model)
    key = TRUTH[model][0]
    est, failed = np.full(ys.shape[0], np.nan), 0
    c = time.process_time()
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InvivoWarning)
        for i, v in enumerate(ys):
            try:
                est[i] = m.fit(v.astype(np.float64), frames, inp).params[key]
            except InvivoError:
                failed += 1
    return time.perf_counter() - t, time.process_time() - c, est, failed


# ------------------------------------------------------------------------------------------- environment
def _load_line(cpus):
    l1, l5 = load_average()
    note = "  (other processes share the CPU: timings are pessimistic)" if l1 > 0.75 * cpus else ""
    return f"load average {l1:.2f} (1 min), {l5:.2f} (5 min) on {cpus} cores{note}"


def main(argv=None):
    from invivo.backend import to_device
    from invivo.kinetics.maps import MAP_STATUS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sweep_options(ap, sizes="1e4,1e5,1e6", methods=METHODS)
    ap.add_argument("--peer-sample", type=int, default=50, help="voxels fitted by each per-voxel loop (0: none)")
    ap.add_argument("--noise", type=float, default=0.05, help="relative SD of a 300-s frame at the curve's mean")
    ap.add_argument("--chunk", type=int, default=None,
                    help="voxels per block of compartment_map (1tcm, 2tcm-irr); default: the library's")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    sizes, methods = parse_sweep(ap, args, METHODS)
    if not args.noise >= 0:
        ap.error("--noise must be >= 0 (relative SD of a 300-s frame)")
    if args.chunk is not None and args.chunk < 1:
        ap.error("--chunk must be >= 1 voxel")
    devices = pick_devices(args.device)
    if not devices:
        return 0

    cpus = cpu_count()
    print(machine_line())
    print(f"# {_load_line(cpus)}")
    if "gpu" in devices:
        print(gpu_line())
    frames, inp = frames_and_input()
    nf = len(frames)
    print(f"# {nf} frames over {frames.end_min[-1]:g} min, float32, Feng bolus input, noise {100 * args.noise:g} % "
          f"(300-s frame at the curve's mean), t* {TSTAR_S:g} s for patlak/logan, seed {args.seed}"
          + (f", compartment_map chunk {args.chunk}" if args.chunk else ""))

    t = time.perf_counter()
    sim = Simulator(frames, inp)
    tables = {"irr": sim.table(0.1, 0.8), "rev": sim.table(0.05, 0.5),
              "ref": sim.table(0.7 * REF_K2 / 4.0, 1.4 * REF_K2 / 1.5)}
    print(f"# rate tables ({TABLE_SIZE} exact convolutions each) in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    # ---- peers on a sample of the probe data
    n_probe = min(PROBE_VOXELS, sizes[0])
    probe_data = make_data(sim, tables, n_probe, seed=args.seed + 12345, noise=args.noise)
    peer_rate, peer_acc, peer_voxels = {}, {}, {}
    if args.peer_sample > 0:
        for model in PEER_MODELS:
            if model not in methods:
                continue
            y, truths = probe_data[DATASET[model]]
            out_name, truth_name = TRUTH[model]
            truth = truths[truth_name]
            idx = np.random.default_rng(args.seed + 1).choice(y.shape[0], size=min(args.peer_sample, y.shape[0]),
                                                            replace=False)
            ys = y[idx].astype(np.float64)
            peer_voxels[model] = ys
            for peer, loop in (("scipy", scipy_loop), ("lmfit", lmfit_loop)):
                dt, dc, est, failed = loop(model, ys, frames, inp)
                ok = np.isfinite(est)
                peer_rate[model, peer] = ys.shape[0] / dt
                peer_acc[model, peer] = accuracy(est, truth[idx], ok)
                print(f"# peer {peer} loop, {model}, {ys.shape[0]} voxels: {dt:.2f} s ({dc:.2f} s CPU), "
                      f"{peer_rate[model, peer]:.3g} "
                      f"voxels/s, {failed} failed; {out_name} median error {peer_acc[model, peer][0]:+.2f} %, "
                      f"median |error| {peer_acc[model, peer][1]:.2f} %", flush=True)
            # our map on the same voxels, for a like-for-like accuracy line
            res = run_map(model, y[idx], frames, inp, sim.ref, args.chunk)
            a = accuracy(np.asarray(res[out_name], dtype=np.float64), truth[idx], res["status"] == MAP_STATUS["ok"])
            print(f"#   map on the same {ys.shape[0]} voxels: median error {a[0]:+.2f} %, median |error| {a[1]:.2f} %")

    per_voxel_s, per_voxel_b = {}, {}
    for dev in devices:
        for m in methods:
            y = to_device(probe_data[DATASET[m]][0], dev)
            per_voxel_s[dev, m], per_voxel_b[dev, m] = probe(
                lambda: (run_map(m, y, frames, inp, sim.ref, args.chunk), sync(dev)), n_probe, dev)
            del y
    print(f"# probe ({n_probe} voxels) peak bytes/voxel: "
          + ", ".join(f"{dev} {m} {per_voxel_b[dev, m]:.0f}" for dev in devices for m in methods))
    del probe_data

    table = Table(("device", "6s"), ("method", "9s"), ("voxels", ">6s"), ("runs", "4d"), ("best s", "8.3f"),
                  ("median s", "9.3f"), ("cpu s", "8.3f"), ("voxels/s", "9.3g"), ("GB/s", "6.2f"), ("x scipy", "8.0f"),
                  ("x lmfit", "8.0f"), ("truth", ">6s"), ("err %", "+7.2f"), ("|err| %", "7.2f"), ("ok %", "6.1f"))
    print(table.header())
    for n in sizes:
        t = time.perf_counter()
        data = make_data(sim, tables, n, seed=args.seed, noise=args.noise)
        print(f"# generated {fmt_n(n)} voxels x 3 data sets in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        for dev in devices:
            avail = mem_available(dev)
            for m in methods:
                block = args.chunk if (args.chunk and m in ("1tcm", "2tcm-irr")) else CHUNKED.get(m)
                est_b = (per_voxel_b[dev, m] * min(n, block) + OUTPUT_BYTES * n if m in CHUNKED
                         else per_voxel_b[dev, m] * n)
                skip = over_budget(per_voxel_s[dev, m] * n, est_b, avail, args.max_seconds)
                if skip:
                    print(f"{table.row(dev, m, fmt_n(n))}  {skip}")
                    continue
                y_host, truths = data[DATASET[m]]
                out_name, truth_name = TRUTH[m]
                y = to_device(y_host, dev)
                if dev == "gpu":
                    run_map(m, y, frames, inp, sim.ref, args.chunk)  # warm-up: kernel compilation
                    sync(dev)
                best, med, res, runs, cpu_s = time_runs(
                    lambda: (run_map(m, y, frames, inp, sim.ref, args.chunk), sync(dev))[0], args.repeat,
                    args.max_seconds)
                per_voxel_s[dev, m] = best / n
                rate = n / best
                gbs = y_host.nbytes / best / 1e9 if m in BANDWIDTH_METHODS else None
                xs, xl = (rate / peer_rate[m, p] if (m, p) in peer_rate else None for p in ("scipy", "lmfit"))
                ok = to_device(res["status"], "cpu").reshape(-1) == MAP_STATUS["ok"]
                est = to_device(res[out_name], "cpu").reshape(-1).astype(np.float64)
                e, ae, okp = accuracy(est, truths[truth_name], ok)
                print(table.row(dev, m, fmt_n(n), runs, best, med, cpu_s, rate, gbs, xs, xl, truth_name, e, ae, okp),
                      flush=True)
                del res, y, ok, est
                free_gpu(dev)
        del data
        gc.collect()
    for model, ys in peer_voxels.items():  # the load may have changed since the start: measure the loop again
        dt, dc, _, _ = scipy_loop(model, ys, frames, inp)
        print(f"# peer scipy loop, {model}, measured again at the end: {dt:.2f} s ({dc:.2f} s CPU), "
              f"{ys.shape[0] / dt:.3g} voxels/s (the table's x scipy used {peer_rate[model, 'scipy']:.3g})")
    print(f"# {_load_line(cpus)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
