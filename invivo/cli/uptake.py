"""Compute an uptake map (SUV variant or %ID) from a PET/SPECT series and write it as NIfTI + sidecar."""

from __future__ import annotations

HELP = "SUV or %%ID/g map from a PET/SPECT series"
UNITS = ("suvbw", "suvlbm", "suvbsa", "suvibw", "idg", "idcc")


def add_arguments(p):
    p.add_argument("path", help="PET/SPECT DICOM folder or NIfTI (with sidecar)")
    p.add_argument("--out", required=True, help="output .nii.gz")
    p.add_argument("--unit", default="suvbw", choices=UNITS,
                   help="suvbw (default), suvlbm, suvbsa, suvibw, idg (%%ID/g), idcc (%%ID/cc)")
    p.add_argument("--series", default=None, help="series index, UID, number or description when PATH holds several")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args) -> int:
    from ..uptake import write_uptake

    out = write_uptake(args.path, args.out, unit=args.unit, series=_series(args.series), overwrite=args.overwrite)
    print(out)
    return 0


def _series(s):
    if s is None:
        return None
    return int(s) if s.isdigit() and len(s) < 4 else s
