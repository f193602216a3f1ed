"""``wnjax reproduce diagonal-wn``: sparse recovery with diagonal linear nets, plain vs polar WN.

Chou, Rauhut, Ward (2023), SPEC section 5. Compressed sensing ``y = A x*`` (``A_ij ~ N(0, 1/N)``,
``x*`` ``k``-sparse), loss ``1/2 ||A x - y||^2``, net ``x = u^L - v^L`` from ``u = v = alpha``.
Four methods: plain GD, plain GF, polar WN-GD (``polar_sgd``, retraction onto the sphere) and the
polar WN flow (``polar_rates``). GD runs are vmapped over seeds; flows run seed by seed (each
solve stops at a target log loss) and reuse one compiled program.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wnjax.diagonal._nets import (
    diagonal_net,
    diagonal_signal,
    invariant_spread,
    polar_wn,
    relative_error,
    sparse_problem,
    uv_ratio,
)
from wnjax._dynamics.descent import prepare_run, traced_run
from wnjax._dynamics.flow import gradient_flow
from wnjax.diagonal._polar import polar_rates, polar_sgd
from wnjax.diagonal._sparse import l1_interpolator, min_l2_interpolator, q_alpha_interpolator
from wnjax._runtime.errors import InvalidInput
from wnjax.experiments._options import Common, option
from wnjax.experiments._report import write_outputs

DESCRIPTION = "diagonal linear nets: polar WN vs plain GD/GF for sparse recovery across init scales"

METHODS = ("plain GD", "plain GF", "WN-GD", "WN-GF")


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
    - target_log_loss: the ``log L`` at which the flows stop.
    """

    dim: int = option(100, "signal dimension d", positive=True)
    measurements: int = option(40, "number of measurements N", positive=True)
    sparsity: int = option(5, "sparsity k of x*", positive=True)
    alphas: str = option("0.01,0.03,0.1,0.3,1,3,10", "init scales")
    steps: int = option(20_000, "GD steps (--full: 100,000)", positive=True)
    radial_rate: float = option(1e-2, "eta_r of WN-GD/GF", positive=True)
    angular_rate: float = option(1e-2, "eta_theta of WN-GD/GF", positive=True)
    target_log_loss: float = option(-30.0, "where flows stop")

    def __post_init__(self):
        super().__post_init__()
        try:
            ok = all(float(a) > 0 for a in self.alphas.split(","))
        except ValueError:
            ok = False
        if not ok:
            raise InvalidInput(f"alphas must be comma-separated positive numbers such as "
                               f"'0.1,1,10', got {self.alphas!r}.")


def plain_rate(A: np.ndarray, y: np.ndarray, alpha: float, depth: int) -> float:
    """Plain-GD step ``0.5 / (lambda_max(A^T A) L^2 s^(2L-2))``, ``s = max(alpha, ||A^T y||_inf^(1/L))``.

    ``L^2 s^(2L-2) lambda_max`` bounds the loss curvature in ``w`` near init and near ``x*``.
    """
    lam = float(np.linalg.eigvalsh(A @ A.T)[-1])
    s = max(alpha, float(np.max(np.abs(A.T @ y))) ** (1.0 / depth))
    return 0.5 / (lam * depth**2 * s ** (2 * depth - 2))


def gd_trace(p0, optimizer, A, y, x_star, num_steps: int, n_record: int = 200):
    """GD on ``L = 1/2 ||A x - y||^2`` (``theta <- theta + optimizer.update(grad L, ...)``, the
    GD engine with a relative-error monitor), traceable under ``jit``/``vmap``.

    **Arguments:** `p0` (a diagonal net, plain or parameterized), `optimizer` (a ready optax
    transformation), `A`, `y`, `x_star`, `num_steps`, `n_record`.

    **Returns:** ``(steps, errs, first)``: ``errs[j] = ||x - x*||/||x*||`` after
    ``steps[j] = (j + 1) stride`` steps, ``stride = max(num_steps // n_record, 1)``; ``first[j]``
    the first step with the error at or below ``(1e-3, 1e-6)[j]`` (``-1``: never).
    """
    stride = max(num_steps // n_record, 1)
    n = num_steps // stride

    def error(model, X, Y):
        return relative_error(diagonal_signal(model), x_star)

    carry, static, X, Y, numbers, key, statics = prepare_run(
        p0, A, y, num_steps=n * stride, learning_rate=None, optimizer=optimizer,
        hyperparams=None, loss="square", target_log_loss=None, batch_size=None, key=None,
        objective="loss", n_save=1, save_states=False, chunk_size=n * stride, degree=1.0,
        diverge_above=np.inf, diagnostics=False, check_initial_loss=False,
        checkpoints=(1e-3, 1e-6), summarize=lambda m, X, Y: {"error": error(m, X, Y)},
        save_at=stride * np.arange(1, n + 1), standard=False, monitor=error,
    )
    carry = traced_run(carry, static, X, Y, numbers, key, statics)
    return stride * jnp.arange(1, n + 1), carry["saved"]["error"][:n], carry["ck_steps"]


def _gd_batch(A, y, xs, alpha, depth, method, lr, er, et, num_steps):
    def one(A, y, xs, lr):
        net = diagonal_net(A.shape[1], depth=depth, alpha=alpha)
        if method == "WN-GD":
            return gd_trace(polar_wn(net), polar_sgd(er, et), A, y, xs, num_steps)
        return gd_trace(net, optax.sgd(lr), A, y, xs, num_steps)

    return jax.jit(jax.vmap(one))(A, y, xs, jnp.asarray(lr))


def _gf_runs(A, y, xs, alpha, depth, method, er, et, target):
    errs, spreads, ok = [], [], []
    for i in range(A.shape[0]):
        net = diagonal_net(A.shape[-1], depth=depth, alpha=alpha)
        kw = dict(loss="square", t1=1e12, target_log_loss=target, max_steps=200_000)
        kw.update(throw=False, n_save=4, save_states=False)
        if method == "WN-GF":
            p = polar_wn(net)
            with warnings.catch_warnings():  # success is judged from the final log loss
                warnings.simplefilter("ignore", RuntimeWarning)
                r = gradient_flow(p, A[i], y[i], rate=polar_rates(er, et), **kw)
            spreads.append(float(invariant_spread(uv_ratio(r.final, p))) if depth == 2 else np.nan)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                r = gradient_flow(net, A[i], y[i], **kw)
        errs.append(float(relative_error(diagonal_signal(r.final), xs[i])))
        ok.append(bool(float(r.final_log_loss) <= target + 1e-6))
    return np.asarray(errs), np.asarray(spreads), np.asarray(ok)


def _stats(v) -> dict:
    v = np.asarray(v, float)
    return {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v)), "values": v.tolist()}


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
            steps, errs, first = _gd_batch(
                A, y, xs, alpha, depth, method, lr, options.radial_rate, options.angular_rate,
                options.steps,
            )
            out[method] = {
                "error": _stats(np.asarray(errs)[:, -1]),
                "to_1e-3": _first_hit_stats(first[:, 0]),
                "to_1e-6": _first_hit_stats(first[:, 1]),
                "trace_steps": np.asarray(steps[0]).tolist(),
                "trace_mean": np.nanmean(np.asarray(errs), 0).tolist(),
                "trace_std": np.nanstd(np.asarray(errs), 0).tolist(),
                "diverged": int(np.sum(~np.isfinite(np.asarray(errs)[:, -1]))),
            }
            if method == "plain GD":
                out[method]["learning_rate"] = _stats(lr)
        else:
            errs, spreads, ok = _gf_runs(
                A, y, xs, alpha, depth, method, options.radial_rate, options.angular_rate,
                options.target_log_loss,
            )
            out[method] = {"error": _stats(errs), "reached_target": int(ok.sum())}
            if method == "WN-GF" and depth == 2:
                out[method]["invariant_spread_max"] = float(np.nanmax(spreads))
    return out


def _problems(seed_keys, d, N, k):
    return jax.vmap(lambda key: sparse_problem(key, d, N, k))(seed_keys)


def _references(problem, alphas) -> dict:
    A, y, xs = (np.asarray(t) for t in problem)
    l1 = [float(relative_error(l1_interpolator(a, b), x)) for a, b, x in zip(A, y, xs)]
    l2 = [float(relative_error(min_l2_interpolator(a, b), x)) for a, b, x in zip(A, y, xs)]
    q = {
        str(al): _stats([relative_error(q_alpha_interpolator(a, b, al), x) for a, b, x in zip(A, y, xs)])
        for al in alphas
    }
    return {"l1": _stats(l1), "min_l2": _stats(l2), "q_alpha": q}


def _plot(metrics, alphas, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        m = np.array([metrics["alpha_sweep"][str(a)][method]["error"]["mean"] for a in alphas])
        s = np.array([metrics["alpha_sweep"][str(a)][method]["error"]["std"] for a in alphas])
        ax.errorbar(alphas, np.maximum(m, 1e-17), yerr=s, marker="o", capsize=3, label=method)
    q = [metrics["references"]["q_alpha"][str(a)]["mean"] for a in alphas]
    ax.plot(alphas, q, "k:", label="Q_alpha minimizer")
    ax.axhline(metrics["references"]["min_l2"]["mean"], color="gray", ls="--", label="min-l2")
    ax.set(xscale="log", yscale="log", xlabel="init scale alpha", ylabel="||x - x*|| / ||x*||")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "error_vs_alpha.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, a in zip(axes, (alphas[0], 1.0 if 1.0 in alphas else alphas[-1])):
        for method in ("plain GD", "WN-GD"):
            r = metrics["alpha_sweep"][str(a)][method]
            m, s = np.array(r["trace_mean"]), np.array(r["trace_std"])
            ax.plot(r["trace_steps"], m, label=method)
            ax.fill_between(r["trace_steps"], np.maximum(m - s, 1e-17), m + s, alpha=0.2)
        ax.set(xscale="log", yscale="log", xlabel="GD step", title=f"alpha = {a}")
        ax.legend()
    axes[0].set_ylabel("||x - x*|| / ||x*||")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "error_vs_steps.png"), dpi=120)
    plt.close(fig)

    for name, key, xlabel in (("depth", "depth_sweep", "depth L"), ("sparsity", "sparsity_sweep", "sparsity k")):
        fig, ax = plt.subplots(figsize=(6, 4))
        table = metrics[key]
        for method in METHODS:
            for a in table["alphas"]:
                xs_ = table["values"]
                m = [table["results"][f"{v}|{a}"][method]["error"]["mean"] for v in xs_]
                ax.plot(xs_, np.maximum(m, 1e-17), marker="o", label=f"{method}, alpha={a}")
        ax.set(yscale="log", xlabel=xlabel, ylabel="||x - x*|| / ||x*||")
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
        "Conventions (ours, SPEC section 5; the paper's body was not available): "
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
    lines += ["", "Steps of GD to reach a relative error of 1e-3 / 1e-6 (runs that reached it):", ""]
    lines += ["| alpha | plain GD 1e-3 | WN-GD 1e-3 | plain GD 1e-6 | WN-GD 1e-6 |", "|---|---|---|---|---|"]

    def hit(r):
        return f"{r['mean_steps']:.0f} ({r['reached']}/{r['of']})" if r["reached"] else f"never (0/{r['of']})"

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
        "## Findings",
        "",
    ]
    lines += metrics["findings"]
    for key, title in (("depth_sweep", "Depth sweep"), ("sparsity_sweep", "Sparsity sweep")):
        t = metrics[key]
        lines += ["", f"## {title}", "", "| value | alpha | " + " | ".join(METHODS) + " |", "|---" * 6 + "|"]
        for v in t["values"]:
            for a in t["alphas"]:
                r = t["results"][f"{v}|{a}"]
                lines.append(f"| {v} | {a} | " + " | ".join(_fmt(r[m]["error"]) for m in METHODS) + " |")
    lines += ["", "Figures: error_vs_alpha.png, error_vs_steps.png, error_vs_depth.png, error_vs_sparsity.png."]
    return "\n".join(lines) + "\n"


def _findings(metrics, alphas) -> list[str]:
    sweep = metrics["alpha_sweep"]
    l2 = metrics["references"]["min_l2"]["mean"]
    big = [a for a in alphas if a >= 1]
    out = []
    for method in ("WN-GD", "WN-GF", "plain GD", "plain GF"):
        errs = {a: sweep[str(a)][method]["error"]["mean"] for a in big}
        robust = all(e <= 1e-2 for e in errs.values())
        near_l2 = all(e >= 0.5 * l2 for e in errs.values())
        verdict = "robust sparse bias (error <= 1e-2)" if robust else (
            "no robust bias: error near the min-l2 level" if near_l2 else "partial: error between"
        )
        out.append(
            f"- {method} at alpha >= 1: {verdict}; errors "
            + ", ".join(f"alpha={a}: {e:.3g}" for a, e in errs.items())
            + "."
        )
    a0 = alphas[0]
    p, w = sweep[str(a0)]["plain GD"], sweep[str(a0)]["WN-GD"]
    for tol in ("1e-3", "1e-6"):
        ps, ws = p[f"to_{tol}"], w[f"to_{tol}"]
        if ws["reached"] and ps["reached"]:
            out.append(
                f"- Speed at alpha = {a0}, error {tol}: WN-GD {ws['mean_steps']:.0f} steps, plain GD "
                f"{ps['mean_steps']:.0f} steps (x{ps['mean_steps'] / ws['mean_steps']:.1f})."
            )
        else:
            out.append(
                f"- Speed at alpha = {a0}, error {tol}: WN-GD reached it in {ws['reached']}/{ws['of']} "
                f"runs ({ws['mean_steps'] if ws['mean_steps'] is not None else '-'} steps), plain GD in "
                f"{ps['reached']}/{ps['of']} runs within {metrics['steps']} steps."
            )
    return out


def run(options: Options) -> dict:
    """Run diagonal-wn with ``options``; write its figures, ``metrics.json`` and ``report.md``
    under ``options.out``. **Returns:** the metrics (its findings in ``findings``; no claim is
    judged, so ``verdicts`` is empty)."""
    if options.full:
        options = dataclasses.replace(options, steps=max(options.steps, 100_000))
    alphas = [float(a) for a in options.alphas.split(",")]
    keys = jax.random.split(jax.random.key(0), options.seeds)
    problem = _problems(keys, options.dim, options.measurements, options.sparsity)
    metrics = {"steps": options.steps, "options": dataclasses.asdict(options)}
    metrics["references"] = _references(problem, alphas)
    metrics["alpha_sweep"] = {str(a): sweep_point(problem, a, 2, options) for a in alphas}

    sweep_alphas = [0.1, 1.0]
    depth = {"values": [2, 3], "alphas": sweep_alphas, "results": {}}
    for L in depth["values"]:
        for a in sweep_alphas:
            depth["results"][f"{L}|{a}"] = (
                metrics["alpha_sweep"][str(a)]
                if L == 2 and str(a) in metrics["alpha_sweep"]
                else sweep_point(problem, a, L, options)
            )
    metrics["depth_sweep"] = depth
    sparsity = {"values": sorted({2, options.sparsity, 10, 15}), "alphas": sweep_alphas,
                "results": {}}
    for k in sparsity["values"]:
        prob_k = (problem if k == options.sparsity
                  else _problems(keys, options.dim, options.measurements, k))
        for a in sweep_alphas:
            sparsity["results"][f"{k}|{a}"] = (
                metrics["alpha_sweep"][str(a)]
                if k == options.sparsity and str(a) in metrics["alpha_sweep"]
                else sweep_point(prob_k, a, 2, options)
            )
    metrics["sparsity_sweep"] = sparsity
    metrics["findings"] = _findings(metrics, alphas)
    metrics["verdicts"] = []
    os.makedirs(options.out, exist_ok=True)
    _plot(metrics, alphas, options.out)
    write_outputs(options.out, metrics, _report(metrics, alphas, options))
    return metrics
