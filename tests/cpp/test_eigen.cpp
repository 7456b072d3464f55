// The Eigen overloads (relaxcat/eigen.hpp) give what the view API gives.

#include <gtest/gtest.h>

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

TEST(Eigen, ColumnMajorAndExpressionInputsAreEvaluatedFirst) {
    Eigen::ArrayXXf lg(1, 4);  // column-major: bound through a temporary
    lg << 1.0f, 2.0f, 3.0f, 4.0f;
    Eigen::ArrayXf t(1);
    t << 0.5f;
    const relaxcat::ExpRelaxedOneHotCategorical<float> d(eig::vector_view(t),
                                                         eig::probs(lg / 10.0f));
    relaxcat::Philox gen(1);
    const eig::RowArray<float> y = eig::rsample(d, 2, gen);
    EXPECT_NEAR(y.exp().rowwise().sum().maxCoeff(), 1.0f, 1e-6f);
}

}  // namespace
