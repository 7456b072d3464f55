"""Time relaxcat against the real alternatives, side by side, in one run.

Packages (the optional ``bench`` extra)::

    torch==2.13.0
    jax>=0.10,<0.11
    matplotlib>=3.6

Libraries compared, on every operation each one offers:

* relaxcat, with its default argument validation and with ``validate_args=False``;
* ``torch.distributions.RelaxedOneHotCategorical``, default and ``validate_args=False``;
* ``torch.nn.functional.gumbel_softmax`` (sampling only);
* JAX, written with ``jax.numpy``, differentiated with ``jax.vjp``, all under ``jit``;
* NumPy: a tuned vectorised implementation with analytic gradients (bench/_impls.py).

Operations: ``rsample``, ``log_prob``, ``rsample_vjp``, ``log_prob_vjp``, ``fwd_bwd``
(construct, sample, differentiate the sample) and ``lp_fwd_bwd`` (construct, log_prob
and its VJP).  bench/_impls.py says exactly what each
timed call includes.  Before anything is timed every answer is compared with a float64
reference on the same inputs (bench/_cases.py states the tolerance) and every sampler's
output is checked for normalisation and for the Gumbel-max law of its argmax.  A library
that fails is reported and not timed, and the script exits with status 1.

Threads: one worker process per thread count, pinned to that many cores before it
imports anything (the only way to set JAX's thread count); torch and relaxcat are told
the same count, NumPy runs these operations on one thread whatever it is told.  The
workers run one after another so they never share cores.

Output: the Markdown table (printed, and written to RESULTS.md), results.json with
every timing and check, and results.png.  Times are medians in ns per element
(elements = rows * K).

Usage::

    python bench/compare.py              # full run, about 10 minutes on 2 cores
    python bench/compare.py --quick      # smoke test, under a minute
    python bench/compare.py --ops rsample log_prob --dtypes float32 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _cases  # noqa: E402
import _report  # noqa: E402
import readme_table  # noqa: E402
from _impls import IMPL_NAMES  # noqa: E402

# Set on some processors, where they slow NumPy; removed for the workers only.
_OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _shape(text: str) -> tuple:
    try:
        rows, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must look like 4096x256, got {text!r}"
        ) from None
    if rows < 1 or k < 2:
        raise argparse.ArgumentTypeError(
            f"shape needs rows >= 1 and K >= 2, got {text}"
        )
    return rows, k


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="two small shapes and few repeats, for smoke tests",
    )
    p.add_argument("--ops", nargs="+", choices=_cases.OPS, default=list(_cases.OPS))
    p.add_argument(
        "--dtypes",
        nargs="+",
        choices=("float32", "float64"),
        default=["float32", "float64"],
    )
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument(
        "--shapes",
        nargs="+",
        type=_shape,
        metavar="ROWSxK",
        help="default: " + " ".join(f"{r}x{k}" for r, k in _cases.DEFAULT_SHAPES),
    )
    p.add_argument("--impls", nargs="+", choices=IMPL_NAMES, default=list(IMPL_NAMES))
    p.add_argument("--min-repeats", type=int, help="timed calls at least (default 3)")
    p.add_argument("--max-repeats", type=int, default=30)
    p.add_argument(
        "--budget",
        type=float,
        help="seconds of timed calls per cell beyond the minimum "
        "(default 0.1, quick 0.02)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out-dir",
        default=HERE,
        help="where results.json, results.png and RESULTS.md go",
    )
    p.add_argument("--no-chart", action="store_true")
    p.add_argument(
        "--from-json",
        metavar="PATH",
        help="rebuild RESULTS.md and results.png from a results.json "
        "without timing anything",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=120,
        metavar="SECONDS",
        help="before each worker, wait up to this long for other "
        "processes to go quiet (default 120, 0 to not wait)",
    )
    args = p.parse_args(argv)

    if args.shapes is None:
        args.shapes = _cases.QUICK_SHAPES if args.quick else _cases.DEFAULT_SHAPES
    if args.min_repeats is None:
        args.min_repeats = 2 if args.quick else 3
    if args.budget is None:
        args.budget = 0.02 if args.quick else 0.1
    usable = len(os.sched_getaffinity(0))
    too_many = [n for n in args.threads if n > usable or n < 1]
    if too_many:
        p.error(
            f"--threads must be between 1 and the {usable} usable cores, got {too_many}"
        )
    return args


def _machine_busy_s() -> float:
    """CPU seconds all processes have spent busy since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def other_load(seconds: float = 1.0) -> float:
    """Cores kept busy by other processes over the next ``seconds`` (we sleep)."""
    b0 = _machine_busy_s()
    time.sleep(seconds)
    return (_machine_busy_s() - b0) / seconds


def wait_for_quiet(limit_s: float, threshold: float = 0.2) -> float:
    """Wait up to ``limit_s`` for other processes to use under ``threshold`` cores.

    A second process on a 2-core machine slows a 2-thread run by up to 100x (OpenMP
    and Eigen pools spin while a core is taken), so the timings say little then.
    Returns the last measured load.
    """
    deadline = time.monotonic() + limit_s
    load = other_load()
    while load > threshold and time.monotonic() < deadline:
        print(f"waiting: other processes use {load:.2f} cores", file=sys.stderr)
        time.sleep(4)
        load = other_load()
    return load


def run_worker(cfg: dict) -> dict:
    """Run one pinned worker and return its JSON; its progress goes to stderr.

    Also records how much CPU other processes took while it ran, measured as all
    busy time on the machine minus the worker's own.
    """
    env = {k: v for k, v in os.environ.items() if k not in _OPENBLAS_VARS}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dict(cfg, out=os.path.join(tmp, "worker.json"))
        cmd = [sys.executable, os.path.join(HERE, "_worker.py"), json.dumps(cfg)]
        busy0, own0, wall0 = _machine_busy_s(), _children_cpu_s(), time.monotonic()
        proc = subprocess.run(cmd, env=env)
        wall = time.monotonic() - wall0
        other = (_machine_busy_s() - busy0) - (_children_cpu_s() - own0)
        if proc.returncode != 0:
            raise SystemExit(
                f"worker for {cfg['threads']} thread(s) failed with "
                f"status {proc.returncode}"
            )
        with open(cfg["out"]) as f:
            result = json.load(f)
    result["wall_s"] = round(wall, 1)
    result["other_cores"] = round(max(other, 0.0) / wall, 3)
    return result


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_section(path: str) -> str:
    """The section bench/memory.py wrote into ``path``, kept across reruns."""
    from memory import MARK_BEGIN, MARK_END

    try:
        old = open(path).read()
    except OSError:
        return ""
    if MARK_BEGIN not in old or MARK_END not in old:
        return ""
    body = old.split(MARK_BEGIN, 1)[1].split(MARK_END, 1)[0]
    return f"{MARK_BEGIN}{body}{MARK_END}\n"


def write_outputs(
    out_dir: str, meta: dict, base: dict, workers: list, chart: bool
) -> list:
    """Write RESULTS.md, results.json and results.png; return the failure lines."""
    records = [r for w in workers for r in w["records"]]
    skipped = {w["threads"]: w["skipped"] for w in workers}
    summary = _report.summarise(records, skipped)

    os.makedirs(out_dir, exist_ok=True)
    text = _report.markdown(summary, meta)
    print(text)
    results_md = os.path.join(out_dir, "RESULTS.md")
    kept = _memory_section(results_md)
    with open(results_md, "w") as f:
        f.write(text + "\n" + readme_table.targets_summary(summary) + "\n" + kept)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(
            {"meta": meta, "config": base, "summary": summary, "workers": workers},
            f,
            indent=1,
        )
    if chart:
        _report.chart(summary, os.path.join(out_dir, "results.png"))
    return _report.failures(records)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            old = json.load(f)
        bad = write_outputs(
            args.out_dir, old["meta"], old["config"], old["workers"], not args.no_chart
        )
        return 1 if bad else 0
    start = time.perf_counter()
    base = {
        "shapes": [list(s) for s in args.shapes],
        "dtypes": args.dtypes,
        "ops": args.ops,
        "impls": args.impls,
        "min_repeats": args.min_repeats,
        "max_repeats": args.max_repeats,
        "budget_s": args.budget,
        "seed": args.seed,
    }
    workers = []
    for n in args.threads:
        before = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
        workers.append(run_worker(dict(base, threads=n)))
        workers[-1]["other_cores_before"] = before

    versions = {}
    for w in workers:
        versions.update(
            {
                k: v
                for k, v in w["versions"].items()
                if isinstance(v, str) and "\n" not in v
            }
        )
    meta = {
        "cpu": _cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "versions": ", ".join(
            f"{k} {v}"
            for k, v in sorted(versions.items())
            if k not in ("relaxcat_config",)
        ),
        "command": "python bench/compare.py " + shlex.join(argv or sys.argv[1:]),
        "seconds": round(time.perf_counter() - start, 1),
        "tolerance": f"|impl - ref| <= {_cases.TOL_UNITS} * eps * sqrt(n) * scale",
        "sanity_z": _cases.SANITY_Z,
        "temperature": _cases.TEMPERATURE,
        "check_rows": _cases.CHECK_ROWS,
        "other_cores": {w["threads"]: w["other_cores"] for w in workers},
    }

    bad = write_outputs(args.out_dir, meta, base, workers, not args.no_chart)
    for line in bad:
        print("FAILED:", line, file=sys.stderr)
    print(
        f"done in {meta['seconds']} s; {len(bad)} failed checks or errors",
        file=sys.stderr,
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
