// Instantiates every kernel for one instruction set. CMake compiles this file
// once per level with RELAXCAT_ISA_NAMESPACE and RELAXCAT_TABLE_FN set; see
// Note [one-definition trap] in relaxcat/detail/isa.hpp.

#include <algorithm>

#include "dispatch.hpp"
#include "relaxcat/detail/kernels.hpp"

namespace relaxcat {
namespace python {
namespace {

namespace k = detail::RELAXCAT_ISA_NAMESPACE;

template <class Real>
KernelSet<Real> make_set() {
    return KernelSet<Real>{&k::rsample_rows<Real>,  &k::rsample_row_step<Real>,
                           &k::log_prob_rows<Real>, &k::rsample_vjp_rows<Real>,
                           &k::param_rows<Real>,    &k::probs_vjp_rows<Real>,
                           &k::check_rows<Real>,    &k::rsample_vjp_row_step<Real>};
}

// The logs and exp as the noise and the kernels run them: vectors for whole
// groups of lanes, then scalars for the rest, so that the tests reach both.
// map_log is the noise's log (log_d), map_log_fused the kernels' (math.hpp,
// Note [fused log]).
void map_log(const double* in, double* out, int64_t n) {
    int64_t j = 0;
#if defined(RELAXCAT_HAVE_VECTOR_EXTENSIONS)
    for (; j + k::kLanes <= n; j += k::kLanes)
        k::store_d(out + j, k::log_v(k::load_d(in + j)));
#endif
    for (; j < n; ++j) out[j] = k::log_d(in[j]);
}

void map_log_fused(const double* in, double* out, int64_t n) {
    std::copy(in, in + n, out);
    k::log_inplace(out, n);
}

void map_exp(const double* in, double* out, int64_t n) {
    std::copy(in, in + n, out);
    k::exp_inplace(out, n);
}

void map_logf(const float* in, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = k::logf_positive_s(in[i]);
}

}  // namespace

const KernelTable& RELAXCAT_TABLE_FN() {
    static const KernelTable table{RELAXCAT_ISA_NAME,
                                   make_set<float>(),
                                   make_set<double>(),
                                   &k::scratch_size,
                                   &k::rsample_scratch_size,
                                   &k::split_row_combine,
                                   &k::fill_gumbels,
                                   &k::fill_gumbels_f32<float>,
                                   &map_log,
                                   &map_log_fused,
                                   &map_exp,
                                   &map_logf};
    return table;
}

}  // namespace python
}  // namespace relaxcat
