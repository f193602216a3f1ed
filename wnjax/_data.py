"""Data sets of the experiments: synthetic problems generated from an explicit key."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray


def lin_sep(key: PRNGKeyArray) -> tuple[Array, Array]:
    """The lin-sep problem of Exp-WN (SPEC section 4): 4 points in R^2.

    Support points ``(1, 1)`` with ``y = -1`` and ``(-1, 1)`` with ``y = +1``, plus one point per
    class, uniform in ``[a, b]^2`` (``y = -1``) and ``[-b, -a]^2`` (``y = +1``), where
    ``a ~ U(1, 1.5)`` and ``b ~ U(1.5, 2)``.

    **Returns:** ``X`` of shape ``(4, 2)`` and ``y`` of shape ``(4,)`` in ``{-1, +1}``.
    """
    k_a, k_b, k_neg, k_pos = jax.random.split(key, 4)
    dtype = jnp.result_type(float)
    a = jax.random.uniform(k_a, (), dtype, 1.0, 1.5)
    b = jax.random.uniform(k_b, (), dtype, 1.5, 2.0)
    neg = jax.random.uniform(k_neg, (2,), dtype, a, b)
    pos = -jax.random.uniform(k_pos, (2,), dtype, a, b)
    X = jnp.stack([jnp.array([1.0, 1.0], dtype), jnp.array([-1.0, 1.0], dtype), neg, pos])
    y = jnp.array([-1.0, 1.0, -1.0, 1.0], dtype)
    return X, y
