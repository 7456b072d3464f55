"""The fuzz harness under pytest, with randomness (see README.md).

``RELAXCAT_FUZZ_EXAMPLES`` sets the number of scenarios (default 300); the long
campaign is ``scripts/fuzz.sh``. tests/python/test_fuzz.py runs a short
derandomized version in the normal suite.
"""

from __future__ import annotations

import os

import fuzz_harness
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("RELAXCAT_FUZZ_EXAMPLES", "300"))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(st.data())
def test_every_entry_point_survives_random_inputs_and_matches_the_oracle(data):
    fuzz_harness.scenario(data)
