"""Gradient flow of ReLU nets: the field smooths ReLU's derivative at the kink (a Filippov
regularization), and the flow it gives follows gradient descent as the step vanishes."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import needs_default_codegen, slow_params

import wnjax
from wnjax._nets.models import kinked_relu, with_kink


def _data(seed, n=16, d=5):
    k1, k2 = jax.random.split(jax.random.key(seed))
    X = jax.random.normal(k1, (n, d))
    return X, jnp.sign(X @ jax.random.normal(k2, (d,)))


def _leaves(model):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))]


def _gd_weights(W1, W2, X, y, eta, t):
    """Gradient descent by hand on ``sum_i exp(-y_i w2 . relu(W1 x_i))`` (``jax.nn.relu``'s own
    derivative), ``t / eta`` steps: Euler's method on the flow, which converges to the Filippov
    solution as ``eta -> 0``."""

    def loss(W):
        return jnp.sum(jnp.exp(-y * (jax.nn.relu(X @ W[0].T) @ W[1].T)[:, 0]))

    def step(_, W):
        return jax.tree_util.tree_map(lambda a, g: a - eta * g, W, jax.grad(loss)(W))

    W = jax.jit(lambda W: jax.lax.fori_loop(0, round(t / eta), step, W))((W1, W2))
    return np.concatenate([np.ravel(a) for a in W])


def test_the_smoothed_derivative_is_relus_away_from_the_kink_and_half_on_it():
    """``kinked_relu`` is ReLU, exactly, from two widths on, and within them the integral of its
    slope (scipy's quadrature), positive wherever the slope is and at most ``5 width / 16``
    above ReLU; its derivative is 1/2 at ``z = 0`` (the midpoint of ReLU's subdifferential),
    rises monotonically, and is ReLU's own, exactly, from two widths on. Its second derivative
    (a Jacobian of the gradient, for the implicit solver) matches central differences of the
    first, and is continuous at the layer's edges."""
    from scipy.integrate import quad

    z = jnp.array([-1e3, -10.0, -2.0, -1.0, 0.0, 1.0, 2.0, 10.0, 1e3, 1e150])
    width = jnp.asarray(1.0)
    value = np.asarray(kinked_relu(z, width))
    outside = np.abs(np.asarray(z)) >= 2
    np.testing.assert_array_equal(value[outside], np.maximum(np.asarray(z), 0)[outside])
    grad = jax.jit(jax.grad(kinked_relu))
    for zi in np.linspace(-2.0, 2.0, 9):
        integral = quad(lambda u: float(grad(u, width)), -2.0, zi, epsabs=1e-14)[0]
        got = float(kinked_relu(jnp.asarray(zi), width))
        np.testing.assert_allclose(got, integral, rtol=1e-12, atol=1e-15)
        assert (got > 0) == (zi > -2.0) and 0 <= got - max(zi, 0.0) <= 5 / 16 + 1e-15
    slope = np.asarray(jax.vmap(jax.grad(kinked_relu), (0, None))(z, width))
    exact = (np.asarray(z) > 0).astype(float)
    assert slope[4] == 0.5
    far = np.abs(np.asarray(z)) >= 2
    np.testing.assert_array_equal(slope[far], exact[far])
    inside = np.linspace(-2.0, 2.0, 101)
    s = np.asarray(jax.vmap(jax.grad(kinked_relu), (0, None))(jnp.asarray(inside), width))
    assert np.all(np.diff(s) > 0)
    np.testing.assert_allclose(s + s[::-1], 1.0, atol=1e-15)  # odd about the kink
    # d slope / dz at points inside the kink and at its edges, against central differences
    zs = jnp.array([-2.0, -1.5, -0.3, 0.0, 0.2, 2.0])
    second = jax.vmap(jax.grad(jax.grad(kinked_relu)), (0, None))(zs, width)
    h = 1e-6
    grad = jax.grad(kinked_relu)
    fd = jax.vmap(lambda a: (grad(a + h, width) - grad(a - h, width)) / (2 * h))(zs)
    np.testing.assert_allclose(np.asarray(second), np.asarray(fd), rtol=1e-7, atol=1e-9)
    assert abs(float(second[0])) < 1e-12 and abs(float(second[-1])) < 1e-12
    # a zero width (a zero weight row or input, so z = 0) gives the midpoint, not NaN
    assert float(jax.grad(kinked_relu)(0.0, 0.0)) == 0.5


@pytest.mark.parametrize("kind", slow_params(["mlp", "dense", "cnn"], {"cnn"}))
def test_a_kinked_net_computes_the_same_function_and_relus_gradient_off_the_kinks(kind):
    """``with_kink`` leaves the function as it is (to rounding) and its gradient the plain net's
    (and finite differences') to ``kappa^2`` relative where no pre-activation lies within
    ``kappa`` of a kink (here ``kappa = 1e-8``). MLP through ``jax.vmap`` and
    through its dense batched path, and a CNN, whose bound on each pre-activation is its filter's
    norm times its patch's."""
    key = jax.random.key(3)
    if kind == "cnn":
        net = wnjax.CNN(2, [3, 4], kernel_size=3, key=key)
        X = jax.random.normal(jax.random.key(4), (6, 2, 5, 5))
        apply = lambda m: jax.vmap(m)(X)  # noqa: E731
    else:
        net = wnjax.MLP(5, 8, 3, key=key)
        X = jax.random.normal(jax.random.key(4), (7, 5))
        apply = (lambda m: jax.vmap(m)(X)) if kind == "mlp" else (lambda m: m.dense_forward(X))
    kinked = with_kink(net, 1e-8)
    assert kinked.activation.kink == 1e-8 and net.activation.kink == 0.0
    np.testing.assert_allclose(np.asarray(apply(kinked)), np.asarray(apply(net)), rtol=1e-14)

    def f(m):
        return jnp.sum(jnp.sin(apply(m)))

    g_kinked, g_plain = _leaves(jax.grad(f)(kinked)), _leaves(jax.grad(f)(net))
    for a, b in zip(g_kinked, g_plain):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
    # the plain gradient itself against central differences, along a random direction
    params, static = eqx.partition(net, eqx.is_inexact_array)
    d = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.key(5), a.shape), params)
    h = 1e-6

    def at(c):
        return f(eqx.combine(jax.tree_util.tree_map(lambda a, b: a + c * b, params, d), static))

    fd = (at(h) - at(-h)) / (2 * h)
    dot = sum(float(np.vdot(a, np.asarray(b))) for a, b in zip(g_kinked, _leaves(d)))
    np.testing.assert_allclose(dot, float(fd), rtol=1e-6)


@pytest.mark.slow
def test_relu_flow_follows_gradient_descent_as_its_step_vanishes():
    """A 5-8-1 ReLU net on 16 points, plain time to ``t = 1``, whose flow slides along a kink
    (``test_relu_flows_with_their_own_derivative_run_out_of_steps``): with the default kink
    width (``1e-4``) it reaches ``t = 1``, and its weights (of size ~1.4) agree with gradient
    descent written out by hand as ``eta -> 0`` to ``3.5 kappa`` (measured: 2.3). ``final``
    keeps ReLU's own derivative; ``stats['kink_width']`` holds the width used."""
    X, y = _data(0)
    net, _ = _relu_nets(jax.random.key(100))
    r = wnjax.gradient_flow(net, X, y, t1=1.0)
    assert bool(r.ok) and float(r.stats["kink_width"]) == 1e-4
    assert "kink_width = 0.0001" in r.message
    got = np.concatenate([np.ravel(a) for a in _leaves(r.final)])
    err = np.max(np.abs(got - _gd_limit(net, X, y)))
    assert err < 3.5e-4, err
    assert r.final.activation.kink == 0.0  # the model handed back is the plain one


def _gd_limit(net, X, y):
    """Gradient descent's weights at ``t = 1`` as ``eta -> 0``, from ``net``'s (``eta = 1e-5,
    1e-6``, extrapolated linearly: Euler's error is ``O(eta)``)."""
    W1, W2 = net.layers[0].weight, net.layers[1].weight
    coarse, fine = _gd_weights(W1, W2, X, y, 1e-5, 1.0), _gd_weights(W1, W2, X, y, 1e-6, 1.0)
    assert np.max(np.abs(fine - coarse)) < 1e-4  # Euler's own error, 10x smaller still
    return fine + (fine - coarse) / 9


def _relu_nets(key):
    """A 5-8-1 ReLU net as wnjax's ``MLP`` and as ``eqx.nn.MLP`` with ``jax.nn.relu``, with the
    same weights."""
    net = wnjax.MLP(5, 8, 2, key=key)
    mlp = eqx.nn.MLP(5, "scalar", 8, 1, jax.nn.relu, use_bias=False, use_final_bias=False, key=key)
    weights = (net.layers[0].weight, net.layers[1].weight)
    return net, eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[1].weight), mlp, weights)


@pytest.mark.slow
def test_relu_flows_with_their_own_derivative_run_out_of_steps():
    """The net of ``test_relu_flow_follows_gradient_descent_as_its_step_vanishes`` with ReLU's
    own derivative (``kink_width=0``): the flow slides, the run is held to tiny steps and runs
    out of them, and the message says to leave ``kink_width`` unset, for wnjax's ``MLP`` and for
    ``eqx.nn.MLP`` with ``jax.nn.relu``. With the default the latter's field goes through
    ``smooth_kinks``, and its weights at ``t = 1`` are gradient descent's limit to
    ``3.5 kappa`` (measured: 2.3)."""
    X, y = _data(0)
    net, mlp = _relu_nets(jax.random.key(100))
    for model, advice in ((net, "Leave"), (mlp, "leave")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = wnjax.gradient_flow(
                model, X, y, t1=1.0, kink_width=0.0, max_steps=5000, throw=False
            )
        assert not bool(r.ok) and f"{advice} kink_width unset" in r.message
        assert float(r.stats["kink_width"]) == 0.0 and float(r.final_time) < 1.0
    r = wnjax.gradient_flow(mlp, X, y, t1=1.0)
    assert bool(r.ok) and float(r.stats["kink_width"]) == 1e-4 and "model's kinks" in r.message
    got = np.concatenate([np.ravel(a) for a in _leaves(r.final)])
    error = np.max(np.abs(got - _gd_limit(net, X, y)))
    assert error < 3.5e-4, error
    assert r.final.activation is jax.nn.relu


@pytest.mark.slow
def test_a_narrower_kink_is_nearer_gradient_descents_limit():
    """Three data sets, the same reference: kink width ``1e-5`` is at least 4x nearer than
    ``1e-4`` (the error is ``O(kappa)``); EWN's flow from ``||v_u(0)|| = 1`` is the rate-scaled
    one (``flow_equivalence``), the same smoothed derivative on both sides."""
    for seed in range(3):
        X, y = _data(seed)
        net = wnjax.MLP(5, 8, 2, key=jax.random.key(100 + seed))
        W1, W2 = net.layers[0].weight, net.layers[1].weight
        coarse, fine = _gd_weights(W1, W2, X, y, 1e-5, 1.0), _gd_weights(W1, W2, X, y, 1e-6, 1.0)
        reference = fine + (fine - coarse) / 9
        errors = []
        for kappa in (1e-4, 1e-5):
            r = wnjax.gradient_flow(net, X, y, t1=1.0, kink_width=kappa)
            got = np.concatenate([np.ravel(a) for a in _leaves(r.final)])
            errors.append(np.max(np.abs(got - reference)))
        assert errors[1] < errors[0] / 4 and errors[1] < 3e-4, errors
    check = wnjax.flow_equivalence(net, X, y, t1=1.0)
    assert check["ewn_max_rel_err"] < 1e-6, check


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape,n,parameterize",
    [((5, 8, 2), 16, wnjax.swn), ((10, 16, 3), 32, wnjax.ewn), ((3, 32, 2), 24, lambda m: m)],
)
def test_relu_flows_reach_deep_targets_with_the_defaults(shape, n, parameterize):
    """ReLU nets of depth 2 and 3 (standard, SWN, EWN) on separable data, normalized and loss
    clocks, three seeds each: every run reaches log L = -300 with the defaults."""
    for seed in range(3):
        X, y = _data(seed, n, shape[0])
        model = parameterize(wnjax.MLP(*shape, key=jax.random.key(100 + seed)))
        for time in ("normalized", "loss"):
            r = wnjax.gradient_flow(model, X, y, time=time, target_log_loss=-300.0)
            assert bool(r.ok) and bool(r.reached_target), (seed, time, r.message)


@pytest.mark.slow
def test_a_seed_sweep_of_relu_flows_reaches_its_target():
    """Under ``vmap`` (``wnjax.sweep``) a ReLU net's flow takes the switching solver (the
    smoothed kinks are stiff where the flow slides, beyond Tsit5 alone): four seeds of an EWN
    5-8-1 net all reach log L = -300 in plain time."""
    X, y = _data(0)

    def run(key, cfg):
        model = wnjax.ewn(wnjax.MLP(5, 8, 2, key=key))
        r = wnjax.gradient_flow(model, X, y, target_log_loss=-300.0, throw=False)
        return {"ok": r.ok, "log_loss": r.final_log_loss}

    res = wnjax.sweep(run, 4, batch_size=4, progress=False)
    assert np.all(res.table["ok"]), res.table


def test_kink_width_is_checked():
    X, y = _data(0)
    net = wnjax.MLP(5, 4, 2, key=jax.random.key(1))
    for bad in (-1e-3, 1.0, float("nan"), "wide", True):
        with pytest.raises(wnjax.InvalidInput, match="kink_width must be a number in"):
            wnjax.gradient_flow(net, X, y, kink_width=bad)


@pytest.mark.slow
def test_an_swn_unit_through_zero_keeps_a_finite_kink():
    """The XOR net (2-20-1, output weights frozen at +-1), SWN: units whose ``g_u`` decays pass
    through ``g_u = 0``, where ``z = w_u . x`` vanishes for every point at once and a width of
    ``kappa ||w_u|| ||x||`` would shrink with it. The layer's RMS floor keeps it finite: the
    normalized flow reaches log L = -50 with the defaults on two seeds."""
    from wnjax.data import xor
    from wnjax.experiments._xor import parameterized, xor_model

    X, y = xor()
    for seed in range(2):
        model = parameterized("swn", xor_model(jax.random.key(seed), "relu"))
        r = wnjax.gradient_flow(model, X, y, time="normalized", target_log_loss=-50.0)
        assert bool(r.reached_target), r.message


@pytest.mark.slow
@pytest.mark.parametrize("module", ["wnjax", "equinox"])
@needs_default_codegen
def test_an_example_coming_alive_leaves_the_field_continuous(module):
    """A 4-3-3-3-1 ReLU net on 16 points (the equivalence check's data, seed 0), plain time to
    ``t = 5`` at rtol 1e-10: an example whose second-layer units all sit at 0 comes alive as
    one pre-activation turns positive, at ``t = 4.16``. With a ReLU output of exactly 0 inside
    the smoothed layer, the next layer's slopes jumped there (from 1/2 at a zero input to 0 or 1)
    whatever the kink width, and each flow ran out of 100,000 steps at ``t = 4.16``; with the
    ramp's value (``kink_ramp``) the adaptive-rate, EWN and SWN flows go on past it to ``t = 5``,
    and EWN's path is the adaptive-rate flow's (the equivalence theorem) to ``1e-7``."""
    k_model, k_data, k_w = jax.random.split(jax.random.key(0), 3)
    X = jax.random.normal(k_data, (16, 4))
    y = jnp.where(X @ jax.random.normal(k_w, (4,)) >= 0, 1.0, -1.0)
    net = wnjax.MLP(4, 3, 4, activation="relu", key=k_model)
    if module == "equinox":
        mlp = eqx.nn.MLP(
            4, "scalar", 3, 3, jax.nn.relu, use_bias=False, use_final_bias=False, key=k_model
        )
        weights = tuple(layer.weight for layer in net.layers)
        net = eqx.tree_at(lambda m: tuple(layer.weight for layer in m.layers), mlp, weights)
    r = wnjax.flow_equivalence(net, X, y, t1=5.0, n_save=8)
    assert r["not_finished"] == [] and not r["interrupted"], r
    assert r["ewn_max_rel_err"] < 1e-7, r
