"""The thread count relaxcat's kernels use when a call does not name one."""

from __future__ import annotations

import numbers
import os

__all__ = ["get_num_threads", "set_num_threads", "resolve"]


def _default() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_num_threads = _default()


def get_num_threads() -> int:
    """The number of threads relaxcat's kernels use by default.

    Starts at the number of CPUs this process may run on. Results do not depend
    on it: every thread count gives the same bits.
    """
    return _num_threads


# The kernels take the count as a C int; a call never starts more threads than
# it has useful work for, whatever the count.
MAX_THREADS = 2**31 - 1


def _checked(n, name: str) -> int:
    if not isinstance(n, numbers.Integral) or isinstance(n, bool):
        raise TypeError(f"{name} must be a positive int, got {type(n).__name__}")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(
            f"{name} must be a positive int of at most {MAX_THREADS}, got {n}"
        )
    return int(n)


def set_num_threads(n: int) -> None:
    """Set the default number of threads (a positive int) for later calls."""
    global _num_threads
    _num_threads = _checked(n, "num_threads")


def resolve(n) -> int:
    return _num_threads if n is None else _checked(n, "num_threads")
