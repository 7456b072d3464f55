// pybind11 bindings of the kernels: check the structure of the arrays the Python
// layer prepared, release the GIL, run the rows over threads. No math here.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "aligned.hpp"
#include "dispatch.hpp"
#include "relaxcat/detail/parallel.hpp"
#include "without_gil.hpp"

namespace py = pybind11;

namespace relaxcat {
namespace python {
namespace {

using detail::RowArg;
using detail::RowShape;

[[noreturn]] void type_error(const std::string& msg) {
    throw py::type_error(msg);
}
[[noreturn]] void value_error(const std::string& msg) {
    throw py::value_error(msg);
}

// A draw of n elements from element `first` must end within the stream
// (detail::stream_holds, as Philox::holds checks in the C++ API).
void check_stream_room(const std::string& fn, uint64_t first, uint64_t n) {
    if (!detail::stream_holds(first, n))
        value_error(fn + ": this draw of " + detail::element_count(n) +
                    " from element " + std::to_string(first) +
                    " would run past the end of " + "the stream (2^64 elements; " +
                    std::to_string(~first + 1) +
                    (~first + 1 == 1 ? " remains)" : " remain)"));
}

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
        s += std::to_string(a.shape(d)) +
             (a.ndim() == 1 ? "," : (d + 1 < a.ndim() ? ", " : ""));
    return s + ")";
}

// The row shape of an array whose last axis holds the categories.
RowShape row_shape(const py::array& a, const char* fn, const char* name) {
    if (a.ndim() < 1)
        value_error(std::string(fn) + ": " + name +
                    " must have a category axis, got a 0-d array");
    if (a.ndim() - 1 > detail::kMaxBatchDims)
        value_error(std::string(fn) + ": " + name + " may have at most " +
                    std::to_string(detail::kMaxBatchDims) + " batch dimensions, got " +
                    std::to_string(a.ndim() - 1));
    RowShape s;
    s.ndim = static_cast<int>(a.ndim() - 1);
    for (int d = 0; d < s.ndim; ++d) {
        s.shape[d] = a.shape(d);
        s.rows *= a.shape(d);
    }
    s.k = a.shape(a.ndim() - 1);
    return s;
}

// Whether `a` holds native-endian Real. Compared by type number, not by object
// identity: an array that went through pickle carries an equal but distinct
// dtype object.
template <class Real>
bool holds(const py::array& a) {
    return a.dtype().num() == py::dtype::of<Real>().num();
}

template <class Real>
void check_kind(const py::array& a, const char* fn, const char* name) {
    if (!holds<Real>(a))
        type_error(std::string(fn) + ": " + name + " must have dtype " +
                   std::string(py::str(py::dtype::of<Real>())) + ", got " +
                   std::string(py::str(a.dtype())));
}

// A read-only strided view over `s` (with the category axis if with_k).
template <class Real>
RowArg<const Real> in_arg(const py::array& a, const RowShape& s, bool with_k,
                          const char* fn, const char* name) {
    check_kind<Real>(a, fn, name);
    const py::ssize_t want = s.ndim + (with_k ? 1 : 0);
    bool ok = a.ndim() == want;
    for (int d = 0; ok && d < s.ndim; ++d) ok = a.shape(d) == s.shape[d];
    if (ok && with_k) ok = a.shape(s.ndim) == s.k;
    if (!ok)
        value_error(std::string(fn) + ": " + name + " must have the shape of the rows" +
                    (with_k ? " and categories" : "") + ", got " + shape_str(a));
    RowArg<const Real> r;
    r.data = static_cast<const Real*>(a.data());
    check_aligned<Real>(a, fn, name);
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
        if (a.strides(d) % static_cast<py::ssize_t>(sizeof(Real)) != 0)
            value_error(std::string(fn) + ": " + name +
                        " has a stride that is not a multiple "
                        "of its item size; pass an aligned array");
        const int64_t st = a.strides(d) / static_cast<py::ssize_t>(sizeof(Real));
        if (d < s.ndim)
            r.stride[d] = st;
        else
            r.kstride = st;
    }
    return r;
}

// A writable C-contiguous output, or nullptr for None.
template <class Real>
Real* out_arg(const py::object& o, const RowShape& s, bool with_k, const char* fn,
              const char* name) {
    if (o.is_none()) return nullptr;
    if (!py::isinstance<py::array>(o))
        type_error(std::string(fn) + ": " + name + " must be an array");
    py::array a = py::reinterpret_borrow<py::array>(o);
    in_arg<Real>(a, s, with_k, fn, name);
    if (!(a.flags() & py::array::c_style))
        value_error(std::string(fn) + ": " + name + " must be C-contiguous");
    if (!a.writeable())
        value_error(std::string(fn) + ": " + name + " must be writable");
    return static_cast<Real*>(a.mutable_data());
}

// A (rows, K) gradient output of a VJP: an array of the call's dtype, or a
// float64 one for a float32 call, which gets the per-row gradient in double
// (Note [summed gradients]).
template <class Real>
void set_grad_out(Real*& real, double*& wide, const RowShape& shape,
                  const py::object& o, const char* fn, const char* name) {
    if (!std::is_same<Real, double>::value && py::isinstance<py::array>(o) &&
        holds<double>(py::reinterpret_borrow<py::array>(o)))
        wide = out_arg<double>(o, shape, true, fn, name);
    else
        real = out_arg<Real>(o, shape, true, fn, name);
}

// Scratch per thread for a kernel's arguments (rsample needs less than the others
// on rows above kColumnMaxK categories).
template <class Args>
int64_t scratch_for(const KernelTable& table, const Args& args) {
    return table.scratch_size(args.shape.k);
}

template <class Real>
int64_t scratch_for(const KernelTable& table, const detail::RsampleArgs<Real>& args) {
    return table.rsample_scratch_size(args.shape.k, detail::rsample_needs(args));
}

// Runs kernel(args, r0, r1, scratch) over all rows without the GIL, polling for
// Ctrl-C between tasks.
template <class Args, class Kernel>
void run(const Args& args, Kernel kernel, int threads) {
    const KernelTable& table = active();
    without_gil([&](auto stop) {
        return detail::parallel_rows(
            args.shape.rows, args.shape.k, threads, scratch_for(table, args),
            [&](int64_t r0, int64_t r1, double* scratch) {
                kernel(args, r0, r1, scratch);
            },
            stop);
    });
}

template <class Real>
const KernelSet<Real>& kernels() {
    if constexpr (sizeof(Real) == 4)
        return active().f32;
    else
        return active().f64;
}

// rsample over all rows, a few long rows each spread over the threads chunk by
// chunk (Note [split rows] in kernels.hpp), other calls row by row (run).
template <class Real>
void run_rsample(const detail::RsampleArgs<Real>& args, int threads) {
    if (!detail::rsample_split(args, threads)) {
        run(args, kernels<Real>().rsample, threads);
        return;
    }
    const auto step = kernels<Real>().rsample_step;
    const auto combine = active().split_row_combine;
    without_gil([&](auto stop) {
        return detail::parallel_row_steps(
            args.shape.rows, args.shape.k, detail::kRsampleSteps, threads,
            detail::rsample_split_scratch(args.shape.k, detail::rsample_needs(args)),
            [&](int64_t r, int s, int64_t j0, int64_t n, const double* facts,
                double* kept) { return step(args, r, s, j0, n, facts, kept); },
            combine, stop);
    });
}

// rsample_vjp over all rows, a few long rows on the simplex each spread over
// the threads chunk by chunk (Note [split rows] for rsample_vjp in
// kernels.hpp), other calls row by row (run).
template <class Real>
void run_rsample_vjp(const detail::RsampleVjpArgs<Real>& args, int threads) {
    if (!detail::rsample_vjp_split(args, threads)) {
        run(args, kernels<Real>().rsample_vjp, threads);
        return;
    }
    const auto step = kernels<Real>().rsample_vjp_step;
    const auto combine = active().split_row_combine;
    without_gil([&](auto stop) {
        return detail::parallel_row_steps(
            args.shape.rows, args.shape.k, detail::kRsampleVjpSteps, threads,
            detail::rsample_vjp_split_scratch(args.shape.k),
            [&](int64_t r, int s, int64_t j0, int64_t n, const double* facts,
                double* shared) { return step(args, r, s, j0, n, facts, shared); },
            // Step 1's shares of the temperature sum, added in chunk order.
            [&](int s, const double* results, int64_t chunks) {
                return s == 1 ? combine(2, results, chunks) : 0.0;
            },
            stop);
    });
}

template <class Real>
void rsample_t(const py::array& logits, const py::array& temperature,
               const py::object& gumbels, uint64_t key, uint64_t stream,
               uint64_t offset, const py::object& out_x, const py::object& out_log_x,
               int threads, bool no_scratch) {
    const char* fn = "rsample";
    detail::RsampleArgs<Real> a;
    a.shape = row_shape(logits, fn, "logits");
    a.logits = in_arg<Real>(logits, a.shape, true, fn, "logits");
    a.temperature = in_arg<Real>(temperature, a.shape, false, fn, "temperature");
    if (!gumbels.is_none())
        a.noise.gumbels64 = in_arg<double>(py::reinterpret_borrow<py::array>(gumbels),
                                           a.shape, true, fn, "gumbels");
    a.noise.key = key;
    a.noise.stream = stream;
    a.noise.offset = offset;
    if (gumbels.is_none())
        check_stream_room(fn, offset, static_cast<uint64_t>(a.shape.rows * a.shape.k));
    a.x = out_arg<Real>(out_x, a.shape, true, fn, "out");
    a.log_x = out_arg<Real>(out_log_x, a.shape, true, fn, "out_log");
    detail::rsample_choose_scratch(a, threads, no_scratch);  // Python: out= given
    run_rsample(a, threads);
}

template <class Real>
void log_prob_t(int space, const py::array& logits, const py::array& temperature,
                const py::array& value, const py::object& grad,
                const py::object& out_lp, const py::object& out_gv,
                const py::object& out_gl, const py::object& out_gt, int threads) {
    const char* fn = "log_prob";
    detail::LogProbArgs<Real> a;
    a.shape = row_shape(logits, fn, "logits");
    a.space = space == 0 ? detail::Space::simplex : detail::Space::log;
    a.logits = in_arg<Real>(logits, a.shape, true, fn, "logits");
    a.temperature = in_arg<Real>(temperature, a.shape, false, fn, "temperature");
    a.value = in_arg<Real>(value, a.shape, true, fn, "value");
    if (!grad.is_none())
        a.grad = in_arg<Real>(py::reinterpret_borrow<py::array>(grad), a.shape, false,
                              fn, "grad");
    a.log_prob = out_arg<Real>(out_lp, a.shape, false, fn, "out");
    set_grad_out<Real>(a.grad_value, a.grad_value_wide, a.shape, out_gv, fn,
                       "grad_value");
    set_grad_out<Real>(a.grad_logits, a.grad_logits_wide, a.shape, out_gl, fn,
                       "grad_logits");
    a.grad_temperature =
        out_arg<double>(out_gt, a.shape, false, fn, "grad_temperature");
    const bool wants_grad = a.grad_value || a.grad_value_wide || a.grad_logits ||
                            a.grad_logits_wide || a.grad_temperature;
    if (wants_grad && a.grad.data == nullptr)
        value_error("log_prob: gradient outputs need the upstream gradient 'grad'");
    run(a, kernels<Real>().log_prob, threads);
}

// Returns whether grad holds a NaN or an infinity (Note [checking the upstream
// gradient] in kernels.hpp); the caller then raises, naming it.
template <class Real>
bool rsample_vjp_t(int space, const py::array& value, const py::array& grad,
                   const py::array& temperature, const py::object& out_gl,
                   const py::object& out_gt, int threads, const py::object& logits) {
    const char* fn = "rsample_vjp";
    detail::RsampleVjpArgs<Real> a;
    a.shape = row_shape(value, fn, "value");
    a.space = space == 0 ? detail::Space::simplex : detail::Space::log;
    a.value = in_arg<Real>(value, a.shape, true, fn, "value");
    a.grad = in_arg<Real>(grad, a.shape, true, fn, "grad");
    a.temperature = in_arg<Real>(temperature, a.shape, false, fn, "temperature");
    set_grad_out<Real>(a.grad_logits, a.grad_logits_wide, a.shape, out_gl, fn,
                       "grad_logits");
    a.grad_temperature =
        out_arg<double>(out_gt, a.shape, false, fn, "grad_temperature");
    if (!logits.is_none())
        a.logits = in_arg<Real>(py::reinterpret_borrow<py::array>(logits), a.shape,
                                true, fn, "logits");
    std::atomic<bool> grad_not_finite{false};
    a.grad_not_finite = &grad_not_finite;
    run_rsample_vjp(a, threads);
    return grad_not_finite.load();
}

template <class Real>
void param_t(int op, const py::array& in, const py::object& out,
             const py::object& status, int threads) {
    const char* fn = "param";
    detail::ParamArgs<Real> a;
    a.shape = row_shape(in, fn, "in");
    if (op < 0 || op > 5)
        value_error("param: op must be 0..5, got " + std::to_string(op));
    a.op = static_cast<detail::ParamOp>(op);
    a.in = in_arg<Real>(in, a.shape, true, fn, "in");
    a.out = out_arg<Real>(out, a.shape, true, fn, "out");
    if (a.out == nullptr) value_error("param: out must be an array");
    if (op >= 4) {
        py::array st = py::reinterpret_borrow<py::array>(status);
        if (status.is_none() || !py::isinstance<py::array_t<uint8_t>>(status) ||
            !(st.flags() & py::array::c_style) || !st.writeable() ||
            st.size() != a.shape.rows)
            value_error(
                "param: status must be a writable C-contiguous uint8 array "
                "with one entry per row");
        a.status = static_cast<uint8_t*>(st.mutable_data());
    }
    run(a, kernels<Real>().param, threads);
}

template <class Real>
void probs_vjp_t(const py::array& probs, const py::array& grad_logits,
                 const py::object& out, int threads) {
    const char* fn = "probs_vjp";
    detail::ProbsVjpArgs<Real> a;
    a.shape = row_shape(probs, fn, "probs");
    a.probs = in_arg<Real>(probs, a.shape, true, fn, "probs");
    a.grad_logits = in_arg<double>(grad_logits, a.shape, true, fn, "grad_logits");
    a.grad_probs = out_arg<Real>(out, a.shape, true, fn, "out");
    if (a.grad_probs == nullptr) value_error("probs_vjp: out must be an array");
    run(a, kernels<Real>().probs_vjp, threads);
}

template <class Real>
void check_t(int space, const py::array& logits, const py::array& value, double tol,
             py::array status, int threads) {
    const char* fn = "check_values";
    detail::CheckArgs<Real> a;
    a.shape = row_shape(value, fn, "value");
    a.space = space == 0 ? detail::Space::simplex : detail::Space::log;
    a.logits = in_arg<Real>(logits, a.shape, true, fn, "logits");
    a.value = in_arg<Real>(value, a.shape, true, fn, "value");
    a.tol = tol;
    if (!py::isinstance<py::array_t<uint8_t>>(status) ||
        status.ndim() != a.shape.ndim || !(status.flags() & py::array::c_style) ||
        !status.writeable() || status.size() != a.shape.rows)
        value_error(
            "check_values: status must be a writable C-contiguous uint8 array "
            "with one entry per row");
    a.status = static_cast<uint8_t*>(status.mutable_data());
    run(a, kernels<Real>().check, threads);
}

// Calls f<float> or f<double> by the dtype of `a`.
template <class F32, class F64>
void by_dtype(const py::array& a, const char* fn, const char* name, F32 f32, F64 f64) {
    if (holds<float>(a)) return f32();
    if (holds<double>(a)) return f64();
    type_error(std::string(fn) + ": " + name +
               " must have dtype float32 or float64, got " +
               std::string(py::str(a.dtype())));
}

// The noise of a stream: the double noise, or the float noise with
// float32=True (noise.hpp; README, "The random stream").
// An integer argument of gumbels in [0, 2^64) (n: [0, 2^63)), with a message
// naming it; Python ints and NumPy integers (anything with __index__ but bool).
uint64_t index_arg(const py::handle& v, const char* name, bool signed_range) {
    const std::string range = signed_range ? "[0, 2**63)" : "[0, 2**64)";
    const auto not_an_integer = [&] {
        type_error(std::string("gumbels: ") + name + " must be an integer in " + range +
                   ", got " + std::string(py::str(py::type::of(v).attr("__name__"))));
    };
    if (PyBool_Check(v.ptr()) || !PyIndex_Check(v.ptr())) not_an_integer();
    // __index__ may itself refuse (a NumPy array of one element: TypeError);
    // any other exception it raises is passed on as it is.
    PyObject* const index = PyNumber_Index(v.ptr());
    if (index == nullptr) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) throw py::error_already_set();
        PyErr_Clear();
        not_an_integer();
    }
    const py::int_ i = py::reinterpret_steal<py::int_>(index);
    const unsigned long long u = PyLong_AsUnsignedLongLong(i.ptr());
    const bool bad = u == static_cast<unsigned long long>(-1) && PyErr_Occurred();
    if (bad) PyErr_Clear();
    if (bad || (signed_range && u > static_cast<unsigned long long>(INT64_MAX)))
        value_error(std::string("gumbels: ") + name + " must be an integer in " +
                    range + ", got " + std::string(py::str(i)));
    return static_cast<uint64_t>(u);
}

py::array gumbels(const py::object& key_obj, const py::object& stream_obj,
                  const py::object& first_obj, const py::object& n_obj, bool float32) {
    const uint64_t key = index_arg(key_obj, "key", false);
    const uint64_t stream = index_arg(stream_obj, "stream", false);
    const uint64_t first = index_arg(first_obj, "first", false);
    const auto n = static_cast<int64_t>(index_arg(n_obj, "n", true));
    check_stream_room("gumbels", first, static_cast<uint64_t>(n));
    const KernelTable& t = active();
    if (float32) {
        py::array_t<float> out(n);
        t.gumbels_f32(key, stream, first, n, out.mutable_data());
        return std::move(out);
    }
    py::array_t<double> out(n);
    t.gumbels(key, stream, first, n, out.mutable_data());
    return std::move(out);
}

py::array_t<double> map_math(
    const std::string& name,
    const py::array_t<double, py::array::c_style | py::array::forcecast>& in) {
    py::array_t<double> out(in.size());
    const KernelTable& t = active();
    if (name == "log")
        t.log(in.data(), out.mutable_data(), in.size());
    else if (name == "log_fused")
        t.log_fused(in.data(), out.mutable_data(), in.size());
    else if (name == "exp")
        t.exp(in.data(), out.mutable_data(), in.size());
    else
        value_error("math: name must be 'log', 'log_fused' or 'exp', got '" + name +
                    "'");
    return out;
}

}  // namespace

void bind_kernels(py::module_& m) {
    m.def(
        "rsample",
        [](const py::array& logits, const py::array& temperature,
           const py::object& gumbels, uint64_t key, uint64_t stream, uint64_t offset,
           const py::object& out_x, const py::object& out_log_x, int threads,
           bool no_scratch) {
            by_dtype(
                logits, "rsample", "logits",
                [&] {
                    rsample_t<float>(logits, temperature, gumbels, key, stream, offset,
                                     out_x, out_log_x, threads, no_scratch);
                },
                [&] {
                    rsample_t<double>(logits, temperature, gumbels, key, stream, offset,
                                      out_x, out_log_x, threads, no_scratch);
                });
        },
        py::arg("logits"), py::arg("temperature"), py::arg("gumbels"), py::arg("key"),
        py::arg("stream"), py::arg("offset"), py::arg("out"), py::arg("out_log"),
        py::arg("num_threads"), py::arg("no_scratch") = false);
    m.def(
        "log_prob",
        [](int space, const py::array& logits, const py::array& temperature,
           const py::array& value, const py::object& grad, const py::object& out,
           const py::object& gv, const py::object& gl, const py::object& gt,
           int threads) {
            by_dtype(
                logits, "log_prob", "logits",
                [&] {
                    log_prob_t<float>(space, logits, temperature, value, grad, out, gv,
                                      gl, gt, threads);
                },
                [&] {
                    log_prob_t<double>(space, logits, temperature, value, grad, out, gv,
                                       gl, gt, threads);
                });
        },
        py::arg("space"), py::arg("logits"), py::arg("temperature"), py::arg("value"),
        py::arg("grad"), py::arg("out"), py::arg("grad_value"), py::arg("grad_logits"),
        py::arg("grad_temperature"), py::arg("num_threads"));
    m.def(
        "rsample_vjp",
        [](int space, const py::array& value, const py::array& grad,
           const py::array& temperature, const py::object& gl, const py::object& gt,
           int threads, const py::object& logits) {
            bool grad_not_finite = false;
            by_dtype(
                value, "rsample_vjp", "value",
                [&] {
                    grad_not_finite = rsample_vjp_t<float>(
                        space, value, grad, temperature, gl, gt, threads, logits);
                },
                [&] {
                    grad_not_finite = rsample_vjp_t<double>(
                        space, value, grad, temperature, gl, gt, threads, logits);
                });
            return grad_not_finite;
        },
        py::arg("space"), py::arg("value"), py::arg("grad"), py::arg("temperature"),
        py::arg("grad_logits"), py::arg("grad_temperature"), py::arg("num_threads"),
        py::arg("logits") = py::none());
    m.def(
        "param",
        [](int op, const py::array& in, const py::object& out, int threads,
           const py::object& status) {
            by_dtype(
                in, "param", "in",
                [&] { param_t<float>(op, in, out, status, threads); },
                [&] { param_t<double>(op, in, out, status, threads); });
        },
        py::arg("op"), py::arg("inp"), py::arg("out"), py::arg("num_threads"),
        py::arg("status") = py::none());
    m.def(
        "probs_vjp",
        [](const py::array& probs, const py::array& gl, const py::object& out,
           int threads) {
            by_dtype(
                probs, "probs_vjp", "probs",
                [&] { probs_vjp_t<float>(probs, gl, out, threads); },
                [&] { probs_vjp_t<double>(probs, gl, out, threads); });
        },
        py::arg("probs"), py::arg("grad_logits"), py::arg("out"),
        py::arg("num_threads"));
    m.def(
        "check_values",
        [](int space, const py::array& logits, const py::array& value, double tol,
           const py::array& status, int threads) {
            by_dtype(
                value, "check_values", "value",
                [&] { check_t<float>(space, logits, value, tol, status, threads); },
                [&] { check_t<double>(space, logits, value, tol, status, threads); });
        },
        py::arg("space"), py::arg("logits"), py::arg("value"), py::arg("tol"),
        py::arg("status"), py::arg("num_threads"),
        "Per-row support check of values (0 = on the support).");
    m.def("gumbels", &gumbels, py::arg("key"), py::arg("stream"), py::arg("first"),
          py::arg("n"), py::arg("float32").noconvert() = false,
          "The Gumbel noise of elements first .. first + n - 1 of a stream: the "
          "noise of float64 samples, or with float32=True that of float32 samples.");
    m.def(
        "logf",
        [](const py::array_t<float, py::array::c_style | py::array::forcecast>& in) {
            py::array_t<float> out(in.size());
            active().logf(in.data(), out.mutable_data(), in.size());
            return out;
        },
        py::arg("x"),
        "The float noise's own log for positive normal floats, elementwise (a test "
        "hook).");
    m.def("math", &map_math, py::arg("name"), py::arg("x"),
          "The library's own log (the noise's), log_fused (the kernels') or exp, "
          "elementwise (a test hook).");
}

}  // namespace python
}  // namespace relaxcat
