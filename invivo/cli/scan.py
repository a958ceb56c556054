"""List the DICOM series found under a folder tree (headers only)."""

from __future__ import annotations

import json
import sys

HELP = "list the DICOM series under a folder"


def add_arguments(p):
    p.add_argument("path", help="folder (searched recursively) or file")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print a JSON list of series on stdout")
    fmt.add_argument("--tsv", action="store_true", help="print a tab-separated table with all columns")


def run(args) -> int:
    from ..io import scan

    df = scan(args.path)
    if args.json:
        print(json.dumps({"series": df.to_dict(orient="records"), "skipped_files": df.attrs["skipped_files"]},
                         default=str))
        return 0
    if args.tsv:
        df.to_csv(sys.stdout, sep="\t", index=False)
        return 0
    if not len(df):
        print(f"no DICOM series under {args.path} ({df.attrs['skipped_files']} other files)")
        return 0
    cols = ["subject_id", "study_date", "modality", "series_number", "description", "n_files", "n_slices",
            "n_frames", "n_echoes", "isotope", "units", "flavour"]
    print(df[cols].to_string(index=True))
    for i, err in (df["error"].dropna().items() if "error" in df else ()):
        print(f"[{i}] unreadable series: {err}")
    print(f"{len(df)} series; {df.attrs['skipped_files']} non-DICOM files skipped")
    return 0
