#pragma once
// Splitting rows over threads. Each row is computed by exactly one thread with
// the same code whatever the split, and the noise of an element depends only on
// its index, so results are bit-identical for any thread count.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <system_error>
#include <thread>
#include <vector>

namespace relaxcat {
namespace detail {

// Below this many elements per thread, starting a thread costs more than it saves.
constexpr int64_t kMinElementsPerThread = 1 << 15;

// Rows per task: small enough to balance the threads and to poll for
// interruption, large enough that the bookkeeping is negligible.
constexpr int64_t kElementsPerTask = 1 << 16;

inline int threads_for(int64_t rows, int64_t k, int requested) {
    const int64_t elements = rows * std::max<int64_t>(k, 1);
    const int64_t useful = std::max<int64_t>(1, elements / kMinElementsPerThread);
    return static_cast<int>(
        std::min<int64_t>({static_cast<int64_t>(requested), useful, rows}));
}

// Runs body(r0, r1, scratch) over [0, rows) in tasks handed out in order from an
// atomic counter. `scratch_doubles` doubles of scratch are given to each thread.
// `stop()` is polled by the calling thread between its tasks (for Ctrl-C); when
// it returns true no new tasks start and the function returns false.
template <class Body, class Stop>
bool parallel_rows(int64_t rows, int64_t k, int requested_threads,
                   int64_t scratch_doubles, Body body, Stop stop) {
    if (rows <= 0) return true;
    const int nthreads = std::max(1, threads_for(rows, k, requested_threads));
    const int64_t per_task =
        std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(k, 1));
    const int64_t ntasks = (rows + per_task - 1) / per_task;
    std::atomic<int64_t> next{0};
    std::atomic<bool> cancelled{false};

    // All scratch is allocated here, in the calling thread, so that a failed
    // allocation surfaces as std::bad_alloc to the caller instead of ending the
    // process from inside a worker.
    // Each thread's part starts on a 64-byte boundary (8 doubles), so that the
    // kernels' vector loads of their buffers do not span two cache lines.
    // Left uninitialised: every kernel writes its scratch before reading it, and
    // zeroing it cost a small call more than its arithmetic (73 KiB, about
    // 2 us, for 64 rows of 10). Builds with RELAXCAT_POISON_SCRATCH (the
    // sanitizer builds of scripts/sanitize.sh) fill it with NaN instead, so that
    // a kernel that read before writing would turn its results into NaN there.
    const size_t per_thread = (static_cast<size_t>(scratch_doubles) + 7) / 8 * 8;
    const size_t count = static_cast<size_t>(nthreads) * per_thread + 7;
    const std::unique_ptr<double[]> scratch(new double[count]);
#if defined(RELAXCAT_POISON_SCRATCH)
    std::fill(scratch.get(), scratch.get() + count, __builtin_nan(""));
#endif
    double* const base =
        scratch.get() +
        (8 - reinterpret_cast<uintptr_t>(scratch.get()) / sizeof(double) % 8) % 8;

    auto worker = [&](int id) {
        double* mine = base + static_cast<size_t>(id) * per_thread;
        for (;;) {
            if (id == 0 && stop()) {
                cancelled.store(true);
                return;
            }
            if (cancelled.load(std::memory_order_relaxed)) return;
            const int64_t t = next.fetch_add(1);
            if (t >= ntasks) return;
            const int64_t r0 = t * per_task;
            body(r0, std::min(rows, r0 + per_task), mine);
        }
    };

    // A thread that cannot be started only costs speed: its share of the tasks
    // goes to the threads that did start.
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(nthreads - 1));
    for (int i = 1; i < nthreads; ++i) {
        try {
            pool.emplace_back(worker, i);
        } catch (const std::system_error&) {
            break;
        }
    }
    worker(0);
    for (auto& th : pool) th.join();
    return !cancelled.load();
}

}  // namespace detail
}  // namespace relaxcat
