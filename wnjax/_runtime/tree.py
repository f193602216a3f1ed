"""Small pytree and number helpers shared by the dynamics and the solvers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


def tree_where(c, a, b):
    """``where(c, a, b)`` leaf by leaf over two pytrees of the same structure."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(c, x, y), a, b)


def all_finite(tree) -> Array:
    """Whether every entry of every leaf of ``tree`` is finite (a scalar bool array)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def tree_norm(tree) -> Array:
    """The Euclidean norm ``sqrt(sum x^2)`` over all leaves of ``tree``."""
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(tree)))


def as_number(v, dtype):
    """A number for a compiled program: a JAX array stays a (traced) JAX array of ``dtype``;
    a Python or NumPy number or array becomes a host NumPy array of ``dtype`` (traced by
    ``filter_jit`` like a JAX array, without an eager dispatch); bools, strings and other
    objects are returned as they are (static)."""
    if isinstance(v, (bool, np.bool_, str)):
        return v
    if isinstance(v, jax.Array):
        return jnp.asarray(v, dtype)
    if isinstance(v, (int, float, np.number, np.ndarray)):
        return np.asarray(v, dtype)
    return v
