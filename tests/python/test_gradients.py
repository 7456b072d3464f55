"""Every vector-Jacobian product of both classes against central finite
differences in float64, and the float32 VJPs against the float64 ones.

The sample is made a deterministic function of the parameters by fixing its
noise with ``gumbels=``, so ``sum(w * rsample(...))`` can be differenced like any
other function. ``log_prob`` is differenced with validation off, because a step in
one coordinate of a value leaves the simplex; its value gradient is documented as
the raw partial derivatives with the K coordinates free, which is what a
coordinate-wise difference measures.
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest

import relaxcat

CLASSES = [relaxcat.RelaxedOneHotCategorical, relaxcat.ExpRelaxedOneHotCategorical]
CLASS_IDS = ["simplex", "log"]

# Central differences: truncation error ~ (h/scale)^2 and rounding error
# ~ eps |f| / (h/scale); a relative step of 1e-5 of each argument's natural scale
# (T for logits when T < 1, T itself for T, x_k for x_k, 1/T for y_k) keeps both
# near 1e-10 of the function's size.
FD_REL_STEP = 1e-5
# The largest accepted |analytic - difference| relative to max(1, largest |gradient
# entry|, |f| * 1e-5 / scale, the size of the rounding term): the differences
# themselves err by up to 7e-10 on these cases, so 1e-8 leaves a factor 10 and still
# catches a formula wrong in the eighth digit.
FD_RTOL = 1e-8

# float32 against float64 at the same float32 inputs: the kernels work in double
# and round each output once (half a float32 ulp, 2^-24 relative); four times
# that, relative to the largest entry, leaves room for the double intermediates.
F32_SAME_INPUT_RTOL = 2.0**-22
# float32 pipeline (sample stored in float32, then its VJP) against the float64
# pipeline from the same float32-rounded parameters and noise: the sample's own
# rounding (half a float32 ulp of each entry, not amplified thanks to Note
# [renormalised sample]) plus the output's; measured <= 5e-8, bound 2^-21 = 4.8e-7.
F32_PIPELINE_RTOL = 2.0**-21


# ----------------------------------------------------------------------- helpers
def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _central_differences(f, x: np.ndarray, step: np.ndarray, skip=None) -> np.ndarray:
    """d f / d x for every entry of x by central differences; entries where
    ``skip`` is True are left at 0."""
    grad = np.zeros(x.shape, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        if skip is not None and skip[idx]:
            continue
        h = float(step[idx])
        xp = x.copy()
        xm = x.copy()
        xp[idx] += h
        xm[idx] -= h
        grad[idx] = (f(xp) - f(xm)) / (xp[idx] - xm[idx])
    return grad


def _assert_close_to_fd(analytic, fd, fscale: float, what: str, skip=None):
    analytic = np.asarray(analytic, dtype=np.float64)
    assert analytic.shape == fd.shape, what
    assert not np.any(np.isnan(analytic)), what
    live = np.ones(fd.shape, bool) if skip is None else ~skip
    scale = max(1.0, float(np.max(np.abs(analytic[live]), initial=0.0)), fscale)
    err = float(np.max(np.abs(analytic[live] - fd[live]), initial=0.0)) / scale
    assert err <= FD_RTOL, f"{what}: relative error {err:.3g} (scale {scale:.3g})"


def _logit_step(temperature) -> np.ndarray:
    t = np.asarray(temperature, dtype=np.float64)
    return FD_REL_STEP * np.min(np.minimum(t, 1.0))


def _make(cls, temperature, param, param_name, validate=True):
    return cls(temperature, validate_args=validate, **{param_name: param})


def _check_rsample_vjp(
    cls, temperature, param, param_name="logits", sample_shape=(), seed=0
):
    """rsample_vjp against differences of f = sum(w * rsample(gumbels=G))."""
    rng = np.random.default_rng(seed)
    temperature = np.asarray(temperature, dtype=np.float64)
    d = _make(cls, temperature, param, param_name)
    shape = tuple(sample_shape) + d.batch_shape + d.event_shape
    gumbels = rng.gumbel(size=shape)
    w = rng.normal(size=shape)
    masked = np.broadcast_to(d.logits == -np.inf, param.shape)
    # A masked entry of the sample is a constant (0, or -inf in log space): leave
    # it out of f, while w stays nonzero there for the VJP, which must ignore it.
    live_out = np.broadcast_to(d.logits > -np.inf, shape)

    def f(p, t):
        sample = _make(cls, t, p, param_name).rsample(sample_shape, gumbels=gumbels)
        return float(np.sum(w * sample, where=live_out))

    x = d.rsample(sample_shape, gumbels=gumbels)
    got = d.rsample_vjp(x, w)
    assert got.temperature.shape == temperature.shape
    assert got[0].shape == param.shape
    fscale = abs(f(param, temperature))

    # The parameter: logits step on the scale of T, probs relative to each entry.
    if param_name == "logits":
        step = np.full(param.shape, _logit_step(temperature))
        fsc = fscale * FD_REL_STEP / step.flat[0]
    else:
        step = FD_REL_STEP * param
        fsc = fscale
    fd = _central_differences(lambda p: f(p, temperature), param, step, skip=masked)
    _assert_close_to_fd(got[0], fd, fsc, f"rsample_vjp d/d{param_name}", skip=masked)
    assert np.all(got[0][masked] == 0.0)

    # The temperature, relative steps.
    fd_t = _central_differences(
        lambda t: f(param, t), temperature, FD_REL_STEP * temperature
    )
    _assert_close_to_fd(got.temperature, fd_t, fscale, "rsample_vjp d/dT")
    return got


def _value_for(cls, batch_value_shape, k, masked_row, rng):
    """A point of the support with moderate coordinates (no underflow), exact
    zeros (or -inf) on masked categories."""
    z = 1.5 * rng.normal(size=batch_value_shape + (k,))
    z = np.where(np.broadcast_to(masked_row, z.shape), -np.inf, z)
    x = _softmax(z)
    if cls is relaxcat.ExpRelaxedOneHotCategorical:
        with np.errstate(divide="ignore"):
            return np.log(x)
    return x


def _check_log_prob_vjp(
    cls,
    temperature,
    param,
    param_name="logits",
    value_lead=(),
    value=None,
    seed=1,
    validate=True,
):
    """log_prob_vjp against differences of f = sum(g * log_prob(value))."""
    rng = np.random.default_rng(seed)
    temperature = np.asarray(temperature, dtype=np.float64)
    d = _make(cls, temperature, param, param_name, validate)
    k = d.event_shape[0]
    masked_param = np.broadcast_to(d.logits == -np.inf, param.shape)
    masked_cols = np.any((d.logits == -np.inf).reshape(-1, k), axis=0)
    if value is None:
        value = _value_for(cls, tuple(value_lead) + d.batch_shape, k, masked_cols, rng)
    out_shape = np.broadcast_shapes(value.shape[:-1], d.batch_shape)
    g = rng.normal(size=out_shape)
    masked_value = np.broadcast_to(masked_cols, value.shape)

    def f(v, p, t):
        dist = _make(cls, t, p, param_name, validate=False)
        return float(np.sum(g * dist.log_prob(v)))

    got = d.log_prob_vjp(value, g)
    assert got.value.shape == value.shape
    assert got[1].shape == param.shape
    assert got.temperature.shape == temperature.shape
    fscale = abs(f(value, param, temperature))
    tmax = float(np.max(temperature))

    # The value: x_k relative, y_k on the scale 1/T.
    if cls is relaxcat.RelaxedOneHotCategorical:
        vstep = FD_REL_STEP * value
        vsc = fscale
    else:
        vstep = np.full(value.shape, FD_REL_STEP * min(1.0, 1.0 / tmax))
        vsc = fscale * FD_REL_STEP / vstep.flat[0]
    fd_v = _central_differences(
        lambda v: f(v, param, temperature), value, vstep, skip=masked_value
    )
    _assert_close_to_fd(
        got.value, fd_v, vsc, "log_prob_vjp d/dvalue", skip=masked_value
    )
    assert np.all(got.value[masked_value] == 0.0)

    # The parameter.
    if param_name == "logits":
        step = np.full(param.shape, _logit_step(temperature))
        fsc = fscale * FD_REL_STEP / step.flat[0]
    else:
        step = FD_REL_STEP * param
        fsc = fscale
    fd_p = _central_differences(
        lambda p: f(value, p, temperature), param, step, skip=masked_param
    )
    _assert_close_to_fd(
        got[1], fd_p, fsc, f"log_prob_vjp d/d{param_name}", skip=masked_param
    )
    assert np.all(got[1][masked_param] == 0.0)

    # The temperature.
    fd_t = _central_differences(
        lambda t: f(value, param, t), temperature, FD_REL_STEP * temperature
    )
    _assert_close_to_fd(got.temperature, fd_t, fscale, "log_prob_vjp d/dT")
    return got


# --------------------------------------------------------- float64 vs differences
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("k", [2, 3, 10, 100])
@pytest.mark.parametrize("temperature", [0.1, 1.0, 5.0])
def test_rsample_vjp_matches_central_differences(cls, k, temperature):
    logits = np.random.default_rng(k).normal(size=k) * 2.0
    _check_rsample_vjp(cls, temperature, logits, seed=k)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("k", [2, 3, 10, 100])
@pytest.mark.parametrize("temperature", [0.1, 1.0, 5.0])
def test_log_prob_vjp_matches_central_differences(cls, k, temperature):
    logits = np.random.default_rng(100 + k).normal(size=k) * 2.0
    _check_log_prob_vjp(cls, temperature, logits, seed=k)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("temperature", [0.1, 1.0, 5.0])
def test_vjps_with_respect_to_unnormalised_probs_match_central_differences(
    cls, k, temperature
):
    # The gradient is with respect to the probs as passed, through the normalisation:
    # the sum is far from 1 on purpose.
    probs = np.random.default_rng(200 + k).uniform(0.1, 3.0, size=k)
    got = _check_rsample_vjp(cls, temperature, probs, "probs", seed=k)
    assert isinstance(got, relaxcat.RsampleGradProbs)
    got = _check_log_prob_vjp(cls, temperature, probs, "probs", seed=k)
    assert isinstance(got, relaxcat.LogProbGradProbs)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("temperature", [0.1, 1.0, 5.0])
@pytest.mark.parametrize("param_name", ["logits", "probs"])
def test_masked_categories_get_exactly_zero_gradient(cls, temperature, param_name):
    rng = np.random.default_rng(7)
    k = 10
    dead = np.zeros(k, bool)
    dead[[0, 3, 4, 9]] = True
    if param_name == "logits":
        param = np.where(dead, -np.inf, rng.normal(size=k))
    else:
        param = np.where(dead, 0.0, rng.uniform(0.2, 2.0, size=k))
    # The helpers check the zeros exactly and the live entries against differences.
    _check_rsample_vjp(cls, temperature, param, param_name, sample_shape=(3,))
    got = _check_log_prob_vjp(cls, temperature, param, param_name, value_lead=(2,))
    assert np.all(got.value[..., dead] == 0.0)
    assert np.all(got[1][dead] == 0.0)


# rsample_vjp hands the kernel the logits only when a category is masked
# (_has_masks): without one the pass over them changes nothing, so both calls
# give the same bits; with one, the masked category keeps its zeros in a
# distribution expanded before or after the first call, and the search for a
# mask reads each element once, however large the expanded batch.
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("k", [3, 8, 40])
def test_the_vjp_of_a_sample_reads_the_logits_only_for_masks(cls, k):
    rng = np.random.default_rng(k)
    logits = rng.normal(size=(6, k)).astype(np.float32)
    d = cls(np.float32(0.6), logits=logits)
    x = d.rsample(rng=3)
    w = rng.normal(size=x.shape).astype(np.float32)
    got = d.rsample_vjp(x, w)
    assert d._has_masks() is False
    gl = np.empty(x.shape, dtype=np.float64)
    gt = np.empty(x.shape[:-1], dtype=np.float64)
    temp = np.full(x.shape[:-1], np.float32(0.6))
    space = 0 if cls is relaxcat.RelaxedOneHotCategorical else 1
    relaxcat._core.rsample_vjp(space, x, w, temp, gl, gt, 1, logits)
    np.testing.assert_array_equal(got.logits, gl.astype(np.float32))
    assert got.temperature == np.float32(gt.sum())

    masked = logits.copy()
    masked[:, 1] = -np.inf
    m = cls(np.float32(0.6), logits=masked)
    big = m.expand((1 << 40, 6))
    assert big._has_masks() is True  # would not finish if it read 2^40 rows
    xm = m.rsample(rng=3)
    g = m.rsample_vjp(xm, w)
    assert np.all(g.logits[:, 1] == 0)
    assert m._has_masks() is True
    wide = m.expand((2, 6))
    g2 = wide.rsample_vjp(np.broadcast_to(xm, (2, 6, k)), np.broadcast_to(w, (2, 6, k)))
    assert np.all(g2.logits[..., 1] == 0)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize(
    "tshape,lshape",
    [
        ((), (3, 4)),  # one temperature for every row: its gradient sums over rows
        ((3,), (3, 4)),  # one per row
        ((3, 1), (3, 4)),  # per row, the torch idiom T[..., None]
        ((1,), (3, 4)),  # a broadcast axis of length 1
        ((5,), (4,)),  # one logits vector shared by five rows: logits sum over them
        ((2, 1), (1, 3, 4)),  # a batch of (2, 3) made from both
    ],
)
def test_vjps_sum_over_broadcast_axes(cls, tshape, lshape):
    rng = np.random.default_rng(11)
    temperature = rng.uniform(0.3, 2.0, size=tshape)
    logits = rng.normal(size=lshape)
    _check_rsample_vjp(cls, temperature, logits, sample_shape=(2,))
    _check_log_prob_vjp(cls, temperature, logits, value_lead=(2,))


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("validate", [True, False], ids=["validated", "unvalidated"])
def test_log_prob_vjp_sums_the_value_gradient_over_broadcast_rows(cls, validate):
    # One value evaluated under three distributions: its gradient is the sum.
    rng = np.random.default_rng(12)
    temperature = np.array([0.4, 1.0, 3.0])
    logits = rng.normal(size=(3, 5))
    value = _value_for(cls, (), 5, np.zeros(5, bool), rng)
    got = _check_log_prob_vjp(cls, temperature, logits, value=value, validate=validate)
    assert got.value.shape == (5,)


# ------------------------------------------------------------- float32 vs float64
def _f32_and_f64(cls, temperature, logits):
    t32 = np.asarray(temperature, dtype=np.float32)
    l32 = np.asarray(logits, dtype=np.float32)
    d32 = cls(t32, logits=l32)
    d64 = cls(
        t32.astype(np.float64), logits=l32.astype(np.float64), validate_args=False
    )
    return d32, d64


def _rel_to_max(got, want) -> float:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(got - want))) / float(np.max(np.abs(want)))


# T = 0.05 with one dominant category: the sample is a vertex up to ~1e-5.
NEAR_VERTEX = {
    "temperature": 0.05,
    "logits": [1.0, 0.0, -0.3, 0.2],
    "gumbels": [0.45, 0.875, 0.0, 0.56],
}
F32_CASES = {
    "k3_t1": {"temperature": 1.0, "logits": [0.3, -1.2, 0.9], "gumbels": None},
    "k10_t0.5": {"temperature": 0.5, "logits": None, "gumbels": None},
    "near_vertex": NEAR_VERTEX,
}


def _f32_case(cls, name):
    case = F32_CASES[name]
    rng = np.random.default_rng(31)
    logits = case["logits"] if case["logits"] is not None else rng.normal(size=10)
    k = len(logits)
    gumbels = case["gumbels"] if case["gumbels"] is not None else rng.gumbel(size=k)
    d32, d64 = _f32_and_f64(cls, case["temperature"], logits)
    g32 = np.asarray(gumbels, dtype=np.float32)
    w32 = rng.normal(size=k).astype(np.float32)
    return d32, d64, g32, w32


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("name", list(F32_CASES))
def test_float32_rsample_vjp_agrees_with_float64(cls, name):
    d32, d64, g32, w32 = _f32_case(cls, name)
    x32 = d32.rsample(gumbels=g32)

    # At the same (float32) sample the two differ only by the output rounding.
    got = d32.rsample_vjp(x32, w32)
    want = d64.rsample_vjp(x32.astype(np.float64), w32.astype(np.float64))
    assert got.logits.dtype == np.float32
    assert _rel_to_max(got.logits, want.logits) <= F32_SAME_INPUT_RTOL
    assert _rel_to_max(got.temperature, want.temperature) <= F32_SAME_INPUT_RTOL

    # The whole float32 pipeline against the float64 one from the same rounded
    # inputs: the float32 rounding of the sample is not amplified.
    x64 = d64.rsample(gumbels=g32.astype(np.float64))
    want = d64.rsample_vjp(x64, w32.astype(np.float64))
    assert _rel_to_max(got.logits, want.logits) <= F32_PIPELINE_RTOL
    assert _rel_to_max(got.temperature, want.temperature) <= F32_PIPELINE_RTOL


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("name", list(F32_CASES))
def test_float32_log_prob_vjp_agrees_with_float64(cls, name):
    d32, d64, g32, _ = _f32_case(cls, name)
    v32 = d32.rsample(gumbels=g32)
    v64 = v32.astype(np.float64)
    up32 = np.float32(0.7)

    lp32, lp64 = d32.log_prob(v32), d64.log_prob(v64)
    assert abs(float(lp32) - float(lp64)) <= F32_SAME_INPUT_RTOL * max(1.0, abs(lp64))
    got = d32.log_prob_vjp(v32, up32)
    want = d64.log_prob_vjp(v64, np.float64(up32))
    for name_, a, b in zip(got._fields, got, want):
        assert a.dtype == np.float32, name_
        assert _rel_to_max(a, b) <= F32_SAME_INPUT_RTOL, name_


def test_near_vertex_case_defeats_a_naive_float32_vjp():
    # The near-vertex case is meaningful only if a float32 evaluation of
    # x (w - <w, x>) / T, as written, misses the float64 answer: the difference
    # w_1 - <w, x> cancels to ~1e-5 and float32 keeps only ~2 digits of it.
    d32, d64, g32, w32 = _f32_case(relaxcat.RelaxedOneHotCategorical, "near_vertex")
    x32 = d32.rsample(gumbels=g32)
    assert 1e-7 < 1.0 - float(x32[0]) < 1e-4, "the sample is not near a vertex"
    t32 = np.float32(NEAR_VERTEX["temperature"])
    naive = x32 * (w32 - np.dot(w32, x32)) / t32
    assert naive.dtype == np.float32

    x64 = d64.rsample(gumbels=g32.astype(np.float64))
    want = d64.rsample_vjp(x64, w32.astype(np.float64)).logits
    assert _rel_to_max(naive, want) > 20 * F32_PIPELINE_RTOL
    assert _rel_to_max(d32.rsample_vjp(x32, w32).logits, want) <= F32_PIPELINE_RTOL


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [2, 3, 8, 17, 40])
@pytest.mark.parametrize("param", ["logits", "probs"])
def test_log_prob_and_vjp_equals_the_two_calls(cls, dtype, k, param):
    """The fused call returns the bits of log_prob and of log_prob_vjp, on
    ordinary rows and on rows with a masked category, an exact zero and a
    broadcast value row."""
    rng = np.random.default_rng(k)
    logits = rng.standard_normal((3, k))
    logits[1, 0] = -np.inf
    temperature = np.array([0.3, 1.0, 2.5]).astype(dtype)
    if param == "probs":
        d = cls(temperature, probs=np.exp(logits).astype(dtype))
    else:
        d = cls(temperature, logits=logits.astype(dtype))
    value = d.rsample((5,), rng=3)
    if cls is relaxcat.RelaxedOneHotCategorical:  # weight moved off category 1
        value[0, 2, 0] += value[0, 2, 1]
        value[0, 2, 1] = 0.0
    grad = rng.standard_normal((5, 3)).astype(dtype)
    for v in (value, value[:1, 1:2]):  # the second broadcasts over the batch
        g = np.broadcast_to(grad[: len(v)], np.broadcast_shapes(v.shape[:-1], (3,)))
        lp, both = d.log_prob_and_vjp(v, g)
        np.testing.assert_array_equal(lp, d.log_prob(v))
        assert lp.dtype == dtype
        for a, b in zip(both, d.log_prob_vjp(v, g)):
            np.testing.assert_array_equal(a, b)
            assert a.shape == b.shape and a.dtype == b.dtype
        assert type(both) is type(d.log_prob_vjp(v, g))


# Two sample rows share one logits row. Their rsample_vjp logits gradients are
# about +-866 and sum to -0.119; their log_prob_vjp ones (upstream 1e4 and
# -9999.9) about +-2449 and sum to -0.0245. Rounded to float32 per row and then
# summed, as before Note [summed gradients], each was off by more than the
# float32 bound of 1e-5 (4.8e-5 and 7.8e-5).
SHARED_T = np.float32(1e-3)
SHARED_X = np.array([[0.5, 0.5], [0.5, 0.5]], dtype=np.float32)
SHARED_W = np.array([[3.4641016, 0.0], [-3.4645774, 0.0]], dtype=np.float32)
SHARED_G = np.array([1e4, -9999.9], dtype=np.float32)


@pytest.mark.parametrize("param", ["logits", "probs"])
@pytest.mark.parametrize("op", ["rsample_vjp", "log_prob_vjp"])
def test_float32_gradients_of_shared_parameters_are_summed_before_rounding(op, param):
    """Note [summed gradients]: per-row logits gradients that cancel are summed in
    float64 (and taken through the probs transform in float64) and rounded once,
    so the float32 result is the float64 one rounded."""
    R = relaxcat.RelaxedOneHotCategorical
    logits = np.array([0.3, -0.2])
    kw32 = {param: (logits if param == "logits" else np.exp(logits)).astype(np.float32)}
    kw64 = {param: kw32[param].astype(np.float64)}
    up = SHARED_W if op == "rsample_vjp" else SHARED_G

    def grad(kw, x, g):
        return getattr(
            getattr(R(kw[param].dtype.type(SHARED_T), **kw), op)(x, g), param
        )

    got = grad(kw32, SHARED_X, up)
    ref = grad(kw64, SHARED_X.astype(np.float64), up.astype(np.float64))
    assert abs(ref[0]) > 0.01  # the sum is far from 0 ...
    np.testing.assert_allclose(got, ref, rtol=2.0**-23, atol=0)  # ... and exact

    # What summing rounded rows gave: the case does need the float64 sum.
    naive = grad(kw32, SHARED_X[0], up[0]) + grad(kw32, SHARED_X[1], up[1])
    assert np.max(np.abs(naive - ref)) > 1e-5


def test_float32_probs_gradient_is_formed_before_rounding():
    """At T = 1e-45 the float32 logits gradient (about 1e44) is past float32's
    range while the probs gradient of probs near 1e10 is not: the probs transform
    takes the float64 logits gradient (Note [summed gradients]) and gives the
    float64 result rounded, where rounding first gave inf."""
    R = relaxcat.RelaxedOneHotCategorical
    q = np.array([5e9, 3e9, 2e9], dtype=np.float32)
    t = np.float32(1e-45)
    x = np.array([0.2, 0.5, 0.3], dtype=np.float32)
    w = np.array([1.0, -0.5, 0.25], dtype=np.float32)
    got = R(t, probs=q).rsample_vjp(x, w)
    ref = R(np.float64(t), probs=q.astype(np.float64)).rsample_vjp(
        x.astype(np.float64), w.astype(np.float64)
    )
    assert np.all(np.isfinite(got.probs)) and np.max(np.abs(ref.probs)) > 1e34
    np.testing.assert_allclose(got.probs, ref.probs, rtol=2.0**-23, atol=0)
    assert got.temperature == np.inf and ref.temperature > 1e44  # past float32


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("k", [4, 40])
def test_float32_value_gradient_of_a_broadcast_value_is_summed_before_rounding(cls, k):
    """One value row against many batch rows: log_prob_vjp's value gradient sums
    the per-row gradients in float64 and rounds once, so with upstream gradients
    of both signs it is the float64 result (same float32 inputs) rounded."""
    rng = np.random.default_rng(k)
    logits = rng.standard_normal((20000, k)).astype(np.float32)
    x = rng.dirichlet(np.ones(k)).astype(np.float64)
    x /= x.sum()
    value = (np.log(x) if cls is relaxcat.ExpRelaxedOneHotCategorical else x).astype(
        np.float32
    )
    grad = rng.standard_normal(20000).astype(np.float32)
    d32 = cls(np.float32(0.5), logits=logits, validate_args=False)
    d64 = cls(0.5, logits=logits.astype(np.float64), validate_args=False)
    got = d32.log_prob_vjp(value, grad).value
    ref = d64.log_prob_vjp(value.astype(np.float64), grad.astype(np.float64)).value
    assert got.shape == (k,) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=2.0**-23, atol=0)


@pytest.mark.parametrize(
    "cls", [relaxcat.RelaxedOneHotCategorical, relaxcat.ExpRelaxedOneHotCategorical]
)
@pytest.mark.parametrize("k", [3, 16, 40, 3000])
def test_rsample_vjp_near_a_vertex_keeps_the_dominant_entry(simd_level, cls, k):
    # Regression (fresh-user reviews): at x = (1 - 5e-150, 3e-150, 2e-150) the
    # dominant entry's gradient x_d (w_d - <w, x>) / T came out 0 (it is
    # 2e-150): w_d - <w, x> cancels. It is now formed from the other entries
    # (kernels.hpp, Note [dominant sample entry]). K = 3 and 16 take the
    # columns path, 40 the row path, 3000 the long-row one on the simplex.
    # mpmath at 400 digits (the cancellation is of 150) on the same float64
    # inputs, each entry to its own size.
    mpmath.mp.dps = 400
    rng = np.random.default_rng(k)
    rest = rng.random(k - 1) * 1e-150
    simplex = cls is relaxcat.RelaxedOneHotCategorical
    x = np.concatenate([[1.0 - rest.sum()], rest])
    value = x if simplex else np.concatenate([[np.log1p(-rest.sum())], np.log(rest)])
    w = np.cos(np.arange(k) * 1.3)
    w[1] = w[0]  # a third review: w_k = w_d cancelled for k != d as well
    t = 0.7
    got = cls(t, logits=np.zeros(k)).rsample_vjp(value, w)
    # From probs: d/dq = d/dl / q (the logits gradient sums to 0; Note [probs
    # gradient]); the rounding of that sum had given wrong signs here.
    q = np.linspace(1.0, 2.0, k)
    got_q = cls(t, probs=q).rsample_vjp(value, w)

    xm = [
        mpmath.mpf(float(u)) if simplex else mpmath.exp(mpmath.mpf(float(u)))
        for u in value
    ]
    total = mpmath.fsum(xm)
    xs = [u / total for u in xm]
    if simplex:  # d/ds of sum w x: x (w - <w, x>)
        wx = mpmath.fsum(u * float(wk) for u, wk in zip(xs, w))
        ds = [u * (float(wk) - wx) for u, wk in zip(xs, w)]
    else:  # d/ds of sum w log x: w - x sum w
        wsum = mpmath.fsum(float(wk) for wk in w)
        ds = [float(wk) - u * wsum for u, wk in zip(xs, w)]
    want = np.array([float(v / t) for v in ds])
    want_t = float(-mpmath.fsum(v * mpmath.log(u) for v, u in zip(ds, xs)) / t)
    assert want[0] != 0.0
    np.testing.assert_allclose(got.logits, want, rtol=1e-13, atol=0)
    assert abs(float(got.temperature) - want_t) <= 1e-13 * abs(want_t)
    np.testing.assert_allclose(got_q.probs, want / q, rtol=1e-13, atol=0)


def _subsets(names):
    import itertools

    return [
        c for n in range(1, len(names) + 1) for c in itertools.combinations(names, n)
    ]


# wrt= computes only the gradients asked for: the same bits as in the full call,
# None for the others. Rows of 3 (down columns), 40 and 3000 (row by row), masked
# categories, float32 and float64, logits and probs.
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("k", [3, 40, 3000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("param", ["logits", "probs"])
def test_wrt_gives_the_asked_gradients_with_the_bits_of_the_full_call(
    cls, k, dtype, param
):
    rng = np.random.default_rng(k)
    logits = rng.normal(size=(5, k)).astype(dtype)
    logits[1, 0] = -np.inf
    given = logits if param == "logits" else np.exp(logits.astype(np.float64))
    d = cls(
        np.array([0.4, 0.9, 1.3, 2.0, 0.7], dtype=dtype)[:, None],
        **{param: given.astype(dtype)},
    )
    x = d.rsample(rng=7)
    w = rng.normal(size=x.shape).astype(dtype)
    up = rng.normal(size=5).astype(dtype)

    full = d.rsample_vjp(x, w)
    for wrt in _subsets((param, "temperature")):
        got = d.rsample_vjp(x, w, wrt=wrt)
        for name, a, b in zip(full._fields, got, full):
            assert (a is None) == (name not in wrt)
            assert a is None or a.tobytes() == b.tobytes(), (wrt, name)

    full_lp, full_g = d.log_prob_and_vjp(x, up)
    assert d.log_prob_vjp(x, up).value.tobytes() == full_g.value.tobytes()
    for wrt in _subsets(("value", param, "temperature")):
        lp, got = d.log_prob_and_vjp(x, up, wrt=wrt)
        alone = d.log_prob_vjp(x, up, wrt=wrt)
        assert lp.tobytes() == full_lp.tobytes()
        for name, a, c, b in zip(full_g._fields, got, alone, full_g):
            assert (a is None) == (name not in wrt) and (c is None) == (a is None)
            assert a is None or a.tobytes() == b.tobytes() == c.tobytes(), (wrt, name)


@pytest.mark.parametrize(
    "wrt, error, says",
    [
        (
            "logit",
            ValueError,
            r"wrt must name some of logits, temperature, got 'logit'",
        ),
        (
            "probs",
            ValueError,
            r"wrt must name some of logits, temperature, got 'probs'",
        ),
        ((), ValueError, r"wrt must name at least one of logits, temperature"),
        (
            3,
            TypeError,
            r"wrt must be None, a name or a tuple or list of names, got int",
        ),
        (b"logits", TypeError, r"wrt must be None, a name or .* names, got bytes"),
        ({"logits"}, TypeError, r"wrt must be None, a name or .* names, got set"),
        ((b"logits",), TypeError, r"wrt must name gradients as strings, got bytes"),
        (
            ("logits", "logits"),
            ValueError,
            r"wrt must name each gradient once, got \('logits', 'logits'\)",
        ),
    ],
)
def test_wrt_names_what_it_takes(wrt, error, says):
    d = relaxcat.RelaxedOneHotCategorical(0.5, logits=np.zeros(3))
    x = d.rsample(rng=0)
    with pytest.raises(error, match=says):
        d.rsample_vjp(x, np.ones(3), wrt=wrt)
    with pytest.raises(ValueError, match=r"some of value, probs, temperature, got 'lo"):
        relaxcat.RelaxedOneHotCategorical(0.5, probs=np.ones(3)).log_prob_vjp(
            x, 1.0, wrt="logits"
        )


def test_summed_temperature_gradient_whose_partial_sums_overflow_is_finite():
    # Regression (a fuzz campaign): per-row temperature gradients near the
    # largest double, summed over the rows that share one temperature, had
    # partial sums that overflowed to inf and -inf (NaN) although the exact
    # total is 1e307 (Note [sums past the range]).
    e = relaxcat.ExpRelaxedOneHotCategorical(
        1.0, logits=np.zeros(2), validate_args=False
    )
    y = np.array([[0.0, -1e307]] * 4)
    w = np.array([[0.0, 17.0], [0.0, 10.0], [0.0, -17.0], [0.0, -9.0]])
    rows = (
        relaxcat.ExpRelaxedOneHotCategorical(
            np.ones(4), logits=np.zeros((4, 2)), validate_args=False
        )
        .rsample_vjp(y, w)
        .temperature
    )
    assert np.all(np.isfinite(rows)) and np.max(np.abs(rows)) > 1.6e308
    got = e.rsample_vjp(y, w).temperature
    want = float(sum(Fraction(float(r)) for r in rows))
    assert got == pytest.approx(want, rel=1e-15)
    assert want == pytest.approx(1e307, rel=1e-12)


def test_log_space_temperature_gradient_of_a_deep_row_is_finite_when_g_brings_it_back():
    # Regression (a fuzz campaign): sum_k (K w_k - 1) y_k of a row with log-space
    # entries of -1e307 passes the largest double, and it was scaled back before
    # g multiplied it: -inf where g = 0.0323 gives -8.4e306.
    k, deep = 33, 7
    y = np.concatenate([np.full(k - deep, -math.log(k - deep)), np.full(deep, -1e307)])
    g = 0.0323
    e = relaxcat.ExpRelaxedOneHotCategorical(
        1.0, logits=np.zeros(k), validate_args=False
    )
    got = e.log_prob_vjp(y, g).temperature
    # w = softmax(a - T y) puts 1/deep on each deep entry and nothing elsewhere:
    # g (K - 1 + sum_k (K w_k - 1) y_k).
    share = Fraction(k, deep) - 1
    inner = (k - 1) + sum(
        Fraction(float(v)) * (share if v == -1e307 else -1) for v in y
    )
    want = float(Fraction(g) * inner)
    assert np.isfinite(got) and got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("shape", [(), (3,)])
def test_a_summed_float32_gradient_rounds_to_its_value_or_to_infinity_silently(shape):
    # The rounding of a float64 sum to float32 takes a shortcut for a scalar
    # inside float32's range; at the edge and past it, the answer must still be
    # the nearest float32 or the infinity of its sign, with no warning.
    import struct
    import warnings

    from relaxcat.distributions import _round_to

    top = float(np.finfo(np.float32).max)
    cases = [1.5, -(2.0**-149), top, -top, np.nextafter(top, np.inf), 3.5e38, -1e300]
    cases += [np.inf, -np.inf]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x in cases:
            got = _round_to(np.full(shape, x, dtype=np.float64), np.float32)
            # Nearest float32 (struct rounds as C does); from 2^128 - 2^103 on
            # (half an ulp past the largest float32) the rounding is infinite.
            if abs(x) >= 2.0**128 - 2.0**103:
                want = np.float32(np.copysign(np.inf, x))
            else:
                want = np.float32(struct.unpack("f", struct.pack("f", x))[0])
            assert got.dtype == np.float32 and got.shape == shape
            assert np.all(got == want), (x, got)
        nan = _round_to(np.full(shape, np.nan), np.float32)
        assert nan.dtype == np.float32 and np.all(np.isnan(nan))
