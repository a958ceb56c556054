"""Resample an image onto a reference image's grid through a transform (fixed -> moving, as written by
``invivo register``); label masks (integer or boolean data) use nearest neighbour."""

from __future__ import annotations

HELP = "resample an image onto another grid through a transform"


def add_arguments(p):
    from ..align import INTERPOLATIONS

    p.add_argument("moving", help="image to resample: DICOM folder or NIfTI (3D or 4D, or a mask)")
    p.add_argument("--reference", required=True, help="image whose grid the output takes (DICOM or NIfTI)")
    p.add_argument("--transform", default=None, help="transform file (.tfm/.txt/.h5, or its .json sidecar); "
                                                     "default: identity (regrid only)")
    p.add_argument("--out", required=True, help="output .nii.gz")
    p.add_argument("--interpolation", default=None, choices=INTERPOLATIONS,
                   help="default: nearest for masks, linear for images")
    p.add_argument("--conserve", action="store_true",
                   help="activity-conserving downsampling (mean over each output voxel's footprint)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args) -> int:
    from ..align.files import resample_files

    print(resample_files(args.moving, args.reference, args.transform, args.out, interpolation=args.interpolation,
                         conserve=args.conserve, overwrite=args.overwrite))
    return 0
