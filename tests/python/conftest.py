"""Shared fixtures: the reference cases and the SIMD levels of this build."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

import relaxcat
from relaxcat import _core

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"


def _num(x):
    """Reference JSON writes inf, -inf and nan as strings."""
    if isinstance(x, list):
        return [_num(e) for e in x]
    if isinstance(x, str) and x in ("inf", "-inf", "nan"):
        return float(x)
    return x


def load_cases(name: str) -> dict:
    raw = json.loads((DATA / name).read_text())
    return {
        kind: [{k: _num(val) for k, val in case.items()} for case in raw[kind]]
        for kind in ("log_prob", "log_prob_y", "rsample")
    }


REFERENCE_FILES = ("concrete_cases.json", "concrete_cases_extreme.json")
LEVELS = list(_core.available_simd_levels())


@pytest.fixture(params=LEVELS)
def simd_level(request):
    """Run the test once per SIMD level this CPU offers, restoring the level after."""
    before = _core.simd_level()
    _core.set_simd_level(request.param)
    yield request.param
    _core.set_simd_level(before)


@pytest.fixture
def threads():
    """Restore the default thread count after a test changes it."""
    before = relaxcat.get_num_threads()
    yield
    relaxcat.set_num_threads(before)


def rel_err(got, want) -> float:
    """Error relative to max(1, |want|): the reference README's measure. For a
    vector, relative to max(1, its largest entry). inf must match exactly."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    inf = np.isinf(want)
    if np.any(got[inf] != want[inf]) or np.any(np.isinf(got[~inf])):
        return np.inf
    if np.any(np.isnan(got)):
        return np.inf
    scale = max(1.0, float(np.max(np.abs(want[~inf]), initial=0.0)))
    return float(np.max(np.abs(got[~inf] - want[~inf]), initial=0.0)) / scale
