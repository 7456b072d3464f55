"""How fast relaxcat could ever be here, against the speed-up targets.

The speed targets (README, Performance) ask each float32 operation to run several
times as fast as the fastest of torch, JAX and NumPy, and each float64 one at least
twice as fast.  This script measures, in one run on one pinned core, a lower bound
("floor") on what relaxcat's design must spend per element, and whether each target
leaves that much time.

What the floors count, in ns per element (nothing else of the work):

* noise: the stream's float32 noise drawn into a fresh array by the C++ kernel that
  rsample uses (``_core.gumbels``).  Every sample is a function of these bits (README,
  "The random stream"), and writing them into a fresh array costs what writing the
  sample into one does.
* make: constructing the distribution (the checked copy of the logits), which the
  timed ``rsample``, ``log_prob`` and forward+backward calls of bench/compare.py
  include.
* log, exp: one ``log`` or ``exp`` per element, in float64 where the float32
  accuracy bounds (README, Accuracy) need it and in float32 where they do not,
  the faster of NumPy's and relaxcat's, on an array that stays in cache.
  tests/python/test_precision_needed.py measures which: on the float32 cases of
  the 60-digit reference set, float32 logs of the values push ``log_prob`` past
  its bound (8.6e-6 against 1e-6), while float32 exponentials there (5.1e-8)
  and float32 logs in the VJP of a sample (1.4e-7 against 1e-5) keep within.
  relaxcat takes all of them in float64 (the project's rule: float32 results
  keep what float64 steps keep where that costs little), so the floor is below
  its own design.

Float32 floors: rsample = noise + make; log_prob = make + float64 log + float32
exp; rsample VJP = float32 log (the temperature gradient needs log x of every
entry); forward+backward = noise + make + float32 log.

Float64 floors, the same work in float64 (the stream's double noise, two float64
logs per element, and float64 log and exp, which float64 results cannot do
without): rsample = noise + make; log_prob = make + log + exp; rsample VJP = log;
log_prob VJP = log + exp (log x for the density's terms, exp for the softmax
weights; the timed call is the backward pass alone, without construction);
forward+backward = noise + make + log.  The float64 target is 2x on every shape
of the benchmark (bench/_cases.py), K = 2 and 3 included.

Two threads can at best halve a floor.  make is relaxcat's construction (a
checked copy, so that the distribution owns its parameters); the rest is forced
by the stream and the accuracy bounds.

The competitors are timed at one thread as bench/compare.py times them (which checks
their answers first; bench/_impls.py).  *allowed* = the fastest one's time divided by
the target speed-up: the most time the target leaves.  At two threads NumPy's time
bounds the fastest competitor's (NumPy runs on one thread whatever it is told), so
NumPy / target bounds what a two-thread target allows.  **no**: the floor is above
the allowed time, so relaxcat's design cannot meet the target on this machine; *open*:
the floor does not rule it out.

Usage::

    python bench/floor.py               # about six minutes; writes bench/FLOOR.md
    python bench/floor.py --out -       # print only
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # One core, before NumPy, torch or JAX start a thread pool (bench/_worker.py).
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])

import argparse  # noqa: E402
import gc  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _cases  # noqa: E402
import _impls  # noqa: E402
from readme_table import OPS64, TARGET64  # noqa: E402

SHAPES = [(1 << 20, 8), (4096, 256), (32, 128000)]
OPS = ("rsample", "log_prob", "rsample_vjp", "fwd_bwd")
# The float64 target (readme_table.TARGET64 on 1 and 2 threads) holds for every
# op of readme_table.OPS64 and every shape of the benchmark.
SHAPES64 = SHAPES + [(1 << 21, 2), (1 << 20, 3)]
COMPETITORS = ("torch", "torch_nv", "torch_gs", "jax", "numpy")

# The float32 targets: speed-up over the fastest competitor, (1 thread, 2 threads).
TARGETS = {
    "rsample": {(1 << 20, 8): (6, 10), (4096, 256): (3, 5), (32, 128000): (2.5, 5)},
    "log_prob": {(1 << 20, 8): (3, 5), (4096, 256): (1.5, 2), (32, 128000): (3, 5)},
    "rsample_vjp": {(1 << 20, 8): (3, 4), (4096, 256): (2, 3), (32, 128000): (2, 3)},
    "fwd_bwd": {(1 << 20, 8): (5, 8), (4096, 256): (2.5, 5), (32, 128000): (3, 5)},
}

# Elements of the in-cache arrays that time log and exp.
MATH_ELEMENTS = 1 << 14


def median_ns(fn, elements: int, repeats: int) -> float:
    """Median wall time of ``fn`` in ns per element, after one untimed call."""
    fn()
    times = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            out = fn()
            times.append(time.perf_counter_ns() - t0)
            del out
    finally:
        gc.enable()
    return float(np.median(times)) / elements


def math_floors(repeats: int) -> dict:
    """ns per element of one log and one exp in float64 and in float32: the
    faster of NumPy's and relaxcat's, on arrays that stay in cache."""
    from relaxcat import _core

    rng = np.random.default_rng(0)
    n = MATH_ELEMENTS
    x = rng.random(n) + 1e-3
    z = -30.0 * rng.random(n)
    x32, z32 = x.astype(np.float32), z.astype(np.float32)
    out, out32 = np.empty(n), np.empty(n, np.float32)
    many = 50 * repeats

    def fastest(*fns):
        return min(median_ns(fn, n, many) for fn in fns)

    return {
        "log": fastest(lambda: np.log(x, out=out), lambda: _core.math("log", x)),
        "exp": fastest(lambda: np.exp(z, out=out), lambda: _core.math("exp", z)),
        "log32": fastest(lambda: np.log(x32, out=out32), lambda: _core.logf(x32)),
        "exp32": fastest(lambda: np.exp(z32, out=out32)),
    }


def measure(rows: int, k: int, impls: list, repeats: int, dtype, ops) -> dict:
    import relaxcat
    from relaxcat import _core

    relaxcat.set_num_threads(1)
    case = _cases.make_case(rows, k, dtype)
    n = case.elements
    t = case.temperature
    single = case.dtype == np.float32
    rec = {"rows": rows, "k": k, "make": 0.0, "noise": 0.0, "ops": {}}
    rec["make"] = median_ns(
        lambda: relaxcat.RelaxedOneHotCategorical(t, logits=case.logits), n, repeats
    )
    rec["noise"] = median_ns(lambda: _core.gumbels(12345, 0, 0, n, single), n, repeats)
    for impl in impls:
        impl.setup(case)
        for op in ops:
            if op in impl.ops:
                ns = median_ns(impl.timed(op), n, repeats)
                rec["ops"].setdefault(op, {})[impl.name] = ns
    return rec


def floors(rec: dict, m: dict, single: bool) -> dict:
    """The floor of each op (the module docstring): float64 log of the value in
    log_prob (float32 logs break its bound), and for float32 data the float32
    exp of its weights and float32 log of the VJP's x, which its bounds allow."""
    noise, make = rec["noise"], rec["make"]
    log_x = m["log32"] if single else m["log"]
    exp_w = m["exp32"] if single else m["exp"]
    return {
        "rsample": noise + make,
        "log_prob": make + m["log"] + exp_w,
        "rsample_vjp": log_x,
        "log_prob_vjp": m["log"] + exp_w,
        "fwd_bwd": noise + make + log_x,
    }


def fmt(v: float) -> str:
    return f"{v:.2f}"


def verdict_rows(results: list, ops, floor_of, targets_of) -> tuple:
    """One table line per op and shape, and the count of cells whose floor is above
    the time the target allows ("no")."""
    lines, ruled_out = [], 0
    for op in ops:
        for r in results:
            one, two = targets_of(op, (r["rows"], r["k"]))
            times = r["ops"][op]
            rivals = {name: v for name, v in times.items() if name in COMPETITORS}
            best = min(rivals, key=rivals.get)
            floor = floor_of(r)[op]
            a1 = rivals[best] / one
            a2 = rivals["numpy"] / two
            v1 = "open" if a1 >= floor else "**no**"
            v2 = "open" if a2 >= floor / 2 else "**no**"
            ruled_out += (v1 != "open") + (v2 != "open")
            lines.append(
                f"| {op} | ({r['rows']}, {r['k']}) | {fmt(rivals[best])} "
                f"{_impls.LABELS[best]} | {fmt(rivals['numpy'])} | "
                f"{fmt(times['relaxcat'])} | {fmt(floor)} | "
                f"{one}x, {fmt(a1)}, {v1} | {two}x, {fmt(a2)}, {fmt(floor / 2)}, {v2} |"
            )
    return lines, ruled_out


def report(results: list, results64: list, m: dict) -> str:
    head = [
        "| op | shape | fastest competitor | NumPy | relaxcat now | floor | "
        "1T: target, allowed, met? | 2T: target, allowed (at most), floor / 2, met? |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows32, out32 = verdict_rows(
        results, OPS, lambda r: floors(r, m, True), lambda op, shape: TARGETS[op][shape]
    )
    rows64, out64 = verdict_rows(
        results64,
        OPS64,
        lambda r: floors(r, m, False),
        lambda op, shape: (TARGET64, TARGET64),
    )
    lines = [
        "# Floors of relaxcat's operations against the speed-up targets",
        "",
        "Written by `python bench/floor.py` (one run, one pinned core; ns per "
        "element, medians; the script's docstring defines every column). Per "
        f"element: float64 log {fmt(m['log'])}, exp {fmt(m['exp'])}; float32 log "
        f"{fmt(m['log32'])}, exp {fmt(m['exp32'])}.",
        "",
        "## float32",
        "",
        *head,
        *rows32,
        "",
        f"The floor rules out {out32} of the {len(rows32) * 2} float32 cells.",
        "",
        "## float64 (target: 2x the fastest competitor)",
        "",
        *head,
        *rows64,
        "",
        f"The floor rules out {out64} of the {len(rows64) * 2} float64 cells.",
        "",
    ]
    for name, part in (("float32", results), ("float64", results64)):
        noise = ", ".join(
            f"({r['rows']}, {r['k']}) {fmt(r['noise'])} and {fmt(r['make'])}"
            for r in part
        )
        lines.append(f"{name} noise and make per element: {noise}.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--out",
        default=os.path.join(HERE, "FLOOR.md"),
        help="where to write the Markdown table ('-': print only)",
    )
    args = parser.parse_args()
    impls, skipped = _impls.load(("relaxcat",) + COMPETITORS, 1)
    if "numpy" in skipped:
        raise SystemExit(f"NumPy is needed: {skipped['numpy']}")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    m = math_floors(args.repeats)
    results = [
        measure(rows, k, impls, args.repeats, np.float32, OPS) for rows, k in SHAPES
    ]
    results64 = [
        measure(rows, k, impls, args.repeats, np.float64, OPS64) for rows, k in SHAPES64
    ]
    text = report(results, results64, m)
    print(text, end="")
    if args.out != "-":
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
