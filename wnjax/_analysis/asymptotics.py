"""lin-sep under loss-normalized gradient flow, EWN vs SWN vs standard: diagnostics, figures.

``lin_sep_asymptotics`` runs ``d theta/ds = -grad log L`` to a target ``log L`` for each
parameterization and collects the final diagnostics (relative norms, weight-gradient relations,
normalized margin, alignment, KKT residuals); ``figures`` draws relative norms against ``log t``,
the relation plots (``log ||grad_u L||`` against ``log ||w_u||`` with the ``x + y = const`` and
``y - x = const`` lines), the normalized margin and the alignment. ``wnjax asymptotics`` runs both.

SIGINT/SIGTERM stop ``lin_sep_asymptotics`` at the running flow's next check: that run's partial
result is kept (marked ``interrupted``) and the later parameterizations are not run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from wnjax._runtime import interrupt as _interrupt

PARAMETERIZATIONS = ("ewn", "swn", "standard")


def final_diagnostics(r, X, y, threshold: float, degree: float) -> dict:
    """The diagnostics of flow result ``r``'s final state on data ``(X, y)``: solver outcome,
    ``log L``, ``log t``, normalized margin ``min_i q_i / ||w||^degree``, relative norms, neurons
    above 0.05 and above ``threshold``, alignment, relation residuals, loss direction and the
    approximate KKT residuals; ``interrupted`` when SIGINT/SIGTERM stopped the run."""
    import numpy as np

    import wnjax

    res = wnjax.relation_residuals(r.final, X, y, threshold=threshold)
    kkt = wnjax.approximate_kkt_residual(r.final, X, y, degree)
    to_list = lambda a: np.asarray(a).tolist()  # noqa: E731
    return {
        "message": r.message,
        "ok": bool(r.ok),
        "interrupted": bool(r.interrupted),
        "num_steps": int(r.stats["num_steps"]),
        "final_log_loss": float(r.final_log_loss),
        "final_log_t": float(r.final_log_t),
        "normalized_margin": float(wnjax.normalized_margin(r.final, X, y, degree)),
        "relative_norms": to_list(wnjax.relative_neuron_norms(r.final)),
        "neurons_above_0.05": int(wnjax.count_neurons_above(r.final, 0.05)),
        f"neurons_above_{threshold}": int(wnjax.count_neurons_above(r.final, threshold)),
        "alignment": to_list(wnjax.alignment(r.final, X, y)),
        "log_ratio": to_list(res["log_ratio"]),
        "log_product": to_list(res["log_product"]),
        "ratio_spread": float(res["ratio_spread"]),
        "product_spread": float(res["product_spread"]),
        "loss_direction": to_list(wnjax.loss_direction(r.final, X, y)),
        "kkt_stationarity": float(kkt["stationarity"]),
        "kkt_slackness": float(kkt["complementary_slackness"]),
    }


def figures(runs: dict, X, y, out: str) -> list[str]:
    """Write ``relative_norms.png``, ``relations.png``, ``normalized_margin.png`` and
    ``alignment.png`` of ``runs`` (name -> flow result, with summaries) into ``out``.
    **Returns:** the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import wnjax

    names = list(runs)
    paths = []

    def save(fig, name):
        path = os.path.join(out, name)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)

    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), sharey=True)
    for ax, name in zip(np.atleast_1d(axes), names):
        r = runs[name]
        ax.plot(np.asarray(r.log_t), np.asarray(r.summaries["relative_norms"]))
        ax.set(title=name, xlabel="log t", ylabel="||w_u|| / ||w||")
    save(fig, "relative_norms.png")

    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.8))
    for ax, name in zip(np.atleast_1d(axes), names):
        r = runs[name]
        lw = np.log10(np.asarray(r.final.neuron_norms()))
        lg = np.asarray(wnjax.log_neuron_gradient_norms(r.final, X, y)) / np.log(10)
        ax.scatter(lw, lg, c="k", s=18)
        xs = np.linspace(lw.min() - 0.2, lw.max() + 0.2, 2)
        top = np.argmax(lw)
        ax.plot(xs, lg[top] + lw[top] - xs, "b--", label="x + y = const (EWN)")
        ax.plot(xs, lg[top] - lw[top] + xs, "r:", label="y - x = const (SWN, std)")
        ax.set(
            title=f"{name}, log L = {float(r.final_log_loss):.0f}",
            xlabel="log10 ||w_u||",
            ylabel="log10 ||grad_u L||",
        )
        ax.legend(fontsize=7)
    save(fig, "relations.png")

    for key, ylabel, fname in (
        ("normalized_margin", "min q / ||w||^L", "normalized_margin.png"),
        ("alignment", "cos(w_u, -grad_u L)", "alignment.png"),
    ):
        fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), sharey=True)
        for ax, name in zip(np.atleast_1d(axes), names):
            r = runs[name]
            ax.plot(np.asarray(r.log_t), np.asarray(r.summaries[key]))
            ax.set(title=name, xlabel="log t", ylabel=ylabel)
        save(fig, fname)
    return paths


def lin_sep_asymptotics(
    *,
    target: float = -300.0,
    seed: int = 0,
    width: int = 8,
    n_save: int = 64,
    max_steps: int = 1_000_000,
    solver: str = "auto",
    threshold: float = 0.1,
    on_run: Callable[[str, object, float], None] | None = None,
    report: dict | None = None,
):
    """Loss-normalized gradient flow on lin-sep for EWN, SWN and standard from one init.

    - target: the ``log L`` to reach;
    - seed: data seed (the init uses ``seed + 1``);
    - width: hidden neurons of the 2-layer ReLU^2 net;
    - n_save: save levels of ``log L``;
    - max_steps: the solver's step budget;
    - solver: ``"auto"`` (``wnjax.AutoSwitch``), ``"tsit5"`` or ``"stiff"`` (Kvaerno5);
    - threshold: the relative norm above which a neuron survives;
    - on_run: called as ``on_run(name, result, seconds)`` after each parameterization;
    - report: the dict to fill with the report (default: a new one), so that a caller can write
      the finished runs while the next one runs.

    **Returns:** ``(runs, report, X, y)``: ``runs`` maps each parameterization to its
    ``FlowResult``; ``report`` holds ``target_log_loss``, ``seed``, per run ``runs[name]``
    the ``final_diagnostics`` with ``seconds_with_compile``, ``solver`` and the default solver's
    step counts, ``interrupted`` (SIGINT/SIGTERM stopped the runs: ``runs`` ends with the one
    stopped, if any) and ``not_run``, the parameterizations not started.
    """
    import jax

    import wnjax

    X, y = wnjax.data.lin_sep(jax.random.key(seed))
    model = wnjax.MLP(2, width, 2, activation="relu2", key=jax.random.key(seed + 1))
    degree = 3.0  # 2-layer ReLU^2
    makers = {"ewn": wnjax.ewn, "swn": wnjax.swn, "standard": wnjax.standard}
    runs = {}
    report = {} if report is None else report
    report.update(target_log_loss=target, seed=seed, runs={}, interrupted=False, not_run=[])
    with _interrupt.handling():
        for name in PARAMETERIZATIONS:
            if _interrupt.requested():
                break
            start = time.perf_counter()
            r = wnjax.gradient_flow(
                makers[name](model),
                X,
                y,
                time="normalized",
                t1=1e6,
                target_log_loss=target,
                n_save=n_save,
                max_steps=max_steps,
                degree=degree,
                throw=False,
                solver=solver,
            )
            jax.block_until_ready(r.final_log_loss)
            seconds = time.perf_counter() - start
            if bool(r.interrupted):
                _interrupt.stopping()  # the diagnostics of the partial run follow
            runs[name] = r
            entry = {
                "seconds_with_compile": seconds,
                **final_diagnostics(r, X, y, threshold, degree),
                "solver": solver,
            }
            # the default solver's counts
            for k in ("explicit_steps", "stiff_steps", "switches"):
                if k in r.stats:
                    entry[k] = int(r.stats[k])
            report["runs"][name] = entry
            if on_run is not None:
                on_run(name, r, seconds)
    report["not_run"] = [k for k in PARAMETERIZATIONS if k not in runs]
    report["interrupted"] = bool(report["not_run"]) or any(
        bool(r.interrupted) for r in runs.values()
    )
    return runs, report, X, y
