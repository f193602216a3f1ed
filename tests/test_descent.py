"""Gradient descent: steps against hand-written updates, growth of ||v_u|| (docs/theory.md §1),
O(eta) drift between EWN-GD and adaptive-rate GD, GD -> flow as eta -> 0, compile-once, and the
engine's checkpoints, summaries hook, stall stop and backtracking against plain loops.

All runs share ``n_save``, ``save_states`` and ``chunk_size`` (``core_problems.gd``), so each
(parameterization, optimizer) pair compiles once.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from core_problems import CHUNK, compiles, flow, gd, mlp_problem
from helpers import DEFAULT_CODEGEN

import wnjax
from wnjax._dynamics.descent import FAST_BLOCK


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
    """``chunk_size='auto'`` grows the chunk after every fast chunk (by ``AUTO_CHUNK_GROWTH``
    when it was very fast): fewer host round trips, no new compilation, and the same steps as
    one chunk holding the whole run."""
    import wnjax._dynamics.descent as D

    model, X, y = problem
    monkeypatch.setattr(D, "AUTO_CHUNK_START", 8)
    monkeypatch.setattr(D, "AUTO_CHUNK_SECONDS", 1e9)  # every chunk counts as fast
    run = dict(num_steps=3000, learning_rate=0.05, n_save=2, diagnostics=False)
    sizes = []

    def seen(carry):
        sizes.append(int(carry["k"]))

    D.gradient_descent(model, X, y, chunk_size="auto", **run)  # compile
    with compiles() as again:
        auto = D.gradient_descent(model, X, y, chunk_size="auto", callback=seen, **run)
    assert again == [], f"growing chunks compiled {again}"
    # Chunks of 8, 8 x 16 and 8 x 16^2 steps: the run's 3,000 steps end at 8, 136, 2184, 3000.
    assert sizes == [8, 136, 2184, 3000]
    whole = D.gradient_descent(model, X, y, chunk_size=3000, **run)
    np.testing.assert_array_equal(weights(auto.final), weights(whole.final))
    for bad in (0, -3, 2.5, "big"):
        with pytest.raises(ValueError, match="chunk_size"):
            D.gradient_descent(model, X, y, chunk_size=bad, **run)


# --- The engine's checkpoints, summaries hook, stall stop and backtracking, against plain loops.


def _linear_problem(n=8, d=2, shift=0.5, seed=5):
    """Separable points in R^d (each pushed ``shift`` away from the separator along ``w*``) and
    a bias-free linear model ``f(x) = <w, x>``."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    w_star = jax.random.normal(k1, (d,))
    w_star = w_star / jnp.linalg.norm(w_star)
    X = jax.random.normal(k2, (n, d))
    y = jnp.sign(X @ w_star)
    X = X + shift * y[:, None] * w_star[None]
    model = eqx.nn.Linear(d, "scalar", use_bias=False, key=k3)
    return model, X, y


def _numpy_gd(w0, X, y, eta, num_steps):
    """Plain GD ``w <- w - eta grad L``, ``L = sum_i exp(-y_i <w, x_i>)``, in numpy: the iterates
    ``w_0..w_K`` and ``log L`` at each."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    ws, logs = [np.asarray(w0, float).ravel()], []
    for _ in range(num_steps + 1):
        e = np.exp(-y * (X @ ws[-1]))
        logs.append(np.log(e.sum()))
        if len(ws) <= num_steps:
            ws.append(ws[-1] + eta * (y * e) @ X)
    return np.stack(ws), np.asarray(logs)


def _first_at_or_below(logs, level):
    hit = np.flatnonzero(logs <= level)
    return int(hit[0]) if hit.size else -1


@pytest.mark.slow
def test_checkpoints_and_summaries_match_a_numpy_loop():
    """``checkpoints``: the state, step and ``log L`` of the first iterate at or below each level
    equal those of a numpy GD loop (levels crossed at step 0, inside the second fast block, at
    the last state, and never), in any order; the ``summarize`` hook's outputs at the save points
    are the loop's iterates there. Both drivers, and the traced one under ``vmap`` over rates."""
    model, X, y = _linear_problem()
    K, eta = 300, 0.1
    ws, logs = _numpy_gd(model.weight, X, y, eta, K)
    assert np.all(np.diff(logs) < 0)
    inside = FAST_BLOCK + 22
    levels = [
        0.5 * (logs[inside - 1] + logs[inside]),
        logs[0] + 0.1,
        0.5 * (logs[K - 1] + logs[K]),
        logs[K] - 1.0,
        0.5 * (logs[36] + logs[37]),
    ]
    expect = [_first_at_or_below(logs, v) for v in levels]
    assert expect == [inside, 0, K, -1, 37]

    def check(r, ws, logs, expect):
        steps = np.asarray(r.checkpoint_steps)
        np.testing.assert_array_equal(steps, expect)
        got = np.asarray(r.checkpoints.weight).reshape(len(levels), -1)
        for j, s in enumerate(expect):
            ref = ws[s] if s >= 0 else ws[0]  # never reached: the initial model
            np.testing.assert_allclose(got[j], ref, rtol=1e-12, atol=1e-15)
            if s >= 0:
                np.testing.assert_allclose(float(r.checkpoint_log_loss[j]), logs[s], rtol=1e-12)
            else:
                assert np.isnan(float(r.checkpoint_log_loss[j]))

    run = dict(
        num_steps=K,
        n_save=5,
        diagnostics=False,
        checkpoints=levels,
        summarize=lambda m, X, y: {"w": m.weight.ravel()},
    )
    for chunk in (K, 64):
        r = wnjax.gradient_descent(model, X, y, learning_rate=eta, chunk_size=chunk, **run)
        assert int(r.stop_code) == 2 and int(r.num_steps) == K
        check(r, ws, logs, expect)
        saved = np.asarray(r.steps)
        np.testing.assert_allclose(np.asarray(r.summaries["w"]), ws[saved], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(r.log_loss), logs[saved], rtol=1e-12)

    etas = jnp.asarray([eta, 0.5 * eta])
    rs = jax.vmap(
        lambda lr: wnjax.traced_gradient_descent(
            model, X, y, learning_rate=lr, chunk_size=64, **run
        )
    )(etas)
    for i, e in enumerate(np.asarray(etas)):
        ws_i, logs_i = _numpy_gd(model.weight, X, y, e, K)
        r = jax.tree_util.tree_map(lambda a: a[i] if eqx.is_array(a) else a, rs)
        check(r, ws_i, logs_i, [_first_at_or_below(logs_i, v) for v in levels])


@pytest.mark.filterwarnings("ignore:row.*all zero:UserWarning")
def test_stall_stop_on_a_provable_plateau():
    """A point at ``x = 0`` has margin 0 whatever ``w``, so ``L >= exp(0) = 1``: ``log L >= 0``
    for good, above the target. With ``stop_stalled`` the run stops (code 4) at the first save
    point where the other points add less than ``STALL_SHARE`` of that floor, with the numpy
    loop's iterate there; without it, it spends its budget and warns that the loss stalled."""
    from wnjax._dynamics.descent import save_steps
    from wnjax._dynamics.stall import STALL_SHARE

    model, X, y = _linear_problem(shift=1.0)
    X, y = jnp.concatenate([X, jnp.zeros((1, 2))]), jnp.concatenate([y, jnp.ones(1)])
    K, eta, n_save = 3000, 0.5, 24
    ws, logs = _numpy_gd(model.weight, X, y, eta, K)
    assert np.all(logs > 0.0)
    saves = save_steps(K, n_save)
    stop = int(saves[np.flatnonzero(logs[saves] <= STALL_SHARE)[0]])
    assert 0 < stop < K
    run = dict(
        learning_rate=eta,
        num_steps=K,
        n_save=n_save,
        chunk_size=K,
        diagnostics=False,
        target_log_loss=-5.0,
        degree=1.0,
    )
    r = wnjax.gradient_descent(model, X, y, stop_stalled=True, **run)
    assert int(r.stop_code) == 4 and bool(r.ok) and not bool(r.reached_target)
    assert int(r.num_steps) == stop and "stalled" in r.message
    np.testing.assert_allclose(np.asarray(r.final.weight).ravel(), ws[stop], rtol=1e-12)
    assert 0.0 <= float(r.final_log_loss) <= STALL_SHARE
    with pytest.warns(RuntimeWarning, match="stopped decreasing"):
        full = wnjax.gradient_descent(model, X, y, **run)
    assert int(full.stop_code) == 2 and int(full.num_steps) == K


def _backtracking_reference(w0, X, y, eta, grow, shrink, target):
    """The backtracking schedule, transcribed: from the last kept point ``w`` try
    ``w' = w - eta grad L(w) / L(w)``; keep it if ``L(w') <= L(w)`` (then ``eta <- grow eta``),
    else throw it away (``eta <- eta / shrink``); stop once ``log L(w) <= target``."""
    X, y = np.asarray(X, float), np.asarray(y, float)

    def log_l(w):
        return np.log(np.sum(np.exp(-y * (X @ w))))

    w, kept, undone = np.asarray(w0, float).ravel(), 0, 0
    while log_l(w) > target:
        e = np.exp(-y * (X @ w))
        trial = w + eta * ((y * e) @ X) / e.sum()
        if log_l(trial) <= log_l(w):
            w, kept, eta = trial, kept + 1, grow * eta
        else:
            undone, eta = undone + 1, eta / shrink
    return w, kept, undone


def test_step_and_epoch_backtracking_match_one_transcription():
    """The two backtracking granularities are one schedule: the step-level
    ``loss_normalized_sgd(power=1, backtracking=True)`` in ``wnjax.gradient_descent`` (first
    trial at ``grow eta0``), and the epoch-level ``run_sgd_backtracking`` with one full batch per
    epoch (first trial at its ``eta0``), take the transcription's kept and undone trials and end
    at its point."""
    from wnjax.experiments._runner import run_sgd_backtracking

    model, X, y = _linear_problem(n=10, shift=0.05, seed=3)
    lr, grow, shrink, target = 5.0, 1.1, 1.1, -30.0
    w, kept, undone = _backtracking_reference(model.weight, X, y, grow * lr, grow, shrink, target)
    assert undone > 3 and kept > undone  # both kinds of trials happen
    r = wnjax.gradient_descent(
        model,
        X,
        y,
        num_steps=10_000,
        learning_rate=lr,
        optimizer=wnjax.loss_normalized_sgd,
        hyperparams=dict(power=1.0, backtracking=True, grow=grow, shrink=shrink),
        target_log_loss=target,
        n_save=4,
        diagnostics=False,
    )
    assert bool(r.reached_target)
    assert int(r.num_steps) == kept and int(r.num_undone) == undone
    np.testing.assert_allclose(np.asarray(r.final.weight).ravel(), w, rtol=1e-10)
    models = jax.tree_util.tree_map(lambda a: a[None], model)
    e = run_sgd_backtracking(
        models,
        X,
        y,
        learning_rate=grow * lr,
        batch_size=X.shape[0],
        key=jax.random.key(0),
        max_epochs=10_000,
        loss="exponential",
        target_log_loss=target,
        grow=grow,
        shrink=shrink,
    )
    assert bool(e.reached[0])
    assert int(e.history["epochs"][0]) == kept and int(e.undone[0]) == undone
    np.testing.assert_allclose(np.asarray(e.final.weight[0]).ravel(), w, rtol=1e-10)


@pytest.mark.parametrize("max_elements", [0, 2**17])
def test_packed_while_loop_matches_the_plain_loop(max_elements):
    """``packed_while_loop`` against ``lax.while_loop`` on a state of float64, int64 and bool
    leaves of several shapes: bit for bit, alone and under ``vmap`` with lanes that stop at
    different iterations (``max_elements=0``: the plain fallback). Both compiled with XLA's
    default CPU code generation (``DEFAULT_CODEGEN``), not the suite's quicker one, under which
    the two loops' fusions may round differently."""
    from wnjax._runtime.tree import packed_while_loop

    def jit(f):
        return jax.jit(f, compiler_options=DEFAULT_CODEGEN)

    def cond(s):
        return (s["i"] < s["limit"]) & ~s["flag"][0]

    def body(s):
        w = jnp.tanh(s["w"] @ s["w"].T) @ s["w"] + 0.1 * s["b"][:, None]
        return {
            "w": w,
            "b": jnp.sin(s["b"]) * 1.01 + jnp.sum(w, axis=1),
            "i": s["i"] + 1,
            "limit": s["limit"],
            "flag": jnp.stack([jnp.max(jnp.abs(w)) > 1e6, s["flag"][1]]),
            "count": s["count"] + jnp.arange(3),
        }

    def state(key, limit):
        k1, k2 = jax.random.split(key)
        return {
            "w": jax.random.normal(k1, (4, 3)),
            "b": jax.random.normal(k2, (4,)),
            "i": jnp.asarray(0),
            "limit": jnp.asarray(limit),
            "flag": jnp.asarray([False, True]),
            "count": jnp.zeros(3, int),
        }

    def packed(s):
        return packed_while_loop(cond, body, s, max_elements=max_elements)

    def plain(s):
        return jax.lax.while_loop(cond, body, s)

    one = state(jax.random.key(0), 7)
    lanes = jax.vmap(state)(jax.random.split(jax.random.key(1), 5), jnp.arange(5) * 3)
    for args, f, g in [
        (one, jit(packed), jit(plain)),
        (lanes, jit(jax.vmap(packed)), jit(jax.vmap(plain))),
    ]:
        got, want = f(args), g(args)
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    # the lanes stopped at five different iterations, one of them on its flag
    assert np.unique(np.asarray(got["i"])).size == 5 and np.asarray(got["flag"])[:, 0].any()


@pytest.mark.parametrize(
    "optimizer, hyperparams", [(optax.sgd, {"momentum": 0.9}), (optax.adam, {})]
)
def test_a_run_continued_from_its_opt_state_is_the_whole_run(optimizer, hyperparams):
    """2,000 + 2,000 steps, the second run started from the first's ``final`` and
    ``opt_state``, end on the bits of one 4,000-step run (momentum and Adam's moments and
    step count go on); started afresh, they do not. A state of another optimizer is refused."""
    X, y = wnjax.data.lin_sep(jax.random.key(0))
    p = wnjax.ewn(wnjax.MLP(2, 8, 2, activation="relu2", key=jax.random.key(1)))
    kw = dict(learning_rate=1e-3, optimizer=optimizer, hyperparams=hyperparams, n_save=8)
    whole = wnjax.gradient_descent(p, X, y, num_steps=4000, **kw)
    first = wnjax.gradient_descent(p, X, y, num_steps=2000, **kw)
    on = wnjax.gradient_descent(first.final, X, y, num_steps=2000, opt_state=first.opt_state, **kw)
    afresh = wnjax.gradient_descent(first.final, X, y, num_steps=2000, **kw)
    for a, b in zip(jax.tree_util.tree_leaves(whole.final), jax.tree_util.tree_leaves(on.final)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(afresh.final_log_loss) != float(whole.final_log_loss)
    with pytest.raises(wnjax.InvalidInput, match="opt_state does not fit"):
        wnjax.gradient_descent(
            first.final, X, y, num_steps=10, learning_rate=1e-3, opt_state=first.opt_state
        )


@pytest.mark.slow
def test_a_frozen_layer_stays_put_under_weight_decay():
    """AdamW's decay (and a decay chained before SGD) is an optimizer term of its own, not a
    gradient: a frozen layer must not move under it, while the trained one does."""
    k = jax.random.split(jax.random.key(0), 2)
    X = jax.random.normal(k[0], (12, 3))
    y = jnp.sign(X[:, 0] + 0.3)
    net = wnjax.MLP(3, 5, 2, activation="relu2", key=k[1])
    p = wnjax.ewn(net, freeze=lambda m: [m.layers[1]])
    for opt in (
        dict(optimizer=optax.adamw, learning_rate=0.01, hyperparams={"weight_decay": 0.1}),
        dict(optimizer=optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.01))),
    ):
        r = wnjax.gradient_descent(p, X, y, num_steps=100, **opt)
        out = wnjax.to_standard(r.final)
        np.testing.assert_array_equal(np.asarray(out.layers[1].weight), net.layers[1].weight)
        assert float(jnp.max(jnp.abs(out.layers[0].weight - net.layers[0].weight))) > 1e-3


def test_where_a_minibatch_run_stops_does_not_depend_on_its_chunks():
    """Minibatch SGD checks its target on the full data at save points, never at a chunk's end:
    the same stop step and final weights for any ``chunk_size``."""
    k = jax.random.split(jax.random.key(0), 2)
    X = jax.random.normal(k[0], (13, 3))
    y = jnp.sign(X[:, 0] + 0.3)
    net = wnjax.MLP(3, 5, 2, activation="relu2", key=k[1])
    kw = dict(num_steps=3000, learning_rate=0.05, batch_size=4, key=jax.random.key(7))
    kw.update(loss="logistic", target_log_loss=-0.05, n_save=32)
    runs = [wnjax.gradient_descent(net, X, y, chunk_size=c, **kw) for c in (7, 100, 1000)]
    assert int(runs[0].stop_code) == 1  # reached the target
    for r in runs[1:]:
        assert int(r.num_steps) == int(runs[0].num_steps)
        for a, b in zip(
            jax.tree_util.tree_leaves(r.final), jax.tree_util.tree_leaves(runs[0].final)
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_backtracked_trial_step_is_no_divergence():
    """``loss_normalized_sgd`` with backtracking undoes a trial step whose loss rose, however far:
    the divergence level does not end the run there (the same run with the level out of reach)."""
    k = jax.random.split(jax.random.key(0), 2)
    X = jax.random.normal(k[0], (12, 3))
    y = jnp.sign(X[:, 0] + 0.3)
    net = wnjax.MLP(3, 5, 2, activation="relu2", key=k[1])
    kw = dict(num_steps=300, learning_rate=0.5, optimizer=wnjax.loss_normalized_sgd)
    kw.update(hyperparams={"backtracking": True}, throw=False)
    near = wnjax.gradient_descent(net, X, y, diverge_above=200.0, **kw)
    far = wnjax.gradient_descent(net, X, y, diverge_above=1e6, **kw)
    assert int(near.num_undone) > 0 and int(near.stop_code) == int(far.stop_code) == 2
    assert float(near.final_log_loss) == float(far.final_log_loss)
