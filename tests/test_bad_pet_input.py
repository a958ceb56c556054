"""PET headers that cannot support a quantity: the series still loads, the quantity fails with one line."""

import numpy as np
import pydicom
import pytest

import invivo
from invivo import uptake
from invivo.cli.main import main
from invivo.errors import InvivoError, MissingTagError, ParameterError, UnitsError


def _edit(folder, fn):
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        fn(ds)
        ds.save_as(f)


def test_no_weight_suv_fails_but_percent_id_works(dro_copy):
    _edit(dro_copy, lambda ds: delattr(ds, "PatientWeight"))
    vol = invivo.load(dro_copy)
    with pytest.raises(MissingTagError, match=r"PatientWeight \(0010,1030\)"):
        uptake.suv(vol)
    idg = uptake.percent_id(vol)
    assert idg.meta.units == "%ID/g" and float(idg.data.max()) > 0


def test_weight_zero(dro_copy):
    _edit(dro_copy, lambda ds: setattr(ds, "PatientWeight", "0"))
    with pytest.raises(InvivoError, match="PatientWeight"):
        uptake.suv(invivo.load(dro_copy))


def test_no_radiopharmaceutical_information(dro_copy):
    _edit(dro_copy, lambda ds: delattr(ds, "RadiopharmaceuticalInformationSequence"))
    vol = invivo.load(dro_copy)
    for fn in (uptake.suv, uptake.percent_id):
        with pytest.raises(InvivoError, match="RadiopharmaceuticalInformationSequence"):
            fn(vol)


def test_no_injection_time(dro_copy):
    def drop(ds):
        item = ds.RadiopharmaceuticalInformationSequence[0]
        for kw in ("RadiopharmaceuticalStartTime", "RadiopharmaceuticalStartDateTime"):
            if kw in item:
                delattr(item, kw)
    _edit(dro_copy, drop)
    with pytest.raises(MissingTagError, match="RadiopharmaceuticalStart"):
        uptake.suv(invivo.load(dro_copy))


def test_dose_zero(dro_copy):
    _edit(dro_copy, lambda ds: setattr(ds.RadiopharmaceuticalInformationSequence[0], "RadionuclideTotalDose", "0"))
    with pytest.raises(InvivoError, match=r"RadionuclideTotalDose"):
        uptake.percent_id(invivo.load(dro_copy))


def test_unknown_units(dro_copy):
    _edit(dro_copy, lambda ds: setattr(ds, "Units", "PROPCPS"))
    with pytest.raises(UnitsError, match="PROPCPS"):
        uptake.suv(invivo.load(dro_copy))


def test_mouse_weight_in_grams(dro_copy):
    def mouse(ds):
        ds.PatientWeight = "25"
        ds.PatientSpeciesDescription = "Mus musculus"
    _edit(dro_copy, mouse)
    with pytest.raises(ParameterError, match="grams"):
        uptake.suv(invivo.load(dro_copy))


def test_cli_reports_one_line_and_writes_nothing(dro_copy, tmp_path, capsys):
    _edit(dro_copy, lambda ds: delattr(ds, "PatientWeight"))
    out = tmp_path / "suv.nii.gz"
    assert main(["uptake", str(dro_copy), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "PatientWeight" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [dro_copy]
    assert main(["uptake", str(dro_copy), "--out", str(out), "--unit", "idg"]) == 0


def test_dicomdir_is_skipped(dro_copy):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "TEST"
    ds.DirectoryRecordSequence = []
    ds.save_as(dro_copy / "DICOMDIR", enforce_file_format=True)
    table = invivo.scan(dro_copy)
    assert len(table) == 1 and table.attrs["skipped_files"] == 1
    assert invivo.load(dro_copy).shape == (256, 256, 20)


@pytest.fixture
def gml_copy(tmp_path):
    from .conftest import data_path
    import shutil

    dst = tmp_path / "GML"
    shutil.copytree(data_path("ibsi_suv_dro", "DRO_2_0", "PT"), dst)
    return dst


def _mask():
    import nibabel as nib

    from .conftest import data_path

    return np.asarray(nib.load(str(data_path("ibsi_suv_dro", "DRO_2_0", "mask", "DRO_mask.nii.gz"))).dataobj) > 0


@pytest.mark.parametrize("suv_type,sex,units,unit", [("LBM", "M", "GML", "SUVlbm"), ("LBM", "O", "GML", "SUVlbm"),
                                                      ("IBW", "F", "GML", "SUVibw"), ("LBMJANMA", "F", "GML", "SUVlbm"),
                                                      ("BSA", "M", "CM2ML", "SUVbsa")])
def test_stored_suv_keeps_its_kind(gml_copy, suv_type, sex, units, unit):
    """IBSI DRO_2_1 / 2_2 / 2_3 / 2_6: values stored as SUV of a kind are that SUV (0.2 / 1 / 4)."""
    def edit(ds):
        ds.SUVType, ds.PatientSex, ds.Units = suv_type, sex, units
    _edit(gml_copy, edit)
    import contextlib

    from invivo.errors import InvivoWarning

    ctx = pytest.warns(InvivoWarning, match="mean of the male and female") if sex == "O" else contextlib.nullcontext()
    with ctx:
        out = uptake.compute(invivo.load(gml_copy), "suv")
    d = out.data[_mask()]
    assert out.meta.units == unit
    assert (d.min(), np.median(d), d.max()) == pytest.approx((0.2, 1.0, 4.0), abs=1e-6)


@pytest.mark.parametrize("change,match", [({"PatientSex": None}, "sex is missing"), ({"PatientSex": "X"}, "'X'"),
                                          ({"PatientSize": None}, "height is missing"), ({"PatientSize": "0"}, "0 m")])
def test_stored_suvibw_without_body_data_is_refused(gml_copy, change, match):
    """IBSI DRO_error_2_2 .. 2_5."""
    def edit(ds):
        ds.SUVType = "IBW"
        for k, v in change.items():
            if v is None:
                delattr(ds, k)
            else:
                setattr(ds, k, v)
    _edit(gml_copy, edit)
    with pytest.raises(InvivoError, match=match):
        uptake.compute(invivo.load(gml_copy), "suv")


def test_missing_half_life_is_refused(dro_copy):
    """IBSI DRO_error_5_0."""
    _edit(dro_copy, lambda ds: delattr(ds.RadiopharmaceuticalInformationSequence[0], "RadionuclideHalfLife"))
    with pytest.raises(MissingTagError, match=r"RadionuclideHalfLife \(0018,1075\) is missing"):
        uptake.suv(invivo.load(dro_copy))


@pytest.mark.parametrize("edit,match", [
    (lambda ds: setattr(ds.RadiopharmaceuticalInformationSequence[0], "RadionuclideTotalDose", "-5"), "RadionuclideTotalDose"),
    (lambda ds: delattr(ds.RadiopharmaceuticalInformationSequence[0], "RadionuclideTotalDose"), "RadionuclideTotalDose"),
    (lambda ds: setattr(ds, "Units", "PROPCNTS"), "PROPCNTS"),
    (lambda ds: setattr(ds, "Units", "CNTS"), "CNTS"),
])
def test_ibsi_error_objects(dro_copy, edit, match):
    """IBSI DRO_error_3_1, 3_0, 2_7, 2_6."""
    _edit(dro_copy, edit)
    with pytest.raises(InvivoError, match=match):
        uptake.suv(invivo.load(dro_copy))
