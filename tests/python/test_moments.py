"""Mean, variance, covariance, mode, entropy and KL of the Concrete distribution.

References: mpmath (closed-form Bessel inner integrals at T = 1, stored by
tests/data/make_moments.py; series in 1/T inner integrals at T >= 1000, stored by
tests/data/make_moments_large_t.py; the logistic law of logit(x_1) for K = 2,
computed here), long Monte Carlo runs, the K = 2 closed forms, the T -> 0 and T -> inf
limits, and a direct numerical maximisation of log_prob for the mode.
"""

from __future__ import annotations

import json
import math
import tracemalloc

import mpmath as mp
import numpy as np
import pytest
from conftest import DATA
from scipy import integrate, optimize

import relaxcat

E_CLS = relaxcat.ExpRelaxedOneHotCategorical

# The quadrature's bound (README): 1e-12 of the largest entry; measured ~4e-15.
QUAD_TOL = 1e-12
# The requirement from T = 32 (Note [central moments at large T]) to the largest
# double, relative to the largest entry; measured against mpmath: at most 1.3e-14
# (K = 50).
CENTRAL_TOL = 1e-9
# Where the core switches from the raw-moment quadrature to the central form
# (kCentralT in moments.hpp).
CENTRAL_T = 32.0
# Monte Carlo comparisons: |estimate - exact| < 5.5 standard errors. For a normal
# estimate the two-sided false-failure rate is 4e-8 per entry, below 1e-6 for the
# ~100 entries compared here.
Z = 5.5
# Newton's mode against scipy's maximiser, whose own tolerance is about 1e-9.
MODE_TOL = 1e-7


def dist(logits, t, cls=relaxcat.RelaxedOneHotCategorical, **kw):
    return cls(t, logits=np.asarray(logits, dtype=np.float64), **kw)


def scale_err(got, want):
    want = np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


# ------------------------------------------------------------ mpmath references
def _reference_cases():
    raw = json.loads((DATA / "moments_reference.json").read_text())
    return raw["cases"]


@pytest.mark.parametrize("case", _reference_cases(), ids=lambda c: str(c["logits"]))
def test_mean_and_variance_match_mpmath_bessel_reference(case):
    d = dist(case["logits"], case["temperature"])
    mean = np.array([float(x) for x in case["mean"]])
    var = np.array([float(x) for x in case["variance"]])
    assert scale_err(d.mean, mean) < QUAD_TOL
    assert scale_err(d.variance, var) < QUAD_TOL
    assert scale_err(np.diag(d.covariance()), var) < QUAD_TOL


def _k2_reference(delta, t):
    """E[x_1], Var[x_1] for K = 2: logit(x_1) is logistic, location delta / T,
    scale 1 / T, so both are one-dimensional integrals (mpmath, 25 digits)."""
    mp.mp.dps = 25
    mu, s = mp.mpf(delta) / t, mp.mpf(1) / t

    def pdf(z):
        e = mp.exp(-(z - mu) / s)
        return e / (s * (1 + e) ** 2)

    def moment(n):
        return mp.quad(
            lambda z: (1 / (1 + mp.exp(-z))) ** n * pdf(z),
            [-mp.inf, mu - 10 * s, mu, mu + 10 * s, mp.inf],
        )

    m1, m2 = moment(1), moment(2)
    return float(m1), float(m2 - m1 * m1)


@pytest.mark.parametrize("t", [0.3, 1.0, 4.0])
@pytest.mark.parametrize("delta", [0.7, -2.5])
def test_k2_moments_match_the_logistic_law_of_the_logit(delta, t):
    m1, v1 = _k2_reference(delta, t)
    d = dist([delta, 0.0], t)
    assert scale_err(d.mean, [m1, 1 - m1]) < QUAD_TOL
    assert scale_err(d.variance, [v1, v1]) < QUAD_TOL
    assert scale_err(d.covariance(), [[v1, -v1], [-v1, v1]]) < QUAD_TOL


def test_k2_mean_at_t1_has_its_closed_form():
    r = math.exp(0.7)
    want = r * (r - 1 - math.log(r)) / (r - 1) ** 2
    assert abs(dist([0.7, 0.0], 1.0).mean[0] - want) < 1e-15
    assert abs(want - 0.6147939) < 1e-7


def test_mean_is_not_probs():
    d = dist([1.0, 0.0, -1.0], 1.0)
    np.testing.assert_allclose(d.mean, [0.569097, 0.289023, 0.141881], atol=1e-6)
    assert np.max(np.abs(d.mean - d.probs)) > 0.05


# --------------------------------------------------------------- Monte Carlo
MC_CASES = [
    ([1.0, 0.0, -1.0], 0.3),
    ([0.3, -1.2, 2.0, 0.0], 2.5),
    ([0.5, 0.0, 0.2], 7.0),
]


@pytest.mark.parametrize("logits,t", MC_CASES)
def test_moments_agree_with_a_long_monte_carlo_run(logits, t):
    d = dist(logits, t)
    n = 400_000
    x = d.rsample((n,), rng=12345)
    mean, cov = d.mean, d.covariance()
    se_mean = x.std(axis=0, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(x.mean(axis=0) - mean) < Z * se_mean)
    xc = x - mean
    prods = xc[:, :, None] * xc[:, None, :]
    se_cov = prods.std(axis=0, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(prods.mean(axis=0) - cov) < Z * se_cov)


# -------------------------------------------------------------- structure
def test_moments_are_batched_and_keep_the_dtype():
    logits = np.array([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    t = np.array([[0.5], [3.0]], dtype=np.float32)
    d = relaxcat.RelaxedOneHotCategorical(t, logits=logits)
    assert d.mean.shape == (2, 3) and d.mean.dtype == np.float32
    assert d.variance.shape == (2, 3) and d.covariance().shape == (2, 3, 3)
    for i in range(2):
        single = dist(logits[i].astype(np.float64), float(t[i, 0]))
        np.testing.assert_allclose(d.mean[i], single.mean, rtol=1e-6)
    np.testing.assert_allclose(d.mean[1], [1 / 3] * 3, rtol=1e-6)


def test_mean_sums_to_one_and_covariance_rows_to_zero():
    for t in (0.01, 0.4, 1.0, 3.0, 31.9, 50.0, 5e3, 1e12):
        d = dist([2.0, -1.0, 0.5, 0.0, -3.0], t)
        assert abs(d.mean.sum() - 1) < 1e-13
        c = d.covariance()
        assert np.max(np.abs(c.sum(axis=1))) < 1e-9 * np.max(np.abs(c))
        np.testing.assert_allclose(c, c.T, rtol=0, atol=0)


def test_masked_categories_have_zero_moments_and_change_nothing_else():
    full = dist([0.3, -np.inf, 2.0, 0.0], 1.3)
    part = dist([0.3, 2.0, 0.0], 1.3)
    assert full.mean[1] == 0 and full.variance[1] == 0
    assert np.all(full.covariance()[1] == 0) and np.all(full.covariance()[:, 1] == 0)
    assert scale_err(full.mean[[0, 2, 3]], part.mean) < 1e-14
    assert (
        scale_err(full.covariance()[np.ix_([0, 2, 3], [0, 2, 3])], part.covariance())
        < 1e-14
    )


def test_one_live_category_is_a_point_mass():
    d = dist([-np.inf, 0.5, -np.inf], 0.7)
    assert d.mean.tolist() == [0, 1, 0] and np.all(d.covariance() == 0)


# ------------------------------------------------------------------- limits
def test_small_temperature_tends_to_the_categorical():
    d = dist([1.0, 0.0, -1.0], 1e-8)
    p = d.probs
    assert scale_err(d.mean, p) < 1e-7
    assert scale_err(d.covariance(), np.diag(p) - np.outer(p, p)) < 1e-7
    tiny = dist([1.0, 0.0, -1.0], 1e-300)
    assert scale_err(tiny.mean, p) < 1e-14


def test_huge_temperatures_reach_the_limit_and_stay_finite():
    # T^2 Cov tends to (pi^2 / 6) J^2, J = diag(s) - s s^T, s = softmax(a / T); at
    # T = 1e100 the next term is 1e-100 relative, so this is the exact answer.
    a = np.array([1.0, 0.0, -1.0])
    s = np.full(3, 1 / 3)
    jac = np.diag(s) - np.outer(s, s)
    d = dist(a, 1e100)
    assert scale_err(d.covariance() * 1e200, math.pi**2 / 6 * jac @ jac) < 1e-15
    assert scale_err(d.mean, s) < 1e-15
    # At the largest doubles Cov ~ 1/T^2 underflows to exact zeros, never NaN.
    huge = dist(a, 1e300)
    assert scale_err(huge.mean, s) < 1e-15
    c = huge.covariance()
    assert np.all(c == 0) and np.all(huge.variance == 0)


def _k2_central_reference(delta, t):
    """E[x_1], Var[x_1] for K = 2 from the logistic law of logit(x_1) =
    delta / T + w / T (w standard logistic), with x_1 - sigmoid(delta / T) written
    to full relative precision and mpmath at 40 digits: exact at every T."""
    with mp.workdps(40):
        s = 1 / mp.mpf(t)
        em = mp.exp(-mp.mpf(delta) * s)

        def dev(w):
            return em * -mp.expm1(-s * w) / ((1 + em) * (1 + em * mp.exp(-s * w)))

        def pdf(w):
            return mp.exp(-abs(w)) / (1 + mp.exp(-abs(w))) ** 2

        # mp.quad's tolerance is absolute: integrate dev / scale, which is O(1).
        scale = s * em / (1 + em) ** 2
        pts = [-mp.inf, -40, -10, -2, 0, 2, 10, 40, mp.inf]
        d1 = mp.quad(lambda w: dev(w) / scale * pdf(w), pts)
        m2 = mp.quad(lambda w: (dev(w) / scale) ** 2 * pdf(w), pts)
        return float(1 / (1 + em) + d1 * scale), float((m2 - d1 * d1) * scale**2)


@pytest.mark.parametrize(
    "delta,t",
    [
        (0.7, CENTRAL_T * (1 - 1e-12)),
        (0.7, CENTRAL_T),
        (-3.0, 1e3),
        (2000.0, 1e3),
        (1e5, 1e3),
        (0.1, 1e4),
        (40.0, 1e6),
        (5.0, 1e9),
        (40.0, 1e15),
        (3.0, 1e100),
        (3e100, 1e100),
    ],
)
def test_k2_large_temperature_moments_match_the_logistic_law(delta, t):
    m1, v1 = _k2_central_reference(delta, t)
    d = dist([delta, 0.0], t)
    assert scale_err(d.mean, [m1, 1 - m1]) < CENTRAL_TOL
    assert scale_err(d.variance, [v1, v1]) < CENTRAL_TOL
    assert scale_err(d.covariance(), [[v1, -v1], [-v1, v1]]) < CENTRAL_TOL


def _large_t_cases():
    raw = json.loads((DATA / "moments_large_t.json").read_text())
    return raw["cases"]


def _case_id(case):
    k = len(case["logits"])
    return f"K{k}-{case['logits'][:3]}-T{case['temperature']:g}"


@pytest.mark.parametrize("case", _large_t_cases(), ids=_case_id)
def test_large_temperature_moments_match_mpmath_series_reference(case):
    logits = [float(x) for x in case["logits"]]
    d = dist(logits, case["temperature"])
    mean = np.array([float(x) for x in case["mean"]])
    cov = np.array([[float(x) for x in r] for r in case["covariance"]])
    assert scale_err(d.mean, mean) < CENTRAL_TOL
    assert scale_err(d.covariance(), cov) < CENTRAL_TOL
    assert scale_err(d.variance, np.diag(cov)) < CENTRAL_TOL
    masked = np.isinf(logits)
    assert np.all(d.mean[masked] == 0) and np.all(d.covariance()[masked] == 0)


@pytest.mark.parametrize(
    "logits", [[1.0, 0.0, -1.0], [3.0, 0.0, -2.0, 1.0], [40.0, -np.inf, 0.0, 5.0]]
)
def test_moments_are_continuous_across_the_switch_to_the_central_form(logits):
    # Across a relative step of 1e-12 the true moments move by about 2e-12 of
    # themselves; each side carries its own error (the raw-moment quadrature about
    # 1e-15 T^2, the central form 1e-15).
    lo = dist(logits, CENTRAL_T * (1 - 1e-12))
    hi = dist(logits, CENTRAL_T)
    assert scale_err(lo.mean, hi.mean) < 1e-11
    assert scale_err(lo.covariance(), hi.covariance()) < 1e-10
    assert scale_err(lo.variance, hi.variance) < 1e-10


# --------------------------------------------------------------------- mode
def _argmax_log_prob(d):
    k = d.event_shape[0]

    def neg(z):
        x = np.exp(np.append(z, 0.0))
        return -float(d.log_prob(x / x.sum()))

    best = optimize.minimize(
        neg,
        np.zeros(k - 1),
        method="Nelder-Mead",
        options={"xatol": 1e-12, "fatol": 1e-15, "maxiter": 20000},
    )
    x = np.exp(np.append(best.x, 0.0))
    return x / x.sum()


@pytest.mark.parametrize(
    "logits,t",
    [
        ([2.0, 0.0, -1.0], 3.0),
        ([2.0, 0.0, -1.0], 2.0),
        ([1.0, -0.5, 0.0, 2.0], 4.5),
        ([0.8, 0.0], 2.5),
        ([5.0, 0.0, -5.0], 40.0),
    ],
)
def test_mode_maximises_log_prob(logits, t):
    d = dist(logits, t)
    assert scale_err(d.mode, _argmax_log_prob(d)) < MODE_TOL


def test_mode_known_value_and_stationarity():
    d = dist([2.0, 0.0, -1.0], 3.0)
    np.testing.assert_allclose(d.mode, [0.56129, 0.25805, 0.18066], atol=1e-5)
    x = d.mode
    w = np.exp(d.logits - 3.0 * np.log(x))
    w /= w.sum()
    np.testing.assert_allclose(x, (3.0 + 1 - 3 * 3.0 * w) / 3, rtol=1e-14)


def test_k2_mode_matches_the_logistic_law():
    # x = sigmoid(z), z logistic(mu, 1/T): density of x is
    # T e^{-T(z - mu)} / (1 + e^{-T(z - mu)})^2 / (x (1 - x)); maximise over z.
    delta, t = 0.8, 2.5

    def neg(z):
        x = 1 / (1 + math.exp(-z))
        e = math.exp(-t * (z - delta / t))
        return -(math.log(t * e / (1 + e) ** 2) - math.log(x * (1 - x)))

    z = optimize.minimize_scalar(neg, bracket=(-2, 2), tol=1e-14).x
    assert abs(dist([delta, 0.0], t).mode[0] - 1 / (1 + math.exp(-z))) < MODE_TOL


@pytest.mark.parametrize(
    "delta,t", [(300.0, 32.0), (1000.0, 10.0), (1000.0, 1.5), (40.0, 1.01), (5.0, 2.0)]
)
def test_k2_mode_with_far_apart_logits_matches_the_stationary_point(delta, t):
    """For K = 2 the mode x = (sigmoid(z), sigmoid(-z)) solves
    -T - 1 + 2 T sigmoid(delta - T z) + 2 sigmoid(z) = 0 (the derivative of the
    logistic law's log-density of z, test above). Logits far apart once sent
    Newton away from the root from its start at log_softmax(a / (T + 1))."""
    mp.mp.dps = 40
    dm, tm = mp.mpf(delta), mp.mpf(t)

    def g(z):
        return -tm - 1 + 2 * tm / (1 + mp.exp(tm * z - dm)) + 2 / (1 + mp.exp(-z))

    z = mp.findroot(g, (dm / tm - 5, dm / tm + 5), solver="anderson")
    want = [float(1 / (1 + mp.exp(-z))), float(1 / (1 + mp.exp(z)))]
    got = dist([0.0, -delta], t).mode
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    "logits,t", [([1.0, 0.0, -1.0], 1.5), ([0.0, 1.0], 1.0), ([0.0, 1.0, 1.0], 0.2)]
)
def test_mode_is_the_most_probable_vertex_without_an_interior_mode(logits, t):
    mode = dist(logits, t).mode
    want = np.zeros(len(logits))
    want[int(np.argmax(logits))] = 1
    assert mode.tolist() == want.tolist()


def test_mode_that_does_not_converge_names_its_row():
    # Newton's method fails on (0, -40, -40) at T = 2 (Limitations); the error
    # names the first such row and its parameters instead of only counting them.
    d = relaxcat.RelaxedOneHotCategorical(
        2.0, logits=np.array([[0.0, 0.5, -0.5], [0.0, -40.0, -40.0]])
    )
    with pytest.raises(
        RuntimeError,
        match=r"did not converge in 1 of 2 rows, the first at batch index \(1,\) "
        r"\(normalised logits \[ *0\. -40\. -40\.\], temperature 2\.0\)",
    ):
        _ = d.mode


def test_mode_is_batched_with_masks():
    logits = np.array([[2.0, -np.inf, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    d = relaxcat.RelaxedOneHotCategorical(np.array([2.0, 3.0]), logits=logits)
    m = d.mode
    assert m[0, 1] == 0
    assert scale_err(m[0, [0, 2, 3]], dist([2.0, 0.0, -1.0], 2.0).mode) < 1e-14
    np.testing.assert_allclose(m[1], 0.25, rtol=1e-14)


def test_log_space_mode_is_log_softmax_of_logits_over_t():
    e = dist([2.0, 0.0, -1.0], 0.5, relaxcat.ExpRelaxedOneHotCategorical)
    a = np.array([2.0, 0.0, -1.0]) / 0.5
    np.testing.assert_allclose(e.mode, a - np.log(np.exp(a).sum()), rtol=1e-14)


# ------------------------------------------------------------------ log space
def test_log_space_mean_is_e_log_x():
    logits, t = [1.0, 0.0, -1.0], 0.6
    e = dist(logits, t, relaxcat.ExpRelaxedOneHotCategorical)
    y = e.rsample((200_000,), rng=7)
    se = y.std(axis=0, ddof=1) / math.sqrt(y.shape[0])
    assert np.all(np.abs(y.mean(axis=0) - e.mean) < Z * se)
    with pytest.raises(NotImplementedError, match="E\\[log\\(S\\)\\^2\\]"):
        e.variance  # noqa: B018 (the property access is what raises)
    with pytest.raises(NotImplementedError, match="ExpRelaxedOneHotCategorical"):
        e.covariance()


# The log-space mean against mpmath (README): within 1.3e-14 from T = 0.05 to 5.
# Its left tail had summed 10^5 terms of rounding, for errors near 1e-11 below
# T = 1 (and seconds per row).
LOG_MEAN_TOL = 1e-13


@pytest.mark.parametrize("t", [5.0, 2.0, 1.0, 0.5, 0.3, 0.05])
def test_log_space_mean_of_two_categories_against_mpmath(t):
    # K = 2: log x_0 = log sigmoid((a_0 - a_1 + L) / T) with L = G_0 - G_1
    # standard logistic, so E[log x_0] is one integral over L.
    a = (0.3, -0.5)
    e = dist(list(a), t, relaxcat.ExpRelaxedOneHotCategorical)
    with mp.workdps(30):
        gap = mp.mpf(a[0]) - mp.mpf(a[1])

        def mean_of(sign):
            def f(l):
                dens = mp.exp(-l) / (1 + mp.exp(-l)) ** 2
                return -mp.log1p(mp.exp(-sign * (gap + l) / t)) * dens

            return mp.quad(f, [-mp.inf, -gap - 5, -gap, -gap + 5, mp.inf])

        want = [float(mean_of(1)), float(mean_of(-1))]
    got = e.mean
    assert np.max(np.abs(got - want)) <= LOG_MEAN_TOL * np.max(np.abs(want))


@pytest.mark.parametrize(
    "logits,t,want",
    [
        ([0.0, -1000.0], 1.0, [0.0, -1000.0]),
        ([0.0, -745.0], 1.0, [0.0, -745.0]),
        ([0.0, -1000.0], 0.5, [0.0, -2000.0]),
        ([-1000.0, 0.0, -np.inf], 0.25, [-4000.0, 0.0, -np.inf]),
        ([0.0, -100.0], 1.0, [0.0, -100.0]),  # once +7e-14 for category 0
    ],
)
def test_log_space_mean_with_far_apart_logits(logits, t, want):
    """E[log x] when one category dwarfs the rest: log x_0 is within e^-700 of 0
    and log x_1 = (a_1 - a_0 + G_1 - G_0) / T less that, whose mean is
    (a_1 - a_0) / T. The quadrature's far tails once gave NaN (0 * inf)."""
    e = dist(logits, t, relaxcat.ExpRelaxedOneHotCategorical)
    np.testing.assert_allclose(e.mean, want, rtol=1e-12, atol=1e-12)
    assert np.all(e.mean <= 0)  # log x <= 0


# ------------------------------------------------------------ entropy and KL
def test_entropy_at_tiny_temperature_has_a_finite_standard_error():
    # A fresh-user review: at T = 1e-200 the log-densities are near 1e200, and
    # their squares overflowed: stderr inf, with NumPy's overflow warning.
    import warnings

    from relaxcat._extras import _estimate

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = relaxcat.RelaxedOneHotCategorical(1e-200, logits=[0.3, -np.inf, 1.0])
        got = h.entropy(n_samples=64, rng=1)
        assert np.isfinite(got.stderr) and got.stderr > 0
        # The same samples scaled down by 2^700 give the same digits.
        big = np.random.default_rng(4).normal(size=(50, 3)) * 1e200
        est = _estimate(big)
        small = _estimate(big * 2.0**-700)
        np.testing.assert_array_equal(est.estimate, small.estimate * 2.0**700)
        np.testing.assert_array_equal(est.stderr, small.stderr * 2.0**700)
    # Where nothing overflows, the bits of NumPy's own mean and std.
    x = np.random.default_rng(5).normal(size=(40, 4)) * [1e-3, 1.0, 7e5, 0.0]
    est = _estimate(x)
    np.testing.assert_array_equal(est.estimate, x.mean(axis=0))
    np.testing.assert_array_equal(est.stderr, x.std(axis=0, ddof=1) / np.sqrt(40))


def test_entropy_k2_t1_equal_logits_is_zero():
    h = dist([0.0, 0.0], 1.0).entropy(n_samples=20_000, rng=3)
    assert abs(float(h.estimate)) <= Z * float(h.stderr) + 1e-12


def _k2_density(delta, t):
    def p(x):
        # The simplex density in the first coordinate, from the logistic logit.
        z = math.log(x / (1 - x))
        e = math.exp(-t * (z - delta / t))
        return t * e / (1 + e) ** 2 / (x * (1 - x))

    return p


def test_entropy_and_kl_match_numerical_integrals_for_k2():
    p, q = _k2_density(0.5, 2.0), _k2_density(-0.3, 3.0)
    h = -integrate.quad(lambda x: p(x) * math.log(p(x)), 0, 1, limit=200)[0]
    kl = integrate.quad(lambda x: p(x) * math.log(p(x) / q(x)), 0, 1, limit=200)[0]
    dp, dq = dist([0.5, 0.0], 2.0), dist([-0.3, 0.0], 3.0)
    est = dp.entropy(n_samples=100_000, rng=11)
    assert abs(float(est.estimate) - h) < Z * float(est.stderr)
    est = relaxcat.kl_divergence(dp, dq, n_samples=100_000, rng=12)
    assert abs(float(est.estimate) - kl) < Z * float(est.stderr)


def test_kl_of_a_distribution_with_itself_is_zero_and_shapes_broadcast():
    p = relaxcat.RelaxedOneHotCategorical(
        np.array([0.5, 2.0]), logits=np.array([1.0, 0.0, -1.0])
    )
    est = relaxcat.kl_divergence(p, p, n_samples=1000, rng=0)
    assert est.estimate.shape == (2,) and np.all(est.estimate == 0)
    q = dist([-np.inf, 0.0, 0.0], 1.0)
    assert np.all(relaxcat.kl_divergence(p, q, n_samples=10, rng=0).estimate == np.inf)
    with pytest.raises(TypeError, match="same class"):
        relaxcat.kl_divergence(
            p, dist([1.0, 0.0, -1.0], 1.0, relaxcat.ExpRelaxedOneHotCategorical)
        )


@pytest.mark.parametrize("cls", [relaxcat.RelaxedOneHotCategorical, E_CLS])
def test_entropy_and_kl_in_chunks_are_the_estimates_of_one_sample(cls):
    """Drawn in chunks of about 2^20 elements, entropy and KL take the noise of
    one rsample call: their bits are those of the estimator on that sample."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 3000))
    logits[:, 7] = -np.inf
    p, q = cls(0.7, logits=logits), cls(1.6, logits=0.5 * logits)
    n = 1500  # 9e6 elements: nine chunks, the last one short
    y = relaxcat.ExpRelaxedOneHotCategorical(0.7, logits=logits).rsample((n,), rng=8)
    log_q = relaxcat.ExpRelaxedOneHotCategorical(0.7, logits=logits).log_prob(y)
    h = -log_q
    if cls is relaxcat.RelaxedOneHotCategorical:
        h = np.where(np.isfinite(logits), y, 0.0).sum(axis=-1) - log_q
    est = p.entropy(n_samples=n, rng=8)
    np.testing.assert_array_equal(est.estimate, h.mean(axis=0))
    np.testing.assert_array_equal(est.stderr, h.std(axis=0, ddof=1) / np.sqrt(n))
    log_q_q = relaxcat.ExpRelaxedOneHotCategorical(1.6, logits=0.5 * logits).log_prob(y)
    kl = relaxcat.kl_divergence(p, q, n_samples=n, rng=8)
    np.testing.assert_array_equal(kl.estimate, (log_q - log_q_q).mean(axis=0))


def test_entropy_memory_does_not_grow_with_whole_samples():
    """1000 samples of 20000 categories are 160 MB in float64 (and twice that
    was the peak); the estimate keeps one float64 per sample and a chunk of
    about 8 MB with its temporaries."""
    d = relaxcat.RelaxedOneHotCategorical(0.5, logits=np.zeros(20_000))
    tracemalloc.start()
    try:
        d.entropy(n_samples=1000, rng=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50e6, peak


def test_categorical_kl_is_the_analytic_kl_of_the_probs():
    p = dist([1.0, 0.0, -1.0], 0.5)
    q = dist([0.0, 2.0, -np.inf], 7.0)
    pp, qq = p.probs, q.probs
    assert relaxcat.categorical_kl(q, p) == pytest.approx(
        sum(a * math.log(a / b) for a, b in zip(qq, pp) if a > 0), rel=1e-14
    )
    assert relaxcat.categorical_kl(p, q) == np.inf
    assert relaxcat.categorical_kl(p, p) == 0


def _k2_small_category(delta, t):
    """E[x], Var[x] of the category trailing by delta > 0 (K = 2) at 60 digits,
    with a breakpoint at logit 0 as well, where the second moment's integrand
    peaks when T < 2."""
    mp.mp.dps = 60
    mu, s = -mp.mpf(delta) / t, mp.mpf(1) / t

    def pdf(z):
        e = mp.exp(-(z - mu) / s)
        return e / (s * (1 + e) ** 2)

    cuts = sorted({float(mu - 50 * s), float(mu), float(mu + 50 * s), 0.0})
    points = [-mp.inf] + [mp.mpf(c) for c in cuts] + [mp.inf]

    def moment(n):
        return mp.quad(lambda z: (1 / (1 + mp.exp(-z))) ** n * pdf(z), points)

    m1, m2 = moment(1), moment(2)
    return float(m1), float(m2 - m1 * m1)


@pytest.mark.parametrize(
    "delta,t", [(50.0, 0.5), (30.0, 0.5), (40.0, 1.0), (300.0, 5.0), (3.0, 0.05)]
)
def test_a_dominant_category_has_the_variance_of_the_rest(delta, t):
    # Regression: Var(x_0) was E[x_0^2] - E[x_0]^2 with both near 1, which
    # cancelled to 0 or a negative number (-3.3e-16 for logits [50, 0], T = 0.5,
    # where the truth is 1.5e-22). For K = 2, x_0 = 1 - x_1: both variances are
    # equal and the covariance is -Var.
    m, v = _k2_small_category(delta, t)
    d = dist([delta, 0.0], t)
    assert scale_err(d.mean, [1 - m, m]) < QUAD_TOL
    assert scale_err(d.variance, [v, v]) < QUAD_TOL
    assert scale_err(d.covariance(), [[v, -v], [-v, v]]) < QUAD_TOL


@pytest.mark.parametrize(
    "logits,t", [([40.0, 0.0, 0.0], 1.0), ([3.0, 0.0, -1.0, 2.0], 0.3)]
)
def test_covariance_rows_sum_to_zero_and_the_dominant_variance_is_the_rest(logits, t):
    # sum_j x_j = 1, so each row of the covariance sums to 0 and the dominant
    # category's variance is the sum of the covariance block of the others.
    d = dist(logits, t)
    cov = d.covariance()
    top = int(np.argmax(logits))
    rest = [j for j in range(len(logits)) if j != top]
    scale = np.max(np.abs(cov))
    assert np.all(np.abs(cov.sum(axis=1)) <= 1e-12 * scale)
    assert abs(cov[top, top] - cov[np.ix_(rest, rest)].sum()) <= 1e-12 * scale
    assert cov[top, top] > 0
    np.testing.assert_allclose(d.variance, np.diag(cov), rtol=1e-12, atol=0)


@pytest.mark.parametrize("fn", ["entropy", "kl_divergence"])
def test_monte_carlo_n_samples_too_big_for_an_array_names_n_samples(fn):
    # Regression: n_samples = 2**60 had been refused as a sample_shape, which
    # the caller never passed.
    d = relaxcat.RelaxedOneHotCategorical(0.5, logits=np.zeros((2, 3)))
    with pytest.raises(
        ValueError,
        match=r"^n_samples 1152921504606846976 with batch_shape \(2,\) and "
        r"event_shape \(3,\) gives 6917529027641081856 elements of 8 bytes",
    ):
        if fn == "entropy":
            d.entropy(n_samples=2**60)
        else:
            relaxcat.kl_divergence(d, d, n_samples=2**60)


@pytest.mark.parametrize("t", [0.3, 1.0, 3.0])
def test_log_space_density_convention_as_the_readme_states(t):
    # ExpRelaxed log_prob(y) = log p(x) + sum_k y_k (torch's convention): as a
    # density of y_0 (K = 2, y_1 = log(1 - e^y_0)) it is off by y_1, so
    # log_prob - y_1 integrates to 1 and log_prob itself to E[x_1].
    logits = np.array([0.4, -0.3])
    e = relaxcat.ExpRelaxedOneHotCategorical(t, logits=logits)

    def y_of(y0):
        return np.array([y0, math.log(-math.expm1(y0))])

    def lp(y0):
        return float(e.log_prob(y_of(y0)))

    total = integrate.quad(
        lambda y0: math.exp(lp(y0) - y_of(y0)[1]), -np.inf, 0, limit=400
    )[0]
    weighted = integrate.quad(lambda y0: math.exp(lp(y0)), -np.inf, 0, limit=400)[0]
    mean_x1 = relaxcat.RelaxedOneHotCategorical(t, logits=logits).mean[1]
    assert total == pytest.approx(1.0, abs=1e-6)
    assert weighted == pytest.approx(mean_x1, abs=1e-6)
