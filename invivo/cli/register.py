"""Register a moving image (PET, SPECT, CT, MR) to a fixed one (usually MR) by mutual information;
write the ITK transform (fixed -> moving points, LPS) with its RAS matrix in a JSON sidecar."""

from __future__ import annotations

HELP = "co-register two images (rigid or affine, Mattes mutual information)"


def add_arguments(p):
    p.add_argument("--fixed", required=True, help="fixed image: DICOM folder or NIfTI (3D; see --fixed-frame)")
    p.add_argument("--moving", required=True, help="moving image: DICOM folder or NIfTI (4D: dynamic PET, "
                                                   "registered through its summed late frames)")
    p.add_argument("--out-transform", required=True, help="transform file to write (.tfm, .txt or .h5)")
    p.add_argument("--out-image", default=None, help="also write the moving image resampled onto the fixed grid "
                                                     "(.nii.gz; every frame of a 4D image)")
    p.add_argument("--type", default="rigid", choices=("rigid", "affine"), help="transform (default rigid)")
    p.add_argument("--mask", default=None, help="fixed-grid mask NIfTI restricting the metric")
    p.add_argument("--fixed-frame", type=int, default=None, help="echo/frame of a 4D fixed image to use")
    p.add_argument("--qc", default=None, metavar="PREFIX",
                   help="write PREFIX_overlay.png and PREFIX_checkerboard.png")
    p.add_argument("--seed", type=int, default=0, help="metric sampling seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args) -> int:
    from ..align.files import register_files

    res = register_files(args.fixed, args.moving, args.out_transform, out_image=args.out_image,
                         transform=args.type, mask=args.mask, fixed_frame=args.fixed_frame, qc_prefix=args.qc,
                         seed=args.seed, overwrite=args.overwrite)
    reg = res["registration"]
    t = reg.transform.matrix
    print(f"# {reg.quality}: metric {reg.metric:.4f}, overlap {100 * reg.overlap:.0f} %, "
          f"{reg.iterations} iterations, {reg.elapsed_s:.2f} s; rotation {reg.transform.rotation_deg():.2f} deg, "
          f"translation ({t[0, 3]:.3f}, {t[1, 3]:.3f}, {t[2, 3]:.3f}) mm RAS")
    for p in res["paths"]:
        print(p)
    return 0 if reg.quality != "failed" else 1
