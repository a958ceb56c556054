"""PACS in and out over DICOMweb (invivo.pacs, ``invivo pull`` / ``invivo push``), against a real Orthanc."""

from __future__ import annotations

import dataclasses
import logging
import shutil

import numpy as np
import pydicom
import pytest

import invivo
from invivo import pacs
from invivo.cli.main import main
from invivo.errors import DicomError, InvivoError, OutputExistsError, ParameterError
from invivo.synth import mouse_phantom, render_mr, render_pet, write_dicom

from .orthanc import _free_port, orthanc_fixture

pytest.importorskip("dicomweb_client", reason='invivo.pacs needs the "pacs" extra (dicomweb-client)')

orthanc = orthanc_fixture(scope="module")

ENV = ("INVIVO_DICOMWEB_USER", "INVIVO_DICOMWEB_PASSWORD", "INVIVO_DICOMWEB_TOKEN")
ECHOES_S = (0.002, 0.005, 0.009, 0.014)
INJECTED_BQ = 3.7e6


@pytest.fixture(autouse=True)
def _no_env_credentials(monkeypatch):
    for k in ENV:
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A scanner export: a PET series and a 4-echo MR series of one study, plus a non-DICOM file."""
    root = tmp_path_factory.mktemp("export")
    ph = mouse_phantom(voxel_size_mm=1.0, shape=(20, 16, 10))
    pet, _ = render_pet(ph, percent_id_per_g={"liver": 15.0, "tumour": 8.0}, injected_activity_bq=INJECTED_BQ,
                        scan_delay_s=3 * 86400, noise=0.05, seed=3)
    mr, _ = render_mr(ph, echo_times_s=ECHOES_S, noise_sigma=5.0, seed=4)
    study = pydicom.uid.generate_uid()
    pet_paths = write_dicom(pet, root / "pet", study_uid=study, series_number=1, patient_id="mouse01")
    mr_paths = write_dicom(mr, root / "mr", modality="MR", study_uid=study, series_number=2, patient_id="mouse01")
    (root / "notes.txt").write_text("injected 3.7 MBq at 10:02\n")
    series = {str(pydicom.dcmread(p[0], stop_before_pixels=True).SeriesInstanceUID): p for p in (pet_paths, mr_paths)}
    return {"root": root, "study": study, "series": series, "n": len(pet_paths) + len(mr_paths),
            "n_pet": len(pet_paths), "n_mr": len(mr_paths)}


@pytest.fixture(scope="module")
def pushed(orthanc, export):
    url, user, password = orthanc
    result = pacs.push([export["root"]], url, user=user, password=password, batch_size=25)
    return result


# ----------------------------------------------------------------------------- no server needed
def test_redact_url_and_repr_hide_credentials(monkeypatch):
    assert pacs.redact_url("http://alice:p%40ss@pacs:8042/dicom-web") == "http://pacs:8042/dicom-web"
    assert pacs.redact_url("https://u:pa/ss@word@host/dicom-web") == "https://host/dicom-web"
    web = pacs.DicomWeb("http://alice:hunter2@127.0.0.1:8042/dicom-web/")
    assert web.url == "http://127.0.0.1:8042/dicom-web" and web.auth == "basic"
    assert web._session.auth == ("alice", "hunter2")
    assert "hunter2" not in repr(web) and "alice" not in repr(web)
    monkeypatch.setenv("INVIVO_DICOMWEB_TOKEN", "tok-XYZ")
    web = pacs.DicomWeb("http://127.0.0.1:8042/dicom-web")
    assert web.auth == "token" and web._session.headers["Authorization"] == "Bearer tok-XYZ"
    assert "tok-XYZ" not in repr(web)


def test_credentials_from_environment_are_checked(monkeypatch):
    monkeypatch.setenv("INVIVO_DICOMWEB_USER", "alice")
    with pytest.raises(ParameterError, match="INVIVO_DICOMWEB_PASSWORD is not"):
        pacs.DicomWeb("http://127.0.0.1:8042/dicom-web")
    monkeypatch.setenv("INVIVO_DICOMWEB_PASSWORD", "pw-123")
    web = pacs.DicomWeb("http://127.0.0.1:8042/dicom-web")
    assert web._session.auth == ("alice", "pw-123")
    monkeypatch.setenv("INVIVO_DICOMWEB_TOKEN", "tok")
    with pytest.raises(ParameterError, match="INVIVO_DICOMWEB_TOKEN and INVIVO_DICOMWEB_USER") as e:
        pacs.DicomWeb("http://127.0.0.1:8042/dicom-web")
    assert "pw-123" not in str(e.value)
    # explicit arguments win over the environment
    assert pacs.DicomWeb("http://127.0.0.1:8042/dicom-web", token="abc").auth == "token"


@pytest.mark.parametrize("url", ["ftp://pacs/dicom-web", "pacs.example.org/dicom-web", "http:///dicom-web",
                                 "http://pacs:port/dicom-web", "http://pacs/dicom-web?key=SECRETQ", ""])
def test_malformed_url(url):
    with pytest.raises(ParameterError, match="url") as e:
        pacs.find_studies(url)
    assert "SECRETQ" not in str(e.value) and str(e.value).count("\n") == 0


def test_bad_uid_and_batch_size():
    with pytest.raises(ParameterError, match="study_uid must be a DICOM UID"):
        pacs.pull("http://127.0.0.1:1/dicom-web", "1.2.x", "out")
    with pytest.raises(ParameterError, match="batch_size"):
        pacs.push([], "http://127.0.0.1:1/dicom-web", batch_size=0)


def test_unreachable_server_names_url_without_credentials(tmp_path):
    port = _free_port()  # nothing listens there
    with pytest.raises(InvivoError, match=rf"cannot reach the DICOMweb server at http://127\.0\.0\.1:{port}/dicom-web") as e:
        pacs.find_studies(f"http://bob:Sup3rSecret@127.0.0.1:{port}/dicom-web", timeout_s=5)
    assert "Sup3rSecret" not in str(e.value) and "bob" not in str(e.value)
    assert str(e.value).count("\n") == 0


def test_stow_failure_reasons_are_read():
    from types import SimpleNamespace

    from pydicom.dataset import Dataset

    resp = Dataset()
    ok, bad = Dataset(), Dataset()
    ok.ReferencedSOPInstanceUID = "1.2.3"
    bad.ReferencedSOPInstanceUID = "1.2.4"
    bad.FailureReason = 0xA900
    resp.ReferencedSOPSequence = [ok]
    resp.FailedSOPSequence = [bad]

    def ds(uid):
        d = Dataset()
        d.SOPInstanceUID = uid
        return d

    web = SimpleNamespace(store=lambda datasets: (resp, 409))
    result = pacs.PushResult(url="u")
    pacs._send(web, [("a.dcm", ds("1.2.3")), ("b.dcm", ds("1.2.4")), ("c.dcm", ds("1.2.5"))], result)
    assert result.stored == ["a.dcm"]
    assert result.failed[0] == ("b.dcm", "FailureReason 0xA900 (data set does not match SOP class)")
    assert result.failed[1][0] == "c.dcm" and "HTTP 409" in result.failed[1][1]


# ----------------------------------------------------------------------------- against Orthanc
def test_push_stores_everything_and_skips_non_dicom(pushed, export):
    assert pushed.n_stored == export["n"] and pushed.n_failed == 0
    assert pushed.n_skipped == 1 and pushed.skipped[0][0].name == "notes.txt"
    assert pushed.n_requests == -(-export["n"] // 25)  # batches of at most 25
    assert "password" not in pushed.url and "@" not in pushed.url


def test_qido_finds_the_study_and_series(orthanc, pushed, export):
    url, user, password = orthanc
    studies = pacs.find_studies(url, user=user, password=password, PatientID="mouse01")
    assert [s["uid"] for s in studies] == [export["study"]]
    s = studies[0]
    assert s["n_instances"] == export["n"] and s["n_series"] == 2 and s["patient_id"] == "mouse01"
    assert set(s["modality"].split("\\")) == {"PT", "MR"}
    assert pacs.find_studies(url, user=user, password=password, patient_id="nobody") == []
    series = pacs.find_series(url, export["study"], user=user, password=password)
    assert [(r["modality"], r["series_number"], r["n_instances"]) for r in series] == [
        ("PT", 1, export["n_pet"]), ("MR", 2, export["n_mr"])]
    assert {r["uid"] for r in series} == set(export["series"])


def _meta_dict(vol):
    d = dataclasses.asdict(vol.meta)
    d.pop("source")
    return d


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and not isinstance(a, str):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def test_pull_round_trip_is_exact_and_rerun_safe(orthanc, pushed, export, tmp_path):
    url, user, password = orthanc
    out = tmp_path / "incoming"
    res = pacs.pull(url, export["study"], out, user=user, password=password)
    assert (res.written, res.skipped, res.replaced, res.n_instances) == (export["n"], 0, 0, export["n"])
    assert {s["uid"]: s["n_pulled"] for s in res.series} == {u: len(p) for u, p in export["series"].items()}
    for p in res.paths:
        assert p.parent.parent == out / export["study"] and p.parent.name in export["series"]
        assert p.name == str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) + ".dcm"

    table = invivo.scan(out)
    assert set(table["series_uid"]) == set(export["series"]) and table.attrs["skipped_files"] == 0

    for series_uid, orig_paths in export["series"].items():
        a = invivo.load(export["root"] / ("pet" if "PT" in orig_paths[0].name else "mr"))
        b = invivo.load(out, series=series_uid)
        assert a.meta.series_uid == b.meta.series_uid == series_uid
        assert b.data.dtype == a.data.dtype and np.array_equal(a.data, b.data)
        assert np.array_equal(a.affine, b.affine)
        assert _same(_meta_dict(a), _meta_dict(b))
        if a.meta.modality == "PT":
            assert b.meta.units == "BQML" and b.meta.tracer.injected_activity_bq == pytest.approx(INJECTED_BQ)
            assert b.meta.decay_correction == a.meta.decay_correction
        else:
            assert b.data.shape[-1] == len(ECHOES_S)
            assert np.allclose(b.meta.echo_times_s, ECHOES_S, rtol=0, atol=1e-9)
        # every instance comes back with the same pixel bytes (indeed the same file bytes)
        for p in orig_paths:
            src = pydicom.dcmread(p)
            got = out / export["study"] / series_uid / f"{src.SOPInstanceUID}.dcm"
            assert pydicom.dcmread(got).PixelData == src.PixelData
            assert got.read_bytes() == p.read_bytes()

    again = pacs.pull(url, export["study"], out, user=user, password=password)
    assert (again.written, again.skipped, again.replaced) == (0, export["n"], 0)

    victim = res.paths[0]
    good = victim.read_bytes()
    victim.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    with pytest.raises(OutputExistsError, match="different content.*overwrite"):
        pacs.pull(url, export["study"], out, user=user, password=password)
    fixed = pacs.pull(url, export["study"], out, user=user, password=password, overwrite=True)
    assert (fixed.written, fixed.replaced, fixed.skipped) == (0, 1, export["n"] - 1)
    assert victim.read_bytes() == good
    assert not [f for f in out.rglob("*") if f.name.startswith(".")]  # no temporary files left


def test_pull_one_series(orthanc, pushed, export, tmp_path):
    url, user, password = orthanc
    mr_uid = next(u for u, p in export["series"].items() if p[0].name.startswith("MR"))
    res = pacs.pull(url, export["study"], tmp_path, series_uid=mr_uid, user=user, password=password)
    assert res.n_instances == export["n_mr"] and [s["uid"] for s in res.series] == [mr_uid]
    assert list((tmp_path / export["study"]).iterdir()) == [tmp_path / export["study"] / mr_uid]
    with pytest.raises(InvivoError, match="series 1.2.3 is not in study"):
        pacs.pull(url, export["study"], tmp_path, series_uid="1.2.3", user=user, password=password)


def test_unknown_study_is_a_clear_error(orthanc, pushed, tmp_path):
    url, user, password = orthanc
    with pytest.raises(InvivoError, match=r"study 1\.2\.3\.4\.5 was not found on the DICOMweb server"):
        pacs.pull(url, "1.2.3.4.5", tmp_path / "x", user=user, password=password)
    assert not (tmp_path / "x").exists()


def test_wrong_password_says_what_to_set_and_hides_it(orthanc, pushed, export, tmp_path, caplog, capsys):
    url, user, _ = orthanc
    secret = "Wr0ngPassw0rd-xyz"
    caplog.set_level(logging.DEBUG)
    for call in (lambda: pacs.find_studies(url, user=user, password=secret),
                 lambda: pacs.pull(url, export["study"], tmp_path, user=user, password=secret),
                 lambda: pacs.push(export["root"] / "pet", url, user=user, password=secret)):
        with pytest.raises(InvivoError, match="set INVIVO_DICOMWEB_USER/PASSWORD or INVIVO_DICOMWEB_TOKEN") as e:
            call()
        assert "HTTP 401" in str(e.value) and secret not in str(e.value) and str(e.value).count("\n") == 0
    with pytest.raises(InvivoError, match="HTTP 401"):
        pacs.find_studies(url)  # no credentials at all
    out = capsys.readouterr()
    assert secret not in caplog.text and secret not in out.out and secret not in out.err
    assert "127.0.0.1" in caplog.text  # the requests were logged, just not the password


def test_push_reports_instances_the_server_refuses(orthanc, pushed, export, tmp_path, monkeypatch, capsys):
    url, user, password = orthanc
    src = next(iter(export["series"].values()))[0]
    ds = pydicom.dcmread(src)
    del ds.SOPInstanceUID  # Orthanc refuses an instance without SOPInstanceUID
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    good = tmp_path / "good.dcm"
    shutil.copy(src, good)
    res = pacs.push([bad, good], url, user=user, password=password)
    assert res.n_stored == 1 and res.stored == [good]
    assert res.n_failed == 1 and res.failed[0][0] == bad and "SOPInstanceUID" in res.failed[0][1]
    monkeypatch.setenv("INVIVO_DICOMWEB_USER", user)
    monkeypatch.setenv("INVIVO_DICOMWEB_PASSWORD", password)
    assert main(["push", str(bad), str(good), "--url", url]) == 1  # some instances failed
    out = capsys.readouterr()
    assert out.out.strip() == f"stored 1 instance on {url} in 1 request (1 failed, 0 skipped as not DICOM)"
    assert f"not stored: {bad}: the server answered HTTP 400 without listing" in out.err
    with pytest.raises(DicomError, match="no DICOM file found"):
        pacs.push([export["root"] / "notes.txt"], url, user=user, password=password)


def test_cli_push_and_pull_with_environment_credentials(orthanc, pushed, export, tmp_path, monkeypatch, capsys):
    url, user, password = orthanc
    monkeypatch.setenv("INVIVO_DICOMWEB_USER", user)
    monkeypatch.setenv("INVIVO_DICOMWEB_PASSWORD", password)

    assert main(["push", str(export["root"] / "pet"), str(export["root"] / "notes.txt"), "--url", url, "--quiet"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"stored {export['n_pet']} instances on {url} in 1 request (0 failed, 1 skipped as not DICOM)"

    assert main(["pull", "--url", url]) == 0
    out = capsys.readouterr().out
    assert export["study"] in out and "mouse01" in out

    assert main(["pull", "--url", url, "--study", export["study"]]) == 0
    out = capsys.readouterr().out
    assert all(u in out for u in export["series"]) and out.strip().endswith(f"2 series in study {export['study']}")

    dest = tmp_path / "pulled"
    assert main(["pull", "--url", url, "--study", export["study"], "--out", str(dest), "--quiet"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"pulled {export['n']} instances in 2 series of study {export['study']}")
    assert f"({export['n']} written, 0 already there)" in out
    assert len(invivo.scan(dest)) == 2

    assert main(["pull", "--url", url, "--study", "1.2.3.4.5", "--out", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "study 1.2.3.4.5 was not found" in err and err.count("\n") == 1

    monkeypatch.setenv("INVIVO_DICOMWEB_PASSWORD", "not-the-password-987")
    assert main(["pull", "--url", url, "--study", export["study"], "--out", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "set INVIVO_DICOMWEB_USER/PASSWORD or INVIVO_DICOMWEB_TOKEN" in err and "not-the-password-987" not in err
