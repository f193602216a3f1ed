"""Parameterizations: docs/theory.md §1 chain-rule gradients, conversion, layer selection.

References: the chain-rule formulas written out here from ``nabla_u = dL/dw_u``, central finite
differences, and the plain model itself (for conversions).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import separable_data
from jax.flatten_util import ravel_pytree

import wnjax


def exp_loss(model, X, y):
    """``L = sum_i exp(-y_i f(x_i))``, written independently of ``wnjax``'s losses."""
    return jnp.sum(jnp.exp(-y * jax.vmap(model)(X).reshape(-1)))


def small_mlp(key):
    return wnjax.MLP(3, 5, 2, activation="relu2", key=key)


def small_cnn(key):
    return wnjax.CNN(1, (3,), activation="relu2", key=key)


def mlp_data(key):
    return separable_data(key, n=10, d=3)


def cnn_data(key):
    k1, k2 = jax.random.split(key)
    X = jax.random.normal(k1, (8, 1, 4, 4))
    y = jnp.where(jax.random.bernoulli(k2, 0.5, (8,)), 1.0, -1.0)
    return X, y


class HandBuilt(eqx.Module):
    """An arbitrary bias-free net of equinox layers, not one of wnjax's classes."""

    blocks: dict

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.blocks = {
            "conv": eqx.nn.Conv1d(2, 3, 3, padding=1, use_bias=False, key=k1),
            "mlp": [
                eqx.nn.Linear(15, 4, use_bias=False, key=k2),
                eqx.nn.Linear(4, 1, use_bias=False, key=k3),
            ],
        }

    def __call__(self, x):
        h = jax.nn.relu(self.blocks["conv"](x)).ravel()
        h = jax.nn.relu(self.blocks["mlp"][0](h))
        return self.blocks["mlp"][1](h)


def _perturb(p, key):
    """Move every parameter off its converted value: ``||v_u|| != 1``, shifted ``a_u``/``g_u``."""
    layers = []
    for layer in p.layers:
        key, k1, k2 = jax.random.split(key, 3)
        n = layer.v.shape[0]
        c = jax.random.uniform(k1, (n,), minval=0.5, maxval=2.0)
        v = layer.v * c.reshape((n,) + (1,) * (layer.v.ndim - 1))
        shift = jax.random.uniform(k2, (n,), minval=-0.5, maxval=0.5)
        if isinstance(layer, wnjax.EWN):
            layers.append(wnjax.EWN(a=layer.a + shift, v=v))
        else:
            layers.append(wnjax.SWN(g=layer.g * (1.0 + shift), v=v))
    return eqx.tree_at(lambda q: q.layers, p, tuple(layers))


def _chain_rule(layer, nabla):
    """docs/theory.md §1: the gradients of one layer's parameters from ``nabla_u = dL/dw_u``."""
    v = np.asarray(layer.v).reshape(layer.v.shape[0], -1)
    nab = np.asarray(nabla).reshape(v.shape)
    vn = np.linalg.norm(v, axis=1)
    radial = np.sum(v * nab, axis=1) / vn  # v_u . nabla_u / ||v_u||
    tangential = nab - (radial / vn)[:, None] * v  # (I - P_u) nabla_u
    if isinstance(layer, wnjax.EWN):
        w = np.exp(np.asarray(layer.a))[:, None] * v / vn[:, None]
        w_norm = np.linalg.norm(w, axis=1)
        scale = np.sum((w / w_norm[:, None]) * nab, axis=1) * w_norm  # ||w_u|| w^_u . nabla_u
        dv = (np.exp(np.asarray(layer.a)) / vn)[:, None] * tangential
    else:
        scale = radial
        dv = (np.asarray(layer.g) / vn)[:, None] * tangential
    return scale, dv.reshape(layer.v.shape)


@pytest.mark.parametrize("kind", ["ewn", "swn"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_gradients_match_chain_rule_and_finite_differences(kind, arch):
    key = jax.random.key(3)
    model = small_mlp(key) if arch == "mlp" else small_cnn(key)
    X, y = mlp_data(jax.random.key(4)) if arch == "mlp" else cnn_data(jax.random.key(4))
    p = _perturb(getattr(wnjax, kind)(model), jax.random.key(5))
    assert np.all(np.abs(np.asarray(p.direction_norms()) - 1.0) > 1e-3)

    grads = eqx.filter_grad(exp_loss)(p, X, y)
    nablas = [
        layer.weight for layer in wnjax.weight_layers(eqx.filter_grad(exp_loss)(p.standard(), X, y))
    ]
    for layer, g, nabla in zip(p.layers, grads.layers, nablas):
        scale, dv = _chain_rule(layer, nabla)
        got_scale = g.a if kind == "ewn" else g.g
        np.testing.assert_allclose(got_scale, scale, rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(g.v, dv, rtol=1e-11, atol=1e-13)
        # dL/dv_u is orthogonal to v_u.
        flat_v = np.asarray(layer.v).reshape(layer.v.shape[0], -1)
        flat_g = np.asarray(g.v).reshape(flat_v.shape)
        assert np.max(np.abs(np.sum(flat_v * flat_g, axis=1))) < 1e-12 * np.abs(flat_g).max()

    params, static = eqx.partition(p, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    f = jax.jit(jax.vmap(lambda theta: exp_loss(eqx.combine(unravel(theta), static), X, y)))
    h = 1e-6
    steps = h * jnp.eye(flat.size)
    fd = np.asarray((f(flat[None] + steps) - f(flat[None] - steps)) / (2 * h))
    analytic = np.asarray(ravel_pytree(eqx.filter(grads, eqx.is_inexact_array))[0])
    np.testing.assert_allclose(fd, analytic, rtol=0, atol=1e-7 * np.abs(analytic).max())


def _outputs(model, X):
    return np.asarray(jax.vmap(model)(X))


@pytest.mark.parametrize("arch", ["mlp", "cnn", "hand_built"])
@pytest.mark.parametrize("kind", ["ewn", "swn", "standard"])
def test_conversion_preserves_function(arch, kind):
    key = jax.random.key(7)
    if arch == "mlp":
        model, X = small_mlp(key), mlp_data(jax.random.key(8))[0]
    elif arch == "cnn":
        model, X = small_cnn(key), cnn_data(jax.random.key(8))[0]
    else:
        model, X = HandBuilt(key), jax.random.normal(jax.random.key(8), (6, 2, 5))
    p = getattr(wnjax, kind)(model)
    ref = _outputs(model, X)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(_outputs(p, X), ref, rtol=0, atol=1e-12 * scale)
    back = wnjax.to_standard(p)
    assert type(back) is type(model)
    np.testing.assert_allclose(_outputs(back, X), ref, rtol=0, atol=1e-12 * scale)
    for w_back, w in zip(wnjax.weight_layers(back), wnjax.weight_layers(model)):
        np.testing.assert_allclose(w_back.weight, w.weight, rtol=1e-13, atol=0)
    # Starts at ||v_u|| = 1, and the scale parameter is the neuron norm.
    np.testing.assert_allclose(p.direction_norms(), 1.0, rtol=0, atol=1e-14)
    norms = np.concatenate(
        [
            np.linalg.norm(np.asarray(w.weight).reshape(w.weight.shape[0], -1), axis=1)
            for w in wnjax.weight_layers(model)
        ]
    )
    np.testing.assert_allclose(p.neuron_norms(), norms, rtol=1e-13)
    scales = np.concatenate([np.asarray(layer.scale_params()) for layer in p.layers])
    np.testing.assert_allclose(scales, norms, rtol=1e-13)
    # Converting a parameterized model again starts from its plain weights.
    again = getattr(wnjax, kind)(p)
    np.testing.assert_allclose(_outputs(again, X), ref, rtol=0, atol=1e-12 * scale)


def test_neurons_are_rows_and_filters():
    model = small_cnn(jax.random.key(0))
    p = wnjax.ewn(model)
    conv_w = model.convs[0].weight  # (out, in, kh, kw): a neuron is one filter
    np.testing.assert_allclose(
        p.layers[0].a, np.log(np.sqrt(np.sum(np.asarray(conv_w) ** 2, axis=(1, 2, 3)))), rtol=1e-13
    )
    assert p.layers[0].a.shape == (3,)
    assert p.layers[1].a.shape == (1,)


@pytest.mark.parametrize("kind", ["ewn", "swn"])
def test_where_normalizes_only_chosen_layers(kind):
    model = wnjax.MLP(3, 5, 3, activation="relu", key=jax.random.key(1))
    p = getattr(wnjax, kind)(model, where=lambda m: [m.layers[1]])
    cls = wnjax.EWN if kind == "ewn" else wnjax.SWN
    assert [type(layer) for layer in p.layers] == [wnjax.Standard, cls, wnjax.Standard]
    X = mlp_data(jax.random.key(2))[0]
    np.testing.assert_allclose(_outputs(p, X), _outputs(model, X), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="not an eqx.nn.Linear"):
        getattr(wnjax, kind)(model, where=lambda m: [m.activation])
    with pytest.raises(ValueError, match="selected no layer"):
        getattr(wnjax, kind)(model, where=lambda m: [])


def test_parameterize_takes_a_parameterization_by_name():
    """``parameterize(model, 'ewn')`` (any case, as ``parameterization``) is ``wnjax.ewn(model)``,
    with ``where`` too; a name it does not know, or a class, is refused with the names it
    knows."""
    model = wnjax.MLP(3, 5, 3, activation="relu", key=jax.random.key(1))
    for name in ("ewn", "SWN", "standard"):
        got = wnjax.parameterize(model, name, where=lambda m: [m.layers[1]])
        want = wnjax.parameterization(name)  # any case too
        want = want(model) if name == "standard" else want(model, where=lambda m: [m.layers[1]])
        assert eqx.tree_equal(got, want)
    for bad in ("wn", wnjax.EWN, 3):
        with pytest.raises(wnjax.InvalidInput, match="'ewn', 'standard', 'swn'"):
            wnjax.parameterize(model, bad)


def test_frozen_layer_gets_no_gradient():
    model = wnjax.MLP(2, 6, 2, activation="relu", key=jax.random.key(1))
    X, y = separable_data(jax.random.key(2), n=8, d=2)
    p = wnjax.ewn(model, where=lambda m: [m.layers[0]], freeze=lambda m: [m.layers[1]])
    assert [type(layer) for layer in p.layers] == [wnjax.EWN, wnjax.Frozen]
    g = eqx.filter_grad(exp_loss)(p, X, y)
    assert np.all(np.asarray(g.layers[1].w) == 0.0)
    assert np.abs(np.asarray(g.layers[0].v)).max() > 0


def test_hidden_bias_is_trainable():
    model = wnjax.MLP(3, 5, 2, activation="relu", hidden_bias=True, key=jax.random.key(1))
    X, y = mlp_data(jax.random.key(2))
    p = wnjax.ewn(model, where=lambda m: [m.layers[0]])
    np.testing.assert_allclose(_outputs(p, X), _outputs(model, X), rtol=0, atol=1e-12)
    g_p = eqx.filter_grad(exp_loss)(p, X, y)
    g_plain = eqx.filter_grad(exp_loss)(model, X, y)
    assert g_p.skeleton.layers[0].bias is not None
    np.testing.assert_allclose(g_p.skeleton.layers[0].bias, g_plain.layers[0].bias, rtol=1e-12)
    assert np.abs(np.asarray(g_plain.layers[0].bias)).max() > 0


class BareReadout(eqx.Module):
    """``f(x) = a . relu(W x)^2`` with the readout ``a`` a bare array (not a layer)."""

    hidden: eqx.nn.Linear
    a: jax.Array

    def __call__(self, x):
        return jnp.dot(self.a, jax.nn.relu(self.hidden(x)) ** 2)


class LayerReadout(eqx.Module):
    """The same function with the readout held in a bias-free ``eqx.nn.Linear(width, 1)``."""

    hidden: eqx.nn.Linear
    readout: eqx.nn.Linear

    def __call__(self, x):
        return self.readout(jax.nn.relu(self.hidden(x)) ** 2)[0]


def _readout_pair(key):
    k1, k2 = jax.random.split(key)
    hidden = eqx.nn.Linear(3, 6, use_bias=False, key=k1)
    a = jax.random.normal(k2, (6,))
    readout = eqx.tree_at(lambda l: l.weight, eqx.nn.Linear(6, 1, use_bias=False, key=k2), a[None])
    return BareReadout(hidden, a), LayerReadout(hidden, readout)


@pytest.mark.parametrize("kind", ["standard", "ewn"])
@pytest.mark.slow
def test_bare_weight_arrays_are_weights_of_the_norm_degree_margin_and_kkt(kind):
    """A weight held as a bare array is trained, so it is part of ``w``: the degree is 3 in
    ``(W, a)`` together, the normalized margin is ``min q / ||(W, a)||^3`` (closed form), and
    KKT stationarity is ``sin angle(w, -grad L)`` over all of ``w`` (autograd of a loss written
    here)."""
    bare, layered = _readout_pair(jax.random.key(3))
    X, y = mlp_data(jax.random.key(4))
    y = jnp.sign(jax.vmap(bare)(X))  # separated by the model itself: q_min > 0
    p = bare if kind == "standard" else wnjax.ewn(bare)
    # the layered twin normalizes the same neurons (its readout stays unnormalized)
    twin = layered if kind == "standard" else wnjax.ewn(layered, where=lambda m: [m.hidden])
    assert round(wnjax.homogeneity_degree(wnjax.ewn(bare), X), 6) == 3
    assert round(wnjax.homogeneity_degree(bare, X), 6) == 3

    w_sq = jnp.sum(bare.hidden.weight**2) + jnp.sum(bare.a**2)
    q = y * jax.vmap(bare)(X)
    gamma = wnjax.normalized_margin(p, X, y, degree=3)
    np.testing.assert_allclose(gamma, jnp.min(q) / w_sq**1.5, rtol=1e-12)
    np.testing.assert_allclose(gamma, wnjax.normalized_margin(twin, X, y, degree=3), rtol=1e-12)

    g = jax.grad(exp_loss)(bare, X, y)
    w_vec = jnp.concatenate([bare.hidden.weight.ravel(), bare.a])
    g_vec = -jnp.concatenate([g.hidden.weight.ravel(), g.a])
    cos = jnp.dot(w_vec, g_vec) / (jnp.linalg.norm(w_vec) * jnp.linalg.norm(g_vec))
    kkt = wnjax.approximate_kkt_residual(p, X, y, degree=3)
    np.testing.assert_allclose(kkt["stationarity"], jnp.sqrt(1 - cos**2), rtol=1e-8)
    kkt_twin = wnjax.approximate_kkt_residual(twin, X, y, degree=3)
    for k in kkt:
        np.testing.assert_allclose(kkt[k], kkt_twin[k], rtol=1e-10)
    # relative neuron norms are over the layer's neurons, relative to all of ||w||
    np.testing.assert_allclose(
        wnjax.relative_neuron_norms(p),
        jnp.linalg.norm(bare.hidden.weight, axis=1) / jnp.sqrt(w_sq),
        rtol=1e-12,
    )

    # the flow trains the bare array as the twin trains its readout layer
    r = wnjax.gradient_flow(p, X, y, t1=5.0, rtol=1e-10, atol=1e-12)
    r_twin = wnjax.gradient_flow(twin, X, y, t1=5.0, rtol=1e-10, atol=1e-12)
    final, final_twin = wnjax.to_standard(r.final), wnjax.to_standard(r_twin.final)
    np.testing.assert_allclose(final.a, final_twin.readout.weight[0], rtol=1e-7)
    assert float(jnp.linalg.norm(final.a - bare.a)) > 1e-2
    np.testing.assert_allclose(
        r.summaries["normalized_margin"], r_twin.summaries["normalized_margin"], rtol=1e-7
    )


class BareLinear(eqx.Module):
    """``f(x) = w . x`` with ``w`` a bare array: no layer, so no neurons."""

    w: jax.Array

    def __call__(self, x):
        return jnp.dot(self.w, x)


@pytest.mark.slow
def test_a_model_of_bare_arrays_runs_unnormalized_and_refuses_normalization():
    """Without ``Linear``/``Conv`` layers a model has no neurons: its plain flow runs (the same
    path as the one-neuron layer model) and EWN/SWN say how to give it neurons."""
    X, y = mlp_data(jax.random.key(5))
    w0 = 0.1 * jax.random.normal(jax.random.key(6), (3,))
    bare = BareLinear(w0)
    layer = eqx.nn.Linear(3, 1, use_bias=False, key=jax.random.key(0))
    layer = eqx.tree_at(lambda l: l.weight, layer, w0[None])

    class OneNeuron(eqx.Module):
        lin: eqx.nn.Linear

        def __call__(self, x):
            return self.lin(x)[0]

    kw = dict(time="normalized", t1=1e6, target_log_loss=-1000.0, rtol=1e-10, atol=1e-12)
    r = wnjax.gradient_flow(bare, X, y, **kw)
    r_ref = wnjax.gradient_flow(OneNeuron(layer), X, y, **kw)
    assert bool(r.reached_target)
    np.testing.assert_allclose(r.final.w, r_ref.final.lin.weight[0], rtol=1e-6)
    np.testing.assert_allclose(
        r.summaries["normalized_margin"], r_ref.summaries["normalized_margin"], rtol=1e-6
    )
    assert r.summaries["neuron_norms"].shape[-1] == 0
    for kind in (wnjax.ewn, wnjax.swn):
        with pytest.raises(wnjax.InvalidInput, match="eqx.nn.Linear"):
            kind(bare)
