#pragma once
// The C++ API: RelaxedOneHotCategorical<Real> and ExpRelaxedOneHotCategorical<Real>
// over caller-owned row-major views, the counterparts of the Python classes.
//
// Every number is computed by the kernels of detail/kernels.hpp, the same code the
// Python module runs; this file only validates, lays out rows and splits them
// over threads. Needs the standard library alone (threads are std::thread).
//
// Layout. A distribution has a batch of B rows of K categories. The parameter
// (logits or probs) has B rows, or one row shared by every temperature; the
// temperature is a scalar or one value per row. Samples and values have n B rows
// for n draws: row s B + b belongs to batch row b, which is the row-major layout
// of the Python `d.rsample((n,))` with batch shape (B,).
//
// Accuracy (tests/cpp/test_reference.cpp against 60-digit references, the same
// bounds as the Python package): log-densities within 1e-12 (double) and 1e-6
// (float) of max(1, |exact|); samples and gradients within 1e-10 and 1e-5.

// First, so that an unsupported standard or flag is the first error (isa.hpp).
#include "detail/isa.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/args.hpp"
#include "detail/kernels.hpp"
#include "detail/parallel.hpp"
#include "philox.hpp"

namespace relaxcat {

// A strided 2-d view: element (i, j) is data[i * row_stride + j * col_stride].
// Strides count elements, not bytes; a row stride of 0 repeats one row. A view
// with a null data pointer means "absent" where an output is optional.
template <class T>
struct MatrixView {
    T* data = nullptr;
    int64_t rows = 0;
    int64_t cols = 0;
    int64_t row_stride = 0;
    int64_t col_stride = 1;

    constexpr MatrixView() = default;
    // A C-contiguous (rows, cols) block.
    constexpr MatrixView(T* d, int64_t r, int64_t c)
        : data(d), rows(r), cols(c), row_stride(c), col_stride(1) {}
    constexpr MatrixView(T* d, int64_t r, int64_t c, int64_t rs, int64_t cs)
        : data(d), rows(r), cols(c), row_stride(rs), col_stride(cs) {}
    // A writable view converts to a read-only one.
    template <class U, class = std::enable_if_t<std::is_same_v<const U, T> &&
                                                !std::is_same_v<U, T>>>
    constexpr MatrixView(const MatrixView<U>& v)
        : data(v.data),
          rows(v.rows),
          cols(v.cols),
          row_stride(v.row_stride),
          col_stride(v.col_stride) {}

    constexpr T& operator()(int64_t i, int64_t j) const {
        return data[i * row_stride + j * col_stride];
    }
};

// The spelling the design notes use for the same type.
template <class T>
using View = MatrixView<T>;

// A strided 1-d view (one value per row); a stride of 0 repeats one value.
template <class T>
struct VectorView {
    T* data = nullptr;
    int64_t size = 0;
    int64_t stride = 1;

    constexpr VectorView() = default;
    constexpr VectorView(T* d, int64_t n, int64_t s = 1)
        : data(d), size(n), stride(s) {}
    template <class U, class = std::enable_if_t<std::is_same_v<const U, T> &&
                                                !std::is_same_v<U, T>>>
    constexpr VectorView(const VectorView<U>& v)
        : data(v.data), size(v.size), stride(v.stride) {}

    constexpr T& operator[](int64_t i) const { return data[i * stride]; }
};

// Which parameter a distribution is built from, as the Python keywords say:
// RelaxedOneHotCategorical<double> d(0.5, relaxcat::logits(view)).
template <class Real>
struct Logits {
    MatrixView<const Real> view;
};
template <class Real>
struct Probs {
    MatrixView<const Real> view;
};

template <class Real>
Logits<Real> logits(MatrixView<const Real> v) {
    return {v};
}
template <class Real>
Logits<Real> logits(MatrixView<Real> v) {
    return {v};
}
template <class Real>
Probs<Real> probs(MatrixView<const Real> v) {
    return {v};
}
template <class Real>
Probs<Real> probs(MatrixView<Real> v) {
    return {v};
}

namespace detail {

// Error messages: "<function>: <argument> must <expectation>, got <value> at <where>".
[[noreturn]] inline void fail(const std::string& fn, const std::string& msg) {
    throw std::invalid_argument(fn + ": " + msg);
}

// A number as messages print it; a floating-point one with the fewest digits
// that read back as the same value (1e-06, not 9.9999999999999995e-07), as
// Python's repr does.
template <class T>
std::string show(T v) {
    std::ostringstream os;
    if constexpr (std::is_floating_point_v<T>) {
        for (int digits = std::numeric_limits<T>::digits10;; ++digits) {
            os.str("");
            os.precision(digits);
            os << v;
            std::istringstream back(os.str());
            T read = 0;
            back >> read;
            if (read == v || digits >= std::numeric_limits<T>::max_digits10) break;
        }
    } else {
        os << v;
    }
    return os.str();
}

inline std::string count_note(int64_t bad) {
    return bad > 1 ? " (" + show(bad) + " entries in all)" : "";
}

// First index and count of entries of [0, n) where bad(i) holds.
template <class Pred>
int64_t first_bad(int64_t n, Pred bad, int64_t* count) {
    int64_t first = -1;
    *count = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (bad(i)) {
            if (first < 0) first = i;
            ++*count;
        }
    }
    return first;
}

// Whether any entry of a matrix view is NaN or infinite, row by row through the
// kernels' branch-free loop, which the compiler vectorises where the row is
// contiguous. (first_bad through the view's (row, column) indexing took a
// division per entry, 2.5 ns per float32 entry: more than rsample_vjp itself.)
template <class T>
bool any_not_finite(const MatrixView<T>& v) {
    for (int64_t i = 0; i < v.rows; ++i)
        if (RELAXCAT_ISA_NAMESPACE::any_not_finite(v.data + i * v.row_stride,
                                                   v.col_stride, v.cols))
            return true;
    return false;
}

template <class T>
bool contiguous(const MatrixView<T>& v) {
    return v.col_stride == 1 && (v.row_stride == v.cols || v.rows <= 1);
}

template <class T>
bool contiguous(const VectorView<T>& v) {
    return v.stride == 1 || v.size <= 1;
}

// The byte range a view touches, for the overlap check.
struct Extent {
    const char* lo = nullptr;
    const char* hi = nullptr;  // one past the last byte
};

template <class T>
Extent extent(const MatrixView<T>& v) {
    if (v.data == nullptr || v.rows <= 0 || v.cols <= 0) return {};
    const int64_t r = v.rows - 1, c = v.cols - 1;
    const int64_t lo =
        std::min<int64_t>(0, r * v.row_stride) + std::min<int64_t>(0, c * v.col_stride);
    const int64_t hi =
        std::max<int64_t>(0, r * v.row_stride) + std::max<int64_t>(0, c * v.col_stride);
    const char* base = reinterpret_cast<const char*>(v.data);
    return {base + lo * int64_t(sizeof(T)), base + (hi + 1) * int64_t(sizeof(T))};
}

template <class T>
Extent extent(const VectorView<T>& v) {
    return extent(MatrixView<T>(v.data, v.size, 1, v.stride, 1));
}

// Whether no two elements of a view share an address: with the dimensions
// ordered by |stride|, the inner one spans less than one step of the outer one
// ((n1 - 1) s1 < s2; every other column of a wider buffer passes). Sufficient,
// not necessary (rows of stride 3 and columns of stride 2 in a 2 x 2 view
// interleave without meeting, and are refused); an output must pass it.
template <class T>
bool elements_distinct(const MatrixView<T>& v) {
    int64_t n1 = v.cols, s1 = v.col_stride < 0 ? -v.col_stride : v.col_stride;
    int64_t n2 = v.rows, s2 = v.row_stride < 0 ? -v.row_stride : v.row_stride;
    if (n1 <= 1) return n2 <= 1 || s2 >= 1;
    if (n2 <= 1) return s1 >= 1;
    if (s1 > s2) {
        std::swap(n1, n2);
        std::swap(s1, s2);
    }
    return s1 >= 1 && (s2 - 1) / (n1 - 1) >= s1;
}

template <class T>
bool elements_distinct(const VectorView<T>& v) {
    return v.size <= 1 || v.stride != 0;
}

inline bool overlap(Extent a, Extent b) {
    return a.lo != nullptr && b.lo != nullptr && std::less<const char*>()(a.lo, b.hi) &&
           std::less<const char*>()(b.lo, a.hi);
}

// A C-contiguous target for a kernel's output: the caller's memory when it is
// contiguous already, otherwise a buffer copied out by finish().
template <class Real>
class RowsOut {
public:
    RowsOut(MatrixView<Real> v) : view_(v) {
        if (v.data == nullptr) return;
        if (contiguous(v)) {
            ptr_ = v.data;
        } else {
            buffer_.resize(static_cast<size_t>(v.rows * v.cols));
            ptr_ = buffer_.data();
        }
    }
    RowsOut(VectorView<Real> v)
        : RowsOut(MatrixView<Real>(v.data, v.size, 1, v.stride, 1)) {}

    Real* get() const { return ptr_; }

    void finish() {
        if (buffer_.empty()) return;
        for (int64_t i = 0; i < view_.rows; ++i)
            for (int64_t j = 0; j < view_.cols; ++j)
                view_(i, j) = buffer_[i * view_.cols + j];
    }

private:
    MatrixView<Real> view_;
    Real* ptr_ = nullptr;
    std::vector<Real> buffer_;
};

}  // namespace detail

// Everything below has machine code that depends on the instruction set; see the
// namespace note in philox.hpp. `relaxcat::RelaxedOneHotCategorical` names the
// class of the level this translation unit is compiled for.
inline namespace RELAXCAT_ISA_NAMESPACE {

// The implementation shared by RelaxedOneHotCategorical (samples on the simplex)
// and ExpRelaxedOneHotCategorical (their logarithms). Use the two derived names.
template <class Real, detail::Space kSpace>
class RelaxedBase {
    static_assert(std::is_same_v<Real, float> || std::is_same_v<Real, double>,
                  "relaxcat distributions hold float or double");

public:
    using value_type = Real;

    static constexpr const char* kName = kSpace == detail::Space::simplex
                                             ? "RelaxedOneHotCategorical"
                                             : "ExpRelaxedOneHotCategorical";

    // Builds the distribution from a temperature and logits or probabilities.
    //
    // temperature: a scalar, or a view of one value per batch row; positive and
    //   finite.
    // logits: (L, K) with K >= 1, finite or -inf (a masked category), at least one
    //   finite per row; any shift per row gives the same distribution.
    // probs: (L, K), non-negative and finite with a positive entry per row;
    //   normalised per row, a zero masks its category.
    // The batch has B = max(L, number of temperatures) rows; L and the number of
    // temperatures are each B or 1. validate_args (default true, as in torch)
    // makes log_prob and the VJPs check that values lie on the support.
    //
    // The parameters are copied (one pass, with the checks), so the views need not
    // outlive the call. Throws std::invalid_argument naming the bad argument.
    RelaxedBase(Real temperature, Logits<Real> logits, bool validate_args = true)
        : RelaxedBase(VectorView<const Real>(&temperature, 1), logits.view, false,
                      validate_args) {}
    RelaxedBase(VectorView<const Real> temperature, Logits<Real> logits,
                bool validate_args = true)
        : RelaxedBase(temperature, logits.view, false, validate_args) {}
    RelaxedBase(Real temperature, Probs<Real> probs, bool validate_args = true)
        : RelaxedBase(VectorView<const Real>(&temperature, 1), probs.view, true,
                      validate_args) {}
    RelaxedBase(VectorView<const Real> temperature, Probs<Real> probs,
                bool validate_args = true)
        : RelaxedBase(temperature, probs.view, true, validate_args) {}

    int64_t batch_rows() const { return batch_; }
    // K, masked categories included.
    int64_t num_categories() const { return k_; }
    // L: the rows of the parameter as given (gradients come back in this shape).
    int64_t param_rows() const { return param_rows_; }
    // 1 for a scalar temperature, else B.
    int64_t num_temperatures() const {
        return static_cast<int64_t>(temperature_.size());
    }
    bool has_probs() const { return !probs_.empty(); }
    bool validate_args() const { return validate_; }

    // Draws n = out.rows / B samples of every batch row into out (n B rows, K
    // columns; row s B + b is sample s of batch row b). The noise is elements
    // gen.offset() .. + n B K - 1 of gen's stream (philox.hpp), and gen advances
    // past them: bit for bit the Python module's noise for that key, stream and
    // offset. Samples are exact zeros (logs -inf) on masked categories; at low
    // temperature entries may underflow to 0, which ExpRelaxedOneHotCategorical
    // avoids. num_threads: 1 by default, 0 for the hardware threads; the bits do
    // not depend on it.
    void rsample(MatrixView<Real> out, Philox& gen, int num_threads = 1) const {
        const std::string fn = method("rsample");
        const int64_t rows = check_out_rows(fn, "out", out, true);
        const int threads = resolve_threads(fn, num_threads);
        detail::RsampleArgs<Real> a;
        a.shape = shape(rows);
        a.logits = param_arg();
        a.temperature = temperature_arg();
        a.noise.key = gen.key();
        a.noise.stream = gen.stream();
        const int64_t draws = rows * k_;
        detail::RELAXCAT_ISA_NAMESPACE::check_noise_room(fn.c_str(), gen, draws);
        a.noise.offset = gen.advance(static_cast<uint64_t>(draws));
        sample_into(a, out, threads);
    }

    // The same with explicit Gumbel noise of out's shape (finite), for
    // reproducing a sample made elsewhere.
    void rsample(MatrixView<const Real> gumbels, MatrixView<Real> out,
                 int num_threads = 1) const {
        const std::string fn = method("rsample");
        // The noise first: the Eigen overload sizes out from it, so a bad shape
        // is named as the caller's gumbels.
        const int64_t rows = check_draw_rows(fn, "gumbels", gumbels);
        check_out_rows(fn, "out", out, true);
        check_matrix(fn, "out", out, rows);
        check_no_overlap(fn, "out", detail::extent(out), "gumbels",
                         detail::extent(gumbels));
        check_finite(fn, "gumbels", gumbels);
        const int threads = resolve_threads(fn, num_threads);
        detail::RsampleArgs<Real> a;
        a.shape = shape(rows);
        a.logits = param_arg();
        a.temperature = temperature_arg();
        a.noise.gumbels = value_arg(gumbels);
        sample_into(a, out, threads);
    }

    // The log-density of each row of value (n B rows of K: x on the simplex, or
    // y = log x for ExpRelaxedOneHotCategorical) into out (n B entries). On the
    // simplex the density is with respect to Lebesgue measure on K - 1
    // coordinates, masked categories left out of K. Edges (README, "Numerics"):
    // exact zeros in x give +inf, -inf or a finite limit; weight on a masked
    // category gives -inf (an error when validating).
    void log_prob(MatrixView<const Real> value, VectorView<Real> out,
                  int num_threads = 1) const {
        const std::string fn = method("log_prob");
        const int64_t rows = check_value(fn, value, num_threads);
        check_vector(fn, "out", out, rows, true);
        check_no_overlap(fn, "out", detail::extent(out), "value",
                         detail::extent(value));
        const int threads = resolve_threads(fn, num_threads);
        detail::RowsOut<Real> lp(out);
        detail::LogProbArgs<Real> a = log_prob_args(value, rows);
        a.log_prob = lp.get();
        run(a, threads);
        lp.finish();
    }

    // The gradient of sum(grad * value) for value = a sample of this
    // distribution (needs only the sample): d/dlogits = x (w - <w, x>) / T and
    // d/dT = -(1/T) sum_k x_k (w_k - <w, x>) log x_k, summed over the n draws
    // into the parameter's shape (L, K) and the temperature's (1 or B entries).
    // grad has value's shape (a row stride of 0 repeats one row). For a
    // distribution built from probs, grad_param is the gradient with respect to
    // the probabilities as given. Either output may be absent (null data).
    // Masked categories get 0; in log space a -inf entry of a live category is
    // an underflow: it keeps its logits gradient, and its row's temperature
    // gradient is NaN where it has a nonzero upstream gradient, as that needs
    // the log the -inf lost (Note [underflow in log space]).
    void rsample_vjp(MatrixView<const Real> value, MatrixView<const Real> grad,
                     MatrixView<Real> grad_param, VectorView<Real> grad_temperature,
                     int num_threads = 1) const {
        const std::string fn = method("rsample_vjp");
        const int64_t rows = check_value(fn, value, num_threads);
        check_matrix(fn, "grad", grad, rows);
        check_finite(fn, "grad", grad);
        check_grad_outputs(
            fn, grad_param, grad_temperature,
            {{"value", detail::extent(value)}, {"grad", detail::extent(grad)}});
        const int threads = resolve_threads(fn, num_threads);
        over_slices(rows, grad_param, grad_temperature, threads,
                    [&](int64_t first, int64_t n, ParamGrad& gl, TemperatureGrad& gt) {
                        detail::RsampleVjpArgs<Real> a;
                        a.shape = shape(n);
                        a.space = kSpace;
                        a.value = value_arg(value, first);
                        a.grad = value_arg(grad, first);
                        a.temperature = temperature_arg();
                        a.logits = param_arg();  // masked categories by their logits
                        gl.set(a, first, n);
                        a.grad_temperature = gt.slice(n);
                        run(a, threads);
                    });
    }

    // The gradient of sum(grad * log_prob(value)): grad holds one number per
    // value row (a stride of 0 repeats one). grad_value has value's shape and
    // treats the K coordinates as free; grad_param and grad_temperature are
    // summed into the shapes of the parameters as for rsample_vjp. Every output
    // may be absent (null data). Masked categories get 0.
    void log_prob_vjp(MatrixView<const Real> value, VectorView<const Real> grad,
                      MatrixView<Real> grad_value, MatrixView<Real> grad_param,
                      VectorView<Real> grad_temperature, int num_threads = 1) const {
        log_prob_with_vjp(method("log_prob_vjp"), value, grad, VectorView<Real>(),
                          grad_value, grad_param, grad_temperature, num_threads, false);
    }

    // log_prob(value, out) and log_prob_vjp(value, grad, ...) in one pass over
    // the value, with the same bits as the two calls.
    void log_prob_and_vjp(MatrixView<const Real> value, VectorView<const Real> grad,
                          VectorView<Real> out, MatrixView<Real> grad_value,
                          MatrixView<Real> grad_param,
                          VectorView<Real> grad_temperature,
                          int num_threads = 1) const {
        log_prob_with_vjp(method("log_prob_and_vjp"), value, grad, out, grad_value,
                          grad_param, grad_temperature, num_threads, true);
    }

    // The normalised log-probabilities logits - logsumexp(logits) into out (L, K).
    void logits(MatrixView<Real> out) const {
        param_op(method("logits"), detail::ParamOp::normalize_logits, logits_, out);
    }

    // The normalised probabilities of the underlying categorical into out (L, K).
    void probs(MatrixView<Real> out) const {
        if (has_probs())
            param_op(method("probs"), detail::ParamOp::normalize_probs, probs_, out);
        else
            param_op(method("probs"), detail::ParamOp::probs_from_logits, logits_, out);
    }

private:
    RelaxedBase(VectorView<const Real> temperature, MatrixView<const Real> param,
                bool is_probs, bool validate_args)
        : validate_(validate_args) {
        const char* pname = is_probs ? "probs" : "logits";
        check_view(kName, pname, param);
        if (param.cols < 1)
            detail::fail(kName, std::string(pname) +
                                    " must have at least one category per row, got " +
                                    detail::show(param.cols) + " columns");
        if (temperature.size < 1)
            detail::fail(kName, "temperature must hold at least one value, got " +
                                    detail::show(temperature.size));
        check_view(kName, "temperature", temperature);  // a null pointer too
        k_ = param.cols;
        param_rows_ = param.rows;

        // Shapes: the parameter rows and the temperatures are each B or 1.
        const int64_t nt = temperature.size;
        if (nt != 1 && param.rows != 1 && nt != param.rows)
            detail::fail(kName, "temperature must have 1 value or one per row of " +
                                    std::string(pname) + " (" +
                                    detail::show(param.rows) + "), got " +
                                    detail::show(nt));
        batch_ = nt == 1 ? param.rows : nt;

        // Temperature: positive and finite.
        temperature_.resize(static_cast<size_t>(nt));
        for (int64_t i = 0; i < nt; ++i) temperature_[i] = temperature[i];
        int64_t count = 0;
        const int64_t bad = detail::first_bad(
            nt,
            [&](int64_t i) {
                return !(std::isfinite(temperature_[i]) && temperature_[i] > 0);
            },
            &count);
        if (bad >= 0)
            detail::fail(kName,
                         "temperature must be positive and finite, got " +
                             detail::show(temperature_[bad]) +
                             (nt > 1 ? " at row " + detail::show(bad) : std::string()) +
                             detail::count_note(count));

        // The parameter, copied row-major and checked in the same pass by the
        // Python package's kernel (Note [checked copy of logits]); only one that
        // fails is looked at again, by check_probs or check_logits, to name what
        // fails. (A copy and three checks of their own had cost 6.3 ns per
        // float32 logit at K = 8, more than an rsample.)
        std::vector<Real> copy(static_cast<size_t>(param.rows * k_));
        std::vector<uint8_t> status(static_cast<size_t>(param.rows));
        detail::ParamArgs<Real> c;
        c.shape = rows_shape(param.rows);
        c.op = is_probs ? detail::ParamOp::check_probs : detail::ParamOp::check_logits;
        c.in.data = param.data;
        c.in.stride[0] = param.row_stride;
        c.in.kstride = param.col_stride;
        c.out = copy.data();
        c.status = status.data();
        run(c, 1);
        for (int64_t r = 0; r < param.rows; ++r) {
            const int code = status[static_cast<size_t>(r)];
            if (code == 0) continue;
            // These test one kind of fault at a time over all rows, in the
            // order the messages list them (as the Python package does), so
            // the row named is the first with the first kind of fault found,
            // not always row r. Whenever the kernel flags a row, one of them
            // throws; the message below is not reached.
            if (is_probs)
                check_probs(copy);
            else
                check_logits(copy);
            detail::fail(kName, std::string(pname) + " are invalid at row " +
                                    detail::show(r) + " (check " + detail::show(code) +
                                    ")");
        }
        if (is_probs) {
            probs_ = std::move(copy);
            logits_.resize(probs_.size());
            detail::ParamArgs<Real> a;
            a.shape = rows_shape(param_rows_);
            a.op = detail::ParamOp::log_probs;
            a.in = contiguous_arg(probs_.data());
            a.out = logits_.data();
            run(a, 1);
        } else {
            logits_ = std::move(copy);
        }
    }

    // rows rows of K as a one-dimensional batch (the parameter's own rows).
    detail::RowShape rows_shape(int64_t rows) const {
        detail::RowShape s;
        s.ndim = 1;
        s.shape[0] = rows;
        s.rows = rows;
        s.k = k_;
        return s;
    }

    std::string method(const char* name) const {
        return std::string(kName) + "::" + name;
    }

    static std::string where(int64_t row, int64_t col) {
        return "row " + detail::show(row) + ", category " + detail::show(col);
    }

    static void check_view_shape(const std::string& fn, const char* name, int64_t rows,
                                 int64_t cols, const void* data) {
        if (rows < 0 || cols < 0)
            detail::fail(fn, std::string(name) +
                                 " must have non-negative sizes, got (" +
                                 detail::show(rows) + ", " + detail::show(cols) + ")");
        // At most as many elements as a buffer of doubles can hold: the
        // distribution copies its parameter and the checks keep a status per
        // row, and a view with zero strides can name far more elements than
        // memory holds ((1, 2^62) logits had ended in std::length_error).
        constexpr int64_t kMaxElements = std::numeric_limits<std::ptrdiff_t>::max() /
                                         static_cast<int64_t>(sizeof(double));
        if (cols > 0 && rows > kMaxElements / cols)
            detail::fail(fn, std::string(name) + " is too large: (" +
                                 detail::show(rows) + ", " + detail::show(cols) +
                                 ") is more elements than a buffer can hold (" +
                                 detail::show(kMaxElements) + ")");
        if (data == nullptr && rows * cols > 0)
            detail::fail(fn, std::string(name) + " must not have a null data pointer");
    }

    // A view's shape as check_view_shape checks it, and its strides: the end of
    // the farthest element from the data pointer, |row_stride| (rows - 1) +
    // |col_stride| (cols - 1) + 1 elements of `bytes` bytes, must be a distance
    // a pointer can span, else the strides cannot describe memory (a stride of
    // 2^62 had been read past the caller's buffer). A stride of INT64_MIN is
    // refused even where it is never stepped: it has no magnitude in int64.
    static void check_view_strides(const std::string& fn, const char* name,
                                   int64_t rows, int64_t cols, int64_t row_stride,
                                   int64_t col_stride, size_t bytes) {
        constexpr int64_t kLowest = std::numeric_limits<int64_t>::min();
        const bool representable = row_stride != kLowest && col_stride != kLowest;
        if (representable && (rows == 0 || cols == 0)) return;
        const uint64_t limit =
            static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / bytes;
        const auto magnitude = [](int64_t v) {
            return v < 0 ? uint64_t{0} - static_cast<uint64_t>(v)
                         : static_cast<uint64_t>(v);
        };
        const auto span = [&](int64_t n, int64_t stride, uint64_t& out) {
            const uint64_t m = magnitude(stride);
            const uint64_t steps = static_cast<uint64_t>(n - 1);
            if (m != 0 && steps > limit / m) return false;
            out = steps * m;
            return true;
        };
        uint64_t down = 0, across = 0;
        if (representable && span(rows, row_stride, down) &&
            span(cols, col_stride, across) && down < limit - across)
            return;
        detail::fail(fn, std::string(name) +
                             " must have strides that stay within memory, got (" +
                             detail::show(row_stride) + ", " +
                             detail::show(col_stride) + ") for shape (" +
                             detail::show(rows) + ", " + detail::show(cols) + ")");
    }

    template <class T>
    static void check_view(const std::string& fn, const char* name,
                           const MatrixView<T>& v) {
        check_view_shape(fn, name, v.rows, v.cols, v.data);
        check_view_strides(fn, name, v.rows, v.cols, v.row_stride, v.col_stride,
                           sizeof(T));
    }

    template <class T>
    static void check_view(const std::string& fn, const char* name,
                           const VectorView<T>& v) {
        check_view_shape(fn, name, v.size, 1, v.data);
        check_view_strides(fn, name, v.size, 1, v.stride, 1, sizeof(T));
    }

    void check_logits(const std::vector<Real>& l) const {
        int64_t count = 0;
        const int64_t n = param_rows_ * k_;
        int64_t bad = detail::first_bad(
            n, [&](int64_t i) { return std::isnan(l[i]) || l[i] == kInf; }, &count);
        if (bad >= 0)
            detail::fail(kName,
                         "logits must be finite or -inf (a masked category), got " +
                             detail::show(l[bad]) + " at " + where(bad / k_, bad % k_) +
                             detail::count_note(count));
        bad = detail::first_bad(
            param_rows_,
            [&](int64_t r) {
                for (int64_t j = 0; j < k_; ++j)
                    if (l[r * k_ + j] > -kInf) return false;
                return true;
            },
            &count);
        if (bad >= 0)
            detail::fail(kName,
                         "logits must leave at least one category possible in "
                         "every row, got a row of all -inf at row " +
                             detail::show(bad) + detail::count_note(count));
        // Rows are shifted by their largest logit; a finite logit that became
        // -inf there would be a masked category still counted in K.
        const auto extremes = [&](int64_t r) {
            double hi = -kInf, lo = kInf;
            for (int64_t j = 0; j < k_; ++j) {
                const double d = static_cast<double>(l[r * k_ + j]);
                if (d > -kInf) {
                    hi = std::max(hi, d);
                    lo = std::min(lo, d);
                }
            }
            return std::make_pair(hi, lo);
        };
        bad = detail::first_bad(
            param_rows_,
            [&](int64_t r) {
                const auto e = extremes(r);
                return !(e.first - e.second < kInf);
            },
            &count);
        if (bad >= 0)
            detail::fail(kName,
                         "logits must differ by less than the largest double within a "
                         "row (mask a category with -inf instead), got largest " +
                             detail::show(extremes(bad).first) + " and smallest " +
                             detail::show(extremes(bad).second) + " at row " +
                             detail::show(bad) + detail::count_note(count));
    }

    void check_probs(const std::vector<Real>& p) const {
        int64_t count = 0;
        const int64_t n = param_rows_ * k_;
        int64_t bad = detail::first_bad(
            n, [&](int64_t i) { return !(std::isfinite(p[i]) && p[i] >= 0); }, &count);
        if (bad >= 0)
            detail::fail(kName, "probs must be non-negative and finite, got " +
                                    detail::show(p[bad]) + " at " +
                                    where(bad / k_, bad % k_) +
                                    detail::count_note(count));
        double bad_sum = 0.0;
        bad = detail::first_bad(
            param_rows_,
            [&](int64_t r) {
                double s = 0.0;
                for (int64_t j = 0; j < k_; ++j)
                    s += static_cast<double>(p[r * k_ + j]);
                const bool ok = s > 0.0;  // may overflow: Note [probs of any scale]
                if (!ok && bad_sum == 0.0) bad_sum = s;
                return !ok;
            },
            &count);
        if (bad >= 0)
            detail::fail(kName,
                         "probs must have a positive sum in every row, got "
                         "sum " +
                             detail::show(bad_sum) + " at row " + detail::show(bad) +
                             detail::count_note(count));
    }

    static int resolve_threads(const std::string& fn, int n) {
        if (n < 0)
            detail::fail(
                fn, "num_threads must be 0 (all hardware threads) or positive, got " +
                        detail::show(n));
        if (n > 0) return n;
        return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    }

    // An output whose elements alias each other would keep only the last of the
    // values written to each address.
    template <class View>
    static void check_distinct(const std::string& fn, const char* name, const View& v) {
        if (v.data == nullptr || detail::elements_distinct(v)) return;
        detail::fail(fn, std::string(name) +
                             " must not have two elements at one address, got " +
                             describe_layout(v));
    }

    template <class T>
    static std::string describe_layout(const MatrixView<T>& v) {
        return "shape (" + detail::show(v.rows) + ", " + detail::show(v.cols) +
               ") with strides (" + detail::show(v.row_stride) + ", " +
               detail::show(v.col_stride) + ")";
    }

    template <class T>
    static std::string describe_layout(const VectorView<T>& v) {
        return "size " + detail::show(v.size) + " with stride " +
               detail::show(v.stride);
    }

    static void check_no_overlap(const std::string& fn, const char* out_name,
                                 detail::Extent out, const char* in_name,
                                 detail::Extent in) {
        if (detail::overlap(out, in))
            detail::fail(
                fn, std::string(out_name) + " must not share memory with " + in_name);
    }

    // The number of rows n B of a value-shaped matrix, checked.
    int64_t check_rows(const std::string& fn, const char* name, int64_t rows) const {
        const bool ok = batch_ > 0 ? rows % batch_ == 0 : rows == 0;
        if (!ok)
            detail::fail(fn, std::string(name) +
                                 " must have a multiple of the batch rows (" +
                                 detail::show(batch_) + ") as its rows, got " +
                                 detail::show(rows));
        return rows;
    }

    template <class T>
    void check_matrix(const std::string& fn, const char* name, const MatrixView<T>& v,
                      int64_t rows) const {
        check_view(fn, name, v);
        if (v.rows != rows || v.cols != k_)
            detail::fail(fn, std::string(name) + " must have shape (" +
                                 detail::show(rows) + ", " + detail::show(k_) +
                                 "), got (" + detail::show(v.rows) + ", " +
                                 detail::show(v.cols) + ")");
    }

    // An input whose entries must all be finite (the Gumbel noise, upstream
    // gradients: an infinity there has no meaningful gradient, and would come
    // out as NaN), checked once its shape is.
    void check_finite(const std::string& fn, const char* name,
                      const MatrixView<const Real>& v) const {
        if (!detail::any_not_finite(v)) return;
        int64_t count = 0;
        const int64_t bad = detail::first_bad(
            v.rows * k_, [&](int64_t i) { return !std::isfinite(v(i / k_, i % k_)); },
            &count);
        if (bad >= 0)
            detail::fail(fn, std::string(name) + " must be finite, got " +
                                 detail::show(v(bad / k_, bad % k_)) + " at " +
                                 where(bad / k_, bad % k_) + detail::count_note(count));
    }

    template <class T>
    void check_vector(const std::string& fn, const char* name, const VectorView<T>& v,
                      int64_t size, bool output) const {
        check_view(fn, name, v);
        if (v.size != size)
            detail::fail(fn, std::string(name) + " must have " + detail::show(size) +
                                 " entries (one per value row), got " +
                                 detail::show(v.size));
        if (output && v.data == nullptr && size > 0)
            detail::fail(fn, std::string(name) + " must not have a null data pointer");
        if (output) check_distinct(fn, name, v);
    }

    // The number of rows n B of a (n B, K) view, checked.
    template <class T>
    int64_t check_draw_rows(const std::string& fn, const char* name,
                            const MatrixView<T>& v) const {
        check_view(fn, name, v);
        if (v.cols != k_)
            detail::fail(fn, std::string(name) + " must have " + detail::show(k_) +
                                 " columns (the categories), got " +
                                 detail::show(v.cols));
        return check_rows(fn, name, v.rows);
    }

    int64_t check_out_rows(const std::string& fn, const char* name,
                           const MatrixView<Real>& out, bool required) const {
        const int64_t rows = check_draw_rows(fn, name, out);
        if (required && out.data == nullptr && out.rows > 0)
            detail::fail(fn, std::string(name) + " must not have a null data pointer");
        check_distinct(fn, name, out);
        return rows;
    }

    // The extents of a call's other arguments, each with its name for messages.
    struct Named {
        const char* name;
        detail::Extent extent;
    };

    void check_grad_outputs(const std::string& fn, const MatrixView<Real>& gp,
                            const VectorView<Real>& gt,
                            std::initializer_list<Named> others) const {
        const char* pname = has_probs() ? "grad_param (probs)" : "grad_param (logits)";
        if (gp.data != nullptr) {
            check_view(fn, "grad_param", gp);
            if (gp.rows != param_rows_ || gp.cols != k_)
                detail::fail(fn,
                             std::string(pname) + " must have the parameter's shape (" +
                                 detail::show(param_rows_) + ", " + detail::show(k_) +
                                 "), got (" + detail::show(gp.rows) + ", " +
                                 detail::show(gp.cols) + ")");
        }
        if (gt.data != nullptr) check_view(fn, "grad_temperature", gt);
        if (gt.data != nullptr && gt.size != num_temperatures())
            detail::fail(fn, "grad_temperature must have one entry per temperature (" +
                                 detail::show(num_temperatures()) + "), got " +
                                 detail::show(gt.size));
        check_distinct(fn, "grad_param", gp);
        check_distinct(fn, "grad_temperature", gt);
        for (const Named& o : others) {
            check_no_overlap(fn, "grad_param", detail::extent(gp), o.name, o.extent);
            check_no_overlap(fn, "grad_temperature", detail::extent(gt), o.name,
                             o.extent);
        }
        check_no_overlap(fn, "grad_param", detail::extent(gp), "grad_temperature",
                         detail::extent(gt));
    }

    // A value's shape, and with validate_args its support: the simplex (or its
    // log) of the live categories within the tolerance the Python package uses
    // (1 within max(min(4 K eps, 1/64), 1e-6); the cap keeps rows of very many
    // categories from passing far from the simplex), which the library's own
    // samples always meet. The support is checked by the Python package's kernel
    // (check_rows) on num_threads threads; only a call that fails is looked at
    // again, row by row, to name what fails in its first bad row.
    int64_t check_value(const std::string& fn, const MatrixView<const Real>& value,
                        int num_threads) const {
        check_view(fn, "value", value);
        if (value.cols != k_)
            detail::fail(fn, "value must have " + detail::show(k_) +
                                 " columns (the categories), got " +
                                 detail::show(value.cols));
        const int64_t rows = check_rows(fn, "value", value.rows);
        if (!validate_) return rows;

        const double wide =
            4.0 * static_cast<double>(k_) * std::numeric_limits<Real>::epsilon();
        const double tol = std::max(std::min(wide, 1.0 / 64.0), 1e-6);
        std::vector<uint8_t> status(static_cast<size_t>(rows));
        detail::CheckArgs<Real> a;
        a.shape = shape(rows);
        a.space = kSpace;
        a.logits = param_arg();  // masked categories by their logits
        a.value = value_arg(value);
        a.tol = tol;
        a.status = status.data();
        run(a, resolve_threads(fn, num_threads));
        for (int64_t r = 0; r < rows; ++r)
            if (status[static_cast<size_t>(r)] != 0)
                bad_value(fn, value, r, status[static_cast<size_t>(r)], tol);
        return rows;
    }

    // Throws for row r of value, which the support check gave status `code`
    // (CheckArgs): a bad entry (1), a sum off 1 (2), weight on a masked
    // category (3); the first such entry of the row is named.
    [[noreturn]] void bad_value(const std::string& fn,
                                const MatrixView<const Real>& value, int64_t r,
                                int code, double tol) const {
        const bool simplex = kSpace == detail::Space::simplex;
        if (code == 1) {
            for (int64_t j = 0; j < k_; ++j) {
                const Real v = value(r, j);
                if (simplex ? !(std::isfinite(v) && v >= 0)
                            : (std::isnan(v) || v == kInf))
                    detail::fail(
                        fn,
                        std::string("value must be ") +
                            (simplex
                                 ? "non-negative and finite (a point on the simplex)"
                                 : "the log of a point on the simplex (finite or "
                                   "-inf)") +
                            ", got " + detail::show(v) + " at " + where(r, j));
            }
        }
        if (code == 3) {
            const Real* lg = logits_.data() + param_row(r) * k_;
            for (int64_t j = 0; j < k_; ++j)
                if (lg[j] == -kInf &&
                    (simplex ? value(r, j) != 0 : value(r, j) != -kInf))
                    detail::fail(
                        fn, "value must be " + std::string(simplex ? "0" : "-inf") +
                                " on masked categories (logit -inf), which have "
                                "probability zero; got " +
                                detail::show(value(r, j)) + " at " + where(r, j));
        }
        // A sum off 1 (code 2): the sum the check tested, in its order and
        // with its exp, so that the number shown is outside the tolerance.
        const double sum = detail::RELAXCAT_ISA_NAMESPACE::support_row_sum(
            value.data + r * value.row_stride, value.col_stride, k_, simplex);
        detail::fail(fn, std::string("value must ") +
                             (simplex ? "sum to 1" : "satisfy sum(exp(value)) = 1") +
                             " over each row within " + detail::show(tol) + ", got " +
                             detail::show(sum) + " at row " + detail::show(r));
    }

    int64_t param_row(int64_t r) const { return param_rows_ == 1 ? 0 : r % batch_; }
    int64_t temperature_index(int64_t r) const {
        return temperature_.size() == 1 ? 0 : r % batch_;
    }

    // Rows n B as the kernels' two-dimensional batch (n, B).
    detail::RowShape shape(int64_t rows) const {
        detail::RowShape s;
        s.ndim = 2;
        s.shape[0] = batch_ > 0 ? rows / batch_ : 0;
        s.shape[1] = batch_;
        s.rows = rows;
        s.k = k_;
        return s;
    }

    detail::RowArg<const Real> param_arg() const {
        detail::RowArg<const Real> a;
        a.data = logits_.data();
        a.stride[1] = param_rows_ == 1 ? 0 : k_;
        return a;
    }

    detail::RowArg<const Real> temperature_arg() const {
        detail::RowArg<const Real> a;
        a.data = temperature_.data();
        a.stride[1] = temperature_.size() == 1 ? 0 : 1;
        return a;
    }

    // Rows first, first + 1, ... of a value-shaped view (first a multiple of B).
    detail::RowArg<const Real> value_arg(const MatrixView<const Real>& v,
                                         int64_t first = 0) const {
        detail::RowArg<const Real> a;
        a.data = v.data + first * v.row_stride;
        a.stride[0] = batch_ * v.row_stride;
        a.stride[1] = v.row_stride;
        a.kstride = v.col_stride;
        return a;
    }

    template <class T>
    detail::RowArg<const T> contiguous_arg(const T* data) const {
        detail::RowArg<const T> a;
        a.data = data;
        a.stride[0] = k_;
        return a;
    }

    detail::LogProbArgs<Real> log_prob_args(const MatrixView<const Real>& value,
                                            int64_t rows, int64_t first = 0) const {
        detail::LogProbArgs<Real> a;
        a.shape = shape(rows);
        a.space = kSpace;
        a.logits = param_arg();
        a.temperature = temperature_arg();
        a.value = value_arg(value, first);
        return a;
    }

    void sample_into(detail::RsampleArgs<Real>& a, MatrixView<Real> out,
                     int threads) const {
        // The caller's out is the result here, as Python's without out= is.
        detail::rsample_choose_scratch(a, threads, false);
        detail::RowsOut<Real> target(out);
        if (kSpace == detail::Space::simplex)
            a.x = target.get();
        else
            a.log_x = target.get();
        run(a, threads);
        target.finish();
    }

    // Runs a kernel over all rows; see detail/parallel.hpp. Nothing interrupts
    // an embedder's call, so the stop poll always answers no.
    template <class Args>
    static void run(const Args& a, int threads) {
        if (a.shape.rows <= 0) return;
        detail::parallel_rows(
            a.shape.rows, a.shape.k, threads, scratch_for(a),
            [&a](int64_t r0, int64_t r1, double* scratch) {
                kernel(a, r0, r1, scratch);
            },
            [] { return false; });
    }

    // rsample: a few long rows are each spread over the threads chunk by chunk
    // (Note [split rows] in detail/kernels.hpp), other calls run row by row.
    static void run(const detail::RsampleArgs<Real>& a, int threads) {
        if (!detail::rsample_split(a, threads)) {
            run<detail::RsampleArgs<Real>>(a, threads);
            return;
        }
        detail::parallel_row_steps(
            a.shape.rows, a.shape.k, detail::kRsampleSteps, threads,
            detail::rsample_split_scratch(a.shape.k, detail::rsample_needs(a)),
            [&a](int64_t r, int s, int64_t j0, int64_t n, const double* facts,
                 double* kept) {
                return detail::RELAXCAT_ISA_NAMESPACE::rsample_row_step(a, r, s, j0, n,
                                                                        facts, kept);
            },
            [](int s, const double* results, int64_t chunks) {
                return detail::RELAXCAT_ISA_NAMESPACE::split_row_combine(s, results,
                                                                         chunks);
            },
            [] { return false; });
    }

    // rsample_vjp: a few long rows on the simplex are each spread over the
    // threads chunk by chunk (Note [split rows] for rsample_vjp in
    // detail/kernels.hpp), other calls run row by row.
    static void run(const detail::RsampleVjpArgs<Real>& a, int threads) {
        if (!detail::rsample_vjp_split(a, threads)) {
            run<detail::RsampleVjpArgs<Real>>(a, threads);
            return;
        }
        detail::parallel_row_steps(
            a.shape.rows, a.shape.k, detail::kRsampleVjpSteps, threads,
            detail::rsample_vjp_split_scratch(a.shape.k),
            [&a](int64_t r, int s, int64_t j0, int64_t n, const double* facts,
                 double* shared) {
                return detail::RELAXCAT_ISA_NAMESPACE::rsample_vjp_row_step(
                    a, r, s, j0, n, facts, shared);
            },
            [](int s, const double* results, int64_t chunks) {
                return s == 1 ? detail::RELAXCAT_ISA_NAMESPACE::split_row_combine(
                                    2, results, chunks)
                              : 0.0;
            },
            [] { return false; });
    }

    // Scratch per thread (rsample needs less than the others above kColumnMaxK
    // categories).
    template <class Args>
    static int64_t scratch_for(const Args& a) {
        return detail::RELAXCAT_ISA_NAMESPACE::scratch_size(a.shape.k);
    }
    static int64_t scratch_for(const detail::RsampleArgs<Real>& a) {
        return detail::RELAXCAT_ISA_NAMESPACE::rsample_scratch_size(
            a.shape.k, detail::rsample_needs(a));
    }

    static void kernel(const detail::RsampleArgs<Real>& a, int64_t r0, int64_t r1,
                       double* s) {
        detail::RELAXCAT_ISA_NAMESPACE::rsample_rows(a, r0, r1, s);
    }
    static void kernel(const detail::LogProbArgs<Real>& a, int64_t r0, int64_t r1,
                       double* s) {
        detail::RELAXCAT_ISA_NAMESPACE::log_prob_rows(a, r0, r1, s);
    }
    static void kernel(const detail::RsampleVjpArgs<Real>& a, int64_t r0, int64_t r1,
                       double* s) {
        detail::RELAXCAT_ISA_NAMESPACE::rsample_vjp_rows(a, r0, r1, s);
    }
    static void kernel(const detail::ParamArgs<Real>& a, int64_t r0, int64_t r1,
                       double* s) {
        detail::RELAXCAT_ISA_NAMESPACE::param_rows(a, r0, r1, s);
    }
    static void kernel(const detail::CheckArgs<Real>& a, int64_t r0, int64_t r1,
                       double* s) {
        detail::RELAXCAT_ISA_NAMESPACE::check_rows(a, r0, r1, s);
    }
    static void kernel(const detail::ProbsVjpArgs<Real>& a, int64_t r0, int64_t r1,
                       double* s) {
        detail::RELAXCAT_ISA_NAMESPACE::probs_vjp_rows(a, r0, r1, s);
    }

    // log_prob_vjp, and with want_log_prob the log-density into out too.
    void log_prob_with_vjp(const std::string& fn, MatrixView<const Real> value,
                           VectorView<const Real> grad, VectorView<Real> out,
                           MatrixView<Real> grad_value, MatrixView<Real> grad_param,
                           VectorView<Real> grad_temperature, int num_threads,
                           bool want_log_prob) const {
        const int64_t rows = check_value(fn, value, num_threads);
        if (want_log_prob) check_vector(fn, "out", out, rows, true);
        check_vector(fn, "grad", grad, rows, false);
        int64_t count = 0;
        const int64_t bad = detail::first_bad(
            rows, [&](int64_t i) { return !std::isfinite(grad[i]); }, &count);
        if (bad >= 0)
            detail::fail(fn, "grad must be finite, got " + detail::show(grad[bad]) +
                                 " at row " + detail::show(bad) +
                                 detail::count_note(count));
        if (grad_value.data != nullptr) {
            check_matrix(fn, "grad_value", grad_value, rows);
            check_distinct(fn, "grad_value", grad_value);
        }
        const Named inputs[] = {{"value", detail::extent(value)},
                                {"grad", detail::extent(grad)}};
        for (const Named& in : inputs) {
            check_no_overlap(fn, "grad_value", detail::extent(grad_value), in.name,
                             in.extent);
            check_no_overlap(fn, "out", detail::extent(out), in.name, in.extent);
        }
        check_no_overlap(fn, "out", detail::extent(out), "grad_value",
                         detail::extent(grad_value));
        check_grad_outputs(fn, grad_param, grad_temperature,
                           {inputs[0],
                            inputs[1],
                            {"grad_value", detail::extent(grad_value)},
                            {"out", detail::extent(out)}});
        const int threads = resolve_threads(fn, num_threads);
        detail::RowsOut<Real> lp(out);
        detail::RowsOut<Real> gv(grad_value);
        over_slices(rows, grad_param, grad_temperature, threads,
                    [&](int64_t first, int64_t n, ParamGrad& gl, TemperatureGrad& gt) {
                        detail::LogProbArgs<Real> a = log_prob_args(value, n, first);
                        a.grad.data = grad.data + first * grad.stride;
                        a.grad.stride[0] = batch_ * grad.stride;
                        a.grad.stride[1] = grad.stride;
                        a.log_prob = lp.get() ? lp.get() + first : nullptr;
                        a.grad_value = gv.get() ? gv.get() + first * k_ : nullptr;
                        gl.set(a, first, n);
                        a.grad_temperature = gt.slice(n);
                        if (a.log_prob || a.grad_value || a.grad_logits ||
                            a.grad_logits_wide || a.grad_temperature)
                            run(a, threads);
                    });
        lp.finish();
        gv.finish();
    }

    // Note [gradients summed in slices] (the Python class's, in
    // python/relaxcat/distributions.py, says why): a VJP whose logits
    // gradient is summed over the draws, with more than kSliceElements
    // elements, runs the kernel over slices of about that many elements (whole
    // draws, one at least), and each slice's per-row gradients are added into
    // the sums as they come. The additions are those of one pass over all rows,
    // in the same row order, so the bits are the same as without slices. A sum
    // that is not finite is taken again over all rows at once, as RowSums's
    // rescue of sums past the range needs every term.
    static constexpr int64_t kSliceElements = int64_t(1) << 20;

    // Per-row values, `width` to a row, that the kernel writes slice by slice
    // (slice()) and that take() adds into row target(r) of `targets` rows, in
    // row order and in double, so the result does not depend on the thread
    // count. Finite values near the largest double can have partial sums that
    // overflow (to inf, or NaN with both signs) where the exact sum is finite;
    // when the slice is the whole call, such a sum is taken again with every
    // term scaled by 2^-64, the same additions each exact in its scaling, and
    // scaled back (Note [sums past the range] in python/relaxcat/distributions.py).
    class RowSums {
    public:
        RowSums(int64_t targets, int64_t width)
            : width_(width), acc_(static_cast<size_t>(targets * width), 0.0) {}

        double* slice(int64_t rows) {
            buffer_.resize(static_cast<size_t>(rows * width_));
            return buffer_.data();
        }

        template <class Target>
        void take(int64_t first, int64_t rows, bool whole, Target target) {
            for (int64_t r = 0; r < rows; ++r) {
                double* dst = acc_.data() + target(first + r) * width_;
                const double* src = buffer_.data() + r * width_;
                for (int64_t j = 0; j < width_; ++j) dst[j] += src[j];
            }
            if (whole && lost()) rescue(rows, target);
        }

        bool lost() const {
            for (double v : acc_)
                if (!std::isfinite(v)) return true;
            return false;
        }

        const std::vector<double>& sums() const { return acc_; }

    private:
        template <class Target>
        void rescue(int64_t rows, Target target) {
            const size_t n = acc_.size();
            std::vector<double> scaled(n, 0.0);
            std::vector<char> terms_finite(n, 1);
            for (int64_t r = 0; r < rows; ++r) {
                const int64_t base = target(r) * width_;
                const double* src = buffer_.data() + r * width_;
                for (int64_t j = 0; j < width_; ++j) {
                    scaled[base + j] += src[j] * 0x1p-64;
                    if (!std::isfinite(src[j])) terms_finite[base + j] = 0;
                }
            }
            for (size_t i = 0; i < n; ++i)
                if (!std::isfinite(acc_[i]) && terms_finite[i])
                    acc_[i] = scaled[i] * 0x1p64;
        }

        int64_t width_;
        std::vector<double> acc_;
        std::vector<double> buffer_;
    };

    // Where a VJP kernel writes its per-row logits gradient (rows, K). With one
    // value row per parameter row and logits as the parameter, that gradient is
    // the result, so the kernel writes it in Real into the caller's grad_param
    // (through RowsOut) and nothing is copied; otherwise in double, summed over
    // the draws into the parameter's rows (RowSums; for probs, then through the
    // normalisation, probs_vjp, still in double) and rounded once to Real
    // (Note [summed gradients]).
    class ParamGrad {
    public:
        ParamGrad(const RelaxedBase& d, MatrixView<Real> out, int64_t rows)
            : d_(d),
              out_(out),
              direct_(out.data != nullptr && !d.has_probs() && d.param_rows_ == rows),
              target_(direct_ ? out : MatrixView<Real>()),
              sums_(summed() ? d.param_rows_ : 0, d.k_) {}
        bool summed() const { return out_.data != nullptr && !direct_; }
        // The kernel's outputs for rows first .. first + n - 1.
        template <class Args>
        void set(Args& a, int64_t first, int64_t n) {
            a.grad_logits = direct_ ? target_.get() + first * d_.k_ : nullptr;
            a.grad_logits_wide = summed() ? sums_.slice(n) : nullptr;
        }
        void take(int64_t first, int64_t n, bool whole) {
            if (summed())
                sums_.take(first, n, whole,
                           [this](int64_t r) { return d_.param_row(r); });
        }
        bool lost() const { return summed() && sums_.lost(); }
        void finish(int threads) {
            if (direct_)
                target_.finish();
            else if (summed())
                d_.finish_param_grad(sums_.sums(), out_, threads);
        }

    private:
        const RelaxedBase& d_;
        MatrixView<Real> out_;
        bool direct_;
        detail::RowsOut<Real> target_;
        RowSums sums_;
    };

    // The per-row temperature gradient, in double, summed over the rows that
    // share a temperature and rounded once (Note [summed gradients]).
    class TemperatureGrad {
    public:
        TemperatureGrad(const RelaxedBase& d, VectorView<Real> out)
            : d_(d),
              out_(out),
              sums_(out.data ? static_cast<int64_t>(d.temperature_.size()) : 0, 1) {}
        double* slice(int64_t n) { return out_.data ? sums_.slice(n) : nullptr; }
        void take(int64_t first, int64_t n, bool whole) {
            if (out_.data)
                sums_.take(first, n, whole,
                           [this](int64_t r) { return d_.temperature_index(r); });
        }
        bool lost() const { return out_.data && sums_.lost(); }
        void finish() {
            if (out_.data == nullptr) return;
            for (int64_t i = 0; i < out_.size; ++i)
                out_[i] = static_cast<Real>(sums_.sums()[static_cast<size_t>(i)]);
        }

    private:
        const RelaxedBase& d_;
        VectorView<Real> out_;
        RowSums sums_;
    };

    // Runs a VJP over the rows of a call: run_slice(first, n, gl, gt) runs the
    // kernel on rows first .. first + n - 1 with the gradients' outputs for them;
    // over slices of whole draws when the logits gradient is summed (Note
    // [gradients summed in slices]), else in one call.
    template <class RunSlice>
    void over_slices(int64_t rows, MatrixView<Real> grad_param,
                     VectorView<Real> grad_temperature, int threads,
                     RunSlice run_slice) const {
        const int64_t draws = batch_ > 0 ? rows / batch_ : 0;
        for (bool sliced : {true, false}) {
            ParamGrad gl(*this, grad_param, rows);
            TemperatureGrad gt(*this, grad_temperature);
            int64_t step = draws;
            if (sliced && gl.summed() && rows * k_ > kSliceElements)
                step = std::max<int64_t>(1, kSliceElements / (batch_ * k_));
            const bool whole = step >= draws;
            const auto slice = [&](int64_t first, int64_t n) {
                run_slice(first, n, gl, gt);
                gl.take(first, n, whole);
                gt.take(first, n, whole);
            };
            if (whole)
                slice(0, rows);
            else
                for (int64_t d = 0; d < draws; d += step)
                    slice(d * batch_, std::min(step, draws - d) * batch_);
            if (!whole && (gl.lost() || gt.lost())) continue;
            gl.finish(threads);
            gt.finish();
            return;
        }
    }

    // The logits gradient summed to the parameter's rows (acc, L K doubles) as
    // the parameter's gradient: rounded to Real, or for probs taken through the
    // normalisation (probs_vjp) in double first.
    void finish_param_grad(const std::vector<double>& acc, MatrixView<Real> out,
                           int threads) const {
        if (!has_probs()) {
            for (int64_t i = 0; i < param_rows_; ++i)
                for (int64_t j = 0; j < k_; ++j)
                    out(i, j) = static_cast<Real>(acc[i * k_ + j]);
            return;
        }
        detail::RowsOut<Real> target(out);
        detail::ProbsVjpArgs<Real> a;
        a.shape = rows_shape(param_rows_);
        a.probs = contiguous_arg(probs_.data());
        a.grad_logits = contiguous_arg<double>(acc.data());
        a.grad_probs = target.get();
        run(a, threads);
        target.finish();
    }

    void param_op(const std::string& fn, detail::ParamOp op,
                  const std::vector<Real>& in, MatrixView<Real> out) const {
        check_view(fn, "out", out);
        // (check_view refuses a null pointer unless the view is empty.)
        if (out.rows != param_rows_ || out.cols != k_)
            detail::fail(fn, "out must have the parameter's shape (" +
                                 detail::show(param_rows_) + ", " + detail::show(k_) +
                                 "), got (" + detail::show(out.rows) + ", " +
                                 detail::show(out.cols) + ")");
        check_distinct(fn, "out", out);
        detail::RowsOut<Real> target(out);
        detail::ParamArgs<Real> a;
        a.shape = rows_shape(param_rows_);
        a.op = op;
        a.in = contiguous_arg(in.data());
        a.out = target.get();
        run(a, 1);
        target.finish();
    }

    static constexpr Real kInf = std::numeric_limits<Real>::infinity();

    std::vector<Real> temperature_;
    std::vector<Real> logits_;  // as given, or log(probs)
    std::vector<Real> probs_;   // as given, or empty
    int64_t k_ = 0;
    int64_t param_rows_ = 0;
    int64_t batch_ = 0;
    bool validate_ = true;
};

// The Concrete (Gumbel-Softmax) distribution on the probability simplex: a
// sample is x = softmax((logits + G) / T) with G standard Gumbel noise (Maddison,
// Mnih and Teh, 2017; Jang, Gu and Poole, 2017). float or double; every
// intermediate is double, so float results are within a few float ulps.
template <class Real>
class RelaxedOneHotCategorical : public RelaxedBase<Real, detail::Space::simplex> {
public:
    using RelaxedBase<Real, detail::Space::simplex>::RelaxedBase;
};

// The log of a Concrete sample, y = log_softmax((logits + G) / T). Samples,
// log_prob and the VJPs work with y = log x, which stays finite where x
// underflows at low temperature; prefer it below T = 0.1 or so.
template <class Real>
class ExpRelaxedOneHotCategorical : public RelaxedBase<Real, detail::Space::log> {
public:
    using RelaxedBase<Real, detail::Space::log>::RelaxedBase;
};

}  // namespace RELAXCAT_ISA_NAMESPACE
}  // namespace relaxcat
