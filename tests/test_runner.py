"""The experiments' vmapped GD runner: stalled seeds stop early, overflowed steps are undone."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import wnjax
from wnjax.experiments._runner import run_gd


def _dead_point_model(key):
    """A bias-free ReLU^2 net on which the lin-sep point (-1, 1) is dead: every first-layer row
    ``w`` has ``w . (-1, 1) < 0``, and the rows only move along ``(1, 1)``-type directions under
    the other points' gradients (see ``test_dead_point_seed_stalls``)."""
    model = wnjax.MLP(2, 8, 2, activation="relu2", key=key)
    rows = jnp.array([[1.0, 0.2], [-1.0, -3.0]] * 4)
    rows = rows * (1.0 + 0.1 * jax.random.uniform(key, (8, 1)))
    return eqx.tree_at(lambda m: m.layers[0].weight, model, rows)


def test_dead_point_seed_stalls_and_live_seed_reaches():
    """Seed 1 has a dead point (margin 0, zero gradient: ``L >= l(0) = 1`` for good), seed 0 not.
    The runner stops seed 1 early as stalled, with ``log L >= 0``, and seed 0 reaches the
    target; without the stall rule seed 1 would spend the whole budget."""
    X, y = wnjax.data.lin_sep(jax.random.key(0))
    live = wnjax.MLP(2, 8, 2, activation="relu2", key=jax.random.key(3))
    dead = _dead_point_model(jax.random.key(4))
    out = jax.vmap(dead)(X).reshape(-1)
    assert float(out[1]) == 0.0  # the point (-1, 1) really is dead at the start
    models = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), live, dead)
    budget = 5000
    r = run_gd(
        models,
        X,
        y,
        num_steps=budget,
        learning_rate=0.1,
        optimizer=wnjax.loss_normalized_sgd,
        hyperparams=dict(power=1.0 - 1.0 / 30, backtracking=True, max_learning_rate=1.0),
        target_log_loss=-50.0,
        chunk_size=25,
        diverge_above=jnp.inf,
    )
    assert bool(r.reached[0]) and not bool(r.stalled[0])
    assert bool(r.stalled[1]) and not bool(r.reached[1])
    assert int(r.num_steps[1]) < budget // 10
    arrays, static = eqx.partition(r.final, eqx.is_inexact_array)
    last = eqx.combine(jax.tree_util.tree_map(lambda a: a[1], arrays), static)
    f = jax.vmap(last)(X).reshape(-1)
    assert float(jnp.log(jnp.sum(jnp.exp(-y * f)))) >= 0.0  # the dead point alone: exp(0) = 1
    assert float(f[1]) == 0.0  # and it is still dead


def test_backtracking_undoes_a_non_finite_loss():
    """A step whose loss comes back NaN (overflowed margins) is undone like a rise: the update is
    minus the previous one, and ``eta0`` is divided by ``shrink``."""
    opt = wnjax.loss_normalized_sgd(0.5, power=1.0, backtracking=True)
    params = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.3, 0.4])}
    state = opt.init(params)
    u1, state = opt.update(g, state, params, log_value=jnp.asarray(0.0))
    eta_after_first = float(state.eta0)
    u2, state = opt.update(g, state, params, log_value=jnp.asarray(jnp.nan))
    np.testing.assert_array_equal(np.asarray(u2["w"]), -np.asarray(u1["w"]))
    np.testing.assert_allclose(float(state.eta0), eta_after_first / 1.1, rtol=1e-15)
    assert bool(state.just_undone)


def test_loss_normalized_state_is_strongly_typed():
    """No weak-typed leaves in the optimizer state: a weak ``int`` there made every compiled
    loop trace twice (the state coming back from a step is strongly typed)."""
    opt = wnjax.loss_normalized_sgd(0.1, power=0.9, backtracking=True)
    state = opt.init({"w": jnp.ones(3)})
    weak = [x for x in jax.tree_util.tree_leaves(state) if getattr(x, "weak_type", False)]
    assert not weak


def test_epochs_and_undone_counts_match_a_plain_backtracking_loop():
    """Plain GD with backtracking on ``L(w) = w^2/2`` from ``eta0 = 3`` (``w <- (1 - eta0) w``
    rises for ``eta0 > 2``): the runner reports the epochs (kept steps) and the undone steps of
    a plain Python loop, and its final ``w``; an undone step is not an epoch."""
    lr, target = 3.0, -20.0
    w, eta0, retry, epochs, undone = 1.0, lr, False, 0, 0
    while np.log(w * w / 2) > target:
        if not retry:
            eta0 = min(1.1 * eta0, lr)
        trial = w - eta0 * w
        if not trial * trial <= w * w:
            eta0, undone, retry = eta0 / 1.1, undone + 1, True
            continue
        w, epochs, retry = trial, epochs + 1, False
    assert undone > epochs // 2  # most kept steps are followed by an undone one
    model = wnjax.MLP(1, 1, 1, activation="linear", key=jax.random.key(0))
    model = eqx.tree_at(lambda m: m.layers[0].weight, model, jnp.ones((1, 1)))
    models = jax.tree_util.tree_map(lambda a: a[None], model)
    r = run_gd(
        models,
        jnp.ones((1, 1)),
        jnp.zeros((1, 1)),
        num_steps=1000,
        learning_rate=lr,
        optimizer=wnjax.loss_normalized_sgd,
        loss="square",
        chunk_size=7,
        hyperparams=dict(power=0.0, backtracking=True, max_learning_rate=lr),
        target_log_loss=target,
    )
    assert bool(r.reached[0])
    assert int(r.num_steps[0]) == epochs and int(r.undone[0]) == undone
    assert r.steps[-1, 0] == epochs
    np.testing.assert_allclose(float(r.final.layers[0].weight[0, 0, 0]), w, rtol=1e-12)
