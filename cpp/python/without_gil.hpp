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
// it would have left a call's helper threads working on freed scratch; and
// any unwinding drops the call's Python arguments without the GIL. So a call
// takes the GIL back at two places only. To poll for signals, on the main
// thread alone (the only one whose PyErr_CheckSignals runs handlers, and the
// one that finalizes, so never while it does). And once the call is over,
// counted in `retaking`: an atexit hook, which runs before finalizing begins,
// sets `exiting` and then lets the GIL go until no thread is retaking it;
// a thread that sees `exiting` instead waits for the process to end (sequentially
// consistent, so that either the thread sees the flag or the hook sees the
// thread). A sanitizer run found the need: without the hook, a thread waiting
// for the GIL when finalizing began was ended in PyEval_RestoreThread.
// A child forked from a thread other than the main one makes that thread its
// main thread, and so does `main_thread_ident` (an after-fork hook).

// The identity of the interpreter's main thread, set when the module loads and
// in a forked child.
inline std::atomic<unsigned long> main_thread_ident{0};
inline std::atomic<bool> exiting{false};
inline std::atomic<int> retaking{0};

inline bool on_main_thread() {
    return PyThread_get_thread_ident() == main_thread_ident.load();
}

// The atexit hook of Note [threads at exit]; with the GIL, which it lends to
// the threads that are retaking it (a thousand times 1 ms at most).
inline void let_calls_finish() {
    exiting.store(true);
    for (int i = 0; i < 1000 && retaking.load() > 0; ++i) {
        PyThreadState* const state = PyEval_SaveThread();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        PyEval_RestoreThread(state);
    }
}

inline void remember_main_thread() {
    main_thread_ident.store(pybind11::module_::import("threading")
                                .attr("main_thread")()
                                .attr("ident")
                                .cast<unsigned long>());
    pybind11::module_::import("atexit").attr("register")(
        pybind11::cpp_function(&let_calls_finish));
    const pybind11::module_ os = pybind11::module_::import("os");
    if (pybind11::hasattr(os, "register_at_fork"))
        os.attr("register_at_fork")(
            pybind11::arg("after_in_child") = pybind11::cpp_function([] {
                // The forking thread is the child's only, and main, thread.
                main_thread_ident.store(PyThread_get_thread_ident());
                retaking.store(0);
            }));
}

// Takes the GIL back after a call, or, once the program is exiting, never
// returns on any thread but the main one (Note [threads at exit]).
inline void take_gil_back(PyThreadState* state) {
    retaking.fetch_add(1);
    if (exiting.load() && !on_main_thread()) {
        retaking.fetch_sub(1);
        for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
    }
    PyEval_RestoreThread(state);
    retaking.fetch_sub(1);
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
