"""Write a map as a DICOM Parametric Map, or masks as a DICOM Segmentation, beside the series they came from.

  invivo export MAP.nii.gz --source DICOM_DIR --out FILE.dcm --quantity NAME [--unit U] [--overwrite]
  invivo export --seg NAME=MASK.nii.gz [NAME=MASK2.nii.gz ...] --source DICOM_DIR --out FILE.dcm

The map or masks must be on the grid of the source series (as ``invivo.load(DICOM_DIR)``
gives it); the DICOM object joins the source's study and frame of reference as a new series
and references every source image.  Map values are stored as float32 with the unit as a
UCUM code (default unit: the map's JSON sidecar).  See invivo.io.dicom_export.
"""

from __future__ import annotations

HELP = "write a map as a DICOM Parametric Map, or masks as a DICOM SEG, referencing the source series"


def add_arguments(p):
    p.add_argument("map", nargs="?", default=None, help="the map (NIfTI + sidecar, or anything invivo.load reads)")
    p.add_argument("--seg", nargs="+", metavar="NAME=MASK", default=None,
                   help="masks to write as one DICOM SEG instead of a map: ROI name = mask file (0/1)")
    p.add_argument("--source", required=True, help="DICOM folder of the series the map or masks were computed on")
    p.add_argument("--out", required=True, help="output DICOM file (.dcm)")
    p.add_argument("--quantity", default=None,
                   help="what the map's values are: SUVbw, %%ID/g, R2*, Ki, ... (required for a map)")
    p.add_argument("--unit", default=None,
                   help="unit of the map (%%ID/g, SUVbw, g/mL, s-1, mM, mL/cm3/min, ...); default: the sidecar's")
    p.add_argument("--series", default=None,
                   help="SeriesInstanceUID, SeriesNumber or SeriesDescription when --source holds several series")
    p.add_argument("--series-description", default=None, help="SeriesDescription of the new series")
    p.add_argument("--fill-value", type=float, default=None,
                   help="value stored in place of NaN/inf voxels of the map (default: NaN/inf is an error)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _parse_seg(items: list[str]) -> dict[str, str]:
    from ..errors import ParameterError

    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ParameterError(f"--seg {item!r}: expected NAME=MASK_FILE, e.g. tumour=tumour_mask.nii.gz")
        if name in out:
            raise ParameterError(f"--seg: ROI name {name!r} given twice")
        out[name] = path
    return out


def run(args) -> int:
    from .. import load
    from ..errors import ParameterError
    from ..io.dicom_export import write_parametric_map, write_seg

    if (args.map is None) == (args.seg is None):
        raise ParameterError("give either a MAP to export as a Parametric Map or --seg NAME=MASK ... for a SEG")
    if args.seg is not None:
        for opt in ("quantity", "unit", "fill_value"):
            if getattr(args, opt) is not None:
                raise ParameterError(f"--{opt.replace('_', '-')} applies to a map, not to --seg")
        masks = {name: load(path) for name, path in _parse_seg(args.seg).items()}
        out = write_seg(masks, args.source, args.out, overwrite=args.overwrite,
                        series_description=args.series_description, series=args.series)
    else:
        if not args.quantity:
            raise ParameterError("--quantity is required for a map (SUVbw, %ID/g, R2*, Ki, ...)")
        out = write_parametric_map(load(args.map), args.source, args.out, quantity=args.quantity, unit=args.unit,
                                   series_description=args.series_description, overwrite=args.overwrite,
                                   series=args.series, fill_value=args.fill_value)
    print(out)
    return 0
