// Samples relaxed one-hot vectors for a batch, evaluates their log-density and
// the gradients a training loop would need, and prints them.

#include <relaxcat/relaxcat.hpp>

#include <cstdio>
#include <limits>
#include <stdexcept>
#include <vector>

int main() {
    using relaxcat::MatrixView;
    using relaxcat::VectorView;

    // A batch of three rows of four categories; the third row masks category 0.
    const int64_t batch = 3, k = 4, draws = 2;
    const float kMasked = -std::numeric_limits<float>::infinity();
    const std::vector<float> logits = {1.0f,    0.0f, -1.0f, 0.5f,  //
                                       0.2f,    0.2f, 0.2f,  0.2f,  //
                                       kMasked, 2.0f, 0.0f,  -2.0f};
    const std::vector<float> temperature = {0.5f, 1.0f, 0.2f};
    const relaxcat::RelaxedOneHotCategorical<float> dist(
        VectorView<const float>(temperature.data(), batch),
        relaxcat::logits(MatrixView<const float>(logits.data(), batch, k)));

    // Two draws of every row: rows s * batch + b. Philox(42) gives the same bits
    // as the Python call d.rsample((2,), rng=42).
    relaxcat::Philox gen(42);
    const int64_t rows = draws * batch;
    std::vector<float> x(rows * k);
    dist.rsample(MatrixView<float>(x.data(), rows, k), gen);

    std::vector<float> log_p(rows);
    const MatrixView<const float> sample(x.data(), rows, k);
    dist.log_prob(sample, VectorView<float>(log_p.data(), rows));

    // The gradient of sum(log_prob) with respect to the logits and temperatures,
    // summed over the draws into the parameters' shapes.
    const float one = 1.0f;
    std::vector<float> grad_logits(batch * k), grad_temperature(batch);
    dist.log_prob_vjp(sample, VectorView<const float>(&one, rows, 0),
                      MatrixView<float>(),
                      MatrixView<float>(grad_logits.data(), batch, k),
                      VectorView<float>(grad_temperature.data(), batch));

    // The reparameterised gradient of sum(w * x) for a weight per category.
    const std::vector<float> w = {1.0f, 0.0f, 0.0f, -1.0f};
    std::vector<float> rs_logits(batch * k), rs_temperature(batch);
    dist.rsample_vjp(sample, MatrixView<const float>(w.data(), rows, k, 0, 1),
                     MatrixView<float>(rs_logits.data(), batch, k),
                     VectorView<float>(rs_temperature.data(), batch));

    std::printf("relaxcat %s\n", RELAXCAT_VERSION_STRING);
    for (int64_t r = 0; r < rows; ++r) {
        std::printf("draw %lld row %lld  x = [", static_cast<long long>(r / batch),
                    static_cast<long long>(r % batch));
        for (int64_t j = 0; j < k; ++j) std::printf(" %.6f", x[r * k + j]);
        std::printf(" ]  log_prob = %.6f\n", log_p[r]);
    }
    for (int64_t b = 0; b < batch; ++b) {
        std::printf("row %lld  d sum(log_prob)/d logits = [",
                    static_cast<long long>(b));
        for (int64_t j = 0; j < k; ++j) std::printf(" %.5f", grad_logits[b * k + j]);
        std::printf(" ]  d/dT = %.5f\n", grad_temperature[b]);
        std::printf("        d sum(w x)/d logits       = [");
        for (int64_t j = 0; j < k; ++j) std::printf(" %.5f", rs_logits[b * k + j]);
        std::printf(" ]  d/dT = %.5f\n", rs_temperature[b]);
    }

    // Bad input is reported, not computed: a negative temperature throws.
    try {
        relaxcat::RelaxedOneHotCategorical<float> bad(
            -0.5f, relaxcat::logits(MatrixView<const float>(logits.data(), batch, k)));
        std::printf("a negative temperature was accepted\n");
        return 1;
    } catch (const std::invalid_argument& e) {
        std::printf("rejected as expected: %s\n", e.what());
    }
    return 0;
}
