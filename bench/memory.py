"""Peak extra memory of relaxcat's rsample, relative to the size of its output.

tracemalloc sees only Python's allocator, not the C++ core's, so each measurement runs
in a fresh process and reads the kernel's resident-set counters instead:

1. build the distribution (and, for ``out=``, a pre-faulted output array), and warm up
   on a tiny distribution so that thread pools and lazy imports already exist;
2. reset the resident-set high-water mark (``echo 5 > /proc/self/clear_refs``), so it
   starts at the current resident size;
3. call ``rsample`` once and read the high-water mark (VmHWM) back.

``extra = VmHWM - VmRSS before the call`` is every byte the call touched, output
included; it is reported divided by the output's size.  Without ``out=`` the floor is
1.0 (the result itself); with ``out=`` it is 0.0.  The first full-size call is the one
measured: a warm-up at full size would leave freed pages in the allocator and hide them.
NumPy and torch run the same protocol, for reference.

The table is printed and written into RESULTS.md as its memory section (replacing the
previous one; compare.py keeps it).

Usage::

    python bench/memory.py    # benchmark shapes, float32 and float64, 1 and 2 threads
    python bench/memory.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MARK_BEGIN = "<!-- memory.py: begin -->"
MARK_END = "<!-- memory.py: end -->"

# Split RSS counting lets each thread's page count lag by up to 64 pages, so differences
# below about this many bytes (64 pages * 4 KiB * a few threads) are noise.
NOISE_BYTES = 1 << 20

# Few long rows besides the benchmark's shapes: where a buffer of one row per
# thread is a large share of the output (Note [rows without scratch]).
LONG_ROWS = [(1, 1 << 23), (4, 1 << 20)]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(cfg: dict) -> dict:
    """One measurement; runs in its own process."""
    import numpy as np

    rows, k, dtype, lib = cfg["rows"], cfg["k"], np.dtype(cfg["dtype"]), cfg["lib"]
    logits = np.random.default_rng(0).standard_normal((rows, k)).astype(dtype)
    t = 0.5
    out = None

    if lib == "relaxcat":
        import relaxcat

        relaxcat.set_num_threads(cfg["threads"])
        d = relaxcat.RelaxedOneHotCategorical(t, logits=logits, validate_args=False)
        rng = np.random.default_rng(1)
        relaxcat.RelaxedOneHotCategorical(t, logits=logits[:4]).rsample(rng=rng)
        if cfg["out"]:
            out = np.ones((rows, k), dtype)  # ones, not empty: its pages are resident

            def call():
                return d.rsample(rng=rng, out=out)
        else:

            def call():
                return d.rsample(rng=rng)
    elif lib == "torch":
        import torch

        torch.set_num_threads(cfg["threads"])
        dist = torch.distributions.RelaxedOneHotCategorical
        lt = torch.from_numpy(logits)
        tt = torch.tensor(t, dtype=lt.dtype)
        dist(tt, logits=lt[:4], validate_args=False).rsample()
        d = dist(tt, logits=lt, validate_args=False)

        def call():
            return d.rsample()
    else:
        sys.path.insert(0, HERE)
        from _impls import numpy_rsample

        rng = np.random.default_rng(1)
        numpy_rsample(logits[:4], t, rng)

        def call():
            return numpy_rsample(logits, t, rng)

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        method = "clear_refs"
    except OSError:
        method = "none"  # the high-water mark then includes set-up peaks
    before = _status_kib("VmRSS")
    result = call()
    peak = _status_kib("VmHWM")
    out_bytes = rows * k * dtype.itemsize
    del result
    return {
        "extra_bytes": (peak - before) * 1024,
        "output_bytes": out_bytes,
        "method": method,
    }


def measure(cfg: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(cfg, error=proc.stderr.strip().splitlines()[-1:])
    return dict(cfg, **json.loads(proc.stdout.strip().splitlines()[-1]))


def _table(results: list) -> str:
    lines = [
        "## Peak extra memory of rsample (bench/memory.py)",
        "",
        "Peak resident memory added by one `rsample` call, divided by the size of its",
        "output (1.00 = the output and nothing else; with `out=` the floor is 0.00).",
        f"Differences under {NOISE_BYTES >> 20} MiB are within the counters' noise.",
        "",
        "| library | out= | threads | shape (rows, K) | dtype | output MiB "
        "| extra MiB | extra / output |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        head = (
            f"| {r['lib']} | {'yes' if r['out'] else 'no'} | {r['threads']} "
            f"| ({r['rows']}, {r['k']}) | {r['dtype']} "
        )
        if "error" in r:
            lines.append(head + f"| error: {r['error']} | | |")
            continue
        mib = 1 << 20
        lines.append(
            head + f"| {r['output_bytes'] / mib:.1f} | {r['extra_bytes'] / mib:.1f} "
            f"| {r['extra_bytes'] / r['output_bytes']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def write_section(path: str, text: str) -> None:
    """Put ``text`` between the memory markers of ``path``, replacing what was there."""
    old = open(path).read() if os.path.exists(path) else ""
    block = f"{MARK_BEGIN}\n{text}{MARK_END}\n"
    if MARK_BEGIN in old and MARK_END in old:
        pre, rest = old.split(MARK_BEGIN, 1)
        new = pre + block + rest.split(MARK_END, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block
    with open(path, "w") as f:
        f.write(new)


def main(argv=None) -> int:
    sys.path.insert(0, HERE)
    import _cases

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument(
        "--libs",
        nargs="+",
        choices=("relaxcat", "numpy", "torch"),
        default=["relaxcat", "numpy", "torch"],
    )
    p.add_argument(
        "--results",
        default=os.path.join(HERE, "RESULTS.md"),
        help="Markdown file whose memory section is replaced ('' for none)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    shapes = _cases.QUICK_SHAPES if args.quick else _cases.DEFAULT_SHAPES + LONG_ROWS
    configs = []
    for lib in args.libs:
        for use_out in (False, True) if lib == "relaxcat" else (False,):
            for threads in args.threads if lib != "numpy" else [1]:
                for rows, k in shapes:
                    for dtype in args.dtypes:
                        configs.append(
                            dict(
                                lib=lib,
                                out=use_out,
                                threads=threads,
                                rows=rows,
                                k=k,
                                dtype=dtype,
                            )
                        )
    results = []
    for cfg in configs:
        results.append(measure(cfg))
        print(f"measured {cfg}", file=sys.stderr)
    text = _table(results)
    print(text)
    if args.results:
        write_section(args.results, text)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
