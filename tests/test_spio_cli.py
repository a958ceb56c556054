"""`invivo spio`: dR2*, [Fe] and cells from pre/post R2* maps written by `invivo r2star`, against the phantom truth."""

import numpy as np
import pandas as pd
import pytest

import invivo
from invivo.cli.main import main
from invivo.relax import iron
from invivo.synth import render_spio_pair, spio_vial_phantom

RELAX = 60.0


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    root = tmp_path_factory.mktemp("spio")
    ph = spio_vial_phantom()
    pre, post, truth = render_spio_pair(ph, snr=100, seed=0)
    invivo.save(pre, root / "pre_me.nii.gz")
    invivo.save(post, root / "post_me.nii.gz")
    for n in ("pre", "post"):
        assert main(["r2star", str(root / f"{n}_me.nii.gz"), "--out", str(root / f"{n}_r2s.nii.gz")]) == 0
    for name in ("fe_0.8mM", "cells_1e7"):
        invivo.save(ph.mask(name), root / f"{name}.nii.gz")
    return root, ph, truth


def test_iron_and_cells_against_truth(maps, capsys):
    root, ph, truth = maps
    out = root / "out"
    assert main(["spio", "--pre", str(root / "pre_r2s.nii.gz"), "--post", str(root / "post_r2s.nii.gz"),
                 "--relaxivity", str(RELAX), "--pg-fe-per-cell", "10", "--mask", f"v08={root / 'fe_0.8mM.nii.gz'}",
                 "--mask", f"cells={root / 'cells_1e7.nii.gz'}", "--out-dir", str(out)]) == 0
    table = pd.read_csv(out / "roi.tsv", sep="\t").set_index("roi")
    # SNR 100: vial means are within 2 % of the true iron (hundreds of voxels per vial)
    assert table.loc["v08", "mean_mM"] == pytest.approx(0.8, rel=0.02)
    n_vox = int(table.loc["v08", "n_voxels"])
    vox_ml = ph.labels.voxel_volume_ml
    assert table.loc["v08", "total_ug"] == pytest.approx(0.8 * n_vox * vox_ml * iron.FE_MOLAR_MASS_G_PER_MOL, rel=0.02)
    cells_true = truth["fe_mM"]["cells_1e7"]
    assert table.loc["cells", "mean_mM"] == pytest.approx(cells_true, rel=0.02)
    n_cells = 1e7 * int(table.loc["cells", "n_voxels"]) * vox_ml  # cells/mL x mL
    assert table.loc["cells", "cells_total"] == pytest.approx(n_cells, rel=0.02)
    fe = invivo.load(out / "fe_mM.nii.gz")
    assert fe.meta.units == "mM"
    assert (out / "cells.nii.gz").exists() and (out / "status.nii.gz").exists()


def test_relaxivity_from_table_and_errors(maps, capsys):
    root, _, _ = maps
    args = ["spio", "--pre", str(root / "pre_r2s.nii.gz"), "--post", str(root / "post_r2s.nii.gz")]
    assert main(args + ["--relaxivity", "ferumoxytol@3", "--out-dir", str(root / "o2")]) == 0
    capsys.readouterr()
    assert main(args + ["--relaxivity", "ferumoxytol@9.4", "--out-dir", str(root / "o3")]) == 2
    err = capsys.readouterr().err
    assert "\n" not in err.strip() and "internalised" in err
    assert main(args + ["--relaxivity", "-5", "--out-dir", str(root / "o4")]) == 2
    assert main(args + ["--relaxivity", "ferumoxytol@3", "--out-dir", str(root / "o2")]) == 2  # exists
    assert not (root / "o3").exists() and not (root / "o4").exists()


def test_pre_post_on_different_grids(tmp_path):
    from invivo import Meta, Volume
    from invivo.errors import GeometryError
    from invivo.relax.maps import spio_maps

    a = Volume(np.full((4, 4, 4), 20.0), np.eye(4), Meta(units="s-1"))
    b = Volume(np.full((4, 4, 5), 30.0), np.eye(4), Meta(units="s-1"))
    with pytest.raises(GeometryError, match="different grids"):
        spio_maps(a, b, relaxivity=RELAX)
    c = Volume(np.full((4, 4, 4), 30.0), np.eye(4), Meta(units="s-1"))
    res = spio_maps(a, c, relaxivity=RELAX, pg_fe_per_cell=10.0)
    np.testing.assert_allclose(res["fe_mM"].data, 10.0 / RELAX, rtol=1e-12)
    np.testing.assert_allclose(res["cells"].data, 10.0 / RELAX * 1e-3 * iron.FE_MOLAR_MASS_G_PER_MOL * 1e6 / 10.0,
                               rtol=1e-12)
