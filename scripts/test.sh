#!/usr/bin/env bash
# The test command of the README: builds the wheel from this checkout, installs it
# with its test and lint extras in a fresh virtual environment, and runs the Python
# tests, the C++ tests and examples (.ci/cpp.sh), the sanitizer subset
# (scripts/sanitize.sh --quick) and the style checks (scripts/lint.sh). Needs
# python3 with venv, g++ and, for the C++ part, root for apt-get (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=${RELAXCAT_VENV:-.venv}

"$python" -m venv --clear "$venv"
rm -rf dist
"$venv/bin/pip" wheel --quiet --no-deps --wheel-dir dist .
wheel=$(ls dist/relaxcat-*.whl)
"$venv/bin/pip" install --quiet "${wheel}[test,lint]"

"$venv/bin/python" -m pytest
PYTHON="$venv/bin/python" bash .ci/cpp.sh
PYTHON="$python" bash scripts/sanitize.sh --quick
PYTHON="$venv/bin/python" bash scripts/lint.sh
