"""Checks at the boundary: dtypes, shapes and values, with messages that name
the argument, what was expected and what was seen (the first bad index and the
count for arrays).

Nothing here computes a result; the math lives in the C++ core.
"""

from __future__ import annotations

import math
import numbers
import secrets
import warnings

import numpy as np

__all__ = [
    "as_float_array",
    "check_finite",
    "check_temperature",
    "check_flag",
    "check_logits",
    "check_logit_entries",
    "check_probs",
    "check_simplex",
    "check_log_simplex",
    "key_and_stream",
    "UndoDraws",
    "first_bad",
    "first_value",
    "prepare_out",
]


def first_bad(mask: np.ndarray, what: str = "index") -> str:
    """Where the True entries of ``mask`` are: " at <what> (i, j)" for the first
    one, with the count when there are several; "" for a 0-d mask."""
    if mask.ndim == 0:
        return ""
    count = int(np.count_nonzero(mask))
    index = tuple(int(i) for i in np.argwhere(mask)[0]) if count else ()
    noun = "rows" if what == "batch index" else "entries"
    more = f" ({count} {noun} in all)" if count > 1 else ""
    return f" at {what} {index}{more}"


_RAGGED_WARNING = getattr(
    getattr(np, "exceptions", np), "VisibleDeprecationWarning", DeprecationWarning
)


def as_shown(arr: np.ndarray, x) -> str:
    """An entry of ``arr`` as its dtype shows it."""
    return str(arr.dtype.type(x)) if arr.dtype.kind == "f" else str(float(x))


def first_entry(arr: np.ndarray, mask: np.ndarray):
    """The first entry of ``arr`` that ``mask`` flags (the entry of a 0-d one)."""
    return arr[tuple(np.argwhere(mask)[0])] if arr.ndim else arr[()]


def first_value(arr: np.ndarray, mask: np.ndarray) -> str:
    """The first flagged entry as its dtype shows it (for messages): a float32
    -1e-30 is "-1e-30", not the "-1.0000000031710769e-30" it widens to."""
    return as_shown(arr, first_entry(arr, mask))


def _object_hint(arr: np.ndarray) -> str:
    """For an object array NumPy made from Python ints beyond int64 (such as
    [0, 10**20]), a hint that says so; '' for any other object array."""
    flat = arr.ravel()
    big = next(
        (e for e in flat if isinstance(e, int) and not -(2**63) <= e < 2**64), None
    )
    if big is None or not all(isinstance(e, numbers.Real) for e in flat):
        return ""
    # Python refuses str() of ints past 4300 digits by default; long ones are
    # described by their size.
    bits = big.bit_length()
    digits = int((bits - 1) * 0.30103) + 1
    shown = str(big) if bits <= 256 else f"an int of {digits} or more digits"
    advice = "pass them as floats" if bits <= 1024 else "that one is beyond float64 too"
    return (
        f" (NumPy keeps Python ints beyond int64 and uint64, such as {shown}, as "
        f"objects: {advice})"
    )


def as_array(value, name: str) -> np.ndarray:
    """``value`` as a NumPy array of real numbers (bool, int or float, any
    size), without a copy where it is one; a masked array, a ragged nested list
    and any other kind raise, naming ``name``."""
    if isinstance(value, np.ma.MaskedArray):
        hint = (
            "mark impossible categories with -inf logits or zero probs, or pass "
            if name in ("logits", "probs")
            else "pass np.ma.filled(...) to fill the masked entries, or "
        )
        raise TypeError(
            f"{name} must not be a numpy.ma.MaskedArray: its mask would be ignored "
            f"({hint}np.ma.getdata(...) to use the data as it is)"
        )
    if type(value) is np.ndarray:
        arr = value  # what np.asarray gives, without the cost of the guard below
    elif isinstance(value, (int, float)):
        arr = np.asarray(value)  # a Python number is never a ragged list
    else:
        try:
            with warnings.catch_warnings():
                # NumPy before 1.24 makes a ragged nested list an object array
                # with this warning instead of raising; both are the same mistake.
                warnings.simplefilter("error", _RAGGED_WARNING)
                arr = np.asarray(value)
        except (ValueError, _RAGGED_WARNING) as exc:  # ragged nested lists
            msg = f"{name} must be a rectangular array of numbers: {exc}"
            raise ValueError(msg) from None
    kind = arr.dtype.kind
    if kind not in "biuf":
        if value is None:
            got = "None"
        elif kind in "OUSV" and arr.ndim == 0 and not isinstance(value, np.ndarray):
            # One object that is not a number (a generator, a Decimal, a str):
            # its type says more than "dtype object" or "dtype <U2" (a fifth
            # review). A 0-d array keeps its dtype ("got ndarray" would say
            # nothing).
            got = type(value).__name__
        else:
            got = f"dtype {arr.dtype}"
        raise TypeError(
            f"{name} must be a real number or an array of real numbers, got {got}"
            + (_object_hint(arr) if kind == "O" and value is not None else "")
        )
    return arr


def rounded_to(dtype: np.dtype) -> np.dtype:
    """The float type a value of ``dtype`` was rounded to, for its row-sum
    tolerance: float16 and float32 (in either byte order) as they are, any other
    float64."""
    if dtype.kind == "f" and dtype.itemsize in (2, 4):
        return np.dtype(f"f{dtype.itemsize}")
    return np.dtype(np.float64)


def as_float_array(
    value,
    name: str,
    dtype=None,
    check_range: bool = True,
    keep_nonzero: bool = False,
    below_to_minus_inf: bool = False,
) -> np.ndarray:
    """Convert ``value`` to a float32 or float64 array.

    With ``dtype`` None the array's own kind decides: float32 stays float32,
    float64 stays float64, float16 becomes float32, integers and bools become
    float64 (as NumPy's ufuncs promote them), and long double becomes float64.
    With ``dtype`` given, the result has that dtype. Complex, object, string and
    other kinds raise TypeError. With ``check_range``, a finite entry that the
    conversion makes infinite raises ValueError naming the value as given (the
    checks that follow would only see the infinity); with ``keep_nonzero``,
    also a nonzero entry that it makes 0 (a positive prob would become an
    impossible category); with ``below_to_minus_inf``, an entry below the
    dtype's range may become -inf (a log-space value: the log of 0 is what it
    then means), but one above it is still an error.
    """
    arr = as_array(value, name)
    kind = arr.dtype.kind
    if dtype is None:
        # By kind and size, so that a big-endian float32 stays float32 (it is
        # made native below).
        if kind == "f" and arr.dtype.itemsize <= 4:
            dtype = np.float32
        else:
            dtype = np.float64
    if arr.dtype != dtype:
        # A float64 beyond float32's range becomes inf; NumPy's cast warning
        # would come before any message that names the argument.
        source = arr
        with np.errstate(over="ignore"):
            arr = arr.astype(dtype)
        if check_range and kind == "f" and source.dtype.itemsize > arr.dtype.itemsize:
            lost = np.isfinite(source) & ~np.isfinite(arr)
            if below_to_minus_inf:
                lost &= arr > 0
            if keep_nonzero:
                lost |= (source != 0) & (arr == 0)
            if lost.any():
                raise ValueError(
                    f"{name} must lie within the range of {np.dtype(dtype).name}, "
                    f"got {first_value(source, lost)}, which becomes "
                    f"{first_value(arr, lost)}{first_bad(lost)}"
                )
    if not arr.flags.aligned:
        arr = arr.copy()
    return arr


def check_temperature(t: np.ndarray, given=None) -> None:
    """Raise unless every entry of ``t`` is positive and finite. ``given`` is what
    the caller passed before ``t`` was converted to a narrower dtype: an entry
    that was fine as given but not after the conversion is reported with both."""
    if t.ndim == 0 and 0.0 < float(t) < math.inf:
        return  # the usual scalar, without the array checks' cost
    bad = ~(np.isfinite(t) & (t > 0))
    if not bad.any():
        return
    if given is not None:
        given = np.asarray(given)
        if given.dtype.kind in "biu":
            # A bool or an integer as the caller wrote it: "got False", not
            # the 0.0 it becomes (a fifth fresh-user review).
            x = first_entry(given, bad)
            shown = bool(x) if given.dtype.kind == "b" else int(x)
            raise ValueError(
                f"temperature must be positive and finite, got {shown}{first_bad(bad)}"
            )
        # As given, or as float64 when that is wider (a long double keeps its
        # own precision, so that 1e400 is shown as itself).
        wide = given if given.dtype.kind == "f" and given.dtype.itemsize > 8 else None
        if wide is None:
            wide = as_float_array(given, "temperature", np.float64, check_range=False)
        check_temperature(wide)
        raise ValueError(
            f"temperature must be positive and finite in {t.dtype.name} (the "
            f"distribution's dtype), got {first_value(wide, bad)}, which becomes "
            f"{first_value(t, bad)}{first_bad(bad)}"
        )
    raise ValueError(
        "temperature must be positive and finite, got "
        f"{first_value(t, bad)}{first_bad(bad)}"
    )


def check_flag(value, name: str) -> bool:
    """A bool argument (True or False, NumPy's bool too) as a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return bool(value)


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise unless every entry is finite (an upstream gradient: one inf or NaN
    would turn every gradient entry into NaN)."""
    # Two reductions that allocate nothing and propagate NaN: only an array with
    # a NaN or an infinity takes the elementwise pass that names the first one
    # (np.isfinite's boolean temporary had cost 0.3 ns per float32 entry, about
    # 5% of rsample_vjp at K = 8).
    if arr.size == 0 or (math.isfinite(arr.min()) and math.isfinite(arr.max())):
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} must be finite, got {first_value(arr, bad)}{first_bad(bad)}"
        )


def check_logit_entries(logits: np.ndarray) -> None:
    """Each logit must be finite or -inf; the first that is not is named by its
    index in ``logits`` as given (whichever axis holds the categories)."""
    bad = np.isnan(logits) | (logits == np.inf)
    if bad.any():
        raise ValueError(
            "logits must be finite or -inf (a masked category), got "
            f"{first_value(logits, bad)}{first_bad(bad)}"
        )


def check_logits(logits: np.ndarray) -> None:
    check_logit_entries(logits)
    dead = np.all(logits == -np.inf, axis=-1)
    if dead.any():
        raise ValueError(
            "logits must leave at least one category possible in every row, got a "
            f"row of all -inf{first_bad(dead, 'batch index')}"
        )
    # The kernels shift a row by its largest logit; a finite logit that ends up
    # -inf would be a masked category that still counts in K.
    live = logits > -np.inf
    with np.errstate(over="ignore", invalid="ignore"):
        hi = np.where(live, logits, -np.inf).max(axis=-1).astype(np.float64)
        lo = np.where(live, logits, np.inf).min(axis=-1).astype(np.float64)
        wide = ~(hi - lo < np.inf)
    if wide.any():
        raise ValueError(
            "logits must differ by less than the largest float64 within a row "
            f"(mask a category with -inf instead), got largest {first_value(hi, wide)}"
            f" and smallest {first_value(lo, wide)}{first_bad(wide, 'batch index')}"
        )


def check_probs(probs: np.ndarray) -> None:
    bad = ~(np.isfinite(probs) & (probs >= 0))
    if bad.any():
        raise ValueError(
            "probs must be non-negative and finite, got "
            f"{first_value(probs, bad)}{first_bad(bad)}"
        )
    # A sum that overflows is fine: such rows are scaled by their largest entry
    # (Note [probs of any scale], kernels.hpp).
    with np.errstate(over="ignore"):
        total = probs.sum(axis=-1, dtype=np.float64)
    bad_rows = ~(total > 0)
    if bad_rows.any():
        raise ValueError(
            "probs must have a positive sum in every row, got sum "
            f"{first_value(total, bad_rows)}{first_bad(bad_rows, 'batch index')}"
        )


def simplex_tolerance(k: int, dtype) -> float:
    """How far from 1 a value's row sum may be: max(min(4 K eps of its dtype,
    1/64), 1e-6).

    relaxcat's own samples are well inside (each entry is rounded once from a
    float64 quotient, so a row sums to 1 within K eps / 2). The floor of 1e-6,
    torch's tolerance, admits samples computed elsewhere: a float64 softmax from
    NumPy can miss 1 by several eps even for K = 2, and a float32 sample widened
    to float64 by about 1e-7. The cap keeps 4 K eps from admitting rows nowhere
    near the simplex: for float16 it is 1 at K = 256, and a row of 2048 zeros
    passed. Values rounded once to the dtype miss 1 by about eps / 2 plus what
    underflows, far below the cap, which applies to float16 from K = 5 and
    float32 from K = 32769.
    """
    wide = 4.0 * k * float(np.finfo(dtype).eps)
    return max(min(wide, SIMPLEX_TOLERANCE_CAP), SIMPLEX_TOLERANCE_FLOOR)


SIMPLEX_TOLERANCE_FLOOR = 1e-6
SIMPLEX_TOLERANCE_CAP = 1.0 / 64.0


def _check_rows(
    v: np.ndarray,
    bad: np.ndarray,
    total: np.ndarray,
    logits: np.ndarray,
    zero: float,
    name: str,
    tol: float,
    what: tuple,
    at: tuple = (),
    axis: int | None = None,
) -> None:
    """Raise for the first row (in row-major order) that fails any test, naming
    that row's first problem: a bad entry (bad), a sum off 1 (total, the row
    sums of x), or weight on a masked category (v not ``zero`` where the logit
    is -inf). ``what`` holds the three messages up to the value they show; ``at``
    is put before every index shown (the batch index of a row checked alone).
    ``axis``: where the caller's array had its category axis before it was
    moved to the last (an entry is named at that position of its index)."""
    shape = np.broadcast_shapes(v.shape, logits.shape)
    v, bad = np.broadcast_to(v, shape), np.broadcast_to(bad, shape)
    total = np.broadcast_to(total, shape[:-1])
    with np.errstate(invalid="ignore"):
        off = ~bad.any(axis=-1) & ~(np.abs(total - 1.0) <= tol)
    masked = (np.broadcast_to(logits, shape) == -np.inf) & (v != zero) & ~bad
    failing = bad.any(axis=-1) | off | masked.any(axis=-1)
    if not failing.any():
        return
    row = tuple(int(i) for i in np.argwhere(failing)[0]) if failing.ndim else ()
    shown = at + row
    opening_bad, opening_sum, opening_masked = what
    for mask, opening in ((bad, opening_bad), (masked, opening_masked)):
        in_row = mask[row]
        if in_row.any():
            j = int(np.argmax(in_row))
            cut = len(shown) if axis is None else axis
            index = shown[:cut] + (j,) + shown[cut:]
            raise ValueError(
                f"{name} {opening} {as_shown(v, v[row + (j,)])} at index {index}"
            )
        if mask is bad and off[row]:
            where = f" at batch index {shown}" if shown else ""
            raise ValueError(f"{name} {opening_sum} {float(total[row])}{where}")


def check_simplex(
    x: np.ndarray,
    logits: np.ndarray,
    name: str = "value",
    tol: float | None = None,
    at: tuple = (),
    axis: int | None = None,
) -> None:
    """``x`` must lie on the probability simplex of the live categories. The
    message names the first row that fails, and its first problem; ``axis`` as
    for :func:`_check_rows` (the caller's category axis, for the message)."""
    with np.errstate(over="ignore"):
        total = x.sum(axis=-1, dtype=np.float64)
    tol = simplex_tolerance(x.shape[-1], x.dtype) if tol is None else tol
    _check_rows(
        x,
        ~(np.isfinite(x) & (x >= 0)),
        total,
        logits,
        0.0,
        name,
        tol,
        (
            "must be non-negative and finite (a point on the simplex), got",
            f"must sum to 1 over {_axis_name(axis)} within {tol:.3g}, got sum",
            "must be 0 on masked categories (probability 0, logit -inf); got weight",
        ),
        at,
        axis,
    )


def _axis_name(axis: int | None) -> str:
    return "the last axis" if axis is None else f"axis {axis}"


def check_log_simplex(
    y: np.ndarray,
    logits: np.ndarray,
    name: str = "value",
    tol: float | None = None,
    at: tuple = (),
) -> None:
    """``y`` must be the logarithm of a point on the simplex of the live
    categories. The message names the first row that fails, and its first
    problem."""
    with np.errstate(over="ignore"):
        total = np.exp(y.astype(np.float64)).sum(axis=-1)
    tol = simplex_tolerance(y.shape[-1], y.dtype) if tol is None else tol
    _check_rows(
        y,
        np.isnan(y) | (y == np.inf),
        total,
        logits,
        -np.inf,
        name,
        tol,
        (
            "must be the log of a point on the simplex (finite or -inf), got",
            f"must satisfy sum(exp({name})) = 1 over the last axis within "
            f"{tol:.3g}, got",
            "must be -inf on masked categories (probability 0, logit -inf); got "
            "log weight",
        ),
        at,
    )


# NumPy's bit generators whose raw outputs are 64-bit words (MT19937's are 32).
_RAW_64_BIT = (np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64)


def key_and_stream(rng) -> tuple[int, int]:
    """The Philox key and stream of one call; see the README's random stream."""
    if rng is None:
        return secrets.randbits(64), secrets.randbits(64)
    if isinstance(rng, np.random.Generator):
        # rng.integers(0, 2**64, size=2, dtype=np.uint64) defines the two words.
        # For bit generators whose raw output is a full 64-bit word, that call
        # returns two raw outputs, and random_raw gives the same words (and the
        # same state after) in a tenth of the time, 0.4 us rather than 5
        # (test_stream.py pins the equality for each of them).
        if type(rng.bit_generator) in _RAW_64_BIT:
            key, stream = rng.bit_generator.random_raw(2)
        else:
            key, stream = rng.integers(0, 2**64, size=2, dtype=np.uint64)
        return int(key), int(stream)
    if isinstance(rng, numbers.Integral) and not isinstance(rng, (bool, np.bool_)):
        seed = int(rng)
        if not 0 <= seed < 2**64:
            raise ValueError(
                f"rng as an int seed must satisfy 0 <= seed < 2**64, got {seed}"
            )
        return seed, 0
    raise TypeError(
        "rng must be None, an int seed or a numpy.random.Generator, "
        f"got {type(rng).__name__}"
    )


class UndoDraws:
    """A context in which a call draws from ``rng``: if the call fails inside it
    (a MemoryError from the core's scratch, Ctrl-C), a Generator is set back to
    its state on entry, so that a failed call leaves it as it was. Ints and
    None hold no state."""

    __slots__ = ("rng", "state")

    def __init__(self, rng):
        self.rng = rng
        generator = isinstance(rng, np.random.Generator)
        self.state = rng.bit_generator.state if generator else None

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is not None and self.state is not None:
            self.rng.bit_generator.state = self.state
        return False


def prepare_out(out, shape: tuple, dtype, inputs=None, name: str = "out"):
    """Check a caller's output array; never copies. ``inputs`` maps the name of
    each array the call reads to the array (or None), for the overlap check."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if isinstance(out, np.ma.MaskedArray):
        raise TypeError(
            f"{name} must not be a numpy.ma.MaskedArray: results would ignore its mask"
        )
    if out.dtype != dtype:
        native = out.dtype.newbyteorder("=") == np.dtype(dtype)
        order = " in native byte order" if native else ""
        raise TypeError(
            f"{name} must have dtype {np.dtype(dtype)}{order}, got {out.dtype}"
        )
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writable, got a read-only array")
    if not out.flags.c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous, got strides {out.strides} for shape "
            f"{out.shape}"
        )
    if not out.flags.aligned:
        # The kernels store whole elements; a misaligned one is undefined
        # behaviour in C++ (UBSan stops there).
        raise ValueError(
            f"{name} must be aligned to its {out.dtype.itemsize}-byte elements, got "
            f"an array at address {out.ctypes.data:#x}"
        )
    for what, arr in (inputs or {}).items():
        if arr is not None and np.may_share_memory(out, arr):
            raise ValueError(f"{name} must not share memory with {what}")
    return out
