#pragma once
// The table of kernels for one instruction set, and the choice among them.
// Only plain function pointers and the ISA-neutral argument records cross from
// one instruction-set translation unit to another.

#include <cstdint>
#include <string>
#include <vector>

#include "relaxcat/detail/args.hpp"

namespace relaxcat {
namespace python {

using detail::CheckArgs;
using detail::LogProbArgs;
using detail::ParamArgs;
using detail::ProbsVjpArgs;
using detail::RsampleArgs;
using detail::RsampleVjpArgs;

template <class Real>
struct KernelSet {
    void (*rsample)(const RsampleArgs<Real>&, int64_t, int64_t, double*);
    // One step over one chunk of a row (Note [split rows] in kernels.hpp).
    double (*rsample_step)(const RsampleArgs<Real>&, int64_t, int, int64_t, int64_t,
                           const double*, double*);
    void (*log_prob)(const LogProbArgs<Real>&, int64_t, int64_t, double*);
    void (*rsample_vjp)(const RsampleVjpArgs<Real>&, int64_t, int64_t, double*);
    void (*param)(const ParamArgs<Real>&, int64_t, int64_t, double*);
    void (*probs_vjp)(const ProbsVjpArgs<Real>&, int64_t, int64_t, double*);
    void (*check)(const CheckArgs<Real>&, int64_t, int64_t, double*);
    // One step over one chunk of a row on the simplex (Note [split rows] for
    // rsample_vjp in kernels.hpp).
    double (*rsample_vjp_step)(const RsampleVjpArgs<Real>&, int64_t, int, int64_t,
                               int64_t, const double*, double*);
};

struct KernelTable {
    const char* name;
    KernelSet<float> f32;
    KernelSet<double> f64;
    int64_t (*scratch_size)(int64_t k);
    int64_t (*rsample_scratch_size)(int64_t k, detail::RsampleNeeds needs);
    double (*split_row_combine)(int step, const double* results, int64_t chunks);
    void (*gumbels)(uint64_t key, uint64_t stream, uint64_t first, int64_t n,
                    double* out);
    void (*gumbels_f32)(uint64_t key, uint64_t stream, uint64_t first, int64_t n,
                        float* out);
    void (*log)(const double* in, double* out, int64_t n);
    void (*log_fused)(const double* in, double* out, int64_t n);
    void (*exp)(const double* in, double* out, int64_t n);
    void (*logf)(const float* in, float* out, int64_t n);
};

#define RELAXCAT_DECLARE_TABLE(fn) const KernelTable& fn();
RELAXCAT_DECLARE_TABLE(kernels_baseline)
RELAXCAT_DECLARE_TABLE(kernels_avx2)
RELAXCAT_DECLARE_TABLE(kernels_avx512)
#undef RELAXCAT_DECLARE_TABLE

// The levels this binary holds and this CPU runs, best first.
std::vector<std::string> available_levels();
// The table in use. Chosen at first use: the best available level, or the level
// named by the environment variable RELAXCAT_SIMD if it is available.
const KernelTable& active();
// Switch the level (tests, and users chasing a bug); throws std::invalid_argument
// for a level this binary or CPU lacks.
void set_level(const std::string& name);

}  // namespace python
}  // namespace relaxcat
