#pragma once
// Running a multi-threaded kernel call from Python.

#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace relaxcat {
namespace python {

// Note [threads at exit]: CPython (3.9 to 3.13) ends a thread that takes the
// GIL back while the interpreter is finalizing, as a daemon thread still in a
// call does when the program exits, with pthread_exit, which unwinds the
// thread's stack. Unwound through pybind11's gil_scoped_release, whose
// destructor is noexcept, that called std::terminate and aborted every such
// exit (a fresh-user review: 10 runs of 10); unwound out of the polling below,
// it would have left a call's helper threads working on freed scratch. So a
// call takes the GIL back at two places only: to poll for signals, on the main
// thread alone (the only one whose PyErr_CheckSignals runs handlers, and the
// one that finalizes, so never while it does); and once the call is over,
// unless the interpreter is finalizing, when the thread instead waits for the
// process to end. The window between that check and taking the GIL remains:
// a thread ended there unwinds through frames without a noexcept destructor,
// which pybind11 lets pass.

// The identity of the interpreter's main thread, set when the module loads.
inline std::atomic<unsigned long> main_thread_ident{0};

inline void remember_main_thread() {
    main_thread_ident.store(pybind11::module_::import("threading")
                                .attr("main_thread")()
                                .attr("ident")
                                .cast<unsigned long>());
}

inline bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing() != 0;
#else
    return _Py_IsFinalizing() != 0;
#endif
}

inline bool on_main_thread() {
    return PyThread_get_thread_ident() == main_thread_ident.load();
}

// Takes the GIL back after a call, or never returns if the interpreter is
// finalizing and this is not the thread that finalizes it (which may still
// call relaxcat, from a __del__, and takes the GIL as usual; Note [threads at
// exit]).
inline void take_gil_back(PyThreadState* state) {
    while (!on_main_thread() && interpreter_finalizing())
        std::this_thread::sleep_for(std::chrono::hours(1));
    PyEval_RestoreThread(state);
}

// Runs call(stop) with the GIL released, where stop() (for the splitters of
// relaxcat/detail/parallel.hpp to poll between tasks) takes the GIL back for a
// moment on the main thread and answers whether a signal handler raised
// (Ctrl-C); elsewhere it answers false at once. A call that returns false was
// interrupted: the handler's exception is raised here.
template <class Call>
void without_gil(Call call) {
    const auto stop = [] {
        if (!on_main_thread()) return false;
        const PyGILState_STATE gil = PyGILState_Ensure();
        const bool raised = PyErr_CheckSignals() != 0;
        PyGILState_Release(gil);
        return raised;
    };
    PyThreadState* const state = PyEval_SaveThread();
    bool finished = false;
    try {
        finished = call(stop);
    } catch (...) {  // std::bad_alloc from the scratch of a call
        take_gil_back(state);
        throw;
    }
    take_gil_back(state);
    if (!finished) throw pybind11::error_already_set();
}

}  // namespace python
}  // namespace relaxcat
