#pragma once
// Shared helpers of the C++ tests: the reference JSON files and the error measure
// of the reference README.

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace relaxcat_test {

inline nlohmann::json load_json(const std::string& name) {
    const std::string path = std::string(RELAXCAT_TEST_DATA) + "/" + name;
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open " + path);
    return nlohmann::json::parse(in);
}

// A number of the reference files: inf, -inf and nan are written as strings.
inline double number(const nlohmann::json& j) {
    if (j.is_string()) {
        const std::string s = j.get<std::string>();
        if (s == "inf") return std::numeric_limits<double>::infinity();
        if (s == "-inf") return -std::numeric_limits<double>::infinity();
        if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
        throw std::runtime_error("not a number: " + s);
    }
    return j.get<double>();
}

inline std::vector<double> numbers(const nlohmann::json& j) {
    std::vector<double> out;
    if (!j.is_array()) return {number(j)};
    for (const auto& e : j) {
        if (e.is_array()) {
            for (const auto& f : e) out.push_back(number(f));
        } else {
            out.push_back(number(e));
        }
    }
    return out;
}

template <class Real>
std::vector<Real> as(const std::vector<double>& v) {
    return std::vector<Real>(v.begin(), v.end());
}

// Error relative to max(1, largest finite |want|); infinities must match exactly
// and a NaN or a spurious infinity is an infinite error (tests/python/conftest.py).
template <class Real>
double rel_err(const std::vector<Real>& got, const std::vector<double>& want) {
    constexpr double kInf = std::numeric_limits<double>::infinity();
    if (got.size() != want.size()) return kInf;
    double scale = 1.0, worst = 0.0;
    for (double w : want)
        if (std::isfinite(w)) scale = std::max(scale, std::abs(w));
    for (size_t i = 0; i < got.size(); ++i) {
        const double g = static_cast<double>(got[i]);
        if (std::isnan(g)) return kInf;
        if (std::isinf(want[i])) {
            if (g != want[i]) return kInf;
            continue;
        }
        if (std::isinf(g)) return kInf;
        worst = std::max(worst, std::abs(g - want[i]));
    }
    return worst / scale;
}

}  // namespace relaxcat_test
