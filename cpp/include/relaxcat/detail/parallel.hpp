#pragma once
// Splitting rows over threads. Each row is computed by exactly one thread with
// the same code whatever the split, and the noise of an element depends only on
// its index, so results are bit-identical for any thread count. A call of few
// long rows can instead spread each row over threads in fixed chunks (Note
// [split rows] in kernels.hpp, parallel_row_steps below).

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <system_error>
#include <thread>
#include <vector>

#include "args.hpp"

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

// Runs worker(0) on the calling thread and worker(1) .. worker(nthreads - 1) on
// threads of their own, and returns when all have. A thread that cannot be
// started only costs speed: the workers share out their tasks knowing how many
// of them run, which `started` (if given) receives before worker(0) starts.
template <class Worker>
void run_workers(int nthreads, Worker& worker, std::atomic<int>* started = nullptr) {
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(nthreads > 1 ? nthreads - 1 : 0));
    for (int i = 1; i < nthreads; ++i) {
        try {
            pool.emplace_back(std::ref(worker), i);
        } catch (const std::system_error&) {
            break;
        }
    }
    if (started != nullptr)
        started->store(static_cast<int>(pool.size()) + 1, std::memory_order_release);
    worker(0);
    for (auto& th : pool) th.join();
}

// The next of ntasks tasks handed out in order by `next`, for worker `id`, or
// -1 when none is left or the call is cancelled: worker 0 polls stop() before
// each task it takes, and cancels the call when it answers true.
template <class Stop>
int64_t next_task(int id, Stop& stop, std::atomic<bool>& cancelled,
                  std::atomic<int64_t>& next, int64_t ntasks) {
    if (id == 0 && stop()) {
        cancelled.store(true);
        return -1;
    }
    if (cancelled.load(std::memory_order_relaxed)) return -1;
    const int64_t t = next.fetch_add(1);
    return t < ntasks ? t : -1;
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
            const int64_t t = next_task(id, stop, cancelled, next, ntasks);
            if (t < 0) return;
            const int64_t r0 = t * per_task;
            body(r0, std::min(rows, r0 + per_task), mine);
        }
    };

    run_workers(nthreads, worker);
    return !cancelled.load();
}

// Whether a call of `rows` rows of K categories is better spread chunk by
// chunk (parallel_row_steps) than row by row: rows of more than one chunk, and
// fewer rows than twice the threads, where whole rows would leave a thread idle
// or the threads unevenly loaded.
inline bool split_rows_pay(int64_t rows, int64_t k, int requested_threads) {
    return requested_threads > 1 && k > kChunkElements &&
           rows < 2 * static_cast<int64_t>(requested_threads) &&
           rows * k >= 2 * kMinElementsPerThread;
}

// Whether an rsample call is spread chunk by chunk: its rows can be
// (rsample_splits) and it pays (split_rows_pay).
template <class Real>
bool rsample_split(const RsampleArgs<Real>& a, int requested_threads) {
    return rsample_splits(a.shape.k, rsample_needs(a)) &&
           split_rows_pay(a.shape.rows, a.shape.k, requested_threads);
}

// Whether an rsample_vjp call is spread chunk by chunk (Note [split rows] for
// rsample_vjp in kernels.hpp): rows on the simplex, when it pays.
template <class Real>
bool rsample_vjp_split(const RsampleVjpArgs<Real>& a, int requested_threads) {
    return a.space == Space::simplex &&
           split_rows_pay(a.shape.rows, a.shape.k, requested_threads);
}

// The shared scratch of a split rsample_vjp row: x and g widened, then seven
// sums per chunk.
inline int64_t rsample_vjp_split_scratch(int64_t k) {
    return 2 * k + kRestSums * ((k + kChunkElements - 1) / kChunkElements);
}

// Runs `steps` steps over every row of [0, rows), each row cut into chunks of
// kChunkElements (the last one shorter), on up to requested_threads threads:
// step(r, s, j0, n, facts, shared) handles elements j0 .. j0 + n - 1 of row r in
// step s and returns the chunk's result; once every chunk of a step is done, its
// results are combined in chunk order by combine(s, results, chunks) into
// facts[s] of the row, which the row's later steps read (a pointer to the row's
// `steps` facts). Steps run in order, each after the previous one is combined,
// so what a step computes does not depend on the threads. `shared` is
// shared_doubles doubles of scratch (null if 0) for all threads, which one row
// uses at a time, as the rows run one after another. `stop()` is polled by the
// calling thread before each of its steps, as in parallel_rows.
//
// Each thread takes the same run of chunks in every step, so a row's data stays
// in the cache of the core that wrote it. Handing the chunks out from a counter
// instead moved them between the cores' caches from step to step: a float32
// row of K = 128000 (the C++ class, AVX-512) ran 1.38 times as fast on two
// threads as on one that way, and 1.54 times this way (float64: 1.65, 1.79).
template <class Step, class Combine, class Stop>
bool parallel_row_steps(int64_t rows, int64_t k, int steps, int requested_threads,
                        int64_t shared_doubles, Step step, Combine combine, Stop stop) {
    if (rows <= 0) return true;
    const int64_t chunks = (k + kChunkElements - 1) / kChunkElements;
    const int64_t phases = rows * steps;  // (row, step) pairs, in order
    const int64_t useful =
        std::max<int64_t>(1, rows * std::max<int64_t>(k, 1) / kMinElementsPerThread);
    const int nthreads = static_cast<int>(std::max<int64_t>(
        1,
        std::min<int64_t>({static_cast<int64_t>(requested_threads), useful, chunks})));

    // Allocated here, in the calling thread (see parallel_rows).
    const std::unique_ptr<double[]> results(new double[static_cast<size_t>(chunks)]);
    const std::unique_ptr<double[]> shared(
        shared_doubles > 0 ? new double[static_cast<size_t>(shared_doubles)] : nullptr);
#if defined(RELAXCAT_POISON_SCRATCH)
    if (shared)
        std::fill(shared.get(), shared.get() + shared_doubles, __builtin_nan(""));
#endif
    const std::unique_ptr<double[]> facts(new double[static_cast<size_t>(phases)]());
    const std::unique_ptr<std::atomic<int64_t>[]> done(
        new std::atomic<int64_t>[static_cast<size_t>(phases)]);
    const std::unique_ptr<std::atomic<bool>[]> ready(
        new std::atomic<bool>[static_cast<size_t>(phases)]);
    for (int64_t q = 0; q < phases; ++q) {
        done[q].store(0, std::memory_order_relaxed);
        ready[q].store(false, std::memory_order_relaxed);
    }
    std::atomic<int> started{0};
    std::atomic<bool> cancelled{false};

    // Every chunk of a phase belongs to a running thread, and a thread waits
    // only for the phase before its next one, so the threads cannot deadlock.
    // The thread that finishes a phase's last chunk combines the results and
    // releases the phase; results are reused from phase to phase, as a phase
    // starts only once the one before it has been combined.
    auto released = [&](int64_t q) {
        while (!ready[q].load(std::memory_order_acquire)) {
            if (cancelled.load(std::memory_order_relaxed)) return false;
            std::this_thread::yield();
        }
        return true;
    };
    auto worker = [&](int id) {
        int n = 0;
        while ((n = started.load(std::memory_order_acquire)) == 0)
            std::this_thread::yield();
        const int64_t c0 = chunks * id / n;  // at least one chunk: n <= chunks
        const int64_t c1 = chunks * (id + 1) / n;
        for (int64_t q = 0; q < phases; ++q) {
            if (q > 0 && !released(q - 1)) return;
            if (id == 0 && stop()) {
                cancelled.store(true);
                return;
            }
            if (cancelled.load(std::memory_order_relaxed)) return;
            const int64_t r = q / steps;
            const int s = static_cast<int>(q % steps);
            for (int64_t c = c0; c < c1; ++c) {
                const int64_t j0 = c * kChunkElements;
                results[c] = step(r, s, j0, std::min(kChunkElements, k - j0),
                                  facts.get() + r * steps, shared.get());
            }
            if (done[q].fetch_add(c1 - c0, std::memory_order_acq_rel) + (c1 - c0) ==
                chunks) {
                facts[q] = combine(s, results.get(), chunks);
                ready[q].store(true, std::memory_order_release);
            }
        }
    };

    run_workers(nthreads, worker, &started);
    return !cancelled.load();
}

}  // namespace detail
}  // namespace relaxcat
