"""Stiff solvers for large models: ``Kvaerno5`` with a dense or a matrix-free Newton solve.

An ESDIRK step (diffrax's ``Kvaerno5``) solves, for each implicit stage ``i``, the stage equation
``F(f_i) = f_i - f(t_i, y_i^- + a_ii h f_i) = 0`` for the stage derivative ``f_i``, where
``y_i^-`` holds the explicit part of the stage. ``diffrax.VeryChord`` does this with the chord
method: ``J = df/dy`` is linearised once per step (``jax.linearize``, at the first implicit
stage's predictor) and every iteration solves

    (I - a_ii h J) delta = F(f_i),    f_i <- f_i - delta.

For a gradient flow in normalized time, ``f(theta) = -grad log L(theta)`` and the ``theta``
block of ``J`` is ``-H``, ``H`` the Hessian of ``log L``; ``J v`` is one Hessian-vector product
(forward-over-reverse), at about the cost of a few gradients.

How the linear solver meets the operator: ``VeryChord`` passes the linearised operator to
``linear_solver.init`` once per step. ``lineax.LU`` materialises it there (``as_matrix``: ``n``
Jacobian-vector products, an ``n x n`` matrix, an ``O(n^3)`` factorisation) and back-substitutes
in each iteration. ``lineax.GMRES`` keeps the linear function and only ever applies it, so
memory stays ``O(n * restart)`` beside the residuals of ``jax.linearize`` (the activations).
Dense wins on small models, GMRES on large ones; the crossover is ``DENSE_JACOBIAN_MAX_PARAMS``.

The Krylov method is GMRES, not CG: ``I - a_ii h J = I + a_ii h H`` on the ``theta`` block is
symmetric but positive definite only where ``a_ii h lambda_min(H) > -1`` (``H`` is indefinite
away from a minimum), lineax's ``CG`` refuses an operator not tagged positive semidefinite,
and the ``tau`` row of the flow's state (``d tau/ds = exp(-log L - tau)``) makes the full
Jacobian non-symmetric. Inside ``Kvaerno5``, lineax 0.1.1's ``BiCGStab`` returned NaN on the
first solve of every step (even for a diagonal linear ODE), so every step was rejected.

Unpreconditioned, restarted GMRES converges in a few cycles when the stiff part of the spectrum
is a few outlying eigenvalues of ``a_ii h H``, as on the flows measured (a few neurons pinned
at the activation's kink). With many spread-out stiff eigenvalues it stagnates, the step is
rejected, and ``h`` shrinks until the solve converges: the step is then no longer free of the
stability bound.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx

# Largest parameter count for which the stage equations are solved with a dense Jacobian and LU.
# Measured by benchmarks/stiff_crossover.py (SWN ReLU^2 MLP on 32 points, normalized flow from
# log L = -300, Kvaerno5 steps with LU against GMRES, both through ``Chord``; 2-core CPU,
# float64): the per-step times meet at ~490 parameters (480 and 499 in two runs); LU is 0.57-0.73x
# GMRES's time at 385 (log L = -300 and -3000) and 3.5-4.4x at 1153.
DENSE_JACOBIAN_MAX_PARAMS = 400
# GMRES restart length. lineax's GMRES runs whole cycles of this many Arnoldi steps and tests
# convergence between cycles, in the residual and in the last cycle's update, so every solve
# takes at least two cycles (~2 * restart + 3 Jacobian-vector products). On the benchmark's SWN
# flows (385 parameters from log L = -300 to -3000, 3073 from -1000), restart 16 took ~2.1
# cycles per solve and never failed; restart 8 stagnated in 3% of the solves at -1000.
KRYLOV_RESTART = 16
# Forcing term eta of the inexact Newton (chord) iteration: each linear solve reduces the
# residual to eta of the right-hand side (componentwise, plus an absolute floor eta * atol).
KRYLOV_FORCING = 1e-2
# Cycles before GMRES gives up; a failed linear solve fails the stage, so the step is rejected
# and retried with a smaller h, where I - a_ii h J is better conditioned.
KRYLOV_MAX_RESTARTS = 20


class Chord(diffrax.VeryChord):
    """``diffrax.VeryChord`` that iterates until its convergence test passes.

    Iteration ``k`` moves the stage derivative ``f_i`` by ``delta_k``, so the stage value
    ``y_i = y_i^- + a_ii h f_i`` by ``a_ii h delta_k``. With ``d_k`` the size of that move in the
    units of the step's own error control, ``atol + rtol |y_i|`` (``norm``), as in Hairer's
    RADAU5, and the contraction rate ``theta_k = d_k / d_{k-1}``, the
    solve has converged once ``theta_k d_k / (1 - theta_k) < kappa``, or ``d_k`` is at the
    dtype's resolution. It fails once ``theta_k >= 1`` (it no longer contracts) or is not finite,
    or once ``d_k theta_k^(m - k + 1) / (1 - theta_k) >= kappa`` with ``m = max_steps``: at this
    rate it would not converge in the iterations left (Hairer & Wanner, *Solving ODEs II*, IV.8).
    An iteration whose rate is above ``noise_rate`` with ``d_k <= noise_floor`` has converged
    too: the increments are below the tolerance and no longer shrink because ``F`` is evaluated
    no more accurately than that (the rounding of ``y`` times a large Jacobian, as on a
    weight-normalized flow deep in the loss, where ``||J||`` grows like the squared weight
    scale); the step's error estimate then judges the step. Otherwise it takes another
    iteration. A failure rejects the step, which is retried with a
    smaller ``h``. ``stiff_solver`` gives ``Kvaerno5`` the same ``root_find_max_steps``.

    ``diffrax.VeryChord`` (diffrax 0.7.2) reports every solve that has not converged after two
    iterations as diverged, and optimistix ends the iteration on that report: each stage
    equation gets two iterations. On the zoo's stiff flows that rejects half of all implicit
    steps, each rejection followed by a step shrunk by the controller's ``factormin``.

    The linear solver's state may hold the linearised operator itself (a Krylov solver keeps
    ``jax.linearize``'s linear function, whose jaxpr is a pytree leaf): gradients are stopped
    on its array leaves only, where ``diffrax.VeryChord`` stops them on the whole state and
    rejects that leaf ("not a valid JAX type").

    **Arguments:** those of ``diffrax.VeryChord``, and ``max_steps``:

    - `rtol`, `atol`: tolerances of the Newton increments.
    - `norm`: the norm of the scaled increments (default ``optimistix.max_norm``).
    - `kappa`: the convergence tolerance (default ``1e-2``).
    - `linear_solver`: the solver of ``(I - a_ii h J) delta = F(f)``.
    - `max_steps`: the iterations the forecast counts on (default 20; on the zoo's stiff flows
      20 took 15-33% less time than diffrax's 10, and 30 little less than 20).
    - `noise_floor`, `noise_rate`: the noise-floor test above (defaults 1 and 0.5). With
      ``noise_floor=0`` (the test off) Kvaerno5 on an SWN linear classifier's loss-normalized
      flow to log L = -1,000 stalls near -390, 59% of its steps rejected: its stage solves
      reach the rounding floor in one iteration, then bounce with rates above 1 and are
      declared diverged at any step size. With the test on it takes 2,238 steps.
    """

    max_steps: int = 20
    noise_floor: float = 1.0
    noise_rate: float = 0.5

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        fx, aux = fn(y, args)
        jac, linear_state = state.linear_state
        dynamic, static = eqx.partition(linear_state, eqx.is_array)
        linear_state = eqx.combine(lax.stop_gradient(dynamic), static)
        sol = lx.linear_solve(jac, fx, self.linear_solver, state=linear_state, throw=False)
        diff = sol.value
        new_y = jtu.tree_map(lambda a, b: a - b, y, diff)
        new_state = type(state)(
            linear_state=state.linear_state,
            diff=diff,
            diffsize=self._stage_size(diff, new_y, args),
            diffsize_prev=state.diffsize,
            result=optx.RESULTS.promote(sol.result),
            step=state.step + 1,
        )
        return new_y, new_state, aux

    def _stage_size(self, diff, f, args):
        """``|a_ii h delta| / (atol + rtol |y_i|)`` in ``norm``: the move of the stage value
        in the step's tolerance units. ``args`` are diffrax's stage-equation arguments
        ``(stage, a_ii, vf, prod, t_i, y_i^-, args, h)``; on any other root-finding problem
        the move is ``|delta| / (atol + rtol |f|)``, against the iterate itself."""
        if isinstance(args, tuple) and len(args) == 8:
            _, diagonal, _, prod, _, partial, _, control = args
            move = jtu.tree_map(lambda d: diagonal * d, prod(diff, control))
            stage = jtu.tree_map(lambda a, b: a + diagonal * b, partial, prod(f, control))
        else:
            move, stage = diff, f
        with jax.numpy_dtype_promotion("standard"):
            return self.norm(
                jtu.tree_map(lambda m, v: m / (self.atol + self.rtol * jnp.abs(v)), move, stage)
            )

    def terminate(self, fn, y, args, options, state, tags):
        del fn, y, args, options, tags
        at_least_two = state.step >= 2
        rate = state.diffsize / state.diffsize_prev
        resolution = 10 ** (2 - jnp.finfo(state.diffsize.dtype).precision)
        contracting = (rate > 0) & (rate < 1)
        factor = state.diffsize * rate / (1 - rate)  # the error left, estimated
        # An iteration that has stopped contracting with its increment below the tolerance
        # itself has reached the noise floor of F (rounding in y times a large J): it is as
        # converged as it can get, and the step's error estimate judges the result.
        floor = ~(contracting & (rate <= self.noise_rate)) & (state.diffsize <= self.noise_floor)
        converged = (state.diffsize < resolution) | (contracting & (factor < self.kappa)) | floor
        # Hairer's forecast: at this rate the iteration would not converge in the steps left.
        left = jnp.maximum(self.max_steps - state.step, 0)
        slow = contracting & (factor * rate**left >= self.kappa)
        diverged = jnp.invert(jnp.isfinite(rate)) | (rate >= 1) | slow
        done = at_least_two & converged
        failed = at_least_two & jnp.invert(converged) & diverged
        linsolve_fail = state.result != optx.RESULTS.successful
        result = optx.RESULTS.where(
            linsolve_fail,
            state.result,
            optx.RESULTS.where(failed, optx.RESULTS.nonlinear_divergence, optx.RESULTS.successful),
        )
        return linsolve_fail | done | failed, result


def implicit_step_cost(n_params: int, threshold: int | None = None) -> float:
    """The work of one ``stiff_solver(n_params)`` step in ``Tsit5`` steps (the
    ``AutoSwitch.implicit_cost`` of the default solver): ``2 + m / 8 + m^2 / 700`` with
    ``m = min(n_params, threshold)``. A dense Jacobian takes ``n`` Jacobian-vector products and
    an ``n x n`` factorisation, so its step grows like ``n^2`` against a Tsit5 step's ``n``;
    above the threshold GMRES's Jacobian-vector products scale with the model as the explicit
    step does, and the ratio stays at the threshold's. On this 2-core CPU (float64, EWN ReLU^2
    MLPs on 30 points, ``benchmarks/implicit_cost.py``) a Kvaerno5 step took 12.7, 23, 89, 228
    and 307 Tsit5 steps at 31, 57, 181, 353 and 391 parameters, where this estimate says 7.2,
    13.8, 71, 224 and 269: low by up to 1.8x on small models, where ``AutoSwitch`` then stays
    implicit longer, and tries the implicit method again sooner, than their cost would say."""
    limit = DENSE_JACOBIAN_MAX_PARAMS if threshold is None else threshold
    m = min(n_params, limit)
    return 2.0 + m / 8.0 + m * m / 700.0


def krylov_linear_solver(
    atol: float,
    *,
    forcing: float = KRYLOV_FORCING,
    restart: int = KRYLOV_RESTART,
    max_restarts: int = KRYLOV_MAX_RESTARTS,
) -> lx.GMRES:
    """Restarted GMRES on Jacobian-vector products, as the inexact-Newton linear solver.

    Stops when ``|r_k| <= forcing * (atol + |b|)`` and the last cycle's update
    ``|dx_k| <= forcing * (atol + |x|)`` componentwise (``r = b - A x``). The chord iteration
    evaluates the stage residual ``F`` exactly, so an inexact solve slows its convergence (the
    residual contracts by about ``forcing`` per iteration, at best) but does not move its root:
    the Newton tolerance sets the accuracy, and ``forcing`` need not shrink with it.

    **Arguments:**

    - `atol`: the Newton (and step-size controller) absolute tolerance.
    - `forcing`: the forcing term ``eta``, the relative residual of each linear solve.
    - `restart`: Arnoldi steps per GMRES cycle.
    - `max_restarts`: cycles before the solve is declared failed.
    """
    return lx.GMRES(rtol=forcing, atol=forcing * atol, restart=restart, max_steps=max_restarts)


def stiff_solver(
    n_params: int | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    threshold: int | None = None,
) -> diffrax.AbstractSolver:
    """``diffrax.Kvaerno5`` whose stage equations ``(I - a_ii h J) delta = F`` are solved with
    a dense Jacobian and LU for ``n_params <= threshold``, and with GMRES on Jacobian-vector
    products (``krylov_linear_solver``, never forming ``J``) above it.

    **Arguments:**

    - `n_params`: the number of parameters (the ODE state's size, less ``tau``; ``None``:
      dense).
    - `rtol`, `atol`: tolerances of the chord iteration (``Chord``). ``None`` (the
      default): the step-size controller's, filled in by ``diffeqsolve``, so a new tolerance
      does not recompile; GMRES's absolute floor is then ``KRYLOV_FORCING * 1e-10``.
    - `threshold`: the largest ``n_params`` solved densely (default
      ``DENSE_JACOBIAN_MAX_PARAMS``).

    **Returns:** a ``diffrax.Kvaerno5``.
    """
    limit = DENSE_JACOBIAN_MAX_PARAMS if threshold is None else threshold
    dense = n_params is None or n_params <= limit
    linear_solver = (
        lx.AutoLinearSolver(well_posed=None)
        if dense  # diffrax's own choice: LU
        else krylov_linear_solver(1e-10 if atol is None else atol)
    )
    if rtol is None and atol is None:
        root_finder = diffrax.with_stepsize_controller_tols(Chord)(linear_solver=linear_solver)
    else:
        root_finder = Chord(rtol=rtol, atol=atol, linear_solver=linear_solver)
    return diffrax.Kvaerno5(root_finder=root_finder, root_find_max_steps=root_finder.max_steps)
