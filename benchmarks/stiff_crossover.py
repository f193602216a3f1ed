"""Stiff steps with and without an n x n Jacobian: Kvaerno5 with dense LU against GMRES, by size.

Each implicit stage of ``Kvaerno5`` solves ``(I - a_ii h J) delta = F`` in a chord iteration
(``wnjax._solver.stiff.Chord``), ``J = -Hessian of log L`` for the loss-normalized gradient flow.
Dense LU materialises ``J`` once per step (``n`` Jacobian-vector products, ``O(n^3)``
factorisation); GMRES (``wnjax._solver.stiff.krylov_linear_solver``) applies it,
``~2 * restart + 3`` products per solve, ``~12`` solves per step. The flow: SWN, bias-free 2-layer
ReLU^2 MLP ``10 -> w -> 1`` (``12 w + 1`` parameters), 32 separable points, exponential loss,
``time="normalized"``, rtol 1e-8, atol 1e-10, from the state where an explicit (Tsit5) run reaches
``log L = -300``. There the Hessian's largest eigenvalue ``lambda_max`` (power iteration) bounds an
explicit step to ``3.3 / lambda_max``; the table gives ``h lambda_max`` for Kvaerno5's accepted
steps.

For each width both solvers take the same fixed number of steps through ``wnjax.gradient_flow``
(``max_steps``, first step ``1 / lambda_max``; the first call, with compilation, is reported
apart), timed in interleaved rounds; the per-step time is the median call time over the steps
taken (rejected ones included). The crossover is where the two per-step times meet (log-log
interpolation). Width 32 is measured again from a deeper, stiffer state (log L = -3000).
A ~10^5-parameter model (width 8334, from log L = -30) takes a few Krylov steps, where a dense
Jacobian alone would take ``8 n^2`` bytes (80 GB).

OpenBLAS, behind jaxlib's LU, runs single-threaded (``OPENBLAS_NUM_THREADS=1`` unless set): on
this shared 2-core VM its threads thrash under load (LU of 1000 x 1000: 0.42 s threaded against
0.04 s single-threaded, measured while other jobs ran).

    python benchmarks/stiff_crossover.py [--quick]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import math  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import _common as C  # noqa: E402

D_IN, N_POINTS = 10, 32
RTOL, ATOL = 1e-8, 1e-10
WARM_TARGET = -300.0


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    C.setup(args)
    import equinox as eqx
    import jax
    import jax.flatten_util
    import jax.numpy as jnp

    import wnjax
    from wnjax._solver import stiff as _stiff

    if args.quick:
        widths, dense_max, steps, rounds, big_width, warm = [8], 10**9, 3, 1, None, None
        depth_width, depth_targets = None, []
    else:
        widths, dense_max, steps, rounds = [4, 16, 32, 96, 256], 1200, 8, 3
        big_width, warm = 8334, WARM_TARGET
        depth_width, depth_targets = 32, [-3000.0]

    X = jax.random.normal(jax.random.key(0), (N_POINTS, D_IN))
    X = X.at[:, 0].set(jnp.where(X[:, 0] >= 0, X[:, 0] + 0.5, X[:, 0] - 0.5))
    y = jnp.sign(X[:, 0])
    loss = wnjax.get_loss("exponential")
    common = dict(
        time="normalized",
        t1=1e12,
        n_save=2,
        diagnostics=False,
        save_states=False,
        degree=3.0,
        throw=False,
        rtol=RTOL,
        atol=ATOL,
    )

    def flow(model, **kw):
        with warnings.catch_warnings():  # a spent max_steps is the point here, not a failure
            warnings.simplefilter("ignore", RuntimeWarning)
            r = wnjax.gradient_flow(model, X, y, **common, **kw)
        jax.block_until_ready(r.final_log_loss)
        return r

    def start(width, target):
        """The model and ``log t`` where Tsit5 reaches ``target`` (the initial model if None)."""
        model = wnjax.swn(wnjax.MLP(D_IN, width, 2, activation="relu2", key=jax.random.key(1)))
        n = sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array)))
        if target is None:
            return model, 0.0, n, float(loss.log_loss(model.batched(X), y))
        r = flow(model, solver="tsit5", target_log_loss=target, max_steps=10**6)
        return r.final, float(r.final_log_t), n, float(r.final_log_loss)

    def lambda_max(model, iters=40):
        """Largest eigenvalue of the Hessian of log L (power iteration on HVPs)."""
        params, static = eqx.partition(model, eqx.is_inexact_array)
        flat, unravel = jax.flatten_util.ravel_pytree(params)

        def log_l(v):
            return loss.log_loss(eqx.combine(unravel(v), static).batched(X), y)

        @jax.jit
        def power(v):
            def body(_, v):
                hv = jax.jvp(jax.grad(log_l), (flat,), (v,))[1]
                return hv / jnp.linalg.norm(hv)

            v = jax.lax.fori_loop(0, iters, body, v / jnp.linalg.norm(v))
            return jnp.vdot(v, jax.jvp(jax.grad(log_l), (flat,), (v,))[1])

        return float(power(jax.random.normal(jax.random.key(2), flat.shape)))

    rows = []
    big = None
    if big_width is not None:  # first, so the peak RSS is this run's and not a dense one's
        model, log_t0, n, log_l = start(big_width, -30.0)
        lam = lambda_max(model)
        solver = _stiff.stiff_solver(n, rtol=RTOL, atol=ATOL)
        kw = dict(solver=solver, log_t0=log_t0, max_steps=3, dt0=1.0 / lam)
        first, r = _first_call(lambda: flow(model, **kw))
        t = C.summary(C.interleaved({"krylov": lambda: flow(model, **kw)}, rounds=1)["krylov"])
        big = {
            "width": big_width,
            "n_params": n,
            "start_log_loss": log_l,
            "lambda_max": lam,
            "linear_solver": type(solver.root_finder.linear_solver).__name__,
            "steps": int(r.stats["num_steps"]),
            "accepted": int(r.stats["num_accepted_steps"]),
            "step_s": t["median"] / int(r.stats["num_steps"]),
            "first_call_s": first,
            "final_log_loss": float(r.final_log_loss),
            "ok_code": int(r.result_code),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "dense_jacobian_gb": 8 * (n + 1) ** 2 / 1e9,
        }
        print(
            f"n = {n}: Krylov Kvaerno5 {big['step_s']:.3g} s/step ({big['steps']} steps, "
            f"{big['accepted']} accepted), peak RSS {big['peak_rss_gb']:.2f} GB; a dense "
            f"Jacobian alone: {big['dense_jacobian_gb']:.0f} GB",
            flush=True,
        )

    def measure(width, target):
        """Both solvers' per-step time from the state where Tsit5 reaches ``target``."""
        model, log_t0, n, log_l = start(width, target)
        lam = lambda_max(model)
        solvers = {"krylov": _stiff.stiff_solver(n, rtol=RTOL, atol=ATOL, threshold=0)}
        if n <= dense_max:
            solvers["dense"] = _stiff.stiff_solver(n, rtol=RTOL, atol=ATOL, threshold=n)
        # From a stiff state Kvaerno5's step is ~1 / lambda_max; from the initial model
        # (--quick), diffrax picks the first step.
        kw = dict(log_t0=log_t0, max_steps=steps, dt0=None if target is None else 1.0 / lam)
        fns = {k: (lambda s=s: flow(model, solver=s, **kw)) for k, s in solvers.items()}
        first = {k: _first_call(f) for k, f in fns.items()}  # deterministic: stats from here
        times = C.interleaved(fns, rounds=rounds)
        row = {"width": width, "n_params": n, "start_log_loss": log_l, "lambda_max": lam}
        for k, (first_s, r) in first.items():
            taken, accepted = int(r.stats["num_steps"]), int(r.stats["num_accepted_steps"])
            row[k] = {
                "step_s": statistics.median(times[k]) / taken,
                "steps": taken,
                "accepted": accepted,
                "first_call_s": first_s,
                "h_lambda_max": float(r.final_time) / max(accepted, 1) * lam,
                "final_log_loss": float(r.final_log_loss),
            }
        if "dense" in row:
            row["dense_over_krylov"] = row["dense"]["step_s"] / row["krylov"]["step_s"]
            row["final_log_loss_gap"] = abs(
                row["dense"]["final_log_loss"] - row["krylov"]["final_log_loss"]
            )
        print(C.table([_flat(row)], list(_flat(row))), flush=True)
        return row

    rows = [measure(width, warm) for width in widths]
    # A deeper (stiffer) state of one width: the compiled programs are reused (numbers traced).
    depth = [measure(depth_width, t) for t in depth_targets]

    crossover = _crossover(rows)
    print(C.table([_flat(r) for r in rows], list(_flat(rows[0]))))
    if depth:
        print(f"width {depth_width}, deeper states:")
        print(C.table([_flat(r) for r in depth], list(_flat(depth[0]))))
    print(
        f"crossover: {crossover} (module constant "
        f"DENSE_JACOBIAN_MAX_PARAMS = {_stiff.DENSE_JACOBIAN_MAX_PARAMS})"
    )
    C.write_result(
        "stiff_crossover",
        args,
        {
            "settings": {
                "model": f"swn(MLP({D_IN}, w, 2, relu2))",
                "points": N_POINTS,
                "loss": "exponential",
                "time": "normalized",
                "rtol": RTOL,
                "atol": ATOL,
                "start": (f"Tsit5 run to log L = {warm}" if warm is not None else "initial model"),
                "steps_per_call": steps,
                "rounds": rounds,
                "krylov": {
                    "solver": "GMRES",
                    "restart": _stiff.KRYLOV_RESTART,
                    "forcing": _stiff.KRYLOV_FORCING,
                    "max_restarts": _stiff.KRYLOV_MAX_RESTARTS,
                },
                "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
            },
            "rows": rows,
            "deeper_states": depth,
            "crossover": crossover,
            "dense_jacobian_max_params": _stiff.DENSE_JACOBIAN_MAX_PARAMS,
            "large_model": big,
            "gpu": C.gpu_status(),
        },
    )


def _flat(row: dict) -> dict:
    out = {
        "n_params": row["n_params"],
        "log_L": row["start_log_loss"],
        "lambda_max": row["lambda_max"],
    }
    for k in ("dense", "krylov"):
        if k in row:
            out[f"{k}_ms/step"] = 1e3 * row[k]["step_s"]
            out[f"{k}_steps"] = f"{row[k]['accepted']}/{row[k]['steps']}"
            out[f"{k}_h*lam"] = row[k]["h_lambda_max"]
    if "dense_over_krylov" in row:
        out["dense/krylov"] = row["dense_over_krylov"]
    return out


def _first_call(fn):
    """Wall time of the first call (compilation included) and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _crossover(rows: list[dict]) -> dict:
    """Where dense and Krylov per-step times meet: the first sign change of
    ``log(dense / krylov)`` over the sizes, interpolated linearly in ``log n``."""
    pts = [(r["n_params"], r["dense_over_krylov"]) for r in rows if "dense_over_krylov" in r]
    for (n0, q0), (n1, q1) in zip(pts, pts[1:]):
        if q0 < 1 <= q1:
            f = math.log(q0) / (math.log(q0) - math.log(q1))
            return {"params": math.exp(math.log(n0) + f * math.log(n1 / n0)), "between": [n0, n1]}
    if pts and all(q >= 1 for _, q in pts):
        return {"params": None, "note": f"Krylov faster at every size from {pts[0][0]}"}
    return {"params": None, "note": "dense faster at every size measured"}


if __name__ == "__main__":
    main()
