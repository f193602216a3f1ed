"""simple-traj: a linear model ``w . x`` in R^2 on one point, each coordinate its own neuron.

With exponential loss ``L = exp(-w . x)`` and per-coordinate EWN (``w_i = exp(a_i) sign(v_i)``)
the flow is ``dw_i/dt = w_i^2 x_i L``, so (derived, docs/theory.md §4)

    1/w_i(t) = 1/w_i(0) - x_i S(t),   S(t) = int_0^t L,

and the coordinate with the largest ``w_i(0) x_i`` blows up first: EWN ends on that axis. The
unnormalized flow is ``w(t) = w(0) + x S(t)``, drifting towards ``x/||x||``. Under the
loss-normalized clock ``d theta/ds = -grad log L`` one has ``dt/ds = 1/L``, so ``S = s``.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from wnjax._nets.models import CoordinateLinear
from wnjax._nets.parameterize import ewn, standard, swn
from wnjax.experiments._options import Common, option
from wnjax.experiments._report import (
    PARAM_STYLE,
    judge,
    mean_std,
    pyplot,
    render_verdicts,
    save_figure,
    table,
    write_outputs,
)
from wnjax.experiments._runner import run_flow, run_gd

DESCRIPTION = "linear model in R^2, one point: EWN ends on an axis, unnormalized drifts to x/||x||"
POINT = (2.0, 1.0)
PAPER_INITS = ((1.0, 1.0), (3.0, 1.0), (1.0, 3.0), (5.0, 1.0), (1.0, 5.0))
PAPER_EWN = {(1.0, 1.0): (0.997, 0.080), (1.0, 3.0): (0.060, 0.998)}
PARAMETERIZATIONS = {"ewn": ewn, "swn": swn, "standard": standard}


def coordinate_weights(model) -> Array:
    """The weight vector ``w`` of a (parameterized) ``CoordinateLinear``."""
    from wnjax._nets.parameterize import to_standard

    return to_standard(model).layer.weight[..., 0]


def closed_form(w0: Array, x: Array, s: Array, parameterization: str) -> Array:
    """``w(s)`` under the loss-normalized flow, ``S = s``: EWN ``1/w_i = 1/w_i(0) - x_i s``;
    unnormalized and SWN (1-D neurons: ``g_i`` moves like ``w_i``) ``w = w(0) + x s``."""
    w0, x, s = jnp.broadcast_arrays(w0, x, jnp.asarray(s)[..., None])
    if parameterization == "ewn":
        return 1.0 / (1.0 / w0 - x * s)
    return w0 + x * s


def inits(key: PRNGKeyArray, seeds: int) -> np.ndarray:
    """The paper's 5 inits, then ``seeds`` random inits uniform in ``[0.5, 5]^2``."""
    extra = np.asarray(jax.random.uniform(key, (seeds, 2), minval=0.5, maxval=5.0))
    return np.concatenate([np.asarray(PAPER_INITS), extra]).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class Options(Common):
    """simple-traj's options, besides ``seeds`` (random inits added to the paper's 5), ``out`` and
    ``full`` (``Common``).

    - dynamics: ``"flow"``, exact loss-normalized gradient flow, or ``"gd"``, GD with step
      ``lr/L``;
    - target: the final ``log L`` (paper: -50);
    - lr: ``eta0`` of GD's step ``eta0/L``.
    """

    dynamics: str = option(
        "flow",
        "loss-normalized gradient flow (exact, default) or GD with eta0/L",
        choices=("flow", "gd"),
    )
    target: float = option(-50.0, "final log L (paper: -50)")
    lr: float = option(1e-3, "eta0 of GD's step eta0/L", positive=True, only=("dynamics", "gd"))


def simulate(W0: np.ndarray, *, dynamics: str = "flow", target: float = -50.0, lr: float = 1e-3):
    """Run every parameterization from every init ``W0[j]`` (vmapped) to ``log L = target``.

    **Returns:** dict ``name -> (final w (inits, 2), saved s (inits, k), saved w (inits, k, 2),
    saved log L (inits, k), ok (inits,))``.
    """
    X = jnp.asarray([POINT])
    y = jnp.ones(1)
    out = {}
    for name, param in PARAMETERIZATIONS.items():
        models = eqx.filter_vmap(lambda w: param(CoordinateLinear(w)))(jnp.asarray(W0))
        if dynamics == "flow":
            s_max = 2.0 * abs(target) / min(POINT) + 10.0
            save = np.unique(np.concatenate([np.linspace(0, 1, 201), np.linspace(1, s_max, 200)]))
            r = run_flow(
                models,
                X,
                y,
                t1=s_max,
                time="normalized",
                target_log_loss=target,
                save_ts=save,
                rtol=1e-10,
                atol=1e-12,
                degree=1.0,
                max_steps=20_000,
                diagnostics=False,
            )
            ws = np.asarray(eqx.filter_vmap(eqx.filter_vmap(coordinate_weights))(r.states))
            out[name] = dict(
                final=np.asarray(jax.vmap(coordinate_weights)(r.final)),
                s=np.asarray(r.s),
                w=ws,
                log_loss=np.asarray(r.log_loss),
                ok=np.asarray(r.ok) & np.asarray(r.reached_target),
            )
        else:
            rec = lambda m, X, y: {"w": coordinate_weights(m)}  # noqa: E731
            r = run_gd(
                models,
                X,
                y,
                num_steps=200_000,
                learning_rate=lr,
                objective="log_loss",
                target_log_loss=target,
                chunk_size=50,
                summarize=rec,
                program_key=("simple-traj",),  # the rest is in its arguments and wnjax's source
            )
            out[name] = dict(
                final=np.asarray(jax.vmap(coordinate_weights)(r.final)),
                s=lr * r.steps.T,
                w=np.swapaxes(r.history["w"], 0, 1),
                log_loss=r.history["log_loss"].T,
                ok=r.reached & ~r.diverged,
            )
    return out


def closed_form_error(W0: np.ndarray, sim: dict) -> dict:
    """Max relative error of the saved states against the closed form, per parameterization
    (EWN: only save points before any coordinate passes half its blow-up time)."""
    x = np.asarray(POINT)
    errs = {}
    for name, r in sim.items():
        s, w = r["s"], r["w"]
        pred = np.asarray(closed_form(jnp.asarray(W0)[:, None, :], jnp.asarray(x), s, name))
        keep = np.isfinite(s) & np.all(np.isfinite(w), axis=-1)
        if name == "ewn":
            keep &= s < 0.5 / np.max(W0 * x, axis=1)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.abs(w - pred) / np.abs(pred)
        errs[name] = float(np.max(np.where(keep[..., None], rel, 0.0)))
    return errs


def run(options: Options) -> dict:
    """Run simple-traj with ``options``; write ``simple_traj.png``, ``metrics.json`` and
    ``report.md`` under ``options.out``. **Returns:** the metrics, with ``verdicts``."""
    W0 = inits(jax.random.key(0), options.seeds)
    sim = simulate(W0, dynamics=options.dynamics, target=options.target, lr=options.lr)
    x = np.asarray(POINT)
    xhat = x / np.linalg.norm(x)
    dirs = {
        k: r["final"] / np.linalg.norm(r["final"], axis=1, keepdims=True) for k, r in sim.items()
    }
    # EWN: the predicted axis is argmax_i w_i(0) x_i; distance to an axis is min_i |dir_i|.
    predicted_axis = np.argmax(W0 * x, axis=1)
    ewn_axis = np.argmax(np.abs(dirs["ewn"]), axis=1)
    ewn_off_axis = np.min(np.abs(dirs["ewn"]), axis=1)
    std_cos = dirs["standard"] @ xhat
    start_cos = (W0 / np.linalg.norm(W0, axis=1, keepdims=True)) @ xhat
    errs = closed_form_error(W0, sim)
    n_p = len(PAPER_INITS)
    metrics = {
        "dynamics": options.dynamics,
        "target_log_loss": options.target,
        "inits": W0,
        "final_direction": dirs,
        "ok": {k: r["ok"] for k, r in sim.items()},
        "ewn_axis": ewn_axis,
        "predicted_axis": predicted_axis,
        "ewn_off_axis": ewn_off_axis,
        "standard_cos_to_xhat": std_cos,
        "init_cos_to_xhat": start_cos,
        "closed_form_max_rel_error": errs,
    }
    # Figures: trajectories in the w-plane, and the direction angle against -log L.
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for j in range(n_p):
        for name in ("ewn", "standard"):
            w = sim[name]["w"][j]
            w = w[np.all(np.isfinite(w), axis=1)]
            label = PARAM_STYLE[name]["label"] if j == 0 else None
            axes[0].plot(w[:, 0], w[:, 1], **{**PARAM_STYLE[name], "label": label})
            axes[0].plot(*W0[j], "ko", ms=3)
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="$w_1$",
        ylabel="$w_2$",
        title="trajectories (paper's inits)",
    )
    axes[0].legend()
    for j in range(n_p):
        for name in ("ewn", "standard"):
            w, ll = sim[name]["w"][j], sim[name]["log_loss"][j]
            ok = np.all(np.isfinite(w), axis=1) & np.isfinite(ll)
            ang = np.degrees(np.arctan2(w[ok, 1], w[ok, 0]))
            axes[1].plot(-ll[ok], ang, **{**PARAM_STYLE[name], "label": None}, alpha=0.8)
    axes[1].axhline(np.degrees(np.arctan2(x[1], x[0])), ls="--", c="k", lw=0.8, label="x/||x||")
    axes[1].set(xscale="log", xlabel="-log L", ylabel="angle of w (deg)", title="direction vs loss")
    axes[1].xaxis.set_minor_formatter(plt.NullFormatter())  # labelled minor ticks collide
    axes[1].legend()
    for name in ("ewn", "standard"):
        axes[2].scatter(dirs[name][:, 0], dirs[name][:, 1], s=14, alpha=0.6, **PARAM_STYLE[name])
    t = np.linspace(0, np.pi / 2, 100)
    axes[2].plot(np.cos(t), np.sin(t), "k:", lw=0.7)
    axes[2].plot(*xhat, "k*", ms=10, label="x/||x||")
    axes[2].set(
        aspect="equal",
        xlabel="$w_1/||w||$",
        ylabel="$w_2/||w||$",
        title=f"final directions, all {len(W0)} inits",
    )
    axes[2].legend(fontsize=8)
    figs = [save_figure(fig, options.out, "simple_traj.png")]
    # Report.
    rows = []
    for j, w0 in enumerate(PAPER_INITS):
        paper = PAPER_EWN.get(w0)
        rows.append(
            [
                str(w0),
                "({:.3f}, {:.3f})".format(*tuple(dirs["ewn"][j])),
                "({:.3f}, {:.3f})".format(*paper) if paper else "-",
                "({:.3f}, {:.3f})".format(*tuple(dirs["standard"][j])),
                "({:.3f}, {:.3f})".format(*tuple(dirs["swn"][j])),
            ]
        )
    # The other coordinate j stays bounded: w_j -> 1/(1/w_j(0) - x_j/(w_i(0) x_i)) as the axis
    # coordinate i blows up, so the off-axis share min_i |w_i|/||w|| -> 0 as log L -> -inf.
    i_ax = predicted_axis
    j_ax = 1 - i_ax
    rows_ = np.arange(len(W0))
    bound = 1.0 / (1.0 / W0[rows_, j_ax] - x[j_ax] / (W0[rows_, i_ax] * x[i_ax]))
    ewn_final = sim["ewn"]["final"]
    below_bound = np.abs(ewn_final[rows_, j_ax]) <= bound * (1 + 1e-6)
    start_off = np.min(W0, axis=1) / np.linalg.norm(W0, axis=1)
    on_axis = (ewn_axis == predicted_axis) & below_bound & (ewn_off_axis < start_off)
    metrics["ewn_other_coordinate_bound"] = bound
    drift = std_cos > start_cos
    dev = max(
        float(np.max(np.abs(dirs["ewn"][j] - np.asarray(PAPER_EWN[w0]))))
        for j, w0 in enumerate(PAPER_INITS)
        if w0 in PAPER_EWN
    )
    all_ok = all(bool(np.all(r["ok"])) for r in sim.values())
    dyn = (
        "exact loss-normalized gradient flow (diffrax Tsit5, rtol 1e-10), S(t) = s"
        if options.dynamics == "flow"
        else f"GD with step {options.lr}/L (objective log L)"
    )
    verdicts = [
        judge(
            bool(on_axis.all()),
            "EWN ends on a coordinate axis chosen by the init",
            f"{int(on_axis.sum())}/{len(W0)} inits head to the predicted axis, off-axis share "
            f"{mean_std(ewn_off_axis)} at log L = {options.target} (-> 0 as log L -> -inf); "
            f"max deviation from the paper's two quoted directions {dev:.3f}",
        ),
        judge(
            bool(drift.all()),
            "unnormalized drifts towards x/||x||",
            f"cos(w, x) rose on {int(drift.sum())}/{len(W0)} inits, to {mean_std(std_cos, '.4f')}",
        ),
        judge(
            options.dynamics != "flow" or max(errs.values()) < 1e-6,
            "closed form 1/w_i(t) = 1/w_i(0) - x_i S(t) (EWN), w = w(0) + x S(t) (unnormalized)",
            f"max relative error {max(errs.values()):.1e}"
            + ("" if options.dynamics == "flow" else "; GD follows it only up to O(eta)"),
        ),
    ]
    metrics["verdicts"] = verdicts
    lines = [
        "# simple-traj",
        "",
        f"Linear model w . x, one point x = {POINT}, exponential loss, run to log L = "
        f"{options.target}. Each coordinate is a 1-D neuron (EWN: w_i = exp(a_i) sign(v_i)). "
        f"Dynamics: {dyn}. Inits: the paper's 5 plus {options.seeds} random ones uniform in "
        "[0.5, 5]^2, all vmapped. "
        "SWN on 1-D neurons moves g_i exactly like an unnormalized w_i.",
        "",
        f"All runs reached the target: {all_ok}.",
        "",
        "## Final directions w/||w|| (paper's inits)",
        "",
        table(["init", "EWN (ours)", "EWN (paper)", "unnormalized (ours)", "SWN (ours)"], rows),
        "",
        "Unnormalized limit direction x/||x|| = ({:.3f}, {:.3f}).".format(*tuple(xhat)),
        "",
        "## Over all inits (mean ± std)",
        "",
        table(
            ["quantity", "measured"],
            [
                ["EWN min_i |w_i|/||w|| (0 = on an axis)", mean_std(ewn_off_axis)],
                ["EWN off-axis share at the start", mean_std(start_off)],
                [
                    "EWN on the predicted axis argmax_i w_i(0) x_i, other coordinate below its "
                    "bound "
                    "1/(1/w_j(0) - x_j/(w_i(0) x_i)), off-axis share shrunk",
                    f"{int(on_axis.sum())}/{len(W0)}",
                ],
                ["unnormalized cos(w, x) at start", mean_std(start_cos, ".4f")],
                ["unnormalized cos(w, x) at the end", mean_std(std_cos, ".4f")],
            ],
        ),
        "",
        "## Closed form",
        "",
        table(
            ["parameterization", "max relative error vs closed form"],
            [[k, f"{v:.2e}"] for k, v in errs.items()],
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
