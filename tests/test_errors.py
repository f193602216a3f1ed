"""Bad input gives a clear ValueError (naming the problem) before anything is traced; failed runs
are reported with their partial result."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_problems import gd, mlp_problem

import wnjax


@pytest.fixture(scope="module")
def problem():
    return mlp_problem()


def _flow(model, X, y, **kw):
    kw.setdefault("t1", 1.0)
    return wnjax.gradient_flow(model, X, y, **kw)


def _gd(model, X, y, **kw):
    return wnjax.gradient_descent(model, X, y, num_steps=10, learning_rate=0.1, **kw)


RUNNERS = pytest.mark.parametrize("run", [_flow, _gd], ids=["flow", "gd"])


@RUNNERS
@pytest.mark.parametrize("loss", ["exponential", "logistic"])
def test_labels_outside_plus_minus_one(run, loss, problem):
    model, X, y = problem
    with pytest.raises(ValueError, match=r"labels in \{-1, \+1\}"):
        run(model, X, (y + 1) / 2, loss=loss)  # {0, 1} labels
    with pytest.raises(ValueError, match="labels"):
        run(model, X, 2 * y, loss=loss)


@RUNNERS
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs(run, bad, problem):
    model, X, y = problem
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        run(model, X.at[2, 1].set(bad), y)
    with pytest.raises(ValueError, match="y contains NaN or inf"):
        run(model, X, y.at[0].set(bad), loss="square")


@RUNNERS
def test_shape_mismatches(run, problem):
    model, X, y = problem
    with pytest.raises(ValueError, match="12 examples but y has shape"):
        run(model, X, y[:-1])
    with pytest.raises(ValueError, match="cannot be applied to examples of shape"):
        run(model, X[:, :2], y)  # wrong number of features
    with pytest.raises(ValueError, match="leading axis of examples"):
        run(model, X[0], y)
    wide = wnjax.MLP(3, 6, 2, out_size=3, key=jax.random.key(2))
    with pytest.raises(ValueError, match=r"one output per example.*\(3,\)"):
        run(wide, X, y)  # three outputs for a binary loss
    with pytest.raises(ValueError, match="labels go up to 5 but the model has only 3 outputs"):
        run(wide, X, jnp.arange(12) % 6, loss="cross_entropy")
    with pytest.raises(ValueError, match="integer class indices"):
        run(wide, X, y, loss="cross_entropy")  # -1 is not a class index


def test_unknown_names(problem):
    model, X, y = problem
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        _flow(model, X, y, loss="hinge")
    with pytest.raises(ValueError, match="rate must be one of"):
        _flow(model, X, y, rate="adam")
    with pytest.raises(ValueError, match="time must be one of"):
        _flow(model, X, y, time="log")
    with pytest.raises(ValueError, match="unknown activation"):
        wnjax.MLP(3, 4, 2, activation="tanh2", key=jax.random.key(0))
    with pytest.raises(ValueError, match="per-neuron rate"):
        _flow(wnjax.ewn(model), X, y, rate="neuron_norm_sq")  # the rate is for plain weights


@pytest.mark.parametrize("kind", ["ewn", "swn"])
def test_zero_weight_row(kind, problem):
    model, _, _ = problem
    model = eqx.tree_at(lambda m: m.layers[0].weight, model, model.layers[0].weight.at[2].set(0.0))
    with pytest.raises(ValueError, match=r"weight layer 0 has zero row\(s\) \[2\]"):
        getattr(wnjax, kind)(model)
    # Leaving that layer unnormalized is fine.
    p = getattr(wnjax, kind)(model, where=lambda m: [m.layers[1]])
    assert isinstance(p.layers[0], wnjax.Standard)


def test_max_steps_exhausted_keeps_partial_result(problem):
    model, X, y = problem
    p = wnjax.ewn(model)
    with pytest.raises(wnjax.FlowFailed, match="max_steps") as info:
        _flow(p, X, y, t1=50.0, max_steps=5, n_save=8)
    r = info.value.result
    assert not bool(r.ok)
    assert int(r.stats["num_steps"]) == 5
    assert isinstance(r.final, wnjax.Parameterized)
    assert 0 < float(r.final_time) < 50.0
    # The partial result is the real state: its loss matches the reported one and has decreased.
    np.testing.assert_allclose(
        float(wnjax.log_loss(r.final, X, y)), float(r.final_log_loss), rtol=1e-12
    )
    assert float(r.final_log_loss) < float(wnjax.log_loss(p, X, y))
    with pytest.raises(wnjax.FlowFailed):
        r.check()

    with pytest.warns(RuntimeWarning, match="max_steps"):
        r2 = _flow(p, X, y, t1=50.0, max_steps=5, n_save=8, throw=False)
    assert not bool(r2.ok)
    np.testing.assert_array_equal(weights(r2.final), weights(r.final))


def weights(model):
    return np.concatenate(
        [
            np.asarray(layer.weight).ravel()
            for layer in wnjax.weight_layers(wnjax.to_standard(model))
        ]
    )


def test_diverging_gd(problem):
    model, X, y = problem
    with pytest.raises(wnjax.GDFailed, match="diverged") as info:
        gd(model, X, y, num_steps=200, learning_rate=1e4)
    r = info.value.result
    assert not bool(r.ok)
    assert np.isfinite(float(r.final_log_loss))
    assert np.all(np.isfinite(weights(r.final)))
    with pytest.warns(RuntimeWarning, match="diverged"):
        r2 = gd(model, X, y, num_steps=200, learning_rate=1e4, throw=False)
    assert not bool(r2.ok)


def test_bad_gd_options(problem):
    model, X, y = problem
    with pytest.raises(ValueError, match="learning_rate"):
        wnjax.gradient_descent(model, X, y, num_steps=10)
    with pytest.raises(ValueError, match="batch_size must be in 1..12"):
        _gd(model, X, y, batch_size=20, key=jax.random.key(0))
    with pytest.raises(ValueError, match="PRNG key"):
        _gd(model, X, y, batch_size=4)
