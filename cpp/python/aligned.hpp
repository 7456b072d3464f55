#pragma once
// The alignment check of the module's argument checks (bind_kernels.cpp,
// bind_moments.cpp).

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace relaxcat {
namespace python {

// The package copies misaligned inputs and refuses misaligned outputs before
// they reach the module; a direct caller of the module is refused too, as the
// kernels load and store whole elements. An empty array is never read, and
// NumPy may give it any address.
template <class Real>
void check_aligned(const pybind11::array& a, const char* fn, const char* name) {
    if (a.size() > 0 && reinterpret_cast<uintptr_t>(a.data()) % alignof(Real) != 0)
        throw pybind11::value_error(std::string(fn) + ": " + name +
                                    " is not aligned to its item size; pass an "
                                    "aligned array");
}

}  // namespace python
}  // namespace relaxcat
