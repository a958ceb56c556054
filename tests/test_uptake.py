"""SUV and %ID: IBSI digital reference objects, synthetic DICOM rules, Volume-level maps."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from invivo import uptake
from invivo.backend import has_gpu, to_device
from invivo.errors import DicomError, InvivoWarning, MissingTagError, ParameterError, UnitsError
from invivo.volume import LPS_TO_RAS, Meta, Subject, Tracer, Volume

DATA = Path(__file__).parents[1].parent / "shared" / "data"
DRO = DATA / "ibsi_suv_dro"
F18 = 6586.2
ZR89 = 282240.0


# ----------------------------------------------------------------------------
# (1) IBSI SUV digital reference objects
# ----------------------------------------------------------------------------
def _dro_cases():
    if not (DRO / "expected.csv").exists():
        return []
    with open(DRO / "expected.csv", newline="") as fh:
        return [row for row in csv.DictReader(fh)]


def _dicom_affine_ras(dss) -> np.ndarray:
    """Voxel (i = column, j = row, k = slice) -> RAS+ mm for a sorted single-frame stack."""
    ds0 = dss[0]
    iop = np.asarray(ds0.ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]  # along a row (i increases), along a column (j increases)
    dr, dc = (float(x) for x in ds0.PixelSpacing)  # row spacing (between rows), column spacing
    p0 = np.asarray(ds0.ImagePositionPatient, dtype=float)
    p1 = np.asarray(dss[1].ImagePositionPatient, dtype=float)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * dc, col_dir * dr, p1 - p0, p0
    return LPS_TO_RAS @ lps


@pytest.mark.skipif(not DRO.exists(), reason=f"IBSI SUV DROs not found at {DRO}")
@pytest.mark.parametrize("case", _dro_cases(), ids=lambda c: c["ID"])
def test_ibsi_dro_suvbw(case):
    pydicom = pytest.importorskip("pydicom")
    nib = pytest.importorskip("nibabel")
    folder = DRO / case["ID"]
    dss = [pydicom.dcmread(p) for p in sorted((folder / "PT").glob("*.dcm"))]
    normal = np.cross(np.asarray(dss[0].ImageOrientationPatient[:3], float), np.asarray(dss[0].ImageOrientationPatient[3:], float))
    dss.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    if case["ID"] == "DRO_3_0":
        with pytest.warns(InvivoWarning, match=r"MBq"):
            f = uptake.suv_scale_factors(dss)
    else:
        f = uptake.suv_scale_factors(dss)
    # per-slice rescale in float, then the factor: stack as (i, j, k) = (column, row, slice)
    suv = np.stack([(d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)) * fk
                    for d, fk in zip(dss, f)], axis=-1).transpose(1, 0, 2)
    mask_img = nib.load(folder / "mask" / "DRO_mask.nii.gz")
    assert mask_img.shape == suv.shape
    np.testing.assert_allclose(mask_img.affine, _dicom_affine_ras(dss), atol=1e-3)
    vals = suv[np.asarray(mask_img.dataobj) > 0]
    got = (vals.min(), np.median(vals), vals.max())
    want = tuple(float(case[k]) for k in ("SUVmin_expected", "SUVmed_expected", "SUVmax_expected"))
    assert got == pytest.approx(want, abs=0.01), f"{case['ID']}: {got}"


# ----------------------------------------------------------------------------
# (2) synthetic DICOM datasets: every rule
# ----------------------------------------------------------------------------
INJ = datetime(2025, 3, 4, 10, 0, 0)
DOSE = 3.7e6  # Bq (100 uCi, a mouse dose)
W_KG = 0.025


def _ds(*, units="BQML", dc="START", series=INJ + timedelta(hours=1), acq=None, weight=W_KG,
        dose=DOSE, half_life=F18, start_dt=INJ, start_t="same", nuclide="^18^Fluorine", code="C-111A1",
        radiopharmaceutical="FDG", species=None, size=None, sex=None, rp=True) -> Dataset:
    ds = Dataset()
    ds.Modality = "PT"
    ds.Units = units
    if dc is not None:
        ds.DecayCorrection = dc
    ds.CorrectedImage = ["ATTN", "DECY"] if dc != "NONE" else ["ATTN"]
    if series is not None:
        ds.SeriesDate, ds.SeriesTime = series.strftime("%Y%m%d"), series.strftime("%H%M%S.%f")
    acq = series if acq is None else acq
    if acq is not None:
        ds.AcquisitionDate, ds.AcquisitionTime = acq.strftime("%Y%m%d"), acq.strftime("%H%M%S.%f")
    if weight is not None:
        ds.PatientWeight = str(weight)
    if size is not None:
        ds.PatientSize = str(size)
    if sex is not None:
        ds.PatientSex = sex
    if species is not None:
        ds.PatientSpeciesDescription = species
    if rp:
        item = Dataset()
        item.Radiopharmaceutical = radiopharmaceutical
        if dose is not None:
            item.RadionuclideTotalDose = str(dose)
        if half_life is not None:
            item.RadionuclideHalfLife = str(half_life)
        if start_dt is not None:
            item.RadiopharmaceuticalStartDateTime = start_dt.strftime("%Y%m%d%H%M%S.%f")
        if start_t == "same" and start_dt is not None:
            item.RadiopharmaceuticalStartTime = start_dt.strftime("%H%M%S.%f")
        elif start_t not in (None, "same"):
            item.RadiopharmaceuticalStartTime = start_t
        if nuclide is not None:
            c = Dataset()
            c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = code, "SRT", nuclide
            item.RadionuclideCodeSequence = Sequence([c])
        ds.RadiopharmaceuticalInformationSequence = Sequence([item])
    return ds


def _suv_bw(weight_kg, dose, elapsed_s, half_life=F18):
    """Hand formula: weight (g) / (dose * 2^(-t/T))."""
    return weight_kg * 1000.0 / (dose * 2.0 ** (-elapsed_s / half_life))


def test_bqml_start_factor_is_weight_over_decayed_dose():
    f = uptake.suv_scale_factor(_ds())
    assert f == pytest.approx(_suv_bw(W_KG, DOSE, 3600.0), rel=1e-12)
    np.testing.assert_allclose(uptake.reference_activity_bq([_ds()]), [DOSE * 2 ** (-3600 / F18)], rtol=1e-12)


def test_decay_correction_admin_does_not_decay():
    f = uptake.suv_scale_factor(_ds(dc="ADMIN"))
    assert f == pytest.approx(W_KG * 1000 / DOSE, rel=1e-12)
    assert uptake.decay_reference_datetimes([_ds(dc="ADMIN")]) == [INJ]


def test_decay_correction_none_uses_each_acquisition_time():
    series = INJ + timedelta(minutes=30)
    acqs = [series + timedelta(minutes=m) for m in (0, 10, 25)]
    dss = [_ds(dc="NONE", series=series, acq=a) for a in acqs]
    assert uptake.decay_reference_datetimes(dss) == acqs
    want = [_suv_bw(W_KG, DOSE, (a - INJ).total_seconds()) for a in acqs]
    np.testing.assert_allclose(uptake.suv_scale_factors(dss), want, rtol=1e-12)
    assert len(set(np.round(uptake.suv_scale_factors(dss), 12))) == 3


def test_series_time_after_earliest_acquisition_uses_earliest_acquisition():
    series = INJ + timedelta(hours=2)  # re-saved series
    acqs = [INJ + timedelta(minutes=60), INJ + timedelta(minutes=55), INJ + timedelta(minutes=65)]
    dss = [_ds(series=series, acq=a) for a in acqs]
    with pytest.warns(InvivoWarning, match="after the earliest AcquisitionTime"):
        refs = uptake.decay_reference_datetimes(dss)
    assert refs == [acqs[1]] * 3
    with pytest.warns(InvivoWarning, match="earliest acquisition"):
        f = uptake.suv_scale_factors(dss)
    np.testing.assert_allclose(f, _suv_bw(W_KG, DOSE, 55 * 60.0), rtol=1e-12)


def test_series_time_equal_to_acquisition_uses_series_time():
    dss = [_ds(acq=INJ + timedelta(hours=1)), _ds(acq=INJ + timedelta(hours=1, minutes=5))]
    assert uptake.decay_reference_datetimes(dss) == [INJ + timedelta(hours=1)] * 2


@pytest.mark.parametrize("with_creator", [True, False])
def test_ge_private_scan_datetime_when_series_time_is_late(with_creator):
    series, acq, ge = INJ + timedelta(hours=3), INJ + timedelta(minutes=62), INJ + timedelta(minutes=58)
    ds = _ds(series=series, acq=acq)
    if with_creator:
        ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", ge.strftime("%Y%m%d%H%M%S"))
    else:
        ds.add_new(0x0009100D, "DT", ge.strftime("%Y%m%d%H%M%S"))
    assert uptake.decay_reference_datetimes([ds]) == [ge]
    assert uptake.suv_scale_factor(ds) == pytest.approx(_suv_bw(W_KG, DOSE, 58 * 60.0), rel=1e-12)


@pytest.mark.parametrize("with_creator", [True, False])
def test_philips_activity_concentration_factor(with_creator):
    ds = _ds(units="CNTS")
    if with_creator:
        ds.private_block(0x7053, "Philips PET Private Group", create=True).add_new(0x09, "DS", "2.5")
    else:
        ds.add_new(0x70531009, "DS", "2.5")
    assert uptake.suv_scale_factor(ds) == pytest.approx(2.5 * _suv_bw(W_KG, DOSE, 3600.0), rel=1e-12)


@pytest.mark.parametrize("with_creator", [True, False])
def test_philips_suv_factor_wins(with_creator):
    ds = _ds(units="CNTS")
    if with_creator:
        blk = ds.private_block(0x7053, "Philips PET Private Group", create=True)
        blk.add_new(0x00, "DS", "0.0005")
        blk.add_new(0x09, "DS", "2.5")
    else:
        ds.add_new(0x70531000, "DS", "0.0005")
    assert uptake.suv_scale_factor(ds) == pytest.approx(0.0005, rel=1e-12)


def test_philips_factor_under_another_creator_is_not_taken():
    ds = _ds(units="CNTS")
    ds.add_new(0x70530010, "LO", "SOMEONE ELSE")
    ds.add_new(0x70531009, "DS", "2.5")
    with pytest.raises(UnitsError, match=r"\(7053,1009\)"):
        uptake.suv_scale_factor(ds)


def test_injection_time_only_on_series_date():
    ds = _ds(start_dt=None, start_t=(INJ.strftime("%H%M%S")))
    assert uptake.injection_datetime(ds) == INJ
    assert uptake.suv_scale_factor(ds) == pytest.approx(_suv_bw(W_KG, DOSE, 3600.0), rel=1e-12)


def test_injection_before_midnight_scan_after():
    inj = datetime(2025, 3, 4, 23, 30)
    series = datetime(2025, 3, 5, 0, 30)
    ds = _ds(series=series, start_dt=None, start_t="233000")
    with pytest.warns(InvivoWarning, match="previous day"):
        assert uptake.injection_datetime(ds) == inj
    with pytest.warns(InvivoWarning, match="previous day"):
        f = uptake.suv_scale_factor(ds)
    assert f == pytest.approx(_suv_bw(W_KG, DOSE, 3600.0), rel=1e-12)
    # with a full datetime there is nothing to assume
    assert uptake.suv_scale_factor(_ds(series=series, start_dt=inj)) == pytest.approx(f, rel=1e-12)


def test_dynamic_scan_starting_before_recorded_injection_keeps_the_day():
    ds = _ds(series=INJ - timedelta(seconds=20), start_dt=None, start_t=INJ.strftime("%H%M%S"))
    assert uptake.injection_datetime(ds) == INJ
    assert uptake.suv_scale_factor(ds) == pytest.approx(_suv_bw(W_KG, DOSE, -20.0), rel=1e-12)


def test_zr89_multi_day_needs_the_injection_date():
    series = INJ + timedelta(days=3)
    ds = _ds(series=series, half_life=ZR89, nuclide="^89^Zirconium", code="C-XXX", radiopharmaceutical="89Zr-oxine")
    assert uptake.suv_scale_factor(ds) == pytest.approx(_suv_bw(W_KG, DOSE, 3 * 86400.0, ZR89), rel=1e-12)
    ds_t = _ds(series=series, half_life=ZR89, nuclide="^89^Zirconium", start_dt=None, start_t=INJ.strftime("%H%M%S"))
    with pytest.raises(MissingTagError, match=r"\(0018,1078\)"):
        uptake.suv_scale_factor(ds_t)


def test_anonymised_injection_date_for_short_half_life():
    ds = _ds(start_dt=datetime(1900, 1, 1, 10, 0), start_t=None)
    with pytest.warns(InvivoWarning, match="anonymised"):
        f = uptake.suv_scale_factor(ds)
    assert f == pytest.approx(_suv_bw(W_KG, DOSE, 3600.0), rel=1e-12)
    ds_zr = _ds(series=INJ + timedelta(days=2), half_life=ZR89, nuclide="^89^Zirconium",
                start_dt=datetime(1960, 1, 1, 10, 0), start_t=None)
    with pytest.raises(ParameterError, match="anonymised"):
        uptake.suv_scale_factor(ds_zr)


def test_dose_in_mbq_is_converted_with_a_warning():
    assumptions: list[str] = []
    with pytest.warns(InvivoWarning, match="MBq"):
        f = uptake.suv_scale_factor(_ds(dose=3.7), assumptions=assumptions)
    assert f == pytest.approx(_suv_bw(W_KG, 3.7e6, 3600.0), rel=1e-12)
    assert len(assumptions) == 1 and "MBq" in assumptions[0]


def test_half_life_checks():
    with pytest.warns(InvivoWarning, match="differs by"):
        f = uptake.suv_scale_factor(_ds(half_life=6000.0))
    assert f == pytest.approx(_suv_bw(W_KG, DOSE, 3600.0, 6000.0), rel=1e-12)  # the DICOM value is used
    with pytest.raises(MissingTagError, match=r"\(0018,1075\) is missing \(the tracer looks like 18F"):
        uptake.suv_scale_factor(_ds(half_life=None))  # IBSI DRO_error_5_0: an error, not a table look-up
    with pytest.raises(MissingTagError, match=r"\(0018,1075\)"):
        uptake.suv_scale_factor(_ds(half_life=None, nuclide=None, radiopharmaceutical="tracer X"))
    ga = _ds(half_life=4057.7, nuclide="^68^Gallium", code="C-131A1", radiopharmaceutical="Ga68-PSMA")
    assert uptake.suv_scale_factor(ga) == pytest.approx(_suv_bw(W_KG, DOSE, 3600.0, 4057.7), rel=1e-12)


# body normalisers, hand-computed: W = 70 kg, H = 1.75 m (175 cm), BMI = 22.857142857
W, H = 70.0, 1.75
LBM_JAMES = {"M": 1.10 * 70 - 128 * (70 / 175) ** 2, "F": 1.07 * 70 - 148 * (70 / 175) ** 2}  # 56.52, 51.22 kg
LBM_JANMA = {"M": 9270 * 70 / (6680 + 216 * 70 / 1.75 ** 2), "F": 9270 * 70 / (8780 + 244 * 70 / 1.75 ** 2)}
IBW = {"M": 48.0 + 1.06 * (175 - 152), "F": 45.5 + 0.91 * (175 - 152)}  # 72.38, 66.43 kg
BSA_CM2 = 0.007184 * 70 ** 0.425 * 175 ** 0.725 * 1e4  # Du Bois, 18481 cm²


def test_hand_computed_constants():
    assert LBM_JAMES["M"] == pytest.approx(56.52) and LBM_JAMES["F"] == pytest.approx(51.22)
    assert LBM_JANMA["M"] == pytest.approx(55.857, abs=1e-3) and LBM_JANMA["F"] == pytest.approx(45.197, abs=1e-3)
    assert IBW["M"] == pytest.approx(72.38) and IBW["F"] == pytest.approx(66.43)
    assert BSA_CM2 == pytest.approx(18481, abs=2)


@pytest.mark.parametrize("sex", ["M", "F"])
@pytest.mark.parametrize("kind,table", [("lbm", LBM_JAMES), ("lbm-janma", LBM_JANMA), ("ibw", IBW)])
def test_lbm_ibw_factors(kind, table, sex):
    ds = _ds(weight=W, size=H, sex=sex, dose=370e6)
    a_ref = 370e6 * 2 ** (-3600 / F18)
    assert uptake.suv_scale_factor(ds, kind=kind) == pytest.approx(table[sex] * 1000 / a_ref, rel=1e-12)
    assert uptake.body_normaliser(Subject(weight_kg=W, height_m=H, sex=sex), kind) == pytest.approx(table[sex] * 1000, rel=1e-12)


def test_bsa_factor_and_sex_other():
    ds = _ds(weight=W, size=H, dose=370e6)  # no sex needed for BSA
    a_ref = 370e6 * 2 ** (-3600 / F18)
    assert uptake.suv_scale_factor(ds, kind="bsa") == pytest.approx(BSA_CM2 / a_ref, rel=1e-12)
    with pytest.warns(InvivoWarning, match="mean of the male and female"):
        n = uptake.body_normaliser(Subject(weight_kg=W, height_m=H, sex="O"), "lbm")
    assert n == pytest.approx(500 * (LBM_JAMES["M"] + LBM_JAMES["F"]), rel=1e-12)


def test_gml_and_cm2ml_are_already_suv():
    assert uptake.suv_scale_factor(_ds(units="GML", weight=None)) == 1.0  # SUVbw stored: nothing needed
    ds = _ds(units="GML", weight=W, size=H, sex="M")
    ds.SUVType = "LBM"
    assert uptake.suv_scale_factor(ds, kind="lbm") == 1.0
    assert uptake.suv_scale_factor(ds, kind="bw") == pytest.approx(W / LBM_JAMES["M"], rel=1e-12)
    cm = _ds(units="CM2ML", weight=W, size=H)
    assert uptake.suv_scale_factor(cm, kind="bsa") == 1.0
    assert uptake.suv_scale_factor(cm, kind="bw") == pytest.approx(W * 1000 / BSA_CM2, rel=1e-12)


def test_missing_weight_suv_raises_percent_id_inputs_still_work():
    ds = _ds(weight=None)
    with pytest.raises(MissingTagError, match=r"\(0010,1030\)"):
        uptake.suv_scale_factor(ds)
    np.testing.assert_allclose(uptake.reference_activity_bq([ds]), [DOSE * 2 ** (-3600 / F18)], rtol=1e-12)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"weight": 0}, ParameterError, r"PatientWeight \(0010,1030\).* 0 kg"),
    ({"weight": 25, "species": "mouse"}, ParameterError, r"grams.*0\.025 kg"),
    ({"weight": 300, "species": "Rattus norvegicus"}, ParameterError, "grams"),
    ({"weight": 650}, ParameterError, "500 kg"),
    ({"rp": False}, MissingTagError, r"\(0054,0016\)"),
    ({"start_dt": None, "start_t": None}, MissingTagError, r"\(0018,1078\).*\(0018,1072\)"),
    ({"dose": 0}, ParameterError, r"\(0018,1074\) is 0"),
    ({"dose": None}, MissingTagError, r"\(0018,1074\)"),
    ({"dose": -5e6}, ParameterError, r"\(0018,1074\)"),
    ({"units": "PROPCNTS"}, UnitsError, "'PROPCNTS'"),
    ({"units": "CNTS"}, UnitsError, r"\(7053,1000\)"),
    ({"dc": None}, MissingTagError, r"\(0054,1102\)"),
    ({"half_life": 0}, ParameterError, r"\(0018,1075\)"),
    ({"start_dt": INJ + timedelta(hours=5), "start_t": None, "half_life": ZR89, "nuclide": None},
     ParameterError, "after the scan start"),
])
def test_bad_inputs(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        uptake.suv_scale_factor(_ds(**kwargs))


@pytest.mark.parametrize("kwargs,kind,exc,match", [
    ({"size": None, "sex": "M"}, "lbm", MissingTagError, r"\(0010,1020\)"),
    ({"size": 0, "sex": "M"}, "ibw", ParameterError, r"\(0010,1020\)"),
    ({"size": 175, "sex": "M"}, "ibw", ParameterError, "looks like cm"),
    ({"size": 1.75}, "ibw", MissingTagError, r"\(0010,0040\)"),
    ({"size": 1.75, "sex": "X"}, "lbm-janma", ParameterError, r"'X'"),
    ({"size": 1.75, "sex": "M", "weight": 0.025, "species": "mouse"}, "lbm", ParameterError, "adult humans"),
])
def test_bad_body_measures(kwargs, kind, exc, match):
    kw = {"weight": W, **kwargs}
    with pytest.raises(exc, match=match):
        uptake.suv_scale_factor(_ds(**kw), kind=kind)


def test_series_inconsistencies_and_kind_names():
    a, b = _ds(), _ds(units="CNTS")
    with pytest.raises(DicomError, match=r"Units \(0054,1001\) differ"):
        uptake.suv_scale_factors([a, b])
    with pytest.raises(DicomError, match=r"\(0054,1102\) differs"):
        uptake.suv_scale_factors([_ds(), _ds(dc="ADMIN")])
    with pytest.raises(ParameterError, match="kind must be one of"):
        uptake.suv_scale_factor(a, kind="lean")
    with pytest.raises(ParameterError, match="empty"):
        uptake.suv_scale_factors([])


# ----------------------------------------------------------------------------
# (3) Volume-level maps with analytic truth
# ----------------------------------------------------------------------------
def _xp_params():
    params = [pytest.param("cpu", id="numpy")]
    params.append(pytest.param("gpu", id="cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(not has_gpu(), reason="no CuPy/CUDA")]))
    return params


def _pet(data, *, units="BQML", dc="START", weight=W_KG, frame_start_s=None, tracer=None, **meta_kw):
    tracer = tracer or Tracer(radiopharmaceutical="FDG", isotope="18F", half_life_s=F18, injected_activity_bq=DOSE,
                              injection_datetime=INJ)
    meta = Meta(modality="PT", units=units, decay_correction=dc, series_datetime=INJ + timedelta(hours=1),
                frame_start_s=frame_start_s, tracer=tracer, subject=Subject(weight_kg=weight, species="mouse"), **meta_kw)
    return Volume(data, np.diag([0.4, 0.4, 0.8, 1.0]), meta)


@pytest.mark.parametrize("device", _xp_params())
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_volume_suv_and_percent_id_from_metadata(device, dtype):
    rng = np.random.default_rng(0)
    conc = rng.integers(100, 30000, size=(6, 5, 4)).astype(dtype)
    vol = _pet(to_device(conc, device))  # NIfTI-like: no suv_bw_factor, no reference activity
    a_ref = DOSE * 2 ** (-3600 / F18)
    out = uptake.suv(vol)
    want_dtype = np.float32 if dtype == np.float32 else np.float64
    assert out.data.dtype == want_dtype and out.device == device and out.meta.units == "SUVbw"
    tol = 1e-6  # float32 output: relative rounding ~6e-8 per operation
    np.testing.assert_allclose(out.numpy(), conc.astype(np.float64) * 25.0 / a_ref, rtol=tol)
    pid = uptake.percent_id(vol)
    np.testing.assert_allclose(pid.numpy(), conc.astype(np.float64) / a_ref * 100, rtol=tol)
    assert pid.meta.units == "%ID/g" and pid.data.dtype == want_dtype and pid.device == device
    cc = uptake.percent_id(vol, per="cc")
    g = uptake.percent_id(vol, per="g", density_g_per_ml=1.05)
    np.testing.assert_allclose(g.numpy() * 1.05, cc.numpy(), rtol=1e-6)
    assert cc.meta.units == "%ID/cc"
    json.dumps(out.meta.extra["uptake"])
    json.dumps(pid.meta.extra["uptake"])
    assert out.meta.extra["uptake"]["factor"] == pytest.approx(25.0 / a_ref, rel=1e-12)
    assert vol.meta.units == "BQML" and vol.meta.extra == {}  # input untouched


def test_volume_dynamic_decay_none_factor_per_frame():
    # uncorrected frames of a constant true concentration c0 (Bq/mL at injection)
    starts = (0.0, 300.0, 900.0, 1800.0, 3600.0)
    c0 = 5000.0
    dt = 3600.0 + np.asarray(starts)
    frames = c0 * 2.0 ** (-dt / F18)
    data = np.ones((3, 3, 2, len(starts))) * frames
    vol = _pet(data, dc="NONE", frame_start_s=starts)
    out = uptake.suv(vol)
    np.testing.assert_allclose(out.data, c0 * 25.0 / DOSE, rtol=1e-9)  # SUV constant over frames
    f = np.asarray(out.meta.extra["uptake"]["factor"])
    assert f.shape == (2, 5) and len(set(np.round(f[0], 15))) == 5
    pid = uptake.percent_id(vol, per="cc")
    np.testing.assert_allclose(pid.data, c0 / DOSE * 100, rtol=1e-9)
    # ADMIN: already decay corrected to injection -> same truth with constant data
    adm = uptake.suv(_pet(np.full((3, 3, 2, 5), c0), dc="ADMIN", frame_start_s=starts))
    np.testing.assert_allclose(adm.data, c0 * 25.0 / DOSE, rtol=1e-12)


def test_volume_uses_meta_factor_per_slice_and_frame():
    k, t = 3, 2
    f = np.arange(1, k * t + 1, dtype=float).reshape(k, t) * 1e-4
    data = np.full((2, 2, k, t), 1000.0, np.float32)
    vol = _pet(data, suv_bw_factor=f, reference_activity_bq=np.full((k, t), 2e6))
    out = uptake.suv(vol)
    np.testing.assert_allclose(out.data, np.broadcast_to(1000.0 * f[None, None], data.shape), rtol=1e-6)
    assert out.data.dtype == np.float32
    np.testing.assert_allclose(uptake.percent_id(vol, per="cc").data, 1000.0 / 2e6 * 100, rtol=1e-6)
    # a 3D volume with a (K, 1) factor
    vol3 = _pet(np.full((2, 2, k), 10.0), suv_bw_factor=f[:, :1])
    np.testing.assert_allclose(uptake.suv(vol3).data, np.broadcast_to(10.0 * f[None, None, :, 0], (2, 2, k)), rtol=1e-12)
    with pytest.raises(ParameterError, match=r"suv_bw_factor has shape"):
        uptake.suv(_pet(np.ones((2, 2, k)), suv_bw_factor=np.ones(5)))


def test_volume_other_kinds_scale_the_bw_factor():
    tr = Tracer(isotope="18F", injected_activity_bq=370e6, injection_datetime=INJ)
    meta = Meta(modality="PT", units="BQML", decay_correction="START", series_datetime=INJ + timedelta(hours=1),
                tracer=tr, subject=Subject(weight_kg=W, height_m=H, sex="F"))
    vol = Volume(np.full((2, 2, 2), 1e4), np.eye(4), meta)
    a_ref = 370e6 * 2 ** (-3600 / F18)
    np.testing.assert_allclose(uptake.suv(vol, kind="lbm").data, 1e4 * LBM_JAMES["F"] * 1000 / a_ref, rtol=1e-9)
    np.testing.assert_allclose(uptake.suv(vol, kind="lbm-janma").data, 1e4 * LBM_JANMA["F"] * 1000 / a_ref, rtol=1e-9)
    np.testing.assert_allclose(uptake.suv(vol, kind="ibw").data, 1e4 * IBW["F"] * 1000 / a_ref, rtol=1e-9)
    bsa = uptake.compute(vol, "suvbsa")
    np.testing.assert_allclose(bsa.data, 1e4 * BSA_CM2 / a_ref, rtol=1e-9)
    assert bsa.meta.units == "SUVbsa"
    # SUVbw -> SUVlbm from stored SUV units needs no activity at all
    bw = uptake.suv(vol)
    np.testing.assert_allclose(uptake.suv(bw, kind="lbm").data, uptake.suv(vol, kind="lbm").data, rtol=1e-12)


def test_volume_residual_and_kbq_units():
    t_res = INJ + timedelta(minutes=10)
    tr = Tracer(isotope="18F", injected_activity_bq=DOSE, injection_datetime=INJ,
                residual_activity_bq=0.2e6, residual_datetime=t_res)
    vol = _pet(np.full((2, 2, 2), 4.0), units="kBq/mL", tracer=tr)
    ref_time = INJ + timedelta(hours=1)
    a_net = DOSE * 2 ** (-3600 / F18) - 0.2e6 * 2 ** (-3000 / F18)
    assert uptake.net_injected_activity_bq(tr, ref_time) == pytest.approx(a_net, rel=1e-12)
    out = uptake.suv(vol)
    np.testing.assert_allclose(out.data, 4000.0 * 25.0 / a_net, rtol=1e-9)
    assert out.meta.extra["uptake"]["residual_applied"] is True
    np.testing.assert_allclose(uptake.percent_id(vol).data, 4000.0 / a_net * 100, rtol=1e-9)
    # applied once: SUVbw -> %ID/g of the SUV output equals %ID/g of the activity map
    np.testing.assert_allclose(uptake.percent_id(out).data, 4000.0 / a_net * 100, rtol=1e-9)


def test_volume_percent_id_without_weight_and_from_gml():
    vol = _pet(np.full((2, 2, 2), 1000.0), weight=None)
    with pytest.raises(MissingTagError, match=r"\(0010,1030\)"):
        uptake.suv(vol)
    np.testing.assert_allclose(uptake.percent_id(vol).data, 1000.0 / (DOSE * 2 ** (-3600 / F18)) * 100, rtol=1e-9)
    gml = _pet(np.full((2, 2, 2), 2.0), units="GML")  # SUVbw 2 in a 25 g mouse: 8 %ID/g
    np.testing.assert_allclose(uptake.percent_id(gml).data, 8.0, rtol=1e-12)
    np.testing.assert_allclose(uptake.suv(gml).data, 2.0, rtol=1e-12)


def test_volume_suv_unavailable_reasons():
    v = _pet(np.ones((2, 2, 2)), units="CNTS", suv_unavailable="Units are CNTS and (7053,1000) is missing")
    with pytest.raises(MissingTagError, match=r"unavailable.*\(7053,1000\)"):
        uptake.suv(v)
    with pytest.raises(UnitsError, match="PROPCNTS"):
        uptake.suv(_pet(np.ones((2, 2, 2)), units="PROPCNTS", suv_unavailable="Units 'PROPCNTS' are not supported"))
    with pytest.raises(UnitsError, match="cannot be converted"):
        uptake.percent_id(_pet(np.ones((2, 2, 2)), units="CNTS"))
    with pytest.raises(MissingTagError, match="decay_correction"):
        uptake.suv(_pet(np.ones((2, 2, 2)), dc=None))
    with pytest.raises(UnitsError, match=r"%ID/g"):
        uptake.suv(uptake.percent_id(_pet(np.ones((2, 2, 2)))))
    # CNTS with a factor from the loader: SUV and %ID via the factor
    f = 1e-3
    cnts = _pet(np.full((2, 2, 2), 500.0), units="CNTS", suv_bw_factor=np.full((2, 1), f))
    np.testing.assert_allclose(uptake.suv(cnts).data, 0.5, rtol=1e-12)
    np.testing.assert_allclose(uptake.percent_id(cnts).data, 0.5 / 25.0 * 100, rtol=1e-12)


def test_compute_dispatch_and_parameters():
    vol = _pet(np.full((2, 2, 2), 1000.0))
    assert set(uptake.UNIT_KINDS) >= {"suvbw", "suvlbm", "suvbsa", "suvibw", "idg", "idcc"}
    assert uptake.compute(vol, "idcc").meta.units == "%ID/cc"
    assert uptake.compute(vol, "SUVBW").meta.units == "SUVbw"
    with pytest.raises(ParameterError, match="unit must be one of"):
        uptake.compute(vol, "suvxyz")
    # "suv": activity concentration gives SUVbw, equal to asking for it
    np.testing.assert_array_equal(uptake.compute(vol, "suv").data, uptake.compute(vol, "suvbw").data)
    with pytest.raises(ParameterError, match="per must be"):
        uptake.percent_id(vol, per="ml")
    with pytest.raises(ParameterError, match="density_g_per_ml"):
        uptake.percent_id(vol, density_g_per_ml=0)


def test_decay_correct_and_net_activity():
    assert uptake.decay_correct(1.0, elapsed_s=2 * F18, half_life_s=F18) == pytest.approx(4.0, rel=1e-15)
    v = np.array([1.0, 2.0], np.float32)
    out = uptake.decay_correct(v, elapsed_s=np.array([0.0, -F18]), half_life_s=F18)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [1.0, 1.0], rtol=1e-7)
    with pytest.raises(ParameterError, match="half_life_s"):
        uptake.decay_correct(v, elapsed_s=1.0, half_life_s=0)
    tr = Tracer(isotope="89Zr", injected_activity_bq=1e6, injection_datetime=INJ, residual_activity_bq=1e5)
    with pytest.warns(InvivoWarning, match="residual_datetime is missing"):
        a = uptake.net_injected_activity_bq(tr, INJ + timedelta(seconds=ZR89))
    assert a == pytest.approx(0.9e6 / 2, rel=1e-12)
    with pytest.raises(ParameterError, match="injection time"):
        uptake.net_injected_activity_bq(Tracer(isotope="18F", injected_activity_bq=1e6), INJ)


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="no CuPy/CUDA")
def test_gpu_parity_dynamic():
    rng = np.random.default_rng(1)
    data = rng.random((8, 8, 4, 3)).astype(np.float32) * 1e4
    cpu = uptake.suv(_pet(data, dc="NONE", frame_start_s=(0.0, 60.0, 120.0)))
    gpu = uptake.suv(_pet(to_device(data, "gpu"), dc="NONE", frame_start_s=(0.0, 60.0, 120.0)))
    assert gpu.device == "gpu"
    np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), rtol=1e-6)
