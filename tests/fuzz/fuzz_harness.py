"""The fuzz harness: random inputs at every public entry point of relaxcat.

:func:`check_scenario` draws one scenario with hypothesis's ``data`` object (a
parameter of random dtype, shape, layout and values; a temperature; then calls of
every method with random arguments) and asserts, call by call:

- the process survives (the harness runs in it);
- an input the README rejects raises ValueError or TypeError naming the argument,
  and one it accepts raises nothing;
- an accepted call agrees with the extended-precision oracle of fuzz_oracle.py,
  never NaN, infinite only where the README's rules give an infinity, and then of
  the right sign;
- nothing passed in is modified (each input is compared with a copy afterwards).

Known bugs (KNOWN below) are reported to the caller and skipped rather than
failed, so that one open bug does not hide the others; each has an
``xfail(strict=True)`` regression test in tests/python/test_fuzz.py, and
``RELAXCAT_FUZZ_KNOWN=fail`` fails on them instead, and ``=check`` checks them like
any other input (to confirm a fix).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings

import fuzz_oracle as oracle
import numpy as np
from hypothesis import strategies as st

import relaxcat
from relaxcat import _core

Relaxed = relaxcat.RelaxedOneHotCategorical
ExpRelaxed = relaxcat.ExpRelaxedOneHotCategorical
SPACES = {"simplex": Relaxed, "log": ExpRelaxed}
# What to do with an input in the region of a known bug: "skip" it (count it in
# STATS), "fail", or "check" it like any other input (to confirm a fix).
# Every bug in KNOWN has been fixed, so by default they are checked like any
# other input; "skip" restores the routing used while they were open.
KNOWN_MODE = os.environ.get("RELAXCAT_FUZZ_KNOWN", "check")

# Bugs found by the fuzz and reported; see tests/fuzz/README.md. Each entry is a
# name and the reason, shown when a scenario hits it.
KNOWN = {
    "cast-warning": "a float64 input beyond float32's range leaks NumPy's "
    "'overflow encountered in cast' RuntimeWarning before the ValueError",
    "huge-temperature-gradient": "log_prob_vjp's value gradient forms K * T first: "
    "+inf for every entry (wrong signs) once K T passes the float64 maximum",
    "log-space-vjp-overflow": "in log space, rsample_vjp's temperature gradient is NaN "
    "when grad_k * y_k overflows with both signs",
    "log-space-deep-gradient": "log_prob_vjp's temperature gradient is 0 * inf = NaN "
    "for an upstream gradient of 0 when its sum overflows (|y_k| near the maximum)",
    "probs-vjp-overflow": "the probs gradient g_k / q_k - sum(g) / sum(q) is "
    "inf - inf = NaN when both quotients overflow (tiny probs, huge gradients), or "
    "when the logits gradient it comes from overflowed the dtype",
    "zero-rule-rounding": "the zero rule's T*(K-m) - m is rounded, so a T such as 1/3 "
    "takes the finite branch where the exact rule gives +inf",
    "numpy-32-dims": "more than 32 dimensions in expand or a value: NumPy's "
    "np.broadcast_shapes raises RuntimeError instead of a ValueError",
    "rank-message": "probs with more than 31 batch dimensions: the ValueError names "
    "the internal argument 'in' ('param: in may have at most 31 batch dimensions')",
    "opposite-infinite-limits": "gradients summed over broadcast rows (_reduce_to) "
    "that overflow, or whose limits are +inf and -inf, leak NumPy's 'overflow' or "
    "'invalid value' RuntimeWarning",
}


class KnownBug(Exception):
    """Raised to end a scenario that reached a known, reported bug."""

    def __init__(self, name: str):
        super().__init__(f"{name}: {KNOWN[name]}")
        self.name = name


def known(name: str):
    if KNOWN_MODE == "check":
        return
    if KNOWN_MODE == "fail":
        raise AssertionError(f"known bug reached: {KNOWN[name]}")
    raise KnownBug(name)


# ============================================================== input makers
FLOATS = [np.float16, np.float32, np.float64]
INTS = [np.int8, np.int64, np.uint8]
BAD_KINDS = ["complex", "object", "str"]


def work_dtype(dtype) -> type:
    """The dtype relaxcat computes in for a parameter of ``dtype``."""
    return np.float32 if dtype in (np.float16, np.float32) else np.float64


def cast(arr, dtype) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(arr).astype(dtype)


def _bad_kind(draw, shape, kind):
    if kind == "complex":
        return np.full(shape, 1 + 1j)
    if kind == "object":
        return (
            np.full(shape, 1.0, dtype=object) if shape else np.array(None, dtype=object)
        )
    return np.full(shape, "x")


def layout(draw, arr: np.ndarray, name: str, allow_list: bool = True):
    """The same values in another memory layout: Fortran order, negative or
    doubled strides, read-only, misaligned (a bytearray with offset 1, a field of
    a packed structured array), a Python list or a NumPy scalar."""
    choices = [
        "plain",
        "fortran",
        "reversed",
        "strided",
        "readonly",
        "misaligned",
        "field",
        "unpickled",
    ]
    if allow_list and 0 < arr.size <= 64 and arr.dtype.kind in "biuf":
        choices.append("list")
    how = draw(st.sampled_from(choices), label=f"{name} layout")
    arr = np.asarray(arr)
    if how == "plain":
        return arr
    if how == "fortran" and arr.ndim:
        return np.asfortranarray(arr)
    if how == "reversed" and arr.ndim:
        ax = draw(st.integers(0, arr.ndim - 1))
        return np.flip(np.flip(arr, ax).copy(), ax)
    if how == "strided" and arr.ndim:
        ax = draw(st.integers(0, arr.ndim - 1))
        big = np.repeat(arr, 2, axis=ax)
        return big[(slice(None),) * ax + (slice(None, None, 2),)]
    if how == "readonly":
        out = arr.copy()
        out.flags.writeable = False
        return out
    if how == "misaligned" and arr.dtype.kind in "biuf":
        buf = bytearray(arr.nbytes + 1)
        out = np.frombuffer(buf, dtype=arr.dtype, offset=1, count=arr.size)
        out = out.reshape(arr.shape)
        out[...] = arr
        if draw(st.booleans()):
            out.flags.writeable = False
        return out
    if how == "field" and arr.dtype.kind in "biuf":
        rec = np.zeros(arr.shape, dtype=np.dtype([("pad", "u1"), ("v", arr.dtype)]))
        rec["v"] = arr
        return rec["v"]
    if how == "list":
        return arr.tolist()
    if how == "unpickled":
        # As sent by multiprocessing: an equal dtype, but not NumPy's own object.
        return pickle.loads(pickle.dumps(arr))
    return arr


def maybe_broadcast(draw, values_fn, shape, name):
    """``values_fn(s)`` of a shape with some axes set to 1, broadcast to ``shape``
    (stride-0 views), or of the full shape."""
    if shape and draw(st.booleans(), label=f"{name} broadcast"):
        small = tuple(1 if draw(st.booleans()) else n for n in shape)
        return np.broadcast_to(values_fn(small), shape)
    return values_fn(shape)


def snapshot(*arrays):
    """Copies of the inputs, to check afterwards that relaxcat left them alone."""
    return [(a, None if a is None else np.array(a, copy=True)) for a in arrays]


def assert_unmodified(snap):
    for a, copy in snap:
        if a is None:
            continue
        now = np.asarray(a)
        assert now.dtype == copy.dtype and now.shape == copy.shape
        if now.dtype.kind in "fc":
            assert np.array_equal(now, copy, equal_nan=True), "an input was modified"
        else:
            assert np.array_equal(now, copy), "an input was modified"


def call(expect, fn, *args, **kwargs):
    """Run ``fn``; ``expect`` is None (must succeed) or (exception type, the
    argument the message must name). Warnings are errors, as in the test suite.
    Returns the result, or None after the expected exception."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            result = fn(*args, **kwargs)
        except RuntimeWarning as e:
            if "overflow encountered in cast" in str(e):
                known("cast-warning")
            if "encountered in reduce" in str(e):
                known("opposite-infinite-limits")
            raise
        except RuntimeError as e:
            if "only supports up to 32 dimensions" in str(e):
                known("numpy-32-dims")
            raise
        except (ValueError, TypeError) as e:
            if "param: in may have at most" in str(e):
                known("rank-message")
            if expect is None:
                msg = f"valid input rejected: {type(e).__name__}: {e}"
                raise AssertionError(msg) from e
            kind, arg = expect
            assert isinstance(e, kind), (
                f"expected {kind.__name__}, got {type(e).__name__}: {e}"
            )
            assert re.search(arg, str(e)), f"message does not name {arg!r}: {e}"
            return None
    assert expect is None, f"invalid input accepted, expected {expect}"
    return result


# ================================================================ parameters
def _float_values(draw, shape, what):
    """Logits or probs of ``shape``: random scales, masks and edge values."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label=f"{what} seed"))
    if what == "logits":
        scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e2, 1e4, 1e30]))
        shift = draw(st.sampled_from([0.0, 0.0, 5e3, -1e30, 1e30]))
        vals = rng.normal(size=shape) * scale + shift
        mask = rng.random(size=shape) < draw(st.sampled_from([0.0, 0.2, 0.6]))
        vals[mask] = -np.inf
        if draw(st.integers(0, 9)) == 0:  # an invalid entry
            bad = draw(st.sampled_from([np.nan, np.inf]))
            vals.reshape(-1)[: min(1, vals.size)] = bad
        return vals
    scale = draw(st.sampled_from([1e-300, 1e-30, 1.0, 1e30, 1e300]))
    vals = rng.random(size=shape) * scale
    vals[rng.random(size=shape) < draw(st.sampled_from([0.0, 0.3]))] = 0.0
    if draw(st.integers(0, 9)) == 0:
        bad = draw(st.sampled_from([np.nan, np.inf, -1.0]))
        vals.reshape(-1)[: min(1, vals.size)] = bad
    return vals


# Batch ranks to draw. NumPy 1 arrays have at most 32 dimensions, so there
# the largest ranks stay low enough for a sample shape and the category axis
# (README, Limitations); the list keeps its length so that the draws that
# follow are the same.
if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
    BATCH_RANKS = [0, 1, 1, 2, 2, 3, 5, 31, 32]
else:
    BATCH_RANKS = [0, 1, 1, 2, 2, 3, 5, 28, 28]


def draw_param(draw, name):
    """The parameter as passed, its working values and whether it is valid."""
    k = draw(st.one_of(st.integers(1, 6), st.sampled_from([0, 33, 2049])), label="K")
    rank = draw(st.sampled_from(BATCH_RANKS), label="batch rank")
    if rank > 5:
        batch = (1,) * rank
    else:
        batch = tuple(draw(st.lists(st.integers(0, 3), min_size=rank, max_size=rank)))
    if k > 6:
        batch = batch[:1]
    shape = batch + (k,)
    kind = draw(
        st.sampled_from(["float"] * 6 + ["int", "bool", "bad"]), label="dtype kind"
    )

    if kind == "bad":
        bad = draw(st.sampled_from(BAD_KINDS))
        return _bad_kind(draw, shape, bad), None, (TypeError, name)
    if kind == "float":
        dtype = draw(st.sampled_from(FLOATS))
        vals = maybe_broadcast(
            draw, lambda s: _float_values(draw, s, name), shape, name
        )
        given = cast(vals, dtype)
    elif kind == "int":
        dtype = draw(st.sampled_from(INTS))
        lo = 0 if (name == "probs" or dtype == np.uint8) else -5
        seed = draw(st.integers(0, 2**32 - 1))
        given = np.random.default_rng(seed).integers(lo, 6, size=shape).astype(dtype)
    else:
        dtype = np.bool_
        seed = draw(st.integers(0, 2**32 - 1))
        given = np.random.default_rng(seed).random(size=shape) < 0.7
    work = cast(given, work_dtype(dtype))

    # What the README accepts.
    if k == 0:
        expect = (ValueError, name)
    elif name == "logits":
        ok = not np.any(np.isnan(work) | (work == np.inf))
        ok = ok and not np.any(np.all(work == -np.inf, axis=-1))
        expect = None if ok else (ValueError, name)
    else:
        ok = bool(np.all(np.isfinite(work) & (work >= 0)))
        with np.errstate(over="ignore"):
            total = work.sum(axis=-1, dtype=np.float64)
        ok = ok and bool(np.all(np.isfinite(total) & (total > 0)))
        expect = None if ok else (ValueError, name)
    # A list holds Python floats: float64 to relaxcat, so only for float64 work.
    return layout(draw, given, name, allow_list=work.dtype == np.float64), work, expect


def draw_temperature(draw, batch, param_ndim, wdtype):
    """The temperature as passed, its working values (row shape) and validity."""
    form = draw(st.sampled_from(["scalar", "rows", "per_row", "wrong"]), label="T form")
    if form == "scalar" or not batch:
        shape = ()
    elif form == "rows":
        cut = draw(st.integers(0, len(batch)))
        shape = tuple(1 if draw(st.booleans()) else n for n in batch[cut:])
    elif form == "per_row":
        shape = batch + (1,)
    else:
        shape = batch[:-1] + (batch[-1] + 2,)
    values = draw(
        st.one_of(
            st.floats(-30, 30).map(lambda e: 10.0**e),
            st.floats(-4, 4).map(lambda e: 10.0**e),
            st.sampled_from(
                [
                    0.0,
                    -1.0,
                    np.nan,
                    np.inf,
                    1e-300,
                    1e300,
                    1e308,
                    1e-45,
                    1.0 / 3.0,
                    0.5,
                    1.0,
                    2.0,
                ]
            ),
        ),
        label="T value",
    )
    spread = draw(st.sampled_from([1.0, 1.0, 10.0, 1e10]))
    seed = draw(st.integers(0, 2**32 - 1))
    with np.errstate(over="ignore"):
        t = values * spread ** np.random.default_rng(seed).random(size=shape)
    dtype = draw(st.sampled_from([np.float64, np.float32, np.float16, np.int64, "py"]))
    if dtype == "py" and not np.size(t):
        dtype = np.float64
    if dtype == np.int64:
        t = np.maximum(np.round(np.nan_to_num(t, nan=1.0, posinf=7, neginf=-1)), -1)
        t = np.clip(t, -1, 1000).astype(np.int64)
    elif dtype == "py" and t.size:
        t = np.asarray(t, dtype=np.float64)
        given = float(t) if t.ndim == 0 else t.tolist()
        work = cast(t, wdtype)
        return given, work, _temperature_expect(work, shape, batch, param_ndim)
    t = cast(t, dtype)
    work = cast(t, wdtype)
    given = layout(draw, t, "temperature")
    return given, work, _temperature_expect(work, shape, batch, param_ndim)


def _temperature_expect(work, shape, batch, param_ndim):
    if not np.all(np.isfinite(work) & (work > 0)):
        return (ValueError, "temperature")
    per_row = len(shape) == param_ndim and shape and shape[-1] == 1
    rows = shape[:-1] if per_row else shape
    try:
        bshape(rows, batch)
    except ValueError:
        return (ValueError, "temperature")
    return None


def bshape(*shapes) -> tuple:
    """np.broadcast_shapes without NumPy's 32-dimension limit."""
    n = max(len(s) for s in shapes)
    out = []
    for i in range(n):
        dims = {s[len(s) - n + i] for s in shapes if len(s) - n + i >= 0} - {1}
        if len(dims) > 1:
            raise ValueError(f"shapes {shapes} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def bto(arr, shape):
    """np.broadcast_to through as_strided, for any number of dimensions."""
    arr = np.asarray(arr)
    lead = len(shape) - arr.ndim
    strides = (0,) * lead + tuple(
        0 if n == 1 and m != 1 else st_
        for n, m, st_ in zip(arr.shape, shape[lead:], arr.strides)
    )
    return np.lib.stride_tricks.as_strided(arr, shape, strides, writeable=False)


def t_rows(work_t, param_ndim):
    per_row = work_t.ndim == param_ndim and work_t.ndim and work_t.shape[-1] == 1
    return work_t[..., 0] if per_row else work_t


# Documented limitations (README, Limitations) that an input may reach: a name
# and what the README says, shown in the campaign's counts. Unlike KNOWN, these
# are answers the project stands by, so the scenario still checks everything
# else about the call.
LIMITATIONS = {
    "row-past-range": "a row's own temperature gradient past the float64 range is "
    "an infinity and stays one in a sum over rows, which can then be NaN or an "
    "infinity where the exact sum is finite (Note [sums past the range])",
}

# ================================================================ scenarios
STATS: dict = {}


def scenario(data) -> None:
    """:func:`check_scenario`, counting inputs and known bugs reached in STATS."""
    STATS["inputs"] = STATS.get("inputs", 0) + 1
    try:
        check_scenario(data)
    except KnownBug as e:
        STATS[e.name] = STATS.get(e.name, 0) + 1


def check_scenario(data) -> None:
    """One random scenario; see the module docstring."""
    draw = data.draw
    space = draw(st.sampled_from(["simplex", "log"]), label="space")
    cls = SPACES[space]
    name = draw(st.sampled_from(["logits", "probs"]), label="parameter")
    given, work, p_expect = draw_param(draw, name)
    if work is None:  # a bad kind
        t_given = 1.0
        snap = snapshot(given)
        call(p_expect, cls, t_given, **{name: given})
        assert_unmodified(snap)
        return
    wdtype = work.dtype.type
    batch, k = work.shape[:-1], work.shape[-1]
    t_given, t_work, t_expect = draw_temperature(draw, batch, work.ndim, wdtype)
    validate = draw(st.sampled_from([None, True, False]), label="validate_args")

    snap = snapshot(given, t_given)
    # The order of the checks: the category axis, the temperature, the values.
    if work.shape[-1] == 0:
        expect = p_expect
    else:
        expect = t_expect or p_expect
    if expect is not None and len(batch) > MAX_BATCH_DIMS:
        # Two bad arguments: the batch-rank check may come first.
        expect = (expect[0], f"{expect[1]}|{DIMS_RE}")
    if expect is None and len(batch) > MAX_BATCH_DIMS:
        check_too_many_dims(cls, t_given, name, given)
        assert_unmodified(snap)
        return
    d = call(expect, cls, t_given, validate_args=validate, **{name: given})
    assert_unmodified(snap)
    if d is None:
        return

    # ---- properties
    rows_t = t_rows(t_work, work.ndim)
    want_batch = bshape(rows_t.shape, batch)
    assert d.batch_shape == want_batch
    assert d.event_shape == (k,)
    assert d.dtype == wdtype
    assert d.validate_args is (validate is not False)
    np.testing.assert_array_equal(d.temperature, t_work)
    assert d.temperature.dtype == wdtype
    # The logits relaxcat works with, and how far they may be from the oracle's:
    # probs are stored as their logs, rounded to the working dtype.
    if name == "probs":
        with np.errstate(divide="ignore"):
            a = np.log(work.astype(np.float64))
        a_tol = float(np.finfo(wdtype).eps) * (np.abs(np.where(work > 0, a, 0)) + 1)
        a_tol = np.where(work > 0, a_tol, 0)
    else:
        a, a_tol = work.astype(np.float64), np.zeros(work.shape)

    logits_w, probs_w, tl, tp = oracle.normalized_logits(work, name == "probs")
    if name == "probs":
        tl = tl + a_tol + np.max(a_tol, axis=-1, keepdims=True)
    oracle.compare(
        "logits property", call(None, lambda: d.logits), logits_w, tl, wdtype
    )
    oracle.compare("probs property", call(None, lambda: d.probs), probs_w, tp, wdtype)
    r = repr(d)
    assert str(work.shape) in r and str(np.dtype(wdtype)) in r and name in r

    steps = draw(
        st.lists(
            st.sampled_from(
                [
                    "rsample",
                    "log_prob",
                    "rsample_vjp",
                    "log_prob_vjp",
                    "expand",
                    "bad_call",
                ]
            ),
            min_size=1,
            max_size=4,
        ),
        label="calls",
    )
    for step in steps:
        if step == "rsample":
            check_rsample(draw, d, space, a, a_tol, rows_t)
        elif step == "expand":
            check_expand(draw, d)
        elif step == "bad_call":
            check_bad_call(draw, d)
        else:
            check_density(draw, d, space, a, a_tol, rows_t, step)
    assert_unmodified(snap)


# The kernels take at most 31 batch dimensions (cpp/include/relaxcat/detail/args.hpp);
# the README does not say so yet.
MAX_BATCH_DIMS = 31
DIMS_RE = "at most 31 batch dimensions"


def call_or_reject(pattern, fn, *args, **kwargs):
    """``fn``'s result, or None after a ValueError matching ``pattern``: for limits
    that may be enforced early (by a check) or late (by the kernels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return call(None, fn, *args, **kwargs)
        except AssertionError as e:
            if "valid input rejected: ValueError" in str(e) and re.search(
                pattern, str(e)
            ):
                return None
            raise


def check_too_many_dims(cls, t_given, name, given):
    """More batch dimensions than the kernels take: a ValueError that says so,
    at construction or at the first call that reaches the kernels."""
    d = call_or_reject(f"{name}.*{DIMS_RE}", cls, t_given, **{name: given})
    if d is not None:
        call((ValueError, DIMS_RE), d.rsample, rng=0)


def draw_sample_shape(draw, budget):
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=2), label="sample_shape"))
    if int(np.prod(shape)) * budget > 20000:
        shape = ()
    form = draw(st.sampled_from(["tuple", "list", "np"]))
    if form == "list":
        return shape, list(shape)
    if form == "np":
        return shape, tuple(np.int64(n) for n in shape)
    if len(shape) == 1 and draw(st.booleans()):
        return shape, shape[0]
    return shape, shape


def check_rsample(draw, d, space, a, a_tol, rows_t):
    lead, passed = draw_sample_shape(draw, max(1, a.size))
    full = lead + d.batch_shape + d.event_shape
    wdtype = d.dtype.type
    mode = draw(st.sampled_from(["seed", "gumbels", "generator"]), label="noise")
    threads = draw(st.sampled_from([None, 1, 2, 3]), label="num_threads")
    kwargs = {"num_threads": threads}
    gum = None
    f32 = wdtype == np.float32  # float32 samples draw the float noise
    if mode == "seed":
        seed = draw(st.integers(0, 2**64 - 1), label="seed")
        kwargs["rng"] = seed
        noise = _core.gumbels(seed, 0, 0, int(np.prod(full)), float32=f32).reshape(full)
    elif mode == "generator":
        seed = draw(st.integers(0, 2**32 - 1))
        kwargs["rng"] = np.random.default_rng(seed)
        key, stream = np.random.default_rng(seed).integers(
            0, 2**64, size=2, dtype=np.uint64
        )
        noise = _core.gumbels(
            int(key), int(stream), 0, int(np.prod(full)), float32=f32
        ).reshape(full)
    else:
        scale = draw(st.sampled_from([1.0, 1e2, 1e30]))
        seed = draw(st.integers(0, 2**32 - 1))
        g = np.random.default_rng(seed).gumbel(size=full) * scale
        gdtype = draw(st.sampled_from([wdtype, np.float64]))
        g = cast(g, gdtype)
        gum = layout(draw, g, "gumbels", allow_list=False)
        kwargs["gumbels"] = gum
        # Explicit noise is taken in float64 whatever the dtype (as the stream's
        # noise is); before 12-04 18:00 it was cast to the distribution's dtype,
        # and float64 noise beyond float32's range was a ValueError.
        noise = np.asarray(g, dtype=np.float64)
        if d.dtype == np.float32 and not np.all(np.isfinite(cast(g, np.float32))):
            try:
                call((ValueError, "gumbels"), d.rsample, passed, gumbels=gum)
                return
            except AssertionError as e:
                if "invalid input accepted" not in str(e):
                    raise
    use_out = draw(st.booleans(), label="out")
    out = np.empty(full, wdtype) if use_out else None
    snap = snapshot(gum)
    if len(full) - 1 > MAX_BATCH_DIMS:
        call((ValueError, DIMS_RE), d.rsample, passed, out=out, **kwargs)
        return
    got = call(None, d.rsample, passed, out=out, **kwargs)
    assert_unmodified(snap)
    if out is not None:
        assert got is out
    assert got.shape == full and got.dtype == wdtype and got.flags.c_contiguous

    logits = bto(a, full)
    temp = bto(rows_t, full[:-1])
    a_tol_full = bto(a_tol, full)
    x, y, tx, ty = oracle.sample(logits, temp, noise, a_tol_full)
    live = logits > -np.inf
    if space == "simplex":
        oracle.compare("rsample x", got, x, tx, wdtype)
        assert np.all(got[~live] == 0), "masked categories must be exact zeros"
        assert np.all((got >= 0) & (got <= 1))
        kk = max(1, full[-1])
        sums = got.astype(np.float64).sum(axis=-1)
        assert np.all(np.abs(sums - 1) <= kk * float(np.finfo(wdtype).eps)), "row sums"
    else:
        oracle.compare("rsample y", got, y, ty, wdtype)
        assert np.all(got[~live] == -np.inf), "masked categories must be -inf"
        assert np.all(got <= 0)

    # The same noise and thread-independence: sample() with the seed again.
    if mode == "seed":
        again = call(None, d.sample, passed, rng=kwargs["rng"], num_threads=1)
        np.testing.assert_array_equal(again, got)


def _simplex_point(rng, logits, zeros_frac, dtype):
    """A point on the simplex of the live categories, with some exact zeros."""
    live = logits > -np.inf
    x = rng.gamma(rng.choice([0.05, 1.0, 20.0]), size=logits.shape)
    x = np.where(live, x, 0.0)
    x[live & (rng.random(size=logits.shape) < zeros_frac)] = 0.0
    # At least one live entry stays positive in every row.
    first_live = np.argmax(live, axis=-1)[..., None]
    keep = np.take_along_axis(x, first_live, -1)
    np.put_along_axis(x, first_live, np.where(keep > 0, keep, 1.0), -1)
    x = x / x.sum(axis=-1, keepdims=True)
    return cast(x, dtype)


def draw_value(draw, d, space, a):
    """A value for log_prob and the VJPs: own samples, points with exact zeros,
    and invalid ones. Returns (value as passed, value in the dist dtype,
    expectation when validating, expectation when not)."""
    wdtype = d.dtype.type
    lead = tuple(draw(st.lists(st.integers(0, 2), max_size=2), label="value lead"))
    if int(np.prod(lead)) * max(1, a.size) > 20000:
        lead = ()
    rows = lead + d.batch_shape
    if draw(st.booleans(), label="value broadcast") and d.batch_shape:
        rows = lead + tuple(1 if draw(st.booleans()) else n for n in d.batch_shape)
    logits = bto(a, bshape(rows + d.event_shape, a.shape))
    rows = logits.shape[:-1]
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(
        st.sampled_from(
            [
                "own",
                "own",
                "point",
                "zeros",
                "deep",
                "deep",
                "off",
                "masked",
                "nan",
                "negative",
            ]
        ),
        label="value kind",
    )
    if kind == "own" and len(lead + d.batch_shape) > MAX_BATCH_DIMS:
        kind = "point"
    if kind == "own":
        t_other = draw(st.sampled_from([None, 1e-4, 1e-2, 1.0, 1e3]))
        other = bto(a, d.batch_shape + d.event_shape).astype(wdtype)
        src = d if t_other is None else type(d)(wdtype(t_other), logits=other)
        v = (
            call(None, src.rsample, lead, rng=seed)
            if rows == lead + d.batch_shape
            else None
        )
        if v is None:
            kind = "point"
        else:
            return v, v, None, None
    x = _simplex_point(
        rng, logits, 0.3 if kind in ("zeros", "deep") else 0.0, np.float64
    )
    if kind == "deep" and space == "log":
        # Entries of y far below the log of the smallest number: valid (exp(y) is
        # 0), and T * y may overflow.
        deep = -(10.0 ** draw(st.sampled_from([10.0, 100.0, 300.0, 307.0, 308.0])))
        with np.errstate(divide="ignore"):
            y = np.where(x == 0, deep, np.log(x))
        y = np.where(logits == -np.inf, -np.inf, y)
        v = cast(y, wdtype)
        vdtype = draw(st.sampled_from([wdtype, np.float64]))
        return layout(draw, cast(v, vdtype), "value"), v, None, None
    expect_validate = None
    if kind == "off":
        x = x * 2
        expect_validate = (ValueError, "value")
    elif kind == "masked":
        dead = logits == -np.inf
        if not dead.any():
            kind = "point"
        else:
            x = np.where(dead, 0.5, x)
            expect_validate = (ValueError, "value")
    elif kind in ("nan", "negative"):
        if x.size:
            x.reshape(-1)[0] = np.nan if kind == "nan" else -0.5
            expect_validate = (ValueError, "value")
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.log(x) if space == "log" else x
    v = cast(v, wdtype)
    if x.size == 0:
        expect_validate = None
    # Without validation, NaN and negative values are garbage in; not checked.
    expect_plain = "skip" if kind in ("nan", "negative") and x.size else None
    if kind == "off" and space == "log":
        expect_plain = None
    vdtype = draw(st.sampled_from([wdtype, np.float64]))
    return layout(draw, cast(v, vdtype), "value"), v, expect_validate, expect_plain


def _reduce(arr, shape):
    """Sum an oracle gradient to a parameter's shape, as relaxcat does."""
    lead = arr.ndim - len(shape)
    with np.errstate(invalid="ignore"):
        if lead:
            arr = arr.sum(axis=tuple(range(lead)))
        axes = tuple(i for i, n in enumerate(shape) if n == 1 and arr.shape[i] != 1)
        if axes:
            arr = arr.sum(axis=axes, keepdims=True)
    return arr.reshape(shape)


def _reduce_pair(want, tol, shape, dtype):
    """The oracle gradient and its bound summed to ``shape``: relaxcat rounds each
    row's gradient to ``dtype`` and sums them in ``dtype``, which adds up to
    n eps |sum of magnitudes| for n terms."""
    n = max(1, want.size // max(1, int(np.prod(shape))))
    fin = np.where(np.isfinite(want), np.abs(want), 0)
    tol = tol + oracle.out_eps(dtype) * fin
    summed_mag = _reduce(fin, shape)
    total = _reduce(want, shape)
    # Rows beyond the dtype's range with both signs round to +inf and -inf, whose
    # sum has no value in the dtype (NaN, which compare() then accepts).
    big = np.finfo(dtype).max
    both = (_reduce((want > big).astype(float), shape) > 0) & (
        _reduce((want < -big).astype(float), shape) > 0
    )
    total = np.where(both, np.nan, total)
    return total, _reduce(tol, shape) + n * float(np.finfo(dtype).eps) * summed_mag


def check_density(draw, d, space, a, a_tol, rows_t, step):
    wdtype = d.dtype.type
    given, v, exp_validate, exp_plain = draw_value(draw, d, space, a)
    expect = exp_validate if d.validate_args else exp_plain
    if expect == "skip":
        return
    rows = bshape(v.shape[:-1], d.batch_shape)
    full = rows + d.event_shape
    logits = bto(a, full)
    temp = bto(rows_t, rows)
    vfull = bto(v, full)
    a_tol_full = bto(a_tol, full)
    _known_density_bugs(space, logits, temp, vfull, step)
    threads = draw(st.sampled_from([None, 1, 2]))
    gdtype = draw(st.sampled_from([wdtype, np.float64, np.float16]))
    if len(rows) > MAX_BATCH_DIMS and expect is None:
        expect = (ValueError, DIMS_RE)

    if step == "log_prob":
        snap = snapshot(given)
        got = call(expect, d.log_prob, given, num_threads=threads)
        assert_unmodified(snap)
        if got is None:
            return
        assert got.shape == rows and got.dtype == wdtype
        res = oracle.log_prob(logits, temp, vfull, np.zeros(rows), space, a_tol_full)
        oracle.compare("log_prob", got, *res["lp"], wdtype)
        return

    if step == "log_prob_vjp":
        seed = draw(st.integers(0, 2**32 - 1))
        gshape = draw(st.sampled_from([rows, (), rows[-1:]]))
        g = cast(
            np.random.default_rng(seed).normal(size=gshape)
            * draw(st.sampled_from([0.0, 1.0, 1e3])),
            gdtype,
        )
        gg = layout(draw, g, "grad")
        snap = snapshot(given, gg)
        got = call(expect, d.log_prob_vjp, given, gg, num_threads=threads)
        assert_unmodified(snap)
        if got is None:
            return
        res = oracle.log_prob(
            logits, temp, vfull, bto(cast(g, wdtype), rows), space, a_tol_full
        )
        _compare_param_grads(
            d, got, res["logits"], res["temperature"], rows_t.shape, wdtype
        )
        want, tol = _reduce_pair(*res["value"], v.shape, wdtype)
        oracle.compare("log_prob_vjp value", got.value, want, tol, wdtype)
        return

    # rsample_vjp
    seed = draw(st.integers(0, 2**32 - 1))
    g = cast(
        np.random.default_rng(seed).normal(size=v.shape)
        * draw(st.sampled_from([0.0, 1.0, 1e3])),
        gdtype,
    )
    gg = layout(draw, g, "grad")
    if space == "log" and expect is None:
        with np.errstate(over="ignore", invalid="ignore"):
            prod = cast(g, wdtype).astype(np.float64) * v.astype(np.float64)
        if np.any(np.isinf(prod) & np.isfinite(v)):
            known("log-space-vjp-overflow")
    snap = snapshot(given, gg)
    got = call(expect, d.rsample_vjp, given, gg, num_threads=threads)
    assert_unmodified(snap)
    if got is None:
        return
    # Masked categories take no part (Note [masked categories]): a value with
    # weight on one (validation off) is read with that weight removed, as the
    # README says.
    dead = np.where(space == "log", -np.inf, 0.0).astype(vfull.dtype)
    masked = np.broadcast_to(logits == -np.inf, vfull.shape)
    live_v = np.where(masked, dead, vfull)
    gl, gl_tol, gt, gt_tol = oracle.rsample_vjp(
        live_v, bto(cast(g, wdtype), full), temp, space, masked
    )
    _compare_param_grads(d, got, (gl, gl_tol), (gt, gt_tol), rows_t.shape, wdtype)


def _compare_param_grads(d, got, logits_grad, t_grad, t_shape, wdtype):
    gl, gl_tol = logits_grad
    param = d._param()
    want, tol = _reduce_pair(gl, gl_tol, param.shape, wdtype)
    if d._probs_given is not None:
        q = d._probs_given.astype(oracle.LD)
        qs = q.sum(axis=-1, keepdims=True)
        gs = want.sum(axis=-1, keepdims=True)
        big = np.finfo(wdtype).max
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            quot = np.where(q > 0, np.abs(want) / np.where(q > 0, q, 1), 0)
        got_p = np.asarray(got[1 if len(got) == 3 else 0])
        # Either quotient overflows, or the logits gradient it is formed from
        # overflowed the dtype first (float32 at T = 1e-45).
        over = np.any(quot > big) or np.any(np.abs(want) > big)
        if over and np.any(np.isnan(got_p)):
            known("probs-vjp-overflow")
        with np.errstate(divide="ignore", invalid="ignore"):
            want = np.where(q > 0, want / np.where(q > 0, q, 1) - gs / qs, 0)
            tol = np.where(
                q > 0, tol / np.where(q > 0, q, 1) + tol.sum(-1, keepdims=True) / qs, 0
            )
            tol = tol + 4 * oracle.EPS64 * np.abs(want) * param.shape[-1]
        name = "probs"
    else:
        name = "logits"
    oracle.compare(
        f"gradient {name}", got[1 if len(got) == 3 else 0], want, tol, wdtype
    )
    gt, gt_tol = t_grad
    want_t, tol_t = _reduce_pair(gt, gt_tol, t_shape, wdtype)
    want_t = want_t.reshape(d.temperature.shape)
    tol_t = tol_t.reshape(d.temperature.shape)
    with np.errstate(invalid="ignore"):
        past = np.abs(gt) - gt_tol > np.finfo(np.float64).max
    if np.size(gt) != np.size(want_t) and np.any(past):
        # LIMITATIONS["row-past-range"]: the call's summed temperature gradient
        # is not compared (which of its entries took such a row is not tracked
        # here); a single row past the range is still compared, as an infinity.
        STATS["row-past-range"] = STATS.get("row-past-range", 0) + 1
        return
    oracle.compare("gradient temperature", got[-1], want_t, tol_t, wdtype)


def _known_density_bugs(space, logits, temp, v, step):
    """Route inputs that reach a reported bug to KNOWN."""
    if v.size == 0:
        return
    t = bto(np.asarray(temp, dtype=np.float64)[..., None], v.shape)
    y = v.astype(np.float64)
    if space == "simplex":
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.log(y)
    kk = v.shape[-1]
    with np.errstate(over="ignore"):
        huge = np.any(t * kk > np.finfo(np.float64).max)
    if step == "log_prob_vjp" and huge:
        known("huge-temperature-gradient")
    if space == "log" and step == "log_prob_vjp":
        kk = v.shape[-1]
        with np.errstate(over="ignore", invalid="ignore"):
            deep = np.abs(y) * kk * np.maximum(t, 1.0) > 1e307
        if np.any(deep & np.isfinite(y)):
            known("log-space-deep-gradient")
    if space == "simplex":
        live = logits > -np.inf
        zeros = np.atleast_1d((live & (y == -np.inf)).sum(axis=-1))
        kk = np.atleast_1d(live.sum(axis=-1))
        tt = np.atleast_1d(np.asarray(temp, dtype=np.float64))
        for idx in zip(*np.nonzero(zeros)):
            m, kl, tv = int(zeros[idx]), int(kk[idx]), float(tt[idx])
            if tv * (kl - m) - m == 0 and oracle._zero_rule_sign(tv, kl, m) != 0:
                known("zero-rule-rounding")


def check_expand(draw, d):
    extra = tuple(draw(st.lists(st.integers(0, 3), max_size=2), label="expand lead"))
    new = extra + d.batch_shape
    bad = (
        draw(st.booleans(), label="expand bad")
        and d.batch_shape
        and d.batch_shape[-1] > 1
    )
    if bad:
        new = extra + d.batch_shape[:-1] + (d.batch_shape[-1] + 1,)
        call((ValueError, "batch_shape"), d.expand, new)
        return
    if len(new) > MAX_BATCH_DIMS:
        e = call_or_reject(DIMS_RE, d.expand, list(new))
        if e is not None:
            call((ValueError, DIMS_RE), e.rsample, rng=5)
        return
    e = call(None, d.expand, list(new))
    assert e.batch_shape == new and e.event_shape == d.event_shape
    assert (
        type(e) is type(d) and e.dtype == d.dtype and e.validate_args == d.validate_args
    )
    if int(np.prod(new + d.event_shape)) <= 20000:
        # Element i draws noise i: the expanded batch is a sample shape.
        np.testing.assert_array_equal(
            call(None, e.rsample, rng=5), call(None, d.rsample, extra, rng=5)
        )


def check_bad_call(draw, d):
    """Arguments of a bad kind or value, at any method."""
    which = draw(
        st.sampled_from(
            [
                "rng",
                "sample_shape",
                "num_threads",
                "out",
                "value_kind",
                "gumbels_shape",
                "grad_kind",
            ]
        )
    )
    k = d.event_shape[0]
    if which == "rng":
        rng, kind = draw(
            st.sampled_from(
                [
                    (-1, ValueError),
                    (2**64, ValueError),
                    (1.5, TypeError),
                    ("x", TypeError),
                    (True, TypeError),
                ]
            )
        )
        call((kind, "rng"), d.rsample, rng=rng)
    elif which == "sample_shape":
        shape, kind = draw(
            st.sampled_from(
                [
                    ((-1,), ValueError),
                    ((1.5,), TypeError),
                    ("ab", TypeError),
                    (2.0, TypeError),
                ]
            )
        )
        call((kind, "sample_shape"), d.rsample, shape, rng=0)
    elif which == "num_threads":
        n, kind = draw(
            st.sampled_from(
                [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)]
            )
        )
        call((kind, "num_threads"), d.rsample, rng=0, num_threads=n)
    elif which == "out":
        shape = d.batch_shape + (k,)
        readonly = np.zeros(shape, d.dtype)
        readonly.flags.writeable = False
        outs = [
            np.empty(shape, np.float16),
            np.empty(shape + (1,), d.dtype),
            [],
            readonly,
        ]
        if k > 1 and np.prod(shape) > 1:
            outs.append(np.empty(shape[:-1] + (2 * k,), d.dtype)[..., ::2])
        out = outs[draw(st.integers(0, len(outs) - 1))]
        kind = (
            TypeError if isinstance(out, list) or out.dtype != d.dtype else ValueError
        )
        call((kind, "out"), d.rsample, rng=0, out=out)
    elif which == "value_kind":
        bad = draw(st.sampled_from(BAD_KINDS))
        call(
            (TypeError, "value"), d.log_prob, _bad_kind(draw, d.batch_shape + (k,), bad)
        )
    elif which == "gumbels_shape":
        call(
            (ValueError, "gumbels"),
            d.rsample,
            gumbels=np.zeros(d.batch_shape + (k + 1,)),
        )
    else:
        v = call(None, d.rsample, rng=1)
        bad = draw(st.sampled_from(BAD_KINDS))
        call((TypeError, "grad"), d.rsample_vjp, v, _bad_kind(draw, v.shape, bad))
