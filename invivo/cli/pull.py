"""Retrieve a study (or one series) from a DICOMweb server (WADO-RS) into a folder.

Files go to OUT/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm, byte
for byte as the server sends them; rerunning skips the files already there.
Without --study it lists the studies on the server; with --study but no --out it
lists the series of that study.

Credentials come from the environment: INVIVO_DICOMWEB_USER and
INVIVO_DICOMWEB_PASSWORD (HTTP basic), or INVIVO_DICOMWEB_TOKEN (bearer token).
"""

from __future__ import annotations

HELP = "retrieve a study from a PACS over DICOMweb (WADO-RS)"


def add_arguments(p):
    p.add_argument("--url", required=True, help="DICOMweb root URL, e.g. http://pacs.example.org:8042/dicom-web")
    p.add_argument("--study", metavar="UID", help="StudyInstanceUID to pull (without it: list the studies)")
    p.add_argument("--out", metavar="DIR", help="output folder (without it: list the series of --study)")
    p.add_argument("--series", metavar="UID", help="pull only this SeriesInstanceUID of the study")
    p.add_argument("--overwrite", action="store_true", help="replace existing files whose content differs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="seconds to wait for each answer (default 60)")


def _cell(v) -> str:
    return "-" if v is None or v == "" else str(v)


def run(args) -> int:
    from ..errors import InvivoError, ParameterError
    from ..pacs import find_series, find_studies, pull

    if args.study is None:
        if args.out or args.series:
            raise ParameterError("--out and --series need --study UID (run without them to list the studies)")
        studies = find_studies(args.url, timeout_s=args.timeout)
        for s in studies:
            print(f"{s['uid']}  {_cell(s['patient_id'])}  {_cell(s['date'])}  {_cell(s['modality'])}  "
                  f"{_cell(s['n_series'])} series  {_cell(s['n_instances'])} instances  {_cell(s['description'])}")
        print(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} on the server")
        return 0
    if args.out is None:
        if args.series:
            raise ParameterError("--series needs --out DIR (run without --series to list the series)")
        series = find_series(args.url, args.study, timeout_s=args.timeout)
        if not series:
            raise InvivoError(f"study {args.study} was not found on the DICOMweb server; list the studies with "
                              "`invivo pull --url URL`")
        for s in series:
            print(f"{s['uid']}  {_cell(s['modality'])}  #{_cell(s['series_number'])}  {_cell(s['n_instances'])} "
                  f"instances  {_cell(s['description'])}")
        print(f"{len(series)} series in study {args.study}")
        return 0
    result = pull(args.url, args.study, args.out, series_uid=args.series, overwrite=args.overwrite,
                  progress=not args.quiet, timeout_s=args.timeout)
    print(result.summary())
    return 0
