#pragma once
// Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw,
// "Parallel random numbers: as easy as 1, 2, 3" (SC 2011). Checked against the
// Random123 known-answer vectors in tests/data/philox_kat.json.

#include <cstdint>

#include "isa.hpp"

namespace relaxcat {
namespace detail {
namespace RELAXCAT_ISA_NAMESPACE {

struct Words4 {
    uint32_t w[4];
};

// One Philox4x32 block: counter (c0, c1, c2, c3), key (k0, k1), `rounds` rounds.
// The multipliers and Weyl constants are the published ones.
template <int Rounds = 10>
inline Words4 philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                         uint32_t k0, uint32_t k1) {
    constexpr uint64_t kM0 = 0xD2511F53u;
    constexpr uint64_t kM1 = 0xCD9E8D57u;
    constexpr uint32_t kW0 = 0x9E3779B9u;
    constexpr uint32_t kW1 = 0xBB67AE85u;

    // Fully unrolled, so that loops calling this function vectorise across blocks.
#pragma GCC unroll 16
    for (int round = 0; round < Rounds; ++round) {
        const uint64_t p0 = kM0 * c0;
        const uint64_t p1 = kM1 * c2;
        const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
        const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
        c1 = static_cast<uint32_t>(p1);
        c3 = static_cast<uint32_t>(p0);
        c0 = n0;
        c2 = n2;
        k0 += kW0;
        k1 += kW1;
    }
    return Words4{{c0, c1, c2, c3}};
}

}  // namespace RELAXCAT_ISA_NAMESPACE
}  // namespace detail
}  // namespace relaxcat
