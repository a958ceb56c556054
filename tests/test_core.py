"""Volume, isotopes and the backend rule."""

import math

import numpy as np
import pytest

from invivo import Meta, Volume, backend, isotopes
from invivo.errors import GeometryError, ParameterError


def test_volume_validates_affine():
    data = np.zeros((2, 3, 4))
    with pytest.raises(GeometryError, match="4x4"):
        Volume(data, np.eye(3))
    bad = np.eye(4)
    bad[0, 0] = np.nan
    with pytest.raises(GeometryError, match="NaN"):
        Volume(data, bad)
    bad = np.eye(4)
    bad[3, 0] = 1
    with pytest.raises(GeometryError, match="last row"):
        Volume(data, bad)
    with pytest.raises(GeometryError, match="singular"):
        Volume(data, np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ParameterError, match="3D or 4D"):
        Volume(np.zeros((2, 2, 2, 2, 2)), np.eye(4))


def test_volume_geometry_and_copy_semantics():
    aff = np.array([[0.0, -0.5, 0, 10], [0.25, 0, 0, -5], [0, 0, 2.0, 1], [0, 0, 0, 1]])
    v = Volume(np.arange(24.0).reshape(2, 3, 4), aff, Meta(modality="MR"))
    assert v.voxel_size_mm == pytest.approx((0.25, 0.5, 2.0))
    assert v.voxel_volume_ml == pytest.approx(0.25 * 0.5 * 2.0 / 1000)
    np.testing.assert_allclose(v.world_coordinates([1, 2, 3]), [10 - 1.0, -5 + 0.25, 7.0])
    aff[0, 3] = 99  # the Volume keeps its own copy
    assert v.affine[0, 3] == 10
    w = v.with_data(v.data * 2, units="x")
    assert w.meta.units == "x" and v.meta.units is None and w.same_grid(v)


def test_frame_slices_metadata():
    m = Meta(modality="PT", frame_start_s=(0.0, 60.0), frame_duration_s=(60.0, 120.0))
    m.reference_activity_bq = np.array([[1.0, 2.0]] * 3)
    v = Volume(np.ones((2, 2, 3, 2)), np.eye(4), m)
    f = v.frame(1)
    assert f.shape == (2, 2, 3) and f.meta.frame_start_s == (60.0,) and f.meta.frame_duration_s == (120.0,)
    np.testing.assert_array_equal(f.meta.reference_activity_bq, [[2.0]] * 3)


@pytest.mark.parametrize("text,name", [
    ("18F", "18F"), ("F-18", "18F"), ("^18^Fluorine", "18F"), ("Fluorine-18", "18F"), ("C-111A1", "18F"),
    ("89Zr", "89Zr"), ("Zr-89", "89Zr"), ("^89^Zirconium", "89Zr"), ("64Cu", "64Cu"), ("Cu64", "64Cu"),
    ("Tc-99m", "99mTc"), ("99mTc", "99mTc"), ("In-111", "111In"), ("Lu177", "177Lu"), ("124I", "124I"),
    ("^68^Gallium", "68Ga"), ("11C", "11C")])
def test_isotope_spellings(text, name):
    assert isotopes.lookup(text).name == name


def test_isotope_find_in_tracer_names_and_unknown():
    assert isotopes.find("[89Zr]Zr-oxine CAR-T").name == "89Zr"
    assert isotopes.find("Ga68-PSMA").name == "68Ga"
    assert isotopes.find("FDG").name == "18F"
    assert isotopes.find("water") is None
    with pytest.raises(ParameterError, match="unknown radionuclide"):
        isotopes.lookup("unobtainium-300")


def test_half_lives_match_science_table():
    table = {"18F": 6586.2, "11C": 1220.4, "68Ga": 4062.6, "64Cu": 45721.1, "89Zr": 282240, "124I": 360806,
             "99mTc": 21624, "111In": 242326, "177Lu": 574300}
    for name, t in table.items():
        assert isotopes.half_life_s(name) == t


def test_decay_factor_truth():
    t_half = isotopes.half_life_s("89Zr")
    assert isotopes.decay_factor(t_half, t_half) == pytest.approx(0.5, rel=1e-15)
    assert isotopes.decay_factor(3 * 86400, t_half) == pytest.approx(math.exp(-math.log(2) * 3 * 86400 / t_half), rel=1e-14)
    assert isotopes.decay_factor(-t_half, t_half) == pytest.approx(2.0)
    with pytest.raises(ParameterError, match="half_life_s"):
        isotopes.decay_factor(1.0, 0.0)


def test_backend_rules(xp):
    a = xp.asarray(np.arange(4.0, dtype=np.float32))
    assert backend.get_array_module(a) is xp
    assert backend.float_dtype(np.int16) == np.float64 and backend.float_dtype(np.float32) == np.float32
    host = backend.to_device(a, "cpu")
    assert isinstance(host, np.ndarray) and host.dtype == np.float32
    with pytest.raises(ValueError, match="device must be"):
        backend.to_device(a, "tpu")


def test_backend_without_gpu_explains():
    if backend.has_gpu():
        pytest.skip("a GPU is present")
    with pytest.raises(ParameterError, match="CuPy"):
        backend.to_device(np.zeros(2), "gpu")


def test_mixed_devices_rejected():
    backend.check_same_device(a=np.zeros(2), b=np.ones(2))
    if backend.has_gpu():
        with pytest.raises(ValueError, match="different devices"):
            backend.check_same_device(a=np.zeros(2), b=backend.to_device(np.ones(2), "gpu"))


def test_count_average_time():
    # the mean of a decaying rate over [0, D] equals the rate at t_avg: (1 - e^-x)/x = e^(-lambda t_avg)
    hl, d = 6586.2, 1800.0
    lam = math.log(2) / hl
    t = isotopes.count_average_time_s(d, hl)
    assert (1 - math.exp(-lam * d)) / (lam * d) == pytest.approx(math.exp(-lam * t), rel=1e-14)
    assert t < d / 2
    assert isotopes.count_average_time_s(d, None) == d / 2


def test_dicom_date_time_parsing():
    from datetime import date, datetime, time

    from invivo.dicomtime import combine, parse_da, parse_dt, parse_tm
    from invivo.io.dicom import parse_datetime

    assert parse_da("20250301") == date(2025, 3, 1) and parse_da("2025.03.01") == date(2025, 3, 1)
    assert parse_tm("235930.5") == time(23, 59, 30, 500000) and parse_tm("10:05") == time(10, 5)
    assert parse_dt("20250301235930.25+0100") == datetime(2025, 3, 1, 23, 59, 30, 250000)
    assert combine("20250301", "0930") == datetime(2025, 3, 1, 9, 30)
    assert parse_da("2025") is None and parse_tm("xx") is None
    assert parse_datetime("20250301", "093000.000001") == datetime(2025, 3, 1, 9, 30, 0, 1)
    assert parse_datetime(None, "0930") is None
    with pytest.raises(ValueError, match="bad DICOM"):
        parse_datetime("2025", "0930")
