#pragma once
// Gumbel noise from the Philox stream. This file defines the public random
// stream of relaxcat (README, "The random stream"); changing any bit of it is a
// breaking change.
//
// Element i (the row-major index in the output, plus the caller's offset) reads
// Philox4x32-10 block b = i / 2 under counter (b_lo, b_hi, stream_lo, stream_hi)
// and key (key_lo, key_hi). Even i takes words 0 and 1 of the block, odd i words
// 2 and 3; the pair forms w = lo | hi << 32, the uniform is
// u = ((w >> 12) + 1/2) 2^-52, strictly inside (0, 1), and the noise is
// g = -log(-log(u)) in [-3.6, 36.8]. float32 and float64 calls use the same noise.

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

}  // namespace RELAXCAT_ISA_NAMESPACE
}  // namespace detail
}  // namespace relaxcat
