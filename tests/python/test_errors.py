"""Bad inputs: each raises the documented type with a message that names the
argument, what was seen and what was expected, and leaves every input as it
was. Also: the library's own samples always pass its own validation."""

from __future__ import annotations

import contextlib
import re
import warnings

import numpy as np
import pytest

import relaxcat

R = relaxcat.RelaxedOneHotCategorical
E = relaxcat.ExpRelaxedOneHotCategorical
CLASSES = [R, E]
INF, NAN = np.inf, np.nan


def num(x) -> str:
    """A pattern for the number x as a message shows it.

    The form STYLE.md fixes is the plain number (``got -0.5``); the optional
    NumPy wrapper is accepted here so that each test checks its own input, and
    ``test_error_messages_show_plain_numbers`` checks the form once.
    """
    return r"(?:np\.float(?:16|32|64)\()?" + re.escape(repr(float(x))) + r"\)?"


def check_raises(exc, pattern, fn, *inputs):
    """``fn()`` raises ``exc`` matching ``pattern``; ``inputs`` are unchanged."""
    before = [np.array(a, copy=True) for a in inputs]
    flags = [a.flags.writeable if isinstance(a, np.ndarray) else None for a in inputs]
    with pytest.raises(exc, match=pattern) as info:
        fn()
    for a, b, w in zip(inputs, before, flags):
        got = np.asarray(a)
        assert got.dtype == b.dtype and got.shape == b.shape
        np.testing.assert_array_equal(got, b)  # NaN compares equal here
        if w is not None:
            assert a.flags.writeable == w
    return info


# --------------------------------------------------------------- constructor
TEMPERATURE_CASES = [
    (-0.5, r"got {v}$", -0.5),
    (0.0, r"got {v}$", 0.0),
    (NAN, r"got {v}$", NAN),
    (INF, r"got {v}$", INF),
    (-INF, r"got {v}$", -INF),
    (np.float32(-2.0), r"got {v}$", -2.0),
    (
        np.array([[1.0, 2.0, -1.0], [0.0, 1.0, NAN]]),
        r"got {v} at index \(0, 2\) \(3 entries in all\)",
        -1.0,
    ),
    (np.array([1.0, NAN]), r"got {v} at index \(1,\)$", NAN),
    (np.array([1.0, 2.0, INF]), r"got {v} at index \(2,\)$", INF),
]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("temp,where,bad", TEMPERATURE_CASES)
def test_bad_temperature_is_rejected_with_the_first_bad_index(cls, temp, where, bad):
    logits = np.zeros(3) if np.ndim(temp) < 2 else np.zeros((2, 3, 3))[:, 0]
    pattern = r"^temperature must be positive and finite, " + where.format(v=num(bad))
    check_raises(ValueError, pattern, lambda: cls(temp, logits=logits), temp, logits)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    "temp, where, given, becomes",
    [
        (1e-300, "", 1e-300, 0.0),
        (1e300, "", 1e300, INF),
        (np.array([1.0, 1e-60]), r" at index \(1,\)", 1e-60, 0.0),
    ],
)
def test_a_temperature_lost_in_float32_is_reported_as_given(
    cls, temp, where, given, becomes
):
    # A float64 temperature that float32 logits turn into 0 or inf was reported
    # as the converted value ("got 0.0"), which the caller never passed.
    logits = np.zeros(3, np.float32)
    pattern = (
        r"^temperature must be positive and finite in float32 \(the distribution's "
        rf"dtype\), got {num(given)}, which becomes {num(becomes)}{where}$"
    )
    check_raises(ValueError, pattern, lambda: cls(temp, logits=logits), temp, logits)


@pytest.mark.parametrize("cls", CLASSES)
def test_exactly_one_of_probs_and_logits(cls):
    p = np.ones(3)
    check_raises(
        ValueError,
        r"exactly one of probs or logits must be given, got both",
        lambda: cls(1.0, probs=p, logits=np.log(p)),
        p,
    )
    check_raises(
        ValueError,
        r"exactly one of probs or logits must be given, got neither",
        lambda: cls(1.0),
    )


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    "logits,pattern",
    [
        (
            np.array([[0.0, 1.0], [NAN, 1.0]]),
            r"logits must be finite or -inf \(a masked category\), got {nan} "
            r"at index \(1, 0\)",
        ),
        (
            np.array([0.0, INF, 2.0]),
            r"logits must be finite or -inf \(a masked category\), got {inf} "
            r"at index \(1,\)",
        ),
        (
            np.array([[0.0, 1.0], [-INF, -INF]]),
            r"logits must leave at least one category possible in every row, "
            r"got a row of all -inf at batch index \(1,\)",
        ),
        (
            np.array([-INF, -INF]),
            r"logits must leave at least one category possible in every row",
        ),
        # Finite logits whose spread overflows: shifted by the largest, the
        # smallest became -inf, a masked category still counted in K, and
        # log_prob was NaN. A masked category is spelled -inf.
        (
            np.array([[0.0, 1.0, -INF], [1e308, -INF, -1e308]]),
            r"logits must differ by less than the largest float64 within a row "
            r"\(mask a category with -inf instead\), got largest 1e\+308 and "
            r"smallest -1e\+308 at batch index \(1,\)",
        ),
    ],
)
def test_bad_logits_are_rejected(cls, logits, pattern):
    pattern = pattern.format(nan=num(NAN), inf=num(INF))
    check_raises(ValueError, pattern, lambda: cls(1.0, logits=logits), logits)


@contextlib.contextmanager
def threads_set(n):
    before = relaxcat.get_num_threads()
    relaxcat.set_num_threads(n)
    try:
        yield
    finally:
        relaxcat.set_num_threads(before)


# Dense logits are copied and checked in runs of rows (Note [checked copy of
# logits], kernels.hpp), and a run is accepted whole when no entry but -inf lies
# outside the plain range. A bad row deep in a large batch, after runs that pass
# and among masked entries, must still be found, on every thread count.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "spoil,pattern",
    [
        (
            lambda a: a.__setitem__((2345, 5), NAN),
            r"logits must be finite or -inf \(a masked category\), got {nan} "
            r"at index \(2345, 5\)",
        ),
        (
            lambda a: a.__setitem__((2999, 7), INF),
            r"logits must be finite or -inf \(a masked category\), got {inf} "
            r"at index \(2999, 7\)",
        ),
        (
            lambda a: a.__setitem__(2345, -INF),
            r"logits must leave at least one category possible in every row, "
            r"got a row of all -inf at batch index \(2345,\)",
        ),
    ],
)
def test_bad_logits_deep_in_a_large_batch(dtype, threads, spoil, pattern):
    logits = np.random.default_rng(5).standard_normal((3000, 8)).astype(dtype)
    logits[::3, 2] = -INF
    spoil(logits)
    pattern = pattern.format(nan=num(NAN), inf=num(INF))
    with threads_set(threads):
        check_raises(ValueError, pattern, lambda: R(1.0, logits=logits), logits)


@pytest.mark.parametrize("threads", [1, 2])
def test_logits_spread_overflow_deep_in_a_large_batch(threads):
    logits = np.random.default_rng(6).standard_normal((3000, 8))
    logits[2345, 1], logits[2345, 6] = 1e308, -1e308
    with threads_set(threads):
        check_raises(
            ValueError,
            r"smallest -1e\+308 at batch index \(2345,\)",
            lambda: R(1.0, logits=logits),
            logits,
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "spoil,pattern",
    [
        (
            lambda p: p.__setitem__((2345, 5), -0.25),
            r"probs must be non-negative and finite, got {m} at index \(2345, 5\)",
        ),
        (
            lambda p: p.__setitem__((2999, 7), NAN),
            r"probs must be non-negative and finite, got {nan} at index \(2999, 7\)",
        ),
        (
            lambda p: p.__setitem__(2345, 0.0),
            r"probs must have a positive sum in every row, "
            r"got sum {zero} at batch index \(2345,\)",
        ),
    ],
)
def test_bad_probs_deep_in_a_large_batch(dtype, threads, spoil, pattern):
    probs = np.random.default_rng(8).random((3000, 8)).astype(dtype)
    probs[::3, 2] = 0.0
    spoil(probs)
    pattern = pattern.format(m=num(-0.25), nan=num(NAN), zero=num(0.0))
    with threads_set(threads):
        check_raises(ValueError, pattern, lambda: R(1.0, probs=probs), probs)


def test_probs_whose_sum_overflows_deep_in_a_large_batch_are_accepted():
    probs = np.random.default_rng(9).random((3000, 8))
    probs[2345, :2] = 1.5e308
    d = R(1.0, probs=probs)
    got = d.probs
    rest = np.delete(probs, 2345, axis=0)
    want = rest / rest.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.delete(got, 2345, axis=0), want, rtol=2e-15)
    # (1.5e308 / m) / S with m = 1.5e308 and S = 2 + (the rest) / m.
    np.testing.assert_allclose(got[2345, :2], 0.5, rtol=1e-15)
    tiny = probs[2345, 2:] / 1.5e308 / 2  # subnormal: compared absolutely
    np.testing.assert_allclose(got[2345, 2:], tiny, rtol=0, atol=1e-323)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_probs_with_zeros_are_accepted(dtype):
    # Zeros in many rows, and a row of the largest probs whose sum is finite,
    # past the range the fast copy accepts whole (L / K).
    rng = np.random.default_rng(10)
    probs = rng.random((5000, 8)).astype(dtype)
    probs[::2, 1:7] = 0.0
    probs[4001] = np.finfo(dtype).max / 8
    d = R(1.0, probs=probs)
    want = probs.astype(np.float64) / probs.astype(np.float64).sum(-1, keepdims=True)
    np.testing.assert_allclose(d.probs, want, rtol=4 * np.finfo(dtype).eps)
    assert np.all(d.probs[::2, 1:7] == 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_masked_logits_are_kept_exactly(dtype):
    # Masked entries, entries at the edge of the plain range (half the largest
    # float64) and just past it, in runs the fast copy accepts and in one it
    # hands to the row-by-row check.
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((5000, 8)).astype(dtype)
    logits[::2, 1:7] = -INF
    edge = np.finfo(dtype).max if dtype == np.float32 else np.finfo(np.float64).max / 2
    logits[11, 3], logits[11, 0] = edge, 0.0
    if dtype == np.float64:  # past the largest float32 is inf, invalid
        logits[4001, 2] = np.nextafter(edge, INF)
        logits[4001, 3] = 0.0
    d = R(1.0, logits=logits)
    np.testing.assert_array_equal(d._a, logits)
    assert d._a.dtype == logits.dtype
    probs = d.probs
    assert np.all(probs[::2, 1:7] == 0.0)
    assert np.all(np.isfinite(probs))


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    "probs,pattern",
    [
        (
            np.array([[0.5, 0.5], [-0.25, 1.0]]),
            r"probs must be non-negative and finite, got {m} at index \(1, 0\)",
        ),
        (
            np.array([0.5, NAN]),
            r"probs must be non-negative and finite, got {nan} at index \(1,\)",
        ),
        (
            np.array([INF, 0.5]),
            r"probs must be non-negative and finite, got {inf} at index \(0,\)",
        ),
        (
            np.array([[0.5, 0.5], [0.0, 0.0]]),
            r"probs must have a positive sum in every row, "
            r"got sum {zero} at batch index \(1,\)",
        ),
    ],
)
def test_bad_probs_are_rejected(cls, probs, pattern):
    pattern = pattern.format(m=num(-0.25), nan=num(NAN), inf=num(INF), zero=num(0.0))
    check_raises(ValueError, pattern, lambda: cls(1.0, probs=probs), probs)


@pytest.mark.parametrize("name", ["logits", "probs", "temperature", "value", "grad"])
def test_ragged_nested_lists_name_their_argument(name):
    # Regression (fresh-user review): NumPy's own "setting an array element with
    # a sequence" came through without the argument's name.
    ragged = [[0.5, 0.5], [1.0]]
    d = R(1.0, logits=[0.0, 0.0])
    calls = {
        "logits": lambda: R(1.0, logits=ragged),
        "probs": lambda: R(1.0, probs=ragged),
        "temperature": lambda: R(ragged, logits=[0.0, 0.0]),
        "value": lambda: d.log_prob(ragged),
        "grad": lambda: d.rsample_vjp([0.5, 0.5], ragged),
    }
    with pytest.raises(ValueError, match=f"^{name} must be a rectangular array"):
        calls[name]()


def test_probs_whose_sum_overflows_are_normalised_without_a_numpy_warning():
    # Each entry is finite, the row sum is not: the row is scaled by its largest
    # entry (Note [probs of any scale]); it was a ValueError. No stray
    # RuntimeWarning from NumPy's sum on the way (warnings are errors here).
    probs = np.array([[1e308, 1e308], [0.5, 0.5]])
    d = R(1.0, probs=probs)
    np.testing.assert_array_equal(d.probs, np.full((2, 2), 0.5))
    np.testing.assert_array_equal(d.logits, np.full((2, 2), np.log(0.5)))


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("name", ["logits", "probs"])
@pytest.mark.parametrize("shape", [(), (0,), (3, 0)])
def test_parameters_need_a_category_axis(cls, name, shape):
    arr = np.ones(shape)
    check_raises(
        ValueError,
        rf"{name} must have a last axis of at least one category, got shape "
        + re.escape(str(shape)),
        lambda: cls(1.0, **{name: arr}),
        arr,
    )


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    "t_shape,logits_shape,pattern",
    [
        (
            (3,),
            (2, 4),
            r"temperature of shape \(3,\) does not broadcast with the batch shape "
            r"\(2,\) of logits",
        ),
        (
            (4, 1),
            (3, 3),
            r"temperature of shape \(4, 1\) \(read per row.*its rows are \(4,\)\) "
            r"does not broadcast with the batch shape \(3,\) of logits",
        ),
        ((2, 4), (3, 5), r"temperature of shape \(2, 4\) does not broadcast"),
    ],
)
def test_temperature_must_broadcast_with_the_batch(cls, t_shape, logits_shape, pattern):
    temp = np.ones(t_shape)
    logits = np.zeros(logits_shape)
    check_raises(ValueError, pattern, lambda: cls(temp, logits=logits), temp, logits)


BAD_DTYPES = [
    (np.zeros(3, dtype=complex), "complex128"),
    (np.zeros(3, dtype=object), "object"),
    (np.array(["a", "b", "c"]), "<U1"),
    (np.zeros(3, dtype="M8[s]"), "datetime64"),
]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("arr,dname", BAD_DTYPES)
@pytest.mark.parametrize("name", ["logits", "probs", "temperature"])
def test_non_real_dtypes_are_type_errors_in_the_constructor(cls, arr, dname, name):
    kwargs = {"logits": np.zeros(3)} if name == "temperature" else {name: arr}
    temp = arr if name == "temperature" else 1.0
    check_raises(
        TypeError,
        rf"{name} must be a real number or an array of real numbers, got dtype "
        + re.escape(dname),
        lambda: cls(temp, **kwargs),
        arr,
    )


def test_a_complex_python_scalar_temperature_is_a_type_error():
    check_raises(
        TypeError,
        r"temperature must be a real number .* got dtype complex128",
        lambda: R(1j, logits=np.zeros(3)),
    )


# ------------------------------------------------------------------- values
def _dist(cls, validate=True):
    logits = np.array([[0.0, 1.0, -INF], [0.5, 0.0, -1.0]])
    return cls(np.array([0.5, 2.0]), logits=logits, validate_args=validate)


def _params(d):
    return [d._a, d._temperature]


def _value_methods(d):
    """Every method that takes a value, with valid other arguments."""
    return {
        "log_prob": lambda v: d.log_prob(v),
        "rsample_vjp": lambda v: d.rsample_vjp(v, np.ones(np.shape(v))),
        "log_prob_vjp": lambda v: d.log_prob_vjp(v, 1.0),
    }


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("method", ["log_prob", "rsample_vjp", "log_prob_vjp"])
@pytest.mark.parametrize("shape", [(2, 2), (2, 4), (4,), (3, 1), ()])
def test_value_with_the_wrong_number_of_categories_is_rejected(cls, method, shape):
    d = _dist(cls)
    value = np.full(shape, 0.25)
    check_raises(
        ValueError,
        r"value must have a last axis of length 3, got shape " + re.escape(str(shape)),
        lambda: _value_methods(d)[method](value),
        value,
        *_params(d),
    )


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("method", ["log_prob", "rsample_vjp", "log_prob_vjp"])
@pytest.mark.parametrize("lead", [(3,), (4, 3), (2, 3, 5)])
def test_value_that_does_not_broadcast_with_the_batch_is_rejected(cls, method, lead):
    # The batch is (2,); each lead ends in a size that is neither 1 nor 2.
    d = _dist(cls)
    row = (
        np.array([0.5, 0.5, 0.0]) if cls is R else np.array([np.log(0.5)] * 2 + [-INF])
    )
    value = np.broadcast_to(row, lead + (3,)).copy()
    pattern = (
        r"value of shape "
        + re.escape(str(value.shape))
        + r" does not broadcast with batch_shape \(2,\)"
    )
    check_raises(
        ValueError,
        pattern,
        lambda: _value_methods(d)[method](value),
        value,
        *_params(d),
    )


SIMPLEX_CASES = [
    (
        "negative",
        [[0.5, 0.5, 0.0], [1.2, -0.2, 0.0]],
        r"value must be non-negative and finite \(a point on the simplex\), "
        r"got {v} at index "
        r"\(1, 1\)",
        -0.2,
    ),
    (
        "nan",
        [[0.5, 0.5, 0.0], [0.5, NAN, 0.5]],
        r"value must be non-negative and finite \(a point on the simplex\), "
        r"got {v} at index "
        r"\(1, 1\)",
        NAN,
    ),
    (
        "inf",
        [[INF, 0.5, 0.0], [0.5, 0.25, 0.25]],
        r"value must be non-negative and finite \(a point on the simplex\), "
        r"got {v} at index "
        r"\(0, 0\)",
        INF,
    ),
    (
        "sum",
        [[0.5, 0.5, 0.0], [0.5, 0.25, 0.5]],
        r"value must sum to 1 over the last axis within 1e-06, "
        r"got sum {v} at batch index "
        r"\(1,\)",
        1.25,
    ),
    (
        "masked",
        [[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]],
        r"value must be 0 on masked categories \(probability 0, logit -inf\); "
        r"got weight {v} at index \(0, 2\)",
        0.25,
    ),
]


@pytest.mark.parametrize("method", ["log_prob", "rsample_vjp", "log_prob_vjp"])
@pytest.mark.parametrize(
    "case,value,pattern,bad", SIMPLEX_CASES, ids=[c[0] for c in SIMPLEX_CASES]
)
def test_value_off_the_simplex_is_rejected_when_validating(
    method, case, value, pattern, bad
):
    d = _dist(R)
    value = np.array(value)
    pattern = pattern.format(v=num(bad)) if bad is not None else pattern
    check_raises(
        ValueError,
        pattern,
        lambda: _value_methods(d)[method](value),
        value,
        *_params(d),
    )


LOG_SIMPLEX_CASES = [
    (
        "inf",
        [[0.0, INF, -INF], [-1.0, -1.0, -1.0]],
        r"value must be the log of a point on the simplex \(finite or -inf\), "
        r"got {v} at index "
        r"\(0, 1\)",
        INF,
    ),
    (
        "nan",
        [[0.0, -INF, -INF], [NAN, -1.0, -1.0]],
        r"value must be the log of a point on the simplex \(finite or -inf\), "
        r"got {v} at index "
        r"\(1, 0\)",
        NAN,
    ),
    (
        "lse",
        [[0.0, -INF, -INF], [0.0, 0.0, -INF]],
        r"value must satisfy sum\(exp\(value\)\) = 1 over the last axis "
        r"within 1e-06, got "
        r"{v} at batch index \(1,\)",
        2.0,
    ),
]


@pytest.mark.parametrize("method", ["log_prob", "rsample_vjp", "log_prob_vjp"])
@pytest.mark.parametrize(
    "case,value,pattern,bad", LOG_SIMPLEX_CASES, ids=[c[0] for c in LOG_SIMPLEX_CASES]
)
def test_value_off_the_log_simplex_is_rejected_when_validating(
    method, case, value, pattern, bad
):
    d = _dist(E)
    value = np.array(value)
    check_raises(
        ValueError,
        pattern.format(v=num(bad)),
        lambda: _value_methods(d)[method](value),
        value,
        *_params(d),
    )


@pytest.mark.parametrize("method", ["log_prob", "rsample_vjp", "log_prob_vjp"])
def test_log_value_with_weight_on_a_masked_category_names_the_log_space_expectation(
    method,
):
    # In log space the value on a masked category must be -inf (x = 0); telling
    # the user it "must be 0" would ask for x = 1 there.
    d = _dist(E)
    value = np.log(np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    check_raises(
        ValueError,
        r"value must be -inf on masked categories \(probability 0, logit -inf\); "
        r"got log weight " + num(np.log(0.25)) + r" at index \(0, 2\)",
        lambda: _value_methods(d)[method](value),
        value,
        *_params(d),
    )


@pytest.mark.parametrize(
    "cls,value",
    [
        (E, np.array([[1000.0, 0.0, -INF], [0.0, -1.0, -1.0]])),  # exp overflows
        (R, np.array([[1e308, 1e308, 0.0], [0.5, 0.25, 0.25]])),  # the sum overflows
    ],
)
def test_huge_values_are_rejected_without_a_numpy_warning(cls, value):
    d = _dist(cls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_raises(
            ValueError, r"value must", lambda: d.log_prob(value), value, *_params(d)
        )


def test_without_validation_weight_on_a_masked_category_has_log_prob_minus_inf():
    value = np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])
    before = value.copy()
    d = _dist(R, validate=False)
    lp = d.log_prob(value)
    assert lp[0] == -INF
    assert np.isfinite(lp[1])
    g = d.log_prob_vjp(value, np.ones(2))
    assert not any(np.any(np.isnan(a)) for a in g)
    np.testing.assert_array_equal(value, before)


def test_without_validation_log_space_weight_on_a_masked_category_gives_minus_inf():
    value = np.log(np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    e = _dist(E, validate=False)
    lp = e.log_prob(value)
    assert lp[0] == -INF
    assert np.isfinite(lp[1])
    g = e.log_prob_vjp(value, np.ones(2))
    assert not any(np.any(np.isnan(a)) for a in g)


def test_without_validation_values_off_the_simplex_raise_nothing():
    d = _dist(R, validate=False)
    value = np.array([[0.6, 0.6, 0.0], [0.2, 0.2, 0.2]])
    assert d.log_prob(value).shape == (2,)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("arr,dname", BAD_DTYPES[:3])
def test_non_real_dtypes_are_type_errors_in_the_methods(cls, arr, dname):
    d = _dist(cls)
    v = d.rsample(rng=0)
    bad = np.broadcast_to(arr, (2, 3)).copy()
    msg = r" must be a real number or an array of real numbers, got dtype " + re.escape(
        dname
    )
    check_raises(TypeError, "value" + msg, lambda: d.log_prob(bad), bad)
    check_raises(TypeError, "grad" + msg, lambda: d.rsample_vjp(v, bad), bad, v)
    check_raises(TypeError, "grad" + msg, lambda: d.log_prob_vjp(v, bad[:, 0]), bad, v)
    check_raises(TypeError, "gumbels" + msg, lambda: d.rsample(gumbels=bad), bad)


@pytest.mark.parametrize("cls", CLASSES)
def test_grad_that_does_not_broadcast_is_rejected(cls):
    d = _dist(cls)
    v = d.rsample((4,), rng=0)
    w = np.ones((5, 3))
    check_raises(
        ValueError,
        r"grad must broadcast to the value's shape \(4, 2, 3\), got \(5, 3\)",
        lambda: d.rsample_vjp(v, w),
        w,
        v,
        *_params(d),
    )
    w2 = np.ones((4, 2, 2))
    check_raises(
        ValueError,
        r"grad must broadcast to the value's shape",
        lambda: d.rsample_vjp(v, w2),
        w2,
        v,
    )
    g = np.ones(3)
    check_raises(
        ValueError,
        r"grad must broadcast to log_prob's shape \(4, 2\), got \(3,\)",
        lambda: d.log_prob_vjp(v, g),
        g,
        v,
        *_params(d),
    )


# ------------------------------------------------------------------ gumbels
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("shape", [(3,), (2, 2), (1, 2, 3), (4, 2, 3)])
def test_gumbels_of_the_wrong_shape_are_rejected(cls, shape):
    d = _dist(cls)
    g = np.zeros(shape)
    # The batch is (2,) and K = 3: (4, 2, 3) is four draws, and the message says
    # which sample_shape would take it (a fresh-user review passed gumbels
    # without sample_shape and was told only the shape wanted).
    hint = rf" \(sample_shape=\({shape[0]},\) would match\)" if len(shape) == 3 else ""
    check_raises(
        ValueError,
        r"gumbels must have shape sample_shape \+ batch_shape \+ event_shape = "
        r"\(2, 3\), got " + re.escape(str(shape)) + hint + "$",
        lambda: d.rsample(gumbels=g),
        g,
        *_params(d),
    )


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_gumbels_are_rejected(cls, bad):
    d = _dist(cls)
    g = np.zeros((3, 2, 3))
    g[1, 0, 2] = bad
    check_raises(
        ValueError,
        r"gumbels must be finite, got " + num(bad) + r" at index \(1, 0, 2\)$",
        lambda: d.rsample((3,), gumbels=g),
        g,
        *_params(d),
    )


# ---------------------------------------------------------------------- out=
def _out_calls(d):
    v = d.rsample(rng=0)
    return {
        "rsample": (lambda out: d.rsample(rng=0, out=out), (2, 3), v),
        "log_prob": (lambda out: d.log_prob(v, out=out), (2,), v),
    }


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("method", ["rsample", "log_prob"])
def test_bad_out_arrays_are_rejected(cls, method):
    d = _dist(cls)
    call, shape, v = _out_calls(d)[method]
    cases = []
    wrong_shape = np.zeros(shape + (1,))
    cases.append(
        (
            ValueError,
            r"out must have shape "
            + re.escape(str(shape))
            + r", got "
            + re.escape(str(wrong_shape.shape)),
            wrong_shape,
        )
    )
    cases.append(
        (
            TypeError,
            r"out must have dtype float64, got float32",
            np.zeros(shape, np.float32),
        )
    )
    ro = np.zeros(shape)
    ro.flags.writeable = False
    cases.append((ValueError, r"out must be writable, got a read-only array", ro))
    strided = np.zeros(shape[:-1] + (2 * shape[-1],))[..., ::2]
    contiguity = r"out must be C-contiguous, got strides \([-\d, ]+\) for shape \("
    cases.append((ValueError, contiguity, strided))
    cases.append(
        (ValueError, r"out must be C-contiguous", np.zeros(shape[::-1]).T)
        if len(shape) > 1
        else (ValueError, r"out must be C-contiguous", np.zeros(shape)[::-1])
    )
    # C-contiguous and writable but one byte off its elements' alignment: the
    # kernels had stored through it (undefined behaviour; a fresh-user review).
    size = int(np.prod(shape))
    misaligned = np.ndarray(shape, np.float64, buffer=bytearray(8 * size + 1), offset=1)
    cases.append(
        (
            ValueError,
            r"out must be aligned to its 8-byte elements, got an array at address 0x",
            misaligned,
        )
    )
    for exc, pattern, out in cases:
        check_raises(exc, pattern, lambda out=out: call(out), out, v, *_params(d))
    check_raises(
        TypeError,
        r"out must be a numpy.ndarray, got list",
        lambda: call(np.zeros(shape).tolist()),
        v,
    )


@pytest.mark.parametrize("cls", CLASSES)
def test_rsample_out_overlapping_the_gumbels_is_rejected(cls):
    logits = np.zeros((2, 6))
    d = cls(np.array([0.5, 1.0]), logits=logits)
    g = np.random.default_rng(0).gumbel(size=(2, 6))
    check_raises(
        ValueError,
        r"out must not share memory with gumbels$",
        lambda: d.rsample(gumbels=g, out=g),
        g,
        logits,
    )


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("param", ["logits", "probs"])
def test_out_over_the_callers_parameter_arrays_cannot_change_the_distribution(
    cls, param
):
    # Regression: the distribution read the caller's arrays live, so an out= over
    # them (or any later write) changed it, and NaN or a negative temperature got
    # past validation. It now owns read-only copies.
    temp = np.array([0.5, 2.0])
    given = np.full((2, 3), 1 / 3) if param == "probs" else np.zeros((2, 3))
    d = cls(temp, **{param: given})
    before = d.rsample((4,), rng=0)
    lp_before = d.log_prob(before)
    d.log_prob(before[0], out=temp)  # writes over the caller's temperature
    given[:] = np.nan
    np.testing.assert_array_equal(d.rsample((4,), rng=0), before)
    np.testing.assert_array_equal(d.log_prob(before), lp_before)
    np.testing.assert_array_equal(d.temperature, [0.5, 2.0])
    # The temperature property had returned the distribution's own array, read
    # only but its own data, so setflags(write=True) let a caller set -7 past
    # validation (a fresh-user review); it is now a new array each time.
    t = d.temperature
    t.setflags(write=True)
    t[...] = -7.0
    np.testing.assert_array_equal(d.temperature, [0.5, 2.0])
    np.testing.assert_array_equal(d.rsample((4,), rng=0), before)


@pytest.mark.parametrize("cls", CLASSES)
def test_log_prob_out_overlapping_the_value_is_rejected(cls):
    d = _dist(cls)
    v = d.rsample((2,), rng=0)  # (2, 2, 3)
    out = v.reshape(-1)[:4].reshape(2, 2)
    check_raises(
        ValueError,
        r"out must not share memory with value$",
        lambda: d.log_prob(v, out=out),
        v,
    )


# ---------------------------------------------------------- rng and threads
@pytest.mark.parametrize(
    "rng,kind",
    [
        ("seed", "str"),
        (1.0, "float"),
        (True, "bool"),
        (np.bool_(False), "bool"),
        ([1, 2], "list"),
        (np.random.RandomState(0), "RandomState"),
    ],
)
def test_rng_of_a_bad_kind_is_a_type_error(rng, kind):
    d = _dist(R)
    check_raises(
        TypeError,
        r"rng must be None, an int seed or a numpy.random.Generator, got " + kind,
        lambda: d.rsample(rng=rng),
        *_params(d),
    )


@pytest.mark.parametrize("seed", [-1, 2**64, -(2**70)])
def test_int_seed_out_of_range_is_a_value_error(seed):
    d = _dist(R)
    check_raises(
        ValueError,
        r"rng as an int seed must satisfy 0 <= seed < 2\*\*64, got " + str(seed),
        lambda: d.rsample(rng=seed),
    )


def test_int_seeds_at_the_ends_of_the_range_are_accepted():
    d = _dist(R)
    for seed in (0, 2**64 - 1, np.uint64(2**64 - 1), np.int8(3)):
        assert d.rsample(rng=seed).shape == (2, 3)


@pytest.mark.parametrize(
    "n,exc,pattern",
    [
        (
            0,
            ValueError,
            r"num_threads must be a positive int of at most 2147483647, got 0",
        ),
        (-1, ValueError, r"num_threads must be a positive int.*, got -1"),
        (2**31, ValueError, r"num_threads must be a positive int.*, got 2147483648"),
        (
            2**64,
            ValueError,
            r"num_threads must be a positive int.*, got 18446744073709551616",
        ),
        (1.5, TypeError, r"num_threads must be a positive int, got float"),
        (True, TypeError, r"num_threads must be a positive int, got bool"),
        ("2", TypeError, r"num_threads must be a positive int, got str"),
    ],
)
def test_bad_num_threads_are_rejected(threads, n, exc, pattern):
    d = _dist(R)
    v = d.rsample(rng=0)
    before = relaxcat.get_num_threads()
    check_raises(exc, pattern, lambda: d.rsample(rng=0, num_threads=n))
    check_raises(exc, pattern, lambda: d.log_prob(v, num_threads=n), v)
    check_raises(exc, pattern, lambda: d.rsample_vjp(v, v, num_threads=n), v)
    check_raises(exc, pattern, lambda: d.log_prob_vjp(v, 1.0, num_threads=n), v)
    check_raises(exc, pattern, lambda: relaxcat.set_num_threads(n))
    assert relaxcat.get_num_threads() == before


# -------------------------------------------------------------- sample_shape
@pytest.mark.parametrize("shape", [(-1,), (2, -3), -2])
def test_negative_sample_shape_is_rejected(shape):
    d = _dist(R)
    check_raises(
        ValueError,
        r"sample_shape must not have negative sizes, got \(",
        lambda: d.rsample(shape, rng=0),
    )


# A set or dict has no order (a second look at a fifth fresh-user review:
# rsample({3, 2}) gave shape (2, 3, 3)); expand's batch_shape is read alike.
@pytest.mark.parametrize("shape", [None, 2.5, "ab", {3, 2}, frozenset({2}), {3: 1}])
def test_sample_shape_of_a_bad_kind_is_a_type_error(shape):
    d = _dist(R)
    check_raises(
        TypeError,
        rf"^sample_shape must be a tuple of ints, got {type(shape).__name__}$",
        lambda: d.rsample(shape, rng=0),
    )
    check_raises(
        TypeError,
        rf"^expand: batch_shape must be a tuple of ints, got {type(shape).__name__}$",
        lambda: d.expand(shape),
    )


# The constraints' checks took np.asarray of anything (the second look at a
# fifth review): simplex.check(0) raised IndexError, positive.check(None) a
# bare ufunc TypeError, and positive.check(1 + 1j) returned True.
def test_constraint_checks_refuse_what_is_not_real_numbers():
    from relaxcat import constraints

    every = (
        constraints.positive,
        constraints.real_vector,
        constraints.simplex,
        constraints.log_simplex,
    )
    for c in every:
        for bad, got in [(None, "None"), (1 + 1j, "dtype complex128"), ("ab", "str")]:
            check_raises(
                TypeError,
                rf"^value must be a real number or an array of real numbers, got "
                rf"{got}$",
                lambda c=c, bad=bad: c.check(bad),
            )
    for c in every[1:]:
        check_raises(
            ValueError,
            r"^value must have a category axis \(one dimension or more\), got a 0-d "
            r"array$",
            lambda c=c: c.check(0),
        )
    # Bools and ints are numbers here as everywhere.
    assert constraints.positive.check(np.array([True, False])).tolist() == [True, False]
    assert constraints.simplex.check(np.array([[1, 0], [1, 1]])).tolist() == [
        True,
        False,
    ]
    assert bool(constraints.real_vector.check([True, False]))


@pytest.mark.parametrize("shape", [(2.7,), (2, 1.5), (np.float64(3.0),)])
def test_sample_shape_with_non_integer_sizes_is_a_type_error(shape):
    # int() would silently truncate 2.7 to 2 samples.
    d = _dist(R)
    check_raises(
        TypeError,
        r"sample_shape must be a tuple of ints",
        lambda: d.rsample(shape, rng=0),
    )


# ----------------------------------------------------------- message form
def test_error_messages_show_plain_numbers():
    # STYLE.md: "temperature must be positive and finite, got -0.5 at index (3,)".
    # NumPy 2's scalar repr (np.float64(-0.5)) must not leak into messages.
    calls = [
        lambda: R(-0.5, logits=np.zeros(3)),
        lambda: R(np.array([1.0, -0.5]), logits=np.zeros(3)),
        lambda: R(1.0, logits=np.array([0.0, NAN])),
        lambda: R(1.0, probs=np.array([-0.5, 1.0])),
        lambda: R(1.0, probs=np.zeros(2)),
        lambda: _dist(R).log_prob(np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.5]])),
        lambda: _dist(R).rsample(gumbels=np.full((2, 3), INF)),
    ]
    for call in calls:
        with pytest.raises(ValueError) as info:
            call()
        assert "np." not in str(info.value), str(info.value)


# ---------------------------------------- own samples pass own validation
# 4 K eps of the dtype: the tolerance the library documents for validation.
def _simplex_tol(k, dtype):  # own samples: documented 4 K eps
    return 4.0 * k * float(np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 2, 3, 10, 100, 1000])
def test_own_samples_always_pass_validation(dtype, k):
    rng = np.random.default_rng(1000 + k)
    temps = np.array([0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0])
    logits = rng.normal(scale=3.0, size=(temps.size, k))
    if k > 2:
        logits[:, rng.choice(k, size=k // 3, replace=False)] = -INF  # some masked
    logits = logits.astype(dtype)
    n = max(1, 4000 // k)
    for cls in CLASSES:
        d = cls(temps.astype(dtype), logits=logits, validate_args=True)
        v = d.rsample((n,), rng=k)
        assert v.dtype == dtype
        x = v if cls is R else np.exp(v.astype(np.float64))
        total = x.sum(axis=-1, dtype=np.float64)
        assert np.max(np.abs(total - 1.0)) <= _simplex_tol(k, dtype)

        # None of these may raise.
        d.log_prob(v)
        d.rsample_vjp(v, np.ones_like(v))
        d.log_prob_vjp(v, np.ones(v.shape[:-1], dtype=dtype))


EXTREME_TEMPERATURES = [
    (dtype, temp)
    for dtype in (np.float32, np.float64)
    for temp in (1e-300, 1e-320, 5e-324, 1e-38, 1e-45, 1e300, 3e38)
    if float(np.finfo(dtype).smallest_subnormal) <= temp <= float(np.finfo(dtype).max)
]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype,temp", EXTREME_TEMPERATURES)
def test_own_samples_at_extreme_valid_temperatures_are_on_the_simplex(cls, dtype, temp):
    # Any positive finite temperature is accepted, so its samples must be valid:
    # near-one-hot for tiny T (never NaN), near-uniform for huge T.
    t = np.array(temp, dtype=dtype)
    logits = np.array([[0.0, 1.0, 2.0, -INF], [3.0, 3.0, 3.0, 3.0]], dtype=dtype)
    d = cls(t, logits=logits)
    v = d.rsample((50,), rng=1)
    assert not np.any(np.isnan(v))
    d.log_prob(v)  # validation passes
    x = v if cls is R else np.exp(v.astype(np.float64))
    assert np.max(np.abs(x.sum(axis=-1, dtype=np.float64) - 1.0)) <= _simplex_tol(
        4, dtype
    )


def test_validation_admits_a_float64_softmax_that_misses_one_by_a_few_eps():
    # Regression: the tolerance was 4 K eps, and a float64 softmax computed by
    # NumPy (K = 2, sum 1 - 8.5 eps) was rejected as off the simplex. The floor is
    # now 1e-6, torch's tolerance; values off by more are still rejected.
    d = R(np.array(0.5), logits=np.array([0.3, -0.2]))
    eps = float(np.finfo(np.float64).eps)
    x = np.array([0.75, 0.25 - 8.5 * eps])
    assert np.isfinite(d.log_prob(x))
    d.rsample_vjp(x, np.ones(2))
    d.log_prob_vjp(x, np.ones(()))
    widened = np.array([0.7, 0.3], dtype=np.float32).astype(np.float64)
    assert np.isfinite(d.log_prob(widened))
    with pytest.raises(
        ValueError, match=r"must sum to 1 over the last axis within 1e-06"
    ):
        d.log_prob(np.array([0.75, 0.25 - 2e-6]))


# ------------------------------------------- findings of a fresh user's trial
@pytest.mark.parametrize("cls", CLASSES)
def test_rng_together_with_gumbels_is_rejected(cls):
    d = cls(0.5, logits=np.zeros(3))
    g = np.zeros(3)
    check_raises(
        ValueError,
        r"rng and gumbels cannot both be given",
        lambda: d.rsample(rng=1, gumbels=g),
        g,
    )


@pytest.mark.parametrize("flag", ["no", 1, 0.0, [True]])
def test_validate_args_must_be_a_bool_or_none(flag):
    with pytest.raises(TypeError, match=r"validate_args must be None, True or False"):
        R(0.5, logits=np.zeros(3), validate_args=flag)


def test_a_read_only_broadcast_out_is_reported_as_read_only():
    d = R(0.5, logits=np.zeros(3))
    out = np.broadcast_to(np.empty(3), (4, 3))
    with pytest.raises(ValueError, match=r"out must be writable, got a read-only"):
        d.rsample((4,), rng=0, out=out)


def test_float16_samples_pass_validation_with_float16_tolerance():
    # A float16 sample is rounded by the caller to float16, so its row sum can be
    # off by about K float16 eps; float32's tolerance rejected it.
    d = R(np.float16(0.5), logits=np.array([1, 0, -1], np.float16))
    x16 = d.rsample((200,), rng=0).astype(np.float16)
    assert np.all(np.isfinite(d.log_prob(x16)))
    with pytest.raises(ValueError, match=r"must sum to 1"):
        d.log_prob(np.array([0.5, 0.5, 0.1], np.float16))


@pytest.mark.parametrize("k", [300, 2048])
def test_float16_rows_far_from_the_simplex_are_rejected_at_any_k(k):
    # Regression (a fresh-user review): 4 K eps of float16 is 1.17 at K = 300
    # and 8 at K = 2048, so a row of zeros or one summing to 3 passed as a point
    # on the simplex. The tolerance is capped at 1/64; float16 samples rounded
    # from relaxcat's own still pass.
    d = R(np.float32(0.5), logits=np.zeros((1, k), np.float32))
    for bad in (np.zeros((1, k)), np.full((1, k), 3.0 / k), np.full((1, k), 1.02 / k)):
        v = bad.astype(np.float16)
        with pytest.raises(
            ValueError, match=r"must sum to 1 over the last axis within"
        ):
            d.log_prob(v)
    x16 = d.rsample((20,), rng=0).astype(np.float16)
    lp = d.log_prob(x16)  # accepted: entries that underflowed are exact zeros
    assert lp.shape == (20, 1) and not np.any(np.isnan(lp))


@pytest.mark.parametrize("cls", CLASSES)
def test_the_support_message_shows_a_float32_entry_as_float32(cls):
    # Regression (a fresh-user review): "-0.10000000149011612", the entry widened.
    d = cls(np.float32(1.0), logits=np.zeros((1, 3), np.float32))
    bad = np.float32(-0.1) if cls is R else np.float32(np.nan)
    value = np.array([[0.6, 0.5, 0.5]], np.float32)
    value[0, 1] = bad
    shown = re.escape(f"got {str(bad)} at index (0, 1)")  # "-0.1", "nan"
    with pytest.raises(ValueError, match=shown + "$"):
        d.log_prob(value)


def test_float32_rows_of_very_many_categories_have_the_capped_tolerance():
    # 4 K eps of float32 is 0.019 at K = 40000; the cap is 1/64 = 0.0156.
    k = 40000
    d = R(np.float32(0.5), logits=np.zeros((1, k), np.float32))
    x = d.rsample((3,), rng=1)
    assert np.all(np.isfinite(d.log_prob(x)))
    off = (x[:1] * np.float32(1.017)).astype(np.float32)
    with pytest.raises(ValueError, match=r"within 0\.0156"):
        d.log_prob(off)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("cls", CLASSES)
def test_a_non_finite_upstream_grad_is_rejected(cls, bad_value):
    # Regression: a NaN or infinite upstream gradient turned every entry of the
    # result into NaN without a word.
    d = _dist(cls)
    v = d.rsample((4,), rng=0)
    w = np.ones(v.shape)
    w[1, 0, 2] = bad_value
    check_raises(
        ValueError,
        r"grad must be finite, got .*at index \(1, 0, 2\)",
        lambda: d.rsample_vjp(v, w),
        w,
        v,
    )
    g = np.ones(v.shape[:-1])
    g[2, 1] = bad_value
    check_raises(ValueError, r"grad must be finite", lambda: d.log_prob_vjp(v, g), g, v)


# The kernel itself finds a NaN or an infinity in rsample_vjp's grad (Note
# [checking the upstream gradient] in kernels.hpp), on each of its paths: rows
# in columns (K <= 31), blocks of rows (K = 40, and log space above 31), the
# simplex's row path (K = 100) and long rows spread chunk by chunk over threads
# (K = 70000, one row, two threads); the grad contiguous, in Fortran order, or
# one row broadcast to every row; the bad entry first, inside, or last.
@pytest.mark.parametrize("layout", ["C", "F", "broadcast"])
@pytest.mark.parametrize("rows,k", [(37, 3), (37, 31), (20, 40), (9, 100), (1, 70000)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", CLASSES)
def test_rsample_vjp_finds_a_non_finite_grad_on_every_kernel_path(
    cls, dtype, rows, k, layout, simd_level
):
    rng = np.random.default_rng(rows * k)
    logits = rng.standard_normal((rows, k)).astype(dtype)
    logits[:, 1] = -INF  # a masked category: its grad entry is checked too
    d = cls(dtype(0.7), logits=logits)
    x = d.rsample(rng=1)
    shape = (k,) if layout == "broadcast" else (rows, k)
    places = [
        (0,) * len(shape),
        tuple(n // 2 for n in shape),
        tuple(n - 1 for n in shape),
    ]
    places.append((1,) if len(shape) == 1 else (rows - 1, 1))  # the masked one
    for place, bad in zip(places, [NAN, INF, -INF, NAN]):
        w = rng.standard_normal(shape).astype(dtype)
        if layout == "F":
            w = np.asfortranarray(w)
        w[place] = bad
        for threads in (1, 2):
            check_raises(
                ValueError,
                rf"^grad must be finite, got {num(bad)} at index "
                + re.escape(str(place))
                + "$",
                lambda w=w, threads=threads: d.rsample_vjp(x, w, num_threads=threads),
                w,
                x,
            )
        w[place] = 1.0  # the same grad made finite is accepted
        got = d.rsample_vjp(x, w, num_threads=2)
        assert np.all(np.isfinite(got[0])) and np.isfinite(got[1])


def test_rsample_vjp_of_an_empty_sample_still_checks_its_grad():
    # The kernel reads no grad entry when there are no rows; the front end then
    # checks the grad itself, as it did before the kernel took the check over.
    d = R(0.5, logits=np.zeros(3))
    x = np.empty((0, 3))
    check_raises(
        ValueError,
        r"^grad must be finite, got nan at index \(1,\)$",
        lambda: d.rsample_vjp(x, np.array([0.0, NAN, 0.0])),
        x,
    )
    check_raises(
        ValueError,
        r"^grad must be finite, got inf at index \(2,\)$",
        lambda: relaxcat.gumbel_softmax_vjp(x, np.array([0.0, 1.0, INF]), 1.0),
        x,
    )


def _oracle_status(space: int, logits, value, tol: float) -> np.ndarray:
    """The support check's per-row status in NumPy: 1 for a bad entry, 2 for a
    sum off 1 by more than tol, 3 for weight on a masked category, else 0."""
    v = value.astype(np.float64)
    if space == 0:
        bad = ~(np.isfinite(v) & (v >= 0))
        masked = (logits == -INF) & (v > 0)
        x = v
    else:
        bad = np.isnan(v) | (v == INF)
        masked = (logits == -INF) & (v > -INF)
        with np.errstate(over="ignore", invalid="ignore"):
            x = np.exp(v)
    with np.errstate(invalid="ignore"):
        off = np.abs(x.sum(axis=-1) - 1.0) > tol
    status = np.zeros(v.shape[:-1], dtype=np.uint8)
    status[masked.any(axis=-1)] = 3
    status[off] = 2
    status[bad.any(axis=-1)] = 1
    return status


@pytest.mark.parametrize("space", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 16, 17, 40, 300, 20000])
@pytest.mark.parametrize("layout", ["dense", "strided", "shared_logits"])
def test_support_check_status_matches_oracle(space, dtype, k, layout):
    """The C++ support check gives every row the status of a NumPy oracle, over
    several blocks of rows where some blocks hold only good rows and others a
    few bad ones of every kind (the kernel takes a fast path for clean dense
    blocks and counts row by row otherwise). Longer rows with contiguous
    entries are first scanned for a bad entry in their own type, in chunks of
    cache lines, when they are short enough to be read twice (K = 300, and
    20000 in float32); other rows in one pass (float64 at 20000, strided)."""
    from relaxcat import _core

    rng = np.random.default_rng(k * 10 + space)
    rows = 5000 if k <= 300 else 24
    logits = rng.standard_normal((rows, k))
    x = rng.dirichlet(np.ones(k), size=rows)
    # Bad rows only in the second half, so that the first blocks are clean.
    bad_rows = rng.choice(
        np.arange(rows // 2, rows), size=min(60, rows // 2), replace=False
    )
    kinds = ["negative", "nan", "inf", "off", "masked", "masked_zero"]
    value = x.copy()
    for n, r in enumerate(bad_rows):
        kind, j = kinds[n % len(kinds)], rng.integers(k)
        if kind == "negative":
            value[r, j] = -0.25
        elif kind == "nan":
            value[r, j] = NAN
        elif kind == "inf":
            value[r, j] = INF
        elif kind == "off":
            value[r] *= 1.01
        elif kind in ("masked", "masked_zero") and k > 1:
            logits[r, j] = -INF
            if kind == "masked_zero":  # valid: the weight moves elsewhere
                w = value[r, j]
                value[r, j] = 0.0
                value[r, (j + 1) % k] += w
    with np.errstate(divide="ignore", invalid="ignore"):
        value = value if space == 0 else np.log(value)
    value = value.astype(dtype)
    logits = logits.astype(dtype)
    tol = 1e-5
    if layout == "strided":  # every other category of a wider array
        wide_v = np.zeros((rows, 2 * k), dtype)
        wide_v[:, ::2] = value
        wide_l = np.zeros((rows, 2 * k), dtype)
        wide_l[:, ::2] = logits
        value, logits = wide_v[:, ::2], wide_l[:, ::2]
    elif layout == "shared_logits":  # one row of logits for every row
        logits = np.broadcast_to(logits[:1], value.shape)
    status = np.empty(rows, dtype=np.uint8)
    _core.check_values(space, logits, value, tol, status, 1)
    expected = _oracle_status(space, logits, value, tol)
    np.testing.assert_array_equal(status, expected)
    assert expected[: rows // 2].max() == 0 and expected.max() > 0


@pytest.mark.parametrize("cls", CLASSES)
def test_support_error_names_the_first_failing_row(cls):
    """The message names the first row that fails any test, with that row's own
    problem, whatever kinds of failure later rows have: weight on a masked
    category (row 1) before a bad sum (row 2) before a bad entry (row 4)."""
    logits = np.zeros((6, 3))
    logits[1, 2] = -INF
    d = cls(0.5, logits=logits)
    x = np.array(
        [
            [0.5, 0.5, 0.0],
            [0.25, 0.25, 0.5],  # weight 0.5 on the masked category
            [0.75, 0.375, 0.375],  # sums to 1.5
            [0.5, 0.25, 0.25],
            [-0.25, 0.75, 0.5],  # a negative entry (NaN in log space)
            [0.5, 0.25, 0.25],
        ]
    )
    log = cls is E
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.log(x) if log else x
    weight = r"log weight " + num(np.log(0.5)) if log else r"weight 0\.5"
    check_raises(
        ValueError, weight + r" at index \(1, 2\)", lambda: d.log_prob(value), value
    )
    value[1] = value[0]
    check_raises(
        ValueError,
        r"within 1e-06, got (sum )?1\.5 at batch index \(2,\)",
        lambda: d.log_prob(value),
        value,
    )
    value[2] = value[0]
    entry = "nan" if log else num(-0.25)
    check_raises(
        ValueError,
        r"got " + entry + r" at index \(4, 0\)",
        lambda: d.log_prob(value),
        value,
    )


def test_a_sum_at_the_edge_of_the_tolerance_gets_a_message_with_the_sum():
    """The kernel's float64 sum and NumPy's differ in the last bits; a row the
    kernel puts just outside the tolerance and NumPy just inside still gets a
    message naming the row and its sum (sum(exp(y)) - 1 = -9.99999e-7 here)."""
    e = E(np.float32(0.7), logits=np.zeros(2, np.float32))
    value = np.array([-1.3013065, -0.31769735], np.float32)
    check_raises(
        ValueError,
        r"value (is not on the support LogSimplex\(\) at batch index \(\): its sum "
        r"of x is 0\.99999\d+, 1 within 1e-06 only up to rounding|must satisfy)",
        lambda: e.log_prob(value),
        value,
    )


def test_gumbels_names_an_integer_argument_out_of_range():
    # Regression (a fresh-user review): the README points to _core.gumbels, and
    # a negative key or a first element of 2**64 had raised pybind11's
    # "incompatible function arguments" TypeError.
    from relaxcat import _core

    for args, name, shown in [
        ((-1, 0, 0, 3), "key", "-1"),
        ((2**64, 0, 0, 3), "key", "18446744073709551616"),
        ((1, -2, 0, 3), "stream", "-2"),
        ((1, 0, 2**64, 0), "first", "18446744073709551616"),
    ]:
        with pytest.raises(
            ValueError,
            match=rf"^gumbels: {name} must be an integer in \[0, 2\*\*64\), "
            rf"got {shown}$",
        ):
            _core.gumbels(*args)
    with pytest.raises(
        ValueError, match=r"^gumbels: n must be an integer in \[0, 2\*\*63\), got -1$"
    ):
        _core.gumbels(1, 0, 0, -1)
    with pytest.raises(
        TypeError,
        match=r"^gumbels: first must be an integer in \[0, 2\*\*64\), got float$",
    ):
        _core.gumbels(1, 0, 0.5, 3)
    with pytest.raises(TypeError, match=r"^gumbels: n must be an integer .* got bool$"):
        _core.gumbels(1, 0, 0, True)
    # An __index__ that refuses (a one-element array) had come out "got <NULL>".
    with pytest.raises(
        TypeError, match=r"^gumbels: key must be an integer .* got ndarray$"
    ):
        _core.gumbels(np.array([5]), 0, 0, 1)
    np.testing.assert_array_equal(
        _core.gumbels(np.uint64(2**64 - 1), np.int8(3), 5, np.int64(4)),
        _core.gumbels(2**64 - 1, 3, 5, 4),
    )
    # float32 takes a bool only: None and 1 had been read as False and True.
    for bad in (None, 1, "yes"):
        with pytest.raises(TypeError, match=r"float32: bool"):
            _core.gumbels(1, 0, 0, 3, float32=bad)
    assert _core.gumbels(1, 0, 0, 3, float32=np.bool_(True)).dtype == np.float32


def test_a_draw_past_the_end_of_the_stream_is_an_error():
    # A stream has 2^64 elements; past the last one the SIMD levels had drawn
    # different noise. Drawing up to the last element is fine.
    from relaxcat import _core

    last = 2**64 - 8
    assert _core.gumbels(99, 5, last, 8, True).shape == (8,)
    with pytest.raises(
        ValueError,
        match=r"^gumbels: this draw of 32 elements "
        r"from element 18446744073709551608 would run past the end "
        r"of the stream \(2\^64 elements; 8 remain\)$",
    ):
        _core.gumbels(99, 5, last, 32, True)
    with pytest.raises(ValueError, match=r"\(2\^64 elements; 1 remains\)$"):
        _core.gumbels(0, 0, 2**64 - 1, 2, True)
    out = np.full((5000, 2), 7.0)
    with pytest.raises(ValueError, match=r"^rsample: this draw of 10000 elements "):
        _core.rsample(
            np.zeros((5000, 2)), np.ones(5000), None, 99, 5, 2**64 - 3, out, None, 1
        )
    assert np.all(out == 7.0)


@pytest.mark.parametrize("axis", [-1, 0])
def test_gumbel_softmax_vjp_names_the_shape_grad_must_broadcast_to(axis):
    # A fresh-user review: the message gave grad's shape but not the sample's,
    # which rsample_vjp's message gives.
    x = np.full((2, 3), 1 / 3) if axis == -1 else np.full((3, 2), 1 / 3)
    grad = np.ones((2, 4))
    check_raises(
        ValueError,
        r"^grad must broadcast to the sample's shape "
        + re.escape(str(x.shape))
        + r", got \(2, 4\)$",
        lambda: relaxcat.gumbel_softmax_vjp(x, grad, 0.5, axis=axis),
        x,
        grad,
    )


def test_gumbel_softmax_vjp_rejects_a_non_finite_upstream_gradient():
    # The class's rsample_vjp raised; the functional form let inf through as NaN.
    x = np.array([0.3, 0.7])
    for bad in (np.inf, np.nan):
        grad = np.array([1.0, bad])
        check_raises(
            ValueError,
            rf"^grad must be finite, got {num(bad)} at index \(1,\)$",
            lambda grad=grad: relaxcat.gumbel_softmax_vjp(x, grad, 1.0),
            x,
            grad,
        )


# A fresh-user review: with the categories on another axis than the last, the
# functional forms named entries by their index after moving that axis to the
# end ((1, 3, 2) for the caller's (1, 2, 3)) and said "over the last axis".
@pytest.mark.parametrize("axis", [1, -2, 0])
def test_functional_forms_name_entries_in_the_callers_layout(axis):
    shape = (3, 4, 5)
    ax = axis % 3
    soft = relaxcat.gumbel_softmax(np.zeros(shape), 0.5, axis=axis, rng=1)
    ones = np.ones(shape)
    where = (1, 2, 3)
    batch = tuple(i for d, i in enumerate(where) if d != ax)
    bad = soft.copy()
    bad[where] = -0.01
    check_raises(
        ValueError,
        r"^sample_soft must be non-negative and finite \(a point on the simplex\), "
        r"got -0\.01 at index \(1, 2, 3\)$",
        lambda: relaxcat.gumbel_softmax_vjp(bad, ones, 0.5, axis=axis),
        bad,
    )
    off = soft.copy()
    off[where] += 0.01
    check_raises(
        ValueError,
        rf"^sample_soft must sum to 1 over axis {ax} within 1e-06, got sum "
        rf"1\.01\d* at batch index \({batch[0]}, {batch[1]}\)$",
        lambda: relaxcat.gumbel_softmax_vjp(off, ones, 0.5, axis=axis),
        off,
    )
    logits = np.zeros(shape)
    logits[where] = np.nan
    check_raises(
        ValueError,
        r"^logits must be finite or -inf \(a masked category\), got nan at index "
        r"\(1, 2, 3\)$",
        lambda: relaxcat.gumbel_softmax(logits, 0.5, axis=axis, rng=1),
        logits,
    )
    dead = np.zeros(shape)
    dead[tuple(slice(None) if d == ax else i for d, i in enumerate(where))] = -np.inf
    check_raises(
        ValueError,
        r"^logits must leave at least one category possible in every row, got a "
        rf"row of all -inf at batch index \({batch[0]}, {batch[1]}\)$",
        lambda: relaxcat.gumbel_softmax(dead, 0.5, axis=axis, rng=1),
        dead,
    )


# The module's own outputs are refused when misaligned, as the package's out=
# is: the kernels store whole elements (a second look at a review's finding).
def test_the_module_refuses_a_misaligned_output():
    from relaxcat import _core

    x = np.eye(3)[[0, 1, 2, 0]]
    out = np.ndarray((4, 3), np.float64, buffer=bytearray(97), offset=1)
    with pytest.raises(ValueError, match=r"out is not aligned to its item size"):
        _core.one_hot(x, out, 1)


# gumbel_softmax with a category axis not last had described the moved logits:
# "got shape (4, 0)" for logits (0, 4) at axis 0, "the batch shape (5,) of
# logits" for logits (4, 5) at axis 0 with T (4,) (a fresh-user review).
@pytest.mark.parametrize("axis", [0, -1])
def test_gumbel_softmax_names_shapes_as_given(axis):
    empty = np.zeros((0, 4)) if axis == 0 else np.zeros((4, 0))
    check_raises(
        ValueError,
        rf"^logits must have at least one category along axis {axis % 2}, got "
        rf"shape {re.escape(str(empty.shape))}$",
        lambda: relaxcat.gumbel_softmax(empty, 0.5, axis=axis, rng=1),
        empty,
    )
    logits = np.zeros((4, 5))
    t = np.ones(4 if axis == 0 else 5)
    rows = (5,) if axis == 0 else (4,)
    check_raises(
        ValueError,
        rf"^temperature of shape {re.escape(str(t.shape))} does not broadcast with "
        rf"the logits' shape without the category axis {axis % 2}, "
        rf"{re.escape(str(rows))}$",
        lambda: relaxcat.gumbel_softmax(logits, t, axis=axis, rng=1),
        logits,
        t,
    )


# A fifth fresh-user review: logits (4, 4) at axis 0 with T (4, 1) were read per
# row of the moved logits (column b got T[b]) where NumPy broadcasting, and
# torch's gumbel_softmax, stretch T along the category axis. A temperature with
# every axis of the logits is now read only with length 1 at the category axis
# (keepdims); any other length there is refused, with the shapes that give one
# temperature per row. (A second look: the first fix refused only the shapes
# both readings fit, and suggested shapes that were then refused.)
@pytest.mark.parametrize(
    "shape,t_shape,axis",
    [
        ((4, 4), (4, 1), 0),
        ((4, 5), (5, 1), 0),
        ((2, 3, 4), (2, 3, 1), 0),
        ((2, 3, 3), (2, 3, 1), 1),
        ((3, 4), (3, 4), 1),
        ((4,), (4,), 0),
    ],
)
def test_gumbel_softmax_reads_a_full_rank_temperature_only_as_keepdims(
    shape, t_shape, axis
):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal(shape)
    t = rng.uniform(0.5, 2.0, t_shape)
    keep = shape[:axis] + (1,) + shape[axis + 1 :]
    rows = shape[:axis] + shape[axis + 1 :]
    message = (
        rf"^temperature of shape {re.escape(str(t_shape))} has every axis of "
        rf"{{what}} {re.escape(str(shape))}, so it needs length 1 at the category "
        rf"axis {axis} \(keepdims\), got {t_shape[axis]}: a temperature cannot vary "
        rf"by category; for one per row give shape {re.escape(str(keep))} or "
        rf"{re.escape(str(rows))}$"
    )
    check_raises(
        ValueError,
        message.format(what="logits"),
        lambda: relaxcat.gumbel_softmax(logits, t, axis=axis, rng=1),
        logits,
        t,
    )
    x = relaxcat.gumbel_softmax(logits, 0.7, axis=axis, rng=1)
    check_raises(
        ValueError,
        message.format(what="sample_soft"),
        lambda: relaxcat.gumbel_softmax_vjp(x, np.ones_like(x), t, axis=axis),
        x,
        t,
    )
    # Both shapes offered are read per row, as the class reads the rows'
    # temperatures for the logits moved to the last axis.
    per_row = rng.uniform(0.5, 2.0, rows)
    want = R(per_row, logits=np.moveaxis(logits, axis, -1)).rsample(rng=1)
    for given in (per_row.reshape(keep), per_row):
        got = relaxcat.gumbel_softmax(logits, given, axis=axis, rng=1)
        np.testing.assert_array_equal(got, np.moveaxis(want, -1, axis))


def test_gumbel_softmax_checks_a_temperatures_shape_before_its_values():
    # The second look: the forward call named the shape and the VJP the value.
    t = np.array([[1.0], [0.0], [3.0], [4.0]])
    x = relaxcat.gumbel_softmax(np.zeros((4, 4)), 1.0, axis=0, rng=1)
    for call in (
        lambda: relaxcat.gumbel_softmax(np.zeros((4, 4)), t, axis=0, rng=1),
        lambda: relaxcat.gumbel_softmax_vjp(x, np.ones_like(x), t, axis=0),
    ):
        with pytest.raises(ValueError, match=r"^temperature of shape \(4, 1\) has"):
            call()


# Third fresh-user review of this session: dtypes and values as given.
@pytest.mark.parametrize("given", [">f4", ">f2", "<f4"])
def test_non_native_float32_stays_float32(given):
    logits = np.array([1.0, 2.0], dtype=given)
    d = R(1.0, logits=logits)
    assert d.dtype == np.float32
    np.testing.assert_array_equal(
        d.logits, R(1.0, logits=logits.astype(np.float32)).logits
    )


def test_values_lost_in_conversion_are_reported_as_given():
    big = np.longdouble("1e400")
    d32 = R(np.float32(1.0), logits=np.zeros(2, np.float32))
    cases = [
        ("logits", lambda a: R(1.0, logits=a), np.array([big, 0]), r"1e\+400"),
        ("probs", lambda a: R(1.0, probs=a), np.array([big, 0]), r"1e\+400"),
        ("value", lambda a: d32.log_prob(a), np.array([1e300, 0.5]), r"1e\+300"),
        (
            "grad",
            lambda a: d32.rsample_vjp(np.full(2, 0.5, np.float32), a),
            np.array([1e300, 0.0]),
            r"1e\+300",
        ),
    ]
    for name, fn, arr, shown in cases:
        dtype = "float64" if arr.dtype == np.longdouble else "float32"
        check_raises(
            ValueError,
            rf"^{name} must lie within the range of {dtype}, got {shown}, which "
            r"becomes inf at index \(0,\)$",
            lambda fn=fn, arr=arr: fn(arr),
            arr,
        )
    check_raises(
        ValueError,
        r"temperature must be positive and finite in float64 \(the distribution's "
        r"dtype\), got 1e\+400, which becomes inf$",
        lambda: R(big, logits=np.zeros(2)),
    )


def test_a_log_space_value_below_float32_is_the_log_of_zero():
    # -1e300 is -inf in float32: a value with a zero, as given; not an error.
    d = E(np.float32(1.0), logits=np.zeros(3, np.float32))
    lp = d.log_prob(np.array([np.log(0.5), np.log(0.5), -1e300]))
    assert lp == -np.inf


@pytest.mark.parametrize("validate", [True, False])
def test_a_log_space_value_above_float32_is_reported_as_given(validate):
    # Regression (a fresh-user review): log-space values skipped the range check
    # altogether, so 1e39 became inf and was reported as "got inf" with
    # validation on, and gave -inf silently with it off. Only the way down to
    # -inf (the log of 0) is the value's meaning.
    d = E(np.float32(0.5), logits=np.zeros(3, np.float32), validate_args=validate)
    value = np.array([1e39, 0.0, 0.0])
    check_raises(
        ValueError,
        r"^value must lie within the range of float32, got 1e\+39, which becomes "
        r"inf at index \(0,\)$",
        lambda: d.log_prob(value),
        value,
    )


def test_python_ints_beyond_int64_are_explained():
    # A fresh-user review: NumPy holds [0, 10**20] as an object array, and
    # "must be a real number ... got dtype object" did not say why. Object
    # arrays stay refused (their entries could be anything); the message says
    # what NumPy did.
    logits = [0, 10**20]
    check_raises(
        TypeError,
        r"^logits must be a real number or an array of real numbers, got dtype "
        r"object \(NumPy keeps Python ints beyond int64 and uint64, such as "
        r"100000000000000000000, as objects: pass them as floats\)$",
        lambda: R(1.0, logits=logits),
    )
    # Past 4300 digits Python refuses str() of an int (a second review: the
    # hint raised that ValueError); such ints are described by their size.
    check_raises(
        TypeError,
        r"got dtype object \(NumPy keeps Python ints beyond int64 and uint64, such "
        r"as an int of 5000 or more digits, as objects: that one is beyond float64 "
        r"too\)$",
        lambda: R(1.0, logits=[10**5000, 0]),
    )
    np.testing.assert_array_equal(
        R(1.0, logits=[0.0, 1e20]).logits, R(1.0, logits=np.array([0, 1e20])).logits
    )
    for bad in (np.array([1, 2], dtype=object), [0, None]):
        with pytest.raises(TypeError, match=r"got dtype object$"):
            R(1.0, logits=bad)


def test_a_bool_or_integer_temperature_is_shown_as_given():
    # A fifth fresh-user review: a temperature of False said "got 0.0".
    for t, shown in [
        (False, "False"),
        (np.array([True, False]), r"False at index \(1,\)"),
        (0, "0"),
        (np.array([[2], [-3]], np.int8), r"-3 at index \(1, 0\)"),
    ]:
        check_raises(
            ValueError,
            rf"^temperature must be positive and finite, got {shown}$",
            lambda t=t: R(t, logits=np.zeros(3)),
        )


def test_one_object_that_is_not_a_number_is_named_by_its_type():
    # A fifth fresh-user review: a generator passed as logits said "got dtype
    # object"; an object NumPy holds whole is named by its type.
    from decimal import Decimal

    for given, shown in [((i for i in range(3)), "generator"), (Decimal(1), "Decimal")]:
        check_raises(
            TypeError,
            rf"^logits must be a real number or an array of real numbers, got {shown}$",
            lambda given=given: R(1.0, logits=given),
        )
        check_raises(
            TypeError,
            rf"^temperature must be a real number or an array of real numbers, got "
            rf"{shown}$",
            lambda given=given: R(given, logits=[0.0, 1.0]),
        )
    # A 0-d object array is named by its dtype, as before (the second look:
    # the first version of this said "got ndarray").
    check_raises(
        TypeError,
        r"^logits must be a real number or an array of real numbers, got dtype "
        r"object$",
        lambda: R(1.0, logits=np.array(Decimal(1), dtype=object)),
    )


def test_none_is_named_as_none():
    # A fresh-user review: temperature=None said "got dtype object".
    d = R(1.0, logits=[0.0, 1.0])
    for name, call in [
        ("temperature", lambda: R(None, logits=[0.0, 1.0])),
        ("value", lambda: d.log_prob(None)),
        ("grad", lambda: d.rsample_vjp([0.5, 0.5], None)),
        ("grad", lambda: d.log_prob_vjp([0.5, 0.5], None)),
    ]:
        check_raises(
            TypeError,
            rf"^{name} must be a real number or an array of real numbers, got None$",
            call,
        )


def test_messages_show_values_in_their_own_dtype_and_count_rows():
    probs = np.array([np.float32(-1e-30), 1.0], np.float32)
    check_raises(
        ValueError,
        r"probs must be non-negative and finite, got -1e-30 at index \(0,\)$",
        lambda: R(1.0, probs=probs),
        probs,
    )
    zeros = np.zeros((3, 2))
    check_raises(
        ValueError,
        r"got sum 0\.0 at batch index \(0,\) \(3 rows in all\)$",
        lambda: R(1.0, probs=zeros),
        zeros,
    )


def test_a_positive_prob_lost_in_conversion_is_reported():
    # Second review: a long double prob of 1e-400 became 0, a masked category.
    probs = np.array([np.longdouble("1e-400"), 1.0])
    check_raises(
        ValueError,
        r"^probs must lie within the range of float64, got 1e-400, which becomes "
        r"0\.0 at index \(0,\)$",
        lambda: R(1.0, probs=probs),
        probs,
    )


def test_out_in_the_wrong_byte_order_says_so():
    out = np.empty(2, ">f8")
    check_raises(
        TypeError,
        r"^out must have dtype float64 in native byte order, got >f8$",
        lambda: R(1.0, logits=np.zeros(2)).rsample(rng=1, out=out),
    )


def test_a_per_row_temperature_that_does_not_fit_says_it_was_read_per_row():
    # (2, 1) broadcasts with (3,) under NumPy's rule, but a temperature with the
    # logits' number of axes and a last axis of 1 is read per row (T[..., None]);
    # the message had not said so (a fresh-user review).
    with pytest.raises(
        ValueError,
        match=r"temperature of shape \(2, 1\) \(read per row, as T\[\.\.\., None\]: "
        r"it has the logits' number of axes and a last axis of 1, so its rows are "
        r"\(2,\)\) does not broadcast with the batch shape \(3,\) of logits",
    ):
        relaxcat.RelaxedOneHotCategorical(np.ones((2, 1)), logits=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"temperature of shape \(2,\) does not"):
        relaxcat.RelaxedOneHotCategorical(np.ones(2), logits=np.zeros((3, 4)))


@pytest.mark.parametrize("hard", ["no", 1, None, np.array([True])])
def test_hard_must_be_a_bool(hard):
    # Any truthy object had meant True ("no" gave a HardSample).
    d = relaxcat.RelaxedOneHotCategorical(0.5, logits=np.zeros(3))
    with pytest.raises(TypeError, match=r"hard must be True or False, got "):
        d.rsample(rng=0, hard=hard)
    with pytest.raises(TypeError, match=r"hard must be True or False, got "):
        relaxcat.gumbel_softmax(np.zeros(3), 0.5, hard=hard, rng=0)
    assert d.rsample(rng=0, hard=np.bool_(True)).hard.sum() == 1.0


def test_masked_arrays_are_refused_rather_than_their_masks_ignored():
    # A masked category of a MaskedArray had taken 0.9992 of the weight: the
    # mask was dropped silently (a fresh-user review).
    masked = np.ma.masked_array([0.0, 5.0, 1.0], mask=[0, 1, 0])
    with pytest.raises(TypeError, match=r"logits must not be a numpy.ma.MaskedArray"):
        relaxcat.RelaxedOneHotCategorical(0.5, logits=masked)
    d = relaxcat.RelaxedOneHotCategorical(0.5, logits=np.zeros(3))
    x = d.rsample(rng=0)
    with pytest.raises(TypeError, match=r"value must not be a numpy.ma.MaskedArray"):
        d.log_prob(np.ma.masked_array(x))
    with pytest.raises(TypeError, match=r"out must not be a numpy.ma.MaskedArray: "):
        d.rsample(rng=0, out=np.ma.masked_array(np.empty(3)))
    # The hint fits the argument: only logits and probs mark categories.
    with pytest.raises(TypeError, match=r"\(mark impossible categories with -inf"):
        relaxcat.RelaxedOneHotCategorical(0.5, probs=np.ma.masked_array([1.0, 2.0]))
    with pytest.raises(
        TypeError,
        match=r"temperature must not be a numpy.ma.MaskedArray: its mask would be "
        r"ignored \(pass np.ma.filled\(...\) to fill the masked entries, or "
        r"np.ma.getdata\(...\) to use the data as it is\)",
    ):
        relaxcat.RelaxedOneHotCategorical(np.ma.masked_array([0.5]), logits=np.zeros(3))
    assert np.array_equal(masked.mask, [False, True, False])  # left as it was
