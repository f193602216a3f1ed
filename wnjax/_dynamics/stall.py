"""The stall rule of the GD engine: a run whose loss is carried by dead points has stopped.

A point is *dead* when its margin is 0 and so is its margin gradient (for a bias-free ReLU^p
net, a point on which every hidden unit is off, whose output is then exactly 0): no step moves
it, so ``L >= F = n_dead l(0)`` for good. A run has stalled when ``F`` is above the target and
the live points add less than ``STALL_SHARE`` of it: ``log L`` can only creep towards
``log F``. (A dead point could in principle come back to life as the weights turn; such runs
are reported as stalled, not as failures of the dynamics.)
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from wnjax._losses import Loss
from wnjax._nets.dense import apply_batch
from wnjax._runtime.precision import float32_matmuls

STALL_SHARE = 1e-3
# |q_i| and ||theta|| ||grad q_i|| below DEAD max_j |q_j|: a dead point
DEAD = 1e-12


def stalled(params, static, X, y, loss: Loss, target: Array) -> tuple[Array, Array]:
    """``(log L, stalled)`` on the full data: ``stalled`` when ``n_dead > 0``,
    ``log F > target`` and ``log F >= log L - STALL_SHARE`` with ``F = n_dead l(0)``."""
    model = eqx.combine(params, static)
    out = apply_batch(model, X)
    value = loss.log_loss(out, y)
    q = loss.margins(out, y)

    def margin(p, x, yi):
        return loss.margins(eqx.combine(p, static)(x)[None], yi[None])[0]

    with float32_matmuls():
        g = jax.vmap(jax.grad(margin), in_axes=(None, 0, 0))(params, X, y)
    gnorm = jnp.sqrt(
        sum(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1) for x in jax.tree_util.tree_leaves(g))
    )
    wnorm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(params)))
    scale = DEAD * jnp.max(jnp.abs(q))
    dead = (jnp.abs(q) <= scale) & (wnorm * gnorm <= scale)
    n_dead = jnp.sum(dead)
    log_floor = jnp.log(jnp.maximum(n_dead, 1)) + loss.log_loss(jnp.zeros_like(out[:1]), y[:1])
    stuck = (n_dead > 0) & (log_floor > target) & (log_floor >= value - STALL_SHARE)
    return value, stuck & jnp.isfinite(value)
