// Every case of the 60-digit references (tests/data/concrete_cases*.json), the
// same cases and bounds as tests/python/test_reference.py, through the C++ API.

#include <gtest/gtest.h>

#include <relaxcat/relaxcat.hpp>

#include <string>
#include <vector>

#include "support.hpp"

namespace {

using relaxcat::MatrixView;
using relaxcat::VectorView;
using relaxcat_test::as;
using relaxcat_test::numbers;
using relaxcat_test::rel_err;

// The accuracy the library promises (README, "Accuracy"), relative to
// max(1, |reference|).
constexpr double kLogProbTol64 = 1e-12;
constexpr double kLogProbTol32 = 1e-6;
constexpr double kSampleTol64 = 1e-10;
constexpr double kSampleTol32 = 1e-5;

struct CaseId {
    std::string file;
    std::string kind;  // log_prob, log_prob_y or rsample
    int index;
};

const nlohmann::json& cases(const std::string& file) {
    static const nlohmann::json small = relaxcat_test::load_json("concrete_cases.json");
    static const nlohmann::json extreme =
        relaxcat_test::load_json("concrete_cases_extreme.json");
    return file == "concrete_cases.json" ? small : extreme;
}

std::vector<CaseId> all_cases() {
    std::vector<CaseId> ids;
    for (const char* file : {"concrete_cases.json", "concrete_cases_extreme.json"})
        for (const char* kind : {"log_prob", "log_prob_y", "rsample"}) {
            const int n = static_cast<int>(cases(file)[kind].size());
            for (int i = 0; i < n; ++i) ids.push_back({file, kind, i});
        }
    return ids;
}

std::string case_name(const testing::TestParamInfo<CaseId>& info) {
    const std::string file =
        info.param.file == "concrete_cases.json" ? "cases" : "extreme";
    return file + "_" + info.param.kind + "_" + std::to_string(info.param.index);
}

// log_prob and its VJP (grad 1) of a value in the space of Dist.
template <class Dist>
void check_log_prob(const nlohmann::json& c, const char* value_key,
                    const char* grad_key) {
    using Real = typename Dist::value_type;
    const bool f64 = c["dtype"] == "float64";
    const std::vector<Real> lg = as<Real>(numbers(c["logits"]));
    const std::vector<Real> value = as<Real>(numbers(c[value_key]));
    const int64_t k = static_cast<int64_t>(lg.size());
    const Dist d(static_cast<Real>(relaxcat_test::number(c["temperature"])),
                 relaxcat::logits(MatrixView<const Real>(lg.data(), 1, k)));
    const MatrixView<const Real> v(value.data(), 1, k);

    std::vector<Real> lp(1);
    d.log_prob(v, VectorView<Real>(lp.data(), 1));
    EXPECT_LE(rel_err(lp, numbers(c["log_prob"])), f64 ? kLogProbTol64 : kLogProbTol32);

    const Real one = 1;
    std::vector<Real> gv(k), gl(k), gt(1);
    d.log_prob_vjp(v, VectorView<const Real>(&one, 1),
                   MatrixView<Real>(gv.data(), 1, k), MatrixView<Real>(gl.data(), 1, k),
                   VectorView<Real>(gt.data(), 1));
    const double tol = f64 ? kSampleTol64 : kSampleTol32;
    EXPECT_LE(rel_err(gl, numbers(c["grad_logits"])), tol);
    EXPECT_LE(rel_err(gt, numbers(c["grad_temperature"])), tol);
    EXPECT_LE(rel_err(gv, numbers(c[grad_key])), tol);
}

template <class Real>
void check_rsample(const nlohmann::json& c) {
    const double tol = c["dtype"] == "float64" ? kSampleTol64 : kSampleTol32;
    const std::vector<Real> lg = as<Real>(numbers(c["logits"]));
    const std::vector<Real> g = as<Real>(numbers(c["gumbels"]));
    const int64_t k = static_cast<int64_t>(lg.size());
    const Real t = static_cast<Real>(relaxcat_test::number(c["temperature"]));
    const auto logits = relaxcat::logits(MatrixView<const Real>(lg.data(), 1, k));
    const MatrixView<const Real> noise(g.data(), 1, k);

    const relaxcat::RelaxedOneHotCategorical<Real> d(t, logits);
    std::vector<Real> x(k), y(k);
    d.rsample(noise, MatrixView<Real>(x.data(), 1, k));
    EXPECT_LE(rel_err(x, numbers(c["x"])), tol);
    relaxcat::ExpRelaxedOneHotCategorical<Real>(t, logits).rsample(
        noise, MatrixView<Real>(y.data(), 1, k));
    EXPECT_LE(rel_err(y, numbers(c["log_x"])), tol);

    // The VJP is evaluated at the library's own sample, as a user would.
    const std::vector<Real> w = as<Real>(numbers(c["grad_x"]));
    std::vector<Real> gl(k), gt(1);
    d.rsample_vjp(MatrixView<const Real>(x.data(), 1, k),
                  MatrixView<const Real>(w.data(), 1, k),
                  MatrixView<Real>(gl.data(), 1, k), VectorView<Real>(gt.data(), 1));
    EXPECT_LE(rel_err(gl, numbers(c["grad_logits"])), tol);
    EXPECT_LE(rel_err(gt, numbers(c["grad_temperature"])), tol);
}

class Reference : public testing::TestWithParam<CaseId> {};

TEST_P(Reference, MatchesTheSixtyDigitReference) {
    const CaseId& id = GetParam();
    const nlohmann::json& c = cases(id.file)[id.kind][id.index];
    const bool f64 = c["dtype"] == "float64";
    if (id.kind == "log_prob") {
        if (f64)
            check_log_prob<relaxcat::RelaxedOneHotCategorical<double>>(c, "x",
                                                                       "grad_x");
        else
            check_log_prob<relaxcat::RelaxedOneHotCategorical<float>>(c, "x", "grad_x");
    } else if (id.kind == "log_prob_y") {
        if (f64)
            check_log_prob<relaxcat::ExpRelaxedOneHotCategorical<double>>(c, "log_x",
                                                                          "grad_log_x");
        else
            check_log_prob<relaxcat::ExpRelaxedOneHotCategorical<float>>(c, "log_x",
                                                                         "grad_log_x");
    } else if (f64) {
        check_rsample<double>(c);
    } else {
        check_rsample<float>(c);
    }
}

INSTANTIATE_TEST_SUITE_P(Cases, Reference, testing::ValuesIn(all_cases()), case_name);

}  // namespace
