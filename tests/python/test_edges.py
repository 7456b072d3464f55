"""Edges: masked categories, exact zeros in a value (Note [zeros in a value] in
kernels.hpp), float32 logits in the thousands competing at low temperature,
extreme temperatures and logit spreads, and very long or very many rows."""

from __future__ import annotations

import math
import warnings

import mpmath
import numpy as np
import pytest

import relaxcat
from relaxcat import _core

Relaxed = relaxcat.RelaxedOneHotCategorical
ExpRelaxed = relaxcat.ExpRelaxedOneHotCategorical
CLASSES = [Relaxed, ExpRelaxed]
CLASS_IDS = ["simplex", "log"]

EPS64 = float(np.finfo(np.float64).eps)

# A distribution with masked categories against the same one with them removed:
# the same formulas, but row sums add the masked zeros in other lanes and order,
# so results may differ by a few roundings; 64 eps relative to max(1, |value|).
MASKED_VS_REDUCED_RTOL = 64 * EPS64

# The finite limit of Note [zeros in a value] against mpmath at eps = 1e-100 (its
# own error there is O(eps^T) < 1e-25): the library evaluates a sum of logs in
# double, so 1e-13 relative to max(1, |value|).
ZERO_LIMIT_RTOL = 1e-13
REF_DPS = 60
REF_EPS = mpmath.mpf(10) ** -100

# float32 sample against a float64 computation from the same float32 inputs: one
# rounding of the output (2^-24 relative) plus the double intermediates; an
# absolute 2^-22 on entries in [0, 1].
F32_SAMPLE_ATOL = 2.0**-22
# A float32-only computation of (logits + g) / T with logits near 3000 and
# T = 1e-3 moves s by up to 0.12; the test demands the naive error exceed this
# (so that it can tell the two apart), 100x above F32_SAMPLE_ATOL.
NAIVE_F32_MIN_ERROR = 1e-3


def _softmax64(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _rel(got, want) -> float:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    assert np.array_equal(got[np.isinf(got)], want[np.isinf(want)])
    fin = np.isfinite(want)
    scale = max(1.0, float(np.max(np.abs(want[fin]), initial=0.0)))
    return float(np.max(np.abs(got[fin] - want[fin]), initial=0.0)) / scale


def _no_nan(*arrays):
    for a in arrays:
        assert not np.any(np.isnan(np.asarray(a, dtype=np.float64)))


# ================================================================ (a) masked
K_MASKED = 37  # longer than one vector of every level, with a scalar tail
DEAD = np.zeros(K_MASKED, bool)
DEAD[[0, 5, 6, 7, 16, 31, 36]] = True
LIVE = ~DEAD


def _masked_setup(rng):
    temperature = np.array([0.05, 0.5, 1.0, 5.0, 50.0])[:, None]
    logits = 2.0 * rng.normal(size=(5, K_MASKED))
    logits[:, DEAD] = -np.inf
    return temperature, logits


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_masked_categories_are_exact_zeros_in_every_sample(simd_level, cls):
    temperature, logits = _masked_setup(np.random.default_rng(1))
    s = cls(temperature, logits=logits).rsample((40,), rng=99)
    _no_nan(s)
    if cls is Relaxed:
        assert np.all(s[..., DEAD] == 0.0) and not np.any(np.signbit(s[..., DEAD]))
        assert np.all(np.abs(s.sum(axis=-1) - 1.0) <= K_MASKED * EPS64)
    else:
        assert np.all(s[..., DEAD] == -np.inf)
        assert np.all(np.isfinite(s[..., LIVE]))


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_masked_categories_behave_as_if_removed(simd_level, cls):
    rng = np.random.default_rng(2)
    temperature, logits = _masked_setup(rng)
    full = cls(temperature, logits=logits)
    reduced = cls(temperature, logits=logits[:, LIVE])
    gumbels = rng.gumbel(size=(3, 5, K_MASKED))

    # The sample: the live entries are the sample of the reduced distribution.
    s = full.rsample((3,), gumbels=gumbels)
    s_red = reduced.rsample((3,), gumbels=gumbels[..., LIVE])
    assert _rel(s[..., LIVE], s_red) <= MASKED_VS_REDUCED_RTOL

    # log_prob ignores the masked categories, K counts the live ones only.
    lp = full.log_prob(s)
    assert _rel(lp, reduced.log_prob(s[..., LIVE])) <= MASKED_VS_REDUCED_RTOL

    # Gradients: exact zeros on masked categories, the reduced ones elsewhere.
    w = rng.normal(size=s.shape)
    g = full.rsample_vjp(s, w)
    g_red = reduced.rsample_vjp(s[..., LIVE], w[..., LIVE])
    _no_nan(*g)
    assert np.all(g.logits[:, DEAD] == 0.0)
    assert _rel(g.logits[:, LIVE], g_red.logits) <= MASKED_VS_REDUCED_RTOL
    assert _rel(g.temperature, g_red.temperature) <= MASKED_VS_REDUCED_RTOL

    up = rng.normal(size=lp.shape)
    g = full.log_prob_vjp(s, up)
    g_red = reduced.log_prob_vjp(s[..., LIVE], up)
    _no_nan(*g)
    assert np.all(g.value[..., DEAD] == 0.0) and np.all(g.logits[:, DEAD] == 0.0)
    for name in g._fields:
        got = getattr(g, name)
        if name != "temperature":
            got = got[..., LIVE]
        assert _rel(got, getattr(g_red, name)) <= MASKED_VS_REDUCED_RTOL, name


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_zero_probs_are_masked_categories(simd_level, cls):
    rng = np.random.default_rng(3)
    probs = rng.uniform(0.1, 1.0, size=K_MASKED)
    probs[DEAD] = 0.0
    d = cls(0.3, probs=probs)
    s = d.rsample((50,), rng=4)
    assert np.all(s[:, DEAD] == (0.0 if cls is Relaxed else -np.inf))
    lp = d.log_prob(s)
    g = d.log_prob_vjp(s, np.ones_like(lp))
    gs = d.rsample_vjp(s, rng.normal(size=s.shape))
    _no_nan(lp, *g, *gs)
    assert np.all(np.isfinite(lp))
    assert np.all(g.probs[DEAD] == 0.0) and np.all(gs.probs[DEAD] == 0.0)
    assert np.all(g.value[:, DEAD] == 0.0)


# ====================================================== (b) zeros in a value
def _mp_log_density(logits, temperature, x):
    """The Concrete log-density on the simplex, from the formula, in mpmath; the
    categories with logit -inf are left out."""
    t = mpmath.mpf(temperature)
    live = [(mpmath.mpf(a), xk) for a, xk in zip(logits, x) if a != -np.inf]
    k = len(live)
    terms = [a - t * mpmath.log(xk) for a, xk in live]
    return (
        mpmath.loggamma(k)
        + (k - 1) * mpmath.log(t)
        + mpmath.fsum(a - (t + 1) * mpmath.log(xk) for a, xk in live)
        - k * mpmath.log(mpmath.fsum(mpmath.exp(z) for z in terms))
    )


def _mp_shrunk(x, eps):
    """x with its zeros replaced by eps and the rest scaled to keep the sum 1."""
    m = sum(1 for v in x if v == 0)
    return [eps if v == 0 else mpmath.mpf(v) * (1 - m * eps) for v in x]


def _mp_softmax_weights(logits, temperature, x):
    t = mpmath.mpf(temperature)
    z = [
        mpmath.mpf(a) - t * mpmath.log(v) if a != -np.inf else None
        for a, v in zip(logits, x)
    ]
    zmax = max(v for v in z if v is not None)
    e = [mpmath.exp(v - zmax) if v is not None else mpmath.mpf(0) for v in z]
    total = mpmath.fsum(e)
    return [v / total for v in e]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, masked", [(2, 0), (3, 0), (4, 0), (3, 1), (40, 0)])
def test_value_gradient_of_a_dominant_tiny_entry_keeps_its_digits(
    simd_level, dtype, k, masked
):
    # At T = 1 / (K - 1) the value gradient T (K w - 1) - 1 of an entry whose
    # weight is near 1 cancels: x = (1e-20, 1) at K = 2, T = 1 gave 0 where the
    # exact gradient is -1.21 (Note [dominant value gradient]). K = 2, 3, 4 run
    # down columns; a masked category (which does not count in K) sends K = 3 row
    # by row, and K = 40 is always row by row.
    t = dtype(1.0) / dtype(k - 1)
    tinies = [1e-8, 1e-12, 1e-20, 1e-30] + ([1e-300] if dtype == np.float64 else [])
    logits = np.linspace(0.3, -0.2, k)
    x = np.empty((len(tinies), k + masked))
    for r, tiny in enumerate(tinies):
        x[r, :k] = np.full(k, (1.0 - tiny) / (k - 1))
        x[r, 0] = tiny
        x[r, k:] = 0.0
    x = x.astype(dtype)
    full = np.concatenate([logits, np.full(masked, -np.inf)]).astype(dtype)
    up = np.linspace(1.0, 2.0, len(tinies)).astype(dtype)
    got = Relaxed(t, logits=full).log_prob_vjp(x, up).value
    tol = 1e-12 if dtype == np.float64 else 2e-7
    # 1 - w_0 is about x_0: 1e-300 needs over 300 digits to survive.
    with mpmath.workdps(360):
        for r in range(len(tinies)):
            xr = [mpmath.mpf(float(v)) for v in x[r, :k]]
            w = _mp_softmax_weights([float(v) for v in full[:k]], float(t), xr)
            tt = mpmath.mpf(float(t))
            for j in range(k):
                want = mpmath.mpf(float(up[r])) * (tt * (k * w[j] - 1) - 1) / xr[j]
                err = abs(mpmath.mpf(float(got[r, j])) - want) / abs(want)
                assert err <= tol, (r, j, float(got[r, j]), float(want))
            assert np.all(got[r, k:] == 0.0)


def test_value_gradient_of_a_dominant_entry_near_the_largest_temperature():
    # Where T (K - 1) overflows, the form of Note [dominant value gradient] would
    # be inf or inf - inf; the answer is finite (K = 3) or +inf (K = 40).
    a = np.log([0.5001, 0.24995, 0.24995])
    got = Relaxed(1e308, logits=a).log_prob_vjp(np.full(3, 1 / 3), 1.0).value
    with mpmath.workdps(400):  # a - T log x keeps a's digits next to 1e308
        w = _mp_softmax_weights(list(a), 1e308, [mpmath.mpf(1) / 3] * 3)
        want = (mpmath.mpf(1e308) * (3 * w[0] - 1) - 1) * 3
    assert abs(mpmath.mpf(float(got[0])) - want) <= 1e-14 * abs(want)
    a40 = np.log(np.r_[0.6, np.full(39, 0.4 / 39)])
    got40 = Relaxed(1e308, logits=a40).log_prob_vjp(np.full(40, 1 / 40), 1.0).value
    assert got40[0] == np.inf and np.all(got40[1:] == -np.inf)


# (logits, x, T): m zeros among K live categories; the sign of T (K - m) - m.
ZERO_CASES = {
    "K3_m1_T0.5_finite": ([0.3, -0.4, 1.1], [0.0, 0.35, 0.65], 0.5),
    "K3_m1_T0.4_plus_inf": ([0.3, -0.4, 1.1], [0.0, 0.35, 0.65], 0.4),
    "K3_m1_T0.6_minus_inf": ([0.3, -0.4, 1.1], [0.0, 0.35, 0.65], 0.6),
    "K4_m2_T1_finite": ([0.3, -0.4, 1.1, 0.0], [0.0, 0.25, 0.0, 0.75], 1.0),
    "K5_m1_T0.25_finite": ([1.0, 2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4, 0.0], 0.25),
    "K4_m3_T3_finite": ([0.2, -0.7, 0.9, 0.4], [0.0, 1.0, 0.0, 0.0], 3.0),
    "K2_m1_T1_finite": ([0.5, -0.5], [1.0, 0.0], 1.0),
    "K2_m1_T2_minus_inf": ([0.5, -0.5], [1.0, 0.0], 2.0),
    # A masked category does not count in K: 4 live, m = 2, T = 1.
    "K4of5_m2_T1_masked_finite": (
        [0.3, -np.inf, -0.4, 1.1, 0.0],
        [0.0, 0.0, 0.25, 0.0, 0.75],
        1.0,
    ),
}


def _rule(logits, x, temperature):
    live = [a != -np.inf for a in logits]
    k = sum(live)
    m = sum(1 for lv, v in zip(live, x) if lv and v == 0)
    c = temperature * (k - m) - m
    return 1 if c < 0 else (-1 if c > 0 else 0)


def test_zero_cases_cover_all_three_branches_of_the_rule():
    signs = {_rule(*case) for case in ZERO_CASES.values()}
    assert signs == {-1, 0, 1}


@pytest.mark.parametrize("name", list(ZERO_CASES))
def test_log_prob_at_exact_zeros_is_the_limit_of_the_density(simd_level, name):
    logits, x, temperature = ZERO_CASES[name]
    d = Relaxed(temperature, logits=np.array(logits))
    lp = float(d.log_prob(np.array(x)))
    sign = _rule(logits, x, temperature)
    with mpmath.workdps(REF_DPS):
        ref = _mp_log_density(logits, temperature, _mp_shrunk(x, REF_EPS))
        ref_smaller = _mp_log_density(logits, temperature, _mp_shrunk(x, REF_EPS**2))
        if sign == 0:
            # The reference has converged: shrinking eps further changes nothing.
            assert abs(ref - ref_smaller) < mpmath.mpf(10) ** -20
            assert math.isfinite(lp)
            assert abs(lp - float(ref)) <= ZERO_LIMIT_RTOL * max(1.0, abs(float(ref)))
        else:
            # The density diverges like (T (K - m) - m) log eps, with that sign:
            # here |T (K - m) - m| >= 0.2 and log eps falls by 230.
            assert lp == sign * np.inf
            assert (ref_smaller - ref) * sign > 40


@pytest.mark.parametrize("name", list(ZERO_CASES))
@pytest.mark.parametrize("upstream", [1.0, -2.0])
def test_log_prob_gradients_at_exact_zeros_are_limits_and_never_nan(name, upstream):
    logits, x, temperature = ZERO_CASES[name]
    logits, xa = np.array(logits), np.array(x)
    d = Relaxed(temperature, logits=logits)
    g = d.log_prob_vjp(xa, upstream)
    _no_nan(*g)
    live = logits > -np.inf
    zero = live & (xa == 0)
    k = int(live.sum())

    # Logits: g (1 - K w) with w the limit of softmax(a - T log x), in mpmath.
    with mpmath.workdps(REF_DPS):
        w = _mp_softmax_weights(logits, temperature, _mp_shrunk(x, REF_EPS))
    want = np.where(live, upstream * (1.0 - k * np.array([float(v) for v in w])), 0.0)
    assert np.all(np.isfinite(g.logits))
    assert np.max(np.abs(g.logits - want)) <= ZERO_LIMIT_RTOL * k * abs(upstream)

    # Temperature: (K - m) log eps -> -inf, times the upstream gradient.
    assert g.temperature == -np.sign(upstream) * np.inf

    # Value: -(T + 1) g / x_k on the nonzero live coordinates (their weight
    # vanishes), the limit at the zeros, 0 on masked categories.
    nz = live & ~zero
    want_v = -(temperature + 1.0) * upstream / xa[nz]
    assert np.allclose(g.value[nz], want_v, rtol=ZERO_LIMIT_RTOL, atol=0.0)
    _assert_zero_limits(g.value, logits, x, temperature, upstream)
    assert np.all(g.value[~live] == 0.0)


def _k40_m20_t1():
    # A long row (row by row): 20 zeros sharing one logit among 40 live.
    rng = np.random.default_rng(40)
    logits = np.concatenate([np.full(20, 0.25), rng.standard_normal(20)])
    x = np.concatenate([np.zeros(20), rng.dirichlet(np.ones(20))])
    return list(logits), list(x), 1.0


# Rows with T (K - m) = m whose zeros share one logit: the leading numerator of
# d/dx at those zeros, T (K w - 1) - 1, is 0 in the limit, and the limit of the
# gradient is the next term (Note [vanishing numerator at a zero]): finite at
# T = 1, 0 above, an infinity below. The gradient had been 0 in all of them (a
# fresh-user review).
VANISHING_CASES = {
    "K2_m1_T1": ([0.3, -0.8], [0.0, 1.0], 1.0),
    "K3_m1_T0.5": ([0.0, 1.0, 2.0], [0.0, 0.5, 0.5], 0.5),
    "K4_m2_T1": ([0.0, 0.0, 0.5, -0.3], [0.0, 0.0, 0.4, 0.6], 1.0),
    "K3_m2_T2": ([0.4, 0.4, -0.2], [0.0, 0.0, 1.0], 2.0),
    # w = fl(1/3) on the zeros: K w - 1 alone would not round to exactly 0.
    "K6_m3_T1": ([0.7, 0.7, 0.7, 0.1, -0.5, 0.2], [0, 0, 0, 0.2, 0.3, 0.5], 1.0),
    "K6_m2_T0.5": ([-0.3, -0.3, 0.1, 0.4, -1.0, 0.6], [0, 0, 0.1, 0.2, 0.3, 0.4], 0.5),
    "K5of6_m1_T0.25_masked": (
        [1.0, -np.inf, 2.0, -1.0, 0.5, 0.0],
        [0.0, 0.0, 0.1, 0.2, 0.3, 0.4],
        0.25,
    ),
    "K40_m20_T1": _k40_m20_t1(),
}


def _mp_value_gradient(logits, temperature, x, eps):
    """d log p / d x_k per unit upstream at x with its zeros set to eps (mpmath)."""
    xs = _mp_shrunk(x, eps)
    w = _mp_softmax_weights(logits, temperature, xs)
    t = mpmath.mpf(temperature)
    k = sum(1 for a in logits if a != -np.inf)
    return [(t * (k * wk - 1) - 1) / xk for wk, xk in zip(w, xs)]


def _assert_zero_limits(got, logits, x, temperature, upstream):
    """got, the value gradient, is the limit at every live zero of x: mpmath at
    eps = 1e-150 and 1e-300 tells whether the gradient converges (the finite
    value), shrinks (0) or grows (an infinity of its sign); every rate here is a
    power of eps of at least 1/4, so the thresholds leave wide margins."""
    with mpmath.workdps(400):
        near = _mp_value_gradient(logits, temperature, x, mpmath.mpf(10) ** -150)
        nearer = _mp_value_gradient(logits, temperature, x, mpmath.mpf(10) ** -300)
    for j, (a, xj) in enumerate(zip(logits, x)):
        if a == -np.inf or xj != 0:
            continue
        a, b = near[j] * upstream, nearer[j] * upstream
        if abs(a - b) <= mpmath.mpf(10) ** -60 * abs(b):
            assert abs(got[j] - float(b)) <= 1e-13 * abs(float(b)), (j, got[j], b)
        elif abs(b) < abs(a) * mpmath.mpf(10) ** -30:
            assert got[j] == 0.0, (j, got[j])
        else:
            assert abs(b) > abs(a) * mpmath.mpf(10) ** 30, (j, a, b)
            assert got[j] == (np.inf if b > 0 else -np.inf), (j, got[j])


@pytest.mark.parametrize("name", list(VANISHING_CASES))
@pytest.mark.parametrize("upstream", [1.0, -2.0])
def test_value_gradient_at_a_zero_with_a_vanishing_numerator_is_the_next_term(
    simd_level, name, upstream
):
    logits, x, temperature = VANISHING_CASES[name]
    live = np.array(logits) > -np.inf
    k, m = int(live.sum()), int((live & (np.array(x) == 0)).sum())
    assert temperature * (k - m) == m  # the finite density
    d = Relaxed(temperature, logits=np.array(logits))
    got = d.log_prob_vjp(np.array(x), upstream).value
    _assert_zero_limits(got, logits, x, temperature, upstream)
    # The leading numerator vanishes at these zeros: none is an infinity with
    # the sign of a numerator that is not there.
    zeros = np.flatnonzero(live & (np.array(x) == 0))
    if temperature >= 1.0:
        assert np.all(np.isfinite(got[zeros]))
    assert np.isfinite(d.log_prob(np.array(x)))


@pytest.mark.parametrize("name", list(ZERO_CASES))
def test_log_space_density_at_minus_inf_is_minus_inf(name):
    logits, x, temperature = ZERO_CASES[name]
    d = ExpRelaxed(temperature, logits=np.array(logits))
    with np.errstate(divide="ignore"):
        y = np.log(np.array(x))
    assert d.log_prob(y) == -np.inf
    _no_nan(*d.log_prob_vjp(y, 1.0))


@pytest.mark.parametrize("temperature", [1e-3, 1e-4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_low_temperature_samples_have_finite_log_density_and_ruled_simplex_density(
    temperature, dtype
):
    rng = np.random.default_rng(5)
    logits = (
        rng.normal(size=(6, 5)) * np.array([[1e-4], [1e-3], [1e-2], [0.1], [1], [10]])
    ).astype(dtype)
    y = ExpRelaxed(dtype(temperature), logits=logits).rsample((200,), rng=6)
    x = Relaxed(dtype(temperature), logits=logits).rsample((200,), rng=6)

    # Log space: nothing underflows, the density is finite.
    assert np.all(np.isfinite(y))
    lpy = ExpRelaxed(dtype(temperature), logits=logits).log_prob(y)
    assert np.all(np.isfinite(lpy))
    _no_nan(*ExpRelaxed(dtype(temperature), logits=logits).log_prob_vjp(y, 1.0))

    # Simplex: zeros appear, and log_prob follows the rule row by row.
    zeros = (x == 0).sum(axis=-1)
    assert np.any(zeros > 0), "the case must exercise underflow"
    lpx = Relaxed(dtype(temperature), logits=logits).log_prob(x)
    _no_nan(lpx)
    c = temperature * (5 - zeros) - zeros
    assert np.all(np.isfinite(lpx[zeros == 0]))
    assert np.all(lpx[(zeros > 0) & (c < 0)] == np.inf)
    assert np.all(lpx[(zeros > 0) & (c > 0)] == -np.inf)
    _no_nan(*Relaxed(dtype(temperature), logits=logits).log_prob_vjp(x, 1.0))


# ================================================= (c) float32 competition
T_COMPETE = np.float32(1e-3)


def _competition_reference(logits32, gumbels64, t32):
    """The sample in float64 from the float32-rounded inputs (the oracle)."""
    a = logits32.astype(np.float64)
    s = ((a - a.max(axis=-1, keepdims=True)) + gumbels64) / np.float64(t32)
    lse = np.log(np.exp(s - s.max(axis=-1, keepdims=True)).sum(axis=-1, keepdims=True))
    y = s - s.max(axis=-1, keepdims=True) - lse
    return np.exp(y), y


def _naive_float32(logits32, gumbels64, t32):
    """What a float32-only computation gives: logits + g rounded near 3000."""
    s = (logits32 + gumbels64.astype(np.float32)) / t32
    assert s.dtype == np.float32
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _competing_logits(gumbels64):
    """Logits near 3000, exactly float32, whose first two entries plus the noise
    nearly tie: l1 + g1 - (l0 + g0) is below the float32 spacing 2^-12 there."""
    l0 = np.float32(3000.0)
    l1 = np.float32(3000.0 + gumbels64[..., 0] - gumbels64[..., 1])
    far = np.float32(2990.0)
    out = np.stack(np.broadcast_arrays(l0, l1, far), axis=-1).astype(np.float32)
    assert np.all(out.astype(np.float64) > 2900.0)
    return out


def test_float32_competition_with_explicit_gumbels():
    g32 = np.array(
        [
            [-0.97962392, 3.35601103, -0.61888013],
            [0.3, 0.30003, 1.7],
            [1.234567, -0.5, 0.0],
        ],
        dtype=np.float32,
    )
    g64 = g32.astype(np.float64)
    logits = _competing_logits(g64)
    want_x, want_y = _competition_reference(logits, g64, T_COMPETE)
    assert np.all(want_x[:, :2] > 0.05), "the two large logits must compete"

    x = Relaxed(T_COMPETE, logits=logits).rsample(gumbels=g32)
    y = ExpRelaxed(T_COMPETE, logits=logits).rsample(gumbels=g32)
    assert x.dtype == np.float32
    assert np.max(np.abs(x - want_x)) <= F32_SAMPLE_ATOL
    assert np.max(np.abs(y - want_y)[:, :2]) <= F32_SAMPLE_ATOL
    # The naive float32 computation misses, so this test can tell them apart.
    assert (
        np.max(np.abs(_naive_float32(logits, g64, T_COMPETE) - want_x))
        > NAIVE_F32_MIN_ERROR
    )


def test_float32_competition_with_the_stream_noise():
    # float32 samples draw the float noise, but the rng path must keep s in
    # float64 just as explicit gumbels do. Element i of the output uses stream
    # element i.
    key, rows = 5, 64
    g = _core.gumbels(key, 0, 0, rows * 3, float32=True).astype(np.float64)
    g = g.reshape(rows, 3)
    logits = _competing_logits(g)
    want_x, _ = _competition_reference(logits, g, T_COMPETE)
    assert np.mean(want_x[:, 0] > 0.05) > 0.5, "the two large logits must compete"

    x = Relaxed(T_COMPETE, logits=logits).rsample(rng=key)
    assert np.max(np.abs(x - want_x)) <= F32_SAMPLE_ATOL
    assert (
        np.max(np.abs(_naive_float32(logits, g, T_COMPETE) - want_x))
        > NAIVE_F32_MIN_ERROR
    )

    # The float64 class given the same rounded inputs and the same noise agrees.
    x64 = Relaxed(np.float64(T_COMPETE), logits=logits.astype(np.float64)).rsample(
        gumbels=g
    )
    assert np.max(np.abs(x - x64)) <= F32_SAMPLE_ATOL


def test_float32_log_prob_of_competing_logits_matches_float64():
    # Two categories only: a third, far one would underflow to an exact zero.
    g32 = np.array([0.3, 0.30003], dtype=np.float32)
    logits = _competing_logits(np.append(g32.astype(np.float64), 0.0))[:2]
    x = Relaxed(T_COMPETE, logits=logits).rsample(gumbels=g32)
    lp32 = Relaxed(T_COMPETE, logits=logits).log_prob(x)
    d64 = Relaxed(
        np.float64(T_COMPETE), logits=logits.astype(np.float64), validate_args=False
    )
    lp64 = d64.log_prob(x.astype(np.float64))
    # One float32 rounding of the result: 2^-23 relative.
    assert abs(float(lp32) - float(lp64)) <= 2.0**-23 * max(1.0, abs(float(lp64)))


# ================================================== (d) extreme parameters
SWEEP_T = np.logspace(-4, 4, 9)


def _overflow_possible(x, temperature, k, dtype):
    """Where |d log p / d x_j| may exceed the dtype's range: the numerator is at
    most (T + 1) + K T, so only below that over the largest finite."""
    bound = (temperature + 1.0 + k * temperature) / float(np.finfo(dtype).max)
    return x.astype(np.float64) < bound


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spread", [0.0, 1.0, 1e2, 1e4])
def test_temperature_and_logit_sweep_never_gives_nan(dtype, spread):
    k = 5
    rng = np.random.default_rng(int(spread) + 7)
    base = np.array([-1.0, -0.3, 0.0, 0.6, 1.0]) * spread + rng.normal(size=k)
    logits = np.broadcast_to(base, (SWEEP_T.size, k)).astype(dtype)
    t = SWEEP_T[:, None].astype(dtype)  # one temperature per row
    t_rows = np.broadcast_to(SWEEP_T.astype(dtype)[:, None], (SWEEP_T.size, k))

    for cls in CLASSES:
        # Expanded to the sample's rows, so that the gradients stay per row.
        d = cls(t, logits=logits).expand((30, SWEEP_T.size))
        s = d.rsample(rng=11)
        assert np.all(np.isfinite(s)), cls.__name__
        w = rng.normal(size=s.shape)
        gs = d.rsample_vjp(s, w)
        assert all(np.all(np.isfinite(a)) for a in gs), cls.__name__
        lp = d.log_prob(s)
        gl = d.log_prob_vjp(s, np.ones(lp.shape))
        _no_nan(lp, *gl)
        assert np.all(np.isfinite(gl.logits))
        if cls is ExpRelaxed:
            assert np.all(np.isfinite(lp)) and np.all(np.isfinite(gl.value))
            assert np.all(np.isfinite(gl.temperature))
            continue

        # Simplex: rows with exact zeros follow the rule, the others are finite.
        zeros = (s == 0).sum(axis=-1)
        c = SWEEP_T * (k - zeros) - zeros
        assert np.all(np.isfinite(lp[zeros == 0]))
        assert np.all(lp[(zeros > 0) & (c < 0)] == np.inf)
        assert np.all(lp[(zeros > 0) & (c > 0)] == -np.inf)
        assert not np.any(np.isinf(lp[(zeros > 0) & (c == 0)]))
        assert np.all(np.isfinite(gl.temperature[zeros == 0]))
        allowed = (s == 0) | _overflow_possible(s, t_rows, k, dtype)
        assert np.all(np.isfinite(gl.value[~allowed]))


def test_sweep_reaches_underflow_and_near_one_hot_samples():
    # The sweep above is meaningful: at T = 1e-4 with spread 1e4, samples underflow.
    d = Relaxed(1e-4, logits=np.array([-1.0, -0.3, 0.0, 0.6, 1.0]) * 1e4)
    x = d.rsample((30,), rng=11)
    assert np.all((x == 0).sum(axis=-1) == 4)


# ====================================================== (e) size extremes
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_very_long_row_sums_to_one(dtype):
    k = 200_000
    logits = np.random.default_rng(8).normal(size=k).astype(dtype)
    eps = float(np.finfo(dtype).eps)
    for cls in CLASSES:
        d = cls(dtype(0.7), logits=logits)
        s = d.rsample(rng=9)
        assert s.shape == (k,) and s.dtype == dtype
        x = s if cls is Relaxed else np.exp(s.astype(np.float64))
        # Each entry rounded once from e_j / S, S summed in double: K eps at most.
        assert abs(math.fsum(x.astype(np.float64)) - 1.0) <= k * eps
        lp = d.log_prob(s)
        assert np.isfinite(lp)
        g = d.rsample_vjp(s, np.random.default_rng(10).normal(size=k).astype(dtype))
        assert np.all(np.isfinite(g.logits)) and np.isfinite(g.temperature)
        # Shift invariance: the logits gradient sums to zero.
        gsum = math.fsum(g.logits.astype(np.float64))
        assert abs(gsum) <= 1e-3 * float(np.abs(g.logits).sum())
        gl = d.log_prob_vjp(s, 1.0)
        assert np.all(np.isfinite(gl.logits)) and np.isfinite(gl.temperature)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_million_two_category_rows_each_sum_to_one(dtype):
    n = 1_000_000
    logits = np.array([0.4, -0.9], dtype=dtype)
    temps = np.array([0.2, 1.0, 3.0], dtype=dtype)
    eps = float(np.finfo(dtype).eps)
    d = Relaxed(temps[:, None], logits=np.broadcast_to(logits, (3, 2)))
    x = d.rsample((n // 3,), rng=12)
    assert x.shape == (n // 3, 3, 2)
    sums = x.astype(np.float64).sum(axis=-1)
    assert np.all(np.abs(sums - 1.0) <= 2 * eps)
    lp = d.log_prob(x)
    assert lp.shape == (n // 3, 3)
    _no_nan(lp)
    zeros = (x == 0).any(axis=-1)
    assert np.all(np.isfinite(lp[~zeros]))


# Relative error allowed at large temperatures: the reference README's 1e-12
# for float64 log-densities.
LARGE_T_TOL = 1e-12


@pytest.mark.parametrize("temperature", [1e4, 1e10, 1e100, 1e300, 1.7e308])
def test_log_prob_stays_exact_at_large_temperatures(temperature):
    # Regression: z = a - T y was formed before subtracting its maximum, which
    # cancelled terms of size T |y|: 2e-3 relative error at T = 1e100 and NaN near
    # the float64 maximum (Note [large temperatures] in kernels.hpp).
    logits = np.array([1.0, 0.0, -1.0])
    d = Relaxed(temperature, logits=logits)
    x = d.rsample(rng=1)
    got = float(d.log_prob(x))
    with mpmath.workdps(60 + int(math.log10(temperature))):
        t = mpmath.mpf(temperature)
        y = [mpmath.log(mpmath.mpf(float(v))) for v in x]
        a = [mpmath.mpf(float(v)) for v in logits]
        z = [ak - t * yk for ak, yk in zip(a, y)]
        lse = mpmath.log(sum(mpmath.exp(zk) for zk in z))
        want = (
            mpmath.log(2)
            + 2 * mpmath.log(t)
            + sum(ak - (t + 1) * yk for ak, yk in zip(a, y))
            - 3 * lse
        )
    assert abs(got - float(want)) <= LARGE_T_TOL * max(1.0, abs(float(want)))


@pytest.mark.parametrize("cls", CLASSES)
def test_rsample_vjp_gives_masked_categories_zero_even_for_an_unvalidated_value(cls):
    # Regression: rsample_vjp read only the value, so with validate_args=False a
    # value with weight on a masked category got a gradient there. It now takes
    # every category whose logit is -inf as masked, whatever the value holds.
    logits = np.array([0.0, 1.0, -np.inf])
    d = cls(1.0, logits=logits, validate_args=False)
    x = np.array([0.2, 0.6, 0.2])
    value = x if cls is Relaxed else np.log(x)
    g = d.rsample_vjp(value, np.array([1.0, -2.0, 3.0]))
    assert g.logits[2] == 0.0
    on_support = np.array([0.25, 0.75, 0.0])
    if cls is not Relaxed:
        on_support = np.array([np.log(0.25), np.log(0.75), -np.inf])
    clean = cls(1.0, logits=logits).rsample_vjp(on_support, np.array([1.0, -2.0, 3.0]))
    assert np.all(np.isfinite(g.logits)) and np.isfinite(g.temperature)
    assert clean.logits[2] == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [3, 20, 40])  # down columns (3, 20), and row by row
def test_log_space_rsample_vjp_keeps_the_gradient_of_an_underflowed_category(
    simd_level, dtype, k
):
    # Regression (a fresh-user review; Note [underflow in log space]): a log-space
    # sample is -inf where a live category's (a + g) / T - lse overflowed, and
    # rsample_vjp took such entries as masked. (8e307, 0, -8e307) at T = 1/2 gave
    # logits gradients (-4, 4, 0) for (-14, 4, 10), and the temperature gradient,
    # which needs the log the -inf lost, a finite number; it is NaN now. Here
    # every category but the first overflows; one is masked.
    t = dtype(1e-36) if dtype == np.float32 else 1e-306
    logits = -1000.0 * np.arange(k, dtype=np.float64)
    logits[2] = -np.inf
    d = ExpRelaxed(np.asarray(t, dtype), logits=logits.astype(dtype))
    y = d.rsample(gumbels=np.zeros(k))
    assert y[0] == 0.0 and np.all(y[1:] == -np.inf)
    w = np.random.default_rng(k).uniform(1.0, 2.0, k).astype(dtype)
    g = d.rsample_vjp(y, w)
    live = logits > -np.inf
    x = np.exp(y.astype(np.float64))
    want = np.where(live, (w - x * w[live].astype(np.float64).sum()) / float(t), 0.0)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(g.logits, want, rtol=rtol, atol=0)
    assert g.logits[2] == 0.0
    assert np.isnan(g.temperature)
    # An upstream gradient of 0 on the overflowed entries leaves the temperature
    # gradient known: only the first entry's term remains, and it is 0.
    w0 = np.zeros(k, dtype)
    w0[0] = 1.0
    g0 = d.rsample_vjp(y, w0)
    assert g0.temperature == 0.0
    np.testing.assert_array_equal(g0.logits, np.zeros(k))
    # The float64 case of the review, through the logits of both signs.
    d = ExpRelaxed(0.5, logits=np.array([8e307, 0.0, -8e307]))
    y = d.rsample(gumbels=np.zeros(3))
    assert y[2] == -np.inf
    w = np.array([1.0, 2.0, 5.0])
    np.testing.assert_allclose(
        d.rsample_vjp(y, w).logits, (w - np.exp(y) * w.sum()) / 0.5, rtol=1e-15
    )


@pytest.mark.parametrize("k", [3, 20])
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_rsample_vjp_of_a_nan_value_is_nan_without_validation(simd_level, cls, k):
    # Regression (a second review): a first version of Note [underflow in log
    # space] marked masked categories with NaN and so read a NaN in the value
    # as masked, giving finite gradients where they had been NaN.
    d = cls(0.7, logits=np.linspace(-1.0, 1.0, k), validate_args=False)
    y = d.rsample(rng=1)
    y[1] = np.nan
    g = d.rsample_vjp(y, np.linspace(0.5, 2.0, k))
    assert np.isnan(g.logits).any() and np.isnan(g.temperature)
    # A masked category still gets 0 (a third review: in log space it became NaN
    # with a NaN elsewhere in its row, as it did where the upstream gradients
    # sum to an infinity).
    logits = np.linspace(-1.0, 1.0, k)
    logits[2] = -np.inf
    d = cls(0.7, logits=logits, validate_args=False)
    y = d.rsample(rng=1)
    y[1] = np.nan
    assert d.rsample_vjp(y, np.linspace(0.5, 2.0, k)).logits[2] == 0.0
    d = cls(1.0, logits=logits)
    w = np.full(k, 1e308)
    w[2] = 0.0
    g = d.rsample_vjp(d.rsample(rng=1), w)
    assert g.logits[2] == 0.0 and not np.isnan(g.temperature)


# ------------------------------------------------ short rows taken as columns
@pytest.mark.parametrize("cls", [Relaxed, ExpRelaxed])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [2, 3, 8, 16, 17, 24, 31])
def test_short_rows_give_the_bits_of_the_row_by_row_path(simd_level, cls, dtype, k):
    # Rows of up to 31 categories are computed down columns when every row of a
    # block is ordinary (kernels.hpp, Note [rows as columns]). One masked
    # category anywhere in the block sends the whole block row by row, so the
    # ordinary rows must come out the same either way. Temperatures up to 1e6
    # exercise both branches of log_ratio (Note [large temperatures]).
    rng = np.random.default_rng(k)
    rows = 300
    logits = rng.normal(scale=2.0, size=(rows, k)).astype(dtype)
    temp = np.geomspace(0.05, 1e6, rows).astype(dtype)[:, None]
    d = cls(temp[:, 0], logits=logits)
    value = d.rsample(rng=3)
    lp = d.log_prob(value)

    masked = np.vstack([logits, logits[:1]])
    masked[-1, 0] = -np.inf
    dm = cls(np.append(temp[:, 0], dtype(1.0)), logits=masked)
    vm = np.vstack([value, dm.rsample(rng=4)[-1:]])
    np.testing.assert_array_equal(dm.log_prob(vm)[:-1], lp)
    # The gradients as well (upstream gradients of mixed signs, one 0).
    up = np.linspace(-2.0, 3.0, rows).astype(dtype)
    up[7] = 0.0
    got = d.log_prob_vjp(value, up)
    want = dm.log_prob_vjp(vm, np.append(up, dtype(1.0)))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(b[:-1], a)

    # Strided (not dense) inputs take the per-row loads of the same path.
    wide = np.zeros((rows, 2 * k), dtype)
    wide[:, ::2] = value
    np.testing.assert_array_equal(d.log_prob(wide[:, ::2]), lp)


@pytest.mark.parametrize("cls", [Relaxed, ExpRelaxed])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [2, 3, 8, 16, 20, 31, 40, 64, 100])
def test_a_rows_bits_do_not_depend_on_its_lane(simd_level, cls, dtype, k):
    # The column loops run whole vectors of rows, then a scalar loop for the rest
    # of a block; a call of one row takes the scalar loop only. Both must give
    # the same bits for every output of every kernel. Temperatures from 0.05 to
    # 1e6 give values both near their row's largest entry and far below it
    # (log_ratio's early exit, kernels.hpp), and the long rows' search for the
    # largest entry starts in vectors.
    rng = np.random.default_rng(100 + k)
    rows = 37
    logits = rng.normal(scale=2.0, size=(rows, k)).astype(dtype)
    temp = np.geomspace(0.05, 1e6, rows).astype(dtype)
    d = cls(temp, logits=logits)
    value = d.rsample(rng=5)
    up = rng.normal(size=(rows, k)).astype(dtype)
    up[3, 0] = 0.0
    up_row = np.linspace(-2.0, 3.0, rows).astype(dtype)
    up_row[9] = 0.0
    whole_vjp = d.rsample_vjp(value, up)
    whole_lp, whole_lpg = d.log_prob_and_vjp(value, up_row)
    for r in (0, 3, 9, 17, rows - 1):
        one = cls(temp[r], logits=logits[r])
        g = one.rsample_vjp(value[r], up[r])
        np.testing.assert_array_equal(g.logits, whole_vjp.logits[r])
        np.testing.assert_array_equal(g.temperature, whole_vjp.temperature[r])
        lp, lpg = one.log_prob_and_vjp(value[r], up_row[r])
        np.testing.assert_array_equal(lp, whole_lp[r])
        for a, b in zip(lpg, whole_lpg):
            np.testing.assert_array_equal(a, b[r])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_long_rows_give_the_bits_of_the_block_path(simd_level, dtype):
    # rsample_vjp on the simplex takes its own one-buffer passes for rows of 2048
    # categories or more (kernels.hpp, Note [long rows]); shorter rows go through
    # the block buffers. Masked categories appended to a row of 2047 change none
    # of its sums (their terms are exact zeros), so the padded row of 2050, on
    # the long path, must reproduce the short row's bits. rsample's fused row
    # path serves both lengths; there the padding must change nothing either.
    rng = np.random.default_rng(2047)
    k, pad = 2047, 3
    logits = rng.normal(scale=2.0, size=(4, k)).astype(dtype)
    temp = np.array([0.05, 0.7, 30.0, 1e4], dtype)
    noise = rng.gumbel(size=(4, k))
    padded = np.concatenate([logits, np.full((4, pad), -np.inf, dtype)], axis=1)
    noise_padded = np.concatenate([noise, np.zeros((4, pad))], axis=1)
    short, long_ = Relaxed(temp, logits=logits), Relaxed(temp, logits=padded)
    x = short.rsample(gumbels=noise)
    x_long = long_.rsample(gumbels=noise_padded)
    np.testing.assert_array_equal(x_long[:, :k], x)
    assert np.all(x_long[:, k:] == 0.0)
    # Log space takes the same fused passes with log x as well.
    y = ExpRelaxed(temp, logits=logits).rsample(gumbels=noise)
    y_long = ExpRelaxed(temp, logits=padded).rsample(gumbels=noise_padded)
    np.testing.assert_array_equal(y_long[:, :k], y)

    # rsample_vjp: contiguous and strided upstream gradients, one entry 0, and a
    # value with an exact zero.
    x[1, 5] = 0.0
    x_long[1, 5] = 0.0
    up = rng.normal(size=(4, k)).astype(dtype)
    up[2, 7] = 0.0
    up_long = np.concatenate([up, rng.normal(size=(4, pad)).astype(dtype)], axis=1)
    strided = np.zeros((4, 2 * (k + pad)), dtype)
    strided[:, ::2] = up_long
    want = short.rsample_vjp(x, up)
    for upstream in (up_long, strided[:, ::2]):
        got = long_.rsample_vjp(x_long, upstream)
        np.testing.assert_array_equal(got.logits[:, :k], want.logits)
        assert np.all(got.logits[:, k:] == 0.0)
        np.testing.assert_array_equal(got.temperature, want.temperature)


def _five_masked_rows(dtype, k):
    """Five rows of K logits, the second with every fourth category masked, and
    temperatures from 0.05 to 1e3, one per row; and the generator after them."""
    rng = np.random.default_rng(k)
    logits = rng.normal(scale=2.0, size=(5, k)).astype(dtype)
    logits[1, ::4] = -np.inf
    return logits, np.array([0.05, 0.5, 1.0, 7.0, 1e3], dtype), rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [3, 40, 3000])
def test_strided_logits_give_the_bits_of_contiguous_ones(simd_level, dtype, k):
    # The kernels read strided logits lane by lane where contiguous ones are
    # loaded as vectors (rsample's fused row path reads them in place, Note [long
    # rows]); the distribution classes always pass contiguous copies, so this goes
    # to the module directly.
    logits, temp, rng = _five_masked_rows(dtype, k)
    rows = len(logits)
    key, stream = 12345, 6

    def draw(lg):
        x, y = np.empty((rows, k), dtype), np.empty((rows, k), dtype)
        _core.rsample(lg, temp, None, key, stream, 0, x, y, 1)
        x_only = np.empty((rows, k), dtype)
        _core.rsample(lg, temp, None, key, stream, 0, x_only, None, 1)
        return x, y, x_only

    want = draw(logits)
    np.testing.assert_array_equal(want[2], want[0])
    wide = np.zeros((rows, 3 * k), dtype)
    wide[:, ::3] = logits
    for strided in (np.asfortranarray(logits), wide[:, ::3]):
        assert not strided.flags["C_CONTIGUOUS"]
        for a, b in zip(draw(strided), want):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [64, 100, 3000])
def test_rsample_vjp_rows_give_the_same_bits_from_every_layout(simd_level, dtype, k):
    # On the simplex rsample_vjp takes rows of 64 categories or more one at a
    # time, reading a contiguous value and upstream gradient where they lie; a
    # strided one, or a value whose logits are given for their masks, is first
    # widened into a buffer of doubles (kernels.hpp, rsample_vjp_simplex_row).
    # Every route, and the float64 output that summed gradients use, must give
    # the same bits. One row sits near a vertex (Note [dominant sample entry]),
    # and one has masked categories, where the sample holds exact zeros.
    logits, temp, rng = _five_masked_rows(dtype, k)
    rows = len(logits)
    x = Relaxed(temp, logits=logits).rsample(rng=4)
    x[2] = dtype(1e-30)
    x[2, 5] = 1.0
    w = rng.normal(size=x.shape).astype(dtype)

    def vjp(value, grad, masks=None, wide=False):
        gl = np.empty((rows, k), np.float64 if wide else dtype)
        gt = np.empty(rows, np.float64)
        _core.rsample_vjp(0, value, grad, temp, gl, gt, 1, masks)
        return gl, gt

    want_l, want_t = vjp(x, w)
    assert np.all(want_l[1, ::4] == 0) and np.all(np.isfinite(want_t))
    wide_x = np.zeros((rows, 2 * k), dtype)
    wide_x[:, ::2] = x
    wide_w = np.zeros((rows, 3 * k), dtype)
    wide_w[:, ::3] = w
    routes = [
        vjp(wide_x[:, ::2], w),
        vjp(x, wide_w[:, ::3]),
        vjp(np.asfortranarray(x), np.asfortranarray(w)),
        vjp(x, w, masks=logits),
        vjp(wide_x[:, ::2], wide_w[:, ::3], masks=np.asfortranarray(logits)),
    ]
    for gl, gt in routes:
        np.testing.assert_array_equal(gl, want_l)
        np.testing.assert_array_equal(gt, want_t)
    gl, gt = vjp(x, w, wide=True)
    np.testing.assert_array_equal(gl.astype(dtype), want_l)
    np.testing.assert_array_equal(gt, want_t)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [2047, 2048, 5003])
def test_long_rows_sampled_in_their_output_give_the_buffered_bits(simd_level, dtype, k):
    # Note [rows without scratch]: rows of 2048 or more with one output are
    # sampled in that output (always for float64 and for log x, with no_scratch
    # for float32 x, which out= sets); asking for x and log x together keeps the
    # buffered path, so the three routes must agree bit for bit, on any thread
    # count, with masked categories, tiny and huge temperatures.
    rng = np.random.default_rng(k)
    rows = 6
    logits = rng.normal(scale=3.0, size=(rows, k)).astype(dtype)
    logits[1, ::5] = -np.inf
    temp = np.array([1e-30, 0.05, 0.7, 3.0, 1e3, 1e30], dtype)
    key, stream = 777, 3

    def one(x_wanted, y_wanted, no_scratch, threads):
        x = np.empty((rows, k), dtype) if x_wanted else None
        y = np.empty((rows, k), dtype) if y_wanted else None
        _core.rsample(logits, temp, None, key, stream, 9, x, y, threads, no_scratch)
        return x, y

    x_both, y_both = one(True, True, False, 1)
    for threads in (1, 2):
        for no_scratch in (False, True):
            np.testing.assert_array_equal(
                one(True, False, no_scratch, threads)[0], x_both
            )
            np.testing.assert_array_equal(
                one(False, True, no_scratch, threads)[1], y_both
            )
    d = Relaxed(temp, logits=logits)
    out = np.empty((rows, k), dtype)
    assert d.rsample(rng=5, out=out) is out
    np.testing.assert_array_equal(out, d.rsample(rng=5))


def test_gradients_at_a_large_temperature_stay_within_the_float64_bound(simd_level):
    # Regression (fresh-user review): at T = 1e5 the entries far below the row's
    # largest took log x - log xref, whose ulp of log x times T put the logits
    # gradient 9e-11 and the value gradient 3.5e-10 (relative) from the exact
    # value. Above T = 64 the kernel takes the log of the rounded ratio
    # (kernels.hpp, log_ratio_lanes), and this row, whose weights sit on its
    # smaller entries, is formed against its dominant entry (Note [dominant
    # reference]): measured 1.6e-16 and 4.7e-15. The oracle is mpmath at 40
    # digits on the same float64 inputs.
    mpmath.mp.dps = 40
    rng = np.random.default_rng(0)
    k, t = 5000, 1e5
    x = np.concatenate([[1.0], 0.5 * (1 + rng.uniform(-1e-3, 1e-3, k - 1))])
    x /= x.sum()
    d = Relaxed(t, logits=np.zeros(k))
    _, g = d.log_prob_and_vjp(x, 1.0)
    z = [-mpmath.mpf(t) * mpmath.log(mpmath.mpf(v)) for v in x]
    zmax = max(z)
    e = [mpmath.exp(v - zmax) for v in z]
    total = mpmath.fsum(e)
    w = [v / total for v in e]
    want_logits = np.array([float(1 - k * wk) for wk in w])
    want_value = np.array(
        [float((k * t * wk - (t + 1)) / mpmath.mpf(v)) for wk, v in zip(w, x)]
    )
    err_logits = np.max(np.abs(g.logits - want_logits)) / np.max(np.abs(want_logits))
    err_value = np.max(np.abs(g.value - want_value) / np.maximum(1, np.abs(want_value)))
    assert err_logits < 1e-14
    assert err_value < 1e-13


def _mp_density_and_grads(a, value, t, simplex):
    """log_prob and its gradients (upstream 1) in mpmath at the current
    precision, from the same float64 inputs: (log_prob as mpf, logits, value
    and temperature gradients as floats)."""
    k = len(a)
    tm = mpmath.mpf(t)
    y = [
        mpmath.log(mpmath.mpf(float(u))) if simplex else mpmath.mpf(float(u))
        for u in value
    ]
    z = [mpmath.mpf(float(aj)) - tm * yj for aj, yj in zip(a, y)]
    zmax = max(z)
    e = [mpmath.exp(zj - zmax) for zj in z]
    total = mpmath.fsum(e)
    w = [ej / total for ej in e]
    lse = zmax + mpmath.log(total)
    lin = mpmath.fsum(zj - (yj if simplex else 0) for zj, yj in zip(z, y))
    want_lp = mpmath.loggamma(k) + (k - 1) * mpmath.log(tm) + lin - k * lse
    want_logits = np.array([float(1 - k * wj) for wj in w])
    dy = [-(tm + (1 if simplex else 0)) + k * tm * wj for wj in w]
    want_value = np.array(
        [float(d / mpmath.mpf(float(u)) if simplex else d) for d, u in zip(dy, value)]
    )
    want_t = float(
        (k - 1) / tm + mpmath.fsum((k * wj - 1) * yj for wj, yj in zip(w, y))
    )
    return want_lp, want_logits, want_value, want_t


@pytest.mark.parametrize("cls", [Relaxed, ExpRelaxed])
@pytest.mark.parametrize("k", [16, 40])
@pytest.mark.parametrize("t", [1e3, 1e5])
def test_tiny_entries_at_a_large_temperature_keep_their_gradients_exact(
    simd_level, cls, k, t
):
    # Regression (second fresh-user review): with entries of 1e-300 at T = 1e3,
    # z = a - T y was formed against the largest entry, so the dominant z were
    # near 7e5 and their rounding put the gradients 3e-11 (T = 1e5: 1e-8) from
    # the exact ones. Such rows are now formed against their dominant entry
    # (kernels.hpp, Note [dominant reference]); K = 16 takes the short-row path,
    # K = 40 the long-row one. mpmath at 50 digits on the same float64 inputs.
    mpmath.mp.dps = 50
    rng = np.random.default_rng(5)
    a = rng.standard_normal(k) * 2
    v = rng.random(k) + 0.1
    v[::3] = 1e-300
    v[0] = 2.0
    x = v / v.sum()
    simplex = cls is Relaxed
    value = x if simplex else np.log(x)
    lp, g = cls(t, logits=a).log_prob_and_vjp(value, 1.0)

    want_lp, want_logits, want_value, want_t = _mp_density_and_grads(
        a, value, t, simplex
    )

    assert abs(float(lp) - float(want_lp)) <= 1e-15 * max(1.0, abs(float(want_lp)))
    scale = np.max(np.abs(want_logits))
    assert np.max(np.abs(g.logits - want_logits)) <= 1e-14 * scale
    assert abs(float(g.temperature) - want_t) <= 1e-14 * max(1.0, abs(want_t))
    finite = np.isfinite(want_value)
    np.testing.assert_array_equal(g.value[~finite], want_value[~finite])
    err = np.abs(g.value[finite] - want_value[finite])
    assert np.all(err <= 1e-14 * np.maximum(1.0, np.abs(want_value[finite])))


@pytest.mark.parametrize("cls", [Relaxed, ExpRelaxed])
@pytest.mark.parametrize("k", [3, 16, 40, 300])
def test_gradients_stay_finite_where_t_times_y_overflows(simd_level, cls, k):
    # Regression (sanitizer run of the fuzz campaign): where T (y - max y)
    # overflowed (log-space entries of -1e300 at T = 1e9; on the simplex,
    # entries of 1e-300 at T = 1e306) the row was treated as off the face:
    # log_prob -inf, which is right to double precision, but every gradient 0,
    # where the exact ones are finite. Such rows are now formed against their
    # dominant entry (kernels.hpp, Note [dominant reference]). K = 3 and 16 fall
    # back from the short-row columns to the row path, 40 and 300 take the
    # long-row one. mpmath on the same float64 inputs, at 400 digits so that
    # T y (near 7e308) keeps the logits' digits.
    mpmath.mp.dps = 400
    rng = np.random.default_rng(k)
    a = rng.standard_normal(k) * 2
    v = rng.random(k) + 0.1
    simplex = cls is Relaxed
    if simplex:
        t = 1e306
        v[1::3] = 1e-300
        value = v / v.sum()
    else:
        t = 1e9
        deep = np.zeros(k, dtype=bool)
        deep[1::3] = True
        value = np.log(
            np.where(deep, 0.0, v) / v[~deep].sum(), where=~deep, out=np.zeros(k)
        )
        value[deep] = -1e300
        value[1] = -1e301  # the deepest entry dominates
    lp, g = cls(t, logits=a).log_prob_and_vjp(value, 1.0)

    want_lp, want_logits, want_value, want_t = _mp_density_and_grads(
        a, value, t, simplex
    )

    assert float(want_lp) == -np.inf and lp == -np.inf  # beyond the float64 range
    assert np.all(np.isfinite(want_logits))
    np.testing.assert_allclose(g.logits, want_logits, rtol=1e-13, atol=1e-13)
    assert np.isfinite(want_t)
    assert abs(float(g.temperature) - want_t) <= 1e-13 * abs(want_t)
    finite = np.isfinite(want_value)
    np.testing.assert_array_equal(g.value[~finite], want_value[~finite])
    np.testing.assert_allclose(g.value[finite], want_value[finite], rtol=1e-13)


@pytest.mark.parametrize("space", ["simplex", "log"])
@pytest.mark.parametrize("k", [32, 33, 300])
def test_long_rows_log_prob_matches_a_long_double_oracle(simd_level, space, k):
    # Rows of 32 or more categories take ordinary_long_row (vectorised, 16-slot
    # sums; kernels.hpp): masked categories, temperatures from 0.1 to 1e4, and a
    # strided value (the scalar loop of the same function).
    rng = np.random.default_rng(k)
    rows = 40
    logits = rng.normal(scale=2.0, size=(rows, k))
    logits[::3, 5] = -np.inf
    logits[1::4, -1] = -np.inf
    temp = np.geomspace(0.1, 1e4, rows)
    cls = Relaxed if space == "simplex" else ExpRelaxed
    d = cls(temp, logits=logits)
    value = d.rsample(rng=9)
    got = d.log_prob(value)
    wide = np.zeros((rows, 2 * k))
    wide[:, ::2] = value
    np.testing.assert_array_equal(d.log_prob(wide[:, ::2]), got)

    ld = np.longdouble
    for i in range(rows):
        live = np.isfinite(logits[i])
        a = logits[i, live].astype(ld)
        y = value[i, live].astype(ld)
        if space == "simplex":
            y = np.log(y)
        kk, t = live.sum(), ld(temp[i])
        z = a - t * y
        lse = z.max() + np.log(np.exp(z - z.max()).sum())
        want = ld(math.lgamma(kk)) + (kk - 1) * np.log(t) + (a - t * y).sum() - kk * lse
        if space == "simplex":
            want -= y.sum()
        # Cancellation in the oracle's own sums: terms of size T |y| in long double.
        scale = float(np.abs(t * y).sum() + np.abs(a).sum() + 1.0)
        assert abs(got[i] - float(want)) <= 1e-13 * scale, (i, got[i], float(want))


@pytest.mark.parametrize("cls", [Relaxed, ExpRelaxed])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [2, 5, 16, 20])
def test_short_rows_rsample_vjp_gives_the_bits_of_the_masked_path(
    simd_level, cls, dtype, k
):
    # rsample_vjp takes rows of up to 31 categories down columns, summing each
    # in element order (Note [row reductions]). Padding each row with 24 - K
    # masked categories (given with the logits) sends it through the masked
    # loads, whose entries add exact zeros to every sum, so the live gradients
    # must be the same bits.
    rng = np.random.default_rng(100 + k)
    rows = 500
    logits = rng.normal(scale=2.0, size=(rows, k)).astype(dtype)
    temp = np.geomspace(0.05, 50.0, rows).astype(dtype)
    d = cls(temp, logits=logits)
    value = d.rsample(rng=5)
    w = rng.normal(size=(rows, k)).astype(dtype)
    short = d.rsample_vjp(value, w)

    pad = 24 - k
    masked = np.hstack([logits, np.full((rows, pad), -np.inf, dtype)])
    dp = cls(temp, logits=masked)
    empty = 0.0 if cls is Relaxed else -np.inf
    vp = np.hstack([value, np.full((rows, pad), empty, dtype)])
    wp = np.hstack([w, rng.normal(size=(rows, pad)).astype(dtype)])
    long = dp.rsample_vjp(vp, wp)
    np.testing.assert_array_equal(long.logits[:, :k], short.logits)
    np.testing.assert_array_equal(long.temperature, short.temperature)
    assert np.all(long.logits[:, k:] == 0)


# ------------------------------------------------- gradients summed over rows
@pytest.mark.parametrize("cls", [Relaxed, ExpRelaxed])
def test_a_shared_float32_temperature_gradient_is_the_float64_sum_rounded_once(cls):
    # Note [summed gradients]: per-row temperature gradients are summed in
    # float64 and rounded once. The float32 kernels form each row in double from
    # the float32 inputs, as the float64 kernels do from the same values, so the
    # float32 result must be the float64 one rounded (a float32 sum of rounded
    # rows was not).
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(20000, 5)).astype(np.float32)
    d32 = cls(np.float32(0.7), logits=logits)
    d64 = cls(0.7, logits=logits.astype(np.float64))
    x = d32.rsample(rng=2)
    w = rng.normal(size=x.shape).astype(np.float32)
    got = d32.rsample_vjp(x, w).temperature
    want = d64.rsample_vjp(x.astype(np.float64), w.astype(np.float64)).temperature
    assert got.dtype == np.float32
    assert got == np.float32(want)
    up = rng.normal(size=x.shape[:-1]).astype(np.float32)
    got = d32.log_prob_vjp(x, up).temperature
    want = d64.log_prob_vjp(x.astype(np.float64), up.astype(np.float64)).temperature
    assert got == np.float32(want)


def test_per_row_temperature_gradients_past_float32_sum_to_an_infinity_not_nan():
    # Regression (fresh-user review): at T = 1e-30 each row's gradient is about
    # 1e60, past float32; stored as float32 the rows were +inf and -inf and
    # summed to NaN. The exact sum, -2.3e60, overflows to -inf.
    logits = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    d = ExpRelaxed(np.float32(1e-30), logits=logits)
    y = d.rsample(rng=3)
    w = np.ones_like(y)
    w[:, 0] = -1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gt = d.rsample_vjp(y, w).temperature
    d64 = ExpRelaxed(1e-30, logits=logits.astype(np.float64))
    exact = d64.rsample_vjp(y.astype(np.float64), w.astype(np.float64)).temperature
    assert np.isfinite(exact) and exact < -np.finfo(np.float32).max
    assert gt == -np.inf


@pytest.mark.parametrize(
    "dtype,scales",
    [
        (np.float32, [1e-30, 1e-6, 1e6, 1e30]),
        (np.float64, [1e-300, 1e-6, 1e6, 1e300]),
    ],
)
def test_probs_at_any_scale_give_the_same_distribution(dtype, scales):
    # Regression (fresh-user review): the distribution kept log(probs) without
    # normalising, so float32 probs of 1e30 stored logits near 69, whose float32
    # rounding put samples at T = 0.01 6e-5 from the exact ones (the bound is
    # 1e-5) and log_prob 4e-6 (bound 1e-6). It now keeps log q - log sum q
    # (kernels.hpp, Note [probs of any scale]).
    base = np.array([[1.0, 2.0, 3.0], [0.5, 0.25, 0.25], [1e-3, 1.0, 0.0]])
    g = np.random.default_rng(11).gumbel(size=(1000, 3, 3)).astype(dtype)
    logits = np.log(
        base / base.sum(-1, keepdims=True),
        where=base > 0,
        out=np.full_like(base, -np.inf),
    )
    s = (logits + g.astype(np.float64)) / 0.01
    e = np.exp(s - s.max(-1, keepdims=True))
    want_x = e / e.sum(-1, keepdims=True)
    eps = np.finfo(dtype).eps
    tol_x = 1e-5 if dtype == np.float32 else 1e-10
    tol_lp = 1e-6 if dtype == np.float32 else 1e-12
    x1 = Relaxed(dtype(1.0), logits=logits.astype(dtype)).rsample((1000,), gumbels=g)
    ref_lp = Relaxed(dtype(1.0), probs=base.astype(dtype)).log_prob(x1)
    for c in [1.0, *scales]:
        q = (base * c).astype(dtype)
        d = Relaxed(dtype(0.01), probs=q)
        # The normalised logits are within a few ulps of 1 (absolute).
        np.testing.assert_allclose(
            d.logits, logits.astype(dtype), rtol=4 * eps, atol=4 * eps
        )
        x = d.rsample((1000,), gumbels=g)
        assert np.max(np.abs(x - want_x)) <= tol_x, c
        lp = Relaxed(dtype(1.0), probs=q).log_prob(x1).astype(np.float64)
        err = np.max(np.abs(lp - ref_lp) / np.maximum(1.0, np.abs(ref_lp)))
        assert err <= tol_lp, (c, err)


def test_log_probs_of_a_subnormal_share_keep_their_digits():
    # Note [probs of any scale]: where q / sum q is subnormal it has lost bits,
    # and the stored logit is log q - log sum q instead of its log.
    d = Relaxed(1.0, probs=np.array([3e-320, 7.0, 0.0]))
    want = math.log(3e-320) - math.log(7.0)
    assert abs(d.logits[0] - want) <= 1e-15 * abs(want)
    assert d.logits[1] == math.log(7.0 / 7.0) and d.logits[2] == -np.inf


@pytest.mark.parametrize("c", [1e-300, 1e300, 5e307])
def test_probs_gradients_scale_with_the_probs(c):
    # d/dq of anything that depends on q / sum q scales as 1 / c when q does,
    # also where sum q overflows (c = 5e307; Note [probs of any scale]).
    base = np.array([[2.0, 2.0, 1.0], [0.5, 0.25, 0.25]])
    x = Relaxed(0.5, probs=base).rsample((4,), rng=3)
    w = np.random.default_rng(12).standard_normal(x.shape)
    want = Relaxed(0.5, probs=base).rsample_vjp(x, w)
    got = Relaxed(0.5, probs=base * c).rsample_vjp(x, w)
    np.testing.assert_allclose(got.probs * c, want.probs, rtol=1e-14, atol=1e-14)
    assert got.temperature == pytest.approx(want.temperature, rel=1e-14)


# Note [large upstream gradients]: rsample_vjp against a 60-digit oracle for
# upstream gradients near the float64 maximum. Each result may carry a few
# roundings of every term it sums, so the error bound is LARGE_GRAD_RTOL times
# K times the sum of the terms' sizes; past the float64 range the exact value
# must come out as the infinity of its sign.
LARGE_GRAD_RTOL = 16 * EPS64
DOUBLE_MAX = mpmath.mpf(np.finfo(np.float64).max)


def _mp_rsample_vjp(value, w, t, simplex):
    """d sum(w x) / d logits and d/dT from the sample, with the sizes their
    error bounds scale with (the sums of the terms' magnitudes)."""
    with mpmath.workdps(REF_DPS):
        vs = [mpmath.mpf(float(v)) for v in value]
        if simplex:
            y = [mpmath.log(v) if v > 0 else -mpmath.inf for v in vs]
        else:
            y = vs
        x = [mpmath.e**v if v > -mpmath.inf else mpmath.mpf(0) for v in y]
        s = mpmath.fsum(x)
        ws = [mpmath.mpf(float(a)) for a in w]
        log_s = mpmath.log(s)
        w_abs = mpmath.fsum(abs(a) for a in ws)
        if simplex:
            wx = mpmath.fsum(a * b for a, b in zip(ws, x)) / s
            ds = [b / s * (a - wx) for a, b in zip(ws, x)]
            ds_size = [b / s * (abs(a) + w_abs) for a, b in zip(ws, x)]
        else:
            total = mpmath.fsum(ws)
            ds = [a - b / s * total for a, b in zip(ws, x)]
            ds_size = [abs(a) + b / s * w_abs for a, b in zip(ws, x)]
        terms = [d * (v - log_s) for d, v in zip(ds, y) if d != 0]
        t_grad = -mpmath.fsum(terms) / t
        t_size = (
            mpmath.fsum(
                sz * abs(v - log_s) for sz, v in zip(ds_size, y) if v > -mpmath.inf
            )
            / t
        )
        return [d / t for d in ds], [sz / t for sz in ds_size], t_grad, t_size


def _assert_exact_or_overflowed(got, want, size, k, what):
    if abs(want) > DOUBLE_MAX:
        assert got == (np.inf if want > 0 else -np.inf), (what, got, want)
        return
    bound = LARGE_GRAD_RTOL * k * size
    assert np.isfinite(got) and abs(mpmath.mpf(float(got)) - want) <= bound, (
        what,
        got,
        mpmath.nstr(want, 17),
        mpmath.nstr(bound, 3),
    )


def _large_gradient_case(cls, k, kind, big):
    rng = np.random.default_rng(k)
    d = cls(0.5, logits=rng.normal(size=k))
    value = d.rsample(rng=1)
    w = rng.normal(size=k)
    if kind == "both signs":
        w[2], w[5] = big, -big
    else:  # every entry large and positive: the sum of w passes the range
        w = big * rng.uniform(0.5, 1.0, size=k)
    return d, value, w


@pytest.mark.parametrize("big", [1.79e308, 1e308, 3e307])
@pytest.mark.parametrize("kind", ["both signs", "one sign"])
@pytest.mark.parametrize(
    "cls, k",
    [(Relaxed, 8), (Relaxed, 40), (ExpRelaxed, 8), (ExpRelaxed, 40), (ExpRelaxed, 300)],
    ids=["simplex-8", "simplex-40", "log-8", "log-40", "log-300"],
)
def test_rsample_vjp_of_upstream_gradients_near_the_float64_maximum_is_exact(
    simd_level, cls, k, kind, big
):
    # Regression (Note [large upstream gradients]): terms and sums of such rows
    # overflowed with both signs. Log space, K = 300, +-3e307 gave a NaN
    # temperature gradient for -1.87e307; K = 8, +-1.79e308 gave +inf for
    # 1.58e308 (the simplex: +inf for 6.7e307). K = 8 takes the column path,
    # 40 and 300 the block path.
    d, value, w = _large_gradient_case(cls, k, kind, big)
    got = d.rsample_vjp(value, w)
    grads, sizes, t_grad, t_size = _mp_rsample_vjp(value, w, 0.5, cls is Relaxed)
    _assert_exact_or_overflowed(got.temperature, t_grad, t_size, k, "d/dT")
    for j in range(k):
        _assert_exact_or_overflowed(got.logits[j], grads[j], sizes[j], k, f"d/da {j}")


_LONG_ROW_ORACLE: dict = {}  # k -> _mp_rsample_vjp of its case, made once


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("k", [64, 300, 70000])
def test_long_simplex_rows_of_upstream_gradients_near_the_float64_maximum_are_exact(
    simd_level, k, num_threads
):
    # Regression (Note [large upstream gradients]): a dominant entry (x near 1)
    # with gradient -1.79e308 and another entry with +1.79e308 took the row
    # path's temperature gradient to +inf where the exact value is finite
    # (4.5e304 at K = 64). Rows of 64 categories or more take the simplex row
    # path; one row of 70000 on two threads is split over them in chunks (Note
    # [split rows]) and must give the bits of one thread.
    rng = np.random.default_rng(k)
    logits = rng.normal(size=k)
    logits[5] = 8.0
    d = Relaxed(0.5, logits=logits)
    value = d.rsample(rng=1)
    w = rng.normal(size=k)
    w[2], w[5] = 1.79e308, -1.79e308
    got = d.rsample_vjp(value, w, num_threads=num_threads)
    one = d.rsample_vjp(value, w, num_threads=1)
    np.testing.assert_array_equal(got.logits, one.logits)
    assert got.temperature == one.temperature
    if k not in _LONG_ROW_ORACLE:
        _LONG_ROW_ORACLE[k] = _mp_rsample_vjp(value, w, 0.5, True)
    grads, sizes, t_grad, t_size = _LONG_ROW_ORACLE[k]
    _assert_exact_or_overflowed(got.temperature, t_grad, t_size, k, "d/dT")
    for j in [0, 2, 5, k - 1]:
        _assert_exact_or_overflowed(got.logits[j], grads[j], sizes[j], k, f"d/da {j}")
    # Without the temperature gradient the row path has no temperature sum to
    # see the overflow by; the logits gradient must be exact all the same.
    only = d.rsample_vjp(value, w, num_threads=num_threads, wrt="logits")
    np.testing.assert_array_equal(only.logits, one.logits)
