#pragma once
// Gumbel noise from the Philox stream. This file defines the public random
// stream of relaxcat (README, "The random stream"); changing any bit of it is a
// breaking change. There are two streams over the same Philox blocks: float64
// samples read the double noise, float32 samples the float noise.
//
// Double noise: element i (the row-major index in the output, plus the caller's
// offset) reads Philox4x32-10 block b = i / 2 under counter (b_lo, b_hi,
// stream_lo, stream_hi) and key (key_lo, key_hi). Even i takes words 0 and 1 of
// the block, odd i words 2 and 3; the pair forms w = lo | hi << 32, the uniform
// is u = ((w >> 12) + 1/2) 2^-52, strictly inside (0, 1), and the noise is
// g = -log(-log(u)) in [-3.60, 36.74], in double arithmetic (math.hpp's log_d).
//
// Float noise: element i reads word i % 4 of block i / 4, w. Its top bit picks
// the half of (0, 1) that u lies in and the other 31 bits m give the distance
// from the nearer end, q = (float(m) + 1/2) 2^-32 in float arithmetic (both
// roundings to nearest), in (0, 1/2]: u = q when the top bit is set, u = 1 - q
// otherwise. E = -log(u) is formed from q without rounding u (see
// gumbel_from_word_lanes), so both tails keep full relative precision, and
// g = -log(E) lies in [-3.13, 22.87]. Every step is a float operation
// (math.hpp's logf_from_parts), so the noise is the same on every level.

#include <cstdint>

#include "isa.hpp"
#include "math.hpp"
#include "philox.hpp"
#include "simd.hpp"

namespace relaxcat {
namespace detail {
namespace RELAXCAT_ISA_NAMESPACE {

// ((w >> 12) + 1/2) 2^-52, built from the bits of 1 + (w >> 12) 2^-52 so that no
// vector 64-bit integer conversion is needed; every step is exact.
inline double uniform_from_words(uint32_t lo, uint32_t hi) {
    const uint64_t w = static_cast<uint64_t>(lo) | (static_cast<uint64_t>(hi) << 32);
    const double one_plus = double_of(UINT64_C(0x3ff0000000000000) | (w >> 12));
    return (one_plus - 1.0) + 1.1102230246251565404e-16;  // + 2^-53
}

inline double gumbel_from_words(uint32_t lo, uint32_t hi) {
    return -log_d(-log_d(uniform_from_words(lo, hi)));
}

// The float noise of one word w, lane by lane for any float lane type F (with
// U its 32-bit unsigned lanes). E = -log(u) from q, each case an exact reduction
// x = 2^k (1 + f) for logf_from_parts:
//   top bit set:      u = q,     split as usual (left tail: tiny q, large E);
//   q <= 1 - 1/sqrt2: u = 1 - q, k = 0,  f = -q (log1p, right tail: tiny q);
//   otherwise:        u = 1 - q, k = -1, f = 1 - 2q (exact by Sterbenz).
template <class F, class U>
RELAXCAT_ALWAYS_INLINE F gumbel_from_word_lanes(U w) {
    using L = Lanes<F>;
    using I = typename L::I;
    const F q = (L::to_float((I)(w & 0x7fffffffu)) + 0.5f) * 0x1p-32f;
    I kq;
    F fq;
    logf_split(q, kq, fq);
    const auto top = (w >> 31) != 0u;
    const auto near_one = q <= 0.29289322f;
    const I k = top ? kq : (near_one ? L::splat_i(0) : L::splat_i(-1));
    const F f = top ? fq : (near_one ? -q : 1.0f - 2.0f * q);
    const F e = -logf_from_parts(k, f);
    return -logf_positive(e);
}

inline float gumbel_from_word(uint32_t w) {
    return gumbel_from_word_lanes<float>(w);
}

inline Words4 noise_block(uint64_t key, uint64_t stream, uint64_t block) {
    return philox4x32<10>(
        static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
        static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32),
        static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
}

// Writes the noise of elements first, ..., first + n - 1 to out[0..n).
inline void fill_gumbels(uint64_t key, uint64_t stream, uint64_t first, int64_t n,
                         double* out) {
    if (n <= 0) return;

    // An odd first element takes the second half of its block.
    if (first & 1) {
        const Words4 b = noise_block(key, stream, first >> 1);
        *out++ = gumbel_from_words(b.w[2], b.w[3]);
        ++first;
        --n;
    }

    // Whole blocks: 2 kLanes elements at a time in vectors, then one block at a
    // time; both give the same bits.
    int64_t p = 0;
#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
    for (; 2 * p + 2 * kLanes <= n; p += kLanes)
        gumbel_group(key, stream, first + 2 * p, out + 2 * p);
#endif
    const int64_t pairs = n / 2;
    const uint64_t block0 = first >> 1;
    for (; p < pairs; ++p) {
        const Words4 b = noise_block(key, stream, block0 + static_cast<uint64_t>(p));
        out[2 * p] = gumbel_from_words(b.w[0], b.w[1]);
        out[2 * p + 1] = gumbel_from_words(b.w[2], b.w[3]);
    }

    // An odd count leaves the first half of one more block.
    if (n & 1) {
        const Words4 b =
            noise_block(key, stream, block0 + static_cast<uint64_t>(pairs));
        out[n - 1] = gumbel_from_words(b.w[0], b.w[1]);
    }
}

#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
// The float noise of the 4 kLanes elements from a multiple of 4, `first`, on:
// blocks first / 4 .. first / 4 + kLanes - 1, computed in float vectors of
// 2 kLanes lanes and interleaved back into element order.
RELAXCAT_SIMD_INLINE void gumbel_group_f32(uint64_t key, uint64_t stream,
                                           uint64_t first, float* out) {
    VecU w[4];
    philox_blocks(key, stream, first >> 2, w);
    // Words 0 and 1 of each block in a, words 2 and 3 in b: (w0[0], w1[0],
    // w0[1], w1[1], ...), taking the low halves of the 64-bit lanes.
    const VecU32 a = __builtin_shuffle(as_u32(w[0]), as_u32(w[1]), kPairLowHalves);
    const VecU32 b = __builtin_shuffle(as_u32(w[2]), as_u32(w[3]), kPairLowHalves);
    const VecF ga = gumbel_from_word_lanes<VecF>(a);
    const VecF gb = gumbel_from_word_lanes<VecF>(b);
    store_f(out, __builtin_shuffle(ga, gb, kBlocksFirstHalf));
    store_f(out + 2 * kLanes, __builtin_shuffle(ga, gb, kBlocksSecondHalf));
}
#endif

#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
// The float noise of 2 kLanes lanes, widened to doubles at p[0 .. 2 kLanes).
RELAXCAT_SIMD_INLINE void store_noise_widened(VecU32 words, double* p) {
    float g[2 * kLanes];
    store_f(g, gumbel_from_word_lanes<VecF>(words));
    for (int j = 0; j < 2 * kLanes; ++j) p[j] = g[j];
}
#endif

// The float noise of nb dense rows of k elements whose first element is
// `first`, written down columns as doubles: col[j nb + i] is element j of row i.
// The same bits as fill_gumbels_f32 followed by a transposition, without the
// transposition, as the words of a column come straight out of Philox when
// `first` is a multiple of 4: for k a multiple of 4, column 4 q + m of row i is
// word m of block first / 4 + q + i k / 4, so 2 kLanes rows take two vectors of
// blocks k / 4 apart; for k = 2, rows 2 i and 2 i + 1 share block first / 4 + i
// (words 0 and 1, then 2 and 3), so column 0 interleaves words 0 and 2 of
// consecutive blocks and column 1 words 1 and 3. Returns false, having written
// nothing, for other k or `first`.
inline bool fill_gumbels_f32_columns(uint64_t key, uint64_t stream, uint64_t first,
                                     int64_t nb, int64_t k, double* col) {
    if ((first & 3) != 0 || !(k == 2 || (k & 3) == 0)) return false;
    int64_t i = 0;
#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
    const uint64_t b0 = first >> 2;
    if (k == 2) {
        for (; i + 2 * kLanes <= nb; i += 2 * kLanes) {
            VecU w[4];
            philox_blocks(key, stream, b0 + static_cast<uint64_t>(i / 2), w);
            store_noise_widened(
                __builtin_shuffle(as_u32(w[0]), as_u32(w[2]), kPairLowHalves), col + i);
            store_noise_widened(
                __builtin_shuffle(as_u32(w[1]), as_u32(w[3]), kPairLowHalves),
                col + nb + i);
        }
    } else {
        const uint64_t step = static_cast<uint64_t>(k / 4);
        for (; i + 2 * kLanes <= nb; i += 2 * kLanes) {
            for (int64_t q = 0; q < k / 4; ++q) {
                VecU lo[4], hi[4];
                const uint64_t b = b0 + static_cast<uint64_t>(i) * step + q;
                philox_blocks(key, stream, b, lo, step);
                philox_blocks(key, stream, b + kLanes * step, hi, step);
                for (int m = 0; m < 4; ++m)
                    store_noise_widened(
                        __builtin_shuffle(as_u32(lo[m]), as_u32(hi[m]), kLowHalves),
                        col + (4 * q + m) * nb + i);
            }
        }
    }
#endif
    // The rows left over, element by element.
    for (; i < nb; ++i)
        for (int64_t j = 0; j < k; ++j) {
            const uint64_t e = first + static_cast<uint64_t>(i * k + j);
            col[j * nb + i] =
                gumbel_from_word(noise_block(key, stream, e >> 2).w[e & 3]);
        }
    return true;
}

// Writes the float noise of elements first, ..., first + n - 1 to out[0..n),
// as floats or widened to doubles (Out is float or double).
template <class Out>
inline void fill_gumbels_f32(uint64_t key, uint64_t stream, uint64_t first, int64_t n,
                             Out* out) {
    int64_t i = 0;
    // Elements before the first whole block.
    while (i < n && ((first + static_cast<uint64_t>(i)) & 3) != 0) {
        const uint64_t e = first + static_cast<uint64_t>(i);
        out[i++] = gumbel_from_word(noise_block(key, stream, e >> 2).w[e & 3]);
    }
#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
    for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
        float g[4 * kLanes];
        gumbel_group_f32(key, stream, first + static_cast<uint64_t>(i), g);
        for (int j = 0; j < 4 * kLanes; ++j) out[i + j] = g[j];
    }
#endif
    for (; i < n; ++i) {
        const uint64_t e = first + static_cast<uint64_t>(i);
        out[i] = gumbel_from_word(noise_block(key, stream, e >> 2).w[e & 3]);
    }
}

}  // namespace RELAXCAT_ISA_NAMESPACE
}  // namespace detail
}  // namespace relaxcat
