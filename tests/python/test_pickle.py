"""Pickling and copying: both classes survive pickle (every protocol),
copy.copy and copy.deepcopy exactly: the same parameters bit for bit, the same
samples and densities for the same seed, the same validate_args and repr."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import relaxcat

Relaxed = relaxcat.RelaxedOneHotCategorical
ExpRelaxed = relaxcat.ExpRelaxedOneHotCategorical
CLASSES = [Relaxed, ExpRelaxed]
CLASS_IDS = ["simplex", "log"]


def _make(cls, dtype, param, validate):
    """A distribution with a per-row temperature, a masked category and a batch."""
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 5)).astype(dtype)
    logits[1, 2] = -np.inf
    t = np.array([[0.3], [1.0], [2.5]], dtype=dtype)
    if param == "logits":
        return cls(t, logits=logits, validate_args=validate)
    with np.errstate(under="ignore"):
        probs = np.exp(logits.astype(np.float64)).astype(dtype)
    return cls(t, probs=probs, validate_args=validate)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _assert_same_distribution(d, e):
    """Everything observable agrees, bit for bit."""
    assert type(e) is type(d)
    assert e.batch_shape == d.batch_shape and e.event_shape == d.event_shape
    assert e.dtype == d.dtype and e.validate_args is d.validate_args
    assert repr(e) == repr(d)
    for name in ("temperature", "logits", "probs"):
        assert _same_bits(getattr(e, name), getattr(d, name)), name
    x = d.rsample((4,), rng=2024)
    assert _same_bits(e.rsample((4,), rng=2024), x)
    assert _same_bits(
        e.sample((4,), rng=np.random.default_rng(8)),
        d.sample((4,), rng=np.random.default_rng(8)),
    )
    assert _same_bits(e.log_prob(x), d.log_prob(x))
    w = np.random.default_rng(1).normal(size=x.shape).astype(d.dtype)
    for got, want in zip(e.rsample_vjp(x, w), d.rsample_vjp(x, w)):
        assert _same_bits(got, want)
    for got, want in zip(e.log_prob_vjp(x, 1.0), d.log_prob_vjp(x, 1.0)):
        assert _same_bits(got, want)


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("param", ["logits", "probs"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_pickle_round_trips_exactly_at_every_protocol(cls, dtype, param, validate):
    d = _make(cls, dtype, param, validate)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        e = pickle.loads(pickle.dumps(d, protocol=protocol))
        _assert_same_distribution(d, e)


@pytest.mark.parametrize("param", ["logits", "probs"])
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_copy_and_deepcopy_round_trip_exactly(cls, param):
    d = _make(cls, np.float32, param, False)
    _assert_same_distribution(d, copy.copy(d))
    _assert_same_distribution(d, copy.deepcopy(d))


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_deepcopy_owns_its_parameters(cls):
    # A deep copy shares no memory with the original, nor with the arrays the
    # original was built from: changing those leaves the copy's samples alone.
    logits = np.array([[0.5, -1.0, 2.0]])
    t = np.array([0.7])
    d = cls(t, logits=logits)
    e = copy.deepcopy(d)
    for name in ("temperature", "logits", "probs"):
        assert not np.may_share_memory(getattr(e, name), getattr(d, name))
    assert not np.may_share_memory(e._param(), d._param())
    assert not np.may_share_memory(e._param(), logits)
    before = e.rsample(rng=3)
    logits[...] = 0.0
    t[...] = 5.0
    assert _same_bits(e.rsample(rng=3), before)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_expanded_views_and_odd_layouts_pickle_to_the_same_distribution(cls):
    # expand() holds stride-0 views, and a parameter may be read-only, reversed or
    # Fortran-ordered; pickling keeps what they read and changes nothing
    # observable.
    base = np.random.default_rng(6).normal(size=(2, 4))
    rev = np.flip(np.flip(base, 1).copy(), 1)
    ro = np.asfortranarray(base)
    ro.flags.writeable = False
    for logits in (rev, ro):
        d = cls(0.5, logits=logits).expand((3, 2))
        _assert_same_distribution(d, pickle.loads(pickle.dumps(d)))


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("param", ["logits", "probs"])
def test_expanded_distributions_pickle_and_copy_what_they_read_not_their_views(
    cls, param
):
    # A broadcast view written out in full had made pickle.dumps of an expand to
    # a million rows 32 MB, and of one to 2^40 rows a MemoryError.
    d = cls(np.array([0.5, 2.0]), **{param: np.array([1.0, 2.0, 3.0])})
    small = len(pickle.dumps(d))
    big = d.expand((10**6, 2))
    assert len(pickle.dumps(big)) < small + 1000
    for copied in (pickle.loads(pickle.dumps(big)), copy.deepcopy(big)):
        assert copied.batch_shape == (10**6, 2)
        x = big.rsample(rng=4)
        assert _same_bits(copied.rsample(rng=4), x)
        assert _same_bits(copied.log_prob(x), big.log_prob(x))
    huge = pickle.loads(pickle.dumps(d.expand((2**40, 2))))
    assert huge.batch_shape == (2**40, 2)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_copies_hold_their_arrays_read_only_as_the_original_does(protocol):
    # Protocols 0 to 4 and deepcopy had handed back writable arrays.
    d = Relaxed(np.array([0.5, 2.0]), probs=np.array([[1.0, 2.0], [3.0, 4.0]]))
    for copied in (pickle.loads(pickle.dumps(d, protocol)), copy.deepcopy(d)):
        arrays = [a for a in vars(copied).values() if isinstance(a, np.ndarray)]
        assert len(arrays) >= 4
        assert not any(a.flags.writeable for a in arrays)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "call", ["logits", "log_prob", "rsample_out", "rsample_vjp", "log_prob_vjp"]
)
def test_arrays_that_went_through_pickle_are_accepted_everywhere(call, dtype):
    # Arrays sent through multiprocessing, joblib or a pickle file carry an equal
    # but distinct dtype object (the module compares dtypes by type number).
    def unpickled(a):
        return pickle.loads(pickle.dumps(np.asarray(a, dtype=dtype)))

    d = Relaxed(dtype(0.5), logits=np.array([0.0, 1.0], dtype=dtype))
    x = np.array([0.25, 0.75], dtype=dtype)
    if call == "logits":
        result = Relaxed(dtype(0.5), logits=unpickled([0.0, 1.0])).logits
    elif call == "log_prob":
        result = d.log_prob(unpickled(x))
    elif call == "rsample_out":
        result = d.rsample(rng=1, out=unpickled(np.zeros(2)))
    elif call == "rsample_vjp":
        result = d.rsample_vjp(unpickled(x), unpickled([1.0, 0.0])).logits
    else:
        result = d.log_prob_vjp(unpickled(x), unpickled(1.0)).value
    assert np.all(np.isfinite(result))


@pytest.mark.parametrize("param", ["logits", "probs"])
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_repr_names_the_parameter_its_shapes_and_dtype_and_survives_pickling(
    cls, param
):
    d = _make(cls, np.float32, param, True)
    want = (
        f"{cls.__name__}(temperature: shape (3, 1), {param}: shape (3, 5), "
        "dtype float32)"
    )
    assert repr(d) == want
    assert repr(pickle.loads(pickle.dumps(d))) == want
    assert repr(copy.deepcopy(d)) == want


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_a_scalar_temperature_pickles_as_one_number_not_one_per_row(cls):
    # The distribution keeps the temperature broadcast to its batch as a view;
    # pickle would write such a view out in full (8 bytes a row here).
    logits = np.zeros((100_000, 2), dtype=np.float32)
    d = cls(0.5, logits=logits)
    data = pickle.dumps(d)
    assert len(data) < logits.nbytes + 4096
    e = pickle.loads(data)
    _assert_same_distribution(d, e)
    assert e._t_batch.shape == d.batch_shape and e._t_batch.strides == (0,)
