"""dR2*, iron concentration and labeled-cell maps from co-registered pre/post R2* maps (or multi-echo series)."""

from __future__ import annotations

HELP = "SPIO iron and labeled-cell maps from pre/post R2*"


def add_arguments(p):
    p.add_argument("--pre", required=True, help="pre-contrast R2* map (from invivo r2star) or multi-echo series")
    p.add_argument("--post", required=True, help="post-contrast R2* map or multi-echo series, on the pre grid")
    p.add_argument("--relaxivity", required=True,
                   help="r2* in s-1 mM-1 (a number), or AGENT@FIELD_T from the built-in table, e.g. ferumoxytol@3")
    p.add_argument("--pg-fe-per-cell", type=float, default=None, help="iron per labeled cell, pg (gives cell maps)")
    p.add_argument("--mask", action="append", default=[],
                   help="region mask NIfTI for the ROI table; NAME=FILE to name it (repeatable)")
    p.add_argument("--out-dir", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _relaxivity(text: str):
    from ..errors import ParameterError
    from ..relax import iron

    if "@" in text:
        agent, field = text.split("@", 1)
        try:
            return iron.relaxivity(agent.strip(), float(field))
        except ValueError as exc:
            if isinstance(exc, ParameterError):
                raise
            raise ParameterError(f"--relaxivity {text!r}: the field after @ must be a number in tesla") from None
    try:
        return float(text)
    except ValueError:
        raise ParameterError(f"--relaxivity must be a number (s-1 mM-1) or AGENT@FIELD_T, got {text!r}") from None


def run(args) -> int:
    from pathlib import Path

    from ..relax.maps import spio_maps

    masks = {}
    for item in args.mask:
        name, _, path = item.rpartition("=")
        masks[name or Path(path).name.split(".")[0]] = path
    res = spio_maps(args.pre, args.post, relaxivity=_relaxivity(args.relaxivity),
                    pg_fe_per_cell=args.pg_fe_per_cell, masks=masks or None, out_dir=args.out_dir,
                    overwrite=args.overwrite)
    for p in res["paths"]:
        print(p)
    if res["table"] is not None:
        print(res["table"].to_string(index=False))
    return 0
