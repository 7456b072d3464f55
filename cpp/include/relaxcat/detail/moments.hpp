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

// Note [large temperatures]: as T -> inf every x_k tends to 1/K and the
// covariance to 0 like 1/T^2. The quadrature forms it as E[x_k x_l] - E[x_k] E[x_l]
// from terms of size 1/K^2, losing about 1e-15 T^2 of the result, so above
// kExpansionT the covariance comes from its expansion in eta = 1/T. With
// alpha = a - mean(a) over the live categories, s2 = pi^2/6 and k3 = 2 zeta(3)
// (the Gumbel variance and third cumulant) and P = I - 11^T/K, expanding
// softmax(eta (a + G)) to second order around the uniform point gives
//   K^2 Cov = eta^2 s2 P + eta^3 [s2 (alpha_k + alpha_l) (P_kl - 1/K)
//                                 + k3 (1 - 2/K) P_kl] + O(eta^4).
// The O(eta^4) remainder (relative size about (1 + alpha^2) / T^2, 3e-7 at
// T = 2000 for logits [1, 0, -1]) is not dropped but anchored: it is measured by
// quadrature at kAnchorT, where the quadrature is still good to 1e-10, and
// scaled by (kAnchorT / T)^4. What is left is of relative order
// 1 / (kAnchorT T^2) at T and shrinks from there.
constexpr double kExpansionT = 1.0e3;
constexpr double kAnchorT = 2.5e2;

inline double covariance_expansion(const double* a, int64_t k, double t, int64_t j,
                                   int64_t l, double kl, double mean_a);

// Mean and (co)variance of one row (see Note [moments by Laplace transform]).
// a: K normalised logits (-inf masked); mean: K outputs; second: K (variance) or
// K * K (covariance) outputs, or null for the mean alone; work: 4 K doubles.
// Masked and negligible categories get exact zeros. Above kExpansionT the second
// moments follow Note [large temperatures].
inline void moments_row(const double* a, int64_t k, double t, MomentKind kind,
                        double* mean, double* second, double* work) {
    using namespace moments_const;
    double* lam0 = work;
    double* q1 = work + k;
    double* q2 = work + 2 * k;
    const bool want2 = kind != MomentKind::mean;
    const bool full = kind == MomentKind::covariance;
    const bool expand = want2 && t > kExpansionT;
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
                if (want2 && !expand) {
                    const double pr2 = std::exp(lam(2, a[j], t, u) - lam0[j] + log_p);
                    q2[j] = pr2;
                    node = std::fmax(node, pr2);
                }
            }
            if (want2 && !expand) {
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
    if (!expand) {
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
        return;
    }

    // Large T: the expansion plus its anchored remainder (Note [large temperatures]).
    moments_row(a, k, kAnchorT, kind, work + 3 * k, second, work);
    double mean_a = 0.0;
    for (int64_t j = 0; j < k; ++j)
        if (!negligible(a[j], t)) mean_a += a[j];
    mean_a /= static_cast<double>(live);
    const double r = kAnchorT / t, r4 = r * r * r * r;
    for (int64_t j = 0; j < k; ++j) {
        for (int64_t l = full ? 0 : j; l < (full ? k : j + 1); ++l) {
            double& c = full ? second[j * k + l] : second[j];
            const double e_t = covariance_expansion(a, k, t, j, l, live, mean_a);
            const double e_0 = covariance_expansion(a, k, kAnchorT, j, l, live, mean_a);
            c = e_t + r4 * (c - e_0);
        }
    }
}

// One entry of the expansion of Note [large temperatures].
inline double covariance_expansion(const double* a, int64_t k, double t, int64_t j,
                                   int64_t l, double kl, double mean_a) {
    constexpr double kS2 = 1.6449340668482264365;  // pi^2 / 6
    constexpr double kK3 = 2.4041138063191885708;  // 2 zeta(3)
    (void)k;
    if (negligible(a[j], t) || negligible(a[l], t)) return 0.0;
    const double eta = 1.0 / t;
    const double p = (j == l ? 1.0 : 0.0) - 1.0 / kl;
    const double al = (a[j] - mean_a) + (a[l] - mean_a);
    return eta * eta / (kl * kl) *
           (kS2 * p + eta * (kS2 * al * (p - 1.0 / kl) + kK3 * (1.0 - 2.0 / kl) * p));
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
            // exp(log_z) - exp(log_p) without cancelling the common part.
            const double d = std::exp(log_p) * std::expm1(log_z - log_p);
            sum += d;
            peak = std::fmax(peak, std::fabs(d));
            small = std::fabs(d) < std::exp(-kTailCut) * peak ? small + 1 : 0;
        }
    }
    const double i_over_m = h * sum / m;
    for (int64_t j = 0; j < k; ++j) out[j] = a[j] > -kInf ? a[j] / t - i_over_m : -kInf;
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

    // Newton in y from y = log_softmax(a / (T + 1)).
    double* y = work;
    double* x = work + k;
    double* w = work + 2 * k;
    double* f = work + 3 * k;
    double* dy = work + 4 * k;
    double* yt = work + 5 * k;
    double s = 0.0;
    for (int64_t j = 0; j < k; ++j)
        s += a[j] > -kInf ? std::exp((a[j] - amax) / (t + 1.0)) : 0.0;
    for (int64_t j = 0; j < k; ++j)
        y[j] = a[j] > -kInf ? (a[j] - amax) / (t + 1.0) - std::log(s) : -kInf;
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

    // Renormalise the sum (1 within rounding) and report.
    double xs = 0.0;
    for (int64_t j = 0; j < k; ++j) xs += x[j];
    for (int64_t j = 0; j < k; ++j) out[j] = x[j] / xs;
    return converged && r <= 1e-16 * (t + 1.0) * (t + 1.0) * kl;
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
inline void one_hot_row(const double* x, int64_t k, double* out) {
    int64_t best = 0;
    for (int64_t j = 1; j < k; ++j)
        if (x[j] > x[best]) best = j;
    for (int64_t j = 0; j < k; ++j) out[j] = j == best ? 1.0 : 0.0;
}

}  // namespace RELAXCAT_ISA_NAMESPACE
}  // namespace detail
}  // namespace relaxcat
