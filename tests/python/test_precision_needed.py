"""Which float32 steps the float32 accuracy bounds (README, Accuracy) allow, on the
float32 cases of the 60-digit reference set. bench/floor.py counts, as the least
work a float32 operation must do, only the steps in float64 that these show are
needed.

The oracles below take one step in float32 (the log of a value, or the
exponentials of the log-sum-exp) and every other one in float64, as a kernel that
saved that step would.
"""

from __future__ import annotations

import math

import numpy as np
from conftest import REFERENCE_FILES, load_cases, rel_err

import relaxcat

LOG_PROB_BOUND = 1e-6  # float32 log_prob, relative to max(1, |reference|)
SAMPLE_BOUND = 1e-5  # float32 rsample VJP


def _float32_cases(kind):
    for name in REFERENCE_FILES:
        for case in load_cases(name)[kind]:
            if case["dtype"] == "float32":
                yield case


def _log_prob(a, x, t, log32: bool, exp32: bool) -> float:
    """The log-density of float32 x over its live categories (all x > 0)."""
    live = a > -np.inf
    k = int(live.sum())
    a64 = a[live].astype(np.float64)
    xl = x[live]
    y = np.log(xl).astype(np.float64) if log32 else np.log(xl.astype(np.float64))
    z = a64 - t * y
    m = float(z.max())
    e = (
        np.exp((z - m).astype(np.float32)).astype(np.float64)
        if exp32
        else np.exp(z - m)
    )
    lse = m + math.log(float(e.sum()))
    return (
        math.lgamma(k)
        + (k - 1) * math.log(t)
        + float(a64.sum())
        - (t + 1) * float(y.sum())
        - k * lse
    )


def _worst_log_prob(log32: bool, exp32: bool) -> float:
    worst = 0.0
    for case in _float32_cases("log_prob"):
        a = np.array(case["logits"], np.float32)
        x = np.array(case["x"], np.float32)
        if np.any(x[a > -np.inf] == 0):
            continue  # exact zeros take their limits, not these sums
        t = float(np.float32(case["temperature"]))
        lp = _log_prob(a, x, t, log32, exp32)
        worst = max(worst, rel_err(np.float32(lp), case["log_prob"]))
    return worst


def test_log_prob_needs_its_logs_in_float64_but_not_its_exponentials():
    with_float32_logs = _worst_log_prob(log32=True, exp32=False)
    with_float32_exps = _worst_log_prob(log32=False, exp32=True)
    # Measured: 8.6e-6 and 5.1e-8 (relaxcat's own kernels: 5.1e-8).
    assert with_float32_logs > 4 * LOG_PROB_BOUND
    assert with_float32_exps < LOG_PROB_BOUND / 10


def test_the_vjp_of_a_sample_keeps_its_bound_with_float32_logs():
    worst = 0.0
    for case in _float32_cases("rsample"):
        d = relaxcat.RelaxedOneHotCategorical(
            np.float32(case["temperature"]),
            logits=np.array(case["logits"], np.float32),
        )
        x = d.rsample(gumbels=np.array(case["gumbels"], np.float32))
        w = np.array(case["grad_x"], np.float64)
        x64 = x.astype(np.float64)
        positive = x > 0
        log_x = np.log(np.where(positive, x, np.float32(1))).astype(np.float64)
        dot = (x64 * w).sum(axis=-1, keepdims=True)
        t = float(np.float32(case["temperature"]))
        grad_t = -float((x64 * (w - dot) * np.where(positive, log_x, 0.0)).sum()) / t
        worst = max(worst, rel_err(np.float32(grad_t), case["grad_temperature"]))
    # Measured: 1.4e-7 (relaxcat's own, with float64 logs: 6.8e-8).
    assert worst < SAMPLE_BOUND / 10
