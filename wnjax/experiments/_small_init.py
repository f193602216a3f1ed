"""Small initialization (Kumar & Haupt 2024, 2025; docs/theory.md §7): NCF, escape, saddles.

Two-layer ReLU^2 student (10 units, 3-homogeneous) on the teacher
``relu(x1)^2 - 0.5 relu(x2)^2``, ``n = 100`` points on the sphere of ``R^6``, loss
``1/2 mean r^2``, from ``w(0) = delta w_0/||w_0||``. Exact gradient flow (diffrax, Tsit5; the
per-seed runs of one delta vmapped over the seeds in one program) and GD (step 0.05). The
2-homogeneous variant freezes the output weights at ``+-1`` and trains the first layer only.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from wnjax._dynamics.descent import gradient_descent
from wnjax._dynamics.flow import gradient_flow
from wnjax._losses import Square
from wnjax._nets.models import MLP
from wnjax._nets.parameterize import standard, to_standard
from wnjax._runtime.errors import InvalidInput
from wnjax.experiments._options import Common, option
from wnjax.experiments._report import (
    judge,
    mean_std,
    pyplot,
    render_verdicts,
    save_figure,
    seed_band,
    table,
    write_outputs,
)
from wnjax.small_init._dynamics import (
    fit_escape_scaling,
    log_save_times,
    reduced_network,
    relu2_teacher_data,
    scale_to_norm,
    small_init_diagnostics,
    stacked_unit_norms,
    unit_norms,
)
from wnjax.small_init._ncf import ncf_kkt_point, ncf_second_order

DESCRIPTION = (
    "ReLU^2 teacher-student from small init: NCF alignment, escape ~ 1/delta, first saddle"
)
N_POINTS, DIM, WIDTH = 100, 6, 10
LOSS = Square(mean=True)
K_LEVELS = (3.0, 10.0, 30.0, 100.0)
REFERENCE_COS = (0.67, 0.89, 0.98, 0.997)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


@dataclasses.dataclass(frozen=True)
class Options(Common):
    """small-init's options, besides ``seeds`` (init seeds), ``out`` and ``full`` (``Common``;
    ``full`` adds GD from ``delta = 1e-3``). Lists of deltas are comma-separated positive numbers.

    - deltas: the init norms ``delta`` of the alignment and plateau runs;
    - escape_deltas: the deltas of the escape-time fit, ``L = 3``;
    - escape_deltas_2: the deltas of the escape-time fit of the 2-homogeneous variant;
    - gd_lr: GD's step;
    - gd_deltas: the deltas run with GD (``None``: 1e-2; with ``full``: 1e-2,1e-3);
    - target: the ``log L`` that ends the saddle-to-saddle run;
    - time_sequential: rerun the flows and escapes of the smallest delta seed by seed, for the
      speedup of the vmapped runs and their agreement with the sequential ones.
    """

    deltas: str = option("1e-2,1e-3", "deltas for alignment/plateaus")
    escape_deltas: str = option("1e-2,3e-3,1e-3,3e-4,1e-4", "deltas of the escape-time fit (L = 3)")
    escape_deltas_2: str = option(
        "1e-2,1e-3,1e-4,1e-5,1e-6", "deltas of the escape-time fit of the 2-homogeneous variant"
    )
    gd_lr: float = option(0.05, "GD step", positive=True)
    gd_deltas: str | None = option(None, "deltas run with GD (default 1e-2; --full: 1e-2,1e-3)")
    target: float = option(-25.0, "log L that ends the saddle-to-saddle run")
    time_sequential: bool = option(
        True,
        "also run the seeds one after another at the smallest "
        "delta: the vmapped runs' speedup and agreement",
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("deltas", "escape_deltas", "escape_deltas_2", "gd_deltas"):
            text = getattr(self, name)
            if text is None:
                continue
            try:
                values = _floats(text)
            except ValueError:
                values = []
            if not values or not all(v > 0 for v in values):
                raise InvalidInput(
                    f"{name} must be comma-separated positive numbers such as "
                    f"'1e-2,1e-3', got {text!r}."
                )
            if name.startswith("escape") and len(set(values)) < 2:
                raise InvalidInput(
                    f"{name} needs two or more different deltas (the escape time is fitted "
                    f"across them), got {text!r}; e.g. '1e-2,1e-3,1e-4'."
                )


def student(key, *, two_homogeneous: bool = False):
    """The ReLU^2 student; with ``two_homogeneous`` the output is frozen at ``+-1``
    (alternating)."""
    model = MLP(DIM, WIDTH, 2, activation="relu2", key=key)
    if not two_homogeneous:
        return model
    signs = jnp.where(jnp.arange(WIDTH) % 2 == 0, 1.0, -1.0)[None, :]
    model = eqx.tree_at(lambda m: m.layers[1].weight, model, signs)
    return standard(model, freeze=lambda m: [m.layers[1]])


FLOW_TOLERANCES = dict(rtol=1e-10, atol=1e-14)
FLOW_SOLVER = "tsit5"


def _flow(model, X, y, delta, t1, *, target=None, n_save=1500, decades=7.0):
    return gradient_flow(
        scale_to_norm(model, delta),
        X,
        y,
        loss=LOSS,
        t1=t1,
        save_ts=log_save_times(t1, n_save, decades),
        max_steps=400_000,
        target_log_loss=target,
        throw=False,
        **FLOW_TOLERANCES,
        diagnostics=False,
    )


def stack_models(models):
    """``(params, static)``: the models' arrays stacked on a leading seed axis, and their common
    non-array part (``eqx.combine(params_i, static)`` is model ``i``)."""
    params = [eqx.filter(m, eqx.is_array) for m in models]
    return (
        jax.tree_util.tree_map(lambda *a: jnp.stack(a), *params),
        eqx.filter(models[0], eqx.is_array, inverse=True),
    )


class TimeScale(eqx.Module):
    """``rate(grads, params) = scale * grads``: the flow ``dw/dtau = -scale grad L`` is gradient
    flow in ``t = scale tau``."""

    scale: jax.Array

    def __call__(self, grads, params):
        return jax.tree_util.tree_map(lambda g: self.scale * g, grads)


def _flow_lane(params, static, X, y, delta, t1, save_tau):
    """Gradient flow from ``scale_to_norm(model, delta)`` over ``t in [0, t1]``, run in
    ``tau = t / t1`` (``TimeScale(t1)``) and saved at ``tau in save_tau`` (one lane; a common
    ``save_tau`` is a grid proportional to each lane's ``t1``)."""
    return gradient_flow(
        scale_to_norm(eqx.combine(params, static), delta),
        X,
        y,
        loss=LOSS,
        t1=1.0,
        save_ts=save_tau,
        rate=TimeScale(t1),
        max_steps=400_000,
        throw=False,
        solver=FLOW_SOLVER,
        **FLOW_TOLERANCES,
        diagnostics=False,
    )


def _escape_lane(params, static, X, y, delta, t1, drop=0.01):
    """The escape time: gradient flow from ``||w(0)|| = delta`` stopped by a root-found event
    where ``L = (1 - drop) L(0)``; ``(T, reached, steps)``."""
    model = scale_to_norm(eqx.combine(params, static), delta)
    log_l0 = LOSS.log_loss(jax.vmap(to_standard(model))(X), y)
    r = gradient_flow(
        model,
        X,
        y,
        loss=LOSS,
        t1=t1,
        n_save=2,
        save_states=False,
        max_steps=400_000,
        target_log_loss=log_l0 + np.log1p(-drop),
        throw=False,
        solver=FLOW_SOLVER,
        **FLOW_TOLERANCES,
        diagnostics=False,
    )
    return r.final_time, r.reached_target, r.stats["num_steps"]


@functools.lru_cache(maxsize=16)
def _flow_programs(static, X, y, save_tau: tuple):
    """The compiled flows of one configuration (model structure, data ``X``/``y`` as ``_Key``,
    save grid in ``tau``): vmapped over stacked parameters and horizons, and for one run.
    ``delta`` and ``t1`` are traced."""
    grid, X, y = np.asarray(save_tau), X.value, y.value

    def lane(p, delta, t1):
        return _flow_lane(p, static, X, y, delta, t1, grid)

    return (jax.jit(jax.vmap(lane, in_axes=(0, None, 0))), jax.jit(lane))


@functools.lru_cache(maxsize=16)
def _escape_programs(static, X, y):
    """The compiled escapes of one model structure and data: vmapped over stacked parameters
    and horizons, and for one run; ``delta`` and ``t1`` are traced."""
    X, y = X.value, y.value

    def lane(p, delta, t1):
        return _escape_lane(p, static, X, y, delta, t1)

    return jax.jit(jax.vmap(lane, in_axes=(0, None, 0))), jax.jit(lane)


class _Key:
    """An array compared by identity, so that it can key a cache of compiled programs."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _Key) and other.value is self.value


def seed_flows(models, X, y, delta, t1s, save_tau, *, batched=True):
    """``_flow_lane`` for every model, from ``||w(0)|| = delta`` to its ``t1`` (saved at
    ``t = t1 tau`` for ``tau`` in ``save_tau``): one vmapped program (``batched``) or one run per
    model of a program compiled once. Returns the stacked ``FlowResult``, its ``ts`` in ``t``."""
    params, static = stack_models(models)
    vmapped, single = _flow_programs(static, _Key(X), _Key(y), tuple(np.asarray(save_tau)))
    delta, t1s = jnp.asarray(delta, float), jnp.asarray(t1s, float)
    if batched:
        out = vmapped(params, delta, t1s)
    else:
        out = jax.tree_util.tree_map(
            lambda *a: jnp.stack(a),
            *[single(_unstack(params, i), delta, t1s[i]) for i in range(len(models))],
        )
    return eqx.tree_at(lambda r: r.ts, out, out.ts * t1s[:, None])


def seed_escapes(models, X, y, delta, t1s, *, batched=True):
    """Escape times (``_escape_lane``) of every model from ``||w(0)|| = delta``, with horizons
    ``t1s``: one vmapped program (``batched``) or one run per model of a program compiled once
    (per model structure: every delta reuses it).

    **Returns:** ``(T, steps)`` as numpy arrays (``T = inf`` where the loss did not drop by 1%
    before ``t1``).
    """
    params, static = stack_models(models)
    vmapped, single = _escape_programs(static, _Key(X), _Key(y))
    delta, t1s = jnp.asarray(delta, float), jnp.asarray(t1s, float)
    if batched:
        T, ok, steps = vmapped(params, delta, t1s)
    else:
        T, ok, steps = (
            jnp.stack(a)
            for a in zip(*[single(_unstack(params, i), delta, t1s[i]) for i in range(len(models))])
        )
    return np.where(np.asarray(ok), np.asarray(T), np.inf), np.asarray(steps)


def _unstack(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def _speedup(models, X, y, ncf, delta) -> dict:
    """Wall time of the flows and escapes from ``delta`` for all seeds, vmapped and one after
    another: the first call (with its compilation) and a second one (run only); and the largest
    difference between the two modes: ``|log L|`` on the save grid and relative escape times."""
    t1s = [1.3 * N_POINTS * float(item["kkt"].escape_integral) / delta for item in ncf]
    grid = log_save_times(1.0, 1500, 7.0)
    out, results = {"delta": delta, "seeds": len(models)}, {}
    for name, batched in (("vmapped", True), ("sequential", False)):
        _flow_programs.cache_clear()  # each mode pays its compilation
        _escape_programs.cache_clear()
        for call in ("first", "run"):
            t0 = time.time()
            flows = seed_flows(models, X, y, delta, t1s, grid, batched=batched)
            jax.block_until_ready(flows.log_loss)
            T, _ = seed_escapes(models, X, y, delta, t1s, batched=batched)
            out[f"{name}_{call}_seconds"] = time.time() - t0
        results[name] = (np.asarray(flows.log_loss), T)
    (lv, Tv), (ls, Ts) = results["vmapped"], results["sequential"]
    out["speedup_first"] = out["sequential_first_seconds"] / out["vmapped_first_seconds"]
    out["speedup_run"] = out["sequential_run_seconds"] / out["vmapped_run_seconds"]
    out["max_log_loss_difference"] = float(np.nanmax(np.abs(lv - ls)))
    out["max_escape_relative_difference"] = float(np.max(np.abs(Tv / Ts - 1)))
    return out


def run(options: Options) -> dict:
    """Run small-init with ``options``; write its figures, ``metrics.json`` and ``report.md``
    under ``options.out``. **Returns:** the metrics, with ``verdicts``."""
    t_start = time.time()
    # largest first: the fits and the "two smallest deltas" read them in this order
    deltas, esc_deltas, esc_deltas2 = (
        sorted(set(_floats(text)), reverse=True)
        for text in (options.deltas, options.escape_deltas, options.escape_deltas_2)
    )
    gd_deltas = (
        _floats(options.gd_deltas)
        if options.gd_deltas
        else ([1e-2, 1e-3] if options.full else [1e-2])
    )
    seeds = max(1, options.seeds)
    X, y = relu2_teacher_data(jax.random.key(0), n=N_POINTS, d=DIM)
    log_l0 = float(np.log(0.5 * np.mean(np.asarray(y) ** 2)))
    keys = [jax.random.key(1 + s) for s in range(seeds)]

    # --- NCF: KKT points, sparsity, second order, reduced nets ---
    ncf = []
    for key in keys:
        model = student(key)
        kkt = ncf_kkt_point(model, X, y)
        so = ncf_second_order(kkt.u, X, y)
        units = np.asarray(unit_norms(kkt.u))
        red = reduced_network(kkt, X, y, loss=LOSS, scale=1e-3)
        ncf.append(
            dict(
                model=model,
                kkt=kkt,
                kind=so.kind,
                max_eig=float(np.max(so.eigenvalues)),
                active=int(np.sum(units > 1e-6)),
                reduced=red,
                reduced_loss=float(np.exp(red.log_loss)),
            )
        )

    # --- GF from each delta, vmapped over the seeds: alignment, escape, plateau, inactive ---
    gf, timing = {}, {"flows": 0.0, "escapes": 0.0}
    models = [item["model"] for item in ncf]
    for delta in deltas:
        t1s = [1.3 * N_POINTS * float(item["kkt"].escape_integral) / delta for item in ncf]
        t0 = time.time()
        flows = seed_flows(models, X, y, delta, t1s, log_save_times(1.0, 1500, 7.0))
        escapes, _ = seed_escapes(models, X, y, delta, t1s)
        timing["flows"] += time.time() - t0
        rows = []
        for s, item in enumerate(ncf):
            r = _unstack(flows, s)
            d = small_init_diagnostics(
                r.ts, r.log_loss, r.states, item["kkt"], delta, k_levels=K_LEVELS
            )
            plateau = float(np.exp(d.saddles[0].log_loss)) if d.saddles else np.nan
            rows.append(
                dict(
                    diag=d,
                    steps=int(r.stats["num_steps"]),
                    plateau=plateau,
                    escape=float(escapes[s]),
                    plateau_rel=plateau / item["reduced_loss"] - 1,
                    inactive=d.inactive_norms,
                )
            )
        gf[delta] = rows

    # --- escape-time scaling, L = 3 and the 2-homogeneous variant, vmapped over the seeds ---
    escape = {}
    for label, two, ds in (("L=3", False, esc_deltas), ("L=2", True, esc_deltas2)):
        variants = [student(key, two_homogeneous=two) for key in keys]
        kkts = (
            [item["kkt"] for item in ncf] if not two else [ncf_kkt_point(m, X, y) for m in variants]
        )
        nstar = [float(k.value) for k in kkts]
        integral = [float(k.escape_integral) for k in kkts]
        times, steps = [], []
        for delta in ds:
            if two:
                t1s = [
                    3.0 * N_POINTS * (np.log(1 / delta) + 10) / (2 * max(v, 1e-3)) for v in nstar
                ]
            else:
                t1s = [1.5 * N_POINTS * v / delta for v in integral]
            t0 = time.time()
            T, n_steps = seed_escapes(variants, X, y, delta, t1s)
            timing["escapes"] += time.time() - t0
            times.append(T)
            steps.append(n_steps)
        times, steps = np.array(times).T, np.array(steps).T
        fits = [fit_escape_scaling(ds, t, 2.0 if two else 3.0) for t in times]
        escape[label] = dict(
            deltas=np.array(ds),
            times=times,
            steps=steps,
            nstar=np.array(nstar),
            integral=np.array(integral),
            fits=fits,
        )
    timing["speedup"] = _speedup(models, X, y, ncf, deltas[-1]) if options.time_sequential else None

    # --- saddle to saddle: GF to the target loss, and GD ---
    item = ncf[0]
    delta_s = deltas[-1]
    t1_long = 40.0 * N_POINTS * float(item["kkt"].escape_integral) / delta_s
    long = _flow(
        item["model"], X, y, delta_s, t1_long, target=options.target, n_save=3000, decades=8
    )
    long_d = small_init_diagnostics(long.ts, long.log_loss, long.states, item["kkt"], delta_s)
    gd = {}
    for delta in gd_deltas:
        t_end = 2.6 * N_POINTS * float(item["kkt"].escape_integral) / delta
        num_steps = int(t_end / options.gd_lr)
        t0 = time.time()
        r = gradient_descent(
            scale_to_norm(item["model"], delta),
            X,
            y,
            num_steps=num_steps,
            learning_rate=options.gd_lr,
            loss=LOSS,
            n_save=1500,
            save_states=True,
            chunk_size=20_000,
            target_log_loss=options.target,
            throw=False,
        )
        # The escape step exactly: full-batch GD checks the target every step.
        esc = gradient_descent(
            scale_to_norm(item["model"], delta),
            X,
            y,
            num_steps=num_steps,
            learning_rate=options.gd_lr,
            loss=LOSS,
            n_save=2,
            chunk_size=20_000,
            target_log_loss=log_l0 + np.log(0.99),
            throw=False,
        )
        steps_arr = np.asarray(r.steps, float)
        ts = np.where(steps_arr >= 0, steps_arr * options.gd_lr, np.inf)
        d = small_init_diagnostics(ts, r.log_loss, r.states, item["kkt"], delta, k_levels=K_LEVELS)
        gf_match = gf.get(delta, [None])[0]
        gd[delta] = dict(
            diag=d,
            steps=int(r.num_steps),
            seconds=time.time() - t0,
            escape=int(esc.num_steps) * options.gd_lr,
            plateau=float(np.exp(d.saddles[0].log_loss)) if d.saddles else np.nan,
            gf_escape=gf_match["escape"] if gf_match else np.nan,
        )

    return _report(
        options,
        X,
        y,
        log_l0,
        ncf,
        gf,
        escape,
        long,
        long_d,
        gd,
        delta_s,
        time.time() - t_start,
        timing,
    )


def _report(
    options, X, y, log_l0, ncf, gf, escape, long, long_d, gd, delta_s, seconds, timing
) -> dict:
    plt = pyplot()
    deltas = sorted(gf, reverse=True)
    figs = []

    # Figure 1: cos(w, u*) against ||w|| / delta.
    fig, ax = plt.subplots(figsize=(6, 4))
    for delta in deltas:
        d = gf[delta][0]["diag"]
        ax.plot(d.norms / delta, d.cosines, label=f"GF, delta={delta:g}")
    for delta, g in gd.items():
        d = g["diag"]
        ax.plot(d.norms / delta, d.cosines, "--", label=f"GD, delta={delta:g}")
    for k in K_LEVELS:
        ax.axvline(k, c="gray", lw=0.6, ls=":")
    ax.set(
        xscale="log",
        xlabel="||w|| / delta",
        ylabel="cos(w, u*)",
        ylim=(-0.1, 1.02),
        title="alignment with the NCF's KKT point (seed 0)",
    )
    ax.legend()
    figs.append(save_figure(fig, options.out, "alignment.png"))

    # Figure 2: escape time scaling.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    e3, e2 = escape["L=3"], escape["L=2"]
    # Each seed's own prediction n I / delta sets its scale: the ratio reads at any seed count.
    inv3 = np.broadcast_to(1 / np.asarray(e3["deltas"]), np.shape(e3["times"]))
    ratio = (
        np.asarray(e3["times"])
        * np.asarray(e3["deltas"])
        / (N_POINTS * np.asarray(e3["integral"])[:, None])
    )
    seed_band(axes[0], inv3, ratio, log_x=True, color="tab:red", label="T / (n I / delta)")
    axes[0].axhline(1.0, ls=":", c="k", lw=0.8, label="prediction n I / delta")
    axes[0].legend(fontsize=8)
    log2 = np.broadcast_to(np.log(1 / np.asarray(e2["deltas"])), np.shape(e2["times"]))
    seed_band(axes[1], log2, e2["times"], color="tab:blue", label="T")
    axes[1].legend(fontsize=8)
    axes[0].set(
        xscale="log",
        xlabel="1/delta",
        ylabel="escape time T over its prediction",
        title="L = 3: T ~ n I / delta (escape at a 1% loss drop)",
    )
    axes[1].set(
        xlabel="log(1/delta)",
        ylabel="escape time T",
        title="L = 2 (frozen +-1 output): T linear in log(1/delta)",
    )
    figs.append(save_figure(fig, options.out, "escape.png"))

    # Figure 3: saddle to saddle, against the rescaled time delta t (escapes at delta t ~ n I).
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ok = np.isfinite(long.ts) & (long.ts > 0)
    ts = np.asarray(long.ts)[ok]
    axes[0].semilogy(
        delta_s * ts, np.exp(np.asarray(long.log_loss)[ok]), label=f"GF, delta={delta_s:g}"
    )
    for delta, g in gd.items():
        d = g["diag"]
        okd = np.isfinite(d.ts) & (d.ts > 0)
        axes[0].semilogy(
            delta * d.ts[okd],
            np.exp(d.log_loss[okd]),
            "--",
            label=f"GD (step {options.gd_lr}), delta={delta:g}",
        )
    for p in long_d.plateaus:
        axes[0].axvspan(delta_s * p.start, delta_s * p.end, color="tab:orange", alpha=0.15)
    axes[0].axhline(ncf[0]["reduced_loss"], c="k", ls=":", lw=0.8, label="reduced net's loss")
    axes[0].set(
        xlabel="delta t",
        ylabel="loss",
        title="saddle to saddle (shaded: plateaus detected on the GF run)",
    )
    axes[0].legend(fontsize=8)
    units = np.asarray(stacked_unit_norms(long.states))[ok]
    axes[1].semilogy(delta_s * ts, units)
    axes[1].axhline(delta_s, c="k", ls=":", lw=0.8)
    axes[1].set(
        xlabel="delta t",
        ylabel="unit norm sqrt(|w_j|^2 + a_j^2)",
        title=f"per-unit norms (GF, delta={delta_s:g})",
    )
    figs.append(save_figure(fig, options.out, "saddle_to_saddle.png"))

    # Figure 4: inactive norms / delta.
    fig, ax = plt.subplots(figsize=(6, 4))
    for delta in deltas:
        inact = gf[delta][0]["inactive"]
        if inact is not None:
            ax.plot(np.arange(inact.size), inact / delta, "o-", label=f"delta={delta:g}")
    ax.set(
        xlabel="inactive unit",
        ylabel="norm / delta at the first saddle",
        title="inactive units stay O(delta) (seed 0)",
    )
    ax.legend()
    figs.append(save_figure(fig, options.out, "inactive_norms.png"))

    # Numbers.
    nstar = np.array([c["kkt"].value for c in ncf], float)
    resid = np.array([c["kkt"].residual for c in ncf], float)
    active = np.array([c["active"] for c in ncf])
    kinds = [c["kind"] for c in ncf]
    red_loss = np.array([c["reduced_loss"] for c in ncf])
    red_grad = np.array([float(c["reduced"].grad_norm) for c in ncf])
    cos_table = []
    for delta in deltas:
        kc = np.array([r["diag"].k_cosines for r in gf[delta]])
        cos_table.append(
            [f"GF {delta:g}"]
            + [mean_std(kc[:, i], ".4f") for i in range(len(K_LEVELS))]
            + [mean_std([r["diag"].cos_at_escape for r in gf[delta]], ".4f")]
        )
    for delta, g in gd.items():
        d = g["diag"]
        cos_table.append(
            [f"GD {delta:g} (seed 0)"]
            + [f"{c:.4f}" for c in d.k_cosines]
            + [f"{d.cos_at_escape:.4f}"]
        )
    cos_table.append(
        ["reference numpy GD (its own w0 and norm convention)"]
        + [str(c) for c in REFERENCE_COS]
        + ["-"]
    )
    plateau_rel = {delta: np.array([r["plateau_rel"] for r in gf[delta]]) for delta in deltas}
    ratio = None
    if len(deltas) >= 2:
        a, b = deltas[0], deltas[1]
        ratio = np.concatenate(
            [
                ra["inactive"] / rb["inactive"]
                for ra, rb in zip(gf[a], gf[b])
                if ra["inactive"] is not None and rb["inactive"] is not None
            ]
        )
        ratio_target = a / b
    f3 = escape["L=3"]["fits"]
    f2 = escape["L=2"]["fits"]
    exp3 = np.array([f["exponent"] for f in f3])
    tdelta = escape["L=3"]["times"] * escape["L=3"]["deltas"][None, :]
    pred_c = N_POINTS * escape["L=3"]["integral"][:, None]
    ratio_pred = tdelta[:, -1] / pred_c[:, 0]
    slope2 = np.array([f["log_slope"] for f in f2])
    slope2_pred = N_POINTS / (2 * escape["L=2"]["nstar"])
    # The local slope between the two smallest deltas: the delta -> 0 limit is n / (2 N*).
    t2, d2 = escape["L=2"]["times"], escape["L=2"]["deltas"]
    local2 = (t2[:, -1] - t2[:, -2]) / np.log(d2[-2] / d2[-1])
    exp2 = np.array([f["exponent"] for f in f2])
    long_saddles = [p for p in long_d.saddles]

    metrics = {
        "timing": timing,
        "n_points": N_POINTS,
        "dim": DIM,
        "width": WIDTH,
        "seeds": len(ncf),
        "seconds": seconds,
        "ncf_value": nstar,
        "kkt_residual": resid,
        "active_units": active,
        "second_order": kinds,
        "max_tangent_eigenvalue": [c["max_eig"] for c in ncf],
        "escape_integral": [float(c["kkt"].escape_integral) for c in ncf],
        "reduced_loss": red_loss,
        "reduced_grad_norm": red_grad,
        "gf": {
            str(d): {
                "k_levels": K_LEVELS,
                "k_cosines": [r["diag"].k_cosines for r in gf[d]],
                "cos_at_escape": [r["diag"].cos_at_escape for r in gf[d]],
                "escape_time": [r["escape"] for r in gf[d]],
                "plateau_loss": [r["plateau"] for r in gf[d]],
                "plateau_rel_to_reduced": plateau_rel[d],
                "inactive_norms": [r["inactive"] for r in gf[d]],
                "num_steps": [r["steps"] for r in gf[d]],
            }
            for d in deltas
        },
        "escape": {
            k: {
                "deltas": v["deltas"],
                "times": v["times"],
                "num_steps": v["steps"],
                "ncf_value": v["nstar"],
                "fits": v["fits"],
            }
            for k, v in escape.items()
        },
        "escape_T_delta_over_nI": tdelta / pred_c,
        "saddle_to_saddle": {
            "delta": delta_s,
            "num_steps": int(long.stats["num_steps"]),
            "final_log_loss": float(long.final_log_loss),
            "plateaus": [p._asdict() for p in long_d.plateaus],
        },
        "gd": {
            str(d): {
                "lr": options.gd_lr,
                "num_steps": g["steps"],
                "seconds": g["seconds"],
                "escape_time": g["escape"],
                "gf_escape_time": g["gf_escape"],
                "k_cosines": g["diag"].k_cosines,
                "cos_at_escape": g["diag"].cos_at_escape,
                "plateau_loss": g["plateau"],
                "plateaus": [p._asdict() for p in g["diag"].plateaus],
            }
            for d, g in gd.items()
        },
    }

    cos_small = np.array([r["diag"].cos_at_escape for r in gf[deltas[-1]]])
    collapse = np.max(
        np.abs(
            np.array([r["diag"].k_cosines for r in gf[deltas[0]]])[:, :3]
            - np.array([r["diag"].k_cosines for r in gf[deltas[-1]]])[:, :3]
        )
    )
    lines = [
        "# Small initialization: NCF alignment, escape, first saddle",
        "",
        f"Two-layer ReLU^2 student, {WIDTH} units, on y = relu(x1)^2 - 0.5 relu(x2)^2, "
        f"n = {N_POINTS} points uniform on the sphere of R^{DIM}; loss 1/2 mean r^2 "
        f"(L(0) = {np.exp(log_l0):.5g}); "
        f"w(0) = delta w0/||w0||, so ||w(0)|| = delta; {len(ncf)} init seeds. Exact gradient flow "
        f"(diffrax Tsit5, rtol 1e-10, atol 1e-14; the per-seed flows and escapes vmapped over "
        f"the seeds, one compiled program per delta) and GD with step {options.gd_lr}. Escape = "
        f"first time the loss has fallen 1% (a root-found event on the flow). Run time "
        f"{seconds:.0f} s.",
        "",
        "## NCF KKT point u* (spherical NCF flow from w0/||w0||, Newton-polished)",
        "",
        f"- N(u*) = {mean_std(nstar, '.4f')} (the reference numpy simulation's draw of data "
        f"and w0: 1.417); KKT residual "
        f"{mean_std(resid, '.1e')}; active units {active.tolist()}; second order: "
        f"{', '.join(sorted(set(kinds)))} (max tangent eigenvalue "
        f"{mean_std([c['max_eig'] for c in ncf], '.3f')}).",
        f"- Reduced (one-unit) net trained alone by GF from 1e-3 u*: stationary loss "
        f"{mean_std(red_loss, '.6e')}, final gradient norm {mean_std(red_grad, '.1e')}.",
        "",
        "## Alignment: cos(w/||w||, u*) when ||w|| first exceeds K delta",
        "",
        table(["run"] + [f"K={k:g}" for k in K_LEVELS] + ["before 1% loss drop"], cos_table),
        "",
        "## Escape time",
        "",
        table(
            [
                "",
                "deltas",
                "fitted exponent p (T ~ delta^-p)",
                "T/(a log(1/delta) + b) rms",
                "fitted slope a",
                "local slope (2 smallest deltas)",
                "predicted n/(2 N*)",
            ],
            [
                [
                    "L=3",
                    ", ".join(f"{d:g}" for d in escape["L=3"]["deltas"]),
                    mean_std(exp3, ".4f"),
                    "-",
                    "-",
                    "-",
                    "-",
                ],
                [
                    "L=2",
                    ", ".join(f"{d:g}" for d in escape["L=2"]["deltas"]),
                    mean_std(exp2, ".3f"),
                    mean_std([f["log_rms_rel"] for f in f2], ".1e"),
                    mean_std(slope2, ".2f"),
                    mean_std(local2, ".2f"),
                    mean_std(slope2_pred, ".3f"),
                ],
            ],
        ),
        "",
        f"L = 2 local slopes per seed: {np.round(local2, 2).tolist()}.",
        "",
        f"Leading-order theory for L = 3: T = n I / delta, with I = int exp(-3 Phi(s)) ds "
        f"along the "
        f"NCF flow. Measured T delta / (n I) at the smallest delta: {mean_std(ratio_pred, '.4f')} "
        f"(all deltas: {np.round(np.mean(tdelta / pred_c, axis=0), 4).tolist()}). Flow steps per "
        f"escape run: {int(escape['L=3']['steps'].min())}-"
        f"{int(escape['L=3']['steps'].max())} (L=3), "
        f"{int(escape['L=2']['steps'].min())}-{int(escape['L=2']['steps'].max())} (L=2).",
        "",
        "## First saddle",
        "",
        table(
            ["delta", "first plateau loss (GF)", "relative to reduced net", "GF steps"],
            [
                [
                    f"{d:g}",
                    mean_std([r["plateau"] for r in gf[d]], ".7e"),
                    mean_std(plateau_rel[d], ".1e"),
                    mean_std([r["steps"] for r in gf[d]], ".0f"),
                ]
                for d in deltas
            ],
        ),
        "",
    ]
    if ratio is not None:
        lines += [
            f"Inactive-unit norms at the start of the first saddle plateau, ratio between "
            f"delta = {deltas[0]:g} and {deltas[1]:g}: {mean_std(ratio, '.3f')} "
            f"(target {ratio_target:g}; range {ratio.min():.3f}-{ratio.max():.3f}).",
            "",
        ]
    lines += [
        f"## Saddle to saddle (seed 0, delta = {delta_s:g}, GF to log L = {options.target:g})",
        "",
        f"{int(long.stats['num_steps'])} solver steps; final log L = "
        f"{float(long.final_log_loss):.4g}. "
        "Plateaus detected (|d log L / d log t| < 1e-3):",
        "",
        table(
            ["start t", "end t", "loss"],
            [
                [f"{p.start:.4g}", f"{p.end:.4g}", f"{np.exp(p.log_loss):.6e}"]
                for p in long_d.plateaus
            ],
        ),
        "",
    ]
    if gd:
        lines += [
            "## GD",
            "",
            table(
                [
                    "delta",
                    "steps",
                    "seconds",
                    "escape t (GD, first k with a 1% drop, t = k eta)",
                    "escape t (GF)",
                    "first plateau loss",
                    "relative to reduced net",
                ],
                [
                    [
                        f"{d:g}",
                        g["steps"],
                        f"{g['seconds']:.0f}",
                        f"{g['escape']:.6g}",
                        f"{g['gf_escape']:.6g}",
                        f"{g['plateau']:.7e}",
                        f"{g['plateau'] / ncf[0]['reduced_loss'] - 1:.1e}",
                    ]
                    for d, g in gd.items()
                ],
            ),
            "",
        ]
    gd_rel = [abs(g["plateau"] / ncf[0]["reduced_loss"] - 1) for g in gd.values()]
    verdicts = [
        judge(
            bool(np.all(active == 1) and np.all(resid < 1e-9)),
            "u* is a 1-sparse KKT point",
            f"active units {active.tolist()}, residual <= {resid.max():.1e}",
        ),
        judge(
            bool(np.all(cos_small > 0.99)),
            "w/||w|| aligns with u* before the loss moves",
            f"cos before the 1% drop at delta={deltas[-1]:g}: {mean_std(cos_small, '.4f')}",
        ),
        judge(
            bool(collapse < 0.01),
            "the cosine-vs-K curve collapses across delta",
            f"max difference over K = 3, 10, 30 between delta {deltas[0]:g} and "
            f"{deltas[-1]:g}: {collapse:.1e}",
        ),
        judge(
            bool(np.all(np.abs(exp3 - 1) < 0.05)),
            "escape time ~ delta^-(L-2) for L = 3",
            f"fitted exponent {mean_std(exp3, '.4f')}",
        ),
        judge(
            bool(np.all(np.abs(local2 / slope2_pred - 1) < 0.05)),
            "L = 2: escape time linear in log(1/delta), slope n/(2 N*)",
            f"local slope {mean_std(local2, '.2f')} vs n/(2N*) = {mean_std(slope2_pred, '.3f')}; "
            f"a power-law fit gives exponent {mean_std(exp2, '.3f')}",
        ),
        judge(
            bool(np.all(np.abs(plateau_rel[deltas[-1]]) < 1e-4)),
            "first plateau loss = reduced net's stationary loss",
            f"relative difference {mean_std(np.abs(plateau_rel[deltas[-1]]), '.1e')} at "
            f"delta={deltas[-1]:g}",
        ),
        judge(
            bool(ratio is not None and np.all(np.abs(ratio / ratio_target - 1) < 0.2)),
            "inactive norms proportional to delta",
            "n/a" if ratio is None else f"ratio {mean_std(ratio, '.3f')} vs {ratio_target:g}",
        ),
        judge(
            bool(len(long_saddles) >= 1 and float(long.final_log_loss) < np.log(1e-7)),
            "saddle-to-saddle: plateaus, then the loss falls below 1e-7",
            f"{len(long_saddles)} plateau(s) after the escape, final loss "
            f"{np.exp(float(long.final_log_loss)):.2e}",
        ),
    ]
    if gd:
        verdicts.append(
            judge(
                bool(np.all(np.array(gd_rel) < 1e-4)),
                f"GD (step {options.gd_lr:g}) sees the same first saddle",
                f"relative difference {max(gd_rel):.1e}",
            )
        )
    metrics["verdicts"] = verdicts
    lines += _timing_lines(timing)
    lines += ["## Verdicts", "", *render_verdicts(verdicts), "", "Figures: " + ", ".join(figs)]
    write_outputs(options.out, metrics, "\n".join(lines))
    return metrics


def _timing_lines(timing) -> list[str]:
    lines = [
        "## Seeds vmapped",
        "",
        f"Per-seed flows and escapes: {timing['flows']:.0f} s for the alignment runs and "
        f"{timing['escapes']:.0f} s for the escape-time fits, each configuration one "
        "vmapped program over the seeds (compilation included; the escapes of all deltas "
        "of a model share one program).",
    ]
    sp = timing.get("speedup")
    if sp:
        lines.append(
            f"At delta = {sp['delta']:g}, {sp['seeds']} seeds, flows and escapes: vmapped "
            f"{sp['vmapped_first_seconds']:.1f} s with compilation, {sp['vmapped_run_seconds']:.1f}"
            f" s run only; one after another (one program compiled once) "
            f"{sp['sequential_first_seconds']:.1f} s / {sp['sequential_run_seconds']:.1f} s: "
            f"speedup x{sp['speedup_first']:.2f} / x{sp['speedup_run']:.2f} on this shared CPU. "
            "A vmapped adaptive solve steps all seeds until the slowest is done and pays for "
            "every lane at every step. The results agree to "
            f"{sp['max_log_loss_difference']:.1e} in log L on the save grid and "
            f"{sp['max_escape_relative_difference']:.1e} in relative escape time."
        )
    return lines + [""]
