"""conv-rate: deep linear nets of depth 1-4 from one end-to-end predictor; loss vs depth.

EWN's loss rate ``Theta(1/(t (log t)^2))`` does not depend on depth, while the unnormalized
rate ``Theta(1/(t (log t)^(2 - 2/L)))`` does (docs/theory.md §3). Every depth starts from the same
end-to-end predictor ``w* = W_D ... W_1``: the first layer of a random deep net is corrected by
``W_1 <- W_1 + r^T (w* - r W_1)/||r||^2`` with ``r = W_D ... W_2``.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from wnjax._nets.models import MLP
from wnjax._nets.parameterize import ewn, standard, swn
from wnjax.data._sets import conv_rate_data
from wnjax.experiments._options import Common, option
from wnjax.experiments._report import (
    PARAM_STYLE,
    judge,
    mean_std,
    median_bars,
    not_answered,
    pyplot,
    render_verdicts,
    save_figure,
    seed_band,
    table,
    write_outputs,
)
from wnjax.experiments._runner import run_flow, run_gd, stacked

DESCRIPTION = "deep linear nets, depth 1-4, same predictor: EWN's loss barely depends on depth"
PAPER_RATIO = {"ewn": 2.0, "swn": 28.0, "standard": 70.0}  # final L, depth 1 over depth 4
PAPER_DEPTHS = (1, 4)
PARAMETERIZATIONS = {"ewn": ewn, "swn": swn, "standard": standard}


def end_to_end(model: MLP) -> jnp.ndarray:
    """``W_D ... W_1`` of a linear MLP, shape ``(1, in)``."""
    w = model.layers[0].weight
    for layer in model.layers[1:]:
        w = layer.weight @ w
    return w


def deep_linear(key, depth: int, width: int, w_star: jnp.ndarray) -> MLP:
    """A random linear MLP of ``depth`` layers whose end-to-end product is ``w_star``."""
    model = MLP(w_star.shape[1], width, depth, activation="linear", key=key)
    if depth == 1:
        return eqx.tree_at(lambda m: m.layers[0].weight, model, w_star)
    r = model.layers[-1].weight
    for layer in model.layers[-2:0:-1]:
        r = r @ layer.weight
    w1 = model.layers[0].weight
    w1 = w1 + r.T @ (w_star - r @ w1) / jnp.sum(r * r)
    return eqx.tree_at(lambda m: m.layers[0].weight, model, w1)


@dataclasses.dataclass(frozen=True)
class Options(Common):
    """conv-rate's options, besides ``seeds``, ``out`` and ``full`` (``Common``; ``full``
    multiplies ``steps`` by 4).

    - dynamics: ``"gd"``, GD with constant step ``lr`` (as the paper), or ``"flow"``, exact
      gradient flow over the same time ``lr * steps``;
    - lr: GD's step;
    - steps: the number of GD steps;
    - width: the hidden width of every layer;
    - depths: the depths compared (the ratio is the shallowest over the deepest).
    """

    dynamics: str = option(
        "gd",
        "GD with constant lr (default, as the paper) or exact gradient "
        "flow over the same time span lr * steps",
        choices=("gd", "flow"),
    )
    lr: float = option(1e-3, "GD step", positive=True)
    steps: int = option(5000, "number of GD steps", positive=True)
    width: int = option(100, "hidden width", positive=True)
    depths: tuple[int, ...] = option((1, 2, 3, 4), "depths compared", positive=True)


def simulate(
    seeds: int, *, depths=(1, 2, 3, 4), width=100, lr=1e-3, steps=5000, dynamics="gd", key=None
):
    """Every (parameterization, depth) on ``seeds`` data sets and inits (vmapped over seeds).

    **Returns:** dict ``(name, depth) -> dict(final_log_loss (seeds,), curve_x, curve_log_loss)``.
    """
    key = jax.random.key(0) if key is None else key
    k_data, k_star, k_net = jax.random.split(key, 3)
    data = jax.vmap(conv_rate_data)(jax.random.split(k_data, seeds))
    w_star = jax.vmap(lambda k: MLP(2, 1, 1, activation="linear", key=k).layers[0].weight)(
        jax.random.split(k_star, seeds)
    )
    net_keys = jax.random.split(k_net, seeds)
    out = {}
    for name, param in PARAMETERIZATIONS.items():
        for depth in depths:
            models = stacked(lambda k, w: param(deep_linear(k, depth, width, w)), net_keys, w_star)
            if dynamics == "gd":
                r = run_gd(
                    models,
                    *data,
                    per_seed_data=True,
                    num_steps=steps,
                    learning_rate=lr,
                    loss="logistic",
                    chunk_size=max(steps // 100, 1),
                    program_key=("conv-rate",),  # the rest is in its arguments and wnjax's source
                )
                out[name, depth] = dict(
                    final_log_loss=r.history["log_loss"][-1],
                    x=r.steps[:, 0],
                    log_loss=r.history["log_loss"].T,
                    ok=~r.diverged,
                )
            else:
                t1 = lr * steps
                r = run_flow(
                    models,
                    *data,
                    per_seed_data=True,
                    t1=t1,
                    loss="logistic",
                    degree=float(depth),
                    save_ts=np.linspace(0, t1, 101),
                    save_states=False,
                    rtol=1e-8,
                    atol=1e-10,
                    diagnostics=False,
                )
                out[name, depth] = dict(
                    final_log_loss=np.asarray(r.final_log_loss),
                    x=np.linspace(0, t1, 101) / lr,
                    log_loss=np.asarray(r.log_loss),
                    ok=np.asarray(r.ok),
                )
    return out


def run(options: Options) -> dict:
    """Run conv-rate with ``options``; write ``conv_rate.png``, ``metrics.json`` and
    ``report.md`` under ``options.out``. **Returns:** the metrics, with ``verdicts``."""
    depths = sorted(set(options.depths))  # the ratio is shallowest over deepest
    steps = options.steps * (4 if options.full else 1)
    sim = simulate(
        options.seeds,
        depths=depths,
        width=options.width,
        lr=options.lr,
        steps=steps,
        dynamics=options.dynamics,
    )
    d0, d1 = depths[0], depths[-1]
    ratio = {
        k: np.exp(sim[k, d0]["final_log_loss"] - sim[k, d1]["final_log_loss"])
        for k in PARAMETERIZATIONS
    }
    spread = {
        k: np.exp(
            np.max([sim[k, d]["final_log_loss"] for d in depths], 0)
            - np.min([sim[k, d]["final_log_loss"] for d in depths], 0)
        )
        for k in PARAMETERIZATIONS
    }
    metrics = {
        "dynamics": options.dynamics,
        "depths": depths,
        "steps": steps,
        "lr": options.lr,
        "final_loss": {
            k: {str(d): np.exp(sim[k, d]["final_log_loss"]) for d in depths}
            for k in PARAMETERIZATIONS
        },
        "ratio_first_to_last_depth": ratio,
        "max_over_min_depth_ratio": spread,
        "ok": {k: {str(d): sim[k, d]["ok"] for d in depths} for k in PARAMETERIZATIONS},
    }
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax in axes[1:3]:
        ax.sharey(axes[0])
    cmap = plt.get_cmap("viridis")
    for ax, name in zip(axes, PARAMETERIZATIONS):
        for i, d in enumerate(depths):
            ll = np.atleast_2d(sim[name, d]["log_loss"])
            seed_band(
                ax,
                np.broadcast_to(sim[name, d]["x"], ll.shape),
                np.exp(ll),
                color=cmap(i / max(len(depths) - 1, 1)),
                label=f"depth {d}",
            )
        ax.set(
            yscale="log",
            xlabel="step" if options.dynamics == "gd" else "t / lr",
            title=PARAM_STYLE[name]["label"],
        )
        ax.legend(fontsize=7)
    axes[0].set_ylabel("training loss")
    ax = axes[3]
    for j, name in enumerate(PARAMETERIZATIONS):
        style = PARAM_STYLE[name]
        median_bars(ax, [j], np.asarray(ratio[name])[:, None], ls="none", **style)
        ax.plot([j], [PAPER_RATIO[name]], "*", ms=12, mfc="none", color=style["color"])
    ax.plot([], [], "*", ms=10, mfc="none", color="gray", label="paper")
    ax.set(
        yscale="log",
        xticks=range(len(PARAMETERIZATIONS)),
        xticklabels=[PARAM_STYLE[k]["label"] for k in PARAMETERIZATIONS],
        xlim=(-0.5, len(PARAMETERIZATIONS) - 0.5),
        ylabel=f"final L(depth {d0}) / L(depth {d1})",
        title="loss ratio across depth",
    )
    ax.legend(fontsize=7)
    figs = [save_figure(fig, options.out, "conv_rate.png")]
    rows = [
        [PARAM_STYLE[k]["label"]]
        + [mean_std(np.exp(sim[k, d]["final_log_loss"])) for d in depths]
        + [mean_std(ratio[k]), f"{PAPER_RATIO[k]:g}x"]
        for k in PARAMETERIZATIONS
    ]
    e, s_, u = (np.median(ratio[k]) for k in ("ewn", "swn", "standard"))
    dyn = (
        f"GD, constant lr {options.lr}, {steps} steps"
        if options.dynamics == "gd"
        else f"exact gradient flow to t = {options.lr * steps:g} (= lr x steps)"
    )
    # The paper's ratios are depth 1 over depth 4; another pair is judged by the ordering alone.
    paper_pair = (d0, d1) == PAPER_DEPTHS

    def near(r, k):
        return PAPER_RATIO[k] / 3 < r < PAPER_RATIO[k] * 3

    unlike = (
        "" if paper_pair else "; the paper's ratios are depth 1 over 4: only the order is judged"
    )
    claims = (
        "EWN's final loss barely depends on depth (paper ~2x)",
        "SWN's depends on depth (paper ~28x)",
        "unnormalized depends on depth (paper ~70x)",
    )
    if len(depths) < 2:
        why = f"one depth ({d0}): nothing to compare; give two or more --depths"
        verdicts = [not_answered(c, why) for c in claims]
    else:
        verdicts = [
            judge(
                bool(e < min(s_, u) and (not paper_pair or e < 2 * PAPER_RATIO["ewn"] + 1)),
                claims[0],
                f"median ratio {e:.3g}x, against SWN {s_:.3g}x and unnormalized {u:.3g}x" + unlike,
            ),
            judge(
                bool(s_ > 3 * e and (not paper_pair or near(s_, "swn"))),
                claims[1],
                f"median ratio {s_:.3g}x" + unlike,
            ),
            judge(
                bool(u > 3 * e and (not paper_pair or near(u, "standard"))),
                claims[2],
                f"median ratio {u:.3g}x" + unlike,
            ),
        ]
    metrics["verdicts"] = verdicts
    lines = [
        "# conv-rate",
        "",
        f"20 points in R^2, deep linear nets of depth {depths}, width {options.width}, no bias, "
        f"all depths started at the same end-to-end predictor; logistic loss (sum over points); "
        f"{dyn}; WN on every layer; {options.seeds} seeds (data, predictor and init), vmapped.",
        "",
        table(
            ["", *[f"final L, depth {d}" for d in depths], f"ratio L(d={d0})/L(d={d1})", "paper"],
            rows,
        ),
        "",
        "## Verdicts",
        "",
        *render_verdicts(verdicts),
        "",
        "Figures: " + ", ".join(figs),
    ]
    write_outputs(options.out, metrics, "\n".join(lines))
    return metrics
