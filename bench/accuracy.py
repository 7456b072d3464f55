"""Measure relaxcat's error on every 60-digit reference case (tests/data) and
print the largest error per quantity, dtype and file, as a Markdown table.

Errors are relative to max(1, |reference|), and for vectors to max(1, largest
entry), as the reference README defines them. Run: python bench/accuracy.py
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

sys.path.insert(
    0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "python")
)
from conftest import REFERENCE_FILES, load_cases, rel_err  # noqa: E402

import relaxcat  # noqa: E402


def measure() -> dict:
    worst: dict = {}

    def note(key, err):
        worst[key] = max(worst.get(key, 0.0), err)

    for name in REFERENCE_FILES:
        cases = load_cases(name)
        tag = "extreme" if "extreme" in name else "ordinary"
        for c in cases["log_prob"]:
            dt = np.dtype(c["dtype"])
            d = relaxcat.RelaxedOneHotCategorical(
                dt.type(c["temperature"]), logits=np.array(c["logits"], dt)
            )
            x = np.array(c["x"], dt)
            g = d.log_prob_vjp(x, np.ones((), dt))
            note((tag, c["dtype"], "log_prob"), rel_err(d.log_prob(x), c["log_prob"]))
            for f, r in (
                ("logits", "grad_logits"),
                ("temperature", "grad_temperature"),
                ("value", "grad_x"),
            ):
                note(
                    (tag, c["dtype"], "log_prob gradients"),
                    rel_err(getattr(g, f), c[r]),
                )
        for c in cases["log_prob_y"]:
            dt = np.dtype(c["dtype"])
            d = relaxcat.ExpRelaxedOneHotCategorical(
                dt.type(c["temperature"]), logits=np.array(c["logits"], dt)
            )
            y = np.array(c["log_x"], dt)
            g = d.log_prob_vjp(y, np.ones((), dt))
            note(
                (tag, c["dtype"], "log_prob (log space)"),
                rel_err(d.log_prob(y), c["log_prob"]),
            )
            for f, r in (
                ("logits", "grad_logits"),
                ("temperature", "grad_temperature"),
                ("value", "grad_log_x"),
            ):
                note(
                    (tag, c["dtype"], "log_prob gradients (log space)"),
                    rel_err(getattr(g, f), c[r]),
                )
        for c in cases["rsample"]:
            dt = np.dtype(c["dtype"])
            logits = np.array(c["logits"], dt)
            gum = np.array(c["gumbels"], dt)
            d = relaxcat.RelaxedOneHotCategorical(
                dt.type(c["temperature"]), logits=logits
            )
            e = relaxcat.ExpRelaxedOneHotCategorical(
                dt.type(c["temperature"]), logits=logits
            )
            x = d.rsample(gumbels=gum)
            note((tag, c["dtype"], "rsample x"), rel_err(x, c["x"]))
            note(
                (tag, c["dtype"], "rsample log x"),
                rel_err(e.rsample(gumbels=gum), c["log_x"]),
            )
            g = d.rsample_vjp(x, np.array(c["grad_x"], dt))
            note((tag, c["dtype"], "rsample VJP"), rel_err(g.logits, c["grad_logits"]))
            note(
                (tag, c["dtype"], "rsample VJP"),
                rel_err(g.temperature, c["grad_temperature"]),
            )
    return worst


def main() -> None:
    worst = measure()
    print("| cases | dtype | quantity | largest error |")
    print("|---|---|---|---|")
    for (tag, dt, what), err in sorted(worst.items()):
        print(f"| {tag} | {dt} | {what} | {err:.1e} |")


if __name__ == "__main__":
    main()
