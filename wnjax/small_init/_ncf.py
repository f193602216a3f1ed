"""The neural correlation function (NCF) of a homogeneous net and its KKT points.

For an ``L``-homogeneous net ``H(x; w)`` and targets ``y`` the NCF is ``N(u) = y^T H(X; u)``
(summed over points and outputs). Near the origin, gradient flow on the square loss is
``dw/dt ~ c grad N(w)`` (``c = 1/n`` for the mean loss), so the direction ``u = w/||w||``
follows the spherical NCF flow

    du/ds = grad N(u) - (u . grad N(u)) u = grad N(u) - L N(u) u,      ds = c ||w||^(L-2) dt,

and converges to a KKT point ``u*`` of ``max N(u) s.t. ||u|| = 1``: ``grad N(u*) = L N(u*) u*``.
Meanwhile ``d log ||w|| / ds = L N(u)``, which fixes the escape time (``KKTPoint.escape_integral``).

``u`` is the vector of all trainable layer weights (frozen layers stay fixed and are not part of
``u``); EWN/SWN layers are read as their plain weights ``w``.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from wnjax._nets.models import homogeneity_degree
from wnjax._nets.neurons import has_bias
from wnjax._nets.parameterize import (
    Parameterized,
    Standard,
    as_parameterized,
    restore_type,
    scale_trainable,
)
from wnjax._runtime.errors import InvalidInput


class WeightBuilder(eqx.Module):
    """``build(v)``: the model with its trainable layer weights read from the flat vector ``v``."""

    template: Parameterized
    index: tuple[int, ...] = eqx.field(static=True)
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)

    def __call__(self, v: Array) -> Parameterized:
        layers = list(self.template.layers)
        start = 0
        for i, shape in zip(self.index, self.shapes):
            size = int(np.prod(shape))
            layers[i] = Standard(v[start : start + size].reshape(shape))
            start += size
        return Parameterized(skeleton=self.template.skeleton, layers=tuple(layers))


def trainable_vector(model: PyTree) -> tuple[Array, WeightBuilder]:
    """The trainable layer weights as one flat vector ``w``, and ``build(w) -> model``.

    Frozen layers are kept as they are; EWN/SWN layers become plain (``Standard``) weights.

    **Returns:** ``(w, build)``; ``build(v)`` is the ``Parameterized`` model with weights ``v``.
    """
    p = scale_trainable(as_parameterized(model), 1.0)
    if has_bias(p.standard()):
        raise InvalidInput(
            "the model has biases, so it is not homogeneous and has no NCF. Build it without "
            "biases (wnjax.MLP(..., hidden_bias=False))."
        )
    idx = tuple(i for i, layer in enumerate(p.layers) if isinstance(layer, Standard))
    if not idx:
        raise InvalidInput("the model has no trainable layer: every layer is frozen.")
    ws = [p.layers[i].w for i in idx]
    flat = jnp.concatenate([w.ravel() for w in ws])
    return flat, WeightBuilder(p, idx, tuple(tuple(w.shape) for w in ws))


def _ncf_value(build, v: Array, X: Array, y: Array) -> Array:
    out = jax.vmap(build(v))(X)
    return jnp.vdot(jnp.reshape(y, out.shape).astype(out.dtype), out)


def neural_correlation(model: PyTree, X: Array, y: Array) -> Array:
    """``N(w) = y^T H(X; w) = sum_i <y_i, H(x_i; w)>`` at the model's weights.

    **Arguments:**
    - `model`: any bias-free wnjax/equinox model, or a ``Parameterized`` one.
    - `X`, `y`: inputs ``(n, ...)`` and targets ``(n,)`` or ``(n, out)``.

    **Returns:** the scalar ``N``.
    """
    w, build = trainable_vector(model)
    return _ncf_value(build, w, jnp.asarray(X), jnp.asarray(y))


def trainable_degree(model: PyTree, X: Array, *, rtol: float = 1e-6) -> float:
    """Homogeneity degree in the trainable weights: ``H(2w) = 2^L H(w)``, so ``L = log2
    |H(2w)/H(w)|``.

    Frozen layers are not scaled (a net with a frozen output layer is 2-homogeneous in its
    first layer, say); this is ``wnjax.homogeneity_degree`` at ``c = 2``. Raises
    ``ValueError`` if the estimates disagree across examples.
    """
    return homogeneity_degree(model, X, scales=(2.0,), rtol=rtol)


def _residual(g: Array, u: Array) -> Array:
    """``||grad N - (u . grad N) u|| / ||grad N||`` at a unit ``u`` (``u . grad N = L N(u)``)."""
    return jnp.linalg.norm(g - jnp.vdot(u, g) * u) / jnp.linalg.norm(g)


def kkt_residual(model: PyTree, X: Array, y: Array, *, degree: float | None = None) -> Array:
    """The KKT residual ``||grad N(u) - L N(u) u|| / ||grad N(u)||`` at ``u = w/||w||``.

    **Arguments:**
    - `model`: the point ``u`` as a model (its weights are normalized first).
    - `X`, `y`: the data.
    - `degree`: ``L``; measured with ``trainable_degree`` if ``None``.

    **Returns:** the residual (0 exactly at a KKT point of ``max N(u) s.t. ||u|| = 1``).
    """
    w, build = trainable_vector(model)
    X, y = jnp.asarray(X), jnp.asarray(y)
    L = trainable_degree(model, X) if degree is None else degree
    u = w / jnp.linalg.norm(w)
    value, g = jax.value_and_grad(lambda v: _ncf_value(build, v, X, y))(u)
    return jnp.linalg.norm(g - L * value * u) / jnp.linalg.norm(g)


class KKTPoint(eqx.Module):
    """The limit ``u*`` of the spherical NCF flow, with its certificates.

    - `u`: ``u*`` as a model of the input's type (weights of unit norm);
    - `vector`: ``u*`` as a flat vector of the trainable weights;
    - `value`: ``N(u*)``;
    - `residual`: ``||grad N - L N(u*) u*|| / ||grad N||``;
    - `degree`: ``L``;
    - `s`: NCF-flow time at which the flow stopped (residual ``flow_tol``, or ``s1``);
    - `escape_integral`: ``I = int_0^inf exp(-(L-2) L Phi(s)) ds`` with ``Phi(s) = int_0^s N(u)``
      (``nan`` for ``L <= 2``). Gradient flow from ``w(0) = delta u(0)`` on a loss with
      ``dw/dt ~ c grad N`` escapes the origin (blows up, to leading order) at
      ``T = I / (c delta^(L-2))``;
    - `log_growth`: ``L Phi(s)``, ``log(||w(s)|| / ||w(0)||)`` at the end of the NCF flow;
    - `num_steps`: solver steps; `ok`: the residual reached ``tol``.
    """

    u: PyTree
    vector: Array
    value: Array
    residual: Array
    degree: float = eqx.field(static=True)
    s: Array
    escape_integral: Array
    log_growth: Array
    num_steps: Array
    ok: Array


def ncf_kkt_point(
    model: PyTree,
    X: Array,
    y: Array,
    *,
    tol: float = 1e-10,
    flow_tol: float = 1e-6,
    newton_steps: int = 4,
    s1: float = 1e4,
    degree: float | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    max_steps: int = 100_000,
) -> KKTPoint:
    """Follow the spherical NCF flow ``du/ds = grad N(u) - (u . grad N(u)) u`` from ``u(0) =
    w/||w||``.

    This is the direction that gradient flow from ``delta w`` follows near the origin, so the
    KKT point it reaches is the one gradient flow converges to as ``delta -> 0``. The flow stops
    once the KKT residual falls below ``flow_tol`` (or at ``s1``); Riemannian Newton steps then
    polish ``u*`` to machine precision (an explicit solver stalls near the stable point at about
    its own tolerance). Along the flow, ``Phi(s) = int N(u) ds`` and the escape integral are
    integrated too (see ``KKTPoint``).

    **Arguments:**
    - `model`: the initial direction, as a model (any norm).
    - `X`, `y`: the data.
    - `tol`: ``ok`` when the final ``||grad N - L N u|| / ||grad N|| <= tol``.
    - `flow_tol`: stop the flow at this residual and hand over to Newton.
    - `newton_steps`: Riemannian Newton steps after the flow (each forms the ``m x m`` Hessian of
      ``N``; pass 0 for large models).
    - `s1`: the longest NCF time to integrate.
    - `degree`: ``L``; measured if ``None``.
    - `rtol`, `atol`: tolerances of diffrax's PID controller (Tsit5).
    - `max_steps`: the solver's step budget.

    **Returns:** a ``KKTPoint``.
    """
    w0, build = trainable_vector(model)
    X, y = jnp.asarray(X), jnp.asarray(y)
    L = trainable_degree(model, X) if degree is None else float(degree)
    if not float(jnp.linalg.norm(w0)) > 0:
        raise InvalidInput("the initial weights are zero, so they have no direction.")
    vec, value, res, s, integral, growth, steps = _kkt_solve(
        build,
        w0 / jnp.linalg.norm(w0),
        X,
        y,
        jnp.asarray(max(flow_tol, tol)),
        jnp.asarray(s1),
        jnp.asarray(rtol),
        jnp.asarray(atol),
        L=L,
        max_steps=int(max_steps),
        newton_steps=int(newton_steps),
    )
    if L > 2:
        # Past the stopping time N(u) = N(u*), so the tail integrates in closed form.
        k = (L - 2) * L
        tail = jnp.where(value > 0, jnp.exp(-(L - 2) * growth) / (k * value), jnp.inf)
        integral = integral + tail
    else:
        integral = jnp.asarray(jnp.nan)
    ok = res <= tol
    return KKTPoint(
        u=restore_type(build(vec), model),
        vector=vec,
        value=value,
        residual=res,
        degree=L,
        s=s,
        escape_integral=integral,
        log_growth=growth,
        num_steps=steps,
        ok=ok,
    )


@eqx.filter_jit
def _kkt_solve(build, u0, X, y, tol, s1, rtol, atol, *, L, max_steps, newton_steps):
    ncf = lambda v: _ncf_value(build, v, X, y)  # noqa: E731

    def field(s, state, args):
        u, phi, integral = state
        uh = u / jnp.linalg.norm(u)
        value, g = jax.value_and_grad(ncf)(uh)
        du = g - jnp.vdot(uh, g) * uh
        dintegral = jnp.exp(-(L - 2) * L * phi) if L > 2 else jnp.zeros_like(phi)
        return du, value, dintegral

    def cond(s, state, args, **kwargs):
        uh = state[0] / jnp.linalg.norm(state[0])
        return _residual(jax.grad(ncf)(uh), uh) <= tol

    zero = jnp.zeros((), u0.dtype)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        t0=zero,
        t1=s1,
        dt0=None,
        y0=(u0, zero, zero),
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        event=diffrax.Event(cond),
        max_steps=max_steps,
        throw=False,
    )
    u, phi, integral = (x[-1] for x in sol.ys)
    u = u / jnp.linalg.norm(u)
    if newton_steps:
        u = _newton_polish(ncf, u, newton_steps)
    value, g = jax.value_and_grad(ncf)(u)
    return u, value, _residual(g, u), sol.ts[-1], integral, L * phi, sol.stats["num_steps"]


def _newton_polish(ncf, u: Array, steps: int) -> Array:
    """Riemannian Newton steps on the sphere: solve ``(P (grad^2 N - lam I) P + u u^T) d = -(g - lam
    u)``.

    ``lam = u . grad N``; the ``u u^T`` term makes the system regular in the normal direction,
    so ``d`` lies in ``u^perp``. A step is kept only if it lowers the KKT residual.
    """

    def step(u, _):
        g = jax.grad(ncf)(u)
        lam = jnp.vdot(u, g)
        P = jnp.eye(u.size, dtype=u.dtype) - jnp.outer(u, u)
        A = P @ (jax.hessian(ncf)(u) - lam * jnp.eye(u.size, dtype=u.dtype)) @ P + jnp.outer(u, u)
        d = jnp.linalg.solve(A, -(g - lam * u))
        new = (u + d) / jnp.linalg.norm(u + d)
        better = _residual(jax.grad(ncf)(new), new) < _residual(g, u)
        return jnp.where(better & jnp.all(jnp.isfinite(new)), new, u), None

    return jax.lax.scan(step, u, None, length=steps)[0]


class SecondOrder(eqx.Module):
    """Second-order check of ``max N(u) s.t. ||u|| = 1`` at a KKT point.

    - `eigenvalues`: of the Riemannian Hessian ``P (grad^2 N(u) - (u . grad N) I) P`` on the
      tangent space ``u^perp`` (ascending, ``m - 1`` of them);
    - `kind`: ``'strict local max'`` (all ``< -tol``), ``'local max (degenerate)'`` (all
      ``<= tol``), ``'local min'`` / ``'local min (degenerate)'``, or ``'saddle'``.
    """

    eigenvalues: Array
    kind: str = eqx.field(static=True)


def ncf_second_order(model: PyTree, X: Array, y: Array, *, tol: float = 1e-8) -> SecondOrder:
    """Eigenvalues of the Riemannian Hessian of ``N`` on the unit sphere at ``u = w/||w||``.

    ``Hess N(u) = P (grad^2 N(u) - (u . grad N(u)) I) P`` with ``P = I - u u^T``; a KKT point is a
    strict local maximum of ``N`` on the sphere when all its tangent eigenvalues are negative.

    **Arguments:**
    - `model`: the point ``u`` as a model (normalized first).
    - `X`, `y`: the data.
    - `tol`: eigenvalues within ``tol * max(1, |lambda|_max)`` of zero count as zero.

    **Returns:** a ``SecondOrder``.
    """
    w, build = trainable_vector(model)
    X, y = jnp.asarray(X), jnp.asarray(y)
    u = w / jnp.linalg.norm(w)
    ncf = lambda v: _ncf_value(build, v, X, y)  # noqa: E731
    g = jax.grad(ncf)(u)
    hess = np.asarray(jax.hessian(ncf)(u), dtype=np.float64)
    un = np.asarray(u, dtype=np.float64)
    # Orthonormal basis of u^perp: the last m-1 left singular vectors of [u].
    basis = np.linalg.svd(un[:, None], full_matrices=True)[0][:, 1:]
    riem = basis.T @ (hess - float(jnp.vdot(u, g)) * np.eye(un.size)) @ basis
    eig = np.linalg.eigvalsh(0.5 * (riem + riem.T))
    scale = tol * max(1.0, float(np.max(np.abs(eig))))
    if np.all(eig < -scale):
        kind = "strict local max"
    elif np.all(eig <= scale):
        kind = "local max (degenerate)"
    elif np.all(eig > scale):
        kind = "local min"
    elif np.all(eig >= -scale):
        kind = "local min (degenerate)"
    else:
        kind = "saddle"
    return SecondOrder(eigenvalues=jnp.asarray(eig), kind=kind)
