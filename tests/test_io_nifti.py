"""NIfTI + JSON sidecar round trips, BIDS keys from other tools, atomic writes."""

import json
from datetime import datetime

import nibabel as nib
import numpy as np
import pytest

import invivo
from invivo import Meta, Subject, Tracer, Volume
from invivo.errors import InvivoError, OutputExistsError, ParameterError
from invivo.io.nifti import sidecar_path


def _pet_volume():
    rng = np.random.default_rng(0)
    aff = np.array([[0.4, 0.01, 0, -10.0], [0, 0.4, 0.02, 5.0], [0.0, 0, 0.8, -30.0], [0, 0, 0, 1]])
    meta = Meta(modality="PT", units="BQML", frame_start_s=(0.0, 60.0, 180.0), frame_duration_s=(60.0, 120.0, 300.0),
                decay_correction="START", series_datetime=datetime(2026, 1, 2, 10, 30, 0),
                tracer=Tracer("89Zr-oxine CAR-T", "89Zr", 282240.0, 3.7e6, datetime(2026, 1, 1, 9, 0, 0)),
                subject=Subject(id="m01", weight_kg=0.025, species="mouse"), series_uid="1.2.3")
    meta.reference_activity_bq = np.full((6, 3), 3.2e6)
    meta.suv_bw_factor = np.full((6, 3), 25.0 / 3.2e6)
    meta.assumptions.append("an assumption")
    return Volume(rng.random((4, 5, 6, 3)).astype(np.float32), aff, meta)


def test_round_trip_exact(tmp_path):
    vol = _pet_volume()
    out = invivo.save(vol, tmp_path / "pet.nii.gz")
    back = invivo.load(out)
    assert back.data.dtype == np.float32
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-6)
    m, b = vol.meta, back.meta
    assert b.frame_start_s == m.frame_start_s and b.frame_duration_s == m.frame_duration_s
    assert b.tracer == m.tracer and b.subject == m.subject
    assert b.series_datetime == m.series_datetime and b.decay_correction == "START"
    np.testing.assert_array_equal(b.reference_activity_bq, m.reference_activity_bq)
    assert b.assumptions == ["an assumption"]
    side = json.loads(sidecar_path(out).read_text())
    assert side["FrameTimesStart"] == [0.0, 60.0, 180.0]
    assert side["InjectedRadioactivity"] == pytest.approx(3.7)
    assert side["InjectionStart"] == pytest.approx(-(24 * 3600 + 1.5 * 3600))
    assert side["Units"] == "Bq/mL"


def test_refuses_to_overwrite_and_leaves_no_partial_output(tmp_path):
    vol = _pet_volume()
    out = tmp_path / "pet.nii.gz"
    invivo.save(vol, out)
    stamp = out.stat().st_mtime_ns
    with pytest.raises(OutputExistsError, match="already exists"):
        invivo.save(vol, out)
    assert out.stat().st_mtime_ns == stamp
    invivo.save(vol, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pet.json", "pet.nii.gz"]


def test_failed_write_leaves_nothing(tmp_path):
    vol = _pet_volume()
    vol.meta.extra["bad"] = float("nan")  # JSON with allow_nan=False fails before anything is renamed
    with pytest.raises(ValueError):
        invivo.save(vol, tmp_path / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_bids_sidecar_from_another_tool(tmp_path):
    data = np.ones((3, 3, 3, 2), np.float64)
    img = nib.Nifti1Image(data, np.diag([0.5, 0.5, 0.5, 1]))
    nib.save(img, tmp_path / "sub-01_pet.nii.gz")
    (tmp_path / "sub-01_pet.json").write_text(json.dumps({
        "Modality": "PT", "Units": "Bq/mL", "TracerName": "FDG", "TracerRadionuclide": "F18",
        "InjectedRadioactivity": 10.0, "InjectedRadioactivityUnits": "MBq", "TimeZero": "10:00:00",
        "ScanDate": "2026-01-01", "InjectionStart": -600, "ScanStart": 0, "FrameTimesStart": [0, 300],
        "FrameDuration": [300, 300], "ImageDecayCorrected": True, "ImageDecayCorrectionTime": 0, "BodyWeight": 0.03}))
    vol = invivo.load(tmp_path / "sub-01_pet.nii.gz")
    m = vol.meta
    assert m.modality == "PT" and m.units == "BQML"
    assert m.tracer.isotope == "18F" and m.tracer.injected_activity_bq == pytest.approx(1e7)
    assert m.tracer.injection_datetime == datetime(2026, 1, 1, 9, 50)
    assert m.series_datetime == datetime(2026, 1, 1, 10, 0)
    assert m.frame_start_s == (0.0, 300.0) and m.frame_duration_s == (300.0, 300.0)
    assert m.decay_correction == "START" and m.subject.weight_kg == 0.03


def test_echo_times_in_ms_in_sidecar_is_an_error(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2, 3)), np.eye(4)), tmp_path / "me.nii")
    (tmp_path / "me.json").write_text(json.dumps({"EchoTime": [2, 4, 6]}))
    with pytest.raises(ParameterError, match="milliseconds"):
        invivo.load(tmp_path / "me.nii")


def test_corrupt_nifti(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InvivoError, match="bad.nii.gz"):
        invivo.load(tmp_path / "bad.nii.gz")


def test_dicom_to_nifti_round_trip_on_real_mr(tmp_path):
    from .conftest import data_path

    vol = invivo.load(data_path("siemens_megre", "mag"))
    back = invivo.load(invivo.save(vol, tmp_path / "megre.nii.gz"))
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-6)
    assert back.meta.echo_times_s == vol.meta.echo_times_s
