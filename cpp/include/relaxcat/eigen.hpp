#pragma once
// Eigen overloads of the C++ API: parameters, values and gradients as row-major
// Eigen arrays, results returned by value. Only this header needs Eigen (3.3 or
// later); it adds no arithmetic of its own and forwards to distribution.hpp.
//
// The functions that return results (rsample, log_prob, the VJPs) take inputs as
// Eigen::Ref<const RowArray<Real>>: a row-major array or block with unit inner
// stride binds without a copy, anything else (a column-major array, an
// expression) is evaluated into a temporary that lives until the call returns.
//
// The views (view, mutable_view, vector_view, and the tags logits and probs)
// point into the Eigen object's own memory, in either storage order, with its
// strides: they take only objects that have memory of their own to point into
// (arrays, matrices, blocks, maps, Refs) and refuse at compile time an
// expression or a temporary array, which would leave the view pointing into
// storage freed at the end of the statement (a fresh-user review kept such a
// view in a variable and read freed memory under ASan).

#include <Eigen/Core>

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "distribution.hpp"
#include "philox.hpp"

namespace relaxcat {
namespace eigen {

template <class Real>
using RowArray = Eigen::Array<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class Real>
using ColumnArray = Eigen::Array<Real, Eigen::Dynamic, 1>;

// Whether an argument of type A (as a forwarding reference deduces it: T& for
// an lvalue, T for an rvalue) may be viewed: an Eigen object of floats or
// doubles with direct access to its coefficients, and not a temporary that
// owns them (a block or map passed as a temporary still points into lasting
// storage). Mutable views also need writable coefficients.
template <class A>
constexpr bool is_viewable() {
    using T = std::remove_cv_t<std::remove_reference_t<A>>;
    if constexpr (!std::is_base_of_v<Eigen::DenseBase<T>, T>) {
        return false;
    } else {
        using Scalar = typename T::Scalar;
        const bool real =
            std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>;
        const bool direct = (T::Flags & Eigen::DirectAccessBit) != 0;
        const bool owning_temporary = !std::is_lvalue_reference_v<A> &&
                                      std::is_base_of_v<Eigen::PlainObjectBase<T>, T>;
        return real && direct && !owning_temporary;
    }
}

template <class A>
constexpr bool is_mutably_viewable() {
    using T = std::remove_reference_t<A>;
    if constexpr (!is_viewable<A>()) {
        return false;
    } else {
        return !std::is_const_v<T> && (T::Flags & Eigen::LvalueBit) != 0;
    }
}

template <class A>
using ScalarOf = typename std::remove_cv_t<std::remove_reference_t<A>>::Scalar;

template <class A>
constexpr void require_viewable() {
    static_assert(is_viewable<A>(),
                  "relaxcat::eigen views point into an Eigen object's own float or "
                  "double memory: store an expression or a temporary array in a "
                  "named array first (a view of a temporary would dangle)");
}

// Views of Eigen storage, with its strides (either storage order).
template <class A>
MatrixView<const ScalarOf<A>> view(A&& a) {
    require_viewable<A>();
    if constexpr (is_viewable<A>())
        return {a.data(), a.rows(), a.cols(), a.rowStride(), a.colStride()};
    else
        return {};  // not reached: the assertion stops the build
}

template <class A>
MatrixView<ScalarOf<A>> mutable_view(A&& a) {
    require_viewable<A>();
    static_assert(is_mutably_viewable<A>(),
                  "relaxcat::eigen::mutable_view needs writable Eigen storage");
    if constexpr (is_mutably_viewable<A>())
        return {a.data(), a.rows(), a.cols(), a.rowStride(), a.colStride()};
    else
        return {};  // not reached: the assertions stop the build
}

template <class A>
VectorView<const ScalarOf<A>> vector_view(A&& a) {
    require_viewable<A>();
    if constexpr (is_viewable<A>()) {
        static_assert(std::remove_reference_t<A>::IsVectorAtCompileTime,
                      "relaxcat::eigen::vector_view takes a vector");
        return {a.data(), a.size(), a.innerStride()};
    } else {
        return {};  // not reached: the assertion stops the build
    }
}

// The parameter tags: RelaxedOneHotCategorical<double> d(0.5, eigen::logits(a)),
// with a kept in a variable (the distribution copies the data when it is
// constructed; the tag itself is a view).
template <class A>
Logits<ScalarOf<A>> logits(A&& a) {
    return {view(std::forward<A>(a))};
}

template <class A>
Probs<ScalarOf<A>> probs(A&& a) {
    return {view(std::forward<A>(a))};
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
    // Checked before Eigen sizes the array: a negative size is an assertion
    // there (an abort without NDEBUG), and n B must not overflow.
    const auto rows = static_cast<Eigen::Index>(d.batch_rows());
    const Eigen::Index most = Eigen::Index{PTRDIFF_MAX / 8} / (rows > 0 ? rows : 1);
    if (n < 0 || n > most)
        detail::fail("relaxcat::eigen::rsample",
                     "n (the number of draws) must be in [0, " + detail::show(most) +
                         "], got " + detail::show(n));
    RowArray<typename Dist::value_type> out(n * rows, d.num_categories());
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
