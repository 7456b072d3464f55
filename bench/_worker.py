"""One benchmark worker: checks, then times, every library at one thread count.

Started by bench/compare.py as ``python _worker.py CONFIG_JSON``.  The process pins
itself to ``threads`` cores before anything imports NumPy, torch or JAX: XLA sizes its
thread pool from the CPU affinity and ignores its thread flags, so pinning is the only
way to give JAX a thread count, and the other libraries get the same cores.  The
parent removes OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE from this process's environment
(they slow NumPy on some processors); they are left alone everywhere else.
"""

from __future__ import annotations

import json
import os
import sys


def _pin(threads: int) -> list:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < threads:
        raise SystemExit(f"threads must be at most the {len(cores)} usable cores")
    os.sched_setaffinity(0, cores[:threads])
    return cores[:threads]


if __name__ == "__main__":
    CONFIG = json.loads(sys.argv[1])
    CORES = _pin(CONFIG["threads"])

# Everything below may start thread pools, so it comes after the pinning.
import contextlib  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _cases as cs  # noqa: E402
import _impls  # noqa: E402


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _dtype_problems(arrays, dtype) -> list:
    # A library that answers float32 questions in float64 would be timed on other work.
    return [
        f"output {i} is {a.dtype}, expected {dtype}"
        for i, a in enumerate(arrays)
        if a.dtype != dtype
    ]


def check_op(impl, op: str, c: cs.Case) -> dict:
    """Compare one implementation's answer for ``op`` with the float64 reference."""
    t, k, dt = c.temperature, c.k, c.dtype
    units, sanity, problems = {}, None, []

    if op == "rsample":
        if impl.check_sample is not None:
            x = _impls.to_numpy(impl.check_sample())
            problems += _dtype_problems([x], dt)
            ref = cs.ref_sample(c.logits, c.gumbels, t)
            scale = cs.scale_sample(c.logits, c.gumbels, t)
            units["sample_on_shared_noise"] = cs.agreement(x, ref, scale, k, dt)
        x = _impls.to_numpy(impl.timed(op)())
        problems += _dtype_problems([x], dt)
        sanity = cs.sampler_sanity(x, c.logits, dt)

    elif op == "log_prob":
        lp = _impls.to_numpy(impl.timed(op)())
        problems += _dtype_problems([lp], dt)
        ref = cs.ref_log_prob(c.logits, t, c.x)
        scale = cs.scale_log_prob(c.logits, t, c.x)
        units["log_prob"] = cs.agreement(lp, ref, scale, k, dt)

    elif op == "rsample_vjp" or op == "fwd_bwd":
        # Both are judged at the sample the library itself produced and differentiated:
        # the shared noise for rsample_vjp, its own noise for fwd_bwd.
        if op == "rsample_vjp":
            x, g_a, g_t = _impls.to_numpy(impl.check_rsample_vjp())
        else:
            x, g_a, g_t = _impls.to_numpy(impl.timed(op)())
            sanity = cs.sampler_sanity(x, c.logits, dt)
        problems += _dtype_problems([x, g_a, g_t], dt)
        ref_a, ref_t = cs.ref_rsample_vjp(x, c.w, t)
        scale_a, scale_t = cs.scale_rsample_vjp(x, c.w, t, c.logits)
        units["d_logits"] = cs.agreement(g_a, ref_a, scale_a, k, dt)
        units["d_temperature"] = cs.agreement(g_t, ref_t, scale_t, c.elements, dt)

    elif op == "log_prob_vjp" or op == "lp_fwd_bwd":
        if op == "log_prob_vjp":
            g_x, g_a, g_t = _impls.to_numpy(impl.timed(op)())
        else:
            lp, g_x, g_a, g_t = _impls.to_numpy(impl.timed(op)())
            problems += _dtype_problems([lp], dt)
            ref = cs.ref_log_prob(c.logits, t, c.x)
            scale = cs.scale_log_prob(c.logits, t, c.x)
            units["log_prob"] = cs.agreement(lp, ref, scale, k, dt)
        problems += _dtype_problems([g_x, g_a, g_t], dt)
        refs = cs.ref_log_prob_vjp(c.logits, t, c.x, c.gl)
        scales = cs.scale_log_prob_vjp(c.logits, t, c.x, c.gl)
        for name, out, ref, scale, n in zip(
            ("d_value", "d_logits", "d_temperature"),
            (g_x, g_a, g_t),
            refs,
            scales,
            (k, k, c.elements),
        ):
            units[name] = cs.agreement(out, ref, scale, n, dt)

    ok = not problems and all(u <= cs.TOL_UNITS for u in units.values())
    if sanity is not None:
        ok = ok and sanity["ok"]
    return {"ok": ok, "units": units, "sanity": sanity, "problems": problems}


def measure(fn, min_repeats: int, max_repeats: int, budget_s: float) -> list:
    """Wall times in ns of repeated calls; the caller has made the warm-up call.

    Stops after ``min_repeats`` calls once ``budget_s`` is spent, or at
    ``max_repeats``.  The garbage collector is off while timing so that a collection
    triggered by one library's temporaries is not billed to another.
    """
    times = []
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        while len(times) < max_repeats and (
            len(times) < min_repeats or time.perf_counter() - start < budget_s
        ):
            t0 = time.perf_counter_ns()
            out = fn()
            t1 = time.perf_counter_ns()
            del out
            times.append(t1 - t0)
    finally:
        gc.enable()
    return times


def run_case(impls, case: cs.Case, cfg: dict) -> list:
    threads, ops = cfg["threads"], cfg["ops"]
    base = {
        "threads": threads,
        "rows": case.rows,
        "k": case.k,
        "dtype": case.dtype.name,
        "elements": case.elements,
    }

    # Every answer is checked before anything is timed.
    t0 = time.perf_counter()
    small = case.head(cs.CHECK_ROWS)
    checks = {}
    for impl in impls:
        impl.setup(small)
        for op in ops:
            if op not in impl.ops:
                continue
            try:
                checks[impl.name, op] = check_op(impl, op, small)
            except Exception as exc:  # a crash is a failed check, reported in full
                checks[impl.name, op] = {
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
    check_s = time.perf_counter() - t0
    records = []
    for impl in impls:
        impl.setup(case)
        for op in ops:
            if op not in impl.ops:
                continue
            rec = dict(base, impl=impl.name, op=op, check=checks[impl.name, op])
            records.append(rec)
            if not rec["check"]["ok"]:
                rec["status"] = "check_failed"
                continue
            try:
                fn = impl.timed(op)

                # The first call compiles (JAX) and faults in pages; for samplers its
                # full-size output is also checked.
                first = _impls.to_numpy(fn())
                if op == "rsample":
                    sanity = cs.sampler_sanity(first, case.logits, case.dtype)
                    rec["check"]["sanity_full"] = sanity
                    if not sanity["ok"]:
                        rec["status"] = "check_failed"
                        continue
                del first
                times = measure(
                    fn, cfg["min_repeats"], cfg["max_repeats"], cfg["budget_s"]
                )
            except Exception as exc:
                rec["status"] = "error"
                rec["error"] = f"{type(exc).__name__}: {exc}"
                rec["traceback"] = traceback.format_exc()
                continue
            median = float(np.median(times))
            rec.update(
                status="ok",
                median_ns=median,
                min_ns=min(times),
                times_ns=times,
                ns_per_element=median / case.elements,
            )
    for rec in records:
        rec["case_check_s"] = round(check_s, 2)
    return records


def versions(impls) -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for impl in impls:
        if impl.name.startswith("torch"):
            out["torch"] = impl.torch.__version__
        elif impl.name == "jax":
            out["jax"] = impl.jax.__version__
            out["jax_devices"] = [str(d) for d in impl.jax.devices()]
        elif impl.name.startswith("relaxcat"):
            rc = impl.rc
            out["relaxcat"] = getattr(rc, "__version__", "unknown")

            # The core is rebuilt often while it is developed; name the exact build.
            core = getattr(getattr(rc, "_core", None), "__file__", None)
            if core:
                st = os.stat(core)
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(st.st_mtime))
                out["relaxcat_core"] = f"{os.path.basename(core)}, {st.st_size} bytes, "
                out["relaxcat_core"] += f"built {stamp} UTC"
            if hasattr(rc, "get_num_threads"):
                out["relaxcat_threads"] = rc.get_num_threads()
            if hasattr(rc, "show_config"):
                buf = io.StringIO()
                with contextlib.redirect_stdout(buf):
                    shown = rc.show_config()
                out["relaxcat_config"] = buf.getvalue() or repr(shown)
    return out


def main(cfg: dict) -> None:
    impls, skipped = _impls.load(cfg["impls"], cfg["threads"])
    for name, why in skipped.items():
        _log(f"[{cfg['threads']} thr] skipping {name}: {why}")
    records = []
    for rows, k in cfg["shapes"]:
        for dtype in cfg["dtypes"]:
            t0 = time.perf_counter()
            case = cs.make_case(rows, k, dtype, seed=cfg["seed"])
            recs = run_case(impls, case, cfg)
            records += recs
            bad = [f"{r['impl']}/{r['op']}" for r in recs if r["status"] != "ok"]
            _log(
                f"[{cfg['threads']} thr] {dtype} ({rows}, {k}): "
                f"{len(recs) - len(bad)} timed, "
                f"{'failed: ' + ', '.join(bad) if bad else 'all checks passed'} "
                f"({time.perf_counter() - t0:.1f} s, checks "
                f"{recs[0]['case_check_s'] if recs else 0:.1f} s)"
            )
            del case
    result = {
        "threads": cfg["threads"],
        "cores": CORES,
        "skipped": skipped,
        "versions": versions(impls),
        "records": records,
    }
    with open(cfg["out"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(CONFIG)
