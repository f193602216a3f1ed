"""The zoo's ReLU^2 KKT problem and EWN/SWN on custom modules, and their references.

Each problem runs at size 'test' against its own reference. The references are checked against
facts that do not go through them: the hand-written margins, gradients and convolution against
JAX on the problems' own modules, the ODE solves against an integrator of another family
(LSODA), and a known KKT point of a one-neuron ReLU^2 net. The max-margin problems are in
``test_problems.py``.
"""

import types

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from zoo_runs import make, solve

from wnjax import problems
from wnjax.problems import _linear as zoo

NAMES = ["relu2-kkt", "ewn-custom", "swn-custom"]


def test_all_registered():
    assert set(NAMES) <= set(problems.names())


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_problem_passes_at_test_size(name):
    problem, r, _ = solve(name)
    assert r.passed, (r.message, r.error, r.tolerance)
    assert r.error <= problem.tolerance
    if problem.target_log_loss is not None:
        assert r.reached_target
        assert r.final_log_loss == pytest.approx(problem.target_log_loss, rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_error_rejects_the_start(name):
    """The check can fail: the initial weights are far from every prediction (the ReLU^2 KKT
    residual is at most 1, so there the factor is smaller)."""
    problem = make(name)
    factor = 1.5 if name == "relu2-kkt" else 10.0
    assert problem.error(types.SimpleNamespace(final=problem.model)) > factor * problem.tolerance


# --------------------------------------------------------------------------------------------
# ReLU^2 KKT reference.


def test_relu2_margins_match_jax():
    p = make("relu2-kkt")
    X, y = jnp.asarray(p.X), jnp.asarray(p.y)
    W1, a = p.model.layers[0].weight, p.model.layers[1].weight

    def margins(W1, a):
        net = eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[1].weight), p.model, (W1, a))
        return y * jax.vmap(net)(X)[:, 0]

    q, G = zoo.relu2_margins(W1, a[0], p.X, p.y)
    gW, ga = jax.jacrev(margins, argnums=(0, 1))(W1, a)
    np.testing.assert_allclose(q, margins(W1, a), rtol=1e-12)
    np.testing.assert_allclose(
        G, np.concatenate([gW.reshape(len(q), -1), ga[:, 0]], axis=1), rtol=1e-10, atol=1e-12
    )


def test_relu2_kkt_residual_at_a_known_kkt_point():
    """One neuron, one point: min r^2 + a^2 s.t. a r^2 ||x||^2 >= 1 has its KKT point at
    w = r x/||x||, r^2 = 2 a^2, a^3 = 1/(2 ||x||^2)."""
    x = np.array([[0.6, -1.2, 0.3]])
    a = (2 * np.sum(x**2)) ** (-1 / 3)
    w = np.sqrt(2) * a * x / np.linalg.norm(x)
    assert zoo.relu2_kkt_residual(w, [a], x, [1.0])["stationarity"] < 1e-12
    assert zoo.relu2_kkt_residual(3.0 * w, [3.0 * a], x, [1.0])["stationarity"] < 1e-12
    assert zoo.relu2_kkt_residual(w, [2 * a], x, [1.0])["stationarity"] > 0.1
    tilted = w + 0.3 * np.linalg.norm(w) * np.array([[0.0, 0.24, 0.96]])  # 0.24, 0.96 _|_ x
    assert zoo.relu2_kkt_residual(tilted, [a], x, [1.0])["stationarity"] > 0.1
    assert zoo.relu2_kkt_residual(w, [-a], x, [1.0])["stationarity"] == np.inf


@pytest.mark.slow
def test_relu2_residual_falls_and_margin_rises():
    problem, r, flow = solve("relu2-kkt")
    start = problem.reference(problem.model)
    end = problem.reference(flow.final)
    assert end["stationarity"] == r.error
    assert start["stationarity"] > 2 * end["stationarity"]
    assert end["normalized_margin"] > start["normalized_margin"]


# --------------------------------------------------------------------------------------------
# EWN/SWN references: hand-written gradients and two integrators.


def _jax_grad(net, X, y):
    def loss(net):
        return jnp.sum(jnp.exp(-jnp.asarray(y) * jax.vmap(net)(jnp.asarray(X))[:, 0]))

    return jax.grad(loss)(net)


def test_two_layer_gradient_matches_jax():
    p = make("ewn-custom")
    net = p.model.standard()
    g = _jax_grad(net, p.X, p.y)
    W1, a = np.asarray(net.hidden.weight), np.asarray(net.readout.weight)[0]
    gW, ga = zoo.two_layer_gradient(W1, a, p.X, p.y)
    np.testing.assert_allclose(gW, g.hidden.weight, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(ga, g.readout.weight[0], rtol=1e-10, atol=1e-13)


def test_conv_patches_and_gradient_match_jax():
    p = make("swn-custom")
    net = p.model.standard()
    K = np.asarray(net.conv.weight)
    P = zoo.conv_patches(p.X)
    conv = jax.vmap(net.conv)(jnp.asarray(p.X))  # (n, filters, length)
    np.testing.assert_allclose(
        P @ K.reshape(K.shape[0], -1).T, np.transpose(conv, (0, 2, 1)), rtol=1e-12, atol=1e-13
    )
    g = _jax_grad(net, p.X, p.y)
    gK, gh = zoo.conv_gradient(K.reshape(K.shape[0], -1), np.asarray(net.head.weight)[0], P, p.y)
    np.testing.assert_allclose(gK.reshape(K.shape), g.conv.weight, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(gh, g.head.weight[0], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["ewn-custom", "swn-custom"])
def test_induced_flow_reference_agrees_with_lsoda(name):
    """The reference (DOP853) against an integrator of another family (LSODA: Adams/BDF)."""
    p = make(name)
    net = p.model.standard()
    lsoda = {"method": "LSODA", "rtol": 1e-12, "atol": 1e-14}
    if name == "ewn-custom":
        other = zoo.two_layer_induced(
            p.X,
            p.y,
            net.hidden.weight,
            net.readout.weight,
            p.flow_options["t1"],
            zoo.ewn_rate,
            **lsoda,
        )
    else:
        other = zoo.conv_induced(
            p.X, p.y, net.conv.weight, net.head.weight, p.flow_options["t1"], zoo.swn_rate, **lsoda
        )
    assert zoo.relative_difference(other, p.reference) < 1e-8


def test_equivalence_references_tell_the_flows_apart():
    """The tolerance separates EWN's induced flow from the plain one, and SWN's from EWN's (SWN
    is not a per-neuron rescaling of the gradient)."""
    e = make("ewn-custom")
    net = e.model.standard()
    plain = zoo.two_layer_induced(
        e.X, e.y, net.hidden.weight, net.readout.weight, e.flow_options["t1"], lambda w, g: -g
    )
    assert zoo.relative_difference(plain, e.reference) > 1e3 * e.tolerance
    s = make("swn-custom")
    net = s.model.standard()
    other = zoo.conv_induced(
        s.X, s.y, net.conv.weight, net.head.weight, s.flow_options["t1"], zoo.ewn_rate
    )
    assert zoo.relative_difference(other, s.reference) > 1e3 * s.tolerance
