// Bad arguments throw std::invalid_argument naming the function, the argument,
// the value seen and the expectation; inputs are left unmodified and outputs
// untouched.

#include <gtest/gtest.h>

#include <relaxcat/relaxcat.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using relaxcat::ExpRelaxedOneHotCategorical;
using relaxcat::MatrixView;
using relaxcat::Philox;
using relaxcat::RelaxedOneHotCategorical;
using relaxcat::VectorView;
using Dist = RelaxedOneHotCategorical<double>;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNan = std::numeric_limits<double>::quiet_NaN();

// Runs f, expects std::invalid_argument, and returns its message.
template <class F>
std::string message_of(F f) {
    try {
        f();
    } catch (const std::invalid_argument& e) {
        return e.what();
    } catch (...) {
        return "<another exception>";
    }
    return "<no exception>";
}

#define EXPECT_MESSAGE(call, text) \
    EXPECT_EQ(message_of([&] { call; }), std::string(text))

const std::vector<double> kLogits = {0.0, 1.0, -1.0, 2.0, 0.5, -kInf};

Dist two_rows() {
    return Dist(0.5, relaxcat::logits(MatrixView<const double>(kLogits.data(), 2, 3)));
}

TEST(Errors, ViewsOfMoreElementsThanABufferHoldsAreRefused) {
    // Zero strides let a view name more elements than memory holds; the
    // distribution copies its parameter and keeps a status per value row, so
    // such a view is refused by name (it had ended in std::length_error).
    const double one = 0.25;
    const int64_t huge = std::numeric_limits<int64_t>::max() / 2;
    const std::string limit = std::to_string(PTRDIFF_MAX / 8);
    EXPECT_MESSAGE(
        Dist(0.5, relaxcat::logits(MatrixView<const double>(&one, 1, huge, 0, 0))),
        "RelaxedOneHotCategorical: logits is too large: (1, " + std::to_string(huge) +
            ") is more elements than a buffer can hold (" + limit + ")");
    EXPECT_MESSAGE(
        Dist(0.5, relaxcat::probs(MatrixView<const double>(&one, huge, 4, 0, 0))),
        "RelaxedOneHotCategorical: probs is too large: (" + std::to_string(huge) +
            ", 4) is more elements than a buffer can hold (" + limit + ")");
    // A value of (2^61, 3) rows read from one row of three.
    const Dist d = two_rows();
    const std::vector<double> row = {0.25, 0.75, 0.0};
    double out = 0.0;
    const int64_t rows = int64_t{1} << 61;
    EXPECT_MESSAGE(d.log_prob(MatrixView<const double>(row.data(), rows, 3, 0, 1),
                              VectorView<double>(&out, rows, 0)),
                   "RelaxedOneHotCategorical::log_prob: value is too large: (" +
                       std::to_string(rows) +
                       ", 3) is more elements than a buffer can hold (" + limit + ")");
    EXPECT_EQ(out, 0.0);
}

TEST(Errors, TemperatureMustBePositiveAndFinite) {
    const std::vector<double> t = {1.0, 2.0, 0.3, -0.5, kNan};
    const MatrixView<const double> lg(kLogits.data(), 1, 3);
    EXPECT_MESSAGE(
        Dist(VectorView<const double>(t.data(), 5), relaxcat::logits(lg)),
        "RelaxedOneHotCategorical: temperature must be positive and finite, got "
        "-0.5 at row 3 (2 entries in all)");
    EXPECT_MESSAGE(
        Dist(0.0, relaxcat::logits(lg)),
        "RelaxedOneHotCategorical: temperature must be positive and finite, got 0");
    EXPECT_MESSAGE(
        ExpRelaxedOneHotCategorical<float>(std::numeric_limits<float>::infinity(),
                                           relaxcat::logits(MatrixView<const float>(
                                               std::vector<float>{1, 2}.data(), 1, 2))),
        "ExpRelaxedOneHotCategorical: temperature must be positive and finite, "
        "got inf");
    EXPECT_EQ(t[3], -0.5);
    // A null pointer is named as such, not as an empty temperature (a
    // fresh-user review saw "must hold at least one value, got 2").
    EXPECT_MESSAGE(Dist(VectorView<const double>(nullptr, 2), relaxcat::logits(lg)),
                   "RelaxedOneHotCategorical: temperature must not have a null data "
                   "pointer");
}

// From a fresh-user review: gumbel_noise into a null pointer crashed, and
// Philox::advance past the stream's end wrapped around silently.
TEST(Errors, NoiseNeedsAPlaceToGoAndAdvanceStaysInTheStream) {
    Philox gen(1);
    EXPECT_MESSAGE(relaxcat::gumbel_noise(gen, 4, static_cast<double*>(nullptr)),
                   "gumbel_noise: out must not be null for a draw of 4 elements");
    EXPECT_MESSAGE(relaxcat::gumbel_noise(gen, 3, static_cast<float*>(nullptr)),
                   "gumbel_noise: out must not be null for a draw of 3 elements");
    EXPECT_EQ(gen.offset(), 0u);
    relaxcat::gumbel_noise(gen, 0, static_cast<double*>(nullptr));  // nothing to write

    Philox end(1, 0, ~uint64_t{0} - 1);  // two elements left
    EXPECT_MESSAGE(end.advance(5),
                   "Philox::advance: n must fit in the rest of the stream (2^64 "
                   "elements), got 5 at offset 18446744073709551614");
    EXPECT_EQ(end.offset(), ~uint64_t{0} - 1);
    EXPECT_EQ(end.advance(2), ~uint64_t{0} - 1);
    EXPECT_TRUE(end.exhausted());
    EXPECT_MESSAGE(end.advance(1),
                   "Philox::advance: n must fit in the rest of the stream (2^64 "
                   "elements), got 1 with the stream used up");
    EXPECT_EQ(end.advance(0), 0u);
}

TEST(Errors, LogitsMustBeFiniteOrMinusInfWithALiveCategory) {
    const std::vector<double> nan_at = {0.0, 1.0, 2.0, kNan};
    EXPECT_MESSAGE(
        Dist(1.0, relaxcat::logits(MatrixView<const double>(nan_at.data(), 2, 2))),
        "RelaxedOneHotCategorical: logits must be finite or -inf (a masked "
        "category), got nan at row 1, category 1");
    const std::vector<double> plus_inf = {kInf, 0.0};
    EXPECT_MESSAGE(
        Dist(1.0, relaxcat::logits(MatrixView<const double>(plus_inf.data(), 1, 2))),
        "RelaxedOneHotCategorical: logits must be finite or -inf (a masked "
        "category), got inf at row 0, category 0");
    const std::vector<double> dead = {0.0, 1.0, -kInf, -kInf};
    EXPECT_MESSAGE(
        Dist(1.0, relaxcat::logits(MatrixView<const double>(dead.data(), 2, 2))),
        "RelaxedOneHotCategorical: logits must leave at least one category "
        "possible in every row, got a row of all -inf at row 1");
    const std::vector<double> wide = {0.0, 1.0, 1e308, -1e308};
    EXPECT_MESSAGE(
        Dist(1.0, relaxcat::logits(MatrixView<const double>(wide.data(), 2, 2))),
        "RelaxedOneHotCategorical: logits must differ by less than the largest "
        "double within a row (mask a category with -inf instead), got largest "
        "1e+308 and smallest -1e+308 at row 1");
    EXPECT_MESSAGE(
        Dist(1.0, relaxcat::logits(MatrixView<const double>(dead.data(), 2, 0))),
        "RelaxedOneHotCategorical: logits must have at least one category per "
        "row, got 0 columns");
    EXPECT_MESSAGE(
        Dist(1.0, relaxcat::logits(MatrixView<const double>(nullptr, 2, 2))),
        "RelaxedOneHotCategorical: logits must not have a null data pointer");
    EXPECT_TRUE(std::isnan(nan_at[3]));

    // Strides whose farthest element is beyond what a pointer can span had been
    // read past the caller's buffer (a fresh-user review); the largest that
    // still can, and negative ones, are taken as given.
    const int64_t big = std::numeric_limits<int64_t>::max() / 2;
    EXPECT_MESSAGE(
        Dist(1.0,
             relaxcat::logits(MatrixView<const double>(wide.data(), 2, 2, big, 1))),
        "RelaxedOneHotCategorical: logits must have strides that stay within memory, "
        "got (4611686018427387903, 1) for shape (2, 2)");
    EXPECT_MESSAGE(
        Dist(1.0, relaxcat::logits(MatrixView<const double>(
                      wide.data(), 2, 2, 1, std::numeric_limits<int64_t>::min()))),
        "RelaxedOneHotCategorical: logits must have strides that stay within "
        "memory, got (1, -9223372036854775808) for shape (2, 2)");
    const std::vector<double> flat = {0.0, 1.0, 2.0, 3.0};
    const Dist reversed(
        1.0, relaxcat::logits(MatrixView<const double>(flat.data() + 3, 2, 2, -2, -1)));
    const Dist one_row(1.0, relaxcat::logits(MatrixView<const double>(
                                flat.data(), 1, 4, big, 1)));  // one row: never stepped
    EXPECT_EQ(one_row.batch_rows(), 1);
    EXPECT_EQ(reversed.batch_rows(), 2);
    // INT64_MIN has no magnitude, even as the stride of a single row.
    EXPECT_MESSAGE(
        Dist(1.0, relaxcat::logits(MatrixView<const double>(
                      flat.data(), 1, 4, std::numeric_limits<int64_t>::min(), 1))),
        "RelaxedOneHotCategorical: logits must have strides that stay within "
        "memory, got (-9223372036854775808, 1) for shape (1, 4)");
    // The end of the farthest element must be addressable too (a review: the
    // farthest element itself at the limit had overflowed the extent).
    const int64_t at_limit = std::numeric_limits<int64_t>::max() / 8;
    EXPECT_MESSAGE(Dist(1.0, relaxcat::logits(MatrixView<const double>(
                                 flat.data(), 2, 2, at_limit, 1))),
                   "RelaxedOneHotCategorical: logits must have strides that stay "
                   "within memory, got "
                   "(1152921504606846975, 1) for shape (2, 2)");

    // The temperature and the grad_temperature output are views too (a review:
    // both had skipped the check and crashed).
    const std::vector<double> temps = {0.5, 2.0};
    const int64_t far = (int64_t{1} << 61) + (int64_t{1} << 58);
    EXPECT_MESSAGE(Dist(VectorView<const double>(temps.data(), 2, far),
                        relaxcat::logits(MatrixView<const double>(wide.data(), 2, 2))),
                   "RelaxedOneHotCategorical: temperature must have strides that stay "
                   "within memory, got (2594073385365405696, 1) for shape (2, 1)");
    const Dist two(VectorView<const double>(temps.data(), 2),
                   relaxcat::logits(MatrixView<const double>(flat.data(), 2, 2)));
    const std::vector<double> xv = {0.25, 0.75, 0.5, 0.5}, gv = {1.0, 0.0, 0.0, 1.0};
    std::vector<double> gt(2, 7.0);
    EXPECT_MESSAGE(
        two.rsample_vjp(MatrixView<const double>(xv.data(), 2, 2),
                        MatrixView<const double>(gv.data(), 2, 2), MatrixView<double>(),
                        VectorView<double>(gt.data(), 2, far)),
        "RelaxedOneHotCategorical::rsample_vjp: grad_temperature must have "
        "strides that stay within memory, got (2594073385365405696, 1) for "
        "shape (2, 1)");
    EXPECT_EQ(gt, std::vector<double>(2, 7.0));
}

TEST(Errors, ProbsMustBeNonNegativeWithAPositiveSum) {
    const std::vector<double> negative = {0.5, -0.1, 0.6};
    EXPECT_MESSAGE(
        Dist(1.0, relaxcat::probs(MatrixView<const double>(negative.data(), 1, 3))),
        "RelaxedOneHotCategorical: probs must be non-negative and finite, got "
        "-0.1 at row 0, category 1");
    const std::vector<double> zero_row = {0.5, 0.5, 0.0, 0.0};
    EXPECT_MESSAGE(
        Dist(1.0, relaxcat::probs(MatrixView<const double>(zero_row.data(), 2, 2))),
        "RelaxedOneHotCategorical: probs must have a positive sum in "
        "every row, got sum 0 at row 1");
}

TEST(Errors, ProbsWhoseSumOverflowsAreNormalised) {
    // Note [probs of any scale]: the row is scaled by its largest entry.
    const std::vector<double> huge = {1e308, 1e308, 5e307};
    const Dist d(1.0, relaxcat::probs(MatrixView<const double>(huge.data(), 1, 3)));
    std::vector<double> p(3);
    d.probs(MatrixView<double>(p.data(), 1, 3));
    EXPECT_DOUBLE_EQ(p[0], 0.4);
    EXPECT_DOUBLE_EQ(p[1], 0.4);
    EXPECT_DOUBLE_EQ(p[2], 0.2);
}

TEST(Errors, ShapesMustMatch) {
    const std::vector<double> t = {1.0, 2.0, 3.0};
    EXPECT_MESSAGE(
        Dist(VectorView<const double>(t.data(), 3),
             relaxcat::logits(MatrixView<const double>(kLogits.data(), 2, 3))),
        "RelaxedOneHotCategorical: temperature must have 1 value or one per row "
        "of logits (2), got 3");
    const Dist d = two_rows();
    std::vector<double> out(9, 7.0);
    Philox gen(1);
    EXPECT_MESSAGE(
        d.rsample(MatrixView<double>(out.data(), 3, 3), gen),
        "RelaxedOneHotCategorical::rsample: out must have a multiple of the batch "
        "rows (2) as its rows, got 3");
    EXPECT_MESSAGE(d.rsample(MatrixView<double>(out.data(), 2, 4), gen),
                   "RelaxedOneHotCategorical::rsample: out must have 3 columns (the "
                   "categories), got 4");
    EXPECT_EQ(gen.offset(), 0u) << "a failed call must not consume the stream";
    EXPECT_EQ(out, std::vector<double>(9, 7.0));

    // A draw past the stream's last element (after a seek near 2^64) is an
    // error; the SIMD levels had disagreed on the noise past the end.
    Philox late(1, 0, ~uint64_t{0} - 2);  // 3 elements remain
    EXPECT_TRUE(late.holds(3));
    EXPECT_FALSE(late.holds(4));
    EXPECT_MESSAGE(d.rsample(MatrixView<double>(out.data(), 2, 3), late),
                   "RelaxedOneHotCategorical::rsample: gen must hold this draw of 6 "
                   "elements, got offset 18446744073709551613, past which the stream "
                   "has only 3 (a stream has 2^64 elements)");
    EXPECT_EQ(late.offset(), ~uint64_t{0} - 2);
    EXPECT_EQ(out, std::vector<double>(9, 7.0));

    // A draw that ends at the last element uses the stream up. The offset is 0
    // again, and a later draw had silently started the stream over (a
    // fresh-user review); now it is an error until a seek.
    Philox last(1, 0, ~uint64_t{0} - 5);  // 6 elements remain
    d.rsample(MatrixView<double>(out.data(), 2, 3), last);
    EXPECT_EQ(last.offset(), 0u);
    EXPECT_TRUE(last.exhausted());
    EXPECT_TRUE(last.holds(0));
    EXPECT_FALSE(last.holds(1));
    const std::vector<double> drawn(out.begin(), out.begin() + 6);
    EXPECT_MESSAGE(d.rsample(MatrixView<double>(out.data(), 2, 3), last),
                   "RelaxedOneHotCategorical::rsample: gen must hold this draw of 6 "
                   "elements, got a stream already used up (a draw ended at its last "
                   "element, 2^64 - 1; seek to draw from it again)");
    std::vector<double> g(2, 7.0);
    EXPECT_MESSAGE(
        relaxcat::gumbel_noise(last, 2, g.data()),
        "gumbel_noise: gen must hold this draw of 2 elements, got a "
        "stream already used up (a draw ended at its last element, 2^64 - 1; "
        "seek to draw from it again)");
    EXPECT_MESSAGE(
        relaxcat::gumbel_noise(last, 1, g.data()),
        "gumbel_noise: gen must hold this draw of 1 element, got a "
        "stream already used up (a draw ended at its last element, 2^64 - 1; "
        "seek to draw from it again)");
    EXPECT_EQ(g, std::vector<double>(2, 7.0));
    EXPECT_EQ(std::vector<double>(out.begin(), out.begin() + 6), drawn);
    relaxcat::gumbel_noise(last, 0, g.data());  // nothing to draw is not an error
    last.seek(~uint64_t{0} - 5);
    EXPECT_FALSE(last.exhausted());
    d.rsample(MatrixView<double>(out.data(), 2, 3), last);
    EXPECT_EQ(std::vector<double>(out.begin(), out.begin() + 6), drawn);

    const std::vector<double> x = {0.2, 0.3, 0.5, 0.4, 0.6, 0.0};
    std::vector<double> lp(3);
    EXPECT_MESSAGE(
        d.log_prob(MatrixView<const double>(x.data(), 2, 3),
                   VectorView<double>(lp.data(), 3)),
        "RelaxedOneHotCategorical::log_prob: out must have 2 entries (one per "
        "value row), got 3");
    std::vector<double> gp(3), gt(1);
    EXPECT_MESSAGE(
        d.rsample_vjp(MatrixView<const double>(x.data(), 2, 3),
                      MatrixView<const double>(x.data(), 2, 3),
                      MatrixView<double>(gp.data(), 1, 3),
                      VectorView<double>(gt.data(), 1)),
        "RelaxedOneHotCategorical::rsample_vjp: grad_param (logits) must have "
        "the parameter's shape (2, 3), got (1, 3)");
    EXPECT_MESSAGE(
        d.log_prob(MatrixView<const double>(x.data(), 2, 3),
                   VectorView<double>(lp.data(), 2), -1),
        "RelaxedOneHotCategorical::log_prob: num_threads must be 0 (all hardware "
        "threads) or positive, got -1");
}

// 4 K eps of float is 0.019 at K = 40000; the tolerance is capped at 1/64, as in
// the Python package, so a row 1.7% off is not a point on the simplex.
TEST(Errors, TheSumToleranceIsCappedForVeryLongRows) {
    const int64_t k = 40000;
    std::vector<float> lg(k, 0.0f), x(k, 1.017f / static_cast<float>(k));
    const relaxcat::RelaxedOneHotCategorical<float> d(
        0.5f, relaxcat::logits(MatrixView<const float>(lg.data(), 1, k)));
    std::vector<float> lp(1, 7.0f);
    const std::string m = message_of([&] {
        d.log_prob(MatrixView<const float>(x.data(), 1, k),
                   VectorView<float>(lp.data(), 1));
    });
    EXPECT_NE(m.find("must sum to 1 over each row within 0.015625"), std::string::npos)
        << m;
    EXPECT_EQ(lp[0], 7.0f);
}

TEST(Errors, ValuesMustLieOnTheSupportWhenValidating) {
    const Dist d = two_rows();
    std::vector<double> lp(2, 7.0);
    const VectorView<double> out(lp.data(), 2);
    const std::vector<double> off = {0.2, 0.3, 0.6, 0.4, 0.6, 0.0};
    EXPECT_MESSAGE(
        d.log_prob(MatrixView<const double>(off.data(), 2, 3), out),
        "RelaxedOneHotCategorical::log_prob: value must sum to 1 over each row "
        "within 1e-06, got 1.1 at row 0");
    const std::vector<double> masked = {0.2, 0.3, 0.5, 0.4, 0.5, 0.1};
    EXPECT_MESSAGE(d.log_prob(MatrixView<const double>(masked.data(), 2, 3), out),
                   "RelaxedOneHotCategorical::log_prob: value must be 0 on masked "
                   "categories (logit -inf), which have probability zero; got 0.1 "
                   "at row 1, category 2");
    const std::vector<double> negative = {1.2, -0.2, 0.0, 0.4, 0.6, 0.0};
    EXPECT_MESSAGE(d.log_prob(MatrixView<const double>(negative.data(), 2, 3), out),
                   "RelaxedOneHotCategorical::log_prob: value must be non-negative and "
                   "finite (a point on the simplex), got -0.2 at row 0, "
                   "category 1");
    EXPECT_EQ(lp, std::vector<double>(2, 7.0));

    // Without validation the same call computes the density of the off-simplex point.
    const Dist lax(
        0.5, relaxcat::logits(MatrixView<const double>(kLogits.data(), 2, 3)), false);
    EXPECT_NO_THROW(lax.log_prob(MatrixView<const double>(off.data(), 2, 3), out));

    const std::vector<double> y = {std::log(0.5), std::log(0.5), kNan};
    const ExpRelaxedOneHotCategorical<double> e(
        1.0, relaxcat::logits(MatrixView<const double>(kLogits.data(), 1, 3)));
    EXPECT_MESSAGE(
        e.log_prob(MatrixView<const double>(y.data(), 1, 3),
                   VectorView<double>(lp.data(), 1)),
        "ExpRelaxedOneHotCategorical::log_prob: value must be the log of a point "
        "on the simplex (finite or -inf), got nan at row 0, category 2");
}

// The support check runs over all rows on the threads asked for; the message
// names the first bad row of the call, wherever the threads' rows begin, and
// what is wrong in it.
TEST(Errors, ValidationNamesTheFirstBadRowOnAnyThreadCount) {
    const int64_t rows = 3000, k = 5;
    std::vector<double> lg(static_cast<size_t>(rows * k), 0.0);
    const Dist d(0.5, relaxcat::logits(MatrixView<const double>(lg.data(), rows, k)));
    std::vector<double> x(static_cast<size_t>(rows * k), 0.2);
    x[2345 * k + 1] = 0.3;  // row 2345 sums to 1.1
    x[2900 * k + 4] = kNan;
    std::vector<double> lp(rows, 7.0);
    for (int threads : {1, 2, 3, 8}) {
        EXPECT_MESSAGE(
            d.log_prob(MatrixView<const double>(x.data(), rows, k),
                       VectorView<double>(lp.data(), rows), threads),
            "RelaxedOneHotCategorical::log_prob: value must sum to 1 over each row "
            "within 1e-06, got 1.0999999999999999 at row 2345");
    }
    x[1200 * k] = -0.0;  // a signed zero is on the simplex
    x[700 * k + 3] = -kInf;
    EXPECT_MESSAGE(
        d.log_prob(MatrixView<const double>(x.data(), rows, k),
                   VectorView<double>(lp.data(), rows), 2),
        "RelaxedOneHotCategorical::log_prob: value must be non-negative and finite "
        "(a point on the simplex), got -inf at row 700, category 3");
    EXPECT_EQ(lp, std::vector<double>(rows, 7.0));
}

// The sum in the message is the one the check tested (its order of addition
// and its exp), so it lies outside the tolerance the message names. Around the
// edge of the tolerance a plain left-to-right sum (std::exp in log space) had
// put a rejected row's shown sum inside it (a review: double, K = 40, four ulps
// above (1 + 1e-6) / K in one entry).
template <class D>
void check_shown_sums_are_outside(int64_t k, bool log_space) {
    std::vector<double> lg(static_cast<size_t>(k), 0.0);
    const D d(1.0, relaxcat::logits(MatrixView<const double>(lg.data(), 1, k)));
    const double tol = 1e-6;
    double out = 0.0;
    int rejected = 0;
    for (int q = -60; q <= 60; ++q) {
        std::vector<double> x(static_cast<size_t>(k), (1.0 + tol) / k);
        for (int64_t j = 0; j < k; ++j)
            for (int n = 0; n < std::abs(q); ++n)
                x[j] = std::nextafter(x[j], q > 0 ? 2.0 : 0.0);
        if (log_space)
            for (double& v : x) v = std::log(v);
        const std::string m = message_of([&] {
            d.log_prob(MatrixView<const double>(x.data(), 1, k),
                       VectorView<double>(&out, 1));
        });
        if (m == "<no exception>") continue;
        ++rejected;
        const size_t at = m.find(", got ");
        ASSERT_NE(at, std::string::npos) << m;
        const double shown = std::stod(m.substr(at + 6));
        EXPECT_GT(std::abs(shown - 1.0), tol) << m;
    }
    EXPECT_GT(rejected, 0);
    EXPECT_LT(rejected, 121);
}

TEST(Errors, TheSumShownIsTheOneTested) {
    for (int64_t k : {5, 16, 17, 40, 1000}) {
        check_shown_sums_are_outside<Dist>(k, false);
        check_shown_sums_are_outside<ExpRelaxedOneHotCategorical<double>>(k, true);
    }
}

// param_op (logits(), probs()) writes an empty parameter through an empty view,
// whose data pointer may be null (an empty Eigen array's is).
TEST(Errors, AnEmptyParameterIsWrittenThroughAnEmptyView) {
    const Dist d(0.5, relaxcat::logits(MatrixView<const double>(nullptr, 0, 3)));
    EXPECT_NO_THROW(d.logits(MatrixView<double>(nullptr, 0, 3)));
    EXPECT_NO_THROW(d.probs(MatrixView<double>(nullptr, 0, 3)));
    EXPECT_MESSAGE(d.logits(MatrixView<double>(nullptr, 1, 3)),
                   "RelaxedOneHotCategorical::logits: out must not have a null data "
                   "pointer");
}

// The constructor checks its copy in one pass and names the first bad row.
TEST(Errors, ParametersNameTheirFirstBadRow) {
    std::vector<float> lg(4000 * 4, 0.5f);
    lg[3100 * 4 + 2] = std::numeric_limits<float>::infinity();
    lg[3500 * 4 + 1] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_MESSAGE(
        RelaxedOneHotCategorical<float>(
            1.0f, relaxcat::logits(MatrixView<const float>(lg.data(), 4000, 4))),
        "RelaxedOneHotCategorical: logits must be finite or -inf (a masked "
        "category), got inf at row 3100, category 2 (2 entries in all)");
    std::vector<float> q(4000 * 4, 0.25f);
    for (int j = 0; j < 4; ++j) q[2999 * 4 + j] = 0.0f;
    EXPECT_MESSAGE(
        RelaxedOneHotCategorical<float>(
            1.0f, relaxcat::probs(MatrixView<const float>(q.data(), 4000, 4))),
        "RelaxedOneHotCategorical: probs must have a positive sum in every row, got "
        "sum 0 at row 2999");
}

TEST(Errors, GumbelsMustBeFiniteAndOutputsMustNotOverlapInputs) {
    const Dist d = two_rows();
    std::vector<double> g = {0.1, 0.2, 0.3, 0.4, kInf, 0.6};
    std::vector<double> out(6);
    EXPECT_MESSAGE(
        d.rsample(MatrixView<const double>(g.data(), 2, 3),
                  MatrixView<double>(out.data(), 2, 3)),
        "RelaxedOneHotCategorical::rsample: gumbels must be finite, got inf at "
        "row 1, category 1");
    g[4] = 0.5;
    EXPECT_MESSAGE(
        d.rsample(MatrixView<const double>(g.data(), 2, 3),
                  MatrixView<double>(g.data() + 3, 1, 3)),
        "RelaxedOneHotCategorical::rsample: out must have a multiple of the batch "
        "rows (2) as its rows, got 1");
    EXPECT_MESSAGE(
        d.rsample(MatrixView<const double>(g.data(), 2, 3),
                  MatrixView<double>(g.data(), 2, 3)),
        "RelaxedOneHotCategorical::rsample: out must not share memory with gumbels");
}

// An output whose elements alias each other kept only the last value written to
// each address; and an output overlapping another output was called "an input"
// (both found by a fresh-user review).
// The Python layer refuses non-finite upstream gradients; the C++ classes had
// taken them and returned NaN gradients (a fresh-user review).
TEST(Errors, UpstreamGradientsMustBeFinite) {
    const Dist d = two_rows();
    const std::vector<double> x = {0.2, 0.3, 0.5, 0.2, 0.8, 0.0};
    std::vector<double> g = {1.0, 2.0, 3.0, 4.0, NAN, NAN};
    std::vector<double> gl(6), gt(2), lp(2), gv(6);
    EXPECT_MESSAGE(
        d.rsample_vjp(MatrixView<const double>(x.data(), 2, 3),
                      MatrixView<const double>(g.data(), 2, 3),
                      MatrixView<double>(gl.data(), 2, 3),
                      VectorView<double>(gt.data(), 2)),
        "RelaxedOneHotCategorical::rsample_vjp: grad must be finite, got nan "
        "at row 1, category 1 (2 entries in all)");
    const std::vector<double> row_grad = {1.0, -kInf};
    EXPECT_MESSAGE(d.log_prob_vjp(MatrixView<const double>(x.data(), 2, 3),
                                  VectorView<const double>(row_grad.data(), 2),
                                  MatrixView<double>(gv.data(), 2, 3),
                                  MatrixView<double>(gl.data(), 2, 3),
                                  VectorView<double>(gt.data(), 2)),
                   "RelaxedOneHotCategorical::log_prob_vjp: grad must be finite, got "
                   "-inf at row 1");
}

TEST(Errors, OutputsMustNotAliasThemselvesAndOverlapsNameTheOtherArgument) {
    const Dist d = two_rows();
    std::vector<double> out(6, -7.0), big(12);
    Philox gen(3);
    EXPECT_MESSAGE(d.rsample(MatrixView<double>(out.data(), 2, 3, 0, 1), gen),
                   "RelaxedOneHotCategorical::rsample: out must not have two elements "
                   "at one address, got shape (2, 3) with strides (0, 1)");
    EXPECT_MESSAGE(d.rsample(MatrixView<double>(out.data(), 2, 3, 2, 1), gen),
                   "RelaxedOneHotCategorical::rsample: out must not have two elements "
                   "at one address, got shape (2, 3) with strides (2, 1)");
    EXPECT_MESSAGE(d.rsample(MatrixView<double>(big.data(), 2, 3, 4, 2), gen),
                   "RelaxedOneHotCategorical::rsample: out must not have two elements "
                   "at one address, got shape (2, 3) with strides (4, 2)");
    EXPECT_EQ(out, std::vector<double>(6, -7.0));
    EXPECT_EQ(gen.offset(), 0u);
    // Column-major, reversed rows, and every other column of a wider buffer
    // (rows 5 apart, the last column of a row at 4) are fine.
    d.rsample(MatrixView<double>(out.data(), 2, 3, 1, 2), gen);
    d.rsample(MatrixView<double>(out.data() + 3, 2, 3, -3, 1), gen);
    d.rsample(MatrixView<double>(big.data(), 2, 3, 5, 2), gen);
    d.rsample(MatrixView<double>(big.data(), 2, 3, 1, 3), gen);

    const std::vector<double> x = {0.2, 0.3, 0.5, 0.6, 0.4, 0.0};
    const std::vector<double> g = {1.0, 2.0};
    std::vector<double> lp(2), gv(6), gp(6), gt(1);
    const MatrixView<const double> value(x.data(), 2, 3);
    const VectorView<const double> grad(g.data(), 2);
    EXPECT_MESSAGE(d.log_prob(value, VectorView<double>(lp.data(), 2, 0)),
                   "RelaxedOneHotCategorical::log_prob: out must not have two elements "
                   "at one address, got size 2 with stride 0");
    EXPECT_MESSAGE(
        d.log_prob_vjp(value, grad, MatrixView<double>(gv.data(), 2, 3, 0, 1),
                       MatrixView<double>(), VectorView<double>()),
        "RelaxedOneHotCategorical::log_prob_vjp: grad_value must not have "
        "two elements at one address, got shape (2, 3) with strides (0, 1)");
    EXPECT_MESSAGE(
        d.log_prob_vjp(value, grad, MatrixView<double>(gv.data(), 2, 3),
                       MatrixView<double>(gv.data(), 2, 3), VectorView<double>()),
        "RelaxedOneHotCategorical::log_prob_vjp: grad_param must not share "
        "memory with grad_value");
    EXPECT_MESSAGE(d.log_prob_vjp(value, grad, MatrixView<double>(),
                                  MatrixView<double>(gp.data(), 2, 3, 0, 1),
                                  VectorView<double>(gt.data(), 1)),
                   "RelaxedOneHotCategorical::log_prob_vjp: grad_param must not have "
                   "two elements at one address, got shape (2, 3) with strides (0, 1)");
}

// logits(out) and probs(out) took an out whose rows shared an address and kept
// only the last row written (a fresh-user review).
TEST(Errors, NormalisedParametersRefuseAnAliasedOut) {
    const Dist d = two_rows();
    std::vector<double> out(3, -7.0);
    EXPECT_MESSAGE(d.logits(MatrixView<double>(out.data(), 2, 3, 0, 1)),
                   "RelaxedOneHotCategorical::logits: out must not have two elements "
                   "at one address, got shape (2, 3) with strides (0, 1)");
    EXPECT_MESSAGE(d.probs(MatrixView<double>(out.data(), 2, 3, 0, 1)),
                   "RelaxedOneHotCategorical::probs: out must not have two elements "
                   "at one address, got shape (2, 3) with strides (0, 1)");
    EXPECT_EQ(out, std::vector<double>(3, -7.0));
}

// An output overlapping value or grad was said to share memory with "an input".
TEST(Errors, OverlapsWithInputsNameTheInput) {
    const Dist d = two_rows();
    std::vector<double> x = {0.2, 0.3, 0.5, 0.6, 0.4, 0.0};
    std::vector<double> g = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0};
    std::vector<double> gp(6), gt(2);
    const MatrixView<const double> value(x.data(), 2, 3);
    const MatrixView<const double> grad(g.data(), 2, 3);
    const VectorView<const double> row_grad(g.data(), 2);
    EXPECT_MESSAGE(d.rsample_vjp(value, grad, MatrixView<double>(x.data(), 2, 3),
                                 VectorView<double>()),
                   "RelaxedOneHotCategorical::rsample_vjp: grad_param must not share "
                   "memory with value");
    EXPECT_MESSAGE(d.rsample_vjp(value, grad, MatrixView<double>(gp.data(), 2, 3),
                                 VectorView<double>(g.data() + 4, 1)),
                   "RelaxedOneHotCategorical::rsample_vjp: grad_temperature must not "
                   "share memory with grad");
    EXPECT_MESSAGE(d.log_prob_vjp(value, row_grad, MatrixView<double>(x.data(), 2, 3),
                                  MatrixView<double>(), VectorView<double>()),
                   "RelaxedOneHotCategorical::log_prob_vjp: grad_value must not share "
                   "memory with value");
    EXPECT_MESSAGE(
        d.log_prob_vjp(value, row_grad, MatrixView<double>(),
                       MatrixView<double>(g.data(), 2, 3), VectorView<double>()),
        "RelaxedOneHotCategorical::log_prob_vjp: grad_param must not share "
        "memory with grad");
    EXPECT_MESSAGE(d.log_prob_and_vjp(value, row_grad, VectorView<double>(g.data(), 2),
                                      MatrixView<double>(gp.data(), 2, 3),
                                      MatrixView<double>(), VectorView<double>()),
                   "RelaxedOneHotCategorical::log_prob_and_vjp: out must not share "
                   "memory with grad");
    EXPECT_EQ(x, (std::vector<double>{0.2, 0.3, 0.5, 0.6, 0.4, 0.0}));
    EXPECT_EQ(g, (std::vector<double>{1.0, 2.0, 3.0, 4.0, 5.0, 6.0}));
}

}  // namespace

// validate_args names the first failing row, whatever kinds of failure later
// rows have: here row 1's sum comes before row 2's negative entry.
TEST(Errors, ValueErrorNamesTheFirstFailingRow) {
    const Dist d(0.5, relaxcat::logits(MatrixView<const double>(kLogits.data(), 1, 3)));
    const std::vector<double> x = {0.5, 0.25, 0.25, 0.5, 0.3, 0.1, -0.1, 0.6, 0.5};
    double out[3];
    const std::string m = message_of([&] {
        d.log_prob(MatrixView<const double>(x.data(), 3, 3),
                   VectorView<double>(out, 3));
    });
    EXPECT_EQ(
        m.rfind("RelaxedOneHotCategorical::log_prob: value must sum to 1 over each "
                "row within ",
                0),
        0u)
        << m;
    EXPECT_NE(m.find(" at row 1"), std::string::npos) << m;
}
