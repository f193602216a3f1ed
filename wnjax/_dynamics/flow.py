"""Gradient flow ``dw/dt = -grad L(w)``, integrated with diffrax under error control.

The vector field works with ``log L`` throughout: ``grad L = L grad log L``, so the flow is
evaluated accurately however small ``L`` becomes. Three clocks are offered:

- ``time="plain"``: ``d theta/dt = -L grad_theta log L``;
- ``time="normalized"``: ``d theta/ds = -grad_theta log L``, the same path with ``dt/ds = 1/L``.
  Alongside it ``tau = log(1 + t)`` is integrated, ``d tau/ds = exp(-log L - tau)``, so that
  ``log t`` is available without ever forming ``t`` (which overflows past ``log t = 709``);
- ``time="loss"``: the clock is ``sigma = s + log L(0) - log L``, the loss's own decrease plus
  normalized time: ``d theta/d sigma = -g / (1 + <grad log L, g>)`` with ``g`` the (rate-scaled)
  ``grad log L``; ``tau`` and ``s`` are integrated alongside (``d s/d sigma = 1/(1 +
  <grad log L, g>)``), and ``s`` reaching ``t1`` ends the run as in normalized time. Where the
  loss falls fast (``<grad log L, g> >> 1``, deep in the asymptotic regime) ``sigma`` is the
  loss: the flow there has no finite-time blow-up to resolve (the normalized flow of an EWN
  net, or of a net of degree above 2, has one), and the clock never needs more digits than
  ``log L`` itself. On plateaus and floors of the
  loss it is normalized time, which keeps moving where ``log L`` does not.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from diffrax._root_finder import use_stepsize_tol
from diffrax._term import WrapTerm
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree
from optimistix._solver.bisection import _BisectionState

import wnjax._runtime.interrupt as _interrupt
import wnjax._runtime.maps as _maps
from wnjax._analysis.diagnostics import summaries
from wnjax._dynamics.outcome import RunFailed, RunResult
from wnjax._dynamics.save import AtLossLevels, AtTimes, Save, resolve_save
from wnjax._dynamics.stall import STALL_SHARE, STATIONARY_ROUNDING, on_floor, stationary
from wnjax._losses import Loss, get_loss
from wnjax._nets.dense import apply_batch
from wnjax._nets.kinks import Smoothed, count_kinks, unsmoothed
from wnjax._nets.models import (
    CNN,
    MLP,
    Identity,
    ReLUPower,
    homogeneity_degree,
    known_degree,
    scaled_outputs,
    with_kink,
)
from wnjax._nets.parameterize import (
    Parameterized,
    as_parameterized,
    neuron_norm_sq_rate,
)
from wnjax._runtime.errors import InvalidInput
from wnjax._runtime.precision import in_float32
from wnjax._runtime.tree import all_finite, as_number, tree_norm
from wnjax._runtime.validate import (
    check_conflicts,
    check_data,
    check_options,
    check_outputs,
    in_common_dtype,
    warn_target_met_at_start,
)
from wnjax._solver.auto import AutoSwitch, PhaseState
from wnjax._solver.stiff import implicit_step_cost, stiff_solver

RATES = (None, "neuron_norm_sq")
TIMES = ("plain", "normalized", "loss")
# Solvers by name. "stiff" is L-stable: the loss-normalized flow gets stiffer as log L falls
# (its Jacobian's largest eigenvalue grows like (log L)^2 on lin-sep), so explicit solvers end up
# held to tiny steps by stability, not accuracy. "auto" switches between the two on its own.
SOLVERS = {
    "auto": AutoSwitch,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "kvaerno5": diffrax.Kvaerno5,
    "stiff": diffrax.Kvaerno5,
}
# The default solver's explicit method on a smooth field: Tsit5, or Dopri8 below this rtol.
HIGH_ORDER_RTOL = 1e-9


def default_solver(
    rtol=None, n_params: int | None = None, *, smooth: bool = False, kinks: bool = False
) -> AutoSwitch:
    """The default solver: ``AutoSwitch``, explicit while the flow is not stiff and L-stable
    ``Kvaerno5`` while it is, its implicit linear solves chosen for the model's size
    (``wnjax.stiff_solver``: dense LU, or Krylov on Jacobian-vector products for large models)
    and its switching weighed by their cost (``implicit_step_cost``: ``2 + n / 8 + n^2 / 700``
    Tsit5 steps for ``n`` parameters up to the Krylov threshold).

    The explicit method is ``Dopri8`` for ``rtol < HIGH_ORDER_RTOL`` on a smooth field,
    ``Dopri5`` on a field with kinks, else ``Tsit5``. A high order pays only where the field is
    smooth: with ReLU or ReLU^2 the field ``-grad L`` has kinks where a pre-activation changes
    sign. Measured on EWN 10-32-1 and 5-8-1 nets at rtol 1e-10 and 1e-12: with ReLU^3, Dopri8
    took 0.65-1.1x Tsit5's time; with ReLU^2, 1.2-2.8x (half of its steps rejected). Across
    kinks Dopri5's error estimate rejects fewer steps than Tsit5's: on standard, SWN and EWN
    ReLU^2 MLPs (3-20 inputs, 6-64 wide, rtol 1e-8 to 1e-12) Dopri5 took 0.68-1.05x Tsit5's
    time (median 0.8), and 1.05x on a smooth ReLU^3 net.

    **Arguments:**
    - `rtol`: the requested relative tolerance (``None``: ``Tsit5``).
    - `n_params`: the number of trainable parameters (``None``: dense LU).
    - `smooth`: whether the field is known to be smooth (``smooth_field``).
    - `kinks`: whether the field is known to have kinks (``kinked_field``).
    """
    high = (
        smooth
        and rtol is not None
        and not isinstance(rtol, jax.core.Tracer)
        and rtol < HIGH_ORDER_RTOL
    )
    return _default_solver(bool(high), bool(kinks), None if n_params is None else int(n_params))


@functools.lru_cache(maxsize=64)
def _default_solver(high: bool, kinks: bool, n_params: int | None) -> AutoSwitch:
    """``default_solver``'s solver, built once per choice (an immutable module, shared)."""
    explicit = diffrax.Dopri8() if high else diffrax.Dopri5() if kinks else diffrax.Tsit5()
    if n_params is None:
        return AutoSwitch(explicit=explicit, implicit=stiff_solver())
    return AutoSwitch(
        explicit=explicit,
        implicit=stiff_solver(n_params),
        implicit_cost=implicit_step_cost(n_params),
    )


def _activation(model):
    """The activation of an ``MLP`` or ``CNN`` (plain or parameterized), else ``None``."""
    net = model.skeleton if isinstance(model, Parameterized) else model
    return net.activation if isinstance(net, (MLP, CNN)) else None


def smooth_field(model) -> bool:
    """Whether the gradient field of a loss through ``model`` is known to be smooth: an ``MLP``
    or ``CNN`` (plain or parameterized) whose activation is linear or ``max(z, 0)^p`` with
    ``p >= 3``. ``False`` where it is not known (other modules, callables) or has kinks (ReLU,
    ReLU^2)."""
    act = _activation(model)
    return isinstance(act, Identity) or (isinstance(act, ReLUPower) and act.power >= 3)


def jumping_field(model) -> bool:
    """Whether the gradient field is known to jump (be discontinuous): an ``MLP`` or ``CNN``
    (plain or parameterized) whose activation is ``max(z, 0)^p`` with ``p < 2`` (ReLU)."""
    act = _activation(model)
    return isinstance(act, ReLUPower) and act.power < 2


def kinked_field(model) -> bool:
    """Whether the gradient field is known to have kinks or jumps: an ``MLP`` or ``CNN`` (plain
    or parameterized) whose activation is ``max(z, 0)^p`` with ``p < 3`` (ReLU, ReLU^2)."""
    act = _activation(model)
    return isinstance(act, ReLUPower) and act.power < 3


def resolve_solver(
    solver: str | diffrax.AbstractSolver | None,
    rtol=None,
    n_params: int | None = None,
    traced: bool = False,
    smooth: bool = False,
    kinks: bool = False,
    stiff_kinks: bool = False,
    batched: bool = False,
) -> diffrax.AbstractSolver:
    """A diffrax solver from ``None`` (``default_solver(rtol, n_params, smooth=smooth,
    kinks=kinks)``; ``Tsit5`` when ``traced``), a name in ``SOLVERS`` (``'auto'`` is the default
    solver), or a solver instance (used as it is).

    Under ``vmap`` the switch's two branches both run on every step, so a traced call (a seed
    sweep) defaults to ``Tsit5``, unless ``stiff_kinks`` (a ReLU net's smoothed kinks, where
    the flow that slides is stiff): then to the switch under ``jit`` alone, and to
    ``stiff_solver(n_params)`` (Kvaerno5) when ``batched`` (under ``vmap``), whose steps are the
    costlier branch of the switch's anyway and whose step sizes are never held by stability
    (measured on EWN 5-8-1 and 10-16-1 ReLU MLPs to ``log L = -30`` and ``-100``: 2.1-3.3x
    faster than the switch under ``vmap``, in fewer steps). ``solver='auto'`` is the caller's
    explicit choice."""
    if solver is None and traced and not stiff_kinks:
        return diffrax.Tsit5()
    if solver is None and batched and stiff_kinks:
        return stiff_solver(n_params)
    if solver is None or (isinstance(solver, str) and solver == "auto"):
        return default_solver(rtol, n_params, smooth=smooth, kinks=kinks)
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise InvalidInput(
                f"unknown solver {solver!r}; pass a diffrax solver or one of {sorted(SOLVERS)}."
            )
        if SOLVERS[solver] is diffrax.Kvaerno5:
            return stiff_solver(n_params)
        return SOLVERS[solver]()
    if not isinstance(solver, diffrax.AbstractSolver):
        raise InvalidInput(
            f"solver must be a diffrax solver or one of {sorted(SOLVERS)}, got {solver!r}."
        )
    return solver


def level_tolerance(dtype) -> float:
    """The offset of a target crossing, relative to ``1 + |target|``: the run stops at
    ``log L = target - 2 tol (1 + |target|)``, up to the rounding in ``log L`` (``tol =
    max(1e-10, 64 eps)``: 1e-10 in float64, 7.6e-6 in float32)."""
    return max(1e-10, 64 * float(jnp.finfo(dtype).eps))


def target_tolerance(dtype) -> float:
    """``reached_target`` means ``final_log_loss <= target + tol (1 + |target|)`` with
    ``tol = sqrt(eps)`` (1.5e-8 in float64, 3.5e-4 in float32): room for the rounding of
    ``log L`` itself, which for a square loss near an interpolating point is
    ``~ eps |y| / |residual|``."""
    return float(np.sqrt(jnp.finfo(dtype).eps))


def default_tolerances(dtype) -> tuple[float, float]:
    """``(rtol, atol)`` when none are given: ``(1e-8, 1e-10)`` in float64, ``(1e-5, 1e-7)`` in
    float32 (and lower precisions)."""
    if jnp.finfo(dtype).bits >= 64:
        return 1e-8, 1e-10
    return 1e-5, 1e-7


def _rtol_floor(dtype) -> float:
    """The smallest rtol the dtype can honour: ``10 eps``."""
    return 10 * float(jnp.finfo(dtype).eps)


class _Crossing(optx.Bisection):
    """Bisection for a level crossing, run until the bracket is at the clock's rounding
    (``tol_t`` relative). The root is then located as well as the arithmetic allows, whatever
    the rounding in ``log L`` (which stalls a test on the gap's size): the end returned is
    within rounding of a point where the gap was seen to change sign.

    The bracket is the step's, never widened: diffrax saw the sign change between the step's
    ends (and starts the search at its end), so where the dense interpolant, rounded, shows
    none, the bracket collapses onto the step's end and the stop is there. (Widening it, as
    ``expand_if_necessary`` does, extrapolates the interpolant past the step: in float32 that
    can put a level's stop at ``||theta|| ~ 1e17``.)

    The root returned is the bracket's end on the side the run came from (``lower``: its gap
    has the sign of the step's start), not the midpoint, and a gap that is not finite counts
    as the other side's. At a true crossing the two ends are within the clock's rounding of
    each other; at a jump of ``log L`` into NaN or inf (a model or loss that breaks down there)
    the stop is then on the finite side, the last finite state of the run.

    The gap may be a tuple, one per event (diffrax's root find with several events): only the
    event that triggered has a nonzero entry, and the gap is their sum."""

    tol_t: float = 1e-14

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del y, aux_struct, tags
        fn = _summed(fn)
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(f_struct))
        lower = jnp.asarray(options["lower"], dtype)
        upper = jnp.asarray(options["upper"], dtype)
        lower_val, _ = fn(lower, args)
        upper_val, _ = fn(upper, args)
        other_side = ~jnp.isfinite(upper_val) | ((lower_val < 0) != (upper_val < 0))
        bracketed = jnp.isfinite(lower_val) & other_side
        return _BisectionState(
            lower=jnp.where(bracketed, lower, upper),
            upper=upper,
            flip=~(lower_val < 0),  # (optx.Bisection's flip: a start's gap >= 0)
            error=jnp.asarray(jnp.inf, dtype),
        )

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        gap, aux = _summed(fn)(y, args)
        # (optx.Bisection's rule, but for a gap that is not finite: never the start's side)
        start_side = jnp.isfinite(gap) & (state.flip ^ (gap < 0))
        lower = jnp.where(start_side, y, state.lower)
        upper = jnp.where(start_side, state.upper, y)
        new = _BisectionState(lower=lower, upper=upper, flip=state.flip, error=gap)
        return lower + 0.5 * (upper - lower), new, aux

    def terminate(self, fn, y, args, options, state, tags):
        del fn, y, args, options, tags
        width = jnp.abs(state.lower - state.upper)
        scale = jnp.abs(state.lower) + jnp.abs(state.upper)
        return width <= self.tol_t * scale + 1e-300, optx.RESULTS.successful

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, y, args, options, tags, result
        return state.lower, aux, {}


def _summed(fn):
    """``fn`` whose value, a tuple of gaps, is summed (``_Crossing``)."""

    def summed(t, args):
        gaps, aux = fn(t, args)
        return sum(jax.tree_util.tree_leaves(gaps)), aux

    return summed


# The result code of a run stopped by SIGINT/SIGTERM (diffrax's codes are >= 0).
INTERRUPTED = -1
# The result code of a run whose state or loss became non-finite (NaN or inf).
NONFINITE = -2
# The result code of a run whose loss rose over a solve, as no gradient flow's can: its steps
# broke down (the field's rounding above the tolerances, in float32 deep in the loss).
ROSE = -3
# The result code of a run with a target that stopped on a floor of the loss above it: the
# points whose outputs are 0 hold all but STALL_SHARE of the loss, and no flow moves them.
FLOOR = -4
# The result code of a run with a target that stopped at a stationary point above it: grad L
# zero to rounding (``stall.stationary``), as at a minimum of the loss above 0.
STATIONARY = -5
# The result code of a run whose next step could not move the clock (diffrax's dt_min_reached).
FROZEN_CLOCK = int(diffrax.RESULTS.dt_min_reached._value)


def _poll_start() -> dict:
    """The poll state at the start of a solve: steps taken, the step of the next poll (the
    first after ``_interrupt.POLL_FIRST_STEPS`` steps, later ones about every
    ``_interrupt.POLL_SECONDS``; a poll costs ~0.05-0.3 ms on a CPU, so a short solve makes
    none), the steps between the last two polls (or since the start), the host's
    ``_interrupt.clock()`` at the last poll (-1 before the first) and whether a stop was
    requested."""
    first = jnp.asarray(_interrupt.POLL_FIRST_STEPS, jnp.int32)
    zero = jnp.asarray(0, jnp.int32)
    return {
        "count": zero,
        "next": first,
        "interval": first,
        "since": jnp.asarray(-1.0, jnp.float32),
        "stop": jnp.asarray(False),
    }


class _Polled(diffrax.AbstractAdaptiveStepSizeController):
    """A step-size controller that also polls ``_interrupt.requested()`` now and then (see
    ``_ask``) and ends the solve, with diffrax's ``internal_error``, when a stop was requested.
    Steps and step sizes are the inner controller's; its state is ``(inner state, poll
    state, run)``, the poll state starting from ``start`` (``_poll_start()``, or where a
    previous solve left it). ``run`` holds the next step's size (``dt``), the end of the solve
    (``t1``) and the steps left (``left``, from ``budget``): a solve that runs out of them
    short of ``t1`` ends with ``max_steps_reached``, so a solve continued from another's
    controller state keeps to the budget of both together. A step too short to move the clock
    (below half its spacing, as in float32 late in a run) ends the solve with
    ``dt_min_reached``. A solve on its own clock, which starts at ``origin`` of the run's clock,
    ends so too once a step has left the state unchanged and the next is too short to move the
    run's clock: its steps may be far shorter than that clock's spacing (as a blow-up asks for)
    only while they move the state. ``still`` (a run with a target and no ``t1``): a function
    of the state and ``args``, asked at each poll after an accepted step, that says the state
    is a stationary point (``stall.stationary``): the solve then ends, with ``internal_error``
    and ``run['still']`` set (``_still``)."""

    inner: diffrax.AbstractAdaptiveStepSizeController
    start: dict
    budget: int | Array = 2**31 - 1
    origin: float | Array = 0.0
    still: Any = None

    @property
    def rtol(self):
        return self.inner.rtol

    @property
    def atol(self):
        return self.inner.atol

    @property
    def norm(self):
        return self.inner.norm

    def wrap(self, direction):
        return _Polled(self.inner.wrap(direction), self.start, self.budget, self.origin, self.still)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, state = self.inner.init(terms, t0, t1, y0, dt0, args, func, error_order)
        run = {
            "dt": tnext - t0,
            "t1": t1,
            "left": jnp.asarray(self.budget, jnp.int32),
            "still": jnp.asarray(False),
        }
        return tnext, (state, self.start, run)

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        state, poll, run = controller_state
        keep, next_t0, next_t1, jump, state, result = self.inner.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state
        )
        stationary = run["still"]
        if self.still is not None:
            # at a poll (under vmap: where some run polls), after an accepted step
            due = keep & (poll["count"] + 1 >= poll["next"])
            stationary = stationary | due & jax.lax.cond(
                eqxi.unvmap_any(due),
                lambda: self.still(y1_candidate, args),
                lambda: jnp.asarray(False),
            )
            result = diffrax.RESULTS.where(stationary, diffrax.RESULTS.internal_error, result)
        poll = _ask({**poll, "count": poll["count"] + 1})
        left = run["left"] - 1
        spent = (left <= 0) & (next_t0 < run["t1"])
        result = diffrax.RESULTS.where(spent, diffrax.RESULTS.max_steps_reached, result)
        # A next step shorter than half the clock's spacing there cannot move it: every later
        # step would be the same empty step (``dt_min_reached``). On a clock of its own, the
        # same holds of the run's clock once a step has left the state as it was.
        pairs = zip(jax.tree_util.tree_leaves(y1_candidate), jax.tree_util.tree_leaves(y0))
        still = keep & functools.reduce(jnp.logical_and, [jnp.all(a == b) for a, b in pairs])
        frozen = (next_t1 <= next_t0) | (still & (self.origin + next_t1 <= self.origin + next_t0))
        frozen = frozen & (next_t0 < run["t1"])
        result = diffrax.RESULTS.where(frozen, diffrax.RESULTS.dt_min_reached, result)
        result = diffrax.RESULTS.where(poll["stop"], diffrax.RESULTS.internal_error, result)
        dt = jnp.asarray(next_t1 - next_t0, jnp.result_type(run["dt"]))
        run = {**run, "dt": dt, "left": left, "still": stationary}
        return keep, next_t0, next_t1, jump, (state, poll, run), result


@jax.custom_batching.custom_vmap
def _ask(poll: dict) -> dict:
    """The poll state after a step: at the step ``poll['next']``, ask the host whether a stop
    was requested and how many steps to take before the next question (``_question``)."""

    def answer(poll):
        stop, steps, now = _question(jnp.asarray(True), poll["interval"], poll["since"])
        return {
            "count": poll["count"],
            "next": poll["count"] + steps,
            "interval": steps,
            "since": now,
            "stop": poll["stop"] | stop,
        }

    return jax.lax.cond(poll["count"] >= poll["next"], answer, lambda p: p, poll)


@_ask.def_vmap
def _ask_vmap(axis_size, in_batched, poll):
    # One question for all the runs of a vmapped solve (under a predicate that is not batched:
    # a callback cannot run under a batched cond) when any run is due; every run then counts
    # its next question from its own step count. Finished runs are frozen, never due.
    def lanes(x, batched):
        return x if batched else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x))

    poll = jax.tree_util.tree_map(lanes, poll, in_batched[0])
    due = jnp.any(poll["count"] >= poll["next"])
    stop, steps, now = _question(due, jnp.max(poll["interval"]), jnp.max(poll["since"]))
    out = {
        "count": poll["count"],
        "stop": poll["stop"] | stop,
        "next": jnp.where(due, poll["count"] + steps, poll["next"]),
        "interval": jnp.where(due, steps, poll["interval"]),
        "since": jnp.where(due, now, poll["since"]),
    }
    return out, {k: True for k in out}


@jax.custom_batching.custom_vmap
def _question(due: Array, steps: Array, since: Array) -> tuple[Array, Array, Array]:
    """When ``due``, ``_interrupt.poll_interval(steps, since)``: whether a stop was requested,
    the steps to take before the next question, given that the last ``steps`` steps took the
    time since the last question (asked at the host's ``_interrupt.clock()`` ``since``), and the
    clock now; else ``(False, steps, since)``.

    A ``pure_callback`` (its argument changes from question to question, which keeps XLA from
    moving the call out of its loop): an ``io_callback`` is an effect, and an effect in the
    solve's loop made a dense Kvaerno5 step 23x slower on CPU (2.2 ms against 31 ms on a
    200-parameter flow)."""
    shapes = (
        jax.ShapeDtypeStruct((), jnp.bool_),
        jax.ShapeDtypeStruct((), jnp.int32),
        jax.ShapeDtypeStruct((), jnp.float32),
    )
    return jax.lax.cond(
        due,
        lambda n, t: jax.pure_callback(_interrupt.poll_interval, shapes, n, t),
        lambda n, t: (jnp.asarray(False), n, t),
        steps,
        since,
    )


@_question.def_vmap
def _question_vmap(axis_size, in_batched, due, steps, since):
    # One question for all runs (nested vmaps reduce in turn).
    due = jnp.any(due, axis=0) if in_batched[0] else due
    steps = jnp.max(steps, axis=0) if in_batched[1] else steps
    since = jnp.max(since, axis=0) if in_batched[2] else since
    return _question(due, steps, since), (False, False, False)


def _stopped(sol) -> Array:
    """Whether a solve run under ``_Polled`` (with ``SaveAt(controller_state=True)``) was
    ended by a stop request."""
    return sol.controller_state[1]["stop"]


def _still(sol) -> Array:
    """Whether a solve run under ``_Polled`` (with ``SaveAt(controller_state=True)``) ended at
    a stationary point (``_Polled.still``)."""
    return sol.controller_state[2]["still"]


class FlowFailed(RunFailed):
    """A gradient-flow solve stopped before ``t1`` or its target; ``.result`` has the partial
    run."""


class FlowResult(RunResult):
    """The outcome of ``gradient_flow``. All fields are arrays, so results vmap and stack.

    - `ts`: plain time ``t`` at the save points (``inf`` past the end of the run);
    - `s`: normalized time at the save points (equal to ``ts`` for ``time='plain'``);
    - `log_t`: ``log t`` at the save points;
    - `log_loss`: ``log L`` at the save points;
    - `summaries`: dict of per-save-point diagnostics (margins, neuron norms, ...; ``inf`` at
      save points past the end of the run, as ``ts``);
    - `states`: the model at each save point (stacked), or ``None``;
    - `final`: the model at the end of the run, of the same type as the input;
    - `final_log_loss`, `final_log_t`: ``log L`` and ``log t`` at the end;
    - `final_time`: the solver's clock at the end: ``t``, ``s``, or
      ``sigma = s + log L(0) - log L`` for ``time='loss'``;
    - `stats`: solver statistics (``num_steps``, ``num_accepted_steps``, ``num_rejected_steps``,
      ``max_steps``, ``target_log_loss`` (``-inf`` without a target), ``final_grad_norm``
      (``|grad log L|`` at ``final``, over the trainable arrays), ``log_loss_resolution``
      (``|grad log L * (atol + rtol |theta|)|`` at ``final``: how far errors of the tolerances'
      size in the weights move ``log L``; the message says so above ``0.1 (1 + |log L|)``),
      ``nonfinite_ahead`` (the
      shortest distance, relative to ``1 + ||theta||``, from ``final`` along ``-grad log L`` at
      which ``log L`` or its gradient is NaN or inf, probed at ``1e-2 ... 1e-14`` when the
      run ran out of steps; ``inf`` if none, or when it did not); for ``time='loss'`` also
      ``final_s`` (normalized time ``s`` at ``final``); ``kink_width`` (the relative width
      over which the field smoothed the derivative at the model's kinks, ``0`` where it did
      not); ``kinks_left`` (where the field leaves kinked operations of the model as they
      are, how many: see ``count_kinks``); where a run with a target ended short of it,
      ``stuck_examples`` and
      ``stuck_log_loss`` (how many examples have a zero gradient of their own loss at
      ``final``, and the log of their summed loss, a floor under ``log L``; absent where none
      has); with the
      default solver also ``explicit_steps``, ``stiff_steps``, ``switches``);
    - `stop_code`: how the run ended: ``0`` success (``t1`` or the target reached), ``1``
      ``max_steps`` exhausted, ``FROZEN_CLOCK`` (diffrax's ``dt_min_reached``, ``10``) the
      next step was below half the clock's spacing, so the clock could not move (in float32
      late in a run), other positive values diffrax's failure codes, ``INTERRUPTED``
      (``-1``) stopped by SIGINT or SIGTERM, ``NONFINITE`` (``-2``) the state or loss became
      NaN or inf (``final`` is the last finite state where the run saves at loss levels, or
      stopped at a jump into NaN or inf that the target's or a level's event found), ``ROSE``
      (``-3``) the loss rose over a level's solve, as no gradient flow's can: its steps broke
      down, and ``final`` is that solve's start, ``FLOOR`` (``-4``) a run with a target
      stopped on a floor of the loss above it: the examples whose outputs are 0 hold all but
      ``STALL_SHARE`` (0.1%) of ``L``, and each has a zero gradient of its own loss, so no
      flow moves them (``stats['stuck_examples']`` counts them), ``STATIONARY`` (``-5``) a run
      with a target and no ``t1`` stopped at a stationary point above it, where ``grad L`` is
      zero to rounding (``STATIONARY_ROUNDING`` eps of the size of the terms it sums, each
      coordinate ``STATIONARY_COORDINATE`` eps of its own; checked
      at the solve's polls, every ~0.2 s): a minimum of the loss above the target, say;
    - `reached_target`: ``final_log_loss <= target + target_tolerance(dtype) (1 + |target|)``
      (or the root-found crossing of the target);
    - `time`: the clock, ``'plain'``, ``'normalized'`` or ``'loss'`` (static).

    Properties: `ok` (``stop_code == 0``), `interrupted` (``stop_code == INTERRUPTED``),
    `message`, and `result_code`, a read-only alias of `stop_code`; ``check()`` raises
    ``FlowFailed`` unless ``ok``.
    """

    failure: ClassVar[type] = FlowFailed

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
    stop_code: Array
    reached_target: Array
    time: str = eqx.field(static=True, default="plain")

    @property
    def result_code(self) -> Array:
        """``stop_code`` under its other name (read-only)."""
        return self.stop_code

    @property
    def ok(self) -> Array:
        """True when the solve reached ``t1`` or its target log loss."""
        return self.stop_code == 0

    @property
    def interrupted(self) -> Array:
        """True when SIGINT or SIGTERM stopped the run; the result holds the state reached."""
        return self.stop_code == INTERRUPTED

    @property
    def message(self) -> str:
        """A human-readable account of how the run ended."""
        return _describe(self)


def _describe(r: FlowResult) -> str:
    code = np.asarray(r.stop_code)
    if code.ndim:
        return f"{int((code == 0).sum())}/{code.size} runs succeeded"
    steps = int(np.asarray(r.stats["num_steps"]))
    normalized = r.time != "plain"
    target = float(np.asarray(r.stats.get("target_log_loss", -np.inf)))
    if int(code) == 0:
        how = "reached the target log loss" if bool(r.reached_target) else "reached t1"
        out = f"gradient flow {how} in {steps} steps (log L = {float(r.final_log_loss):.6g})."
        kink = float(np.asarray(r.stats.get("kink_width", 0.0)))
        if kink > 0:
            out += (
                " The field smoothed the derivative at the model's kinks (ReLU's, say; "
                f"kink_width = {kink:.3g}): the path is the Filippov flow's to O(kink_width)."
            )
        out += _resolution_note(r)
        if not bool(r.reached_target) and np.isfinite(target):
            if note := _stationary_note(r, "raising t1"):
                return out + note
            if _stuck_note(r):
                return out + _stuck_note(r)
            clock = np.asarray(r.final_time)
            if not normalized and float(clock) >= 0.99 * open_end_time(clock.dtype):
                return out + (
                    f" The target log L = {target:g} lies beyond the largest plain time the "
                    f"{clock.dtype} clock holds: use time='normalized' (in plain time t grows "
                    "like exp(-log L))."
                )
            out += f" The target log L = {target:g} lies beyond t1: raise t1" + (
                "."
                if normalized
                else ", or use time='normalized' (in plain time t grows like exp(-log L))."
            )
        return out
    if int(code) == INTERRUPTED:
        return (
            f"gradient flow was interrupted after {steps} steps, at time "
            f"{float(r.final_time):.6g} with log L = {float(r.final_log_loss):.6g}; the partial "
            "result is kept (result.final, result.summaries)." + _interrupt.stop_note()
        )
    if int(code) == NONFINITE:
        last = float(np.asarray(r.final_log_loss))
        return (
            f"gradient flow stopped after {steps} steps, at time {float(r.final_time):.6g}: its "
            "state or loss became non-finite (NaN or inf), or turns so just past where it "
            "stopped."
            + (
                f" result.final holds the last finite state (log L = {last:.6g})."
                if np.isfinite(last)
                else f" log L at the end is {last}."
            )
            + (
                " In float32 run in float64: jax.config.update('jax_enable_x64', True) and"
                " float64 data."
                if np.asarray(r.final_log_loss).dtype.itemsize < 8
                else ""
            )
            + " Else check the data's scale, and for SWN/EWN that no direction v_u is zero."
        )
    if int(code) == ROSE:
        final = float(r.final_log_loss)
        saved = np.asarray(r.log_loss)
        lowest = float(np.min(saved[np.isfinite(saved)], initial=np.inf))
        where = (
            f"log L = {final:.6g}: over the next level's solve log L rose, as no gradient "
            "flow's can, so its steps had broken down; result.final is the last state before it."
            if final <= lowest
            else f"log L = {final:.6g}, above the {lowest:.6g} it had fallen to: log L rose, as "
            "no gradient flow's can, so its steps broke down; result.final lies past the rise "
            "(result.log_loss and the saved summaries hold the path before it)."
        )
        return (
            f"gradient flow stopped after {steps} steps, at time {float(r.final_time):.6g} "
            f"with {where}"
            + (
                _rounding_hint(r, loosen=False)
                or " A tighter rtol makes the error control hold the steps it let through."
            )
        )
    if int(code) == STATIONARY:
        return (
            f"gradient flow stopped after {steps} steps, at time {float(r.final_time):.6g} with "
            f"log L = {float(r.final_log_loss):.6g}, short of the target log L = {target:g}: "
            "grad L is zero there to rounding (the terms l_i'(f_i) grad f_i it sums cancel to "
            f"{STATIONARY_ROUNDING:g} eps of their size), so no step moves the state but by "
            f"rounding. A stationary point of the loss: {_STATIONARY_KINDS}"
            + _stuck_note(r)
            + " The partial result is kept (result.final, result.summaries)."
        )
    if _stuck_note(r) or int(code) == FLOOR:
        return (
            f"gradient flow stopped after {steps} steps, at time {float(r.final_time):.6g} with "
            f"log L = {float(r.final_log_loss):.6g}."
            + (
                _stuck_note(r)
                or f" log L sits at a floor short of the target log L = {target:g}: the examples "
                "whose outputs are 0 hold all but 0.1% of the loss, and each has a zero "
                "gradient of its own loss, so their outputs do not move. Another initialization "
                "or a wider net keeps such examples alive."
            )
            + (
                " The run stopped there (stop_stalled=True): only the other examples, turning "
                "the weights as their margins grow (over spans of log s), could wake these."
                if int(code) == FLOOR
                else " stop_stalled=True stops a run at such a floor as soon as it is reached."
            )
            + " The partial result is kept (result.final, result.summaries)."
        )
    ahead = float(np.asarray(r.stats.get("nonfinite_ahead", np.inf)))
    if int(code) in (1, FROZEN_CLOCK) and np.isfinite(ahead):
        return (
            f"gradient flow stopped after {'max_steps = ' if int(code) == 1 else ''}{steps} "
            f"steps, at time {float(r.final_time):.6g} with log L = "
            f"{float(r.final_log_loss):.6g}, its steps "
            "shrinking as they approached a point where the field is not finite: log L or its "
            f"gradient is NaN or inf at a distance {ahead:.0e} (1 + ||theta||) from result.final "
            "along -grad log L. More steps will not get past it. The model computes a non-finite "
            "value there (the log or square root of a negative number, a division by zero, an "
            "overflow): check its forward pass at parameters just past result.final."
        )
    if int(code) == FROZEN_CLOCK:
        clock = np.asarray(r.final_time)
        spacing = float(np.spacing(np.abs(clock)))
        low = clock.dtype.itemsize < 8
        return (
            f"gradient flow stopped after {steps} steps, at time {float(clock):.6g} with log L "
            f"= {float(r.final_log_loss):.6g}: the step the flow needs there is below half the "
            f"{clock.dtype} clock's spacing ({spacing:.2g}), so the clock cannot move. The "
            "partial result is kept (result.final, result.summaries)."
            + (
                " Run in float64: jax.config.update('jax_enable_x64', True) and float64 data."
                if low
                else " Loosen rtol/atol, or check that the field is not stiff or jumping there."
            )
            + _normalized_hint(r)
            + ("" if low else _hints(r))
        )
    if int(code) == 1 and (note := _stationary_note(r, "more steps")):
        return (
            f"gradient flow stopped after max_steps = {steps} steps, at time "
            f"{float(r.final_time):.6g} with log L = {float(r.final_log_loss):.6g}."
            + note
            + " The partial result is kept (result.final, result.summaries)."
        )
    if int(code) == 1:
        return (
            f"gradient flow stopped after max_steps = {steps} steps, at time "
            f"{float(r.final_time):.6g} with log L = {float(r.final_log_loss):.6g}. The partial "
            "result is kept (result.final, result.summaries). Raise max_steps"
            + (
                (
                    ", loosen rtol/atol, or use time='loss' (its clock is -log L: no finite-time "
                    "blow-up to resolve)."
                    if r.time == "normalized" and np.isfinite(target)
                    else " or loosen rtol/atol."
                )
                if normalized
                else ", loosen rtol/atol, or use time='normalized' to reach small losses."
            )
            + (
                " Without a target_log_loss a loss-normalized run goes on to t1, and an EWN flow"
                " reaches any log L before a finite s: pass target_log_loss to stop at a level."
                if normalized and not np.isfinite(target)
                else ""
            )
            + _hints(r)
        )
    return (
        f"gradient flow failed (diffrax result code {int(code)}) after {steps} steps at time "
        f"{float(r.final_time):.6g}: the step size collapsed or the state became non-finite. "
        "Check the data scale and the learning-rate option; the partial result is kept."
    )


def _stationary_note(r: FlowResult, remedy: str) -> str:
    """For a run short of its finite target whose ``|grad log L|`` at the end is below
    ``sqrt(eps)``: that the flow has (nearly) stopped at a stationary point, which ``remedy``
    (``'raising t1'``, ``'more steps'``) barely lowers (in low precision: or is only slow, and
    float64 tells); else ``''``."""
    target = float(np.asarray(r.stats.get("target_log_loss", -np.inf)))
    if bool(r.reached_target) or not np.isfinite(target):
        return ""
    grad = float(np.asarray(r.stats.get("final_grad_norm", np.inf)))
    dtype = np.asarray(r.final_log_loss).dtype
    if not grad < np.sqrt(float(np.finfo(dtype).eps)):
        return ""
    return (
        f" The target log L = {target:g} was not reached, and at the end |grad log L| = "
        f"{grad:.3g}: the flow has (nearly) stopped at a stationary point of the loss, a floor "
        f"that {remedy} barely lowers: {_STATIONARY_KINDS}"
        + _stuck_note(r)
        + (
            f" In {dtype} the test (|grad log L| below sqrt(eps)) also passes where the flow is "
            "only slow, as on an example whose units are all but off, which float64 can follow "
            "back to life: run in float64 to tell them apart: "
            "jax.config.update('jax_enable_x64', True) and float64 data."
            if dtype.itemsize < 8
            else ""
        )
    )


_STATIONARY_KINDS = (
    "a minimum the model cannot get below (data it cannot separate; under the square loss, "
    "targets it cannot fit), points on which every ReLU-type unit is inactive (margin 0), or a "
    "saddle, which another initialization avoids."
)


def _hints(r: FlowResult) -> str:
    """What to try after a run ran out of steps: the clock's spacing in low precision (and,
    if the flow was not stiff, the stiff solver where the field is known to be continuous, else
    a jump in the field, as the next suspect), else the solver's; and the jump itself where the
    model's activation is known to make the field jump (ReLU)."""
    clock = _clock_hint(r)
    if clock:
        clock += _normalized_hint(r)
    if not clock:
        hint = _solver_hint(r) + _rounding_hint(r)
    elif not _not_stiff(r):
        hint = clock
    elif smooth_field(r.final) or kinked_field(r.final) and not _jumps(r):
        hint = clock + " If float64 does not help," + _STIFF_HINT
    else:
        hint = clock + " If float64 does not help," + _jump_hint(r)
    if _jumps(r) and _SLIDE not in hint:
        hint += (
            " The model's kinks (ReLU's max(z, 0), say) make -grad L jump wherever a "
            "pre-activation changes sign." + _slide_hint(r)
        )
    left = int(np.asarray(r.stats.get("kinks_left", 0)))
    if left:
        hint += (
            f" The field leaves {left} kinked operation{'s' if left > 1 else ''} of the model as "
            f"{'they are' if left > 1 else 'it is'} (inside a lax.while_loop, an argmax or "
            "argsort of the weights' values that picks entries, a transposed pooling): -grad L "
            "jumps there, which holds error-controlled steps small. Written with jnp.maximum, "
            "jnp.minimum, jnp.max, jnp.sort or lax.top_k (or a lax.scan) they are smoothed; or "
            "use wnjax.gradient_descent."
        )
    return hint


def _jumps(r: FlowResult) -> bool:
    """Whether ``r``'s field is known to jump: wnjax's ``MLP``/``CNN`` with ReLU, or a model
    whose kinks the field smoothed (``stats['kink_width'] > 0``)."""
    return jumping_field(r.final) or float(np.max(r.stats.get("kink_width", 0.0))) > 0


def _rounding_hint(r: FlowResult, loosen: bool = True) -> str:
    """In low precision deep in the loss: the field's rounding, ``eps |log L|`` relative, above
    what the default tolerances ask of it (and, with ``loosen``, the rtol that allows for it)."""
    log_l = np.asarray(r.final_log_loss)
    if log_l.dtype.itemsize >= 8 or not np.isfinite(log_l):
        return ""
    noise = float(np.finfo(log_l.dtype).eps) * abs(float(log_l))
    if noise <= 1e-5:
        return ""
    return (
        f" In {log_l.dtype} at log L = {float(log_l):.6g} the margins, near |log L|, carry a "
        f"rounding of ~{noise:.1g} of the field (eps |log L|), and the gradient of a normalized "
        "direction (SWN, EWN), a small difference of large terms, can be rounding alone: "
        "steps that must resolve it stay short. Run in float64 "
        "(jax.config.update('jax_enable_x64', True) and float64 data)"
        + (f", or loosen rtol to ~{10 * noise:.0e}." + _normalized_hint(r) if loosen else ".")
    )


def _normalized_hint(r: FlowResult) -> str:
    """For a loss-clock run: the normalized clock, whose level solves each run on a clock of
    their own, so it needs no more digits than a level's span of ``s``."""
    if r.time == "loss":
        return (
            " Or use time='normalized': the same path on the clock s, each level of the loss "
            "solved on a clock of its own."
        )
    return ""


def _not_stiff(r: FlowResult) -> bool:
    """Whether the default switch took most of its steps with the explicit method."""
    stats = r.stats
    return "stiff_steps" in stats and int(np.asarray(stats["stiff_steps"])) < int(
        np.asarray(stats["explicit_steps"])
    )


def _clock_hint(r: FlowResult) -> str:
    """When most steps were rejected in a low-precision run: the spacing of the solver's clock
    at its end, which can be coarser than the step the flow needs there."""
    stats = r.stats
    rejected = int(np.asarray(stats["num_rejected_steps"]))
    clock = np.asarray(r.final_time)
    if clock.dtype.itemsize >= 8 or rejected <= 0.5 * int(np.asarray(stats["num_steps"])):
        return ""
    spacing = float(np.spacing(np.abs(clock)))
    return (
        f" Most steps were rejected: at time {float(clock):.6g} the {clock.dtype} clock's spacing "
        f"is {spacing:.2g}, which can be coarser than the step the flow needs there. Run in "
        "float64: jax.config.update('jax_enable_x64', True) and float64 data."
    )


def _solver_hint(r: FlowResult) -> str:
    """What to try when a run ran out of steps, from how its steps went."""
    stats = r.stats
    steps = int(np.asarray(stats["num_steps"]))
    rejected = int(np.asarray(stats["num_rejected_steps"]))
    if "switches" in stats:
        if int(np.asarray(stats["switches"])) > 20:
            return (
                " The default solver switched methods "
                f"{int(np.asarray(stats['switches']))} times: pass solver='stiff' "
                "(Kvaerno5 throughout) or solver='tsit5' to hold one method."
            )
        if rejected > 0.5 * steps and _not_stiff(r):
            head = (
                f" {rejected} of the {steps} steps were rejected and the stiffness test found the "
                "flow not stiff:"
            )
            if _jumps(r):
                return head + _jump_hint(r)
            return head + _STIFF_HINT + ("" if smooth_field(r.final) else _JUMP_IF_HINT)
        return ""
    stiff_hint = (
        " leave solver unset (the default switches to the L-stable Kvaerno5 when it detects "
        "stiffness) or pass solver='stiff'."
    )
    if rejected > 0.5 * steps:
        return (
            f" {rejected} of the {steps} steps were rejected. If the flow is stiff,"
            + stiff_hint
            + " If it is not (solver=None tells),"
            + (_jump_hint(r) if _jumps(r) else _JUMP_IF_HINT)
        )
    if rejected > 0.2 * steps:
        return " Many steps were rejected, as when a flow is stiff:" + stiff_hint
    return ""


# Where most steps are rejected and the stiffness test found the flow not stiff.
_STIFF_HINT = (
    " pass solver='stiff' (Kvaerno5 throughout), in case a stiffness the test does not see holds "
    "the steps."
)
_SLIDE = (
    " Where the flow slides along such a surface (a differential inclusion, not an ODE), every "
    "error-controlled method is held to steps proportional to rtol."
)


def _slide_hint(r: FlowResult) -> str:
    """The sliding and the ways on, for a model whose field jumps (wnjax's ReLU): the kink
    width first (``gradient_flow``'s ``kink_width``), then a smooth activation or GD."""
    kink = float(np.asarray(r.stats.get("kink_width", 0.0)))
    if kink > 0:
        kink_way = (
            " The field smoothed the derivative at the model's kinks over a relative width "
            f"kink_width = {kink:.3g}: a wider one (e.g. kink_width=1e-3) makes the regularized "
            "flow less stiff, its path the Filippov flow's to O(kink_width)."
        )
    else:
        kink_way = (
            " Leave kink_width unset (or pass a positive one): the field then smooths the "
            "derivative at the kinks, a Filippov regularization, and the solver takes the stiff "
            "flow that results."
        )
    return (
        _SLIDE
        + kink_way
        + " Or use a smooth activation (activation='relu2'), or wnjax.gradient_descent with a "
        "small learning rate."
    )


def _jump_hint(r: FlowResult) -> str:
    """The jump of a ReLU net's field, and the ways on."""
    return (
        " the vector field likely jumps, as -grad L of a ReLU network does wherever a "
        "pre-activation changes sign." + _slide_hint(r)
    )


# The same for a model whose field is not known to jump or to be smooth.
_JUMP_IF_HINT = (
    " If the vector field jumps (as -grad L of a ReLU network does wherever a pre-activation "
    "changes sign), the flow may slide along such a surface (a differential inclusion, not an "
    "ODE), which holds every error-controlled method to steps proportional to rtol: use a "
    "smooth activation, wnjax.gradient_descent with a small learning rate, a looser rtol, or "
    "leave kink_width unset: the field then smooths the derivative of every max, min, abs and "
    "where on a sign in the model (a Filippov regularization)."
)


def _log_loss_fn(params, static, X, y, loss: Loss):
    model = eqx.combine(params, static)
    return loss.log_loss(apply_batch(model, X), y)


def _grad_stats(params, static, X, y, loss, numbers) -> tuple[Array, Array]:
    """``(|grad log L|, resolution)`` at ``params`` from one gradient. The resolution is how
    far ``log L`` moves under errors of the tolerances' size in the weights, independent from
    one weight to the next: ``|d log L/d theta * (atol + rtol |theta|)|`` (Euclidean norm of the
    elementwise product). Where it is a sizeable share of ``|log L|`` the tolerances do not
    resolve ``log L``: a square loss near an interpolating point, whose
    ``grad log L ~ 2 J^T r / |r|^2`` grows as the residual ``r`` vanishes."""
    grads = _grad_log_loss(params, static, X, y, loss, None)[1]
    scaled = jax.tree_util.tree_map(
        lambda g, x: g * (numbers["atol"] + numbers["rtol"] * jnp.abs(x)), grads, params
    )
    return tree_norm(grads), tree_norm(scaled)


# A run's result says its log L is not resolved where ``log_loss_resolution`` exceeds this
# share of ``1 + |log L|``.
UNRESOLVED = 0.1


def _resolution_note(r: FlowResult) -> str:
    """A sentence for a finished run whose tolerances do not resolve its final ``log L``."""
    res = np.asarray(r.stats.get("log_loss_resolution", 0.0))
    log_l = np.asarray(r.final_log_loss)
    if res.ndim or not float(res) > UNRESOLVED * (1.0 + abs(float(log_l))):
        return ""
    return (
        f" The tolerances do not resolve log L at the end: errors of atol + rtol |theta| in "
        f"the weights would move it by ~{float(res):.3g} (a first-order estimate, high where "
        "the flow contracts), so log L and the time it is reached can be off by units (as for "
        "a square loss near an interpolating point). "
        "Tighten rtol and atol (e.g. rtol=1e-12, atol=1e-16 in float64), or use time='loss', "
        "whose clock follows log L."
    )


# The distances, relative to 1 + ||theta||, at which ``_probe_ahead`` probes the field.
_AHEAD = 10.0 ** -np.arange(2, 15)


# A level's stop whose loss is not finite this close ahead (relative to 1 + ||theta||) sits at
# a jump of log L into NaN or inf, not at a crossing of the level.
_NEAR = 10.0 ** -np.arange(8, 15)


def _jump_not_crossing(event, params, static, X, y, loss):
    """Whether a stop on a level's event short of the level (``event``: the event fired, and
    ``log L`` at ``params`` is above the level) sits where ``log L`` or its gradient turns
    non-finite just ahead (``_probe_ahead`` within ``_NEAR``): the sign change the root finder
    found is then a jump into NaN or inf (a model or loss that breaks down there), not the
    level's crossing. Probed only then."""
    return jax.lax.cond(
        event,
        lambda: jnp.isfinite(_probe_ahead(params, static, X, y, loss, _NEAR)),
        lambda: jnp.asarray(False),
    )


def _nonfinite_ahead(params, static, X, y, loss, code):
    """``_probe_ahead`` for a run that ran out of steps or whose steps shrank below the clock's
    spacing (``code`` 1 or ``FROZEN_CLOCK``), else ``inf``."""
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    return jax.lax.cond(
        (code == 1) | (code == FROZEN_CLOCK),
        lambda: _probe_ahead(params, static, X, y, loss).astype(dtype),
        lambda: jnp.asarray(jnp.inf, dtype),
    )


def _probe_ahead(params, static, X, y, loss, dists=_AHEAD):
    """The shortest of the distances ``dists`` (relative to ``1 + ||theta||``) at which
    ``log L`` or its gradient is not finite, stepping from ``params`` along ``-grad log L``;
    ``inf`` where every probe is finite (or ``params`` itself is not). A run whose steps shrank
    towards such a point (a model that computes NaN past some surface) ran out of steps
    approaching it, not for want of steps."""
    value, g = _grad_log_loss(params, static, X, y, loss, None)
    norm = tree_norm(g)
    scale = (1 + tree_norm(params)) / jnp.where(norm > 0, norm, 1.0)
    dtype = jnp.result_type(value)

    def bad(d):
        q = jax.tree_util.tree_map(lambda p, gi: p - (d * scale).astype(p.dtype) * gi, params, g)
        v, gq = _grad_log_loss(q, static, X, y, loss, None)
        return ~all_finite((v, gq))

    dists = jnp.asarray(dists, dtype)
    hit = jax.vmap(bad)(dists)
    ok = all_finite((value, g)) & (norm > 0)
    return jnp.where(ok & jnp.any(hit), jnp.min(jnp.where(hit, dists, jnp.inf)), jnp.inf)


def _loss_fn(params, static, X, y, loss: Loss):
    model = eqx.combine(params, static)
    return loss.loss(apply_batch(model, X), y)


def _grad_log_loss(params, static, X, y, loss, rate, fn=_log_loss_fn):
    """``(log L, grad log L)``, the gradient through ``rate`` (a preconditioner, linear in the
    gradient); with ``fn=_loss_fn``, ``(L, grad L)``."""
    value, grads = jax.value_and_grad(fn)(params, static, X, y, loss)
    # a preconditioner rate(grads, params) -> grads, e.g. wnjax.diagonal.polar_rates
    fn = rate if callable(rate) else neuron_norm_sq_rate if rate == "neuron_norm_sq" else None
    if fn is not None:  # on the model itself where the field smooths its kinks
        full = unsmoothed(fn)(eqx.combine(grads, static), eqx.combine(params, static))
        grads = eqx.filter(full, eqx.is_inexact_array)
    return value, grads


@eqx.filter_jit
def _flat_grad_log_loss(theta, unravel, static, X, y, loss, rate):
    """``(log L, grad log L)`` at the flat vector ``theta`` (``unravel`` maps it to the trainable
    arrays), the gradient flattened the same way."""
    value, g = _grad_log_loss(unravel(theta), static, X, y, loss, rate)
    return value, ravel_pytree(g)[0].astype(theta.dtype)


@eqx.filter_jit
def _flat_grad_loss(theta, unravel, static, X, y, loss, rate):
    """``grad L`` at the flat vector ``theta``, flattened: the plain-time field's ``-L grad log
    L`` without ``log L``. Where ``L`` underflows so does ``L grad log L``; ``L`` itself is
    summed directly (``Loss.loss``), fewer operations than ``log L``'s stable logsumexp and its
    gradient (a field evaluation of an EWN MLP ~17% faster on a CPU)."""
    _, g = _grad_log_loss(unravel(theta), static, X, y, loss, rate, fn=_loss_fn)
    return ravel_pytree(g)[0].astype(theta.dtype)


@eqx.filter_jit
def _flat_loss_slope(theta, unravel, static, X, y, loss, rate):
    """``(log L, g, <grad log L, g>)`` at the flat vector ``theta``, with ``g`` the rate-scaled
    ``grad log L`` (flattened): ``-d log L/ds`` along ``d theta/ds = -g``."""
    params = unravel(theta)
    value, g = _grad_log_loss(params, static, X, y, loss, rate)
    g = ravel_pytree(g)[0].astype(theta.dtype)
    if rate is None:
        return value, g, jnp.vdot(g, g)
    raw = jax.grad(_log_loss_fn)(params, static, X, y, loss)
    return value, g, jnp.vdot(ravel_pytree(raw)[0].astype(theta.dtype), g)


@eqx.filter_jit
def _state_summaries(params, static, X, y, loss, degree, diagnostics):
    """``summaries`` of the model ``(params, static)`` under its own jit: diffrax traces a save
    several times, and each trace after the first reuses the first one's."""
    return summaries(eqx.combine(params, static), X, y, loss, degree, diagnostics)


def _tau_rate(log_loss: Array, tau: Array) -> Array:
    """``d tau/ds = exp(-log L - tau)`` (``tau = log(1 + t)``, ``dt/ds = 1/L``), its exponent
    capped at a quarter of the log of the dtype's largest number (177 in float64, 22 in
    float32), so that the rate, squared in the norms of the solver and its first step, stays
    finite.

    Once ``tau`` has caught up with the loss the exponent is small (``t L`` is ``O(log t)``
    powers), and the cap never binds. A run that starts deep (``log L(0)`` far below
    ``-log(1 + t0)``, as when a run is continued from a deep state without ``log_t0``) has ``t``
    jump by ``~1/L(0)`` at once: uncapped, the rate overflows and every step is rejected; capped,
    ``tau`` climbs a steep ramp that the steps resolve in a few dozen steps, and reaches the same
    curve ``s`` later by ``~|log L(0)| exp(-cap)``."""
    cap = 0.25 * float(np.log(np.finfo(jnp.result_type(log_loss)).max))
    return jnp.exp(jnp.minimum(-log_loss - tau, cap))


def _tau_to_log_t(tau: Array) -> Array:
    """``log t`` from ``tau = log(1 + t)``: ``log(expm1(tau))``, stably for large ``tau``."""
    big = tau > 1.0
    return jnp.where(
        big,
        tau + jnp.log1p(-jnp.exp(-jnp.where(big, tau, 1.0))),
        jnp.log(jnp.expm1(jnp.where(big, 1.0, tau))),
    )


# The summaries of a run's save points are computed after its solve, all at once (vmapped),
# where n_save * n * n_params (a bound on an MLP's activations over every save point) is at
# most this; elsewhere (convolutional data, a run under a transform such as a seed sweep's
# vmap), each inside the solve's loop at its save point. On a small net one summary costs
# about as much as all of them together.
_BATCHED_SUMMARIES_MAX = 2**24


def _batched_summaries(n_save: int, X: Array, n_params: int) -> bool:
    """Whether ``_solve`` computes the save points' summaries after the solve, vmapped."""
    return X.ndim == 2 and n_save * X.shape[0] * n_params <= _BATCHED_SUMMARIES_MAX


def _state_only(s, z, args):
    return z


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
    summaries_after: bool = False,
    standard_out: bool = False,
    poll: bool = True,
    start: dict | None = None,
    kink: float = 0.0,
    floor: bool = False,
    stop_stationary: bool = False,
) -> tuple[FlowResult, dict | None]:
    """The solve of ``gradient_flow``, one compiled program: ``(result, handover)``.

    With an ``AutoSwitch`` solver in a ``phase`` of one method, ``handover`` says whether the
    run ended on a switch to the other method (``switched``) and holds where it ended (``s``,
    ``y``, ``solver_state``, ``controller``, ``dt``); passed back as ``start`` with the other
    phase, the solve goes on from there, saving at the points of ``save_s`` after ``start['s']``
    (the earlier ones are saved at ``start['s']``) within the steps left of ``max_steps``. Else
    ``handover`` is ``None``.

    ``summaries_after``: save the state alone at each save point, and compute the summaries of
    every save point after the solve, at once (vmapped; see ``_batched_summaries``).

    ``kink``: the vector field's kink width (``with_kink`` on wnjax's ``MLP``/``CNN``, else
    ``Smoothed``); everything else evaluates the model as it is.

    ``floor``: the target's event comes with a second, a floor of dead examples (``on_floor``:
    ``gradient_flow``'s ``stop_stalled``). ``stop_stationary`` (a target and no ``t1``): the
    controller's polls also end the run at a stationary point of the field's model (kinks
    smoothed as the field smooths them; ``stall.stationary``, ``STATIONARY``)."""
    params, static = eqx.partition(p, eqx.is_inexact_array)
    # theta is integrated as one flat vector: every per-step operation of the solver, the
    # controller and the stiffness test is then one kernel, not one per array.
    theta0, unravel = ravel_pytree(params)
    # The kink width is static metadata of the activation, in both halves of the model.
    own = _own_activation(p)  # wnjax's MLP/CNN: the activation's kink; else the jaxpr's
    field_static = _smoothed(static, kink, own)
    field_unravel = (lambda theta: _smoothed(unravel(theta), kink, own)) if kink else unravel
    if start is not None:
        theta0 = start["y"][0]
    normalized = time != "plain"  # tau is integrated
    by_loss = time == "loss"
    # The state is (theta, tau). In plain time tau = log(1 + t) is a function of the solver's own
    # clock, so it is not integrated (tau is None): log t is taken from the clock, exactly, and
    # the error control sees theta alone. Normalized time integrates tau alongside theta.

    # The data reach the field through diffrax's ``args`` (X, y), not a closure: AutoSwitch's
    # step is its own jit (traced once for diffrax's three traces of the step), whose inputs
    # must then all be explicit.
    def field(s, state, args):
        theta, tau = state
        data, labels = args
        if by_loss:
            value, g, slope = _flat_loss_slope(
                theta, field_unravel, field_static, data, labels, loss, rate
            )
            # tau = (log(1 + t), s); the clock is sigma = s + log L(0) - log L, with
            # d sigma/ds = 1 + slope
            per = 1.0 / (1.0 + slope)
            return -g * per, jnp.stack([_tau_rate(value, tau[0]), jnp.ones_like(value)]) * per
        if not normalized and not callable(rate):  # a callable rate need not be linear
            return (
                -_flat_grad_loss(theta, field_unravel, field_static, data, labels, loss, rate),
                None,
            )
        value, g = _flat_grad_log_loss(theta, field_unravel, field_static, data, labels, loss, rate)
        if normalized:
            return -g, _tau_rate(value, tau)
        return -jnp.exp(value) * g, None

    def save_fn(s, state, args):
        theta, tau = state
        theta = unravel(theta)
        out = _state_summaries(theta, static, X, y, loss, numbers["degree"], diagnostics)
        if by_loss:
            out["tau"], out["s"] = tau[0], tau[1]
        elif normalized:
            out["tau"] = tau
        if save_states:
            out["state"] = theta
        return out

    def level_event(level):
        # log L - level changes sign at the crossing; the root finder stops the solve on it.
        # The offset (twice the root finder's gap tolerance) keeps the stop a hair below it.
        labels = y

        def gap(y):
            log_l = _log_loss_fn(unravel(y[0]), static, X, labels, loss)
            return (log_l - level) / (1.0 + jnp.abs(level)) + 2 * ftol

        def cond(t, y, args, **kwargs):  # diffrax passes these by keyword
            # A run that starts at or below its level has nothing to cross: the condition is
            # then t0 + 1e-30 - t, positive at t0 and negative after it, so the run stops in its
            # first step, at t0 (to the root finder's tolerance), instead of running on to t1.
            start = kwargs["t0"]
            value = jnp.where(already, start + 1e-30 * (1.0 + jnp.abs(start)) - t, gap(y))
            # diffrax's root find pairs the value with a Python 0.0 in a cond: the default
            # float dtype (float64 under jax_enable_x64, whatever the data's dtype).
            return value.astype(jnp.result_type(float))

        already = gap((theta0, None)) <= 0
        if by_loss:  # normalized time s reaching t1 ends the run too
            level_cond = cond

            def cond(t, y, args, **kwargs):
                bound = _s_gap(y[1][1], numbers["s1"]).astype(jnp.result_type(float))
                return jnp.minimum(level_cond(t, y, args, **kwargs), bound)

        def stalled(t, y, args, **kwargs):
            # The second event: a floor of log L above the target. A float's sign, not a bool
            # (diffrax's root find takes a bool event's value on the clock's dtype, not the
            # float64 of the level's), at half the share that _stuck_stats reports: the root
            # find stops the run on the side before it turned.
            stuck = on_floor(unravel(y[0]), static, X, labels, loss, floor_above, STALL_SHARE / 2)
            return jnp.where(stuck, -1.0, 1.0).astype(jnp.result_type(float))

        # Bisection on the step's bracket: Newton can wander off on the dense interpolant.
        return diffrax.Event(
            (cond, stalled) if floor else (cond,),
            root_finder=_Crossing(rtol=0.0, atol=0.0, tol_t=4 * eps),
        )

    # a floor of log L at the target's tolerance above it does not stop the run
    floor_above = numbers["target"] + target_tolerance(X.dtype) * (1.0 + jnp.abs(numbers["target"]))

    eps = float(jnp.finfo(X.dtype).eps)
    ftol = level_tolerance(X.dtype)

    event = level_event(numbers["target"]) if has_target else None

    # tau0 = log(1 + t0), from log t0 when given (t0 itself may overflow).
    if not normalized:
        tau0 = None
    elif "log_t0" in numbers:
        tau0 = jnp.logaddexp(0.0, numbers["log_t0"])
    else:
        tau0 = jnp.log1p(numbers["t0"])
    if by_loss:
        tau0 = jnp.stack([tau0, jnp.zeros_like(tau0)])
    s0 = jnp.zeros_like(numbers["t1"]) if normalized else numbers["t0"]
    if start is not None:
        s0, tau0 = start["s"], start["y"][1]
        save_s = jnp.maximum(save_s, s0)
    controller = diffrax.PIDController(
        rtol=numbers["rtol"], atol=numbers["atol"], **dict(controller_kwargs)
    )

    def still(state, args):  # a stationary point of the field short of the target ends the run
        data, labels = args
        return stationary(field_unravel(state[0]), field_static, data, labels, loss)

    if poll:  # a stop request (SIGINT/SIGTERM) ends the solve (see _Polled)
        controller = _Polled(
            controller, _poll_start(), max_steps, still=still if stop_stationary else None
        )
    solver = _root_tolerances(solver, controller, X.dtype)
    if save_levels:
        return _solve_levels(
            diffrax.ODETerm(field),
            solver,
            controller,
            level_event,
            save_fn,
            (theta0, tau0),
            unravel,
            static,
            X,
            y,
            loss,
            numbers,
            n_save=save_s.shape[0],
            max_steps=max_steps,
            standard_out=standard_out,
            time=time,
            floor=floor,
        ), None
    # The solver sees (theta, tau) as one flat vector z: diffrax selects each array of its
    # state when a step is accepted, and on XLA:CPU a step with more than eight operations ready
    # besides the running one hands half of them to another thread (see AutoSwitch's
    # PhaseState). The error norm (RMS over every component) is the same either way.
    z0, unflat = ravel_pytree((theta0, tau0))

    def flat_field(s, z, args):
        return ravel_pytree(field(s, unflat(z), args))[0]

    def flat_save_fn(s, z, args):
        return save_fn(s, unflat(z), args)

    if poll and stop_stationary:
        controller = dataclasses.replace(controller, still=lambda z, args: still(unflat(z), args))

    if event is not None:
        event = diffrax.Event(
            tuple(
                functools.partial(
                    lambda cond, t, y, args, **kwargs: cond(t, unflat(y), args, **kwargs), cond
                )
                for cond in event.cond_fn
            ),
            root_finder=event.root_finder,
        )
    saveat = diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(ts=save_s, fn=_state_only if summaries_after else flat_save_fn),
            diffrax.SubSaveAt(t1=True),
        ],
        solver_state=True,
        controller_state=poll,
    )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(flat_field),
        solver,
        t0=s0,
        t1=numbers["t1"],
        dt0=(
            start["dt"]
            if start is not None
            else numbers.get(
                "dt0",
                _first_step(diffrax.ODETerm(field), s0, (theta0, tau0), (X, y), numbers["t1"] - s0),
            )
        ),
        y0=z0,
        args=(X, y),
        saveat=saveat,
        stepsize_controller=controller,
        event=event,
        max_steps=max_steps,
        throw=False,
        progress_meter=progress_meter,
        **(
            {}
            if start is None
            else {
                "solver_state": solver.resume(
                    start["solver_state"],
                    diffrax.ODETerm(flat_field),
                    s0,
                    numbers["t1"],
                    z0,
                    (X, y),
                ),
                "controller_state": start["controller"],
            }
        ),
    )
    saved, final_z = sol.ys
    if summaries_after:  # every save point's at once; inf where the run did not reach
        reached = jnp.isfinite(sol.ts[0])
        saved = jax.vmap(lambda z: flat_save_fn(None, z, None))(
            jnp.where(reached[:, None], saved, z0)
        )
        saved = jax.tree_util.tree_map(
            lambda a: jnp.where(reached.reshape((-1,) + (1,) * (a.ndim - 1)), a, jnp.inf).astype(
                a.dtype
            ),
            saved,
        )
    final_theta, final_tau = unflat(final_z[-1])
    final_params = unravel(final_theta)
    final_model = eqx.combine(final_params, static)
    states = saved.pop("state", None)
    if states is not None:
        states = eqx.combine(states, static)
    if normalized:
        tau = saved.pop("tau")
        final_log_t = _tau_to_log_t(final_tau)
        log_t = _tau_to_log_t(tau)
        ts = jnp.where(jnp.isfinite(tau), jnp.expm1(tau), jnp.inf)
    else:  # plain time: the solver's own clock is exact (inf past the end of the run)
        ts = sol.ts[0]
        log_t = jnp.log(ts)
        final_log_t = jnp.log(sol.ts[1][-1])
    final_log_loss = _log_loss_fn(final_params, static, X, y, loss)
    # A root-found crossing of the target, or an end within rounding of it, reaches it: a
    # successful ending.
    at_level = _reached(
        final_log_loss, numbers["target"], X.dtype, _rounding(final_params, static, X, y, loss)
    )
    floored = sol.event_mask[1] if floor else jnp.asarray(False)
    event = (sol.result == diffrax.RESULTS.event_occurred) & ~floored
    reached = (at_level | event) if has_target else jnp.asarray(False)
    finite = all_finite((final_theta, final_log_loss))
    if has_target:  # a stop short of the target at a jump into NaN or inf is no crossing of it
        finite = finite & ~_jump_not_crossing(event & ~at_level, final_params, static, X, y, loss)
    reached = reached & finite
    # log L at the end above its start, or above its lowest saved value: the steps broke down
    saved_log_l = jnp.min(jnp.where(jnp.isfinite(saved["log_loss"]), saved["log_loss"], jnp.inf))
    start = unravel(theta0)
    log_l_start = jnp.minimum(_log_loss_fn(start, static, X, y, loss), saved_log_l)
    rose = finite & _rose(
        start, log_l_start, final_params, final_log_loss, static, X, y, loss, numbers
    )
    code = jnp.where(reached, 0, jnp.where(floored, FLOOR, sol.result._value))
    if poll:
        code = jnp.where(_still(sol) & ~reached, STATIONARY, code)
        code = jnp.where(_stopped(sol) & ~reached, INTERRUPTED, code)
    code = jnp.where(rose, ROSE, code)
    code = jnp.where(finite, code, NONFINITE)
    stats = {k: sol.stats[k] for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")}
    stats["max_steps"] = jnp.asarray(max_steps)
    stats["final_grad_norm"], stats["log_loss_resolution"] = _grad_stats(
        final_params, static, X, y, loss, numbers
    )
    stats["nonfinite_ahead"] = _nonfinite_ahead(final_params, static, X, y, loss, code)
    stats["target_log_loss"] = numbers["target"]
    stats.update(_switch_stats(sol.solver_state))
    handover = None
    if getattr(solver, "phase", None) is not None:
        switched = (sol.solver_state["stiff"] != (solver.phase == "implicit")) & (
            sol.result == diffrax.RESULTS.internal_error
        )
        if poll:
            switched = switched & ~_stopped(sol) & ~_still(sol)
        handover = {
            "switched": switched & finite & ~reached,
            "s": sol.ts[1][-1],
            "y": (final_theta, final_tau),
            "solver_state": sol.solver_state,
            "controller": sol.controller_state,
            "dt": sol.controller_state[2]["dt"] if poll else None,
        }
    return FlowResult(
        ts=ts,
        s=sol.ts[0],
        log_t=log_t,
        log_loss=saved["log_loss"],
        summaries=saved,
        states=_as_output(states, standard_out, stacked=True),
        final=_as_output(final_model, standard_out),
        final_log_loss=final_log_loss,
        final_log_t=final_log_t,
        final_time=sol.ts[1][-1],
        stats=stats,
        stop_code=code,
        reached_target=reached,
        time=time,
    ), handover


@eqx.filter_jit
def _join(first: FlowResult, second: FlowResult) -> FlowResult:
    """One run from a solve of one ``AutoSwitch`` phase and the solve that went on from its end:
    the save points ``first`` reached (finite ``s``) from it, the others, the end and the
    solver's counts from ``second``, the step counts of both added."""
    done = jnp.isfinite(first.s)

    def pick(a, b):
        if not eqx.is_array(a):  # a model's static field (its activation function, say)
            return a
        return jnp.where(done.reshape(done.shape + (1,) * (a.ndim - 1)), a, b)

    fields = {f.name: getattr(second, f.name) for f in dataclasses.fields(second)}
    for k in ("ts", "s", "log_t", "log_loss", "summaries", "states"):
        fields[k] = jax.tree_util.tree_map(pick, getattr(first, k), getattr(second, k))
    counts = ("num_steps", "num_accepted_steps", "num_rejected_steps")
    fields["stats"] = {**second.stats, **{k: first.stats[k] + second.stats[k] for k in counts}}
    return FlowResult(**fields)


def _root_tolerances(solver, controller, dtype):
    """An implicit solver's Newton tolerances: the controller's, but rtol no tighter than
    ``3e4 eps`` (float32: ``3.6e-3``; float64: ``6.7e-12``, below any useful rtol). The chord
    iteration (``Chord``) runs until the scaled update is ``kappa = 1e-2`` of that, ~300 eps: any
    tighter and rounding in the stage residual stalls the iteration and every step is
    rejected."""
    if not isinstance(solver, diffrax.AbstractImplicitSolver):
        return solver
    finder = solver.root_finder
    fields = [f for f in ("rtol", "atol", "norm") if getattr(finder, f, None) is use_stepsize_tol]
    if not fields:
        return solver
    floor = 30000 * float(jnp.finfo(dtype).eps)
    values = {
        "rtol": jnp.maximum(controller.rtol, floor),
        "atol": controller.atol,
        "norm": controller.norm,
    }
    return eqx.tree_at(
        lambda s: tuple(getattr(s.root_finder, f) for f in fields),
        solver,
        tuple(values[f] for f in fields),
    )


def _reached(log_l: Array, target: Array, dtype, rounding) -> Array:
    """``log L <= target + target_tolerance(dtype) (1 + |target|) + 4 rounding``."""
    return log_l <= target + target_tolerance(dtype) * (1.0 + jnp.abs(target)) + 4 * rounding


# A rise of log L beyond this many times the tolerances' resolution of it (``_grad_stats``),
# besides its rounding, is a breakdown of the steps, not the error they are allowed.
ROSE_RESOLUTIONS = 10.0


def _rose(start, log_l_start: Array, end, log_l: Array, static, X, y, loss, numbers) -> Array:
    """Whether ``log L`` rose from ``start`` to ``end`` (parameters), as no gradient flow's
    can, beyond its rounding and ``ROSE_RESOLUTIONS`` times what errors of the tolerances'
    size move it (the lesser of the two ends: a broken-down end has a gradient of any size):
    the steps between broke down."""
    slack = [
        4 * _rounding(p, static, X, y, loss)
        + ROSE_RESOLUTIONS * _grad_stats(p, static, X, y, loss, numbers)[1]
        for p in (start, end)
    ]
    tol = target_tolerance(X.dtype) * (1.0 + jnp.abs(log_l_start))
    return log_l > log_l_start + tol + jnp.minimum(*slack)


def _rounding(params, static, X, y, loss: Loss) -> Array:
    """The rounding in ``log L``: ``eps sum_i |d log L / d f_i| 2 |f_i|`` over the outputs ``f``
    (``eps |log L|`` for a margin loss; ``~ eps |y| / |residual|`` for a square loss near an
    interpolating point, where it can exceed ``target_tolerance``)."""
    outputs = apply_batch(eqx.combine(params, static), X)
    g = jax.grad(lambda o: loss.log_loss(o, y))(outputs)
    return jnp.finfo(outputs.dtype).eps * jnp.sum(jnp.abs(g) * 2 * jnp.abs(outputs))


def _switch_stats(solver_state) -> dict:
    """``AutoSwitch``'s counts from its final state: accepted steps by each method, switches."""
    if not isinstance(solver_state, (dict, PhaseState)) or "stiff_steps" not in solver_state:
        return {}
    return {k: solver_state[k] for k in ("explicit_steps", "stiff_steps", "switches")}


def _as_output(p, standard_out: bool, stacked: bool = False):
    """``p`` as returned to the caller: the plain model when the input was plain (done inside the
    compiled program, so the caller gets it without further dispatches)."""
    if p is None or not standard_out:
        return p
    return eqx.filter_vmap(lambda s: s.standard())(p) if stacked else p.standard()


def loss_levels(log_l0: Array, target: Array, n: int) -> Array:
    """``n`` save levels of ``log L``: ``log L0``, then drops ``d`` geometric in ``d`` from
    ``min(1e-2, 1e-3 D)`` to ``D = log L0 - target``, so the last level is the target."""
    span = jnp.maximum(log_l0 - target, 0.0)
    d_min = jnp.minimum(1e-2, 1e-3 * span)
    frac = jnp.linspace(0.0, 1.0, n - 1)
    drops = jnp.where(span > 0, d_min * (span / jnp.where(span > 0, d_min, 1.0)) ** frac, 0.0)
    drops = drops.at[-1].set(span)
    return jnp.concatenate([log_l0[None], log_l0 - drops])


class _StepEnd(diffrax.AbstractAdaptiveSolver, diffrax.AbstractWrappedSolver):
    """``solver``, whose state also holds where its last step ended: ``(state, t1, y1, h)``
    with ``state`` the solver's own. A solve stopped by an event inside a step can go on from
    that step's end, with the solver state (the first-same-as-last stage included) that belongs
    there, instead of from the interpolated stop."""

    solver: diffrax.AbstractSolver

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    # diffrax counts a wrapped implicit solver as implicit and fills its Newton tolerances
    @property
    def root_finder(self):
        return self.solver.root_finder

    @property
    def root_find_max_steps(self):
        return self.solver.root_find_max_steps

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        state = self.solver.init(terms, t0, t1, y0, args)
        return state, jnp.asarray(t0), y0, jnp.zeros_like(jnp.asarray(t0))

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, err, dense, state, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state[0], made_jump
        )
        end = (
            state,
            jnp.asarray(t1, solver_state[1].dtype),
            y1,
            jnp.asarray(t1 - t0, solver_state[3].dtype),
        )
        return y1, err, dense, end, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


def _solve_levels(
    term,
    solver,
    controller,
    level_event,
    save_fn,
    y0,
    unravel,
    static,
    X,
    y,
    loss,
    numbers,
    *,
    n_save: int,
    max_steps: int,
    standard_out: bool = False,
    time: str = "normalized",
    floor: bool = False,
) -> FlowResult:
    """One diffrax solve per level of ``log L``: each stops on its level (root-found event), and
    the summaries are saved there. Memory stays ``O(n_save)`` and the last level is the target.
    The clock (``time``: ``'normalized'``, or ``'loss'``: ``sigma = s + log L(0) - log L``, with
    ``s`` integrated, and ``s`` reaching ``numbers['s1']`` also ending the run) starts at ``0``.
    The solver's state (for ``AutoSwitch``: which method runs) carries from level to level, and
    so does the poll state of a ``_Polled`` controller. ``y0 = (theta, tau)`` holds the
    trainable arrays as one flat vector; ``unravel`` rebuilds them. ``floor``: the level's
    event has a second, a floor of dead examples, which ends the run (``FLOOR``).

    A level is saved at its crossing, interpolated inside the step that crossed it; the next
    solve goes on from that step's end, with the solver state (``_StepEnd``) and step size that
    belong there, as one uninterrupted solve would. Only where that end lies past the next level
    too does the next solve start at the crossing, evaluating the field afresh. (Restarting
    every level at its crossing perturbs a stiff flow: the field at an interpolated state, and
    at a fresh evaluation, carries the state's error times the Jacobian's norm, which a
    first-same-as-last stage does not; on a weight-normalized linear classifier under the loss
    clock such restarts threw the state off its path deep in the loss.)"""
    solver = _StepEnd(solver)
    log_l0 = _log_loss_fn(unravel(y0[0]), static, X, y, loss)
    levels = loss_levels(log_l0, numbers["target"], n_save)
    zero = jnp.asarray(0)
    s0 = jnp.zeros_like(numbers["t1"])
    # (time='loss') sigma = s + log L(0) - log L ends by s1 - target + |log L(0)| at the latest
    cap = numbers["t1"] + (jnp.abs(log_l0) if time == "loss" else 0.0)
    # a run that starts at or below its target is done before its first level
    start = {
        "s": s0,
        "y": y0,
        "code": zero,
        "done": log_l0 <= numbers["target"],
        "hit": log_l0 <= numbers["target"],
        "steps": zero,
        "accepted": zero,
        "rejected": zero,
        "dt": numbers["dt0"] if "dt0" in numbers else _first_step(term, s0, y0, (X, y), cap - s0),
        "solver_state": solver.init(WrapTerm(term, 1), s0, cap, y0, (X, y)),
        "jump": jnp.asarray(True),  # the next solve's first step evaluates the field afresh
        # the last level's crossing (saved), where the next solve's start ("s", "y") may be the
        # end of the step that crossed it
        "at_s": s0,
        "at_y": y0,
    }
    polled = isinstance(controller, _Polled)
    if polled:
        start["poll"] = controller.start

    ftol = level_tolerance(X.dtype)

    def solve(c, level, next_level):
        # Each solve runs on its own clock, from 0 at its start c["s"] (the field does not
        # depend on the clock): its steps are resolved to the spacing of the level's span, not
        # of the whole run's clock. In float32 a flow that blows up before a finite s (an EWN
        # net, a net of degree above 2) needs steps far below the spacing of s itself there.
        base = c["s"]
        # a finished run's solve ends where it starts, in no steps (its result is dropped)
        t1 = jnp.where(c["done"], 0.0, cap - base)
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t0=jnp.zeros_like(base),
            t1=t1,
            dt0=c["dt"],
            y0=c["y"],
            args=(X, y),
            saveat=diffrax.SaveAt(t1=True, solver_state=True, controller_state=polled),
            # the steps left of the run's budget (a level's solve may not spend all of it)
            stepsize_controller=(
                _Polled(
                    controller.inner,
                    c["poll"],
                    jnp.maximum(max_steps - c["steps"], 1),
                    base,
                    controller.still,
                )
                if polled
                else controller
            ),
            event=level_event(level),
            max_steps=max_steps,
            throw=False,
            solver_state=c["solver_state"],
            made_jump=c["jump"],
        )
        new_y = jax.tree_util.tree_map(lambda x: x[-1], sol.ys)
        theta = unravel(new_y[0])
        log_l = _log_loss_fn(theta, static, X, y, loss)
        start_theta = unravel(c["y"][0])
        log_l_start = _log_loss_fn(start_theta, static, X, y, loss)
        # An event of the level (not of the bound on s, the stall, or the floor), or a crossing
        # whose root-find ran out of digits, reaches the level.
        floored = sol.event_mask[1] if floor else jnp.asarray(False)
        event = (sol.result == diffrax.RESULTS.event_occurred) & ~floored
        bounded = jnp.asarray(False)  # (time='loss') s reached t1 first: the run ends there
        if time == "loss":
            gap = (log_l - level) / (1.0 + jnp.abs(level))
            bounded = event & (gap > _s_gap(new_y[1][1], numbers["s1"]))
            event = event & ~bounded
        # A state or loss that became non-finite, or a stop at a jump of log L into NaN or inf,
        # ends the run at the last finite state (the start of this level's solve), whatever its
        # events said.
        at_level = _reached(log_l, level, X.dtype, _rounding(theta, static, X, y, loss))
        # Where the root find ran out of digits in the clock short of the level (in float32 a
        # fast-falling log L can drop by more than the level's tolerance within one ulp of s),
        # the crossing lies within the clock's resolution: of the point found and the end of
        # the step that crossed the level (an accepted point of the path past it), the one whose
        # log L is nearer the level stands for the crossing.
        _, t_end, y_end, h_end = sol.solver_state
        t_sol = base + sol.ts[-1]
        accepted = sol.stats["num_accepted_steps"]
        # (a solve without an accepted step holds the step end of an earlier one, on its clock)
        h_end = jnp.where(accepted > 0, h_end, 0.0)
        log_l_end = _log_loss_fn(unravel(y_end[0]), static, X, y, loss)
        past = (
            event
            & ~at_level
            & all_finite((y_end, log_l_end))
            & (h_end > 0)
            & (log_l_end <= level)
            & (level - log_l_end < log_l - level)
        )
        new_y = jax.tree_util.tree_map(lambda a, b: jnp.where(past, a, b), y_end, new_y)
        log_l = jnp.where(past, log_l_end, log_l)
        at_level = at_level | past
        finite = all_finite((new_y, log_l)) & ~_jump_not_crossing(
            event & ~at_level, theta, static, X, y, loss
        )
        # A solve that ends above its start broke down, and the run ends at its start.
        rose = finite & _rose(start_theta, log_l_start, theta, log_l, static, X, y, loss, numbers)
        finite = finite & ~rose
        hit = finite & (event | at_level)
        bounded = bounded & finite
        steps = c["steps"] + sol.stats["num_steps"]
        code = jnp.where(hit | bounded, 0, sol.result._value)
        code = jnp.where(hit & (steps > max_steps), 1, code)
        if polled:
            code = jnp.where(_still(sol) & ~hit, STATIONARY, code)
            code = jnp.where(_stopped(sol) & ~hit, INTERRUPTED, code)
        code = jnp.where(floored, FLOOR, code)
        code = jnp.where(finite, code, jnp.where(rose, ROSE, NONFINITE))
        new_y = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new_y, c["at_y"])
        new_s = jnp.where(finite, jnp.where(past, base + t_end, t_sol), c["at_s"])
        # Go on from the end of the step that crossed the level where that end lies above the
        # next level (the event's gap, see level_event), else from the crossing.
        ahead = (log_l_end - next_level) / (1.0 + jnp.abs(next_level)) + 2 * ftol > 0
        if time == "loss":  # and before the bound on s, which the next solve's event must see
            ahead = ahead & (_s_gap(y_end[1][1], numbers["s1"]) > 0)
        from_end = hit & ahead & all_finite((y_end, log_l_end)) & (h_end > 0)
        dt = jnp.where(accepted > 0, sol.ts[-1] / jnp.maximum(accepted, 1), c["dt"])
        new = {
            "s": jnp.where(from_end, base + t_end, new_s),
            "y": jax.tree_util.tree_map(lambda a, b: jnp.where(from_end, a, b), y_end, new_y),
            "jump": ~from_end,
            "at_s": new_s,
            "at_y": new_y,
            "code": code,
            "done": ~hit | (code != 0),
            "hit": hit,
            "steps": steps,
            "accepted": c["accepted"] + accepted,
            "rejected": c["rejected"] + sol.stats["num_rejected_steps"],
            # the next solve starts with the last step's size (from its end), or this solve's
            # mean accepted step (from the crossing)
            "dt": jnp.where(from_end, h_end, dt),
            "solver_state": sol.solver_state,
        }
        if polled:
            new["poll"] = sol.controller_state[1]
        return jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, b.dtype), new, c)

    def body(c, levels):
        # No cond on ``done`` (under vmap a cond cannot hold the solve's stop-request poll):
        # every level solves, and a finished run keeps its state.
        new = solve(c, *levels)
        c = jax.tree_util.tree_map(lambda a, b: jnp.where(c["done"], a, b), c, new)
        out = save_fn(c["at_s"], c["at_y"], None)
        keep = ~c["done"]
        out = jax.tree_util.tree_map(lambda v: jnp.where(keep, v, jnp.inf), out)
        return c, (out, jnp.where(keep, c["at_s"], jnp.inf))

    first = save_fn(start["s"], y0, None)
    # each solve's level and the one after it (the target's own after the target: its crossing
    # step ends below it, and the run ends there)
    after = jnp.concatenate([levels[2:], levels[-1:]])
    end, (saved, s_saved) = jax.lax.scan(body, start, (levels[1:], after))
    saved = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first, saved)
    s_saved = jnp.concatenate([start["s"][None], s_saved])
    final_theta, final_tau = end["at_y"]
    final_params = unravel(final_theta)
    tau = saved.pop("tau")
    clock_stats = {}
    if time == "loss":  # s is integrated alongside the clock sigma
        s_saved, clock_stats["final_s"], final_tau = saved.pop("s"), final_tau[1], final_tau[0]
    states = saved.pop("state", None)
    final_log_loss = _log_loss_fn(final_params, static, X, y, loss)
    return FlowResult(
        ts=jnp.where(jnp.isfinite(tau), jnp.expm1(tau), jnp.inf),
        s=s_saved,
        log_t=_tau_to_log_t(tau),
        log_loss=saved["log_loss"],
        summaries=saved,
        states=_as_output(
            None if states is None else eqx.combine(states, static), standard_out, stacked=True
        ),
        final=_as_output(eqx.combine(final_params, static), standard_out),
        final_log_loss=final_log_loss,
        final_log_t=_tau_to_log_t(final_tau),
        final_time=end["at_s"],
        stats={
            "num_steps": end["steps"],
            "num_accepted_steps": end["accepted"],
            "num_rejected_steps": end["rejected"],
            "max_steps": jnp.asarray(max_steps),
            **dict(
                zip(
                    ("final_grad_norm", "log_loss_resolution"),
                    _grad_stats(final_params, static, X, y, loss, numbers),
                )
            ),
            "nonfinite_ahead": _nonfinite_ahead(final_params, static, X, y, loss, end["code"]),
            "target_log_loss": numbers["target"],
            **clock_stats,
            **_switch_stats(end["solver_state"][0]),
        },
        time=time,
        stop_code=end["code"],
        # the last solve crossed its level (the target, within the clock's resolution), or the
        # run ended within rounding of it
        reached_target=(end["code"] == 0)
        & (
            end["hit"]
            | _reached(
                final_log_loss,
                numbers["target"],
                X.dtype,
                _rounding(final_params, static, X, y, loss),
            )
        ),
    )


def _first_step(term, t0, y0, args, span):
    """The first step of a solve: ``1e-3 (1 + ||theta_0||) / ||f(y_0)||``, at most ``span``.
    diffrax's automatic choice can stall: on a restart, and in float32 where a component
    starts at 0 (its error scale is then ``atol`` alone) with a large derivative, as ``log t``
    does in normalized time from a small loss."""
    norm = tree_norm(term.vf(t0, y0, args))
    dt0 = 1e-3 * (1.0 + tree_norm(y0[0])) / jnp.where(norm > 0, norm, 1.0)
    return jnp.where(norm > 0, jnp.minimum(dt0, span), span)


def _s_gap(s, s1):
    """How far normalized time ``s`` is from its bound ``s1`` (``time='loss'``), relative."""
    return (s1 - s) / (1.0 + jnp.abs(s1))


def _log_fractions(n: int) -> np.ndarray:
    """``n`` fractions of the span, log-spaced from ``1e-6`` to ``1`` (just ``[1]`` for one)."""
    return np.logspace(-6, 0, n) if n > 1 else np.ones(n)


def default_save_times(t0: float, t1: float, n_save: int) -> np.ndarray:
    """``n_save`` save points: ``t0``, then log-spaced from ``t0 + (t1 - t0) 1e-6`` to ``t1``."""
    span = t1 - t0
    return np.concatenate([[t0], t0 + span * _log_fractions(n_save - 1)])


def open_end_time(dtype) -> float:
    """The end of the clock of a run to a target given no ``t1``: ``sqrt`` of the dtype's largest
    number (1.3e154 in float64, 1.8e19 in float32), a bound the run meets only where it has
    stopped moving, with room for the clock's arithmetic."""
    return float(np.sqrt(np.finfo(dtype).max))


def open_save_times(t0: float, t1: float, target: float, n_save: int) -> np.ndarray:
    """The save points of a plain-time run to ``target`` given no ``t1``: ``t0``, then
    log-spaced from ``t0 + 1e-3`` to ``t0 + exp(|target| + 10)`` (at most ``t1``): plain time
    reaches ``log L = target`` near ``t ~ exp(|target|)``."""
    end = min(t1 - t0, math.exp(min(abs(target) + 10.0, math.log(t1))))
    ts = t0 + np.logspace(-3, math.log10(end), n_save - 1)
    return np.concatenate([[t0], np.minimum(ts, t1)])


def _progress_meter(progress: bool) -> diffrax.AbstractProgressMeter:
    if not progress:
        return diffrax.NoProgressMeter()
    try:
        import tqdm  # noqa: F401

        return diffrax.TqdmProgressMeter()
    except ImportError:
        return diffrax.TextProgressMeter()


def _traced_degree(p: Parameterized, X: Array) -> Array:
    """Under a transform (vmap over seeds): ``L = median_i log(|Phi(2w; x_i)|/|Phi(w; x_i)|)/log
    2``."""
    phi, phi2 = (jnp.abs(out).ravel() for out in scaled_outputs(p, X, (2.0,)))
    est = jnp.log(phi2 / jnp.where(phi > 0, phi, 1.0)) / jnp.log(2.0)
    return jnp.nanmedian(jnp.where(phi > 0, est, jnp.nan))


def _auto_degree(p: Parameterized, X, loss: Loss) -> float:
    """The homogeneity degree of ``p``: known from the layers of wnjax's own nets
    (``known_degree``), else measured on a few rows of ``X``; NaN for a loss that is not
    margin-based (no normalized margin) or data under a transform."""
    if not loss.margin_based:
        return math.nan
    known = known_degree(p)
    if known is not None:
        return known
    if isinstance(X, jax.core.Tracer):
        return math.nan
    sample = X[: min(8, X.shape[0])]
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(p)):
        return _traced_degree(p, sample)
    # Concrete weights and data: measured eagerly, also inside a caller's jit (which would stage
    # these operations and hand homogeneity_degree tracers it cannot read).
    with jax.ensure_compile_time_eval():
        try:
            return homogeneity_degree(p, sample, rtol=1e-5)
        except ValueError as err:
            cause = err
        if not np.any(np.asarray(jax.vmap(p.standard())(sample))):
            # Zero outputs at these weights (e.g. a diagonal net with u = v): homogeneity is a
            # property of the architecture, so measure it at perturbed weights.
            try:
                return homogeneity_degree(_perturbed(p), sample, rtol=1e-5)
            except ValueError as err:
                cause = err
    raise InvalidInput(
        "the normalized margin min_i q_i / ||w||^L needs the model's homogeneity degree L, "
        f"which cannot be measured: {cause} Pass degree=L explicitly, or use a bias-free model "
        "with homogeneous activations (relu, relu^p, linear)."
    ) from cause


def _perturbed(p: Parameterized) -> Parameterized:
    """``p`` with every inexact array perturbed by a few percent (fixed noise)."""
    rng = np.random.default_rng(0)

    def jitter(x):
        if not eqx.is_inexact_array(x):
            return x
        scale = 0.05 * (float(jnp.mean(jnp.abs(x))) + 1e-3)
        return x + jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype)

    return jax.tree_util.tree_map(jitter, p)


@in_float32
def gradient_flow(
    model: PyTree,
    X: Array,
    y: Array,
    *,
    loss: str | Loss = "exponential",
    t1: float | None = None,
    t0: float = 0.0,
    log_t0: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    solver: diffrax.AbstractSolver | str | None = None,
    time: str = "plain",
    rate: str | None = None,
    target_log_loss: float | None = None,
    save: Save | None = None,
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
    kink_width: float | None = None,
    stop_stalled: bool = False,
) -> FlowResult:
    """Integrate gradient flow ``dw/dt = -grad L(w)`` of a (parameterized) model with diffrax.

    ``theta`` are the model's trainable arrays (``(a, v)`` for EWN, ``(g, v)`` for SWN, ``w``
    for a plain model). With ``rate='neuron_norm_sq'`` the unnormalized flow runs with per-neuron
    learning rates: ``dw_u/dt = -||w_u||^2 grad_u L``. With ``time='normalized'`` the flow is
    ``d theta/ds = -grad log L`` (the same path, ``dt/ds = 1/L``), and ``t1`` bounds ``s``.
    With ``time='loss'`` the solver's clock is ``sigma = s + log L(0) - log L`` (``d theta/d sigma =
    -g/(1 + <grad log L, g>)``, ``g`` the rate-scaled ``grad log L``), which follows the loss
    where it falls fast and ``s`` where it does not; ``t1`` still bounds ``s``. Its run needs a
    target; it has no finite-time blow-up to resolve, in float32 too.

    **Arguments:**
    - `model`: an equinox model, or a ``Parameterized`` one from ``wnjax.ewn``/``swn``.
    - `X`, `y`: data, ``X`` of shape ``(n, ...)``; ``y`` in ``{-1, +1}`` for binary losses.
      The run's precision (and its default tolerances) is the wider of the data's and the
      model's float dtypes: both are cast to it.
    - `loss`: ``'exponential'``, ``'logistic'``, ``'cross_entropy'``, ``'square'`` or a ``Loss``.
    - `t1`, `t0`: the time span (in ``s`` for ``time='normalized'``, where ``t0`` is the plain
      time at ``s = 0``; likewise for ``time='loss'``, whose run also ends at its target).
      ``t1=None``: ``1`` without a target; with one, no bound (``open_end_time(dtype)``): the
      run goes on to its target, a stationary point (``grad L`` zero to rounding, where it
      stops: ``STATIONARY``) or ``max_steps``.
    - `log_t0`: ``log t`` at the start, in place of ``t0`` (``time='normalized'`` or
      ``'loss'``). Use it
      to continue a deep run, whose ``t = exp(log t)`` overflows: pass the previous result's
      ``final_log_t`` with its ``final`` (without it the plain time starts at ``t0`` and jumps
      by ``~1/L`` at once; the path is the same).
    - `rtol`, `atol`: the PID controller's tolerances (``None``: ``default_tolerances`` of the
      data's dtype, ``(1e-8, 1e-10)`` in float64 and ``(1e-5, 1e-7)`` in float32). An rtol
      below ``10 eps`` of the dtype is raised to it, with a warning.
    - `solver`: a diffrax solver, or a name in ``SOLVERS``. The default (``None`` or
      ``'auto'``) is ``default_solver``: ``wnjax.AutoSwitch``, explicit (``Tsit5``; ``Dopri8`` for
      ``rtol < 1e-9`` on a smooth field, ``Dopri5`` on a ReLU or ReLU^2 net, see
      ``default_solver``) while the flow is not stiff and L-stable ``Kvaerno5`` while it is;
      ``result.stats`` then counts ``explicit_steps``, ``stiff_steps`` and ``switches``.
      ``'stiff'``/``'kvaerno5'``, ``'tsit5'``, ``'dopri5'``, ``'dopri8'``,
      ``'bosh3'`` name one method alone. Under ``jit``/``vmap`` (a seed sweep) the default is
      ``Tsit5``; on a ReLU net whose kinks the field smooths, the switch under ``jit`` alone
      and ``Kvaerno5`` under ``vmap``, where the switch would run both methods every step
      (see ``resolve_solver``).
    - `time`: the clock: ``'plain'`` (``t``), ``'normalized'`` (``s``, ``ds = L dt``) or
      ``'loss'`` (``sigma = s + log L(0) - log L``; needs ``target_log_loss``, saves at loss
      levels; ``s`` and ``log t`` are integrated alongside). For targets far below
      ``log L = -30`` use ``'normalized'`` (with a target it saves at levels of ``log L``, and
      each level's solve runs on its own clock, so the steps stay resolved where ``log L``
      falls without bound before a finite ``s``: an EWN flow, a net of homogeneity degree
      above 2, whose ``s = int L dt`` converges), or ``'loss'``, which has no such blow-up (in
      float32 a linear SWN classifier's loss clock stops short of ``log L = -10,000`` on eight
      seeds of eight, between ``-1,770`` and ``-6,500``, its steps there below the clock's
      spacing and the state no longer moving; the normalized clock reaches it on all eight).
    - `rate`: ``None``, ``'neuron_norm_sq'``, or a callable ``rate(grads, params) -> grads``
      (both the parameterized model's type) that rescales the gradient, e.g.
      ``wnjax.diagonal.polar_rates(eta_r, eta_theta)``; its array fields are traced.
    - `target_log_loss`: stop once ``log L`` falls to this value. The crossing is root-found:
      the run ends ``2 level_tolerance(dtype) (1 + |target|)`` below the target, up to rounding
      (or, where ``log L`` falls by more than that within one ulp of the clock, as in float32
      deep in the loss, at the nearer to the target of the two sides of the crossing: the point
      found or the end of the step that crossed it, whose ``final_log_loss`` says how near),
      and ``reached_target`` is ``final_log_loss <= target + target_tolerance(dtype)
      (1 + |target|) + 4 r`` with ``r = eps sum_i |d log L / d f_i| 2 |f_i|`` the rounding in
      ``log L`` (large for a square loss near an interpolating point), or a crossing located
      to the clock's resolution. A run that reaches its target is a success.
    - `save`: where to save summaries: ``wnjax.LogSpaced(n)``, ``wnjax.AtTimes(ts)`` or
      ``wnjax.AtLossLevels(n)``. ``None``: ``AtLossLevels(n_save)`` for
      ``time='normalized'`` with a target and for ``time='loss'``, else ``LogSpaced(n_save)``
      (``AtTimes(save_ts)`` when ``save_ts`` is given).
    - `n_save`, `save_ts`: shorthands for the default ``save``.
    - `save_states`: keep the full model at the save points.
    - `max_steps`: the step budget. Exhausting it raises ``FlowFailed`` (``throw=True``) or
      returns the partial result with ``ok == False``.
    - `dt0`: initial step (``None``: chosen automatically).
    - `degree`: homogeneity degree ``L`` for the normalized margin ``min_i q_i / ||w||^L``;
      measured if ``None`` (margin losses). A model that is not homogeneous (biases, ``tanh``)
      raises ``InvalidInput`` unless ``degree`` is given.
    - `progress`: show diffrax's progress meter.
    - `throw`: raise ``FlowFailed`` on failure instead of returning.
    - `controller_kwargs`: extra ``diffrax.PIDController`` arguments (``pcoeff``, ``dtmax``, ...).
    - `diagnostics`: also save the asymptotic diagnostics (``wnjax.asymptotic_summaries``:
      alignment, relation spreads, KKT residuals, ...) at the save points; ``False`` keeps only
      the loss, margins and norms (cheaper to compile and run).
    - `kink_width`: on a model with kinks, whose ``-grad L`` jumps where a pre-activation
      ``z`` changes sign (the flow is then a differential inclusion, and it slides along such
      a surface wherever the field on both sides points at it), the vector field blends the
      derivatives of the two sides over ``|z| <= 2 kappa s``, ``kappa`` the kink width (a
      Filippov regularization that keeps the field homogeneous), and the solver takes the
      smooth, stiff flow that results. On an ``MLP`` or ``CNN`` with ReLU, ``s = s_u ||x||``
      (``kinked_relu``), ``s_u = sqrt(||w_u||^2 + mean_v ||w_v||^2)``, finite where a neuron
      shrinks to 0; on any other module (``eqx.nn.MLP`` with ``jax.nn.relu``, leaky ReLU,
      ``jnp.abs``, a maxout) every ``max``, ``min``, ``abs`` and ``where`` on the sign of a
      difference is blended, ``s`` the same bound on ``|z|`` from the weights and inputs of
      the product that made it, and every many-way maximum (max pooling, ``jnp.max``) and
      order statistic (``jnp.sort``, ``lax.top_k``) shares its derivative among the entries
      near it (``wnjax.smooth_kinks``); a kink whose value
      there is 0, raised to a power above 1 (ReLU^2), has a continuous derivative and is left
      as it is. The path is the Filippov
      solution's to ``O(kappa)``: on 5-8-1 ReLU nets that slide, three data sets each, the
      weights (of size ~1.4) at ``t = 1`` lie within ``1.2-3.4 kappa`` of gradient descent's
      as its step vanishes (``kappa = 1e-3, 1e-4, 1e-5``). ``None``:
      ``default_kink_width(rtol)``, ``max(1e-4, 100 rtol)``; ``0``: the model's own
      derivative, whose sliding holds every error-controlled method to steps proportional to
      ``rtol``. A ReLU (and any ``max``, ``min``, ``abs``) of the field's model takes within
      the layer the value of the ramp whose slope is the blend (``kink_ramp``, at most
      ``5 kappa s / 16`` from it): its output is 0 only where its slope is, so an example
      waking from all-zero activations (a dead example coming alive) leaves no jump in the
      slopes of the layers after it. Models without kinks ignore it. The loss, the events,
      the summaries and ``final`` use the model unchanged (the message says the field was
      smoothed); normalized time's clock ``t = int ds / L`` takes the field's model's ``L``,
      as its path does (within ``O(kappa)`` of the model's);
      ``result.stats['kink_width']`` holds the value used (``0`` where none was).
    - `stop_stalled`: with a target, stop (``FLOOR``) once examples whose outputs are 0, each
      with a zero gradient of its own loss, hold all but 0.05% of ``L`` and their loss lies
      above the target (on a ReLU-type net, examples on which every unit is inactive), as
      ``gradient_descent``'s option does. No flow moves their outputs, but the other
      examples, turning the weights as their margins grow (over spans of ``log s``), can wake
      them, and a run that goes on can still reach its target (a small ReLU ``eqx.nn.MLP``
      stopped at ``log L = 0.0005`` with the stop, and reaches ``-300`` without it).
      ``False`` (default): go on to the target, ``t1`` or ``max_steps``; a run that ends at
      such a floor says so.

    **Returns:** a ``FlowResult``.

    SIGINT (Ctrl-C) or SIGTERM during the solve ends it at its next check for a stop request
    (the first ``POLL_FIRST_STEPS`` = 256 steps in, later about every 0.2 s; a signal during
    compilation is seen at the first): the run so far is returned with ``interrupted`` true,
    and a warning, never ``FlowFailed``.

    Numbers (``t1``, ``rtol``, ``atol``, ``target_log_loss``, ...) are traced, so calling again
    with other values reuses the compiled program.
    """
    if time not in TIMES:
        raise InvalidInput(f"time must be one of {TIMES}, got {time!r}.")
    if controller_kwargs:
        try:
            diffrax.PIDController(rtol=1e-3, atol=1e-6, **controller_kwargs)
        except TypeError as err:
            raise InvalidInput(
                f"controller_kwargs {controller_kwargs!r} are not diffrax.PIDController "
                f"arguments ({err}); use pcoeff, icoeff, dcoeff, dtmin, dtmax, factormin, "
                "factormax, safety, ..."
            ) from None
    if not callable(rate) and rate not in RATES:
        raise InvalidInput(f"rate must be one of {RATES} or a callable, got {rate!r}.")
    _check_kink_width(kink_width)
    check_options(
        t0=t0,
        t1=t1,
        log_t0=log_t0,
        rtol=rtol,
        atol=atol,
        dt0=dt0,
        degree=degree,
        target_log_loss=target_log_loss,
        n_save=n_save,
        max_steps=max_steps,
    )
    loss_obj = get_loss(loss)
    X, y = check_data(X, y, loss_obj)
    p = as_parameterized(model)
    # the run's precision: the wider of the model's and the data's, as gradient_descent's
    p, X, y, dtype = in_common_dtype(p, X, y)
    check_outputs(p, X, y, loss_obj)
    check_conflicts(X, y, loss_obj, target_log_loss, stacklevel=4, model=p)
    open_end = t1 is None and target_log_loss is not None
    if t1 is None:
        t1 = open_end_time(X.dtype) if open_end else 1.0
    if time == "loss":
        if target_log_loss is None:
            raise InvalidInput(
                "time='loss' runs its clock sigma = s + log L(0) - log L down to a target loss: "
                "pass target_log_loss (e.g. -300)."
            )
        if not isinstance(save, (AtLossLevels, type(None))) or save_ts is not None:
            raise InvalidInput(
                "time='loss' saves at levels of log L (its clock): use save=AtLossLevels(n) or "
                "n_save=n, not save_ts, AtTimes or LogSpaced."
            )
    if not isinstance(t1, jax.core.Tracer) and not t1 > (0.0 if time != "plain" else t0):
        raise InvalidInput(f"t1 must exceed t0 (got t0={t0}, t1={t1}).")
    dtype = X.dtype
    rtol, atol = _tolerances(rtol, atol, dtype)
    kink, kinks_left = _resolve_kink_width(kink_width, p, X, rtol)
    normalized = time != "plain"  # log t is integrated
    has_target = target_log_loss is not None
    save = resolve_save(
        save, n_save=int(n_save), save_ts=save_ts, normalized=normalized, has_target=has_target
    )
    if degree is None:
        degree = _auto_degree(p, X, loss_obj)
    numbers = {
        "t0": as_number(t0, dtype),
        "t1": as_number(t1, dtype),
        # the solver's clock sigma = s + log L(0) - log L is capped beyond the target and t1
        # (the level event ends the run); t1 bounds normalized time s, as for time='normalized'
        **(
            {
                "s1": as_number(t1, dtype),
                "t1": as_number(t1 + 2.0 * abs(target_log_loss) + 1.0, dtype),
            }
            if time == "loss"
            else {}
        ),
        "rtol": as_number(rtol, dtype),
        "atol": as_number(atol, dtype),
        "degree": as_number(degree, dtype),
        "target": as_number(-np.inf if target_log_loss is None else target_log_loss, dtype),
    }
    if log_t0 is not None:
        if not normalized:
            raise InvalidInput(
                "log_t0 is for time='normalized' or 'loss'; with time='plain' pass t0."
            )
        numbers["log_t0"] = as_number(log_t0, dtype)
    if dt0 is not None:
        numbers["dt0"] = as_number(dt0, dtype)
    save_levels = isinstance(save, AtLossLevels)
    if isinstance(save, AtTimes):
        save.check_within(0.0 if normalized else t0, t1, "s" if normalized else "t")
        save_s = save.ts
    else:
        start = 0.0 if normalized else t0
        if isinstance(t1, jax.core.Tracer):
            save_s = start + (t1 - start) * jnp.concatenate(
                [jnp.zeros(1), jnp.asarray(_log_fractions(save.n - 1))]
            )
        elif open_end:  # in plain time: log-spaced up to about where the target lies
            save_s = open_save_times(start, float(t1), target_log_loss, save.n)
        else:
            save_s = default_save_times(start, float(t1), save.n)
    save_s = as_number(save_s, dtype)
    traced = _is_traced(p, X, y)
    n_params = _count_params(p)
    method = resolve_solver(
        solver,
        rtol,
        n_params,
        traced=traced,
        smooth=smooth_field(p),
        kinks=kinked_field(p) or kink > 0,
        stiff_kinks=kink > 0,
        batched=_is_batched(p, X, y),
    )
    # An AutoSwitch run outside jit is a chain of solves, each of one method alone (no branch on
    # the method in its steps), each going on from where the last one switched: a run that never
    # turns stiff compiles and runs the explicit method's program only.
    if isinstance(method, AutoSwitch) and method.phase is not None:  # the whole run, from it
        method = dataclasses.replace(method, phase=None, start_stiff=method.phase == "implicit")
    phased = isinstance(method, AutoSwitch) and not save_levels and not traced
    if phased:
        # the first phase says which method starts: start_stiff is left out of the programs
        stiff = method.start_stiff
        if stiff:
            method = dataclasses.replace(method, start_stiff=False)
    if not traced:
        _maps.relieve()
    with _interrupt.handling():  # SIGINT/SIGTERM end the solve, which returns its partial run
        solve = functools.partial(
            _solve,
            p,
            X,
            y,
            numbers,
            save_s,
            loss=loss_obj,
            time=time,
            rate=rate,
            has_target=has_target,
            max_steps=int(max_steps),
            save_states=save_states,
            save_levels=save_levels,
            diagnostics=diagnostics,
            progress_meter=_progress_meter(progress),
            controller_kwargs=tuple(sorted((controller_kwargs or {}).items())),
            summaries_after=not traced and _batched_summaries(save_s.shape[0], X, n_params),
            # final/states as the input's type
            standard_out=not isinstance(model, Parameterized),
            kink=kink,
            floor=bool(stop_stalled) and has_target,
            stop_stationary=open_end,
        )
        if not phased:
            result = solve(solver=method)[0]
        else:
            result, handover = solve(solver=method.phase_solver(stiff))
            while bool(handover["switched"]):
                stiff = not stiff
                more, handover = solve(solver=method.phase_solver(stiff), start=handover)
                result = _join(result, more)
        stats = {**result.stats, "kink_width": jnp.asarray(kink, dtype)}
        if kinks_left:
            stats["kinks_left"] = jnp.asarray(kinks_left)
        if has_target and not isinstance(result.stop_code, jax.core.Tracer):
            stats.update(_stuck_stats(result, X, y, loss_obj))
        return _finish(dataclasses.replace(result, stats=stats), throw)


def default_kink_width(rtol) -> float:
    """``max(1e-4, 100 rtol)``: the relative width over which ``gradient_flow`` smooths ReLU's
    derivative (``kink_width``). A narrower kink makes the regularized flow stiffer where it
    slides: on depth-3 ReLU MLPs (10-16-16-1, 32 points) the normalized flow to log L = -300
    took 3,400-8,300 steps (standard) and 3,100-5,000 (EWN) at width 1e-4, 56,000-64,000
    (standard) at 1e-5, and ran out of 100,000 (EWN) at 1e-6. Below ``~100 rtol`` the
    stiffness test no longer sees the layer that the explicit steps jump over, and the steps
    shrink as at a jump."""
    if isinstance(rtol, jax.core.Tracer):
        return 1e-4
    return max(1e-4, 100.0 * float(np.asarray(rtol)))


def _check_kink_width(kink_width) -> None:
    """Raise ``InvalidInput`` unless ``kink_width`` is ``None`` or a number in ``[0, 1)``."""
    if kink_width is None:
        return
    ok = (
        not isinstance(kink_width, bool)
        and isinstance(kink_width, (int, float, np.integer, np.floating))
        and 0.0 <= float(kink_width) < 1.0
    )
    if not ok:
        raise InvalidInput(
            f"kink_width must be a number in [0, 1), got {kink_width!r}; pass None for the "
            "default (max(1e-4, 100 rtol)), e.g. 1e-5 for a finer (stiffer) Filippov flow, or 0 "
            "for ReLU's own derivative."
        )


def _resolve_kink_width(kink_width, p, X, rtol) -> tuple[float, int]:
    """``(width, left)``: the kink width the flow of ``p`` on ``X`` uses, ``0`` unless ``p`` is
    wnjax's ``MLP`` or ``CNN`` with ReLU, or another model with kinks (``count_kinks``), and
    how many kinked operations the field leaves as they are (``count_kinks``)."""
    if kink_width is not None and not kink_width:
        return 0.0, 0
    if _own_activation(p):
        kinked, left = _activation(p).jumps, 0
    else:
        try:
            smoothed, left = count_kinks(p, jax.ShapeDtypeStruct((1, *X.shape[1:]), X.dtype))
        except Exception as err:  # an operation the rewrite cannot evaluate
            warnings.warn(
                f"gradient_flow could not read the model's kinks ({type(err).__name__}: {err}); "
                "its field uses the model's own derivative, as with kink_width=0.",
                RuntimeWarning,
                stacklevel=4,
            )
            return 0.0, 0
        kinked = smoothed > 0
    if not kinked:
        return 0.0, left
    return (default_kink_width(rtol) if kink_width is None else float(kink_width)), left


def _own_activation(p) -> bool:
    """Whether ``p`` is an ``MLP`` or ``CNN`` with wnjax's ``ReLUPower`` activation, whose kinks
    the model smooths itself (``with_kink``); other activations and models go through
    ``Smoothed``."""
    return isinstance(_activation(p), ReLUPower)


def _smoothed(tree, kink: float, own: bool):
    """``tree`` (a model, or its static or dynamic part) as the vector field evaluates it: its
    kinks smoothed over the relative width ``kink`` (``0``: as it is)."""
    if not kink:
        return tree
    return with_kink(tree, kink) if own else Smoothed(tree, kink)


def _stuck_stats(r: FlowResult, X: Array, y: Array, loss: Loss) -> dict:
    """For a run that ended short of its target (not interrupted) at a floor of the loss that
    examples with a zero gradient of their own loss set (a ReLU net's examples on which every
    unit is inactive: their outputs, and their share of ``L``, cannot move): ``stuck_examples``,
    how many, and ``stuck_log_loss``, the log of their summed loss, within ``STUCK_SHARE`` of
    ``log L``. Empty elsewhere."""
    code = int(np.asarray(r.stop_code))
    if bool(r.reached_target) or code not in (0, 1, FROZEN_CLOCK, FLOOR, STATIONARY):
        return {}
    count, floor = _stuck_examples(r.final, X, y, loss)
    # only where they hold all but STALL_SHARE of the loss: elsewhere the others still move,
    # and may wake them (a dead ReLU unit of one example moves with the others' gradients)
    if int(count) == 0 or not float(r.final_log_loss) - float(floor) < STALL_SHARE:
        return {}
    return {"stuck_examples": count, "stuck_log_loss": floor}


@eqx.filter_jit
def _stuck_examples(model, X: Array, y: Array, loss: Loss) -> tuple[Array, Array]:
    """``(count, log of their summed loss)`` of the examples ``i`` whose own loss has a zero
    gradient, ``grad log l_i = 0``, at ``model`` (one example's gradient at a time)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def one(example):
        x, t = example

        def log_l(params):
            return loss.log_loss(apply_batch(eqx.combine(params, static), x[None]), t[None])

        # the largest entry, not the norm: squares of a tiny gradient underflow to 0
        grads = jax.tree_util.tree_leaves(jax.grad(log_l)(params))
        return jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in grads]))

    values = loss.log_losses(apply_batch(model, X), y)
    norms = jax.lax.map(one, (X, y), batch_size=min(64, X.shape[0]))
    stuck = (norms == 0) & jnp.isfinite(values)
    return jnp.sum(stuck), jax.nn.logsumexp(jnp.where(stuck, values, -jnp.inf))


def _stuck_note(r: FlowResult) -> str:
    """The floor under ``log L`` that examples with a zero gradient set (``_stuck_stats``)."""
    if "stuck_examples" not in r.stats:
        return ""
    count = int(np.asarray(r.stats["stuck_examples"]))
    floor = float(np.asarray(r.stats["stuck_log_loss"]))
    target = float(np.asarray(r.stats.get("target_log_loss", -np.inf)))
    many = count > 1
    return (
        f" log L sits at a floor, {floor:.6g}, short of the target log L = {target:g}: "
        f"{count} example{'s' if many else ''} ha{'ve' if many else 's'} a zero gradient of "
        f"{'their' if many else 'its'} own loss at result.final (an input of zeros; on a "
        f"ReLU-type net, every unit {'they reach' if many else 'it reaches'} inactive, output 0), "
        f"so {'their outputs do' if many else 'its output does'} not move, and the other "
        "examples hold under 0.1% of the loss. Another initialization or a wider net keeps such "
        "examples alive."
    )


def _finish(result: FlowResult, throw: bool) -> FlowResult:
    """``result``, once its run has finished; a failure raises ``FlowFailed`` (``throw``) or
    warns, an interrupted run warns and is returned."""
    if not isinstance(result.stop_code, jax.core.Tracer):
        code = np.asarray(result.stop_code)  # one host read, no dispatch: waits for the run
        if not bool(np.all(code == 0)):
            if throw and not bool(np.any(code == INTERRUPTED)):
                raise FlowFailed(result.message, result)
            warnings.warn(result.message, RuntimeWarning, stacklevel=3)
        elif _resolution_note(result):
            warnings.warn(result.message, RuntimeWarning, stacklevel=3)
        warn_target_met_at_start(result.log_loss, result.stats.get("target_log_loss"), 4)
    return result


def _tracers(p, X, y) -> list:
    """The leaves of the model and the data that are tracers (under ``jit``, ``vmap``)."""
    leaves = [X, y, *jax.tree_util.tree_leaves(p)]
    return [leaf for leaf in leaves if isinstance(leaf, jax.core.Tracer)]


def _is_traced(p, X, y) -> bool:
    """Whether the call is under a transform (``jit``, ``vmap``, a seed sweep)."""
    return bool(_tracers(p, X, y))


def _is_batched(p, X, y) -> bool:
    """Whether the call is under ``vmap`` (its model or data batched), not ``jit`` alone."""
    # (JAX keeps its batching tracer's class private; its name has been stable)
    return any(type(leaf).__name__ == "BatchTracer" for leaf in _tracers(p, X, y))


def _count_params(p) -> int:
    """The number of trainable scalars of a parameterized model."""
    return sum(x.size for x in jax.tree_util.tree_leaves(p) if eqx.is_inexact_array(x))


def _tolerances(rtol, atol, dtype) -> tuple:
    """``(rtol, atol)``: the dtype's defaults where ``None``; an rtol the dtype cannot honour
    (below ``10 eps``) is raised to ``10 eps`` with a warning that says so."""
    default_rtol, default_atol = default_tolerances(dtype)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    if not isinstance(rtol, jax.core.Tracer):
        floor = _rtol_floor(dtype)
        if float(np.asarray(rtol)) < floor:
            warnings.warn(
                f"rtol={float(np.asarray(rtol)):.3g} is below what {jnp.dtype(dtype).name} can "
                f"give (eps = {float(jnp.finfo(dtype).eps):.3g}); using rtol={floor:.3g}. Use "
                "float64 data (with jax_enable_x64) for tighter tolerances.",
                RuntimeWarning,
                stacklevel=3,
            )
            rtol = floor
    return rtol, atol
