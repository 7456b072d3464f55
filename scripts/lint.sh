#!/usr/bin/env bash
# Style checks with the pinned tools of the lint extra: ruff (Python) and
# clang-format (C++), both at 88 columns (the house style). Exits non-zero on a finding.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tools' directory: that of $PYTHON (a venv with the lint extra), else PATH.
bin=""
if [ -n "${PYTHON:-}" ]; then bin="$(dirname "$PYTHON")/"; fi
"${bin}ruff" check python bench tests/python tests/fuzz examples
"${bin}ruff" format --check python bench tests/python tests/fuzz examples
git ls-files 'cpp/*.[ch]pp' 'tests/cpp/*.[ch]pp' 'examples/cpp/*.cpp' 'bench/*.cpp' \
    | xargs "${bin}clang-format" --dry-run --Werror
