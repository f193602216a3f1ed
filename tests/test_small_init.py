"""Small-initialization dynamics: NCF KKT points, alignment, first saddle, inactive norms.

References: finite differences of a numpy NCF, the closed form of a one-unit KKT point,
scipy's SLSQP on the sphere and BFGS on the reduced (one-unit) loss.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import wnjax
from wnjax.small_init._ncf import trainable_vector

N_POINTS, DIM, WIDTH = 100, 6, 10
SQUARE = wnjax.Square(mean=True)


@functools.cache
def problem():
    """docs/theory.md §7: ReLU^2 student of width 10, teacher relu(x1)^2 - 0.5 relu(x2)^2."""
    X, y = wnjax.small_init.relu2_teacher_data(jax.random.key(0), n=N_POINTS, d=DIM)
    model = wnjax.MLP(DIM, WIDTH, 2, activation="relu2", key=jax.random.key(1))
    return X, y, model, wnjax.small_init.ncf_kkt_point(model, X, y)


def _np_weights(model):
    m = wnjax.to_standard(model)
    return np.asarray(m.layers[0].weight), np.asarray(m.layers[1].weight)[0]


def _np_ncf(W1, a, X, y):
    """N = sum_i y_i sum_j a_j relu(w_j . x_i)^2, written out in numpy."""
    return float(y @ (np.maximum(X @ W1.T, 0.0) ** 2 @ a))


@functools.cache
def flow_run(delta):
    """Gradient flow from ||w(0)|| = delta, into the first saddle plateau."""
    X, y, model, kkt = problem()
    t1 = 1.3 * N_POINTS * float(kkt.escape_integral) / delta
    r = wnjax.gradient_flow(
        wnjax.small_init.scale_to_norm(model, delta),
        X,
        y,
        loss=SQUARE,
        t1=t1,
        save_ts=wnjax.small_init.log_save_times(t1, 1500, 7),
        rtol=1e-10,
        atol=1e-14,
        max_steps=200_000,
        diagnostics=False,
    )
    return r, wnjax.small_init.diagnostics(r.ts, r.log_loss, r.states, kkt, delta)


@pytest.mark.slow
def test_kkt_point_residual_sparsity_closed_form():
    X, y, _, kkt = problem()
    Xn, yn = np.asarray(X), np.asarray(y)
    assert bool(kkt.ok) and float(kkt.residual) < 1e-9
    W1, a = _np_weights(kkt.u)
    u = np.concatenate([W1.ravel(), a])
    assert abs(np.linalg.norm(u) - 1) < 1e-12
    # Central differences of the numpy NCF: grad N(u*) = 3 N(u*) u*.
    h, grad = 1e-6, np.zeros_like(u)
    for k in range(u.size):
        e = np.zeros_like(u)
        e[k] = h
        up, um = u + e, u - e
        grad[k] = (
            _np_ncf(up[:-WIDTH].reshape(WIDTH, DIM), up[-WIDTH:], Xn, yn)
            - _np_ncf(um[:-WIDTH].reshape(WIDTH, DIM), um[-WIDTH:], Xn, yn)
        ) / (2 * h)
    value = _np_ncf(W1, a, Xn, yn)
    assert abs(value - float(kkt.value)) < 1e-12
    assert np.linalg.norm(grad - 3 * value * u) / np.linalg.norm(grad) < 1e-7
    # 1-sparse in units (docs/theory.md §7).
    units = np.sqrt(np.sum(W1**2, axis=1) + a**2)
    active = units > 1e-3
    assert active.sum() == 1 and np.all(units[~active] < 1e-8)
    j = int(np.flatnonzero(active)[0])
    # One-unit KKT point of max a f(b), a^2 + |b|^2 = 1: a^2 = 1/3, |b|^2 = 2/3,
    # N* = 2/(3 sqrt 3) max_{|b|=1} f(b), and b/|b| is a local max of f on the sphere.
    assert abs(a[j] ** 2 - 1 / 3) < 1e-9 and abs(W1[j] @ W1[j] - 2 / 3) < 1e-9
    f = lambda b: float(yn @ np.maximum(Xn @ b, 0.0) ** 2)  # noqa: E731
    b0 = W1[j] / np.linalg.norm(W1[j])
    sol = scipy.optimize.minimize(
        lambda b: -f(b),
        b0 + 0.02 * np.random.default_rng(0).normal(size=DIM),
        method="SLSQP",
        constraints=[{"type": "eq", "fun": lambda b: b @ b - 1}],
        options={"ftol": 1e-14},
    )
    assert sol.success
    assert abs(2 / (3 * np.sqrt(3)) * np.sign(a[j]) * -sol.fun - value) < 1e-6 * abs(value)
    assert float(wnjax.small_init.kkt_residual(kkt.u, X, y)) < 1e-9


@pytest.mark.slow
def test_second_order_matches_finite_differences():
    X, y, _, kkt = problem()
    so = wnjax.small_init.ncf_second_order(kkt.u, X, y)
    assert so.kind == "strict local max"
    eig = np.asarray(so.eigenvalues)
    assert eig.size == kkt.vector.size - 1 and eig.max() < 0
    w, build = trainable_vector(kkt.u)
    u = np.asarray(w)
    N = lambda v: float(
        wnjax.small_init.neural_correlation(build(jnp.asarray(v / np.linalg.norm(v))), X, y)
    )  # noqa: E731
    rng = np.random.default_rng(1)
    eps = 1e-4
    for _ in range(4):
        v = rng.normal(size=u.size)
        v -= (v @ u) * u
        v /= np.linalg.norm(v)
        # At a KKT point d^2/de^2 N(R(u + e v)) is the Riemannian Hessian's quadratic form.
        second = (N(u + eps * v) + N(u - eps * v) - 2 * N(u)) / eps**2
        assert eig.min() - 1e-5 <= second <= eig.max() + 1e-5
    # A non-KKT direction has a large residual and is flagged.
    assert (
        float(
            wnjax.small_init.kkt_residual(wnjax.small_init.scale_to_norm(problem()[2], 1.0), X, y)
        )
        > 1e-2
    )


@pytest.mark.slow
def test_early_alignment_and_escape_time():
    X, y, _, kkt = problem()
    r, d = flow_run(1e-3)
    assert bool(r.ok)
    assert d.cos_at_escape > 0.99
    # The cosine is read while the loss is still within 1% of its start.
    before = np.flatnonzero(d.ts < d.escape_time)[-1]
    assert np.exp(d.log_loss[before] - d.log_loss[0]) > 0.99
    # Leading order: T = n I / delta (dw/dt = grad N / n near the origin), error O(delta).
    pred = N_POINTS * float(kkt.escape_integral) / 1e-3
    assert abs(d.escape_time / pred - 1) < 0.02  # from the log-spaced save grid
    T, _ = wnjax.small_init.flow_escape_time(
        wnjax.small_init.scale_to_norm(problem()[2], 1e-3), X, y, t1=1.5 * pred, loss=SQUARE
    )
    assert abs(T / pred - 1) < 5e-3


@pytest.mark.slow
def test_first_plateau_matches_reduced_network():
    X, y, _, kkt = problem()
    _, d = flow_run(1e-3)
    assert d.saddles, "no plateau after the escape"
    plateau = np.exp(d.saddles[0].log_loss)
    red = wnjax.small_init.reduced_network(kkt, X, y, loss=SQUARE, scale=1e-3)
    assert float(red.grad_norm) < 1e-8
    assert abs(np.exp(float(red.log_loss)) / plateau - 1) < 1e-4
    # Independent reference: BFGS on the one-unit loss from u*'s unit, in numpy.
    W1, a = _np_weights(kkt.u)
    j = int(np.argmax(np.abs(a)))
    Xn, yn = np.asarray(X), np.asarray(y)

    def loss(p):
        r = p[0] * np.maximum(Xn @ p[1:], 0.0) ** 2 - yn
        return 0.5 * np.mean(r * r)

    sol = scipy.optimize.minimize(
        loss, np.concatenate([[a[j]], W1[j]]), method="BFGS", options={"gtol": 1e-12}
    )
    assert abs(sol.fun / plateau - 1) < 1e-4


@pytest.mark.slow
def test_inactive_norms_scale_with_delta():
    _, d2 = flow_run(1e-2)
    _, d3 = flow_run(1e-3)
    assert d2.inactive_norms is not None and d3.inactive_norms is not None
    ratio = d2.inactive_norms / d3.inactive_norms
    assert np.all(np.abs(ratio / 10 - 1) < 0.2), ratio
