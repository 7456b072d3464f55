"""A NumPy oracle for every output of relaxcat, with an error bound per entry.

Each function recomputes a result from the README's formulas in x86 extended
precision (``np.longdouble``: a 64-bit significand and an exponent range up to
1e4932), so that ``T * y`` with T = 1e30 and y = -1e300 is still an ordinary
number and the oracle itself never overflows, underflows to a wrong zero or
produces NaN. Each returns ``(want, tol)``: the value and how far a correct
float64 implementation may be from it.

The bounds are forward-error bounds of the evaluation the README describes,
``eps`` times the sum of the magnitudes that enter each result (a sum of n terms
is within ``n eps sum |term|``), so they follow the conditioning of the problem:
tight for ordinary inputs, loose when a huge temperature times log x swamps the
logits, which no float64 evaluation can recover. They catch what the fuzz hunts
for: NaN, an infinity that should be finite or one of the wrong sign, and gross
errors; the accuracy of ordinary cases is measured by tests/python/test_reference.py.

:func:`compare` applies them: NaN never passes; an infinite ``want`` must be met
exactly; a ``want`` beyond the dtype's range must give the infinity of its sign
(or a finite value within ``tol``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

LD = np.longdouble
EPS64 = float(np.finfo(np.float64).eps)
# Results that pass through subnormal intermediates lose relative precision; an
# absolute error of a few of the smallest subnormals per operation covers them.
TINY = float(np.finfo(np.float64).smallest_subnormal)

# The bounds below multiply eps by the magnitudes that enter a result; this
# factor covers the few roundings per term (subtraction of the maximum, the
# product with T, relaxcat's log and exp within 2 ulps) with room to spare.
ROUNDINGS = 8.0


def _ld(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).astype(LD)


def out_eps(dtype) -> float:
    """Half an ulp of the output dtype: the final rounding."""
    return float(np.finfo(dtype).eps) / 2


def _lse(z: np.ndarray, live: np.ndarray) -> np.ndarray:
    """log sum exp over the live entries of each row; -inf for an empty row."""
    zl = np.where(live, z, -np.inf)
    m = np.max(zl, axis=-1, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0)
    with np.errstate(under="ignore", invalid="ignore"):
        s = np.sum(np.where(live, np.exp(zl - m_safe), 0), axis=-1)
        return np.log(s) + m_safe[..., 0]


# ------------------------------------------------------------------ sampling
def sample(logits, temperature, gumbels, a_tol=0.0):
    """``(x, y, tol_x, tol_y)``: x = softmax((a + g) / T) and y = log x per row.

    ``temperature`` has the row shape, ``logits`` and ``gumbels`` the full shape;
    ``a_tol`` is how far the logits relaxcat works with may be from ``logits``
    (0 for logits given, an ulp of log p for probs, which it stores as logs).
    """
    a = _ld(logits)
    g = _ld(gumbels)
    t = _ld(temperature)[..., None]
    live = a > -np.inf
    amax = np.max(a, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        u = np.where(live, (a - amax) + g, -np.inf)
    umax = np.max(u, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        s = np.where(live, (u - umax) / t, -np.inf)
    y = s - _lse(s, live)[..., None]
    with np.errstate(under="ignore"):
        x = np.where(live, np.exp(y), 0)

    # Error of s_k: a few roundings of |a - amax|, |g|, |u| and |umax| over T.
    mag = np.where(live, np.abs(a - amax) + np.abs(g) + np.abs(u) + np.abs(umax), 0)
    with np.errstate(over="ignore"):
        es = (ROUNDINGS * EPS64 * mag + 2 * _ld(a_tol)) / t
    es_max = np.max(es, axis=-1, keepdims=True)
    k = live.sum(axis=-1, keepdims=True)
    tol_y = 2 * (es + es_max) + ROUNDINGS * EPS64 * (np.abs(y) + k)
    # x may move anywhere in [exp(y - tol_y), exp(y + tol_y)]; in logs, so that an
    # x that underflows in the oracle still gets the room its bound allows.
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        up = np.exp(np.minimum(0, y + tol_y)) - x
        down = x - np.exp(y - tol_y)
        tol_x = np.minimum(1, np.maximum(up, down))
    tol_x = tol_x + ROUNDINGS * EPS64 * k * x
    tol_x = np.where(live, tol_x, 0)
    tol_y = np.where(live, tol_y, 0)
    return x, y, tol_x, tol_y


# ------------------------------------------------------------- log-density
def _zero_rule_sign(t: float, k: int, m: int) -> int:
    """The sign of T (K - m) - m, exactly (Note [zeros in a value])."""
    c = Fraction(t) * (k - m) - m
    return (c > 0) - (c < 0)


def log_prob(logits, temperature, value, grad, space, a_tol=None):
    """The log-density and its VJP at ``value``, row by row.

    Returns a dict of ``(want, tol)`` for "lp", "value", "logits", "temperature"
    (the value and logits gradients per element of the full shape, the others per
    row). ``space`` is "simplex" (value x) or "log" (value y = log x).
    """
    a64 = np.asarray(logits, dtype=np.float64)
    v64 = np.asarray(value, dtype=np.float64)
    t64 = np.asarray(temperature, dtype=np.float64)
    g64 = np.asarray(grad, dtype=np.float64)
    rows = t64.shape
    k_all = a64.shape[-1]
    a_tol = np.zeros(a64.shape) if a_tol is None else np.broadcast_to(a_tol, a64.shape)
    out = {
        "lp": (np.zeros(rows, LD), np.zeros(rows, LD)),
        "value": (np.zeros(rows + (k_all,), LD), np.zeros(rows + (k_all,), LD)),
        "logits": (np.zeros(rows + (k_all,), LD), np.zeros(rows + (k_all,), LD)),
        "temperature": (np.zeros(rows, LD), np.zeros(rows, LD)),
    }
    for idx in np.ndindex(*rows):
        res = _log_prob_row(
            a64[idx], float(t64[idx]), v64[idx], float(g64[idx]), space, a_tol[idx]
        )
        for name, (want, tol) in res.items():
            out[name][0][idx] = want
            out[name][1][idx] = tol
    return out


def _log_prob_row(a64, t64, v64, g64, space, a_tol):
    a = _ld(a64)
    t = LD(t64)
    g = LD(g64)
    k_all = a.shape[0]
    live = a > -np.inf
    kk = int(live.sum())
    if space == "simplex":
        with np.errstate(divide="ignore"):
            y = np.log(_ld(v64))
    else:
        y = _ld(v64)
    zero = np.zeros(k_all, LD)
    res = {}

    # Weight on an impossible category: density zero, gradients zero.
    if np.any(~live & (y > -np.inf)):
        res["lp"] = (LD(-np.inf), LD(0))
        for name in ("value", "logits"):
            res[name] = (zero, zero)
        res["temperature"] = (LD(0), LD(0))
        return res

    amax = np.max(a)
    ash = np.where(live, a - amax, 0)
    head = LD(math.lgamma(kk)) + (kk - 1) * np.log(t)
    zeros = live & (y == -np.inf)
    m = int(zeros.sum())
    head_mag = abs(LD(math.lgamma(kk))) + (kk - 1) * abs(np.log(t))

    if m:
        # Note [zeros in a value]: the limit as the zero coordinates shrink
        # together; the weights become softmax(a) over the zero set.
        sign = _zero_rule_sign(t64, kk, m) if space == "simplex" else 1
        lse0 = _lse(ash, zeros)
        with np.errstate(over="ignore", under="ignore"):
            w = np.where(zeros, np.exp(ash - lse0), 0)
        nz = live & ~zeros
        if sign > 0:
            lp = LD(-np.inf)
        elif sign < 0:
            lp = LD(np.inf)
        else:
            lin = np.sum(ash[live]) - (t + 1) * np.sum(y[nz])
            lp = head + lin - kk * lse0
        mag = head_mag + np.sum(np.abs(ash[live])) + (t + 1) * np.sum(np.abs(y[nz]))
        mag += kk * abs(lse0) + kk * math.log(max(kk, 1))
        mag += 2 * np.sum(_ld(a_tol)[live]) / (ROUNDINGS * EPS64)
        res["lp"] = (lp, ROUNDINGS * kk * EPS64 * mag if np.isfinite(lp) else LD(0))
        # Temperature: tends to -inf (times the sign of the upstream gradient).
        gt = LD(0) if g == 0 else (LD(-np.inf) if g > 0 else LD(np.inf))
        res["temperature"] = (gt, LD(0))
        ea = 4 * np.max(_ld(a_tol), initial=0)
        dw = np.minimum(1, w * (ROUNDINGS * kk * EPS64 + ea) + ROUNDINGS * kk * EPS64)
        gl = np.where(live, g * (1 - kk * w), 0)
        res["logits"] = (gl, np.where(live, abs(g) * kk * dw, 0) + EPS64 * np.abs(gl))
        base = -(t + 1) if space == "simplex" else -t
        dy = g * (base + kk * t * w)
        dy_tol = abs(g) * (kk * t * dw + ROUNDINGS * EPS64 * (abs(base) + kk * t * w))
        res["value"] = _value_grad(dy, dy_tol, v64, live, space)
        return res

    # The ordinary case: z = (a - max a) - T y over the live categories.
    with np.errstate(invalid="ignore"):
        z = np.where(live, ash - t * y, -np.inf)
    lse = _lse(z, live)
    with np.errstate(over="ignore", under="ignore"):
        w = np.where(live, np.exp(z - lse), 0)
    lin = np.sum(
        np.where(live, ash - (t + 1) * y if space == "simplex" else ash - t * y, 0)
    )
    lp = head + lin - kk * lse
    zmax = np.max(z)
    ez = (
        ROUNDINGS * EPS64 * (np.abs(ash) + t * np.abs(y) + np.abs(z - zmax) + abs(zmax))
    )
    ez = ez + 2 * _ld(a_tol)
    ez = np.where(live, ez, 0)
    mag = (
        head_mag
        + np.sum(ez) / (ROUNDINGS * EPS64)
        + np.sum(np.where(live, np.abs(y), 0))
    )
    mag += kk * math.log(max(kk, 1))
    res["lp"] = (lp, ROUNDINGS * kk * EPS64 * (mag + abs(lp)))

    # Gradients; each weight lies in [exp(z - lse - 2 ez), exp(z - lse + 2 ez)],
    # taken in logs so that a weight the oracle underflows to 0 keeps its room.
    ez_max = np.max(ez)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        zl = np.where(live, z - lse, -np.inf)
        up = np.exp(np.minimum(0, zl + 2 * ez_max)) - w
        down = w - np.exp(zl - 2 * ez_max)
        dw = np.minimum(1, np.maximum(up, down) + ROUNDINGS * kk * EPS64)
    gl = np.where(live, g * (1 - kk * w), 0)
    res["logits"] = (gl, np.where(live, abs(g) * kk * dw, 0) + EPS64 * np.abs(gl))
    ylive = np.where(live, y, 0)
    gt = g * ((kk - 1) / t + np.sum((kk * w - 1) * ylive))
    gt_tol = abs(g) * (
        ROUNDINGS * EPS64 * (kk - 1) / t
        + np.sum(kk * dw * np.abs(ylive))
        + ROUNDINGS * kk * EPS64 * np.sum((kk * w + 1) * np.abs(ylive))
    )
    res["temperature"] = (gt, gt_tol + EPS64 * abs(gt))
    base = -(t + 1) if space == "simplex" else -t
    dy = g * (base + kk * t * w)
    dy_tol = abs(g) * (kk * t * dw + ROUNDINGS * EPS64 * (abs(base) + kk * t * w))
    res["value"] = _value_grad(dy, dy_tol, v64, live, space)
    return res


def _value_grad(dy, dy_tol, v64, live, space):
    """d/dvalue from d/dy: divided by x on the simplex, with x = 0 giving an
    infinity of the numerator's sign (0 when the numerator is 0)."""
    if space == "log":
        return np.where(live, dy, 0), np.where(live, dy_tol, 0)
    x = _ld(v64)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(x > 0, dy / np.where(x > 0, x, 1), 0)
        inf = np.where(dy > 0, np.inf, np.where(dy < 0, -np.inf, 0)).astype(LD)
        q = np.where(x > 0, q, inf)
        qt = np.where(x > 0, dy_tol / np.where(x > 0, x, 1) + EPS64 * np.abs(q), 0)
    # At a zero whose numerator is within its error of 0, any sign (or 0) is right.
    unsure = (x == 0) & (np.abs(dy) <= dy_tol)
    qt = np.where(unsure, np.inf, qt)
    q = np.where(unsure, 0, q)
    return np.where(live, q, 0), np.where(live, qt, 0)


# ------------------------------------------------------------ rsample VJP
def rsample_vjp(value, grad, temperature, space, masked=None):
    """``(grad_logits, tol, grad_t, tol_t)`` of sum(grad * sample), per row, from
    the sample alone at the renormalised value (README "Numerics"). In log space
    every category but the ``masked`` ones is live, a -inf entry included (an
    underflow: Note [underflow in log space]); its temperature term needs the lost
    log, so a row with one where the gradient ds is not 0 has no value (NaN)."""
    v = _ld(value)
    w = _ld(grad)
    t = _ld(temperature)
    if space == "simplex":
        x = v
        with np.errstate(divide="ignore"):
            y = np.log(x)
    else:
        y = v
        with np.errstate(under="ignore"):
            x = np.exp(y)
    if space == "simplex" or masked is None:
        live = y > -np.inf
    else:
        live = ~np.asarray(masked, dtype=bool)
    k = live.sum(axis=-1, keepdims=True)
    s = np.sum(x, axis=-1, keepdims=True)
    xn = x / s
    if space == "simplex":
        wx = np.sum(np.where(x > 0, w * xn, 0), axis=-1, keepdims=True)
        ds = np.where(x > 0, xn * (w - wx), 0)
        ds_tol = (
            ROUNDINGS
            * k
            * EPS64
            * xn
            * (np.abs(w) + np.sum(np.abs(w) * xn, -1, keepdims=True))
        )
        on = x > 0
    else:
        wsum = np.sum(np.where(live, w, 0), axis=-1, keepdims=True)
        ds = np.where(live, w - xn * wsum, 0)
        ds_tol = (
            ROUNDINGS
            * k
            * EPS64
            * (np.abs(w) + xn * np.sum(np.where(live, np.abs(w), 0), -1, keepdims=True))
        )
        on = live
    ds_tol = np.where(on, ds_tol + ROUNDINGS * TINY * (1 + np.abs(w)), 0)
    lost = on & (y == -np.inf) & (ds != 0)  # log space only: x > 0 on the simplex
    on = on & (y > -np.inf)
    ly = np.where(on, y - np.log(s), 0)
    with np.errstate(invalid="ignore"):
        acc = np.sum(np.where(on, ds * ly, 0), axis=-1)
        acc = np.where(lost.any(axis=-1), LD(np.nan), acc)
        acc_tol = np.sum(
            np.where(
                on,
                ds_tol * np.abs(ly)
                + ROUNDINGS * k * EPS64 * np.abs(ds) * (np.abs(y) + 1),
                0,
            ),
            axis=-1,
        )
    gl = ds / t[..., None]
    gl_tol = ds_tol / t[..., None] + EPS64 * np.abs(gl)
    gt = -acc / t
    gt_tol = acc_tol / t + EPS64 * np.abs(gt)
    return gl, gl_tol, gt, gt_tol


# -------------------------------------------------------------- parameters
def normalized_logits(param, is_probs):
    """``(logits, probs, tol_logits, tol_probs)``: the properties d.logits and
    d.probs from the parameter as given."""
    p = _ld(param)
    if is_probs:
        total = np.sum(p, axis=-1, keepdims=True)
        probs = p / total
        with np.errstate(divide="ignore"):
            logits = np.log(probs)
        tol_p = ROUNDINGS * p.shape[-1] * EPS64 * probs
        tol_l = (
            ROUNDINGS * p.shape[-1] * EPS64 * (1 + np.abs(np.where(p > 0, logits, 0)))
        )
        return logits, probs, np.where(p > 0, tol_l, 0), tol_p
    live = p > -np.inf
    amax = np.max(p, axis=-1, keepdims=True)
    ash = np.where(live, p - amax, -np.inf)
    logits = ash - _lse(ash, live)[..., None]
    with np.errstate(under="ignore"):
        probs = np.exp(logits)
    k = p.shape[-1]
    tol_l = np.where(live, ROUNDINGS * k * EPS64 * (1 + np.abs(ash) + np.abs(amax)), 0)
    tol_p = ROUNDINGS * k * EPS64 * probs * (1 + np.abs(np.where(live, ash, 0)))
    return logits, probs, tol_l, tol_p


# ------------------------------------------------------------------ compare
def compare(name: str, got, want, tol, out_dtype) -> None:
    """Assert ``got`` (relaxcat's output) agrees with the oracle ``(want, tol)``."""
    got = np.asarray(got)
    want = np.broadcast_to(np.asarray(want, dtype=LD), got.shape)
    tol = np.broadcast_to(np.asarray(tol, dtype=LD), got.shape)
    g = got.astype(LD)
    big = LD(np.finfo(out_dtype).max)
    tol = tol + LD(out_eps(out_dtype)) * np.abs(np.where(np.isfinite(want), want, 0))
    tol = tol + LD(np.finfo(out_dtype).smallest_subnormal) + ROUNDINGS * TINY

    # NaN only where the oracle has one: a sum of +inf and -inf limits over
    # broadcast rows, which has no value.
    no_value = np.isnan(want)
    bad_nan = np.isnan(got) & ~no_value
    assert not np.any(bad_nan), f"{name}: NaN at {_first(bad_nan)}"
    want = np.where(no_value, LD(0), want)
    tol = np.where(no_value | np.isnan(tol), LD(np.inf), tol)
    with np.errstate(invalid="ignore", over="ignore"):
        want_inf = np.isinf(want)
        exact_ok = ~want_inf | (g == want) | np.isinf(tol)
        bad = ~exact_ok
        assert not bad.any(), _msg(name, "an infinity differs", got, want, tol, bad)

        fin = ~want_inf & ~np.isinf(tol)
        near = np.abs(g - want) <= tol
        # A result beyond the dtype's range rounds to the infinity of its sign.
        overflow = (np.abs(want) - tol > big) & (g == np.sign(want) * LD(np.inf))
        may_overflow = (np.abs(want) + tol > big) & (g == np.sign(want) * LD(np.inf))
        # When the bound covers 0 as well, either sign of infinity is possible.
        may_overflow |= (np.abs(want) + tol > big) & (tol >= np.abs(want)) & np.isinf(g)
        ok = ~fin | near | overflow | may_overflow
        bad = ~ok
        assert not bad.any(), _msg(name, "outside the error bound", got, want, tol, bad)


def _first(mask) -> tuple:
    return tuple(int(i) for i in np.argwhere(mask)[0]) if mask.ndim else ()


def _msg(name, what, got, want, tol, bad) -> str:
    i = _first(bad)
    return (
        f"{name}: {what} at {i} ({int(bad.sum())} entries): got {got[i]!r}, "
        f"want {float(want[i])!r} +- {float(tol[i])!r}"
    )
