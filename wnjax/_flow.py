"""Gradient flow ``dw/dt = -grad L(w)``, integrated with diffrax under error control.

The vector field works with ``log L`` throughout: ``grad L = L grad log L``, so the flow is
evaluated accurately however small ``L`` becomes. Two clocks are offered:

- ``time="plain"``: ``d theta/dt = -L grad_theta log L``;
- ``time="normalized"``: ``d theta/ds = -grad_theta log L``, the same path with ``dt/ds = 1/L``.
  Alongside it ``tau = log(1 + t)`` is integrated, ``d tau/ds = exp(-log L - tau)``, so that
  ``log t`` is available without ever forming ``t`` (which overflows past ``log t = 709``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, PyTree

from ._dense import apply_batch
from ._diagnostics import asymptotic_summaries
from ._losses import Loss, get_loss
from ._models import homogeneity_degree
from ._parameterize import (
    Parameterized,
    as_parameterized,
    neuron_norm_sq_rate,
    scale_trainable,
    trainable_weight_norm,
)
from ._validate import check_data, check_outputs

RATES = (None, "neuron_norm_sq")
TIMES = ("plain", "normalized")
# Solvers by name. "stiff" is L-stable: the loss-normalized SWN flow pins ReLU^2 neurons at the
# kink of the activation (a pre-activation -> 0+ under a restoring rate that grows with |log L|),
# where explicit solvers are held to tiny steps by stability, not accuracy.
SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "kvaerno5": diffrax.Kvaerno5,
    "stiff": diffrax.Kvaerno5,
}
# solver="auto": the explicit solver gets at most this many steps before the stiff one takes over.
AUTO_EXPLICIT_STEPS = 20_000
# ... and past it the run is redone level by level of log L in blocks of AUTO_EXPLICIT_STEPS
# Bosh3 steps and AUTO_STIFF_STEPS Kvaerno5 steps (see _solve_levels). Where stability, not
# accuracy, sets the step, Bosh3's 3 stages make a step ~4x cheaper than Tsit5's: the SWN flow to
# log L = -10,000 takes ~950k Bosh3 steps in ~6 s against ~660k Tsit5 steps in ~20 s.
AUTO_STIFF_STEPS = 1_000


def resolve_solver(solver: "str | diffrax.AbstractSolver | None") -> diffrax.AbstractSolver:
    """A diffrax solver from ``None`` (``Tsit5``), a name in ``SOLVERS``, or a solver instance."""
    if solver is None:
        return diffrax.Tsit5()
    if isinstance(solver, tuple):  # (explicit, stiff): solver='auto' past its explicit budget
        return tuple(resolve_solver(x) for x in solver)
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise ValueError(
                f"unknown solver {solver!r}; pass a diffrax solver or one of "
                f"{sorted(SOLVERS) + ['auto']}."
            )
        return SOLVERS[solver]()
    return solver
# Stop at log L = level - _LEVEL_OFFSET (1 + |level|) (to 1e-10 (1 + |level|)): log L <= level.
_LEVEL_OFFSET = 1e-9


class FlowFailed(RuntimeError):
    """A gradient-flow solve stopped before ``t1`` or its target; ``.result`` has the partial run."""

    def __init__(self, message: str, result: "FlowResult"):
        super().__init__(message)
        self.result = result


class FlowResult(eqx.Module):
    """The outcome of ``gradient_flow``. All fields are arrays, so results vmap and stack.

    - `ts`: plain time ``t`` at the save points (``inf`` past the end of the run);
    - `s`: normalized time at the save points (equal to ``ts`` for ``time='plain'``);
    - `log_t`: ``log t`` at the save points;
    - `log_loss`: ``log L`` at the save points;
    - `summaries`: dict of per-save-point diagnostics (margins, neuron norms, ...);
    - `states`: the model at each save point (stacked), or ``None``;
    - `final`: the model at the end of the run, of the same type as the input;
    - `final_log_loss`, `final_log_t`: ``log L`` and ``log t`` at the end;
    - `stats`: solver statistics (``num_steps``, ``num_accepted_steps``, ...);
    - `result_code`: diffrax's result code; `ok` says whether the run succeeded.
    """

    ts: Array
    s: Array
    log_t: Array
    log_loss: Array
    summaries: dict
    states: Any
    final: Any
    final_log_loss: Array
    final_log_t: Array
    final_time: Array
    stats: dict
    result_code: Array
    reached_target: Array

    @property
    def ok(self) -> Array:
        """True when the solve reached ``t1`` or its target log loss."""
        return self.result_code == 0

    @property
    def message(self) -> str:
        """A human-readable account of how the run ended."""
        return _describe(self)

    def check(self) -> "FlowResult":
        """Raise ``FlowFailed`` (carrying this partial result) unless the run succeeded."""
        if not bool(np.all(np.asarray(self.ok))):
            raise FlowFailed(self.message, self)
        return self


def _describe(r: FlowResult) -> str:
    code = np.asarray(r.result_code)
    if code.ndim:
        return f"{int((code == 0).sum())}/{code.size} runs succeeded"
    steps = int(np.asarray(r.stats["num_steps"]))
    if int(code) == 0:
        how = "reached the target log loss" if bool(r.reached_target) else "reached t1"
        return f"gradient flow {how} in {steps} steps (log L = {float(r.final_log_loss):.6g})."
    if int(code) == 1:
        return (
            f"gradient flow stopped after max_steps = {steps} steps, at time "
            f"{float(r.final_time):.6g} with log L = {float(r.final_log_loss):.6g}. The partial "
            "result is kept (result.final, result.summaries). Raise max_steps, loosen rtol/atol, "
            "or use time='normalized' to reach small losses. If the flow is stiff (many rejected "
            "steps, e.g. SWN under time='normalized' at deep targets), pass solver='stiff' "
            "(Kvaerno5) or solver='auto'."
        )
    return (
        f"gradient flow failed (diffrax result code {int(code)}) after {steps} steps at time "
        f"{float(r.final_time):.6g}: the step size collapsed or the state became non-finite. "
        "Check the data scale and the learning-rate option; the partial result is kept."
    )


def _log_loss_fn(params, static, X, y, loss: Loss):
    model = eqx.combine(params, static)
    return loss.log_loss(apply_batch(model, X), y)


def _grad_log_loss(params, static, X, y, loss, rate):
    value, grads = jax.value_and_grad(_log_loss_fn)(params, static, X, y, loss)
    if callable(rate):  # a preconditioner rate(grads, params) -> grads, e.g. wnjax.polar_rates
        full = rate(eqx.combine(grads, static), eqx.combine(params, static))
        grads = eqx.filter(full, eqx.is_inexact_array)
    elif rate == "neuron_norm_sq":
        full = neuron_norm_sq_rate(eqx.combine(grads, static), eqx.combine(params, static))
        grads = eqx.filter(full, eqx.is_inexact_array)
    return value, grads


def summaries(
    p: Parameterized, X: Array, y: Array, loss: Loss, degree: Array, diagnostics: bool = True
) -> dict:
    """Diagnostics of one state: loss and log loss, margins, normalized margin, per-neuron norms, and
    the asymptotic diagnostics of ``wnjax.asymptotic_summaries`` (relative norms, alignment,
    relation spreads, loss direction, KKT residuals).

    The normalized margin is ``min_i q_i / ||w||^L`` with ``L = degree`` and ``||w||`` over the
    trainable layer weights.
    """
    outputs = apply_batch(p, X)
    min_margin = jnp.min(loss.margins(outputs, y))
    log_l = loss.log_loss(outputs, y)
    out = {
        "log_loss": log_l,
        "loss": jnp.exp(log_l),  # underflows to 0 below log L ~ -745; log_loss does not
        "min_margin": min_margin,
        "normalized_margin": min_margin / trainable_weight_norm(p) ** degree,
        "weight_norm": trainable_weight_norm(p),
        "neuron_norms": p.neuron_norms(),
        "direction_norms": p.direction_norms(),
    }
    if diagnostics:  # relative norms, alignment, relation spreads, loss direction, KKT
        out.update(asymptotic_summaries(p, X, y, loss, degree))
    return out


def _tau_to_log_t(tau: Array) -> Array:
    """``log t`` from ``tau = log(1 + t)``: ``log(expm1(tau))``, stably for large ``tau``."""
    big = tau > 1.0
    return jnp.where(
        big,
        tau + jnp.log1p(-jnp.exp(-jnp.where(big, tau, 1.0))),
        jnp.log(jnp.expm1(jnp.where(big, 1.0, tau))),
    )


@eqx.filter_jit
def _solve(
    p: Parameterized,
    X: Array,
    y: Array,
    numbers: dict,
    save_s: Array,
    *,
    loss: Loss,
    solver: diffrax.AbstractSolver,
    time: str,
    rate: str | None,
    has_target: bool,
    max_steps: int,
    save_states: bool,
    save_levels: bool,
    diagnostics: bool,
    progress_meter: diffrax.AbstractProgressMeter,
    controller_kwargs: tuple,
    standard_out: bool = False,
    block_steps: tuple = (),
) -> FlowResult:
    params, static = eqx.partition(p, eqx.is_inexact_array)
    normalized = time == "normalized"
    # The state is (theta, tau). In plain time tau = log(1 + t) is a function of the solver's own
    # clock, so it is not integrated (tau is None): log t is taken from the clock, exactly, and
    # the error control sees theta alone. Normalized time integrates tau alongside theta.

    def field(s, state, args):
        theta, tau = state
        value, g = _grad_log_loss(theta, static, X, y, loss, rate)
        if normalized:
            dtheta = jax.tree_util.tree_map(jnp.negative, g)
            return dtheta, jnp.exp(-value - tau)
        scale = -jnp.exp(value)
        return jax.tree_util.tree_map(lambda x: scale * x, g), None

    def save_fn(s, state, args):
        theta, tau = state
        model = eqx.combine(theta, static)
        out = summaries(model, X, y, loss, numbers["degree"], diagnostics)
        if normalized:
            out["tau"] = tau
        if save_states:
            out["state"] = theta
        return out

    def level_event(level):
        # log L - level changes sign at the crossing; the root finder stops the solve on it.
        # The offset keeps the stopping point at, or a hair below, the level.
        labels = y

        def gap(y):
            log_l = _log_loss_fn(y[0], static, X, labels, loss)
            return (log_l - level) / (1.0 + jnp.abs(level)) + _LEVEL_OFFSET

        def cond(t, y, args, **kwargs):  # diffrax passes these by keyword
            # A run that starts at or below its level has nothing to cross: the condition is
            # then t0 + 1e-30 - t, positive at t0 and negative after it, so the run stops in its
            # first step, at t0 (to the root finder's tolerance), instead of running on to t1.
            start = kwargs["t0"]
            return jnp.where(already, start + 1e-30 * (1.0 + jnp.abs(start)) - t, gap(y))

        already = gap((params, None)) <= 0
        # Bisection on the step's bracket: Newton can wander off on the dense interpolant.
        return diffrax.Event(cond, root_finder=optx.Bisection(
            rtol=1e-12, atol=1e-10, expand_if_necessary=True))

    event = level_event(numbers["target"]) if has_target else None

    # tau0 = log(1 + t0), from log t0 when given (t0 itself may overflow).
    if not normalized:
        tau0 = None
    elif "log_t0" in numbers:
        tau0 = jnp.logaddexp(0.0, numbers["log_t0"])
    else:
        tau0 = jnp.log1p(numbers["t0"])
    s0 = jnp.zeros_like(numbers["t1"]) if normalized else numbers["t0"]
    controller = diffrax.PIDController(
        rtol=numbers["rtol"], atol=numbers["atol"], **dict(controller_kwargs)
    )
    if save_levels:
        return _solve_levels(
            diffrax.ODETerm(field), solver, controller, level_event, save_fn, (params, tau0),
            static, X, y, loss, numbers, n_save=save_s.shape[0], max_steps=max_steps,
            standard_out=standard_out, block_steps=block_steps,
        )
    if isinstance(solver, tuple):
        raise ValueError("a pair of solvers needs time='normalized' with a target and no save_ts.")
    saveat = diffrax.SaveAt(
        subs=[diffrax.SubSaveAt(ts=save_s, fn=save_fn), diffrax.SubSaveAt(t1=True)]
    )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        t0=s0,
        t1=numbers["t1"],
        dt0=numbers.get("dt0"),
        y0=(params, tau0),
        saveat=saveat,
        stepsize_controller=controller,
        event=event,
        max_steps=max_steps,
        throw=False,
        progress_meter=progress_meter,
    )
    saved, (final_params, final_tau) = sol.ys
    final_params = jax.tree_util.tree_map(lambda x: x[-1], final_params)
    final_model = eqx.combine(final_params, static)
    states = saved.pop("state", None)
    if states is not None:
        states = eqx.combine(states, static)
    if normalized:
        tau = saved.pop("tau")
        final_log_t = _tau_to_log_t(final_tau[-1])
        log_t = _tau_to_log_t(tau)
        ts = jnp.where(jnp.isfinite(tau), jnp.expm1(tau), jnp.inf)
    else:  # plain time: the solver's own clock is exact (inf past the end of the run)
        ts = sol.ts[0]
        log_t = jnp.log(ts)
        final_log_t = jnp.log(sol.ts[1][-1])
    code = sol.result._value  # 0 successful, 1 max_steps, ...
    event_hit = (
        sol.event_mask if sol.event_mask is not None else jnp.asarray(False)
    )
    event_hit = jnp.asarray(event_hit)
    # An event is a successful ending.
    code = jnp.where(sol.result == diffrax.RESULTS.event_occurred, 0, code)
    stats = {k: sol.stats[k] for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")}
    stats["max_steps"] = jnp.asarray(max_steps)
    return FlowResult(
        ts=ts,
        s=sol.ts[0],
        log_t=log_t,
        log_loss=saved["log_loss"],
        summaries=saved,
        states=_as_output(states, standard_out, stacked=True),
        final=_as_output(final_model, standard_out),
        final_log_loss=_log_loss_fn(final_params, static, X, y, loss),
        final_log_t=final_log_t,
        final_time=sol.ts[1][-1],
        stats=stats,
        result_code=code,
        reached_target=event_hit,
    )


def _as_output(p, standard_out: bool, stacked: bool = False):
    """``p`` as returned to the caller: the plain model when the input was plain (done inside the
    compiled program, so the caller gets it without further dispatches)."""
    if p is None or not standard_out:
        return p
    return jax.vmap(lambda s: s.standard())(p) if stacked else p.standard()


def loss_levels(log_l0: Array, target: Array, n: int) -> Array:
    """``n`` save levels of ``log L``: ``log L0``, then drops ``d`` geometric in ``d`` from
    ``min(1e-2, 1e-3 D)`` to ``D = log L0 - target``, so the last level is the target."""
    span = jnp.maximum(log_l0 - target, 0.0)
    d_min = jnp.minimum(1e-2, 1e-3 * span)
    frac = jnp.linspace(0.0, 1.0, n - 1)
    drops = jnp.where(span > 0, d_min * (span / jnp.where(span > 0, d_min, 1.0)) ** frac, 0.0)
    drops = drops.at[-1].set(span)
    return jnp.concatenate([log_l0[None], log_l0 - drops])


def _tree_norm(tree) -> Array:
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(tree)))


def _solve_levels(term, solver, controller, level_event, save_fn, y0, static, X, y, loss,
                  numbers, *, n_save: int, max_steps: int, standard_out: bool = False,
                  block_steps: tuple = ()) -> FlowResult:
    """One diffrax solve per level of ``log L``: each stops on its level (root-found event), and
    the summaries are saved there. Memory stays ``O(n_save)`` and the last level is the target."""
    log_l0 = _log_loss_fn(y0[0], static, X, y, loss)
    levels = loss_levels(log_l0, numbers["target"], n_save)
    zero = jnp.asarray(0)
    if "dt0" in numbers:
        dt0 = numbers["dt0"]
    else:  # diffrax's automatic first step can stall on a restart, so carry our own
        f0 = term.vf(0.0, y0, None)
        dt0 = 1e-3 * (1.0 + _tree_norm(y0[0])) / jnp.maximum(_tree_norm(f0), 1e-300)
    # a run that starts at or below its target is done before its first level
    start = {"s": jnp.zeros_like(numbers["t1"]), "y": y0, "code": zero,
             "done": log_l0 <= numbers["target"],
             "steps": zero, "accepted": zero, "rejected": zero,
             "dt": jnp.minimum(dt0, numbers["t1"])}
    if isinstance(solver, tuple):  # which solver goes next; steps taken by each
        start["which"] = jnp.asarray(0)
        start["left"] = jnp.asarray(1)  # explicit blocks before the stiff solver's next try
        start["backoff"] = jnp.asarray(0)
        start["used"] = jnp.zeros(len(solver), int)

    def attempt(c, level, solver, budget):
        """One diffrax solve from ``c`` towards ``level``, with at most ``budget`` steps."""
        sol = diffrax.diffeqsolve(
            term, solver, t0=c["s"], t1=numbers["t1"], dt0=c["dt"], y0=c["y"],
            saveat=diffrax.SaveAt(t1=True), stepsize_controller=controller,
            event=level_event(level), max_steps=budget, throw=False,
        )
        hit = sol.result == diffrax.RESULTS.event_occurred
        accepted = sol.stats["num_accepted_steps"]
        new = dict(c)
        new.update({
            "s": sol.ts[-1], "y": jax.tree_util.tree_map(lambda x: x[-1], sol.ys),
            "code": jnp.where(hit, 0, sol.result._value), "hit": hit,
            "steps": c["steps"] + sol.stats["num_steps"],
            "accepted": c["accepted"] + accepted,
            "rejected": c["rejected"] + sol.stats["num_rejected_steps"],
            # the next solve starts with this one's mean accepted step
            "dt": jnp.where(accepted > 0, (sol.ts[-1] - c["s"]) / jnp.maximum(accepted, 1),
                            c["dt"]),
        })
        return jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, b.dtype), new, c)

    def finish(c, new):
        new = dict(new)
        hit = new.pop("hit")
        code = jnp.where(new["steps"] > max_steps, 1, new["code"])
        new.update(code=code, done=~hit | (code != 0))
        return jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, b.dtype), new, c)

    if not isinstance(solver, tuple):
        def solve(c, level):
            return finish(c, attempt(dict(c, hit=jnp.asarray(False)), level, solver, max_steps))
    else:
        # solver='auto' past its explicit budget: (explicit, stiff) solvers in blocks of
        # block_steps. A block that ends short of the level leaves a valid point on the path, so
        # nothing is lost: the next block goes on from there. A solver that reaches a level keeps
        # the next one. When the stiff solver falls short, the explicit one gets 2, 4, 8, ...
        # blocks before the stiff one is tried again (back-off); when the explicit one falls
        # short that many times, the stiff one gets a block. The run stops when two blocks in a
        # row make no progress.
        def solve(c, level):
            def go(a):
                prev_s = a["c"]["s"]
                branches = [
                    lambda cc, sv=sv, b=b: attempt(cc, level, sv, b)
                    for sv, b in zip(solver, block_steps)
                ]
                which = a["which"]
                new = jax.lax.switch(which, branches, a["c"])
                hit = new["hit"]
                left = jnp.where(which == 0, a["left"] - 1, a["left"])
                backoff = jnp.where((which == 1) & ~hit, a["backoff"] + 1,
                                    jnp.where((which == 1) & hit, 0, a["backoff"]))
                to_stiff = (which == 0) & ~hit & (left <= 0)
                to_explicit = (which == 1) & ~hit
                return {
                    "c": new,
                    "which": jnp.where(to_stiff, 1, jnp.where(to_explicit, 0, which)),
                    "left": jnp.where(to_explicit, 2 ** jnp.minimum(backoff, 30), left),
                    "backoff": backoff,
                    "idle": jnp.where(new["s"] <= prev_s, a["idle"] + 1, 0),
                    "used": a["used"].at[which].add(new["steps"] - a["c"]["steps"]),
                }

            def more(a):
                return (~a["c"]["hit"] & (a["c"]["steps"] < max_steps) & (a["idle"] < 2)
                        & jnp.isfinite(a["c"]["s"]))

            a0 = {"c": dict(c, hit=jnp.asarray(False)), "idle": jnp.asarray(0),
                  **{k: c[k] for k in ("which", "left", "backoff", "used")}}
            a = jax.lax.while_loop(more, go, a0)
            return finish(c, dict(a["c"], **{k: a[k] for k in ("which", "left", "backoff",
                                                                   "used")}))

    def body(c, level):
        c = jax.lax.cond(c["done"], lambda c, _: c, solve, c, level)
        out = save_fn(c["s"], c["y"], None)
        keep = ~c["done"]
        out = jax.tree_util.tree_map(lambda v: jnp.where(keep, v, jnp.inf), out)
        return c, (out, jnp.where(keep, c["s"], jnp.inf))

    first = save_fn(start["s"], y0, None)
    end, (saved, s_saved) = jax.lax.scan(body, start, levels[1:])
    saved = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first, saved)
    s_saved = jnp.concatenate([start["s"][None], s_saved])
    final_params, final_tau = end["y"]
    tau = saved.pop("tau")
    states = saved.pop("state", None)
    final_log_loss = _log_loss_fn(final_params, static, X, y, loss)
    return FlowResult(
        ts=jnp.where(jnp.isfinite(tau), jnp.expm1(tau), jnp.inf),
        s=s_saved,
        log_t=_tau_to_log_t(tau),
        log_loss=saved["log_loss"],
        summaries=saved,
        states=_as_output(None if states is None else eqx.combine(states, static), standard_out,
                          stacked=True),
        final=_as_output(eqx.combine(final_params, static), standard_out),
        final_log_loss=final_log_loss,
        final_log_t=_tau_to_log_t(final_tau),
        final_time=end["s"],
        stats={"num_steps": end["steps"], "num_accepted_steps": end["accepted"],
               "num_rejected_steps": end["rejected"], "max_steps": jnp.asarray(max_steps),
               **({"explicit_steps": end["used"][0], "stiff_steps": end["used"][1]}
                  if isinstance(solver, tuple) else {})},
        result_code=end["code"],
        reached_target=(end["code"] == 0) & (final_log_loss <= numbers["target"]),
    )


def _log_fractions(n: int) -> np.ndarray:
    """``n`` fractions of the span, log-spaced from ``1e-6`` to ``1`` (just ``[1]`` for one)."""
    return np.logspace(-6, 0, n) if n > 1 else np.ones(n)


def default_save_times(t0: float, t1: float, n_save: int) -> np.ndarray:
    """``n_save`` save points: ``t0``, then log-spaced from ``t0 + (t1 - t0) 1e-6`` to ``t1``."""
    span = t1 - t0
    return np.concatenate([[t0], t0 + span * _log_fractions(n_save - 1)])


def _progress_meter(progress: bool) -> diffrax.AbstractProgressMeter:
    if not progress:
        return diffrax.NoProgressMeter()
    try:
        import tqdm  # noqa: F401

        return diffrax.TqdmProgressMeter()
    except ImportError:
        return diffrax.TextProgressMeter()


def _traced_degree(p: Parameterized, X: Array) -> Array:
    """Under a transform (vmap over seeds): ``L = median_i log(|Phi(2w; x_i)|/|Phi(w; x_i)|)/log 2``."""
    plain = p.standard()
    scaled = scale_trainable(p, 2.0).standard()
    phi = jnp.abs(jax.vmap(plain)(X)).ravel()
    phi2 = jnp.abs(jax.vmap(scaled)(X)).ravel()
    est = jnp.log(phi2 / jnp.where(phi > 0, phi, 1.0)) / jnp.log(2.0)
    return jnp.nanmedian(jnp.where(phi > 0, est, jnp.nan))


def _auto_degree(p: Parameterized, X, loss: Loss) -> float:
    if isinstance(X, jax.core.Tracer) or not loss.margin_based:
        return math.nan
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(p)):
        return _traced_degree(p, X[: min(8, X.shape[0])])
    try:
        return homogeneity_degree(p, X[: min(8, X.shape[0])], rtol=1e-5)
    except ValueError:
        return math.nan


def gradient_flow(
    model: PyTree,
    X: Array,
    y: Array,
    *,
    loss: str | Loss = "exponential",
    t1: float = 1.0,
    t0: float = 0.0,
    log_t0: float | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    solver: diffrax.AbstractSolver | str | None = None,
    time: str = "plain",
    rate: str | None = None,
    target_log_loss: float | None = None,
    n_save: int = 64,
    save_ts: Array | None = None,
    save_states: bool = True,
    max_steps: int = 100_000,
    dt0: float | None = None,
    degree: float | None = None,
    progress: bool = False,
    throw: bool = True,
    controller_kwargs: dict | None = None,
    diagnostics: bool = True,
) -> FlowResult:
    """Integrate gradient flow ``dw/dt = -grad L(w)`` of a (parameterized) model with diffrax.

    ``theta`` are the model's trainable arrays (``(a, v)`` for EWN, ``(g, v)`` for SWN, ``w``
    for a plain model). With ``rate='neuron_norm_sq'`` the unnormalized flow runs with per-neuron
    learning rates: ``dw_u/dt = -||w_u||^2 grad_u L``. With ``time='normalized'`` the flow is
    ``d theta/ds = -grad log L`` (the same path, ``dt/ds = 1/L``), and ``t1`` bounds ``s``.

    **Arguments:**
    - `model`: an equinox model, or a ``Parameterized`` one from ``wnjax.ewn``/``swn``.
    - `X`, `y`: data, ``X`` of shape ``(n, ...)``; ``y`` in ``{-1, +1}`` for binary losses.
    - `loss`: ``'exponential'``, ``'logistic'``, ``'cross_entropy'``, ``'square'`` or a ``Loss``.
    - `t1`, `t0`: the time span (in ``s`` for ``time='normalized'``, where ``t0`` is the plain
      time at ``s = 0``).
    - `log_t0`: ``log t`` at the start, in place of ``t0`` (``time='normalized'`` only). Use it
      to continue a deep run, whose ``t = exp(log t)`` overflows: pass the previous result's
      ``final_log_t`` with its ``final``.
    - `rtol`, `atol`: the PID controller's tolerances.
    - `solver`: any diffrax solver, or a name: ``'tsit5'`` (the default), ``'dopri5'``,
      ``'dopri8'``, ``'stiff'``/``'kvaerno5'`` (L-stable, for stiff flows), or ``'auto'``:
      ``Tsit5`` with at most ``AUTO_EXPLICIT_STEPS`` steps; if that budget runs out, the run
      is redone, and with ``time='normalized'`` and a target it goes level by level of
      ``log L`` in blocks of ``AUTO_EXPLICIT_STEPS`` ``Bosh3`` steps (cheap steps for a flow
      whose step is held down by stability) and ``AUTO_STIFF_STEPS`` ``Kvaerno5`` steps, each
      block going on from where the last one stopped; the stiff solver is tried whenever the
      explicit one falls short of a level, backing off (2, 4, 8, ... explicit blocks) while it
      does no better (``result.stats``: ``explicit_steps``, ``stiff_steps``). Without levels the
      redo is all ``Kvaerno5``. ``result.stats['stiff']`` says whether a stiff block ran.
    - `time`: ``'plain'`` or ``'normalized'``.
    - `rate`: ``None``, ``'neuron_norm_sq'``, or a callable ``rate(grads, params) -> grads``
      (both the parameterized model's type) that rescales the gradient, e.g.
      ``wnjax.polar_rates(eta_r, eta_theta)``; its array fields are traced.
    - `target_log_loss`: stop once ``log L`` falls to this value (the crossing is root-found,
      so the run ends at ``log L = target`` to about ``1e-9 (1 + |target|)``).
    - `n_save`, `save_ts`: number of log-spaced save points, or explicit save points. With
      ``time='normalized'`` and a target (and no ``save_ts``) the run is saved where ``log L``
      crosses ``n_save`` levels from ``log L(0)`` to the target (``wnjax.loss_levels``: drops
      geometric in ``log L(0) - log L``), one root-found stop per level.
    - `save_states`: keep the full model at the save points.
    - `max_steps`: the step budget. Exhausting it raises ``FlowFailed`` (``throw=True``) or
      returns the partial result with ``ok == False``.
    - `dt0`: initial step (``None``: chosen automatically).
    - `degree`: homogeneity degree for the normalized margin; measured if ``None``.
    - `progress`: show diffrax's progress meter.
    - `throw`: raise ``FlowFailed`` on failure instead of returning.
    - `controller_kwargs`: extra ``diffrax.PIDController`` arguments (``pcoeff``, ``dtmax``, ...).
    - `diagnostics`: also save the asymptotic diagnostics (``wnjax.asymptotic_summaries``:
      alignment, relation spreads, KKT residuals, ...) at the save points; ``False`` keeps only
      the loss, margins and norms (cheaper to compile and run).

    **Returns:** a ``FlowResult``.

    Numbers (``t1``, ``rtol``, ``atol``, ``target_log_loss``, ...) are traced, so calling again
    with other values reuses the compiled program.
    """
    if isinstance(solver, str) and solver == "auto":
        options = dict(
            loss=loss, t1=t1, t0=t0, rtol=rtol, atol=atol, time=time, rate=rate, log_t0=log_t0,
            target_log_loss=target_log_loss, n_save=n_save, save_ts=save_ts,
            save_states=save_states, dt0=dt0, degree=degree, progress=progress,
            controller_kwargs=controller_kwargs, diagnostics=diagnostics,
        )
        return _auto_solver_flow(model, X, y, max_steps=max_steps, throw=throw, **options)
    if time not in TIMES:
        raise ValueError(f"time must be one of {TIMES}, got {time!r}.")
    if not callable(rate) and rate not in RATES:
        raise ValueError(f"rate must be one of {RATES} or a callable, got {rate!r}.")
    loss_obj = get_loss(loss)
    X, y = check_data(X, y, loss_obj)
    p = as_parameterized(model)
    check_outputs(p, X, y, loss_obj)
    if not isinstance(t1, jax.core.Tracer) and not t1 > (0.0 if time == "normalized" else t0):
        raise ValueError(f"t1 must exceed t0 (got t0={t0}, t1={t1}).")
    dtype = X.dtype
    if degree is None:
        degree = _auto_degree(p, X, loss_obj)
    numbers = {
        "t0": _number(t0, dtype),
        "t1": _number(t1, dtype),
        "rtol": _number(rtol, dtype),
        "atol": _number(atol, dtype),
        "degree": _number(degree, dtype),
        "target": _number(-np.inf if target_log_loss is None else target_log_loss, dtype),
    }
    if log_t0 is not None:
        if time != "normalized":
            raise ValueError("log_t0 is for time='normalized'; with time='plain' pass t0.")
        numbers["log_t0"] = _number(log_t0, dtype)
    if dt0 is not None:
        numbers["dt0"] = _number(dt0, dtype)
    # Normalized time with a target: save where log L crosses n_save levels (see loss_levels).
    save_levels = time == "normalized" and target_log_loss is not None and save_ts is None
    if save_ts is None:
        start = 0.0 if time == "normalized" else t0
        if isinstance(t1, jax.core.Tracer):
            save_s = start + (t1 - start) * jnp.concatenate(
                [jnp.zeros(1), jnp.asarray(_log_fractions(n_save - 1))]
            )
        else:
            save_s = default_save_times(start, float(t1), n_save)
    else:
        save_s = save_ts
    save_s = _number(save_s, dtype)
    result = _solve(
        p,
        X,
        y,
        numbers,
        save_s,
        loss=loss_obj,
        solver=resolve_solver(solver),
        time=time,
        rate=rate,
        has_target=target_log_loss is not None,
        max_steps=int(max_steps),
        save_states=save_states,
        save_levels=save_levels,
        diagnostics=diagnostics,
        progress_meter=_progress_meter(progress),
        controller_kwargs=tuple(sorted((controller_kwargs or {}).items())),
        standard_out=not isinstance(model, Parameterized),  # final/states as the input's type
        block_steps=(AUTO_EXPLICIT_STEPS, AUTO_STIFF_STEPS),
    )
    if not isinstance(result.result_code, jax.core.Tracer):
        if not bool(np.all(np.asarray(result.result_code) == 0)):  # one host read, no dispatch
            if throw:
                raise FlowFailed(result.message, result)
            warnings.warn(result.message, RuntimeWarning, stacklevel=2)
    return result


def _number(v, dtype):
    """A number (or array of them) for the compiled program: a host NumPy array (``filter_jit``
    traces it like a JAX array, without an eager dispatch per number), or a JAX array as it is
    when it already is one (traced under ``vmap``/``jit``)."""
    if isinstance(v, jax.Array):
        return jnp.asarray(v, dtype)
    return np.asarray(v, dtype)


def _auto_solver_flow(model, X, y, *, max_steps: int, throw: bool, **options) -> FlowResult:
    """``solver='auto'``: explicit ``Tsit5`` within ``min(max_steps, AUTO_EXPLICIT_STEPS)`` steps;
    if that budget runs out (a stiff flow), the run is redone: level by level with alternating
    ``Tsit5``/``Kvaerno5`` blocks when saving at levels of ``log L``, else with ``Kvaerno5``.
    The second program is compiled only when it is needed."""
    budget = min(int(max_steps), AUTO_EXPLICIT_STEPS)
    with warnings.catch_warnings():  # a spent budget is not the caller's failure
        warnings.simplefilter("ignore", RuntimeWarning)
        explicit = gradient_flow(
            model, X, y, solver="tsit5", max_steps=budget, throw=False, **options
        )
    if isinstance(explicit.result_code, jax.core.Tracer):
        raise ValueError(
            "solver='auto' decides on the host and cannot run under jit/vmap; pass "
            "solver='tsit5' or solver='stiff' explicitly there."
        )
    codes = np.asarray(explicit.result_code)
    if not np.any(codes == 1) or budget >= max_steps:  # done, or failed for another reason
        result = eqx.tree_at(
            lambda r: r.stats,
            explicit,
            {**explicit.stats, "stiff": jnp.asarray(False), "max_steps": jnp.asarray(max_steps)},
        )
        if not np.all(codes == 0):
            if throw:
                raise FlowFailed(result.message, result)
            warnings.warn(result.message, RuntimeWarning, stacklevel=3)
        return result
    levels = (options["time"] == "normalized" and options["target_log_loss"] is not None
              and options["save_ts"] is None)
    # Saving at levels of log L: explicit and stiff blocks alternate level by level (see
    # AUTO_STIFF_STEPS); otherwise the whole run is redone with the stiff solver.
    second = ("bosh3", "stiff") if levels else "stiff"
    stiff = gradient_flow(model, X, y, solver=second, max_steps=max_steps, throw=False, **options)
    used = {"stiff": jnp.asarray(True), "explicit_steps": explicit.stats["num_steps"]}
    if levels:
        used = {"stiff": stiff.stats["stiff_steps"] > 0,
                "explicit_steps": explicit.stats["num_steps"] + stiff.stats["explicit_steps"],
                "first_explicit_steps": explicit.stats["num_steps"]}
    result = eqx.tree_at(lambda r: r.stats, stiff, {**stiff.stats, **used})
    if not np.all(np.asarray(result.result_code) == 0):
        if throw:
            raise FlowFailed(result.message, result)
        warnings.warn(result.message, RuntimeWarning, stacklevel=3)
    return result
