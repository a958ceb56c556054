"""``invivo``: the command dispatcher.

Every command is a thin shell over one public Python function.  Expected errors
(:class:`invivo.InvivoError`) print one line on stderr and exit with code 2; a
traceback means a bug.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from ..errors import InvivoError, InvivoWarning

#: command name -> module under invivo.cli
COMMANDS = {
    "scan": "scan",
    "convert": "convert",
    "uptake": "uptake",
    "roi-stats": "roi_stats",
    "r2star": "r2star",
    "spio": "spio",
    "register": "register",
    "resample": "resample",
    "kinetics": "kinetics",
    "kinetics-map": "kinetics_map",
    "run": "run_study",
    "demo": "demo",
    "pull": "pull",
    "push": "push",
    "export": "export",
}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="invivo",
        description="Quantitative in vivo imaging for preclinical immunotherapy: DICOM ingestion, "
                    "SUV and %ID/g, ROI statistics.",
    )
    parser.add_argument("--version", action="version", version=f"invivo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f".{module}", __package__)
        p = sub.add_parser(name, help=mod.HELP, description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # keep the docstrings' paragraphs
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _format_warning(message, category, filename, lineno, line=None):
    kind = "note" if issubclass(category, InvivoWarning) else category.__name__
    return f"invivo: {kind}: {message}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="invivo: %(message)s")
    old = warnings.formatwarning
    warnings.formatwarning = _format_warning  # one line per warning, no source excerpt
    try:
        return int(args._run(args) or 0)
    except InvivoError as exc:
        print(f"invivo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file system refusal is the user's to fix, not a bug
        print(f"invivo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("invivo: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = old


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
