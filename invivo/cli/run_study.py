"""``invivo run STUDY.toml [STUDY2.toml ...] --out DIR [--scheduler local|ADDRESS] [--workers N]``: the whole
study pipeline from scanner folders to tables, maps and a report.

Several study files: each study's outputs go to DIR/<file stem>/, and every subject of every
study is one task.  ``--scheduler local`` runs the tasks on a dask.distributed cluster of
``--workers`` processes on this machine; an address (tcp://host:8786) sends them to that
scheduler's workers (install the ``cluster`` extra there and here).  The numbers are the
same as a serial run's; a subject whose worker dies is run again on another."""

from __future__ import annotations

HELP = "run a study file: ingest, co-register, uptake, R2*, ROI statistics, kinetics, report"


def add_arguments(p):
    p.add_argument("study", nargs="+", help="study file(s) (TOML; see docs/study.md)")
    p.add_argument("--out", help="output folder (derivatives/, tables/, figures/, report.html); required unless "
                   "--check")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier report and tables (finished registrations and fits are reused)")
    p.add_argument("--subject", action="append", default=None,
                   help="only this subject (repeat for several)")
    p.add_argument("--check", action="store_true", help="only read and check the study file, run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--scheduler", default=None,
                   help="'local' (a dask cluster on this machine) or a dask scheduler address; default: serial")
    p.add_argument("--workers", type=int, default=None, help="worker processes of --scheduler local (default 2)")


def run(args) -> int:
    from ..errors import ParameterError
    from ..study import load_study, run, run_cohort

    if args.check:
        for path in args.study:
            study = load_study(path)
            n_ses = sum(len(study.sessions(s)) for s in study.subjects)
            print(f"{study.path}: {len(study.subjects)} subjects, {n_ses} sessions, {len(study.scans)} scans, "
                  f"{len(study.rois)} ROIs, {len(study.kinetics)} kinetic analyses: OK")
        return 0
    if not args.out:
        raise ParameterError("--out is required to run the study (only --check runs without it)")
    if len(args.study) > 1:
        if args.subject:
            raise ParameterError("--subject applies to one study file")
        results = run_cohort(args.study, args.out, overwrite=args.overwrite, progress=not args.quiet,
                             scheduler=args.scheduler, workers=args.workers)
        bad = 0
        for stem, res in results.items():
            if isinstance(res, str):
                print(f"FAILED study {stem}: {res}")
                bad += 1
                continue
            print(f"{stem}: {len(res.table)} measures, report {res.report}"
                  + (f"; {len(res.failures)} subject(s) failed" if res.failures else ""))
            for sid, msg in res.failures.items():
                print(f"FAILED {stem} {sid}: {msg}")
            bad += bool(res.failures)
        return 1 if bad else 0
    study = load_study(args.study[0])
    res = run(study, args.out, overwrite=args.overwrite, subjects=args.subject, progress=not args.quiet,
              scheduler=args.scheduler, workers=args.workers)
    print(f"{len(res.table)} measures of {len(study.subjects) - len(res.failures)} subjects in "
          f"{res.out_dir / 'tables' / 'measures.tsv'}; report {res.report}; {res.seconds:.1f} s"
          + (f"; reused {len(res.reused)} finished steps" if res.reused else ""))
    for sid, msg in res.failures.items():
        print(f"FAILED {sid}: {msg}")
    return 1 if res.failures else 0
