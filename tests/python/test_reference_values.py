"""The 60-digit reference set (tests/data/concrete_cases*.json) recomputed here
from its inputs with mpmath at 60 digits, so that the numbers the other tests
trust are checked in this repository, not only copied into it.

The set came with the project's shared material, without the script that wrote
it; its conventions (the formulas below, K counting live categories, float32
cases holding inputs already rounded to float32) are in the README's Numerics
section. Every finite value and gradient must be the 60-digit result rounded to
float64: within one float64 ulp of it (the reference was rounded once). Cases
with an exact zero in x (limits, not formulas) and infinite values are left to
the edge tests."""

from __future__ import annotations

import math

import mpmath as mp
import pytest
from conftest import REFERENCE_FILES, load_cases

mp.mp.dps = 60
CASES = {name: load_cases(name) for name in REFERENCE_FILES}


def _ids(kind):
    return [
        (name, i) for name in REFERENCE_FILES for i in range(len(CASES[name][kind]))
    ]


def _close(got, want: float) -> bool:
    """The 60-digit `got` rounds to `want` within one float64 ulp."""
    if math.isinf(want):
        return False
    return abs(got - mp.mpf(want)) <= math.ulp(want) if want else abs(got) < 1e-300


def _live(case):
    return [k for k, a in enumerate(case["logits"]) if a != -math.inf]


def _density(case, y, log_space: bool):
    """log p and its gradients (logits, T, value) at the log-value y, on the
    simplex or in log space, in 60 digits."""
    live = _live(case)
    k = len(live)
    t = mp.mpf(case["temperature"])
    a = [mp.mpf(case["logits"][j]) for j in live]
    z = [a[i] - t * y[live[i]] for i in range(k)]
    lse = mp.log(mp.fsum(mp.exp(zi) for zi in z))
    w = [mp.exp(zi - lse) for zi in z]  # softmax(z)
    lp = mp.loggamma(k) + (k - 1) * mp.log(t) + mp.fsum(z) - k * lse
    if not log_space:
        lp -= mp.fsum(y[j] for j in live)
    g_a = [1 - k * wi for wi in w]
    g_t = (
        (k - 1) / t
        - mp.fsum(y[j] for j in live)
        + k * mp.fsum(w[i] * y[live[i]] for i in range(k))
    )
    # d/dy_j of the log-space density: -T + K T w_j; on the simplex the value
    # is x = e^y, and d/dx_j = (d/dy_j - 1) / x_j.
    g_y = [-t + k * t * wi for wi in w]
    if not log_space:
        g_y = [(g_y[i] - 1) / mp.exp(y[live[i]]) for i in range(k)]
    return lp, live, g_a, g_t, g_y


def _check_density(case, log_space: bool):
    if log_space:
        y = [mp.mpf(v) for v in case["log_x"]]
    else:
        if any(case["x"][j] == 0 for j in _live(case)):
            pytest.skip("an exact zero in x: the density's limit, not its formula")
        y = [mp.log(mp.mpf(v)) if v > 0 else mp.mpf("-inf") for v in case["x"]]
    if not math.isfinite(case["log_prob"]):
        pytest.skip("an infinite density: the edge tests check these")
    lp, live, g_a, g_t, g_y = _density(case, y, log_space)
    assert _close(lp, case["log_prob"])
    assert _close(g_t, case["grad_temperature"])
    value_grad = case["grad_log_x" if log_space else "grad_x"]
    for i, j in enumerate(live):
        assert _close(g_a[i], case["grad_logits"][j]), ("logits", j)
        assert _close(g_y[i], value_grad[j]), ("value", j)


@pytest.mark.parametrize("name,i", _ids("log_prob"))
def test_log_prob_references_are_the_formula_in_60_digits(name, i):
    _check_density(CASES[name]["log_prob"][i], log_space=False)


@pytest.mark.parametrize("name,i", _ids("log_prob_y"))
def test_log_space_references_are_the_formula_in_60_digits(name, i):
    _check_density(CASES[name]["log_prob_y"][i], log_space=True)


@pytest.mark.parametrize("name,i", _ids("rsample"))
def test_sample_references_are_the_formula_in_60_digits(name, i):
    case = CASES[name]["rsample"][i]
    live = _live(case)
    t = mp.mpf(case["temperature"])
    s = {j: (mp.mpf(case["logits"][j]) + mp.mpf(case["gumbels"][j])) / t for j in live}
    lse = mp.log(mp.fsum(mp.exp(v) for v in s.values()))
    log_x = {j: s[j] - lse for j in live}
    x = {j: mp.exp(v) for j, v in log_x.items()}
    w = {j: mp.mpf(case["grad_x"][j]) for j in live}
    mean_w = mp.fsum(x[j] * w[j] for j in live)
    for j in live:
        assert _close(log_x[j], case["log_x"][j]), ("log_x", j)
        if case["x"][j] != 0:  # x underflowed to 0 is written as 0
            assert _close(x[j], case["x"][j]), ("x", j)
        assert _close(x[j] * (w[j] - mean_w) / t, case["grad_logits"][j]), j
    g_t = -mp.fsum(x[j] * (w[j] - mean_w) * log_x[j] for j in live) / t
    assert _close(g_t, case["grad_temperature"])
