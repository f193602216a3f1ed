"""Vmapped ReLU flows: the default solver under ``vmap`` against ``AutoSwitch`` there.

Under ``vmap`` a branch on a batched value runs both of its sides, so ``AutoSwitch`` pays for its
explicit and its implicit method on every step of every run of the batch. On a ReLU net, whose
smoothed field is stiff where the flow slides, ``gradient_flow`` under ``vmap`` defaults to
Kvaerno5 alone (``resolve_solver``). Both are timed on the same batch of seeds, one jitted
``vmap`` of ``wnjax.gradient_flow`` each (EWN ReLU MLPs, exponential loss, ``time="normalized"``
to a target, every other setting the default), in interleaved rounds; the first call (tracing,
compilation and a run) is reported apart. Reported: median seconds per batch, the median of the
per-round ratios, and the steps of each run.

    python benchmarks/vmapped_relu.py [--quick] [--rounds N]
"""

from __future__ import annotations

import _common as C

# (name, inputs, width, points, seeds, target log L)
PROBLEMS = [("5-8-1", 5, 8, 32, 6, -30.0)]
QUICK = [("3-4-1", 3, 4, 12, 2, -10.0)]


def batch_runs(d: int, width: int, n: int, seeds: int, target: float) -> dict:
    """``{solver: callable}``: the default and ``solver='auto'``, each one jitted ``vmap``."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import wnjax

    k_x, k_w = jax.random.split(jax.random.key(0))
    X = jax.random.normal(k_x, (n, d))
    y = jnp.sign(X @ jax.random.normal(k_w, (d,)))
    keys = jax.random.split(jax.random.key(1), seeds)

    def program(solver):
        def one(key):
            net = wnjax.ewn(wnjax.MLP(d, width, 2, activation="relu", key=key))
            r = wnjax.gradient_flow(
                net, X, y, time="normalized", target_log_loss=target, solver=solver, throw=False
            )
            return r.stats["num_steps"], r.reached_target

        fn = eqx.filter_jit(eqx.filter_vmap(one))

        def run():
            steps, reached = fn(keys)
            return jax.block_until_ready(steps), reached

        return run

    return {"default (Kvaerno5 under vmap)": program(None), "AutoSwitch": program("auto")}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    C.setup(args)
    rows = []
    for name, d, width, n, seeds, target in QUICK if args.quick else PROBLEMS:
        fns = batch_runs(d, width, n, seeds, target)
        first = {k: C.first_call_time(f) for k, f in fns.items()}
        steps = {k: f() for k, f in fns.items()}
        times = C.interleaved(fns, rounds=1 if args.quick else args.rounds)
        default, switch = fns
        rows.append(
            {
                "problem": f"EWN {name} ReLU, n = {n}, {seeds} seeds, to log L = {target:g}",
                "default_s": C.summary(times[default]),
                "autoswitch_s": C.summary(times[switch]),
                "speedup": C.summary([b / a for a, b in zip(times[default], times[switch])]),
                "first_call_s": first,
                "steps": {k: [int(s) for s in v[0]] for k, v in steps.items()},
                "reached": {k: [bool(r) for r in v[1]] for k, v in steps.items()},
            }
        )
        r = rows[-1]
        print(
            f"{r['problem']}: default {r['default_s']['median']:.2f} s, AutoSwitch "
            f"{r['autoswitch_s']['median']:.2f} s, speedup {r['speedup']['median']:.2f}x; "
            f"steps {r['steps'][default]} against {r['steps'][switch]}",
            flush=True,
        )
    C.write_result("vmapped_relu", args, {"gpu": C.gpu_status(), "rows": rows})


if __name__ == "__main__":
    main()
