"""PET headers that cannot support a quantity: the series still loads, the quantity fails with one line."""

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
