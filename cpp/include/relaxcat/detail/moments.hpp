#pragma once
// Moments, mode and the categorical KL of the Concrete (RelaxedOneHotCategorical)
// distribution, one row at a time. Nothing here is vectorised: the row functions
// are short loops over libm calls, so any instruction set may compile them (see
// Note [one-definition trap] in isa.hpp for why they still live in the per-ISA
// namespace).
//
// Note [moments by Laplace transform]: a sample is x_k = V_k / S with
// V_j = exp((a_j + G_j) / T), a = log p (normalised) and G_j iid standard Gumbel,
// S = sum_j V_j. Using 1 / S = int_0^inf exp(-t S) dt and 1 / S^2 =
// int_0^inf t exp(-t S) dt, and the independence of the V_j, with t = exp(tau) and
// sigma_j = tau + a_j / T,
//   E[x_k]       = int dtau  P(tau) r1_k(tau)
//   E[x_k^2]     = int dtau  P(tau) r2_k(tau)
//   E[x_k x_l]   = int dtau  P(tau) r1_k(tau) r1_l(tau)        (k != l)
// where, with z = exp(sigma + G / T) and the one-dimensional integrals
//   lam_n(sigma) = log E[z^n exp(-z)]        (n = 0, 1, 2),
// P = exp(sum_j lam_0(sigma_j)) and r_n,k = exp(lam_n(sigma_k) - lam_0(sigma_k)).
// The product over j != k of E[exp(-t V_j)] is P / exp(lam_0(sigma_k)), formed in
// log space: lam_0 is finite for every live category, so nothing divides by a
// zero, and a row costs O(K) inner integrals per outer node, not O(K^2).
// Both levels use the trapezoidal rule on the whole real line, which converges
// geometrically for these analytic, (doubly) exponentially decaying integrands.
//
// Note [inner integrals]: for T >= 1 lam_n is integrated over g = G, where the
// Gumbel density exp(-g - exp(-g)) sets the scale and z varies on the slower scale
// T. For T < 1 z is a step of width T in g, so the variable is v = log z instead:
//   lam_0 = log int F(T v - b) exp(v - e^v) dv   (integrated by parts;
//           F(g) = exp(-exp(-g)) is the Gumbel CDF)
//   lam_n = log T + log int f(T v - b) exp(n v - e^v) dv   (n = 1, 2)
// with b = T sigma, so that T -> 0 has a finite limit (F and f become constant
// over the width of exp(n v - e^v)) and b never overflows. Every integrand is
// log-concave: its log has a unique maximum, found by a safeguarded Newton
// iteration, and the rule walks out from it with a step set by the curvature
// there until the integrand falls below exp(-kTailCut) of its peak.
//
// Note [outer variable]: the outer integral runs over u = m tau, m = min(T, 1).
// For T < 1 the integrand decays like exp(T tau) as tau -> -inf, which is
// exp(u); for T >= 1 like exp(tau). In u both ends take a fixed number of nodes
// at every temperature, and as T -> 0 the integrands tend to those of the
// categorical (P -> exp(-e^u)), so small temperatures lose nothing. The factors
// of T from lam_n (n >= 1) and from dtau = du / m combine into a factor m on the
// off-diagonal second moment only.

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>

#include "isa.hpp"

namespace relaxcat {
namespace detail {
namespace RELAXCAT_ISA_NAMESPACE {

namespace moments_const {
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kEulerGamma = 0.57721566490153286061;
// Trapezoid steps in units of the local width (inner: 1 / sqrt(-phi'') at the
// peak; outer: u). Chosen so that the discretisation error is below 1e-13 of the
// result, measured against mpmath by tests/python/test_moments.py.
constexpr double kInnerStep = 0.25;
constexpr double kOuterStep = 0.25;
// Integrands are dropped once below exp(-kTailCut) of their peak (about 1e-18).
constexpr double kTailCut = 41.0;
// The log-space mean's outer terms are differences of two inner integrals near
// 1 in its left tail; below this many eps of their size they are rounding.
constexpr double kRoundingTerms = 64 * std::numeric_limits<double>::epsilon();
// A category whose a_j / max(T, 1) is below this contributes less than about
// exp(kNegligible) to every moment (E[x_j] is of order p_j^(1 / max(T, 1))): it is
// treated as masked.
constexpr double kNegligible = -700.0;
}  // namespace moments_const

// One inner integrand of Note [inner integrals]: g-form (T >= 1, shift = sigma)
// or v-form (T < 1, shift = b = T sigma), power n in {0, 1, 2}.
struct InnerSpec {
    double t;
    double shift;
    int n;
    bool vform;
};

// log of the integrand at x and its first two derivatives.
inline void inner_phi(const InnerSpec& s, double x, double& f, double& d1, double& d2) {
    if (!s.vform) {
        const double v = s.shift + x / s.t;
        const double e1 = std::exp(-x), e2 = std::exp(v);
        f = -x - e1 + s.n * v - e2;
        d1 = -1.0 + e1 + s.n / s.t - e2 / s.t;
        d2 = -e1 - e2 / (s.t * s.t);
        return;
    }
    const double w = s.t * x - s.shift;
    const double e1 = std::exp(-w), e2 = std::exp(x);
    const double c0 = s.n == 0 ? 0.0 : 1.0;
    const double np = s.n == 0 ? 1.0 : static_cast<double>(s.n);
    f = -c0 * w - e1 + np * x - e2;
    d1 = -c0 * s.t + s.t * e1 + np - e2;
    d2 = -s.t * s.t * e1 - e2;
}

// The maximiser of a concave phi, from x: phi' is decreasing, so a bracket is
// found by doubling steps, then Newton steps run inside it, replaced by bisection
// when they would leave it or shrink it too slowly (Newton alone crawls in unit
// steps down a doubly exponential wall).
inline double inner_argmax(const InnerSpec& s, double x) {
    double f, d1, d2;
    inner_phi(s, x, f, d1, d2);
    if (d1 == 0.0) return x;
    double lo = x, hi = x;
    const double dir = d1 > 0.0 ? 1.0 : -1.0;
    for (double step = 1.0; step < 1e300; step *= 2.0) {
        const double y = x + dir * step;
        inner_phi(s, y, f, d1, d2);
        if (dir > 0.0 ? d1 > 0.0 : d1 < 0.0) {
            (dir > 0.0 ? lo : hi) = y;
            continue;
        }
        (dir > 0.0 ? hi : lo) = y;
        break;
    }

    // Safeguarded Newton inside [lo, hi].
    double dx = hi - lo, dx_old = dx;
    x = 0.5 * (lo + hi);
    for (int it = 0; it < 200; ++it) {
        inner_phi(s, x, f, d1, d2);
        if (d1 == 0.0) return x;
        (d1 > 0.0 ? lo : hi) = x;
        double xn = x - d1 / d2;
        if (!(xn > lo && xn < hi) || std::fabs(2.0 * d1) > std::fabs(dx_old * d2)) {
            dx_old = dx;
            dx = 0.5 * (hi - lo);
            xn = lo + dx;
        } else {
            dx_old = dx;
            dx = xn - x;
        }
        if (std::fabs(xn - x) <= 1e-14 * std::fmax(1.0, std::fabs(x))) return xn;
        x = xn;
    }
    return x;
}

// log of the integral of exp(phi) over the real line; see Note [inner integrals].
inline double log_inner(const InnerSpec& s) {
    using namespace moments_const;
    const double x0 = inner_argmax(s, 0.0);
    double f0, d1, d2;
    inner_phi(s, x0, f0, d1, d2);
    // The step follows the width of the peak, but never exceeds the scale of the
    // fastest term (1 in both forms): a flat peak can have steep shoulders.
    const double h = kInnerStep * std::fmin(1.0, 1.0 / std::sqrt(-d2));

    // Walk out on both sides; log-concavity makes each side monotone.
    double sum = 1.0;
    for (int dir = -1; dir <= 1; dir += 2) {
        for (int i = 1; i < 100000; ++i) {
            double f;
            inner_phi(s, x0 + dir * i * h, f, d1, d2);
            sum += std::exp(f - f0);
            if (!(f > f0 - kTailCut)) break;
        }
    }
    return f0 + std::log(h * sum);
}

// The inner integral lam_n for category logit a (normalised) at outer node u.
inline double lam(int n, double a, double t, double u) {
    InnerSpec s;
    s.t = t;
    s.n = n;
    s.vform = t < 1.0;
    s.shift = s.vform ? u + a : u + a / t;
    return log_inner(s);
}

inline bool negligible(double a, double t) {
    return !(a / std::fmax(t, 1.0) >= moments_const::kNegligible);
}

// What moments_row computes.
enum class MomentKind { mean, variance, covariance };

// Note [central moments at large T]: the quadrature of Note [moments by Laplace
// transform] forms Cov[x] = E[x_k x_l] - E[x_k] E[x_l] from terms of size 1/K^2,
// while the covariance is of size 1/T^2: it loses about 1e-15 T^2 of the result.
// From kCentralT up, the moments come from the deviations from s = softmax(a / T)
// instead. With W_j = exp(G_j / T) = 1 + delta_j and D = sum_j s_j delta_j,
//   x_k - s_k = s_k (delta_k - D) / (1 + D),
// where delta = expm1(G / T) is O(1/T) and exact to rounding. With
// 1 / (1 + D)^n = int_0^inf t^(n-1) exp(-t (1 + D)) dt / (n-1)! and the
// independence of the delta_j, exp(-t D) factors into Lam(t) = prod_j l_j, with
// l_j = E[exp(-t s_j delta_j)], times an expectation under which the delta_j stay
// independent with tilted means mu_j(t) and variances v_j(t). Writing
// delta_k - D = sum_j (e_k - s)_j delta_j, with r_k = 1 - s_k = sum_{j != k} s_j,
//   E[x_k] - s_k = s_k A_k,  A_k = int exp(-t) Lam(t) m_k(t) dt,
//   m_k = sum_{j != k} s_j (mu_k - mu_j),
//   Cov[x_k, x_l] = s_k s_l (int t exp(-t) Lam(t) [Q_kl(t) + m_k m_l] dt - A_k A_l),
//   Q_kk = r_k^2 v_k + sum_{j != k} s_j^2 v_j,
//   Q_kl = -r_k s_k v_k - r_l s_l v_l + sum_{j != k, l} s_j^2 v_j     (k != l).
// Every term is of the size of the result (|m_k| and A_k are O(1/T^2), so A_k A_l
// is a correction, not a cancellation), and nothing is of size 1/K^2. The sums
// that leave out one or two indices never subtract the largest term (see
// sum_except), so a category with s_k near 1 keeps r_k and its sums to full
// relative accuracy. Everything is computed in units where delta is scaled by T
// (dh = T delta, which tends to G), so T up to the largest double, and T = inf,
// lose nothing; the (co)variance is divided by T twice at the end, which
// underflows to 0 only when the true value is below the smallest double.
// The representation is exact at every T > 2 (E[W^2] is finite); kCentralT is
// where the inner grid below is set up to reach its tails (E[dh^2 e^-G] decays
// like exp(-(1 - 2/T) G)) and where the quadrature of the raw moments still has
// its full accuracy, both measured in tests/python/test_moments.py.
//
// Inner integrals: over g with the Gumbel density f(g) = exp(-g - e^-g), by the
// trapezoidal rule with step kCentralInnerStep on [kCentralGLo, g_hi]. The
// integrand is analytic in the strip |Im g| < pi / 2, so the rule's error is about
// exp(-pi^2 / h) of the integral; the ends drop less than 1e-18 of it. The grid
// (f and dh at each node) is shared by every category and outer node of a row.
// Outer integral: over tau = log t by the trapezoidal rule with step
// kCentralOuterStep on [kCentralTauLo, kCentralTauHi], where t^2 exp(-t) and
// t exp(-t) Lam (Lam stays near 1: the tilt is O(t / T)) fall below 1e-18.
constexpr double kCentralT = 32.0;
constexpr double kCentralInnerStep = 0.2;
constexpr double kCentralGLo = -4.5;
constexpr int kCentralMaxNodes = 400;
constexpr double kCentralOuterStep = 0.2;
constexpr double kCentralTauLo = -22.0;
constexpr double kCentralTauHi = 4.1;

// sum_j w_j over j not in {i, i2} (i2 = -1 for one index), given the total of
// all w_j but the largest, rest = sum_{j != big} w_j (w >= 0). The largest term
// is added back rather than the excluded ones subtracted from a total that holds
// it, so the error is a few ulps of rest, never of w_big.
inline double sum_except(const double* w, double rest, int64_t big, int64_t i,
                         int64_t i2) {
    double s = rest;
    if (i != big) s -= w[i];
    if (i2 >= 0 && i2 != big) s -= w[i2];
    if (i != big && i2 != big) s += w[big];
    return std::fmax(s, 0.0);
}

// The total of w over j with live[j], without its largest term, and that term's
// index.
inline double total_but_largest(const double* w, const double* s, int64_t k,
                                int64_t& big) {
    big = -1;
    for (int64_t j = 0; j < k; ++j)
        if (s[j] > 0.0 && (big < 0 || w[j] > w[big])) big = j;
    double rest = 0.0;
    for (int64_t j = 0; j < k; ++j)
        if (s[j] > 0.0 && j != big) rest += w[j];
    return rest;
}

// Mean and (co)variance of one row by Note [central moments at large T].
// Arguments as for moments_row; work: 8 K doubles.
inline void central_moments_row(const double* a, int64_t k, double t, MomentKind kind,
                                double* mean, double* second, double* work) {
    using namespace moments_const;
    double* s = work;
    double* r = work + k;
    double* log_l = work + 2 * k;
    double* mu = work + 3 * k;
    double* v = work + 4 * k;
    double* sv = work + 5 * k;
    double* m = work + 6 * k;
    double* acc = work + 7 * k;
    const bool want2 = kind != MomentKind::mean;
    const bool full = kind == MomentKind::covariance;

    // s = softmax(a / T) over the categories that are not negligible (others 0).
    double amax = -kInf;
    for (int64_t j = 0; j < k; ++j)
        if (!negligible(a[j], t)) amax = std::fmax(amax, a[j]);
    double total = 0.0;
    for (int64_t j = 0; j < k; ++j) {
        s[j] = negligible(a[j], t) ? 0.0 : std::exp((a[j] - amax) / t);
        total += s[j];
    }
    for (int64_t j = 0; j < k; ++j) s[j] /= total;

    // r_k = 1 - s_k as a sum of the other entries (Note [central moments at large T]).
    int64_t big_s;
    const double rest_s = total_but_largest(s, s, k, big_s);
    for (int64_t j = 0; j < k; ++j)
        r[j] = s[j] > 0.0 ? sum_except(s, rest_s, big_s, j, -1) : 0.0;

    // The inner grid: Gumbel weights f (with the step) and dh = T expm1(g / T).
    double f[kCentralMaxNodes], dh[kCentralMaxNodes];
    const double g_hi = 50.0 / (1.0 - 2.0 / t);
    int nodes = 0;
    for (double g = kCentralGLo; g <= g_hi && nodes < kCentralMaxNodes;
         g = kCentralGLo + (++nodes) * kCentralInnerStep) {
        f[nodes] = kCentralInnerStep * std::exp(-g - std::exp(-g));
        dh[nodes] = std::isinf(t) ? g : t * std::expm1(g / t);
    }

    for (int64_t j = 0; j < k; ++j) acc[j] = 0.0;
    if (want2)
        for (int64_t j = 0; j < (full ? k * k : k); ++j) second[j] = 0.0;
    const int outer =
        static_cast<int>((kCentralTauHi - kCentralTauLo) / kCentralOuterStep);
    for (int step = 0; step <= outer; ++step) {
        const double tt = std::exp(kCentralTauLo + step * kCentralOuterStep);

        // Tilted transforms of every live category: log l_j, mu_j and v_j (dh units).
        double log_lam = 0.0;
        for (int64_t j = 0; j < k; ++j) {
            if (!(s[j] > 0.0)) continue;
            const double lambda = tt * s[j] / t;
            double s0 = 0.0, s1 = 0.0, s2 = 0.0;
            for (int i = 0; i < nodes; ++i) {
                const double w = f[i] * std::exp(-lambda * dh[i]);
                s0 += w;
                s1 += w * dh[i];
                s2 += w * dh[i] * dh[i];
            }
            log_l[j] = std::log(s0);
            mu[j] = s1 / s0;
            v[j] = s2 / s0 - mu[j] * mu[j];
            sv[j] = s[j] * s[j] * v[j];
            log_lam += log_l[j];
        }

        // m_j = sum_{i != j} s_i (mu_j - mu_i); the mean's integrand.
        const double w1 = kCentralOuterStep * tt * std::exp(-tt + log_lam);
        for (int64_t j = 0; j < k; ++j) {
            m[j] = 0.0;
            if (!(s[j] > 0.0)) continue;
            for (int64_t i = 0; i < k; ++i)
                if (i != j && s[i] > 0.0) m[j] += s[i] * (mu[j] - mu[i]);
            acc[j] += w1 * m[j];
        }
        if (!want2) continue;

        // The second moments' integrand t Q + m m^T, weight t^2 exp(-t) Lam dtau.
        const double w2 = tt * w1;
        int64_t big;
        const double rest = total_but_largest(sv, s, k, big);
        for (int64_t j = 0; j < k; ++j) {
            if (!(s[j] > 0.0)) continue;
            const double qjj = r[j] * r[j] * v[j] + sum_except(sv, rest, big, j, -1);
            (full ? second[j * k + j] : second[j]) += w2 * (qjj + m[j] * m[j]);
            if (!full) continue;
            for (int64_t l = j + 1; l < k; ++l) {
                if (!(s[l] > 0.0)) continue;
                const double qjl = -r[j] * s[j] * v[j] - r[l] * s[l] * v[l] +
                                   sum_except(sv, rest, big, j, l);
                second[j * k + l] += w2 * (qjl + m[j] * m[l]);
            }
        }
    }

    // Assemble: E[x] = s (1 + A / T), Cov = (s_k / T)(s_l / T)(I_kl - A_k A_l).
    const double inv_t = 1.0 / t;
    for (int64_t j = 0; j < k; ++j) mean[j] = s[j] + s[j] * (acc[j] * inv_t);
    if (!want2) return;
    for (int64_t j = 0; j < k; ++j) {
        if (!full) {
            const double sj = s[j] * inv_t;
            second[j] = sj * sj * (second[j] - acc[j] * acc[j]);
            continue;
        }
        for (int64_t l = j; l < k; ++l) {
            const double c =
                (s[j] * inv_t) * (s[l] * inv_t) * (second[j * k + l] - acc[j] * acc[l]);
            second[j * k + l] = c;
            second[l * k + j] = c;
        }
    }
}

// Mean and (co)variance of one row (see Note [moments by Laplace transform]).
// a: K normalised logits (-inf masked); mean: K outputs; second: K (variance) or
// K * K (covariance) outputs, or null for the mean alone; work: 8 K doubles.
// Masked and negligible categories get exact zeros. From kCentralT up, all of
// them follow Note [central moments at large T].
inline void moments_row(const double* a, int64_t k, double t, MomentKind kind,
                        double* mean, double* second, double* work) {
    using namespace moments_const;
    double* lam0 = work;
    double* q1 = work + k;
    double* q2 = work + 2 * k;
    const bool want2 = kind != MomentKind::mean;
    const bool full = kind == MomentKind::covariance;
    const int64_t k2 = full ? k * k : k;
    for (int64_t j = 0; j < k; ++j) mean[j] = 0.0;
    if (want2)
        for (int64_t j = 0; j < k2; ++j) second[j] = 0.0;

    // One live category: the sample is that vertex, with no spread.
    int64_t live = 0, only = -1;
    for (int64_t j = 0; j < k; ++j)
        if (!negligible(a[j], t)) ++live, only = j;
    if (live == 1) {
        mean[only] = 1.0;
        return;
    }
    if (t >= kCentralT) {
        central_moments_row(a, k, t, kind, mean, second, work);
        return;
    }

    // Note [dominant category]: when one category d holds most of the mass,
    // E[x_d^2] - E[x_d]^2 cancels (both near 1, the variance near 0). Its
    // moments then come from the rest R = 1 - x_d = sum_{j != d} x_j, whose
    // second moment E[R^2] is integrated alongside (pairs through prefix sums,
    // so nothing cancels): Var(x_d) = E[R^2] - E[R]^2, and since every row of
    // the covariance sums to 0, Cov(x_d, x_j) = -sum_{i != d} Cov(x_i, x_j).
    int64_t d = -1;  // the largest live logit
    for (int64_t j = 0; j < k; ++j)
        if (!negligible(a[j], t) && (d < 0 || a[j] > a[d])) d = j;
    double rest2 = 0.0;  // the integral of E[R^2]

    // The outer trapezoid (Note [outer variable]): right from u0, then left.
    const double m = std::fmin(t, 1.0);
    const double u0 = t < 1.0 ? 0.0 : -std::log(static_cast<double>(live));
    const double h = kOuterStep;
    double peak = 0.0;
    for (int dir = 1; dir >= -1; dir -= 2) {
        int small = 0;
        for (int i = dir > 0 ? 0 : 1; i < 100000 && small < 2; ++i) {
            const double u = u0 + dir * i * h;

            // The inner integrals and log P = sum_j lam_0(sigma_j).
            double log_p = 0.0;
            for (int64_t j = 0; j < k; ++j) {
                lam0[j] = negligible(a[j], t) ? 0.0 : lam(0, a[j], t, u);
                log_p += lam0[j];
            }

            // P r1_j, P r2_j and sqrt(P) r1_j (for the products r1_k r1_l).
            double node = 0.0;
            for (int64_t j = 0; j < k; ++j) {
                if (negligible(a[j], t)) {
                    q1[j] = q2[j] = 0.0;
                    continue;
                }
                const double l1 = lam(1, a[j], t, u) - lam0[j];
                const double pr1 = std::exp(l1 + log_p);
                mean[j] += pr1;
                node = std::fmax(node, pr1);
                q1[j] = std::exp(l1 + 0.5 * log_p);
                if (want2) {
                    const double pr2 = std::exp(lam(2, a[j], t, u) - lam0[j] + log_p);
                    q2[j] = pr2;
                    node = std::fmax(node, pr2);
                }
            }
            if (want2) {
                double prefix = 0.0;  // sum of q1 over the rest, before j
                for (int64_t j = 0; j < k; ++j) {
                    if (j == d) continue;
                    rest2 += q2[j] + 2.0 * m * q1[j] * prefix;
                    prefix += q1[j];
                }
                for (int64_t j = 0; j < k; ++j) {
                    if (!full) {
                        second[j] += q2[j];
                        continue;
                    }
                    double* row = second + j * k;
                    row[j] += q2[j];
                    for (int64_t l = j + 1; l < k; ++l) row[l] += m * q1[j] * q1[l];
                }
            }

            // Stop after two nodes in a row below exp(-kTailCut) of the peak.
            peak = std::fmax(peak, node);
            small = node < std::exp(-kTailCut) * peak ? small + 1 : 0;
        }
    }

    // Trapezoid weights, then central moments from the raw ones.
    for (int64_t j = 0; j < k; ++j) mean[j] *= h;
    if (!want2) return;
    for (int64_t j = 0; j < k; ++j) {
        if (!full) {
            second[j] = h * second[j] - mean[j] * mean[j];
            continue;
        }
        for (int64_t l = j; l < k; ++l) {
            const double c = h * second[j * k + l] - mean[j] * mean[l];
            second[j * k + l] = c;
            second[l * k + j] = c;
        }
    }
    if (mean[d] <= 0.5) return;  // Note [dominant category]
    double rest = 0.0;
    for (int64_t j = 0; j < k; ++j)
        if (j != d) rest += mean[j];
    const double var_d = h * rest2 - rest * rest;
    if (!full) {
        second[d] = var_d;
        return;
    }
    for (int64_t j = 0; j < k; ++j) {
        if (j == d) continue;
        double c = 0.0;
        for (int64_t i = 0; i < k; ++i)
            if (i != d) c += second[i * k + j];
        second[d * k + j] = -c;
        second[j * k + d] = -c;
    }
    second[d * k + d] = var_d;
}

// E[log x_k] (the mean of ExpRelaxedOneHotCategorical). With V and S as in
// Note [moments by Laplace transform], log x_k = log V_k - log S,
// E[log V_k] = (a_k + gamma) / T, and by Frullani's integral against a single
// Frechet variable Z = exp(G / T) (E[log Z] = gamma / T)
//   E[log S] = gamma / T + int dtau (E[exp(-t Z)] - P(tau)),
// whose integrand vanishes at both ends (the leading terms at tau -> -inf cancel
// because the probabilities sum to 1). So E[log x_k] = a_k / T - I / m with I the
// integral over u (Note [outer variable]). Masked categories get -inf.
inline void log_mean_row(const double* a, int64_t k, double t, double* out) {
    using namespace moments_const;
    int64_t live = 0, only = -1;
    for (int64_t j = 0; j < k; ++j)
        if (a[j] > -kInf) ++live, only = j;
    if (live == 1) {
        for (int64_t j = 0; j < k; ++j) out[j] = j == only ? 0.0 : -kInf;
        return;
    }
    const double m = std::fmin(t, 1.0);
    const double u0 = t < 1.0 ? 0.0 : -std::log(static_cast<double>(live));
    const double h = kOuterStep;
    double sum = 0.0, peak = 0.0;
    for (int dir = 1; dir >= -1; dir -= 2) {
        int small = 0;
        for (int i = dir > 0 ? 0 : 1; i < 100000 && small < 2; ++i) {
            const double u = u0 + dir * i * h;
            double log_p = 0.0;
            for (int64_t j = 0; j < k; ++j)
                if (!negligible(a[j], t)) log_p += lam(0, a[j], t, u);
            const double log_z = lam(0, 0.0, t, u);
            // exp(log_z) - exp(log_p) without cancelling the common part; where
            // both have underflowed to -inf (far tails) the term is 0, not NaN.
            const double d = log_p == log_z ? 0.0
                             : log_p > -kInf
                                 ? std::exp(log_p) * std::expm1(log_z - log_p)
                                 : std::exp(log_z);
            // Towards u -> -inf both integrals tend to 1 and d to 0 like e^(2u),
            // until d reaches the rounding of the inner integrals (a few eps of
            // exp(log_z)) and stays there: such terms say nothing, and a walk
            // that waited for exp(-kTailCut) of the peak instead summed 10^5 of
            // them (0.7 to 0.8 s per category at T = 0.5, errors near 1e-11).
            const double noise = kRoundingTerms * std::exp(std::fmax(log_p, log_z));
            sum += d;
            peak = std::fmax(peak, std::fabs(d));
            // <=: an integrand that is 0 throughout (one category outweighs all
            // the others beyond kNegligible) stops after two nodes, too.
            const bool tail = std::fabs(d) <= std::exp(-kTailCut) * peak;
            small = tail || std::fabs(d) <= noise ? small + 1 : 0;
        }
    }
    const double i_over_m = h * sum / m;
    // log x <= 0, so its mean is too; the quadrature's error (small against the
    // largest |entry|) can put a dominant category's tiny mean just above 0.
    for (int64_t j = 0; j < k; ++j)
        out[j] = a[j] > -kInf ? std::fmin(a[j] / t - i_over_m, 0.0) : -kInf;
}

// Note [mode]: on the simplex, log p(x) = const + sum_k (a_k - (T + 1) y_k)
// - K log sum_k exp(a_k - T y_k) with y = log x. A Lagrange multiplier for
// sum x = 1 gives the stationary points
//   F_k(y) = K x_k - (T + 1) + K T w_k = 0,   w = softmax(a - T y),
// (summing F shows sum x = 1 holds at any root). The fixed-point iteration
// x = (T + 1 - K T w) / K diverges, so the root is found by Newton's method in y,
// with the Jacobian J = K [diag(x - T^2 w) + T^2 w w^T] (diagonal plus rank one,
// solved in O(K) by the Sherman-Morrison formula) and a backtracking line search
// on |F|^2. The interior point is the mode when T >= K - 1 (K >= 3) or T > 1
// (K = 2); otherwise the density is unbounded at the vertices (T < K - 1: it
// behaves like eps^(T - (K - 1)) there) or, for K = 2 and T = 1, monotone or flat
// along the edge, and the mode is taken to be the vertex of the most probable
// category (lowest index on ties). Very large T (> 1e8, and > 3e8 max |alpha|)
// uses x_k = (1 + alpha_k / T) / K, whose error O((alpha / T)^2) is below 1e-17.
// In log space (ExpRelaxed) the density of y has its stationary point where
// w = 1/K, i.e. y = log_softmax(a / T), for every T.
inline bool interior_mode_exists(int64_t live, double t) {
    if (live == 2) return t > 1.0;
    return live >= 3 && t >= static_cast<double>(live - 1);
}

// |F|^2 at y (live entries only; masked ones hold -inf in a); fills x and w.
inline double mode_residual(const double* a, const double* y, int64_t k, double t,
                            double kl, double* x, double* w, double* f) {
    double zmax = -moments_const::kInf;
    for (int64_t j = 0; j < k; ++j)
        if (a[j] > -moments_const::kInf) zmax = std::fmax(zmax, a[j] - t * y[j]);
    double zsum = 0.0;
    for (int64_t j = 0; j < k; ++j) {
        w[j] = a[j] > -moments_const::kInf ? std::exp(a[j] - t * y[j] - zmax) : 0.0;
        zsum += w[j];
    }
    double r = 0.0;
    for (int64_t j = 0; j < k; ++j) {
        w[j] /= zsum;
        x[j] = a[j] > -moments_const::kInf ? std::exp(y[j]) : 0.0;
        f[j] =
            a[j] > -moments_const::kInf ? kl * x[j] - (t + 1.0) + kl * t * w[j] : 0.0;
        r += f[j] * f[j];
    }
    return r;
}

// Newton's method for the stationary point of Note [mode] from
// y = log_softmax(a / scale). work: 6 K doubles; on return work[K .. 2K) holds
// x. Returns whether it converged.
inline bool mode_newton(const double* a, int64_t k, double t, double kl, double amax,
                        double scale, double* work) {
    using moments_const::kInf;
    double* y = work;
    double* x = work + k;
    double* w = work + 2 * k;
    double* f = work + 3 * k;
    double* dy = work + 4 * k;
    double* yt = work + 5 * k;
    double s = 0.0;
    for (int64_t j = 0; j < k; ++j)
        s += a[j] > -kInf ? std::exp((a[j] - amax) / scale) : 0.0;
    for (int64_t j = 0; j < k; ++j)
        y[j] = a[j] > -kInf ? (a[j] - amax) / scale - std::log(s) : -kInf;
    double r = mode_residual(a, y, k, t, kl, x, w, f);
    bool converged = false;
    for (int it = 0; it < 200 && !converged; ++it) {
        // Sherman-Morrison: (D + T^2 w w^T) dy = -F / K with D = diag(x - T^2 w).
        const double t2 = t * t;
        double wdr = 0.0, wdw = 0.0;
        for (int64_t j = 0; j < k; ++j) {
            if (!(a[j] > -kInf)) continue;
            double d = x[j] - t2 * w[j];
            const double tiny = 1e-13 * std::fmax(x[j], t2 * w[j]);
            if (std::fabs(d) < tiny) d = d < 0.0 ? -tiny : tiny;
            dy[j] = -f[j] / kl / d;  // D^-1 r
            yt[j] = w[j] / d;        // D^-1 w
            wdr += w[j] * dy[j];
            wdw += w[j] * yt[j];
        }
        const double c = t2 * wdr / (1.0 + t2 * wdw);
        double big = 0.0;
        for (int64_t j = 0; j < k; ++j) {
            if (!(a[j] > -kInf)) continue;
            dy[j] -= c * yt[j];
            big = std::fmax(big, std::fabs(dy[j]));
        }
        if (!std::isfinite(big)) break;

        // Backtracking: steps are at most 1 in log space, halved until |F| falls.
        double step = big > 1.0 ? 1.0 / big : 1.0;
        double rt = r;
        for (int ls = 0; ls < 60; ++ls, step *= 0.5) {
            for (int64_t j = 0; j < k; ++j)
                yt[j] = a[j] > -kInf ? y[j] + step * dy[j] : -kInf;
            rt = mode_residual(a, yt, k, t, kl, x, w, f);
            if (rt < r || step * big < 1e-15) break;
        }
        for (int64_t j = 0; j < k; ++j) y[j] = yt[j];
        const bool tiny_step = step * big <= 1e-14;
        const bool stalled = !(rt < r);
        r = mode_residual(a, y, k, t, kl, x, w, f);
        converged = tiny_step || (stalled && r <= 1e-20 * (t + 1.0) * (t + 1.0) * kl);
    }

    return converged && r <= 1e-16 * (t + 1.0) * (t + 1.0) * kl;
}

// The mode of one row. space 0: x on the simplex; 1: y = log x. work: 6 K doubles.
// Returns false if Newton failed to converge (out then holds its last iterate).
inline bool mode_row(const double* a, int64_t k, double t, int space, double* out,
                     double* work) {
    using moments_const::kInf;
    int64_t live = 0, best = -1;
    double amax = -kInf, asum = 0.0;
    for (int64_t j = 0; j < k; ++j) {
        if (!(a[j] > -kInf)) continue;
        ++live, asum += a[j];
        if (a[j] > amax) amax = a[j], best = j;
    }
    const double kl = static_cast<double>(live);

    // Log space: y = log_softmax(a / T).
    if (space == 1) {
        double s = 0.0;
        for (int64_t j = 0; j < k; ++j)
            s += a[j] > -kInf ? std::exp((a[j] - amax) / t) : 0.0;
        for (int64_t j = 0; j < k; ++j)
            out[j] = a[j] > -kInf ? (a[j] - amax) / t - std::log(s) : -kInf;
        return true;
    }

    // No interior mode: the vertex of the most probable category.
    if (!interior_mode_exists(live, t)) {
        for (int64_t j = 0; j < k; ++j) out[j] = j == best ? 1.0 : 0.0;
        return true;
    }

    // Huge temperatures: the first-order expansion (Note [mode]).
    double amin = kInf;
    for (int64_t j = 0; j < k; ++j)
        if (a[j] > -kInf) amin = std::fmin(amin, a[j]);
    const double spread = std::fmax(amax - asum / kl, asum / kl - amin);
    if (t > 1e8 && t > 3e8 * spread) {
        for (int64_t j = 0; j < k; ++j)
            out[j] = a[j] > -kInf ? (1.0 + (a[j] - asum / kl) / t) / kl : 0.0;
        return true;
    }

    // Newton from y = log_softmax(a / T), where w = 1/K and F_k = K x_k - 1:
    // near the root when T is large against the logits' spread (the root moves
    // y by O(1/T)). From log_softmax(a / (T + 1)) instead, w can be off by
    // exp(spread / (T + 1)) and Newton may walk off (logits (0, -300), T = 32),
    // but that start suits T near the threshold; each is tried in turn.
    bool converged = false;
    for (double scale : {t, t + 1.0}) {
        converged = mode_newton(a, k, t, kl, amax, scale, work);
        if (converged) break;
    }

    // Renormalise the sum (1 within rounding) and report.
    const double* x = work + k;
    double xs = 0.0;
    for (int64_t j = 0; j < k; ++j) xs += x[j];
    for (int64_t j = 0; j < k; ++j) out[j] = x[j] / xs;
    return converged;
}

// KL(Cat(p) || Cat(q)) from normalised logits: sum_k p_k (a_k - b_k), with
// 0 log 0 = 0, +inf when q_k = 0 < p_k, clamped at 0 from below (rounding).
inline double categorical_kl_row(const double* a, const double* b, int64_t k) {
    double s = 0.0;
    for (int64_t j = 0; j < k; ++j) {
        if (!(a[j] > -moments_const::kInf)) continue;
        if (!(b[j] > -moments_const::kInf)) return moments_const::kInf;
        s += std::exp(a[j]) * (a[j] - b[j]);
    }
    return std::fmax(s, 0.0);
}

// One-hot of the first largest entry of x (a soft sample, or its log).
template <class Real>
void one_hot_row(const Real* x, int64_t k, Real* out) {
    int64_t best = 0;
    for (int64_t j = 1; j < k; ++j)
        if (x[j] > x[best]) best = j;
    for (int64_t j = 0; j < k; ++j) out[j] = j == best ? Real(1) : Real(0);
}

}  // namespace RELAXCAT_ISA_NAMESPACE
}  // namespace detail
}  // namespace relaxcat
