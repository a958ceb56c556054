"""`invivo demo`: the built-in phantom study, end to end, recovers the phantom's truth."""

import json

import pytest

from invivo.cli.main import main
from invivo.demo import TOLERANCE_REL, TRUE_PERCENT_ID_PER_G, run_demo


def test_demo_cli_recovers_truth(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "PASSED" in text and "FAIL" not in text
    assert (out / "organ_uptake.tsv").exists()
    idg = next(out.rglob("*_idg.nii.gz"))
    side = json.loads(idg.with_name(idg.name.replace(".nii.gz", ".json")).read_text())
    assert side["Invivo"]["meta"]["units"] == "%ID/g"
    assert side["Invivo"]["provenance"]["inputs"][0]["n_files"] == 180
    # a second run refuses to overwrite, then replaces on request
    assert main(["demo", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_demo_rows_against_truth(tmp_path):
    res = run_demo(tmp_path / "d", voxel_size_mm=1.0)
    assert res.passed, res.table_text()
    assert {r["organ"] for r in res.rows} == set(TRUE_PERCENT_ID_PER_G)
    for r in res.rows:
        assert r["idg_mean"] == pytest.approx(TRUE_PERCENT_ID_PER_G[r["organ"]], rel=TOLERANCE_REL)
        # SUVbw = %ID/g x weight(g) / 100 for a 25 g mouse
        assert r["true_suv"] == pytest.approx(r["true_idg"] * 25.0 / 100.0, rel=1e-9)
