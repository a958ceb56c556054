"""Cohort benchmark: ``invivo.study.run_cohort`` serial and on a local dask.distributed cluster.

The cohort (built once, not timed): ``--studies`` small synthetic studies from
``invivo.demo.build_cohort`` -- each one mouse, one session 72 h after a 89Zr antibody, a
gradient-echo MR and a PET moved against it by up to 3 degrees / 2 mm, liver, spleen and
tumour ROIs from the phantom's labels, %ID/g.  It is kept in a temporary folder, or in
``--keep DIR/cohort`` and reused by later runs with the same settings.

    python benchmarks/cohort.py [--studies 64] [--subjects-per-study 1] [--workers 1,2]
                                [--report | --no-report] [--keep DIR] [--voxel-mm 1.0]
                                [--seed 0] [--project 10000]

Modes, each into a fresh, empty output folder (nothing from an earlier run -- no finished
registration -- is reused; a line says so should any step be reused):

- ``serial``: ``run_cohort(files, out, scheduler=None)``, every subject in this process.
- ``local``, one row per ``--workers`` count: a ``distributed.LocalCluster`` with that many
  worker processes of one thread each (the settings of ``scheduler="local"``) and a
  ``Client``, made here and passed as ``scheduler=``; ``start-up s`` is the time to make
  them, and is not in ``wall s``.

Before each mode, untimed, a warm-up runs into a scratch folder in the process(es) that will
do the work: for ``serial`` the first study, whole (its subject, tables and report), in this
process; for ``local`` its first subject on every worker.  So first-call imports (SimpleITK,
matplotlib, pandas' Parquet engine) are timed in no mode; ``warm-up s`` shows what that took.

Columns: ``wall s`` is the time of the ``run_cohort`` call (the subjects' tasks, and each
study's tables and report -- in this process when serial, as a task of its own on a worker
as soon as the study's subjects are done on a cluster); studies/min and
subjects/min from it; speed-up against ``serial``; per-subject seconds (median and maximum)
are the wall time of ``process_subject`` -- serial: timed around each call; local: the
task's compute span in dask's task stream (``distributed.get_task_stream``); ``CPU s/subj``
is CPU time per subject: serial, this process's CPU time (all threads) inside
``process_subject``; local, the workers' process CPU time over the run (tasks plus the
worker's own overhead) divided by the subjects; ``assembly s`` is the time spent on tables
and reports (summed over studies; on a cluster, the assembly tasks' compute spans).

The benchmark also claims determinism: every mode's measures table must equal the serial
one exactly (``DataFrame.equals``); the script exits 1 when one does not, or when a study
or subject failed.

Last, a projection to 10,000 studies (``--project``) from these measurements: per-subject
CPU seconds x subjects / N workers, plus the scheduler overhead per task (the 1-worker
cluster's wall time minus the serial wall time, over the tasks) spread over the workers,
plus the assembly per study, spread over the workers like the subjects' tasks.  The overhead line also says how much of it the 1-worker run spent outside task
compute and assembly (dispatch and transfer); the rest is the difference in compute time
between the serial run and the worker (on a busy machine, mostly contention: noise).
Assumptions are printed with it: I/O not modelled (inputs and outputs on a shared
filesystem as fast as the local disk here), one thread per worker on a core as fast as
these, perfect load balance, and the scheduler not saturated.  It is a projection, not a
measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Table, cpu_count, load_average, machine_line  # noqa: E402

PROJECT_WORKERS = (2, 16, 64, 256)


# ---------------------------------------------------------------------- the cohort
def cohort(folder: Path, n_studies: int, subjects: int, voxel_mm: float, seed: int) -> tuple[list[Path], bool]:
    """(study files, reused?): ``folder``'s cohort when ``cohort.json`` there records the same settings, else built."""
    import invivo
    from invivo.demo import build_cohort

    want = {"studies": n_studies, "subjects_per_study": subjects, "voxel_size_mm": voxel_mm, "seed": seed,
            "invivo": invivo.__version__}
    stamp = folder / "cohort.json"
    if stamp.exists():
        try:
            rec = json.loads(stamp.read_text())
        except (OSError, ValueError):
            rec = {}
        files = [Path(f) for f in rec.get("files", [])]
        if rec.get("settings") == want and files and all(f.exists() for f in files):
            return files, True
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = build_cohort(folder, n_studies, subjects_per_study=subjects, voxel_size_mm=voxel_mm, seed=seed)
    stamp.write_text(json.dumps({"settings": want, "files": [str(f) for f in files]}, indent=1))
    return files, False


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# ---------------------------------------------------------------------- timing hooks
class _Patched:
    """Replace ``invivo.study.<name>`` by a timing wrapper for the duration of a ``with`` block.

    ``run_cohort`` looks ``process_subject`` and ``_assemble`` up in its module at call time, so the
    wrapper sees every call made in this process.  Each call appends (wall s, CPU s of this process,
    the result) to ``records``.
    """

    def __init__(self, name: str):
        import invivo.study as study

        self.module, self.name, self.original, self.records = study, name, getattr(study, name), []

    def __enter__(self):
        original, records = self.original, self.records

        def timed(*args, **kwargs):
            c, t = time.process_time(), time.perf_counter()
            out = original(*args, **kwargs)
            records.append((time.perf_counter() - t, time.process_time() - c, out))
            return out

        setattr(self.module, self.name, timed)
        return self

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.original)
        return False


def worker_cpu(client) -> dict:
    """Process CPU seconds (all threads) of every worker, by address."""
    return client.run(time.process_time)


def task_spans(stream: list, kind: str = "subject") -> list[float]:
    """Seconds of each invivo task's compute span in a dask task stream: the subjects' tasks (``kind="subject"``)
    or the studies' assembly tasks (tables and report, ``kind="assemble"``)."""
    out = []
    for rec in stream:
        key = str(rec.get("key", ""))
        if "invivo-" not in key or (("-assemble-" in key) != (kind == "assemble")):
            continue
        out += [s["stop"] - s["start"] for s in rec.get("startstops", ()) if s.get("action") == "compute"]
    return out


# ---------------------------------------------------------------------- the modes
def run_mode(files, out: Path, *, report: bool, client=None) -> dict:
    """One timed ``run_cohort`` call into ``out`` (empty); what was measured."""
    from invivo.study import run_cohort

    out.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # registration quality notes and the like: recorded in the outputs
        with _Patched("_assemble") as asm:
            if client is None:
                with _Patched("process_subject") as subj:
                    t = time.perf_counter()
                    results = run_cohort(files, out, report=report)
                    wall = time.perf_counter() - t
                spans = [r[0] for r in subj.records]
                cpu = sum(r[1] for r in subj.records)
            else:
                from distributed import get_task_stream

                cpu0 = worker_cpu(client)
                with get_task_stream(client) as ts:
                    t = time.perf_counter()
                    results = run_cohort(files, out, report=report, scheduler=client)
                    wall = time.perf_counter() - t
                cpu1 = worker_cpu(client)
                spans = task_spans(ts.data)
                cpu = sum(cpu1[w] - cpu0.get(w, 0.0) for w in cpu1)
                # on a cluster each study's tables and report are a task of their own, on a worker
                asm.records += [(x, 0.0, None) for x in task_spans(ts.data, "assemble")]
    bad = {stem: r for stem, r in results.items() if isinstance(r, str) or r.failures}
    ok = {stem: r for stem, r in results.items() if stem not in bad}
    return {"wall": wall, "spans": spans, "cpu": cpu, "assembly": sum(r[0] for r in asm.records),
            "results": results, "bad": bad,
            "reused": sum(len(r.reused) for r in ok.values())}


def warm_up(files, scratch: Path, *, report: bool, client=None) -> float:
    """Seconds of the untimed warm-up: the first study, whole, into ``scratch`` in this process (its subjects,
    tables and report), or its first subject on every worker."""
    from invivo.study import load_study, process_subject, run_cohort

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if client is None:
            run_cohort(files[:1], scratch, report=report)
        else:
            st = load_study(files[0])
            sid = next(iter(st.subjects))
            workers = list(client.scheduler_info()["workers"])
            futs = [client.submit(process_subject, st, sid, scratch / f"w{i}", figures=report, pure=False,
                                  workers=[w], allow_other_workers=False, key=f"warm-up-{i}")
                    for i, w in enumerate(workers)]
            client.gather(futs)
    return time.perf_counter() - t


def same_tables(ref: dict, other: dict) -> list[str]:
    """Where ``other``'s measures tables differ from ``ref``'s (empty: identical)."""
    diffs = []
    for stem, r in ref.items():
        o = other.get(stem)
        if isinstance(r, str) or isinstance(o, str) or o is None:
            diffs.append(f"{stem}: not run in both")
            continue
        if not r.table.equals(o.table):
            num = r.table.select_dtypes("number").columns
            try:
                d = float(np.nanmax(np.abs(r.table[num].to_numpy(float) - o.table[num].to_numpy(float))))
                diffs.append(f"{stem}: measures differ (largest numeric difference {d:.3g})")
            except ValueError:
                diffs.append(f"{stem}: measures differ (rows or columns)")
    return diffs


# ---------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=64, help="studies in the cohort (default 64)")
    ap.add_argument("--subjects-per-study", type=int, default=1, help="subjects (mice) per study (default 1)")
    ap.add_argument("--workers", default="1,2", help="worker counts of the local cluster, comma separated "
                    "(default 1,2; 1 is needed for the scheduler overhead)")
    ap.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                    help="write each study's figures and report.html, as `invivo run` does (default: yes)")
    ap.add_argument("--keep", metavar="DIR", help="build the cohort in DIR/cohort (reused when the settings match) "
                    "and keep every run's outputs in DIR/runs-<time>/; default: a temporary folder, removed")
    ap.add_argument("--voxel-mm", type=float, default=1.0, help="phantom voxel size, mm (default 1.0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--project", type=int, default=10_000, help="studies of the projection (default 10000)")
    args = ap.parse_args(argv)
    try:
        workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    except ValueError:
        ap.error(f"--workers: give worker counts such as 1,2 (got {args.workers!r})")
    if args.studies < 1 or args.subjects_per_study < 1 or args.project < 1 or any(w < 1 for w in workers):
        ap.error("--studies, --subjects-per-study, --project and every --workers count must be >= 1")

    import distributed

    import invivo

    logging.getLogger("distributed").setLevel(logging.ERROR)
    print(machine_line() + f", distributed {distributed.__version__}, invivo {invivo.__version__}")
    load0 = load_average()
    print(f"# load average (1 min, 5 min) at the start: {load0[0]:.2f}, {load0[1]:.2f} on {cpu_count()} cores")

    tmp = None
    if args.keep:
        base = Path(args.keep)
        runs = base / f"runs-{datetime.now():%Y%m%d-%H%M%S}"
    else:
        tmp = tempfile.TemporaryDirectory(prefix="invivo-cohort-bench-")
        base = runs = Path(tmp.name)
    try:
        t = time.perf_counter()
        files, reused = cohort(base / "cohort", args.studies, args.subjects_per_study, args.voxel_mm, args.seed)
        n_tasks = args.studies * args.subjects_per_study
        print(f"# cohort: {args.studies} studies x {args.subjects_per_study} subject(s) = {n_tasks} tasks "
              f"(MR + PET, one session, {args.voxel_mm:g} mm phantom), "
              f"{folder_bytes(base / 'cohort') / 1e6:.1f} MB of DICOM in {base / 'cohort'}; "
              + ("reused (not timed)" if reused else f"built in {time.perf_counter() - t:.1f} s (not timed)"))
        print(f"# every mode runs into a fresh, empty output folder: no finished registration or fit is reused; "
              f"report {'on' if args.report else 'off'}")
        return _bench(files, runs, args, workers, n_tasks)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _bench(files, runs: Path, args, workers, n_tasks) -> int:
    import distributed

    rows, status = [], 0
    scratch = runs / "warm-up"
    t_warm = warm_up(files, scratch / "serial", report=args.report)
    serial = run_mode(files, runs / "serial", report=args.report)
    rows.append(("serial", 1, None, t_warm, serial))
    print(f"# serial done: {serial['wall']:.1f} s", file=sys.stderr, flush=True)
    for w in workers:
        t = time.perf_counter()
        with distributed.LocalCluster(n_workers=w, threads_per_worker=1, processes=True, dashboard_address=None,
                                      silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as client:
            client.wait_for_workers(w)
            t_start = time.perf_counter() - t
            t_warm = warm_up(files, scratch / f"local{w}", report=args.report, client=client)
            res = run_mode(files, runs / f"local-{w}", report=args.report, client=client)
        rows.append(("local", w, t_start, t_warm, res))
        print(f"# local {w} worker(s) done: {res['wall']:.1f} s", file=sys.stderr, flush=True)
    load1 = load_average()

    table = Table(("mode", "6s"), ("workers", "7d"), ("start-up s", "10.2f"), ("warm-up s", "9.2f"),
                  ("wall s", "8.2f"), ("studies/min", "11.1f"), ("subjects/min", "12.1f"), ("speed-up", "8.2f"),
                  ("subj median s", "13.2f"), ("subj max s", "10.2f"), ("CPU s/subj", "10.2f"),
                  ("assembly s", "10.2f"))
    print(table.header())
    t_serial = serial["wall"]
    for mode, w, t_start, t_warm, r in rows:
        n_subj = n_tasks
        spans = np.array(r["spans"]) if r["spans"] else np.array([np.nan])
        print(table.row(mode, w, t_start, t_warm, r["wall"], 60.0 * args.studies / r["wall"],
                        60.0 * n_tasks / r["wall"], t_serial / r["wall"], float(np.median(spans)),
                        float(np.max(spans)), r["cpu"] / n_subj, r["assembly"]))
    print(f"# load average (1 min, 5 min) at the end: {load1[0]:.2f}, {load1[1]:.2f}; above {cpu_count()} "
          "means other processes shared the cores (wall times then overstate)")

    # checks: failures, reuse, identical numbers
    for mode, w, _, _, r in rows:
        label = f"{mode} {w}" if mode == "local" else mode
        for stem, why in r["bad"].items():
            print(f"FAILED {label} {stem}: {why if isinstance(why, str) else why.failures}")
            status = 1
        if r["reused"]:
            print(f"# note: {label} reused {r['reused']} finished steps (expected none in a fresh folder)")
        if mode == "local":
            diffs = same_tables(serial["results"], r["results"])
            if diffs:
                status = 1
                print(f"MISMATCH {label}: " + "; ".join(diffs[:5]) + (" ..." if len(diffs) > 5 else ""))
            else:
                n_rows = sum(len(x.table) for x in r["results"].values() if not isinstance(x, str))
                print(f"# {label} worker(s): measures tables identical to serial ({n_rows} rows in "
                      f"{len(r['results'])} studies)")

    _projection(args, rows, n_tasks)
    return status


def _projection(args, rows, n_tasks) -> None:
    serial = rows[0][4]
    one = next((r for mode, w, _, _, r in rows if mode == "local" and w == 1), None)
    cpu_subj = serial["cpu"] / n_tasks
    asm_study = serial["assembly"] / args.studies
    n_proj = args.project * args.subjects_per_study
    if one is not None:
        overhead = (one["wall"] - serial["wall"]) / n_tasks
        o_note = (f"{overhead:+.3f} s per task (1-worker cluster {one['wall']:.2f} s - serial "
                  f"{serial['wall']:.2f} s, over {n_tasks} tasks)")
        if overhead < 0:
            o_note += "; negative: within the noise of this machine, counted as 0"
        gap = (one["wall"] - one["assembly"] - sum(one["spans"])) / n_tasks
        o_note += (f"; {gap:.3f} s per task of the 1-worker run was spent outside task compute and assembly "
                   "(dispatch, transfer); the rest is the difference in compute time between the two runs")
        overhead = max(overhead, 0.0)
    else:
        overhead, o_note = 0.0, "not measured (run with --workers including 1); counted as 0"
    print()
    print(f"# projection to {args.project} studies ({n_proj} tasks) from these measurements, not a measurement:")
    print(f"#   per-subject CPU {cpu_subj:.2f} s (serial, this machine); scheduler overhead {o_note}")
    print(f"#   assembly (tables{' and report' if args.report else ''}) {asm_study:.2f} s per study, a task on a "
          "worker once the study's subjects are done: spread over the N workers too")
    print("#   assumes: I/O not modelled (inputs and outputs on a shared filesystem as fast as this disk), one "
          "thread per worker on a core as fast as these, perfect load balance, the scheduler not saturated")
    table = Table(("workers", "7d"), ("compute h", "9.2f"), ("overhead h", "10.2f"), ("assembly h", "10.2f"),
                  ("total h", "8.2f"), ("studies/h", "10.0f"))
    print(table.header())
    for n in PROJECT_WORKERS:
        comp = n_proj * cpu_subj / n / 3600.0
        over = n_proj * overhead / n / 3600.0
        asm = args.project * asm_study / n / 3600.0
        total = comp + over + asm
        print(table.row(n, comp, over, asm, total, args.project / total if total > 0 else float("inf")))


if __name__ == "__main__":
    sys.exit(main())
