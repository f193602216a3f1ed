"""Losses, evaluated in log space so that ``log L`` stays finite at ``log L = -10,000``.

Margin-based losses sum over points (as Exp-WN does), not a mean:

- exponential: ``L = sum_i exp(-q_i)``, so ``log L = logsumexp(-q)``;
- logistic: ``L = sum_i log(1 + exp(-q_i))``, so ``log L = logsumexp(log softplus(-q))``;
- cross-entropy: ``l_i = log(1 + sum_{j != y_i} exp(f_j - f_{y_i}))``;
- square: ``L = 1/2 sum_i ||f(x_i) - y_i||^2`` (``mean=True`` divides by ``n``).

Margins are ``q_i = y_i f(x_i)`` (binary) and ``q_i = f_{y_i} - max_{j != y_i} f_j`` (multi-class).
"""

from __future__ import annotations

import abc
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from jaxtyping import Array

from wnjax._nets.dense import apply_each
from wnjax._runtime.errors import InvalidInput


def log_softplus(z: Array) -> Array:
    """``log(log(1 + exp(z)))``, accurate where ``softplus(z)`` underflows.

    For ``z < -20``, ``log1p(e^z) = e^z (1 - e^z/2 + ...)``, so the result is ``z - e^z/2`` to
    double precision.
    """
    small = z < -20.0
    z_safe = jnp.where(small, 0.0, z)
    return jnp.where(
        small, z - 0.5 * jnp.exp(jnp.minimum(z, -20.0)), jnp.log(jax.nn.softplus(z_safe))
    )


def _log_softplus_and_slope(z: Array) -> tuple[Array, Array]:
    """``(log_softplus(z), d/dz log_softplus(z))`` from one ``exp(-|z|)``: the slope is
    ``sigmoid(z) / softplus(z)``, and ``1 - e^z/2`` where ``z < -20`` (``log_softplus``'s
    ``z - e^z/2`` there)."""
    e = jnp.exp(-jnp.abs(z))
    small = z < -20.0
    softplus = jnp.maximum(z, 0.0) + jnp.log1p(e)
    a = jnp.where(small, z - 0.5 * e, jnp.log(jnp.where(small, 1.0, softplus)))
    sigmoid = jnp.where(z >= 0, 1.0, e) / (1.0 + e)
    slope = jnp.where(small, 1.0 - 0.5 * e, sigmoid / jnp.where(small, 1.0, softplus))
    return a, slope


def _binary_outputs(outputs: Array) -> Array:
    """Accept outputs of shape ``(n,)`` or ``(n, 1)``; return ``(n,)``."""
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return outputs[:, 0]
    if outputs.ndim != 1:
        raise InvalidInput(
            f"a binary loss needs one output per example (shape () or (1,)), got outputs of "
            f"shape {outputs.shape[1:]} per example; use loss='cross_entropy' for several classes."
        )
    return outputs


class Loss(eqx.Module):
    """A loss ``L(w) = sum_i l(q_i)``, evaluated as ``log L``."""

    binary: bool = eqx.field(static=True, default=True)

    @abc.abstractmethod
    def log_loss(self, outputs: Array, y: Array) -> Array:
        """``log L`` from the network outputs on all points (leading axis) and labels."""

    def log_losses(self, outputs: Array, y: Array) -> Array:
        """``log l_i`` of each point, whose ``logsumexp`` is ``log L``."""
        return jax.vmap(lambda o, t: self.log_loss(o[None], t[None]))(outputs, y)

    def loss(self, outputs: Array, y: Array) -> Array:
        """``L``, summed directly where the loss has a closed form, else ``exp(log L)``; it
        underflows to 0 below ``log L ~ -745`` (float64)."""
        return jnp.exp(self.log_loss(outputs, y))

    def margins(self, outputs: Array, y: Array) -> Array:
        """Margins ``q_i = y_i f(x_i)``."""
        return y * _binary_outputs(outputs)

    @property
    def margin_based(self) -> bool:
        return True


class Exponential(Loss):
    """``l(q) = exp(-q)``: ``log L = logsumexp(-q)``.

    ``log L`` stays exact where ``L`` itself underflows:

    ```python
    >>> import jax.numpy as jnp, wnjax
    >>> outputs, y = jnp.array([800.0, 900.0]), jnp.array([1.0, 1.0])
    >>> float(wnjax.Exponential().log_loss(outputs, y))  # log(e^-800 + e^-900)
    -800.0
    >>> float(wnjax.Exponential().loss(outputs, y))  # e^-800 underflows
    0.0

    ```
    """

    def log_loss(self, outputs, y):
        return logsumexp(-self.margins(outputs, y))

    def loss(self, outputs, y):
        return jnp.sum(jnp.exp(-self.margins(outputs, y)))


class Logistic(Loss):
    """``l(q) = log(1 + exp(-q))``: ``log L = logsumexp(log softplus(-q))``."""

    def log_loss(self, outputs, y):
        return logsumexp(log_softplus(-self.margins(outputs, y)))

    def loss(self, outputs, y):
        return jnp.sum(jax.nn.softplus(-self.margins(outputs, y)))


class LogisticThenExponential(Loss):
    """Logistic while some margin is at most `switch`, exponential once all exceed it:
    ``log L = logsumexp(-q)`` if ``min_i q_i > switch``, else ``logsumexp(log softplus(-q))``,
    decided at each point (Exp-WN's lin-sep code: ``switch = 30``)."""

    switch: float = eqx.field(static=True, default=30.0)

    def log_loss(self, outputs, y):
        return _switched_log_loss(self.margins(outputs, y), self.switch)

    def log_losses(self, outputs, y):
        q = self.margins(outputs, y)  # one branch for every point, as in log_loss
        return jnp.where(jnp.min(q) > self.switch, -q, log_softplus(-q))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _switched_log_loss(q: Array, switch: float) -> Array:
    """``LogisticThenExponential``'s ``log L`` of the margins ``q``."""
    return _switched_value_and_grad(q, switch)[0]


@_switched_log_loss.defjvp
def _switched_jvp(switch, primals, tangents):
    value, grad = _switched_value_and_grad(primals[0], switch)
    return value, jnp.sum(grad * tangents[0])


def _switched_value_and_grad(q: Array, switch: float) -> tuple[Array, Array]:
    """``(log L, d log L / dq)`` of ``LogisticThenExponential`` in closed form, both branches
    from one ``max``: exponential, ``d/dq_i = -softmax(-q)_i``; logistic, ``a_i = log
    softplus(-q_i)``, ``d/dq_i = -softmax(a)_i a'(-q_i)`` (``_log_softplus_and_slope``).
    ``a`` increases with ``-q``, so ``max a = a(max(-q))`` shifts its sum, and both sums are
    one reduction. The selected branch only is differentiated (autodiff of ``where`` runs both
    backwards), and higher derivatives differentiate these formulas."""
    z = -q
    top = jnp.max(z)
    a, slope = _log_softplus_and_slope(z)
    top_a, _ = _log_softplus_and_slope(top)
    w = jnp.stack([jnp.exp(z - top), jnp.exp(a - top_a)])
    total = jnp.sum(w, axis=-1)
    value_exp = top + jnp.log(total[0])
    value_log = top_a + jnp.log(total[1])
    exponential = -top > switch  # min q > switch
    return (
        jnp.where(exponential, value_exp, value_log),
        jnp.where(exponential, -w[0] / total[0], -(w[1] / total[1]) * slope),
    )


class CrossEntropy(Loss):
    """``l_i = log(1 + sum_{j != y_i} exp(f_j - f_{y_i}))``, labels are class indices."""

    binary: bool = eqx.field(static=True, default=False)

    def _others(self, outputs, y):
        k = outputs.shape[1]
        onehot = jax.nn.one_hot(y, k, dtype=bool)
        f_y = jnp.take_along_axis(outputs, y[:, None], axis=1)
        diff = outputs - f_y
        return jnp.where(onehot, -jnp.inf, diff)

    def log_loss(self, outputs, y):
        z = logsumexp(self._others(outputs, y), axis=1)
        return logsumexp(log_softplus(z))

    def margins(self, outputs, y):
        return -jnp.max(self._others(outputs, y), axis=1)


class Square(Loss):
    """``L = 1/2 sum_i ||f(x_i) - y_i||^2`` (``mean=True``: divided by ``n``)."""

    mean: bool = eqx.field(static=True, default=False)

    def log_loss(self, outputs, y):
        return jnp.log(self.loss(outputs, y))

    def log_losses(self, outputs, y):
        r = outputs.reshape(outputs.shape[0], -1) - y.reshape(y.shape[0], -1)
        return jnp.log(0.5 * jnp.sum(r * r, axis=1) / (r.shape[0] if self.mean else 1))

    def loss(self, outputs, y):
        r = outputs.reshape(outputs.shape[0], -1) - y.reshape(y.shape[0], -1)
        total = 0.5 * jnp.sum(r * r)
        return total / r.shape[0] if self.mean else total

    def margins(self, outputs, y):
        return jnp.full((outputs.shape[0],), jnp.nan, outputs.dtype)

    @property
    def margin_based(self) -> bool:
        return False


LOSSES = {
    "exponential": Exponential,
    "logistic": Logistic,
    "cross_entropy": CrossEntropy,
    "square": Square,
}


def get_loss(loss: str | Loss) -> Loss:
    """Resolve a loss name (``'exponential'``, ``'logistic'``, ``'cross_entropy'``, ``'square'``).

    A ``Loss`` instance is returned as it is.

    ```python
    >>> import wnjax
    >>> wnjax.get_loss("logistic")
    Logistic()
    >>> wnjax.get_loss(wnjax.Square(mean=True))
    Square(mean=True)

    ```
    """
    if isinstance(loss, Loss):
        return loss
    try:
        return LOSSES[loss]()
    except KeyError:
        raise InvalidInput(f"unknown loss {loss!r}: choose one of {sorted(LOSSES)}.") from None


def log_loss(model, X: Array, y: Array, loss: str | Loss = "exponential") -> Array:
    """``log L(w)`` of ``model`` on the data ``(X, y)``: the model is vmapped over ``X``.

    Differentiable in every mode (``jax.jvp``, ``jax.jacfwd`` included). GD and flows compute
    their gradients through ``model.batched`` instead, where the model has it.
    """
    loss = get_loss(loss)
    X, y = _checked(X, y, loss)
    return loss.log_loss(apply_each(model, X), y)


def margins(model, X: Array, y: Array, loss: str | Loss = "exponential") -> Array:
    """Margins ``q_i`` of ``model`` on ``(X, y)``."""
    loss = get_loss(loss)
    X, y = _checked(X, y, loss)
    return loss.margins(apply_each(model, X), y)


def _checked(X, y, loss: Loss):
    """``wnjax._runtime.validate.check_data`` (which skips traced data)."""
    from wnjax._runtime.validate import check_data

    return check_data(X, y, loss)
