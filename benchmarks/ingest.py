"""Ingest benchmark: invivo.load beside SimpleITK's ImageSeriesReader and dcm2niix on the same folders.

Writes (once, cached under --work) a 200-slice x 40-frame dynamic PET and a 12-echo MR
with invivo.synth, then times reading them.  Prints files/s and wall time per reader.

    python benchmarks/ingest.py [--work DIR] [--repeat 5] [--matrix 128]

dcm2niix comes from the `dcm2niix` PyPI package (pip install -e ".[bench]"); SimpleITK is
a required dependency.  dcm2niix writes uncompressed NIfTI (-z n) to a temporary folder,
so its figure includes writing; invivo's and SimpleITK's are in-memory loads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Table, time_runs  # noqa: E402


def make_dynamic_pet(folder: Path, *, n_slices=200, n_frames=40, matrix=128):
    from invivo import Meta, Subject, Tracer, Volume
    from invivo.synth import write_dicom

    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 1000.0, size=(matrix, matrix, n_slices, n_frames)).astype(np.float32)
    durations = [10.0] * 12 + [30.0] * 8 + [60.0] * 10 + [300.0] * 10
    starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    t0 = datetime(2026, 3, 1, 10, 0, 0)
    meta = Meta(modality="PT", units="BQML", decay_correction="START", series_datetime=t0,
                frame_start_s=tuple(starts[:n_frames]), frame_duration_s=tuple(durations[:n_frames]),
                tracer=Tracer("FDG", "18F", 6586.2, 10e6, t0 - timedelta(seconds=30)),
                subject=Subject(id="bench", weight_kg=0.025, species="mouse"))
    vol = Volume(data, np.diag([0.4, 0.4, 0.8, 1.0]), meta)
    write_dicom(vol, folder)


def make_multiecho_mr(folder: Path, *, n_slices=40, n_echoes=12, matrix=256):
    from invivo import Meta, Volume
    from invivo.synth import write_dicom

    te = tuple(0.002 + 0.002 * np.arange(n_echoes))
    s = 1000.0 * np.exp(-np.outer(np.full(matrix * matrix * n_slices, 50.0), te))
    data = s.reshape(matrix, matrix, n_slices, n_echoes)
    vol = Volume(data, np.diag([0.1, 0.1, 0.5, 1.0]), Meta(modality="MR", echo_times_s=te, series_datetime=datetime(2026, 3, 1, 11)))
    write_dicom(vol, folder)


def read_invivo(folder, dtype=np.float32):
    import invivo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return invivo.load(folder, dtype=dtype)


def read_invivo64(folder):
    return read_invivo(folder, np.float64)


def scan_invivo(folder):
    import invivo

    return invivo.scan(folder)


def read_sitk(folder):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    return reader.Execute()


def dcm2niix_exe():
    """Path of the dcm2niix binary (on PATH, or shipped by the PyPI package), or None."""
    exe = shutil.which("dcm2niix")
    if exe is None:
        try:
            import dcm2niix  # the PyPI package ships the binary
        except ImportError:
            return None
        exe = str(Path(dcm2niix.__file__).parent / "dcm2niix")
        if not Path(exe).exists():
            exe = shutil.which("dcm2niix", path=str(Path(sys.executable).parent))
    return exe or None


def read_dcm2niix(folder, exe):
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([exe, "-z", "n", "-b", "y", "-o", out, str(folder)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "invivo-bench-ingest"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--matrix", type=int, default=128, help="PET matrix (MR is 256)")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.matrix < 1:
        ap.error("--repeat and --matrix must be >= 1")
    work = Path(args.work)
    cases = {  # the PET folder is named by its matrix: a cache of another --matrix is never timed in its place
        "dynamic PET 200 slices x 40 frames": (work / f"pet_dynamic_{args.matrix}",
                                               lambda f: make_dynamic_pet(f, matrix=args.matrix)),
        "multi-echo MR 40 slices x 12 echoes": (work / "mr_12echo", make_multiecho_mr),
    }
    exe = dcm2niix_exe()
    readers = (("invivo float32", read_invivo), ("invivo float64", read_invivo64), ("invivo scan", scan_invivo),
               ("SimpleITK", read_sitk), ("dcm2niix -z n", exe and (lambda folder: read_dcm2niix(folder, exe))))
    table = Table(("case", "40s"), ("reader", "18s"), ("files", "6d"), ("best s", "8.2f"), ("median s", "9.2f"),
                  ("files/s", "9.0f"))
    print(table.header())
    for name, (folder, make) in cases.items():
        if not folder.exists():  # written beside, then renamed: an interrupted write is not taken for a cache
            t = time.perf_counter()
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            make(partial)
            partial.rename(folder)
            print(f"# wrote {name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        n = sum(1 for _ in folder.rglob("*") if _.is_file())
        for reader, fn in readers:
            if fn is None:
                print(f"{table.row(name, reader)} (not installed: pip install dcm2niix)")
                continue
            best, med, *_ = time_runs(lambda: fn(folder), args.repeat)
            print(table.row(name, reader, n, best, med, n / best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
