"""Diagonal linear nets: the ``l_{2/L}`` max margin (classification) and ``Q_alpha`` (regression).

- ``diagonal-L2-class``, ``diagonal-L3-class`` (Gunasekar et al., NeurIPS 2018, "Implicit bias of
  gradient descent on linear convolutional networks"): ``beta = u^L - v^L``, exponential loss on
  separable data. The direction of ``beta`` tends to a KKT point of
  ``min ||beta||_{2/L} s.t. y_i <beta, x_i> >= 1``; for ``L = 2`` the problem is convex and its
  solution is the ``l1`` max-margin direction, an LP (``l1_max_margin``). For ``L = 3`` it is not
  convex; the KKT point the flow approaches is found by a local solve started from the flow's
  point (``lq_kkt_point``), whose answer is certified by its KKT conditions (``lq_kkt_residual``).
- ``diagonal-square-l1`` (Woodworth et al., COLT 2020, "Kernel and rich regimes in
  overparametrized models"): ``x = u^2 - v^2`` from ``u = v = alpha``, square loss on an
  underdetermined ``A x = y``. The flow keeps ``x(t) = 2 alpha^2 sinh(A^T mu(t))``, so its limit is
  the interpolator of that form, the minimizer of
  ``Q_alpha(x) = alpha^2 sum_i q(x_i/alpha^2)``, ``q(z) = 2 - sqrt(4 + z^2) + z arcsinh(z/2)``,
  s.t. ``A x = y`` (``q_alpha_minimizer``); ``alpha -> 0`` gives the ``l1`` interpolator
  (``l1_interpolator``), ``alpha -> inf`` the minimum-``l2`` one.

The references are numpy/scipy computations that share no code with the flow.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.optimize

from wnjax._runtime.errors import InvalidInput
from wnjax.diagonal._nets import diagonal_net, diagonal_signal
from wnjax.problems._base import Problem, register

# How far the flow runs: log L at the end (classification, both sizes) and the final residual
# (regression).
CLASS_TARGET = -1e4
RESIDUAL = 1e-10


# --------------------------------------------------------------------------------------------
# Shared helpers (also used by the convolutional problems).


def direction_distance(a, b) -> float:
    """``|| a/||a|| - b/||b|| ||``: the distance of two directions (``sqrt(2 (1 - cos))``)."""
    a, b = np.ravel(np.asarray(a, float)), np.ravel(np.asarray(b, float))
    return float(np.linalg.norm(a / np.linalg.norm(a) - b / np.linalg.norm(b)))


def separable_data(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` Gaussian points in ``R^d`` labelled by a Gaussian teacher: ``y_i = sign(<w, x_i>)``."""
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d)
    y = np.sign(X @ w)
    y[y == 0] = 1.0
    return X, y


def hard_margin_svm(X, y) -> np.ndarray:
    """``argmin ||w||^2 s.t. y_i <w, x_i> >= 1`` by scipy SLSQP, certified by its multipliers
    (``w = Z^T lambda`` to ``1e-6``, ``lambda >= 0``, margins ``>= 1``).

    It picks instances on which the theorem's prediction is far from the ``l2`` one.
    """
    Z = np.asarray(y, float)[:, None] * np.asarray(X, float)
    w0 = np.linalg.lstsq(Z, np.ones(len(Z)), rcond=None)[0]
    res = scipy.optimize.minimize(
        lambda w: w @ w,
        w0,
        jac=lambda w: 2 * w,
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda w: Z @ w - 1, "jac": lambda w: Z}],
        options={"ftol": 1e-13, "maxiter": 2000},
    )
    w, lam = res.x, res.multipliers
    stationarity = np.linalg.norm(2 * w - Z.T @ lam) / np.linalg.norm(2 * w)
    if not (
        stationarity <= 1e-6 and np.min(lam) >= -1e-9 * np.max(lam) and np.min(Z @ w) >= 1 - 1e-9
    ):
        raise InvalidInput(
            f"SLSQP stopped off the SVM ({res.message}): stationarity {stationarity:.2e}."
        )
    return w


# --------------------------------------------------------------------------------------------
# Classification references.


@dataclasses.dataclass(frozen=True)
class LinearProgramSolution:
    """An LP optimum: `x` the solution, `value` the optimal objective, `duals` the multipliers of
    the inequality constraints (``>= 0``), `slack` the margins minus 1 at ``x``."""

    x: np.ndarray
    value: float
    duals: np.ndarray
    slack: np.ndarray


def l1_max_margin(X, y) -> LinearProgramSolution:
    """``argmin ||beta||_1 s.t. y_i <beta, x_i> >= 1``, as the LP ``min 1^T (p + m)`` s.t.
    ``Z (p - m) >= 1``, ``p, m >= 0``, ``Z = diag(y) X`` (scipy ``linprog``, HiGHS).

    **Returns:** a ``LinearProgramSolution`` whose `duals` are the multipliers ``lambda >= 0`` of
    the margin constraints: at the optimum ``Z^T lambda`` is a subgradient of ``||.||_1``.
    """
    Z = np.asarray(y, float)[:, None] * np.asarray(X, float)
    n, d = Z.shape
    res = scipy.optimize.linprog(
        np.ones(2 * d),
        A_ub=-np.hstack([Z, -Z]),
        b_ub=-np.ones(n),
        bounds=[(0, None)] * (2 * d),
        method="highs",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    if res.status != 0:
        raise ValueError(f"the l1 max-margin LP failed: {res.message}")
    beta = res.x[:d] - res.x[d:]
    return LinearProgramSolution(
        x=beta, value=float(res.fun), duals=-np.asarray(res.ineqlin.marginals), slack=Z @ beta - 1
    )


def _signed_power(w, p):
    return np.sign(w) * np.abs(w) ** p


def lq_kkt_point(X, y, beta0, depth: int) -> np.ndarray:
    """A KKT point of ``min ||beta||_{2/L}^{2/L} s.t. y_i <beta, x_i> >= 1`` near ``beta0``.

    The problem is solved in the smooth form ``beta = w |w|^(L-1)``:
    ``min ||w||^2 s.t. y_i <w |w|^(L-1), x_i> >= 1`` (``|beta_i|^{2/L} = w_i^2``), with scipy
    SLSQP started from ``beta0`` rescaled to a minimum margin of 1. The answer is certified:
    ``lq_kkt_residual`` must find stationarity to ``1e-6`` and the margins must hold.

    **Arguments:**
    - `X`, `y`: the data, shapes ``(n, d)`` and ``(n,)``;
    - `beta0`: the starting point (a direction; its scale is fixed by the margins);
    - `depth`: ``L``.

    **Returns:** ``beta`` at the KKT point, shape ``(d,)``.
    """
    Z = np.asarray(y, float)[:, None] * np.asarray(X, float)
    beta0 = np.asarray(beta0, float)
    q = Z @ beta0
    if not q.min() > 0:
        raise ValueError("the starting point does not separate the data (min margin <= 0).")
    w0 = _signed_power(beta0 / q.min(), 1.0 / depth)

    def margins(w):
        return Z @ _signed_power(w, depth) - 1.0

    def margins_jac(w):
        return Z * (depth * np.abs(w) ** (depth - 1))

    res = scipy.optimize.minimize(
        lambda w: w @ w,
        w0,
        jac=lambda w: 2 * w,
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": margins, "jac": margins_jac}],
        options={"ftol": 1e-13, "maxiter": 2000},
    )
    beta = _signed_power(res.x, depth)
    # SLSQP may end on "positive directional derivative" at rounding level; the certificate
    # decides.
    kkt = lq_kkt_residual(X, y, beta, depth)
    if not (kkt["stationarity"] <= 1e-6 and np.min(Z @ beta) >= 1 - 1e-8):
        raise ValueError(
            f"SLSQP stopped off a KKT point ({res.message}): stationarity residual "
            f"{kkt['stationarity']:.2e}, min margin {np.min(Z @ beta):.8f}."
        )
    return beta


def lq_kkt_residual(
    X, y, beta, depth: int, *, active_tol: float = 1e-6, support_tol: float = 1e-6
) -> dict:
    """KKT residuals of ``min sum_j |beta_j|^{2/L} s.t. y_i <beta, x_i> >= 1`` at ``beta``.

    ``beta`` is rescaled to a minimum margin of 1. On the coordinates with
    ``|beta_j| > active_tol max |beta|`` the objective is differentiable, with gradient
    ``g_j = (2/L) |beta_j|^{2/L - 1} sign(beta_j)``; the off-support coordinates carry no
    condition (the subdifferential of ``|b|^{2/L}`` at 0 is all of ``R`` for ``L > 2``; for
    ``L = 2`` it is ``[-1, 1]``, checked separately). Multipliers ``lambda >= 0`` on the support
    points (margin ``<= 1 + support_tol``) come from non-negative least squares (scipy ``nnls``).

    **Returns:** a dict with `stationarity` ``||Z_S^T lambda - g|| / ||g||`` over the active
    coordinates, `off_support` ``max |Z_S^T lambda|`` over the inactive ones (``0`` if none; at a
    KKT point for ``L = 2`` it is ``<= 1``), `lambda`, `support` (point indices), `active`
    (coordinate indices), and `min_margin_others` (the smallest margin off the support).
    """
    Z = np.asarray(y, float)[:, None] * np.asarray(X, float)
    beta = np.asarray(beta, float)
    beta = beta / np.min(Z @ beta)
    q = Z @ beta
    support = np.flatnonzero(q <= 1 + support_tol)
    active = np.flatnonzero(np.abs(beta) > active_tol * np.max(np.abs(beta)))
    g = (2.0 / depth) * _signed_power(beta[active], 2.0 / depth - 1.0)
    lam, _ = scipy.optimize.nnls(Z[support][:, active].T, g)
    inactive = np.setdiff1d(np.arange(beta.size), active)
    others = np.setdiff1d(np.arange(q.size), support)
    residual = Z[support][:, active].T @ lam - g
    return {
        "stationarity": float(np.linalg.norm(residual) / np.linalg.norm(g)),
        "off_support": float(np.max(np.abs(Z[support][:, inactive].T @ lam), initial=0.0)),
        "lambda": lam,
        "support": support,
        "active": active,
        "min_margin_others": float(np.min(q[others], initial=np.inf)),
    }


def _nondegenerate(sol: LinearProgramSolution, d: int) -> bool:
    """A unique, well-separated LP vertex: every coordinate clearly nonzero (``|beta_j| >= 0.05
    max |beta|``), exactly ``d`` tight constraints with multipliers ``>= 1e-3 max lambda``
    (strict complementarity), and every other margin ``>= 1.05``."""
    beta, tight = sol.x, sol.slack <= 1e-8
    return bool(
        np.min(np.abs(beta)) >= 0.05 * np.max(np.abs(beta))
        and tight.sum() == d
        and np.min(sol.duals[tight]) >= 1e-3 * np.max(sol.duals)
        and np.min(sol.slack[~tight], initial=np.inf) >= 0.05
    )


def classification_data(seed: int, n: int, d: int, tag: int) -> tuple[np.ndarray, np.ndarray]:
    """Separable data whose ``l1`` max-margin LP has a nondegenerate, fully supported solution.

    Draws ``separable_data`` from ``numpy.random.default_rng([tag, seed, attempt])`` for
    ``attempt = 0, 1, ...`` until ``l1_max_margin`` has a unique vertex with every coordinate
    nonzero, strict complementarity and a gap to the non-support margins, at a distance
    ``>= 0.1`` from the ``l2`` max-margin direction (``hard_margin_svm``). With full support and
    a margin gap the flow's direction approaches its limit like ``1/|log L|``; a coordinate that
    vanishes at the limit would approach it like a power of ``1/|log L|`` set by its dual slack.
    """
    for attempt in range(1000):
        X, y = separable_data(np.random.default_rng([tag, seed, attempt]), n, d)
        sol = l1_max_margin(X, y)
        if _nondegenerate(sol, d) and direction_distance(sol.x, hard_margin_svm(X, y)) >= 0.1:
            return X, y
    raise RuntimeError("no nondegenerate instance in 1000 draws.")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Classification problems.

_CLASS_SIZES = {"test": (4, 16), "full": (8, 40)}  # (d, n)


def class_tolerance(depth: int, log_loss: float) -> float:
    """The direction tolerance at ``log L = log_loss``: ``10/|log L|`` for ``L = 2``,
    ``1/sqrt(|log L|)`` for ``L = 3``.

    ``L = 2``: the instances have a sharp, fully supported optimum, fixed by its ``d`` tight
    margins; those margins differ by ``O(1)`` in ``log L``, so the direction is
    ``O(1/|log L|)`` from its limit (measured: ``|log L| x distance`` from 0.14 to 1.4 at
    ``-1e4``, diagonal and convolutional, several seeds). ``L = 3``: the instances are chosen for
    ``L = 2``, and the KKT point the flow finds may have vanishing coordinates (frequencies),
    which decay only like a power of ``1/|log L|`` (measured: distance ``~|log L|^-0.6``,
    3.6e-3 at ``-1e4`` on one draw, ``~0.5/|log L|`` on the others).
    """
    return 10.0 / abs(log_loss) if depth == 2 else 1.0 / np.sqrt(abs(log_loss))


def _diagonal_classification(size: str, seed: int, depth: int) -> Problem:
    d, n = _CLASS_SIZES[size]
    X, y = classification_data(seed, n, d, tag=2000 + depth)
    target = CLASS_TARGET
    model = diagonal_net(d, depth=depth, alpha=1.0)
    if depth == 2:
        lp = l1_max_margin(X, y)
        reference = lp.x

        def error(result) -> float:
            return direction_distance(diagonal_signal(result.final), reference)

        prediction = "beta/||beta|| -> the l1 max-margin direction (an LP)"
        metric = "||beta/||beta|| - beta*/||beta*||||, beta* from scipy linprog"
    else:

        def reference(beta0):
            return lq_kkt_point(X, y, beta0, depth)

        def error(result) -> float:
            beta = np.asarray(diagonal_signal(result.final))
            return direction_distance(beta, reference(beta))

        prediction = f"beta/||beta|| -> a KKT point of min ||beta||_(2/{depth}) s.t. margins >= 1"
        metric = (
            "||beta/||beta|| - beta*/||beta*||||, beta* the KKT point found by scipy SLSQP from "
            "the flow's direction"
        )
    return Problem(
        name=f"diagonal-L{depth}-class",
        citation="Gunasekar, Lee, Soudry, Srebro. Implicit bias of gradient descent on linear "
        "convolutional networks. NeurIPS 2018.",
        prediction=prediction,
        model=model,
        X=X,
        y=y,
        loss="exponential",
        target_log_loss=target,
        flow_options={
            "time": "normalized",
            "t1": 1e9,
            "n_save": 8,
            "diagnostics": False,
            "save_states": False,
        },
        reference=reference,
        error=error,
        metric=metric,
        tolerance=class_tolerance(depth, target),
    )


@register("diagonal-L2-class")
def diagonal_l2_class(size: str = "full", seed: int = 0) -> Problem:
    """``beta = u^2 - v^2`` from ``u = v = 1``, exponential loss: ``l1`` max-margin direction.

    Data: ``d = 4, n = 16`` (test) or ``d = 8, n = 40`` (full) Gaussian points labelled by a
    Gaussian teacher (``classification_data``). Runs in normalized time to ``log L = -1e4``.
    Error: the distance of unit directions to the LP solution; tolerance ``10/|log L|``
    (``class_tolerance``).
    """
    return _diagonal_classification(size, seed, 2)


@register("diagonal-L3-class")
def diagonal_l3_class(size: str = "full", seed: int = 0) -> Problem:
    """``beta = u^3 - v^3`` from ``u = v = 1``, exponential loss: an ``l_{2/3}`` KKT direction.

    Same data sizes and target as ``diagonal-L2-class``. The reference is the KKT point that
    scipy SLSQP reaches from the flow's direction (``lq_kkt_point``): the theorem names no
    particular KKT point of the nonconvex problem, so the check is that the flow's direction is
    one, i.e. that a local solve started there hardly moves. A KKT residual alone would need
    thresholds to decide the support points and coordinates at a finite loss; the local solve
    needs none, and its answer is checked by ``lq_kkt_residual`` where its margins are exact
    (near a vertex with ``d`` tight margins the ``nnls`` system is square, so a residual at the
    flow's point would test little beyond ``lambda >= 0``). Any vertex of the margin polyhedron
    with positive multipliers is a KKT point; the ``l1`` solution is one, so the check does not
    tell an ``L = 3`` limit from an ``L = 2`` one on the same vertex. It does reject directions
    that are no KKT point: the local solve moves the ``l2`` max-margin direction by 0.23 (test)
    and 0.39 (full). Tolerance ``1/sqrt(|log L|)`` (``class_tolerance``).
    """
    return _diagonal_classification(size, seed, 3)


# --------------------------------------------------------------------------------------------
# Regression: the Q_alpha interpolator.


def q_function(z) -> np.ndarray:
    """``q(z) = 2 - sqrt(4 + z^2) + z arcsinh(z/2)``."""
    z = np.asarray(z, float)
    return 2.0 - np.sqrt(4.0 + z * z) + z * np.arcsinh(z / 2.0)


def q_alpha(x, alpha: float) -> float:
    """``Q_alpha(x) = alpha^2 sum_i q(x_i / alpha^2)``."""
    a2 = float(alpha) ** 2
    return float(a2 * np.sum(q_function(np.asarray(x, float) / a2)))


@dataclasses.dataclass(frozen=True)
class QAlphaSolution:
    """The ``Q_alpha`` interpolator: `x = 2 alpha^2 sinh(A^T mu)` with ``A x = y``; `mu` the dual
    variable; `alpha`."""

    x: np.ndarray
    mu: np.ndarray
    alpha: float


def q_alpha_minimizer(
    A, y, alpha: float, *, alpha_start: float = 10.0, steps_per_decade: int = 4
) -> QAlphaSolution:
    """``argmin Q_alpha(x) s.t. A x = y`` from its optimality conditions.

    ``x = 2 alpha^2 sinh(A^T mu)`` (``grad Q_alpha = arcsinh(x/(2 alpha^2)) in range(A^T)``) and
    ``A x = y``: ``scipy.optimize.root`` (``hybr``, analytic Jacobian
    ``2 alpha^2 A diag(cosh(A^T mu)) A^T``) on ``mu``, by continuation in ``alpha`` from
    ``alpha_start`` (where ``x`` is nearly the minimum-``l2`` interpolator, so
    ``mu = (A A^T)^-1 y / (2 alpha_start^2)`` is a close start) down to ``alpha``, geometric with
    ``steps_per_decade`` solves per decade, each warm-started from the last.

    **Returns:** a ``QAlphaSolution``. Raises ``ValueError`` if the final residual
    ``||A x - y||`` exceeds ``1e-12 (1 + ||y||)``.
    """
    A, y = np.asarray(A, float), np.asarray(y, float)
    top = max(float(alpha_start), float(alpha))
    mu = np.linalg.solve(A @ A.T, y) / (2 * top**2)
    count = int(np.ceil(steps_per_decade * np.log10(top / float(alpha)))) + 1
    for a in np.geomspace(top, float(alpha), count):
        a2 = float(a) ** 2

        def fun(m, a2=a2):
            return A @ (2 * a2 * np.sinh(A.T @ m)) - y

        def jac(m, a2=a2):
            return (A * (2 * a2 * np.cosh(A.T @ m))) @ A.T

        # hybr reports "no progress" once it sits at rounding level; the residual decides.
        mu = scipy.optimize.root(fun, mu, jac=jac, method="hybr", options={"xtol": 1e-13}).x
    x = 2 * float(alpha) ** 2 * np.sinh(A.T @ mu)
    residual = np.linalg.norm(A @ x - y)
    if not residual <= 1e-12 * (1 + np.linalg.norm(y)):
        raise ValueError(f"the Q_alpha root solve left a residual ||A x - y|| = {residual:.2e}.")
    return QAlphaSolution(x=x, mu=mu, alpha=float(alpha))


def l1_interpolator(A, y) -> np.ndarray:
    """``argmin ||x||_1 s.t. A x = y``: the LP ``min 1^T (p + m)``, ``A (p - m) = y``, ``p, m >= 0``
    (scipy ``linprog``, HiGHS)."""
    A, y = np.asarray(A, float), np.asarray(y, float)
    d = A.shape[1]
    res = scipy.optimize.linprog(
        np.ones(2 * d),
        A_eq=np.hstack([A, -A]),
        b_eq=y,
        bounds=[(0, None)] * (2 * d),
        method="highs",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    if res.status != 0:
        raise ValueError(f"the l1 interpolation LP failed: {res.message}")
    return res.x[:d] - res.x[d:]


def sparse_regression_data(
    seed: int, n: int, d: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``A_ij ~ N(0, 1/n)``, a ``k``-sparse ``x*`` with ``N(0, 1)`` entries on a uniform support,
    ``y = A x*``. **Returns:** ``(A, y, x*)``."""
    rng = np.random.default_rng([3000, seed])
    A = rng.standard_normal((n, d)) / np.sqrt(n)
    x_star = np.zeros(d)
    x_star[rng.choice(d, k, replace=False)] = rng.standard_normal(k)
    return A, A @ x_star, x_star


_REGRESSION_SIZES = {"test": (20, 10, 2), "full": (100, 40, 5)}  # (d, n, k)
SQUARE_ALPHA = 1e-3
# x(t) = 2 alpha^2 sinh(A^T mu(t)) holds exactly along the flow, so the flow's end differs from
# the Q_alpha interpolator by the solver's error and by the final residual (1e-10), amplified by
# at most ~1/alpha on the slow coordinates: ~1e-7 relative. The tolerance is 1e-6.
_SQUARE_TOLERANCE = 1e-6


@register("diagonal-square-l1")
def diagonal_square_l1(size: str = "full", seed: int = 0) -> Problem:
    """``x = u^2 - v^2`` from ``u = v = alpha = 1e-3``, square loss on ``A x = y``: the
    ``Q_alpha`` interpolator (near the ``l1`` one).

    Data: ``sparse_regression_data`` with ``(d, n, k) = (20, 10, 2)`` (test) or ``(100, 40, 5)``
    (full). Loss ``1/2 sum_i (<a_i, x> - y_i)^2``; the run stops at
    ``log L = log(1e-20 / 2)``, a residual ``||A x - y|| = 1e-10``. Error:
    ``||x - x_alpha|| / ||x_alpha||`` against ``q_alpha_minimizer``; tolerance ``1e-6``.
    """
    d, n, k = _REGRESSION_SIZES[size]
    A, y, _ = sparse_regression_data(seed, n, d, k)
    solution = q_alpha_minimizer(A, y, SQUARE_ALPHA)

    def error(result) -> float:
        x = np.asarray(diagonal_signal(result.final))
        return float(np.linalg.norm(x - solution.x) / np.linalg.norm(solution.x))

    return Problem(
        name="diagonal-square-l1",
        citation="Woodworth, Gunasekar, Lee, Moroshko, Savarese, Golan, Soudry, Srebro. Kernel "
        "and rich regimes in overparametrized models. COLT 2020.",
        prediction="x -> argmin Q_alpha(x) s.t. A x = y (alpha -> 0: the l1 interpolator)",
        model=diagonal_net(d, depth=2, alpha=SQUARE_ALPHA),
        X=A,
        y=y,
        loss="square",
        target_log_loss=float(np.log(0.5 * RESIDUAL**2)),
        flow_options={
            "time": "plain",
            "t1": 1e12,
            "n_save": 8,
            "diagnostics": False,
            "save_states": False,
        },
        reference=solution,
        error=error,
        metric="||x - x_alpha|| / ||x_alpha||, x_alpha = 2 alpha^2 sinh(A^T mu) by scipy root",
        tolerance=_SQUARE_TOLERANCE,
    )
