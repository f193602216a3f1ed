"""Warm reproductions whose independent runs go side by side: the default workers (one per core)
against one worker, in the same sitting.

``wnjax reproduce NAME`` runs in a fresh process per timing, the compilation cache warm (one
untimed run of each first): once with its default workers (``usable_cores()``, one thread per
core; ``wnjax.experiments._runner.in_parallel``) and once with one worker (the runs one after
another, as a loop over them), in interleaved rounds. Reported per experiment: the medians, the
median of the per-round ratios one-worker / default, and whether both ``metrics.json`` files
agree (every key but wall times and the output folder): the numbers must not depend on the
worker count.

    python benchmarks/reproduce_workers.py [--quick] [--rounds N] [--names diagonal-wn,pruning]

``--quick`` (a smoke run) times ``pruning`` alone, at tiny sizes, one round.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import _common as C

# Experiments whose independent runs go through ``in_parallel``, with the options of a run
# (``--quick``: tiny sizes, for CI smoke runs).
EXPERIMENTS = {
    "diagonal-wn": [],
    "pruning": [],
}
QUICK = {
    "diagonal-wn": [
        "--seeds", "2", "--dim", "16", "--measurements", "8", "--sparsity", "2",
        "--alphas", "0.1,1", "--steps", "300", "--speed-steps", "3000", "--target-log-loss", "-8",
    ],
    "pruning": ["--seeds", "2", "--width", "8", "--train-size", "200", "--max-epochs", "10"],
}  # fmt: skip
# Keys of metrics.json that are wall times or paths, not results.
NOT_RESULTS = {"options", "wall_s", "wall_seconds", "timing", "out"}

CHILD = """
import sys
import wnjax._runtime.cores as cores
if sys.argv[1] == "1":
    cores.usable_cores = lambda: 1
from wnjax._cli import main
sys.exit(main(sys.argv[2:]))
"""


def run(name: str, workers: str, out: str, extra: list[str], float32: bool) -> float:
    """Wall seconds of ``wnjax reproduce NAME`` in a fresh process (``workers``: '1' or
    'default')."""
    cmd = [sys.executable, "-c", CHILD, workers]
    cmd += ["reproduce", name, "--out", out, *extra] + (["--float32"] if float32 else [])
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=dict(os.environ, MPLBACKEND="Agg")
    )
    seconds = time.perf_counter() - t0
    # exit 1: written, with runs that missed their targets (tiny --quick budgets do)
    if proc.returncode not in (0, 1) or not os.path.exists(os.path.join(out, "metrics.json")):
        raise RuntimeError(f"{name} ({workers} workers) failed:\n{proc.stderr[-3000:]}")
    return seconds


def results_of(out: str) -> dict:
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    return _strip(metrics)


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in NOT_RESULTS}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--names", default=None, help="experiments (default all; --quick: pruning)")
    args = p.parse_args()
    args.names = args.names or ("pruning" if args.quick else ",".join(EXPERIMENTS))
    C.setup(args)
    from wnjax._runtime.cores import usable_cores

    rounds = args.rounds or (1 if args.quick else 3)
    names = [n for n in args.names.split(",") if n]
    rows, doc = [], {"cores": usable_cores(), "rounds": rounds, "experiments": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            extra = QUICK[name] if args.quick else EXPERIMENTS[name]
            outs = {w: os.path.join(tmp, f"{name}-{w}") for w in ("default", "1")}
            for w in outs:  # compile (or load) every program first: the timed runs are warm
                run(name, w, outs[w], extra, args.float32)
            times = {w: [] for w in outs}
            for r in range(rounds):
                for w in outs if r % 2 == 0 else list(outs)[::-1]:
                    times[w].append(run(name, w, outs[w], extra, args.float32))
            ratios = [a / b for a, b in zip(times["1"], times["default"])]
            same = results_of(outs["default"]) == results_of(outs["1"])
            doc["experiments"][name] = {
                "options": extra,
                "default_workers_s": C.summary(times["default"]),
                "one_worker_s": C.summary(times["1"]),
                "one_over_default": C.summary(ratios),
                "same_metrics": same,
            }
            rows.append(
                {
                    "experiment": name,
                    "default (s)": f"{statistics.median(times['default']):.1f}",
                    "1 worker (s)": f"{statistics.median(times['1']):.1f}",
                    "1 worker / default": f"{statistics.median(ratios):.2f}",
                    "same metrics": str(same),
                }
            )
    doc["gpu"] = C.gpu_status()
    print(C.table(rows, list(rows[0])))
    C.write_result("reproduce_workers", args, doc)


if __name__ == "__main__":
    main()
