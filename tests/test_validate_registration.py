"""phantoms/validate_registration.py: it runs and passes, and it fails when the truth is wrong."""

from types import SimpleNamespace

import numpy as np
import pytest

from .conftest import load_phantom_script, table_rows


@pytest.fixture(scope="module")
def vreg():
    return load_phantom_script("validate_registration")


def test_validate_registration_quick_passes(vreg, capsys):
    rc = vreg.main(["--quick"])
    out = capsys.readouterr().out
    rows = table_rows(out)
    status = [r.split()[-1] for r in rows]
    assert rc == 0, out
    assert "FAIL" not in status, out
    assert set(status) <= {"PASS", "INFO"}
    assert out.rstrip().splitlines()[-1].startswith("PASSED")
    # every pair, every case: TRE mean and max judged; the summaries judged
    for pair in ("PET", "SPECT", "CT"):
        for k in (1, 2):
            case = f"1 {pair}->MR #{k:02d}"
            assert any(r.startswith(case) and "TRE mean" in r and r.endswith("PASS") for r in rows), case
            assert any(r.startswith(case) and "TRE max" in r and r.endswith("PASS") for r in rows), case
        assert any(r.startswith(f"1 {pair}->MR all") and "worst TRE max" in r and r.endswith("PASS") for r in rows)
        assert any(r.startswith(f"1 {pair}->MR all") and "cases failed" in r and r.endswith("PASS") for r in rows)
    for case in ("2 MR->MR #01", "3 dynamic PET->MR", "4 affine PET->MR #01"):
        assert any(r.startswith(case) and "TRE max" in r and r.endswith("PASS") for r in rows), case
    assert any(r.startswith("3 dynamic PET->MR") and "frames summed" in r and r.endswith("PASS") for r in rows)
    # the command line on DICOM and NIfTI: the transform file read by SimpleITK, the sidecar, resample, QC
    for fmt in ("DICOM", "NIfTI"):
        case = f"5 files {fmt}"
        mine = [r for r in rows if r.startswith(case)]
        assert any("(SimpleITK reads T.tfm)" in r and "TRE max" in r and r.endswith("PASS") for r in mine), fmt
        for what in ("invivo register: exit code", "sidecar MatrixRAS", "SimpleITK TransformPoint",
                     "invivo resample: exit code", "resample grid", "max |Y - X|", "QC PNGs"):
            assert any(what in r and r.endswith("PASS") for r in mine), (fmt, what)


def test_a_wrong_truth_is_caught(vreg, monkeypatch):
    # the moving image shows the object 0.3 mm further along S than the truth says: a registration
    # that finds the image's true position is 0.3 mm off the (wrong) truth everywhere, which is
    # above both PET tolerances at 1 mm voxels (0.1 mean, 0.25 max)
    from invivo.synth import mouse_phantom

    render = vreg.render_moving
    shift = np.eye(4)
    shift[2, 3] = 0.3
    monkeypatch.setattr(vreg, "render_moving",
                        lambda ph, modality, voxel_mm, motion, seed: render(ph, modality, voxel_mm, shift @ motion,
                                                                            seed))
    phantom = mouse_phantom(voxel_size_mm=1.0)
    points = vreg.target_points(phantom, 0, 200)
    fixed = vreg.render_fixed(phantom, 0.5, 0)
    motion = vreg.draw_motions(3, 1)
    table = vreg.Table()
    res = vreg.validate_pair(table, phantom, fixed, "PET", 1.0, motion, points, seed=0)
    assert table.failed
    by_q = {r.quantity.split(" (mm)")[0]: r for r in table.rows if r.case == "1 PET->MR #01"}
    assert by_q["TRE mean"].status == "FAIL" and by_q["TRE max"].status == "FAIL"
    # the TRE is the planted offset (the registration itself is right to a few hundredths of a mm)
    assert res[0]["mean"] == pytest.approx(0.3, abs=0.05)
    # and the diagnosis says so: started at the (wrong) truth, the registration still moves 0.3 mm away
    diag = next(r for r in table.rows if r.case == "1 PET->MR #01" and r.quantity.startswith("diagnosis"))
    assert diag.status == "INFO" and diag.recovered == pytest.approx(0.3, abs=0.05)
    summary = [r for r in table.rows if r.case == "1 PET->MR all"]
    assert [r.status for r in summary if "cases failed" in r.quantity] == ["FAIL"]


def test_tre_lps_and_quality_rules(vreg):
    from invivo.align import Transform

    rng = np.random.default_rng(0)
    pts = rng.uniform(-10, 10, (50, 3))
    m = vreg.draw_motions(1, 1)[0]
    assert vreg.tre(vreg.apply(m, pts), m, pts) == (0.0, 0.0)
    off = vreg.apply(m, pts) + [0.0, 0.1, 0.0]
    assert vreg.tre(off, m, pts) == pytest.approx((0.1, 0.1), abs=1e-12)
    # RAS <-> LPS: a SimpleITK transform made from an invivo Transform maps LPS points like FLIP M FLIP
    t = Transform(m)
    m_lps = vreg.sitk_matrix_lps(t.to_sitk())
    np.testing.assert_allclose(vreg.FLIP @ m_lps @ vreg.FLIP, m, atol=1e-12)
    np.testing.assert_allclose(vreg.ras_to_lps(vreg.apply(m, pts)), vreg.apply(m_lps, vreg.ras_to_lps(pts)),
                               atol=1e-12)
    # quality "failed" is a FAIL row even when the TRE is within tolerance
    table = vreg.Table()
    reg = SimpleNamespace(quality="failed", warnings=["only 5 % overlap"], iterations=10)
    res = vreg.judge(table, "x", vreg.apply(m, pts), m, pts, 1.0, reg, seconds=1.0)
    assert not res["ok"] and [r.status for r in table.rows] == ["PASS", "PASS", "FAIL", "INFO"]
