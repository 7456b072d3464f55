"""Distributional tests: the samples follow the Concrete distribution and the
density integrates to one.

Every test uses fixed seeds, so it is deterministic; the false-failure rate
written next to each threshold is the chance that a correct implementation would
fail it for a seed picked at random.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, special, stats

import relaxcat

Relaxed = relaxcat.RelaxedOneHotCategorical
ExpRelaxed = relaxcat.ExpRelaxedOneHotCategorical

# p-value below which a goodness-of-fit test fails: a false-failure rate of 1e-6
# per test, while 1e5 samples detect a probability off by 0.005 with certainty.
MIN_P_VALUE = 1e-6
N_SAMPLES = 100_000

# A mean estimated from N_MEAN samples must be within this many standard errors:
# two-sided normal tail 2 * (1 - Phi(5.3)) = 1.2e-7 false failures (the CLT is
# excellent for 1e6 draws of a bounded variable).
MEAN_MAX_STANDARD_ERRORS = 5.3
N_MEAN = 1_000_000

# Quadrature of the density over the simplex. K = 2: adaptive Gauss-Kronrod
# (QAGS) with requested absolute error 1e-13; its estimate stays below 1e-12, so
# 1e-9 is a safe bound and still catches any wrong constant (an O(1) error).
QUAD_1D_TOL = 1e-9
# K = 3, T = 2: a 200 x 200 Gauss-Legendre rule on the collapsed square; the rule
# converges as n^-4 (measured errors 6e-8 at n = 100, 4e-9 at n = 200).
GL_NODES = 200
QUAD_2D_TOL = 1e-7

# log x from the simplex sample against the log-space sample y: each is within a
# few ulps of the exact value, the error of y growing with |y|.
LOG_MATCH_EPS = 8.0


def _chi_square_p(samples_argmax: np.ndarray, probs: np.ndarray) -> float:
    counts = np.bincount(samples_argmax, minlength=len(probs))
    live = probs > 0
    assert np.all(counts[~live] == 0)
    expected = probs[live] / probs[live].sum() * samples_argmax.size
    return float(stats.chisquare(counts[live], expected).pvalue)


# ------------------------------------------------------------------ argmax law
@pytest.mark.parametrize("temperature", [0.1, 1.0, 10.0])
def test_argmax_of_a_sample_is_categorical_with_the_given_probs(temperature):
    probs = np.array([0.05, 0.1, 0.15, 0.3, 0.4])
    d = Relaxed(temperature, logits=np.log(probs) + 3.0)
    x = d.rsample((N_SAMPLES,), rng=1234)
    assert (
        _chi_square_p(np.argmax(x, axis=-1), probs) > MIN_P_VALUE
    )  # 1e-6 false failures


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_argmax_in_log_space_is_categorical_given_unnormalised_probs(dtype):
    probs = np.array([2.0, 0.5, 1.0, 0.25, 4.0, 0.25], dtype=dtype)
    d = ExpRelaxed(dtype(0.7), probs=probs)
    y = d.rsample((N_SAMPLES,), rng=np.random.default_rng(55))
    assert y.dtype == dtype
    p = probs.astype(np.float64) / probs.sum(dtype=np.float64)
    assert _chi_square_p(np.argmax(y, axis=-1), p) > MIN_P_VALUE  # 1e-6 false failures


def test_argmax_law_test_detects_wrong_probs():
    # The chi-square test has the power it needs: the same samples checked against
    # probabilities off by 0.01 fail by far.
    probs = np.array([0.05, 0.1, 0.15, 0.3, 0.4])
    x = Relaxed(1.0, logits=np.log(probs)).rsample((N_SAMPLES,), rng=1234)
    wrong = probs + np.array([0.01, -0.01, 0.0, 0.0, 0.0])
    assert _chi_square_p(np.argmax(x, axis=-1), wrong) < 1e-12


# ------------------------------------------------------------ masked categories
@pytest.mark.parametrize("temperature", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("param", ["logits", "probs"])
def test_masked_categories_are_never_chosen_and_exactly_zero(temperature, param):
    probs = np.array([0.2, 0.0, 0.3, 0.1, 0.0, 0.4])
    dead = probs == 0
    with np.errstate(divide="ignore"):
        kwargs = {"logits": np.log(probs)} if param == "logits" else {"probs": probs}
    x = Relaxed(temperature, **kwargs).rsample((N_SAMPLES,), rng=77)
    y = ExpRelaxed(temperature, **kwargs).rsample((N_SAMPLES,), rng=77)

    assert np.all(x[:, dead] == 0.0) and not np.any(np.signbit(x[:, dead]))
    assert np.all(y[:, dead] == -np.inf)
    assert np.all(np.isfinite(y[:, ~dead]))
    # The live categories keep the renormalised law.
    assert (
        _chi_square_p(np.argmax(x, axis=-1), probs) > MIN_P_VALUE
    )  # 1e-6 false failures


# ------------------------------------------------------------ normalisation
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_density_integrates_to_one_for_two_categories(temperature):
    # x = (t, 1 - t); the density in t behaves like t^(T-1) at both ends, singular
    # for T < 1. QAGS never evaluates the endpoints (where log_prob takes the
    # limits of Note [zeros in a value]) and its extrapolation handles algebraic
    # end singularities; splitting at 1/2 puts each singularity at an end.
    d = Relaxed(temperature, logits=np.array([0.3, -0.4]))

    def density(t):
        x = np.array([t, 1.0 - t])
        return float(np.exp(d.log_prob(x)))

    left, err_l = integrate.quad(
        density, 0.0, 0.5, epsabs=1e-13, epsrel=1e-13, limit=200
    )
    right, err_r = integrate.quad(
        density, 0.5, 1.0, epsabs=1e-13, epsrel=1e-13, limit=200
    )
    assert err_l + err_r < QUAD_1D_TOL
    assert abs(left + right - 1.0) <= QUAD_1D_TOL


def test_density_integrates_to_one_for_three_categories():
    # At T = 2 the density is bounded on the closed simplex, so a product
    # Gauss-Legendre rule converges. x1 = u, x2 = (1 - u) v, x3 = (1 - u)(1 - v):
    # the square maps onto the triangle with Jacobian 1 - u.
    d = Relaxed(2.0, logits=np.array([0.3, -0.4, 0.8]))
    z, w = np.polynomial.legendre.leggauss(GL_NODES)
    u, wu = (z + 1.0) / 2.0, w / 2.0
    uu, vv = np.meshgrid(u, u, indexing="ij")
    weight = np.outer(wu, wu) * (1.0 - uu)
    x = np.stack([uu, (1.0 - uu) * vv, (1.0 - uu) * (1.0 - vv)], axis=-1)
    x /= x.sum(axis=-1, keepdims=True)
    total = float(np.sum(weight * np.exp(d.log_prob(x))))
    assert abs(total - 1.0) <= QUAD_2D_TOL


# -------------------------------------------------------------- K = 2 laws
@pytest.mark.parametrize("cls", [Relaxed, ExpRelaxed], ids=["simplex", "log"])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 4.0])
def test_logit_of_a_two_category_sample_is_logistic(cls, temperature):
    # log(x1 / x2) = (l1 - l2 + G1 - G2) / T and G1 - G2 is standard logistic.
    logits = np.array([0.9, -0.4])
    s = cls(temperature, logits=logits).rsample((N_SAMPLES,), rng=2024)
    if cls is Relaxed:
        assert np.all(s > 0), "the test needs samples that did not underflow"
        z = np.log(s[:, 0]) - np.log(s[:, 1])
    else:
        z = s[:, 0] - s[:, 1]
    loc, scale = (logits[0] - logits[1]) / temperature, 1.0 / temperature
    p = stats.kstest(z, "logistic", args=(loc, scale)).pvalue
    assert p > MIN_P_VALUE  # 1e-6 false failures


def _mean_x1_two_categories_t1(delta: float) -> float:
    """E[x_1] for K = 2, T = 1: r (r - 1 - log r) / (r - 1)^2, r = exp(l1 - l2)."""
    r = np.exp(delta)
    return r * (r - 1.0 - delta) / (r - 1.0) ** 2


def test_closed_form_mean_oracle_is_right():
    # The oracle against the value quoted in the brief and a direct quadrature of
    # E[x_1] = E[sigmoid(delta + L)] with L standard logistic.
    assert abs(_mean_x1_two_categories_t1(0.7) - 0.6147939) < 5e-8
    direct, _ = integrate.quad(
        lambda v: special.expit(0.7 + v) * stats.logistic.pdf(v),
        -np.inf,
        np.inf,
        epsabs=1e-13,
    )
    assert abs(direct - _mean_x1_two_categories_t1(0.7)) < 1e-10


@pytest.mark.parametrize("delta", [0.7, -2.0])
def test_sample_mean_matches_the_closed_form_at_temperature_one(delta):
    logits = np.array([0.2, 0.2 - delta])
    x = Relaxed(1.0, logits=logits).rsample((N_MEAN,), rng=np.random.default_rng(8))
    x1 = x[:, 0]
    stderr = x1.std() / np.sqrt(N_MEAN)
    exact = _mean_x1_two_categories_t1(delta)
    # 5.3 standard errors: 1.2e-7 false failures.
    assert abs(x1.mean() - exact) <= MEAN_MAX_STANDARD_ERRORS * stderr


# --------------------------------------------------- log space versus simplex
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("temperature", [0.01, 0.5, 3.0])
@pytest.mark.parametrize("seed", ["int", "generator"])
def test_log_space_samples_are_logs_of_simplex_samples_for_the_same_rng(
    dtype, temperature, seed
):
    logits = np.random.default_rng(3).normal(size=(4, 7)).astype(dtype) * 3

    def rng():
        return 321 if seed == "int" else np.random.default_rng(321)

    x = Relaxed(dtype(temperature), logits=logits).rsample((500,), rng=rng())
    y = ExpRelaxed(dtype(temperature), logits=logits).rsample((500,), rng=rng())
    assert x.dtype == y.dtype == dtype
    tiny = np.finfo(dtype).tiny
    eps = np.finfo(dtype).eps

    # Where x is a normal number, log x = y to a few ulps (of 1 or of |y|).
    normal = x >= tiny
    with np.errstate(divide="ignore"):
        logx = np.log(x.astype(np.float64))
    err = np.abs(logx[normal] - y[normal].astype(np.float64))
    assert np.all(err <= LOG_MATCH_EPS * eps * np.maximum(1.0, np.abs(y[normal])))

    # Where x underflowed, y is below the log of the smallest normal.
    assert np.all(y[~normal] < np.log(tiny) + 1.0)
    assert np.all(np.isfinite(y))
    if temperature == 0.01:
        assert np.any(x == 0), "the low-temperature case must exercise underflow"
