"""S seeds in one compiled program against S single runs (default S = 1,024).

Each seed is one run of a lin-sep-size problem (an EWN 2-8-1 ReLU^2 MLP, its own initialization
per seed, on lin-sep's 4 points; exponential loss):

- ``gf``: ``wnjax.gradient_flow`` in plain time to ``t1 = 50``, rtol 1e-8 / atol 1e-10
  (float32: 1e-5 / 1e-7), 16 saves;
- ``gd``: GD, 2,000 steps, learning rate 0.05, 16 saves.

Three ways to run the S seeds, each timed after a first call that compiles:

- ``sweep``: ``wnjax.sweep(run, S, batch_size=S)``, all seeds in one vmapped program on one
  device (``run`` calls ``wnjax.gradient_flow`` / ``wnjax.traced_gradient_descent`` traced: the
  flow's solver is then Tsit5);
- ``jit``: ``jax.jit(run)`` called seed after seed, each result fetched to the host: the same
  per-seed program, compiled once and dispatched S times;
- ``call``: the public untraced functions seed after seed, as a plain loop over seeds would
  call them (``wnjax.gradient_flow``'s default solver, ``wnjax.gradient_descent``).

Single runs are timed over as many seeds as fit in ``--single-budget`` seconds (at least 8) and
scaled to S; the results file gives the count that ran. The ratio is the single runs' time for
S seeds over the sweep's. Every way's final log losses must agree.

    python benchmarks/seeds_one_program.py [--seeds 1024] [--float32] [--quick]
"""

from __future__ import annotations

import statistics
import time

import _common as C


def problem(float32: bool):
    import jax

    import wnjax

    X, y = wnjax.data.lin_sep(jax.random.key(0))
    tol = (1e-5, 1e-7) if float32 else (1e-8, 1e-10)

    def model(key):
        return wnjax.ewn(wnjax.MLP(2, 8, 2, activation="relu2", key=key))

    def gf(key, cfg, call=wnjax.gradient_flow):
        r = call(
            model(key),
            X,
            y,
            t1=50.0,
            rtol=tol[0],
            atol=tol[1],
            n_save=16,
            save_states=False,
            max_steps=20000,
            throw=False,
        )
        return {"final_log_loss": r.final_log_loss, "num_steps": r.stats["num_steps"]}

    def gd(key, cfg, call=wnjax.traced_gradient_descent):
        r = call(model(key), X, y, num_steps=2000, learning_rate=0.05, n_save=16)
        return {"final_log_loss": r.final_log_loss}

    untraced = {
        "gf": lambda key: gf(key, {}),
        "gd": lambda key: gd(key, {}, call=wnjax.gradient_descent),
    }
    return {"gf": gf, "gd": gd}, untraced


def single_runs(fn, seeds: int, budget: float) -> tuple[list[float], list[float]]:
    """Per-seed wall times of ``fn(key)`` for seeds 0, 1, ... until ``budget`` seconds have
    passed (at least 8 seeds, at most ``seeds``), after a compiling call; and their final log
    losses."""
    import jax
    import numpy as np

    jax.block_until_ready(fn(jax.random.key(0)))
    times, finals = [], []
    start = time.perf_counter()
    for s in range(seeds):
        t0 = time.perf_counter()
        out = jax.device_get(fn(jax.random.key(s)))
        times.append(time.perf_counter() - t0)
        finals.append(float(np.asarray(out["final_log_loss"])))
        if len(times) >= 8 and time.perf_counter() - start > budget:
            break
    return times, finals


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None, help="S (default 1024; --quick 16)")
    p.add_argument(
        "--single-budget",
        type=float,
        default=None,
        help="seconds of single runs per way (default 10; --quick 2)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed sweep calls (default 3)")
    args = p.parse_args()
    C.setup(args)
    import jax
    import numpy as np

    import wnjax

    S = args.seeds or (16 if args.quick else 1024)
    budget = args.single_budget if args.single_budget is not None else (2 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    traced, untraced = problem(args.float32)
    rows, detail = [], {}
    for name in ("gf", "gd"):
        run = traced[name]
        t0 = time.perf_counter()
        first = wnjax.sweep(run, S, batch_size=S, devices=1, progress=False)
        first_call = time.perf_counter() - t0
        sweep_times = [
            wnjax.sweep(run, S, batch_size=S, devices=1, progress=False).elapsed
            for _ in range(repeats)
        ]
        sweep_s = statistics.median(sweep_times)
        finals = np.asarray(first.table["final_log_loss"])
        jitted = jax.jit(lambda key, run=run: run(key, {}))
        ways = {"jit": jitted, "call": untraced[name]}
        entry = {
            "sweep": {
                "seconds": sweep_s,
                "seconds_all": sweep_times,
                "first_call_seconds": first_call,
                "per_seed_ms": 1e3 * sweep_s / S,
            }
        }
        if name == "gf":
            entry["sweep"]["num_steps_mean"] = float(np.mean(first.table["num_steps"]))
            entry["sweep"]["num_steps_max"] = int(np.max(first.table["num_steps"]))
        for way, fn in ways.items():
            times, got = single_runs(fn, S, budget)
            per_run = statistics.median(times)
            k = len(got)
            entry[way] = {
                "seeds_run": k,
                "per_seed_ms_median": 1e3 * per_run,
                "per_seed_ms_mean": 1e3 * sum(times) / k,
                "seconds_for_S": per_run * S,
                "scaled": k < S,
                "max_abs_diff_final_log_loss_vs_sweep": float(np.max(np.abs(finals[:k] - got))),
            }
            rows.append(
                {
                    "run": name,
                    "single runs": way,
                    "seeds run": k,
                    "ms/seed single": 1e3 * per_run,
                    "ms/seed sweep": 1e3 * sweep_s / S,
                    f"{S} single / sweep": per_run * S / sweep_s,
                    "|d final log L|": entry[way]["max_abs_diff_final_log_loss_vs_sweep"],
                }
            )
            entry[way]["single_over_sweep"] = per_run * S / sweep_s
        detail[name] = entry
        print(
            f"{name}: sweep of {S} seeds {sweep_s:.3f} s (first call {first_call:.1f} s)",
            flush=True,
        )
    print(C.table(rows, list(rows[0])))
    C.write_result(
        "seeds_one_program",
        args,
        {
            "seeds": S,
            "single_budget_seconds": budget,
            "problem": "EWN MLP 2-8-1 ReLU^2 on lin-sep (4 points), exponential loss; "
            "gf: plain time to t1 = 50, n_save 16; gd: 2,000 steps, lr 0.05",
            "runs": detail,
            "table": rows,
            "gpu": C.gpu_status(),
        },
    )


if __name__ == "__main__":
    main()
