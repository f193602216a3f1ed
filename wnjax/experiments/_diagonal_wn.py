"""``wnjax reproduce diagonal-wn``: sparse recovery with diagonal linear nets, plain vs polar WN.

Chou, Rauhut, Ward (2023), docs/theory.md §5. Compressed sensing ``y = A x*``
(``A_ij ~ N(0, 1/N)``, ``x*`` ``k``-sparse), loss ``1/2 ||A x - y||^2``, net ``x = u^L - v^L``
from ``u = v = alpha``. Four methods: plain GD, plain GF, polar WN-GD (``polar_sgd``, retraction
onto the sphere) and the polar WN flow (``polar_rates``). GD runs are vmapped over seeds, one
compiled program per method, depth and budget; flows run seed by seed (each solve stops at a
target log loss). ``speed_ladder`` times GD to its own limit at the smallest alpha.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import wnjax._runtime.interrupt as _interrupt
from wnjax._dynamics.descent import STOP_DIVERGED, STOP_TARGET, prepare_run, traced_run
from wnjax._dynamics.flow import gradient_flow
from wnjax._runtime.errors import InvalidInput
from wnjax.diagonal._nets import (
    diagonal_net,
    diagonal_signal,
    invariant_spread,
    polar_wn,
    relative_error,
    sparse_problem,
    uv_ratio,
)
from wnjax.diagonal._polar import polar_rates, polar_sgd
from wnjax.diagonal._sparse import l1_interpolator, min_l2_interpolator, q_alpha_interpolator
from wnjax.experiments._finished import finished_runs
from wnjax.experiments._options import Common, option
from wnjax.experiments._report import (
    finite,
    judge,
    median_bars,
    not_answered,
    render_verdicts,
    seed_quantiles,
    table,
    write_outputs,
)
from wnjax.experiments._runner import in_parallel

DESCRIPTION = "diagonal linear nets: polar WN vs plain GD/GF for sparse recovery across init scales"

METHODS = ("plain GD", "plain GF", "WN-GD", "WN-GF")
# each method's line in the figures: GD solid with circles, GF dashed with squares
STYLES = {
    "plain GD": dict(color="tab:blue", marker="o"),
    "plain GF": dict(color="tab:cyan", marker="s", ls="--"),
    "WN-GD": dict(color="tab:red", marker="o"),
    "WN-GF": dict(color="tab:orange", marker="s", ls="--"),
}


@dataclasses.dataclass(frozen=True)
class Options(Common):
    """diagonal-wn's options, besides ``seeds``, ``out`` and ``full`` (``Common``; ``full`` runs
    at least 100,000 GD steps).

    - dim: the signal dimension ``d``;
    - measurements: the number of measurements ``N``;
    - sparsity: the sparsity ``k`` of ``x*``;
    - alphas: the init scales, comma-separated;
    - steps: the number of GD steps;
    - radial_rate: ``eta_r`` of WN-GD and the WN flow;
    - angular_rate: ``eta_theta`` of WN-GD and the WN flow;
    - target_log_loss: the ``log L`` at which the flows stop;
    - speed_steps: the iteration budget of each run of the speed comparison (``speed_ladder``).
    """

    dim: int = option(100, "signal dimension d", positive=True)
    measurements: int = option(40, "number of measurements N", positive=True)
    sparsity: int = option(5, "sparsity k of x*", positive=True)
    alphas: str = option("0.01,0.03,0.1,0.3,1,3,10", "init scales")
    steps: int = option(20_000, "GD steps (--full: 100,000)", positive=True)
    radial_rate: float = option(1e-2, "eta_r of WN-GD/GF", positive=True)
    angular_rate: float = option(1e-2, "eta_theta of WN-GD/GF", positive=True)
    target_log_loss: float = option(-30.0, "where flows stop")
    speed_steps: int = option(1_500_000, "iteration budget of each speed run", positive=True)

    def __post_init__(self):
        super().__post_init__()
        try:
            ok = all(float(a) > 0 for a in self.alphas.split(","))
        except ValueError:
            ok = False
        if not ok:
            raise InvalidInput(
                f"alphas must be comma-separated positive numbers such as "
                f"'0.1,1,10', got {self.alphas!r}."
            )


def plain_rate(A: np.ndarray, y: np.ndarray, alpha: float, depth: int) -> float:
    """Plain-GD step ``0.5 / (lambda_max(A^T A) L^2 s^(2L-2))``,
    ``s = max(alpha, ||A^T y||_inf^(1/L))``.

    ``L^2 s^(2L-2) lambda_max`` bounds the loss curvature in ``w`` near init and near ``x*``.
    """
    lam = float(np.linalg.eigvalsh(A @ A.T)[-1])
    s = max(alpha, float(np.max(np.abs(A.T @ y))) ** (1.0 / depth))
    return 0.5 / (lam * depth**2 * s ** (2 * depth - 2))


def gd_run(
    p0,
    optimizer,
    A,
    y,
    x_ref,
    num_steps: int,
    n_record: int = 200,
    target_log_loss=None,
    levels=(1e-3, 1e-6),
    budget=None,
) -> dict:
    """GD on ``L = 1/2 ||A x - y||^2`` (``theta <- theta + optimizer.update(grad L, ...)``, the GD
    engine with the monitor ``e = ||x - x_ref|| / ||x_ref||``), traceable under ``jit``/``vmap``.

    **Arguments:** `p0` (a diagonal net, plain or parameterized), `optimizer` (a ready optax
    transformation), `A`, `y`, `x_ref`, `num_steps` (the budget), `n_record`,
    `target_log_loss` (stop at this ``log L``; ``None``: run the budget), `levels` (of ``e``),
    `budget` (a traced step budget at most ``num_steps``; ``None``: ``num_steps``).

    **Returns:** a dict: `steps` and `errs` (``e`` after ``steps[j] = (j + 1) stride`` steps,
    ``stride = max(num_steps // n_record, 1)``; a stopped run repeats its last value), `first`
    (per level, the first step with ``e`` at or below it; ``-1``: never), `x` (the final
    signal), `iterations` (steps taken), `stop` (the engine's stop code: 1 target, 2 budget,
    3 diverged).
    """
    stride = max(num_steps // n_record, 1)
    n = num_steps // stride

    def error(model, X, Y):
        return relative_error(diagonal_signal(model), x_ref)

    carry, static, X, Y, numbers, key, statics = prepare_run(
        p0,
        A,
        y,
        num_steps=n * stride,
        learning_rate=None,
        optimizer=optimizer,
        hyperparams=None,
        loss="square",
        target_log_loss=target_log_loss,
        batch_size=None,
        key=None,
        objective="loss",
        n_save=1,
        save_states=False,
        chunk_size=n * stride,
        degree=1.0,
        diverge_above=np.inf,
        diagnostics=False,
        check_initial_loss=False,
        checkpoints=levels,
        summarize=lambda m, X, Y: {"error": error(m, X, Y)},
        save_at=stride * np.arange(1, n + 1),
        standard=False,
        monitor=error,
    )
    if budget is not None:
        numbers["num_steps"] = jnp.minimum(jnp.asarray(budget, jnp.result_type(int)), n * stride)
    carry = traced_run(carry, static, X, Y, numbers, key, statics)
    saved = jnp.arange(n) < carry["save_idx"]
    errs = carry["saved"]["error"][:n]
    last = errs[jnp.maximum(carry["save_idx"] - 1, 0)]
    return {
        "steps": stride * jnp.arange(1, n + 1),
        "errs": jnp.where(saved, errs, last),
        "first": carry["ck_steps"],
        "x": diagonal_signal(eqx.combine(carry["params"], static)),
        "iterations": carry["accepted"],
        "stop": carry["stop"],
    }


def gd_trace(p0, optimizer, A, y, x_star, num_steps: int, n_record: int = 200):
    """``gd_run`` for the full budget: ``(steps, errs, first)``, ``errs[j] = ||x - x*||/||x*||``
    after ``steps[j]`` steps, ``first[j]`` the first step with the error at or below
    ``(1e-3, 1e-6)[j]`` (``-1``: never)."""
    r = gd_run(p0, optimizer, A, y, x_star, num_steps, n_record)
    return r["steps"], r["errs"], r["first"]


@functools.partial(jax.jit, static_argnames=("method", "depth", "num_steps", "n_record"))
def _gd_batch(
    A, y, x_ref, alpha, rates, target=None, budget=None, *, method, depth, num_steps, n_record=200
):
    """``gd_run`` vmapped over seeds: per seed ``A``, ``y``, ``x_ref`` and ``rates = (eta,
    eta)`` (plain GD, step ``eta``) or ``(eta_r, eta_theta)`` (WN-GD), from
    ``u = v = alpha``. ``alpha``, the rates, the target and the budget (at most ``num_steps``)
    are traced: one program per ``(method, depth, num_steps)``."""

    def one(A, y, x_ref, rate):
        net = diagonal_net(A.shape[1], depth=depth, alpha=alpha)
        if method == "WN-GD":
            p0, opt = polar_wn(net), polar_sgd(rate[0], rate[1])
        else:
            p0, opt = net, optax.sgd(rate[0])
        return gd_run(p0, opt, A, y, x_ref, num_steps, n_record, target, budget=budget)

    return jax.vmap(one)(A, y, x_ref, rates)


def _rates(method, lr, options) -> np.ndarray:
    """Per-seed ``(eta, eta)`` of plain GD or ``(eta_r, eta_theta)`` of WN-GD, shape
    ``(seeds, 2)``."""
    if method == "WN-GD":
        return np.tile([options.radial_rate, options.angular_rate], (len(lr), 1))
    return np.stack([lr, lr], axis=1)


def _gf_runs(A, y, xs, alpha, depth, method, er, et, target, x_q=None):
    errs, spreads, ok, to_q = [], [], [], []
    for i in range(A.shape[0]):
        net = diagonal_net(A.shape[-1], depth=depth, alpha=alpha)
        kw = dict(loss="square", t1=1e12, target_log_loss=target, max_steps=200_000)
        kw.update(throw=False, n_save=4, save_states=False, diagnostics=False)
        if method == "WN-GF":
            p = polar_wn(net)
            r = gradient_flow(p, A[i], y[i], rate=polar_rates(er, et), **kw)
            spreads.append(float(invariant_spread(uv_ratio(r.final, p))) if depth == 2 else np.nan)
        else:
            r = gradient_flow(net, A[i], y[i], **kw)
        errs.append(float(relative_error(diagonal_signal(r.final), xs[i])))
        ok.append(bool(float(r.final_log_loss) <= target + 1e-6))
        if x_q is not None:
            to_q.append(float(relative_error(diagonal_signal(r.final), x_q[i])))
    return np.asarray(errs), np.asarray(spreads), np.asarray(ok), np.asarray(to_q)


def _stats(v) -> dict:
    """Mean and standard deviation over the finite values (NaN where there are none)."""
    v = np.asarray(v, float)
    return {"mean": finite(np.mean, v), "std": finite(np.std, v), "values": v.tolist()}


def _first_hit_stats(first) -> dict:
    first = np.asarray(first)
    hit = first[first >= 0]
    return {
        "reached": int(hit.size),
        "of": int(first.size),
        "mean_steps": float(hit.mean()) if hit.size else None,
        "std_steps": float(hit.std()) if hit.size else None,
    }


def sweep_point(problem, alpha, depth, options, methods=METHODS) -> dict:
    """All methods at one ``(alpha, L = depth)``, over the seeds of ``problem = (A, y, x*)``, with
    the rates, GD steps and flow target of ``options`` (``Options``)."""
    A, y, xs = problem
    out = {}
    lr = [plain_rate(np.asarray(a), np.asarray(b), alpha, depth) for a, b in zip(A, y)]
    for method in methods:
        if method.endswith("GD"):
            r = _gd_batch(
                A,
                y,
                xs,
                alpha,
                _rates(method, lr, options),
                method=method,
                depth=depth,
                num_steps=options.steps,
            )
            steps, errs, first = r["steps"], np.asarray(r["errs"]), r["first"]
            diverged = np.asarray(r["stop"]) == STOP_DIVERGED
            out[method] = {
                "error": _stats(np.where(diverged, np.nan, errs[:, -1])),
                "to_1e-3": _first_hit_stats(first[:, 0]),
                "to_1e-6": _first_hit_stats(first[:, 1]),
                "trace_steps": np.asarray(steps[0]).tolist(),
                # the 10%, 50% and 90% quantiles over the seeds at each trace step
                "trace_quantiles": [q.tolist() for q in seed_quantiles(errs)],
                "diverged": int(diverged.sum()),
            }
            if method == "plain GD":
                out[method]["learning_rate"] = _stats(lr)
        else:
            x_q = None
            if method == "plain GF" and depth == 2:
                x_q = [
                    q_alpha_interpolator(np.asarray(a), np.asarray(b), alpha) for a, b in zip(A, y)
                ]
            errs, spreads, ok, to_q = _gf_runs(
                A,
                y,
                xs,
                alpha,
                depth,
                method,
                options.radial_rate,
                options.angular_rate,
                options.target_log_loss,
                x_q,
            )
            out[method] = {"error": _stats(errs), "reached_target": int(ok.sum())}
            if x_q is not None:
                out[method]["to_q_alpha"] = _stats(to_q)
            if method == "WN-GF" and depth == 2:
                out[method]["invariant_spread_max"] = float(np.nanmax(spreads))
    return out


SPEED_LOG_LOSS = -40.0
"""A speed run has converged once ``log L <= SPEED_LOG_LOSS``: its iterate is then within ~4e-9
(relative) of its limit (measured at d = 100, N = 40, alpha = 0.01 against runs to
``log L = -66``), far below the 1e-6 it is timed to."""
SPEED_RUNGS = {"plain GD": 6, "WN-GD": 5}


def speed_ladder(problem, alpha, options) -> dict:
    """Iterations of plain GD and WN-GD to a relative distance ``1e-3`` / ``1e-6`` from the
    point each converges to, at ``u = v = alpha`` (``L = 2``), on a ladder of step sizes.

    Rung ``k`` multiplies the base steps by ``2^k`` (plain GD: ``plain_rate``; WN-GD:
    ``(eta_r, eta_theta)`` of ``options``). Per rung, vmapped over the seeds:

    1. run to ``log L <= SPEED_LOG_LOSS`` (converged); the final signal ``x_inf`` is the limit;
    2. run again (the same iterates) with the monitor ``||x - x_inf|| / ||x_inf||``: the first
       iterations at or below ``1e-3`` and ``1e-6``.

    Budgets: ``options.speed_steps`` for the first rung, then twice the previous converged
    rung's most iterations (halving the iterations is what doubling the step gives). The ladder
    stops at the first rung, after a converged one, where a seed does not converge.

    **Returns:** per method, ``rungs`` (multiplier, steps, converged/diverged counts, iterations,
    the limit's error to ``x*`` and, plain GD, its distance to the ``Q_alpha`` minimizer).
    """
    A, y, xs = problem
    lr = np.array([plain_rate(np.asarray(a), np.asarray(b), alpha, 2) for a, b in zip(A, y)])
    x_q = np.stack(
        [q_alpha_interpolator(np.asarray(a), np.asarray(b), alpha) for a, b in zip(A, y)]
    )
    out = {
        "alpha": alpha,
        "budget": options.speed_steps,
        "target_log_loss": SPEED_LOG_LOSS,
        "q_alpha_error": np.asarray(relative_error(x_q, xs)).tolist(),
    }
    kw = dict(depth=2, num_steps=options.speed_steps, n_record=20)
    for method in ("plain GD", "WN-GD"):
        base = _rates(method, lr, options)
        rungs, budget = [], options.speed_steps
        for k in range(SPEED_RUNGS[method]):
            rates = base * 2.0**k
            r1 = _gd_batch(A, y, xs, alpha, rates, SPEED_LOG_LOSS, budget, method=method, **kw)
            stop = np.asarray(r1["stop"])
            rung = {
                "multiplier": 2.0**k,
                "rate": rates[:, 0].tolist(),
                "budget": budget,
                "converged": int(np.sum(stop == STOP_TARGET)),
                "diverged": int(np.sum(stop == STOP_DIVERGED)),
                "of": int(stop.size),
                "iterations_to_target": np.asarray(r1["iterations"]).tolist(),
            }
            rungs.append(rung)
            if rung["converged"] < stop.size:
                if any("to_1e-6" in r for r in rungs):
                    break
                continue
            x_inf = np.asarray(r1["x"])
            r2 = _gd_batch(A, y, x_inf, alpha, rates, SPEED_LOG_LOSS, budget, method=method, **kw)
            first = np.asarray(r2["first"])
            rung["to_1e-3"], rung["to_1e-6"] = first[:, 0].tolist(), first[:, 1].tolist()
            rung["limit_error"] = np.asarray(relative_error(x_inf, xs)).tolist()
            rung["limit_to_q_alpha"] = np.asarray(relative_error(x_inf, x_q)).tolist()
            budget = min(options.speed_steps, 2 * int(np.max(r1["iterations"])) + 1000)
        out[method] = {"rungs": rungs}
    return out


def _problems(seed_keys, d, N, k):
    return jax.vmap(lambda key: sparse_problem(key, d, N, k))(seed_keys)


def _references(problem, alphas) -> dict:
    A, y, xs = (np.asarray(t) for t in problem)
    l1 = [float(relative_error(l1_interpolator(a, b), x)) for a, b, x in zip(A, y, xs)]
    l2 = [float(relative_error(min_l2_interpolator(a, b), x)) for a, b, x in zip(A, y, xs)]
    q = {
        str(al): _stats(
            [relative_error(q_alpha_interpolator(a, b, al), x) for a, b, x in zip(A, y, xs)]
        )
        for al in alphas
    }
    return {"l1": _stats(l1), "min_l2": _stats(l2), "q_alpha": q}


def _plot(metrics, alphas, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(metrics["alpha_sweep"][str(alphas[0])][METHODS[0]]["error"]["values"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        v = [metrics["alpha_sweep"][str(a)][method]["error"]["values"] for a in alphas]
        median_bars(
            ax, alphas, np.maximum(np.array(v, float).T, 1e-17), label=method, **STYLES[method]
        )
    q = [metrics["references"]["q_alpha"][str(a)]["values"] for a in alphas]
    ax.plot(alphas, np.nanmedian(q, 1), "k:", lw=2, zorder=5, label="Q_alpha minimizer (median)")
    ax.axhline(
        np.nanmedian(metrics["references"]["min_l2"]["values"]),
        color="gray",
        ls="--",
        label="min-l2",
    )
    ax.set(xscale="log", yscale="log", xlabel="init scale alpha", ylabel="||x - x*|| / ||x*||")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "error_vs_alpha.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, a in zip(axes, (alphas[0], 1.0 if 1.0 in alphas else alphas[-1])):
        for method in ("plain GD", "WN-GD"):
            color = STYLES[method]["color"]
            r = metrics["alpha_sweep"][str(a)][method]
            low, median, high = (np.array(q, float) for q in r["trace_quantiles"])
            many = f" (median of {n})" if n > 1 else ""
            ax.plot(r["trace_steps"], median, color=color, label=method + many)
            if n > 1:
                ax.fill_between(r["trace_steps"], low, high, color=color, alpha=0.2, lw=0)
        ax.set(xscale="log", yscale="log", xlabel="GD step", title=f"alpha = {a}")
        ax.legend()
    axes[0].set_ylabel("||x - x*|| / ||x*||")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "error_vs_steps.png"), dpi=120)
    plt.close(fig)

    for name, key, xlabel in (
        ("depth", "depth_sweep", "depth L"),
        ("sparsity", "sparsity_sweep", "sparsity k"),
    ):
        table = metrics[key]
        fig, axes = plt.subplots(1, len(table["alphas"]), figsize=(5 * len(table["alphas"]), 4))
        for ax, a in zip(np.atleast_1d(axes), table["alphas"]):
            xs_ = table["values"]
            for method in METHODS:
                v = [table["results"][f"{x}|{a}"][method]["error"]["values"] for x in xs_]
                median_bars(
                    ax, xs_, np.maximum(np.array(v, float).T, 1e-17), label=method, **STYLES[method]
                )
            ax.set(
                yscale="log",
                xticks=xs_,
                xlabel=xlabel,
                ylabel="||x - x*|| / ||x*||",
                title=f"alpha = {a}",
            )
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"error_vs_{name}.png"), dpi=120)
        plt.close(fig)


def _fmt(r) -> str:
    return f"{r['mean']:.3g} ± {r['std']:.2g}"


def _report(metrics, alphas, options) -> str:
    sweep = metrics["alpha_sweep"]
    ref = metrics["references"]
    lines = [
        "# Diagonal linear nets with weight normalization (Chou, Rauhut, Ward 2023)",
        "",
        f"d = {options.dim}, N = {options.measurements}, k = {options.sparsity}, {options.seeds} "
        f"seeds (mean ± std), {options.steps} GD steps, WN rates eta_r = {options.radial_rate}, "
        f"eta_theta = {options.angular_rate}; flows stop at log L = {options.target_log_loss}.",
        "",
        "Conventions (ours, docs/theory.md §5; the paper's body was not available): "
        "A_ij ~ N(0, 1/N); x* has a uniform random support and N(0,1) nonzeros; loss "
        "1/2||Ax - y||^2 (a sum); x = u^L - v^L, u(0) = v(0) = alpha; polar WN is SWN of the "
        "single neuron w = (u, v) = r theta with ||theta|| = 1; WN-GD retracts theta onto the "
        "sphere after each step; plain-GD step 0.5/(lambda_max(A^T A) L^2 s^(2L-2)), "
        "s = max(alpha, ||A^T y||_inf^(1/L)).",
        "",
        f"References: l1 (linprog) error {_fmt(ref['l1'])}; min-l2 error {_fmt(ref['min_l2'])}.",
        "",
        "| alpha | Q_alpha min. | plain GD | plain GF | WN-GD | WN-GF |",
        "|---|---|---|---|---|---|",
    ]
    for a in alphas:
        row = sweep[str(a)]
        lines.append(
            f"| {a} | {_fmt(ref['q_alpha'][str(a)])} | "
            + " | ".join(_fmt(row[m]["error"]) for m in METHODS)
            + " |"
        )
    lines += [
        "",
        "Steps of GD to reach a relative error (to x*) of 1e-3 / 1e-6 (runs that reached it):",
        "",
    ]
    lines += [
        "| alpha | plain GD 1e-3 | WN-GD 1e-3 | plain GD 1e-6 | WN-GD 1e-6 |",
        "|---|---|---|---|---|",
    ]

    def hit(r):
        if r["reached"]:
            return f"{r['mean_steps']:.0f} ({r['reached']}/{r['of']})"
        return f"never (0/{r['of']})"

    for a in alphas:
        row = sweep[str(a)]
        lines.append(
            f"| {a} | {hit(row['plain GD']['to_1e-3'])} | {hit(row['WN-GD']['to_1e-3'])} | "
            f"{hit(row['plain GD']['to_1e-6'])} | {hit(row['WN-GD']['to_1e-6'])} |"
        )
    spread = [sweep[str(a)]["WN-GF"].get("invariant_spread_max", np.nan) for a in alphas]
    lines += [
        "",
        f"Invariant (L = 2): max over alpha and seeds of max_i/min_i (u_i v_i(t)/u_i v_i(0)) - 1 "
        f"along the WN flow at its end: {np.nanmax(spread):.2e}.",
        "",
        "## Verdicts",
        "",
        *render_verdicts(metrics["verdicts"]),
        "",
        *_speed_lines(metrics),
    ]
    for key, title in (("depth_sweep", "Depth sweep"), ("sparsity_sweep", "Sparsity sweep")):
        t = metrics[key]
        lines += [
            "",
            f"## {title}",
            "",
            "| value | alpha | " + " | ".join(METHODS) + " |",
            "|---" * 6 + "|",
        ]
        for v in t["values"]:
            for a in t["alphas"]:
                r = t["results"][f"{v}|{a}"]
                lines.append(
                    f"| {v} | {a} | " + " | ".join(_fmt(r[m]["error"]) for m in METHODS) + " |"
                )
    lines += [
        "",
        "Figures: error_vs_alpha.png, error_vs_steps.png, error_vs_depth.png, "
        "error_vs_sparsity.png.",
    ]
    return "\n".join(lines) + "\n"


def _mean(v) -> float:
    v = np.asarray(v, float)
    return float(np.nanmean(v)) if np.any(np.isfinite(v)) else np.nan


def _speed_summary(metrics) -> dict:
    """Per method: the rung at the base steps, and the fastest converged rung that keeps the
    bias of the method's flow (every seed's limit error at most ``2x`` that of plain GF resp.
    the WN flow at the same alpha)."""
    sp = metrics["speed"]
    row = metrics["alpha_sweep"][str(sp["alpha"])]
    flow = {
        "plain GD": row["plain GF"]["error"]["values"],
        "WN-GD": row["WN-GF"]["error"]["values"],
    }
    out = {}
    for method in ("plain GD", "WN-GD"):
        rungs = sp[method]["rungs"]
        done = [r for r in rungs if "to_1e-6" in r]
        kept = [r for r in done if all(e <= 2 * f for e, f in zip(r["limit_error"], flow[method]))]
        fastest = min(done, key=lambda r: _mean(r["to_1e-6"])) if done else None
        out[method] = {
            "base": rungs[0] if "to_1e-6" in rungs[0] else None,
            "best_kept": min(kept, key=lambda r: _mean(r["to_1e-6"])) if kept else None,
            "fastest": fastest,
            "flow_error": _mean(flow[method]),
        }
    return out


def _verdicts(metrics, alphas) -> list[dict]:
    sweep = metrics["alpha_sweep"]
    l2 = metrics["references"]["min_l2"]["mean"]
    big = [a for a in alphas if a >= 1]

    def errs(method, among):
        return {a: sweep[str(a)][method]["error"]["mean"] for a in among}

    def listing(d):
        return ", ".join(f"alpha={a:g}: {e:.3g}" for a, e in d.items())

    out = []
    to_q = [v for a in alphas for v in sweep[str(a)]["plain GF"]["to_q_alpha"]["values"]]
    out.append(
        judge(
            max(to_q) <= 1e-3,
            "plain GF (L = 2) converges to the Q_alpha minimizer",
            f"max over alphas and seeds of ||x - x_Q|| / ||x_Q|| = {max(to_q):.1e} (criterion "
            "<= 1e-3; x_Q by Newton on the dual)",
        )
    )
    if big:
        plain = {m: errs(m, big) for m in ("plain GD", "plain GF")}
        lost = all(e >= 0.5 * l2 for d in plain.values() for e in d.values())
        out.append(
            judge(
                lost,
                "plain GD/GF lose the sparse bias at large scale (alpha >= 1)",
                f"errors near the min-l2 error {l2:.3g} (criterion >= {0.5 * l2:.3g}): plain GD "
                f"{listing(plain['plain GD'])}; plain GF {listing(plain['plain GF'])}",
            )
        )
        wn_gd, wn_gf = errs("WN-GD", big), errs("WN-GF", big)
        good = ", ".join(
            f"alpha={a:g}: {np.sum(np.asarray(sweep[str(a)]['WN-GD']['error']['values']) <= 1e-2)}"
            f"/{len(sweep[str(a)]['WN-GD']['error']['values'])}"
            for a in big
        )
        out.append(
            judge(
                all(e <= 1e-2 for e in wn_gd.values()),
                "WN-GD keeps a sparse bias at large scale (alpha >= 1)",
                f"mean error <= 1e-2 at every alpha >= 1: {listing(wn_gd)}; seeds at or below "
                "1e-2: "
                f"{good}",
            )
        )
        out.append(
            judge(
                all(e <= 1e-2 for e in wn_gf.values()),
                "the WN gradient flow keeps a sparse bias at large scale (alpha >= 1)",
                f"mean error <= 1e-2 at every alpha >= 1: {listing(wn_gf)}; from u(0) = v(0) and "
                "eta_r = eta_theta the flow ends near min-l2, so the robustness of WN-GD comes "
                "from "
                "its discrete steps",
            )
        )
    spread = [sweep[str(a)]["WN-GF"].get("invariant_spread_max", np.nan) for a in alphas]
    out.append(
        judge(
            np.nanmax(spread) <= 1e-5,
            "L = 2, WN flow: all u_i v_i shrink by one common factor (derived invariant)",
            f"max_i/min_i of u_i v_i(t)/u_i v_i(0) - 1 at the end, max over alphas and seeds: "
            f"{np.nanmax(spread):.1e} (criterion <= 1e-5)",
        )
    )
    out.append(_speed_verdict(metrics))
    return out


def _speed_verdict(metrics) -> dict:
    sp = metrics["speed"]
    a0, summary = sp["alpha"], _speed_summary(metrics)
    claim = (
        f"WN-GD converges in fewer iterations than plain GD at small scale "
        f"(alpha = {a0:g}; iterations to relative error 1e-6)"
    )
    p, w = summary["plain GD"], summary["WN-GD"]
    floor = (
        f"1e-6 of x* is out of reach at any budget and step: the limits' errors are "
        f"{_mean(sp['q_alpha_error']):.3g} (Q_alpha minimizer, plain GF's limit) and "
        f"{w['flow_error']:.3g} (WN flow), so iterations are counted to 1e-6 of each "
        "run's own limit"
    )

    def it(r):
        return f"{_mean(r['to_1e-6']):.0f} (x{r['multiplier']:g})"

    parts = [floor]
    if p["base"] and w["base"]:
        parts.append(f"at the base steps: plain GD {it(p['base'])}, WN-GD {it(w['base'])}")
    if p["fastest"] is not None and p["fastest"] is not p["best_kept"]:
        parts.append(
            f"plain GD's fastest rung {it(p['fastest'])} ends at error "
            f"{_mean(p['fastest']['limit_error']):.3g}, not its flow's bias"
        )
    if p["best_kept"] is None or w["best_kept"] is None:
        return not_answered(
            claim,
            "; ".join(parts + ["no converged rung keeps the flow's bias for one of the methods"]),
        )
    pb, wb = p["best_kept"], w["best_kept"]
    ratio = _mean(pb["to_1e-6"]) / _mean(wb["to_1e-6"])
    parts.append(
        f"fastest rungs that keep the flow's bias: plain GD {it(pb)}, WN-GD {it(wb)} "
        f"(ratio {ratio:.2f}; criterion: WN-GD fewer); limit errors "
        f"{_mean(pb['limit_error']):.3g} vs {_mean(wb['limit_error']):.3g}"
    )
    return judge(ratio > 1, claim, "; ".join(parts))


def _speed_lines(metrics) -> list[str]:
    sp = metrics["speed"]
    rows = []
    for method in ("plain GD", "WN-GD"):
        for r in sp[method]["rungs"]:
            done = "to_1e-6" in r
            rows.append(
                [
                    method,
                    f"x{r['multiplier']:g}",
                    f"{_mean(r['rate']):.3g}",
                    f"{r['converged']}/{r['of']}"
                    + (f" ({r['diverged']} diverged)" if r["diverged"] else ""),
                    f"{_mean(r['to_1e-3']):.0f}" if done else "-",
                    f"{_mean(r['to_1e-6']):.0f} ± {np.std(r['to_1e-6']):.0f}" if done else "-",
                    f"{_mean(r['limit_error']):.3g}" if done else "-",
                    f"{_mean(r['limit_to_q_alpha']):.2g}" if done else "-",
                ]
            )
    return [
        f"## Speed at small scale (alpha = {sp['alpha']:g}, L = 2)",
        "",
        f"Each run goes to log L <= {sp['target_log_loss']:g} (its iterate is then its limit "
        f"to ~4e-9) within the budget (first rung {sp['budget']} iterations, then twice the "
        "previous rung's), and is rerun to count the iterations to a relative distance of "
        "1e-3 / 1e-6 from that limit. Rung xm multiplies the base steps by m (plain GD: the "
        "step rule above; WN-GD: eta_r = eta_theta as above).",
        "",
        table(
            [
                "method",
                "rung",
                "mean step",
                "converged",
                "iterations to 1e-3",
                "iterations to 1e-6",
                "limit's error to x*",
                "limit to Q_alpha min.",
            ],
            rows,
        ),
    ]


def _before_stop(call):
    """``(call(), whether a stop had been requested when it returned)``."""
    value = call()
    return value, _interrupt.requested()


def _run_name(key) -> str:
    return "speed ladder" if key == "speed" else "L={}, alpha={:g}, k={}".format(*key)


def _write_partial(out: str, metrics: dict, names: list, complete: dict) -> dict:
    """Write the metrics of the runs in ``complete`` (the speed ladder and sweep points that
    finished, keyed as in ``run``) and a PARTIAL report naming them; return the metrics."""
    partial = {
        **metrics,
        "partial": True,
        "finished": [_run_name(k) for k in names if k in complete],
        "points": {_run_name(k): v for k, v in complete.items() if k != "speed"},
    }
    if "speed" in complete:
        partial["speed"] = complete["speed"]
    missing = [_run_name(k) for k in names if k not in complete]
    report = (
        f"# diagonal-wn\n\n**PARTIAL**: {len(complete)} of {len(names)} runs finished "
        f"({'; '.join(partial['finished']) or 'none'}); not run or cut short: "
        f"{'; '.join(missing)}. No verdict is drawn; metrics.json holds the finished runs.\n"
    )
    os.makedirs(out, exist_ok=True)
    write_outputs(out, partial, report)
    return partial


def run(options: Options) -> dict:
    """Run diagonal-wn with ``options``; write its figures, ``metrics.json`` and ``report.md``
    under ``options.out``. **Returns:** the metrics, with ``verdicts``."""
    if options.full:
        options = dataclasses.replace(options, steps=max(options.steps, 100_000))
    alphas = [float(a) for a in options.alphas.split(",")]
    keys = jax.random.split(jax.random.key(0), options.seeds)
    problem = _problems(keys, options.dim, options.measurements, options.sparsity)
    metrics = {"steps": options.steps, "options": dataclasses.asdict(options)}
    metrics["references"] = _references(problem, alphas)
    sweep_alphas = [0.1, 1.0]
    depths = [2, 3]
    sparsities = sorted({2, options.sparsity, 10, 15})
    d, n = options.dim, options.measurements
    problems = {k: _problems(keys, d, n, k) for k in sparsities if k != options.sparsity}
    problems[options.sparsity] = problem
    # Every point (and the speed ladder) is independent: they run side by side on the cores
    # (``in_parallel``), the speed ladder (the longest) first; the points of one depth share
    # their programs (the rest of a point is traced numbers).
    k0 = options.sparsity
    points = [(2, a, k0) for a in alphas]
    points += [(L, a, k0) for L in depths for a in sweep_alphas]
    points += [(2, a, k) for k in sparsities for a in sweep_alphas]
    points = list(dict.fromkeys(points))
    calls = {"speed": functools.partial(speed_ladder, problem, alphas[0], options)}
    for L, a, k in points:
        calls[L, a, k] = functools.partial(sweep_point, problems[k], a, L, options)
    # What has finished is on disk as the run goes (a stop request or a kill loses nothing
    # finished before it); a run that returns after a stop request was cut short.
    calls = {k: functools.partial(_before_stop, f) for k, f in calls.items()}
    complete = {}

    def keep(done):
        complete.update({k: v for k, (v, cut) in done.items() if not cut and k not in complete})
        if len(complete) < len(calls):
            _write_partial(options.out, metrics, list(calls), complete)

    with warnings.catch_warnings():  # a flow's success is judged from its final log loss
        warnings.filterwarnings("ignore", "gradient flow", RuntimeWarning)
        in_parallel(
            calls,
            shares={pt: pt[0] for pt in points},
            on_done=keep,
            finished=finished_runs("diagonal-wn", options),
        )
    if len(complete) < len(calls):  # stopped: the partial outputs are written
        return _write_partial(options.out, metrics, list(calls), complete)

    metrics["alpha_sweep"] = {str(a): complete[2, a, k0] for a in alphas}
    metrics["depth_sweep"] = {
        "values": depths,
        "alphas": sweep_alphas,
        "results": {f"{L}|{a}": complete[L, a, k0] for L in depths for a in sweep_alphas},
    }
    metrics["sparsity_sweep"] = {
        "values": sparsities,
        "alphas": sweep_alphas,
        "results": {f"{k}|{a}": complete[2, a, k] for k in sparsities for a in sweep_alphas},
    }
    metrics["speed"] = complete["speed"]
    metrics["verdicts"] = _verdicts(metrics, alphas)
    os.makedirs(options.out, exist_ok=True)
    _plot(metrics, alphas, options.out)
    write_outputs(options.out, metrics, _report(metrics, alphas, options))
    return metrics
