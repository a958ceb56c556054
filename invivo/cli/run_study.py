"""``invivo run STUDY.toml --out DIR``: the whole study pipeline from scanner folders to tables,
maps and a report."""

from __future__ import annotations

HELP = "run a study file: ingest, co-register, uptake, R2*, ROI statistics, kinetics, report"


def add_arguments(p):
    p.add_argument("study", help="study file (TOML; see docs/study.md)")
    p.add_argument("--out", help="output folder (derivatives/, tables/, figures/, report.html); required unless "
                   "--check")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier report and tables (finished registrations and fits are reused)")
    p.add_argument("--subject", action="append", default=None,
                   help="only this subject (repeat for several)")
    p.add_argument("--check", action="store_true", help="only read and check the study file, run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args) -> int:
    from ..study import load_study, run

    study = load_study(args.study)
    if args.check:
        n_ses = sum(len(study.sessions(s)) for s in study.subjects)
        print(f"{study.path}: {len(study.subjects)} subjects, {n_ses} sessions, {len(study.scans)} scans, "
              f"{len(study.rois)} ROIs, {len(study.kinetics)} kinetic analyses: OK")
        return 0
    if not args.out:
        from ..errors import ParameterError

        raise ParameterError("--out is required to run the study (only --check runs without it)")
    res = run(study, args.out, overwrite=args.overwrite, subjects=args.subject, progress=not args.quiet)
    print(f"{len(res.table)} measures of {len(study.subjects) - len(res.failures)} subjects in "
          f"{res.out_dir / 'tables' / 'measures.tsv'}; report {res.report}; {res.seconds:.1f} s"
          + (f"; reused {len(res.reused)} finished steps" if res.reused else ""))
    for sid, msg in res.failures.items():
        print(f"FAILED {sid}: {msg}")
    return 1 if res.failures else 0
