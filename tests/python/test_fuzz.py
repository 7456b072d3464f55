"""The fuzz harness of tests/fuzz, seeded and short, and the bugs it found.

The harness (tests/fuzz/fuzz_harness.py) throws random shapes, dtypes, memory
layouts and extreme values at every public entry point and checks each result
against an extended-precision oracle; tests/fuzz/README.md describes it and the
long campaign. Here it runs derandomized, so the same scenarios every time.

Each bug the fuzz found has a regression test below (all fixed); the harness
checks inputs that reach them like any other (fuzz_harness.KNOWN lists them).
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import relaxcat

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "fuzz"))
import fuzz_harness  # noqa: E402

Relaxed = relaxcat.RelaxedOneHotCategorical
ExpRelaxed = relaxcat.ExpRelaxedOneHotCategorical

# Scenarios per run: about 8 s of one core, a few calls each.
SEEDED_EXAMPLES = 1000


# No shrinking: a failure is reported as found (shrinking these scenarios can
# take minutes); tests/fuzz/campaign.py --replay reruns saved draws.
@settings(
    max_examples=SEEDED_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=list(HealthCheck),
)
@given(st.data())
def test_seeded_fuzz_scenarios_never_crash_and_match_the_oracle(data):
    fuzz_harness.scenario(data)


# ============================================================ found bugs
@pytest.mark.parametrize("where", ["temperature", "value"])
def test_values_beyond_float32_range_raise_value_error_without_a_warning(where):
    d = Relaxed(1.0, logits=np.zeros(2, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=where):
            if where == "temperature":
                Relaxed(np.array(1e39), logits=np.zeros(2, np.float32))
            else:
                d.log_prob(np.array([1e39, 0.0]))


@pytest.mark.parametrize("cls", [Relaxed, ExpRelaxed], ids=["simplex", "log"])
def test_value_gradient_at_a_temperature_near_the_float64_maximum_has_its_signs(cls):
    # Equal x_k: z = a - T y differs from a by a constant, so w = softmax(a), and
    # d/dy_k = T (K w_k - 1) - [1 on the simplex], divided by x_k = 1/3 there:
    # -inf, a finite negative number and +inf for logits (0, 1, 2), computed in
    # extended precision. Forming K T first overflows to +inf for every k.
    t = 1.7e308
    a = np.array([0.0, 1.0, 2.0])
    d = cls(t, logits=a)
    x = np.full(3, 1 / 3)
    value = x if cls is Relaxed else np.log(x)
    e = np.exp(a.astype(np.longdouble))
    w = e / e.sum()
    dy = np.longdouble(t) * (3 * w - 1) - (1 if cls is Relaxed else 0)
    with np.errstate(over="ignore"):
        want = (dy / np.longdouble(1 / 3) if cls is Relaxed else dy).astype(np.float64)
    got = d.log_prob_vjp(value, 1.0).value
    np.testing.assert_array_equal(np.sign(got), np.sign(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-12)


# Fixed in ad1462d (log_prob exact at any temperature); kept as a regression test.
def test_log_space_density_of_a_far_negative_log_value_is_minus_inf_not_nan():
    # y = (0, -1e308) is log of the vertex (1, 0) up to exp(-1e308): valid, and
    # the density there is about -(K - 1) T 1e308, below the float64 range.
    e = ExpRelaxed(10.0, logits=np.zeros(2))
    y = np.array([0.0, -1e308])
    assert e.log_prob(y) == -np.inf
    g = e.log_prob_vjp(y, 1.0)
    assert not any(np.any(np.isnan(a)) for a in g)


def test_log_space_rsample_vjp_with_far_negative_log_values_is_not_nan():
    e = ExpRelaxed(1.0, logits=np.zeros(3))
    g = e.rsample_vjp(np.array([0.0, -1e308, -1e308]), np.array([0.0, 2.0, -3.0]))
    assert not np.isnan(g.temperature)


def test_zero_rule_uses_the_exact_sign_of_t_times_live_minus_zeros():
    # T = fl(1/3) = 1/3 - 2^-54 / 3, K = 4 live, m = 1 zero: T (K - m) - m =
    # -2^-54 < 0, so the rule gives +inf; the rounded product 3 T is exactly 1.
    t = 1.0 / 3.0
    assert 3 * t == 1.0
    d = Relaxed(t, logits=np.zeros(4))
    assert d.log_prob(np.array([1 / 3, 1 / 3, 1 / 3, 0.0])) == np.inf


@pytest.mark.parametrize(
    "k, zeros", [(4, 1), (16, 1), (40, 1), (2048, 1), (8, 2), (40, 2), (2048, 2)]
)
@pytest.mark.parametrize("upstream", [1.0, -2.0, 0.0])
def test_value_gradient_at_a_zero_takes_the_exact_sign_of_its_numerator(
    simd_level, k, zeros, upstream
):
    # m zeros with equal logits share the weight 1/m, and the limit of d/dx at a
    # zero has the sign of g (T (K/m - 1) - 1). At T = fl(1/(K/m - 1)) (rounded
    # below the exact value for these K) that numerator is a tiny negative
    # number, while the rounded product T (K/m - 1) is exactly 1: the gradient
    # had come back 0 where it tends to -inf (a fresh-user review found it).
    from fractions import Fraction

    per = k // zeros - 1
    t = 1.0 / per
    exact = Fraction(t) * per - 1
    assert t * per == 1.0 and exact < 0
    x = np.full((1, k), 1.0 / (k - zeros))
    x[0, :zeros] = 0.0
    d = Relaxed(t, logits=np.zeros((1, k)))
    g = d.log_prob_vjp(x, np.array([upstream]))
    expected = 0.0 if upstream == 0.0 else (-np.inf if upstream > 0 else np.inf)
    np.testing.assert_array_equal(g.value[0, :zeros], expected)
    assert d.log_prob(x)[0] == np.inf  # T (K - m) < m, as the gradient says


def test_value_gradient_at_zeros_near_the_balance_has_the_sign_of_the_rule(simd_level):
    # Equal logits, m zeros among K, T = fl(m / (K - m)) one rounding off the
    # balance T (K - m) = m: d/dx at the zeros tends to the infinity of the sign
    # of T (K - m) - m, as log_prob's rule takes it (exact, by Fraction). It had
    # come from T (K fl(1/m) - 1) - 1, whose rounding decided the sign in 128 of
    # the pairs with K <= 40 (T = fl(7/3), K = 10, m = 7: -inf where it is +inf;
    # a fresh-user review). Every such pair, both signs of the upstream.
    from fractions import Fraction

    checked = 0
    for k in range(2, 41):
        for m in range(1, k):
            t = m / (k - m)
            c = Fraction(t) * (k - m) - m
            if c == 0:
                continue
            x = np.zeros(k)
            x[m:] = 1.0 / (k - m)
            d = Relaxed(t, logits=np.zeros(k))
            sign = 1.0 if c > 0 else -1.0
            assert d.log_prob(x) == -sign * np.inf, (k, m)
            for upstream in (1.0, -0.5):
                got = d.log_prob_vjp(x, upstream).value[:m]
                want = np.inf if sign * upstream > 0 else -np.inf
                assert np.all(got == want), (k, m, upstream, got[0])
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("k", [3, 40])
@pytest.mark.parametrize("cls", [Relaxed, ExpRelaxed])
@pytest.mark.parametrize("upstream", [0.25, 0.01, 0.0])
def test_value_gradient_near_the_largest_temperature_is_scaled_by_the_upstream(
    simd_level, k, cls, upstream
):
    # At T = 1.7e308 the value gradient g (T (K w - 1) - [1]) had T (K w - 1)
    # overflow to inf before g brought it back: +inf where it is 8.5e307, and NaN
    # for g = 0 (a fresh-user review). Reference: mpmath at 400 digits on the
    # same float64 inputs; K = 3 runs down columns, K = 40 row by row.
    import mpmath as mp

    mp.mp.dps = 400
    t = 1.7e308
    rng = np.random.default_rng(k)
    x = rng.dirichlet(np.ones(k))
    a = rng.standard_normal(k) * 0.1
    simplex = cls is Relaxed
    value = x if simplex else np.log(x)
    d = cls(t, logits=a[None])
    got = d.log_prob_vjp(value[None], np.array([upstream])).value[0]
    y = [mp.log(mp.mpf(float(v))) if simplex else mp.mpf(float(v)) for v in value]
    z = [mp.mpf(float(ai)) - mp.mpf(t) * yi for ai, yi in zip(a, y)]
    zm = max(z)
    e = [mp.exp(zi - zm) for zi in z]
    total = mp.fsum(e)
    biggest = mp.mpf(np.finfo(np.float64).max)
    for j in range(k):
        num = mp.mpf(t) * (k * e[j] / total - 1) - (1 if simplex else 0)
        ref = mp.mpf(upstream) * num / (mp.mpf(float(value[j])) if simplex else 1)
        if abs(ref) > biggest:
            assert got[j] == (np.inf if ref > 0 else -np.inf), j
        else:
            assert abs(mp.mpf(float(got[j])) - ref) <= 1e-12 * abs(ref), (j, got[j])


# NumPy 1 arrays have at most 32 dimensions: the inputs below cannot be built.
NUMPY_2 = np.lib.NumpyVersion(np.__version__) >= "2.0.0"
NEEDS_33_DIMS = "NumPy 1 arrays have at most 32 dimensions, so no caller can pass one"


@pytest.mark.parametrize(
    "where",
    [
        "expand",
        pytest.param(
            "value", marks=pytest.mark.skipif(not NUMPY_2, reason=NEEDS_33_DIMS)
        ),
    ],
)
def test_more_than_32_dimensions_raise_value_error(where):
    d = Relaxed(1.0, logits=np.zeros(2), validate_args=False)
    with pytest.raises(ValueError, match="dimensions"):
        if where == "expand":
            d.expand((1,) * 33)
        else:
            d.log_prob(np.full((1,) * 33 + (2,), 0.5))


@pytest.mark.skipif(not NUMPY_2, reason=NEEDS_33_DIMS)
def test_probs_with_too_many_batch_dimensions_name_probs():
    with pytest.raises(ValueError, match="probs"):
        Relaxed(1.0, probs=np.ones((1,) * 32 + (2,)))


@pytest.mark.skipif(not NUMPY_2, reason=NEEDS_33_DIMS)
@pytest.mark.parametrize(
    "call, name",
    [
        (
            lambda: relaxcat.gumbel_softmax_vjp(
                np.full((1,) * 32 + (2,), 0.5), 1.0, 0.5
            ),
            "sample_soft",
        ),
        (
            lambda: relaxcat.gumbel_softmax_vjp(
                np.full((1,) * 33 + (2,), 0.5), 1.0, np.ones((1,) * 34)
            ),
            "sample_soft",
        ),
        (
            lambda: relaxcat.gumbel_softmax_vjp(
                np.full((3, 2), 0.5), 1.0, np.ones((1,) * 40)
            ),
            "temperature",
        ),
        (
            lambda: relaxcat.gumbel_softmax(
                np.zeros((1,) * 33 + (2,)), np.ones((1,) * 34), rng=1
            ),
            "logits",
        ),
        (
            lambda: relaxcat.gumbel_softmax(
                np.zeros((3, 2)), np.ones((1,) * 40), rng=1
            ),
            "temperature",
        ),
    ],
)
def test_the_functional_forms_name_an_argument_with_too_many_dimensions(call, name):
    # NumPy's broadcast_shapes raises RuntimeError past 32 dimensions; the
    # arguments' ranks are checked before it is reached.
    with pytest.raises(ValueError, match=f"{name} may have at most 31 batch dim"):
        call()


def test_summed_opposite_infinite_temperature_limits_are_nan_without_a_warning():
    # Both rows are vertices (one zero, K = 2, T = 1: the finite case of the zero
    # rule) whose temperature gradient tends to -inf times the upstream sign, so
    # the scalar temperature's gradient is (-inf) + (+inf): it has no limit, and
    # NaN is the answer (the proposed README sentence says so), not a warning.
    d = Relaxed(1.0, logits=np.zeros(2))
    x = np.array([[1.0, 0.0], [1.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = d.log_prob_vjp(x, np.array([1.0, -1.0]))
    assert np.isnan(g.temperature)


def test_zero_upstream_gradient_gives_zero_temperature_gradient_at_far_log_values():
    # y_3 = -1e308 (x_3 = 0 to any precision): sum_k (K w_k - 1) y_k overflows
    # to -inf, the limit; times an upstream gradient of 0 it must stay 0.
    e = ExpRelaxed(1.0, logits=np.zeros(4))
    y = np.append(np.log([0.5, 0.25, 0.25]), -1e308)
    assert e.log_prob_vjp(y, 1.0).temperature == -np.inf
    assert e.log_prob_vjp(y, 0.0).temperature == 0.0


def test_probs_gradient_with_tiny_probs_and_huge_logit_gradients_is_not_nan():
    # T = 1e-300 makes the logits gradient about 1e300, and probs near 1e-31
    # push each quotient past the float64 range; the exact gradient is g_k / q_k
    # (the logits gradient sums to 0), so +-inf of the sign of g_k.
    e = ExpRelaxed(1e-300, probs=np.array([4.7e-31, 3.2e-31, 6.4e-31]))
    y = e.rsample(rng=0)
    w = np.array([1.0, -2.0, 0.5])
    g = e.rsample_vjp(y, w)
    gl = ExpRelaxed(1e-300, logits=np.log([4.7e-31, 3.2e-31, 6.4e-31])).rsample_vjp(
        y, w
    )
    np.testing.assert_array_equal(g.probs, np.sign(gl.logits) * np.inf)
