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
