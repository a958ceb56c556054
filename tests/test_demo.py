"""``invivo demo`` end to end (the small study: 1 CAR-T mouse, 2 + 2 anti-PD-L1 mice), the rerun that
reuses finished steps, a failing subject that does not stop the others, and the report."""

import json
import shutil

import numpy as np
import pytest

from invivo.cli.main import main
from invivo.demo import run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "d"
    return run_demo(out, small=True)


def test_demo_recovers_truth(demo):
    assert demo.study.ok, demo.study.failures
    bad = [c for c in demo.checks if not c["ok"]]
    assert not bad, "\n".join(f"{c['what']}: truth {c['truth']:.5g} got {c['recovered']:.5g}" for c in bad)
    measures = {c["what"].split()[-1] for c in demo.checks}
    # every kind of number the pipeline produces is judged against the truth
    for m in ("idg_mean", "r2star_mean", "dr2star_mean", "cells_pet", "cells_mri", "Ki_per_h", "specific_fraction",
              "k_blood_tumour_per_h", "idg_core_to_rim", "dr2star_core_to_rim"):
        assert m in measures, m
    assert len(demo.checks) > 100
    assert demo.passed


def test_demo_outputs(demo):
    res = demo.study
    out = res.out_dir
    for t in ("measures", "kinetics", "registrations", "profiles"):
        assert (out / "tables" / f"{t}.tsv").exists()
        assert (out / "tables" / f"{t}.parquet").exists()
    import pandas as pd

    back = pd.read_parquet(out / "tables" / "measures.parquet")
    assert len(back) == len(res.table)
    assert {"subject", "group", "session", "time_h", "roi", "measure", "value", "unit"} <= set(back.columns)
    # BIDS-derivatives layout, each map with its JSON sidecar carrying provenance
    idg = sorted(out.glob("derivatives/invivo/sub-cart1/ses-d1/pet/sub-cart1_ses-d1_idg.nii.gz"))
    assert idg and idg[0].with_name(idg[0].name.replace(".nii.gz", ".json")).exists()
    assert list(out.glob("derivatives/invivo/sub-cart1/ses-d7/anat/*dR2starmap.nii.gz"))
    assert list(out.glob("derivatives/invivo/sub-pdl1/ses-d3/xfm/*.tfm"))
    html = (out / "report.html").read_text()
    for section in ("Co-registration", "Uptake", "SPIO MRI", "Labeled cells", "Kinetics", "Recovered against truth"):
        assert section in html, section
    pngs = list((out / "figures").glob("*.png"))
    assert len(pngs) >= 6
    for p in pngs:
        assert p.name in html
    prov = json.loads((out / "study.json").read_text())
    assert prov["invivo_version"] and prov["study_sha256"] and not prov["failures"]


def test_rerun_reuses_steps_and_isolates_a_failing_subject(demo, tmp_path):
    from invivo.study import load_study, run

    src = demo.out_dir
    study_text = (src / "study.toml").read_text()
    # a subject whose PET folder holds no DICOM: it fails, the others complete
    bad_dir = src / "inputs" / "dicom" / "bad1" / "d1" / "pet"
    bad_dir.mkdir(parents=True, exist_ok=True)
    (bad_dir / "notes.txt").write_text("not an image")
    extra = ('\n[[subject]]\nid = "bad1"\ngroup = "aPDL1"\n\n[[scan]]\nsubject = "bad1"\nsession = "d1"\n'
             'kind = "pet"\npath = "dicom/bad1/d1/pet"\n')
    sf = src / "study_with_bad.toml"
    sf.write_text(study_text.replace("[registration]", extra + "\n[registration]"))
    out = tmp_path / "rerun"
    shutil.copytree(src / "results", out)
    res = run(load_study(sf), out, overwrite=True, subjects=["pdl1", "bad1"], report=False)
    assert list(res.failures) == ["bad1"] and "bad1" not in set(res.table.subject)
    assert len(res.reused) >= 5  # the 2 MR->MR and 3 PET->MR registrations of pdl1
    first = demo.study.table
    a = first[(first.subject == "pdl1") & (first.measure == "idg_mean")].sort_values(["session", "roi"])
    b = res.table[(res.table.subject == "pdl1") & (res.table.measure == "idg_mean")].sort_values(["session", "roi"])
    np.testing.assert_allclose(b.value.to_numpy(), a.value.to_numpy(), rtol=1e-12)


def test_run_cli_check_and_refusal(demo, capsys):
    sf = demo.out_dir / "study.toml"
    assert main(["run", str(sf), "--out", str(demo.out_dir / "results"), "--check"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["run", str(sf), "--check"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["run", str(sf)]) == 2
    assert "--out is required" in capsys.readouterr().err
    # an existing report is not overwritten without --overwrite
    assert main(["run", str(sf), "--out", str(demo.out_dir / "results"), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_demo_uncertainties_cover_the_errors(demo):
    """cells_pet_sd / cells_mri_sd (voxel noise) against the truth: every error within 4 SD, and SDs are finite."""
    tab = demo.study.table
    for m in ("cells_pet", "cells_mri"):
        val = tab[(tab.measure == m) & tab.truth.notna()].set_index(["subject", "session", "roi"])
        sd = tab[tab.measure == f"{m}_sd"].set_index(["subject", "session", "roi"]).value.reindex(val.index)
        assert len(val) and np.isfinite(sd).all() and (sd > 0).all(), m
        z = ((val.value - val.truth) / sd).abs()
        assert (z <= 4).all(), z[z > 4]
        lim = tab[tab.measure == f"{m}_min"].set_index(["subject", "session", "roi"]).value.reindex(val.index)
        np.testing.assert_allclose(lim, 3 * sd, rtol=1e-12)


def test_demo_serum_integral_is_exact():
    from scipy.integrate import quad

    from invivo.demo import _serum_integral, _serum_samples

    ts, cs = _serum_samples()
    for t in (0.0, 0.1, 3.3, 24.0, 144.0, 150.5):
        ref = quad(lambda x: np.interp(x, ts, cs), 0, t, points=ts[ts < t], limit=200)[0]
        assert _serum_integral(t)[0] == pytest.approx(ref, rel=1e-12, abs=1e-12)


def test_sphere_and_threshold_rois(demo, tmp_path):
    """A sphere ROI drawn where the phantom's tumour core is gives the labels' tumour_core numbers exactly (both are
    the voxels whose centres lie within 2 mm of (11, 0, -18) in baseline space, carried to each PET); a threshold ROI
    lies inside its parent and is hotter."""
    from invivo.study import load_study, run

    src = demo.out_dir
    extra = ('\n[[roi]]\nname = "core_sphere"\nsphere = [11.0, 0.0, -18.0]\nradius_mm = 2.0\n\n'
             '[[roi]]\nname = "hot"\nthreshold = 90\nwithin = "tumour"\n')
    sf = src / "study_spheres.toml"
    sf.write_text((src / "study.toml").read_text().replace("[registration]", extra + "\n[registration]"))
    out = tmp_path / "spheres"
    shutil.copytree(src / "results", out)
    res = run(load_study(sf), out, overwrite=True, subjects=["pdl1"], report=False)
    t = res.table[(res.table.measure == "idg_mean") & (res.table.modality == "pet")].set_index(["session", "roi"])
    for ses in ("d1", "d3", "d6"):
        assert t.loc[(ses, "core_sphere"), "value"] == pytest.approx(t.loc[(ses, "tumour_core"), "value"], rel=1e-12)
        assert t.loc[(ses, "core_sphere"), "n_voxels"] == t.loc[(ses, "tumour_core"), "n_voxels"]
        assert t.loc[(ses, "hot"), "n_voxels"] < t.loc[(ses, "tumour"), "n_voxels"]
        assert t.loc[(ses, "hot"), "value"] > t.loc[(ses, "tumour"), "value"]


def test_partial_volume_correction_in_the_pipeline(demo, tmp_path):
    """[uptake] pv_fwhm_mm: idg_mean_pvc = idg_mean / RC, RC the closed-form sphere recovery at the ROI's
    equivalent-sphere diameter (from its voxel count), only for the ROIs named in pv_rois."""
    from invivo.roi import sphere_recovery
    from invivo.study import load_study, run

    src = demo.out_dir
    text = (src / "study.toml").read_text().replace('units = ["idg", "suvbw"]',
                                                    'units = ["idg", "suvbw"]\npv_fwhm_mm = 1.5\n'
                                                    'pv_rois = ["tumour", "spleen"]')
    sf = src / "study_pv.toml"
    sf.write_text(text)
    out = tmp_path / "pv"
    shutil.copytree(src / "results", out)
    res = run(load_study(sf), out, overwrite=True, subjects=["pdl1"], report=False)
    t = res.table[res.table.modality == "pet"].set_index(["session", "roi", "measure"])
    assert not any(t.index.get_level_values("roi")[t.index.get_level_values("measure") == "idg_mean_pvc"]
                   .isin(["liver", "heart"]))
    for ses in ("d1", "d3", "d6"):
        for r in ("tumour", "spleen"):
            row = t.loc[(ses, r, "idg_mean")]
            d = (6.0 * row.volume_ml * 1e3 / np.pi) ** (1 / 3)  # mm
            rc = float(sphere_recovery(1.5, d))
            assert t.loc[(ses, r, "pv_rc"), "value"] == pytest.approx(rc, rel=1e-6)
            assert t.loc[(ses, r, "idg_mean_pvc"), "value"] == pytest.approx(row.value / rc, rel=1e-6)
            assert t.loc[(ses, r, "suvbw_mean_pvc"), "value"] == pytest.approx(
                t.loc[(ses, r, "suvbw_mean"), "value"] / rc, rel=1e-6)


def test_rim_to_core_profiles(demo):
    """[profile]: the profile table, its figures, and the core-to-rim ratios (judged against the truth in
    test_demo_recovers_truth): CAR-T cells held at the rim (~0.38), the antibody spread evenly (1.0)."""
    import pandas as pd

    res = demo.study
    prof = pd.read_parquet(res.out_dir / "tables" / "profiles.parquet")
    assert set(prof["map"]) == {"idg", "dr2star"}
    assert {"subject", "session", "depth_mm", "mean", "sd", "n_voxels", "unit"} <= set(prof.columns)
    one = prof[(prof.subject == "cart1") & (prof.session == "d7") & (prof["map"] == "dr2star")].sort_values("depth_mm")
    assert one["depth_mm"].is_monotonic_increasing and one["mean"].iloc[0] > 2 * one["mean"].iloc[-1]
    for m in ("idg", "dr2star"):
        assert (res.out_dir / "figures" / f"profile_{m}.png").exists()
    assert (res.out_dir / "figures" / "cells_pet_vs_mri.png").exists()
    tab = res.table
    ratio = tab[tab.measure == "idg_core_to_rim"].set_index("subject").value
    assert ratio.loc["cart1"].max() < 0.6 and (ratio.loc[["pdl1", "pdl2"]] - 1).abs().max() < 0.15


def test_saturated_rois_get_no_r2star_numbers(demo):
    """The phantom's lungs (R2* 600 s-1, S0 150) are saturated at TE1 = 2 ms in most voxels: no R2*, dR2* or
    cells from MRI for them (a mean over the few fitted voxels would be biased), and a note says why."""
    tab = demo.study.table
    lungs = tab[(tab.roi == "lungs") & (tab.modality == "MR")]
    assert lungs.empty, lungs.measure.unique()
    assert len(tab[(tab.roi == "lungs") & (tab.measure == "cells_pet")]) == 4
    notes = json.loads((demo.study.out_dir / "study.json").read_text())["notes"]
    assert any("lungs: only" in n and "saturated" in n for n in notes)
