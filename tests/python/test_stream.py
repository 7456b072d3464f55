"""The random stream guarantee: Philox4x32 known answers, golden streams, the
mapping from sample elements to noise indices, and independence of the bits from
the thread count and the SIMD level.

The streams (README and noise.hpp). Double noise, for float64 samples: element i
of an output (row-major) reads Philox4x32-10 block i // 2 under counter
(block_lo, block_hi, stream_lo, stream_hi) and key (key_lo, key_hi); even i takes
words 0 and 1, odd i words 2 and 3; w = lo | hi << 32,
u = ((w >> 12) + 1/2) 2^-52 and g = -log(-log u). Float noise, for float32
samples: element i reads word i % 4 of block i // 4, w; q = (float(w & (2^31 - 1))
+ 1/2) 2^-32 in float32 arithmetic; u = q if the top bit of w is set, else 1 - q;
g = -log(-log u) in float32 arithmetic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA, LEVELS
from stream_oracle import (
    oracle_gumbels,
    oracle_gumbels_f32,
    readme_gumbels,
    readme_gumbels_f32,
)

import relaxcat
from relaxcat import _core

R = relaxcat.RelaxedOneHotCategorical
E = relaxcat.ExpRelaxedOneHotCategorical

MASK32 = 0xFFFFFFFF
EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)

# The library takes its own log; the oracle takes NumPy's. Each is within an ulp
# of -log(-log u); near g = 0 the inner log's relative error passes into g as an
# absolute one, so the error is measured against max(1, |g|), not |g|.
GUMBEL_TOL = 2 * EPS64

# The float noise against the float64 oracle from the same q: the inner log is
# within about an ulp of E (relative), which passes into g as an absolute error,
# and the outer log adds an ulp of g.
GUMBEL_TOL32 = 3 * EPS32

# A sample computed by the oracle (NumPy exp and log, its own order of sums)
# against the library's: a few float64 roundings of values of order 1, divided
# by T >= 0.3 here.
SAMPLE_TOL64 = 1e-13

# The same, for the float32 sample: one rounding of the final quotient to
# float32 (half an ulp) plus the float64 differences above.
SAMPLE_TOL32 = EPS32

# Samples at different SIMD levels: each level's exp/log are within an ulp of
# exact, so a sample entry can differ by a few ulps of itself.
LEVEL_SAMPLE_ULPS = 4

# Statistical checks: standard errors allowed (two-sided normal tail 2e-9).
SIGMAS = 6

# The key of the golden stream and its first eight values, measured once and
# pinned forever: a change here is a breaking change of the stream.
GOLDEN_KEY = 0x0123456789ABCDEF
GOLDEN_STREAM = 7
GOLDEN = [
    "0x1.136921f7e7178p-1",
    "0x1.b1b08b46be61ep-1",
    "-0x1.7f870eb39ca7dp-1",
    "0x1.59ce363291a34p+0",
    "0x1.77de03c5a6141p-3",
    "-0x1.c3115b9b3cdc0p-2",
    "0x1.d7c9d44641ff8p+0",
    "-0x1.638a561450e42p-2",
]


# The first eight values of the float noise under the same key and stream.
GOLDEN32 = [
    "0x1.77b52ep+0",
    "-0x1.0c5dbep+0",
    "0x1.5d6b94p-2",
    "-0x1.4564a2p-1",
    "0x1.2ea356p-2",
    "0x1.069654p+1",
    "0x1.44aa18p+0",
    "-0x1.0ec83ap-2",
]


# ----------------------------------------------------------------- the oracles
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def philox_py(counter, key, rounds):
    """Philox4x32-R in plain Python integers (Salmon et al., SC'11): the S-box is
    two 32x32 -> 64 multiplications, the key is bumped by the Weyl constants
    before every round but the first."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0 = (k0 + _PHILOX_W[0]) & MASK32
            k1 = (k1 + _PHILOX_W[1]) & MASK32
        p0 = _PHILOX_M[0] * c0
        p1 = _PHILOX_M[1] * c2
        c0, c1, c2, c3 = (
            (p1 >> 32) ^ c1 ^ k0,
            p1 & MASK32,
            (p0 >> 32) ^ c3 ^ k1,
            p0 & MASK32,
        )
    return [c0, c1, c2, c3]


def stream_noise(key, stream, first, n, dtype):
    """The library's noise for samples of dtype, as float64."""
    g = _core.gumbels(key, stream, first, n, float32=np.dtype(dtype) == np.float32)
    return g.astype(np.float64)


def oracle_sample(logits, temperature, gumbels):
    """softmax((logits + G) / T) over the last axis, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    t = np.asarray(temperature, dtype=np.float64)
    s = (logits - logits.max(axis=-1, keepdims=True) + gumbels) / t
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


def gumbel_err(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    return float(
        np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want)), initial=0.0)
    )


def ulp_diff(a, b):
    """Per-entry distance in ulps of the larger magnitude."""
    a = np.asarray(a)
    b = np.asarray(b)
    scale = np.spacing(np.maximum(np.abs(a), np.abs(b)))
    return np.abs(a.astype(np.float64) - b.astype(np.float64)) / scale.astype(
        np.float64
    )


def _hex(a):
    return [float(x).hex() for x in np.asarray(a, dtype=np.float64).ravel()]


def _kat():
    raw = json.loads((DATA / "philox_kat.json").read_text())
    cases = []
    for name, rounds in (("philox4x32_10", 10), ("philox4x32_7", 7)):
        for v in raw[name]:
            cases.append(
                pytest.param(
                    [int(x, 16) for x in v["counter"]],
                    [int(x, 16) for x in v["key"]],
                    rounds,
                    [int(x, 16) for x in v["output"]],
                    id=f"{name}-{v['counter'][0]}",
                )
            )
    return cases


# ------------------------------------------------------------------- Philox
@pytest.mark.parametrize("counter,key,rounds,output", _kat())
def test_philox_matches_the_random123_known_answers(counter, key, rounds, output):
    assert _core.philox4x32(counter, key, rounds) == output
    assert philox_py(counter, key, rounds) == output  # the oracle too


@pytest.mark.parametrize("rounds", [7, 10])
def test_philox_matches_the_python_oracle_on_random_blocks(rounds):
    rng = np.random.default_rng(20240611)
    for _ in range(200):
        counter = [int(w) for w in rng.integers(0, 2**32, size=4, dtype=np.uint64)]
        key = [int(w) for w in rng.integers(0, 2**32, size=2, dtype=np.uint64)]
        assert _core.philox4x32(counter, key, rounds) == philox_py(counter, key, rounds)


def test_philox_rejects_round_counts_other_than_7_and_10():
    counter, key = [1, 2, 3, 4], [5, 6]
    with pytest.raises(ValueError, match=r"rounds must be 7 or 10, got 8"):
        _core.philox4x32(counter, key, 8)
    assert counter == [1, 2, 3, 4] and key == [5, 6]


# ------------------------------------------------------------ golden stream
def test_golden_stream_values_are_pinned(simd_level):
    got = _core.gumbels(GOLDEN_KEY, GOLDEN_STREAM, 0, len(GOLDEN))
    assert got.dtype == np.float64
    assert _hex(got) == GOLDEN


def test_golden_stream_values_match_the_oracle():
    want = oracle_gumbels(GOLDEN_KEY, GOLDEN_STREAM, 0, len(GOLDEN))
    got = np.array([float.fromhex(h) for h in GOLDEN])
    assert gumbel_err(got, want) <= GUMBEL_TOL


def test_golden_float_stream_values_are_pinned(simd_level):
    got = _core.gumbels(GOLDEN_KEY, GOLDEN_STREAM, 0, len(GOLDEN32), float32=True)
    assert got.dtype == np.float32
    assert _hex(got) == [float.hex(float.fromhex(h)) for h in GOLDEN32]


def test_golden_float_stream_values_match_the_oracle():
    want = oracle_gumbels_f32(GOLDEN_KEY, GOLDEN_STREAM, 0, len(GOLDEN32))
    got = np.array([float.fromhex(h) for h in GOLDEN32])
    assert gumbel_err(got, want) <= GUMBEL_TOL32


@pytest.mark.parametrize(
    "key,stream,first,n",
    [
        (0, 0, 0, 64),
        (0, 0, 1, 63),
        (1, 0, 0, 33),
        (0, 1, 0, 33),
        (GOLDEN_KEY, GOLDEN_STREAM, 5, 40),
        (2**64 - 1, 2**64 - 1, 2**33 + 7, 31),  # block and stream use their high words
        (0xDEADBEEF, 2**32, 2**32 * 2 - 3, 10),  # crosses block 2^32 - 1 -> 2^32
        (123456789, 42, 1000, 1),
        (123456789, 42, 1001, 1),
    ],
)
def test_gumbels_reproduce_the_documented_stream(simd_level, key, stream, first, n):
    got = _core.gumbels(key, stream, first, n)
    want = oracle_gumbels(key, stream, first, n)
    assert got.shape == (n,)
    assert gumbel_err(got, want) <= GUMBEL_TOL
    got32 = _core.gumbels(key, stream, first, n, float32=True)
    assert got32.shape == (n,) and got32.dtype == np.float32
    assert gumbel_err(got32, oracle_gumbels_f32(key, stream, first, n)) <= GUMBEL_TOL32


@pytest.mark.parametrize(
    "key,stream,first",
    [(0, 0, 0), (GOLDEN_KEY, GOLDEN_STREAM, 1), (2**64 - 1, 2**64 - 1, 2**62 + 3)],
)
def test_double_noise_is_the_readme_log_bit_for_bit(simd_level, key, stream, first):
    # The README spells log_d out step by step so that the stream can be
    # ported; its steps, taken literally in NumPy, give the same bits (a
    # fresh-user review had read "the high word plus a constant" as two steps
    # and matched none of 200 values).
    n = 300
    got = _core.gumbels(key, stream, first, n)
    want = readme_gumbels(key, stream, first, n)
    assert np.array_equal(got.view(np.uint64), want.view(np.uint64))


@pytest.mark.parametrize(
    "key,stream,first,n",
    [(5, 0, 0, 5000), (2024, 0, 54705852 - 10, 21), (2**64 - 1, 2**64 - 1, 2**62, 999)],
)
def test_float_noise_is_the_readme_recipe_bit_for_bit(
    simd_level, key, stream, first, n
):
    # The float noise as the README spells it, in NumPy float32. Element
    # 54705852 of key 2024 has q = 0.29289323091 (a second look at the fifth
    # review): equal to the float32 threshold, above the decimal 0.29289322, so
    # it follows the README's "compared in float32".
    got = _core.gumbels(key, stream, first, n, float32=True)
    want = readme_gumbels_f32(key, stream, first, n)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_float_noise_matches_the_oracle_in_both_tails_and_both_halves(simd_level):
    # 2^16 elements reach all three reductions of noise.hpp (top bit set; u = 1 - q
    # with q below and above 1 - 1/sqrt 2) and values of g within 0.5 of both
    # ends of what 2^16 draws reach.
    n = 1 << 16
    got = _core.gumbels(2718, 28, 3, n, float32=True)
    want = oracle_gumbels_f32(2718, 28, 3, n)
    assert gumbel_err(got, want) <= GUMBEL_TOL32
    assert want.min() < -2.2 and want.max() > 10.0


@pytest.mark.parametrize("float32", [False, True])
def test_gumbels_of_a_window_are_the_same_elements_of_a_longer_call(float32):
    whole = _core.gumbels(99, 3, 0, 101, float32=float32)
    for first in (0, 1, 2, 3, 5, 37, 50):
        for n in (0, 1, 2, 3, 13, 51 - first % 2):
            part = _core.gumbels(99, 3, first, n, float32=float32)
            np.testing.assert_array_equal(part, whole[first : first + n])


def test_gumbels_lie_in_the_documented_range():
    # u in [2^-53, 1 - 2^-53] gives g in [-log(-log 2^-53), -log(2^-53)]:
    # about [-3.6, 36.7]; a million draws stay well inside.
    g = _core.gumbels(5, 0, 0, 1 << 20)
    lo = -np.log(-np.log(2.0**-53))
    hi = -np.log(-np.log1p(-(2.0**-53)))
    assert np.all(np.isfinite(g))
    assert lo <= g.min() and g.max() <= hi


def test_float_gumbels_lie_in_the_documented_range():
    # q in [2^-33, 1/2] gives g in [-log(-log 2^-33), -log(-log1p(-2^-33))]:
    # about [-3.13, 22.87]; the extreme words reach the ends exactly.
    g = _core.gumbels(5, 0, 0, 1 << 20, float32=True)
    lo = -np.log(-np.log(2.0**-33))
    hi = -np.log(-np.log1p(-(2.0**-33)))
    assert np.all(np.isfinite(g))
    assert lo - 1e-5 <= g.min() and g.max() <= hi + 1e-5
    assert abs(lo + 3.13) < 0.01 and abs(hi - 22.87) < 0.01


@pytest.mark.parametrize("float32", [False, True])
def test_gumbel_noise_has_the_standard_gumbel_mean_and_variance(float32):
    # Standard Gumbel: mean = Euler's gamma, variance = pi^2 / 6. With n = 2^20
    # the standard error of the mean is 1.28 / 1024 = 1.25e-3 and of the variance
    # sqrt(4.4) (pi^2 / 6) / 1024 = 3.4e-3 (kurtosis 5.4); 6 standard errors: a
    # false-failure rate about 2e-9 per check (the seed is fixed, so it either
    # passes always or never).
    n = 1 << 20
    g = _core.gumbels(11, 0, 0, n, float32=float32).astype(np.float64)
    var = np.pi**2 / 6
    assert abs(g.mean() - np.euler_gamma) < SIGMAS * np.sqrt(var / n)
    assert abs(g.var() - var) < SIGMAS * np.sqrt(4.4 * var**2 / n)


# -------------------------------------------------- samples from the stream
@pytest.mark.parametrize(
    "dtype,tol", [(np.float64, SAMPLE_TOL64), (np.float32, SAMPLE_TOL32)]
)
def test_rsample_with_an_int_seed_is_softmax_of_the_oracle_stream(dtype, tol):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 3, 7)).astype(dtype)
    temp = rng.uniform(0.3, 2.0, size=(3,)).astype(dtype)
    seed = 0xFEEDFACECAFEBEEF
    x = R(temp, logits=logits).rsample((2,), rng=seed)
    assert x.shape == (2, 4, 3, 7) and x.dtype == dtype
    oracle = oracle_gumbels_f32 if dtype == np.float32 else oracle_gumbels
    g = oracle(seed, 0, 0, x.size).reshape(x.shape)
    want = oracle_sample(logits, temp[:, None], g)
    np.testing.assert_allclose(x, want, rtol=0, atol=tol)


def test_log_space_rsample_is_log_softmax_of_the_oracle_stream():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(5, 6))
    y = E(0.7, logits=logits).rsample(rng=77)
    g = oracle_gumbels(77, 0, 0, y.size).reshape(y.shape)
    np.testing.assert_allclose(
        y, np.log(oracle_sample(logits, 0.7, g)), rtol=0, atol=SAMPLE_TOL64
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [3, 15, 40])
def test_rsample_with_an_int_seed_uses_the_same_noise_as_explicit_gumbels(
    simd_level, dtype, k
):
    # At every level the kernel's own noise is bit for bit _core.gumbels' (the
    # float noise for float32 samples), for short rows (taken as columns) and
    # long ones.
    logits = np.linspace(-1, 1, k * 41).reshape(41, k).astype(dtype)
    for cls in (R, E):
        d = cls(dtype(0.9), logits=logits)
        x = d.rsample(rng=31337)
        g = stream_noise(31337, 0, 0, x.size, dtype).reshape(x.shape)
        np.testing.assert_array_equal(x, d.rsample(gumbels=g))


def test_the_same_int_seed_gives_the_same_bits_every_call():
    d = R(np.array([0.5, 1.0]), logits=np.array([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0]]))
    first = d.rsample((3,), rng=12345)
    for _ in range(3):
        np.testing.assert_array_equal(d.rsample((3,), rng=12345), first)
    assert not np.array_equal(d.rsample((3,), rng=12346), first)


def test_a_generator_draws_one_key_and_stream_per_call():
    d = R(0.8, logits=np.array([0.0, 0.5, 1.0, 1.5]))
    gen = np.random.default_rng(2024)
    mirror = np.random.default_rng(2024)
    for _ in range(3):
        x = d.rsample((5,), rng=gen)
        key, stream = mirror.integers(0, 2**64, size=2, dtype=np.uint64)
        g = _core.gumbels(int(key), int(stream), 0, x.size).reshape(x.shape)
        np.testing.assert_array_equal(x, d.rsample((5,), gumbels=g))
    # The Generator was advanced exactly as the mirror was: nothing else drawn.
    assert gen.integers(0, 2**63) == mirror.integers(0, 2**63)


@pytest.mark.parametrize(
    "call",
    [
        lambda d, g: d.rsample(rng=g, out=np.zeros(3)),
        lambda d, g: d.rsample(rng=g, out=np.zeros(2, dtype=np.float32)),
        lambda d, g: d.rsample(rng=g, num_threads=0),
        lambda d, g: d.sample((2,), rng=g, out=np.zeros((3, 2))),
        lambda d, g: d.rsample(rng=g, hard="yes"),
        lambda d, g: d.entropy(n_samples=1, rng=g),
        lambda d, g: R(0.5, logits=np.zeros((1,) * 31 + (2,))).entropy(4, rng=g),
    ],
)
def test_a_call_that_fails_leaves_the_generator_as_it_was(call):
    d = R(0.5, logits=np.array([0.0, 1.0]))
    gen = np.random.default_rng(7)
    before = gen.bit_generator.state
    with pytest.raises((ValueError, TypeError)):
        call(d, gen)
    assert gen.bit_generator.state == before


@pytest.mark.parametrize("error", [MemoryError, KeyboardInterrupt])
@pytest.mark.parametrize(
    "call",
    [
        lambda d, g: d.rsample((2,), rng=g),
        lambda d, g: d.entropy(n_samples=4, rng=g),
        lambda d, g: relaxcat.kl_divergence(d, d, n_samples=4, rng=g),
    ],
)
def test_a_kernel_that_fails_leaves_the_generator_as_it_was(monkeypatch, error, call):
    # The kernel fails after the key and stream were drawn (the core's scratch
    # can be too big for memory; Ctrl-C): the Generator is set back.
    d = R(0.5, logits=np.array([0.0, 1.0]))
    gen = np.random.default_rng(7)
    before = gen.bit_generator.state

    def failing(*args):
        raise error()

    monkeypatch.setattr(_core, "rsample", failing)
    with pytest.raises(error):
        call(d, gen)
    assert gen.bit_generator.state == before


@pytest.mark.parametrize(
    "step, call",
    [
        ("one_hot", lambda d, g: d.rsample((2,), rng=g, hard=True)),
        ("one_hot", lambda d, g: d.rsample(rng=g, out=np.empty((2,)), hard=True)),
        (
            "one_hot",
            lambda d, g: relaxcat.gumbel_softmax(
                np.zeros((3, 2)), 0.5, hard=True, rng=g
            ),
        ),
        (
            "one_hot",
            lambda d, g: relaxcat.gumbel_softmax(
                np.zeros((2, 3)), 0.5, hard=True, axis=0, rng=g
            ),
        ),
        ("_estimate", lambda d, g: d.entropy(n_samples=4, rng=g)),
        ("_estimate", lambda d, g: relaxcat.kl_divergence(d, d, n_samples=4, rng=g)),
    ],
)
def test_a_step_after_the_draw_that_fails_leaves_the_generator_as_it_was(
    monkeypatch, step, call
):
    # hard=True forms the one-hot after the draw, and entropy and kl_divergence
    # their estimate; a failure there (an allocation) had left the Generator
    # advanced (a fresh-user review, and a second look at its finding).
    d = R(0.5, logits=np.array([0.0, 1.0]))
    gen = np.random.default_rng(7)
    before = gen.bit_generator.state

    def failing(*args):
        raise MemoryError()

    monkeypatch.setattr(relaxcat._extras, step, failing)
    with pytest.raises(MemoryError):
        call(d, gen)
    assert gen.bit_generator.state == before


@pytest.mark.parametrize(
    "bit_generator",
    [
        np.random.PCG64,
        np.random.PCG64DXSM,
        np.random.Philox,
        np.random.SFC64,
        np.random.MT19937,
    ],
)
def test_every_bit_generator_gives_the_words_of_its_integers_call(bit_generator):
    # The key and stream are defined as rng.integers(0, 2**64, size=2,
    # dtype=np.uint64); for 64-bit bit generators the library reads them with
    # random_raw, which must give the same words and leave the same state.
    d = R(0.8, logits=np.array([0.0, 0.5, 1.0, 1.5]))
    gen = np.random.Generator(bit_generator(99))
    mirror = np.random.Generator(bit_generator(99))
    for _ in range(4):
        x = d.rsample((3,), rng=gen)
        key, stream = mirror.integers(0, 2**64, size=2, dtype=np.uint64)
        g = _core.gumbels(int(key), int(stream), 0, x.size).reshape(x.shape)
        np.testing.assert_array_equal(x, d.rsample((3,), gumbels=g))
    # The same state after: the next draws agree.
    np.testing.assert_array_equal(
        gen.integers(0, 2**64, size=8, dtype=np.uint64),
        mirror.integers(0, 2**64, size=8, dtype=np.uint64),
    )


def test_a_generator_gives_different_samples_on_successive_calls():
    d = R(0.8, logits=np.zeros(6))
    gen = np.random.default_rng(7)
    a = d.rsample((4,), rng=gen)
    b = d.rsample((4,), rng=gen)
    assert not np.any(a == b)


def test_two_generators_with_the_same_seed_give_the_same_samples():
    d = R(np.array([0.3, 3.0]), logits=np.array([1.0, 0.0, -1.0]))
    g1 = np.random.default_rng(99)
    g2 = np.random.default_rng(99)
    for _ in range(2):
        np.testing.assert_array_equal(d.rsample((3,), rng=g1), d.rsample((3,), rng=g2))


def test_rng_none_gives_different_samples_on_each_call():
    # Two fresh 128-bit (key, stream) draws from the OS coincide with probability
    # 2^-128; any entry of 12 coinciding bit for bit is about as unlikely.
    d = R(1.0, logits=np.zeros(12))
    a = d.rsample()
    b = d.rsample()
    assert not np.any(a == b)


def test_sample_element_i_always_draws_noise_index_i():
    logits = np.array(
        [[0.0, 1.0, -1.0, 0.5], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    d = R(np.array([0.5, 1.0, 2.0]), logits=logits)
    seed = 4242
    k_batch = logits.size
    x = d.rsample((2,), rng=seed)
    g1 = _core.gumbels(seed, 0, k_batch, k_batch).reshape(logits.shape)
    np.testing.assert_array_equal(x[1], d.rsample(gumbels=g1))

    # Row 0 of a bigger sample is the sample of shape () itself.
    np.testing.assert_array_equal(x[0], d.rsample(rng=seed))


def test_a_generator_stream_also_maps_element_i_to_noise_index_i():
    logits = np.zeros((2, 3))
    d = R(0.6, logits=logits)
    x = d.rsample((3,), rng=np.random.default_rng(5))
    key, stream = np.random.default_rng(5).integers(0, 2**64, size=2, dtype=np.uint64)
    g = _core.gumbels(int(key), int(stream), 2 * logits.size, logits.size)
    np.testing.assert_array_equal(x[2], d.rsample(gumbels=g.reshape(logits.shape)))


def test_float32_samples_draw_the_float_noise_and_float64_the_double_noise():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(50, 9))
    temp = rng.uniform(0.3, 3.0, size=(50, 1))
    d64 = R(temp, logits=logits)
    d32 = R(temp.astype(np.float32), logits=logits.astype(np.float32))
    x64 = d64.rsample(rng=8)
    x32 = d32.rsample(rng=8)
    assert x32.dtype == np.float32
    g64 = stream_noise(8, 0, 0, x64.size, np.float64).reshape(x64.shape)
    g32 = stream_noise(8, 0, 0, x32.size, np.float32).reshape(x32.shape)
    np.testing.assert_array_equal(x64, d64.rsample(gumbels=g64))
    np.testing.assert_array_equal(x32, d32.rsample(gumbels=g32))
    # The two streams are different draws: no entry of the noise coincides.
    assert not np.any(g32 == g64)


# ------------------------------------------------------------------ threads
# Short rows (taken as columns, K <= 31), ordinary rows and one long row.
SPLIT_SHAPES = [(5000, 3), (3000, 50), (2, 200000)]


def _all_outputs(shape, dtype, num_threads):
    """Every kernel of both classes on one fixed problem, at one thread count."""
    rng = np.random.default_rng(17)
    logits = rng.normal(size=shape).astype(dtype)
    temp = rng.uniform(0.2, 2.0, size=shape[:-1] + (1,)).astype(dtype)
    out = {}
    for name, cls in (("x", R), ("y", E)):
        d = cls(temp, logits=logits)
        v = d.rsample(rng=2718, num_threads=num_threads)
        w = rng.normal(size=shape).astype(dtype)
        out[name] = v
        out[name + "_lp"] = d.log_prob(v, num_threads=num_threads)
        out[name + "_svjp"] = d.rsample_vjp(v, w, num_threads=num_threads)
        lp_grad = np.ones(shape[:-1], dtype=dtype)
        out[name + "_lvjp"] = d.log_prob_vjp(v, lp_grad, num_threads=num_threads)
    return out


def _assert_same_bits(a, b):
    assert a.keys() == b.keys()
    for key in a:
        got, want = a[key], b[key]
        if isinstance(want, tuple):
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w, err_msg=key)
        else:
            np.testing.assert_array_equal(got, want, err_msg=key)


@pytest.mark.parametrize("shape", SPLIT_SHAPES)
def test_results_are_bit_identical_for_any_thread_count(threads, shape):
    want = _all_outputs(shape, np.float64, 1)
    for n in (2, 3, 7):
        _assert_same_bits(_all_outputs(shape, np.float64, n), want)


def test_the_default_thread_count_gives_the_same_bits(threads):
    shape = (3000, 50)
    want = _all_outputs(shape, np.float32, 1)
    for n in (1, 3, 7):
        relaxcat.set_num_threads(n)
        assert relaxcat.get_num_threads() == n
        _assert_same_bits(_all_outputs(shape, np.float32, None), want)


# Rows longer than one chunk of 8192 (Note [split rows]): a call of few such rows
# (fewer than twice the threads, and 2^16 elements or more) spreads each row over
# the threads, others go row by row; both give one sample. Rows of K = CHUNK + 1
# split when eight of them go to 7 threads, rows of 8 CHUNK + 777 even alone.
CHUNK = 8192


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", [R, E])
@pytest.mark.parametrize("k", [CHUNK + 1, 8 * CHUNK + 777])
def test_long_rows_spread_over_threads_give_the_bits_of_whole_rows(
    threads, dtype, cls, k
):
    rng = np.random.default_rng(k)
    logits = (3.0 * rng.normal(size=k)).astype(dtype)
    logits[[4, k - 1]] = -np.inf
    d = cls(dtype(0.4), logits=logits)
    # One thread runs row by row; the calls below that split are those named
    # above; out= and the row's own buffer take different paths.
    want = d.rsample((8,), rng=99, num_threads=1)
    for n in (1, 2, 3, 8):
        for num_threads in (1, 2, 3, 7):
            got = d.rsample((n,), rng=99, num_threads=num_threads)
            np.testing.assert_array_equal(got, want[:n])
            out = np.full((n, k), np.nan, dtype=dtype)
            d.rsample((n,), rng=99, num_threads=num_threads, out=out)
            np.testing.assert_array_equal(out, want[:n])
    # The noise given as gumbels= takes the buffered path of one row per thread.
    g = stream_noise(99, 0, 0, 3 * k, dtype).reshape(3, k)
    given = d.rsample((3,), gumbels=g.astype(dtype), num_threads=2)
    np.testing.assert_array_equal(given, want[:3])
    # And the sample is the exact one to a few ulps (a long double softmax as
    # oracle: 64-bit significands on x86-64, where a float64 one would be off by
    # 1e-14 here, as exp magnifies the rounding of s near 100).
    a = logits.astype(np.longdouble)
    s = (a - a.max() + g.astype(np.longdouble)) / np.longdouble(dtype(0.4))
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    oracle = (e / e.sum(axis=-1, keepdims=True)).astype(np.float64)
    ulp = EPS32 if dtype == np.float32 else EPS64
    if cls is E:
        with np.errstate(divide="ignore"):
            oracle = np.log(oracle)
        live = np.isfinite(oracle)
        assert np.all(want[:3][~live] == -np.inf)
        assert gumbel_err(want[:3][live], oracle[live]) < 8 * ulp
    elif dtype == np.float32:  # formed in double: only the last rounding
        assert np.all(want[:3][oracle == 0] == 0)
        rel = np.abs(want[:3] - oracle) / np.where(oracle > 0, oracle, 1.0)
        assert np.max(rel) < 2 * ulp
    else:  # s = (a + g) / T itself is rounded: an absolute bound, as above
        np.testing.assert_allclose(want[:3], oracle, rtol=0, atol=SAMPLE_TOL64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [3 * CHUNK + 777, 8 * CHUNK + 777])
def test_rsample_vjp_of_long_rows_spread_over_threads_gives_the_bits_of_one(
    threads, dtype, k
):
    # On the simplex, rsample_vjp spreads a call of few rows longer than a chunk
    # over the threads (Note [split rows] for rsample_vjp in kernels.hpp): every
    # thread count and layout, with masks or without, gives the bits of one
    # thread, and those are the exact gradients to a few ulps. A call splits
    # when it has fewer rows than twice its threads and 2^16 elements or more:
    # here every call of 8 chunks, and the three-row calls of 3.
    rng = np.random.default_rng(k)
    logits = (3.0 * rng.normal(size=k)).astype(dtype)
    logits[[4, k - 1]] = -np.inf
    masked = R(dtype(0.4), logits=logits)
    x = masked.rsample((3,), rng=7)
    plain = R(dtype(0.4), logits=np.where(np.isinf(logits), 0, logits).astype(dtype))
    w = rng.normal(size=x.shape).astype(dtype)
    wide_w = np.repeat(w, 2, axis=1)[:, ::2]
    for d in (masked, plain):
        for n in (1, 2, 3):
            want = d.rsample_vjp(x[:n], w[:n], num_threads=1)
            for num_threads in (2, 3, 7):
                for xv, wv in (
                    (x[:n], w[:n]),
                    (np.asfortranarray(x[:n]), np.asfortranarray(w[:n])),
                    (x[:n], wide_w[:n]),
                ):
                    got = d.rsample_vjp(xv, wv, num_threads=num_threads)
                    np.testing.assert_array_equal(got.logits, want.logits)
                    np.testing.assert_array_equal(got.temperature, want.temperature)
    # Against long double: per row d/da = x (w - <w, x>) / T and
    # d/dT = -(1/T) sum_k x_k (w_k - <w, x>) log x_k; the logits and the
    # temperature serve all three rows, so both come back summed over them.
    got = masked.rsample_vjp(x, w, num_threads=2)
    xl, wl = x.astype(np.longdouble), w.astype(np.longdouble)
    t = np.longdouble(dtype(0.4))
    ds = xl * (wl - (wl * xl).sum(axis=-1, keepdims=True))
    logs = np.log(np.where(xl > 0, xl, 1))
    grad_a = (ds / t).sum(axis=0).astype(np.float64)
    grad_t = float(-(ds * logs).sum() / t)
    ulp = EPS32 if dtype == np.float32 else EPS64
    scale = float(np.max(np.abs(ds / t).sum(axis=0)))
    # Row sums of this length err by several ulps (README, Accuracy).
    assert np.max(np.abs(got.logits.astype(np.float64) - grad_a)) <= 16 * ulp * scale
    assert abs(float(got.temperature) - grad_t) <= 64 * ulp * max(1.0, abs(grad_t))


# --------------------------------------------------------------- SIMD levels
def _noise_probe():
    return np.concatenate(
        [
            _core.gumbels(key, stream, first, n, float32=float32).astype(np.float64)
            for float32 in (False, True)
            for key, stream, first, n in (
                (GOLDEN_KEY, 0, 0, 10001),
                (1, 2**40, 3, 777),  # an odd first element and count
                (2**64 - 1, 5, 2**32 - 5, 20),
            )
        ]
    )


def _sample_probe(dtype, k):
    rng = np.random.default_rng(23)
    logits = rng.normal(scale=3.0, size=(300, k)).astype(dtype)
    temp = rng.uniform(0.1, 3.0, size=(300,)).astype(dtype)
    return R(temp, logits=logits).rsample((2,), rng=555)


def test_noise_is_bit_identical_at_every_simd_level(simd_level):
    here = _noise_probe()
    _core.set_simd_level("baseline")  # the fixture restores the level
    np.testing.assert_array_equal(here, _noise_probe())


@pytest.mark.parametrize("k", [2, 5, 16, 37])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_samples_agree_within_a_few_ulps_at_every_simd_level(simd_level, dtype, k):
    here = _sample_probe(dtype, k)
    _core.set_simd_level("baseline")
    base = _sample_probe(dtype, k)
    # Entries that underflow to 0 at one level must do so at both; elsewhere
    # compare in ulps of the entry.
    assert np.array_equal(here == 0, base == 0)
    live = base != 0
    assert np.max(ulp_diff(here[live], base[live])) <= LEVEL_SAMPLE_ULPS


def test_set_simd_level_rejects_an_unknown_level():
    before = _core.simd_level()
    with pytest.raises(
        ValueError, match=r"set_simd_level: level must be one of .*got 'sse9'"
    ):
        _core.set_simd_level("sse9")
    assert _core.simd_level() == before


def test_every_level_offered_can_be_selected(simd_level):
    assert _core.simd_level() == simd_level
    assert "baseline" in LEVELS


_PROBE_SCRIPT = (
    "import relaxcat._core as c; print(c.simd_level()); "
    "print(' '.join(float(g).hex() for g in "
    f"c.gumbels({GOLDEN_KEY}, 3, 1, 4001)))"
)


@pytest.mark.parametrize("level", LEVELS)
def test_relaxcat_simd_environment_variable_forces_the_level(level):
    env = dict(os.environ, RELAXCAT_SIMD=level)
    run = subprocess.run(
        [sys.executable, "-c", _PROBE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    reported, noise = run.stdout.splitlines()
    assert reported == level
    assert noise.split() == _hex(_core.gumbels(GOLDEN_KEY, 3, 1, 4001))
