// pybind11 bindings of the moments, mode, categorical KL and one-hot rows
// (relaxcat/detail/moments.hpp): check the arrays the Python layer prepared,
// release the GIL, run the rows over threads. No math here.
//
// These row functions are compiled once, in this baseline translation unit, under
// the default `native` namespace: they are scalar quadrature loops that gain
// nothing from wider vectors, and no per-ISA copy of them exists to collide with.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "aligned.hpp"
#include "relaxcat/detail/moments.hpp"
#include "relaxcat/detail/parallel.hpp"
#include "without_gil.hpp"

namespace py = pybind11;

namespace relaxcat {
namespace python {
namespace {

namespace mo = detail::native;

[[noreturn]] void value_error(const std::string& msg) {
    throw py::value_error(msg);
}

// A C-contiguous float64 array of exactly `ndim` dimensions with the given shape
// prefix; the Python layer makes them so.
template <class Real = double>
py::array checked(const py::array& a, const char* fn, const char* name,
                  py::ssize_t rows, py::ssize_t k, int trailing) {
    if (!a.dtype().is(py::dtype::of<Real>()) || !(a.flags() & py::array::c_style))
        throw py::type_error(
            std::string(fn) + ": " + name + " must be a C-contiguous " +
            (std::is_same<Real, float>::value ? "float32" : "float64") + " array");
    bool ok = a.ndim() == 1 + trailing && a.shape(0) == rows;
    for (int d = 1; ok && d <= trailing; ++d) ok = a.shape(d) == k;
    if (!ok) value_error(std::string(fn) + ": " + name + " has the wrong shape");
    check_aligned<Real>(a, fn, name);
    return a;
}

// Runs body(row, scratch) over the rows without the GIL, polling for Ctrl-C.
template <class Body>
void run_rows(int64_t rows, int64_t k, int threads, int64_t scratch, Body body) {
    without_gil([&](auto stop) {
        // The quadrature costs about 1e5 operations per element, so every row is
        // worth a thread: the element count handed to the splitter is scaled up.
        return detail::parallel_rows(
            rows, k * detail::kMinElementsPerThread, threads, scratch,
            [&](int64_t r0, int64_t r1, double* s) {
                for (int64_t r = r0; r < r1; ++r) body(r, s);
            },
            stop);
    });
}

void moments(int kind, const py::array& logits, const py::array& temperature,
             const py::array& out_mean, const py::object& out_second, int threads) {
    const char* fn = "moments";
    if (kind < 0 || kind > 2) value_error("moments: kind must be 0, 1 or 2");
    if (logits.ndim() != 2) value_error("moments: logits must be (rows, K)");
    const py::ssize_t rows = logits.shape(0), k = logits.shape(1);
    const double* a =
        static_cast<const double*>(checked(logits, fn, "logits", rows, k, 1).data());
    const double* t = static_cast<const double*>(
        checked(temperature, fn, "temperature", rows, k, 0).data());
    double* mean = static_cast<double*>(
        checked(out_mean, fn, "out_mean", rows, k, 1).mutable_data());
    double* second = nullptr;
    if (kind > 0) {
        if (out_second.is_none()) value_error("moments: out_second is needed");
        py::array s = py::reinterpret_borrow<py::array>(out_second);
        second = static_cast<double*>(
            checked(s, fn, "out_second", rows, k, kind == 2 ? 2 : 1).mutable_data());
    }
    const auto mk = static_cast<mo::MomentKind>(kind);
    const int64_t ks = kind == 2 ? k * k : k;
    run_rows(rows, k, threads, 8 * k, [&](int64_t r, double* s) {
        mo::moments_row(a + r * k, k, t[r], mk, mean + r * k,
                        second ? second + r * ks : nullptr, s);
    });
}

void log_mean(const py::array& logits, const py::array& temperature,
              const py::array& out, int threads) {
    const char* fn = "log_mean";
    if (logits.ndim() != 2) value_error("log_mean: logits must be (rows, K)");
    const py::ssize_t rows = logits.shape(0), k = logits.shape(1);
    const double* a =
        static_cast<const double*>(checked(logits, fn, "logits", rows, k, 1).data());
    const double* t = static_cast<const double*>(
        checked(temperature, fn, "temperature", rows, k, 0).data());
    double* o =
        static_cast<double*>(checked(out, fn, "out", rows, k, 1).mutable_data());
    run_rows(rows, k, threads, 1, [&](int64_t r, double*) {
        mo::log_mean_row(a + r * k, k, t[r], o + r * k);
    });
}

// Returns the number of rows where Newton did not converge; their first entry of
// `out` is NaN, so that the caller can name them.
int64_t mode(int space, const py::array& logits, const py::array& temperature,
             const py::array& out, int threads) {
    const char* fn = "mode";
    if (logits.ndim() != 2) value_error("mode: logits must be (rows, K)");
    const py::ssize_t rows = logits.shape(0), k = logits.shape(1);
    const double* a =
        static_cast<const double*>(checked(logits, fn, "logits", rows, k, 1).data());
    const double* t = static_cast<const double*>(
        checked(temperature, fn, "temperature", rows, k, 0).data());
    double* o =
        static_cast<double*>(checked(out, fn, "out", rows, k, 1).mutable_data());
    std::atomic<int64_t> failed{0};
    run_rows(rows, k, threads, 6 * k, [&](int64_t r, double* s) {
        if (!mo::mode_row(a + r * k, k, t[r], space, o + r * k, s)) {
            failed.fetch_add(1);
            o[r * k] = std::numeric_limits<double>::quiet_NaN();
        }
    });
    return failed.load();
}

void categorical_kl(const py::array& p, const py::array& q, const py::array& out,
                    int threads) {
    const char* fn = "categorical_kl";
    if (p.ndim() != 2) value_error("categorical_kl: p must be (rows, K)");
    const py::ssize_t rows = p.shape(0), k = p.shape(1);
    const double* a =
        static_cast<const double*>(checked(p, fn, "p", rows, k, 1).data());
    const double* b =
        static_cast<const double*>(checked(q, fn, "q", rows, k, 1).data());
    double* o =
        static_cast<double*>(checked(out, fn, "out", rows, k, 0).mutable_data());
    run_rows(rows, 1, threads, 1, [&](int64_t r, double*) {
        o[r] = mo::categorical_kl_row(a + r * k, b + r * k, k);
    });
}

// In the dtype of x, float32 or float64, so that a float32 hard sample needs no
// float64 copies (a fresh-user review: 384 MiB peak for 128 MiB of outputs).
template <class Real>
void one_hot_t(const py::array& x, const py::array& out, int threads) {
    const char* fn = "one_hot";
    const py::ssize_t rows = x.shape(0), k = x.shape(1);
    const Real* v =
        static_cast<const Real*>(checked<Real>(x, fn, "x", rows, k, 1).data());
    Real* o =
        static_cast<Real*>(checked<Real>(out, fn, "out", rows, k, 1).mutable_data());
    run_rows(rows, 1, threads, 1,
             [&](int64_t r, double*) { mo::one_hot_row(v + r * k, k, o + r * k); });
}

void one_hot(const py::array& x, const py::array& out, int threads) {
    if (x.ndim() != 2) value_error("one_hot: x must be (rows, K)");
    if (x.dtype().is(py::dtype::of<float>()))
        one_hot_t<float>(x, out, threads);
    else
        one_hot_t<double>(x, out, threads);
}

}  // namespace

void bind_moments(py::module_& m) {
    m.def("moments", &moments, py::arg("kind"), py::arg("logits"),
          py::arg("temperature"), py::arg("out_mean"), py::arg("out_second"),
          py::arg("num_threads"),
          "Mean (kind 0), with variance (1) or covariance (2), by quadrature.");
    m.def("log_mean", &log_mean, py::arg("logits"), py::arg("temperature"),
          py::arg("out"), py::arg("num_threads"), "E[log x] by quadrature.");
    m.def("mode", &mode, py::arg("space"), py::arg("logits"), py::arg("temperature"),
          py::arg("out"), py::arg("num_threads"),
          "The mode per row; returns the count of rows where Newton failed.");
    m.def("categorical_kl", &categorical_kl, py::arg("p"), py::arg("q"), py::arg("out"),
          py::arg("num_threads"), "KL of the underlying categoricals, per row.");
    m.def("one_hot", &one_hot, py::arg("x"), py::arg("out"), py::arg("num_threads"),
          "One-hot of the first largest entry per row.");
}

}  // namespace python
}  // namespace relaxcat
