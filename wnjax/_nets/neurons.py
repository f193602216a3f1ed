"""Neurons: the rows of dense weight matrices and the filters of conv layers.

A neuron ``u`` owns its incoming weight vector ``w_u``: row ``u`` of an ``eqx.nn.Linear``
weight of shape ``(out, in)``, or filter ``u`` of an ``eqx.nn.Conv`` weight of shape
``(out, in/groups, *kernel)``. In both cases the neuron axis is axis 0 and its norm is taken
over all remaining axes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from wnjax._runtime.errors import InvalidInput

WEIGHT_LAYERS = (eqx.nn.Linear, eqx.nn.Conv)


def is_weight_layer(x) -> bool:
    """True for the layers whose weights are made of neurons: ``eqx.nn.Linear`` and
    ``eqx.nn.Conv``."""
    return isinstance(x, WEIGHT_LAYERS)


def weight_layers(model: PyTree) -> list:
    """All ``Linear``/``Conv`` layers of ``model``, in pytree-traversal order."""
    leaves = jtu.tree_leaves(model, is_leaf=is_weight_layer)
    return [leaf for leaf in leaves if is_weight_layer(leaf)]


def layer_indices(model: PyTree, where: Callable[[PyTree], Sequence] | None) -> tuple[int, ...]:
    """Indices (into ``weight_layers(model)``) of the layers that ``where(model)`` selects.

    ``where`` returns layers of ``model`` (for example ``lambda m: [m.layers[0]]``). ``None``
    selects no layer.
    """
    if where is None:
        return ()
    layers = weight_layers(model)
    chosen = where(model)
    if is_weight_layer(chosen):
        chosen = [chosen]
    out = []
    for layer in chosen:
        hits = [i for i, candidate in enumerate(layers) if candidate is layer]
        if not hits:
            raise InvalidInput(
                f"`where` selected {type(layer).__name__}, which is not an eqx.nn.Linear or "
                "eqx.nn.Conv layer of the model; return the layer objects themselves, e.g. "
                "`where=lambda m: [m.layers[0]]`."
            )
        out.append(hits[0])
    return tuple(sorted(set(out)))


def row_norms(w: Array) -> Array:
    """Per-neuron norms ``||w_u||``: the 2-norm of ``w[u]`` over all axes but the first."""
    flat = w.reshape(w.shape[0], -1)
    return jnp.sqrt(jnp.sum(flat * flat, axis=1))


def broadcast_rows(s: Array, w: Array) -> Array:
    """Reshape a per-neuron vector ``s`` of shape ``(out,)`` to broadcast against ``w``."""
    return s.reshape((w.shape[0],) + (1,) * (w.ndim - 1))


def layer_weights(model: PyTree) -> list[Array]:
    """The weight arrays of all ``Linear``/``Conv`` layers of a plain model."""
    return [layer.weight for layer in weight_layers(model)]


def concat_rows(parts: Sequence[Array]) -> Array:
    """``jnp.concatenate(parts)``, or an empty vector when there are no parts (no neurons)."""
    return jnp.concatenate(parts) if parts else jnp.zeros((0,))


def neuron_norms(model: PyTree) -> Array:
    """All per-neuron norms ``||w_u||`` of a plain model, concatenated over layers."""
    return concat_rows([row_norms(w) for w in layer_weights(model)])


def has_bias(model: PyTree) -> bool:
    """True if any ``Linear``/``Conv`` layer of ``model`` carries a bias."""
    return any(getattr(layer, "bias", None) is not None for layer in weight_layers(model))


def scale_neuron_rows(grads: PyTree, model: PyTree, power: float = 2.0) -> PyTree:
    """Multiply each neuron's gradient block by ``||w_u||^power`` (``power=2``: ``eta_u =
    ||w_u||^2``).

    ``grads`` has the structure of ``model`` (a plain model). Leaves that are not layer weights
    (biases) are left unchanged.
    """
    g_layers = weight_layers(grads)
    m_layers = weight_layers(model)
    scaled = [
        g.weight * broadcast_rows(row_norms(m.weight) ** power, g.weight)
        for g, m in zip(g_layers, m_layers)
    ]
    return eqx.tree_at(lambda t: [layer.weight for layer in weight_layers(t)], grads, scaled)


def flat_weights(model: PyTree) -> Array:
    """All layer weights of a plain model, flattened and concatenated into one vector."""
    return jnp.concatenate([w.ravel() for w in layer_weights(model)])


def tree_norm(tree: PyTree) -> Array:
    """Euclidean norm of all inexact array leaves of ``tree``."""
    leaves = jtu.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
    return jnp.sqrt(sum(jnp.sum(x * x) for x in leaves))
