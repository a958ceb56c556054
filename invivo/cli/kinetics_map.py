"""Parametric maps from a dynamic PET: Patlak Ki and Logan VT in closed form, SRTM by basis functions,
1TCM and 2TCM-irr by variable projection; every voxel at once, failed voxels flagged in a status map."""

from __future__ import annotations

HELP = "voxelwise kinetic parameter maps of a dynamic PET"


def add_arguments(p):
    from ..kinetics.maps import MAP_MODELS

    p.add_argument("pet", help="dynamic PET: DICOM folder or 4D NIfTI (frame times in the sidecar)")
    p.add_argument("--model", required=True, choices=MAP_MODELS)
    p.add_argument("--input", default=None, help="plasma input: PET-BIDS blood TSV (patlak, logan, 1tcm, 2tcm-irr)")
    p.add_argument("--reference-mask", default=None, help="reference region mask NIfTI (srtm)")
    p.add_argument("--mask", default=None, help="voxels to fit (mask NIfTI on the PET grid)")
    p.add_argument("--tstar-s", type=float, default=None, help="t* (s from injection) for patlak and logan")
    p.add_argument("--vb", type=float, default=None, help="fixed blood volume for 1tcm/2tcm-irr (default: fitted)")
    p.add_argument("--half-life-s", type=float, default=None, help="isotope half-life (s) for uncorrected blood")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args) -> int:
    from ..kinetics.run import write_maps

    for p in write_maps(args.pet, args.model, args.out, input_path=args.input, reference_mask=args.reference_mask,
                        mask=args.mask, tstar_s=args.tstar_s, vB=args.vb, overwrite=args.overwrite,
                        half_life_s=args.half_life_s):
        print(p)
    return 0
