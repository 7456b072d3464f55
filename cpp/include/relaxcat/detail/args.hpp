#pragma once
// Plain argument records shared by every instruction-set copy of the kernels.
//
// Nothing here depends on the instruction set: these are passive structs, so the
// per-ISA translation units of the Python module can hand them to one another
// without the one-definition trap described in kernels.hpp.

#include <atomic>
#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

namespace relaxcat {
namespace detail {

// NumPy allows 64 dimensions; the batch part of a relaxcat array (everything but
// the category axis) is limited to 31, which leaves room for the category axis.
constexpr int kMaxBatchDims = 31;

// The batch (row) shape shared by every array of one call. Row r is the
// row-major flattening of a batch index; the category axis has length k.
struct RowShape {
    int ndim = 0;
    int64_t shape[kMaxBatchDims] = {};
    int64_t rows = 1;
    int64_t k = 1;
};

// A strided view of an input or output laid out over RowShape. Strides count
// elements, not bytes; a broadcast dimension has stride 0. For per-row arrays
// (temperature, log-density) kstride is unused.
template <class T>
struct RowArg {
    T* data = nullptr;
    int64_t stride[kMaxBatchDims] = {};
    int64_t kstride = 1;
};

// The chunks of Note [split rows] (kernels.hpp): rows longer than this reduce
// chunk by chunk, and rsample, and rsample_vjp on the simplex, can spread one
// such row over threads.
constexpr int64_t kChunkElements = 8192;

// rsample_vjp on the simplex over chunks (Note [split rows] for rsample_vjp):
// its steps, and the sums each chunk gives in the first (RestSums).
constexpr int kRsampleVjpSteps = 3;
constexpr int kRestSums = 7;

// Whether elements first .. first + n - 1 all lie in a stream, which has 2^64
// elements: a draw never wraps around (the SIMD levels would not agree there).
constexpr bool stream_holds(uint64_t first, uint64_t n) {
    return n == 0 || n - 1 <= ~first;
}

// "1 element", "n elements": the size of a draw in the stream's messages.
inline std::string element_count(uint64_t n) {
    return std::to_string(n) + (n == 1 ? " element" : " elements");
}

// Where the Gumbel noise of a call comes from: Philox4x32-10 under (key, stream),
// element i of the output drawing from element offset + i of the stream
// (noise.hpp), or explicit noise.
template <class Real>
struct NoiseSource {
    uint64_t key = 0;
    uint64_t stream = 0;
    uint64_t offset = 0;
    RowArg<const Real> gumbels;  // used when gumbels.data is not null
    // Explicit noise in double, whatever Real is (used when its data is not
    // null): the stream's own noise is double, so float32 samples made by
    // relaxcat can be reproduced bit for bit from it.
    RowArg<const double> gumbels64;
};

template <class Real>
struct RsampleArgs {
    RowShape shape;
    RowArg<const Real> logits;
    RowArg<const Real> temperature;
    NoiseSource<Real> noise;
    Real* x = nullptr;      // C-contiguous (rows, k) output, or null
    Real* log_x = nullptr;  // C-contiguous (rows, k) output, or null
    // Sample long float rows of x in the output too, taking exp(s) twice
    // (Note [rows without scratch] in kernels.hpp); rsample_choose_scratch
    // sets it and `keep`.
    bool no_scratch = false;
    // Of such a row, exp(s) of the first `keep` elements (a multiple of
    // kChunkElements) is kept in scratch, not taken again (rsample_keep).
    int64_t keep = 0;
};

// Whether long float rows of x should be sampled in their output although the
// caller did not ask (RsampleArgs::no_scratch): a noise buffer of one row of
// doubles per thread is at most 1/20 of a float output of `rows` rows only from
// 40 rows per thread on (Note [rows without scratch] in kernels.hpp).
inline bool rsample_buffers_too_big(int64_t rows, int threads) {
    return rows < 40 * static_cast<int64_t>(threads);
}

// The exp(s) a thread keeps of a float row of x sampled in its output
// (RsampleArgs::keep) within 1/20 of an output of `rows` rows of K floats: that
// share split between the threads, in whole chunks of kChunkElements.
inline int64_t rsample_keep(int64_t rows, int64_t k, int threads) {
    const int64_t doubles = rows * k * 4 / 20 / 8 / static_cast<int64_t>(threads);
    const int64_t chunks = doubles / kChunkElements;
    return std::min(k, chunks * kChunkElements);
}

// Sets a.no_scratch and a.keep for a call on `threads` threads (Note [rows
// without scratch]): a caller who gave the output (Python's out=) keeps
// nothing; a call too small for a buffer per thread keeps what 1/20 of its
// output allows; any other keeps a buffer per thread.
template <class Real>
void rsample_choose_scratch(RsampleArgs<Real>& a, int threads, bool output_given) {
    const bool too_big = rsample_buffers_too_big(a.shape.rows, threads);
    a.no_scratch = output_given || too_big;
    a.keep =
        !output_given && too_big ? rsample_keep(a.shape.rows, a.shape.k, threads) : 0;
}

// What rsample_scratch_size needs to know of a call besides K (Note [rows
// without scratch]).
struct RsampleNeeds {
    bool x, log_x, given, recompute;  // recompute: long rows may be sampled in
                                      // their output (free for double samples
                                      // and for log x, an exponential more for
                                      // float x)
    int64_t keep;                     // RsampleArgs::keep for float x, else 0
};

template <class Real>
RsampleNeeds rsample_needs(const RsampleArgs<Real>& a) {
    const bool x = a.x != nullptr;
    const bool free = std::is_same<Real, double>::value || !x;
    return {x, a.log_x != nullptr,
            a.noise.gumbels.data != nullptr || a.noise.gumbels64.data != nullptr,
            free || a.no_scratch, free ? 0 : a.keep};
}

// Whether rsample may spread each row over threads, chunk by chunk (Note [split
// rows] in kernels.hpp): rows longer than one chunk, whose noise comes from the
// stream and that have one output, which holds the row's noise meanwhile.
inline bool rsample_splits(int64_t k, const RsampleNeeds& n) {
    return k > kChunkElements && !n.given && n.x != n.log_x;
}

// Doubles of scratch a split row shares between its threads: exp(s) of a float
// row of x that keeps it rather than take it twice (Note [rows without scratch]
// in kernels.hpp), as a row sampled by one thread does.
inline int64_t rsample_split_scratch(int64_t k, const RsampleNeeds& n) {
    return n.recompute ? n.keep : k;
}

// The steps of a split rsample row (rsample_row_step): the noise and max a,
// max u, exp(s) and its sum, the output; the first three give a result.
constexpr int kRsampleSteps = 4;

// The value space of a log-density: the simplex (x) or its logarithm (y = log x).
enum class Space { simplex, log };

// Note [summed gradients]: the temperature gradient is written per row in double
// whatever Real is, and the callers sum rows that share a temperature in double
// before rounding once to Real. A float32 sum of per-row values would lose
// digits when they cancel, and per-row values past the float range (they grow
// like 1/T^2 as T -> 0) would be +-inf and could sum to NaN where the exact sum
// overflows to an infinity of one sign. The logits gradient is written in Real
// when each parameter row has one value row and no probs transform follows (it
// is then the result), and otherwise in double (grad_logits_wide, at most one of
// the two is set): summed over the rows that share a parameter row in double,
// and passed through the probs transform (ProbsVjpArgs) in double, it is rounded
// to Real once, at the end. The same holds for log_prob's value gradient when
// one value row serves several batch rows (a broadcast value).
template <class Real>
struct LogProbArgs {
    RowShape shape;
    Space space = Space::simplex;
    RowArg<const Real> logits;
    RowArg<const Real> temperature;
    RowArg<const Real> value;
    RowArg<const Real> grad;     // upstream gradient per row; only read by the VJP
    Real* log_prob = nullptr;    // (rows,) output, or null
    Real* grad_value = nullptr;  // (rows, k) outputs of the VJP, each may be null
    double* grad_value_wide = nullptr;  // or in double, see Note [summed gradients]
    Real* grad_logits = nullptr;
    double* grad_logits_wide = nullptr;  // or in double, see Note [summed gradients]
    double* grad_temperature = nullptr;  // (rows,); double, see Note [summed gradients]
};

template <class Real>
struct RsampleVjpArgs {
    RowShape shape;
    Space space = Space::simplex;
    RowArg<const Real> value;  // the sample x (or y = log x)
    RowArg<const Real> grad;   // upstream gradient on the sample, (rows, k)
    RowArg<const Real> temperature;
    // Optional: where a logit is -inf the category is masked and gets no
    // gradient whatever the value says. Without logits every entry is taken as
    // live, so that a -inf in log space is an underflow (Note [underflow in log
    // space]).
    RowArg<const Real> logits;
    Real* grad_logits = nullptr;         // (rows, k), or null
    double* grad_logits_wide = nullptr;  // or in double, see Note [summed gradients]
    double* grad_temperature = nullptr;  // (rows,), or null; double as above
    // Optional: set when an entry of grad is NaN or infinite (Note [checking
    // the upstream gradient] in kernels.hpp); never cleared by the kernel.
    std::atomic<bool>* grad_not_finite = nullptr;
};

// Row-wise transforms of the parameters (no temperature involved).
enum class ParamOp {
    log_probs,          // out = log(probs), exact zeros give -inf
    normalize_logits,   // out = logits - logsumexp(logits)
    probs_from_logits,  // out = softmax(logits)
    normalize_probs,    // out = probs / sum(probs)
    // out = a copy of the logits; status[r] = 1 if a logit is NaN or +inf,
    // 2 if all are -inf (no category possible), 3 if the largest minus the
    // smallest finite logit overflows, else 0.
    check_logits,
    // out = a copy of the probs; status[r] = 1 if an entry is negative, NaN or
    // inf, 2 if the row's sum is not positive and finite, else 0.
    check_probs,
};

template <class Real>
struct ParamArgs {
    RowShape shape;
    ParamOp op = ParamOp::log_probs;
    RowArg<const Real> in;
    Real* out = nullptr;        // C-contiguous (rows, k)
    uint8_t* status = nullptr;  // (rows,), for the check_* ops
};

// Gradient through the normalisation l = log(q / sum(q)): given dL/dl and q,
// writes dL/dq. A zero probability gets a zero gradient by convention.
template <class Real>
struct ProbsVjpArgs {
    RowShape shape;
    RowArg<const Real> probs;
    RowArg<const double> grad_logits;  // double: Note [summed gradients]
    Real* grad_probs = nullptr;        // C-contiguous (rows, k)
};

// The support check of values (validate_args): status[r] is 0 for a row on the
// support, 1 for a bad entry (negative, NaN or inf on the simplex; NaN or +inf
// in log space), 2 for a row sum off 1 by more than tol, 3 for weight on a
// masked category. The first failing condition in that order is reported.
template <class Real>
struct CheckArgs {
    RowShape shape;
    Space space = Space::simplex;
    RowArg<const Real> logits;
    RowArg<const Real> value;
    double tol = 0.0;
    uint8_t* status = nullptr;  // (rows,)
};

}  // namespace detail
}  // namespace relaxcat
