"""Gradient descent: steps against hand-written updates, growth of ||v_u|| (SPEC section 1),
O(eta) drift between EWN-GD and adaptive-rate GD, GD -> flow as eta -> 0, and compile-once.

All runs share ``n_save``, ``save_states`` and ``chunk_size`` (``core_problems.gd``), so each
(parameterization, optimizer) pair compiles once.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_problems import CHUNK, compiles, flow, gd, mlp_problem

import wnjax


@pytest.fixture(scope="module")
def problem():
    return mlp_problem()


def exp_loss(model, X, y):
    """``L = sum_i exp(-y_i f(x_i))``, written independently of ``wnjax``'s losses."""
    return jnp.sum(jnp.exp(-y * jax.vmap(model)(X).reshape(-1)))


loss_grad = eqx.filter_jit(eqx.filter_grad(exp_loss))


def weights(model):
    return np.concatenate(
        [
            np.asarray(layer.weight).ravel()
            for layer in wnjax.weight_layers(wnjax.to_standard(model))
        ]
    )


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _state(states, i):
    return jax.tree_util.tree_map(lambda x: x[i] if eqx.is_array(x) else x, states)


def _consecutive(result):
    steps = np.asarray(result.steps)
    return [
        (i, i + 1) for i in range(len(steps) - 1) if steps[i] >= 0 and steps[i + 1] == steps[i] + 1
    ]


def test_sgd_steps_match_formula(problem):
    """Plain GD: ``w <- w - eta grad L(w)``, ``L`` summed over points."""
    model, X, y = problem
    eta = 0.05
    r = gd(model, X, y, num_steps=CHUNK, learning_rate=eta)
    pairs = _consecutive(r)
    assert len(pairs) >= 5
    for i, j in pairs:
        w0 = _state(r.states, i)
        g = loss_grad(w0, X, y)
        expected = weights(w0) - eta * weights(g)
        np.testing.assert_allclose(weights(_state(r.states, j)), expected, rtol=1e-12, atol=1e-14)


def test_neuron_rate_sgd_steps_match_formula(problem):
    """Adaptive-rate GD: ``w_u <- w_u - eta ||w_u||^2 grad_u L(w)``."""
    model, X, y = problem
    eta = 0.05
    r = gd(model, X, y, num_steps=CHUNK, learning_rate=eta, optimizer=wnjax.neuron_rate_sgd)
    for i, j in _consecutive(r):
        w0 = _state(r.states, i)
        g = loss_grad(w0, X, y)
        expected = [
            layer.weight - eta * jnp.sum(layer.weight**2, axis=1, keepdims=True) * g_layer.weight
            for layer, g_layer in zip(w0.layers, g.layers)
        ]
        np.testing.assert_allclose(
            weights(_state(r.states, j)),
            np.concatenate([np.asarray(e).ravel() for e in expected]),
            rtol=1e-12,
        )


@pytest.mark.parametrize("kind", ["ewn", "swn"])
def test_direction_norms_grow_as_spec_says(kind, problem):
    """Under GD, ``||v_u(t+1)||^2 = ||v_u(t)||^2 + eta^2 ||dL/dv_u(t)||^2``: checked on every step
    of a hand-written loop, which the library's run must reproduce."""
    model, X, y = problem
    eta, k = 0.05, CHUNK
    p = getattr(wnjax, kind)(model)
    r = gd(p, X, y, num_steps=k, learning_rate=eta)

    manual, growth = p, np.zeros_like(np.asarray(p.direction_norms()))
    for _ in range(k):
        g = loss_grad(manual, X, y)
        dv_sq = np.concatenate(
            [np.sum(np.asarray(gl.v).reshape(gl.v.shape[0], -1) ** 2, axis=1) for gl in g.layers]
        )
        before = np.asarray(manual.direction_norms()) ** 2
        manual = eqx.apply_updates(manual, jax.tree_util.tree_map(lambda x: -eta * x, g))
        after = np.asarray(manual.direction_norms()) ** 2
        np.testing.assert_allclose(after - before, eta**2 * dv_sq, rtol=1e-7, atol=1e-15)
        growth += eta**2 * dv_sq
    np.testing.assert_allclose(weights(r.final), weights(manual), rtol=1e-11)
    final_sq = np.asarray(r.final.direction_norms()) ** 2
    np.testing.assert_allclose(final_sq - 1.0, growth, rtol=1e-6, atol=1e-15)
    assert growth.min() > 0
    # Monotone along the saved path.
    dn = np.asarray(r.summaries["direction_norms"])[np.asarray(r.steps) >= 0]
    assert np.all(np.diff(dn, axis=0) >= -1e-15)


def test_hidden_bias_is_trained(problem):
    """A hidden bias next to an EWN layer takes the plain step ``b <- b - eta dL/db``."""
    _, X, y = problem
    model = wnjax.MLP(3, 6, 2, activation="relu2", hidden_bias=True, key=jax.random.key(1))
    model = eqx.tree_at(lambda m: m.layers[0].bias, model, 0.3 * jnp.ones(6))
    p = wnjax.ewn(model, where=lambda m: [m.layers[0]])
    eta = 0.05
    r = gd(p, X, y, num_steps=CHUNK, learning_rate=eta, degree=3.0)  # biased: not homogeneous
    g = loss_grad(model, X, y)
    assert int(r.steps[1]) == 1
    np.testing.assert_allclose(
        r.states.skeleton.layers[0].bias[1], 0.3 - eta * np.asarray(g.layers[0].bias), rtol=1e-12
    )
    assert np.abs(np.asarray(g.layers[0].bias)).max() > 1e-3


ETAS = (0.04, 0.02, 0.01)
T = 1.0


@pytest.fixture(scope="module")
def gd_runs(problem):
    model, X, y = problem
    runs = {}
    for eta in ETAS:
        k = round(T / eta)
        runs[eta] = (
            gd(wnjax.ewn(model), X, y, num_steps=k, learning_rate=eta),
            gd(model, X, y, num_steps=k, learning_rate=eta, optimizer=wnjax.neuron_rate_sgd),
        )
        assert int(runs[eta][0].num_steps) == k and int(runs[eta][1].num_steps) == k
    return runs


def _halves(errors):
    ratios = np.asarray(errors[:-1]) / np.asarray(errors[1:])
    assert np.all((ratios > 1.7) & (ratios < 2.3)), (
        f"errors {errors} do not halve with eta: ratios {ratios}"
    )


def test_ewn_gd_drift_from_adaptive_rate_gd_is_order_eta(gd_runs):
    drifts = [rel(weights(gd_runs[eta][0].final), weights(gd_runs[eta][1].final)) for eta in ETAS]
    assert drifts[0] > 1e-4  # the GD equivalence is not exact
    _halves(drifts)


def test_gd_converges_to_flow_at_rate_eta(gd_runs, problem):
    """``k`` GD steps of size ``eta`` against the flow at ``t = k eta`` (EWN and adaptive rate)."""
    model, X, y = problem
    ewn_flow = flow(wnjax.ewn(model), X, y, t1=T)
    rate_flow = flow(model, X, y, t1=T, rate="neuron_norm_sq")
    ewn_gaps = [rel(weights(gd_runs[eta][0].final), weights(ewn_flow.final)) for eta in ETAS]
    rate_gaps = [rel(weights(gd_runs[eta][1].final), weights(rate_flow.final)) for eta in ETAS]
    _halves(ewn_gaps)
    _halves(rate_gaps)


def test_gd_stops_at_target(problem):
    model, X, y = problem
    target = -1.0
    r = gd(model, X, y, num_steps=10 * CHUNK, learning_rate=0.05, target_log_loss=target)
    k = int(r.num_steps)
    assert bool(r.reached_target) and bool(r.ok) and CHUNK < k < 10 * CHUNK
    assert float(r.final_log_loss) <= target
    before = gd(model, X, y, num_steps=k - 1, learning_rate=0.05)
    assert float(before.final_log_loss) > target
    np.testing.assert_allclose(
        float(wnjax.log_loss(r.final, X, y)), float(r.final_log_loss), rtol=1e-13
    )


def test_gd_compiles_once(problem):
    with compiles() as probe:  # the counter sees a fresh program
        jax.jit(lambda x: x * 3.0 + 1.0)(jnp.ones(7))
    assert "jit(<lambda>)" in probe
    model, X, y = problem
    p = wnjax.ewn(model)
    gd(p, X, y, num_steps=2 * CHUNK, learning_rate=0.05)
    with compiles() as again:
        r1 = gd(p, X, y, num_steps=2 * CHUNK, learning_rate=0.05, target_log_loss=-1.0)
        r2 = gd(p, X, y, num_steps=2 * CHUNK, learning_rate=0.01, target_log_loss=-50.0)
        r3 = gd(p, X, y, num_steps=2 * CHUNK, learning_rate=0.1, target_log_loss=-2.0)
    assert again == [], f"a new learning_rate/target compiled {again}"
    # ...and the traced numbers were really used.
    assert bool(r1.reached_target) and float(r1.final_log_loss) <= -1.0
    assert not bool(r2.reached_target) and int(r2.num_steps) == 2 * CHUNK
    assert float(r2.final_log_loss) > float(r1.final_log_loss)
    assert bool(r3.reached_target) and float(r3.final_log_loss) <= -2.0


def test_long_segments_match_step_by_step_loop(problem):
    """Segments longer than ``FAST_BLOCK`` run in unchecked blocks: the steps are the same, and
    a target crossed inside a block stops the run at exactly the step a step-by-step loop does."""
    from wnjax._dynamics.descent import FAST_BLOCK

    model, X, y = problem
    eta, k = 0.05, 2 * FAST_BLOCK + 44
    manual, values = model, []
    for _ in range(k):
        values.append(float(wnjax.log_loss(manual, X, y)))
        g = loss_grad(manual, X, y)
        manual = eqx.apply_updates(manual, jax.tree_util.tree_map(lambda x: -eta * x, g))
    run = dict(num_steps=k, learning_rate=eta, n_save=2, chunk_size=10 * k, diagnostics=False)
    r = wnjax.gradient_descent(model, X, y, **run)
    assert int(r.num_steps) == k and int(r.stop_code) == 2
    np.testing.assert_allclose(weights(r.final), weights(manual), rtol=1e-11)
    stop_at = FAST_BLOCK + 37  # inside the second block
    target = 0.5 * (values[stop_at - 1] + values[stop_at])
    t = wnjax.gradient_descent(model, X, y, target_log_loss=target, **run)
    assert bool(t.reached_target) and int(t.num_steps) == stop_at
    assert float(t.final_log_loss) <= target < values[stop_at - 1]


def test_auto_chunks_grow_without_recompiling_or_changing_steps(problem, monkeypatch):
    """``chunk_size='auto'`` doubles the chunk after every fast chunk: fewer host round trips,
    no new compilation, and the same steps as one chunk holding the whole run."""
    import wnjax._dynamics.descent as D

    model, X, y = problem
    monkeypatch.setattr(D, "AUTO_CHUNK_START", 8)
    monkeypatch.setattr(D, "AUTO_CHUNK_SECONDS", 1e9)  # every chunk counts as fast
    run = dict(num_steps=100, learning_rate=0.05, n_save=2, diagnostics=False)
    sizes = []

    def seen(carry):
        sizes.append(int(carry["k"]))

    D.gradient_descent(model, X, y, chunk_size="auto", **run)  # compile
    with compiles() as again:
        auto = D.gradient_descent(model, X, y, chunk_size="auto", callback=seen, **run)
    assert again == [], f"growing chunks compiled {again}"
    # Chunks of 8, 16, 32, 64 steps: the run's 100 steps end at 8, 24, 56, 100.
    assert sizes == [8, 24, 56, 100]
    whole = D.gradient_descent(model, X, y, chunk_size=100, **run)
    np.testing.assert_array_equal(weights(auto.final), weights(whole.final))
    for bad in (0, -3, 2.5, "big"):
        with pytest.raises(ValueError, match="chunk_size"):
            D.gradient_descent(model, X, y, chunk_size=bad, **run)
