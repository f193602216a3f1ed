"""Models: forward passes against explicit formulas, and the homogeneity degree."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.signal import correlate2d

import wnjax


def test_mlp_forward_matches_matrix_formula():
    model = wnjax.MLP(3, 5, 3, out_size=2, activation="relu2", key=jax.random.key(0))
    X = np.asarray(jax.random.normal(jax.random.key(1), (7, 3)))
    W1, W2, W3 = (np.asarray(layer.weight) for layer in model.layers)
    relu2 = lambda z: np.maximum(z, 0.0) ** 2
    expected = relu2(relu2(X @ W1.T) @ W2.T) @ W3.T
    out = np.asarray(jax.vmap(model)(jnp.asarray(X)))
    assert out.shape == (7, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-13)


@pytest.mark.parametrize("pool", ["mean", "flatten"])
def test_cnn_forward_matches_scipy_correlation(pool):
    model = wnjax.CNN(2, (3,), out_size=1, pool=pool, spatial_shape=(5, 5), key=jax.random.key(0))
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, 5)))
    K = np.asarray(model.convs[0].weight)  # (out, in, 3, 3); equinox convolves as correlation
    h = np.stack([sum(correlate2d(x[c], K[o, c], mode="same") for c in range(2)) for o in range(3)])
    h = np.maximum(h, 0.0)
    feats = h.reshape(3, -1).mean(axis=1) if pool == "mean" else h.ravel()
    expected = np.asarray(model.head.weight) @ feats
    np.testing.assert_allclose(model(jnp.asarray(x)), expected, rtol=1e-12)


X_HOM = jax.random.normal(jax.random.key(5), (6, 3))


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_homogeneity_degree_of_linear_nets(depth):
    model = wnjax.MLP(3, 4, depth, activation="linear", key=jax.random.key(depth))
    assert abs(wnjax.homogeneity_degree(model, X_HOM) - depth) < 1e-8


@pytest.mark.parametrize(
    "activation, depth, expected",
    [("relu2", 2, 3.0), ("relu", 3, 3.0), ("relu^3", 2, 4.0), ("relu2", 3, 7.0)],
)
def test_homogeneity_degree_of_relu_power_nets(activation, depth, expected):
    """Degree of a depth-D ReLU^p net: ``1 + p + ... + p^(D-1)`` (a 2-layer ReLU^2 net: 3)."""
    model = wnjax.MLP(3, 4, depth, activation=activation, key=jax.random.key(2))
    X = X_HOM
    assert abs(wnjax.homogeneity_degree(model, X) - expected) < 1e-8
    # Parameterized models have the degree of their plain weights.
    assert abs(wnjax.homogeneity_degree(wnjax.ewn(model), X) - expected) < 1e-8


def test_homogeneity_degree_of_cnn():
    model = wnjax.CNN(1, (3, 2), activation="relu", key=jax.random.key(0))
    X = jax.random.normal(jax.random.key(1), (4, 1, 5, 5))
    assert abs(wnjax.homogeneity_degree(model, X) - 3.0) < 1e-8


_FREEZE = {
    None: None,
    "first": lambda m: [wnjax.weight_layers(m)[0]],
    "last": lambda m: [wnjax.weight_layers(m)[-1]],
}


_NETS = ["linear-3", "relu-3", "relu2-2", "relu2-3", "relu^3-2", "cnn-relu", "cnn-relu2"]


@pytest.mark.parametrize(
    "net, frozen",
    [("linear-1", None)] + [(n, f) for n in _NETS for f in (None, "first", "last")],
)
def test_known_degree_is_the_measured_degree(net, frozen):
    """The degree of wnjax's MLPs and CNNs read off their layers (frozen layers included) is
    the one measured by scaling the weights."""
    from wnjax._nets.models import known_degree

    if net.startswith("cnn"):
        model = wnjax.CNN(1, (3, 2), activation=net[4:], key=jax.random.key(0))
        X = jax.random.normal(jax.random.key(1), (4, 1, 5, 5))
    else:
        activation, depth = net.split("-")
        model = wnjax.MLP(3, 4, int(depth), activation=activation, key=jax.random.key(2))
        X = X_HOM
    freeze = _FREEZE[frozen]
    for p in (wnjax.ewn(model, freeze=freeze), wnjax.swn(model, freeze=freeze)):
        known = known_degree(p)
        assert known is not None
        assert abs(wnjax.homogeneity_degree(p, X) - known) < 1e-8
    assert known_degree(model) == known_degree(wnjax.ewn(model))


def test_known_degree_leaves_other_models_to_the_measurement():
    from wnjax._nets.models import known_degree

    assert known_degree(wnjax.MLP(3, 4, 2, hidden_bias=True, key=jax.random.key(0))) is None
    assert known_degree(wnjax.MLP(3, 4, 2, activation=jnp.tanh, key=jax.random.key(0))) is None

    class Shifted(wnjax.MLP):  # the same layers, another function
        def __call__(self, x):
            return super().__call__(x) + 1.0

    assert known_degree(Shifted(3, 4, 2, key=jax.random.key(0))) is None
    linear = eqx.nn.Linear(3, 1, use_bias=False, key=jax.random.key(0))
    assert known_degree(wnjax.ewn(linear)) is None  # a model of the user's: measured


def test_homogeneity_degree_rejects_biases_and_non_homogeneous_nets():
    with pytest.raises(ValueError, match="bias"):
        wnjax.homogeneity_degree(wnjax.MLP(3, 4, 2, hidden_bias=True, key=jax.random.key(0)), X_HOM)
    with pytest.raises(ValueError, match="not homogeneous|not positively homogeneous"):
        wnjax.homogeneity_degree(
            wnjax.MLP(3, 4, 2, activation=jnp.tanh, key=jax.random.key(0)), X_HOM
        )
