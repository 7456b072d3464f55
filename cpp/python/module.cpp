// The relaxcat._core extension module: bindings only, no math.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <thread>

#include "dispatch.hpp"
#include "relaxcat/detail/noise.hpp"
#include "relaxcat/version.hpp"
#include "without_gil.hpp"

namespace py = pybind11;

namespace relaxcat {
namespace python {
void bind_kernels(py::module_& m);
void bind_moments(py::module_& m);
}  // namespace python
}  // namespace relaxcat

PYBIND11_MODULE(_core, m) {
    namespace rp = relaxcat::python;
    m.doc() = "relaxcat's compiled core (private; use the relaxcat package).";
    m.attr("__version__") = RELAXCAT_VERSION_STRING;
    m.attr("build_type") = RELAXCAT_BUILD_TYPE;
    // The compiler's name and version: GCC's __VERSION__ is the number alone.
#if defined(__clang__)
    m.attr("compiler") = "Clang " __clang_version__;
#elif defined(__GNUC__)
    m.attr("compiler") = "GCC " __VERSION__;
#elif defined(_MSC_FULL_VER)
    m.attr("compiler") = "MSVC " + std::to_string(_MSC_FULL_VER);
#else
    m.attr("compiler") = "unknown";
#endif
    rp::remember_main_thread();  // Note [threads at exit]
    rp::bind_kernels(m);
    rp::bind_moments(m);

    m.def(
        "simd_level", [] { return std::string(rp::active().name); },
        "The instruction-set level the kernels run at.");
    m.def("available_simd_levels", &rp::available_levels,
          "The levels this build holds and this CPU runs, best first.");
    m.def("set_simd_level", &rp::set_level, py::arg("name"),
          "Use the kernels of another level (for tests and bug hunts).");
    m.def("hardware_threads",
          [] { return static_cast<int>(std::thread::hardware_concurrency()); });
    m.def(
        "philox4x32",
        [](std::array<uint32_t, 4> c, std::array<uint32_t, 2> k, int rounds) {
            namespace d = relaxcat::detail::native;
            d::Words4 w{};
            if (rounds == 10)
                w = d::philox4x32<10>(c[0], c[1], c[2], c[3], k[0], k[1]);
            else if (rounds == 7)
                w = d::philox4x32<7>(c[0], c[1], c[2], c[3], k[0], k[1]);
            else
                throw py::value_error("philox4x32: rounds must be 7 or 10, got " +
                                      std::to_string(rounds));
            return std::array<uint32_t, 4>{w.w[0], w.w[1], w.w[2], w.w[3]};
        },
        py::arg("counter"), py::arg("key"), py::arg("rounds") = 10,
        "One Philox4x32 block (a test hook for the known-answer vectors).");
}
