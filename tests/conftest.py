import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_path(*parts) -> Path:
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"external test data {p} not present (../shared/data is only in the development checkout)")
    return p


@pytest.fixture
def dro_copy(tmp_path):
    """A writable copy of the IBSI DRO_0_0 PET series."""
    src = data_path("ibsi_suv_dro", "DRO_0_0", "PT")
    dst = tmp_path / "PT"
    shutil.copytree(src, dst)
    return dst


def _xp_params():
    params = [pytest.param(np, id="numpy")]
    from invivo.backend import cupy

    params.append(pytest.param(cupy, id="cupy", marks=pytest.mark.skipif(cupy is None, reason="CuPy/GPU not available")))
    return params


@pytest.fixture(params=_xp_params())
def xp(request):
    return request.param


PHANTOMS = Path(__file__).resolve().parents[1] / "phantoms"


def load_phantom_script(name: str):
    """Import phantoms/<name>.py as a module (the scripts are not a package)."""
    path = PHANTOMS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"phantoms_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def table_rows(out: str) -> list[str]:
    """The rows of a validation script's printed table: between the dashes and the first blank line."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("-----"))
    rows = []
    for ln in lines[start + 1:]:
        if not ln.strip():
            break
        rows.append(ln)
    return rows
