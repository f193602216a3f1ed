"""The cost of one GD step of a block of seeds: lin-sep's 25-seed SWN block (2-8-1 ReLU^2, 4
points, float64), as ``wnjax reproduce lin-sep`` runs it (``run_gd`` over stacked models, saves
every 25 attempts with lin-sep's per-neuron summaries).

Three schedules: plain GD (``sgd``, guarded: the engine's fast path of unchecked blocks);
lin-sep's ``paper-text`` (``eta0/L^(1-1/30)`` with backtracking, exponential loss: every step on
the exact path); its default ``paper-code`` (the same, lagged, with the logistic-then-exponential
loss). Each with the exact path's loop state packed into one vector per dtype (the engine's
``packed_while_loop``) and, as the baseline measured in the same run, unpacked (a plain
``lax.while_loop``). Each variant runs in a child process of its own (the loop is chosen at trace
time), in interleaved rounds; reported: microseconds per block-step (attempts of the block),
medians over rounds, and the packed/plain ratio per schedule.

    python benchmarks/gd_block_step.py [--quick] [--rounds N]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import _common as C

SCHEDULES = ("sgd", "paper-text", "paper-code")
LOOPS = ("packed", "plain")


def child(schedule: str, loop: str, steps: int, repeats: int) -> dict:
    """Time ``run_gd`` on the block in this process: compile once, then the median of
    ``repeats`` runs of ``steps`` attempts."""
    import time

    import jax
    import jax.numpy as jnp

    import wnjax._dynamics.descent as descent
    from wnjax._nets.models import MLP
    from wnjax._nets.parameterize import swn
    from wnjax.data._sets import lin_sep
    from wnjax.experiments._lin_sep import gd_options, neuron_diagnostics
    from wnjax.experiments._runner import run_gd, stacked

    if loop == "plain":
        descent.packed_while_loop = jax.lax.while_loop
    seeds = 25
    X, y = jax.jit(jax.vmap(lin_sep))(jax.random.split(jax.random.key(0), seeds))
    keys = jax.random.split(jax.random.key(1), seeds)
    models = stacked(lambda k: swn(MLP(2, 8, 2, activation="relu2", key=k)), keys)
    opts = {} if schedule == "sgd" else gd_options(schedule)

    def go():
        t = time.perf_counter()
        r = run_gd(
            models,
            X,
            y,
            per_seed_data=True,
            num_steps=steps,
            learning_rate=0.01,
            chunk_size=25,
            summarize=neuron_diagnostics,
            diverge_above=jnp.inf,
            **opts,
        )
        jax.block_until_ready(r.final)
        return time.perf_counter() - t

    go()
    t = statistics.median(go() for _ in range(repeats))
    return {"us_per_block_step": 1e6 * t / steps}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="default 3 (1 with --quick)")
    p.add_argument(
        "--child",
        nargs=2,
        metavar=("SCHEDULE", "LOOP"),
        help="internal: time one variant in this process and print JSON",
    )
    args = p.parse_args()
    steps, repeats = (500, 1) if args.quick else (4000, 3)
    if args.child:
        C.setup(args)
        print(json.dumps(child(*args.child, steps, repeats)))
        return
    rounds = args.rounds or (1 if args.quick else 3)
    cmd = [sys.executable, os.path.abspath(__file__)] + (["--float32"] if args.float32 else [])
    times: dict[str, list[float]] = {f"{s}/{lp}": [] for s in SCHEDULES for lp in LOOPS}
    for _ in range(rounds):
        for s in SCHEDULES:
            for lp in LOOPS:
                out = subprocess.run(
                    cmd + (["--quick"] if args.quick else []) + ["--child", s, lp],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                us = json.loads(out.stdout.strip().splitlines()[-1])["us_per_block_step"]
                times[f"{s}/{lp}"].append(us)
                print(f"{s:10s} {lp:6s} {us:7.2f} us per block-step", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {
        s: statistics.median(
            a / b for a, b in zip(times[f"{s}/packed"], times[f"{s}/plain"], strict=True)
        )
        for s in SCHEDULES
    }
    for s in SCHEDULES:
        print(
            f"{s:10s} packed {med[s + '/packed']:.2f} us, plain {med[s + '/plain']:.2f} us, "
            f"packed/plain {ratios[s]:.2f}"
        )
    C.write_result(
        C.result_name("gd_block_step", args.float32),
        args,
        {
            "problem": {"seeds": 25, "net": "SWN 2-8-1 relu2", "points": 4, "steps": steps},
            "us_per_block_step": times,
            "median_us_per_block_step": med,
            "packed_over_plain": ratios,
            "rounds": rounds,
            "gpu": C.gpu_status(),
        },
    )


if __name__ == "__main__":
    main()
