// The C++ API reproduces the Python module's noise and samples for the same key,
// stream and offset (tests/data/golden_samples.json, written by
// tests/data/make_golden.py at the baseline level).
//
// The noise is identical at every instruction-set level by design, so it is
// compared bit for bit always. The samples are promised bit for bit when this
// test is built for the level the golden file was made at: default flags on
// x86-64 (SSE2), which is how .ci/cpp.sh builds it. Built with -mavx2 or
// -mavx512f they are compared within a float ulp instead (they have been equal
// in practice: the kernels form no fused or reordered sums).

#include <gtest/gtest.h>

#include <relaxcat/relaxcat.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

#if defined(__AVX2__) || defined(__AVX512F__) || defined(__FMA__)
constexpr bool kSameLevelAsGolden = false;
#else
constexpr bool kSameLevelAsGolden = true;
#endif

template <class Real>
std::vector<std::string> hex_words(const std::vector<Real>& v) {
    using Word = std::conditional_t<sizeof(Real) == 4, uint32_t, uint64_t>;
    std::vector<std::string> out;
    char buf[32];
    for (Real x : v) {
        Word w;
        std::memcpy(&w, &x, sizeof w);
        std::snprintf(buf, sizeof buf, sizeof(Real) == 4 ? "%08llx" : "%016llx",
                      static_cast<unsigned long long>(w));
        out.emplace_back(buf);
    }
    return out;
}

template <class Real>
Real from_hex(const std::string& s) {
    using Word = std::conditional_t<sizeof(Real) == 4, uint32_t, uint64_t>;
    const Word w = static_cast<Word>(std::stoull(s, nullptr, 16));
    Real x;
    std::memcpy(&x, &w, sizeof x);
    return x;
}

const nlohmann::json& golden() {
    static const nlohmann::json g = relaxcat_test::load_json("golden_samples.json");
    return g;
}

// The double noise ("noise") and the float noise ("noise32") of each case.
template <class Real>
void check_noise(const char* field) {
    ASSERT_FALSE(golden()[field].empty());
    for (const auto& c : golden()[field]) {
        relaxcat::Philox gen(c["key"].get<uint64_t>(), c["stream"].get<uint64_t>(),
                             c["first"].get<uint64_t>());
        std::vector<Real> noise(c["count"].get<size_t>());
        relaxcat::gumbel_noise(gen, static_cast<int64_t>(noise.size()), noise.data());
        EXPECT_EQ(hex_words(noise), c["bits"].get<std::vector<std::string>>())
            << field << " key " << c["key"] << " stream " << c["stream"] << " first "
            << c["first"];
    }
}

TEST(Golden, NoiseIsBitIdenticalToThePythonModule) {
    check_noise<double>("noise");
}

TEST(Golden, FloatNoiseIsBitIdenticalToThePythonModule) {
    check_noise<float>("noise32");
}

// Two successive calls of `draws` rows against one Python call of 2 draws.
template <class Dist>
void check_samples(const nlohmann::json& c, const char* name) {
    using Real = typename Dist::value_type;
    const std::vector<Real> values =
        relaxcat_test::as<Real>(relaxcat_test::numbers(c["values"]));
    const std::vector<Real> temps =
        relaxcat_test::as<Real>(relaxcat_test::numbers(c["temperature"]));
    const int64_t rows = static_cast<int64_t>(c["values"].size());
    const int64_t k = static_cast<int64_t>(values.size()) / rows;
    const relaxcat::MatrixView<const Real> param(values.data(), rows, k);
    const relaxcat::VectorView<const Real> t(temps.data(),
                                             static_cast<int64_t>(temps.size()));
    const Dist d = c["param"] == "probs" ? Dist(t, relaxcat::probs(param))
                                         : Dist(t, relaxcat::logits(param));

    const int64_t draw_rows = c["draws"].get<int64_t>() * d.batch_rows();
    std::vector<Real> sample(static_cast<size_t>(2 * draw_rows * k));
    relaxcat::Philox gen(c["key"].get<uint64_t>(), c["stream"].get<uint64_t>());
    d.rsample(relaxcat::MatrixView<Real>(sample.data(), draw_rows, k), gen);
    d.rsample(relaxcat::MatrixView<Real>(sample.data() + draw_rows * k, draw_rows, k),
              gen);
    EXPECT_EQ(gen.offset(), static_cast<uint64_t>(2 * draw_rows * k));

    const auto want = c[name].get<std::vector<std::string>>();
    ASSERT_EQ(want.size(), sample.size());
    if (kSameLevelAsGolden) {
        EXPECT_EQ(hex_words(sample), want)
            << name << " " << c["dtype"] << " rng " << c["rng"];
    } else {
        for (size_t i = 0; i < want.size(); ++i) {
            const Real w = from_hex<Real>(want[i]);
            if (std::isinf(w)) {
                EXPECT_EQ(sample[i], w);
            } else {
                EXPECT_NEAR(sample[i], w,
                            2 * std::numeric_limits<float>::epsilon() *
                                std::max<Real>(1, std::abs(w)));
            }
        }
    }
}

TEST(Golden, SamplesMatchThePythonModuleForTheSameKeyAndStream) {
    ASSERT_FALSE(golden()["samples"].empty());
    for (const auto& c : golden()["samples"]) {
        if (c["dtype"] == "float32") {
            check_samples<relaxcat::RelaxedOneHotCategorical<float>>(c, "x");
            check_samples<relaxcat::ExpRelaxedOneHotCategorical<float>>(c, "log_x");
        } else {
            check_samples<relaxcat::RelaxedOneHotCategorical<double>>(c, "x");
            check_samples<relaxcat::ExpRelaxedOneHotCategorical<double>>(c, "log_x");
        }
    }
}

}  // namespace
