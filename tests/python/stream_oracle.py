"""Oracles of relaxcat's two documented noise streams (README, "The random
stream"), in NumPy from Philox blocks of _core.philox4x32, whose known answers
test_stream.py checks against Random123 and a plain-Python Philox."""

from __future__ import annotations

import numpy as np

from relaxcat import _core

MASK32 = 0xFFFFFFFF


def _block(cache, key, stream, b):
    if b not in cache:
        counter = [b & MASK32, (b >> 32) & MASK32, stream & MASK32, stream >> 32]
        cache[b] = _core.philox4x32(counter, [key & MASK32, key >> 32], 10)
    return cache[b]


def oracle_gumbels(key, stream, first, n):
    """The documented stream in NumPy float64, with _core.philox4x32 for blocks."""
    words = np.empty(n, dtype=np.uint64)
    blocks = {}
    for j in range(n):
        i = first + j
        w = _block(blocks, key, stream, i >> 1)
        lo, hi = (w[0], w[1]) if i % 2 == 0 else (w[2], w[3])
        words[j] = lo | (hi << 32)
    u = ((words >> np.uint64(12)).astype(np.float64) + 0.5) * 2.0**-52
    return -np.log(-np.log(u))


def oracle_gumbels_f32(key, stream, first, n):
    """The documented float noise: q in NumPy float32 (the same two roundings),
    then -log(-log u) in float64 from q without rounding u."""
    words = np.empty(n, dtype=np.uint32)
    blocks = {}
    for j in range(n):
        i = first + j
        words[j] = _block(blocks, key, stream, i >> 2)[i % 4]
    m = (words & np.uint32(0x7FFFFFFF)).astype(np.float32)
    q = ((m + np.float32(0.5)) * np.float32(2.0**-32)).astype(np.float64)
    top = (words >> np.uint32(31)) == 1
    e = np.where(top, -np.log(q), -np.log1p(-q))
    return -np.log(e)
