#!/usr/bin/env bash
# Style checks with the pinned tools of the lint extra: ruff (Python) and
# clang-format (C++), both at 88 columns (STYLE.md). Exits non-zero on a finding.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -m ruff check python bench tests/python tests/fuzz examples
"$python" -m ruff format --check python bench tests/python tests/fuzz examples
git ls-files 'cpp/*.[ch]pp' 'tests/cpp/*.[ch]pp' 'examples/cpp/*.cpp' 'bench/*.cpp' \
    | xargs "$python" -m clang_format --dry-run --Werror
