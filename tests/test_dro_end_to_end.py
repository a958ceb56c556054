"""The IBSI SUV reference objects through the command line: invivo uptake, then roi-stats --mask / --rtstruct."""

import contextlib
import csv
import json

import pytest

from invivo.cli.main import main
from invivo.errors import InvivoWarning

from .conftest import data_path

CASES = ["DRO_0_0", "DRO_1_0", "DRO_2_0", "DRO_2_4", "DRO_3_0", "DRO_3_1", "DRO_4_0", "DRO_5_0"]


def _expected():
    with open(data_path("ibsi_suv_dro", "expected.csv")) as f:
        return {row["ID"]: row for row in csv.DictReader(f)}


@pytest.mark.parametrize("case", CASES)
def test_dro_suvbw_through_cli(case, tmp_path, capsys):
    root = data_path("ibsi_suv_dro", case)
    exp = _expected()[case]
    out = tmp_path / f"{case}_suvbw.nii.gz"
    ctx = pytest.warns(InvivoWarning, match="MBq") if case == "DRO_3_0" else contextlib.nullcontext()
    with ctx:
        assert main(["uptake", str(root / "PT"), "--unit", "suvbw", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["roi-stats", str(out), "--mask", str(root / "mask" / "DRO_mask.nii.gz"), "--json"]) == 0
    by_mask = json.loads(capsys.readouterr().out)
    assert main(["roi-stats", str(out), "--rtstruct", str(root / "RS"), "--json"]) == 0
    by_rt = json.loads(capsys.readouterr().out)
    assert list(by_rt) == ["region_1"]
    for st in (by_mask, by_rt["region_1"]):
        assert st["min"] == pytest.approx(float(exp["SUVmin_expected"]), abs=0.01)
        assert st["median"] == pytest.approx(float(exp["SUVmed_expected"]), abs=0.01)
        assert st["max"] == pytest.approx(float(exp["SUVmax_expected"]), abs=0.01)
        assert st["units"] == "SUVbw"
    # the uptake sidecar records the factor, the decay reference and the inputs
    side = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
    assert side["Invivo"]["provenance"]["inputs"]


def test_existing_output_is_refused(tmp_path, capsys):
    root = data_path("ibsi_suv_dro", "DRO_0_0")
    out = tmp_path / "suv.nii.gz"
    assert main(["uptake", str(root / "PT"), "--out", str(out)]) == 0
    assert main(["uptake", str(root / "PT"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["uptake", str(root / "PT"), "--out", str(out), "--overwrite"]) == 0


def test_unknown_structure_is_one_line_error(tmp_path, capsys):
    root = data_path("ibsi_suv_dro", "DRO_0_0")
    out = tmp_path / "suv.nii.gz"
    assert main(["uptake", str(root / "PT"), "--out", str(out)]) == 0
    assert main(["roi-stats", str(out), "--rtstruct", str(root / "RS"), "--structure", "liver"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "region_1" in err
