#!/usr/bin/env bash
# Builds relaxcat with AddressSanitizer and UndefinedBehaviorSanitizer and runs the
# tests under them.
#
#   bash scripts/sanitize.sh           everything: the Python suite (tests/python and
#                                      tests/fuzz) and, when GoogleTest is installed,
#                                      the C++ tests (RELAXCAT_BUILD_TESTS)
#   bash scripts/sanitize.sh --quick   the CI subset: the seeded fuzz tests, the
#                                      edges, errors, sizes and concurrency tests;
#                                      about 30 s once the build is cached, 3 min
#                                      from scratch on 2 cores
#
# Everything is built outside the checkout, in $RELAXCAT_SANITIZE_DIR (default
# /tmp/relaxcat-sanitize-N, N a checksum of the checkout's path, so that two
# checkouts never share it): a virtual environment of its own (the instrumented
# module must not replace the one of the everyday environment) and the CMake build
# trees, which later runs of the same checkout reuse. PYTHON picks the interpreter
# (default python3).
#
# How it works: the extension is a shared object loaded by an uninstrumented
# python, so the ASan runtime has to come first in the process: LD_PRELOAD of
# g++'s libasan and libstdc++ (libubsan is then found as a dependency of the
# module). CPython
# keeps some memory until exit on purpose, so leak detection is off; everything
# else aborts at the first report (-fno-sanitize-recover, halt_on_error).
# -ffast-math is never used, and UBSan's float-divide-by-zero is not enabled:
# relaxcat divides by zero on purpose where IEEE gives the documented infinities.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
case "${1:-}" in
    --quick) quick=1 ;;
    "") ;;
    -h | --help)
        sed -n '2,22p' "$0"
        exit 0
        ;;
    *)
        echo "usage: $0 [--quick]" >&2
        exit 2
        ;;
esac

python=${PYTHON:-python3}
checkout_id=$(pwd -P | cksum | cut -d' ' -f1)
work=${RELAXCAT_SANITIZE_DIR:-/tmp/relaxcat-sanitize-$checkout_id}
venv="$work/venv"
jobs=$(nproc 2>/dev/null || echo 2)
# RELAXCAT_POISON_SCRATCH: the kernels' scratch starts as NaN, not as whatever
# the allocator hands out (cpp/include/relaxcat/detail/parallel.hpp).
san_flags="-fsanitize=address,undefined -fno-omit-frame-pointer -DRELAXCAT_POISON_SCRATCH"
san_flags="$san_flags -fno-sanitize-recover=undefined -g"
mkdir -p "$work"

step() { printf '\n== %s\n' "$*"; }
start=$SECONDS

# 1. The environment: build requirements (the build runs without isolation, so
# that the CMake tree in $work/build is reused) and the test extra of
# pyproject.toml (read with tomllib: Python 3.11 or newer).
step "virtual environment $venv"
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
test_extra=$("$venv/bin/python" -c "import tomllib; print(' '.join(tomllib.load(
    open('pyproject.toml', 'rb'))['project']['optional-dependencies']['test']))")
# shellcheck disable=SC2086 # one requirement per word
"$venv/bin/pip" install --quiet "scikit-build-core>=0.10" "pybind11>=2.13" numpy \
    hypothesis $test_extra

# 2. The instrumented extension. RelWithDebInfo keeps line numbers in reports;
# the per-level kernels still get their own -O3 and instruction-set flags.
step "build relaxcat with $san_flags"
"$venv/bin/pip" install --quiet --no-build-isolation --no-deps --force-reinstall \
    -C build-dir="$work/build" \
    -C cmake.build-type=RelWithDebInfo \
    -C cmake.define.CMAKE_CXX_FLAGS="$san_flags" \
    -C cmake.define.CMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
    . 2>&1 | grep -v "ignored" || true
so=$(ls "$venv"/lib/python*/site-packages/relaxcat/_core*.so)
# (grep -c reads all of nm's output: with grep -q, nm could die of SIGPIPE and
# pipefail would report the instrumented module as uninstrumented.)
if ! nm -D "$so" | grep -c __asan_ >/dev/null; then
    echo "the installed $so is not instrumented with ASan" >&2
    exit 1
fi

# 3. The Python tests with the runtime preloaded.
# libstdc++ is preloaded too: python does not link it, and without it at start-up
# ASan cannot find the real __cxa_throw, so the first C++ exception aborts
# ("CHECK failed: real___cxa_throw != 0").
export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1"
# test_sizes.py asks for allocations no machine can grant and expects MemoryError;
# by default ASan would report them and abort instead of returning null.
export ASAN_OPTIONS="$ASAN_OPTIONS:allocator_may_return_null=1"
# Not detect_stack_use_after_return: its fake stack frames are not 64-byte
# aligned, so the AVX-512 kernels' aligned vector locals (simd.hpp, gumbel_group)
# fault there although the real stack aligns them (a false report).
export ASAN_OPTIONS="$ASAN_OPTIONS:check_initialization_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

if ((quick)); then
    step "Python tests under ASan + UBSan (quick subset)"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider \
        tests/python/test_fuzz.py tests/python/test_edges.py tests/python/test_errors.py \
        tests/python/test_sizes.py tests/python/test_concurrency.py
else
    step "Python tests under ASan + UBSan (tests/python, tests/fuzz seeded)"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python tests/fuzz
fi
unset LD_PRELOAD

# 4. The C++ tests, when GoogleTest is there (.ci/cpp.sh installs it from apt).
if ((!quick)); then
    if [[ -d tests/cpp ]] && dpkg -s libgtest-dev >/dev/null 2>&1 &&
        dpkg -s nlohmann-json3-dev >/dev/null 2>&1; then
        step "C++ tests under ASan + UBSan"
        cmake -S . -B "$work/cpp" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
            -DRELAXCAT_BUILD_TESTS=ON -DCMAKE_CXX_FLAGS="$san_flags" \
            -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
        cmake --build "$work/cpp" --parallel "$jobs"
        ASAN_OPTIONS="abort_on_error=1:halt_on_error=1:detect_leaks=1" \
            ctest --test-dir "$work/cpp" --output-on-failure --parallel "$jobs"
    else
        step "C++ tests skipped: GoogleTest or nlohmann-json is not installed"
    fi
fi

step "sanitizers clean ($((SECONDS - start)) s)"
