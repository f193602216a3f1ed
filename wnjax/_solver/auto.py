"""A stiffness-switching solver: an explicit Runge-Kutta pair that hands over to an L-stable
implicit one while the flow is stiff, and back once it is not.

After each step ``h rho`` estimates ``h`` times the modulus of the dominant eigenvalue of the
Jacobian, by power iteration carried across steps: ``rho = ||J v||``, ``v <- J v / rho``, one
Jacobian-vector product of the vector field per measurement (forward-mode autodiff). A forward
difference ``(f(y + delta v) - f(y)) / delta`` in its place saturates where ``delta`` exceeds
the field's scale of nonlinearity (a weight-normalized classifier deep in the loss, whose stiff
mode, of size ``||w||^2``, varies over a distance ``~1/||w||``: there it read ``rho`` up to
``10^7`` times too small); on a depth-3 ReLU^3 net under the loss clock it swung between
``~10`` and ``~4e5`` from one step to the next, so the switch never saw the flow as stiff and
its explicit steps ran out of 100,000 steps where Kvaerno5 needs 3,400. It starts from Hairer's
direction (Hairer & Wanner, *Solving ODEs II*, IV.2): the last two stages ``Y_{s-1}``, ``Y_s``
of a step sit at the same time, and ``||k_s - k_{s-1}|| / ||Y_s - Y_{s-1}||`` (``k_i = h f(Y_i)``)
is the free estimate along ``Y_s - Y_{s-1}``. That free estimate alone is too noisy to act on
where the stiff modes are already damped (it sees mostly the slow ones), so it only seeds ``v``.
An explicit step is stability-limited when ``h rho`` sits at the method's stability boundary
``B`` on the negative real axis (3.51 for Tsit5, 5.17 for Dopri8). Far below it, explicit steps
measure ``rho`` only every few steps and take ``h`` times the last measurement in between. As
OrdinaryDiffEq.jl's ``AutoSwitch`` does, the switch waits for the test to persist over several
accepted steps (hysteresis), so one odd step does not flip the method.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from diffrax import AbstractLocalInterpolation
from diffrax._root_finder import use_stepsize_tol

from wnjax._runtime.errors import InvalidInput
from wnjax._runtime.tree import all_finite, tree_norm
from wnjax._solver.stiff import stiff_solver


def _stage_matrix(tableau) -> np.ndarray:
    """The full Butcher matrix ``A`` (lower triangle plus diagonal) of a diffrax tableau."""
    s = len(tableau.b_sol)
    a = np.zeros((s, s))
    for i, row in enumerate(tableau.a_lower):
        a[i + 1, : i + 1] = row
    if tableau.a_diagonal is not None:
        a += np.diag(tableau.a_diagonal)
    return a


def stability_boundary(solver: diffrax.AbstractSolver) -> float:
    """``B = sup{r : |R(-x)| <= 1 for all x in [0, r]}``, the stability function
    ``R(z) = 1 + z b^T (I - z A)^-1 1`` of a Runge-Kutta solver on the negative real axis
    (``inf`` for an A-stable method)."""
    tab = solver.tableau
    a, b = _stage_matrix(tab), np.asarray(tab.b_sol, float)
    one, eye = np.ones(len(b)), np.eye(len(b))
    xs = np.linspace(0.0, 60.0, 60_001)[1:]
    for x in xs:
        if abs(1.0 - x * b @ np.linalg.solve(eye + x * a, one)) > 1.0 + 1e-12:
            return float(x)
    return float("inf")


def _stage_difference(solver) -> np.ndarray:
    """Coefficients ``d`` with ``Y_s - Y_{s-1} = sum_m d_m k_m`` for the last two stages."""
    a = _stage_matrix(solver.tableau)
    return a[-1] - a[-2]


def stiffness_estimate(solver, k) -> jax.Array:
    """``h rho`` of one step of a diffrax Runge-Kutta ``solver`` from its stage increments ``k``
    (the ``k`` of its dense output: a pytree of ``(stages, ...)`` arrays, ``k_i = h f(Y_i)``)."""
    return _stage_estimate(solver, k)[0]


def _stage_estimate(solver, k):
    """``(h rho, Y_s - Y_{s-1})`` from the last two stages of a Runge-Kutta step."""
    d = _stage_difference(solver)
    dk = jax.tree_util.tree_map(lambda x: x[-1] - x[-2], k)
    dy = jax.tree_util.tree_map(lambda x: jnp.tensordot(jnp.asarray(d, x.dtype), x, 1), k)
    num, den = tree_norm(dk), tree_norm(dy)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0), dy


def _power_estimate(method, terms, t0, t1, y1, args, k, direction):
    """``(h rho, v)``: one step of power iteration on the Jacobian at ``y1``, ``rho = ||J v||``,
    ``v <- J v / rho``, with ``J v`` a Jacobian-vector product (forward-mode autodiff of the
    vector field). ``v`` starts from the stage difference ``Y_s - Y_{s-1}`` and carries over
    between steps; where ``J v = 0`` (``v`` along components the field does not depend on, as a
    clock integrated alongside) the next step starts from the stage difference again."""
    _, dy = _stage_estimate(method, k)
    fresh = _unit(dy, jax.tree_util.tree_map(jnp.ones_like, y1))
    v = _unit(direction, fresh)
    _, jv = jax.jvp(lambda y: terms.vf(t1, y, args), (y1,), (v,))
    return jnp.abs(t1 - t0) * tree_norm(jv), _unit(jv, fresh)


def _unit(tree, fallback):
    """``tree / ||tree||``, or ``fallback / ||fallback||`` where ``tree`` is zero."""
    n = tree_norm(tree)
    m = tree_norm(fallback)
    return jax.tree_util.tree_map(
        lambda a, b: jnp.where(n > 0, a / jnp.where(n > 0, n, 1.0), b / jnp.where(m > 0, m, 1.0)),
        tree,
        fallback,
    )


# The local error reported for a step whose result overflowed, relative to ``1 + |y0|``.
_OVERFLOW_ERROR = 1e10


def _guard(y0, y1, err):
    """A step that overflowed (an explicit step far past its stability boundary, as right after
    the switch back from the implicit method) returns ``y0`` and a large finite error, so the
    step-size controller rejects it and shrinks ``h`` by its ``factormin``; a non-finite error
    would make the next ``h`` NaN and stall the solve."""
    finite = all_finite((y1, err))
    y1 = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, b, a), y0, y1)
    err = jax.tree_util.tree_map(
        lambda e, y: jnp.where(finite, e, _OVERFLOW_ERROR * (1 + jnp.abs(y))), err, y0
    )
    return y1, err


class _SwitchInterpolation(AbstractLocalInterpolation):
    """Dense output of one ``AutoSwitch`` step: that of the method which took it."""

    t0: Any
    t1: Any
    explicit: AbstractLocalInterpolation
    implicit: AbstractLocalInterpolation
    stiff: Any

    def __init__(self, *, t0, t1, explicit, implicit, stiff, explicit_cls, implicit_cls):
        self.t0 = t0
        self.t1 = t1
        self.explicit = explicit_cls(t0=t0, t1=t1, **explicit)
        self.implicit = implicit_cls(t0=t0, t1=t1, **implicit)
        self.stiff = stiff

    def evaluate(self, t0, t1=None, left: bool = True):
        a = self.explicit.evaluate(t0, t1, left)
        b = self.implicit.evaluate(t0, t1, left)
        return jax.tree_util.tree_map(lambda x, y: jnp.where(self.stiff, y, x), a, b)


# What a phase's steps change, after the power iteration's direction, in ``PhaseState.live``;
# ``run`` is held at ``AutoSwitch._run_cap`` at most, and the phase's accepted steps are
# ``steps_hi * _BASE + steps_lo`` (exact in float32 up to 2^24 * _BASE).
_LIVE = ("h_rho", "rho", "count", "since", "run", "backoff", "steps_hi", "steps_lo", "switched")
_BASE = 4096


def _spec(tree) -> tuple:
    """``(treedef, shapes, dtypes)`` of a pytree of arrays (no batch axes)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return (
        treedef,
        tuple(jnp.shape(x) for x in leaves),
        tuple(jnp.result_type(x) for x in leaves),
    )


def _packable(spec) -> bool:
    return all(jnp.issubdtype(d, jnp.floating) or d == jnp.bool_ for d in spec[2])


def _size(spec) -> int:
    return sum(math.prod(shape) for shape in spec[1])


def _flatten(tree, real) -> list:
    return [jnp.ravel(jnp.asarray(x)).astype(real) for x in jax.tree_util.tree_leaves(tree)]


def _unflatten(vector, spec):
    """The pytree ``spec`` describes from the last axis of ``vector`` (any leading axes)."""
    treedef, shapes, dtypes = spec
    batch, leaves, at = vector.shape[:-1], [], 0
    for shape, dtype in zip(shapes, dtypes):
        size = math.prod(shape)
        x = jnp.reshape(vector[..., at : at + size], batch + shape)
        leaves.append(x != 0 if dtype == jnp.bool_ else x.astype(dtype))
        at += size
    return jax.tree_util.tree_unflatten(treedef, leaves)


class PhaseState(eqx.Module):
    """The solver state of a solve of one ``AutoSwitch`` phase, read by name as the switching
    solver's state is (``state["switches"]``). The run's state where the phase began
    (``start``, as ``AutoSwitch.init`` makes it) stays unchanged through the solve; what the
    phase's steps change is one real array ``live``: the power iteration's direction, then
    ``h_rho``, ``rho``, the vote count, the steps since the last measurement, the steps since
    the last switch (held at ``AutoSwitch._run_cap``), the back-off, the phase's accepted steps and
    whether its last step switched, then the phase method's own state (``method`` holds it
    instead when it has other than real or boolean arrays).

    One array because diffrax selects each array of a solver's state when a step is accepted,
    and XLA:CPU hands part of a loop body to another thread whenever more than eight of its
    operations are ready besides the one it runs: on a small model each hand-off costs more than
    the step's arithmetic, and a Dopri5 step on its own already has eight ready there."""

    live: Any
    start: dict
    method: Any
    phase: str = eqx.field(static=True)
    layout: Any = eqx.field(static=True)  # (direction spec, method spec or None)

    def _at(self, name: str) -> int:
        return _size(self.layout[0]) + _LIVE.index(name)

    def _live(self, name: str):
        return self.live[..., self._at(name)]

    def method_state(self):
        """The phase method's own state."""
        spec = self.layout[1]
        if spec is None:
            return self.method
        at = _size(self.layout[0]) + len(_LIVE)
        return _unflatten(self.live[..., at : at + _size(spec)], spec)

    def __getitem__(self, name: str):
        stiff_phase = self.phase == "implicit"
        switched = self._live("switched") != 0
        int_type = jnp.asarray(self.start["switches"]).dtype
        if name in ("explicit", "implicit"):
            mine = (name == "implicit") == stiff_phase
            return self.method_state() if mine else self.start[name]
        if name == "direction":
            return _unflatten(self.live[..., : _size(self.layout[0])], self.layout[0])
        if name == "stiff":
            return switched != stiff_phase
        if name == "fresh":
            return switched
        if name in ("h_rho", "rho"):
            return self._live(name)
        if name in ("count", "since", "run", "backoff"):
            return self._live(name).astype(int_type)
        if name == "switches":
            return self.start["switches"] + switched.astype(int_type)
        if name in ("explicit_steps", "stiff_steps"):
            hi, lo = self._live("steps_hi"), self._live("steps_lo")
            steps = hi.astype(int_type) * _BASE + lo.astype(int_type)
            mine = (name == "stiff_steps") == stiff_phase
            return self.start[name] + (steps if mine else 0)
        raise KeyError(f"AutoSwitch's state has no {name!r}; it has {tuple(self.start)}.")

    def __contains__(self, name) -> bool:
        return name in self.start

    def keys(self):
        return self.start.keys()

    def unpack(self) -> dict:
        """The state by name, as ``AutoSwitch.init`` (no phase) makes it."""
        return {k: self[k] for k in self.start}


class AutoSwitch(diffrax.AbstractAdaptiveSolver, diffrax.AbstractImplicitSolver):
    """Explicit while the flow is not stiff, implicit while it is.

    After each accepted step the stiffness estimate ``h rho`` (module docstring) is compared with
    the explicit method's stability boundary ``B``. In explicit mode a step with
    ``h rho > stiff_tol B`` votes for the implicit method (an explicit run held by stability
    has its accepted steps anywhere in ``0.4-1.1 B``, median ``0.7 B`` on a depth-3 ReLU^3 net,
    as the step-size controller hunts for the boundary; an accuracy-limited one typically has
    ``h rho`` near ``0.1 B``). In implicit mode a step with
    ``h rho < nonstiff_tol c B`` votes for the explicit one, ``c = implicit_cost``: the explicit
    method, held to ``h <= B / rho``, would then cover the same time for less work. Votes add
    one to a count and other steps take one away; the method switches when the count reaches
    ``stiff_after`` (resp. ``nonstiff_after``). After a switch back to the explicit method the
    votes cannot switch again before the explicit method has taken ``stiff_after 2^backoff``
    steps, and each switch back at least doubles that wait (up to ``2^max_backoff`` times), so
    a flow on which the implicit steps barely pay (stiff, but with kinks that hold every method
    to small steps) stays explicit instead of ping-ponging; an implicit stretch of
    ``profitable_steps`` steps resets it. A shorter stretch, of ``k`` steps, cost about ``c k``
    explicit steps: the wait is at least that, as in the ski-rental problem, so trials of the
    implicit method that do not pay cost no more than the explicit steps between them (on an
    EWN 13-12-1 ReLU^2 net, 181 parameters, normalized flow to log L = -300, a back-off that
    only doubles makes five trials of five implicit steps, 2.5x the time of Dopri5 alone; the
    wait makes one, 1.5x). A wait counts steps, not votes: an explicit run whose estimates
    straddle ``stiff_tol B`` still switches when it ends. Each method keeps its own state; the
    one switched to starts afresh.

    **Arguments:**
    - `explicit`: an explicit diffrax Runge-Kutta solver (default ``Tsit5``).
    - `implicit`: an implicit diffrax Runge-Kutta solver (default ``stiff_solver()``: L-stable
      ``Kvaerno5`` with a dense Newton solve).
    - `stiff_after`, `stiff_tol`: the switch to the implicit method (defaults 10 and 0.6).
    - `nonstiff_after`, `nonstiff_tol`: the switch back (defaults 5 and 0.5).
    - `implicit_cost`: the work of one implicit step in explicit steps (default 4;
      ``wnjax.default_solver`` sets it from the model's size).
    - `max_backoff`, `profitable_steps`: the back-off of the switch to the implicit method
      (defaults 6 and 64).
    - `start_stiff`: take the first step with the implicit method.
    - `check_every`, `check_tol`: in explicit mode, a step whose ``h`` times the last measured
      ``rho`` is below ``check_tol B`` takes that product as its estimate and skips the power
      iteration's Jacobian-vector product, unless ``check_every`` steps have passed since the last
      measurement (defaults 8 and 0.25). Such a step dissents, as a measured one would. Every
      implicit step, and the first step of each method, measures.
    - `phase`: ``None`` (the default: the step runs either method, a branch on ``stiff``), or
      ``'explicit'`` / ``'implicit'``: run that method alone, with no branch on the method, and
      end the solve on the step that switches (diffrax's result ``internal_error``; the final
      solver state's ``stiff`` then names the other method). A ``diffeqsolve`` with the other
      phase (``phase_solver``) and ``solver_state=other.resume(state, terms, t0, t1, y0,
      args)`` goes on from there. A phase compiles to a smaller program than the switching
      solve (a run that switches compiles both), and keeps what its steps change in one array
      (on XLA:CPU a step with more arrays to carry hands work between threads);
      ``wnjax.gradient_flow`` runs its solves that way.

    The solver state (``diffeqsolve(..., saveat=SaveAt(solver_state=True))``), read by name
    (``state["switches"]``), carries ``stiff`` (the method of the next step), ``stiff_steps``
    and ``explicit_steps`` (accepted steps by each), ``switches``, ``backoff``, ``h_rho`` (the
    last estimate), ``rho`` (the last measured spectral radius) and ``since`` (steps since that
    measurement).
    """

    explicit: diffrax.AbstractSolver = diffrax.Tsit5()
    implicit: diffrax.AbstractSolver = stiff_solver()
    stiff_after: int = 10
    stiff_tol: float = 0.6
    nonstiff_after: int = 5
    nonstiff_tol: float = 0.5
    implicit_cost: float = 4.0
    max_backoff: int = 6
    profitable_steps: int = 64
    start_stiff: bool = False
    check_every: int = 8
    check_tol: float = 0.25
    phase: str | None = None

    term_structure: ClassVar = diffrax.AbstractTerm

    def __check_init__(self):
        for name, method in (("explicit", self.explicit), ("implicit", self.implicit)):
            if not isinstance(method, diffrax.AbstractRungeKutta):
                raise InvalidInput(
                    f"AutoSwitch's {name} method must be a diffrax Runge-Kutta solver "
                    f"(e.g. Tsit5, Dopri8 / Kvaerno5), got {type(method).__name__}."
                )
        if isinstance(self.explicit, diffrax.AbstractImplicitSolver):
            raise InvalidInput(
                "AutoSwitch's explicit method must be explicit (Tsit5, Dopri5, ...)."
            )
        if not isinstance(self.implicit, diffrax.AbstractImplicitSolver):
            raise InvalidInput("AutoSwitch's implicit method must be implicit (Kvaerno5, ...).")
        if self.phase not in (None, "explicit", "implicit"):
            raise InvalidInput(
                f"AutoSwitch's phase must be None, 'explicit' or 'implicit', got {self.phase!r}."
            )

    # diffrax fills the implicit method's root-finder tolerances from the step-size controller.
    @property
    def root_finder(self):
        return self.implicit.root_finder

    @property
    def root_find_max_steps(self):
        return self.implicit.root_find_max_steps

    @property
    def _run_cap(self) -> int:
        """The most ``run`` counts: past the longest wait and a paying implicit stretch."""
        return max(self.profitable_steps, self.stiff_after * 2**self.max_backoff)

    @property
    def boundary(self) -> float:
        """The explicit method's stability boundary ``B`` on the negative real axis."""
        return _boundary(type(self.explicit))

    def phase_solver(self, stiff: bool) -> AutoSwitch:
        """This solver in the phase of one method: ``'implicit'`` if ``stiff`` else
        ``'explicit'`` (see ``phase``). Its state is the switching solver's."""
        return dataclasses.replace(self, phase="implicit" if stiff else "explicit")

    @property
    def interpolation_cls(self):  # pyright: ignore
        if self.phase is not None:
            return getattr(self, self.phase).interpolation_cls
        return functools.partial(
            _SwitchInterpolation,
            explicit_cls=self.explicit.interpolation_cls,
            implicit_cls=self.implicit.interpolation_cls,
        )

    def order(self, terms):
        return self.explicit.order(terms)

    def error_order(self, terms):
        return self.explicit.error_order(terms)

    def func(self, terms, t0, y0, args):
        return self.explicit.func(terms, t0, y0, args)

    def init(self, terms, t0, t1, y0, args):
        state = self._switching_init(terms, t0, t1, y0, args)
        if self.phase is None:
            return state
        return self.resume(state, terms, t0, t1, y0, args)

    def _switching_init(self, terms, t0, t1, y0, args):
        # Strongly typed, as the counts a phase's solve hands over are: a weakly typed start
        # would make the next solve of the same phase a program of its own.
        zero = jnp.asarray(0, int)
        return {
            "explicit": self.explicit.init(terms, t0, t1, y0, args),
            "implicit": self.implicit.init(terms, t0, t1, y0, args),
            "stiff": jnp.asarray(self.start_stiff),
            "fresh": jnp.asarray(False),
            "count": zero,
            "backoff": zero,
            "run": zero,
            "switches": zero,
            "stiff_steps": zero,
            "explicit_steps": zero,
            "h_rho": jnp.zeros((), jnp.result_type(*jax.tree_util.tree_leaves(y0), float)),
            "rho": jnp.zeros((), jnp.result_type(*jax.tree_util.tree_leaves(y0), float)),
            "since": jnp.asarray(self.check_every, zero.dtype),  # measure on the first step
            "direction": jax.tree_util.tree_map(jnp.zeros_like, y0),
        }

    def resume(self, state, terms, t0, t1, y0, args) -> PhaseState:
        """The ``PhaseState`` a ``diffeqsolve`` of this phase starts from, going on at
        ``(t0, y0)`` from ``state``: the final solver state of a solve of the other phase (or
        of this one), or a switching solver's state. This phase's method starts afresh there,
        and its first step measures ``rho``."""
        full = state.unpack() if isinstance(state, PhaseState) else dict(state)
        full["fresh"] = jnp.zeros_like(full["fresh"])
        full["stiff"] = jnp.full_like(full["stiff"], self.phase == "implicit")
        real = jnp.result_type(full["rho"])
        values = {
            "h_rho": full["h_rho"],
            "rho": full["rho"],
            "count": full["count"],
            "since": self.check_every,  # measure on the first step
            "run": jnp.minimum(full["run"], self._run_cap),
            "backoff": full["backoff"],
            "steps_hi": 0,
            "steps_lo": 0,
            "switched": 0,
        }
        method = getattr(self, self.phase).init(terms, t0, t1, y0, args)
        direction = full["direction"]
        method_spec = _spec(method)
        packed = _packable(method_spec)
        live = _flatten(direction, real) + [jnp.asarray(values[k], real)[None] for k in _LIVE]
        if packed:
            live += _flatten(method, real)
        return PhaseState(
            live=jnp.concatenate(live),
            start=full,
            method=None if packed else method,
            phase=self.phase,
            layout=(_spec(direction), method_spec if packed else None),
        )

    def _phase_step(self, terms, t0, t1, y0, args, state: PhaseState, made_jump):
        """A step of one method alone (``phase``), with the switch's test; the switching step
        ends the solve (diffrax's ``internal_error``). What follows the method's step (the
        estimate and the count) runs inside one branch on whether this step measures ``rho``."""
        method = getattr(self, self.phase)
        stiff = self.phase == "implicit"
        y1, err, dense, new, result = method.step(
            terms, t0, t1, y0, args, state.method_state(), made_jump
        )
        live = state.live
        real = live.dtype
        n = _size(state.layout[0])
        h = jnp.abs(t1 - t0)

        def update(measure: bool):
            def branch(_):
                v = {k: live[n + i] for i, k in enumerate(_LIVE)}
                old_direction = _unflatten(live[:n], state.layout[0])
                if measure:
                    h_rho, direction = _power_estimate(
                        method, terms, t0, t1, y1, args, dense["k"], old_direction
                    )
                else:
                    h_rho, direction = h * v["rho"], old_direction
                h_rho = jnp.asarray(h_rho, real)
                measured = jnp.asarray(measure)
                rho = jnp.where(measured & (h > 0), h_rho / jnp.where(h > 0, h, 1), v["rho"])
                count, switch, streak, backoff = self._vote(
                    jnp.asarray(stiff), h_rho, v["count"], v["backoff"], v["run"]
                )
                carry = v["steps_lo"] + 1 >= _BASE
                values = {
                    "h_rho": h_rho,
                    "rho": rho,
                    "count": count,
                    "since": jnp.where(measured, 0, v["since"] + 1),
                    "run": streak,
                    "backoff": backoff,
                    "steps_hi": v["steps_hi"] + carry,
                    "steps_lo": jnp.where(carry, 0, v["steps_lo"] + 1),
                    "switched": switch,
                }
                out = _flatten(direction, real) + [
                    jnp.asarray(values[k], real)[None] for k in _LIVE
                ]
                return jnp.concatenate(out), switch

            return branch

        if stiff:
            head, switch = update(True)(None)
        else:
            predicted = h * live[n + _LIVE.index("rho")]
            measured = self._measures(predicted, live[n + _LIVE.index("since")])
            head, switch = jax.lax.cond(measured, update(True), update(False), None)
        if state.layout[1] is None:
            new_state = dataclasses.replace(state, live=head, method=new)
        else:
            new_state = dataclasses.replace(
                state, live=jnp.concatenate([head] + _flatten(new, real))
            )
        y1, err = _guard(y0, y1, err)
        result = diffrax.RESULTS.where(switch, diffrax.RESULTS.internal_error, result)
        return y1, err, dense, new_state, result

    def _measures(self, predicted, since):
        """Whether an explicit step measures ``rho``: far below the boundary, ``h`` times the
        last measured ``rho`` (``predicted``) stands in for a measurement, checked every
        ``check_every`` steps."""
        return (predicted >= self.check_tol * self.boundary) | (since + 1 >= self.check_every)

    def _vote(self, stiff, h_rho, count, backoff, run):
        """``(count, switch, run, backoff)`` after a step of the method ``stiff`` names, whose
        estimate is ``h_rho``. In explicit mode a step at the stability boundary votes for the
        implicit method; in implicit mode, a step the explicit method could cover for less
        work votes for the explicit one. A leaky count: a vote adds one, a dissent takes one
        away, so a noisy estimate (low precision, a kink in the activation) still switches when
        most steps agree. ``run`` (steps since the last switch) is held at ``_run_cap``;
        ``backoff`` sets the wait after a switch back (class docstring)."""
        bound = self.boundary
        vote = jnp.where(
            stiff,
            h_rho < self.nonstiff_tol * self.implicit_cost * bound,
            h_rho > self.stiff_tol * bound,
        )
        count = jnp.where(vote, count + 1, jnp.maximum(count - 1, 0))
        stint = jnp.minimum(run + 1, self._run_cap)
        wait = jnp.where(backoff > 0, self.stiff_after * 2.0**backoff, 0.0)
        switch = jnp.where(
            stiff, count >= self.nonstiff_after, (count >= self.stiff_after) & (stint >= wait)
        )
        # An implicit stretch that hands back before it paid (fewer than profitable_steps steps)
        # cost about implicit_cost explicit steps a step: the explicit method then waits for at
        # least as many steps (up to the cap of the back-off).
        paid = jnp.ceil(jnp.log2(jnp.maximum(self.implicit_cost * stint / self.stiff_after, 1.0)))
        unpaid = stint < self.profitable_steps
        after = jnp.where(unpaid, jnp.maximum(backoff + 1, paid), backoff + 1)
        backoff = jnp.where(
            stiff & switch,
            jnp.minimum(after, self.max_backoff).astype(jnp.result_type(backoff)),
            jnp.where(stiff & (stint >= self.profitable_steps), 0, backoff),
        )
        return jnp.where(switch, 0, count), switch, jnp.where(switch, 0, stint), backoff

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        return _switch_step(self, terms, t0, t1, y0, args, solver_state, made_jump)

    def _step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        if self.phase is not None:
            return self._phase_step(terms, t0, t1, y0, args, solver_state, made_jump)
        st = solver_state
        methods = {"explicit": self.explicit, "implicit": self.implicit}

        def zero_dense(name):
            # A Runge-Kutta step's dense output: y0, y1 and the stage increments k.
            stages = len(methods[name].tableau.b_sol)
            k = jax.tree_util.tree_map(lambda x: jnp.zeros((stages, *x.shape), x.dtype), y0)
            return {"y0": y0, "y1": y0, "k": k}

        def run(name):
            other = "implicit" if name == "explicit" else "explicit"

            def branch(_):
                method = methods[name]
                fresh_state = method.init(terms, t0, t1, y0, args)
                state = jax.tree_util.tree_map(
                    lambda a, b: jnp.where(st["fresh"], a, b), fresh_state, st[name]
                )
                y1, err, dense, new, result = method.step(
                    terms, t0, t1, y0, args, state, made_jump | st["fresh"]
                )

                def measure(_):
                    return _power_estimate(
                        method, terms, t0, t1, y1, args, dense["k"], st["direction"]
                    )

                if name == "implicit":
                    h_rho, direction = measure(None)
                    measured = jnp.asarray(True)
                else:
                    predicted = jnp.abs(t1 - t0) * st["rho"]
                    measured = st["fresh"] | self._measures(predicted, st["since"])
                    h_rho, direction = jax.lax.cond(
                        measured,
                        measure,
                        lambda _: (predicted.astype(st["h_rho"].dtype), st["direction"]),
                        None,
                    )
                dense_pair = {name: dense, other: zero_dense(other)}
                states = {name: new, other: st[other]}
                h_rho = jnp.asarray(h_rho, st["h_rho"].dtype)
                return y1, err, dense_pair, states, result, h_rho, direction, measured

            return branch

        stiff = st["stiff"]
        y1, err, dense, states, result, h_rho, direction, measured = jax.lax.cond(
            stiff, run("implicit"), run("explicit"), None
        )
        h = jnp.abs(t1 - t0)
        rho = jnp.where(measured & (h > 0), h_rho / jnp.where(h > 0, h, 1), st["rho"])
        y1, err = _guard(y0, y1, err)
        count, switch, streak, backoff = self._vote(
            stiff, h_rho, st["count"], st["backoff"], st["run"]
        )
        one = st["switches"].dtype
        new_state = {
            **states,
            "stiff": stiff ^ switch,
            "fresh": switch,
            "count": count.astype(one),
            "backoff": backoff.astype(one),
            "run": streak.astype(one),
            "switches": st["switches"] + switch.astype(one),
            "stiff_steps": st["stiff_steps"] + stiff.astype(one),
            "explicit_steps": st["explicit_steps"] + (~stiff).astype(one),
            "h_rho": h_rho,
            "rho": rho.astype(st["rho"].dtype),
            "since": jnp.where(measured, 0, st["since"] + 1).astype(one),
            "direction": direction,
        }
        dense_info = {**dense, "stiff": stiff}
        return y1, err, dense_info, new_state, result


@eqx.filter_jit
def _switch_step(solver, terms, t0, t1, y0, args, solver_state, made_jump):
    """``AutoSwitch._step`` under its own jit: diffrax traces a solver's step three times in one
    solve (its shapes, the loop body, the saves), and the later traces reuse the first one's
    jaxpr (XLA inlines the call, so the compiled step is unchanged)."""
    return solver._step(terms, t0, t1, y0, args, solver_state, made_jump)


@functools.cache
def _boundary(cls) -> float:
    return stability_boundary(cls())


def is_default_tolerance(root_finder) -> bool:
    """Whether a root finder takes its tolerances from the step-size controller."""
    return getattr(root_finder, "rtol", None) is use_stepsize_tol
