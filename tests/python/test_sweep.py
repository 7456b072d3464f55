"""A numerical sweep: temperatures 1e-4 .. 1e4, logit spreads up to 1e4, both
spaces, both parameterisations, masked or not, float32 and float64; every output
and gradient against the extended-precision oracle of tests/fuzz/fuzz_oracle.py.

tests/python/test_edges.py checks that such a sweep gives no NaN and that exact
zeros follow the rule; this file checks the values themselves, within the
oracle's error bound (which follows the conditioning: tight where a float64
evaluation can be exact, loose only where T log x swamps the logits), so that a
gradient cannot be silently wrong at an extreme, and that every infinity is one
the mathematics gives, with its sign.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

import relaxcat

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "fuzz"))
import fuzz_oracle as oracle  # noqa: E402

Relaxed = relaxcat.RelaxedOneHotCategorical
ExpRelaxed = relaxcat.ExpRelaxedOneHotCategorical
SPACES = {"simplex": Relaxed, "log": ExpRelaxed}

SWEEP_T = np.logspace(-4, 4, 17)
SPREADS = [0.0, 1.0, 10.0, 1e2, 1e3, 1e4]
K = 6
SAMPLES = 6  # samples per temperature


def _base_logits(spread: float, masked: bool) -> np.ndarray:
    """K logits spread over [-spread, spread], shifted by 5e3 (Note [shift before
    scaling]), with category 2 masked if asked."""
    rng = np.random.default_rng(int(spread) + 3)
    base = np.linspace(-1.0, 1.0, K) * spread + rng.normal(size=K) + 5e3
    if masked:
        base[2] = -np.inf
    return base


def _distribution(cls, dtype, spread, masked, param):
    base = _base_logits(spread, masked)
    t = SWEEP_T.astype(dtype)[:, None]  # one temperature per row
    if param == "logits":
        kwargs = {"logits": np.broadcast_to(base, (SWEEP_T.size, K)).astype(dtype)}
    else:
        with np.errstate(under="ignore"):
            probs = np.exp(base - np.max(base))  # far categories underflow to 0
        kwargs = {"probs": np.broadcast_to(probs, (SWEEP_T.size, K)).astype(dtype)}
    # Expanded to the samples' rows, so that every gradient stays per row (no
    # sums over broadcast rows, whose rounding would blur the comparison).
    return cls(t, **kwargs).expand((SAMPLES, SWEEP_T.size))


def _working_logits(d, param):
    """The logits relaxcat works with (float64 view) and their uncertainty."""
    if param == "logits":
        a = np.asarray(d._a, dtype=np.float64)
        return a, np.zeros(a.shape)
    p = np.asarray(d._probs_given, dtype=np.float64)
    with np.errstate(divide="ignore"):
        a = np.log(p)
    eps = float(np.finfo(d.dtype).eps)
    return a, np.where(p > 0, eps * (np.abs(np.where(p > 0, a, 0)) + 1), 0)


def _probs_chain(d, want, tol, dtype):
    """dL/dq from dL/dlogits through q / sum q (README: 0 at a zero probability)."""
    q = np.asarray(d._probs_given, dtype=np.float64).astype(oracle.LD)
    qs = q.sum(axis=-1, keepdims=True)
    gs = want.sum(axis=-1, keepdims=True)
    safe = np.where(q > 0, q, 1)
    # relaxcat rounds the logits gradient to the dtype before this step.
    tol = tol + oracle.out_eps(dtype) * np.abs(want)
    w = np.where(q > 0, want / safe - gs / qs, 0)
    t = np.where(q > 0, tol / safe + tol.sum(-1, keepdims=True) / qs, 0)
    return w, t + 4 * K * oracle.EPS64 * np.abs(w)


@pytest.mark.parametrize("masked", [False, True], ids=["live", "masked"])
@pytest.mark.parametrize("param", ["logits", "probs"])
@pytest.mark.parametrize("space", ["simplex", "log"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sweep_outputs_and_gradients_match_the_oracle(dtype, space, param, masked):
    cls = SPACES[space]
    rng = np.random.default_rng(17)
    for spread in SPREADS:
        where = f"spread {spread}"
        d = _distribution(cls, dtype, spread, masked, param)
        a, a_tol = _working_logits(d, param)
        full = d.batch_shape + d.event_shape
        a_full, a_tol_full = a, a_tol
        t_rows = np.broadcast_to(SWEEP_T.astype(dtype), d.batch_shape)

        # The sample, from the documented stream.
        s = d.rsample(rng=11)
        noise = relaxcat._core.gumbels(
            11, 0, 0, s.size, float32=dtype == np.float32
        ).reshape(full)
        x, y, tx, ty = oracle.sample(a_full, t_rows, noise, a_tol_full)
        if space == "simplex":
            oracle.compare(f"x, {where}", s, x, tx, dtype)
        else:
            oracle.compare(f"y, {where}", s, y, ty, dtype)
            assert np.all(np.isfinite(s[a > -np.inf])), where

        # Its density and the density's gradient.
        g_rows = rng.normal(size=d.batch_shape).astype(dtype)
        res = oracle.log_prob(a_full, t_rows, s, g_rows, space, a_tol_full)
        oracle.compare(f"log_prob, {where}", d.log_prob(s), *res["lp"], dtype)
        h = d.log_prob_vjp(s, g_rows)
        oracle.compare(f"log_prob_vjp value, {where}", h.value, *res["value"], dtype)
        oracle.compare(
            f"log_prob_vjp T, {where}", h.temperature, *res["temperature"], dtype
        )
        want, tol = res["logits"]
        if param == "probs":
            want, tol = _probs_chain(d, want, tol, dtype)
        oracle.compare(f"log_prob_vjp {param}, {where}", h[1], want, tol, dtype)

        # The rsample VJP.
        w = rng.normal(size=full).astype(dtype)
        gl, gl_tol, gt, gt_tol = oracle.rsample_vjp(s, w, t_rows, space)
        r = d.rsample_vjp(s, w)
        oracle.compare(f"rsample_vjp T, {where}", r.temperature, gt, gt_tol, dtype)
        want, tol = gl, gl_tol
        if param == "probs":
            want, tol = _probs_chain(d, want, tol, dtype)
        oracle.compare(f"rsample_vjp {param}, {where}", r[0], want, tol, dtype)

        # The parameter properties.
        lw, pw, tl, tp = oracle.normalized_logits(d._param()[0, 0], param == "probs")
        tl = tl + a_tol[0, 0] + np.max(a_tol[0, 0])
        oracle.compare(f"logits property, {where}", d.logits[0, 0], lw, tl, dtype)
        oracle.compare(f"probs property, {where}", d.probs[0, 0], pw, tp, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sweep_reaches_underflowing_samples_and_each_branch_of_the_zero_rule(dtype):
    # The sweep above is meaningful: at low T and a wide spread, samples have
    # exact zeros, and the simplex density takes +inf (T small) and -inf (zeros
    # at a large T, which only the widest spread gives).
    lps, zeros = [], []
    for spread in (1e2, 1e4):
        d = _distribution(Relaxed, dtype, spread, False, "logits")
        x = d.rsample(rng=11)
        lps.append(d.log_prob(x))
        zeros.append((x == 0).any(axis=-1))
    lp, zeros = np.concatenate(lps), np.concatenate(zeros)
    assert zeros.any() and (~zeros).any()
    assert np.any(lp == np.inf) and np.any(lp == -np.inf)
    assert np.all(np.isfinite(lp[~zeros]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spread", [1e2, 1e4])
def test_low_temperature_log_space_samples_keep_a_finite_density_where_x_underflows(
    dtype, spread
):
    # At T = 1e-4 the simplex sample underflows to a vertex, and its log-density
    # is +inf or -inf by the zero rule; the same sample in log space is finite,
    # and so are its density and every gradient of it.
    t = dtype(1e-4)
    logits = (np.linspace(-1.0, 1.0, K) * spread).astype(dtype)
    x = Relaxed(t, logits=logits).rsample((50,), rng=8)
    e = ExpRelaxed(t, logits=logits)
    y = e.rsample((50,), rng=8)
    assert np.all((x == 0).sum(axis=-1) >= 1), "x must underflow"
    assert np.all(np.isfinite(y))
    lp = e.log_prob(y)
    assert np.all(np.isfinite(lp))
    g = e.log_prob_vjp(y, np.ones(lp.shape, dtype))
    assert all(np.all(np.isfinite(a)) for a in g)
    r = e.rsample_vjp(y, np.random.default_rng(2).normal(size=y.shape).astype(dtype))
    assert all(np.all(np.isfinite(a)) for a in r)
