"""Every float32 model evaluation of the library, forward and backward, asks for true float32
matrix products and convolutions (on GPUs JAX's default may round to TensorFloat-32), and a
precision the user has set stands. Read off the programs' StableHLO, which names the precision
of each ``dot_general`` and ``convolution``."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import wnjax
import wnjax._nets.models


class UserNet(eqx.Module):
    """A user's own bias-free net of ``eqx.nn.Linear`` layers, with no ``batched``."""

    hidden: eqx.nn.Linear
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(jnp.square(jax.nn.relu(self.hidden(x))))


def _precisions(fn, *args) -> list[str]:
    text = jax.jit(fn).lower(*args).as_text()
    ops = [ln for ln in text.splitlines() if "dot_general" in ln or "convolution" in ln]
    assert ops, "the program has no products"
    found = []
    for ln in ops:
        m = re.search(r"precision = \[(\w+), (\w+)\]", ln) or re.search(
            r"precision_config = \[#stablehlo<precision (\w+)>, #stablehlo<precision (\w+)>\]", ln
        )
        found.append(m.groups() if m else ("DEFAULT", "DEFAULT"))
    return sorted({p for pair in found for p in pair})


def _data(d=3, n=8):
    X = jax.random.normal(jax.random.key(0), (n, d), jnp.float32)
    return X, jnp.where(X[:, 0] >= 0, 1.0, -1.0).astype(jnp.float32)


def _models(d=3):
    k1, k2 = jax.random.split(jax.random.key(1))
    user = UserNet(
        eqx.nn.Linear(d, 5, use_bias=False, key=k1), eqx.nn.Linear(5, 1, use_bias=False, key=k2)
    )
    mlp = wnjax.MLP(d, 5, 2, activation="relu2", key=jax.random.key(2))
    f32 = lambda m: jax.tree_util.tree_map(  # noqa: E731
        lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, m
    )
    return {"user": f32(user), "mlp": f32(mlp), "ewn": f32(wnjax.ewn(mlp))}


@pytest.fixture(autouse=True)
def fresh_caches():
    """Programs traced under a patched dense-path threshold are dropped before other tests."""
    yield
    jax.clear_caches()


@pytest.mark.parametrize(
    "name, dense_path",
    [("user", False), ("mlp", False), ("mlp", True), ("ewn", True)],
    ids=["user", "mlp-vmap-path", "mlp-dense-path", "ewn-dense-path"],
)
def test_float32_products_of_loss_gd_and_flow(name, dense_path, monkeypatch):
    """``wnjax.MLP.batched`` takes the ``dense`` product (a custom gradient) above a size, the
    vmapped model below it: both paths are checked (a user's net has no ``batched``)."""
    if dense_path:
        monkeypatch.setattr(wnjax._nets.models, "DENSE_MIN_MACS", 0)
    jax.clear_caches()  # the threshold is read when a program is traced
    X, y = _data()
    model = _models()[name]

    def gd(m):
        r = wnjax.traced_gradient_descent(m, X, y, num_steps=2, learning_rate=0.1, n_save=2)
        return r.final_log_loss

    def flow(m):
        r = wnjax.gradient_flow(m, X, y, t1=0.5, n_save=2, save_states=False, throw=False)
        return r.final_log_loss

    assert _precisions(lambda m: wnjax.log_loss(m, X, y), model) == ["HIGHEST"]
    assert _precisions(lambda m: wnjax.normalized_margin(m, X, y, 3.0), model) == ["HIGHEST"]
    assert _precisions(gd, model) == ["HIGHEST"]
    assert _precisions(flow, model) == ["HIGHEST"]


def test_float32_convolutions():
    X = jax.random.normal(jax.random.key(0), (4, 1, 6, 6), jnp.float32)
    y = jnp.asarray([1.0, -1.0, 1.0, -1.0], jnp.float32)
    net = wnjax.CNN(1, [3], activation="relu2", key=jax.random.key(1))
    net = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, net
    )

    def gd(m):
        return wnjax.traced_gradient_descent(m, X, y, num_steps=2, learning_rate=0.1).final_log_loss

    assert _precisions(gd, net) == ["HIGHEST"]


def test_a_precision_the_user_sets_stands():
    X, y = _data()
    model = _models()["mlp"]

    def gd(m):
        r = wnjax.traced_gradient_descent(m, X, y, num_steps=2, learning_rate=0.1, n_save=2)
        return r.final_log_loss

    with jax.default_matmul_precision("tensorfloat32"):
        assert _precisions(gd, model) == ["HIGH"]
    with jax.default_matmul_precision("bfloat16"):
        assert _precisions(lambda m: wnjax.log_loss(m, X, y), model) == ["DEFAULT"]
