"""``wnjax asymptotics``: lin-sep under loss-normalized gradient flow, EWN vs SWN vs standard.

Runs ``d theta/ds = -grad log L`` to a target ``log L`` (default -300) and writes under
``--out`` (default ``runs/asymptotics/``): relative norms against ``log t``, the relation plots
(``log ||grad_u L||`` against ``log ||w_u||`` with the ``x + y = const`` and ``y - x = const``
lines), the normalized margin, the alignment, and ``diagnostics.json`` with the final values.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from wnjax._cli import positive_int

HELP = "lin-sep under loss-normalized gradient flow to a target log L: figures + diagnostics.json"

PARAMETERIZATIONS = ("ewn", "swn", "standard")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", type=float, default=-300.0, help="target log L (default -300)")
    parser.add_argument("--seed", type=int, default=0, help="data and init seed")
    parser.add_argument("--width", type=positive_int, default=8, help="hidden neurons (default 8)")
    parser.add_argument("--n-save", type=positive_int, default=64, help="save levels of log L")
    parser.add_argument("--max-steps", type=positive_int, default=1_000_000,
                        help="solver step budget (SWN to -10,000 takes about 540,000)")
    parser.add_argument("--solver", default="auto",
                        help="auto (default: wnjax.AutoSwitch, explicit Tsit5 while the flow is "
                        "not stiff, Kvaerno5 while it is), tsit5, or stiff (Kvaerno5)")
    parser.add_argument("--threshold", type=float, default=0.1, help="survivor relative norm")
    parser.add_argument("--out", default=os.path.join("runs", "asymptotics"), help="output folder")


def _final_diagnostics(r, X, y, threshold: float, degree: float) -> dict:
    import numpy as np

    import wnjax

    res = wnjax.relation_residuals(r.final, X, y, threshold=threshold)
    kkt = wnjax.approximate_kkt_residual(r.final, X, y, degree)
    to_list = lambda a: np.asarray(a).tolist()  # noqa: E731
    return {
        "message": r.message,
        "ok": bool(r.ok),
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


def _figures(runs: dict, X, y, out: str) -> list[str]:
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
        ax.set(title=f"{name}, log L = {float(r.final_log_loss):.0f}", xlabel="log10 ||w_u||",
               ylabel="log10 ||grad_u L||")
        ax.legend(fontsize=7)
    save(fig, "relations.png")

    for key, ylabel, fname in (("normalized_margin", "min q / ||w||^L", "normalized_margin.png"),
                               ("alignment", "cos(w_u, -grad_u L)", "alignment.png")):
        fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), sharey=True)
        for ax, name in zip(np.atleast_1d(axes), names):
            r = runs[name]
            ax.plot(np.asarray(r.log_t), np.asarray(r.summaries[key]))
            ax.set(title=name, xlabel="log t", ylabel=ylabel)
        save(fig, fname)
    return paths


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    import wnjax

    os.makedirs(args.out, exist_ok=True)
    X, y = wnjax.data.lin_sep(jax.random.key(args.seed))
    model = wnjax.MLP(2, args.width, 2, activation="relu2", key=jax.random.key(args.seed + 1))
    degree = 3.0  # 2-layer ReLU^2
    makers = {"ewn": wnjax.ewn, "swn": wnjax.swn, "standard": wnjax.standard}
    runs, report = {}, {"target_log_loss": args.target, "seed": args.seed, "runs": {}}
    for name in PARAMETERIZATIONS:
        start = time.perf_counter()
        r = wnjax.gradient_flow(makers[name](model), X, y, time="normalized", t1=1e6,
                                target_log_loss=args.target, n_save=args.n_save,
                                max_steps=args.max_steps, degree=degree, throw=False,
                                solver=args.solver)
        jax.block_until_ready(r.final_log_loss)
        seconds = time.perf_counter() - start
        runs[name] = r
        report["runs"][name] = {"seconds_with_compile": seconds,
                                **_final_diagnostics(r, X, y, args.threshold, degree)}
        report["runs"][name]["solver"] = args.solver
        for k in ("explicit_steps", "stiff_steps", "switches"):  # the default solver's counts
            if k in r.stats:
                report["runs"][name][k] = int(r.stats[k])
        print(f"{name:9s} {report['runs'][name]['solver']}: {r.message} "
              f"({seconds:.1f} s with compilation)")
    report["figures"] = _figures(runs, X, y, args.out)
    path = os.path.join(args.out, "diagnostics.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=lambda o: np.asarray(o).tolist())
    print(f"wrote {path} and {len(report['figures'])} figures")
    failed = [name for name, r in runs.items() if not bool(r.ok)]
    if failed:
        print(f"failed runs: {', '.join(failed)}; their figures show the partial results.")
        return 1
    return 0
