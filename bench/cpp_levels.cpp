// Speed of RelaxedOneHotCategorical<float>::rsample at the SIMD level the
// compiler flags select (the `native` namespace of the C++ API), on (2^20, 8)
// and (4096, 256), one thread. Build once per level and compare (docs/cpp.md):
//
//   g++ -std=c++17 -O3 -ffp-contract=off -Icpp/include bench/cpp_levels.cpp \
//       -pthread -o cpp_levels_sse2                      # baseline: SSE2
//   ... -mavx2 -mfma ...                                 # AVX2
//   ... -mavx512f -mavx512dq -mavx512vl -mavx512bw -mavx2 -mfma \
//       -mprefer-vector-width=512 ...                    # AVX-512
//   ... -march=native ...                                # whatever this CPU has
//
// Prints one line per shape: median and best ns per element over the repeats,
// and a hash of the output bits, which must agree between levels (the samples
// do not depend on the level) before the times mean anything.

#include <relaxcat/relaxcat.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

const char* level_name() {
#if defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__)
    return "avx2";
#elif defined(__AVX__)
    return "avx";
#else
    return "sse2";
#endif
}

// FNV-1a over the bytes of the output.
uint64_t hash_bits(const std::vector<float>& v) {
    uint64_t h = 1469598103934665603ull;
    const unsigned char* p = reinterpret_cast<const unsigned char*>(v.data());
    for (size_t i = 0; i < v.size() * sizeof(float); ++i)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

void run(int64_t rows, int64_t k, int repeats, int threads) {
    std::vector<float> logits(static_cast<size_t>(rows * k));
    for (size_t i = 0; i < logits.size(); ++i)
        logits[i] = static_cast<float>(2.0 * std::sin(0.37 * static_cast<double>(i)));
    const relaxcat::RelaxedOneHotCategorical<float> d(
        0.5f,
        relaxcat::logits(relaxcat::MatrixView<const float>(logits.data(), rows, k)));
    std::vector<float> out(logits.size());
    const relaxcat::MatrixView<float> view(out.data(), rows, k);

    // One untimed call fixes the bits (offset 0) and warms caches and pages.
    relaxcat::Philox gen(2024);
    d.rsample(view, gen, threads);
    const uint64_t hash = hash_bits(out);

    std::vector<double> ns;
    for (int i = 0; i < repeats; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        d.rsample(view, gen, threads);
        const auto t1 = std::chrono::steady_clock::now();
        ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() /
                     static_cast<double>(rows * k));
    }
    std::sort(ns.begin(), ns.end());
    std::printf(
        "%-7s threads %d  (%lld, %lld)  median %.3f ns/elem  best %.3f  "
        "hash %016llx\n",
        level_name(), threads, static_cast<long long>(rows), static_cast<long long>(k),
        ns[ns.size() / 2], ns.front(), static_cast<unsigned long long>(hash));
}

}  // namespace

int main(int argc, char** argv) {
    const int repeats = argc > 1 ? std::atoi(argv[1]) : 21;
    const int threads = argc > 2 ? std::atoi(argv[2]) : 1;
    run(int64_t{1} << 20, 8, repeats, threads);
    run(4096, 256, repeats, threads);
    return 0;
}
