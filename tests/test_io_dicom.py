"""DICOM ingestion against real external data (dcm2niix reference output) and the bad-input battery."""

import hashlib
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

import invivo
from invivo.errors import DicomError, GeometryError, InvivoWarning, ParameterError

from .conftest import data_path


def _compare_world(vol, ref_path):
    """Data of ``vol`` equal to the reference NIfTI at the same world positions; returns max world error (mm)."""
    ref = nib.load(str(ref_path))
    rd = np.asarray(ref.dataobj).astype(np.float64)
    m = np.linalg.inv(vol.affine) @ ref.affine
    ijk = np.indices(rd.shape[:3]).reshape(3, -1).T
    ours = ijk @ m[:3, :3].T + m[:3, 3]
    idx = np.round(ours).astype(int)
    world_err = np.abs((idx - ours) @ vol.affine[:3, :3].T).max()
    vd = vol.data if vol.data.ndim == 4 else vol.data[..., None]
    got = vd[idx[:, 0], idx[:, 1], idx[:, 2]]
    np.testing.assert_array_equal(got.reshape(-1), rd.reshape(len(idx), -1).reshape(-1))
    return world_err


@pytest.mark.parametrize("echo", [1, 2])
def test_fieldmap_magnitude_matches_dcm2niix(echo):
    vol = invivo.load(data_path("dcm_qa_me", "In", "2_me_FieldMap_GRE"))
    assert vol.shape == (64, 64, 36, 2)
    assert vol.meta.echo_times_s == pytest.approx((0.00519, 0.00765), abs=1e-9)
    err = _compare_world(vol.frame(echo - 1), data_path("dcm_qa_me", "Ref", f"me_FieldMap_GRE_2_e{echo}.nii"))
    assert err < 1e-3


def test_fieldmap_phase_is_its_own_series():
    vol = invivo.load(data_path("dcm_qa_me", "In", "3_me_FieldMap_GRE"))
    assert vol.meta.image_type[2] == "P"
    assert vol.meta.echo_times_s == pytest.approx((0.00765,))
    assert _compare_world(vol, data_path("dcm_qa_me", "Ref", "me_FieldMap_GRE_3_e2_ph.nii")) < 1e-3


@pytest.mark.parametrize("echo", [1, 2])
def test_multiecho_mosaic_timeseries_matches_dcm2niix(echo):
    folder = data_path("dcm_qa_me", "In", "4_me_fMRI")
    with pytest.raises(ParameterError, match="echo=1"):
        invivo.load(folder)
    vol = invivo.load(folder, echo=echo)
    assert vol.shape == (64, 64, 30, 3)
    assert vol.meta.frame_start_s == pytest.approx((0.0, 2.0, 4.0))
    assert _compare_world(vol, data_path("dcm_qa_me", "Ref", f"me_fMRI_4_e{echo}.nii")) < 1e-3


def test_siemens_megre_groups_echoes_and_keeps_phase_apart():
    root = data_path("siemens_megre")
    table = invivo.scan(root)
    assert len(table) == 2
    assert sorted(table["flavour"]) == ["", "P"]
    assert list(table["n_echoes"]) == [3, 3]
    for series in (0, 1):
        vol = invivo.load(root, series=series)
        assert vol.shape == (54, 64, 1, 3)
        assert vol.meta.echo_times_s == pytest.approx((0.004, 0.010, 0.016))
    assert invivo.load(root, series=1).meta.image_type[2] == "P"
    with pytest.raises(ParameterError, match="2 series found"):
        invivo.load(root)


def test_scan_whole_tree_counts_non_dicom():
    table = invivo.scan(data_path())
    assert (table["modality"] == "PT").sum() == 8
    assert (table["modality"] == "RTSTRUCT").sum() == 8
    assert table.attrs["skipped_files"] > 0  # README, LICENSE, NIfTI, JSON, pdf
    pt = table[table["modality"] == "PT"]
    assert set(pt["n_slices"]) == {20}
    assert set(pt["isotope"]) == {"18F", "68Ga"}


def test_dro_geometry_and_per_slice_rescale():
    folder = data_path("ibsi_suv_dro", "DRO_1_0", "PT")
    vol = invivo.load(folder)
    assert vol.shape == (256, 256, 20)
    assert vol.voxel_size_mm == pytest.approx((4.0, 4.0, 4.0))
    for f in sorted(folder.iterdir())[:5]:
        ds = pydicom.dcmread(f)
        k = int(round((float(ds.ImagePositionPatient[2]) - vol.world_coordinates([0, 0, 0])[2]) / 4.0))
        expected = ds.pixel_array.T.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(vol.data[:, :, k], expected)
        # first pixel's world position: LPS -> RAS
        ipp = np.array([float(x) for x in ds.ImagePositionPatient])
        np.testing.assert_allclose(vol.world_coordinates([0, 0, k]), ipp * [-1, -1, 1], atol=1e-9)
    assert vol.meta.units == "BQML" and vol.meta.decay_correction == "START"
    assert vol.meta.tracer.isotope == "18F" and vol.meta.tracer.injected_activity_bq == pytest.approx(368080000.0)
    assert vol.meta.subject.weight_kg == 70.0


def _hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_inputs_never_modified(dro_copy):
    before = _hashes(dro_copy)
    invivo.load(dro_copy)
    invivo.scan(dro_copy)
    assert _hashes(dro_copy) == before


# --------------------------------------------------------------------------- bad input battery
def test_empty_folder(tmp_path):
    with pytest.raises(DicomError, match="no DICOM image series"):
        invivo.load(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(DicomError, match="no such file"):
        invivo.load(tmp_path / "nope")


def test_stray_non_dicom_file_is_skipped_and_counted(dro_copy):
    (dro_copy / "notes.txt").write_text("scanner log")
    (dro_copy / "thumbs.db").write_bytes(b"\x00" * 300)
    vol = invivo.load(dro_copy)
    assert vol.shape == (256, 256, 20)
    assert vol.meta.source["skipped_non_dicom"] == 2
    assert invivo.scan(dro_copy).attrs["skipped_files"] == 2


def test_missing_slice_names_the_gap(dro_copy):
    (dro_copy / "pet_dro_0_0_slice_007.dcm").unlink()
    with pytest.raises(GeometryError, match=r"missing slice: gap of 8 mm .*slice_006.*slice_008"):
        invivo.load(dro_copy)


def test_missing_slice_can_be_resampled(dro_copy):
    (dro_copy / "pet_dro_0_0_slice_007.dcm").unlink()
    full = invivo.load(data_path("ibsi_suv_dro", "DRO_0_0", "PT"))
    with pytest.warns(InvivoWarning, match="linear interpolation"):
        vol = invivo.load(dro_copy, uneven="resample")
    assert vol.shape == full.shape
    np.testing.assert_allclose(vol.affine, full.affine)
    np.testing.assert_array_equal(vol.data[:, :, 6], full.data[:, :, 6])
    np.testing.assert_allclose(vol.data[:, :, 7], 0.5 * (full.data[:, :, 6] + full.data[:, :, 8]))
    assert any("interpolation" in a for a in vol.meta.assumptions)


def test_truncated_pixel_data(dro_copy):
    f = dro_copy / "pet_dro_0_0_slice_003.dcm"
    f.write_bytes(f.read_bytes()[:-5000])
    with pytest.raises(DicomError, match="slice_003"):
        invivo.load(dro_copy)


def test_two_slices_at_one_position_with_different_data(dro_copy):
    ds = pydicom.dcmread(dro_copy / "pet_dro_0_0_slice_005.dcm")
    arr = ds.pixel_array.copy()
    arr[10, 10] += 7
    ds.PixelData = arr.tobytes()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.InstanceNumber = 99
    ds.save_as(dro_copy / "extra.dcm")
    with pytest.raises(DicomError, match="two slices at one position with different data"):
        invivo.load(dro_copy)


def test_exact_duplicate_slice_is_dropped_with_warning(dro_copy):
    shutil.copy(dro_copy / "pet_dro_0_0_slice_005.dcm", dro_copy / "copy_of_5.dcm")
    with pytest.warns(InvivoWarning, match="duplicate slice"):
        vol = invivo.load(dro_copy)
    assert vol.shape == (256, 256, 20)


def test_mixed_orientations(dro_copy):
    f = dro_copy / "pet_dro_0_0_slice_004.dcm"
    ds = pydicom.dcmread(f)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(f)
    with pytest.raises(GeometryError, match="mixed orientations.*slice_004"):
        invivo.load(dro_copy)


def test_gantry_tilt_detected_and_kept_on_request(dro_copy):
    shift = np.tan(np.radians(10.0))
    for f in sorted(dro_copy.iterdir()):
        ds = pydicom.dcmread(f)
        z = float(ds.ImagePositionPatient[2])
        ds.ImagePositionPatient = [0.0, z * shift, z]
        ds.GantryDetectorTilt = 10.0
        ds.save_as(f)
    with pytest.raises(GeometryError, match="gantry tilt.*allow_tilt=True"):
        invivo.load(dro_copy)
    vol = invivo.load(dro_copy, allow_tilt=True)
    for f in sorted(dro_copy.iterdir())[:3]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        z = float(ds.ImagePositionPatient[2])
        k = int(round(z / 4.0))
        np.testing.assert_allclose(vol.world_coordinates([0, 0, k]), [0.0, -z * shift, z], atol=1e-6)


def test_missing_geometry_tag(dro_copy):
    f = dro_copy / "pet_dro_0_0_slice_002.dcm"
    ds = pydicom.dcmread(f)
    del ds.ImagePositionPatient
    ds.save_as(f)
    with pytest.raises(DicomError, match=r"slice_002.*ImagePositionPatient"):
        invivo.load(dro_copy)


def test_unknown_series_selector():
    with pytest.raises(ParameterError, match="series='nope' matches 0 series"):
        invivo.load(data_path("siemens_megre"), series="nope")


def test_fast_reader_groups_files_by_content(dro_copy):
    """The QIBA factors are computed once per distinct header content, not once per file."""
    from invivo.io._fastdcm import read_fast

    a, b = (read_fast(p) for p in sorted(dro_copy.iterdir())[:2])
    assert a is not None and a.values["SOPInstanceUID"] != b.values["SOPInstanceUID"]
    assert a.content_key() == b.content_key()
    assert a.values["ImagePositionPatient"] != b.values["ImagePositionPatient"]


def test_fast_reader_agrees_with_pydicom():
    from invivo.io._fastdcm import FAST_KEYWORDS, read_fast

    for f in [data_path("dcm_qa_me", "In", "4_me_fMRI", "0001.dcm"), data_path("siemens_megre", "phase", "00001.dcm"),
              *sorted(data_path("ibsi_suv_dro", "DRO_2_4", "PT").iterdir())[:2]]:
        fast, ref = read_fast(f), pydicom.dcmread(f)
        assert fast is not None
        for kw in FAST_KEYWORDS:
            v, r = fast.get(kw), ref.get(kw)
            if r is None or r == "":
                assert v is None, kw
            elif isinstance(v, list):
                assert [type(x)(y) for x, y in zip(v, r)] == v, kw
            else:
                assert v == type(v)(r), kw
        np.testing.assert_array_equal(fast.pixels(), ref.pixel_array)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless"])
def test_compressed_series_load_identically(syntax, tmp_path):
    uid = getattr(pydicom.uid, syntax)
    if syntax != "RLELossless":
        pytest.importorskip("openjpeg", reason="JPEG 2000 needs pylibjpeg-openjpeg (invivo[codecs])")
    src = data_path("ibsi_suv_dro", "DRO_1_0", "PT")
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ds.compress(uid)
        ds.save_as(tmp_path / f.name)
    vol, ref = invivo.load(tmp_path), invivo.load(src)
    np.testing.assert_array_equal(vol.data, ref.data)
    np.testing.assert_array_equal(vol.meta.suv_bw_factor, ref.meta.suv_bw_factor)
