"""What the benchmark scripts share: the machine header, timing, the memory probe, the budget guard, tables.

Imported by file location (benchmarks/ is not a package): each script puts its own folder on
``sys.path`` and imports ``_common``.
"""

from __future__ import annotations

import gc
import os
import platform
import re
import time
import tracemalloc
from datetime import date

import numpy as np

DEVICES = ("cpu", "gpu", "both")


# ---------------------------------------------------------------------- machine
def cpu_count() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; ``platform`` elsewhere)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return name


def machine_line() -> str:
    """``# <date>  <n> CPU cores (<model>), numpy <v>, scipy <v>``."""
    import scipy

    return (f"# {date.today().isoformat()}  {cpu_count()} CPU cores ({cpu_name()}), numpy {np.__version__}, "
            f"scipy {scipy.__version__}")


def gpu_line() -> str:
    """``# GPU: <name>, CuPy <v>`` of the current CUDA device."""
    from invivo.backend import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return f"# GPU: {name}, CuPy {cupy.__version__}"


def load_average() -> tuple[float, float]:
    """(1-minute, 5-minute) load average; NaN where the OS has none."""
    if not hasattr(os, "getloadavg"):
        return float("nan"), float("nan")
    l1, l5, _ = os.getloadavg()
    return l1, l5


def mem_available(device: str = "cpu") -> float:
    """Bytes free for new arrays: host memory (``MemAvailable``) or, for ``"gpu"``, the device plus CuPy's pool."""
    if device == "gpu":
        from invivo.backend import cupy

        pool = cupy.get_default_memory_pool()
        return float(cupy.cuda.Device().mem_info[0] + pool.free_bytes())
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


# ---------------------------------------------------------------------- devices
def pick_devices(choice: str) -> list[str]:
    """The devices of ``--device`` (cpu, gpu, both); GPU dropped, with one line saying so, when CuPy sees none."""
    from invivo.backend import has_gpu

    devices = ["cpu", "gpu"] if choice == "both" else [choice]
    if "gpu" in devices and not has_gpu():
        print("# GPU figures need a CUDA device with CuPy (pip install -e '.[gpu]'); none here: GPU rows skipped")
        devices.remove("gpu")
    return devices


def sync(device: str) -> None:
    """Wait for the GPU's queued work (timings end here); nothing on CPU."""
    if device == "gpu":
        from invivo.backend import cupy

        cupy.cuda.Device().synchronize()


def free_gpu(device: str) -> None:
    """Hand CuPy's cached blocks back after a size, so the next memory estimate sees them free."""
    if device == "gpu":
        from invivo.backend import cupy

        cupy.get_default_memory_pool().free_all_blocks()


# ---------------------------------------------------------------------- options
def add_sweep_options(ap, *, sizes: str, methods) -> None:
    """--sizes, --methods, --device, --repeat, --max-seconds of a sizes x methods x devices sweep."""
    ap.add_argument("--sizes", default=sizes, help=f"voxel counts, comma separated (default {sizes})")
    ap.add_argument("--methods", default=",".join(methods), help=f"comma separated, from {', '.join(methods)}")
    ap.add_argument("--device", choices=DEVICES, default="both")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=300.0, help="time budget per cell (method x size x device)")


def parse_sweep(ap, args, methods) -> tuple[list[int], list[str]]:
    """(sorted sizes, methods) of the sweep options; a bad value ends the script with argparse's one-line error."""
    sizes = set()
    for s in args.sizes.split(","):
        if s.strip():
            try:
                sizes.add(int(float(s)))
            except (ValueError, OverflowError):
                ap.error(f"--sizes: {s.strip()!r} is not a voxel count; give numbers such as 1e5,1e6")
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in methods]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; valid: {', '.join(methods)}")
    if not sizes or min(sizes) < 1:
        ap.error("--sizes must be positive voxel counts")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    return sorted(sizes), chosen


# ---------------------------------------------------------------------- timing
def time_runs(fn, runs: int, budget_s: float = float("inf")):
    """(best, median, last result, calls made, CPU seconds of the best call) of up to ``runs`` calls of ``fn``.

    Wall times in seconds.  Stops early when one more call (as long as the slowest so far) would
    pass ``budget_s`` in all.  The CPU time (this process, all threads) tells how much of the
    wall time other processes took when the machine is shared.
    """
    times, cpu, out = [], [], None
    for _ in range(runs):
        if times and sum(times) + max(times) > budget_s:
            break
        out = None  # the previous result is freed before the next call
        gc.collect()
        c = time.process_time()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(times), float(np.median(times)), out, len(times), cpu[int(np.argmin(times))]


def probe(fn, n: int, device: str) -> tuple[float, float]:
    """(seconds per voxel, peak bytes per voxel) of one call of ``fn`` on ``n`` voxels.

    GPU: after one warm-up call (kernel compilation), the peak is CuPy's pool high-water mark.
    CPU: the peak is traced with tracemalloc (NumPy reports its buffers to it) on a second call.
    """
    if device == "gpu":
        from invivo.backend import cupy

        fn()
        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        peak = pool.total_bytes()  # the pool keeps every block it needed: its high-water mark
        pool.free_all_blocks()
        return dt / n, peak / n
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return dt / n, peak / n


def over_budget(est_s: float, est_b: float, avail_b: float, max_seconds: float) -> str | None:
    """Why a cell is skipped (its estimated peak memory over 80 % of ``avail_b``, or one run over
    ``max_seconds``), or None when it runs."""
    if est_b > 0.8 * avail_b:
        return f"skipped: needs ~{est_b / 1e9:.2f} GB, over 80 % of the {avail_b / 1e9:.2f} GB available"
    if est_s > max_seconds:
        shown = f"{est_s:.0f}" if est_s >= 100 else f"{est_s:.3g}"
        return f"skipped: one run would take ~{shown} s > --max-seconds {max_seconds:g}"
    return None


# ---------------------------------------------------------------------- printing
def fmt_n(n: int) -> str:
    """1e5, 2.5e6, ...: voxel counts as the --sizes option takes them."""
    if n < 1000:
        return str(n)
    e = int(np.floor(np.log10(n)))
    return f"{n / 10 ** e:.3g}e{e}"


class Table:
    """Fixed-width text table: columns given as (title, format spec of the values), e.g. ("best s", "8.3f").

    Titles take the values' width, left-aligned for plain string columns ("6s"), right-aligned
    otherwise; a None value prints as a right-aligned "-".  ``row`` formats as many leading
    columns as it is given values (a skipped cell's label).
    """

    def __init__(self, *columns: tuple[str, str]):
        self.columns = columns
        self._widths = [int(re.search(r"\d+", spec).group()) for _, spec in columns]

    def header(self) -> str:
        return " ".join(f"{title:{'<' if spec[0].isdigit() and spec.endswith('s') else '>'}{w}}"
                        for (title, spec), w in zip(self.columns, self._widths))

    def row(self, *values) -> str:
        return " ".join(f"{'-':>{w}}" if v is None else f"{v:{spec}}"
                        for v, (_, spec), w in zip(values, self.columns, self._widths))
