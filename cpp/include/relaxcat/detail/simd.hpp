#pragma once
// Eight-lane double and 64-bit integer vectors written with GCC/Clang vector
// extensions. The compiler lowers each operation to what the target has: one
// AVX-512 instruction, two AVX2 instructions, or four SSE2 ones. The operations
// are the IEEE ones of the scalar code in the same order, so each lane gives the
// same bits as math.hpp and noise.hpp compute for that element (tests check it).
// Compilers without vector extensions use the scalar loops instead.

#include <cstdint>
#include <cstring>

#include "isa.hpp"
#include "math.hpp"
#include "philox.hpp"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(RELAXCAT_NO_VECTOR_EXTENSIONS)
#define RELAXCAT_HAVE_VECTOR_EXTENSIONS 1
#endif

#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)

namespace relaxcat {
namespace detail {
namespace RELAXCAT_ISA_NAMESPACE {

// Forced inlining: without AVX-512 a 64-byte vector is passed through memory,
// and an out-of-line call would cost more than the work.
#define RELAXCAT_SIMD_INLINE inline __attribute__((always_inline))

// The native width of the target: eight doubles with AVX-512, four with AVX,
// two otherwise. Wider generic vectors would be split, and GCC then lowers
// comparisons and selects lane by lane.
#if defined(__AVX512F__)
constexpr int kLanes = 8;
#elif defined(__AVX__)
constexpr int kLanes = 4;
#else
constexpr int kLanes = 2;
#endif
// Natural alignment: vectors only meet memory through memcpy (load_d, store_d).
typedef double VecD __attribute__((vector_size(8 * kLanes)));
typedef int64_t VecI __attribute__((vector_size(8 * kLanes)));
typedef uint64_t VecU __attribute__((vector_size(8 * kLanes)));

RELAXCAT_SIMD_INLINE VecD load_d(const double* p) {
    VecD v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

RELAXCAT_SIMD_INLINE void store_d(double* p, VecD v) {
    std::memcpy(p, &v, sizeof v);
}

// x in every lane; x - 0 is x exactly, -0 included (0 + x would turn -0 into +0
// in the vector lanes but not in the scalar tails).
RELAXCAT_SIMD_INLINE VecD splat_d(double x) {
    return x - VecD{};
}

RELAXCAT_SIMD_INLINE VecU as_u(VecD v) {
    return bit_cast_to<VecU>(v);
}

RELAXCAT_SIMD_INLINE VecD as_d(VecU u) {
    return bit_cast_to<VecD>(u);
}

// The lanes of a comparison's result (each all ones or all zeros) as bits: one
// instruction where the level has it (a loop over the lanes took a tenth of
// log_prob's time on long rows).
RELAXCAT_SIMD_INLINE unsigned lane_bits(VecI m) {
#if defined(__AVX512F__)
    __m512i v;
    std::memcpy(&v, &m, sizeof v);
    return _mm512_test_epi64_mask(v, v);
#elif defined(__AVX__)
    __m256d v;
    std::memcpy(&v, &m, sizeof v);
    return static_cast<unsigned>(_mm256_movemask_pd(v));
#elif defined(__SSE2__)
    __m128d v;
    std::memcpy(&v, &m, sizeof v);
    return static_cast<unsigned>(_mm_movemask_pd(v));
#else
    unsigned bits = 0;
    for (int l = 0; l < kLanes; ++l) bits |= (m[l] != 0 ? 1u : 0u) << l;
    return bits;
#endif
}

RELAXCAT_SIMD_INLINE bool all_lanes(VecI m) {
    return lane_bits(m) == (1u << kLanes) - 1u;
}

RELAXCAT_SIMD_INLINE bool any_lane(VecI m) {
    return lane_bits(m) != 0u;
}

// The lane type of math.hpp's log_lanes and exp_lanes for vectors.
template <>
struct Lanes<VecD> {
    using U = VecU;
    using I = VecI;
    static U bits(VecD v) { return as_u(v); }
    static VecD value(U u) { return as_d(u); }
    static VecD splat(double c) { return splat_d(c); }
    static I splat_i(int64_t c) { return VecI{} + c; }
    static bool all(VecI m) { return all_lanes(m); }
    static VecD mul_add(VecD a, VecD b, VecD c) {
#if defined(__AVX512F__)
        return (VecD)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif defined(__FMA__)
        return (VecD)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
        return a * b + c;
#endif
    }
    // y 2^k (kd = k as a double) rounded once: AVX-512's scalef is that one
    // instruction, and gives the bits of scale_by_two_factors, whose first
    // product is exact.
    static VecD scale(VecD y, VecD kd, I k) {
#if defined(__AVX512F__)
        (void)k;
        // The zero-masked form with every lane kept: the unmasked intrinsic
        // of GCC 12 reads an uninitialized vector (-Wmaybe-uninitialized).
        return (VecD)_mm512_maskz_scalef_pd(0xff, (__m512d)y, (__m512d)kd);
#else
        (void)kd;
        return scale_by_two_factors(y, k);
#endif
    }
};

// Float vectors of the same byte width (2 kLanes floats), for the float noise.
typedef float VecF __attribute__((vector_size(8 * kLanes)));
typedef int32_t VecI32 __attribute__((vector_size(8 * kLanes)));
typedef uint32_t VecU32 __attribute__((vector_size(8 * kLanes)));

RELAXCAT_SIMD_INLINE void store_f(float* p, VecF v) {
    std::memcpy(p, &v, sizeof v);
}

RELAXCAT_SIMD_INLINE VecU32 as_u32(VecU u) {
    return bit_cast_to<VecU32>(u);
}

template <>
struct Lanes<VecF> {
    using U = VecU32;
    using I = VecI32;
    static U bits(VecF v) { return bit_cast_to<U>(v); }
    static VecF value(U u) { return bit_cast_to<VecF>(u); }
    static VecF to_float(I k) { return __builtin_convertvector(k, VecF); }
    static I splat_i(int32_t c) { return I{} + c; }
};

// Lane numbers 0, 1, ..., kLanes - 1, and the shuffle masks of the float noise
// (indices into the concatenation of two VecU32 or VecF; x86 is little-endian,
// so the low half of 64-bit lane j is 32-bit lane 2 j).
#if defined(__AVX512F__)
RELAXCAT_SIMD_INLINE VecU lane_index() {
    return VecU{0, 1, 2, 3, 4, 5, 6, 7};
}
constexpr VecI32 kPairLowHalves = {0, 16, 2,  18, 4,  20, 6,  22,
                                   8, 24, 10, 26, 12, 28, 14, 30};
constexpr VecI32 kBlocksFirstHalf = {0, 1, 16, 17, 2, 3, 18, 19,
                                     4, 5, 20, 21, 6, 7, 22, 23};
constexpr VecI32 kBlocksSecondHalf = {8,  9,  24, 25, 10, 11, 26, 27,
                                      12, 13, 28, 29, 14, 15, 30, 31};
constexpr VecI32 kLowHalves = {0,  2,  4,  6,  8,  10, 12, 14,
                               16, 18, 20, 22, 24, 26, 28, 30};
#elif defined(__AVX__)
RELAXCAT_SIMD_INLINE VecU lane_index() {
    return VecU{0, 1, 2, 3};
}
constexpr VecI32 kPairLowHalves = {0, 8, 2, 10, 4, 12, 6, 14};
constexpr VecI32 kBlocksFirstHalf = {0, 1, 8, 9, 2, 3, 10, 11};
constexpr VecI32 kBlocksSecondHalf = {4, 5, 12, 13, 6, 7, 14, 15};
constexpr VecI32 kLowHalves = {0, 2, 4, 6, 8, 10, 12, 14};
#else
RELAXCAT_SIMD_INLINE VecU lane_index() {
    return VecU{0, 1};
}
constexpr VecI32 kPairLowHalves = {0, 4, 2, 6};
constexpr VecI32 kBlocksFirstHalf = {0, 1, 4, 5};
constexpr VecI32 kBlocksSecondHalf = {2, 3, 6, 7};
constexpr VecI32 kLowHalves = {0, 2, 4, 6};
#endif

RELAXCAT_SIMD_INLINE VecD log_v(VecD x) {
    return log_lanes(x);
}

// The kernels' log (math.hpp, Note [fused log]).
RELAXCAT_SIMD_INLINE VecD log_fused_v(VecD x) {
    return log_lanes<true>(x);
}

template <int Degree = 13>
RELAXCAT_SIMD_INLINE VecD exp_v(VecD x) {
    return exp_lanes<Degree>(x);
}

// gumbel_from_words of noise.hpp, lane by lane (words in the low 32 bits).
RELAXCAT_SIMD_INLINE VecD gumbel_v(VecU lo, VecU hi) {
    const VecU w = lo | (hi << 32);
    const VecD one_plus = as_d(UINT64_C(0x3ff0000000000000) | (w >> 12));
    const VecD u = (one_plus - 1.0) + 1.1102230246251565404e-16;
    return -log_v(-log_v(u));
}

// The 64-bit products of the low 32 bits of each lane with m. Written with the
// unsigned 32 x 32 -> 64 multiply of each x86 level, because compilers lower the
// generic 64-bit product to a much slower instruction sequence.
RELAXCAT_SIMD_INLINE VecU mul_low32(VecU a, uint32_t m) {
#if defined(__AVX512F__)
    // The zero-masked forms with every lane kept: GCC 12's unmasked
    // _mm512_mul_epu32 and _mm512_set1_epi64 read an uninitialized vector
    // (-Wmaybe-uninitialized in code built with -Wall).
    __m512i v;
    std::memcpy(&v, &a, sizeof v);
    v = _mm512_maskz_mul_epu32(0xff, v, _mm512_maskz_set1_epi64(0xff, m));
#elif defined(__AVX2__)
    __m256i v;
    std::memcpy(&v, &a, sizeof v);
    v = _mm256_mul_epu32(v, _mm256_set1_epi64x(m));
#elif defined(__SSE2__) && !defined(__AVX__)
    __m128i v;
    std::memcpy(&v, &a, sizeof v);
    v = _mm_mul_epu32(v, _mm_set1_epi64x(m));
#else
    return (a & 0xffffffffu) * static_cast<uint64_t>(m);
#endif
#if defined(__AVX512F__) || defined(__AVX2__) || \
    (defined(__SSE2__) && !defined(__AVX__))
    std::memcpy(&a, &v, sizeof v);
    return a;
#endif
}

// Philox4x32-10 for kLanes consecutive blocks, one per lane (32-bit words held
// in 64-bit lanes, so the 32 x 32 -> 64-bit products are single instructions).
RELAXCAT_SIMD_INLINE void philox_v(VecU c0, VecU c1, VecU c2, VecU c3, uint32_t k0,
                                   uint32_t k1, VecU out[4]) {
    const uint64_t kLow = 0xffffffffu;
#pragma GCC unroll 16
    for (int round = 0; round < 10; ++round) {
        const VecU p0 = mul_low32(c0, 0xD2511F53u);
        const VecU p1 = mul_low32(c2, 0xCD9E8D57u);
        const VecU n0 = (p1 >> 32) ^ c1 ^ k0;
        const VecU n2 = (p0 >> 32) ^ c3 ^ k1;
        c1 = p1 & kLow;
        c3 = p0 & kLow;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

// The words of the kLanes blocks block0, block0 + step, ... of a stream.
RELAXCAT_SIMD_INLINE void philox_blocks(uint64_t key, uint64_t stream, uint64_t block0,
                                        VecU w[4], uint64_t step = 1) {
    const VecU block = block0 + lane_index() * step;
    philox_v(block & 0xffffffffu, block >> 32, VecU{} + (stream & 0xffffffffu),
             VecU{} + (stream >> 32), static_cast<uint32_t>(key),
             static_cast<uint32_t>(key >> 32), w);
}

// The noise of the 2 kLanes elements from an even index `first` on: blocks
// first / 2 .. first / 2 + kLanes - 1, interleaved back into element order.
RELAXCAT_SIMD_INLINE void gumbel_group(uint64_t key, uint64_t stream, uint64_t first,
                                       double* out) {
#if defined(__AVX512F__)
    const VecI lo_mask = {0, 8, 1, 9, 2, 10, 3, 11};
    const VecI hi_mask = {4, 12, 5, 13, 6, 14, 7, 15};
#elif defined(__AVX__)
    const VecI lo_mask = {0, 4, 1, 5};
    const VecI hi_mask = {2, 6, 3, 7};
#else
    const VecI lo_mask = {0, 2};
    const VecI hi_mask = {1, 3};
#endif
    VecU w[4];
    philox_blocks(key, stream, first >> 1, w);
    const VecD even = gumbel_v(w[0], w[1]);
    const VecD odd = gumbel_v(w[2], w[3]);
    store_d(out, __builtin_shuffle(even, odd, lo_mask));
    store_d(out + kLanes, __builtin_shuffle(even, odd, hi_mask));
}

}  // namespace RELAXCAT_ISA_NAMESPACE
}  // namespace detail
}  // namespace relaxcat

#endif
