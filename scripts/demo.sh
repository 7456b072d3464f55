#!/usr/bin/env bash
# The main job of the README: builds the wheel from this checkout, installs it with
# its demo extra in a fresh virtual environment, and trains the discrete VAE on
# scikit-learn's digits (python -m relaxcat demo). Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=${RELAXCAT_VENV:-.venv-demo}

"$python" -m venv --clear "$venv"
rm -rf dist
"$venv/bin/pip" wheel --quiet --no-deps --wheel-dir dist .
wheel=$(ls dist/relaxcat-*.whl)
"$venv/bin/pip" install --quiet "${wheel}[demo]"

"$venv/bin/python" -m relaxcat demo "$@"
