#!/usr/bin/env bash
# The test command of the README: builds the wheel from this checkout, installs it
# with its test extra in a fresh virtual environment, and runs the Python tests,
# then the C++ tests and examples (.ci/cpp.sh). Needs python3 with venv, g++ and,
# for the C++ part, root for apt-get (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=${RELAXCAT_VENV:-.venv}

"$python" -m venv --clear "$venv"
rm -rf dist
"$venv/bin/pip" wheel --quiet --no-deps --wheel-dir dist .
wheel=$(ls dist/relaxcat-*.whl)
"$venv/bin/pip" install --quiet "${wheel}[test]"

"$venv/bin/python" -m pytest
if [ -f .ci/cpp.sh ]; then
    PYTHON="$venv/bin/python" bash .ci/cpp.sh
fi
