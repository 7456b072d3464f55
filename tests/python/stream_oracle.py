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


def _double_uniforms(key, stream, first, n):
    """The double noise's uniforms u of elements first .. first + n - 1."""
    words = np.empty(n, dtype=np.uint64)
    blocks = {}
    for j in range(n):
        i = first + j
        w = _block(blocks, key, stream, i >> 1)
        lo, hi = (w[0], w[1]) if i % 2 == 0 else (w[2], w[3])
        words[j] = lo | (hi << 32)
    return ((words >> np.uint64(12)).astype(np.float64) + 0.5) * 2.0**-52


def oracle_gumbels(key, stream, first, n):
    """The documented stream in NumPy float64, with _core.philox4x32 for blocks."""
    u = _double_uniforms(key, stream, first, n)
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


# fdlibm's constants of e_log.c (Sun Microsystems, 1993), which the README's
# "The random stream" names: Lg1..Lg7, ln2_hi, ln2_lo.
_LG = (
    6.666666666666735130e-01,
    3.999999999940941908e-01,
    2.857142874366239149e-01,
    2.222219843214978396e-01,
    1.818357216161805012e-01,
    1.531383769920937332e-01,
    1.479819860511658591e-01,
)
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10


def readme_log(x):
    """log_d as the README's "The random stream" spells it out, step by step in
    NumPy float64 (each operation one IEEE rounding, none fused), for positive
    normal x: the steps a port of the stream would take."""
    x = np.asarray(x, dtype=np.float64)
    bits = x.view(np.uint64)
    hx = (bits >> np.uint64(32)) + np.uint64(0x3FF00000 - 0x3FE6A09E)
    k = (hx >> np.uint64(20)).astype(np.int64) - 0x3FF
    high = (hx & np.uint64(0xFFFFF)) + np.uint64(0x3FE6A09E)
    f = ((high << np.uint64(32)) | (bits & np.uint64(MASK32))).view(np.float64) - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    lg1, lg2, lg3, lg4, lg5, lg6, lg7 = _LG
    t1 = w * (lg2 + w * (lg4 + w * lg6))
    t2 = z * (lg1 + w * (lg3 + w * (lg5 + w * lg7)))
    h = f * f / 2.0
    dk = k.astype(np.float64)
    return dk * _LN2_HI - ((h - (s * (h + (t1 + t2)) + dk * _LN2_LO)) - f)


def readme_gumbels(key, stream, first, n):
    """The double noise exactly as the README defines it: its uniform, then
    -log(-log u) with readme_log, so the bits must match the library's."""
    u = _double_uniforms(key, stream, first, n)
    return -readme_log(-readme_log(u))
