"""Symmetric matrix factorization with commuting measurements: the minimum nuclear norm.

``matrix-factorization`` (Gunasekar, Woodworth, Bhojanapalli, Neyshabur, Srebro, NeurIPS 2017,
"Implicit regularization in matrix factorization"): ``X = U U^T`` with ``U`` square, square loss
on ``<A_i, X> = y_i``, gradient flow from ``U(0) = alpha I``. When the ``A_i`` commute,
``A_i = Q diag(a_i) Q^T`` with one orthogonal ``Q``, the flow keeps ``Q^T U Q`` diagonal:
``X = Q diag(s) Q^T`` with ``s_j = alpha^2 exp((A^T mu)_j)`` (``A`` the matrix of rows ``a_i``,
``mu = -4 int r dt``), a diagonal net ``s = u^2`` on the eigenvalues. As ``alpha -> 0`` the limit
is the minimum nuclear-norm PSD solution; for PSD matrices the nuclear norm is the trace, so in
the eigenbasis it is the LP ``min 1^T s s.t. A s = y, s >= 0`` (``nuclear_norm_lp``). At finite
``alpha`` the limit is ``s_alpha = alpha^2 exp(A^T mu)`` with ``A s_alpha = y``
(``finite_alpha_limit``): the LP with an entropy term of weight ``1/log(1/alpha^2)``.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from jaxtyping import Array

from wnjax.problems._base import Problem, register

RESIDUAL = 1e-10


class SymmetricFactorization(eqx.Module):
    """``X = U U^T`` read out as ``<A, X> = sum_jk A_jk X_jk`` for a flattened ``A``.

    ``layer.weight`` is ``U`` (``d x d``), held in a bias-free ``eqx.nn.Linear`` so that its rows
    are the library's neurons. The output is 2-homogeneous in ``U``.
    """

    layer: eqx.nn.Linear
    dim: int = eqx.field(static=True)

    def __init__(self, U: Array):
        """**Arguments:** `U`: the initial factor, shape ``(d, d)``."""
        U = jnp.asarray(U)
        d = U.shape[0]
        layer = eqx.nn.Linear(d, d, use_bias=False, dtype=U.dtype, key=jax.random.key(0))
        self.layer = eqx.tree_at(lambda l: l.weight, layer, U)
        self.dim = d

    def matrix(self) -> Array:
        """``X = U U^T``."""
        U = self.layer.weight
        return U @ U.T

    def __call__(self, a: Array) -> Array:
        """``<A, U U^T>`` for one measurement ``A`` flattened to shape ``(d * d,)``."""
        return jnp.sum(a.reshape(self.dim, self.dim) * self.matrix())


@dataclasses.dataclass(frozen=True)
class NuclearNormSolution:
    """The LP optimum in the eigenbasis: `s` the eigenvalues, `X = Q diag(s) Q^T`, `duals` the
    multipliers ``nu`` of ``A s = y``, `reduced_costs` ``1 - A^T nu`` (``>= 0``)."""

    s: np.ndarray
    X: np.ndarray
    duals: np.ndarray
    reduced_costs: np.ndarray


def nuclear_norm_lp(Q, A, y) -> NuclearNormSolution:
    """``argmin ||X||_* s.t. <A_i, X> = y_i, X PSD`` for ``A_i = Q diag(a_i) Q^T``.

    Any PSD ``X`` has ``<A_i, X> = <a_i, diag(Q^T X Q)>``, ``trace X = 1^T diag(Q^T X Q)`` and
    ``diag(Q^T X Q) >= 0``, so the minimum is the LP ``min 1^T s s.t. A s = y, s >= 0`` (scipy
    ``linprog``, HiGHS), attained by ``X = Q diag(s) Q^T``.
    """
    Q, A, y = (np.asarray(v, float) for v in (Q, A, y))
    d = A.shape[1]
    res = scipy.optimize.linprog(
        np.ones(d),
        A_eq=A,
        b_eq=y,
        bounds=[(0, None)] * d,
        method="highs",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    if res.status != 0:
        raise ValueError(f"the nuclear-norm LP failed: {res.message}")
    s = res.x
    return NuclearNormSolution(
        s=s,
        X=(Q * s) @ Q.T,
        duals=np.asarray(res.eqlin.marginals),
        reduced_costs=np.asarray(res.lower.marginals),
    )


def finite_alpha_limit(A, y, alpha: float) -> np.ndarray:
    """The eigenvalues ``s = alpha^2 exp(A^T mu)`` with ``A s = y``: the limit of the flow from
    ``U(0) = alpha I`` in the eigenbasis.

    ``scipy.optimize.root`` (``hybr``, Jacobian ``A diag(s) A^T``) on ``mu``, by continuation
    from ``alpha = 1`` down to ``alpha`` (four solves per decade, each warm-started).
    Raises ``ValueError`` if the residual ``||A s - y||`` exceeds ``1e-12 (1 + ||y||)``.
    """
    A, y = np.asarray(A, float), np.asarray(y, float)
    mu = np.zeros(A.shape[0])
    top = max(1.0, float(alpha))
    count = int(np.ceil(4 * np.log10(top / float(alpha)))) + 1
    for a in np.geomspace(top, float(alpha), count):
        a2 = float(a) ** 2

        def fun(m, a2=a2):
            return A @ (a2 * np.exp(A.T @ m)) - y

        def jac(m, a2=a2):
            return (A * (a2 * np.exp(A.T @ m))) @ A.T

        mu = scipy.optimize.root(fun, mu, jac=jac, method="hybr", options={"xtol": 1e-13}).x
    s = float(alpha) ** 2 * np.exp(A.T @ mu)
    residual = np.linalg.norm(A @ s - y)
    if not residual <= 1e-12 * (1 + np.linalg.norm(y)):
        raise ValueError(f"the finite-alpha root solve left a residual {residual:.2e}.")
    return s


@dataclasses.dataclass(frozen=True)
class CommutingSensing:
    """Commuting measurements ``A_i = Q diag(a_i) Q^T``: `Q` (``d x d`` orthogonal), `A` (rows
    ``a_i``, ``n x d``), `y = A s0` and the feasible eigenvalues `s0` they came from."""

    Q: np.ndarray
    A: np.ndarray
    y: np.ndarray
    s0: np.ndarray

    def matrices(self) -> np.ndarray:
        """The ``A_i``, shape ``(n, d, d)``."""
        return np.einsum("jk,ik,lk->ijl", self.Q, self.A, self.Q)


def _well_posed(sol: NuclearNormSolution, n: int) -> bool:
    """A nondegenerate LP vertex with clear reduced costs: ``n`` eigenvalues ``>= 0.1 max s``, the
    rest 0, and every reduced cost off the basis ``>= 0.5``. The finite-alpha limit then sits
    about ``alpha^(2 x 0.5)`` from the LP solution (the entropy term weighs
    ``1/log(1/alpha^2)``)."""
    basic = sol.s > 1e-9 * np.max(sol.s)
    return bool(
        basic.sum() == n
        and np.min(sol.s[basic]) >= 0.1 * np.max(sol.s)
        and np.min(sol.reduced_costs[~basic]) >= 0.5
    )


def commuting_sensing(seed: int, n: int, d: int) -> CommutingSensing:
    """Commuting measurements whose nuclear-norm LP is well posed.

    ``Q`` from the QR factorization of a Gaussian matrix, ``a_i ~ N(0, I_d)``, ``y = A s0`` with
    ``s0 ~ U(0.5, 1.5)^d`` (so a full-rank PSD solution is feasible and the minimum nuclear norm,
    of rank ``n``, is a real choice among many). Drawn from
    ``numpy.random.default_rng([4000, seed, attempt])``, ``attempt = 0, 1, ...``, until the LP
    passes ``_well_posed``.
    """
    for attempt in range(1000):
        rng = np.random.default_rng([4000, seed, attempt])
        Q, R = np.linalg.qr(rng.standard_normal((d, d)))
        Q = Q * np.sign(np.diag(R))
        A = rng.standard_normal((n, d))
        s0 = rng.uniform(0.5, 1.5, d)
        data = CommutingSensing(Q=Q, A=A, y=A @ s0, s0=s0)
        if _well_posed(nuclear_norm_lp(Q, A, data.y), n):
            return data
    raise RuntimeError("no well-posed instance in 1000 draws.")  # pragma: no cover


_SIZES = {"test": (6, 2), "full": (12, 4)}  # (d, n)
ALPHA = 1e-4
# The flow's limit X_alpha (finite_alpha_limit) is delta_alpha = ||X_alpha - X*|| / ||X*|| from
# the LP solution X*; the solver and the final residual (1e-10) add well under 1e-5.
_SOLVER_SLACK = 1e-5


@dataclasses.dataclass(frozen=True)
class FactorizationReference:
    """`lp`: the minimum nuclear-norm solution (``NuclearNormSolution``); `X_alpha`: the exact
    limit at the run's ``alpha``; `delta_alpha`: ``||X_alpha - X*||_F / ||X*||_F``."""

    lp: NuclearNormSolution
    X_alpha: np.ndarray
    delta_alpha: float


@register("matrix-factorization")
def matrix_factorization(size: str = "full", seed: int = 0) -> Problem:
    """``X = U U^T`` from ``U = 1e-4 I``, square loss on commuting measurements: the minimum
    nuclear-norm PSD solution.

    Data: ``commuting_sensing`` with ``(d, n) = (6, 2)`` (test) or ``(12, 4)`` (full); the
    model sees each ``A_i`` flattened. Loss ``1/2 sum_i (<A_i, X> - y_i)^2``, run in plain time to
    ``log L = log(1e-20 / 2)`` (a residual of ``1e-10``). Error ``||X - X*||_F / ||X*||_F``
    against the LP; tolerance ``delta_alpha + 1e-5``, where ``delta_alpha`` is the distance of
    the exact finite-alpha limit from ``X*`` (below ``1e-3`` on these instances).
    """
    d, n = _SIZES[size]
    data = commuting_sensing(seed, n, d)
    lp = nuclear_norm_lp(data.Q, data.A, data.y)
    s_alpha = finite_alpha_limit(data.A, data.y, ALPHA)
    X_alpha = (data.Q * s_alpha) @ data.Q.T
    delta = float(np.linalg.norm(X_alpha - lp.X) / np.linalg.norm(lp.X))
    reference = FactorizationReference(lp=lp, X_alpha=X_alpha, delta_alpha=delta)
    model = SymmetricFactorization(ALPHA * jnp.eye(d, dtype=jnp.result_type(float)))

    def error(result) -> float:
        X = np.asarray(result.final.matrix())
        return float(np.linalg.norm(X - lp.X) / np.linalg.norm(lp.X))

    return Problem(
        name="matrix-factorization",
        citation="Gunasekar, Woodworth, Bhojanapalli, Neyshabur, Srebro. Implicit regularization "
        "in matrix factorization. NeurIPS 2017.",
        prediction="X = U U^T -> the minimum nuclear-norm PSD solution as alpha -> 0",
        model=model,
        X=data.matrices().reshape(n, d * d),
        y=data.y,
        loss="square",
        target_log_loss=float(np.log(0.5 * RESIDUAL**2)),
        flow_options={
            "time": "plain",
            "t1": 1e14,
            "n_save": 8,
            "diagnostics": False,
            "save_states": False,
        },
        reference=reference,
        error=error,
        metric="||X - X*||_F / ||X*||_F, X* from the eigenvalue LP (scipy linprog)",
        tolerance=delta + _SOLVER_SLACK,
    )
