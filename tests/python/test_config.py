"""RELAXCAT_SIMD and show_config, checked in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from relaxcat import _core


def _run(env_value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RELAXCAT_SIMD=env_value)
    code = "import relaxcat, relaxcat._core as c; print(c.simd_level())"
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


@pytest.mark.parametrize("level", _core.available_simd_levels())
def test_relaxcat_simd_selects_an_available_level_silently(level):
    done = _run(level)
    assert done.stdout.strip() == level
    assert "RelaxcatWarning" not in done.stderr


@pytest.mark.parametrize("level", _core.available_simd_levels())
def test_relaxcat_simd_ignores_case(level):
    # A fresh-user review set RELAXCAT_SIMD=AVX2 and got a warning and avx512.
    done = _run(level.upper())
    assert done.stdout.strip() == level
    assert "RelaxcatWarning" not in done.stderr


@pytest.mark.parametrize("wrong", ["bogus", "avx 2", "avx1024"])
def test_relaxcat_simd_naming_no_available_level_warns(wrong):
    # Regression: a misspelt level fell back to the best one without a word.
    done = _run(wrong)
    assert done.stdout.strip() == _core.available_simd_levels()[0]
    assert "RelaxcatWarning" in done.stderr and repr(wrong) in done.stderr
