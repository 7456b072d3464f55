"""Peak memory of rsample in a fresh process, read from the kernel's resident-set
counters (tracemalloc does not see the C++ core's allocations); the protocol of
bench/memory.py. Linux only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_CHILD = r"""
import json, sys
import numpy as np
import relaxcat

rows, k, threads, hard = json.loads(sys.argv[1])
logits = np.linspace(-3.0, 3.0, rows * k).astype(np.float32).reshape(rows, k)
d = relaxcat.RelaxedOneHotCategorical(np.float32(0.7), logits=logits)
warm = relaxcat.RelaxedOneHotCategorical(0.5, logits=np.zeros((4, 3)))
warm.rsample(rng=0, num_threads=threads)  # the thread pool exists before the call

def kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = kib("VmRSS")
x = d.rsample(rng=1, num_threads=threads, hard=hard)
size = x.hard.nbytes + x.soft.nbytes if hard else x.nbytes
print(json.dumps([(kib("VmHWM") - before) * 1024, size]))
"""


def _extra_and_output(rows, k, threads, hard=False):
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps([rows, k, threads, hard])],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


_LINUX = pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's clear_refs"
)


@_LINUX
@pytest.mark.parametrize("rows,k,threads", [(1, 1 << 22, 2), (4, 1 << 20, 2)])
def test_few_long_float32_rows_take_no_buffer_beyond_the_output(rows, k, threads):
    # A noise buffer of one row of doubles per thread was twice a one-row
    # output (a fresh-user review: 96 MiB extra for one row of 2^23 floats);
    # such rows are now sampled in their output (Note [rows without scratch]).
    extra, output = _extra_and_output(rows, k, threads)
    assert extra <= 1.05 * output + (1 << 20), (extra / 2**20, output / 2**20)


@_LINUX
def test_a_float32_hard_sample_takes_its_two_outputs_and_no_float64_copies():
    # The one-hot went through float64 copies of the soft sample and of itself
    # (a fresh-user review: 384 MiB peak for 128 MiB of outputs).
    extra, outputs = _extra_and_output(1 << 18, 8, 2, hard=True)
    assert extra <= 1.05 * outputs + (1 << 20), (extra / 2**20, outputs / 2**20)


def test_rows_sampled_in_their_output_keep_the_bits_of_the_buffered_rows():
    # Note [rows without scratch]: (32, 128000) float32 on one thread is sampled
    # in its output keeping exp(s) of 98304 of each row's entries, on two
    # threads 49152, with out= none; 64 rows on one thread keep whole rows in
    # a buffer. The first 32 rows of that call read the same noise.
    import numpy as np

    import relaxcat

    logits = np.random.default_rng(9).standard_normal((64, 128000)).astype(np.float32)
    logits[:, 5] = -np.inf
    t = np.float32(0.4)
    buffered = relaxcat.RelaxedOneHotCategorical(t, logits=logits).rsample(
        rng=3, num_threads=1
    )
    d = relaxcat.RelaxedOneHotCategorical(t, logits=logits[:32])
    out = np.empty((32, 128000), np.float32)
    samples = [d.rsample(rng=3, num_threads=n) for n in (1, 2)]
    samples.append(d.rsample(rng=3, num_threads=1, out=out))
    for x in samples:
        np.testing.assert_array_equal(x.view(np.uint32), buffered[:32].view(np.uint32))
