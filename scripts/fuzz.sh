#!/usr/bin/env bash
# The long fuzz campaign of tests/fuzz (see tests/fuzz/README.md).
#
#   bash scripts/fuzz.sh [SECONDS] [SEED]     default 600 s and a random seed
#
# Runs tests/fuzz/campaign.py with the python of $PYTHON (default: python3, which
# must have relaxcat and hypothesis installed), prints the number of inputs tried,
# the known bugs reached and every distinct failure with its draws, and saves the
# draws of each failure in $RELAXCAT_FUZZ_OUT (default /tmp/relaxcat-fuzz) for
#   python tests/fuzz/campaign.py --replay /tmp/relaxcat-fuzz/failure-1.pkl
# Exits non-zero if anything failed. RELAXCAT_FUZZ_KNOWN=fail fails on inputs in the
# region of a known bug; =check checks them like any other (to confirm a fix).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
seed=${2:-}
python=${PYTHON:-python3}
out=${RELAXCAT_FUZZ_OUT:-/tmp/relaxcat-fuzz}

args=(--seconds "$seconds" --save "$out")
if [[ -n "$seed" ]]; then
    args+=(--seed "$seed")
fi
# Warnings from the harness itself are errors too, as in the test suite.
exec "$python" -W error::RuntimeWarning tests/fuzz/campaign.py "${args[@]}"
