"""Convert every DICOM image series under PATH to NIfTI + JSON sidecar with BIDS-like names."""

from __future__ import annotations

HELP = "convert DICOM series to NIfTI + JSON sidecars"


def add_arguments(p):
    p.add_argument("path", help="folder of DICOM files (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--skip-errors", action="store_true",
                   help="convert the series that load and report the others (default: fail without writing)")


def run(args) -> int:
    from ..io.convert import convert

    written, failed = convert(args.path, args.out, overwrite=args.overwrite, skip_errors=args.skip_errors)
    for p in written:
        print(p)
    for desc, err in failed:
        print(f"invivo convert: skipped {desc}: {err}")
    return 0 if not failed else 1
