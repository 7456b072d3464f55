"""Size limits: element indices beyond 2^31 and 2^32, and allocations that cannot
be satisfied.

Why no test materialises 2^31 elements. Every output of rsample and of the VJPs
holds one entry per element, so a real call beyond 2^31 elements needs 8 GiB
(float32) of output; log_prob's output is per row, but its work is still per
element (about 10-40 ns each here: over a minute for 2^31). Neither fits a unit
test. What can go wrong past 2^31 is index arithmetic, and it lives in three
places, each tested below with small arrays:

1. The noise of element i is block i // 2 of the stream, with the block's high
   word in counter word 1 (README "The random stream"). The kernels compute it as
   ``offset + row * K + j`` in 64 bits (kernels.hpp, rsample_rows); the module's
   private ``offset`` argument shifts a small call to any index, so a sample at
   offset 2^33 + 1 must use the noise that element 2^33 + 1 of a huge call would
   use. The oracle builds that noise from ``_core.philox4x32`` alone.
2. Rows and strides: a row's place in each strided input is walked with 64-bit
   offsets (kernels.hpp, RowWalker). log_prob of 2^31 + 5 rows of a stride-0
   view still needs a 2^31-entry output, but rows whose byte offsets pass 2^31
   are cheap: two rows of a sparse anonymous mapping, 2^31 + 8 bytes apart.
3. Allocations: the output (NumPy) and the per-thread scratch (C++,
   parallel.hpp) must fail with MemoryError (or NumPy's ValueError for a size
   that does not fit in an index), never crash. Sizes are chosen beyond the
   48-bit address space, so they fail whatever the overcommit policy.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest
from stream_oracle import oracle_gumbels, oracle_gumbels_f32

import relaxcat
from relaxcat import _core

Relaxed = relaxcat.RelaxedOneHotCategorical
ExpRelaxed = relaxcat.ExpRelaxedOneHotCategorical


# An oracle sample (NumPy exp and log) against the library's own: a few float64
# roundings of values of order 1.
SAMPLE_TOL = 1e-13

# Six row gradients summed by NumPy in another order than 3 (a + b): a few
# roundings of numbers of order 1.
SUM_RTOL = 1e-14

# More than the 2^47 bytes of a user address space on x86-64 (and 2^48 on
# others): no overcommit policy can grant it.
UNGRANTABLE_ELEMENTS = 2**45


def _softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize(
    "offset",
    [
        2**31 - 7,  # crosses 2^31: a signed 32-bit index would turn negative
        2**32 - 5,  # crosses 2^32: the block's high word becomes 1
        2**33 + 1,  # odd: element pairs straddle blocks
        2**63 + 3,  # past the signed 64-bit range of an index
        2**64 - 12,  # the last elements of the stream
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sample_elements_at_indices_beyond_2_31_use_their_documented_noise(
    offset, dtype
):
    key, stream = 0x0123456789ABCDEF, 2**40 + 3
    rows, k = 3, 4
    logits = np.random.default_rng(1).normal(size=(rows, k)).astype(dtype)
    temp = np.array([0.4, 1.0, 2.5], dtype=dtype)
    x = np.empty((rows, k), dtype)
    y = np.empty((rows, k), dtype)
    _core.rsample(logits, temp, None, key, stream, offset, x, y, 2)

    oracle = oracle_gumbels_f32 if dtype == np.float32 else oracle_gumbels
    g = oracle(key, stream, offset, rows * k).reshape(rows, k)
    a = logits.astype(np.float64)
    s = (a - a.max(axis=-1, keepdims=True) + g) / temp.astype(np.float64)[:, None]
    tol = SAMPLE_TOL if dtype == np.float64 else float(np.finfo(np.float32).eps)
    assert np.max(np.abs(x - _softmax(s))) <= tol
    lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True))
    y_want = s - s.max(-1, keepdims=True) - lse
    assert np.max(np.abs(y - y_want) / np.maximum(1, np.abs(y_want))) <= tol


def test_the_offset_shifts_the_stream_exactly():
    # The same elements reached two ways: offset o + i equals element i of a call
    # at offset o, bit for bit, across the 2^32 block boundary.
    key, stream = 7, 9
    logits = np.zeros((4, 3))
    temp = np.ones(4)
    whole = np.empty((4, 3))
    _core.rsample(logits, temp, None, key, stream, 2**33 - 6, whole, None, 1)
    for r in range(4):
        part = np.empty((1, 3))
        _core.rsample(
            logits[:1], temp[:1], None, key, stream, 2**33 - 6 + 3 * r, part, None, 1
        )
        np.testing.assert_array_equal(part[0], whole[r])


def test_rows_of_a_view_with_byte_offsets_beyond_2_31():
    # A value whose two rows lie 2^31 + 8 bytes apart, with a stride-0 axis of
    # three copies of each: reading row 1 needs a 64-bit byte offset (a 32-bit
    # one would wrap to the wrong place or outside the buffer). The buffer is an
    # anonymous mapping of which only the two pages written are ever touched.
    k = 4
    d = Relaxed(0.6, logits=np.array([0.3, -0.2, 1.0, 0.0]), validate_args=False)
    x0 = d.rsample(rng=4)
    x1 = d.rsample(rng=5)
    big_stride = 2**31 + 8
    span = mmap.mmap(-1, big_stride + 64)
    try:
        base = np.ndarray(
            (2, k), dtype=np.float64, buffer=span, strides=(big_stride, 8)
        )
        base[0] = x0
        base[1] = x1
        view = np.lib.stride_tricks.as_strided(base, (2, 3, k), (big_stride, 0, 8))
        lp = d.log_prob(view)
        g = d.log_prob_vjp(view, np.ones((2, 3)))
        del base, view
    finally:
        span.close()
    assert lp.shape == (2, 3)
    np.testing.assert_array_equal(lp[0], np.full(3, d.log_prob(x0)))
    np.testing.assert_array_equal(lp[1], np.full(3, d.log_prob(x1)))
    want = [d.log_prob_vjp(x, 1.0).logits for x in (x0, x1)]
    np.testing.assert_allclose(g.logits, 3 * (want[0] + want[1]), rtol=SUM_RTOL)


@pytest.mark.parametrize("cls", [Relaxed, ExpRelaxed], ids=["simplex", "log"])
def test_an_output_that_cannot_be_allocated_raises_memory_error(cls):
    d = cls(0.5, logits=np.zeros(8))
    with pytest.raises(MemoryError):
        d.rsample((UNGRANTABLE_ELEMENTS,), rng=0)
    with pytest.raises(MemoryError):
        d.log_prob_vjp(
            np.broadcast_to(d.rsample(rng=1), (UNGRANTABLE_ELEMENTS, 8)), 1.0
        )
    # The process goes on.
    assert d.rsample(rng=0).shape == (8,)


def test_a_shape_whose_size_overflows_an_index_is_rejected_without_a_crash():
    d = Relaxed(0.5, logits=np.zeros(8))
    with pytest.raises((ValueError, MemoryError)):
        d.rsample((2**40, 2**40), rng=0)
    # Regression: NumPy's own "iterator is too large" escaped, naming nothing.
    with pytest.raises(ValueError, match=r"sample_shape \(4611686018427387904, 2\)"):
        d.rsample((2**62, 2), rng=0)
    with pytest.raises((ValueError, MemoryError)):
        _core.gumbels(0, 0, 0, 2**62)


# AddressSanitizer's operator new reports an allocation it cannot grant and
# aborts, whatever allocator_may_return_null says: it never throws bad_alloc.
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


@pytest.mark.skipif(UNDER_ASAN, reason="ASan's operator new aborts, never throws")
def test_scratch_that_cannot_be_allocated_raises_memory_error_from_the_kernels():
    # Per-thread scratch grows with K (parallel.hpp allocates it in the calling
    # thread, so std::bad_alloc reaches Python). A stride-0 row of 2^40
    # categories passed straight to the module asks for 3 * 2^43 bytes of it.
    row = np.broadcast_to(np.float64(0.0), (1, 2**40))
    out = np.empty(1)
    with pytest.raises(MemoryError):
        _core.log_prob(0, row, np.ones(1), row, None, out, None, None, None, 1)


def test_a_noise_buffer_that_cannot_be_allocated_raises_memory_error():
    with pytest.raises(MemoryError):
        _core.gumbels(0, 0, 0, UNGRANTABLE_ELEMENTS)


def test_constructing_from_a_view_with_ungrantable_checks_raises_memory_error():
    # The parameter checks allocate a mask as large as the parameter.
    with pytest.raises(MemoryError):
        Relaxed(1.0, logits=np.broadcast_to(np.float64(0.0), (UNGRANTABLE_ELEMENTS,)))
