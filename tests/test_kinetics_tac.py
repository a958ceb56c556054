"""TAC extraction and assembly against truth: decay handling for START / ADMIN / NONE images, days-apart scans."""

import math

import numpy as np
import pytest

from invivo.errors import ParameterError
from invivo.kinetics.tac import assemble_tac, read_tac, tac, write_tac
from invivo.synth import mouse_phantom, render_pet

A_INJ = 3.7e6
from invivo.isotopes import half_life_s

HL = half_life_s("89Zr")


@pytest.fixture(scope="module")
def phantom():
    return mouse_phantom(voxel_size_mm=1.0)


@pytest.mark.parametrize("decay", ["START", "ADMIN", "NONE"])
def test_constant_uptake_gives_a_flat_injection_corrected_curve(phantom, decay):
    """%ID/g constant in time: decay corrected to the injection the concentration is %ID/g / 100 x A_inj
    (density 1 g/mL) in every frame, whatever the scanner's decay correction."""
    pet, _ = render_pet(phantom, percent_id_per_g={"liver": 12.0, "tumour": 5.0}, injected_activity_bq=A_INJ,
                        scan_delay_s=3600.0, frame_starts_s=[0, 600, 1800, 5400], frame_durations_s=[600, 1200, 3600, 7200],
                        decay_correction=decay)
    df = tac(pet, {"liver": phantom.mask("liver"), "tumour": phantom.mask("tumour")})
    np.testing.assert_allclose(df["liver"], 0.12 * A_INJ, rtol=1e-9)
    np.testing.assert_allclose(df["tumour"], 0.05 * A_INJ, rtol=1e-9)
    np.testing.assert_allclose(df["frame_start"], 3600.0 + np.array([0, 600, 1800, 5400]))
    assert df.attrs["invivo"]["time_origin"] == "injection"
    # physical activity: decayed to the frame (frame-average of the decay)
    phys = tac(pet, {"liver": phantom.mask("liver")}, decay="none")
    lam = math.log(2) / HL
    s, e = df["frame_start"].to_numpy(), df["frame_end"].to_numpy()
    avg_decay = (np.exp(-lam * s) - np.exp(-lam * e)) / (lam * (e - s))
    np.testing.assert_allclose(phys["liver"], 0.12 * A_INJ * avg_decay, rtol=1e-9)


def test_scans_days_apart_assemble_into_one_curve(phantom, tmp_path):
    days = [1, 2, 4, 7]
    scans = [render_pet(phantom, percent_id_per_g={"tumour": 2.0 + d}, injected_activity_bq=A_INJ,
                        scan_delay_s=d * 86400.0, frame_starts_s=[0], frame_durations_s=[1800],
                        decay_correction="START" if d % 2 else "NONE")[0] for d in days]
    df = assemble_tac(scans[::-1], {"tumour": phantom.mask("tumour")})
    np.testing.assert_allclose(df["frame_start"], np.array(days) * 86400.0)
    np.testing.assert_allclose(df["tumour"], (2.0 + np.array(days)) / 100 * A_INJ, rtol=1e-9)
    assert len(df.attrs["invivo"]["scans"]) == 4
    path = write_tac(df, tmp_path / "tac.tsv")
    frames, regions = read_tac(path)
    np.testing.assert_allclose(frames.start_s, df["frame_start"])
    np.testing.assert_allclose(regions["tumour"], df["tumour"], rtol=1e-9)


def test_tac_files_and_bad_input(tmp_path, phantom):
    (tmp_path / "t.tsv").write_text("time\ta\tb\n0\t1\t2\n60\t3\t4\n")
    frames, regions = read_tac(tmp_path / "t.tsv")
    assert list(regions.columns) == ["a", "b"] and frames.mid_s.tolist() == pytest.approx([0.0, 60.0])
    (tmp_path / "bad.tsv").write_text("frame_start\tframe_end\ta\n0\t60\t1\n60\t120\tx\n")
    with pytest.raises(ParameterError, match="row 1"):
        read_tac(tmp_path / "bad.tsv")
    (tmp_path / "over.tsv").write_text("frame_start\tframe_end\ta\n0\t60\t1\n30\t120\t2\n")
    with pytest.raises(ParameterError, match="overlap"):
        read_tac(tmp_path / "over.tsv")
    (tmp_path / "none.tsv").write_text("start\tend\ta\n0\t60\t1\n")
    with pytest.raises(ParameterError, match="frame_start"):
        read_tac(tmp_path / "none.tsv")
    pet, _ = render_pet(phantom, percent_id_per_g={"liver": 1.0}, injected_activity_bq=A_INJ, scan_delay_s=0.0)
    with pytest.raises(ParameterError, match="decay must be"):
        tac(pet, {"liver": phantom.mask("liver")}, decay="later")
    empty = phantom.mask("liver")
    empty.data[:] = False
    with pytest.raises(ParameterError, match="empty"):
        tac(pet, {"x": empty})
