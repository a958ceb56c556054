"""Results as DICOM: %ID/g and R2* Parametric Maps and tumour/liver SEG written with highdicom from a
synthetic PET and multi-echo MR, read back with the same values on the source's grid, validated by dciodvfy."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest

import invivo
from invivo.cli.main import main
from invivo.errors import GeometryError, InvivoError, OutputExistsError, ParameterError, UnitsError
from invivo.io.dicom_export import (PARAMETRIC_MAP_SOP_CLASS, SEGMENTATION_SOP_CLASS, quantity_code, read_parametric_map,
                                    read_seg, segment_codes, write_parametric_map, write_seg)
from invivo.relax import R2StarModel
from invivo.synth import mouse_phantom, render_mr, render_pet, write_dicom
from invivo.uptake import percent_id
from invivo.volume import Volume

pytest.importorskip("highdicom")

TRUE_IDG = {"tumour_rim": 8.0, "tumour_core": 4.0, "liver": 12.0}
TRUE_R2 = {"liver": 200.0, "tumour_rim": 90.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """PET (%ID/g truth per organ) and classic + enhanced multi-echo MR of one phantom, as DICOM."""
    root = tmp_path_factory.mktemp("export")
    ph = mouse_phantom(voxel_size_mm=1.0, shape=(30, 24, 48))
    pet, _ = render_pet(ph, percent_id_per_g=TRUE_IDG, injected_activity_bq=5e6, scan_delay_s=3600.0)
    write_dicom(pet, root / "PT")
    mr, _ = render_mr(ph, r2star_per_s=TRUE_R2)
    write_dicom(mr, root / "MR", series_number=2)
    write_dicom(mr, root / "MRE", enhanced=True, series_number=3)
    src_pt = invivo.load(root / "PT")
    idg = percent_id(src_pt)
    src_mr = invivo.load(root / "MR")
    r2 = R2StarModel(src_mr.meta.echo_times_s, method="nlls").fit(src_mr).volume("r2star")
    out = root / "out"
    out.mkdir()
    return {"root": root, "out": out, "src_pt": src_pt, "idg": idg, "src_mr": src_mr, "r2": r2}


def dciodvfy(path) -> list[str]:
    """dciodvfy's Error lines for ``path`` (pydicom must read it too)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    pydicom.dcmread(path)
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]


# -- Parametric Maps ------------------------------------------------------------------------------

def test_percent_id_map_round_trip(data):
    idg, src = data["idg"], data["src_pt"]
    # the map itself is right: the organs' %ID/g as rendered
    for organ, value in TRUE_IDG.items():
        assert np.isclose(idg.data, value, rtol=1e-4).any(), organ
    path = write_parametric_map(idg, data["root"] / "PT", data["out"] / "idg.dcm", quantity="%ID/g")
    back = read_parametric_map(path)
    assert back.data.dtype == np.float32
    np.testing.assert_array_equal(back.data, idg.data.astype(np.float32))  # bit for bit
    assert back.spatial_shape == src.spatial_shape
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-4)
    assert back.meta.units == "%ID/g"
    assert back.meta.extra["unit_ucum"] == {"value": "%/g", "scheme": "UCUM", "meaning": "percent per gram"}
    assert back.meta.extra["quantity"]["scheme"] == "99INVIVO"
    # the same study and frame of reference, a new series that references the source series
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == PARAMETRIC_MAP_SOP_CLASS
    assert "FloatPixelData" in ds
    assert ds.StudyInstanceUID == src.meta.study_uid
    assert ds.FrameOfReferenceUID == src.meta.extra["frame_of_reference_uid"]
    assert ds.SeriesInstanceUID != src.meta.series_uid
    assert [s.SeriesInstanceUID for s in ds.ReferencedSeriesSequence] == [src.meta.series_uid]
    assert len(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == src.shape[2]
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99INVIVO"
    assert dciodvfy(path) == []
    # invivo.load dispatches a Parametric Map to the reader
    np.testing.assert_array_equal(invivo.load(path).data, back.data)


@pytest.mark.parametrize("series", ["MR", "MRE"], ids=["classic", "enhanced"])
def test_r2star_map_round_trip(data, series):
    r2, src = data["r2"], data["src_mr"]
    liver = np.isclose(r2.data, TRUE_R2["liver"], rtol=1e-3)
    assert liver.sum() > 500  # the fit recovered the rendered liver R2*
    path = write_parametric_map(r2, data["root"] / series, data["out"] / f"r2_{series}.dcm", quantity="R2*")
    back = read_parametric_map(path)
    np.testing.assert_array_equal(back.data, r2.data.astype(np.float32))
    np.testing.assert_allclose(back.affine, invivo.load(data["root"] / series).affine, atol=1e-4)
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-4)
    assert back.meta.units == "s-1"
    assert back.meta.extra["quantity"] == {"value": "126395", "scheme": "DCM", "meaning": "R2*"}
    assert back.meta.extra["unit_ucum"]["value"] == "/s"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    # every echo at a slice (a file, or a frame of the enhanced file) is a source of that frame
    derivation = ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence
    assert len(derivation) == len(src.meta.echo_times_s)
    assert dciodvfy(path) == []


def test_suv_unit_code_and_fill_value(data, tmp_path):
    idg = data["idg"]
    vol = idg.with_data(np.where(idg.data > 10, np.nan, idg.data), units="SUVbw")
    with pytest.raises(ParameterError, match="NaN/inf voxels .* fill_value"):
        write_parametric_map(vol, data["root"] / "PT", tmp_path / "suv.dcm", quantity="SUVbw")
    assert not (tmp_path / "suv.dcm").exists()
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted((data["root"] / "PT").iterdir())]
    path = write_parametric_map(vol, headers, tmp_path / "suv.dcm", quantity="SUVbw", unit="g/mL",  # source as datasets
                                fill_value=-1.0, series_number=7, series_description="SUVbw test")
    back = read_parametric_map(path)
    expected = np.where(np.isnan(vol.data), -1.0, vol.data).astype(np.float32)
    np.testing.assert_array_equal(back.data, expected)
    assert back.meta.units == "SUVbw"
    assert back.meta.extra["unit_ucum"]["value"] == "g/ml{SUVbw}"
    assert back.meta.extra["quantity"]["value"] == "126401"
    assert (back.meta.series_number, back.meta.series_description) == (7, "SUVbw test")
    np.testing.assert_allclose(back.affine, data["src_pt"].affine, atol=1e-4)
    assert dciodvfy(path) == []


def test_quantity_codes():
    assert (quantity_code("suvbw").value, quantity_code("Ktrans").value, quantity_code("ki").scheme_designator) == \
        ("126401", "126312", "99INVIVO")
    assert quantity_code("cells per voxel").meaning == "Labeled cells"
    with pytest.raises(ParameterError):
        quantity_code("  ")


# -- SEG --------------------------------------------------------------------------------------------

def _masks(idg: Volume) -> dict[str, Volume]:
    v = idg.data
    return {"tumour": idg.with_data((np.isclose(v, 8.0, rtol=1e-3) | np.isclose(v, 4.0, rtol=1e-3))),
            "liver": idg.with_data(np.isclose(v, 12.0, rtol=1e-3)),
            "uptake above 5": idg.with_data(v > 5.0)}  # overlaps both: segments are stored separately


def test_seg_round_trip(data):
    src, masks = data["src_pt"], _masks(data["idg"])
    assert masks["tumour"].data.sum() == 160 and masks["liver"].data.sum() == 688  # the phantom's voxel counts
    path = write_seg(masks, data["root"] / "PT", data["out"] / "rois.dcm")
    back = read_seg(path)
    assert list(back) == list(masks)
    for name, m in masks.items():
        assert back[name].data.dtype == bool
        np.testing.assert_array_equal(back[name].data, m.data)
        np.testing.assert_allclose(back[name].affine, src.affine, atol=1e-4)
    seg = back["tumour"].meta.extra["segment"]
    assert (seg["category"]["meaning"], seg["type"]["value"]) == ("Morphologically Abnormal Structure", "108369006")
    assert back["liver"].meta.extra["segment"]["type"]["meaning"] == "Liver"
    assert back["uptake above 5"].meta.extra["segment"]["type"]["meaning"] == "Tissue"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.SOPClassUID == SEGMENTATION_SOP_CLASS and ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID == src.meta.extra["frame_of_reference_uid"]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.meta.series_uid
    assert dciodvfy(path) == []
    # onto an explicit reference grid: the same masks
    again = read_seg(path, reference=src)
    np.testing.assert_array_equal(again["liver"].data, masks["liver"].data)


def test_segment_codes():
    assert segment_codes("Tumor 2")[1].meaning == "Tumor"
    assert segment_codes("left kidney")[1].value == "64033007"
    assert segment_codes("lungs")[0].meaning == "Anatomical Structure"
    assert segment_codes("ROI-7")[1].meaning == "Tissue"


# -- bad input -----------------------------------------------------------------------------------

def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and isinstance(exc.value, InvivoError)
    return msg


def test_bad_input_errors(data, tmp_path):
    idg, pt = data["idg"], data["root"] / "PT"
    shifted = Volume(idg.data, idg.affine @ np.array([[1, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]), idg.meta)
    with pytest.raises(GeometryError, match="not on the grid of the source .* resample") as e:
        write_parametric_map(shifted, pt, tmp_path / "a.dcm", quantity="%ID/g")
    _one_line(e)
    cropped = Volume(idg.data[:, :, :40], idg.affine, idg.meta)
    with pytest.raises(GeometryError, match=r"shape \(30, 24, 40\) vs \(30, 24, 48\)"):
        write_parametric_map(cropped, pt, tmp_path / "a.dcm", quantity="%ID/g")
    with pytest.raises(UnitsError, match="'furlongs' has no UCUM code") as e:
        write_parametric_map(idg, pt, tmp_path / "a.dcm", quantity="%ID/g", unit="furlongs")
    _one_line(e)
    with pytest.raises(UnitsError, match="no units"):
        write_parametric_map(idg.with_data(idg.data, units=None), pt, tmp_path / "a.dcm", quantity="x")
    four_d = Volume(np.stack([idg.data, idg.data], axis=-1), idg.affine, idg.meta)
    with pytest.raises(ParameterError, match="4D .* one frame") as e:
        write_parametric_map(four_d, pt, tmp_path / "a.dcm", quantity="%ID/g")
    _one_line(e)
    masks = _masks(idg)
    with pytest.raises(ParameterError, match="mask 'spleen' .* is empty") as e:
        write_seg({**masks, "spleen": idg.with_data(np.zeros(idg.shape, bool))}, pt, tmp_path / "s.dcm")
    _one_line(e)
    with pytest.raises(ParameterError, match="values other than 0 and 1"):
        write_seg({"labels": idg}, pt, tmp_path / "s.dcm")
    with pytest.raises(GeometryError, match="mask 'tumour'"):
        write_seg({"tumour": Volume(masks["tumour"].data, shifted.affine)}, pt, tmp_path / "s.dcm")
    with pytest.raises(InvivoError, match="no DICOM image series"):
        write_parametric_map(idg, tmp_path, tmp_path / "a.dcm", quantity="%ID/g")
    assert not list(tmp_path.glob("*.dcm"))
    (tmp_path / "exists.dcm").write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        write_parametric_map(idg, pt, tmp_path / "exists.dcm", quantity="%ID/g")
    assert (tmp_path / "exists.dcm").read_bytes() == b"x"
    with pytest.raises(InvivoError, match="not a DICOM Parametric Map"):
        read_parametric_map(next((data["root"] / "PT").iterdir()))


# -- command line --------------------------------------------------------------------------------

def test_cli_round_trip(data, tmp_path, capsys):
    idg, pt = data["idg"], data["root"] / "PT"
    invivo.save(idg, tmp_path / "idg.nii.gz")  # the sidecar carries the unit
    out = tmp_path / "idg_pm.dcm"
    assert main(["export", str(tmp_path / "idg.nii.gz"), "--source", str(pt), "--out", str(out),
                 "--quantity", "%ID/g"]) == 0
    back = read_parametric_map(out)
    np.testing.assert_array_equal(back.data, invivo.load(tmp_path / "idg.nii.gz").data.astype(np.float32))
    assert back.meta.units == "%ID/g"
    masks = _masks(idg)
    for name in ("tumour", "liver"):
        invivo.save(masks[name].with_data(masks[name].data.astype(np.uint8)), tmp_path / f"{name}.nii.gz")
    seg = tmp_path / "seg.dcm"
    assert main(["export", "--seg", f"tumour={tmp_path / 'tumour.nii.gz'}", f"liver={tmp_path / 'liver.nii.gz'}",
                 "--source", str(pt), "--out", str(seg)]) == 0
    rois = read_seg(seg)
    assert list(rois) == ["tumour", "liver"]
    for name in rois:
        np.testing.assert_array_equal(rois[name].data, masks[name].data)
    capsys.readouterr()
    # a map on another grid: one line, exit 2
    invivo.save(Volume(idg.data[:, :, :40], idg.affine, idg.meta), tmp_path / "crop.nii.gz")
    assert main(["export", str(tmp_path / "crop.nii.gz"), "--source", str(pt), "--out", str(tmp_path / "c.dcm"),
                 "--quantity", "%ID/g"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "GeometryError" not in err and "crop.nii.gz" in err and "resample" in err
    # existing output without --overwrite; then with it
    assert main(["export", str(tmp_path / "idg.nii.gz"), "--source", str(pt), "--out", str(out),
                 "--quantity", "%ID/g"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "idg.nii.gz"), "--source", str(pt), "--out", str(out),
                 "--quantity", "%ID/g", "--overwrite"]) == 0
    assert main(["export", "--source", str(pt), "--out", str(out)]) == 2
    assert "either a MAP" in capsys.readouterr().err


def test_scan_lists_maps_and_segmentations(data, tmp_path):
    """`invivo.scan` of a folder holding the source, a Parametric Map and a SEG: the map's unit, the SEG's slices."""
    import shutil

    root = tmp_path / "study"
    shutil.copytree(data["root"] / "PT", root / "PT")
    write_parametric_map(data["idg"], root / "PT", root / "PM" / "idg.dcm", quantity="%ID/g", unit="%ID/g")
    write_seg(_masks(data["idg"]), root / "PT", root / "SEG" / "rois.dcm")
    t = invivo.scan(root).set_index("modality")
    n = data["src_pt"].shape[2]
    assert t.loc["SEG", "n_slices"] == n  # 3 segments x n frames
    assert t.loc["OT", "units"] == "%ID/g" and t.loc["OT", "n_slices"] == n
    assert t.loc["PT", "units"] == "BQML"
