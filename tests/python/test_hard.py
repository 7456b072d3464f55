"""Straight-through (hard) samples and the functional gumbel_softmax."""

from __future__ import annotations

import math

import numpy as np
import pytest

import relaxcat

# Argmax frequencies against probs: |freq - p| < 5.5 binomial standard errors;
# two-sided false-failure rate 4e-8 per category.
Z = 5.5
# Central differences in float64 with step 1e-6: truncation and rounding ~1e-9.
FD_TOL = 1e-7


def test_hard_sample_is_the_one_hot_of_the_soft_sample():
    d = relaxcat.RelaxedOneHotCategorical(
        0.7, logits=np.array([[1.0, 0.0, -np.inf, 0.5]])
    )
    hs = d.rsample((500,), rng=4, hard=True)
    assert isinstance(hs, relaxcat.HardSample)
    assert np.array_equal(hs.soft, d.rsample((500,), rng=4))
    assert set(np.unique(hs.hard)) <= {0.0, 1.0}
    assert np.all(hs.hard.sum(axis=-1) == 1)
    assert np.array_equal(hs.hard.argmax(-1), hs.soft.argmax(-1))
    assert np.all(hs.hard[..., 2] == 0)
    same = d.sample((500,), rng=4, hard=True)
    assert np.array_equal(same.hard, hs.hard) and np.array_equal(same.soft, hs.soft)


def test_ties_go_to_the_lowest_index_and_masked_never_win():
    soft = np.array([[0.0, 0.5, 0.5], [0.25, 0.25, 0.5], [0.0, 1.0, 0.0]])
    from relaxcat._extras import one_hot

    assert one_hot(soft).tolist() == [[0, 1, 0], [0, 0, 1], [0, 1, 0]]


def test_log_space_hard_sample_is_the_one_hot_on_the_simplex():
    e = relaxcat.ExpRelaxedOneHotCategorical(0.05, logits=np.array([0.0, -1.0, 2.0]))
    hs = e.rsample((100,), rng=1, hard=True)
    assert np.array_equal(hs.hard.argmax(-1), hs.soft.argmax(-1))
    assert np.all(hs.hard.sum(axis=-1) == 1) and np.all(hs.soft <= 0)


def test_argmax_frequencies_are_the_probabilities():
    # The argmax of (logits + G) / T is Gumbel-max: categorical(probs) at any T.
    p = np.array([0.5, 0.3, 0.15, 0.05])
    for t in (0.3, 5.0):
        d = relaxcat.RelaxedOneHotCategorical(t, probs=p)
        n = 200_000
        freq = d.rsample((n,), rng=99, hard=True).hard.mean(axis=0)
        se = np.sqrt(p * (1 - p) / n)
        assert np.all(np.abs(freq - p) < Z * se)


def test_hard_vjp_is_the_soft_vjp_and_matches_finite_differences():
    logits = np.array([0.4, -0.3, 1.1])
    t = 0.8
    d = relaxcat.RelaxedOneHotCategorical(t, logits=logits)
    gum = np.array([0.3, -0.7, 0.2])
    hs = d.rsample(gumbels=gum, hard=True)
    w = np.array([0.5, -1.0, 2.0])
    vjp = d.rsample_vjp(hs.soft, w)
    fvjp = relaxcat.gumbel_softmax_vjp(hs.soft, w, t)
    np.testing.assert_allclose(fvjp.logits, vjp.logits, rtol=1e-15)
    np.testing.assert_allclose(fvjp.temperature, vjp.temperature, rtol=1e-15)

    def f(lg, tt):
        x = relaxcat.RelaxedOneHotCategorical(tt, logits=lg).rsample(gumbels=gum)
        return float(w @ x)

    h = 1e-6
    num = [(f(logits + h * e, t) - f(logits - h * e, t)) / (2 * h) for e in np.eye(3)]
    np.testing.assert_allclose(vjp.logits, num, atol=FD_TOL)
    assert (
        abs(vjp.temperature - (f(logits, t + h) - f(logits, t - h)) / (2 * h)) < FD_TOL
    )


@pytest.mark.parametrize("t,want", [(1.0, np.inf), (3.0, -np.inf)])
def test_log_prob_of_a_hard_sample_is_the_vertex_limit(t, want):
    # K = 3 and m = 2 zeros: +inf when T < K - 1 = 2, -inf when T > 2
    # (Note [zeros in a value]); the soft sample's log_prob is finite.
    d = relaxcat.RelaxedOneHotCategorical(t, logits=np.array([1.0, 0.0, -1.0]))
    hs = d.rsample((4,), rng=2, hard=True)
    assert np.all(d.log_prob(hs.hard) == want)
    assert np.all(np.isfinite(d.log_prob(hs.soft)))
    at_k_minus_1 = relaxcat.RelaxedOneHotCategorical(
        2.0, logits=np.array([1.0, 0.0, -1.0])
    )
    assert np.all(np.isfinite(at_k_minus_1.log_prob(hs.hard)))


def test_gumbel_softmax_follows_axis_and_matches_the_class():
    logits = np.random.default_rng(0).standard_normal((3, 5))
    x0 = relaxcat.gumbel_softmax(logits, 0.5, axis=0, rng=8)
    x1 = relaxcat.gumbel_softmax(logits.T, 0.5, axis=-1, rng=8)
    assert np.array_equal(x0, x1.T)
    np.testing.assert_allclose(x0.sum(axis=0), 1, rtol=1e-15)
    hs = relaxcat.gumbel_softmax(logits, 0.5, hard=True, axis=0, rng=8)
    assert np.array_equal(hs.soft, x0) and np.array_equal(
        hs.hard.argmax(0), x0.argmax(0)
    )
    d = relaxcat.RelaxedOneHotCategorical(0.5, logits=logits.T)
    w = np.random.default_rng(1).standard_normal(x0.shape)
    g = relaxcat.gumbel_softmax_vjp(hs.soft, w, 0.5, axis=0)
    ref = d.rsample_vjp(x1, w.T)
    np.testing.assert_allclose(g.logits, ref.logits.T, rtol=1e-14)
    assert g.temperature.shape == () and math.isclose(
        g.temperature, ref.temperature, rel_tol=1e-14
    )


def test_gumbel_softmax_vjp_takes_the_per_row_temperature_its_forward_call_took():
    # gumbel_softmax reads T[:, None] per row (the torch idiom); the backward
    # call had rejected it ("would enlarge the sample's rows").
    logits = np.random.default_rng(0).standard_normal((4, 3))
    t = np.array([0.5, 1.0, 2.0, 0.7])
    x = relaxcat.gumbel_softmax(logits, t[:, None], rng=3)
    assert np.array_equal(x, relaxcat.gumbel_softmax(logits, t, rng=3))
    w = np.random.default_rng(1).standard_normal((4, 3))
    g = relaxcat.gumbel_softmax_vjp(x, w, t[:, None])
    ref = relaxcat.RelaxedOneHotCategorical(t[:, None], logits=logits).rsample_vjp(x, w)
    assert g.temperature.shape == (4, 1)
    np.testing.assert_array_equal(g.temperature, ref.temperature)
    np.testing.assert_array_equal(g.logits, ref.logits)
    flat = relaxcat.gumbel_softmax_vjp(x, w, t)
    np.testing.assert_array_equal(g.temperature[:, 0], flat.temperature)


def test_gumbel_softmax_reads_a_keepdims_temperature_on_any_axis():
    # Regression (a fresh-user review): T of shape (3, 4, 1) was read per row for
    # axis=-1, but (3, 1, 5) for axis=1 was refused ("would enlarge").
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((3, 4, 5))
    t = rng.uniform(0.5, 2.0, (3, 5))
    x = relaxcat.gumbel_softmax(logits, t[:, None, :], axis=1, rng=4)
    assert np.array_equal(x, relaxcat.gumbel_softmax(logits, t, axis=1, rng=4))
    w = rng.standard_normal(x.shape)
    g = relaxcat.gumbel_softmax_vjp(x, w, t[:, None, :], axis=1)
    flat = relaxcat.gumbel_softmax_vjp(x, w, t, axis=1)
    assert g.temperature.shape == (3, 1, 5)
    np.testing.assert_array_equal(g.temperature[:, 0, :], flat.temperature)
    np.testing.assert_array_equal(g.logits, flat.logits)
    with pytest.raises(ValueError, match="would enlarge"):
        relaxcat.gumbel_softmax(logits, np.ones((2, 1, 3, 5)), axis=1)
    # Every axis of the logits, but not length 1 at the category axis.
    with pytest.raises(ValueError, match=r"needs length 1 at the category axis 1"):
        relaxcat.gumbel_softmax(logits, np.ones((2, 3, 5)), axis=1)
    # A second review: messages name the temperature as given, a masked one is
    # refused, and the VJP takes the per-row form the forward call takes.
    with pytest.raises(ValueError, match=r"got 0.0 at index \(1, 0, 2\)$"):
        relaxcat.gumbel_softmax(
            logits, np.where(np.arange(15).reshape(3, 1, 5) == 7, 0.0, 1.0), axis=1
        )
    with pytest.raises(
        ValueError, match=r"temperature of shape \(2, 1\) does not broadcast .* \(3,\)$"
    ):
        relaxcat.gumbel_softmax(np.zeros((3, 4)), np.ones((2, 1)))
    big = np.ones((3, 1), np.float64)
    big[1, 0] = 1e39
    with pytest.raises(ValueError, match=r"at index \(1, 0\)"):
        relaxcat.gumbel_softmax(np.zeros((3, 4), np.float32), big)
    with pytest.raises(TypeError, match="MaskedArray"):
        relaxcat.gumbel_softmax(
            np.zeros((2, 3)), np.ma.array([[1.0], [2.0]], mask=[[0], [1]]), rng=1
        )
    # One temperature per column of logits whose categories run down axis 0:
    # keepdims, shape (1, 5); the gradient keeps that shape. (Shape (5, 1) had
    # been read so too, in the moved layout; it is refused now, test_errors.)
    lg = rng.standard_normal((4, 5))
    t5 = rng.uniform(0.5, 2.0, (1, 5))
    x5 = relaxcat.gumbel_softmax(lg, t5, axis=0, rng=2)
    g5 = relaxcat.gumbel_softmax_vjp(x5, np.ones_like(x5), t5, axis=0)
    assert g5.temperature.shape == (1, 5)
    ref = relaxcat.RelaxedOneHotCategorical(t5[0], logits=lg.T).rsample_vjp(
        x5.T, np.ones_like(x5.T)
    )
    np.testing.assert_array_equal(g5.logits, ref.logits.T)
    np.testing.assert_array_equal(g5.temperature[0], ref.temperature)


def test_gumbel_softmax_float32_and_bad_input():
    x = relaxcat.gumbel_softmax(np.zeros(4, dtype=np.float32), 1.0, rng=0)
    assert x.dtype == np.float32
    with pytest.raises(ValueError, match="temperature must be positive"):
        relaxcat.gumbel_softmax(np.zeros(4), 0.0)
    with pytest.raises(ValueError, match="axis must be in"):
        relaxcat.gumbel_softmax(np.zeros(4), 1.0, axis=1)
    # One row of logits: a temperature of one axis is "every axis" of them.
    with pytest.raises(ValueError, match=r"give shape \(1,\) or \(\)$"):
        relaxcat.gumbel_softmax(np.zeros(4), np.ones(3), rng=0)
    with pytest.raises(ValueError, match="would enlarge"):
        relaxcat.gumbel_softmax(np.zeros(4), np.ones((2, 3)), rng=0)
    with pytest.raises(ValueError, match="sample_soft must sum to 1"):
        relaxcat.gumbel_softmax_vjp(np.array([0.5, 0.6]), np.ones(2), 1.0)
