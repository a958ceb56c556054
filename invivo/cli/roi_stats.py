"""Statistics of an image inside a mask (NIfTI) or RTSTRUCT structure(s)."""

from __future__ import annotations

import json

HELP = "mean, sd, min, median, max, peak, volume inside a mask or RTSTRUCT structure"


def add_arguments(p):
    p.add_argument("image", help="image: NIfTI or DICOM folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mask", help="mask NIfTI (nonzero = inside); another orientation of the same grid is matched")
    src.add_argument("--rtstruct", help="RTSTRUCT file or folder")
    p.add_argument("--structure", action="append",
                   help="structure name in the RTSTRUCT (repeatable; default: all structures)")
    p.add_argument("--peak-radius-mm", type=float, default=None, help="radius of the peak sphere in mm")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")


def run(args) -> int:
    from ..roi import image_roi_stats

    result = image_roi_stats(args.image, mask=args.mask, rtstruct=args.rtstruct, structures=args.structure,
                             peak_radius_mm=args.peak_radius_mm)
    if args.json:
        print(json.dumps(result, allow_nan=False))
        return 0
    rows = result if args.rtstruct else {"mask": result}
    keys = ["n_voxels", "volume_ml", "mean", "sd", "min", "median", "max", "peak"]
    print("roi".ljust(20) + "".join(k.rjust(12) for k in keys))
    for name, st in rows.items():
        frames = max((len(v) for v in st.values() if isinstance(v, list)), default=0)
        if not frames:
            print(str(name)[:20].ljust(20) + "".join(_fmt(st.get(k)).rjust(12) for k in keys))
            continue
        for f in range(frames):  # a 4D image: one row per frame
            label = f"{str(name)[:14]}[{f}]"
            print(label.ljust(20) + "".join(_fmt(st[k][f] if isinstance(st.get(k), list) else st.get(k)).rjust(12)
                                            for k in keys))
    units = next(iter(rows.values())).get("units")
    if units:
        print(f"units: {units}")
    return 0


def _fmt(v):
    if isinstance(v, int):
        return str(v)
    return f"{v:.6g}" if v is not None else "-"
