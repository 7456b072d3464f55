// The Eigen overloads (relaxcat/eigen.hpp) give what the view API gives.

#include <gtest/gtest.h>

#include <cstddef>
#include <stdexcept>
#include <string>

#include <relaxcat/eigen.hpp>
#include <relaxcat/relaxcat.hpp>

namespace {

namespace eig = relaxcat::eigen;

TEST(Eigen, OverloadsMatchTheViewApi) {
    eig::RowArray<double> lg(2, 3);
    lg << 0.5, -1.0, 2.0, 0.0, 0.1, -0.2;
    const relaxcat::RelaxedOneHotCategorical<double> d(0.7, eig::logits(lg));

    relaxcat::Philox a(6), b(6);
    const eig::RowArray<double> x = eig::rsample(d, 3, a);
    ASSERT_EQ(x.rows(), 6);
    std::vector<double> want(18);
    d.rsample(relaxcat::MatrixView<double>(want.data(), 6, 3), b);
    for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 3; ++j) EXPECT_EQ(x(i, j), want[i * 3 + j]);

    const eig::ColumnArray<double> lp = eig::log_prob(d, x);
    std::vector<double> lpw(6);
    d.log_prob(relaxcat::MatrixView<const double>(want.data(), 6, 3),
               relaxcat::VectorView<double>(lpw.data(), 6));
    for (int i = 0; i < 6; ++i) EXPECT_EQ(lp(i), lpw[i]);

    const auto g = eig::rsample_vjp(d, x, eig::RowArray<double>::Ones(6, 3));
    EXPECT_EQ(g.param.rows(), 2);
    EXPECT_EQ(g.temperature.size(), 1);
    // sum(x) = 1 for every sample, so the gradient of sum(1 * x) vanishes.
    EXPECT_NEAR(g.param.abs().maxCoeff(), 0.0, 1e-14);

    const auto h = eig::log_prob_vjp(d, x, eig::ColumnArray<double>::Ones(6));
    EXPECT_EQ(h.value.rows(), 6);
    EXPECT_TRUE(h.param.allFinite());
}

// A negative draw count was an Eigen assertion (an abort without NDEBUG) or,
// with NDEBUG, a message about an out the caller never passed (a fresh-user
// review).
TEST(Eigen, RsampleRefusesABadDrawCount) {
    const eig::RowArray<double> logits = eig::RowArray<double>::Zero(3, 4);
    const relaxcat::RelaxedOneHotCategorical<double> d(0.5, eig::logits(logits));
    relaxcat::Philox gen(1);
    for (const Eigen::Index n : {Eigen::Index(-1), PTRDIFF_MAX / 2}) {
        try {
            eig::rsample(d, n, gen);
            ADD_FAILURE() << "n = " << n << " was accepted";
        } catch (const std::invalid_argument& e) {
            EXPECT_EQ(std::string(e.what()),
                      "relaxcat::eigen::rsample: n (the number of draws) must be in "
                      "[0, " +
                          std::to_string(PTRDIFF_MAX / 8 / 3) + "], got " +
                          std::to_string(n));
        }
    }
    EXPECT_EQ(gen.offset(), 0u);
    EXPECT_EQ(eig::rsample(d, 0, gen).rows(), 0);
}

// The overload with explicit noise sizes its output from the noise, and a bad
// noise shape was reported as the shape of an out the caller never passed.
TEST(Eigen, RsampleNamesBadGumbels) {
    const eig::RowArray<double> logits = eig::RowArray<double>::Zero(3, 4);
    const relaxcat::RelaxedOneHotCategorical<double> d(0.5, eig::logits(logits));
    const auto message = [&](Eigen::Index rows, Eigen::Index cols) {
        try {
            eig::rsample(d, eig::RowArray<double>::Zero(rows, cols));
        } catch (const std::invalid_argument& e) {
            return std::string(e.what());
        }
        return std::string("no exception");
    };
    EXPECT_EQ(message(5, 4),
              "RelaxedOneHotCategorical::rsample: gumbels must have a multiple of the "
              "batch rows (3) as its rows, got 5");
    EXPECT_EQ(message(6, 3),
              "RelaxedOneHotCategorical::rsample: gumbels must have 4 columns (the "
              "categories), got 3");
    EXPECT_EQ(eig::rsample(d, eig::RowArray<double>::Zero(6, 4)).rows(), 6);
}

TEST(Eigen, ColumnMajorStorageIsViewedWithItsStrides) {
    // A column-major array and its row-major copy give the same distribution
    // and the same draws; the view points into the array itself (no copy, so
    // nothing to outlive), with row stride 1 and column stride rows.
    Eigen::ArrayXXf lg(2, 4);
    lg << 1.0f, 2.0f, 3.0f, 4.0f, 0.5f, 0.25f, 0.125f, 0.125f;
    const eig::RowArray<float> lg_rows = lg;
    Eigen::ArrayXf t(2);
    t << 0.5f, 2.0f;
    const auto probs = eig::probs(lg);  // kept in a variable: still valid
    EXPECT_EQ(probs.view.data, lg.data());
    EXPECT_EQ(probs.view.row_stride, 1);
    EXPECT_EQ(probs.view.col_stride, 2);
    const relaxcat::ExpRelaxedOneHotCategorical<float> d(eig::vector_view(t), probs);
    const relaxcat::ExpRelaxedOneHotCategorical<float> e(eig::vector_view(t),
                                                         eig::probs(lg_rows));
    relaxcat::Philox g1(1), g2(1);
    const eig::RowArray<float> y = eig::rsample(d, 2, g1);
    const eig::RowArray<float> z = eig::rsample(e, 2, g2);
    EXPECT_TRUE((y == z).all());
    EXPECT_NEAR(y.exp().rowwise().sum().maxCoeff(), 1.0f, 1e-6f);

    // A column-major output is written through its strides.
    Eigen::ArrayXXf out(4, 4);
    relaxcat::Philox g3(1);
    d.rsample(eig::mutable_view(out), g3);
    EXPECT_TRUE((out == y).all());
}

TEST(Eigen, ExpressionsAreEvaluatedByTheFunctionsThatReturnResults) {
    // The functions that return results take Eigen::Ref and evaluate an
    // expression or a column-major array for the length of the call.
    eig::RowArray<double> lg(1, 3);
    lg << 0.1, 0.2, 0.3;
    const relaxcat::RelaxedOneHotCategorical<double> d(0.5, eig::logits(lg));
    relaxcat::Philox gen(2);
    const eig::RowArray<double> x = eig::rsample(d, 4, gen);
    const Eigen::ArrayXXd x_cols = x;
    const eig::ColumnArray<double> lp = eig::log_prob(d, x);
    EXPECT_TRUE((eig::log_prob(d, x_cols) == lp).all());
    EXPECT_TRUE((eig::log_prob(d, x * 1.0) == lp).all());
}

// The views refuse what they would leave dangling or cannot point into: an
// expression (no memory of its own), a temporary array (freed at the end of
// the statement), another scalar type; blocks and maps of lasting storage are
// fine as temporaries, and mutable views need writable storage.
static_assert(eig::is_viewable<eig::RowArray<double>&>());
static_assert(eig::is_viewable<const Eigen::ArrayXXf&>());
static_assert(eig::is_viewable<Eigen::Block<eig::RowArray<double>>>());
static_assert(eig::is_viewable<Eigen::Map<const Eigen::ArrayXd>>());
static_assert(!eig::is_viewable<eig::RowArray<double>>());
static_assert(!eig::is_viewable<Eigen::ArrayXd>());
static_assert(
    !eig::is_viewable<decltype(std::declval<eig::RowArray<double>&>() * 2.0)>());
static_assert(!eig::is_viewable<Eigen::ArrayXXi&>());
static_assert(!eig::is_viewable<int&>());
static_assert(eig::is_mutably_viewable<eig::RowArray<float>&>());
static_assert(!eig::is_mutably_viewable<const eig::RowArray<float>&>());
static_assert(!eig::is_mutably_viewable<Eigen::Map<const Eigen::ArrayXXf>>());

}  // namespace
