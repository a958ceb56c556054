"""Compute an uptake map (SUV variant or %ID) from a PET/SPECT series and write it as NIfTI + sidecar."""

from __future__ import annotations

HELP = "SUV or %%ID/g map from a PET/SPECT series"
UNITS = ("suv", "suvbw", "suvlbm", "suvlbmjanma", "suvbsa", "suvibw", "idg", "idcc")


def add_arguments(p):
    p.add_argument("path", help="PET/SPECT DICOM folder or NIfTI (with sidecar)")
    p.add_argument("--out", required=True, help="output .nii.gz")
    p.add_argument("--unit", default="suv", choices=UNITS,
                   help="suv (default: SUVbw from activity; an image stored as SUV keeps its kind), suvbw, suvlbm "
                        "(James), suvlbmjanma, suvbsa, suvibw, idg (%%ID/g), idcc (%%ID/cc)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--series", default=None,
                     help="SeriesInstanceUID, SeriesNumber or SeriesDescription when PATH holds several series")
    sel.add_argument("--series-index", type=int, default=None, help="row number of `invivo scan PATH`")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args) -> int:
    from ..uptake import write_uptake

    series = args.series_index if args.series_index is not None else args.series
    out = write_uptake(args.path, args.out, unit=args.unit, series=series, overwrite=args.overwrite)
    print(out)
    return 0
