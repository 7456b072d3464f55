// The C++ classes stay inside the caller's arrays: every view of a call (the
// logits, the value, the upstream gradients and every output) is placed against
// a page the process may not touch, at its end or at its start, and the results
// must be the bits of the same calls on ordinary vectors. A read or write past a
// view ends the test with SIGSEGV. The prefetches of Note [prefetching]
// (kernels.hpp) ask for memory up to 4 KiB past a long row; a prefetch does not
// fault, and this holds that too. tests/python/test_guard_pages.py does the same
// for the Python module at every SIMD level; this one runs the C++ front end at
// the level the tests are built for.

#include <gtest/gtest.h>

#include <relaxcat/relaxcat.hpp>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

using relaxcat::ExpRelaxedOneHotCategorical;
using relaxcat::MatrixView;
using relaxcat::Philox;
using relaxcat::RelaxedOneHotCategorical;
using relaxcat::VectorView;

// Anonymous mappings with an inaccessible page on each side, unmapped at the end.
class GuardedArena {
public:
    GuardedArena() = default;
    GuardedArena(const GuardedArena&) = delete;
    GuardedArena& operator=(const GuardedArena&) = delete;
    ~GuardedArena() {
        for (const auto& m : maps_) munmap(m.first, m.second);
    }

    // n Ts ending just before a guard page (at_end) or starting just after one,
    // holding a copy of src (n entries).
    template <class T>
    T* place(const T* src, size_t n, bool at_end) {
        const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        const size_t bytes = n * sizeof(T);
        const size_t pages = (bytes + page - 1) / page + 2;
        void* base = mmap(nullptr, pages * page, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        EXPECT_NE(base, MAP_FAILED);
        if (base == MAP_FAILED) return nullptr;
        maps_.emplace_back(base, pages * page);
        char* const b = static_cast<char*>(base);
        EXPECT_EQ(mprotect(b, page, PROT_NONE), 0);
        EXPECT_EQ(mprotect(b + (pages - 1) * page, page, PROT_NONE), 0);
        char* const start = at_end ? b + (pages - 1) * page - bytes : b + page;
        if (bytes > 0) std::memcpy(start, src, bytes);
        return reinterpret_cast<T*>(start);
    }

private:
    std::vector<std::pair<void*, size_t>> maps_;
};

// What one round of calls gives: the sample, log_prob of a given value, and
// both VJPs, as bytes.
template <class Real>
struct Results {
    std::vector<Real> sample, log_prob, rs_logits, rs_t, lp_value, lp_logits, lp_t;
};

template <class Dist, class Real>
Results<Real> run_calls(const std::vector<Real>& logits, const std::vector<Real>& x,
                        const std::vector<Real>& w, const std::vector<Real>& g,
                        int64_t rows, int64_t k, GuardedArena* arena, bool at_end) {
    const size_t n = static_cast<size_t>(rows * k);
    const size_t nr = static_cast<size_t>(rows);
    const auto put = [&](const std::vector<Real>& v) -> Real* {
        if (arena == nullptr) return const_cast<Real*>(v.data());
        return arena->place(v.data(), v.size(), at_end);
    };
    // Outputs: zero-filled, in the arena or in these vectors.
    std::vector<Real> zeros_n(n, Real(0)), zeros_r(nr, Real(0)), zero1(1, Real(0));
    std::vector<std::vector<Real>> owned;
    const auto out = [&](const std::vector<Real>& z) -> Real* {
        if (arena != nullptr) return arena->place(z.data(), z.size(), at_end);
        owned.push_back(z);
        return owned.back().data();
    };
    owned.reserve(8);

    const Dist d(Real(0.7),
                 relaxcat::logits(MatrixView<const Real>(put(logits), rows, k)));
    const Real* xv = put(x);
    const Real* wv = put(w);
    const Real* gv = put(g);

    Results<Real> res;
    Real* sample = out(zeros_n);
    Philox gen(17);
    d.rsample(MatrixView<Real>(sample, rows, k), gen);
    res.sample.assign(sample, sample + n);

    Real* lp = out(zeros_r);
    d.log_prob(MatrixView<const Real>(xv, rows, k), VectorView<Real>(lp, rows));
    res.log_prob.assign(lp, lp + nr);

    Real* rl = out(zeros_n);
    Real* rt = out(zero1);
    d.rsample_vjp(MatrixView<const Real>(xv, rows, k),
                  MatrixView<const Real>(wv, rows, k), MatrixView<Real>(rl, rows, k),
                  VectorView<Real>(rt, 1));
    res.rs_logits.assign(rl, rl + n);
    res.rs_t.assign(rt, rt + 1);

    Real* lv = out(zeros_n);
    Real* ll = out(zeros_n);
    Real* lt = out(zero1);
    d.log_prob_vjp(MatrixView<const Real>(xv, rows, k),
                   VectorView<const Real>(gv, rows), MatrixView<Real>(lv, rows, k),
                   MatrixView<Real>(ll, rows, k), VectorView<Real>(lt, 1));
    res.lp_value.assign(lv, lv + n);
    res.lp_logits.assign(ll, ll + n);
    res.lp_t.assign(lt, lt + 1);

    if (arena != nullptr) {  // nothing the caller passed was written to
        EXPECT_EQ(std::memcmp(xv, x.data(), n * sizeof(Real)), 0);
        EXPECT_EQ(std::memcmp(wv, w.data(), n * sizeof(Real)), 0);
        EXPECT_EQ(std::memcmp(gv, g.data(), nr * sizeof(Real)), 0);
    }
    return res;
}

template <class Real>
void expect_same_bits(const std::vector<Real>& a, const std::vector<Real>& b,
                      const char* what, int64_t k, bool at_end) {
    ASSERT_EQ(a.size(), b.size()) << what;
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(Real)), 0)
        << what << " at K = " << k
        << (at_end ? ", ending at a guard" : ", after a guard");
}

template <class Dist, class Real>
void check_guarded(int64_t k, int64_t rows, bool at_end) {
    const size_t n = static_cast<size_t>(rows * k);
    std::vector<Real> logits(n), w(n), g(static_cast<size_t>(rows));
    for (size_t i = 0; i < n; ++i) {
        logits[i] =
            static_cast<Real>(2.0 * std::sin(0.37 * static_cast<double>(i) + k));
        w[i] = static_cast<Real>(std::cos(0.11 * static_cast<double>(i)));
    }
    if (k >= 3)
        logits[static_cast<size_t>(k) + 1] = -std::numeric_limits<Real>::infinity();
    for (int64_t r = 0; r < rows; ++r)
        g[static_cast<size_t>(r)] = Real(0.5) + Real(r % 3);
    std::vector<Real> x(n);
    {
        const Dist d(Real(0.7),
                     relaxcat::logits(MatrixView<const Real>(logits.data(), rows, k)));
        Philox gen(5);
        d.rsample(MatrixView<Real>(x.data(), rows, k), gen);
    }
    const Results<Real> want =
        run_calls<Dist>(logits, x, w, g, rows, k, nullptr, at_end);
    GuardedArena arena;
    const Results<Real> got = run_calls<Dist>(logits, x, w, g, rows, k, &arena, at_end);
    expect_same_bits(got.sample, want.sample, "rsample", k, at_end);
    expect_same_bits(got.log_prob, want.log_prob, "log_prob", k, at_end);
    expect_same_bits(got.rs_logits, want.rs_logits, "rsample_vjp logits", k, at_end);
    expect_same_bits(got.rs_t, want.rs_t, "rsample_vjp temperature", k, at_end);
    expect_same_bits(got.lp_value, want.lp_value, "log_prob_vjp value", k, at_end);
    expect_same_bits(got.lp_logits, want.lp_logits, "log_prob_vjp logits", k, at_end);
    expect_same_bits(got.lp_t, want.lp_t, "log_prob_vjp temperature", k, at_end);
}

// Row lengths on both sides of each path's threshold, as in the Python test.
constexpr int64_t kCases[][2] = {{1, 700},  {2, 700},  {3, 700},  {8, 300},  {16, 130},
                                 {17, 130}, {31, 70},  {32, 70},  {63, 35},  {64, 35},
                                 {100, 21}, {2047, 3}, {2048, 3}, {2049, 3}, {5000, 2}};

TEST(GuardPages, EveryCallStaysInsideTheCallersViews) {
    for (const auto& c : kCases)
        for (const bool at_end : {true, false}) {
            check_guarded<RelaxedOneHotCategorical<float>, float>(c[0], c[1], at_end);
            check_guarded<RelaxedOneHotCategorical<double>, double>(c[0], c[1], at_end);
            check_guarded<ExpRelaxedOneHotCategorical<float>, float>(c[0], c[1],
                                                                     at_end);
            check_guarded<ExpRelaxedOneHotCategorical<double>, double>(c[0], c[1],
                                                                       at_end);
        }
}

}  // namespace

#endif
