"""Send DICOM files and folders to a DICOMweb server (STOW-RS).

Folders are searched recursively; files that are not DICOM are skipped and
counted.  Instances go in batches of at most 50.  Exit code 0 when every
instance was stored, 1 when the server refused some (each is listed with the
reason it gave), 2 on errors.

Credentials come from the environment: INVIVO_DICOMWEB_USER and
INVIVO_DICOMWEB_PASSWORD (HTTP basic), or INVIVO_DICOMWEB_TOKEN (bearer token).
"""

from __future__ import annotations

import sys

HELP = "send DICOM files to a PACS over DICOMweb (STOW-RS)"

_MAX_LISTED = 20


def add_arguments(p):
    p.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders (searched recursively)")
    p.add_argument("--url", required=True, help="DICOMweb root URL, e.g. http://pacs.example.org:8042/dicom-web")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="seconds to wait for each answer (default 60)")


def run(args) -> int:
    from ..pacs import push

    result = push(args.paths, args.url, progress=not args.quiet, timeout_s=args.timeout)
    for path, reason in result.failed[:_MAX_LISTED]:
        print(f"invivo push: not stored: {path}: {reason}", file=sys.stderr)
    if result.n_failed > _MAX_LISTED:
        print(f"invivo push: ... and {result.n_failed - _MAX_LISTED} more not stored", file=sys.stderr)
    print(result.summary())
    return 1 if result.failed else 0
