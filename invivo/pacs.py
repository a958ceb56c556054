"""PACS in and out over DICOMweb: pull studies (WADO-RS), push files (STOW-RS), list what is there (QIDO-RS).

Any DICOMweb server works (Orthanc with its DICOMweb plugin, dcm4chee, Google
Cloud Healthcare, ...); give its DICOMweb root URL, the one that ``/studies``
is appended to, for example ``http://pacs.example.org:8042/dicom-web``.

Python::

    from invivo import pacs

    pacs.find_studies("http://pacs:8042/dicom-web", PatientID="mouse01")
    # [{'uid': '1.2...', 'patient_id': 'mouse01', 'date': '20240115', 'modality': 'MR\\\\PT',
    #   'description': '...', 'n_instances': 108, 'n_series': 2}]
    result = pacs.pull("http://pacs:8042/dicom-web", "1.2...", "incoming/")
    result.summary()        # 'pulled 108 instances in 2 series of study 1.2... from http://... into incoming (...)'
    pet = invivo.load("incoming/", series=result.series[0]["uid"])

    result = pacs.push(["scanner_export/"], "http://pacs:8042/dicom-web")
    result.n_stored, result.n_failed, result.n_skipped, result.failed   # failed: [(path, reason), ...]

Command line::

    invivo pull --url URL                              # list the studies on the server
    invivo pull --url URL --study UID                  # list the series of one study
    invivo pull --url URL --study UID --out DIR [--series UID] [--overwrite] [--quiet]
    invivo push PATH [PATH ...] --url URL [--quiet]

Pulled files are written as ``DIR/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
byte for byte as the server sends them, each atomically; rerunning a pull skips
the files already there with identical bytes (a file with different bytes is an
error unless ``overwrite``).  Pushes go in batches of at most 50 instances (and
about 100 MB); files that are not DICOM are listed as skipped, and instances
the server refuses are listed as failed with the reason it gave
(FailedSOPSequence / FailureReason).  The command line exits 0 when everything
went, 1 when some instances failed and 2 on errors (server unreachable, refused
credentials, unknown study, ...).

Credentials
-----------
HTTP basic authentication or a bearer token, from the keyword arguments
``user=``/``password=`` or ``token=`` or else from the environment:

``INVIVO_DICOMWEB_USER`` and ``INVIVO_DICOMWEB_PASSWORD``
    basic authentication;
``INVIVO_DICOMWEB_TOKEN``
    an OAuth2 bearer token (``Authorization: Bearer ...``).

``user:password@`` inside the URL works too but is best avoided (shell history).
Credentials never appear in log messages, error messages, results or reprs, and
URLs are shown with any ``user:password@`` removed.

Needs the ``pacs`` extra (``pip install "invivo[pacs]"``: dicomweb-client and requests).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import DicomError, InvivoError, OutputExistsError, ParameterError

__all__ = ["DicomWeb", "pull", "push", "find_studies", "find_series", "PullResult", "PushResult", "redact_url"]

log = logging.getLogger(__name__)

ENV_USER = "INVIVO_DICOMWEB_USER"
ENV_PASSWORD = "INVIVO_DICOMWEB_PASSWORD"
ENV_TOKEN = "INVIVO_DICOMWEB_TOKEN"
_SET_CREDENTIALS = f"set {ENV_USER}/PASSWORD or {ENV_TOKEN}"

#: at most this many instances per STOW-RS request
BATCH_SIZE = 50
#: and at most about this many bytes of files (a single larger file goes alone)
BATCH_BYTES = 100 * 2**20

_ATTEMPTS = 3

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

# DICOM PS3.18 / PS3.4 status codes found in FailureReason (0008,1197)
_FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0112: "no such object instance",
    0x0117: "invalid object instance",
    0x0119: "class-instance conflict",
    0x0122: "SOP class not supported",
    0x0124: "refused: not authorized",
    0xA700: "refused: out of resources",
    0xA770: "referenced SOP instance UID does not match",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
}

# QIDO-RS attribute tags (DICOM JSON keys)
_T = {
    "StudyInstanceUID": "0020000D",
    "SeriesInstanceUID": "0020000E",
    "PatientID": "00100020",
    "StudyDate": "00080020",
    "SeriesDate": "00080021",
    "ModalitiesInStudy": "00080061",
    "Modality": "00080060",
    "StudyDescription": "00081030",
    "SeriesDescription": "0008103E",
    "SeriesNumber": "00200011",
    "NumberOfStudyRelatedSeries": "00201206",
    "NumberOfStudyRelatedInstances": "00201208",
    "NumberOfSeriesRelatedInstances": "00201209",
}
_STUDY_FIELDS = ["StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]
_SERIES_FIELDS = ["SeriesDescription", "SeriesNumber", "SeriesDate", "Modality", "NumberOfSeriesRelatedInstances"]

# friendly filter names for find_studies; any DICOM keyword works too
_FILTER_ALIASES = {
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "date": "StudyDate",
    "study_date": "StudyDate",
    "modality": "ModalitiesInStudy",
    "description": "StudyDescription",
    "accession": "AccessionNumber",
    "study_uid": "StudyInstanceUID",
}


# ----------------------------------------------------------------------------- URLs and credentials
def redact_url(url: Any) -> str:
    """``url`` without any ``user:password@`` and without query or fragment, for messages.

    Examples
    --------
    >>> redact_url("https://alice:s3cret@pacs.example.org:8042/dicom-web?key=abc")
    'https://pacs.example.org:8042/dicom-web'
    >>> redact_url("http://pacs:8042/dicom-web/")
    'http://pacs:8042/dicom-web/'
    """
    s = str(url)
    s = re.split(r"[?#]", s, maxsplit=1)[0]
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*:)?//", s)
    if m:
        rest = s[m.end():]
        # the password may hold unescaped '/' or '@': drop everything up to the last '@'
        if "@" in rest:
            rest = rest[rest.rindex("@") + 1:]
        s = s[: m.end()] + rest
    elif "@" in s:
        s = s[s.rindex("@") + 1:]
    return s


def _parse_url(url: Any) -> tuple[str, str | None, str | None]:
    """(base URL without credentials or trailing '/', user from the URL, password from the URL)."""
    if not isinstance(url, str) or not url.strip():
        raise ParameterError(f"url: expected a DICOMweb root URL such as http://pacs.example.org:8042/dicom-web, got {redact_url(url)!r}")
    url = url.strip()
    shown = redact_url(url)
    example = "such as http://pacs.example.org:8042/dicom-web"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ParameterError(f"url {shown!r} is malformed (bad host or port); give the DICOMweb root URL {example}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ParameterError(f"url {shown!r}: the scheme must be http or https; give the DICOMweb root URL {example}")
    if not parts.hostname or any(c in parts.hostname for c in " \t[]"):
        raise ParameterError(f"url {shown!r} has no host name; give the DICOMweb root URL {example}")
    if parts.query or parts.fragment:
        raise ParameterError(f"url {shown!r}: a DICOMweb root URL has no ?query or #fragment; remove it")
    host = parts.hostname
    netloc = host if port is None else f"{host}:{port}"
    base = urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return base, user, password


def _resolve_credentials(user, password, token, url_user, url_password) -> tuple[str, Any]:
    """('basic', (user, password)) | ('token', token) | ('none', None); explicit > URL > environment."""
    explicit = any(v is not None for v in (user, password, token))
    if explicit and url_user is not None:
        raise ParameterError("credentials given both in the url (user:password@) and as arguments; give them once")
    if not explicit and url_user is not None:
        user, password = url_user, url_password
        explicit = True
    where_user, where_password, where_token = "user=", "password=", "token="
    if not explicit:
        env = os.environ
        user = env.get(ENV_USER) or None
        password = env.get(ENV_PASSWORD) or None
        token = env.get(ENV_TOKEN) or None
        where_user, where_password, where_token = ENV_USER, ENV_PASSWORD, ENV_TOKEN
    if token is not None and (user is not None or password is not None):
        raise ParameterError(f"both {where_token} and {where_user}/{where_password} are set; use one kind of credentials")
    if token is not None:
        if not isinstance(token, str) or not token.strip():
            raise ParameterError(f"{where_token} is empty; give a bearer token")
        return "token", token.strip()
    if user is None and password is None:
        return "none", None
    if user is None:
        raise ParameterError(f"{where_password} is set but {where_user} is not; set both")
    if password is None:
        raise ParameterError(f"{where_user} is set but {where_password} is not; set both")
    return "basic", (str(user), str(password))


# ----------------------------------------------------------------------------- errors
def _http_error(exc, shown_url: str, what: str) -> InvivoError:
    resp = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None)
    reason = (getattr(resp, "reason", "") or "").strip()
    status = f"HTTP {code}{' ' + reason if reason else ''}"
    if code in (401, 403):
        return InvivoError(f"the DICOMweb server at {shown_url} refused {what} ({status}): the credentials are missing or "
                           f"wrong; {_SET_CREDENTIALS}")
    return InvivoError(f"{what} failed at the DICOMweb server {shown_url}: {status}")


def _network_error(exc, shown_url: str, what: str, timeout_s: float) -> InvivoError:
    import requests

    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        why = "TLS/SSL verification failed"
    elif isinstance(exc, requests.exceptions.Timeout):
        why = f"no answer within {timeout_s:g} s"
    elif "Name or service not known" in text or "NameResolution" in text or "getaddrinfo" in text:
        why = "the host name is not known"
    elif "refused" in text.lower():
        why = "connection refused"
    elif isinstance(exc, requests.exceptions.ChunkedEncodingError):
        why = "the connection broke during the transfer"
    else:
        why = type(exc).__name__
    return InvivoError(f"cannot reach the DICOMweb server at {shown_url} for {what} ({why}); check the URL and that the "
                       "server is running and reachable")


class _Guard:
    """Context manager turning requests/dicomweb-client exceptions into one-line InvivoErrors."""

    def __init__(self, web: DicomWeb, what: str, *, not_found: str | None = None):
        self.web, self.what, self.not_found = web, what, not_found

    def __enter__(self):
        return self

    def __exit__(self, etype, exc, tb):
        if exc is None or isinstance(exc, InvivoError):
            return False
        import requests

        shown = self.web.url
        if isinstance(exc, requests.exceptions.HTTPError):
            code = getattr(getattr(exc, "response", None), "status_code", None)
            if code == 404 and self.not_found:
                raise InvivoError(self.not_found) from None
            raise _http_error(exc, shown, self.what) from None
        if isinstance(exc, requests.exceptions.RequestException):
            raise _network_error(exc, shown, self.what, self.web.timeout_s) from None
        if isinstance(exc, ValueError) and "media type" in str(exc).lower():
            raise InvivoError(f"{self.what}: the DICOMweb server at {shown} answered with an unexpected "
                              f"content type ({exc})") from None
        return False


# ----------------------------------------------------------------------------- client
class DicomWeb:
    """A thin DICOMweb client (QIDO-RS, WADO-RS, STOW-RS) over :class:`dicomweb_client.api.DICOMwebClient`.

    Parameters
    ----------
    url : str
        DICOMweb root URL, e.g. ``http://pacs.example.org:8042/dicom-web``.
    user, password : str, optional
        HTTP basic authentication (default: ``INVIVO_DICOMWEB_USER`` /
        ``INVIVO_DICOMWEB_PASSWORD``).
    token : str, optional
        Bearer token (default: ``INVIVO_DICOMWEB_TOKEN``).
    timeout_s : float, seconds
        Connect and read timeout of each request.

    Examples
    --------
    >>> web = DicomWeb("http://bob:pw@127.0.0.1:8042/dicom-web/")
    >>> web
    DicomWeb('http://127.0.0.1:8042/dicom-web', auth='basic')
    """

    def __init__(self, url: str, *, user: str | None = None, password: str | None = None, token: str | None = None,
                 timeout_s: float = 60):
        base, url_user, url_password = _parse_url(url)
        try:
            timeout_s = float(timeout_s)
        except (TypeError, ValueError):
            raise ParameterError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}") from None
        if not timeout_s > 0:
            raise ParameterError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        kind, cred = _resolve_credentials(user, password, token, url_user, url_password)
        try:
            import requests
            from dicomweb_client.api import DICOMwebClient
        except ImportError:
            raise InvivoError('DICOMweb needs the "pacs" extra: pip install "invivo[pacs]" (dicomweb-client, '
                              "requests)") from None
        self._base = base
        self.timeout_s = timeout_s
        self.auth = kind
        session = requests.Session()
        if kind == "basic":
            session.auth = cred
        elif kind == "token":
            session.headers["Authorization"] = f"Bearer {cred}"
        self._session = session
        try:
            self.client = DICOMwebClient(base, session=session, timeout=timeout_s)
        except ValueError:
            raise ParameterError(f"url {self.url!r} is not a DICOMweb root URL that dicomweb-client accepts; "
                                 "give one such as http://pacs.example.org:8042/dicom-web") from None
        # a busy server (429/503/504) or a dropped connection gets two more tries, 0.5 s and 1 s later
        self.client.set_http_retry_params(retry=True, max_attempts=_ATTEMPTS, wait_exponential_multiplier=250)

    @property
    def url(self) -> str:
        """The DICOMweb root URL (never with credentials)."""
        return self._base

    def __repr__(self) -> str:
        return f"DicomWeb({self.url!r}, auth={self.auth!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> DicomWeb:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ QIDO-RS
    def find_studies(self, *, limit: int | None = None, **filters) -> list[dict]:
        """Studies matching ``filters`` (DICOM keywords such as ``PatientID="mouse*"``, ``StudyDate="20240101-"``,
        or ``patient_id``, ``date``, ``modality``, ``description``, ``accession``).

        Returns a list of ``{"uid", "patient_id", "date", "modality", "description", "n_series", "n_instances"}``.
        """
        search = _search_filters(filters)
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ParameterError(f"limit must be a positive integer, got {limit!r}")
        with _Guard(self, "the study search (QIDO-RS)"):
            found = self.client.search_for_studies(fields=_STUDY_FIELDS, search_filters=search or None, limit=limit)
        return [_study_row(item) for item in found]

    def find_series(self, study_uid: str) -> list[dict]:
        """Series of one study: ``{"uid", "study_uid", "modality", "description", "series_number", "date",
        "n_instances"}``, ordered by series number; empty when the study is unknown."""
        _check_uid(study_uid, "study_uid")
        import requests

        with _Guard(self, f"the series search (QIDO-RS) of study {study_uid}"):
            try:
                found = self.client.search_for_series(study_uid, fields=_SERIES_FIELDS)
            except requests.exceptions.HTTPError as exc:  # some servers answer 404 for an unknown study
                if getattr(exc.response, "status_code", 0) == 404:
                    return []
                raise
        rows = [_series_row(item, study_uid) for item in found]
        rows.sort(key=lambda r: (r["series_number"] is None, r["series_number"] or 0, r["uid"]))
        return rows

    # ------------------------------------------------------------------ WADO-RS
    def iter_series(self, study_uid: str, series_uid: str) -> Iterator:
        """Instances of one series (pydicom Datasets, streamed one at a time)."""
        _check_uid(study_uid, "study_uid")
        _check_uid(series_uid, "series_uid")
        what = f"the retrieval (WADO-RS) of series {series_uid}"
        nf = f"series {series_uid} of study {study_uid} was not found on the DICOMweb server {self.url}"
        with _Guard(self, what, not_found=nf):
            it = iter(self.client.iter_series(study_uid, series_uid))
        while True:
            with _Guard(self, what, not_found=nf):
                try:
                    ds = next(it)
                except StopIteration:
                    return
                except Exception as exc:
                    from pydicom.errors import InvalidDicomError

                    if isinstance(exc, (InvalidDicomError, EOFError)):
                        raise DicomError(f"{what}: the DICOMweb server at {self.url} sent a part that is not a DICOM "
                                         f"file ({exc})") from None
                    raise
            yield ds

    # ------------------------------------------------------------------ STOW-RS
    def store(self, datasets: list) -> tuple[Any, int]:
        """POST ``datasets`` in one STOW-RS request: (the response as a pydicom Dataset or None, HTTP status).

        A response with status 400/409/413/415/422 (some or all instances refused) is returned, not raised, so
        that its FailedSOPSequence can be read.
        """
        import requests

        with _Guard(self, "the upload (STOW-RS)"):
            try:
                return self.client.store_instances(datasets), 200
            except requests.exceptions.HTTPError as exc:
                resp = exc.response
                code = getattr(resp, "status_code", None)
                if code not in (400, 409, 413, 415, 422):
                    raise
                return _json_dataset(resp), code


def _json_dataset(resp):
    """The STOW-RS response body as a pydicom Dataset, or None (not DICOM JSON)."""
    import pydicom

    try:
        body = json.loads(resp.content)
    except (ValueError, TypeError):
        return None
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, dict):
        return None
    try:
        return pydicom.Dataset.from_json(body)
    except (ValueError, TypeError, KeyError):
        return None


def _client(url, auth: dict) -> tuple[DicomWeb, bool]:
    """(client, whether we own it and must close it)."""
    if isinstance(url, DicomWeb):
        if any(auth.get(k) is not None for k in ("user", "password", "token")):
            raise ParameterError("credentials go to DicomWeb(...) when a DicomWeb client is passed as url")
        return url, False
    return DicomWeb(url, **auth), True


def _check_uid(uid: Any, what: str) -> str:
    if not isinstance(uid, str) or len(uid) > 64 or not _UID.match(uid):
        raise ParameterError(f"{what} must be a DICOM UID (digits and dots, at most 64 characters), got {uid!r}")
    return uid


def _search_filters(filters: dict) -> dict:
    from pydicom.datadict import tag_for_keyword

    out = {}
    for key, value in filters.items():
        kw = _FILTER_ALIASES.get(key, key)
        if tag_for_keyword(kw) is None:
            raise ParameterError(f"find_studies: unknown filter {key!r}; use a DICOM keyword such as PatientID, "
                                 f"StudyDate, ModalitiesInStudy, or one of {', '.join(sorted(_FILTER_ALIASES))}")
        out[kw] = str(value)
    return out


def _value(item: dict, keyword: str, *, multi: bool = False):
    el = item.get(_T[keyword]) or {}
    values = el.get("Value") or []
    out = []
    for v in values:
        if isinstance(v, dict):  # PN
            v = v.get("Alphabetic", "")
        out.append(v)
    if multi:
        return out
    return out[0] if out else None


def _int(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _study_row(item: dict) -> dict:
    return {
        "uid": _value(item, "StudyInstanceUID"),
        "patient_id": _value(item, "PatientID"),
        "date": _value(item, "StudyDate"),
        "modality": "\\".join(str(m) for m in _value(item, "ModalitiesInStudy", multi=True)),
        "description": _value(item, "StudyDescription"),
        "n_series": _int(_value(item, "NumberOfStudyRelatedSeries")),
        "n_instances": _int(_value(item, "NumberOfStudyRelatedInstances")),
    }


def _series_row(item: dict, study_uid: str) -> dict:
    return {
        "uid": _value(item, "SeriesInstanceUID"),
        "study_uid": _value(item, "StudyInstanceUID") or study_uid,
        "patient_id": _value(item, "PatientID"),
        "date": _value(item, "SeriesDate") or _value(item, "StudyDate"),
        "modality": _value(item, "Modality"),
        "description": _value(item, "SeriesDescription"),
        "series_number": _int(_value(item, "SeriesNumber")),
        "n_instances": _int(_value(item, "NumberOfSeriesRelatedInstances")),
    }


def find_studies(url: str | DicomWeb, *, user: str | None = None, password: str | None = None,
                 token: str | None = None, timeout_s: float = 60, limit: int | None = None, **filters) -> list[dict]:
    """Studies on a DICOMweb server (QIDO-RS), optionally filtered.

    Parameters
    ----------
    url : str or DicomWeb
        DICOMweb root URL (or a :class:`DicomWeb`).
    user, password, token, timeout_s
        See :class:`DicomWeb`.
    limit : int, optional
        At most this many studies.
    **filters
        DICOM keywords and values, with the QIDO wildcards and ranges
        (``PatientID="mouse*"``, ``StudyDate="20240101-20240131"``,
        ``ModalitiesInStudy="PT"``); or ``patient_id``, ``date``, ``modality``,
        ``description``, ``accession``.

    Returns
    -------
    list of dict
        ``uid``, ``patient_id``, ``date`` (YYYYMMDD), ``modality`` (the modalities,
        ``\\``-separated), ``description``, ``n_series``, ``n_instances``.
    """
    web, own = _client(url, dict(user=user, password=password, token=token, timeout_s=timeout_s))
    try:
        return web.find_studies(limit=limit, **filters)
    finally:
        if own:
            web.close()


def find_series(url: str | DicomWeb, study_uid: str, *, user: str | None = None, password: str | None = None,
                token: str | None = None, timeout_s: float = 60) -> list[dict]:
    """Series of one study (QIDO-RS): ``uid``, ``study_uid``, ``modality``, ``description``, ``series_number``,
    ``date``, ``n_instances``; an empty list when the server does not know the study."""
    web, own = _client(url, dict(user=user, password=password, token=token, timeout_s=timeout_s))
    try:
        return web.find_series(study_uid)
    finally:
        if own:
            web.close()


# ----------------------------------------------------------------------------- pull
@dataclass
class PullResult:
    """What :func:`pull` did.

    ``paths`` lists every instance file of the pull (written, replaced or found
    already there with identical bytes) in arrival order; ``series`` the series
    pulled (rows of :func:`find_series` plus ``n_pulled`` and ``folder``).
    """

    url: str
    study_uid: str
    out_dir: Path
    paths: list[Path] = field(default_factory=list)
    written: int = 0
    skipped: int = 0
    replaced: int = 0
    series: list[dict] = field(default_factory=list)

    @property
    def n_instances(self) -> int:
        return len(self.paths)

    def summary(self) -> str:
        n_series = len(self.series)
        parts = [f"{self.written} written"]
        if self.replaced:
            parts.append(f"{self.replaced} replaced")
        parts.append(f"{self.skipped} already there")
        return (f"pulled {self.n_instances} instance{'s' * (self.n_instances != 1)} in {n_series} "
                f"series of study {self.study_uid} from {self.url} into {self.out_dir} ({', '.join(parts)})")


def _progress(enabled: bool, total: int | None, desc: str, unit: str):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


def _encode(ds) -> bytes:
    import pydicom

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)  # as received: preamble, file meta and elements kept
    return buf.getvalue()


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def pull(url: str | DicomWeb, study_uid: str, out_dir: str | os.PathLike, *, series_uid: str | None = None,
         overwrite: bool = False, progress: bool = False, user: str | None = None, password: str | None = None,
         token: str | None = None, timeout_s: float = 60) -> PullResult:
    """Retrieve a study (or one of its series) from a DICOMweb server (WADO-RS) into ``out_dir``.

    Parameters
    ----------
    url : str or DicomWeb
        DICOMweb root URL, e.g. ``http://pacs.example.org:8042/dicom-web``.
    study_uid : str
        StudyInstanceUID.
    out_dir : str or Path
        Files go to ``out_dir/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.
    series_uid : str, optional
        Pull only this series of the study.
    overwrite : bool
        Replace an existing file whose bytes differ from what the server sends
        (default: that is an error).  Identical files are always skipped.
    progress : bool
        Show a progress bar on a terminal.
    user, password, token, timeout_s
        See :class:`DicomWeb`.

    Returns
    -------
    PullResult

    Raises
    ------
    InvivoError
        The server is unreachable, refuses the credentials or does not know the study/series.
    OutputExistsError
        A file exists with different bytes and ``overwrite`` is False.
    ParameterError
        Malformed URL or UID.
    """
    _check_uid(study_uid, "study_uid")
    if series_uid is not None:
        _check_uid(series_uid, "series_uid")
    from .io.nifti import atomic_write

    web, own = _client(url, dict(user=user, password=password, token=token, timeout_s=timeout_s))
    try:
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise OutputExistsError(f"{out} exists and is not a folder; choose another output folder")
        listing = web.find_series(study_uid)
        if not listing:
            raise InvivoError(f"study {study_uid} was not found on the DICOMweb server {web.url}; list the studies "
                              f"there with `invivo pull --url {web.url}`")
        if series_uid is not None:
            listing = [s for s in listing if s["uid"] == series_uid]
            if not listing:
                raise InvivoError(f"series {series_uid} is not in study {study_uid} on {web.url}; list its series "
                                  f"with `invivo pull --url {web.url} --study {study_uid}`")
        result = PullResult(url=web.url, study_uid=study_uid, out_dir=out)
        total = sum(s["n_instances"] or 0 for s in listing) or None
        bar = _progress(progress, total, "pulling", "instance")
        try:
            for s in listing:
                if not s["uid"] or len(str(s["uid"])) > 64 or not _UID.match(str(s["uid"])):
                    raise DicomError(f"the DICOMweb server {web.url} listed a series of study {study_uid} with an "
                                     f"invalid SeriesInstanceUID {s['uid']!r}")
                folder = out / study_uid / s["uid"]
                n = 0
                for ds in web.iter_series(study_uid, s["uid"]):
                    path = _save_instance(ds, folder, study_uid, s["uid"], overwrite, result, web.url, atomic_write)
                    result.paths.append(path)
                    n += 1
                    if bar is not None:
                        bar.update(1)
                if s["n_instances"] is not None and n != s["n_instances"]:
                    log.warning("series %s: the server listed %d instances but sent %d", s["uid"], s["n_instances"], n)
                result.series.append({**s, "n_pulled": n, "folder": folder})
        finally:
            if bar is not None:
                bar.close()
        log.info("%s", result.summary())
        return result
    finally:
        if own:
            web.close()


def _save_instance(ds, folder: Path, study_uid: str, series_uid: str, overwrite: bool, result: PullResult,
                   shown_url: str, atomic_write) -> Path:
    sop = str(ds.get("SOPInstanceUID", ""))
    if not _UID.match(sop) or len(sop) > 64:
        raise DicomError(f"the DICOMweb server {shown_url} sent an instance of series {series_uid} with an invalid "
                         f"SOPInstanceUID (0008,0018) {sop!r}; it was not written")
    got = (str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")))
    if got != (study_uid, series_uid):
        raise DicomError(f"the DICOMweb server {shown_url} sent instance {sop} of study/series {got[0]}/{got[1]} when "
                         f"asked for {study_uid}/{series_uid}; it was not written")
    data = _encode(ds)
    path = folder / f"{sop}.dcm"
    if path.exists():
        if _same_bytes(path, data):
            result.skipped += 1
            return path
        if not overwrite:
            raise OutputExistsError(f"{path} already exists with different content; pass overwrite=True "
                                    "(--overwrite) to replace it, or pull into another folder")
        result.replaced += 1
    else:
        result.written += 1
    atomic_write({path: lambda tmp: Path(tmp).write_bytes(data)}, overwrite=True)
    return path


# ----------------------------------------------------------------------------- push
@dataclass
class PushResult:
    """What :func:`push` did: ``stored`` paths, ``failed`` and ``skipped`` as ``(path, reason)`` pairs."""

    url: str
    stored: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    n_requests: int = 0

    @property
    def n_stored(self) -> int:
        return len(self.stored)

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        return (f"stored {self.n_stored} instance{'s' * (self.n_stored != 1)} on {self.url} in {self.n_requests} "
                f"request{'s' * (self.n_requests != 1)} ({self.n_failed} failed, {self.n_skipped} skipped as not "
                "DICOM)")


def _walk(paths) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
        else:
            raise DicomError(f"{p}: no such file or folder")
    return files


def _read_instance(path: Path):
    """(dataset, None) or (None, reason it is skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, struct.error, ValueError, TypeError, KeyError, AttributeError,
            NotImplementedError):
        return None, "not a DICOM file"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    sop_class = str(getattr(ds.get("file_meta", None), "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    if sop_class == "1.2.840.10008.1.3.10" or "DirectoryRecordSequence" in ds:
        return None, "DICOMDIR (a media index, not an instance)"
    return ds, None


def _failure_text(code) -> str:
    try:
        c = int(code)
    except (TypeError, ValueError):
        return "refused by the server (no FailureReason)"
    name = _FAILURE_REASONS.get(c) or ("cannot understand" if 0xC000 <= c <= 0xCFFF else
                                      "refused: out of resources" if 0xA700 <= c <= 0xA7FF else
                                      "data set does not match SOP class" if 0xA900 <= c <= 0xA9FF else "failure")
    return f"FailureReason 0x{c:04X} ({name})"


def _batches(files: Iterable[Path], batch_size: int, batch_bytes: int, result: PushResult, bar):
    batch: list[tuple[Path, Any]] = []
    size = 0
    for f in files:
        ds, why = _read_instance(f)
        if bar is not None:
            bar.update(1)
        if ds is None:
            result.skipped.append((f, why))
            continue
        n = f.stat().st_size
        if batch and (len(batch) >= batch_size or size + n > batch_bytes):
            yield batch
            batch, size = [], 0
        batch.append((f, ds))
        size += n
    if batch:
        yield batch


def push(paths: str | os.PathLike | Iterable[str | os.PathLike], url: str | DicomWeb, *, progress: bool = False,
         batch_size: int = BATCH_SIZE, batch_bytes: int = BATCH_BYTES, user: str | None = None,
         password: str | None = None, token: str | None = None, timeout_s: float = 60) -> PushResult:
    """Send DICOM files to a DICOMweb server (STOW-RS).

    Parameters
    ----------
    paths : path or sequence of paths
        Files and folders (searched recursively; hidden files and folders are
        ignored).  Files that are not DICOM are listed in ``result.skipped``.
    url : str or DicomWeb
        DICOMweb root URL.
    progress : bool
        Show a progress bar on a terminal.
    batch_size : int
        At most this many instances per request.
    batch_bytes : int, bytes
        At most about this many bytes of files per request (a larger single file
        is sent alone), which bounds the memory used.
    user, password, token, timeout_s
        See :class:`DicomWeb`.

    Returns
    -------
    PushResult
        ``n_stored``, ``n_failed``, ``n_skipped``; ``failed`` holds ``(path, reason)``
        with the server's FailureReason.

    Raises
    ------
    DicomError
        A path does not exist, or no DICOM file was found.
    InvivoError
        The server is unreachable or refuses the credentials.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(batch_bytes, int) or batch_bytes < 1:
        raise ParameterError(f"batch_bytes must be a positive integer number of bytes, got {batch_bytes!r}")
    files = _walk(paths)
    web, own = _client(url, dict(user=user, password=password, token=token, timeout_s=timeout_s))
    try:
        result = PushResult(url=web.url)
        bar = _progress(progress, len(files), "pushing", "file")
        try:
            for batch in _batches(files, batch_size, batch_bytes, result, bar):
                _send(web, batch, result)
        finally:
            if bar is not None:
                bar.close()
        if not result.stored and not result.failed:
            shown = ", ".join(str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else list(paths))[:3])
            raise DicomError(f"no DICOM file found in {shown} ({result.n_skipped} file(s) skipped as not DICOM); "
                             "nothing was sent")
        for path, reason in result.failed:
            log.info("not stored: %s: %s", path, reason)
        log.info("%s", result.summary())
        return result
    finally:
        if own:
            web.close()


def _send(web: DicomWeb, batch: list[tuple[Path, Any]], result: PushResult) -> None:
    response, status = web.store([ds for _, ds in batch])
    result.n_requests += 1
    by_uid: dict[str, list[Path]] = {}
    for path, ds in batch:
        by_uid.setdefault(str(ds.get("SOPInstanceUID", "")), []).append(path)
    done: set[str] = set()
    failed_seq = getattr(response, "FailedSOPSequence", None) if response is not None else None
    ref_seq = getattr(response, "ReferencedSOPSequence", None) if response is not None else None
    for item in failed_seq or []:
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        for path in by_uid.get(uid, []):
            result.failed.append((path, _failure_text(item.get("FailureReason"))))
        done.add(uid)
    for item in ref_seq or []:
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        if uid in done:
            continue
        result.stored.extend(by_uid.get(uid, []))
        done.add(uid)
    silent_ok = status == 200 and not failed_seq and not ref_seq  # a server that answers 200 with no body
    for uid, ps in by_uid.items():
        if uid in done:
            continue
        if silent_ok:
            result.stored.extend(ps)
        else:
            why = f"the server answered HTTP {status} without listing this instance as stored"
            if not uid:
                why += " (it has no SOPInstanceUID (0008,0018))"
            result.failed.extend((p, why) for p in ps)
