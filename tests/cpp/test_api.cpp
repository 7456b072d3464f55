// Properties of the C++ API itself: the row layout, broadcasting, strided views,
// thread-count independence, and gradients against central differences.

#include <gtest/gtest.h>

#include <relaxcat/relaxcat.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <limits>
#include <mutex>
#include <numeric>
#include <thread>
#include <type_traits>
#include <vector>

// The largest single allocation through operator new since the last reset,
// for the memory a call takes (SummedGradientsTakeSliceSizedScratch). Not
// under AddressSanitizer, which has its own operator new.
#if defined(__SANITIZE_ADDRESS__)
#define RELAXCAT_TRACK_ALLOCATIONS 0
#else
#define RELAXCAT_TRACK_ALLOCATIONS 1
std::atomic<size_t> g_largest_allocation{0};

void* operator new(size_t n) {
    size_t seen = g_largest_allocation.load();
    while (n > seen && !g_largest_allocation.compare_exchange_weak(seen, n)) {
    }
    if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
    throw std::bad_alloc();
}

// GCC cannot tell that these pair with the operator new above.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept {
    std::free(p);
}

void operator delete(void* p, size_t) noexcept {
    std::free(p);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

namespace {

using relaxcat::ExpRelaxedOneHotCategorical;
using relaxcat::MatrixView;
using relaxcat::Philox;
using relaxcat::RelaxedOneHotCategorical;
using relaxcat::VectorView;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kInfF = std::numeric_limits<float>::infinity();

// Central differences in double with step 1e-6 have truncation error near 1e-12
// and rounding error near 1e-10 relative to the density; 1e-6 leaves a margin.
constexpr double kFiniteDifferenceTol = 1e-6;

std::vector<double> ramp(int n, double scale) {
    std::vector<double> v(n);
    for (int i = 0; i < n; ++i) v[i] = scale * std::sin(1.0 + 0.7 * i);
    return v;
}

TEST(Api, SamplesAreOnTheSimplexWithExactZerosOnMaskedCategories) {
    std::vector<double> lg = ramp(12, 2.0);
    lg[5] = -kInf;
    const RelaxedOneHotCategorical<double> d(
        0.7, relaxcat::logits(MatrixView<const double>(lg.data(), 3, 4)));
    std::vector<double> x(5 * 12);
    Philox gen(3);
    d.rsample(MatrixView<double>(x.data(), 15, 4), gen);
    for (int r = 0; r < 15; ++r) {
        const double s = std::accumulate(x.begin() + 4 * r, x.begin() + 4 * r + 4, 0.0);
        EXPECT_NEAR(s, 1.0, 4 * 4 * 2.2e-16);
        if (r % 3 == 1) {
            EXPECT_EQ(x[4 * r + 1], 0.0);
        }
    }
}

TEST(Api, ResultsDoNotDependOnTheThreadCount) {
    const int rows = 20000, k = 9;
    std::vector<float> lgf(rows * k);
    const std::vector<double> src = ramp(rows * k, 3.0);
    for (int i = 0; i < rows * k; ++i) lgf[i] = static_cast<float>(src[i]);
    const RelaxedOneHotCategorical<float> d(
        0.3f, relaxcat::logits(MatrixView<const float>(lgf.data(), rows, k)));
    std::vector<float> one(rows * k), many(rows * k), lp1(rows), lp4(rows);
    Philox a(11), b(11);
    d.rsample(MatrixView<float>(one.data(), rows, k), a, 1);
    d.rsample(MatrixView<float>(many.data(), rows, k), b, 4);
    EXPECT_EQ(one, many);
    d.log_prob(MatrixView<const float>(one.data(), rows, k),
               VectorView<float>(lp1.data(), rows), 1);
    d.log_prob(MatrixView<const float>(one.data(), rows, k),
               VectorView<float>(lp4.data(), rows), 0);
    EXPECT_EQ(lp1, lp4);
}

// Calls from several threads at once: one of them holds the kept threads of
// Note [worker pool] (detail/parallel.hpp), the others start threads of their
// own, and a thread's call may come while the pool's helpers watch for calls
// or after they went to sleep. Whole rows and split long rows (parallel_row_steps)
// alike must give the one-thread bits.
TEST(Api, ConcurrentCallersGetTheOneThreadBits) {
    const int rows = 4096, k = 16, long_k = 70000;  // long_k: split over 2 threads
    std::vector<float> lg(rows * k);
    const std::vector<double> src = ramp(rows * k, 2.0);
    for (int i = 0; i < rows * k; ++i) lg[i] = static_cast<float>(src[i]);
    const RelaxedOneHotCategorical<float> d(
        0.5f, relaxcat::logits(MatrixView<const float>(lg.data(), rows, k)));
    const std::vector<double> long_lg = ramp(long_k, 1.0);
    const RelaxedOneHotCategorical<double> row(
        0.5, relaxcat::logits(MatrixView<const double>(long_lg.data(), 1, long_k)));

    std::vector<float> want(rows * k);
    std::vector<double> long_want(long_k);
    Philox a(21), b(22);
    d.rsample(MatrixView<float>(want.data(), rows, k), a, 1);
    row.rsample(MatrixView<double>(long_want.data(), 1, long_k), b, 1);

    std::atomic<int> mismatches{0};
    auto caller = [&](int id) {
        std::vector<float> got(rows * k);
        std::vector<double> long_got(long_k);
        for (int i = 0; i < 30; ++i) {
            Philox g(21), h(22);
            d.rsample(MatrixView<float>(got.data(), rows, k), g, 2 + (id + i) % 3);
            row.rsample(MatrixView<double>(long_got.data(), 1, long_k), h, 2);
            if (got != want || long_got != long_want) ++mismatches;
            if (i % 7 == id) std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
    };
    std::vector<std::thread> callers;
    for (int id = 0; id < 4; ++id) callers.emplace_back(caller, id);
    for (auto& th : callers) th.join();
    EXPECT_EQ(mismatches.load(), 0);
}

// Note [large upstream gradients]: a row whose upstream gradient would take
// rsample_vjp's sums or terms past the range is computed from a power of two
// times less and scaled back, so its results are those of the same gradient
// taken 2^10 times smaller and scaled back by hand (where nothing overflows):
// the same bits, on every path (K = 8 down columns, 40 and 300 row by row,
// 300 on the simplex's row path, 70000 split over two threads) and thread
// count. Before, these rows gave NaN or infinities for finite gradients. In
// log space ds / T is about 2 |w|, so the largest entries there are 3e307.
template <class Dist>
void check_large_upstream_gradients(int k, int threads, double big) {
    std::vector<double> lg = ramp(k, 1.5);
    lg[5] = 30.0;  // the two large entries of the sample, whatever the noise
    lg[2] = 29.0;
    const Dist d(0.5, relaxcat::logits(MatrixView<const double>(lg.data(), 1, k)));
    std::vector<double> x(static_cast<size_t>(k));
    Philox gen(4);
    d.rsample(MatrixView<double>(x.data(), 1, k), gen);
    std::vector<double> w = ramp(k, 1.0), small(static_cast<size_t>(k));
    w[2] = big;
    w[5] = -big;
    for (int j = 0; j < k; ++j) small[j] = w[j] * 0x1p-10;
    std::vector<double> gl(static_cast<size_t>(k)), gs(static_cast<size_t>(k));
    double gt = 0.0, gts = 0.0;
    d.rsample_vjp(MatrixView<const double>(x.data(), 1, k),
                  MatrixView<const double>(w.data(), 1, k),
                  MatrixView<double>(gl.data(), 1, k), VectorView<double>(&gt, 1),
                  threads);
    d.rsample_vjp(MatrixView<const double>(x.data(), 1, k),
                  MatrixView<const double>(small.data(), 1, k),
                  MatrixView<double>(gs.data(), 1, k), VectorView<double>(&gts, 1),
                  threads);
    // Where the scaled-back value passes the range the exact one does too, and
    // the infinity of its sign is the answer.
    EXPECT_EQ(gt, gts * 0x1p10) << k << " " << threads;
    for (int j = 0; j < k; ++j)
        ASSERT_EQ(gl[j], gs[j] * 0x1p10) << k << " " << threads << " " << j;
}

TEST(Api, LargeUpstreamGradientsGiveTheScaledBitsOfSmallerOnes) {
    using Simplex = RelaxedOneHotCategorical<double>;
    using Log = ExpRelaxedOneHotCategorical<double>;
    for (int k : {8, 40, 300}) {
        check_large_upstream_gradients<Simplex>(k, 1, 1.79e308);
        check_large_upstream_gradients<Log>(k, 1, 3e307);
    }
    for (int threads : {1, 2})
        check_large_upstream_gradients<Simplex>(70000, threads, 1.79e308);
}

// Rows longer than one chunk (Note [split rows]): one to three of them are
// spread over 2 or 4 threads chunk by chunk, eight go row by row on one thread,
// and the noise given as gumbels takes the buffered path; all give the same bits.
template <class Dist, class Real>
void check_long_rows_split_over_threads() {
    const int k = 8 * 8192 + 777;  // one row has 2^16 elements to split
    std::vector<Real> lg(k);
    const std::vector<double> src = ramp(k, 4.0);
    for (int j = 0; j < k; ++j) lg[j] = static_cast<Real>(src[j]);
    lg[4] = -std::numeric_limits<Real>::infinity();
    const Dist d(static_cast<Real>(0.4),
                 relaxcat::logits(MatrixView<const Real>(lg.data(), 1, k)));
    std::vector<Real> want(8 * static_cast<size_t>(k));
    Philox gen(21);
    d.rsample(MatrixView<Real>(want.data(), 8, k), gen, 1);
    for (int n = 1; n <= 3; ++n)
        for (int threads : {1, 2, 4}) {
            std::vector<Real> got(static_cast<size_t>(n) * k);
            gen.seek(0);
            d.rsample(MatrixView<Real>(got.data(), n, k), gen, threads);
            EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin()))
                << n << " rows, " << threads << " threads";
        }
    std::vector<Real> g(3 * static_cast<size_t>(k)), given(3 * static_cast<size_t>(k));
    Philox noise(21);
    relaxcat::gumbel_noise(noise, static_cast<int64_t>(g.size()), g.data());
    d.rsample(MatrixView<const Real>(g.data(), 3, k),
              MatrixView<Real>(given.data(), 3, k), 2);
    EXPECT_TRUE(std::equal(given.begin(), given.end(), want.begin()));
    constexpr bool kSimplex = std::is_same<Dist, RelaxedOneHotCategorical<Real>>::value;
    const Real masked = kSimplex ? Real(0) : -std::numeric_limits<Real>::infinity();
    EXPECT_EQ(want[4], masked);

    // rsample_vjp of one to three such rows (the simplex class spreads them
    // over the threads too, Note [split rows] for rsample_vjp): the bits of one
    // thread, for the gradient of the logits (summed over the rows) and of T.
    std::vector<Real> w(3 * static_cast<size_t>(k));
    const std::vector<double> wsrc = ramp(3 * k, 1.0);
    for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<Real>(wsrc[i]);
    for (int n = 1; n <= 3; ++n) {
        std::vector<Real> gl1(static_cast<size_t>(k)), gl(static_cast<size_t>(k));
        Real gt1 = 0, gt = 0;
        d.rsample_vjp(MatrixView<const Real>(want.data(), n, k),
                      MatrixView<const Real>(w.data(), n, k),
                      MatrixView<Real>(gl1.data(), 1, k), VectorView<Real>(&gt1, 1), 1);
        for (int threads : {2, 3, 4}) {
            d.rsample_vjp(MatrixView<const Real>(want.data(), n, k),
                          MatrixView<const Real>(w.data(), n, k),
                          MatrixView<Real>(gl.data(), 1, k), VectorView<Real>(&gt, 1),
                          threads);
            EXPECT_EQ(gl, gl1) << n << " rows, " << threads << " threads";
            EXPECT_EQ(std::memcmp(&gt, &gt1, sizeof gt), 0)
                << n << " rows, " << threads << " threads";
        }
    }
}

TEST(Api, LongRowsSplitOverThreadsGiveTheBitsOfWholeRows) {
    check_long_rows_split_over_threads<RelaxedOneHotCategorical<float>, float>();
    check_long_rows_split_over_threads<RelaxedOneHotCategorical<double>, double>();
    check_long_rows_split_over_threads<ExpRelaxedOneHotCategorical<float>, float>();
    check_long_rows_split_over_threads<ExpRelaxedOneHotCategorical<double>, double>();
}

// Ctrl-C in a split call (the Python module's stop poll): parallel_row_steps
// asks stop() on the calling thread before each (row, step) phase, phase q
// being row q / steps, step q % steps. Once it answers yes the call returns
// false on any thread count, with no phase after the one it stopped at begun
// (the other threads may have begun that one), and the threads waiting for a
// phase that will never be released leave too (the test would hang otherwise).
TEST(Api, SplitRowsStopWhenAskedOnAnyThreadCount) {
    const int64_t rows = 3, chunks = 6, k = (chunks - 1) * 8192 + 1;
    const int steps = 4;
    const int64_t phases = rows * steps;
    ASSERT_EQ(relaxcat::detail::kChunkElements, 8192);
    for (int threads : {1, 2, 3, 7}) {
        for (int64_t after : {int64_t{0}, int64_t{1}, int64_t{5}, phases, phases + 9}) {
            std::atomic<int64_t> calls{0}, last{-1};
            int64_t polls = 0;
            const bool finished = relaxcat::detail::parallel_row_steps(
                rows, k, steps, threads, 0,
                [&](int64_t r, int s, int64_t, int64_t, const double*, double*) {
                    const int64_t q = r * steps + s;
                    ++calls;
                    int64_t seen = last.load();
                    while (seen < q && !last.compare_exchange_weak(seen, q)) {
                    }
                    return 1.0;
                },
                [](int, const double* results, int64_t n) {
                    return std::accumulate(results, results + n, 0.0);
                },
                [&] { return polls++ >= after; });
            EXPECT_EQ(finished, after >= phases) << threads << " threads, " << after;
            if (finished) {
                EXPECT_EQ(calls.load(), phases * chunks);
                EXPECT_EQ(last.load(), phases - 1);
            } else {
                EXPECT_LE(calls.load(), (after + 1) * chunks);
                EXPECT_LE(last.load(), after);
                EXPECT_GE(calls.load(), after * chunks);
            }
        }
    }
}

TEST(Api, StridedViewsGiveTheSameResultsAsContiguousOnes) {
    const std::vector<double> lg = ramp(8, 1.5);
    const RelaxedOneHotCategorical<double> d(
        0.9, relaxcat::logits(MatrixView<const double>(lg.data(), 2, 4)));
    std::vector<double> x(8);
    Philox gen(9);
    d.rsample(MatrixView<double>(x.data(), 2, 4), gen);

    // The same sample written transposed, read back through column-major views.
    std::vector<double> xt(8);
    gen.seek(0);
    d.rsample(MatrixView<double>(xt.data(), 2, 4, 1, 2), gen);
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j) EXPECT_EQ(xt[j * 2 + i], x[i * 4 + j]);
    std::vector<double> lp(2), lpt(2);
    d.log_prob(MatrixView<const double>(x.data(), 2, 4),
               VectorView<double>(lp.data(), 2));
    d.log_prob(MatrixView<const double>(xt.data(), 2, 4, 1, 2),
               VectorView<double>(lpt.data(), 2));
    EXPECT_EQ(lp, lpt);
}

// The constructor copies its parameter through the view's strides (column-major
// here, and a row stride of 0 repeating one row): the same distribution as
// from a contiguous copy, bit for bit.
TEST(Api, StridedParametersAreCopiedAsContiguousOnes) {
    const std::vector<float> lg = {0.5f, -1.0f, 2.0f, 0.25f, -kInfF, 1.5f};
    const std::vector<float> lgt = {0.5f, 0.25f, -1.0f, -kInfF, 2.0f, 1.5f};
    const RelaxedOneHotCategorical<float> plain(
        0.7f, relaxcat::logits(MatrixView<const float>(lg.data(), 2, 3)));
    const RelaxedOneHotCategorical<float> strided(
        0.7f, relaxcat::logits(MatrixView<const float>(lgt.data(), 2, 3, 1, 2)));
    std::vector<float> x(6), y(6);
    Philox gen(5);
    plain.rsample(MatrixView<float>(x.data(), 2, 3), gen);
    gen.seek(0);
    strided.rsample(MatrixView<float>(y.data(), 2, 3), gen);
    EXPECT_EQ(x, y);

    const std::vector<float> probs = {0.2f, 0.0f, 0.8f};
    const std::vector<float> repeated = {0.2f, 0.0f, 0.8f, 0.2f, 0.0f, 0.8f,
                                         0.2f, 0.0f, 0.8f, 0.2f, 0.0f, 0.8f};
    const RelaxedOneHotCategorical<float> one(
        0.7f, relaxcat::probs(MatrixView<const float>(probs.data(), 4, 3, 0, 1)));
    const RelaxedOneHotCategorical<float> four(
        0.7f, relaxcat::probs(MatrixView<const float>(repeated.data(), 4, 3)));
    std::vector<float> a(12), b(12);
    gen.seek(0);
    one.rsample(MatrixView<float>(a.data(), 4, 3), gen);
    gen.seek(0);
    four.rsample(MatrixView<float>(b.data(), 4, 3), gen);
    EXPECT_EQ(a, b);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(a[i * 3 + 1], 0.0f);
}

TEST(Api, OneLogitsRowBroadcastsOverPerRowTemperatures) {
    const std::vector<double> lg = ramp(5, 1.0);
    const std::vector<double> t = {0.2, 1.0, 3.0};
    const RelaxedOneHotCategorical<double> shared(
        VectorView<const double>(t.data(), 3),
        relaxcat::logits(MatrixView<const double>(lg.data(), 1, 5)));
    EXPECT_EQ(shared.batch_rows(), 3);
    EXPECT_EQ(shared.param_rows(), 1);

    // The same as the logits repeated with a row stride of 0.
    const RelaxedOneHotCategorical<double> repeated(
        VectorView<const double>(t.data(), 3),
        relaxcat::logits(MatrixView<const double>(lg.data(), 3, 5, 0, 1)));
    std::vector<double> a(30), b(30);
    Philox g1(4), g2(4);
    shared.rsample(MatrixView<double>(a.data(), 6, 5), g1);
    repeated.rsample(MatrixView<double>(b.data(), 6, 5), g2);
    EXPECT_EQ(a, b);

    // Gradients come back in the parameter's shapes: summed over the three rows.
    std::vector<double> w = ramp(30, 0.5);
    std::vector<double> gs(5), gr(15), ts(3), tr(3);
    shared.rsample_vjp(MatrixView<const double>(a.data(), 6, 5),
                       MatrixView<const double>(w.data(), 6, 5),
                       MatrixView<double>(gs.data(), 1, 5),
                       VectorView<double>(ts.data(), 3));
    repeated.rsample_vjp(MatrixView<const double>(a.data(), 6, 5),
                         MatrixView<const double>(w.data(), 6, 5),
                         MatrixView<double>(gr.data(), 3, 5),
                         VectorView<double>(tr.data(), 3));
    for (int j = 0; j < 5; ++j)
        EXPECT_NEAR(gs[j], gr[j] + gr[5 + j] + gr[10 + j], 1e-14);
    EXPECT_EQ(ts, tr);
}

// Note [gradients summed in slices] (distribution.hpp): a call whose logits
// gradient is summed over more than 2^20 elements runs over slices of draws,
// and its sums must be the row-order sums of the per-row gradients, bit for
// bit, which a distribution with one parameter row per value row gives unsummed.
TEST(Api, GradientsSummedOverManyDrawsAreTheRowOrderSumsOfPerRowOnes) {
    constexpr int64_t kB = 2, kK = 8, kDraws = 70000, kRows = kDraws * kB;
    const std::vector<double> lg = ramp(kB * kK, 1.3);
    const std::vector<double> t = {0.6, 1.3};
    const RelaxedOneHotCategorical<double> shared(
        VectorView<const double>(t.data(), kB),
        relaxcat::logits(MatrixView<const double>(lg.data(), kB, kK)), false);
    std::vector<double> lg_rows(kRows * kK), t_rows(kRows);
    for (int64_t r = 0; r < kRows; ++r) {
        std::copy_n(lg.begin() + (r % kB) * kK, kK, lg_rows.begin() + r * kK);
        t_rows[r] = t[r % kB];
    }
    const RelaxedOneHotCategorical<double> per_row(
        VectorView<const double>(t_rows.data(), kRows),
        relaxcat::logits(MatrixView<const double>(lg_rows.data(), kRows, kK)), false);
    std::vector<double> x(kRows * kK);
    Philox gen(8);
    shared.rsample(MatrixView<double>(x.data(), kRows, kK), gen);
    const std::vector<double> w = ramp(kRows * kK, 0.9);
    const std::vector<double> g = ramp(kRows, 1.1);
    const MatrixView<const double> xv(x.data(), kRows, kK), wv(w.data(), kRows, kK);
    const VectorView<const double> gv(g.data(), kRows);

    // The per-row gradients summed in row order, as the class sums them.
    auto row_sums = [&](const std::vector<double>& rows, int64_t width) {
        std::vector<double> acc(kB * width, 0.0);
        for (int64_t r = 0; r < kRows; ++r)
            for (int64_t j = 0; j < width; ++j)
                acc[(r % kB) * width + j] += rows[r * width + j];
        return acc;
    };
    for (int threads : {1, 2}) {
        std::vector<double> gl(kB * kK), gt(kB), rl(kRows * kK), rt(kRows);
        shared.rsample_vjp(xv, wv, MatrixView<double>(gl.data(), kB, kK),
                           VectorView<double>(gt.data(), kB), threads);
        per_row.rsample_vjp(xv, wv, MatrixView<double>(rl.data(), kRows, kK),
                            VectorView<double>(rt.data(), kRows), threads);
        EXPECT_EQ(gl, row_sums(rl, kK));
        EXPECT_EQ(gt, row_sums(rt, 1));

        std::vector<double> lp(kRows), lp_rows(kRows), gvv(kRows * kK),
            gv_rows(kRows * kK);
        shared.log_prob_and_vjp(xv, gv, VectorView<double>(lp.data(), kRows),
                                MatrixView<double>(gvv.data(), kRows, kK),
                                MatrixView<double>(gl.data(), kB, kK),
                                VectorView<double>(gt.data(), kB), threads);
        per_row.log_prob_and_vjp(xv, gv, VectorView<double>(lp_rows.data(), kRows),
                                 MatrixView<double>(gv_rows.data(), kRows, kK),
                                 MatrixView<double>(rl.data(), kRows, kK),
                                 VectorView<double>(rt.data(), kRows), threads);
        EXPECT_EQ(lp, lp_rows);
        EXPECT_EQ(gvv, gv_rows);
        EXPECT_EQ(gl, row_sums(rl, kK));
        EXPECT_EQ(gt, row_sums(rt, 1));
    }
}

// Samples (2^16, 64) of one logits row: the per-row float64 gradients of all
// rows at once would take 32 MiB; slices of 2^20 elements take 8 MiB.
TEST(Api, SummedGradientsTakeSliceSizedScratch) {
#if RELAXCAT_TRACK_ALLOCATIONS
    constexpr int64_t kK = 64, kRows = int64_t(1) << 16;
    const std::vector<float> lg(kK, 0.25f);
    const RelaxedOneHotCategorical<float> d(
        0.7f, relaxcat::logits(MatrixView<const float>(lg.data(), 1, kK)), false);
    std::vector<float> x(kRows * kK), w(kRows * kK, 0.5f), g(kRows, 1.0f);
    Philox gen(2);
    d.rsample(MatrixView<float>(x.data(), kRows, kK), gen);
    const MatrixView<const float> xv(x.data(), kRows, kK), wv(w.data(), kRows, kK);
    float gl[kK], gt;
    g_largest_allocation = 0;
    d.rsample_vjp(xv, wv, MatrixView<float>(gl, 1, kK), VectorView<float>(&gt, 1));
    EXPECT_LE(g_largest_allocation.load(), size_t(9) << 20);
    g_largest_allocation = 0;
    d.log_prob_vjp(xv, VectorView<const float>(g.data(), kRows), MatrixView<float>(),
                   MatrixView<float>(gl, 1, kK), VectorView<float>(&gt, 1));
    EXPECT_LE(g_largest_allocation.load(), size_t(9) << 20);
#else
    GTEST_SKIP() << "allocations are not tracked under AddressSanitizer";
#endif
}

// A float row of 2^20 categories takes no noise buffer (a row of doubles, twice
// the output) beside its output: rsample_buffers_too_big.
TEST(Api, FewLongFloatRowsAreSampledInTheirOutput) {
#if RELAXCAT_TRACK_ALLOCATIONS
    constexpr int64_t kK = int64_t(1) << 20;
    std::vector<float> lg(kK);
    for (int64_t j = 0; j < kK; ++j) lg[j] = static_cast<float>(std::sin(0.001 * j));
    const RelaxedOneHotCategorical<float> d(
        0.7f, relaxcat::logits(MatrixView<const float>(lg.data(), 1, kK)));
    std::vector<float> x(kK);
    for (int threads : {1, 2}) {
        Philox gen(5);
        g_largest_allocation = 0;
        d.rsample(MatrixView<float>(x.data(), 1, kK), gen, threads);
        EXPECT_LE(g_largest_allocation.load(), kK * sizeof(float) / 20);
    }
#else
    GTEST_SKIP() << "allocations are not tracked under AddressSanitizer";
#endif
}

// Per-row logits gradients near the largest double over slices of draws: the
// running sum overflows in the first slice where the exact sums are finite,
// so the call is taken again over all rows, whose sums are rescued by scaling.
TEST(Api, SlicedSumsPastTheRangeAreTakenAgainOverAllRows) {
    constexpr int64_t kRows = 600000;  // 1.2e6 elements: several slices
    const std::vector<double> logits = {0.0, 0.0};
    const ExpRelaxedOneHotCategorical<double> d(
        1.0, relaxcat::logits(MatrixView<const double>(logits.data(), 1, 2)), false);
    std::vector<double> y(2 * kRows), w(2 * kRows, 0.0);
    for (int64_t r = 0; r < kRows; ++r) {
        y[2 * r] = -0.5;
        y[2 * r + 1] = -0.9;
        w[2 * r] = (r / 3) % 2 == 0 ? 1.7e308 : -1.7e308;  // +++---+++...
    }
    w[0] = 1.6e308;  // an exact sum of about -4e306
    std::vector<double> gl(2);
    d.rsample_vjp(MatrixView<const double>(y.data(), kRows, 2),
                  MatrixView<const double>(w.data(), kRows, 2),
                  MatrixView<double>(gl.data(), 1, 2), VectorView<double>());
    // The per-row gradients, unsummed: one parameter row per value row.
    std::vector<double> rows(2 * kRows);
    const std::vector<double> t_rows(kRows, 1.0);
    const std::vector<double> l_rows(2 * kRows, 0.0);
    const ExpRelaxedOneHotCategorical<double> per_row(
        VectorView<const double>(t_rows.data(), kRows),
        relaxcat::logits(MatrixView<const double>(l_rows.data(), kRows, 2)), false);
    per_row.rsample_vjp(MatrixView<const double>(y.data(), kRows, 2),
                        MatrixView<const double>(w.data(), kRows, 2),
                        MatrixView<double>(rows.data(), kRows, 2),
                        VectorView<double>());
    for (int j = 0; j < 2; ++j) {
        double plain = 0.0, scaled = 0.0;
        for (int64_t r = 0; r < kRows; ++r) {
            plain += rows[2 * r + j];
            scaled += rows[2 * r + j] * 0x1p-64;
        }
        EXPECT_FALSE(std::isfinite(plain));  // the running sum does overflow
        EXPECT_TRUE(std::isfinite(gl[j]));
        EXPECT_EQ(gl[j], scaled * 0x1p64);  // ... and the rescue's sum is kept
    }
    EXPECT_NEAR(gl[0] / -4e306, 1.0, 0.1);
}

// log_prob summed with weights, as a function of one logit, T or one coordinate.
// Per-row temperature gradients near the largest double, summed over the rows
// that share one temperature, had partial sums that overflowed to inf and then
// NaN, where the exact total is 1e307 (a fuzz campaign; Note [sums past the
// range]).
TEST(Api, SummedTemperatureGradientPastTheRangeInPartialSumsIsFinite) {
    const std::vector<double> logits = {0.0, 0.0};
    const ExpRelaxedOneHotCategorical<double> d(
        1.0, relaxcat::logits(MatrixView<const double>(logits.data(), 1, 2)), false);
    const std::vector<double> y = {0.0, -1e307, 0.0, -1e307, 0.0, -1e307, 0.0, -1e307};
    const std::vector<double> w = {0.0, 17.0, 0.0, 10.0, 0.0, -17.0, 0.0, -9.0};
    double gt = 0.0;
    d.rsample_vjp(MatrixView<const double>(y.data(), 4, 2),
                  MatrixView<const double>(w.data(), 4, 2), MatrixView<double>(),
                  VectorView<double>(&gt, 1));
    EXPECT_TRUE(std::isfinite(gt));
    EXPECT_NEAR(gt / 1e307, 1.0, 1e-12);
}

TEST(Api, LogProbVjpMatchesCentralDifferences) {
    const std::vector<double> lg = {0.3, -0.4, 1.1, 0.0};
    const std::vector<double> x = {0.1, 0.2, 0.3, 0.4};
    const double t = 0.8, h = 1e-6;
    auto lp = [&](const std::vector<double>& l, double temp,
                  const std::vector<double>& v) {
        const RelaxedOneHotCategorical<double> d(
            temp, relaxcat::logits(MatrixView<const double>(l.data(), 1, 4)), false);
        double out;
        d.log_prob(MatrixView<const double>(v.data(), 1, 4),
                   VectorView<double>(&out, 1));
        return out;
    };
    const RelaxedOneHotCategorical<double> d(
        t, relaxcat::logits(MatrixView<const double>(lg.data(), 1, 4)));
    const double g = 1.0;
    std::vector<double> gv(4), gl(4), gt(1);
    d.log_prob_vjp(MatrixView<const double>(x.data(), 1, 4),
                   VectorView<const double>(&g, 1), MatrixView<double>(gv.data(), 1, 4),
                   MatrixView<double>(gl.data(), 1, 4),
                   VectorView<double>(gt.data(), 1));
    for (int j = 0; j < 4; ++j) {
        std::vector<double> up = lg, down = lg;
        up[j] += h;
        down[j] -= h;
        EXPECT_NEAR(gl[j], (lp(up, t, x) - lp(down, t, x)) / (2 * h),
                    kFiniteDifferenceTol);
        std::vector<double> xu = x, xd = x;
        xu[j] += h;
        xd[j] -= h;
        EXPECT_NEAR(gv[j], (lp(lg, t, xu) - lp(lg, t, xd)) / (2 * h),
                    kFiniteDifferenceTol * std::abs(gv[j]) + kFiniteDifferenceTol);
    }
    EXPECT_NEAR(gt[0], (lp(lg, t + h, x) - lp(lg, t - h, x)) / (2 * h),
                kFiniteDifferenceTol);
}

TEST(Api, ProbsGradientsChainThroughTheNormalisation) {
    // With probs q the distribution equals the one with logits log q, and
    // d/dq_k = d/dl_k / q_k - sum_j d/dl_j / sum(q).
    const std::vector<double> q = {0.2, 0.5, 0.3, 1.0};
    std::vector<double> lq(4);
    for (int j = 0; j < 4; ++j) lq[j] = std::log(q[j]);
    const RelaxedOneHotCategorical<double> dp(
        0.6, relaxcat::probs(MatrixView<const double>(q.data(), 1, 4)));
    const RelaxedOneHotCategorical<double> dl(
        0.6, relaxcat::logits(MatrixView<const double>(lq.data(), 1, 4)));
    std::vector<double> x(4), w = {1.0, -2.0, 0.5, 0.25}, gp(4), gl(4), tp(1), tl(1);
    Philox gen(2);
    dp.rsample(MatrixView<double>(x.data(), 1, 4), gen);
    dp.rsample_vjp(MatrixView<const double>(x.data(), 1, 4),
                   MatrixView<const double>(w.data(), 1, 4),
                   MatrixView<double>(gp.data(), 1, 4),
                   VectorView<double>(tp.data(), 1));
    dl.rsample_vjp(MatrixView<const double>(x.data(), 1, 4),
                   MatrixView<const double>(w.data(), 1, 4),
                   MatrixView<double>(gl.data(), 1, 4),
                   VectorView<double>(tl.data(), 1));
    const double sum_gl = std::accumulate(gl.begin(), gl.end(), 0.0);
    for (int j = 0; j < 4; ++j) EXPECT_NEAR(gp[j], gl[j] / q[j] - sum_gl / 2.0, 1e-13);
    EXPECT_EQ(tp, tl);

    std::vector<double> p(4);
    dp.probs(MatrixView<double>(p.data(), 1, 4));
    for (int j = 0; j < 4; ++j) EXPECT_NEAR(p[j], q[j] / 2.0, 1e-16);
}

TEST(Api, ExpSamplesAreTheLogsOfSamples) {
    const std::vector<float> lg = {0.5f, -1.0f, 2.0f};
    const auto l = relaxcat::logits(MatrixView<const float>(lg.data(), 1, 3));
    std::vector<float> x(6), y(6);
    Philox a(8), b(8);
    RelaxedOneHotCategorical<float>(0.4f, l).rsample(MatrixView<float>(x.data(), 2, 3),
                                                     a);
    ExpRelaxedOneHotCategorical<float>(0.4f, l).rsample(
        MatrixView<float>(y.data(), 2, 3), b);
    for (int i = 0; i < 6; ++i) EXPECT_NEAR(std::exp(y[i]), x[i], 4e-7f);
}

// Note [underflow in log space]: the C++ class passes its logits to the
// kernel, so a -inf sample entry of a live category keeps its logits gradient,
// (w_k - x_k sum w) / T, a masked one gets 0, and the temperature gradient,
// which needs the lost log, is NaN.
TEST(Api, LogSpaceVjpKeepsTheGradientOfAnUnderflowedCategory) {
    const std::vector<double> lg = {0.0, -1000.0, -kInf, -2000.0};
    const double t = 1e-306;
    const ExpRelaxedOneHotCategorical<double> d(
        t, relaxcat::logits(MatrixView<const double>(lg.data(), 1, 4)));
    const std::vector<double> y = {0.0, -kInf, -kInf, -kInf};
    const std::vector<double> w = {1.0, 2.0, 3.0, 5.0};
    std::vector<double> gl(4), gt(1);
    d.rsample_vjp(MatrixView<const double>(y.data(), 1, 4),
                  MatrixView<const double>(w.data(), 1, 4),
                  MatrixView<double>(gl.data(), 1, 4),
                  VectorView<double>(gt.data(), 1));
    EXPECT_DOUBLE_EQ(gl[0], (1.0 - 8.0) / t);
    EXPECT_DOUBLE_EQ(gl[1], 2.0 / t);
    EXPECT_EQ(gl[2], 0.0);
    EXPECT_DOUBLE_EQ(gl[3], 5.0 / t);
    EXPECT_TRUE(std::isnan(gt[0]));
}

TEST(Api, EmptyBatchesAreAllowed) {
    const std::vector<double> lg = {0.0, 1.0};
    const RelaxedOneHotCategorical<double> d(
        1.0, relaxcat::logits(MatrixView<const double>(lg.data(), 1, 2)));
    Philox gen(1);
    d.rsample(MatrixView<double>(nullptr, 0, 2), gen);
    EXPECT_EQ(gen.offset(), 0u);
    d.log_prob(MatrixView<const double>(nullptr, 0, 2), VectorView<double>(nullptr, 0));
}

}  // namespace

// With one value row per parameter row the VJPs write the logits gradient
// straight into the caller's grad_param; with more rows they sum per-row
// gradients. Extra rows with a zero upstream gradient add exact zeros, so both
// routes, and a strided grad_param, give the same bits.
TEST(Api, VjpWritesOneDrawPerParameterRowLikeTheSummedRoute) {
    const std::vector<double> lg = ramp(12, 0.3);
    const RelaxedOneHotCategorical<double> d(
        0.7, relaxcat::logits(MatrixView<const double>(lg.data(), 3, 4)));
    std::vector<double> x(24);
    Philox gen(11);
    d.rsample(MatrixView<double>(x.data(), 6, 4), gen);
    std::vector<double> w = ramp(24, 0.25);
    std::fill(w.begin() + 12, w.end(), 0.0);
    const std::vector<double> g = {1.0, -2.0, 0.5, 0.0, 0.0, 0.0};

    std::vector<double> direct(12), summed(12), wide(24, -7.0), t1(1), t2(1), t3(1);
    const MatrixView<double> strided(wide.data(), 3, 4, 8, 2);
    std::vector<double> gv3(12), gv6(24);
    auto check = [&] {
        EXPECT_EQ(direct, summed);
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 4; ++j) EXPECT_EQ(strided(i, j), direct[i * 4 + j]);
        for (int i = 0; i < 3; ++i) EXPECT_EQ(wide[i * 8 + 1], -7.0);  // untouched
        EXPECT_EQ(t1, t2);
        EXPECT_EQ(t1, t3);
    };

    d.rsample_vjp(MatrixView<const double>(x.data(), 3, 4),
                  MatrixView<const double>(w.data(), 3, 4),
                  MatrixView<double>(direct.data(), 3, 4),
                  VectorView<double>(t1.data(), 1));
    d.rsample_vjp(MatrixView<const double>(x.data(), 6, 4),
                  MatrixView<const double>(w.data(), 6, 4),
                  MatrixView<double>(summed.data(), 3, 4),
                  VectorView<double>(t2.data(), 1));
    d.rsample_vjp(MatrixView<const double>(x.data(), 3, 4),
                  MatrixView<const double>(w.data(), 3, 4), strided,
                  VectorView<double>(t3.data(), 1));
    check();

    d.log_prob_vjp(
        MatrixView<const double>(x.data(), 3, 4), VectorView<const double>(g.data(), 3),
        MatrixView<double>(gv3.data(), 3, 4), MatrixView<double>(direct.data(), 3, 4),
        VectorView<double>(t1.data(), 1));
    d.log_prob_vjp(
        MatrixView<const double>(x.data(), 6, 4), VectorView<const double>(g.data(), 6),
        MatrixView<double>(gv6.data(), 6, 4), MatrixView<double>(summed.data(), 3, 4),
        VectorView<double>(t2.data(), 1));
    d.log_prob_vjp(MatrixView<const double>(x.data(), 3, 4),
                   VectorView<const double>(g.data(), 3), MatrixView<double>(), strided,
                   VectorView<double>(t3.data(), 1));
    check();
}

// The fused call gives the bits of log_prob and log_prob_vjp, for float and for
// rows that take both the column and the row paths (K = 3 and K = 40).
template <class Real>
void check_log_prob_and_vjp(int64_t k) {
    std::vector<Real> lg(static_cast<size_t>(2 * k));
    for (size_t i = 0; i < lg.size(); ++i) lg[i] = static_cast<Real>(std::sin(0.7 * i));
    lg[1] = -std::numeric_limits<Real>::infinity();
    const std::vector<Real> t = {Real(0.4), Real(1.5)};
    const RelaxedOneHotCategorical<Real> d(
        VectorView<const Real>(t.data(), 2),
        relaxcat::logits(MatrixView<const Real>(lg.data(), 2, k)));
    const int64_t rows = 6;
    std::vector<Real> x(static_cast<size_t>(rows * k));
    Philox gen(5);
    d.rsample(MatrixView<Real>(x.data(), rows, k), gen);
    const std::vector<Real> g = {1, -2, Real(0.5), 3, Real(-0.25), 0};
    const MatrixView<const Real> xv(x.data(), rows, k);
    const VectorView<const Real> gvw(g.data(), rows);

    std::vector<Real> lp1(rows), lp2(rows), gv1(x.size()), gv2(x.size()),
        gl1(lg.size()), gl2(lg.size()), gt1(2), gt2(2);
    d.log_prob(xv, VectorView<Real>(lp1.data(), rows), 2);
    d.log_prob_vjp(xv, gvw, MatrixView<Real>(gv1.data(), rows, k),
                   MatrixView<Real>(gl1.data(), 2, k), VectorView<Real>(gt1.data(), 2),
                   2);
    d.log_prob_and_vjp(xv, gvw, VectorView<Real>(lp2.data(), rows),
                       MatrixView<Real>(gv2.data(), rows, k),
                       MatrixView<Real>(gl2.data(), 2, k),
                       VectorView<Real>(gt2.data(), 2), 1);
    EXPECT_EQ(lp1, lp2);
    EXPECT_EQ(gv1, gv2);
    EXPECT_EQ(gl1, gl2);
    EXPECT_EQ(gt1, gt2);

    // out may not alias an input or another output.
    EXPECT_THROW(d.log_prob_and_vjp(xv, gvw, VectorView<Real>(gv2.data(), rows),
                                    MatrixView<Real>(gv2.data(), rows, k),
                                    MatrixView<Real>(), VectorView<Real>(), 1),
                 std::invalid_argument);
}

TEST(Api, LogProbAndVjpEqualsTheTwoCalls) {
    check_log_prob_and_vjp<float>(3);
    check_log_prob_and_vjp<float>(40);
    check_log_prob_and_vjp<double>(3);
    check_log_prob_and_vjp<double>(40);
}

// Note [summed gradients]: two float rows whose logits gradients (about +-866)
// cancel to -0.119 are summed in double and rounded once; float sums of rounded
// rows were 4.8e-5 off.
TEST(Api, FloatLogitsGradientsAreSummedInDouble) {
    const std::vector<float> lg = {0.3f, -0.2f};
    const std::vector<double> lg64 = {0.3f, -0.2f};
    const std::vector<float> x = {0.5f, 0.5f, 0.5f, 0.5f};
    const std::vector<float> w = {3.4641016f, 0.0f, -3.4645774f, 0.0f};
    const std::vector<double> x64(x.begin(), x.end()), w64(w.begin(), w.end());
    const RelaxedOneHotCategorical<float> d(
        1e-3f, relaxcat::logits(MatrixView<const float>(lg.data(), 1, 2)));
    const RelaxedOneHotCategorical<double> d64(
        static_cast<double>(1e-3f),
        relaxcat::logits(MatrixView<const double>(lg64.data(), 1, 2)));
    std::vector<float> g(2);
    std::vector<double> g64(2);
    d.rsample_vjp(MatrixView<const float>(x.data(), 2, 2),
                  MatrixView<const float>(w.data(), 2, 2),
                  MatrixView<float>(g.data(), 1, 2), VectorView<float>());
    d64.rsample_vjp(MatrixView<const double>(x64.data(), 2, 2),
                    MatrixView<const double>(w64.data(), 2, 2),
                    MatrixView<double>(g64.data(), 1, 2), VectorView<double>());
    ASSERT_GT(std::abs(g64[0]), 0.1);
    for (int j = 0; j < 2; ++j) EXPECT_EQ(g[j], static_cast<float>(g64[j]));
}

// parallel_rows hands each thread scratch that starts on a 64-byte boundary
// whatever the heap returns, for any length asked for; the kernels' buffer
// lengths keep the buffers inside it aligned as well.
TEST(Api, ScratchIsAlignedForVectors) {
    for (int64_t doubles : {1, 7, 8, 13, 6200}) {
        for (int threads : {1, 2, 3}) {
            std::vector<uintptr_t> seen;
            std::mutex lock;
            relaxcat::detail::parallel_rows(
                64, 1 << 16, threads, doubles,
                [&](int64_t, int64_t, double* scratch) {
                    scratch[0] = 1.0;
                    scratch[doubles - 1] = 1.0;  // the whole length is usable
                    const std::lock_guard<std::mutex> hold(lock);
                    seen.push_back(reinterpret_cast<uintptr_t>(scratch));
                },
                [] { return false; });
            ASSERT_FALSE(seen.empty());
            for (uintptr_t p : seen) EXPECT_EQ(p % 64, 0u) << doubles << " " << threads;
        }
    }
    namespace k = relaxcat::detail::native;
    for (int64_t kk : {1, 2, 3, 7, 8, 16, 17, 255, 2047, 2048, 5001})
        EXPECT_EQ(k::block_capacity(kk) % k::kAlignDoubles, 0) << kk;
    for (int64_t kk : {1, 2, 3, 5, 8, 16}) {
        EXPECT_EQ(k::rows_per_block(kk) % k::kAlignDoubles, 0) << kk;
        EXPECT_LE(k::rows_per_block(kk) * kk, k::kBlockElements) << kk;
    }
}

namespace {

// Note [row reductions], written out plainly: rows below 2 kSlots in order from
// `empty`; longer rows in 16 interleaved slots, then folded in halves.
template <class Op>
double slot_order_reference(const std::vector<double>& v, double empty, Op op) {
    const int64_t k = static_cast<int64_t>(v.size());
    if (k < 32) {
        double r = empty;
        for (double x : v) r = op(r, x);
        return r;
    }
    double slot[16];
    for (int i = 0; i < 16; ++i) slot[i] = v[i];
    for (int64_t j = 16; j < k; ++j) slot[j % 16] = op(slot[j % 16], v[j]);
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; ++i) slot[i] = op(slot[i], slot[i + w]);
    return slot[0];
}

bool same_bits(double a, double b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}

}  // namespace

// fold_terms takes several reductions in one pass; each must have the bits of
// its own pass in the order of Note [row reductions], on every row length
// (the scalar head and tail of a long row, whole vectors, short rows).
TEST(Api, FoldTermsReducesEachResultAsItsOwnPassWould) {
    namespace k = relaxcat::detail::native;
    using k::Fold;
    for (int64_t n : {1, 2, 5, 16, 31, 32, 33, 40, 47, 48, 100, 1000, 4099}) {
        std::vector<double> v = ramp(static_cast<int>(n), 3.0);
        for (int64_t j = 0; j < n; j += 7) v[j] = v[j] * 1e-17 + 1e9;  // rounding
        if (n > 3) v[3] = -0.0;
        const double* p = v.data();
        const auto f =
            k::fold_terms<Fold::max, Fold::plus, Fold::plus>(n, [p](auto d, int64_t j) {
                using D = decltype(d);
                const D x = k::load_lanes<D>(p + j);
                return std::array<D, 3>{x, x, x * x - 1.0};
            });
        std::vector<double> sq(v.size());
        for (size_t j = 0; j < v.size(); ++j) sq[j] = v[j] * v[j] - 1.0;
        const auto max = [](double a, double b) { return a > b ? a : b; };
        const auto plus = [](double a, double b) { return a + b; };
        EXPECT_TRUE(same_bits(f[0], slot_order_reference(v, -kInf, max))) << n;
        EXPECT_TRUE(same_bits(f[1], slot_order_reference(v, 0.0, plus))) << n;
        EXPECT_TRUE(same_bits(f[2], slot_order_reference(sq, 0.0, plus))) << n;
        // The single reduction agrees with the same order.
        const double s = k::reduce_terms(n, 0.0, k::kPlus, [p](auto d, int64_t j) {
            return k::load_lanes<decltype(d)>(p + j);
        });
        EXPECT_TRUE(same_bits(s, f[1])) << n;
    }
}

// A walker moved on by advance_by(n) holds the offsets of n calls of advance(),
// across carries between dimensions, broadcast (stride 0) and negative strides,
// and past the last row, where both wrap to the first.
TEST(Api, RowWalkerAdvanceByEqualsRepeatedAdvance) {
    namespace k = relaxcat::detail::native;
    relaxcat::detail::RowShape shape;
    shape.ndim = 3;
    shape.shape[0] = 3;
    shape.shape[1] = 1;
    shape.shape[2] = 5;
    shape.rows = 15;
    const int64_t s0[3] = {35, 7, 7}, s1[3] = {0, 4, -1}, s2[3] = {5, 0, 1};
    const int64_t* const strides[3] = {s0, s1, s2};
    for (int64_t start = 0; start < shape.rows; ++start) {
        for (int64_t n : {0, 1, 2, 4, 5, 6, 9, 14, 15, 16, 31}) {
            k::RowWalker<3> one(shape, start, strides), jump(shape, start, strides);
            for (int64_t i = 0; i < n; ++i) one.advance();
            jump.advance_by(n);
            for (int j = 0; j < 3; ++j)
                EXPECT_EQ(jump.offset[j], one.offset[j])
                    << start << " " << n << " " << j;
        }
    }
}
