"""How many operations of each compiled loop body XLA:CPU finds ready at once, for a gradient flow.

XLA:CPU's thunk executor runs a loop body's operations in the order of their dependencies and,
whenever it takes one to run with more than eight others ready, hands half of those to another
thread of its pool (``Thunk::ExecuteSession::kSplitThreshold = 8`` in XLA's
``xla/backends/cpu/runtime/thunk.h``). On a small model such a hand-off costs more than the step.
This script compiles ``wnjax.gradient_flow`` on the EWN 10-32-1 net of ``gf_vs_torchdiffeq.py``
in a child process with XLA's thunk-executor log on (``TF_CPP_VMODULE=thunk_executor=6`` prints
every executor's thunks with their dependencies), replays each executor's ready queue (first in,
first out, as XLA's default) and prints, per executor of more than eight thunks, the most
operations ready besides the running one, and where it splits. The executors of code that runs
once per call (the solve's set-up, its results) are listed too; the splits that cost are those
of the loop bodies, which run every step, and the voluntary context switches of a run
(``getrusage``, also printed) count them.

    python benchmarks/ready_queue.py [--solver dopri5] [--time normalized] [--t1 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import _common as C

SPLIT_THRESHOLD = 8
_NODE = re.compile(
    r"thunk #(\d+): op_name=(\S+), kind=([\w-]+), dependencies=\[([^\]]*)\].*?priority=(\d+)"
)


def replay(block: str) -> dict | None:
    """The widest point of one executor's graph: ``{"thunks", "max_ready", "at", "splits"}``
    (``max_ready``: operations ready besides the one taken to run)."""
    nodes = _NODE.findall(block)
    if not nodes:
        return None
    index = {name: int(i) for i, name, *_ in nodes}
    deps = {
        int(i): [index[d.strip()] for d in ds.split(",") if d.strip()] for i, _, _, ds, _ in nodes
    }
    names = {int(i): name for i, name, *_ in nodes}
    waiting = {i: len(d) for i, d in deps.items()}
    users: dict[int, list[int]] = {i: [] for i in deps}
    for i, d in deps.items():
        for j in d:
            users[j].append(i)
    ready = [i for i in deps if waiting[i] == 0]
    widest, at, splits = 0, None, 0
    while ready:
        i = ready.pop(0)
        if len(ready) > widest:
            widest, at = len(ready), names[i]
        splits += len(ready) > SPLIT_THRESHOLD
        for j in users[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    return {"thunks": len(nodes), "max_ready": widest, "at": at, "splits": splits}


def child(args) -> None:
    """Compile and run the flow (in the child process, whose log the parent reads)."""
    import resource

    import diffrax
    import jax
    from gf_vs_torchdiffeq import problem

    import wnjax

    model, X, y = problem(jax.random.key(0), 64, 10, 32)
    kw = dict(t1=args.t1, rtol=1e-10, atol=1e-12, time=args.time)
    if args.solver == "dopri5":
        kw["solver"] = diffrax.Dopri5()
    p = wnjax.ewn(model)

    def run():
        r = wnjax.gradient_flow(p, X, y, **kw)
        jax.block_until_ready(r.final)
        return r

    r = run()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    for _ in range(3):
        run()
    switches = (resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before) / 3
    print("RESULT " + json.dumps({"steps": int(r.stats["num_steps"]), "switches": switches}))


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--solver", choices=["default", "dopri5"], default="default")
    p.add_argument("--time", choices=["plain", "normalized"], default="plain")
    p.add_argument("--t1", type=float, default=50.0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        C.setup(args)
        child(args)
        return
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "0",
        "TF_CPP_VMODULE": "thunk_executor=6",
        "WNJAX_COMPILATION_CACHE": "0",  # a cached program is not rebuilt, so not logged
        "MPLBACKEND": "Agg",
    }
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--solver", args.solver]
    cmd += ["--time", args.time, "--t1", str(args.t1)] + (["--float32"] if args.float32 else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0])
    rows = []
    for block in out.stderr.split("ThunkExecutor: #thunks=")[1:]:
        row = replay(block)
        if row and row["thunks"] > SPLIT_THRESHOLD:
            rows.append(row)
    rows = sorted({json.dumps(r, sort_keys=True) for r in rows})
    rows = [json.loads(r) for r in rows]
    print(C.table(rows, ["thunks", "max_ready", "at", "splits"]))
    print(
        f"{args.solver} solver, {args.time} time: {result['steps']} steps, "
        f"{result['switches']:.0f} voluntary context switches a run; executors with max_ready > "
        f"{SPLIT_THRESHOLD} hand work to another thread"
    )


if __name__ == "__main__":
    main()
