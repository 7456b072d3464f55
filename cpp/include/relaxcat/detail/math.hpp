#pragma once
// Elementary functions in double precision, written with +, -, *, / and bit
// operations only, so that:
//   - every instruction set computes the same bits (no fused multiply-add is
//     formed: the project compiles with -ffp-contract=off), which is what makes
//     the Gumbel noise identical on every SIMD level;
//   - the loops that call them vectorise (no calls into libm, no branches).
// Accuracy (measured by tests/python/test_math.py against mpmath through the
// module's test hooks): log_d within 1 ulp, exp_d within 2 ulp on their domains.

#include <cstdint>
#include <cstring>
#include <limits>

#include "isa.hpp"

namespace relaxcat {
namespace detail {
namespace RELAXCAT_ISA_NAMESPACE {

inline uint64_t bits_of(double x) {
    uint64_t b;
    std::memcpy(&b, &x, sizeof b);
    return b;
}

inline double double_of(uint64_t b) {
    double x;
    std::memcpy(&x, &b, sizeof x);
    return x;
}

// A small signed integer as a double, through the 1.5 * 2^52 bias, because a
// vector int64 -> double conversion needs AVX-512DQ and this works everywhere.
inline double small_int_to_double(int64_t k) {
    return double_of(UINT64_C(0x4338000000000000) + static_cast<uint64_t>(k)) -
           6755399441055744.0;
}

// Natural logarithm for x >= 0 (x = 0 gives -inf, +inf gives +inf).
// The reduction and the polynomial are those of fdlibm's e_log.c (Sun
// Microsystems, 1993): x = 2^k (1 + f) with 1 + f in [sqrt(2)/2, sqrt(2)),
// log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)) with s = f / (2 + f).
inline double log_d(double x) {
    constexpr double kLn2Hi = 6.93147180369123816490e-01;
    constexpr double kLn2Lo = 1.90821492927058770002e-10;
    constexpr double kLg1 = 6.666666666666735130e-01;
    constexpr double kLg2 = 3.999999999940941908e-01;
    constexpr double kLg3 = 2.857142874366239149e-01;
    constexpr double kLg4 = 2.222219843214978396e-01;
    constexpr double kLg5 = 1.818357216161805012e-01;
    constexpr double kLg6 = 1.531383769920937332e-01;
    constexpr double kLg7 = 1.479819860511658591e-01;

    // Subnormals are scaled into the normal range first.
    const bool tiny = x < 2.2250738585072014e-308;
    const double xs = tiny ? x * 18014398509481984.0 : x;
    const int64_t kadj = tiny ? -54 : 0;

    // Split off the exponent so that the mantissa lands in [sqrt(2)/2, sqrt(2)).
    const uint64_t b = bits_of(xs);
    uint64_t hx = (b >> 32) + (0x3ff00000 - 0x3fe6a09e);
    const int64_t k = static_cast<int64_t>(hx >> 20) - 0x3ff + kadj;
    hx = (hx & 0x000fffff) + 0x3fe6a09e;
    const double f = double_of((hx << 32) | (b & 0xffffffffu)) - 1.0;

    // The polynomial in s^2, split in two halves as fdlibm does.
    const double hfsq = 0.5 * f * f;
    const double s = f / (2.0 + f);
    const double z = s * s;
    const double w = z * z;
    const double t1 = w * (kLg2 + w * (kLg4 + w * kLg6));
    const double t2 = z * (kLg1 + w * (kLg3 + w * (kLg5 + w * kLg7)));
    const double dk = small_int_to_double(k);
    const double r =
        dk * kLn2Hi - ((hfsq - (s * (hfsq + (t1 + t2)) + dk * kLn2Lo)) - f);

    // Edges: log(0) = -inf, log(inf) = inf, log(negative or NaN) = NaN.
    constexpr double kInf = std::numeric_limits<double>::infinity();
    constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
    const double edge = x == 0.0 ? -kInf : (x == kInf ? kInf : kNan);
    return (x > 0.0 && x < kInf) ? r : edge;
}

// log(1 + f) for |f| <= 0.25, without forming 1 + f: the core of log_d with
// k = 0, so it is accurate to an ulp of the result however small f is.
inline double log1p_small(double f) {
    const double hfsq = 0.5 * f * f;
    const double s = f / (2.0 + f);
    const double z = s * s;
    const double w = z * z;
    const double t1 =
        w * (3.999999999940941908e-01 +
             w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
    const double t2 =
        z * (6.666666666666735130e-01 +
             w * (2.857142874366239149e-01 +
                  w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
    return f - (hfsq - s * (hfsq + (t1 + t2)));
}

// exp(x) for any x (below -746 it is 0, above 709.78 +inf, exp(-inf) = 0).
// Reduction x = k ln2 + r with |r| <= ln2 / 2, then the Taylor series of exp(r)
// to degree 13 (truncation error below 4e-18), then scaling by 2^k in two
// factors so that subnormal results are rounded once.
inline double exp_d(double x) {
    constexpr double kInvLn2 = 1.4426950408889634074;
    constexpr double kLn2Hi = 6.93147180369123816490e-01;
    constexpr double kLn2Lo = 1.90821492927058770002e-10;
    constexpr double kShifter = 6755399441055744.0;  // 1.5 * 2^52

    // Clamp: beyond these bounds the result is 0 or inf anyway, and the clamp
    // keeps k small. NaN fails both comparisons and propagates.
    const double xc = x < -746.0 ? -746.0 : (x > 710.0 ? 710.0 : x);

    // k = round(x / ln2) read from the low bits of t.
    const double t = xc * kInvLn2 + kShifter;
    const double kd = t - kShifter;
    const int64_t k = static_cast<int64_t>(bits_of(t) - bits_of(kShifter));
    const double hi = xc - kd * kLn2Hi;
    const double lo = kd * kLn2Lo;
    const double r = hi - lo;

    // Taylor series, Horner form; coefficients are 1/n!.
    double p = 1.6059043836821614599e-10;  // 1/13!
    p = 2.0876756987868098979e-09 + r * p;
    p = 2.5052108385441718775e-08 + r * p;
    p = 2.7557319223985890653e-07 + r * p;
    p = 2.7557319223985890653e-06 + r * p;
    p = 2.4801587301587301587e-05 + r * p;
    p = 1.9841269841269841270e-04 + r * p;
    p = 1.3888888888888888889e-03 + r * p;
    p = 8.3333333333333333333e-03 + r * p;
    p = 4.1666666666666666667e-02 + r * p;
    p = 1.6666666666666666667e-01 + r * p;
    p = 0.5 + r * p;
    p = 1.0 + r * p;
    const double y = 1.0 + r * p;

    // 2^k as two powers of two, each a normal number for k in [-1077, 1025].
    const int64_t k1 = k >> 1;
    const int64_t k2 = k - k1;
    const double s1 = double_of(static_cast<uint64_t>(k1 + 1023) << 52);
    const double s2 = double_of(static_cast<uint64_t>(k2 + 1023) << 52);
    return y * s1 * s2;
}

// lgamma(n) = log((n - 1)!) for a positive integer n. Exact sums of logs
// for small n, Stirling's series beyond (truncation error below 3e-14 absolute
// at n = 32, relative error below 1e-15).
inline double lgamma_int(int64_t n) {
    if (n <= 2) return 0.0;
    if (n < 32) {
        double s = 0.0;
        for (int64_t j = 2; j < n; ++j) s += log_d(static_cast<double>(j));
        return s;
    }
    const double x = static_cast<double>(n);
    const double inv = 1.0 / x;
    const double inv2 = inv * inv;
    const double series =
        inv * (1.0 / 12 - inv2 * (1.0 / 360 - inv2 * (1.0 / 1260 - inv2 / 1680)));
    return (x - 0.5) * log_d(x) - x + 0.91893853320467274178 + series;
}

}  // namespace RELAXCAT_ISA_NAMESPACE
}  // namespace detail
}  // namespace relaxcat
