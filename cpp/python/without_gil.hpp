#pragma once
// Running a multi-threaded kernel call from Python.

#include <pybind11/pybind11.h>

namespace relaxcat {
namespace python {

// Runs call(stop) with the GIL released, where stop() (for the splitters of
// relaxcat/detail/parallel.hpp to poll between tasks) takes the GIL back for a
// moment and answers whether a signal handler raised (Ctrl-C). A call that
// returns false was interrupted: the handler's exception is raised here.
template <class Call>
void without_gil(Call call) {
    bool finished;
    {
        pybind11::gil_scoped_release nogil;
        finished = call([] {
            pybind11::gil_scoped_acquire gil;
            return PyErr_CheckSignals() != 0;
        });
    }
    if (!finished) throw pybind11::error_already_set();
}

}  // namespace python
}  // namespace relaxcat
