"""Fit a kinetic model to the time-activity curves of a TAC file (PET-BIDS: frame_start, frame_end in s, one
column per region, or one time column): plasma-input compartment and graphical models, reference-region
models, antibody serum PK, CAR-T cellular kinetics, and the multi-organ trafficking of labeled cells
(cell-trafficking: every column an organ -- lung, liver, spleen, tumour, bone, blood, other -- holding
%ID, decay corrected, fitted jointly; rates per hour)."""

from __future__ import annotations

HELP = "fit a kinetic model to regional time-activity curves"


def add_arguments(p):
    from ..kinetics import MODELS

    p.add_argument("--tac", required=True, help="TAC table (.tsv/.csv): frame_start, frame_end (s) or time (s), "
                                                "one column per region (Bq/mL)")
    p.add_argument("--model", required=True, help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--input", default=None, help="plasma input: PET-BIDS blood TSV (time in s, "
                                                 "plasma_radioactivity, whole_blood_radioactivity)")
    p.add_argument("--reference", default=None, help="reference region (a column of the TAC file)")
    p.add_argument("--region", action="append", default=None, help="fit only this region (repeatable)")
    p.add_argument("--vb", type=float, default=None, help="fix the blood volume fraction (default: fitted)")
    p.add_argument("--fit-delay", action="store_true", help="fit the input delay (s)")
    p.add_argument("--weights", default=None, choices=("duration", "decay", "uniform"),
                   help="frame weights (default: the model's)")
    p.add_argument("--half-life-s", type=float, default=None, help="isotope half-life (s) for decay weights or "
                                                                     "uncorrected blood samples")
    p.add_argument("--tstar-s", type=float, default=None, help="graphical models: t* (s) instead of the automatic choice")
    p.add_argument("--dose-ug", type=float, default=None, help="mab-pk: injected antibody mass (ug, labelled + "
                                                                "unlabelled); the TAC then holds serum ug/mL")
    p.add_argument("--fix", action="append", default=None, metavar="RATE=VALUE",
                   help="cell-trafficking: hold a rate (1/h) at a value, e.g. k_efflux_per_h=0.002 (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object {region: {param: value, se, aic}}")
    p.add_argument("--out", default=None, help="also write the results table (.tsv) or JSON (.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def _options(args, kind: str, name: str):
    opts, fit_opts = {}, {}
    if name in ("1tcm", "2tcm", "2tcm-irr"):
        opts["vB"] = args.vb
        opts["fit_delay"] = args.fit_delay
        if args.weights:
            opts["weights"] = args.weights
        if args.half_life_s:
            opts["half_life_s"] = args.half_life_s
    elif args.vb is not None or args.fit_delay:
        from ..errors import ParameterError

        raise ParameterError(f"--vb and --fit-delay apply to the compartment models, not {name!r}")
    if args.tstar_s is not None:
        opts["tstar_s"] = args.tstar_s
    if kind == "plasma" and args.half_life_s:
        fit_opts["half_life_s"] = args.half_life_s
    if args.fix and kind != "organs":
        from ..errors import ParameterError

        raise ParameterError(f"--fix applies to the cell-trafficking model, not {name!r}")
    if kind == "organs" and args.fix:
        from ..errors import ParameterError

        fixed = {}
        for item in args.fix:
            key, _, val = item.partition("=")
            try:
                fixed[key.strip()] = float(val)
            except ValueError:
                raise ParameterError(f"--fix {item!r}: give RATE=VALUE, e.g. k_efflux_per_h=0.002") from None
        fit_opts["fixed"] = fixed
    if kind == "serum":
        if args.dose_ug is None:
            from ..errors import ParameterError

            raise ParameterError(f"model {name!r} needs the injected antibody mass: --dose-ug")
        fit_opts["dose_ug"] = args.dose_ug
    return opts, fit_opts


def run(args) -> int:
    import json
    from pathlib import Path

    from ..errors import ParameterError
    from ..kinetics import MODELS
    from ..kinetics.run import fit_tac_file, results_table

    name = args.model.strip().lower()
    if name not in MODELS:
        raise ParameterError(f"unknown kinetic model {args.model!r}; valid models: {', '.join(MODELS)}")
    opts, fit_opts = _options(args, MODELS[name][2], name)
    fits = fit_tac_file(args.tac, name, input_path=args.input, reference=args.reference, regions=args.region,
                        options=opts, fit_options=fit_opts)
    payload = {region: f.to_dict() for region, f in fits.items()}
    if args.out:
        from ..io.nifti import atomic_write

        out = Path(args.out)
        if out.suffix.lower() == ".json":
            text = json.dumps(payload, indent=2, allow_nan=False)
        elif out.suffix.lower() in (".tsv", ".csv"):
            text = results_table(fits).to_csv(sep="\t" if out.suffix.lower() == ".tsv" else ",", index=False,
                                              float_format="%.8g")
        else:
            raise ParameterError(f"--out {out} must end in .tsv, .csv or .json")
        atomic_write({out: lambda tmp: tmp.write_text(text)}, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(payload, allow_nan=False))
    else:
        for f in fits.values():
            print(f"[{f.info.get('region', '')}] " + f.summary())
        if args.out:
            print(args.out)
    return 0
