"""``dense`` and ``MLP.batched``: the batched forward equals ``jax.vmap(model)``, and its custom
gradient equals JAX's own gradient of the plain product and central finite differences."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import needs_default_codegen

import wnjax
import wnjax._nets.models
from wnjax._nets.dense import apply_batch, dense
from wnjax._nets.neurons import flat_weights


@pytest.fixture(autouse=True)
def always_dense(monkeypatch):
    """Small nets normally take the vmap path; these tests check the dense path itself. The
    threshold is read when a program is traced, so programs compiled under another threshold
    (by other test files in this process) are dropped before and after."""
    monkeypatch.setattr(wnjax._nets.models, "DENSE_MIN_MACS", 0)
    jax.clear_caches()
    yield
    jax.clear_caches()


def _data(n=9, d=4, seed=0):
    X = jax.random.normal(jax.random.key(seed), (n, d))
    y = jnp.where(X[:, 0] + 0.3 * X[:, 1] >= 0, 1.0, -1.0)
    return X, y


def _vmap_log_loss(model, X, y):
    """The reference: the per-example model vmapped over the points, JAX's own autodiff."""
    return wnjax.get_loss("exponential").log_loss(jax.vmap(model)(X), y)


def _assert_trees_close(new, ref, rtol, atol):
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def _batched_log_loss(model, X, y):
    """The path GD and flows differentiate: ``model.batched``."""
    return wnjax.get_loss("exponential").log_loss(apply_batch(model, X), y)


def test_dense_value_and_vjp_match_the_plain_product():
    X = jax.random.normal(jax.random.key(1), (7, 5))
    W = jax.random.normal(jax.random.key(2), (3, 5))
    G = jax.random.normal(jax.random.key(3), (7, 3))
    out, vjp = jax.vjp(dense, X, W)
    ref, vjp_ref = jax.vjp(lambda a, b: a @ b.T, X, W)
    np.testing.assert_allclose(out, ref, rtol=1e-14)
    for a, b in zip(vjp(G), vjp_ref(G)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)
    # The closed forms: dX = G W, dW = G^T X.
    dX, dW = vjp(G)
    np.testing.assert_allclose(dX, np.asarray(G) @ np.asarray(W), rtol=1e-13)
    np.testing.assert_allclose(dW, np.asarray(G).T @ np.asarray(X), rtol=1e-13)


@pytest.mark.parametrize(
    "activation, wrap",
    [
        ("linear", "plain"),
        ("relu", "plain"),
        ("relu2", "plain"),
        ("relu^3", "plain"),
        ("relu2", "swn"),
        ("relu", "ewn"),
        ("relu2", "ewn"),
    ],
)
def test_batched_outputs_and_gradients_match_vmap(activation, wrap):
    X, y = _data()
    m = wnjax.MLP(4, 6, 3, activation=activation, key=jax.random.key(4))
    m = {"plain": lambda m: m, "swn": wnjax.swn, "ewn": wnjax.ewn}[wrap](m)
    np.testing.assert_allclose(apply_batch(m, X), jax.vmap(m)(X), rtol=1e-13, atol=1e-15)
    p, s = eqx.partition(m, eqx.is_inexact_array)
    g = jax.grad(lambda q: _batched_log_loss(eqx.combine(q, s), X, y))(p)
    g_ref = jax.grad(lambda q: _vmap_log_loss(eqx.combine(q, s), X, y))(p)
    _assert_trees_close(g, g_ref, rtol=1e-12, atol=1e-14)


def test_batched_gradient_matches_finite_differences():
    X, y = _data()
    m = wnjax.MLP(4, 5, 2, activation="relu2", key=jax.random.key(5))
    W = m.layers[0].weight

    def f(w):
        return _batched_log_loss(eqx.tree_at(lambda t: t.layers[0].weight, m, w), X, y)

    g = jax.grad(f)(W)
    h = 1e-6
    for idx in [(0, 0), (2, 3), (4, 1)]:
        e = jnp.zeros_like(W).at[idx].set(h)
        fd = (f(W + e) - f(W - e)) / (2 * h)
        np.testing.assert_allclose(g[idx], fd, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_hessian_vector_products_and_seed_vmap_match():
    """Forward-over-reverse (what implicit ODE solvers do) and a vmap over seeds both agree
    with the reference path."""
    X, y = _data()
    keys = jax.random.split(jax.random.key(6), 3)
    ms = eqx.filter_vmap(lambda k: wnjax.ewn(wnjax.MLP(4, 5, 2, activation="relu2", key=k)))(keys)
    p, s = eqx.partition(ms, eqx.is_inexact_array)

    def grads(loss_fn):
        return jax.vmap(jax.grad(lambda q: loss_fn(eqx.combine(q, s), X, y)))(p)

    def hvp(loss_fn):
        g = lambda q: jax.grad(lambda r: loss_fn(eqx.combine(r, s), X, y))(q)  # noqa: E731
        return jax.vmap(lambda q: jax.jvp(g, (q,), (q,))[1])(p)

    for new, ref in [
        (grads(_batched_log_loss), grads(_vmap_log_loss)),
        (hvp(_batched_log_loss), hvp(_vmap_log_loss)),
    ]:
        _assert_trees_close(new, ref, rtol=1e-11, atol=1e-13)


def test_public_losses_keep_forward_mode():
    """``wnjax.log_loss``/``margins`` stay plain vmaps: ``jax.jacfwd`` works on them."""
    X, y = _data()
    m = wnjax.MLP(4, 5, 2, activation="relu2", key=jax.random.key(3))
    W = m.layers[0].weight
    f = lambda w: wnjax.margins(eqx.tree_at(lambda t: t.layers[0].weight, m, w), X, y)  # noqa: E731
    np.testing.assert_allclose(jax.jacfwd(f)(W), jax.jacrev(f)(W), rtol=1e-12, atol=1e-14)


def test_small_nets_take_the_vmap_path(monkeypatch):
    monkeypatch.setattr(wnjax._nets.models, "DENSE_MIN_MACS", 2**18)
    small = wnjax.MLP(4, 6, 2, activation="relu2", key=jax.random.key(9))
    big = wnjax.MLP(10, 64, 3, activation="relu2", key=jax.random.key(9))
    for m, X, dense_path in [
        (small, _data()[0], False),
        (big, jax.random.normal(jax.random.key(0), (256, 10)), True),
    ]:
        jaxpr = str(
            jax.make_jaxpr(
                jax.grad(
                    lambda w: jnp.sum(eqx.tree_at(lambda t: t.layers[0].weight, m, w).batched(X))
                )
            )(m.layers[0].weight)
        )
        assert ("platform_index" in jaxpr) == dense_path  # dense's CPU-only weight gradient
        np.testing.assert_allclose(m.batched(X), jax.vmap(m)(X), rtol=1e-12, atol=1e-14)


def test_hidden_bias_and_foreign_activation():
    X, _ = _data()
    m = wnjax.MLP(4, 6, 3, activation="relu", hidden_bias=True, key=jax.random.key(7))
    m = eqx.tree_at(lambda t: t.layers[0].bias, m, jnp.linspace(-1, 1, 6))
    np.testing.assert_allclose(m.batched(X), jax.vmap(m)(X), rtol=1e-13, atol=1e-15)
    # An activation that is not wnjax's own goes through jax.vmap unchanged.
    soft = wnjax.MLP(
        4, 6, 2, activation=lambda z: jnp.where(z > 0, z * z, 0.0), key=jax.random.key(8)
    )
    np.testing.assert_allclose(soft.batched(X), jax.vmap(soft)(X), rtol=1e-15)


@pytest.mark.slow
@needs_default_codegen
def test_gd_flow_and_seed_vmap_agree_on_both_paths(monkeypatch):
    """GD, a flow and a vmap over seeds give the same numbers whether the net goes through
    ``dense`` or through ``jax.vmap`` (forward-over-reverse, what implicit solvers need, is
    checked in ``test_hessian_vector_products_and_seed_vmap_match``)."""
    X, y = _data(n=12)
    m = wnjax.ewn(wnjax.MLP(4, 6, 2, activation="relu2", key=jax.random.key(11)))
    keys = jax.random.split(jax.random.key(12), 2)

    def runs():
        gd = wnjax.gradient_descent(
            m, X, y, num_steps=40, learning_rate=0.05, n_save=2, diagnostics=False
        )
        gf = wnjax.gradient_flow(
            m, X, y, t1=2.0, rtol=1e-10, atol=1e-12, n_save=2, solver="tsit5", diagnostics=False
        )
        seeds = jax.vmap(
            lambda k: (
                wnjax.traced_gradient_descent(
                    wnjax.ewn(wnjax.MLP(4, 6, 2, activation="relu2", key=k)),
                    X,
                    y,
                    num_steps=20,
                    learning_rate=0.05,
                    n_save=2,
                    diagnostics=False,
                ).final_log_loss
            )
        )(keys)
        return (
            flat_weights(wnjax.to_standard(gd.final)),
            flat_weights(wnjax.to_standard(gf.final)),
            seeds,
        )

    dense_runs = runs()  # DENSE_MIN_MACS = 0 (the fixture)
    monkeypatch.setattr(wnjax._nets.models, "DENSE_MIN_MACS", 2**62)
    jax.clear_caches()  # the threshold is read at trace time: compiled chunks must not be reused
    vmap_runs = runs()
    jax.clear_caches()
    gd, gf, seeds = dense_runs
    np.testing.assert_allclose(gd, vmap_runs[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(seeds, vmap_runs[2], rtol=1e-12, atol=1e-14)
    # The adaptive flow's step sequence can differ by a rounding-level flip (one step more or
    # less at rtol 1e-10): the two paths then agree to the integration error, far from a wrong
    # gradient. (Tsit5: the field is the same on both paths, whatever the solver.)
    np.testing.assert_allclose(gf, vmap_runs[1], rtol=1e-7, atol=1e-9)
