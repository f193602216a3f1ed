"""Loss-normalized GD schedules as optax transforms that read the loss (docs/theory.md §3).

- ``eta = eta0 / L`` (Lyu & Li; Exp-WN's MNIST runs): ``power = 1``;
- ``eta = eta0 / L^(1 - 1/frac)`` (Exp-WN's synthetic runs): ``power = 1 - 1/frac``;
- backtracking: if the loss rose since the last step, undo that step and set
  ``eta0 <- eta0 / shrink``; else ``eta0 <- min(grow eta0, max_learning_rate)``;
- lagged (Exp-WN's lin-sep code): the step from ``theta_k`` is normalized by the loss of the
  previous iterate, ``theta_{k+1} = theta_k - eta0 L(theta_{k-1})^(-power) grad L(theta_k)``.

``wnjax.gradient_descent`` calls ``update(g, state, params, value=L, log_value=log L)``. The
scale ``L^-power`` is formed from ``log_value``, so nothing divides by an underflowed ``L``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array

from wnjax._runtime.errors import InvalidInput

GRADIENTS = ("loss", "log_loss")


def backtrack_rate(eta0, kept, grow, shrink, cap):
    """The backtracking rule for ``eta0`` after a trial is judged: ``min(grow eta0, cap)`` if it
    was kept, ``eta0 / shrink`` if it was undone. Shared by ``loss_normalized_sgd`` (a trial is
    one step) and ``EpochBacktracking`` (a trial is one epoch of minibatch steps)."""
    return jnp.where(kept, jnp.minimum(eta0 * grow, cap), eta0 / shrink)


class LossNormalizedState(NamedTuple):
    """``eta0`` now, ``log L`` at the last accepted point, the last update, whether the last
    update was an undo, the number of undone steps, and the ``log L`` that normalized the last
    step (``L(theta_{k-1})`` when lagged)."""

    eta0: Array
    prev_log_value: Array
    prev_update: optax.Updates
    just_undone: Array
    num_undone: Array
    lag_log_value: Array


def loss_normalized_sgd(
    learning_rate,
    power=1.0,
    backtracking: bool = False,
    grow=1.1,
    shrink=1.1,
    max_learning_rate=None,
    gradient: str = "loss",
    lag: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """GD with the loss-normalized rate ``eta = eta0 / L^power``, optionally backtracking.

    The step is ``theta <- theta - eta0 L^(-power) grad L``. With ``gradient='log_loss'`` (for
    ``gradient_descent(..., objective='log_loss')``) the incoming ``g`` is ``grad log L`` and the
    step is ``-eta0 L^(1 - power) g``, which stays finite below ``log L = -745`` where
    ``grad L`` underflows.

    **Arguments:**
    - `learning_rate`: the initial ``eta0``.
    - `power`: ``1`` for ``eta0 / L``; ``1 - 1/frac`` for Exp-WN's ``eta0 / L^(1 - 1/frac)``.
    - `backtracking`: undo a step that raised the loss and divide ``eta0`` by `shrink`;
      otherwise multiply ``eta0`` by `grow` (capped at `max_learning_rate`).
    - `grow`, `shrink`: the backtracking factors (Exp-WN: 1.1 both).
    - `max_learning_rate`: the cap on ``eta0`` (``None``: no cap).
    - `gradient`: ``'loss'`` if ``g = grad L``, ``'log_loss'`` if ``g = grad log L``.
    - `lag`: normalize by the loss of the previous accepted iterate:
      ``theta_{k+1} = theta_k - eta0 L(theta_{k-1})^(-power) grad L(theta_k)``, with
      ``L(theta_{-1}) = L(theta_0)``; a retry after an undo reuses its ``L(theta_{k-1})``.

    **Returns:** an ``optax.GradientTransformationExtraArgs``; its ``update`` needs
    ``log_value=log L`` (``gradient_descent`` passes it). Each call is a step or the undo of
    the last step: ``k`` calls with ``num_undone`` undos made ``k - 2 num_undone`` accepted steps
    (epochs).
    """
    if gradient not in GRADIENTS:
        raise InvalidInput(f"gradient must be one of {GRADIENTS}, got {gradient!r}.")
    cap = jnp.inf if max_learning_rate is None else max_learning_rate

    def init_fn(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
        return LossNormalizedState(
            eta0=jnp.asarray(learning_rate, dtype),
            prev_log_value=jnp.asarray(jnp.inf, dtype),
            prev_update=zeros,
            just_undone=jnp.asarray(False),
            num_undone=jnp.zeros((), int),  # strong-typed: a weak one retraces the loop
            lag_log_value=jnp.asarray(jnp.nan, dtype),
        )

    def update_fn(updates, state, params=None, *, log_value=None, **extra):
        del params, extra
        if log_value is None:
            raise InvalidInput(
                "loss_normalized_sgd reads the loss: call update(g, state, params, "
                "log_value=log L), as wnjax.gradient_descent does."
            )
        exponent = -power if gradient == "loss" else 1.0 - power
        if backtracking:
            # (the restored point's own loss is never judged: rounding could read as a rise)
            # (a non-finite loss, e.g. overflowed margins, counts as a rise and is undone)
            rose = ~(log_value <= state.prev_log_value) & ~state.just_undone
            # right after an undo, retry from the restored point with the shrunk eta0
            eta0 = jnp.where(
                state.just_undone & ~rose,
                state.eta0,
                backtrack_rate(state.eta0, ~rose, grow, shrink, cap),
            )
        else:
            rose = jnp.asarray(False)
            eta0 = state.eta0
        if lag:
            # L(theta_{k-1}): the last accepted point's loss (theta_0's own at the first step);
            # a retry from the restored point keeps the normalization of the step it retries
            first = state.prev_log_value == jnp.inf
            norm = jnp.where(
                state.just_undone,
                state.lag_log_value,
                jnp.where(first, log_value, state.prev_log_value),
            )
            log_scale = -power * norm + (log_value if gradient == "log_loss" else 0.0)
        else:
            norm = log_value
            log_scale = exponent * log_value
        scale = -eta0 * jnp.exp(log_scale)
        step = jax.tree_util.tree_map(lambda g: scale * g, updates)
        undo = jax.tree_util.tree_map(jnp.negative, state.prev_update)
        out = jax.tree_util.tree_map(lambda u, s: jnp.where(rose, u, s), undo, step)
        new_state = LossNormalizedState(
            eta0=eta0.astype(state.eta0.dtype),
            # after an undo we are back at the previous point, whose loss was prev_log_value
            prev_log_value=jnp.where(rose, state.prev_log_value, log_value).astype(
                state.prev_log_value.dtype
            ),
            prev_update=jax.tree_util.tree_map(
                lambda s: jnp.where(rose, jnp.zeros_like(s), s), step
            ),
            just_undone=rose,
            num_undone=state.num_undone + rose.astype(state.num_undone.dtype),
            lag_log_value=jnp.where(rose, state.lag_log_value, norm).astype(
                state.lag_log_value.dtype
            ),
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
