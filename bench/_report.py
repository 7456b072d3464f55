"""Tables, ratios and the chart made from the workers' records (see compare.py)."""

from __future__ import annotations

import math

from _impls import IMPL_NAMES, LABELS, RELAXCAT_NAMES

COMPETITORS = tuple(n for n in IMPL_NAMES if n not in RELAXCAT_NAMES)
OP_TITLES = {
    "rsample": "rsample",
    "log_prob": "log_prob",
    "rsample_vjp": "rsample VJP (d logits, d temperature; backward only)",
    "log_prob_vjp": "log_prob VJP (d value, d logits, d temperature; backward only)",
    "fwd_bwd": "forward + backward (construct, rsample, its VJP)",
    "lp_fwd_bwd": "log_prob forward + backward (construct, log_prob, its VJP)",
}

# How a cell reads when there is no time: the check failed, the call raised, the library
# is not installed, or it has no such operation (F.gumbel_softmax beyond rsample).
_MARKS = {"check_failed": "FAILED CHECK", "error": "error", "skipped": "not installed"}


def _key(r: dict) -> tuple:
    return (r["op"], r["rows"], r["k"], r["dtype"], r["threads"])


def summarise(records: list, skipped: dict) -> list:
    """One row per (op, shape, dtype, threads): every library's ns/element and the
    ratio of each relaxcat variant to the fastest competitor that passed its checks.

    ``skipped`` maps a thread count to ``{impl: reason}`` from that worker.
    """
    rows = {}
    for r in records:
        row = rows.setdefault(
            _key(r),
            {
                "op": r["op"],
                "rows": r["rows"],
                "k": r["k"],
                "dtype": r["dtype"],
                "threads": r["threads"],
                "ns_per_element": {},
                "status": {},
            },
        )
        row["status"][r["impl"]] = r["status"]
        if r["status"] == "ok":
            row["ns_per_element"][r["impl"]] = r["ns_per_element"]

    out = []
    for row in rows.values():
        for name in skipped.get(row["threads"], {}):
            row["status"].setdefault(name, "skipped")
        ns = row["ns_per_element"]
        timed = {n: ns[n] for n in COMPETITORS if n in ns}
        best = min(timed, key=timed.get) if timed else None
        row["fastest_competitor"] = best
        for name in RELAXCAT_NAMES:
            ok = best is not None and name in ns
            row[f"ratio_{name}"] = ns[name] / timed[best] if ok else None
        out.append(row)
    order = {op: i for i, op in enumerate(OP_TITLES)}
    out.sort(
        key=lambda r: (
            order[r["op"]],
            -r["rows"] * r["k"],
            r["k"],
            r["dtype"],
            r["threads"],
        )
    )
    return out


def _fmt_ns(v: float) -> str:
    # Three significant figures whatever the size: 0.412, 4.12, 41.2, 412.
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def _cell(row: dict, name: str) -> str:
    if name in row["ns_per_element"]:
        text = _fmt_ns(row["ns_per_element"][name])
        return f"**{text}**" if name == row["fastest_competitor"] else text
    status = row["status"].get(name)
    return _MARKS.get(status, "n/a")


def _ratio(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def markdown(summary: list, meta: dict) -> str:
    """The RESULTS.md text: one table per operation."""
    names = [n for n in IMPL_NAMES if any(n in r["status"] for r in summary)]
    head = ["shape (rows, K)", "dtype", "threads"] + [LABELS[n] for n in names]
    head += ["relaxcat / best", "relaxcat (no val.) / best"]
    lines = [
        "# relaxcat benchmark results",
        "",
        "Median wall time in **ns per element** (elements = rows * K; lower is",
        "better). The fastest competitor of each row is in bold; the ratio columns",
        "divide relaxcat's time by it (below 1: relaxcat is faster). Every number",
        "comes from a run in which all libraries' answers were first checked",
        "against a float64 reference (see bench/_cases.py for the tolerance).",
        "",
        f"Machine: {meta.get('cpu', 'unknown CPU')}, {meta.get('cores', '?')} cores. "
        f"Versions: {meta.get('versions', '')}. Command: `{meta.get('command', '')}`.",
        "",
    ]
    busy = {n: c for n, c in meta.get("other_cores", {}).items() if c > 0.1}
    if busy:
        said = ", ".join(
            f"{c:.2f} cores during the {n}-thread run" for n, c in busy.items()
        )
        lines += [
            f"**Warning:** other processes were busy ({said}); times at the",
            "affected thread counts, above all 2 threads, are inflated.",
            "",
        ]
    for op, title in OP_TITLES.items():
        part = [r for r in summary if r["op"] == op]
        if not part:
            continue
        lines += [f"## {title}", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "---|" * len(head))
        for r in part:
            cells = [f"({r['rows']}, {r['k']})", r["dtype"], str(r["threads"])]
            cells += [_cell(r, n) for n in names]
            cells += [_ratio(r["ratio_relaxcat"]), _ratio(r["ratio_relaxcat_nv"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def chart(summary: list, path: str) -> None:
    """Grouped bars of ns/element: one panel per (operation, threads, dtype), one group
    per shape, one bar per library; log scale, since the libraries differ by 10x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in OP_TITLES if any(r["op"] == op for r in summary)]
    cols = sorted({(r["threads"], r["dtype"]) for r in summary})
    names = [n for n in IMPL_NAMES if any(n in r["ns_per_element"] for r in summary)]
    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(
        len(ops),
        len(cols),
        figsize=(5.5 * len(cols), 3.6 * len(ops)),
        squeeze=False,
        sharey="row",
    )
    width = 0.8 / max(len(names), 1)
    for i, op in enumerate(ops):
        for j, (threads, dtype) in enumerate(cols):
            ax = axes[i][j]
            part = [
                r
                for r in summary
                if r["op"] == op and r["threads"] == threads and r["dtype"] == dtype
            ]
            for b, name in enumerate(names):
                xs, ys = [], []
                for g, r in enumerate(part):
                    if name in r["ns_per_element"]:
                        xs.append(g + (b - (len(names) - 1) / 2) * width)
                        ys.append(r["ns_per_element"][name])
                label = LABELS[name] if (i, j) == (0, 0) else None
                ax.bar(xs, ys, width, color=colors[b % len(colors)], label=label)
            ax.set_yscale("log")
            ax.set_axisbelow(True)
            ax.set_xticks(range(len(part)))
            ax.set_xticklabels([f"{r['rows']}x{r['k']}" for r in part], fontsize=7)
            ax.set_title(f"{op}, {dtype}, {threads} thread(s)", fontsize=9)
            ax.grid(axis="y", which="both", alpha=0.3)
            if j == 0:
                ax.set_ylabel("ns per element")
    fig.legend(loc="upper center", ncol=len(names), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def failures(records: list) -> list:
    """Human-readable lines for every record that was not timed because of a problem."""
    out = []
    for r in records:
        if r["status"] in ("check_failed", "error"):
            c = r["check"]
            detail = c.get("error") or r.get("error") or ""
            units = {
                k: round(v, 2)
                for k, v in c.get("units", {}).items()
                if not math.isfinite(v) or v > 0
            }
            out.append(
                f"{r['impl']} {r['op']} ({r['rows']}, {r['k']}) {r['dtype']} "
                f"{r['threads']} thr: {r['status']} {detail} units={units} "
                f"problems={c.get('problems')} "
                f"sanity={c.get('sanity_full') or c.get('sanity')}"
            )
    return out
