// Choosing the instruction-set level once, at first use.

#include "dispatch.hpp"

#include <cctype>
#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace relaxcat {
namespace python {
namespace {

struct Level {
    const char* name;
    const KernelTable& (*table)();
    bool (*supported)();
};

bool always() {
    return true;
}

#if defined(RELAXCAT_HAVE_AVX2)
bool has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi2");
}
#endif

#if defined(RELAXCAT_HAVE_AVX512)
bool has_avx512() {
    __builtin_cpu_init();
    return has_avx2() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw");
}
#endif

// Best first; the last entry is the portable path every build has.
const Level kLevels[] = {
#if defined(RELAXCAT_HAVE_AVX512)
    {"avx512", &kernels_avx512, &has_avx512},
#endif
#if defined(RELAXCAT_HAVE_AVX2)
    {"avx2", &kernels_avx2, &has_avx2},
#endif
    {"baseline", &kernels_baseline, &always},
};

std::atomic<const KernelTable*> g_active{nullptr};

// The level called name, in any case ("AVX2" is avx2), if this CPU runs it.
const KernelTable* find(const std::string& name) {
    std::string lower = name;
    for (char& c : lower)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    for (const Level& level : kLevels)
        if (lower == level.name && level.supported()) return &level.table();
    return nullptr;
}

const KernelTable* initial() {
    // RELAXCAT_SIMD names a level to use instead of the best one; a level this
    // CPU or build lacks is ignored here (show_config() reports what is in use).
    if (const char* env = std::getenv("RELAXCAT_SIMD")) {
        if (const KernelTable* t = find(env)) return t;
    }
    for (const Level& level : kLevels)
        if (level.supported()) return &level.table();
    return &kernels_baseline();
}

}  // namespace

std::vector<std::string> available_levels() {
    std::vector<std::string> out;
    for (const Level& level : kLevels)
        if (level.supported()) out.emplace_back(level.name);
    return out;
}

const KernelTable& active() {
    const KernelTable* t = g_active.load();
    if (t == nullptr) {
        t = initial();
        g_active.store(t);
    }
    return *t;
}

void set_level(const std::string& name) {
    const KernelTable* t = find(name);
    if (t == nullptr) {
        std::string have;
        for (const std::string& s : available_levels())
            have += (have.empty() ? "" : ", ") + s;
        throw std::invalid_argument("set_simd_level: level must be one of " + have +
                                    ", got '" + name + "'");
    }
    g_active.store(t);
}

}  // namespace python
}  // namespace relaxcat
