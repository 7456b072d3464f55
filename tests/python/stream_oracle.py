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


def _float_q(key, stream, first, n):
    """The float noise's q (float32, its two roundings) and top bits of
    elements first .. first + n - 1."""
    words = np.empty(n, dtype=np.uint32)
    blocks = {}
    for j in range(n):
        i = first + j
        words[j] = _block(blocks, key, stream, i >> 2)[i % 4]
    m = (words & np.uint32(0x7FFFFFFF)).astype(np.float32)
    q = (m + np.float32(0.5)) * np.float32(2.0**-32)
    return q, (words >> np.uint32(31)) == 1


def oracle_gumbels_f32(key, stream, first, n):
    """The documented float noise: q in NumPy float32 (the same two roundings),
    then -log(-log u) in float64 from q without rounding u."""
    q32, top = _float_q(key, stream, first, n)
    q = q32.astype(np.float64)
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


def _f32(x):
    return np.float32(x)


def _readme_logf_parts(k, f):
    """The float32 log of the README's float noise from its reduction (k, f):
    every step a float32 operation, in the README's order."""
    p1, p2, p3, p4 = (
        _f32(0xAAAAAA * 2.0**-24),
        _f32(0xCCCE13 * 2.0**-25),
        _f32(0x91E9EE * 2.0**-25),
        _f32(0xF89E26 * 2.0**-26),
    )
    h = f * f / _f32(2)
    s = f / (_f32(2) + f)
    z = s * s
    w = z * z
    r = z * (p1 + w * p3) + w * (p2 + w * p4)
    dk = k.astype(np.float32)
    ln2_hi, ln2_lo = (
        _f32(float.fromhex("0x1.62e3p-1")),
        _f32(float.fromhex("0x1.2fefa2p-17")),
    )
    return dk * ln2_hi - ((h - (s * (h + r) + dk * ln2_lo)) - f)


def _readme_logf_split(x):
    b = x.view(np.uint32) + np.uint32(0x3F800000 - 0x3F3504F3)
    k = (b >> np.uint32(23)).astype(np.int32) - 127
    f = ((b & np.uint32(0x7FFFFF)) + np.uint32(0x3F3504F3)).view(np.float32) - _f32(1)
    return k, f


def readme_gumbels_f32(key, stream, first, n):
    """The float noise exactly as the README defines it, in NumPy float32."""
    q, top = _float_q(key, stream, first, n)
    kq, fq = _readme_logf_split(q)
    near_one = q <= _f32(0.29289322)
    k = np.where(top, kq, np.where(near_one, 0, -1)).astype(np.int32)
    f = np.where(top, fq, np.where(near_one, -q, _f32(1) - _f32(2) * q))
    e = -_readme_logf_parts(k, f.astype(np.float32))
    ke, fe = _readme_logf_split(e.astype(np.float32))
    return -_readme_logf_parts(ke, fe)
