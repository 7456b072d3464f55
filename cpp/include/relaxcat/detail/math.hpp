#pragma once
// Elementary functions in double precision, written with +, -, *, / and bit
// operations only (and, for exp, the exact steps named below), so that:
//   - log_d computes the same bits on every instruction set (no fused
//     multiply-add is formed: the project compiles with -ffp-contract=off),
//     which is what makes the Gumbel noise identical on every SIMD level;
//   - the loops that call them vectorise (no calls into libm; log's one branch
//     is per vector, between two paths that give the same bits).
//
// Note [fused exp]: exp is not part of the noise, and its Taylor steps are
// most of its cost, so each step is an explicit fused multiply-add where the
// level has FMA (AVX2, AVX-512) and a multiply and an add elsewhere. Two more
// steps change no bit: the reduction's k ln2_hi is exact, so it is subtracted
// in a fused step, and AVX-512 scales by 2^k in one instruction (scalef),
// rounded once as the two factors elsewhere are. Levels with FMA agree bit for
// bit; the baseline level differs from them by at most
// an ulp (test_math.py), and every level is within 2 ulp of exact. Samples and
// densities may therefore differ across levels in the last place, within the
// bounds the tests hold them to; the noise does not.
//
// Note [fused log]: the noise needs log_d's bits on every level, but the
// kernels' other logarithms (log x of a value, log of a row sum) do not, and
// there the same polynomial with its Horner steps fused (log_fused_d,
// log_lanes<true>) is a fifth faster (0.97 -> 0.77 ns per double on AVX-512,
// one core, a buffer in L1): a log is a third of rsample_vjp's time at K = 256.
// With a multiply and an add in place of each fused step, which is what the
// baseline level does, it is log_d exactly (the same operations in the same
// order; k ln2_hi is exact, so fusing its product changes nothing). Levels with
// FMA agree bit for bit, and the baseline differs from them by at most an ulp,
// as for exp.
// Accuracy (measured by tests/python/test_math.py against mpmath through the
// module's test hooks): log_d and log_fused_d within 1 ulp, exp_d within 2 ulp
// on their domains.

#include <cstdint>
#include <cstring>
#include <limits>

#include "isa.hpp"

namespace relaxcat {
namespace detail {
namespace RELAXCAT_ISA_NAMESPACE {

// The bits of x read as a To of the same size (std::bit_cast before C++20).
template <class To, class From>
inline To bit_cast_to(const From& x) {
    static_assert(sizeof(To) == sizeof(From), "bit_cast_to needs equal sizes");
    To y;
    std::memcpy(&y, &x, sizeof y);
    return y;
}

inline uint64_t bits_of(double x) {
    return bit_cast_to<uint64_t>(x);
}

inline double double_of(uint64_t b) {
    return bit_cast_to<double>(b);
}

#if defined(__GNUC__)
#define RELAXCAT_ALWAYS_INLINE inline __attribute__((always_inline))
// Every call in the function's body is inlined, recursively: for the row
// reductions, whose term functions take and return vectors, which GCC otherwise
// sometimes calls out of line, each call passing its vectors through memory
// (kernels.hpp, Note [row reductions]).
#define RELAXCAT_FLATTEN inline __attribute__((flatten))
#else
#define RELAXCAT_ALWAYS_INLINE inline
#define RELAXCAT_FLATTEN inline
#endif

// Whether every lane of a comparison holds, or some lane does: for one lane,
// the comparison itself (simd.hpp has the vector versions).
inline bool all_lanes(bool b) {
    return b;
}

inline bool any_lane(bool b) {
    return b;
}

// What log_lanes and exp_lanes need of a lane type D: its bit pattern type U,
// a signed integer type I of the same width, bit casts and constants. double is
// one lane type; simd.hpp adds vectors of doubles, so that the scalar and the
// vector functions are one source and give the same bits.
template <class D>
struct Lanes;

// y 2^k for y in [1/2, 2) and k in [-1077, 1025], rounded once: two factors
// 2^(k >> 1) and 2^(k - (k >> 1)), each a normal number, so that the first
// product is exact and only a subnormal or infinite result rounds.
template <class D, class I>
RELAXCAT_ALWAYS_INLINE D scale_by_two_factors(D y, I k) {
    using L = Lanes<D>;
    using U = typename L::U;
    const I k1 = k >> 1;
    const I k2 = k - k1;
    const D s1 = L::value((U)(k1 + 1023) << 52);
    const D s2 = L::value((U)(k2 + 1023) << 52);
    return y * s1 * s2;
}

template <>
struct Lanes<double> {
    using U = uint64_t;
    using I = int64_t;
    static U bits(double x) { return bits_of(x); }
    static double value(U b) { return double_of(b); }
    static double splat(double c) { return c; }
    static I splat_i(int64_t c) { return c; }
    static bool all(bool b) { return b; }
    // y 2^k, kd = k as a double (exp_lanes).
    static double scale(double y, double kd, I k) {
        (void)kd;
        return scale_by_two_factors(y, k);
    }
    // a b + c, fused where the level has FMA (Note [fused exp]); AVX-512F has
    // the fused instruction without -mfma, and simd.hpp's vectors use it there,
    // so the scalar tail does too.
    static double mul_add(double a, double b, double c) {
#if defined(__FMA__) || defined(__AVX512F__)
        return __builtin_fma(a, b, c);
#else
        return a * b + c;
#endif
    }
};

// fdlibm's polynomial for log(1 + f) (e_log.c, Sun Microsystems, 1993):
// log(1 + f) = f - h + s (h + R) with h = f^2 / 2, s = f / (2 + f) and R the
// returned R(s^2), split in two halves as fdlibm does. Fused: each Horner step
// is L::mul_add (Note [fused log]).
template <bool Fused = false, class D>
RELAXCAT_ALWAYS_INLINE D log1p_poly(D f, D& h, D& s) {
    using L = Lanes<D>;
    constexpr double c1 = 6.666666666666735130e-01, c2 = 3.999999999940941908e-01,
                     c3 = 2.857142874366239149e-01, c4 = 2.222219843214978396e-01,
                     c5 = 1.818357216161805012e-01, c6 = 1.531383769920937332e-01,
                     c7 = 1.479819860511658591e-01;
    h = 0.5 * f * f;
    s = f / (2.0 + f);
    const D z = s * s;
    const D w = z * z;
    if constexpr (Fused) {
        const D t1 =
            w * L::mul_add(w, L::mul_add(w, L::splat(c6), L::splat(c4)), L::splat(c2));
        const D t2 =
            z * L::mul_add(w,
                           L::mul_add(w, L::mul_add(w, L::splat(c7), L::splat(c5)),
                                      L::splat(c3)),
                           L::splat(c1));
        return t1 + t2;
    } else {
        const D t1 = w * (c2 + w * (c4 + w * c6));
        const D t2 = z * (c1 + w * (c3 + w * (c5 + w * c7)));
        return t1 + t2;
    }
}

// log x for positive normal finite x, lane by lane: x = 2^k (1 + f) with
// 1 + f in [sqrt(2)/2, sqrt(2)), then fdlibm's combination
// k ln2_hi - ((h - (s (h + R) + k ln2_lo)) - f); unlike fdlibm, without special
// paths for k = 0 or tiny f (README, "The random stream"). kadj is added to k
// (log_lanes scales subnormals by 2^54 and passes -54). Fused: Note [fused log].
template <bool Fused = false, class D>
RELAXCAT_ALWAYS_INLINE D log_positive_lanes(D x, typename Lanes<D>::I kadj) {
    using L = Lanes<D>;
    using U = typename L::U;
    using I = typename L::I;
    constexpr double kLn2Hi = 6.93147180369123816490e-01;
    constexpr double kLn2Lo = 1.90821492927058770002e-10;

    // Split off the exponent so that the mantissa lands in [sqrt(2)/2, sqrt(2)).
    const U b = L::bits(x);
    U hx = (b >> 32) + (0x3ff00000 - 0x3fe6a09e);
    const I k = (I)(hx >> 20) - 0x3ff + kadj;
    hx = (hx & 0x000fffff) + 0x3fe6a09e;
    const D f = L::value((hx << 32) | (b & 0xffffffffu)) - 1.0;

    // The polynomial, then k ln2 added in two parts; k as a double through the
    // 1.5 * 2^52 bias, because a vector int64 -> double conversion needs
    // AVX-512DQ and this works everywhere.
    D h, s;
    const D r = log1p_poly<Fused>(f, h, s);
    const D dk = L::value(UINT64_C(0x4338000000000000) + (U)k) - 6755399441055744.0;
    if constexpr (Fused)
        return L::mul_add(dk, L::splat(kLn2Hi),
                          -((h - L::mul_add(s, h + r, dk * kLn2Lo)) - f));
    else
        return dk * kLn2Hi - ((h - (s * (h + r) + dk * kLn2Lo)) - f);
}

template <bool Fused = false, class D>
RELAXCAT_ALWAYS_INLINE D log_positive_lanes(D x) {
    return log_positive_lanes<Fused>(x, Lanes<D>::splat_i(0));
}

// Natural logarithm for x >= 0 (x = 0 gives -inf, +inf gives +inf), lane by
// lane: log_positive_lanes, with subnormals scaled into the normal range first
// and the edges set after. When every lane is normal, positive and finite (the
// usual case), those two steps are skipped: they would not change a bit, and
// they are about a fifth of the work.
template <bool Fused = false, class D>
RELAXCAT_ALWAYS_INLINE D log_lanes(D x) {
    using L = Lanes<D>;
    constexpr double kInf = std::numeric_limits<double>::infinity();
    constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
    constexpr double kMinNormal = 2.2250738585072014e-308;
    if (L::all((x >= kMinNormal) & (x < kInf))) return log_positive_lanes<Fused>(x);

    const auto tiny = x < kMinNormal;
    const D xs = tiny ? x * 18014398509481984.0 : x;
    const D y = log_positive_lanes<Fused>(xs, tiny ? L::splat_i(-54) : L::splat_i(0));

    // Edges: log(0) = -inf, log(inf) = inf, log(negative or NaN) = NaN.
    const D edge =
        x == 0.0 ? L::splat(-kInf) : (x == kInf ? L::splat(kInf) : L::splat(kNan));
    return ((x > 0.0) & (x < kInf)) ? y : edge;
}

inline double log_d(double x) {
    return log_lanes(x);
}

// The kernels' log (Note [fused log]).
inline double log_fused_d(double x) {
    return log_lanes<true>(x);
}

// log(1 + f) for |f| <= 0.25, without forming 1 + f: the core of log_d with
// k = 0, so it is accurate to an ulp of the result however small f is.
inline double log1p_small(double f) {
    double h, s;
    const double r = log1p_poly(f, h, s);
    return f - (h - s * (h + r));
}

// 1 / n! for n = 0 .. 13, the Taylor coefficients of exp.
constexpr double kInvFactorial[14] = {
    1.0,
    1.0,
    0.5,
    1.6666666666666666667e-01,
    4.1666666666666666667e-02,
    8.3333333333333333333e-03,
    1.3888888888888888889e-03,
    1.9841269841269841270e-04,
    2.4801587301587301587e-05,
    2.7557319223985890653e-06,
    2.7557319223985890653e-07,
    2.5052108385441718775e-08,
    2.0876756987868098979e-09,
    1.6059043836821614599e-10,
};

// exp(x) for any x (below -746 it is 0, above 709.78 +inf, exp(-inf) = 0), lane
// by lane. Reduction x = k ln2 + r with |r| <= ln2 / 2, then the Taylor series of
// exp(r) to degree Degree, then scaling by 2^k with a single rounding, so that
// subnormal results are rounded once (Lanes::scale). Degree 13 (the default, for double
// results) leaves a truncation error below 4e-18; degree 9, used where the result is
// rounded to float, below 7e-12 (a ten-thousandth of a float ulp) at four fewer steps.
template <int Degree = 13, class D>
RELAXCAT_ALWAYS_INLINE D exp_lanes(D x) {
    static_assert(Degree >= 2 && Degree <= 13, "exp_lanes takes degree 2 to 13");
    using L = Lanes<D>;
    using I = typename L::I;
    constexpr double kShifter = 6755399441055744.0;  // 1.5 * 2^52

    // Clamp: beyond these bounds the result is 0 or inf anyway, and the clamp
    // keeps k small. NaN fails both comparisons and propagates.
    const D xc = x < -746.0 ? L::splat(-746.0) : (x > 710.0 ? L::splat(710.0) : x);

    // k = round(x / ln2) read from the low bits of t.
    const D t = xc * 1.4426950408889634074 + kShifter;
    const D kd = t - kShifter;
    const I k = (I)(L::bits(t) - UINT64_C(0x4338000000000000));
    // kd ln2_hi is exact (ln2_hi has 32 significant bits, |k| < 2^11), so
    // the fused and the unfused form give the same bits.
    // kd times -ln2_hi, not -kd times ln2_hi: a NaN keeps its sign through the
    // product, as through the unfused form (-kd flipped it in the scalar path).
    const D hi = L::mul_add(kd, L::splat(-6.93147180369123816490e-01), xc);
    const D lo = kd * 1.90821492927058770002e-10;
    const D r = hi - lo;

    // Taylor series, Horner form, each step one fused multiply-add where the
    // level has FMA (Note [fused exp]).
    D p = L::splat(kInvFactorial[Degree]);
#pragma GCC unroll 16
    for (int n = Degree - 1; n >= 1; --n)
        p = L::mul_add(r, p, L::splat(kInvFactorial[n]));
    const D y = L::mul_add(r, p, L::splat(1.0));

    // y 2^k, rounded once (scale_by_two_factors, or one AVX-512 instruction).
    return L::scale(y, kd, k);
}

template <int Degree = 13>
inline double exp_d(double x) {
    return exp_lanes<Degree>(x);
}

// Single-precision logarithm, used only by the float32 noise (noise.hpp), for
// lane types F of floats: float itself, and the float vectors of simd.hpp.
template <>
struct Lanes<float> {
    using U = uint32_t;
    using I = int32_t;
    static U bits(float x) { return bit_cast_to<U>(x); }
    static float value(U b) { return bit_cast_to<float>(b); }
    static float to_float(I k) { return static_cast<float>(k); }
    static I splat_i(int32_t c) { return c; }
};

// log(2^k (1 + f)) for 1 + f in [sqrt(2)/2, sqrt(2)] in float arithmetic: the
// fdlibm scheme of log_lanes with the degree-8 polynomial of FreeBSD's
// e_logf.c (coefficients 0xaaaaaa.0p-24, 0xccce13.0p-25, 0x91e9ee.0p-25,
// 0xf89e26.0p-26; its error as a fit of log(1+s) - log(1-s) is below 5e-11,
// checked with mpmath). k ln2 in two parts: ln2_hi has 17 significant bits,
// so k ln2_hi is exact for |k| < 128. With k = 0 the result keeps full relative
// precision however small f is.
template <class F, class I>
RELAXCAT_ALWAYS_INLINE F logf_from_parts(I k, F f) {
    using L = Lanes<F>;
    constexpr float kLn2Hi = 0x1.62e3p-1f;
    constexpr float kLn2Lo = 0x1.2fefa2p-17f;
    const F h = 0.5f * f * f;
    const F s = f / (2.0f + f);
    const F z = s * s;
    const F w = z * z;
    const F r = z * (0x1.555554p-1f + w * 0x1.23d3dcp-2f) +
                w * (0x1.999c26p-2f + w * 0x1.f13c4cp-3f);
    const F dk = L::to_float(k);
    return dk * kLn2Hi - ((h - (s * (h + r) + dk * kLn2Lo)) - f);
}

// The split x = 2^k (1 + f) with 1 + f in [sqrt(2)/2, sqrt(2)), for positive
// normal finite x (all the noise needs; no edge cases are handled).
template <class F>
RELAXCAT_ALWAYS_INLINE void logf_split(F x, typename Lanes<F>::I& k, F& f) {
    using L = Lanes<F>;
    using U = typename L::U;
    using I = typename L::I;
    const U b = L::bits(x) + (0x3f800000u - 0x3f3504f3u);
    k = (I)(b >> 23) - 127;
    f = L::value((b & 0x007fffffu) + 0x3f3504f3u) - 1.0f;
}

// log x for positive normal finite x, within about an ulp (test_math.py).
template <class F>
RELAXCAT_ALWAYS_INLINE F logf_positive(F x) {
    typename Lanes<F>::I k;
    F f;
    logf_split(x, k, f);
    return logf_from_parts(k, f);
}

inline float logf_positive_s(float x) {
    return logf_positive(x);
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
