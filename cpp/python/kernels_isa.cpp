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

// log and exp as the kernels run them: vectors for whole groups of lanes, then
// scalars for the rest, so that the tests reach both.
void map_log(const double* in, double* out, int64_t n) {
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
                                   &map_exp,
                                   &map_logf};
    return table;
}

}  // namespace python
}  // namespace relaxcat
