"""Write tests/data/golden_samples.json: noise and samples of the Python module
that the C++ API must reproduce bit for bit (tests/cpp/test_golden.cpp), and that
the module itself must keep producing (tests/python/test_cpp_golden.py).

Run once, at the portable level, from the repository root:

    RELAXCAT_SIMD=baseline python tests/data/make_golden.py

The noise is the same at every level by design; the samples are compared bit for
bit with a C++ build at the same level (default flags: SSE2 on x86-64).
Regenerating the file is a change of the public random stream: do it only with
a deliberate, announced break of the stream.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np

import relaxcat
from relaxcat import _core

OUT = pathlib.Path(__file__).resolve().parent / "golden_samples.json"

# (key, stream, first element, count): even and odd starts, a zero key, keys
# with the high word set, and a start beyond 2^32 blocks.
NOISE = [
    (0, 0, 0, 16),
    (12345, 0, 7, 9),
    (2**64 - 1, 2**63 + 11, 1, 12),
    (0x0123456789ABCDEF, 3, 2**33 + 5, 6),
]


def bits(arr: np.ndarray) -> list[str]:
    """The words of a float32 or float64 array as hex strings, row-major."""
    word = np.uint32 if arr.dtype == np.float32 else np.uint64
    width = 8 if arr.dtype == np.float32 else 16
    return [f"{int(w):0{width}x}" for w in np.ascontiguousarray(arr).view(word).ravel()]


def number(x: float):
    """JSON numbers, with inf, -inf and nan as strings (the reference convention)."""
    return str(x) if not np.isfinite(x) else float(x)


def key_and_stream_of(seed: int) -> tuple[int, int]:
    """What ``rng=np.random.default_rng(seed)`` hands to the core for one call."""
    key, stream = np.random.default_rng(seed).integers(
        0, 2**64, size=2, dtype=np.uint64
    )
    return int(key), int(stream)


def make_rng(spec):
    """An int seed as is; "generator:N" as numpy.random.default_rng(N)."""
    if isinstance(spec, str):
        return np.random.default_rng(int(spec.split(":")[1]))
    return spec


def sample_cases() -> list[dict]:
    gen = np.random.default_rng(20240611)
    cases = []
    for dtype in ("float32", "float64"):
        # Logits with a masked category, scalar temperature, rng = int.
        logits = gen.normal(size=(3, 5)) * 2.0
        logits[1, 2] = -np.inf
        cases.append(
            {
                "dtype": dtype,
                "param": "logits",
                "value": logits,
                "temperature": [0.7],
                "rng": 98765,
                "draws": 4,
            }
        )
        # Probabilities with a zero, one temperature per row, rng = Generator.
        probs = gen.uniform(size=(4, 6))
        probs[2, 0] = 0.0
        cases.append(
            {
                "dtype": dtype,
                "param": "probs",
                "value": probs,
                "temperature": [0.1, 0.5, 1.0, 3.0],
                "rng": "generator:7",
                "draws": 3,
            }
        )
        # One logits row shared by three temperatures, a large K, a big key.
        logits = gen.normal(size=(1, 37)) * 4.0
        cases.append(
            {
                "dtype": dtype,
                "param": "logits",
                "value": logits,
                "temperature": [0.05, 0.9, 2.5],
                "rng": 2**64 - 3,
                "draws": 2,
            }
        )

    out = []
    for case in cases:
        dt = np.dtype(case["dtype"])
        param = case["value"].astype(dt)
        temp = np.array(case["temperature"], dtype=dt)
        # One value per row, or a scalar.
        temp_arg = temp if temp.size > 1 else temp[0]
        if isinstance(case["rng"], str):
            key, stream = key_and_stream_of(int(case["rng"].split(":")[1]))
        else:
            key, stream = case["rng"], 0
        entry = {
            "dtype": case["dtype"],
            "param": case["param"],
            "values": [[number(v) for v in row] for row in param.astype(np.float64)],
            "temperature": [float(t) for t in temp.astype(np.float64)],
            "rng": case["rng"],
            "key": key,
            "stream": stream,
            "draws": case["draws"],
        }
        for cls, name in (
            (relaxcat.RelaxedOneHotCategorical, "x"),
            (relaxcat.ExpRelaxedOneHotCategorical, "log_x"),
        ):
            d = cls(temp_arg, **{case["param"]: param})
            rng = make_rng(case["rng"])
            # Two successive C++ calls of `draws` rows continue one stream: the
            # two halves of one Python call of 2 * draws.
            sample = d.rsample((2 * case["draws"],), rng=rng)
            entry[name] = bits(sample)
        out.append(entry)
    return out


def main() -> int:
    level = _core.simd_level()
    if os.environ.get("RELAXCAT_SIMD") != "baseline" or level != "baseline":
        print(
            "run with RELAXCAT_SIMD=baseline (the level in use is " + level + ")",
            file=sys.stderr,
        )
        return 2
    noise, noise32 = (
        [
            {
                "key": k,
                "stream": s,
                "first": f,
                "count": n,
                "bits": bits(_core.gumbels(k, s, f, n, float32=float32)),
            }
            for k, s, f, n in NOISE
        ]
        for float32 in (False, True)
    )
    doc = {
        "about": (
            "Golden noise and samples of the relaxcat Python module at SIMD level "
            "baseline, written by tests/data/make_golden.py. Bits are hex words, "
            "row-major. noise is the double noise (float64 samples), noise32 the "
            "float noise (float32 samples). Samples have shape (2 * draws, B, K); "
            "B is the number of temperatures or parameter rows, whichever is "
            "larger."
        ),
        "version": relaxcat.__version__,
        "simd_level": level,
        "noise": noise,
        "noise32": noise32,
        "samples": sample_cases(),
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
