"""Regressions for defects found in review: each test states the truth it checks."""

import json
import os
import stat
from datetime import datetime, timedelta

import numpy as np
import pydicom
import pytest

import invivo
from invivo import Meta, Subject, Tracer, Volume, roi, uptake
from invivo.cli.main import main
from invivo.errors import DicomError, InvivoWarning, ParameterError
from invivo.io.convert import convert
from invivo.io.nifti import sidecar_path
from invivo.synth import write_dicom

T0 = datetime(2025, 3, 4, 10, 0, 0)


def _pet(folder, *, frames=1, injection=T0 - timedelta(minutes=10), isotope="18F", half_life=6586.2,
         origin=(0.0, 0.0, 0.0), **kw):
    starts = tuple(60.0 * i * (i + 1) / 2 for i in range(frames))
    durs = tuple(60.0 * (i + 1) for i in range(frames))
    meta = Meta(modality="PT", units="BQML", decay_correction="START", series_datetime=T0,
                frame_start_s=starts, frame_duration_s=durs,
                tracer=Tracer("FDG", isotope, half_life, 10e6, injection), subject=Subject(id="m1", weight_kg=0.025))
    shape = (4, 4, 3, frames) if frames > 1 else (4, 4, 3)
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    aff[:3, 3] = origin
    vol = Volume(np.full(shape, 1000.0), aff, meta)
    write_dicom(vol, folder, **kw)
    return vol


def _edit(folder, fn):
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        fn(ds)
        ds.save_as(f)


def test_scan_row_is_load_index(tmp_path):
    aff = np.diag([1.0, 1, 2, 1])
    for sub, num, val in (("Bmouse", 1, 100.0), ("Amouse", 2, 500.0)):
        write_dicom(Volume(np.full((4, 4, 3), val), aff, Meta(modality="CT", series_datetime=T0)), tmp_path / sub,
                    patient_id=sub, series_number=num, series_description=f"{sub}-ct")
    table = invivo.scan(tmp_path)
    for i in range(len(table)):
        assert invivo.load(tmp_path, series=i).meta.subject.id == table.loc[i, "subject_id"]
    # a string is a UID, number or description, never a row index
    assert invivo.load(tmp_path, series="1").meta.subject.id == "Bmouse"


def test_injection_before_midnight_in_metadata_and_sidecar(tmp_path):
    inj = datetime(2025, 3, 3, 23, 30)
    scan = datetime(2025, 3, 4, 0, 30)

    def time_only(ds):
        item = ds.RadiopharmaceuticalInformationSequence[0]
        del item.RadiopharmaceuticalStartDateTime
        item.RadiopharmaceuticalStartTime = "233000"
        ds.SeriesDate = ds.AcquisitionDate = ds.StudyDate = "20250304"
        ds.SeriesTime = ds.AcquisitionTime = "003000"
    _pet(tmp_path / "pt", injection=inj)
    _edit(tmp_path / "pt", time_only)
    with pytest.warns(InvivoWarning, match="previous day"):
        vol = invivo.load(tmp_path / "pt")
    assert vol.meta.tracer.injection_datetime == inj
    assert vol.meta.series_datetime == scan
    out = invivo.save(uptake.suv(vol), tmp_path / "suv.nii.gz")
    assert json.loads(sidecar_path(out).read_text())["InjectionStart"] == -3600.0
    # the sidecar alone gives the same SUV as the DICOM rules
    nifti = invivo.load(tmp_path / "suv.nii.gz")
    assert nifti.meta.tracer.injection_datetime == inj


def test_series_time_after_first_acquisition(tmp_path):
    _pet(tmp_path / "pt", frames=3)
    _edit(tmp_path / "pt", lambda ds: setattr(ds, "SeriesTime", "110000"))  # post-processed an hour later
    with pytest.warns(InvivoWarning, match="SeriesTime .* after the earliest AcquisitionTime"):
        vol = invivo.load(tmp_path / "pt")
    assert vol.meta.series_datetime == T0
    assert vol.meta.frame_start_s == (0.0, 60.0, 180.0)
    # decay reference is the scan start: A_ref = 10 MBq decayed over the 10 min before the scan
    expected = 10e6 * 2 ** (-600 / 6586.2)
    np.testing.assert_allclose(vol.meta.reference_activity_bq, expected, rtol=1e-12)


def test_frames_with_one_acquisition_time_use_frame_reference_time(tmp_path):
    _pet(tmp_path / "pt", frames=3)
    _edit(tmp_path / "pt", lambda ds: setattr(ds, "AcquisitionTime", "100000"))
    vol = invivo.load(tmp_path / "pt")
    assert vol.meta.frame_start_s == pytest.approx((0.0, 60.0, 180.0), abs=1e-3)
    assert any("FrameReferenceTime" in a for a in vol.meta.assumptions)


def test_unwritable_output_is_one_line_error(tmp_path, capsys):
    _pet(tmp_path / "pt")
    (tmp_path / "afile").write_text("x")
    assert main(["uptake", str(tmp_path / "pt"), "--out", str(tmp_path / "afile" / "x.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot write" in err


def test_outputs_get_normal_permissions(tmp_path):
    vol = Volume(np.ones((2, 2, 2)), np.eye(4))
    out = invivo.save(vol, tmp_path / "x.nii.gz")
    mask = os.umask(0)
    os.umask(mask)
    for p in (out, sidecar_path(out)):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask


def test_utf8_text_is_decoded(tmp_path):
    _pet(tmp_path / "pt")

    def utf8(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SeriesDescription = "Maus Größe µPET"
    _edit(tmp_path / "pt", utf8)
    assert invivo.scan(tmp_path)["description"][0] == "Maus Größe µPET"
    assert invivo.load(tmp_path, series="Maus Größe µPET").meta.series_description == "Maus Größe µPET"


def test_malformed_header_is_listed_by_scan_and_refused_by_load(tmp_path):
    _pet(tmp_path / "pt", origin=(0.5, 0.25, 0.75))
    f = sorted((tmp_path / "pt").iterdir())[1]
    raw = f.read_bytes()
    ds = pydicom.dcmread(f)
    ipp = ds["ImagePositionPatient"]
    old = b"\\".join(str(x).encode() for x in ipp.value)
    assert old in raw
    f.write_bytes(raw.replace(old, old.replace(b".", b",")))
    table = invivo.scan(tmp_path)
    assert len(table) == 1
    with pytest.raises(DicomError, match=f"{f.name}: malformed image header"):
        invivo.load(tmp_path)


def test_gated_nm_is_refused(tmp_path):
    meta = Meta(modality="NM", units="BQML", series_datetime=T0)
    write_dicom(Volume(np.ones((4, 4, 6)), np.eye(4), meta), tmp_path / "nm")
    f = next((tmp_path / "nm").iterdir())
    ds = pydicom.dcmread(f)
    ds.FrameIncrementPointer = [0x00540070, 0x00540080]  # TimeSlotVector \ SliceVector
    ds.TimeSlotVector = [1, 1, 1, 2, 2, 2]
    ds.SliceVector = [1, 2, 3, 1, 2, 3]
    ds.save_as(f)
    with pytest.raises(DicomError, match="TimeSlotVector"):
        invivo.load(tmp_path / "nm")


def test_infinite_value_in_roi_is_refused():
    data = np.ones((3, 3, 3))
    data[1, 1, 1] = np.inf
    with pytest.raises(ParameterError, match="infinite"):
        roi.stats(Volume(data, np.eye(4)), np.ones((3, 3, 3), bool))


def test_failed_convert_leaves_no_output_folder(tmp_path):
    _pet(tmp_path / "pt")
    f = sorted((tmp_path / "pt").iterdir())[0]
    f.write_bytes(f.read_bytes()[:-40])  # truncated pixel data
    out = tmp_path / "nii"
    with pytest.raises(DicomError):
        convert(tmp_path / "pt", out)
    assert not out.exists()


def test_scan_start_back_computed_from_frame_reference_time(tmp_path):
    """SeriesTime after AcquisitionTime and the acquisition not at the scan start (a later bed): the START
    reference is AcquisitionTime + t_avg - FrameReferenceTime (QIBA/IBSI), not the acquisition time."""
    from invivo.isotopes import count_average_time_s

    _pet(tmp_path / "pt")
    t_avg = count_average_time_s(60.0, 6586.2)

    def later_bed(ds):
        ds.SeriesTime = "120000"
        ds.AcquisitionTime = "100500"  # this bed started 5 min into the scan
        ds.FrameReferenceTime = f"{1000.0 * (300.0 + t_avg):.6f}"
    _edit(tmp_path / "pt", later_bed)
    with pytest.warns(InvivoWarning, match="back-computed"):
        vol = invivo.load(tmp_path / "pt")
    assert abs((vol.meta.series_datetime - T0).total_seconds()) < 1e-3
    np.testing.assert_allclose(vol.meta.reference_activity_bq, 10e6 * 2 ** (-600 / 6586.2), rtol=1e-9)
