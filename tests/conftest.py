import shutil
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
