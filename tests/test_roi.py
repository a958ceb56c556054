"""ROI statistics and mask matching against analytic truth and the IBSI SUV DRO."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.orientations import apply_orientation, inv_ornt_aff

from invivo.backend import cupy, has_gpu, to_device
from invivo.errors import GeometryError, ParameterError
from invivo.roi import label_stats, match_mask, sphere_kernel, stats
from invivo.volume import LPS_TO_RAS, Meta, Volume

DATA = Path(__file__).parents[1].parent / "shared" / "data"
DRO = DATA / "ibsi_suv_dro"


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    if request.param == "cupy":
        if not has_gpu():
            pytest.skip("needs CuPy and a CUDA device")
        return cupy
    return np


def sphere_case(xp, value=3.7, radius_mm=4.0, voxel=(0.5, 0.5, 0.8), shape=(24, 24, 16)):
    affine = np.diag([*voxel, 1.0])
    affine[:3, 3] = (-5.0, 3.0, 11.0)
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre = np.array(shape) // 2
    d = np.sqrt(sum(((a - c) * v) ** 2 for a, c, v in zip((i, j, k), centre, voxel)))
    inside = d <= radius_mm
    data = np.where(inside, value, 0.0).astype(np.float32)
    img = Volume(xp.asarray(data), affine, Meta(units="BQML"))
    mask = Volume(xp.asarray(inside), affine)
    return img, mask, inside


# -- stats: analytic truth -------------------------------------------------------------

def test_uniform_sphere(xp):
    img, mask, inside = sphere_case(xp)
    s = stats(img, mask)
    v = float(np.float32(3.7))
    assert s["mean"] == pytest.approx(v, rel=1e-12)
    assert s["sd"] == pytest.approx(0.0, abs=1e-12)
    assert s["min"] == s["max"] == s["median"] == v
    assert s["peak"] == pytest.approx(v, rel=1e-12)  # interior voxels exist: the sphere mean is v
    n = int(inside.sum())
    assert s["n_voxels"] == n
    assert s["volume_ml"] == pytest.approx(n * 0.5 * 0.5 * 0.8 / 1000, rel=1e-12)
    assert s["volume_ml"] == pytest.approx(4 / 3 * math.pi * 4.0 ** 3 / 1000, rel=0.03)  # discretised sphere
    assert s["units"] == "BQML"
    assert s["peak_radius_mm"] == pytest.approx(1.5 * 0.8)  # documented default: 1.5 x largest voxel
    json.dumps(s, allow_nan=False)  # plain Python numbers
    assert all(type(s[k]) is float for k in ("mean", "sd", "min", "median", "max", "peak", "volume_ml"))
    assert type(s["n_voxels"]) is int


def test_two_valued_sd_and_median(xp):
    data = np.zeros((10, 8, 6), np.float32)
    box = np.zeros(data.shape, bool)
    box[2:8, 1:7, 1:5] = True  # 6 x 6 x 4 = 144 voxels
    i = np.arange(10)[:, None, None]
    data[:] = np.where(i % 2 == 0, 1.0, 3.0)
    s = stats(Volume(xp.asarray(data), np.eye(4)), xp.asarray(box), peak_radius_mm=0.5)
    n = 144
    assert s["mean"] == pytest.approx(2.0, rel=1e-12)
    assert s["sd"] == pytest.approx(math.sqrt(n / (n - 1)), rel=1e-12)  # ddof=1
    assert s["median"] == 2.0 and s["min"] == 1.0 and s["max"] == 3.0
    assert s["peak"] == 3.0 and s["peak_kernel_voxels"] == 1  # radius below the voxel: peak == max


def spike_volume(xp, voxel=(1.0, 1.0, 1.0)):
    data = np.zeros((9, 9, 9), np.float64)
    c = (4, 4, 4)
    data[c] = 70.0
    data[5, 4, 4] = 14.0
    data[3, 4, 4] = 7.0
    return Volume(xp.asarray(data), np.diag([*voxel, 1.0])), c


def test_peak_on_a_spike_pattern_by_hand(xp):
    img, c = spike_volume(xp)
    mask = np.zeros(img.shape, bool)
    mask[3:6, 4, 4] = True
    mask = xp.asarray(mask)
    # radius 1.2 mm on 1 mm voxels: the centre and its 6 face neighbours (sqrt 2 > 1.2)
    s = stats(img, mask, peak_radius_mm=1.2)
    assert s["peak_kernel_voxels"] == 7
    # means: at (4,4,4) (70+14+7)/7 = 13; at (5,4,4) (14+70)/7 = 12; at (3,4,4) (7+70)/7 = 11
    assert s["peak"] == pytest.approx(13.0, rel=1e-12)
    assert s["max"] == 70.0
    # the same sphere given by volume
    s2 = stats(img, mask, peak_volume_ml=4 / 3 * math.pi * 1.2 ** 3 / 1000)
    assert s2["peak_radius_mm"] == pytest.approx(1.2) and s2["peak"] == pytest.approx(13.0, rel=1e-12)
    # a mask that excludes the spike: the sphere still reaches it (PERCIST-style peak)
    only = xp.zeros(img.shape, dtype=bool)
    only[5:7, 4, 4] = True
    assert stats(img, only, peak_radius_mm=1.2)["peak"] == pytest.approx(12.0, rel=1e-12)


def test_peak_anisotropic_voxels_edge_and_nan(xp):
    img, c = spike_volume(xp, voxel=(1.0, 1.0, 3.0))
    # radius 2 mm: in-plane offsets with sqrt(di^2 + dj^2) <= 2 (13 of them), none across slices (3 mm)
    k = sphere_kernel(img.affine, 2.0)
    assert (k > 0).sum() == 13 and k.shape == (5, 5, 1) and k.sum() == pytest.approx(1.0)
    mask = xp.zeros(img.shape, dtype=bool)
    mask[4, 4, 4] = True
    assert stats(img, mask, peak_radius_mm=2.0)["peak"] == pytest.approx(91 / 13, rel=1e-12)
    # at a corner of the image only 4 of the 7 voxels of a 1.2 mm sphere exist: mean over those
    data = np.zeros((5, 5, 5))
    data[0, 0, 0] = 70.0
    corner = np.zeros((5, 5, 5), bool)
    corner[0, 0, 0] = True
    s = stats(Volume(xp.asarray(data), np.eye(4)), xp.asarray(corner), peak_radius_mm=1.2)
    assert s["peak"] == pytest.approx(70 / 4, rel=1e-12)
    # NaN outside the mask is left out of the sphere mean, never spread
    data = np.zeros((9, 9, 9))
    data[4, 4, 4], data[5, 4, 4], data[3, 4, 4], data[4, 5, 4] = 70, 14, 7, np.nan
    mask = np.zeros(data.shape, bool)
    mask[3:6, 4, 4] = True
    s = stats(Volume(xp.asarray(data), np.eye(4)), xp.asarray(mask), peak_radius_mm=1.2)
    assert s["peak"] == pytest.approx(91 / 6, rel=1e-12) and s["mean"] == pytest.approx(91 / 3)


def test_large_sphere_fft_path_equals_direct_convolution():
    from scipy import ndimage

    rng = np.random.default_rng(5)
    data = rng.gamma(2.0, 1.0, size=(30, 28, 26))
    mask = np.zeros(data.shape, bool)
    mask[5:25, 6:20, 4:22] = rng.random((20, 14, 18)) < 0.2
    img = Volume(data, np.diag([0.5, 0.5, 0.5, 1.0]))
    s = stats(img, mask, peak_radius_mm=2.6)  # 5.2 voxels: > 500 kernel voxels, the FFT path
    k = sphere_kernel(img.affine, 2.6)
    assert (k > 0).sum() > 500
    num = ndimage.convolve(data, k, mode="constant")
    den = ndimage.convolve(np.ones_like(data), k, mode="constant")
    assert s["peak"] == pytest.approx((num / den)[mask].max(), rel=1e-12)


def test_4d_per_frame(xp):
    img, mask, inside = sphere_case(xp, value=2.0)
    data4 = xp.stack([img.data * f for f in (1.0, 2.0, 3.0)], axis=-1)
    data4[0, 0, 0, :] = 99.0  # outside the mask: ignored
    s = stats(Volume(data4, img.affine, Meta(units="BQML")), mask)
    assert s["mean"] == pytest.approx([2.0, 4.0, 6.0], rel=1e-12)
    assert s["max"] == pytest.approx([2.0, 4.0, 6.0]) and s["peak"] == pytest.approx([2.0, 4.0, 6.0])
    assert s["sd"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    assert s["n_voxels"] == int(inside.sum()) and isinstance(s["volume_ml"], float)
    json.dumps(s, allow_nan=False)


def test_bad_input(xp):
    img, mask, inside = sphere_case(xp)
    with pytest.raises(ParameterError, match="mask is empty"):
        stats(img, xp.zeros(img.shape, dtype=bool))
    data = img.numpy().copy()
    c = np.argwhere(inside)[:2]
    data[tuple(c.T)] = np.nan
    with pytest.raises(ParameterError, match="2 NaN or infinite value"):
        stats(img.with_data(xp.asarray(data)), mask)
    with pytest.raises(ParameterError, match="not both"):
        stats(img, mask, peak_radius_mm=1.0, peak_volume_ml=0.001)
    with pytest.raises(ParameterError, match="peak_radius_mm must be > 0"):
        stats(img, mask, peak_radius_mm=-1.0)
    with pytest.raises(ParameterError, match=r"mask array shape \(3, 3, 3\)"):
        stats(img, xp.ones((3, 3, 3), dtype=bool))
    single = xp.zeros(img.shape, dtype=bool)
    single[12, 12, 8] = True
    assert stats(img, single)["sd"] is None


@pytest.mark.skipif(not has_gpu(), reason="needs CuPy and a CUDA device")
def test_mask_on_another_device_is_an_error():
    img, mask, inside = sphere_case(np)
    with pytest.raises(ValueError, match="volume on cpu, mask on gpu"):
        stats(img, to_device(inside, "gpu"))


@pytest.mark.skipif(not has_gpu(), reason="needs CuPy and a CUDA device")
def test_cpu_gpu_parity():
    rng = np.random.default_rng(3)
    data = rng.gamma(2.0, 1.5, size=(20, 22, 18, 2)).astype(np.float32)
    aff = np.diag([0.4, 0.4, 0.8, 1.0])
    mask = rng.random((20, 22, 18)) < 0.3
    a = stats(Volume(data, aff), mask)
    b = stats(Volume(to_device(data, "gpu"), aff), to_device(mask, "gpu"))
    for key in ("mean", "sd", "min", "median", "max", "peak"):
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    assert a["n_voxels"] == b["n_voxels"]


# -- match_mask -------------------------------------------------------------------------

def oblique_grid():
    rng = np.random.default_rng(7)
    shape = (5, 6, 7)
    labels = rng.integers(0, 4, size=shape).astype(np.int16)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag([0.7, 1.1, 1.9])  # an oblique, anisotropic grid
    affine[:3, 3] = (12.5, -30.25, 7.0)
    return labels, affine


ORIENTATIONS = [np.array([[p[a], f[a]] for a in range(3)], float)
                for p in itertools.permutations(range(3)) for f in itertools.product((1, -1), repeat=3)]


def test_all_48_orientations_match_back_exactly():
    labels, affine = oblique_grid()
    ref = Volume(labels, affine)
    assert len(ORIENTATIONS) == 48
    for ornt in ORIENTATIONS:
        data2 = apply_orientation(labels, ornt)
        aff2 = affine @ inv_ornt_aff(ornt, labels.shape)
        other = Volume(data2, aff2)
        back = match_mask(other, ref, labels=True)
        assert back.data.dtype == np.int16 and np.array_equal(back.data, labels), ornt.tolist()
        np.testing.assert_array_equal(back.affine, affine)
        # and the other way round, as a boolean mask
        fwd = match_mask(ref, other)
        assert fwd.data.dtype == bool and np.array_equal(fwd.data, data2 != 0)


def test_dro_style_lps_mask_on_ras_reference():
    labels, _ = oblique_grid()
    ras = Volume(labels, np.diag([0.5, 0.5, 1.0, 1.0]))
    # the same grid stored LPS-first (x and y flipped), as the DRO mask and dcm2niix can do
    lps_aff = ras.affine @ inv_ornt_aff(np.array([[0, -1], [1, -1], [2, 1]]), labels.shape)
    lps = Volume(labels[::-1, ::-1], lps_aff)
    assert ras.orientation == "RAS" and lps.orientation == "LPS"
    assert np.array_equal(match_mask(lps, ras).data, labels != 0)


@pytest.mark.parametrize("change", ["shape", "spacing", "half-voxel shift", "one-voxel shift", "oblique"])
def test_grids_that_do_not_correspond(change):
    labels, affine = oblique_grid()
    ref = Volume(labels, affine)
    data, aff = labels, affine.copy()
    if change == "shape":
        data = labels[:, :, :-1]
    elif change == "spacing":
        aff[:3, :3] = aff[:3, :3] * 1.01
    elif change == "half-voxel shift":
        aff[:3, 3] += 0.5 * aff[:3, 0]
    elif change == "one-voxel shift":
        aff[:3, 3] += aff[:3, 2]
    else:
        r = np.eye(4)
        c, s = math.cos(math.radians(10)), math.sin(math.radians(10))
        r[:2, :2] = [[c, -s], [s, c]]
        aff = r @ aff
    with pytest.raises(GeometryError, match=r"mask grid \(shape \(5, 6, [67]\).*reference grid \(shape \(5, 6, 7\)") as e:
        match_mask(Volume(data, aff), ref)
    assert "\n" not in str(e.value)


def test_match_mask_bad_labels():
    labels, affine = oblique_grid()
    with pytest.raises(ParameterError, match="non-integral"):
        match_mask(Volume(labels + 0.5, affine), Volume(labels, affine), labels=True)
    fl = match_mask(Volume(labels.astype(np.float32), affine), Volume(labels, affine), labels=True)
    assert fl.data.dtype == np.int64 and np.array_equal(fl.data, labels)


def test_stats_with_a_reoriented_mask_and_label_stats(xp):
    rng = np.random.default_rng(11)
    labels, affine = oblique_grid()
    img = Volume(xp.asarray(rng.normal(5.0, 1.0, labels.shape)), affine, Meta(units="SUVbw"))
    ornt = ORIENTATIONS[29]
    other = Volume(xp.asarray(apply_orientation(labels, ornt)), affine @ inv_ornt_aff(ornt, labels.shape))
    a = stats(img, Volume(xp.asarray(labels == 2), affine))
    b = stats(img, other.with_data(other.data == 2))
    assert a == b
    vals = img.numpy()[labels == 2]
    assert a["mean"] == pytest.approx(vals.mean(), rel=1e-12) and a["sd"] == pytest.approx(vals.std(ddof=1))
    both = label_stats(img, other, {2: "tumour", 3: "muscle"})
    assert list(both) == ["tumour", "muscle"] and both["tumour"] == a
    assert both["muscle"]["n_voxels"] == int((labels == 3).sum())
    with pytest.raises(ParameterError, match=r"label 9 \('bone'\)"):
        label_stats(img, other, {9: "bone"})


# -- real data: IBSI SUV DRO_0_0 --------------------------------------------------------

def _seconds(tm: str) -> float:
    tm = str(tm)
    return int(tm[0:2]) * 3600 + int(tm[2:4]) * 60 + float(tm[4:])


@pytest.mark.skipif(not (DRO / "DRO_0_0").is_dir(), reason=f"IBSI SUV DRO data not found at {DRO}")
def test_dro_suv_in_nifti_mask():
    """SUVbw inside the DRO's NIfTI mask: IBSI truth min / median / max = 0.20 / 1.00 / 4.00."""
    d = DRO / "DRO_0_0"
    slices = [pydicom.dcmread(f) for f in sorted((d / "PT").glob("*.dcm"))]
    iop = np.array(slices[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda s: float(normal @ np.array(s.ImagePositionPatient, float)))
    # SUV factor (valid for DRO_0_0: BQML, DecayCorrection START, SeriesTime = AcquisitionTime)
    ds = slices[0]
    assert ds.Units == "BQML" and ds.DecayCorrection == "START"
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    elapsed = _seconds(ds.SeriesTime) - _seconds(rp.RadiopharmaceuticalStartTime)
    dose = float(rp.RadionuclideTotalDose) * 2 ** (-elapsed / float(rp.RadionuclideHalfLife))
    suv_factor = float(ds.PatientWeight) * 1000 / dose
    # pixel data: i along columns (pixel_array is rows x columns), per-slice RescaleSlope
    data = np.stack([s.pixel_array.T * float(s.RescaleSlope) + float(s.get("RescaleIntercept", 0))
                     for s in slices], axis=-1) * suv_factor
    ipp = np.array([s.ImagePositionPatient for s in slices], float)
    rs, cs = (float(x) for x in ds.PixelSpacing)
    a = np.eye(4)
    a[:3, 0], a[:3, 1], a[:3, 2], a[:3, 3] = iop[:3] * cs, iop[3:] * rs, normal * float((ipp[1] - ipp[0]) @ normal), ipp[0]
    img = Volume(data, LPS_TO_RAS @ a, Meta(units="SUVbw"))
    m = nib.load(d / "mask" / "DRO_mask.nii.gz")
    mask = Volume(np.asarray(m.dataobj), m.affine)
    s = stats(img, mask)
    assert s["min"] == pytest.approx(0.20, abs=0.01)
    assert s["median"] == pytest.approx(1.00, abs=0.01)
    assert s["max"] == pytest.approx(4.00, abs=0.01)
    assert s["n_voxels"] == 203202 and s["volume_ml"] == pytest.approx(203202 * 64 / 1000)
    assert s["units"] == "SUVbw"
    # the mask stored in RAS-first order (as a reoriented NIfTI would be) gives the same numbers
    ras = Volume(np.asarray(m.dataobj)[::-1, ::-1], m.affine @ inv_ornt_aff(np.array([[0, -1], [1, -1], [2, 1]]),
                                                                            m.shape))
    assert ras.orientation == "RAS"
    assert stats(img, ras) == s


@pytest.mark.skipif(not (DRO / "DRO_0_0").is_dir(), reason=f"IBSI SUV DRO data not found at {DRO}")
def test_image_roi_stats_from_files():
    """What `invivo roi-stats` runs: the DRO PET (BQML) in its NIfTI mask and its RTSTRUCT."""
    from invivo.roi import image_roi_stats

    d = DRO / "DRO_0_0"
    by_mask = image_roi_stats(d / "PT", mask=d / "mask" / "DRO_mask.nii.gz")
    # stored activity concentrations 720 / 3600 / 14400 Bq/mL are SUVbw 0.2 / 1 / 4 for this case
    assert (by_mask["min"], by_mask["median"], by_mask["max"]) == (720.0, 3600.0, 14400.0)
    assert by_mask["n_voxels"] == 203202 and by_mask["units"] == "BQML"
    by_rs = image_roi_stats(d / "PT", rtstruct=d / "RS", structures=["region_1"], peak_radius_mm=6.0)
    assert list(by_rs) == ["region_1"]
    r = by_rs["region_1"]
    assert r["n_voxels"] == 174690 and (r["min"], r["median"], r["max"]) == (720.0, 3600.0, 14400.0)
    assert r["peak_kernel_voxels"] == 19  # 4 mm voxels, 6 mm radius: centre + 6 face + 12 edge neighbours
    with pytest.raises(ParameterError, match="exactly one"):
        image_roi_stats(d / "PT")
