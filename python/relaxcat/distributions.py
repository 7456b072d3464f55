"""RelaxedOneHotCategorical and ExpRelaxedOneHotCategorical over NumPy arrays.

The classes validate and broadcast their inputs, then hand strided views to the
C++ core (``relaxcat._core``), which does all the arithmetic. They keep no hidden
state: a sample is a pure function of (rng, shapes, parameters).
"""

from __future__ import annotations

import math
import numbers
from collections import namedtuple

import numpy as np

from . import _core, _extras, _threads, constraints
from . import _validation as v

__all__ = [
    "RelaxedOneHotCategorical",
    "ExpRelaxedOneHotCategorical",
    "RsampleGrad",
    "RsampleGradProbs",
    "LogProbGrad",
    "LogProbGradProbs",
]

RsampleGrad = namedtuple("RsampleGrad", ["logits", "temperature"])
RsampleGradProbs = namedtuple("RsampleGradProbs", ["probs", "temperature"])
LogProbGrad = namedtuple("LogProbGrad", ["value", "logits", "temperature"])
LogProbGradProbs = namedtuple("LogProbGradProbs", ["value", "probs", "temperature"])

_SIMPLEX, _LOG = 0, 1
_LOG_PROBS, _NORMALIZE_LOGITS, _PROBS_FROM_LOGITS, _NORMALIZE_PROBS = 0, 1, 2, 3
_CHECK_LOGITS, _CHECK_PROBS = 4, 5


def _checked_copy(param: np.ndarray, is_probs: bool) -> np.ndarray:
    """A read-only copy of logits or probs, checked in the same C++ pass; only a
    failing array is examined again in NumPy, to name its first bad entry."""
    out = np.empty(param.shape, dtype=param.dtype)
    status = np.empty(param.shape[:-1], dtype=np.uint8)
    op = _CHECK_PROBS if is_probs else _CHECK_LOGITS
    _core.param(op, param, out, _threads.get_num_threads(), status)
    if status.any():
        (v.check_probs if is_probs else v.check_logits)(param)
        name = "probs" if is_probs else "logits"
        where = tuple(int(i) for i in np.argwhere(status)[0])
        raise ValueError(f"{name} are invalid at batch index {where}")
    out.flags.writeable = False
    return out


def _private_copy(arr: np.ndarray, given) -> np.ndarray:
    """``arr`` as an array no caller can change: copied if it may share memory with
    what the caller passed, then made read-only."""
    if given is not None and np.may_share_memory(arr, np.asarray(given)):
        arr = arr.copy()
    arr.flags.writeable = False
    return arr


def _is_int(n) -> bool:
    return isinstance(n, numbers.Integral) and not isinstance(n, (bool, np.bool_))


def _int_shape(shape, name: str) -> tuple:
    """``shape`` as a tuple of non-negative ints (an int means (int,)); errors
    name the argument as ``name``."""
    if isinstance(shape, np.ndarray) and shape.ndim == 0:
        shape = shape[()]  # a 0-d array is its scalar (not iterable)
    if _is_int(shape):
        shape = (shape,)
    if isinstance(shape, (str, bytes, set, frozenset, dict)) or not hasattr(
        shape, "__iter__"
    ):
        # A set or dict has no order to read a shape in (a second look at a
        # fifth fresh-user review: rsample({3, 2}) gave shape (2, 3, 3)).
        raise TypeError(f"{name} must be a tuple of ints, got {type(shape).__name__}")
    lead = tuple(shape)
    for n in lead:
        if not _is_int(n):
            raise TypeError(
                f"{name} must be a tuple of ints, got an entry {n!r} of type "
                f"{type(n).__name__}"
            )
    lead = tuple(int(n) for n in lead)
    if any(n < 0 for n in lead):
        raise ValueError(f"{name} must not have negative sizes, got {lead}")
    return lead


_INDEX_LIMIT = int(np.iinfo(np.intp).max)


def _check_indexable(shape: tuple, what, itemsize: int = 1) -> None:
    """Raise unless an array of ``shape`` (and of ``itemsize`` bytes per element,
    for one that will be allocated) can be indexed; ``what`` names the
    arguments that made the shape, as a string or as a function that returns
    one (called only to raise: formatting the shapes of every call into a
    message cost about a microsecond a call)."""
    elements = math.prod(shape)
    limit = _INDEX_LIMIT
    if 0 < elements and elements * itemsize <= limit:
        return
    if callable(what):
        what = what()
    if elements == 0:
        # NumPy refuses even an empty shape whose nonzero sizes multiply past
        # what an array can index.
        span = math.prod(n for n in shape if n != 0)
        if span * itemsize > limit:
            raise ValueError(
                f"{what} has no elements, but its nonzero sizes multiply to {span} "
                f"elements of {itemsize} bytes, more bytes than an array's shape may "
                f"span ({limit})"
            )
        return
    if elements > limit:
        raise ValueError(
            f"{what} gives {elements} elements, more than an array can index ({limit})"
        )
    if elements * itemsize > limit:
        raise ValueError(
            f"{what} gives {elements} elements of {itemsize} bytes, more bytes "
            f"than an array can index ({limit})"
        )


def _elements_read(arr: np.ndarray) -> np.ndarray:
    """The elements a view reads, each once: length 1 on its axes of stride 0."""
    return arr[tuple(slice(0, 1) if st == 0 else slice(None) for st in arr.strides)]


def _fresh(a: np.ndarray) -> np.ndarray:
    """An array equal to ``a`` that shares no memory with it, costing no more
    than ``a``'s own data: along axes that ``a`` broadcasts (stride 0) one slice
    is copied and broadcast again, read-only."""
    if a.size <= 1 or 0 not in a.strides:
        return a.copy()
    return np.broadcast_to(_elements_read(a).copy(), a.shape)


def _sample_shape(sample_shape) -> tuple:
    return _int_shape(sample_shape, "sample_shape")


# The kernels take at most this many batch dimensions (kMaxBatchDims in
# cpp/include/relaxcat/detail/args.hpp); NumPy's broadcasting helpers stop at 32
# with a RuntimeError, so the limit is checked before them.
_MAX_BATCH_DIMS = 31


def _check_batch_rank(ndim: int, name: str) -> None:
    if ndim > _MAX_BATCH_DIMS:
        raise ValueError(
            f"{name} may have at most {_MAX_BATCH_DIMS} batch dimensions, got {ndim}"
        )


class _Broadcast:
    """A broadcast view in a pickled state: the elements it reads (length 1 on
    its axes of stride 0) and its shape."""

    def __init__(self, base: np.ndarray, shape: tuple):
        self.base = base
        self.shape = shape

    @classmethod
    def of(cls, arr: np.ndarray) -> _Broadcast:
        return cls(np.ascontiguousarray(_elements_read(arr)), arr.shape)

    def remake(self) -> np.ndarray:
        return np.broadcast_to(self.base, self.shape)  # read-only


def _broadcast(arr: np.ndarray, shape: tuple) -> np.ndarray:
    """``arr`` broadcast to ``shape``: ``arr`` itself when it has that shape.

    np.broadcast_to costs a few microseconds a call, and a call on small arrays
    (a batch of 64 rows of 10) made nine of them; the kernels read the array the
    same way either way, so the bits are the same.
    """
    return arr if arr.shape == shape else np.broadcast_to(arr, shape)


def _reduce_to(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``grad`` over the axes that broadcasting added to ``shape``, as autograd
    does, so the gradient has the shape of the parameter it belongs to."""
    if grad.shape == shape and grad.flags.c_contiguous:
        return grad  # nothing to sum
    lead = grad.ndim - len(shape)
    # Rows at exact zeros have infinite limits; +inf and -inf summed is NaN (the
    # sum has no limit), and a sum past the float range is inf: answers, not
    # warnings. Gradients that are summed arrive per row in float64 (Note
    # [summed gradients], args.hpp) and are rounded once, after the sum.
    # np.add.reduce is what ndarray.sum calls, without its Python layer.
    if lead:
        grad = _sum_in_range(grad, tuple(range(lead)), False)
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = _sum_in_range(grad, axes, True)
    return np.ascontiguousarray(grad).reshape(shape)


# Note [sums past the range]: finite per-row gradients near the largest double
# (log-space values near -1e307 at large temperatures) can have partial sums
# that overflow, to inf or, with both signs, to NaN, where the exact sum is
# finite (a fuzz campaign: rows up to 9e307 summing to -1.7e308). Such a sum is
# taken again with every term scaled by 2^-64: the same additions in the same
# order, each exact in its scaling, so scaled back the sum is what arithmetic
# without an exponent limit would give, rounded to a double (terms below 2^-958
# lose bits in the scaling, far below the rounding of a sum of that size). A
# term that is itself infinite (a row's exact value past the range) is left as
# it is: the README's Limitations say what that costs.
_SUM_SCALE = 2.0**-64
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _sum_in_range(grad: np.ndarray, axes: tuple, keepdims: bool) -> np.ndarray:
    """np.add.reduce over ``axes``, with Note [sums past the range]."""
    with np.errstate(invalid="ignore", over="ignore"):
        total = np.add.reduce(grad, axis=axes, keepdims=keepdims)
        if total.ndim == 0:  # a scalar: math.isfinite costs far less
            if math.isfinite(total):
                return total
        elif np.isfinite(total).all():
            return total
        lost = ~np.isfinite(total)
        if lost.any():
            terms_finite = np.logical_and.reduce(
                np.isfinite(grad), axis=axes, keepdims=keepdims
            )
            redo = lost & terms_finite
            if redo.any():
                scaled = np.add.reduce(grad * _SUM_SCALE, axis=axes, keepdims=keepdims)
                total = np.where(redo, scaled / _SUM_SCALE, total)
    return total


# Note [gradients summed in slices]: a VJP gradient that is summed over rows (a
# logits row, temperature or value that serves several batch rows) is written by
# the kernel per row in float64 (Note [summed gradients], args.hpp) and reduced
# here. Written for all rows at once, that buffer was (rows, K) doubles, twice
# a float32 value whose rows may be no more than the broadcast of one logits
# row: 32 GiB for samples (2^20, 4096) of one float32 logits vector. When a
# K-wide gradient is summed and the call has more than _SLICE_ELEMENTS
# elements, the kernel runs over slices of the rows instead: the batch axes
# after some axis whole, that axis a few indices at a time and the axes before
# it one index at a time, about _SLICE_ELEMENTS elements a slice (a row at least;
# a second review found slices of the first axis alone as large as the whole
# call for sample shapes (1,) and (2,)). Each slice is reduced as it comes: into
# its own part of the result, or added into a float64 total in slice order where
# the slices cross a summed axis. A gradient that is not summed at all (its
# shape differs from the rows' only by axes of length 1) is written where it
# is. The slices depend on the shapes alone, so the bits do not depend on the
# thread count; a total can differ from one sum over all rows in the last place,
# as any other grouping of the same terms would. A total that is not finite
# (infinite limits, or Note [sums past the range], whose rescue needs every
# term) is taken again over all rows at once. The C++ class does the same over
# slices of draws (distribution.hpp).
_SLICE_ELEMENTS = 1 << 20


def _at(arr, index):
    """Rows ``index`` (a tuple of slices of the leading batch axes) of ``arr``;
    all of it for None."""
    return arr if index is None or arr is None else arr[index]


def _slicing(rows: tuple, k: int):
    """(axis, step) of Note [gradients summed in slices]: the batch axes after
    ``axis`` whole and ``step`` indices of it, at most _SLICE_ELEMENTS elements
    (one row at least); None when the whole call is that small."""
    inner = k
    for axis in range(len(rows) - 1, -1, -1):
        if inner * rows[axis] > _SLICE_ELEMENTS:
            return axis, max(1, _SLICE_ELEMENTS // inner)
        inner *= rows[axis]
    return None


class _PerRowGrad:
    """A gradient that a VJP kernel writes per row over the row shape ``full``
    (with K where it has it), reduced to the shape ``target``.

    When that sums nothing (the shapes differ only by axes of length 1) the
    kernel writes the result itself, in ``dtype``. Otherwise each slice is
    written in float64 to a buffer of its own size and reduced (Note [gradients
    summed in slices]). ``result()`` is the gradient in ``target``'s shape."""

    def __init__(self, full: tuple, target: tuple, dtype):
        self.full, self.target = tuple(full), tuple(target)
        self.lead = len(self.full) - len(self.target)
        self.summed = [
            i < self.lead or (self.target[i - self.lead] == 1 and n != 1)
            for i, n in enumerate(self.full)
        ]
        self.whole = math.prod(self.full) == math.prod(self.target)
        if self.whole:
            self.total = np.empty(self.full, dtype)
        else:
            self.total = np.empty(self.target, np.float64)
        self.added = False  # whether some slices were added into the total
        self._buffer = None

    def rows(self, index) -> np.ndarray:
        """Where the kernel writes the rows of slice ``index`` (None: all)."""
        if self.whole:
            return _at(self.total, index)
        if index is None:
            return np.empty(self.full, np.float64)
        shape = tuple(i.stop - i.start for i in index) + self.full[len(index) :]
        n = math.prod(shape)
        if self._buffer is None or self._buffer.size < n:
            self._buffer = np.empty(n, np.float64)
        return self._buffer[:n].reshape(shape)

    def take(self, per_row: np.ndarray, index) -> None:
        """Reduce the rows the kernel wrote for slice ``index`` into the total."""
        if self.whole:
            return
        if index is None:
            self.total = _reduce_to(per_row, self.target)
            return
        # The slice's sum over the summed axes lands in `where` of the total,
        # which it is the first to reach unless it is past the start of a
        # summed axis that the slices cut.
        reduced, where, first = [], [], True
        for i, n in enumerate(per_row.shape):
            cut = i < len(index)
            if not self.summed[i]:
                reduced.append(n)
                where.append(index[i] if cut else slice(None))
                continue
            first &= not cut or index[i].start == 0
            if i >= self.lead:
                reduced.append(1)
                where.append(slice(None))
        part = _reduce_to(per_row, tuple(reduced))
        where = tuple(where)
        if first:
            self.total[where] = part
        else:
            self.added = True
            with np.errstate(over="ignore", invalid="ignore"):
                self.total[where] += part

    def lost(self) -> bool:
        """Whether a total that slices were added into is not finite."""
        return self.added and not np.isfinite(self.total).all()

    def result(self) -> np.ndarray:
        return self.total.reshape(self.target)


def _over_slices(rows: tuple, k: int, make, call, sliced: bool = True) -> list:
    """Runs a VJP kernel over slices of the rows (Note [gradients summed in
    slices]). ``make()`` gives the call's gradients (_PerRowGrad or None each)
    and ``call(index, buffers)`` runs the kernel on rows ``index`` (None: all)
    with their buffers for it. Returns the gradients, totals set."""
    grads = make()
    wide = any(g is not None and not g.whole and len(g.full) > len(rows) for g in grads)
    plan = _slicing(rows, k) if sliced and wide else None
    if plan is None:
        indices = [None]
    else:
        axis, step = plan
        indices = [
            tuple(slice(o, o + 1) for o in outer)
            + (slice(i0, min(i0 + step, rows[axis])),)
            for outer in np.ndindex(*rows[:axis])
            for i0 in range(0, rows[axis], step)
        ]
    for index in indices:
        buffers = [None if g is None else g.rows(index) for g in grads]
        call(index, buffers)
        for g, b in zip(grads, buffers):
            if g is not None:
                g.take(b, index)
    if plan is not None and any(g is not None and g.lost() for g in grads):
        return _over_slices(rows, k, make, call, sliced=False)
    return grads


def _round_to(x: np.ndarray, dtype) -> np.ndarray:
    """A float64 result in the distribution's dtype; past its range it is the
    infinity of its sign, an answer, not a warning."""
    if x.dtype == dtype:
        return x
    if x.ndim == 0 and dtype == np.float32 and abs(float(x)) <= _FLOAT32_MAX:
        return x.astype(dtype)  # in float32's range: nothing overflows
    with np.errstate(over="ignore"):
        return x.astype(dtype, copy=False)


class RelaxedOneHotCategorical:
    r"""The Concrete (Gumbel-Softmax) distribution on the probability simplex.

    A sample is ``x = softmax((logits + G) / T)`` with ``G`` i.i.d. standard Gumbel
    noise and temperature ``T`` (Maddison, Mnih and Teh, 2017; Jang, Gu and Poole,
    2017). The interface follows ``torch.distributions.RelaxedOneHotCategorical``
    on NumPy arrays.

    Parameters
    ----------
    temperature : float or array_like
        Positive and finite. Its shape broadcasts with ``logits.shape[:-1]`` to
        give ``batch_shape``: one logits vector with four temperatures is a batch
        of four. A temperature with as many dimensions as the logits and a last
        axis of length 1 (``T[..., None]``, the torch idiom) is read per row.
    probs : array_like, optional
        ``(..., K)``, finite, non-negative, a positive entry per row; normalised
        over the last axis. A zero marks an impossible category.
    logits : array_like, optional
        ``(..., K)``, finite or ``-inf`` (an impossible, "masked", category), at
        least one finite per row. Any shift per row gives the same distribution.
        Exactly one of ``probs`` and ``logits`` is given.
    validate_args : bool, optional
        Default True. Parameters are always checked (it costs one pass over
        them, once); this switch controls the per-call checks that values given
        to ``log_prob`` and the VJPs lie on the support.

    Notes
    -----
    dtypes: the dtype of ``logits`` or ``probs`` decides. float32 in, float32
    out; float64 in, float64 out; float16 is computed and returned as float32;
    integers and bools become float64. Every other array passed (temperature,
    value, grad) is converted to that dtype; gumbels are read in float64.
    Internally every intermediate is float64, so float32 results are within a
    few float32 ulps.

    Accuracy (measured by ``tests/python/test_reference.py`` against 60-digit
    references): log-densities within 1e-12 (float64) and 1e-6 (float32) of
    max(1, |exact|); samples and gradients within 1e-10 and 1e-5.

    Examples
    --------
    >>> import numpy as np, relaxcat
    >>> d = relaxcat.RelaxedOneHotCategorical(0.5, logits=np.array([1.0, 0.0, -1.0]))
    >>> x = d.rsample((4,), rng=0)
    >>> x.shape, d.log_prob(x).shape
    ((4, 3), (4,))
    """

    _space = _SIMPLEX
    support = constraints.simplex
    arg_constraints = {
        "probs": constraints.simplex,
        "logits": constraints.real_vector,
        "temperature": constraints.positive,
    }
    has_rsample = True

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        if (probs is None) == (logits is None):
            given = "both" if probs is not None else "neither"
            raise ValueError(
                f"exactly one of probs or logits must be given, got {given}"
            )
        self._param_name = "probs" if probs is not None else "logits"
        param = v.as_float_array(
            probs if probs is not None else logits,
            self._param_name,
            keep_nonzero=probs is not None,
        )
        if param.ndim == 0 or param.shape[-1] == 0:
            raise ValueError(
                f"{self._param_name} must have a last axis of at least one category, "
                f"got shape {param.shape}"
            )
        _check_batch_rank(param.ndim - 1, self._param_name)
        dtype = param.dtype
        temp = v.as_float_array(temperature, "temperature", dtype, check_range=False)
        v.check_temperature(temp, temperature)
        per_row = temp.ndim == param.ndim and temp.shape[-1] == 1
        rows = temp[..., 0] if per_row else temp
        _check_batch_rank(rows.ndim, "temperature")
        try:
            batch = np.broadcast_shapes(rows.shape, param.shape[:-1])
        except ValueError:
            how = (
                f" (read per row, as T[..., None]: it has the {self._param_name}' "
                f"number of axes and a last axis of 1, so its rows are {rows.shape})"
                if per_row
                else ""
            )
            raise ValueError(
                f"temperature of shape {temp.shape}{how} does not broadcast with "
                f"the batch shape {param.shape[:-1]} of {self._param_name}"
            ) from None

        if validate_args is not None and not isinstance(
            validate_args, (bool, np.bool_)
        ):
            raise TypeError(
                "validate_args must be None, True or False, "
                f"got {type(validate_args).__name__}"
            )

        # The distribution owns read-only copies of its parameters: an array the
        # caller changes afterwards must not change (or invalidate) it.
        param = _checked_copy(param, probs is not None)
        temp = _private_copy(temp, temperature)
        rows = temp[..., 0] if per_row else temp
        if probs is not None:
            self._probs_given = param
            self._a = _private_copy(self._param_op(_LOG_PROBS, param), None)
        else:
            self._probs_given = None
            self._a = param
        self._temperature = temp
        self._t_rows = rows
        self._batch_shape = tuple(batch)
        # One temperature per row of batch_shape (a view), made once: calls
        # without a sample_shape need it, and a broadcast per call costs as
        # much as the kernel on small batches.
        self._t_batch = _broadcast(rows, self._batch_shape)
        self._validate = True if validate_args is None else bool(validate_args)

    # Pickling (and copy.deepcopy, which goes through the same state) leaves out
    # _t_batch and keeps every other broadcast view as the elements it reads and
    # its shape: pickle would write such a view out in full (a scalar
    # temperature as one float per row; an expand to 2^40 rows as 2^40 rows,
    # which it cannot), and the remade object reads the same numbers.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_t_batch", None)
        for name, arr in state.items():
            if isinstance(arr, np.ndarray) and 0 in arr.strides and arr.size > 1:
                state[name] = _Broadcast.of(arr)
        return state

    def __setstate__(self, state: dict) -> None:
        state = {
            name: val.remake() if isinstance(val, _Broadcast) else val
            for name, val in state.items()
        }
        for val in state.values():
            if isinstance(val, np.ndarray):  # read-only, as the original's are
                val.flags.writeable = False
        self.__dict__.update(state)
        self._t_batch = _broadcast(self._t_rows, self._batch_shape)

    # ----------------------------------------------------------------- properties
    @property
    def batch_shape(self) -> tuple:
        return self._batch_shape

    @property
    def event_shape(self) -> tuple:
        return (self._a.shape[-1],)

    @property
    def dtype(self) -> np.dtype:
        return self._a.dtype

    @property
    def temperature(self) -> np.ndarray:
        """The temperature as given (converted to the distribution's dtype), as
        a new array: the distribution keeps its own checked copy, which the
        kernels read. After :meth:`expand` it is a read-only broadcast view of a
        new copy of the values, as the expanded batch may be far larger than
        memory."""
        return _fresh(self._temperature)

    @property
    def logits(self) -> np.ndarray:
        """The normalised log-probabilities, ``logits - logsumexp(logits)``."""
        return self._param_op(_NORMALIZE_LOGITS, self._a)

    @property
    def probs(self) -> np.ndarray:
        """The normalised probabilities of the underlying categorical."""
        if self._probs_given is not None:
            return self._param_op(_NORMALIZE_PROBS, self._probs_given)
        return self._param_op(_PROBS_FROM_LOGITS, self._a)

    @property
    def validate_args(self) -> bool:
        return self._validate

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(temperature: shape {self._temperature.shape}, "
            f"{self._param_name}: shape {self._param().shape}, dtype {self.dtype})"
        )

    def _owned(self) -> dict:
        """The arrays this object reads, which an ``out=`` must not overlap, by
        name. They are read-only copies no caller is given, so this is a guard."""
        return {
            "the distribution's logits": self._a,
            "the distribution's temperature": self._temperature,
            "the distribution's probs": self._probs_given,
        }

    def _param(self) -> np.ndarray:
        return self._probs_given if self._probs_given is not None else self._a

    @staticmethod
    def _param_op(op: int, arr: np.ndarray) -> np.ndarray:
        out = np.empty(arr.shape, dtype=arr.dtype)
        _core.param(op, arr, out, _threads.get_num_threads())
        return out

    def _has_masks(self) -> bool:
        """Whether some category is masked (a logit of -inf). The VJP of a sample
        reads the logits only to find such categories; without one it is given
        none and skips that pass (rsample_vjp at K = 8: 5.8 -> 5.3 ns per
        element). Found once, on first use, so that making a distribution costs
        no more for it."""
        found = self.__dict__.get("_masked")
        if found is None:
            read = _elements_read(self._a)
            found = read.size > 0 and bool(read.min() == -np.inf)
            self._masked = found
        return found

    def expand(self, batch_shape) -> RelaxedOneHotCategorical:
        """The same distribution broadcast to a larger ``batch_shape`` (views)."""
        batch_shape = _int_shape(batch_shape, "expand: batch_shape")
        _check_batch_rank(len(batch_shape), "expand: batch_shape")
        # NumPy refuses even a broadcast view whose nominal size in bytes is
        # past what an array can index, so the check counts bytes.
        _check_indexable(
            batch_shape + self.event_shape,
            f"expand: batch_shape {batch_shape} with event_shape {self.event_shape}",
            self.dtype.itemsize,
        )
        try:
            np.broadcast_shapes(batch_shape, self._batch_shape)
            param = np.broadcast_to(self._param(), batch_shape + self.event_shape)
            temp = np.broadcast_to(self._t_rows, batch_shape)
        except ValueError:
            raise ValueError(
                f"expand: batch_shape {batch_shape} cannot hold the batch shape "
                f"{self._batch_shape}"
            ) from None
        # The parameters were checked when self was made; the new object holds
        # read-only broadcast views of them, so nothing is copied.
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._a = np.broadcast_to(self._a, batch_shape + self.event_shape)
        if self._probs_given is not None:
            new._probs_given = param
        new._temperature = temp
        new._t_rows = temp
        new._t_batch = temp
        new._batch_shape = batch_shape
        return new

    # ------------------------------------------------------------------- sampling
    def _full(self, lead: tuple):
        """Logits and temperature broadcast to ``lead + batch_shape`` (views)."""
        batch = lead + self._batch_shape
        _check_indexable(
            batch + self.event_shape,
            lambda: (
                f"sample_shape {lead} with batch_shape {self._batch_shape} and "
                f"event_shape {self.event_shape}"
            ),
            self.dtype.itemsize,
        )
        logits = _broadcast(self._a, batch + self.event_shape)
        temp = _broadcast(self._t_rows, batch) if lead else self._t_batch
        return logits, temp

    def rsample(
        self,
        sample_shape=(),
        rng=None,
        gumbels=None,
        out=None,
        num_threads=None,
        hard=False,
    ):
        """Draw reparameterised samples of shape ``sample_shape + batch_shape + (K,)``.

        Parameters
        ----------
        sample_shape : tuple of int
        rng : None, int or numpy.random.Generator
            An int is the Philox key itself (stream 0): the same bits on every
            call. A Generator gives one key and one stream per call, so successive
            calls differ and its state decides everything. None draws both from
            the operating system's entropy. The README defines the stream.
        gumbels : array_like, optional
            Explicit Gumbel noise of the full output shape, for reproducing a
            sample made elsewhere; not together with ``rng``. Must be finite.
            Taken in float64 for either dtype. The stream's own noise is
            ``relaxcat._core.gumbels(key, stream, first, n, float32=...)``
            (float32 samples draw the float noise, float64 samples the double
            noise; README, "The random stream"); passed here it reproduces a
            sample bit for bit.
        out : numpy.ndarray, optional
            A C-contiguous array of the output's shape and dtype to write into.
            The call then allocates nothing of the output's size: rows of 2048
            or more categories are sampled in ``out`` itself, which for float32
            samples costs a second exponential per entry (the same bits). With
            ``hard=True``, ``out`` receives the soft sample, which is returned
            as ``soft``; the one-hot ``hard`` is a new array.
        num_threads : int, optional
            Defaults to :func:`relaxcat.get_num_threads`; the bits do not depend on it.
        hard : bool
            If True, return ``HardSample(hard, soft)``: the one-hot (0 and 1, on
            the simplex, for both classes) of the argmax of the soft sample, ties
            to the lowest index, never a masked category; and the soft sample.
            For the straight-through estimator, pass ``soft`` to
            :meth:`rsample_vjp`: the hard sample's gradient is defined as the
            soft one's. ``log_prob(hard)`` is the density's limit at a vertex
            (README, "Moments, mode, entropy and KL"), not the soft sample's.

        Returns
        -------
        numpy.ndarray or HardSample
            Exact zeros on masked categories; every row sums to 1 within half an
            ulp per entry. At low temperature entries may underflow to 0 (use
            :class:`ExpRelaxedOneHotCategorical` to keep their logs).
        """
        hard = v.check_flag(hard, "hard")
        lead = _sample_shape(sample_shape)
        _check_batch_rank(
            len(lead) + len(self._batch_shape), "sample_shape + batch_shape"
        )
        logits, temp = self._full(lead)
        shape = logits.shape
        noise = None
        key = stream = 0
        if gumbels is not None:
            if rng is not None:
                raise ValueError(
                    "rng and gumbels cannot both be given: gumbels is the noise "
                    "itself, so rng would be ignored"
                )
            # float64 whatever the distribution's dtype (the README's dtypes
            # paragraph): _core.gumbels(..., float32=True) gives the float noise
            # of float32 samples, exactly representable in float64, so passing
            # it reproduces a float32 sample bit for bit.
            noise = v.as_float_array(gumbels, "gumbels", np.float64)
            if noise.shape != shape:
                tail = len(self.batch_shape) + 1
                hint = (
                    f" (sample_shape={noise.shape[:-tail]} would match)"
                    if noise.ndim > tail and noise.shape[-tail:] == shape[-tail:]
                    else ""
                )
                raise ValueError(
                    f"gumbels must have shape sample_shape + batch_shape + "
                    f"event_shape = {shape}, got {noise.shape}{hint}"
                )
            bad = ~np.isfinite(noise)
            if bad.any():
                raise ValueError(
                    f"gumbels must be finite, got {v.first_value(noise, bad)}"
                    f"{v.first_bad(bad)}"
                )
        # With out= the caller has the memory: long float rows are then sampled
        # without scratch at the cost of a second exponential (Note [rows
        # without scratch]); the bits are the same either way.
        no_scratch = out is not None
        out = v.prepare_out(out, shape, self.dtype, {**self._owned(), "gumbels": noise})
        threads = _threads.resolve(num_threads)
        # A Generator is drawn from only once every argument has passed, and set
        # back if the kernel or the one-hot fails: a call that fails leaves it
        # as it was.
        with v.UndoDraws(rng):
            if noise is None:
                key, stream = v.key_and_stream(rng)
            self._draw(logits, temp, noise, key, stream, 0, out, threads, no_scratch)
            return _extras.hard_sample(out, threads) if hard else out

    def _draw(self, logits, temp, noise, key, stream, first, out, threads, no_scratch):
        """The kernel of rsample into ``out``: noise elements ``first`` onwards
        of (key, stream), or the given ``noise``."""
        x, log_x = (out, None) if self._space == _SIMPLEX else (None, out)
        _core.rsample(
            logits, temp, noise, key, stream, first, x, log_x, threads, no_scratch
        )

    def sample(
        self,
        sample_shape=(),
        rng=None,
        gumbels=None,
        out=None,
        num_threads=None,
        hard=False,
    ):
        """The same as :meth:`rsample` (NumPy has no graph to detach from)."""
        return self.rsample(
            sample_shape,
            rng=rng,
            gumbels=gumbels,
            out=out,
            num_threads=num_threads,
            hard=hard,
        )

    # ------------------------------------------------- moments (see _extras.py)
    @property
    def mean(self) -> np.ndarray:
        """E[x], shape ``batch_shape + (K,)``, by quadrature in the C++ core.

        Not ``probs``: with T = 1 and logits [1, 0, -1] it is [0.5691, 0.2890,
        0.1419]. Tends to ``probs`` as T -> 0 and to 1/K as T -> inf; 0 on masked
        categories. For :class:`ExpRelaxedOneHotCategorical`, E[y] = E[log x]
        (-inf on masked categories). Within 1e-12 of the largest entry in float64
        (README, "Moments, mode, entropy and KL"; tests/python/test_moments.py).
        """
        return _extras.mean(self)

    @property
    def variance(self) -> np.ndarray:
        """Var[x_k], shape ``batch_shape + (K,)``; the diagonal of :meth:`covariance`.

        Raises NotImplementedError for :class:`ExpRelaxedOneHotCategorical`: the
        variance of y = log x needs E[log(S)^2] and E[G_k log S], and no accurate
        integral for them is written yet.
        """
        return _extras.variance(self)

    def covariance(self) -> np.ndarray:
        """Cov[x], shape ``batch_shape + (K, K)``, in float64 inside.

        By quadrature of the raw moments below T = 32 and of the deviations from
        softmax(logits / T) from T = 32 up (so the 1/T^2 covariance does not cancel
        at large T). Within 1e-9 of the largest entry at every T (measured: about
        2e-12 just below T = 32, 1e-15 from there up; README, "Moments, mode, entropy
        and KL"); exact zeros on masked categories. Raises NotImplementedError
        for :class:`ExpRelaxedOneHotCategorical` (see :attr:`variance`).
        """
        return _extras.covariance(self)

    @property
    def mode(self) -> np.ndarray:
        """The point of highest density, shape ``batch_shape + (K,)``.

        The interior stationary point, solved by Newton's method in log space to
        full precision, when it is the maximum: T >= K - 1 for K >= 3, T > 1 for
        K = 2 (K counts live categories). Otherwise the density is unbounded at
        the vertices (T < K - 1) or, for K = 2 and T = 1, monotone or flat along
        the edge, and the mode returned is the vertex of the most probable
        category (lowest index on ties). For :class:`ExpRelaxedOneHotCategorical`
        it is the mode of y's density, ``log_softmax(logits / T)`` at every T
        (not the log of the simplex mode).
        """
        return _extras.mode(self)

    def entropy(self, n_samples=4096, rng=None):
        """A Monte Carlo estimate of the differential entropy, with its standard error.

        ``-mean_i log p(x_i)`` over ``n_samples`` samples per batch entry, each
        evaluated in log space: ``log p(x) = log q(y) - sum_k y_k`` with
        ``y = log x`` and ``q`` the ExpRelaxed density (the sum over live
        categories), so underflowing samples cost nothing. In log space the
        estimate is ``-mean_i log q(y_i)``. Not the categorical entropy: K = 2,
        T = 1, equal logits gives 0.

        Returns
        -------
        MonteCarloEstimate (estimate, stderr)
            float64 arrays of shape ``batch_shape``; stderr is the sample standard
            deviation over sqrt(n_samples).
        """
        return _extras.entropy(self, n_samples, rng)

    # -------------------------------------------------------------------- density
    def _value(self, value, threads: int, name: str = "value") -> np.ndarray:
        # A float16 or float32 value coarser than the distribution is checked
        # with its own type's tolerance: it was rounded to that type by the
        # caller, whatever the distribution computes in (constraints.simplex
        # takes the value's type too, so that support.check agrees). Lists and
        # either byte order count by what NumPy makes of them.
        value = v.as_array(value, name)
        tol_dtype = v.rounded_to(value.dtype)
        if np.finfo(tol_dtype).eps < np.finfo(self.dtype).eps:
            tol_dtype = self.dtype
        # In log space a value far below float32's range becomes -inf, the log
        # of 0, which is what it means (one far above is an error, as nothing
        # finite may become infinite on the simplex).
        value = v.as_float_array(
            value, name, self.dtype, below_to_minus_inf=self._space != _SIMPLEX
        )
        k = self.event_shape[0]
        if value.ndim == 0 or value.shape[-1] != k:
            raise ValueError(
                f"{name} must have a last axis of length {k}, got shape {value.shape}"
            )
        _check_batch_rank(value.ndim - 1, name)
        try:
            if value.shape[:-1] != self._batch_shape:
                np.broadcast_shapes(value.shape[:-1], self._batch_shape)
        except ValueError:
            raise ValueError(
                f"{name} of shape {value.shape} does not broadcast with batch_shape "
                f"{self._batch_shape}"
            ) from None
        if self._validate:
            self._check_support(value, name, tol_dtype, threads)
        return value

    def _check_support(
        self, value: np.ndarray, name: str, tol_dtype, threads: int
    ) -> None:
        """validate_args: one pass in the C++ core decides (on the call's
        ``threads``); only a value that fails is examined again in NumPy, to name
        the first bad entry."""
        shape = value.shape
        if shape != self._a.shape:
            shape = np.broadcast_shapes(shape, self._a.shape)
        logits = _broadcast(self._a, shape)
        full = _broadcast(value, shape)
        status = np.empty(shape[:-1], dtype=np.uint8)
        tol = v.simplex_tolerance(shape[-1], tol_dtype)
        _core.check_values(self._space, logits, full, tol, status, threads)
        if not status.any():
            return
        # The first failing row by the kernel's verdict, described from NumPy.
        where = tuple(int(i) for i in np.argwhere(status)[0])
        check = v.check_simplex if self._space == _SIMPLEX else v.check_log_simplex
        check(full[where], logits[where], name, tol, at=where)
        # NumPy's own sum put the row just inside the tolerance: the two sums
        # differ in the last bits, and the kernel's decides.
        row = full[where].astype(np.float64)
        total = float((row if self._space == _SIMPLEX else np.exp(row)).sum())
        raise ValueError(
            f"{name} is not on the support {self.support!r} at batch index {where}: "
            f"its sum of x is {total!r}, 1 within {tol:.3g} only up to rounding"
        )

    def _broadcast_value(self, value: np.ndarray):
        """Value, logits and temperature broadcast to one row shape (views)."""
        rows = value.shape[:-1]
        if rows != self._batch_shape:
            rows = np.broadcast_shapes(rows, self._batch_shape)
        lead = rows[: len(rows) - len(self._batch_shape)]
        logits, temp = self._full(lead)
        logits = _broadcast(logits, rows + self.event_shape)
        temp = _broadcast(temp, rows)
        return _broadcast(value, rows + self.event_shape), logits, temp

    def log_prob(self, value, out=None, num_threads=None) -> np.ndarray:
        """The log-density of ``value``.

        Its shape is ``broadcast(value.shape[:-1], batch_shape)``.

        On the simplex the density is taken with respect to the Lebesgue measure
        on the first K - 1 coordinates; masked categories are left out of K. The
        formula and its edges (exact zeros in ``value``: +inf, -inf or a finite
        limit; weight on a masked category: -inf, or ValueError when validating)
        are in the README's "Numerics" section.
        """
        threads = _threads.resolve(num_threads)
        value = self._value(value, threads)
        val, logits, temp = self._broadcast_value(value)
        out = v.prepare_out(
            out, temp.shape, self.dtype, {**self._owned(), "value": value}
        )
        _core.log_prob(
            self._space,
            logits,
            temp,
            val,
            None,
            out,
            None,
            None,
            None,
            threads,
        )
        return out

    # ---------------------------------------------------------------- gradients
    def _logits_grad_rows(self, shape: tuple) -> _PerRowGrad:
        """Where a VJP kernel writes the per-row logits gradient: in the dtype when
        that is the result (one row per parameter row, logits given), else in
        float64, summed over rows and taken through the probs transform before
        one rounding (Note [summed gradients])."""
        dtype = self.dtype if self._probs_given is None else np.float64
        return _PerRowGrad(shape, self._a.shape, dtype)

    def _param_grad(self, g: np.ndarray, threads: int) -> np.ndarray:
        """The gradient of the parameter the user gave, from the logits gradient
        summed to the logits' shape (_logits_grad_rows's total)."""
        if self._probs_given is None:
            return _round_to(g, self.dtype)
        out = np.empty(self._probs_given.shape, dtype=self.dtype)
        _core.probs_vjp(self._probs_given, g, out, threads)
        return out

    def _temperature_grad_rows(self, rows: tuple) -> _PerRowGrad:
        """Where a VJP kernel writes the per-row temperature gradient: in float64,
        summed over the rows that share a temperature (Note [summed
        gradients])."""
        return _PerRowGrad(rows, self._t_rows.shape, np.float64)

    def _temperature_grad(self, g: np.ndarray) -> np.ndarray:
        """The temperature's gradient as given, from _temperature_grad_rows's
        total."""
        return _round_to(g.reshape(self._temperature.shape), self.dtype)

    def _grad(self, grad, shape: tuple, what: str, check: bool = True) -> np.ndarray:
        """The upstream gradient in the distribution's dtype, broadcast to shape;
        its entries are checked to be finite unless ``check`` is False (the
        caller's kernel then checks them, Note [checking the upstream gradient]
        in kernels.hpp)."""
        grad = v.as_float_array(grad, "grad", self.dtype)
        if check:
            v.check_finite(grad, "grad")
        try:
            return _broadcast(grad, shape)
        except ValueError:
            raise ValueError(
                f"grad must broadcast to {what} {shape}, got {grad.shape}"
            ) from None

    def _wanted(self, wrt, names: tuple) -> tuple:
        """The gradients a VJP call asked for with ``wrt``, as a tuple of bools
        in the order of ``names`` (all of them for None)."""
        if wrt is None:
            return tuple(True for _ in names)
        if isinstance(wrt, str):
            items = (wrt,)
        elif isinstance(wrt, (tuple, list)):
            items = tuple(wrt)
        else:
            raise TypeError(
                f"wrt must be None, a name or a tuple or list of names, "
                f"got {type(wrt).__name__}"
            )
        for item in items:
            if not isinstance(item, str):
                raise TypeError(
                    f"wrt must name gradients as strings, got {type(item).__name__}"
                )
            if item not in names:
                raise ValueError(
                    f"wrt must name some of {', '.join(names)}, got {item!r}"
                )
        if not items:
            raise ValueError(f"wrt must name at least one of {', '.join(names)}")
        if len(set(items)) != len(items):
            raise ValueError(f"wrt must name each gradient once, got {items!r}")
        return tuple(name in items for name in names)

    def rsample_vjp(self, value, grad, num_threads=None, wrt=None):
        """The gradient of ``sum(grad * value)`` for ``value = self.rsample(...)``.

        Needs only the sample, not the noise: ``d/dlogits = x (w - <w, x>) / T`` and
        ``d/dT = -(1/T) sum_k x_k (w_k - <w, x>) log x_k``.

        Parameters
        ----------
        value : array_like
            A sample of this distribution: shape ``sample_shape + batch_shape +
            (K,)``, or one that broadcasts with the batch.
        grad : array_like
            The upstream gradient: finite, broadcasting to ``value``'s shape (a
            value of shape ``(K,)`` takes only a ``grad`` of that shape, even
            for a batch of rows; pass the sample with its full shape).
        wrt : str or tuple (or list) of str, optional
            The gradients to compute, among ``"logits"`` (``"probs"`` for a
            distribution given probs) and ``"temperature"``; the others come
            back as None and cost nothing. Default: both. A fixed temperature
            (an annealing schedule) needs no temperature gradient, and on the
            simplex skipping it saves the logarithm of every entry.

        Returns
        -------
        RsampleGrad (logits, temperature) or RsampleGradProbs (probs, temperature)
            Each with the shape of the parameter as given, broadcast dimensions
            summed; a scalar temperature gets a 0-d array. Masked categories get 0.
            In log space an entry of a live category that underflowed to -inf
            keeps its logits gradient, and the temperature gradient of its row
            is NaN unless its ``grad`` is 0: it needs the log the -inf lost
            (README, Limitations).
        """
        want_param, want_t = self._wanted(wrt, (self._param_name, "temperature"))
        threads = _threads.resolve(num_threads)
        value = self._value(value, threads)
        g = self._grad(grad, value.shape, "the value's shape", check=False)
        val, logits, temp = self._broadcast_value(value)
        g = _broadcast(g, val.shape)
        masks = logits if self._has_masks() else None

        def make():
            # Note [summed gradients]
            return [
                self._logits_grad_rows(val.shape) if want_param else None,
                self._temperature_grad_rows(temp.shape) if want_t else None,
            ]

        def call(index, out):
            at = (_at(a, index) for a in (val, g, temp))
            bad = _core.rsample_vjp(self._space, *at, *out, threads, _at(masks, index))
            if bad or g.size == 0:
                # The kernel reads no entry of an empty call. This raises for a
                # bad entry, naming the first as the caller gave it.
                v.check_finite(v.as_float_array(grad, "grad", self.dtype), "grad")
            if bad:
                raise ValueError("grad must be finite, got a NaN or an infinity")

        gl, gt = _over_slices(temp.shape, self.event_shape[0], make, call)
        gp = self._param_grad(gl.result(), threads) if want_param else None
        gt = self._temperature_grad(gt.result()) if want_t else None
        cls = RsampleGradProbs if self._probs_given is not None else RsampleGrad
        return cls(gp, gt)

    def log_prob_vjp(self, value, grad, num_threads=None, wrt=None):
        """The gradient of ``sum(grad * log_prob(value))``.

        Parameters
        ----------
        wrt : str or tuple (or list) of str, optional
            The gradients to compute, among ``"value"``, ``"logits"``
            (``"probs"`` for a distribution given probs) and ``"temperature"``;
            the others come back as None and cost nothing. Default: all three.

        Returns
        -------
        LogProbGrad (value, logits, temperature) or LogProbGradProbs
            ``value`` treats the K coordinates as free (the raw partial
            derivatives); each entry has the shape of the argument as given.
            Masked categories get 0.
        """
        return self._log_prob_vjp(value, grad, num_threads, False, wrt)[1]

    def log_prob_and_vjp(self, value, grad, num_threads=None, wrt=None):
        """``log_prob(value)`` and ``log_prob_vjp(value, grad)`` from one pass.

        The kernel that forms the gradients has every term of the log-density at
        hand, so this costs about as much as ``log_prob_vjp`` alone, where the two
        calls read the value twice. Use it when the upstream gradient is known
        before the forward pass (a sum or mean of log-densities, a score-function
        estimator); the results are the same bits as the two separate calls.
        ``wrt`` as for :meth:`log_prob_vjp`.

        Returns
        -------
        (log_prob, LogProbGrad or LogProbGradProbs)
        """
        return self._log_prob_vjp(value, grad, num_threads, True, wrt)

    def _log_prob_vjp(self, value, grad, num_threads, want_log_prob: bool, wrt):
        want_v, want_param, want_t = self._wanted(
            wrt, ("value", self._param_name, "temperature")
        )
        threads = _threads.resolve(num_threads)
        value = self._value(value, threads)
        val, logits, temp = self._broadcast_value(value)
        grad = self._grad(grad, temp.shape, "log_prob's shape")
        lp = np.empty(temp.shape, dtype=self.dtype) if want_log_prob else None

        def make():
            # The value gradient is summed over the batch rows a broadcast value
            # serves, in float64 then (Note [summed gradients]).
            return [
                _PerRowGrad(val.shape, value.shape, self.dtype) if want_v else None,
                self._logits_grad_rows(val.shape) if want_param else None,
                self._temperature_grad_rows(temp.shape) if want_t else None,
            ]

        def call(index, out):
            _core.log_prob(
                self._space,
                _at(logits, index),
                _at(temp, index),
                _at(val, index),
                _at(grad, index),
                _at(lp, index),
                *out,
                threads,
            )

        gv, gl, gt = _over_slices(temp.shape, self.event_shape[0], make, call)
        gv = _round_to(gv.result(), self.dtype) if want_v else None
        gp = self._param_grad(gl.result(), threads) if want_param else None
        gt = self._temperature_grad(gt.result()) if want_t else None
        cls = LogProbGradProbs if self._probs_given is not None else LogProbGrad
        return lp, cls(gv, gp, gt)


class ExpRelaxedOneHotCategorical(RelaxedOneHotCategorical):
    r"""The log of a Concrete sample: ``y = log_softmax((logits + G) / T)``.

    The same parameters and methods as :class:`RelaxedOneHotCategorical`, but
    samples, ``log_prob`` and the VJPs work with ``y = log x``. Use it at low
    temperature: ``y`` stays finite where ``x`` underflows to 0, and its density
    is finite there too.

    ``log_prob(y)`` is ``log p(x) + sum_k y_k`` over the live categories, the
    log-space density of Maddison et al. (2017) and torch's
    ``ExpRelaxedCategorical``. As a density of the first K - 1 coordinates of
    ``y`` it is off by ``y_K``: that density is ``log_prob(y) - y_K``, and
    ``exp(log_prob)`` integrates over those coordinates to ``E[x_K]``, not 1.
    """

    _space = _LOG
    support = constraints.log_simplex
