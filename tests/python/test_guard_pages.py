"""Every kernel stays inside the caller's arrays.

Each array of a call (logits, value, upstream gradient, and the outputs that
``out=`` accepts) is placed against a page the process may not touch: either
its last byte is the last before that page, or its first byte is the first
after one. A vector load or store of a row's tail that ran past the array, or a
walk that stepped before its start, would then end the test run with SIGSEGV
instead of reading a neighbour's bytes unseen. The prefetches of Note
[prefetching] (kernels.hpp) do ask for memory up to 4 KiB past a long row's
end; a prefetch cannot fault, and these tests hold that too. The results must
also be the bits the same calls give on ordinary arrays.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
import pytest

import relaxcat

Relaxed = relaxcat.RelaxedOneHotCategorical
ExpRelaxed = relaxcat.ExpRelaxedOneHotCategorical

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="uses mprotect through the C library"
)

PAGE = mmap.PAGESIZE
PROT_NONE = 0

# Row lengths on both sides of every path's threshold (columns up to 31, row
# reductions in slots from 32, the row path of rsample_vjp from 64, blocks of one
# row from 2048), and rows enough for several blocks of short rows.
CASES = [
    (1, 700),
    (2, 700),
    (3, 700),
    (8, 300),
    (16, 130),
    (17, 130),
    (31, 70),
    (32, 70),
    (63, 35),
    (64, 35),
    (100, 21),
    (2047, 3),
    (2048, 3),
    (2049, 3),
    (5000, 2),
]


class GuardedArena:
    """Arrays in anonymous mappings with an inaccessible page on each side."""

    def __init__(self):
        self._maps = []
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def _protect(self, address: int) -> None:
        if self._libc.mprotect(address, PAGE, PROT_NONE) != 0:
            raise OSError(ctypes.get_errno(), "mprotect failed")

    def place(self, a: np.ndarray, at_end: bool, order: str = "C") -> np.ndarray:
        """A copy of ``a`` in C or Fortran order whose bytes end just before a
        guard page (at_end) or begin just after one."""
        pages = -(-a.nbytes // PAGE) + 2
        span = mmap.mmap(-1, pages * PAGE)
        self._maps.append(span)
        base = np.frombuffer(span, np.uint8).ctypes.data
        self._protect(base)
        self._protect(base + (pages - 1) * PAGE)
        start = (pages - 1) * PAGE - a.nbytes if at_end else PAGE
        out = np.frombuffer(span, a.dtype, a.size, start).reshape(a.shape, order=order)
        out[...] = a
        assert out.ctypes.data == base + start
        return out

    def empty(self, shape, dtype, at_end: bool) -> np.ndarray:
        return self.place(np.zeros(shape, dtype), at_end)


def _calls(cls, logits, temp, x, w, g_rows, arena=None, at_end=False, order="C"):
    """rsample, log_prob and both VJPs, with every input and out= array in the
    arena when one is given (the inputs of two dimensions in C or Fortran
    order, out= always in C order, as it must be). Returns the results and the
    (original, placed) pairs of the inputs."""
    placed = []

    def put(a):
        if arena is None:
            return a
        p = arena.place(a, at_end, order if a.ndim > 1 else "C")
        placed.append((a, p))
        return p

    def out(shape, dtype):
        return (
            np.empty(shape, dtype)
            if arena is None
            else arena.empty(shape, dtype, at_end)
        )

    d = cls(temp, logits=put(logits))
    results = {}
    results["rsample"] = d.rsample(rng=11, out=out(logits.shape, logits.dtype)).copy()
    value = put(x)
    results["log_prob"] = d.log_prob(
        value, out=out(logits.shape[:-1], logits.dtype)
    ).copy()
    r = d.rsample_vjp(value, put(w))
    results["rsample_vjp logits"] = r.logits
    results["rsample_vjp temperature"] = r.temperature
    lv = d.log_prob_vjp(value, put(g_rows))
    for name in lv._fields:
        results[f"log_prob_vjp {name}"] = getattr(lv, name)
    return results, placed


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize(
    "at_end", [True, False], ids=["ends-at-guard", "starts-at-guard"]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k,rows", CASES)
@pytest.mark.parametrize("cls", [Relaxed, ExpRelaxed], ids=["simplex", "log-space"])
def test_kernels_read_and_write_only_inside_the_callers_arrays(
    simd_level, cls, k, rows, dtype, at_end, order
):
    rng = np.random.default_rng(k * 7919 + rows)
    logits = rng.normal(scale=2.0, size=(rows, k)).astype(dtype)
    if k >= 3:
        logits[1, 1] = -np.inf  # a masked category: the paths that read the logits
    temp = dtype(0.7)
    x = cls(temp, logits=logits).rsample(rng=5)
    w = rng.normal(size=(rows, k)).astype(dtype)
    g_rows = rng.normal(size=rows).astype(dtype)

    want, _ = _calls(cls, logits, temp, x, w, g_rows)
    got, placed = _calls(cls, logits, temp, x, w, g_rows, GuardedArena(), at_end, order)
    assert set(got) == set(want) and len(placed) == 4
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    for original, p in placed:
        np.testing.assert_array_equal(p, original)
