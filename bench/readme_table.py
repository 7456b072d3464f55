"""Print the README's performance table and its summary counts from a
results.json written by bench/compare.py (default: bench/results.json).

    python bench/readme_table.py [PATH]

Prints, in Markdown: relaxcat (defaults) against the fastest competitor of every
cell; the speed-ups over that competitor next to the float32 targets, and in
float64 against its 2x target; the counts of cells won; and the 2-thread scaling
of each relaxcat op. compare.py
writes the last three (targets_summary) into RESULTS.md as well.
"""

from __future__ import annotations

import json
import pathlib
import sys

from _report import LABELS

HERE = pathlib.Path(__file__).resolve().parent
SHAPES = [(1048576, 8), (4096, 256), (32, 128000), (2097152, 2), (1048576, 3)]
SHAPE_NAMES = ["(2^20, 8)", "(4096, 256)", "(32, 128000)", "(2^21, 2)", "(2^20, 3)"]
OPS = ["rsample", "log_prob", "rsample_vjp", "log_prob_vjp", "fwd_bwd", "lp_fwd_bwd"]
# The float32 targets: speed-up over the fastest competitor, 1 thread / 2 threads,
# for the first three shapes.
TARGETS = {
    "rsample": [(6, 10), (3, 5), (2.5, 5)],
    "log_prob": [(3, 5), (1.5, 2), (3, 5)],
    "rsample_vjp": [(3, 4), (2, 3), (2, 3)],
    "fwd_bwd": [(5, 8), (2.5, 5), (3, 5)],
}
# The float64 target: at least this speed-up over the fastest competitor for
# every op of the list, on every shape and thread count.
TARGET64 = 2
OPS64 = ["rsample", "log_prob", "rsample_vjp", "log_prob_vjp", "fwd_bwd"]


def _cells(summary):
    return {(r["op"], r["rows"], r["k"], r["dtype"], r["threads"]): r for r in summary}


def _vs(row) -> str:
    ns = row["ns_per_element"]
    best = row["fastest_competitor"]
    if "relaxcat" not in ns or best is None:
        return "n/a"
    return f"{ns['relaxcat']:.3g} vs {ns[best]:.3g} {LABELS[best]}"


def performance_table(cells) -> str:
    """relaxcat (defaults) against the fastest competitor of every cell."""
    head = " | ".join(f"{n} 1T / 2T" for n in SHAPE_NAMES)
    lines = [f"| op | dtype | {head} |", "|---|---|" + "---|" * len(SHAPES)]
    for op in OPS:
        for dtype in ("float32", "float64"):
            parts = []
            for rows, k in SHAPES:
                one = cells.get((op, rows, k, dtype, 1))
                two = cells.get((op, rows, k, dtype, 2))
                parts.append(
                    f"{_vs(one) if one else 'n/a'} / {_vs(two) if two else 'n/a'}"
                )
            lines.append(f"| {op} | {dtype} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def targets_summary(summary: list) -> str:
    """The float32 and float64 targets against the measured speed-ups, the cells
    won, and the 2-thread scaling of each op, as Markdown."""
    cells = _cells(summary)
    lines = [
        "## Against the targets",
        "",
        "Speed-up of relaxcat (defaults) over the fastest competitor, float32,"
        " measured / target (1T ; 2T). The README's Performance section says what"
        " bounds the ones missed.",
        "",
        "| op | " + " | ".join(f"{n} 1T ; 2T" for n in SHAPE_NAMES[:3]) + " |",
        "|---|---|---|---|",
    ]
    for op, goals in TARGETS.items():
        parts = []
        for (rows, k), (g1, g2) in zip(SHAPES[:3], goals):
            got = []
            for threads, goal in ((1, g1), (2, g2)):
                r = cells.get((op, rows, k, "float32", threads))
                ratio = r["ratio_relaxcat"] if r else None
                got.append("n/a" if ratio is None else f"{1 / ratio:.2f}x / {goal}x")
            parts.append(" ; ".join(got))
        lines.append(f"| {op} | " + " | ".join(parts) + " |")

    lines += [
        "",
        f"Speed-up over the fastest competitor, float64 (target: at least"
        f" {TARGET64}x on every op, shape and thread count), 1T ; 2T:",
        "",
        "| op | " + " | ".join(f"{n} 1T ; 2T" for n in SHAPE_NAMES) + " |",
        "|---|" + "---|" * len(SHAPES),
    ]
    met = total = 0
    for op in OPS64:
        parts = []
        for rows, k in SHAPES:
            got = []
            for threads in (1, 2):
                r = cells.get((op, rows, k, "float64", threads))
                ratio = r["ratio_relaxcat"] if r else None
                if ratio is None:
                    got.append("n/a")
                    continue
                total += 1
                met += 1 / ratio >= TARGET64
                got.append(f"{1 / ratio:.2f}x")
            parts.append(" ; ".join(got))
        lines.append(f"| {op} | " + " | ".join(parts) + " |")
    lines += ["", f"The float64 target is met in {met} of these {total} cells."]

    won = [r for r in summary if (r["ratio_relaxcat"] or 99) < 1]
    vs_torch = [
        r
        for r in summary
        if "relaxcat" in r["ns_per_element"] and "torch_nv" in r["ns_per_element"]
    ]
    beat_torch = [
        r
        for r in vs_torch
        if r["ns_per_element"]["relaxcat"] < r["ns_per_element"]["torch_nv"]
    ]
    lines += [
        "",
        f"relaxcat (defaults) is faster than the fastest competitor in {len(won)} of "
        f"{len(summary)} cells, and faster than torch.distributions with validation "
        f"off in {len(beat_torch)} of {len(vs_torch)}.",
        "",
        "2-thread speed-up of relaxcat (1T time / 2T time over the shapes), min .. max"
        " (target: at least 1.7 for rsample and log_prob on every shape):",
        "",
    ]
    for op in OPS:
        for dtype in ("float32", "float64"):
            ups = []
            for rows, k in SHAPES:
                one = cells.get((op, rows, k, dtype, 1))
                two = cells.get((op, rows, k, dtype, 2))
                if one and two and "relaxcat" in two["ns_per_element"]:
                    ups.append(
                        one["ns_per_element"]["relaxcat"]
                        / two["ns_per_element"]["relaxcat"]
                    )
            if ups:
                lines.append(f"- {op} {dtype}: {min(ups):.2f} .. {max(ups):.2f}")
    return "\n".join(lines) + "\n"


def main(path: str) -> int:
    data = json.loads(pathlib.Path(path).read_text())
    print(performance_table(_cells(data["summary"])))
    print()
    print(targets_summary(data["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(HERE / "results.json")))
