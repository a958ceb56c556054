"""Tests of invivo.synth.spio: the SPIO vial phantom's truth against hand arithmetic and
geometry, the rendered signal against S0 exp(-R2* TE), the Rician noise against its
analytic moments (and scipy.stats.rice), and the DICOM round trip through invivo.load."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pytest
from scipy import stats

import invivo
from invivo.backend import has_gpu, to_device
from invivo.errors import ParameterError
from invivo.synth import (
    SpioPhantom,
    Vial,
    mouse_phantom,
    render_spio_mr,
    render_spio_pair,
    rician_mean,
    rician_signal,
    spio_vial_phantom,
    write_dicom,
)
from invivo.synth.spio import DEFAULT_ECHO_TIMES_S, fe_mM_from_cells

RAYLEIGH_MEAN = math.sqrt(math.pi / 2.0)  # E|n1 + i n2| / sigma
RAYLEIGH_SD = math.sqrt((4.0 - math.pi) / 2.0)


@pytest.fixture(scope="module")
def phantom() -> SpioPhantom:
    return spio_vial_phantom()


# --------------------------------------------------------------------------- truth table
def test_cell_iron_unit_chain_by_hand():
    # 1e6 cells/mL x 10 pg/cell = 1e7 pg/mL = 1e-5 g/mL; / 55.845 g/mol = 1.790670606141955e-7 mol/mL
    # = 1.790670606141955e-4 mol/L = 0.1790670606141955 mM
    assert fe_mM_from_cells(1e6, 10.0) == pytest.approx(0.1790670606141955, rel=1e-12)
    # 2.5e5 cells/mL x 30 pg = 7.5e6 pg/mL = 7.5e-6 g/mL -> 7.5e-6 / 55.845 * 1e6 mM
    assert fe_mM_from_cells(2.5e5, 30.0) == pytest.approx(7.5 / 55.845, rel=1e-12)
    assert fe_mM_from_cells(0.0, 10.0) == 0.0


def test_default_truth_table_arithmetic(phantom):
    t = phantom.truth
    voxel_ml = 0.25 ** 3 / 1000.0  # 1.5625e-5 mL
    assert set(t) == {"agarose", "fe_0mM", "fe_0.05mM", "fe_0.1mM", "fe_0.2mM", "fe_0.4mM", "fe_0.8mM", "fe_1.6mM",
                      "fe_3.2mM", "fe_6.4mM", "cells_1e5", "cells_1e6", "cells_1e7"}
    assert t["agarose"]["r2star_per_s"] == 20.0 and t["agarose"]["fe_mM"] == 0.0
    for fe in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4):
        row = t[f"fe_{fe:g}mM"]
        assert row["kind"] == "iron" and row["fe_mM"] == fe
        assert row["r2star_per_s"] == pytest.approx(20.0 + 60.0 * fe, abs=1e-12)
        assert row["delta_r2star_per_s"] == pytest.approx(60.0 * fe, abs=1e-12)
        # 1 mM = 55.845 ug/mL
        assert row["iron_ug_per_voxel"] == pytest.approx(fe * 55.845 * voxel_ml, rel=1e-12, abs=1e-18)
        assert row["cells_per_ml"] == 0.0 and row["cells_per_voxel"] == 0.0
    # by hand: 1e7 cells/mL x 10 pg = 1e8 pg/mL = 1e-4 g/mL -> 1e-4/55.845 mol/mL -> x1e6 = 1.790670606141955 mM
    row = t["cells_1e7"]
    assert row["kind"] == "cells" and row["pg_fe_per_cell"] == 10.0
    assert row["fe_mM"] == pytest.approx(1.790670606141955, rel=1e-12)
    assert row["r2star_per_s"] == pytest.approx(20.0 + 60.0 * 1.790670606141955, rel=1e-12)
    assert row["cells_per_voxel"] == pytest.approx(1e7 * 1.5625e-5, rel=1e-12)  # 156.25 cells
    # iron per voxel two ways: cells x pg (1e-6 ug/pg), and [Fe] x 55.845 ug/mL
    assert row["iron_ug_per_voxel"] == pytest.approx(156.25 * 10.0 * 1e-6, rel=1e-12)
    assert t["cells_1e5"]["cells_per_voxel"] == pytest.approx(1.5625, rel=1e-12)
    assert t["cells_1e5"]["delta_r2star_per_s"] == pytest.approx(60.0 * 0.01790670606141955, rel=1e-12)
    df = phantom.table()
    assert df.loc["cells_1e6", "fe_mM"] == pytest.approx(0.1790670606141955, rel=1e-12)


def test_relaxivities_are_explicit_and_separate_for_cells():
    vials = [Vial("free", fe_mM=0.5), Vial("cells", cells_per_ml=2e6, pg_fe_per_cell=25.0)]
    ph = spio_vial_phantom(vials=vials, r2star_agarose_per_s=15.0, relaxivity_per_mM_per_s=100.0,
                           cell_relaxivity_per_mM_per_s=40.0, field_t=9.4)
    fe_cells = 2e6 * 25.0 * 1e-12 / 55.845 * 1e6
    assert ph.truth["free"]["r2star_per_s"] == pytest.approx(15.0 + 100.0 * 0.5, abs=1e-12)
    assert ph.truth["cells"]["r2star_per_s"] == pytest.approx(15.0 + 40.0 * fe_cells, rel=1e-12)
    assert ph.field_t == 9.4 and ph.relaxivity_per_mM_per_s == 100.0 and ph.cell_relaxivity_per_mM_per_s == 40.0


# --------------------------------------------------------------------------- geometry
def test_labels_grid_and_masks(phantom):
    lab = phantom.labels
    assert lab.shape == (64, 64, 8) and lab.data.dtype == np.int16 and lab.voxel_size_mm == (0.25, 0.25, 0.25)
    np.testing.assert_allclose(lab.affine @ [31.5, 31.5, 3.5, 1.0], [0, 0, 0, 1], atol=1e-12)  # centred
    assert phantom.names[0 + 1] == "agarose" and set(np.unique(lab.data)) == set(range(14))
    # every slice the same (cylinders along k)
    assert np.all(lab.data == lab.data[:, :, :1])
    masks = phantom.masks()
    assert set(masks) == set(phantom.names.values()) | {"air", "vials", "phantom"}
    total = sum(masks[n].data.astype(int) for n in phantom.names.values()) + masks["air"].data
    assert np.all(total == 1)  # a partition of the grid
    assert np.array_equal(masks["vials"].data, lab.data > 1)
    # each vial's voxels are centred on its placed centre, on a 5.5 mm ring
    ijk = np.indices(lab.shape[:2]).reshape(2, -1)
    xy = (lab.affine[:2, :2] @ ijk + lab.affine[:2, 3:4])
    for v in phantom.vials:
        m = (lab.data[:, :, 0] == phantom.label(v.name)).ravel()
        centroid = xy[:, m].mean(axis=1)
        np.testing.assert_allclose(centroid, v.centre_mm, atol=0.125)
        assert math.hypot(*v.centre_mm) == pytest.approx(7.5 - 1.0 - 1.0, abs=1e-12)
        # no voxel centre farther than the radius from the vial centre
        assert np.max(np.hypot(*(xy[:, m] - np.asarray(v.centre_mm)[:, None]))) <= 1.0


@pytest.mark.parametrize("voxel, measured_tol", [(0.25, 0.04), (0.1, 0.01), (0.05, 0.006)])
def test_vial_volumes_match_the_analytic_cylinders(voxel, measured_tol):
    ph = spio_vial_phantom(voxel_size_mm=voxel)
    length_mm = ph.labels.shape[2] * voxel
    assert length_mm == pytest.approx(2.0, abs=voxel)
    r = 1.0 / voxel  # vial radius in voxels
    # lattice points with their centre in a disk of radius r lie between the disks of radii r -+ sqrt(2)/2
    lo, hi = math.pi * (r - math.sqrt(0.5)) ** 2, math.pi * (r + math.sqrt(0.5)) ** 2
    for v in ph.vials:
        row = ph.truth[v.name]
        assert row["analytic_volume_ml"] == pytest.approx(math.pi * 1.0 ** 2 * length_mm / 1000.0, rel=1e-12)
        n_per_slice = row["volume_ml"] / (voxel ** 3 / 1000.0) / ph.labels.shape[2]
        assert lo <= n_per_slice <= hi
        assert abs(row["volume_ml"] / row["analytic_volume_ml"] - 1.0) < measured_tol  # measured 3.5%, 0.7%, 0.6%
    agar = ph.truth["agarose"]
    assert agar["analytic_volume_ml"] == pytest.approx((math.pi * 7.5 ** 2 - 12 * math.pi) * length_mm / 1000.0)
    assert abs(agar["volume_ml"] / agar["analytic_volume_ml"] - 1.0) < 0.01
    assert ph.mask("phantom").data.sum() * voxel ** 3 / 1000.0 == pytest.approx(
        math.pi * 7.5 ** 2 * length_mm / 1000.0, rel=0.01)


# --------------------------------------------------------------------------- signal
def test_noise_free_signal_is_s0_exp_minus_r2star_te(phantom):
    mr, truth = render_spio_mr(phantom, s0={"agarose": 900.0, "cells_1e6": 1100.0})
    te = np.asarray(DEFAULT_ECHO_TIMES_S)
    assert mr.shape == (64, 64, 8, 8) and mr.meta.echo_times_s == DEFAULT_ECHO_TIMES_S
    np.testing.assert_allclose(te, np.linspace(0.002, 0.023, 8), rtol=1e-15)
    assert mr.meta.modality == "MR" and mr.meta.magnetic_field_t == 7.0
    assert mr.meta.series_datetime == datetime(2024, 1, 15, 10, 0, 0)
    assert truth["noise_sigma"] is None
    np.testing.assert_array_equal(mr.data, truth["noise_free"])
    for name in phantom.names.values():
        m = phantom.mask(name).data
        s0 = {"agarose": 900.0, "cells_1e6": 1100.0}.get(name, 1000.0)
        r2 = phantom.truth[name]["r2star_per_s"]
        assert truth["r2star_per_s"][name] == r2 and truth["s0"][name] == s0
        expected = s0 * np.exp(-r2 * te)
        np.testing.assert_allclose(mr.data[m], np.broadcast_to(expected, (int(m.sum()), 8)), rtol=1e-15, atol=0)
        assert np.all(truth["r2star_map"][m] == r2)
    air = phantom.mask("air").data
    assert np.all(mr.data[air] == 0.0)
    # the recovery a fitter must reach: log-linear over the echoes gives R2* back to 1e-9
    m = phantom.mask("fe_6.4mM").data
    slope = np.polyfit(te, np.log(mr.data[m][0]), 1)[0]
    assert -slope == pytest.approx(404.0, rel=1e-9)


def test_background_noise_is_rayleigh(phantom):
    sigma = 20.0
    mr, truth = render_spio_mr(phantom, snr=50.0, seed=3)  # sigma = 1000 / 50
    assert truth["noise_sigma"] == sigma and mr.meta.source["noise_sigma"] == sigma
    air = mr.data[phantom.mask("air").data]  # (n_air, 8)
    assert air.size > 50000
    assert air.mean() == pytest.approx(sigma * RAYLEIGH_MEAN, rel=0.01)
    assert air.std() == pytest.approx(sigma * RAYLEIGH_SD, rel=0.01)
    for e in range(8):
        assert air[:, e].mean() == pytest.approx(sigma * RAYLEIGH_MEAN, rel=0.02)
    # sigma from the background, the Rayleigh correction: sigma = mean / sqrt(pi/2)
    assert air.mean() / RAYLEIGH_MEAN == pytest.approx(sigma, rel=0.01)
    # seeded: same seed same data, other seed other data
    again, _ = render_spio_mr(phantom, snr=50.0, seed=3)
    other, _ = render_spio_mr(phantom, noise_sigma=20.0, seed=4)
    np.testing.assert_array_equal(again.data, mr.data)
    assert not np.array_equal(other.data, mr.data)


def test_vial_means_follow_the_rician_mean(phantom):
    sigma = 20.0
    te = np.asarray(DEFAULT_ECHO_TIMES_S)
    # high SNR (agarose, nu/sigma 50 -> 31): the mean is the Rician mean within 1 %
    mr, truth = render_spio_mr(phantom, noise_sigma=sigma, seed=5)
    agar = mr.data[phantom.mask("agarose").data]
    nu = 1000.0 * np.exp(-20.0 * te)
    np.testing.assert_allclose(agar.mean(axis=0), rician_mean(nu, sigma), rtol=0.01)
    # low SNR (agarose S0 = 40: nu/sigma 1.9 -> 1.3): still the Rician mean within 1 %, while
    # the noise-free value is off by more than 10 % (the bias every R2* fit must face)
    low, _ = render_spio_mr(phantom, s0={"agarose": 40.0}, noise_sigma=sigma, seed=6)
    agar = low.data[phantom.mask("agarose").data]
    nu = 40.0 * np.exp(-20.0 * te)
    np.testing.assert_allclose(agar.mean(axis=0), rician_mean(nu, sigma), rtol=0.01)
    assert np.all(agar.mean(axis=0) / nu - 1.0 > 0.10)
    # the densest vial: by the last echoes only the noise floor is left
    m = phantom.mask("fe_6.4mM").data
    vial = mr.data[m]
    nu = 1000.0 * np.exp(-404.0 * te)
    assert nu[-1] < 0.01 * sigma
    n = int(m.sum())
    se = sigma * RAYLEIGH_SD / math.sqrt(n)
    assert abs(vial[:, -1].mean() - float(rician_mean(nu[-1], sigma))) < 4 * se


def test_pre_post_pair(phantom):
    pre, post, truth = render_spio_pair(phantom, snr=50.0, seed=7)
    assert pre.shape == post.shape and np.array_equal(pre.affine, post.affine)
    assert post.meta.series_datetime - pre.meta.series_datetime == timedelta(seconds=3600)
    for name, row in phantom.truth.items():
        m = phantom.mask(name).data
        assert truth["r2star_pre_per_s"][name] == 20.0
        assert truth["r2star_post_per_s"][name] == row["r2star_per_s"]
        assert truth["delta_r2star_per_s"][name] == pytest.approx(60.0 * row["fe_mM"], abs=1e-12)
        assert np.all(truth["delta_r2star_map"][m] == truth["delta_r2star_per_s"][name])
        assert np.all(truth["fe_map"][m] == row["fe_mM"])
        assert np.all(truth["pre"]["r2star_map"][m] == 20.0)
    np.testing.assert_allclose(
        truth["post"]["r2star_map"] - truth["pre"]["r2star_map"], truth["delta_r2star_map"], atol=1e-12)
    # noise-free pre: every vial at the agarose signal
    ph_mask = phantom.mask("phantom").data
    np.testing.assert_array_equal(truth["pre"]["noise_free"][ph_mask],
                                  np.broadcast_to(1000.0 * np.exp(-20.0 * np.asarray(DEFAULT_ECHO_TIMES_S)),
                                                  (int(ph_mask.sum()), 8)))
    # independent noise: pre and post air are uncorrelated (|r| < 4 / sqrt(n))
    air = phantom.mask("air").data
    a, b = pre.data[air].ravel(), post.data[air].ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 4.0 / math.sqrt(a.size)


# --------------------------------------------------------------------------- DICOM round trip
@pytest.mark.parametrize("enhanced", [False, True])
def test_dicom_round_trip(phantom, tmp_path, enhanced):
    mr, _ = render_spio_mr(phantom, snr=50.0, seed=8)
    _, stored = write_dicom(mr, tmp_path / "mr", enhanced=enhanced, return_stored=True)
    got = invivo.load(tmp_path / "mr")
    assert got.shape == mr.shape == (64, 64, 8, 8)
    assert got.meta.echo_times_s == DEFAULT_ECHO_TIMES_S  # exact
    assert got.meta.magnetic_field_t == 7.0 and got.meta.modality == "MR"
    assert got.meta.series_datetime == mr.meta.series_datetime
    np.testing.assert_array_equal(got.data, stored.data)
    np.testing.assert_allclose(got.affine, mr.affine, atol=1e-9)
    # what was stored is the image up to the uint16 quantisation of the writer
    scale = stored.data.max() / mr.data.max()
    np.testing.assert_allclose(stored.data / scale, mr.data, atol=0.51 / scale)


# --------------------------------------------------------------------------- Rician helpers
def test_rician_mean_against_scipy_and_its_limits():
    sigma = 2.0
    r = np.array([0.01, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0])
    ref = np.array([stats.rice(b=b, scale=sigma).mean() for b in r])
    np.testing.assert_allclose(rician_mean(r * sigma, sigma), ref, rtol=1e-13)
    assert float(rician_mean(0.0, sigma)) == pytest.approx(sigma * RAYLEIGH_MEAN, rel=1e-15)
    # nu >> sigma: nu + sigma^2/(2 nu) + sigma^4/(8 nu^3) + 3 sigma^6/(16 nu^5) + ..., ~ sqrt(nu^2 + sigma^2)
    for ratio in (100.0, 1e3, 1e5, 1e7, 1e8, 1.0001e8, 1e12, 1e200):
        nu, q = ratio * sigma, (1.0 / ratio) ** 2
        series = nu * (1.0 + q / 2.0 + q * q / 8.0 + 3.0 * q ** 3 / 16.0)
        got = float(rician_mean(nu, sigma))
        assert got == pytest.approx(series, rel=1e-14)
        assert got == pytest.approx(math.hypot(nu, sigma), rel=q * q + 1e-15)
    assert float(rician_mean(10.0, 10.0 / 30)) == pytest.approx(math.hypot(10.0, 10.0 / 30), rel=1e-6)
    # sigma = 0: the noise-free magnitude; arrays broadcast
    np.testing.assert_array_equal(rician_mean(np.array([0.0, 3.0, -4.0]), 0.0), [0.0, 3.0, 4.0])
    out = rician_mean(np.linspace(0, 100, 5)[:, None], np.array([0.0, 1.0, 5.0]))
    assert out.shape == (5, 3) and np.all(np.isfinite(out)) and out.dtype == np.float64
    assert rician_mean(np.ones(3, np.float32), 1.0).dtype == np.float32
    # monotone in nu, and never below nu or the Rayleigh floor
    nu = np.linspace(0, 200, 2001)
    m = rician_mean(nu, 10.0)
    assert np.all(np.diff(m) > 0) and np.all(m >= nu) and np.all(m >= 10.0 * RAYLEIGH_MEAN)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0, 2.0, 4.0, 20.0])
def test_rician_mean_against_monte_carlo(ratio):
    # 4e6 seeded samples: the standard error of the mean is <= 2.7e-4 relative (Rayleigh, the widest)
    sigma = 3.0
    x = rician_signal(np.full(4_000_000, ratio * sigma), sigma, np.random.default_rng(11))
    assert x.mean() / float(rician_mean(ratio * sigma, sigma)) == pytest.approx(1.0, abs=1e-3)


def test_rician_signal_dtype_seed_and_zero_sigma():
    nu = np.linspace(0, 50, 1000).reshape(10, 100)
    a = rician_signal(nu, 2.0, 5)
    np.testing.assert_array_equal(a, rician_signal(nu, 2.0, np.random.default_rng(5)))
    assert a.shape == nu.shape and a.dtype == np.float64 and np.all(a >= 0)
    assert rician_signal(nu.astype(np.float32), 2.0, 5).dtype == np.float32
    assert rician_signal(np.arange(5), 1.0, 0).dtype == np.float64
    np.testing.assert_array_equal(rician_signal(nu, 0.0, 1), nu)
    with pytest.raises(ParameterError, match="sigma"):
        rician_signal(nu, -1.0, 0)


# --------------------------------------------------------------------------- bad input
def test_bad_input(phantom):
    with pytest.raises(ParameterError, match="voxel_size_mm"):
        spio_vial_phantom(voxel_size_mm=0.0)
    with pytest.raises(ParameterError, match="relaxivity_per_mM_per_s"):
        spio_vial_phantom(relaxivity_per_mM_per_s=0.0)
    with pytest.raises(ParameterError, match="reserved"):
        spio_vial_phantom(vials=[Vial("agarose", fe_mM=1.0)])
    with pytest.raises(ParameterError, match="unique"):
        spio_vial_phantom(vials=[Vial("a", fe_mM=1.0), Vial("a", fe_mM=2.0)])
    with pytest.raises(ParameterError, match="not both"):
        spio_vial_phantom(vials=[Vial("a", fe_mM=1.0, cells_per_ml=1e6, pg_fe_per_cell=10.0)])
    with pytest.raises(ParameterError, match="pg_fe_per_cell > 0"):
        spio_vial_phantom(vials=[Vial("a", cells_per_ml=1e6)])
    with pytest.raises(ParameterError, match="fe_mM must be >= 0"):
        spio_vial_phantom(vials=[Vial("a", fe_mM=-0.1)])
    with pytest.raises(ParameterError, match="leaves the agarose"):
        spio_vial_phantom(vials=[Vial("a", fe_mM=1.0, centre_mm=(7.0, 0.0))])
    with pytest.raises(ParameterError, match="apart"):
        spio_vial_phantom(vials=[Vial(f"v{i}", fe_mM=0.1) for i in range(20)])
    with pytest.raises(ParameterError, match="does not hold"):
        spio_vial_phantom(shape=(40, 40, 4))
    with pytest.raises(ParameterError, match="milliseconds"):
        render_spio_mr(phantom, echo_times_s=(2.0, 5.0))
    with pytest.raises(ParameterError, match="not both"):
        render_spio_mr(phantom, noise_sigma=1.0, snr=50.0)
    with pytest.raises(ParameterError, match="snr"):
        render_spio_mr(phantom, snr=0.0)
    with pytest.raises(ParameterError, match="field_t"):
        render_spio_mr(phantom, field_t=3.0)
    with pytest.raises(ParameterError, match="s0 names"):
        render_spio_mr(phantom, s0={"liver": 5.0})
    with pytest.raises(ParameterError, match="SpioPhantom"):
        render_spio_pair(mouse_phantom(voxel_size_mm=2.0))


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="CuPy/GPU not available")
def test_gpu_phantom_render_and_rician_mean_match_cpu(phantom):
    gpu = spio_vial_phantom(device="gpu")
    assert gpu.labels.device == "gpu"
    np.testing.assert_array_equal(to_device(gpu.labels.data, "cpu"), phantom.labels.data)
    mr_g, truth_g = render_spio_mr(gpu)
    mr_c, _ = render_spio_mr(phantom)
    assert mr_g.device == "gpu"
    np.testing.assert_allclose(to_device(mr_g.data, "cpu"), mr_c.data, rtol=1e-14)
    noisy, _ = render_spio_mr(gpu, snr=50.0)
    air = to_device(noisy.data, "cpu")[phantom.mask("air").data]
    assert air.mean() == pytest.approx(20.0 * RAYLEIGH_MEAN, rel=0.01)
    nu = np.linspace(0, 300, 301)
    got = rician_mean(to_device(nu, "gpu"), 10.0)
    np.testing.assert_allclose(to_device(got, "cpu"), rician_mean(nu, 10.0), rtol=1e-12)
    with pytest.raises(ValueError, match="different devices"):
        rician_mean(to_device(nu, "gpu"), np.full(301, 10.0))
