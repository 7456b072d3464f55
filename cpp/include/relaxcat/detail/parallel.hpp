#pragma once
// Splitting rows over threads. Each row is computed by exactly one thread with
// the same code whatever the split, and the noise of an element depends only on
// its index, so results are bit-identical for any thread count. A call of few
// long rows can instead spread each row over threads in fixed chunks (Note
// [split rows] in kernels.hpp, parallel_row_steps below).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

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

// Note [worker pool]: starting a thread, or waking one that sleeps, costs
// 50-60 us on the 2-core VM the benchmarks run on (the idle core has to be woken
// either way), as much as a tenth of a 2-thread call of a million elements. So
// the threads that help a call are kept: after their part they watch for the
// next call for kPoolSpinMicros, yielding the core to anything else runnable,
// and only then sleep. Calls made back to back, as in a training loop that does
// little between them or a benchmark, then start their helpers in about a
// microsecond. The calling thread likewise watches for its helpers to finish for
// that long before it sleeps.
//
// One call at a time uses the pool; a call that finds it busy (another thread's
// call, or a call from inside a worker) starts threads of its own, as every call
// did before the pool, so concurrent callers neither wait for each other nor
// deadlock. The pool holds as many threads as the largest call has asked for
// (up to 254 helpers), and they live until the process exits; a forked child
// starts a pool of its own (the parent's threads do not exist in it). A
// program that unloads the library holding this code (dlclose) while the
// threads live would leave them
// running unmapped code: such programs should compile with
// RELAXCAT_NO_THREAD_POOL, which makes every call start its own threads.
constexpr int64_t kPoolSpinMicros = 300;

// Runs worker(1) .. worker(nthreads - 1) on threads started for this call
// (never more than can be started) and worker(0) on the calling thread, and
// returns when all have. `started` (if given) receives how many workers run
// before worker(0) starts, so that they can share out their tasks.
template <class Worker>
void run_fresh_threads(int nthreads, Worker& worker, std::atomic<int>* started) {
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

// Whether `until` has passed; checked only every 64 calls with count, as
// reading the clock costs more than a turn of a waiting loop.
inline bool spin_expired(std::chrono::steady_clock::time_point until, unsigned& count) {
    return (++count & 63) == 0 && std::chrono::steady_clock::now() >= until;
}

// The kept threads of Note [worker pool]. A call is posted as one 64-bit word,
// its sequence number times 256 plus the number of workers taking part (the
// caller included), so that a helper learns from one load both that a call is
// new and whether it takes part: helper i (1, 2, ...) does when i is below that
// number. Only then does it read the call's function, which stays put until
// every helper taking part has finished. Each helper sleeps on a condition of
// its own, and a call wakes only the helpers it needs; helpers a call leaves
// out do not start watching anew, so that a pool once grown by a call on many
// threads does not keep all of them busy.
class WorkerPool {
public:
    // The process's pool, made on first use.
    static WorkerPool& instance() {
        WorkerPool* pool = slot().load(std::memory_order_acquire);
        if (pool != nullptr) return *pool;
        register_fork_handler();
        auto made = std::make_unique<WorkerPool>();
        if (slot().compare_exchange_strong(pool, made.get(), std::memory_order_acq_rel))
            return *made.release();
        return *pool;  // another thread made it first; ours has no threads yet
    }

    // Runs worker(0 .. nthreads - 1) as run_fresh_threads does, on the pool's
    // threads. Returns false, having run nothing, when the pool is busy.
    template <class Worker>
    bool try_run(int nthreads, Worker& worker, std::atomic<int>* started) {
        bool idle = false;
        if (!busy_.compare_exchange_strong(idle, true, std::memory_order_acquire))
            return false;
        const int helpers = grow(std::min(nthreads, kMaxWorkers) - 1);
        if (started != nullptr) started->store(helpers + 1, std::memory_order_release);

        // Post the call, run worker 0, wait for the helpers.
        if (helpers > 0) {
            context_ = &worker;
            call_ = [](void* context, int id) { (*static_cast<Worker*>(context))(id); };
            pending_.store(helpers, std::memory_order_relaxed);
            std::lock_guard<std::mutex> lock(mutex_);
            const uint64_t next = word_.load(std::memory_order_relaxed) / 256 + 1;
            word_.store(next * 256 + static_cast<uint64_t>(helpers + 1),
                        std::memory_order_release);
            for (int i = 1; i <= helpers; ++i)
                if (asleep_[i]) posted_[i].notify_one();
        }
        worker(0);
        if (helpers > 0) await_helpers();
        busy_.store(false, std::memory_order_release);
        return true;
    }

private:
    static constexpr int kMaxWorkers = 255;  // the low byte of word_

    static std::atomic<WorkerPool*>& slot() {
        static std::atomic<WorkerPool*> pool{nullptr};
        return pool;
    }

    // In a forked child the pool's threads are gone and its lock may be held by
    // a call that was running in the parent, so the child forgets the pool
    // (leaking it: nothing in it may be touched) and makes its own on first use.
    static void register_fork_handler() {
#if defined(__unix__) || defined(__APPLE__)
        static const int registered = pthread_atfork(
            nullptr, nullptr, [] { slot().store(nullptr, std::memory_order_relaxed); });
        (void)registered;
#endif
    }

    // Starts threads until `helpers` exist, or as many as can be started;
    // returns how many exist. Only the caller holding busy_ gets here, before it
    // posts its call, so a new thread starts from the word before that call
    // (were it to read word_ itself, it might do so after the post, and miss
    // the call it is meant to take part in).
    int grow(int helpers) {
        const uint64_t before = word_.load(std::memory_order_relaxed);
        while (threads_ < helpers) {
            try {
                std::thread(&WorkerPool::serve, this, threads_ + 1, before).detach();
            } catch (const std::system_error&) {
                break;
            }
            ++threads_;
        }
        return std::min(helpers, threads_);
    }

    // The life of helper `id`: await a call it takes part in, do its part.
    void serve(int id, uint64_t seen) {
        for (;;) {
            seen = await_call(id, seen);
            call_(context_, id);
            if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> lock(mutex_);
                if (caller_asleep_) finished_.notify_one();
            }
        }
    }

    // The word of the first call after `seen` that helper `id` takes part in:
    // watched for kPoolSpinMicros, then slept for.
    uint64_t await_call(int id, uint64_t seen) {
        uint64_t word = seen;
        watch_then_sleep(
            [&] {
                word = word_.load(std::memory_order_acquire);
                return word != seen && static_cast<int>(word % 256) > id;
            },
            posted_[id], asleep_[id]);
        return word;
    }

    // Until every helper of the call has finished: watched, then slept for.
    void await_helpers() {
        watch_then_sleep([&] { return pending_.load(std::memory_order_acquire) == 0; },
                         finished_, caller_asleep_);
    }

    // Returns once done() answers true: asked for kPoolSpinMicros between
    // yields, then on each wake-up of `woken`, with `asleep` set meanwhile so
    // that the thread that makes done() true knows to notify.
    template <class Done>
    void watch_then_sleep(Done done, std::condition_variable& woken, bool& asleep) {
        const auto until = std::chrono::steady_clock::now() +
                           std::chrono::microseconds(kPoolSpinMicros);
        for (unsigned count = 0; !spin_expired(until, count); std::this_thread::yield())
            if (done()) return;

        std::unique_lock<std::mutex> lock(mutex_);
        asleep = true;
        woken.wait(lock, done);
        asleep = false;
    }

    std::atomic<bool> busy_{false};  // a call holds the pool
    std::atomic<uint64_t> word_{0};  // the last call posted
    std::atomic<int> pending_{0};    // its helpers yet to finish
    void (*call_)(void*, int) = nullptr;
    void* context_ = nullptr;
    int threads_ = 0;  // helpers started, numbered 1 .. threads_

    // The mutex guards the posting of word_ and the flags of who sleeps.
    std::mutex mutex_;
    std::condition_variable posted_[kMaxWorkers];  // index 0, the caller, unused
    bool asleep_[kMaxWorkers] = {};
    std::condition_variable finished_;
    bool caller_asleep_ = false;
};

// Runs worker(0) on the calling thread and worker(1) .. worker(nthreads - 1) on
// other threads (those of the pool when it is free; Note [worker pool]), and
// returns when all have. A thread that cannot be started only costs speed: the
// workers share out their tasks knowing how many of them run, which `started`
// (if given) receives before worker(0) starts.
template <class Worker>
void run_workers(int nthreads, Worker& worker, std::atomic<int>* started = nullptr) {
#if !defined(RELAXCAT_NO_THREAD_POOL)
    if (nthreads > 1 && WorkerPool::instance().try_run(nthreads, worker, started))
        return;
#endif
    run_fresh_threads(nthreads, worker, started);
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
