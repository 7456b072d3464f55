"""Gradients summed over rows, taken over slices of the first batch axis (Note
[gradients summed in slices] in python/relaxcat/distributions.py).

Each summed gradient is checked against the exact sum (math.fsum) of the
per-row float64 gradients that a distribution with one parameter row per value
row gives (nothing summed there), with the slices made small so that every case
is cut into many; and at the real slice size, for the thread count and for the
memory a call takes.
"""

from __future__ import annotations

import math
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest

import relaxcat
from relaxcat import distributions

CLASSES = [relaxcat.RelaxedOneHotCategorical, relaxcat.ExpRelaxedOneHotCategorical]
CLASS_IDS = ["simplex", "log"]


class _CountingCore:
    """The extension module, with the kernel calls of the VJPs counted."""

    def __init__(self, core):
        self._core = core
        self.calls = 0

    def __getattr__(self, name):
        attr = getattr(self._core, name)
        if name not in ("rsample_vjp", "log_prob"):
            return attr

        def counted(*args):
            self.calls += 1
            return attr(*args)

        return counted


@pytest.fixture
def small_slices(monkeypatch):
    """Slices of at most 16 elements (one index of the first axis at least),
    with the kernel calls counted."""
    core = _CountingCore(distributions._core)
    monkeypatch.setattr(distributions, "_core", core)
    monkeypatch.setattr(distributions, "_SLICE_ELEMENTS", 16)
    return core


def _exact_sum(per_row: np.ndarray, target: tuple):
    """per_row (float64, the full row shape) summed exactly to ``target`` and
    rounded once; with the sums of |terms| and the count of terms, which bound
    what any order of float64 additions may lose."""
    lead = per_row.ndim - len(target)
    axes = list(range(lead)) + [
        lead + i
        for i, n in enumerate(target)
        if n == 1 and per_row.shape[lead + i] != 1
    ]
    moved = np.moveaxis(per_row, axes, list(range(len(axes))))
    flat = moved.reshape(-1, *moved.shape[len(axes) :])
    out = np.empty(flat.shape[1:])
    size = np.empty(flat.shape[1:])
    for idx in np.ndindex(out.shape):
        out[idx] = math.fsum(flat[(slice(None),) + idx])
        size[idx] = math.fsum(np.abs(flat[(slice(None),) + idx]))
    return out.reshape(target), size.reshape(target), flat.shape[0]


def _assert_summed(got, per_row, target):
    """got is a float64 sum of per_row's terms in some order: within n eps of
    the sum of |terms| of the exact sum (n terms)."""
    exact, size, n = _exact_sum(per_row, target)
    bound = 2 * n * np.finfo(np.float64).eps * size + 1e-300
    assert np.all(np.abs(np.asarray(got) - exact) <= bound), (got, exact, bound)


def _per_row_distribution(cls, temperature, logits, rows):
    """The same distribution with its parameters broadcast to ``rows``: one
    parameter row per value row, so its gradients are per row, unsummed."""
    k = logits.shape[-1]
    t = np.broadcast_to(np.asarray(temperature, np.float64), rows).copy()
    a = np.broadcast_to(logits, rows + (k,)).copy()
    return cls(t, logits=a, validate_args=False)


# (temperature shape, logits shape, leading shape of the value): the first
# batch axis is summed (a sample shape), kept, or of length one.
SHAPES = [
    ((), (6,), (40,)),
    ((), (3, 6), (7,)),
    ((3,), (6,), (5, 1)),
    ((2, 1), (1, 3, 6), (4, 2, 3)),
    ((9,), (9, 6), ()),
    ((4, 1), (4, 3, 6), ()),
    # Short leading axes (a second review): slices run along later axes.
    ((), (6,), (2, 20)),
    ((), (5, 6), (1,)),
    ((5,), (6,), (3, 1)),
    ((2, 1), (1, 3, 6), (1, 2, 3)),
]


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("tshape,lshape,lead", SHAPES)
def test_summed_gradients_over_slices_are_the_sums_of_the_per_row_ones(
    small_slices, cls, tshape, lshape, lead
):
    rng = np.random.default_rng(5)
    temperature = rng.uniform(0.3, 2.0, size=tshape)
    logits = rng.normal(size=lshape)
    d = cls(temperature, logits=logits, validate_args=False)
    x = d.rsample(lead, rng=3)
    rows = x.shape[:-1]
    w = rng.normal(size=x.shape)
    g = rng.normal(size=rows)
    per_row = _per_row_distribution(cls, temperature, logits, rows)

    small_slices.calls = 0
    got = d.rsample_vjp(x, w)
    want = per_row.rsample_vjp(x, w)
    # Rows of 6 elements against slices of 16: one call per index of the first
    # axis, or per two, where it has more than one.
    if rows and rows[0] > 1 and len(lshape) <= len(rows):
        assert small_slices.calls > 1
    for got_g, rows_g, target in [
        (got.logits, want.logits, logits.shape),
        (got.temperature, want.temperature, temperature.shape),
    ]:
        _assert_summed(got_g, rows_g, target)

    got = d.log_prob_vjp(x, g)
    want = per_row.log_prob_vjp(x, g)
    for got_g, rows_g, target in [
        (got.logits, want.logits, logits.shape),
        (got.temperature, want.temperature, temperature.shape),
    ]:
        _assert_summed(got_g, rows_g, target)
    np.testing.assert_array_equal(got.value, want.value)

    # One value row for all the rows of a batch: its gradient is summed too,
    # and log_prob_and_vjp writes log_prob slice by slice.
    one = x[(0,) * len(rows)]
    every = np.broadcast_to(one, x.shape)
    lp, got = per_row.log_prob_and_vjp(one, g)
    want = per_row.log_prob_vjp(every, g)
    _assert_summed(got.value, want.value, one.shape)
    np.testing.assert_array_equal(lp, per_row.log_prob(every))


@pytest.mark.parametrize("param", ["logits", "probs"])
def test_float32_gradients_over_slices_are_the_float64_ones_rounded(
    small_slices, param
):
    rng = np.random.default_rng(8)
    logits = rng.normal(size=5).astype(np.float32)
    kw32 = {param: logits if param == "logits" else np.exp(logits)}
    kw64 = {param: kw32[param].astype(np.float64)}
    R = relaxcat.RelaxedOneHotCategorical
    x = R(np.float32(0.7), **kw32).rsample((300,), rng=1)
    w = rng.normal(size=x.shape).astype(np.float32)
    got = R(np.float32(0.7), **kw32).rsample_vjp(x, w)
    assert small_slices.calls > 1
    ref = R(0.7, **kw64).rsample_vjp(x.astype(np.float64), w.astype(np.float64))
    assert got[0].dtype == np.float32
    np.testing.assert_allclose(got[0], ref[0], rtol=2.0**-23, atol=0)
    np.testing.assert_allclose(got.temperature, ref.temperature, rtol=2.0**-23)


def test_sums_past_the_range_are_taken_again_over_all_rows(small_slices, monkeypatch):
    # Per-row logits gradients near the largest double whose running total over
    # the slices overflows where the exact sum is finite (Note [sums past the
    # range]); and infinite limits, which stay what one sum over all rows gives.
    monkeypatch.setattr(distributions, "_SLICE_ELEMENTS", 2)
    e = relaxcat.ExpRelaxedOneHotCategorical(
        1.0, logits=np.zeros(2), validate_args=False
    )
    y = np.array([[-0.5, -0.9]] * 5)
    w = np.array([[1.7e308, 0.0]] * 3 + [[-1.7e308, 0.0], [-1.6e308, 0.0]])
    got = e.rsample_vjp(y, w).logits
    assert small_slices.calls > 5  # five slices, then once over all rows
    rows = _per_row_distribution(
        relaxcat.ExpRelaxedOneHotCategorical, 1.0, np.zeros(2), (5,)
    ).rsample_vjp(y, w)
    with np.errstate(over="ignore"):
        assert np.isinf(np.cumsum(rows.logits[:, 0])[2])  # a running sum overflows
    want = [float(sum(Fraction(float(r)) for r in rows.logits[:, j])) for j in range(2)]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-15)

    # Exact zeros in values on the simplex: infinite value-gradient limits of
    # both signs over the rows, summed: NaN, as without slices.
    r = _per_row_distribution(relaxcat.RelaxedOneHotCategorical, 0.5, np.zeros(3), (3,))
    x = np.array([0.0, 0.5, 0.5])
    g = np.array([1.0, -1.0, 2.0])
    small_slices.calls = 0
    got = r.log_prob_vjp(x, g).value
    assert small_slices.calls > 1
    rows = r.log_prob_vjp(np.broadcast_to(x, (3, 3)), g).value
    assert np.isinf(rows[:, 0]).all() and np.isnan(got[0])
    np.testing.assert_array_equal(got[1:], np.sum(rows[:, 1:], axis=0))


def test_slices_give_the_same_bits_for_every_thread_count():
    # 2^20 + elements with one logits row: several slices at the real size.
    rng = np.random.default_rng(2)
    d = relaxcat.RelaxedOneHotCategorical(
        np.float32(0.6), logits=rng.normal(size=24).astype(np.float32)
    )
    x = d.rsample((50000,), rng=4)
    w = rng.normal(size=x.shape).astype(np.float32)
    g = rng.normal(size=50000).astype(np.float32)
    rows = d.expand((50000,))
    first = None
    for threads in (1, 2, 3):
        got = d.rsample_vjp(x, w, num_threads=threads) + rows.log_prob_vjp(
            x[0], g, num_threads=threads
        )
        if first is None:
            first = got
        for a, b in zip(got, first):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_a_summed_gradient_takes_little_memory_beyond_its_inputs(cls):
    # Samples (2^15, 256) of one float32 logits row: 32 MiB a value. Per-row
    # float64 gradients for all rows at once would take 64 MiB (the earlier
    # builds); slices take 8 MiB each.
    rng = np.random.default_rng(6)
    d = cls(np.float32(0.8), logits=rng.normal(size=256).astype(np.float32))
    x = d.rsample((1 << 15,), rng=1)
    w = rng.normal(size=x.shape).astype(np.float32)
    g = rng.normal(size=1 << 15).astype(np.float32)
    rows = d.expand((1 << 15,))
    # A second review: slices of the first axis alone were the whole call for
    # short first axes, (2, 2^14) here; and samples (1,) of (2^15, 256) logits,
    # whose gradient sums nothing, took a float64 copy of it besides.
    x2, w2 = x.reshape(2, 1 << 14, 256), w.reshape(2, 1 << 14, 256)
    many = cls(np.float32(0.8), logits=x[:, ::-1].copy())
    x1 = many.rsample((1,), rng=2)
    mib = 1 << 20
    for call, output in (
        (lambda: d.rsample_vjp(x, w), 0),
        (lambda: d.log_prob_vjp(x, g, wrt=("logits", "temperature")), 0),
        (lambda: rows.log_prob_vjp(x[0], g, wrt="value"), 0),
        (lambda: d.rsample_vjp(x2, w2), 0),
        (lambda: many.rsample_vjp(x1, w[None], wrt="logits"), 32 * mib),
    ):
        call()  # anything made once (the mask check, kernels' scratch) made
        tracemalloc.start()
        try:
            call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak - output < 12 * mib, (peak - output) / mib
