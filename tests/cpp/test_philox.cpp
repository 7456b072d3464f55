// The generator: Random123's known-answer vectors bit for bit, and how the
// public Philox state moves between calls.

#include <gtest/gtest.h>

#include <relaxcat/relaxcat.hpp>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

uint32_t word(const nlohmann::json& j) {
    return static_cast<uint32_t>(std::stoul(j.get<std::string>(), nullptr, 16));
}

template <int Rounds>
void check_kat(const char* name) {
    const nlohmann::json kat = relaxcat_test::load_json("philox_kat.json");
    ASSERT_FALSE(kat[name].empty());
    for (const auto& v : kat[name]) {
        const std::array<uint32_t, 4> c = {word(v["counter"][0]), word(v["counter"][1]),
                                           word(v["counter"][2]),
                                           word(v["counter"][3])};
        const std::array<uint32_t, 2> k = {word(v["key"][0]), word(v["key"][1])};
        const std::array<uint32_t, 4> want = {
            word(v["output"][0]), word(v["output"][1]), word(v["output"][2]),
            word(v["output"][3])};
        EXPECT_EQ(relaxcat::philox4x32<Rounds>(c, k), want);
    }
}

TEST(Philox, TenRoundsMatchTheKnownAnswerVectors) {
    check_kat<10>("philox4x32_10");
}

TEST(Philox, SevenRoundsMatchTheKnownAnswerVectors) {
    check_kat<7>("philox4x32_7");
}

TEST(Philox, AdvanceReturnsTheFirstElementAndMovesPastTheDraw) {
    relaxcat::Philox gen(1, 2, 5);
    EXPECT_EQ(gen.advance(10), 5u);
    EXPECT_EQ(gen.offset(), 15u);
    gen.seek(0);
    EXPECT_EQ(gen.offset(), 0u);
    EXPECT_EQ(gen.key(), 1u);
    EXPECT_EQ(gen.stream(), 2u);
}

TEST(Philox, SuccessiveNoiseDrawsContinueOneStream) {
    relaxcat::Philox one(77, 3), two(77, 3);
    std::vector<double> whole(11), first(4), rest(7);
    relaxcat::gumbel_noise(one, 11, whole.data());
    relaxcat::gumbel_noise(two, 4, first.data());
    relaxcat::gumbel_noise(two, 7, rest.data());
    first.insert(first.end(), rest.begin(), rest.end());
    EXPECT_EQ(first, whole);
    EXPECT_EQ(one.offset(), 11u);
}

TEST(Philox, NoiseThatWouldRunPastTheStreamThrowsAndLeavesTheGeneratorAsItWas) {
    // Two elements are left; a draw of five had wrapped around to the start of
    // the counter (a fresh-user review), so that the next draw repeated elements.
    const uint64_t near_end = ~uint64_t{0} - 1;
    relaxcat::Philox gen(7, 0, near_end);
    std::vector<double> d(5, -1.0);
    std::vector<float> f(5, -1.0f);
    EXPECT_THROW(relaxcat::gumbel_noise(gen, 5, d.data()), std::invalid_argument);
    EXPECT_THROW(relaxcat::gumbel_noise(gen, 3, f.data()), std::invalid_argument);
    EXPECT_EQ(gen.offset(), near_end);
    EXPECT_EQ(d, std::vector<double>(5, -1.0));
    EXPECT_EQ(f, std::vector<float>(5, -1.0f));
    try {
        relaxcat::gumbel_noise(gen, 5, d.data());
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("gumbel_noise: gen must hold this draw "
                                             "of 5 elements, got offset"),
                  std::string::npos)
            << e.what();
    }
    // The two that are left can be drawn.
    EXPECT_NO_THROW(relaxcat::gumbel_noise(gen, 2, d.data()));
}

TEST(Philox, ANegativeNoiseCountThrowsAndZeroDrawsNothing) {
    // A negative count had been taken as "nothing to draw" (a fresh-user review).
    relaxcat::Philox gen(7, 0, 3);
    std::vector<double> d(2, -1.0);
    std::vector<float> f(2, -1.0f);
    try {
        relaxcat::gumbel_noise(gen, -1, d.data());
        ADD_FAILURE() << "no exception";
    } catch (const std::invalid_argument& e) {
        EXPECT_EQ(std::string(e.what()),
                  "gumbel_noise: n must be non-negative, got -1");
    }
    EXPECT_THROW(relaxcat::gumbel_noise(gen, -5, f.data()), std::invalid_argument);
    relaxcat::gumbel_noise(gen, 0, d.data());
    relaxcat::gumbel_noise(gen, 0, f.data());
    EXPECT_EQ(gen.offset(), 3u);
    EXPECT_EQ(d, std::vector<double>(2, -1.0));
    EXPECT_EQ(f, std::vector<float>(2, -1.0f));
}

TEST(Philox, SuccessiveSamplesDifferAndStreamsSeparateCalls) {
    const std::vector<double> lg = {0.0, 1.0, -1.0};
    const relaxcat::RelaxedOneHotCategorical<double> d(
        1.0, relaxcat::logits(relaxcat::MatrixView<const double>(lg.data(), 1, 3)));
    relaxcat::Philox gen(5), other_stream(5, 1);
    std::vector<double> a(3), b(3), c(3);
    d.rsample(relaxcat::MatrixView<double>(a.data(), 1, 3), gen);
    d.rsample(relaxcat::MatrixView<double>(b.data(), 1, 3), gen);
    d.rsample(relaxcat::MatrixView<double>(c.data(), 1, 3), other_stream);
    EXPECT_NE(a, b);
    EXPECT_NE(a, c);
    EXPECT_EQ(gen.offset(), 6u);
}

}  // namespace
