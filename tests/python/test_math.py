"""The library's own logs and exp (cpp/include/relaxcat/detail/math.hpp) against
mpmath, through the test hook ``relaxcat._core.math``: the documented error
bounds on a wide sample of inputs, the IEEE edges, identical bits at every SIMD
level for the noise's log, and for the kernels' log (``log_fused``, Note [fused
log]) and exp the agreement of the levels with FMA."""

from __future__ import annotations

import functools

import mpmath
import numpy as np
import pytest

from relaxcat import _core

# The bounds math.hpp documents, in units in the last place of the exact result.
LOG_MAX_ULP = 1.0  # math.hpp: "log_d and log_fused_d within 1 ulp"
EXP_MAX_ULP = 2.0  # math.hpp: "exp_d within 2 ulp"

# 120 bits is 67 more than a double: the reference's own error is below 1e-20 ulp.
REF_PREC = 120

TINY = 5e-324  # the smallest subnormal, 2^-1074
DBL_MAX = np.finfo(np.float64).max
LEVELS = list(_core.available_simd_levels())


def _ulps_from(x: np.ndarray, n: int) -> np.ndarray:
    """The n neighbours of each entry of x on either side, x itself included."""
    steps = np.arange(-n, n + 1, dtype=np.int64)
    bits = np.asarray(x, dtype=np.float64).view(np.int64)[:, None] + steps[None, :]
    return bits.ravel().view(np.float64)


@functools.cache
def _log_inputs() -> np.ndarray:
    """Positive finite doubles: every binade, subnormals, 1 +- tiny, the ends of
    the reduction interval [sqrt(2)/2, sqrt(2)), and the largest doubles."""
    rng = np.random.default_rng(20240611)
    max_bits = np.float64(DBL_MAX).view(np.int64)
    parts = [
        # Uniform over bit patterns: uniform over exponents, subnormals included.
        rng.integers(1, max_bits, size=12000, endpoint=True).view(np.float64),
        # Subnormals: the first few multiples of 2^-1074, random ones, the edge.
        np.arange(1, 65) * TINY,
        rng.integers(1, 2**52, size=800).view(np.float64),
        _ulps_from(np.array([2.2250738585072014e-308]), 40),
        # 1 +- a few ulps and 1 +- 2^-j: log near 0 must keep its relative accuracy.
        _ulps_from(np.array([1.0]), 300),
        1.0 + 2.0 ** -np.arange(1, 60),
        1.0 - 2.0 ** -np.arange(1, 60),
        rng.uniform(0.5, 2.0, size=3000),
        # Where the reduction switches exponent, in several binades.
        _ulps_from(
            np.sqrt(2.0) * 2.0 ** np.arange(-1060, 1020, 37, dtype=np.float64), 8
        ),
        _ulps_from(2.0 ** np.arange(-1074, 1024, 11, dtype=np.float64), 3),
        # The largest doubles.
        _ulps_from(np.array([DBL_MAX]), 0),
        (np.float64(DBL_MAX).view(np.int64) - np.arange(1, 200)).view(np.float64),
        rng.uniform(1e300, DBL_MAX, size=300),
    ]
    x = np.concatenate(parts)
    x = x[np.isfinite(x) & (x > 0)]
    return x


@functools.cache
def _exp_inputs() -> np.ndarray:
    """The whole range where exp is neither 0 nor inf, with its edges: values near
    0, the start of the subnormal results, underflow near -745, overflow near
    709.78, and the points where the reduction k = round(x / ln2) changes."""
    rng = np.random.default_rng(99731)
    ln2 = np.log(2.0)
    tiny_pow = 2.0 ** -np.arange(0, 1075, dtype=np.float64)
    parts = [
        rng.uniform(-746.0, 710.0, size=10000),
        # Near 0: exp(x) = 1 + x must not lose x.
        tiny_pow,
        -tiny_pow,
        rng.uniform(-1e-5, 1e-5, size=1000),
        _ulps_from(np.array([0.0]), 0),
        # Subnormal results start near -708.4 and end near -745.13.
        rng.uniform(-709.0, -707.5, size=1500),
        rng.uniform(-745.2, -744.0, size=1500),
        _ulps_from(np.array([-745.1332191019411, -708.3964185322641]), 40),
        # Overflow at 709.782712893384.
        rng.uniform(709.0, 709.79, size=800),
        _ulps_from(np.array([709.782712893384]), 40),
        # Half-way points of the reduction.
        _ulps_from((np.arange(-1074, 1024, 3) + 0.5) * ln2, 4),
        np.arange(-745, 710, dtype=np.float64),
        # Far outside: 0 and inf exactly.
        np.array([-1e300, -DBL_MAX, -800.0, -746.0, 711.0, 1e300, DBL_MAX]),
    ]
    return np.concatenate(parts)


def _ulp_error(got: np.ndarray, exact: list) -> np.ndarray:
    """|got - exact| in units of the last place of exact (the spacing of doubles
    at |exact|, never below 2^-1074). An infinite result counts as 2^1024, the
    first value past the largest double, unless exact is beyond it as well."""
    errors = np.empty(len(got))
    huge = mpmath.mpf(2) ** 1024
    for i, (g, e) in enumerate(zip(got, exact)):
        if e == 0:
            errors[i] = 0.0 if g == 0 else np.inf
            continue
        if abs(e) >= huge * (1 + mpmath.mpf(2) ** -50):
            errors[i] = 0.0 if g == np.sign(float(e)) * np.inf else np.inf
            continue
        gm = mpmath.mpf(float(g)) if np.isfinite(g) else np.sign(g) * huge
        _, exponent = mpmath.frexp(e)
        ulp = mpmath.mpf(2) ** (max(int(exponent), -1021) - 53)
        errors[i] = float(abs(gm - e) / ulp)
    return errors


@functools.cache
def _reference(name: str):
    x = _log_inputs() if name == "log" else _exp_inputs()
    fn = mpmath.log if name == "log" else mpmath.exp
    with mpmath.workprec(REF_PREC):
        exact = [fn(mpmath.mpf(float(v))) for v in x]
    return x, exact


def _report(x, got, err, bound):
    worst = int(np.argmax(err))
    return (
        f"{np.count_nonzero(err > bound)} of {len(x)} inputs beyond {bound} ulp; worst "
        f"{err[worst]:.3f} ulp at x = {x[worst]!r} (got {got[worst]!r})"
    )


@pytest.mark.parametrize("name", ["log", "log_fused"])
def test_log_is_within_one_ulp_of_mpmath(simd_level, name):
    x, exact = _reference("log")
    got = _core.math(name, x)
    err = _ulp_error(got, exact)
    assert np.all(err <= LOG_MAX_ULP), _report(x, got, err, LOG_MAX_ULP)


def test_exp_is_within_two_ulp_of_mpmath(simd_level):
    x, exact = _reference("exp")
    got = _core.math("exp", x)
    err = _ulp_error(got, exact)
    assert np.all(err <= EXP_MAX_ULP), _report(x, got, err, EXP_MAX_ULP)


def test_log_sample_covers_subnormals_and_every_binade():
    # The accuracy test is only as good as its inputs: check they reach the edges.
    x = _log_inputs()
    assert np.count_nonzero(x < 2.2250738585072014e-308) > 500
    exponents = np.unique(np.frexp(x)[1])
    assert exponents.min() <= -1073 and exponents.max() == 1024
    assert len(exponents) > 2000


def test_exp_sample_covers_subnormal_results_and_overflow():
    x = _exp_inputs()
    with np.errstate(over="ignore", under="ignore"):
        y = np.exp(x)
    assert np.count_nonzero((y > 0) & (y < 2.2250738585072014e-308)) > 1000
    assert np.any(y == 0) and np.any(np.isinf(y))
    assert np.count_nonzero(np.abs(x) < 1e-300) > 50


@pytest.mark.parametrize(
    "x,want",
    [
        (0.0, -np.inf),
        (-0.0, -np.inf),
        (np.inf, np.inf),
        (1.0, 0.0),
        (-1.0, np.nan),
        (-TINY, np.nan),
        (-np.inf, np.nan),
        (np.nan, np.nan),
    ],
)
@pytest.mark.parametrize("name", ["log", "log_fused"])
def test_log_edges_follow_ieee(simd_level, name, x, want):
    got = _core.math(name, np.array([x]))[0]
    if np.isnan(want):
        assert np.isnan(got)
    else:
        assert got == want and np.signbit(got) == np.signbit(want)


@pytest.mark.parametrize(
    "x,want",
    [
        (-np.inf, 0.0),
        (-1e300, 0.0),
        (-746.0, 0.0),
        (-745.2, 0.0),
        (0.0, 1.0),
        (-0.0, 1.0),
        (710.0, np.inf),
        (1e300, np.inf),
        (np.inf, np.inf),
        (np.nan, np.nan),
    ],
)
def test_exp_edges_follow_ieee(simd_level, x, want):
    got = _core.math("exp", np.array([x]))[0]
    if np.isnan(want):
        assert np.isnan(got)
    else:
        assert got == want and not np.signbit(got)


def test_exp_of_the_smallest_subnormal_log_is_the_smallest_subnormal(simd_level):
    # exp(-745.13) is 2^-1074 to 0.5 ulp; exp must reach it, not flush it to 0.
    got = _core.math("exp", np.array([-745.1332191019411, -745.0, -744.44007192138127]))
    assert got[0] == TINY
    assert got[1] > 0 and got[2] >= TINY


def _edge_and_sample_inputs():
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, TINY, DBL_MAX])
    return {
        "log": np.concatenate([_log_inputs(), specials]),
        "log_fused": np.concatenate([_log_inputs(), specials]),
        "exp": np.concatenate([_exp_inputs(), specials]),
    }


def _at_every_level(name, x):
    before = _core.simd_level()
    try:
        results = {}
        for level in LEVELS:
            _core.set_simd_level(level)
            results[level] = _core.math(name, x).view(np.int64)
    finally:
        _core.set_simd_level(before)
    return results


def test_log_gives_identical_bits_at_every_simd_level():
    # The noise is defined through this log (README, "The random stream").
    x = _edge_and_sample_inputs()["log"]
    results = _at_every_level("log", x)
    base = results[LEVELS[-1]]
    for level, bits in results.items():
        diff = np.flatnonzero(bits != base)
        assert diff.size == 0, (
            f"log at {level} differs from {LEVELS[-1]} at {diff.size} inputs, "
            f"first x = {x[diff[0]]!r}"
        )


@pytest.mark.parametrize("name", ["exp", "log_fused"])
def test_exp_and_kernel_log_are_fused_where_the_level_has_fma(name):
    # Notes [fused exp] and [fused log]: the Horner steps are fused
    # multiply-adds on the levels with FMA (AVX2, AVX-512), which then agree bit
    # for bit; the baseline level is within an ulp of them. All are within
    # their bound of exact (the mpmath tests above, at every level).
    rng = np.random.default_rng(4)
    extra = (
        rng.uniform(-745.0, 709.0, 200_000)
        if name == "exp"
        else np.exp(rng.uniform(-745.0, 709.0, 200_000))
    )
    x = np.concatenate([_edge_and_sample_inputs()[name], extra])
    results = _at_every_level(name, x)
    fused = [level for level in LEVELS if level != "baseline"]
    for level in fused[1:]:
        assert np.array_equal(results[level], results[fused[0]]), level
    if fused:
        base = results["baseline"]
        diff = np.abs(results[fused[0]] - base)[~np.isnan(x)]
        assert diff.max() <= 1
        # The fused steps are used at all: some results differ.
        assert np.count_nonzero(diff) > 0


def test_kernel_log_without_fma_is_the_noise_log():
    # Note [fused log]: with each fused step a multiply and an add, the kernels'
    # log performs the noise log's operations in its order.
    x = _edge_and_sample_inputs()["log"]
    before = _core.simd_level()
    try:
        _core.set_simd_level("baseline")
        fused = _core.math("log_fused", x).view(np.int64)
        noise = _core.math("log", x).view(np.int64)
    finally:
        _core.set_simd_level(before)
    assert np.array_equal(fused, noise)


@pytest.mark.parametrize("name", ["log", "log_fused", "exp"])
def test_math_result_does_not_depend_on_position_in_the_array(simd_level, name):
    # Vector lanes and the scalar tail must compute the same bits for a value,
    # in vectors of ordinary values only (log's quick path) and in vectors
    # with an edge (a zero, a subnormal, an infinity, a NaN) among them.
    inputs = _edge_and_sample_inputs()[name]
    x = np.random.default_rng(8).permutation(np.concatenate([inputs[:33], inputs[-8:]]))
    whole = _core.math(name, x).view(np.uint64)
    for start in range(9):
        for n in (1, 3, 7, 8, 9, 17, 32 - start):
            part = _core.math(name, x[start : start + n]).view(np.uint64)
            assert np.array_equal(part, whole[start : start + n])
    # Each value alone (the scalar path) against its lane, NaNs of both signs
    # included: the fused reduction step of exp had flipped a NaN's sign in the
    # scalar path only (a review).
    signed = np.concatenate([x, [-np.nan, np.nan]])
    whole = _core.math(name, np.concatenate([signed, signed])).view(np.uint64)
    alone = [
        _core.math(name, signed[i : i + 1]).view(np.uint64)[0]
        for i in range(len(signed))
    ]
    assert np.array_equal(whole[: len(signed)], alone)
    assert np.array_equal(whole[len(signed) :], alone)


def test_math_rejects_an_unknown_function_name():
    x = np.array([1.0, 2.0])
    before = x.copy()
    with pytest.raises(
        ValueError, match="math: name must be 'log', 'log_fused' or 'exp', got 'sin'"
    ):
        _core.math("sin", x)
    assert np.array_equal(x, before)


# ------------------------------------------------- the float noise's own log
LOGF_MAX_ULP = 0.8  # measured 0.77 ulp (math.hpp, logf_positive)


@functools.cache
def _logf_inputs() -> np.ndarray:
    """Positive normal floats: uniform over bit patterns, [1/2, 2], 1 +- a few
    thousand ulps, and the ends of the reduction interval in every binade."""
    rng = np.random.default_rng(7)
    f32 = np.float32
    parts = [
        rng.integers(0x00800000, 0x7F7FFFFF, size=100000, dtype=np.uint32).view(f32),
        rng.uniform(0.5, 2.0, size=100000).astype(f32),
        (1.0 + np.arange(-3000, 3000) * 2.0**-24).astype(f32),
        (np.sqrt(2.0) * 2.0 ** np.arange(-126, 127)).astype(f32),
        (2.0 ** np.arange(-126, 128, dtype=np.float64)).astype(f32),
        np.array([np.finfo(f32).tiny, np.finfo(f32).max], dtype=f32),
    ]
    return np.concatenate(parts)


def test_float_log_is_within_its_bound_of_the_float64_log(simd_level):
    # The float64 log is within 1e-16 relative, far below a float ulp.
    x = _logf_inputs()
    got = _core.logf(x)
    assert got.dtype == np.float32
    exact = np.log(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    err = np.abs(got.astype(np.float64) - exact) / ulp
    worst = int(np.argmax(err))
    assert err.max() <= LOGF_MAX_ULP, f"{err[worst]} ulp at x = {x[worst]!r}"


def test_float_log_gives_identical_bits_at_every_simd_level(simd_level):
    x = _logf_inputs()
    here = _core.logf(x).view(np.uint32)
    _core.set_simd_level("baseline")  # the fixture restores the level
    np.testing.assert_array_equal(here, _core.logf(x).view(np.uint32))
