"""Cohorts on dask.distributed: a LocalCluster of 2 workers gives the serial numbers exactly, survives a worker
killed mid-run, and reports a corrupt study while the others complete."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="the cluster extra (dask.distributed) is not installed")

from invivo.cli.main import main  # noqa: E402
from invivo.demo import build_cohort  # noqa: E402
from invivo.study import run_cohort  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::ResourceWarning",
                                        "ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    files = build_cohort(root / "in", 2, subjects_per_study=2, seed=3)
    serial = run_cohort(files, root / "serial", report=False)
    return root, files, serial


def _same(a, b):
    """Two StudyResults with identical tables (every value bit for bit, same rows in the same order)."""
    assert not isinstance(a, str) and not isinstance(b, str), (a, b)
    assert not a.failures and not b.failures, (a.failures, b.failures)
    assert len(a.table) == len(b.table) > 0
    for c in ("subject", "session", "roi", "measure"):
        assert (a.table[c].to_numpy() == b.table[c].to_numpy()).all(), c
    np.testing.assert_array_equal(a.table.value.to_numpy(), b.table.value.to_numpy())


def test_local_cluster_equals_serial(cohort, tmp_path):
    _, files, serial = cohort
    res = run_cohort(files, tmp_path / "dask", scheduler="local", workers=2)
    assert list(res) == [f.stem for f in files]
    for stem in res:
        _same(serial[stem], res[stem])
        assert res[stem].report.exists()
    # the uptake is right, not only repeatable: tumour %ID/g of the antibody at 72 h (phantom truth, 3 %)
    from invivo.demo import MAB_SESSIONS_H, _mab_idg

    t = res[files[0].stem].table
    tum = t[(t.measure == "idg_mean") & (t.roi == "tumour")].value
    np.testing.assert_allclose(tum, _mab_idg("tumour_rim", MAB_SESSIONS_H["d3"], False), rtol=0.03)


def test_worker_killed_mid_run(cohort, tmp_path):
    """SIGKILL the worker running a task: the scheduler moves the task to the other worker (the nanny restarts the
    dead one) and the numbers are still the serial ones."""
    _, files, serial = cohort
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        box = {}
        th = threading.Thread(target=lambda: box.update(res=run_cohort(files, tmp_path / "killed", scheduler=client,
                                                                       report=False)))
        th.start()
        victim = None
        deadline = time.monotonic() + 60
        while victim is None and time.monotonic() < deadline:
            busy = [w for w, tasks in client.processing().items() if tasks]
            if busy:
                victim = busy[0]
                break
            time.sleep(0.05)
        assert victim is not None, "no task started within 60 s"
        time.sleep(0.5)  # the task is running on it
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        th.join(timeout=240)
        assert not th.is_alive()
    finally:
        client.close()
        cluster.close()
    res = box["res"]
    for stem in res:
        _same(serial[stem], res[stem])


def test_corrupt_study_and_failing_subject_are_reported(cohort, tmp_path, capsys):
    import shutil

    root, files, _ = cohort
    broken = tmp_path / "broken.toml"
    broken.write_text('[study]\nname = "broken"\n[[subject]]\nid = \n')
    # a subject whose PET file is corrupt (a copy of the study): that subject fails, the others complete
    shutil.copytree(files[1].parent, tmp_path / "study002")
    files = [files[0], tmp_path / "study002" / files[1].name]
    bad = tmp_path / "study002" / "inputs" / "m02" / "pet"
    for f in sorted(bad.glob("*.dcm"))[:1]:
        f.write_bytes(b"not a DICOM file" * 10)
    code = main(["run", str(files[0]), str(files[1]), str(broken), "--out", str(tmp_path / "cli"),
                 "--scheduler", "local", "--workers", "2", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED study broken: " in out and "broken.toml" in out
    assert "FAILED study002 m02: " in out
    assert (tmp_path / "cli" / "study001" / "report.html").exists()
    assert (tmp_path / "cli" / "study002" / "report.html").exists()
    # a rerun reuses every finished registration and reports the same failure
    res = run_cohort(files[:2], tmp_path / "cli", overwrite=True, report=False)
    assert len(res["study001"].reused) == 2 and not res["study001"].failures
    assert list(res["study002"].failures) == ["m02"]


def test_scheduler_address_equals_serial(cohort, tmp_path):
    """`--scheduler tcp://...`: a scheduler started elsewhere (here a LocalCluster's), reached by its address."""
    _, files, serial = cohort
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        assert main(["run", str(files[0]), str(files[1]), "--out", str(tmp_path / "addr"), "--scheduler",
                     cluster.scheduler_address, "--quiet"]) == 0
    finally:
        cluster.close()
    from invivo.study import load_study

    import pandas as pd

    for f in files:
        back = pd.read_parquet(tmp_path / "addr" / f.stem / "tables" / "measures.parquet")
        np.testing.assert_array_equal(back.value.to_numpy(), serial[f.stem].table.value.to_numpy())
        assert load_study(f).name == f.stem
    with pytest.raises(Exception, match="--workers applies to --scheduler local"):
        run_cohort(files, tmp_path / "w", scheduler="tcp://127.0.0.1:1", workers=2)
    from invivo.errors import InvivoError

    with pytest.raises(InvivoError, match="cannot reach the dask scheduler at host:port"):
        run_cohort(files, tmp_path / "x", scheduler="host:port")


def _mge_study(root):
    """One mouse, one multi-echo MR session: R2* per organ (the pipeline's R2* step alone)."""
    from invivo import io
    from invivo.synth import mouse_phantom, render_mr, write_dicom

    ph = mouse_phantom(voxel_size_mm=1.0)
    mr, _ = render_mr(ph, noise_sigma=8.0, seed=5)
    write_dicom(mr, root / "inputs" / "m1" / "mge", patient_id="m1", enhanced=True)
    io.save(ph.labels, root / "inputs" / "labels.nii.gz")
    text = ['[study]', 'name = "mge"', 'root = "inputs"', '', '[[subject]]', 'id = "m1"', 'group = "g"', '',
            '[[scan]]', 'subject = "m1"', 'session = "pre"', 'kind = "mge"', 'path = "m1/mge"', '',
            '[[roi]]', 'name = "liver"', 'labels = "labels.nii.gz"', 'label = 4', '',
            '[[roi]]', 'name = "spleen"', 'labels = "labels.nii.gz"', 'label = 5', '', '[r2star]', 'device = "DEV"']
    return "\n".join(text)


@pytest.mark.gpu
def test_gpu_worker_r2star_matches_cpu(tmp_path):
    """A GPU worker fits R2* on its GPU ([r2star] device): the same ROI means as on the CPU (float32 kernels)."""
    from invivo.backend import has_gpu
    from invivo.study import load_study, process_subject

    if not has_gpu():
        pytest.skip("no CUDA device")
    text = _mge_study(tmp_path)
    res = {}
    for dev in ("cpu", "gpu"):
        f = tmp_path / f"{dev}.toml"
        f.write_text(text.replace("DEV", dev))
        o = process_subject(load_study(f), "m1", tmp_path / f"out_{dev}", figures=False)
        assert o.failure is None, o.failure
        res[dev] = {(r["roi"], r["measure"]): r["value"] for r in o.rows}
    assert res["cpu"].keys() == res["gpu"].keys() and len(res["cpu"]) >= 2
    for k in res["cpu"]:
        assert res["gpu"][k] == pytest.approx(res["cpu"][k], rel=1e-4), k
    assert res["cpu"][("liver", "r2star_mean")] == pytest.approx(130.0, rel=0.02)  # the phantom's liver


def test_r2star_device_gpu_without_a_gpu_is_a_clear_error(tmp_path):
    from invivo.backend import has_gpu
    from invivo.study import load_study, process_subject

    if has_gpu():
        pytest.skip("this machine has a GPU")
    f = tmp_path / "s.toml"
    f.write_text(_mge_study(tmp_path).replace("DEV", "gpu"))
    o = process_subject(load_study(f), "m1", tmp_path / "out", figures=False)
    assert "device = \"gpu\"" in o.failure and "no CUDA device" in o.failure
