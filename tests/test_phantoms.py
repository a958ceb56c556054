"""The validation scripts in phantoms/: they run, pass, and fail when the truth is wrong."""

import math

import pytest

from .conftest import DATA, load_phantom_script, table_rows


@pytest.fixture(scope="module")
def vu():
    return load_phantom_script("validate_uptake")


def test_validate_uptake_quick_passes(vu, capsys):
    rc = vu.main(["--quick"])
    out = capsys.readouterr().out
    rows = table_rows(out)
    status = [r.split()[-1] for r in rows]
    assert rc == 0, out
    assert "FAIL" not in status, out
    assert set(status) <= {"PASS", "SKIP"}
    assert "PASSED" in out
    # every part produced rows: the three decay corrections static and dynamic, the human SUV kinds, noise
    for case in ("18F static START", "18F static ADMIN", "18F static NONE", "18F dynamic START", "18F dynamic ADMIN",
                 "18F dynamic NONE", "18F human", "noise 10%"):
        assert any(r.startswith(case) or case in r for r in rows), case
    for kind in ("SUVlbm (James)", "SUVlbm (Janmahasatian)", "SUVbsa", "SUVibw"):
        assert any(kind in r for r in rows), kind
    if (DATA / "ibsi_suv_dro" / "expected.csv").is_file():
        assert sum(r.startswith("DRO_") and r.endswith("PASS") for r in rows) == 8 * 3 + 1  # + the MBq note
        assert "MBq" in out
    else:
        assert any(r.split()[-1] == "SKIP" for r in rows)


def test_missing_data_folder_is_a_skip_not_a_failure(vu, tmp_path):
    table = vu.Table()
    vu.validate_dros(table, tmp_path / "absent")
    assert [r.status for r in table.rows] == ["SKIP"]
    assert not table.failed
    assert "not found" in table.notes[0]


def test_a_wrong_truth_is_caught(vu, monkeypatch):
    # the script's own half-life off by 0.2 %: the decay-reference activity no longer matches invivo's
    monkeypatch.setitem(vu.HALF_LIFE_S, "18F", 6600.0)
    table = vu.Table()
    vu.validate_mouse_case(table, isotope="18F", decay="START", dynamic=False, voxel_mm=2.0)
    by_quantity = {r.quantity.split(" (")[0]: r for r in table.rows}
    assert by_quantity["A_ref"].status == "FAIL"
    # 1 h after injection: 2^(-3600/6586.2) vs 2^(-3600/6600)
    expected = 2.0 ** (3600 / 6600.0 - 3600 / 6586.2) - 1.0
    assert by_quantity["A_ref"].error == pytest.approx(abs(expected), rel=1e-6)
    assert table.failed


def test_human_normalisers_match_published_values(vu):
    n = vu.human_normalisers(70.0, 1.75, "M")
    assert n["bw"] == 70000.0
    assert n["lbm"] == pytest.approx(1000 * (1.10 * 70 - 128 * (70 / 175) ** 2))  # 56.52 kg
    assert n["ibw"] == pytest.approx(72380.0)  # 48.0 + 1.06 x 23 kg
    # Du Bois: 70 kg, 175 cm -> 1.85 m² (the value tabulated by BSA calculators)
    assert round(n["bsa"] / 1e4, 2) == 1.85
    bmi = 70 / 1.75 ** 2
    assert n["lbm-janma"] == pytest.approx(1000 * 9270 * 70 / (6680 + 216 * bmi))
    f = vu.human_normalisers(60.0, 1.65, "F")
    assert f["lbm"] == pytest.approx(1000 * (1.07 * 60 - 148 * (60 / 165) ** 2))
    assert f["ibw"] == pytest.approx(1000 * (45.5 + 0.91 * 13))
    assert not math.isclose(f["lbm-janma"], n["lbm-janma"])
