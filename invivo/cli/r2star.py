"""Fit R2* to a multi-echo gradient-echo series; write R2* (s^-1), S0 and status maps on its grid."""

from __future__ import annotations

HELP = "R2* map from multi-echo MRI (DICOM or 4D NIfTI)"


def add_arguments(p):
    from ..relax import METHODS
    from ..relax.r2star import DEFAULT_METHOD

    p.add_argument("mr", help="multi-echo DICOM folder or 4D NIfTI (echoes on the last axis)")
    p.add_argument("--out", required=True, help="R2* map .nii.gz (_s0 and _status maps are written beside it)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS, help=f"estimator (default {DEFAULT_METHOD})")
    p.add_argument("--te-ms", default=None, help="echo times in ms, comma separated (when the input has none)")
    p.add_argument("--mask", default=None, help="mask NIfTI: voxels to fit")
    p.add_argument("--sigma", type=float, default=None,
                   help="noise sigma per channel in signal units (default: estimated from the background)")
    p.add_argument("--series", default=None, help="SeriesInstanceUID, number or description in a DICOM folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args) -> int:
    from ..errors import ParameterError
    from ..relax.maps import write_r2star

    te = None
    if args.te_ms:
        try:
            te = [float(x) / 1000.0 for x in args.te_ms.split(",") if x.strip()]
        except ValueError:
            raise ParameterError(f"--te-ms must be numbers separated by commas, got {args.te_ms!r}") from None
    names = write_r2star(args.mr, args.out, method=args.method, echo_times_s=te, mask=args.mask, sigma=args.sigma,
                         series=args.series, overwrite=args.overwrite)
    for p in names.values():
        print(p)
    return 0
