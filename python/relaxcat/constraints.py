"""The supports of parameters and values, in the style of torch.distributions.

Each constraint's ``check(value)`` returns a boolean array over the batch (or
over elements for elementwise constraints).
"""

from __future__ import annotations

import numpy as np

from ._validation import as_array, rounded_to, simplex_tolerance

__all__ = ["Constraint", "positive", "real_vector", "simplex", "log_simplex"]


class Constraint:
    """A set of values, with a membership test."""

    event_dim = 0

    def check(self, value) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__[1:]}()"


def _values(value, vectors: bool) -> np.ndarray:
    """``value`` as an array of real numbers, with a clear TypeError for any other
    kind (a complex number, None, a string) and, for a constraint on vectors, a
    ValueError for a 0-d value (a second look at a fifth fresh-user review:
    ``simplex.check(0)`` raised IndexError, ``positive.check(None)`` a bare ufunc
    TypeError, and ``positive.check(1 + 1j)`` returned True)."""
    arr = as_array(value, "value")
    if vectors and arr.ndim == 0:
        raise ValueError(
            "value must have a category axis (one dimension or more), got a 0-d array"
        )
    return arr


class _Positive(Constraint):
    def check(self, value):
        value = _values(value, False)
        return np.isfinite(value) & (value > 0)


class _RealVector(Constraint):
    """Vectors of reals; -inf entries mark impossible (masked) categories."""

    event_dim = 1

    def check(self, value):
        value = _values(value, True)
        return np.all(~np.isnan(value) & (value != np.inf), axis=-1)


def _tolerance(value: np.ndarray) -> float:
    """The row-sum tolerance of a value: that of the float16 or float32 it was
    rounded to (either byte order), else float64's. validate_args takes the
    same for a value at least as coarse as its distribution, and the
    distribution's own for a finer one."""
    return simplex_tolerance(value.shape[-1], rounded_to(value.dtype))


class _Simplex(Constraint):
    event_dim = 1

    def check(self, value):
        value = _values(value, True)
        tol = _tolerance(value)
        ok = np.all(np.isfinite(value) & (value >= 0), axis=-1)
        return ok & (np.abs(value.sum(axis=-1, dtype=np.float64) - 1.0) <= tol)


class _LogSimplex(Constraint):
    event_dim = 1

    def check(self, value):
        value = _values(value, True)
        tol = _tolerance(value)
        ok = np.all(~np.isnan(value) & (value != np.inf), axis=-1)
        total = np.exp(value.astype(np.float64)).sum(axis=-1)
        return ok & (np.abs(total - 1.0) <= tol)


positive = _Positive()
real_vector = _RealVector()
simplex = _Simplex()
log_simplex = _LogSimplex()
