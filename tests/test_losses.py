"""Log-space losses against the naive formulas, and against asymptotic closed forms at
log L = -1e4."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wnjax


def naive(name, f, y):
    """The textbook loss values, in numpy, with no log-space tricks."""
    f = np.asarray(f, dtype=np.float64)
    y = np.asarray(y)
    if name == "exponential":
        return np.log(np.sum(np.exp(-y * f.reshape(-1))))
    if name == "logistic":
        return np.log(np.sum(np.log1p(np.exp(-y * f.reshape(-1)))))
    if name == "cross_entropy":
        p = np.exp(f) / np.sum(np.exp(f), axis=1, keepdims=True)
        return np.log(np.sum(-np.log(p[np.arange(len(y)), y])))
    if name == "square":
        return np.log(
            0.5 * np.sum((f.reshape(len(y), -1) - np.asarray(y).reshape(len(y), -1)) ** 2)
        )
    raise AssertionError(name)


def _data(name, key, n=9, k=4, scale=3.0):
    k1, k2 = jax.random.split(key)
    if name == "cross_entropy":
        return scale * jax.random.normal(k1, (n, k)), jax.random.randint(k2, (n,), 0, k)
    f = scale * jax.random.normal(k1, (n, 1))
    if name == "square":
        return f, jax.random.normal(k2, (n,))
    return f, jnp.where(jax.random.bernoulli(k2, 0.5, (n,)), 1.0, -1.0)


@pytest.mark.parametrize("name", ["exponential", "logistic", "cross_entropy", "square"])
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_log_loss_equals_naive_formula(name, scale):
    loss = wnjax.get_loss(name)
    for seed in range(3):
        f, y = _data(name, jax.random.key(seed), scale=scale)
        np.testing.assert_allclose(loss.log_loss(f, y), naive(name, f, y), rtol=1e-12, atol=1e-12)
        if loss.binary:  # scalar outputs are accepted as well as shape (1,)
            np.testing.assert_allclose(
                loss.log_loss(f[:, 0], y), naive(name, f, y), rtol=1e-12, atol=1e-12
            )


@pytest.mark.parametrize("name", ["exponential", "logistic", "cross_entropy", "square"])
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_loss_and_its_gradient_equal_the_naive_formula(name, scale):
    """``Loss.loss`` (the plain-time flow's field is ``-grad L``) is ``L`` and its gradient is
    ``L grad log L``, against numpy and finite differences of the naive ``log L``."""
    loss = wnjax.get_loss(name)
    for seed in range(3):
        f, y = _data(name, jax.random.key(seed), scale=scale)
        L = float(np.exp(naive(name, f, y)))
        np.testing.assert_allclose(float(loss.loss(f, y)), L, rtol=1e-12)
        g = np.asarray(jax.grad(loss.loss)(f, y))
        h = 1e-6 * max(1.0, float(np.max(np.abs(f))))
        fd = np.zeros_like(g)
        for i in np.ndindex(g.shape):
            e = np.zeros(g.shape)
            e[i] = h
            up, down = naive(name, np.asarray(f) + e, y), naive(name, np.asarray(f) - e, y)
            fd[i] = L * (up - down) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7 * np.max(np.abs(fd)))


@pytest.mark.parametrize("name", ["exponential", "logistic", "cross_entropy", "square"])
def test_each_points_log_loss_is_the_naive_formula_on_that_point(name):
    """``Loss.log_losses``: point ``i``'s ``log l_i`` is the naive ``log L`` of that point
    alone (over ``n`` under ``Square(mean=True)``), and their ``logsumexp`` is ``log L``."""
    loss = wnjax.get_loss(name)
    f, y = _data(name, jax.random.key(5))
    each = np.asarray(loss.log_losses(f, y))
    want = [naive(name, f[i : i + 1], y[i : i + 1]) for i in range(len(y))]
    np.testing.assert_allclose(each, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.logaddexp.reduce(each), loss.log_loss(f, y), rtol=1e-12)
    if name == "square":
        mean = wnjax.Square(mean=True)
        np.testing.assert_allclose(
            np.asarray(mean.log_losses(f, y)), np.asarray(want) - np.log(len(y)), rtol=1e-12
        )


@pytest.mark.parametrize("shift", [0.0, 40.0])
def test_logistic_then_exponential_log_losses_follow_the_whole_losss_branch(shift):
    """Every point's ``log l_i`` takes the branch the whole loss takes: exponential (``-q_i``)
    once every margin exceeds 30, else logistic, whatever its own margin."""
    loss = wnjax.LogisticThenExponential()
    f, y = _data("logistic", jax.random.key(6), scale=3.0)
    f = f + shift * y[:, None]  # every margin raised by shift
    q = np.asarray(f[:, 0] * y)
    each = np.asarray(loss.log_losses(f, y))
    want = -q if q.min() > 30 else np.log(np.log1p(np.exp(-q)))
    np.testing.assert_allclose(each, want, rtol=1e-12)
    np.testing.assert_allclose(np.logaddexp.reduce(each), loss.log_loss(f, y), rtol=1e-12)


def test_margins():
    f, y = _data("exponential", jax.random.key(0))
    np.testing.assert_allclose(
        wnjax.get_loss("logistic").margins(f, y), np.asarray(y) * np.asarray(f[:, 0])
    )
    f, y = _data("cross_entropy", jax.random.key(1))
    fn, yn = np.asarray(f), np.asarray(y)
    others = np.where(np.eye(f.shape[1], dtype=bool)[yn], -np.inf, fn)
    np.testing.assert_allclose(
        wnjax.get_loss("cross_entropy").margins(f, y),
        fn[np.arange(len(yn)), yn] - others.max(axis=1),
    )


def test_log_softplus():
    z = np.linspace(-40.0, 30.0, 141)
    np.testing.assert_allclose(
        wnjax._losses.log_softplus(jnp.asarray(z)), np.log(np.log1p(np.exp(z))), rtol=1e-13
    )
    # Far below: log(log(1 + e^z)) = z - e^z/2 + ... = z to double precision.
    np.testing.assert_array_equal(
        wnjax._losses.log_softplus(jnp.asarray([-1e4, -800.0])), [-1e4, -800.0]
    )


def _compiled(loss, n=7):
    def value(o):
        return loss.log_loss(o, jnp.ones(n))

    return {
        "value": jax.jit(value),
        "grad": jax.jit(jax.grad(value)),
        "hessian": jax.jit(jax.hessian(value)),
    }


_LTE_FUNCTIONS = {
    "ours": _compiled(wnjax.LogisticThenExponential(switch=30.0)),
    "exponential": _compiled(wnjax.Exponential()),
    "logistic": _compiled(wnjax.Logistic()),
}


@pytest.mark.parametrize(
    "scale, shift", [(0.3, 0.0), (3.0, 0.0), (10.0, 25.0), (5.0, 40.0), (40.0, -20.0), (1.0, 800.0)]
)
def test_logistic_then_exponential_value_gradient_and_curvature(scale, shift):
    """The loss, its gradient and its Hessian in the margins against the naive formulas (numpy,
    logistic or exponential by the smallest margin), central differences of them, and autodiff
    of the two branches: on both sides of the switch, and far out."""
    loss = wnjax.LogisticThenExponential(switch=30.0)
    y = np.ones(7)
    q = np.random.default_rng(int(scale * 10 + shift)).normal(size=7) * scale + shift
    exponential = q.min() > 30.0
    if shift < 700:
        naive_value = naive("exponential" if exponential else "logistic", q[:, None], y)
    else:  # e^-q underflows: log sum e^-q_i = -min q + log sum e^-(q_i - min q)
        naive_value = -q.min() + np.log(np.sum(np.exp(-(q - q.min()))))
    value = float(loss.log_loss(jnp.asarray(q), jnp.asarray(y)))
    np.testing.assert_allclose(value, naive_value, rtol=1e-12)

    # each compiled whole, once for all cases: op by op, the first Hessian alone would dispatch
    # ~10 s of tiny compilations
    ours, branch = (
        _LTE_FUNCTIONS["ours"],
        _LTE_FUNCTIONS["exponential" if exponential else "logistic"],
    )
    np.testing.assert_allclose(ours["grad"](q), branch["grad"](q), rtol=1e-13, atol=1e-300)
    H = ours["hessian"](q)
    np.testing.assert_allclose(H, branch["hessian"](q), rtol=1e-11, atol=1e-13 * np.abs(H).max())
    if abs(shift) < 100:  # central differences of the value and of the gradient
        h = 1e-5 * max(1.0, scale)
        value_at = ours["value"]
        fd = [(value_at(q + h * e) - value_at(q - h * e)) / (2 * h) for e in np.eye(7)]
        g = ours["grad"](q)
        np.testing.assert_allclose(fd, g, rtol=1e-6, atol=1e-9 * np.abs(g).max())


OFFSETS = np.array([0.0, 0.0, 0.5, 3.0, 10.0, 40.0, 1000.0])


@pytest.mark.parametrize("name", ["exponential", "logistic"])
def test_binary_losses_at_log_loss_minus_1e4(name):
    """``q_i = Q + d_i``, ``Q = 1e4``: ``log L = -Q + log sum_i exp(-d_i)`` up to ``O(e^-Q)``."""
    q_min = 1e4
    y = jnp.asarray([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0])
    f = (q_min + jnp.asarray(OFFSETS)) * y
    loss = wnjax.get_loss(name)
    expected = -q_min + np.log(np.sum(np.exp(-OFFSETS)))
    with np.errstate(divide="ignore"):
        assert naive(name, f, y) == -np.inf  # the naive formula underflows
    value = loss.log_loss(f, y)
    assert np.isfinite(value)
    np.testing.assert_allclose(value, expected, rtol=1e-15)
    # d log L / d f_i = -y_i softmax(-q)_i.
    grad = jax.grad(loss.log_loss)(f, y)
    weights = np.exp(-OFFSETS) / np.sum(np.exp(-OFFSETS))
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, -np.asarray(y) * weights, rtol=1e-12, atol=1e-300)


def test_cross_entropy_at_log_loss_minus_1e4():
    """``f_{y_i} - f_j = Q + d_ij``: ``log L = -Q + log sum_{i, j != y_i} exp(-d_ij)``."""
    q_min = 1e4
    rng = np.random.default_rng(0)
    n, k = 6, 3
    y = rng.integers(0, k, n)
    d = rng.uniform(0.0, 5.0, (n, k))
    d[0, (y[0] + 1) % k] = 0.0
    f = np.zeros((n, k))
    f[np.arange(n), y] = q_min  # f_j = -d_ij for j != y_i
    mask = np.arange(k)[None, :] != y[:, None]
    f = np.where(mask, -d, f)
    expected = -q_min + np.log(np.sum(np.exp(-d[mask])))
    loss = wnjax.get_loss("cross_entropy")
    value = loss.log_loss(jnp.asarray(f), jnp.asarray(y))
    np.testing.assert_allclose(value, expected, rtol=1e-15)
    grad = np.asarray(jax.grad(loss.log_loss)(jnp.asarray(f), jnp.asarray(y)))
    w = np.where(mask, np.exp(-np.where(mask, d, 0.0)), 0.0)
    w = w / w.sum()
    # d log L / d f_j = w_ij (j != y_i); d log L / d f_{y_i} = -sum_j w_ij.
    expected_grad = np.where(mask, w, -w.sum(axis=1, keepdims=True))
    # f_j - f_{y_i} is formed at magnitude 1e4, where one ulp is 1.8e-12.
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(loss.margins(jnp.asarray(f), jnp.asarray(y)).min(), q_min)


@pytest.mark.parametrize("name", ["exponential", "logistic"])
def test_model_gradient_finite_at_log_loss_minus_1e4(name):
    """A linear model ``f(x) = w.x`` scaled until ``min_i q_i = 1e4``:
    ``grad log L = -sum_i s_i y_i x_i`` with ``s = softmax(-q)``."""
    X = jnp.asarray([[1.0, 0.5], [0.8, -0.2], [-1.0, -0.3], [-0.6, 0.9]])
    y = jnp.asarray([1.0, 1.0, -1.0, -1.0])
    model = wnjax.MLP(2, 1, 1, activation="linear", key=jax.random.key(0))
    w = jnp.asarray([[1.0, 0.1]])
    q = np.asarray(y * (X @ w[0]))
    c = 1e4 / q.min()
    model = eqx.tree_at(lambda m: m.layers[0].weight, model, c * w)
    value, grads = eqx.filter_value_and_grad(lambda m: wnjax.log_loss(m, X, y, name))(model)
    s = np.exp(-(c * q - c * q.min()))
    s = s / s.sum()
    np.testing.assert_allclose(
        value, -c * q.min() + np.log(np.sum(np.exp(-(c * q - c * q.min())))), rtol=1e-15
    )
    expected = -np.sum((s * np.asarray(y))[:, None] * np.asarray(X), axis=0)
    assert np.all(np.isfinite(grads.layers[0].weight))
    np.testing.assert_allclose(grads.layers[0].weight[0], expected, rtol=1e-12)
