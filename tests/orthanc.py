"""A real Orthanc DICOMweb server for the tests, on the loopback interface.

Use it as a context manager::

    with orthanc_server(tmp_dir) as server:
        url, user, password = server          # url ends in /dicom-web

or make a pytest fixture of it in a test module::

    from tests.orthanc import orthanc_fixture
    orthanc = orthanc_fixture(scope="module")

    def test_something(orthanc):
        url, user, password = orthanc

The server stores everything in a temporary folder, listens on a free port, refuses
remote clients and asks for HTTP basic authentication (user ``invivo``, a random
password).  When the Orthanc binary or its DICOMweb plugin is missing the test is
skipped with the command that installs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

__all__ = ["OrthancServer", "orthanc_server", "orthanc_fixture", "orthanc_available", "SKIP_REASON"]

ORTHANC_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "/usr/local/bin/Orthanc")
PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)
SKIP_REASON = ("Orthanc with its DICOMweb plugin is not installed: run .ci/services.sh "
               "(apt-get install orthanc orthanc-dicomweb)")
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
USER = "invivo"


@dataclass
class OrthancServer:
    """A running Orthanc: unpacks as ``url, user, password``.

    ``url`` is the DICOMweb root (``http://127.0.0.1:PORT/dicom-web``), ``rest_url``
    Orthanc's own REST API root, ``log`` its log file.
    """

    url: str
    user: str
    password: str = field(repr=False)
    rest_url: str = ""
    dicom_port: int = 0
    log: Path | None = None
    workdir: Path | None = None

    def __iter__(self):
        return iter((self.url, self.user, self.password))

    def rest(self, path: str, *, method: str = "GET", data: bytes | None = None):
        """Call Orthanc's REST API (``/system``, ``/instances``, ...); JSON in, JSON out."""
        req = urllib.request.Request(self.rest_url + path, data=data, method=method,
                                     headers={"Authorization": _basic(self.user, self.password)})
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (loopback only)
            body = resp.read()
        return json.loads(body) if body else None

    def clear(self) -> None:
        """Delete every patient (and so every study) stored on the server."""
        for pid in self.rest("/patients"):
            self.rest(f"/patients/{pid}", method="DELETE")


def _basic(user: str, password: str) -> str:
    return "Basic " + b64encode(f"{user}:{password}".encode()).decode()


def _first(paths) -> str | None:
    return next((p for p in paths if os.path.isfile(p)), None)


def orthanc_available() -> tuple[str, str] | None:
    """(binary, DICOMweb plugin) when both are installed, else None."""
    binary = _first(ORTHANC_CANDIDATES) or shutil.which("Orthanc")
    plugin = _first(PLUGIN_CANDIDATES)
    if binary is None or plugin is None:
        return None
    return binary, plugin


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _log_tail(log: Path, n: int = 15) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:])


@contextlib.contextmanager
def orthanc_server(workdir: str | os.PathLike | None = None, *, dicom_server: bool = False) -> Iterator[OrthancServer]:
    """Start Orthanc with the DICOMweb plugin on 127.0.0.1, yield an :class:`OrthancServer`, stop it.

    Parameters
    ----------
    workdir : path, optional
        Folder for the configuration, storage, index and log (default: a new
        temporary folder, removed afterwards).
    dicom_server : bool
        Also open Orthanc's DICOM (DIMSE) server on ``server.dicom_port``; off by
        default so that only the loopback-restricted HTTP server listens.
    """
    found = orthanc_available()
    if found is None:
        pytest.skip(SKIP_REASON)
    binary, plugin = found
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="invivo-orthanc-"))
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        (work / "storage").mkdir(exist_ok=True)
        (work / "index").mkdir(exist_ok=True)
        http_port = _free_port()
        dicom_port = _free_port()
        while dicom_port == http_port:  # bounded in practice: the OS hands out distinct ports
            dicom_port = _free_port()
        password = secrets.token_urlsafe(18)
        config = {
            "Name": "invivo-test",
            "StorageDirectory": str(work / "storage"),
            "IndexDirectory": str(work / "index"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomServerEnabled": bool(dicom_server),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: password},
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full",
                         "SeriesMetadata": "Full"},
            "SaveJobs": False,
            "StorageCompression": False,
            "HttpThreadsCount": 8,
            "ConcurrentJobs": 1,
        }
        cfg = work / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=2))
        os.chmod(cfg, 0o600)  # holds the password
        log = work / "orthanc.log"
        with open(log, "wb") as logf:
            proc = subprocess.Popen([binary, str(cfg)], stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=work)
        try:
            rest_url = f"http://{LOOPBACK}:{http_port}"
            server = OrthancServer(url=f"{rest_url}/dicom-web", user=USER, password=password, rest_url=rest_url,
                                   dicom_port=dicom_port, log=log, workdir=work)
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"Orthanc exited with code {proc.returncode} while starting: {_log_tail(log)}")
                try:
                    server.rest("/system")
                    break
                except (urllib.error.URLError, ConnectionError, OSError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"Orthanc did not answer on {rest_url} within {START_TIMEOUT_S:.0f} s: {_log_tail(log)}"
                        ) from None
                    time.sleep(0.1)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)


def orthanc_fixture(scope: str = "module", *, dicom_server: bool = False):
    """A pytest fixture (give it a name by assigning it in a test module) yielding an :class:`OrthancServer`."""

    @pytest.fixture(scope=scope)
    def _orthanc(tmp_path_factory):
        with orthanc_server(tmp_path_factory.mktemp("orthanc"), dicom_server=dicom_server) as server:
            yield server

    return _orthanc
