"""Bias-free homogeneous networks: MLPs with homogeneous activations, and CNNs.

A bias-free network whose activation is ``k``-homogeneous is positively homogeneous in its
weights: ``Phi(c w; x) = c^L Phi(w; x)`` for ``c > 0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from wnjax._nets.dense import apply_each, dense
from wnjax._nets.kinks import kink_ramp
from wnjax._nets.neurons import has_bias, row_norms
from wnjax._runtime.errors import InvalidInput


def kinked_relu(z: Array, width: Array) -> Array:
    """``kink_ramp(z, width)``: ``max(z, 0)`` beyond two widths of the kink, a smooth ramp within
    them (at most ``5 width / 16`` above ``max(z, 0)``), whose derivative is
    ``kink_slope(z, width)``: 1/2 at the kink, rising from 0 at ``z = -2 width`` to 1 at
    ``z = 2 width``. Its output is 0 exactly only where its slope is, so a unit's input leaves 0
    as smoothly as its slope rises. ``width`` is held constant (its tangent is dropped)."""
    return kink_ramp(z, width)


class ReLUPower(eqx.Module):
    """``sigma(z) = max(z, 0)^p``: ``p``-homogeneous; ``p = 1`` is ReLU, ``p >= 2`` is smooth.

    ``kink``: for ReLU (``p = 1``), a relative width ``kappa > 0`` over which the layers of
    ``MLP`` and ``CNN`` smooth its derivative (``kinked_relu`` with ``width = kappa s_u ||x||``,
    ``s_u = neuron_scale(W)_u >= ||w_u||``, so ``|z| = |w_u . x| <= width / kappa``), and
    within the layer takes the value of the ramp whose slope that is (``kink_ramp``).
    ``gradient_flow`` sets it on the copy of the model that gives its vector field."""

    power: float = eqx.field(static=True, default=1.0)
    kink: float = eqx.field(static=True, default=0.0)

    def __call__(self, z: Array) -> Array:
        r = jax.nn.relu(z)
        return r if self.power == 1 else r**self.power

    @property
    def degree(self) -> float:
        return float(self.power)

    @property
    def jumps(self) -> bool:
        """Whether the derivative jumps at ``z = 0`` (ReLU, ``p = 1``)."""
        return self.power == 1

    @property
    def kinked(self) -> bool:
        """Whether the derivative is smoothed at the kink (ReLU with ``kink > 0``)."""
        return self.jumps and self.kink > 0


def neuron_scale(weight: Array) -> Array:
    """``sqrt(||w_u||^2 + mean_v ||w_v||^2)`` for each neuron (row) ``u`` of a layer: its norm,
    floored by the layer's RMS neuron norm, so that the kink width stays finite where a neuron
    shrinks to zero (an SWN ``g_u`` through 0, a dying unit), whose ``z = w_u . x`` vanishes
    for every ``x`` at once."""
    norms = row_norms(weight)
    return jnp.sqrt(norms * norms + jnp.mean(norms * norms))


def activate(activation: Callable, z: Array, scale: Callable[[], Array]) -> Array:
    """``activation(z)``; for a ``kinked`` ReLU, ``kinked_relu(z, kink scale())``, with
    ``scale()`` the neuron's ``neuron_scale(W)_u ||x||`` (computed only then)."""
    if isinstance(activation, ReLUPower) and activation.kinked:
        return kinked_relu(z, jax.lax.stop_gradient(activation.kink * scale()))
    return activation(z)


def with_kink(model: PyTree, kappa: float) -> PyTree:
    """``model`` (or the static part of one) with every ReLU activation's ``kink`` set to
    ``kappa`` (``0``: ReLU's own derivative)."""

    def set_kink(a):
        if isinstance(a, ReLUPower) and a.jumps:
            return ReLUPower(a.power, float(kappa))
        return a

    return jax.tree_util.tree_map(set_kink, model, is_leaf=lambda a: isinstance(a, ReLUPower))


class Identity(eqx.Module):
    """``sigma(z) = z``: the linear activation, 1-homogeneous."""

    def __call__(self, z: Array) -> Array:
        return z

    @property
    def degree(self) -> float:
        return 1.0


def _check_size(**sizes) -> None:
    """Raise ``InvalidInput`` unless each of ``sizes`` is a positive integer."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidInput(f"{name} must be a positive integer, got {value!r}.")


def relu_power(p: float) -> ReLUPower:
    """The activation ``max(z, 0)^p``."""
    return ReLUPower(float(p))


def get_activation(activation: str | Callable) -> Callable:
    """Resolve ``'linear'``, ``'relu'``, ``'relu2'``, ``'relu^p'`` or a callable."""
    if not isinstance(activation, str):
        return activation
    name = activation.lower().replace("^", "")
    if name in ("linear", "identity"):
        return Identity()
    if name == "relu":
        return ReLUPower(1.0)
    if name.startswith("relu"):
        try:
            p = float(name[4:])
        except ValueError:
            p = None
        if p is not None:
            if not (math.isfinite(p) and p > 0):
                raise InvalidInput(
                    f"activation {activation!r}: the power p of 'relu^p' must be positive and "
                    "finite (p = 1 is ReLU, p = 2 ReLU^2)."
                )
            return ReLUPower(p)
    raise InvalidInput(
        f"unknown activation {activation!r}: use 'linear', 'relu', 'relu2' (ReLU^2), 'relu^p' "
        "or an equinox module/callable."
    )


def _check_scale(scale) -> None:
    """Raise ``InvalidInput`` unless ``init_scale`` (when not traced) is finite and nonzero."""
    if isinstance(scale, jax.core.Tracer):
        return
    value = np.asarray(scale)
    if value.dtype.kind not in "iuf" or not np.all(np.isfinite(value)) or np.any(value == 0):
        raise InvalidInput(
            f"init_scale must be a finite, nonzero number, got {scale!r}: it multiplies "
            "equinox's initial weights (a zero scale leaves every neuron without a direction)."
        )


def _scaled_linear(n_in, n_out, use_bias, scale, key):
    layer = eqx.nn.Linear(n_in, n_out, use_bias=use_bias, dtype=jnp.result_type(float), key=key)
    return (
        eqx.tree_at(lambda lin: lin.weight, layer, layer.weight * scale)
        if isinstance(scale, jax.Array) or scale != 1
        else layer
    )


# Below this many multiply-adds per forward pass (points x weights), ``jax.vmap`` of the
# per-example net compiles to a faster GD step than ``dense`` products on CPU (measured: a
# 10-32-1 net on 64 points runs 8.4 us/step with vmap, 10.1 with dense; from 256 points x
# 10-64-64-1 on, dense is 1.2-1.4x faster).
DENSE_MIN_MACS = 2**18


class MLP(eqx.Module):
    """Bias-free MLP ``x -> W_D sigma(... sigma(W_1 x))`` with ``depth`` weight layers.

    With a ``k``-homogeneous activation it is ``L``-homogeneous, ``L = 1 + k + ... + k^(D-1)``
    summed as products of activation degrees (``L = D`` for linear and ReLU, ``L = 3`` for a
    2-layer ReLU^2 net). The output has shape ``(out_size,)``.
    """

    layers: tuple[eqx.nn.Linear, ...]
    activation: Callable

    def __init__(
        self,
        in_size: int,
        width: int,
        depth: int,
        out_size: int = 1,
        activation: str | Callable = "relu",
        *,
        hidden_bias: bool = False,
        init_scale: float = 1.0,
        key: PRNGKeyArray,
    ):
        """**Arguments:**
        - `in_size`, `width`, `out_size`: input, hidden and output dimensions.
        - `depth`: the number of weight layers (``depth=1`` is a linear model).
        - `activation`: ``'linear'``, ``'relu'``, ``'relu2'``, ``'relu^p'`` or a module.
        - `hidden_bias`: give hidden layers a bias. Breaks homogeneity; off unless asked for.
        - `init_scale`: multiply equinox's default initial weights by this factor.
        - `key`: a JAX PRNG key.
        """
        _check_size(in_size=in_size, depth=depth, out_size=out_size)
        if depth > 1:
            _check_size(width=width)
        _check_scale(init_scale)
        sizes = [in_size] + [width] * (depth - 1) + [out_size]
        keys = jax.random.split(key, depth)
        self.layers = tuple(
            _scaled_linear(
                sizes[i], sizes[i + 1], hidden_bias and i < depth - 1, init_scale, keys[i]
            )
            for i in range(depth)
        )
        self.activation = get_activation(activation)

    def __call__(self, x: Array) -> Array:
        for layer in self.layers[:-1]:
            x = activate(
                self.activation,
                layer(x),
                lambda: neuron_scale(layer.weight) * jnp.linalg.norm(x),
            )
        return self.layers[-1](x)

    def batched(self, X: Array) -> Array:
        """The outputs on every row of ``X``, shape ``(n, out_size)``: ``jax.vmap(self)(X)``,
        computed with ``dense`` products (``Z = X W^T``) when the activation is wnjax's own
        (elementwise) and the net has at least ``DENSE_MIN_MACS`` multiply-adds per forward
        pass; otherwise through ``jax.vmap``. GD and flows differentiate it in reverse mode
        (and forward-over-reverse); use ``jax.vmap(self)`` for plain forward mode."""
        macs = X.shape[0] * sum(layer.weight.size for layer in self.layers) if X.ndim == 2 else 0
        if not isinstance(self.activation, (ReLUPower, Identity)) or macs < DENSE_MIN_MACS:
            return jax.vmap(self)(X)
        return self.dense_forward(X)

    def dense_forward(self, X: Array) -> Array:
        """``Z_1 = X W_1^T``, ``Z_l = sigma(Z_{l-1}) W_l^T`` (plus a hidden bias if there is one),
        with ``wnjax._nets.dense.dense`` products; ``X`` has shape ``(n, in_size)``."""
        for i, layer in enumerate(self.layers):
            Z = dense(X, layer.weight)
            if layer.bias is not None:
                Z = Z + layer.bias[None]
            if i < len(self.layers) - 1:
                Z = activate(
                    self.activation,
                    Z,
                    lambda: jnp.linalg.norm(X, axis=1)[:, None] * neuron_scale(layer.weight)[None],
                )
            X = Z
        return X


class CNN(eqx.Module):
    """Bias-free CNN: ``same``-padded conv layers, a global mean pool (or a flatten), a linear head.

    Mean pooling and flattening are linear, so the net is homogeneous like an MLP of the same
    depth. Input: one example of shape ``(in_channels, *spatial)``.
    """

    convs: tuple[eqx.nn.Conv, ...]
    head: eqx.nn.Linear
    activation: Callable
    pool: str = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        out_size: int = 1,
        *,
        kernel_size: int = 3,
        spatial_shape: Sequence[int] | None = None,
        num_spatial_dims: int = 2,
        pool: str = "mean",
        activation: str | Callable = "relu",
        key: PRNGKeyArray,
    ):
        """**Arguments:**
        - `in_channels`: channels of the input.
        - `channels`: output channels of each conv layer.
        - `out_size`: outputs of the linear head.
        - `kernel_size`: conv filter size (stride 1, ``same`` padding).
        - `spatial_shape`: input spatial shape; needed only for ``pool='flatten'``.
        - `num_spatial_dims`: 1, 2 or 3.
        - `pool`: ``'mean'`` (global average pool) or ``'flatten'``.
        - `activation`: as for ``MLP``.
        - `key`: a JAX PRNG key.
        """
        if pool not in ("mean", "flatten"):
            raise InvalidInput(f"pool must be 'mean' or 'flatten', got {pool!r}.")
        channels = tuple(channels)
        _check_size(in_channels=in_channels, out_size=out_size, kernel_size=kernel_size)
        _check_size(**{f"channels[{i}]": c for i, c in enumerate(channels)})
        if num_spatial_dims not in (1, 2, 3):
            raise InvalidInput(f"num_spatial_dims must be 1, 2 or 3, got {num_spatial_dims!r}.")
        keys = jax.random.split(key, len(channels) + 1)
        sizes = [in_channels, *channels]
        self.convs = tuple(
            eqx.nn.Conv(
                num_spatial_dims,
                sizes[i],
                sizes[i + 1],
                kernel_size,
                padding="SAME",
                use_bias=False,
                dtype=jnp.result_type(float),
                key=keys[i],
            )
            for i in range(len(channels))
        )
        if pool == "flatten":
            if spatial_shape is None:
                raise InvalidInput("pool='flatten' needs spatial_shape=(H, W, ...).")
            n_features = sizes[-1] * int(np.prod(spatial_shape))
        else:
            n_features = sizes[-1]
        self.head = eqx.nn.Linear(
            n_features, out_size, use_bias=False, dtype=jnp.result_type(float), key=keys[-1]
        )
        self.activation = get_activation(activation)
        self.pool = pool

    def __call__(self, x: Array) -> Array:
        for conv in self.convs:
            x = activate(self.activation, conv(x), lambda: _filter_patch_norms(conv, x))
        feats = x.reshape(x.shape[0], -1).mean(axis=1) if self.pool == "mean" else x.ravel()
        return self.head(feats)


def _filter_patch_norms(conv: eqx.nn.Conv, x: Array) -> Array:
    """``neuron_scale(w)_u ||patch||`` at every output position of a stride-1 ``conv`` on ``x``
    (shape ``(in_channels, *spatial)``): at least the bound ``||w_u|| ||patch||`` on each
    pre-activation, shape of ``conv(x)``."""
    ones = jnp.ones((1, 1, *conv.kernel_size), x.dtype)
    patch_sq = jax.lax.conv_general_dilated(
        jnp.sum(x * x, axis=0)[None, None],
        ones,
        window_strides=conv.stride,
        padding=conv.padding,
        rhs_dilation=conv.dilation,
        precision=jax.lax.Precision.HIGHEST,
    )[0]
    scale = neuron_scale(conv.weight)
    return scale.reshape((-1,) + (1,) * (x.ndim - 1)) * jnp.sqrt(jnp.maximum(patch_sq, 0.0))


def _scale_weights(model: PyTree, c: float) -> PyTree:
    params, static = eqx.partition(model, eqx.is_inexact_array)
    return eqx.combine(jax.tree_util.tree_map(lambda w: c * w, params), static)


@eqx.filter_jit
def scaled_outputs(model: PyTree, x: Array, scales: tuple) -> list:
    """``[Phi(w; x), Phi(c w; x) for c in scales]``, in one compiled program. A ``Parameterized``
    model scales only its trainable layers (a frozen layer is a constant of the function)."""
    from wnjax._nets.parameterize import Parameterized, scale_trainable, to_standard

    plain = to_standard(model)
    outputs = [apply_each(plain, x)]
    for c in scales:
        scaled = (
            scale_trainable(model, c).standard()
            if isinstance(model, Parameterized)
            else _scale_weights(plain, c)
        )
        outputs.append(apply_each(scaled, x))
    return outputs


def known_degree(model: PyTree) -> float | None:
    """The homogeneity degree ``L`` of a bias-free ``MLP`` or ``CNN`` (plain or
    ``Parameterized``) with wnjax's own activation (``relu^p`` or linear, ``k``-homogeneous),
    from its layers in order: ``L_i = k L_{i-1} + 1`` for a trained layer ``i`` and ``k L_{i-1}``
    for a frozen one, ``L_1 = 1`` (or 0 if frozen). ``None`` for any other model (a subclass of
    these included), whose degree is measured instead (``homogeneity_degree``)."""
    from wnjax._nets.parameterize import Frozen, Parameterized

    net = model.skeleton if isinstance(model, Parameterized) else model
    # exactly these classes: a subclass may compute something else from the same layers
    if type(net) not in (MLP, CNN) or type(net.activation) not in (ReLUPower, Identity):
        return None
    if has_bias(net):
        return None
    n = len(net.layers) if isinstance(net, MLP) else len(net.convs) + 1
    frozen = (
        [isinstance(w, Frozen) for w in model.layers]
        if isinstance(model, Parameterized)
        else [False] * n
    )
    if len(frozen) != n:
        return None
    degree = 0.0
    for is_frozen in frozen:
        degree = net.activation.degree * degree + (0.0 if is_frozen else 1.0)
    return degree


def homogeneity_degree(
    model: PyTree, x: Array, *, scales: Sequence[float] = (0.5, 2.0), rtol: float = 1e-6
) -> float:
    """Measure ``L`` with ``Phi(c w; x) = c^L Phi(w; x)``: ``L = log(|Phi(c w)|/|Phi(w)|) / log c``.

    Every inexact array of a plain ``model`` is scaled by ``c``; for a ``Parameterized`` model,
    the weights of its non-frozen layers (a frozen layer is a constant of the function). ``x`` is a
    batch of examples (leading
    axis). ``L`` is estimated at each ``c`` in ``scales``; the estimates must agree with each
    other and across examples to ``rtol``, or the model is not homogeneous.

    **Returns:** the measured degree ``L`` (a float; round it if you need an integer).

    ```python
    >>> import jax, wnjax
    >>> net = wnjax.MLP(2, 8, 2, activation="relu2", key=jax.random.key(0))
    >>> X = jax.random.normal(jax.random.key(1), (5, 2))
    >>> round(wnjax.homogeneity_degree(net, X))  # a 2-layer ReLU^2 net: L = 1 + 2
    3

    ```
    """
    from wnjax._nets.parameterize import Parameterized

    # A parameterized model keeps its biases in its skeleton.
    if has_bias(model.skeleton if isinstance(model, Parameterized) else model):
        raise InvalidInput(
            "the model has biases, so it is not homogeneous in its weights. Build it without "
            "biases (wnjax.MLP(..., hidden_bias=False) or eqx.nn.Linear(..., use_bias=False))."
        )
    scales = tuple(float(c) for c in scales)
    outputs = scaled_outputs(model, jnp.asarray(x), scales)
    phi = np.asarray(outputs[0], dtype=np.float64).ravel()
    keep = np.abs(phi) > 1e-12 * max(np.abs(phi).max(), 1e-300)
    if not keep.any():
        raise InvalidInput("the model outputs zero on every example of x; pick other inputs.")
    estimates = []
    for c, out in zip(scales, outputs[1:]):
        phi_c = np.asarray(out, dtype=np.float64).ravel()
        if np.any(np.sign(phi_c[keep]) != np.sign(phi[keep])):
            raise InvalidInput(
                f"Phi(c w) changes sign at c = {c}: the model is not positively homogeneous in "
                "its weights (does it have a bias or a non-homogeneous activation?)."
            )
        estimates.append(np.log(np.abs(phi_c[keep]) / np.abs(phi[keep])) / np.log(c))
    est = np.concatenate(estimates)
    degree = float(np.median(est))
    spread = float(np.max(np.abs(est - degree)))
    if spread > rtol * max(1.0, abs(degree)):
        raise InvalidInput(
            f"the model is not homogeneous in its weights: the measured degree varies from "
            f"{est.min():.6g} to {est.max():.6g} across scales {tuple(scales)} and examples. "
            "Check for biases, normalization layers or a non-homogeneous activation "
            "(tanh, sigmoid, softplus)."
        )
    return degree


class CoordinateLinear(eqx.Module):
    """``f(x) = sum_i w_i x_i`` whose coordinates are separate 1-D neurons.

    The weight is stored as an ``eqx.nn.Linear(1, d)`` weight of shape ``(d, 1)``, so each row,
    that is each coordinate ``w_i``, is one neuron: under ``wnjax.ewn`` it becomes
    ``w_i = exp(a_i) v_i/|v_i| = exp(a_i) sign(v_i)``.
    """

    layer: eqx.nn.Linear

    def __init__(self, w: Array):
        """**Arguments:**

        - `w`: the initial weight vector, shape ``(d,)``.
        """
        w = jnp.asarray(w, jnp.result_type(float))
        layer = eqx.nn.Linear(1, w.shape[0], use_bias=False, dtype=w.dtype, key=jax.random.key(0))
        self.layer = eqx.tree_at(lambda lin: lin.weight, layer, w[:, None])

    def __call__(self, x: Array) -> Array:
        return (self.layer.weight[:, 0] @ x)[None]
