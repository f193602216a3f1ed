"""The pruning reproduction: pruning maths, the SGD-with-backtracking runner, the flow checkpoints,
and a smoke-size run of ``wnjax reproduce pruning``."""

import argparse
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wnjax
import wnjax.experiments._pruning as pruning
from wnjax.experiments._runner import run_flow_checkpoints, run_sgd_backtracking


def _stacked(name, keys, d=5, width=8, activation="relu"):
    return eqx.filter_vmap(lambda k: pruning.parameterized(
        name, wnjax.MLP(d, width, 2, 10, activation=activation, hidden_bias=True, key=k)))(keys)


def _one(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i] if eqx.is_array(a) else a, tree)


@pytest.mark.parametrize("name", ["ewn", "swn", "standard"])
def test_pruning_is_removing_the_smallest_neurons(getkey, name):
    """0% pruned is the unpruned model; pruning removes exactly the smallest-norm neurons, and
    f(x) changes by exactly their contributions sum_{u pruned} W2[:, u] relu(w_u . x + b_u)."""
    p = pruning.parameterized(name, wnjax.MLP(5, 10, 2, 10, hidden_bias=True, key=getkey()))
    X = jax.random.normal(getkey(), (30, 5))
    y = jax.random.randint(getkey(), (30,), 0, 10)
    plain = wnjax.to_standard(p)
    np.testing.assert_array_equal(np.asarray(jax.vmap(pruning.pruned_model(p, 0.0))(X)),
                                  np.asarray(jax.vmap(plain)(X)))
    acc0 = np.mean(np.argmax(np.asarray(jax.vmap(plain)(X)), 1) == np.asarray(y))
    assert float(pruning.pruned_accuracy(p, X, y, 0.0)) == acc0
    # the criterion is exp(a_u) / |g_u| / ||w_u||: in every case the neuron norm ||w_u||
    scores = np.asarray(p.layers[0].scale_params())
    np.testing.assert_allclose(np.abs(scores), np.linalg.norm(np.asarray(plain.layers[0].weight), axis=1),
                               rtol=1e-12)
    mask = np.asarray(pruning.prune_mask(p, 0.3))
    assert mask.sum() == 7 and np.all(scores[mask == 0].max() <= scores[mask == 1].min())
    W1, b1 = np.asarray(plain.layers[0].weight), np.asarray(plain.layers[0].bias)
    W2 = np.asarray(plain.layers[1].weight)
    hidden = np.maximum(np.asarray(X) @ W1.T + b1, 0.0)
    removed = hidden[:, mask == 0] @ W2[:, mask == 0].T
    diff = np.asarray(jax.vmap(plain)(X)) - np.asarray(jax.vmap(pruning.pruned_model(p, 0.3))(X))
    np.testing.assert_allclose(diff, removed, rtol=1e-10, atol=1e-12)
    assert np.all(np.asarray(jax.vmap(pruning.pruned_model(p, 1.0))(X)) == 0.0)


def _reference_epochs(model, X, y, key, *, eta0, batch, epochs):
    """Plain-Python reference of the Exp-WN schedule for one seed (see run_sgd_backtracking)."""
    loss = wnjax.get_loss("cross_entropy")
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def log_l(q, Xb, yb):
        return loss.log_loss(jax.vmap(eqx.combine(q, static))(Xb), yb)

    n = X.shape[0]
    ref = log_l(params, X, y)
    for attempt in range(epochs):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, attempt), n))
        q = params
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            # grad(L_b/|b|)/(L_ref/n), with L_b and L_ref sums over points
            g = jax.grad(lambda q: jnp.exp(log_l(q, X[idx], y[idx]) - ref) * n / len(idx))(q)
            q = jax.tree_util.tree_map(lambda a, b: a - eta0 * b, q, g)
        full = log_l(q, X, y)
        if np.isfinite(full) and full <= ref:
            params, ref, eta0 = q, full, eta0 * 1.1
        else:
            eta0 = eta0 / 1.1
    return eqx.combine(params, static), ref, eta0


def test_sgd_backtracking_matches_reference_and_checkpoints(getkey):
    X = jax.random.uniform(getkey(), (45, 5))
    y = jax.random.randint(getkey(), (45,), 0, 10)
    keys = jax.random.split(getkey(), 2)
    models = _stacked("ewn", keys)
    key = getkey()
    r = run_sgd_backtracking(models, X, y, learning_rate=0.5, batch_size=20, key=key, max_epochs=12,
                             checkpoints=(1.0, -1e9), epochs_per_chunk=5)
    seed_keys = jax.random.split(key, 2)
    for i in range(2):
        ref, ref_log, ref_eta = _reference_epochs(_one(models, i), X, y, seed_keys[i], eta0=0.5,
                                                  batch=20, epochs=12)
        np.testing.assert_allclose(np.asarray(wnjax.to_standard(_one(r.final, i)).layers[0].weight),
                                   np.asarray(wnjax.to_standard(ref).layers[0].weight), rtol=1e-9)
        np.testing.assert_allclose(r.history["log_loss"][-1, i], float(ref_log), rtol=1e-10)
        np.testing.assert_allclose(r.history["eta0"][-1, i], ref_eta, rtol=1e-12)
    assert r.history["log_loss"].shape == (12, 2)
    assert np.all(np.diff(r.history["log_loss"], axis=0) <= 0)  # the kept loss never rises
    assert np.all(r.history["epochs"] + r.history["undone"] == 12)
    np.testing.assert_array_equal(r.num_steps, r.history["epochs"] * 3)  # ceil(45/20) = 3
    # checkpoints: at or below their level, never reached -> None / -1 / nan
    assert r.checkpoint_steps.shape == (2, 2) and np.all(r.checkpoint_steps[1] == -1)
    assert r.checkpoints[1] is None and np.all(np.isnan(r.checkpoint_log_loss[1]))
    got = r.checkpoint_steps[0] >= 0
    assert np.all(r.checkpoint_log_loss[0][got] <= 1.0)
    loss = wnjax.get_loss("cross_entropy")
    for i in np.flatnonzero(got):
        m = _one(r.checkpoints[0], i)
        np.testing.assert_allclose(float(loss.log_loss(jax.vmap(m)(X), y)), r.checkpoint_log_loss[0][i],
                                   rtol=1e-10)


def test_flow_checkpoints_land_on_levels(getkey):
    X = jax.random.uniform(getkey(), (12, 5))
    y = jnp.arange(12) % 10
    models = _stacked("ewn", jax.random.split(getkey(), 2), activation="relu2")
    r = run_flow_checkpoints(models, X, y, levels=(-2.0, -10.0), loss="cross_entropy", rtol=1e-7,
                             atol=1e-9, max_steps=20_000)
    assert np.all(r.ok)
    np.testing.assert_allclose(r.log_loss, [[-2.0, -2.0], [-10.0, -10.0]], atol=1e-6)
    assert np.all(r.log_loss <= np.array([[-2.0], [-10.0]]) + 1e-8)
    assert np.all(np.diff(r.s, axis=0) > 0) and np.all(np.diff(r.log_t, axis=0) > 0)
    loss = wnjax.get_loss("cross_entropy")
    for i in range(2):
        m = _one(r.checkpoints[1], i)
        np.testing.assert_allclose(float(loss.log_loss(jax.vmap(m)(X), y)), -10.0, atol=1e-6)
    with pytest.raises(ValueError, match="decrease"):
        run_flow_checkpoints(models, X, y, levels=(-2.0, -1.0), loss="cross_entropy")


def test_pruning_smoke(tmp_path):
    """A smoke-size run: metrics of the right shapes, a report with its verdict lines."""
    args = argparse.Namespace(seeds=2, full=False, out=str(tmp_path), data="digits", data_dir=None,
                              dynamics="gd", width=8, train_size=300, lr=0.5, cap=None,
                              batch_size=128, max_epochs=60, rtol=1e-6, max_steps=1000)
    metrics = pruning.run(args)
    levels, fractions = len(pruning.CHECKPOINTS), len(pruning.FRACTIONS)
    for name in ("ewn", "swn", "standard"):
        assert np.shape(metrics["test_accuracy"][name]) == (levels, 2, fractions)
        assert np.shape(metrics["checkpoint_steps"][name]) == (levels, 2)
        reached = np.asarray(metrics["reached"][name])
        ll = np.asarray(metrics["checkpoint_log_loss"][name])
        assert np.all(ll[reached] <= np.repeat(np.asarray(pruning.CHECKPOINTS)[:, None], 2, 1)[reached])
        acc = np.asarray(metrics["test_accuracy"][name])
        assert np.all(np.isnan(acc[~reached])) and np.all((acc[reached] >= 0) & (acc[reached] <= 1))
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["dynamics"] == "gd" and saved["activation"] == "relu" and saved["n_train"] == 300
    report = (tmp_path / "report.md").read_text()
    assert "## Verdicts" in report and report.count("- **") == 2
    assert (tmp_path / "pruning.png").exists() and (tmp_path / "pruning_loss.png").exists()
