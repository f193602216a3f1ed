"""Gradient flow: conservation of ||v_u||, the EWN = adaptive-rate equivalence, flows induced on w
(docs/theory.md §1) integrated independently with scipy, frozen layers, and compile-once."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_problems import N_SAVE, T1, cnn_problem, compiles, flow, mlp_problem
from scipy.integrate import solve_ivp

import wnjax


@pytest.fixture(scope="module", name="mlp_problem")
def _mlp_problem():
    return mlp_problem()


@pytest.fixture(scope="module", name="cnn_problem")
def _cnn_problem():
    return cnn_problem()


def path_weights(states):
    """The saved states, mapped to plain weights: one flat vector per save point."""
    plain = (
        jax.vmap(wnjax.to_standard)(states) if isinstance(states, wnjax.Parameterized) else states
    )
    leaves = [layer.weight for layer in wnjax.weight_layers(plain)]
    return np.concatenate([np.asarray(w).reshape(w.shape[0], -1) for w in leaves], axis=1)


def max_rel_err(a, b):
    return float(np.max(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))


def _max_rel_err_to_rate_flow(p, model, X, y, rtol):
    """Max over the saved path of ``||w_p(t) - w_rate(t)|| / ||w_rate(t)||``, where ``w_rate`` is
    unnormalized GF with per-neuron rate ``||w_u||^2``."""
    p_flow = flow(p, X, y, rtol=rtol)
    rate_flow = flow(model, X, y, rtol=rtol, rate="neuron_norm_sq")
    assert bool(p_flow.ok) and bool(rate_flow.ok)
    np.testing.assert_array_equal(p_flow.s, rate_flow.s)
    ref = path_weights(rate_flow.states)
    moved = np.linalg.norm(ref[-1] - ref[0]) / np.linalg.norm(ref[0])
    assert moved > 0.1, "the flow must move the weights for the comparison to mean anything"
    return max_rel_err(path_weights(p_flow.states), ref)


@pytest.mark.parametrize("arch", ["mlp", pytest.param("cnn", marks=pytest.mark.slow)])
def test_ewn_flow_equals_adaptive_rate_flow(arch, request):
    model, X, y = request.getfixturevalue(f"{arch}_problem")
    err = _max_rel_err_to_rate_flow(wnjax.ewn(model), model, X, y, 1e-10)
    assert err < 1e-7
    loose = _max_rel_err_to_rate_flow(wnjax.ewn(model), model, X, y, 1e-7)
    assert loose > 10 * err  # the error is the integrators' own: it shrinks with rtol


@pytest.mark.slow
def test_swn_flow_differs_from_adaptive_rate_flow(mlp_problem):
    """SWN is not a scalar-rate reparameterization: radial rate 1, tangential rate ``||w_u||^2``."""
    model, X, y = mlp_problem
    assert _max_rel_err_to_rate_flow(wnjax.swn(model), model, X, y, 1e-10) > 1e-3


@pytest.mark.parametrize("kind", ["ewn", "swn"])
def test_direction_norms_constant_along_flow(kind, mlp_problem):
    model, X, y = mlp_problem
    p = getattr(wnjax, kind)(model)
    # Start off the unit sphere: the invariant is ||v_u(t)|| = ||v_u(0)||, whatever its value.
    c = jnp.linspace(0.5, 2.0, 6)
    p = eqx.tree_at(lambda q: q.layers[0].v, p, p.layers[0].v * c[:, None])
    r = flow(p, X, y)
    v0 = np.asarray(p.direction_norms())
    dn = np.asarray(r.summaries["direction_norms"])
    assert np.all(np.isfinite(dn))
    assert np.max(np.abs(dn / v0 - 1.0)) < 1e-9
    # ...while the neuron norms do move.
    assert (
        np.max(
            np.abs(np.asarray(r.summaries["neuron_norms"][-1]) / np.asarray(p.neuron_norms()) - 1)
        )
        > 0.05
    )


# --- independent reference: the flows induced on w (docs/theory.md §1), integrated by scipy ---


def _explicit_loss(W1, W2, X, y):
    """``L = sum_i exp(-y_i W2 relu(W1 x_i)^2)``, written without wnjax."""
    f = (jnp.maximum(X @ W1.T, 0.0) ** 2) @ W2.T
    return jnp.sum(jnp.exp(-y * f[:, 0]))


def _induced_field(kind, shapes, X, y):
    """dw/dt for ``kind``: plain ``-nabla``; EWN ``-||w_u||^2 nabla_u``; SWN
    ``-[P_u + ||w_u||^2 (I - P_u)] nabla_u`` (all with ``||v_u|| = 1``)."""
    (s1, s2) = shapes
    n1 = int(np.prod(s1))

    def field(w):
        W1, W2 = w[:n1].reshape(s1), w[n1:].reshape(s2)
        grads = jax.grad(_explicit_loss, argnums=(0, 1))(W1, W2, X, y)
        out = []
        for W, G in zip((W1, W2), grads):
            sq = jnp.sum(W * W, axis=1, keepdims=True)
            if kind == "plain":
                d = -G
            elif kind == "ewn":
                d = -sq * G
            else:
                radial = jnp.sum(W * G, axis=1, keepdims=True) / sq * W
                d = -(radial + sq * (G - radial))
            out.append(d.ravel())
        return jnp.concatenate(out)

    return jax.jit(field)


@pytest.mark.parametrize("kind", ["plain", "ewn", "swn"])
def test_flow_matches_scipy_integration_of_induced_flow(kind, mlp_problem):
    model, X, y = mlp_problem
    p = {"plain": model, "ewn": wnjax.ewn(model), "swn": wnjax.swn(model)}[kind]
    r = flow(p, X, y)
    shapes = [layer.weight.shape for layer in model.layers]
    field = _induced_field(kind, shapes, X, y)
    w0 = np.concatenate([np.asarray(layer.weight).ravel() for layer in model.layers])
    ts = np.asarray(r.s)
    ref = solve_ivp(
        lambda t, w: np.asarray(field(jnp.asarray(w))),
        (0.0, T1),
        w0,
        method="DOP853",
        t_eval=ts,
        rtol=1e-12,
        atol=1e-14,
    )
    assert ref.success
    assert max_rel_err(path_weights(r.states), ref.y.T) < 1e-7
    # Summaries are those of the saved states.
    np.testing.assert_allclose(
        r.log_loss, [wnjax.log_loss(s, X, y) for s in _unstack(r.states)], rtol=1e-12
    )


def _unstack(states):
    n = jax.tree_util.tree_leaves(states)[0].shape[0]
    return [
        jax.tree_util.tree_map(lambda x, i=i: x[i] if eqx.is_array(x) else x, states)
        for i in range(n)
    ]


def test_normalized_time_matches_scipy(mlp_problem):
    """``d theta/ds = -grad log L`` with ``dt/ds = 1/L``: the path, and ``log t`` from the clock."""
    model, X, y = mlp_problem
    s1 = 6.0
    # log t is sensitive here: dt/ds = 1/L grows like e^5 by the end, so integrate tightly.
    r = flow(model, X, y, t1=s1, time="normalized", rtol=1e-12)
    shapes = [layer.weight.shape for layer in model.layers]
    n = sum(int(np.prod(s)) for s in shapes)

    def rhs(state):
        w = state[:n]
        n1 = int(np.prod(shapes[0]))
        W1, W2 = w[:n1].reshape(shapes[0]), w[n1:].reshape(shapes[1])
        L, grads = jax.value_and_grad(_explicit_loss, argnums=(0, 1))(W1, W2, X, y)
        return jnp.concatenate(
            [-(grads[0] / L).ravel(), -(grads[1] / L).ravel(), jnp.atleast_1d(1.0 / L)]
        )

    rhs = jax.jit(rhs)
    w0 = np.concatenate([np.asarray(layer.weight).ravel() for layer in model.layers] + [[0.0]])
    ref = solve_ivp(
        lambda s, z: np.asarray(rhs(jnp.asarray(z))),
        (0.0, s1),
        w0,
        method="DOP853",
        rtol=1e-12,
        atol=1e-14,
    )
    assert ref.success
    w_final = path_weights(jax.tree_util.tree_map(lambda x: x[None], r.final))[0]
    np.testing.assert_allclose(
        w_final, ref.y[:n, -1], rtol=0, atol=1e-8 * np.abs(ref.y[:n, -1]).max()
    )
    np.testing.assert_allclose(r.final_log_t, np.log(ref.y[n, -1]), rtol=1e-7)
    assert float(r.final_log_loss) < -3.0


def test_frozen_output_layer_stays_fixed(mlp_problem):
    """XOR-style: a fixed +-1 output layer, EWN on the hidden layer only."""
    model, X, y = mlp_problem
    head = jnp.concatenate([jnp.ones(3), -jnp.ones(3)])[None, :]
    model = eqx.tree_at(lambda m: m.layers[1].weight, model, head)
    p = wnjax.ewn(model, where=lambda m: [m.layers[0]], freeze=lambda m: [m.layers[1]])
    r = flow(p, X, y)
    np.testing.assert_array_equal(r.final.layers[1].w, head)
    np.testing.assert_array_equal(r.states.layers[1].w, jnp.broadcast_to(head, (N_SAVE, 1, 6)))
    assert float(r.final_log_loss) < float(r.log_loss[0]) - 0.1
    assert np.max(np.abs(np.asarray(r.final.layers[0].direction_norms()) - 1.0)) < 1e-9


def test_flow_compiles_once(mlp_problem):
    """New t1/rtol/atol/target values reuse the compiled solve (``flow`` always passes a target)."""
    with compiles() as probe:  # the counter sees a fresh program
        jax.jit(lambda x: x * 3.0 + 1.0)(jnp.ones(7))
    assert "jit(<lambda>)" in probe
    model, X, y = mlp_problem
    p = wnjax.ewn(model)
    flow(p, X, y)
    with compiles() as again:
        r1 = flow(p, X, y, t1=10.0, rtol=1e-6, atol=1e-8, target_log_loss=-1.0)
        r2 = flow(p, X, y, t1=20.0, rtol=1e-8, atol=1e-9, target_log_loss=-3.0)
        r3 = flow(p, X, y, t1=0.5, rtol=1e-5, atol=1e-7, target_log_loss=-50.0)
    assert again == [], f"a new t1/rtol/atol/target compiled {again}"
    # ...and the traced numbers were really used.
    assert float(r1.final_log_loss) <= -1.0 and bool(r1.reached_target)
    assert float(r2.final_log_loss) <= -3.0 and bool(r2.reached_target)
    assert not bool(r3.reached_target) and float(r3.final_time) == 0.5


def test_normalized_run_continues_from_log_t0(mlp_problem):
    """Stopping a loss-normalized run at s = 3 and continuing it from its ``final`` with
    ``log_t0 = final_log_t`` gives the uninterrupted run's weights and ``log t`` at s = 6.
    (Restarting with ``t0 = 0`` instead puts the clock back at ``t = 0``: ``log t`` then differs
    by far more than the tolerance, so the comparison can fail.)"""
    model, X, y = mlp_problem
    kw = dict(time="normalized", rtol=1e-12, atol=1e-14)
    whole = flow(model, X, y, t1=6.0, **kw)
    first = flow(model, X, y, t1=3.0, **kw)
    rest = flow(first.final, X, y, t1=3.0, log_t0=first.final_log_t, **kw)
    a = path_weights(jax.tree_util.tree_map(lambda x: x[None], whole.final))[0]
    b = path_weights(jax.tree_util.tree_map(lambda x: x[None], rest.final))[0]
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-8 * np.abs(a).max())
    np.testing.assert_allclose(rest.final_log_t, whole.final_log_t, rtol=1e-8)
    reset = flow(first.final, X, y, t1=3.0, **kw)
    assert abs(float(reset.final_log_t) - float(whole.final_log_t)) > 1e-3
    with pytest.raises(ValueError, match="log_t0"):
        flow(model, X, y, t1=1.0, log_t0=0.0)


@pytest.mark.parametrize("time", ["normalized", "plain"])
def test_target_already_met_stops_at_the_start(mlp_problem, time):
    """A run whose initial loss is already at or below its target has nothing to integrate: it
    reports the target reached and returns the input, rather than running on to t1 (or, in
    normalized time, to its step budget)."""
    model, X, y = mlp_problem
    start = float(wnjax.log_loss(model, X, y))
    r = flow(model, X, y, time=time, t1=50.0, target_log_loss=start + 1.0)
    assert bool(r.reached_target) and bool(r.ok)
    assert int(r.stats["num_steps"]) <= 3  # the first step, perhaps after a rejection
    a = path_weights(jax.tree_util.tree_map(lambda x: x[None], r.final))[0]
    b = path_weights(jax.tree_util.tree_map(lambda x: x[None], model))[0]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * np.abs(b).max())
    np.testing.assert_allclose(float(r.final_log_loss), start, rtol=1e-9)  # stop time <= 1e-10


@pytest.mark.parametrize("n_save", [2, 3, N_SAVE])
@pytest.mark.slow
def test_default_save_points_span_t0_to_t1(mlp_problem, n_save):
    """The default save points start at t0 and end at t1 for every n_save (n_save = 2 included),
    and the last saved loss is the final one. (t0 and t1 are traced: n_save = N_SAVE runs the
    program of the other plain flows of this model.)"""
    model, X, y = mlp_problem
    r = flow(model, X, y, t0=0.5, t1=3.0, n_save=n_save)
    ts = np.asarray(r.ts)
    assert ts.shape == (n_save,) and ts[0] == 0.5 and np.isclose(ts[-1], 3.0, rtol=1e-14)
    assert np.all(np.diff(ts) > 0)
    np.testing.assert_allclose(float(r.log_loss[-1]), float(r.final_log_loss), rtol=1e-12)


@pytest.mark.slow
def test_equivalence_check_shares_its_flows_with_the_gd_part():
    """``equivalence_check`` compares GD with the flows it already ran, read at ``t = horizon``
    from their saved paths; ``gd_equivalence`` alone integrates both flows to ``horizon``
    afresh. The GD errors of the two agree to the solver's tolerance, and the flow part matches
    ``flow_equivalence`` (the extra save point changes nothing but the path's sampling)."""
    kw = dict(n=8, d=3, width=4, etas=(0.02, 0.01), horizon=0.5, t1=2.0, rtol=1e-10)
    check = wnjax.equivalence_check(jax.random.key(3), **kw)
    from wnjax._analysis.equivalence import default_problem

    net, X, y = default_problem(jax.random.key(3), n=8, d=3, width=4)
    alone = wnjax.gd_equivalence(net, X, y, etas=(0.02, 0.01), horizon=0.5, rtol=1e-10)
    for key in ("gd_vs_flow_ewn", "gd_vs_flow_rate", "gd_drift"):
        np.testing.assert_allclose(check[key], alone[key], rtol=1e-6)
    np.testing.assert_allclose(
        check["flow_gap_ewn_vs_rate"], alone["flow_gap_ewn_vs_rate"], atol=1e-8
    )
    assert check["ewn_max_rel_err"] < 1e-6 and check["swn_max_rel_err"] > 1e-3


@pytest.mark.slow
def test_flow_equivalence_in_float32_uses_tolerances_float32_can_give():
    """float32 data: ``flow_equivalence`` runs the flows at float32's default tolerances (no
    warning about an rtol below the dtype), reports the rtol they honoured, and the EWN path
    stays within ``1e3 rtol`` of the adaptive-rate path while SWN's does not."""
    from wnjax._analysis.equivalence import default_problem

    net, X, y = default_problem(jax.random.key(3), n=8, d=3, width=4)
    cast = lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a  # noqa: E731
    net, X, y = jax.tree.map(cast, (net, X, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        r = wnjax.flow_equivalence(net, X, y, t1=2.0, n_save=8)
    assert r["rtol"] == 1e-5
    assert r["ewn_max_rel_err"] < 1e3 * r["rtol"] and r["swn_max_rel_err"] > 1e-3


@pytest.mark.slow
def test_flow_under_jit_with_a_closed_over_model_measures_its_degree():
    """``jax.jit`` of a function that closes over a concrete model and data, with the target
    traced: the homogeneity degree is measured eagerly inside the trace (not read from
    tracers), and the result equals the eager call's with the same method (Tsit5, the default
    under a trace)."""
    X, y = wnjax.data.lin_sep(jax.random.key(0))
    model = wnjax.ewn(wnjax.MLP(2, 4, 2, activation="relu2", key=jax.random.key(7)))
    kw = dict(time="loss", t1=1e6, n_save=4, save_states=False, solver="tsit5")

    @jax.jit
    def final(target):
        r = wnjax.gradient_flow(model, X, y, target_log_loss=target, throw=False, **kw)
        return r.final_log_loss, r.summaries["normalized_margin"][-1]

    got = final(-40.0)
    ref = wnjax.gradient_flow(model, X, y, target_log_loss=-40.0, **kw)
    np.testing.assert_allclose(got[0], ref.final_log_loss, rtol=1e-12)
    np.testing.assert_allclose(got[1], ref.summaries["normalized_margin"][-1], rtol=1e-9)


@pytest.mark.parametrize("after_solve", [True, False])
@pytest.mark.slow
def test_saved_summaries_are_those_of_the_saved_states(mlp_problem, after_solve, monkeypatch):
    """Each save point's summaries, computed after the solve for every save point at once (a
    small run) or inside the solve's loop at the save point, are ``wnjax.summaries`` of the state
    saved there; the save points a run stopped short of (at its target) hold inf. (Each variant
    has its own n_save, so its own program.)"""
    from wnjax._dynamics import flow as flow_module

    if not after_solve:
        monkeypatch.setattr(flow_module, "_BATCHED_SUMMARIES_MAX", 0)
    model, X, y = mlp_problem
    p = wnjax.ewn(model)
    n_save = 11 if after_solve else 13
    assert flow_module._batched_summaries(n_save, X, 100) == after_solve
    target = float(wnjax.log_loss(model, X, y)) - 1.0
    degree = 3.0  # a 2-layer ReLU^2 net
    r = flow(
        p,
        X,
        y,
        t1=50.0,
        n_save=n_save,
        save_states=True,
        diagnostics=True,
        degree=degree,
        target_log_loss=target,
    )
    assert bool(r.reached_target)
    reached = np.isfinite(np.asarray(r.ts))
    assert 2 <= reached.sum() < n_save
    # the saved path: the initial state first, then a falling loss
    first = path_weights(jax.tree_util.tree_map(lambda a: a[:1], r.states))[0]
    np.testing.assert_allclose(
        first, path_weights(jax.tree_util.tree_map(lambda a: a[None], p))[0], rtol=1e-14
    )
    assert np.all(np.diff(np.asarray(r.log_loss)[reached]) < 0)
    for k in np.flatnonzero(reached):
        state = jax.tree_util.tree_map(lambda a: a[k], r.states)
        ref = wnjax.summaries(state, X, y, wnjax.get_loss("exponential"), degree, True)
        for name, value in ref.items():
            np.testing.assert_allclose(
                np.asarray(r.summaries[name][k]),
                np.asarray(value),
                rtol=1e-12,
                atol=1e-300,
                err_msg=name,
            )
    for name, values in r.summaries.items():
        assert np.all(np.isinf(np.asarray(values)[~reached])), name


def test_eta_exponents_are_fitted_only_across_different_etas():
    """``err = c eta^p`` is fitted to ``p`` in log-log; one eta (or one repeated) fits nothing,
    and the report says why instead of showing it as unfinished."""
    from wnjax._analysis.equivalence import _slopes, format_report

    etas = np.array([0.04, 0.02, 0.01])
    assert _slopes(list(zip(etas, 3.0 * etas**1.5))) == pytest.approx(1.5, abs=1e-12)
    assert _slopes([(0.01, 1e-3), (0.01, 2e-3)]) is None
    r = dict(model="mlp", width=4, depth=2, activation="relu2", loss="exponential", rtol=1e-10)
    r.update(ewn_max_rel_err=1e-9, swn_max_rel_err=0.5, gd_horizon=1.0)
    r.update(gd_drift=[(0.01, 4e-3)], gd_vs_flow=[(0.01, 1e-2)])
    r.update(gd_drift_exponent=None, gd_vs_flow_exponent=None)
    assert "none (a fit needs two or more etas)" in format_report(r)
