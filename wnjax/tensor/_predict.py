"""Predicted limits of gradient flow on linear tensor networks (docs/theory.md §6), in numpy/scipy.

Everything lives in the transformed space: features ``Z`` (``n x m``, row ``i`` is ``S x_i``)
and ``rho`` with ``f(x_i) = Z_i . rho``. Coordinates may be grouped (a complex Fourier
coefficient is a group of two); ``|rho_G|`` is the Euclidean norm of a group, and a group of one
is the real case.

**Regression** (init ``[U_l^T v_l(0)]_G = c_{lG}``, ``c_l = alpha nu_l`` for ``l < L``, and
``v_L(0) = 0``). GF reaches ``rho = F(Z^T lambda)`` with ``Z rho = y``, where per group

- ``P(w) = prod_{l<L} sqrt(c_l^2 + w^2)``, ``Phi(w) = int_0^w dz / P(z)``;
- ``F(s) = w P(w)`` with ``w = Phi^{-1}(s)`` (applied to ``|s_G|``, direction ``s_G/|s_G|``);
- closed forms: ``L = 2``: ``F(s) = (c^2/2) sinh(2s)``; ``L = 3``, ``c_1 = c_2 = c``:
  ``F(s) = c^3 tan(cs) sec^2(cs)``.

``lambda`` minimises the convex dual ``D(lambda) = sum_G Q*(|s_G|) - lambda^T y``,
``s = Z^T lambda``, where (derived, ``sigma = Phi(w)``) ``Q*(s) = int_0^s F = Phi^{-1}(s)^2 / 2``.

**Classification.** The limit direction of ``rho`` is a KKT point of
``min sum_G |rho_G|^{2/L}`` s.t. ``y_i Z_i . rho >= 1``; for ``L = 2`` and groups of one it is
the l1-SVM (an LP).
"""

from __future__ import annotations

import numpy as np

from wnjax._runtime.errors import InvalidInput

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(256)


def _groups(groups, m: int) -> np.ndarray:
    if groups is None:
        return np.arange(m)
    g = np.asarray(groups)
    if g.shape != (m,):
        raise InvalidInput(
            f"groups must give one group index per coordinate, shape ({m},), got {g.shape}."
        )
    _, g = np.unique(g, return_inverse=True)
    return g


def group_norms(rho, groups=None) -> np.ndarray:
    """``|rho_G|``: the Euclidean norm of each group (``|rho_j|`` without groups)."""
    rho = np.asarray(rho, dtype=np.float64)
    g = _groups(groups, rho.size)
    return np.sqrt(np.bincount(g, weights=rho * rho))


class Link:
    """The link ``F`` of one depth ``L`` and per-group scales ``c`` (shape ``(L-1, G)``).

    ``w = Phi^{-1}(s)``, ``F(s) = w P(w)``, ``F'(s) = P(w)^2 (1 + w^2 sum_l 1/(c_l^2 + w^2))``,
    ``Q*(s) = w^2/2``. Closed forms for ``L = 2`` (``w = c sinh s``) and for ``L = 3`` with equal
    scales (``w = c tan(cs)``); otherwise ``Phi`` is computed by Gauss-Legendre quadrature after
    ``z = c_min sinh t`` and inverted by Newton's method.
    """

    def __init__(self, scales, numeric: bool = False):
        c = np.abs(np.atleast_2d(np.asarray(scales, dtype=np.float64)))
        if np.any(c <= 0) or not np.all(np.isfinite(c)):
            raise InvalidInput("the init scales alpha*nu must be positive and finite.")
        self.c = c
        self.depth = c.shape[0] + 1
        if numeric:
            self.kind = "numeric"
        elif self.depth == 2:
            self.kind = "L2"
        elif self.depth == 3 and np.allclose(c[0], c[1], rtol=1e-14, atol=0):
            self.kind = "L3"
        else:
            self.kind = "numeric"
        self.c_min = c.min(axis=0)
        self.s_max = np.full(c.shape[1], np.inf) if self.depth == 2 else self.phi(np.inf)

    def _c(self, w) -> np.ndarray:
        """The scales shaped ``(L-1, 1, ..., G)`` to broadcast against ``w`` of shape
        ``(..., G)``."""
        return self.c.reshape((self.c.shape[0],) + (1,) * (np.ndim(w) - 1) + (self.c.shape[1],))

    def P(self, w):
        w = np.asarray(w, dtype=np.float64)
        return np.prod(np.sqrt(self._c(w) ** 2 + w**2), axis=0)

    def phi(self, w):
        """``Phi(w) = int_0^w dz/P(z)`` for ``w >= 0`` (``w = inf`` allowed for ``L > 2``)."""
        w = np.broadcast_to(np.asarray(w, dtype=np.float64), self.c_min.shape)
        if self.kind == "L2":
            return np.arcsinh(w / self.c[0])
        # z = c_min sinh(t); for L > 2 the integrand decays like exp(-(L-2) t): stop at t = 40.
        T = np.where(np.isinf(w), 40.0, np.arcsinh(np.where(np.isinf(w), 0.0, w) / self.c_min))
        if self.depth > 2:
            T = np.minimum(T, 40.0)
        t = 0.5 * T * (_GL_NODES[:, None] + 1.0)
        integrand = self.c_min * np.cosh(t) / self.P(self.c_min * np.sinh(t))
        return 0.5 * T * np.sum(_GL_WEIGHTS[:, None] * integrand, axis=0)

    def w_of(self, s):
        """``w = Phi^{-1}(s)`` for ``0 <= s < Phi(inf)``."""
        s = np.asarray(s, dtype=np.float64)
        if self.kind == "L2":
            return self.c[0] * np.sinh(s)
        if self.kind == "L3":
            return self.c[0] * np.tan(self.c[0] * s)
        w = np.zeros_like(s)
        for _ in range(100):  # Phi is concave on w >= 0: Newton from below increases monotonically
            step = np.maximum((s - self.phi(w)) * self.P(w), 0.0)
            w = w + step
            if np.all(step <= 1e-13 * np.maximum(w, self.c_min)):
                break
        return w

    def terms(self, s):
        """``(Q*(s), F(s), F'(s))`` from one evaluation of ``w = Phi^{-1}(s)``."""
        w = self.w_of(s)
        Pw = self.P(w)
        F = self.F(s) if self.kind in ("L2", "L3") else w * Pw
        dF = Pw**2 * (1.0 + w * w * np.sum(1.0 / (self._c(w) ** 2 + w * w), axis=0))
        return 0.5 * w * w, F, dF

    def F(self, s):
        """``F(s) = w P(w)``; the closed forms of docs/theory.md §6 for ``L = 2, 3``."""
        s = np.asarray(s, dtype=np.float64)
        if self.kind == "L2":
            return 0.5 * self.c[0] ** 2 * np.sinh(2 * s)
        if self.kind == "L3":
            c = self.c[0]
            return c**3 * np.tan(c * s) / np.cos(c * s) ** 2
        w = self.w_of(s)
        return w * self.P(w)

    def dF(self, s):
        w = self.w_of(s)
        return self.P(w) ** 2 * (1.0 + w * w * np.sum(1.0 / (self._c(w) ** 2 + w * w), axis=0))

    def Q_star(self, s):
        return 0.5 * self.w_of(s) ** 2


def regression_link(scales, numeric: bool = False) -> Link:
    """The regression link ``F`` for per-group init scales ``c_{lG} = alpha nu_{lG}``, ``l < L``.

    **Arguments:**
    - `scales`: array ``(L-1, G)`` (or ``(G,)`` for ``L = 2``).
    - `numeric`: force the quadrature form even where a closed form exists.
    """
    return Link(scales, numeric)


def _dual_terms(lam, Z, y, g, lk: Link, G: int):
    s = Z.T @ lam
    r = np.sqrt(np.bincount(g, weights=s * s, minlength=G))
    if np.any(r >= lk.s_max):
        return np.inf, None, None, None
    Qr, Fr, dFr = lk.terms(r)
    value = np.sum(Qr) - lam @ y
    safe = np.where(r > 0, r, 1.0)
    ratio = np.where(r > 0, Fr / safe, dFr)  # F(r)/r -> F'(0) as r -> 0
    rho = ratio[g] * s
    u = s / safe[g]
    return value, rho, (ratio, dFr, u), s


def regression_limit(Z, y, scales, groups=None, *, numeric: bool = False, tol: float = 1e-11):
    """The predicted GF limit ``rho = F(Z^T lambda)`` with ``Z rho = y`` (the Q-minimiser).

    Solved by damped Newton on the convex dual ``D(lambda)``.

    **Arguments:**
    - `Z`: transformed features ``(n, m)``; ``y``: targets ``(n,)``.
    - `scales`: ``(L-1, G)`` init scales ``alpha nu_l`` per group (or ``(G,)`` when ``L = 2``).
    - `groups`: group index of each coordinate (default: each its own).
    - `numeric`: use the quadrature ``F`` even for ``L = 2, 3``.
    - `tol`: stop at ``||Z rho - y|| <= tol ||y||``.

    **Returns:** ``rho`` of shape ``(m,)``.
    """
    Z = np.asarray(Z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, m = Z.shape
    g = _groups(groups, m)
    G = g.max() + 1
    lk = Link(scales, numeric)
    if lk.c.shape[1] != G:
        raise InvalidInput(f"scales has {lk.c.shape[1]} columns; there are {G} groups.")
    lam = np.zeros(n)
    value, rho, parts, s = _dual_terms(lam, Z, y, g, lk, G)
    scale = max(np.linalg.norm(y), 1e-300)
    for _ in range(500):
        grad = Z @ rho - y
        if np.linalg.norm(grad) <= tol * scale:
            return rho
        ratio, dFr, u = parts
        # Hessian of Q*(|s_G|): F(r)/r (I - u u^T) + F'(r) u u^T on each group.
        same = g[:, None] == g[None, :]
        H = np.diag(ratio[g]) + np.where(same, np.outer(u, u), 0.0) * (dFr - ratio)[g][:, None]
        step = np.linalg.lstsq(Z @ H @ Z.T, -grad, rcond=None)[0]
        t = 1.0
        while t >= 1e-12:
            new = _dual_terms(lam + t * step, Z, y, g, lk, G)
            if new[1] is not None and (
                new[0] <= value + 1e-4 * t * (grad @ step)
                or np.linalg.norm(Z @ new[1] - y) < 0.5 * np.linalg.norm(grad)
            ):
                break
            t *= 0.5
        else:  # no decrease left: the dual is minimised to rounding precision
            break
        lam = lam + t * step
        value, rho, parts, s = new
    if np.linalg.norm(Z @ rho - y) <= 1e-7 * scale:
        return rho
    raise RuntimeError(
        "regression_limit: Newton's method did not converge; the scales may be extreme "
        f"(relative residual {np.linalg.norm(Z @ rho - y) / scale:.3g})."
    )


def min_norm_interpolant(Z, y, p: int = 2, weights=None):
    """``argmin sum_j w_j |rho_j|^p`` s.t. ``Z rho = y``, for ``p = 2`` (weighted lstsq) or ``p =
    1`` (LP)."""
    Z = np.asarray(Z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m = Z.shape[1]
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if p == 2:
        d = 1.0 / np.sqrt(w)
        return d * (np.linalg.pinv(Z * d) @ y)
    if p == 1:
        import scipy.optimize

        res = scipy.optimize.linprog(
            np.concatenate([w, w]),
            A_eq=np.hstack([Z, -Z]),
            b_eq=y,
            bounds=(0, None),
            method="highs",
        )
        if res.status != 0:
            raise RuntimeError(f"the weighted-l1 interpolation LP failed: {res.message}")
        return res.x[:m] - res.x[m:]
    raise InvalidInput(f"p must be 1 or 2, got {p}.")


def _check_margins(Z, y):
    Z = np.asarray(Z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if Z.ndim != 2 or y.shape != (Z.shape[0],):
        raise InvalidInput(f"need Z of shape (n, m) and y of shape (n,), got {Z.shape}, {y.shape}.")
    if not set(np.unique(y)) <= {-1.0, 1.0}:
        raise InvalidInput("labels must be in {-1, +1}.")
    return Z, y


def l1_max_margin(Z, y):
    """The l1-SVM ``min ||rho||_1`` s.t. ``y_i Z_i . rho >= 1``, by ``scipy.optimize.linprog``.

    **Returns:** ``(rho, margin)``: the unit-l1 direction and the optimal l1 margin
    ``max_{||rho||_1 = 1} min_i y_i Z_i . rho = 1 / OPT``.
    """
    Z, y = _check_margins(Z, y)
    m = Z.shape[1]
    A = -(y[:, None] * np.hstack([Z, -Z]))
    import scipy.optimize

    res = scipy.optimize.linprog(
        np.ones(2 * m), A_ub=A, b_ub=-np.ones(Z.shape[0]), bounds=(0, None), method="highs"
    )
    if res.status == 2:
        raise ValueError("the data are not linearly separable in the transformed space.")
    if res.status != 0:
        raise RuntimeError(f"the l1-SVM LP failed: {res.message}")
    rho = res.x[:m] - res.x[m:]
    return rho / np.sum(np.abs(rho)), 1.0 / res.fun


def group_max_margin(Z, y, groups=None):
    """The optimal margin of ``min sum_G |rho_G|`` s.t. ``y_i Z_i . rho >= 1``, through its dual.

    Dual (derived): ``max sum_i lambda_i`` s.t. ``|(Z^T (lambda o y))_G| <= 1``, ``lambda >= 0``,
    solved with SLSQP. One group over all coordinates is the l2-SVM; groups of one, the l1-SVM.

    **Returns:** ``(margin, lam)``, ``margin = 1 / OPT``. For one group the primal direction is
    ``Z^T (lam o y)`` (normalized).
    """
    Z, y = _check_margins(Z, y)
    n, m = Z.shape
    g = _groups(groups, m)
    G = g.max() + 1
    A = Z.T * y  # (m, n)

    def cons(lam):
        v = A @ lam
        return 1.0 - np.bincount(g, weights=v * v, minlength=G)

    def cons_jac(lam):
        v = A @ lam
        J = np.zeros((G, n))
        np.add.at(J, g, 2.0 * v[:, None] * A)
        return -J

    import scipy.optimize

    res = scipy.optimize.minimize(
        lambda lam: -np.sum(lam),
        np.full(n, 1e-3),
        jac=lambda lam: -np.ones(n),
        bounds=[(0, None)] * n,
        constraints=[{"type": "ineq", "fun": cons, "jac": cons_jac}],
        method="SLSQP",
        options={"maxiter": 1000, "ftol": 1e-14},
    )
    # SLSQP may end with "positive directional derivative" at the optimum (rounding): accept a
    # feasible point then.
    if not (res.success or (res.status == 8 and cons(res.x).min() >= -1e-8)):
        raise RuntimeError(f"the group max-margin dual failed: {res.message}")
    return 1.0 / np.sum(res.x), res.x


def tensor_margin(rho, Z, y, depth: int, groups=None) -> float:
    """Normalized margin ``min_i y_i Z_i . rho / (sum_G |rho_G|^{2/L})^{L/2}``."""
    rho = np.asarray(rho, dtype=np.float64)
    q = np.asarray(y) * (np.asarray(Z) @ rho)
    norm = np.sum(group_norms(rho, groups) ** (2.0 / depth)) ** (depth / 2.0)
    return float(q.min() / norm)


def tensor_kkt_residual(
    rho, Z, y, depth: int, groups=None, *, support_tol: float = 1e-2, active_tol: float = 1e-2
) -> dict:
    """How far ``rho``'s direction is from a KKT point of ``min sum_G |rho_G|^{2/L}`` s.t. margins
    ``>= 1``.

    ``rho`` is scaled to minimum margin 1. Multipliers ``lam >= 0`` live on the active points
    (``q_i <= 1 + active_tol``), so complementary slackness holds by construction. On the support
    (``|rho_G| > support_tol max |rho_G|``) stationarity reads
    ``(2/L) |rho_G|^{2/L - 2} rho_G = (Z^T (lam o y))_G``; ``lam`` is the NNLS fit. Off the
    support it is void for ``L > 2``; for ``L = 2`` it needs ``|(Z^T (lam o y))_G| <= 1``.

    **Returns:** a dict with `stationarity` (relative residual on the support),
    `dual_infeasibility` (``L = 2``: the excess of ``max |(Z^T (lam o y))_G|`` over 1 off the
    support; else 0), `support` (number of groups), `active` (number of points) and `lam`.
    """
    Z, y = _check_margins(Z, y)
    rho = np.asarray(rho, dtype=np.float64)
    g = _groups(groups, rho.size)
    q = y * (Z @ rho)
    if q.min() <= 0:
        raise ValueError("rho does not separate the data (some margin <= 0); train longer.")
    rho = rho / q.min()
    q = q / q.min()
    active = q <= 1.0 + active_tol
    norms = group_norms(rho, g)
    on = norms > support_tol * norms.max()
    coords = on[g]
    p = 2.0 / depth
    grad = p * norms[g] ** (p - 2) * rho
    A = (Z.T * y)[:, active]
    import scipy.optimize

    lam_a, _ = scipy.optimize.nnls(A[coords], grad[coords], maxiter=50 * Z.shape[0])
    resid = np.linalg.norm(A[coords] @ lam_a - grad[coords]) / np.linalg.norm(grad[coords])
    lam = np.zeros(Z.shape[0])
    lam[active] = lam_a
    infeas = 0.0
    if depth == 2 and np.any(~on):
        v = A @ lam_a
        off = np.sqrt(np.bincount(g, weights=v * v))[~on]
        infeas = float(max(off.max() - 1.0, 0.0))
    return {
        "stationarity": float(resid),
        "dual_infeasibility": infeas,
        "support": int(on.sum()),
        "active": int(active.sum()),
        "lam": lam,
    }
