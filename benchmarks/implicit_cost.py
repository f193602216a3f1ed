"""One implicit step's work in explicit steps, by model size, beside the default's estimate.

The estimate is the default solver's ``AutoSwitch.implicit_cost``
(``wnjax._solver.stiff.implicit_step_cost``).

``AutoSwitch`` hands back to the explicit method when an implicit step covers less time than
``implicit_cost`` explicit steps at their stability bound would, and waits ``implicit_cost``
explicit steps a trial step after a trial that did not pay; the estimate sets both. The flows:
EWN, bias-free 2-layer ReLU^2 MLPs ``d -> w -> 1`` on 30 points (labels ``sign(x_0 + x_1)``),
exponential loss, ``time="normalized"``, from where a default run reaches ``log L = -30``.
Kvaerno5 (``wnjax.stiff_solver(n)``, as the default uses it) and Tsit5 each take ``N`` and
``2N`` steps (``max_steps``, rejected ones included), timed in interleaved rounds after a
compiling call; a step's time is the difference over the ``N`` steps more (free of the fixed
cost of a call, ~2 ms), and the ratio of the two methods' is the implicit step's cost in
explicit steps (median over the rounds).

    python benchmarks/implicit_cost.py [--quick]
"""

from __future__ import annotations

import statistics
import warnings

import _common as C

N_POINTS = 30
STEPS = 300


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    C.setup(args)
    import diffrax
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import wnjax
    from wnjax._solver.stiff import implicit_step_cost

    if args.quick:
        sizes, steps, rounds = [(3, 6)], 40, 2
    else:
        sizes, steps, rounds = [(3, 6), (5, 8), (13, 12), (20, 16), (24, 15)], STEPS, 5

    rows = []
    for d, width in sizes:
        k_x, k_m = jax.random.split(jax.random.key(d))
        X = jax.random.normal(k_x, (N_POINTS, d))
        y = jnp.sign(X[:, 0] + X[:, 1])
        model = wnjax.ewn(wnjax.MLP(d, width, 2, activation="relu2", key=k_m))
        n = sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array)))
        start = wnjax.gradient_flow(
            model, X, y, time="normalized", t1=1e9, target_log_loss=-30.0, save_states=False
        )
        common = dict(
            time="normalized",
            t1=1e9,
            log_t0=float(start.final_log_t),
            n_save=2,
            diagnostics=False,
            save_states=False,
            throw=False,
        )

        def flow(solver, budget, model=start.final, X=X, y=y, common=common):
            with warnings.catch_warnings():  # a spent max_steps is the point here
                warnings.simplefilter("ignore", RuntimeWarning)
                r = wnjax.gradient_flow(model, X, y, solver=solver, max_steps=budget, **common)
            jax.block_until_ready(r.final)
            return r

        solvers = {"tsit5": diffrax.Tsit5(), "kvaerno5": wnjax.stiff_solver(n)}
        fns = {
            (name, budget): (lambda s=s, b=budget: flow(s, b))
            for name, s in solvers.items()
            for budget in (steps, 2 * steps)
        }
        taken = {key: int(fn().stats["num_steps"]) for key, fn in fns.items()}
        times = C.interleaved(fns, rounds=rounds)
        per_step = {
            name: [
                (b - a) / (taken[name, 2 * steps] - taken[name, steps])
                for a, b in zip(times[name, steps], times[name, 2 * steps])
            ]
            for name in solvers
        }
        ratios = [a / b for a, b in zip(per_step["kvaerno5"], per_step["tsit5"])]
        rows.append(
            {
                "d": d,
                "width": width,
                "n_params": n,
                "tsit5_step_us": statistics.median(per_step["tsit5"]) * 1e6,
                "kvaerno5_step_us": statistics.median(per_step["kvaerno5"]) * 1e6,
                "steps": {f"{name}_{budget}": v for (name, budget), v in taken.items()},
                "ratio": statistics.median(ratios),
                "ratio_rounds": C.summary(ratios),
                "implicit_step_cost": implicit_step_cost(n),
            }
        )
    cols = ["n_params", "tsit5_step_us", "kvaerno5_step_us", "ratio", "implicit_step_cost"]
    print(C.table(rows, cols))
    C.write_result(
        "implicit_cost",
        args,
        {
            "settings": {
                "model": "ewn(MLP(d, w, 2, relu2))",
                "points": N_POINTS,
                "time": "normalized",
                "start": "default run to log L = -30",
                "steps_per_call": steps,
                "rounds": rounds,
            },
            "rows": rows,
            "gpu": C.gpu_status(),
        },
    )


if __name__ == "__main__":
    main()
