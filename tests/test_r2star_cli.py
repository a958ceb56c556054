"""`invivo r2star` on DICOM and NIfTI input; echo times from the data or --te-ms; outputs beside each other."""

import json

import nibabel as nib
import numpy as np
import pytest

import invivo
from invivo import Meta, Volume
from invivo.cli.main import main
from invivo.relax import STATUS, r2star_signal
from invivo.synth import write_dicom

TE = np.linspace(0.002, 0.023, 8)


@pytest.fixture
def mr(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    inside = (yy - 16) ** 2 + (xx - 16) ** 2 < 100
    r2 = np.where(inside, 80.0, 0.0)[..., None] * np.ones((32, 32, 3))
    s0 = np.where(inside, 1000.0, 0.0)[..., None] * np.ones((32, 32, 3))
    clean = r2star_signal(s0, r2, TE)
    data = np.abs(clean + 10 * rng.standard_normal(clean.shape) + 10j * rng.standard_normal(clean.shape))
    vol = Volume(data, np.diag([0.2, 0.2, 0.5, 1.0]), Meta(modality="MR", echo_times_s=tuple(TE)))
    write_dicom(vol, tmp_path / "dcm")
    nib.save(nib.Nifti1Image(data, vol.affine), tmp_path / "bare.nii.gz")  # no sidecar: no echo times
    return tmp_path, np.broadcast_to(inside[..., None], (32, 32, 3))


def test_dicom_input(mr, capsys):
    root, inside = mr
    out = root / "r2s.nii.gz"
    assert main(["r2star", str(root / "dcm"), "--out", str(out)]) == 0
    r2 = invivo.load(out)
    assert r2.meta.units == "s-1"
    assert np.median(r2.data[inside]) == pytest.approx(80.0, rel=0.02)
    status = invivo.load(root / "r2s_status.nii.gz").data
    assert np.all(status[~inside] != STATUS["ok"])
    side = json.loads((root / "r2s.json").read_text())
    assert side["Invivo"]["provenance"]["parameters"]["method"] == "rician"
    assert (root / "r2s_s0.nii.gz").exists()
    assert main(["r2star", str(root / "dcm"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_nifti_needs_echo_times(mr, capsys):
    root, inside = mr
    out = root / "n.nii.gz"
    assert main(["r2star", str(root / "bare.nii.gz"), "--out", str(out)]) == 2
    assert "--te-ms" in capsys.readouterr().err
    te = ",".join(f"{1e3 * t:g}" for t in TE)
    assert main(["r2star", str(root / "bare.nii.gz"), "--out", str(out), "--te-ms", te, "--method", "nlls",
                 "--sigma", "10"]) == 0
    assert np.median(invivo.load(out).data[inside]) == pytest.approx(80.0, rel=0.05)
    assert not list(root.glob(".*tmp*"))


def test_echo_times_that_disagree(mr, capsys):
    root, _ = mr
    assert main(["r2star", str(root / "dcm"), "--out", str(root / "x.nii.gz"), "--te-ms", "1,2,3,4,5,6,7,8"]) == 2
    assert "differ" in capsys.readouterr().err
    assert not (root / "x.nii.gz").exists()
