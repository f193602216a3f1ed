"""Reference interpolators of ``A x = y``, computed independently of the dynamics (numpy/scipy).

- ``l1_interpolator``: ``argmin ||x||_1`` s.t. ``A x = y``, as the LP ``min 1^T (p + n)``,
  ``A (p - n) = y``, ``p, n >= 0`` (scipy ``linprog``, HiGHS);
- ``min_l2_interpolator``: ``A^+ y``;
- ``q_alpha_interpolator``: ``argmin Q_alpha(x)`` s.t. ``A x = y``, with
  ``Q_alpha(x) = sum_i alpha^2 q(x_i/alpha^2)``, ``q(z) = 2 - sqrt(4 + z^2) + z arcsinh(z/2)``:
  the limit of plain gradient flow on ``x = u^2 - v^2`` from ``u(0) = v(0) = alpha``
  (Woodworth et al. 2020). Solved through its smooth convex dual
  ``min_mu sum_i 2 alpha^2 (cosh((A^T mu)_i) - 1) - <mu, y>`` (Newton trust region), with
  ``x = 2 alpha^2 sinh(A^T mu)``; ``method='slsqp'`` solves the primal with SLSQP instead.
"""

from __future__ import annotations

import numpy as np

from wnjax._runtime.errors import InvalidInput


def _check(A, y) -> tuple[np.ndarray, np.ndarray]:
    A = np.asarray(A, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if A.ndim != 2 or y.shape != (A.shape[0],):
        raise InvalidInput(
            f"need A of shape (N, d) and y of shape (N,), got {A.shape} and {y.shape}."
        )
    return A, y


def l1_interpolator(A, y) -> np.ndarray:
    """``argmin ||x||_1`` s.t. ``A x = y``, by linear programming (scipy ``linprog``, HiGHS)."""
    A, y = _check(A, y)
    d = A.shape[1]
    import scipy.optimize

    res = scipy.optimize.linprog(
        np.ones(2 * d),
        A_eq=np.hstack([A, -A]),
        b_eq=y,
        bounds=[(0, None)] * (2 * d),
        method="highs",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    if res.status != 0:
        raise ValueError(f"the l1 LP failed ({res.message}); is A x = y feasible?")
    return res.x[:d] - res.x[d:]


def min_l2_interpolator(A, y) -> np.ndarray:
    """The minimum-norm interpolator ``A^+ y`` (``numpy.linalg.lstsq``)."""
    A, y = _check(A, y)
    return np.linalg.lstsq(A, y, rcond=None)[0]


def q_function(z) -> np.ndarray:
    """``q(z) = 2 - sqrt(4 + z^2) + z arcsinh(z/2)``."""
    z = np.asarray(z, dtype=np.float64)
    return 2.0 - np.sqrt(4.0 + z * z) + z * np.arcsinh(z / 2.0)


def q_alpha(x, alpha: float) -> float:
    """``Q_alpha(x) = sum_i alpha^2 q(x_i / alpha^2)``."""
    a2 = float(alpha) ** 2
    return float(a2 * np.sum(q_function(np.asarray(x) / a2)))


def _dual_newton(A: np.ndarray, y: np.ndarray, a2: float, mu0: np.ndarray) -> np.ndarray:
    """``argmin_mu sum_i 2 a2 (cosh((A^T mu)_i) - 1) - <mu, y>`` by a trust-region Newton method."""

    def fun(mu):
        return 4 * a2 * np.sum(np.sinh(A.T @ mu / 2) ** 2) - mu @ y  # cosh s - 1, stably

    def jac(mu):
        return A @ (2 * a2 * np.sinh(A.T @ mu)) - y

    def hess(mu):
        return (A * (2 * a2 * np.cosh(A.T @ mu))) @ A.T

    import scipy.optimize

    res = scipy.optimize.minimize(
        fun, mu0, jac=jac, hess=hess, method="trust-exact", options={"gtol": 1e-12, "maxiter": 1000}
    )
    # trust-exact stops where rounding in ``fun`` hides its decrease (small alpha: the cosh terms
    # are large), with the gradient ``A x - y`` still up to ~1e-8. Newton on the gradient itself,
    # halving the step until ``||A x - y||`` falls, takes it to rounding level.
    mu, g = res.x, jac(res.x)
    for _ in range(50):
        norm = np.linalg.norm(g)
        if norm <= 1e-15 * max(1.0, np.linalg.norm(y)):
            break
        step = np.linalg.lstsq(hess(mu), -g, rcond=None)[0]
        for t in 0.5 ** np.arange(30):
            trial = mu + t * step
            g_trial = jac(trial)
            if np.linalg.norm(g_trial) < norm:
                mu, g = trial, g_trial
                break
        else:
            break
    return mu


def q_alpha_interpolator(A, y, alpha: float, method: str = "dual") -> np.ndarray:
    """``argmin Q_alpha(x)`` s.t. ``A x = y``: the limit of plain gradient flow for ``L = 2``.

    **Arguments:**
    - `A`, `y`: the measurements, shapes ``(N, d)`` and ``(N,)`` (``A`` of full row rank).
    - `alpha`: the init scale ``u(0) = v(0) = alpha``.
    - `method`: ``'dual'`` (Newton on the smooth dual; accurate to ~1e-12) or ``'slsqp'``
      (the primal with equality constraints; accurate to ~1e-8).

    **Returns:** the minimizer ``x``, shape ``(d,)``.
    """
    A, y = _check(A, y)
    if not alpha > 0:
        raise InvalidInput(f"alpha must be positive, got {alpha!r}.")
    a2 = float(alpha) ** 2
    if method == "dual":
        # Continuation from alpha = max(alpha, 1) down to alpha, warm-starting each Newton solve.
        mu = np.zeros(A.shape[0])
        top = max(float(alpha), 1.0)
        steps = int(np.ceil(4 * np.log10(top / float(alpha)))) + 1
        for a in np.geomspace(top, float(alpha), steps):
            mu = _dual_newton(A, y, float(a) ** 2, mu)
        x = 2 * a2 * np.sinh(A.T @ mu)
        if np.linalg.norm(A @ x - y) > 1e-8 * max(1.0, np.linalg.norm(y)):
            raise ValueError(
                "the Q_alpha dual solve did not converge (residual "
                f"{np.linalg.norm(A @ x - y):.2e}); try method='slsqp'."
            )
        return x
    if method == "slsqp":
        x0 = min_l2_interpolator(A, y)

        def fun(x):
            return a2 * np.sum(q_function(x / a2))

        def jac(x):
            return np.arcsinh(x / (2 * a2))

        import scipy.optimize

        res = scipy.optimize.minimize(
            fun,
            x0,
            jac=jac,
            method="SLSQP",
            constraints=[{"type": "eq", "fun": lambda x: A @ x - y, "jac": lambda x: A}],
            options={"ftol": 1e-14, "maxiter": 5000},
        )
        if not res.success:
            raise ValueError(f"SLSQP did not converge for Q_alpha: {res.message}")
        return res.x
    raise InvalidInput(f"method must be 'dual' or 'slsqp', got {method!r}.")
