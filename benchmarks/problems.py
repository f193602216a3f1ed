"""The problem zoo under three solvers: the explicit method alone, the implicit one alone, and the
default (``wnjax.AutoSwitch``, which switches between them). For each problem: steps and wall
time (compilation excluded: the median of interleaved rounds after a first, compiling call),
and the default's wall time over the better of the two single methods.

    python benchmarks/problems.py [--quick] [--only NAME ...] [--rounds 3]

``--quick`` runs two problems (``QUICK_PROBLEMS``) at their test sizes, one round.

A method that fails (out of steps, or a failed solve) counts as infinitely slow; the
default must not fail where either succeeds, and should be within 1.5x of the better one.
"""

from __future__ import annotations

import math
import statistics
import sys
import time

import _common

EXPLICIT_STEPS = 100_000  # the single methods' budget (the default's is the library default)
# ``--quick`` (a smoke run): a linear classifier and a diagonal net of the zoo.
QUICK_PROBLEMS = ("linear-exp", "diagonal-square-l1")


def main() -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=None, help="problem names")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    args = p.parse_args()
    _common.setup(args)
    import jax
    import numpy as np

    import wnjax
    import wnjax.problems as zoo

    size = "test" if args.quick else "full"
    names = args.only or (QUICK_PROBLEMS if args.quick else zoo.names())
    rounds = 1 if args.quick else args.rounds
    rows = []
    for name in names:
        problem = zoo.make(name, size)
        solvers = {"explicit": "tsit5", "implicit": "stiff", "default": None}
        runs, times = {}, {k: [] for k in solvers}
        for label, solver in solvers.items():  # first calls: compile, and record the outcome
            overrides = {} if solver is None else {"solver": solver, "max_steps": EXPLICIT_STEPS}
            t0 = time.perf_counter()
            runs[label] = zoo.run(problem, **overrides)
            runs[label] = (runs[label], time.perf_counter() - t0, overrides)
        for _ in range(rounds):  # interleaved rounds, compiled
            for label in solvers:
                overrides = runs[label][2]
                t0 = time.perf_counter()
                zoo.run(problem, **overrides)
                times[label].append(time.perf_counter() - t0)
        row = {"problem": name}
        for label in solvers:
            r = runs[label][0]
            wall = statistics.median(times[label])
            row[f"{label}_steps"] = r.steps
            finished = r.message.startswith("gradient flow reached")  # its target, or t1
            row[f"{label}_s"] = wall if finished else math.inf  # a failure: no time
            row[f"{label}_ok"] = bool(r.passed)
            row[f"{label}_first_s"] = runs[label][1]
        best = min(row["explicit_s"], row["implicit_s"])
        row["default_over_best"] = (
            row["default_s"] / best
            if math.isfinite(best)
            else (0.0 if math.isfinite(row["default_s"]) else math.nan)
        )
        row["default_stiff_steps"] = int(runs["default"][0].stats.get("stiff_steps", 0))
        row["default_switches"] = int(runs["default"][0].stats.get("switches", 0))
        rows.append(row)
        print(_common.table([row], list(row)), flush=True)
    columns = [
        "problem",
        "explicit_steps",
        "explicit_s",
        "implicit_steps",
        "implicit_s",
        "default_steps",
        "default_s",
        "default_over_best",
        "default_ok",
    ]
    print()
    print(_common.table(rows, columns))
    ratios = [r["default_over_best"] for r in rows if math.isfinite(r["default_over_best"])]
    payload = {
        "size": size,
        "rounds": rounds,
        "rows": rows,
        "median_default_over_best": statistics.median(ratios) if ratios else None,
        "max_default_over_best": max(ratios) if ratios else None,
        "default_never_fails_where_one_succeeds": all(
            math.isfinite(r["default_s"])
            or not (math.isfinite(r["explicit_s"]) or math.isfinite(r["implicit_s"]))
            for r in rows
        ),
        "jax": jax.__version__,
        "wnjax": wnjax.__name__,
        "numpy": np.__version__,
        "gpu": _common.gpu_status(),
    }
    _common.write_result("problems", args, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
