"""Build a small synthetic mouse PET + MR study as DICOM, load it back, compute %ID/g and SUV maps and
organ statistics, and print them beside the phantom's truth."""

from __future__ import annotations

HELP = "run the built-in phantom study end to end"


def add_arguments(p):
    p.add_argument("--out", default="invivo-demo", help="output folder (default: ./invivo-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")


def run(args) -> int:
    from ..demo import run_demo

    result = run_demo(args.out, overwrite=args.overwrite)
    print(result.table_text())
    print(f"outputs in {result.out_dir}")
    return 0 if result.passed else 1
