"""Tests of invivo.synth: the mouse phantom and its renderers against their analytic
truth, the DICOM writer against the DICOM rules and against independent readers
(a minimal pydicom decoder written here, dcm2niix when installed, and invivo.load)."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID
from scipy.integrate import quad
from scipy.spatial.transform import Rotation

from invivo import Meta, Subject, Tracer, Volume
from invivo.backend import has_gpu, to_device
from invivo.errors import GeometryError, InvivoWarning, OutputExistsError, ParameterError
from invivo.isotopes import lookup
from invivo.synth import Phantom, mouse_phantom, render_ct, render_mr, render_pet, write_dicom
from invivo.synth.phantom import DEFAULT_INJECTION_DATETIME
from invivo.volume import LPS_TO_RAS

ZR89 = lookup("89Zr").half_life_s
F18 = lookup("18F").half_life_s
INJ = datetime(2024, 3, 4, 9, 30, 0)
ORGANS = ("body", "lungs", "heart", "liver", "spleen", "kidneys", "bladder", "bone", "tumour_rim", "tumour_core")


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return mouse_phantom()


@pytest.fixture(scope="module")
def small_phantom() -> Phantom:
    return mouse_phantom(voxel_size_mm=1.0)


def oblique_affine(voxel=(0.4, 0.55, 0.8), angles=(20.0, -35.0, 50.0), origin=(-12.3, 40.1, 7.7)) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(voxel)
    aff[:3, 3] = origin
    return aff


# =============================================================================== phantom
def test_phantom_grid_is_centred_on_the_body(phantom):
    lab = phantom.labels
    assert lab.shape == (60, 48, 180)
    assert lab.data.dtype == np.int16
    assert lab.voxel_size_mm == (0.5, 0.5, 0.5)
    assert lab.orientation == "RAS"
    centre = lab.world_coordinates((np.array(lab.shape) - 1) / 2.0)
    np.testing.assert_allclose(centre, 0.0, atol=1e-12)
    assert set(phantom.names.values()) == set(ORGANS)
    assert set(np.unique(lab.data)) == {0, *phantom.names}


@pytest.mark.parametrize("voxel, tol", [(0.5, 0.06), (0.25, 0.02)])
def test_organ_volumes_match_the_analytic_ellipsoids(voxel, tol):
    ph = mouse_phantom(voxel_size_mm=voxel)
    for name, analytic in ph.analytic_volumes_ml.items():
        assert ph.volume_ml(name) == pytest.approx(analytic, rel=tol), name
    # every organ is non-empty and the body ellipsoid matches its analytic volume
    body = ph.shapes["body"][0]
    aff = ph.labels.affine
    ijk = np.indices(ph.labels.shape).reshape(3, -1).T
    xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
    inside = body.contains(xyz[:, 0], xyz[:, 1], xyz[:, 2])
    assert inside.sum() * ph.labels.voxel_volume_ml == pytest.approx(body.volume_ml, rel=0.01)
    # a 24 x 21 x 88 mm mouse of ~23 mL
    assert 20.0 < body.volume_ml < 26.0


def test_organs_are_disjoint_and_inside_the_body(phantom):
    # painted in order, an overlap would make some organ smaller than its ellipsoids at 0.5 mm
    aff = phantom.labels.affine
    ijk = np.indices(phantom.labels.shape).reshape(3, -1).T
    xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
    body = phantom.shapes["body"][0].contains(*xyz.T)
    counts = np.zeros(len(xyz), int)
    for name, ells in phantom.shapes.items():
        if name in ("body", "tumour_core"):
            continue
        for e in ells:
            inside = e.contains(*xyz.T)
            counts += inside
            if name != "tumour_rim":
                assert not np.any(inside & ~body), f"{name} pokes out of the body"
    assert counts.max() == 1
    # the subcutaneous tumour bulges out of the right flank (+x in RAS)
    tum = phantom.mask("tumour").data.reshape(-1)
    assert np.any(tum & ~body) and np.any(tum & body)
    assert xyz[tum, 0].mean() > 8.0
    masks = phantom.masks()
    np.testing.assert_array_equal(masks["tumour"].data, masks["tumour_rim"].data | masks["tumour_core"].data)
    np.testing.assert_array_equal(masks["whole_body"].data, phantom.labels.data > 0)
    assert not np.any(masks["tumour_rim"].data & masks["tumour_core"].data)


def test_phantom_rejects_bad_input(phantom):
    with pytest.raises(ParameterError, match="voxel_size_mm"):
        mouse_phantom(voxel_size_mm=0)
    with pytest.raises(ParameterError, match="livr"):
        render_pet(phantom, percent_id_per_g={"livr": 1.0}, injected_activity_bq=1e6, scan_delay_s=0)
    with pytest.raises(ParameterError, match="milliseconds"):
        render_mr(phantom, echo_times_s=(2.0, 4.0))
    with pytest.raises(ParameterError, match="weight_kg"):
        render_pet(phantom, percent_id_per_g={}, injected_activity_bq=1e6, scan_delay_s=0, weight_kg=25.0)
    with pytest.raises(ParameterError, match="decay_correction"):
        render_pet(phantom, percent_id_per_g={}, injected_activity_bq=1e6, scan_delay_s=0, decay_correction="END")


# =============================================================================== PET
PID = {"body": 1.5, "lungs": 4.0, "heart": 6.0, "liver": 18.0, "spleen": 25.0, "kidneys": 7.0, "bladder": 3.0,
       "bone": 9.0, "tumour_rim": 12.0, "tumour_core": 2.0}


def test_pet_concentration_equals_the_formula_in_every_organ(phantom):
    a_inj, delay = 3.7e6, 3 * 86400.0 + 1234.5
    pet, truth = render_pet(phantom, percent_id_per_g=PID, injected_activity_bq=a_inj, isotope="Zr-89",
                            injection_datetime=INJ, scan_delay_s=delay, weight_kg=0.023)
    a_ref = a_inj * 2.0 ** (-delay / ZR89)  # START: the injected activity decayed to the scan start
    assert truth["reference_activity_bq"] == pytest.approx(a_ref, rel=1e-12)
    for name, pid in PID.items():
        expected = pid / 100.0 * a_ref * 1.0  # Bq/mL, 1 g = 1 mL
        vals = pet.data[phantom.mask(name).data]
        np.testing.assert_allclose(vals, expected, rtol=1e-9, atol=0)
        assert truth["bq_per_ml"][name] == pytest.approx(expected, rel=1e-12)
        assert truth["percent_id_per_g"][name] == pid
        assert truth["suv_bw"][name] == pytest.approx(pid / 100.0 * 23.0, rel=1e-12)
    assert np.all(pet.data[phantom.labels.data == 0] == 0)
    m = pet.meta
    assert (m.modality, m.units, m.decay_correction) == ("PT", "BQML", "START")
    assert m.series_datetime == INJ + timedelta(seconds=delay)
    assert (m.tracer.isotope, m.tracer.injected_activity_bq, m.tracer.injection_datetime) == ("89Zr", a_inj, INJ)
    assert m.tracer.half_life_s == ZR89
    assert (m.subject.species, m.subject.weight_kg) == ("mouse", 0.023)
    assert m.frame_start_s == (0.0,) and m.frame_duration_s == (600.0,)
    k = phantom.labels.shape[2]
    np.testing.assert_allclose(m.reference_activity_bq, np.full((k, 1), a_ref), rtol=1e-12)
    np.testing.assert_allclose(m.suv_bw_factor, np.full((k, 1), 23.0 / a_ref), rtol=1e-12)
    # SUV from the image with the metadata factor equals the truth
    liver = pet.data[phantom.mask("liver").data] * m.suv_bw_factor[0, 0]
    np.testing.assert_allclose(liver, truth["suv_bw"]["liver"], rtol=1e-9)


def test_pet_decay_reference_start_admin_none(small_phantom):
    a_inj, delay, dur = 5e6, 2 * 86400.0, 1800.0
    lam = math.log(2) / ZR89
    kw = dict(percent_id_per_g={"liver": 10.0}, injected_activity_bq=a_inj, scan_delay_s=delay,
              frame_durations_s=(dur,))
    start, t_start = render_pet(small_phantom, decay_correction="START", **kw)
    admin, t_admin = render_pet(small_phantom, decay_correction="ADMIN", **kw)
    none, t_none = render_pet(small_phantom, decay_correction="NONE", **kw)
    liver = small_phantom.mask("liver").data
    # ADMIN: decay corrected to the injection -> the injected activity itself is the reference
    np.testing.assert_allclose(admin.data[liver], 0.1 * a_inj, rtol=1e-12)
    np.testing.assert_allclose(admin.data[liver] / start.data[liver], 2.0 ** (delay / ZR89), rtol=1e-12)
    assert t_admin["decay_reference_datetime"] == DEFAULT_INJECTION_DATETIME
    assert t_start["decay_reference_datetime"] == start.meta.series_datetime
    # NONE: the mean physical concentration during the frame, integrated independently
    phys, _ = quad(lambda t: 0.1 * a_inj * math.exp(-lam * t), delay, delay + dur)
    np.testing.assert_allclose(none.data[liver], phys / dur, rtol=1e-10)
    # SUV is the same for START and ADMIN (10 %ID/g x 25 g / 100)
    assert t_start["suv_bw"]["liver"] == pytest.approx(2.5, rel=1e-12)
    assert t_admin["suv_bw"]["liver"] == pytest.approx(2.5, rel=1e-12)
    # NONE (QIBA): dose decayed to the frame start -> lower by the in-frame decay
    assert t_none["suv_bw"]["liver"] == pytest.approx(2.5 * (1 - math.exp(-lam * dur)) / (lam * dur), rel=1e-12)


def test_pet_dynamic_time_activity_function(small_phantom):
    # 18F so that decay within frames matters; tumour uptake rises linearly, liver washes out
    starts = (0.0, 60.0, 120.0, 300.0, 900.0)
    durs = (60.0, 60.0, 180.0, 600.0, 1800.0)
    lam = math.log(2) / F18
    tum = lambda t: 2.0 + 3.0 * np.asarray(t) / 3600.0  # noqa: E731
    liv = lambda t: 30.0 * np.exp(-np.asarray(t) / 1200.0)  # noqa: E731
    pet, truth = render_pet(small_phantom, percent_id_per_g={"tumour": tum, "liver": liv, "body": 1.0},
                            injected_activity_bq=1e7, isotope="18F", scan_delay_s=120.0,
                            frame_starts_s=starts, frame_durations_s=durs)
    assert pet.shape == small_phantom.labels.shape + (5,)
    a_ref = 1e7 * math.exp(-lam * 120.0)
    for name, f in (("tumour_rim", tum), ("liver", liv)):
        for i, (s, d) in enumerate(zip(starts, durs)):
            t0 = 120.0 + s
            num, _ = quad(lambda t: float(f(t)) * math.exp(-lam * t), t0, t0 + d)
            den, _ = quad(lambda t: math.exp(-lam * t), t0, t0 + d)
            pid = num / den  # the decay-weighted mean %ID/g in the frame
            assert truth["percent_id_per_g"][name][i] == pytest.approx(pid, rel=1e-10)
            vals = pet.data[..., i][small_phantom.mask(name).data]
            np.testing.assert_allclose(vals, pid / 100 * a_ref, rtol=1e-10)
    # constant uptake stays exactly the formula in every frame
    np.testing.assert_allclose(truth["bq_per_ml"]["body"], 0.01 * a_ref, rtol=1e-12)
    assert pet.meta.frame_start_s == starts and pet.meta.frame_duration_s == durs


def test_pet_noise_is_relative_and_seeded(phantom):
    kw = dict(percent_id_per_g={"liver": 20.0}, injected_activity_bq=3.7e6, scan_delay_s=86400.0, noise=0.2)
    a, truth = render_pet(phantom, seed=3, **kw)
    b, _ = render_pet(phantom, seed=3, **kw)
    np.testing.assert_array_equal(a.data, b.data)
    liver = a.data[phantom.mask("liver").data]
    c = truth["bq_per_ml"]["liver"]
    n = liver.size  # ~5000 voxels: sd of the mean 0.2/sqrt(n) ~ 0.3 %
    assert liver.mean() == pytest.approx(c, rel=4 * 0.2 / math.sqrt(n))
    assert liver.std() / c == pytest.approx(0.2, rel=0.05)
    np.testing.assert_allclose(truth["noise_free"][phantom.mask("liver").data], c, rtol=1e-12)


# =============================================================================== MR and CT
def test_mr_signal_is_monoexponential_and_recovers_r2star(phantom):
    tes = (0.002, 0.0045, 0.007, 0.0095, 0.012)
    mr, truth = render_mr(phantom, echo_times_s=tes, r2star_per_s={"liver": 250.0}, s0={"liver": 640.0})
    assert mr.shape == phantom.labels.shape + (5,)
    assert mr.meta.echo_times_s == tes and mr.meta.magnetic_field_t == 7.0 and mr.meta.modality == "MR"
    for name in ORGANS:
        sig = mr.data[phantom.mask(name).data]
        s0, r2 = truth["s0"][name], truth["r2star_per_s"][name]
        np.testing.assert_allclose(sig, np.broadcast_to(s0 * np.exp(-r2 * np.asarray(tes)), sig.shape), rtol=1e-12)
        slope, icpt = np.polyfit(tes, np.log(sig[0]), 1)
        assert -slope == pytest.approx(r2, rel=1e-9)
        assert math.exp(icpt) == pytest.approx(s0, rel=1e-9)
    assert truth["r2star_per_s"]["liver"] == 250.0 and truth["s0"]["liver"] == 640.0
    assert np.all(mr.data[phantom.labels.data == 0] == 0)


def test_mr_rician_noise_floor(phantom):
    sigma = 12.0
    mr, truth = render_mr(phantom, noise_sigma=sigma, seed=1)
    air = mr.data[phantom.labels.data == 0]
    # Rayleigh background: mean sigma sqrt(pi/2), second moment 2 sigma^2
    assert air.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.01)
    assert np.mean(air**2) == pytest.approx(2 * sigma**2, rel=0.01)
    # high-SNR organ: mean ~ sqrt(S^2 + sigma^2)
    s = truth["noise_free"][phantom.mask("kidneys").data][:, 0]
    got = mr.data[phantom.mask("kidneys").data][:, 0]
    assert got.mean() == pytest.approx(np.sqrt(s**2 + sigma**2).mean(), rel=0.01)


def test_ct_hounsfield_units(phantom):
    ct, truth = render_ct(phantom, hu={"tumour": 55.0})
    assert ct.meta.units == "HU" and ct.meta.modality == "CT"
    assert np.all(ct.data[phantom.labels.data == 0] == -1000.0)
    for name in ORGANS:
        assert np.all(ct.data[phantom.mask(name).data] == truth["hu"][name])
    assert truth["hu"]["tumour_core"] == 55.0 and truth["hu"]["bone"] == 700.0


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="needs CuPy and a CUDA device")
def test_gpu_phantom_and_renders_match_cpu():
    cpu, gpu = mouse_phantom(voxel_size_mm=1.0), mouse_phantom(voxel_size_mm=1.0, device="gpu")
    assert gpu.labels.device == "gpu"
    np.testing.assert_array_equal(to_device(gpu.labels.data, "cpu"), cpu.labels.data)
    kw = dict(percent_id_per_g=PID, injected_activity_bq=3.7e6, scan_delay_s=86400.0)
    for fn, args in ((render_pet, kw), (render_mr, {}), (render_ct, {})):
        a, _ = fn(cpu, **args)
        b, _ = fn(gpu, **args)
        assert b.device == "gpu" and b.data.dtype == a.data.dtype
        np.testing.assert_allclose(b.numpy(), a.data, rtol=1e-12)
    noisy, _ = render_mr(gpu, noise_sigma=5.0)
    assert noisy.device == "gpu"


# =============================================================================== DICOM helpers
def read_series(paths):
    return [pydicom.dcmread(p) for p in paths]


def decode(paths) -> tuple[np.ndarray, np.ndarray]:
    """A minimal independent reader of classic single-frame series: (data, RAS affine).

    Groups by echo / frame time, sorts each group along the slice normal, applies
    each file's rescale in float64.
    """
    dss = read_series(paths)
    iop = np.array(dss[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    groups: dict = {}
    for ds in dss:
        key = (float(ds.get("EchoTime", 0) or 0), float(ds.get("FrameReferenceTime", 0) or 0))
        groups.setdefault(key, []).append(ds)
    vols = []
    for key in sorted(groups):
        g = sorted(groups[key], key=lambda d: np.dot(np.array(d.ImagePositionPatient, float), normal))
        sl = [d.pixel_array.astype(np.float64).T * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))
              for d in g]
        vols.append(np.stack(sl, axis=2))
        first, last = np.array(g[0].ImagePositionPatient, float), np.array(g[-1].ImagePositionPatient, float)
    dr, dc = (float(x) for x in dss[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row * dc, col * dr
    lps[:3, 2] = (last - first) / (len(g) - 1)
    lps[:3, 3] = first
    data = vols[0] if len(vols) == 1 else np.stack(vols, axis=3)
    return data, LPS_TO_RAS @ lps


def pet_volume(shape=(12, 10, 8, 3), affine=None, *, seed=0, decay="START") -> Volume:
    rng = np.random.default_rng(seed)
    data = rng.gamma(2.0, 5000.0, size=shape)
    data[0, 0, :] = 0.0  # a zero corner
    data[:, :, 1] = 0.0  # an empty slice: slope 1
    t = shape[3] if len(shape) == 4 else 1
    starts = tuple(float(x) for x in np.arange(t) * 120.0)
    meta = Meta(
        modality="PT", units="BQML", decay_correction=decay,
        frame_start_s=starts, frame_duration_s=(120.0,) * t,
        series_datetime=INJ + timedelta(hours=2, seconds=0.25),
        tracer=Tracer(radiopharmaceutical="89Zr-anti-PD-L1", isotope="89Zr", half_life_s=ZR89,
                      injected_activity_bq=4.1e6, injection_datetime=INJ),
        subject=Subject(weight_kg=0.0241, height_m=0.095, sex="F", species="mouse", strain="BALB/c"),
    )
    return Volume(data, np.diag([0.4, 0.4, 0.8, 1.0]) if affine is None else affine, meta)


# =============================================================================== DICOM validity
def test_pet_dicom_is_valid_and_carries_the_metadata(tmp_path):
    vol = pet_volume()
    paths, stored = write_dicom(vol, tmp_path / "pet", patient_id="M7", return_stored=True)
    assert len(paths) == 8 * 3 and all(p.parent == tmp_path / "pet" for p in paths)
    assert sorted(x.name for x in (tmp_path / "pet").iterdir()) == sorted(p.name for p in paths)  # no temp files
    dss = read_series(paths)
    for p, ds in zip(paths, dss):
        assert p.read_bytes()[128:132] == b"DICM"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == pydicom.uid.PositronEmissionTomographyImageStorage
        for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID):
            assert UID(uid).is_valid
        assert (ds.PatientID, str(ds.PatientName), ds.Modality, ds.Units) == ("M7", "M7", "PT", "BQML")
        assert ds.DecayCorrection == "START" and "DECY" in ds.CorrectedImage
        assert list(ds.SeriesType) == ["DYNAMIC", "IMAGE"]
        assert (ds.NumberOfSlices, ds.NumberOfTimeSlices) == (8, 3)
        assert (float(ds.PatientWeight), float(ds.PatientSize), ds.PatientSex) == (0.0241, 0.095, "F")
        assert ds.PatientSpeciesDescription == "mouse"
        assert ds.pixel_array.dtype == np.int16 and ds.pixel_array.shape == (10, 12)  # rows = j, columns = i
        rp = ds.RadiopharmaceuticalInformationSequence[0]
        assert float(rp.RadionuclideTotalDose) == 4.1e6 and float(rp.RadionuclideHalfLife) == ZR89
        assert rp.RadiopharmaceuticalStartDateTime == "20240304093000" and rp.RadiopharmaceuticalStartTime == "093000"
        assert rp.RadionuclideCodeSequence[0].CodeMeaning == "^89^Zirconium"
        assert rp.Radiopharmaceutical == "89Zr-anti-PD-L1"
        # frame timing: AcquisitionTime = series start + frame start; FrameReferenceTime (ms) = frame start +
        # the time of the frame's mean count rate, ln(x / (1 - e^-x)) / lambda with x = lambda D (just before D/2)
        frame = int(ds.ImageIndex - 1) // 8
        assert ds.SeriesTime == "113000.250000"
        acq = datetime.strptime(ds.AcquisitionDate + ds.AcquisitionTime, "%Y%m%d%H%M%S.%f")
        assert acq == INJ + timedelta(hours=2, seconds=0.25 + 120.0 * frame)
        lam_zr = math.log(2) / ZR89
        t_avg = math.log(lam_zr * 120.0 / -math.expm1(-lam_zr * 120.0)) / lam_zr
        assert float(ds.FrameReferenceTime) == pytest.approx(120000.0 * frame + 1000.0 * t_avg, abs=1e-6)
        assert 59998.0 < 1000.0 * t_avg < 60000.0
        assert int(ds.ActualFrameDuration) == 120000
        lam = math.log(2) / ZR89
        assert float(ds.DecayFactor) == pytest.approx(math.exp(lam * 120 * frame) * lam * 120 / -math.expm1(-lam * 120),
                                                      rel=1e-12)
    assert len({ds.SOPInstanceUID for ds in dss}) == len(dss)
    assert len({ds.SeriesInstanceUID for ds in dss}) == 1 and dss[0].SeriesInstanceUID == stored.meta.series_uid
    assert len({ds.InstanceNumber for ds in dss}) == len(dss)
    # one RescaleSlope per slice and frame; the empty slice has slope 1
    slopes = {float(ds.RescaleSlope) for ds in dss}
    assert len(slopes) > 20 and 1.0 in slopes
    for ds in dss:
        assert np.abs(ds.pixel_array).max() in (0, 32767)  # the slope uses the whole int16 range


def test_pet_pixels_and_geometry_decode_independently(tmp_path):
    aff = oblique_affine()
    vol = pet_volume(affine=aff)
    paths, stored = write_dicom(vol, tmp_path / "pet", return_stored=True)
    data, ras = decode(paths)
    np.testing.assert_allclose(ras, aff, atol=1e-9)
    np.testing.assert_allclose(stored.affine, aff, atol=1e-12)
    np.testing.assert_allclose(data, stored.data, rtol=1e-12, atol=0)
    # quantisation error is at most half a step of the slice's slope
    slope = np.abs(vol.data).max(axis=(0, 1)) / 32767
    assert np.all(np.abs(stored.data - vol.data) <= 0.5 * slope[None, None] * (1 + 1e-9))
    rel = np.abs(stored.data - vol.data).max() / np.abs(vol.data).max()
    assert 0 < rel < 2e-5


def test_instance_numbers_and_files_are_not_in_spatial_order(tmp_path):
    vol = pet_volume(shape=(6, 5, 10))
    paths = write_dicom(vol, tmp_path / "pet")
    dss = read_series(paths)
    z = [float(ds.SliceLocation) for ds in dss]
    by_instance = [z[i] for i in np.argsort([ds.InstanceNumber for ds in dss])]
    assert by_instance != sorted(by_instance) and by_instance != sorted(by_instance, reverse=True)
    assert z != sorted(z) and z != sorted(z, reverse=True)  # file (write) order
    assert sorted(ds.ImageIndex for ds in dss) == list(range(1, 11))
    # ImageIndex follows the position
    assert [ds.ImageIndex for ds in sorted(dss, key=lambda d: float(d.SliceLocation))] == list(range(1, 11))


def test_multi_echo_mr_series(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(0, 4000, size=(9, 7, 5, 4)).astype(float)
    vol = Volume(data, oblique_affine(), Meta(modality="MR", echo_times_s=(0.0021, 0.0042, 0.0063, 0.0084),
                                              magnetic_field_t=9.4))
    paths, stored = write_dicom(vol, tmp_path / "mr", return_stored=True, repetition_time_s=0.03, flip_angle_deg=15)
    dss = read_series(paths)
    assert len(dss) == 20
    for ds in dss:
        assert ds.SOPClassUID == pydicom.uid.MRImageStorage
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "M", "ND"]
        assert float(ds.MagneticFieldStrength) == 9.4 and float(ds.RepetitionTime) == 30.0 and float(ds.FlipAngle) == 15
        assert float(ds.EchoTime) == [2.1, 4.2, 6.3, 8.4][ds.EchoNumbers - 1]
        assert ds.pixel_array.dtype == np.uint16
        assert "RescaleSlope" not in ds
    # instance numbers repeat per echo (1..K for each echo), not in spatial order
    for e in range(1, 5):
        inst = sorted(ds.InstanceNumber for ds in dss if ds.EchoNumbers == e)
        assert inst == [1, 2, 3, 4, 5]
    got, ras = decode(paths)
    np.testing.assert_array_equal(got, data)  # integer data are stored unchanged
    np.testing.assert_array_equal(stored.data, data)
    np.testing.assert_allclose(ras, vol.affine, atol=1e-9)
    np.testing.assert_allclose(stored.meta.echo_times_s, (0.0021, 0.0042, 0.0063, 0.0084), rtol=1e-15)


def test_mr_float_data_are_scaled_to_the_uint16_range(tmp_path):
    data = np.linspace(0.0, 1.7, 4 * 3 * 2).reshape(4, 3, 2)
    vol = Volume(data, np.eye(4), Meta(modality="MR"))
    paths, stored = write_dicom(vol, tmp_path / "mr", return_stored=True)
    got, _ = decode(paths)
    np.testing.assert_array_equal(got, stored.data)
    assert stored.data.max() == 65535
    np.testing.assert_allclose(stored.data, np.rint(data * 65535 / 1.7))


def test_mr_phase_images(tmp_path):
    data = np.linspace(-math.pi, math.pi, 5 * 4 * 3).reshape(5, 4, 3)
    vol = Volume(data, np.eye(4), Meta(modality="MR", echo_times_s=(0.005,)))
    paths, stored = write_dicom(vol, tmp_path / "ph", phase=True, return_stored=True)
    ds = pydicom.dcmread(paths[0])
    assert ds.ImageType[2] == "P" and float(ds.RescaleSlope) == 2 and float(ds.RescaleIntercept) == -4096
    got, _ = decode(paths)
    np.testing.assert_array_equal(got, stored.data)
    assert stored.data.min() == -4096 and stored.data.max() == 4094
    np.testing.assert_allclose((stored.data + 4096) / 8190 * 2 * math.pi - math.pi, data, atol=2 * math.pi / 4095)


def test_enhanced_mr_is_one_multiframe_file(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.random((8, 6, 5, 3)) * 900.0
    vol = Volume(data, oblique_affine(), Meta(modality="MR", echo_times_s=(0.003, 0.006, 0.009)))
    paths, stored = write_dicom(vol, tmp_path / "emr", enhanced=True, return_stored=True)
    assert len(paths) == 1
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == pydicom.uid.EnhancedMRImageStorage
    assert int(ds.NumberOfFrames) == 15 and ds.pixel_array.shape == (15, 6, 8)
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(x) for x in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.55, 0.4]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    lps = LPS_TO_RAS @ vol.affine
    np.testing.assert_allclose(iop, np.r_[lps[:3, 0] / 0.4, lps[:3, 1] / 0.55], atol=1e-13)
    pf = ds.PerFrameFunctionalGroupsSequence
    order = [(fg.FrameContentSequence[0].InStackPositionNumber, fg.MREchoSequence[0].EffectiveEchoTime) for fg in pf]
    assert order != sorted(order)  # frames shuffled
    assert sorted(order) == [(k, te) for k in range(1, 6) for te in (3.0, 6.0, 9.0)]
    pix = ds.pixel_array
    for f, fg in enumerate(pf):
        k = fg.FrameContentSequence[0].InStackPositionNumber - 1
        e = [3.0, 6.0, 9.0].index(fg.MREchoSequence[0].EffectiveEchoTime)
        pv = fg.PixelValueTransformationSequence[0]
        np.testing.assert_allclose(pix[f].T * float(pv.RescaleSlope) + float(pv.RescaleIntercept),
                                   stored.data[:, :, k, e], rtol=1e-12)
        ipp = np.array(fg.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(ipp, (lps @ [0, 0, k, 1])[:3], atol=1e-9)
    # float data keep their physical scale through the rescale
    assert np.abs(stored.data - data).max() <= 0.5 * data.max() / 65535 * (1 + 1e-9)


def test_ct_series(tmp_path):
    data = np.round(np.random.default_rng(0).normal(0, 400, (7, 6, 4)))
    data[0, 0, 0] = -1024.0
    vol = Volume(data, np.diag([0.1, 0.1, 0.1, 1.0]), Meta(modality="CT"))
    paths, stored = write_dicom(vol, tmp_path / "ct", return_stored=True)
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert (float(ds.RescaleIntercept), float(ds.RescaleSlope), ds.pixel_array.dtype) == (-1024.0, 1.0, np.int16)
    got, _ = decode(paths)
    np.testing.assert_array_equal(got, data)
    np.testing.assert_array_equal(stored.data, data)


def test_nm_spect_is_one_multiframe_file(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.random((10, 9, 7)) * 2.5e5
    aff = oblique_affine(voxel=(0.6, 0.6, 0.6))
    meta = Meta(modality="NM", units="BQML",
                tracer=Tracer(isotope="111In", injected_activity_bq=2e7, injection_datetime=INJ))
    paths, stored = write_dicom(Volume(data, aff, meta), tmp_path / "nm", return_stored=True)
    assert len(paths) == 1
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == pydicom.uid.NuclearMedicineImageStorage
    assert int(ds.NumberOfFrames) == 7 and ds.NumberOfSlices == 7 and list(ds.SliceVector) == list(range(1, 8))
    assert ds.FrameIncrementPointer == pydicom.tag.Tag("SliceVector")
    assert ds.Units == "BQML" and list(ds.ImageType)[2:] == ["RECON TOMO", "EMISSION"]
    assert ds.RadiopharmaceuticalInformationSequence[0].RadionuclideCodeSequence[0].CodeMeaning == "^111^Indium"
    det = ds.DetectorInformationSequence[0]
    lps = LPS_TO_RAS @ aff
    np.testing.assert_allclose(np.array(det.ImagePositionPatient, float), lps[:3, 3], atol=1e-9)
    np.testing.assert_allclose(np.array(det.ImageOrientationPatient, float), np.r_[lps[:3, 0], lps[:3, 1]] / 0.6,
                               atol=1e-13)
    assert float(ds.SpacingBetweenSlices) == pytest.approx(0.6, abs=1e-12)
    slope = float(ds.RescaleSlope)
    assert ds.pixel_array.dtype == np.uint16 and ds.pixel_array.max() == 65535
    np.testing.assert_allclose(np.transpose(ds.pixel_array, (2, 1, 0)) * slope, stored.data, rtol=1e-12)
    assert np.abs(stored.data - data).max() <= 0.5 * slope * (1 + 1e-9)


def test_series_of_one_study_share_uids(tmp_path):
    study, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ph = mouse_phantom(voxel_size_mm=1.0, shape=(30, 24, 12))
    ct, _ = render_ct(ph)
    mr, _ = render_mr(ph, echo_times_s=(0.002, 0.004))
    p1 = write_dicom(ct, tmp_path / "ct", study_uid=study, frame_of_reference_uid=frame, series_number=1)
    p2 = write_dicom(mr, tmp_path / "mr", study_uid=study, frame_of_reference_uid=frame, series_number=2)
    a, b = pydicom.dcmread(p1[0]), pydicom.dcmread(p2[0])
    assert a.StudyInstanceUID == b.StudyInstanceUID == study
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID == frame
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert (a.SeriesNumber, b.SeriesNumber) == (1, 2)


def test_reversed_slice_axis_is_stored_along_the_normal(tmp_path):
    aff = np.diag([0.5, 0.5, -1.0, 1.0])  # k runs towards inferior: against row x column
    aff[:3, 3] = [1.0, 2.0, 3.0]
    data = np.random.default_rng(0).integers(0, 100, (4, 3, 5)).astype(float)
    paths, stored = write_dicom(Volume(data, aff, Meta(modality="CT")), tmp_path / "ct", return_stored=True)
    np.testing.assert_array_equal(stored.data, data[:, :, ::-1])
    # every voxel keeps its world position
    ijk = np.indices(data.shape).reshape(3, -1).T
    w_in = ijk @ aff[:3, :3].T + aff[:3, 3]
    flipped = ijk.copy()
    flipped[:, 2] = 4 - flipped[:, 2]
    w_st = flipped @ stored.affine[:3, :3].T + stored.affine[:3, 3]
    np.testing.assert_allclose(w_st, w_in, atol=1e-12)
    got, ras = decode(paths)
    np.testing.assert_allclose(ras, stored.affine, atol=1e-12)
    np.testing.assert_array_equal(got, stored.data)


def test_write_refuses_to_overwrite(tmp_path):
    vol = pet_volume(shape=(4, 4, 3))
    write_dicom(vol, tmp_path / "s")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_dicom(vol, tmp_path / "s")
    paths = write_dicom(vol, tmp_path / "s", overwrite=True)
    assert len(list((tmp_path / "s").iterdir())) == len(paths) == 3
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputExistsError):
        write_dicom(vol, tmp_path / "f")


def test_write_rejects_what_dicom_cannot_hold(tmp_path):
    shear = np.eye(4)
    shear[0, 1] = 0.5  # i and j not orthogonal
    with pytest.raises(GeometryError, match="orthogonal"):
        write_dicom(Volume(np.zeros((3, 3, 3)), shear, Meta(modality="CT")), tmp_path / "a")
    tilt = np.eye(4)
    tilt[1, 2] = 0.3  # slices sheared along j: fine for CT, impossible for NM
    write_dicom(Volume(np.zeros((3, 3, 3)), tilt, Meta(modality="CT")), tmp_path / "b")
    with pytest.raises(GeometryError, match="sheared"):
        write_dicom(Volume(np.ones((3, 3, 3)), tilt, Meta(modality="NM")), tmp_path / "c")
    with pytest.raises(ParameterError, match="modality"):
        write_dicom(Volume(np.zeros((3, 3, 3)), np.eye(4)), tmp_path / "d")
    with pytest.raises(ParameterError, match=">= 0"):
        write_dicom(Volume(-np.ones((3, 3, 3)), np.eye(4), Meta(modality="NM")), tmp_path / "e")
    with pytest.raises(ParameterError, match="echo_times_s"):
        write_dicom(Volume(np.ones((3, 3, 3, 2)), np.eye(4), Meta(modality="MR")), tmp_path / "f")
    with pytest.raises(ParameterError, match="frame_start_s"):
        write_dicom(Volume(np.ones((3, 3, 3, 2)), np.eye(4), Meta(modality="PT")), tmp_path / "g")
    with pytest.raises(ParameterError, match="NaN"):
        write_dicom(Volume(np.full((3, 3, 3), np.nan), np.eye(4), Meta(modality="CT")), tmp_path / "h")


def test_failed_write_leaves_no_folder(tmp_path):
    with pytest.raises(ParameterError):
        write_dicom(Volume(-np.ones((3, 3, 3)), np.eye(4), Meta(modality="NM")), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_enhanced_mr_without_echo_time(tmp_path):
    data = np.arange(4 * 3 * 2, dtype=float).reshape(4, 3, 2)
    paths, stored = write_dicom(Volume(data, np.eye(4), Meta(modality="MR")), tmp_path / "e", enhanced=True,
                                return_stored=True)
    ds = pydicom.dcmread(paths[0])
    assert "MREchoSequence" not in ds.PerFrameFunctionalGroupsSequence[0]
    assert len(ds.DimensionIndexSequence) == 1 and stored.meta.echo_times_s is None
    np.testing.assert_array_equal(stored.data, data)


def test_pet_timing_rounding_and_default_duration_are_announced(tmp_path):
    vol = pet_volume(shape=(4, 4, 3))
    vol.meta.frame_duration_s = (120.0004,)
    vol.meta.frame_start_s = (0.0,)
    with pytest.warns(InvivoWarning, match="rounded"):
        _, stored = write_dicom(vol, tmp_path / "a", return_stored=True)
    assert stored.meta.frame_duration_s == (120.0,)
    assert any("rounded" in a for a in stored.meta.assumptions)
    vol.meta.frame_duration_s = None
    vol.meta.frame_start_s = None
    with pytest.warns(InvivoWarning, match="600"):
        _, stored = write_dicom(vol, tmp_path / "b", return_stored=True)
    assert stored.meta.frame_duration_s == (600.0,)


def test_phantom_pet_to_dicom_end_to_end(tmp_path, small_phantom):
    pet, truth = render_pet(small_phantom, percent_id_per_g=PID, injected_activity_bq=3.7e6,
                            injection_datetime=INJ, scan_delay_s=86400.0)
    paths, stored = write_dicom(pet, tmp_path / "pet", return_stored=True)
    data, ras = decode(paths)
    np.testing.assert_allclose(ras, small_phantom.labels.affine, atol=1e-12)
    np.testing.assert_allclose(data, stored.data, rtol=1e-12)
    for name in PID:
        m = small_phantom.mask(name).data
        # 16-bit quantisation per slice: within 1 / 32767 of the slice maximum
        assert np.abs(data[m] - truth["bq_per_ml"][name]).max() <= truth["bq_per_ml"]["liver"] * 0.5 / 32767 * 1.0001
    np.testing.assert_allclose(stored.meta.suv_bw_factor, pet.meta.suv_bw_factor, rtol=1e-12)


# =============================================================================== dcm2niix (external reader)
def _dcm2niix() -> str | None:
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
    return exe if Path(exe).exists() else None


def _on_grid(nii: Path, affine: np.ndarray, shape3) -> np.ndarray:
    """dcm2niix's image sampled at ``affine``'s voxel centres (it may permute/flip axes)."""
    nib = pytest.importorskip("nibabel")
    img = nib.load(str(nii))
    t = np.linalg.inv(img.affine) @ affine
    ijk = np.indices(shape3).reshape(3, -1)
    pos = t[:3, :3] @ ijk + t[:3, 3:4]
    idx = np.round(pos).astype(int)
    assert np.abs(pos - idx).max() < 1e-3, "dcm2niix grid differs from ours"
    data = np.asarray(img.dataobj, dtype=np.float64)
    return data[idx[0], idx[1], idx[2]].reshape(tuple(shape3) + data.shape[3:])


@pytest.mark.skipif(_dcm2niix() is None, reason="dcm2niix is not installed (pip install invivo[bench])")
@pytest.mark.parametrize("kind", ["pet", "ct", "nm", "mr-enhanced"])
def test_dcm2niix_reads_the_same_grid_and_values(tmp_path, kind):
    aff = oblique_affine(voxel=(0.5, 0.5, 0.7))
    rng = np.random.default_rng(9)
    if kind == "pet":
        vol = pet_volume(shape=(10, 8, 6), affine=aff)
        kw = {}
    elif kind == "ct":
        vol = Volume(np.round(rng.normal(0, 300, (10, 8, 6))), aff, Meta(modality="CT"))
        kw = {}
    elif kind == "nm":
        vol = Volume(rng.random((10, 8, 6)) * 1e4, aff, Meta(modality="NM", units="BQML"))
        kw = {}
    else:
        vol = Volume(rng.random((10, 8, 6)) * 1e3, aff, Meta(modality="MR", echo_times_s=(0.004,)))
        kw = {"enhanced": True}
    _, stored = write_dicom(vol, tmp_path / "dcm", return_stored=True, **kw)
    out = tmp_path / "nii"
    out.mkdir()
    subprocess.run([_dcm2niix(), "-z", "n", "-f", "img", "-o", str(out), str(tmp_path / "dcm")],
                   check=True, capture_output=True, timeout=60)
    nii = sorted(out.glob("*.nii"))
    assert len(nii) == 1
    got = _on_grid(nii[0], stored.affine, stored.shape[:3])
    np.testing.assert_allclose(got, stored.data, rtol=1e-6, atol=1e-6 * np.abs(stored.data).max())


# =============================================================================== round trip through invivo.load
def _loader():
    try:
        from invivo.io import load
    except ImportError:
        return None
    return load


needs_loader = pytest.mark.skipif(_loader() is None, reason="invivo.io.load is not available yet")


def _case(kind: str, affine: np.ndarray):
    rng = np.random.default_rng(11)
    if kind == "pet-static":
        return pet_volume(shape=(10, 8, 6), affine=affine), {}
    if kind == "pet-dynamic":
        v = pet_volume(shape=(10, 8, 6, 4), affine=affine, decay="ADMIN")
        v.meta.frame_start_s = (0.0, 30.0, 90.5, 300.0)
        v.meta.frame_duration_s = (30.0, 60.5, 209.5, 600.0)
        return v, {}
    if kind == "pet-none":
        v = pet_volume(shape=(10, 8, 6, 3), affine=affine, decay="NONE")
        return v, {}
    if kind == "mr-multiecho":
        return Volume(rng.random((10, 8, 6, 5)) * 1234.5, affine,
                      Meta(modality="MR", echo_times_s=(0.0021, 0.0042, 0.0063, 0.0084, 0.0105))), {}
    if kind == "mr-enhanced":
        return Volume(rng.random((10, 8, 6, 3)) * 1234.5, affine,
                      Meta(modality="MR", echo_times_s=(0.003, 0.0065, 0.01))), {"enhanced": True}
    if kind == "ct":
        return Volume(rng.normal(0, 300, (10, 8, 6)), affine, Meta(modality="CT")), {}
    if kind == "nm":
        return Volume(rng.random((10, 8, 6)) * 3e4, affine, Meta(modality="NM", units="BQML")), {}
    raise AssertionError(kind)


AFFINES = {
    "axial": np.array([[0.4, 0, 0, -2.0], [0, 0.4, 0, 3.0], [0, 0, 0.8, -40.0], [0, 0, 0, 1.0]]),
    "oblique": oblique_affine(),
    "oblique-reversed-k": oblique_affine() @ np.diag([1.0, 1.0, -1.0, 1.0]),
}


@needs_loader
@pytest.mark.parametrize("orientation", list(AFFINES))
@pytest.mark.parametrize("kind", ["pet-static", "pet-dynamic", "pet-none", "mr-multiecho", "mr-enhanced", "ct", "nm"])
def test_round_trip_through_invivo_load(tmp_path, kind, orientation):
    vol, kw = _case(kind, AFFINES[orientation])
    _, stored = write_dicom(vol, tmp_path / kind, return_stored=True, **kw)
    loaded = _loader()(tmp_path / kind)
    assert loaded.shape == stored.shape
    np.testing.assert_allclose(loaded.numpy(), stored.data, rtol=1e-9, atol=1e-9 * np.abs(stored.data).max())
    np.testing.assert_allclose(loaded.affine, stored.affine, atol=1e-6)
    m, s = loaded.meta, stored.meta
    assert m.modality == s.modality
    assert m.series_uid == s.series_uid
    if kind.startswith("pet"):
        np.testing.assert_allclose(m.frame_start_s, s.frame_start_s, rtol=0, atol=1e-9)
        np.testing.assert_allclose(m.frame_duration_s, s.frame_duration_s, rtol=0, atol=1e-9)
        assert (m.units, m.decay_correction) == ("BQML", s.decay_correction)
        assert m.series_datetime == s.series_datetime
        assert m.tracer.injected_activity_bq == pytest.approx(4.1e6) and m.tracer.injection_datetime == INJ
        assert m.tracer.half_life_s == pytest.approx(ZR89)
        assert m.subject.weight_kg == pytest.approx(0.0241) and m.subject.species == "mouse"
        # the QIBA decay reference and SUVbw factor per slice and frame agree with the writer's
        np.testing.assert_allclose(np.asarray(m.reference_activity_bq, float), s.reference_activity_bq, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(m.suv_bw_factor, float), s.suv_bw_factor, rtol=1e-12)
    if kind.startswith("mr"):
        np.testing.assert_allclose(m.echo_times_s, s.echo_times_s, rtol=0, atol=1e-12)
    if kind == "nm":
        assert m.units == "BQML"
    if kind == "ct":
        assert m.units in ("HU", None)


@needs_loader
def test_round_trip_phantom_study(tmp_path, small_phantom):
    """The phantom's PET, MR and CT written as one study load back on one grid."""
    study = pydicom.uid.generate_uid()
    pet, truth = render_pet(small_phantom, percent_id_per_g=PID, injected_activity_bq=3.7e6,
                            injection_datetime=INJ, scan_delay_s=86400.0,
                            frame_starts_s=(0.0, 600.0), frame_durations_s=(600.0, 1200.0))
    mr, _ = render_mr(small_phantom, echo_times_s=(0.002, 0.005, 0.008), noise_sigma=3.0)
    ct, _ = render_ct(small_phantom)
    load = _loader()
    for name, vol in (("pet", pet), ("mr", mr), ("ct", ct)):
        _, stored = write_dicom(vol, tmp_path / name, study_uid=study, return_stored=True)
        got = load(tmp_path / name)
        np.testing.assert_allclose(got.numpy(), stored.data, rtol=1e-9, atol=1e-9 * np.abs(stored.data).max())
        np.testing.assert_allclose(got.affine, small_phantom.labels.affine, atol=1e-6)
    got = load(tmp_path / "pet")
    liver = small_phantom.mask("liver").data
    for t in range(2):
        np.testing.assert_allclose(got.numpy()[..., t][liver], truth["bq_per_ml"]["liver"][t], rtol=1 / 32767)
    np.testing.assert_allclose(np.asarray(got.meta.suv_bw_factor, float) * got.numpy()[..., 0][liver].mean(),
                               truth["suv_bw"]["liver"][0], rtol=1e-4)
