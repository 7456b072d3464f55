#pragma once
// Eigen overloads of the C++ API: parameters, values and gradients as row-major
// Eigen arrays, results returned by value. Only this header needs Eigen (3.3 or
// later); it adds no arithmetic of its own and forwards to distribution.hpp.
//
// Inputs are taken as Eigen::Ref<const RowArray<Real>>: a row-major array or
// block with unit inner stride binds without a copy, anything else (a
// column-major array, an expression) is evaluated into a temporary first.

#include <Eigen/Core>

#include <cstdint>

#include "distribution.hpp"
#include "philox.hpp"

namespace relaxcat {
namespace eigen {

template <class Real>
using RowArray = Eigen::Array<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class Real>
using ColumnArray = Eigen::Array<Real, Eigen::Dynamic, 1>;

// Views of Eigen storage. Overloaded for float and double rather than templated,
// so that any Eigen expression converts (a template could not deduce Real); the
// three kinds have three names because an Eigen::Ref of one shape accepts the
// others too, which would make one overloaded name ambiguous.
inline MatrixView<const float> view(const Eigen::Ref<const RowArray<float>>& a) {
    return {a.data(), a.rows(), a.cols(), a.outerStride(), 1};
}
inline MatrixView<const double> view(const Eigen::Ref<const RowArray<double>>& a) {
    return {a.data(), a.rows(), a.cols(), a.outerStride(), 1};
}
inline MatrixView<float> mutable_view(Eigen::Ref<RowArray<float>> a) {
    return {a.data(), a.rows(), a.cols(), a.outerStride(), 1};
}
inline MatrixView<double> mutable_view(Eigen::Ref<RowArray<double>> a) {
    return {a.data(), a.rows(), a.cols(), a.outerStride(), 1};
}
inline VectorView<const float> vector_view(
    const Eigen::Ref<const ColumnArray<float>>& a) {
    return {a.data(), a.size(), a.innerStride()};
}
inline VectorView<const double> vector_view(
    const Eigen::Ref<const ColumnArray<double>>& a) {
    return {a.data(), a.size(), a.innerStride()};
}

// The parameter tags: RelaxedOneHotCategorical<double> d(0.5, eigen::logits(a)).
// The distribution copies the data, so a temporary is fine here.
inline Logits<float> logits(const Eigen::Ref<const RowArray<float>>& a) {
    return {view(a)};
}
inline Logits<double> logits(const Eigen::Ref<const RowArray<double>>& a) {
    return {view(a)};
}
inline Probs<float> probs(const Eigen::Ref<const RowArray<float>>& a) {
    return {view(a)};
}
inline Probs<double> probs(const Eigen::Ref<const RowArray<double>>& a) {
    return {view(a)};
}

// Gradients in the shapes of the parameters as given.
template <class Real>
struct RsampleGrad {
    RowArray<Real> param;           // logits or probs, (L, K)
    ColumnArray<Real> temperature;  // 1 or B entries
};

template <class Real>
struct LogProbGrad {
    RowArray<Real> value;  // (n B, K)
    RowArray<Real> param;
    ColumnArray<Real> temperature;
};

// Draws n samples of every batch row: an (n B, K) array, row s B + b holding
// sample s of batch row b. See RelaxedBase::rsample for the stream and edges.
template <class Dist>
RowArray<typename Dist::value_type> rsample(const Dist& d, Eigen::Index n, Philox& gen,
                                            int num_threads = 1) {
    RowArray<typename Dist::value_type> out(n * d.batch_rows(), d.num_categories());
    d.rsample(mutable_view(out), gen, num_threads);
    return out;
}

// A sample from explicit Gumbel noise of the output's shape.
template <class Dist>
RowArray<typename Dist::value_type> rsample(
    const Dist& d, const Eigen::Ref<const RowArray<typename Dist::value_type>>& gumbels,
    int num_threads = 1) {
    RowArray<typename Dist::value_type> out(gumbels.rows(), gumbels.cols());
    d.rsample(view(gumbels), mutable_view(out), num_threads);
    return out;
}

template <class Dist>
ColumnArray<typename Dist::value_type> log_prob(
    const Dist& d, const Eigen::Ref<const RowArray<typename Dist::value_type>>& value,
    int num_threads = 1) {
    using Real = typename Dist::value_type;
    ColumnArray<Real> out(value.rows());
    d.log_prob(view(value), VectorView<Real>(out.data(), out.size()), num_threads);
    return out;
}

template <class Dist>
RsampleGrad<typename Dist::value_type> rsample_vjp(
    const Dist& d, const Eigen::Ref<const RowArray<typename Dist::value_type>>& value,
    const Eigen::Ref<const RowArray<typename Dist::value_type>>& grad,
    int num_threads = 1) {
    using Real = typename Dist::value_type;
    RsampleGrad<Real> g;
    g.param.resize(d.param_rows(), d.num_categories());
    g.temperature.resize(d.num_temperatures());
    d.rsample_vjp(view(value), view(grad), mutable_view(g.param),
                  VectorView<Real>(g.temperature.data(), g.temperature.size()),
                  num_threads);
    return g;
}

template <class Dist>
LogProbGrad<typename Dist::value_type> log_prob_vjp(
    const Dist& d, const Eigen::Ref<const RowArray<typename Dist::value_type>>& value,
    const Eigen::Ref<const ColumnArray<typename Dist::value_type>>& grad,
    int num_threads = 1) {
    using Real = typename Dist::value_type;
    LogProbGrad<Real> g;
    g.value.resize(value.rows(), value.cols());
    g.param.resize(d.param_rows(), d.num_categories());
    g.temperature.resize(d.num_temperatures());
    d.log_prob_vjp(
        view(value), vector_view(grad), mutable_view(g.value), mutable_view(g.param),
        VectorView<Real>(g.temperature.data(), g.temperature.size()), num_threads);
    return g;
}

}  // namespace eigen
}  // namespace relaxcat
