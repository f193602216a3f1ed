"""tensor-classification: the limit direction of linear tensor networks on separable data.

Third seed paper (Yun, Krishnan, Mobahi 2021; SPEC section 6), exponential loss, random init:

- diagonal (odeco): ``rho`` tends to a KKT point of ``min ||rho||_{2/L}`` s.t. margins ``>= 1``;
  for ``L = 2`` the l1-SVM, solved as an LP (``wnjax.tensor.l1_max_margin``);
- circular convolution: the same on the Fourier coefficients (groups ``|rho_j|``); for ``L = 2``
  a group-l1 SVM, solved through its dual with SLSQP (``wnjax.tensor.group_max_margin``);
- fully connected: the l2-SVM direction of ``beta`` for every ``L``.

Dynamics: loss-normalized gradient flow ``d theta/ds = -grad log L`` (``time='normalized'``) and
loss-normalized GD ``theta <- theta - eta grad log L``. Reported: the margin ratio (ours over the
convex optimum, where the problem is convex) and the KKT stationarity residual against ``log L``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wnjax._dynamics.descent import gradient_descent
from wnjax._dynamics.flow import gradient_flow
from wnjax.tensor._nets import (
    convolutional_tensor_net,
    diagonal_tensor_net,
    fourier_features,
    fourier_rho,
    fully_connected_tensor_net,
    linear_predictor,
    transformed_rho,
)
from wnjax.tensor._predict import (
    group_max_margin,
    l1_max_margin,
    tensor_kkt_residual,
    tensor_margin,
)
from wnjax.experiments._options import Common, option
from wnjax.experiments._report import (
    judge,
    mean_std,
    pyplot,
    render_verdicts,
    save_figure,
    table,
    write_outputs,
)

DESCRIPTION = ("linear tensor nets (diag/conv/FC), L=2,3, separable data: margin vs l_{2/L} max "
               "margin")
ARCHS = ("diagonal", "convolutional", "fully_connected")


@dataclasses.dataclass(frozen=True)
class Options(Common):
    """tensor-classification's options, besides ``seeds`` (at most 3 unless ``full``), ``out`` and
    ``full`` (``Common``; ``full``: ``n = 10``, ``d = 30`` instead of 8 and 12).

    - depths: the depths ``L``;
    - target: the final ``log L`` (``None``: -1e3; with ``full`` -1e4);
    - init_scale: the scale of the random init;
    - gd_lr: the step ``eta`` of GD on ``log L``;
    - gd_steps: GD's step budget.
    """

    depths: tuple[int, ...] = option((2, 3), "depths L", positive=True)
    target: float | None = option(None, "final log L (default -1e3; --full -1e4)")
    init_scale: float = option(0.1, "scale of the random init", positive=True)
    gd_lr: float = option(0.05, "GD step on log L", positive=True)
    gd_steps: int = option(20000, "GD step budget", positive=True)


def problem(seed: int, n: int, d: int):
    """Gaussian inputs labelled by a 2-sparse teacher ``y = sign(x_1 + x_2)``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = np.zeros(d)
    w[:2] = 1.0
    return X, np.sign(X @ w)


def transformed(arch: str, X, y, depth: int):
    """``(Z, groups, rho_of, optimum)``: features, groups, the map net -> rho, and the optimal
    margin of the convex problem (``None`` for the non-convex ``L > 2`` odeco problems)."""
    if arch == "diagonal":
        opt = l1_max_margin(X, y)[1] if depth == 2 else None
        return X, None, lambda m: np.asarray(transformed_rho(m)), opt
    if arch == "convolutional":
        Z, groups = fourier_features(X, depth)
        Z = np.asarray(Z)
        opt = group_max_margin(Z, y, groups)[0] if depth == 2 else None
        return Z, groups, lambda m: np.asarray(fourier_rho(m)), opt
    groups = np.zeros(X.shape[1], int)
    opt = group_max_margin(X, y, groups)[0]
    return X, groups, lambda m: np.asarray(linear_predictor(m)), opt




def build(arch: str, d: int, depth: int, scale: float, key):
    if arch == "diagonal":
        return diagonal_tensor_net(d, depth, key=key, init_scale=scale)
    if arch == "convolutional":
        return convolutional_tensor_net(d, depth, key=key, init_scale=scale)
    return fully_connected_tensor_net(d, depth, key=key, init_scale=scale)


def _measure(rho, Z, y, depth, groups, opt, arch):
    # FC: the l2 problem, i.e. the L = 2 group problem with one group of all coordinates
    p_depth = 2 if arch == "fully_connected" else depth
    margin = tensor_margin(rho, Z, y, p_depth, groups)
    try:
        kkt = tensor_kkt_residual(rho, Z, y, p_depth, groups)["stationarity"]
    except ValueError:
        kkt = np.nan
    return (margin / opt if opt else np.nan), margin, kkt


def simulate(seeds, n, d, depths, target, scale, gd_lr, gd_steps):
    rows, paths = [], {}
    for seed in range(seeds):
        X, y = problem(seed, n, d)
        Xj, yj = jnp.asarray(X), jnp.asarray(y)
        for arch in ARCHS:
            for depth in depths:
                Z, groups, rho_of, opt = transformed(arch, X, y, depth)
                net = build(arch, d, depth, scale, jax.random.key(seed))
                flow = gradient_flow(net, Xj, yj, t1=1e4, time="normalized", target_log_loss=target,
                                     n_save=40, save_states=True, max_steps=400_000, throw=False)
                path = []
                for i in range(len(flow.log_loss)):
                    ll = float(flow.log_loss[i])
                    if not np.isfinite(ll) or ll > -1.0:
                        continue
                    state = jax.tree_util.tree_map(lambda s: s[i], flow.states)
                    path.append((ll, *_measure(rho_of(state), Z, y, depth, groups, opt, arch)))
                paths[(arch, depth, seed)] = np.array(path)
                final = _measure(rho_of(flow.final), Z, y, depth, groups, opt, arch)
                gd = gradient_descent(net, Xj, yj, num_steps=gd_steps, learning_rate=gd_lr,
                                      optimizer=optax.sgd, objective="log_loss",
                                      target_log_loss=target, throw=False)
                gd_final = _measure(rho_of(gd.final), Z, y, depth, groups, opt, arch) \
                    if np.isfinite(float(gd.final_log_loss)) else (np.nan,) * 3
                rows.append(dict(seed=seed, arch=arch, depth=depth,
                                 gf_log_loss=float(flow.final_log_loss), gf_ratio=final[0],
                                 gf_kkt=final[2], gd_log_loss=float(gd.final_log_loss),
                                 gd_steps=int(gd.num_steps), gd_ratio=gd_final[0],
                                 gd_kkt=gd_final[2]))
    return rows, paths


def run(options: Options) -> dict:
    """Run tensor-classification with ``options``; write its figure, ``metrics.json`` and
    ``report.md`` under ``options.out``. **Returns:** the metrics, with ``verdicts``."""
    n, d = (10, 30) if options.full else (8, 12)
    target = options.target if options.target is not None else (-1e4 if options.full else -1e3)
    seeds = options.seeds if options.full else min(options.seeds, 3)
    rows, paths = simulate(seeds, n, d, options.depths, target, options.init_scale,
                           options.gd_lr, options.gd_steps)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (arch, depth, seed), path in paths.items():
        if path.size == 0:
            continue
        style = dict(color={"diagonal": "tab:red", "convolutional": "tab:blue",
                            "fully_connected": "tab:green"}[arch],
                     ls="-" if depth == 2 else "--",
                     label=f"{arch} L={depth}" if seed == 0 else None)
        if np.isfinite(path[:, 1]).any():
            axes[0].semilogx(-path[:, 0], path[:, 1], **style)
        axes[1].loglog(-path[:, 0], np.maximum(path[:, 3], 1e-16), **style)
    axes[0].set(xlabel="-log L", ylabel="margin / convex optimum",
                title="margin ratio (convex cases)")
    axes[1].set(xlabel="-log L", ylabel="KKT stationarity residual", title="l_{2/L} KKT residual")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    save_figure(fig, options.out, "margin_ratio_vs_log_loss.png")

    headers = ["arch", "L", "GF log L", "GF margin ratio", "GF KKT", "GD log L", "GD margin ratio",
               "GD KKT"]
    body = []
    for arch in ARCHS:
        for depth in options.depths:
            sel = [r for r in rows if (r["arch"], r["depth"]) == (arch, depth)]
            body.append([arch, depth] + [mean_std([r[k] for r in sel], ".4g") for k in
                        ("gf_log_loss", "gf_ratio", "gf_kkt", "gd_log_loss", "gd_ratio", "gd_kkt")])
    l2diag = [r["gf_ratio"] for r in rows if r["arch"] == "diagonal" and r["depth"] == 2]
    kkt3 = [r["gf_kkt"] for r in rows if r["arch"] != "fully_connected" and r["depth"] > 2]
    fc = [r["gf_ratio"] for r in rows if r["arch"] == "fully_connected"]
    verdicts = [
        judge(min(l2diag) >= 0.95,
              "L = 2 diagonal (odeco) reaches >= 95% of the l1-SVM margin (LP)",
              f"ratios {', '.join(f'{v:.4f}' for v in l2diag)}"),
        judge(bool(kkt3) and np.nanmax(kkt3) < 1e-2,
              "L > 2 odeco/conv limits are KKT points of the l_{2/L} problem",
              f"stationarity residuals {', '.join(f'{v:.2e}' for v in kkt3)}"),
        judge(min(fc) >= 0.95, "fully connected: l2-SVM margin",
              f"ratios {', '.join(f'{v:.4f}' for v in fc)}"),
    ]
    report = "\n".join([
        "# tensor-classification", "", __doc__, "",
        f"n = {n}, d = {d}, seeds = {seeds}, init scale {options.init_scale}, target log L = "
        f"{target}; GD: eta = {options.gd_lr} on grad log L, at most {options.gd_steps} steps. KKT "
        "residual: relative stationarity residual with multipliers on the points within 1% of the "
        "minimum margin, on the groups above 1e-2 of the largest. The margin ratio converges "
        "slowly (roughly logarithmically in -log L) and depends on the data draw.", "",
        *render_verdicts(verdicts), "", table(headers, body), "",
        "![](margin_ratio_vs_log_loss.png)",
    ])
    metrics = {"rows": rows, "paths": {f"{k[0]}-L{k[1]}-seed{k[2]}": v for k, v in paths.items()},
               "verdicts": verdicts}
    write_outputs(options.out, metrics, report)
    return metrics
