#pragma once
// The public random generator of the C++ API: a Philox4x32-10 key, stream and
// counter offset that the caller owns and seeds.
//
// Stream guarantee (README, "The random stream"): element i of a call's output
// (its row-major index) draws the Gumbel noise of element offset + i of the
// stream (key, stream), so a C++ call made with Philox(key, stream, offset) gives
// bit for bit the noise of the Python module's call with the same key, stream and
// offset. The Python `rng=int` call is key = that int, stream 0, offset 0: a fresh
// `Philox(seed)` reproduces `d.rsample(shape, rng=seed)`.
//
// Each call that draws n elements advances the offset by n, so successive calls
// continue the stream: two calls of n rows give the two halves of one call of
// 2 n rows. A stream has 2^64 elements; a draw that would run past its last one
// (possible only after a seek near the end) is an error, not a wrap-around. A
// draw that ends exactly at the last element uses the stream up: offset() is 0
// again (the counter is 64 bits wide), exhausted() is true, and every later draw
// of one element or more is an error until a seek.

// First, so that an unsupported standard or flag is the first error (isa.hpp).
#include "detail/isa.hpp"

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "detail/args.hpp"
#include "detail/noise.hpp"
#include "detail/philox.hpp"

namespace relaxcat {

// Plain state, no machine code of its own: the same type in every translation
// unit whatever its instruction-set flags.
class Philox {
public:
    constexpr Philox() = default;
    constexpr explicit Philox(uint64_t key, uint64_t stream = 0, uint64_t offset = 0)
        : key_(key), stream_(stream), offset_(offset) {}

    constexpr uint64_t key() const { return key_; }
    constexpr uint64_t stream() const { return stream_; }
    // The element of the stream the next draw starts at (0 once it is used up).
    constexpr uint64_t offset() const { return offset_; }
    // Whether a draw ended at the stream's last element (no seek since).
    constexpr bool exhausted() const { return exhausted_; }

    // Moves to element `offset` of the stream (0 restarts it).
    constexpr void seek(uint64_t offset) {
        offset_ = offset;
        exhausted_ = false;
    }

    // Reserves the next n elements: returns the first and moves past them.
    // Throws std::invalid_argument, leaving the generator as it was, unless
    // holds(n) (it had wrapped around to the stream's start).
    constexpr uint64_t advance(uint64_t n) {
        if (!holds(n)) past_the_end(n);
        const uint64_t first = offset_;
        offset_ += n;
        if (n > 0 && offset_ == 0) exhausted_ = true;
        return first;
    }

    // Whether elements offset() .. offset() + n - 1 all lie in the stream.
    constexpr bool holds(uint64_t n) const {
        return exhausted_ ? n == 0 : detail::stream_holds(offset_, n);
    }

private:
    [[noreturn]] void past_the_end(uint64_t n) const {
        throw std::invalid_argument(
            "Philox::advance: n must fit in the rest of the stream (2^64 elements), "
            "got " +
            std::to_string(n) +
            (exhausted_ ? std::string(" with the stream used up")
                        : " at offset " + std::to_string(offset_)));
    }

    uint64_t key_ = 0;
    uint64_t stream_ = 0;
    uint64_t offset_ = 0;
    bool exhausted_ = false;
};

namespace detail {
namespace RELAXCAT_ISA_NAMESPACE {
// Throws std::invalid_argument unless n >= 0 and gen's stream holds the n
// elements of a draw (the stream guarantee above: no wrap-around).
inline void check_noise_room(const char* fn, const Philox& gen, int64_t n) {
    if (n < 0)
        throw std::invalid_argument(std::string(fn) + ": n must be non-negative, got " +
                                    std::to_string(n));
    if (gen.holds(static_cast<uint64_t>(n))) return;
    const std::string draw = std::string(fn) + ": gen must hold this draw of " +
                             element_count(static_cast<uint64_t>(n));
    if (gen.exhausted())
        throw std::invalid_argument(
            draw +
            ", got a stream already used up (a draw ended at its last element, "
            "2^64 - 1; seek to draw from it again)");
    throw std::invalid_argument(draw + ", got offset " + std::to_string(gen.offset()) +
                                ", past which the stream has only " +
                                std::to_string(~gen.offset() + 1) +
                                " (a stream has 2^64 elements)");
}

// check_noise_room, and somewhere to write the n elements.
inline void check_noise_call(const char* fn, const Philox& gen, int64_t n,
                             const void* out) {
    check_noise_room(fn, gen, n);
    if (n > 0 && out == nullptr)
        throw std::invalid_argument(std::string(fn) +
                                    ": out must not be null for a draw of " +
                                    element_count(static_cast<uint64_t>(n)));
}
}  // namespace RELAXCAT_ISA_NAMESPACE
}  // namespace detail

// Functions with machine code live in a namespace named after the instruction
// set, so that translation units built with different -m flags (and different
// RELAXCAT_ISA_NAMESPACE) never share a symbol; see Note [one-definition trap]
// in detail/isa.hpp.
inline namespace RELAXCAT_ISA_NAMESPACE {

// One Philox4x32 block (Random123's definition): counter words c0..c3 and key
// words k0, k1 in, four words out. Rounds is 10 for relaxcat's stream; 7 is
// offered for the published known-answer vectors.
template <int Rounds = 10>
inline std::array<uint32_t, 4> philox4x32(const std::array<uint32_t, 4>& counter,
                                          const std::array<uint32_t, 2>& key) {
    static_assert(Rounds > 0 && Rounds <= 16, "Philox4x32 takes 1 to 16 rounds");
    const detail::RELAXCAT_ISA_NAMESPACE::Words4 w =
        detail::RELAXCAT_ISA_NAMESPACE::philox4x32<Rounds>(
            counter[0], counter[1], counter[2], counter[3], key[0], key[1]);
    return {w.w[0], w.w[1], w.w[2], w.w[3]};
}

// Writes the standard Gumbel noise of the next n elements of gen's stream to
// out[0..n) and advances gen by n: the noise rsample adds to the logits of
// double samples (doubles in [-3.60, 36.74]) or of float samples (floats in
// [-3.13, 22.87]), identical on every instruction-set level. n = 0 writes
// nothing. Throws std::invalid_argument, writing nothing and leaving gen as it
// was, when n is negative, fewer than n elements are left in the stream, or
// out is null (n > 0).
inline void gumbel_noise(Philox& gen, int64_t n, double* out) {
    detail::RELAXCAT_ISA_NAMESPACE::check_noise_call("gumbel_noise", gen, n, out);
    if (n == 0) return;
    const uint64_t first = gen.advance(static_cast<uint64_t>(n));
    detail::RELAXCAT_ISA_NAMESPACE::fill_gumbels(gen.key(), gen.stream(), first, n,
                                                 out);
}

inline void gumbel_noise(Philox& gen, int64_t n, float* out) {
    detail::RELAXCAT_ISA_NAMESPACE::check_noise_call("gumbel_noise", gen, n, out);
    if (n == 0) return;
    const uint64_t first = gen.advance(static_cast<uint64_t>(n));
    detail::RELAXCAT_ISA_NAMESPACE::fill_gumbels_f32(gen.key(), gen.stream(), first, n,
                                                     out);
}

}  // namespace RELAXCAT_ISA_NAMESPACE
}  // namespace relaxcat
