"""The stall rules: a run whose loss is carried by dead points has stopped.

A point is *dead* when its margin is 0 and so is its margin gradient (for a bias-free ReLU^p
net, a point on which every hidden unit is off, whose output is then exactly 0): no step moves
it, so ``L >= F = n_dead l(0)`` for good. A run has stalled when ``F`` is above the target and
the live points add less than ``STALL_SHARE`` of it: ``log L`` can only creep towards
``log F``. (A dead point could in principle come back to life as the weights turn; such runs
are reported as stalled, not as failures of the dynamics.)

``stalled`` is the GD engine's rule, checked at save points; ``on_floor`` is gradient flow's,
checked at every step's end (an event of the solve): cheap where no point is dead.

A run has also stopped at a *stationary point* where ``grad L`` is zero to its rounding: the
terms ``l_i'(f_i) grad f_i`` it sums cancel to ``STATIONARY_ROUNDING`` eps of their size
(``stationary``), as at a minimum of the loss above 0 (under the square loss, targets the
model cannot fit). No step of any solver moves such a state but by rounding.
"""

from __future__ import annotations

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jaxtyping import Array

from wnjax._losses import Loss
from wnjax._nets.dense import apply_batch
from wnjax._runtime.precision import float32_matmuls

STALL_SHARE = 1e-3
# the weights of ``on_floor``'s gradient test, 1 + frac(GOLDEN i)
GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0
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


# ``stationary``'s bounds, in units of eps: a sum of n terms computed in floating point carries
# an error up to n eps times the sum of their sizes, typically sqrt(n) eps. At least-squares
# minima of linear nets (standard, SWN, EWN; 12 of them) the whole gradient was 2-17 eps of
# its terms' size, and its worst coordinate 15-960 eps of its own.
STATIONARY_ROUNDING = 64.0
STATIONARY_COORDINATE = 4096.0


def stationary(params, static, X: Array, y: Array, loss: Loss) -> Array:
    """Whether ``grad L`` at ``params`` is zero to rounding: ``||J^T g|| <= STATIONARY_ROUNDING
    eps ||J^T |g| ||`` with ``J`` the outputs' Jacobian and ``g = d log L / d outputs``, and
    ``|(J^T g)_j| <= STATIONARY_COORDINATE eps |(J^T |g|)_j|`` for every parameter ``j`` (so
    wherever ``J^T g = 0`` exactly). At a point whose gradient terms do not cancel (every point
    of a run that goes on lowering ``L``) the ratio is of order 1; the test by coordinates
    keeps a plateau near a saddle, where the tiny weights that will grow have gradients of
    their own size, from passing for stationary on the size of the others.

    **Arguments:** `params`, `static`: the model's trainable arrays and the rest; `X`, `y`: the
    data; `loss`: the ``Loss``."""
    out, vjp = jax.vjp(lambda p: apply_batch(eqx.combine(p, static), X), params)
    g = jax.grad(loss.log_loss)(out, y)
    both = jax.vmap(lambda c: vjp(c)[0])(jnp.stack([g, jnp.abs(g)]))
    a, b = jnp.concatenate([x.reshape(2, -1) for x in jax.tree_util.tree_leaves(both)], axis=1)
    eps = jnp.finfo(out.dtype).eps
    whole = jnp.sum(a**2) <= (STATIONARY_ROUNDING * eps) ** 2 * jnp.sum(b**2)
    each = jnp.all(jnp.abs(a) <= STATIONARY_COORDINATE * eps * jnp.abs(b))
    return jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(b)) & whole & each


def _sizes(outputs: Array) -> Array:
    """``max_j |f_j(x_i)|`` of each point ``i``."""
    return jnp.max(jnp.abs(outputs.reshape(outputs.shape[0], -1)), axis=1)


def dead_points(outputs: Array, y: Array, loss: Loss) -> tuple[Array, Array, Array]:
    """``(dead, log F, log L)`` from the outputs on all points: ``dead`` where every output of
    a point is within ``DEAD max |f|`` of 0 (all of them where every output is 0), ``F`` their
    summed loss (``-inf`` without one), ``log L`` the whole loss, both from ``loss.log_losses``."""
    size = _sizes(outputs)
    dead = size <= DEAD * jnp.max(size)
    log_l = loss.log_losses(outputs, y)
    return dead, logsumexp(jnp.where(dead, log_l, -jnp.inf)), logsumexp(log_l)


def on_floor(
    params, static, X: Array, y: Array, loss: Loss, target: Array, share: float = STALL_SHARE
) -> Array:
    """Whether the flow at ``params`` sits on a floor of ``log L`` above ``target``: the dead
    points (``dead_points``) hold all but ``share`` of ``L``, ``log F > target``, and each has
    ``grad l_i = 0`` exactly (no flow moves their outputs, so ``L >= F`` for good), tested at
    once on ``sum_i r_i l_i`` with weights ``r_i`` in ``[1, 2)``.

    Cheap where no point is dead (one forward pass and a reduction): the losses are read only
    where some run of a ``vmap`` has a dead point, the gradient only where some has a floor."""
    out = apply_batch(eqx.combine(params, static), X)
    size = _sizes(out)
    no = jnp.asarray(False)

    def floor():
        dead, log_f, log_l = dead_points(out, y, loss)
        candidate = (log_f > target) & (log_f >= log_l - share) & jnp.isfinite(log_l)

        def still():
            # sum_i r_i l_i / F over the dead points, with weights r_i in [1, 2) that no
            # symmetry of the data shares: its gradient is 0 where each point's is (not where
            # theirs cancel, as for x and -x with one label at w.x = 0, a floor of the whole loss
            # that the points' own gradients hold, not dead points)
            r = (1.0 + np.mod(GOLDEN * np.arange(1, X.shape[0] + 1), 1.0)).astype(out.dtype)

            def weighted(p):
                log_l = loss.log_losses(apply_batch(eqx.combine(p, static), X), y)
                return jnp.sum(r * jnp.exp(jnp.where(dead, log_l - log_f, -jnp.inf)))

            grads = jax.tree_util.tree_leaves(jax.grad(weighted)(params))
            return candidate & jnp.all(jnp.stack([jnp.all(g == 0) for g in grads]))

        return jax.lax.cond(eqxi.unvmap_any(candidate), still, lambda: no)

    some = jnp.min(size) <= DEAD * jnp.max(size)
    return jax.lax.cond(eqxi.unvmap_any(some), floor, lambda: no)
