"""The long fuzz campaign: scenarios of fuzz_harness.py until time runs out.

    python tests/fuzz/campaign.py --seconds 600 [--seed N]

Unlike the pytest run, a failure does not stop the campaign: each distinct
failure (by exception type and the first line of its message) is kept with the
draws that produced it, and the campaign goes on. Prints the number of inputs
tried, the known bugs reached and the failures; exits 1 if there were any.
"""

from __future__ import annotations

import argparse
import pathlib
import pickle
import random
import sys
import time
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import fuzz_harness  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class Replayer:
    """Gives back recorded draws in order: replays a failure without hypothesis."""

    def __init__(self, draws):
        self.values = [v for _, v in draws]

    def draw(self, strategy, label=None):
        return self.values.pop(0)


def replay(path: str) -> None:
    """Run the scenario saved at ``path`` once, raising its failure."""
    with open(path, "rb") as f:
        draws = pickle.load(f)
    fuzz_harness.check_scenario(Replayer(draws))


class Recorder:
    """Wraps hypothesis's data object, keeping every draw for a reproducer."""

    def __init__(self, data):
        self.data = data
        self.draws = []

    def draw(self, strategy, label=None):
        value = self.data.draw(strategy, label=label)
        self.draws.append((label, value))
        return value


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--save", default=None, help="a folder for the failing draws")
    parser.add_argument("--replay", default=None, help="a saved failure to rerun")
    args = parser.parse_args()
    if args.replay:
        replay(args.replay)
        return 0
    master = random.Random(args.seed)
    failures: dict = {}
    deadline = time.monotonic() + args.seconds

    @settings(
        max_examples=args.batch,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def batch(data):
        rec = Recorder(data)
        try:
            fuzz_harness.scenario(rec)
        except Exception as e:  # noqa: BLE001 - every failure is collected
            key = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            key = key[:200]
            if key not in failures:
                failures[key] = (rec.draws, traceback.format_exc(limit=6))
                if args.save:
                    n = sum(1 for k in failures if not k.endswith(" #count"))
                    path = pathlib.Path(args.save) / f"failure-{n}.pkl"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "wb") as f:
                        pickle.dump(rec.draws, f)
            failures.setdefault(key + " #count", [0])[0] += 1

    start = time.monotonic()
    while time.monotonic() < deadline:
        seed(master.getrandbits(64))(batch)()
    elapsed = time.monotonic() - start

    stats = fuzz_harness.STATS
    print(f"inputs tried: {stats.get('inputs', 0)} in {elapsed:.0f} s")
    for name in fuzz_harness.KNOWN:
        print(f"known bug {name!r} reached: {stats.get(name, 0)} times")
    for name in fuzz_harness.LIMITATIONS:
        print(f"documented limitation {name!r} reached: {stats.get(name, 0)} times")
    real = [k for k in failures if not k.endswith(" #count")]
    print(f"distinct failures: {len(real)}")
    for key in real:
        draws, tb = failures[key]
        print("\n--- " + key + f"  ({failures[key + ' #count'][0]} inputs)")
        if args.save:
            print(f"saved as failure-{real.index(key) + 1}.pkl in {args.save}")
        print(
            "draws: " + ", ".join(f"{lab or '?'}={val!r}"[:120] for lab, val in draws)
        )
        print(tb)
    return 1 if real else 0


if __name__ == "__main__":
    sys.exit(main())
