"""Any module's kinks (``jax.nn.relu``, leaky ReLU, ``abs``, ``where``, maxout): the vector
field blends the derivatives of the two sides (``wnjax.smooth_kinks``), and the flow it gives
follows gradient descent as the step vanishes (``test_kinks``)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import needs_default_codegen, slow_params
from test_kinks import _data, _leaves

import wnjax
from wnjax._nets.kinks import _rewrite, count_kinks


class Maxout(eqx.Module):
    """``a . max(W1 x, W2 x)^p``: homogeneous, with a kink where ``W1 x = W2 x``."""

    first: eqx.nn.Linear
    second: eqx.nn.Linear
    head: eqx.nn.Linear
    power: int = eqx.field(static=True)

    def __init__(self, d, width, key, power=1):
        k1, k2, k3 = jax.random.split(key, 3)
        self.first = eqx.nn.Linear(d, width, use_bias=False, key=k1)
        self.second = eqx.nn.Linear(d, width, use_bias=False, key=k2)
        self.head = eqx.nn.Linear(width, "scalar", use_bias=False, key=k3)
        self.power = power

    def __call__(self, x):
        return self.head(jnp.maximum(self.first(x), self.second(x)) ** self.power)


class ScanReLU(eqx.Module):
    """ReLU layers applied in a ``lax.scan`` (``while_loop=True``: a ``lax.while_loop``)."""

    layers: jax.Array
    head: jax.Array
    while_loop: bool = eqx.field(static=True, default=False)

    def __call__(self, x):
        if self.while_loop:
            n = self.layers.shape[0]
            step = lambda c: (c[0] + 1, jax.nn.relu(self.layers[c[0]] @ c[1]))  # noqa: E731
            return self.head @ jax.lax.while_loop(lambda c: c[0] < n, step, (0, x))[1]
        h, _ = jax.lax.scan(lambda h, W: (jax.nn.relu(W @ h), None), x, self.layers)
        return self.head @ h


class Checkpointed(eqx.Module):
    """A ReLU layer under ``jax.checkpoint``, with a ``jax.debug.callback`` (an effect, no
    output) on its pre-activations."""

    layer: eqx.nn.Linear
    head: eqx.nn.Linear

    def __call__(self, x):
        def hidden(x):
            z = self.layer(x)
            jax.debug.callback(lambda z: None, z)
            return jax.nn.relu(z)

        return self.head(jax.checkpoint(hidden)(x))


class BranchNet(eqx.Module):
    """``sum relu(W x)`` or ``sum |W x|`` by the sign of ``x_0`` (a ``lax.cond``)."""

    W: jax.Array

    def __call__(self, x):
        def relu(h):
            return jnp.sum(jax.nn.relu(self.W @ h))

        def absolute(h):
            return jnp.sum(jnp.abs(self.W @ h))

        return jax.lax.cond(x[0] > 0, relu, absolute, x)


class PoolNet(eqx.Module):
    """A ReLU convolution, max pooling (``eqx.nn.MaxPool2d``, padded: its edge windows hold
    ``-inf``) or a global max (``jnp.max`` over the image), and a linear head: 1-homogeneous."""

    conv: eqx.nn.Conv2d
    head: eqx.nn.Linear
    pool: eqx.nn.MaxPool2d | None

    def __init__(self, key, global_max=False):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 3, 3, padding=1, use_bias=False, key=k1)
        self.pool = None if global_max else eqx.nn.MaxPool2d(3, 2, padding=1)
        self.head = eqx.nn.Linear(3 if global_max else 27, "scalar", use_bias=False, key=k2)

    def __call__(self, x):
        h = jax.nn.relu(self.conv(x))
        h = jnp.max(h, axis=(1, 2)) if self.pool is None else self.pool(h).reshape(-1)
        return self.head(h)


class OrderNet(eqx.Module):
    """``a . h(W x)`` with ``h`` MaxMin (``jnp.sort`` of pairs, a GroupSort activation) or the
    3 largest of 6 units (``lax.top_k``): homogeneous, with kinks where two units swap."""

    first: eqx.nn.Linear
    head: eqx.nn.Linear
    top: bool = eqx.field(static=True)

    def __init__(self, d, key, top=False):
        k1, k2 = jax.random.split(key)
        self.first = eqx.nn.Linear(d, 6, use_bias=False, key=k1)
        self.head = eqx.nn.Linear(3 if top else 6, "scalar", use_bias=False, key=k2)
        self.top = top

    def __call__(self, x):
        z = self.first(x)
        h = jax.lax.top_k(z, 3)[0] if self.top else jnp.sort(z.reshape(3, 2), axis=1).ravel()
        return self.head(h)


def _mlp(activation, depth=1, key=None):
    key = jax.random.key(1) if key is None else key
    return eqx.nn.MLP(
        5, "scalar", 8, depth, activation=activation, use_bias=False, use_final_bias=False, key=key
    )


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "leaky": lambda z: jax.nn.leaky_relu(z, 0.1),
    "abs": jnp.abs,
    "where": lambda z: jnp.where(z > 0, z, 0.0),
    "min": lambda z: -jnp.minimum(-z, 0.0),
}
# The modules of the smoothing check besides the MLPs with the activations above.
MODULES = ("maxout", "ewn", "wnjax-mlp", "scan", "cond", "checkpoint", "pool", "max", "sort", "top")


@pytest.mark.parametrize(
    "name",
    slow_params([*ACTIVATIONS, *MODULES], {"pool"}),
)
def test_smoothing_keeps_a_modules_values_and_its_gradient_off_the_kinks(name):
    """With a width far below every ``|z|`` (``kappa = 1e-10``) the blend leaves the outputs of
    the rewritten evaluation bit for bit, the outputs are the module's own to rounding (calls
    are inlined, and XLA may lay out a dot of the inlined program otherwise: its sums in
    another order), and the gradient is the module's (each side's own derivative is taken
    exactly beyond the layer); every kink is counted, through ``vmap``'s moves of a ``where``'s
    condition and ``jax.nn.relu``'s custom derivative, through EWN, in wnjax's ``MLP`` with a
    function for its activation, in a ``lax.scan``'s body, in a ``lax.cond``'s branches,
    under ``jax.checkpoint`` beside an effect, in max pooling and a global max, and in a sort
    and a ``top_k``."""
    X = jax.random.normal(jax.random.key(0), (7, 5))
    if name in ("pool", "max"):  # a ReLU and a many-way max
        X = jax.random.normal(jax.random.key(0), (7, 1, 6, 6))
        model, kinks = PoolNet(jax.random.key(5), global_max=name == "max"), 2
    elif name == "maxout":
        model, kinks = Maxout(5, 6, jax.random.key(2)), 1
    elif name in ("sort", "top"):
        model, kinks = OrderNet(5, jax.random.key(6), top=name == "top"), 1
    elif name == "ewn":
        model, kinks = wnjax.ewn(_mlp(jax.nn.relu, depth=2)), 2
    elif name == "wnjax-mlp":  # wnjax's MLP with a function for activation: its dense path
        model, kinks = wnjax.MLP(5, 8, 3, activation=jax.nn.relu, key=jax.random.key(1)), 2
    elif name == "scan":  # one kink, in the scan's body
        keys = jax.random.split(jax.random.key(3))
        layers = jax.random.normal(keys[0], (3, 5, 5))
        model, kinks = ScanReLU(layers, jax.random.normal(keys[1], (5,))), 1
    elif name == "cond":  # one kink in each branch
        model, kinks = BranchNet(jax.random.normal(jax.random.key(3), (6, 5))), 2
    elif name == "checkpoint":
        k1, k2 = jax.random.split(jax.random.key(4))
        layer = eqx.nn.Linear(5, 6, use_bias=False, key=k1)
        model, kinks = Checkpointed(layer, eqx.nn.Linear(6, "scalar", use_bias=False, key=k2)), 1
    else:
        model, kinks = _mlp(ACTIVATIONS[name], depth=2), 2
    assert count_kinks(model, X) == (kinks, 0)

    def f(m, smooth):
        out = jax.vmap(wnjax.smooth_kinks(lambda m, x: m(x), 1e-10 if smooth else 0.0), (None, 0))
        return jnp.sum(jnp.sin(out(m, X)))

    outs = [_rewrite(lambda m, x: m(x), kappa, (model, X[0]))[0] for kappa in (1e-10, 0.0)]
    np.testing.assert_array_equal(*outs)
    np.testing.assert_allclose(float(f(model, True)), float(f(model, False)), rtol=1e-14)
    smooth, plain = (eqx.filter_grad(f)(model, s) for s in (True, False))
    for a, b in zip(_leaves(smooth), _leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_on_a_kink_the_derivative_is_the_midpoint_and_off_it_the_sides():
    """``sum relu(W x)`` with ``z = w_0 . x`` swept through 0: the smoothed derivative in
    ``W[0, 0]`` is ``x_0`` times the midpoint of ReLU's ``{0, 1}`` on the kink, the side's own
    from ``|z| = 2 width`` on (``width = kappa sqrt(b_0^2 + mean_u b_u^2)``, ``b_u = ||w_u||
    ||x||``), and rises monotonically in between."""
    x = jnp.array([1.0, 2.0])
    rest = jnp.array([[1.0, 0.5], [-0.3, 1.0]])
    kappa = 0.1
    f = wnjax.smooth_kinks(lambda W: jnp.sum(jax.nn.relu(W @ x)), kappa)

    def g(z):
        W = jnp.concatenate([jnp.array([[z, 0.0]]), rest])
        return jax.grad(f)(W)[0, 0]

    def width(z):
        b2 = np.array([z * z, *np.sum(np.asarray(rest) ** 2, axis=1)]) * float(x @ x)
        return kappa * np.sqrt(b2[0] + b2.mean())

    assert float(g(0.0)) == 0.5
    for z in (-1.0, -0.5, 0.5, 1.0):
        assert abs(z) >= 2 * width(z)
        assert float(g(z)) == float(z > 0), z
    zs = jnp.linspace(-0.1, 0.1, 21)
    values = np.asarray(jax.vmap(g)(zs))
    assert np.all(np.diff(values) > 0) and 0 < values.min() and values.max() < 1
    np.testing.assert_allclose(values + values[::-1], 1.0, atol=1e-14)


def test_a_tie_of_a_many_way_max_shares_the_derivative():
    """``max_u w_u . x`` over 4 units (``jnp.max``) and over the 2x2 windows of max pooling
    (``eqx.nn.MaxPool2d``): with ``k`` of them tied for the maximum (``k`` = 1, 2, 4) each tied
    unit's derivative is ``x/k``, the others' 0; a minimum likewise, and off the tie the
    derivative is the maximizer's own."""
    x = jnp.array([1.0, 2.0])
    for tied in (1, 2, 4):
        W = jnp.array([[1.0, 0.5]] * tied + [[-1.0, 0.25]] * (4 - tied))
        want = np.outer(np.arange(4) < tied, np.asarray(x)) / tied
        top = wnjax.smooth_kinks(lambda W: jnp.max(W @ x), 0.1)
        low = wnjax.smooth_kinks(lambda W: jnp.min(-(W @ x)), 0.1)
        np.testing.assert_allclose(jax.grad(top)(W), want, atol=1e-15)
        np.testing.assert_allclose(jax.grad(low)(W), -want, atol=1e-15)

        def pooled(W):  # the 4 units laid out as one 2x2 window
            z = (W @ x).reshape(1, 2, 2)
            return eqx.nn.MaxPool2d(2, 2)(z)[0, 0, 0]

        np.testing.assert_allclose(jax.grad(wnjax.smooth_kinks(pooled, 0.1))(W), want, atol=1e-15)


def test_a_tie_of_a_sort_or_top_k_shares_the_derivative():
    """``c . sort(W x)`` over 3 units and ``c . top_k(W x, 2)``: the tied units share the
    weights ``c_k`` of the outputs they fill equally, an untied unit has its own output's; off a
    tie but within the blend's width (two units 1e-3 apart), ``sum sort(W x)`` still has the
    derivative ``x`` in every unit, as ``sum_k sort(z)_k = sum_i z_i``."""
    x = jnp.array([1.0, 2.0])
    c = jnp.array([0.3, -1.1, 2.0])
    low, high = [1.0, 0.5], [3.0, 1.0]  # w . x = 2 and 5
    for rows, want in [
        ([low, low, high], [(c[0] + c[1]) / 2, (c[0] + c[1]) / 2, c[2]]),
        ([low, low, low], [c.sum() / 3] * 3),
        ([high, low, [0.0, 0.0]], [c[2], c[1], c[0]]),
    ]:
        W = jnp.array(rows)
        got = jax.grad(wnjax.smooth_kinks(lambda W: c @ jnp.sort(W @ x), 0.01))(W)
        np.testing.assert_allclose(got, np.outer(want, np.asarray(x)), atol=1e-15)
    d = c[:2]
    for rows, want in [
        ([high, high, low], [d.sum() / 2, d.sum() / 2, 0.0]),
        ([high, low, low], [d[0], d[1] / 2, d[1] / 2]),
    ]:
        W = jnp.array(rows)
        got = jax.grad(wnjax.smooth_kinks(lambda W: d @ jax.lax.top_k(W @ x, 2)[0], 0.01))(W)
        np.testing.assert_allclose(got, np.outer(want, np.asarray(x)), atol=1e-15)
    W = jnp.array([low, [1.0, 0.5005], high])  # 2 and 2.001: within the width
    total = jax.grad(wnjax.smooth_kinks(lambda W: jnp.sum(jnp.sort(W @ x)), 0.01))(W)
    np.testing.assert_allclose(total, np.outer(np.ones(3), np.asarray(x)), atol=1e-14)
    near = jax.grad(wnjax.smooth_kinks(lambda W: c @ jnp.sort(W @ x), 0.01))(W)
    assert 0 < abs(float(near[0, 0] - c[0])) < abs(float(c[1] - c[0]))  # blended, not c_0's


class Picked(eqx.Module):
    """An entry of ``z = W x`` picked by an index: ``argmax z`` or ``argsort z`` (of the
    weights' values), or ``argmax x`` (of the data alone)."""

    first: eqx.nn.Linear
    by: str = eqx.field(static=True)

    def __call__(self, x):
        z = self.first(x)
        if self.by == "argsort":
            return z[jnp.argsort(z)[-1]]
        return z[jnp.argmax(z if self.by == "argmax" else x[:4])]


@pytest.mark.slow
def test_a_run_short_of_its_target_names_the_kinks_left_as_they_are():
    """``max_u w_u . x`` taken as ``z[argmax z]``: the field leaves that kink as it is (an
    index of the weights' values), counts it in ``stats['kinks_left']``, and a run that runs out
    of steps says so and how to write it instead."""
    X, y = _margin_data(0)
    net = Picked(eqx.nn.Linear(5, 4, use_bias=False, key=jax.random.key(1)), "argmax")
    r = wnjax.gradient_flow(
        net, X, y, time="normalized", target_log_loss=-300.0, max_steps=200, throw=False
    )
    assert int(r.stop_code) == 1 and int(r.stats["kinks_left"]) == 1
    assert "leaves 1 kinked operation" in r.message and "jnp.max" in r.message


class Preprocessed(eqx.Module):
    """``mlp`` on features of the input made with ``abs``, ``where`` and ``max``: kinks of the
    data alone."""

    mlp: eqx.nn.MLP

    def __call__(self, x):
        return self.mlp(jnp.abs(x) * jnp.where(x > 0, 1.0, -1.0) + jnp.maximum(x, 0.0))


@pytest.mark.slow
def test_powers_data_masks_guards_and_loops_are_left_alone():
    """A kink whose value there is 0, raised to a power above 1, has a continuous derivative
    (ReLU^2 as ``**``, ``jnp.square`` or ``jnp.power``, ``|z|^3``, ReLU^1.5, leaky ReLU^2) and is
    not counted; one whose value there is not 0 is (``max(z, 1)^2``, maxout squared); kinks on
    the data alone (features ``|x|``, ``max(x, 0)``) are no kinks of the derivative in the
    weights, so a ReLU^2 net on them has none and its flow says nothing of kinks; a ``where``
    whose condition is far from changing leaves its derivative exactly as it is; a kink inside
    a ``lax.while_loop`` is counted as left."""
    X = jax.random.normal(jax.random.key(0), (4, 5))
    assert count_kinks(_mlp(lambda z: jax.nn.relu(z) ** 2), X) == (0, 0)
    assert count_kinks(_mlp(lambda z: jnp.abs(z) ** 3), X) == (0, 0)
    assert count_kinks(_mlp(lambda z: jnp.square(jax.nn.relu(z))), X) == (0, 0)
    assert count_kinks(_mlp(lambda z: jnp.power(jax.nn.relu(z), 1.5)), X) == (0, 0)
    assert count_kinks(_mlp(lambda z: jax.nn.leaky_relu(z, 0.1) ** 2), X) == (0, 0)
    assert count_kinks(_mlp(lambda z: jnp.maximum(z, 1.0) ** 2), X) == (1, 0)
    assert count_kinks(Maxout(5, 3, jax.random.key(0), power=2), X) == (1, 0)
    assert count_kinks(Preprocessed(_mlp(jax.nn.relu)), X) == (1, 0)
    smooth_net = Preprocessed(_mlp(lambda z: jax.nn.relu(z) ** 2))
    assert count_kinks(smooth_net, X) == (0, 0)
    r = wnjax.gradient_flow(smooth_net, X, jnp.sign(X[:, 0]), t1=1.0)
    assert float(r.stats["kink_width"]) == 0 and "kink" not in r.message
    assert count_kinks(eqx.nn.Linear(5, "scalar", use_bias=False, key=jax.random.key(0)), X) == (
        0,
        0,
    )
    keys = jax.random.split(jax.random.key(3))
    loop = ScanReLU(
        jax.random.normal(keys[0], (2, 5, 5)), jax.random.normal(keys[1], (5,)), while_loop=True
    )
    assert count_kinks(loop, X) == (0, 1)
    # an index of the weights' values picks entries: left as it is; one of the data is no kink
    first = eqx.nn.Linear(5, 4, use_bias=False, key=jax.random.key(1))
    for by, left in [("argmax", 1), ("argsort", 1), ("data", 0)]:
        assert count_kinks(Picked(first, by), X) == (0, left), by

    def guarded(v):  # v / |v| guarded at v = 0, then a ReLU
        n = jnp.sqrt(jnp.sum(v * v))
        return jax.nn.relu(jnp.where(n > 0, v / jnp.where(n > 0, n, 1.0), 0.0) @ X.T)

    v = jnp.array([0.3, -1.0, 0.5, 2.0, -0.7])
    smooth = jax.jacobian(wnjax.smooth_kinks(guarded, 1e-10))(v)
    np.testing.assert_allclose(np.asarray(smooth), np.asarray(jax.jacobian(guarded)(v)), rtol=1e-14)


def _margin_data(seed, n=24, d=5):
    """``n`` Gaussian points moved apart along a Gaussian teacher ``w``: margin 0.3."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    X, w = jax.random.normal(k1, (n, d)), jax.random.normal(k2, (d,))
    y = jnp.sign(X @ w)
    return X + 0.3 * y[:, None] * (w / jnp.linalg.norm(w))[None, :], y


@pytest.mark.slow
@pytest.mark.parametrize("name", ["relu", "leaky", "maxout", "sort", "top"])
def test_equinox_modules_with_kinks_reach_deep_targets_with_the_defaults(name):
    """``eqx.nn.MLP`` with ReLU (depth 2 and 3) and leaky ReLU, a maxout net, and MaxMin
    (``jnp.sort``) and top-3 (``lax.top_k``) nets; standard, SWN, EWN; one seed for the MLPs
    (six runs each), two for the others: every normalized flow reaches log L = -300 with the
    defaults (with the module's own derivative none of 18 ReLU and leaky runs on two seeds did:
    each ran out of 100,000 steps at log L between 0.4 and 3; nor did two runs of a deeper
    MaxMin net with its sort left unsmoothed), except that a ReLU run may lose an example for
    good on its way (every unit of a layer off on it: output 0, and no gradient of its own loss,
    in the model itself): it then ends on that floor, and says so (one of 12 ReLU runs on two
    seeds, EWN at depth 3). EWN's flow is the rate-scaled one on the smoothed field too
    (``flow_equivalence``, on the ReLU net)."""
    floors = 0
    for seed in range(1 if name in ("relu", "leaky") else 2):
        X, y = _margin_data(seed)
        key = jax.random.key(100 + seed)
        if name == "maxout":
            nets = [Maxout(5, 8, key)]
        elif name in ("sort", "top"):
            nets = [OrderNet(5, key, top=name == "top")]
        else:
            nets = [_mlp(ACTIVATIONS[name], depth, key) for depth in (1, 2)]
        for net in nets:
            for parameterize in (lambda m: m, wnjax.swn, wnjax.ewn):
                r = wnjax.gradient_flow(
                    parameterize(net),
                    X,
                    y,
                    time="normalized",
                    target_log_loss=-300.0,
                    throw=name != "relu",
                )
                if name == "relu" and not bool(r.reached_target):
                    floors += 1
                    final = wnjax.to_standard(r.final)
                    dead = np.asarray(jax.vmap(final)(X)) == 0
                    grads = eqx.filter_vmap(eqx.filter_grad(lambda m, x: m(x)), in_axes=(None, 0))(
                        final, X
                    )
                    assert dead.any() and int(r.stats["stuck_examples"]) == dead.sum(), r.message
                    for g in jax.tree_util.tree_leaves(grads):
                        assert not np.any(np.asarray(g)[dead]), "a stuck example moves"
                    assert "log L sits at a floor" in r.message
                else:
                    assert bool(r.ok) and bool(r.reached_target), (seed, r.message)
    assert floors <= 1
    if name == "relu":
        check = wnjax.flow_equivalence(nets[0], X, y, t1=1.0)
        assert check["ewn_max_rel_err"] < 1e-6, check


@pytest.mark.slow
@pytest.mark.parametrize("global_max", [False, True])
@needs_default_codegen
def test_max_pooling_nets_reach_deep_targets_with_the_defaults(global_max):
    """A ReLU convolution with max pooling (standard, SWN, EWN) or a global max (EWN) and a
    linear head, on 20 random 6x6 images with random labels: every normalized flow reaches
    log L = -300 with the defaults (with the pooling's own derivative none of 12 such runs on
    other random images did: each ran out of 100,000 steps at log L above 2)."""
    k1, k2 = jax.random.split(jax.random.key(7))
    X = jax.random.normal(k1, (20, 1, 6, 6))
    y = jnp.where(jax.random.bernoulli(k2, 0.5, (20,)), 1.0, -1.0)
    net = PoolNet(jax.random.key(8), global_max)
    for parameterize in [wnjax.ewn] if global_max else [lambda m: m, wnjax.swn, wnjax.ewn]:
        r = wnjax.gradient_flow(parameterize(net), X, y, time="normalized", target_log_loss=-300.0)
        assert bool(r.ok) and bool(r.reached_target), r.message


@pytest.mark.slow  # ~15-25 s cold: run by make test-all (CI), not make test
def test_examples_on_which_every_unit_is_dead_set_a_floor_the_message_names():
    """An EWN ReLU net (5-8-1, 24 points) whose flow leaves one example with every hidden unit
    inactive: its output stays 0, its loss 1, so log L cannot fall below 0. With
    ``stop_stalled=True`` the run stops on that floor (``FLOOR``), and its message says why (not
    that the field jumps), with the floor and the count in ``stats``."""
    from wnjax._dynamics.flow import FLOOR

    X, y = _data(1, 24)
    r = wnjax.gradient_flow(
        wnjax.ewn(_mlp(jax.nn.relu, 1, jax.random.key(101))),
        X,
        y,
        time="normalized",
        target_log_loss=-300.0,
        stop_stalled=True,
        throw=False,
    )
    assert not bool(r.reached_target) and int(r.stop_code) == FLOOR
    outputs = np.asarray(jax.vmap(wnjax.to_standard(r.final))(X))
    hidden = np.asarray(jax.vmap(lambda x: r.final.standard().layers[0](x))(X))
    dead = np.all(hidden <= 0, axis=1)
    assert int(r.stats["stuck_examples"]) == int(dead.sum()) >= 1
    assert np.all(outputs[dead] == 0)
    # their summed exponential loss, exp(-0) each
    assert float(r.stats["stuck_log_loss"]) == pytest.approx(np.log(dead.sum()), abs=1e-12)
    assert "sits at a floor" in r.message and "jump" not in r.message


@pytest.mark.slow
def test_a_module_holding_a_function_keeps_its_states():
    """``eqx.nn.MLP`` holds its activation, a function, as a field: the saved states of GD and
    of a plain-time flow (stacked models) come back as that module, one state per save point;
    the flow's last is its ``final``, and each GD state's loss is the one it logged."""
    X, y = _data(2, 8)
    net = _mlp(jax.nn.relu)
    gd = wnjax.gradient_descent(net, X, y, learning_rate=0.05, num_steps=20, save_states=True)
    flow = wnjax.gradient_flow(net, X, y, t1=0.5, n_save=3, save_states=True)
    assert gd.states.activation is jax.nn.relu and flow.states.activation is jax.nn.relu
    assert flow.states.layers[0].weight.shape == (3, 8, 5)
    for a, b in zip(_leaves(flow.final), _leaves(flow.states)):
        np.testing.assert_allclose(b[-1], a, rtol=1e-12, atol=1e-14)
    for k in range(gd.states.layers[0].weight.shape[0]):
        state = jax.tree_util.tree_map(lambda a: a[k] if eqx.is_array(a) else a, gd.states)
        assert float(wnjax.log_loss(state, X, y)) == pytest.approx(float(gd.log_loss[k]), rel=1e-12)
