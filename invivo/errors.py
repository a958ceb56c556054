"""Errors and warnings raised by invivo.

Every expected failure raises a subclass of :class:`InvivoError` whose message
names the file, the DICOM tag or the parameter involved and says what to do.
The command line prints that message on one line and exits with code 2.
"""

from __future__ import annotations

__all__ = [
    "InvivoError",
    "DicomError",
    "MissingTagError",
    "GeometryError",
    "UnitsError",
    "ParameterError",
    "OutputError",
    "OutputExistsError",
    "InvivoWarning",
]


class InvivoError(Exception):
    """Base class of every expected invivo failure."""

    def __str__(self) -> str:  # one line, always
        return " ".join(super().__str__().split())


class DicomError(InvivoError):
    """A DICOM file or series cannot be read or is inconsistent."""


class MissingTagError(DicomError):
    """A DICOM attribute required for the requested computation is absent."""


class GeometryError(DicomError):
    """Slice positions, orientations or spacings do not form a regular grid."""


class UnitsError(InvivoError):
    """Stored units cannot be converted honestly to the requested quantity."""


class ParameterError(InvivoError, ValueError):
    """A parameter value is impossible or out of range."""


class OutputError(InvivoError):
    """An output cannot be written (permissions, a file where a folder should be, a full disk)."""


class OutputExistsError(OutputError):
    """An output already exists and ``overwrite`` was not requested."""


class InvivoWarning(UserWarning):
    """An allowed assumption was made; it is also recorded in the metadata."""
