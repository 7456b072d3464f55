#pragma once
// The kernels: every formula of relaxcat lives here, once. Each kernel handles
// rows [r0, r1) of a call and never throws; arguments were validated at the
// boundary (the Python layer or the public C++ classes).
//
// Precision: whatever the storage type Real (float or double), every
// intermediate is a double and row sums are accumulated in double. For float32
// data this keeps the results within a few float32 ulps of the exact value; for
// float64 data it is the natural precision. The one float step is the noise of
// float samples (noise.hpp), which is a random draw in its own right: it is
// exact once drawn, and from there on a float sample is computed in double
// like any other (with exp to degree 9, exp_lanes, as its result is a float).
//
// Note [shift before scaling]: s = (a + g) / T is formed as ((a - max a) + g) / T.
// The density and the sample do not change when a constant is added to the
// logits, and with logits near 5e3 and T = 1e-3 the unshifted s is near 5e6,
// where one rounding moves it by 1e-9 -- far more than the 1e-10 the samples
// must meet. After the shift the competing entries are small and exact.
//
// Note [stable log-sum-exp]: a sum of exponentials is taken after subtracting the
// largest exponent, so the largest term is exactly 1, the sum lies in [1, K], and
// nothing overflows; the log of the sum is then added back.
//
// Note [masked categories]: a logit of -inf marks an impossible category. It
// takes no part in maxima, sums or the count K; its sample is exactly 0 (its log
// -inf) and every gradient entry for it is exactly 0.
//
// Note [large temperatures]: the density depends on z = a - T y only through
// sum(z) - K lse(z), which does not change when a constant is added to z. The
// kernel therefore uses z = (a - max a) - T (y - max y), with y - max y formed
// as log1p of the relative difference of the two values when they are close,
// and above T = 64 as the log of their ratio when they are not and the largest
// is below e^-1/2 (log_ratio), so that its product with T is accurate to a few
// ulps. Forming T y first cancelled terms of size T |y| (2e-3 relative error at
// T = 1e100), and even the difference of two rounded logs loses T eps |y| (3e-9
// at T = 1e10; at T = 1e5 and K = 5000, logits gradients 9e-11 from the exact
// ones). Rows whose weights sit far from the largest entry are formed against
// their dominant entry instead (Note [dominant reference]).
//
// Note [zeros in a value]: when a value x has exact zeros on m of the K live
// categories (a low-temperature sample that underflowed), the density is its
// limit as those coordinates shrink together, x_k = eps for each of them.
// Writing y_k = log eps there, log p = const + (T (K - m) - m) log eps + O(1),
// so the limit is +inf when T (K - m) < m, -inf when T (K - m) > m, and when they
// are equal the finite value
//   lgamma(K) + (K - 1) log T + sum_live a - (T + 1) sum_nonzero y - K lse_zero(a).
// The gradients are the limits of the gradients: the softmax weights of
// a - T y concentrate on the zero set, where they become softmax(a) over it; the
// temperature gradient tends to -inf, and d/dx_k at a zero to an infinity of
// the sign of its numerator N0 = T (K w_k - 1) - 1, unless N0 is 0; then see
// Note [vanishing numerator at a zero]. In log space (y = -inf on a live
// category) the density always tends to -inf.
//
// Note [vanishing numerator at a zero]: with w_k = softmax(a) over the zero set
// Z (its limit), the weight at eps is w_k (1 - W) with W, the weight off Z,
// equal to eps^T C + O(eps^2T), C = sum_{j live, x_j > 0} exp(a_j) x_j^-T /
// sum_{i in Z} exp(a_i). So (T (K w_k(eps) - 1) - 1) / eps = N0 / eps -
// T K w_k C eps^(T - 1): where N0 = 0 the limit is 0 for T > 1, -K w_k C for
// T = 1, and -inf for T < 1 (times the upstream gradient). N0 is 0 in a row
// with T (K - m) = m (the finite density) at every zero whose logit equals the
// others' on Z: K = 2, T = 1, logits (0.3, -0.8), x = (0, 1) gives
// -2 exp(-1.1) = -0.666, which the gradient at x = (1e-300, 1) also gives; it
// had been 0 (a fresh-user review). N0 has the sign of
// T (K e_k - S) - S with e = exp(a - max_Z a) and S = sum_Z e, formed with one
// rounding (fma): with equal logits on Z, e_k = 1 and S = m exactly, so this is
// T (K - m) - m, the sign log_prob's rule takes (0 when balanced; at T =
// fl(7/3), K = 10, m = 7 it is +4.4e-16, where T (K fl(1/m) - 1) - 1 had come
// out negative). Logits on Z that differ by less than their rounding after the
// shift by the row's largest logit give equal e and count as equal (0 and
// 1e-17 with a largest logit of 0.3): the limit jumps between an infinity and
// the next term there, and the rounding decides.

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "args.hpp"
#include "isa.hpp"
#include "math.hpp"
#include "noise.hpp"
#include "simd.hpp"

namespace relaxcat {
namespace detail {
namespace RELAXCAT_ISA_NAMESPACE {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kMaxDouble = std::numeric_limits<double>::max();

// Walks rows r0, r0 + 1, ... of a RowShape, keeping the element offset of the
// current row in N strided arrays. One division per dimension at the start,
// then additions only.
template <int N>
class RowWalker {
public:
    RowWalker(const RowShape& shape, int64_t r0, const int64_t* const (&strides)[N])
        : shape_(&shape) {
        for (int j = 0; j < N; ++j) {
            stride_[j] = strides[j];
            offset[j] = 0;
        }
        int64_t rest = r0;
        for (int d = shape.ndim - 1; d >= 0; --d) {
            const int64_t n = shape.shape[d];
            idx_[d] = n > 0 ? rest % n : 0;
            rest = n > 0 ? rest / n : 0;
            for (int j = 0; j < N; ++j) offset[j] += idx_[d] * stride_[j][d];
        }
    }

    void advance() {
        for (int d = shape_->ndim - 1; d >= 0; --d) {
            ++idx_[d];
            for (int j = 0; j < N; ++j) offset[j] += stride_[j][d];
            if (idx_[d] < shape_->shape[d]) return;
            for (int j = 0; j < N; ++j) offset[j] -= stride_[j][d] * shape_->shape[d];
            idx_[d] = 0;
        }
    }

    // n calls of advance() at the cost of one: a division per dimension.
    void advance_by(int64_t n) {
        for (int d = shape_->ndim - 1; d >= 0 && n > 0; --d) {
            const int64_t size = shape_->shape[d];
            if (size <= 0) return;  // no rows, so nothing to walk
            const int64_t to = idx_[d] + n;
            const int64_t wrapped = to % size;
            n = to / size;
            for (int j = 0; j < N; ++j)
                offset[j] += (wrapped - idx_[d]) * stride_[j][d];
            idx_[d] = wrapped;
        }
    }

    int64_t offset[N];

private:
    const RowShape* shape_;
    const int64_t* stride_[N];
    int64_t idx_[kMaxBatchDims] = {};
};

// log(x / xref) for x and xref on the simplex, given their logs, accurate enough
// that T times it is too (Note [large temperatures]). When the two are within a factor
// 1.25 of each other the difference of the two rounded logs would keep only the
// digits they do not share; log1p of the exactly formed relative difference
// keeps them all. Further apart, that difference errs by up to an ulp of
// log x and of log xref, and T times that (T eps (|log x| + |log xref|)) matters
// once T is large: above kRatioAbove the log of the rounded ratio is taken
// instead, whose error is an ulp of log(x / xref) plus half an ulp of the ratio,
// whenever the ratio is a normal number (a subnormal one has lost bits) and
// log xref < -1/2 (for a largest entry near 1 the difference errs less: log
// xref is then small, and the ratio's own rounding is not).
//
// Lane by lane for doubles or vectors of doubles; every branch is computed and
// one selected, unless T <= kRatioAbove and every lane has x < 3 xref / 4 (as
// rounded) or x = xref (for x and xref positive, as on the simplex; other
// values, possible only with validation off, end in NaN on either branch). Then the
// selects would take the difference of the logs anyway (for such x, q lies below -1/4 +
// 2^-53, far from the -0.2 where log1p starts: the rounded 3 xref / 4 is at most half
// an ulp above the exact one, and the rounding of q is monotone), or give 0, which that
// difference is when x = xref (the same log of the same value), and the divisions are
// skipped. Most entries of a row are far below its largest one (rows of two have their
// other entry below 3/4 of the largest once that is above 4/7), and most
// temperatures are small; the ratio's log is taken only when some lane's T is
// above kRatioAbove.
constexpr double kRatioAbove = 64.0;

template <class D>
RELAXCAT_ALWAYS_INLINE D log_ratio_lanes(D x, D xref, D log_x, D log_xref, D t) {
    const D diff = log_x - log_xref;
    const auto hot = (t > kRatioAbove) & (log_xref < -0.5);
    const auto cold = (t <= kRatioAbove) | (log_xref >= -0.5);
    const auto simple = (x < 0.75 * xref) | (x == xref);
    if (all_lanes(simple & cold)) return diff;
    const D q = (x - xref) / xref;
    D h, s;
    const D r = log1p_poly<true>(q, h, s);
    const D near = q - (h - s * (h + r));  // log1p_small(q), its poly fused
    D far = diff;
    if (any_lane(hot)) {
        const D ratio = x / xref;
        far = hot & (ratio >= 2.2250738585072014e-308) & (ratio < kInf)
                  ? log_lanes<true>(ratio)
                  : diff;
    }
    return ((q > -0.2) & (q < 0.25)) ? near : far;
}

inline double log_ratio(double x, double xref, double log_x, double log_xref,
                        double t) {
    return log_ratio_lanes(x, xref, log_x, log_xref, t);
}

inline double max_d(double a, double b) {
    return a > b ? a : b;
}

// Temperature gradients sum products with log x, which in log space may lie far
// below any double's log; above this magnitude those sums are scaled by their
// largest log, so that only the final product can overflow (to an infinity of
// the right sign), never an intermediate one (inf - inf). Ordinary rows keep
// scale 1 and their bits.
constexpr double kScaleAbove = 1e150;

// Note [row reductions]: the kernels sum and maximise a row of fewer than 2 kSlots
// elements in order, from the first element on. A longer row is reduced in kSlots
// interleaved partial results: slot i starts as element i and takes elements
// i + kSlots, i + 2 kSlots, ... in turn; then, for w = 8, 4, 2, 1, slot i (i < w)
// takes slot i + w. Every SIMD level (one, two, four or eight vectors of slots, or
// plain doubles) performs exactly these operations, so the bits do not depend on
// the level, and the 16 independent chains let a long row run at the speed of
// the arithmetic rather than of its latency.
constexpr int kSlots = 16;

// Element j (D = double) or elements j .. j + kLanes - 1 (D = VecD) of p.
template <class D>
D load_lanes(const double* p);

template <>
inline double load_lanes<double>(const double* p) {
    return *p;
}

inline void store_lanes(double* p, double v) {
    *p = v;
}

#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
template <>
RELAXCAT_SIMD_INLINE VecD load_lanes<VecD>(const double* p) {
    return load_d(p);
}

RELAXCAT_SIMD_INLINE void store_lanes(double* p, VecD v) {
    store_d(p, v);
}
#endif

// Contiguous Reals as a vector of doubles.
#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
RELAXCAT_SIMD_INLINE VecD load_as_d(const double* p) {
    return load_d(p);
}

RELAXCAT_SIMD_INLINE VecD load_as_d(const float* p) {
    typedef float Half __attribute__((vector_size(4 * kLanes)));
    Half h;
    std::memcpy(&h, p, sizeof h);
    return __builtin_convertvector(h, VecD);
}
#endif

// load_lanes for contiguous floats, widened to doubles.
template <class D>
D load_lanes(const float* p);

template <>
inline double load_lanes<double>(const float* p) {
    return static_cast<double>(*p);
}

#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
template <>
RELAXCAT_SIMD_INLINE VecD load_lanes<VecD>(const float* p) {
    return load_as_d(p);
}
#endif

// store_lanes to contiguous floats, each lane rounded once.
inline void store_lanes(float* p, double v) {
    *p = static_cast<float>(v);
}

#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
RELAXCAT_SIMD_INLINE void store_lanes(float* p, VecD v) {
    typedef float Half __attribute__((vector_size(4 * kLanes)));
    const Half h = __builtin_convertvector(v, Half);
    std::memcpy(p, &h, sizeof h);
}
#endif

// Note [prefetching]: a row path reads a caller's array front to back in a
// first pass, and the CPU's own prefetchers, which do not cross a 4 KiB page
// (Intel's optimization manual), left that pass waiting on memory once the
// arrays outgrew the caches: at (32, 128000) in float32 (16 MiB per array)
// rsample_vjp took 3.1-3.2 ns per element against 2.2 at (8, 128000), and perf
// put most of its first pass's samples on the instructions waiting for its
// loads. So the row paths' loads of contiguous memory (load_strided_lanes,
// load_row, and rest_sums, which may also read an element buffer) ask for the
// memory kPrefetchBytes ahead as they go: 2, 4 and 8 KiB measured alike there,
// 0.9 ns per element faster than none. A prefetch is only a hint: it cannot
// fault, so past an array's end it costs only the request, and it changes no
// result (tests/python/test_guard_pages.py). Short rows (K <= kColumnMaxK)
// move their blocks into columns without it: asking for the next block's
// memory while transposing one measured no faster at K = 8 (2^20 rows).
constexpr uintptr_t kPrefetchBytes = 4096;

template <class T>
RELAXCAT_ALWAYS_INLINE void prefetch_ahead(const T* p) {
#if defined(__GNUC__)
    __builtin_prefetch(
        reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p) + kPrefetchBytes));
#else
    (void)p;
#endif
}

// load_lanes in a first pass over contiguous memory (Note [prefetching]).
template <class D, class T>
RELAXCAT_ALWAYS_INLINE D stream_lanes(const T* p) {
    if constexpr (!std::is_same<D, double>::value) prefetch_ahead(p);
    return load_lanes<D>(p);
}

// Element j (D = double) or elements j .. j + kLanes - 1 (D = VecD) of the
// strided Reals p[0], p[stride], ..., widened to doubles.
template <class D, class Real>
RELAXCAT_ALWAYS_INLINE D load_strided_lanes(const Real* p, int64_t stride) {
    if constexpr (std::is_same<D, double>::value) {
        return static_cast<double>(*p);
    } else {
        if (stride == 1) return stream_lanes<D>(p);
        double lanes[sizeof(D) / sizeof(double)];
        for (size_t l = 0; l < sizeof(D) / sizeof(double); ++l)
            lanes[l] = static_cast<double>(p[static_cast<int64_t>(l) * stride]);
        return load_lanes<D>(static_cast<const double*>(lanes));
    }
}

// The last step of Note [row reductions]: for w = 8, 4, 2, 1, slot i (i < w)
// takes slot i + w, whole vectors of slots at a time while w spans one, then
// one by one (the same pairs either way); returns slot 0.
template <class Op>
inline double fold_slots(Op op, double* slot) {
    int w = kSlots / 2;
#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
    for (; w >= kLanes; w /= 2)
        for (int s = 0; s < w; s += kLanes)
            store_d(slot + s, op(load_d(slot + s), load_d(slot + s + w)));
#endif
    for (; w >= 1; w /= 2)
        for (int s = 0; s < w; ++s) slot[s] = op(slot[s], slot[s + w]);
    return slot[0];
}

// The slots of Note [row reductions] for a row of k >= 2 kSlots terms, given as
// reduce_terms gives them.
template <class Op, class F>
RELAXCAT_FLATTEN double slot_reduce(int64_t k, Op op, F f) {
    double slot[kSlots];
    int64_t j = kSlots;
    int i = 0;  // the slot of element j
#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
    // The same slots with kLanes of them to a vector: the first kSlots terms
    // start them, and the tail's whole vectors (which begin at slot 0, kLanes,
    // ...) join them as vectors too; only the last few terms go one by one.
    constexpr int kVectors = kSlots / kLanes;
    VecD acc[kVectors];
    for (int v = 0; v < kVectors; ++v) acc[v] = f(VecD{}, v * kLanes);
    for (; j + kSlots <= k; j += kSlots)
        for (int v = 0; v < kVectors; ++v)
            acc[v] = op(acc[v], f(VecD{}, j + v * kLanes));
    for (int v = 0; v < kVectors; ++v) store_d(slot + v * kLanes, acc[v]);
    for (; j + kLanes <= k; j += kLanes, i += kLanes)
        store_d(slot + i, op(load_d(slot + i), f(VecD{}, j)));
#else
    for (int s = 0; s < kSlots; ++s) slot[s] = f(0.0, s);
    for (; j + kSlots <= k; j += kSlots)
        for (int s = 0; s < kSlots; ++s) slot[s] = op(slot[s], f(0.0, j + s));
#endif
    for (; j < k; ++i, ++j) slot[i] = op(slot[i], f(0.0, j));
    return fold_slots(op, slot);
}

// Reduces f(p[0]), ..., f(p[k - 1]) with op (f applies lane by lane to doubles
// and vectors alike).
template <class Op, class F>
inline double reduce_row(const double* p, int64_t k, double empty, Op op, F f) {
    if (k < 2 * kSlots) {
        double r = empty;
        if (k > 0) r = f(p[0]);
        for (int64_t j = 1; j < k; ++j) r = op(r, f(p[j]));
        return r;
    }
    return slot_reduce(
        k, op, [p, f](auto d, int64_t j) { return f(load_lanes<decltype(d)>(p + j)); });
}

// Sum and maximum of a row in the order of Note [row reductions].
inline double slot_sum(const double* p, int64_t k) {
    return reduce_row(
        p, k, 0.0, [](auto a, auto b) { return a + b; }, [](auto x) { return x; });
}

inline double slot_max(const double* p, int64_t k) {
    return reduce_row(
        p, k, -kInf, [](auto a, auto b) { return a > b ? a : b; },
        [](auto x) { return x; });
}

// A reduction of a row whose terms are computed: f(D{}, j) gives element j as a
// double (D = double) or elements j .. j + kLanes - 1 as a vector (D = VecD),
// lane by lane with the same operations, so any loop in the row can feed it.
// Rows of fewer than 2 kSlots reduce in order from `empty` (empty op f(0) op
// f(1) ...), as the per-row loops they replace did; longer rows in the slots of
// Note [row reductions]. Each element is visited once, in increasing order of
// its group, so f may also write an output of its own elements.
template <class Op, class F>
inline double reduce_terms(int64_t k, double empty, Op op, F f) {
    if (k < 2 * kSlots) {
        double r = empty;
        for (int64_t j = 0; j < k; ++j) r = op(r, f(0.0, j));
        return r;
    }
    return slot_reduce(k, op, f);
}

// What fold_terms does with each of its results: a sum or a maximum, each from
// the `empty` of reduce_terms (0 or -inf) and with its operation (kPlus, kMax).
enum class Fold { plus, max };

template <class A>
RELAXCAT_ALWAYS_INLINE A fold_step(Fold op, A a, A b) {
    return op == Fold::max ? (a > b ? a : b) : a + b;
}

// Several reductions of computed terms in one pass: f(D{}, j) returns an array
// of one term per entry of Ops, and each is reduced exactly as reduce_terms(k,
// empty, op, ...) would reduce it alone, so the bits are those of separate
// passes.
template <Fold... Ops, class F>
RELAXCAT_FLATTEN std::array<double, sizeof...(Ops)> fold_terms(int64_t k, F f) {
    constexpr int N = static_cast<int>(sizeof...(Ops));
    constexpr std::array<Fold, sizeof...(Ops)> op{Ops...};
    std::array<double, N> r;
    for (int m = 0; m < N; ++m) r[m] = op[m] == Fold::max ? -kInf : 0.0;
    if (k < 2 * kSlots) {
        for (int64_t j = 0; j < k; ++j) {
            const auto t = f(0.0, j);
            for (int m = 0; m < N; ++m) r[m] = fold_step(op[m], r[m], t[m]);
        }
        return r;
    }
    double slot[N][kSlots];
    int64_t j = kSlots;
    int i = 0;  // the slot of element j
#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
    // Vectors of slots as in slot_reduce.
    constexpr int kVectors = kSlots / kLanes;
    for (int v = 0; v < kVectors; ++v) {
        const auto t = f(VecD{}, v * kLanes);
        for (int m = 0; m < N; ++m) store_d(slot[m] + v * kLanes, t[m]);
    }
    VecD acc[N][kVectors];
    for (int m = 0; m < N; ++m)
        for (int v = 0; v < kVectors; ++v) acc[m][v] = load_d(slot[m] + v * kLanes);
    for (; j + kSlots <= k; j += kSlots)
        for (int v = 0; v < kVectors; ++v) {
            const auto t = f(VecD{}, j + v * kLanes);
            for (int m = 0; m < N; ++m) acc[m][v] = fold_step(op[m], acc[m][v], t[m]);
        }
    for (int m = 0; m < N; ++m)
        for (int v = 0; v < kVectors; ++v) store_d(slot[m] + v * kLanes, acc[m][v]);
#else
    for (int s = 0; s < kSlots; ++s) {
        const auto t = f(0.0, s);
        for (int m = 0; m < N; ++m) slot[m][s] = t[m];
    }
    for (; j + kSlots <= k; j += kSlots)
        for (int s = 0; s < kSlots; ++s) {
            const auto t = f(0.0, j + s);
            for (int m = 0; m < N; ++m) slot[m][s] = fold_step(op[m], slot[m][s], t[m]);
        }
#endif
    for (; j < k; ++i, ++j) {
        const auto t = f(0.0, j);
        for (int m = 0; m < N; ++m) slot[m][i] = fold_step(op[m], slot[m][i], t[m]);
    }
    for (int m = 0; m < N; ++m)
        r[m] = fold_slots(
            [how = op[m]](auto a, auto b) { return fold_step(how, a, b); }, slot[m]);
    return r;
}

// N sums of computed terms in one pass (fold_terms with every result a sum).
template <int N, class F, size_t... I>
inline std::array<double, N> sum_terms_of(int64_t k, F f, std::index_sequence<I...>) {
    return fold_terms<((void)I, Fold::plus)...>(k, f);
}

template <int N, class F>
inline std::array<double, N> sum_terms(int64_t k, F f) {
    return sum_terms_of<N>(k, f, std::make_index_sequence<N>{});
}

constexpr auto kPlus = [](auto a, auto b) { return a + b; };
constexpr auto kMax = [](auto a, auto b) { return a > b ? a : b; };

// Runs f(D{}, i) for i = 0 .. n - 1: on vectors of elements i .. i + kLanes - 1
// (D = VecD) while whole ones fit and `vectors` allows, then on single elements
// (D = double). f does the same operations lane by lane either way, so one body
// serves both and an element's bits do not depend on where it falls (GCC leaves
// several such loops scalar when written for doubles).
template <class F>
inline void for_lanes(int64_t n, bool vectors, F f) {
    int64_t i = 0;
#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
    for (; vectors && i + kLanes <= n; i += kLanes) f(VecD{}, i);
#else
    (void)vectors;
#endif
    for (; i < n; ++i) f(0.0, i);
}

// A strided row widened to doubles in a contiguous buffer; the contiguous case
// has its own loop, a cache line at a time, so that it vectorises and
// prefetches (Note [prefetching]).
template <class Real>
inline void load_row(const Real* p, int64_t stride, int64_t k, double* dst) {
    if (stride == 1) {
        constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(Real));
        int64_t j = 0;
        for (; j + kLine <= k; j += kLine) {
            prefetch_ahead(p + j);
            for (int64_t l = 0; l < kLine; ++l)
                dst[j + l] = static_cast<double>(p[j + l]);
        }
        for (; j < k; ++j) dst[j] = static_cast<double>(p[j]);
    } else {
        for (int64_t j = 0; j < k; ++j) dst[j] = static_cast<double>(p[j * stride]);
    }
}

// Note [blocks of rows]: the kernels work on blocks of whole rows holding about
// kBlockElements elements (or one row, if it is longer). The costly elementwise
// steps (Philox and the noise logarithms, exp, log) run as flat loops over the
// whole block, which vectorise however short the rows are; only the cheap row
// reductions (max, sum) run row by row. Blocking changes no result: every row is
// still computed by the same operations in the same order.
constexpr int64_t kBlockElements = 2048;

// Scratch buffers start on 64-byte boundaries (parallel_rows aligns the scratch
// of each thread, and every buffer length below is a multiple of kAlignDoubles),
// and so do the columns of a block: rows_per_block is a multiple of
// kAlignDoubles wherever it is that large. An AVX-512 load or store that is not
// aligned spans two cache lines; whether the heap happened to hand out an
// aligned scratch once decided whether log_prob at K = 8 took 7.2 or 8.5 ns per
// element.
constexpr int64_t kAlignDoubles = 8;

inline int64_t aligned_count(int64_t n) {
    return (n + kAlignDoubles - 1) / kAlignDoubles * kAlignDoubles;
}

inline int64_t block_capacity(int64_t k) {
    return k > kBlockElements ? aligned_count(k) : kBlockElements;
}

inline int64_t rows_per_block(int64_t k) {
    if (k >= kBlockElements) return 1;
    const int64_t rows = kBlockElements / (k > 0 ? k : 1);
    return rows >= kAlignDoubles ? rows / kAlignDoubles * kAlignDoubles : rows;
}

// The length of each per-row buffer of a block.
inline int64_t row_buffer_size(int64_t k) {
    return aligned_count(rows_per_block(k));
}

// Scratch a kernel needs per thread, in doubles: three element buffers of one
// block and sixteen per-row buffers of rows_per_block(k) each, so about
// 3 kBlockElements + 16 kBlockElements / K: 304 KiB for K = 1, 80 KiB for K = 8.
inline int64_t scratch_size(int64_t k) {
    return 3 * block_capacity(k) + 16 * row_buffer_size(k);
}

// exp and log over a buffer: vectors for whole groups of lanes, scalars for the
// rest; both give the same bits.
template <int Degree = 13>
inline void exp_inplace(double* p, int64_t n) {
    int64_t j = 0;
#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
    for (; j + kLanes <= n; j += kLanes) store_d(p + j, exp_v<Degree>(load_d(p + j)));
#endif
    for (; j < n; ++j) p[j] = exp_d<Degree>(p[j]);
}

// exp into another buffer, with the Taylor degree of exp_lanes.
template <int Degree = 13>
inline void exp_into(const double* p, double* out, int64_t n) {
    int64_t j = 0;
#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
    for (; j + kLanes <= n; j += kLanes) store_d(out + j, exp_v<Degree>(load_d(p + j)));
#endif
    for (; j < n; ++j) out[j] = exp_d<Degree>(p[j]);
}

// The Taylor degree of exp for results stored as Real (math.hpp, exp_lanes).
template <class Real>
constexpr int kExpDegree = std::is_same<Real, float>::value ? 9 : 13;

inline void log_inplace(double* p, int64_t n) {
    int64_t j = 0;
#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
    for (; j + kLanes <= n; j += kLanes) store_d(p + j, log_fused_v(load_d(p + j)));
#endif
    for (; j < n; ++j) p[j] = log_fused_d(p[j]);
}

// Note [rows as columns]: rows of up to kColumnMaxK categories are too short for
// loops along a row to pay. rsample, log_prob and its gradients for ordinary
// rows, rsample_vjp and the support check then copy a block into column-major
// buffers (column j holds element j of every row of the block) and runs each
// step as a flat loop down the columns, which vectorises across rows. Each row
// still goes through the same operations in the same order as in the row-major
// path (reductions in element order, Note [row reductions]), so the bits do not
// depend on the path taken. kColumnMaxK is the longest row Note [row
// reductions] reduces in element order, one latency-bound add after another
// when taken along the row: with it at 16, rsample_vjp at K = 17 to 31 took
// 8-9 ns per float32 element (one thread), and 4.5-5 ns down the columns.
// Taking log_prob a group of rows at a time through
// every step, with its K columns in registers instead of a flat pass per step,
// was tried and measured no faster at K = 8 and 16 and 10-20% slower at K = 2
// and 3: the blocks stay in L1, and the logs and exponentials bound these rows.
constexpr int64_t kColumnMaxK = 2 * kSlots - 1;

// rsample_vjp on the simplex takes rows of this many categories or more one at a
// time (rsample_vjp_simplex_row); shorter ones above kColumnMaxK go in blocks,
// whose flat log loop is faster there (measured at K = 17 to 256).
constexpr int64_t kRowPathMinK = 64;

// Note [rows without scratch]: a row of kBlockElements or more whose noise
// comes from the stream and that has one output, x or log x (every call from
// Python, and the C++ classes'), can be sampled in its output row itself: the
// noise is drawn there (exact, as the float noise is a float and the double
// noise a double), and the steps of rsample_rows are taken over it in the same
// order, so the bits are those of the buffered path. A double output then
// holds exp(s) or s as the noise buffer did; a float one cannot, and the last
// pass forms (a - max a) + g and s again from the logits and the noise it
// still holds. For log x that needs no second exponential, so such rows
// always take this path, as do double ones; for float x it means exp(s) a
// second time (K = 128000: 4.6 to 5.5 ns per element, one thread), so float x rows
// take it only when asked (RsampleArgs::no_scratch, which Python sets for
// out=) or when the buffers would pass 1/20 of the output (fewer than 40 rows
// per thread, rsample_buffers_too_big: a fresh-user review measured 96 MiB
// extra for one row of 2^23 floats, a 32 MiB output, and 2 MiB for (32,
// 128000) on two threads, 13% of it), and otherwise keep the noise buffer of
// one row per thread (1 MiB at K = 128000). In the second case each thread
// still keeps exp(s) of a row's first chunks in what 1/20 of the output allows
// (RsampleArgs::keep, rsample_keep), and takes it again only for the rest:
// (32, 128000) keeps 98304 of each row's 128000 on one thread, 49152 on two.
inline bool rsample_in_output(int64_t k, const RsampleNeeds& n) {
    return k >= kBlockElements && !n.given && n.x != n.log_x && n.recompute;
}

// rsample needs less on rows above kColumnMaxK (Note [long rows]): the noise
// buffer, and a second element buffer when log x is wanted; nothing on rows
// sampled in their output (Note [rows without scratch]).
inline int64_t rsample_scratch_size(int64_t k, RsampleNeeds n) {
    if (k <= kColumnMaxK) return scratch_size(k);
    if (rsample_in_output(k, n)) return n.keep;
    return (n.log_x ? 2 : 1) * block_capacity(k);
}

// True when the rows of x follow one another, K contiguous elements each.
template <class T>
inline bool dense_rows(const RowArg<T>& x, const RowShape& shape) {
    if (x.kstride != 1) return false;
    int64_t expect = shape.k;
    for (int d = shape.ndim - 1; d >= 0; --d) {
        if (shape.shape[d] != 1 && x.stride[d] != expect) return false;
        expect *= shape.shape[d];
    }
    return true;
}

// True when a per-row array holds one element per row, the rows in order.
template <class T>
inline bool dense_per_row(const RowArg<T>& x, const RowShape& shape) {
    int64_t expect = 1;
    for (int d = shape.ndim - 1; d >= 0; --d) {
        if (shape.shape[d] != 1 && x.stride[d] != expect) return false;
        expect *= shape.shape[d];
    }
    return true;
}

// True when every row reads the same element of x (a scalar temperature).
template <class T>
inline bool same_for_all_rows(const RowArg<T>& x, const RowShape& shape) {
    for (int d = 0; d < shape.ndim; ++d)
        if (shape.shape[d] != 1 && x.stride[d] != 0) return false;
    return true;
}

// Calls f with K as a compile-time constant for K = 1 .. 16, so that the loops
// over a row unroll and the transpositions vectorise; otherwise with K itself
// (rows of 17 to kColumnMaxK categories, rarer, take the columns path with a
// run-time K: it still vectorises down the columns, and keeps the code size
// of one instantiation).
template <class F>
inline void with_short_k(int64_t k, F&& f) {
    switch (k) {
#define RELAXCAT_SHORT_K(n) \
    case n:                 \
        return f(std::integral_constant<int64_t, n>{});
        RELAXCAT_SHORT_K(1)
        RELAXCAT_SHORT_K(2)
        RELAXCAT_SHORT_K(3)
        RELAXCAT_SHORT_K(4)
        RELAXCAT_SHORT_K(5)
        RELAXCAT_SHORT_K(6)
        RELAXCAT_SHORT_K(7)
        RELAXCAT_SHORT_K(8)
        RELAXCAT_SHORT_K(9)
        RELAXCAT_SHORT_K(10)
        RELAXCAT_SHORT_K(11)
        RELAXCAT_SHORT_K(12)
        RELAXCAT_SHORT_K(13)
        RELAXCAT_SHORT_K(14)
        RELAXCAT_SHORT_K(15)
        RELAXCAT_SHORT_K(16)
#undef RELAXCAT_SHORT_K
        default:
            return f(k);
    }
}

// nb dense rows of K elements into columns: dst[j nb + i] = src[i K + j].
template <class Src, class K>
inline void rows_to_columns(const Src* src, int64_t nb, K k, double* dst) {
    for (int64_t j = 0; j < k; ++j)
        for (int64_t i = 0; i < nb; ++i)
            dst[j * nb + i] = static_cast<double>(src[i * k + j]);
}

// Columns back into nb dense rows: dst[i K + j] = f(col[j nb + i], i).
template <class Real, class K, class F>
inline void columns_to_rows(const double* col, int64_t nb, K k, Real* dst, F f) {
    for (int64_t i = 0; i < nb; ++i)
        for (int64_t j = 0; j < k; ++j)
            dst[i * k + j] = static_cast<Real>(f(col[j * nb + i], i));
}

// A (rows, K) gradient output, in Real or in double (at most one of the two
// pointers set; Note [summed gradients]): row r, element j, set from a double.
template <class Real>
struct GradOut {
    Real* real;
    double* wide;

    explicit operator bool() const { return real != nullptr || wide != nullptr; }
    void set(int64_t r, int64_t k, int64_t j, double v) const {
        if (wide != nullptr)
            wide[r * k + j] = v;
        else
            real[r * k + j] = static_cast<Real>(v);
    }
    // Element j (D = double) or elements j .. j + kLanes - 1 (D = VecD) of row r.
    template <class D>
    void set_lanes(int64_t r, int64_t k, int64_t j, D v) const {
        if (wide != nullptr)
            store_lanes(wide + r * k + j, v);
        else
            store_lanes(real + r * k + j, v);
    }
    // Row r (of K elements) from src.
    void set_row(int64_t r, int64_t k, const double* src) const {
        if (wide != nullptr)
            for (int64_t j = 0; j < k; ++j) wide[r * k + j] = src[j];
        else if (real != nullptr)
            for (int64_t j = 0; j < k; ++j) real[r * k + j] = static_cast<Real>(src[j]);
    }
    // Rows rb .. rb + nb - 1 from columns, as columns_to_rows.
    template <class K, class F>
    void from_columns(const double* col, int64_t nb, K k, int64_t rb, F f) const {
        if (wide != nullptr)
            columns_to_rows(col, nb, k, wide + rb * k, f);
        else if (real != nullptr)
            columns_to_rows(col, nb, k, real + rb * k, f);
    }
};

// The nb rows of a block from input x into columns, col[j nb + i]: dense inputs
// by rows_to_columns, others through the offsets (index `which`) of a copy of
// the walker at the block's first row.
template <class T, class Walker>
void block_to_columns(const RowArg<T>& x, const RowShape& shape, Walker walk, int which,
                      int64_t rb, int64_t nb, double* col) {
    const int64_t k = shape.k;
    if (dense_rows(x, shape)) {
        with_short_k(k,
                     [&](auto kk) { rows_to_columns(x.data + rb * k, nb, kk, col); });
        return;
    }
    for (int64_t i = 0; i < nb; ++i, walk.advance()) {
        const T* p = x.data + walk.offset[which];
        for (int64_t j = 0; j < k; ++j)
            col[j * nb + i] = static_cast<double>(p[j * x.kstride]);
    }
}

// A per-row input (a temperature, an upstream gradient) of a block's nb rows,
// as block_to_columns does.
template <class T, class Walker>
void block_per_row(const RowArg<T>& x, const RowShape& shape, Walker walk, int which,
                   int64_t nb, double* out) {
    if (same_for_all_rows(x, shape)) {
        const double x0 = static_cast<double>(x.data[0]);
        for (int64_t i = 0; i < nb; ++i) out[i] = x0;
        return;
    }
    if (dense_per_row(x, shape)) {
        const T* p = x.data + walk.offset[which];
        for (int64_t i = 0; i < nb; ++i) out[i] = static_cast<double>(p[i]);
        return;
    }
    for (int64_t i = 0; i < nb; ++i, walk.advance())
        out[i] = static_cast<double>(x.data[walk.offset[which]]);
}

// Moves the walker past a block, unless no input of the call needs it (then it
// is never read).
template <class Walker>
void skip_block(Walker& walk, bool needed, int64_t nb) {
    if (needed) walk.advance_by(nb);
}

// out[i] = f(t[i]) for the nb rows of a block, f called once per run of equal
// temperatures. A block with one temperature (most calls have one) is filled
// without a comparison per row, so that both loops vectorise; the values are
// the same either way.
template <class F>
inline void per_temperature(const double* t, int64_t nb, double* out, F f) {
    int64_t differ = 0;
    for (int64_t i = 0; i < nb; ++i) differ += t[i] != t[0];
    if (differ == 0) {
        const double v = f(t[0]);
        for (int64_t i = 0; i < nb; ++i) out[i] = v;
        return;
    }
    double last_t = t[0], last = f(t[0]);
    for (int64_t i = 0; i < nb; ++i) {
        if (t[i] != last_t) {
            last_t = t[i];
            last = f(t[i]);
        }
        out[i] = last;
    }
}

// 1 / T for rows read one at a time, dividing once per run of equal
// temperatures (T > 0, so the first row sets it).
class InverseTemperature {
public:
    double operator()(double t) {
        if (t != last_t_) {
            last_t_ = t;
            inv_t_ = 1.0 / t;
        }
        return inv_t_;
    }

private:
    double last_t_ = 0.0;
    double inv_t_ = kInf;
};

// inv_t[i] = 1 / t[i] for a block's rows, dividing once per run of equal
// temperatures (per_temperature); true when every one is finite.
inline bool inverse_temperatures(const double* t, int64_t nb, double* inv_t) {
    per_temperature(t, nb, inv_t, [](double ti) { return 1.0 / ti; });
    int64_t infinite = 0;
    for (int64_t i = 0; i < nb; ++i) infinite += !(inv_t[i] < kInf);
    return infinite == 0;
}

// One block of rsample_rows in columns: rows rb .. rb + nb - 1, whose noise (if
// drawn) is in s, row-major, or already in e down columns when noise_in_columns
// (fill_gumbels_f32_columns). s, e and la are three element buffers of the
// block; rows points to six per-row buffers. The walker is advanced only when
// some input needs it, which is the same for every block of a call.
template <class Real, class Walker>
void rsample_block_columns(const RsampleArgs<Real>& a, Walker& walk, int64_t rb,
                           int64_t nb, bool noise_in_columns, double* s, double* e,
                           double* la, double* rows) {
    const int64_t k = a.shape.k;
    const bool given64 = a.noise.gumbels64.data != nullptr;
    const bool given = given64 || a.noise.gumbels.data != nullptr;
    double* const u = e;     // the noise, then u, then s; column-major
    double* const lc = la;   // the logits, column-major
    double* const ex = s;    // exp(s), column-major, once the noise is moved
    double* const t = rows;  // per row: T,
    double* const inv_t = t + row_buffer_size(k);     // 1 / T,
    double* const amax = inv_t + row_buffer_size(k);  // max a,
    double* const umax = amax + row_buffer_size(k);   // max u,
    double* const sum = umax + row_buffer_size(k);    // sum exp(s),
    double* const inv = sum + row_buffer_size(k);     // its reciprocal or log.

    block_per_row(a.temperature, a.shape, walk, 1, nb, t);
    block_to_columns(a.logits, a.shape, walk, 0, rb, nb, lc);
    if (given64)
        block_to_columns(a.noise.gumbels64, a.shape, walk, 2, rb, nb, u);
    else if (given)
        block_to_columns(a.noise.gumbels, a.shape, walk, 2, rb, nb, u);
    else if (!noise_in_columns)
        with_short_k(k, [&](auto kk) { rows_to_columns(s, nb, kk, u); });
    skip_block(walk,
               given || !dense_rows(a.logits, a.shape) ||
                   !same_for_all_rows(a.temperature, a.shape),
               nb);

    // Row maxima in element order, then u = (a - max a) + g and its maxima, then
    // s = (u - max u) / T as in rsample_rows.
    // Each row's maxima in registers across its columns (Note [row sums in
    // registers]).
    for_lanes(nb, true, [&](auto d, int64_t i) {
        using D = decltype(d);
        D am = load_lanes<D>(lc + i);
        for (int64_t j = 1; j < k; ++j) am = kMax(am, load_lanes<D>(lc + j * nb + i));
        D um{};
        for (int64_t j = 0; j < k; ++j) {
            const D v =
                (load_lanes<D>(lc + j * nb + i) - am) + load_lanes<D>(u + j * nb + i);
            store_lanes(u + j * nb + i, v);
            um = j == 0 ? v : kMax(um, v);
        }
        store_lanes(amax + i, am);
        store_lanes(umax + i, um);
    });

    const bool all_finite = inverse_temperatures(t, nb, inv_t);
    if (all_finite) {
        for (int64_t j = 0; j < k; ++j)
            for (int64_t i = 0; i < nb; ++i)
                u[j * nb + i] = (u[j * nb + i] - umax[i]) * inv_t[i];
    } else {
        for (int64_t j = 0; j < k; ++j)
            for (int64_t i = 0; i < nb; ++i)
                u[j * nb + i] = inv_t[i] < kInf ? (u[j * nb + i] - umax[i]) * inv_t[i]
                                                : (u[j * nb + i] - umax[i]) / t[i];
    }

    // The exponentials and their row sums in element order.
    exp_into<kExpDegree<Real>>(u, ex, nb * k);
    for_lanes(nb, true, [&](auto d, int64_t i) {
        using D = decltype(d);
        D total = load_lanes<D>(ex + i);
        for (int64_t j = 1; j < k; ++j) total = total + load_lanes<D>(ex + j * nb + i);
        store_lanes(sum + i, total);
    });

    with_short_k(k, [&](auto kk) {
        if (a.x != nullptr) {
            for (int64_t i = 0; i < nb; ++i) inv[i] = 1.0 / sum[i];
            columns_to_rows(ex, nb, kk, a.x + rb * k,
                            [inv](double ei, int64_t i) { return ei * inv[i]; });
        }
        if (a.log_x != nullptr) {
            for (int64_t i = 0; i < nb; ++i) inv[i] = sum[i];
            log_inplace(inv, nb);
            columns_to_rows(u, nb, kk, a.log_x + rb * k,
                            [inv](double z, int64_t i) { return z - inv[i]; });
        }
    });
}

// Note [split rows]: a row of more than kChunkElements categories (args.hpp) is
// reduced chunk by chunk: chunk c holds elements c kChunkElements ..
// (c + 1) kChunkElements - 1 and is reduced as a row of its own (Note [row
// reductions]), and the chunks' results are combined in order, from the first
// (split_row_combine). rsample reduces every row so, on any path, and so does
// rsample_vjp on the simplex (Note [split rows] for rsample_vjp). A call of few
// such rows can then spread each row over threads (parallel_row_steps in
// parallel.hpp): rsample_row_step takes one of four steps over one chunk of a
// row sampled in its output (Note [rows without scratch]): draw the noise and
// give max a; give max u; take exp(s), store what the output keeps and give the
// sum; write x or log x. Every chunk of a step runs before any of the next, which
// reads the combined results of the earlier ones. A row sampled on one thread
// takes the same steps over the same chunks, so the bits do not depend on the
// thread count. A maximum is exact in any order; only the sums moved, in the
// last bits, from the order of a whole row (relaxcat 0.1.0) to this one.
template <class Op, class F>
inline double reduce_chunked(int64_t k, double empty, Op op, F f) {
    if (k <= kChunkElements) return reduce_terms(k, empty, op, f);
    double acc = empty;
    for (int64_t j0 = 0; j0 < k; j0 += kChunkElements) {
        const int64_t n = k - j0 < kChunkElements ? k - j0 : kChunkElements;
        const double part = reduce_terms(
            n, empty, op, [&f, j0](auto d, int64_t j) { return f(d, j0 + j); });
        acc = j0 == 0 ? part : op(acc, part);
    }
    return acc;
}

// Two results of a split row's step combined, the earlier chunk's (or the
// chunks' before it) first: maxima for steps 0 and 1, the sum for step 2.
inline double split_row_fold(int step, double acc, double part) {
    return step == 2 ? acc + part : max_d(acc, part);
}

// The results of a step over a row's chunks p[0 .. n - 1], combined in order as
// reduce_chunked does.
inline double split_row_combine(int step, const double* p, int64_t n) {
    double acc = p[0];
    for (int64_t c = 1; c < n; ++c) acc = split_row_fold(step, acc, p[c]);
    return acc;
}

// Step `step` of Note [split rows] over elements j0 .. j0 + n - 1 of row r,
// sampled in its output: facts holds the combined results of the earlier steps
// (max a, max u, sum exp(s)). Returns this chunk's result (0 for the last step).
// The steps are those of rsample_rows: u = (a - max a) + g, s = (u - max u) / T
// (a multiply by 1 / T where that is finite), x = exp(s) / sum or
// log x = s - log(sum). A double output holds exp(s) or s after step 2; a float
// one still holds the noise, and step 3 forms s (and exp(s)) again, unless
// `kept` (rsample_split_scratch doubles, null otherwise) holds exp(s) of a
// float row of x from step 2.
template <class Real>
double rsample_row_step(const RsampleArgs<Real>& a, int64_t r, int step, int64_t j0,
                        int64_t n, const double* facts, double* kept) {
    constexpr bool kDouble = std::is_same<Real, double>::value;
    const int64_t k = a.shape.k;
    const int64_t* const strides[2] = {a.logits.stride, a.temperature.stride};
    const RowWalker<2> walk(a.shape, r, strides);
    const int64_t ks = a.logits.kstride;
    const Real* const lg = a.logits.data + walk.offset[0] + j0 * ks;
    const double t = static_cast<double>(a.temperature.data[walk.offset[1]]);
    const double inv_t = 1.0 / t;
    const bool want_x = a.x != nullptr;
    Real* const out = (want_x ? a.x : a.log_x) + r * k + j0;
    const auto logit = [lg, ks](auto d, int64_t j) {
        return load_strided_lanes<decltype(d)>(lg + j * ks, ks);
    };
    if (step == 0) {
        const uint64_t first = a.noise.offset + static_cast<uint64_t>(r * k + j0);
        if constexpr (kDouble)
            fill_gumbels(a.noise.key, a.noise.stream, first, n, out);
        else
            fill_gumbels_f32(a.noise.key, a.noise.stream, first, n, out);
        return reduce_terms(n, -kInf, kMax, logit);
    }
    const double amax = facts[0];
    const auto u_of = [&](auto d, int64_t j) {  // (a - max a) + g
        return (logit(d, j) - amax) + load_lanes<decltype(d)>(out + j);
    };
    if (step == 1) return reduce_terms(n, -kInf, kMax, u_of);
    const double umax = facts[1];
    const bool multiply = inv_t < kInf;
    const auto s_of = [&](auto d, int64_t j) {
        const auto u = u_of(d, j) - umax;
        return multiply ? u * inv_t : u / t;
    };
    // kept holds exp(s) of the row's first rsample_split_scratch elements.
    const bool in_kept = j0 + n <= rsample_split_scratch(k, rsample_needs(a));
    double* const e = kept != nullptr && in_kept ? kept + j0 : nullptr;
    if (step == 2)
        return reduce_terms(n, 0.0, kPlus, [&](auto d, int64_t j) {
            const auto sj = s_of(d, j);
            const auto ej = exp_lanes<kExpDegree<Real>>(sj);
            if constexpr (kDouble) store_lanes(out + j, want_x ? ej : sj);
            if (e != nullptr) store_lanes(e + j, ej);
            return ej;
        });
    const double inv = 1.0 / facts[2];
    const double lse = want_x ? 0.0 : log_fused_d(facts[2]);
    for_lanes(n, true, [&](auto d, int64_t j) {
        using D = decltype(d);
        if (e != nullptr) {
            store_lanes(out + j, load_lanes<D>(e + j) * inv);
        } else if constexpr (kDouble) {
            const D v = load_lanes<D>(out + j);
            store_lanes(out + j, want_x ? v * inv : v - lse);
        } else {
            const D sj = s_of(d, j);
            store_lanes(out + j,
                        want_x ? exp_lanes<kExpDegree<Real>>(sj) * inv : sj - lse);
        }
    });
    return 0.0;
}

// Row r of rsample_rows in its output (Note [rows without scratch]), one step
// over all its chunks after another (Note [split rows]); `kept` (RsampleArgs::keep
// doubles, or null) keeps exp(s) of the row's first elements.
template <class Real>
void rsample_row_in_output(const RsampleArgs<Real>& a, int64_t r, double* kept) {
    const int64_t k = a.shape.k;
    double facts[kRsampleSteps - 1] = {0.0, 0.0, 0.0};
    for (int step = 0; step < kRsampleSteps; ++step) {
        double acc = 0.0;
        for (int64_t j0 = 0; j0 < k; j0 += kChunkElements) {
            const int64_t n = k - j0 < kChunkElements ? k - j0 : kChunkElements;
            const double part = rsample_row_step(a, r, step, j0, n, facts, kept);
            acc = j0 == 0 ? part : split_row_fold(step, acc, part);
        }
        if (step < kRsampleSteps - 1) facts[step] = acc;
    }
}

// rsample: x = softmax((a + g) / T) and log x; see Note [blocks of rows].
template <class Real>
void rsample_rows(const RsampleArgs<Real>& a, int64_t r0, int64_t r1, double* scratch) {
    const int64_t k = a.shape.k;
    const int64_t cap = block_capacity(k);
    const bool given64 = a.noise.gumbels64.data != nullptr;
    const bool given = given64 || a.noise.gumbels.data != nullptr;
    const int64_t* const strides[3] = {
        a.logits.stride, a.temperature.stride,
        given64 ? a.noise.gumbels64.stride : a.noise.gumbels.stride};
    RowWalker<3> walk(a.shape, r0, strides);
    // Short rows use three element buffers and the per-row buffers; longer ones
    // only the noise buffer, and exp(s) when log x is wanted (rsample_scratch_size).
    const bool columns = k <= kColumnMaxK;
    double* s = scratch;
    double* e_buffer = columns || a.log_x != nullptr ? scratch + cap : nullptr;
    double* la = columns ? scratch + 2 * cap : nullptr;
    double* row_sum = columns ? scratch + 3 * cap : nullptr;  // per-row buffers
    const int64_t ks = a.logits.kstride;
    InverseTemperature inverse;  // 1 / T, row by row
    const RsampleNeeds needs = rsample_needs(a);
    const bool in_output = rsample_in_output(k, needs);
    double* const kept = in_output && needs.keep > 0 ? scratch : nullptr;

    for (int64_t rb = r0; rb < r1; rb += rows_per_block(k)) {
        const int64_t nb = r1 - rb < rows_per_block(k) ? r1 - rb : rows_per_block(k);
        const int64_t n = nb * k;
        if (in_output) {  // one row per block (k >= kBlockElements)
            rsample_row_in_output(a, rb, kept);
            walk.advance();
            continue;
        }

        // 1. The noise of the whole block, from the stream (contiguous indices):
        // float noise for float samples, double noise for double ones (noise.hpp).
        // Short float rows of 2, 4, 8, 12 or 16 take theirs straight into columns
        // (rsample_block_columns).
        const uint64_t first = a.noise.offset + static_cast<uint64_t>(rb * k);
        const bool noise_in_columns =
            !given && columns && std::is_same<Real, float>::value &&
            fill_gumbels_f32_columns(a.noise.key, a.noise.stream, first, nb, k,
                                     e_buffer);
        if (!given && !noise_in_columns) {
            if constexpr (std::is_same<Real, float>::value)
                fill_gumbels_f32(a.noise.key, a.noise.stream, first, n, s);
            else
                fill_gumbels(a.noise.key, a.noise.stream, first, n, s);
        }

        if (columns) {
            rsample_block_columns(a, walk, rb, nb, noise_in_columns, s, e_buffer, la,
                                  row_sum);
            continue;
        }

        // 2. Per row, each step fused into one pass that also reduces it (Note
        // [row reductions]): max a; u = (a - max a) + g and max u; then
        // s = (u - max u) / T, whose largest entry is exactly 0, with exp(s) and
        // its sum (in [1, K]); see Note [shift before scaling] and Note [stable
        // log-sum-exp]. Shifting before dividing keeps a tiny T from turning the
        // largest entry into inf - inf; division is replaced by a multiply only
        // where 1/T is finite. Contiguous logits are read where they are, so that
        // a long row's working set is its noise buffer (and exp(s) when log x is
        // also wanted) rather than three buffers (Note [long rows]).
        for (int64_t i = 0; i < nb; ++i, walk.advance()) {
            const Real* lg = a.logits.data + walk.offset[0];
            const double t = static_cast<double>(a.temperature.data[walk.offset[1]]);
            const double inv_t = inverse(t);
            double* si = s + i * k;
            if (given64)
                load_row(a.noise.gumbels64.data + walk.offset[2],
                         a.noise.gumbels64.kstride, k, si);
            else if (given)
                load_row(a.noise.gumbels.data + walk.offset[2], a.noise.gumbels.kstride,
                         k, si);
            double* const ei = a.log_x != nullptr ? e_buffer : si;
            const auto logit = [lg, ks](auto d, int64_t j) {
                return load_strided_lanes<decltype(d)>(lg + j * ks, ks);
            };
            const double amax = reduce_chunked(k, -kInf, kMax, logit);
            const double umax = reduce_chunked(k, -kInf, kMax, [&](auto d, int64_t j) {
                using D = decltype(d);
                const D u = (logit(d, j) - amax) + load_lanes<D>(si + j);
                store_lanes(si + j, u);
                return u;
            });
            const bool multiply = inv_t < kInf;
            const double sum = reduce_chunked(k, 0.0, kPlus, [&](auto d, int64_t j) {
                using D = decltype(d);
                const D u = load_lanes<D>(si + j) - umax;
                const D sj = multiply ? u * inv_t : u / t;
                const D ej = exp_lanes<kExpDegree<Real>>(sj);
                store_lanes(si + j, sj);
                store_lanes(ei + j, ej);
                return ej;
            });

            // 3. The row: x = exp(s) / sum and log x = s - log(sum).
            if (a.x != nullptr) {
                const double inv = 1.0 / sum;
                Real* x = a.x + (rb + i) * k;
                for (int64_t j = 0; j < k; ++j) x[j] = static_cast<Real>(ei[j] * inv);
            }
            if (a.log_x != nullptr) {
                const double lse = log_fused_d(sum);
                Real* y = a.log_x + (rb + i) * k;
                for (int64_t j = 0; j < k; ++j) y[j] = static_cast<Real>(si[j] - lse);
            }
        }
    }
}

// Note [dominant reference]: z = (a - max a) - T (y - y_ref) is formed against
// the row's largest entry x_ref (Note [large temperatures]), but the softmax
// weights of z concentrate where z is largest. When T |y - y_ref| is large
// there (a value with tiny entries at a large temperature: 7e5 for x = 1e-300
// at T = 1e3), the rounding of that product, an ulp of a number that large,
// moves the competing z against one another: gradients 1e-8 from the exact
// ones at T = 1e5. Such a row (T |y - y_ref| above kRereferenceAbove at its
// largest z) is formed again against its dominant entry x_dom instead, with
// d = log(x / x_dom) from log_ratio, 0 for every entry equal to x_dom, so that
// the competing z are as exact as their own size allows. The density and its
// gradients do not depend on the reference (sum_k (K w_k - 1) = 0). Samples
// never need it: there T |y - y_ref| is a difference of perturbed logits.
//
// The same holds when T (y - y_ref) overflowed, so that some z are +inf (log
// space entries far below the log of the smallest double, -1e300 at T = 1e9;
// on the simplex, tiny entries at T above 1e305). The density is then -inf to
// double precision, but its gradients are finite: the row is formed against
// the entry with the largest z, found as the largest z / T = (a - max a) / T -
// (y - y_ref), which does not overflow. Entries whose z falls to -inf there
// have weight 0 and still count as live.
constexpr double kRereferenceAbove = 512.0;

// log_prob_rows for an ordinary row (every category live or masked, no zeros)
// once yi holds y - y_ref (-inf where masked), wi holds z and zmax its maximum:
// the row again against its dominant entry when Note [dominant reference] asks
// for it. Returns false when some z is still +inf.
template <class Real>
bool rereference_row(const double* lg, double amax, const Real* v, int64_t vs, double t,
                     bool simplex, int64_t k, double* yi, double* wi, double& zmax) {
    int64_t jz = 0;  // the first entry at the largest z
    if (zmax == kInf) {
        double best = -kInf;
        for (int64_t j = 0; j < k; ++j) {
            const double scaled = (lg[j] - amax) / t - yi[j];
            if (lg[j] > -kInf && scaled > best) {
                best = scaled;
                jz = j;
            }
        }
    } else {
        while (jz < k - 1 && !(wi[jz] == zmax)) ++jz;
        if (!(t * std::fabs(yi[jz]) > kRereferenceAbove)) return true;
    }
    const double xz = static_cast<double>(v[jz * vs]);
    const double yz = simplex ? log_fused_d(xz) : xz;
    zmax = -kInf;
    for (int64_t j = 0; j < k; ++j) {
        if (!(lg[j] > -kInf)) continue;  // masked: yi and wi stay -inf
        const double xj = static_cast<double>(v[j * vs]);
        const double d = simplex ? log_ratio(xj, xz, log_fused_d(xj), yz, t) : xj - yz;
        yi[j] = d;
        wi[j] = (lg[j] - amax) - t * d;
        zmax = max_d(zmax, wi[j]);
    }
    return zmax < kInf;
}

// log_prob's rows of kOnePassMinK or more categories load their logits and
// value and take their logs in the pass that learns their long_row_facts (Note
// [long rows]). Measured against loading a block flat and taking its logs in one
// flat pass, one thread, validation off: float64 rows of 256 and 1000 categories
// 11-18% faster, float32 ones unchanged; rows of 63 and 100 categories, whose
// last k mod kLanes elements the fold takes one at a time, 0-20% slower.
constexpr int64_t kOnePassMinK = 256;

// What one pass over a row of 2 kSlots or more categories learns before the
// row is classified (log_prob_rows): the largest logit, the largest live y, the
// counts of live categories, of zeros on them and of weight off them, and
// sum_live -y (simplex) or 0, each reduced as its own pass would (fold_terms).
struct LongRowFacts {
    double amax, ymax, live, zeros, stray, lin;
};

// load(D{}, j) gives logits and y (log x, or the log-space value) of element j
// or of the lanes from j, and may store them.
template <class Load>
inline LongRowFacts long_row_facts(int64_t k, bool simplex, Load load) {
    const auto f = fold_terms<Fold::max, Fold::max, Fold::plus, Fold::plus, Fold::plus,
                              Fold::plus>(k, [load, simplex](auto d, int64_t j) {
        using D = decltype(d);
        const auto ay = load(d, j);
        const D a = ay.first;
        const D y = ay.second;
        const D one = D{} + 1.0;
        const auto live = a > -kInf;
        const auto dead = a == -kInf;  // logits are never NaN
        return std::array<D, 6>{a,
                                live ? y : D{} - kInf,
                                live ? one : D{},
                                live && y == -kInf ? one : D{},
                                dead && y > -kInf ? one : D{},
                                live && simplex ? -y : D{}};
    });
    return {f[0], f[1], f[2], f[3], f[4], f[5]};
}

// The ordinary case of log_prob_rows for a row of 2 kSlots or more categories:
// the same formulas as its loop for shorter rows, vectorised, with maxima in
// the order of Note [row reductions] (Note [long rows]). On entry yi holds
// log x and ymax its live maximum (long_row_facts); on return yi holds y - max y
// (-inf where masked), wi holds z (not yet shifted), and the result is zmax,
// their maximum. lg are the logits of the row, v its value (stride vs). dmax is
// set to the largest live |y - max y|, or +inf if one is not finite, so that
// rows far from Note [dominant reference] need no search for it.
template <class Real>
double ordinary_long_row(const double* lg, double amax, double ymax, const Real* v,
                         int64_t vs, double t, bool simplex, int64_t k, double* yi,
                         double* wi, double& dmax) {
    // The live category with the largest y (the first, if several).
    const auto live_y = [lg, yi](auto d, int64_t j) {
        using D = decltype(d);
        return load_lanes<D>(lg + j) > -kInf ? load_lanes<D>(yi + j) : D{} - kInf;
    };
    int64_t jmax = 0;
#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
    // Whole vectors with no live entry equal to ymax first, then the search
    // below within the vector that has one.
    while (jmax + kLanes <= k - 1 && !any_lane(live_y(VecD{}, jmax) == ymax))
        jmax += kLanes;
#endif
    while (jmax < k - 1 && !(lg[jmax] > -kInf && yi[jmax] == ymax)) ++jmax;
    const double xmax = static_cast<double>(v[jmax * vs]);

    const auto m = fold_terms<Fold::max, Fold::max>(k, [&](auto dd, int64_t j) {
        using D = decltype(dd);
        const D y = load_lanes<D>(yi + j);
        const D aj = load_lanes<D>(lg + j) - amax;
        const D d = simplex ? log_ratio_lanes(load_strided_lanes<D>(v + j * vs, vs),
                                              Lanes<D>::splat(xmax), y,
                                              Lanes<D>::splat(ymax), Lanes<D>::splat(t))
                            : y - ymax;
        const auto live = aj > -kInf;
        const D z = live ? aj - t * d : D{} - kInf;
        store_lanes(yi + j, live ? d : D{} - kInf);
        store_lanes(wi + j, z);
        const D size = d < 0.0 ? -d : d;
        return std::array<D, 2>{z,
                                live ? (size <= kMaxDouble ? size : D{} + kInf) : D{}};
    });
    dmax = m[1];
    return m[0];
}

// log_prob_vjp's temperature gradient of a row, g (head + acc scale), where
// acc scale is sum_k (K w_k - 1) y_k formed as acc over y / scale (scale 1, or
// the row's largest |y| when that is huge). g = 0 contributes 0 even where the
// sum overflowed. A scaled row multiplies g in before scaling back: acc scale
// alone can pass the largest double where g brings the product back into range
// (log-space entries of -1e307 at T = 1, g = 0.03: -8e306, not -inf; a fuzz
// campaign). Lane by lane (D = VecD) or for one row (D = double).
template <class D>
RELAXCAT_ALWAYS_INLINE D temperature_gradient(D g, D head, D acc, D scale) {
    return g == 0.0 ? D{}
                    : (scale == 1.0 ? g * (head + acc) : g * head + (g * acc) * scale);
}

// g (T (K w - 1) - one), the numerator of a value gradient (one = 1 on the
// simplex, 0 in log space), as written unless T (K w - 1) - one overflows; then
// as (g T) (K w - 1) - g one, which is finite where g brings the product back
// into range (T = 1.7e308, K = 3, g = 1/4: 8.5e307, not inf) and 0 for g = 0
// (inf times 0 was NaN). Lane by lane; g and T may be scalars.
template <class D, class G, class T>
RELAXCAT_ALWAYS_INLINE D value_gradient_numerator(G g, T t, double kd, D w,
                                                  double one) {
    const D inner = t * (kd * w - 1.0) - one;
    const auto finite = (inner < kInf) & (inner > -kInf);
    return finite ? g * inner : (g * t) * (kd * w - 1.0) - g * one;
}

// Note [dominant value gradient]: on the simplex, d log p / d y_k is
// T (K w_k - 1) - 1, and where w_k is near 1 with T (K - 1) near 1 the two terms
// cancel: at K = 2, T = 1 and x = (1e-20, 1) the exact gradient of the tiny
// entry is -1.21, but w_k rounds to 1 and the difference was 0. With
// r = 1 - w_k, the sum of the other weights, the same quantity is
// (T (K - 1) - 1) - T K r, whose first term is formed with one rounding (fma)
// and whose second keeps r's relative precision. The kernels use that form for
// the entry whose exponential is the first of 1 (z at its maximum), when its
// weight is above 1/2 (sum of exponentials below 2), with r from the other
// exponentials summed in element order (Note [row reductions]). Where T (K - 1)
// overflows (T near the largest double) that form would be inf or inf - inf
// while the answer is finite or one infinity; the usual form, with the weight
// w = 1 - r, is kept there (nothing cancels at such a temperature). r is a
// sum of exponentials and underflows with the entry: for a subnormal x_k, r is
// subnormal too and this form keeps only its digits (K = 2, T = 1: 3e-4 off at
// x_k = 1e-320, 0 at 5e-324, where the gradient is -0.67; README,
// Limitations). The exponentials of the other entries on a scale that keeps
// them normal would fix it; that is not done.
inline double dominant_value_gradient(double g, double t, double kd, double w,
                                      double r) {
    const double c = std::fma(t, kd - 1.0, -1.0);
    if (!(c < kInf)) return value_gradient_numerator(g, t, kd, w, 1.0);
    return g * (c - t * (kd * r));
}

// The limit of (T (K w_k - 1) - 1) / (x_k w_k) at a zero x_k whose leading
// numerator vanishes, per unit of upstream gradient, the same for every such
// zero of a row (Note [vanishing numerator at a zero]): 0 for T > 1, -inf for
// T < 1, and -K C for T = 1, with log C = log sum_{j live, x_j > 0}
// exp(a_j - y_j) - lse_zero and lse_zero = log sum_{i in Z} exp(a_i), both
// relative to the row's largest logit. lg holds the logits as loaded and
// y = log x (-inf at the zeros).
inline double vanishing_numerator_limit(const double* lg, const double* y, int64_t k,
                                        double t, double kd, double lse_zero_shifted) {
    if (t > 1.0) return 0.0;
    if (t < 1.0) return -kInf;
    double amax = -kInf;
    for (int64_t j = 0; j < k; ++j) amax = max_d(amax, lg[j]);
    double top = -kInf;  // the largest a_j - y_j off the zero set
    for (int64_t j = 0; j < k; ++j)
        if (lg[j] > -kInf && y[j] > -kInf) top = max_d(top, (lg[j] - amax) - y[j]);
    double total = 0.0;
    for (int64_t j = 0; j < k; ++j)
        if (lg[j] > -kInf && y[j] > -kInf)
            total += exp_d(((lg[j] - amax) - y[j]) - top);
    return -kd * exp_d(top + log_fused_d(total) - lse_zero_shifted);
}

// log_prob_rows for one block of short rows in columns (Note [rows as columns]),
// for the ordinary case only: every category live and every value entry finite
// and (on the simplex) positive. Returns false, having written nothing, when
// some row of the block is not ordinary; the caller then takes the block row by
// row. The operations and their order are those of the ordinary rows of
// log_prob_rows, gradients included, so the bits are the same. xc, yc and lc are
// element buffers of the block; rows points to ten per-row buffers.
template <class Real, class Walker>
bool log_prob_block_columns(const LogProbArgs<Real>& a, Walker& walk, int64_t rb,
                            int64_t nb, double* xc, double* yc, double* lc,
                            double* rows) {
    const int64_t k = a.shape.k;
    const int64_t n = nb * k;
    const bool simplex = a.space == Space::simplex;
    double* const t = rows;                          // per row: T,
    double* const amax = t + row_buffer_size(k);     // max a,
    double* const ymax = amax + row_buffer_size(k);  // the largest y and
    double* const xmax = ymax + row_buffer_size(k);  // its x,
    double* const lin = xmax + row_buffer_size(k);   // the linear terms,
    double* const zmax = lin + row_buffer_size(k);   // max z, then log sum exp,
    double* const sum = zmax + row_buffer_size(k);   // sum exp(z - max z),
    double* const g = sum + row_buffer_size(k);      // the upstream gradient,
    double* const scale = g + row_buffer_size(k);    // the scale of the T sum,
    double* const acc = scale + row_buffer_size(k);  // and that sum.
    const GradOut<Real> grad_logits{a.grad_logits, a.grad_logits_wide};
    const GradOut<Real> grad_value{a.grad_value, a.grad_value_wide};
    const bool want_grad =
        bool(grad_value) || bool(grad_logits) || a.grad_temperature != nullptr;

    block_per_row(a.temperature, a.shape, walk, 1, nb, t);
    if (want_grad) block_per_row(a.grad, a.shape, walk, 3, nb, g);
    block_to_columns(a.logits, a.shape, walk, 0, rb, nb, lc);
    block_to_columns(a.value, a.shape, walk, 2, rb, nb, xc);
    skip_block(walk,
               !dense_rows(a.logits, a.shape) || !dense_rows(a.value, a.shape) ||
                   !same_for_all_rows(a.temperature, a.shape) ||
                   (want_grad && !same_for_all_rows(a.grad, a.shape)),
               nb);

    // Ordinary rows only.
    const double lowest = simplex ? 0.0 : -kInf;  // a value must lie above it
    int64_t unusual = 0;
    for (int64_t j = 0; j < n; ++j)
        unusual += !((lc[j] > -kInf) & (xc[j] > lowest) & (xc[j] < kInf));
    if (unusual != 0) return false;

    for (int64_t j = 0; j < n; ++j) yc[j] = xc[j];
    if (simplex) log_inplace(yc, n);
    // Each pass down the columns keeps its per-row sums and maxima in
    // registers (Note [row sums in registers]).
    for_lanes(nb, true, [&](auto d, int64_t i) {
        using D = decltype(d);
        D am = load_lanes<D>(lc + i), ym = load_lanes<D>(yc + i);
        D xm = load_lanes<D>(xc + i), ln = simplex ? -ym : D{};
        for (int64_t j = 1; j < k; ++j) {
            const D yj = load_lanes<D>(yc + j * nb + i);
            const auto up = yj > ym;
            am = kMax(am, load_lanes<D>(lc + j * nb + i));
            xm = up ? load_lanes<D>(xc + j * nb + i) : xm;
            ym = up ? yj : ym;
            if (simplex) ln = ln + -yj;
        }
        store_lanes(amax + i, am);
        store_lanes(ymax + i, ym);
        store_lanes(xmax + i, xm);
        store_lanes(lin + i, ln);
    });
    // z = (a - max a) - T (y - max y), y - max y as in Note [large temperatures];
    // z in place of y, and y - max y in place of the logits.
    for_lanes(nb, true, [&](auto lanes, int64_t i) {
        using D = decltype(lanes);
        const D xm = load_lanes<D>(xmax + i), ym = load_lanes<D>(ymax + i);
        const D am = load_lanes<D>(amax + i), ti = load_lanes<D>(t + i);
        D zm{};
        for (int64_t j = 0; j < k; ++j) {
            double* const yj = yc + j * nb;
            double* const aj = lc + j * nb;
            const D y = load_lanes<D>(yj + i);
            const D d =
                simplex ? log_ratio_lanes(load_lanes<D>(xc + j * nb + i), xm, y, ym, ti)
                        : y - ym;
            const D z = (load_lanes<D>(aj + i) - am) - ti * d;
            store_lanes(yj + i, z);
            store_lanes(aj + i, d);
            zm = j == 0 ? z : kMax(zm, z);
        }
        store_lanes(zmax + i, zm);
    });
    bool finite = true;
    for (int64_t i = 0; i < nb; ++i) finite &= zmax[i] < kInf;
    if (!finite) return false;  // T (y - max y) overflowed: log_prob_rows's case
    int64_t far_reference = 0;  // rows for Note [dominant reference]
    for (int64_t j = 0; j < k; ++j)
        for (int64_t i = 0; i < nb; ++i)
            far_reference += (yc[j * nb + i] == zmax[i]) &
                             (t[i] * std::fabs(lc[j * nb + i]) > kRereferenceAbove);
    if (far_reference != 0) return false;
    for_lanes(nb, true, [&](auto d, int64_t i) {
        using D = decltype(d);
        const D zm = load_lanes<D>(zmax + i);
        D ln = load_lanes<D>(lin + i);
        for (int64_t j = 0; j < k; ++j) {
            const D v = load_lanes<D>(yc + j * nb + i) - zm;
            store_lanes(yc + j * nb + i, v);
            ln = ln + v;
        }
        store_lanes(lin + i, ln);
    });

    // The density: lgamma(K) + (K - 1) log T + lin - K log(sum exp(z - max z)).
    exp_inplace(yc, n);
    for_lanes(nb, true, [&](auto d, int64_t i) {
        using D = decltype(d);
        D total = load_lanes<D>(yc + i);
        for (int64_t j = 1; j < k; ++j) total = total + load_lanes<D>(yc + j * nb + i);
        store_lanes(sum + i, total);
        store_lanes(zmax + i, total);
    });
    log_inplace(zmax, nb);
    const double kd = static_cast<double>(k);
    if (a.log_prob != nullptr) {
        const double lgamma_k = lgamma_int(k);
        double* const head = scale;  // per row, in a buffer not yet needed
        per_temperature(t, nb, head, [lgamma_k, kd](double ti) {
            return lgamma_k + (kd - 1.0) * log_fused_d(ti);
        });
        for (int64_t i = 0; i < nb; ++i)
            a.log_prob[rb + i] = static_cast<Real>(head[i] + lin[i] - kd * zmax[i]);
    }
    if (!want_grad) return true;

    // The gradients, as log_prob_rows forms them for ordinary rows, with the
    // softmax weights w in place of the exponentials and y - max y in lc.
    double* const inv = amax;  // 1 / sum, in a buffer no longer needed
    for (int64_t i = 0; i < nb; ++i) inv[i] = 1.0 / sum[i];
    // Note [dominant value gradient]: per row, the exponentials but the one of 1
    // (a tie of two leaves the sum at 2 or more, where rest is not used) and
    // T (K - 1) - 1, in buffers no longer needed.
    double* const rest = ymax;
    double* const c = xmax;
    if (grad_value && simplex) {
        for_lanes(nb, true, [&](auto d, int64_t i) {
            using D = decltype(d);
            D r{};
            for (int64_t j = 0; j < k; ++j) {
                const D e = load_lanes<D>(yc + j * nb + i);
                r = r + (e == 1.0 ? D{} : e);
            }
            store_lanes(rest + i, r);
        });
        per_temperature(t, nb, c,
                        [kd](double ti) { return std::fma(ti, kd - 1.0, -1.0); });
    }
    for (int64_t j = 0; j < k; ++j)
        for (int64_t i = 0; i < nb; ++i) yc[j * nb + i] *= inv[i];
    if (a.grad_temperature != nullptr) {
        for_lanes(nb, true, [&](auto d, int64_t i) {
            using D = decltype(d);
            D m{};
            for (int64_t j = 0; j < k; ++j)
                m = kMax(m, -load_lanes<D>(lc + j * nb + i));
            store_lanes(scale + i, m);
        });
        bool unit = true;  // y / 1 is y: no division when no row is scaled
        for (int64_t i = 0; i < nb; ++i) {
            scale[i] = scale[i] > kScaleAbove ? scale[i] : 1.0;
            unit &= scale[i] == 1.0;
        }
        for_lanes(nb, true, [&](auto d, int64_t i) {
            using D = decltype(d);
            const D sc = load_lanes<D>(scale + i);
            D total{};
            for (int64_t j = 0; j < k; ++j) {
                const D w = load_lanes<D>(yc + j * nb + i);
                const D dj = load_lanes<D>(lc + j * nb + i);
                total = total + (kd * w - 1.0) * (unit ? dj : dj / sc);
            }
            store_lanes(acc + i, total);
        });
        // (K - 1) / T once per run of equal temperatures, in lin (no longer
        // needed); then the rows' gradients in vectors.
        double* const head = lin;
        per_temperature(t, nb, head, [kd](double ti) { return (kd - 1.0) / ti; });
        for_lanes(nb, true, [&](auto d, int64_t i) {
            using D = decltype(d);
            store_lanes(
                a.grad_temperature + rb + i,
                temperature_gradient(load_lanes<D>(g + i), load_lanes<D>(head + i),
                                     load_lanes<D>(acc + i), load_lanes<D>(scale + i)));
        });
    }
    with_short_k(k, [&](auto kk) {
        grad_logits.from_columns(yc, nb, kk, rb, [g, kd](double w, int64_t i) {
            return g[i] * (1.0 - kd * w);
        });
        if (grad_value) {
            // T (K w - 1) - [1 on the simplex], then divided by x on the simplex;
            // the dominant entry by Note [dominant value gradient].
            // With a sum below 2, w = inv marks the entry whose exponential is
            // 1: any other is at most 1 - 2^-52, and its weight an ulp below.
            const double one = simplex ? 1.0 : 0.0;
            for (int64_t j = 0; j < k; ++j) {
                double* wj = yc + j * nb;
                const double* xj = xc + j * nb;
                for_lanes(nb, true, [&](auto d, int64_t i) {
                    using D = decltype(d);
                    const D w = load_lanes<D>(wj + i), ti = load_lanes<D>(t + i);
                    const D gi = load_lanes<D>(g + i);
                    const D dy = value_gradient_numerator(gi, ti, kd, w, one);
                    if (!simplex) {
                        store_lanes(wj + i, dy);
                        return;
                    }
                    const D iv = load_lanes<D>(inv + i), ci = load_lanes<D>(c + i);
                    const D dom =
                        gi * (ci - ti * (kd * (load_lanes<D>(rest + i) * iv)));
                    const auto use =
                        (load_lanes<D>(sum + i) < 2.0) & (w == iv) & (ci < kInf);
                    store_lanes(wj + i, (use ? dom : dy) / load_lanes<D>(xj + i));
                });
            }
            grad_value.from_columns(yc, nb, kk, rb,
                                    [](double v, int64_t) { return v; });
        }
    });
    return true;
}

// The log-density of a value (x on the simplex, or y = log x) and its
// vector-Jacobian product. The formulas are those of tests/data/README.md:
//   simplex: lgamma(K) + (K-1) log T + sum(a - (T+1) y) - K lse(a - T y)
//   log:     lgamma(K) + (K-1) log T + sum(a - T y)     - K lse(a - T y)
// evaluated as sum(z - max z) [- sum y] - K log(sum exp(z - max z)) with
// z = (a - max a) - T y; see Note [stable log-sum-exp]. Gradients (all zero for
// masked categories and for values off the face of the live categories):
//   d/da_k = 1 - K w_k,  d/dT = (K-1)/T + sum_k (K w_k - 1) y_k,
//   d/dy_k = -(T+1) + K T w_k (simplex, then divided by x_k), -T + K T w_k (log),
// with w = softmax(z) over the live categories.
template <class Real>
void log_prob_rows(const LogProbArgs<Real>& a, int64_t r0, int64_t r1,
                   double* scratch) {
    const int64_t k = a.shape.k;
    const int64_t cap = block_capacity(k);
    const int64_t* const strides[4] = {a.logits.stride, a.temperature.stride,
                                       a.value.stride, a.grad.stride};
    RowWalker<4> walk(a.shape, r0, strides);
    const bool simplex = a.space == Space::simplex;
    const GradOut<Real> grad_logits{a.grad_logits, a.grad_logits_wide};
    const GradOut<Real> grad_value{a.grad_value, a.grad_value_wide};
    const bool want_grad =
        bool(grad_value) || bool(grad_logits) || a.grad_temperature != nullptr;
    const int64_t ks = a.logits.kstride, vs = a.value.kstride;
    double* y = scratch;                   // log x, per element
    double* w = scratch + cap;             // exponents, then softmax weights
    double* la = scratch + 2 * cap;        // the logits, per element
    double* row_live = scratch + 3 * cap;  // per-row facts of the block
    double* row_kind =
        row_live + row_buffer_size(k);  // 0 ordinary, 1 zeros, 2 off face
    double* row_lin = row_kind + row_buffer_size(k);
    double* row_zmax = row_lin + row_buffer_size(k);
    double* row_zeros = row_zmax + row_buffer_size(k);
    double* row_sum = row_zeros + row_buffer_size(k);    // sum of exp(z - max z)
    double* row_log_sum = row_sum + row_buffer_size(k);  // and its log
    int64_t cached_k = -1;
    double cached_lgamma = 0.0;
    double cached_t = 0.0, cached_log_t = -kInf;  // T > 0: the first row sets them
    bool columns = k <= kColumnMaxK;              // Note [rows as columns]
    // The long_row_facts of a block's rows of kOnePassMinK or more, from step 1.
    std::array<LongRowFacts, kBlockElements / kOnePassMinK> loaded;

    for (int64_t rb = r0; rb < r1; rb += rows_per_block(k)) {
        const int64_t nb = r1 - rb < rows_per_block(k) ? r1 - rb : rows_per_block(k);
        const int64_t n = nb * k;
        const RowWalker<4> block_start = walk;
        // Short rows go down columns until a block is not ordinary; masked
        // categories or zeros are usually in every block of a call, so later
        // blocks go row by row without trying (the bits are the same either way).
        if (columns) {
            if (log_prob_block_columns(a, walk, rb, nb, y, w, la, row_live)) continue;
            walk = block_start;
            columns = false;
        }

        // 1. Logits and value as doubles, then y = log x for the whole block, flat;
        // a row of kOnePassMinK or more takes its logs as it loads the value, and
        // learns its long_row_facts in the same pass (Note [long rows]).
        const bool long_row = k >= kOnePassMinK;
        for (int64_t i = 0; i < nb; ++i, walk.advance()) {
            const Real* lsrc = a.logits.data + walk.offset[0];
            const Real* v = a.value.data + walk.offset[2];
            double* lg = la + i * k;
            double* yi = y + i * k;
            if (long_row) {
                loaded[i] = long_row_facts(k, simplex, [=](auto d, int64_t j) {
                    using D = decltype(d);
                    const D aj = load_strided_lanes<D>(lsrc + j * ks, ks);
                    const D xj = load_strided_lanes<D>(v + j * vs, vs);
                    const D yj = simplex ? log_lanes<true>(xj) : xj;
                    store_lanes(lg + j, aj);
                    store_lanes(yi + j, yj);
                    return std::pair<D, D>(aj, yj);
                });
            } else {
                load_row(lsrc, ks, k, lg);
                load_row(v, vs, k, yi);
            }
        }
        if (simplex && !long_row) log_inplace(y, n);

        // 2. Per row: classify (Notes [masked categories], [zeros in a value]) and
        // write the exponents z - max z of the softmax weights.
        walk = block_start;
        for (int64_t i = 0; i < nb; ++i, walk.advance()) {
            const double* lg = la + i * k;
            const double t = static_cast<double>(a.temperature.data[walk.offset[1]]);
            double* yi = y + i * k;
            double* wi = w + i * k;
            // Rows of 2 kSlots or more learn their maxima and counts in one pass
            // (long_row_facts), and take their exponentials here, fused with the
            // shift by max z (step 3 does those of shorter rows).
            const bool long_facts = k >= 2 * kSlots;
            LongRowFacts facts{};
            int64_t live = 0, zeros = 0, stray = 0;  // counts, so that it vectorises
            if (long_facts) {
                facts = long_row
                            ? loaded[i]
                            : long_row_facts(k, simplex, [lg, yi](auto d, int64_t j) {
                                  using D = decltype(d);
                                  return std::pair<D, D>(load_lanes<D>(lg + j),
                                                         load_lanes<D>(yi + j));
                              });
                live = static_cast<int64_t>(facts.live);
                zeros = static_cast<int64_t>(facts.zeros);
                stray = static_cast<int64_t>(facts.stray);
            } else {
                facts.amax = slot_max(lg, k);
                for (int64_t j = 0; j < k; ++j) {
                    const bool is_live = lg[j] > -kInf;
                    live += is_live;
                    zeros += is_live & (yi[j] == -kInf);
                    stray += !is_live & (yi[j] > -kInf);
                }
            }
            const double amax = facts.amax;
            const bool off_face = stray > 0;
            row_live[i] = static_cast<double>(live);
            row_zeros[i] = static_cast<double>(zeros);
            row_kind[i] = off_face ? 2.0 : (zeros > 0 ? 1.0 : 0.0);
            double zmax = -kInf, lin = 0.0;
            bool exponentials = false;  // wi holds exp(z - max z), row_sum their sum
            if (off_face) {
                for (int64_t j = 0; j < k; ++j) wi[j] = -kInf;
            } else if (zeros == 0 && long_facts) {
                const Real* v = a.value.data + walk.offset[2];
                double dmax = kInf;
                zmax = ordinary_long_row(lg, amax, facts.ymax, v, vs, t, simplex, k, yi,
                                         wi, dmax);
                // When T |y - max y| <= kRereferenceAbove for every live entry,
                // rereference_row would find nothing to do.
                const bool near = zmax < kInf && t * dmax <= kRereferenceAbove;
                if (!near &&
                    !rereference_row(lg, amax, v, vs, t, simplex, k, yi, wi, zmax)) {
                    row_kind[i] = 2.0;  // as in the loop below
                    for (int64_t j = 0; j < k; ++j) wi[j] = -kInf;
                    zmax = -kInf;
                }
                // Live entries count even where z fell to -inf (Note [dominant
                // reference]); masked ones do not.
                const auto sums = sum_terms<2>(k, [lg, wi, zmax](auto d, int64_t j) {
                    using D = decltype(d);
                    const D wj = load_lanes<D>(wi + j) - zmax;
                    const D e = exp_lanes(wj);
                    store_lanes(wi + j, e);
                    return std::array<D, 2>{load_lanes<D>(lg + j) > -kInf ? wj : D{},
                                            e};
                });
                lin = facts.lin + sums[0];
                row_sum[i] = sums[1];
                exponentials = true;
            } else if (zeros == 0) {
                // The ordinary case: z = (a - max a) - T (y - max y) over the live
                // categories; see Note [large temperatures].
                int64_t jmax = -1;  // the live category with the largest y
                for (int64_t j = 0; j < k; ++j)
                    if (lg[j] > -kInf && (jmax < 0 || yi[j] > yi[jmax])) jmax = j;
                const double ymax = yi[jmax];
                const Real* v = a.value.data + walk.offset[2];
                const double xmax = static_cast<double>(v[jmax * vs]);
                for (int64_t j = 0; j < k; ++j) {
                    const double aj = lg[j] - amax;
                    lin += aj > -kInf && simplex ? -yi[j] : 0.0;
                    const double d = simplex ? log_ratio(static_cast<double>(v[j * vs]),
                                                         xmax, yi[j], ymax, t)
                                             : yi[j] - ymax;
                    yi[j] = aj > -kInf ? d : -kInf;  // from here on, y - max y
                    wi[j] = aj > -kInf ? aj - t * d : -kInf;
                    zmax = max_d(zmax, wi[j]);
                }
                if (!rereference_row(lg, amax, v, vs, t, simplex, k, yi, wi, zmax)) {
                    // Still overflowing after the dominant reference (not
                    // expected): reported like a value off the face.
                    row_kind[i] = 2.0;
                    for (int64_t j = 0; j < k; ++j) wi[j] = -kInf;
                    zmax = -kInf;
                }
                for (int64_t j = 0; j < k; ++j) {
                    const bool is_live = lg[j] > -kInf;
                    wi[j] -= zmax;
                    lin += is_live ? wi[j] : 0.0;
                }
            } else {
                // Zeros on live categories: the weights concentrate on the zero
                // set, where they are softmax(a); lin holds the finite limit's
                // sum_live a - (T + 1) sum_nonzero y.
                for (int64_t j = 0; j < k; ++j) {
                    const double aj = lg[j] - amax;
                    const bool is_live = aj > -kInf;
                    const bool in_zero_set = is_live && yi[j] == -kInf;
                    wi[j] = in_zero_set ? aj : -kInf;
                    zmax = max_d(zmax, wi[j]);
                    lin += is_live ? aj : 0.0;
                    lin -= is_live && !in_zero_set ? (t + 1.0) * yi[j] : 0.0;
                }
                for (int64_t j = 0; j < k; ++j) wi[j] -= zmax;
            }
            if (long_facts && !exponentials)
                row_sum[i] = reduce_terms(k, 0.0, kPlus, [wi](auto d, int64_t j) {
                    const auto e = exp_lanes(load_lanes<decltype(d)>(wi + j));
                    store_lanes(wi + j, e);
                    return e;
                });
            row_lin[i] = lin;
            row_zmax[i] = zmax;
        }

        // 3. The exponentials of shorter rows, flat, and their row sums; the logs
        // of every row's sum in one flat pass.
        if (k < 2 * kSlots) {
            exp_inplace(w, n);
            for (int64_t i = 0; i < nb; ++i) row_sum[i] = slot_sum(w + i * k, k);
        }
        for (int64_t i = 0; i < nb; ++i) row_log_sum[i] = row_sum[i];
        log_inplace(row_log_sum, nb);

        // 4. Per row: the density, then the gradients.
        walk = block_start;
        for (int64_t i = 0; i < nb; ++i, walk.advance()) {
            const int64_t r = rb + i;
            const double* lg = la + i * k;
            const Real* v = a.value.data + walk.offset[2];
            const double t = static_cast<double>(a.temperature.data[walk.offset[1]]);
            const double g =
                want_grad ? static_cast<double>(a.grad.data[walk.offset[3]]) : 0.0;
            double* yi = y + i * k;
            double* wi = w + i * k;
            const int64_t live = static_cast<int64_t>(row_live[i]);
            const double kd = row_live[i];
            const int kind = static_cast<int>(row_kind[i]);
            if (live != cached_k) {
                cached_k = live;
                cached_lgamma = lgamma_int(live);
            }
            const double sum = row_sum[i];
            if (t != cached_t) {  // one log per run of equal temperatures
                cached_t = t;
                cached_log_t = log_fused_d(t);
            }
            const double head = cached_lgamma + (kd - 1.0) * cached_log_t;

            double lp;
            if (kind == 2) {
                lp = -kInf;  // weight on an impossible category
            } else if (kind == 0) {
                lp = head + row_lin[i] - kd * row_log_sum[i];
            } else {
                const double m = row_zeros[i];
                // The exact sign of T (K - m) - m (one rounding): fl(1/3) with
                // K - m = 3, m = 1 must take the +inf branch its value gives.
                const double c = std::fma(t, kd - m, -m);
                if (!simplex || c > 0.0)
                    lp = -kInf;
                else if (c < 0.0)
                    lp = kInf;
                else
                    lp = head + row_lin[i] - kd * (row_zmax[i] + row_log_sum[i]);
            }
            if (a.log_prob != nullptr) a.log_prob[r] = static_cast<Real>(lp);
            if (!want_grad) continue;

            const double inv = kind == 2 ? 0.0 : 1.0 / sum;
            // Note [dominant value gradient]: the exponentials but the first of 1.
            int64_t jz = -1;
            double rest = 0.0;
            if (grad_value && simplex && kind == 0 && sum < 2.0) {
                jz = 0;
                while (jz < k - 1 && !(wi[jz] == 1.0)) ++jz;
                wi[jz] = 0.0;  // adds +0 in its place: the order of the columns path
                rest = reduce_terms(k, 0.0, kPlus, [wi](auto d, int64_t j) {
                    return load_lanes<decltype(d)>(wi + j);
                });
                wi[jz] = 1.0;
            }
            // The value and logits gradients of elements j (both 0 for masked
            // categories and for values off the face), from the softmax weights
            // w = exp(z - max z) / sum, formed where they are used.
            const bool face = kind != 2;
            // T (K w - 1) - [1 on the simplex]: forming K T first would
            // overflow near the float64 maximum, to +inf for every entry.
            const double one = simplex ? 1.0 : 0.0;
            const auto write_grads = [&](auto d, int64_t j, auto wv) {
                using D = decltype(d);
                const auto keep = face & (load_lanes<D>(lg + j) > -kInf);
                if (grad_value) {
                    const D dy = value_gradient_numerator(g, t, kd, wv, one);
                    D dv = dy;
                    if (simplex) {
                        const D xv = load_strided_lanes<D>(v + j * vs, vs);
                        const D edge =
                            dy == 0.0 ? D{} : (dy > 0.0 ? D{} + kInf : D{} - kInf);
                        dv = xv > 0.0 ? dy / xv : edge;
                    }
                    grad_value.set_lanes(r, k, j, keep ? dv : D{});
                }
                if (grad_logits) {
                    const D gl = g * (1.0 - kd * wv);
                    grad_logits.set_lanes(r, k, j, keep ? gl : D{});
                }
            };
            if (a.grad_temperature != nullptr) {
                double gt = 0.0;
                if (kind == 0) {
                    // sum_k (K w_k - 1) = 0, so y may be shifted by its maximum;
                    // pass 2 left y - max y in yi for ordinary rows.
                    // Scaled as in rsample_vjp_rows (kScaleAbove) when a log is huge,
                    // which only log space allows: on the simplex |y - y_ref| is
                    // below 1500 (x lies between the smallest subnormal and the
                    // largest double), so the scale is 1 without a pass.
                    // The largest |y - y_ref|, not -(y - y_ref): a row formed
                    // against its dominant entry (Note [dominant reference]) has
                    // y - y_ref of 1e307 above it when that entry is -1e307 (a
                    // fuzz campaign: the unscaled sum overflowed).
                    const double ymax =
                        simplex
                            ? 0.0
                            : reduce_terms(k, 0.0, kMax, [lg, yi](auto d, int64_t j) {
                                  using D = decltype(d);
                                  const D yv = load_lanes<D>(yi + j);
                                  return load_lanes<D>(lg + j) > -kInf
                                             ? (yv < 0.0 ? -yv : yv)
                                             : D{};
                              });
                    const double scale = ymax > kScaleAbove ? ymax : 1.0;
                    // y / 1 is y: no division when the row is not scaled. The
                    // gradients of each element are written as its term is formed.
                    const double acc =
                        reduce_terms(k, 0.0, kPlus, [&](auto d, int64_t j) {
                            using D = decltype(d);
                            const D wv = load_lanes<D>(wi + j) * inv;
                            write_grads(d, j, wv);
                            const D yv = load_lanes<D>(yi + j);
                            const D term =
                                (kd * wv - 1.0) * (scale == 1.0 ? yv : yv / scale);
                            return load_lanes<D>(lg + j) > -kInf ? term : D{};
                        });
                    gt = temperature_gradient(g, (kd - 1.0) / t, acc, scale);
                } else if (kind == 1 && g != 0.0) {
                    gt = g > 0.0 ? -kInf : kInf;  // the limit tends to -inf
                }
                a.grad_temperature[r] = gt;
            }
            if (a.grad_temperature == nullptr || kind != 0)
                for_lanes(k, true, [&](auto d, int64_t j) {
                    write_grads(d, j, load_lanes<decltype(d)>(wi + j) * inv);
                });
            if (grad_value && jz >= 0)
                grad_value.set(r, k, jz,
                               dominant_value_gradient(g, t, kd, inv, rest * inv) /
                                   static_cast<double>(v[jz * vs]));
            if (grad_value && simplex && kind == 1) {
                // Note [zeros in a value]: the sign of the numerator at a zero,
                // T (K w - 1) - 1 with one rounding (fma), as log_prob takes the
                // sign of T (K - m) - m: at T = fl(1/3), K = 4 and one zero the
                // rounded product was 1, the numerator 0, and the gradient 0
                // where it tends to -inf. Formed as T (K e - S) - S from the
                // exponentials e on the zero set and their sum S (Note
                // [vanishing numerator at a zero]).
                double per_weight = kInf;  // vanishing_numerator_limit, when needed
                for (int64_t j = 0; j < k; ++j) {
                    if (!(lg[j] > -kInf) || static_cast<double>(v[j * vs]) != 0.0)
                        continue;
                    const double num = std::fma(t, kd * wi[j] - sum, -sum);
                    double dv = 0.0;
                    if (g != 0.0 && num != 0.0)
                        dv = (g > 0.0) == (num > 0.0) ? kInf : -kInf;
                    else if (g != 0.0) {
                        if (per_weight == kInf)
                            per_weight = vanishing_numerator_limit(
                                lg, yi, k, t, kd, row_zmax[i] + log_fused_d(sum));
                        // -inf (T < 1) is not multiplied by a weight: every
                        // weight on the zero set is positive.
                        dv = g * (t < 1.0 ? per_weight : per_weight * (wi[j] * inv));
                    }
                    grad_value.set(r, k, j, dv);
                }
            }
        }
    }
}

// Note [underflow in log space]: a log-space sample holds -inf where a live
// category's (a + g) / T - lse overflowed (logits near the float maximum of
// both signs, or tiny temperatures), and its logits gradient is not that of a
// masked category: d/da_k = (w_k - x_k sum w) / T is w_k / T there (a
// fresh-user review: logits (8e307, 0, -8e307) at T = 1/2 gave (-4, 4, 0) for
// (-14, 4, 10)). rsample_vjp therefore treats every entry as live, and reads a
// masked category (one whose logit is -inf, where it has the logits) as
// y = -inf with an upstream gradient of 0, which gives it no gradient and no
// share of the sums; where x = 0 the gradient is w itself, not w - 0 * sum w,
// which an infinite sum (upstream gradients near the float64 maximum) would
// turn into NaN (a third review). The temperature gradient needs y_k itself, in the
// term w_k (y_k - log S), and the stored -inf no longer holds it: beyond the dtype's
// range the term's size, and so the sum's (even its sign, where other entries lie near
// the range's end), is unknown. A row with such a term (w_k != 0) gets NaN for its
// temperature gradient (a second review: a first version summed the term as an
// infinity, and gave -inf where the exact gradient is +4.9e308, and inf in float32
// where it is 2.6e36). Without logits every -inf entry is taken as live. A NaN in the
// value (possible only with validation off) gives NaN gradients, as it always has.

// Note [large upstream gradients]: every sum, ds and temperature term of
// rsample_vjp is linear in the upstream gradient w, and none is larger than
// 4 K^2 R max|w|, with R a bound on |y - log S| as the temperature sum uses it
// (kSimplexRelBound on the simplex, where x is at least the smallest
// subnormal; in log space the row's largest log_sum - y, or 1 once the row's
// scale has divided it, and at most kScaleAbove). Where that bound passes
// 2^1021, a row's terms could overflow with both signs, and did: in log space
// with K = 300, upstream gradients of +-3e307 gave a NaN temperature gradient
// where the exact one is -1.87e307, and K = 8 with +-1.79e308 gave +inf for
// 1.58e308. Such a row is computed with w scaled by 2^-E, the smallest power
// of two that brings its bound below 2^1021, and its results (d/da and d/dT)
// are scaled back by 2^E, which overflows only where the exact result lies
// past the range. A power of two changes no digits either way, except that
// entries of w below 2^(E - 1022), at least 2^990 times smaller than the row's
// largest, lose digits to the subnormal range. Every row inside the bound
// keeps its bits. No pass looks for the others ahead: a pass for the largest
// |w| of each row cost the column and block paths 5-9% (float32, one thread:
// (2^20, 8) on the simplex 4.96 -> 5.27 ns per element, (16384, 40) 3.77 ->
// 4.11). Instead, every overflow of a row's sums, ds or terms reaches its
// temperature sum as an infinity or a NaN (where log x is not wanted the terms
// are ds times 0 or -log S, which an infinite ds still makes a NaN or an
// infinity), and the kernels compute that sum anyway. A block of rows in
// columns or of longer rows (rsample_vjp_columns_pass, rsample_vjp_block_pass,
// from rsample_vjp_rows) with such a row is computed again from its inputs,
// now with a pass for each row's largest |w| and those above the bound scaled
// before their sums. Simplex rows of kRowPathMinK or more
// (rsample_vjp_simplex_row, and the split rows of Note [split rows]) redo just
// the row (redo_large_simplex_row): on the simplex the sums of w cannot
// overflow (x sums to 1). A block with a row whose temperature sum is NaN by
// Note [underflow in log space], or from a NaN value, is computed twice, to the
// same result.
constexpr double kSimplexRelBound = 1500.0;

// The largest max|w| of a row of k entries whose bound of Note [large upstream
// gradients] with R = rel_bound stays below 2^1021.
inline double large_gradient_limit(int64_t k, double rel_bound) {
    const double kd = static_cast<double>(k);
    return std::ldexp(1.0, 1021) / (4.0 * kd * kd * rel_bound);
}

// The factor 2^E of Note [large upstream gradients] for a row whose largest
// |w| is wmax: 1 inside the bound (and for a NaN or infinite wmax, whose call
// the front end rejects).
inline double large_gradient_factor(double wmax, int64_t k, double rel_bound) {
    const double limit = large_gradient_limit(k, rel_bound);
    if (!(wmax > limit) || !(wmax < kInf)) return 1.0;
    int e = 0;
    std::frexp(wmax / limit, &e);  // wmax / limit < 2^e
    return std::ldexp(1.0, e);
}

// R of Note [large upstream gradients] for a log-space row with log S = log_sum,
// from its largest log_sum - y over live entries (ymax), as the row's scale
// treats it.
inline double log_space_rel_bound(double ymax) {
    return ymax > kScaleAbove ? 1.0 : max_d(ymax, 1.0);
}

// Note [large upstream gradients] for a block in columns (x, y and gb, nb rows
// of k): scales each row of gb that needs it and writes every row's factor 2^E
// to `factor`; returns false, with factor unwritten, when no row needs one.
inline bool scale_large_gradient_columns(bool simplex, int64_t k, int64_t nb,
                                         const double* x, const double* y, double* gb,
                                         double* factor) {
    // The largest |w| of each row, down the columns.
    for (int64_t i = 0; i < nb; ++i) factor[i] = 0.0;
    for (int64_t j = 0; j < k; ++j) {
        const double* gj = gb + j * nb;
        for (int64_t i = 0; i < nb; ++i)
            factor[i] = max_d(factor[i], gj[i] < 0.0 ? -gj[i] : gj[i]);
    }
    double most = 0.0;
    for (int64_t i = 0; i < nb; ++i) most = max_d(most, factor[i]);
    if (!(most > large_gradient_limit(k, simplex ? kSimplexRelBound : kScaleAbove)))
        return false;

    // Rare: each row's own bound, from its sum and logs as the gradient pass
    // will see them.
    for (int64_t i = 0; i < nb; ++i) {
        double rel_bound = kSimplexRelBound;
        if (!simplex) {
            double sum = 0.0;
            for (int64_t j = 0; j < k; ++j) sum = sum + x[j * nb + i];
            const double log_sum = log_fused_d(sum);
            double ymax = 0.0;
            for (int64_t j = 0; j < k; ++j) {
                const double yj = y[j * nb + i];
                ymax = yj > -kInf ? max_d(ymax, log_sum - yj) : ymax;
            }
            rel_bound = log_space_rel_bound(ymax);
        }
        factor[i] = large_gradient_factor(factor[i], k, rel_bound);
        if (factor[i] != 1.0) {
            const double inv = 1.0 / factor[i];  // a power of two: exact
            for (int64_t j = 0; j < k; ++j) gb[j * nb + i] *= inv;
        }
    }
    return true;
}

// A value given as x (simplex) or as y = log x: the other of the two, flat over
// n elements. On the simplex rsample_vjp reads log x only for the temperature
// gradient; without it (logs false) y is set to 0 instead, which nothing else
// reads there, and the logarithms are not taken.
inline void complete_x_and_log_x(bool simplex, double* x, double* y, int64_t n,
                                 bool logs) {
    if (simplex && !logs) {
        for (int64_t j = 0; j < n; ++j) y[j] = 0.0;
    } else if (simplex) {
        for (int64_t j = 0; j < n; ++j) y[j] = x[j];
        log_inplace(y, n);
    } else {
        for (int64_t j = 0; j < n; ++j) x[j] = y[j];
        exp_inplace(x, n);
    }
}

// A term ds_k (y_k - log S) of rsample_vjp's temperature sum (rel: its scaled
// y_k - log S): 0 where ds_k is, NaN where y_k is -inf (Note [underflow in log
// space]; on the simplex x_k = 0 there, and so is ds_k). No term passes the
// float64 range in the column and block paths, whose rows of large upstream
// gradients are scaled first (Note [large upstream gradients]).
template <class D>
RELAXCAT_ALWAYS_INLINE D temperature_term(D ds, D y, D rel) {
    const D unknown = D{} + std::numeric_limits<double>::quiet_NaN();
    return ds != 0.0 ? (y > -kInf ? ds * rel : unknown) : D{};
}

// Note [dominant sample entry]: near a vertex the gradient of the entry holding
// almost all the mass, x_d (w_d S - <w, x>) / S^2 on the simplex and
// w_d - (x_d / S) sum w in log space, is a difference of two numbers near
// w_d that cancel: at x = (1 - 5e-150, 3e-150, 2e-150) it came out 0 where it
// is 2e-150, and the probs gradient built from it then had the wrong signs.
// With R = sum_{k != d} x_k and Q = sum_{k != d} w_k x_k (simplex) or
// sum_{k != d, live} w_k (log space) the same quantities are exactly
// x_d (w_d R - Q) / S^2 and (w_d R - x_d Q) / S, in which nothing cancels. On
// the simplex every other entry has the same trouble where w_k is near w_d
// (a third review: w = (1, 1, 0) gave 0 for the second entry, whose gradient
// is 8.6e-300), and w_k S - <w, x> = (w_k - w_d) x_d + (w_k R - Q) exactly,
// which keeps it too (and is the form above for k = d). A row has at most one
// entry above 1/2 when its value is on the simplex; the kernels count them,
// sum R, Q, w_d and x_d over the entries at or below (R, Q) and above (w_d,
// x_d) 1/2, and in a row that has exactly one use these forms: for every
// entry on the simplex, for the one above 1/2 in log space (the others are w_k
// less a tiny share of sum w there, with nothing to cancel).
template <class D>
RELAXCAT_ALWAYS_INLINE D dominant_ds_lanes(bool simplex, D x, D w, D inv_sum, D rest,
                                           D q, D wd, D xd) {
    return simplex
               ? (x > 0.0 ? x * ((w - wd) * xd + (w * rest - q)) * (inv_sum * inv_sum)
                          : D{})
               : (w * rest - x * q) * inv_sum;
}

// For a row of 2 kSlots or more (contiguous x and w), in one pass: <w, x>
// (simplex) or the sum of w (log space; masked categories hold w = 0 there,
// Note [underflow in log space]), whether exactly one entry is
// above 1/2, R and Q over the others, w_d and x_d, and sum x, each summed in
// the order of Note [row reductions].
struct RestSums {
    double wsum = 0.0;  // <w, x> or the sum of w
    bool one = false;
    double rest = 0.0, q = 0.0, wd = 0.0, xd = 0.0;
    double xsum = 0.0;  // sum x
};

// The seven sums of RestSums, in its order (the count of entries above 1/2
// second), over k elements.
template <class X, class W>
std::array<double, kRestSums> rest_sum_terms(bool simplex, int64_t k, const X* x,
                                             const W* w) {
    return sum_terms<kRestSums>(k, [=](auto d, int64_t j) {
        using D = decltype(d);
        const D xv = stream_lanes<D>(x + j);
        const D wv = stream_lanes<D>(w + j);
        const D qv = simplex ? (xv > 0.0 ? wv * xv : D{}) : wv;
        const auto low = xv <= 0.5;
        return std::array<D, kRestSums>{qv,
                                        low ? D{} : D{} + 1.0,
                                        low ? xv : D{},
                                        low ? qv : D{},
                                        low ? D{} : wv,
                                        low ? D{} : xv,
                                        xv};
    });
}

inline RestSums rest_sums_of(const std::array<double, kRestSums>& sums) {
    RestSums r;
    r.wsum = sums[0];
    r.one = sums[1] == 1.0;
    r.rest = sums[2];
    r.q = sums[3];
    r.wd = sums[4];
    r.xd = sums[5];
    r.xsum = sums[6];
    return r;
}

template <class X, class W>
RestSums rest_sums(bool simplex, int64_t k, const X* x, const W* w) {
    return rest_sums_of(rest_sum_terms(simplex, k, x, w));
}

// Note [row sums in registers]: rsample_vjp's passes down the columns of a
// block keep each row's seven sums, and its per-row factors, in registers
// across the K columns, a group of rows (one vector's lanes) at a time, where a
// flat pass per column had loaded and stored every sum once per element. Each
// row's terms are still added in element order, so the bits are the same.
// From Python, float32, validation off, one thread, AVX-512, in ns per
// element: (2^20, 8) went from 6.1-6.5 to 5.2-5.6, (2^20, 3) from 6.2-6.4 to
// 5.1-5.5, and (1024, 10) from 8.7-9.2 to 7.3-8.0. log_prob's passes down the
// columns (log_prob_block_columns) do the same, each pass still a pass of its
// own (Note [rows as columns] says why not all steps at once): log_prob at
// (2^20, 8) 4.6-4.7 -> 3.9-4.5, (2^20, 3) 5.4-5.7 -> 5.0-5.2, (2^21, 2)
// 5.8-6.1 -> 5.6-5.8, and log_prob_vjp 2-5% faster (three alternating runs
// each, one pinned core). rsample's maxima and sums too
// (rsample_block_columns): the C++ class, float32, one thread, medians of 300
// calls in L2, K = 3 4.50-4.55 -> 4.41-4.43 ns per element, K = 8 3.82-3.87
// -> 3.69-3.71, K = 16 3.89-3.93 -> 3.79.

// The per-row sums of rsample_vjp over a block in columns, as RestSums holds
// them for a long row: sum x, <w, x> (simplex) or the sum of w (log space; the
// other of the two is 0), the count of entries above 1/2, R, Q, w_d and x_d
// (Note [dominant sample entry]).
struct VjpColumnSums {
    double *sum, *wx, *wsum, *n_dom, *rest, *rest_q, *dom_w, *dom_x;
};

// What the gradient pass reads per row besides the sums (T, 1 / T, 1 / sum x,
// log sum x, the scale of the temperature sum and its reciprocal), and the
// temperature sum it writes (acc).
struct VjpColumnFactors {
    double *t, *inv_t, *inv_sum, *lsum, *scale, *inv_scale, *acc;
};

template <class K>
void rsample_vjp_column_sums(bool simplex, K k, int64_t nb, const double* x,
                             const double* gb, VjpColumnSums r) {
    for_lanes(nb, true, [&](auto d, int64_t i) {
        using D = decltype(d);
        D s{}, q{}, nd{}, re{}, rq{}, dw{}, dx{};
        for (int64_t j = 0; j < k; ++j) {
            const D xv = load_lanes<D>(x + j * nb + i);
            const D gv = load_lanes<D>(gb + j * nb + i);
            s = s + xv;
            const auto low = xv <= 0.5;
            const D qv = simplex ? (xv > 0.0 ? gv * xv : D{}) : gv;
            q = q + qv;
            nd = nd + (low ? D{} : D{} + 1.0);
            re = re + (low ? xv : D{});
            rq = rq + (low ? qv : D{});
            dw = dw + (low ? D{} : gv);
            dx = dx + (low ? D{} : xv);
        }
        store_lanes(r.sum + i, s);
        store_lanes(r.wx + i, simplex ? q : D{});
        store_lanes(r.wsum + i, simplex ? D{} : q);
        store_lanes(r.n_dom + i, nd);
        store_lanes(r.rest + i, re);
        store_lanes(r.rest_q + i, rq);
        store_lanes(r.dom_w + i, dw);
        store_lanes(r.dom_x + i, dx);
    });
}

// ds, its share of the temperature sum and d/da = ds / T (in place of w) for a
// block in columns. Vectors only when 1 / T is finite in every row: both sides
// of each select are computed, and the division by T is then never needed.
template <class K>
void rsample_vjp_column_grads(bool simplex, bool all_finite, K k, int64_t nb,
                              const double* x, const double* y, double* gb,
                              VjpColumnSums r, VjpColumnFactors f) {
    for_lanes(nb, all_finite, [&](auto d, int64_t i) {
        using D = decltype(d);
        const D is = load_lanes<D>(f.inv_sum + i);
        const D sum = load_lanes<D>(r.sum + i);
        const D wx = load_lanes<D>(r.wx + i);
        const D wsum = load_lanes<D>(r.wsum + i);
        const auto one = load_lanes<D>(r.n_dom + i) == 1.0;
        const D rest = load_lanes<D>(r.rest + i);
        const D rest_q = load_lanes<D>(r.rest_q + i);
        const D dom_w = load_lanes<D>(r.dom_w + i);
        const D dom_x = load_lanes<D>(r.dom_x + i);
        const D ls = load_lanes<D>(f.lsum + i);
        const auto unscaled = load_lanes<D>(f.scale + i) == 1.0;
        const D inv_scale = load_lanes<D>(f.inv_scale + i);
        const D it = load_lanes<D>(f.inv_t + i);
        const D t = load_lanes<D>(f.t + i);
        D acc{};
        for (int64_t j = 0; j < k; ++j) {
            const D xv = load_lanes<D>(x + j * nb + i);
            const D yv = load_lanes<D>(y + j * nb + i);
            double* gj = gb + j * nb;
            const D gv = load_lanes<D>(gj + i);
            const D usual = simplex
                                ? (xv > 0.0 ? xv * (gv * sum - wx) * (is * is) : D{})
                                : (xv != 0.0 ? gv - (xv * is) * wsum : gv);
            // Note [dominant sample entry].
            const D stable =
                dominant_ds_lanes(simplex, xv, gv, is, rest, rest_q, dom_w, dom_x);
            const D ds = simplex ? (one ? stable : usual)
                                 : ((one & (xv > 0.5)) ? stable : usual);
            const D rel = unscaled ? yv - ls : (yv - ls) * inv_scale;
            acc = acc + temperature_term(ds, yv, rel);
            if (all_finite)
                store_lanes(gj + i, ds * it);
            else
                store_lanes(gj + i, it < kInf ? ds * it : ds / t);
        }
        store_lanes(f.acc + i, acc);
    });
}

// rsample_vjp_rows for one block of short rows in columns (Note [rows as
// columns]): the same operations in the same order per row, so the same bits.
// x, y and gb are element buffers of the block; rows points to sixteen
// per-row buffers. With `scan`, rows of large upstream gradients are scaled
// first (Note [large upstream gradients]); returns whether some row's
// temperature sum came out past the range.
template <class Real, class Walker>
bool rsample_vjp_columns_pass(const RsampleVjpArgs<Real>& a, Walker& walk, int64_t rb,
                              int64_t nb, double* x, double* y, double* gb,
                              double* rows, bool scan) {
    const int64_t k = a.shape.k;
    const int64_t n = nb * k;
    const bool simplex = a.space == Space::simplex;
    const bool masks = a.logits.data != nullptr;
    double* const lc = simplex ? y : x;  // the logits, until that buffer is needed
    double* const v = simplex ? x : y;   // the value as given
    double* const t = rows;              // per row: T, 1 / T, sum x, 1 / sum x,
    double* const inv_t = t + row_buffer_size(k);
    double* const sum = inv_t + row_buffer_size(k);
    double* const inv_sum = sum + row_buffer_size(k);
    double* const lsum = inv_sum + row_buffer_size(k);  // log sum x, <w, x>,
    double* const wx = lsum + row_buffer_size(k);
    double* const wsum = wx + row_buffer_size(k);          // the sum of w,
    double* const scale = wsum + row_buffer_size(k);       // the scale of the T sum and
    double* const inv_scale = scale + row_buffer_size(k);  // its reciprocal,
    double* const acc = inv_scale + row_buffer_size(k);    // and that sum;
    double* const n_dom = acc + row_buffer_size(k);        // Note [dominant sample
    double* const rest = n_dom + row_buffer_size(k);       // entry]: the count, R
    double* const rest_q = rest + row_buffer_size(k);      // Q, w_d and x_d.
    double* const dom_w = rest_q + row_buffer_size(k);
    double* const dom_x = dom_w + row_buffer_size(k);
    double* const factor = dom_x + row_buffer_size(k);  // Note [large upstream
                                                        // gradients]
    block_per_row(a.temperature, a.shape, walk, 2, nb, t);
    block_to_columns(a.value, a.shape, walk, 0, rb, nb, v);
    block_to_columns(a.grad, a.shape, walk, 1, rb, nb, gb);
    if (masks) block_to_columns(a.logits, a.shape, walk, 3, rb, nb, lc);
    skip_block(walk,
               !dense_rows(a.value, a.shape) || !dense_rows(a.grad, a.shape) ||
                   (masks && !dense_rows(a.logits, a.shape)) ||
                   !same_for_all_rows(a.temperature, a.shape),
               nb);
    if (masks) {  // Note [underflow in log space]
        for (int64_t j = 0; j < n; ++j) {
            const bool masked = lc[j] == -kInf;
            v[j] = masked ? (simplex ? 0.0 : -kInf) : v[j];
            gb[j] = masked && !simplex ? 0.0 : gb[j];
        }
    }
    complete_x_and_log_x(simplex, x, y, n, a.grad_temperature != nullptr);
    const bool scaled =
        scan && scale_large_gradient_columns(simplex, k, nb, x, y, gb, factor);

    // The row sums, in element order (Note [row sums in registers]).
    with_short_k(k, [&](auto kk) {
        rsample_vjp_column_sums(simplex, kk, nb, x, gb,
                                {sum, wx, wsum, n_dom, rest, rest_q, dom_w, dom_x});
    });
    for (int64_t i = 0; i < nb; ++i) {
        lsum[i] = sum[i];
        inv_sum[i] = 1.0 / sum[i];
    }
    log_inplace(lsum, nb);
    const bool all_finite = inverse_temperatures(t, nb, inv_t);
    // On the simplex log sum x - y stays below 1500 (x is at least the smallest
    // subnormal), so the scale is 1 without a pass.
    for (int64_t i = 0; i < nb; ++i)
        scale[i] = 0.0;  // first the largest live log_sum - y
    for (int64_t j = 0; j < k && !simplex; ++j) {
        const double* yj = y + j * nb;
        for (int64_t i = 0; i < nb; ++i)
            scale[i] = yj[i] > -kInf ? max_d(scale[i], lsum[i] - yj[i]) : scale[i];
    }
    for (int64_t i = 0; i < nb; ++i) {
        scale[i] = scale[i] > kScaleAbove ? scale[i] : 1.0;
        inv_scale[i] = 1.0 / scale[i];
    }

    // ds, the temperature sum, and d/da = ds / T in place of w.
    with_short_k(k, [&](auto kk) {
        rsample_vjp_column_grads(simplex, all_finite, kk, nb, x, y, gb,
                                 {sum, wx, wsum, n_dom, rest, rest_q, dom_w, dom_x},
                                 {t, inv_t, inv_sum, lsum, scale, inv_scale, acc});
    });
    if (a.grad_temperature != nullptr)
        for (int64_t i = 0; i < nb; ++i)
            a.grad_temperature[rb + i] = scaled
                                             ? (-(acc[i] / t[i]) * scale[i]) * factor[i]
                                             : (-(acc[i] / t[i]) * scale[i]);
    with_short_k(k, [&](auto kk) {
        const GradOut<Real> out{a.grad_logits, a.grad_logits_wide};
        if (scaled)
            out.from_columns(gb, nb, kk, rb,
                             [factor](double c, int64_t i) { return c * factor[i]; });
        else
            out.from_columns(gb, nb, kk, rb, [](double c, int64_t) { return c; });
    });
    bool past = false;
    for (int64_t i = 0; i < nb; ++i) past |= !std::isfinite(acc[i]);
    return past;
}

// The vector-Jacobian product of rsample, from the sample alone:
//   d/da_k = x_k (w_k - <w, x>) / T,
//   d/dT   = -(1/T) sum_k x_k (w_k - <w, x>) log x_k   (a term is 0 where x_k = 0).
// Note [renormalised sample]: the stored sample sums to 1 only within rounding,
// and near a vertex w_k - <w, x> cancels, so the error of that rounding would be
// amplified by 1/T. The kernel therefore uses x / S with S = sum x, and forms
// w_k S - <w, x> in double: for float32 data the products are exact and the
// result is the exact gradient at the renormalised float32 sample.
// Note [long rows]: a row of kBlockElements or more is a block of its own, and
// its element buffers of doubles are its working set; at 128000 categories
// three of them (3 MiB) no longer fit the per-core L2 cache (2 MiB here), and
// every pass over the row goes out to L3 (log_prob, rsample_vjp and rsample
// took 30-80% longer per element than at 256 categories). rsample's row path
// (every row above kColumnMaxK) therefore keeps one element buffer, and
// rsample_vjp's on the simplex (rows of kRowPathMinK or more, where it also
// measured faster) keeps none for contiguous inputs, one for each strided or
// masked one: each step is fused into the pass that reduces it, contiguous
// inputs are read where they are, and log x is formed where it is used. The
// operations and their order are those of the unfused passes, so the bits are
// the same. log_prob and its gradients still hold three
// buffers per row, and so does rsample_vjp in log space; log_prob's rows of
// kOnePassMinK or more make three passes before their gradients instead of
// eleven: one loads the logits and logs and learns the maxima and counts
// (long_row_facts), one forms z (ordinary_long_row), and one shifts z by its
// maximum and takes the exponentials (K = 128000: 6.3 to 4.8 ns per float32
// element, with validation off). Rows of 2 kSlots to kOnePassMinK - 1 load and
// take their logs flat first, and so make one pass more.

// Elements j0 .. j0 + n - 1 of row r of rsample_vjp on the simplex, given the
// row's sums (dom): writes their logits gradient and returns their share of the
// temperature sum, reduced as a row of n elements (Note [row reductions]).
// With Scaled (Note [large upstream gradients]), g is the row's upstream
// gradient divided by `factor`, and the logits gradient is multiplied by it.
template <bool Scaled = false, class Real, class X, class W>
double simplex_vjp_part(const RsampleVjpArgs<Real>& a, const X* x, const W* g,
                        int64_t r, int64_t j0, int64_t n, const RestSums& dom, double t,
                        double inv_t, double factor = 1.0) {
    const int64_t k = a.shape.k;
    const GradOut<Real> out{a.grad_logits, a.grad_logits_wide};
    const bool write = static_cast<bool>(out);
    const double sum = dom.xsum;
    const double wx = dom.wsum;
    const double log_sum = log_fused_d(sum);
    const double inv_sum = 1.0 / sum;
    const bool finite_inv_t = inv_t < kInf;
    const bool want_t = a.grad_temperature != nullptr;
    // On the simplex log_sum - log x stays below 1500 (x is at least the
    // smallest subnormal), so the scale of the log-space rows is 1 here.
    return reduce_terms(n, 0.0, kPlus, [&](auto d, int64_t i) {
        using D = decltype(d);
        const int64_t j = j0 + i;
        const D xv = load_lanes<D>(x + j);
        const D wv = load_lanes<D>(g + j);
        const D usual = xv > 0.0 ? xv * (wv * sum - wx) * (inv_sum * inv_sum) : D{};
        // Note [dominant sample entry].
        const D ds = !dom.one ? usual
                              : dominant_ds_lanes(
                                    true, xv, wv, Lanes<D>::splat(inv_sum),
                                    Lanes<D>::splat(dom.rest), Lanes<D>::splat(dom.q),
                                    Lanes<D>::splat(dom.wd), Lanes<D>::splat(dom.xd));
        // log x only for the temperature gradient (complete_x_and_log_x).
        const D rel = want_t ? log_lanes<true>(xv) - log_sum : D{};
        const D dv = finite_inv_t ? ds * inv_t : ds / t;
        if (write) out.set_lanes(r, k, j, Scaled ? dv * factor : dv);
        return ds != 0.0 ? ds * rel : D{};
    });
}

// The sums of RestSums of a row of more than kChunkElements elements, from the
// chunks' own (each a row of its own, Note [row reductions]) added in order,
// from the first: part holds kRestSums per chunk.
inline RestSums combine_chunk_sums(const double* part, int64_t chunks) {
    std::array<double, kRestSums> tot;
    for (int m = 0; m < kRestSums; ++m) tot[m] = part[m];
    for (int64_t c = 1; c < chunks; ++c)
        for (int m = 0; m < kRestSums; ++m) tot[m] = tot[m] + part[c * kRestSums + m];
    return rest_sums_of(tot);
}

// rsample_vjp_rows for one row of kRowPathMinK categories or more on the
// simplex (Note [long rows]), in two passes that read the value x (masked) and
// the upstream gradient g where they are, as Reals in the caller's contiguous
// row or as doubles in an element buffer (the same doubles either way), and
// write the logits gradient straight to the output: no element buffer and no
// pass of its own for log x, sum x or the output. The operations and their
// order are those of the block passes this replaced, so the bits are too. A
// row of more than kChunkElements elements is reduced chunk by chunk (Note
// [split rows]; `part` holds kRestSums doubles per chunk), as
// rsample_vjp_row_step reduces it when it is spread over threads. Returns the
// temperature sum, which a row of large upstream gradients may take past the
// range (redo_large_simplex_row). With Scaled, as simplex_vjp_part.
template <bool Scaled = false, class Real, class X, class W>
double simplex_row_sum(const RsampleVjpArgs<Real>& a, const X* x, const W* g, int64_t r,
                       double t, double inv_t, double* part, double factor = 1.0) {
    const int64_t k = a.shape.k;
    if (k <= kChunkElements) {
        // sum x with the sums of Note [dominant sample entry], in one pass.
        const RestSums dom = rest_sums(true, k, x, g);
        return simplex_vjp_part<Scaled>(a, x, g, r, 0, k, dom, t, inv_t, factor);
    }
    const int64_t chunks = (k + kChunkElements - 1) / kChunkElements;
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t j0 = c * kChunkElements;
        const int64_t n = k - j0 < kChunkElements ? k - j0 : kChunkElements;
        const auto s = rest_sum_terms(true, n, x + j0, g + j0);
        for (int m = 0; m < kRestSums; ++m) part[c * kRestSums + m] = s[m];
    }
    const RestSums dom = combine_chunk_sums(part, chunks);
    double acc = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t j0 = c * kChunkElements;
        const int64_t n = k - j0 < kChunkElements ? k - j0 : kChunkElements;
        const double share =
            simplex_vjp_part<Scaled>(a, x, g, r, j0, n, dom, t, inv_t, factor);
        acc = c == 0 ? share : split_row_fold(2, acc, share);
    }
    return acc;
}

// Note [large upstream gradients] for a simplex row of kRowPathMinK or more,
// whose temperature sum `acc` came out past the range, a NaN or an infinity
// (without a temperature gradient the terms are 0, and a NaN, 0 * inf, marks
// an overflowed ds): where the row's largest |g| is beyond the bound, the row
// is computed again from g / 2^E (into `scaled`, k doubles, which may be g
// itself), its logits gradient overwritten, and 2^E put in `factor`. Returns
// the row's temperature sum (of the scaled row where it was redone). The split
// rows of Note [split rows] call it from their last step, once every chunk is
// written, so that a row gets the same bits on any thread count.
template <class Real, class X, class W>
double redo_large_simplex_row(const RsampleVjpArgs<Real>& a, const X* x, const W* g,
                              int64_t r, double t, double inv_t, double acc,
                              double* part, double* scaled, double& factor) {
    const int64_t k = a.shape.k;
    factor = 1.0;
    if (std::isfinite(acc)) return acc;
    double wmax = 0.0;
    for (int64_t j = 0; j < k; ++j) {
        const double w = static_cast<double>(g[j]);
        wmax = max_d(wmax, w < 0.0 ? -w : w);
    }
    factor = large_gradient_factor(wmax, k, kSimplexRelBound);
    if (factor == 1.0) return acc;
    const double inv = 1.0 / factor;  // a power of two: exact
    for (int64_t j = 0; j < k; ++j) scaled[j] = static_cast<double>(g[j]) * inv;
    const double* const sg = scaled;
    return simplex_row_sum<true>(a, x, sg, r, t, inv_t, part, factor);
}

template <class Real, class X, class W>
void rsample_vjp_simplex_row(const RsampleVjpArgs<Real>& a, const X* x, const W* g,
                             int64_t r, double t, double inv_t, double* part,
                             double* scaled) {
    double factor = 1.0;
    const double acc = redo_large_simplex_row(
        a, x, g, r, t, inv_t, simplex_row_sum(a, x, g, r, t, inv_t, part), part, scaled,
        factor);
    if (a.grad_temperature != nullptr) a.grad_temperature[r] = -(acc / t) * factor;
}

// The value and upstream gradient of a simplex row for rsample_vjp, elements
// j0 .. j0 + n - 1: widened into the element buffers x and g (indexed by
// element) where they are not read in place, a strided value or one whose
// logits lg come for their masks (a masked category read as 0, Note [underflow
// in log space]) and a strided gradient; then f(x, g) on the pointers to read,
// Reals of the caller's row or doubles of a buffer (the same doubles either
// way).
template <class Real, class F>
auto with_simplex_vjp_inputs(const RsampleVjpArgs<Real>& a, const Real* vp,
                             const Real* gp, const Real* lg, int64_t j0, int64_t n,
                             double* x, double* g, F f) {
    const int64_t vs = a.value.kstride, gs = a.grad.kstride, ls = a.logits.kstride;
    const bool buffer_x = vs != 1 || lg != nullptr;
    if (buffer_x) {
        load_row(vp + j0 * vs, vs, n, x + j0);
        if (lg != nullptr)
            for (int64_t j = j0; j < j0 + n; ++j)
                x[j] = static_cast<double>(lg[j * ls]) == -kInf ? 0.0 : x[j];
    }
    if (gs != 1) load_row(gp + j0 * gs, gs, n, g + j0);
    const auto with_x = [&](const auto* xr) {
        return gs == 1 ? f(xr, gp) : f(xr, static_cast<const double*>(g));
    };
    return buffer_x ? with_x(static_cast<const double*>(x)) : with_x(vp);
}

// Note [checking the upstream gradient]: a NaN or an infinity in rsample_vjp's
// grad has no meaningful gradient (it would spread NaN over its row), so the
// front ends refuse it. Checked in NumPy before the call, the check took two
// passes of its own over the array (a minimum and a maximum, about 10% of the
// call at (2^20, 8), float32). The kernel instead looks at the rows of each
// task just before it works on them, while they are on their way into the
// cache anyway, and sets a.grad_not_finite; the front end then names the
// first bad entry and raises. The gradients of such a call are discarded.
// Python's methods use it; the C++ classes still check grad in a pass of their
// own before the call (detail::any_not_finite of a view, distribution.hpp),
// because the kernel writes into the caller's output views, which an error
// must leave as they were. From Python, float32, validation off, one thread: (2^20, 8)
// 6.2 -> 5.8 ns per element, (4096, 256) 3.3 -> 3.1 (three alternating runs).

// Whether any of n entries p[0], p[stride], ... is NaN or infinite; without
// branches, so that the contiguous loop vectorises.
template <class T>
bool any_not_finite(const T* p, int64_t stride, int64_t n) {
    const T largest = std::numeric_limits<T>::max();
    int64_t c = 0;
    if (stride == 1) {
        for (int64_t j = 0; j < n; ++j) c += !(std::abs(p[j]) <= largest);
    } else {
        for (int64_t j = 0; j < n; ++j) c += !(std::abs(p[j * stride]) <= largest);
    }
    return c != 0;
}

// Note [checking the upstream gradient] for rows r0 .. r1 - 1; walk is at r0.
template <class Real>
void check_grad_rows(const RsampleVjpArgs<Real>& a, int64_t r0, int64_t r1,
                     RowWalker<4> walk) {
    if (a.grad_not_finite == nullptr) return;
    const int64_t k = a.shape.k;
    bool bad = false;
    if (dense_rows(a.grad, a.shape)) {
        bad = any_not_finite(a.grad.data + r0 * k, 1, (r1 - r0) * k);
    } else {
        for (int64_t r = r0; r < r1 && !bad; ++r, walk.advance())
            bad = any_not_finite(a.grad.data + walk.offset[1], a.grad.kstride, k);
    }
    if (bad) a.grad_not_finite->store(true, std::memory_order_relaxed);
}

// Note [split rows] for rsample_vjp on the simplex: a row of more than
// kChunkElements categories, reduced chunk by chunk on any path
// (rsample_vjp_simplex_row), can be spread over threads in three steps, each
// over one chunk (elements j0 .. j0 + n - 1 of row r): 0 widens the chunk of
// x (masked) and g into `shared` where the row path would (rsample_vjp_rows)
// and puts the chunk's seven sums in its slot there; 1 combines every chunk's
// sums in order (each chunk alike, from the same numbers), writes the chunk's
// gradient and returns its share of the temperature sum; 2 lets the first
// chunk write the temperature gradient from facts[1], the shares combined in
// order (split_row_combine). `shared` holds rsample_vjp_split_scratch(k)
// doubles: x, g, then kRestSums per chunk.

template <class Real>
double rsample_vjp_row_step(const RsampleVjpArgs<Real>& a, int64_t r, int step,
                            int64_t j0, int64_t n, const double* facts,
                            double* shared) {
    const int64_t k = a.shape.k;
    const int64_t* const strides[4] = {a.value.stride, a.grad.stride,
                                       a.temperature.stride, a.logits.stride};
    const RowWalker<4> walk(a.shape, r, strides);
    const double t = static_cast<double>(a.temperature.data[walk.offset[2]]);
    const Real* const vp = a.value.data + walk.offset[0];
    const Real* const gp = a.grad.data + walk.offset[1];
    const Real* const lg =
        a.logits.data != nullptr ? a.logits.data + walk.offset[3] : nullptr;
    double* const xb = shared;
    double* const gb = shared + k;
    double* const part = shared + 2 * k;
    const int64_t chunks = (k + kChunkElements - 1) / kChunkElements;
    const int64_t vs = a.value.kstride, gs = a.grad.kstride;
    if (step == 2) {
        if (j0 != 0) return 0.0;
        // Note [large upstream gradients], from the inputs step 1 read.
        double factor = 1.0;
        double acc = facts[1];
        const auto redo = [&](const auto* x) {
            const double inv_t = 1.0 / t;
            return gs == 1
                       ? redo_large_simplex_row(a, x, gp, r, t, inv_t, acc, part, gb,
                                                factor)
                       : redo_large_simplex_row(a, x, static_cast<const double*>(gb), r,
                                                t, inv_t, acc, part, gb, factor);
        };
        acc =
            vs != 1 || lg != nullptr ? redo(static_cast<const double*>(xb)) : redo(vp);
        if (a.grad_temperature != nullptr) a.grad_temperature[r] = -(acc / t) * factor;
        return 0.0;
    }
    if (step == 0 && a.grad_not_finite != nullptr &&
        any_not_finite(gp + j0 * a.grad.kstride, a.grad.kstride, n))
        a.grad_not_finite->store(true, std::memory_order_relaxed);
    if (step == 0)
        return with_simplex_vjp_inputs(
            a, vp, gp, lg, j0, n, xb, gb, [&](const auto* x, const auto* g) {
                const auto s = rest_sum_terms(true, n, x + j0, g + j0);
                double* const mine = part + (j0 / kChunkElements) * kRestSums;
                for (int m = 0; m < kRestSums; ++m) mine[m] = s[m];
                return 0.0;
            });
    // Step 0 widened this chunk where needed: read the buffers, widen nothing.
    const RestSums dom = combine_chunk_sums(part, chunks);
    const auto grad = [&](const auto* x, const auto* g) {
        return simplex_vjp_part(a, x, g, r, j0, n, dom, t, 1.0 / t);
    };
    const auto with_x = [&](const auto* x) {
        return gs == 1 ? grad(x, gp) : grad(x, static_cast<const double*>(gb));
    };
    return vs != 1 || lg != nullptr ? with_x(static_cast<const double*>(xb))
                                    : with_x(vp);
}

// Steps 1 to 3 of rsample_vjp_rows for a block of rows longer than kColumnMaxK
// (walk at its first row, and past it on return); `scan` and the result as for
// rsample_vjp_columns_pass.
template <class Real>
bool rsample_vjp_block_pass(const RsampleVjpArgs<Real>& a, RowWalker<4>& walk,
                            int64_t rb, int64_t nb, double* x, double* y, double* gb,
                            double* row_sum, InverseTemperature& inverse, bool scan) {
    const int64_t k = a.shape.k;
    const int64_t n = nb * k;
    const bool simplex = a.space == Space::simplex;
    const int64_t vs = a.value.kstride, gs = a.grad.kstride, ls = a.logits.kstride;
    double* const row_log_sum = row_sum + row_buffer_size(k);
    const RowWalker<4> block_start = walk;
    bool past = false;

    // 1. x and log x for the whole block, the transcendental half flat.
    for (int64_t i = 0; i < nb; ++i, walk.advance()) {
        double* v = simplex ? x + i * k : y + i * k;
        load_row(a.value.data + walk.offset[0], vs, k, v);
        load_row(a.grad.data + walk.offset[1], gs, k, gb + i * k);
        if (a.logits.data != nullptr) {  // Note [underflow in log space]
            const Real* lg = a.logits.data + walk.offset[3];
            double* gi = gb + i * k;
            for (int64_t j = 0; j < k; ++j) {
                const bool masked = static_cast<double>(lg[j * ls]) == -kInf;
                v[j] = masked ? (simplex ? 0.0 : -kInf) : v[j];
                gi[j] = masked && !simplex ? 0.0 : gi[j];
            }
        }
    }
    complete_x_and_log_x(simplex, x, y, n, a.grad_temperature != nullptr);

    // 2. The row sums of x, and their logs in one flat pass.
    for (int64_t i = 0; i < nb; ++i) {
        const double* xi = x + i * k;
        const double sum = reduce_terms(k, 0.0, kPlus, [xi](auto d, int64_t j) {
            return load_lanes<decltype(d)>(xi + j);
        });
        row_sum[i] = sum;
        row_log_sum[i] = sum;
    }
    log_inplace(row_log_sum, nb);

    // 3. Per row; see Note [renormalised sample].
    walk = block_start;
    for (int64_t i = 0; i < nb; ++i, walk.advance()) {
        const int64_t r = rb + i;
        double* gw = gb + i * k;
        const double t = static_cast<double>(a.temperature.data[walk.offset[2]]);
        const double inv_t = inverse(t);
        const double* xi = x + i * k;
        const double* yi = y + i * k;
        const double sum = row_sum[i];
        const double log_sum = row_log_sum[i];
        const double inv_sum = 1.0 / sum;

        // In log space y may lie far below any double's log, where
        // ds_k (y_k - log_sum) overflows with either sign (inf - inf); the
        // temperature sum is then scaled by its largest log, so that only
        // its final product can overflow. Ordinary rows keep scale 1, and so
        // does every row on the simplex (log_sum - y stays below 1500).
        const double ymax =
            simplex ? 0.0
                    : reduce_terms(k, 0.0, kMax, [yi, log_sum](auto d, int64_t j) {
                          using D = decltype(d);
                          const D yv = load_lanes<D>(yi + j);
                          return yv > -kInf ? log_sum - yv : D{};
                      });
        const double scale = ymax > kScaleAbove ? ymax : 1.0;

        // Note [large upstream gradients].
        const double wmax =
            !scan ? 0.0 : reduce_terms(k, 0.0, kMax, [gw](auto d, int64_t j) {
                using D = decltype(d);
                const D wv = load_lanes<D>(gw + j);
                return wv < 0.0 ? -wv : wv;
            });
        const double factor = large_gradient_factor(
            wmax, k, simplex ? kSimplexRelBound : log_space_rel_bound(ymax));
        if (factor != 1.0)
            for (int64_t j = 0; j < k; ++j) gw[j] *= 1.0 / factor;

        // The sums and the maximum of Note [renormalised sample], each in the
        // order of reduce_terms.
        // <w, x> serves the simplex, the sum of w log space.
        // With the sums of Note [dominant sample entry].
        const RestSums dom = rest_sums(simplex, k, xi, gw);
        const double wx = simplex ? dom.wsum : 0.0;
        const double wsum = simplex ? 0.0 : dom.wsum;
        // Dividing by a scale of 1 changes nothing, and T only through 1 / T
        // where that is finite.
        const double inv_scale = 1.0 / scale;
        const bool finite_inv_t = inv_t < kInf;
        // The gradient with respect to s_k = (a_k + g_k) / T, ds, and the
        // temperature sum; d/da = ds / T replaces the upstream gradient in gw.
        const double acc = reduce_terms(k, 0.0, kPlus, [&](auto d, int64_t j) {
            using D = decltype(d);
            const D xv = load_lanes<D>(xi + j), yv = load_lanes<D>(yi + j);
            const D wv = load_lanes<D>(gw + j);
            const D usual =
                simplex ? (xv > 0.0 ? xv * (wv * sum - wx) * (inv_sum * inv_sum) : D{})
                        : (xv != 0.0 ? wv - (xv * inv_sum) * wsum : wv);
            // Note [dominant sample entry].
            const D stable =
                dominant_ds_lanes(simplex, xv, wv, Lanes<D>::splat(inv_sum),
                                  Lanes<D>::splat(dom.rest), Lanes<D>::splat(dom.q),
                                  Lanes<D>::splat(dom.wd), Lanes<D>::splat(dom.xd));
            const D ds =
                !dom.one ? usual : (simplex ? stable : (xv > 0.5 ? stable : usual));
            const D rel = scale == 1.0 ? yv - log_sum : (yv - log_sum) * inv_scale;
            store_lanes(gw + j, finite_inv_t ? ds * inv_t : ds / t);
            return temperature_term(ds, yv, rel);
        });
        if (factor != 1.0)
            for (int64_t j = 0; j < k; ++j) gw[j] *= factor;
        GradOut<Real>{a.grad_logits, a.grad_logits_wide}.set_row(r, k, gw);
        if (a.grad_temperature != nullptr)
            a.grad_temperature[r] = (-(acc / t) * scale) * factor;
        past |= !std::isfinite(acc);
    }
    return past;
}

template <class Real>
void rsample_vjp_rows(const RsampleVjpArgs<Real>& a, int64_t r0, int64_t r1,
                      double* scratch) {
    const int64_t k = a.shape.k;
    const int64_t cap = block_capacity(k);
    const int64_t* const strides[4] = {a.value.stride, a.grad.stride,
                                       a.temperature.stride, a.logits.stride};
    RowWalker<4> walk(a.shape, r0, strides);
    check_grad_rows(a, r0, r1, walk);
    const bool simplex = a.space == Space::simplex;
    double* x = scratch;
    double* y = scratch + cap;
    double* gb = scratch + 2 * cap;       // the upstream gradient, per element
    double* row_sum = scratch + 3 * cap;  // per row: sum x and its log (2 buffers)
    InverseTemperature inverse;           // 1 / T, row by row

    if (simplex && k >= kRowPathMinK) {
        // Row by row (rsample_vjp_simplex_row): contiguous inputs are read where
        // they are; a strided or masked value and a strided upstream gradient
        // are first widened into element buffers.
        for (int64_t r = r0; r < r1; ++r, walk.advance()) {
            const Real* vp = a.value.data + walk.offset[0];
            const Real* gp = a.grad.data + walk.offset[1];
            const double t = static_cast<double>(a.temperature.data[walk.offset[2]]);
            const double inv_t = inverse(t);
            const Real* lg =
                a.logits.data != nullptr ? a.logits.data + walk.offset[3] : nullptr;
            with_simplex_vjp_inputs(
                a, vp, gp, lg, 0, k, x, gb, [&](const auto* xr, const auto* gr) {
                    rsample_vjp_simplex_row(a, xr, gr, r, t, inv_t, y, gb);
                });
        }
        return;
    }

    for (int64_t rb = r0; rb < r1; rb += rows_per_block(k)) {
        const int64_t nb = r1 - rb < rows_per_block(k) ? r1 - rb : rows_per_block(k);
        // The block in columns (short rows) or row by row; and where a
        // temperature sum came out past the range, the block again from its
        // inputs with its large upstream gradients scaled (Note [large upstream
        // gradients]): ordinary blocks pay only for that look.
        const auto pass = [&](RowWalker<4>& at, bool scan) {
            return k <= kColumnMaxK ? rsample_vjp_columns_pass(a, at, rb, nb, x, y, gb,
                                                               row_sum, scan)
                                    : rsample_vjp_block_pass(a, at, rb, nb, x, y, gb,
                                                             row_sum, inverse, scan);
        };
        RowWalker<4> again = walk;
        if (pass(walk, false)) pass(again, true);
    }
}

// The status of one row from its counts of bad entries and of weight on masked
// categories, and the distance of its sum from 1 (see CheckArgs).
inline uint8_t check_status(int64_t bad, int64_t masked_weight, double off,
                            double tol) {
    if (bad != 0) return 1;
    if (off > tol || off < -tol) return 2;
    if (masked_weight != 0) return 3;
    return 0;
}

// True when some entry of the n contiguous values (with their logits) is not
// finite-and-valid, or carries weight on a masked category: the block then
// needs the row-by-row counts. In chunks of a few cache lines, asking for both
// arrays' memory ahead first (Note [prefetching]): this is the first pass over
// them. Each chunk is a flat loop per space, which vectorises.
template <class Real>
inline bool check_flagged(const Real* v, const Real* lg, int64_t n, bool simplex) {
    const Real inf = std::numeric_limits<Real>::infinity();
    const Real lowest = simplex ? Real(0) : -inf;
    constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(Real));
    constexpr int64_t kChunk = 4 * kLine;
    int flagged = 0;
    for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
        const int64_t i1 = n - i0 < kChunk ? n : i0 + kChunk;
        for (int64_t i = i0; i < i1; i += kLine) {
            prefetch_ahead(v + i);
            prefetch_ahead(lg + i);
        }
        if (simplex) {
            for (int64_t i = i0; i < i1; ++i) {
                const bool ok = (v[i] >= Real(0)) & (v[i] < inf);
                flagged |= (!ok) | ((lg[i] == -inf) & (v[i] > lowest));
            }
        } else {
            for (int64_t i = i0; i < i1; ++i) {
                const bool ok = (v[i] == v[i]) & (v[i] < inf);
                flagged |= (!ok) | ((lg[i] == -inf) & (v[i] > lowest));
            }
        }
    }
    return flagged != 0;
}

// Row sums in element order, in double, of nb dense rows of K entries.
template <class T, class K>
inline void dense_row_sums(const T* p, int64_t nb, K k, double* sum) {
    for (int64_t i = 0; i < nb; ++i) {
        double s = static_cast<double>(p[i * k]);
        for (int64_t j = 1; j < k; ++j) s += static_cast<double>(p[i * k + j]);
        sum[i] = s;
    }
}

// One block of check_rows in columns (Note [rows as columns]): rows rb .. rb +
// nb - 1. The same tests and the same sums in element order as the row loop, so
// the same status; v and lc are element buffers of the block, rows three per-row
// buffers.
template <class Real, class Walker>
void check_block_columns(const CheckArgs<Real>& a, const Walker& walk, int64_t rb,
                         int64_t nb, double* v, double* lc, double* rows) {
    const int64_t k = a.shape.k;
    const bool simplex = a.space == Space::simplex;
    double* const bad = rows;                         // per row: bad entries,
    double* const masked = bad + row_buffer_size(k);  // weight where masked,
    double* const sum = masked + row_buffer_size(k);  // the sum of x.
    block_to_columns(a.value, a.shape, walk, 1, rb, nb, v);
    block_to_columns(a.logits, a.shape, walk, 0, rb, nb, lc);

    const double lowest = simplex ? 0.0 : -kInf;  // what a masked entry must be
    for (int64_t i = 0; i < nb; ++i) bad[i] = masked[i] = 0.0;
    for (int64_t j = 0; j < k; ++j) {
        const double* vj = v + j * nb;
        const double* lj = lc + j * nb;
        for (int64_t i = 0; i < nb; ++i) {
            const bool ok = simplex ? (vj[i] >= 0.0) & (vj[i] < kInf)
                                    : (vj[i] == vj[i]) & (vj[i] < kInf);
            bad[i] += ok ? 0.0 : 1.0;
            masked[i] += (lj[i] == -kInf) & (vj[i] > lowest) ? 1.0 : 0.0;
        }
    }
    if (!simplex) exp_inplace<kExpDegree<Real>>(v, nb * k);
    for (int64_t i = 0; i < nb; ++i) sum[i] = v[i];
    for (int64_t j = 1; j < k; ++j)
        for (int64_t i = 0; i < nb; ++i) sum[i] += v[j * nb + i];
    for (int64_t i = 0; i < nb; ++i)
        a.status[rb + i] =
            check_status(bad[i] != 0.0, masked[i] != 0.0, sum[i] - 1.0, a.tol);
}

// The sum that check_rows tests for one row of k values (stride vs): x, or exp
// of a log-space value, added in element order for short rows (Note [rows as
// columns]) and by fold_terms for longer ones, as check_rows adds them. The C++
// API shows it in the message for a row whose sum is off 1.
template <class Real>
double support_row_sum(const Real* v, int64_t vs, int64_t k, bool simplex) {
    if (k <= kColumnMaxK) {
        double sum = 0.0;
        for (int64_t j = 0; j < k; ++j) {
            const double x = static_cast<double>(v[j * vs]);
            const double e = simplex ? x : exp_d<kExpDegree<Real>>(x);
            sum = j == 0 ? e : sum + e;
        }
        return sum;
    }
    return fold_terms<Fold::plus>(k, [=](auto d, int64_t j) {
        using D = decltype(d);
        const D x = load_strided_lanes<D>(v + j * vs, vs);
        return std::array<D, 1>{simplex ? x : exp_lanes<kExpDegree<Real>>(x)};
    })[0];
}

// The support check of values; see CheckArgs. One pass, no allocation.
template <class Real>
void check_rows(const CheckArgs<Real>& a, int64_t r0, int64_t r1, double* scratch) {
    const int64_t k = a.shape.k;
    const int64_t* const strides[2] = {a.logits.stride, a.value.stride};
    RowWalker<2> walk(a.shape, r0, strides);
    const bool simplex = a.space == Space::simplex;
    const int64_t ks = a.logits.kstride, vs = a.value.kstride;

    // Short rows by blocks: a dense block with no flagged entry needs only its
    // row sums, in one flat pass; any other block is counted down columns.
    if (k <= kColumnMaxK) {
        const bool dense =
            dense_rows(a.logits, a.shape) && dense_rows(a.value, a.shape);
        for (int64_t rb = r0; rb < r1; rb += rows_per_block(k)) {
            const int64_t nb =
                r1 - rb < rows_per_block(k) ? r1 - rb : rows_per_block(k);
            const Real* vb = a.value.data + rb * k;
            if (dense && !check_flagged(vb, a.logits.data + rb * k, nb * k, simplex)) {
                double* const e = scratch;
                double* const sum = scratch + block_capacity(k);
                if (simplex) {
                    with_short_k(k, [&](auto kk) { dense_row_sums(vb, nb, kk, sum); });
                } else {
                    for (int64_t i = 0; i < nb * k; ++i)
                        e[i] = static_cast<double>(vb[i]);
                    exp_inplace<kExpDegree<Real>>(e, nb * k);
                    with_short_k(k, [&](auto kk) { dense_row_sums(e, nb, kk, sum); });
                }
                for (int64_t i = 0; i < nb; ++i)
                    a.status[rb + i] = check_status(0, 0, sum[i] - 1.0, a.tol);
                continue;
            }
            check_block_columns(a, walk, rb, nb, scratch, scratch + block_capacity(k),
                                scratch + 2 * block_capacity(k));
            skip_block(walk, !dense, nb);
        }
        return;
    }

    // Longer rows in one pass each: the counts and the sum of x (exp of the
    // log-space value), summed as slot_sum would. A row whose logits and value
    // are contiguous and whose value fits in kCheckTwoPassBytes is first tested
    // for a flagged entry in its own type (check_flagged); with none, only its
    // sum is formed (support_row_sum), as the third sum of the pass below would
    // form it (fold_terms reduces each term alone), so the status is the same. Counting
    // in double slots made the check of float32 rows of 256 cost 0.38-0.40 ns
    // per element, one thread, against 0.24-0.29 this way; a row of 128000
    // floats, read twice from beyond L2, cost 0.40 against 0.35 in one pass.
    constexpr int64_t kCheckTwoPassBytes = 128 * 1024;
    const bool two_pass = vs == 1 && ks == 1 &&
                          k <= kCheckTwoPassBytes / static_cast<int64_t>(sizeof(Real));
    const double lowest = simplex ? 0.0 : -kInf;  // what a masked entry must be
    for (int64_t r = r0; r < r1; ++r, walk.advance()) {
        const Real* v = a.value.data + walk.offset[1];
        const Real* lg = a.logits.data + walk.offset[0];
        if (two_pass && !check_flagged(v, lg, k, simplex)) {
            a.status[r] =
                check_status(0, 0, support_row_sum(v, 1, k, simplex) - 1.0, a.tol);
            continue;
        }
        // Counts rather than early exits, so that the loop vectorises.
        const auto f =
            fold_terms<Fold::plus, Fold::plus, Fold::plus>(k, [=](auto d, int64_t j) {
                using D = decltype(d);
                const D x = load_strided_lanes<D>(v + j * vs, vs);
                const D one = D{} + 1.0;
                const auto ok =
                    simplex ? (x >= 0.0) & (x < kInf) : (x == x) & (x < kInf);
                const auto masked = load_strided_lanes<D>(lg + j * ks, ks) == -kInf;
                const D e = simplex ? x : exp_lanes<kExpDegree<Real>>(x);
                return std::array<D, 3>{ok ? D{} : one,
                                        masked & (x > lowest) ? one : D{}, e};
            });
        a.status[r] = check_status(f[0] != 0.0, f[1] != 0.0, f[2] - 1.0, a.tol);
    }
}

// Note [probs of any scale]: probs are normalised by their row sum, and float64
// probs near the largest double can have a sum that overflows (in the order it
// is added, or at all) although every entry is valid and the distribution is
// well defined. Such a row is scaled by its largest entry m first:
// q / sum = (q / m) / S with S = sum(q / m) in [1, K], and log sum = log m +
// log S. Other rows keep m = 1, where both are the plain q / sum and log sum.
// log_probs stores log(q / sum), not log q: the logits of probs 1e30 times too
// large would sit near 69, where a float32 keeps 5 fewer bits than near -1, and
// log q - log sum would carry the rounding of logs near 690 for float64 probs
// of 1e300. Where q / sum is subnormal (and has lost bits) it is log q - log sum.
struct ProbsScale {
    double m = 1.0;    // 1 when the plain sum is finite
    double sum = 0.0;  // sum of q / m
    double share(double q) const { return q / m / sum; }
};

template <class T>
ProbsScale probs_scale(const T* q, int64_t qs, int64_t k) {
    ProbsScale sc;
    for (int64_t j = 0; j < k; ++j) sc.sum += static_cast<double>(q[j * qs]);
    if (sc.sum < kInf) return sc;
    sc.m = 0.0;
    for (int64_t j = 0; j < k; ++j) sc.m = max_d(sc.m, static_cast<double>(q[j * qs]));
    sc.sum = 0.0;
    for (int64_t j = 0; j < k; ++j) sc.sum += static_cast<double>(q[j * qs]) / sc.m;
    return sc;
}

// Note [checked copy of logits]: the distribution copies and checks its logits
// (or probs) once, when it is made. The per-row check keeps a running sum and
// extremes, a chain of dependent operations per entry (2.1 ns per float32 entry
// at K = 8, a third of an rsample). Dense parameters are instead copied in runs
// of whole rows that only count the entries outside a plain range, a loop the
// compiler vectorises. Logits: [-L, L], L the largest float32 for float32 (the
// spread of two of them is finite in double) and half the largest double for
// float64 (so hi - lo cannot overflow); -inf (a mask) is allowed, and each row
// needs a live entry. Probs: finite and non-negative; each row needs a positive
// entry (its sum may overflow: Note [probs of any scale]). A run meeting these has
// every row valid: status 0. Other runs go row by row, which also tells what is wrong.
template <class Real>
bool copy_plain_params(const ParamArgs<Real>& a, int64_t r0, int64_t r1) {
    const int64_t k = a.shape.k;
    const bool logits = a.op == ParamOp::check_logits;
    const Real largest =
        std::is_same<Real, float>::value
            ? static_cast<Real>(std::numeric_limits<float>::max())
            : static_cast<Real>(std::numeric_limits<double>::max() / 2);
    const Real hi = logits ? largest : std::numeric_limits<Real>::max();
    const Real lo = logits ? -hi : Real(0);
    const Real masked = -std::numeric_limits<Real>::infinity();
    const Real* src = a.in.data + r0 * k;
    Real* dst = a.out + r0 * k;
    int64_t outside = 0, masks = 0;
    for (int64_t i = 0; i < (r1 - r0) * k; ++i) {
        const Real v = src[i];
        dst[i] = v;
        outside += !((v >= lo) & (v <= hi));
        masks += v == masked;
    }
    if (outside != (logits ? masks : 0)) return false;
    // A row of logits needs a live entry, a row of probs a positive one.
    const Real dead = logits ? masked : Real(0);
    for (int64_t r = r0; (!logits || masks != 0) && r < r1; ++r) {
        const Real* row = dst + (r - r0) * k;
        int64_t j = 0;
        while (j < k && row[j] == dead) ++j;
        if (j == k) return false;
    }
    for (int64_t r = r0; r < r1; ++r) a.status[r] = 0;
    return true;
}

template <class Real>
void check_params_each(const ParamArgs<Real>& a, int64_t r0, int64_t r1);
template <class Real>
void param_transform_blocks(const ParamArgs<Real>& a, int64_t r0, int64_t r1,
                            double* scratch);

// Row-wise parameter transforms (ParamOp).
template <class Real>
void param_rows(const ParamArgs<Real>& a, int64_t r0, int64_t r1, double* scratch) {
    const bool check = a.op == ParamOp::check_logits || a.op == ParamOp::check_probs;
    if (!check) {
        param_transform_blocks(a, r0, r1, scratch);
    } else if (!dense_rows(a.in, a.shape)) {
        check_params_each(a, r0, r1);
    } else {
        const int64_t run = a.shape.k >= 4096 ? 1 : 4096 / a.shape.k;  // rows per run
        for (int64_t r = r0; r < r1; r += run) {
            const int64_t end = r1 - r < run ? r1 : r + run;
            if (!copy_plain_params(a, r, end)) check_params_each(a, r, end);
        }
    }
}

// The transforms of checked parameters (log_probs, normalize_probs,
// normalize_logits, probs_from_logits), a block of rows at a time so that the
// logs and exponentials run over whole vectors even for short rows. The same
// bits as row by row: log_fused_v and exp_v agree with log_fused_d and exp_d,
// and each row
// is summed in order.
template <class Real>
void param_transform_blocks(const ParamArgs<Real>& a, int64_t r0, int64_t r1,
                            double* scratch) {
    const int64_t k = a.shape.k;
    const int64_t* const strides[1] = {a.in.stride};
    RowWalker<1> walk(a.shape, r0, strides);
    double* const v = scratch;
    double* const e = scratch + block_capacity(k);
    // Per row: log sum q (log_probs) or log sum exp (the logits transforms).
    double* const row = scratch + 2 * block_capacity(k);
    // A share below the smallest normal double has lost bits (log_probs).
    const double log_smallest_normal = std::log(std::numeric_limits<double>::min());

    for (int64_t rb = r0; rb < r1; rb += rows_per_block(k)) {
        const int64_t nb = r1 - rb < rows_per_block(k) ? r1 - rb : rows_per_block(k);
        const int64_t n = nb * k;
        for (int64_t i = 0; i < nb; ++i, walk.advance())
            load_row(a.in.data + walk.offset[0], a.in.kstride, k, v + i * k);
        Real* const out = a.out + rb * k;

        if (a.op == ParamOp::log_probs) {
            // Normalised, log(q / sum q) (Note [probs of any scale]); where the
            // share is subnormal (and has lost bits), log q - log sum q.
            for (int64_t i = 0; i < nb; ++i) {
                const ProbsScale sc = probs_scale(v + i * k, 1, k);
                row[i] = log_fused_d(sc.m) + log_fused_d(sc.sum);
                for (int64_t j = 0; j < k; ++j) e[i * k + j] = sc.share(v[i * k + j]);
            }
            log_inplace(e, n);
            for (int64_t i = 0; i < nb; ++i)
                for (int64_t j = 0; j < k; ++j) {
                    const double q = v[i * k + j];
                    const bool normal = e[i * k + j] >= log_smallest_normal;
                    out[i * k + j] = static_cast<Real>(
                        normal || q == 0.0 ? e[i * k + j] : log_fused_d(q) - row[i]);
                }
        } else if (a.op == ParamOp::normalize_probs) {
            for (int64_t i = 0; i < nb; ++i) {
                const ProbsScale sc = probs_scale(v + i * k, 1, k);
                for (int64_t j = 0; j < k; ++j)  // + 0: a prob of -0 is 0
                    out[i * k + j] = static_cast<Real>(sc.share(v[i * k + j]) + 0.0);
            }
        } else {
            // Normalised logits or their softmax; see Note [stable log-sum-exp].
            for (int64_t i = 0; i < nb; ++i) {
                double amax = -kInf;
                for (int64_t j = 0; j < k; ++j) amax = max_d(amax, v[i * k + j]);
                for (int64_t j = 0; j < k; ++j) v[i * k + j] -= amax;
            }
            exp_into(v, e, n);
            for (int64_t i = 0; i < nb; ++i) {
                double sum = 0.0;
                for (int64_t j = 0; j < k; ++j) sum += e[i * k + j];
                row[i] = sum;
            }
            log_inplace(row, nb);
            for (int64_t i = 0; i < nb; ++i)
                for (int64_t j = 0; j < k; ++j) v[i * k + j] -= row[i];
            if (a.op == ParamOp::probs_from_logits) exp_inplace(v, n);
            for (int64_t i = 0; i < n; ++i) out[i] = static_cast<Real>(v[i]);
        }
    }
}

// The checked copy of check_logits and check_probs row by row, for strided
// parameters and the runs the flat copy hands back (Note [checked copy of
// logits]).
template <class Real>
void check_params_each(const ParamArgs<Real>& a, int64_t r0, int64_t r1) {
    const int64_t k = a.shape.k;
    const int64_t* const strides[1] = {a.in.stride};
    RowWalker<1> walk(a.shape, r0, strides);

    for (int64_t r = r0; r < r1; ++r, walk.advance()) {
        const Real* p = a.in.data + walk.offset[0];
        const int64_t ps = a.in.kstride;
        Real* out = a.out + r * k;

        // Copy and check in one pass (the distribution keeps the copy).
        const bool logits = a.op == ParamOp::check_logits;
        bool bad = false, live = false;
        double sum = 0.0, hi = -kInf, lo = kInf;  // live logits' extremes
        for (int64_t j = 0; j < k; ++j) {
            const Real pj = p[j * ps];
            const double d = static_cast<double>(pj);
            out[j] = pj;
            bad = bad || (logits ? !(d < kInf) : !(d >= 0.0 && d < kInf));
            live = live || d > -kInf;
            sum += d;
            hi = d > -kInf && d > hi ? d : hi;
            lo = d > -kInf && d < lo ? d : lo;
        }
        // A row of probs needs a positive entry; its sum may overflow
        // (Note [probs of any scale]).
        const bool empty = logits ? !live : !(sum > 0.0);
        // Logits whose spread overflows (a - max a = -inf for a finite a)
        // cannot be shifted (Note [shift before scaling]).
        const bool spread = logits && live && !(hi - lo < kInf);
        a.status[r] = bad ? 1 : (empty ? 2 : (spread ? 3 : 0));
    }
}

// dL/dq through l = log(q / sum q): dL/dq_k = dL/dl_k / q_k - sum_j dL/dl_j / sum q,
// and 0 where q_k = 0 (a masked category; the convention the README states).
// Note [probs gradient]: every function of the distribution depends on the
// logits only through their differences, so its logits gradient sums to 0 over
// each row, and the second term is exactly 0. Computed, it was the rounding of
// that sum (about eps max |dL/dl|), which swamped every entry whose own term is
// smaller: wrong signs near a vertex, and 1e283 where the exact gradient is 0
// (a third fresh-user review). The kernels take dL/dl_k / q_k alone.
template <class Real>
void probs_vjp_rows(const ProbsVjpArgs<Real>& a, int64_t r0, int64_t r1,
                    double* scratch) {
    const int64_t k = a.shape.k;
    const int64_t* const strides[2] = {a.probs.stride, a.grad_logits.stride};
    RowWalker<2> walk(a.shape, r0, strides);
    (void)scratch;

    for (int64_t r = r0; r < r1; ++r, walk.advance()) {
        const Real* q = a.probs.data + walk.offset[0];
        const double* gl = a.grad_logits.data + walk.offset[1];
        const int64_t qs = a.probs.kstride, gs = a.grad_logits.kstride;
        Real* out = a.grad_probs + r * k;
        for (int64_t j = 0; j < k; ++j) {
            const double qj = static_cast<double>(q[j * qs]);
            out[j] = static_cast<Real>(qj > 0.0 ? gl[j * gs] / qj : 0.0);
        }
    }
}

}  // namespace RELAXCAT_ISA_NAMESPACE
}  // namespace detail
}  // namespace relaxcat
