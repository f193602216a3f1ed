"""The pruning reproduction: pruning maths against a numpy forward pass, the compiled SGD engine
against a plain-Python loop of Exp-WN's schedule, the flow checkpoints, and a smoke-size run of
``wnjax reproduce pruning``."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wnjax
import wnjax.experiments._pruning as pruning


def _stacked(name, keys, d=5, width=8, activation="relu"):
    return eqx.filter_vmap(
        lambda k: pruning.parameterized(
            name, wnjax.MLP(d, width, 2, 10, activation=activation, hidden_bias=True, key=k)
        )
    )(keys)


def _one(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i] if eqx.is_array(a) else a, tree)


def _numpy_accuracy(p, X, y, fraction):
    """Accuracy of the hidden-layer-masked net, by hand: drop the round(fraction * width)
    neurons of smallest norm parameter, relu(X W1^T + b1) W2^T on the others."""
    plain = wnjax.to_standard(p)
    W1, b1 = np.asarray(plain.layers[0].weight), np.asarray(plain.layers[0].bias)
    W2 = np.asarray(plain.layers[1].weight)
    keep = np.argsort(np.asarray(p.layers[0].scale_params()))[int(round(fraction * len(b1))) :]
    out = np.maximum(np.asarray(X) @ W1[keep].T + b1[keep], 0.0) @ W2[:, keep].T
    return np.mean(np.argmax(out, 1) == np.asarray(y))


@pytest.mark.parametrize("name", ["ewn", "swn", "standard"])
def test_pruning_is_removing_the_smallest_neurons(getkey, name):
    """0% pruned is the unpruned model; pruning removes exactly the smallest-norm neurons, and
    f(x) changes by exactly their contributions sum_{u pruned} W2[:, u] relu(w_u . x + b_u)."""
    p = pruning.parameterized(name, wnjax.MLP(5, 10, 2, 10, hidden_bias=True, key=getkey()))
    X = jax.random.normal(getkey(), (30, 5))
    y = jax.random.randint(getkey(), (30,), 0, 10)
    plain = wnjax.to_standard(p)
    np.testing.assert_array_equal(
        np.asarray(jax.vmap(pruning.pruned_model(p, 0.0))(X)), np.asarray(jax.vmap(plain)(X))
    )
    # the criterion is exp(a_u) / |g_u| / ||w_u||: in every case the neuron norm ||w_u||
    scores = np.asarray(p.layers[0].scale_params())
    np.testing.assert_allclose(
        np.abs(scores), np.linalg.norm(np.asarray(plain.layers[0].weight), axis=1), rtol=1e-12
    )
    mask = np.asarray(pruning.prune_mask(p, 0.3))
    assert mask.sum() == 7 and np.all(scores[mask == 0].max() <= scores[mask == 1].min())
    W1, b1 = np.asarray(plain.layers[0].weight), np.asarray(plain.layers[0].bias)
    W2 = np.asarray(plain.layers[1].weight)
    hidden = np.maximum(np.asarray(X) @ W1.T + b1, 0.0)
    removed = hidden[:, mask == 0] @ W2[:, mask == 0].T
    diff = np.asarray(jax.vmap(plain)(X)) - np.asarray(jax.vmap(pruning.pruned_model(p, 0.3))(X))
    np.testing.assert_allclose(diff, removed, rtol=1e-10, atol=1e-12)
    assert np.all(np.asarray(jax.vmap(pruning.pruned_model(p, 1.0))(X)) == 0.0)
    fractions = (0.0, 0.3, 0.8, 0.9)
    want = [_numpy_accuracy(p, X, y, f) for f in fractions]
    assert [float(pruning.pruned_accuracy(p, X, y, f)) for f in fractions] == want
    np.testing.assert_allclose(pruning.pruned_accuracies(p, X, y, fractions), want, atol=1e-12)


def test_accuracy_table_matches_numpy(getkey):
    """Per level and seed, the stacked accuracies equal the numpy masked forward pass; a seed
    that never reached a level is nan there, a level no seed reached is all nan."""
    X = jax.random.normal(getkey(), (40, 5))
    y = jax.random.randint(getkey(), (40,), 0, 10)
    models = _stacked("ewn", jax.random.split(getkey(), 3), width=20)
    valid = np.array([[True, False, True], [False, False, False]])
    t = pruning.accuracy_table((models, None), valid, X, y)
    assert t.shape == (2, 3, len(pruning.FRACTIONS))
    assert np.all(np.isnan(t[1])) and np.all(np.isnan(t[0, 1]))
    for s in (0, 2):
        want = [_numpy_accuracy(_one(models, s), X, y, f) for f in pruning.FRACTIONS]
        np.testing.assert_allclose(t[0, s], want, rtol=0, atol=1e-12)


def _reference(model, X, y, key, *, eta0, batch, max_epochs):
    """Plain-Python Exp-WN schedule for one seed: epochs of eta0 grad(mean_b l)/mean(l) steps,
    kept if the mean training loss did not rise (eta0 *= 1.1), else undone (eta0 /= 1.1).
    Returns the final eta0, the undone count and, per kept epoch, (kept, undone, log L, model)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def mean_loss(q, Xb, yb):  # mean cross-entropy, written out
        out = jax.vmap(eqx.combine(q, static))(Xb)
        return jnp.mean(jax.nn.logsumexp(out, axis=1) - out[jnp.arange(len(yb)), yb])

    grad = jax.jit(jax.grad(lambda q, Xb, yb, ref: mean_loss(q, Xb, yb) / jnp.exp(ref)))
    log_loss = jax.jit(lambda q: jnp.log(mean_loss(q, X, y)))
    permutation = jax.jit(jax.random.permutation, static_argnums=1)
    n = X.shape[0]
    ref = float(log_loss(params))
    undone, attempt, kept = 0, 0, []
    while len(kept) < max_epochs:
        perm = np.asarray(permutation(jax.random.fold_in(key, attempt), n))
        attempt += 1
        q = params
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            q = jax.tree_util.tree_map(lambda a, b: a - eta0 * b, q, grad(q, X[idx], y[idx], ref))
        new = float(log_loss(q))
        if np.isfinite(new) and new <= ref:
            params, ref, eta0 = q, new, eta0 * 1.1
            kept.append((len(kept) + 1, undone, new, eqx.combine(params, static)))
        else:
            eta0, undone = eta0 / 1.1, undone + 1
    return eta0, undone, kept


@pytest.mark.slow
def test_train_sgd_matches_reference_and_checkpoints(getkey):
    """The compiled while-loop engine against the plain loop: same iterates, eta0, kept/undone
    counts, and each checkpoint at the first kept epoch whose loss is below its level; the
    number of epochs per compiled call does not matter."""
    X = jax.random.uniform(getkey(), (45, 5))
    y = jax.random.randint(getkey(), (45,), 0, 10)
    models = _stacked("ewn", jax.random.split(getkey(), 2))
    key = getkey()
    seed_keys = jax.random.split(key, 2)
    refs = [
        _reference(_one(models, i), X, y, seed_keys[i], eta0=0.5, batch=20, max_epochs=10)
        for i in range(2)
    ]
    trail = [rec[2] for rec in refs[0][2]]
    # levels between kept epochs 1-2 and 5-6 of seed 0, and one out of reach
    levels = ((trail[0] + trail[1]) / 2, (trail[4] + trail[5]) / 2, -1e9)
    r = pruning.train_sgd(
        models, X, y, key, levels=levels, eta0=0.5, batch_size=20, max_epochs=10, call_seconds=1e-9
    )  # one epoch per compiled call
    one_call = pruning.train_sgd(
        models, X, y, key, levels=levels, eta0=0.5, batch_size=20, max_epochs=10, call_seconds=1e9
    )
    assert r.calls > one_call.calls and r.steps_per_epoch == 3  # ceil(45/20)
    np.testing.assert_array_equal(r.ck_epochs, one_call.ck_epochs)
    np.testing.assert_array_equal(r.log_loss, one_call.log_loss)
    assert r.ck_epochs[0, 0] == 2 and r.ck_epochs[1, 0] == 6

    def weights(m):
        plain = wnjax.to_standard(m)
        return np.concatenate(
            [
                np.ravel(plain.layers[0].weight),
                np.ravel(plain.layers[0].bias),
                np.ravel(plain.layers[1].weight),
            ]
        )

    for i, (eta, undone, kept) in enumerate(refs):
        np.testing.assert_allclose(
            weights(_one(r.final_models, i)), weights(kept[-1][3]), rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(r.log_loss[i], kept[-1][2], rtol=1e-10)
        np.testing.assert_allclose(r.eta0[i], eta, rtol=1e-12)
        assert (r.epochs[i], r.undone[i]) == (10, undone)
        for j, c in enumerate(levels):
            first = next((rec for rec in kept if rec[2] < c), None)  # first kept epoch below c
            if first is None:
                assert r.ck_epochs[j, i] == -1 and not r.reached[j, i]
                continue
            assert (r.ck_epochs[j, i], r.ck_undone[j, i]) == first[:2]
            np.testing.assert_allclose(r.ck_log_loss[j, i], first[2], rtol=1e-10)
            np.testing.assert_allclose(
                weights(_one(r.checkpoints[j], i)), weights(first[3]), rtol=1e-9, atol=1e-12
            )
    assert r.checkpoints[2] is None and np.all(r.capped) and not np.any(r.stalled)
    assert r.curve["epochs"].shape[1] == 2 and np.all(r.curve["epochs"][-1] == 10)


def test_train_sgd_stops_at_the_last_level(getkey):
    """A seed stops at the first kept epoch below the last level: no cap, no stall. (The shapes
    of the test above: the compiled loop is reused.)"""
    X = jax.random.uniform(getkey(), (45, 5))
    y = jnp.argmax(X @ jax.random.normal(getkey(), (5, 10)), axis=1)
    models = _stacked("ewn", jax.random.split(getkey(), 2))
    r = pruning.train_sgd(
        models, X, y, getkey(), levels=(1.0, 0.0, -1.0), eta0=0.5, batch_size=20, max_epochs=5000
    )
    assert np.all(r.reached) and not np.any(r.capped | r.stalled)
    np.testing.assert_array_equal(r.epochs, r.ck_epochs[-1])
    assert np.all(r.ck_log_loss[-1] < -1.0) and np.all(np.diff(r.ck_epochs, axis=0) >= 0)


@pytest.mark.slow
def test_flow_checkpoints_land_on_levels(getkey):
    from wnjax.experiments._runner import run_flow_checkpoints

    X = jax.random.uniform(getkey(), (12, 5))
    y = jnp.arange(12) % 10
    models = _stacked("ewn", jax.random.split(getkey(), 2), activation="relu2")
    r = run_flow_checkpoints(
        models,
        X,
        y,
        levels=(-2.0, -10.0),
        loss="cross_entropy",
        rtol=1e-7,
        atol=1e-9,
        max_steps=20_000,
    )
    assert np.all(r.ok)
    np.testing.assert_allclose(r.log_loss, [[-2.0, -2.0], [-10.0, -10.0]], atol=1e-6)
    assert np.all(np.diff(r.s, axis=0) > 0) and np.all(np.diff(r.log_t, axis=0) > 0)


@pytest.mark.slow
def test_pruning_smoke(tmp_path):
    """A smoke-size run: metrics of the right shapes, a report with its table, verdict lines
    and the reason the seeds missed -300."""
    options = pruning.Options(
        seeds=2, out=str(tmp_path), width=8, train_size=200, lr=0.5, max_epochs=40
    )
    metrics = pruning.run(options)
    levels, fractions = len(pruning.CHECKPOINTS), len(pruning.FRACTIONS)
    for name in ("ewn", "swn", "standard"):
        assert np.shape(metrics["test_accuracy"][name]) == (levels, 2, fractions)
        reached = np.asarray(metrics["reached"][name])
        ll = np.asarray(metrics["checkpoint_log_loss"][name])
        below = np.repeat(np.asarray(pruning.CHECKPOINTS)[:, None], 2, 1)
        assert np.all(ll[reached] < below[reached])
        acc = np.asarray(metrics["test_accuracy"][name])
        assert np.all(np.isnan(acc[~reached])) and np.all((acc[reached] >= 0) & (acc[reached] <= 1))
        assert np.all(np.asarray(metrics["epochs"][name]) <= 40)
        assert np.all(np.asarray(metrics["capped"][name]))  # 40 epochs: never at -300
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["dynamics"] == "gd" and saved["n_train"] == 200 and saved["steps_per_epoch"] == 2
    report = (tmp_path / "report.md").read_text()
    assert "## Verdicts" in report and report.count("- **not answered**") >= 2
    assert "hit the cap of 40 kept epochs" in report
    assert (tmp_path / "pruning.png").exists() and (tmp_path / "pruning_loss.png").exists()


@pytest.mark.slow
def test_pruning_writes_each_training_as_it_finishes_in_any_order(tmp_path, monkeypatch):
    """The three trainings run side by side and the outputs are written as each finishes: with
    the standard net's finishing first, the disk holds a partial report of it alone, then of
    more, and the last write is the whole run's."""
    import threading

    import wnjax._runtime.cores as cores

    monkeypatch.setattr(cores, "usable_cores", lambda: 3)  # all three at once
    real_train, real_outputs = pruning.train, pruning._outputs
    first_done, writes = threading.Event(), []

    def train(name, *args, **kwargs):
        if name != "standard":
            assert first_done.wait(120)
        out = real_train(name, *args, **kwargs)
        if name == "standard":
            first_done.set()
        return out

    def outputs(options, note, width, Xtr, res, acc, wall, partial):
        writes.append((sorted(res), partial))
        return real_outputs(options, note, width, Xtr, res, acc, wall, partial)

    monkeypatch.setattr(pruning, "train", train)
    monkeypatch.setattr(pruning, "_outputs", outputs)
    options = pruning.Options(
        seeds=2, out=str(tmp_path), width=8, train_size=200, lr=0.5, max_epochs=10
    )
    metrics = pruning.run(options)
    assert writes[0] == (["standard"], True) and len(writes) == 3
    assert writes[-1] == (["ewn", "standard", "swn"], False) and not metrics["partial"]
    assert json.load(open(tmp_path / "metrics.json"))["finished"] == ["ewn", "swn", "standard"]


def test_rise_under_heavy_pruning_needs_more_than_seed_noise():
    """The claim that EWN's heavily pruned accuracy rises from log L = -10 to -300 counts a
    rise only above twice the standard error of the per-seed rises; one seed answers
    nothing."""
    rng = np.random.default_rng(0)
    levels, fractions = len(pruning.CHECKPOINTS), len(pruning.FRACTIONS)

    def verdict(rises):
        seeds = len(rises)
        base = rng.uniform(40, 60, (levels, seeds, 1)) * np.ones((1, 1, fractions)) / 100
        acc = {k: [base[j].copy() for j in range(levels)] for k in pruning.NAMES}
        acc["ewn"][-1] = acc["ewn"][0] + np.asarray(rises)[:, None] / 100
        res = {k: {"valid": np.ones((levels, seeds), bool)} for k in pruning.NAMES}
        found = [v for v in pruning._verdicts(acc, res) if "rises" in v["claim"]]
        return found[0]

    noisy = np.array([6.0, -5.0, 4.0, -3.0, 1.0])  # mean +0.6, standard error 2.1
    assert verdict(noisy)["verdict"] == "not reproduced"
    assert verdict(noisy + 5.0)["verdict"] == "reproduced"  # mean +5.6 > 2 x 2.1
    assert verdict([8.0])["verdict"] == "not answered"
