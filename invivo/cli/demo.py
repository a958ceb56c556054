"""``invivo demo``: write a synthetic preclinical study (89Zr CAR-T cells with SPIO MRI, a 89Zr
anti-PD-L1 group and a blocking group) as DICOM folders, run the whole study pipeline on it
and print every recovered value beside its truth."""

from __future__ import annotations

HELP = "run the built-in phantom study end to end (DICOM -> tables, maps, report)"


def add_arguments(p):
    p.add_argument("--out", default="invivo-demo", help="output folder (default: ./invivo-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    p.add_argument("--small", action="store_true", help="fewer mice (1 CAR-T, 2 + 2 anti-PD-L1): about half the time")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args) -> int:
    from ..demo import run_demo

    result = run_demo(args.out, overwrite=args.overwrite, small=args.small, progress=not args.quiet)
    print(result.table_text())
    print(f"report: {result.study.report if result.study is not None else '-'}")
    print(f"outputs in {result.out_dir}")
    return 0 if result.passed else 1
