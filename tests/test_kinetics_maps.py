"""Voxelwise kinetic maps against truth: closed-form graphical maps, variable-projection 1TCM / 2TCM-irr,
basis-function SRTM; status codes instead of NaN; NumPy/CuPy parity."""

import numpy as np
import pytest

from invivo.backend import cupy
from invivo.errors import ParameterError
from invivo.kinetics.compartment import OneTCM, TwoTCMIrr
from invivo.kinetics.graphical import Logan, Patlak
from invivo.kinetics.maps import MAP_STATUS, compartment_map, logan_map, patlak_map, srtm_map
from invivo.kinetics.reference import SRTM

from .test_kinetics_compartment import FRAMES, bolus_input

RNG = np.random.default_rng(42)


@pytest.fixture(scope="module")
def inp():
    return bolus_input()


def test_patlak_and_logan_maps_are_exact_on_their_own_curves(inp):
    ki = RNG.uniform(0.001, 0.05, 30)
    v0 = RNG.uniform(0.1, 0.8, 30)
    y = np.stack([Patlak.simulate(FRAMES, inp, Ki=a, V0=b) for a, b in zip(ki, v0)]).reshape(5, 6, -1)
    res = patlak_map(y, FRAMES, inp, tstar_s=600.0)
    np.testing.assert_allclose(res["Ki"].ravel(), ki, rtol=1e-9)
    np.testing.assert_allclose(res["V0"].ravel(), v0, rtol=1e-9)
    assert np.all(res["status"] == MAP_STATUS["ok"]) and res["Ki"].shape == (5, 6)
    vt = RNG.uniform(0.5, 3.0, 10)
    y = np.stack([Logan.simulate(FRAMES, inp, VT=v, intercept=-8.0) for v in vt])
    res = logan_map(y, FRAMES, inp, tstar_s=120.0)
    np.testing.assert_allclose(res["VT"], vt, rtol=1e-8)
    single = Logan(tstar_s=120.0).fit(y[3], FRAMES, inp)
    assert res["VT"][3] == pytest.approx(single.params["VT"], rel=1e-9)
    assert res["VT_se"][3] == pytest.approx(single.se["VT"], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("model", ["1tcm", "2tcm-irr"])
@pytest.mark.parametrize("fixed_vb", [None, 0.04])
def test_compartment_maps_recover_random_parameters(inp, model, fixed_vb):
    n = 40
    k1 = RNG.uniform(0.05, 0.6, n)
    k2 = RNG.uniform(0.05, 0.5, n)
    k3 = RNG.uniform(0.005, 0.1, n)
    vb = RNG.uniform(0.01, 0.1, n) if fixed_vb is None else np.full(n, fixed_vb)
    if model == "1tcm":
        y = np.stack([OneTCM().simulate(FRAMES, inp, vB=vb[i], K1=k1[i], k2=k2[i]) for i in range(n)])
    else:
        y = np.stack([TwoTCMIrr().simulate(FRAMES, inp, vB=vb[i], K1=k1[i], k2=k2[i], k3=k3[i]) for i in range(n)])
    res = compartment_map(y, FRAMES, inp, model=model, vB=fixed_vb)
    assert np.all(res["status"] == MAP_STATUS["ok"])
    np.testing.assert_allclose(res["K1"], k1, rtol=1e-6)
    np.testing.assert_allclose(res["vB"], vb, rtol=1e-4, atol=1e-7)
    if model == "1tcm":
        np.testing.assert_allclose(res["k2"], k2, rtol=1e-6)
        np.testing.assert_allclose(res["VT"], k1 / k2, rtol=1e-6)
    else:
        np.testing.assert_allclose(res["k2"], k2, rtol=1e-5)
        np.testing.assert_allclose(res["k3"], k3, rtol=1e-5)
        np.testing.assert_allclose(res["Ki"], k1 * k3 / (k2 + k3), rtol=1e-6)


def test_maps_flag_bad_voxels_and_keep_dtype(inp):
    y = TwoTCMIrr().simulate(FRAMES, inp, vB=0.05, K1=0.2, k2=0.3, k3=0.05)
    data = np.tile(y, (4, 1)).astype(np.float32)
    data[1, 5] = np.nan
    mask = np.array([True, True, True, False])
    res = compartment_map(data, FRAMES, inp, mask=mask)
    assert res["Ki"].dtype == np.float32
    assert res["status"].tolist() == [MAP_STATUS["ok"], MAP_STATUS["failed"], MAP_STATUS["ok"],
                                      MAP_STATUS["outside_mask"]]
    assert res["Ki"][1] == 0 and res["Ki"][3] == 0 and np.all(np.isfinite(res["Ki"]))
    assert res["Ki"][0] == pytest.approx(0.2 * 0.05 / 0.35, rel=1e-4)  # float32 data
    # k2 far above the rate range (5 /min): at the bound, not silently wrong
    res = compartment_map(np.stack([y, OneTCM().simulate(FRAMES, inp, vB=0.0, K1=5.0, k2=9.0)]), FRAMES, inp,
                          model="1tcm")
    assert res["status"][1] == MAP_STATUS["at_bound"]
    with pytest.raises(ParameterError, match="t\\*"):
        patlak_map(data, FRAMES, inp, tstar_s=None)
    with pytest.raises(ParameterError, match="frames on the last axis"):
        patlak_map(data[:, :5], FRAMES, inp, tstar_s=600.0)
    with pytest.raises(ParameterError, match="model"):
        compartment_map(data, FRAMES, inp, model="2tcm")


def test_srtm_map_on_grid_rates(inp):
    ref = OneTCM().simulate(FRAMES, inp, vB=0.0, K1=0.1, k2=0.1)
    from invivo.kinetics.reference import DEFAULT_K2A_GRID

    k2a = DEFAULT_K2A_GRID[[40, 55, 70]]
    bp = np.array([0.5, 1.5, 3.0])
    y = np.stack([SRTM.simulate(FRAMES, ref, R1=1.1, k2=a * (1 + b), BPND=b) for a, b in zip(k2a, bp)])
    res = srtm_map(y, FRAMES, ref)
    np.testing.assert_allclose(res["BPND"], bp, rtol=1e-6)
    assert np.all(res["status"] == MAP_STATUS["ok"])


@pytest.mark.skipif(cupy is None, reason="CuPy/GPU not available")
def test_gpu_parity(inp):
    n = 50
    y = np.stack([TwoTCMIrr().simulate(FRAMES, inp, vB=0.03, K1=0.1 + 0.01 * i, k2=0.2, k3=0.03) for i in range(n)])
    cpu = compartment_map(y, FRAMES, inp)
    gpu = compartment_map(cupy.asarray(y), FRAMES, inp)
    for k in ("K1", "k2", "k3", "Ki", "vB"):
        np.testing.assert_allclose(cupy.asnumpy(gpu[k]), cpu[k], rtol=1e-6, atol=1e-9)
    p_cpu = patlak_map(y, FRAMES, inp, tstar_s=900.0)
    p_gpu = patlak_map(cupy.asarray(y), FRAMES, inp, tstar_s=900.0)
    np.testing.assert_allclose(cupy.asnumpy(p_gpu["Ki"]), p_cpu["Ki"], rtol=1e-9)


def test_cli_kinetics_map_writes_maps(inp, tmp_path, capsys):
    from datetime import datetime

    import pandas as pd

    from invivo import Meta, Volume
    from invivo.cli.main import main
    from invivo.io import load, save
    from invivo.volume import Tracer

    ki = np.linspace(0.005, 0.04, 24).reshape(2, 3, 4)
    y = np.stack([TwoTCMIrr().simulate(FRAMES, inp, vB=0.05, K1=0.2, k2=0.3, k3=k) for k in
                  (0.3 * ki.ravel() / (0.2 - ki.ravel()))]).reshape(2, 3, 4, -1)
    inj = datetime(2024, 1, 15, 9, 0, 0)
    meta = Meta(modality="PT", units="BQML", frame_start_s=tuple(FRAMES.start_s), series_datetime=inj,
                frame_duration_s=tuple(FRAMES.duration_s), tracer=Tracer(isotope="18F", injection_datetime=inj))
    save(Volume(y, np.eye(4), meta), tmp_path / "pet.nii.gz")
    pd.DataFrame({"time": inp.times_s, "plasma_radioactivity": inp.plasma,
                  "whole_blood_radioactivity": inp.whole_blood}).to_csv(tmp_path / "blood.tsv", sep="\t", index=False)
    rc = main(["kinetics-map", str(tmp_path / "pet.nii.gz"), "--model", "2tcm-irr", "--input",
               str(tmp_path / "blood.tsv"), "--out", str(tmp_path / "maps")])
    assert rc == 0, capsys.readouterr().err
    got = load(tmp_path / "maps" / "2tcm-irr_Ki.nii.gz")
    np.testing.assert_allclose(got.data, ki, rtol=1e-5)
    assert np.all(load(tmp_path / "maps" / "2tcm-irr_status.nii.gz").data == 0)
    rc = main(["kinetics-map", str(tmp_path / "pet.nii.gz"), "--model", "patlak", "--input",
               str(tmp_path / "blood.tsv"), "--out", str(tmp_path / "maps")])
    assert rc == 2 and "t*" in capsys.readouterr().err
