"""Every case of the 60-digit references (tests/data, copied from the project's
shared reference set), at every SIMD level, in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REFERENCE_FILES, load_cases, rel_err

import relaxcat

# The accuracy the library promises (README, "Accuracy"); errors are relative to
# max(1, |reference|), and for vectors to max(1, largest entry).
LOG_PROB_TOL = {"float64": 1e-12, "float32": 1e-6}
SAMPLE_TOL = {"float64": 1e-10, "float32": 1e-5}

CASES = {name: load_cases(name) for name in REFERENCE_FILES}


def _ids(kind):
    return [
        (name, i) for name in REFERENCE_FILES for i in range(len(CASES[name][kind]))
    ]


def _dist(cls, case):
    dtype = np.dtype(case["dtype"])
    logits = np.array(case["logits"], dtype=dtype)
    return cls(np.array(case["temperature"], dtype=dtype), logits=logits), dtype


@pytest.mark.parametrize("name,i", _ids("log_prob"))
def test_log_prob_and_its_gradients_match_the_reference(simd_level, name, i):
    case = CASES[name]["log_prob"][i]
    d, dtype = _dist(relaxcat.RelaxedOneHotCategorical, case)
    x = np.array(case["x"], dtype=dtype)
    tol = LOG_PROB_TOL[case["dtype"]]
    assert rel_err(d.log_prob(x), case["log_prob"]) <= tol
    g = d.log_prob_vjp(x, np.ones((), dtype=dtype))
    gtol = SAMPLE_TOL[case["dtype"]]
    assert rel_err(g.logits, case["grad_logits"]) <= gtol
    assert rel_err(g.temperature, case["grad_temperature"]) <= gtol
    assert rel_err(g.value, case["grad_x"]) <= gtol


@pytest.mark.parametrize("name,i", _ids("log_prob_y"))
def test_log_space_log_prob_and_its_gradients_match_the_reference(simd_level, name, i):
    case = CASES[name]["log_prob_y"][i]
    d, dtype = _dist(relaxcat.ExpRelaxedOneHotCategorical, case)
    y = np.array(case["log_x"], dtype=dtype)
    tol = LOG_PROB_TOL[case["dtype"]]
    assert rel_err(d.log_prob(y), case["log_prob"]) <= tol
    g = d.log_prob_vjp(y, np.ones((), dtype=dtype))
    gtol = SAMPLE_TOL[case["dtype"]]
    assert rel_err(g.logits, case["grad_logits"]) <= gtol
    assert rel_err(g.temperature, case["grad_temperature"]) <= gtol
    assert rel_err(g.value, case["grad_log_x"]) <= gtol


@pytest.mark.parametrize("name,i", _ids("rsample"))
def test_rsample_and_its_vjp_match_the_reference(simd_level, name, i):
    case = CASES[name]["rsample"][i]
    d, dtype = _dist(relaxcat.RelaxedOneHotCategorical, case)
    tol = SAMPLE_TOL[case["dtype"]]
    gumbels = np.array(case["gumbels"], dtype=dtype)
    x = d.rsample(gumbels=gumbels)
    assert rel_err(x, case["x"]) <= tol
    y = relaxcat.ExpRelaxedOneHotCategorical(d.temperature, logits=d._a).rsample(
        gumbels=gumbels
    )
    assert rel_err(y, case["log_x"]) <= tol

    # The VJP is evaluated at the library's own sample, as a user would.
    w = np.array(case["grad_x"], dtype=dtype)
    g = d.rsample_vjp(x, w)
    assert rel_err(g.logits, case["grad_logits"]) <= tol
    assert rel_err(g.temperature, case["grad_temperature"]) <= tol
